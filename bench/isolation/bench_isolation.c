/* bench_isolation: what an isolation level above runc costs, measured in one run on one engine
 * that has both runtimes: runc (the engine's default) and another OCI runtime (gVisor's runsc
 * by default). One moatd per runtime, same image, same default session limits (1 CPU, 512 MiB);
 * every round alternates which runtime goes first.
 *
 *  1. session create p50: CreateSession for a new chat (container create + start + execd ready)
 *  2. `echo hi` p50: RunCommand over one libmoat connection, to its exit event
 *  3. stream: `yes | head -c SIZE` delivered to a libmoat client, MiB/s, median of 3
 *
 * Every sandbox is checked to run under the runtime it is counted for (docker inspect).
 *
 * usage: bench_isolation [--quick] DOCKER_HOST [RUNTIME]
 *   DOCKER_HOST  the engine, e.g. unix:///tmp/moat-iso/docker.sock (scripts/dockerd-runsc.sh
 *                starts one with runsc registered), with moat-sandbox:latest imported
 *                (DOCKER_HOST=… scripts/build-sandbox-image.sh <build-dir>)
 *   RUNTIME      the runtime compared with runc; default runsc
 *   env MOAT_BUILD_DIR = the build dir (moatd and execd-bundle)
 * --quick: fewer rounds and 32 MiB instead of 256 MiB (figures indicative only). Bounded: every
 * call has a timeout, and the counts are fixed (about 2 minutes in full under runsc here). */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "moat/client.h"
#include "moat/v1/sandbox.pb-c.h"

/* A moatd under one runtime, with its connections and its long-lived session. */
typedef struct side {
    const char *runtime; /* as Docker names it */
    char prefix[32];     /* container name prefix, so cleanup touches only this bench's */
    moatd_proc proc;
    raw_conn *control; /* CreateSession / StopSession */
    moat_client *client;
    char sid[64];
    double *create_ms, *echo_ms, *stream_mibs;
} side;

static int failures;
static const char *docker_host;

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

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof(double), cmp_d);
    return v[n / 2];
}

static void remove_containers(const char *prefix)
{
    char cmd[512];
    snprintf(cmd, sizeof(cmd),
             "ids=$(/usr/bin/docker -H %s ps -aq --filter name=%s); "
             "[ -z \"$ids\" ] || /usr/bin/docker -H %s rm -f $ids >/dev/null 2>&1",
             docker_host, prefix, docker_host);
    if (system(cmd) != 0)
        fprintf(stderr, "bench_isolation: could not remove %s* containers\n", prefix);
}

/* False (and counted as a failure) unless Docker runs the container under s->runtime. */
static bool runs_under(const side *s, const char *container_id)
{
    char cmd[400], got[64] = "";
    snprintf(cmd, sizeof(cmd), "/usr/bin/docker -H %s inspect -f '{{.HostConfig.Runtime}}' %s",
             docker_host, container_id);
    FILE *p = popen(cmd, "r");
    if (p != NULL) {
        if (fgets(got, sizeof(got), p) == NULL)
            got[0] = '\0';
        pclose(p);
    }
    got[strcspn(got, "\n")] = '\0';
    if (strcmp(got, s->runtime) == 0)
        return true;
    printf("container %.12s runs under '%s', not '%s'\n", container_id, got, s->runtime);
    failures++;
    return false;
}

static bool create_session(side *s, const char *chat, char sid[64], char cid[80])
{
    Moat__V1__CreateSessionRequest req = MOAT__V1__CREATE_SESSION_REQUEST__INIT;
    req.chat_id = (char *)chat;
    req.ttl_seconds = 1800;
    ProtobufCMessage *resp = NULL;
    char reason[64] = "";
    int code = raw_unary(s->control, "/moat.v1.Sandboxes/CreateSession", &req.base,
                         &moat__v1__sandbox_session__descriptor, &resp, reason, sizeof(reason));
    if (code != 0 || resp == NULL) {
        printf("%s: CreateSession failed: code %d reason %s\n", s->runtime, code, reason);
        failures++;
        return false;
    }
    Moat__V1__SandboxSession *session = (Moat__V1__SandboxSession *)resp;
    snprintf(sid, 64, "%s", session->session_id);
    snprintf(cid, 80, "%s", session->container_id);
    protobuf_c_message_free_unpacked(resp, NULL);
    return true;
}

static void stop_session(side *s, const char *sid)
{
    Moat__V1__StopSessionRequest req = MOAT__V1__STOP_SESSION_REQUEST__INIT;
    req.session_id = (char *)sid;
    ProtobufCMessage *resp = NULL;
    if (raw_unary(s->control, "/moat.v1.Sandboxes/StopSession", &req.base,
                  &moat__v1__stop_session_response__descriptor, &resp, NULL, 0) != 0)
        failures++;
    if (resp != NULL)
        protobuf_c_message_free_unpacked(resp, NULL);
}

/* One RunCommand; the output bytes, or -1 when the call or the command failed. */
static long long run(side *s, const char *command)
{
    moat_run_command_req req = {.session_id = s->sid, .command = command};
    uint8_t buf[512];
    size_t len = 0;
    moat_call *call = NULL;
    if (moat_run_command_req_encode(&req, buf, sizeof(buf), &len) != MOAT_OK ||
        moat_call_start(s->client, "/moat.v1.Exec/RunCommand", 0, NULL, 0, (moat_slice){buf, len},
                        &call) != MOAT_OK)
        return -1;
    long long bytes = 0;
    int exit_code = -1;
    moat_slice msg;
    while (moat_call_recv(call, 120000, &msg) == MOAT_OK) {
        moat_exec_event ev;
        if (moat_exec_event_decode(msg, &ev) != MOAT_OK)
            break;
        if (ev.kind == MOAT_EXEC_OUTPUT)
            bytes += (long long)ev.data.len;
        else if (ev.kind == MOAT_EXEC_EXIT && ev.exit_known)
            exit_code = ev.exit_code;
    }
    bool ok = moat_call_status(call)->code == MOAT_CODE_OK && exit_code == 0;
    moat_call_free(call);
    return ok ? bytes : -1;
}

static bool side_start(side *s, const char *runtime, const char *tag, int rounds)
{
    s->runtime = runtime;
    snprintf(s->prefix, sizeof(s->prefix), "moat-iso-%s-", tag);
    remove_containers(s->prefix);
    char a_docker[300], a_runtime[100], a_prefix[64];
    snprintf(a_docker, sizeof(a_docker), "--docker_host=%s", docker_host);
    /* runc is the engine's default: moatd sends no runtime at all, as it does by default. */
    snprintf(a_runtime, sizeof(a_runtime), "--runtime=%s",
             strcmp(runtime, "runc") == 0 ? "" : runtime);
    snprintf(a_prefix, sizeof(a_prefix), "--container_name_prefix=%s", s->prefix);
    const char *extra[] = {a_docker, a_runtime, a_prefix, "--log_level=warn", NULL};
    if (!moatd_start(&s->proc, true, extra))
        return false;
    s->control = raw_connect(s->proc.port);
    moat_frame ack;
    char addr[64];
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", s->proc.port);
    moat_status st;
    if (s->control == NULL || raw_hello(s->control, NULL, &ack) != 1 ||
        moat_client_connect(addr, NULL, &s->client, &st) != MOAT_OK)
        return false;
    s->create_ms = calloc((size_t)rounds, sizeof(double));
    s->echo_ms = calloc((size_t)rounds * 4, sizeof(double));
    s->stream_mibs = calloc(3, sizeof(double));
    return s->create_ms != NULL && s->echo_ms != NULL && s->stream_mibs != NULL;
}

static void side_stop(side *s)
{
    if (s->sid[0] != '\0')
        stop_session(s, s->sid);
    if (s->client != NULL)
        moat_client_close(s->client);
    if (s->control != NULL)
        raw_close(s->control);
    if (s->proc.pid > 0) {
        moatd_stop(&s->proc);
        moatd_remove_dir(s->proc.state_dir);
    }
    remove_containers(s->prefix);
    free(s->create_ms);
    free(s->echo_ms);
    free(s->stream_mibs);
}

/* The host is shared: its load, printed before and after, says how far to trust the figures. */
static void print_load(const char *when)
{
    char line[128] = "";
    FILE *f = fopen("/proc/loadavg", "r");
    if (f != NULL) {
        if (fgets(line, sizeof(line), f) == NULL)
            line[0] = '\0';
        fclose(f);
    }
    printf("host load %s: %s", when, line[0] != '\0' ? line : "unknown\n");
}

static void report(const char *what, double runc, double other, const char *runtime)
{
    printf("%-40s %10.2f %10.2f %8.2fx  (%s/runc)\n", what, runc, other, other / runc, runtime);
}

int main(int argc, char **argv)
{
    int arg = 1;
    bool quick = argc > arg && strcmp(argv[arg], "--quick") == 0;
    arg += quick;
    if (argc <= arg || getenv("MOAT_BUILD_DIR") == NULL) {
        fprintf(stderr, "usage: MOAT_BUILD_DIR=<build> bench_isolation [--quick] DOCKER_HOST "
                        "[RUNTIME]\n");
        return 2;
    }
    docker_host = argv[arg];
    const char *runtime = argc > arg + 1 ? argv[arg + 1] : "runsc";
    const int creates = quick ? 5 : 15, echoes = quick ? 20 : 60;
    const long long stream_bytes = quick ? 32ll << 20 : 256ll << 20;

    side sides[2];
    memset(sides, 0, sizeof(sides));
    if (!side_start(&sides[0], "runc", "runc", creates) ||
        !side_start(&sides[1], runtime, "other", creates)) {
        fprintf(stderr, "bench_isolation: moatd did not start on %s\n", docker_host);
        side_stop(&sides[0]);
        side_stop(&sides[1]);
        return 1;
    }
    printf("engine %s: runc against %s, %d creates, %d echoes, 3 streams of %lld MiB each\n",
           docker_host, runtime, creates, echoes, stream_bytes >> 20);
    print_load("before");
    fflush(stdout);

    /* 1. Create: a new chat each round, stopped again outside the timing. */
    for (int r = 0; r < creates && failures == 0; r++) {
        for (int k = 0; k < 2; k++) {
            side *s = &sides[(r + k) % 2];
            char chat[40], sid[64], cid[80];
            snprintf(chat, sizeof(chat), "%08x-0000-4000-8000-%04x%08x", (unsigned)getpid(),
                     (unsigned)(s - sides), (unsigned)r);
            double t0 = now_s();
            if (!create_session(s, chat, sid, cid))
                break;
            s->create_ms[r] = (now_s() - t0) * 1000;
            runs_under(s, cid);
            stop_session(s, sid);
        }
    }

    /* 2 and 3 in one long-lived session per runtime. */
    for (int k = 0; k < 2 && failures == 0; k++) {
        char chat[40], cid[80];
        snprintf(chat, sizeof(chat), "%08x-0000-4000-8000-1111%08x", (unsigned)getpid(),
                 (unsigned)k);
        if (create_session(&sides[k], chat, sides[k].sid, cid))
            runs_under(&sides[k], cid);
        for (int w = 0; w < 3; w++) /* warm-up: first runs pay for page faults and caches */
            run(&sides[k], "echo hi");
    }
    for (int r = 0; r < echoes && failures == 0; r++) {
        for (int k = 0; k < 2; k++) {
            side *s = &sides[(r + k) % 2];
            double t0 = now_s();
            if (run(s, "echo hi") != 3) {
                printf("%s: echo hi failed\n", s->runtime);
                failures++;
            }
            s->echo_ms[r] = (now_s() - t0) * 1000;
        }
    }
    char stream_cmd[64];
    snprintf(stream_cmd, sizeof(stream_cmd), "yes | head -c %lld", stream_bytes);
    for (int r = 0; r < 3 && failures == 0; r++) {
        for (int k = 0; k < 2; k++) {
            side *s = &sides[(r + k) % 2];
            double t0 = now_s();
            long long got = run(s, stream_cmd);
            double t = now_s() - t0;
            if (got != stream_bytes) {
                printf("%s: stream delivered %lld of %lld bytes\n", s->runtime, got, stream_bytes);
                failures++;
            }
            s->stream_mibs[r] = (double)got / t / 1048576.0;
        }
    }

    print_load("after");
    if (failures == 0) {
        printf("%-40s %10s %10s %9s\n", "figure", "runc", runtime, "ratio");
        report("session create p50 (ms)", median(sides[0].create_ms, creates),
               median(sides[1].create_ms, creates), runtime);
        report("echo hi p50, one libmoat conn (ms)", median(sides[0].echo_ms, echoes),
               median(sides[1].echo_ms, echoes), runtime);
        char what[64];
        snprintf(what, sizeof(what), "stream %lld MiB of yes (MiB/s)", stream_bytes >> 20);
        report(what, median(sides[0].stream_mibs, 3), median(sides[1].stream_mibs, 3), runtime);
    }
    side_stop(&sides[0]);
    side_stop(&sides[1]);
    printf("bench_isolation: %s\n", failures == 0 ? "done" : "FAILED");
    return failures == 0 ? 0 : 1;
}
