/* Connections: accepting one, the queue of pending hellos, the hello, reading and decoding
 * frames, the calls they open, idle and hello timers, and closing. Loop thread only. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

#include "server_internal.h"

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
    moat_status_set(&closed, MOAT_CODE_CANCELLED, MOAT__CONNECTION_CLOSED, "connection closed: %s",
                    why);
    while (c->streams != NULL) {
        stream *st = c->streams;
        moat__stream_ref(st);
        moat_rpc_call_cancel_with(st->call, &closed);
        moat__stream_release(st, moat__stream_unlink(st) ? 2 : 1);
    }
}

void moat__conn_close(conn *c, moat_code code, const char *why)
{
    if (c->closing)
        return;
    c->closing = true;
    srv *s = c->s;
    moat_log_level level =
        code == MOAT_CODE_OK || code == MOAT_CODE_UNAVAILABLE ? MOAT_LOG_INFO : MOAT_LOG_WARN;
    if (c->state == CONN_PREHELLO) {
        /* Anyone who can connect can make these as fast as they like. */
        moat_log_limited(&s->logs.prehello, level, "moat__conn_close",
                         "peer=%s code=%s reason=\"%s\" authenticated=0", c->peer,
                         moat_code_name(code), why);
        pending_unlink(c);
    } else {
        moat_log(level, "moat__conn_close", "peer=%s code=%s reason=\"%s\"", c->peer,
                 moat_code_name(code), why);
        if (c->state == CONN_READY)
            s->nready--;
    }
    conn_cancel_calls(c, why);
    moat__conn_flush(c);
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
void moat__conn_fail(conn *c, moat_code code, const char *why)
{
    conn_cancel_calls(c, why);
    moat__conn_send_go_away(c, code, why);
    moat__conn_close(c, code, why);
}

static void on_conn_timer(uv_timer_t *t)
{
    conn *c = t->data;
    if (c->state == CONN_PREHELLO) {
        moat__metrics_hello_refused(c->s->metrics, "timeout");
        moat__conn_fail(c, MOAT_CODE_DEADLINE_EXCEEDED, "hello not completed in time");
        return;
    }
    uint32_t idle = c->s->cfg.idle_timeout_seconds;
    if (idle == 0)
        return;
    uint64_t quiet = moat__now_ms() - c->last_active_ms;
    if (c->streams == NULL && quiet >= (uint64_t)idle * 1000u) {
        moat__conn_fail(c, MOAT_CODE_UNAVAILABLE, "idle timeout");
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
        moat_throttle_charge(c->s->failed_hellos, &c->addr, moat__now_ms());
    moat__metrics_status(c->s->metrics, MOAT_CODE_UNAUTHENTICATED);
    moat__metrics_hello_refused(c->s->metrics, "failed");
    moat__conn_fail(c, MOAT_CODE_UNAUTHENTICATED, why);
}

static void handle_hello(conn *c, const moat_frame *f)
{
    srv *s = c->s;
    if (f->kind != MOAT_FRAME_HELLO || f->stream_id != 0) {
        moat__conn_fail(c, MOAT_CODE_INVALID_ARGUMENT,
                        "the first frame must be a Hello on stream 0");
        return;
    }
    if (f->u.hello.protocol_version != MOAT_WIRE_PROTOCOL_VERSION) {
        moat__conn_fail(c, MOAT_CODE_FAILED_PRECONDITION, "unsupported protocol version (want 1)");
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
    if (s->nready + s->ngrpc >= s->cfg.max_connections) {
        moat__conn_fail(c, MOAT_CODE_RESOURCE_EXHAUSTED, "too many connections");
        return;
    }
    c->table = moat_stream_table_new(s->cfg.max_streams_per_connection);
    if (c->table == NULL) {
        moat__conn_fail(c, MOAT_CODE_RESOURCE_EXHAUSTED, "out of memory");
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
    moat__conn_send(c, &ack);
    moat_wire_decoder_set_max(&c->dec, c->max_frame_size);
    pending_unlink(c);
    c->state = CONN_READY;
    s->nready++;
    c->from_proxy = moat_slice_eq_str(f->u.hello.client_name, MOAT__PROXY_CLIENT_NAME);
    int nlen = (int)(f->u.hello.client_name.len > 64 ? 64 : f->u.hello.client_name.len);
    moat_log(MOAT_LOG_DEBUG, "hello", "peer=%s client=\"%.*s\"", c->peer, nlen,
             (const char *)f->u.hello.client_name.data);
    if (s->draining) {
        moat__conn_send_go_away(c, MOAT_CODE_UNAVAILABLE, "server is shutting down");
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
    moat__conn_send_end(c, id, &st);
}

static void handle_call(conn *c, const moat_frame *f)
{
    srv *s = c->s;
    uint32_t id = f->stream_id;
    stream *st = calloc(1, sizeof(*st));
    if (st == NULL) {
        moat__conn_fail(c, MOAT_CODE_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    moat_err err = moat_stream_table_open(c->table, id, st);
    if (err != MOAT_OK) {
        free(st);
        if (err == MOAT_E_TOO_BIG)
            refuse_call(c, id, MOAT_CODE_RESOURCE_EXHAUSTED, "too_many_streams",
                        "too many concurrent calls on this connection");
        else
            moat__conn_fail(c, MOAT_CODE_INVALID_ARGUMENT, "invalid or reused stream id");
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
    if (!moat__stream_start(st, c, id, m, f->u.call.deadline_ms)) {
        moat_stream_table_close(c->table, id);
        free(st);
        refuse_call(c, id, MOAT_CODE_RESOURCE_EXHAUSTED, "out_of_memory", "out of memory");
        return;
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
    case MOAT_FRAME_MESSAGE:
        st = moat_stream_table_get(c->table, f->stream_id);
        if (st == NULL)
            return; /* a late message for a call that already ended */
        if (moat_window_consume(&st->in_window, (uint32_t)f->u.message.payload.len) != MOAT_OK) {
            moat__conn_fail(c, MOAT_CODE_INVALID_ARGUMENT,
                            "flow_control_error: a Message past the stream's window");
            return;
        }
        moat__stream_request(st, f->u.message.payload.data, f->u.message.payload.len);
        return;
    case MOAT_FRAME_CANCEL:
        st = moat_stream_table_get(c->table, f->stream_id);
        if (st == NULL)
            return;
        /* A proxying node's client went: for the call, that is a dropped connection. */
        if (c->from_proxy && moat_slice_eq_str(f->u.cancel.reason, MOAT__CONNECTION_CLOSED)) {
            moat_status dropped;
            moat_status_set(&dropped, MOAT_CODE_CANCELLED, MOAT__CONNECTION_CLOSED,
                            "the proxying node's client connection closed");
            moat_rpc_call_cancel_with(st->call, &dropped);
        } else {
            moat_rpc_call_cancel(st->call, MOAT_CODE_CANCELLED, "cancelled by the client");
        }
        return;
    case MOAT_FRAME_WINDOW_UPDATE:
        if (f->stream_id == 0)
            return; /* no connection-level window in protocol version 1 */
        st = moat_stream_table_get(c->table, f->stream_id);
        if (st == NULL)
            return;
        if (moat_window_grant(&st->window, f->u.window_update.increment) != MOAT_OK) {
            moat__conn_fail(c, MOAT_CODE_INVALID_ARGUMENT, "window update of 0 or past 2^31-1");
            return;
        }
        moat__stream_ref(st);
        moat__stream_flush(st);
        if (st->c != NULL && st->on_credit != NULL)
            st->on_credit(st, f->u.window_update.increment);
        moat__stream_unref(st);
        return;
    case MOAT_FRAME_PING: {
        moat_frame pong = {0};
        pong.kind = MOAT_FRAME_PONG;
        pong.u.pong.payload = f->u.ping.payload;
        moat__conn_send(c, &pong);
        return;
    }
    case MOAT_FRAME_PONG:
        return;
    default:
        moat__conn_fail(c, MOAT_CODE_INVALID_ARGUMENT, "frame kind not allowed from a client");
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
        moat__conn_close(c, nread == UV_EOF ? MOAT_CODE_OK : MOAT_CODE_UNAVAILABLE,
                         nread == UV_EOF ? "client closed" : uv_strerror((int)nread));
        return;
    }
    c->last_active_ms = moat__now_ms();
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
            moat__conn_fail(c,
                            err == MOAT_E_TOO_BIG ? MOAT_CODE_RESOURCE_EXHAUSTED
                                                  : MOAT_CODE_INVALID_ARGUMENT,
                            why);
            return;
        }
        moat_frame f;
        err = moat_wire_frame_decode(body, &f);
        if (err != MOAT_OK) {
            moat__conn_fail(c, MOAT_CODE_INVALID_ARGUMENT,
                            err == MOAT_E_UNKNOWN_KIND ? "unknown frame kind" : "malformed frame");
            return;
        }
        handle_frame(c, &f);
    }
}

/* Starts or resumes reading. */
void moat__conn_pump(conn *c)
{
    if (c->reading || c->state == CONN_CLOSING)
        return;
    if (uv_read_start(&c->h.stream, on_alloc, on_read) == 0)
        c->reading = true;
}

void moat__peer_address(uv_tcp_t *tcp, char *peer, size_t cap, moat_throttle_addr *addr,
                        bool *has_addr)
{
    snprintf(peer, cap, "unix");
    *has_addr = false;
    if (tcp == NULL)
        return;
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    if (uv_tcp_getpeername(tcp, (struct sockaddr *)&ss, &len) != 0)
        return;
    char ip[48] = "?";
    int port = 0;
    if (ss.ss_family == AF_INET) {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        uv_ip4_name(a, ip, sizeof(ip));
        port = ntohs(a->sin_port);
        memset(addr->b, 0, 10);
        addr->b[10] = addr->b[11] = 0xff;
        memcpy(addr->b + 12, &a->sin_addr, 4);
        *has_addr = true;
    } else if (ss.ss_family == AF_INET6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        uv_ip6_name(a, ip, sizeof(ip));
        port = ntohs(a->sin6_port);
        memcpy(addr->b, &a->sin6_addr, 16);
        *has_addr = true;
    }
    snprintf(peer, cap, "%s:%d", ip, port);
}

void moat__conn_accept(uv_stream_t *server)
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
    moat__peer_address(is_tcp ? &c->h.tcp : NULL, c->peer, sizeof(c->peer), &c->addr, &c->has_addr);
    moat_wire_decoder_init(&c->dec, MOAT_WIRE_PREHELLO_MAX_FRAME);
    c->state = CONN_PREHELLO;
    c->last_active_ms = moat__now_ms();
    c->next = s->conns;
    if (s->conns != NULL)
        s->conns->prev = c;
    s->conns = c;
    s->nconns++;
    moat__metrics_conn(s->metrics, 1);
    uint64_t retry_ms =
        c->has_addr ? moat_throttle_retry_ms(s->failed_hellos, &c->addr, moat__now_ms()) : 0;
    /* Over budget, the oldest SILENT hello goes: a client that sends its hello right after
     * connecting (every real one) leaves the queue as soon as it is read, so silent connections
     * only push out each other; refusing the newest instead would let a few silent connections
     * hold the door shut until their hello_timeout. A throttled newcomer makes no room: it is
     * closed at once. */
    if (retry_ms == 0 && s->npending >= s->cfg.max_pending_hellos) {
        moat__metrics_hello_refused(s->metrics, "evicted");
        moat__conn_fail(pending_victim(s), MOAT_CODE_RESOURCE_EXHAUSTED,
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
        moat__conn_fail(c, MOAT_CODE_RESOURCE_EXHAUSTED, why);
        return;
    }
    if (s->draining) {
        moat__conn_fail(c, MOAT_CODE_UNAVAILABLE, "server is shutting down");
        return;
    }
    moat_log(MOAT_LOG_DEBUG, "conn_open", "peer=%s", c->peer);
    uv_timer_start(&c->timer, on_conn_timer, (uint64_t)s->cfg.hello_timeout_seconds * 1000u, 0);
    moat__conn_pump(c);
}
