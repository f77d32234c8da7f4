/* A fake execd for the bridge's unit tests: a real HTTP/1.1 server on a Unix
 * socket (or TCP loopback) run by a thread, writing exact bytes chosen by a
 * handler, so tests can split bodies, cut them, reset them or never answer. */
#ifndef MOAT_TEST_BRIDGE_FAKE_EXECD_H
#define MOAT_TEST_BRIDGE_FAKE_EXECD_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>

typedef struct fake_req {
    char method[16];
    char path[2048];
    char *headers; /* raw header block, NUL-terminated */
    char *body;    /* de-chunked, NUL-terminated */
    size_t body_len;
} fake_req;

typedef struct fake_execd fake_execd;
/* Writes the whole response to fd; the server closes fd afterwards. */
typedef void (*fake_handler)(fake_execd *f, int fd, const fake_req *req);

struct fake_execd {
    char sock_path[108];
    int port; /* TCP mode */
    int lfd;
    pthread_t thr;
    volatile int stop;
    fake_handler handler;
    void *ud;
    pthread_mutex_t mu;
    int nreq;
    int active;
    fake_req last; /* copy of the last request */
};

/* Starts listening on a fresh Unix socket (tcp: 127.0.0.1, any port). */
void fake_start(fake_execd *f, fake_handler h, void *ud, bool tcp);
/* Stops accepting, waits for every connection thread, removes the socket. */
void fake_stop(fake_execd *f);
/* Copy of the last request's header value (case-insensitive name), or "". */
void fake_last_header(fake_execd *f, const char *name, char *out, size_t cap);
int fake_request_count(fake_execd *f);

/* Response helpers. */
void fake_write_all(int fd, const void *data, size_t len);
void fake_reply(int fd, int status, const char *extra_headers, const void *body, size_t len);
void fake_chunked_head(int fd, int status, const char *extra_headers);
void fake_chunk(int fd, const void *data, size_t len);
void fake_chunked_end(int fd);
/* Sends data as chunks of `piece` bytes, pausing briefly between them so the
 * client sees separate reads. */
void fake_chunks_slow(int fd, const void *data, size_t len, size_t piece);
/* Closes with a TCP RST (TCP mode). */
void fake_reset(int fd);
/* Blocks until the server is stopped (an execd that never answers). */
void fake_hang(fake_execd *f, int fd);

#endif
