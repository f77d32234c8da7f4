/* Prometheus text metrics of one server on a loopback port, served by libmicrohttpd on its
 * own thread with epoll or poll, never select: moatd holds thousands of descriptors, and
 * select cannot watch one numbered past FD_SETSIZE (1024). Counters are C11 atomics updated from
 * the loop and from the runtime's threads. */
#include <microhttpd.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server_internal.h"

static const double create_buckets[] = {0.1, 0.25, 0.5, 1, 2, 5, 10, 30};
#define NBUCKETS (sizeof(create_buckets) / sizeof(create_buckets[0]))

struct moat_metrics {
    atomic_int_fast64_t connections;
    atomic_int_fast64_t pending_hellos;
    atomic_uint_fast64_t hello_failed, hello_throttled, hello_evicted, hello_timeout;
    atomic_int_fast64_t active_streams;
    atomic_uint_fast64_t bytes_streamed;
    atomic_uint_fast64_t status_count[MOAT_CODE_COUNT];
    atomic_int_fast64_t live_sessions;
    atomic_uint_fast64_t create_bucket[NBUCKETS + 1];
    atomic_uint_fast64_t create_sum_us;
    atomic_uint_fast64_t create_count;
    atomic_uint_fast64_t reaper_expired, reaper_gone, reaper_adopted;
    /* The memory budget, copied from the loop (which alone touches the budget). */
    /* Cluster mode: renewal batches (cluster/renewals.h) and the ends cluster_sweep.c keeps
     * while etcd does not answer. */
    atomic_uint_fast64_t renewals, renewal_batches, renewal_etcd_calls;
    atomic_int_fast64_t ends_kept;
    atomic_uint_fast64_t ends_written, ends_dropped;
    atomic_uint_fast64_t budget_cap, budget_used, budget_pinned, budget_peak, budget_dropped,
        budget_refused;
    struct MHD_Daemon *daemon;
};

moat_metrics *moat__metrics_new(void)
{
    moat_metrics *m = calloc(1, sizeof(*m));
    if (m == NULL)
        return NULL;
    atomic_init(&m->connections, 0);
    atomic_init(&m->pending_hellos, 0);
    atomic_init(&m->active_streams, 0);
    atomic_init(&m->ends_kept, 0);
    return m;
}

void moat__metrics_free(moat_metrics *m)
{
    if (m == NULL)
        return;
    moat__metrics_stop(m);
    free(m);
}

void moat__metrics_conn(moat_metrics *m, int delta)
{
    atomic_fetch_add(&m->connections, delta);
}

void moat__metrics_pending_hello(moat_metrics *m, int delta)
{
    atomic_fetch_add(&m->pending_hellos, delta);
}

void moat__metrics_hello_refused(moat_metrics *m, const char *why)
{
    if (strcmp(why, "failed") == 0)
        atomic_fetch_add(&m->hello_failed, 1);
    else if (strcmp(why, "throttled") == 0)
        atomic_fetch_add(&m->hello_throttled, 1);
    else if (strcmp(why, "evicted") == 0)
        atomic_fetch_add(&m->hello_evicted, 1);
    else if (strcmp(why, "timeout") == 0)
        atomic_fetch_add(&m->hello_timeout, 1);
}

void moat__metrics_stream(moat_metrics *m, int delta)
{
    atomic_fetch_add(&m->active_streams, delta);
}

void moat__metrics_status(moat_metrics *m, moat_code code)
{
    if ((unsigned)code < MOAT_CODE_COUNT)
        atomic_fetch_add(&m->status_count[code], 1);
}

void moat__metrics_bytes(moat_metrics *m, uint64_t n)
{
    atomic_fetch_add(&m->bytes_streamed, n);
}

void moat__metrics_sessions_set(moat_metrics *m, int64_t n)
{
    atomic_store(&m->live_sessions, n);
}

void moat__metrics_session_delta(moat_metrics *m, int delta)
{
    if (atomic_fetch_add(&m->live_sessions, delta) + delta < 0)
        atomic_store(&m->live_sessions, 0);
}

int64_t moat__metrics_sessions(moat_metrics *m)
{
    return atomic_load(&m->live_sessions);
}

void moat__metrics_create_latency(moat_metrics *m, uint64_t ns)
{
    double s = (double)ns / 1e9;
    size_t i = 0;
    while (i < NBUCKETS && s > create_buckets[i])
        i++;
    atomic_fetch_add(&m->create_bucket[i], 1);
    atomic_fetch_add(&m->create_sum_us, ns / 1000u);
    atomic_fetch_add(&m->create_count, 1);
}

void moat__metrics_reaper(moat_metrics *m, const char *action)
{
    if (strcmp(action, "expired") == 0)
        atomic_fetch_add(&m->reaper_expired, 1);
    else if (strcmp(action, "gone") == 0)
        atomic_fetch_add(&m->reaper_gone, 1);
    else if (strcmp(action, "adopted") == 0)
        atomic_fetch_add(&m->reaper_adopted, 1);
}

void moat__metrics_renew_batch(void *m, size_t renewals, size_t etcd_calls)
{
    moat_metrics *mm = m;
    atomic_fetch_add(&mm->renewals, renewals);
    atomic_fetch_add(&mm->renewal_batches, 1);
    atomic_fetch_add(&mm->renewal_etcd_calls, etcd_calls);
}

void moat__metrics_ends_kept(moat_metrics *m, size_t kept)
{
    atomic_store(&m->ends_kept, (int_fast64_t)kept);
}

void moat__metrics_ends_written(moat_metrics *m, size_t n)
{
    atomic_fetch_add(&m->ends_written, n);
}

void moat__metrics_end_dropped(moat_metrics *m)
{
    atomic_fetch_add(&m->ends_dropped, 1);
}

void moat__metrics_budget(moat_metrics *m, const moat_bridge_budget *b)
{
    atomic_store(&m->budget_cap, b->cap);
    atomic_store(&m->budget_used, b->used);
    atomic_store(&m->budget_pinned, b->pinned);
    atomic_store(&m->budget_peak, b->peak);
    atomic_store(&m->budget_dropped, b->dropped_bytes);
    atomic_store(&m->budget_refused, b->refused);
}

/* Writes the page to f (an open_memstream per scrape). */
static void render(moat_metrics *m, FILE *f)
{
    fprintf(f,
            "# HELP moat_live_sessions Sandbox sessions with a running container.\n"
            "# TYPE moat_live_sessions gauge\nmoat_live_sessions %lld\n",
            (long long)atomic_load(&m->live_sessions));
    fprintf(f,
            "# HELP moat_connections Open client connections.\n"
            "# TYPE moat_connections gauge\nmoat_connections %lld\n",
            (long long)atomic_load(&m->connections));
    fprintf(f,
            "# HELP moat_pending_hellos Connections that have not completed their hello.\n"
            "# TYPE moat_pending_hellos gauge\nmoat_pending_hellos %lld\n",
            (long long)atomic_load(&m->pending_hellos));
    fprintf(f,
            "# HELP moat_hellos_refused_total Connections closed before their hello succeeded.\n"
            "# TYPE moat_hellos_refused_total counter\n"
            "moat_hellos_refused_total{reason=\"failed\"} %llu\n"
            "moat_hellos_refused_total{reason=\"throttled\"} %llu\n"
            "moat_hellos_refused_total{reason=\"evicted\"} %llu\n"
            "moat_hellos_refused_total{reason=\"timeout\"} %llu\n",
            (unsigned long long)atomic_load(&m->hello_failed),
            (unsigned long long)atomic_load(&m->hello_throttled),
            (unsigned long long)atomic_load(&m->hello_evicted),
            (unsigned long long)atomic_load(&m->hello_timeout));
    fprintf(f,
            "# HELP moat_active_streams Calls in progress.\n"
            "# TYPE moat_active_streams gauge\nmoat_active_streams %lld\n",
            (long long)atomic_load(&m->active_streams));
    fprintf(f,
            "# HELP moat_streamed_bytes_total Response message bytes sent to clients.\n"
            "# TYPE moat_streamed_bytes_total counter\nmoat_streamed_bytes_total %llu\n",
            (unsigned long long)atomic_load(&m->bytes_streamed));
    fprintf(f, "# HELP moat_calls_total Calls ended, by status code.\n"
               "# TYPE moat_calls_total counter\n");
    for (int i = 0; i < MOAT_CODE_COUNT; i++)
        fprintf(f, "moat_calls_total{code=\"%s\"} %llu\n", moat_code_name((moat_code)i),
                (unsigned long long)atomic_load(&m->status_count[i]));
    fprintf(f,
            "# HELP moat_create_session_seconds Time CreateSession took to get a ready sandbox.\n"
            "# TYPE moat_create_session_seconds histogram\n");
    unsigned long long cum = 0;
    for (size_t i = 0; i < NBUCKETS; i++) {
        cum += atomic_load(&m->create_bucket[i]);
        fprintf(f, "moat_create_session_seconds_bucket{le=\"%g\"} %llu\n", create_buckets[i], cum);
    }
    cum += atomic_load(&m->create_bucket[NBUCKETS]);
    fprintf(f, "moat_create_session_seconds_bucket{le=\"+Inf\"} %llu\n", cum);
    fprintf(f, "moat_create_session_seconds_sum %.6f\n",
            (double)atomic_load(&m->create_sum_us) / 1e6);
    fprintf(f, "moat_create_session_seconds_count %llu\n",
            (unsigned long long)atomic_load(&m->create_count));
    fprintf(f,
            "# HELP moat_reaper_actions_total Sessions the reaper and reconciliation acted on.\n"
            "# TYPE moat_reaper_actions_total counter\n"
            "moat_reaper_actions_total{action=\"expired\"} %llu\n"
            "moat_reaper_actions_total{action=\"gone\"} %llu\n"
            "moat_reaper_actions_total{action=\"adopted\"} %llu\n",
            (unsigned long long)atomic_load(&m->reaper_expired),
            (unsigned long long)atomic_load(&m->reaper_gone),
            (unsigned long long)atomic_load(&m->reaper_adopted));
    fprintf(f,
            "# HELP moat_cluster_renewals_total Renewals written to etcd in batches (cluster "
            "mode).\n"
            "# TYPE moat_cluster_renewals_total counter\nmoat_cluster_renewals_total %llu\n"
            "# HELP moat_cluster_renewal_batches_total Batches they went in: each one etcd write "
            "unless a record moved.\n"
            "# TYPE moat_cluster_renewal_batches_total counter\n"
            "moat_cluster_renewal_batches_total %llu\n"
            "# HELP moat_cluster_renewal_etcd_calls_total etcd calls the batches made, reads "
            "included.\n"
            "# TYPE moat_cluster_renewal_etcd_calls_total counter\n"
            "moat_cluster_renewal_etcd_calls_total %llu\n"
            "# HELP moat_cluster_ends_kept Session ends kept while etcd does not answer.\n"
            "# TYPE moat_cluster_ends_kept gauge\nmoat_cluster_ends_kept %lld\n"
            "# HELP moat_cluster_ends_written_total Kept ends the batch writer settled in etcd "
            "(written, or found needing none).\n"
            "# TYPE moat_cluster_ends_written_total counter\n"
            "moat_cluster_ends_written_total %llu\n"
            "# HELP moat_cluster_ends_dropped_total Ends past the bound of those kept, left to "
            "the sweep.\n"
            "# TYPE moat_cluster_ends_dropped_total counter\nmoat_cluster_ends_dropped_total "
            "%llu\n",
            (unsigned long long)atomic_load(&m->renewals),
            (unsigned long long)atomic_load(&m->renewal_batches),
            (unsigned long long)atomic_load(&m->renewal_etcd_calls),
            (long long)atomic_load(&m->ends_kept),
            (unsigned long long)atomic_load(&m->ends_written),
            (unsigned long long)atomic_load(&m->ends_dropped));
    fprintf(f,
            "# HELP moat_memory_budget_bytes memory_budget_bytes: the cap on output held.\n"
            "# TYPE moat_memory_budget_bytes gauge\nmoat_memory_budget_bytes %llu\n"
            "# HELP moat_memory_used_bytes Output held: replay rings and queues.\n"
            "# TYPE moat_memory_used_bytes gauge\nmoat_memory_used_bytes %llu\n"
            "# HELP moat_memory_pinned_bytes Of it, not yet delivered (cannot be dropped).\n"
            "# TYPE moat_memory_pinned_bytes gauge\nmoat_memory_pinned_bytes %llu\n"
            "# HELP moat_memory_peak_bytes Highest moat_memory_used_bytes since start.\n"
            "# TYPE moat_memory_peak_bytes gauge\nmoat_memory_peak_bytes %llu\n"
            "# HELP moat_memory_dropped_bytes_total Retained replay dropped to stay under the "
            "budget.\n"
            "# TYPE moat_memory_dropped_bytes_total counter\nmoat_memory_dropped_bytes_total "
            "%llu\n"
            "# HELP moat_memory_refused_total Streams refused with memory_budget_exhausted.\n"
            "# TYPE moat_memory_refused_total counter\nmoat_memory_refused_total %llu\n",
            (unsigned long long)atomic_load(&m->budget_cap),
            (unsigned long long)atomic_load(&m->budget_used),
            (unsigned long long)atomic_load(&m->budget_pinned),
            (unsigned long long)atomic_load(&m->budget_peak),
            (unsigned long long)atomic_load(&m->budget_dropped),
            (unsigned long long)atomic_load(&m->budget_refused));
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload,
                                  size_t *upload_size, void **req_cls)
{
    (void)version;
    (void)upload;
    (void)upload_size;
    (void)req_cls;
    struct MHD_Response *resp;
    unsigned code = MHD_HTTP_OK;
    if (strcmp(method, "GET") != 0 || strcmp(url, "/metrics") != 0) {
        static const char nf[] = "not found: GET /metrics\n";
        code = MHD_HTTP_NOT_FOUND;
        resp = MHD_create_response_from_buffer(sizeof(nf) - 1, (void *)nf, MHD_RESPMEM_PERSISTENT);
    } else {
        char *page = NULL;
        size_t n = 0;
        FILE *f = open_memstream(&page, &n);
        if (f == NULL)
            return MHD_NO;
        render(cls, f);
        fclose(f);
        resp = MHD_create_response_from_buffer(n, page, MHD_RESPMEM_MUST_FREE);
        MHD_add_response_header(resp, "Content-Type", "text/plain; version=0.0.4");
    }
    if (resp == NULL)
        return MHD_NO;
    enum MHD_Result r = MHD_queue_response(conn, code, resp);
    MHD_destroy_response(resp);
    return r;
}

moat_err moat__metrics_start(moat_metrics *m, const char *hostport)
{
    char host[256];
    uint16_t port;
    if (moat_server_split_hostport(hostport, host, sizeof(host), &port) != MOAT_OK)
        return MOAT_E_INVAL;
    struct sockaddr_in a4 = {0};
    struct sockaddr_in6 a6 = {0};
    const struct sockaddr *sa;
    unsigned flags = MHD_USE_AUTO_INTERNAL_THREAD | MHD_USE_ERROR_LOG;
    if (uv_ip4_addr(strcmp(host, "localhost") == 0 ? "127.0.0.1" : host, port, &a4) == 0) {
        sa = (const struct sockaddr *)&a4;
    } else if (uv_ip6_addr(host, port, &a6) == 0) {
        sa = (const struct sockaddr *)&a6;
        flags |= MHD_USE_IPv6;
    } else {
        return MOAT_E_INVAL;
    }
    m->daemon = MHD_start_daemon(flags, port, NULL, NULL, on_request, m, MHD_OPTION_SOCK_ADDR, sa,
                                 MHD_OPTION_CONNECTION_LIMIT, (unsigned)16,
                                 MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)10, MHD_OPTION_END);
    if (m->daemon == NULL)
        return MOAT_E_IO;
    moat_log(MOAT_LOG_INFO, "metrics_listening", "addr=%s", hostport);
    return MOAT_OK;
}

void moat__metrics_stop(moat_metrics *m)
{
    if (m->daemon != NULL)
        MHD_stop_daemon(m->daemon);
    m->daemon = NULL;
}
