/* libmoat connection and calls: blocking, poll-based, fixed buffers. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include "client.h"
#include "wire/wire.h"

/* Bytes read from the socket at once; frames larger than this are gathered by
 * the wire decoder in its own (bounded, reused) buffer. */
#define READ_CHUNK (256u * 1024u)
/* A queued message costs its payload plus this length prefix. */
#define QUEUE_PREFIX 4u
/* session_moved answers a call follows; the next one is redirect_loop. */
#define MOVES_FOLLOWED 2u
/* Method names a followed call keeps ("/moat.v1.Sandboxes/RenewSession" is 32). */
#define METHOD_MAX 64u

struct moat_call {
    moat_client *client;
    uint32_t id;
    moat_window recv_window;
    moat_window send_window; /* credit for request messages (moat_call_send) */
    uint32_t send_need;      /* what a waiting moat_call_send needs of it */
    uint32_t unreleased;     /* size of the last delivered message, released on the next recv */
    moat_buf queue; /* [u32 len][payload]… messages that arrived while reading another call */
    size_t queue_head;
    bool ended;
    bool end_reported;
    int64_t deadline_at_ms; /* 0: none */
    moat_status status;
    moat_call *next; /* all calls of the client */
    /* Following session_moved (docs/CLUSTER.md, "Routing"): only typed calls
     * that name a session follow, and only until their first answer. */
    bool follow;
    bool moved;          /* ended session_moved before any answer */
    bool moved_too_long; /* its owner_address did not fit moved_to */
    uint8_t hops;        /* session_moved answers followed so far */
    char moved_to[MOAT__ADDR_MAX + 1];
    char session[MOAT__SESSION_MAX]; /* "" when the id did not fit: followed, not cached */
    char method[METHOD_MAX];
    moat_slice request_ref; /* the request, borrowed from a unary call's caller */
    moat_buf replay; /* or copied: [u32 len][payload]…, the request and what moat_call_send sent */
};

struct moat_client {
    int fd;
    bool broken;
    bool go_away;
    uint32_t go_away_last;
    moat_status broken_status;
    moat_client_limits limits;
    moat_wire_decoder decoder;
    moat_stream_table *streams;
    uint32_t next_id;
    uint8_t *rbuf;
    size_t rpos, rlen;
    uint8_t *wbuf; /* one frame: max_frame_size + prefix */
    size_t wcap;
    uint8_t *mbuf;         /* a queued message copied out for delivery */
    moat__scratch scratch; /* typed calls' buffers, made on the first one */
    int splice_pipe[2];    /* moat__client_splice_pipe's; valid when splice_made */
    bool splice_made;
    int splice_from; /* the descriptor last asked about, or -1, and whether it splices */
    bool splice_ok;
    moat_call *calls;
    uint64_t ping_seq;
    bool pong_seen;
    int64_t last_send_ms;
    /* Routing: the address this connection was opened to, and the client the
     * caller holds (itself on the connection moat_client_connect made, which
     * alone has a router: its connections to other nodes and the owner cache). */
    char *addr;
    moat_client *top;
    moat__router *router;
};

static int64_t mono_ms(void)
{
    return (int64_t)(moat_time_mono_ns() / 1000000u);
}

static int remaining_ms(int64_t until, int timeout_ms)
{
    if (timeout_ms < 0)
        return -1;
    int64_t left = until - mono_ms();
    return left < 0 ? 0 : (int)left;
}

static void fail_all(moat_client *c, moat_code code, const char *reason, const char *msg);

/* Waits until the connection takes more; false (every call failed) after 30 s. */
static bool wait_writable(moat_client *c)
{
    struct pollfd pfd = {c->fd, POLLOUT, 0};
    if (poll(&pfd, 1, 30000) > 0)
        return true;
    fail_all(c, MOAT_CODE_UNAVAILABLE, "write_timeout", "cannot write to the server");
    return false;
}

/* What a write that returned w means: 1 when w bytes went, 0 to try again (interrupted, or the
 * connection was full and now takes more), -1 when the connection broke (every call failed). */
static int write_outcome(moat_client *c, ssize_t w)
{
    if (w > 0)
        return 1;
    if (w < 0 && errno == EINTR)
        return 0;
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return wait_writable(c) ? 0 : -1;
    fail_all(c, MOAT_CODE_UNAVAILABLE, "connection_lost",
             w < 0 ? strerror(errno) : "nothing written");
    return -1;
}

/* Writes every byte of v[0..cnt), which it advances, with sendmsg's flags; MOAT_E_IO (and every
 * call failed) when the connection breaks. */
static moat_err write_iov_flags(moat_client *c, struct iovec *v, int cnt, int flags)
{
    for (;;) {
        while (cnt > 0 && v->iov_len == 0) {
            v++;
            cnt--;
        }
        if (cnt == 0)
            break;
        struct msghdr mh = {.msg_iov = v, .msg_iovlen = (size_t)cnt};
        ssize_t w = sendmsg(c->fd, &mh, MSG_NOSIGNAL | flags);
        int went = write_outcome(c, w);
        if (went < 0)
            return MOAT_E_IO;
        if (went == 0)
            continue;
        for (size_t done = (size_t)w; done > 0; v++, cnt--) {
            size_t take = done < v->iov_len ? done : v->iov_len;
            v->iov_base = (uint8_t *)v->iov_base + take;
            v->iov_len -= take;
            done -= take;
            if (v->iov_len > 0)
                break;
        }
    }
    c->last_send_ms = mono_ms();
    return MOAT_OK;
}

static moat_err write_iov(moat_client *c, struct iovec *v, int cnt)
{
    return write_iov_flags(c, v, cnt, 0);
}

static moat_err write_all(moat_client *c, const uint8_t *p, size_t n)
{
    struct iovec v = {(void *)p, n};
    return write_iov(c, &v, 1);
}

static moat_err send_frame(moat_client *c, const moat_frame *f)
{
    if (c->broken)
        return MOAT_E_CLOSED;
    size_t n;
    moat_err err = moat_wire_encode(f, c->wbuf, c->wcap, &n);
    if (err != MOAT_OK)
        return err;
    return write_all(c, c->wbuf, n);
}

static moat_err send_small(moat_client *c, moat_frame_kind kind, uint32_t stream, uint64_t value)
{
    moat_frame f;
    memset(&f, 0, sizeof f);
    f.kind = kind;
    f.stream_id = stream;
    if (kind == MOAT_FRAME_WINDOW_UPDATE)
        f.u.window_update.increment = (uint32_t)value;
    else
        f.u.ping.payload = value;
    uint8_t buf[32];
    size_t n;
    if (c->broken)
        return MOAT_E_CLOSED;
    moat_err err = moat_wire_encode(&f, buf, sizeof buf, &n);
    return err != MOAT_OK ? err : write_all(c, buf, n);
}

static void end_call(moat_call *call, moat_code code, const char *reason, const char *msg)
{
    if (call->ended)
        return;
    moat_status_set(&call->status, code, reason, "%s", msg);
    call->ended = true;
    moat_stream_table_close(call->client->streams, call->id);
}

/* The connection is unusable: every open call ends with the given status. */
static void fail_all(moat_client *c, moat_code code, const char *reason, const char *msg)
{
    if (!c->broken) {
        c->broken = true;
        moat_status_set(&c->broken_status, code, reason, "%s", msg);
    }
    for (moat_call *call = c->calls; call; call = call->next)
        end_call(call, code, reason, msg);
}

static void status_from_frame(moat_status *st, moat_code code, moat_slice message,
                              moat_slice reason, const moat_kv *details, size_t count)
{
    char text[MOAT_STATUS_MESSAGE_MAX], why[MOAT_STATUS_REASON_MAX];
    moat_slice_copy(message, text, sizeof text);
    moat_slice_copy(reason, why, sizeof why);
    moat_status_set(st, code, why[0] ? why : NULL, "%s", text);
    for (size_t i = 0; i < count; i++) {
        char k[MOAT_STATUS_KEY_MAX], v[MOAT_STATUS_VALUE_MAX];
        moat_slice_copy(details[i].key, k, sizeof k);
        moat_slice_copy(details[i].value, v, sizeof v);
        moat_status_add_detail(st, k, v);
    }
}

static moat_err queue_message(moat_call *call, moat_slice payload)
{
    moat_buf *q = &call->queue;
    if (call->queue_head > 0 && call->queue_head == q->len) {
        q->len = 0;
        call->queue_head = 0;
    } else if (call->queue_head > q->cap / 2) {
        moat_buf_consume(q, call->queue_head);
        call->queue_head = 0;
    }
    uint8_t hdr[QUEUE_PREFIX] = {(uint8_t)(payload.len >> 24), (uint8_t)(payload.len >> 16),
                                 (uint8_t)(payload.len >> 8), (uint8_t)payload.len};
    moat_err err = moat_buf_append(q, hdr, sizeof hdr);
    if (err == MOAT_OK)
        err = moat_buf_append(q, payload.data, payload.len);
    return err;
}

static void stop_following(moat_call *call)
{
    call->follow = false;
    call->request_ref = (moat_slice){NULL, 0};
    moat_buf_free(&call->replay);
}

/* Keeps where a session_moved End sends the call; the address is checked
 * when the call follows it (follow()). */
static void note_move(moat_call *call, const moat_frame *f)
{
    call->moved = true;
    call->moved_to[0] = '\0';
    for (size_t i = 0; i < f->u.end.detail_count; i++) {
        if (!moat_slice_eq_str(f->u.end.details[i].key, "owner_address"))
            continue;
        call->moved_too_long = moat_slice_copy(f->u.end.details[i].value, call->moved_to,
                                               sizeof call->moved_to) >= sizeof call->moved_to;
    }
}

/* Handles one frame. If it is a message for `want` with nothing queued ahead
 * of it and deliver is not NULL, it is handed out in *deliver (zero copy) and
 * true is returned; with deliver NULL every message is queued. */
static bool dispatch(moat_client *c, const moat_frame *f, moat_call *want, moat_slice *deliver)
{
    switch (f->kind) {
    case MOAT_FRAME_PING:
        send_small(c, MOAT_FRAME_PONG, 0, f->u.ping.payload);
        return false;
    case MOAT_FRAME_PONG:
        if (f->u.pong.payload == c->ping_seq)
            c->pong_seen = true;
        return false;
    case MOAT_FRAME_WINDOW_UPDATE: {
        /* Stream 0 carries no window in version 1, and a late update for a
         * call already forgotten is harmless: both are ignored. */
        moat_call *call =
            f->stream_id != 0 ? moat_stream_table_get(c->streams, f->stream_id) : NULL;
        if (call != NULL &&
            moat_window_grant(&call->send_window, f->u.window_update.increment) != MOAT_OK)
            fail_all(c, MOAT_CODE_INTERNAL, "flow_control_error",
                     "server granted a window past the limit");
        return false;
    }
    case MOAT_FRAME_GO_AWAY: {
        c->go_away = true;
        c->go_away_last = f->u.go_away.last_stream_id;
        char text[MOAT_STATUS_MESSAGE_MAX];
        moat_slice_copy(f->u.go_away.message, text, sizeof text);
        for (moat_call *call = c->calls; call; call = call->next)
            if (call->id > c->go_away_last)
                end_call(call, MOAT_CODE_UNAVAILABLE, "go_away",
                         text[0] ? text : "server is going away");
        return false;
    }
    case MOAT_FRAME_MESSAGE:
    case MOAT_FRAME_END:
        break;
    default:
        fail_all(c, MOAT_CODE_INTERNAL, "protocol_error", "unexpected frame from the server");
        return false;
    }
    moat_call *call = moat_stream_table_get(c->streams, f->stream_id);
    if (call == NULL)
        return false; /* a call we freed or cancelled: late frames are dropped */
    if (f->kind == MOAT_FRAME_END) {
        status_from_frame(&call->status, f->u.end.code, f->u.end.message, f->u.end.reason,
                          f->u.end.details, f->u.end.detail_count);
        if (call->follow && f->u.end.code == MOAT_CODE_FAILED_PRECONDITION &&
            moat_slice_eq_str(f->u.end.reason, "session_moved"))
            note_move(call, f);
        call->ended = true;
        moat_stream_table_close(c->streams, call->id);
        return false;
    }
    stop_following(call); /* the call has answered: it is never re-issued now */
    moat_slice payload = f->u.message.payload;
    if (payload.len > UINT32_MAX ||
        moat_window_consume(&call->recv_window, (uint32_t)payload.len) != MOAT_OK) {
        fail_all(c, MOAT_CODE_INTERNAL, "flow_control_error",
                 "server exceeded the stream's window");
        return false;
    }
    if (deliver != NULL && call == want && call->queue_head == call->queue.len) {
        *deliver = payload;
        return true;
    }
    if (queue_message(call, payload) != MOAT_OK)
        fail_all(c, MOAT_CODE_RESOURCE_EXHAUSTED, "queue_full", "too much unread data for a call");
    return false;
}

/* Reads and dispatches frames until `done` says stop, a message for want is
 * delivered (unless deliver is NULL), or the timeout passes. */
static moat_err pump(moat_client *c, moat_call *want, moat_slice *deliver, int timeout_ms,
                     bool (*done)(moat_client *c, moat_call *want))
{
    int64_t until = timeout_ms < 0 ? 0 : mono_ms() + timeout_ms;
    for (;;) {
        if (done(c, want))
            return MOAT_OK;
        if (c->broken)
            return MOAT_E_CLOSED;
        while (c->rpos < c->rlen) {
            size_t used;
            moat_slice body;
            moat_err err = moat_wire_decoder_feed(&c->decoder, c->rbuf + c->rpos, c->rlen - c->rpos,
                                                  &used, &body);
            c->rpos += used;
            if (err == MOAT_E_AGAIN)
                break;
            if (err != MOAT_OK) {
                fail_all(c, MOAT_CODE_INTERNAL, "bad_frame", moat_wire_decoder_reason(&c->decoder));
                return MOAT_E_CLOSED;
            }
            moat_frame f;
            err = moat_wire_frame_decode(body, &f);
            if (err != MOAT_OK) {
                fail_all(c, MOAT_CODE_INTERNAL, "bad_frame", moat_strerror(err));
                return MOAT_E_CLOSED;
            }
            if (dispatch(c, &f, want, deliver))
                return MOAT_E_AGAIN; /* "delivered" to the caller */
            if (done(c, want))
                return MOAT_OK;
            if (c->broken)
                return MOAT_E_CLOSED;
        }
        c->rpos = c->rlen = 0;
        int wait = remaining_ms(until, timeout_ms);
        /* Keepalive: ping at half the server's idle limit while we wait. */
        if (c->limits.idle_timeout_seconds > 0) {
            int64_t ping_at = c->last_send_ms + (int64_t)c->limits.idle_timeout_seconds * 500;
            int64_t now = mono_ms();
            if (now >= ping_at) {
                send_small(c, MOAT_FRAME_PING, 0, ++c->ping_seq);
                ping_at = now + (int64_t)c->limits.idle_timeout_seconds * 500;
            }
            if (wait < 0 || ping_at - now < wait)
                wait = (int)(ping_at - now);
        }
        struct pollfd pfd = {c->fd, POLLIN, 0};
        int r = poll(&pfd, 1, wait);
        if (r < 0 && errno != EINTR) {
            fail_all(c, MOAT_CODE_UNAVAILABLE, "connection_lost", strerror(errno));
            return MOAT_E_CLOSED;
        }
        if (r <= 0) {
            if (timeout_ms >= 0 && mono_ms() >= until)
                return MOAT_E_TIMEOUT;
            continue;
        }
        ssize_t n = recv(c->fd, c->rbuf, READ_CHUNK, 0);
        if (n == 0) {
            fail_all(c, MOAT_CODE_UNAVAILABLE, "connection_closed",
                     "the server closed the connection");
            return MOAT_E_CLOSED;
        }
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)
                continue;
            fail_all(c, MOAT_CODE_UNAVAILABLE, "connection_lost", strerror(errno));
            return MOAT_E_CLOSED;
        }
        c->rlen = (size_t)n;
    }
}

static moat_err parse_and_connect(const char *addr, int timeout_ms, int *fd_out, moat_status *st)
{
    int fd = -1;
    if (strncmp(addr, "unix:", 5) == 0) {
        struct sockaddr_un sun;
        memset(&sun, 0, sizeof sun);
        sun.sun_family = AF_UNIX;
        if (strlen(addr + 5) >= sizeof sun.sun_path || addr[5] == '\0') {
            moat_status_set(st, MOAT_CODE_INVALID_ARGUMENT, "bad_address",
                            "bad unix socket path: %s", addr);
            return MOAT_E_INVAL;
        }
        memcpy(sun.sun_path, addr + 5, strlen(addr + 5));
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&sun, sizeof sun) != 0) {
            moat_status_set(st, MOAT_CODE_UNAVAILABLE, "connect_failed", "%s: %s", addr,
                            strerror(errno));
            if (fd >= 0)
                close(fd);
            return MOAT_E_IO;
        }
    } else {
        char host[256], port[16];
        const char *colon = strrchr(addr, ':');
        const char *h = addr;
        size_t hlen = colon ? (size_t)(colon - addr) : 0;
        if (colon && addr[0] == '[' && hlen >= 2 && addr[hlen - 1] == ']') {
            h = addr + 1;
            hlen -= 2;
        }
        if (!colon || hlen == 0 || hlen >= sizeof host || strlen(colon + 1) == 0 ||
            strlen(colon + 1) >= sizeof port) {
            moat_status_set(st, MOAT_CODE_INVALID_ARGUMENT, "bad_address",
                            "address must be host:port or unix:/path: %s", addr);
            return MOAT_E_INVAL;
        }
        memcpy(host, h, hlen);
        host[hlen] = '\0';
        snprintf(port, sizeof port, "%s", colon + 1);
        struct addrinfo hints, *res = NULL;
        memset(&hints, 0, sizeof hints);
        hints.ai_socktype = SOCK_STREAM;
        int gai = getaddrinfo(host, port, &hints, &res);
        if (gai != 0) {
            moat_status_set(st, MOAT_CODE_UNAVAILABLE, "resolve_failed", "%s: %s", addr,
                            gai_strerror(gai));
            return MOAT_E_IO;
        }
        int last_errno = 0;
        for (struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next) {
            fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK,
                        ai->ai_protocol);
            if (fd < 0)
                continue;
            int r = connect(fd, ai->ai_addr, ai->ai_addrlen);
            if (r != 0 && errno == EINPROGRESS) {
                struct pollfd pfd = {fd, POLLOUT, 0};
                int soerr = 0;
                socklen_t len = sizeof soerr;
                if (poll(&pfd, 1, timeout_ms) == 1 &&
                    getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) == 0 && soerr == 0)
                    r = 0;
                else
                    errno = soerr ? soerr : ETIMEDOUT;
            }
            if (r != 0) {
                last_errno = errno;
                close(fd);
                fd = -1;
            }
        }
        freeaddrinfo(res);
        if (fd < 0) {
            moat_status_set(st, MOAT_CODE_UNAVAILABLE, "connect_failed", "%s: %s", addr,
                            strerror(last_errno));
            return MOAT_E_IO;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    *fd_out = fd;
    return MOAT_OK;
}

static moat_err alloc_buffers(moat_client *c)
{
    free(c->wbuf);
    free(c->mbuf);
    c->wcap = (size_t)c->limits.max_frame_size + MOAT_WIRE_HEADER_SIZE;
    c->wbuf = malloc(c->wcap);
    c->mbuf = malloc(c->limits.max_frame_size);
    return c->wbuf && c->mbuf ? MOAT_OK : MOAT_E_NOMEM;
}

static moat_err read_hello_ack(moat_client *c, int timeout_ms, moat_status *st)
{
    int64_t until = mono_ms() + timeout_ms;
    for (;;) {
        if (c->rpos < c->rlen) {
            size_t used;
            moat_slice body;
            moat_err err = moat_wire_decoder_feed(&c->decoder, c->rbuf + c->rpos, c->rlen - c->rpos,
                                                  &used, &body);
            c->rpos += used;
            if (err == MOAT_OK) {
                moat_frame f;
                err = moat_wire_frame_decode(body, &f);
                if (err == MOAT_OK && f.kind == MOAT_FRAME_HELLO_ACK) {
                    moat_client_limits *l = &c->limits;
                    l->protocol_version = f.u.hello_ack.protocol_version;
                    l->max_frame_size = f.u.hello_ack.max_frame_size;
                    l->initial_window = f.u.hello_ack.initial_window;
                    l->max_concurrent_streams = f.u.hello_ack.max_concurrent_streams;
                    l->idle_timeout_seconds = f.u.hello_ack.idle_timeout_seconds;
                    moat_slice_copy(f.u.hello_ack.server_version, l->server_version,
                                    sizeof l->server_version);
                    if (l->max_frame_size < MOAT_WIRE_PREHELLO_MAX_FRAME ||
                        l->max_frame_size > MOAT_WIRE_MAX_FRAME_LIMIT ||
                        l->max_concurrent_streams == 0 ||
                        l->initial_window > MOAT_WIRE_MAX_WINDOW) {
                        moat_status_set(st, MOAT_CODE_INTERNAL, "bad_hello_ack",
                                        "server announced invalid limits");
                        return MOAT_E_PROTO;
                    }
                    return MOAT_OK;
                }
                if (err == MOAT_OK && f.kind == MOAT_FRAME_GO_AWAY) {
                    status_from_frame(st, f.u.go_away.code, f.u.go_away.message, (moat_slice){0},
                                      NULL, 0);
                    return MOAT_E_REMOTE;
                }
                if (err == MOAT_OK && f.kind == MOAT_FRAME_END) {
                    status_from_frame(st, f.u.end.code, f.u.end.message, f.u.end.reason,
                                      f.u.end.details, f.u.end.detail_count);
                    return MOAT_E_REMOTE;
                }
                moat_status_set(st, MOAT_CODE_INTERNAL, "bad_hello_ack",
                                "expected HelloAck, got %s",
                                err == MOAT_OK ? moat_frame_kind_name(f.kind) : moat_strerror(err));
                return MOAT_E_PROTO;
            }
            if (err != MOAT_E_AGAIN) {
                moat_status_set(st, MOAT_CODE_INTERNAL, "bad_frame", "%s",
                                moat_wire_decoder_reason(&c->decoder));
                return MOAT_E_PROTO;
            }
        }
        c->rpos = c->rlen = 0;
        struct pollfd pfd = {c->fd, POLLIN, 0};
        int r = poll(&pfd, 1, remaining_ms(until, timeout_ms));
        if (r == 0) {
            moat_status_set(st, MOAT_CODE_DEADLINE_EXCEEDED, "hello_timeout",
                            "no HelloAck from the server");
            return MOAT_E_TIMEOUT;
        }
        ssize_t n = r > 0 ? recv(c->fd, c->rbuf, READ_CHUNK, 0) : -1;
        if (n == 0) {
            moat_status_set(st, MOAT_CODE_UNAVAILABLE, "connection_closed",
                            "server closed the connection during hello");
            return MOAT_E_CLOSED;
        }
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            moat_status_set(st, MOAT_CODE_UNAVAILABLE, "connection_lost", "%s", strerror(errno));
            return MOAT_E_IO;
        }
        c->rlen = (size_t)n;
    }
}

moat_err moat__connect(const char *addr, const moat_client_options *opts, moat_client **out,
                       moat_status *st)
{
    moat_status scratch;
    if (st == NULL)
        st = &scratch;
    moat_status_clear(st);
    int timeout_ms = opts && opts->timeout_ms > 0 ? opts->timeout_ms : 10000;
    moat_client *c = calloc(1, sizeof *c);
    if (c == NULL) {
        moat_status_set(st, MOAT_CODE_RESOURCE_EXHAUSTED, "no_memory", "out of memory");
        return MOAT_E_NOMEM;
    }
    c->fd = -1;
    c->splice_from = -1;
    c->next_id = 1;
    c->top = c;
    c->addr = strdup(addr);
    moat_wire_decoder_init(&c->decoder, MOAT_WIRE_MAX_FRAME_LIMIT);
    c->rbuf = malloc(READ_CHUNK);
    c->limits.max_frame_size = MOAT_WIRE_PREHELLO_MAX_FRAME;
    moat_err err = c->rbuf && c->addr ? alloc_buffers(c) : MOAT_E_NOMEM;
    if (err != MOAT_OK)
        moat_status_set(st, MOAT_CODE_RESOURCE_EXHAUSTED, "no_memory", "out of memory");
    if (err == MOAT_OK)
        err = parse_and_connect(addr, timeout_ms, &c->fd, st);
    if (err == MOAT_OK) {
        moat_frame f;
        memset(&f, 0, sizeof f);
        f.kind = MOAT_FRAME_HELLO;
        f.u.hello.protocol_version = MOAT_WIRE_PROTOCOL_VERSION;
        f.u.hello.client_name =
            moat_slice_str(opts && opts->client_name ? opts->client_name : "libmoat/" MOAT_VERSION);
        f.u.hello.token = moat_slice_str(opts && opts->token ? opts->token : "");
        err = send_frame(c, &f);
        if (err != MOAT_OK)
            moat_status_set(st, MOAT_CODE_UNAVAILABLE, "hello_failed", "cannot send Hello (%s)",
                            moat_strerror(err));
    }
    if (err == MOAT_OK)
        err = read_hello_ack(c, timeout_ms, st);
    if (err == MOAT_OK) {
        moat_wire_decoder_set_max(&c->decoder, c->limits.max_frame_size);
        c->streams = moat_stream_table_new(c->limits.max_concurrent_streams);
        err = c->streams ? alloc_buffers(c) : MOAT_E_NOMEM;
        if (err != MOAT_OK)
            moat_status_set(st, MOAT_CODE_RESOURCE_EXHAUSTED, "no_memory", "out of memory");
    }
    if (err != MOAT_OK) {
        moat_client_close(c);
        return err;
    }
    *out = c;
    return MOAT_OK;
}

moat_err moat_client_connect(const char *addr, const moat_client_options *opts, moat_client **out,
                             moat_status *st)
{
    moat_status scratch;
    if (st == NULL)
        st = &scratch;
    moat_client *c;
    moat_err err = moat__connect(addr, opts, &c, st);
    if (err != MOAT_OK)
        return err;
    c->router = moat__router_new(addr, opts);
    if (c->router == NULL) {
        moat_client_close(c);
        moat_status_set(st, MOAT_CODE_RESOURCE_EXHAUSTED, "no_memory", "out of memory");
        return MOAT_E_NOMEM;
    }
    *out = c;
    return MOAT_OK;
}

static void call_free_buffers(moat_call *call)
{
    moat_buf_free(&call->queue);
    moat_buf_free(&call->replay);
}

void moat_client_close(moat_client *c)
{
    if (c == NULL)
        return;
    moat__router_free(c->router);
    if (c->fd >= 0)
        close(c->fd);
    if (c->splice_made) {
        close(c->splice_pipe[0]);
        close(c->splice_pipe[1]);
    }
    while (c->calls) {
        moat_call *next = c->calls->next;
        call_free_buffers(c->calls);
        free(c->calls);
        c->calls = next;
    }
    moat_stream_table_free(c->streams);
    moat_wire_decoder_free(&c->decoder);
    free(c->rbuf);
    free(c->wbuf);
    free(c->mbuf);
    free(c->scratch.request);
    free(c->scratch.response);
    free(c->addr);
    free(c);
}

static bool never_done(moat_client *c, moat_call *want)
{
    (void)c;
    (void)want;
    return false;
}

void moat__client_poll(moat_client *c)
{
    if (!c->broken)
        pump(c, NULL, NULL, 0, never_done);
}

moat__router *moat__client_router(const moat_client *c)
{
    return c->router;
}

moat_client *moat__client_top(const moat_client *c)
{
    return c->top;
}

bool moat__client_usable(const moat_client *c)
{
    return !c->broken && !c->go_away;
}

bool moat__client_busy(const moat_client *c)
{
    return c->calls != NULL;
}

void moat__client_adopt(moat_client *c, moat_client *top)
{
    c->top = top;
}

const char *moat__client_addr(const moat_client *c)
{
    return c->addr;
}

const moat_client_limits *moat_client_get_limits(const moat_client *c)
{
    return &c->limits;
}

static bool pong_done(moat_client *c, moat_call *want)
{
    (void)want;
    return c->pong_seen;
}

moat_err moat_client_ping(moat_client *c, int timeout_ms)
{
    c->pong_seen = false;
    moat_err err = send_small(c, MOAT_FRAME_PING, 0, ++c->ping_seq);
    if (err != MOAT_OK)
        return err;
    return pump(c, NULL, NULL, timeout_ms, pong_done);
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
        call->deadline_at_ms = mono_ms() + (int64_t)deadline_ms;

    moat_frame f;
    memset(&f, 0, sizeof f);
    f.stream_id = call->id;
    f.kind = MOAT_FRAME_CALL;
    f.u.call.method = moat_slice_str(method);
    f.u.call.deadline_ms = deadline_ms;
    f.u.call.metadata_count = metadata_count;
    for (size_t i = 0; i < metadata_count; i++)
        f.u.call.metadata[i] = metadata[i];
    err = send_frame(c, &f);
    if (err == MOAT_OK) {
        f.kind = MOAT_FRAME_MESSAGE;
        f.u.message.payload = request;
        err = send_frame(c, &f);
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
        stop_following(call);
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
    moat_err err = send_frame(to, &f);
    pos = 0;
    while (err == MOAT_OK && replayed(call, &pos, &msg)) {
        f.kind = MOAT_FRAME_MESSAGE;
        f.u.message.payload = msg;
        err = send_frame(to, &f);
    }
    if (err != MOAT_OK)
        end_call(call, to->broken_status.code, to->broken_status.reason, to->broken_status.message);
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
        int64_t left = call->deadline_at_ms - mono_ms();
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
            send_small(call->client, MOAT_FRAME_WINDOW_UPDATE, call->id, inc);
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
            int64_t left = call->deadline_at_ms + 1000 - mono_ms();
            if (left <= 0) {
                moat_frame f;
                memset(&f, 0, sizeof f);
                f.kind = MOAT_FRAME_CANCEL;
                f.stream_id = call->id;
                f.u.cancel.reason = moat_slice_str("deadline exceeded");
                send_frame(c, &f);
                end_call(call, MOAT_CODE_DEADLINE_EXCEEDED, "deadline_exceeded",
                         "the call's deadline passed");
                continue;
            }
            if (wait < 0 || left < wait)
                wait = (int)left;
        }
        moat_slice got;
        moat_err err = pump(c, call, &got, wait, call_done);
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
        moat_err err = pump(c, call, NULL, timeout_ms, credit_done);
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
    return send_frame(call->client, &f) == MOAT_OK ? MOAT_OK : MOAT_E_CLOSED;
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
    return write_iov(call->client, iov, 2) == MOAT_OK ? MOAT_OK : MOAT_E_CLOSED;
}

bool moat__call_records(const moat_call *call)
{
    return call->follow;
}

int moat__client_splice_pipe(moat_client *c, int from, int *read_end)
{
    if (from != c->splice_from) {
        struct stat st;
        c->splice_from = from;
        c->splice_ok = fstat(from, &st) == 0 && (S_ISFIFO(st.st_mode) || S_ISREG(st.st_mode));
    }
    if (!c->splice_ok)
        return -1;
    if (!c->splice_made) {
        if (pipe2(c->splice_pipe, O_CLOEXEC) != 0)
            return -1;
        c->splice_made = true;
        /* a message's worth in one splice (best effort, as pipe-max-size allows) */
        (void)fcntl(c->splice_pipe[1], F_SETPIPE_SZ, 1 << 20);
    }
    *read_end = c->splice_pipe[0];
    return c->splice_pipe[1];
}

void moat__client_splice_refused(moat_client *c, int from)
{
    c->splice_from = from;
    c->splice_ok = false;
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
    if (write_iov_flags(c, &iov, 1, MSG_MORE) != MOAT_OK)
        return MOAT_E_CLOSED;
    while (len > 0) {
        ssize_t w = splice(pipe_fd, NULL, c->fd, NULL, len, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        /* a failure leaves the frame cut: the connection cannot go on */
        int went = write_outcome(c, w);
        if (went < 0)
            return MOAT_E_CLOSED;
        if (went > 0)
            len -= (size_t)w;
    }
    c->last_send_ms = mono_ms();
    return MOAT_OK;
}

uint32_t moat_call_send_window(const moat_call *call)
{
    return call->send_window.available;
}

int moat_client_fd(const moat_client *c)
{
    return c->fd;
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
    return send_frame(call->client, &f);
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
    call_free_buffers(call);
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

moat__scratch moat__client_scratch(moat_client *c)
{
    if (c->scratch.request == NULL) {
        size_t cap = c->limits.max_frame_size;
        c->scratch.request = malloc(cap);
        c->scratch.response = malloc(cap);
        if (c->scratch.request == NULL || c->scratch.response == NULL) {
            free(c->scratch.request);
            free(c->scratch.response);
            c->scratch.request = c->scratch.response = NULL;
        } else {
            c->scratch.cap = cap;
        }
    }
    return c->scratch;
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
