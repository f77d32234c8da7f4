/* moat runtime: sandbox sessions on a real Docker engine.
 *
 * One container per chat session, created through the Docker Engine API (libcurl over the
 * engine's Unix socket, or tcp:// with TLS), with moat's mount and hardening policy, a TTL
 * reaper, a durable SQLite store for renewed expiries, and start-up reconciliation.
 *
 * Threading: every function here is blocking and thread-safe; moatd calls them from a thread
 * pool (never from its loop thread). Each call uses its own curl easy handle; the store is
 * one SQLite connection behind a mutex.
 *
 * Errors: functions return a moat_code and fill a caller-owned moat_status (never NULL) with
 * the code, a reason (e.g. "sandbox_start_failed") and details (chat_id, docker_status, …). */
#ifndef MOAT_RUNTIME_H
#define MOAT_RUNTIME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/json.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- hooks (no-op when the function pointers are NULL) ---------------------------------- */

/* Metrics. Called on the calling thread; must be thread-safe and must not call back into the
 * runtime. Strings are valid only during the call. */
typedef struct moat_runtime_metrics {
    void *ctx;
    /* One Docker Engine API call: op ("create", "start", "stop", "remove", "inspect", "list",
     * "version", "image_inspect", "kill"), HTTP status (0 when no answer), outcome, duration. */
    void (*docker_call)(void *ctx, const char *op, long http_status, moat_code code,
                        uint64_t duration_ns);
    /* A session changed: event is "created", "stopped", "expired", "renewed", "adopted",
     * "gone", "restarted" or "create_failed". */
    void (*session_event)(void *ctx, const char *event, const char *session_id, moat_code code,
                          uint64_t duration_ns);
} moat_runtime_metrics;

/* Tracing. span_start returns an opaque span (may be NULL) that is passed to span_end once. */
typedef struct moat_runtime_tracer {
    void *ctx;
    void *(*span_start)(void *ctx, const char *name, const char *session_id);
    void (*span_end)(void *ctx, void *span, const moat_status *st);
} moat_runtime_tracer;

/* ---- configuration ----------------------------------------------------------------------- */

/* The caller owns every string; moat_runtime_open copies the whole config (strings and
 * the allow-list), so it may be freed once open returns. */
typedef struct moat_runtime_config {
    /* Seed fields. */
    const char *image;                   /* default sandbox image, e.g. "moat-sandbox:latest" */
    int64_t ttl_seconds;                 /* default session lifetime */
    int64_t cleanup_interval_seconds;    /* reaper period */
    const char *chats_root;              /* host dir; chats_root/<chat_id> is the workspace */
    const char *dependencies_host_path;  /* host dir, mounted read-only */
    const char *lambda_tools_host_path;  /* host dir, mounted read-only */
    const char *chat_mount_path;         /* e.g. "/workspace/chat" */
    const char *dependencies_mount_path; /* e.g. "/workspace/dependencies" */
    const char *lambda_tools_mount_path; /* e.g. "/workspace/lambda-tools" */

    /* Docker endpoint: "/var/run/docker.sock", "unix:///path", or "tcp://host:port". With
     * tcp:// and tls_cert/tls_key set, HTTPS with a client certificate (tls_ca verifies). */
    const char *docker_host;
    const char *docker_tls_cert;
    const char *docker_tls_key;
    const char *docker_tls_ca;
    long docker_timeout_ms; /* per Engine API call */

    /* Images a request may choose; the default image is always allowed. */
    const char *const *allowed_images;
    size_t allowed_image_count;

    const char *state_dir;        /* sessions/<session_id>/ (execd socket dirs) live here */
    const char *execd_bundle_dir; /* host dir mounted read-only at /opt/moat */
    const char *store_path;       /* SQLite file (WAL) */
    /* container name = prefix + session_id; at most 64 characters of [A-Za-z0-9_.-] */
    const char *container_name_prefix;
    /* Scope when several runtimes share one engine ([A-Za-z0-9_.-], at most 63 bytes): its
     * containers get the label moat.instance=<instance>. NULL: they get no such label.
     * Ownership rule: the runtime lists, returns, adopts, renews, stops, kills or removes only
     * a container labelled moat.managed=true, labelled moat.instance=<instance> (with no
     * moat.instance label at all when instance is NULL), and named container_name_prefix +
     * its session_id label. Any other container is left alone, logged once per container id. */
    const char *instance;
    /* OCI runtime of the sandboxes, as registered with dockerd (its "runtimes" in daemon.json or
     * --add-runtime), sent as HostConfig.Runtime: "runsc" runs them under gVisor. NULL or "":
     * the engine's default runtime (runc), and no HostConfig.Runtime at all. At most 63 bytes
     * of [A-Za-z0-9_.-], starting with a letter or a digit. */
    const char *runtime;

    int64_t default_memory_bytes, max_memory_bytes;
    int64_t default_nano_cpus, max_nano_cpus;
    /* 0: the runtime's own pids limits (MOAT_*_PIDS_LIMIT_* below). */
    int64_t default_pids_limit, max_pids_limit;
    /* Who sandbox commands (and the file API) run as: sandbox_uid:sandbox_gid, never 0, unless
     * sandbox_user_root asks for root. execd itself stays root in the container, so commands
     * cannot signal, trace or read it; the chat workspace belongs to this user. */
    bool sandbox_user_root;
    uint32_t sandbox_uid, sandbox_gid;
    /* execd closes a terminal session no client has been attached to for this long; 0: execd's
     * default (30 minutes). */
    uint32_t terminal_idle_seconds;
    /* A read-only root file system, with writable tmpfs mounts of tmpfs_size_bytes each on /tmp,
     * /var/tmp and /root, so the container's writable layer on the host disk stays empty. */
    bool read_only_rootfs;
    int64_t tmpfs_size_bytes;

    /* Host-enforced bounds on what a sandbox writes (docs/runtime.md, "Workspaces"). With
     * workspace_quota, each chat's workspace is a sparse ext4 image,
     * <workspace_images_dir>/<chat_id>.ext4, made on the chat's first session with
     * workspace_size_bytes and about workspace_inodes inodes, and loop-mounted
     * nosuid,nodev,noatime on chats_root/<chat_id>; each session's /run/moat is a tmpfs of
     * 4 MiB. This needs CAP_SYS_ADMIN (root), /dev/loop-control, /sbin/mkfs.ext4, Linux >= 5.8,
     * and moatd in the same mount namespace as dockerd. Without it: plain, unbounded directories.
     */
    bool workspace_quota;
    const char *workspace_images_dir; /* NULL: <chats_root>/.images */
    int64_t workspace_size_bytes;     /* 16 MiB .. 16 TiB */
    int64_t workspace_inodes;         /* 64 .. 2^32-1, at most one per KiB of the size */
    long readiness_timeout_ms;        /* create waits this long for execd's GET /ping */
    /* Warm pool of the default image (docs/runtime.md, "Warm pool"): sandboxes started ahead of
     * any chat, claimed by moat_runtime_claim. 0: none. Needs this process able to mount. */
    int64_t pool_size;
    int64_t pool_fill_concurrency; /* slots started at once by the refill threads, >= 1 */
    /* The pool refills only while running sessions + pool slots stay below this (moatd's
     * max_sessions); 0: no bound. pool_size must not exceed it. */
    int64_t pool_max_sandboxes;
    int stop_timeout_seconds; /* grace period of Docker's stop before SIGKILL */

    moat_runtime_metrics metrics;
    moat_runtime_tracer tracer;
} moat_runtime_config;

/* Pids limits by runtime. Under runc a limit counts the sandbox's processes and threads. Under
 * gVisor (a runtime named "runsc" or "runsc-…", ptrace platform) it counts gVisor's own host
 * threads instead: about 60 with execd idle, about 10 more for each process running at once, and
 * more again after repeated bursts (idle stub threads are kept); reaching it ends the whole
 * sandbox instead of failing one fork. So gVisor gets limits about ten times runc's default
 * share of processes, and a floor below which execd cannot reliably run a command
 * (docs/isolation-levels.md has the measurements). */
#define MOAT_RUNC_PIDS_LIMIT_DEFAULT   256
#define MOAT_RUNC_PIDS_LIMIT_MAX       1024
#define MOAT_GVISOR_PIDS_LIMIT_DEFAULT 2048
#define MOAT_GVISOR_PIDS_LIMIT_MAX     4096
#define MOAT_GVISOR_PIDS_LIMIT_MIN     128

/* True when runtime names gVisor: "runsc", or "runsc-" and a suffix ("runsc-kvm"). */
bool moat_runtime_is_gvisor(const char *runtime);

/* Fills every field with moat's defaults (state under /var/lib/moat, the Docker socket at
 * /var/run/docker.sock, image moat-sandbox-debian:latest, ttl 300 s, cleanup every 60 s, 512 MiB /
 * 1 CPU by default, 4 GiB / 2 CPUs max, the runtime's pids limits, readiness 10 s, a read-only
 * root with 64 MiB tmpfs mounts, workspace quotas on: 1 GiB and 65536 inodes, owned by the
 * sandbox user 1000:1000). */
void moat_runtime_config_defaults(moat_runtime_config *cfg);

/* Checks the config without touching Docker: every path setting absolute; dependencies,
 * lambda-tools and execd bundle dirs exist; chats_root, state_dir and the store's parent
 * exist or can be created; limits positive (pids limits 0 or positive) and defaults <= maxima;
 * under gVisor no pids limit below MOAT_GVISOR_PIDS_LIMIT_MIN; with workspace_quota, the sizes
 * in range and this process able to mount (CAP_SYS_ADMIN, the loop-control device and
 * mkfs.ext4 present). On failure returns
 * INVALID_ARGUMENT (reason "invalid_config", detail setting=<name>) with a message naming
 * the setting. */
moat_code moat_runtime_config_validate(const moat_runtime_config *cfg, moat_status *st);

/* ---- sessions ----------------------------------------------------------------------------- */

typedef enum moat_session_state {
    MOAT_SESSION_RUNNING = 0,
    MOAT_SESSION_STOPPED = 1, /* stopped by a caller */
    MOAT_SESSION_EXPIRED = 2, /* reaped after its TTL */
    MOAT_SESSION_GONE = 3,    /* the container vanished outside moat */
    MOAT_SESSION_FAILED = 4,  /* create failed */
} moat_session_state;

/* "running", "stopped", "expired", "gone", "failed". Static. */
const char *moat_session_state_name(moat_session_state state);

#define MOAT_CONTAINER_ID_MAX   72
#define MOAT_IMAGE_NAME_MAX     256
#define MOAT_RUNTIME_PATH_MAX   4096
#define MOAT_RUNTIME_REASON_MAX 64
#define MOAT_EXECD_TOKEN_MAX    65 /* 64 hex digits and a NUL */

/* A session, by value; no pointers inside. */
typedef struct moat_session {
    char session_id[MOAT_UUID_STR_LEN];
    char chat_id[MOAT_UUID_STR_LEN]; /* canonical */
    char container_id[MOAT_CONTAINER_ID_MAX];
    char image[MOAT_IMAGE_NAME_MAX];
    moat_session_state state;
    int64_t created_at_ms;
    int64_t expires_at_ms; /* authoritative: the store's when renewed, else the label's */
    bool renewed;
    char end_reason[MOAT_RUNTIME_REASON_MAX]; /* why it ended ("ttl", "stopped", …), or "" */
    int64_t ended_at_ms;
    char execd_socket[MOAT_RUNTIME_PATH_MAX]; /* <state_dir>/sessions/<id>/execd.sock */
    /* The secret execd of this session requires (X-EXECD-ACCESS-TOKEN), so a call that reached
     * another session's execd is refused; "" for sessions made before tokens existed. */
    char execd_token[MOAT_EXECD_TOKEN_MAX];
    /* Created with force_new: one of several sessions of its chat on purpose, so reconciliation
     * never stops it as a duplicate. */
    bool force_new;
} moat_session;

/* Per-request choices. Zero / NULL means the config default. A limit above the config's
 * maximum, a pids limit below MOAT_GVISOR_PIDS_LIMIT_MIN under gVisor, or an image outside the
 * allow-list, is INVALID_ARGUMENT naming the field. */
typedef struct moat_session_options {
    const char *image;
    int64_t memory_bytes;
    int64_t nano_cpus;
    int64_t pids_limit;
    /* The caller asked for a session beside the chat's live one (CreateSession's force_new).
     * Recorded as the label moat.force_new=true; without it, the sweeps keep one live session
     * per chat (docs/runtime.md, "TTL, store and recovery"). */
    bool force_new;
} moat_session_options;

typedef struct moat_runtime moat_runtime;

/* Validates cfg, copies it, opens (creates) the SQLite store in WAL mode, creates chats_root
 * and state_dir/sessions. Does not contact Docker and does not start the reaper. Returns NULL
 * with st set on failure. Free with moat_runtime_close. */
moat_runtime *moat_runtime_open(const moat_runtime_config *cfg, moat_status *st);

/* Stops the reaper and watcher threads if running, closes the store, frees rt. Containers keep
 * running. */
void moat_runtime_close(moat_runtime *rt);

/* Creates and starts a sandbox and waits until execd answers GET /ping on its socket.
 * session_id and chat_id are any UUID spelling (INVALID_ARGUMENT naming the field otherwise);
 * chats_root/<chat_id> is created (with workspace_quota, the chat's image is made on its first
 * session and mounted there). opts may be NULL. On success fills *out (RUNNING). On failure the
 * container (if any) is removed, st->reason is "sandbox_start_failed" with detail chat_id (or
 * "invalid_argument"/"image_not_allowed" for bad input, "workspace_unavailable" with detail why
 * when the workspace or the session's execd directory cannot be set up; detail
 * why=userns_unmapped, FAILED_PRECONDITION, when the engine runs with userns-remap and its id
 * mapping cannot be known or does not cover sandbox_user: docs/runtime.md), and the Docker
 * status in detail docker_status when Docker answered. Under userns-remap the workspace and the
 * execd directory belong to the host ids the sandbox user and the sandbox's root map to. */
moat_code moat_runtime_create(moat_runtime *rt, const char *session_id, const char *chat_id,
                              int64_t created_at_ms, int64_t expires_at_ms,
                              const moat_session_options *opts, moat_session *out, moat_status *st);

/* OK when image is the default image or in allowed_images; else INVALID_ARGUMENT, reason
 * "image_not_allowed", detail field=image. Create checks it too; this lets a caller refuse an
 * image before it looks for a session to reuse. */
moat_code moat_runtime_check_image(const moat_runtime *rt, const char *image, moat_status *st);

/* The session with this id: from Docker when this runtime's container for it exists (state
 * RUNNING if the container runs), else from the store (STOPPED/EXPIRED/GONE/FAILED). NOT_FOUND
 * if neither (a container that is not this runtime's, see instance above, does not count). */
moat_code moat_runtime_get(moat_runtime *rt, const char *session_id, moat_session *out,
                           moat_status *st);

/* Running sessions: this runtime's containers carrying all three labels session_id, chat_id,
 * expires_at; containers with missing or malformed labels, and containers that are not this
 * runtime's (see instance above), are skipped. created_at comes from Docker;
 * expires_at from the store when renewed. *out is malloc'd (free() it; NULL when empty). */
moat_code moat_runtime_list_active(moat_runtime *rt, moat_session **out, size_t *count,
                                   moat_status *st);

/* Moves the expiry to new_expires_at_ms (must be in the future) and writes it durably to the
 * store before returning OK. NOT_FOUND when the session has no running container;
 * FAILED_PRECONDITION when the reaper has already claimed it. out may be NULL. */
moat_code moat_runtime_renew(moat_runtime *rt, const char *session_id, int64_t new_expires_at_ms,
                             moat_session *out, moat_status *st);

/* Stops and removes the session's container and records state STOPPED with reason "stopped".
 * A container Docker no longer has is success, and so is a session with no container of this
 * runtime's: a container that only carries the session's labels is never touched. Other
 * Docker failures: reason "sandbox_stop_failed". The chat workspace is never deleted;
 * with workspace_quota it is unmounted from the host when no other running session of the chat
 * uses it. */
moat_code moat_runtime_stop(moat_runtime *rt, const char *session_id, moat_status *st);

/* The seed's stop by container id: stop then remove; 404 is success. A container that is not
 * this runtime's (see instance above) is PERMISSION_DENIED, reason "container_not_owned", and
 * left alone. Any other failure is reason "sandbox_stop_failed". Both carry detail
 * container_id. */
moat_code moat_runtime_stop_container(moat_runtime *rt, const char *container_id, moat_status *st);

/* Sends a signal ("KILL", "TERM", "INT", …: letters and digits only) to the session's container
 * without removing it (e.g. to end a runaway sandbox at once; the reaper or stop removes it).
 * NOT_FOUND when the session has no container; a container that is not running is
 * FAILED_PRECONDITION (Docker's 409), with Docker's message. */
moat_code moat_runtime_kill(moat_runtime *rt, const char *session_id, const char *signal_name,
                            moat_status *st);

/* ---- TTL and recovery --------------------------------------------------------------------- */

/* One reaper sweep at now_ms: every container of this runtime's (see instance above) with the
 * three labels well-formed whose authoritative expiry is <= now_ms is stopped and removed and
 * its store row set to EXPIRED with reason "ttl". *reaped (may be NULL) gets the count.
 * Containers without moat's labels, with malformed ones, or that are not this runtime's are
 * never touched. Also removes containers an interrupted create left in Created (their sessions
 * FAILED "create_interrupted") and stops all but the newest live session of a chat (STOPPED
 * "duplicate"), leaving alone sessions this runtime is creating or stopping right now. */
moat_code moat_runtime_reap(moat_runtime *rt, int64_t now_ms, size_t *reaped, moat_status *st);

/* Starts a runtime-owned thread running moat_runtime_reap every cleanup_interval_seconds, or
 * moat_runtime_reconcile instead once the engine answers again after a call found it unreachable,
 * the event watcher's stream broke, or a reconcile failed; the watcher wakes it as soon as its
 * stream is back. FAILED_PRECONDITION if already started. */
moat_code moat_runtime_start_reaper(moat_runtime *rt, moat_status *st);
/* Stops and joins it; no-op when not running. */
void moat_runtime_stop_reaper(moat_runtime *rt);

typedef struct moat_reconcile_report {
    size_t adopted;        /* live containers now tracked (store row created or refreshed) */
    size_t reaped;         /* expired ones stopped and removed */
    size_t gone;           /* store rows RUNNING with no container, now GONE */
    size_t skipped;        /* containers with missing/malformed labels or not ours, left alone */
    size_t restarted;      /* stopped by the engine, started again and execd answered */
    size_t restart_failed; /* could not be started again: removed, GONE engine_restart_failed */
    size_t duplicates;     /* a second live session of a chat: stopped, STOPPED duplicate */
    size_t orphans;        /* left in Created by an interrupted create: removed, FAILED */
    size_t pool_slots_removed; /* unclaimed pool slots no pool of this runtime holds: removed */
} moat_reconcile_report;

/* Recovery, at start-up and whenever the engine was unreachable and answers again (the reaper
 * thread runs it then; see docs/runtime.md, "TTL, store and recovery"): adopt this runtime's
 * containers found in Docker (expiry = the store's if renewed, else the label's), reap expired
 * ones, start again the sessions whose container the engine stopped (workspace and execd
 * directory mounted again, execd answering with the session's token) or record them GONE with
 * reason "engine_restart_failed: <why>", stop every live session of a chat but its newest
 * (STOPPED "duplicate"; force_new sessions excepted), remove containers an interrupted create
 * left in Created (FAILED "create_interrupted"), mark RUNNING store rows without a container
 * GONE. report may be NULL. A failed reconcile is retried by the reaper thread. */
moat_code moat_runtime_reconcile(moat_runtime *rt, int64_t now_ms, moat_reconcile_report *report,
                                 moat_status *st);

/* ---- warm pool ------------------------------------------------------------------------------ */

/* Starts the pool's refill threads (pool_fill_concurrency of them), which keep pool_size
 * sandboxes of the default image started, execd answering, bound to no chat. Call after the
 * start-up reconcile, which removes the unclaimed slots an earlier run left. OK and nothing
 * started when pool_size is 0; FAILED_PRECONDITION if already started. */
moat_code moat_runtime_start_pool(moat_runtime *rt, moat_status *st);
/* Stops and joins the refill threads and removes the unclaimed slots (their execd tokens live
 * only in this process). No-op when not running. moat_runtime_close calls it. */
void moat_runtime_stop_pool(moat_runtime *rt);

/* Hands a ready pool slot to chat_id as a new session, exactly as moat_runtime_create would
 * make one: the chat's workspace is mounted into the slot (propagating into the running
 * sandbox at chat_mount_path), and the store row (chat, times, execd token) is written, so
 * every other call treats it as any session. The session's id is the slot's (out->session_id),
 * not one the caller picks. A slot is handed out once: the claim takes it out of the pool under
 * the pool's lock and its store row is inserted only if none exists. NOT_FOUND, reason
 * "pool_empty", when no slot is ready or the request is not the pool's kind (another image,
 * limits other than the defaults, force_new): the caller then creates cold. Other failures
 * remove the slot and carry the reason of the step that failed. */
moat_code moat_runtime_claim(moat_runtime *rt, const char *chat_id, int64_t created_at_ms,
                             int64_t expires_at_ms, const moat_session_options *opts,
                             moat_session *out, moat_status *st);

/* A claim in two steps, for a cluster create whose chat key must be taken with the session id
 * before the sandbox is the chat's (docs/runtime.md, "Reservations"). pool_reserve takes the
 * oldest ready slot whose execd answers out of the pool (into the busy set, so no sweep removes
 * it and no other claim or reservation takes it) and gives its session id: NOT_FOUND
 * "pool_empty" as moat_runtime_claim (it never waits for a starting slot). pool_bind then hands
 * it to chat_id exactly as moat_runtime_claim would (any failure removes the slot; NOT_FOUND
 * "pool_empty" when session_id is not reserved), or pool_unreserve ends the reservation: with
 * reuse the slot goes back to the head of the pool untouched (nothing outside this process
 * learnt its id), else it is removed (its id may be known: a chat key's transaction whose
 * answer was lost). Refills wait while a reservation is open. A reservation lives in this
 * process only: after a restart its slot is an unclaimed one, which the reconcile removes. */
moat_code moat_runtime_pool_reserve(moat_runtime *rt, const moat_session_options *opts,
                                    char session_id[MOAT_UUID_STR_LEN], moat_status *st);
moat_code moat_runtime_pool_bind(moat_runtime *rt, const char *session_id, const char *chat_id,
                                 int64_t created_at_ms, int64_t expires_at_ms, moat_session *out,
                                 moat_status *st);
void moat_runtime_pool_unreserve(moat_runtime *rt, const char *session_id, bool reuse);

typedef struct moat_pool_stats {
    uint32_t size;     /* pool_size */
    uint32_t ready;    /* slots ready to claim */
    uint32_t starting; /* slots being started */
    uint32_t reserved; /* slots reserved by cluster creates, neither bound nor given back yet */
    /* Slot starts that failed in a row (0 once one succeeds): the image may not run execd. */
    uint32_t failures_in_row;
    char last_error[160]; /* the last failure's message, "" when none */
} moat_pool_stats;

/* A snapshot of the pool; all zero when it has none. */
void moat_runtime_pool_stats(moat_runtime *rt, moat_pool_stats *out);

/* ---- list cache ------------------------------------------------------------------------------ */

/* Starts a runtime-owned thread that follows Docker's event stream (GET /events, filtered on
 * the three session labels, moat.managed=true and the instance). While that stream is connected,
 * moat_runtime_list_active answers from a snapshot of its last Docker listing, which any event for
 * a labelled container, and any create/renew/stop through this runtime, invalidates; so repeated
 * lists of an unchanged set cost no Docker call. Without the watcher (or while its stream is down)
 * every list asks Docker. The thread reconnects by itself. FAILED_PRECONDITION if already started.
 */
moat_code moat_runtime_start_watcher(moat_runtime *rt, moat_status *st);
/* Stops and joins it (promptly: the transfer is woken, not polled); no-op when not running. */
void moat_runtime_stop_watcher(moat_runtime *rt);

/* ---- raw Docker Engine API access (used by the runtime, its tests and benchmarks) --------- */

/* A Docker response: HTTP status and the parsed JSON body (NULL when empty or not JSON: not
 * UTF-8, a raw control character, or \u0000 anywhere makes it not JSON). The caller owns the
 * tree until moat_runtime_docker_response_free. */
typedef struct moat_docker_response {
    long http_status;
    cJSON *json;
} moat_docker_response;

/* Performs one Engine API call: method ("GET", "POST", "DELETE"), path without the version
 * prefix ("/containers/json?all=1"), optional JSON body text. The runtime negotiates the API
 * version on first use (GET /version) and prefixes /v<api>. An HTTP status >= 400 is an
 * error: the code maps 404 → NOT_FOUND, 409 → FAILED_PRECONDITION (ALREADY_EXISTS for name
 * conflicts on create), 400 → INVALID_ARGUMENT, 5xx → INTERNAL / UNAVAILABLE (503), with
 * Docker's "message" in st->message and detail docker_status. No connection → UNAVAILABLE;
 * timeout → UNAVAILABLE reason "docker_timeout"; malformed JSON where JSON is expected → INTERNAL
 * reason "docker_protocol". resp (may be NULL) is filled even on HTTP errors; release its json with
 * moat_runtime_docker_response_free. op names the call for metrics. */
moat_code moat_runtime_docker_call(moat_runtime *rt, const char *op, const char *method,
                                   const char *path, const char *body, moat_docker_response *resp,
                                   moat_status *st);
void moat_runtime_docker_response_free(moat_docker_response *resp);

/* The negotiated API version ("1.41"), negotiating if needed. Copied into out. */
moat_code moat_runtime_docker_version(moat_runtime *rt, char out[16], moat_status *st);

/* GET /_ping within timeout_ms, whatever docker_timeout_ms says: OK when the engine answers
 * 200 now (nothing is cached); UNAVAILABLE (reason docker_unavailable or docker_timeout)
 * otherwise. Thread-safe. */
moat_code moat_runtime_docker_ping(moat_runtime *rt, long timeout_ms, moat_status *st);

/* GET /images/{name}/json. NOT_FOUND when the engine lacks the image. */
moat_code moat_runtime_image_inspect(moat_runtime *rt, const char *image, moat_status *st);

#ifdef __cplusplus
}
#endif
#endif
