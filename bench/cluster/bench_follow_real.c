/* bench_follow's two figures (issue #16: once a client has followed a redirect, its calls within
 * 0.1 ms of calls made to the owner directly, p50; the redirected call itself at most one extra
 * round trip plus a connection) on real parts: a three-member etcd on loopback and two moatd
 * cluster nodes on the shared dockerd (their own instances and container name prefixes), one
 * real session created through the first node. O is the node that holds it, N the other; the
 * call is Files/Stat of /tmp, which reaches the session's execd on O.
 *
 * Series, interleaved call by call, each iteration starting with the next series in turn, so
 * that the machine's noise and a call's wake-up after another node's work fall on each alike:
 *   direct     a libmoat client seeded at O: one Stat
 *   followed   a client seeded at N that has followed once: one Stat (it goes straight to O)
 *   moved      a raw Stat on a client seeded at N (raw calls are never followed): N's
 *              session_moved answer, which reads the record from etcd
 * and then, per new client, the redirected call and its budget's parts, in turn likewise:
 *   redirected a new client seeded at N, its first Stat (N, a connection to O, the Stat at O)
 *   moved      a new client seeded at N, its first call raw: the "one extra round trip"
 *   connect    connect + Hello to O: the "plus a connection"
 *   first      a new client seeded at O, its first Stat: the call itself, as the redirected
 *              call makes it, a new connection's first
 *   direct     a Stat on the client seeded at O: the call on a connection in use
 * with the budget for redirected moved + connect + first (p50s), and beside it moved + connect +
 * direct. The redirected call's hop at N is a new connection's first call, so moved is one too.
 * Those parts are skewed (etcd's reads behind moved above all), and the p50 of a sum of skewed
 * parts is above the sum of their p50s, so the p50 of each new client's own three parts added
 * (same iteration) is printed too: the budget as the redirected call meets it.
 *
 * SIGINT, SIGTERM and SIGHUP stop the series at the next call; the nodes, their containers, the
 * etcd members and the temp dirs are removed on every way out but SIGKILL. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

#include "etcd_cluster.h"
#include "harness.h"
#include "bench_stats.h"
#include "moat/client.h"

#define TOKEN "bench-follow-token"
#define PATH  "/tmp"

static etcd_cluster cl;
static moat_etcd *etcd;
static moatd_proc node[2];
static const char *const names[2] = {"a", "b"};
static volatile sig_atomic_t stopping;

static void on_signal(int sig)
{
    (void)sig;
    stopping = 1;
}

static void cleanup(void)
{
    for (int i = 0; i < 2; i++) {
        if (node[i].pid != 0)
            moatd_stop(&node[i]);
        if (node[i].state_dir[0] != '\0')
            moatd_remove_dir(node[i].state_dir);
        node[i].pid = 0;
        node[i].state_dir[0] = '\0';
        char prefix[64];
        snprintf(prefix, sizeof(prefix), "mbf%d%s-", (int)getpid(), names[i]);
        docker_remove_prefixed(prefix);
    }
    etcd_cluster_close(&cl, &etcd);
    etcd = NULL;
}

static void die(const char *why)
{
    fprintf(stderr, "bench_follow_real: %s\n", why);
    cleanup();
    exit(1);
}

static void check_signal(void)
{
    if (stopping)
        die("interrupted; cleaned up");
}

/* The records carry the address clients dial, so each node advertises the port it listens on. */
static void start(int i)
{
    char eps[300], id[64], inst[64], prefix[80];
    snprintf(eps, sizeof(eps), "--cluster_etcd_endpoints=%s,%s,%s", cl.urls[0], cl.urls[1],
             cl.urls[2]);
    snprintf(id, sizeof(id), "--cluster_node_id=mbf%d-%s", (int)getpid(), names[i]);
    snprintf(inst, sizeof(inst), "--instance=mbf%d%s", (int)getpid(), names[i]);
    snprintf(prefix, sizeof(prefix), "--container_name_prefix=mbf%d%s-", (int)getpid(), names[i]);
    const char *args[] = {inst,
                          prefix,
                          "--token=" TOKEN,
                          "--workspace_quota=false",
                          eps,
                          id,
                          "--cluster_advertise=127.0.0.1:%PORT%",
                          NULL};
    if (!moatd_start(&node[i], true, args))
        die("a moatd did not start");
    char node_id[64];
    snprintf(node_id, sizeof(node_id), "mbf%d-%s", (int)getpid(), names[i]);
    for (int k = 0; k < 600 && !etcd_cluster_lists_node(etcd, node_id, NULL); k++) {
        check_signal();
        etcd_cluster_sleep_ms(50);
    }
    if (!etcd_cluster_lists_node(etcd, node_id, NULL))
        die("a node did not join");
}

static const moat_client_options opts = {.token = TOKEN, .client_name = "bench-follow-real"};

static moat_client *connect_to(int port, double *took)
{
    char addr[64];
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", port);
    moat_client *c;
    moat_status st;
    double t0 = bench_now_us();
    if (moat_client_connect(addr, &opts, &c, &st) != MOAT_OK) {
        fprintf(stderr, "bench_follow_real: connect %s: %s\n", addr, st.message);
        die("a connect failed");
    }
    if (took)
        *took = bench_now_us() - t0;
    return c;
}

static double one_stat(moat_client *c, const char *sid)
{
    moat_file_info fi;
    moat_status st;
    double t0 = bench_now_us();
    if (moat_file_stat(c, sid, PATH, 10000, &fi, &st) != MOAT_OK) {
        fprintf(stderr, "bench_follow_real: stat: %s (%s)\n", st.message, st.reason);
        die("a stat failed");
    }
    return bench_now_us() - t0;
}

/* StatRequest{session_id = 1, path = 2}, encoded by hand: the raw call takes protobuf bytes. */
static size_t stat_request(uint8_t *out, const char *sid)
{
    size_t n = 0, ls = strlen(sid), lp = strlen(PATH);
    out[n++] = 0x0a;
    out[n++] = (uint8_t)ls;
    memcpy(out + n, sid, ls);
    n += ls;
    out[n++] = 0x12;
    out[n++] = (uint8_t)lp;
    memcpy(out + n, PATH, lp);
    return n + lp;
}

/* A non-owner's answer: the Stat sent raw, which ends session_moved and is not followed. */
static double one_moved(moat_client *c, const uint8_t *req, size_t len)
{
    uint8_t resp[256];
    size_t got;
    moat_status st;
    double t0 = bench_now_us();
    moat_err e = moat_client_unary(c, "/moat.v1.Files/Stat", 10000, (moat_slice){req, len}, resp,
                                   sizeof(resp), &got, &st);
    double took = bench_now_us() - t0;
    if (e != MOAT_E_REMOTE || strcmp(st.reason, "session_moved") != 0)
        die("the non-owner did not answer session_moved");
    return took;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 2000;
    int fresh = argc > 2 ? atoi(argv[2]) : 300;
    if (n < 10 || fresh < 10) {
        fprintf(stderr, "usage: bench_follow_real [CALLS >= 10] [NEW_CLIENTS >= 10]\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    /* No SA_RESTART: a wait in progress returns early and the loop sees the flag. */
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    curl_global_init(CURL_GLOBAL_ALL);
    if (etcd_cluster_open(&cl, NULL, &etcd, 1000, 60) != 0 || etcd == NULL)
        die("etcd did not start (is etcd-server installed?)");
    check_signal();
    start(0);
    start(1);

    char chat[MOAT_UUID_STR_LEN];
    moat_uuid_generate(chat);
    raw_created s = raw_create(node[0].port, TOKEN, chat, false, NULL);
    if (s.code != 0)
        die("the create failed");
    /* An empty owner is the node that answered. */
    char a_addr[64];
    snprintf(a_addr, sizeof(a_addr), "127.0.0.1:%d", node[0].port);
    int o = s.owner[0] == '\0' || strcmp(s.owner, a_addr) == 0 ? 0 : 1;
    moatd_proc *owner = &node[o], *other = &node[1 - o];
    printf("session %s on node %s (created through node a)\n", s.session_id, names[o]);

    double *direct = calloc((size_t)n, sizeof(double));
    double *followed = calloc((size_t)n, sizeof(double));
    double *moved = calloc((size_t)n, sizeof(double));
    double *redirected = calloc((size_t)fresh, sizeof(double));
    double *fresh_moved = calloc((size_t)fresh, sizeof(double));
    double *connect = calloc((size_t)fresh, sizeof(double));
    double *fresh_direct = calloc((size_t)fresh, sizeof(double));
    double *first = calloc((size_t)fresh, sizeof(double));
    double *parts = calloc((size_t)fresh, sizeof(double));
    if (!direct || !followed || !moved || !redirected || !fresh_moved || !connect ||
        !fresh_direct || !first || !parts)
        die("out of memory");
    uint8_t req[128];
    size_t req_len = stat_request(req, s.session_id);
    moat_client *to_o = connect_to(owner->port, NULL);
    moat_client *via_n = connect_to(other->port, NULL);
    moat_client *raw_n = connect_to(other->port, NULL);
    one_stat(to_o, s.session_id);
    one_stat(via_n, s.session_id); /* follows once; from here on its calls go to O */
    one_moved(raw_n, req, req_len);
    for (int i = 0; i < n; i++) {
        check_signal();
        for (int k = 0; k < 3; k++) {
            switch ((i + k) % 3) {
            case 0:
                direct[i] = one_stat(to_o, s.session_id);
                break;
            case 1:
                followed[i] = one_stat(via_n, s.session_id);
                break;
            default:
                moved[i] = one_moved(raw_n, req, req_len);
            }
        }
    }
    for (int i = 0; i < fresh; i++) {
        check_signal();
        for (int k = 0; k < 5; k++) {
            moat_client *c;
            switch ((i + k) % 5) {
            case 0:
                c = connect_to(other->port, NULL);
                redirected[i] = one_stat(c, s.session_id);
                moat_client_close(c);
                break;
            case 1:
                c = connect_to(other->port, NULL);
                fresh_moved[i] = one_moved(c, req, req_len);
                moat_client_close(c);
                break;
            case 2:
                moat_client_close(connect_to(owner->port, &connect[i]));
                break;
            case 3:
                c = connect_to(owner->port, NULL);
                first[i] = one_stat(c, s.session_id);
                moat_client_close(c);
                break;
            default:
                fresh_direct[i] = one_stat(to_o, s.session_id);
            }
        }
    }
    moat_client_close(to_o);
    moat_client_close(via_n);
    moat_client_close(raw_n);

    /* Before pct sorts the parts: each client's own three. */
    for (int i = 0; i < fresh; i++)
        parts[i] = fresh_moved[i] + connect[i] + first[i];
    double d50 = bench_percentile(direct, n, 0.5), f50 = bench_percentile(followed, n, 0.5),
           m50 = bench_percentile(moved, n, 0.5);
    double r50 = bench_percentile(redirected, fresh, 0.5),
           fm50 = bench_percentile(fresh_moved, fresh, 0.5);
    double c50 = bench_percentile(connect, fresh, 0.5),
           fd50 = bench_percentile(fresh_direct, fresh, 0.5);
    double parts50 = bench_percentile(parts, fresh, 0.5);
    double first50 = bench_percentile(first, fresh, 0.5);
    double budget = fm50 + c50 + first50, warm = fm50 + c50 + fd50;
    double load[3] = {0, 0, 0};
    FILE *la = fopen("/proc/loadavg", "r");
    if (la != NULL) {
        if (fscanf(la, "%lf %lf %lf", &load[0], &load[1], &load[2]) != 3)
            load[0] = -1;
        fclose(la);
    }
    printf("Files/Stat %s on a real session, p50 (p99), %d each, interleaved:\n", PATH, n);
    printf("  direct (seeded at the owner)       %8.1f us (%8.1f)\n", d50,
           bench_percentile(direct, n, 0.99));
    printf("  after following (seeded elsewhere) %8.1f us (%8.1f)   difference %+.1f us\n", f50,
           bench_percentile(followed, n, 0.99), f50 - d50);
    printf("  session_moved from the non-owner  %8.1f us (%8.1f)\n", m50,
           bench_percentile(moved, n, 0.99));
    printf("a new client's first call, p50 (p99), %d each, in turn:\n", fresh);
    printf("  redirected (N, connect O, O)       %8.1f us (%8.1f)\n", r50,
           bench_percentile(redirected, fresh, 0.99));
    printf("  session_moved, a new client at N   %8.1f us (%8.1f)\n", fm50,
           bench_percentile(fresh_moved, fresh, 0.99));
    printf("  connect + Hello to O               %8.1f us (%8.1f)\n", c50,
           bench_percentile(connect, fresh, 0.99));
    printf("  first Stat of a new client at O    %8.1f us (%8.1f)\n", first50,
           bench_percentile(first, fresh, 0.99));
    printf("  a Stat at O, connection in use     %8.1f us (%8.1f)\n", fd50,
           bench_percentile(fresh_direct, fresh, 0.99));
    printf("  budget: moved + connect + first    %8.1f us   redirected / budget %.2f (%+.1f us)\n",
           budget, r50 / budget, r50 - budget);
    printf("  with the call in use instead       %8.1f us   redirected / that   %.2f (%+.1f us)\n",
           warm, r50 / warm, r50 - warm);
    printf("  p50 of each client's three parts   %8.1f us   redirected / that   %.2f (%+.1f us)\n",
           parts50, r50 / parts50, r50 - parts50);
    printf("host load average %.2f %.2f %.2f\n", load[0], load[1], load[2]);
    free(direct);
    free(followed);
    free(moved);
    free(redirected);
    free(fresh_moved);
    free(connect);
    free(fresh_direct);
    free(first);
    free(parts);
    cleanup();
    curl_global_cleanup();
    return 0;
}
