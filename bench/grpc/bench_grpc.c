/* bench_grpc: moatd's gRPC listener against its framed protocol, the same moatd, the same
 * session, in the same run (issue #17):
 *  1. RunCommand `echo hi` round trip p50 over one connection each: gRPC (an nghttp2 client, as
 *     the C++ stub's transport is) vs the framed protocol (libmoat), alternated (<= 1.5x)
 *  2. 1 GiB of `yes` streamed to the client, both ways, alternated, the client's window 1 MiB on
 *     both (the framed default): the median of the rounds' gRPC/framed ratios (>= 0.8x)
 *  3. 1,000 concurrent RunCommand streams on one gRPC connection over 50 sessions: all complete,
 *     moatd's peak RSS and its budget's peak within memory_budget_bytes
 *  4. `echo hi` round trip p50 over the listener's TLS (a second moatd with grpc_tls_cert, its
 *     own session) vs h2c (the first), alternated: on one connection each made beforehand (what
 *     TLS costs a call once connected), then on a new connection per call (what a handshake
 *     costs). No target: the figures for the README
 *
 * usage: bench_grpc [--quick] [latency|stream|concurrent|tls]...   (naming phases runs only those;
 * needs dockerd, moat-sandbox:latest and the execd bundle from
 * scripts/build-sandbox-image.sh <build-dir>; env MOAT_BUILD_DIR = that build dir) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "h2_client.h"
#include "harness.h"
#include "moat/client.h"
#include "moat/v1/exec.pb-c.h"
#include "moat/v1/sandbox.pb-c.h"
#include "tls_files.h"

#define PREFIX "moat-benchgrpc-"
#define WINDOW (1u << 20)

static int failures;

static double now_s(void)
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

static double p50(double *v, int n)
{
    qsort(v, (size_t)n, sizeof(*v), cmp_d);
    return v[n / 2];
}

static void verdict(const char *what, double value, double baseline, const char *unit, double ratio,
                    bool ok, const char *target)
{
    printf("%-58s %10.3f %-5s baseline %10.3f  ratio %.3f  target %s  %s\n", what, value, unit,
           baseline, ratio, target, ok ? "MET" : "MISSED");
    if (!ok)
        failures++;
}

static bool create_session(raw_conn *c, const char *chat, char sid[64])
{
    Moat__V1__CreateSessionRequest req = MOAT__V1__CREATE_SESSION_REQUEST__INIT;
    req.chat_id = (char *)chat;
    req.ttl_seconds = 1800;
    ProtobufCMessage *resp = NULL;
    if (raw_unary(c, "/moat.v1.Sandboxes/CreateSession", &req.base,
                  &moat__v1__sandbox_session__descriptor, &resp, NULL, 0) != 0 ||
        resp == NULL)
        return false;
    snprintf(sid, 64, "%s", ((Moat__V1__SandboxSession *)resp)->session_id);
    protobuf_c_message_free_unpacked(resp, NULL);
    return true;
}

/* ---- the framed way: libmoat ------------------------------------------------------------- */

static long long framed_run(moat_client *c, const char *sid, const char *command)
{
    moat_run_command_req req = {.session_id = sid, .command = command};
    uint8_t buf[1024];
    size_t len = 0;
    moat_call *call = NULL;
    if (moat_run_command_req_encode(&req, buf, sizeof(buf), &len) != MOAT_OK ||
        moat_call_start(c, "/moat.v1.Exec/RunCommand", 0, NULL, 0, (moat_slice){buf, len}, &call) !=
            MOAT_OK)
        return -1;
    long long bytes = 0;
    moat_slice msg;
    while (moat_call_recv(call, 300000, &msg) == MOAT_OK) {
        moat_exec_event ev;
        if (moat_exec_event_decode(msg, &ev) == MOAT_OK && ev.kind == MOAT_EXEC_OUTPUT)
            bytes += (long long)ev.data.len;
    }
    bool ok = moat_call_status(call)->code == MOAT_CODE_OK;
    moat_call_free(call);
    return ok ? bytes : -1;
}

/* ---- the gRPC way: nghttp2 --------------------------------------------------------------- */

typedef struct grpc_run {
    uint8_t *body;
    long long stdout_bytes;
    bool exited;
} grpc_run;

/* Decoded with libmoat's decoder, as the framed side's events are, so that both ways pay the
 * same for it. */
static void count_output(h2c_stream *st, const uint8_t *msg, size_t len, void *ud)
{
    (void)st;
    grpc_run *r = ud;
    moat_exec_event ev;
    if (moat_exec_event_decode((moat_slice){msg, len}, &ev) != MOAT_OK)
        return;
    if (ev.kind == MOAT_EXEC_OUTPUT)
        r->stdout_bytes += (long long)ev.data.len;
    else if (ev.kind == MOAT_EXEC_EXIT)
        r->exited = true;
}

static h2c_stream *grpc_start(h2c *c, const char *sid, const char *command, grpc_run *r)
{
    Moat__V1__RunCommandRequest req = MOAT__V1__RUN_COMMAND_REQUEST__INIT;
    req.session_id = (char *)sid;
    req.command = (char *)command;
    size_t n = moat__v1__run_command_request__get_packed_size(&req);
    uint8_t *packed = malloc(n);
    r->body = malloc(5 + n);
    moat__v1__run_command_request__pack(&req, packed);
    h2c_frame_message(r->body, packed, n);
    free(packed);
    r->stdout_bytes = 0;
    r->exited = false;
    h2c_stream *st = h2c_request(c, "/moat.v1.Exec/RunCommand", NULL, NULL, r->body, 5 + n);
    if (st != NULL) {
        st->on_message = count_output;
        st->ud = r;
    }
    return st;
}

static long long grpc_run_one(h2c *c, const char *sid, const char *command)
{
    grpc_run r;
    h2c_stream *st = grpc_start(c, sid, command, &r);
    bool ok = st != NULL && h2c_wait(c, st, 300000) && st->grpc_status == 0 && r.exited;
    free(r.body);
    return ok ? r.stdout_bytes : -1;
}

/* ---- the figures ------------------------------------------------------------------------- */

static void bench_latency(int framed_port, int grpc_port, const char *sid, int n)
{
    char addr[64];
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", framed_port);
    moat_client *fc = NULL;
    moat_status st;
    h2c *gc = h2c_connect(grpc_port, WINDOW);
    if (gc == NULL || moat_client_connect(addr, NULL, &fc, &st) != MOAT_OK) {
        failures++;
        return;
    }
    double *fv = calloc((size_t)n, sizeof(double)), *gv = calloc((size_t)n, sizeof(double));
    int bad = 0;
    /* Warm-up of both, then alternated so that the host's noise falls on both alike. */
    bad += framed_run(fc, sid, "echo hi") != 3;
    bad += grpc_run_one(gc, sid, "echo hi") != 3;
    for (int i = 0; i < n; i++) {
        double t0 = now_s();
        bad += framed_run(fc, sid, "echo hi") != 3;
        double t1 = now_s();
        bad += grpc_run_one(gc, sid, "echo hi") != 3;
        double t2 = now_s();
        fv[i] = (t1 - t0) * 1e3;
        gv[i] = (t2 - t1) * 1e3;
    }
    double f = p50(fv, n), g = p50(gv, n);
    printf("echo hi over %d calls each: framed p50 %.3f ms, gRPC p50 %.3f ms (%d failed)\n", n, f,
           g, bad);
    verdict("echo hi round trip p50, gRPC vs framed (ms)", g, f, "ms", g / f,
            bad == 0 && g <= 1.5 * f, "<= 1.5x");
    free(fv);
    free(gv);
    moat_client_close(fc);
    h2c_close(gc);
}

/* Rounds alternate gRPC and framed, so that the two of a round see the same host: the figure is
 * the median of the rounds' ratios. Each round runs gRPC twice: with DATA frames of up to 1 MiB
 * (this client's SETTINGS_MAX_FRAME_SIZE) and of 16 KiB (HTTP/2's default, which gRPC's own
 * libraries keep). */
static void bench_stream(int framed_port, int grpc_port, const char *sid, long long bytes,
                         int rounds)
{
    char addr[64], cmd[128];
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", framed_port);
    snprintf(cmd, sizeof(cmd), "yes | head -c %lld", bytes);
    double *ratio = calloc((size_t)rounds, sizeof(double));
    double *ratio16 = calloc((size_t)rounds, sizeof(double));
    double *gv = calloc((size_t)rounds, sizeof(double)),
           *g16 = calloc((size_t)rounds, sizeof(double));
    double *fv = calloc((size_t)rounds, sizeof(double));
    int bad = 0;
    for (int r = 0; r < rounds; r++) {
        moat_client *fc = NULL;
        moat_status st;
        /* Each connects just before its call: moatd closes a connection that makes no call
         * within hello_timeout_seconds. */
        h2c *gc = h2c_connect(grpc_port, WINDOW);
        if (gc == NULL || moat_client_connect(addr, NULL, &fc, &st) != MOAT_OK) {
            failures++;
            return;
        }
        double t0 = now_s();
        long long gb = grpc_run_one(gc, sid, cmd);
        double t1 = now_s();
        long long fb = framed_run(fc, sid, cmd);
        double t2 = now_s();
        h2c *gc16 = h2c_connect_frames(grpc_port, WINDOW, 16384);
        long long g16b = gc16 != NULL ? grpc_run_one(gc16, sid, cmd) : -1;
        double t3 = now_s();
        bad += gb != bytes || fb != bytes || g16b != bytes;
        gv[r] = (double)bytes / (t1 - t0) / 1048576.0;
        fv[r] = (double)bytes / (t2 - t1) / 1048576.0;
        g16[r] = (double)bytes / (t3 - t2) / 1048576.0;
        ratio[r] = gv[r] / fv[r];
        ratio16[r] = g16[r] / fv[r];
        printf("stream round %d: gRPC %.0f MiB/s (16 KiB frames %.0f), framed %.0f MiB/s "
               "(%.2fx, %.2fx)\n",
               r + 1, gv[r], g16[r], fv[r], ratio[r], ratio16[r]);
        moat_client_close(fc);
        h2c_close(gc);
        h2c_close(gc16);
    }
    double rm = p50(ratio, rounds), rm16 = p50(ratio16, rounds), g = p50(gv, rounds),
           g16m = p50(g16, rounds), f = p50(fv, rounds);
    char what[96];
    snprintf(what, sizeof(what), "%lld MiB of yes, median of %d, gRPC vs framed (MiB/s)",
             bytes >> 20, rounds);
    verdict(what, g, f, "MiB/s", rm, bad == 0 && rm >= 0.8, ">= 0.8x");
    snprintf(what, sizeof(what), "the same, gRPC with 16 KiB frames (MiB/s)");
    verdict(what, g16m, f, "MiB/s", rm16, bad == 0 && rm16 >= 0.8, ">= 0.8x");
    free(ratio);
    free(ratio16);
    free(gv);
    free(g16);
    free(fv);
}

typedef struct conc_state {
    h2c_stream **st;
    int n;
    moatd_proc *p;
    long peak_kb;
} conc_state;

static bool all_closed(h2c *c, void *ud)
{
    (void)c;
    conc_state *s = ud;
    long kb = proc_rss_kb(s->p->pid);
    if (kb > s->peak_kb)
        s->peak_kb = kb;
    for (int i = 0; i < s->n; i++)
        if (!s->st[i]->closed)
            return false;
    return true;
}

static void bench_concurrent(moatd_proc *p, raw_conn *rc, int nsessions, int total)
{
    char(*sids)[64] = calloc((size_t)nsessions, 64);
    for (int i = 0; i < nsessions; i++) {
        char chat[40];
        snprintf(chat, sizeof(chat), "22222222-3333-4444-8555-%012d", i);
        if (!create_session(rc, chat, sids[i])) {
            printf("concurrent: cannot create session %d\n", i);
            failures++;
            free(sids);
            return;
        }
    }
    h2c *c = h2c_connect(p->grpc_port, 65535);
    grpc_run *runs = calloc((size_t)total, sizeof(*runs));
    conc_state s = {calloc((size_t)total, sizeof(h2c_stream *)), total, p, 0};
    double t0 = now_s();
    for (int i = 0; i < total; i++)
        s.st[i] = grpc_start(c, sids[i % nsessions], "echo start; sleep 2; echo end", &runs[i]);
    bool done = h2c_run(c, all_closed, &s, 300000);
    double t = now_s() - t0;
    int ok = 0;
    for (int i = 0; i < total; i++) {
        bool good = s.st[i]->grpc_status == 0 && runs[i].exited && runs[i].stdout_bytes == 10;
        ok += good;
        if (!good && ok + 10 > i) /* the first few failures, saying why */
            printf("concurrent: stream %d: grpc-status %d reason %s: %s; exited %d, %lld bytes, "
                   "%llu messages, closed %d\n",
                   i, s.st[i]->grpc_status, s.st[i]->details.reason, s.st[i]->grpc_message,
                   runs[i].exited, runs[i].stdout_bytes, (unsigned long long)s.st[i]->messages,
                   s.st[i]->closed);
        free(runs[i].body);
    }
    long long budget_peak = metric_value(p->metrics_port, "moat_memory_peak_bytes");
    long long budget_cap = metric_value(p->metrics_port, "moat_memory_budget_bytes");
    printf("concurrent: %d of %d gRPC streams on one connection completed in %.1f s; moatd peak "
           "RSS %.1f MB; budget peak %.1f MiB of %.1f MiB\n",
           ok, total, t, (double)s.peak_kb / 1024.0, (double)budget_peak / 1048576.0,
           (double)budget_cap / 1048576.0);
    verdict("1,000 concurrent gRPC streams: moatd peak RSS (MB)", (double)s.peak_kb / 1024.0,
            (double)budget_cap / 1e6, "MB", (double)s.peak_kb * 1024.0 / (double)budget_cap,
            done && ok == total && budget_peak <= budget_cap &&
                (double)s.peak_kb * 1024.0 <= (double)budget_cap,
            "all done, <= budget");
    free(s.st);
    free(runs);
    free(sids);
    h2c_close(c);
}

/* Where phase 4's calls go: h2c on the first moatd, TLS on the second. */
typedef struct tls_ends {
    int plain_port, tls_port;
    const char *cafile, *plain_sid, *tls_sid;
    h2c *plain, *tls; /* connections made beforehand */
} tls_ends;

/* n rounds of `echo hi`, h2c then TLS, each timed into pv and tv (ms): on the connections made
 * beforehand, or (fresh) each on a connection of its own, its connect and handshake timed too.
 * Returns the calls that failed. */
static int tls_rounds(const tls_ends *e, int n, bool fresh, double *pv, double *tv)
{
    int bad = 0;
    for (int i = 0; i < n; i++) {
        double t0 = now_s();
        h2c *c = fresh ? h2c_connect(e->plain_port, WINDOW) : e->plain;
        bad += c == NULL || grpc_run_one(c, e->plain_sid, "echo hi") != 3;
        if (fresh)
            h2c_close(c);
        double t1 = now_s();
        c = fresh ? h2c_connect_tls(e->tls_port, e->cafile) : e->tls;
        bad += c == NULL || grpc_run_one(c, e->tls_sid, "echo hi") != 3;
        if (fresh)
            h2c_close(c);
        double t2 = now_s();
        pv[i] = (t1 - t0) * 1e3;
        tv[i] = (t2 - t1) * 1e3;
    }
    return bad;
}

static void report_tls(const char *what, const char *figure, int n, int bad, double *pv, double *tv)
{
    double h = p50(pv, n), t = p50(tv, n);
    printf("%s over %d calls each: gRPC h2c p50 %.3f ms, gRPC TLS p50 %.3f ms (%d failed)\n", what,
           n, h, t, bad);
    char line[96];
    snprintf(line, sizeof(line), "%s %s", what, figure);
    verdict(line, t, h, "ms", t / h, bad == 0, "none");
}

static void bench_tls(int grpc_port, const char *sid, int n)
{
    tls_files files;
    if (!tls_files_make(&files)) {
        failures++;
        return;
    }
    char cert[128], key[128];
    snprintf(cert, sizeof(cert), "--grpc_tls_cert=%s", files.cert);
    snprintf(key, sizeof(key), "--grpc_tls_key=%s", files.key);
    const char *extra[] = {"--container_name_prefix=" PREFIX, cert, key, NULL};
    moatd_proc p;
    if (!moatd_start(&p, true, extra)) {
        tls_files_remove(&files);
        failures++;
        return;
    }
    raw_conn *rc = raw_connect_ready(p.port, NULL);
    char tls_sid[64];
    h2c *plain = h2c_connect(grpc_port, WINDOW);
    h2c *tls = h2c_connect_tls(p.grpc_port, files.cert);
    double *pv = calloc((size_t)n, sizeof(double)), *tv = calloc((size_t)n, sizeof(double));
    tls_ends ends = {grpc_port, p.grpc_port, files.cert, sid, tls_sid, plain, tls};
    if (rc == NULL || !create_session(rc, "11111111-2222-4333-8444-888888888888", tls_sid) ||
        plain == NULL || tls == NULL) {
        failures++;
    } else {
        /* Warm-up of both. */
        int bad = (grpc_run_one(plain, sid, "echo hi") != 3) +
                  (grpc_run_one(tls, tls_sid, "echo hi") != 3);
        bad += tls_rounds(&ends, n, false, pv, tv);
        report_tls("echo hi", "round trip p50, gRPC TLS vs h2c (ms)", n, bad, pv, tv);
        /* A connection of its own per call: its connect and handshake in the time. */
        bad = tls_rounds(&ends, n / 4, true, pv, tv);
        report_tls("connect + echo hi", "new connection per call, p50, TLS vs h2c (ms)", n / 4, bad,
                   pv, tv);
    }
    free(pv);
    free(tv);
    h2c_close(plain);
    h2c_close(tls);
    raw_close(rc);
    moatd_stop(&p);
    moatd_remove_dir(p.state_dir);
    tls_files_remove(&files);
}

static bool phase(int argc, char **argv, const char *name)
{
    bool named = false;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], name) == 0)
            return true;
        named = named || argv[i][0] != '-';
    }
    return !named;
}

int main(int argc, char **argv)
{
    bool quick = argc > 1 && strcmp(argv[1], "--quick") == 0;
    const char *extra[] = {"--container_name_prefix=" PREFIX, "--max_streams_per_connection=1000",
                           NULL};
    moatd_proc p;
    docker_remove_prefixed(PREFIX);
    if (!moatd_start(&p, true, extra)) {
        fprintf(stderr, "moatd did not start\n");
        return 1;
    }
    raw_conn *rc = raw_connect_ready(p.port, NULL);
    char sid[64];
    if (rc == NULL || !create_session(rc, "11111111-2222-4333-8444-777777777777", sid)) {
        fprintf(stderr, "cannot create a session\n");
        moatd_stop(&p);
        return 1;
    }
    if (phase(argc, argv, "latency"))
        bench_latency(p.port, p.grpc_port, sid, quick ? 20 : 200);
    if (phase(argc, argv, "stream"))
        bench_stream(p.port, p.grpc_port, sid, quick ? 256ll << 20 : 1ll << 30, quick ? 1 : 5);
    if (phase(argc, argv, "concurrent"))
        bench_concurrent(&p, rc, quick ? 5 : 50, quick ? 100 : 1000);
    if (phase(argc, argv, "tls"))
        bench_tls(p.grpc_port, sid, quick ? 20 : 200);
    raw_close(rc);
    moatd_stop(&p);
    docker_remove_prefixed(PREFIX);
    moatd_remove_dir(p.state_dir);
    printf("%s\n", failures == 0 ? "all targets met" : "some targets missed");
    return failures == 0 ? 0 : 1;
}
