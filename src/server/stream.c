/* Streams: one call each on a connection, whatever its transport: the rpc sink that hands its
 * messages and End to the transport, its deadline, its request message. And the framed
 * transport: the client's flow-control window and the queue of frames waiting for it.
 * Loop thread only. */
#include <stdlib.h>
#include <string.h>

#include "moat/v1/exec.pb-c.h"
#include "server_internal.h"

static void stream_finish(stream *st);

/* A stream's queue counts in the budget too (not in the connection's share: a
 * stream may outlive its connection). */
static void stream_queued(stream *st, int64_t delta)
{
    st->queued = (size_t)((int64_t)st->queued + delta);
    if (st->s->bridge != NULL)
        moat_bridge_budget_charge(st->s->bridge, NULL, delta);
}

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
void moat__stream_release(stream *st, int n)
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
    moat__stream_release(st, 1);
}

uint64_t moat__stream_credit_target(const stream *st)
{
    if (moat__stream_backlogged(st))
        return 0;
    uint64_t want = moat__stream_credit(st);
    return want < st->initial_window ? want : st->initial_window;
}

uint32_t moat__stream_credit(const stream *st)
{
    return st->tx->credit(st);
}

moat_bridge_account *moat__stream_account(stream *st)
{
    return st->tx->account(st);
}

const char *moat__stream_peer(const stream *st)
{
    return st->tx->peer(st);
}

bool moat__stream_backlogged(const stream *st)
{
    return st->tx->backlogged(st);
}

void moat__stream_want_credit(stream *st)
{
    st->tx->want_credit(st);
}

static uint32_t framed_credit(const stream *st)
{
    if (st->c == NULL || st->qhead != NULL)
        return 0;
    return st->window.available;
}

static moat_bridge_account *framed_account(stream *st)
{
    return st->c != NULL ? &st->c->account : NULL;
}

static const char *framed_peer(const stream *st)
{
    return st->c != NULL ? st->c->peer : "-";
}

static bool framed_backlogged(const stream *st)
{
    return st->c == NULL || st->c->pending_write > st->s->cfg.max_pending_bytes;
}

static void framed_want_credit(stream *st)
{
    if (st->c == NULL)
        return;
    st->wants_credit = true;
    st->c->credit_wanted = true;
}

/* Writes queued frames while the window allows; closes the stream once its
 * End has gone out. */
void moat__stream_flush(stream *st)
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
        moat__conn_write_raw(c, f->data, f->len);
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
static moat_err framed_message(stream *st, const ProtobufCMessage *msg, size_t len)
{
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
    return moat__conn_queue_block(st->c, frame, hlen + len);
}

static void framed_end(stream *st, const moat_status *status)
{
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
    if (st->qhead == NULL) {
        moat__conn_send(st->c, &f);
        st->end_queued = true;
        stream_finish(st);
        return;
    }
    stream_enqueue(st, &f, 0);
    st->end_queued = true;
}

/* Input the handler has used goes back to the client, in WindowUpdates of at least half the
 * window as libmoat sends them (moat_window_release). */
static void framed_input_done(stream *st, size_t len)
{
    uint32_t inc = moat_window_release(&st->in_window, (uint32_t)len);
    if (inc == 0 || st->c == NULL)
        return;
    moat_frame f = {0};
    f.stream_id = st->id;
    f.kind = MOAT_FRAME_WINDOW_UPDATE;
    f.u.window_update.increment = inc;
    moat__conn_send(st->c, &f);
}

static const stream_transport framed = {framed_message,     framed_end,       framed_credit,
                                        framed_account,     framed_peer,      framed_backlogged,
                                        framed_want_credit, framed_input_done};

static moat_err sink_message(moat_rpc_call *call, const ProtobufCMessage *msg, size_t len,
                             void *user)
{
    (void)call;
    stream *st = user;
    return st->tx->message(st, msg, len);
}

static void sink_end(moat_rpc_call *call, const moat_status *status, void *user)
{
    stream *st = user;
    const moat_rpc_method *m = moat_rpc_call_method(call);
    uint64_t ms = (moat_time_mono_ns() - st->started_ns) / 1000000u;
    moat_log(status->code == MOAT_CODE_OK ? MOAT_LOG_DEBUG : MOAT_LOG_INFO, "call_end",
             "peer=%s stream=%u method=%s code=%s reason=%s duration_ms=%llu msg=\"%s\"",
             moat__stream_peer(st), st->id, m->name, moat_code_name(status->code),
             status->reason[0] ? status->reason : "-", (unsigned long long)ms, status->message);
    if (moat__stream_account(st) != NULL)
        moat__metrics_status(st->s->metrics, status->code);
    st->tx->end(st, status);
}

/* Input the handler has used goes back to the client. */
static void sink_input_done(moat_rpc_call *call, size_t len, void *user)
{
    (void)call;
    stream *st = user;
    st->tx->input_done(st, len);
}

static const moat_rpc_sink sink = {sink_message, sink_end, sink_input_done};

/* The stream leaves its connection, keeping the reference the connection held: returns
 * whether it was attached (the caller then owns that reference). */
bool moat__stream_unlink(stream *st)
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
    if (moat__stream_unlink(st))
        moat__stream_unref(st);
}

static void stream_finish(stream *st)
{
    conn *c = st->c;
    stream_detach(st);
    if (c != NULL && c->s->draining && c->streams == NULL && !c->closing)
        moat__conn_close(c, MOAT_CODE_UNAVAILABLE, "drained");
}

static void on_deadline(uv_timer_t *t)
{
    stream *st = t->data;
    moat_rpc_call_check_deadline(st->call, moat__now_ms() + 1);
}

bool moat__stream_open(stream *st, srv *s, uint32_t id, const stream_transport *tx,
                       const moat_rpc_method *m, uint64_t deadline_ms)
{
    st->s = s;
    st->id = id;
    st->tx = tx;
    st->refs = 1;
    st->started_ns = moat_time_mono_ns();
    st->max_frame_size = s->cfg.max_frame_size;
    st->initial_window = s->cfg.initial_window;
    st->call = moat_rpc_call_new(m, id, deadline_ms, moat__now_ms(), &sink, st);
    if (st->call == NULL)
        return false;
    moat__metrics_stream(s->metrics, 1);
    if (deadline_ms > 0) {
        st->deadline = malloc(sizeof(uv_timer_t));
        if (st->deadline != NULL) {
            uv_timer_init(s->loop, st->deadline);
            st->deadline->data = st;
            uv_timer_start(st->deadline, on_deadline, deadline_ms, 0);
        }
    }
    return true;
}

bool moat__stream_start(stream *st, conn *c, uint32_t id, const moat_rpc_method *m,
                        uint64_t deadline_ms)
{
    st->c = c;
    if (!moat__stream_open(st, c->s, id, &framed, m, deadline_ms))
        return false;
    /* What its connection's HelloAck announced, which a reload does not change. */
    st->max_frame_size = c->max_frame_size;
    st->initial_window = c->initial_window;
    moat_window_init(&st->window, st->initial_window);
    moat_window_init(&st->in_window, st->initial_window);
    st->next = c->streams;
    if (c->streams != NULL)
        c->streams->prev = st;
    c->streams = st;
    return true;
}

void moat__stream_request(stream *st, const uint8_t *payload, size_t len)
{
    if (moat_rpc_call_state(st->call) != MOAT_RPC_AWAIT_REQUEST) {
        moat_err err = moat_rpc_call_input(st->call, payload, len);
        if (err == MOAT_E_NOMEM)
            moat_rpc_call_fail(st->call, MOAT_CODE_RESOURCE_EXHAUSTED, "out_of_memory",
                               "out of memory");
        if (err != MOAT_E_STATE)
            return;
        const moat_rpc_method *m = moat_rpc_call_method(st->call);
        moat_status extra;
        if (m->service == &moat__v1__exec__descriptor && m->server_streaming)
            moat_status_set(&extra, MOAT_CODE_FAILED_PRECONDITION, "stdin_not_requested",
                            "%s takes no input after its request: Exec/Interactive does", m->name);
        else
            moat_status_set(&extra, MOAT_CODE_INVALID_ARGUMENT, "extra_request_message",
                            "a call takes exactly one request message");
        moat_rpc_call_cancel_with(st->call, &extra);
        return;
    }
    /* A client-streaming call's first message is no input its handler gives back: on any
     * transport, its credit returns at once. */
    if (moat_rpc_call_method(st->call)->client_streaming)
        st->tx->input_done(st, len);
    const ProtobufCMessage *req = NULL;
    if (moat_rpc_call_request(st->call, payload, len, &req) == MOAT_OK)
        moat__dispatch(st, req);
}
