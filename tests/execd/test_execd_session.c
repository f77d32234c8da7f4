/* Integration tests of the real moat-execd's bash sessions: state kept between runs, a cwd
 * for one run, delete, and a second run refused while the first holds the session. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include "moat_test.h"

#include "xd_fixture.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sessions),
        cmocka_unit_test(test_session_busy),
        cmocka_unit_test(test_execd_exits_0_on_sigterm),
    };
    return moat_run_group_tests("test_execd_session", tests, xd_fixture_setup, xd_fixture_teardown);
}
