/* Cluster mode's part of moatd (docs/CLUSTER.md): the node's membership, its load published from
 * the loop every second, and whether the node may accept a create. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cluster/dircache.h"
#include "cluster/janitor.h"
#include "cluster/membership.h"
#include "cluster/renewals.h"
#include "cluster_place.h"
#include "server_internal.h"

struct srv_cluster {
    moat_etcd *etcd;
    moat_membership *m;
    moat_dircache *dir; /* ListSessions' copy of the directory (cluster_route.c) */
    moat_janitor *janitor;
    cluster_upkeep *upkeep;  /* ends kept, creates in flight, the sweep (cluster_sweep.c) */
    moat_renewals *renewals; /* renewals in batches (cluster_place.c); NULL: one at a time */
    uv_timer_t load_timer;
    int64_t lease_saved; /* what <state_dir>/cluster.lease holds */
    int64_t lease_swept; /* the lease the last sweep of older incarnations ran for (loop) */
    /* The member list placement reads, kept a second at most (docs/CLUSTER.md, "Placement"). */
    pthread_mutex_t members_mu;
    moat_node *members; /* under members_mu */
    size_t nmembers;
    uint64_t members_at_ms; /* monotonic; 0: none yet */
};

/* <state_dir>/cluster.lease, "<node id> <lease>": the lease this node held last, so that a
 * moatd restarted within the TTL carries on with it (moat_membership_config.resume_lease). */
static void lease_path(const srv *s, char *out, size_t cap)
{
    snprintf(out, cap, "%s/cluster.lease", s->cfg.state_dir);
}

/* The saved lease when it was this node id's, else 0. */
static int64_t lease_load(const srv *s)
{
    char path[4200], id[MOAT_NODE_ID_MAX];
    lease_path(s, path, sizeof(path));
    FILE *f = fopen(path, "r");
    long long lease = 0;
    if (f == NULL)
        return 0;
    if (fscanf(f, "%63s %lld", id, &lease) != 2 || strcmp(id, s->cfg.cluster_node_id) != 0)
        lease = 0;
    fclose(f);
    return lease;
}

/* Replaced whole (a new file renamed over it); 0 removes it. */
static void lease_save(srv *s, int64_t lease)
{
    char path[4200], tmp[4210];
    lease_path(s, path, sizeof(path));
    s->cluster->lease_saved = lease;
    if (lease == 0) {
        unlink(path);
        return;
    }
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    bool ok = f != NULL && fprintf(f, "%s %lld\n", s->cfg.cluster_node_id, (long long)lease) > 0;
    if (f != NULL && fclose(f) != 0)
        ok = false;
    if (!ok || rename(tmp, path) != 0) {
        unlink(tmp);
        moat_log(MOAT_LOG_WARN, "cluster_lease_not_saved", "path=%s", path);
    }
}

/* The host's memory from /proc/meminfo: all of it, and what is in use (all but MemAvailable),
 * i.e. what a placement can still count on, whatever the sandboxes' limits say. */
static void host_memory(int64_t *total, int64_t *used)
{
    *total = *used = 0;
    FILE *f = fopen("/proc/meminfo", "r");
    if (f == NULL)
        return;
    char line[128];
    long long kb, total_kb = -1, avail_kb = -1;
    while (fgets(line, sizeof(line), f) != NULL) {
        if (sscanf(line, "MemTotal: %lld kB", &kb) == 1)
            total_kb = kb;
        else if (sscanf(line, "MemAvailable: %lld kB", &kb) == 1)
            avail_kb = kb;
    }
    fclose(f);
    if (total_kb > 0 && avail_kb >= 0 && avail_kb <= total_kb) {
        *total = total_kb * 1024;
        *used = (total_kb - avail_kb) * 1024;
    }
}

static void current_load(srv *s, moat_node_load *load)
{
    load->slots_total = s->cfg.max_sessions;
    int64_t sessions = moat__metrics_sessions(s->metrics);
    load->slots_used = sessions > 0 ? sessions : 0;
    host_memory(&load->memory_total_bytes, &load->memory_used_bytes);
    /* Read under the pool's own lock, as Health does: no engine call on the loop. */
    moat_pool_stats pool = {0};
    if (s->rt != NULL && s->rt_ops->pool_stats != NULL)
        s->rt_ops->pool_stats(s->rt, &pool);
    load->pool_ready = pool.ready;
}

/* A lease not yet swept for: the node's first, or a new incarnation after its lease was lost;
 * the sessions of older ones stop (docs/CLUSTER.md, "Faults"). */
static void sweep_if_new(srv *s, int64_t lease)
{
    if (lease != 0 && lease != s->cluster->lease_swept) {
        s->cluster->lease_swept = lease;
        moat__cluster_sweep(s, lease);
    }
}

static void on_load_timer(uv_timer_t *t)
{
    srv *s = t->data;
    moat_node_load load;
    current_load(s, &load);
    moat_membership_set_load(s->cluster->m, &load);
    int64_t lease = moat_membership_lease(s->cluster->m);
    if (lease != 0 && lease != s->cluster->lease_saved)
        lease_save(s, lease);
    sweep_if_new(s, lease);
}

moat_etcd *moat__cluster_etcd(srv *s)
{
    return s->cluster != NULL ? s->cluster->etcd : NULL;
}

int64_t moat__cluster_lease(srv *s)
{
    return s->cluster != NULL ? moat_membership_lease(s->cluster->m) : 0;
}

moat_code moat__cluster_members(srv *s, moat_node **nodes, size_t *count, moat_status *st)
{
    srv_cluster *c = s->cluster;
    *nodes = NULL;
    *count = 0;
    pthread_mutex_lock(&c->members_mu);
    bool fresh = c->members_at_ms != 0 && moat__now_ms() - c->members_at_ms < 1000;
    if (fresh && c->nmembers > 0 && (*nodes = malloc(c->nmembers * sizeof(**nodes))) != NULL) {
        memcpy(*nodes, c->members, c->nmembers * sizeof(**nodes));
        *count = c->nmembers;
    }
    pthread_mutex_unlock(&c->members_mu);
    if (*nodes != NULL)
        return MOAT_CODE_OK;
    size_t skipped;
    moat_code code = moat_cluster_nodes(c->etcd, nodes, count, &skipped, st);
    if (code != MOAT_CODE_OK || *count == 0)
        return code;
    moat_node *copy = malloc(*count * sizeof(*copy));
    if (copy == NULL)
        return MOAT_CODE_OK;
    memcpy(copy, *nodes, *count * sizeof(*copy));
    pthread_mutex_lock(&c->members_mu);
    free(c->members);
    c->members = copy;
    c->nmembers = *count;
    c->members_at_ms = moat__now_ms();
    pthread_mutex_unlock(&c->members_mu);
    return MOAT_CODE_OK;
}

moat_err moat__cluster_start(srv *s)
{
    if (s->cfg.cluster_etcd_endpoints[0] == '\0')
        return MOAT_OK;
    const char *eps[MOAT_SERVER_MAX_IMAGES];
    size_t n;
    char *buf;
    moat_status st;
    moat_status_clear(&st);
    srv_cluster *c = calloc(1, sizeof(*c));
    if (c == NULL ||
        moat_server_split_images(s->cfg.cluster_etcd_endpoints, eps, &n, &buf) != MOAT_OK) {
        free(c);
        return MOAT_E_NOMEM;
    }
    moat_etcd_config ecfg = {.endpoints = eps,
                             .endpoint_count = n,
                             .tls = {s->cfg.cluster_etcd_tls_ca, s->cfg.cluster_etcd_tls_cert,
                                     s->cfg.cluster_etcd_tls_key}};
    c->etcd = moat_etcd_open(&ecfg, &st);
    free(buf);
    moat_membership_config mcfg = {c->etcd,
                                   s->cfg.cluster_node_id,
                                   s->cfg.cluster_advertise,
                                   s->cfg.cluster_lease_ttl_seconds,
                                   {0},
                                   0};
    current_load(s, &mcfg.load);
    mcfg.resume_lease = lease_load(s);
    c->m = c->etcd != NULL ? moat_membership_start(&mcfg, &st) : NULL;
    if (c->m == NULL) {
        moat_log(MOAT_LOG_ERROR, "cluster_join_failed", "node=%s code=%s reason=%s msg=\"%s\"",
                 s->cfg.cluster_node_id, moat_code_name(st.code), st.reason, st.message);
        moat_etcd_close(c->etcd);
        free(c);
        return MOAT_E_REMOTE;
    }
    pthread_mutex_init(&c->members_mu, NULL);
    /* Without it ListSessions asks etcd every time, which still works, more slowly. */
    c->dir = moat_dircache_start(c->etcd);
    if (c->dir == NULL)
        moat_log(MOAT_LOG_WARN, "directory_cache_not_started", "%s", "");
    moat_janitor_config jcfg = {c->etcd, c->m, s->cfg.cluster_node_id,
                                (int64_t)s->cfg.cluster_janitor_grace_seconds * 1000};
    c->janitor = moat_janitor_start(&jcfg);
    if (c->janitor == NULL)
        moat_log(MOAT_LOG_WARN, "janitor_not_started", "%s", "");
    c->upkeep = moat__upkeep_start(s, c->etcd);
    if (c->upkeep == NULL)
        moat_log(MOAT_LOG_WARN, "cluster_upkeep_not_started", "%s", "");
    c->renewals = moat_renewals_open(c->etcd, s->cfg.cluster_node_id);
    if (c->renewals != NULL)
        moat_renewals_observe(c->renewals, moat__metrics_renew_batch, s->metrics);
    uv_timer_init(s->loop, &c->load_timer);
    c->load_timer.data = s;
    uv_timer_start(&c->load_timer, on_load_timer, 1000, 1000);
    uv_unref((uv_handle_t *)&c->load_timer);
    s->cluster = c;
    /* Started fenced (etcd unreachable), it has none yet: the saved one may still be resumed. */
    if (moat_membership_lease(c->m) != 0)
        lease_save(s, moat_membership_lease(c->m));
    sweep_if_new(s, moat_membership_lease(c->m));
    return MOAT_OK;
}

bool moat__cluster_fenced(srv *s)
{
    return s->cluster != NULL && !moat_membership_live(s->cluster->m);
}

cluster_upkeep *moat__cluster_upkeep(srv *s)
{
    return s->cluster != NULL ? s->cluster->upkeep : NULL;
}

moat_renewals *moat__cluster_renewals(srv *s)
{
    return s->cluster != NULL ? s->cluster->renewals : NULL;
}

moat_dircache *moat__cluster_dircache(srv *s)
{
    return s->cluster != NULL ? s->cluster->dir : NULL;
}

static void on_timer_closed(uv_handle_t *h)
{
    srv_cluster *c = h->data;
    pthread_mutex_destroy(&c->members_mu);
    free(c->members);
    free(c);
}

void moat__cluster_stop(srv *s)
{
    srv_cluster *c = s->cluster;
    if (c == NULL)
        return;
    /* Revoking the lease takes the node out of the cluster at once; nothing is left to resume. */
    moat_janitor_stop(c->janitor); /* before the membership it stands for election with */
    moat__upkeep_stop(c->upkeep);  /* its writer uses etcd */
    moat_membership_stop(c->m);
    moat_dircache_stop(c->dir);
    lease_save(s, 0);
    s->cluster = NULL;
    moat_renewals_close(c->renewals);
    moat_etcd_close(c->etcd);
    c->load_timer.data = c;
    uv_close((uv_handle_t *)&c->load_timer, on_timer_closed);
}
