/* What following session_moved costs libmoat (issue #16: once a client has followed a redirect,
 * its calls within 0.1 ms of calls made to the owner directly, p50; the redirected call itself at
 * most one extra round trip plus a connection). Two fake nodes on loopback (tests/client's
 * fake_cluster, one server thread in this process): A ends every call for the session
 * session_moved to B, B answers Files/Stat.
 *
 * Series, interleaved call by call so that the machine's noise falls on each alike:
 *   direct     a client seeded at B: one Stat on its connection
 *   followed   a client seeded at A that has followed once: one Stat (it goes straight to B)
 *   redirected a new client seeded at A, its first Stat (A, then a connection to B, then B)
 *   connect    a new client to B: connect + Hello (the "plus a connection" of the budget)
 * and the budget for redirected: connect + 2 × direct (a round trip to A, the call at B). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fake_cluster.h"
#include "bench_stats.h"
#include "moat/client.h"

#define SESSION "9f1c2d3e-4b5a-4c6d-8e7f-0a1b2c3d4e5f"

static const moat_client_options opts = {.token = "tok", .client_name = "bench-follow"};

static double one_stat(moat_client *c)
{
    moat_file_info fi;
    moat_status st;
    double t0 = bench_now_us();
    if (moat_file_stat(c, SESSION, "/f", 5000, &fi, &st) != MOAT_OK) {
        fprintf(stderr, "bench_follow: stat: %s (%s)\n", st.message, st.reason);
        exit(1);
    }
    return bench_now_us() - t0;
}

static moat_client *connect_to(const char *addr, double *took)
{
    moat_client *c;
    moat_status st;
    double t0 = bench_now_us();
    if (moat_client_connect(addr, &opts, &c, &st) != MOAT_OK) {
        fprintf(stderr, "bench_follow: connect %s: %s\n", addr, st.message);
        exit(1);
    }
    if (took)
        *took = bench_now_us() - t0;
    return c;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 2000;
    int fresh = argc > 2 ? atoi(argv[2]) : 300;
    if (n < 10 || fresh < 10) {
        fprintf(stderr, "usage: bench_follow [CALLS >= 10] [NEW_CLIENTS >= 10]\n");
        return 2;
    }
    fake_cluster *f = fake_cluster_start(2);
    if (f == NULL)
        return 1;
    fake_node *a = fake_cluster_node(f, 0), *b = fake_cluster_node(f, 1);
    fake_cluster_lock(f);
    snprintf(a->moved_to, sizeof a->moved_to, "%s", b->addr);
    fake_cluster_unlock(f);

    double *direct = calloc((size_t)n, sizeof(double));
    double *followed = calloc((size_t)n, sizeof(double));
    double *redirected = calloc((size_t)fresh, sizeof(double));
    double *connect = calloc((size_t)fresh, sizeof(double));
    moat_client *to_b = connect_to(b->addr, NULL);
    moat_client *via_a = connect_to(a->addr, NULL);
    one_stat(to_b);
    one_stat(via_a); /* follows once; from here on its calls go to B */
    for (int i = 0; i < n; i++) {
        direct[i] = one_stat(to_b);
        followed[i] = one_stat(via_a);
    }
    for (int i = 0; i < fresh; i++) {
        moat_client *c = connect_to(b->addr, &connect[i]);
        moat_client_close(c);
        c = connect_to(a->addr, NULL);
        redirected[i] = one_stat(c);
        moat_client_close(c);
    }
    double d50 = bench_percentile(direct, n, 0.5), f50 = bench_percentile(followed, n, 0.5);
    double r50 = bench_percentile(redirected, fresh, 0.5),
           c50 = bench_percentile(connect, fresh, 0.5);
    printf("calls to the owner, p50 (p99), %d each, interleaved:\n", n);
    printf("  direct (seeded at the owner)    %7.1f us (%7.1f)\n", d50,
           bench_percentile(direct, n, 0.99));
    printf("  after following (seeded at A)   %7.1f us (%7.1f)   difference %+.1f us\n", f50,
           bench_percentile(followed, n, 0.99), f50 - d50);
    printf("a new client's first call, p50 (p99), %d each:\n", fresh);
    printf("  redirected (A, connect B, B)    %7.1f us (%7.1f)\n", r50,
           bench_percentile(redirected, fresh, 0.99));
    printf("  connect + Hello to B            %7.1f us (%7.1f)\n", c50,
           bench_percentile(connect, fresh, 0.99));
    printf("  budget: connect + 2 x direct    %7.1f us   redirected / budget %.2f\n", c50 + 2 * d50,
           r50 / (c50 + 2 * d50));
    moat_client_close(to_b);
    moat_client_close(via_a);
    free(direct);
    free(followed);
    free(redirected);
    free(connect);
    return fake_cluster_stop(f) ? 0 : 1;
}
