/* libmoat: a blocking client for moatd's framed protocol (docs/PROTOCOL.md),
 * on nanopb and moat_wire. One connection carries many calls; each call has
 * its own flow-control window, and window updates go out as the application
 * consumes messages. Buffers are sized at connect from the server's limits;
 * nothing is allocated per message.
 *
 * A moat_client is not thread-safe: use one per thread, or lock around it. */
#ifndef MOAT_CLIENT_H
#define MOAT_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "moat/common.h"
#include "moat/wire.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MOAT_CLIENT_DEFAULT_ADDR "127.0.0.1:7070"

typedef struct moat_client moat_client;
typedef struct moat_call moat_call;

typedef struct moat_client_options {
    const char *token;       /* NULL or "" when the server needs none */
    const char *client_name; /* NULL: "libmoat/<version>" */
    int timeout_ms;          /* connect + hello; <= 0: 10000 */
} moat_client_options;

/* The limits the server announced in its HelloAck. */
typedef struct moat_client_limits {
    uint32_t protocol_version;
    uint32_t max_frame_size;
    uint32_t initial_window;
    uint32_t max_concurrent_streams;
    uint32_t idle_timeout_seconds;
    char server_version[64];
} moat_client_limits;

/* Connects to addr ("host:port", "[v6]:port" or "unix:/path"), sends Hello
 * and waits for HelloAck. On success *out is owned by the caller (free with
 * moat_client_close). On failure st (may be NULL) says why, with the status
 * a server End/GoAway carried, or UNAVAILABLE for transport errors. */
moat_err moat_client_connect(const char *addr, const moat_client_options *opts, moat_client **out,
                             moat_status *st);
/* Closes the socket and frees the client and every call not yet freed. */
void moat_client_close(moat_client *c);
/* Valid as long as c is. */
const moat_client_limits *moat_client_get_limits(const moat_client *c);
/* Sends a Ping and waits for its Pong, answering other traffic meanwhile.
 * MOAT_E_TIMEOUT if none came within timeout_ms (< 0: forever). */
moat_err moat_client_ping(moat_client *c, int timeout_ms);

/* Opens a call: Call frame (method like "/moat.v1.Exec/RunCommand", deadline
 * in ms or 0, metadata copied) then one Message with the encoded request.
 * *out is owned by the caller until moat_call_free (or moat_client_close).
 * MOAT_E_TOO_BIG if the request does not fit a frame or the stream window,
 * or max_concurrent_streams calls are open; MOAT_E_CLOSED if the connection
 * is gone or the server sent GoAway. */
moat_err moat_call_start(moat_client *c, const char *method, uint64_t deadline_ms,
                         const moat_kv *metadata, size_t metadata_count, moat_slice request,
                         moat_call **out);
/* Next response message of the call. MOAT_OK: *msg is valid until the next
 * moat_call_recv, moat_client_ping or moat_call_free on this client;
 * MOAT_E_CLOSED: the call has ended, see moat_call_status (EOF without End is
 * UNAVAILABLE; a deadline passed locally is DEADLINE_EXCEEDED);
 * MOAT_E_TIMEOUT: nothing within timeout_ms (< 0: wait forever). */
moat_err moat_call_recv(moat_call *call, int timeout_ms, moat_slice *msg);
/* The final status once moat_call_recv returned MOAT_E_CLOSED. Valid as long as call. */
const moat_status *moat_call_status(const moat_call *call);
/* Sends Cancel; the server answers with End CANCELLED, read by moat_call_recv. */
moat_err moat_call_cancel(moat_call *call, const char *reason);
/* Forgets the call (cancelling it first if it has not ended). */
void moat_call_free(moat_call *call);

/* Unary helper: start, one response copied into resp[0..cap) (*resp_len),
 * then the End. Returns MOAT_OK when the status is OK; MOAT_E_REMOTE with st
 * filled for an error status; other errors for transport problems (st is
 * filled then too). MOAT_E_TOO_BIG if the response exceeds cap. */
moat_err moat_client_unary(moat_client *c, const char *method, uint64_t deadline_ms,
                           moat_slice request, uint8_t *resp, size_t cap, size_t *resp_len,
                           moat_status *st);

/* moat.v1.ExecEvent as plain C, decoded with nanopb. Slices point into the
 * payload given to moat_exec_event_decode (zero copy). */
typedef enum moat_exec_kind {
    MOAT_EXEC_NONE = 0,
    MOAT_EXEC_INIT = 3,
    MOAT_EXEC_OUTPUT = 4,
    MOAT_EXEC_RESULT = 5,
    MOAT_EXEC_ERROR = 6,
    MOAT_EXEC_COMPLETE = 7,
    MOAT_EXEC_EXIT = 8,
} moat_exec_kind;

#define MOAT_EXEC_STDOUT        1u
#define MOAT_EXEC_STDERR        2u
#define MOAT_EXEC_MAX_TRACEBACK 32u

typedef struct moat_exec_event {
    uint64_t sequence;
    int64_t timestamp_ms;
    moat_exec_kind kind;
    moat_slice execution_id; /* init */
    uint32_t stream;         /* output: MOAT_EXEC_STDOUT / MOAT_EXEC_STDERR */
    moat_slice data;         /* output */
    moat_slice text;         /* result */
    moat_slice error_name;   /* error */
    moat_slice error_value;
    size_t traceback_count; /* at most MOAT_EXEC_MAX_TRACEBACK kept */
    bool traceback_truncated;
    moat_slice traceback[MOAT_EXEC_MAX_TRACEBACK];
    uint64_t execution_time_ms; /* complete */
    bool exit_known;            /* exit: a code, or else an unknown reason */
    int32_t exit_code;
    moat_slice exit_unknown_reason;
    bool timed_out;
} moat_exec_event;

/* Slices in *ev point into payload and live as long as it does. MOAT_E_PROTO
 * for malformed input, MOAT_E_UNKNOWN_KIND when no kind is set. */
moat_err moat_exec_event_decode(moat_slice payload, moat_exec_event *ev);
/* Encodes ev (as a server would) into out[0..cap); MOAT_E_TOO_BIG if short. */
moat_err moat_exec_event_encode(const moat_exec_event *ev, uint8_t *out, size_t cap, size_t *len);

/* Request encoders for the calls the CLI makes; strings are C strings (NULL
 * = empty), the output goes to out[0..cap), MOAT_E_TOO_BIG if short. */
typedef struct moat_run_command_req {
    const char *session_id;
    const char *command;
    const char *cwd;
    uint64_t timeout_ms;
    const moat_kv *env;
    size_t env_count;
    bool background;
} moat_run_command_req;

moat_err moat_run_command_req_encode(const moat_run_command_req *req, uint8_t *out, size_t cap,
                                     size_t *len);

/* One Files/Write call: data written at offset. offset 0 creates or truncates
 * the file and applies mode; offset > 0 needs the file to exist (NOT_FOUND
 * otherwise), writes without truncating and ignores mode. A file larger than
 * one request goes as several calls in order (offset 0, then where each piece
 * ended), each carrying at most moat_client_write_max bytes. */
typedef struct moat_write_req {
    const char *session_id;
    const char *path;
    moat_slice data;
    uint32_t mode; /* permission bits (0640), used at offset 0; 0: 0644 */
    uint64_t offset;
} moat_write_req;

moat_err moat_write_req_encode(const moat_write_req *req, uint8_t *out, size_t cap, size_t *len);

/* The most data bytes one Write for session_id and path may carry on c: the
 * request must fit in a frame (less 4 KiB for the envelope) and in the
 * stream's initial window. 0 when not even an empty one fits. */
size_t moat_client_write_max(const moat_client *c, const char *session_id, const char *path);

/* Files/Write as a unary call with deadline_ms (0: none). The request is
 * encoded into buf[0..cap) (the caller's scratch space, used only during the
 * call; max_frame_size bytes always suffice); req's strings and data are only
 * read during the call. *written is WriteResponse.written. Returns and fills st
 * as moat_client_unary; MOAT_E_TOO_BIG (INVALID_ARGUMENT) if the request does
 * not fit buf, MOAT_E_PROTO (INTERNAL) if the response does not decode. */
moat_err moat_client_write(moat_client *c, const moat_write_req *req, uint64_t deadline_ms,
                           uint8_t *buf, size_t cap, uint64_t *written, moat_status *st);

#ifdef __cplusplus
}
#endif
#endif
