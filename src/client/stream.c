/* libmoat's calls on a connection (client.c): starting one, receiving its messages and
 * granting the server credit, sending with the call's send window (from a buffer, in parts
 * or spliced from a pipe), following a session_moved End to the session's owner before any
 * answer (docs/CLUSTER.md, "Routing"), its deadline, cancel and free, and unary calls. */
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "conn.h"

/* session_moved answers a call follows; the next one is redirect_loop. */
#define MOVES_FOLLOWED 2u

void moat__call_free_buffers(moat_call *call)
{
    moat_buf_free(&call->queue);
    moat_buf_free(&call->replay);
}

/* Whether payload fits one Message frame and the stream's initial window:
 * what could ever be sent as one request message. */
static bool message_fits(const moat_client *c, uint32_t stream, moat_slice payload)
{
    if (payload.len > c->limits.initial_window)
        return false;
    moat_frame probe;
    memset(&probe, 0, sizeof probe);
    probe.kind = MOAT_FRAME_MESSAGE;
    probe.stream_id = stream;
    probe.u.message.payload = payload;
    size_t need = moat_wire_encoded_size(&probe);
    return need > 0 && need <= c->wcap;
}

moat_err moat_call_start(moat_client *c, const char *method, uint64_t deadline_ms,
                         const moat_kv *metadata, size_t metadata_count, moat_slice request,
                         moat_call **out)
{
    if (c->broken || c->go_away)
        return MOAT_E_CLOSED;
    /* Refuse before anything is sent: a Call without its request would hang. */
    if (metadata_count > MOAT_WIRE_MAX_KV || !message_fits(c, c->next_id, request))
        return MOAT_E_TOO_BIG;
    moat_call *call = calloc(1, sizeof *call);
    if (call == NULL)
        return MOAT_E_NOMEM;
    call->client = c;
    call->id = c->next_id;
    moat_window_init(&call->recv_window, c->limits.initial_window);
    moat_window_init(&call->send_window, c->limits.initial_window);
    moat_window_consume(&call->send_window, (uint32_t)request.len); /* fits: checked above */
    /* Room for a full window of queued messages with their prefixes. */
    moat_buf_init(&call->queue, (size_t)c->limits.initial_window * 2 + 64 * 1024);
    moat_status_clear(&call->status);
    moat_err err = moat_stream_table_open(c->streams, call->id, call);
    if (err != MOAT_OK) {
        free(call);
        return err == MOAT_E_TOO_BIG ? MOAT_E_TOO_BIG : MOAT_E_STATE;
    }
    c->next_id += 2;
    call->next = c->calls;
    c->calls = call;
    if (deadline_ms > 0)
        call->deadline_at_ms = moat__client_mono_ms() + (int64_t)deadline_ms;

    moat_frame f;
    memset(&f, 0, sizeof f);
    f.stream_id = call->id;
    f.kind = MOAT_FRAME_CALL;
    f.u.call.method = moat_slice_str(method);
    f.u.call.deadline_ms = deadline_ms;
    f.u.call.metadata_count = metadata_count;
    for (size_t i = 0; i < metadata_count; i++)
        f.u.call.metadata[i] = metadata[i];
    err = moat__client_send_frame(c, &f);
    if (err == MOAT_OK) {
        f.kind = MOAT_FRAME_MESSAGE;
        f.u.message.payload = request;
        err = moat__client_send_frame(c, &f);
    }
    if (err != MOAT_OK) {
        moat_call_free(call);
        return MOAT_E_CLOSED;
    }
    *out = call;
    return MOAT_OK;
}

/* Keeps a request message, head then data, for a re-issue; past the window's
 * worth (all a server that has not answered can have let through) the call
 * stops following. */
static void record(moat_call *call, moat_slice head, moat_slice data)
{
    size_t len = head.len + data.len;
    uint8_t hdr[QUEUE_PREFIX] = {(uint8_t)(len >> 24), (uint8_t)(len >> 16), (uint8_t)(len >> 8),
                                 (uint8_t)len};
    if (moat_buf_append(&call->replay, hdr, sizeof hdr) != MOAT_OK ||
        moat_buf_append(&call->replay, head.data, head.len) != MOAT_OK ||
        moat_buf_append(&call->replay, data.data, data.len) != MOAT_OK)
        moat__call_stop_following(call);
}

/* The i-th recorded request message from *pos on; false after the last. */
static bool replayed(const moat_call *call, size_t *pos, moat_slice *msg)
{
    if (call->request_ref.data != NULL) {
        if (*pos > 0)
            return false;
        *msg = call->request_ref;
        *pos = 1;
        return true;
    }
    if (*pos + QUEUE_PREFIX > call->replay.len)
        return false;
    const uint8_t *p = call->replay.data + *pos;
    size_t len = (size_t)p[0] << 24 | (size_t)p[1] << 16 | (size_t)p[2] << 8 | p[3];
    *msg = (moat_slice){p + QUEUE_PREFIX, len};
    *pos += QUEUE_PREFIX + len;
    return true;
}

/* A re-issue that could not be made: the call ends here (its id was never
 * opened on the new connection, so the stream table is not touched). */
static bool reopen_failed(moat_call *call, moat_code code, const char *reason, const char *msg)
{
    moat_status_set(&call->status, code, reason, "%s", msg);
    call->ended = true;
    return false;
}

/* Moves an ended call to connection `to` and sends it again there: its Call
 * with the deadline left, then every request message it had sent. */
static bool reopen(moat_call *call, moat_client *to, uint64_t deadline_ms)
{
    moat_client *from = call->client;
    for (moat_call **p = &from->calls; *p; p = &(*p)->next) {
        if (*p == call) {
            *p = call->next;
            break;
        }
    }
    call->client = to;
    call->next = to->calls;
    to->calls = call;
    call->ended = false;
    call->unreleased = 0;
    call->queue_head = 0;
    moat_buf_free(&call->queue);
    moat_buf_init(&call->queue, (size_t)to->limits.initial_window * 2 + 64 * 1024);
    moat_status_clear(&call->status);
    moat_window_init(&call->recv_window, to->limits.initial_window);
    moat_window_init(&call->send_window, to->limits.initial_window);
    if (!moat__client_usable(to))
        return reopen_failed(
            call, to->broken_status.code ? to->broken_status.code : MOAT_CODE_UNAVAILABLE,
            to->broken ? to->broken_status.reason : "go_away", "the owner's connection is closing");
    size_t pos = 0;
    moat_slice msg;
    while (replayed(call, &pos, &msg)) {
        if (!message_fits(to, to->next_id, msg) || msg.len > call->send_window.available)
            return reopen_failed(call, MOAT_CODE_INVALID_ARGUMENT, "request_too_big",
                                 "the request does not fit the owner's limits");
        moat_window_consume(&call->send_window, (uint32_t)msg.len);
    }
    call->id = to->next_id;
    if (moat_stream_table_open(to->streams, call->id, call) != MOAT_OK)
        return reopen_failed(call, MOAT_CODE_RESOURCE_EXHAUSTED, "too_many_streams",
                             "the owner's connection has max_concurrent_streams calls open");
    to->next_id += 2;
    moat_frame f;
    memset(&f, 0, sizeof f);
    f.stream_id = call->id;
    f.kind = MOAT_FRAME_CALL;
    f.u.call.method = moat_slice_str(call->method);
    f.u.call.deadline_ms = deadline_ms;
    moat_err err = moat__client_send_frame(to, &f);
    pos = 0;
    while (err == MOAT_OK && replayed(call, &pos, &msg)) {
        f.kind = MOAT_FRAME_MESSAGE;
        f.u.message.payload = msg;
        err = moat__client_send_frame(to, &f);
    }
    if (err != MOAT_OK)
        moat__call_end(call, to->broken_status.code, to->broken_status.reason,
                       to->broken_status.message);
    return err == MOAT_OK;
}

/* A call that ended session_moved before any answer goes to the owner the
 * End named (docs/CLUSTER.md, "Routing"), within the call's first deadline.
 * false: the call stays ended, its status saying why. */
static bool follow(moat_call *call)
{
    call->moved = false;
    moat_client *from = call->client;
    moat_client *top = from->top;
    if (call->hops >= MOVES_FOLLOWED) {
        char msg[MOAT_STATUS_MESSAGE_MAX];
        snprintf(msg, sizeof msg, "session %s moved %u times in a row (last to %.128s)",
                 call->session, call->hops + 1u, call->moved_to);
        return reopen_failed(call, MOAT_CODE_UNAVAILABLE, "redirect_loop", msg);
    }
    if (call->moved_too_long || !moat__addr_ok(moat_slice_str(call->moved_to)))
        return reopen_failed(call, MOAT_CODE_INTERNAL, "bad_redirect",
                             "session_moved without an owner_address that is host:port");
    call->hops++;
    uint64_t deadline_ms = 0;
    if (call->deadline_at_ms) {
        int64_t left = call->deadline_at_ms - moat__client_mono_ms();
        if (left <= 0)
            return reopen_failed(call, MOAT_CODE_DEADLINE_EXCEEDED, "deadline_exceeded",
                                 "the call's deadline passed while it followed its session");
        deadline_ms = (uint64_t)left;
    }
    moat__route_learn(top, moat_slice_str(call->session), moat_slice_str(call->moved_to));
    moat__route_notify(top, call->session, from->addr, call->moved_to);
    moat_status st;
    int connect_ms = deadline_ms > INT_MAX ? INT_MAX : (int)deadline_ms;
    moat_client *to = moat__route_conn(top, call->moved_to, connect_ms, &st);
    if (to == NULL) {
        moat__route_forget(top, call->session);
        call->status = st;
        return false;
    }
    return reopen(call, to, deadline_ms);
}

moat_err moat__routed_start(moat_client *c, const char *session_id, const char *method,
                            uint64_t deadline_ms, moat_slice request, bool borrow, moat_call **out,
                            moat_status *st)
{
    bool routed = session_id != NULL && session_id[0] != '\0';
    moat_client *conn = routed ? moat__route(c, session_id, deadline_ms) : c;
    moat_err err = moat__call_start(conn, method, deadline_ms, request, out, st);
    if (err != MOAT_OK || !routed || strlen(method) >= METHOD_MAX)
        return err;
    moat_call *call = *out;
    memcpy(call->method, method, strlen(method) + 1);
    if (strlen(session_id) < sizeof call->session)
        memcpy(call->session, session_id, strlen(session_id) + 1);
    call->follow = true;
    if (borrow) {
        call->request_ref = request;
    } else {
        moat_buf_init(&call->replay, conn->limits.initial_window + 64 * 1024);
        record(call, request, (moat_slice){NULL, 0});
    }
    return MOAT_OK;
}

static bool call_done(moat_client *c, moat_call *want)
{
    (void)c;
    return want->queue_head < want->queue.len || want->ended;
}

moat_err moat_call_recv(moat_call *call, int timeout_ms, moat_slice *msg)
{
    if (call->unreleased > 0) {
        uint32_t inc = moat_window_release(&call->recv_window, call->unreleased);
        call->unreleased = 0;
        if (inc > 0 && !call->ended)
            moat__client_send_small(call->client, MOAT_FRAME_WINDOW_UPDATE, call->id, inc);
    }
    for (;;) {
        moat_client *c = call->client; /* a followed call changes connection */
        if (call->queue_head < call->queue.len) {
            const uint8_t *p = call->queue.data + call->queue_head;
            size_t len = (size_t)p[0] << 24 | (size_t)p[1] << 16 | (size_t)p[2] << 8 | p[3];
            /* Copied out so later queueing (which may move the buffer) cannot
             * invalidate what the caller holds. */
            if (len)
                memcpy(c->mbuf, p + QUEUE_PREFIX, len);
            call->queue_head += QUEUE_PREFIX + len;
            msg->data = c->mbuf;
            msg->len = len;
            call->unreleased = (uint32_t)len;
            return MOAT_OK;
        }
        if (call->ended) {
            if (call->moved && follow(call))
                continue;
            call->end_reported = true;
            return MOAT_E_CLOSED;
        }
        int wait = timeout_ms;
        if (call->deadline_at_ms) {
            /* The server ends the call at its deadline; give it a second more
             * before deciding locally, in case the End was lost with the link. */
            int64_t left = call->deadline_at_ms + 1000 - moat__client_mono_ms();
            if (left <= 0) {
                moat_frame f;
                memset(&f, 0, sizeof f);
                f.kind = MOAT_FRAME_CANCEL;
                f.stream_id = call->id;
                f.u.cancel.reason = moat_slice_str("deadline exceeded");
                moat__client_send_frame(c, &f);
                moat__call_end(call, MOAT_CODE_DEADLINE_EXCEEDED, "deadline_exceeded",
                               "the call's deadline passed");
                continue;
            }
            if (wait < 0 || left < wait)
                wait = (int)left;
        }
        moat_slice got;
        moat_err err = moat__client_pump(c, call, &got, wait, call_done);
        if (err == MOAT_E_AGAIN) {
            *msg = got;
            call->unreleased = (uint32_t)got.len;
            return MOAT_OK;
        }
        if (err == MOAT_E_TIMEOUT && wait == timeout_ms)
            return MOAT_E_TIMEOUT;
    }
}

static bool credit_done(moat_client *c, moat_call *want)
{
    (void)c;
    return want->ended || want->send_window.available >= want->send_need;
}

/* Waits for len bytes of the call's send window. A session_moved End read
 * meanwhile makes the call follow, and the message goes to the owner. */
static moat_err await_credit(moat_call *call, size_t len, int timeout_ms)
{
    for (;;) {
        if (call->ended && call->moved && follow(call))
            continue;
        moat_client *c = call->client;
        if (call->ended || c->broken)
            return MOAT_E_CLOSED;
        if (!message_fits(c, call->id, (moat_slice){NULL, len}))
            return MOAT_E_TOO_BIG;
        call->send_need = (uint32_t)len;
        /* Frames that come meanwhile are queued, not delivered: the caller reads
         * them with moat_call_recv, and keeps granting the server credit. */
        moat_err err = moat__client_pump(c, call, NULL, timeout_ms, credit_done);
        if (err != MOAT_OK)
            return err;
        if (!call->ended)
            return MOAT_OK;
    }
}

moat_err moat_call_send(moat_call *call, moat_slice payload, int timeout_ms)
{
    moat_err err = await_credit(call, payload.len, timeout_ms);
    if (err != MOAT_OK)
        return err;
    moat_window_consume(&call->send_window, (uint32_t)payload.len);
    if (call->follow)
        record(call, payload, (moat_slice){NULL, 0});
    moat_frame f;
    memset(&f, 0, sizeof f);
    f.kind = MOAT_FRAME_MESSAGE;
    f.stream_id = call->id;
    f.u.message.payload = payload;
    return moat__client_send_frame(call->client, &f) == MOAT_OK ? MOAT_OK : MOAT_E_CLOSED;
}

/* Waits for the credit of a message of head and len more bytes, takes it and encodes the
 * frame's prefix and head into prefix (*n bytes). */
static moat_err message_start(moat_call *call, moat_slice head, size_t len, int timeout_ms,
                              uint8_t *prefix, size_t cap, size_t *n)
{
    len += head.len;
    if (head.len > cap - MOAT_WIRE_MESSAGE_PREFIX_MAX)
        return MOAT_E_TOO_BIG;
    moat_err err = await_credit(call, len, timeout_ms);
    if (err != MOAT_OK)
        return err;
    /* the stream id is the owner's after a follow: encoded only now */
    if (moat_wire_encode_message_prefix(call->id, len, prefix, MOAT_WIRE_MESSAGE_PREFIX_MAX, n) !=
        MOAT_OK)
        return MOAT_E_TOO_BIG;
    memcpy(prefix + *n, head.data, head.len);
    *n += head.len;
    moat_window_consume(&call->send_window, (uint32_t)len);
    return MOAT_OK;
}

moat_err moat__call_send_parts(moat_call *call, moat_slice head, moat_slice data, int timeout_ms)
{
    uint8_t prefix[MOAT_WIRE_MESSAGE_PREFIX_MAX + 16];
    size_t n;
    moat_err err = message_start(call, head, data.len, timeout_ms, prefix, sizeof prefix, &n);
    if (err != MOAT_OK)
        return err;
    if (call->follow)
        record(call, head, data);
    struct iovec iov[2] = {{prefix, n}, {(void *)data.data, data.len}};
    return moat__client_write_iov(call->client, iov, 2) == MOAT_OK ? MOAT_OK : MOAT_E_CLOSED;
}

bool moat__call_records(const moat_call *call)
{
    return call->follow;
}

moat_err moat__call_send_spliced(moat_call *call, moat_slice head, int pipe_fd, size_t len,
                                 int timeout_ms)
{
    uint8_t prefix[MOAT_WIRE_MESSAGE_PREFIX_MAX + 16];
    size_t n;
    moat_err err = message_start(call, head, len, timeout_ms, prefix, sizeof prefix, &n);
    if (err != MOAT_OK)
        return err;
    moat_client *c = call->client;
    struct iovec iov = {prefix, n};
    if (moat__client_write_iov_flags(c, &iov, 1, MSG_MORE) != MOAT_OK)
        return MOAT_E_CLOSED;
    while (len > 0) {
        ssize_t w = splice(pipe_fd, NULL, c->fd, NULL, len, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        /* a failure leaves the frame cut: the connection cannot go on */
        int went = moat__client_write_outcome(c, w);
        if (went < 0)
            return MOAT_E_CLOSED;
        if (went > 0)
            len -= (size_t)w;
    }
    c->last_send_ms = moat__client_mono_ms();
    return MOAT_OK;
}

uint32_t moat_call_send_window(const moat_call *call)
{
    return call->send_window.available;
}

int moat_call_fd(const moat_call *call)
{
    return call->client->fd;
}

moat_client *moat__call_client(const moat_call *call)
{
    return call->client;
}

const moat_status *moat_call_status(const moat_call *call)
{
    return &call->status;
}

moat_err moat_call_cancel(moat_call *call, const char *reason)
{
    if (call->ended)
        return MOAT_OK;
    moat_frame f;
    memset(&f, 0, sizeof f);
    f.kind = MOAT_FRAME_CANCEL;
    f.stream_id = call->id;
    f.u.cancel.reason = moat_slice_str(reason ? reason : "");
    return moat__client_send_frame(call->client, &f);
}

void moat_call_free(moat_call *call)
{
    if (call == NULL)
        return;
    moat_client *c = call->client;
    if (!call->ended) {
        moat_call_cancel(call, "client freed the call");
        moat_stream_table_close(c->streams, call->id);
    }
    for (moat_call **p = &c->calls; *p; p = &(*p)->next) {
        if (*p == call) {
            *p = call->next;
            break;
        }
    }
    moat__call_free_buffers(call);
    free(call);
}

moat_err moat__call_start(moat_client *c, const char *method, uint64_t deadline_ms,
                          moat_slice request, moat_call **out, moat_status *st)
{
    moat_err err = moat_call_start(c, method, deadline_ms, NULL, 0, request, out);
    if (err != MOAT_OK && c->broken)
        *st = c->broken_status;
    else if (err != MOAT_OK)
        moat_status_set(st, MOAT_CODE_INVALID_ARGUMENT, "call_failed", "cannot start %s: %s",
                        method, moat_strerror(err));
    return err;
}

/* The rest of a unary call once started: its one answer into resp, then its End. */
static moat_err unary_finish(moat_call *call, const char *method, uint8_t *resp, size_t cap,
                             size_t *resp_len, moat_status *st)
{
    moat_err err;
    bool got = false;
    moat_slice msg;
    while ((err = moat_call_recv(call, -1, &msg)) == MOAT_OK) {
        if (got || msg.len > cap) {
            moat_status_set(st, MOAT_CODE_INTERNAL, "unexpected_response", "%s sent %s", method,
                            got ? "more than one message" : "a message larger than the buffer");
            moat_call_free(call);
            return MOAT_E_TOO_BIG;
        }
        if (msg.len)
            memcpy(resp, msg.data, msg.len);
        *resp_len = msg.len;
        got = true;
    }
    *st = call->status;
    moat_call_free(call);
    if (st->code != MOAT_CODE_OK)
        return MOAT_E_REMOTE;
    return MOAT_OK;
}

moat_err moat_client_unary(moat_client *c, const char *method, uint64_t deadline_ms,
                           moat_slice request, uint8_t *resp, size_t cap, size_t *resp_len,
                           moat_status *st)
{
    moat_call *call;
    *resp_len = 0;
    moat_err err = moat__call_start(c, method, deadline_ms, request, &call, st);
    return err != MOAT_OK ? err : unary_finish(call, method, resp, cap, resp_len, st);
}

moat_err moat__routed_unary(moat_client *c, const char *session_id, const char *method,
                            uint64_t deadline_ms, moat_slice request, uint8_t *resp, size_t cap,
                            size_t *resp_len, moat_status *st)
{
    moat_call *call;
    *resp_len = 0;
    moat_err err = moat__routed_start(c, session_id, method, deadline_ms, request, true, &call, st);
    return err != MOAT_OK ? err : unary_finish(call, method, resp, cap, resp_len, st);
}
