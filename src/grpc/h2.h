/* moat grpc h2: one HTTP/2 server connection carrying gRPC calls, on libnghttp2's server session
 * (HTTP/2 framing, HPACK and flow control are nghttp2's). No I/O: the owner feeds the bytes it
 * read to moat_grpc_h2_recv, writes what moat_grpc_h2_pull hands out, and hears about calls
 * through its callbacks, which run inside recv, pull, send and end.
 *
 * A call is known by its HTTP/2 stream id. Its request headers are checked here (grpc.h's
 * verdicts; a refused call is answered here and never reaches the owner); its DATA is split into
 * messages; its response messages wait in a queue of its own until HTTP/2's windows let them
 * out, and its End becomes trailers (or a trailers-only response when nothing was sent).
 * Single-threaded. */
#ifndef MOAT_GRPC_H2_H
#define MOAT_GRPC_H2_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "grpc/grpc.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct moat_grpc_h2 moat_grpc_h2;

typedef struct moat_grpc_h2_limits {
    uint32_t max_concurrent_streams; /* SETTINGS_MAX_CONCURRENT_STREAMS */
    uint32_t max_message;            /* largest request message */
    uint32_t max_header_list;        /* SETTINGS_MAX_HEADER_LIST_SIZE, enforced per request */
    uint32_t initial_window;         /* SETTINGS_INITIAL_WINDOW_SIZE for request DATA */
    bool token_required;
} moat_grpc_h2_limits;

typedef struct moat_grpc_h2_callbacks {
    /* Compares a presented bearer token with the configured one, in constant time. */
    bool (*token_ok)(const uint8_t *token, size_t len, void *ud);
    /* A request's headers passed every check: returns the owner's handle for the call, or NULL
     * with *refusal set, which answers it. */
    void *(*open)(void *ud, int32_t stream_id, const moat_grpc_request *req, moat_status *refusal);
    /* A request was refused before it opened (bad headers, token, method); for logs and
     * throttling. */
    void (*refused)(void *ud, int32_t stream_id, const moat_status *status, int http_status);
    /* One complete request message, valid during the callback. */
    void (*message)(void *ud, void *call, const uint8_t *data, size_t len);
    /* The client ended its request stream after `messages` whole messages. */
    void (*half_closed)(void *ud, void *call, uint64_t messages);
    /* The call cannot go on (a malformed or oversized message, a request cut inside a message, the
     * client's RST_STREAM, the connection ending): the owner ends it with status, which it
     * does through moat_grpc_h2_end as usual. */
    void (*abort)(void *ud, void *call, const moat_status *status);
    /* Room to send grew for the call (a WINDOW_UPDATE or SETTINGS from the client). */
    void (*writable)(void *ud, void *call);
    /* The stream is closed: the handle is never used again. */
    void (*closed)(void *ud, void *call);
} moat_grpc_h2_callbacks;

/* A server session with limits sent in its SETTINGS. cbs is copied; ud is passed to every
 * callback. NULL when out of memory. Free with moat_grpc_h2_free, which calls abort and
 * closed for every call still open. */
moat_grpc_h2 *moat_grpc_h2_new(const moat_grpc_h2_limits *limits, const moat_grpc_h2_callbacks *cbs,
                               void *ud);
void moat_grpc_h2_free(moat_grpc_h2 *h);

/* Feeds bytes read from the client. MOAT_E_PROTO when the connection is broken past repair: a
 * GOAWAY with the error is queued (pull it, write it, then close); *why says what. */
moat_err moat_grpc_h2_recv(moat_grpc_h2 *h, const uint8_t *data, size_t len, const char **why);
/* The next bytes to write: *data valid until the next call on h, *len 0 when there is nothing
 * to write now. MOAT_E_NOMEM or MOAT_E_PROTO when the session failed (close it). */
moat_err moat_grpc_h2_pull(moat_grpc_h2 *h, const uint8_t **data, size_t *len);
/* Whether the session has more to read or write; when neither, the connection is done. */
bool moat_grpc_h2_alive(const moat_grpc_h2 *h);

/* Queues a response message: block (from malloc, ownership taken also on failure) holds
 * MOAT_GRPC_PREFIX_SIZE + the message, its prefix written (moat_grpc_message_prefix).
 * MOAT_E_STATE when the call has ended or is gone. */
moat_err moat_grpc_h2_send(moat_grpc_h2 *h, int32_t stream_id, uint8_t *block, size_t len);
/* Ends the call with st: trailers after the queued messages, or trailers-only. Nothing for a
 * call that has already ended or is gone. */
void moat_grpc_h2_end(moat_grpc_h2 *h, int32_t stream_id, const moat_status *st);
/* The owner has used n payload bytes of a client-streaming call's request messages (its first
 * included): that much of the stream's window goes back to the client (a WINDOW_UPDATE comes out
 * of moat_grpc_h2_pull when nghttp2 judges it worth one). Other calls' windows come back as
 * their bytes are decoded. */
void moat_grpc_h2_consume(moat_grpc_h2 *h, int32_t stream_id, size_t n);
/* Bytes the call may still send now: the smaller of its stream's and the connection's send
 * windows, less what its queue holds; 0 once it has ended or is gone. */
uint32_t moat_grpc_h2_credit(moat_grpc_h2 *h, int32_t stream_id);
/* Bytes waiting in the call's queue. */
size_t moat_grpc_h2_queued(moat_grpc_h2 *h, int32_t stream_id);
/* Bytes waiting in every call's queue. */
size_t moat_grpc_h2_queued_total(const moat_grpc_h2 *h);
/* HTTP/2 error codes a GOAWAY may carry (RFC 9113 7). */
#define MOAT_GRPC_H2_NO_ERROR          0x0
#define MOAT_GRPC_H2_ENHANCE_YOUR_CALM 0xb
/* GOAWAY with that error code: calls already open go on, new ones are refused. */
void moat_grpc_h2_go_away(moat_grpc_h2 *h, uint32_t error_code);
/* Number of streams whose calls the owner holds. */
size_t moat_grpc_h2_calls(const moat_grpc_h2 *h);

#ifdef __cplusplus
}
#endif
#endif
