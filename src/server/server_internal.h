/* moatd internals shared by its source files. */
#ifndef MOAT_SERVER_INTERNAL_H
#define MOAT_SERVER_INTERNAL_H

#include <stdbool.h>
#include <pthread.h>
#include <stdint.h>

#include <uv.h>

#include "bridge/bridge.h"
#include "rpc/rpc.h"
#include "runtime/runtime.h"
#include "server/server.h"
#include "wire/wire.h"
#include "throttle.h"

typedef struct moat_server srv;
typedef struct conn conn;
typedef struct stream stream;
typedef struct moat_health moat_health;

/* A frame waiting for the client's flow-control credit (or, for an End, for
 * the messages before it). */
typedef struct out_frame {
    struct out_frame *next;
    uint32_t payload; /* Message payload bytes it needs from the window; 0 for an End */
    size_t len;
    uint8_t data[];
} out_frame;

typedef struct grpc_conn grpc_conn;

/* How a stream's call reaches its client: the framed protocol (stream.c, on a conn) or gRPC over
 * HTTP/2 (grpc_conn.c, on a grpc_conn). Handlers see only moat__stream_* below, so one handler
 * serves both, with the same limits, budget accounts and credit rules.
 * When client-streaming calls arrive, request messages after the first come in through
 * moat__stream_request like the first, and an "input consumed" op here gives their flow-control
 * window back (HTTP/2: nghttp2_session_consume in src/grpc/h2.c). */
typedef struct stream_transport {
    /* The rpc sink's halves (rpc.h): one response message, len bytes once packed; the End. */
    moat_err (*message)(stream *st, const ProtobufCMessage *msg, size_t len);
    void (*end)(stream *st, const moat_status *status);
    /* Payload bytes the client lets this stream send now, less what already waits; 0 once the
     * stream has left its connection. */
    uint32_t (*credit)(const stream *st);
    /* Its connection's share of the memory budget; NULL once the stream has left it. */
    moat_bridge_account *(*account)(stream *st);
    /* The peer's address for logs; "-" once the stream has left its connection. */
    const char *(*peer)(const stream *st);
    /* Whether its connection's socket holds more than max_pending_bytes unwritten (true once
     * gone): producers wait for on_credit. */
    bool (*backlogged)(const stream *st);
    /* Asks for on_credit(st, 0) once the connection's writes complete. */
    void (*want_credit)(stream *st);
    /* The handler has used len bytes of the client's input (a client-streaming call): credit
     * goes back to the client, so a client is held to what the process takes. */
    void (*input_done)(stream *st, size_t len);
} stream_transport;

/* One call on one connection. Lives while the connection lists it or its
 * handler holds it (refs). */
struct stream {
    const stream_transport *tx;
    conn *c;      /* framed: its connection; NULL once gone, and on gRPC */
    grpc_conn *g; /* gRPC: its connection; NULL once gone, and on the framed protocol */
    /* Its connection's limits, kept after the connection is gone. */
    uint32_t max_frame_size;
    uint32_t initial_window;
    srv *s;
    uint32_t id;
    unsigned refs;
    moat_rpc_call *call;
    moat_window window;       /* framed: the client's credit for our Message payloads */
    moat_window in_window;    /* framed: our credit for the client's Message payloads */
    out_frame *qhead, *qtail; /* framed: frames waiting for that credit */
    size_t queued;            /* bytes of frames in the queue */
    bool end_queued;
    uv_timer_t *deadline;
    uint64_t started_ns;
    /* Handler hooks. on_credit runs when the client granted more window. */
    void *hctx;
    void (*on_credit)(stream *st, uint32_t increment);
    bool wants_credit;   /* call on_credit(st, 0) after the next write completes */
    void *session_calls; /* the per-session call count it holds (session_calls.c), or NULL */
    stream *next, *prev; /* in its connection's list */
};

typedef enum conn_state { CONN_PREHELLO, CONN_READY, CONN_CLOSING } conn_state;

struct conn {
    srv *s;
    union {
        uv_handle_t handle;
        uv_stream_t stream;
        uv_tcp_t tcp;
        uv_pipe_t pipe;
    } h;
    uv_timer_t timer; /* hello deadline, then idle checks */
    conn_state state;
    bool closing; /* conn_close has begun */
    int open_handles;
    bool reading;
    bool draining_notified;
    moat_wire_decoder dec;
    moat_stream_table *table;
    stream *streams;
    size_t pending_write; /* bytes produced and not yet written by libuv */
    struct wbatch *batch; /* frames of this loop iteration, not yet submitted */
    bool dirty;           /* on the server's list of connections to flush */
    bool throttled;       /* pending_write went over max_pending_bytes */
    bool credit_wanted;   /* some stream asked for credit once writes complete */
    conn *dirty_next, *dirty_prev;
    uint64_t last_active_ms;
    uint32_t max_streams;
    /* What its HelloAck announced; a SIGHUP's new values apply to new connections only. */
    uint32_t max_frame_size;
    uint32_t initial_window;
    moat_bridge_account account; /* its share of the memory budget */
    char peer[64];
    moat_throttle_addr addr; /* the peer's address, for TCP connections */
    bool has_addr;
    bool from_proxy; /* another node relaying a call (MOAT__PROXY_CLIENT_NAME): never relayed on */
    conn *next, *prev;
    conn *pending_next, *pending_prev; /* in the server's queue of hellos, oldest first */
};

/* One server's counters for /metrics (metrics.c); updated with atomics from any thread. */
typedef struct moat_metrics moat_metrics;
/* NULL when out of memory. Free with moat__metrics_free (which stops its endpoint). */
moat_metrics *moat__metrics_new(void);
void moat__metrics_free(moat_metrics *m);
/* Serves GET /metrics on hostport from a thread of libmicrohttpd's. */
moat_err moat__metrics_start(moat_metrics *m, const char *hostport);
void moat__metrics_stop(moat_metrics *m);
void moat__metrics_conn(moat_metrics *m, int delta);
void moat__metrics_pending_hello(moat_metrics *m, int delta);
void moat__metrics_hello_refused(moat_metrics *m, const char *why);
void moat__metrics_stream(moat_metrics *m, int delta);
void moat__metrics_status(moat_metrics *m, moat_code code);
void moat__metrics_bytes(moat_metrics *m, uint64_t n);
void moat__metrics_sessions_set(moat_metrics *m, int64_t n);
void moat__metrics_session_delta(moat_metrics *m, int delta);
void moat__metrics_create_latency(moat_metrics *m, uint64_t ns);
void moat__metrics_reaper(moat_metrics *m, const char *action);
int64_t moat__metrics_sessions(moat_metrics *m);
/* A renewal batch (a moat_renewals_observer; m is the moat_metrics). */
void moat__metrics_renew_batch(void *m, size_t renewals, size_t etcd_calls);
/* Ends kept now (cluster_sweep.c, under its lock), kept ends written, one dropped. */
void moat__metrics_ends_kept(moat_metrics *m, size_t kept);
void moat__metrics_ends_written(moat_metrics *m, size_t n);
void moat__metrics_end_dropped(moat_metrics *m);
/* Publishes the budget's figures (call on the loop). */
void moat__metrics_budget(moat_metrics *m, const moat_bridge_budget *b);

/* Log lines anyone can make moatd write at will, each limited to a few a second. */
typedef struct srv_log_limits {
    moat_log_limit prehello;       /* closes of connections still in their hello */
    moat_log_limit calls_refused;  /* max_calls_per_session reached */
    moat_log_limit create_failed;  /* CreateSession failures */
    moat_log_limit ttl_refused;    /* ttl_seconds past max_ttl_seconds */
    moat_log_limit budget_refused; /* memory_budget_exhausted refusals */
    moat_log_limit grpc_refused;   /* gRPC requests refused and connections closed */
} srv_log_limits;

typedef struct srv_cluster srv_cluster;

/* Sessions the reaper ended, on their way from its thread to the loop (reaper_events.c). */
typedef struct gone_queue gone_queue;

#define READ_BUF_SIZE (64 * 1024)

/* A server: everything moatd keeps, owned by its handle. Loop thread only, except where a
 * field says otherwise. */
struct moat_server {
    uv_loop_t loop_storage;
    uv_loop_t *loop; /* &loop_storage */
    moat_server_config cfg;
    moat_server_reload_fn reload; /* NULL until signals are attached */
    void *reload_ud;
    uv_tcp_t tcp;
    uv_pipe_t pipe;
    uv_tcp_t grpc_tcp; /* gRPC's listener (grpc_conn.c) */
    bool tcp_on, pipe_on, grpc_on;
    /* A listener whose connection waits for the check phase (ACCEPT_BATCH, server.c). */
    bool tcp_deferred, pipe_deferred, grpc_deferred;
    unsigned accepted_this_turn;
    uv_signal_t sig_term, sig_int, sig_hup;
    bool signals_on;
    uv_check_t check;       /* flushes writes and checks the drain after each iteration */
    uv_prepare_t prepare;   /* flushes writes timer callbacks made, before the loop blocks */
    uv_async_t close_async; /* moat_server_close from any thread */
    moat_server_close_cb close_cb;
    void *close_ud;
    uv_timer_t grace;
    bool draining;
    bool finished;
    int exit_status; /* what moat_server_run returns */
    /* The loop thread's one read buffer serves every connection, since the decoder copies what
     * it has to keep. */
    char *read_buf;
    bool read_buf_busy;
    conn *conns;
    uint32_t nconns; /* every open connection */
    uint32_t nready; /* authenticated ones, bounded by max_connections with the gRPC ones */
    grpc_conn *grpc_conns;
    uint32_t ngrpc;        /* gRPC connections past their first call with the token (each counts
                              in max_connections) */
    uint32_t grpc_pending; /* gRPC connections before it (bounded by max_pending_hellos) */
    grpc_conn *grpc_dirty; /* gRPC connections with output to write this iteration */
    /* Connections still in their hello, oldest first: bounded by max_pending_hellos apart from
     * the authenticated ones, so unauthenticated peers cannot crowd out token holders. */
    conn *pending_head, *pending_tail;
    uint32_t npending;
    moat_throttle *failed_hellos;
    srv_log_limits logs; /* thread-safe */
    moat_metrics *metrics;
    conn *dirty;       /* connections with frames to flush at the end of this iteration */
    uint32_t inflight; /* thread-pool jobs not yet completed */
    const moat_server_runtime_ops *rt_ops;
    void *rt; /* what rt_ops->open returned */
    moat_bridge *bridge;
    moat_health *health;
    void *engine_jobs; /* thread-pool jobs of calls waiting on the engine, see engine_jobs.c */
    moat_bridge_budget budget; /* memory_budget_bytes over all output held */
    gone_queue *gone;          /* filled by the reaper's thread, emptied on the loop */
    void *sessions;            /* session cache, see session_cache.c */
    void *call_counts;         /* open calls per session, see session_calls.c */
    uint32_t creates_inflight; /* CreateSession jobs that may add a session */
    void *create_waiters;
    struct health_watch *health_watches; /* grpc.health.v1 Watch calls (svc_grpc_health.c) */
    srv_cluster *cluster;                /* NULL unless in a cluster (cluster.c) */
    void *peers; /* connections to other nodes in cluster mode (cluster_peer.h) */
};

/* Cluster mode (cluster.c): joins the cluster when cluster_etcd_endpoints is set (a no-op
 * otherwise); MOAT_E_REMOTE when it cannot (logged). Loop thread; blocks on etcd. */
moat_err moat__cluster_start(srv *s);
/* In a cluster, whether the node cannot prove its lease held, and so accepts no create. */
bool moat__cluster_fenced(srv *s);
/* Leaves the cluster (revokes the lease) and frees what start made. */
void moat__cluster_stop(srv *s);
/* The cluster's etcd client, or NULL when not in a cluster. Any thread while the server runs. */
struct moat_etcd *moat__cluster_etcd(srv *s);
/* Its copy of the directory, for ListSessions; NULL when not in a cluster or not started. */
struct moat_dircache *moat__cluster_dircache(srv *s);

/* The client name of the Hello of every connection to another node (cluster_peer.c), by which
 * the node knows a relayed call and never relays it again. */
#define MOAT__PROXY_CLIENT_NAME "moatd-proxy"
/* The reason of a call's End when its connection went, and of the Cancel a proxying node sends
 * the owner when its own client's connection went: the owner treats that call as dropped, not
 * cancelled (an interactive command waits for a reattach). */
#define MOAT__CONNECTION_CLOSED "connection_closed"
/* Proxy mode (cluster_proxy.c). */
/* A call that was to end with status: when it is session_moved and this node proxies, the call
 * is relayed to the owner instead (true: the proxy has it, ended or not). */
bool moat__proxy_route(stream *st, const moat_status *status);

/* The engine as the background probe last saw it (health.c). */
typedef enum moat_engine_state {
    MOAT_ENGINE_UNKNOWN, /* no probe has finished yet */
    MOAT_ENGINE_UP,
    MOAT_ENGINE_DOWN,
} moat_engine_state;
/* Starts the probe thread (needs s->rt); NULL if it could not. */
moat_health *moat__health_start(srv *s);
/* Stops and joins the thread; h is freed once the loop has closed its handle. */
void moat__health_stop(moat_health *h);
/* The latest verdict; *age_ms (may be NULL) how long ago it was reached. h may be NULL. */
moat_engine_state moat__health_state(moat_health *h, uint64_t *age_ms);
/* Loop: the verdict changed (handlers.c ends calls stuck on an engine that went down). */
void moat__engine_changed(srv *s, int state);
/* Loop: the engine's verdict or the drain changed what grpc.health.v1 says: Watch calls hear
 * it, and end once moatd drains (svc_grpc_health.c). */
void moat__grpc_health_changed(srv *s);

static inline uint64_t moat__now_ms(void)
{
    return moat_time_mono_ns() / 1000000u;
}

/* ---- writing (conn_write.c) ------------------------------------------------------------------
 * Each queues bytes on the connection's batch for this loop iteration. */

/* Takes ownership of block (len bytes, from malloc). */
moat_err moat__conn_queue_block(conn *c, uint8_t *block, size_t len);
moat_err moat__conn_write_raw(conn *c, const uint8_t *data, size_t len);
/* Encodes a frame straight into its block: one allocation, one copy. */
moat_err moat__conn_send(conn *c, const moat_frame *f);
void moat__conn_send_go_away(conn *c, moat_code code, const char *msg);
/* An End for a call that has no stream (refused before it started). */
void moat__conn_send_end(conn *c, uint32_t id, const moat_status *st);
/* Hands the connection's current batch to libuv. */
void moat__conn_flush(conn *c);

/* ---- connections (conn.c) ---------------------------------------------------------------------
 */

/* The peer's "ip:port" for logs and its address for the failed-hello throttle (*has_addr false
 * when it has none: a Unix socket, tcp NULL). */
void moat__peer_address(uv_tcp_t *tcp, char *peer, size_t cap, moat_throttle_addr *addr,
                        bool *has_addr);
/* Accepts one connection from the listener server into the queue of pending hellos. */
void moat__conn_accept(uv_stream_t *server);
/* Starts or resumes reading. */
void moat__conn_pump(conn *c);
/* Closes after flushing what is queued; every open call ends CANCELLED connection_closed. */
void moat__conn_close(conn *c, moat_code code, const char *why);
/* The same at once with a GoAway, after the open calls' Ends. */
void moat__conn_fail(conn *c, moat_code code, const char *why);

/* ---- gRPC connections (grpc_conn.c) ----------------------------------------------------------
 */

/* Accepts one connection from the gRPC listener. */
void moat__grpc_accept(uv_stream_t *server);
/* Writes what the gRPC connections produced in this loop iteration (the check phase). */
void moat__grpc_flush_all(srv *s);
/* The drain: a GOAWAY on each; each closes once its calls are over. */
void moat__grpc_drain(srv *s);
/* Closes every gRPC connection now, cancelling its calls (the drain's grace is over). */
void moat__grpc_close_all(srv *s);

/* ---- streams (stream.c) -----------------------------------------------------------------------
 */

/* Opens the call of method m on the stream st (zeroed, id already taken in c's table) and lists
 * it on c; false when out of memory. */
bool moat__stream_start(stream *st, conn *c, uint32_t id, const moat_rpc_method *m,
                        uint64_t deadline_ms);
/* What every transport does to open a call on st (zeroed): its server, id, transport, limits,
 * call and deadline timer. The caller holds the one reference. false when out of memory. */
bool moat__stream_open(stream *st, srv *s, uint32_t id, const stream_transport *tx,
                       const moat_rpc_method *m, uint64_t deadline_ms);
/* A request message of the call arrived (any transport): the first is decoded and dispatched;
 * a call takes no other (the call ends INVALID_ARGUMENT extra_request_message). */
void moat__stream_request(stream *st, const uint8_t *payload, size_t len);
/* Writes queued frames while the window allows; closes the stream once its End has gone out. */
void moat__stream_flush(stream *st);
/* The stream leaves its connection, keeping the reference the connection held: returns whether
 * it was attached (the caller then owns that reference). */
bool moat__stream_unlink(stream *st);
/* Drops n references at once (the last frees the stream). */
void moat__stream_release(stream *st, int n);

/* Server core used by handlers, whatever the transport. */
void moat__stream_ref(stream *st);
void moat__stream_unref(stream *st);
/* Credit the client still grants this stream, minus what is already queued. */
uint32_t moat__stream_credit(const stream *st);
/* How much output credit a producer (a bridge execution or terminal) may hold for this stream
 * now: at most min(the client's window left, initial_window), so however large a window a
 * client grants one stream never has more than initial_window in flight inside moatd; nothing
 * while the connection's socket is backed up (the server asks again as writes drain). */
uint64_t moat__stream_credit_target(const stream *st);
/* Its connection's share of the memory budget; NULL once the stream has left it. */
moat_bridge_account *moat__stream_account(stream *st);
const char *moat__stream_peer(const stream *st);
/* Its connection's socket is backed up (or gone): produce nothing until on_credit. */
bool moat__stream_backlogged(const stream *st);
/* on_credit(st, 0) once the connection's writes complete. */
void moat__stream_want_credit(stream *st);
/* A thread-pool job starts / ends (keeps the drain waiting for it). */
void moat__srv_job(srv *s, int delta);

/* Handlers (handlers.c). */
moat_err moat__handlers_init(srv *s);
void moat__handlers_close(srv *s);
/* The stream is being freed: releases what handlers counted for it. */
void moat__handlers_stream_gone(stream *st);
/* The request has been decoded; the handler owns the call from here. */
void moat__dispatch(stream *st, const ProtobufCMessage *req);

#endif
