/* Proxy mode (cluster_route = proxy, docs/CLUSTER.md "Routing"): a call for a session another
 * node holds is opened again on that node, over one framed-protocol connection per peer that
 * this node keeps (moatd's own loop as the client, the cluster's token in its Hello), and its
 * messages are relayed both ways. Credit is relayed too: the owner may send this node only what
 * the client's window lets it write on at once (as an Exec stream gives execd credit), and input
 * goes to the owner only within the owner's window for it, its credit back to the client as it
 * leaves; so a relayed call holds at most a window each way here, whatever its size. A call
 * that came in through another node's proxy is never relayed again: one hop at most. Loop
 * thread only. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster/membership.h"
#include "handlers.h"

typedef struct peer peer;

/* Input of an Interactive call waiting for the owner's window. */
typedef struct held_input {
    struct held_input *next;
    size_t len;    /* packed again for the owner */
    size_t credit; /* what the client was charged for it, given back as it leaves */
    uint8_t data[];
} held_input;

/* One relayed call. */
typedef struct proxy_call {
    stream *st; /* referenced while relayed */
    peer *p;
    uint32_t id;     /* on the peer's connection; 0 until the Call went out */
    moat_window up;  /* the owner's credit for our input messages */
    int64_t granted; /* what the owner may still send us: what we granted, less what came */
    held_input *held, *held_tail;
    struct proxy_call *next, *prev;
} proxy_call;

typedef enum peer_state { PEER_CONNECTING, PEER_HELLO, PEER_READY, PEER_CLOSING } peer_state;

/* One connection to another node, shared by every call relayed there. */
struct peer {
    srv *s;
    peer *next;
    char address[MOAT_NODE_ADDRESS_MAX];
    peer_state state;
    bool resolving; /* gai in flight: its callback frees a closed peer */
    bool draining;  /* it sent GoAway: its calls finish, new ones go to a new connection */
    uv_getaddrinfo_t gai;
    uv_connect_t connect;
    uv_tcp_t tcp;
    bool tcp_open;
    /* A peer that takes the connection and never answers its Hello must not hold calls that
     * have no deadline: hello_timeout_seconds, as a client of ours gets. */
    uv_timer_t hello_timer;
    bool timer_open;
    moat_wire_decoder dec;
    char read_buf[64 * 1024];
    uint32_t next_id;        /* odd, increasing, as a client's are */
    uint32_t initial_window; /* both ways, from its HelloAck */
    proxy_call *calls;
};

typedef struct proxy_pool {
    peer *peers;
} proxy_pool;

typedef struct write_req {
    uv_write_t req;
    size_t len;
    uint8_t data[];
} write_req;

static void call_detach(proxy_call *pc);

static void on_written(uv_write_t *req, int status)
{
    (void)status; /* a failed write shows up as a read error or EOF: the peer closes */
    free(req->data);
}

/* Encodes and writes one frame to the peer. */
static bool peer_send(peer *p, const moat_frame *f)
{
    if (!p->tcp_open || p->state == PEER_CLOSING)
        return false;
    size_t n = moat_wire_encoded_size(f);
    write_req *w = n > 0 ? malloc(sizeof(*w) + n) : NULL;
    if (w == NULL)
        return false;
    size_t written = 0;
    if (moat_wire_encode(f, w->data, n, &written) != MOAT_OK) {
        free(w);
        return false;
    }
    w->req.data = w;
    uv_buf_t buf = uv_buf_init((char *)w->data, (unsigned)written);
    if (uv_write(&w->req, (uv_stream_t *)&p->tcp, &buf, 1, on_written) != 0) {
        free(w);
        return false;
    }
    return true;
}

/* A Message frame whose payload is msg, packed. */
static bool peer_send_message(peer *p, uint32_t id, const ProtobufCMessage *msg, size_t len)
{
    uint8_t small[512];
    uint8_t *payload = len <= sizeof(small) ? small : malloc(len);
    if (payload == NULL)
        return false;
    protobuf_c_message_pack(msg, payload);
    moat_frame f = {0};
    f.stream_id = id;
    f.kind = MOAT_FRAME_MESSAGE;
    f.u.message.payload = (moat_slice){payload, len};
    bool ok = peer_send(p, &f);
    if (payload != small)
        free(payload);
    return ok;
}

static void peer_send_window(peer *p, uint32_t id, uint32_t increment)
{
    moat_frame f = {0};
    f.stream_id = id;
    f.kind = MOAT_FRAME_WINDOW_UPDATE;
    f.u.window_update.increment = increment;
    peer_send(p, &f);
}

/* ------------------------------------------------------------ one call */

/* Grants the owner what the client lets this stream write now, less what it holds already. */
static void call_top_up(proxy_call *pc)
{
    if (pc->id == 0)
        return;
    uint64_t want = moat__stream_credit_target(pc->st);
    if ((int64_t)want > pc->granted) {
        uint64_t inc = (uint64_t)((int64_t)want - pc->granted);
        if (inc > MOAT_WIRE_MAX_WINDOW)
            inc = MOAT_WIRE_MAX_WINDOW;
        pc->granted += (int64_t)inc;
        peer_send_window(pc->p, pc->id, (uint32_t)inc);
    }
}

static void on_credit(stream *st, uint32_t increment)
{
    (void)increment;
    if (st->hctx != NULL)
        call_top_up(st->hctx);
}

/* Sends held input within the owner's window; each message's credit goes back to the client as
 * it leaves. */
static void call_flush_input(proxy_call *pc)
{
    while (pc->held != NULL && pc->id != 0) {
        held_input *h = pc->held;
        if (moat_window_consume(&pc->up, (uint32_t)h->len) != MOAT_OK)
            return;
        moat_frame f = {0};
        f.stream_id = pc->id;
        f.kind = MOAT_FRAME_MESSAGE;
        f.u.message.payload = (moat_slice){h->data, h->len};
        peer_send(pc->p, &f);
        pc->held = h->next;
        if (pc->held == NULL)
            pc->held_tail = NULL;
        moat_rpc_call_input_done(pc->st->call, h->credit);
        free(h);
    }
}

static void on_input(moat_rpc_call *call, const ProtobufCMessage *msg, size_t len, void *arg)
{
    (void)call;
    proxy_call *pc = arg;
    held_input *h = malloc(sizeof(*h) + len);
    if (h == NULL) {
        moat_rpc_call_fail(pc->st->call, MOAT_CODE_RESOURCE_EXHAUSTED, "out_of_memory",
                           "out of memory");
        return;
    }
    h->next = NULL;
    h->credit = len;
    h->len = protobuf_c_message_pack(msg, h->data);
    if (pc->held_tail != NULL)
        pc->held_tail->next = h;
    else
        pc->held = h;
    pc->held_tail = h;
    call_flush_input(pc);
}

/* The call is over here before the owner's End: the owner's call is cancelled too, so its
 * command stops there. */
static void call_abandon(proxy_call *pc, const char *why)
{
    if (pc->id != 0) {
        moat_frame f = {0};
        f.stream_id = pc->id;
        f.kind = MOAT_FRAME_CANCEL;
        f.u.cancel.reason = moat_slice_str(why);
        peer_send(pc->p, &f);
    }
    call_detach(pc);
}

static void on_cancel(moat_rpc_call *call, moat_code code, void *arg)
{
    (void)call;
    call_abandon(arg, code == MOAT_CODE_DEADLINE_EXCEEDED ? "deadline exceeded at the proxy"
                                                          : "cancelled by the client");
}

/* The call leaves its peer and its stream: no more relaying either way. */
static void call_detach(proxy_call *pc)
{
    stream *st = pc->st;
    if (pc->prev != NULL)
        pc->prev->next = pc->next;
    else
        pc->p->calls = pc->next;
    if (pc->next != NULL)
        pc->next->prev = pc->prev;
    while (pc->held != NULL) {
        held_input *h = pc->held;
        pc->held = h->next;
        free(h);
    }
    st->hctx = NULL;
    st->on_credit = NULL;
    moat_rpc_call_on_cancel(st->call, NULL, NULL);
    moat_rpc_call_on_input(st->call, NULL, NULL);
    free(pc);
    moat__stream_unref(st);
}

static void call_fail(proxy_call *pc, const char *why)
{
    moat_status status;
    moat_status_set(&status, MOAT_CODE_UNAVAILABLE, "owner_unreachable",
                    "cannot relay the call to the session's node at %s: %s", pc->p->address, why);
    moat_status_add_detail(&status, "owner_address", pc->p->address);
    stream *st = pc->st;
    moat__stream_ref(st);
    call_abandon(pc, "the proxy ended the call");
    moat_rpc_call_end(st->call, &status);
    moat__stream_unref(st);
}

/* Opens the call on the peer: its Call frame with the deadline left, and its request. */
static void call_start(proxy_call *pc)
{
    peer *p = pc->p;
    moat_rpc_call *call = pc->st->call;
    const moat_rpc_method *m = moat_rpc_call_method(call);
    const ProtobufCMessage *req = moat_rpc_call_get_data(call);
    uint64_t deadline = moat_rpc_call_deadline(call), now = moat__now_ms();
    moat_frame f = {0};
    f.stream_id = p->next_id;
    f.kind = MOAT_FRAME_CALL;
    f.u.call.method = moat_slice_str(m->name);
    f.u.call.deadline_ms = deadline == 0 ? 0 : deadline > now ? deadline - now : 1;
    size_t len = protobuf_c_message_get_packed_size(req);
    if (!peer_send(p, &f) || !peer_send_message(p, p->next_id, req, len)) {
        call_fail(pc, "the connection failed");
        return;
    }
    pc->id = p->next_id;
    p->next_id += 2;
    moat_window_init(&pc->up, p->initial_window);
    /* A client-streaming call's first message is given back at once by the owner's transport
     * (moat__stream_request): it does not count against the input window. */
    pc->granted = p->initial_window;
    call_top_up(pc);
    call_flush_input(pc);
}

static proxy_call *call_find(peer *p, uint32_t id)
{
    for (proxy_call *pc = p->calls; pc != NULL; pc = pc->next)
        if (pc->id == id)
            return pc;
    return NULL;
}

/* A response message from the owner, handed on as it came. */
static void call_message(proxy_call *pc, moat_slice payload)
{
    stream *st = pc->st;
    const moat_rpc_method *m = moat_rpc_call_method(st->call);
    pc->granted -= (int64_t)payload.len;
    ProtobufCMessage *msg = protobuf_c_message_unpack(m->response, NULL, payload.len, payload.data);
    if (msg == NULL) {
        call_fail(pc, "it sent a message that does not decode");
        return;
    }
    moat_err rc = moat_rpc_call_send(st->call, msg);
    protobuf_c_message_free_unpacked(msg, NULL);
    if (rc != MOAT_OK) {
        moat__stream_ref(st);
        call_abandon(pc, "the proxy could not relay a message");
        if (moat__running(st))
            moat_rpc_call_fail(st->call, MOAT_CODE_INTERNAL, "send_failed", "cannot relay: %s",
                               moat_strerror(rc));
        moat__stream_unref(st);
        return;
    }
    /* Running low: top up once this has been written. */
    if (pc->granted < (int64_t)st->initial_window / 2)
        moat__stream_want_credit(st);
}

static void copy_text(moat_slice s, char *out, size_t cap)
{
    size_t n = s.len < cap - 1 ? s.len : cap - 1;
    if (n > 0) /* an empty field decodes to no data at all */
        memcpy(out, s.data, n);
    out[n] = '\0';
}

/* The owner's End is the call's. */
static void call_end(proxy_call *pc, const moat_frame *f)
{
    moat_status status;
    moat_status_clear(&status);
    status.code = f->u.end.code;
    copy_text(f->u.end.message, status.message, sizeof(status.message));
    copy_text(f->u.end.reason, status.reason, sizeof(status.reason));
    for (size_t i = 0; i < f->u.end.detail_count && i < MOAT_STATUS_DETAILS_MAX; i++) {
        char key[MOAT_STATUS_KEY_MAX], value[MOAT_STATUS_VALUE_MAX];
        copy_text(f->u.end.details[i].key, key, sizeof(key));
        copy_text(f->u.end.details[i].value, value, sizeof(value));
        moat_status_add_detail(&status, key, value);
    }
    stream *st = pc->st;
    moat__stream_ref(st);
    call_detach(pc);
    moat_rpc_call_end(st->call, &status);
    moat__stream_unref(st);
}

/* ------------------------------------------------------------ the connection */

/* Freed once both of its handles have closed. */
static void peer_free(uv_handle_t *h)
{
    peer *p = h->data;
    if (h == (uv_handle_t *)&p->tcp)
        p->tcp_open = false;
    else
        p->timer_open = false;
    if (p->tcp_open || p->timer_open)
        return;
    moat_wire_decoder_free(&p->dec);
    free(p);
}

/* Leaves the pool and closes; its calls end UNAVAILABLE owner_unreachable. */
static void peer_close(peer *p, const char *why)
{
    if (p->state == PEER_CLOSING)
        return;
    p->state = PEER_CLOSING;
    proxy_pool *pool = p->s->proxy;
    for (peer **pp = &pool->peers; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == p) {
            *pp = p->next;
            break;
        }
    }
    while (p->calls != NULL)
        call_fail(p->calls, why);
    if (p->tcp_open) {
        p->tcp.data = p;
        uv_close((uv_handle_t *)&p->tcp, peer_free);
        if (p->timer_open)
            uv_close((uv_handle_t *)&p->hello_timer, peer_free);
    } else if (p->resolving) {
        uv_cancel((uv_req_t *)&p->gai);
    } else {
        moat_wire_decoder_free(&p->dec);
        free(p);
    }
}

static void peer_frame(peer *p, const moat_frame *f)
{
    proxy_call *pc = f->stream_id != 0 ? call_find(p, f->stream_id) : NULL;
    switch (f->kind) {
    case MOAT_FRAME_HELLO_ACK:
        if (p->state != PEER_HELLO) {
            peer_close(p, "a second HelloAck");
            return;
        }
        p->state = PEER_READY;
        uv_timer_stop(&p->hello_timer);
        p->initial_window = f->u.hello_ack.initial_window;
        moat_wire_decoder_set_max(&p->dec, f->u.hello_ack.max_frame_size);
        for (proxy_call *c = p->calls, *next; c != NULL; c = next) {
            next = c->next; /* a failed start detaches it */
            call_start(c);
        }
        return;
    case MOAT_FRAME_MESSAGE:
        if (pc != NULL)
            call_message(pc, f->u.message.payload);
        return;
    case MOAT_FRAME_END:
        if (pc != NULL)
            call_end(pc, f);
        return;
    case MOAT_FRAME_WINDOW_UPDATE:
        if (pc != NULL && moat_window_grant(&pc->up, f->u.window_update.increment) == MOAT_OK)
            call_flush_input(pc);
        return;
    case MOAT_FRAME_PING: {
        moat_frame pong = {0};
        pong.kind = MOAT_FRAME_PONG;
        pong.u.pong.payload = f->u.ping.payload;
        peer_send(p, &pong);
        return;
    }
    case MOAT_FRAME_GO_AWAY:
        p->draining = true;
        return;
    default:
        return;
    }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    peer *p = h->data;
    *buf = uv_buf_init(p->read_buf, sizeof(p->read_buf));
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    peer *p = s->data;
    if (nread < 0) {
        peer_close(p, nread == UV_EOF ? "it closed the connection" : uv_strerror((int)nread));
        return;
    }
    const uint8_t *in = (const uint8_t *)buf->base;
    size_t left = (size_t)nread;
    while (left > 0 && p->state != PEER_CLOSING) {
        size_t used = 0;
        moat_slice body;
        moat_err err = moat_wire_decoder_feed(&p->dec, in, left, &used, &body);
        in += used;
        left -= used;
        if (err == MOAT_E_AGAIN)
            break;
        moat_frame f;
        if (err != MOAT_OK || moat_wire_frame_decode(body, &f) != MOAT_OK) {
            peer_close(p, "it sent a frame that does not decode");
            return;
        }
        peer_frame(p, &f);
    }
}

static void on_connected(uv_connect_t *req, int status)
{
    peer *p = req->data;
    if (p->state == PEER_CLOSING)
        return;
    if (status != 0) {
        peer_close(p, uv_strerror(status));
        return;
    }
    p->state = PEER_HELLO;
    moat_frame hello = {0};
    hello.kind = MOAT_FRAME_HELLO;
    hello.u.hello.protocol_version = MOAT_WIRE_PROTOCOL_VERSION;
    hello.u.hello.client_name = moat_slice_str(MOAT__PROXY_CLIENT_NAME);
    hello.u.hello.token = moat_slice_str(p->s->cfg.token);
    if (!peer_send(p, &hello) || uv_read_start((uv_stream_t *)&p->tcp, on_alloc, on_read) != 0)
        peer_close(p, "cannot start the connection");
}

static void on_hello_timeout(uv_timer_t *t)
{
    peer_close(t->data, "no answer to its hello in time");
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    peer *p = req->data;
    p->resolving = false;
    if (p->state == PEER_CLOSING) {
        uv_freeaddrinfo(res);
        moat_wire_decoder_free(&p->dec);
        free(p);
        return;
    }
    if (status != 0 || res == NULL) {
        uv_freeaddrinfo(res);
        peer_close(p, status != 0 ? uv_strerror(status) : "no address");
        return;
    }
    uv_tcp_init(p->s->loop, &p->tcp);
    p->tcp.data = p;
    p->tcp_open = true;
    /* A peer whose host vanished sends no FIN: keepalives find out. */
    uv_tcp_keepalive(&p->tcp, 1, 5);
    uv_timer_init(p->s->loop, &p->hello_timer);
    p->hello_timer.data = p;
    p->timer_open = true;
    uv_timer_start(&p->hello_timer, on_hello_timeout,
                   (uint64_t)p->s->cfg.hello_timeout_seconds * 1000, 0);
    p->connect.data = p;
    if (uv_tcp_connect(&p->connect, &p->tcp, res->ai_addr, on_connected) != 0)
        peer_close(p, "cannot connect");
    uv_freeaddrinfo(res);
}

/* The pool's connection to address, opened now if there is none. NULL when out of memory or the
 * address is not host:port. */
static peer *peer_get(srv *s, const char *address)
{
    proxy_pool *pool = s->proxy;
    for (peer *p = pool->peers; p != NULL; p = p->next)
        if (!p->draining && strcmp(p->address, address) == 0)
            return p;
    char host[MOAT_NODE_ADDRESS_MAX], port[8];
    uint16_t port_n;
    if (moat_server_split_hostport(address, host, sizeof(host), &port_n) != MOAT_OK)
        return NULL;
    peer *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return NULL;
    p->s = s;
    snprintf(p->address, sizeof(p->address), "%s", address);
    p->next_id = 1;
    moat_wire_decoder_init(&p->dec, MOAT_WIRE_PREHELLO_MAX_FRAME);
    p->gai.data = p;
    snprintf(port, sizeof(port), "%u", port_n);
    struct addrinfo hints = {0};
    hints.ai_socktype = SOCK_STREAM;
    p->resolving = true;
    if (uv_getaddrinfo(s->loop, &p->gai, on_resolved, host, port, &hints) != 0) {
        moat_wire_decoder_free(&p->dec);
        free(p);
        return NULL;
    }
    p->next = pool->peers;
    pool->peers = p;
    return p;
}

/* ------------------------------------------------------------ entry points */

bool moat__proxy_route(stream *st, const moat_status *status)
{
    srv *s = st->s;
    const char *address = moat_status_detail_get(status, "owner_address");
    if (s->proxy == NULL || !moat__running(st) || strcmp(status->reason, "session_moved") != 0 ||
        address == NULL || (st->c != NULL && st->c->from_proxy))
        return false;
    peer *p = peer_get(s, address);
    proxy_call *pc = p != NULL ? calloc(1, sizeof(*pc)) : NULL;
    if (pc == NULL) {
        moat_rpc_call_fail(st->call, MOAT_CODE_UNAVAILABLE, "owner_unreachable",
                           "cannot relay the call to %s", address);
        return true;
    }
    pc->st = st;
    pc->p = p;
    moat__stream_ref(st);
    pc->next = p->calls;
    if (p->calls != NULL)
        p->calls->prev = pc;
    p->calls = pc;
    st->hctx = pc;
    st->on_credit = on_credit;
    moat_rpc_call_on_cancel(st->call, on_cancel, pc);
    if (moat_rpc_call_method(st->call)->client_streaming)
        moat_rpc_call_on_input(st->call, on_input, pc);
    if (p->state == PEER_READY)
        call_start(pc);
    return true;
}

moat_err moat__proxy_init(srv *s)
{
    if (s->cfg.cluster_etcd_endpoints[0] == '\0' || strcmp(s->cfg.cluster_route, "proxy") != 0)
        return MOAT_OK;
    s->proxy = calloc(1, sizeof(proxy_pool));
    return s->proxy != NULL ? MOAT_OK : MOAT_E_NOMEM;
}

void moat__proxy_close(srv *s)
{
    proxy_pool *pool = s->proxy;
    if (pool == NULL)
        return;
    while (pool->peers != NULL)
        peer_close(pool->peers, "moatd is shutting down");
    free(pool);
    s->proxy = NULL;
}
