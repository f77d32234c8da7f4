/* A fake moatd for unit tests: a real Unix or TCP socket served by a thread,
 * speaking frames through moat_wire. Each accepted connection gets Hello/
 * HelloAck, then every Message of a call (its request, and for streaming
 * requests each one after it) is passed to the handler. */
#ifndef MOAT_TEST_FAKE_SERVER_H
#define MOAT_TEST_FAKE_SERVER_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "wire/wire.h"

#define FAKE_WINDOW (64u * 1024u)

typedef struct fake fake;
/* Called on the server thread with the call's method and request payload. */
typedef void (*fake_handler)(fake *s, uint32_t stream, const char *method, moat_slice request);

struct fake {
    int lfd;
    int port;
    char path[108];
    pthread_t thread;
    fake_handler handler;
    void *user;
    volatile bool stopping;
    bool failed; /* a check on the server thread failed (asserts there are unsafe) */
    int fd;
    bool drop; /* set by a handler: close the connection now */
    moat_wire_decoder dec;
    uint8_t rbuf[65536];
    size_t rpos, rlen;
    uint32_t call_stream;
    char method[128];
    moat_window send_window[64];
    /* Credit the fake has granted the client per stream: every client Message
     * is counted against it, as moatd counts it (fake_grant gives more). */
    moat_window client_window[64];
    uint32_t window_violations; /* client Messages past that credit */
    uint32_t updates_seen;
    uint32_t pongs_seen; /* Pongs with payload 77 */
};

void fake_start_unix(fake *s, fake_handler handler, void *user);
void fake_start_tcp(fake *s, fake_handler handler, void *user);
/* Stops accepting, joins the thread; returns false if a server-side check failed. A second
 * call only returns that again. */
bool fake_stop(fake *s);

/* Handler helpers. send_message waits for window credit like a real server;
 * client Messages read meanwhile are counted against the client's window but
 * not handed to the handler. */
void fake_send_message(fake *s, uint32_t stream, const uint8_t *p, size_t len);
/* A WindowUpdate of increment on stream: more credit for the client's Messages. */
void fake_grant(fake *s, uint32_t stream, uint32_t increment);
void fake_send_end(fake *s, uint32_t stream, moat_code code, const char *msg, const char *reason,
                   const char *chat);
void fake_send_raw(fake *s, const uint8_t *p, size_t len);
/* Answers a unary call: m packed as its one message (at most 8 KiB), then End OK. */
void fake_reply(fake *s, uint32_t stream, const ProtobufCMessage *m);

#endif
