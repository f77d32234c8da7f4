/* A server-side WebSocket on libwslay's event API (the framing, masking, UTF-8 checks of text
 * and close codes are wslay's), with I/O through the caller's callbacks. */
#include "pty_proto.h"

#include <errno.h>
#include <nettle/base64.h>
#include <nettle/sha1.h>
#include <stdlib.h>
#include <string.h>
#include <wslay/wslay.h>

bool moat_execd_ws_accept_key(const char *key, char out[MOAT_EXECD_WS_ACCEPT_LEN])
{
    static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    size_t klen = strlen(key);
    uint8_t nonce[BASE64_DECODE_LENGTH(24)];
    size_t nonce_len = 0;
    struct base64_decode_ctx dec;
    base64_decode_init(&dec);
    if (klen != 24 || !base64_decode_update(&dec, &nonce_len, nonce, klen, key) ||
        !base64_decode_final(&dec) || nonce_len != 16)
        return false;
    struct sha1_ctx sha;
    uint8_t digest[SHA1_DIGEST_SIZE];
    sha1_init(&sha);
    sha1_update(&sha, klen, (const uint8_t *)key);
    sha1_update(&sha, sizeof(guid) - 1, (const uint8_t *)guid);
    sha1_digest(&sha, sizeof(digest), digest);
    base64_encode_raw(out, sizeof(digest), digest);
    out[BASE64_ENCODE_RAW_LENGTH(SHA1_DIGEST_SIZE)] = '\0';
    return true;
}

struct moat_execd_ws {
    wslay_event_context_ptr ctx;
    moat_execd_ws_io io;
    bool transport_failed;
};

/* wslay wants WOULDBLOCK for "try later" and a failure for everything else, the peer's end
 * included. */
static ssize_t io_result(moat_execd_ws *ws, ssize_t n)
{
    if (n > 0)
        return n;
    bool later = n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
    ws->transport_failed = ws->transport_failed || !later;
    wslay_event_set_error(ws->ctx, later ? WSLAY_ERR_WOULDBLOCK : WSLAY_ERR_CALLBACK_FAILURE);
    return -1;
}

static ssize_t on_recv(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags, void *ud)
{
    (void)flags;
    moat_execd_ws *ws = ud;
    (void)ctx;
    return io_result(ws, ws->io.recv(ws->io.ud, buf, len));
}

static ssize_t on_send(wslay_event_context_ptr ctx, const uint8_t *data, size_t len, int flags,
                       void *ud)
{
    (void)flags;
    moat_execd_ws *ws = ud;
    (void)ctx;
    return io_result(ws, ws->io.send(ws->io.ud, data, len));
}

static void on_msg(wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *arg,
                   void *ud)
{
    (void)ctx;
    moat_execd_ws *ws = ud;
    if (arg->opcode == WSLAY_TEXT_FRAME || arg->opcode == WSLAY_BINARY_FRAME)
        ws->io.on_message(ws->io.ud, arg->opcode, arg->msg, arg->msg_length);
}

moat_execd_ws *moat_execd_ws_new(const moat_execd_ws_io *io, size_t max_message)
{
    moat_execd_ws *ws = calloc(1, sizeof(*ws));
    if (ws == NULL)
        return NULL;
    ws->io = *io;
    struct wslay_event_callbacks cb = {
        .recv_callback = on_recv, .send_callback = on_send, .on_msg_recv_callback = on_msg};
    if (wslay_event_context_server_init(&ws->ctx, &cb, ws) != 0) {
        free(ws);
        return NULL;
    }
    /* Checked against each frame's declared length before wslay allocates for it. */
    wslay_event_config_set_max_recv_msg_length(ws->ctx, max_message);
    return ws;
}

void moat_execd_ws_free(moat_execd_ws *ws)
{
    if (ws == NULL)
        return;
    wslay_event_context_free(ws->ctx);
    free(ws);
}

bool moat_execd_ws_recv(moat_execd_ws *ws)
{
    /* wslay also fails on a frame its parser rejects (a fragmented control frame): it has
     * queued a close then, which still has to go out. */
    return wslay_event_recv(ws->ctx) == 0 || !ws->transport_failed;
}

bool moat_execd_ws_send(moat_execd_ws *ws)
{
    return wslay_event_send(ws->ctx) == 0;
}

bool moat_execd_ws_queue(moat_execd_ws *ws, int opcode, const void *data, size_t len)
{
    struct wslay_event_msg msg = {.opcode = (uint8_t)opcode, .msg = data, .msg_length = len};
    return wslay_event_queue_msg(ws->ctx, &msg) == 0;
}

static ssize_t replay_read(wslay_event_context_ptr ctx, uint8_t *buf, size_t len,
                           const union wslay_event_msg_source *source, int *eof, void *ud)
{
    (void)ctx;
    (void)ud;
    moat_execd_ws_replay *rp = source->data;
    size_t n = 0;
    if (rp->header_sent < sizeof(rp->header)) {
        n = sizeof(rp->header) - rp->header_sent;
        n = n < len ? n : len;
        memcpy(buf, rp->header + rp->header_sent, n);
        rp->header_sent += n;
    }
    uint64_t from;
    size_t got = moat_execd_ring_read(rp->ring, rp->next, buf + n, len - n, &from);
    if (rp->end - from < got)
        got = (size_t)(rp->end - from);
    rp->next = from + got;
    *eof = rp->header_sent == sizeof(rp->header) && rp->next >= rp->end;
    return (ssize_t)(n + got);
}

bool moat_execd_ws_queue_replay(moat_execd_ws *ws, moat_execd_ws_replay *rp,
                                const moat_execd_ring *ring, uint64_t from)
{
    uint64_t start = moat_execd_ring_start(ring);
    rp->ring = ring;
    rp->next = from < start ? start : from;
    rp->end = ring->end;
    rp->header_sent = 0;
    rp->header[0] = 0x03;
    for (int i = 0; i < 8; i++)
        rp->header[1 + i] = (uint8_t)(rp->next >> (56 - 8 * i));
    struct wslay_event_fragmented_msg msg = {
        .opcode = WSLAY_BINARY_FRAME, .source = {.data = rp}, .read_callback = replay_read};
    return wslay_event_queue_fragmented_msg(ws->ctx, &msg) == 0;
}

bool moat_execd_ws_close(moat_execd_ws *ws, uint16_t code, const char *reason)
{
    return wslay_event_queue_close(ws->ctx, code, (const uint8_t *)reason,
                                   reason != NULL ? strlen(reason) : 0) == 0;
}

bool moat_execd_ws_want_read(const moat_execd_ws *ws)
{
    return wslay_event_want_read(ws->ctx);
}

bool moat_execd_ws_want_write(const moat_execd_ws *ws)
{
    return wslay_event_want_write(ws->ctx);
}

size_t moat_execd_ws_queued(const moat_execd_ws *ws)
{
    return wslay_event_get_queued_msg_count(ws->ctx);
}

uint16_t moat_execd_ws_close_sent(const moat_execd_ws *ws)
{
    return wslay_event_get_close_sent(ws->ctx) ? wslay_event_get_status_code_sent(ws->ctx) : 0;
}

bool moat_execd_ws_close_received(const moat_execd_ws *ws)
{
    return wslay_event_get_close_received(ws->ctx);
}
