/* libmoat: a blocking client for moatd's framed protocol (docs/PROTOCOL.md).
 * One connection carries many calls; each call has its own flow-control
 * window, and window updates go out as the application consumes messages.
 * Buffers are sized at connect from the server's limits; nothing is allocated
 * per message.
 *
 * Two levels: typed calls for every method of moat.v1's services (Sandboxes,
 * Exec, Files, Health; below), and the raw calls they are made of (a method
 * name and encoded protobuf bytes) for anything else.
 *
 * Link with `pkg-config --libs moat` or CMake's find_package(moat) and
 * moat::moat (moat::moat_static for libmoat.a). libmoat needs nothing else:
 * its protobuf runtime is inside it.
 *
 * A moat_client is not thread-safe: use one per thread, or lock around it.
 *
 * In a moat cluster (docs/CLUSTER.md, "Routing") a call for a session that
 * another node holds ends FAILED_PRECONDITION, reason session_moved, naming
 * the owner's address. The typed calls that name a session follow it: the
 * call is sent again to the owner, on a connection the client opens to it
 * (same token and client name), within the call's one deadline, and the
 * session's owner is remembered (at most 1024 sessions; SandboxSession
 * answers naming an owner count too), so its later calls go straight there.
 * A second move in a row is followed too; a third ends UNAVAILABLE, reason
 * redirect_loop; an owner_address that is not host:port ends INTERNAL,
 * reason bad_redirect; a remembered owner that cannot be reached is forgotten
 * and the call goes to the address given to moat_client_connect (the seed).
 * A call is followed only while it has had no answer (a redirect is always a
 * call's first and only answer), so nothing is ever received twice.
 * The client holds at most 16 connections to other nodes, closes those idle
 * for a minute, and closes them all with moat_client_close. Raw calls
 * (moat_call_start, moat_client_unary), ListSessions and Health go to the
 * seed and are never redirected. Against a single moatd none of this
 * happens and a moat_client is one connection, as it always was. */
#ifndef MOAT_CLIENT_H
#define MOAT_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "moat/common.h"

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
/* The connection's socket, for a program that waits on its own descriptors
 * too (a terminal, stdin) with poll(): readable means moat_call_recv has
 * something to read. libmoat reads ahead, so wait on it only after
 * moat_call_recv(call, 0, …) said MOAT_E_TIMEOUT, and after any other call
 * into libmoat on this client ask moat_call_recv(call, 0, …) again first.
 * Keepalive pings go out from within libmoat's calls: wait at most half of
 * idle_timeout_seconds between them. Owned by c: never read, write or close it.
 * This is the seed connection's: a call that followed its session to another
 * node is on that node's connection (moat_call_fd). */
int moat_client_fd(const moat_client *c);
/* The socket of the connection that carries call: moat_client_fd's, or,
 * once the call followed its session to another node, that node's
 * connection. A program that polls waits on this one for the call, with the
 * rules of moat_client_fd. Owned by the client. */
int moat_call_fd(const moat_call *call);

/* Called, when set, each time a call follows session_moved: session_id and
 * the addresses it went from and to, valid only during the call. For
 * logging (the CLI's --verbose); it must not call into c. fn NULL: none. */
typedef void (*moat_redirect_fn)(const char *session_id, const char *from_addr, const char *to_addr,
                                 void *arg);
void moat_client_on_redirect(moat_client *c, moat_redirect_fn fn, void *arg);

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
 * moat_call_recv, moat_call_send, moat_client_ping or moat_call_free on this
 * client;
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
/* One more request Message on an open call, for methods that take a stream of
 * requests (Exec/Interactive). Its payload counts against the call's send
 * window: when the credit left is short, this waits up to timeout_ms (< 0:
 * forever, 0: not at all) for the server's WindowUpdates, reading and keeping
 * every other frame meanwhile (moat_call_recv returns them later, in order).
 * MOAT_E_TIMEOUT: no credit in time, nothing sent; MOAT_E_TOO_BIG: the payload
 * can never fit a frame or the initial window; MOAT_E_CLOSED: the call has
 * ended or the connection is gone (moat_call_status says why once
 * moat_call_recv returned MOAT_E_CLOSED). payload is read only during the call. */
moat_err moat_call_send(moat_call *call, moat_slice payload, int timeout_ms);
/* The credit left: the payload bytes moat_call_send can send now without waiting.
 * Credit comes in WindowUpdates, for which moat_call_recv does not return: a
 * program that must not block waits on moat_client_fd and then reads with
 * moat_call_recv(call, 0, …), which takes them in. */
uint32_t moat_call_send_window(const moat_call *call);

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
/* Request encoders for use with moat_call_start; strings are C strings (NULL
 * = empty), the output goes to out[0..cap), MOAT_E_TOO_BIG if short. The
 * typed calls below encode for themselves. */
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
 * ended), each carrying at most moat_file_write_max bytes. */
typedef struct moat_write_req {
    const char *session_id;
    const char *path;
    moat_slice data;
    uint32_t mode; /* permission bits (0640), used at offset 0; 0: 0644 */
    uint64_t offset;
} moat_write_req;

moat_err moat_write_req_encode(const moat_write_req *req, uint8_t *out, size_t cap, size_t *len);

/* Typed calls, one per method of moat.v1's services.
 *
 * Each takes deadline_ms (0: none) and st (may be NULL). They return MOAT_OK
 * when the call ended OK; MOAT_E_REMOTE with st holding the server's status
 * (code, message, reason, details) when it ended with another; MOAT_E_PROTO
 * (st INTERNAL, reason bad_response) when the answer does not decode; other
 * errors, with st filled too, when the request does not fit a frame
 * (MOAT_E_TOO_BIG) or the connection fails.
 *
 * Request strings are C strings (NULL is empty), read only during the call.
 * Slices in a unary call's result point into a buffer of the client: they stay
 * valid until the next call started on the same client (typed or raw), or its
 * close. Copy what must outlive that (moat_slice_copy). */

/* moat.v1.Sandboxes */

typedef enum moat_session_status {
    MOAT_SESSION_STATUS_UNSPECIFIED = 0,
    MOAT_SESSION_RUNNING = 1, /* its execd answers */
    MOAT_SESSION_STOPPED = 2, /* stopped by a client or the TTL reaper */
    MOAT_SESSION_EXPIRED = 3, /* past its expiry, awaiting the reaper */
    MOAT_SESSION_GONE = 4,    /* Docker no longer has its container */
} moat_session_status;

/* "RUNNING", "STOPPED", "EXPIRED", "GONE"; "UNSPECIFIED" otherwise. Static. */
const char *moat_session_status_name(moat_session_status status);

#define MOAT_SESSION_MAX_LABELS 32u

typedef struct moat_session {
    moat_slice session_id; /* canonical UUID */
    moat_slice chat_id;    /* canonical UUID */
    moat_slice container_id;
    moat_session_status status;
    int64_t created_at_ms; /* Unix ms, UTC */
    int64_t expires_at_ms;
    moat_slice image;
    size_t label_count; /* at most MOAT_SESSION_MAX_LABELS kept */
    bool labels_truncated;
    moat_kv labels[MOAT_SESSION_MAX_LABELS];
} moat_session;

typedef struct moat_session_create_req {
    const char *chat_id;  /* any UUID spelling */
    uint32_t ttl_seconds; /* 0: the server's default */
    bool force_new;       /* a new session even if the chat has a live one */
    const char *image;    /* NULL: the server's default; else one it allows */
    /* Resource wishes, each capped by the server; 0: its default. */
    uint64_t memory_bytes;
    uint32_t cpu_millis; /* 1000 = one core */
    uint32_t pids_limit;
} moat_session_create_req;

/* Returns once the sandbox's execd answers; idempotent per chat unless force_new. */
moat_err moat_session_create(moat_client *c, const moat_session_create_req *req,
                             uint64_t deadline_ms, moat_session *out, moat_status *st);
moat_err moat_session_get(moat_client *c, const char *session_id, uint64_t deadline_ms,
                          moat_session *out, moat_status *st);
/* New lifetime counted from now; ttl_seconds 0: the server's default. */
moat_err moat_session_renew(moat_client *c, const char *session_id, uint32_t ttl_seconds,
                            uint64_t deadline_ms, moat_session *out, moat_status *st);
/* *stopped (may be NULL) is false when it was already stopped. */
moat_err moat_session_stop(moat_client *c, const char *session_id, uint64_t deadline_ms,
                           bool *stopped, moat_status *st);

/* Called once per session, in order; *session (and its slices) is valid only
 * during the call. Returning false stops the listing, which still returns OK. */
typedef bool (*moat_session_fn)(const moat_session *session, void *arg);
/* Sessions of chat_id (NULL: of every chat). */
moat_err moat_session_list(moat_client *c, const char *chat_id, uint64_t deadline_ms,
                           moat_session_fn fn, void *arg, moat_status *st);

/* moat.v1.Exec. RunCommand, RunInShell and Attach are streams: each starts a
 * call (*out owned by the caller until moat_call_free or moat_client_close)
 * whose events moat_exec_next reads. The call ends after the exit event
 * (moat_call_status then says how it ended). */

moat_err moat_exec_run(moat_client *c, const moat_run_command_req *req, uint64_t deadline_ms,
                       moat_call **out, moat_status *st);

typedef struct moat_run_in_shell_req {
    const char *session_id;
    const char *shell_id; /* from moat_shell_create */
    const char *command;
    const char *cwd; /* NULL: the shell's */
    uint64_t timeout_ms;
} moat_run_in_shell_req;

moat_err moat_exec_run_in_shell(moat_client *c, const moat_run_in_shell_req *req,
                                uint64_t deadline_ms, moat_call **out, moat_status *st);
/* Replays the execution's events after sequence after_sequence, then the live
 * ones. Events no longer kept end the call with DATA_LOSS. */
moat_err moat_exec_attach(moat_client *c, const char *session_id, const char *execution_id,
                          uint64_t after_sequence, uint64_t deadline_ms, moat_call **out,
                          moat_status *st);
/* The next event of an Exec stream: moat_call_recv, then moat_exec_event_decode
 * into *ev (its slices valid as moat_call_recv's message). MOAT_E_CLOSED once
 * the call has ended; MOAT_E_PROTO or MOAT_E_UNKNOWN_KIND for an event that
 * does not decode, after which the stream may still be read. */
moat_err moat_exec_next(moat_call *call, int timeout_ms, moat_exec_event *ev);

/* Exec/Interactive: a command with its stdin, or a terminal (a pty, as
 * `docker exec -it` makes). Its events come from moat_exec_next as for
 * moat_exec_run: init (execution_id: the terminal session's id, for
 * attach_id), output (with tty every byte is MOAT_EXEC_STDOUT), exit. Input
 * goes with the moat_exec_stdin family below, each one request Message that
 * waits for send window as moat_call_send does. */
typedef struct moat_interactive_req {
    const char *session_id;
    const char *command; /* run by bash -c; NULL or "": an interactive bash */
    const char *cwd;     /* NULL: the image's default */
    bool tty;
    uint32_t rows, cols;   /* the terminal's first size (1..65535); 0, 0: execd's default */
    const char *term;      /* TERM for a tty; NULL: execd's default */
    const char *attach_id; /* reattach to this running terminal session instead */
    uint64_t after_offset; /* with attach_id: replay its output from this byte on */
} moat_interactive_req;

/* MOAT_E_INVAL (st INVALID_ARGUMENT, reason bad_terminal_size) for a size
 * out of range, before anything is sent. *out as for moat_exec_run. */
moat_err moat_exec_interactive(moat_client *c, const moat_interactive_req *req,
                               uint64_t deadline_ms, moat_call **out, moat_status *st);
/* The most bytes one moat_exec_stdin may carry on c (a frame and the initial
 * window, less the request's envelope). */
size_t moat_exec_stdin_max(const moat_client *c);
/* Bytes for the process's stdin; at most moat_exec_stdin_max (MOAT_E_TOO_BIG
 * otherwise). Errors as moat_call_send's. */
moat_err moat_exec_stdin(moat_call *call, moat_slice data, int timeout_ms);
/* moat_exec_stdin of what fd has now, at most max bytes (and moat_exec_stdin_max): *moved
 * says how many went, 0 with MOAT_OK at fd's end. From a pipe or a file the bytes go by
 * splice, the kernel handing their pages to the connection without a copy through the
 * caller (but through a buffer while a routed call still keeps what it sends); from anything
 * else (a terminal) by read. MOAT_E_AGAIN: nothing to read now (fd is non-blocking); MOAT_E_IO:
 * reading failed (errno says why); others as moat_exec_stdin's. */
moat_err moat_exec_stdin_from_fd(moat_call *call, int fd, size_t max, size_t *moved,
                                 int timeout_ms);
/* End of input: the process reads EOF (in a tty, execd sends VEOF). */
moat_err moat_exec_close_stdin(moat_call *call, int timeout_ms);
/* The terminal's new size; MOAT_E_INVAL for 0 or past 65535, nothing sent. */
moat_err moat_exec_resize(moat_call *call, uint32_t rows, uint32_t cols, int timeout_ms);
/* A signal to the process group by name: "SIGINT", "SIGTERM", "SIGKILL",
 * "SIGQUIT" or "SIGHUP" (the server ends the call INVALID_ARGUMENT for others). */
moat_err moat_exec_signal(moat_call *call, const char *name, int timeout_ms);

/* *shell_id points into the client's buffer (see above). */
moat_err moat_shell_create(moat_client *c, const char *session_id, const char *cwd,
                           uint64_t deadline_ms, moat_slice *shell_id, moat_status *st);
moat_err moat_shell_delete(moat_client *c, const char *session_id, const char *shell_id,
                           uint64_t deadline_ms, moat_status *st);
moat_err moat_exec_interrupt(moat_client *c, const char *session_id, const char *execution_id,
                             uint64_t deadline_ms, moat_status *st);

typedef struct moat_command_status {
    moat_slice execution_id;
    moat_slice command;
    bool running;
    bool exited;                    /* the fields below are set */
    bool exit_known;                /* exit_code holds the status, else */
    int32_t exit_code;              /* -1 when a signal killed it */
    moat_slice exit_unknown_reason; /* why it is unknown */
    moat_slice error;               /* e.g. "exit status 3"; empty on success */
    int64_t started_at_ms;
    int64_t finished_at_ms; /* 0 while running */
} moat_command_status;

moat_err moat_exec_status(moat_client *c, const char *session_id, const char *execution_id,
                          uint64_t deadline_ms, moat_command_status *out, moat_status *st);

/* The merged output of a background command from byte cursor on. */
typedef struct moat_command_logs {
    moat_slice data;
    uint64_t next_cursor; /* the cursor for the next read */
} moat_command_logs;

moat_err moat_exec_logs(moat_client *c, const char *session_id, const char *execution_id,
                        uint64_t cursor, uint64_t deadline_ms, moat_command_logs *out,
                        moat_status *st);

/* moat.v1.Files */

typedef enum moat_file_type {
    MOAT_FILE_TYPE_UNSPECIFIED = 0,
    MOAT_FILE_REGULAR = 1,
    MOAT_FILE_DIRECTORY = 2,
    MOAT_FILE_SYMLINK = 3,
    MOAT_FILE_OTHER = 4,
} moat_file_type;

typedef struct moat_file_info {
    moat_slice path;
    moat_file_type type;
    uint64_t size;
    uint32_t mode; /* permission bits, e.g. 0644 */
    moat_slice owner;
    moat_slice group;
    int64_t modified_at_ms;
} moat_file_info;

moat_err moat_file_stat(moat_client *c, const char *session_id, const char *path,
                        uint64_t deadline_ms, moat_file_info *out, moat_status *st);

/* Called once per entry; *entry is valid only during the call. Returning false
 * stops the listing, which still returns OK. */
typedef bool (*moat_file_fn)(const moat_file_info *entry, void *arg);
/* Entries under path, depth levels down (0: 1). */
moat_err moat_file_list(moat_client *c, const char *session_id, const char *path, uint32_t depth,
                        uint64_t deadline_ms, moat_file_fn fn, void *arg, moat_status *st);

/* Files/Read: a stream of chunks in order, read with moat_file_next.
 * length 0 reads to the end. *out as for moat_exec_run. */
moat_err moat_file_read(moat_client *c, const char *session_id, const char *path, uint64_t offset,
                        uint64_t length, uint64_t deadline_ms, moat_call **out, moat_status *st);

typedef struct moat_file_chunk {
    uint64_t offset;
    moat_slice data; /* valid as moat_call_recv's message */
} moat_file_chunk;

/* The next chunk: MOAT_OK, MOAT_E_CLOSED once the call has ended (see
 * moat_call_status), MOAT_E_TIMEOUT, or MOAT_E_PROTO for a chunk that does
 * not decode. */
moat_err moat_file_next(moat_call *call, int timeout_ms, moat_file_chunk *chunk);

/* The most data bytes one Write for session_id and path may carry on c: the
 * request must fit in a frame (less 4 KiB for the envelope) and in the
 * stream's initial window. 0 when not even an empty one fits. A larger file
 * goes as several writes (see moat_write_req). */
size_t moat_file_write_max(const moat_client *c, const char *session_id, const char *path);
/* One Files/Write. *written (may be NULL) is the bytes the server wrote. */
moat_err moat_file_write(moat_client *c, const moat_write_req *req, uint64_t deadline_ms,
                         uint64_t *written, moat_status *st);
moat_err moat_file_remove(moat_client *c, const char *session_id, const char *path, bool recursive,
                          uint64_t deadline_ms, moat_status *st);
moat_err moat_file_move(moat_client *c, const char *session_id, const char *src, const char *dest,
                        uint64_t deadline_ms, moat_status *st);
/* Parents are created too; mode 0: 0755. */
moat_err moat_file_mkdir(moat_client *c, const char *session_id, const char *path, uint32_t mode,
                         uint64_t deadline_ms, moat_status *st);

typedef struct moat_chmod_req {
    const char *session_id;
    const char *path;
    uint32_t mode;
    const char *owner; /* NULL: unchanged */
    const char *group; /* NULL: unchanged */
} moat_chmod_req;

moat_err moat_file_chmod(moat_client *c, const moat_chmod_req *req, uint64_t deadline_ms,
                         moat_status *st);

/* moat.v1.Health */

typedef enum moat_serving_status {
    MOAT_SERVING_UNKNOWN = 0,
    MOAT_SERVING = 1,
    MOAT_NOT_SERVING = 2,
} moat_serving_status;

typedef struct moat_health {
    moat_serving_status status;
    moat_slice server_version;
    bool docker_reachable; /* the engine answered its last probe */
    uint32_t live_sessions;
    uint32_t pool_size;  /* warm sandboxes moatd keeps for new chats (0: no pool) */
    uint32_t pool_ready; /* of those, ready to claim now */
    bool pool_failing;   /* the pool's last starts failed (moatd's log says why) */
} moat_health;

moat_err moat_health_check(moat_client *c, uint64_t deadline_ms, moat_health *out, moat_status *st);

#ifdef __cplusplus
}
#endif
#endif
