/* A small blocking gRPC client on libnghttp2's client session, for tests and benchmarks that
 * need what generated stubs do not allow: any header, any bytes, a reader that does not read.
 * One connection, one thread; every pointer it returns belongs to the connection. */
#ifndef MOAT_TEST_H2_CLIENT_H
#define MOAT_TEST_H2_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <gnutls/gnutls.h>

#include "common/common.h"

typedef struct h2c h2c;

/* What came back on one stream. */
typedef struct h2c_stream {
    int32_t id;
    int http_status; /* :status, 0 until the response's headers */
    int grpc_status; /* -1 until trailers (or trailers-only) carried one */
    char grpc_message[MOAT_STATUS_MESSAGE_MAX];
    moat_status details; /* from grpc-status-details-bin; reason "" without one */
    uint64_t data_bytes; /* DATA payload received (prefixes included) */
    uint64_t messages;   /* complete gRPC messages received */
    uint8_t *last;       /* the last message (valid until the next one) */
    size_t last_len;
    bool closed;       /* the stream is over */
    uint32_t rst_code; /* its RST_STREAM error code, when reset */
    /* Request body still to send (submit_body). */
    const uint8_t *body;
    size_t body_len, body_off;
    /* Bytes left in the message being parsed from DATA. */
    uint8_t head[5];
    size_t head_len, msg_left, msg_len;
    /* When false, received DATA is never acknowledged: the server's window runs out. */
    bool reading;
    /* Called with each complete message (may be NULL). */
    void (*on_message)(struct h2c_stream *st, const uint8_t *msg, size_t len, void *ud);
    void *ud;
} h2c_stream;

/* Connects to 127.0.0.1:port and sends the preface and SETTINGS (a stream window of
 * window bytes; 0 = nghttp2's default) taking DATA frames of up to 1 MiB. NULL on failure. */
h2c *h2c_connect(int port, uint32_t window);
/* The same with SETTINGS_MAX_FRAME_SIZE max_frame (16384, HTTP/2's default, is what gRPC's own
 * libraries keep). */
h2c *h2c_connect_frames(int port, uint32_t window, uint32_t max_frame);
/* h2c_connect over TLS (the listener's grpc_tls_cert): trusts cafile, checks the name
 * localhost, offers ALPN h2. NULL when the connection or the handshake failed. */
h2c *h2c_connect_tls(int port, const char *cafile);
/* A GnuTLS client session on fd for the listener's TLS: trusts cafile, checks the name
 * localhost, offers ALPN alpn (NULL: no ALPN extension at all); *cred goes with it. */
gnutls_session_t h2c_tls_session(int fd, const char *cafile, const char *alpn,
                                 gnutls_certificate_credentials_t *cred);
void h2c_close(h2c *c);

/* One header of a request: name and value as given. */
typedef struct h2c_header {
    const char *name, *value;
} h2c_header;

/* Opens a request: :method POST, :scheme http, :path path, content-type application/grpc,
 * te trailers, authorization Bearer token (when token is non-NULL), then extra (NULL-ended).
 * With body non-NULL the body (len bytes, kept by the caller until sent) goes with END_STREAM;
 * with body NULL the stream stays open until h2c_send_body. Returns the stream, or NULL. */
h2c_stream *h2c_request(h2c *c, const char *path, const char *token, const h2c_header *extra,
                        const uint8_t *body, size_t len);
/* The same with every header given (pseudo-headers too), for requests that break the rules. */
h2c_stream *h2c_request_raw(h2c *c, const h2c_header *headers, const uint8_t *body, size_t len);
/* Sends body (kept by the caller until sent) with END_STREAM on a stream opened without one. */
bool h2c_send_body(h2c *c, h2c_stream *st, const uint8_t *body, size_t len);
/* RST_STREAM CANCEL. */
void h2c_cancel(h2c *c, h2c_stream *st);
/* Starts acknowledging a stream's DATA again (and what it left unacknowledged). */
void h2c_resume_reading(h2c *c, h2c_stream *st);

/* Runs the connection until done(c, ud) is true, the connection ends or timeout_ms passes.
 * Returns done's last answer. */
bool h2c_run(h2c *c, bool (*done)(h2c *c, void *ud), void *ud, int timeout_ms);
/* A done for h2c_run: the connection is over. */
bool h2c_until_dead(h2c *c, void *ud);
/* Runs until st is closed. */
bool h2c_wait(h2c *c, h2c_stream *st, int timeout_ms);
/* Writes bytes on the socket as they are, past the session (for broken frames). */
bool h2c_send_raw(h2c *c, const void *data, size_t len);

/* A plain TCP connection to 127.0.0.1:port (no HTTP/2), or -1. */
int h2c_raw_connect(int port);
/* Reads and drops what arrives on fd until EOF (true) or timeout_ms (false). */
bool h2c_raw_wait_eof(int fd, int timeout_ms);

/* Whether the connection is over (EOF, an error, or both sides done), and the error code of a
 * GOAWAY received (-1 when none). */
bool h2c_dead(const h2c *c);
int h2c_goaway_code(const h2c *c);

/* Writes the 5-byte prefix and len bytes of msg into out (5 + len bytes). */
void h2c_frame_message(uint8_t *out, const uint8_t *msg, size_t len);

#endif
