/* Unit tests of the PTY sessions' pure pieces: the ring, the client frame parser, the
 * handshake key, and the WebSocket fed one byte at a time in both directions (a libwslay
 * client context on the other side). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include "moat_test.h"

#include "pty_proto.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <wslay/wslay.h>

static void test_ring(void **state)
{
    (void)state;
    moat_execd_ring r;
    assert_int_equal(moat_execd_ring_init(&r, 8), MOAT_OK);
    uint8_t out[16];
    uint64_t from;
    assert_int_equal(moat_execd_ring_read(&r, 0, out, sizeof(out), &from), 0);
    moat_execd_ring_write(&r, "abcdef", 6);
    assert_int_equal(moat_execd_ring_read(&r, 2, out, sizeof(out), &from), 4);
    assert_memory_equal(out, "cdef", 4);
    moat_execd_ring_write(&r, "ghijk", 5); /* wraps: holds "defghijk" */
    assert_int_equal(moat_execd_ring_start(&r), 3);
    assert_int_equal(moat_execd_ring_read(&r, 0, out, sizeof(out), &from), 8);
    assert_int_equal(from, 3);
    assert_memory_equal(out, "defghijk", 8);
    assert_int_equal(moat_execd_ring_read(&r, 9, out, 1, &from), 1);
    assert_memory_equal(out, "j", 1);
    assert_int_equal(moat_execd_ring_read(&r, 99, out, sizeof(out), &from), 0);
    assert_int_equal(from, 11);
    moat_execd_ring_write(&r, "0123456789XY", 12); /* longer than the ring */
    assert_int_equal(moat_execd_ring_read(&r, 0, out, sizeof(out), &from), 8);
    assert_int_equal(from, 15);
    assert_memory_equal(out, "456789XY", 8);
    moat_execd_ring_free(&r);
}

static moat_execd_pty_frame parse(const char *json)
{
    moat_execd_pty_frame f;
    moat_execd_pty_parse_frame(json, strlen(json), &f);
    return f;
}

static void test_frames(void **state)
{
    (void)state;
    moat_execd_pty_frame f = parse("{\"type\":\"stdin\",\"data\":\"ls\\n\"}");
    assert_int_equal(f.type, MOAT_EXECD_PTY_STDIN);
    assert_int_equal(f.data_len, 3);
    assert_memory_equal(f.data, "ls\n", 3);
    free(f.data);
    f = parse("{\"type\":\"resize\",\"cols\":65535,\"rows\":1}");
    assert_int_equal(f.type, MOAT_EXECD_PTY_RESIZE);
    assert_int_equal(f.cols, 65535);
    assert_int_equal(f.rows, 1);
    assert_int_equal(parse("{\"type\":\"signal\",\"signal\":\"SIGQUIT\"}").signo, SIGQUIT);
    assert_int_equal(parse("{\"type\":\"ping\"}").type, MOAT_EXECD_PTY_PING);
    assert_int_equal(parse("{\"type\":\"close_stdin\"}").type, MOAT_EXECD_PTY_CLOSE_STDIN);
    static const char *const invalid[] = {
        "{\"type\":\"resize\",\"cols\":0,\"rows\":0}",
        "{\"type\":\"resize\",\"cols\":80,\"rows\":65536}",
        "{\"type\":\"resize\",\"cols\":80.5,\"rows\":24}",
        "{\"type\":\"resize\",\"cols\":\"80\",\"rows\":24}",
        "{\"type\":\"resize\",\"cols\":-1,\"rows\":24}",
        "{\"type\":\"signal\",\"signal\":\"SIGSTOP\"}",
        "{\"type\":\"signal\"}",
        "{\"type\":\"stdin\"}",
        "{\"type\":\"stdin\",\"data\":\"a\\u0000b\"}",
        "{\"type\":\"unknown\"}",
        "{\"type\":5}",
        "[]",
        "{",
        "",
    };
    for (size_t i = 0; i < sizeof(invalid) / sizeof(invalid[0]); i++) {
        f = parse(invalid[i]);
        assert_int_equal(f.type, MOAT_EXECD_PTY_INVALID);
        assert_non_null(f.why);
        assert_null(f.data);
    }
}

static void test_accept_key(void **state)
{
    (void)state;
    char out[MOAT_EXECD_WS_ACCEPT_LEN];
    assert_true(moat_execd_ws_accept_key("dGhlIHNhbXBsZSBub25jZQ==", out)); /* RFC 6455 §1.3 */
    assert_string_equal(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    assert_false(moat_execd_ws_accept_key("", out));
    assert_false(moat_execd_ws_accept_key("dGhlIHNhbXBsZSBub25jZQ", out));
    assert_false(moat_execd_ws_accept_key("dGhlIHNhbXBsZSBub25jZQ=!", out));
    assert_false(moat_execd_ws_accept_key("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==", out));
}

/* ---- the WebSocket, one byte at a time ---- */

typedef struct pipe_buf {
    uint8_t data[1 << 18];
    size_t len, off;
} pipe_buf;

typedef struct peer {
    pipe_buf in;    /* bytes for this side to read, handed out one at a time */
    pipe_buf out;   /* what this side wrote */
    bool gave_byte; /* alternates one byte and EAGAIN */
    int messages;
    int opcodes[8];
    uint8_t msg[8][512];
    size_t msg_len[8];
} peer;

static ssize_t one_byte(peer *p, uint8_t *buf, size_t len)
{
    if (p->gave_byte || p->in.off == p->in.len || len == 0) {
        p->gave_byte = false;
        errno = EAGAIN;
        return -1;
    }
    p->gave_byte = true;
    buf[0] = p->in.data[p->in.off++];
    return 1;
}

static ssize_t server_recv(void *ud, uint8_t *buf, size_t len)
{
    return one_byte(ud, buf, len);
}

static ssize_t server_send(void *ud, const uint8_t *buf, size_t len)
{
    peer *p = ud;
    if (len > sizeof(p->out.data) - p->out.len)
        len = sizeof(p->out.data) - p->out.len;
    memcpy(p->out.data + p->out.len, buf, len);
    p->out.len += len;
    return (ssize_t)len;
}

static void record(peer *p, int opcode, const uint8_t *msg, size_t len)
{
    if (p->messages == 8 || len > sizeof(p->msg[0]))
        return;
    p->opcodes[p->messages] = opcode;
    memcpy(p->msg[p->messages], msg, len);
    p->msg_len[p->messages++] = len;
}

static void server_message(void *ud, int opcode, const uint8_t *msg, size_t len)
{
    record(ud, opcode, msg, len);
}

/* The client side: libwslay's client context writing into a buffer. */
static ssize_t client_send(wslay_event_context_ptr ctx, const uint8_t *data, size_t len, int flags,
                           void *ud)
{
    (void)ctx;
    (void)flags;
    return server_send(ud, data, len);
}

static ssize_t client_recv(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags,
                           void *ud)
{
    (void)flags;
    ssize_t n = one_byte(ud, buf, len);
    if (n < 0)
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
    return n;
}

static int client_mask(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, void *ud)
{
    (void)ctx;
    (void)ud;
    memset(buf, 0x5a, len);
    return 0;
}

static void client_message(wslay_event_context_ptr ctx,
                           const struct wslay_event_on_msg_recv_arg *arg, void *ud)
{
    (void)ctx;
    record(ud, arg->opcode, arg->msg, arg->msg_length);
}

static wslay_event_context_ptr client_new(peer *p)
{
    struct wslay_event_callbacks cb = {.recv_callback = client_recv,
                                       .send_callback = client_send,
                                       .genmask_callback = client_mask,
                                       .on_msg_recv_callback = client_message};
    wslay_event_context_ptr ctx;
    assert_int_equal(wslay_event_context_client_init(&ctx, &cb, p), 0);
    return ctx;
}

static void client_queue(wslay_event_context_ptr ctx, int opcode, const void *data, size_t len)
{
    struct wslay_event_msg m = {.opcode = (uint8_t)opcode, .msg = data, .msg_length = len};
    assert_int_equal(wslay_event_queue_msg(ctx, &m), 0);
    assert_int_equal(wslay_event_send(ctx), 0);
}

static moat_execd_ws *server_new(peer *p, size_t max_message)
{
    moat_execd_ws_io io = {
        .recv = server_recv, .send = server_send, .on_message = server_message, .ud = p};
    moat_execd_ws *ws = moat_execd_ws_new(&io, max_message);
    assert_non_null(ws);
    return ws;
}

/* Feeds what the client wrote to the server one byte per read. */
static void feed_server(moat_execd_ws *ws, peer *server, peer *client)
{
    memcpy(server->in.data + server->in.len, client->out.data, client->out.len);
    server->in.len += client->out.len;
    client->out.len = 0;
    while (server->in.off < server->in.len && moat_execd_ws_want_read(ws))
        assert_true(moat_execd_ws_recv(ws));
    while (moat_execd_ws_want_write(ws))
        assert_true(moat_execd_ws_send(ws));
}

static void test_ws_byte_by_byte(void **state)
{
    (void)state;
    static peer server, client;
    memset(&server, 0, sizeof(server));
    memset(&client, 0, sizeof(client));
    moat_execd_ws *ws = server_new(&server, 1024);
    wslay_event_context_ptr cctx = client_new(&client);
    client_queue(cctx, WSLAY_TEXT_FRAME, "{\"type\":\"ping\"}", 15);
    client_queue(cctx, WSLAY_PING, "hb", 2);
    client_queue(cctx, WSLAY_BINARY_FRAME, "\0abc", 4);
    feed_server(ws, &server, &client);
    assert_int_equal(server.messages, 2);
    assert_int_equal(server.opcodes[0], MOAT_EXECD_WS_TEXT);
    assert_memory_equal(server.msg[0], "{\"type\":\"ping\"}", 15);
    assert_int_equal(server.opcodes[1], MOAT_EXECD_WS_BINARY);
    assert_int_equal(server.msg_len[1], 4);
    assert_memory_equal(server.msg[1], "\0abc", 4);

    /* Server to client: the pong wslay owed, a message and a replay from a wrapped ring. */
    moat_execd_ring ring;
    assert_int_equal(moat_execd_ring_init(&ring, 16), MOAT_OK);
    moat_execd_ring_write(&ring, "0123456789abcdefghij", 20);
    moat_execd_ws_replay rp;
    assert_true(moat_execd_ws_queue(ws, MOAT_EXECD_WS_TEXT, "{\"type\":\"pong\"}", 15));
    assert_true(moat_execd_ws_queue_replay(ws, &rp, &ring, 2)); /* clamped to 4 */
    while (moat_execd_ws_want_write(ws))
        assert_true(moat_execd_ws_send(ws));
    /* Control frames overtake queued messages: the close is queued once they are out. */
    assert_int_equal(moat_execd_ws_queued(ws), 0);
    assert_true(moat_execd_ws_close(ws, 4001, "TAKEN_OVER"));
    while (moat_execd_ws_want_write(ws))
        assert_true(moat_execd_ws_send(ws));
    assert_int_equal(moat_execd_ws_close_sent(ws), 4001);
    memcpy(client.in.data, server.out.data, server.out.len);
    client.in.len = server.out.len;
    while (client.in.off < client.in.len && wslay_event_want_read(cctx))
        assert_int_equal(wslay_event_recv(cctx), 0);
    assert_int_equal(client.messages, 4);
    assert_int_equal(client.opcodes[0], WSLAY_PONG);
    assert_memory_equal(client.msg[0], "hb", 2);
    assert_int_equal(client.opcodes[1], WSLAY_TEXT_FRAME);
    assert_int_equal(client.opcodes[2], WSLAY_BINARY_FRAME);
    static const uint8_t replay[] = {3,   0,   0,   0,   0,   0,   0,   0,   4,
                                     '4', '5', '6', '7', '8', '9', 'a', 'b', 'c',
                                     'd', 'e', 'f', 'g', 'h', 'i', 'j'};
    assert_int_equal(client.msg_len[2], sizeof(replay));
    assert_memory_equal(client.msg[2], replay, sizeof(replay));
    assert_int_equal(client.opcodes[3], WSLAY_CONNECTION_CLOSE);
    assert_int_equal(wslay_event_get_status_code_received(cctx), 4001);
    moat_execd_ring_free(&ring);
    wslay_event_context_free(cctx);
    moat_execd_ws_free(ws);
}

/* Malformed input, one byte at a time: the close wslay queues carries the RFC's code. */
static void test_ws_malformed(void **state)
{
    (void)state;
    static const struct {
        uint8_t bytes[16];
        size_t len;
        uint16_t code;
    } cases[] = {
        {{0x82, 0x02, 0x00, 'x'}, 4, 1002},                   /* not masked */
        {{0xc2, 0x80, 1, 2, 3, 4}, 6, 1002},                  /* RSV1 */
        {{0x81, 0x82, 0, 0, 0, 0, 0xc3, 0x28}, 8, 1007},      /* not UTF-8 */
        {{0x82, 0xfe, 0x04, 0x01, 0, 0, 0, 0, 'x'}, 9, 1009}, /* 1025 > 1024 */
        {{0x80, 0x81, 0, 0, 0, 0, 'x'}, 7, 1002},             /* stray continuation */
        {{0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe7}, 8, 1002},      /* close code 999 */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        static peer server;
        memset(&server, 0, sizeof(server));
        moat_execd_ws *ws = server_new(&server, 1024);
        memcpy(server.in.data, cases[i].bytes, cases[i].len);
        server.in.len = cases[i].len;
        while (server.in.off < server.in.len && moat_execd_ws_want_read(ws))
            assert_true(moat_execd_ws_recv(ws));
        assert_false(moat_execd_ws_want_read(ws));
        while (moat_execd_ws_want_write(ws))
            assert_true(moat_execd_ws_send(ws));
        assert_int_equal(moat_execd_ws_close_sent(ws), cases[i].code);
        assert_int_equal(server.messages, 0);
        moat_execd_ws_free(ws);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ring),         cmocka_unit_test(test_frames),
        cmocka_unit_test(test_accept_key),   cmocka_unit_test(test_ws_byte_by_byte),
        cmocka_unit_test(test_ws_malformed),
    };
    return moat_run_group_tests("test_execd_pty_unit", tests, NULL, NULL);
}
