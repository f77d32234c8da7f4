#include "fake_execd.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MAX_HEAD (64 * 1024)
#define MAX_BODY (64u * 1024u * 1024u)

typedef struct conn {
    fake_execd *f;
    int fd;
} conn;

static void nap_us(long us)
{
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
    nanosleep(&ts, NULL);
}

void fake_write_all(int fd, const void *data, size_t len)
{
    const char *p = data;
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return; /* the client went away; the test will notice */
        p += n;
        len -= (size_t)n;
    }
}

void fake_reply(int fd, int status, const char *extra, const void *body, size_t len)
{
    char head[1024];
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 %d X\r\nContent-Length: %zu\r\nConnection: close\r\n%s\r\n", status,
                     len, extra ? extra : "");
    fake_write_all(fd, head, (size_t)n);
    fake_write_all(fd, body, len);
}

void fake_chunked_head(int fd, int status, const char *extra)
{
    char head[1024];
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 %d X\r\nContent-Type: text/event-stream\r\n"
                     "Transfer-Encoding: chunked\r\nConnection: close\r\n%s\r\n",
                     status, extra ? extra : "");
    fake_write_all(fd, head, (size_t)n);
}

void fake_chunk(int fd, const void *data, size_t len)
{
    if (len == 0)
        return;
    char h[32];
    int n = snprintf(h, sizeof(h), "%zx\r\n", len);
    fake_write_all(fd, h, (size_t)n);
    fake_write_all(fd, data, len);
    fake_write_all(fd, "\r\n", 2);
}

void fake_chunked_end(int fd)
{
    fake_write_all(fd, "0\r\n\r\n", 5);
}

void fake_chunks_slow(int fd, const void *data, size_t len, size_t piece)
{
    const char *p = data;
    for (size_t off = 0; off < len; off += piece) {
        fake_chunk(fd, p + off, len - off < piece ? len - off : piece);
        nap_us(300);
    }
}

void fake_reset(int fd)
{
    struct linger lg = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
}

void fake_hang(fake_execd *f, int fd)
{
    (void)fd;
    while (!f->stop)
        nap_us(10000);
}

static bool read_request(int fd, fake_req *r)
{
    char *buf = malloc(MAX_HEAD + 1);
    size_t len = 0;
    char *end = NULL;
    while (end == NULL && len < MAX_HEAD) {
        ssize_t n = recv(fd, buf + len, MAX_HEAD - len, 0);
        if (n <= 0) {
            free(buf);
            return false;
        }
        len += (size_t)n;
        buf[len] = '\0';
        end = strstr(buf, "\r\n\r\n");
    }
    if (end == NULL) {
        free(buf);
        return false;
    }
    size_t head_len = (size_t)(end - buf) + 4;
    sscanf(buf, "%15s %2047s", r->method, r->path);
    r->headers = strndup(buf, head_len);
    size_t clen = 0;
    bool chunked = false;
    for (char *line = strstr(r->headers, "\r\n"); line != NULL; line = strstr(line + 2, "\r\n")) {
        if (strncasecmp(line + 2, "Content-Length:", 15) == 0)
            clen = strtoul(line + 17, NULL, 10);
        if (strncasecmp(line + 2, "Transfer-Encoding: chunked", 26) == 0)
            chunked = true;
    }
    /* A client waiting for 100 Continue sends no body: the handler answers first, as an
     * execd (OpenSandbox's Go server included) does for a path it does not serve. */
    if (strcasestr(r->headers, "\r\nExpect: 100-continue") != NULL)
        clen = 0, chunked = false;
    /* raw body bytes: what came with the head plus what follows */
    size_t cap = 1 << 16, have = len - head_len;
    char *raw = malloc(cap + 1);
    memcpy(raw, buf + head_len, have);
    free(buf);
    for (;;) {
        if (!chunked && have >= clen)
            break;
        if (chunked) {
            raw[have] = '\0';
            if (have >= 5 && memcmp(raw + have - 5, "0\r\n\r\n", 5) == 0)
                break;
        }
        if (have == cap) {
            if (cap >= MAX_BODY)
                break;
            cap *= 2;
            raw = realloc(raw, cap + 1);
        }
        ssize_t n = recv(fd, raw + have, cap - have, 0);
        if (n <= 0)
            break;
        have += (size_t)n;
    }
    if (chunked) {
        size_t o = 0, w = 0;
        while (o < have) {
            size_t sz = strtoul(raw + o, NULL, 16);
            char *crlf = memchr(raw + o, '\n', have - o);
            if (crlf == NULL || sz == 0)
                break;
            o = (size_t)(crlf - raw) + 1;
            if (o + sz > have)
                break;
            memmove(raw + w, raw + o, sz);
            w += sz;
            o += sz + 2;
        }
        have = w;
    } else if (have > clen) {
        have = clen;
    }
    raw[have] = '\0';
    r->body = raw;
    r->body_len = have;
    return true;
}

static void free_req(fake_req *r)
{
    free(r->headers);
    free(r->body);
    memset(r, 0, sizeof(*r));
}

static void *conn_main(void *arg)
{
    conn *c = arg;
    fake_execd *f = c->f;
    fake_req r = {0};
    if (read_request(c->fd, &r)) {
        pthread_mutex_lock(&f->mu);
        f->nreq++;
        free_req(&f->last);
        f->last = r;
        f->last.headers = strdup(r.headers);
        f->last.body = malloc(r.body_len + 1);
        memcpy(f->last.body, r.body, r.body_len + 1);
        pthread_mutex_unlock(&f->mu);
        f->handler(f, c->fd, &r);
        free_req(&r);
    }
    close(c->fd);
    pthread_mutex_lock(&f->mu);
    f->active--;
    pthread_mutex_unlock(&f->mu);
    free(c);
    return NULL;
}

static void *accept_main(void *arg)
{
    fake_execd *f = arg;
    while (!f->stop) {
        struct pollfd p = {f->lfd, POLLIN, 0};
        if (poll(&p, 1, 50) <= 0)
            continue;
        int fd = accept(f->lfd, NULL, NULL);
        if (fd < 0)
            continue;
        if (f->port) {
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        }
        conn *c = malloc(sizeof(*c));
        c->f = f;
        c->fd = fd;
        pthread_mutex_lock(&f->mu);
        f->active++;
        pthread_mutex_unlock(&f->mu);
        pthread_t t;
        pthread_create(&t, NULL, conn_main, c);
        pthread_detach(t);
    }
    return NULL;
}

void fake_start(fake_execd *f, fake_handler h, void *ud, bool tcp)
{
    static int counter;
    memset(f, 0, sizeof(*f));
    f->handler = h;
    f->ud = ud;
    pthread_mutex_init(&f->mu, NULL);
    if (tcp) {
        f->lfd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        bind(f->lfd, (struct sockaddr *)&a, sizeof(a));
        socklen_t al = sizeof(a);
        getsockname(f->lfd, (struct sockaddr *)&a, &al);
        f->port = ntohs(a.sin_port);
    } else {
        snprintf(f->sock_path, sizeof(f->sock_path), "/tmp/moat-bridge-test-%d-%d.sock",
                 (int)getpid(), counter++);
        unlink(f->sock_path);
        f->lfd = socket(AF_UNIX, SOCK_STREAM, 0);
        struct sockaddr_un a = {.sun_family = AF_UNIX};
        memcpy(a.sun_path, f->sock_path, strlen(f->sock_path) + 1);
        bind(f->lfd, (struct sockaddr *)&a, sizeof(a));
    }
    listen(f->lfd, 256);
    pthread_create(&f->thr, NULL, accept_main, f);
}

void fake_stop(fake_execd *f)
{
    f->stop = 1;
    pthread_join(f->thr, NULL);
    for (;;) {
        pthread_mutex_lock(&f->mu);
        int a = f->active;
        pthread_mutex_unlock(&f->mu);
        if (a == 0)
            break;
        nap_us(5000);
    }
    close(f->lfd);
    if (!f->port)
        unlink(f->sock_path);
    free_req(&f->last);
    pthread_mutex_destroy(&f->mu);
}

void fake_last_header(fake_execd *f, const char *name, char *out, size_t cap)
{
    out[0] = '\0';
    pthread_mutex_lock(&f->mu);
    size_t nl = strlen(name);
    for (char *line = f->last.headers ? strstr(f->last.headers, "\r\n") : NULL; line != NULL;
         line = strstr(line + 2, "\r\n")) {
        if (strncasecmp(line + 2, name, nl) == 0 && line[2 + nl] == ':') {
            char *v = line + 3 + nl;
            while (*v == ' ')
                v++;
            char *e = strstr(v, "\r\n");
            size_t n = e ? (size_t)(e - v) : strlen(v);
            if (n >= cap)
                n = cap - 1;
            memcpy(out, v, n);
            out[n] = '\0';
            break;
        }
    }
    pthread_mutex_unlock(&f->mu);
}

int fake_request_count(fake_execd *f)
{
    pthread_mutex_lock(&f->mu);
    int n = f->nreq;
    pthread_mutex_unlock(&f->mu);
    return n;
}
