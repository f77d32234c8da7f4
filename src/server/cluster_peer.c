/* One unary call to another node of the cluster over the framed protocol (docs/PROTOCOL.md), for
 * a create placed there: a new connection, the hello with the cluster's token, the call with
 * its deadline, its answer. Blocking, bounded by the deadline at every step; runs on a worker.
 * A connection per call: a create is a 120-200 ms container start, against which a loopback or
 * LAN connect and hello are a fraction of a millisecond, and nothing is pooled to go stale. */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include "cluster_place.h"
#include "wire/wire.h"

#define PEER_HELLO_MS 3000u

typedef struct peer {
    int fd;
    uint64_t deadline_ns; /* monotonic */
    moat_wire_decoder dec;
    uint8_t in[16384];
    size_t in_len, in_off;
} peer;

/* Milliseconds left before the deadline, at least 0. */
static int left_ms(const peer *p)
{
    uint64_t now = moat_time_mono_ns();
    return now >= p->deadline_ns ? 0 : (int)((p->deadline_ns - now) / 1000000u);
}

static moat_code fail(moat_status *st, const char *addr, const char *what)
{
    moat_status_set(st, MOAT_CODE_UNAVAILABLE, "peer_unavailable",
                    "node %s could not be reached for the create: %s", addr, what);
    moat_status_add_detail(st, "owner_address", addr);
    return MOAT_CODE_UNAVAILABLE;
}

static int connect_to(const char *addr, peer *p)
{
    char host[MOAT_NODE_ADDRESS_MAX];
    uint16_t port;
    if (moat_server_split_hostport(addr, host, sizeof(host), &port) != MOAT_OK)
        return -1;
    char service[8];
    snprintf(service, sizeof(service), "%u", (unsigned)port);
    struct addrinfo hints = {0}, *ai = NULL;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    if (getaddrinfo(host, service, &hints, &ai) != 0)
        return -1;
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    int rc = fd < 0 ? -1 : connect(fd, ai->ai_addr, ai->ai_addrlen);
    freeaddrinfo(ai);
    if (rc != 0 && fd >= 0 && errno == EINPROGRESS) {
        struct pollfd pfd = {fd, POLLOUT, 0};
        int err = 0;
        socklen_t len = sizeof(err);
        if (poll(&pfd, 1, left_ms(p)) == 1 &&
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0)
            rc = 0;
    }
    if (rc != 0 && fd >= 0) {
        close(fd);
        fd = -1;
    }
    /* The call and its message go as two small writes: without this the second waits for the
     * peer's delayed ACK of the first (40 ms on Linux). */
    int one = 1;
    if (fd >= 0)
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return fd;
}

static bool send_frame(peer *p, const moat_frame *f)
{
    size_t n = moat_wire_encoded_size(f), w = 0, off = 0;
    uint8_t *buf = n > 0 ? malloc(n) : NULL;
    bool ok = buf != NULL && moat_wire_encode(f, buf, n, &w) == MOAT_OK;
    while (ok && off < w) {
        struct pollfd pfd = {p->fd, POLLOUT, 0};
        ssize_t r =
            poll(&pfd, 1, left_ms(p)) == 1 ? send(p->fd, buf + off, w - off, MSG_NOSIGNAL) : -1;
        if (r < 0 && errno == EINTR)
            continue;
        ok = r > 0;
        off += ok ? (size_t)r : 0;
    }
    free(buf);
    return ok;
}

/* The next frame into *f (slices point into the decoder or p->in, valid until the next call). */
static bool recv_frame(peer *p, moat_frame *f)
{
    for (;;) {
        while (p->in_off < p->in_len) {
            size_t used = 0;
            moat_slice body;
            moat_err err = moat_wire_decoder_feed(&p->dec, p->in + p->in_off, p->in_len - p->in_off,
                                                  &used, &body);
            p->in_off += used;
            if (err == MOAT_E_AGAIN)
                break;
            return err == MOAT_OK && moat_wire_frame_decode(body, f) == MOAT_OK;
        }
        struct pollfd pfd = {p->fd, POLLIN, 0};
        if (poll(&pfd, 1, left_ms(p)) != 1)
            return false;
        ssize_t n = recv(p->fd, p->in, sizeof(p->in), 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return false;
        p->in_len = (size_t)n;
        p->in_off = 0;
    }
}

static void copy_slice(char *out, size_t cap, moat_slice s)
{
    size_t n = s.len < cap - 1 ? s.len : cap - 1;
    if (n > 0)
        memcpy(out, s.data, n);
    out[n] = '\0';
}

/* The call's End into st: the status the peer gave, details included. */
static moat_code take_end(const moat_frame *f, moat_status *st)
{
    char reason[MOAT_STATUS_REASON_MAX], msg[MOAT_STATUS_MESSAGE_MAX];
    copy_slice(reason, sizeof(reason), f->u.end.reason);
    copy_slice(msg, sizeof(msg), f->u.end.message);
    moat_status_set(st, f->u.end.code, reason[0] != '\0' ? reason : NULL, "%s", msg);
    for (size_t i = 0; i < f->u.end.detail_count; i++) {
        char k[MOAT_STATUS_KEY_MAX], v[MOAT_STATUS_VALUE_MAX];
        copy_slice(k, sizeof(k), f->u.end.details[i].key);
        copy_slice(v, sizeof(v), f->u.end.details[i].value);
        moat_status_add_detail(st, k, v);
    }
    return f->u.end.code;
}

moat_code moat__peer_unary(const char *addr, const char *token, const char *method,
                           moat_slice request, uint64_t timeout_ms, uint8_t **response,
                           size_t *response_len, moat_status *st)
{
    *response = NULL;
    *response_len = 0;
    /* A node that is alive but stuck (stopped, swapping, its loop blocked) accepts connections
     * in its kernel and answers nothing: the connect and the hello get a few seconds of the
     * deadline, so such a node is unavailable at once rather than at the create's deadline. */
    uint64_t start = moat_time_mono_ns();
    uint64_t hello_ms = timeout_ms < PEER_HELLO_MS ? timeout_ms : PEER_HELLO_MS;
    peer p = {.deadline_ns = start + hello_ms * 1000000u};
    moat_wire_decoder_init(&p.dec, MOAT_WIRE_PREHELLO_MAX_FRAME);
    p.fd = connect_to(addr, &p);
    if (p.fd < 0) {
        moat_wire_decoder_free(&p.dec);
        return fail(st, addr, "connect failed");
    }
    moat_code code = MOAT_CODE_UNAVAILABLE;
    moat_frame f = {0};
    f.kind = MOAT_FRAME_HELLO;
    f.u.hello.protocol_version = MOAT_WIRE_PROTOCOL_VERSION;
    f.u.hello.client_name = moat_slice_str("moatd-peer/" MOAT_VERSION);
    f.u.hello.token = moat_slice_str(token);
    if (!send_frame(&p, &f) || !recv_frame(&p, &f)) {
        code = fail(st, addr, "no hello answer");
        goto out;
    }
    if (f.kind != MOAT_FRAME_HELLO_ACK) {
        code = f.kind == MOAT_FRAME_GO_AWAY ? fail(st, addr, "hello refused")
                                            : fail(st, addr, "not a moatd");
        goto out;
    }
    moat_wire_decoder_set_max(&p.dec, f.u.hello_ack.max_frame_size);
    p.deadline_ns = start + timeout_ms * 1000000u;
    moat_frame call = {0};
    call.stream_id = 1;
    call.kind = MOAT_FRAME_CALL;
    call.u.call.method = moat_slice_str(method);
    call.u.call.deadline_ms = timeout_ms;
    moat_frame msg = {0};
    msg.stream_id = 1;
    msg.kind = MOAT_FRAME_MESSAGE;
    msg.u.message.payload = request;
    if (!send_frame(&p, &call) || !send_frame(&p, &msg)) {
        code = fail(st, addr, "the call could not be sent");
        goto out;
    }
    for (;;) {
        if (!recv_frame(&p, &f)) {
            code =
                fail(st, addr,
                     left_ms(&p) == 0 ? "no answer before the deadline" : "the connection closed");
            break;
        }
        if (f.stream_id != 1 && f.kind != MOAT_FRAME_GO_AWAY)
            continue;
        if (f.kind == MOAT_FRAME_MESSAGE && *response == NULL) {
            *response = malloc(f.u.message.payload.len + 1);
            if (*response == NULL) {
                moat_status_set(st, MOAT_CODE_RESOURCE_EXHAUSTED, "out_of_memory", "out of memory");
                code = MOAT_CODE_RESOURCE_EXHAUSTED;
                break;
            }
            memcpy(*response, f.u.message.payload.data, f.u.message.payload.len);
            *response_len = f.u.message.payload.len;
        } else if (f.kind == MOAT_FRAME_END) {
            code = take_end(&f, st);
            break;
        } else if (f.kind == MOAT_FRAME_GO_AWAY) {
            code = fail(st, addr, "the node is shutting down");
            break;
        }
    }
out:
    if (code != MOAT_CODE_OK) {
        free(*response);
        *response = NULL;
        *response_len = 0;
    }
    close(p.fd);
    moat_wire_decoder_free(&p.dec);
    return code;
}
