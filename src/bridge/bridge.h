/* moat bridge: the client of a sandbox's execd (moat-execd or OpenSandbox's
 * execd). It speaks execd's HTTP + SSE API with libcurl's multi_socket
 * interface, driven by an external event loop (or libuv through
 * moat_bridge_attach_uv), turns the SSE stream into plain C events with
 * per-execution sequence numbers and an explicit exit code, applies
 * back-pressure per execution, keeps a bounded replay ring per execution for
 * Attach, and offers execd's session, status, log and file calls.
 *
 * Threading: single-threaded. Every function and every callback runs on the
 * loop thread. Callbacks may run from inside moat_bridge_socket_action,
 * moat_bridge_timeout, moat_bridge_exec_credit and moat_bridge_attach;
 * callbacks may call back into the bridge (credit, detach, cancel, new calls),
 * but must not free the bridge.
 *
 * docs/bridge.md describes the behaviour in detail. */
#ifndef MOAT_BRIDGE_H
#define MOAT_BRIDGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/common.h"

#ifdef __cplusplus
extern "C" {
#endif

struct uv_loop_s;

typedef struct moat_bridge moat_bridge;
/* One execution's stream (a run, or an Attach to one). Owned by the bridge. */
typedef struct moat_bridge_exec moat_bridge_exec;
/* One file download or upload. Owned by the bridge. */
typedef struct moat_bridge_xfer moat_bridge_xfer;

/* ------------------------------------------------------------------ config */

/* What to do with an SSE line longer than max_line. */
typedef enum moat_bridge_oversize {
    /* End the stream: RESOURCE_EXHAUSTED, reason "sse_line_too_long". */
    MOAT_BRIDGE_OVERSIZE_FAIL = 0,
    /* Skip the line (counted in moat_bridge_exec_stats, logged at WARN) and
     * carry on with the next line. */
    MOAT_BRIDGE_OVERSIZE_SKIP = 1,
} moat_bridge_oversize;

/* One cap over the output bytes a process holds (docs/bridge.md, "Memory
 * budget"): every execution's replay ring plus what the owner charges for its
 * own queues (moat_bridge_budget_charge). Owned by the caller, outlives the
 * bridge, single-threaded like it. Counters are for metrics. */
typedef struct moat_bridge_budget {
    size_t cap;             /* bytes; 0 = no cap */
    size_t used;            /* bytes held now: rings, charged bytes, and the
                             * buffers of run transfers (curl's, the decoder's) */
    size_t pinned;          /* of them, those that cannot be dropped: events not yet
                             * delivered to a consumer, and charged bytes */
    size_t peak;            /* highest `used` seen */
    uint64_t dropped_bytes; /* retained replay dropped to stay under cap */
    uint64_t refused;       /* streams refused with memory_budget_exhausted */
} moat_bridge_budget;

/* One party's share of the budget (moatd: one client connection): the bytes
 * its consumers pin. Owned by the caller; must outlive the executions whose
 * consumer names it (moat_bridge_consumer.account) and its charges. */
typedef struct moat_bridge_account {
    size_t pinned;
    size_t charged; /* of pinned, the owner's charges (moatd: frames its client has not taken) */
    size_t limit;   /* 0 = only the global cap */
} moat_bridge_account;

typedef struct moat_bridge_config {
    /* Longest SSE line (bytes, without its LF) the parser holds. Default 1 MiB. */
    size_t max_line;
    moat_bridge_oversize oversize;
    /* Replay ring per execution, in bytes held (event payloads plus about
     * 100 bytes each). The transfer pauses when undelivered events fill half
     * of it. Default 4 MiB; minimum 256 KiB. */
    size_t replay_bytes;
    /* A stream with no byte from execd for this long ends with UNAVAILABLE,
     * reason "execd_silent". Rounded up to whole seconds. Default 30000
     * (execd pings every 3 s). */
    uint32_t idle_timeout_ms;
    /* Connecting to execd. Default 10000. */
    uint32_t connect_timeout_ms;
    /* Whole-call limit for the non-streaming calls (sessions, status, files
     * metadata). Default 60000. Downloads and uploads use idle_timeout_ms. */
    uint32_t call_timeout_ms;
    /* How long a finished execution stays attachable after its last event
     * when no consumer is attached. Default 300000. */
    uint32_t retention_ms;
    /* Largest JSON or log body read for a non-streaming call. Default 16 MiB. */
    size_t max_body;
    /* Send `X-Moat-Output: binary` on runs (decoded only when echoed).
     * Default true. */
    bool binary_output;
    /* Shared cap over held output, or NULL for none (the default). Past the
     * cap, retained replay (delivered events, executions without consumer)
     * is dropped oldest first; when only undelivered events are left,
     * transfers pause and new runs and attaches are refused
     * (RESOURCE_EXHAUSTED, reason "memory_budget_exhausted", detail
     * scope=server). Transfers held by the budget resume at the next socket
     * action, timeout or sweep after bytes were released. */
    moat_bridge_budget *budget;
} moat_bridge_config;

/* Fills every field with its default. */
void moat_bridge_config_default(moat_bridge_config *cfg);

/* Where an execd listens. Strings are copied by every call that takes it. */
typedef struct moat_bridge_endpoint {
    /* Path of execd's Unix socket, or NULL for TCP. */
    const char *unix_socket;
    /* "http://host:port" for TCP; ignored (may be NULL) with unix_socket. */
    const char *base_url;
    /* Sent as X-EXECD-ACCESS-TOKEN when non-NULL and non-empty. */
    const char *access_token;
    /* Name of the sandbox (moat's session id); executions are attachable
     * by (scope, execution id). NULL means "". */
    const char *scope;
} moat_bridge_endpoint;

/* ------------------------------------------------------------------ events */

typedef enum moat_bridge_event_kind {
    MOAT_BRIDGE_EV_INIT = 1,
    MOAT_BRIDGE_EV_OUTPUT = 2,
    MOAT_BRIDGE_EV_RESULT = 3,
    MOAT_BRIDGE_EV_ERROR = 4,
    MOAT_BRIDGE_EV_COMPLETE = 5,
    MOAT_BRIDGE_EV_EXIT = 6, /* always the last event */
} moat_bridge_event_kind;

/* Numbered as moat.v1.OutputStream. */
typedef enum moat_bridge_stream {
    MOAT_BRIDGE_STDOUT = 1,
    MOAT_BRIDGE_STDERR = 2,
} moat_bridge_stream;

/* Text owned by someone else: `len` bytes at `data`, followed by a NUL that
 * is not counted. Text parsed from execd's JSON holds no NUL: a \u0000 there
 * arrives as U+FFFD (docs/bridge.md). */
typedef struct moat_bridge_str {
    const char *data;
    size_t len;
} moat_bridge_str;

/* One event, as moat.v1.ExecEvent carries it. Every pointer inside is valid
 * only during the callback that receives it. */
typedef struct moat_bridge_event {
    uint64_t sequence;    /* per execution, from 1, no gaps */
    int64_t timestamp_ms; /* execd's timestamp (Unix ms); 0 when it sent none */
    moat_bridge_event_kind kind;
    union {
        struct {
            moat_bridge_str execution_id;
        } init;
        struct {
            moat_bridge_stream stream;
            /* binary-safe mode: exactly the bytes; line mode: the UTF-8
             * text, a \u0000 in it read as U+FFFD */
            const uint8_t *data;
            size_t len;
        } output;
        struct {
            moat_bridge_str text;
        } result;
        struct {
            moat_bridge_str name;
            moat_bridge_str value;
            const moat_bridge_str *traceback; /* `traceback: null` → count 0 */
            size_t traceback_count;
        } error;
        struct {
            uint64_t execution_time_ms;
        } complete;
        struct {
            bool known;                     /* false: the code is unknown, see reason */
            int32_t code;                   /* when known; -1 when a signal killed it */
            bool timed_out;                 /* the run's own timeout killed it */
            moat_bridge_str unknown_reason; /* when !known */
        } exit;
    } u;
} moat_bridge_event;

/* Bytes of credit an event consumes: the payload bytes (output data, or the
 * sum of its strings) plus 16, capped at MOAT_BRIDGE_MAX_EVENT_COST. A
 * consumer that grants at least MOAT_BRIDGE_MAX_EVENT_COST never stalls on a
 * big event. */
#define MOAT_BRIDGE_MAX_EVENT_COST (65536u + 1024u)
/* The most one run transfer adds to a budget's `used` past its cap: a write taken past
 * the check, curl's receive buffer as filled, what a pause makes curl keep (counted as
 * twice the receive buffer) and the decoder's binary buffer. The budget bounds output
 * held; these costs per transfer are bounded by how many transfers are open. */
#define MOAT_BRIDGE_TRANSFER_OVERSHOOT_MAX ((128u + 128u + 256u + 64u) << 10)
size_t moat_bridge_event_cost(const moat_bridge_event *ev);

/* ------------------------------------------------- decoder (no I/O at all) */

/* The SSE parser plus the mapping to events: feed the body bytes of one
 * execution's stream, in chunks split anywhere, and get events with sequence
 * numbers; finish at end of body to get the final EXIT event. Used by
 * moat_bridge_run; public for tests, the fuzzer and the benchmark. */
typedef struct moat_bridge_decoder moat_bridge_decoder;

typedef struct moat_bridge_decoder_opts {
    size_t max_line; /* 0 → 1 MiB */
    moat_bridge_oversize oversize;
    bool binary;      /* the response confirmed X-Moat-Output: binary */
    bool background;  /* a background run: its exit code is unknown */
    bool timeout_set; /* the run had a timeout (for exit.timed_out) */
} moat_bridge_decoder_opts;

/* Called for each event. Returning false stops the decoder (feed returns
 * MOAT_E_CLOSED). `ev` and its pointers are valid during the call only. */
typedef bool (*moat_bridge_emit_fn)(void *ud, const moat_bridge_event *ev);

/* *out is owned by the caller: moat_bridge_decoder_free. */
moat_err moat_bridge_decoder_new(const moat_bridge_decoder_opts *opts, moat_bridge_decoder **out);
void moat_bridge_decoder_free(moat_bridge_decoder *d);
/* Consumes all `len` bytes. MOAT_OK: consumed, call again with more.
 * MOAT_E_TOO_BIG (oversize FAIL) or MOAT_E_PROTO (a broken binary frame): the
 * stream cannot go on; *st says why. After an error or finish, feed returns
 * MOAT_E_STATE. */
moat_err moat_bridge_decoder_feed(moat_bridge_decoder *d, const uint8_t *data, size_t len,
                                  moat_bridge_emit_fn emit, void *ud, moat_status *st);
/* The body ended cleanly: flushes a last unterminated line (execd appends a
 * bare {"code","message"} object without LFs), then emits the EXIT event by
 * the seed rule. MOAT_E_PROTO with *st (UNAVAILABLE, "execd_stream_truncated")
 * when the body stopped inside an event and no final event came; the EXIT
 * event is emitted anyway. */
moat_err moat_bridge_decoder_finish(moat_bridge_decoder *d, moat_bridge_emit_fn emit, void *ud,
                                    moat_status *st);
/* The transport broke (reset, truncated chunk, silence): emits EXIT by the
 * seed rule with `reason` when it is unknown. Returns true when a final event
 * (complete or error) had already arrived, i.e. nothing was lost (real execd
 * sometimes ends its chunked body badly after the last event). */
bool moat_bridge_decoder_abort(moat_bridge_decoder *d, const char *reason, moat_bridge_emit_fn emit,
                               void *ud);
/* Lines skipped (blank lines not counted), and of them too long ones. */
typedef struct moat_bridge_decoder_stats {
    uint64_t events;        /* events emitted */
    uint64_t skipped_lines; /* non-JSON, JSON without type, unknown types, ping, status */
    uint64_t oversize_lines;
    uint64_t api_errors; /* appended {"code","message"} objects */
} moat_bridge_decoder_stats;
void moat_bridge_decoder_get_stats(const moat_bridge_decoder *d, moat_bridge_decoder_stats *out);
/* Bytes the decoder holds allocated for a line or binary event in progress. */
size_t moat_bridge_decoder_buffer_bytes(const moat_bridge_decoder *d);

/* ------------------------------------------------------- bridge and loop */

/* *out is owned by the caller: moat_bridge_free. The config is copied. */
moat_err moat_bridge_new(const moat_bridge_config *cfg, moat_bridge **out);

/* Cancels every call (their end callbacks run with CANCELLED), drops every
 * execution and frees the bridge. With the libuv adapter the adapter's
 * handles close asynchronously: run the loop afterwards until it has no
 * handles left; they no longer refer to the bridge. */
void moat_bridge_free(moat_bridge *b);

/* External loop integration (libcurl multi_socket). `what` for the socket
 * callback: a mask of MOAT_BRIDGE_POLL_IN / _OUT, or MOAT_BRIDGE_POLL_REMOVE
 * (stop watching fd). The timer callback asks for moat_bridge_timeout to be
 * called once after timeout_ms (0 = as soon as possible; -1 = cancel). */
#define MOAT_BRIDGE_POLL_IN     1
#define MOAT_BRIDGE_POLL_OUT    2
#define MOAT_BRIDGE_POLL_REMOVE 4
typedef void (*moat_bridge_socket_fn)(void *ud, int fd, int what);
typedef void (*moat_bridge_timer_fn)(void *ud, long timeout_ms);
/* Must be called before the first call is started, once. */
void moat_bridge_set_loop(moat_bridge *b, moat_bridge_socket_fn sock, moat_bridge_timer_fn timer,
                          void *ud);
/* fd became ready; events is a mask of MOAT_BRIDGE_POLL_IN/_OUT (0 if unknown). */
void moat_bridge_socket_action(moat_bridge *b, int fd, int events);
/* The timer set through moat_bridge_timer_fn fired. Also drops executions
 * whose retention ended. */
void moat_bridge_timeout(moat_bridge *b);

/* Drives the bridge from a libuv loop (uv_poll per socket, one uv_timer, and a
 * 1 s sweep timer for retention). Calls moat_bridge_set_loop; use one or the
 * other. The loop must outlive the bridge. */
moat_err moat_bridge_attach_uv(moat_bridge *b, struct uv_loop_s *loop);

/* ------------------------------------------------------------- executions */

typedef struct moat_bridge_consumer {
    /* Each event in sequence order, only while credit allows. */
    void (*on_event)(void *ud, moat_bridge_exec *ex, const moat_bridge_event *ev);
    /* Exactly once, after the EXIT event or instead of more events: OK, or
     * why the stream ended (UNAVAILABLE execd_silent / execd_reset /
     * execd_stream_truncated, RESOURCE_EXHAUSTED sse_line_too_long, an API
     * error for a non-200 answer with details http_status and body,
     * CANCELLED, ABORTED superseded_by_attach, DATA_LOSS). `ex` must not be
     * used after on_end returns. */
    void (*on_end)(void *ud, moat_bridge_exec *ex, const moat_status *st);
    void *ud;
    /* The party whose share its undelivered events count against, or NULL.
     * A consumer whose account is at its limit pauses its transfer; one that
     * has had every event only while the owner's charges alone fill it. */
    moat_bridge_account *account;
} moat_bridge_consumer;

typedef struct moat_bridge_run_opts {
    const char *command; /* required; blank → INVALID_ARGUMENT, no request */
    const char *cwd;     /* NULL or "" → not sent */
    uint64_t timeout_ms; /* 0 → not sent */
    /* Extra environment (POST /command only): env_count pairs. */
    const char *const *env_keys;
    const char *const *env_values;
    size_t env_count;
    bool background; /* POST /command only */
    /* Non-NULL: run in this bash session (POST /session/{id}/run); env and
     * background must then be unset. */
    const char *session_id;
} moat_bridge_run_opts;

/* Starts a run. On MOAT_OK, *out (owned by the bridge) streams to `c`
 * (copied) starting with `initial_credit` bytes of credit; on_end will be
 * called exactly once. On an error nothing was sent, no callback will run and
 * *st says why (INVALID_ARGUMENT for a blank command). */
moat_err moat_bridge_run(moat_bridge *b, const moat_bridge_endpoint *ep,
                         const moat_bridge_run_opts *opts, const moat_bridge_consumer *c,
                         uint64_t initial_credit, moat_bridge_exec **out, moat_status *st);

/* Grants more credit; paused transfers resume and pending events are
 * delivered (callbacks may run before this returns). Saturates. */
void moat_bridge_exec_credit(moat_bridge_exec *ex, uint64_t bytes);

/* The consumer went away: no more callbacks. The execution goes on (its ring
 * keeps filling; oldest events leave the ring) and stays attachable until it
 * finished and retention_ms passed. `ex` must not be used afterwards. */
void moat_bridge_exec_detach(moat_bridge_exec *ex);

/* Moves the consumer's undelivered bytes to another account (NULL: none),
 * e.g. before the party the account belongs to goes away. */
void moat_bridge_exec_set_account(moat_bridge_exec *ex, moat_bridge_account *account);

/* Stops reading the stream (the command itself goes on in execd; use
 * moat_bridge_interrupt to stop it). on_end runs with CANCELLED before this
 * returns, unless it already ran. */
void moat_bridge_exec_cancel(moat_bridge_exec *ex);

/* The execution id from the init event, or "" before it. Valid while ex is. */
const char *moat_bridge_exec_id(const moat_bridge_exec *ex);

typedef struct moat_bridge_exec_stats {
    uint64_t last_sequence;       /* highest sequence produced */
    uint64_t delivered_sequence;  /* highest sequence given to the consumer */
    uint64_t oldest_sequence;     /* oldest still in the ring (0 if empty) */
    size_t ring_bytes;            /* cost bytes held in the ring */
    size_t transfer_buffer_bytes; /* of curl's receive buffer what the largest write filled,
                                   * plus the decoder's buffers (counted in the budget
                                   * until the transfer ends) */
    uint64_t credit;
    bool paused;   /* the transfer is paused for back-pressure */
    bool finished; /* the stream from execd ended */
    moat_bridge_decoder_stats decoder;
} moat_bridge_exec_stats;
void moat_bridge_exec_get_stats(const moat_bridge_exec *ex, moat_bridge_exec_stats *out);

/* Resumes the execution (scope, execution_id) for a new consumer: replays
 * every event with a sequence greater than after_sequence that it has, then
 * the live ones. A previous consumer gets on_end ABORTED
 * "superseded_by_attach". On an error nothing is attached and *st says why:
 * NOT_FOUND (unknown or no longer retained), DATA_LOSS (events after
 * after_sequence have left the ring), OUT_OF_RANGE (after_sequence beyond
 * the last event). Replayed events may be delivered before this returns. */
moat_err moat_bridge_attach(moat_bridge *b, const char *scope, const char *execution_id,
                            uint64_t after_sequence, const moat_bridge_consumer *c,
                            uint64_t initial_credit, moat_bridge_exec **out, moat_status *st);

/* The owner holds delta more (or, negative, fewer) output bytes for `account`
 * (NULL: none) in queues of its own. They are pinned: over the cap, retained
 * replay is dropped to make room; when bytes are released, transfers paused
 * for the budget resume. A no-op without a budget. */
void moat_bridge_budget_charge(moat_bridge *b, moat_bridge_account *account, int64_t delta);

/* Whether the budget's pinned bytes (or, given an account, the account's) are
 * at their cap. New runs and attaches are refused on the budget's alone. */
bool moat_bridge_budget_exhausted(const moat_bridge *b, const moat_bridge_account *account);

/* The sandbox `scope` is gone: drops its executions that have no consumer
 * (their replay can no longer be wanted). */
void moat_bridge_drop_scope(moat_bridge *b, const char *scope);

/* ------------------------------------------------- simple calls (one answer) */

/* Every call below returns MOAT_OK and later runs its callback exactly once
 * (never before returning), or returns an error with *st set and never runs
 * it. Pointers given to the callback are valid during the callback only.
 * Non-200 answers become a status with reason "execd_api_error" and details
 * http_status, execd_code (when execd sent one) and body (bounded). */
typedef void (*moat_bridge_done_fn)(void *ud, const moat_status *st);

/* POST /session: session_id is the new bash session's id. */
typedef void (*moat_bridge_session_fn)(void *ud, const moat_status *st, const char *session_id);
moat_err moat_bridge_create_session(moat_bridge *b, const moat_bridge_endpoint *ep, const char *cwd,
                                    moat_bridge_session_fn cb, void *ud, moat_status *st);
/* DELETE /session/{id}. */
moat_err moat_bridge_delete_session(moat_bridge *b, const moat_bridge_endpoint *ep,
                                    const char *session_id, moat_bridge_done_fn cb, void *ud,
                                    moat_status *st);
/* DELETE /pty/{id}: ends a terminal session (its process group is killed) and frees its slot
 * among execd's live sessions. */
moat_err moat_bridge_delete_pty(moat_bridge *b, const moat_bridge_endpoint *ep,
                                const char *session_id, moat_bridge_done_fn cb, void *ud,
                                moat_status *st);
/* DELETE /command?id=: stops a running command (or closes a bash session). */
moat_err moat_bridge_interrupt(moat_bridge *b, const moat_bridge_endpoint *ep,
                               const char *execution_id, moat_bridge_done_fn cb, void *ud,
                               moat_status *st);

typedef struct moat_bridge_cmd_status {
    const char *execution_id;
    const char *content; /* the command text, as execd reports it */
    bool running;
    bool exit_known;
    int32_t exit_code;
    const char *error; /* "" on success */
    int64_t started_at_ms;
    int64_t finished_at_ms; /* 0 while running */
} moat_bridge_cmd_status;
typedef void (*moat_bridge_status_fn)(void *ud, const moat_status *st,
                                      const moat_bridge_cmd_status *cs);
/* GET /command/status/{id}. */
moat_err moat_bridge_command_status(moat_bridge *b, const moat_bridge_endpoint *ep,
                                    const char *execution_id, moat_bridge_status_fn cb, void *ud,
                                    moat_status *st);

/* GET /command/{id}/logs?cursor=: at most max_body bytes from `cursor`;
 * next_cursor is where to continue (so a capped read loses nothing). */
typedef void (*moat_bridge_logs_fn)(void *ud, const moat_status *st, const uint8_t *data,
                                    size_t len, uint64_t next_cursor);
moat_err moat_bridge_command_logs(moat_bridge *b, const moat_bridge_endpoint *ep,
                                  const char *execution_id, uint64_t cursor, moat_bridge_logs_fn cb,
                                  void *ud, moat_status *st);

/* Numbered as moat.v1.FileType. */
typedef enum moat_bridge_file_type {
    MOAT_BRIDGE_FILE_UNSPECIFIED = 0,
    MOAT_BRIDGE_FILE_REGULAR = 1,
    MOAT_BRIDGE_FILE_DIRECTORY = 2,
    MOAT_BRIDGE_FILE_SYMLINK = 3,
    MOAT_BRIDGE_FILE_OTHER = 4,
} moat_bridge_file_type;

typedef struct moat_bridge_file_info {
    const char *path;
    moat_bridge_file_type type;
    uint64_t size;
    uint32_t mode; /* permission bits as a number (execd's 755 → 0755) */
    const char *owner;
    const char *group;
    int64_t modified_at_ms;
} moat_bridge_file_info;

/* GET /files/info?path=. */
typedef void (*moat_bridge_stat_fn)(void *ud, const moat_status *st,
                                    const moat_bridge_file_info *fi);
moat_err moat_bridge_stat(moat_bridge *b, const moat_bridge_endpoint *ep, const char *path,
                          moat_bridge_stat_fn cb, void *ud, moat_status *st);
/* GET /directories/list?path=&depth= (depth 0 → 1). */
typedef void (*moat_bridge_list_fn)(void *ud, const moat_status *st,
                                    const moat_bridge_file_info *entries, size_t count);
moat_err moat_bridge_list(moat_bridge *b, const moat_bridge_endpoint *ep, const char *path,
                          uint32_t depth, moat_bridge_list_fn cb, void *ud, moat_status *st);
/* DELETE /files?path= or, recursive, DELETE /directories?path=. */
moat_err moat_bridge_remove(moat_bridge *b, const moat_bridge_endpoint *ep, const char *path,
                            bool recursive, moat_bridge_done_fn cb, void *ud, moat_status *st);
/* POST /files/mv. */
moat_err moat_bridge_move(moat_bridge *b, const moat_bridge_endpoint *ep, const char *src,
                          const char *dest, moat_bridge_done_fn cb, void *ud, moat_status *st);
/* POST /directories (mkdir -p); mode 0 → 0755. */
moat_err moat_bridge_mkdir(moat_bridge *b, const moat_bridge_endpoint *ep, const char *path,
                           uint32_t mode, moat_bridge_done_fn cb, void *ud, moat_status *st);
/* POST /files/permissions; owner/group NULL or "" → unchanged; mode 0 → unchanged. */
moat_err moat_bridge_chmod(moat_bridge *b, const moat_bridge_endpoint *ep, const char *path,
                           uint32_t mode, const char *owner, const char *group,
                           moat_bridge_done_fn cb, void *ud, moat_status *st);

/* ------------------------------------------- streamed file transfers */

typedef struct moat_bridge_download_cbs {
    /* A chunk (at most 64 KiB) at file offset `offset`. Return false when it
     * cannot be taken now: the transfer pauses and the same bytes come again
     * after moat_bridge_xfer_resume. */
    bool (*on_chunk)(void *ud, moat_bridge_xfer *x, uint64_t offset, const uint8_t *data,
                     size_t len);
    /* Exactly once; `x` must not be used after it returns. */
    void (*on_done)(void *ud, moat_bridge_xfer *x, const moat_status *st);
    void *ud;
} moat_bridge_download_cbs;
/* GET /files/download?path= with Range when offset or length (0 = to the
 * end) ask for part of the file. */
moat_err moat_bridge_download(moat_bridge *b, const moat_bridge_endpoint *ep, const char *path,
                              uint64_t offset, uint64_t length, const moat_bridge_download_cbs *cbs,
                              moat_bridge_xfer **out, moat_status *st);

/* Returned by on_read: nothing available now; call moat_bridge_xfer_resume. */
#define MOAT_BRIDGE_READ_PAUSE ((size_t)-1)
/* Returned by on_read: give up; the upload ends with CANCELLED. */
#define MOAT_BRIDGE_READ_ABORT ((size_t)-2)
typedef struct moat_bridge_upload_cbs {
    /* Fill up to cap bytes of file content; 0 = end of file. */
    size_t (*on_read)(void *ud, moat_bridge_xfer *x, uint8_t *buf, size_t cap);
    /* Exactly once; written = bytes taken from on_read. */
    void (*on_done)(void *ud, moat_bridge_xfer *x, const moat_status *st, uint64_t written);
    void *ud;
} moat_bridge_upload_cbs;
/* POST /files/upload (multipart metadata + file, chunked; never the whole
 * file in memory). mode 0 → 0644; owner/group NULL → unchanged. */
moat_err moat_bridge_upload(moat_bridge *b, const moat_bridge_endpoint *ep, const char *path,
                            uint32_t mode, const char *owner, const char *group,
                            const moat_bridge_upload_cbs *cbs, moat_bridge_xfer **out,
                            moat_status *st);

/* POST /files/write?path=&offset= (moat-execd's extension): the content from
 * on_read, sent raw and chunked (never the whole in memory), written into the
 * file at offset. offset 0 creates or truncates the file (mode 0644 for a new
 * one); offset > 0 needs an existing file (NOT_FOUND otherwise) and keeps
 * what is outside the written range. An execd without the endpoint (a 404
 * that is not FILE_NOT_FOUND, e.g. OpenSandbox's) ends it with UNIMPLEMENTED,
 * reason "execd_no_offset_writes". Callbacks and *out as moat_bridge_upload. */
moat_err moat_bridge_write_at(moat_bridge *b, const moat_bridge_endpoint *ep, const char *path,
                              uint64_t offset, const moat_bridge_upload_cbs *cbs,
                              moat_bridge_xfer **out, moat_status *st);

/* Continues a paused download or upload. */
void moat_bridge_xfer_resume(moat_bridge_xfer *x);
/* Stops it; on_done runs with CANCELLED before this returns, or, when
 * called from inside one of the bridge's callbacks, right after that
 * callback returns. */
void moat_bridge_xfer_cancel(moat_bridge_xfer *x);

#ifdef __cplusplus
}
#endif
#endif
