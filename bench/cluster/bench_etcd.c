/* bench/cluster: what moat's cluster mode asks of etcd, through its JSON gateway, on a
 * three-member etcd on loopback started here (data under /tmp): the latency (p50, p99) of one
 * call of each kind moat makes, one at a time from one thread, of listing 100 node
 * records, puts per second from 8 threads at once, and how long after a node is SIGKILLed
 * it drops out of the member list. docs/CLUSTER.md's capacity model uses these
 * figures. */
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <curl/curl.h>

#include "cluster/membership.h"
#include "etcd_cluster.h"

#define ROUNDS 1000

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void report(const char *what, uint64_t *ns, size_t n)
{
    qsort(ns, n, sizeof(*ns), cmp_u64);
    printf("%-34s p50 %7.3f ms  p99 %7.3f ms  (%zu calls)\n", what, (double)ns[n / 2] / 1e6,
           (double)ns[n * 99 / 100] / 1e6, n);
}

static void must(moat_code code, const moat_status *st)
{
    if (code != MOAT_CODE_OK) {
        fprintf(stderr, "bench_etcd: %s %s\n", st->reason, st->message);
        exit(1);
    }
}

#define THREADS    8
#define PER_THREAD 500

static moat_etcd *shared;
static etcd_cluster c;

static void stop_cluster(void)
{
    etcd_cluster_stop(&c);
}

/* Distinct keys, as distinct chats' creates are. */
static void *writer(void *arg)
{
    int t = (int)(intptr_t)arg;
    char key[64];
    for (int i = 0; i < PER_THREAD; i++) {
        snprintf(key, sizeof(key), "/bench/par/%d/%d", t, i);
        moat_etcd_result r;
        moat_status st;
        must(moat_etcd_put(shared, moat_slice_str(key), moat_slice_str("v"), 0, &r, &st), &st);
    }
    return NULL;
}

/* A node in a child process, SIGKILLed once listed: how long after the kill its record goes,
 * which is when the cluster counts it out (its lease's TTL, plus etcd's expiry sweep). */
static double drop_out_s(moat_etcd *e, const etcd_cluster *cluster, int64_t ttl_s)
{
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        moat_etcd_config cfg = {.endpoints = cluster->urls,
                                .endpoint_count = ETCD_CLUSTER_MEMBERS,
                                .connect_timeout_ms = 500,
                                .request_timeout_ms = 1000};
        moat_status st;
        moat_etcd *own = moat_etcd_open(&cfg, &st);
        moat_membership_config mcfg = {own, "doomed", "127.0.0.1:1", ttl_s, {1, 0, 1, 0, 0}, 0};
        if (own == NULL || moat_membership_start(&mcfg, &st) == NULL)
            _exit(1);
        for (;;)
            pause();
    }
    while (!etcd_cluster_lists_node(e, "doomed", NULL))
        etcd_cluster_sleep_ms(10);
    uint64_t t0 = moat_time_mono_ns();
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    while (etcd_cluster_lists_node(e, "doomed", NULL))
        etcd_cluster_sleep_ms(10);
    return (double)(moat_time_mono_ns() - t0) / 1e9;
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_ALL);
    if (!etcd_cluster_available()) {
        fprintf(stderr, "bench_etcd: etcd is not installed (apt-get install etcd-server)\n");
        return 1;
    }
    /* Every way out, a failed call's exit included, removes the cluster's directory. */
    atexit(stop_cluster);
    if (etcd_cluster_start(&c, NULL, 60) != 0) {
        fprintf(stderr, "bench_etcd: etcd did not start\n");
        return 1;
    }
    moat_etcd_config cfg = {.endpoints = c.urls,
                            .endpoint_count = ETCD_CLUSTER_MEMBERS,
                            .connect_timeout_ms = 500,
                            .request_timeout_ms = 3000};
    moat_status st;
    moat_etcd *e = moat_etcd_open(&cfg, &st);
    static uint64_t ns[ROUNDS];
    moat_etcd_result r;
    char key[64], value[MOAT_NODE_VALUE_MAX];

    for (int i = 0; i < ROUNDS; i++) {
        uint64_t t0 = moat_time_mono_ns();
        must(moat_etcd_put(e, moat_slice_str("/bench/put"), moat_slice_str("v"), 0, &r, &st), &st);
        ns[i] = moat_time_mono_ns() - t0;
    }
    report("put", ns, ROUNDS);

    for (int i = 0; i < ROUNDS; i++) {
        uint64_t t0 = moat_time_mono_ns();
        must(moat_etcd_range(e, moat_slice_str("/bench/put"), false, 0, &r, &st), &st);
        ns[i] = moat_time_mono_ns() - t0;
        moat_etcd_result_free(&r);
    }
    report("range, one key (linearizable)", ns, ROUNDS);

    /* The chat key's transaction: create if absent, else read the holder. */
    for (int i = 0; i < ROUNDS; i++) {
        snprintf(key, sizeof(key), "/bench/chats/%08d", i);
        moat_slice k = moat_slice_str(key);
        moat_etcd_cmp absent = {k, MOAT_ETCD_CREATE_REVISION, MOAT_ETCD_EQUAL, 0};
        moat_etcd_op put = {MOAT_ETCD_OP_PUT, k, moat_slice_str("session"), 0, false};
        moat_etcd_op get = {MOAT_ETCD_OP_RANGE, k, {NULL, 0}, 0, false};
        moat_etcd_txn_spec txn = {&absent, 1, &put, 1, &get, 1};
        uint64_t t0 = moat_time_mono_ns();
        must(moat_etcd_txn(e, &txn, &r, &st), &st);
        ns[i] = moat_time_mono_ns() - t0;
        moat_etcd_result_free(&r);
    }
    report("txn, chat key create-if-absent", ns, ROUNDS);

    must(moat_etcd_lease_grant(e, 5, &r, &st), &st);
    int64_t lease = r.lease_id;
    for (int i = 0; i < ROUNDS; i++) {
        uint64_t t0 = moat_time_mono_ns();
        must(moat_etcd_lease_keepalive(e, lease, &r, &st), &st);
        ns[i] = moat_time_mono_ns() - t0;
    }
    report("lease keepalive", ns, ROUNDS);

    for (int i = 0; i < ROUNDS; i++) {
        uint64_t t0 = moat_time_mono_ns();
        must(moat_etcd_lease_grant(e, 5, &r, &st), &st);
        ns[i] = moat_time_mono_ns() - t0;
        must(moat_etcd_lease_revoke(e, r.lease_id, &r, &st), &st);
    }
    report("lease grant", ns, ROUNDS);

    /* 100 node records, listed. */
    for (int i = 0; i < 100; i++) {
        moat_node n = {0};
        snprintf(n.id, sizeof(n.id), "node-%03d", i);
        snprintf(n.address, sizeof(n.address), "10.0.%d.%d:7070", i / 250, i % 250 + 1);
        n.load = (moat_node_load){1000, i * 7, 64LL << 30, (int64_t)i << 28, 0};
        moat_node_key(n.id, key, sizeof(key));
        size_t len = moat_node_encode(&n, value, sizeof(value));
        must(moat_etcd_put(e, moat_slice_str(key), (moat_slice){(uint8_t *)value, len}, 0, &r, &st),
             &st);
    }
    for (int i = 0; i < ROUNDS; i++) {
        moat_node *nodes;
        size_t count;
        uint64_t t0 = moat_time_mono_ns();
        must(moat_cluster_nodes(e, &nodes, &count, NULL, &st), &st);
        ns[i] = moat_time_mono_ns() - t0;
        if (count != 100) {
            fprintf(stderr, "bench_etcd: listed %zu nodes, not 100\n", count);
            return 1;
        }
        free(nodes);
    }
    report("member list, 100 nodes", ns, ROUNDS);
    printf("node record: %zu bytes of value\n", strlen(value));

    shared = e;
    pthread_t th[THREADS];
    uint64_t t0 = moat_time_mono_ns();
    for (int t = 0; t < THREADS; t++)
        pthread_create(&th[t], NULL, writer, (void *)(intptr_t)t);
    for (int t = 0; t < THREADS; t++)
        pthread_join(th[t], NULL);
    double s = (double)(moat_time_mono_ns() - t0) / 1e9;
    printf("puts from %d threads at once: %.0f a second (%d in %.2f s)\n", THREADS,
           THREADS * PER_THREAD / s, THREADS * PER_THREAD, s);

    for (int i = 0; i < 3; i++)
        printf("a SIGKILLed node (lease TTL 5 s) out of the list after %.2f s\n",
               drop_out_s(e, &c, 5));

    moat_etcd_close(e);
    curl_global_cleanup();
    return 0;
}
