/* moat server: moatd's configuration and its server object.
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

#ifdef __cplusplus
extern "C" {
#endif

typedef struct moat_server_config {
    /* Network. */
    char *listen;         /* host:port of the TCP listener; "" disables it */
    char *unix_socket;    /* path of a Unix socket listener; "" disables it */
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
    /* Path of the file that was read ("" when none); not a key. */
    char *config_file;
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

/* Splits allowed_images (entries separated by commas, spaces or tabs) into list[0..*n), which
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

/* Constant-time comparison of a presented token with the configured one: the
 * time taken depends only on the configured token's length. */
/* sandbox_user, parsed. */
typedef struct moat_sandbox_user {
    bool root;
    uint32_t uid, gid; /* both > 0 unless root */
} moat_sandbox_user;
/* "root", or "UID:GID" with both decimal, above 0 and below 2^32-1; MOAT_E_INVAL otherwise. */
moat_err moat_server_parse_sandbox_user(const char *text, moat_sandbox_user *out);

bool moat_server_token_equal(const uint8_t *given, size_t given_len, const char *want);

/* Runs moatd until it has drained after SIGTERM/SIGINT. argv is kept for
 * SIGHUP reloads (file, env and flags are re-applied). Returns the process
 * exit status. */
int moat_server_main(int argc, char **argv);

#ifdef __cplusplus
}
#endif
#endif
