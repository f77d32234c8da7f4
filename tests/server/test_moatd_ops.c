/* Integration tests of the real moatd binary without Docker (its Docker socket is dead), as an
 * operator sees it: Health and refusals while Docker is down, metrics (with 10,000 connections
 * open too), SIGTERM's drain, SIGHUP's reload, the Unix socket listener, and --check-config. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <netinet/in.h>
#include <poll.h>

#include "moat_test.h"

#include "moat/v1/health.pb-c.h"
#include "moat/v1/sandbox.pb-c.h"
#include "moatd_fixture.h"

/* Once the background probe has found the engine missing, calls that need it end at once with
 * UNAVAILABLE docker_unreachable instead of each trying the engine. */
static void test_engine_calls_refused_while_docker_down(void **state)
{
    (void)state;
    raw_conn *c = authed();
    Moat__V1__GetSessionRequest gr = MOAT__V1__GET_SESSION_REQUEST__INIT;
    gr.session_id = (char *)"123e4567-e89b-12d3-a456-426614174000";
    char reason[64] = "";
    int code = -1;
    for (int i = 0; i < 200 && strcmp(reason, "docker_unreachable") != 0; i++) { /* <= 20 s */
        code = raw_unary(c, "/moat.v1.Sandboxes/GetSession", &gr.base, NULL, NULL, reason,
                         sizeof(reason));
        if (strcmp(reason, "docker_unreachable") != 0)
            sleep_ms(100);
    }
    assert_int_equal(code, MOAT_CODE_UNAVAILABLE);
    assert_string_equal(reason, "docker_unreachable");
    Moat__V1__ListSessionsRequest lr = MOAT__V1__LIST_SESSIONS_REQUEST__INIT;
    assert_int_equal(raw_unary(c, "/moat.v1.Sandboxes/ListSessions", &lr.base, NULL, NULL, reason,
                               sizeof(reason)),
                     MOAT_CODE_UNAVAILABLE);
    assert_string_equal(reason, "docker_unreachable");
    raw_close(c);
}

static void test_health_without_docker(void **state)
{
    (void)state;
    raw_conn *c = authed();
    Moat__V1__HealthCheckRequest req = MOAT__V1__HEALTH_CHECK_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    int code = raw_unary(c, "/moat.v1.Health/Check", &req.base,
                         &moat__v1__health_check_response__descriptor, &resp, NULL, 0);
    assert_int_equal(code, MOAT_CODE_OK);
    assert_non_null(resp);
    Moat__V1__HealthCheckResponse *h = (Moat__V1__HealthCheckResponse *)resp;
    assert_false(h->docker_reachable);
    assert_int_equal(h->status, MOAT__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING);
    assert_non_null(strstr(h->server_version, "moatd/"));
    protobuf_c_message_free_unpacked(resp, NULL);
    raw_close(c);
}

/* Runs `true` in session sid; the End's code and reason, failing on any message before it. */
static int exec_end(raw_conn *c, const char *sid, char *reason, size_t reason_len)
{
    uint32_t id = raw_start_run(c, sid, "true", 0);
    assert_int_not_equal(id, 0);
    moat_frame f;
    assert_int_equal(raw_recv_stream(c, id, &f, 30000), 1);
    assert_int_equal(f.kind, MOAT_FRAME_END);
    snprintf(reason, reason_len, "%.*s", (int)f.u.end.reason.len,
             (const char *)f.u.end.reason.data);
    return (int)f.u.end.code;
}

static void test_sandboxes_refusals_without_docker(void **state)
{
    (void)state;
    raw_conn *c = authed();
    char reason[64];
    Moat__V1__GetSessionRequest get = MOAT__V1__GET_SESSION_REQUEST__INIT;
    get.session_id = (char *)"../../etc/passwd";
    assert_int_equal(raw_unary(c, "/moat.v1.Sandboxes/GetSession", &get.base, NULL, NULL, reason,
                               sizeof(reason)),
                     MOAT_CODE_INVALID_ARGUMENT);
    assert_string_equal(reason, "invalid_session_id");
    Moat__V1__CreateSessionRequest cr = MOAT__V1__CREATE_SESSION_REQUEST__INIT;
    cr.chat_id = (char *)"not-a-uuid";
    assert_int_equal(raw_unary(c, "/moat.v1.Sandboxes/CreateSession", &cr.base, NULL, NULL, reason,
                               sizeof(reason)),
                     MOAT_CODE_INVALID_ARGUMENT);
    assert_string_equal(reason, "invalid_chat_id");
    /* A valid request with Docker unreachable is a status, not a hang. */
    cr.chat_id = (char *)"{123E4567-E89B-12D3-A456-426614174000}";
    int code = raw_unary(c, "/moat.v1.Sandboxes/CreateSession", &cr.base, NULL, NULL, reason,
                         sizeof(reason));
    assert_true(code == MOAT_CODE_UNAVAILABLE || code == MOAT_CODE_INTERNAL);
    /* Exec on a session moatd does not know, and on a session id that is a path: an End with
     * no output, from the runtime's answer and from the id's check. */
    assert_int_equal(exec_end(c, "123e4567-e89b-12d3-a456-426614174000", reason, sizeof(reason)),
                     MOAT_CODE_UNAVAILABLE);
    assert_string_equal(reason, "docker_unreachable");
    assert_int_equal(exec_end(c, "../../etc/passwd", reason, sizeof(reason)),
                     MOAT_CODE_INVALID_ARGUMENT);
    assert_string_equal(reason, "invalid_session_id");
    raw_close(c);
}

static void test_metrics_endpoint(void **state)
{
    (void)state;
    static char page[65536];
    assert_true(http_get(P.metrics_port, "/metrics", page, sizeof(page)));
    assert_non_null(strstr(page, "200 OK"));
    assert_non_null(strstr(page, "moat_calls_total{code=\"UNAUTHENTICATED\"}"));
    assert_non_null(strstr(page, "moat_active_streams"));
    assert_non_null(strstr(page, "moat_create_session_seconds_bucket"));
    assert_non_null(strstr(page, "moat_live_sessions"));
    assert_non_null(strstr(page, "moat_streamed_bytes_total"));
    assert_non_null(strstr(page, "moat_reaper_actions_total"));
    assert_true(http_get(P.metrics_port, "/other", page, sizeof(page)));
    assert_non_null(strstr(page, "404"));
}

/* --- tests with their own server ------------------------------------------------ */

/* /metrics answers with 10,000 client connections open in moatd: its descriptors are numbered
 * far past select's FD_SETSIZE. */
static void test_metrics_with_10000_connections(void **state)
{
    (void)state;
    enum { N = 10000 };
    struct rlimit lim;
    assert_int_equal(getrlimit(RLIMIT_NOFILE, &lim), 0);
    if (lim.rlim_cur < N + 100) {
        lim.rlim_cur = lim.rlim_max;
        assert_int_equal(setrlimit(RLIMIT_NOFILE, &lim), 0);
    }
    assert_true(lim.rlim_cur >= N + 100); /* root raises its own limit; say so if it cannot */
    moatd_proc p;
    const char *extra[] = {"--max_connections=20000", NULL};
    assert_true(moatd_start(&p, false, extra));
    moat_frame hello = {0};
    hello.kind = MOAT_FRAME_HELLO;
    hello.u.hello.protocol_version = MOAT_WIRE_PROTOCOL_VERSION;
    uint8_t bytes[64];
    size_t len = 0;
    assert_int_equal(moat_wire_encode(&hello, bytes, sizeof(bytes), &len), MOAT_OK);
    static int fds[N];
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)p.port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    for (int i = 0; i < N; i++) {
        fds[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        assert_true(fds[i] >= 0);
        assert_int_equal(connect(fds[i], (struct sockaddr *)&a, sizeof(a)), 0);
        assert_int_equal(write(fds[i], bytes, len), (ssize_t)len);
        /* Read the HelloAck before the next, so the pending budget never comes into play. */
        struct pollfd pfd = {fds[i], POLLIN, 0};
        assert_int_equal(poll(&pfd, 1, 10000), 1);
        uint8_t ack[256];
        assert_true(read(fds[i], ack, sizeof(ack)) > 0);
    }
    char page[16384];
    assert_true(http_get(p.metrics_port, "/metrics", page, sizeof(page)));
    assert_non_null(strstr(page, "moat_connections 10000\n"));
    for (int i = 0; i < N; i++)
        close(fds[i]);
    assert_int_equal(moatd_stop(&p), 0);
    moatd_remove_dir(p.state_dir);
}

static void test_sigterm_drains(void **state)
{
    (void)state;
    moatd_proc p;
    const char *extra[] = {"--drain_grace_seconds=1", NULL};
    assert_true(moatd_start(&p, false, extra));
    raw_conn *c = raw_connect(p.port);
    moat_frame f;
    assert_int_equal(raw_hello(c, NULL, &f), 1);
    uint32_t open_id = raw_call(c, "/moat.v1.Health/Check", 0, NULL); /* stays open */
    /* Make sure the server has seen the call before the signal. */
    moat_frame ping = {0};
    ping.kind = MOAT_FRAME_PING;
    raw_send(c, &ping);
    assert_int_equal(raw_recv(c, &f, 10000), 1);
    assert_int_equal(f.kind, MOAT_FRAME_PONG);
    kill(p.pid, SIGTERM);
    assert_int_equal(raw_recv(c, &f, 10000), 1);
    assert_true(frame_is_go_away(&f, MOAT_CODE_UNAVAILABLE));
    assert_true(f.u.go_away.last_stream_id >= open_id);
    /* New calls are refused while draining. */
    uint32_t late = raw_call(c, "/moat.v1.Health/Check", 0, NULL);
    assert_int_equal(raw_recv_stream(c, late, &f, 10000), 1);
    assert_int_equal(f.kind, MOAT_FRAME_END);
    assert_int_equal(f.u.end.code, MOAT_CODE_UNAVAILABLE);
    /* New connections are refused: the listener is closed. */
    assert_null(raw_connect(p.port));
    /* After the grace period the open call ends and the server exits. */
    assert_int_equal(raw_recv_stream(c, open_id, &f, 15000), 1);
    assert_int_equal(f.kind, MOAT_FRAME_END);
    assert_int_equal(f.u.end.code, MOAT_CODE_CANCELLED);
    assert_true(drains_to_eof(c));
    raw_close(c);
    assert_int_equal(moatd_wait(&p, 15000), 0);
    moatd_remove_dir(p.state_dir);
}

static void test_sighup_reloads_token(void **state)
{
    (void)state;
    char path[] = "/tmp/moat-reload-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char *v1 = "token = first\n";
    assert_int_equal(write(fd, v1, strlen(v1)), (ssize_t)strlen(v1));
    close(fd);
    char arg[64];
    snprintf(arg, sizeof(arg), "--config=%s", path);
    moatd_proc p;
    const char *extra[] = {arg, NULL};
    assert_true(moatd_start(&p, false, extra));
    moat_frame f;
    raw_conn *c = raw_connect(p.port);
    assert_int_equal(raw_hello(c, "first", &f), 1);
    assert_int_equal(f.kind, MOAT_FRAME_HELLO_ACK);
    raw_close(c);
    FILE *out = fopen(path, "w");
    fputs("token = second\nmax_streams_per_connection = 9\n", out);
    fclose(out);
    kill(p.pid, SIGHUP);
    /* Wait until the new token is in force (bounded). */
    bool switched = false;
    for (int i = 0; i < 100 && !switched; i++) {
        c = raw_connect(p.port);
        assert_int_equal(raw_hello(c, "second", &f), 1);
        switched = f.kind == MOAT_FRAME_HELLO_ACK;
        if (switched)
            assert_int_equal(f.u.hello_ack.max_concurrent_streams, 9);
        raw_close(c);
        if (!switched)
            usleep(50000);
    }
    assert_true(switched);
    c = raw_connect(p.port);
    assert_int_equal(raw_hello(c, "first", &f), 1);
    assert_true(frame_is_go_away(&f, MOAT_CODE_UNAUTHENTICATED));
    raw_close(c);
    unlink(path);
    assert_int_equal(moatd_stop(&p), 0);
    moatd_remove_dir(p.state_dir);
}

static void test_unix_socket_listener(void **state)
{
    (void)state;
    moatd_proc p;
    char path[128], arg[160];
    snprintf(path, sizeof(path), "/tmp/moat-srvtest-unix-%d.sock", (int)getpid());
    snprintf(arg, sizeof(arg), "--unix_socket=%s", path);
    const char *extra[] = {arg, "--token=unix-token", NULL};
    assert_true(moatd_start(&p, false, extra));
    /* moatd_start waited for the TCP listener; the Unix one is bound just after it,
     * a gap that is visible when moatd runs under a wrapper. */
    raw_conn *c = raw_connect_unix(path);
    for (int i = 0; c == NULL && i < 100 * moatd_slowdown(); i++) {
        usleep(50000);
        c = raw_connect_unix(path);
    }
    assert_non_null(c);
    moat_frame f;
    assert_int_equal(raw_hello(c, "unix-token", &f), 1);
    assert_int_equal(f.kind, MOAT_FRAME_HELLO_ACK);
    Moat__V1__HealthCheckRequest req = MOAT__V1__HEALTH_CHECK_REQUEST__INIT;
    assert_int_equal(raw_unary(c, "/moat.v1.Health/Check", &req.base, NULL, NULL, NULL, 0),
                     MOAT_CODE_OK);
    raw_close(c);
    /* The token applies on the Unix socket too. */
    c = raw_connect_unix(path);
    assert_int_equal(raw_hello(c, NULL, &f), 1);
    assert_true(frame_is_go_away(&f, MOAT_CODE_UNAUTHENTICATED));
    raw_close(c);
    assert_int_equal(moatd_stop(&p), 0);
    /* The socket file is removed on shutdown. */
    assert_int_not_equal(access(path, F_OK), 0);
    moatd_remove_dir(p.state_dir);
}

static void test_refuses_public_listener_without_token(void **state)
{
    (void)state;
    const char *build = getenv("MOAT_BUILD_DIR");
    char cmd[600];
    /* Under the wrapper, stderr stays open for its report. */
    const char *wrap = moatd_wrapper();
    const char *quiet = wrap[0] != '\0' ? ">/dev/null" : ">/dev/null 2>&1";
    snprintf(cmd, sizeof(cmd), "%s %s/src/server/moatd --listen=0.0.0.0:%d --check-config %s", wrap,
             build != NULL ? build : ".", free_port(), quiet);
    int rc = system(cmd);
    assert_true(WIFEXITED(rc) && WEXITSTATUS(rc) == 2);
    snprintf(cmd, sizeof(cmd), "%s %s/src/server/moatd --version %s", wrap,
             build != NULL ? build : ".", quiet);
    rc = system(cmd);
    assert_true(WIFEXITED(rc) && WEXITSTATUS(rc) == 0);
}

/* --instance reaches the runtime: --check-config validates it as the runtime's setting. */
static void test_check_config_validates_instance(void **state)
{
    (void)state;
    const char *build = getenv("MOAT_BUILD_DIR");
    char dir[] = "/tmp/moat-srvtest-XXXXXX";
    assert_non_null(mkdtemp(dir));
    const char *wrap = moatd_wrapper();
    const char *quiet = wrap[0] != '\0' ? ">/dev/null" : ">/dev/null 2>&1";
    const char *instances[] = {"blue-1", "'bad instance!'"};
    for (int i = 0; i < 2; i++) {
        char cmd[1200];
        snprintf(cmd, sizeof(cmd),
                 "%s %s/src/server/moatd --state_dir=%s --execd_bundle=%s --instance=%s "
                 "--check-config %s",
                 wrap, build != NULL ? build : ".", dir, dir, instances[i], quiet);
        int rc = system(cmd);
        assert_true(WIFEXITED(rc));
        assert_int_equal(WEXITSTATUS(rc), i == 0 ? 0 : 2);
    }
    moatd_remove_dir(dir);
}

/* moatd --check-config with the runtime from the environment (env_value) or a flag
 * (flag_value), either may be NULL; returns its exit status, with its stderr in err. */
static int check_runtime_config(const char *dir, const char *env_value, const char *flag_value,
                                char *err, size_t errlen)
{
    const char *build = getenv("MOAT_BUILD_DIR");
    char env[128] = "", flag[128] = "", cmd[1400];
    if (env_value != NULL)
        snprintf(env, sizeof(env), "MOAT_RUNTIME='%s'", env_value);
    if (flag_value != NULL)
        snprintf(flag, sizeof(flag), "'--runtime=%s'", flag_value);
    snprintf(cmd, sizeof(cmd),
             "%s %s %s/src/server/moatd --state_dir=%s --execd_bundle=%s %s --check-config "
             ">/dev/null 2>%s/stderr",
             env, moatd_wrapper(), build != NULL ? build : ".", dir, dir, flag, dir);
    int rc = system(cmd);
    snprintf(cmd, sizeof(cmd), "%s/stderr", dir);
    FILE *f = fopen(cmd, "r");
    size_t n = f != NULL ? fread(err, 1, errlen - 1, f) : 0;
    err[n] = '\0';
    if (f != NULL)
        fclose(f);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

static void test_check_config_names_a_bad_runtime(void **state)
{
    (void)state;
    char dir[] = "/tmp/moat-srvtest-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char err[1024];
    assert_int_equal(check_runtime_config(dir, "runsc", NULL, err, sizeof(err)), 0);
    assert_int_equal(check_runtime_config(dir, NULL, "runsc", err, sizeof(err)), 0);
    /* From either source, a bad name is refused with a message naming the setting. */
    assert_int_equal(check_runtime_config(dir, "run sc", NULL, err, sizeof(err)), 2);
    if (strstr(err, "config runtime:") == NULL)
        fail_msg("moatd's error \"%s\" does not name the runtime setting", err);
    assert_int_equal(check_runtime_config(dir, NULL, "runsc;reboot", err, sizeof(err)), 2);
    if (strstr(err, "config runtime:") == NULL)
        fail_msg("moatd's error \"%s\" does not name the runtime setting", err);
    moatd_remove_dir(dir);
}

int main(void)
{
    const struct CMUnitTest shared[] = {
        cmocka_unit_test(test_health_without_docker),
        cmocka_unit_test(test_engine_calls_refused_while_docker_down),
        cmocka_unit_test(test_sandboxes_refusals_without_docker),
        cmocka_unit_test(test_metrics_endpoint),
        cmocka_unit_test_prestate(test_moatd_exits_0_on_sigterm, &P),
    };
    const struct CMUnitTest own[] = {
        cmocka_unit_test(test_metrics_with_10000_connections),
        cmocka_unit_test(test_sigterm_drains),
        cmocka_unit_test(test_sighup_reloads_token),
        cmocka_unit_test(test_unix_socket_listener),
        cmocka_unit_test(test_refuses_public_listener_without_token),
        cmocka_unit_test(test_check_config_names_a_bad_runtime),
        cmocka_unit_test(test_check_config_validates_instance),
    };
    int failed = moat_run_group_tests("moatd_ops_shared", shared, setup_server, teardown_server);
    failed += moat_run_group_tests("moatd_ops_own", own, NULL, NULL);
    return failed;
}
