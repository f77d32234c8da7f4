/* Renewals in batches: a queue under a mutex, one batch in flight at a time, made by the
 * thread of a caller (runtime/store.c's group commit of new rows, bounded per batch). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster/renewals.h"

/* A caller waiting in moat_renewals_renew, on its stack. */
typedef struct waiter {
    struct waiter *next;
    moat_dir_renewal item; /* in, then the answer */
    bool done;
} waiter;

struct moat_renewals {
    moat_etcd *etcd;
    char node_id[MOAT_NODE_ID_MAX];
    pthread_mutex_t mu;
    pthread_cond_t cv;
    waiter *queue, **tail; /* under mu */
    bool in_flight;        /* under mu */
    moat_renewals_stats stats;
    moat_renewals_observer observer; /* set before any renewal */
    void *observer_arg;
    moat_dir_renewal batch[MOAT_DIR_RENEW_BATCH]; /* the batch in flight's */
};

moat_renewals *moat_renewals_open(moat_etcd *etcd, const char *node_id)
{
    moat_renewals *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return NULL;
    r->etcd = etcd;
    snprintf(r->node_id, sizeof(r->node_id), "%s", node_id);
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    r->tail = &r->queue;
    return r;
}

void moat_renewals_close(moat_renewals *r)
{
    if (r == NULL)
        return;
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    free(r);
}

/* Under mu: up to MOAT_DIR_RENEW_BATCH waiters off the queue into taken, copied into the
 * batch; one whose session another of the batch renews stays queued for the next (a
 * transaction writes a key once). */
static size_t take(moat_renewals *r, waiter **taken)
{
    size_t n = 0;
    for (waiter **w = &r->queue; *w != NULL && n < MOAT_DIR_RENEW_BATCH;) {
        bool dup = false;
        for (size_t i = 0; i < n && !dup; i++)
            dup = strcmp(taken[i]->item.session_id, (*w)->item.session_id) == 0;
        if (dup) {
            w = &(*w)->next;
            continue;
        }
        taken[n] = *w;
        r->batch[n++] = (*w)->item;
        *w = (*w)->next;
    }
    r->tail = &r->queue;
    while (*r->tail != NULL)
        r->tail = &(*r->tail)->next;
    return n;
}

moat_code moat_renewals_renew(moat_renewals *r, const char *session_id, int64_t expires_at_ms,
                              bool *owned, bool *ended, moat_status *st)
{
    waiter me = {.done = false};
    snprintf(me.item.session_id, sizeof(me.item.session_id), "%s", session_id);
    me.item.expires_at_ms = expires_at_ms;
    pthread_mutex_lock(&r->mu);
    *r->tail = &me;
    r->tail = &me.next;
    while (!me.done) {
        if (r->in_flight) {
            pthread_cond_wait(&r->cv, &r->mu);
            continue;
        }
        /* No batch in flight: this caller makes one of those queued, itself among them unless
         * an earlier renewal of its session is (then it goes in the next). */
        waiter *taken[MOAT_DIR_RENEW_BATCH];
        size_t n = take(r, taken);
        r->in_flight = true;
        pthread_mutex_unlock(&r->mu);
        size_t calls = moat_dir_renew_batch(r->etcd, r->node_id, r->batch, n);
        moat_log(MOAT_LOG_DEBUG, "cluster_renew_batch", "size=%zu etcd_calls=%zu", n, calls);
        if (r->observer != NULL)
            r->observer(r->observer_arg, n, calls);
        pthread_mutex_lock(&r->mu);
        r->in_flight = false;
        r->stats.renewals += n;
        r->stats.batches++;
        r->stats.etcd_calls += calls;
        for (size_t i = 0; i < n; i++) {
            taken[i]->item = r->batch[i];
            taken[i]->done = true;
        }
        pthread_cond_broadcast(&r->cv);
    }
    pthread_mutex_unlock(&r->mu);
    *owned = me.item.written;
    *ended = me.item.ended;
    if (me.item.code != MOAT_CODE_OK)
        *st = me.item.status;
    return me.item.code;
}

void moat_renewals_observe(moat_renewals *r, moat_renewals_observer fn, void *arg)
{
    r->observer = fn;
    r->observer_arg = arg;
}

moat_renewals_stats moat_renewals_stats_get(moat_renewals *r)
{
    pthread_mutex_lock(&r->mu);
    moat_renewals_stats s = r->stats;
    pthread_mutex_unlock(&r->mu);
    return s;
}
