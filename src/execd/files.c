/* /files and /directories endpoints. */
#include "internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <ftw.h>
#include <grp.h>
#include <inttypes.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define META_MAX     (64u * 1024)
#define UPLOAD_PARTS 1024
#define REPLACE_MAX  (256u << 20)
#define SEARCH_MAX   100000
#define LIST_MAX     100000

/* ---- helpers ---- */

typedef struct qvals {
    const char *key;
    const char *vals[256];
    size_t n;
} qvals;

static enum MHD_Result collect(void *cls, enum MHD_ValueKind kind, const char *key,
                               const char *value)
{
    (void)kind;
    qvals *q = cls;
    if (strcmp(key, q->key) == 0 && value != NULL && q->n < 256)
        q->vals[q->n++] = value;
    return MHD_YES;
}

static void query_all(struct MHD_Connection *conn, const char *key, qvals *q)
{
    q->key = key;
    q->n = 0;
    MHD_get_connection_values(conn, MHD_GET_ARGUMENT_KIND, collect, q);
}

/* Expands a client path and makes it absolute. NULL on failure, with the HTTP status
 * (400 for a bad path, 500 when out of memory) and a message. */
static char *resolve_path(const char *in, unsigned *status, char *msg, size_t msglen)
{
    char err[256];
    char *p = xd_expand(in, err, sizeof(err));
    if (p == NULL) {
        *status = 400;
        snprintf(msg, msglen, "invalid path %s: %s", in, err);
        return NULL;
    }
    if (p[0] != '/') {
        char *cwd = getcwd(NULL, 0);
        char *abs = NULL;
        if (cwd != NULL && asprintf(&abs, "%s/%s", strcmp(cwd, "/") ? cwd : "", p) < 0)
            abs = NULL;
        free(cwd);
        free(p);
        p = abs;
        if (p == NULL) {
            *status = 500;
            snprintf(msg, msglen, "out of memory");
        }
    }
    return p;
}

/* resolve_path that answers its failure (400 or 500) and returns NULL. */
static char *client_path(struct MHD_Connection *conn, const char *in, enum MHD_Result *ret)
{
    unsigned status = 0;
    char msg[1024];
    char *p = resolve_path(in, &status, msg, sizeof(msg));
    if (p == NULL)
        *ret = xd_respond_error(
            conn, status, status == 400 ? "INVALID_REQUEST_BODY" : "RUNTIME_ERROR", "%s", msg);
    return p;
}

static enum MHD_Result errno_error(struct MHD_Connection *conn, int e, const char *what,
                                   const char *path)
{
    if (e == ENOENT || e == ENOTDIR)
        return xd_respond_error(conn, 404, "FILE_NOT_FOUND", "file not found: %s", path);
    return xd_respond_error(conn, 500, "RUNTIME_ERROR", "%s %s: %s", what, path, strerror(e));
}

/* A file's JSON description; NULL when out of memory. Sizes are exact as doubles up to
 * 2^53 bytes. */
static cJSON *file_info(const char *path, const struct stat *sb)
{
    const char *type = S_ISREG(sb->st_mode)   ? "file"
                       : S_ISDIR(sb->st_mode) ? "directory"
                       : S_ISLNK(sb->st_mode) ? "symlink"
                                              : "other";
    char mtime[64], ctime[64], uid[16], gid[16];
    xd_format_time(sb->st_mtim.tv_sec, sb->st_mtim.tv_nsec, mtime);
    xd_format_time(sb->st_ctim.tv_sec, sb->st_ctim.tv_nsec, ctime);
    struct passwd pw, *pwp = NULL;
    struct group gr, *grp = NULL;
    char pbuf[4096], gbuf[4096];
    snprintf(uid, sizeof(uid), "%u", (unsigned)sb->st_uid);
    snprintf(gid, sizeof(gid), "%u", (unsigned)sb->st_gid);
    const char *owner = uid, *group = gid;
    if (getpwuid_r(sb->st_uid, &pw, pbuf, sizeof(pbuf), &pwp) == 0 && pwp != NULL)
        owner = pw.pw_name;
    if (getgrgid_r(sb->st_gid, &gr, gbuf, sizeof(gbuf), &grp) == 0 && grp != NULL)
        group = gr.gr_name;
    cJSON *o = cJSON_CreateObject();
    bool ok = o != NULL && moat__execd_json_set(o, "path", moat__execd_json_str(path)) &&
              cJSON_AddStringToObject(o, "type", type) != NULL &&
              cJSON_AddNumberToObject(o, "size", (double)sb->st_size) != NULL &&
              cJSON_AddStringToObject(o, "modified_at", mtime) != NULL &&
              cJSON_AddStringToObject(o, "created_at", ctime) != NULL &&
              moat__execd_json_set(o, "owner", moat__execd_json_str(owner)) &&
              moat__execd_json_set(o, "group", moat__execd_json_str(group)) &&
              cJSON_AddNumberToObject(
                  o, "mode", (double)moat_execd_mode_to_decimal(sb->st_mode & 0777)) != NULL;
    if (!ok) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

static cJSON *parse_json(struct MHD_Connection *conn, xd_req *r, bool want_array,
                         enum MHD_Result *ret)
{
    if (r->body_too_big) {
        *ret = xd_respond_error(conn, 413, "INVALID_REQUEST_BODY", "request body too large");
        return NULL;
    }
    const char *why = "empty body";
    cJSON *root = r->body.len == 0 ? NULL
                                   : moat__execd_json_parse((const char *)r->body.data, r->body.len,
                                                            false, &why);
    if (root == NULL) {
        *ret = xd_respond_error(conn, 400, "INVALID_REQUEST_BODY", "invalid JSON: %s", why);
        return NULL;
    }
    if (want_array ? !cJSON_IsArray(root) : !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        *ret = xd_respond_error(conn, 400, "INVALID_REQUEST_BODY", "request body must be a JSON %s",
                                want_array ? "array" : "object");
        return NULL;
    }
    return root;
}

static void mkdir_parents(char *path, mode_t mode)
{
    for (char *p = path + 1; *p; p++) {
        if (*p == '/') {
            *p = '\0';
            mkdir(path, mode);
            *p = '/';
        }
    }
}

/* Permission object → chmod/chown. Unknown user or group names are ignored. */
static int apply_perm(const char *path, const char *owner, const char *group, uint32_t mode)
{
    if (mode != 0 && chmod(path, mode) != 0)
        return errno;
    uid_t uid = (uid_t)-1;
    gid_t gid = (gid_t)-1;
    char buf[4096];
    struct passwd pw, *pwp = NULL;
    struct group gr, *grp = NULL;
    if (owner != NULL && owner[0] && getpwnam_r(owner, &pw, buf, sizeof(buf), &pwp) == 0 && pwp)
        uid = pw.pw_uid;
    if (group != NULL && group[0] && getgrnam_r(group, &gr, buf, sizeof(buf), &grp) == 0 && grp)
        gid = gr.gr_gid;
    if ((uid != (uid_t)-1 || gid != (gid_t)-1) && lchown(path, uid, gid) != 0)
        return errno;
    return 0;
}

/* Reads {"owner"?, "group"?, "mode"?} into out params; false on a type error. */
static bool perm_fields(const cJSON *perm, const char **owner, const char **group, uint32_t *mode)
{
    *owner = *group = NULL;
    *mode = 0;
    if (!cJSON_IsObject(perm))
        return false;
    const cJSON *o = cJSON_GetObjectItemCaseSensitive(perm, "owner"),
                *g = cJSON_GetObjectItemCaseSensitive(perm, "group"),
                *m = cJSON_GetObjectItemCaseSensitive(perm, "mode");
    if (o && !cJSON_IsNull(o)) {
        if (!cJSON_IsString(o))
            return false;
        *owner = o->valuestring;
    }
    if (g && !cJSON_IsNull(g)) {
        if (!cJSON_IsString(g))
            return false;
        *group = g->valuestring;
    }
    int64_t dec;
    if (m && !cJSON_IsNull(m)) {
        if (!moat_json_int_value(m, &dec) || moat_execd_mode_from_decimal(dec, mode))
            return false;
    }
    return true;
}

/* ---- endpoints ---- */

static enum MHD_Result files_info(struct MHD_Connection *conn)
{
    qvals q;
    query_all(conn, "path", &q);
    cJSON *out = cJSON_CreateObject();
    enum MHD_Result ret = MHD_NO;
    for (size_t i = 0; out != NULL && i < q.n; i++) {
        char *p = client_path(conn, q.vals[i], &ret);
        if (p == NULL) {
            cJSON_Delete(out);
            return ret;
        }
        struct stat sb;
        if (lstat(p, &sb) != 0) {
            ret = errno_error(conn, errno, "stat", p);
            free(p);
            cJSON_Delete(out);
            return ret;
        }
        /* Keys are written as UTF-8 like every other string; a repeated path is one key. */
        char *key = moat__execd_utf8_clean(q.vals[i]);
        if (key == NULL || !moat__execd_json_set(out, key, file_info(p, &sb))) {
            cJSON_Delete(out);
            out = NULL;
        }
        free(key);
        free(p);
    }
    return xd_respond_json(conn, 200, out);
}

static enum MHD_Result files_delete(struct MHD_Connection *conn)
{
    qvals q;
    query_all(conn, "path", &q);
    enum MHD_Result ret = MHD_NO;
    for (size_t i = 0; i < q.n; i++) {
        char *p = client_path(conn, q.vals[i], &ret);
        if (p == NULL)
            return ret;
        struct stat sb;
        if (lstat(p, &sb) == 0 && S_ISDIR(sb.st_mode)) {
            ret = xd_respond_error(conn, 500, "RUNTIME_ERROR",
                                   "%s is a directory; use DELETE /directories", p);
            free(p);
            return ret;
        }
        if (unlink(p) != 0 && errno != ENOENT) {
            ret = errno_error(conn, errno, "remove", p);
            free(p);
            return ret;
        }
        free(p);
    }
    return xd_respond_empty(conn, 200);
}

static enum MHD_Result files_mv(struct MHD_Connection *conn, xd_req *r)
{
    enum MHD_Result ret = MHD_NO;
    cJSON *root = parse_json(conn, r, true, &ret);
    if (root == NULL)
        return ret;
    const cJSON *item;
    cJSON_ArrayForEach(item, root)
    {
        if (moat_json_str(item, "src", NULL) == NULL || moat_json_str(item, "dest", NULL) == NULL) {
            cJSON_Delete(root);
            return xd_respond_error(conn, 400, "INVALID_REQUEST_BODY",
                                    "each item needs string src and dest");
        }
    }
    cJSON_ArrayForEach(item, root)
    {
        char *src = client_path(conn, moat_json_str(item, "src", NULL), &ret);
        char *dst = src ? client_path(conn, moat_json_str(item, "dest", NULL), &ret) : NULL;
        if (dst == NULL) {
            free(src);
            cJSON_Delete(root);
            return ret;
        }
        struct stat sb;
        bool ok = false;
        if (lstat(src, &sb) != 0) {
            ret = errno_error(conn, errno, "stat", src);
        } else if (lstat(dst, &sb) == 0) {
            ret =
                xd_respond_error(conn, 500, "RUNTIME_ERROR", "destination %s already exists", dst);
        } else {
            mkdir_parents(dst, 0755);
            ok = rename(src, dst) == 0;
            if (!ok)
                ret = xd_respond_error(conn, 500, "RUNTIME_ERROR", "rename %s to %s: %s", src, dst,
                                       strerror(errno));
        }
        free(src);
        free(dst);
        if (!ok) {
            cJSON_Delete(root);
            return ret;
        }
    }
    cJSON_Delete(root);
    return xd_respond_empty(conn, 200);
}

static enum MHD_Result files_permissions(struct MHD_Connection *conn, xd_req *r)
{
    enum MHD_Result ret = MHD_NO;
    cJSON *root = parse_json(conn, r, false, &ret);
    if (root == NULL)
        return ret;
    const cJSON *perm;
    cJSON_ArrayForEach(perm, root)
    {
        const char *key = perm->string;
        const char *owner, *group;
        uint32_t mode;
        if (!perm_fields(perm, &owner, &group, &mode)) {
            /* key lives in root */
            ret =
                xd_respond_error(conn, 400, "INVALID_REQUEST_BODY",
                                 "permission for %s: owner/group strings, mode octal digits", key);
            cJSON_Delete(root);
            return ret;
        }
        char *p = client_path(conn, key, &ret);
        if (p == NULL) {
            cJSON_Delete(root);
            return ret;
        }
        struct stat sb;
        int e = lstat(p, &sb) != 0 ? errno : apply_perm(p, owner, group, mode);
        if (e != 0) {
            ret = errno_error(conn, e, "chmod", p);
            free(p);
            cJSON_Delete(root);
            return ret;
        }
        free(p);
    }
    cJSON_Delete(root);
    return xd_respond_empty(conn, 200);
}

/* nftw has no user pointer; searches run one per thread at a time. */
static _Thread_local cJSON *walk_out;
static _Thread_local size_t walk_count;
static _Thread_local const char *walk_pattern;

static int search_cb(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)flag;
    if (S_ISREG(sb->st_mode) && fnmatch(walk_pattern, path + ftw->base, 0) == 0) {
        cJSON *info = file_info(path, sb);
        if (info == NULL || !cJSON_AddItemToArray(walk_out, info)) {
            cJSON_Delete(info);
            cJSON_Delete(walk_out);
            walk_out = NULL;
            return 1;
        }
        if (++walk_count >= SEARCH_MAX)
            return 1;
    }
    return 0;
}

static enum MHD_Result files_search(struct MHD_Connection *conn)
{
    const char *path = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "path");
    const char *pattern = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "pattern");
    if (path == NULL || path[0] == '\0')
        return xd_respond_error(conn, 400, "MISSING_QUERY", "missing query parameter path");
    enum MHD_Result ret = MHD_NO;
    char *p = client_path(conn, path, &ret);
    if (p == NULL)
        return ret;
    struct stat sb;
    if (stat(p, &sb) != 0) {
        ret = errno_error(conn, errno, "stat", p);
        free(p);
        return ret;
    }
    walk_out = cJSON_CreateArray();
    walk_count = 0;
    walk_pattern = pattern && pattern[0] ? pattern : "**";
    if (walk_out != NULL)
        nftw(p, search_cb, 32, FTW_PHYS);
    free(p);
    cJSON *out = walk_out;
    walk_out = NULL;
    return xd_respond_json(conn, 200, out);
}

/* Appends the entries under dir (depth levels) to out; returns an errno value (ENOMEM
 * when an entry could not be added). *count bounds the listing at LIST_MAX. */
static int list_dir(cJSON *out, size_t *count, const char *dir, int depth)
{
    struct dirent **names = NULL;
    int n = scandir(dir, &names, NULL, alphasort);
    if (n < 0)
        return errno;
    int e = 0;
    for (int i = 0; i < n; i++) {
        const char *nm = names[i]->d_name;
        if (e == 0 && strcmp(nm, ".") != 0 && strcmp(nm, "..") != 0 && *count < LIST_MAX) {
            char *child = NULL;
            struct stat sb;
            if (asprintf(&child, "%s/%s", strcmp(dir, "/") ? dir : "", nm) >= 0 &&
                lstat(child, &sb) == 0) {
                cJSON *info = file_info(child, &sb);
                if (info == NULL || !cJSON_AddItemToArray(out, info)) {
                    cJSON_Delete(info);
                    e = ENOMEM;
                } else {
                    ++*count;
                    if (S_ISDIR(sb.st_mode) && depth > 1 &&
                        list_dir(out, count, child, depth - 1) == ENOMEM)
                        e = ENOMEM;
                }
            }
            free(child);
        }
        free(names[i]);
    }
    free(names);
    return e;
}

static enum MHD_Result directories_list(struct MHD_Connection *conn)
{
    const char *path = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "path");
    const char *ds = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "depth");
    if (path == NULL || path[0] == '\0')
        return xd_respond_error(conn, 400, "MISSING_QUERY", "missing query parameter path");
    long depth = 1;
    if (ds != NULL && ds[0] != '\0') {
        char *end;
        depth = strtol(ds, &end, 10);
        if (*end != '\0' || depth < 0)
            return xd_respond_error(conn, 400, "INVALID_REQUEST_BODY",
                                    "depth must be a non-negative integer");
        if (depth > 64)
            depth = 64;
    }
    enum MHD_Result ret = MHD_NO;
    char *p = client_path(conn, path, &ret);
    if (p == NULL)
        return ret;
    struct stat sb;
    if (lstat(p, &sb) != 0) {
        ret = errno_error(conn, errno, "stat", p);
    } else if (S_ISLNK(sb.st_mode)) {
        ret = xd_respond_error(conn, 400, "INVALID_REQUEST_BODY", "%s is a symlink", p);
    } else if (!S_ISDIR(sb.st_mode)) {
        ret = xd_respond_error(conn, 400, "INVALID_REQUEST_BODY", "%s is not a directory", p);
    } else {
        cJSON *out = cJSON_CreateArray();
        size_t count = 0;
        int e = out == NULL ? ENOMEM : depth > 0 ? list_dir(out, &count, p, (int)depth) : 0;
        if (e != 0) {
            cJSON_Delete(out);
            ret = errno_error(conn, e, "list", p);
        } else {
            ret = xd_respond_json(conn, 200, out);
        }
    }
    free(p);
    return ret;
}

static enum MHD_Result directories_make(struct MHD_Connection *conn, xd_req *r)
{
    enum MHD_Result ret = MHD_NO;
    cJSON *root = parse_json(conn, r, false, &ret);
    if (root == NULL)
        return ret;
    const cJSON *perm;
    cJSON_ArrayForEach(perm, root)
    {
        const char *key = perm->string;
        const char *owner, *group;
        uint32_t mode;
        if (!cJSON_IsNull(perm) && !perm_fields(perm, &owner, &group, &mode)) {
            /* key lives in root */
            ret =
                xd_respond_error(conn, 400, "INVALID_REQUEST_BODY",
                                 "permission for %s: owner/group strings, mode octal digits", key);
            cJSON_Delete(root);
            return ret;
        }
        if (cJSON_IsNull(perm)) {
            owner = group = NULL;
            mode = 0;
        }
        char *p = client_path(conn, key, &ret);
        if (p == NULL) {
            cJSON_Delete(root);
            return ret;
        }
        mkdir_parents(p, 0755);
        int e = 0;
        if (mkdir(p, mode ? mode : 0755) != 0 && errno != EEXIST)
            e = errno;
        struct stat sb;
        if (e == 0 && (stat(p, &sb) != 0 || !S_ISDIR(sb.st_mode)))
            e = ENOTDIR;
        if (e == 0)
            e = apply_perm(p, owner, group, mode);
        if (e != 0) {
            ret = xd_respond_error(conn, 500, "RUNTIME_ERROR", "mkdir %s: %s", p, strerror(e));
            free(p);
            cJSON_Delete(root);
            return ret;
        }
        free(p);
    }
    cJSON_Delete(root);
    return xd_respond_empty(conn, 200);
}

static int rm_cb(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)ftw;
    return (flag == FTW_DP ? rmdir(path) : unlink(path)) != 0 && errno != ENOENT ? -1 : 0;
}

static enum MHD_Result directories_delete(struct MHD_Connection *conn)
{
    qvals q;
    query_all(conn, "path", &q);
    enum MHD_Result ret = MHD_NO;
    for (size_t i = 0; i < q.n; i++) {
        char *p = client_path(conn, q.vals[i], &ret);
        if (p == NULL)
            return ret;
        struct stat sb;
        if (lstat(p, &sb) == 0 && nftw(p, rm_cb, 32, FTW_DEPTH | FTW_PHYS) != 0) {
            ret = xd_respond_error(conn, 500, "RUNTIME_ERROR", "remove %s: %s", p, strerror(errno));
            free(p);
            return ret;
        }
        free(p);
    }
    return xd_respond_empty(conn, 200);
}

/* Puts data in place of the file at path (whose stat is sb): written to a temporary file in the
 * same directory, synced, given the file's mode, then renamed over it, so the file is either
 * whole as before or whole as new. Returns 0 or an errno; on failure path is untouched. */
static int replace_contents(const char *path, const struct stat *sb, const uint8_t *data,
                            size_t len)
{
    size_t plen = strlen(path);
    char *tmp = malloc(plen + 32);
    if (tmp == NULL)
        return ENOMEM;
    const char *slash = strrchr(path, '/');
    size_t dir_len = slash != NULL ? (size_t)(slash - path) + 1 : 0;
    snprintf(tmp, plen + 32, "%.*s.moat-replace-XXXXXX", (int)dir_len, path);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        int e = errno;
        free(tmp);
        return e;
    }
    int e = 0;
    for (size_t off = 0; e == 0 && off < len;) {
        ssize_t w = write(fd, data + off, len - off);
        if (w < 0 && errno != EINTR)
            e = errno;
        else if (w > 0)
            off += (size_t)w;
    }
    /* Keeping another user's ownership takes privilege the caller may not have: best effort. */
    if (e == 0 && (sb->st_uid != geteuid() || sb->st_gid != getegid()) &&
        fchown(fd, sb->st_uid, sb->st_gid) != 0 && errno != EPERM)
        e = errno;
    if (e == 0 && (fchmod(fd, sb->st_mode & 07777) != 0 || fsync(fd) != 0))
        e = errno;
    if (close(fd) != 0 && e == 0)
        e = errno;
    if (e == 0 && rename(tmp, path) != 0)
        e = errno;
    if (e != 0)
        unlink(tmp);
    free(tmp);
    return e;
}

static enum MHD_Result files_replace(struct MHD_Connection *conn, xd_req *r)
{
    enum MHD_Result ret = MHD_NO;
    cJSON *root = parse_json(conn, r, false, &ret);
    if (root == NULL)
        return ret;
    const char *vq = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "verbose");
    bool verbose = vq != NULL && strcmp(vq, "true") == 0;
    cJSON *counts = cJSON_CreateObject();
    if (counts == NULL) {
        ret = xd_respond_error(conn, 500, "RUNTIME_ERROR", "out of memory");
        goto out;
    }
    const cJSON *spec;
    cJSON_ArrayForEach(spec, root)
    {
        const cJSON *jn = cJSON_GetObjectItemCaseSensitive(spec, "new");
        size_t olen = 0;
        if (moat_json_str(spec, "old", &olen) == NULL || olen == 0 ||
            (jn != NULL && !cJSON_IsNull(jn) && !cJSON_IsString(jn))) {
            ret =
                xd_respond_error(conn, 400, "INVALID_REQUEST_BODY",
                                 "%s: old must be a non-empty string, new a string", spec->string);
            goto out;
        }
    }
    cJSON_ArrayForEach(spec, root)
    {
        const char *key = spec->string;
        size_t olen = 0, nlen = 0;
        const char *old = moat_json_str(spec, "old", &olen);
        const char *nw = moat_json_str(spec, "new", &nlen);
        if (nw == NULL)
            nw = "";
        char *p = client_path(conn, key, &ret);
        if (p == NULL)
            goto out;
        int fd = open(p, O_RDONLY | O_CLOEXEC);
        struct stat sb;
        if (fd < 0 || fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode) ||
            (uint64_t)sb.st_size > REPLACE_MAX) {
            int e = fd < 0 ? errno : EINVAL;
            if (fd >= 0)
                close(fd);
            ret = e == EINVAL ? xd_respond_error(conn, 400, "INVALID_REQUEST_BODY",
                                                 "%s is not a regular file under 256 MiB", p)
                              : errno_error(conn, e, "open", p);
            free(p);
            goto out;
        }
        /* The new content is built whole, and replaces the file only once it is on disk: a
         * failed read, a failed allocation or a full disk leaves the user's file as it was. */
        moat_buf in, outb;
        moat_buf_init(&in, REPLACE_MAX);
        moat_buf_init(&outb, (size_t)-1 / 2);
        char tmp[65536];
        ssize_t n;
        bool built = true;
        while ((n = read(fd, tmp, sizeof(tmp))) > 0)
            built = built && moat_buf_append(&in, tmp, (size_t)n) == MOAT_OK;
        int e = n < 0 ? errno : 0;
        close(fd);
        size_t count = 0, i = 0;
        while (e == 0 && built && i < in.len) {
            const char *hit =
                i + olen <= in.len ? memmem(in.data + i, in.len - i, old, olen) : NULL;
            size_t upto = hit ? (size_t)((const uint8_t *)hit - in.data) : in.len;
            built = moat_buf_append(&outb, in.data + i, upto - i) == MOAT_OK;
            if (hit == NULL || !built)
                break;
            built = moat_buf_append(&outb, nw, nlen) == MOAT_OK;
            count++;
            i = upto + olen;
        }
        if (e == 0 && !built)
            e = ENOMEM;
        if (e == 0 && count > 0)
            e = replace_contents(p, &sb, outb.data, outb.len);
        moat_buf_free(&in);
        moat_buf_free(&outb);
        if (e != 0) {
            ret = errno_error(conn, e, "replace", p);
            free(p);
            goto out;
        }
        free(p);
        cJSON *rc = cJSON_CreateObject();
        if (rc != NULL && cJSON_AddNumberToObject(rc, "replacedCount", (double)count) == NULL) {
            cJSON_Delete(rc);
            rc = NULL;
        }
        if (!moat__execd_json_set(counts, key, rc)) {
            ret = xd_respond_error(conn, 500, "RUNTIME_ERROR", "out of memory");
            goto out;
        }
    }
    cJSON_Delete(root);
    if (verbose)
        return xd_respond_json(conn, 200, counts);
    cJSON_Delete(counts);
    return xd_respond_empty(conn, 200);
out:
    cJSON_Delete(root);
    cJSON_Delete(counts);
    return ret;
}

/* ---- download ---- */

/* A download by lines: the file is read in blocks and only the window's bytes are sent, so
 * memory stays at one block whatever the file's size. */
typedef struct line_download {
    int fd;
    moat_execd_line_window window;
    bool done;       /* the window is complete or the file ended */
    size_t off, len; /* the window's bytes in buf not sent yet */
    uint8_t buf[64 * 1024];
} line_download;

static ssize_t line_download_read(void *cls, uint64_t pos, char *out, size_t max)
{
    (void)pos;
    line_download *ld = cls;
    while (ld->len == 0) {
        if (ld->done)
            return MHD_CONTENT_READER_END_OF_STREAM;
        ssize_t n = read(ld->fd, ld->buf, sizeof(ld->buf));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return MHD_CONTENT_READER_END_WITH_ERROR;
        if (n == 0)
            ld->done = true;
        else
            ld->done =
                moat_execd_line_window_feed(&ld->window, ld->buf, (size_t)n, &ld->off, &ld->len);
    }
    size_t k = ld->len < max ? ld->len : max;
    memcpy(out, ld->buf + ld->off, k);
    ld->off += k;
    ld->len -= k;
    return (ssize_t)k;
}

static void line_download_free(void *cls)
{
    line_download *ld = cls;
    close(ld->fd);
    free(ld);
}

/* Takes fd. */
static enum MHD_Result respond_lines(struct MHD_Connection *conn, int fd, uint64_t first,
                                     uint64_t count)
{
    line_download *ld = malloc(sizeof(*ld));
    if (ld == NULL) {
        close(fd);
        return xd_respond_error(conn, 500, "RUNTIME_ERROR", "out of memory");
    }
    ld->fd = fd;
    ld->done = false;
    ld->off = ld->len = 0;
    moat_execd_line_window_init(&ld->window, first, count);
    struct MHD_Response *resp = MHD_create_response_from_callback(
        MHD_SIZE_UNKNOWN, 64 * 1024, line_download_read, ld, line_download_free);
    if (resp == NULL) {
        line_download_free(ld);
        return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type", "text/plain");
    enum MHD_Result ret = MHD_queue_response(conn, 200, resp);
    MHD_destroy_response(resp);
    return ret;
}

static enum MHD_Result files_download(struct MHD_Connection *conn)
{
    const char *path = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "path");
    if (path == NULL || path[0] == '\0')
        return xd_respond_error(conn, 400, "MISSING_QUERY", "missing query parameter path");
    uint64_t first = 0, count = 0;
    char why[128];
    moat_err lines = moat_execd_parse_line_window(
        MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "offset"),
        MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "limit"), &first, &count, why,
        sizeof(why));
    if (lines == MOAT_E_INVAL)
        return xd_respond_error(conn, 400, "INVALID_REQUEST_BODY", "%s", why);
    enum MHD_Result ret = MHD_NO;
    char *p = client_path(conn, path, &ret);
    if (p == NULL)
        return ret;
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) != 0) {
        ret = errno_error(conn, errno, "open", p);
        if (fd >= 0)
            close(fd);
        free(p);
        return ret;
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        ret = xd_respond_error(conn, 400, "INVALID_REQUEST_BODY", "%s is not a regular file", p);
        free(p);
        return ret;
    }
    if (lines == MOAT_OK) {
        free(p);
        return respond_lines(conn, fd, first, count);
    }
    uint64_t size = (uint64_t)sb.st_size, start = 0, end = size ? size - 1 : 0;
    const char *range = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Range");
    unsigned status = 200;
    if (range != NULL) {
        if (moat_execd_parse_range(range, size, &start, &end) != MOAT_OK) {
            close(fd);
            free(p);
            cJSON *body = cJSON_CreateObject();
            if (body != NULL && cJSON_AddStringToObject(body, "code", "UNKNOWN") == NULL) {
                cJSON_Delete(body);
                body = NULL;
            }
            return xd_respond_json(conn, 416, body);
        }
        status = 206;
    }
    uint64_t len = size == 0 ? 0 : end - start + 1;
    struct MHD_Response *resp = MHD_create_response_from_fd_at_offset64(len, fd, (int64_t)start);
    if (resp == NULL) {
        close(fd);
        free(p);
        return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type", "application/octet-stream");
    MHD_add_response_header(resp, "Accept-Ranges", "bytes");
    const char *base = strrchr(p, '/');
    base = base ? base + 1 : p;
    moat_buf cd;
    moat_buf_init(&cd, 16384);
    const char *lead = "attachment; filename=\"";
    moat_buf_append(&cd, lead, strlen(lead));
    bool ascii = true;
    for (const char *s = base; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch >= 0x80 || ch < 0x20)
            ascii = false;
        if (ch == '"' || ch == '\\')
            moat_buf_append(&cd, "\\", 1);
        moat_buf_append(&cd, ch < 0x20 ? "_" : s, 1);
    }
    moat_buf_append(&cd, "\"", 1);
    if (!ascii) {
        const char *star = "; filename*=UTF-8''";
        moat_buf_append(&cd, star, strlen(star));
        for (const unsigned char *s = (const unsigned char *)base; *s; s++) {
            char enc[4];
            if ((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') ||
                strchr("-._~", *s))
                moat_buf_append(&cd, s, 1);
            else {
                snprintf(enc, sizeof(enc), "%%%02X", *s);
                moat_buf_append(&cd, enc, 3);
            }
        }
    }
    moat_buf_append(&cd, "", 1);
    MHD_add_response_header(resp, "Content-Disposition", (const char *)cd.data);
    moat_buf_free(&cd);
    char lm[64];
    struct tm tm;
    gmtime_r(&sb.st_mtim.tv_sec, &tm);
    strftime(lm, sizeof(lm), "%a, %d %b %Y %H:%M:%S GMT", &tm);
    MHD_add_response_header(resp, "Last-Modified", lm);
    if (status == 206) {
        char cr[96];
        snprintf(cr, sizeof(cr), "bytes %" PRIu64 "-%" PRIu64 "/%" PRIu64, start, end, size);
        MHD_add_response_header(resp, "Content-Range", cr);
    }
    ret = MHD_queue_response(conn, status, resp);
    MHD_destroy_response(resp);
    free(p);
    return ret;
}

/* ---- upload ---- */

bool xd_files_is_upload(const char *url, const char *method)
{
    return strcmp(url, "/files/upload") == 0 && strcmp(method, "POST") == 0;
}

static enum MHD_Result upload_iter(void *cls, enum MHD_ValueKind kind, const char *key,
                                   const char *filename, const char *content_type,
                                   const char *transfer_encoding, const char *data, uint64_t off,
                                   size_t size)
{
    (void)kind;
    (void)content_type;
    (void)transfer_encoding;
    xd_req *r = cls;
    moat_execd_upload_part(r->upload, key, filename, off, data, size);
    return MHD_YES;
}

enum MHD_Result xd_files_upload_data(struct MHD_Connection *conn, xd_req *r, const char *data,
                                     size_t len)
{
    if (r->upload == NULL && !r->upload_bad) {
        r->upload = moat_execd_upload_new(xd.cfg.work_dir, META_MAX, UPLOAD_PARTS);
        r->pp = r->upload ? MHD_create_post_processor(conn, 64 * 1024, upload_iter, r) : NULL;
        if (r->pp == NULL)
            r->upload_bad = true;
    }
    if (r->pp != NULL && MHD_post_process(r->pp, data, len) != MHD_YES) {
        MHD_destroy_post_processor(r->pp);
        r->pp = NULL;
        r->upload_bad = true;
    }
    return MHD_YES;
}

static int copy_into(const char *src, const char *dst)
{
    int in = open(src, O_RDONLY | O_CLOEXEC);
    if (in < 0)
        return errno;
    int out = open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (out < 0) {
        int e = errno;
        close(in);
        return e;
    }
    char buf[65536];
    ssize_t n;
    int e = 0;
    while ((n = read(in, buf, sizeof(buf))) > 0) {
        if (write(out, buf, (size_t)n) != n) {
            e = errno ? errno : EIO;
            break;
        }
    }
    if (n < 0)
        e = errno;
    if (e == 0 && fsync(out) != 0)
        e = errno;
    close(in);
    close(out);
    return e;
}

static enum MHD_Result files_upload_done(struct MHD_Connection *conn, xd_req *r)
{
    if (r->upload == NULL || r->upload_bad)
        return xd_respond_error(conn, 400, "INVALID_FILE",
                                "expected a multipart/form-data body of metadata and file parts");
    if (r->pp != NULL) {
        enum MHD_Result ok = MHD_destroy_post_processor(r->pp);
        r->pp = NULL;
        if (ok != MHD_YES)
            return xd_respond_error(conn, 400, "INVALID_FILE",
                                    "malformed or truncated multipart body");
    }
    const char *msg = NULL;
    moat_execd_upload_error ue = moat_execd_upload_finish(r->upload, &msg);
    static const char *const codes[] = {"", "INVALID_FILE", "INVALID_FILE_METADATA",
                                        "INVALID_FILE_CONTENT", "RUNTIME_ERROR"};
    if (ue != MOAT_EXECD_UPLOAD_OK)
        return xd_respond_error(conn, ue == MOAT_EXECD_UPLOAD_RUNTIME_ERROR ? 500 : 400, codes[ue],
                                "%s", msg);
    size_t n = moat_execd_upload_count(r->upload);
    for (size_t i = 0; i < n; i++) {
        moat_execd_upload_pair *pr = moat_execd_upload_get(r->upload, i);
        char err[256];
        char *target = xd_expand(pr->path, err, sizeof(err));
        if (target == NULL)
            return xd_respond_error(conn, 400, "INVALID_FILE_METADATA", "path %s: %s", pr->path,
                                    err);
        mkdir_parents(target, 0755);
        struct stat sb;
        int e = 0;
        if (lstat(target, &sb) == 0) {
            e = copy_into(pr->tmp_path, target); /* keep the existing file's inode and mode */
        } else if (rename(pr->tmp_path, target) == 0) {
            free(pr->tmp_path);
            pr->tmp_path = NULL;
            if (chmod(target, 0644) != 0)
                e = errno;
        } else {
            e = errno == EXDEV ? copy_into(pr->tmp_path, target) : errno;
        }
        if (e == 0)
            e = apply_perm(target, pr->owner, pr->group, pr->mode);
        if (e != 0) {
            enum MHD_Result ret =
                xd_respond_error(conn, 500, "RUNTIME_ERROR", "write %s: %s", target, strerror(e));
            free(target);
            return ret;
        }
        free(target);
    }
    return xd_respond_empty(conn, 200);
}

/* ---- write at an offset (moat extension) ---- */

bool xd_files_is_write(const char *url, const char *method)
{
    return strcmp(url, "/files/write") == 0 && strcmp(method, "POST") == 0;
}

static void write_fail(xd_write *w, unsigned status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Keeps the first error; the file is closed and the rest of the body is dropped. */
static void write_fail(xd_write *w, unsigned status, const char *code, const char *fmt, ...)
{
    if (w->fd >= 0)
        close(w->fd);
    w->fd = -1;
    if (w->status != 0)
        return;
    w->status = status;
    snprintf(w->code, sizeof(w->code), "%s", code);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->message, sizeof(w->message), fmt, ap);
    va_end(ap);
}

/* A query value of decimal digits only, at most max. */
static bool query_u64(const char *s, uint64_t max, uint64_t *v)
{
    uint64_t x = 0;
    if (s == NULL || *s == '\0')
        return false;
    for (; *s; s++) {
        if (*s < '0' || *s > '9' || x > (max - (uint64_t)(*s - '0')) / 10)
            return false;
        x = x * 10 + (uint64_t)(*s - '0');
    }
    *v = x;
    return true;
}

static void write_start(struct MHD_Connection *conn, xd_write *w)
{
    w->started = true;
    w->fd = -1;
    const char *path = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "path");
    const char *os = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "offset");
    const char *ms = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "mode");
    if (path == NULL || path[0] == '\0') {
        write_fail(w, 400, "MISSING_QUERY", "missing query parameter path");
        return;
    }
    if (os != NULL && !query_u64(os, INT64_MAX, &w->offset)) {
        write_fail(w, 400, "INVALID_REQUEST_BODY",
                   "offset must be a decimal byte offset below 2^63, got %s", os);
        return;
    }
    /* offset > 0 continues a file: its mode stays as the first write left it */
    uint64_t dec = 0;
    uint32_t mode = 0;
    bool set_mode = w->offset == 0 && ms != NULL;
    if (set_mode &&
        (!query_u64(ms, 7777, &dec) || moat_execd_mode_from_decimal((int64_t)dec, &mode))) {
        write_fail(w, 400, "INVALID_REQUEST_BODY", "mode must be octal digits, e.g. 644, got %s",
                   ms);
        return;
    }
    unsigned status = 0;
    char msg[1024];
    w->path = resolve_path(path, &status, msg, sizeof(msg));
    if (w->path == NULL) {
        write_fail(w, status, status == 400 ? "INVALID_REQUEST_BODY" : "RUNTIME_ERROR", "%s", msg);
        return;
    }
    if (w->offset == 0)
        mkdir_parents(w->path, 0755);
    /* O_NONBLOCK: a FIFO without a reader must not hang the request (regular files
     * ignore it); the file is truncated only once it is known to be a regular file. */
    int fd =
        open(w->path, O_WRONLY | O_CLOEXEC | O_NONBLOCK | (w->offset == 0 ? O_CREAT : 0), 0644);
    struct stat sb;
    int e = fd < 0 ? errno : fstat(fd, &sb) != 0 ? errno : 0;
    if (fd >= 0)
        w->fd = fd;
    if (e == ENOENT || e == ENOTDIR)
        write_fail(w, 404, "FILE_NOT_FOUND", "file not found: %s", w->path);
    else if (e == EISDIR || (e == 0 && S_ISDIR(sb.st_mode)))
        write_fail(w, 400, "INVALID_REQUEST_BODY", "%s is a directory", w->path);
    else if (e == ENXIO || (e == 0 && !S_ISREG(sb.st_mode)))
        write_fail(w, 400, "INVALID_REQUEST_BODY", "%s is not a regular file", w->path);
    else if (e != 0)
        write_fail(w, 500, "RUNTIME_ERROR", "open %s: %s", w->path, strerror(e));
    else if (w->offset == 0 && ftruncate(fd, 0) != 0)
        write_fail(w, 500, "RUNTIME_ERROR", "truncate %s: %s", w->path, strerror(errno));
    else if (set_mode && fchmod(fd, mode) != 0)
        write_fail(w, 500, "RUNTIME_ERROR", "chmod %s: %s", w->path, strerror(errno));
}

enum MHD_Result xd_files_write_data(struct MHD_Connection *conn, xd_req *r, const char *data,
                                    size_t len)
{
    xd_write *w = &r->write;
    if (!w->started)
        write_start(conn, w);
    while (w->status == 0 && len > 0) {
        uint64_t at = w->offset + w->written;
        if (len > (uint64_t)INT64_MAX - at) {
            write_fail(w, 400, "INVALID_REQUEST_BODY", "write past the largest file offset");
            break;
        }
        ssize_t n = pwrite(w->fd, data, len, (off_t)at);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            int e = n < 0 ? errno : EIO;
            write_fail(w, e == EFBIG ? 400 : 500,
                       e == EFBIG ? "INVALID_REQUEST_BODY" : "RUNTIME_ERROR",
                       "write %s at offset %" PRIu64 ": %s", w->path, at, strerror(e));
            break;
        }
        data += n;
        len -= (size_t)n;
        w->written += (uint64_t)n;
    }
    return MHD_YES;
}

static enum MHD_Result files_write_done(struct MHD_Connection *conn, xd_req *r)
{
    xd_write *w = &r->write;
    if (!w->started)
        write_start(conn, w);
    if (w->status == 0) {
        int rc = close(w->fd);
        w->fd = -1;
        if (rc != 0)
            write_fail(w, 500, "RUNTIME_ERROR", "write %s: %s", w->path, strerror(errno));
    }
    if (w->status != 0)
        return xd_respond_error(conn, w->status, w->code, "%s", w->message);
    cJSON *o = cJSON_CreateObject();
    if (o != NULL && (!moat__execd_json_set(o, "path", moat__execd_json_str(w->path)) ||
                      cJSON_AddNumberToObject(o, "written", (double)w->written) == NULL)) {
        cJSON_Delete(o);
        o = NULL;
    }
    return xd_respond_json(conn, 200, o);
}

void xd_files_write_end(xd_req *r)
{
    if (r->write.started && r->write.fd >= 0)
        close(r->write.fd);
    r->write.fd = -1;
    free(r->write.path);
    r->write.path = NULL;
}

enum MHD_Result xd_files_route(struct MHD_Connection *conn, xd_req *r, const char *url,
                               const char *method, bool *matched)
{
    bool post = strcmp(method, "POST") == 0, get = strcmp(method, "GET") == 0,
         del = strcmp(method, "DELETE") == 0;
    *matched = true;
    if (get && strcmp(url, "/files/info") == 0)
        return files_info(conn);
    if (del && strcmp(url, "/files") == 0)
        return files_delete(conn);
    if (post && strcmp(url, "/files/mv") == 0)
        return files_mv(conn, r);
    if (post && strcmp(url, "/files/permissions") == 0)
        return files_permissions(conn, r);
    if (get && strcmp(url, "/files/search") == 0)
        return files_search(conn);
    if (post && strcmp(url, "/files/replace") == 0)
        return files_replace(conn, r);
    if (post && strcmp(url, "/files/upload") == 0)
        return files_upload_done(conn, r);
    if (post && strcmp(url, "/files/write") == 0)
        return files_write_done(conn, r);
    if (get && strcmp(url, "/files/download") == 0)
        return files_download(conn);
    if (get && strcmp(url, "/directories/list") == 0)
        return directories_list(conn);
    if (post && strcmp(url, "/directories") == 0)
        return directories_make(conn, r);
    if (del && strcmp(url, "/directories") == 0)
        return directories_delete(conn);
    *matched = false;
    return MHD_NO;
}
