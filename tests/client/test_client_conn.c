/* libmoat's connection against a fake moatd (client_fixture.h): the hello and a unary call,
 * a wrong token, EOF and garbage from the server, deadlines, limits, pings and go-away. */
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

#include "moat_test.h"

#include "client_fixture.h"

static void test_hello_and_unary(void **state)
{
    (void)state;
    fake s;
    start_tcp(&s);
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", s.port);
    moat_client_options o = {.token = "tok"};
    moat_client *c = NULL;
    moat_status st;
    assert_int_equal(moat_client_connect(addr, &o, &c, &st), MOAT_OK);
    const moat_client_limits *l = moat_client_get_limits(c);
    assert_int_equal(l->max_frame_size, 2 * WINDOW);
    assert_int_equal(l->initial_window, WINDOW);
    assert_int_equal(l->max_concurrent_streams, 8);
    assert_string_equal(l->server_version, "fake/1");
    assert_int_equal(moat_client_ping(c, 5000), MOAT_OK);
    /* A request over the window or a frame is refused before anything is sent. */
    static uint8_t big[2 * WINDOW];
    moat_call *too_big;
    assert_int_equal(
        moat_call_start(c, "/test/Echo", 0, NULL, 0, (moat_slice){big, WINDOW + 1}, &too_big),
        MOAT_E_TOO_BIG);
    moat_kv many[MOAT_WIRE_MAX_KV + 1];
    memset(many, 0, sizeof many);
    assert_int_equal(moat_call_start(c, "/test/Echo", 0, many, MOAT_WIRE_MAX_KV + 1,
                                     moat_slice_str("x"), &too_big),
                     MOAT_E_TOO_BIG);
    uint8_t resp[64];
    size_t n;
    assert_int_equal(
        moat_client_unary(c, "/test/Echo", 0, moat_slice_str("abc"), resp, sizeof resp, &n, &st),
        MOAT_OK);
    assert_int_equal(n, 3);
    assert_memory_equal(resp, "abc", 3);
    assert_int_equal(
        moat_client_unary(c, "/test/Fail", 0, moat_slice_str("x"), resp, sizeof resp, &n, &st),
        MOAT_E_REMOTE);
    assert_int_equal(st.code, MOAT_CODE_UNAVAILABLE);
    assert_string_equal(st.reason, "sandbox_start_failed");
    assert_string_equal(st.message, "sandbox container did not start");
    assert_string_equal(moat_status_detail_get(&st, "chat_id"),
                        "123e4567-e89b-12d3-a456-426614174000");
    moat_client_close(c);
    stop(&s);
}

static void test_bad_token(void **state)
{
    (void)state;
    fake s;
    start_unix(&s);
    char addr[128];
    snprintf(addr, sizeof addr, "unix:%s", s.path);
    moat_client_options o = {.token = "wrong"};
    moat_client *c = NULL;
    moat_status st;
    assert_int_equal(moat_client_connect(addr, &o, &c, &st), MOAT_E_REMOTE);
    assert_null(c);
    assert_int_equal(st.code, MOAT_CODE_UNAUTHENTICATED);
    assert_string_equal(st.reason, "bad_token");
    stop(&s);
    assert_int_equal(moat_client_connect("unix:/nonexistent/moat.sock", &o, &c, &st), MOAT_E_IO);
    assert_int_equal(st.code, MOAT_CODE_UNAVAILABLE);
    assert_int_equal(moat_client_connect("no-port", &o, &c, &st), MOAT_E_INVAL);
}

static void test_eof_is_unavailable(void **state)
{
    (void)state;
    fake s;
    start_unix(&s);
    moat_client *c = connect_unix(&s);
    moat_call *a, *d;
    assert_int_equal(moat_call_start(c, "/test/Hang", 0, NULL, 0, moat_slice_str("x"), &a),
                     MOAT_OK);
    assert_int_equal(moat_call_start(c, "/test/Drop", 0, NULL, 0, moat_slice_str("x"), &d),
                     MOAT_OK);
    moat_slice msg;
    assert_int_equal(moat_call_recv(d, 5000, &msg), MOAT_E_CLOSED);
    assert_int_equal(moat_call_status(d)->code, MOAT_CODE_UNAVAILABLE);
    assert_int_equal(moat_call_recv(a, 5000, &msg), MOAT_E_CLOSED);
    assert_int_equal(moat_call_status(a)->code, MOAT_CODE_UNAVAILABLE);
    moat_call *e;
    assert_int_equal(moat_call_start(c, "/test/Echo", 0, NULL, 0, moat_slice_str("x"), &e),
                     MOAT_E_CLOSED);
    moat_call_free(a);
    moat_call_free(d);
    moat_client_close(c);
    stop(&s);
}

static void test_garbage_from_server(void **state)
{
    (void)state;
    fake s;
    start_unix(&s);
    moat_client *c = connect_unix(&s);
    moat_call *g;
    assert_int_equal(moat_call_start(c, "/test/Garbage", 0, NULL, 0, moat_slice_str("x"), &g),
                     MOAT_OK);
    moat_slice msg;
    assert_int_equal(moat_call_recv(g, 5000, &msg), MOAT_E_CLOSED);
    assert_int_equal(moat_call_status(g)->code, MOAT_CODE_INTERNAL);
    assert_string_equal(moat_call_status(g)->reason, "bad_frame");
    moat_call_free(g);
    moat_client_close(c); /* closing makes the fake's read see EOF */
    stop(&s);
}

static void test_deadline(void **state)
{
    (void)state;
    fake s;
    start_unix(&s);
    moat_client *c = connect_unix(&s);
    moat_call *h;
    /* The fake ignores deadlines: the client ends the call itself. */
    assert_int_equal(moat_call_start(c, "/test/Hang", 1, NULL, 0, moat_slice_str("x"), &h),
                     MOAT_OK);
    moat_slice msg;
    moat_err err;
    while ((err = moat_call_recv(h, 5000, &msg)) == MOAT_OK)
        ;
    assert_int_equal(err, MOAT_E_CLOSED);
    /* The client's own verdict, whatever the fake answers to its Cancel. */
    assert_int_equal(moat_call_status(h)->code, MOAT_CODE_DEADLINE_EXCEEDED);
    moat_call_free(h);
    moat_client_close(c);
    stop(&s);
}

static void test_limits_ping_goaway(void **state)
{
    (void)state;
    fake s;
    start_unix(&s);
    moat_client *c = connect_unix(&s);
    /* max_concurrent_streams (8) is enforced locally. */
    moat_call *calls[9];
    for (int i = 0; i < 8; i++)
        assert_int_equal(
            moat_call_start(c, "/test/Hang", 0, NULL, 0, moat_slice_str("x"), &calls[i]), MOAT_OK);
    assert_int_equal(moat_call_start(c, "/test/Hang", 0, NULL, 0, moat_slice_str("x"), &calls[8]),
                     MOAT_E_TOO_BIG);
    for (int i = 0; i < 8; i++)
        moat_call_free(calls[i]);
    /* The server pings: the Pong goes out and the call completes. */
    moat_call *p;
    assert_int_equal(moat_call_start(c, "/test/PingMe", 0, NULL, 0, moat_slice_str("pp"), &p),
                     MOAT_OK);
    moat_slice msg;
    assert_int_equal(moat_call_recv(p, 5000, &msg), MOAT_OK);
    assert_int_equal(msg.len, 2);
    assert_int_equal(moat_call_recv(p, 5000, &msg), MOAT_E_CLOSED);
    moat_call_free(p);
    /* GoAway: an open call above last_stream_id ends UNAVAILABLE; no new calls. */
    moat_call *h, *g;
    assert_int_equal(moat_call_start(c, "/test/Hang", 0, NULL, 0, moat_slice_str("x"), &h),
                     MOAT_OK);
    assert_int_equal(moat_call_start(c, "/test/GoAway", 0, NULL, 0, moat_slice_str("x"), &g),
                     MOAT_OK);
    assert_int_equal(moat_call_recv(g, 5000, &msg), MOAT_E_CLOSED);
    assert_int_equal(moat_call_status(g)->code, MOAT_CODE_UNAVAILABLE);
    assert_string_equal(moat_call_status(g)->reason, "go_away");
    assert_string_equal(moat_call_status(g)->message, "shutting down");
    assert_int_equal(moat_call_recv(h, 50, &msg),
                     MOAT_E_TIMEOUT); /* at or below last_stream_id: still open */
    moat_call *n;
    assert_int_equal(moat_call_start(c, "/test/Echo", 0, NULL, 0, moat_slice_str("x"), &n),
                     MOAT_E_CLOSED);
    moat_call_free(h);
    moat_call_free(g);
    moat_client_close(c);
    stop(&s);
    assert_int_equal(s.pongs_seen, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hello_and_unary),    cmocka_unit_test(test_bad_token),
        cmocka_unit_test(test_eof_is_unavailable), cmocka_unit_test(test_garbage_from_server),
        cmocka_unit_test(test_deadline),           cmocka_unit_test(test_limits_ping_goaway),
    };
    return moat_run_group_tests("test_client_conn", tests, NULL, NULL);
}
