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

/* One pass over moat's containers. With reconcile, also refreshes rows from Docker, restarts
 * live sessions whose container stopped (e.g. dockerd restarted) and marks missing ones gone. */
static moat_code sweep(moat_runtime *rt, int64_t now_ms, bool reconcile, moat_reconcile_report *rep,
                       moat_status *st)
{
    moat__listed *items;
    size_t n, skipped = 0;
    moat_code code = moat__list(rt, SESSION_LABELS, 3, true, &items, &n, &skipped, st);
    if (code != MOAT_CODE_OK)
        return code;
    rep->skipped += skipped;
    moat_status last_error;
    moat_status_clear(&last_error);
    for (size_t i = 0; i < n; i++) {
        const moat__listed *c = &items[i];
        moat__row row, fresh;
        moat__row_from_listed(c, &fresh);
        bool inserted = false;
        moat__store_insert_new(rt->store, &fresh, &inserted);
        if (moat__store_get(rt->store, c->session_id, &row) != MOAT_OK)
            continue;
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
        if (!reconcile)
            continue;
        if (!c->running) {
            char path[160];
            moat_status start_st;
            snprintf(path, sizeof(path), "/containers/%s/start", c->container_id);
            moat_runtime_docker_call(rt, "start", "POST", path, NULL, NULL, &start_st);
        }
        rep->adopted++;
        moat__metric_session(rt, "adopted", c->session_id, MOAT_CODE_OK, moat_time_mono_ns());
    }
    if (reconcile) {
        moat__row *rows;
        size_t row_count;
        if (moat__store_list_running(rt->store, &rows, &row_count) == MOAT_OK) {
            for (size_t r = 0; r < row_count; r++) {
                bool found = false;
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
    moat_log(MOAT_LOG_INFO, "runtime_reconciled",
             "adopted=%zu reaped=%zu gone=%zu skipped=%zu code=%s", rep.adopted, rep.reaped,
             rep.gone, rep.skipped, moat_code_name(code));
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
        while (!rt->reaper_stop &&
               pthread_cond_timedwait(&rt->reaper_cv, &rt->reaper_mu, &until) != ETIMEDOUT) {
        }
        if (rt->reaper_stop)
            break;
        pthread_mutex_unlock(&rt->reaper_mu);
        moat_status st;
        size_t reaped = 0;
        if (moat_runtime_reap(rt, moat_time_now_ms(), &reaped, &st) != MOAT_CODE_OK)
            moat_log(MOAT_LOG_WARN, "runtime_reap_failed", "code=%s msg=\"%s\"",
                     moat_code_name(st.code), st.message);
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
