/* moat server: moatd's configuration and its server handle.
 *
 * Configuration comes from, in increasing precedence: built-in defaults, one
 * file of `key = value` lines (docs/CONFIG.md lists every key), environment
 * variables MOAT_<KEY> (key upper-cased), and command-line flags --key=value.
 * Values are kept as text per key and typed on access. */
#ifndef MOAT_SERVER_H
#define MOAT_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/common.h"
#include "runtime/runtime.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct moat_server_config {
    /* Network. */
    char *listen;         /* host:port of the TCP listener; "" disables it */
    char *unix_socket;    /* path of a Unix socket listener; "" disables it */
    char *grpc_listen;    /* host:port of the gRPC (HTTP/2) listener; "" disables it */
    char *grpc_tls_cert;  /* PEM certificate chain of its TLS; "" with grpc_tls_key: h2c */
    char *grpc_tls_key;   /* its PEM private key */
    char *token;          /* shared secret; "" = none (only allowed on loopback) */
    char *metrics_listen; /* loopback host:port of the Prometheus endpoint; "" disables */
    moat_log_level log_level;
    /* Limits. */
    uint32_t max_connections;    /* authenticated ones */
    uint32_t max_pending_hellos; /* accepted, hello not yet accepted */
    uint32_t max_streams_per_connection;
    uint32_t max_frame_size;
    uint32_t initial_window;
    uint32_t idle_timeout_seconds;
    uint32_t hello_timeout_seconds;
    uint32_t drain_grace_seconds;
    uint32_t max_pending_bytes;     /* unsent bytes per connection before it stops reading */
    uint64_t memory_budget_bytes;   /* output held over all calls (docs/CONFIG.md) */
    uint32_t max_calls_per_session; /* concurrent Exec/Files calls to one session */
    uint32_t max_sessions;          /* sessions at once */
    uint32_t max_sessions_per_chat; /* sessions of one chat at once */
    /* Runtime. */
    char *docker_host;
    char *docker_tls_cert; /* "" unless the engine is tcp:// with TLS */
    char *docker_tls_key;
    char *docker_tls_ca;
    char *image;
    char *allowed_images; /* comma-separated; image is allowed besides */
    uint32_t ttl_seconds;
    uint32_t max_ttl_seconds; /* longest ttl a create or renewal may ask for */
    uint32_t cleanup_interval_seconds;
    char *state_dir;
    char *chats_root;
    char *dependencies_host_path;
    char *lambda_tools_host_path;
    char *chat_mount_path;
    char *dependencies_mount_path;
    char *lambda_tools_mount_path;
    char *execd_bundle;
    char *store_path;
    char *container_name_prefix;
    char *instance; /* moat.instance label of this moatd's sandboxes; "" = none */
    char *runtime;  /* OCI runtime registered with dockerd ("runsc"); "" = the engine's default */
    uint32_t readiness_timeout_ms;
    uint32_t docker_timeout_ms;
    uint32_t health_probe_interval_ms;
    uint32_t threadpool_size;
    char *sandbox_user; /* "UID:GID" or "root" */
    bool read_only_rootfs;
    uint64_t tmpfs_size_bytes;
    bool workspace_quota;
    char *workspace_images_dir; /* "" = <chats_root>/.images */
    uint64_t workspace_size_bytes;
    uint32_t workspace_inodes;
    uint32_t pool_size; /* warm sandboxes of the default image; at most max_sessions */
    uint32_t pool_fill_concurrency;
    /* A terminal session with no client is closed after this (execd's --pty-idle-timeout). */
    uint32_t terminal_idle_timeout_seconds;
    /* Cluster mode (docs/CLUSTER.md); no endpoints: none, and moatd runs alone. */
    char *cluster_etcd_endpoints; /* comma-separated http(s)://host:port of etcd's members */
    char *cluster_node_id;        /* "" = the host name */
    char *cluster_advertise;      /* host:port clients and peers dial for this node */
    uint32_t cluster_lease_ttl_seconds;
    uint32_t cluster_janitor_grace_seconds;  /* a gone node's records stay GONE this long */
    uint32_t cluster_sweep_interval_seconds; /* the owner's sweep of its own records */
    char *cluster_route; /* "redirect" (session_moved) or "proxy" (the call relayed to its owner) */
    char *cluster_etcd_tls_ca;   /* PEM CA bundle verifying the members; "" = the system's */
    char *cluster_etcd_tls_cert; /* PEM client certificate; "" with cluster_etcd_tls_key: none */
    char *cluster_etcd_tls_key;  /* its unencrypted PEM private key */
    /* Path of the file that was read ("" when none); not a key. */
    char *config_file;
    /* grpc_tls_cert and grpc_tls_key as moat_server_config_finish loaded them; NULL: h2c. Not a
     * key. */
    struct moat_grpc_tls_creds *grpc_tls;
} moat_server_config;

/* Sets every key to its default. Derived paths (chats_root, store_path, …) are
 * left "" and resolved by moat_server_config_finish. Free with
 * moat_server_config_free. */
void moat_server_config_defaults(moat_server_config *cfg);
void moat_server_config_free(moat_server_config *cfg);

/* Applies `key = value` text (a whole file's contents). On error returns
 * MOAT_E_INVAL and writes "line N: why" into err[0..errlen). */
moat_err moat_server_config_parse(moat_server_config *cfg, const char *text, char *err,
                                  size_t errlen);
/* Reads and applies a file. MOAT_E_IO when it cannot be read. */
moat_err moat_server_config_load_file(moat_server_config *cfg, const char *path, char *err,
                                      size_t errlen);
/* Applies one key by name (underscores or dashes). MOAT_E_NOT_FOUND for an
 * unknown key, MOAT_E_INVAL for a bad value (err says why). */
moat_err moat_server_config_set(moat_server_config *cfg, const char *key, const char *value,
                                char *err, size_t errlen);
/* Applies MOAT_<KEY> variables from the environment. */
moat_err moat_server_config_apply_env(moat_server_config *cfg, char *err, size_t errlen);
/* Fills derived defaults from state_dir and the binary's directory (bindir
 * may be NULL), then checks consistency: listeners present, a token when any
 * listener is not loopback, metrics only on loopback, limits in range. */
moat_err moat_server_config_finish(moat_server_config *cfg, const char *bindir, char *err,
                                   size_t errlen);

/* Splits a list setting (allowed_images, cluster_etcd_endpoints: entries separated by commas,
 * spaces or tabs) into list[0..*n), which
 * points into *buf: a copy the caller frees, also on failure. MOAT_E_TOO_BIG past
 * MOAT_SERVER_MAX_IMAGES entries, MOAT_E_NOMEM. Whether each is an image reference is the
 * runtime's check (moat_runtime_config_validate). */
#define MOAT_SERVER_MAX_IMAGES 64
moat_err moat_server_split_images(const char *text, const char *list[MOAT_SERVER_MAX_IMAGES],
                                  size_t *n, char **buf);

/* Writes the documented list of keys with their defaults (for --help). */
void moat_server_config_print_keys(void *file);

/* True when host (the part of a host:port or a bare host) is a loopback
 * address: 127.0.0.0/8, ::1 or "localhost". */
bool moat_server_is_loopback(const char *hostport);
/* Splits "host:port" / "[v6]:port". MOAT_E_INVAL when malformed. host gets at
 * most hostlen-1 characters. */
moat_err moat_server_split_hostport(const char *hostport, char *host, size_t hostlen,
                                    uint16_t *port);

/* sandbox_user, parsed. */
typedef struct moat_sandbox_user {
    bool root;
    uint32_t uid, gid; /* both > 0 unless root */
} moat_sandbox_user;
/* "root", or "UID:GID" with both decimal, above 0 and below 2^32-1; MOAT_E_INVAL otherwise. */
moat_err moat_server_parse_sandbox_user(const char *text, moat_sandbox_user *out);

/* Constant-time comparison of a presented token with the configured one: the
 * time taken depends only on the configured token's length. */
bool moat_server_token_equal(const uint8_t *given, size_t given_len, const char *want);

/* ---- the runtime the server drives -------------------------------------------------------
 *
 * Everything the handlers ask of a sandbox runtime, so tests can put a fake in Docker's place.
 * Every operation but open gets the pointer open returned. open and close run on the loop
 * thread; the others on libuv's thread pool or the health probe's thread, so they must be
 * thread-safe and may block. Sessions are returned by value; *list_active's array is malloc'd
 * (the server frees it). The meaning of each operation is the moat_runtime_* function of the
 * same name (runtime/runtime.h). */
typedef struct moat_server_runtime_ops {
    /* hooks carries the server's session_event hook (sessions the reaper ended), to be called
     * on any thread. NULL with st set on failure. */
    void *(*open)(const moat_server_config *cfg, const moat_runtime_metrics *hooks,
                  moat_status *st);
    /* Stops its threads and frees it; sandboxes keep running. */
    void (*close)(void *rt);
    moat_code (*create)(void *rt, const char *session_id, const char *chat_id,
                        int64_t created_at_ms, int64_t expires_at_ms,
                        const moat_session_options *opts, moat_session *out, moat_status *st);
    moat_code (*get)(void *rt, const char *session_id, moat_session *out, moat_status *st);
    moat_code (*list_active)(void *rt, moat_session **out, size_t *count, moat_status *st);
    moat_code (*renew)(void *rt, const char *session_id, int64_t new_expires_at_ms,
                       moat_session *out, moat_status *st);
    moat_code (*stop)(void *rt, const char *session_id, moat_status *st);
    moat_code (*reconcile)(void *rt, int64_t now_ms, moat_reconcile_report *report,
                           moat_status *st);
    /* The TTL reaper and the event watcher that keeps list_active's snapshot. */
    moat_code (*start_reaper)(void *rt, moat_status *st);
    moat_code (*start_watcher)(void *rt, moat_status *st);
    /* Whether the engine answers now, within timeout_ms. */
    moat_code (*ping)(void *rt, long timeout_ms, moat_status *st);
    /* Whether a session may ask for this image (allowed_images). */
    moat_code (*check_image)(void *rt, const char *image, moat_status *st);
    /* The warm pool (NULL in a runtime without one): claim hands a ready sandbox to a new
     * session of the chat (NOT_FOUND "pool_empty" when there is none: create cold);
     * start_pool starts its refill after the start-up reconcile; pool_stats reads it. */
    moat_code (*claim)(void *rt, const char *chat_id, int64_t created_at_ms, int64_t expires_at_ms,
                       const moat_session_options *opts, moat_session *out, moat_status *st);
    moat_code (*start_pool)(void *rt, moat_status *st);
    void (*pool_stats)(void *rt, moat_pool_stats *out);
    /* A claim in two steps around a cluster create's chat key (NULL in a runtime without a
     * pool; moat_runtime_pool_reserve and the two after it). */
    moat_code (*pool_reserve)(void *rt, const moat_session_options *opts,
                              char session_id[MOAT_UUID_STR_LEN], moat_status *st);
    moat_code (*pool_bind)(void *rt, const char *session_id, const char *chat_id,
                           int64_t created_at_ms, int64_t expires_at_ms, moat_session *out,
                           moat_status *st);
    void (*pool_unreserve)(void *rt, const char *session_id, bool reuse);
} moat_server_runtime_ops;

/* Sandboxes on the Docker engine of the configuration (runtime_docker.c). */
extern const moat_server_runtime_ops moat_server_docker_runtime;

/* Checks the runtime part of cfg (paths, limits, images) without touching Docker, as
 * --check-config does. */
moat_code moat_server_check_runtime(const moat_server_config *cfg, moat_status *st);

/* ---- the server ------------------------------------------------------------------------------
 *
 * A server is a handle with its own event loop; the caller owns it:
 *
 *   moat_server_init(&s, &cfg, ops)   takes cfg over, opens the runtime and the bridge
 *   moat_server_handle_signals(s, …)  optional: SIGTERM/SIGINT drain, SIGHUP reloads
 *   moat_server_listen(s)             binds the configured listeners and the metrics endpoint
 *   moat_server_run(s)                serves until it has drained after a close or a signal
 *   moat_server_free(s)               once run has returned
 *
 * Every function but moat_server_close must be called on the thread that runs the server. */
typedef struct moat_server moat_server;

/* Called once, on the loop thread, when the server has drained: no connection and no job left.
 * moat_server_run returns soon after. */
typedef void (*moat_server_close_cb)(moat_server *s, void *ud);
/* Fills *next with the configuration to reload on SIGHUP (the server frees it). Returns false,
 * keeping the current one, when it is not valid. */
typedef bool (*moat_server_reload_fn)(moat_server_config *next, void *ud);

/* Takes cfg over (its strings become the server's and *cfg is zeroed) and opens the runtime
 * (runtime: a static table; NULL = moat_server_docker_runtime) and the bridge. On failure
 * returns an error, logs why and frees cfg's strings. */
moat_err moat_server_init(moat_server **out, moat_server_config *cfg,
                          const moat_server_runtime_ops *runtime);
/* SIGTERM and SIGINT start the drain; SIGHUP calls reload and applies what may change under a
 * running server. Attach before listening: a signal sent as soon as a client can connect must
 * drain, not kill. */
moat_err moat_server_handle_signals(moat_server *s, moat_server_reload_fn reload, void *ud);
/* Binds the TCP and Unix listeners and the metrics endpoint of the configuration. On failure
 * logs why and returns MOAT_E_IO; close, run and free the server then. */
moat_err moat_server_listen(moat_server *s);
/* Runs the loop until the server has drained and closed. Returns 0, or 1 after a failed listen. */
int moat_server_run(moat_server *s);
/* Starts the graceful drain (GoAway, calls finish, drain_grace_seconds at most); cb (may be NULL)
 * runs once it is over. Safe from any thread; later calls do nothing. */
void moat_server_close(moat_server *s, moat_server_close_cb cb, void *ud);
/* Frees a server whose run has returned, or one never run. */
void moat_server_free(moat_server *s);

#ifdef __cplusplus
}
#endif
#endif
