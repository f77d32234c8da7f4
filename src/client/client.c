/* libmoat's connection: blocking, poll-based, fixed buffers. Connecting and the Hello exchange,
 * writing frames, reading and dispatching them to their calls (flow control, GoAway, a
 * session_moved End noted for the call to follow), keepalive, ping, close, and the buffers the
 * client owns. A call's own side (start, recv, send, follow, cancel, free, unary) is stream.c. */
#include <errno.h>
#include <fcntl.h>
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

#include "conn.h"

/* Bytes read from the socket at once; frames larger than this are gathered by
 * the wire decoder in its own (bounded, reused) buffer. */
#define READ_CHUNK (256u * 1024u)

int64_t moat__client_mono_ms(void)
{
    return (int64_t)(moat_time_mono_ns() / 1000000u);
}

static int remaining_ms(int64_t until, int timeout_ms)
{
    if (timeout_ms < 0)
        return -1;
    int64_t left = until - moat__client_mono_ms();
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
int moat__client_write_outcome(moat_client *c, ssize_t w)
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
moat_err moat__client_write_iov_flags(moat_client *c, struct iovec *v, int cnt, int flags)
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
        int went = moat__client_write_outcome(c, w);
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
    c->last_send_ms = moat__client_mono_ms();
    return MOAT_OK;
}

moat_err moat__client_write_iov(moat_client *c, struct iovec *v, int cnt)
{
    return moat__client_write_iov_flags(c, v, cnt, 0);
}

static moat_err write_all(moat_client *c, const uint8_t *p, size_t n)
{
    struct iovec v = {(void *)p, n};
    return moat__client_write_iov(c, &v, 1);
}

moat_err moat__client_send_frame(moat_client *c, const moat_frame *f)
{
    if (c->broken)
        return MOAT_E_CLOSED;
    size_t n;
    moat_err err = moat_wire_encode(f, c->wbuf, c->wcap, &n);
    if (err != MOAT_OK)
        return err;
    return write_all(c, c->wbuf, n);
}

moat_err moat__client_send_small(moat_client *c, moat_frame_kind kind, uint32_t stream,
                                 uint64_t value)
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

void moat__call_end(moat_call *call, moat_code code, const char *reason, const char *msg)
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
        moat__call_end(call, code, reason, msg);
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

void moat__call_stop_following(moat_call *call)
{
    call->follow = false;
    call->request_ref = (moat_slice){NULL, 0};
    moat_buf_free(&call->replay);
}

/* Keeps where a session_moved End sends the call; the address is checked
 * when the call follows it (stream.c's follow()). */
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
        moat__client_send_small(c, MOAT_FRAME_PONG, 0, f->u.ping.payload);
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
                moat__call_end(call, MOAT_CODE_UNAVAILABLE, "go_away",
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
    moat__call_stop_following(call); /* the call has answered: it is never re-issued now */
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
moat_err moat__client_pump(moat_client *c, moat_call *want, moat_slice *deliver, int timeout_ms,
                           bool (*done)(moat_client *c, moat_call *want))
{
    int64_t until = timeout_ms < 0 ? 0 : moat__client_mono_ms() + timeout_ms;
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
            int64_t now = moat__client_mono_ms();
            if (now >= ping_at) {
                moat__client_send_small(c, MOAT_FRAME_PING, 0, ++c->ping_seq);
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
            if (timeout_ms >= 0 && moat__client_mono_ms() >= until)
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
    int64_t until = moat__client_mono_ms() + timeout_ms;
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
        err = moat__client_send_frame(c, &f);
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
        moat__call_free_buffers(c->calls);
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
        moat__client_pump(c, NULL, NULL, 0, never_done);
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
    moat_err err = moat__client_send_small(c, MOAT_FRAME_PING, 0, ++c->ping_seq);
    if (err != MOAT_OK)
        return err;
    return moat__client_pump(c, NULL, NULL, timeout_ms, pong_done);
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

int moat_client_fd(const moat_client *c)
{
    return c->fd;
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
