/* A small blocking gRPC client on libnghttp2's client session (see h2_client.h). */
#include "h2_client.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <nghttp2/nghttp2.h>

#include "grpc/grpc.h"

typedef struct stream_node {
    struct stream_node *next;
    h2c_stream st;
    uint64_t unconsumed; /* DATA not acknowledged while it was not reading */
    uint8_t *buf;        /* the message being assembled */
} stream_node;

struct h2c {
    int fd;
    gnutls_session_t tls; /* NULL on h2c */
    gnutls_certificate_credentials_t cred;
    nghttp2_session *session;
    stream_node *streams;
    bool dead;
    int goaway;
};

static stream_node *node_of(h2c_stream *st)
{
    return (stream_node *)((char *)st - offsetof(stream_node, st));
}

static void take_message_bytes(stream_node *n, const uint8_t *p, size_t len)
{
    h2c_stream *st = &n->st;
    while (len > 0) {
        if (st->head_len < 5) {
            st->head[st->head_len++] = *p++;
            len--;
            if (st->head_len == 5) {
                st->msg_len = st->msg_left = (size_t)st->head[1] << 24 | (size_t)st->head[2] << 16 |
                                             (size_t)st->head[3] << 8 | st->head[4];
                free(n->buf);
                n->buf = malloc(st->msg_len > 0 ? st->msg_len : 1);
            }
        } else {
            size_t take = len < st->msg_left ? len : st->msg_left;
            if (n->buf != NULL)
                memcpy(n->buf + (st->msg_len - st->msg_left), p, take);
            st->msg_left -= take;
            p += take;
            len -= take;
        }
        if (st->head_len == 5 && st->msg_left == 0) {
            st->messages++;
            if (st->on_message != NULL)
                st->on_message(st, n->buf, st->msg_len, st->ud);
            st->last = n->buf;
            st->last_len = st->msg_len;
            st->head_len = 0;
        }
    }
}

static int on_data(nghttp2_session *session, uint8_t flags, int32_t id, const uint8_t *data,
                   size_t len, void *ud)
{
    (void)flags;
    (void)ud;
    stream_node *n = nghttp2_session_get_stream_user_data(session, id);
    if (n == NULL)
        return 0;
    n->st.data_bytes += len;
    take_message_bytes(n, data, len);
    if (n->st.reading) {
        nghttp2_session_consume(session, id, len);
    } else {
        /* Only the stream's window runs out: the connection's stays open for the others. */
        nghttp2_session_consume_connection(session, len);
        n->unconsumed += len;
    }
    return 0;
}

static int on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags, void *ud)
{
    (void)flags;
    (void)ud;
    stream_node *n = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
    if (n == NULL)
        return 0;
    char v[MOAT_GRPC_DETAILS_MAX];
    size_t vl = valuelen < sizeof(v) - 1 ? valuelen : sizeof(v) - 1;
    memcpy(v, value, vl);
    v[vl] = '\0';
    if (namelen == 7 && memcmp(name, ":status", 7) == 0)
        n->st.http_status = atoi(v);
    else if (namelen == 11 && memcmp(name, "grpc-status", 11) == 0)
        n->st.grpc_status = atoi(v);
    else if (namelen == 12 && memcmp(name, "grpc-message", 12) == 0)
        moat_grpc_percent_decode(v, vl, n->st.grpc_message, sizeof(n->st.grpc_message));
    else if (namelen == 23 && memcmp(name, "grpc-status-details-bin", 23) == 0)
        moat_grpc_status_details_parse(v, vl, &n->st.details);
    return 0;
}

static int on_close(nghttp2_session *session, int32_t id, uint32_t error_code, void *ud)
{
    (void)ud;
    stream_node *n = nghttp2_session_get_stream_user_data(session, id);
    if (n != NULL) {
        n->st.closed = true;
        n->st.rst_code = error_code;
    }
    return 0;
}

static int on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *ud)
{
    (void)session;
    h2c *c = ud;
    if (frame->hd.type == NGHTTP2_GOAWAY)
        c->goaway = (int)frame->goaway.error_code;
    return 0;
}

int h2c_raw_connect(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int one = 1;
    if (fd < 0)
        return -1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

bool h2c_raw_wait_eof(int fd, int timeout_ms)
{
    struct pollfd pfd = {fd, POLLIN, 0};
    char buf[4096];
    while (poll(&pfd, 1, timeout_ms) > 0) {
        ssize_t n = read(fd, buf, sizeof(buf));
        if (n <= 0)
            return true;
    }
    return false;
}

h2c *h2c_connect(int port, uint32_t window)
{
    return h2c_connect_frames(port, window, 1u << 20);
}

/* A new client on fd (taken), over tls when not NULL (taken with cred). */
static h2c *client_new(int fd, gnutls_session_t tls, gnutls_certificate_credentials_t cred,
                       uint32_t window, uint32_t max_frame)
{
    h2c *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        if (tls != NULL) {
            gnutls_deinit(tls);
            gnutls_certificate_free_credentials(cred);
        }
        close(fd);
        return NULL;
    }
    c->goaway = -1;
    c->fd = fd;
    c->tls = tls;
    c->cred = cred;
    nghttp2_session_callbacks *cbs;
    nghttp2_option *opt;
    if (nghttp2_session_callbacks_new(&cbs) != 0) {
        h2c_close(c);
        return NULL;
    }
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data);
    nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_close);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
    nghttp2_option_new(&opt);
    nghttp2_option_set_no_auto_window_update(opt, 1);
    nghttp2_session_client_new2(&c->session, cbs, c, opt);
    nghttp2_option_del(opt);
    nghttp2_session_callbacks_del(cbs);
    nghttp2_settings_entry s[] = {
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, window > 0 ? window : NGHTTP2_INITIAL_WINDOW_SIZE},
        {NGHTTP2_SETTINGS_MAX_FRAME_SIZE, max_frame}};
    nghttp2_submit_settings(c->session, NGHTTP2_FLAG_NONE, s, 2);
    nghttp2_session_set_local_window_size(c->session, NGHTTP2_FLAG_NONE, 0, 1 << 30);
    return c;
}

h2c *h2c_connect_frames(int port, uint32_t window, uint32_t max_frame)
{
    int fd = h2c_raw_connect(port);
    return fd >= 0 ? client_new(fd, NULL, NULL, window, max_frame) : NULL;
}

gnutls_session_t h2c_tls_session(int fd, const char *cafile, const char *alpn,
                                 gnutls_certificate_credentials_t *cred)
{
    gnutls_session_t s;
    gnutls_certificate_allocate_credentials(cred);
    gnutls_certificate_set_x509_trust_file(*cred, cafile, GNUTLS_X509_FMT_PEM);
    /* A server that closed the connection is an error here, not a SIGPIPE. */
    gnutls_init(&s, GNUTLS_CLIENT | GNUTLS_NO_SIGNAL);
    gnutls_set_default_priority(s);
    gnutls_credentials_set(s, GNUTLS_CRD_CERTIFICATE, *cred);
    gnutls_server_name_set(s, GNUTLS_NAME_DNS, "localhost", 9);
    gnutls_session_set_verify_cert(s, "localhost", 0);
    if (alpn != NULL) {
        gnutls_datum_t p = {(unsigned char *)alpn, (unsigned)strlen(alpn)};
        gnutls_alpn_set_protocols(s, &p, 1, 0);
    }
    gnutls_transport_set_int(s, fd);
    gnutls_handshake_set_timeout(s, 10000);
    return s;
}

h2c *h2c_connect_tls(int port, const char *cafile)
{
    int fd = h2c_raw_connect(port);
    if (fd < 0)
        return NULL;
    gnutls_certificate_credentials_t cred;
    gnutls_session_t s = h2c_tls_session(fd, cafile, "h2", &cred);
    int rc;
    do
        rc = gnutls_handshake(s);
    while (rc < 0 && !gnutls_error_is_fatal(rc));
    if (rc < 0) {
        gnutls_deinit(s);
        gnutls_certificate_free_credentials(cred);
        close(fd);
        return NULL;
    }
    return client_new(fd, s, cred, 0, 1u << 20);
}

void h2c_close(h2c *c)
{
    if (c == NULL)
        return;
    nghttp2_session_del(c->session);
    if (c->tls != NULL) {
        gnutls_deinit(c->tls);
        gnutls_certificate_free_credentials(c->cred);
    }
    close(c->fd);
    while (c->streams != NULL) {
        stream_node *n = c->streams;
        c->streams = n->next;
        free(n->buf);
        free(n);
    }
    free(c);
}

static ssize_t read_body(nghttp2_session *session, int32_t id, uint8_t *buf, size_t length,
                         uint32_t *flags, nghttp2_data_source *source, void *ud)
{
    (void)session;
    (void)id;
    (void)ud;
    h2c_stream *st = source->ptr;
    size_t n = st->body_len - st->body_off;
    if (n > length)
        n = length;
    memcpy(buf, st->body + st->body_off, n);
    st->body_off += n;
    if (st->body_off == st->body_len)
        *flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
}

static h2c_stream *open_stream(h2c *c, const h2c_header *headers, size_t nh, const uint8_t *body,
                               size_t len)
{
    stream_node *n = calloc(1, sizeof(*n));
    nghttp2_nv *nv = calloc(nh, sizeof(*nv));
    if (n == NULL || nv == NULL) {
        free(n);
        free(nv);
        return NULL;
    }
    for (size_t i = 0; i < nh; i++)
        nv[i] =
            (nghttp2_nv){(uint8_t *)headers[i].name, (uint8_t *)headers[i].value,
                         strlen(headers[i].name), strlen(headers[i].value), NGHTTP2_NV_FLAG_NONE};
    n->st.grpc_status = -1;
    n->st.reading = true;
    n->st.body = body;
    n->st.body_len = len;
    nghttp2_data_provider prd = {.source = {.ptr = &n->st}, .read_callback = read_body};
    int32_t id = body != NULL
                     ? nghttp2_submit_request(c->session, NULL, nv, nh, &prd, n)
                     : nghttp2_submit_headers(c->session, NGHTTP2_FLAG_NONE, -1, NULL, nv, nh, n);
    free(nv);
    if (id < 0) {
        free(n);
        return NULL;
    }
    n->st.id = id;
    n->next = c->streams;
    c->streams = n;
    return &n->st;
}

h2c_stream *h2c_request_raw(h2c *c, const h2c_header *headers, const uint8_t *body, size_t len)
{
    size_t nh = 0;
    while (headers[nh].name != NULL)
        nh++;
    return open_stream(c, headers, nh, body, len);
}

h2c_stream *h2c_request(h2c *c, const char *path, const char *token, const h2c_header *extra,
                        const uint8_t *body, size_t len)
{
    h2c_header h[40];
    size_t n = 0;
    char auth[600];
    h[n++] = (h2c_header){":method", "POST"};
    h[n++] = (h2c_header){":scheme", "http"};
    h[n++] = (h2c_header){":authority", "127.0.0.1"};
    h[n++] = (h2c_header){":path", path};
    h[n++] = (h2c_header){"content-type", "application/grpc"};
    h[n++] = (h2c_header){"te", "trailers"};
    if (token != NULL) {
        snprintf(auth, sizeof(auth), "Bearer %s", token);
        h[n++] = (h2c_header){"authorization", auth};
    }
    for (size_t i = 0; extra != NULL && extra[i].name != NULL && n < 39; i++)
        h[n++] = extra[i];
    return open_stream(c, h, n, body, len);
}

bool h2c_send_body(h2c *c, h2c_stream *st, const uint8_t *body, size_t len)
{
    st->body = body;
    st->body_len = len;
    st->body_off = 0;
    nghttp2_data_provider prd = {.source = {.ptr = st}, .read_callback = read_body};
    return nghttp2_submit_data(c->session, NGHTTP2_FLAG_END_STREAM, st->id, &prd) == 0;
}

void h2c_cancel(h2c *c, h2c_stream *st)
{
    nghttp2_submit_rst_stream(c->session, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_CANCEL);
}

void h2c_resume_reading(h2c *c, h2c_stream *st)
{
    stream_node *n = node_of(st);
    st->reading = true;
    /* The connection's share was acknowledged as it came. */
    nghttp2_session_consume_stream(c->session, st->id, n->unconsumed);
    n->unconsumed = 0;
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static bool flush_out(h2c *c)
{
    for (;;) {
        const uint8_t *p;
        ssize_t n = nghttp2_session_mem_send(c->session, &p);
        if (n < 0)
            return false;
        if (n == 0)
            return true;
        while (n > 0) {
            /* A server that closed the connection is an error here, not a SIGPIPE. */
            ssize_t w = c->tls != NULL ? gnutls_record_send(c->tls, p, (size_t)n)
                                       : send(c->fd, p, (size_t)n, MSG_NOSIGNAL);
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0)
                return false;
            p += w;
            n -= w;
        }
    }
}

bool h2c_run(h2c *c, bool (*done)(h2c *c, void *ud), void *ud, int timeout_ms)
{
    uint64_t end = now_ms() + (uint64_t)timeout_ms;
    static uint8_t buf[256 * 1024];
    while (!done(c, ud)) {
        if (c->dead || !flush_out(c)) {
            c->dead = true;
            return done(c, ud);
        }
        uint64_t now = now_ms();
        if (now >= end)
            return false;
        struct pollfd pfd = {c->fd, POLLIN, 0};
        /* GnuTLS may hold decrypted bytes the socket no longer shows. */
        bool held = c->tls != NULL && gnutls_record_check_pending(c->tls) > 0;
        if (!held && poll(&pfd, 1, (int)(end - now < 100 ? end - now : 100)) <= 0)
            continue;
        ssize_t n = c->tls != NULL ? gnutls_record_recv(c->tls, buf, sizeof(buf))
                                   : read(c->fd, buf, sizeof(buf));
        if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED)
            continue;
        if (n <= 0 || nghttp2_session_mem_recv(c->session, buf, (size_t)n) < 0)
            c->dead = true;
    }
    flush_out(c);
    return true;
}

static bool stream_closed(h2c *c, void *ud)
{
    (void)c;
    return ((h2c_stream *)ud)->closed;
}

bool h2c_until_dead(h2c *c, void *ud)
{
    (void)ud;
    return c->dead;
}

bool h2c_wait(h2c *c, h2c_stream *st, int timeout_ms)
{
    return h2c_run(c, stream_closed, st, timeout_ms);
}

bool h2c_send_raw(h2c *c, const void *data, size_t len)
{
    if (!flush_out(c))
        return false;
    return (c->tls != NULL ? gnutls_record_send(c->tls, data, len)
                           : send(c->fd, data, len, MSG_NOSIGNAL)) == (ssize_t)len;
}

bool h2c_dead(const h2c *c)
{
    return c->dead;
}

int h2c_goaway_code(const h2c *c)
{
    return c->goaway;
}

void h2c_frame_message(uint8_t *out, const uint8_t *msg, size_t len)
{
    moat_grpc_message_prefix(out, (uint32_t)len);
    if (len > 0)
        memcpy(out + MOAT_GRPC_PREFIX_SIZE, msg, len);
}
