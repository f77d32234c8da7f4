/* The owner's upkeep of its records in the directory (docs/CLUSTER.md, "Reaping"): ends etcd
 * could not take, kept and written in batches once it answers; the creates in flight, whose
 * records the sweep must leave; and the sweep, at each new lease and every
 * cluster_sweep_interval_seconds, that ends the records of sessions this node no longer has. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cluster/dircache.h"
#include "cluster_place.h"
#include "server_internal.h"

/* How long the writer waits before it tries kept ends again after etcd did not answer: each
 * try is one read, so a second costs etcd nothing and bounds how late ends land. */
#define RETRY_MS 1000

struct cluster_upkeep {
    uv_timer_t sweep_timer; /* first: its close callback frees u */
    srv *s;
    moat_etcd *etcd;                     /* cluster.c's */
    char node_id[MOAT_NODE_ID_MAX];      /* copied: a SIGHUP may replace the config's */
    bool sweeping;                       /* loop: a periodic sweep's job is running */
    pthread_mutex_t mu;                  /* what follows */
    pthread_cond_t wake;                 /* ends kept, or stopping */
    moat_dir_end_item *kept;             /* MOAT_CLUSTER_ENDS_KEPT, oldest first */
    size_t nkept;                        /* how many */
    uint64_t dropped;                    /* ends past the bound since start */
    char (*creating)[MOAT_UUID_STR_LEN]; /* sessions between their claim and their create's end */
    size_t ncreating, creating_cap;
    bool stopping;
    pthread_t thread;
};

static moat_log_limit dropped_log = MOAT_LOG_LIMIT_INIT;

/* ------------------------------------------------------------ ends kept */

/* Appends an end (under u->mu); past the bound it is dropped, and the sweep ends its record. */
static void keep_locked(cluster_upkeep *u, const char *sid, const char *reason, int64_t at_ms,
                        bool tried)
{
    if (u->nkept == MOAT_CLUSTER_ENDS_KEPT) {
        u->dropped++;
        moat__metrics_end_dropped(u->s->metrics);
        moat_log_limited(&dropped_log, MOAT_LOG_WARN, "cluster_end_dropped",
                         "session_id=%s reason=%s kept=%zu dropped=%llu", sid, reason, u->nkept,
                         (unsigned long long)u->dropped);
        return;
    }
    moat_dir_end_item *it = &u->kept[u->nkept++];
    snprintf(it->session_id, sizeof(it->session_id), "%s", sid);
    snprintf(it->reason, sizeof(it->reason), "%s", reason);
    it->ended_at_ms = at_ms;
    moat__metrics_ends_kept(u->s->metrics, u->nkept);
    moat_log(MOAT_LOG_INFO, "cluster_end_kept", "session_id=%s reason=%s tried=%d kept=%zu", sid,
             reason, tried ? 1 : 0, u->nkept);
    /* The writer waits for the first; after that it tries again on its own time. */
    if (u->nkept == 1)
        pthread_cond_signal(&u->wake);
}

void moat__cluster_ended(srv *s, const char *sid, const char *reason)
{
    moat_etcd *etcd = moat__cluster_etcd(s);
    cluster_upkeep *u = moat__cluster_upkeep(s);
    if (etcd == NULL)
        return;
    int64_t at_ms = moat_time_now_ms();
    if (u != NULL) {
        /* Ends already kept mean etcd did not answer the last try, and a fenced node has not
         * reached it for a while: this one waits with them instead of for the client's
         * timeouts. */
        bool fenced = moat__cluster_fenced(s);
        pthread_mutex_lock(&u->mu);
        bool wait = u->nkept > 0 || fenced;
        if (wait)
            keep_locked(u, sid, reason, at_ms, false);
        pthread_mutex_unlock(&u->mu);
        if (wait)
            return;
    }
    moat_status st;
    bool ended;
    moat_code code = moat_dir_end(etcd, sid, s->cfg.cluster_node_id, at_ms, reason, &ended, &st);
    if (code == MOAT_CODE_UNAVAILABLE && u != NULL) {
        pthread_mutex_lock(&u->mu);
        keep_locked(u, sid, reason, at_ms, true);
        pthread_mutex_unlock(&u->mu);
    } else if (code != MOAT_CODE_OK) {
        moat_log(MOAT_LOG_WARN, "cluster_record_not_written",
                 "session_id=%s state=ended code=%s reason=%s msg=\"%s\"", sid,
                 moat_code_name(st.code), st.reason, st.message);
    }
}

/* Drops the first n kept ends that done marks (under u->mu; only the writer removes, and ends
 * are only appended meanwhile, so the first n are the batch it wrote). How many went. */
static size_t forget_done(cluster_upkeep *u, const bool *done, size_t n)
{
    size_t w = 0;
    for (size_t i = 0; i < n; i++) {
        if (!done[i])
            u->kept[w++] = u->kept[i];
    }
    size_t gone = n - w;
    memmove(&u->kept[w], &u->kept[n], (u->nkept - n) * sizeof(u->kept[0]));
    u->nkept -= gone;
    moat__metrics_ends_kept(u->s->metrics, u->nkept);
    return gone;
}

/* The writer's thread: batches of kept ends, oldest first, while etcd answers; a try every
 * RETRY_MS while it does not. */
static void *writer_main(void *arg)
{
    cluster_upkeep *u = arg;
    pthread_mutex_lock(&u->mu);
    while (!u->stopping) {
        if (u->nkept == 0) {
            pthread_cond_wait(&u->wake, &u->mu);
            continue;
        }
        moat_dir_end_item batch[MOAT_DIR_END_BATCH];
        size_t n = u->nkept < MOAT_DIR_END_BATCH ? u->nkept : MOAT_DIR_END_BATCH;
        memcpy(batch, u->kept, n * sizeof(batch[0]));
        pthread_mutex_unlock(&u->mu);
        bool done[MOAT_DIR_END_BATCH];
        moat_status st;
        moat_code code = moat_dir_end_batch(u->etcd, u->node_id, batch, n, done, &st);
        pthread_mutex_lock(&u->mu);
        if (code == MOAT_CODE_OK) {
            size_t gone = forget_done(u, done, n);
            moat__metrics_ends_written(u->s->metrics, gone);
            moat_log(MOAT_LOG_INFO, "cluster_ends_written", "count=%zu kept=%zu", gone, u->nkept);
        } else if (code == MOAT_CODE_UNAVAILABLE) {
            struct timespec until;
            clock_gettime(CLOCK_MONOTONIC, &until);
            until.tv_sec += RETRY_MS / 1000;
            if (!u->stopping)
                pthread_cond_timedwait(&u->wake, &u->mu, &until);
        } else {
            /* Not etcd's absence (a record kept changing, out of memory): given up, for the
             * sweep to repair. */
            for (size_t i = 0; i < n; i++)
                done[i] = true;
            forget_done(u, done, n);
            moat_log(MOAT_LOG_WARN, "cluster_record_not_written",
                     "count=%zu state=ended code=%s reason=%s msg=\"%s\"", n,
                     moat_code_name(st.code), st.reason, st.message);
        }
    }
    pthread_mutex_unlock(&u->mu);
    return NULL;
}

/* ------------------------------------------------------------ creates in flight */

bool moat__cluster_creating_begin(srv *s, const char *sid)
{
    cluster_upkeep *u = moat__cluster_upkeep(s);
    if (u == NULL)
        return true;
    pthread_mutex_lock(&u->mu);
    bool ok = true;
    if (u->ncreating == u->creating_cap) {
        size_t cap = u->creating_cap > 0 ? 2 * u->creating_cap : 16;
        char(*grown)[MOAT_UUID_STR_LEN] = realloc(u->creating, cap * sizeof(*grown));
        ok = grown != NULL;
        if (ok) {
            u->creating = grown;
            u->creating_cap = cap;
        }
    }
    if (ok)
        snprintf(u->creating[u->ncreating++], MOAT_UUID_STR_LEN, "%s", sid);
    pthread_mutex_unlock(&u->mu);
    return ok;
}

void moat__cluster_creating_end(srv *s, const char *sid)
{
    cluster_upkeep *u = moat__cluster_upkeep(s);
    if (u == NULL)
        return;
    pthread_mutex_lock(&u->mu);
    for (size_t i = 0; i < u->ncreating; i++) {
        if (strcmp(u->creating[i], sid) == 0) {
            memcpy(u->creating[i], u->creating[--u->ncreating], MOAT_UUID_STR_LEN);
            break;
        }
    }
    pthread_mutex_unlock(&u->mu);
}

static bool creating(cluster_upkeep *u, const char *sid)
{
    if (u == NULL)
        return false;
    pthread_mutex_lock(&u->mu);
    bool found = false;
    for (size_t i = 0; i < u->ncreating && !found; i++)
        found = strcmp(u->creating[i], sid) == 0;
    pthread_mutex_unlock(&u->mu);
    return found;
}

/* ------------------------------------------------------------ the sweep */

typedef struct sweep_job {
    engine_job base;
    int64_t lease;
    bool periodic; /* from the node's copy of the directory, not one range of etcd */
    size_t lost, ended, creating, finished;
} sweep_job;

/* sid's record written running, as the create would have, if it still says creating. */
static bool finish_creating(srv *s, const char *sid, const moat_session *cur)
{
    moat_etcd *etcd = moat__cluster_etcd(s);
    moat_session_record fresh;
    bool found = false;
    int64_t rev;
    moat_status why;
    if (moat_dir_record(etcd, sid, &found, &fresh, &rev, &why) != MOAT_CODE_OK || !found ||
        fresh.state != MOAT_RECORD_CREATING)
        return false;
    fresh.state = MOAT_RECORD_RUNNING;
    fresh.expires_at_ms = cur->expires_at_ms;
    return moat_dir_update(etcd, &fresh, rev, NULL, &why) == MOAT_CODE_OK;
}

/* One record as the sweep judges it. false: the node's lease changed since the sweep began,
 * and the sweep stops (the next one judges by the new lease; this one would take the new
 * incarnation's records for an older one's). */
static bool sweep_record(sweep_job *w, const moat_session_record *r)
{
    srv *s = w->base.s;
    if (strcmp(r->node_id, s->cfg.cluster_node_id) != 0 || r->state == MOAT_RECORD_ENDED)
        return true;
    if (moat__cluster_lease(s) != w->lease)
        return false;
    /* Asked before the runtime: a create that ends after this has left the runtime with its
     * final word by then (it leaves the set only after), so the runtime's answer below is not
     * one from before its sandbox existed. */
    if (creating(moat__cluster_upkeep(s), r->session_id)) {
        w->creating++;
        return true;
    }
    moat_status why;
    moat_session cur;
    moat_code got = s->rt_ops->get(s->rt, r->session_id, &cur, &why);
    if (r->state == MOAT_RECORD_CREATING && r->node_lease == w->lease && got == MOAT_CODE_OK &&
        cur.state == MOAT_SESSION_RUNNING) {
        /* A create that made or bound its sandbox but never wrote its record running: its
         * process died first (a restart within the lease resumes it), or etcd did not take
         * the write. */
        w->finished += finish_creating(s, r->session_id, &cur);
        return true;
    }
    bool ended_here = got == MOAT_CODE_OK && cur.state != MOAT_SESSION_RUNNING;
    bool has_reason = ended_here && cur.end_reason[0] != '\0';
    if (r->node_lease != w->lease && !has_reason) {
        /* An older incarnation's: the cluster counted it out with its lease, and its chat may
         * live elsewhere now. One that had ended here before (an end the old incarnation kept
         * and gave up at its stop) keeps its own reason, below. */
        s->rt_ops->stop(s->rt, r->session_id, &why);
        moat__cluster_ended(s, r->session_id, "node_lost");
        moat__reaper_session_event(s, "gone", r->session_id, MOAT_CODE_OK, 0);
        w->lost++;
        return true;
    }
    /* A record of a session that is over here (an end whose write failed), or of a create
     * that ended without taking its keys back. An engine that does not answer says nothing
     * either way. */
    if (!ended_here && got != MOAT_CODE_NOT_FOUND)
        return true;
    moat__cluster_ended(s, r->session_id, has_reason ? cur.end_reason : "gone");
    w->ended++;
    return true;
}

static void sweep_run(engine_job *j)
{
    sweep_job *w = (sweep_job *)j;
    srv *s = j->s;
    moat_dircache *dir = moat__cluster_dircache(s);
    if (w->periodic && dir != NULL) {
        /* The copy may lag etcd: moat_dir_end reads each record again before it writes. */
        moat_dir_entry *entries = NULL;
        size_t n = 0, skipped = 0;
        j->code = moat_dircache_list(dir, "", SIZE_MAX, &entries, &n, &skipped, NULL, &j->status);
        bool go = j->code == MOAT_CODE_OK;
        for (size_t i = 0; go && i < n; i++)
            go = sweep_record(w, &entries[i].rec);
        free(entries);
        return;
    }
    moat_session_record *recs = NULL;
    size_t n = 0, skipped = 0;
    j->code = moat_dir_records(moat__cluster_etcd(s), &recs, &n, &skipped, &j->status);
    bool go = j->code == MOAT_CODE_OK;
    for (size_t i = 0; go && i < n; i++)
        go = sweep_record(w, &recs[i]);
    free(recs);
}

static void sweep_done(engine_job *j)
{
    sweep_job *w = (sweep_job *)j;
    cluster_upkeep *u = moat__cluster_upkeep(j->s);
    if (w->periodic && u != NULL)
        u->sweeping = false;
    if (j->code != MOAT_CODE_OK)
        moat_log(MOAT_LOG_WARN, "cluster_sweep_failed", "code=%s reason=%s msg=\"%s\"",
                 moat_code_name(j->status.code), j->status.reason, j->status.message);
    else if (!w->periodic || w->lost + w->ended + w->finished > 0)
        moat_log(MOAT_LOG_INFO, "cluster_swept",
                 "lease=%lld periodic=%d node_lost=%zu ended=%zu creating=%zu "
                 "creating_finished=%zu",
                 (long long)w->lease, w->periodic ? 1 : 0, w->lost, w->ended, w->creating,
                 w->finished);
}

static bool sweep_start(srv *s, int64_t lease, bool periodic)
{
    sweep_job *w = moat__job_new_unattached(s, sizeof(*w));
    if (w == NULL)
        return false;
    w->lease = lease;
    w->periodic = periodic;
    moat__job_start(&w->base, sweep_run, sweep_done);
    return true;
}

void moat__cluster_sweep(srv *s, int64_t lease)
{
    sweep_start(s, lease, false);
}

static void on_sweep_timer(uv_timer_t *t)
{
    cluster_upkeep *u = (cluster_upkeep *)t;
    srv *s = u->s;
    int64_t lease = moat__cluster_lease(s);
    /* A fenced node cannot tell its records' standing, and one sweep at a time is enough. */
    if (lease != 0 && !moat__cluster_fenced(s) && !u->sweeping)
        u->sweeping = sweep_start(s, lease, true);
    uv_timer_start(t, on_sweep_timer, (uint64_t)s->cfg.cluster_sweep_interval_seconds * 1000, 0);
}

/* ------------------------------------------------------------ start and stop */

cluster_upkeep *moat__upkeep_start(srv *s, moat_etcd *etcd)
{
    cluster_upkeep *u = calloc(1, sizeof(*u));
    if (u == NULL || (u->kept = calloc(MOAT_CLUSTER_ENDS_KEPT, sizeof(*u->kept))) == NULL) {
        free(u);
        return NULL;
    }
    u->s = s;
    u->etcd = etcd;
    snprintf(u->node_id, sizeof(u->node_id), "%s", s->cfg.cluster_node_id);
    pthread_mutex_init(&u->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&u->wake, &ca);
    pthread_condattr_destroy(&ca);
    if (pthread_create(&u->thread, NULL, writer_main, u) != 0) {
        pthread_cond_destroy(&u->wake);
        pthread_mutex_destroy(&u->mu);
        free(u->kept);
        free(u);
        return NULL;
    }
    uv_timer_init(s->loop, &u->sweep_timer);
    uv_timer_start(&u->sweep_timer, on_sweep_timer,
                   (uint64_t)s->cfg.cluster_sweep_interval_seconds * 1000, 0);
    uv_unref((uv_handle_t *)&u->sweep_timer);
    return u;
}

static void on_upkeep_closed(uv_handle_t *h)
{
    cluster_upkeep *u = (cluster_upkeep *)h;
    pthread_cond_destroy(&u->wake);
    pthread_mutex_destroy(&u->mu);
    free(u->kept);
    free(u->creating);
    free(u);
}

void moat__upkeep_stop(cluster_upkeep *u)
{
    if (u == NULL)
        return;
    pthread_mutex_lock(&u->mu);
    u->stopping = true;
    pthread_cond_signal(&u->wake);
    pthread_mutex_unlock(&u->mu);
    pthread_join(u->thread, NULL);
    if (u->nkept > 0)
        moat_log(MOAT_LOG_WARN, "cluster_ends_given_up", "count=%zu", u->nkept);
    uv_close((uv_handle_t *)&u->sweep_timer, on_upkeep_closed);
}
