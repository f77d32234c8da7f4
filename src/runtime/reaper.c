/* TTL reaper and start-up reconciliation. Only this runtime's own containers (moat__list's
 * ownership rule) with all three well-formed session labels are ever adopted or stopped;
 * everything else is left alone. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"

static const char *const SESSION_LABELS[] = {"session_id", "chat_id", "expires_at"};

/* Stops an expired session that the store lets us claim. Returns true when it was reaped. */
static bool reap_one(moat_runtime *rt, const moat__listed *c, int64_t now_ms, moat_status *st)
{
    bool claimed = false;
    if (moat__store_claim_expired(rt->store, c->session_id, now_ms, &claimed) != MOAT_OK ||
        !claimed)
        return false;
    uint64_t t0 = moat_time_mono_ns();
    moat_status stop_st;
    if (moat__stop_remove(rt, c->container_id, &stop_st) != MOAT_CODE_OK) {
        moat__store_unclaim(rt->store, c->session_id);
        moat_log(MOAT_LOG_WARN, "sandbox_reap_failed",
                 "session_id=%s container_id=%.12s msg=\"%s\"", c->session_id, c->container_id,
                 stop_st.message);
        *st = stop_st;
        return false;
    }
    moat__store_finish(rt->store, c->session_id, MOAT_SESSION_EXPIRED, "ttl", moat_time_now_ms());
    moat__cache_invalidate(rt);
    moat__session_dir_remove(rt, c->session_id);
    moat__workspace_detach_idle(rt, c->chat_id);
    moat_log(MOAT_LOG_INFO, "sandbox_expired", "session_id=%s chat_id=%s container_id=%.12s",
             c->session_id, c->chat_id, c->container_id);
    moat__metric_session(rt, "expired", c->session_id, MOAT_CODE_OK, t0);
    return true;
}

/* What a sweep does with a listed container after its first look. */
typedef enum disposition {
    LEFT_ALONE, /* busy, ended, reaped or removed */
    LIVE,       /* running */
    TO_RESTART, /* reconcile: the engine stopped it */
} disposition;

/* A container an interrupted create left in Created (moatd or the engine died between create
 * and start): nothing will ever start it, so it goes, and its session is recorded FAILED. */
static void remove_orphan(moat_runtime *rt, const moat__listed *c, const moat__row *row,
                          int64_t now_ms, moat_reconcile_report *rep)
{
    moat_status rm_st;
    if (moat__stop_remove(rt, c->container_id, &rm_st) != MOAT_CODE_OK) {
        moat_log(MOAT_LOG_WARN, "sandbox_orphan_remove_failed",
                 "session_id=%s container_id=%.12s msg=\"%s\"", c->session_id, c->container_id,
                 rm_st.message);
        return;
    }
    if (row->state == MOAT_SESSION_RUNNING)
        moat__store_finish(rt->store, c->session_id, MOAT_SESSION_FAILED, "create_interrupted",
                           now_ms);
    moat__session_dir_remove(rt, c->session_id);
    moat__workspace_detach_idle(rt, c->chat_id);
    moat_log(MOAT_LOG_WARN, "sandbox_orphan_removed",
             "session_id=%s chat_id=%s container_id=%.12s reason=create_interrupted", c->session_id,
             c->chat_id, c->container_id);
    moat__metric_session(rt, "create_failed", c->session_id, MOAT_CODE_OK, moat_time_mono_ns());
    rep->orphans++;
}

/* Whether a is a newer session than b: later created_at, then the larger id, so every sweep
 * picks the same one. */
static bool newer(const moat__listed *a, const moat__listed *b)
{
    if (a->created_at_ms != b->created_at_ms)
        return a->created_at_ms > b->created_at_ms;
    return strcmp(a->session_id, b->session_id) > 0;
}

/* One live session per chat: of the sessions of a chat not created with force_new, the newest
 * stays (a client that asked for the chat's session last holds it) and the others are stopped
 * and recorded STOPPED, reason duplicate. Two arise when a create ran while an older session
 * of the chat was down (an engine or moatd restart) or from two moatds on one store. */
static void stop_duplicates(moat_runtime *rt, const moat__listed *items, disposition *disp,
                            size_t n, int64_t now_ms, moat_reconcile_report *rep)
{
    for (size_t i = 0; i < n; i++) {
        if (disp[i] == LEFT_ALONE || items[i].force_new)
            continue;
        const moat__listed *kept = &items[i];
        for (size_t j = 0; j < n; j++) {
            if (disp[j] != LEFT_ALONE && !items[j].force_new &&
                strcmp(items[j].chat_id, items[i].chat_id) == 0 && newer(&items[j], kept))
                kept = &items[j];
        }
        if (kept == &items[i])
            continue;
        const moat__listed *c = &items[i];
        moat_status stop_st;
        disp[i] = LEFT_ALONE; /* never restarted; a failed stop is retried by the next sweep */
        if (moat__stop_remove(rt, c->container_id, &stop_st) != MOAT_CODE_OK) {
            moat_log(MOAT_LOG_WARN, "sandbox_duplicate_stop_failed",
                     "session_id=%s chat_id=%s container_id=%.12s msg=\"%s\"", c->session_id,
                     c->chat_id, c->container_id, stop_st.message);
            continue;
        }
        moat__store_finish(rt->store, c->session_id, MOAT_SESSION_STOPPED, "duplicate", now_ms);
        moat__session_dir_remove(rt, c->session_id);
        moat_log(MOAT_LOG_WARN, "sandbox_duplicate_stopped",
                 "session_id=%s chat_id=%s container_id=%.12s kept_session_id=%s", c->session_id,
                 c->chat_id, c->container_id, kept->session_id);
        moat__metric_session(rt, "stopped", c->session_id, MOAT_CODE_OK, moat_time_mono_ns());
        rep->duplicates++;
    }
}

/* A session the engine stopped that cannot run again: its container goes (else a later
 * reconcile would bring it back as a session that is not there) and it is recorded GONE with
 * the reason, so GetSession says why instead of showing a dead session. */
static void restart_failed(moat_runtime *rt, const moat__listed *c, const moat_status *why_st,
                           int64_t now_ms, moat_reconcile_report *rep)
{
    moat_status ignored;
    moat__stop_remove(rt, c->container_id, &ignored);
    const char *why = moat_status_detail_get(why_st, "why");
    char reason[MOAT_RUNTIME_REASON_MAX];
    snprintf(reason, sizeof(reason), "engine_restart_failed: %.40s",
             why != NULL ? why : why_st->reason);
    moat__row row;
    /* A stop that ran meanwhile has recorded its own end. */
    if (moat__store_get(rt->store, c->session_id, &row) == MOAT_OK &&
        row.state == MOAT_SESSION_RUNNING)
        moat__store_finish(rt->store, c->session_id, MOAT_SESSION_GONE, reason, now_ms);
    moat__session_dir_remove(rt, c->session_id);
    moat__workspace_detach_idle(rt, c->chat_id);
    moat__cache_invalidate(rt);
    moat_log(MOAT_LOG_WARN, "sandbox_restart_failed",
             "session_id=%s chat_id=%s container_id=%.12s reason=\"%s\" code=%s msg=\"%s\"",
             c->session_id, c->chat_id, c->container_id, reason, moat_code_name(why_st->code),
             why_st->message);
    moat__metric_session(rt, "gone", c->session_id, why_st->code, moat_time_mono_ns());
    rep->restart_failed++;
}

/* Starts every container the engine stopped, then waits for each execd, so the sandboxes boot
 * side by side rather than one after another. */
static void restart_stopped(moat_runtime *rt, const moat__listed *items, disposition *disp,
                            size_t n, int64_t now_ms, moat_reconcile_report *rep)
{
    for (size_t i = 0; i < n; i++) {
        moat_status st;
        if (disp[i] == TO_RESTART &&
            moat__session_restart_begin(rt, &items[i], &st) != MOAT_CODE_OK) {
            restart_failed(rt, &items[i], &st, now_ms, rep);
            disp[i] = LEFT_ALONE;
        }
    }
    for (size_t i = 0; i < n; i++) {
        if (disp[i] != TO_RESTART)
            continue;
        moat__row row;
        moat_status st;
        if (moat__store_get(rt->store, items[i].session_id, &row) != MOAT_OK)
            memset(&row, 0, sizeof(row)); /* no token on record: execd needs none or is lost */
        if (moat__session_restart_finish(rt, &items[i], &row, &st) != MOAT_CODE_OK) {
            restart_failed(rt, &items[i], &st, now_ms, rep);
            continue;
        }
        moat__cache_invalidate(rt);
        moat_log(MOAT_LOG_INFO, "sandbox_restarted", "session_id=%s chat_id=%s container_id=%.12s",
                 items[i].session_id, items[i].chat_id, items[i].container_id);
        moat__metric_session(rt, "restarted", items[i].session_id, MOAT_CODE_OK,
                             moat_time_mono_ns());
        rep->restarted++;
    }
}

/* One pass over moat's containers. Every pass reaps expired sessions, removes containers left
 * in Created and stops duplicates of a chat's session. With reconcile, it also refreshes rows
 * from Docker, starts again live sessions whose container stopped (e.g. dockerd restarted) and
 * marks missing ones gone. Sessions this runtime is creating or stopping are left alone. */
static moat_code sweep(moat_runtime *rt, int64_t now_ms, bool reconcile, moat_reconcile_report *rep,
                       moat_status *st)
{
    moat__listed *items;
    size_t n, skipped = 0;
    moat_code code = moat__list_with_slots(rt, SESSION_LABELS, 3, true, &items, &n, &skipped, st);
    if (code != MOAT_CODE_OK)
        return code;
    rep->skipped += skipped;
    disposition *disp = n ? calloc(n, sizeof(*disp)) : NULL;
    if (n && disp == NULL) {
        free(items);
        moat_status_set(st, MOAT_CODE_RESOURCE_EXHAUSTED, "out_of_memory", "out of memory");
        return st->code;
    }
    moat_status last_error;
    moat_status_clear(&last_error);
    for (size_t i = 0; i < n; i++) {
        const moat__listed *c = &items[i];
        disp[i] = LEFT_ALONE;
        if (c->unclaimed_slot) {
            /* Held by this runtime's pool, or claimed since the list (the pool is asked first,
             * then the store, so a claim in between is seen by one of them). */
            if (!moat__pool_holds(rt, c->session_id) &&
                !moat__store_has(rt->store, c->session_id)) {
                moat__pool_slot_remove(rt, c);
                rep->pool_slots_removed++;
            }
            continue;
        }
        if (moat__busy_has(rt, c->session_id))
            continue;
        moat__row row, fresh;
        moat__row_from_listed(c, &fresh);
        bool inserted = false;
        moat__store_insert_new(rt->store, &fresh, &inserted);
        if (moat__store_get(rt->store, c->session_id, &row) != MOAT_OK)
            continue;
        /* Docker's Created has whole seconds; the store keeps the caller's milliseconds, which
         * tell apart two sessions of a chat made within one second. */
        items[i].created_at_ms = row.created_at_ms;
        if (c->never_started) {
            remove_orphan(rt, c, &row, now_ms, rep);
            continue;
        }
        if (reconcile && !inserted && strcmp(row.container_id, c->container_id) != 0 &&
            row.state == MOAT_SESSION_RUNNING) {
            /* The store knew another container for this session; Docker's is the live one. */
            snprintf(row.container_id, sizeof(row.container_id), "%s", c->container_id);
            moat__store_put(rt->store, &row);
        }
        if (row.state != MOAT_SESSION_RUNNING) {
            if (reconcile && row.state == MOAT_SESSION_GONE) {
                /* It came back (dockerd was down): track it again. */
                row.state = MOAT_SESSION_RUNNING;
                row.reason[0] = '\0';
                row.claimed = false;
                moat__store_put(rt->store, &row);
            } else {
                /* Ended in the store but a container remains (a stop interrupted by a crash). */
                moat_status ignored;
                if (moat__stop_remove(rt, c->container_id, &ignored) == MOAT_CODE_OK) {
                    moat__workspace_detach_idle(rt, c->chat_id);
                    rep->reaped++;
                }
                continue;
            }
        }
        if (reconcile && row.claimed)
            moat__store_unclaim(rt->store, c->session_id); /* a sweep died mid-removal */
        if (reap_one(rt, c, now_ms, &last_error)) {
            rep->reaped++;
            continue;
        }
        if (c->running)
            disp[i] = LIVE;
        else if (reconcile)
            disp[i] = TO_RESTART;
        if (!reconcile)
            continue;
        rep->adopted++;
        moat__metric_session(rt, "adopted", c->session_id, MOAT_CODE_OK, moat_time_mono_ns());
    }
    stop_duplicates(rt, items, disp, n, now_ms, rep);
    if (reconcile) {
        restart_stopped(rt, items, disp, n, now_ms, rep);
        moat__row *rows;
        size_t row_count;
        if (moat__store_list_running(rt->store, &rows, &row_count) == MOAT_OK) {
            for (size_t r = 0; r < row_count; r++) {
                bool found = moat__busy_has(rt, rows[r].session_id);
                for (size_t i = 0; i < n && !found; i++)
                    found = strcmp(items[i].session_id, rows[r].session_id) == 0;
                if (found)
                    continue;
                moat__store_finish(rt->store, rows[r].session_id, MOAT_SESSION_GONE,
                                   "container_missing", now_ms);
                moat__session_dir_remove(rt, rows[r].session_id);
                moat__metric_session(rt, "gone", rows[r].session_id, MOAT_CODE_OK,
                                     moat_time_mono_ns());
                rep->gone++;
            }
            free(rows);
        }
        /* Workspaces of sessions that ended while moatd was away (or that a crash left
         * mounted) are unmounted once no running session uses them. */
        moat__workspace_detach_orphans(rt);
    }
    free(disp);
    free(items);
    if (last_error.code != MOAT_CODE_OK) {
        *st = last_error;
        return st->code;
    }
    return MOAT_CODE_OK;
}

moat_code moat_runtime_reap(moat_runtime *rt, int64_t now_ms, size_t *reaped, moat_status *st)
{
    moat_status_clear(st);
    moat_reconcile_report rep = {0};
    moat_code code = sweep(rt, now_ms, false, &rep, st);
    if (reaped != NULL)
        *reaped = rep.reaped;
    return code;
}

moat_code moat_runtime_reconcile(moat_runtime *rt, int64_t now_ms, moat_reconcile_report *report,
                                 moat_status *st)
{
    moat_status_clear(st);
    moat_reconcile_report rep = {0};
    moat_code code = sweep(rt, now_ms, true, &rep, st);
    if (report != NULL)
        *report = rep;
    if (code != MOAT_CODE_OK) {
        /* The reaper thread tries again on its next pass. */
        pthread_mutex_lock(&rt->reaper_mu);
        rt->reconcile_pending = true;
        pthread_mutex_unlock(&rt->reaper_mu);
    }
    moat_log(MOAT_LOG_INFO, "runtime_reconciled",
             "adopted=%zu reaped=%zu gone=%zu skipped=%zu restarted=%zu restart_failed=%zu "
             "duplicates=%zu orphans=%zu pool_slots_removed=%zu code=%s",
             rep.adopted, rep.reaped, rep.gone, rep.skipped, rep.restarted, rep.restart_failed,
             rep.duplicates, rep.orphans, rep.pool_slots_removed, moat_code_name(code));
    return code;
}

static void *reaper_main(void *arg)
{
    moat_runtime *rt = arg;
    pthread_mutex_lock(&rt->reaper_mu);
    while (!rt->reaper_stop) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += rt->cfg.cleanup_interval_seconds;
        while (!rt->reaper_stop && !rt->reaper_kick &&
               pthread_cond_timedwait(&rt->reaper_cv, &rt->reaper_mu, &until) != ETIMEDOUT) {
        }
        if (rt->reaper_stop)
            break;
        /* The engine was unreachable (perhaps restarted, stopping every sandbox) or a reconcile
         * failed: this pass reconciles, which also reaps. */
        bool reconcile = rt->reconcile_pending;
        rt->reconcile_pending = false;
        rt->reaper_kick = false;
        pthread_mutex_unlock(&rt->reaper_mu);
        moat_status st;
        size_t reaped = 0;
        if (reconcile) {
            moat_runtime_reconcile(rt, moat_time_now_ms(), NULL, &st); /* it logs the outcome */
        } else if (moat_runtime_reap(rt, moat_time_now_ms(), &reaped, &st) != MOAT_CODE_OK) {
            moat_log(MOAT_LOG_WARN, "runtime_reap_failed", "code=%s msg=\"%s\"",
                     moat_code_name(st.code), st.message);
        }
        pthread_mutex_lock(&rt->reaper_mu);
    }
    pthread_mutex_unlock(&rt->reaper_mu);
    return NULL;
}

moat_code moat_runtime_start_reaper(moat_runtime *rt, moat_status *st)
{
    moat_status_clear(st);
    pthread_mutex_lock(&rt->reaper_mu);
    if (rt->reaper_running) {
        pthread_mutex_unlock(&rt->reaper_mu);
        moat_status_set(st, MOAT_CODE_FAILED_PRECONDITION, "reaper_running",
                        "the reaper is already running");
        return st->code;
    }
    rt->reaper_stop = false;
    int err = pthread_create(&rt->reaper_thread, NULL, reaper_main, rt);
    rt->reaper_running = err == 0;
    pthread_mutex_unlock(&rt->reaper_mu);
    if (err != 0) {
        moat_status_set(st, MOAT_CODE_RESOURCE_EXHAUSTED, "thread_failed",
                        "cannot start the reaper thread: %s", strerror(err));
        return st->code;
    }
    return MOAT_CODE_OK;
}

void moat_runtime_stop_reaper(moat_runtime *rt)
{
    pthread_mutex_lock(&rt->reaper_mu);
    if (!rt->reaper_running) {
        pthread_mutex_unlock(&rt->reaper_mu);
        return;
    }
    rt->reaper_stop = true;
    pthread_cond_broadcast(&rt->reaper_cv);
    pthread_mutex_unlock(&rt->reaper_mu);
    pthread_join(rt->reaper_thread, NULL);
    pthread_mutex_lock(&rt->reaper_mu);
    rt->reaper_running = false;
    pthread_mutex_unlock(&rt->reaper_mu);
}
