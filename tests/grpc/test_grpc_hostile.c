/* moatd's gRPC listener against bad input, from an nghttp2 client and raw bytes: each request
 * gets the status gRPC's spec names (or the connection a GOAWAY), and a call left open on the
 * same connection, and the connection itself, carry on. No Docker: Health answers without it. */
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <unistd.h>

#include "moat_test.h"

#include "grpc/grpc.h"
#include "h2_client.h"
#include "harness.h"

#define TOKEN "grpc-hostile-token"
#define CHECK "/moat.v1.Health/Check"

static moatd_proc moatd;
static const uint8_t empty_message[5] = {0, 0, 0, 0, 0};

static int setup(void **state)
{
    (void)state;
    static const char *const extra[] = {
        "--token=" TOKEN,         "--max_frame_size=65536",    "--max_streams_per_connection=16",
        "--max_pending_hellos=4", "--hello_timeout_seconds=2", NULL};
    return moatd_start(&moatd, false, extra) ? 0 : -1;
}

/* The last test stops moatd itself and checks how it exited; here it is stopped only when a
 * failure came first. Its state directory (and the mounts moatd made in it) goes either way. */
static int teardown(void **state)
{
    (void)state;
    int rc = moatd.pid <= 0 || moatd_stop(&moatd) == 0 ? 0 : -1;
    moatd_remove_dir(moatd.state_dir);
    return rc;
}

/* A Health check that must succeed: the connection still serves. */
static void check_serves(h2c *c)
{
    h2c_stream *st = h2c_request(c, CHECK, TOKEN, NULL, empty_message, sizeof(empty_message));
    assert_non_null(st);
    assert_true(h2c_wait(c, st, 10000));
    assert_int_equal(st->http_status, 200);
    assert_int_equal(st->grpc_status, 0);
    assert_int_equal(st->messages, 1);
}

/* Runs one request to its end and checks its gRPC status and reason. */
static void expect_grpc(h2c *c, h2c_stream *st, moat_code code, const char *reason)
{
    assert_non_null(st);
    assert_true(h2c_wait(c, st, 10000));
    assert_int_equal(st->http_status, 200);
    assert_int_equal(st->grpc_status, code);
    assert_int_equal(st->details.code, code);
    assert_string_equal(st->details.reason, reason);
}

static void test_refusals_leave_other_calls_running(void **state)
{
    (void)state;
    h2c *c = h2c_connect(moatd.grpc_port, 0);
    assert_non_null(c);
    /* A call that has its headers and waits for its request message meanwhile. */
    h2c_stream *open = h2c_request(c, CHECK, TOKEN, NULL, NULL, 0);
    assert_non_null(open);

    expect_grpc(c, h2c_request(c, CHECK, NULL, NULL, empty_message, 5), MOAT_CODE_UNAUTHENTICATED,
                "missing_token");
    expect_grpc(c, h2c_request(c, CHECK, "wrong", NULL, empty_message, 5),
                MOAT_CODE_UNAUTHENTICATED, "invalid_token");
    h2c_stream *st = h2c_request(c, "/moat.v1.Nope/Nothing", TOKEN, NULL, empty_message, 5);
    expect_grpc(c, st, MOAT_CODE_UNIMPLEMENTED, "unknown_method");
    assert_string_equal(st->grpc_message, "unknown method \"/moat.v1.Nope/Nothing\"");
    const h2c_header gzip[] = {{"grpc-encoding", "gzip"}, {NULL, NULL}};
    expect_grpc(c, h2c_request(c, CHECK, TOKEN, gzip, empty_message, 5), MOAT_CODE_UNIMPLEMENTED,
                "unsupported_encoding");

    /* A compressed message with no encoding negotiated. */
    static const uint8_t compressed[6] = {1, 0, 0, 0, 1, 'x'};
    expect_grpc(c, h2c_request(c, CHECK, TOKEN, NULL, compressed, sizeof(compressed)),
                MOAT_CODE_INTERNAL, "compressed_without_encoding");
    /* A message declared past max_frame_size: refused from its prefix alone. */
    static const uint8_t huge[5] = {0, 0x7f, 0xff, 0xff, 0xff};
    expect_grpc(c, h2c_request(c, CHECK, TOKEN, NULL, huge, sizeof(huge)),
                MOAT_CODE_RESOURCE_EXHAUSTED, "message_too_large");
    /* A request that ends inside a message, and one with no message. */
    static const uint8_t cut[3] = {0, 0, 0};
    expect_grpc(c, h2c_request(c, CHECK, TOKEN, NULL, cut, sizeof(cut)), MOAT_CODE_INTERNAL,
                "truncated_message");
    expect_grpc(c, h2c_request(c, CHECK, TOKEN, NULL, (const uint8_t *)"", 0), MOAT_CODE_INTERNAL,
                "missing_request");
    /* A header list past 16 KiB. */
    char *filler = malloc(20000);
    memset(filler, 'a', 19999);
    filler[19999] = '\0';
    const h2c_header big[] = {{"x-filler", filler}, {NULL, NULL}};
    expect_grpc(c, h2c_request(c, CHECK, TOKEN, big, empty_message, 5),
                MOAT_CODE_RESOURCE_EXHAUSTED, "headers_too_large");
    free(filler);
    /* grpc-timeout: an expired one, and one that is not a timeout. */
    const h2c_header soon[] = {{"grpc-timeout", "1m"}, {NULL, NULL}};
    h2c_stream *late = h2c_request(c, CHECK, TOKEN, soon, NULL, 0);
    assert_non_null(late);
    assert_true(h2c_wait(c, late, 10000));
    assert_int_equal(late->grpc_status, MOAT_CODE_DEADLINE_EXCEEDED);
    const h2c_header bad_timeout[] = {{"grpc-timeout", "12x"}, {NULL, NULL}};
    expect_grpc(c, h2c_request(c, CHECK, TOKEN, bad_timeout, empty_message, 5), MOAT_CODE_INTERNAL,
                "bad_timeout");

    /* Not gRPC at all: HTTP statuses, no gRPC status. */
    const h2c_header json[] = {{":method", "POST"},
                               {":scheme", "http"},
                               {":authority", "x"},
                               {":path", CHECK},
                               {"content-type", "application/json"},
                               {"authorization", "Bearer " TOKEN},
                               {NULL, NULL}};
    st = h2c_request_raw(c, json, empty_message, 5);
    assert_true(h2c_wait(c, st, 10000));
    assert_int_equal(st->http_status, 415);
    assert_int_equal(st->grpc_status, -1);
    const h2c_header get[] = {{":method", "GET"},
                              {":scheme", "http"},
                              {":authority", "x"},
                              {":path", CHECK},
                              {"content-type", "application/grpc"},
                              {NULL, NULL}};
    st = h2c_request_raw(c, get, NULL, 0);
    assert_true(h2c_wait(c, st, 10000));
    assert_int_equal(st->http_status, 405);

    /* The waiting call was untouched by all of that. */
    assert_false(open->closed);
    assert_true(h2c_send_body(c, open, empty_message, sizeof(empty_message)));
    assert_true(h2c_wait(c, open, 10000));
    assert_int_equal(open->grpc_status, 0);
    assert_int_equal(open->messages, 1);
    check_serves(c);
    assert_false(h2c_dead(c));
    h2c_close(c);
}

/* RST_STREAM of an open call cancels it; the connection goes on. */
static void test_reset_cancels_one_call(void **state)
{
    (void)state;
    h2c *c = h2c_connect(moatd.grpc_port, 0);
    h2c_stream *st = h2c_request(c, CHECK, TOKEN, NULL, NULL, 0);
    assert_non_null(st);
    check_serves(c);
    h2c_cancel(c, st);
    check_serves(c);
    assert_true(st->closed);
    assert_true(moatd_log_contains(&moatd, "stream reset by the client"));
    h2c_close(c);
}

/* More streams than max_streams_per_connection (SETTINGS_MAX_CONCURRENT_STREAMS), sent before
 * the client could read the server's SETTINGS: the extra one is refused (REFUSED_STREAM), the
 * connection and the others go on. */
static void test_stream_limit(void **state)
{
    (void)state;
    h2c *c = h2c_connect(moatd.grpc_port, 0);
    h2c_stream *held[16];
    for (int i = 0; i < 16; i++)
        held[i] = h2c_request(c, CHECK, TOKEN, NULL, NULL, 0);
    h2c_stream *extra = h2c_request(c, CHECK, TOKEN, NULL, empty_message, 5);
    assert_non_null(extra);
    assert_true(h2c_wait(c, extra, 10000));
    assert_int_equal(extra->grpc_status, -1);
    assert_int_equal(extra->rst_code, 7 /* REFUSED_STREAM */);
    for (int i = 0; i < 16; i++) {
        assert_true(h2c_send_body(c, held[i], empty_message, 5));
        assert_true(h2c_wait(c, held[i], 10000));
        assert_int_equal(held[i]->grpc_status, 0);
    }
    check_serves(c);
    h2c_close(c);
}

/* Protocol errors end their own connection with a GOAWAY (or at once, for a peer that does not
 * speak HTTP/2); a connection beside it is untouched. */
static void test_protocol_errors_end_only_their_connection(void **state)
{
    (void)state;
    h2c *good = h2c_connect(moatd.grpc_port, 0);
    h2c_stream *open = h2c_request(good, CHECK, TOKEN, NULL, NULL, 0);
    check_serves(good);

    /* HTTP/1.1 on the HTTP/2 port: closed at once. */
    int fd = h2c_raw_connect(moatd.grpc_port);
    static const char get[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_int_equal(write(fd, get, sizeof(get) - 1), (ssize_t)(sizeof(get) - 1));
    assert_true(h2c_raw_wait_eof(fd, 10000));
    close(fd);

    /* DATA on stream 0, after a valid preface: PROTOCOL_ERROR. */
    h2c *broken = h2c_connect(moatd.grpc_port, 0);
    check_serves(broken);
    static const uint8_t data0[] = {0, 0, 1, 0, 0, 0, 0, 0, 0, 'x'};
    assert_true(h2c_send_raw(broken, data0, sizeof(data0)));
    assert_true(h2c_run(broken, h2c_until_dead, NULL, 10000));
    assert_int_equal(h2c_goaway_code(broken), 1 /* PROTOCOL_ERROR */);
    h2c_close(broken);

    /* A frame header declaring more than SETTINGS_MAX_FRAME_SIZE (16 KiB): FRAME_SIZE_ERROR. */
    broken = h2c_connect(moatd.grpc_port, 0);
    check_serves(broken);
    static const uint8_t huge[] = {0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 1};
    assert_true(h2c_send_raw(broken, huge, sizeof(huge)));
    assert_true(h2c_run(broken, h2c_until_dead, NULL, 10000));
    assert_int_equal(h2c_goaway_code(broken), 6 /* FRAME_SIZE_ERROR */);
    h2c_close(broken);

    assert_false(open->closed);
    assert_true(h2c_send_body(good, open, empty_message, 5));
    assert_true(h2c_wait(good, open, 10000));
    assert_int_equal(open->grpc_status, 0);
    h2c_close(good);
}

/* Connections that make no call with the token are bounded as framed ones before their hello:
 * max_pending_hellos of them at once (one more closes the oldest), each closed after
 * hello_timeout_seconds; a connection that made its call is touched by neither. */
static void test_silent_connections_are_bounded(void **state)
{
    (void)state;
    h2c *good = h2c_connect(moatd.grpc_port, 0);
    check_serves(good);
    long long evicted = moatd_hellos_refused(&moatd, "evicted"),
              timeouts = moatd_hellos_refused(&moatd, "timeout");
    h2c *silent[5];
    for (int i = 0; i < 5; i++) {
        silent[i] = h2c_connect(moatd.grpc_port, 0);
        assert_non_null(silent[i]);
        /* Only a wrong token, which proves nothing. */
        expect_grpc(silent[i], h2c_request(silent[i], CHECK, "wrong", NULL, empty_message, 5),
                    MOAT_CODE_UNAUTHENTICATED, "invalid_token");
    }
    /* The fifth made the first go. */
    assert_true(h2c_run(silent[0], h2c_until_dead, NULL, 10000));
    assert_int_equal(moatd_hellos_refused(&moatd, "evicted"), evicted + 1);
    for (int i = 1; i < 5; i++) {
        assert_true(h2c_run(silent[i], h2c_until_dead, NULL, 10000));
        assert_int_equal(h2c_goaway_code(silent[i]), 0 /* NO_ERROR */);
    }
    assert_int_equal(moatd_hellos_refused(&moatd, "timeout"), timeouts + 4);
    for (int i = 0; i < 5; i++)
        h2c_close(silent[i]);
    check_serves(good);
    h2c_close(good);
}

static bool never(h2c *c, void *ud)
{
    (void)c;
    (void)ud;
    return false;
}

/* A probe's grpc.health.v1 Watch needs no token, and its connection stays past
 * hello_timeout_seconds while the watch runs. */
static void test_health_watch_without_token(void **state)
{
    (void)state;
    h2c *probe = h2c_connect(moatd.grpc_port, 0);
    h2c_stream *w = h2c_request(probe, "/grpc.health.v1.Health/Watch", NULL, NULL, empty_message,
                                sizeof(empty_message));
    assert_non_null(w);
    h2c_run(probe, never, NULL, 3000); /* past the 2 s hello timeout */
    assert_false(w->closed);
    assert_false(h2c_dead(probe));
    assert_int_equal(w->messages, 1); /* NOT_SERVING: this moatd has no Docker */
    assert_int_equal(w->last_len, 2);
    assert_int_equal(w->last[1], 2);
    h2c_cancel(probe, w);
    check_serves(probe);
    h2c_close(probe);
}

/* Reflection questions asked faster than the answers are read: the stream ends
 * RESOURCE_EXHAUSTED once 1 MiB of answers wait, instead of moatd queueing on. */
static void test_reflection_reader_that_does_not_read(void **state)
{
    (void)state;
    /* ServerReflectionRequest{file_containing_symbol: "moat.v1.Sandboxes"}, 2000 times. */
    static const char symbol[] = "moat.v1.Sandboxes";
    uint8_t one[5 + 2 + sizeof(symbol) - 1];
    uint8_t q[2 + sizeof(symbol) - 1] = {0x22, sizeof(symbol) - 1};
    memcpy(q + 2, symbol, sizeof(symbol) - 1);
    h2c_frame_message(one, q, sizeof(q));
    size_t n = 2000;
    uint8_t *body = malloc(n * sizeof(one));
    for (size_t i = 0; i < n; i++)
        memcpy(body + i * sizeof(one), one, sizeof(one));
    h2c *c = h2c_connect(moatd.grpc_port, 0);
    h2c_stream *st =
        h2c_request(c, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", TOKEN,
                    NULL, body, n * sizeof(one));
    assert_non_null(st);
    st->reading = false;
    h2c_run(c, never, NULL, 2000);
    assert_false(st->closed);
    h2c_resume_reading(c, st);
    assert_true(h2c_wait(c, st, 30000));
    assert_int_equal(st->grpc_status, MOAT_CODE_RESOURCE_EXHAUSTED);
    assert_string_equal(st->details.reason, "answers_not_read");
    assert_true(st->messages > 0 && st->messages < n);
    check_serves(c);
    h2c_close(c);
    free(body);
}

static bool first_message(h2c *c, void *ud)
{
    (void)c;
    return ((h2c_stream *)ud)->messages > 0;
}

static bool goaway_seen(h2c *c, void *ud)
{
    (void)ud;
    return h2c_goaway_code(c) >= 0;
}

/* SIGTERM: a graceful GOAWAY, a running health Watch ends OK, a call already open still
 * completes, the connection closes once it is done, and moatd exits 0. Stops moatd: last. */
static void test_drain(void **state)
{
    (void)state;
    h2c *c = h2c_connect(moatd.grpc_port, 0);
    check_serves(c);
    h2c_stream *open = h2c_request(c, CHECK, TOKEN, NULL, NULL, 0);
    h2c_stream *watch = h2c_request(c, "/grpc.health.v1.Health/Watch", NULL, NULL, empty_message,
                                    sizeof(empty_message));
    assert_true(h2c_run(c, first_message, watch, 10000));
    assert_int_equal(kill(moatd.pid, SIGTERM), 0);
    assert_true(h2c_run(c, goaway_seen, NULL, 10000));
    assert_int_equal(h2c_goaway_code(c), 0 /* NO_ERROR */);
    assert_true(h2c_wait(c, watch, 10000));
    assert_int_equal(watch->grpc_status, 0);
    assert_false(open->closed);
    assert_true(h2c_send_body(c, open, empty_message, sizeof(empty_message)));
    assert_true(h2c_wait(c, open, 10000));
    assert_int_equal(open->grpc_status, 0);
    assert_true(h2c_run(c, h2c_until_dead, NULL, 10000));
    h2c_close(c);
    assert_int_equal(moatd_wait(&moatd, 20000), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_refusals_leave_other_calls_running),
        cmocka_unit_test(test_reset_cancels_one_call),
        cmocka_unit_test(test_stream_limit),
        cmocka_unit_test(test_protocol_errors_end_only_their_connection),
        cmocka_unit_test(test_silent_connections_are_bounded),
        cmocka_unit_test(test_health_watch_without_token),
        cmocka_unit_test(test_reflection_reader_that_does_not_read),
        cmocka_unit_test(test_drain),
    };
    return moat_run_group_tests("grpc_hostile", tests, setup, teardown);
}
