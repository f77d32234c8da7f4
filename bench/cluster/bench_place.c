/* bench/cluster: issue #16's create figures on real parts: a three-member etcd on loopback,
 * two moatd cluster nodes (A, B) and one moatd alone (the baseline), all on the shared dockerd
 * with their own instances and name prefixes and the same sandbox settings.
 *
 * - CreateSession through a non-owner: creates of new chats sent to A, alternated with creates
 *   sent to the lone moatd in the same run; those that A placed on B (forwarded) are the
 *   figure, those it kept are shown too. Each session is stopped before the next create.
 * - From a node's death to a create for one of its chats succeeding elsewhere: a chat placed on
 *   B, B SIGKILLed, creates of that chat sent to A every 20 ms until one succeeds (B is then
 *   started again on its state dir for the next round). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/wait.h>

#include <curl/curl.h>

#include "etcd_cluster.h"
#include "harness.h"
#include "moat/v1/sandbox.pb-c.h"

#define TOKEN  "bench-place-token"
#define ROUNDS 60
#define DEATHS 3
#define TTL_S  5

static etcd_cluster cl;
static moat_etcd *etcd;
static moatd_proc lone, a, b;
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
    moatd_proc *all[] = {&lone, &a, &b};
    for (int i = 0; i < 3; i++) {
        if (all[i]->pid != 0)
            moatd_stop(all[i]);
        if (all[i]->state_dir[0] != '\0')
            moatd_remove_dir(all[i]->state_dir);
    }
    if (b_dir[0] != '\0')
        moatd_remove_dir(b_dir);
    char prefix[64];
    const char *names[] = {"l", "a", "b"};
    for (int i = 0; i < 3; i++) {
        snprintf(prefix, sizeof(prefix), "mbp%d%s-", (int)getpid(), names[i]);
        docker_remove_prefixed(prefix);
    }
    etcd_cluster_close(&cl, etcd);
}

static void die(const char *why)
{
    fprintf(stderr, "bench_place: %s\n", why);
    cleanup();
    exit(1);
}

/* name: "l" (alone), "a" or "b" (cluster nodes). */
static void start(moatd_proc *p, const char *name, const char *state_dir)
{
    char eps[300], id[64], inst[64], prefix[80], dir[300];
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

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    curl_global_init(CURL_GLOBAL_ALL);
    if (etcd_cluster_open(&cl, NULL, &etcd, 1000, 60) != 0 || etcd == NULL)
        die("etcd did not start (is etcd-server installed?)");
    start(&lone, "l", NULL);
    start(&a, "a", NULL);
    start(&b, "b", NULL);
    bench_creates();
    bench_deaths();
    cleanup();
    curl_global_cleanup();
    return 0;
}
