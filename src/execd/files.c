/* The /files and /directories endpoints that describe, move, change or list files (info,
 * delete, mv, permissions, search, replace, directories) and the router for all of /files;
 * the bytes in and out (download, upload, write) are in files_transfer.c. */
#include "files_internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <ftw.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define REPLACE_MAX (256u << 20)
#define SEARCH_MAX  100000
#define LIST_MAX    100000

/* ---- helpers (those named xd_files_ are shared with files_transfer.c) ---- */

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

char *xd_files_resolve_path(const char *in, unsigned *status, char *msg, size_t msglen)
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

char *xd_files_client_path(struct MHD_Connection *conn, const char *in, enum MHD_Result *ret)
{
    unsigned status = 0;
    char msg[1024];
    char *p = xd_files_resolve_path(in, &status, msg, sizeof(msg));
    if (p == NULL)
        *ret = xd_respond_error(
            conn, status, status == 400 ? "INVALID_REQUEST_BODY" : "RUNTIME_ERROR", "%s", msg);
    return p;
}

enum MHD_Result xd_files_errno_error(struct MHD_Connection *conn, int e, const char *what,
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

void xd_files_mkdir_parents(char *path, mode_t mode)
{
    for (char *p = path + 1; *p; p++) {
        if (*p == '/') {
            *p = '\0';
            mkdir(path, mode);
            *p = '/';
        }
    }
}

int xd_files_apply_perm(const char *path, const char *owner, const char *group, uint32_t mode)
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
        char *p = xd_files_client_path(conn, q.vals[i], &ret);
        if (p == NULL) {
            cJSON_Delete(out);
            return ret;
        }
        struct stat sb;
        if (lstat(p, &sb) != 0) {
            ret = xd_files_errno_error(conn, errno, "stat", p);
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
        char *p = xd_files_client_path(conn, q.vals[i], &ret);
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
            ret = xd_files_errno_error(conn, errno, "remove", p);
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
        char *src = xd_files_client_path(conn, moat_json_str(item, "src", NULL), &ret);
        char *dst =
            src ? xd_files_client_path(conn, moat_json_str(item, "dest", NULL), &ret) : NULL;
        if (dst == NULL) {
            free(src);
            cJSON_Delete(root);
            return ret;
        }
        struct stat sb;
        bool ok = false;
        if (lstat(src, &sb) != 0) {
            ret = xd_files_errno_error(conn, errno, "stat", src);
        } else if (lstat(dst, &sb) == 0) {
            ret =
                xd_respond_error(conn, 500, "RUNTIME_ERROR", "destination %s already exists", dst);
        } else {
            xd_files_mkdir_parents(dst, 0755);
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
        char *p = xd_files_client_path(conn, key, &ret);
        if (p == NULL) {
            cJSON_Delete(root);
            return ret;
        }
        struct stat sb;
        int e = lstat(p, &sb) != 0 ? errno : xd_files_apply_perm(p, owner, group, mode);
        if (e != 0) {
            ret = xd_files_errno_error(conn, e, "chmod", p);
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
    char *p = xd_files_client_path(conn, path, &ret);
    if (p == NULL)
        return ret;
    struct stat sb;
    if (stat(p, &sb) != 0) {
        ret = xd_files_errno_error(conn, errno, "stat", p);
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
    char *p = xd_files_client_path(conn, path, &ret);
    if (p == NULL)
        return ret;
    struct stat sb;
    if (lstat(p, &sb) != 0) {
        ret = xd_files_errno_error(conn, errno, "stat", p);
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
            ret = xd_files_errno_error(conn, e, "list", p);
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
        char *p = xd_files_client_path(conn, key, &ret);
        if (p == NULL) {
            cJSON_Delete(root);
            return ret;
        }
        xd_files_mkdir_parents(p, 0755);
        int e = 0;
        if (mkdir(p, mode ? mode : 0755) != 0 && errno != EEXIST)
            e = errno;
        struct stat sb;
        if (e == 0 && (stat(p, &sb) != 0 || !S_ISDIR(sb.st_mode)))
            e = ENOTDIR;
        if (e == 0)
            e = xd_files_apply_perm(p, owner, group, mode);
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
        char *p = xd_files_client_path(conn, q.vals[i], &ret);
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
        char *p = xd_files_client_path(conn, key, &ret);
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
                              : xd_files_errno_error(conn, e, "open", p);
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
            ret = xd_files_errno_error(conn, e, "replace", p);
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
        return xd_files_upload_done(conn, r);
    if (post && strcmp(url, "/files/write") == 0)
        return xd_files_write_done(conn, r);
    if (get && strcmp(url, "/files/download") == 0)
        return xd_files_download(conn);
    if (get && strcmp(url, "/directories/list") == 0)
        return directories_list(conn);
    if (post && strcmp(url, "/directories") == 0)
        return directories_make(conn, r);
    if (del && strcmp(url, "/directories") == 0)
        return directories_delete(conn);
    *matched = false;
    return MHD_NO;
}
