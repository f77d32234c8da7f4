/* bench_userns: what Docker's userns-remap costs a session, measured in one run: a private
 * dockerd with --userns-remap (tests/security/userns_engine.c) against a private dockerd without
 * it, each behind a real moatd with the default settings (workspace quotas on). Iterations
 * alternate between the engines, in a rotating order.
 *   1. CreateSession for a new chat (workspace image made and mounted, container created and
 *      started, execd answering), p50;
 *   2. RunCommand `echo hi` to its exit over a fresh connection, p50.
 * The two private engines are started the same way and differ in nothing else; the shared
 * engine (/var/run/docker.sock, busy with whatever else runs there) is measured too, for the
 * record.
 * usage: bench_userns [iterations=15]   (needs root, dockerd and moat-sandbox:latest with the
 * execd bundle, scripts/build-sandbox-image.sh <build-dir>; env MOAT_BUILD_DIR = that dir)
 * Everything it makes is removed at the end. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "moat/v1/exec.pb-c.h"
#include "moat/v1/sandbox.pb-c.h"
#include "userns_engine.h"

#define IMAGE  "moat-sandbox:latest"
#define ECHOES 5

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double p50(double *v, int n)
{
    qsort(v, (size_t)n, sizeof(*v), cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static raw_conn *conn(const moatd_proc *p)
{
    raw_conn *c = raw_connect(p->port);
    moat_frame ack;
    if (c != NULL && raw_hello(c, NULL, &ack) != 1) {
        raw_close(c);
        c = NULL;
    }
    return c;
}

/* A session for a new chat; its id in sid. False on failure (printed). */
static bool create(const moatd_proc *p, char sid[MOAT_UUID_STR_LEN])
{
    raw_conn *c = conn(p);
    if (c == NULL)
        return false;
    char chat[MOAT_UUID_STR_LEN];
    moat_uuid_generate(chat);
    Moat__V1__CreateSessionRequest req = MOAT__V1__CREATE_SESSION_REQUEST__INIT;
    req.chat_id = chat;
    req.ttl_seconds = 600;
    ProtobufCMessage *resp = NULL;
    char reason[64] = "";
    int code = raw_unary(c, "/moat.v1.Sandboxes/CreateSession", &req.base,
                         &moat__v1__sandbox_session__descriptor, &resp, reason, sizeof(reason));
    raw_close(c);
    if (code != MOAT_CODE_OK) {
        fprintf(stderr, "bench_userns: CreateSession: code %d reason %s\n", code, reason);
        return false;
    }
    snprintf(sid, MOAT_UUID_STR_LEN, "%s", ((Moat__V1__SandboxSession *)resp)->session_id);
    protobuf_c_message_free_unpacked(resp, NULL);
    return true;
}

static void stop(const moatd_proc *p, const char *sid)
{
    raw_conn *c = conn(p);
    if (c == NULL)
        return;
    Moat__V1__StopSessionRequest req = MOAT__V1__STOP_SESSION_REQUEST__INIT;
    req.session_id = (char *)sid;
    raw_unary(c, "/moat.v1.Sandboxes/StopSession", &req.base, NULL, NULL, NULL, 0);
    raw_close(c);
}

/* `echo hi` to its End; true when it ended OK with exit 0. */
static bool echo_hi(const moatd_proc *p, const char *sid)
{
    raw_conn *c = conn(p);
    if (c == NULL)
        return false;
    Moat__V1__RunCommandRequest req = MOAT__V1__RUN_COMMAND_REQUEST__INIT;
    req.session_id = (char *)sid;
    req.command = (char *)"echo hi";
    uint32_t id = raw_call(c, "/moat.v1.Exec/RunCommand", 0, &req.base);
    bool ok = false;
    for (;;) {
        moat_frame f;
        if (raw_recv_stream(c, id, &f, 30000) != 1)
            break;
        if (f.kind == MOAT_FRAME_END) {
            ok = f.u.end.code == MOAT_CODE_OK;
            break;
        }
    }
    raw_close(c);
    return ok;
}

int main(int argc, char **argv)
{
    int iterations = argc > 1 ? atoi(argv[1]) : 15;
    if (iterations < 1 || iterations > 100) {
        fprintf(stderr, "usage: %s [iterations 1..100]\n", argv[0]);
        return 2;
    }
    const char *why = geteuid() != 0 ? "needs root" : userns_engine_unsupported();
    if (why != NULL) {
        fprintf(stderr, "bench_userns: %s\n", why);
        return 1;
    }
    /* Two private engines alike in all but userns-remap, and the shared one for the record. */
    enum { PLAIN, REMAP, SHARED, N };
    static const char *const names[N] = {"private engine", "private, userns-remap",
                                         "shared engine (info)"};
    userns_engine eng[2];
    memset(eng, 0, sizeof(eng));
    moatd_proc procs[N];
    memset(procs, 0, sizeof(procs));
    double *create_ms[N] = {0}, *echo_ms[N] = {0};
    int failures = 0;
    for (int k = 0; k < N && failures == 0; k++) {
        char a_docker[160], a_prefix[96];
        snprintf(a_prefix, sizeof(a_prefix), "--container_name_prefix=moat-unsbench%d-%d-",
                 (int)getpid(), k);
        const char *extra[] = {a_prefix, "--log_level=warn", NULL, NULL};
        if (k != SHARED) {
            if (userns_engine_start(&eng[k], IMAGE, k == REMAP) != 0) {
                failures++;
                break;
            }
            snprintf(a_docker, sizeof(a_docker), "--docker_host=%s", eng[k].sock);
            extra[2] = a_docker;
        }
        failures += !moatd_start(&procs[k], true, extra);
        create_ms[k] = calloc((size_t)iterations, sizeof(double));
        echo_ms[k] = calloc((size_t)iterations * ECHOES, sizeof(double));
    }
    for (int i = 0; i < iterations && failures == 0; i++) {
        /* The order rotates: whichever engine goes first pays for the others' last stop. */
        for (int step = 0; step < N && failures == 0; step++) {
            int k = (i + step) % N;
            char sid[MOAT_UUID_STR_LEN];
            double t0 = now_ms();
            if (!create(&procs[k], sid)) {
                failures++;
                break;
            }
            create_ms[k][i] = now_ms() - t0;
            for (int j = 0; j < ECHOES; j++) {
                t0 = now_ms();
                failures += !echo_hi(&procs[k], sid);
                echo_ms[k][i * ECHOES + j] = now_ms() - t0;
            }
            stop(&procs[k], sid);
        }
    }
    if (failures == 0) {
        printf("userns bench: %d iterations rotating, %d `echo hi` per session, image %s\n",
               iterations, ECHOES, IMAGE);
        double c[N], e[N];
        for (int k = 0; k < N; k++) {
            c[k] = p50(create_ms[k], iterations);
            e[k] = p50(echo_ms[k], iterations * ECHOES);
            printf("%-24s CreateSession p50 %7.1f ms (%.2fx)   echo hi p50 %6.2f ms (%.2fx)\n",
                   names[k], c[k], c[k] / c[PLAIN], e[k], e[k] / e[PLAIN]);
        }
    }
    for (int k = 0; k < N; k++) {
        free(create_ms[k]);
        free(echo_ms[k]);
        if (procs[k].pid > 0)
            failures += moatd_stop(&procs[k]) != 0;
    }
    /* Sessions a failure left on the shared engine; the private ones go whole. */
    char cmd[256];
    snprintf(cmd, sizeof(cmd),
             "/usr/bin/docker ps -aq --filter name=moat-unsbench%d-%d- | xargs -r /usr/bin/docker "
             "rm -f >/dev/null 2>&1",
             (int)getpid(), SHARED);
    if (system(cmd) != 0)
        failures++;
    for (int k = 0; k < 2; k++)
        userns_engine_stop(&eng[k]);
    for (int k = 0; k < N; k++)
        if (procs[k].state_dir[0] != '\0')
            moatd_remove_dir(procs[k].state_dir);
    return failures ? 1 : 0;
}
