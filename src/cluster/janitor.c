/* The janitor: an election on one key, then sweeps of sessions/ for records of nodes gone for
 * good. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster/dir_read.h"
#include "cluster/records.h"
#include "cluster/janitor.h"
#include "cluster/stopper.h"

/* An incarnation of a node (its id and the lease it wrote its records under) seen gone. */
typedef struct gone_incarnation {
    char node_id[MOAT_NODE_ID_MAX];
    int64_t lease;
    int64_t first_seen_ms;
    bool seen; /* in this sweep */
} gone_incarnation;

struct moat_janitor {
    moat_etcd *etcd;
    moat_membership *member;
    char node_id[MOAT_NODE_ID_MAX];
    int64_t grace_ms;
    pthread_t thread;
    moat_stopper stopper;
    bool elected;
    gone_incarnation *gone;
    size_t ngone, capgone;
};

static int64_t mono_ms(void)
{
    return (int64_t)(moat_time_mono_ns() / 1000000u);
}

/* Whether this node is the janitor: it takes the key if nobody holds it, or holds it already
 * under its current lease. */
static bool elect(moat_janitor *j)
{
    int64_t lease = moat_membership_lease(j->member);
    if (lease == 0 || !moat_membership_live(j->member))
        return false;
    moat_slice key = moat_slice_str(MOAT_JANITOR_KEY);
    /* The value is {"node_id": …}, as a home record's (docs/CLUSTER.md, "Keys"). */
    char value[MOAT_NODE_ID_MAX + 32], holder[MOAT_NODE_ID_MAX];
    size_t vlen = moat_home_record_encode(j->node_id, value, sizeof(value));
    moat_etcd_cmp cmp = {key, MOAT_ETCD_CREATE_REVISION, MOAT_ETCD_EQUAL, 0};
    moat_etcd_op put = {MOAT_ETCD_OP_PUT, key, {(const uint8_t *)value, vlen}, lease, false};
    moat_etcd_op get = {MOAT_ETCD_OP_RANGE, key, {NULL, 0}, 0, false};
    moat_etcd_txn_spec txn = {&cmp, 1, &put, 1, &get, 1};
    moat_etcd_result r;
    moat_status st;
    bool won = false;
    if (vlen > 0 && moat_etcd_txn(j->etcd, &txn, &r, &st) == MOAT_CODE_OK) {
        won = r.succeeded ||
              (r.kv_count == 1 && r.kvs[0].lease == lease &&
               moat_home_record_decode(r.kvs[0].value, r.kvs[0].value_len, holder) == MOAT_OK &&
               strcmp(holder, j->node_id) == 0);
    }
    moat_etcd_result_free(&r);
    if (won != j->elected)
        moat_log(MOAT_LOG_INFO, won ? "janitor_elected" : "janitor_resigned", "node=%s",
                 j->node_id);
    j->elected = won;
    return won;
}

static gone_incarnation *sighting(moat_janitor *j, const moat_session_record *r, int64_t now)
{
    for (size_t i = 0; i < j->ngone; i++) {
        if (j->gone[i].lease == r->node_lease && strcmp(j->gone[i].node_id, r->node_id) == 0)
            return &j->gone[i];
    }
    if (j->ngone == j->capgone) {
        size_t ncap = j->capgone != 0 ? j->capgone * 2 : 8;
        gone_incarnation *grown = realloc(j->gone, ncap * sizeof(*grown));
        if (grown == NULL)
            return NULL;
        j->gone = grown;
        j->capgone = ncap;
    }
    gone_incarnation *g = &j->gone[j->ngone++];
    snprintf(g->node_id, sizeof(g->node_id), "%s", r->node_id);
    g->lease = r->node_lease;
    g->first_seen_ms = now;
    return g;
}

/* Deletes kv if it is still what the sweep read. */
static bool remove_if_unchanged(moat_janitor *j, const moat_etcd_kv *kv)
{
    moat_slice key = {kv->key, kv->key_len};
    moat_etcd_cmp cmp = {key, MOAT_ETCD_MOD_REVISION, MOAT_ETCD_EQUAL, kv->mod_revision};
    moat_etcd_op del = {MOAT_ETCD_OP_DELETE, key, {NULL, 0}, 0, false};
    moat_etcd_txn_spec txn = {&cmp, 1, &del, 1, NULL, 0};
    moat_etcd_result r;
    moat_status st;
    bool done = moat_etcd_txn(j->etcd, &txn, &r, &st) == MOAT_CODE_OK && r.succeeded;
    moat_etcd_result_free(&r);
    return done;
}

typedef struct sweep_pass {
    moat_janitor *j;
    const moat_node *nodes;
    size_t nnodes;
    int64_t now;
    size_t removed;
} sweep_pass;

static bool sweep_kv(void *ud, const moat_etcd_kv *kv, moat_status *st)
{
    sweep_pass *p = ud;
    moat_session_record rec;
    if (atomic_load(&p->j->stopper.stop)) {
        moat_status_set(st, MOAT_CODE_CANCELLED, "cancelled", "the janitor is stopping");
        return false;
    }
    /* Records that do not decode are not the janitor's to judge. */
    if (moat_session_record_decode(kv->key, kv->key_len, kv->value, kv->value_len, &rec) !=
            MOAT_OK ||
        moat_session_record_owner(&rec, p->nodes, p->nnodes) != NULL)
        return true;
    gone_incarnation *g = sighting(p->j, &rec, p->now);
    if (g == NULL)
        return true;
    g->seen = true;
    if (p->now - g->first_seen_ms >= p->j->grace_ms && remove_if_unchanged(p->j, kv))
        p->removed++;
    return true;
}

/* One pass over sessions/: records whose incarnation has been gone for the grace period go. */
static void sweep(moat_janitor *j)
{
    moat_node *nodes = NULL;
    size_t nnodes = 0;
    moat_status st;
    if (moat_cluster_nodes(j->etcd, &nodes, &nnodes, NULL, &st) != MOAT_CODE_OK)
        return;
    for (size_t i = 0; i < j->ngone; i++)
        j->gone[i].seen = false;
    sweep_pass pass = {j, nodes, nnodes, mono_ms(), 0};
    bool ok = moat_directory_scan(j->etcd, sweep_kv, &pass, NULL, &st) == MOAT_CODE_OK;
    free(nodes);
    /* Incarnations none of whose records are left are forgotten (after a whole pass only). */
    size_t k = 0;
    for (size_t i = 0; i < j->ngone; i++) {
        if (j->gone[i].seen || !ok)
            j->gone[k++] = j->gone[i];
    }
    j->ngone = k;
    if (pass.removed > 0)
        moat_log(MOAT_LOG_INFO, "janitor_removed", "records=%zu", pass.removed);
}

static void *run(void *arg)
{
    moat_janitor *j = arg;
    int64_t period = j->grace_ms / 2;
    period = period < 1000 ? 1000 : period > 60000 ? 60000 : period;
    do {
        if (elect(j))
            sweep(j);
        else
            j->ngone = 0; /* a later janitor term counts the grace afresh */
    } while (moat__stopper_wait_ms(&j->stopper, period));
    return NULL;
}

moat_janitor *moat_janitor_start(const moat_janitor_config *cfg)
{
    moat_janitor *j = calloc(1, sizeof(*j));
    if (j == NULL)
        return NULL;
    j->etcd = cfg->etcd;
    j->member = cfg->member;
    snprintf(j->node_id, sizeof(j->node_id), "%s", cfg->node_id);
    j->grace_ms = cfg->grace_ms;
    moat__stopper_init(&j->stopper);
    if (pthread_create(&j->thread, NULL, run, j) != 0) {
        moat__stopper_destroy(&j->stopper);
        free(j);
        return NULL;
    }
    return j;
}

void moat_janitor_stop(moat_janitor *j)
{
    if (j == NULL)
        return;
    moat__stopper_stop(&j->stopper);
    pthread_join(j->thread, NULL);
    free(j->gone);
    moat__stopper_destroy(&j->stopper);
    free(j);
}
