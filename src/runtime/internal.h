/* Internals of the runtime module, shared by its .c files only. */
#ifndef MOAT_RUNTIME_INTERNAL_H
#define MOAT_RUNTIME_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>

#include <curl/curl.h>

#include "runtime/runtime.h"

/* Largest Docker answer we accept (a list of many containers is the big one). */
#define MOAT__DOCKER_BODY_MAX (32u * 1024u * 1024u)
/* Newest Engine API version this code speaks; an older engine's own version is used. */
#define MOAT__DOCKER_API_MAX "1.44"
#define MOAT__DOCKER_API_MIN "1.25"

/* How many foreign container ids are remembered as logged; past that, one line says so and
 * further foreign containers are left alone without a line each. */
#define MOAT__FOREIGN_LOGGED_MAX 1024
/* A container name moat makes: container_name_prefix (at most 64 bytes) + a session id. */
#define MOAT__CONTAINER_NAME_MAX 128

typedef struct moat__store moat__store;

/* A chat's workspace between attach and release. */
typedef struct moat__workspace {
    char dir[MOAT_RUNTIME_PATH_MAX]; /* the real host path to bind-mount into the sandbox */
    int lock_fd;                     /* the chat's lock while held, else -1 */
} moat__workspace;

/* A warm pool slot: a started sandbox bound to no chat yet. */
typedef struct moat__slot {
    char session_id[MOAT_UUID_STR_LEN]; /* the session id it will have once claimed */
    char container_id[MOAT_CONTAINER_ID_MAX];
    char execd_token[MOAT_EXECD_TOKEN_MAX];
    bool prepared; /* a new chat's workspace waits for it (workspace_prepared.c) */
} moat__slot;

/* A slot taken out of the pool by moat_runtime_pool_reserve, until it is bound or given back. */
typedef struct moat__reserved {
    moat__slot slot;
    uint64_t t0_ns, take_ns; /* when the reservation began, and how long the take took */
} moat__reserved;

/* A pool slot's chat_id label: a slot is made before it has a chat, and labels never change, so
 * a claimed slot's chat lives in its store row (pool.c). */
#define MOAT__POOL_CHAT_LABEL "00000000-0000-0000-0000-000000000000"

/* workspace.c: the host-side mounts that bound what a sandbox writes (docs/runtime.md,
 * "Workspaces"). The strings are borrowed: whoever fills this keeps them alive while it is used
 * (the runtime points them at its own copies). */
typedef struct moat__workspace_config {
    bool quota;               /* false: plain directories, nothing is mounted */
    const char *chats_root;   /* chats_root/<chat_id> is the workspace (the mount point) */
    const char *images_dir;   /* holds <chat_id>.ext4 and its lock file <chat_id>.lock */
    const char *mkfs_path;    /* mkfs.ext4, run as a child process */
    const char *loop_control; /* the loop-control device */
    int64_t size_bytes;       /* size of a new image */
    int64_t inodes;           /* inodes of a new image (mkfs rounds to whole inode tables) */
} moat__workspace_config;

/* How the engine maps ids (userns.c): with Docker's userns-remap, container id N is host id
 * base + N (for N below the range's length, which moat__userns_map checks for the ids moat
 * uses); without it, the identity. */
typedef struct moat__idmap {
    bool remapped;
    uint32_t uid_base, gid_base; /* 0 when not remapped */
} moat__idmap;

#define MOAT__SUBUID "/etc/subuid"
#define MOAT__SUBGID "/etc/subgid"

#define MOAT__MKFS_EXT4    "/sbin/mkfs.ext4"
#define MOAT__LOOP_CONTROL "/dev/loop-control"

struct moat_runtime {
    moat_runtime_config cfg;   /* every string points into owned copies below */
    moat__workspace_config ws; /* from cfg; its strings are owned copies too */
    char **owned;
    size_t owned_count;

    /* Docker endpoint: a Unix socket path, or a base URL for tcp://. */
    char *docker_socket;
    char *docker_base_url;

    char instance_filter[96]; /* "moat.instance=<instance>", or "" */

    /* Containers left alone because they are not this runtime's are logged once per container
     * id (hashes of the ids already logged), not on every sweep that sees them again. */
    pthread_mutex_t foreign_mu;
    uint64_t foreign_logged[MOAT__FOREIGN_LOGGED_MAX];
    size_t foreign_logged_count;
    bool foreign_log_full; /* the table filled up and a line said so */

    /* Facts about the engine learned on first use: its API version, its id mapping. */
    pthread_mutex_t version_mu;
    char api_version[16];
    bool idmap_known;
    moat__idmap idmap;

    moat__store *store;

    /* List cache (watch.c): valid while the event stream is connected and no event or
     * mutation has bumped the generation since the snapshot was taken. */
    pthread_mutex_t cache_mu;
    uint64_t cache_gen;   /* bumped by every event and every mutation */
    bool watch_connected; /* the event stream answered 200 and is open */
    bool cache_valid;
    uint64_t cache_snapshot_gen;
    moat_session *cache;
    size_t cache_count;
    /* Containers the event stream saw die lately, so a session added after its container's
     * death was seen is not cached as running (moat__cache_add). */
    char cache_dead[16][MOAT_CONTAINER_ID_MAX];
    size_t cache_dead_next;
    /* The Docker list under way for a missed snapshot, which callers at its generation join
     * instead of listing too (under cache_mu; owned by the flight's references). */
    struct moat__list_flight *list_flight;
    pthread_cond_t list_done; /* broadcast when any flight ends */
    size_t list_joined;       /* callers that have joined a flight so far, for tests */
    pthread_t watch_thread;
    bool watch_running;
    bool watch_stop;
    void *watch_multi; /* CURLM*, for curl_multi_wakeup */

    pthread_mutex_t reaper_mu;
    pthread_cond_t reaper_cv;
    pthread_t reaper_thread;
    bool reaper_running;
    bool reaper_stop;
    /* Under reaper_mu. The engine may have restarted (a call found it unreachable, the event
     * stream broke) or a reconcile failed: the reaper's next pass reconciles instead of reaping. */
    bool reconcile_pending;
    bool reaper_kick; /* the watcher is connected again: run that pass now */

    /* Sessions this runtime is creating or stopping right now: a sweep leaves them alone, so a
     * container between its create and its start is not taken for an interrupted create. */
    pthread_mutex_t busy_mu;
    char (*busy)[MOAT_UUID_STR_LEN];
    size_t busy_count, busy_cap;

    /* Warm pool (pool.c), under pool_mu (taken before busy_mu, never after). */
    pthread_mutex_t pool_mu;
    pthread_cond_t pool_cv;
    pthread_t *pool_threads;
    size_t pool_thread_count;
    bool pool_stop;
    moat__slot *pool_ready; /* slots ready to claim, oldest first */
    size_t pool_ready_count;
    size_t pool_starting;
    /* Creates (claims and cold ones) in flight: no refill starts meanwhile, so none competes
     * with a chat waiting for its sandbox. */
    size_t pool_creates_in_flight;
    int64_t pool_quiet_until_ms; /* nor for REFILL_PAUSE_MS after the last one ended */
    size_t pool_claims_waiting;  /* claims waiting for a starting slot, one each */
    /* Slots reserved by cluster creates (in the busy set meanwhile, so no sweep removes them). */
    moat__reserved *pool_reserved;
    size_t pool_reserved_count;
    size_t pool_giving_way; /* refills started before a create, waiting for it to end */
    uint32_t pool_failures_in_row;
    int64_t pool_retry_at_ms; /* after failures, no new start before this */
    char pool_last_error[160];
};

/* A store row; fixed-size strings so rows can be copied. */
typedef struct moat__row {
    char session_id[MOAT_UUID_STR_LEN];
    char chat_id[MOAT_UUID_STR_LEN];
    char container_id[MOAT_CONTAINER_ID_MAX];
    char image[MOAT_IMAGE_NAME_MAX];
    int64_t created_at_ms;
    int64_t label_expires_at_ms;
    int64_t expires_at_ms;
    bool renewed;
    moat_session_state state;
    bool claimed; /* the reaper is removing it */
    char reason[MOAT_RUNTIME_REASON_MAX];
    int64_t ended_at_ms;
    char execd_token[MOAT_EXECD_TOKEN_MAX]; /* "" for sessions made before tokens */
} moat__row;

/* store.c. Every function is serialised by the store's mutex. Errors: MOAT_E_IO with a
 * message in errbuf (may be NULL) of at least 256 bytes. */
moat_err moat__store_open(const char *path, moat__store **out, char *errbuf, size_t errlen);
void moat__store_close(moat__store *store);
/* Inserts or replaces the row. */
moat_err moat__store_put(moat__store *store, const moat__row *row);
/* Inserts only when no row exists; *inserted tells which. */
moat_err moat__store_insert_new(moat__store *store, const moat__row *row, bool *inserted);
moat_err moat__store_get(moat__store *store, const char *session_id, moat__row *row);
/* Whether a row exists for session_id (any state), or the store cannot tell: only a row known
 * to be missing is false. */
bool moat__store_has(moat__store *store, const char *session_id);
/* Sets the expiry and renewed=1 for a RUNNING unclaimed row. MOAT_E_NOT_FOUND without a row,
 * MOAT_E_STATE when the row is not running or is claimed by the reaper. */
moat_err moat__store_renew(moat__store *store, const char *session_id, int64_t expires_at_ms);
/* Atomically marks a RUNNING row whose expiry <= now_ms as claimed; *claimed tells. */
moat_err moat__store_claim_expired(moat__store *store, const char *session_id, int64_t now_ms,
                                   bool *claimed);
/* Releases a claim without ending the session (the removal failed; the next sweep retries). */
moat_err moat__store_unclaim(moat__store *store, const char *session_id);
/* Ends a session: state, reason, time; clears any claim. */
moat_err moat__store_finish(moat__store *store, const char *session_id, moat_session_state state,
                            const char *reason, int64_t now_ms);
/* All RUNNING rows, malloc'd (free()). */
moat_err moat__store_list_running(moat__store *store, moat__row **rows, size_t *count);

/* docker.c */
/* The engine did not answer: the reaper's next pass reconciles (it may be a restart). */
void moat__engine_lost(moat_runtime *rt);
moat_err moat__docker_init(moat_runtime *rt, moat_status *st);

/* userns.c. The engine's id mapping, asked once (GET /info) and kept for the runtime's life: a
 * changed userns-remap takes a moatd restart, as it takes a dockerd restart. Remapped when
 * SecurityOptions has "name=userns"; the base is the "<uid>.<gid>" DockerRootDir ends in, and
 * /etc/subuid and /etc/subgid must hold ranges starting there that cover the sandbox user.
 * Failures: Docker's code for the call; FAILED_PRECONDITION reason "userns_unmapped" (logged)
 * when the mapping cannot be known or does not cover the sandbox user. */
moat_code moat__userns_map(moat_runtime *rt, moat__idmap *out, moat_status *st);
/* The ids in a remapped engine's DockerRootDir ("/var/lib/docker/100000.100000"). */
bool moat__userns_root_dir(const char *root_dir, uint32_t *uid, uint32_t *gid);
/* The count of the first "name:start:count" line of text (/etc/subuid's format) whose start is
 * start; false when there is none. */
bool moat__subid_count(const char *text, uint32_t start, uint64_t *count);
/* Points an easy handle at the engine: its Unix socket, or TLS client settings for tcp://. */
void moat__docker_setup_endpoint(moat_runtime *rt, CURL *h);
/* GET /ping on execd's socket with its token (NULL or "": none), never following a link the
 * sandbox planted there; true on HTTP 200. */
bool moat__execd_ping(const char *socket_path, const char *token, long timeout_ms);
/* mkdir -p: path and every missing parent, new ones with mode; 0, or -1 with errno. */
int moat__mkdir_p(const char *path, mode_t mode);
/* obj[key] (case-sensitive) when obj is an object, else NULL. Lives as long as obj. */
const cJSON *moat__json_get(const cJSON *obj, const char *key);
/* obj[key] when obj is an object and the value a string, else NULL. Lives as long as obj. */
const char *moat__json_str(const cJSON *obj, const char *key);
/* Adds key: value printed as an exact decimal integer. cJSON keeps numbers as doubles and
 * prints 1e+16 for large ones, which Docker refuses for an int64 field. false on NOMEM. */
bool moat__json_add_int(cJSON *obj, const char *key, int64_t value);

/* A container as listed, with moat's labels checked. */
typedef struct moat__listed {
    char container_id[MOAT_CONTAINER_ID_MAX];
    char session_id[MOAT_UUID_STR_LEN];
    char chat_id[MOAT_UUID_STR_LEN];
    char image[MOAT_IMAGE_NAME_MAX];
    char name[MOAT__CONTAINER_NAME_MAX]; /* without Docker's leading '/'; "" when none fits */
    int64_t created_at_ms;
    int64_t label_expires_at_ms;
    bool running;
    bool never_started; /* Docker's state "created": its create was interrupted before start */
    bool force_new;     /* moat.force_new=true */
    bool managed;       /* moat.managed=true */
    bool has_instance;  /* a moat.instance label, whatever its value */
    /* moat.pool=true: started as a warm pool slot. Its chat, created_at and expiry come from
     * its store row (moat__list fills them in); without a row it is an unclaimed slot. */
    bool pool;
    bool unclaimed_slot;
    char instance[64]; /* its value when it is a string that fits, else "" */
} moat__listed;

/* The labels of a sandbox's container: Docker's filters and the ownership rule read them. */
#define LABEL_SESSION   "session_id"
#define LABEL_CHAT      "chat_id"
#define LABEL_EXPIRES   "expires_at"
#define LABEL_MANAGED   "moat.managed"
#define LABEL_VERSION   "moat.version"
#define LABEL_INSTANCE  "moat.instance"
#define LABEL_FORCE_NEW "moat.force_new"
#define LABEL_POOL      "moat.pool"

/* session.c */
/* The tracer's span around one operation (the tracer may be unset); span_end returns
 * st->code. */
void *moat__span_start(moat_runtime *rt, const char *name, const char *session_id);
moat_code moat__span_end(moat_runtime *rt, void *span, moat_status *st);
/* INVALID_ARGUMENT naming the field that is not a UUID. */
moat_code moat__bad_uuid(moat_status *st, const char *field, const char *value);
/* Appends item to arr; frees item when that fails (item NULL: an allocation already failed). */
bool moat__json_append(cJSON *arr, cJSON *item);
/* <state_dir>/sessions/<id>/execd.sock */
void moat__session_socket(moat_runtime *rt, const char *session_id, char *out, size_t cap);
/* Puts a create's or a stop's session in the busy set (session_id gets the canonical id), so no
 * sweep takes its container for an orphan or a duplicate meanwhile; a malformed id goes through
 * unmarked (session_id "") for the operation to refuse. false (st set) when out of memory. */
bool moat__mark_busy(moat_runtime *rt, const char *session_id_in, char *session_id,
                     moat_status *st);
/* Reads one entry of GET /containers/json or /containers/{id}/json. false when any of the
 * three labels is missing or malformed (the entry must then be skipped). Says nothing about
 * whose container it is: moat__list and the stop paths check that. */
bool moat__parse_listed(const cJSON *entry, moat__listed *out);
/* The session a store row describes, its execd socket path filled in. */
void moat__session_from_row(moat_runtime *rt, const moat__row *row, moat_session *out);
/* A fresh RUNNING store row for a listed container, expiry from its label. */
void moat__row_from_listed(const moat__listed *c, moat__row *row);
/* Lists this runtime's containers that also carry every label filter given (e.g. "session_id",
 * "session_id=<id>"). Docker is asked for moat.managed=true (and moat.instance=<instance>) as
 * well, and each entry must then pass the ownership rule (docs/runtime.md, "Sharing one
 * engine"): the rest are logged once per container id and never returned. all: include stopped
 * containers. Malformed and foreign entries are counted in *skipped (may be NULL). */
moat_code moat__list(moat_runtime *rt, const char *const *labels, size_t label_count, bool all,
                     moat__listed **out, size_t *count, size_t *skipped, moat_status *st);
/* moat__list, also returning unclaimed pool slots (unclaimed_slot set): only the sweeps, which
 * remove those no pool of this runtime holds, want them. */
moat_code moat__list_with_slots(moat_runtime *rt, const char *const *labels, size_t label_count,
                                bool all, moat__listed **out, size_t *count, size_t *skipped,
                                moat_status *st);
/* session_create.c */
/* What a new sandbox is made of (moat__sandbox_start). */
typedef struct moat__sandbox_request {
    const char *session_id;    /* canonical */
    const char *chat_label;    /* the chat_id label: the chat, or MOAT__POOL_CHAT_LABEL */
    const char *workspace_dir; /* host source of chat_mount_path */
    bool pool_slot;            /* label moat.pool=true, workspace mount propagation rslave */
    const char *image;
    int64_t expires_at_ms; /* the expires_at label */
    int64_t memory, nano_cpus, pids;
    bool force_new;
    const char *execd_token;
} moat__sandbox_request;
/* Creates and starts the container of an already prepared session (its execd directory
 * attached) and waits for its execd; ws (may be NULL) is released once the container holds its
 * own mount. On failure the container is removed, container_id is "" unless Docker made one
 * (then it is gone again), and st says why (ALREADY_EXISTS on a name conflict). */
moat_code moat__sandbox_start(moat_runtime *rt, const moat__sandbox_request *req,
                              moat__workspace *ws, char container_id[MOAT_CONTAINER_ID_MAX],
                              moat_status *st);
/* 32 random bytes as 64 hex digits; 0, or -1 with errno. */
int moat__new_execd_token(char out[MOAT_EXECD_TOKEN_MAX]);
/* The chat's workspace made ready and owned by the sandbox user, as a create does (locked in
 * *ws until moat__workspace_release); a new chat's is the pool slot's prepared one when
 * prepared_slot_id is not NULL and the slot has one. */
moat_code moat__chat_workspace_prepare(moat_runtime *rt, const char *chat_id,
                                       const char *prepared_slot_id, moat__workspace *ws,
                                       moat_status *st);
/* Starting again a session whose container the engine stopped (docs/runtime.md, "TTL, store and
 * recovery"): begin mounts its workspace and execd directory again (the host may have lost
 * them) and starts the container; finish waits until its execd answers /ping with the
 * session's token. On failure st says why; the caller removes the container. */
moat_code moat__session_restart_begin(moat_runtime *rt, const moat__listed *c, moat_status *st);
moat_code moat__session_restart_finish(moat_runtime *rt, const moat__listed *c,
                                       const moat__row *row, moat_status *st);
/* session.c */
/* Stop + remove, tolerant of a container already gone. Reason sandbox_stop_failed. */
moat_code moat__stop_remove(moat_runtime *rt, const char *container_id, moat_status *st);
/* Removes <state_dir>/sessions/<id>/ (execd's socket dir), best effort. */
void moat__session_dir_remove(moat_runtime *rt, const char *session_id);
/* pool.c */
/* Whether this runtime's pool holds the unclaimed slot session_id (ready, starting or being
 * claimed): a sweep leaves such a slot alone, and removes the others (moat__pool_slot_remove). */
bool moat__pool_holds(moat_runtime *rt, const char *session_id);
/* Removes an unclaimed slot no pool holds: its container, execd directory and slot directory. */
void moat__pool_slot_remove(moat_runtime *rt, const moat__listed *c);
/* The host directory a pool slot mounts at chat_mount_path: <state_dir>/pool/<session_id>. */
void moat__pool_slot_dir(const moat_runtime *rt, const char *session_id, char *out, size_t cap);
/* Mounts the chat's workspace (ws_dir) into the slot's directory unless it already is there,
 * making the directory a shared mount of its own first, so the mount propagates into the slot's
 * running sandbox. UNAVAILABLE reason "workspace_unavailable" detail why=pool_mount. */
moat_code moat__pool_slot_bind(moat_runtime *rt, const char *session_id, const char *ws_dir,
                               moat_status *st);
/* Unmounts a slot's directory (the chat's workspace, then its own mount) and removes it; a no-op
 * when there is none. */
void moat__pool_slot_unbind(moat_runtime *rt, const char *session_id);
/* A cold create's start and end: refills give way meanwhile. */
void moat__pool_create_begin(moat_runtime *rt);
void moat__pool_create_end(moat_runtime *rt);
/* Called by a refill before each of its heavy steps (the engine's start of its container, its
 * prepared workspace): waits while a create is in flight or just ended, unless a claim waits
 * for a starting slot. */
void moat__pool_give_way(moat_runtime *rt);
void moat__pool_init(moat_runtime *rt);
void moat__pool_destroy(moat_runtime *rt);

/* The busy set (see struct moat_runtime). enter fails only when out of memory. */
bool moat__busy_enter(moat_runtime *rt, const char *session_id);
void moat__busy_leave(moat_runtime *rt, const char *session_id);
bool moat__busy_has(moat_runtime *rt, const char *session_id);

/* watch.c */
void moat__cache_init(moat_runtime *rt);
void moat__cache_destroy(moat_runtime *rt);
/* Any change to sessions: the next list asks Docker. */
void moat__cache_invalidate(moat_runtime *rt);
/* Copies the snapshot into *out when it is usable; false otherwise, with *gen set to the
 * generation a new snapshot must be taken at (0: do not cache). */
bool moat__cache_get(moat_runtime *rt, moat_session **out, size_t *count, uint64_t *gen);
/* Stores a snapshot taken at gen (copied), if nothing changed meanwhile. */
void moat__cache_put(moat_runtime *rt, uint64_t gen, const moat_session *sessions, size_t count);
/* A missed snapshot's Docker list, shared: the first caller at a generation makes it (*lead set,
 * which it ends with moat__list_end), and those that miss at the same generation meanwhile wait
 * for its outcome (true: *code, *st and on OK *out, a copy the caller frees). A list begun before
 * an invalidation is never joined after it: the generation has moved on, so the next caller
 * leads a new one. */
typedef struct moat__list_flight moat__list_flight;
bool moat__list_join(moat_runtime *rt, moat__list_flight **lead, moat_code *code,
                     moat_session **out, size_t *count, moat_status *st);
/* The lead's outcome (sessions copied) to every caller that joined; drops the lead's reference. */
void moat__list_end(moat_runtime *rt, moat__list_flight *f, moat_code code, const moat_status *st,
                    const moat_session *sessions, size_t count);
/* A running session that now exists (a claim): added to a usable snapshot, which stays usable,
 * instead of invalidating it. */
void moat__cache_add(moat_runtime *rt, const moat_session *session);
/* A container that no longer runs (stopped, removed or dead; either id may be NULL): taken out
 * of a usable snapshot, which stays usable. */
void moat__cache_forget(moat_runtime *rt, const char *session_id, const char *container_id);

/* mountinfo.c: an incremental reader of /proc/<pid>/mountinfo. No I/O: feed it bytes. */
typedef struct moat__mount_entry {
    unsigned major, minor;                   /* st_dev of the mounted file system */
    char mount_point[MOAT_RUNTIME_PATH_MAX]; /* unescaped */
    char fstype[32];
    char source[MOAT_RUNTIME_PATH_MAX];             /* unescaped, e.g. "/dev/loop3" */
    bool read_only, nosuid, nodev, noexec, noatime; /* per-mount options */
} moat__mount_entry;

/* Longer lines (an overlay with many layers) are skipped whole; no workspace line comes close. */
#define MOAT__MOUNTINFO_LINE_MAX 16384

typedef struct moat__mountinfo_reader {
    char line[MOAT__MOUNTINFO_LINE_MAX]; /* the current line so far */
    size_t len;
    bool overlong;  /* skipping the rest of a line longer than line[] */
    size_t skipped; /* lines skipped: too long or malformed */
} moat__mountinfo_reader;

void moat__mountinfo_init(moat__mountinfo_reader *r);
/* Parses one line without its newline. false when it is malformed. */
bool moat__mountinfo_parse_line(const char *line, size_t len, moat__mount_entry *out);
/* Feeds any number of bytes; on_entry gets each well-formed complete line (entry valid during the
 * call only). A last line without its newline waits for more bytes. */
void moat__mountinfo_feed(moat__mountinfo_reader *r, const char *data, size_t len,
                          void (*on_entry)(void *ctx, const moat__mount_entry *entry), void *ctx);

/* workspace.c */

/* "<dir>/<chat_id><suffix>" into out. false when chat_id is not a canonical UUID (so no path
 * built from it can climb out of dir) or the result does not fit. */
bool moat__workspace_path(const char *dir, const char *chat_id, const char *suffix, char *out,
                          size_t cap);
/* Makes chats_root/<chat_id> ready to bind-mount, its root directory owned by
 * owner_uid:owner_gid (host ids). With quota: creates the chat's image on its first use (mkfs),
 * mounts it nosuid,nodev,noatime on the directory unless it already is, and
 * returns holding the chat's lock, so that no detach unmounts it before the container holds its
 * own reference: call moat__workspace_release once the container has started (or failed).
 * Without quota: a plain directory, no lock. chat_id must be canonical. On failure nothing is
 * left mounted or locked, st has reason "workspace_unavailable" with details chat_id and why
 * (legacy_directory, foreign_mount, not_a_directory: FAILED_PRECONDITION; mkfs_failed,
 * no_loop_device, mount_failed, io_error: UNAVAILABLE), and a log line says the same. */
moat_code moat__workspace_attach(const moat__workspace_config *cfg, const char *chat_id,
                                 uint32_t owner_uid, uint32_t owner_gid, moat__workspace *ws,
                                 moat_status *st);
/* Releases the chat's lock taken by attach; a no-op when not held. */
void moat__workspace_release(moat__workspace *ws);
/* The parts of attach that workspace_prepared.c shares. make_image: a whole, fsynced copy of the
 * formatted template at image (name: a canonical UUID, for its temporary's name). mount_image:
 * image on a loop device, mounted nosuid,nodev,noatime on dir. Failures as attach's. */
moat_code moat__workspace_make_image(const moat__workspace_config *cfg, const char *name,
                                     uint32_t owner_uid, uint32_t owner_gid, const char *image,
                                     moat_status *st);
moat_code moat__workspace_mount_image(const moat__workspace_config *cfg, const char *name,
                                      const char *image, const char *dir, moat_status *st);
/* Opens (creating, if create) and takes a chat's lock file. -1 with errno on failure. */
int moat__workspace_lock(const char *lock_path, bool create);
/* The workspace's root directory belongs to the owner asked for, whatever owner it was made for
 * (the sandbox user, or the engine's id mapping, may have changed since). */
void moat__workspace_set_owner(const char *chat_id, const char *dir, uint32_t uid, uint32_t gid);
bool moat__is_empty_dir(const char *dir);

/* workspace_prepared.c: a new chat's workspace made ahead of time for a pool slot
 * (docs/runtime.md, "Warm pool"): <images_dir>/<slot_id>.prepared.ext4, mounted on
 * <state_dir>/pool-staging/<slot_id>; a claim for a chat without a workspace renames and moves
 * it instead of making one. */

/* Makes the slot's prepared workspace. Failures as attach's; nothing is left behind. */
moat_code moat__prepared_make(moat_runtime *rt, const char *slot_id, moat_status *st);
/* Hands the slot's prepared workspace to chat_id, returning as attach does (*ws locked, the
 * image <chat_id>.ext4 mounted on chats_root/<chat_id>), when the chat has no workspace yet.
 * NOT_FOUND when the chat has one (or its directory is not empty): attach it as usual; the
 * prepared one stays for moat__prepared_discard. Other failures as attach's. */
moat_code moat__prepared_claim(moat_runtime *rt, const char *slot_id, const char *chat_id,
                               uint32_t owner_uid, uint32_t owner_gid, moat__workspace *ws,
                               moat_status *st);
/* Unmounts and deletes whatever is left of the slot's prepared workspace; a no-op when none. */
void moat__prepared_discard(moat_runtime *rt, const char *slot_id);
/* Unmounts the staging directory's own mount when nothing is staged there (EBUSY otherwise: left
 * for the runtime still using it). */
void moat__prepared_staging_release(moat_runtime *rt);
/* Answers whether a session still uses the chat's workspace. */
typedef bool (*moat__chat_in_use_fn)(void *ctx, const char *chat_id);
/* Under the chat's lock, unmounts chats_root/<chat_id> when it is the chat's image and in_use
 * (may be NULL: always unmount) says no session uses it. Never lazy, so nothing is lost: a busy
 * file system (EBUSY: a host process uses it) stays mounted, with a log line, and OK. Other
 * failures: INTERNAL reason "workspace_detach_failed". A no-op without quota. */
moat_code moat__workspace_detach(const moat__workspace_config *cfg, const char *chat_id,
                                 moat__chat_in_use_fn in_use, void *ctx, moat_status *st);
/* The runtime's detach: unless the store has a RUNNING session of the chat. Failures are logged. */
void moat__workspace_detach_idle(moat_runtime *rt, const char *chat_id);
/* Detaches every chat workspace mounted under chats_root that no RUNNING session uses (those a
 * crash or a removal behind moat's back left mounted). */
void moat__workspace_detach_orphans(moat_runtime *rt);
/* Creates a session's execd directory (mode 0700, owned by owner_uid:owner_gid: the host ids of
 * the sandbox's root) and, with quota, mounts on it a tmpfs of MOAT__RUNDIR_BYTES
 * (nosuid,nodev,noexec) unless it already is a mount point. Failure: UNAVAILABLE reason
 * "workspace_unavailable", detail why=run_dir; nothing is left mounted. */
moat_code moat__rundir_attach(const moat__workspace_config *cfg, const char *dir,
                              uint32_t owner_uid, uint32_t owner_gid, moat_status *st);
/* Unmounts it when it is a mount point, and removes it (best effort: it must be empty). */
void moat__rundir_detach(const char *dir);
/* Whether this process holds CAP_SYS_ADMIN, which mount(2) and the loop devices need. */
bool moat__can_mount(void);

#define MOAT__RUNDIR_BYTES (4 * 1024 * 1024)

void moat__metric_session(moat_runtime *rt, const char *event, const char *session_id,
                          moat_code code, uint64_t started_ns);

#endif
