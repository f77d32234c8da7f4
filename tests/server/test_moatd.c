/* Integration tests of the real moatd binary without Docker (its Docker socket
 * is dead): hello, auth, limits, garbage, ping, deadlines, cancel, go-away,
 * reload, Health and metrics, all over raw frames on a real socket. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"
#include "moat/v1/health.pb-c.h"
#include "moat/v1/sandbox.pb-c.h"

static int frame_is_go_away(const moat_frame *f, moat_code code)
{
    return f->kind == MOAT_FRAME_GO_AWAY && f->u.go_away.code == code;
}

/* Reads until EOF (bounded), skipping anything; true if EOF came. */
static bool drains_to_eof(raw_conn *c)
{
    moat_frame f;
    for (int i = 0; i < 100; i++) {
        int r = raw_recv(c, &f, 10000);
        if (r == 0)
            return true;
        if (r < 0)
            return false;
    }
    return false;
}

static moatd_proc P; /* the shared server for most tests */

static int setup_server(void **state)
{
    (void)state;
    const char *extra[] = {"--token=sesame", "--max_streams_per_connection=3", "--log_level=debug",
                           NULL};
    return moatd_start(&P, false, extra) ? 0 : -1;
}

static int teardown_server(void **state)
{
    (void)state;
    int rc = moatd_stop(&P);
    if (rc != 0)
        moatd_dump_log(&P);
    moatd_remove_dir(P.state_dir);
    return rc == 0 ? 0 : -1;
}

static raw_conn *authed(void)
{
    raw_conn *c = raw_connect(P.port);
    assert_non_null(c);
    moat_frame ack;
    assert_int_equal(raw_hello(c, "sesame", &ack), 1);
    assert_int_equal(ack.kind, MOAT_FRAME_HELLO_ACK);
    return c;
}

static void test_hello_ack_limits(void **state)
{
    (void)state;
    raw_conn *c = raw_connect(P.port);
    moat_frame ack;
    assert_int_equal(raw_hello(c, "sesame", &ack), 1);
    assert_int_equal(ack.kind, MOAT_FRAME_HELLO_ACK);
    assert_int_equal(ack.u.hello_ack.protocol_version, 1);
    assert_int_equal(ack.u.hello_ack.max_frame_size, 1048576);
    assert_int_equal(ack.u.hello_ack.initial_window, 1048576);
    assert_int_equal(ack.u.hello_ack.max_concurrent_streams, 3);
    assert_true(ack.u.hello_ack.server_version.len > 6);
    assert_memory_equal(ack.u.hello_ack.server_version.data, "moatd/", 6);
    raw_close(c);
}

static void test_wrong_and_missing_token(void **state)
{
    (void)state;
    const char *tokens[] = {"sesamE", "sesame-and-more", "", NULL};
    for (int i = 0; i < 4; i++) {
        raw_conn *c = raw_connect(P.port);
        moat_frame f;
        assert_int_equal(raw_hello(c, tokens[i], &f), 1);
        assert_true(frame_is_go_away(&f, MOAT_CODE_UNAUTHENTICATED));
        assert_true(drains_to_eof(c));
        raw_close(c);
    }
}

static void test_call_before_hello_is_refused(void **state)
{
    (void)state;
    raw_conn *c = raw_connect(P.port);
    Moat__V1__HealthCheckRequest req = MOAT__V1__HEALTH_CHECK_REQUEST__INIT;
    raw_call(c, "/moat.v1.Health/Check", 0, &req.base);
    moat_frame f;
    assert_int_equal(raw_recv(c, &f, 10000), 1);
    assert_true(frame_is_go_away(&f, MOAT_CODE_INVALID_ARGUMENT));
    assert_true(drains_to_eof(c));
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
    /* Exec on a session moatd does not know: NOT_FOUND or UNAVAILABLE from
     * the runtime, never a touch of anything else. */
    raw_close(c);
}

static void test_unknown_method_keeps_connection(void **state)
{
    (void)state;
    raw_conn *c = authed();
    char reason[64];
    assert_int_equal(
        raw_unary(c, "/moat.v1.Nope/Nothing", NULL, NULL, NULL, reason, sizeof(reason)),
        MOAT_CODE_UNIMPLEMENTED);
    assert_string_equal(reason, "unknown_method");
    Moat__V1__HealthCheckRequest req = MOAT__V1__HEALTH_CHECK_REQUEST__INIT;
    assert_int_equal(raw_unary(c, "/moat.v1.Health/Check", &req.base, NULL, NULL, NULL, 0),
                     MOAT_CODE_OK);
    raw_close(c);
}

static void test_bad_request_payload(void **state)
{
    (void)state;
    raw_conn *c = authed();
    uint32_t id = raw_call(c, "/moat.v1.Sandboxes/GetSession", 0, NULL);
    moat_frame m = {0};
    m.stream_id = id;
    m.kind = MOAT_FRAME_MESSAGE;
    const uint8_t junk[] = {0x0a, 0x7f, 0x01};
    m.u.message.payload = (moat_slice){junk, sizeof(junk)};
    raw_send(c, &m);
    moat_frame f;
    assert_int_equal(raw_recv_stream(c, id, &f, 10000), 1);
    assert_int_equal(f.kind, MOAT_FRAME_END);
    assert_int_equal(f.u.end.code, MOAT_CODE_INVALID_ARGUMENT);
    raw_close(c);
}

/* A NUL inside a string (protobuf allows it) would cut a command short: refused before it
 * reaches anything, with the field named. */
static void test_nul_in_command_is_refused(void **state)
{
    (void)state;
    raw_conn *c = authed();
    uint32_t id = raw_call(c, "/moat.v1.Exec/RunCommand", 0, NULL);
    moat_frame m = {0};
    m.stream_id = id;
    m.kind = MOAT_FRAME_MESSAGE;
    const uint8_t req[] = {0x12, 9, 'r', 'm', ' ', '-', 'r', 'f', 0, ' ', '/'};
    m.u.message.payload = (moat_slice){req, sizeof(req)};
    raw_send(c, &m);
    moat_frame f;
    assert_int_equal(raw_recv_stream(c, id, &f, 10000), 1);
    assert_int_equal(f.kind, MOAT_FRAME_END);
    assert_int_equal(f.u.end.code, MOAT_CODE_INVALID_ARGUMENT);
    assert_int_equal(f.u.end.reason.len, strlen("nul_in_argument"));
    assert_memory_equal(f.u.end.reason.data, "nul_in_argument", f.u.end.reason.len);
    raw_close(c);
}

static void test_ping_pong(void **state)
{
    (void)state;
    raw_conn *c = authed();
    moat_frame p = {0};
    p.kind = MOAT_FRAME_PING;
    p.u.ping.payload = 0x1122334455667788ull;
    raw_send(c, &p);
    moat_frame f;
    assert_int_equal(raw_recv(c, &f, 10000), 1);
    assert_int_equal(f.kind, MOAT_FRAME_PONG);
    assert_true(f.u.pong.payload == 0x1122334455667788ull);
    raw_close(c);
}

static void test_stream_limit(void **state)
{
    (void)state;
    raw_conn *c = authed();
    /* Calls without their request message stay open. */
    uint32_t ids[4];
    for (int i = 0; i < 4; i++)
        ids[i] = raw_call(c, "/moat.v1.Health/Check", 0, NULL);
    moat_frame f;
    assert_int_equal(raw_recv_stream(c, ids[3], &f, 10000), 1);
    assert_int_equal(f.kind, MOAT_FRAME_END);
    assert_int_equal(f.u.end.code, MOAT_CODE_RESOURCE_EXHAUSTED);
    /* Cancel frees a slot. */
    moat_frame cancel = {0};
    cancel.stream_id = ids[0];
    cancel.kind = MOAT_FRAME_CANCEL;
    raw_send(c, &cancel);
    assert_int_equal(raw_recv_stream(c, ids[0], &f, 10000), 1);
    assert_int_equal(f.kind, MOAT_FRAME_END);
    assert_int_equal(f.u.end.code, MOAT_CODE_CANCELLED);
    Moat__V1__HealthCheckRequest req = MOAT__V1__HEALTH_CHECK_REQUEST__INIT;
    assert_int_equal(raw_unary(c, "/moat.v1.Health/Check", &req.base, NULL, NULL, NULL, 0),
                     MOAT_CODE_OK);
    raw_close(c);
}

static void test_deadline_exceeded(void **state)
{
    (void)state;
    raw_conn *c = authed();
    uint32_t id = raw_call(c, "/moat.v1.Health/Check", 50, NULL);
    moat_frame f;
    assert_int_equal(raw_recv_stream(c, id, &f, 10000), 1);
    assert_int_equal(f.kind, MOAT_FRAME_END);
    assert_int_equal(f.u.end.code, MOAT_CODE_DEADLINE_EXCEEDED);
    raw_close(c);
}

static void test_reused_stream_id_closes(void **state)
{
    (void)state;
    raw_conn *c = authed();
    Moat__V1__HealthCheckRequest req = MOAT__V1__HEALTH_CHECK_REQUEST__INIT;
    assert_int_equal(raw_unary(c, "/moat.v1.Health/Check", &req.base, NULL, NULL, NULL, 0),
                     MOAT_CODE_OK);
    c->next_stream = 1;
    raw_call(c, "/moat.v1.Health/Check", 0, NULL);
    moat_frame f;
    assert_int_equal(raw_recv(c, &f, 10000), 1);
    assert_true(frame_is_go_away(&f, MOAT_CODE_INVALID_ARGUMENT));
    assert_true(drains_to_eof(c));
    raw_close(c);
}

static void test_garbage_and_oversized_frames(void **state)
{
    (void)state;
    raw_conn *bystander = authed();

    /* Zero length before the hello. */
    raw_conn *c = raw_connect(P.port);
    const uint8_t zero[4] = {0, 0, 0, 0};
    raw_send_bytes(c, zero, 4);
    moat_frame f;
    assert_int_equal(raw_recv(c, &f, 10000), 1);
    assert_true(frame_is_go_away(&f, MOAT_CODE_INVALID_ARGUMENT));
    assert_true(drains_to_eof(c));
    raw_close(c);

    /* Over the pre-hello limit. */
    c = raw_connect(P.port);
    const uint8_t big[4] = {0, 0, 0x20, 0x00}; /* 8192 > 4096 */
    raw_send_bytes(c, big, 4);
    assert_int_equal(raw_recv(c, &f, 10000), 1);
    assert_true(frame_is_go_away(&f, MOAT_CODE_RESOURCE_EXHAUSTED));
    assert_true(drains_to_eof(c));
    raw_close(c);

    /* Over max_frame_size after the hello. */
    c = authed();
    const uint8_t huge[4] = {0x7f, 0xff, 0xff, 0xff};
    raw_send_bytes(c, huge, 4);
    assert_int_equal(raw_recv(c, &f, 10000), 1);
    assert_true(frame_is_go_away(&f, MOAT_CODE_RESOURCE_EXHAUSTED));
    assert_true(drains_to_eof(c));
    raw_close(c);

    /* Bytes that are no protobuf Frame at all. */
    c = authed();
    const uint8_t junk[] = {0, 0, 0, 6, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    raw_send_bytes(c, junk, sizeof(junk));
    assert_int_equal(raw_recv(c, &f, 10000), 1);
    assert_true(frame_is_go_away(&f, MOAT_CODE_INVALID_ARGUMENT));
    assert_true(drains_to_eof(c));
    raw_close(c);

    /* A frame kind only the server may send. */
    c = authed();
    moat_frame end = {0};
    end.stream_id = 1;
    end.kind = MOAT_FRAME_END;
    raw_send(c, &end);
    assert_int_equal(raw_recv(c, &f, 10000), 1);
    assert_true(frame_is_go_away(&f, MOAT_CODE_INVALID_ARGUMENT));
    raw_close(c);

    /* The other client carries on. */
    Moat__V1__HealthCheckRequest req = MOAT__V1__HEALTH_CHECK_REQUEST__INIT;
    assert_int_equal(raw_unary(bystander, "/moat.v1.Health/Check", &req.base, NULL, NULL, NULL, 0),
                     MOAT_CODE_OK);
    raw_close(bystander);
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* Seeded random input, before and after the hello, with random and with
 * plausible length prefixes: each connection ends or waits, moatd lives on. */
static void test_random_input_never_hurts_the_server(void **state)
{
    (void)state;
    uint8_t buf[3000];
    for (int round = 0; round < 300; round++) {
        raw_conn *c = raw_connect(P.port);
        assert_non_null(c);
        moat_frame f;
        if (round % 2 == 0)
            assert_int_equal(raw_hello(c, "sesame", &f), 1);
        size_t n = 1 + rng() % (sizeof(buf) - 4);
        for (size_t i = 0; i < n; i++)
            buf[i] = (uint8_t)rng();
        if (round % 3 == 0) {
            /* A length that matches what follows, so the body gets decoded. */
            uint32_t len = (uint32_t)(n - 4);
            buf[0] = (uint8_t)(len >> 24);
            buf[1] = (uint8_t)(len >> 16);
            buf[2] = (uint8_t)(len >> 8);
            buf[3] = (uint8_t)len;
        }
        raw_send_bytes(c, buf, n);
        /* Read what the server says, without waiting long for frames it
         * legitimately still expects. */
        for (int k = 0; k < 20; k++) {
            int r = raw_recv(c, &f, 100);
            if (r != 1)
                break;
        }
        raw_close(c);
    }
    assert_int_equal(kill(P.pid, 0), 0);
    raw_conn *c = authed();
    Moat__V1__HealthCheckRequest req = MOAT__V1__HEALTH_CHECK_REQUEST__INIT;
    assert_int_equal(raw_unary(c, "/moat.v1.Health/Check", &req.base, NULL, NULL, NULL, 0),
                     MOAT_CODE_OK);
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

static void test_timeouts_and_connection_limit(void **state)
{
    (void)state;
    moatd_proc p;
    const char *extra[] = {"--hello_timeout_seconds=1", "--idle_timeout_seconds=1",
                           "--max_connections=3", NULL};
    assert_true(moatd_start(&p, false, extra));
    moat_frame f;
    /* No hello: closed after hello_timeout_seconds. */
    raw_conn *silent = raw_connect(p.port);
    assert_int_equal(raw_recv(silent, &f, 15000), 1);
    assert_true(frame_is_go_away(&f, MOAT_CODE_DEADLINE_EXCEEDED));
    assert_true(drains_to_eof(silent));
    raw_close(silent);
    /* Hello, then silence: closed as idle. */
    raw_conn *idle = raw_connect(p.port);
    assert_int_equal(raw_hello(idle, NULL, &f), 1);
    assert_int_equal(raw_recv(idle, &f, 15000), 1);
    assert_true(frame_is_go_away(&f, MOAT_CODE_UNAVAILABLE));
    assert_true(drains_to_eof(idle));
    raw_close(idle);
    /* Connection limit. */
    raw_conn *cs[3];
    for (int i = 0; i < 3; i++) {
        cs[i] = raw_connect(p.port);
        assert_non_null(cs[i]);
    }
    raw_conn *extra_conn = raw_connect(p.port);
    assert_int_equal(raw_recv(extra_conn, &f, 10000), 1);
    assert_true(frame_is_go_away(&f, MOAT_CODE_RESOURCE_EXHAUSTED));
    raw_close(extra_conn);
    for (int i = 0; i < 3; i++)
        raw_close(cs[i]);
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

int main(void)
{
    const struct CMUnitTest shared[] = {
        cmocka_unit_test(test_hello_ack_limits),
        cmocka_unit_test(test_wrong_and_missing_token),
        cmocka_unit_test(test_call_before_hello_is_refused),
        cmocka_unit_test(test_health_without_docker),
        cmocka_unit_test(test_sandboxes_refusals_without_docker),
        cmocka_unit_test(test_unknown_method_keeps_connection),
        cmocka_unit_test(test_bad_request_payload),
        cmocka_unit_test(test_nul_in_command_is_refused),
        cmocka_unit_test(test_ping_pong),
        cmocka_unit_test(test_stream_limit),
        cmocka_unit_test(test_deadline_exceeded),
        cmocka_unit_test(test_reused_stream_id_closes),
        cmocka_unit_test(test_garbage_and_oversized_frames),
        cmocka_unit_test(test_random_input_never_hurts_the_server),
        cmocka_unit_test(test_metrics_endpoint),
    };
    const struct CMUnitTest own[] = {
        cmocka_unit_test(test_timeouts_and_connection_limit),
        cmocka_unit_test(test_sigterm_drains),
        cmocka_unit_test(test_sighup_reloads_token),
        cmocka_unit_test(test_unix_socket_listener),
        cmocka_unit_test(test_refuses_public_listener_without_token),
        cmocka_unit_test(test_check_config_validates_instance),
    };
    int failed = cmocka_run_group_tests_name("moatd_shared", shared, setup_server, teardown_server);
    failed += cmocka_run_group_tests_name("moatd_own", own, NULL, NULL);
    return failed;
}
