/* The fixture every execd integration program shares: one moat-execd started for the group
 * (on a Unix socket and on 127.0.0.1), the helpers more than one program uses, and the last
 * test that stops that execd and checks its exit status. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include "moat_test.h"

#include "xd_fixture.h"

#include <curl/curl.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>

xd_proc xp;

/* Under a wrapper (valgrind) VmRSS is the tool's, which grows on its own. */
const char rss_unchecked[] = "execd's RSS bound not checked under valgrind";

void nap_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

const xd_target *both[2];

void check_command_basics(const xd_target *t)
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

cJSON *status_of(const char *id)
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
cJSON *wait_done(const char *id)
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

char *new_session(const char *body)
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

int connect_unix(void)
{
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t len = strlen(xp.unix_t.unix_path);
    assert_true(len < sizeof(sa.sun_path));
    memcpy(sa.sun_path, xp.unix_t.unix_path, len + 1);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    return fd;
}

int xd_fixture_setup(void **state)
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
void test_execd_exits_0_on_sigterm(void **state)
{
    (void)state;
    int st = xd_stop(&xp);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
}

/* Stops execd only when a failure came before the last test. */
int xd_fixture_teardown(void **state)
{
    (void)state;
    xd_stop(&xp);
    curl_global_cleanup();
    return 0;
}
