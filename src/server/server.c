/* moatd's core: listeners, connections, frames, streams, flow control,
 * keepalive, limits, signals and the graceful drain. Business logic lives in
 * handlers.c. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <curl/curl.h>

#include "server_internal.h"

static void conn_close(conn *c, moat_code code, const char *why);
static void conn_pump(conn *c);
static void stream_finish(stream *st);

static uint64_t now_ms(void)
{
    return moat_time_mono_ns() / 1000000u;
}

/* ------------------------------------------------------------ writing */

/* Frames produced during one loop iteration are written together: each
 * frame is its own block, and a batch hands up to BATCH_MAX of them to one
 * uv_write (one writev), submitted from the loop's check phase. */
#define BATCH_MAX 64

typedef struct wbatch {
    uv_write_t req;
    conn *c;
    size_t total;
    unsigned n;
    uv_buf_t bufs[BATCH_MAX];
} wbatch;

/* Unsent bytes of a connection count in the memory budget, against its share. */
static void conn_pending(conn *c, int64_t delta)
{
    c->pending_write = (size_t)((int64_t)c->pending_write + delta);
    if (c->s->bridge != NULL)
        moat_bridge_budget_charge(c->s->bridge, &c->account, delta);
}

/* A stream's queue counts in the budget too (not in the connection's share: a
 * stream may outlive its connection). */
static void stream_queued(stream *st, int64_t delta)
{
    st->queued = (size_t)((int64_t)st->queued + delta);
    if (st->s->bridge != NULL)
        moat_bridge_budget_charge(st->s->bridge, NULL, delta);
}

static void on_write(uv_write_t *req, int status)
{
    wbatch *b = (wbatch *)req;
    conn *c = b->c;
    conn_pending(c, -(int64_t)b->total);
    for (unsigned i = 0; i < b->n; i++)
        free(b->bufs[i].base);
    free(b);
    if (status < 0) {
        if (c->state != CONN_CLOSING)
            conn_close(c, MOAT_CODE_UNAVAILABLE, uv_strerror(status));
        return;
    }
    if (c->closing || c->pending_write > c->s->cfg.max_pending_bytes / 2)
        return;
    /* Reading was paused while the client left our answers unread. */
    if (!c->reading)
        conn_pump(c);
    /* Producers held back while the socket was full, or running low on
     * credit while the client's window still has room, may go on. */
    if (c->throttled || c->credit_wanted) {
        bool all = c->throttled;
        c->throttled = false;
        c->credit_wanted = false;
        stream *st = c->streams;
        while (st != NULL && !c->closing) {
            moat__stream_ref(st);
            if (st->on_credit != NULL && (all || st->wants_credit)) {
                st->wants_credit = false;
                st->on_credit(st, 0);
            }
            stream *next = st->c == c ? st->next : NULL;
            moat__stream_unref(st);
            st = next;
        }
    }
}

static void dirty_unlink(conn *c)
{
    if (!c->dirty)
        return;
    if (c->dirty_prev != NULL)
        c->dirty_prev->dirty_next = c->dirty_next;
    else
        c->s->dirty = c->dirty_next;
    if (c->dirty_next != NULL)
        c->dirty_next->dirty_prev = c->dirty_prev;
    c->dirty_next = c->dirty_prev = NULL;
    c->dirty = false;
}

/* Hands the connection's current batch to libuv. */
static void conn_flush(conn *c)
{
    dirty_unlink(c);
    wbatch *b = c->batch;
    if (b == NULL)
        return;
    c->batch = NULL;
    if (uv_write(&b->req, &c->h.stream, b->bufs, b->n, on_write) < 0) {
        conn_pending(c, -(int64_t)b->total);
        for (unsigned i = 0; i < b->n; i++)
            free(b->bufs[i].base);
        free(b);
        if (c->state != CONN_CLOSING)
            conn_close(c, MOAT_CODE_UNAVAILABLE, "write failed");
    }
}

/* Takes ownership of block (len bytes, from malloc). */
static moat_err conn_queue_block(conn *c, uint8_t *block, size_t len)
{
    if (c->state == CONN_CLOSING) {
        free(block);
        return MOAT_E_CLOSED;
    }
    if (c->batch == NULL) {
        c->batch = malloc(sizeof(wbatch));
        if (c->batch == NULL) {
            free(block);
            return MOAT_E_NOMEM;
        }
        c->batch->c = c;
        c->batch->n = 0;
        c->batch->total = 0;
        srv *s = c->s;
        c->dirty = true;
        c->dirty_prev = NULL;
        c->dirty_next = s->dirty;
        if (s->dirty != NULL)
            s->dirty->dirty_prev = c;
        s->dirty = c;
    }
    wbatch *b = c->batch;
    b->bufs[b->n++] = uv_buf_init((char *)block, (unsigned)len);
    b->total += len;
    conn_pending(c, (int64_t)len);
    if (b->n == BATCH_MAX)
        conn_flush(c);
    if (c->pending_write > c->s->cfg.max_pending_bytes) {
        c->throttled = true;
        if (c->reading) {
            uv_read_stop(&c->h.stream);
            c->reading = false;
        }
    }
    return MOAT_OK;
}

static moat_err conn_write_raw(conn *c, const uint8_t *data, size_t len)
{
    uint8_t *block = malloc(len);
    if (block == NULL)
        return MOAT_E_NOMEM;
    memcpy(block, data, len);
    return conn_queue_block(c, block, len);
}

/* Encodes a frame straight into its block: one allocation, one copy. */
static moat_err conn_send(conn *c, const moat_frame *f)
{
    size_t n = moat_wire_encoded_size(f);
    if (n == 0)
        return MOAT_E_INVAL;
    uint8_t *block = malloc(n);
    if (block == NULL)
        return MOAT_E_NOMEM;
    size_t w = 0;
    moat_err err = moat_wire_encode(f, block, n, &w);
    if (err != MOAT_OK) {
        free(block);
        return err;
    }
    return conn_queue_block(c, block, w);
}

static void send_go_away(conn *c, moat_code code, const char *msg)
{
    moat_frame f = {0};
    f.kind = MOAT_FRAME_GO_AWAY;
    f.u.go_away.last_stream_id = c->table != NULL ? moat_stream_table_last_id(c->table) : 0;
    f.u.go_away.code = code;
    f.u.go_away.message = moat_slice_str(msg);
    conn_send(c, &f);
}

static void send_end_raw(conn *c, uint32_t id, const moat_status *st)
{
    moat_frame f = {0};
    f.stream_id = id;
    f.kind = MOAT_FRAME_END;
    f.u.end.code = st->code;
    f.u.end.message = moat_slice_str(st->message);
    f.u.end.reason = moat_slice_str(st->reason);
    for (size_t i = 0; i < st->detail_count && i < MOAT_WIRE_MAX_KV; i++) {
        f.u.end.details[i].key = moat_slice_str(st->details[i].key);
        f.u.end.details[i].value = moat_slice_str(st->details[i].value);
    }
    f.u.end.detail_count = st->detail_count;
    conn_send(c, &f);
    moat__metrics_status(c->s->metrics, st->code);
}

/* ------------------------------------------------------------ streams */

void moat__stream_ref(stream *st)
{
    st->refs++;
}

static void free_timer(uv_handle_t *h)
{
    free(h);
}

/* Drops n references at once: a caller holding two releases them in one step, so the stream
 * is freed in one place (and gcc's -Wuse-after-free can see that). */
static void stream_release(stream *st, int n)
{
    st->refs -= n;
    if (st->refs > 0)
        return;
    moat_rpc_call_unref(st->call);
    out_frame *f = st->qhead;
    while (f != NULL) {
        out_frame *n = f->next;
        free(f);
        f = n;
    }
    stream_queued(st, -(int64_t)st->queued);
    moat__handlers_stream_gone(st);
    if (st->deadline != NULL)
        uv_close((uv_handle_t *)st->deadline, free_timer);
    free(st);
}

void moat__stream_unref(stream *st)
{
    stream_release(st, 1);
}

uint32_t moat__stream_credit(const stream *st)
{
    if (st->c == NULL || st->qhead != NULL)
        return 0;
    return st->window.available;
}

/* Writes queued frames while the window allows; closes the stream once its
 * End has gone out. */
static void stream_flush(stream *st)
{
    conn *c = st->c;
    while (st->qhead != NULL && c != NULL) {
        out_frame *f = st->qhead;
        if (f->payload > 0 && moat_window_consume(&st->window, f->payload) != MOAT_OK)
            return;
        st->qhead = f->next;
        if (st->qhead == NULL)
            st->qtail = NULL;
        stream_queued(st, -(int64_t)f->len);
        conn_write_raw(c, f->data, f->len);
        if (f->payload > 0)
            moat__metrics_bytes(st->s->metrics, f->payload);
        free(f);
    }
    if (st->qhead == NULL && st->end_queued)
        stream_finish(st);
}

static void stream_append(stream *st, out_frame *q)
{
    q->next = NULL;
    if (st->qtail != NULL)
        st->qtail->next = q;
    else
        st->qhead = q;
    st->qtail = q;
    stream_queued(st, (int64_t)q->len);
}

static moat_err stream_enqueue(stream *st, const moat_frame *f, uint32_t payload)
{
    size_t n = moat_wire_encoded_size(f);
    if (n == 0)
        return MOAT_E_INVAL;
    out_frame *q = malloc(sizeof(*q) + n);
    if (q == NULL)
        return MOAT_E_NOMEM;
    size_t w = 0;
    moat_err err = moat_wire_encode(f, q->data, n, &w);
    if (err != MOAT_OK) {
        free(q);
        return err;
    }
    q->payload = payload;
    q->len = w;
    stream_append(st, q);
    return MOAT_OK;
}

/* A response message is packed straight into its frame, after the envelope's
 * prefix: one allocation and one copy of the payload on the way out. */
static moat_err sink_message(moat_rpc_call *call, const ProtobufCMessage *msg, size_t len,
                             void *user)
{
    (void)call;
    stream *st = user;
    if (st->c == NULL)
        return MOAT_E_CLOSED;
    if (len > st->max_frame_size - 64)
        return MOAT_E_TOO_BIG;
    uint8_t head[MOAT_WIRE_MESSAGE_PREFIX_MAX];
    size_t hlen = 0;
    moat_err err = moat_wire_encode_message_prefix(st->id, len, head, sizeof(head), &hlen);
    if (err != MOAT_OK)
        return err;
    /* Past the window the frame waits in the stream's queue until the client
     * grants more. Handlers only produce within the credit they are given, so
     * this stays bounded. */
    bool now = st->qhead == NULL && st->window.available >= len;
    out_frame *q = now ? NULL : malloc(sizeof(*q) + hlen + len);
    uint8_t *frame = now ? malloc(hlen + len) : q != NULL ? q->data : NULL;
    if (frame == NULL)
        return MOAT_E_NOMEM;
    memcpy(frame, head, hlen);
    protobuf_c_message_pack(msg, frame + hlen);
    if (!now) {
        q->payload = (uint32_t)len;
        q->len = hlen + len;
        stream_append(st, q);
        return MOAT_OK;
    }
    moat_window_consume(&st->window, (uint32_t)len);
    moat__metrics_bytes(st->s->metrics, len);
    return conn_queue_block(st->c, frame, hlen + len);
}

static void sink_end(moat_rpc_call *call, const moat_status *status, void *user)
{
    stream *st = user;
    const moat_rpc_method *m = moat_rpc_call_method(call);
    uint64_t ms = (moat_time_mono_ns() - st->started_ns) / 1000000u;
    moat_log(status->code == MOAT_CODE_OK ? MOAT_LOG_DEBUG : MOAT_LOG_INFO, "call_end",
             "peer=%s stream=%u method=%s code=%s reason=%s duration_ms=%llu msg=\"%s\"",
             st->c != NULL ? st->c->peer : "-", st->id, m->name, moat_code_name(status->code),
             status->reason[0] ? status->reason : "-", (unsigned long long)ms, status->message);
    if (st->c == NULL)
        return;
    /* A cancelled or expired call's unread messages are of no use to anyone. */
    if (status->code == MOAT_CODE_CANCELLED || status->code == MOAT_CODE_DEADLINE_EXCEEDED) {
        out_frame *f = st->qhead;
        while (f != NULL) {
            out_frame *n = f->next;
            free(f);
            f = n;
        }
        st->qhead = st->qtail = NULL;
        stream_queued(st, -(int64_t)st->queued);
    }
    moat_frame f = {0};
    f.stream_id = st->id;
    f.kind = MOAT_FRAME_END;
    f.u.end.code = status->code;
    f.u.end.message = moat_slice_str(status->message);
    f.u.end.reason = moat_slice_str(status->reason);
    for (size_t i = 0; i < status->detail_count; i++) {
        f.u.end.details[i].key = moat_slice_str(status->details[i].key);
        f.u.end.details[i].value = moat_slice_str(status->details[i].value);
    }
    f.u.end.detail_count = status->detail_count;
    moat__metrics_status(st->s->metrics, status->code);
    if (st->qhead == NULL) {
        conn_send(st->c, &f);
        st->end_queued = true;
        stream_finish(st);
        return;
    }
    stream_enqueue(st, &f, 0);
    st->end_queued = true;
}

static const moat_rpc_sink sink = {sink_message, sink_end};

/* The stream leaves its connection, keeping the reference the connection held: returns
 * whether it was attached (the caller then owns that reference). */
static bool stream_unlink(stream *st)
{
    conn *c = st->c;
    if (c == NULL)
        return false;
    moat_stream_table_close(c->table, st->id);
    if (st->prev != NULL)
        st->prev->next = st->next;
    else
        c->streams = st->next;
    if (st->next != NULL)
        st->next->prev = st->prev;
    st->next = st->prev = NULL;
    st->c = NULL;
    moat__metrics_stream(st->s->metrics, -1);
    if (st->deadline != NULL)
        uv_timer_stop(st->deadline);
    return true;
}

/* The stream leaves its connection (End written or connection gone). */
static void stream_detach(stream *st)
{
    if (stream_unlink(st))
        moat__stream_unref(st);
}

static void stream_finish(stream *st)
{
    conn *c = st->c;
    stream_detach(st);
    if (c != NULL && c->s->draining && c->streams == NULL && !c->closing)
        conn_close(c, MOAT_CODE_UNAVAILABLE, "drained");
}

static void on_deadline(uv_timer_t *t)
{
    stream *st = t->data;
    moat_rpc_call_check_deadline(st->call, now_ms() + 1);
}

/* ------------------------------------------------------------ connections */

static void on_handle_closed(uv_handle_t *h)
{
    conn *c = h->data;
    if (--c->open_handles > 0)
        return;
    moat_wire_decoder_free(&c->dec);
    moat_stream_table_free(c->table);
    free(c);
}

static void pending_push(conn *c)
{
    srv *s = c->s;
    c->pending_next = NULL;
    c->pending_prev = s->pending_tail;
    if (s->pending_tail != NULL)
        s->pending_tail->pending_next = c;
    else
        s->pending_head = c;
    s->pending_tail = c;
    s->npending++;
    moat__metrics_pending_hello(s->metrics, 1);
}

static void pending_unlink(conn *c)
{
    srv *s = c->s;
    if (c->pending_prev != NULL)
        c->pending_prev->pending_next = c->pending_next;
    else
        s->pending_head = c->pending_next;
    if (c->pending_next != NULL)
        c->pending_next->pending_prev = c->pending_prev;
    else
        s->pending_tail = c->pending_prev;
    c->pending_next = c->pending_prev = NULL;
    s->npending--;
    moat__metrics_pending_hello(s->metrics, -1);
}

/* How far past the oldest hello the eviction looks for a silent connection. */
#define EVICT_SCAN 16

static bool bytes_waiting(conn *c)
{
    uv_os_fd_t fd;
    int n = 0;
    return uv_fileno(&c->h.handle, &fd) == 0 && ioctl(fd, FIONREAD, &n) == 0 && n > 0;
}

/* The oldest connection in its hello with nothing waiting to be read. One whose bytes have
 * arrived (a client that sent its hello right after connecting) is about to be handled: the
 * loop may accept a long backlog before it reads them, and that must not push it out. */
static conn *pending_victim(srv *s)
{
    conn *c = s->pending_head;
    for (int i = 0; c != NULL && i < EVICT_SCAN; i++, c = c->pending_next) {
        if (!bytes_waiting(c))
            return c;
    }
    return s->pending_head;
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    (void)status;
    conn *c = req->data;
    free(req);
    uv_close(&c->h.handle, on_handle_closed);
}

/* Every call still open is cancelled (a client that went away, or whose frames can no longer
 * be read, cannot pace, cancel or read them); their Ends go out if the socket takes them. */
static void conn_cancel_calls(conn *c, const char *why)
{
    moat_status closed;
    moat_status_set(&closed, MOAT_CODE_CANCELLED, "connection_closed", "connection closed: %s",
                    why);
    while (c->streams != NULL) {
        stream *st = c->streams;
        moat__stream_ref(st);
        moat_rpc_call_cancel_with(st->call, &closed);
        stream_release(st, stream_unlink(st) ? 2 : 1);
    }
}

static void conn_close(conn *c, moat_code code, const char *why)
{
    if (c->closing)
        return;
    c->closing = true;
    srv *s = c->s;
    moat_log_level level =
        code == MOAT_CODE_OK || code == MOAT_CODE_UNAVAILABLE ? MOAT_LOG_INFO : MOAT_LOG_WARN;
    if (c->state == CONN_PREHELLO) {
        /* Anyone who can connect can make these as fast as they like. */
        moat_log_limited(&s->logs.prehello, level, "conn_close",
                         "peer=%s code=%s reason=\"%s\" authenticated=0", c->peer,
                         moat_code_name(code), why);
        pending_unlink(c);
    } else {
        moat_log(level, "conn_close", "peer=%s code=%s reason=\"%s\"", c->peer,
                 moat_code_name(code), why);
        if (c->state == CONN_READY)
            s->nready--;
    }
    conn_cancel_calls(c, why);
    conn_flush(c);
    c->state = CONN_CLOSING;
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    s->nconns--;
    moat__metrics_conn(s->metrics, -1);
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)&c->timer, on_handle_closed);
    if (c->reading)
        uv_read_stop(&c->h.stream);
    c->reading = false;
    /* Let queued frames (the GoAway) reach the client before closing. */
    uv_shutdown_t *req = malloc(sizeof(*req));
    if (req != NULL) {
        req->data = c;
        if (uv_shutdown(req, &c->h.stream, on_shutdown) == 0)
            return;
        free(req);
    }
    uv_close(&c->h.handle, on_handle_closed);
}

/* The connection ends at once: the open calls' Ends go out before the GoAway, so a client
 * reading it has had the End of every call up to its last_stream_id. */
static void conn_fail(conn *c, moat_code code, const char *why)
{
    conn_cancel_calls(c, why);
    send_go_away(c, code, why);
    conn_close(c, code, why);
}

static void on_conn_timer(uv_timer_t *t)
{
    conn *c = t->data;
    if (c->state == CONN_PREHELLO) {
        moat__metrics_hello_refused(c->s->metrics, "timeout");
        conn_fail(c, MOAT_CODE_DEADLINE_EXCEEDED, "hello not completed in time");
        return;
    }
    uint32_t idle = c->s->cfg.idle_timeout_seconds;
    if (idle == 0)
        return;
    uint64_t quiet = now_ms() - c->last_active_ms;
    if (c->streams == NULL && quiet >= (uint64_t)idle * 1000u) {
        conn_fail(c, MOAT_CODE_UNAVAILABLE, "idle timeout");
        return;
    }
    uint64_t next = (uint64_t)idle * 1000u;
    if (c->streams == NULL && quiet < next)
        next -= quiet;
    uv_timer_start(&c->timer, on_conn_timer, next, 0);
}

/* A hello without the right token: the peer's address pays for it, so one address cannot guess
 * tokens, or make moatd refuse hellos, at the rate it can send them. Other broken hellos cost
 * nothing here (a client with a bug is not an attacker): the pending budget bounds them. */
static void auth_fail(conn *c, const char *why)
{
    if (c->has_addr)
        moat_throttle_charge(c->s->failed_hellos, &c->addr, now_ms());
    moat__metrics_status(c->s->metrics, MOAT_CODE_UNAUTHENTICATED);
    moat__metrics_hello_refused(c->s->metrics, "failed");
    conn_fail(c, MOAT_CODE_UNAUTHENTICATED, why);
}

static void handle_hello(conn *c, const moat_frame *f)
{
    srv *s = c->s;
    if (f->kind != MOAT_FRAME_HELLO || f->stream_id != 0) {
        conn_fail(c, MOAT_CODE_INVALID_ARGUMENT, "the first frame must be a Hello on stream 0");
        return;
    }
    if (f->u.hello.protocol_version != MOAT_WIRE_PROTOCOL_VERSION) {
        conn_fail(c, MOAT_CODE_FAILED_PRECONDITION, "unsupported protocol version (want 1)");
        return;
    }
    if (s->cfg.token[0] != '\0') {
        if (f->u.hello.token.len == 0) {
            auth_fail(c, "missing token");
            return;
        }
        if (!moat_server_token_equal(f->u.hello.token.data, f->u.hello.token.len, s->cfg.token)) {
            auth_fail(c, "invalid token");
            return;
        }
    }
    if (s->nready >= s->cfg.max_connections) {
        conn_fail(c, MOAT_CODE_RESOURCE_EXHAUSTED, "too many connections");
        return;
    }
    c->table = moat_stream_table_new(s->cfg.max_streams_per_connection);
    if (c->table == NULL) {
        conn_fail(c, MOAT_CODE_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    c->max_streams = s->cfg.max_streams_per_connection;
    c->max_frame_size = s->cfg.max_frame_size;
    c->initial_window = s->cfg.initial_window;
    moat_frame ack = {0};
    ack.kind = MOAT_FRAME_HELLO_ACK;
    ack.u.hello_ack.protocol_version = MOAT_WIRE_PROTOCOL_VERSION;
    ack.u.hello_ack.server_version = moat_slice_str("moatd/" MOAT_VERSION);
    ack.u.hello_ack.max_frame_size = c->max_frame_size;
    ack.u.hello_ack.initial_window = c->initial_window;
    ack.u.hello_ack.max_concurrent_streams = s->cfg.max_streams_per_connection;
    ack.u.hello_ack.idle_timeout_seconds = s->cfg.idle_timeout_seconds;
    conn_send(c, &ack);
    moat_wire_decoder_set_max(&c->dec, c->max_frame_size);
    pending_unlink(c);
    c->state = CONN_READY;
    s->nready++;
    int nlen = (int)(f->u.hello.client_name.len > 64 ? 64 : f->u.hello.client_name.len);
    moat_log(MOAT_LOG_DEBUG, "hello", "peer=%s client=\"%.*s\"", c->peer, nlen,
             (const char *)f->u.hello.client_name.data);
    if (s->draining) {
        send_go_away(c, MOAT_CODE_UNAVAILABLE, "server is shutting down");
        c->draining_notified = true;
    }
    uv_timer_stop(&c->timer);
    if (s->cfg.idle_timeout_seconds > 0)
        uv_timer_start(&c->timer, on_conn_timer, (uint64_t)s->cfg.idle_timeout_seconds * 1000u, 0);
}

static void refuse_call(conn *c, uint32_t id, moat_code code, const char *reason, const char *msg)
{
    moat_status st;
    moat_status_set(&st, code, reason, "%s", msg);
    send_end_raw(c, id, &st);
}

static void handle_call(conn *c, const moat_frame *f)
{
    srv *s = c->s;
    uint32_t id = f->stream_id;
    stream *st = calloc(1, sizeof(*st));
    if (st == NULL) {
        conn_fail(c, MOAT_CODE_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    moat_err err = moat_stream_table_open(c->table, id, st);
    if (err != MOAT_OK) {
        free(st);
        if (err == MOAT_E_TOO_BIG)
            refuse_call(c, id, MOAT_CODE_RESOURCE_EXHAUSTED, "too_many_streams",
                        "too many concurrent calls on this connection");
        else
            conn_fail(c, MOAT_CODE_INVALID_ARGUMENT, "invalid or reused stream id");
        return;
    }
    const moat_rpc_method *m =
        moat_rpc_method_lookup((const char *)f->u.call.method.data, f->u.call.method.len);
    if (s->draining || m == NULL) {
        /* The id stays used; the call never starts. */
        moat_stream_table_close(c->table, id);
        free(st);
        if (s->draining) {
            refuse_call(c, id, MOAT_CODE_UNAVAILABLE, "shutting_down", "server is shutting down");
            return;
        }
        int n = (int)(f->u.call.method.len > 128 ? 128 : f->u.call.method.len);
        char msg[200];
        snprintf(msg, sizeof(msg), "unknown method \"%.*s\"", n,
                 (const char *)f->u.call.method.data);
        refuse_call(c, id, MOAT_CODE_UNIMPLEMENTED, "unknown_method", msg);
        return;
    }
    st->c = c;
    st->s = s;
    st->id = id;
    st->refs = 1;
    st->started_ns = moat_time_mono_ns();
    st->max_frame_size = c->max_frame_size;
    st->initial_window = c->initial_window;
    moat_window_init(&st->window, st->initial_window);
    st->call = moat_rpc_call_new(m, id, f->u.call.deadline_ms, now_ms(), &sink, st);
    if (st->call == NULL) {
        moat_stream_table_close(c->table, id);
        free(st);
        refuse_call(c, id, MOAT_CODE_RESOURCE_EXHAUSTED, "out_of_memory", "out of memory");
        return;
    }
    st->next = c->streams;
    if (c->streams != NULL)
        c->streams->prev = st;
    c->streams = st;
    moat__metrics_stream(s->metrics, 1);
    if (f->u.call.deadline_ms > 0) {
        st->deadline = malloc(sizeof(uv_timer_t));
        if (st->deadline != NULL) {
            uv_timer_init(s->loop, st->deadline);
            st->deadline->data = st;
            uv_timer_start(st->deadline, on_deadline, f->u.call.deadline_ms, 0);
        }
    }
    moat_log(MOAT_LOG_DEBUG, "call_start", "peer=%s stream=%u method=%s deadline_ms=%llu", c->peer,
             id, m->name, (unsigned long long)f->u.call.deadline_ms);
}

static void handle_frame(conn *c, const moat_frame *f)
{
    if (c->state == CONN_PREHELLO) {
        handle_hello(c, f);
        return;
    }
    stream *st;
    switch (f->kind) {
    case MOAT_FRAME_CALL:
        handle_call(c, f);
        return;
    case MOAT_FRAME_MESSAGE: {
        st = moat_stream_table_get(c->table, f->stream_id);
        if (st == NULL)
            return; /* a late message for a call that already ended */
        const ProtobufCMessage *req = NULL;
        moat_err err = moat_rpc_call_request(st->call, f->u.message.payload.data,
                                             f->u.message.payload.len, &req);
        if (err == MOAT_E_STATE) {
            moat_status extra;
            moat_status_set(&extra, MOAT_CODE_INVALID_ARGUMENT, "extra_request_message",
                            "a call takes exactly one request message");
            moat_rpc_call_cancel_with(st->call, &extra);
            return;
        }
        if (err != MOAT_OK)
            return; /* the call has ended INVALID_ARGUMENT */
        moat__dispatch(st, req);
        return;
    }
    case MOAT_FRAME_CANCEL:
        st = moat_stream_table_get(c->table, f->stream_id);
        if (st != NULL)
            moat_rpc_call_cancel(st->call, MOAT_CODE_CANCELLED, "cancelled by the client");
        return;
    case MOAT_FRAME_WINDOW_UPDATE:
        if (f->stream_id == 0)
            return; /* no connection-level window in protocol version 1 */
        st = moat_stream_table_get(c->table, f->stream_id);
        if (st == NULL)
            return;
        if (moat_window_grant(&st->window, f->u.window_update.increment) != MOAT_OK) {
            conn_fail(c, MOAT_CODE_INVALID_ARGUMENT, "window update of 0 or past 2^31-1");
            return;
        }
        moat__stream_ref(st);
        stream_flush(st);
        if (st->c != NULL && st->on_credit != NULL)
            st->on_credit(st, f->u.window_update.increment);
        moat__stream_unref(st);
        return;
    case MOAT_FRAME_PING: {
        moat_frame pong = {0};
        pong.kind = MOAT_FRAME_PONG;
        pong.u.pong.payload = f->u.ping.payload;
        conn_send(c, &pong);
        return;
    }
    case MOAT_FRAME_PONG:
        return;
    default:
        conn_fail(c, MOAT_CODE_INVALID_ARGUMENT, "frame kind not allowed from a client");
        return;
    }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    srv *s = ((conn *)h->data)->s;
    if (s->read_buf_busy) {
        *buf = uv_buf_init(NULL, 0);
        return;
    }
    s->read_buf_busy = true;
    *buf = uv_buf_init(s->read_buf, READ_BUF_SIZE);
}

static void on_read(uv_stream_t *h, ssize_t nread, const uv_buf_t *buf)
{
    conn *c = h->data;
    if (buf->base == c->s->read_buf)
        c->s->read_buf_busy = false;
    if (nread == 0 || nread == UV_ENOBUFS)
        return;
    if (nread < 0) {
        conn_close(c, nread == UV_EOF ? MOAT_CODE_OK : MOAT_CODE_UNAVAILABLE,
                   nread == UV_EOF ? "client closed" : uv_strerror((int)nread));
        return;
    }
    c->last_active_ms = now_ms();
    const uint8_t *p = (const uint8_t *)buf->base;
    size_t left = (size_t)nread;
    while (left > 0 && c->state != CONN_CLOSING) {
        size_t used = 0;
        moat_slice body;
        moat_err err = moat_wire_decoder_feed(&c->dec, p, left, &used, &body);
        p += used;
        left -= used;
        if (err == MOAT_E_AGAIN)
            break;
        if (err != MOAT_OK) {
            char why[160];
            snprintf(why, sizeof(why), "bad frame: %s", moat_wire_decoder_reason(&c->dec));
            conn_fail(c,
                      err == MOAT_E_TOO_BIG ? MOAT_CODE_RESOURCE_EXHAUSTED
                                            : MOAT_CODE_INVALID_ARGUMENT,
                      why);
            return;
        }
        moat_frame f;
        err = moat_wire_frame_decode(body, &f);
        if (err != MOAT_OK) {
            conn_fail(c, MOAT_CODE_INVALID_ARGUMENT,
                      err == MOAT_E_UNKNOWN_KIND ? "unknown frame kind" : "malformed frame");
            return;
        }
        handle_frame(c, &f);
    }
}

/* Starts or resumes reading. */
static void conn_pump(conn *c)
{
    if (c->reading || c->state == CONN_CLOSING)
        return;
    if (uv_read_start(&c->h.stream, on_alloc, on_read) == 0)
        c->reading = true;
}

static void peer_name(conn *c, bool is_tcp)
{
    snprintf(c->peer, sizeof(c->peer), "unix");
    if (!is_tcp)
        return;
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    if (uv_tcp_getpeername(&c->h.tcp, (struct sockaddr *)&ss, &len) != 0)
        return;
    char ip[48] = "?";
    int port = 0;
    if (ss.ss_family == AF_INET) {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        uv_ip4_name(a, ip, sizeof(ip));
        port = ntohs(a->sin_port);
        memset(c->addr.b, 0, 10);
        c->addr.b[10] = c->addr.b[11] = 0xff;
        memcpy(c->addr.b + 12, &a->sin_addr, 4);
        c->has_addr = true;
    } else if (ss.ss_family == AF_INET6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        uv_ip6_name(a, ip, sizeof(ip));
        port = ntohs(a->sin6_port);
        memcpy(c->addr.b, &a->sin6_addr, 16);
        c->has_addr = true;
    }
    snprintf(c->peer, sizeof(c->peer), "%s:%d", ip, port);
}

/* Connections accepted in one loop iteration at most: libuv accepts the whole backlog in one go
 * otherwise, and a flood of connections would make every authenticated client's frames wait
 * behind it. Leaving one unaccepted pauses the listener until the check phase takes it. */
#define ACCEPT_BATCH 8

static void accept_one(uv_stream_t *server);

static void on_connection(uv_stream_t *server, int status)
{
    srv *s = server->data;
    if (status < 0) {
        moat_log(MOAT_LOG_WARN, "accept_failed", "error=\"%s\"", uv_strerror(status));
        return;
    }
    if (++s->accepted_this_turn > ACCEPT_BATCH) {
        if (server == (uv_stream_t *)&s->tcp)
            s->tcp_deferred = true;
        else
            s->pipe_deferred = true;
        return;
    }
    accept_one(server);
}

static void accept_one(uv_stream_t *server)
{
    srv *s = server->data;
    conn *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return;
    c->s = s;
    /* One connection may pin at most a quarter of the budget, so a client
     * that stops reading cannot lock everyone else out. */
    c->account.limit = (size_t)(s->cfg.memory_budget_bytes / 4);
    bool is_tcp = server->type == UV_TCP;
    if (is_tcp)
        uv_tcp_init(s->loop, &c->h.tcp);
    else
        uv_pipe_init(s->loop, &c->h.pipe, 0);
    c->h.handle.data = c;
    c->open_handles = 1;
    if (uv_accept(server, &c->h.stream) != 0) {
        uv_close(&c->h.handle, on_handle_closed);
        return;
    }
    uv_timer_init(s->loop, &c->timer);
    c->timer.data = c;
    c->open_handles = 2;
    if (is_tcp)
        uv_tcp_nodelay(&c->h.tcp, 1);
    peer_name(c, is_tcp);
    moat_wire_decoder_init(&c->dec, MOAT_WIRE_PREHELLO_MAX_FRAME);
    c->state = CONN_PREHELLO;
    c->last_active_ms = now_ms();
    c->next = s->conns;
    if (s->conns != NULL)
        s->conns->prev = c;
    s->conns = c;
    s->nconns++;
    moat__metrics_conn(s->metrics, 1);
    uint64_t retry_ms =
        c->has_addr ? moat_throttle_retry_ms(s->failed_hellos, &c->addr, now_ms()) : 0;
    /* Over budget, the oldest SILENT hello goes: a client that sends its hello right after
     * connecting (every real one) leaves the queue as soon as it is read, so silent connections
     * only push out each other; refusing the newest instead would let a few silent connections
     * hold the door shut until their hello_timeout. A throttled newcomer makes no room: it is
     * closed at once. */
    if (retry_ms == 0 && s->npending >= s->cfg.max_pending_hellos) {
        moat__metrics_hello_refused(s->metrics, "evicted");
        conn_fail(pending_victim(s), MOAT_CODE_RESOURCE_EXHAUSTED,
                  "too_many_pending_hellos: closed to make room for a newer connection");
    }
    pending_push(c);
    if (retry_ms > 0) {
        char why[160];
        snprintf(why, sizeof(why),
                 "too_many_failed_hellos: too many failed hellos from this address; retry in "
                 "%llu ms",
                 (unsigned long long)retry_ms);
        moat__metrics_hello_refused(s->metrics, "throttled");
        conn_fail(c, MOAT_CODE_RESOURCE_EXHAUSTED, why);
        return;
    }
    if (s->draining) {
        conn_fail(c, MOAT_CODE_UNAVAILABLE, "server is shutting down");
        return;
    }
    moat_log(MOAT_LOG_DEBUG, "conn_open", "peer=%s", c->peer);
    uv_timer_start(&c->timer, on_conn_timer, (uint64_t)s->cfg.hello_timeout_seconds * 1000u, 0);
    conn_pump(c);
}

/* ------------------------------------------------------------ drain, signals */

void moat__srv_job(srv *s, int delta)
{
    s->inflight = (uint32_t)((int)s->inflight + delta);
}

static void close_listeners(srv *s)
{
    if (s->tcp_on && !uv_is_closing((uv_handle_t *)&s->tcp))
        uv_close((uv_handle_t *)&s->tcp, NULL);
    if (s->pipe_on && !uv_is_closing((uv_handle_t *)&s->pipe)) {
        uv_close((uv_handle_t *)&s->pipe, NULL);
        unlink(s->cfg.unix_socket);
    }
}

static void on_handles_closed(uv_handle_t *h)
{
    (void)h;
}

static void finish_shutdown(srv *s)
{
    if (s->finished)
        return;
    s->finished = true;
    uv_timer_stop(&s->grace);
    uv_close((uv_handle_t *)&s->grace, NULL);
    if (s->signals_on) {
        uv_close((uv_handle_t *)&s->sig_term, NULL);
        uv_close((uv_handle_t *)&s->sig_int, NULL);
        uv_close((uv_handle_t *)&s->sig_hup, NULL);
    }
    uv_close((uv_handle_t *)&s->close_async, NULL);
    uv_close((uv_handle_t *)&s->check, on_handles_closed);
    moat__handlers_close(s);
    moat__metrics_stop(s->metrics);
    if (s->close_cb != NULL)
        s->close_cb(s, s->close_ud);
}

static void on_grace(uv_timer_t *t)
{
    srv *s = t->data;
    moat_log(MOAT_LOG_INFO, "drain_grace_over", "connections=%u", s->nconns);
    while (s->conns != NULL)
        conn_fail(s->conns, MOAT_CODE_UNAVAILABLE, "server shut down");
}

static void start_drain(srv *s, const char *why)
{
    if (s->draining)
        return;
    s->draining = true;
    moat_log(MOAT_LOG_INFO, "drain_start", "signal=%s grace_seconds=%u connections=%u", why,
             s->cfg.drain_grace_seconds, s->nconns);
    close_listeners(s);
    conn *c = s->conns;
    while (c != NULL) {
        conn *next = c->next;
        if (c->state == CONN_READY && c->streams == NULL)
            conn_fail(c, MOAT_CODE_UNAVAILABLE, "server is shutting down");
        else if (c->state == CONN_READY) {
            send_go_away(c, MOAT_CODE_UNAVAILABLE, "server is shutting down");
            c->draining_notified = true;
        } else
            conn_close(c, MOAT_CODE_UNAVAILABLE, "server is shutting down");
        c = next;
    }
    uv_timer_start(&s->grace, on_grace, (uint64_t)s->cfg.drain_grace_seconds * 1000u, 0);
}

static void on_drain_check(srv *s)
{
    /* Thread-pool jobs still use the runtime: wait for them before closing it. */
    if (s->draining && s->conns == NULL && s->inflight == 0)
        finish_shutdown(s);
}

/* Only what can change under a running server: listeners, Docker and paths stay as they were
 * at start-up. Takes next's token. */
static void apply_reload(srv *s, moat_server_config *next)
{
    s->cfg.log_level = next->log_level;
    moat_log_set_level(next->log_level);
    free(s->cfg.token);
    s->cfg.token = next->token;
    next->token = NULL;
    s->cfg.max_connections = next->max_connections;
    s->cfg.max_pending_hellos = next->max_pending_hellos;
    s->cfg.max_streams_per_connection = next->max_streams_per_connection;
    s->cfg.max_frame_size = next->max_frame_size;
    s->cfg.initial_window = next->initial_window;
    s->cfg.idle_timeout_seconds = next->idle_timeout_seconds;
    s->cfg.hello_timeout_seconds = next->hello_timeout_seconds;
    s->cfg.drain_grace_seconds = next->drain_grace_seconds;
    s->cfg.max_pending_bytes = next->max_pending_bytes;
    s->cfg.max_ttl_seconds = next->max_ttl_seconds;
    s->cfg.max_sessions = next->max_sessions;
    s->cfg.max_sessions_per_chat = next->max_sessions_per_chat;
    s->cfg.max_calls_per_session = next->max_calls_per_session;
    s->cfg.memory_budget_bytes = next->memory_budget_bytes;
    s->budget.cap = (size_t)next->memory_budget_bytes;
    moat_log(MOAT_LOG_INFO, "reloaded",
             "log_level=%d max_connections=%u max_streams_per_connection=%u "
             "max_frame_size=%u token_set=%d",
             (int)s->cfg.log_level, s->cfg.max_connections, s->cfg.max_streams_per_connection,
             s->cfg.max_frame_size, s->cfg.token[0] != '\0');
}

static void on_signal(uv_signal_t *h, int signum)
{
    srv *s = h->data;
    if (signum == SIGHUP) {
        moat_server_config next;
        if (s->reload == NULL || !s->reload(&next, s->reload_ud)) {
            moat_log(MOAT_LOG_ERROR, "reload_failed", "keeping=current");
            return;
        }
        apply_reload(s, &next);
        moat_server_config_free(&next);
        return;
    }
    start_drain(s, signum == SIGTERM ? "SIGTERM" : "SIGINT");
}

static void on_close_async(uv_async_t *a)
{
    start_drain(a->data, "close");
}

static void on_idle_check(uv_check_t *h)
{
    srv *s = h->data;
    s->accepted_this_turn = 0;
    if (s->tcp_deferred && !uv_is_closing((uv_handle_t *)&s->tcp)) {
        s->accepted_this_turn++;
        accept_one((uv_stream_t *)&s->tcp);
    }
    if (s->pipe_deferred && !uv_is_closing((uv_handle_t *)&s->pipe)) {
        s->accepted_this_turn++;
        accept_one((uv_stream_t *)&s->pipe);
    }
    s->tcp_deferred = s->pipe_deferred = false;
    while (s->dirty != NULL)
        conn_flush(s->dirty);
    moat__metrics_budget(s->metrics, &s->budget);
    on_drain_check(s);
}

/* ------------------------------------------------------------ the handle */

static int listen_all(srv *s)
{
    int rc;
    if (s->cfg.listen[0] != '\0') {
        char host[256];
        uint16_t port;
        moat_server_split_hostport(s->cfg.listen, host, sizeof(host), &port);
        struct sockaddr_storage addr;
        if (uv_ip4_addr(host, port, (struct sockaddr_in *)&addr) != 0 &&
            uv_ip6_addr(host, port, (struct sockaddr_in6 *)&addr) != 0) {
            if (strcmp(host, "localhost") != 0) {
                moat_log(MOAT_LOG_ERROR, "listen_failed", "addr=%s error=\"not an IP address\"",
                         s->cfg.listen);
                return -1;
            }
            uv_ip4_addr("127.0.0.1", port, (struct sockaddr_in *)&addr);
        }
        uv_tcp_init(s->loop, &s->tcp);
        s->tcp.data = s;
        s->tcp_on = true;
        if ((rc = uv_tcp_bind(&s->tcp, (struct sockaddr *)&addr, 0)) != 0 ||
            (rc = uv_listen((uv_stream_t *)&s->tcp, 1024, on_connection)) != 0) {
            moat_log(MOAT_LOG_ERROR, "listen_failed", "addr=%s error=\"%s\"", s->cfg.listen,
                     uv_strerror(rc));
            return -1;
        }
        moat_log(MOAT_LOG_INFO, "listening", "addr=%s token_required=%d", s->cfg.listen,
                 s->cfg.token[0] != '\0');
    }
    if (s->cfg.unix_socket[0] != '\0') {
        uv_pipe_init(s->loop, &s->pipe, 0);
        s->pipe.data = s;
        s->pipe_on = true;
        unlink(s->cfg.unix_socket);
        if ((rc = uv_pipe_bind(&s->pipe, s->cfg.unix_socket)) != 0 ||
            (rc = uv_listen((uv_stream_t *)&s->pipe, 1024, on_connection)) != 0) {
            moat_log(MOAT_LOG_ERROR, "listen_failed", "path=%s error=\"%s\"", s->cfg.unix_socket,
                     uv_strerror(rc));
            return -1;
        }
        chmod(s->cfg.unix_socket, 0660);
        moat_log(MOAT_LOG_INFO, "listening", "path=%s token_required=%d", s->cfg.unix_socket,
                 s->cfg.token[0] != '\0');
    }
    return 0;
}

moat_err moat_server_init(moat_server **out, moat_server_config *cfg,
                          const moat_server_runtime_ops *runtime)
{
    *out = NULL;
    srv *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        moat_server_config_free(cfg);
        return MOAT_E_NOMEM;
    }
    s->cfg = *cfg;
    memset(cfg, 0, sizeof(*cfg));
    s->rt_ops = runtime != NULL ? runtime : &moat_server_docker_runtime;
    uint64_t seed = 0;
    if (getrandom(&seed, sizeof(seed), 0) != (ssize_t)sizeof(seed))
        seed = moat_time_mono_ns() ^ (uint64_t)getpid();
    s->failed_hellos = moat_throttle_new(seed);
    s->metrics = moat__metrics_new();
    s->read_buf = malloc(READ_BUF_SIZE);
    if (s->failed_hellos == NULL || s->metrics == NULL || s->read_buf == NULL ||
        uv_loop_init(&s->loop_storage) != 0) {
        moat_log(MOAT_LOG_ERROR, "start_failed", "error=\"out of memory\"");
        moat_throttle_free(s->failed_hellos);
        moat__metrics_free(s->metrics);
        free(s->read_buf);
        moat_server_config_free(&s->cfg);
        free(s);
        return MOAT_E_NOMEM;
    }
    s->loop = &s->loop_storage;
    moat_log_limit *limits[] = {&s->logs.prehello, &s->logs.calls_refused, &s->logs.create_failed,
                                &s->logs.ttl_refused, &s->logs.budget_refused};
    for (size_t i = 0; i < sizeof(limits) / sizeof(limits[0]); i++)
        pthread_mutex_init(&limits[i]->mu, NULL);
    uv_async_init(s->loop, &s->close_async, on_close_async);
    s->close_async.data = s;
    uv_timer_init(s->loop, &s->grace);
    s->grace.data = s;
    uv_unref((uv_handle_t *)&s->grace);
    uv_check_init(s->loop, &s->check);
    s->check.data = s;
    uv_check_start(&s->check, on_idle_check);
    uv_unref((uv_handle_t *)&s->check);
    if (moat__handlers_init(s) != MOAT_OK) {
        s->finished = true;
        uv_close((uv_handle_t *)&s->close_async, NULL);
        uv_close((uv_handle_t *)&s->grace, NULL);
        uv_close((uv_handle_t *)&s->check, NULL);
        uv_run(s->loop, UV_RUN_DEFAULT);
        moat_server_free(s);
        return MOAT_E_INVAL;
    }
    *out = s;
    return MOAT_OK;
}

moat_err moat_server_handle_signals(moat_server *s, moat_server_reload_fn reload, void *ud)
{
    s->reload = reload;
    s->reload_ud = ud;
    uv_signal_init(s->loop, &s->sig_term);
    uv_signal_init(s->loop, &s->sig_int);
    uv_signal_init(s->loop, &s->sig_hup);
    s->sig_term.data = s->sig_int.data = s->sig_hup.data = s;
    s->signals_on = true;
    if (uv_signal_start(&s->sig_term, on_signal, SIGTERM) != 0 ||
        uv_signal_start(&s->sig_int, on_signal, SIGINT) != 0 ||
        uv_signal_start(&s->sig_hup, on_signal, SIGHUP) != 0)
        return MOAT_E_IO;
    return MOAT_OK;
}

moat_err moat_server_listen(moat_server *s)
{
    if (listen_all(s) != 0) {
        s->exit_status = 1;
        return MOAT_E_IO;
    }
    if (s->cfg.metrics_listen[0] != '\0' &&
        moat__metrics_start(s->metrics, s->cfg.metrics_listen) != MOAT_OK)
        moat_log(MOAT_LOG_WARN, "metrics_unavailable", "addr=%s", s->cfg.metrics_listen);
    moat_log(MOAT_LOG_INFO, "started", "version=%s pid=%d state_dir=%s image=%s", MOAT_VERSION,
             (int)getpid(), s->cfg.state_dir, s->cfg.image);
    return MOAT_OK;
}

int moat_server_run(moat_server *s)
{
    uv_run(s->loop, UV_RUN_DEFAULT);
    return s->exit_status;
}

void moat_server_close(moat_server *s, moat_server_close_cb cb, void *ud)
{
    s->close_cb = cb;
    s->close_ud = ud;
    uv_async_send(&s->close_async);
}

void moat_server_free(moat_server *s)
{
    if (s == NULL)
        return;
    if (uv_loop_close(s->loop) != 0)
        moat_log(MOAT_LOG_WARN, "loop_not_empty", "at=exit");
    moat__metrics_free(s->metrics);
    moat_log_limit *limits[] = {&s->logs.prehello, &s->logs.calls_refused, &s->logs.create_failed,
                                &s->logs.ttl_refused, &s->logs.budget_refused};
    for (size_t i = 0; i < sizeof(limits) / sizeof(limits[0]); i++)
        pthread_mutex_destroy(&limits[i]->mu);
    moat_throttle_free(s->failed_hellos);
    moat_server_config_free(&s->cfg);
    free(s->read_buf);
    free(s);
}
