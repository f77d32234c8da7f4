/* Calls to other nodes of the cluster over pooled framed-protocol connections (cluster_peer.h,
 * docs/CLUSTER.md "Between nodes"). The pool, its connections and their calls belong to the
 * loop; a worker's unary call reaches it through cluster_peer_unary.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster/membership.h"
#include "cluster_peer.h"

/* Past this stream id a connection takes no new calls (ids are odd and increasing, 32 bits):
 * the calls it has finish, and new ones go to a new connection. */
#define PEER_ID_DRAIN 0x80000000u

typedef struct peer_conn peer_conn;

typedef struct peer_pool {
    srv *s;
    peer_conn *conns;
    peer_inbox *inbox; /* workers' unary calls (cluster_peer_unary.c) */
} peer_pool;

typedef enum peer_state { PEER_DIALING, PEER_HELLO, PEER_READY, PEER_CLOSING } peer_state;

/* One call in a list: a connection's waiting calls, FIFO, or its started ones. */
typedef struct call_list {
    peer_call *head, *tail;
} call_list;

struct peer_call {
    peer_conn *conn;
    const peer_call_ops *ops;
    void *ud;
    uint32_t id; /* on the connection; 0 while it waits */
    uint64_t deadline_at;
    const char *method; /* in req's allocation */
    size_t req_len;
    uint8_t *req;         /* the request until it is sent, then NULL */
    bool *failed_opening; /* set while moat__peer_call_open runs: a failure is its NULL */
    peer_call *next, *prev;
};

struct peer_conn {
    peer_pool *pool;
    peer_conn *next;
    char address[MOAT_NODE_ADDRESS_MAX];
    peer_state state;
    bool resolving; /* gai in flight: the connection is freed after its callback */
    bool draining;  /* GoAway, or its ids are used up: takes no new call */
    bool goaway;    /* starts no waiting call either: the peer would refuse it */
    uv_getaddrinfo_t gai;
    uv_connect_t connect;
    uv_tcp_t tcp;
    bool tcp_open;
    /* From the dial to the HelloAck: a peer that takes the connection and never answers its
     * Hello holds no call past it (hello_timeout_seconds, as a client of ours gets). */
    uv_timer_t hello_timer;
    bool timer_open;
    moat_wire_decoder dec;
    char read_buf[64 * 1024];
    uint32_t next_id;        /* odd, increasing, as a client's are */
    uint32_t initial_window; /* both ways, from its HelloAck */
    uint32_t max_streams;    /* the HelloAck's, this node's own until then */
    uint32_t nwaiting, nactive;
    call_list waiting, active;
    uint64_t pong_max; /* the highest call id a Pong came back for */
};

typedef struct write_req {
    uv_write_t req;
    uint8_t data[];
} write_req;

static void conn_close(peer_conn *pc, const char *why);

/* ------------------------------------------------------------ frames */

static void on_written(uv_write_t *req, int status)
{
    (void)status; /* a failed write shows up as a read error or EOF: the connection closes */
    free(req->data);
}

static bool conn_send(peer_conn *pc, const moat_frame *f)
{
    if (!pc->tcp_open || pc->state == PEER_CLOSING)
        return false;
    size_t n = moat_wire_encoded_size(f), written = 0;
    write_req *w = n > 0 ? malloc(sizeof(*w) + n) : NULL;
    if (w == NULL)
        return false;
    if (moat_wire_encode(f, w->data, n, &written) != MOAT_OK) {
        free(w);
        return false;
    }
    w->req.data = w;
    uv_buf_t buf = uv_buf_init((char *)w->data, (unsigned)written);
    if (uv_write(&w->req, (uv_stream_t *)&pc->tcp, &buf, 1, on_written) != 0) {
        free(w);
        return false;
    }
    return true;
}

static void copy_text(moat_slice s, char *out, size_t cap)
{
    size_t n = s.len < cap - 1 ? s.len : cap - 1;
    if (n > 0) /* an empty field decodes to no data at all */
        memcpy(out, s.data, n);
    out[n] = '\0';
}

/* The peer's End as a status: code, reason, message and details as it sent them. */
static void end_status(const moat_frame *f, moat_status *status)
{
    moat_status_clear(status);
    status->code = f->u.end.code;
    copy_text(f->u.end.message, status->message, sizeof(status->message));
    copy_text(f->u.end.reason, status->reason, sizeof(status->reason));
    for (size_t i = 0; i < f->u.end.detail_count; i++) {
        char key[MOAT_STATUS_KEY_MAX], value[MOAT_STATUS_VALUE_MAX];
        copy_text(f->u.end.details[i].key, key, sizeof(key));
        copy_text(f->u.end.details[i].value, value, sizeof(value));
        moat_status_add_detail(status, key, value);
    }
}

/* ------------------------------------------------------------ calls */

static void list_push(call_list *l, peer_call *c)
{
    c->next = NULL;
    c->prev = l->tail;
    if (l->tail != NULL)
        l->tail->next = c;
    else
        l->head = c;
    l->tail = c;
}

static void list_remove(call_list *l, peer_call *c)
{
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        l->head = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    else
        l->tail = c->prev;
}

static void call_unlink(peer_call *c)
{
    peer_conn *pc = c->conn;
    if (c->id != 0) {
        list_remove(&pc->active, c);
        pc->nactive--;
    } else {
        list_remove(&pc->waiting, c);
        pc->nwaiting--;
    }
}

static void call_free(peer_call *c)
{
    free(c->req);
    free(c);
}

static void conn_pump(peer_conn *pc);

/* The call leaves its connection and is reported over; the next waiting call may start. */
static void call_finish(peer_call *c, const moat_status *end, const char *failed)
{
    peer_conn *pc = c->conn;
    call_unlink(c);
    if (c->failed_opening != NULL)
        *c->failed_opening = true;
    else
        c->ops->ended(c, c->ud, end, failed);
    call_free(c);
    conn_pump(pc);
}

/* Sends the Call, with what is left of its deadline, and its request. */
static void call_start(peer_call *c)
{
    peer_conn *pc = c->conn;
    uint64_t now = moat__now_ms();
    moat_frame f = {0};
    f.stream_id = pc->next_id;
    f.kind = MOAT_FRAME_CALL;
    f.u.call.method = moat_slice_str(c->method);
    f.u.call.deadline_ms = c->deadline_at == 0    ? 0
                           : c->deadline_at > now ? c->deadline_at - now
                                                  : 1;
    moat_frame msg = {0};
    msg.stream_id = pc->next_id;
    msg.kind = MOAT_FRAME_MESSAGE;
    msg.u.message.payload = (moat_slice){c->req, c->req_len};
    if (!conn_send(pc, &f) || !conn_send(pc, &msg)) {
        conn_close(pc, "cannot write to it");
        return;
    }
    list_remove(&pc->waiting, c);
    pc->nwaiting--;
    c->id = pc->next_id;
    list_push(&pc->active, c);
    pc->nactive++;
    pc->next_id += 2;
    if (pc->next_id >= PEER_ID_DRAIN)
        pc->draining = true;
    free(c->req);
    c->req = NULL;
    c->method = NULL;
    /* Its Pong says the peer's loop has read the call (moat__peer_call_heard). */
    moat_frame ping = {0};
    ping.kind = MOAT_FRAME_PING;
    ping.u.ping.payload = c->id;
    conn_send(pc, &ping);
    c->ops->started(c, c->ud, pc->initial_window);
}

/* Starts waiting calls while the peer takes more. */
static void conn_pump(peer_conn *pc)
{
    while (pc->state == PEER_READY && !pc->goaway && pc->waiting.head != NULL &&
           pc->nactive < pc->max_streams)
        call_start(pc->waiting.head);
}

static peer_call *call_find(peer_conn *pc, uint32_t id)
{
    for (peer_call *c = pc->active.head; c != NULL; c = c->next)
        if (c->id == id)
            return c;
    return NULL;
}

bool moat__peer_call_heard(const peer_call *c)
{
    return c->id != 0 && c->conn->pong_max >= c->id;
}

bool moat__peer_call_send(peer_call *c, moat_slice payload)
{
    moat_frame f = {0};
    f.stream_id = c->id;
    f.kind = MOAT_FRAME_MESSAGE;
    f.u.message.payload = payload;
    return c->id != 0 && conn_send(c->conn, &f);
}

void moat__peer_call_window(peer_call *c, uint32_t increment)
{
    if (c->id == 0 || increment == 0)
        return;
    moat_frame f = {0};
    f.stream_id = c->id;
    f.kind = MOAT_FRAME_WINDOW_UPDATE;
    f.u.window_update.increment = increment;
    conn_send(c->conn, &f);
}

void moat__peer_call_cancel(peer_call *c, const char *why)
{
    peer_conn *pc = c->conn;
    if (c->id != 0) {
        moat_frame f = {0};
        f.stream_id = c->id;
        f.kind = MOAT_FRAME_CANCEL;
        f.u.cancel.reason = moat_slice_str(why);
        conn_send(pc, &f);
    }
    call_unlink(c);
    call_free(c);
    conn_pump(pc);
}

/* ------------------------------------------------------------ connections */

static void conn_maybe_free(peer_conn *pc)
{
    if (pc->tcp_open || pc->timer_open || pc->resolving)
        return;
    moat_wire_decoder_free(&pc->dec);
    free(pc);
}

static void on_handle_closed(uv_handle_t *h)
{
    peer_conn *pc = h->data;
    if (h == (uv_handle_t *)&pc->tcp)
        pc->tcp_open = false;
    else
        pc->timer_open = false;
    conn_maybe_free(pc);
}

static void fail_list(call_list *l, const char *why)
{
    while (l->head != NULL)
        call_finish(l->head, NULL, why);
}

/* Leaves the pool and closes; its calls fail with why. */
static void conn_close(peer_conn *pc, const char *why)
{
    if (pc->state == PEER_CLOSING)
        return;
    pc->state = PEER_CLOSING;
    for (peer_conn **pp = &pc->pool->conns; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == pc) {
            *pp = pc->next;
            break;
        }
    }
    fail_list(&pc->active, why);
    fail_list(&pc->waiting, why);
    if (pc->tcp_open)
        uv_close((uv_handle_t *)&pc->tcp, on_handle_closed);
    if (pc->timer_open)
        uv_close((uv_handle_t *)&pc->hello_timer, on_handle_closed);
    if (pc->resolving)
        uv_cancel((uv_req_t *)&pc->gai);
}

static peer_conn *conn_for(peer_pool *pool, const char *address);

/* Calls placed here before the peer said how many it takes at once: those past that try
 * another connection, so they are not held behind the first ones while room exists. */
static void conn_spill(peer_conn *pc)
{
    peer_call *c = pc->waiting.head;
    for (uint32_t kept = 0; c != NULL && kept < pc->max_streams; kept++)
        c = c->next;
    while (c != NULL) {
        peer_call *next = c->next;
        list_remove(&pc->waiting, c);
        pc->nwaiting--;
        peer_conn *other = conn_for(pc->pool, pc->address);
        if (other == NULL || other == pc) {
            list_push(&pc->waiting, c);
            pc->nwaiting++;
            return;
        }
        c->conn = other;
        list_push(&other->waiting, c);
        other->nwaiting++;
        conn_pump(other);
        c = next;
    }
}

static void conn_frame(peer_conn *pc, const moat_frame *f)
{
    if (pc->state == PEER_HELLO && f->kind == MOAT_FRAME_GO_AWAY) {
        char why[MOAT_STATUS_MESSAGE_MAX], msg[MOAT_STATUS_MESSAGE_MAX - 32];
        copy_text(f->u.go_away.message, msg, sizeof(msg));
        snprintf(why, sizeof(why), "it refused the hello: %s", msg);
        conn_close(pc, why);
        return;
    }
    if (pc->state == PEER_HELLO && f->kind != MOAT_FRAME_HELLO_ACK) {
        conn_close(pc, "it did not answer the hello as a moatd");
        return;
    }
    peer_call *c = f->stream_id != 0 ? call_find(pc, f->stream_id) : NULL;
    switch (f->kind) {
    case MOAT_FRAME_HELLO_ACK:
        if (pc->state != PEER_HELLO) {
            conn_close(pc, "a second HelloAck");
            return;
        }
        pc->state = PEER_READY;
        uv_timer_stop(&pc->hello_timer);
        pc->initial_window = f->u.hello_ack.initial_window;
        pc->max_streams =
            f->u.hello_ack.max_concurrent_streams > 0 ? f->u.hello_ack.max_concurrent_streams : 1;
        moat_wire_decoder_set_max(&pc->dec, f->u.hello_ack.max_frame_size);
        conn_spill(pc);
        conn_pump(pc);
        return;
    case MOAT_FRAME_MESSAGE:
        if (c != NULL)
            c->ops->message(c, c->ud, f->u.message.payload);
        return;
    case MOAT_FRAME_END:
        if (c != NULL) {
            moat_status status;
            end_status(f, &status);
            call_finish(c, &status, NULL);
        }
        return;
    case MOAT_FRAME_WINDOW_UPDATE:
        if (c != NULL)
            c->ops->window(c, c->ud, f->u.window_update.increment);
        return;
    case MOAT_FRAME_PING: {
        moat_frame pong = {0};
        pong.kind = MOAT_FRAME_PONG;
        pong.u.pong.payload = f->u.ping.payload;
        conn_send(pc, &pong);
        return;
    }
    case MOAT_FRAME_PONG:
        if (f->u.pong.payload > pc->pong_max)
            pc->pong_max = f->u.pong.payload;
        return;
    case MOAT_FRAME_GO_AWAY:
        /* It finishes the calls it has and refuses new ones: those waiting here cannot go. */
        pc->draining = true;
        pc->goaway = true;
        fail_list(&pc->waiting, "it is shutting down");
        return;
    default:
        return;
    }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    peer_conn *pc = h->data;
    *buf = uv_buf_init(pc->read_buf, sizeof(pc->read_buf));
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    peer_conn *pc = s->data;
    if (nread < 0) {
        conn_close(pc, nread == UV_EOF ? "it closed the connection" : uv_strerror((int)nread));
        return;
    }
    const uint8_t *in = (const uint8_t *)buf->base;
    size_t left = (size_t)nread;
    while (left > 0 && pc->state != PEER_CLOSING) {
        size_t used = 0;
        moat_slice body;
        moat_err err = moat_wire_decoder_feed(&pc->dec, in, left, &used, &body);
        in += used;
        left -= used;
        if (err == MOAT_E_AGAIN)
            break;
        moat_frame f;
        if (err != MOAT_OK || moat_wire_frame_decode(body, &f) != MOAT_OK) {
            conn_close(pc, "it sent a frame that does not decode");
            return;
        }
        conn_frame(pc, &f);
    }
}

static void on_connected(uv_connect_t *req, int status)
{
    peer_conn *pc = req->data;
    if (pc->state == PEER_CLOSING)
        return;
    if (status != 0) {
        conn_close(pc, uv_strerror(status));
        return;
    }
    pc->state = PEER_HELLO;
    moat_frame hello = {0};
    hello.kind = MOAT_FRAME_HELLO;
    hello.u.hello.protocol_version = MOAT_WIRE_PROTOCOL_VERSION;
    hello.u.hello.client_name = moat_slice_str(MOAT__PROXY_CLIENT_NAME);
    hello.u.hello.token = moat_slice_str(pc->pool->s->cfg.token);
    if (!conn_send(pc, &hello) || uv_read_start((uv_stream_t *)&pc->tcp, on_alloc, on_read) != 0)
        conn_close(pc, "cannot start the connection");
}

static void on_hello_timeout(uv_timer_t *t)
{
    conn_close(t->data, "no answer to its hello in time");
}

static void conn_connect(peer_conn *pc, const struct sockaddr *addr)
{
    uv_tcp_init(pc->pool->s->loop, &pc->tcp);
    pc->tcp.data = pc;
    pc->tcp_open = true;
    /* A peer whose host vanished sends no FIN: keepalives find out. The Call and its request
     * go as two small writes: without TCP_NODELAY the second waits for the peer's delayed ACK
     * of the first (40 ms on Linux). */
    uv_tcp_keepalive(&pc->tcp, 1, 5);
    uv_tcp_nodelay(&pc->tcp, 1);
    pc->connect.data = pc;
    if (uv_tcp_connect(&pc->connect, &pc->tcp, addr, on_connected) != 0)
        conn_close(pc, "cannot connect");
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    peer_conn *pc = req->data;
    pc->resolving = false;
    if (pc->state == PEER_CLOSING) {
        uv_freeaddrinfo(res);
        conn_maybe_free(pc);
        return;
    }
    if (status != 0 || res == NULL) {
        uv_freeaddrinfo(res);
        conn_close(pc, status != 0 ? uv_strerror(status) : "no address");
        return;
    }
    conn_connect(pc, res->ai_addr);
    uv_freeaddrinfo(res);
}

/* A new connection to address, in the pool; NULL when out of memory or not host:port. */
static peer_conn *conn_dial(peer_pool *pool, const char *address)
{
    srv *s = pool->s;
    char host[MOAT_NODE_ADDRESS_MAX], port[8];
    uint16_t port_n;
    if (moat_server_split_hostport(address, host, sizeof(host), &port_n) != MOAT_OK)
        return NULL;
    peer_conn *pc = calloc(1, sizeof(*pc));
    if (pc == NULL)
        return NULL;
    pc->pool = pool;
    snprintf(pc->address, sizeof(pc->address), "%s", address);
    pc->next_id = 1;
    pc->max_streams = s->cfg.max_streams_per_connection;
    moat_wire_decoder_init(&pc->dec, MOAT_WIRE_PREHELLO_MAX_FRAME);
    /* A numeric address (cluster_advertise is one as a rule) is connected to at once: the
     * resolver runs on the thread pool, whose workers may all be forwards waiting on this loop. */
    struct sockaddr_storage sa;
    bool numeric = uv_ip4_addr(host, port_n, (struct sockaddr_in *)&sa) == 0 ||
                   uv_ip6_addr(host, port_n, (struct sockaddr_in6 *)&sa) == 0;
    if (!numeric) {
        pc->gai.data = pc;
        snprintf(port, sizeof(port), "%u", port_n);
        struct addrinfo hints = {0};
        hints.ai_socktype = SOCK_STREAM;
        if (uv_getaddrinfo(s->loop, &pc->gai, on_resolved, host, port, &hints) != 0) {
            moat_wire_decoder_free(&pc->dec);
            free(pc);
            return NULL;
        }
        pc->resolving = true;
    }
    uv_timer_init(s->loop, &pc->hello_timer);
    pc->hello_timer.data = pc;
    pc->timer_open = true;
    uv_timer_start(&pc->hello_timer, on_hello_timeout,
                   (uint64_t)s->cfg.hello_timeout_seconds * 1000, 0);
    pc->next = pool->conns;
    pool->conns = pc;
    if (numeric)
        conn_connect(pc, (const struct sockaddr *)&sa);
    return pc->state != PEER_CLOSING ? pc : NULL;
}

/* The connection a new call to address goes on: the first with room, else a new one while
 * there are fewer than PEER_CONNS_MAX, else the least busy (the call waits there). */
static peer_conn *conn_for(peer_pool *pool, const char *address)
{
    peer_conn *least = NULL;
    unsigned n = 0;
    for (peer_conn *pc = pool->conns; pc != NULL; pc = pc->next) {
        if (pc->draining || strcmp(pc->address, address) != 0)
            continue;
        uint32_t busy = pc->nactive + pc->nwaiting;
        if (busy < pc->max_streams)
            return pc;
        if (least == NULL || busy < least->nactive + least->nwaiting)
            least = pc;
        n++;
    }
    return n < PEER_CONNS_MAX ? conn_dial(pool, address) : least;
}

peer_call *moat__peer_call_open(srv *s, const char *address, const char *method, moat_slice request,
                                uint64_t deadline_at, const peer_call_ops *ops, void *ud)
{
    peer_pool *pool = s->peers;
    peer_conn *pc = pool != NULL ? conn_for(pool, address) : NULL;
    peer_call *c = pc != NULL ? calloc(1, sizeof(*c)) : NULL;
    size_t mlen = strlen(method) + 1;
    uint8_t *req = c != NULL ? malloc(request.len + mlen) : NULL;
    if (req == NULL) {
        free(c);
        return NULL;
    }
    if (request.len > 0)
        memcpy(req, request.data, request.len);
    memcpy(req + request.len, method, mlen);
    c->conn = pc;
    c->ops = ops;
    c->ud = ud;
    c->deadline_at = deadline_at;
    c->req = req;
    c->req_len = request.len;
    c->method = (const char *)req + request.len;
    list_push(&pc->waiting, c);
    pc->nwaiting++;
    bool failed = false;
    c->failed_opening = &failed;
    conn_pump(pc);
    if (failed)
        return NULL;
    c->failed_opening = NULL;
    return c;
}

/* ------------------------------------------------------------ the pool */

moat_err moat__peers_init(srv *s)
{
    if (s->cfg.cluster_etcd_endpoints[0] == '\0')
        return MOAT_OK;
    peer_pool *pool = calloc(1, sizeof(*pool));
    if (pool == NULL)
        return MOAT_E_NOMEM;
    pool->s = s;
    pool->inbox = moat__peer_inbox_new(s);
    if (pool->inbox == NULL) {
        free(pool);
        return MOAT_E_NOMEM;
    }
    s->peers = pool;
    return MOAT_OK;
}

peer_inbox *moat__peers_inbox(srv *s)
{
    peer_pool *pool = s->peers;
    return pool != NULL ? pool->inbox : NULL;
}

void moat__peers_close(srv *s)
{
    peer_pool *pool = s->peers;
    if (pool == NULL)
        return;
    s->peers = NULL;
    while (pool->conns != NULL)
        conn_close(pool->conns, "moatd is shutting down");
    moat__peer_inbox_close(pool->inbox);
    free(pool);
}
