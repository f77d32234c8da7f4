/* bench/cluster: writing session ends to etcd (docs/CLUSTER.md, "Reaping"), on a three-member
 * etcd on loopback started here. Each round puts 2 x ENDS running records of one node with
 * their chat keys, then ends ENDS of them one at a time (moat_dir_end: what a node does while
 * etcd answers, and did for every end before kept ends were batched) and ENDS in batches
 * (moat_dir_end_batch: how kept ends are written once etcd answers again), the two series in
 * turn, each round starting with the other. Then, with every member stopped (SIGSTOP: a
 * connection is accepted and nothing answers), how long one moat_dir_end takes to fail: what
 * each end of a reaper cost before ends were kept.
 *
 * Renewals (docs/CLUSTER.md, "Renewals"): N threads at once each renew RENEWS records of their
 * own one after another, every renewal its own read and transaction (moat_dir_renew: what a node
 * did before renewals were batched) and through one batcher (moat_renewals: what moatd's workers
 * do now), the two in turn in each round: renewals a second and etcd calls a second. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include <pthread.h>

#include "cluster/directory.h"
#include "cluster/renewals.h"
#include "etcd_cluster.h"

#define ENDS   200
#define ROUNDS 5
#define NODE   "bench-ends"
/* Renewals: each thread's, and the thread counts measured. */
#define RENEWS       20
#define RENEWERS_MAX 64
static const int renewers[] = {1, 8, 64};

static etcd_cluster c;
static moat_etcd *etcd;

static void die(const char *what, const moat_status *st)
{
    fprintf(stderr, "bench_ends: %s: %s %s\n", what, st->reason, st->message);
    etcd_cluster_close(&c, &etcd);
    exit(1);
}

/* n running records of NODE, each with its chat key, 20 to a transaction; ids into sids. */
static void put_sessions(char (*sids)[MOAT_UUID_STR_LEN], size_t n)
{
    enum { PER_TXN = 20 };
    static char keys[2 * PER_TXN][MOAT_RECORD_KEY_MAX], values[2 * PER_TXN][MOAT_RECORD_VALUE_MAX];
    for (size_t done = 0; done < n;) {
        moat_etcd_op ops[2 * PER_TXN];
        size_t k = 0;
        for (; k < PER_TXN && done + k < n; k++) {
            moat_session_record r;
            memset(&r, 0, sizeof(r));
            moat_uuid_generate(sids[done + k]);
            snprintf(r.session_id, sizeof(r.session_id), "%s", sids[done + k]);
            moat_uuid_generate(r.chat_id);
            snprintf(r.node_id, sizeof(r.node_id), "%s", NODE);
            snprintf(r.address, sizeof(r.address), "127.0.0.1:1");
            snprintf(r.image, sizeof(r.image), "moat-sandbox:latest");
            r.node_lease = 1;
            r.state = MOAT_RECORD_RUNNING;
            r.created_at_ms = moat_time_now_ms();
            r.expires_at_ms = r.created_at_ms + 600000;
            moat_chat_record ch;
            memset(&ch, 0, sizeof(ch));
            snprintf(ch.chat_id, sizeof(ch.chat_id), "%s", r.chat_id);
            snprintf(ch.session_id, sizeof(ch.session_id), "%s", r.session_id);
            snprintf(ch.node_id, sizeof(ch.node_id), "%s", NODE);
            size_t rk = moat_session_record_key(r.session_id, keys[2 * k], MOAT_RECORD_KEY_MAX);
            size_t rv = moat_session_record_encode(&r, values[2 * k], MOAT_RECORD_VALUE_MAX);
            size_t ck = moat_chat_record_key(r.chat_id, keys[2 * k + 1], MOAT_RECORD_KEY_MAX);
            size_t cv = moat_chat_record_encode(&ch, values[2 * k + 1], MOAT_RECORD_VALUE_MAX);
            ops[2 * k] = (moat_etcd_op){MOAT_ETCD_OP_PUT,
                                        {(const uint8_t *)keys[2 * k], rk},
                                        {(const uint8_t *)values[2 * k], rv},
                                        0,
                                        false};
            ops[2 * k + 1] = (moat_etcd_op){MOAT_ETCD_OP_PUT,
                                            {(const uint8_t *)keys[2 * k + 1], ck},
                                            {(const uint8_t *)values[2 * k + 1], cv},
                                            0,
                                            false};
        }
        moat_etcd_txn_spec txn = {NULL, 0, ops, 2 * k, NULL, 0};
        moat_etcd_result res;
        moat_status st;
        if (moat_etcd_txn(etcd, &txn, &res, &st) != MOAT_CODE_OK)
            die("put", &st);
        moat_etcd_result_free(&res);
        done += k;
    }
}

/* Seconds to end sids one at a time. */
static double one_by_one(char (*sids)[MOAT_UUID_STR_LEN], size_t n)
{
    uint64_t t0 = moat_time_mono_ns();
    for (size_t i = 0; i < n; i++) {
        bool ended;
        moat_status st;
        if (moat_dir_end(etcd, sids[i], NODE, moat_time_now_ms(), "ttl", &ended, &st) !=
                MOAT_CODE_OK ||
            !ended)
            die("end", &st);
    }
    return (double)(moat_time_mono_ns() - t0) / 1e9;
}

/* Seconds to end sids in batches, as the writer of kept ends does. */
static double batched(char (*sids)[MOAT_UUID_STR_LEN], size_t n)
{
    static moat_dir_end_item items[ENDS];
    for (size_t i = 0; i < n; i++) {
        snprintf(items[i].session_id, sizeof(items[i].session_id), "%.36s", sids[i]);
        snprintf(items[i].reason, sizeof(items[i].reason), "ttl");
        items[i].ended_at_ms = moat_time_now_ms();
    }
    uint64_t t0 = moat_time_mono_ns();
    for (size_t at = 0; at < n;) {
        size_t k = n - at < MOAT_DIR_END_BATCH ? n - at : MOAT_DIR_END_BATCH;
        bool done[MOAT_DIR_END_BATCH];
        moat_status st;
        if (moat_dir_end_batch(etcd, NODE, &items[at], k, done, &st) != MOAT_CODE_OK)
            die("batch", &st);
        for (size_t i = 0; i < k; i++) {
            if (!done[i])
                die("batch left one", &st);
        }
        at += k;
    }
    return (double)(moat_time_mono_ns() - t0) / 1e9;
}

/* One renewing thread: RENEWS renewals of its own records, directly or through ren. */
typedef struct renewer {
    pthread_t t;
    char (*sids)[MOAT_UUID_STR_LEN];
    moat_renewals *ren; /* NULL: moat_dir_renew */
    bool failed;
} renewer;

static void *renew_thread(void *arg)
{
    renewer *w = arg;
    for (size_t i = 0; i < RENEWS && !w->failed; i++) {
        bool owned = false, ended;
        moat_status st;
        int64_t at = moat_time_now_ms() + 600000;
        moat_code code = w->ren != NULL
                             ? moat_renewals_renew(w->ren, w->sids[i], at, &owned, &ended, &st)
                             : moat_dir_renew(etcd, w->sids[i], NODE, at, &owned, &st);
        w->failed = code != MOAT_CODE_OK || !owned;
    }
    return NULL;
}

/* Seconds for n threads to renew RENEWS records each (sids holds n * RENEWS), through ren or
 * (NULL) one at a time. */
static double renew_series(char (*sids)[MOAT_UUID_STR_LEN], int n, moat_renewals *ren)
{
    renewer w[RENEWERS_MAX];
    uint64_t t0 = moat_time_mono_ns();
    for (int i = 0; i < n; i++) {
        w[i] = (renewer){.sids = &sids[(size_t)i * RENEWS], .ren = ren};
        if (pthread_create(&w[i].t, NULL, renew_thread, &w[i]) != 0) {
            moat_status st = {.reason = "pthread_create"};
            die("renewer", &st);
        }
    }
    bool failed = false;
    for (int i = 0; i < n; i++) {
        pthread_join(w[i].t, NULL);
        failed = failed || w[i].failed;
    }
    double secs = (double)(moat_time_mono_ns() - t0) / 1e9;
    if (failed) {
        moat_status st = {.reason = "a renewal failed"};
        die("renew", &st);
    }
    return secs;
}

/* Each thread count in turn: one at a time (2 etcd calls a renewal: the read and the txn)
 * against batched, in the order the round gives. */
static void renewals(int round)
{
    static char sids[RENEWERS_MAX * RENEWS][MOAT_UUID_STR_LEN];
    for (size_t k = 0; k < sizeof(renewers) / sizeof(renewers[0]); k++) {
        int n = renewers[k];
        size_t total = (size_t)n * RENEWS;
        put_sessions(sids, total);
        moat_renewals *ren = moat_renewals_open(etcd, NODE);
        if (ren == NULL) {
            moat_status st = {.reason = "out_of_memory"};
            die("renewals", &st);
        }
        double single, batch;
        if (round % 2 == 0) {
            single = renew_series(sids, n, NULL);
            batch = renew_series(sids, n, ren);
        } else {
            batch = renew_series(sids, n, ren);
            single = renew_series(sids, n, NULL);
        }
        moat_renewals_stats s = moat_renewals_stats_get(ren);
        moat_renewals_close(ren);
        printf("round %d, %2d renewers: one at a time %6.0f renewals/s (%6.0f etcd calls/s, %6.0f "
               "writes/s); batched %6.0f renewals/s (%6.0f etcd calls/s, %5.0f batches/s, %.1f a "
               "batch) %.2fx\n",
               round + 1, n, (double)total / single, 2.0 * (double)total / single,
               (double)total / single, (double)total / batch, (double)s.etcd_calls / batch,
               (double)s.batches / batch, (double)s.renewals / (double)s.batches, single / batch);
    }
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_ALL);
    if (!etcd_cluster_available()) {
        fprintf(stderr, "bench_ends: etcd is not installed\n");
        return 1;
    }
    /* 3 s an exchange, as moatd's client (500 ms to connect where moatd gives 1 s). */
    if (etcd_cluster_open(&c, NULL, &etcd, 3000, 60) != 0 || etcd == NULL)
        return 1;
    static char a[ENDS][MOAT_UUID_STR_LEN], b[ENDS][MOAT_UUID_STR_LEN];
    printf("%d ends a series, %d rounds\n", ENDS, ROUNDS);
    for (int r = 0; r < ROUNDS; r++) {
        put_sessions(a, ENDS);
        put_sessions(b, ENDS);
        double single, batch;
        if (r % 2 == 0) {
            single = one_by_one(a, ENDS);
            batch = batched(b, ENDS);
        } else {
            batch = batched(b, ENDS);
            single = one_by_one(a, ENDS);
        }
        printf("round %d: one at a time %.3f ms an end, batched %.3f ms an end (%.3fx)\n", r + 1,
               single * 1e3 / ENDS, batch * 1e3 / ENDS, batch / single);
    }
    for (int r = 0; r < ROUNDS; r++)
        renewals(r);
    /* Every member stopped: the time one end takes to fail. */
    for (int m = 0; m < ETCD_CLUSTER_MEMBERS; m++)
        kill(c.pid[m], SIGSTOP);
    char sid[MOAT_UUID_STR_LEN];
    moat_uuid_generate(sid);
    bool ended;
    moat_status st;
    uint64_t t0 = moat_time_mono_ns();
    moat_code code = moat_dir_end(etcd, sid, NODE, moat_time_now_ms(), "ttl", &ended, &st);
    double hung = (double)(moat_time_mono_ns() - t0) / 1e9;
    for (int m = 0; m < ETCD_CLUSTER_MEMBERS; m++)
        kill(c.pid[m], SIGCONT);
    printf("members stopped: one end failed %s (%s) after %.2f s\n", moat_code_name(code),
           st.reason, hung);
    etcd_cluster_close(&c, &etcd);
    curl_global_cleanup();
    return 0;
}
