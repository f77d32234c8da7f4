/* Integration tests: the real moat-execd on a Unix socket and on 127.0.0.1, driven with
 * libcurl over every endpoint. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include "moat_test.h"

#include "xd_client.h"

#include <curl/curl.h>
#include <dirent.h>
#include <pthread.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static xd_proc xp;
/* Under a wrapper (valgrind) VmRSS is the tool's, which grows on its own. */
static const char rss_unchecked[] = "execd's RSS bound not checked under valgrind";

static void nap_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static const xd_target *both[2];

static void check_command_basics(const xd_target *t)
{
    xd_run r;
    xd_stream(t, "/command", "{\"command\":\"echo hi\"}", false, &r);
    assert_int_equal(r.status, 200);
    assert_int_equal(strlen(r.id), 32);
    assert_true(r.complete);
    assert_false(r.error);
    assert_int_equal(xd_exit_code(&r), 0);
    assert_string_equal(r.out, "hi");
    assert_true(r.pings >= 1);
    assert_int_equal(strncmp(r.types, "init,ping,", 10), 0);

    xd_stream(t, "/command", "{\"command\":\"echo out; echo err >&2; exit 7\"}", false, &r);
    assert_true(r.error);
    assert_false(r.complete);
    assert_int_equal(xd_exit_code(&r), 7);
    assert_string_equal(r.traceback, "exit status 7");
    assert_string_equal(r.out, "out");
    assert_string_equal(r.err, "err");

    xd_stream(t, "/command", "{\"command\":\"kill -9 $$\"}", false, &r);
    assert_int_equal(xd_exit_code(&r), -1);
    assert_string_equal(r.traceback, "signal: killed");
}

static void test_exit_codes(void **state)
{
    (void)state;
    for (int i = 0; i < 2; i++)
        check_command_basics(both[i]);
}

static void test_ping_and_unknown(void **state)
{
    (void)state;
    for (int i = 0; i < 2; i++) {
        xd_resp r = xd_http(both[i], "GET", "/ping", NULL, NULL);
        assert_int_equal(r.status, 200);
        assert_int_equal(r.len, 0);
        xd_resp_free(&r);
        r = xd_http(both[i], "GET", "/nope", NULL, NULL);
        assert_int_equal(r.status, 404);
        xd_resp_free(&r);
    }
}

static void test_lines_and_last_line(void **state)
{
    (void)state;
    xd_run r;
    xd_stream(&xp.unix_t, "/command", "{\"command\":\"printf 'a\\\\n\\\\nb\\\\r\\\\nlast'\"}",
              false, &r);
    assert_true(r.complete);
    assert_int_equal(r.nlines, 4);
    assert_string_equal(r.out_lines[0], "a");
    assert_string_equal(r.out_lines[1], "\n");
    assert_string_equal(r.out_lines[2], "b");
    assert_string_equal(r.out_lines[3], "last");
}

static void test_cwd_env(void **state)
{
    (void)state;
    xd_run r;
    char body[512];
    snprintf(
        body, sizeof(body),
        "{\"command\":\"pwd; echo $FOO\",\"cwd\":\"${MOAT_XD_DIR}\",\"envs\":{\"FOO\":\"b r\"}}");
    xd_stream(&xp.tcp_t, "/command", body, false, &r);
    assert_true(r.complete);
    assert_int_equal(r.nlines, 2);
    assert_string_equal(r.out_lines[0], xp.dir);
    assert_string_equal(r.out_lines[1], "b r");
}

static void test_timeout(void **state)
{
    (void)state;
    xd_run r;
    /* a child that ignores nothing but keeps the pipe: the whole group must die */
    xd_stream(&xp.unix_t, "/command", "{\"command\":\"sleep 60 & sleep 60\",\"timeout\":300}",
              false, &r);
    assert_true(r.error);
    assert_int_equal(xd_exit_code(&r), -1);
    assert_string_equal(r.traceback, "signal: killed");
}

static cJSON *status_of(const char *id)
{
    char path[128];
    snprintf(path, sizeof(path), "/command/status/%s", id);
    xd_resp r = xd_http(&xp.unix_t, "GET", path, NULL, NULL);
    assert_int_equal(r.status, 200);
    cJSON *j = xd_json(&r);
    xd_resp_free(&r);
    assert_non_null(j);
    return j;
}

/* Polls the status until the command has finished (bounded). */
static cJSON *wait_done(const char *id)
{
    for (int i = 0; i < 2400; i++) {
        cJSON *j = status_of(id);
        if (!cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "running")))
            return j;
        cJSON_Delete(j);
        nap_ms(25);
    }
    fail_msg("command %s did not finish", id);
    return NULL;
}

static void test_background_logs(void **state)
{
    (void)state;
    xd_run r;
    xd_stream(&xp.unix_t, "/command",
              "{\"command\":\"echo one; echo two >&2; sleep 0.3; echo three; exit 3\","
              "\"background\":true}",
              false, &r);
    assert_int_equal(r.status, 200);
    assert_true(r.complete);
    assert_string_equal(r.types, "init,execution_complete");
    cJSON *st = wait_done(r.id);
    assert_int_equal(xd_json_i64(st, "exit_code"), 3);
    assert_string_equal(moat_json_str(st, "error", NULL), "exit status 3");
    assert_non_null(cJSON_GetObjectItemCaseSensitive(st, "finished_at"));
    cJSON_Delete(st);
    char path[160];
    snprintf(path, sizeof(path), "/command/%s/logs", r.id);
    xd_resp lr = xd_http(&xp.unix_t, "GET", path, NULL, NULL);
    assert_int_equal(lr.status, 200);
    assert_string_equal(lr.body, "one\ntwo\nthree\n");
    char *cur = xd_header(&lr, "EXECD-COMMANDS-TAIL-CURSOR");
    assert_string_equal(cur, "14");
    free(cur);
    xd_resp_free(&lr);
    snprintf(path, sizeof(path), "/command/%s/logs?cursor=8", r.id);
    lr = xd_http(&xp.unix_t, "GET", path, NULL, NULL);
    assert_string_equal(lr.body, "three\n");
    xd_resp_free(&lr);
    snprintf(path, sizeof(path), "/command/%s/logs?cursor=junk", r.id);
    lr = xd_http(&xp.unix_t, "GET", path, NULL, NULL);
    assert_int_equal(lr.len, 14);
    xd_resp_free(&lr);
    /* foreground ids have no logs; unknown ids are 404 on status */
    xd_run f;
    xd_stream(&xp.unix_t, "/command", "{\"command\":\"true\"}", false, &f);
    snprintf(path, sizeof(path), "/command/%s/logs", f.id);
    lr = xd_http(&xp.unix_t, "GET", path, NULL, NULL);
    assert_int_equal(lr.status, 400);
    assert_string_equal(xd_error_code(&lr), "INVALID_REQUEST_BODY");
    xd_resp_free(&lr);
    st = status_of(f.id);
    assert_int_equal(xd_json_i64(st, "exit_code"), 0);
    cJSON_Delete(st);
    lr = xd_http(&xp.unix_t, "GET", "/command/status/nope", NULL, NULL);
    assert_int_equal(lr.status, 404);
    assert_string_equal(xd_error_code(&lr), "INVALID_REQUEST_BODY");
    xd_resp_free(&lr);
}

static void test_interrupt(void **state)
{
    (void)state;
    xd_run r;
    /* the leader ignores SIGTERM, so the interrupt must escalate to SIGKILL on the group */
    xd_stream(&xp.unix_t, "/command",
              "{\"command\":\"trap '' TERM; sleep 60 & wait\",\"background\":true}", false, &r);
    cJSON *st = status_of(r.id);
    assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(st, "running")));
    cJSON_Delete(st);
    char path[128];
    snprintf(path, sizeof(path), "/command?id=%s", r.id);
    xd_resp d = xd_http(&xp.unix_t, "DELETE", path, NULL, NULL);
    assert_int_equal(d.status, 200);
    xd_resp_free(&d);
    st = wait_done(r.id);
    assert_int_equal(xd_json_i64(st, "exit_code"), -1);
    cJSON_Delete(st);
    /* not running any more → 500; missing id → 400; unknown → 500 */
    d = xd_http(&xp.unix_t, "DELETE", path, NULL, NULL);
    assert_int_equal(d.status, 500);
    assert_string_equal(xd_error_code(&d), "RUNTIME_ERROR");
    xd_resp_free(&d);
    d = xd_http(&xp.unix_t, "DELETE", "/command", NULL, NULL);
    assert_int_equal(d.status, 400);
    assert_string_equal(xd_error_code(&d), "MISSING_QUERY");
    xd_resp_free(&d);
    d = xd_http(&xp.unix_t, "DELETE", "/command?id=unknown", NULL, NULL);
    assert_int_equal(d.status, 500);
    xd_resp_free(&d);
}

static char *new_session(const char *body)
{
    xd_resp r = xd_http(&xp.unix_t, "POST", "/session", body, NULL);
    assert_int_equal(r.status, 200);
    cJSON *j = xd_json(&r);
    char *id = strdup(moat_json_str(j, "session_id", NULL));
    cJSON_Delete(j);
    xd_resp_free(&r);
    assert_int_equal(strlen(id), 36);
    return id;
}

static void test_sessions(void **state)
{
    (void)state;
    char *sid = new_session(NULL);
    char path[128], body[512];
    snprintf(path, sizeof(path), "/session/%s/run", sid);
    xd_run r;
    snprintf(body, sizeof(body),
             "{\"command\":\"export GREETING='hello world'; LOCAL=x; mkdir -p %s/s1; cd %s/s1; "
             "echo set\"}",
             xp.dir, xp.dir);
    xd_stream(&xp.unix_t, path, body, false, &r);
    assert_true(r.complete);
    assert_string_equal(r.id, sid);
    assert_string_equal(r.out, "set");
    xd_stream(&xp.unix_t, path,
              "{\"command\":\"echo \\\"$GREETING\\\"; echo \\\"[$LOCAL]\\\"; pwd; echo; exit 5\"}",
              false, &r);
    assert_true(r.error);
    assert_int_equal(xd_exit_code(&r), 5);
    assert_string_equal(r.traceback, "command exited with code 5");
    assert_int_equal(r.nlines, 3); /* the blank line is not emitted in sessions */
    assert_string_equal(r.out_lines[0], "hello world");
    assert_string_equal(r.out_lines[1], "[]");
    char want[256];
    snprintf(want, sizeof(want), "%s/s1", xp.dir);
    assert_string_equal(r.out_lines[2], want);
    /* `exit` still saved the state; a cwd override holds for one run only */
    snprintf(body, sizeof(body), "{\"command\":\"pwd\",\"cwd\":\"%s\"}", xp.dir);
    xd_stream(&xp.unix_t, path, body, false, &r);
    assert_string_equal(r.out, xp.dir);
    xd_stream(&xp.unix_t, path, "{\"command\":\"pwd; echo e >&2\"}", false, &r);
    assert_string_equal(r.out, want);
    assert_string_equal(r.err, "e");
    /* a missing cwd is a 400 */
    xd_resp e =
        xd_http(&xp.unix_t, "POST", path, "{\"command\":\"pwd\",\"cwd\":\"/no/such\"}", NULL);
    assert_int_equal(e.status, 400);
    assert_string_equal(xd_error_code(&e), "INVALID_REQUEST_BODY");
    xd_resp_free(&e);
    /* delete, then it is gone */
    snprintf(path, sizeof(path), "/session/%s", sid);
    e = xd_http(&xp.unix_t, "DELETE", path, NULL, NULL);
    assert_int_equal(e.status, 200);
    xd_resp_free(&e);
    e = xd_http(&xp.unix_t, "DELETE", path, NULL, NULL);
    assert_int_equal(e.status, 404);
    assert_string_equal(xd_error_code(&e), "CONTEXT_NOT_FOUND");
    xd_resp_free(&e);
    snprintf(path, sizeof(path), "/session/%s/run", sid);
    e = xd_http(&xp.unix_t, "POST", path, "{\"command\":\"true\"}", NULL);
    assert_int_equal(e.status, 500);
    assert_string_equal(xd_error_code(&e), "RUNTIME_ERROR");
    xd_resp_free(&e);
    free(sid);
    /* a session created with a cwd makes it and starts there */
    snprintf(body, sizeof(body), "{\"cwd\":\"%s/made/here\"}", xp.dir);
    sid = new_session(body);
    snprintf(path, sizeof(path), "/session/%s/run", sid);
    xd_stream(&xp.unix_t, path, "{\"command\":\"pwd\"}", false, &r);
    snprintf(want, sizeof(want), "%s/made/here", xp.dir);
    assert_string_equal(r.out, want);
    free(sid);
}

static void test_binary_mode(void **state)
{
    (void)state;
    xd_run r;
    xd_stream(&xp.unix_t, "/command",
              "{\"command\":\"printf 'a\\\\000b\\\\377\\\\n'; printf 'raw' >&2\"}", true, &r);
    assert_true(r.binary_confirmed);
    assert_true(r.complete);
    assert_int_equal(r.out_len, 5);
    assert_memory_equal(r.out, "a\0b\377\n", 5);
    assert_string_equal(r.err, "raw");
    /* without the header: line mode, no confirmation */
    xd_stream(&xp.unix_t, "/command", "{\"command\":\"echo x\"}", false, &r);
    assert_false(r.binary_confirmed);
}

/* Two pipes carry no order between them, but writes apart in time must come out in the order
 * they were made, in both modes, whichever pipe was read first last time. */
static void test_output_follows_write_order(void **state)
{
    (void)state;
    const char *commands[] = {"{\"command\":\"echo out; echo err >&2\"}",
                              "{\"command\":\"echo out; sleep 0.05; echo err >&2\"}"};
    for (int binary = 0; binary < 2; binary++) {
        for (size_t c = 0; c < sizeof(commands) / sizeof(commands[0]); c++) {
            for (int i = 0; i < 30; i++) {
                xd_run r;
                xd_stream(&xp.unix_t, "/command", commands[c], binary, &r);
                assert_true(r.complete);
                const char *out = strstr(r.types, "stdout");
                const char *err = strstr(r.types, "stderr");
                if (out == NULL || err == NULL || err < out)
                    fail_msg("%s (binary %d), run %d: events %s", commands[c], binary, i, r.types);
            }
        }
    }
}

static void test_bad_input(void **state)
{
    (void)state;
    struct {
        const char *body;
        const char *path;
        long status;
        const char *code;
    } cases[] = {
        {"{not json", "/command", 400, "INVALID_REQUEST_BODY"},
        {"[1,2]", "/command", 400, "INVALID_REQUEST_BODY"},
        {"{\"command\":\"true\",\"timeout\":\"30000\"}", "/command", 400, "INVALID_REQUEST_BODY"},
        {"{\"command\":5}", "/command", 400, "INVALID_REQUEST_BODY"},
        {"{\"cwd\":\"/\"}", "/command", 400, "INVALID_REQUEST_BODY"},
        {"{\"command\":\"\"}", "/command", 400, "INVALID_REQUEST_BODY"},
        {"{\"command\":\"true\",\"cwd\":\"/does/not/exist\"}", "/command", 400,
         "INVALID_REQUEST_BODY"},
        {"{\"command\":\"true\",\"cwd\":\"$UNDEFINED_MOAT_VAR/x\"}", "/command", 400,
         "INVALID_REQUEST_BODY"},
        {"{\"command\":\"true\",\"gid\":5}", "/command", 400, "INVALID_REQUEST_BODY"},
        {"{\"command\":\"true\",\"envs\":{\"A\":1}}", "/command", 400, "INVALID_REQUEST_BODY"},
        {"{\"command\":\"true\",\"timeout\":-5}", "/command", 400, "INVALID_REQUEST_BODY"},
        {"{\"code\":\"print(1)\",\"context\":{\"language\":\"python\"}}", "/code", 501,
         "NOT_SUPPORTED"},
        {"{\"cwd\":5}", "/session", 400, "INVALID_REQUEST_BODY"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        xd_resp r = xd_http(&xp.unix_t, "POST", cases[i].path, cases[i].body, NULL);
        assert_int_equal(r.status, cases[i].status);
        assert_string_equal(xd_error_code(&r), cases[i].code);
        char *ct = xd_header(&r, "Content-Type");
        assert_string_equal(ct, "application/json; charset=utf-8");
        free(ct);
        xd_resp_free(&r);
    }
    /* /code without a language runs a command */
    xd_run run;
    xd_stream(&xp.unix_t, "/code", "{\"code\":\"echo via-code\",\"context\":{}}", false, &run);
    assert_true(run.complete);
    assert_string_equal(run.out, "via-code");
    /* after all of that, execd keeps serving */
    check_command_basics(&xp.tcp_t);
}

/* Request JSON after the move to cJSON: \u0000 (which cJSON's C strings would cut short) is
 * the same 400 as any malformed body on every endpoint that takes JSON, and so is what
 * execd refused before (raw control characters, bytes that are not UTF-8, a fraction where
 * an integer is expected); of duplicate keys the last one still wins. */
static void test_request_json(void **state)
{
    (void)state;
    char ran[256], body[512], path[128], never[160], never_body[200];
    snprintf(ran, sizeof(ran), "%s/nul-ran", xp.dir);
    /* A path in this run's own dir that nothing makes, so only execd could have made it. */
    snprintf(never, sizeof(never), "%s/never", xp.dir);
    snprintf(never_body, sizeof(never_body), "{\"%s\":{\"mode\":755.5}}", never);
    snprintf(body, sizeof(body), "{\"command\":\"touch %s\\u0000/y\"}", ran);
    xd_resp r = xd_http(&xp.unix_t, "POST", "/command", body, NULL);
    assert_int_equal(r.status, 400);
    assert_string_equal(xd_error_code(&r), "INVALID_REQUEST_BODY");
    assert_string_equal(xd_error_message(&r), "invalid JSON: \\u0000 is not allowed in strings");
    char *ct = xd_header(&r, "Content-Type");
    assert_string_equal(ct, "application/json; charset=utf-8");
    free(ct);
    xd_resp_free(&r);
    assert_int_not_equal(access(ran, F_OK), 0); /* nothing ran, not even "touch <dir>/nul-ran" */
    r = xd_http(&xp.unix_t, "POST", "/command", "{not json", NULL);
    assert_int_equal(r.status, 400);
    assert_string_equal(xd_error_code(&r), "INVALID_REQUEST_BODY");
    assert_string_equal(xd_error_message(&r), "invalid JSON: not one well-formed JSON value");
    xd_resp_free(&r);

    char *sid = new_session(NULL);
    char run_path[128];
    snprintf(run_path, sizeof(run_path), "/session/%s/run", sid);
    struct {
        const char *path;
        const char *body;
    } cases[] = {
        {"/code", "{\"code\":\"echo a\\u0000b\"}"},
        {"/session", "{\"cwd\":\"/tmp/a\\u0000b\"}"},
        {run_path, "{\"command\":\"echo \\u0000\"}"},
        {"/files/mv", "[{\"src\":\"/tmp/a\\u0000\",\"dest\":\"/tmp/b\"}]"},
        {"/files/permissions", "{\"/tmp/a\\u0000\":{\"mode\":644}}"},
        {"/files/replace", "{\"/tmp/a\":{\"old\":\"x\\u0000\",\"new\":\"y\"}}"},
        {"/directories", "{\"/tmp/a\\u0000b\":{}}"},
        {"/command", "{\"command\":\"echo a\x01\"}"},
        {"/command", "{\"command\":\"echo a\nb\"}"},
        {"/command", "{\"command\":\"echo \xff\"}"},
        {"/command", "{\"command\":\"true\",\"timeout\":30000.5}"},
        {"/command", "{\"command\":\"true\",\"uid\":1e30}"},
        {"/directories", never_body},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        r = xd_http(&xp.unix_t, "POST", cases[i].path, cases[i].body, NULL);
        assert_int_equal(r.status, 400);
        assert_string_equal(xd_error_code(&r), "INVALID_REQUEST_BODY");
        xd_resp_free(&r);
    }
    assert_int_not_equal(access(never, F_OK), 0);
    snprintf(path, sizeof(path), "/session/%s", sid);
    r = xd_http(&xp.unix_t, "DELETE", path, NULL, NULL);
    assert_int_equal(r.status, 200);
    xd_resp_free(&r);
    free(sid);

    /* the last of duplicate keys still wins, as in Go */
    xd_run run;
    xd_stream(&xp.tcp_t, "/command",
              "{\"command\":\"echo first\",\"timeout\":\"x\",\"command\":\"echo last\","
              "\"timeout\":60000}",
              false, &run);
    assert_int_equal(run.status, 200);
    assert_true(run.complete);
    assert_string_equal(run.out, "last");
    /* output NUL goes out as the escape \u0000 (which moat's bridge reads as U+FFFD) */
    r = xd_http(&xp.unix_t, "POST", "/command", "{\"command\":\"printf 'a\\\\000b'\"}", NULL);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "{\"type\":\"stdout\",\"text\":\"a\\u0000b\",\"timestamp\":"));
    xd_resp_free(&r);
    xd_stream(&xp.unix_t, "/command", "{\"command\":\"printf 'a\\\\000b'\"}", false, &run);
    assert_string_equal(run.out, "a\xef\xbf\xbd"
                                 "b");
}

/* ---- files ---- */

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

static int connect_unix(void)
{
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t len = strlen(xp.unix_t.unix_path);
    assert_true(len < sizeof(sa.sun_path));
    memcpy(sa.sun_path, xp.unix_t.unix_path, len + 1);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    return fd;
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

/* Headers larger than a connection's memory (libmicrohttpd's pool, 256 KiB: src/execd/main.c)
 * are refused with 431 before they are all read, and execd goes on serving. */
static void test_headers_past_connection_memory(void **state)
{
    (void)state;
    size_t len = 2u << 20;
    char *req = malloc(len);
    assert_non_null(req);
    int head = snprintf(req, len, "GET /ping HTTP/1.1\r\nHost: x\r\nX-Big: ");
    memset(req + head, 'a', len - (size_t)head);
    int fd = connect_unix();
    /* execd answers and closes once its buffer is full: the rest of the send then fails */
    for (size_t sent = 0; sent < len;) {
        ssize_t n = send(fd, req + sent, len - sent, MSG_NOSIGNAL);
        if (n <= 0)
            break;
        sent += (size_t)n;
    }
    free(req);
    char resp[512];
    size_t got = 0;
    ssize_t n;
    while (got + 1 < sizeof(resp) && (n = read(fd, resp + got, sizeof(resp) - 1 - got)) > 0)
        got += (size_t)n;
    resp[got] = '\0';
    close(fd);
    long status = 0;
    sscanf(resp, "HTTP/1.1 %ld", &status);
    assert_int_equal(status, 431);
    xd_resp r = xd_http(&xp.unix_t, "GET", "/ping", NULL, NULL);
    assert_int_equal(r.status, 200);
    xd_resp_free(&r);
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

static void test_token(void **state)
{
    (void)state;
    xd_proc tp;
    const char *args[] = {"--access-token", "s3cret", NULL};
    assert_true(xd_start(&tp, args));
    xd_resp r = xd_http(&tp.unix_t, "GET", "/ping", NULL, NULL);
    assert_int_equal(r.status, 401);
    assert_string_equal(
        r.body, "{\"error\":\"Unauthorized: invalid or missing header X-EXECD-ACCESS-TOKEN\"}");
    xd_resp_free(&r);
    r = xd_http(&tp.tcp_t, "POST", "/command", "{\"command\":\"true\"}",
                "X-EXECD-ACCESS-TOKEN: wrong");
    assert_int_equal(r.status, 401);
    xd_resp_free(&r);
    /* a write is refused before any byte reaches the file system */
    char q[512], p[256];
    snprintf(p, sizeof(p), "%s/tokened.bin", tp.dir);
    snprintf(q, sizeof(q), "/files/write?path=%s", p);
    r = xd_http_body(&tp.unix_t, "POST", q, "nope", 4, NULL);
    assert_int_equal(r.status, 401);
    xd_resp_free(&r);
    assert_int_not_equal(access(p, F_OK), 0);
    r = xd_http_body(&tp.unix_t, "POST", q, "nope", 4, "X-EXECD-ACCESS-TOKEN: wrong");
    assert_int_equal(r.status, 401);
    xd_resp_free(&r);
    assert_int_not_equal(access(p, F_OK), 0);
    tp.unix_t.token = "s3cret";
    r = xd_http_body(&tp.unix_t, "POST", q, "yes", 3, NULL);
    assert_int_equal(r.status, 200);
    xd_resp_free(&r);
    assert_int_equal(access(p, F_OK), 0);
    tp.tcp_t.token = "s3cret";
    xd_run run;
    xd_stream(&tp.tcp_t, "/command", "{\"command\":\"echo ok\"}", false, &run);
    assert_true(run.complete);
    assert_string_equal(run.out, "ok");
    int st = xd_stop(&tp);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/* ---- memory bound ---- */

static size_t count_write(char *ptr, size_t size, size_t n, void *ud)
{
    (void)ptr;
    *(size_t *)ud += size * n;
    return size * n;
}

static size_t stream_bytes(const char *cmd, bool binary)
{
    CURL *c = curl_easy_init();
    struct curl_slist *h = NULL;
    if (binary)
        h = curl_slist_append(h, "X-Moat-Output: binary");
    h = curl_slist_append(h, "Content-Type: application/json");
    size_t total = 0;
    curl_easy_setopt(c, CURLOPT_URL, "http://localhost/command");
    curl_easy_setopt(c, CURLOPT_UNIX_SOCKET_PATH, xp.unix_t.unix_path);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, cmd);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, count_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &total);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 240L);
    assert_int_equal(curl_easy_perform(c), CURLE_OK);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    return total;
}

static void test_big_output_memory(void **state)
{
    (void)state;
    /* Under a wrapper (valgrind) VmRSS is the tool's, and 220 MB take minutes. */
    if (xd_wrapped())
        moat_skip("under valgrind VmRSS is valgrind's, and 220 MB take minutes");
    long before = xd_rss_kb(xp.pid);
    assert_true(before > 0);
    /* 100 MB in lines of 100 bytes (line mode), then 100 MB in binary mode */
    size_t n =
        stream_bytes("{\"command\":\"yes aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                     "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa | head -c 100000000\"}",
                     false);
    assert_true(n > 100000000);
    n = stream_bytes("{\"command\":\"head -c 100000000 /dev/zero\"}", true);
    assert_true(n > 100000000);
    /* one long line without any newline: split into bounded pieces */
    n = stream_bytes("{\"command\":\"head -c 20000000 /dev/zero | tr '\\\\0' x\"}", false);
    assert_true(n > 20000000);
    long after = xd_rss_kb(xp.pid);
    print_message("execd VmRSS before %ld kB, after %ld kB\n", before, after);
    assert_true(after - before < 64 * 1024);
}

/* A reader that stops reading: execd must not buffer, and closing ends the command. */
static void test_stalled_reader(void **state)
{
    (void)state;
    int fd = connect_unix();
    const char body[] = "{\"command\":\"yes\"}";
    char req[512];
    int n = snprintf(req, sizeof(req),
                     "POST /command HTTP/1.1\r\nHost: x\r\nX-Moat-Output: binary\r\n"
                     "Content-Length: %zu\r\n\r\n%s",
                     sizeof(body) - 1, body);
    assert_int_equal(write(fd, req, (size_t)n), n);
    /* headers and the first events may come in separate reads */
    char buf[8192];
    size_t got = 0;
    char *init = NULL;
    while (init == NULL && got + 1 < sizeof(buf)) {
        ssize_t r = read(fd, buf + got, sizeof(buf) - 1 - got);
        assert_true(r > 0);
        got += (size_t)r;
        buf[got] = '\0';
        init = strstr(buf, "\"init\",\"text\":\"");
        if (init != NULL && strlen(init) < 15 + 32)
            init = NULL;
    }
    assert_non_null(init);
    char id[33];
    snprintf(id, sizeof(id), "%.32s", init + 15);
    long before = xd_rss_kb(xp.pid);
    nap_ms(1500); /* yes writes as fast as it can while nobody reads */
    long after = xd_rss_kb(xp.pid);
    print_message("stalled reader: execd VmRSS %ld → %ld kB\n", before, after);
    /* Under a wrapper (valgrind) VmRSS is the tool's, which grows on its own. */
    if (!xd_wrapped())
        assert_true(after - before < 16 * 1024);
    else
        moat_skip_note(rss_unchecked);
    cJSON *st = status_of(id);
    assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(st, "running")));
    cJSON_Delete(st);
    close(fd);
    st = wait_done(id);
    assert_int_equal(xd_json_i64(st, "exit_code"), -1);
    cJSON_Delete(st);
}

static void test_metrics(void **state)
{
    (void)state;
    xd_resp r = xd_http(&xp.unix_t, "GET", "/metrics", NULL, NULL);
    assert_int_equal(r.status, 200);
    cJSON *j = xd_json(&r);
    assert_true(xd_json_num(j, "cpu_count") > 0);
    assert_true(xd_json_num(j, "mem_total_mib") > 0);
    assert_true(xd_json_num(j, "mem_used_mib") > 0);
    assert_true(cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(j, "cpu_used_pct")));
    assert_true(xd_json_i64(j, "timestamp") > 0);
    cJSON_Delete(j);
    xd_resp_free(&r);
}

typedef struct first_line {
    char buf[1024];
    size_t len;
} first_line;

static size_t until_newline(char *ptr, size_t size, size_t n, void *ud)
{
    first_line *f = ud;
    size_t add = size * n;
    if (f->len + add >= sizeof(f->buf))
        return 0;
    memcpy(f->buf + f->len, ptr, add);
    f->len += add;
    f->buf[f->len] = '\0';
    return strchr(f->buf, '\n') ? 0 : add; /* abort once a line is in */
}

static void test_metrics_watch(void **state)
{
    (void)state;
    CURL *c = curl_easy_init();
    first_line f = {.len = 0};
    curl_easy_setopt(c, CURLOPT_URL, "http://localhost/metrics/watch");
    curl_easy_setopt(c, CURLOPT_UNIX_SOCKET_PATH, xp.unix_t.unix_path);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, until_newline);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &f);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 20L);
    curl_easy_perform(c);
    curl_easy_cleanup(c);
    char *nl = strchr(f.buf, '\n');
    assert_non_null(nl);
    cJSON *j = moat_json_parse(f.buf, (size_t)(nl - f.buf), MOAT_JSON_NUL_REJECT);
    assert_non_null(j);
    assert_true(xd_json_num(j, "cpu_count") > 0);
    cJSON_Delete(j);
}

/* Orphans of commands are adopted (subreaper) and reaped: no zombies pile up. */
/* The parent of pid from /proc, or -1 once the pid is gone. */
static int parent_of(pid_t pid)
{
    char path[64], line[512];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    int ppid = -1;
    if (fgets(line, sizeof(line), f) != NULL) {
        char *rp = strrchr(line, ')');
        char st;
        if (rp == NULL || sscanf(rp + 2, "%c %d", &st, &ppid) != 2)
            ppid = -1;
    }
    fclose(f);
    return ppid;
}

/* A command's orphan (its shell gone) becomes execd's child, since execd is a subreaper, and
 * execd reaps it when it ends: the pid disappears instead of staying a zombie. */
static void test_reaping(void **state)
{
    (void)state;
    xd_run r;
    xd_stream(&xp.unix_t, "/command",
              "{\"command\":\"(sleep 300 </dev/null >/dev/null 2>&1 & echo $!)\"}", false, &r);
    assert_true(r.complete);
    pid_t orphan = atoi(r.out);
    assert_true(orphan > 0);
    int parent = parent_of(orphan);
    for (int i = 0; i < 3000 && parent != xp.pid; i++) {
        nap_ms(10);
        parent = parent_of(orphan);
    }
    assert_int_equal(parent, xp.pid);
    assert_int_equal(kill(orphan, SIGKILL), 0);
    for (int i = 0; i < 3000 && parent == xp.pid; i++) {
        nap_ms(10);
        parent = parent_of(orphan);
    }
    assert_int_not_equal(parent, xp.pid);
}

/* SIGTERM reaches running commands and execd exits 0, removing its socket. */
static void test_sigterm(void **state)
{
    (void)state;
    xd_proc tp;
    assert_true(xd_start(&tp, NULL));
    xd_run r;
    xd_stream(&tp.unix_t, "/command", "{\"command\":\"sleep 120\",\"background\":true}", false, &r);
    char sock[300];
    snprintf(sock, sizeof(sock), "%s", tp.unix_t.unix_path);
    int st = xd_stop(&tp);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    assert_int_not_equal(access(sock, F_OK), 0);
}

typedef struct bg_stream {
    const char *path;
    const char *body;
    xd_run run;
} bg_stream;

static void *stream_thread(void *arg)
{
    bg_stream *b = arg;
    xd_stream(&xp.unix_t, b->path, b->body, false, &b->run);
    return NULL;
}

/* Interrupt of a foreground command: DELETE with the id from the stream's init event ends
 * the stream with error -1 even though the leader ignores SIGTERM. */
static void test_foreground_interrupt(void **state)
{
    (void)state;
    int fd = connect_unix();
    const char body[] = "{\"command\":\"trap '' TERM; sleep 60 & wait; echo never\"}";
    char req[512];
    int n = snprintf(req, sizeof(req),
                     "POST /command HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     "Content-Length: %zu\r\n\r\n%s",
                     sizeof(body) - 1, body);
    assert_int_equal(write(fd, req, (size_t)n), n);
    static char resp[65536];
    size_t got = 0;
    char *init = NULL;
    while (init == NULL && got + 1 < sizeof(resp)) {
        ssize_t r = read(fd, resp + got, sizeof(resp) - 1 - got);
        assert_true(r > 0);
        got += (size_t)r;
        resp[got] = '\0';
        init = strstr(resp, "\"init\",\"text\":\"");
        if (init != NULL && strlen(init) < 15 + 32)
            init = NULL;
    }
    assert_non_null(init);
    char path[128];
    snprintf(path, sizeof(path), "/command?id=%.32s", init + 15);
    xd_resp d = xd_http(&xp.tcp_t, "DELETE", path, NULL, NULL);
    assert_int_equal(d.status, 200);
    xd_resp_free(&d);
    ssize_t r;
    while (got + 1 < sizeof(resp) && (r = read(fd, resp + got, sizeof(resp) - 1 - got)) > 0)
        got += (size_t)r;
    resp[got] = '\0';
    close(fd);
    assert_non_null(strstr(resp, "\"evalue\":\"-1\""));
    assert_null(strstr(resp, "never"));
    assert_null(strstr(resp, "execution_complete"));
    /* the chunked body ends cleanly */
    assert_non_null(strstr(resp, "\r\n0\r\n\r\n"));
}

static void test_session_busy(void **state)
{
    (void)state;
    char *sid = new_session(NULL);
    char path[128], marker[256], body[1024];
    snprintf(path, sizeof(path), "/session/%s/run", sid);
    char release[256];
    snprintf(marker, sizeof(marker), "%s/busy-started", xp.dir);
    snprintf(release, sizeof(release), "%s/busy-release", xp.dir);
    /* the first run holds the session until the test lets it go (bounded: 60 s) */
    snprintf(body, sizeof(body),
             "{\"command\":\"touch %s; i=0; while [ ! -e %s ] && [ $i -lt 600 ]; do sleep 0.1; "
             "i=$((i+1)); done; echo slow\"}",
             marker, release);
    bg_stream b = {.path = path, .body = body};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, stream_thread, &b), 0);
    for (int i = 0; i < 1200 && access(marker, F_OK) != 0; i++)
        nap_ms(25);
    xd_resp r = xd_http(&xp.unix_t, "POST", path, "{\"command\":\"echo fast\"}", NULL);
    assert_int_equal(r.status, 500);
    assert_string_equal(xd_error_code(&r), "RUNTIME_ERROR");
    assert_non_null(strstr(r.body, "busy"));
    xd_resp_free(&r);
    FILE *rel = fopen(release, "w");
    assert_non_null(rel);
    fclose(rel);
    pthread_join(th, NULL);
    assert_true(b.run.complete);
    assert_string_equal(b.run.out, "slow");
    xd_run again;
    xd_stream(&xp.unix_t, path, "{\"command\":\"echo fast\"}", false, &again);
    assert_string_equal(again.out, "fast");
    free(sid);
}

/* Finished commands go after the retention; the table is bounded. */
static void test_retention_and_bound(void **state)
{
    (void)state;
    xd_proc tp;
    const char *args[] = {"--retention-seconds", "1", "--max-commands", "3", NULL};
    /* this instance also reads an EXECD_ENVS file */
    char envs[] = "/tmp/moat-execd-envs-XXXXXX";
    int efd = mkstemp(envs);
    const char text[] = "# comment\n\nFROM_FILE=v-$MOAT_ENVS_BASE\n";
    assert_int_equal(write(efd, text, sizeof(text) - 1), (ssize_t)sizeof(text) - 1);
    close(efd);
    setenv("EXECD_ENVS", envs, 1);
    setenv("MOAT_ENVS_BASE", "base", 1);
    bool started = xd_start(&tp, args);
    unsetenv("EXECD_ENVS");
    unsetenv("MOAT_ENVS_BASE");
    assert_true(started);
    xd_run r;
    /* the file is read for every command, so edits apply without a restart */
    xd_stream(&tp.unix_t, "/command", "{\"command\":\"echo $FROM_FILE\"}", false, &r);
    unlink(envs);
    assert_string_equal(r.out, "v-base");
    xd_stream(&tp.unix_t, "/command", "{\"command\":\"echo kept\",\"background\":true}", false, &r);
    char path[128], logfile[300];
    snprintf(path, sizeof(path), "/command/status/%s", r.id);
    snprintf(logfile, sizeof(logfile), "%s/state/%s.output", tp.dir, r.id);
    assert_int_equal(access(logfile, F_OK), 0);
    long st = 200;
    for (int i = 0; i < 1200 && st == 200; i++) {
        nap_ms(50);
        xd_resp s = xd_http(&tp.unix_t, "GET", path, NULL, NULL);
        st = s.status;
        xd_resp_free(&s);
    }
    assert_int_equal(st, 404);
    assert_int_not_equal(access(logfile, F_OK), 0);
    /* three running commands fill the table; a fourth is refused, execd keeps serving */
    for (int i = 0; i < 3; i++) {
        xd_stream(&tp.unix_t, "/command", "{\"command\":\"sleep 30\",\"background\":true}", false,
                  &r);
        assert_true(r.complete);
    }
    xd_resp full = xd_http(&tp.unix_t, "POST", "/command", "{\"command\":\"true\"}", NULL);
    assert_int_equal(full.status, 500);
    assert_string_equal(xd_error_code(&full), "RUNTIME_ERROR");
    xd_resp_free(&full);
    int status = xd_stop(&tp);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

static void test_uid(void **state)
{
    (void)state;
    moat_require(getuid() == 0, "needs root");
    xd_run r;
    xd_stream(&xp.unix_t, "/command", "{\"command\":\"id -u; id -g\",\"uid\":65534,\"gid\":65533}",
              false, &r);
    assert_true(r.complete);
    assert_int_equal(r.nlines, 2);
    assert_string_equal(r.out_lines[0], "65534");
    assert_string_equal(r.out_lines[1], "65533");
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

/* --run-as: commands, bash sessions and the file API act as that user; the access token from
 * the environment reaches no command; files land owned by the user, and what the user cannot
 * write, the file API cannot either. */
static void test_run_as(void **state)
{
    (void)state;
    moat_require(getuid() == 0, "needs root");
    char open_dir[] = "/tmp/moat-runas-XXXXXX";
    assert_non_null(mkdtemp(open_dir));
    assert_int_equal(chmod(open_dir, 0777), 0);
    setenv("EXECD_ACCESS_TOKEN", "runas-secret", 1);
    xd_proc tp;
    const char *args[] = {"--run-as", "65534:65533", NULL};
    bool started = xd_start(&tp, args);
    unsetenv("EXECD_ACCESS_TOKEN");
    assert_true(started);
    /* As inside a sandbox, where the state dir sits in /tmp: the user may pass through. */
    assert_int_equal(chmod(tp.dir, 0711), 0);
    tp.unix_t.token = "runas-secret";
    xd_run r;
    xd_stream(&tp.unix_t, "/command",
              "{\"command\":\"id -u; id -g; id -G; env | grep -c EXECD_ACCESS_TOKEN; "
              "grep -c runas-secret /proc/$$/environ; true\"}",
              false, &r);
    assert_true(r.complete);
    assert_int_equal(r.nlines, 5);
    assert_string_equal(r.out_lines[0], "65534");
    assert_string_equal(r.out_lines[1], "65533");
    assert_string_equal(r.out_lines[2], "65533");
    assert_string_equal(r.out_lines[3], "0");
    assert_string_equal(r.out_lines[4], "0");
    /* execd itself, root, cannot be signalled by its commands. */
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "{\"command\":\"kill -0 %d\"}", (int)tp.pid);
    xd_stream(&tp.unix_t, "/command", cmd, false, &r);
    assert_true(r.error);
    /* A bash session runs as the user too. */
    xd_resp resp = xd_http(&tp.unix_t, "POST", "/session", "{}", NULL);
    assert_int_equal(resp.status, 200);
    cJSON *j = xd_json(&resp);
    char path[128];
    snprintf(path, sizeof(path), "/session/%s/run",
             cJSON_GetStringValue(cJSON_GetObjectItem(j, "session_id")));
    cJSON_Delete(j);
    xd_resp_free(&resp);
    xd_stream(&tp.unix_t, path, "{\"command\":\"id -u\"}", false, &r);
    assert_true(r.complete);
    assert_string_equal(r.out, "65534");
    /* A background command's log (kept in execd's user/ directory) reads back. */
    xd_stream(&tp.unix_t, "/command", "{\"command\":\"echo bg\",\"background\":true}", false, &r);
    assert_true(r.complete);
    /* The file API writes as the user, and is refused where the user would be. */
    char q[512], target[256];
    snprintf(target, sizeof(target), "%s/owned.txt", open_dir);
    snprintf(q, sizeof(q), "/files/write?path=%s", target);
    resp = xd_http_body(&tp.unix_t, "POST", q, "mine", 4, NULL);
    assert_int_equal(resp.status, 200);
    xd_resp_free(&resp);
    struct stat sb;
    assert_int_equal(stat(target, &sb), 0);
    assert_int_equal(sb.st_uid, 65534);
    assert_int_equal(sb.st_gid, 65533);
    snprintf(target, sizeof(target), "%s/root-only.txt", tp.dir); /* root's, 0711 */
    snprintf(q, sizeof(q), "/files/write?path=%s", target);
    resp = xd_http_body(&tp.unix_t, "POST", q, "nope", 4, NULL);
    assert_int_not_equal(resp.status, 200);
    xd_resp_free(&resp);
    assert_int_not_equal(access(target, F_OK), 0);
    snprintf(q, sizeof(q), "/files/download?path=/proc/%d/environ", (int)tp.pid);
    resp = xd_http(&tp.unix_t, "GET", q, NULL, NULL);
    assert_int_not_equal(resp.status, 200);
    xd_resp_free(&resp);
    int st = xd_stop(&tp);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    char rm[128];
    snprintf(rm, sizeof(rm), "rm -rf %s", open_dir);
    assert_int_equal(system(rm), 0);
}

/* A command the kernel refuses to exec (one environment string past 128 KiB: E2BIG) ends
 * with CommandExecError, on both ways of starting it: posix_spawn, and the clone that changes
 * the uid. */
static void test_exec_failure(void **state)
{
    (void)state;
    /* valgrind cannot carry on after a failed execve in the child ("I can't recover"). */
    if (xd_wrapped())
        moat_skip("valgrind cannot carry on after a failed execve in the child");
    size_t big = 200000;
    char *body = malloc(big + 128);
    assert_non_null(body);
    for (int with_uid = 0; with_uid < 2; with_uid++) {
        if (with_uid && getuid() != 0)
            continue;
        int n = snprintf(body, big + 128, "{\"command\":\"echo never\",%s\"envs\":{\"BIG\":\"",
                         with_uid ? "\"uid\":0," : "");
        memset(body + n, 'x', big);
        strcpy(body + n + big, "\"}}");
        xd_run r;
        xd_stream(&xp.unix_t, "/command", body, false, &r);
        assert_int_equal(r.status, 200);
        assert_true(r.error);
        assert_false(r.complete);
        assert_int_equal(r.out_len, 0);
        assert_non_null(strstr(r.evalue, "Argument list too long"));
        /* A child that failed before exec is finished once the reaper has it. */
        char path[128];
        snprintf(path, sizeof(path), "/command/status/%s", r.id);
        bool finished = false;
        for (int i = 0; i < 500 && !finished; i++) {
            xd_resp st = xd_http(&xp.unix_t, "GET", path, NULL, NULL);
            assert_int_equal(st.status, 200);
            finished = strstr(st.body, "\"running\":false") != NULL;
            xd_resp_free(&st);
            if (!finished)
                usleep(10000);
        }
        assert_true(finished);
    }
    free(body);
    /* and execd goes on starting commands */
    xd_run ok;
    xd_stream(&xp.unix_t, "/command", "{\"command\":\"echo ok\"}", false, &ok);
    assert_true(ok.complete);
    assert_string_equal(ok.out_lines[0], "ok");
}

static int setup(void **state)
{
    (void)state;
    curl_global_init(CURL_GLOBAL_ALL);
    if (!xd_start(&xp, (const char *const[]){"--retention-seconds", "60", NULL}))
        return -1;
    both[0] = &xp.unix_t;
    both[1] = &xp.tcp_t;
    return 0;
}

/* The last test: the shared execd, stopped, exits 0 (under valgrind, MOAT_DAEMON_WRAPPER: without
 * a memory error or a leak). */
static void test_execd_exits_0_on_sigterm(void **state)
{
    (void)state;
    int st = xd_stop(&xp);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
}

/* Stops execd only when a failure came before the last test. */
static int teardown(void **state)
{
    (void)state;
    xd_stop(&xp);
    curl_global_cleanup();
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ping_and_unknown),
        cmocka_unit_test(test_exit_codes),
        cmocka_unit_test(test_lines_and_last_line),
        cmocka_unit_test(test_cwd_env),
        cmocka_unit_test(test_timeout),
        cmocka_unit_test(test_background_logs),
        cmocka_unit_test(test_interrupt),
        cmocka_unit_test(test_sessions),
        cmocka_unit_test(test_binary_mode),
        cmocka_unit_test(test_output_follows_write_order),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_request_json),
        cmocka_unit_test(test_files),
        cmocka_unit_test(test_download_lines),
        cmocka_unit_test(test_upload_raw),
        cmocka_unit_test(test_headers_past_connection_memory),
        cmocka_unit_test(test_files_write),
        cmocka_unit_test(test_files_write_streamed),
        cmocka_unit_test(test_token),
        cmocka_unit_test(test_big_output_memory),
        cmocka_unit_test(test_stalled_reader),
        cmocka_unit_test(test_metrics),
        cmocka_unit_test(test_metrics_watch),
        cmocka_unit_test(test_reaping),
        cmocka_unit_test(test_sigterm),
        cmocka_unit_test(test_foreground_interrupt),
        cmocka_unit_test(test_session_busy),
        cmocka_unit_test(test_retention_and_bound),
        cmocka_unit_test(test_uid),
        cmocka_unit_test(test_run_as),
        cmocka_unit_test_teardown(test_replace_is_all_or_nothing, replace_teardown),
        cmocka_unit_test(test_exec_failure),
        cmocka_unit_test(test_execd_exits_0_on_sigterm),
    };
    return moat_run_group_tests("test_execd_integration", tests, setup, teardown);
}
