/* Integration tests of the real moatd binary without Docker (its Docker socket is dead), over
 * raw frames on a real socket: unknown methods, bad payloads, ping, the stream limit, deadlines,
 * reused stream ids, garbage, oversized and random input, and protocol errors. */
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

int main(void)
{
    const struct CMUnitTest shared[] = {
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
        cmocka_unit_test_prestate(test_moatd_exits_0_on_sigterm, &P),
    };
    return moat_run_group_tests("moatd_frames_shared", shared, setup_server, teardown_server);
}
