/* Integration tests of the real moat-execd's commands: POST /command and /code streamed as SSE
 * (exit codes, lines, cwd and env, timeout, binary mode, output order), background commands
 * with status, logs and interrupt, bad and hostile request bodies, uid and exec failures. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include "moat_test.h"

#include "xd_fixture.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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
        cmocka_unit_test(test_binary_mode),
        cmocka_unit_test(test_output_follows_write_order),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_request_json),
        cmocka_unit_test(test_foreground_interrupt),
        cmocka_unit_test(test_uid),
        cmocka_unit_test(test_exec_failure),
        cmocka_unit_test(test_execd_exits_0_on_sigterm),
    };
    return moat_run_group_tests("test_execd_command", tests, xd_fixture_setup, xd_fixture_teardown);
}
