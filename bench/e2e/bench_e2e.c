/* bench_e2e: moatd end to end against Docker, measured in the same run.
 *
 *  1. `moat exec SESSION -- echo hi`, whole CLI process, p50   vs `docker exec` p50 (<= 0.15x)
 *  2. RunCommand `echo hi` over one libmoat connection, p50     (< 2 ms)
 *  3. 1 GiB of `yes` streamed to a libmoat client               vs docker exec (>= 4x)
 *  4. 1,000 concurrent streaming commands over 100 sessions     all complete, RSS <= 200 MB
 *  5. moatd idle RSS (<= 10 MB) and RSS per idle authenticated connection over 10,000 (<= 16 KiB)
 *  6. time to interactive: CreateSession for a new chat, then its first command (`echo hi`) to
 *     its exit, p50 and p95, vs `docker run -d` of the same image then `docker exec echo hi`:
 *     without a pool (no target; peers publish this figure); with a warm pool of 20 (own moatd,
 *     --pool_size), 100 sequential new chats, the pool refilling between them without being
 *     waited for (p50 < 15 ms, p95 < 30 ms), then 20 at once on a full pool (median < 50 ms);
 *     and with the pool empty (a pool of 1 whose sandbox each round claims first, untimed),
 *     each round also timing a create on the moatd without a pool, side by side: the two in
 *     turn, which goes first alternating, the pool's refill over before the other's create
 *  7. memory under attack (#12), its own moatd with the default memory budget: 251 finished runs
 *     of 4 MB, then 100 streams on one connection that reads nothing: peak RSS <= budget + 32 MB
 *     during each, and RSS within 2x the idle RSS (measured first, in the same run) 10 s after
 *     the load ends (its connections closed, its sessions stopped); RSS 10 s after the runs with
 *     their replay still retained is printed too
 *  8. ListSessions of 200 live sessions (busybox, smallest resources, made 4 at a time by its own
 *     moatd), p50 and p95 over 50 calls, vs Docker's own filtered list of the same containers
 *     (< 20 ms; bench_list.c)
 *  9. interactive (#14): keystroke round trip p50 through `moat exec -it` vs `docker exec -it`
 *     (<= 0.75x) with a local pty as the floor, and 256 MiB of stdin into `cat >/dev/null`
 *     through `moat exec -i` vs `docker exec -i` (>= 2x) (bench_interactive.c); sequential
 *     (issue 14): 200 `exec -i` calls one after another in one sandbox, all must succeed, p50
 *     against `docker exec -i`'s
 *
 * 10. terminals: moatd's RSS for idle terminal sessions (bench_terminals.c)
 *
 * usage: bench_e2e [--quick] [idle|latency|stream|concurrent|tti|tti-burst|tti-burst-fresh|
 * tti-empty|memory|list|interactive|sequential|terminals]... (needs dockerd, moat-sandbox:latest
 * and the execd bundle from scripts/build-sandbox-image.sh <build-dir>; env MOAT_BUILD_DIR = that
 * build dir)
 * --quick shrinks counts (the figures are then indicative only); naming phases runs only
 * those. Every phase is bounded. With MOAT_BENCH_LOG_DIR set, tti runs its moatds at debug level,
 * keeps their logs there and prints every round over 30 ms with its wall-clock start and how
 * long the bench and moatd's loop thread waited for a CPU meanwhile. */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench_e2e.h"
#include "harness.h"
#include "moat/client.h"
#include "moat/v1/health.pb-c.h"
#include "moat/v1/sandbox.pb-c.h"

/* Every container and sandbox of this run is named with "moat-bench-<pid>-", so runs at the same
 * time (other engineers' too) never remove each other's. */
static char prefix[48], prefix_arg[96];

int failures;
static char moat_bin[512];

double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

double percentile(double *v, int n, double q)
{
    qsort(v, (size_t)n, sizeof(double), cmp_d);
    int i = (int)(q * n);
    return v[i < n ? i : n - 1];
}

static double p50(double *v, int n)
{
    return percentile(v, n, 0.5);
}

void verdict(const char *what, double value, double baseline, const char *unit, double ratio,
             bool pass, const char *target)
{
    printf("%-44s value %10.3f %-4s baseline %10.3f %-4s ratio %7.3f  %s (target %s)\n", what,
           value, unit, baseline, unit, ratio, pass ? "PASS" : "FAIL", target);
    if (!pass)
        failures++;
    fflush(stdout);
}

static long rss_kb(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    long kb = -1;
    while (f != NULL && fgets(line, sizeof(line), f) != NULL) {
        if (strncmp(line, "VmRSS:", 6) == 0)
            kb = atol(line + 6);
    }
    if (f != NULL)
        fclose(f);
    return kb;
}

double timed_system(const char *cmd)
{
    double t0 = now_s();
    int rc = system(cmd);
    double t = now_s() - t0;
    return WIFEXITED(rc) && WEXITSTATUS(rc) == 0 ? t : -1;
}

bool create_session(raw_conn *c, const char *chat, Moat__V1__Resources *res, char sid[64],
                    char cid[80])
{
    Moat__V1__CreateSessionRequest req = MOAT__V1__CREATE_SESSION_REQUEST__INIT;
    req.chat_id = (char *)chat;
    req.ttl_seconds = 1800;
    req.resources = res;
    ProtobufCMessage *resp = NULL;
    int code = raw_unary(c, "/moat.v1.Sandboxes/CreateSession", &req.base,
                         &moat__v1__sandbox_session__descriptor, &resp, NULL, 0);
    if (code != 0 || resp == NULL)
        return false;
    Moat__V1__SandboxSession *s = (Moat__V1__SandboxSession *)resp;
    snprintf(sid, 64, "%s", s->session_id);
    if (cid != NULL)
        snprintf(cid, 80, "%s", s->container_id);
    protobuf_c_message_free_unpacked(resp, NULL);
    return true;
}

/* One RunCommand over libmoat; returns output bytes, or -1; *code gets the exit code. */
static long long lib_run(moat_client *c, const char *sid, const char *command, int *code)
{
    moat_run_command_req req = {.session_id = sid, .command = command};
    uint8_t buf[1024];
    size_t len = 0;
    if (moat_run_command_req_encode(&req, buf, sizeof(buf), &len) != MOAT_OK)
        return -1;
    moat_call *call = NULL;
    if (moat_call_start(c, "/moat.v1.Exec/RunCommand", 0, NULL, 0, (moat_slice){buf, len}, &call) !=
        MOAT_OK)
        return -1;
    long long bytes = 0;
    moat_slice msg;
    *code = -1;
    while (moat_call_recv(call, 120000, &msg) == MOAT_OK) {
        moat_exec_event ev;
        if (moat_exec_event_decode(msg, &ev) != MOAT_OK)
            break;
        if (ev.kind == MOAT_EXEC_OUTPUT)
            bytes += (long long)ev.data.len;
        else if (ev.kind == MOAT_EXEC_EXIT && ev.exit_known)
            *code = ev.exit_code;
    }
    bool ok = moat_call_status(call)->code == MOAT_CODE_OK;
    moat_call_free(call);
    return ok ? bytes : -1;
}

static void bench_latency(moatd_proc *p, const char *sid, const char *cid, int n)
{
    double *mv = calloc((size_t)n, sizeof(double)), *dv = calloc((size_t)n, sizeof(double));
    char cmd[1024];
    int bad = 0;
    for (int i = 0; i < n; i++) {
        snprintf(cmd, sizeof(cmd), "MOAT_ADDR=127.0.0.1:%d %s exec %s -- echo hi >/dev/null",
                 p->port, moat_bin, sid);
        mv[i] = timed_system(cmd);
        snprintf(cmd, sizeof(cmd), "/usr/bin/docker exec %s echo hi >/dev/null", cid);
        dv[i] = timed_system(cmd);
        if (mv[i] < 0 || dv[i] < 0)
            bad++;
    }
    if (bad > 0) {
        printf("%-44s %d of %d runs failed (moat or docker exit status non-zero)  FAIL\n",
               "moat exec CLI p50", bad, n);
        failures++;
    } else {
        double m = p50(mv, n) * 1000, d = p50(dv, n) * 1000;
        verdict("moat exec CLI p50 vs docker exec", m, d, "ms", m / d, m / d <= 0.15, "<= 0.15x");
    }
    free(mv);
    free(dv);

    char addr[64];
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", p->port);
    moat_client *c = NULL;
    moat_status st;
    if (moat_client_connect(addr, NULL, &c, &st) != MOAT_OK) {
        printf("libmoat connect failed: %s\n", st.message);
        failures++;
        return;
    }
    int m = n * 5;
    double *lv = calloc((size_t)m, sizeof(double));
    int code;
    lib_run(c, sid, "echo hi", &code); /* warm-up */
    bad = 0;
    for (int i = 0; i < m; i++) {
        double t0 = now_s();
        if (lib_run(c, sid, "echo hi", &code) != 3 || code != 0)
            bad++;
        lv[i] = (now_s() - t0) * 1000;
    }
    double l = p50(lv, m);
    verdict("RunCommand echo hi, one libmoat conn, p50", l, 2.0, "ms", l / 2.0, bad == 0 && l < 2.0,
            "< 2 ms");
    free(lv);
    moat_client_close(c);
}

/* CPU seconds (user + system) a process has used so far. */
static double proc_cpu_s(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    unsigned long long ut = 0, st = 0;
    if (f != NULL) {
        /* comm may hold spaces: fields resume after its closing parenthesis */
        char line[1024];
        char *r = fgets(line, sizeof(line), f) ? strrchr(line, ')') : NULL;
        if (r == NULL ||
            sscanf(r + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
            ut = st = 0;
        fclose(f);
    }
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* Busy and total core-seconds of the whole host so far (/proc/stat). */
static void host_cpu_s(double *busy, double *total)
{
    unsigned long long v[8] = {0};
    FILE *f = fopen("/proc/stat", "r");
    if (f != NULL) {
        if (fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3],
                   &v[4], &v[5], &v[6], &v[7]) != 8)
            memset(v, 0, sizeof(v));
        fclose(f);
    }
    unsigned long long t = 0;
    for (int i = 0; i < 8; i++)
        t += v[i];
    double hz = (double)sysconf(_SC_CLK_TCK);
    *total = (double)t / hz;
    *busy = (double)(t - v[3] - v[4]) / hz;
}

static double self_cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

/* cpus: the session's CPU limit, for the labels. */
static void bench_stream(moatd_proc *p, const char *sid, const char *cid, const char *cpus,
                         long long bytes)
{
    char addr[64];
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", p->port);
    moat_client *c = NULL;
    moat_status st;
    if (moat_client_connect(addr, NULL, &c, &st) != MOAT_OK) {
        failures++;
        return;
    }
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "yes | head -c %lld", bytes);
    int code;
    double d0 = proc_cpu_s(p->pid), c0 = self_cpu_s(), hb0, ht0;
    host_cpu_s(&hb0, &ht0);
    double t0 = now_s();
    long long got = lib_run(c, sid, cmd, &code);
    double tm = now_s() - t0;
    double hb1, ht1;
    host_cpu_s(&hb1, &ht1);
    printf("stream CPU (session limited to %s): moatd %.2f s, libmoat client %.2f s, whole host "
           "%.2f of %.2f core-s busy (%.0f%%) over %.2f s\n",
           cpus, proc_cpu_s(p->pid) - d0, self_cpu_s() - c0, hb1 - hb0, ht1 - ht0,
           ht1 > ht0 ? 100.0 * (hb1 - hb0) / (ht1 - ht0) : 0.0, tm);
    moat_client_close(c);
    char dcmd[700];
    snprintf(dcmd, sizeof(dcmd), "/usr/bin/docker exec %s bash -c '%s' | wc -c >/dev/null", cid,
             cmd);
    double td = timed_system(dcmd);
    double mm = (double)got / tm / 1048576.0, dm = (double)bytes / td / 1048576.0;
    char what[80];
    snprintf(what, sizeof(what), "stream %lld MiB of yes, %s (MiB/s)", bytes >> 20, cpus);
    verdict(what, mm, dm, "MiB/s", mm / dm, got == bytes && td > 0 && mm / dm >= 4.0, ">= 4x");

    /* The producer's own rate on this host: the same command inside the sandbox into the
     * simplest consumer one pipe away (`cat`), nothing leaving the sandbox. */
    char ccmd[560];
    snprintf(ccmd, sizeof(ccmd), "%s | cat >/dev/null", cmd);
    if (moat_client_connect(addr, NULL, &c, &st) != MOAT_OK) {
        failures++;
        return;
    }
    t0 = now_s();
    long long none = lib_run(c, sid, ccmd, &code);
    double tc = now_s() - t0;
    moat_client_close(c);
    if (none != 0 || code != 0) {
        failures++;
        return;
    }
    double cm = (double)bytes / tc / 1048576.0;
    printf("producer rate: yes | head | cat inside the sandbox %.0f MiB/s (%.2fx docker exec); "
           "moatd delivers %.0f%% of it to the client\n",
           cm, cm / dm, 100.0 * mm / cm);
}

static bool stop_session(raw_conn *c, const char *sid)
{
    Moat__V1__StopSessionRequest req = MOAT__V1__STOP_SESSION_REQUEST__INIT;
    req.session_id = (char *)sid;
    ProtobufCMessage *resp = NULL;
    int code = raw_unary(c, "/moat.v1.Sandboxes/StopSession", &req.base,
                         &moat__v1__stop_session_response__descriptor, &resp, NULL, 0);
    if (resp != NULL)
        protobuf_c_message_free_unpacked(resp, NULL);
    return code == 0;
}

/* Time to interactive: CreateSession for a new chat, then `echo hi` to its exit. Returns seconds,
 * or -1 on failure; *create_took (may be NULL) gets CreateSession's part, and sid the session
 * ("" when none) for the caller to stop, untimed. */
static double tti_once(raw_conn *rc, moat_client *c, const char *chat, char sid[64],
                       double *create_took)
{
    sid[0] = '\0';
    int code = -1;
    double t0 = now_s();
    bool ok = create_session(rc, chat, NULL, sid, NULL);
    if (create_took != NULL)
        *create_took = now_s() - t0;
    ok = ok && lib_run(c, sid, "echo hi", &code) == 3 && code == 0;
    return ok ? now_s() - t0 : -1;
}

/* The baseline: `docker run -d` of the same image then `docker exec echo hi`. Returns seconds,
 * or -1 on failure; docker_tti_remove removes the container, untimed. */
static double docker_tti(const char *name)
{
    char cmd[512];
    snprintf(cmd, sizeof(cmd),
             "id=$(/usr/bin/docker run -d --network none --name %s moat-sandbox:latest sleep 60) "
             "&& /usr/bin/docker exec \"$id\" echo hi >/dev/null",
             name);
    return timed_system(cmd);
}

static bool docker_tti_remove(const char *name)
{
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "/usr/bin/docker rm -f %s >/dev/null 2>&1", name);
    return system(cmd) == 0;
}

/* MOAT_BENCH_LOG_DIR: where the tti phases keep their moatds' logs (at debug level) and whose
 * presence has them print each slow round with its wall-clock start, to be matched with those
 * logs and with `docker events`; NULL when unset. */
static const char *log_dir(void)
{
    const char *d = getenv("MOAT_BENCH_LOG_DIR");
    return d != NULL && d[0] != '\0' ? d : NULL;
}

static void keep_log(const moatd_proc *p, const char *name)
{
    if (log_dir() == NULL)
        return;
    char cmd[1024];
    snprintf(cmd, sizeof(cmd), "cp '%s' '%s/%s-%d.log'", p->log_path, log_dir(), name,
             (int)getpid());
    if (system(cmd) != 0)
        printf("  (could not keep %s's log)\n", name);
}

/* How long a thread has waited for a CPU while runnable, in ns (/proc's schedstat); 0 when
 * unknown. */
static unsigned long long run_delay_ns(int pid)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/schedstat", pid);
    FILE *f = fopen(path, "r");
    unsigned long long on_cpu = 0, waited = 0;
    if (f != NULL) {
        if (fscanf(f, "%llu %llu", &on_cpu, &waited) != 2)
            waited = 0;
        fclose(f);
    }
    return waited;
}

/* When a round started, and how long the bench and moatd's loop thread had waited for a CPU
 * by then, to tell a slow round's own work from a busy host's. */
typedef struct {
    struct timespec wall;
    unsigned long long bench_wait_ns, moatd_wait_ns;
} round_mark;

static void round_begin(round_mark *m, const moatd_proc *p)
{
    clock_gettime(CLOCK_REALTIME, &m->wall);
    m->bench_wait_ns = run_delay_ns((int)getpid());
    m->moatd_wait_ns = run_delay_ns((int)p->pid);
}

/* A round over 30 ms (the warm pool's p95 target), with when it started, for the logs. */
static void print_slow_round(int i, const round_mark *m, const moatd_proc *p, double took,
                             double create)
{
    if (log_dir() == NULL || took * 1000 < 30)
        return;
    struct tm tm;
    gmtime_r(&m->wall.tv_sec, &tm);
    printf("  slow round %d at %02d:%02d:%02d.%03ld: %.1f ms (CreateSession %.1f ms); waited "
           "for a CPU: bench %.1f ms, moatd's loop %.1f ms\n",
           i, tm.tm_hour, tm.tm_min, tm.tm_sec, m->wall.tv_nsec / 1000000, took * 1000,
           create * 1000, (double)(run_delay_ns((int)getpid()) - m->bench_wait_ns) / 1e6,
           (double)(run_delay_ns((int)p->pid) - m->moatd_wait_ns) / 1e6);
}

static void chat_id(char out[40], int phase, int i)
{
    snprintf(out, 40, "%08x-%04x-4000-8000-%012x", (unsigned)getpid(), (unsigned)phase,
             (unsigned)i);
}

/* One quantile of moat's times against the baseline's (both sorted by it); with a target (ms,
 * 0 = none) it is a verdict. */
static void tti_row(const char *what, const char *which, double q, double *mv, double *dv, int n,
                    double max_ms)
{
    double m = percentile(mv, n, q) * 1000, d = percentile(dv, n, q) * 1000;
    char row[96], target[32];
    snprintf(row, sizeof(row), "%s %s", what, which);
    snprintf(target, sizeof(target), "< %.0f ms", max_ms);
    if (max_ms > 0)
        verdict(row, m, d, "ms", m / d, m < max_ms, target);
    else
        printf("%-44s value %10.3f ms   baseline %10.3f ms   ratio %7.3f\n", row, m, d, m / d);
}

/* p50 and (over 20 rounds or more) p95 of moat's times against the baseline's. */
static void tti_report(const char *what, double *mv, double *dv, int n, int bad, double p50_max,
                       double p95_max)
{
    if (bad > 0) {
        printf("%-44s %d of %d rounds failed  FAIL\n", what, bad, n);
        failures++;
        return;
    }
    tti_row(what, "p50", 0.5, mv, dv, n, p50_max);
    if (n >= 20)
        tti_row(what, "p95", 0.95, mv, dv, n, p95_max);
}

/* n sequential rounds on p, each followed by a baseline round; phase keeps chats apart. */
static void tti_sequential(moatd_proc *p, int phase, int n, const char *what, double p50_max,
                           double p95_max)
{
    char addr[64];
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", p->port);
    moat_client *c = NULL;
    moat_status st;
    raw_conn *rc = raw_connect_ready(p->port, NULL);
    if (rc == NULL || moat_client_connect(addr, NULL, &c, &st) != MOAT_OK) {
        failures++;
        raw_close(rc);
        return;
    }
    double *mv = calloc((size_t)n, sizeof(double)), *dv = calloc((size_t)n, sizeof(double));
    double *cv = calloc((size_t)n, sizeof(double)), *ev = calloc((size_t)n, sizeof(double));
    int bad = 0;
    for (int i = 0; i < n; i++) {
        char chat[40], sid[64], name[96];
        chat_id(chat, phase, i);
        round_mark mark;
        round_begin(&mark, p);
        mv[i] = tti_once(rc, c, chat, sid, &cv[i]);
        ev[i] = mv[i] - cv[i];
        print_slow_round(i, &mark, p, mv[i], cv[i]);
        bool stopped = sid[0] == '\0' || stop_session(rc, sid);
        snprintf(name, sizeof(name), "%stti-%d-%d", prefix, phase, i);
        dv[i] = docker_tti(name);
        bool removed = docker_tti_remove(name);
        if (mv[i] < 0 || !stopped || dv[i] < 0 || !removed) {
            printf("  round %d failed:%s%s%s%s\n", i, mv[i] < 0 ? " moat's create or echo" : "",
                   stopped ? "" : " moat's stop", dv[i] < 0 ? " docker run or exec" : "",
                   removed ? "" : " docker rm");
            bad++;
        }
    }
    tti_report(what, mv, dv, n, bad, p50_max, p95_max);
    if (bad == 0)
        printf("  (CreateSession p50 %.1f ms p95 %.1f ms; then echo hi p50 %.1f ms p95 %.1f ms)\n",
               percentile(cv, n, 0.5) * 1000, percentile(cv, n, 0.95) * 1000,
               percentile(ev, n, 0.5) * 1000, percentile(ev, n, 0.95) * 1000);
    free(mv);
    free(dv);
    free(cv);
    free(ev);
    moat_client_close(c);
    raw_close(rc);
}

/* Health's pool_ready, or -1 when Health fails. */
static int pool_ready(raw_conn *rc)
{
    Moat__V1__HealthCheckRequest req = MOAT__V1__HEALTH_CHECK_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    int code = raw_unary(rc, "/moat.v1.Health/Check", &req.base,
                         &moat__v1__health_check_response__descriptor, &resp, NULL, 0);
    int ready =
        code == 0 && resp != NULL ? (int)((Moat__V1__HealthCheckResponse *)resp)->pool_ready : -1;
    if (resp != NULL)
        protobuf_c_message_free_unpacked(resp, NULL);
    return ready;
}

/* Waits (at most two minutes) until Health reports want sandboxes ready in the pool. */
static bool wait_pool_ready(raw_conn *rc, int want)
{
    for (int i = 0; i < 6000; i++) {
        if (pool_ready(rc) >= want)
            return true;
        usleep(20000);
    }
    printf("the pool did not reach %d ready sandboxes in 120 s\n", want);
    failures++;
    return false;
}

/* A moatd with a warm pool of pool_size, its sandboxes apart from the main moatd's; it logs
 * every create, saying whether it came from the pool. */
static bool pool_moatd_start(moatd_proc *p, int pool_size)
{
    char a_pool[40], a_instance[64], a_prefix[128];
    snprintf(a_pool, sizeof(a_pool), "--pool_size=%d", pool_size);
    snprintf(a_prefix, sizeof(a_prefix), "%spool-", prefix_arg);
    snprintf(a_instance, sizeof(a_instance), "--instance=bench-pool-%d", (int)getpid());
    const char *extra[] = {a_prefix, a_instance, a_pool,
                           log_dir() != NULL ? "--log_level=debug" : "--log_level=info", NULL};
    return moatd_start(p, true, extra);
}

/* Sessions moatd has made from its pool so far (its log's session_created lines). */
static int claims_logged(const moatd_proc *p)
{
    char *log = slurp_file(p->log_path);
    int n = 0;
    for (const char *at = log; (at = strstr(at, "from_pool=true")) != NULL; at++)
        n++;
    free(log);
    return n;
}

/* moatd's warnings and errors (the first five), which say why a round failed or a create did
 * not come from the pool. */
static void log_warnings(const moatd_proc *p)
{
    char *log = slurp_file(p->log_path);
    int n = 0;
    for (char *line = strtok(log, "\n"); line != NULL; line = strtok(NULL, "\n")) {
        if (strstr(line, "level=warn") == NULL && strstr(line, "level=error") == NULL)
            continue;
        if (n++ < 5)
            printf("  moatd: %.300s\n", line);
    }
    if (n > 5)
        printf("  moatd: ... %d warnings and errors in all\n", n);
    free(log);
}

/* Where moatd's claims spent their time, from its pool_slot_claimed lines after the first skip
 * (then every stride-th): p50 and p95 of each step (docs/runtime.md, "Warm pool"). */
static void claim_steps(const moatd_proc *p, int skip, int stride)
{
    static const char *steps[] = {"take_us=", "attach_us=", "bind_us=", "store_us="};
    double v[4][256];
    int n = 0, seen = 0;
    char *log = slurp_file(p->log_path);
    for (const char *at = log; (at = strstr(at, "event=pool_slot_claimed")) != NULL && n < 256;
         at++) {
        int k = seen++ - skip;
        if (k < 0 || k % stride != 0)
            continue;
        for (int k = 0; k < 4; k++) {
            const char *f = strstr(at, steps[k]);
            v[k][n] = f != NULL ? atof(f + strlen(steps[k])) / 1000 : -1;
        }
        n++;
    }
    free(log);
    if (n == 0)
        return;
    printf("  (claims inside moatd, p50/p95 ms over %d:", n);
    for (int k = 0; k < 4; k++)
        printf(" %.*s %.1f/%.1f", (int)(strchr(steps[k], '_') - steps[k]), steps[k],
               percentile(v[k], n, 0.5), percentile(v[k], n, 0.95));
    printf(")\n");
}

typedef struct burst_arg {
    int port;
    int phase, index;
    bool docker;
    pthread_barrier_t *go, *done;
    double took, create_took;
} burst_arg;

static void *burst_thread(void *arg)
{
    burst_arg *a = arg;
    char addr[64], chat[40], sid[64] = "", name[96];
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", a->port);
    chat_id(chat, a->phase, a->index);
    snprintf(name, sizeof(name), "%sburst-%d", prefix, a->index);
    moat_client *c = NULL;
    moat_status st;
    raw_conn *rc = a->docker ? NULL : raw_connect_ready(a->port, NULL);
    bool ready = a->docker || (rc != NULL && moat_client_connect(addr, NULL, &c, &st) == MOAT_OK);
    /* Connected first, so the burst times creates, not handshakes. */
    pthread_barrier_wait(a->go);
    a->took = !ready      ? -1
              : a->docker ? docker_tti(name)
                          : tti_once(rc, c, chat, sid, &a->create_took);
    /* Cleaned up once every one is timed, so no removal competes with a create. */
    pthread_barrier_wait(a->done);
    if ((a->docker && !docker_tti_remove(name)) || (sid[0] != '\0' && !stop_session(rc, sid)))
        a->took = -1;
    if (c != NULL)
        moat_client_close(c);
    raw_close(rc);
    return NULL;
}

/* n concurrent new chats (moat's, then n concurrent baselines); their times into mv and dv,
 * CreateSession's part of moat's into cv. */
static int tti_burst(const moatd_proc *p, int phase, int n, double *mv, double *dv, double *cv)
{
    pthread_t th[64];
    burst_arg args[64];
    pthread_barrier_t go, done;
    int bad = 0;
    for (int round = 0; round < 2; round++) {
        pthread_barrier_init(&go, NULL, (unsigned)n);
        pthread_barrier_init(&done, NULL, (unsigned)n);
        for (int i = 0; i < n; i++) {
            args[i] = (burst_arg){p->port, phase, i, round == 1, &go, &done, -1, -1};
            pthread_create(&th[i], NULL, burst_thread, &args[i]);
        }
        for (int i = 0; i < n; i++) {
            pthread_join(th[i], NULL);
            (round == 0 ? mv : dv)[i] = args[i].took;
            if (round == 0)
                cv[i] = args[i].create_took;
            bad += args[i].took < 0;
        }
        pthread_barrier_destroy(&go);
        pthread_barrier_destroy(&done);
    }
    return bad;
}

/* The burst: n concurrent new chats on a full pool of n, against n concurrent baselines. */
static void tti_burst_report(moatd_proc *pp, raw_conn *rc, int n)
{
    int before = claims_logged(pp);
    if (!wait_pool_ready(rc, n))
        return;
    double mv[64], dv[64], cv[64];
    int bad = tti_burst(pp, 3, n, mv, dv, cv);
    char what[64];
    snprintf(what, sizeof(what), "tti, burst of %d on a full pool, median", n);
    tti_report(what, mv, dv, n, bad, 50, 0);
    if (bad == 0)
        printf("  (CreateSession p50 %.1f ms p95 %.1f ms)\n", percentile(cv, n, 0.5) * 1000,
               percentile(cv, n, 0.95) * 1000);
    printf("  (%d of %d burst creates claimed a pool sandbox)\n", claims_logged(pp) - before, n);
    claim_steps(pp, before, 1);
}

/* A moatd with a pool of 20: 100 sequential new chats without waiting for the pool between
 * them, as use would not (when sequential); then a burst of 20 concurrent ones on a full pool
 * (when burst), on a moatd that has listed its sessions already unless fresh. */
static void tti_warm(int n, int burst_n, bool sequential, bool burst, bool fresh)
{
    moatd_proc pp;
    if (!pool_moatd_start(&pp, burst_n)) {
        failures++;
        return;
    }
    raw_conn *rc = raw_connect_ready(pp.port, NULL);
    if (rc != NULL && wait_pool_ready(rc, burst_n)) {
        if (sequential) {
            char what[64];
            snprintf(what, sizeof(what), "tti, warm pool of %d", burst_n);
            tti_sequential(&pp, 2, n, what, 15, 30);
            printf("  (%d of %d sequential creates claimed a pool sandbox)\n", claims_logged(&pp),
                   n);
            claim_steps(&pp, 0, 1);
        }
        /* Alone, one create first, as the sequential rounds would have made: moatd's first
         * create fills its session list from the engine, which a burst would otherwise do 20
         * times at once. */
        char warm_chat[40], warm_sid[64];
        chat_id(warm_chat, 7, 0);
        bool warm =
            sequential || fresh ||
            (create_session(rc, warm_chat, NULL, warm_sid, NULL) && stop_session(rc, warm_sid));
        if (!warm)
            failures++;
        if (burst && warm)
            tti_burst_report(&pp, rc, burst_n);
    }
    raw_close(rc);
    moatd_stop(&pp);
    log_warnings(&pp);
    keep_log(&pp, fresh ? "tti-burst-fresh" : "tti-pool");
    moatd_remove_dir(pp.state_dir);
}

/* One timed create on the pool moatd pp just after its only slot was claimed (untimed), into
 * *took; its sessions stopped, then its refill waited for, so that refill competes with no
 * create of the other side. False when a step failed. */
static bool empty_round(moatd_proc *pp, raw_conn *rc, moat_client *c, int i, double *took)
{
    char first[40], chat[40], sid[64], timed_sid[64] = "";
    chat_id(first, 4, i);
    chat_id(chat, 5, i);
    bool claimed = wait_pool_ready(rc, 1) && create_session(rc, first, NULL, sid, NULL);
    round_mark mark;
    double create_took = 0;
    round_begin(&mark, pp);
    *took = claimed ? tti_once(rc, c, chat, timed_sid, &create_took) : -1;
    print_slow_round(i, &mark, pp, *took, create_took);
    return claimed && stop_session(rc, sid) && *took >= 0 &&
           (timed_sid[0] == '\0' || stop_session(rc, timed_sid)) && wait_pool_ready(rc, 1);
}

/* One timed create on p, the moatd without a pool, into *took; its session stopped. */
static bool cold_round(moatd_proc *p, raw_conn *rc, moat_client *c, int i, double *took)
{
    char chat[40], sid[64] = "";
    chat_id(chat, 6, i);
    round_mark mark;
    double create_took = 0;
    round_begin(&mark, p);
    *took = tti_once(rc, c, chat, sid, &create_took);
    print_slow_round(i, &mark, p, *took, create_took);
    return *took >= 0 && (sid[0] == '\0' || stop_session(rc, sid));
}

/* The pool-empty side (a) against the no-pool side (b), round by round: how often it was the
 * slower, and 95% bootstrap intervals (rounds resampled as pairs, a fixed seed) of its p50 and
 * p95 ratios, since a p95 of tens of rounds is their slowest few and moves with the engine's
 * slowest starts. Neither array is reordered. */
static void paired_ratios(const double *a, const double *b, int n)
{
    enum { RESAMPLES = 2000 };
    double *ra = calloc((size_t)n, sizeof(double)), *rb = calloc((size_t)n, sizeof(double));
    double *r50 = calloc(RESAMPLES, sizeof(double)), *r95 = calloc(RESAMPLES, sizeof(double));
    bool ok = ra != NULL && rb != NULL && r50 != NULL && r95 != NULL;
    int slower = 0;
    for (int i = 0; i < n; i++)
        slower += a[i] > b[i];
    unsigned seed = 20261205;
    for (int k = 0; ok && k < RESAMPLES; k++) {
        for (int i = 0; i < n; i++) {
            int j = rand_r(&seed) % n;
            ra[i] = a[j];
            rb[i] = b[j];
        }
        r50[k] = percentile(ra, n, 0.5) / percentile(rb, n, 0.5);
        r95[k] = percentile(ra, n, 0.95) / percentile(rb, n, 0.95);
    }
    if (ok)
        printf("  (round by round the pool side was the slower in %d of %d; pool empty / no pool, "
               "95%% bootstrap interval: p50 %.3f-%.3f, p95 %.3f-%.3f)\n",
               slower, n, percentile(r50, RESAMPLES, 0.025), percentile(r50, RESAMPLES, 0.975),
               percentile(r95, RESAMPLES, 0.025), percentile(r95, RESAMPLES, 0.975));
    free(ra);
    free(rb);
    free(r50);
    free(r95);
}

/* A moatd with a pool of 1 whose slot each round claims first, so the timed create finds it
 * empty, against a create on p, the moatd without a pool, in the same round. */
static void tti_empty(moatd_proc *p, int n)
{
    moatd_proc pp;
    if (!pool_moatd_start(&pp, 1)) {
        failures++;
        return;
    }
    /* Each round also times a create on the moatd without a pool, so "no worse than without a
     * pool" compares rounds made side by side. */
    char addr[64], main_addr[64];
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", pp.port);
    snprintf(main_addr, sizeof(main_addr), "127.0.0.1:%d", p->port);
    moat_client *c = NULL, *mc = NULL;
    moat_status st;
    raw_conn *rc = raw_connect_ready(pp.port, NULL);
    raw_conn *mrc = raw_connect_ready(p->port, NULL);
    if (rc != NULL && mrc != NULL && moat_client_connect(addr, NULL, &c, &st) == MOAT_OK &&
        moat_client_connect(main_addr, NULL, &mc, &st) == MOAT_OK) {
        int rounds = n, bad = 0;
        double *mv = calloc((size_t)rounds, sizeof(double));
        double *nv = calloc((size_t)rounds, sizeof(double));
        double *dv = calloc((size_t)rounds, sizeof(double));
        for (int i = 0; i < rounds; i++) {
            /* Which side goes first alternates, so neither always follows the baseline's
             * removal or the other side's stops. */
            for (int k = 0; k < 2; k++) {
                if ((k == 0) == (i % 2 == 0))
                    bad += !empty_round(&pp, rc, c, i, &mv[i]);
                else
                    bad += !cold_round(p, mrc, mc, i, &nv[i]);
            }
            char name[96];
            snprintf(name, sizeof(name), "%stti-5-%d", prefix, i);
            dv[i] = docker_tti(name);
            bad += dv[i] < 0 || !docker_tti_remove(name);
        }
        if (bad == 0)
            paired_ratios(mv, nv, rounds); /* before the reports, which sort */
        tti_report("tti, pool empty (refilling)", mv, dv, rounds, bad, 0, 0);
        tti_report("tti, no pool, alternated with it", nv, dv, rounds, bad, 0, 0);
        if (bad == 0)
            printf("  (pool empty / no pool: p50 %.3f, p95 %.3f)\n",
                   percentile(mv, rounds, 0.5) / percentile(nv, rounds, 0.5),
                   percentile(mv, rounds, 0.95) / percentile(nv, rounds, 0.95));
        printf("  (%d creates of %d claimed a pool sandbox: one per round is the untimed one)\n",
               claims_logged(&pp), 2 * rounds);
        if (claims_logged(&pp) == 2 * rounds) /* else timed and untimed ones do not alternate */
            claim_steps(&pp, 1, 2);
        free(mv);
        free(nv);
        free(dv);
    } else {
        failures++;
    }
    if (c != NULL)
        moat_client_close(c);
    if (mc != NULL)
        moat_client_close(mc);
    raw_close(rc);
    raw_close(mrc);
    moatd_stop(&pp);
    log_warnings(&pp);
    keep_log(&pp, "tti-empty");
    keep_log(p, "tti-main");
    moatd_remove_dir(pp.state_dir);
}

/* Time to interactive (tti: every part; tti-burst, tti-empty: that part alone): a moatd without
 * a pool (the main one), then one with a pool of 20 (tti_warm), then the pool empty
 * (tti_empty). Each against the baseline in the same run. tti-burst-fresh, only when named: the
 * burst as a fresh moatd's first creates, which find no session list to share. */
static void bench_tti(moatd_proc *p, int n, int burst, bool all, bool burst_only, bool fresh_only,
                      bool empty_only)
{
    if (all)
        tti_sequential(p, 1, n, "tti, no pool (create + echo hi)", 0, 0);
    if (all || burst_only)
        tti_warm(n, burst, all, true, false);
    if (fresh_only)
        tti_warm(n, burst, false, true, true);
    if (all || empty_only)
        tti_empty(p, n);
}

/* Many streams at once: nconn libmoat connections, each running `per` commands
 * concurrently, spread over the sessions; RSS sampled while they run. */
typedef struct conc_arg {
    const char *addr;
    char (*sids)[64];
    int nsessions;
    int first, per;
    int ok;
    long *peak;
    pid_t pid;
} conc_arg;

static void *conc_thread(void *p)
{
    conc_arg *a = p;
    moat_client *c = NULL;
    moat_status st;
    if (moat_client_connect(a->addr, NULL, &c, &st) != MOAT_OK)
        return NULL;
    moat_call **calls = calloc((size_t)a->per, sizeof(*calls));
    const char *cmd = "for i in 1 2 3 4 5; do echo line $i of a concurrent stream; sleep 0.2; done";
    for (int i = 0; i < a->per; i++) {
        int k = (a->first + i) % a->nsessions;
        moat_run_command_req req = {.session_id = a->sids[k], .command = cmd};
        uint8_t buf[512];
        size_t len = 0;
        moat_run_command_req_encode(&req, buf, sizeof(buf), &len);
        if (moat_call_start(c, "/moat.v1.Exec/RunCommand", 0, NULL, 0, (moat_slice){buf, len},
                            &calls[i]) != MOAT_OK)
            calls[i] = NULL;
    }
    /* Drain them round-robin so every stream keeps moving. */
    int open = a->per;
    bool *done = calloc((size_t)a->per, sizeof(bool));
    while (open > 0) {
        for (int i = 0; i < a->per; i++) {
            if (done[i])
                continue;
            if (calls[i] == NULL) {
                done[i] = true;
                open--;
                continue;
            }
            moat_slice msg;
            moat_err e = moat_call_recv(calls[i], 10, &msg);
            if (e == MOAT_E_CLOSED) {
                if (moat_call_status(calls[i])->code == MOAT_CODE_OK)
                    a->ok++;
                done[i] = true;
                open--;
            } else if (e != MOAT_OK && e != MOAT_E_TIMEOUT) {
                done[i] = true;
                open--;
            }
        }
        long r = rss_kb(a->pid);
        if (r > *a->peak)
            *a->peak = r;
    }
    for (int i = 0; i < a->per; i++)
        if (calls[i] != NULL)
            moat_call_free(calls[i]);
    free(calls);
    free(done);
    moat_client_close(c);
    return NULL;
}

static void bench_concurrent(moatd_proc *p, int nsessions, int total)
{
    raw_conn *rc = raw_connect(p->port);
    moat_frame ack;
    raw_hello(rc, NULL, &ack);
    char(*sids)[64] = calloc((size_t)nsessions, 64);
    double t0 = now_s();
    for (int i = 0; i < nsessions; i++) {
        char chat[40];
        snprintf(chat, sizeof(chat), "00000000-0000-4000-8000-%012d", i + 1);
        if (!create_session(rc, chat, NULL, sids[i], NULL)) {
            printf("create session %d failed\n", i);
            failures++;
            raw_close(rc);
            free(sids);
            return;
        }
    }
    raw_close(rc);
    printf("(created %d sessions in %.1f s)\n", nsessions, now_s() - t0);
    char addr[64];
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", p->port);
    int per = 100;
    int nconn = total / per;
    pthread_t *th = calloc((size_t)nconn, sizeof(*th));
    conc_arg *args = calloc((size_t)nconn, sizeof(*args));
    long peak = 0;
    t0 = now_s();
    for (int i = 0; i < nconn; i++) {
        args[i] = (conc_arg){addr, sids, nsessions, i * per, per, 0, &peak, p->pid};
        pthread_create(&th[i], NULL, conc_thread, &args[i]);
    }
    int ok = 0;
    for (int i = 0; i < nconn; i++) {
        pthread_join(th[i], NULL);
        ok += args[i].ok;
    }
    printf("(%d of %d concurrent streams completed OK in %.1f s)\n", ok, total, now_s() - t0);
    char what[80];
    snprintf(what, sizeof(what), "%d streams/%d sessions: peak RSS (MB)", total, nsessions);
    double mb = (double)peak / 1024.0;
    verdict(what, mb, 200, "MB", mb / 200, ok == total && mb <= 200, "all complete, <= 200 MB");
    free(th);
    free(args);
    free(sids);
}

/* Samples moatd's RSS while an attack runs. */
typedef struct rss_probe {
    pid_t pid;
    long peak_kb;
    unsigned n;
} rss_probe;

static void rss_sample(void *ud)
{
    rss_probe *r = ud;
    if (r->n++ % 16 != 0)
        return;
    long kb = rss_kb(r->pid);
    if (kb > r->peak_kb)
        r->peak_kb = kb;
}

static void bench_memory(bool quick)
{
    moatd_proc p;
    const char *extra[] = {prefix_arg, "--log_level=warn", "--max_streams_per_connection=200",
                           NULL};
    if (!moatd_start(&p, true, extra)) {
        failures++;
        return;
    }
    sleep(2); /* start-up reconciliation */
    char health[700];
    snprintf(health, sizeof(health), "%s --addr 127.0.0.1:%d health >/dev/null 2>&1", moat_bin,
             p.port);
    if (timed_system(health) < 0)
        failures++;
    sleep(1);
    long idle = rss_kb(p.pid);
    long long cap = metric_value(p.metrics_port, "moat_memory_budget_bytes");
    double cap_mb = (double)cap / 1048576.0, idle_mb = (double)idle / 1024.0;
    printf("(memory: idle RSS %.1f MB, memory_budget_bytes %.0f MiB)\n", idle_mb, cap_mb);
    raw_conn *rc = raw_connect(p.port);
    moat_frame ack;
    raw_hello(rc, NULL, &ack);
    char sa[64], sb[64];
    if (!create_session(rc, "11111111-2222-4333-8444-777777777771", NULL, sa, NULL) ||
        !create_session(rc, "11111111-2222-4333-8444-777777777772", NULL, sb, NULL)) {
        printf("create failed\n");
        moatd_dump_log(&p);
        failures++;
        raw_close(rc);
        moatd_stop(&p);
        moatd_remove_dir(p.state_dir);
        return;
    }
    /* 1. finished runs of 4 MB, read in full, 16 at a time */
    int runs = quick ? 60 : 251;
    rss_probe probe = {p.pid, 0, 0};
    double t0 = now_s();
    int ok = raw_run_many(rc, sa, "head -c 4000000 /dev/zero", runs, 16, rss_sample, &probe);
    double took = now_s() - t0;
    long long peak_used = metric_value(p.metrics_port, "moat_memory_peak_bytes");
    long long dropped = metric_value(p.metrics_port, "moat_memory_dropped_bytes_total");
    printf("(%d of %d runs of 4 MB OK in %.1f s; budget peak %.1f MiB, %.0f MiB of replay "
           "dropped)\n",
           ok, runs, took, (double)peak_used / 1048576.0, (double)dropped / 1048576.0);
    double peak1 = (double)probe.peak_kb / 1024.0;
    verdict("251 runs of 4 MB: peak RSS (MB)", peak1, cap_mb + 32, "MB", peak1 / (cap_mb + 32),
            ok == runs && peak1 <= cap_mb + 32, "<= budget + 32 MB");
    sleep(10);
    printf("(RSS 10 s after the runs, their replay retained: %.1f MB)\n",
           (double)rss_kb(p.pid) / 1024.0);
    /* 2. 100 streams on one connection that never reads */
    raw_conn *a = raw_connect(p.port);
    raw_hello(a, NULL, &ack);
    for (int i = 0; i < 100; i++)
        raw_start_run(a, i % 2 ? sa : sb, "yes", 0);
    rss_probe probe2 = {p.pid, 0, 0};
    for (int i = 0; i < 100; i++) {
        probe2.n = 0;
        rss_sample(&probe2);
        usleep(100000);
    }
    long long pinned = metric_value(p.metrics_port, "moat_memory_pinned_bytes");
    printf("(100 unread streams: %.1f MiB pinned)\n", (double)pinned / 1048576.0);
    double peak2 = (double)probe2.peak_kb / 1024.0;
    verdict("100 unread streams: peak RSS (MB)", peak2, cap_mb + 32, "MB", peak2 / (cap_mb + 32),
            peak2 <= cap_mb + 32, "<= budget + 32 MB");
    raw_close(a);
    /* the load ends: its sessions stop, their replay goes */
    if (!stop_session(rc, sa) || !stop_session(rc, sb))
        failures++;
    raw_close(rc);
    sleep(10);
    double after = (double)rss_kb(p.pid) / 1024.0;
    verdict("RSS 10 s after the load ends (MB)", after, idle_mb, "MB", after / idle_mb,
            after <= 2 * idle_mb, "<= 2x idle");
    moatd_stop(&p);
    moatd_remove_dir(p.state_dir);
}

/* Prints the largest contributors to pid's RSS, summed per mapped file
 * (anonymous mappings, heap and stacks under their own names). */
static void print_rss_breakdown(pid_t pid)
{
    enum { MAXN = 128, SHOW = 12 };
    static char names[MAXN][160];
    long rss[MAXN] = {0}, anon[MAXN] = {0};
    int n = 0, cur = -1;
    char path[64], line[512];
    snprintf(path, sizeof(path), "/proc/%d/smaps", (int)pid);
    FILE *f = fopen(path, "r");
    while (f != NULL && fgets(line, sizeof(line), f) != NULL) {
        unsigned long lo, hi;
        char perms[8], name[160] = "[anon]";
        if (sscanf(line, "%lx-%lx %7s %*s %*s %*s %159s", &lo, &hi, perms, name) >= 3) {
            const char *base = strrchr(name, '/') ? strrchr(name, '/') + 1 : name;
            for (cur = 0; cur < n && strcmp(names[cur], base) != 0; cur++)
                ;
            if (cur == n && n < MAXN)
                snprintf(names[n++], sizeof(names[0]), "%s", base);
            if (cur >= n)
                cur = -1;
        } else if (cur >= 0 && strncmp(line, "Rss:", 4) == 0) {
            rss[cur] += atol(line + 4);
        } else if (cur >= 0 && strncmp(line, "Anonymous:", 10) == 0) {
            anon[cur] += atol(line + 10);
        }
    }
    if (f != NULL)
        fclose(f);
    printf("  (idle RSS by mapping, KiB: rss/anon)\n");
    for (int shown = 0; shown < SHOW; shown++) {
        int best = -1;
        for (int i = 0; i < n; i++)
            if (rss[i] > 0 && (best < 0 || rss[i] > rss[best]))
                best = i;
        if (best < 0)
            break;
        printf("    %6ld %6ld  %s\n", rss[best], anon[best], names[best]);
        rss[best] = 0;
    }
}

static void bench_idle(int nconns)
{
    moatd_proc p;
    char maxc[64];
    snprintf(maxc, sizeof(maxc), "--max_connections=%d", nconns + 100);
    const char *extra[] = {maxc, prefix_arg, "--log_level=warn", NULL};
    if (!moatd_start(&p, true, extra)) {
        failures++;
        return;
    }
    sleep(2); /* let start-up reconciliation finish */
    /* One Health call first: it starts the worker pool and reaches Docker, as
     * any real first request would. */
    char health[700];
    snprintf(health, sizeof(health), "%s --addr 127.0.0.1:%d health >/dev/null 2>&1", moat_bin,
             p.port);
    if (timed_system(health) < 0) {
        printf("  (Health call failed)\n");
        failures++;
    }
    sleep(1);
    long idle = rss_kb(p.pid);
    verdict("moatd idle RSS (MB)", (double)idle / 1024, 10, "MB", (double)idle / 1024 / 10,
            idle > 0 && idle <= 10 * 1024, "<= 10 MB");
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%d/status", (int)p.pid);
    FILE *sf = fopen(path, "r");
    while (sf != NULL && fgets(line, sizeof(line), sf) != NULL) {
        if (strncmp(line, "RssAnon:", 8) == 0 || strncmp(line, "RssFile:", 8) == 0)
            printf("  (idle %s", line);
    }
    if (sf != NULL)
        fclose(sf);
    print_rss_breakdown(p.pid);
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    raw_conn **cs = calloc((size_t)nconns, sizeof(*cs));
    int made = 0;
    for (int i = 0; i < nconns; i++) {
        cs[i] = raw_connect(p.port);
        if (cs[i] == NULL)
            break;
        moat_frame ack;
        if (raw_hello(cs[i], NULL, &ack) != 1 || ack.kind != MOAT_FRAME_HELLO_ACK) {
            raw_close(cs[i]);
            cs[i] = NULL;
            break;
        }
        made++;
    }
    long full = rss_kb(p.pid);
    double per = made > 0 ? (double)(full - idle) * 1024.0 / made / 1024.0 : 0;
    char what[80];
    snprintf(what, sizeof(what), "RSS per idle authed connection (KiB, %d)", made);
    verdict(what, per, 16, "KiB", per / 16, made == nconns && per <= 16, "<= 16 KiB");
    for (int i = 0; i < made; i++)
        raw_close(cs[i]);
    free(cs);
    moatd_stop(&p);
    moatd_remove_dir(p.state_dir);
}

static int nphases;
static char **phases;

static bool want(const char *phase)
{
    if (nphases == 0)
        return true;
    for (int i = 0; i < nphases; i++)
        if (strcmp(phases[i], phase) == 0)
            return true;
    return false;
}

int main(int argc, char **argv)
{
    bool quick = argc > 1 && strcmp(argv[1], "--quick") == 0;
    phases = argv + 1 + quick;
    nphases = argc - 1 - quick;
    const char *build = getenv("MOAT_BUILD_DIR");
    if (build == NULL) {
        fprintf(stderr, "set MOAT_BUILD_DIR to the build dir (with execd-bundle)\n");
        return 2;
    }
    snprintf(moat_bin, sizeof(moat_bin), "%s/src/client/moat", build);
    snprintf(prefix, sizeof(prefix), "moat-bench-%d-", (int)getpid());
    snprintf(prefix_arg, sizeof(prefix_arg), "--container_name_prefix=%s", prefix);
    docker_remove_prefixed(prefix);

    if (want("idle"))
        bench_idle(quick ? 1000 : 10000);
    if (want("memory"))
        bench_memory(quick);
    if (want("list"))
        bench_list(quick ? 20 : 200, quick ? 10 : 50);
    if (want("terminals"))
        bench_terminals(quick ? 20 : 100);
    bool tti_all = want("tti"), tti_burst_only = want("tti-burst"),
         tti_empty_only = want("tti-empty"),
         tti_fresh_only = nphases > 0 && want("tti-burst-fresh");
    if (!want("latency") && !want("stream") && !want("concurrent") && !tti_all && !tti_burst_only &&
        !tti_fresh_only && !tti_empty_only && !want("interactive") && !want("sequential"))
        return failures == 0 ? 0 : 1;

    moatd_proc p;
    const char *extra[] = {prefix_arg, log_dir() != NULL ? "--log_level=debug" : "--log_level=warn",
                           "--max_connections=4096", NULL};
    if (!moatd_start(&p, true, extra))
        return 1;
    raw_conn *rc = raw_connect(p.port);
    moat_frame ack;
    raw_hello(rc, NULL, &ack);
    char sid[64], cid[80];
    if (!create_session(rc, "11111111-2222-4333-8444-555555555555", NULL, sid, cid)) {
        fprintf(stderr, "cannot create a session\n");
        moatd_dump_log(&p);
        moatd_stop(&p);
        return 1;
    }
    raw_close(rc);
    if (want("latency"))
        bench_latency(&p, sid, cid, quick ? 10 : 30);
    if (want("stream")) {
        /* The default session (1 CPU: yes, head and execd share it), then one given the whole
         * 2-core host, the most a session may ask for. docker exec runs in the same container
         * each time. */
        long long bytes = quick ? (64ll << 20) : (1ll << 30);
        bench_stream(&p, sid, cid, "1 CPU", bytes);
        char sid2[64], cid2[80];
        rc = raw_connect(p.port);
        raw_hello(rc, NULL, &ack);
        Moat__V1__Resources two_cpus = MOAT__V1__RESOURCES__INIT;
        two_cpus.cpu_millis = 2000;
        if (create_session(rc, "11111111-2222-4333-8444-666666666666", &two_cpus, sid2, cid2))
            bench_stream(&p, sid2, cid2, "2 CPUs", bytes);
        else
            failures++;
        raw_close(rc);
    }
    if (want("interactive"))
        bench_interactive(&p, moat_bin, sid, cid, quick ? 100 : 1000,
                          quick ? (32ll << 20) : (256ll << 20));
    if (want("sequential"))
        bench_interactive_sequential(&p, moat_bin, sid, cid, quick ? 70 : 200);
    if (want("concurrent"))
        bench_concurrent(&p, quick ? 10 : 100, quick ? 100 : 1000);
    if (tti_all || tti_burst_only || tti_fresh_only || tti_empty_only)
        bench_tti(&p, quick ? 5 : 100, quick ? 5 : 20, tti_all, tti_burst_only, tti_fresh_only,
                  tti_empty_only);
    moatd_stop(&p);
    moatd_remove_dir(p.state_dir);
    docker_remove_prefixed(prefix);
    printf("bench_e2e: %s\n", failures == 0 ? "all targets met" : "some targets missed");
    return failures == 0 ? 0 : 1;
}
