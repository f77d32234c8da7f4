/* What moatd's service handlers share: the session cache and lookup, the per-session call limit,
 * the reaper's events, jobs on libuv's thread pool, and the helpers of one-answer calls. The
 * services themselves are svc_sessions.c, svc_exec.c and svc_files.c; handlers.c dispatches to
 * them. Loop thread only, except where a function says otherwise. */
#ifndef MOAT_SERVER_HANDLERS_H
#define MOAT_SERVER_HANDLERS_H

#include "cluster/dir_read.h"
#include "server_internal.h"

/* ---- session cache (session_cache.c) ---------------------------------------------------------
 * Sessions known to be running, so a command does not need a Docker round trip first. */

/* FNV-1a of a session id, for the tables keyed by session. */
unsigned moat__session_hash(const char *session_id);
moat_err moat__session_cache_init(srv *s);
void moat__session_cache_free(srv *s);
/* Forgets every session (the reaper ended more than it could name). */
void moat__session_cache_clear(srv *s);
/* Remembers a running session's execd socket and token (copied). */
void moat__session_cache_put(srv *s, const moat_session *session);
void moat__session_cache_drop(srv *s, const char *session_id);
/* Whether the cache holds session_id (canonical): a session this node's runtime answered for. */
bool moat__session_cached(srv *s, const char *session_id);

/* What an Exec or Files call does once its session's execd is known. ep's strings are valid only
 * during the call. */
typedef void (*session_then_fn)(stream *st, const moat_bridge_endpoint *ep);
/* Canonicalises session_id, counts the call against max_calls_per_session and runs then with
 * the session's execd, from the cache or the runtime; or ends the call saying why not. */
void moat__with_session(stream *st, const char *session_id, session_then_fn then);

/* ---- calls per session (session_calls.c) ---------------------------------------------------- */

moat_err moat__calls_init(srv *s);
void moat__calls_free(srv *s);
/* Counts one more call to session id for st; false (the call ended RESOURCE_EXHAUSTED) at the
 * limit. The stream gives it back when it goes (moat__handlers_stream_gone). */
bool moat__calls_acquire(stream *st, const char *session_id);

/* ---- the reaper's events (reaper_events.c) -------------------------------------------------- */

moat_err moat__reaper_events_init(srv *s);
/* Closes the loop's handle; the runtime must be closed already. */
void moat__reaper_events_close(srv *s);
/* The runtime's session_event hook (ctx is the server), on any thread: sessions the reaper ended
 * leave the cache on the loop. */
void moat__reaper_session_event(void *ctx, const char *event, const char *session_id,
                                moat_code code, uint64_t duration_ns);

/* ---- jobs on the thread pool (engine_jobs.c) ------------------------------------------------ */

typedef struct engine_job engine_job;
typedef void (*engine_job_fn)(engine_job *j);

/* The first member of each operation's job. run works on a pool thread, done on the loop. */
struct engine_job {
    uv_work_t req;
    srv *s;
    stream *st; /* the call it answers (referenced while it runs); NULL for the server's own */
    engine_job_fn run, done;
    moat_status status; /* cleared before run */
    moat_code code;
    uint64_t started_ns;
    engine_job *next, *prev; /* in s->engine_jobs while a call waits on it */
    /* moat__job_new_routed: the engine was down, so only the cluster's directory is asked, and
     * engine_status is the answer for a session it does not place elsewhere. */
    bool engine_down;
    moat_status engine_status;
};

/* A zeroed job of size bytes (the operation's struct) for a call that needs the engine; NULL (the
 * call ended) when it cannot run: with the engine down the call fails at once rather than hold a
 * worker for docker_timeout_ms. The job frees itself after done. */
void *moat__job_new(stream *st, size_t size);
/* The same for a call that names a session, or lists them: in a cluster, with the engine down,
 * the job still runs, for the directory may place the session on another node
 * (moat__engine_skipped). */
void *moat__job_new_routed(stream *st, size_t size);
/* The same for work of the server's own, with no call. NULL when out of memory. */
void *moat__job_new_unattached(srv *s, size_t size);
void moat__job_start(engine_job *j, engine_job_fn run, engine_job_fn done);

/* ---- routing in a cluster (cluster_route.c) ------------------------------------------------- */

/* Where the directory says a session is that this node's runtime does not know. */
typedef enum route_verdict {
    ROUTE_LOCAL = 0, /* not a cluster, no record, or this node's own: the runtime's answer stands */
    ROUTE_MOVED,     /* a live node other than this one holds it */
    ROUTE_LOST,      /* its node left the cluster: the session is gone */
    ROUTE_ENDED,     /* its record says it ended */
} route_verdict;

typedef struct session_route {
    route_verdict verdict;
    moat_dir_entry entry; /* the record, unless ROUTE_LOCAL */
} session_route;

/* A worker thread, once the runtime answered NOT_FOUND for session_id (canonical): asks the
 * directory. OK with the verdict (ROUTE_LOCAL outside a cluster), or the directory's failure in
 * *st (UNAVAILABLE etcd_unavailable, INTERNAL session_record_invalid, …). */
moat_code moat__cluster_route(srv *s, const char *session_id, session_route *out, moat_status *st);
/* The loop, before a call's runtime lookup: true, with the record in *out, when this node's copy
 * of the directory says another live node holds session_id (canonical), and the session is not
 * in this node's session cache. Reads only the copy: anything else (no record there, this
 * node's own, ended, lost, a copy not in step) is false, and the runtime and
 * moat__cluster_route decide. A record names the node that made the session's container and
 * never another, so a session this node's runtime holds is never called elsewhere. */
bool moat__cluster_elsewhere(srv *s, const char *session_id, moat_dir_entry *out);
/* The loop, before the runtime lookup of a call that another node's session redirects (Exec,
 * Files, Interactive, RenewSession, StopSession): when moat__cluster_elsewhere, ends the call
 * session_moved (or relays it, in proxy mode) and returns true. */
bool moat__cluster_moved(stream *st, const char *session_id);
/* A routed job's worker, before asking the runtime: true when it must not (the engine is down),
 * with j->code NOT_FOUND so that moat__directory_knows asks the directory. */
bool moat__engine_skipped(engine_job *j);
/* A job's worker, once the runtime answered: for a session it does not know (j->code NOT_FOUND)
 * in a cluster, whether the directory knows it (true, with *r). A directory that cannot answer
 * sets j's code and status to its failure, and a session it does not know with the engine
 * skipped ends docker_unreachable (false). */
bool moat__directory_knows(engine_job *j, const char *session_id, session_route *r);
/* Sets *st for a session held elsewhere (FAILED_PRECONDITION session_moved with details
 * owner_address, owner_node and session_id) or whose node is gone (FAILED_PRECONDITION
 * node_lost); false, *st untouched, for the other verdicts. */
bool moat__route_status(const session_route *r, moat_status *st);
/* The session's state by its record: ended as recorded, GONE when its node is gone, else
 * running. */
moat_session_state moat__route_state(const moat_dir_entry *e);
/* The session as its record has it, for GetSession: no container id and no execd. */
void moat__route_session(const moat_dir_entry *e, moat_session *out);

/* What a SandboxSession is made of, pointing into its source (a local session or a record). */
typedef struct session_view {
    const char *session_id, *chat_id, *container_id, *image;
    moat_session_state state;
    int64_t created_at_ms, expires_at_ms;
    const char *owner_address; /* "" for a session of this node's (SandboxSession field 9) */
} session_view;
/* Points into e, which must outlive it; self is this node's id. */
void moat__route_view(const moat_dir_entry *e, const char *self, session_view *out);
/* A worker thread: the sessions of chat (canonical, or "" for all) not ended, over the whole
 * cluster from the directory; *out (free()) gets *count of them. */
moat_code moat__cluster_list(srv *s, const char *chat, moat_dir_entry **out, size_t *count,
                             moat_status *st);

/* ---- the method table (handlers.c) ---------------------------------------------------------- */

/* Whether st's method counts against max_calls_per_session. */
bool moat__counted_call(const stream *st);

/* ---- services ---------------------------------------------------------------------------------
 * Each takes the call's decoded request (owned by the call). */

void moat__sandboxes_create(stream *st, const ProtobufCMessage *req);
void moat__sandboxes_get(stream *st, const ProtobufCMessage *req);
void moat__sandboxes_list(stream *st, const ProtobufCMessage *req);
void moat__sandboxes_renew(stream *st, const ProtobufCMessage *req);
void moat__sandboxes_stop(stream *st, const ProtobufCMessage *req);
void moat__health_check(stream *st, const ProtobufCMessage *req);
/* Exec/Interactive: a command with its stdin, or a terminal (svc_interactive.c). */
void moat__exec_interactive(stream *st, const ProtobufCMessage *req);
/* grpc.health.v1.Health (svc_grpc_health.c). */
void moat__grpc_health_check(stream *st, const ProtobufCMessage *req);
void moat__grpc_health_watch(stream *st, const ProtobufCMessage *req);
/* Reconciles with the runtime, then starts its reaper and watcher (svc_sessions.c). */
void moat__sessions_start(srv *s);

/* Exec (svc_exec.c) and Files (svc_files.c), once the session's execd is known. Calls that stream,
 * or hold a transfer, take what they need themselves: */
void moat__exec_run_command(stream *st, const moat_bridge_endpoint *ep);
void moat__exec_run_in_shell(stream *st, const moat_bridge_endpoint *ep);
void moat__exec_attach(stream *st, const moat_bridge_endpoint *ep);
void moat__files_read(stream *st, const moat_bridge_endpoint *ep);
void moat__files_write(stream *st, const moat_bridge_endpoint *ep);

/* Calls with one answer start a bridge call whose callback gives it, with st as the callback's ud
 * and a reference on it that the callback gives back. MOAT_OK, or the refusal in *status (the
 * dispatch then ends the call). */
typedef moat_err (*bridge_call_fn)(stream *st, const moat_bridge_endpoint *ep, moat_status *status);
moat_err moat__exec_create_shell(stream *st, const moat_bridge_endpoint *ep, moat_status *status);
moat_err moat__exec_delete_shell(stream *st, const moat_bridge_endpoint *ep, moat_status *status);
moat_err moat__exec_interrupt(stream *st, const moat_bridge_endpoint *ep, moat_status *status);
moat_err moat__exec_command_status(stream *st, const moat_bridge_endpoint *ep, moat_status *status);
moat_err moat__exec_command_logs(stream *st, const moat_bridge_endpoint *ep, moat_status *status);
moat_err moat__files_stat(stream *st, const moat_bridge_endpoint *ep, moat_status *status);
moat_err moat__files_list(stream *st, const moat_bridge_endpoint *ep, moat_status *status);
moat_err moat__files_remove(stream *st, const moat_bridge_endpoint *ep, moat_status *status);
moat_err moat__files_move(stream *st, const moat_bridge_endpoint *ep, moat_status *status);
moat_err moat__files_mkdir(stream *st, const moat_bridge_endpoint *ep, moat_status *status);
moat_err moat__files_chmod(stream *st, const moat_bridge_endpoint *ep, moat_status *status);

/* A connection whose undelivered output fills its share of the budget (a client that does not
 * read) gets no new output stream: it could only add to what already waits for it. Its streams
 * are paused meanwhile, so whatever their number it holds at most twice its share (undelivered
 * events up to the share, then frames it has not taken up to the share again) and one write per
 * stream. Ends the call RESOURCE_EXHAUSTED and returns true in that case (svc_exec.c). */
bool moat__refuse_unread_connection(stream *st);

/* ---- helpers (handlers.c) ------------------------------------------------------------------- */

/* Whether the call still runs (no cancel, deadline or failure ended it). */
bool moat__running(const stream *st);
/* Canonicalises a UUID field ("chat_id" or "session_id") into out, or ends the call
 * INVALID_ARGUMENT invalid_<field>. */
bool moat__canon(stream *st, const char *in, const char *field, char out[MOAT_UUID_STR_LEN]);
/* In a bridge callback: whether the call still runs and the answer is OK; a failed answer ends
 * the call. */
bool moat__answer_ok(stream *st, const moat_status *status);
/* A bridge callback for calls answered by an empty message of the method's response type. */
void moat__empty_answer(void *ud, const moat_status *status);

#endif
