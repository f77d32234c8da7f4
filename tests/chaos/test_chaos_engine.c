/* Health tells the truth about the engine, and a failing engine costs only what needs it. The test
 * starts its OWN dockerd (private socket, data-root, exec-root and pidfile under /tmp, no bridge,
 * no iptables), so hanging (SIGSTOP) and killing it disturbs no one; the sandbox image is copied
 * in from the shared engine. Every path ends with the private engine continued, stopped (with the
 * containerd it started) and its directory removed. */

#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "moat_test.h"

#include "chaos_client.h"
#include "host_mounts.h"
#include "private_dockerd.h"
#include "moat/v1/sandbox.pb-c.h"

#define IMAGE             "moat-sandbox:latest"
#define DOCKER_TIMEOUT_MS 3000

static private_dockerd E;
static moatd_proc P;

static int run(const char *cmd)
{
    int rc = system(cmd);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

static int group_setup(void **state)
{
    (void)state;
    const char *build = getenv("MOAT_BUILD_DIR");
    const char *src = getenv("MOAT_SOURCE_DIR");
    if (build == NULL || src == NULL)
        return -1;
    char cmd[2048];
    snprintf(cmd, sizeof(cmd),
             "test -x %s/execd-bundle/run && /usr/bin/docker image inspect " IMAGE
             " >/dev/null 2>&1 || %s/scripts/build-sandbox-image.sh %s >/dev/null",
             build, src, build);
    if (run(cmd) != 0)
        return -1;
    snprintf(E.dir, sizeof(E.dir), "/tmp/moat-chaosdd-%d-XXXXXX", (int)getpid());
    if (mkdtemp(E.dir) == NULL)
        return -1;
    snprintf(E.sock, sizeof(E.sock), "%s/docker.sock", E.dir);
    if (private_dockerd_start(&E, 30) != 0) {
        fprintf(stderr, "private dockerd did not start; see %s/dockerd.log\n", E.dir);
        return -1;
    }
    snprintf(cmd, sizeof(cmd),
             "/usr/bin/docker save " IMAGE " | /usr/bin/docker -H unix://%s load >/dev/null",
             E.sock);
    if (run(cmd) != 0)
        return -1;
    char a_docker[192], a_prefix[96], a_instance[64], a_timeout[64];
    snprintf(a_docker, sizeof(a_docker), "--docker_host=%s", E.sock);
    snprintf(a_prefix, sizeof(a_prefix), "--container_name_prefix=moat-chaosdd-%d-", (int)getpid());
    snprintf(a_instance, sizeof(a_instance), "--instance=chaosdd-%d", (int)getpid());
    snprintf(a_timeout, sizeof(a_timeout), "--docker_timeout_ms=%d", DOCKER_TIMEOUT_MS);
    const char *extra[] = {a_docker,
                           a_prefix,
                           a_instance,
                           a_timeout,
                           "--health_probe_interval_ms=200",
                           "--workspace_quota=false",
                           NULL};
    return moatd_start(&P, true, extra) ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    if (E.stopped && E.pid > 0)
        kill(E.pid, SIGCONT);
    E.stopped = false;
    moatd_stop(&P);
    if (E.pid > 0) {
        char cmd[512];
        snprintf(cmd, sizeof(cmd),
                 "/usr/bin/docker -H unix://%s ps -aq | xargs -r /usr/bin/docker -H unix://%s rm "
                 "-f >/dev/null 2>&1",
                 E.sock, E.sock);
        run(cmd);
    }
    private_dockerd_stop(&E, 60);
    private_dockerd_kill_containerd(&E);
    if (P.state_dir[0] != '\0')
        moatd_remove_dir(P.state_dir);
    if (E.dir[0] != '\0') {
        host_unmount_under(E.dir);
        char cmd[200];
        snprintf(cmd, sizeof(cmd), "rm -rf --one-file-system %s", E.dir);
        run(cmd);
    }
    return 0;
}

static raw_conn *client(void)
{
    raw_conn *c = raw_connect(P.port);
    assert_non_null(c);
    moat_frame f;
    assert_int_equal(raw_hello(c, NULL, &f), 1);
    assert_int_equal(f.kind, MOAT_FRAME_HELLO_ACK);
    return c;
}

/* Polls Health (bounded: 15 s) until it says `serving`; every answer must come within 1 s. */
static void health_becomes(raw_conn *c, bool serving)
{
    for (int i = 0; i < 150; i++) {
        bool s, reachable;
        long long t0 = chaos_now_ms();
        assert_int_equal(chaos_health(c, &s, &reachable), MOAT_CODE_OK);
        long long took = chaos_now_ms() - t0;
        if (took >= 1000)
            fail_msg("Health took %lld ms", took);
        /* NOT_SERVING with docker_reachable=false is how moatd says the engine is gone. */
        assert_int_equal(s, reachable);
        if (s == serving)
            return;
        chaos_sleep_ms(100);
    }
    fail_msg("Health never became %s", serving ? "SERVING" : "NOT_SERVING");
}

static void get_session_unavailable(raw_conn *c)
{
    char id[MOAT_UUID_STR_LEN], reason[64] = "";
    moat_uuid_generate(id);
    Moat__V1__GetSessionRequest req = MOAT__V1__GET_SESSION_REQUEST__INIT;
    req.session_id = id;
    long long t0 = chaos_now_ms();
    int code = raw_unary(c, "/moat.v1.Sandboxes/GetSession", &req.base, NULL, NULL, reason,
                         sizeof(reason));
    long long took = chaos_now_ms() - t0;
    assert_int_equal(code, MOAT_CODE_UNAVAILABLE);
    if (took > DOCKER_TIMEOUT_MS + 2000)
        fail_msg("GetSession took %lld ms with docker_timeout_ms %d", took, DOCKER_TIMEOUT_MS);
}

static void test_hung_then_killed_engine(void **state)
{
    (void)state;
    raw_conn *c = client();
    health_becomes(c, true);
    char chat[MOAT_UUID_STR_LEN], sid[MOAT_UUID_STR_LEN], reason[64] = "", out[256];
    int exit_code;
    moat_uuid_generate(chat);
    assert_int_equal(chaos_create(c, chat, sid, reason, sizeof(reason)), MOAT_CODE_OK);
    assert_int_equal(chaos_run(c, sid, "echo hi", out, sizeof(out), &exit_code), MOAT_CODE_OK);
    assert_string_equal(out, "hi\n");

    /* Hung: a call already waiting on the engine, and those after it, end UNAVAILABLE within
     * docker_timeout_ms; Health keeps answering at once and turns NOT_SERVING. */
    assert_int_equal(kill(E.pid, SIGSTOP), 0);
    E.stopped = true;
    get_session_unavailable(c);
    health_becomes(c, false);
    get_session_unavailable(c);
    char chat2[MOAT_UUID_STR_LEN], sid2[MOAT_UUID_STR_LEN];
    moat_uuid_generate(chat2);
    assert_int_equal(chaos_create(c, chat2, sid2, reason, sizeof(reason)), MOAT_CODE_UNAVAILABLE);
    assert_string_equal(reason, "docker_unreachable");
    /* A session made before the hang runs commands all along: they go to execd, not Docker. */
    assert_int_equal(chaos_run(c, sid, "echo hi", out, sizeof(out), &exit_code), MOAT_CODE_OK);
    assert_string_equal(out, "hi\n");
    assert_int_equal(exit_code, 0);
    assert_int_equal(kill(E.pid, SIGCONT), 0);
    E.stopped = false;
    health_becomes(c, true);
    assert_int_equal(chaos_stop(c, sid), MOAT_CODE_OK);

    /* Killed: NOT_SERVING within a few seconds, not a cached SERVING. Its containers go first:
     * nothing would be left to remove them once the engine is dead. */
    char cmd[512];
    snprintf(cmd, sizeof(cmd),
             "/usr/bin/docker -H unix://%s ps -aq | xargs -r /usr/bin/docker -H unix://%s rm -f "
             ">/dev/null 2>&1",
             E.sock, E.sock);
    run(cmd);
    assert_int_equal(kill(E.pid, SIGKILL), 0);
    waitpid(E.pid, NULL, 0);
    E.pid = 0;
    health_becomes(c, false);
    get_session_unavailable(c);
    raw_close(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hung_then_killed_engine),
    };
    return moat_run_group_tests("chaos_engine", tests, group_setup, group_teardown);
}
