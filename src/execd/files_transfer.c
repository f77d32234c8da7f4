/* The /files endpoints that move a file's bytes: download (whole, a byte range or a window of
 * lines), multipart upload and write at an offset (moat extension). files.c routes to them. */
#include "files_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define META_MAX     (64u * 1024)
#define UPLOAD_PARTS 1024

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

enum MHD_Result xd_files_download(struct MHD_Connection *conn)
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
    char *p = xd_files_client_path(conn, path, &ret);
    if (p == NULL)
        return ret;
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) != 0) {
        ret = xd_files_errno_error(conn, errno, "open", p);
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

enum MHD_Result xd_files_upload_done(struct MHD_Connection *conn, xd_req *r)
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
        xd_files_mkdir_parents(target, 0755);
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
            e = xd_files_apply_perm(target, pr->owner, pr->group, pr->mode);
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
    w->path = xd_files_resolve_path(path, &status, msg, sizeof(msg));
    if (w->path == NULL) {
        write_fail(w, status, status == 400 ? "INVALID_REQUEST_BODY" : "RUNTIME_ERROR", "%s", msg);
        return;
    }
    if (w->offset == 0)
        xd_files_mkdir_parents(w->path, 0755);
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

enum MHD_Result xd_files_write_done(struct MHD_Connection *conn, xd_req *r)
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
