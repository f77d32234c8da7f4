/* gRPC connections: HTTP/2 on one socket (src/grpc/h2.h on libnghttp2), inside TLS when the
 * listener has a certificate (src/grpc/tls.h on GnuTLS), its calls as streams with the gRPC
 * transport, so the same handlers, limits and budget accounts serve them as serve the framed
 * protocol. Loop thread only. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "grpc/h2.h"
#include "grpc/reflection.h"
#include "grpc/tls.h"
#include "server_internal.h"

/* A request's header list past this gets RESOURCE_EXHAUSTED (advertised in SETTINGS). */
#define GRPC_MAX_HEADER_LIST (16 * 1024)
/* Reflection answers a stream may have waiting for its reader (the largest answer, a file with
 * its imports, is a few KiB). */
#define REFLECTION_QUEUE_MAX (1024u * 1024u)
/* Bytes nghttp2 produced are gathered into writes of about this size. */
#define GRPC_WRITE_CHUNK (256 * 1024)

struct grpc_conn {
    srv *s;
    uv_tcp_t tcp;
    uv_timer_t timer; /* idle checks */
    int open_handles;
    bool closing, reading, throttled, credit_wanted, dirty;
    /* No call proved the token yet: counted in grpc_pending (bounded by max_pending_hellos, and
     * closed after hello_timeout_seconds) rather than in max_connections, as a framed connection
     * is before its hello, so silent peers cannot crowd out those with the token. */
    bool pending;
    /* Set inside nghttp2's callbacks, acted on once it has returned. */
    const char *fail_why;
    moat_code fail_code;
    moat_grpc_h2 *h2;
    moat_grpc_tls *tls;          /* NULL on h2c */
    struct grpc_write *gather;   /* bytes to write, gathered into one uv_write */
    size_t pending_write;        /* bytes handed to libuv, not yet written */
    size_t charged_queues;       /* its calls' queued messages, as last charged to the budget */
    moat_bridge_account account; /* its share of the memory budget */
    stream *streams;
    uint64_t last_active_ms;
    char peer[64];
    moat_throttle_addr addr;
    bool has_addr;
    grpc_conn *next, *prev;             /* the server's connections */
    grpc_conn *dirty_next, *dirty_prev; /* the server's connections to flush */
};

typedef struct grpc_write {
    uv_write_t req;
    grpc_conn *g;
    size_t len, cap;
    uint8_t data[];
} grpc_write;

static void grpc_close(grpc_conn *g, moat_code code, const char *why);
static void on_idle_timer(uv_timer_t *t);

/* Messages waiting in the calls' queues count in the memory budget, as a framed stream's queue
 * does (not in the connection's share). */
static void charge_queues(grpc_conn *g)
{
    size_t now = g->h2 != NULL ? moat_grpc_h2_queued_total(g->h2) : 0;
    if (g->s->bridge != NULL && now != g->charged_queues)
        moat_bridge_budget_charge(g->s->bridge, NULL, (int64_t)now - (int64_t)g->charged_queues);
    g->charged_queues = now;
}

static void mark_dirty(grpc_conn *g)
{
    if (g->dirty || g->closing)
        return;
    srv *s = g->s;
    g->dirty = true;
    g->dirty_prev = NULL;
    g->dirty_next = s->grpc_dirty;
    if (s->grpc_dirty != NULL)
        s->grpc_dirty->dirty_prev = g;
    s->grpc_dirty = g;
}

static void dirty_unlink(grpc_conn *g)
{
    if (!g->dirty)
        return;
    if (g->dirty_prev != NULL)
        g->dirty_prev->dirty_next = g->dirty_next;
    else
        g->s->grpc_dirty = g->dirty_next;
    if (g->dirty_next != NULL)
        g->dirty_next->dirty_prev = g->dirty_prev;
    g->dirty_next = g->dirty_prev = NULL;
    g->dirty = false;
}

/* ---- the transport of its streams ----------------------------------------------------------- */

static moat_err grpc_message(stream *st, const ProtobufCMessage *msg, size_t len)
{
    grpc_conn *g = st->g;
    if (g == NULL)
        return MOAT_E_CLOSED;
    /* The framed protocol's frame size bounds a message on either transport. */
    if (len > st->max_frame_size - 64)
        return MOAT_E_TOO_BIG;
    uint8_t *block = malloc(MOAT_GRPC_PREFIX_SIZE + len);
    if (block == NULL)
        return MOAT_E_NOMEM;
    moat_grpc_message_prefix(block, (uint32_t)len);
    protobuf_c_message_pack(msg, block + MOAT_GRPC_PREFIX_SIZE);
    moat_err err = moat_grpc_h2_send(g->h2, (int32_t)st->id, block, MOAT_GRPC_PREFIX_SIZE + len);
    if (err == MOAT_OK) {
        moat__metrics_bytes(st->s->metrics, len);
        charge_queues(g);
        mark_dirty(g);
    }
    return err;
}

static void grpc_end(stream *st, const moat_status *status)
{
    grpc_conn *g = st->g;
    if (g == NULL)
        return;
    moat_grpc_h2_end(g->h2, (int32_t)st->id, status);
    mark_dirty(g);
}

/* The windows left, less what waits. Handlers produce whole events (a 64 KiB chunk of output,
 * MOAT_BRIDGE_MAX_EVENT_COST at most) only within credit, and HTTP/2's default window is 64 KiB:
 * so while the window has room beyond what waits, a stream may take one such event past it,
 * which its queue holds until the window moves (a queue stays under window + one event). */
static uint32_t grpc_credit(const stream *st)
{
    if (st->g == NULL)
        return 0;
    uint32_t credit = moat_grpc_h2_credit(st->g->h2, (int32_t)st->id);
    return credit > 0 && credit < MOAT_BRIDGE_MAX_EVENT_COST ? MOAT_BRIDGE_MAX_EVENT_COST : credit;
}

static moat_bridge_account *grpc_account(stream *st)
{
    return st->g != NULL ? &st->g->account : NULL;
}

static const char *grpc_peer(const stream *st)
{
    return st->g != NULL ? st->g->peer : "-";
}

static bool grpc_backlogged(const stream *st)
{
    return st->g == NULL || st->g->pending_write > st->s->cfg.max_pending_bytes;
}

static void grpc_want_credit(stream *st)
{
    if (st->g == NULL)
        return;
    st->wants_credit = true;
    st->g->credit_wanted = true;
}

/* A client-streaming call's input, used: its stream's window goes back to the client. */
static void grpc_input_done(stream *st, size_t len)
{
    if (st->g == NULL)
        return;
    moat_grpc_h2_consume(st->g->h2, (int32_t)st->id, len);
    mark_dirty(st->g);
}

static const stream_transport grpc_transport = {grpc_message,     grpc_end,       grpc_credit,
                                                grpc_account,     grpc_peer,      grpc_backlogged,
                                                grpc_want_credit, grpc_input_done};

/* ---- h2's callbacks ------------------------------------------------------------------------- */

static bool cb_token_ok(const uint8_t *token, size_t len, void *ud)
{
    grpc_conn *g = ud;
    return moat_server_token_equal(token, len, g->s->cfg.token);
}

static void *cb_open(void *ud, int32_t stream_id, const moat_grpc_request *req,
                     moat_status *refusal)
{
    grpc_conn *g = ud;
    srv *s = g->s;
    if (s->draining) {
        moat_status_set(refusal, MOAT_CODE_UNAVAILABLE, "shutting_down", "server is shutting down");
        return NULL;
    }
    /* grpc.health.v1 needs no token, so it proves nothing. */
    bool proves = s->cfg.token[0] == '\0' ||
                  (req->method != NULL && req->method->id != MOAT_RPC_GRPC_HEALTH_CHECK &&
                   req->method->id != MOAT_RPC_GRPC_HEALTH_WATCH) ||
                  req->reflection;
    if (g->pending && proves) {
        if (s->nready + s->ngrpc >= s->cfg.max_connections) {
            moat_status_set(refusal, MOAT_CODE_RESOURCE_EXHAUSTED, "too_many_connections",
                            "too many connections");
            g->fail_why = "too many connections";
            g->fail_code = MOAT_CODE_RESOURCE_EXHAUSTED;
            return NULL;
        }
        g->pending = false;
        s->grpc_pending--;
        s->ngrpc++;
        uv_timer_stop(&g->timer);
        if (s->cfg.idle_timeout_seconds > 0)
            uv_timer_start(&g->timer, on_idle_timer, (uint64_t)s->cfg.idle_timeout_seconds * 1000u,
                           0);
    }
    stream *st = calloc(1, sizeof(*st));
    /* grpc-timeout 0 is a deadline already past; the rpc layer reads 0 as none. */
    uint64_t deadline = req->has_timeout ? (req->timeout_ms > 0 ? req->timeout_ms : 1) : 0;
    bool opened = false;
    if (st != NULL && req->method == NULL) {
        /* Server reflection: answered here, one answer per request message (no rpc call). */
        st->s = s;
        st->id = (uint32_t)stream_id;
        st->tx = &grpc_transport;
        st->refs = 1;
        moat__metrics_stream(s->metrics, 1);
        opened = true;
    } else if (st != NULL) {
        opened =
            moat__stream_open(st, s, (uint32_t)stream_id, &grpc_transport, req->method, deadline);
    }
    if (!opened) {
        free(st);
        moat_status_set(refusal, MOAT_CODE_RESOURCE_EXHAUSTED, "out_of_memory", "out of memory");
        return NULL;
    }
    st->g = g;
    st->next = g->streams;
    if (g->streams != NULL)
        g->streams->prev = st;
    g->streams = st;
    moat_log(MOAT_LOG_DEBUG, "call_start", "peer=%s grpc_stream=%d method=%s deadline_ms=%llu",
             g->peer, stream_id,
             req->method != NULL ? req->method->name : MOAT_GRPC_REFLECTION_PATH,
             (unsigned long long)deadline);
    return st;
}

static void cb_refused(void *ud, int32_t stream_id, const moat_status *status, int http_status)
{
    grpc_conn *g = ud;
    srv *s = g->s;
    moat__metrics_status(s->metrics, status->code);
    moat_log_limited(&s->logs.grpc_refused, MOAT_LOG_INFO, "grpc_refused",
                     "peer=%s grpc_stream=%d http=%d code=%s reason=%s", g->peer, stream_id,
                     http_status, moat_code_name(status->code), status->reason);
    if (status->code != MOAT_CODE_UNAUTHENTICATED)
        return;
    moat__metrics_hello_refused(s->metrics, "failed");
    if (!g->has_addr)
        return;
    /* A wrong token costs its address, as a failed hello does; past the budget the connection
     * goes, so one address cannot guess tokens at the rate it can open streams. */
    uint64_t now = moat__now_ms();
    moat_throttle_charge(s->failed_hellos, &g->addr, now);
    if (moat_throttle_retry_ms(s->failed_hellos, &g->addr, now) > 0 && g->fail_why == NULL) {
        g->fail_why = "too many failed tokens from this address";
        g->fail_code = MOAT_CODE_RESOURCE_EXHAUSTED;
    }
}

/* One reflection request answered; its answers are small (the schema's descriptors), so they
 * go out without waiting for credit. */
static void reflection_message(stream *st, const uint8_t *data, size_t len)
{
    if (moat_grpc_h2_queued(st->g->h2, (int32_t)st->id) > REFLECTION_QUEUE_MAX) {
        /* A client asking faster than it reads would have moatd queue without bound. */
        moat_status status;
        moat_status_set(&status, MOAT_CODE_RESOURCE_EXHAUSTED, "answers_not_read",
                        "over %u bytes of reflection answers wait to be read",
                        (unsigned)REFLECTION_QUEUE_MAX);
        grpc_end(st, &status);
        return;
    }
    uint8_t *answer = NULL;
    size_t n = 0;
    moat_err err = moat_grpc_reflection_answer(data, len, &answer, &n);
    if (err != MOAT_OK) {
        moat_status status;
        moat_status_set(&status, MOAT_CODE_INVALID_ARGUMENT, "bad_request",
                        "request is not a valid grpc.reflection.v1alpha.ServerReflectionRequest");
        grpc_end(st, &status);
        return;
    }
    uint8_t *block = malloc(MOAT_GRPC_PREFIX_SIZE + n);
    if (block != NULL) {
        moat_grpc_message_prefix(block, (uint32_t)n);
        memcpy(block + MOAT_GRPC_PREFIX_SIZE, answer, n);
        moat_grpc_h2_send(st->g->h2, (int32_t)st->id, block, MOAT_GRPC_PREFIX_SIZE + n);
        mark_dirty(st->g);
    }
    free(answer);
}

static void cb_message(void *ud, void *call, const uint8_t *data, size_t len)
{
    (void)ud;
    stream *st = call;
    if (st->call == NULL) {
        reflection_message(st, data, len);
        return;
    }
    moat__stream_request(st, data, len);
}

static void cb_half_closed(void *ud, void *call, uint64_t messages)
{
    (void)ud;
    stream *st = call;
    moat_status status;
    if (st->call == NULL) {
        moat_status_clear(&status);
        grpc_end(st, &status);
    } else if (messages == 0) {
        moat_status_set(&status, MOAT_CODE_INTERNAL, "missing_request",
                        "the request has no message");
        moat_rpc_call_cancel_with(st->call, &status);
    }
}

static void cb_abort(void *ud, void *call, const moat_status *status)
{
    (void)ud;
    stream *st = call;
    if (st->call == NULL)
        grpc_end(st, status);
    else
        moat_rpc_call_cancel_with(st->call, status);
}

static void cb_writable(void *ud, void *call)
{
    (void)ud;
    stream *st = call;
    if (st->on_credit == NULL)
        return;
    moat__stream_ref(st);
    st->on_credit(st, 0);
    moat__stream_unref(st);
}

/* The stream leaves its connection: h2 never names it again. */
static void cb_closed(void *ud, void *call)
{
    grpc_conn *g = ud;
    stream *st = call;
    if (st->prev != NULL)
        st->prev->next = st->next;
    else
        g->streams = st->next;
    if (st->next != NULL)
        st->next->prev = st->prev;
    st->next = st->prev = NULL;
    st->g = NULL;
    moat__metrics_stream(g->s->metrics, -1);
    if (st->deadline != NULL)
        uv_timer_stop(st->deadline);
    moat__stream_unref(st);
}

static const moat_grpc_h2_callbacks h2_callbacks = {
    cb_token_ok, cb_open, cb_refused, cb_message, cb_half_closed, cb_abort, cb_writable, cb_closed};

/* ---- the socket ----------------------------------------------------------------------------- */

static void on_handle_closed(uv_handle_t *h)
{
    grpc_conn *g = h->data;
    if (--g->open_handles > 0)
        return;
    free(g);
}

static void pending(grpc_conn *g, int64_t delta)
{
    g->pending_write = (size_t)((int64_t)g->pending_write + delta);
    if (g->s->bridge != NULL)
        moat_bridge_budget_charge(g->s->bridge, &g->account, delta);
}

static void grpc_pump(grpc_conn *g);
static void grpc_flush(grpc_conn *g);

static void on_write(uv_write_t *req, int status)
{
    grpc_write *w = (grpc_write *)req;
    grpc_conn *g = w->g;
    pending(g, -(int64_t)w->len);
    free(w);
    if (g->closing)
        return;
    if (status < 0) {
        grpc_close(g, MOAT_CODE_UNAVAILABLE, uv_strerror(status));
        return;
    }
    if (g->pending_write > g->s->cfg.max_pending_bytes / 2)
        return;
    grpc_pump(g);
    /* nghttp2 may hold more that waited for the socket; producers held back may go on. */
    grpc_flush(g);
    if (g->closing || !(g->throttled || g->credit_wanted))
        return;
    bool all = g->throttled;
    g->throttled = g->credit_wanted = false;
    stream *st = g->streams;
    while (st != NULL && !g->closing) {
        moat__stream_ref(st);
        if (st->on_credit != NULL && (all || st->wants_credit)) {
            st->wants_credit = false;
            st->on_credit(st, 0);
        }
        stream *next = st->g == g ? st->next : NULL;
        moat__stream_unref(st);
        st = next;
    }
}

static bool submit(grpc_conn *g, grpc_write *w)
{
    uv_buf_t buf = uv_buf_init((char *)w->data, (unsigned)w->len);
    pending(g, (int64_t)w->len);
    if (uv_write(&w->req, (uv_stream_t *)&g->tcp, &buf, 1, on_write) == 0)
        return true;
    pending(g, -(int64_t)w->len);
    free(w);
    return false;
}

/* Adds bytes to the write being gathered, handing it to libuv first when they would not fit. */
static bool gather(grpc_conn *g, const uint8_t *p, size_t n)
{
    grpc_write *w = g->gather;
    if (w != NULL && w->len + n > w->cap) {
        g->gather = NULL;
        if (!submit(g, w))
            return false;
        w = NULL;
    }
    if (w == NULL) {
        size_t cap = n > GRPC_WRITE_CHUNK ? n : GRPC_WRITE_CHUNK;
        w = malloc(sizeof(*w) + cap);
        if (w == NULL)
            return false;
        w->g = g;
        w->len = 0;
        w->cap = cap;
        g->gather = w;
    }
    memcpy(w->data + w->len, p, n);
    w->len += n;
    return true;
}

static bool gather_submit(grpc_conn *g)
{
    grpc_write *w = g->gather;
    g->gather = NULL;
    return w == NULL || submit(g, w);
}

/* What TLS has to write: gathered like HTTP/2's bytes on h2c. */
static bool tls_out(void *ud, const uint8_t *data, size_t len)
{
    return gather(ud, data, len);
}

/* Hands what nghttp2 has to send (encrypted on TLS, where the handshake's bytes may already
 * wait) to libuv while the socket is not backed up (up to max bytes pending). The reason when
 * the connection cannot go on, else NULL. */
static const char *write_output(grpc_conn *g, size_t max)
{
    /* Before the handshake is done, HTTP/2's bytes (the server's SETTINGS) wait in nghttp2. */
    while ((g->tls == NULL || moat_grpc_tls_ready(g->tls)) &&
           g->pending_write + (g->gather != NULL ? g->gather->len : 0) <= max) {
        const uint8_t *p;
        size_t n;
        if (moat_grpc_h2_pull(g->h2, &p, &n) != MOAT_OK) {
            /* What was gathered is whole frames: it goes out with the close. */
            gather_submit(g);
            return "HTTP/2 session failed";
        }
        if (n == 0)
            break;
        if (!(g->tls != NULL ? moat_grpc_tls_send(g->tls, p, n) : gather(g, p, n)))
            return "write failed";
    }
    return gather_submit(g) ? NULL : "write failed";
}

/* Writes what nghttp2 has to send; stops reading while the socket is backed up; closes the
 * connection when it cannot go on or its session is over. */
static void grpc_flush(grpc_conn *g)
{
    dirty_unlink(g);
    if (g->closing)
        return;
    size_t max = g->s->cfg.max_pending_bytes;
    const char *broken = write_output(g, max);
    charge_queues(g);
    if (broken != NULL) {
        grpc_close(g, MOAT_CODE_UNAVAILABLE, broken);
        return;
    }
    if (g->pending_write > max) {
        g->throttled = true;
        if (g->reading) {
            uv_read_stop((uv_stream_t *)&g->tcp);
            g->reading = false;
        }
    }
    if (g->fail_why != NULL) {
        grpc_close(g, g->fail_code, g->fail_why);
        return;
    }
    if (!moat_grpc_h2_alive(g->h2) && g->pending_write == 0)
        grpc_close(g, MOAT_CODE_OK, "session over");
    else if (g->s->draining && moat_grpc_h2_calls(g->h2) == 0 && g->pending_write == 0)
        grpc_close(g, MOAT_CODE_UNAVAILABLE, "drained");
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    srv *s = ((grpc_conn *)h->data)->s;
    if (s->read_buf_busy) {
        *buf = uv_buf_init(NULL, 0);
        return;
    }
    s->read_buf_busy = true;
    *buf = uv_buf_init(s->read_buf, READ_BUF_SIZE);
}

/* Bytes from the client (decrypted, on TLS) to nghttp2; false once it failed. */
static bool h2_recv(void *ud, const uint8_t *data, size_t len)
{
    grpc_conn *g = ud;
    const char *why = NULL;
    if (moat_grpc_h2_recv(g->h2, data, len, &why) == MOAT_OK)
        return true;
    if (g->fail_why == NULL) {
        g->fail_why = why;
        g->fail_code = MOAT_CODE_INVALID_ARGUMENT;
    }
    return false;
}

static void on_read(uv_stream_t *h, ssize_t nread, const uv_buf_t *buf)
{
    grpc_conn *g = h->data;
    if (buf->base == g->s->read_buf)
        g->s->read_buf_busy = false;
    if (nread == 0 || nread == UV_ENOBUFS)
        return;
    if (nread < 0) {
        grpc_close(g, nread == UV_EOF ? MOAT_CODE_OK : MOAT_CODE_UNAVAILABLE,
                   nread == UV_EOF ? "client closed" : uv_strerror((int)nread));
        return;
    }
    g->last_active_ms = moat__now_ms();
    const char *why = NULL;
    if (g->tls != NULL) {
        moat_err err =
            moat_grpc_tls_recv(g->tls, (const uint8_t *)buf->base, (size_t)nread, h2_recv, g, &why);
        if (err != MOAT_OK && g->fail_why == NULL) {
            g->fail_why = why;
            g->fail_code = err == MOAT_E_CLOSED ? MOAT_CODE_OK : MOAT_CODE_INVALID_ARGUMENT;
        }
    } else {
        h2_recv(g, (const uint8_t *)buf->base, (size_t)nread);
    }
    grpc_flush(g);
}

static void grpc_pump(grpc_conn *g)
{
    if (g->reading || g->closing)
        return;
    if (uv_read_start((uv_stream_t *)&g->tcp, on_alloc, on_read) == 0)
        g->reading = true;
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    (void)status;
    grpc_conn *g = req->data;
    free(req);
    uv_close((uv_handle_t *)&g->tcp, on_handle_closed);
}

/* Ends the connection: its open calls are cancelled (their Ends cannot reach anyone once the
 * session is gone), what nghttp2 still had queued (a GOAWAY) is written, then the socket
 * closes. */
static void grpc_close(grpc_conn *g, moat_code code, const char *why)
{
    if (g->closing)
        return;
    srv *s = g->s;
    moat_log_level level =
        code == MOAT_CODE_OK || code == MOAT_CODE_UNAVAILABLE ? MOAT_LOG_INFO : MOAT_LOG_WARN;
    moat_log_limited(&s->logs.grpc_refused, level, "grpc_close", "peer=%s code=%s reason=\"%s\"",
                     g->peer, moat_code_name(code), why);
    /* Its last frames (a GOAWAY saying why) go out before it closes, however backed up. */
    moat_grpc_h2_go_away(g->h2, code == MOAT_CODE_RESOURCE_EXHAUSTED
                                    ? MOAT_GRPC_H2_ENHANCE_YOUR_CALM
                                    : MOAT_GRPC_H2_NO_ERROR);
    write_output(g, SIZE_MAX);
    if (g->tls != NULL) {
        moat_grpc_tls_bye(g->tls);
        gather_submit(g);
        moat_grpc_tls_free(g->tls);
        g->tls = NULL;
    }
    g->closing = true;
    dirty_unlink(g);
    moat_grpc_h2_free(g->h2);
    g->h2 = NULL;
    charge_queues(g);
    if (g->prev != NULL)
        g->prev->next = g->next;
    else
        s->grpc_conns = g->next;
    if (g->next != NULL)
        g->next->prev = g->prev;
    if (g->pending)
        s->grpc_pending--;
    else
        s->ngrpc--;
    moat__metrics_conn(s->metrics, -1);
    uv_timer_stop(&g->timer);
    uv_close((uv_handle_t *)&g->timer, on_handle_closed);
    if (g->reading)
        uv_read_stop((uv_stream_t *)&g->tcp);
    g->reading = false;
    uv_shutdown_t *req = malloc(sizeof(*req));
    if (req != NULL) {
        req->data = g;
        if (uv_shutdown(req, (uv_stream_t *)&g->tcp, on_shutdown) == 0)
            return;
        free(req);
    }
    uv_close((uv_handle_t *)&g->tcp, on_handle_closed);
}

static void on_idle_timer(uv_timer_t *t)
{
    grpc_conn *g = t->data;
    if (g->pending && g->streams != NULL) {
        /* A probe's health Watch, which needs no token: it stays while it runs (the pending
         * budget still bounds how many such connections there are). */
        uv_timer_start(&g->timer, on_idle_timer, (uint64_t)g->s->cfg.hello_timeout_seconds * 1000u,
                       0);
        return;
    }
    if (g->pending) {
        moat__metrics_hello_refused(g->s->metrics, "timeout");
        g->fail_why = "no call with the token in time";
        g->fail_code = MOAT_CODE_DEADLINE_EXCEEDED;
        grpc_flush(g);
        return;
    }
    uint64_t idle_ms = (uint64_t)g->s->cfg.idle_timeout_seconds * 1000u;
    if (idle_ms == 0)
        return;
    uint64_t quiet = moat__now_ms() - g->last_active_ms;
    if (g->streams == NULL && quiet >= idle_ms) {
        g->fail_why = "idle timeout";
        g->fail_code = MOAT_CODE_UNAVAILABLE;
        grpc_flush(g);
        return;
    }
    uv_timer_start(&g->timer, on_idle_timer, quiet < idle_ms ? idle_ms - quiet : idle_ms, 0);
}

void moat__grpc_accept(uv_stream_t *server)
{
    srv *s = server->data;
    grpc_conn *g = calloc(1, sizeof(*g));
    if (g == NULL)
        return;
    g->s = s;
    g->account.limit = (size_t)(s->cfg.memory_budget_bytes / 4);
    uv_tcp_init(s->loop, &g->tcp);
    g->tcp.data = g;
    g->open_handles = 1;
    if (uv_accept(server, (uv_stream_t *)&g->tcp) != 0) {
        uv_close((uv_handle_t *)&g->tcp, on_handle_closed);
        return;
    }
    uv_tcp_nodelay(&g->tcp, 1);
    moat__peer_address(&g->tcp, g->peer, sizeof(g->peer), &g->addr, &g->has_addr);
    uint64_t now = moat__now_ms();
    const char *refuse = NULL;
    if (s->draining)
        refuse = "server is shutting down";
    else if (g->has_addr && moat_throttle_retry_ms(s->failed_hellos, &g->addr, now) > 0) {
        refuse = "too many failed tokens from this address";
        moat__metrics_hello_refused(s->metrics, "throttled");
    }
    moat_grpc_h2_limits limits = {
        .max_concurrent_streams = s->cfg.max_streams_per_connection,
        .max_message = s->cfg.max_frame_size,
        .max_header_list = GRPC_MAX_HEADER_LIST,
        .initial_window = s->cfg.initial_window,
        .token_required = s->cfg.token[0] != '\0',
    };
    g->h2 = refuse == NULL ? moat_grpc_h2_new(&limits, &h2_callbacks, g) : NULL;
    if (g->h2 != NULL && s->cfg.grpc_tls != NULL &&
        (g->tls = moat_grpc_tls_new(s->cfg.grpc_tls, tls_out, g)) == NULL) {
        moat_grpc_h2_free(g->h2);
        g->h2 = NULL;
    }
    if (g->h2 == NULL) {
        moat_log_limited(&s->logs.grpc_refused, MOAT_LOG_INFO, "grpc_refused",
                         "peer=%s reason=\"%s\"", g->peer,
                         refuse != NULL ? refuse : "out of memory");
        uv_close((uv_handle_t *)&g->tcp, on_handle_closed);
        return;
    }
    /* Over budget, the oldest connection still without its call goes, as the oldest silent hello
     * does on the framed listener: refusing the newest would let a few silent peers hold the
     * door shut until their timeout. */
    if (s->grpc_pending >= s->cfg.max_pending_hellos) {
        grpc_conn *oldest = NULL;
        for (grpc_conn *o = s->grpc_conns; o != NULL; o = o->next)
            if (o->pending)
                oldest = o;
        if (oldest != NULL) {
            moat__metrics_hello_refused(s->metrics, "evicted");
            grpc_close(oldest, MOAT_CODE_RESOURCE_EXHAUSTED,
                       "closed to make room for a newer connection");
        }
    }
    uv_timer_init(s->loop, &g->timer);
    g->timer.data = g;
    g->open_handles = 2;
    g->last_active_ms = now;
    g->next = s->grpc_conns;
    if (s->grpc_conns != NULL)
        s->grpc_conns->prev = g;
    s->grpc_conns = g;
    g->pending = true;
    s->grpc_pending++;
    moat__metrics_conn(s->metrics, 1);
    moat_log(MOAT_LOG_DEBUG, "grpc_open", "peer=%s", g->peer);
    uv_timer_start(&g->timer, on_idle_timer, (uint64_t)s->cfg.hello_timeout_seconds * 1000u, 0);
    /* The server's SETTINGS go first (on TLS, once the handshake is done). */
    grpc_flush(g);
    grpc_pump(g);
}

void moat__grpc_flush_all(srv *s)
{
    while (s->grpc_dirty != NULL)
        grpc_flush(s->grpc_dirty);
}

void moat__grpc_drain(srv *s)
{
    grpc_conn *g = s->grpc_conns;
    while (g != NULL) {
        grpc_conn *next = g->next;
        moat_grpc_h2_go_away(g->h2, MOAT_GRPC_H2_NO_ERROR);
        grpc_flush(g);
        g = next;
    }
}

void moat__grpc_close_all(srv *s)
{
    while (s->grpc_conns != NULL)
        grpc_close(s->grpc_conns, MOAT_CODE_UNAVAILABLE, "server shut down");
}
