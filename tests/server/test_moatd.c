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
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <netinet/in.h>
#include <poll.h>

#include "moat_test.h"

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

/* The group's last test stops moatd and checks how it exited; here it runs only when a failure
 * came first. */
static int teardown_server(void **state)
{
    (void)state;
    moatd_stop(&P);
    moatd_remove_dir(P.state_dir);
    return 0;
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

static bool message_starts(const moat_frame *f, const char *prefix)
{
    size_t n = strlen(prefix);
    return f->u.go_away.message.len >= n && memcmp(f->u.go_away.message.data, prefix, n) == 0;
}

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

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

/* A protocol error ends the connection at once: calls up to last_stream_id cannot finish (no
 * more of the client's frames can be read), so each gets its End, CANCELLED
 * connection_closed, before the GoAway, which is the last frame. */
static void test_protocol_error_ends_calls_before_go_away(void **state)
{
    (void)state;
    raw_conn *c = authed();
    uint32_t open_id = raw_call(c, "/moat.v1.Health/Check", 0, NULL); /* stays open */
    moat_frame ping = {0};
    ping.kind = MOAT_FRAME_PING;
    raw_send(c, &ping);
    moat_frame f;
    assert_int_equal(raw_recv(c, &f, 10000), 1);
    assert_int_equal(f.kind, MOAT_FRAME_PONG);
    const uint8_t junk[] = {0, 0, 0, 6, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    raw_send_bytes(c, junk, sizeof(junk));
    assert_int_equal(raw_recv(c, &f, 10000), 1);
    assert_int_equal(f.kind, MOAT_FRAME_END);
    assert_int_equal(f.stream_id, open_id);
    assert_int_equal(f.u.end.code, MOAT_CODE_CANCELLED);
    assert_int_equal(f.u.end.reason.len, strlen("connection_closed"));
    assert_memory_equal(f.u.end.reason.data, "connection_closed", f.u.end.reason.len);
    assert_int_equal(raw_recv(c, &f, 10000), 1);
    assert_true(frame_is_go_away(&f, MOAT_CODE_INVALID_ARGUMENT));
    assert_int_equal(f.u.go_away.last_stream_id, open_id);
    assert_int_equal(raw_recv(c, &f, 10000), 0);
    raw_close(c);
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

/* Each check has its own server, with only the timeout it is about short: a 1 s timeout
 * elsewhere would race the check, most of all under valgrind. */
static void test_hello_timeout(void **state)
{
    (void)state;
    moatd_proc p;
    const char *extra[] = {"--hello_timeout_seconds=1", NULL};
    assert_true(moatd_start(&p, false, extra));
    /* No hello: closed after hello_timeout_seconds. */
    raw_conn *silent = raw_connect(p.port);
    moat_frame f;
    assert_int_equal(raw_recv(silent, &f, 15000), 1);
    assert_true(frame_is_go_away(&f, MOAT_CODE_DEADLINE_EXCEEDED));
    assert_true(drains_to_eof(silent));
    raw_close(silent);
    assert_int_equal(moatd_stop(&p), 0);
    moatd_remove_dir(p.state_dir);
}

static void test_idle_timeout(void **state)
{
    (void)state;
    moatd_proc p;
    const char *extra[] = {"--hello_timeout_seconds=60", "--idle_timeout_seconds=1", NULL};
    assert_true(moatd_start(&p, false, extra));
    /* Hello, then silence: closed as idle. */
    raw_conn *idle = raw_connect(p.port);
    moat_frame f;
    assert_int_equal(raw_hello(idle, NULL, &f), 1);
    assert_int_equal(f.kind, MOAT_FRAME_HELLO_ACK);
    assert_int_equal(raw_recv(idle, &f, 15000), 1);
    assert_true(frame_is_go_away(&f, MOAT_CODE_UNAVAILABLE));
    assert_true(drains_to_eof(idle));
    raw_close(idle);
    assert_int_equal(moatd_stop(&p), 0);
    moatd_remove_dir(p.state_dir);
}

static void test_connection_limit(void **state)
{
    (void)state;
    moatd_proc p;
    const char *extra[] = {"--hello_timeout_seconds=60", "--idle_timeout_seconds=600",
                           "--max_connections=3", NULL};
    assert_true(moatd_start(&p, false, extra));
    moat_frame f;
    /* It counts authenticated connections, and refuses the hello past it. */
    raw_conn *cs[3];
    for (int i = 0; i < 3; i++) {
        cs[i] = raw_connect(p.port);
        assert_non_null(cs[i]);
        assert_int_equal(raw_hello(cs[i], NULL, &f), 1);
        assert_int_equal(f.kind, MOAT_FRAME_HELLO_ACK);
    }
    raw_conn *extra_conn = raw_connect(p.port);
    assert_int_equal(raw_hello(extra_conn, NULL, &f), 1);
    assert_true(frame_is_go_away(&f, MOAT_CODE_RESOURCE_EXHAUSTED));
    raw_close(extra_conn);
    for (int i = 0; i < 3; i++)
        raw_close(cs[i]);
    assert_int_equal(moatd_stop(&p), 0);
    moatd_remove_dir(p.state_dir);
}

/* Connections still in their hello have a budget of their own: past it the oldest goes, and
 * silent connections never keep an authenticated client out. */
static void test_pending_hello_budget(void **state)
{
    (void)state;
    moatd_proc p;
    const char *extra[] = {"--token=sesame", "--max_pending_hellos=4", "--max_connections=2",
                           "--hello_timeout_seconds=60", NULL};
    assert_true(moatd_start(&p, false, extra));
    raw_conn *silent[10];
    for (int i = 0; i < 10; i++) {
        silent[i] = raw_connect(p.port);
        assert_non_null(silent[i]);
    }
    moat_frame f;
    for (int i = 0; i < 6; i++) {
        assert_int_equal(raw_recv(silent[i], &f, 10000), 1);
        assert_true(frame_is_go_away(&f, MOAT_CODE_RESOURCE_EXHAUSTED));
        assert_true(message_starts(&f, "too_many_pending_hellos"));
        assert_true(drains_to_eof(silent[i]));
    }
    /* The newest four are still waiting for their hello. */
    assert_int_equal(raw_hello(silent[9], "sesame", &f), 1);
    assert_int_equal(f.kind, MOAT_FRAME_HELLO_ACK);
    /* A client that says hello at once gets in while the silent ones sit there. */
    raw_conn *c = raw_connect(p.port);
    assert_int_equal(raw_hello(c, "sesame", &f), 1);
    assert_int_equal(f.kind, MOAT_FRAME_HELLO_ACK);
    Moat__V1__HealthCheckRequest req = MOAT__V1__HEALTH_CHECK_REQUEST__INIT;
    assert_int_equal(raw_unary(c, "/moat.v1.Health/Check", &req.base, NULL, NULL, NULL, 0),
                     MOAT_CODE_OK);
    /* max_connections counts only these two authenticated ones. */
    assert_int_equal(raw_hello(silent[8], "sesame", &f), 1);
    assert_true(frame_is_go_away(&f, MOAT_CODE_RESOURCE_EXHAUSTED));
    char page[16384];
    assert_true(http_get(p.metrics_port, "/metrics", page, sizeof(page)));
    assert_non_null(strstr(page, "moat_hellos_refused_total{reason=\"evicted\"} 6\n"));
    assert_non_null(strstr(page, "moat_pending_hellos 2\n"));
    for (int i = 0; i < 10; i++)
        raw_close(silent[i]);
    raw_close(c);
    assert_int_equal(moatd_stop(&p), 0);
    moatd_remove_dir(p.state_dir);
}

static int count_lines_with(const char *path, const char *needle)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    char line[4096];
    int n = 0;
    while (fgets(line, sizeof(line), f) != NULL)
        n += strstr(line, needle) != NULL;
    fclose(f);
    return n;
}

/* Wrong tokens cost their address: past the burst its connections are refused with
 * RESOURCE_EXHAUSTED too_many_failed_hellos, other addresses are untouched, the address gets
 * a try back as time passes, and the log keeps to its budget. */
static void test_failed_hellos_throttled(void **state)
{
    (void)state;
    moatd_proc p;
    const char *extra[] = {"--token=sesame", NULL};
    assert_true(moatd_start(&p, false, extra));
    moat_frame f;
    uint64_t t0 = mono_ms();
    for (int i = 0; i < 10; i++) {
        raw_conn *c = raw_connect_from(p.port, "127.0.0.2");
        assert_non_null(c);
        assert_int_equal(raw_hello(c, "guess", &f), 1);
        assert_true(frame_is_go_away(&f, MOAT_CODE_UNAUTHENTICATED));
        raw_close(c);
    }
    /* Refused before the hello is even read: guessing from here is over for now. */
    int throttled = 0;
    for (int i = 0; i < 50; i++) {
        raw_conn *c = raw_connect_from(p.port, "127.0.0.2");
        assert_non_null(c);
        /* No answer yet: a token came back with time (a slow machine), so spend it. */
        if (raw_recv(c, &f, 2000) != 1)
            assert_int_equal(raw_hello(c, "guess", &f), 1);
        if (frame_is_go_away(&f, MOAT_CODE_RESOURCE_EXHAUSTED)) {
            assert_true(message_starts(&f, "too_many_failed_hellos"));
            throttled++;
        } else {
            assert_true(frame_is_go_away(&f, MOAT_CODE_UNAUTHENTICATED));
        }
        raw_close(c);
    }
    assert_true(throttled >= 40);
    uint64_t elapsed_s = (mono_ms() - t0) / 1000u;
    /* The right token from another address is untouched. */
    raw_conn *ok = raw_connect(p.port);
    assert_int_equal(raw_hello(ok, "sesame", &f), 1);
    assert_int_equal(f.kind, MOAT_FRAME_HELLO_ACK);
    raw_close(ok);
    /* Time gives the address a try back (bounded poll: the refill is one a second). */
    bool again = false;
    for (int i = 0; i < 100 && !again; i++) { /* <= 10 s */
        raw_conn *c = raw_connect_from(p.port, "127.0.0.2");
        assert_non_null(c);
        if (raw_hello(c, "sesame", &f) == 1 && f.kind == MOAT_FRAME_HELLO_ACK)
            again = true;
        raw_close(c);
        if (!again)
            sleep_ms(100);
    }
    assert_true(again);
    /* One more refusal, a second or more after the flood: its line counts what was dropped. */
    raw_conn *late = raw_connect_from(p.port, "127.0.0.3");
    assert_int_equal(raw_hello(late, "guess", &f), 1);
    assert_true(frame_is_go_away(&f, MOAT_CODE_UNAUTHENTICATED));
    raw_close(late);
    /* 60 refusals, but the log stays within 10 lines a second for them. */
    int lines = count_lines_with(p.log_path, "authenticated=0");
    assert_true(lines > 0);
    assert_true((uint64_t)lines <= 10u * (elapsed_s + 2u));
    assert_true(count_lines_with(p.log_path, "suppressed=") > 0);
    char page[16384];
    assert_true(http_get(p.metrics_port, "/metrics", page, sizeof(page)));
    assert_non_null(strstr(page, "moat_hellos_refused_total{reason=\"throttled\"}"));
    assert_int_equal(moatd_stop(&p), 0);
    moatd_remove_dir(p.state_dir);
}

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

/* A burst far past what moatd accepts in one loop turn: the listener pauses between turns and
 * always resumes, so every connection gets its HelloAck. */
static void test_accept_burst(void **state)
{
    (void)state;
    enum { N = 300 };
    moatd_proc p;
    const char *extra[] = {"--max_pending_hellos=1000", NULL};
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
    }
    for (int i = 0; i < N; i++) {
        struct pollfd pfd = {fds[i], POLLIN, 0};
        assert_int_equal(poll(&pfd, 1, 10000), 1);
        uint8_t ack[256];
        ssize_t n = read(fds[i], ack, sizeof(ack));
        assert_true(n > 5);
        assert_int_equal(ack[4], 0x1a); /* field 3, hello_ack */
        close(fds[i]);
    }
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
        cmocka_unit_test(test_hello_ack_limits),
        cmocka_unit_test(test_wrong_and_missing_token),
        cmocka_unit_test(test_call_before_hello_is_refused),
        cmocka_unit_test(test_health_without_docker),
        cmocka_unit_test(test_engine_calls_refused_while_docker_down),
        cmocka_unit_test(test_sandboxes_refusals_without_docker),
        cmocka_unit_test(test_unknown_method_keeps_connection),
        cmocka_unit_test(test_bad_request_payload),
        cmocka_unit_test(test_nul_in_command_is_refused),
        cmocka_unit_test(test_ping_pong),
        cmocka_unit_test(test_stream_limit),
        cmocka_unit_test(test_deadline_exceeded),
        cmocka_unit_test(test_reused_stream_id_closes),
        cmocka_unit_test(test_garbage_and_oversized_frames),
        cmocka_unit_test(test_protocol_error_ends_calls_before_go_away),
        cmocka_unit_test(test_random_input_never_hurts_the_server),
        cmocka_unit_test(test_metrics_endpoint),
        cmocka_unit_test_prestate(test_moatd_exits_0_on_sigterm, &P),
    };
    const struct CMUnitTest own[] = {
        cmocka_unit_test(test_hello_timeout),
        cmocka_unit_test(test_idle_timeout),
        cmocka_unit_test(test_connection_limit),
        cmocka_unit_test(test_pending_hello_budget),
        cmocka_unit_test(test_failed_hellos_throttled),
        cmocka_unit_test(test_metrics_with_10000_connections),
        cmocka_unit_test(test_accept_burst),
        cmocka_unit_test(test_sigterm_drains),
        cmocka_unit_test(test_sighup_reloads_token),
        cmocka_unit_test(test_unix_socket_listener),
        cmocka_unit_test(test_refuses_public_listener_without_token),
        cmocka_unit_test(test_check_config_names_a_bad_runtime),
        cmocka_unit_test(test_check_config_validates_instance),
    };
    int failed = moat_run_group_tests("moatd_shared", shared, setup_server, teardown_server);
    failed += moat_run_group_tests("moatd_own", own, NULL, NULL);
    return failed;
}
