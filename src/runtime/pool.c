/* Warm pool: sandboxes of the default image started ahead of any chat, each claimed once by a
 * CreateSession (docs/runtime.md, "Warm pool"). A slot's container is labelled moat.pool=true
 * with a placeholder chat; it mounts its own host directory, <state_dir>/pool/<id>, at
 * chat_mount_path with rslave propagation, and a claim mounts the chat's workspace onto that
 * directory, which the running sandbox sees at once. The claim's store row carries the chat. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

/* After a failed start the next waits this long, doubling per failure in a row up to the cap, so
 * an image that cannot run execd costs a start every half minute, not a loop of them. */
#define RETRY_FIRST_MS 250
#define RETRY_MAX_MS   30000
/* A create's first command follows it within milliseconds (a burst's, all of them): no refill
 * starts until this long after the last create ended, so no container start competes with
 * them for the CPU. */
#define REFILL_PAUSE_MS 50

void moat__pool_init(moat_runtime *rt)
{
    pthread_mutex_init(&rt->pool_mu, NULL);
    pthread_cond_init(&rt->pool_cv, NULL);
}

void moat__pool_destroy(moat_runtime *rt)
{
    pthread_mutex_destroy(&rt->pool_mu);
    pthread_cond_destroy(&rt->pool_cv);
    free(rt->pool_ready);
    free(rt->pool_reserved);
}

void moat__pool_slot_dir(const moat_runtime *rt, const char *session_id, char *out, size_t cap)
{
    snprintf(out, cap, "%s/pool/%s", rt->cfg.state_dir, session_id);
}

/* The id of the mount path is on; 0 when it cannot be read. A bind mount of a directory onto
 * itself keeps its st_dev, so only the mount id tells it is a mount point. */
static uint64_t mount_id(const char *path)
{
    struct statx sx;
    if (statx(AT_FDCWD, path, AT_SYMLINK_NOFOLLOW, STATX_MNT_ID, &sx) != 0 ||
        !(sx.stx_mask & STATX_MNT_ID))
        return 0;
    return sx.stx_mnt_id;
}

static bool is_mount_point(const char *dir)
{
    char parent[MOAT_RUNTIME_PATH_MAX + 4];
    snprintf(parent, sizeof(parent), "%s/..", dir);
    uint64_t own = mount_id(dir);
    return own != 0 && own != mount_id(parent);
}

static bool same_dir(const char *a, const char *b)
{
    struct stat sa, sb;
    return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev &&
           sa.st_ino == sb.st_ino;
}

static moat_code mount_failed(moat_status *st, const char *what, const char *dir)
{
    moat_status_set(st, MOAT_CODE_UNAVAILABLE, "workspace_unavailable", "%s %s: %s", what, dir,
                    strerror(errno));
    moat_status_add_detail(st, "why", "pool_mount");
    moat_log(MOAT_LOG_WARN, "workspace_unavailable", "why=pool_mount msg=\"%s\"", st->message);
    return st->code;
}

/* The slot's directory as a shared mount of its own (a peer group of its own too, so what is
 * mounted on it propagates to the slot's sandbox and nowhere else). */
static moat_code slot_dir_make(moat_runtime *rt, const char *session_id, moat_status *st)
{
    char dir[MOAT_RUNTIME_PATH_MAX];
    moat__pool_slot_dir(rt, session_id, dir, sizeof(dir));
    if (moat__mkdir_p(dir, 0700) != 0)
        return mount_failed(st, "mkdir", dir);
    if (is_mount_point(dir))
        return MOAT_CODE_OK;
    if (mount(dir, dir, NULL, MS_BIND, NULL) != 0)
        return mount_failed(st, "bind", dir);
    if (mount(NULL, dir, NULL, MS_PRIVATE, NULL) != 0 ||
        mount(NULL, dir, NULL, MS_SHARED, NULL) != 0) {
        mount_failed(st, "make shared", dir);
        umount2(dir, UMOUNT_NOFOLLOW);
        return st->code;
    }
    return MOAT_CODE_OK;
}

moat_code moat__pool_slot_bind(moat_runtime *rt, const char *session_id, const char *ws_dir,
                               moat_status *st)
{
    if (slot_dir_make(rt, session_id, st) != MOAT_CODE_OK)
        return st->code;
    char dir[MOAT_RUNTIME_PATH_MAX];
    moat__pool_slot_dir(rt, session_id, dir, sizeof(dir));
    if (same_dir(dir, ws_dir))
        return MOAT_CODE_OK;
    /* A bind keeps the workspace's own flags (nosuid,nodev; its quota is its file system's). */
    if (mount(ws_dir, dir, NULL, MS_BIND, NULL) != 0)
        return mount_failed(st, "bind the workspace on", dir);
    return MOAT_CODE_OK;
}

void moat__pool_slot_unbind(moat_runtime *rt, const char *session_id)
{
    char dir[MOAT_RUNTIME_PATH_MAX];
    moat__pool_slot_dir(rt, session_id, dir, sizeof(dir));
    /* The workspace, then the directory's own mount. */
    for (int i = 0; i < 2 && is_mount_point(dir); i++) {
        if (umount2(dir, UMOUNT_NOFOLLOW) != 0) {
            moat_log(MOAT_LOG_WARN, "pool_slot_umount_failed", "dir=%s error=\"%s\"", dir,
                     strerror(errno));
            return;
        }
    }
    rmdir(dir);
}

static void remove_slot(moat_runtime *rt, const char *session_id, const char *container_id,
                        const char *why)
{
    moat_status st;
    if (moat__stop_remove(rt, container_id, &st) != MOAT_CODE_OK) {
        moat_log(MOAT_LOG_WARN, "pool_slot_remove_failed",
                 "session_id=%s container_id=%.12s msg=\"%s\"", session_id, container_id,
                 st.message);
        return;
    }
    moat__session_dir_remove(rt, session_id);
    moat__prepared_discard(rt, session_id);
    moat_log(MOAT_LOG_INFO, "pool_slot_removed", "session_id=%s container_id=%.12s why=%s",
             session_id, container_id, why);
}

void moat__pool_slot_remove(moat_runtime *rt, const moat__listed *c)
{
    remove_slot(rt, c->session_id, c->container_id, "not_in_pool");
}

static bool in_ready(moat_runtime *rt, const char *session_id)
{
    for (size_t i = 0; i < rt->pool_ready_count; i++)
        if (strcmp(rt->pool_ready[i].session_id, session_id) == 0)
            return true;
    return false;
}

bool moat__pool_holds(moat_runtime *rt, const char *session_id)
{
    pthread_mutex_lock(&rt->pool_mu);
    bool held = moat__busy_has(rt, session_id) || in_ready(rt, session_id);
    pthread_mutex_unlock(&rt->pool_mu);
    return held;
}

/* Starts one slot; it stays in the busy set until the caller puts it in the pool. */
static moat_code slot_start(moat_runtime *rt, moat__slot *slot, moat_status *st)
{
    uint64_t t0 = moat_time_mono_ns();
    moat_status_clear(st);
    memset(slot, 0, sizeof(*slot));
    moat_uuid_generate(slot->session_id);
    if (!moat__busy_enter(rt, slot->session_id)) {
        moat_status_set(st, MOAT_CODE_RESOURCE_EXHAUSTED, "out_of_memory", "out of memory");
        return st->code;
    }
    char session_dir[MOAT_RUNTIME_PATH_MAX], slot_dir[MOAT_RUNTIME_PATH_MAX];
    snprintf(session_dir, sizeof(session_dir), "%s/sessions/%s", rt->cfg.state_dir,
             slot->session_id);
    moat__pool_slot_dir(rt, slot->session_id, slot_dir, sizeof(slot_dir));
    moat__idmap map;
    if (moat__userns_map(rt, &map, st) != MOAT_CODE_OK ||
        moat__rundir_attach(&rt->ws, session_dir, map.uid_base, map.gid_base, st) != MOAT_CODE_OK)
        return st->code;
    if (moat__new_execd_token(slot->execd_token) != 0) {
        moat_status_set(st, MOAT_CODE_INTERNAL, "sandbox_start_failed",
                        "no random bytes for the execd token: %s", strerror(errno));
    } else if (slot_dir_make(rt, slot->session_id, st) == MOAT_CODE_OK) {
        moat__sandbox_request req = {
            .session_id = slot->session_id,
            .chat_label = MOAT__POOL_CHAT_LABEL,
            .workspace_dir = slot_dir,
            .pool_slot = true,
            .image = rt->cfg.image,
            .expires_at_ms = moat_time_now_ms() + rt->cfg.ttl_seconds * 1000,
            .memory = rt->cfg.default_memory_bytes,
            .nano_cpus = rt->cfg.default_nano_cpus,
            .pids = rt->cfg.default_pids_limit,
            .execd_token = slot->execd_token,
        };
        moat__sandbox_start(rt, &req, NULL, slot->container_id, st);
    }
    if (st->code != MOAT_CODE_OK) {
        moat__session_dir_remove(rt, slot->session_id);
        return st->code;
    }
    /* Without it the slot still serves: its claim attaches the chat's workspace as a create
     * does. A claim already waiting for a slot has attached its chat's workspace while it
     * waited, so none is made for it to wait for. */
    uint64_t t_started = moat_time_mono_ns();
    pthread_mutex_lock(&rt->pool_mu);
    bool claim_waits = rt->pool_claims_waiting > 0;
    pthread_mutex_unlock(&rt->pool_mu);
    moat_status prep_st;
    slot->prepared = rt->ws.quota && !claim_waits &&
                     moat__prepared_make(rt, slot->session_id, &prep_st) == MOAT_CODE_OK;
    moat_log(MOAT_LOG_DEBUG, "pool_slot_ready", "session_id=%s start_us=%llu prepare_us=%llu",
             slot->session_id, (unsigned long long)(t_started - t0) / 1000,
             (unsigned long long)(moat_time_mono_ns() - t_started) / 1000);
    return MOAT_CODE_OK;
}

/* Under pool_mu: whether a filler should start a slot now. */
static bool wants_slot(moat_runtime *rt)
{
    size_t held = rt->pool_ready_count + rt->pool_starting;
    int64_t now = moat_time_now_ms();
    if (rt->pool_stop || held >= (size_t)rt->cfg.pool_size || rt->pool_creates_in_flight > 0 ||
        now < rt->pool_quiet_until_ms || now < rt->pool_retry_at_ms)
        return false;
    if (rt->cfg.pool_max_sandboxes <= 0)
        return true;
    /* Slots count in the session budget: running sessions plus slots stay within it. */
    moat__row *rows = NULL;
    size_t running = 0;
    if (moat__store_list_running(rt->store, &rows, &running) != MOAT_OK)
        return false;
    free(rows);
    return running + held < (size_t)rt->cfg.pool_max_sandboxes;
}

static void slot_failed(moat_runtime *rt, const moat_status *st)
{
    rt->pool_failures_in_row++;
    snprintf(rt->pool_last_error, sizeof(rt->pool_last_error), "%.159s", st->message);
    int64_t wait = RETRY_FIRST_MS;
    for (uint32_t i = 1; i < rt->pool_failures_in_row && wait < RETRY_MAX_MS; i++)
        wait *= 2;
    rt->pool_retry_at_ms = moat_time_now_ms() + (wait < RETRY_MAX_MS ? wait : RETRY_MAX_MS);
    moat_log(MOAT_LOG_WARN, "pool_slot_failed",
             "image=%s failures_in_row=%u retry_in_ms=%lld code=%s msg=\"%s\"", rt->cfg.image,
             rt->pool_failures_in_row, (long long)wait, moat_code_name(st->code), st->message);
}

static void *fill_main(void *arg)
{
    moat_runtime *rt = arg;
    pthread_mutex_lock(&rt->pool_mu);
    while (!rt->pool_stop) {
        if (!wants_slot(rt)) {
            /* Woken by a claim or a stop; the timeout rechecks the budget and any backoff, and
             * ends the pause after the last create. */
            int64_t quiet_ms = rt->pool_quiet_until_ms - moat_time_now_ms();
            long wait_ns = quiet_ms > 0 && quiet_ms < 200 ? (long)quiet_ms * 1000000 : 200000000;
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            until.tv_nsec += wait_ns;
            if (until.tv_nsec >= 1000000000) {
                until.tv_sec++;
                until.tv_nsec -= 1000000000;
            }
            pthread_cond_timedwait(&rt->pool_cv, &rt->pool_mu, &until);
            continue;
        }
        rt->pool_starting++;
        pthread_mutex_unlock(&rt->pool_mu);
        moat__slot slot;
        moat_status st;
        moat_code code = slot_start(rt, &slot, &st);
        pthread_mutex_lock(&rt->pool_mu);
        rt->pool_starting--;
        moat__slot *grown = NULL;
        if (code == MOAT_CODE_OK) {
            grown = realloc(rt->pool_ready, (rt->pool_ready_count + 1) * sizeof(*grown));
            if (grown == NULL)
                moat_status_set(&st, MOAT_CODE_RESOURCE_EXHAUSTED, "out_of_memory",
                                "out of memory");
        }
        if (grown != NULL) {
            rt->pool_ready = grown;
            rt->pool_ready[rt->pool_ready_count++] = slot;
            rt->pool_failures_in_row = 0;
            rt->pool_last_error[0] = '\0';
        } else {
            slot_failed(rt, &st);
        }
        /* In the pool (or failed) before it leaves the busy set: a sweep sees one or the other. */
        moat__busy_leave(rt, slot.session_id);
        if (code == MOAT_CODE_OK && grown == NULL) {
            pthread_mutex_unlock(&rt->pool_mu);
            remove_slot(rt, slot.session_id, slot.container_id, "out_of_memory");
            pthread_mutex_lock(&rt->pool_mu);
        }
        pthread_cond_broadcast(&rt->pool_cv);
    }
    pthread_mutex_unlock(&rt->pool_mu);
    return NULL;
}

moat_code moat_runtime_start_pool(moat_runtime *rt, moat_status *st)
{
    moat_status_clear(st);
    if (rt->cfg.pool_size <= 0)
        return MOAT_CODE_OK;
    pthread_mutex_lock(&rt->pool_mu);
    if (rt->pool_threads != NULL) {
        pthread_mutex_unlock(&rt->pool_mu);
        moat_status_set(st, MOAT_CODE_FAILED_PRECONDITION, "pool_running",
                        "the pool is already running");
        return st->code;
    }
    size_t want = (size_t)rt->cfg.pool_fill_concurrency;
    rt->pool_threads = calloc(want, sizeof(pthread_t));
    rt->pool_stop = false;
    int err = rt->pool_threads == NULL ? ENOMEM : 0;
    while (err == 0 && rt->pool_thread_count < want) {
        err = pthread_create(&rt->pool_threads[rt->pool_thread_count], NULL, fill_main, rt);
        if (err == 0)
            rt->pool_thread_count++;
    }
    pthread_mutex_unlock(&rt->pool_mu);
    if (err != 0 && rt->pool_thread_count == 0) {
        free(rt->pool_threads);
        rt->pool_threads = NULL;
        moat_status_set(st, MOAT_CODE_RESOURCE_EXHAUSTED, "thread_failed",
                        "cannot start the pool's threads: %s", strerror(err));
        return st->code;
    }
    return MOAT_CODE_OK;
}

void moat_runtime_stop_pool(moat_runtime *rt)
{
    pthread_mutex_lock(&rt->pool_mu);
    if (rt->pool_threads == NULL) {
        pthread_mutex_unlock(&rt->pool_mu);
        return;
    }
    rt->pool_stop = true;
    pthread_cond_broadcast(&rt->pool_cv);
    pthread_mutex_unlock(&rt->pool_mu);
    for (size_t i = 0; i < rt->pool_thread_count; i++)
        pthread_join(rt->pool_threads[i], NULL);
    free(rt->pool_threads);
    rt->pool_threads = NULL;
    rt->pool_thread_count = 0;
    /* No thread is left to claim them; their tokens die with this process. */
    for (size_t i = 0; i < rt->pool_ready_count; i++)
        remove_slot(rt, rt->pool_ready[i].session_id, rt->pool_ready[i].container_id,
                    "pool_stopped");
    rt->pool_ready_count = 0;
    moat__prepared_staging_release(rt);
}

void moat_runtime_pool_stats(moat_runtime *rt, moat_pool_stats *out)
{
    memset(out, 0, sizeof(*out));
    pthread_mutex_lock(&rt->pool_mu);
    out->size = (uint32_t)rt->cfg.pool_size;
    out->ready = (uint32_t)rt->pool_ready_count;
    out->starting = (uint32_t)rt->pool_starting;
    out->reserved = (uint32_t)rt->pool_reserved_count;
    out->failures_in_row = rt->pool_failures_in_row;
    snprintf(out->last_error, sizeof(out->last_error), "%s", rt->pool_last_error);
    pthread_mutex_unlock(&rt->pool_mu);
}

/* The pool holds one kind of sandbox: the default image with the default limits. */
static bool pool_kind(const moat_runtime *rt, const moat_session_options *opts)
{
    if (opts == NULL)
        return true;
    return !opts->force_new &&
           (opts->image == NULL || opts->image[0] == '\0' ||
            strcmp(opts->image, rt->cfg.image) == 0) &&
           (opts->memory_bytes == 0 || opts->memory_bytes == rt->cfg.default_memory_bytes) &&
           (opts->nano_cpus == 0 || opts->nano_cpus == rt->cfg.default_nano_cpus) &&
           (opts->pids_limit == 0 || opts->pids_limit == rt->cfg.default_pids_limit);
}

void moat__pool_create_begin(moat_runtime *rt)
{
    pthread_mutex_lock(&rt->pool_mu);
    rt->pool_creates_in_flight++;
    pthread_mutex_unlock(&rt->pool_mu);
}

void moat__pool_create_end(moat_runtime *rt)
{
    pthread_mutex_lock(&rt->pool_mu);
    if (--rt->pool_creates_in_flight == 0)
        rt->pool_quiet_until_ms = moat_time_now_ms() + REFILL_PAUSE_MS;
    pthread_cond_broadcast(&rt->pool_cv); /* the fillers wait out the pause from now */
    pthread_mutex_unlock(&rt->pool_mu);
}

/* With none ready, whether this claim is to wait for a slot already starting, counted among the
 * waiting claims if so: one claim per starting slot. That slot started before the claim, so it
 * is ready sooner than a cold create would be, and the claim starts no second container to
 * compete with it. Any other claim is told at once that the pool is empty, and a cold create
 * follows. */
static bool will_wait(moat_runtime *rt)
{
    pthread_mutex_lock(&rt->pool_mu);
    bool waits = rt->pool_ready_count == 0 && rt->pool_starting > rt->pool_claims_waiting;
    if (waits)
        rt->pool_claims_waiting++;
    pthread_mutex_unlock(&rt->pool_mu);
    return waits;
}

/* Under pool_mu, for a claim will_wait counted: waits (at most the readiness timeout) until a
 * slot is ready or none is starting any more. */
static void wait_for_starting(moat_runtime *rt)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += rt->cfg.readiness_timeout_ms / 1000 + 1;
    while (!rt->pool_stop && rt->pool_ready_count == 0 && rt->pool_starting > 0 &&
           pthread_cond_timedwait(&rt->pool_cv, &rt->pool_mu, &until) == 0) {
    }
    rt->pool_claims_waiting--;
}

/* Takes the oldest ready slot whose execd still answers (after waiting, when will_wait said
 * so); false when none is left. The slot is in the busy set from the moment it leaves the
 * pool. */
static bool take_slot(moat_runtime *rt, moat__slot *slot, bool waits)
{
    for (;;) {
        pthread_mutex_lock(&rt->pool_mu);
        if (waits)
            wait_for_starting(rt);
        waits = false;
        bool got = rt->pool_ready_count > 0 && moat__busy_enter(rt, rt->pool_ready[0].session_id);
        if (got) {
            *slot = rt->pool_ready[0];
            memmove(rt->pool_ready, rt->pool_ready + 1,
                    --rt->pool_ready_count * sizeof(*rt->pool_ready));
            pthread_cond_broadcast(&rt->pool_cv); /* a filler starts its replacement */
        }
        pthread_mutex_unlock(&rt->pool_mu);
        if (!got)
            return false;
        char socket_path[MOAT_RUNTIME_PATH_MAX];
        moat__session_socket(rt, slot->session_id, socket_path, sizeof(socket_path));
        if (moat__execd_ping(socket_path, slot->execd_token, 1000))
            return true;
        remove_slot(rt, slot->session_id, slot->container_id, "execd_not_answering");
        moat__busy_leave(rt, slot->session_id);
    }
}

/* The claim's second half, for a slot out of the pool and in the busy set: the chat's workspace
 * (attached already when ws_ready: the claim waited) mounted into the slot and its store row
 * written. Any failure removes the slot. Ends the create its take began. t0: the claim's start;
 * take_ns and early_ns: how long the take and an early attach took. */
static moat_code bind_slot(moat_runtime *rt, const moat__slot *slot, const char *chat_id,
                           moat__workspace *ws, bool ws_ready, int64_t created_at_ms,
                           int64_t expires_at_ms, uint64_t t0, uint64_t take_ns, uint64_t early_ns,
                           moat_session *out, moat_status *st)
{
    uint64_t t_taken = moat_time_mono_ns();
    if (!ws_ready &&
        moat__chat_workspace_prepare(rt, chat_id, slot->prepared ? slot->session_id : NULL, ws,
                                     st) != MOAT_CODE_OK)
        goto fail;
    uint64_t t_attached = moat_time_mono_ns();
    uint64_t attach_ns = t_attached - t_taken + early_ns;
    moat__row row;
    memset(&row, 0, sizeof(row));
    memcpy(row.session_id, slot->session_id, sizeof(row.session_id));
    memcpy(row.chat_id, chat_id, sizeof(row.chat_id));
    memcpy(row.container_id, slot->container_id, sizeof(row.container_id));
    snprintf(row.image, sizeof(row.image), "%s", rt->cfg.image);
    row.created_at_ms = created_at_ms;
    row.label_expires_at_ms = expires_at_ms;
    row.expires_at_ms = expires_at_ms;
    row.state = MOAT_SESSION_RUNNING;
    memcpy(row.execd_token, slot->execd_token, sizeof(row.execd_token));
    bool inserted = false;
    if (moat__pool_slot_bind(rt, slot->session_id, ws->dir, st) != MOAT_CODE_OK) {
        moat__workspace_release(ws);
        goto fail;
    }
    uint64_t t_bound = moat_time_mono_ns();
    /* The durable half of "handed out once": a slot whose row exists is a session. The row is
     * in before the chat's lock goes, so no detach takes the workspace from under it. */
    if (moat__store_insert_new(rt->store, &row, &inserted) != MOAT_OK || !inserted) {
        moat_status_set(st, MOAT_CODE_INTERNAL, "sandbox_start_failed",
                        "pool slot %s: session store write failed or it was claimed already",
                        slot->session_id);
        moat__workspace_release(ws);
        goto fail;
    }
    uint64_t t_stored = moat_time_mono_ns();
    moat__workspace_release(ws);
    moat__busy_leave(rt, slot->session_id);
    moat__prepared_discard(rt, slot->session_id); /* unused when the chat had a workspace */
    moat__session_from_row(rt, &row, out);
    /* No Docker event says a slot became a session: the list is told here, and stays cached. */
    moat__cache_add(rt, out);
    /* Only now may refills start: until the claim is whole, a container start would compete
     * with it for the CPU, and in a burst with every claim after it. */
    moat__pool_create_end(rt);
    moat_log(MOAT_LOG_INFO, "pool_slot_claimed",
             "session_id=%s chat_id=%s container_id=%.12s take_us=%llu attach_us=%llu "
             "bind_us=%llu store_us=%llu",
             slot->session_id, chat_id, slot->container_id, (unsigned long long)take_ns / 1000,
             (unsigned long long)attach_ns / 1000,
             (unsigned long long)(t_bound - t_attached) / 1000,
             (unsigned long long)(t_stored - t_bound) / 1000);
    moat__metric_session(rt, "created", slot->session_id, MOAT_CODE_OK, t0);
    return MOAT_CODE_OK;

fail:
    moat_status_add_detail(st, "chat_id", chat_id);
    remove_slot(rt, slot->session_id, slot->container_id, "claim_failed");
    moat__workspace_detach_idle(rt, chat_id);
    moat__busy_leave(rt, slot->session_id);
    moat__pool_create_end(rt);
    moat_log(MOAT_LOG_WARN, "pool_claim_failed", "session_id=%s chat_id=%s code=%s msg=\"%s\"",
             slot->session_id, chat_id, moat_code_name(st->code), st->message);
    return st->code;
}

static moat_code chat_invalid(moat_status *st)
{
    moat_status_set(st, MOAT_CODE_INVALID_ARGUMENT, "invalid_argument", "chat_id is not a UUID");
    moat_status_add_detail(st, "field", "chat_id");
    return st->code;
}

static moat_code pool_empty(moat_status *st)
{
    moat_status_set(st, MOAT_CODE_NOT_FOUND, "pool_empty",
                    "no pool sandbox ready for this request");
    return st->code;
}

moat_code moat_runtime_claim(moat_runtime *rt, const char *chat_id_in, int64_t created_at_ms,
                             int64_t expires_at_ms, const moat_session_options *opts,
                             moat_session *out, moat_status *st)
{
    uint64_t t0 = moat_time_mono_ns();
    moat_status_clear(st);
    char chat_id[MOAT_UUID_STR_LEN];
    if (chat_id_in == NULL || moat_uuid_canonicalize(chat_id_in, chat_id) != MOAT_OK)
        return chat_invalid(st);
    if (expires_at_ms <= created_at_ms || !pool_kind(rt, opts))
        return pool_empty(st);
    moat__pool_create_begin(rt);
    /* A claim that waits attaches its chat's workspace meanwhile, while the slot's container
     * starts, rather than after it. */
    bool waits = will_wait(rt);
    moat__workspace ws;
    if (waits && moat__chat_workspace_prepare(rt, chat_id, NULL, &ws, st) != MOAT_CODE_OK) {
        pthread_mutex_lock(&rt->pool_mu);
        rt->pool_claims_waiting--;
        pthread_mutex_unlock(&rt->pool_mu);
        moat__pool_create_end(rt);
        moat_status_add_detail(st, "chat_id", chat_id);
        return st->code;
    }
    uint64_t t_early = moat_time_mono_ns();
    moat__slot slot;
    if (!take_slot(rt, &slot, waits)) {
        moat__pool_create_end(rt);
        if (waits) {
            moat__workspace_release(&ws);
            moat__workspace_detach_idle(rt, chat_id);
        }
        return pool_empty(st);
    }
    /* Where a claim's time goes, logged with it: out of the pool (with any wait) and execd's
     * ping, the workspace's attach (before the wait, when it waited), its mount into the slot,
     * the store's write. */
    return bind_slot(rt, &slot, chat_id, &ws, waits, created_at_ms, expires_at_ms, t0,
                     moat_time_mono_ns() - t_early, t_early - t0, out, st);
}

moat_code moat_runtime_pool_reserve(moat_runtime *rt, const moat_session_options *opts,
                                    char session_id[MOAT_UUID_STR_LEN], moat_status *st)
{
    uint64_t t0 = moat_time_mono_ns();
    moat_status_clear(st);
    if (!pool_kind(rt, opts))
        return pool_empty(st);
    moat__pool_create_begin(rt);
    moat__slot slot;
    if (!take_slot(rt, &slot, false)) {
        moat__pool_create_end(rt);
        return pool_empty(st);
    }
    pthread_mutex_lock(&rt->pool_mu);
    moat__reserved *grown =
        realloc(rt->pool_reserved, (rt->pool_reserved_count + 1) * sizeof(*grown));
    if (grown != NULL) {
        rt->pool_reserved = grown;
        grown[rt->pool_reserved_count++] =
            (moat__reserved){.slot = slot, .t0_ns = t0, .take_ns = moat_time_mono_ns() - t0};
    }
    pthread_mutex_unlock(&rt->pool_mu);
    if (grown == NULL) {
        remove_slot(rt, slot.session_id, slot.container_id, "out_of_memory");
        moat__busy_leave(rt, slot.session_id);
        moat__pool_create_end(rt);
        moat_status_set(st, MOAT_CODE_RESOURCE_EXHAUSTED, "out_of_memory", "out of memory");
        return st->code;
    }
    memcpy(session_id, slot.session_id, MOAT_UUID_STR_LEN);
    moat_log(MOAT_LOG_DEBUG, "pool_slot_reserved", "session_id=%s", slot.session_id);
    return MOAT_CODE_OK;
}

/* Under pool_mu: takes session_id's reservation out of the list into *out; false when there is
 * none (never reserved, or bound or given back already). */
static bool reservation_take(moat_runtime *rt, const char *session_id, moat__reserved *out)
{
    for (size_t i = 0; i < rt->pool_reserved_count; i++) {
        if (strcmp(rt->pool_reserved[i].slot.session_id, session_id) == 0) {
            *out = rt->pool_reserved[i];
            rt->pool_reserved[i] = rt->pool_reserved[--rt->pool_reserved_count];
            return true;
        }
    }
    return false;
}

/* The end of a reservation without a bind: the slot back at the head of the pool (it is its
 * oldest) with reuse and while the pool runs, else removed. Ends the create its take began. */
static void give_back(moat_runtime *rt, const moat__slot *slot, bool reuse)
{
    pthread_mutex_lock(&rt->pool_mu);
    moat__slot *grown = NULL;
    if (reuse && !rt->pool_stop)
        grown = realloc(rt->pool_ready, (rt->pool_ready_count + 1) * sizeof(*grown));
    if (grown != NULL) {
        rt->pool_ready = grown;
        memmove(grown + 1, grown, rt->pool_ready_count++ * sizeof(*grown));
        grown[0] = *slot;
        /* In the pool before it leaves the busy set: a sweep sees one or the other. */
        moat__busy_leave(rt, slot->session_id);
        pthread_cond_broadcast(&rt->pool_cv);
    }
    pthread_mutex_unlock(&rt->pool_mu);
    if (grown == NULL) {
        remove_slot(rt, slot->session_id, slot->container_id, "reservation_dropped");
        moat__busy_leave(rt, slot->session_id);
    }
    moat_log(MOAT_LOG_DEBUG, "pool_slot_given_back", "session_id=%s reused=%s", slot->session_id,
             grown != NULL ? "true" : "false");
    moat__pool_create_end(rt);
}

void moat_runtime_pool_unreserve(moat_runtime *rt, const char *session_id, bool reuse)
{
    moat__reserved r;
    pthread_mutex_lock(&rt->pool_mu);
    bool found = session_id != NULL && reservation_take(rt, session_id, &r);
    pthread_mutex_unlock(&rt->pool_mu);
    if (found)
        give_back(rt, &r.slot, reuse);
}

moat_code moat_runtime_pool_bind(moat_runtime *rt, const char *session_id, const char *chat_id_in,
                                 int64_t created_at_ms, int64_t expires_at_ms, moat_session *out,
                                 moat_status *st)
{
    moat_status_clear(st);
    moat__reserved r;
    pthread_mutex_lock(&rt->pool_mu);
    bool found = session_id != NULL && reservation_take(rt, session_id, &r);
    pthread_mutex_unlock(&rt->pool_mu);
    if (!found)
        return pool_empty(st);
    char chat_id[MOAT_UUID_STR_LEN];
    moat__workspace ws;
    /* Nothing of a chat was touched: the slot goes back as it came. */
    if (chat_id_in == NULL || moat_uuid_canonicalize(chat_id_in, chat_id) != MOAT_OK) {
        give_back(rt, &r.slot, true);
        return chat_invalid(st);
    }
    if (expires_at_ms <= created_at_ms) {
        give_back(rt, &r.slot, true);
        return pool_empty(st);
    }
    return bind_slot(rt, &r.slot, chat_id, &ws, false, created_at_ms, expires_at_ms, r.t0_ns,
                     r.take_ns, 0, out, st);
}
