/* Membership: a lease kept alive by a thread of its own, the node's record under it. */
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cluster/membership.h"

#define KEY_MAX (sizeof(MOAT_NODES_PREFIX) + MOAT_NODE_ID_MAX)

struct moat_membership {
    moat_etcd *etcd;
    moat_node node; /* id, address and the load last published */
    char key[KEY_MAX];
    int64_t ttl_s;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv; /* on CLOCK_MONOTONIC */
    /* Under mu. */
    bool stopping;
    moat_node_load load; /* the one to publish */
    uint64_t live_until_ns;
    int64_t lease_now; /* lease, for moat_membership_lease */
    /* The thread's alone once it runs. */
    int64_t lease;        /* 0: not registered */
    int64_t resume_lease; /* the previous run's, until the node holds a lease */
    bool fenced_logged;
};

static const moat_node_load *pending_load(moat_membership *m, moat_node_load *copy)
{
    pthread_mutex_lock(&m->mu);
    *copy = m->load;
    pthread_mutex_unlock(&m->mu);
    return copy;
}

static void set_live_until(moat_membership *m, uint64_t until_ns)
{
    pthread_mutex_lock(&m->mu);
    m->live_until_ns = until_ns;
    m->lease_now = m->lease;
    pthread_mutex_unlock(&m->mu);
}

/* Writes the record under the current lease: only if the key is absent (create), or as an
 * update of our own. */
static moat_code publish(moat_membership *m, bool create, moat_status *st)
{
    moat_node rec = m->node;
    pending_load(m, &rec.load);
    char value[MOAT_NODE_VALUE_MAX];
    size_t len = moat_node_encode(&rec, value, sizeof(value));
    moat_etcd_result r;
    moat_slice key = moat_slice_str(m->key);
    moat_slice val = {(const uint8_t *)value, len};
    moat_code code;
    if (create) {
        moat_etcd_cmp absent = {key, MOAT_ETCD_CREATE_REVISION, MOAT_ETCD_EQUAL, 0};
        moat_etcd_op put = {MOAT_ETCD_OP_PUT, key, val, m->lease, false};
        moat_etcd_txn_spec txn = {&absent, 1, &put, 1, NULL, 0};
        code = moat_etcd_txn(m->etcd, &txn, &r, st);
        if (code == MOAT_CODE_OK && !r.succeeded) {
            moat_status_set(st, MOAT_CODE_ALREADY_EXISTS, "node_id_taken",
                            "another live node is registered as %s", m->node.id);
            code = st->code;
        }
    } else {
        code = moat_etcd_put(m->etcd, key, val, m->lease, &r, st);
    }
    moat_etcd_result_free(&r);
    if (code == MOAT_CODE_OK)
        m->node.load = rec.load;
    return code;
}

/* Carries on with a lease of this node's previous run, if etcd still has it and the node's key
 * is absent or under it (so no other node holds the id). false: register anew. */
static bool resume(moat_membership *m, int64_t lease)
{
    moat_etcd_result r;
    moat_status st;
    uint64_t sent = moat_time_mono_ns();
    if (moat_etcd_lease_keepalive(m->etcd, lease, &r, &st) != MOAT_CODE_OK)
        return false;
    uint64_t until = sent + (uint64_t)r.ttl * 1000000000u;
    if (moat_etcd_range(m->etcd, moat_slice_str(m->key), false, 0, &r, &st) != MOAT_CODE_OK)
        return false;
    bool absent = r.kv_count == 0, ours = r.kv_count == 1 && r.kvs[0].lease == lease;
    moat_etcd_result_free(&r);
    if (!absent && !ours)
        return false;
    m->lease = lease;
    if (publish(m, absent, &st) != MOAT_CODE_OK) {
        m->lease = 0;
        return false;
    }
    set_live_until(m, until);
    return true;
}

/* A new lease and the record under it. On failure no lease is left behind. */
static moat_code register_node(moat_membership *m, moat_status *st)
{
    moat_etcd_result r;
    uint64_t sent = moat_time_mono_ns();
    moat_code code = moat_etcd_lease_grant(m->etcd, m->ttl_s, &r, st);
    if (code != MOAT_CODE_OK)
        return code;
    m->lease = r.lease_id;
    uint64_t until = sent + (uint64_t)r.ttl * 1000000000u;
    code = publish(m, true, st);
    if (code != MOAT_CODE_OK) {
        moat_status revoke_st;
        moat_etcd_lease_revoke(m->etcd, m->lease, &r, &revoke_st);
        m->lease = 0;
        set_live_until(m, 0);
        return code;
    }
    set_live_until(m, until);
    m->fenced_logged = false;
    return MOAT_CODE_OK;
}

static bool loads_differ(const moat_node_load *a, const moat_node_load *b)
{
    return memcmp(a, b, sizeof(*a)) != 0;
}

/* One keepalive round. */
static void tick(moat_membership *m)
{
    moat_status st;
    if (m->lease == 0) {
        /* Started while etcd was down: the previous run's lease may have outlived the outage. */
        bool resumed = m->resume_lease != 0 && resume(m, m->resume_lease);
        if (resumed || register_node(m, &st) == MOAT_CODE_OK) {
            m->resume_lease = 0;
            moat_log(MOAT_LOG_INFO, resumed ? "cluster_resumed" : "cluster_registered",
                     "node=%s lease=%" PRId64, m->node.id, m->lease);
        }
        return;
    }
    moat_etcd_result r;
    uint64_t sent = moat_time_mono_ns();
    moat_code code = moat_etcd_lease_keepalive(m->etcd, m->lease, &r, &st);
    if (code == MOAT_CODE_OK) {
        set_live_until(m, sent + (uint64_t)r.ttl * 1000000000u);
        if (m->fenced_logged)
            moat_log(MOAT_LOG_INFO, "cluster_live", "node=%s lease=%" PRId64, m->node.id, m->lease);
        m->fenced_logged = false;
        moat_node_load want;
        if (loads_differ(pending_load(m, &want), &m->node.load))
            publish(m, false, &st);
        return;
    }
    if (code == MOAT_CODE_NOT_FOUND) {
        /* The lease expired: the cluster has seen this node leave. Join again as new. */
        moat_log(MOAT_LOG_WARN, "cluster_lease_lost", "node=%s lease=%" PRId64, m->node.id,
                 m->lease);
        m->lease = 0;
        set_live_until(m, 0);
        tick(m);
        return;
    }
    if (!moat_membership_live(m) && !m->fenced_logged) {
        m->fenced_logged = true;
        moat_log(MOAT_LOG_WARN, "cluster_fenced", "node=%s reason=%s message=\"%s\"", m->node.id,
                 st.reason, st.message);
    }
}

static void *keepalive_thread(void *arg)
{
    moat_membership *m = arg;
    /* Three rounds per TTL: two may fail before the lease is at risk. */
    uint64_t period_ns = (uint64_t)m->ttl_s * 1000000000u / 3;
    pthread_mutex_lock(&m->mu);
    while (!m->stopping) {
        struct timespec at;
        clock_gettime(CLOCK_MONOTONIC, &at);
        uint64_t ns = (uint64_t)at.tv_nsec + period_ns;
        at.tv_sec += (time_t)(ns / 1000000000u);
        at.tv_nsec = (long)(ns % 1000000000u);
        while (!m->stopping && pthread_cond_timedwait(&m->cv, &m->mu, &at) == 0) {
        }
        if (m->stopping)
            break;
        pthread_mutex_unlock(&m->mu);
        tick(m);
        pthread_mutex_lock(&m->mu);
    }
    pthread_mutex_unlock(&m->mu);
    return NULL;
}

moat_membership *moat_membership_start(const moat_membership_config *cfg, moat_status *st)
{
    moat_node probe = {0};
    bool valid = moat_node_id_valid(cfg->node_id) && moat_node_address_valid(cfg->address) &&
                 cfg->lease_ttl_s >= 0 && cfg->lease_ttl_s <= 3600;
    if (valid) {
        strcpy(probe.id, cfg->node_id);
        strcpy(probe.address, cfg->address);
        probe.load = cfg->load;
        char value[MOAT_NODE_VALUE_MAX];
        valid = moat_node_encode(&probe, value, sizeof(value)) > 0;
    }
    if (!valid) {
        moat_status_set(st, MOAT_CODE_INVALID_ARGUMENT, "invalid_config",
                        "cluster membership: invalid node id, address, lease TTL or load");
        return NULL;
    }
    moat_membership *m = calloc(1, sizeof(*m));
    if (m == NULL) {
        moat_status_set(st, MOAT_CODE_RESOURCE_EXHAUSTED, "out_of_memory", "out of memory");
        return NULL;
    }
    m->etcd = cfg->etcd;
    m->node = probe;
    m->node.load = (moat_node_load){0};
    m->load = cfg->load;
    m->ttl_s = cfg->lease_ttl_s > 0 ? cfg->lease_ttl_s : 5;
    moat_node_key(cfg->node_id, m->key, sizeof(m->key));
    pthread_mutex_init(&m->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&m->cv, &ca);
    pthread_condattr_destroy(&ca);

    /* A node restarted within its TTL finds its former record still there: it waits for it
     * to expire, up to two TTLs and a second (etcd revokes expired leases in a periodic sweep,
     * a little after the TTL). Past that, another node holds the id. */
    uint64_t give_up = moat_time_mono_ns() + ((uint64_t)m->ttl_s * 2 + 1) * 1000000000u;
    moat_code code = MOAT_CODE_OK;
    m->resume_lease = cfg->resume_lease;
    bool resumed = m->resume_lease != 0 && resume(m, m->resume_lease);
    while (!resumed && (code = register_node(m, st)) == MOAT_CODE_ALREADY_EXISTS &&
           moat_time_mono_ns() < give_up) {
        struct timespec pause = {0, 250 * 1000000L};
        nanosleep(&pause, NULL);
    }
    if (code == MOAT_CODE_UNAVAILABLE) {
        /* etcd is down: the node starts fenced and its thread registers it once etcd answers,
         * so a moatd restarted during an etcd outage still serves its running sessions. */
        moat_log(MOAT_LOG_WARN, "cluster_fenced", "node=%s reason=%s message=\"%s\"", m->node.id,
                 st->reason, st->message);
        m->fenced_logged = true;
        code = MOAT_CODE_OK;
    }
    if (code == MOAT_CODE_OK && m->lease != 0) {
        m->resume_lease = 0;
        moat_log(MOAT_LOG_INFO, resumed ? "cluster_resumed" : "cluster_registered",
                 "node=%s lease=%" PRId64, m->node.id, m->lease);
    }
    /* From here on, lease and resume_lease are the thread's. */
    if (code == MOAT_CODE_OK && pthread_create(&m->thread, NULL, keepalive_thread, m) != 0) {
        moat_etcd_result r;
        moat_status revoke_st;
        moat_etcd_lease_revoke(m->etcd, m->lease, &r, &revoke_st);
        moat_status_set(st, MOAT_CODE_RESOURCE_EXHAUSTED, "out_of_memory", "pthread_create");
        code = st->code;
    }
    if (code != MOAT_CODE_OK) {
        pthread_cond_destroy(&m->cv);
        pthread_mutex_destroy(&m->mu);
        free(m);
        return NULL;
    }
    return m;
}

int64_t moat_membership_lease(moat_membership *m)
{
    pthread_mutex_lock(&m->mu);
    int64_t lease = m->lease_now;
    pthread_mutex_unlock(&m->mu);
    return lease;
}

void moat_membership_set_load(moat_membership *m, const moat_node_load *load)
{
    pthread_mutex_lock(&m->mu);
    m->load = *load;
    pthread_mutex_unlock(&m->mu);
}

bool moat_membership_live(moat_membership *m)
{
    pthread_mutex_lock(&m->mu);
    bool live = moat_time_mono_ns() < m->live_until_ns;
    pthread_mutex_unlock(&m->mu);
    return live;
}

void moat_membership_stop(moat_membership *m)
{
    if (m == NULL)
        return;
    pthread_mutex_lock(&m->mu);
    m->stopping = true;
    pthread_cond_signal(&m->cv);
    pthread_mutex_unlock(&m->mu);
    pthread_join(m->thread, NULL);
    if (m->lease != 0) {
        moat_etcd_result r;
        moat_status st;
        moat_etcd_lease_revoke(m->etcd, m->lease, &r, &st);
    }
    pthread_cond_destroy(&m->cv);
    pthread_mutex_destroy(&m->mu);
    free(m);
}

moat_code moat_cluster_nodes(moat_etcd *etcd, moat_node **nodes, size_t *count, size_t *skipped,
                             moat_status *st)
{
    *nodes = NULL;
    *count = 0;
    if (skipped != NULL)
        *skipped = 0;
    moat_etcd_result r;
    moat_code code = moat_etcd_range(etcd, moat_slice_str(MOAT_NODES_PREFIX), true, 0, &r, st);
    if (code == MOAT_CODE_OK && r.kv_count > 0) {
        *nodes = calloc(r.kv_count, sizeof(**nodes));
        if (*nodes == NULL) {
            moat_status_set(st, MOAT_CODE_RESOURCE_EXHAUSTED, "out_of_memory", "out of memory");
            code = st->code;
        }
    }
    for (size_t i = 0; code == MOAT_CODE_OK && i < r.kv_count; i++) {
        const moat_etcd_kv *kv = &r.kvs[i];
        if (moat_node_decode(kv->key, kv->key_len, kv->value, kv->value_len, kv->lease,
                             &(*nodes)[*count]) == MOAT_OK)
            (*count)++;
        else if (skipped != NULL)
            (*skipped)++;
    }
    moat_etcd_result_free(&r);
    return code;
}
