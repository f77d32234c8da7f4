/* bench/cluster: issue #16's create figures on real parts: a three-member etcd on loopback,
 * two moatd cluster nodes (A, B) and one moatd alone (the baseline), all on the shared dockerd
 * with their own instances and name prefixes and the same sandbox settings.
 *
 * - CreateSession through a non-owner: creates of new chats sent to A, alternated with creates
 *   sent to the lone moatd in the same run; those that A placed on B (forwarded) are the
 *   figure, those it kept are shown too. Each session is stopped before the next create.
 * - From a node's death to a create for one of its chats succeeding elsewhere: a chat placed on
 *   B, B SIGKILLed, creates of that chat sent to A every 20 ms until one succeeds (B is then
 *   started again on its state dir for the next round).
 * - `bench_place tti` instead: time to interactive (CreateSession of a new chat, then `echo hi`
 *   in it to its exit, on a connection to the owner already open) through cluster nodes, with
 *   and without a warm pool, in the same run: node A without a pool, node W with one of
 *   TTI_POOL. Each round, alternated: a chat homed on A created through A (cold, the baseline),
 *   one homed on W created through W (placed there, from the pool), and one homed on W created
 *   through A (forwarded to W, from the pool). The home (homes/<chat>, which placement prefers)
 *   is written before each create, untimed; each session is stopped after its round, untimed,
 *   so W's pool refills between rounds as it would in use. With MOAT_BENCH_LOG_DIR set, A's and
 *   W's logs are copied there. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/wait.h>

#include <curl/curl.h>

#include "bench_stats.h"
#include "etcd_cluster.h"
#include "harness.h"
#include "cluster/records.h"
#include "moat/v1/health.pb-c.h"
#include "moat/v1/sandbox.pb-c.h"

#define TOKEN      "bench-place-token"
#define ROUNDS     60
#define DEATHS     3
#define TTL_S      5
#define TTI_ROUNDS 60
#define TTI_POOL   8

static etcd_cluster cl;
static moat_etcd *etcd;
static moatd_proc lone, a, b, w;
static char b_dir[256];

static int cmp_u64(const void *x, const void *y)
{
    uint64_t p = *(const uint64_t *)x, q = *(const uint64_t *)y;
    return p < q ? -1 : p > q;
}

static double p50_ms(uint64_t *ns, size_t n)
{
    if (n == 0)
        return 0;
    qsort(ns, n, sizeof(*ns), cmp_u64);
    return (double)ns[n / 2] / 1e6;
}

static void cleanup(void)
{
    moatd_proc *all[] = {&lone, &a, &b, &w};
    for (int i = 0; i < 4; i++) {
        if (all[i]->pid != 0)
            moatd_stop(all[i]);
        if (all[i]->state_dir[0] != '\0')
            moatd_remove_dir(all[i]->state_dir);
    }
    if (b_dir[0] != '\0')
        moatd_remove_dir(b_dir);
    char prefix[64];
    const char *names[] = {"l", "a", "b", "w"};
    for (int i = 0; i < 4; i++) {
        snprintf(prefix, sizeof(prefix), "mbp%d%s-", (int)getpid(), names[i]);
        docker_remove_prefixed(prefix);
    }
    etcd_cluster_close(&cl, &etcd);
}

static void die(const char *why)
{
    fprintf(stderr, "bench_place: %s\n", why);
    cleanup();
    exit(1);
}

/* name: "l" (alone), "a", "b" or "w" (cluster nodes; "w" with a warm pool of TTI_POOL). */
static void start(moatd_proc *p, const char *name, const char *state_dir)
{
    char eps[300], id[64], inst[64], prefix[80], dir[300], pool[40];
    snprintf(pool, sizeof(pool), "--pool_size=%d", strcmp(name, "w") == 0 ? TTI_POOL : 0);
    snprintf(eps, sizeof(eps), "--cluster_etcd_endpoints=%s,%s,%s", cl.urls[0], cl.urls[1],
             cl.urls[2]);
    snprintf(id, sizeof(id), "--cluster_node_id=mbp%d-%s", (int)getpid(), name);
    snprintf(inst, sizeof(inst), "--instance=mbp%d%s", (int)getpid(), name);
    snprintf(prefix, sizeof(prefix), "--container_name_prefix=mbp%d%s-", (int)getpid(), name);
    snprintf(dir, sizeof(dir), "--state_dir=%s", state_dir != NULL ? state_dir : "");
    const char *alone[] = {inst, prefix, "--token=" TOKEN, "--workspace_quota=false", NULL};
    const char *member[] = {inst,
                            prefix,
                            "--token=" TOKEN,
                            "--workspace_quota=false",
                            eps,
                            id,
                            "--cluster_advertise=127.0.0.1:%PORT%",
                            pool,
                            state_dir != NULL ? dir : NULL,
                            NULL};
    if (!moatd_start(p, true, strcmp(name, "l") == 0 ? alone : member))
        die("a moatd did not start");
    if (strcmp(name, "l") != 0) {
        char node_id[64];
        snprintf(node_id, sizeof(node_id), "mbp%d-%s", (int)getpid(), name);
        for (int i = 0; i < 600 && !etcd_cluster_lists_node(etcd, node_id, NULL); i++)
            etcd_cluster_sleep_ms(50);
        if (!etcd_cluster_lists_node(etcd, node_id, NULL))
            die("a node did not join");
    }
}

typedef raw_created created;

/* An empty owner_address is the node that answered: it holds the session. */
static created create(const moatd_proc *p, const char *chat, uint64_t *took_ns)
{
    created c = raw_create(p->port, TOKEN, chat, false, took_ns);
    if (c.code == 0 && c.owner[0] == '\0')
        snprintf(c.owner, sizeof(c.owner), "127.0.0.1:%d", p->port);
    return c;
}

static void stop(const moatd_proc *p, const char *sid)
{
    raw_conn *c = raw_connect_ready(p->port, TOKEN);
    if (c == NULL)
        die("no connection for a stop");
    Moat__V1__StopSessionRequest req = MOAT__V1__STOP_SESSION_REQUEST__INIT;
    req.session_id = (char *)sid;
    if (raw_unary(c, "/moat.v1.Sandboxes/StopSession", &req.base, NULL, NULL, NULL, 0) != 0)
        die("a stop failed");
    raw_close(c);
}

static bool owned_by(const created *c, const moatd_proc *p)
{
    char addr[64];
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", p->port);
    return strcmp(c->owner, addr) == 0;
}

static void bench_creates(void)
{
    uint64_t alone_ns[ROUNDS], fwd_ns[ROUNDS], kept_ns[ROUNDS];
    size_t nalone = 0, nfwd = 0, nkept = 0;
    for (int i = 0; i < ROUNDS; i++) {
        char chat[MOAT_UUID_STR_LEN];
        uint64_t ns;
        moat_uuid_generate(chat);
        created c = create(&lone, chat, &ns);
        if (c.code != 0)
            die("a create on the lone moatd failed");
        alone_ns[nalone++] = ns;
        stop(&lone, c.session_id);
        moat_uuid_generate(chat);
        c = create(&a, chat, &ns);
        if (c.code != 0)
            die("a create through node A failed");
        if (owned_by(&c, &b))
            fwd_ns[nfwd++] = ns;
        else
            kept_ns[nkept++] = ns;
        stop(owned_by(&c, &b) ? &b : &a, c.session_id);
    }
    double base = p50_ms(alone_ns, nalone), fwd = p50_ms(fwd_ns, nfwd),
           kept = p50_ms(kept_ns, nkept);
    printf("create p50, moatd alone (baseline)          %8.1f ms  (%zu)\n", base, nalone);
    printf("create p50, through A placed on B (forward) %8.1f ms  (%zu)  %.2fx\n", fwd, nfwd,
           base > 0 ? fwd / base : 0);
    printf("create p50, through A placed on A           %8.1f ms  (%zu)  %.2fx\n", kept, nkept,
           base > 0 ? kept / base : 0);
}

static void bench_deaths(void)
{
    for (int round = 0; round < DEATHS; round++) {
        char chat[MOAT_UUID_STR_LEN];
        created c = {-1, "", "", ""};
        for (int tries = 0; tries < 50 && !owned_by(&c, &b); tries++) {
            if (c.code == 0)
                stop(&a, c.session_id);
            moat_uuid_generate(chat);
            c = create(&a, chat, NULL);
            if (c.code != 0)
                die("a create through node A failed");
        }
        if (!owned_by(&c, &b))
            die("no create landed on B");
        /* B's state dir is the one it first ran on; a restarted B's own holds only its log. */
        bool restarted = b_dir[0] != '\0';
        if (!restarted)
            snprintf(b_dir, sizeof(b_dir), "%s", b.state_dir);
        uint64_t t0 = moat_time_mono_ns();
        kill(b.pid, SIGKILL);
        waitpid(b.pid, NULL, 0);
        b.pid = 0;
        created again = {-1, "", "", ""};
        while (again.code != 0 && moat_time_mono_ns() - t0 < 60ull * 1000000000u) {
            again = create(&a, chat, NULL);
            if (again.code != 0) {
                struct timespec ts = {0, 20 * 1000000L};
                nanosleep(&ts, NULL);
            }
        }
        uint64_t took = moat_time_mono_ns() - t0;
        if (again.code != 0)
            die("the chat was not placed again within 60 s");
        printf("death of B to a create of its chat on A     %8.1f ms  (lease TTL %d s; target "
               "<= %d ms)\n",
               (double)took / 1e6, TTL_S, TTL_S * 1000 + 1000);
        stop(&a, again.session_id);
        /* B again, on its state dir: a new incarnation, which stops the old session. */
        if (restarted)
            moatd_remove_dir(b.state_dir);
        start(&b, "b", b_dir);
    }
}

static void node_id_of(const char *name, char out[MOAT_NODE_ID_MAX])
{
    snprintf(out, MOAT_NODE_ID_MAX, "mbp%d-%s", (int)getpid(), name);
}

/* homes/<chat> = node name's id, as an end on that node writes it. */
static void put_home(const char *chat, const char *name)
{
    char key[MOAT_RECORD_KEY_MAX], id[MOAT_NODE_ID_MAX], val[MOAT_NODE_ID_MAX + 64];
    node_id_of(name, id);
    moat_home_record_key(chat, key, sizeof(key));
    moat_home_record_encode(id, val, sizeof(val));
    moat_etcd_result res;
    moat_status st;
    if (moat_etcd_put(etcd, moat_slice_str(key), moat_slice_str(val), 0, &res, &st) != MOAT_CODE_OK)
        die("etcd refused a home");
    moat_etcd_result_free(&res);
}

/* Health's pool_ready of p, or -1. */
static int pool_ready(const moatd_proc *p)
{
    raw_conn *c = raw_connect_ready(p->port, TOKEN);
    if (c == NULL)
        return -1;
    Moat__V1__HealthCheckRequest req = MOAT__V1__HEALTH_CHECK_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    int code = raw_unary(c, "/moat.v1.Health/Check", &req.base,
                         &moat__v1__health_check_response__descriptor, &resp, NULL, 0);
    raw_close(c);
    int ready =
        code == 0 && resp != NULL ? (int)((Moat__V1__HealthCheckResponse *)resp)->pool_ready : -1;
    if (resp != NULL)
        protobuf_c_message_free_unpacked(resp, NULL);
    return ready;
}

/* One create of a new chat homed on home, sent to via, then `echo hi` in it on the owner's open
 * connection: the time in ms (connections excluded), *pooled whether the owner's log says it
 * came from its pool. */
static double tti_once(const moatd_proc *via, const char *home, raw_conn *const conns[2],
                       bool *pooled)
{
    char chat[MOAT_UUID_STR_LEN];
    moat_uuid_generate(chat);
    put_home(chat, home);
    uint64_t create_ns;
    created c = create(via, chat, &create_ns);
    if (c.code != 0)
        die("a create for the tti failed");
    const moatd_proc *owner = owned_by(&c, &w) ? &w : &a;
    uint64_t t0 = moat_time_mono_ns();
    if (raw_run_many(conns[owner == &w], c.session_id, "echo hi", 1, 1, NULL, NULL) != 1)
        die("echo hi failed in a new session");
    double took = (double)(create_ns + (moat_time_mono_ns() - t0)) / 1e6;
    char line[120];
    snprintf(line, sizeof(line), "event=pool_slot_claimed session_id=%s", c.session_id);
    *pooled = moatd_log_contains(owner, line);
    stop(owner, c.session_id);
    return took;
}

static void bench_tti(void)
{
    raw_conn *conns[2] = {raw_connect_ready(a.port, TOKEN), raw_connect_ready(w.port, TOKEN)};
    if (conns[0] == NULL || conns[1] == NULL)
        die("no connection for the tti");
    for (int i = 0; i < 2400 && pool_ready(&w) < TTI_POOL; i++)
        etcd_cluster_sleep_ms(50);
    if (pool_ready(&w) < TTI_POOL)
        die("W's pool did not fill in 120 s");
    static double ms[3][TTI_ROUNDS];
    int pooled[3] = {0, 0, 0};
    const moatd_proc *via[3] = {&a, &w, &a};
    const char *home[3] = {"a", "w", "w"};
    for (int i = 0; i < TTI_ROUNDS; i++) {
        for (int k = 0; k < 3; k++) {
            bool p = false;
            ms[k][i] = tti_once(via[k], home[k], conns, &p);
            pooled[k] += p;
        }
    }
    const char *what[3] = {"through A, placed on A, no pool (baseline)",
                           "through W, placed on W, warm pool        ",
                           "through A, forwarded to W, warm pool     "};
    double base50 = bench_percentile(ms[0], TTI_ROUNDS, 0.5),
           base95 = bench_percentile(ms[0], TTI_ROUNDS, 0.95);
    for (int k = 0; k < 3; k++) {
        double p50 = bench_percentile(ms[k], TTI_ROUNDS, 0.5),
               p95 = bench_percentile(ms[k], TTI_ROUNDS, 0.95);
        printf("tti %s p50 %7.1f ms (%.3fx)  p95 %7.1f ms (%.3fx)  from the pool %d of %d\n",
               what[k], p50, base50 > 0 ? p50 / base50 : 0, p95, base95 > 0 ? p95 / base95 : 0,
               pooled[k], TTI_ROUNDS);
    }
    raw_close(conns[0]);
    raw_close(conns[1]);
    /* Where a create's time went, from the nodes' own log lines (session_created, and
     * pool_slot_claimed's parts), for whoever asks. */
    const char *keep = getenv("MOAT_BENCH_LOG_DIR");
    char cmd[1024];
    snprintf(cmd, sizeof(cmd), "cp %s %s/bench_place_a.log && cp %s %s/bench_place_w.log",
             a.log_path, keep, w.log_path, keep);
    if (keep != NULL && system(cmd) != 0)
        printf("the logs were not copied to %s\n", keep);
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    curl_global_init(CURL_GLOBAL_ALL);
    bool tti = argc > 1 && strcmp(argv[1], "tti") == 0;
    if (argc > 1 && !tti) {
        fprintf(stderr, "usage: bench_place [tti]\n");
        return 2;
    }
    if (etcd_cluster_open(&cl, NULL, &etcd, 1000, 60) != 0 || etcd == NULL)
        die("etcd did not start (is etcd-server installed?)");
    if (tti) {
        start(&a, "a", NULL);
        start(&w, "w", NULL);
        bench_tti();
        cleanup();
        curl_global_cleanup();
        return 0;
    }
    start(&lone, "l", NULL);
    start(&a, "a", NULL);
    start(&b, "b", NULL);
    bench_creates();
    bench_deaths();
    cleanup();
    curl_global_cleanup();
    return 0;
}
