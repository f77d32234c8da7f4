/* Integration tests of the real moat-execd's file API: upload (libcurl's multipart and raw,
 * hostile bodies sent a byte at a time), info, download by bytes and by lines, search,
 * replace (all or nothing), permissions, mv, directories, delete, and POST /files/write. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include "moat_test.h"

#include "xd_fixture.h"

#include <curl/curl.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

static void upload(const char *const *paths, const char *const *contents, size_t n, long want)
{
    CURL *c = curl_easy_init();
    curl_mime *mime = curl_mime_init(c);
    for (size_t i = 0; i < n; i++) {
        if (paths[i] != NULL) {
            char meta[512];
            snprintf(meta, sizeof(meta), "{\"path\":\"%s\",\"mode\":640,\"owner\":null}", paths[i]);
            curl_mimepart *m = curl_mime_addpart(mime);
            curl_mime_name(m, "metadata");
            curl_mime_filename(m, "metadata");
            curl_mime_type(m, "application/json");
            curl_mime_data(m, meta, CURL_ZERO_TERMINATED);
        }
        if (contents[i] != NULL) {
            curl_mimepart *f = curl_mime_addpart(mime);
            curl_mime_name(f, "file");
            curl_mime_filename(f, "blob");
            curl_mime_data(f, contents[i], CURL_ZERO_TERMINATED);
        }
    }
    curl_easy_setopt(c, CURLOPT_URL, "http://localhost/files/upload");
    curl_easy_setopt(c, CURLOPT_UNIX_SOCKET_PATH, xp.unix_t.unix_path);
    curl_easy_setopt(c, CURLOPT_MIMEPOST, mime);
    FILE *devnull = fopen("/dev/null", "w");
    curl_easy_setopt(c, CURLOPT_WRITEDATA, devnull);
    assert_int_equal(curl_easy_perform(c), CURLE_OK);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    assert_int_equal(status, want);
    fclose(devnull);
    curl_mime_free(mime);
    curl_easy_cleanup(c);
}

static char *read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    char *b = calloc(1, 1 << 16);
    size_t n = fread(b, 1, (1 << 16) - 1, f);
    b[n] = '\0';
    fclose(f);
    return b;
}

static void test_files(void **state)
{
    (void)state;
    char p1[256], p2[256], q[1024], body[1024];
    snprintf(p1, sizeof(p1), "%s/up/a.txt", xp.dir);
    snprintf(p2, sizeof(p2), "%s/up/deep/b.bin", xp.dir);
    const char *paths[] = {p1, p2};
    const char *contents[] = {"0123456789abcdef", "second file"};
    upload(paths, contents, 2, 200);
    char *got = read_file(p1);
    assert_string_equal(got, "0123456789abcdef");
    free(got);
    struct stat sb;
    assert_int_equal(stat(p2, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0640);

    /* info */
    snprintf(q, sizeof(q), "/files/info?path=%s&path=%s", p1, p2);
    xd_resp r = xd_http(&xp.unix_t, "GET", q, NULL, NULL);
    assert_int_equal(r.status, 200);
    cJSON *j = xd_json(&r);
    cJSON *fi = cJSON_GetObjectItemCaseSensitive(j, p1);
    assert_string_equal(moat_json_str(fi, "type", NULL), "file");
    assert_int_equal(xd_json_i64(fi, "size"), 16);
    assert_int_equal(xd_json_i64(fi, "mode"), 640);
    assert_string_equal(moat_json_str(fi, "owner", NULL), "root");
    assert_non_null(cJSON_GetObjectItemCaseSensitive(fi, "modified_at"));
    cJSON_Delete(j);
    xd_resp_free(&r);
    /* a path asked for twice is one key */
    snprintf(q, sizeof(q), "/files/info?path=%s&path=%s&path=%s", p1, p2, p1);
    r = xd_http(&xp.unix_t, "GET", q, NULL, NULL);
    assert_int_equal(r.status, 200);
    j = xd_json(&r);
    assert_int_equal(cJSON_GetArraySize(j), 2);
    assert_int_equal(xd_json_i64(cJSON_GetObjectItemCaseSensitive(j, p1), "size"), 16);
    cJSON_Delete(j);
    xd_resp_free(&r);
    snprintf(q, sizeof(q), "/files/info?path=%s/missing", xp.dir);
    r = xd_http(&xp.unix_t, "GET", q, NULL, NULL);
    assert_int_equal(r.status, 404);
    assert_string_equal(xd_error_code(&r), "FILE_NOT_FOUND");
    xd_resp_free(&r);

    /* download, whole and ranges */
    snprintf(q, sizeof(q), "/files/download?path=%s", p1);
    r = xd_http(&xp.tcp_t, "GET", q, NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "0123456789abcdef");
    char *cd = xd_header(&r, "Content-Disposition");
    assert_string_equal(cd, "attachment; filename=\"a.txt\"");
    free(cd);
    xd_resp_free(&r);
    r = xd_http(&xp.tcp_t, "GET", q, NULL, "Range: bytes=2-5");
    assert_int_equal(r.status, 206);
    assert_string_equal(r.body, "2345");
    char *cr = xd_header(&r, "Content-Range");
    assert_string_equal(cr, "bytes 2-5/16");
    free(cr);
    xd_resp_free(&r);
    r = xd_http(&xp.tcp_t, "GET", q, NULL, "Range: bytes=-3");
    assert_string_equal(r.body, "def");
    xd_resp_free(&r);
    r = xd_http(&xp.tcp_t, "GET", q, NULL, "Range: bytes=99-");
    assert_int_equal(r.status, 416);
    assert_string_equal(r.body, "{\"code\":\"UNKNOWN\"}");
    xd_resp_free(&r);
    r = xd_http(&xp.tcp_t, "GET", "/files/download?path=/no/such/file", NULL, NULL);
    assert_int_equal(r.status, 404);
    assert_string_equal(xd_error_code(&r), "FILE_NOT_FOUND");
    xd_resp_free(&r);
    r = xd_http(&xp.tcp_t, "GET", "/files/download", NULL, NULL);
    assert_int_equal(r.status, 400);
    assert_string_equal(xd_error_code(&r), "MISSING_QUERY");
    xd_resp_free(&r);

    /* search: base name glob, files only */
    snprintf(q, sizeof(q), "/files/search?path=%s/up&pattern=*.bin", xp.dir);
    r = xd_http(&xp.unix_t, "GET", q, NULL, NULL);
    j = xd_json(&r);
    assert_int_equal(cJSON_GetArraySize(j), 1);
    assert_string_equal(moat_json_str(cJSON_GetArrayItem(j, 0), "path", NULL), p2);
    cJSON_Delete(j);
    xd_resp_free(&r);
    snprintf(q, sizeof(q), "/files/search?path=%s/up", xp.dir);
    r = xd_http(&xp.unix_t, "GET", q, NULL, NULL);
    j = xd_json(&r);
    assert_int_equal(cJSON_GetArraySize(j), 2);
    cJSON_Delete(j);
    xd_resp_free(&r);

    /* replace */
    snprintf(body, sizeof(body), "{\"%s\":{\"old\":\"abc\",\"new\":\"XY\"}}", p1);
    r = xd_http(&xp.unix_t, "POST", "/files/replace?verbose=true", body, NULL);
    assert_int_equal(r.status, 200);
    j = xd_json(&r);
    assert_int_equal(xd_json_i64(cJSON_GetObjectItemCaseSensitive(j, p1), "replacedCount"), 1);
    cJSON_Delete(j);
    xd_resp_free(&r);
    got = read_file(p1);
    assert_string_equal(got, "0123456789XYdef");
    free(got);
    snprintf(body, sizeof(body), "{\"%s\":{\"old\":\"\",\"new\":\"x\"}}", p1);
    r = xd_http(&xp.unix_t, "POST", "/files/replace", body, NULL);
    assert_int_equal(r.status, 400);
    xd_resp_free(&r);

    /* permissions */
    snprintf(body, sizeof(body), "{\"%s\":{\"mode\":600,\"owner\":\"root\"}}", p1);
    r = xd_http(&xp.unix_t, "POST", "/files/permissions", body, NULL);
    assert_int_equal(r.status, 200);
    xd_resp_free(&r);
    assert_int_equal(stat(p1, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0600);

    /* mv: dest must not exist, parents are made */
    char p3[256];
    snprintf(p3, sizeof(p3), "%s/moved/to/c.txt", xp.dir);
    snprintf(body, sizeof(body), "[{\"src\":\"%s\",\"dest\":\"%s\"}]", p1, p3);
    r = xd_http(&xp.unix_t, "POST", "/files/mv", body, NULL);
    assert_int_equal(r.status, 200);
    xd_resp_free(&r);
    assert_int_equal(access(p3, F_OK), 0);
    assert_int_not_equal(access(p1, F_OK), 0);
    snprintf(body, sizeof(body), "[{\"src\":\"%s\",\"dest\":\"%s\"}]", p3, p2);
    r = xd_http(&xp.unix_t, "POST", "/files/mv", body, NULL);
    assert_int_equal(r.status, 500);
    xd_resp_free(&r);

    /* directories: make, list with depth, delete */
    snprintf(body, sizeof(body), "{\"%s/d1/d2\":{\"mode\":750}}", xp.dir);
    r = xd_http(&xp.unix_t, "POST", "/directories", body, NULL);
    assert_int_equal(r.status, 200);
    xd_resp_free(&r);
    snprintf(q, sizeof(q), "%s/d1/d2", xp.dir);
    assert_int_equal(stat(q, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0750);
    snprintf(q, sizeof(q), "/directories/list?path=%s/d1", xp.dir);
    r = xd_http(&xp.unix_t, "GET", q, NULL, NULL);
    j = xd_json(&r);
    assert_int_equal(cJSON_GetArraySize(j), 1);
    assert_string_equal(moat_json_str(cJSON_GetArrayItem(j, 0), "type", NULL), "directory");
    cJSON_Delete(j);
    xd_resp_free(&r);
    snprintf(q, sizeof(q), "/directories/list?path=%s/up&depth=2", xp.dir);
    r = xd_http(&xp.unix_t, "GET", q, NULL, NULL);
    j = xd_json(&r);
    assert_int_equal(cJSON_GetArraySize(j), 2); /* deep/ and deep/b.bin */
    cJSON_Delete(j);
    xd_resp_free(&r);
    snprintf(q, sizeof(q), "/directories/list?path=%s/up&depth=0", xp.dir);
    r = xd_http(&xp.unix_t, "GET", q, NULL, NULL);
    assert_string_equal(r.body, "[]");
    xd_resp_free(&r);
    char link[256];
    snprintf(link, sizeof(link), "%s/lnk", xp.dir);
    assert_int_equal(symlink("/tmp", link), 0);
    snprintf(q, sizeof(q), "/directories/list?path=%s", link);
    r = xd_http(&xp.unix_t, "GET", q, NULL, NULL);
    assert_int_equal(r.status, 400);
    xd_resp_free(&r);

    /* delete files: a missing one is ignored; a directory is an error */
    snprintf(q, sizeof(q), "/files?path=%s&path=%s/nothing", p3, xp.dir);
    r = xd_http(&xp.unix_t, "DELETE", q, NULL, NULL);
    assert_int_equal(r.status, 200);
    xd_resp_free(&r);
    assert_int_not_equal(access(p3, F_OK), 0);
    snprintf(q, sizeof(q), "/files?path=%s/d1", xp.dir);
    r = xd_http(&xp.unix_t, "DELETE", q, NULL, NULL);
    assert_int_equal(r.status, 500);
    xd_resp_free(&r);
    snprintf(q, sizeof(q), "/directories?path=%s/d1", xp.dir);
    r = xd_http(&xp.unix_t, "DELETE", q, NULL, NULL);
    assert_int_equal(r.status, 200);
    xd_resp_free(&r);
    snprintf(q, sizeof(q), "%s/d1", xp.dir);
    assert_int_not_equal(access(q, F_OK), 0);
}

/* Sends raw bytes over the Unix socket, n bytes per write; returns the status line code. */
static long raw_request(const char *req, size_t len, size_t step, char *resp, size_t resplen)
{
    int fd = connect_unix();
    for (size_t i = 0; i < len; i += step) {
        size_t n = len - i < step ? len - i : step;
        assert_int_equal(write(fd, req + i, n), (ssize_t)n);
        if (step < 8)
            nap_ms(1);
    }
    shutdown(fd, SHUT_WR);
    size_t got = 0;
    ssize_t n;
    while (got + 1 < resplen && (n = read(fd, resp + got, resplen - 1 - got)) > 0)
        got += (size_t)n;
    resp[got] = '\0';
    close(fd);
    long status = 0;
    sscanf(resp, "HTTP/1.1 %ld", &status);
    return status;
}

static size_t multipart(char *out, size_t cap, const char *parts, bool chunk_lie)
{
    size_t blen = strlen(parts);
    return (size_t)snprintf(out, cap,
                            "POST /files/upload HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                            "Content-Type: multipart/form-data; boundary=BOUND\r\n"
                            "Content-Length: %zu\r\n\r\n%s",
                            chunk_lie ? blen + 40 : blen, parts);
}

/* GET /files/download?offset=&limit=: lines, as newer execd and its SDKs read them. */
static void test_download_lines(void **state)
{
    (void)state;
    char path[256], q[512];
    snprintf(path, sizeof(path), "%s/lines.txt", xp.dir);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    /* 200,000 lines cross many of the server's 64 KiB read blocks; the last has no newline. */
    for (int i = 1; i <= 200000; i++)
        fprintf(f, i == 200000 ? "line %d" : "line %d\n", i);
    fclose(f);

    snprintf(q, sizeof(q), "/files/download?path=%s&offset=149999&limit=3", path);
    xd_resp r = xd_http(&xp.tcp_t, "GET", q, NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "line 149999\nline 150000\nline 150001\n");
    char *ct = xd_header(&r, "Content-Type");
    assert_string_equal(ct, "text/plain");
    free(ct);
    xd_resp_free(&r);
    /* the last line, without its newline; a limit past the end */
    snprintf(q, sizeof(q), "/files/download?path=%s&offset=199999&limit=10", path);
    r = xd_http(&xp.unix_t, "GET", q, NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "line 199999\nline 200000");
    xd_resp_free(&r);
    /* an offset past the end is an empty 200; a Range header does not apply to lines */
    snprintf(q, sizeof(q), "/files/download?path=%s&offset=300000&limit=1", path);
    r = xd_http(&xp.unix_t, "GET", q, NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "");
    xd_resp_free(&r);
    snprintf(q, sizeof(q), "/files/download?path=%s&offset=1&limit=2", path);
    r = xd_http(&xp.unix_t, "GET", q, NULL, "Range: bytes=3-4");
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "line 1\nline 2\n");
    xd_resp_free(&r);

    static const char *const bad[] = {"offset=5",          "limit=5",          "offset=0&limit=1",
                                      "offset=1&limit=-1", "offset=x&limit=1", "offset=1&limit="};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(q, sizeof(q), "/files/download?path=%s&%s", path, bad[i]);
        r = xd_http(&xp.unix_t, "GET", q, NULL, NULL);
        assert_int_equal(r.status, 400);
        assert_string_equal(xd_error_code(&r), "INVALID_REQUEST_BODY");
        xd_resp_free(&r);
    }
    r = xd_http(&xp.unix_t, "GET", "/files/download?path=/no/such/file&offset=1&limit=1", NULL,
                NULL);
    assert_int_equal(r.status, 404);
    assert_string_equal(xd_error_code(&r), "FILE_NOT_FOUND");
    xd_resp_free(&r);
    /* execd still serves whole downloads afterwards */
    snprintf(q, sizeof(q), "/files/download?path=%s", path);
    r = xd_http(&xp.unix_t, "GET", q, NULL, "Range: bytes=0-5");
    assert_int_equal(r.status, 206);
    assert_string_equal(r.body, "line 1");
    xd_resp_free(&r);
    unlink(path);
}

static void test_upload_raw(void **state)
{
    (void)state;
    char req[8192], resp[4096], parts[4096], never[160];
    /* A path in this run's own dir that nothing makes, so only execd could have made it. */
    snprintf(never, sizeof(never), "%s/never", xp.dir);
    /* a valid pair sent one byte at a time: MHD's parser sees every split point */
    snprintf(parts, sizeof(parts),
             "--BOUND\r\nContent-Disposition: form-data; name=\"metadata\"; filename=\"m\"\r\n"
             "Content-Type: application/json\r\n\r\n{\"path\":\"%s/raw/one.txt\"}\r\n"
             "--BOUND\r\nContent-Disposition: form-data; name=\"file\"; filename=\"one.txt\"\r\n"
             "Content-Type: application/octet-stream\r\n\r\nline1\r\n-BOUND-lookalike\r\n"
             "--BOUND--\r\n",
             xp.dir);
    size_t n = multipart(req, sizeof(req), parts, false);
    assert_int_equal(raw_request(req, n, 1, resp, sizeof(resp)), 200);
    char path[256];
    snprintf(path, sizeof(path), "%s/raw/one.txt", xp.dir);
    char *got = read_file(path);
    assert_string_equal(got, "line1\r\n-BOUND-lookalike");
    free(got);
    /* metadata without its file */
    snprintf(parts, sizeof(parts),
             "--BOUND\r\nContent-Disposition: form-data; name=\"metadata\"; filename=\"m\"\r\n"
             "\r\n{\"path\":\"/tmp/x\"}\r\n--BOUND\r\nContent-Disposition: form-data; "
             "name=\"metadata\"; filename=\"m\"\r\n\r\n{\"path\":\"/tmp/y\"}\r\n--BOUND\r\n"
             "Content-Disposition: form-data; name=\"file\"; filename=\"f\"\r\n\r\nzz\r\n"
             "--BOUND--\r\n");
    n = multipart(req, sizeof(req), parts, false);
    assert_int_equal(raw_request(req, n, 7, resp, sizeof(resp)), 400);
    assert_non_null(strstr(resp, "\"INVALID_FILE\""));
    /* a file without metadata */
    snprintf(parts, sizeof(parts),
             "--BOUND\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f\"\r\n\r\n"
             "zz\r\n--BOUND--\r\n");
    n = multipart(req, sizeof(req), parts, false);
    assert_int_equal(raw_request(req, n, 4096, resp, sizeof(resp)), 400);
    assert_non_null(strstr(resp, "\"INVALID_FILE\""));
    /* bad metadata JSON */
    snprintf(parts, sizeof(parts),
             "--BOUND\r\nContent-Disposition: form-data; name=\"metadata\"; filename=\"m\"\r\n"
             "\r\n{\"path\":12}\r\n--BOUND\r\nContent-Disposition: form-data; name=\"file\"; "
             "filename=\"f\"\r\n\r\nzz\r\n--BOUND--\r\n");
    n = multipart(req, sizeof(req), parts, false);
    assert_int_equal(raw_request(req, n, 4096, resp, sizeof(resp)), 400);
    assert_non_null(strstr(resp, "\"INVALID_FILE_METADATA\""));
    /* no closing boundary: the body ends inside a part */
    snprintf(parts, sizeof(parts),
             "--BOUND\r\nContent-Disposition: form-data; name=\"metadata\"; filename=\"m\"\r\n"
             "\r\n{\"path\":\"%s\"}\r\n--BOUND\r\nContent-Disposition: form-data; "
             "name=\"file\"; filename=\"f\"\r\n\r\ntruncated",
             never);
    n = multipart(req, sizeof(req), parts, false);
    assert_int_equal(raw_request(req, n, 4096, resp, sizeof(resp)), 400);
    assert_int_not_equal(access(never, F_OK), 0);
    /* Content-Length larger than what is sent: the connection ends early, no file written */
    n = multipart(req, sizeof(req), parts, true);
    raw_request(req, n, 4096, resp, sizeof(resp));
    assert_int_not_equal(access(never, F_OK), 0);
    /* not multipart at all */
    const char plain[] = "POST /files/upload HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                         "Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
    assert_int_equal(raw_request(plain, sizeof(plain) - 1, 4096, resp, sizeof(resp)), 400);
    /* and execd still serves; no temporary upload files are left behind */
    check_command_basics(&xp.unix_t);
    char state_dir[256];
    snprintf(state_dir, sizeof(state_dir), "%s/state", xp.dir);
    DIR *d = opendir(state_dir);
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        assert_null(strstr(e->d_name, "upload-"));
    closedir(d);
}

/* ---- POST /files/write (moat extension) ---- */

static xd_resp write_at(const char *query, const void *body, size_t len)
{
    char path[1100];
    snprintf(path, sizeof(path), "/files/write?%s", query);
    return xd_http_body(&xp.unix_t, "POST", path, body, len, NULL);
}

static void check_written(xd_resp *r, const char *path, int64_t written)
{
    assert_int_equal(r->status, 200);
    cJSON *j = xd_json(r);
    assert_non_null(j);
    assert_string_equal(moat_json_str(j, "path", NULL), path);
    assert_int_equal(xd_json_i64(j, "written"), written);
    cJSON_Delete(j);
    xd_resp_free(r);
}

static void check_error(xd_resp *r, long status, const char *code)
{
    assert_int_equal(r->status, status);
    assert_string_equal(xd_error_code(r), code);
    xd_resp_free(r);
}

/* The whole file, which must be exactly len bytes. */
static void check_content(const char *path, const void *want, size_t len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    char *got = malloc(len + 1);
    assert_int_equal(fread(got, 1, len + 1, f), len);
    fclose(f);
    assert_memory_equal(got, want, len);
    free(got);
}

static void test_files_write(void **state)
{
    (void)state;
    char p[256], q[1024];
    snprintf(p, sizeof(p), "%s/w/deep/f.bin", xp.dir);
    /* offset absent: create (parents too), binary bytes exactly, mode applied */
    snprintf(q, sizeof(q), "path=%s&mode=600", p);
    xd_resp r = write_at(q, "ab\0\xff\n", 5);
    check_written(&r, p, 5);
    check_content(p, "ab\0\xff\n", 5);
    struct stat sb;
    assert_int_equal(stat(p, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0600);
    /* offset 0 truncates; without mode= the file keeps its mode */
    snprintf(q, sizeof(q), "path=%s&offset=0", p);
    r = write_at(q, "abc", 3);
    check_written(&r, p, 3);
    check_content(p, "abc", 3);
    assert_int_equal(stat(p, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0600);
    /* extend at the end, then overwrite inside without truncating; mode= is ignored */
    snprintf(q, sizeof(q), "path=%s&offset=3&mode=999", p);
    r = write_at(q, "defg", 4);
    check_written(&r, p, 4);
    snprintf(q, sizeof(q), "path=%s&offset=1", p);
    r = write_at(q, "X", 1);
    check_written(&r, p, 1);
    check_content(p, "aXcdefg", 7);
    assert_int_equal(stat(p, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0600);
    /* an empty body at an offset writes nothing and changes nothing */
    snprintf(q, sizeof(q), "path=%s&offset=7", p);
    r = write_at(q, NULL, 0);
    check_written(&r, p, 0);
    check_content(p, "aXcdefg", 7);
    /* past the end: a hole of zeros */
    snprintf(q, sizeof(q), "path=%s&offset=1048576", p);
    r = write_at(q, "Z", 1);
    check_written(&r, p, 1);
    assert_int_equal(stat(p, &sb), 0);
    assert_int_equal(sb.st_size, 1048577);
    char *want = calloc(1, 1048577);
    memcpy(want, "aXcdefg", 7);
    want[1048576] = 'Z';
    check_content(p, want, 1048577);
    free(want);
    /* an empty body at offset 0 creates an empty file */
    char empty[256];
    snprintf(empty, sizeof(empty), "%s/w/empty", xp.dir);
    snprintf(q, sizeof(q), "path=%s", empty);
    r = write_at(q, NULL, 0);
    check_written(&r, empty, 0);
    assert_int_equal(stat(empty, &sb), 0);
    assert_int_equal(sb.st_size, 0);
    /* paths are expanded like every file endpoint's: an undefined variable is a 400 */
    snprintf(q, sizeof(q), "path=%s/w/$XD_UNDEFINED_VAR/x", xp.dir);
    r = write_at(q, "x", 1);
    check_error(&r, 400, "INVALID_REQUEST_BODY");

    /* a missing file at an offset: 404 FILE_NOT_FOUND, and nothing is created */
    char missing[256];
    snprintf(missing, sizeof(missing), "%s/w/missing", xp.dir);
    snprintf(q, sizeof(q), "path=%s&offset=5", missing);
    r = write_at(q, "data", 4);
    assert_int_equal(r.status, 404);
    assert_string_equal(xd_error_code(&r), "FILE_NOT_FOUND");
    assert_non_null(strstr(xd_error_message(&r), missing));
    xd_resp_free(&r);
    assert_int_not_equal(access(missing, F_OK), 0);
    snprintf(q, sizeof(q), "path=%s/w/nodir/f&offset=1", xp.dir);
    r = write_at(q, "d", 1);
    check_error(&r, 404, "FILE_NOT_FOUND");
    /* a directory, at offset 0 and beyond */
    char dir[256];
    snprintf(dir, sizeof(dir), "%s/w/deep", xp.dir);
    snprintf(q, sizeof(q), "path=%s", dir);
    r = write_at(q, "d", 1);
    check_error(&r, 400, "INVALID_REQUEST_BODY");
    snprintf(q, sizeof(q), "path=%s&offset=2", dir);
    r = write_at(q, "d", 1);
    check_error(&r, 400, "INVALID_REQUEST_BODY");
    assert_int_equal(stat(dir, &sb), 0);
    assert_true(S_ISDIR(sb.st_mode));
    /* bad offsets and modes; the file is left alone */
    const char *bad_offsets[] = {
        "abc", "-1", "", "1x", "%2B3", "9223372036854775808", "99999999999999999999"};
    for (size_t i = 0; i < sizeof(bad_offsets) / sizeof(bad_offsets[0]); i++) {
        snprintf(q, sizeof(q), "path=%s&offset=%s", p, bad_offsets[i]);
        r = write_at(q, "bad", 3);
        check_error(&r, 400, "INVALID_REQUEST_BODY");
    }
    const char *bad_modes[] = {"999", "8", "-644", "abc", "17777"};
    for (size_t i = 0; i < sizeof(bad_modes) / sizeof(bad_modes[0]); i++) {
        snprintf(q, sizeof(q), "path=%s&mode=%s", p, bad_modes[i]);
        r = write_at(q, "bad", 3);
        check_error(&r, 400, "INVALID_REQUEST_BODY");
    }
    assert_int_equal(stat(p, &sb), 0);
    assert_int_equal(sb.st_size, 1048577);
    /* no path */
    r = write_at("offset=0", "x", 1);
    check_error(&r, 400, "MISSING_QUERY");
    /* only POST */
    snprintf(q, sizeof(q), "/files/write?path=%s", p);
    r = xd_http(&xp.unix_t, "PUT", q, "x", "Content-Type: application/octet-stream");
    assert_int_equal(r.status, 404);
    xd_resp_free(&r);
    /* the same over TCP, and execd still serves */
    snprintf(q, sizeof(q), "/files/write?path=%s&offset=1", p);
    r = xd_http_body(&xp.tcp_t, "POST", q, "Y", 1, NULL);
    check_written(&r, p, 1);
    check_command_basics(&xp.unix_t);
}

typedef struct pattern_src {
    uint64_t sent, total;
} pattern_src;

static uint8_t pattern_byte(uint64_t i)
{
    return (uint8_t)((i * 2654435761u) >> 13);
}

static size_t pattern_read(char *buf, size_t size, size_t n, void *ud)
{
    pattern_src *s = ud;
    size_t k = size * n;
    if (k > s->total - s->sent)
        k = (size_t)(s->total - s->sent);
    for (size_t i = 0; i < k; i++)
        buf[i] = (char)pattern_byte(s->sent + i);
    s->sent += k;
    return k;
}

/* 64 MiB in one chunked body at an offset: written as it arrives (execd's RSS stays
 * flat), every byte in its place. */
static void test_files_write_streamed(void **state)
{
    (void)state;
    /* smaller under valgrind, where every byte costs far more */
    const uint64_t total = xd_wrapped() ? 8u << 20 : 64u << 20, at = 4096;
    char p[256], q[512], url[1024];
    snprintf(p, sizeof(p), "%s/w/big.bin", xp.dir);
    snprintf(q, sizeof(q), "path=%s", p);
    xd_resp r = write_at(q, NULL, 0);
    check_written(&r, p, 0);
    long before = xd_rss_kb(xp.pid);
    CURL *c = curl_easy_init();
    struct curl_slist *h = curl_slist_append(NULL, "Transfer-Encoding: chunked");
    h = curl_slist_append(h, "Expect:");
    pattern_src src = {0, total};
    char *answer = NULL;
    size_t answer_len = 0;
    FILE *out = open_memstream(&answer, &answer_len);
    snprintf(url, sizeof(url), "http://localhost/files/write?path=%s&offset=%llu", p,
             (unsigned long long)at);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_UNIX_SOCKET_PATH, xp.unix_t.unix_path);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_POST, 1L);
    curl_easy_setopt(c, CURLOPT_READFUNCTION, pattern_read);
    curl_easy_setopt(c, CURLOPT_READDATA, &src);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, out);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 240L);
    assert_int_equal(curl_easy_perform(c), CURLE_OK);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    fclose(out);
    assert_int_equal(status, 200);
    cJSON *j = moat_json_parse(answer, answer_len, MOAT_JSON_NUL_REJECT);
    free(answer);
    assert_int_equal(xd_json_i64(j, "written"), (int64_t)total);
    cJSON_Delete(j);
    long after = xd_rss_kb(xp.pid);
    print_message("execd VmRSS before %ld kB, after %ld kB\n", before, after);
    if (!xd_wrapped())
        assert_true(after - before < 16 * 1024);
    else
        moat_skip_note(rss_unchecked);
    FILE *f = fopen(p, "rb");
    assert_non_null(f);
    static uint8_t buf[1 << 16];
    uint64_t pos = 0;
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), f)) > 0) {
        for (size_t i = 0; i < n; i++, pos++) {
            uint8_t want = pos < at ? 0 : pattern_byte(pos - at);
            if (buf[i] != want)
                fail_msg("byte %llu is %u, not %u", (unsigned long long)pos, buf[i], want);
        }
    }
    fclose(f);
    assert_int_equal(pos, at + total);
    unlink(p);
}

/* A replace that cannot be completed (here: the new content does not fit the file system)
 * leaves the file exactly as it was, and a completed one keeps the file's mode. */
static char replace_dir[32];

/* Runs even when the test failed: the small tmpfs goes, whatever the test left in it. */
static int replace_teardown(void **state)
{
    (void)state;
    if (replace_dir[0] != '\0') {
        umount2(replace_dir, MNT_DETACH);
        rmdir(replace_dir);
        replace_dir[0] = '\0';
    }
    return 0;
}

static void test_replace_is_all_or_nothing(void **state)
{
    (void)state;
    moat_require(getuid() == 0, "needs root");
    snprintf(replace_dir, sizeof(replace_dir), "/tmp/moat-replace-XXXXXX");
    assert_non_null(mkdtemp(replace_dir));
    assert_int_equal(mount("moat-test", replace_dir, "tmpfs", 0, "size=64k"), 0);
    const char *dir = replace_dir;
    char path[128], body[512];
    snprintf(path, sizeof(path), "%s/f.txt", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    for (int i = 0; i < 40 * 1024; i++)
        fputc('a', f);
    fclose(f);
    assert_int_equal(chmod(path, 0640), 0);
    /* Doubling every byte needs 80 KiB next to the 40 KiB file: ENOSPC. */
    snprintf(body, sizeof(body), "{\"%s\":{\"old\":\"a\",\"new\":\"bb\"}}", path);
    xd_resp r = xd_http(&xp.unix_t, "POST", "/files/replace", body, NULL);
    assert_int_equal(r.status, 500);
    assert_non_null(strstr(r.body, "No space left on device"));
    xd_resp_free(&r);
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    assert_int_equal(sb.st_size, 40 * 1024);
    char *got = read_file(path);
    assert_int_equal(strspn(got, "a"), 40 * 1024);
    free(got);
    /* Nothing left behind by the failed attempt: only the file itself. */
    DIR *d = opendir(dir);
    assert_non_null(d);
    int entries = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;)
        entries += strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0;
    closedir(d);
    assert_int_equal(entries, 1);
    /* One that fits replaces the whole file, mode kept. */
    snprintf(body, sizeof(body), "{\"%s\":{\"old\":\"aaaa\",\"new\":\"b\"}}", path);
    r = xd_http(&xp.unix_t, "POST", "/files/replace", body, NULL);
    assert_int_equal(r.status, 200);
    xd_resp_free(&r);
    assert_int_equal(stat(path, &sb), 0);
    assert_int_equal(sb.st_size, 10 * 1024);
    assert_int_equal(sb.st_mode & 0777, 0640);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_files),
        cmocka_unit_test(test_download_lines),
        cmocka_unit_test(test_upload_raw),
        cmocka_unit_test(test_files_write),
        cmocka_unit_test(test_files_write_streamed),
        cmocka_unit_test_teardown(test_replace_is_all_or_nothing, replace_teardown),
        cmocka_unit_test(test_execd_exits_0_on_sigterm),
    };
    return moat_run_group_tests("test_execd_files", tests, xd_fixture_setup, xd_fixture_teardown);
}
