/* bench_lockout: issue #12's pre-authentication attack against moatd and Docker, measured in the
 * same run. A client with the token opens a connection, says hello, creates a session for a new
 * chat and runs `echo hi` in it, first on an idle server, then while 1,100 silent connections
 * (reconnecting whenever closed) sit on 127.0.0.2 and wrong-token hellos run back to back from
 * 127.0.0.3 until at least 10,000 have been made. Target: each p50 under attack <= 2x its idle
 * p50. A silent connection moatd closes comes back 10 s after it was opened, as the issue's
 * attacker did; --reconnect-at-once brings it back at once, as fast as the attacker's CPU (on
 * the same host) allows.
 *
 * usage: bench_lockout [--quick] [--reconnect-at-once]   (needs dockerd, moat-sandbox:latest and
 * the execd bundle from scripts/build-sandbox-image.sh <build-dir>; env MOAT_BUILD_DIR = that build
 * dir). Every phase is bounded. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "attack.h"
#include "chaos_client.h"

#define TOKEN "bench-token"

static moatd_proc P;

static int cmp_ll(const void *a, const void *b)
{
    long long x = *(const long long *)a, y = *(const long long *)b;
    return x < y ? -1 : x > y;
}

static double p50(long long *v, int n)
{
    qsort(v, (size_t)n, sizeof(*v), cmp_ll);
    return (double)v[n / 2] / 1000.0;
}

static long long now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* One round: connect + hello + CreateSession (new chat) into *session_us, then `echo hi` into
 * *echo_us; the session is stopped outside the timing. False on any failure. */
static bool round_trip(long long *session_us, long long *echo_us)
{
    long long t0 = now_us();
    raw_conn *c = raw_connect(P.port);
    moat_frame f;
    if (c == NULL || raw_hello(c, TOKEN, &f) != 1 || f.kind != MOAT_FRAME_HELLO_ACK) {
        if (c != NULL)
            raw_close(c);
        return false;
    }
    char chat[MOAT_UUID_STR_LEN], sid[MOAT_UUID_STR_LEN], reason[64] = "", out[64];
    moat_uuid_generate(chat);
    bool ok = chaos_create(c, chat, sid, reason, sizeof(reason)) == MOAT_CODE_OK;
    long long t1 = now_us();
    int exit_code = -1;
    ok = ok && chaos_run(c, sid, "echo hi", out, sizeof(out), &exit_code) == MOAT_CODE_OK &&
         strcmp(out, "hi\n") == 0 && exit_code == 0;
    long long t2 = now_us();
    if (ok)
        chaos_stop(c, sid);
    raw_close(c);
    *session_us = t1 - t0;
    *echo_us = t2 - t1;
    return ok;
}

static long long metric(const char *name)
{
    char page[16384];
    if (!http_get(P.metrics_port, "/metrics", page, sizeof(page)))
        return -1;
    const char *at = strstr(page, name);
    return at != NULL ? strtoll(at + strlen(name), NULL, 10) : -1;
}

int main(int argc, char **argv)
{
    bool quick = false;
    int reconnect_ms = 10000;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0)
            quick = true;
        else if (strcmp(argv[i], "--reconnect-at-once") == 0)
            reconnect_ms = 0;
    }
    int rounds = quick ? 5 : 21;
    int silent = quick ? 200 : 1100;
    long long hellos_target = quick ? 1000 : 10000;
    struct rlimit lim;
    if (getrlimit(RLIMIT_NOFILE, &lim) == 0) {
        lim.rlim_cur = lim.rlim_max;
        setrlimit(RLIMIT_NOFILE, &lim);
    }
    char prefix[80], instance[64];
    snprintf(prefix, sizeof(prefix), "--container_name_prefix=moat-blk-%d-", (int)getpid());
    snprintf(instance, sizeof(instance), "--instance=blk-%d", (int)getpid());
    const char *extra[] = {"--token=" TOKEN, prefix, instance, "--log_level=warn", NULL};
    if (!moatd_start(&P, true, extra)) {
        fprintf(stderr, "moatd did not start\n");
        return 1;
    }
    long long *idle_s = calloc((size_t)rounds * 4, sizeof(long long));
    long long *idle_e = idle_s + rounds, *att_s = idle_s + 2 * rounds, *att_e = idle_s + 3 * rounds;
    int failures = 0;
    round_trip(&idle_s[0], &idle_e[0]); /* warm-up: the image's first use */
    for (int i = 0; i < rounds; i++)
        failures += !round_trip(&idle_s[i], &idle_e[i]);
    attack a;
    if (attack_start(&a, P.port, silent, reconnect_ms, "127.0.0.2", "127.0.0.3") != 0) {
        fprintf(stderr, "attack did not start\n");
        moatd_stop(&P);
        return 1;
    }
    /* On once moatd is evicting silent hellos and throttling the guesser (bounded: 30 s). */
    for (int i = 0; i < 300; i++) {
        if (metric("moat_hellos_refused_total{reason=\"evicted\"} ") > 0 &&
            metric("moat_hellos_refused_total{reason=\"throttled\"} ") > 0)
            break;
        chaos_sleep_ms(100);
    }
    long long h0 = attack_hellos(&a), t0 = now_us();
    int n = 0;
    /* At least `rounds`, and on until the guesser has made hellos_target (bounded: 120 s). */
    while (n < rounds || (attack_hellos(&a) - h0 < hellos_target && now_us() - t0 < 120000000)) {
        long long s, e;
        if (!round_trip(&s, &e)) {
            failures++;
        } else if (n < rounds) {
            att_s[n] = s;
            att_e[n] = e;
            n++;
        } else {
            /* Keep a sliding sample of the latest rounds. */
            memmove(att_s, att_s + 1, (size_t)(rounds - 1) * sizeof(long long));
            memmove(att_e, att_e + 1, (size_t)(rounds - 1) * sizeof(long long));
            att_s[rounds - 1] = s;
            att_e[rounds - 1] = e;
        }
        if (now_us() - t0 > 300000000)
            break;
    }
    double secs = (double)(now_us() - t0) / 1e6;
    long long hellos = attack_hellos(&a) - h0;
    long long evicted = metric("moat_hellos_refused_total{reason=\"evicted\"} ");
    long long throttled = metric("moat_hellos_refused_total{reason=\"throttled\"} ");
    attack_stop(&a);
    double is = p50(idle_s, rounds), ie = p50(idle_e, rounds);
    double as = p50(att_s, n), ae = p50(att_e, n);
    printf("attack: %d silent connections (back %d ms after each opened), %lld failed hellos in "
           "%.1f s (%.0f/s); moatd evicted "
           "%lld silent hellos and refused %lld throttled ones\n",
           silent, reconnect_ms, hellos, secs, (double)hellos / secs, evicted, throttled);
    printf("%-52s idle p50 %8.2f ms  attack p50 %8.2f ms  ratio %5.2f  %s (target <= 2x)\n",
           "connect + hello + CreateSession (new chat)", is, as, as / is,
           as <= 2 * is ? "PASS" : "FAIL");
    printf("%-52s idle p50 %8.2f ms  attack p50 %8.2f ms  ratio %5.2f  %s (target <= 2x)\n",
           "then `echo hi` to its exit", ie, ae, ae / ie, ae <= 2 * ie ? "PASS" : "FAIL");
    printf("failed rounds: %d\n", failures);
    int rc = moatd_stop(&P);
    char cmd[300];
    snprintf(cmd, sizeof(cmd),
             "ids=$(/usr/bin/docker ps -aq --filter name=moat-blk-%d-); [ -z \"$ids\" ] || "
             "/usr/bin/docker rm -f $ids >/dev/null 2>&1",
             (int)getpid());
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove this run's containers\n");
    moatd_remove_dir(P.state_dir);
    free(idle_s);
    return failures == 0 && rc == 0 && as <= 2 * is && ae <= 2 * ie ? 0 : 1;
}
