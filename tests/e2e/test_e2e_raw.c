/* End to end over raw frames: the real moatd, the real dockerd, the real
 * moat-execd in moat-sandbox:latest. Sessions, commands, files, flow control,
 * cancel, TTL expiry and a SIGKILLed moatd coming back.
 *
 * The engine and the OCI runtime are moatd's own settings from the environment:
 * MOAT_DOCKER_HOST (with DOCKER_HOST for the docker CLI the test runs) and MOAT_RUNTIME.
 * Every sandbox is checked to run under that runtime (tests/security/runsc_e2e.sh runs
 * the suite under gVisor this way). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "moat_test.h"

#include "harness.h"
#include "moat/v1/exec.pb-c.h"
#include "moat/v1/files.pb-c.h"
#include "moat/v1/health.pb-c.h"
#include "moat/v1/sandbox.pb-c.h"

/* Sandbox names start with a prefix of this run's own ("moat-e2e<pid>-"), so runs at the same
 * time (another checkout's, valgrind_e2e_daemon) never remove each other's sandboxes: it does not
 * contain "moat-e2e-" either, which docker's name filter would match anywhere in a name. */
static char prefix_arg[64];

/* Under AddressSanitizer moatd's RSS includes shadow memory and the
 * allocator's quarantine, and under valgrind (MOAT_DAEMON_WRAPPER) valgrind's
 * own, so RSS bounds are only checked in normal builds running moatd bare. */
#if defined(__SANITIZE_ADDRESS__)
#define RSS_CHECKED 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define RSS_CHECKED 0
#endif
#endif
#ifndef RSS_CHECKED
#define RSS_CHECKED 1
#endif

static const char rss_unchecked[] = "moatd's RSS bound not checked under ASan or valgrind";

static bool rss_checked(void)
{
    return RSS_CHECKED && getenv("MOAT_DAEMON_WRAPPER") == NULL;
}

static moatd_proc P;
static const char *extra_args[] = {prefix_arg, "--cleanup_interval_seconds=1", "--log_level=info",
                                   NULL};
static char chat_a[] = "6f1c2b0e-8a51-4c1e-9d7b-1f2e3d4c5b6a";
static char session_a[MOAT_UUID_STR_LEN];
static char first_state_dir[256];

static void cleanup_containers(void)
{
    char cmd[256];
    snprintf(cmd, sizeof(cmd),
             "ids=$(/usr/bin/docker ps -aq --filter name=moat-e2e%d-); "
             "[ -z \"$ids\" ] || /usr/bin/docker rm -f $ids >/dev/null 2>&1",
             (int)getpid());
    int rc = system(cmd);
    (void)rc;
}

static int setup(void **state)
{
    (void)state;
    snprintf(prefix_arg, sizeof(prefix_arg), "--container_name_prefix=moat-e2e%d-", (int)getpid());
    cleanup_containers();
    return moatd_start(&P, true, extra_args) ? 0 : -1;
}

/* The last test stops moatd and checks how it exited; here it runs only when a failure came
 * first. */
static int teardown(void **state)
{
    (void)state;
    moatd_stop(&P);
    cleanup_containers();
    moatd_remove_dir(P.state_dir);
    if (first_state_dir[0] != '\0')
        moatd_remove_dir(first_state_dir);
    return 0;
}

/* The runtime moatd was given, as Docker names it: "runc" when none was. */
static const char *expected_runtime(void)
{
    const char *r = getenv("MOAT_RUNTIME");
    return r != NULL && r[0] != '\0' ? r : "runc";
}

static bool under_gvisor(void)
{
    const char *r = expected_runtime();
    return strcmp(r, "runsc") == 0 || strncmp(r, "runsc-", 6) == 0;
}

/* Fails unless Docker ran the container under the expected runtime. */
static void assert_container_runtime(const char *container_id)
{
    char cmd[200], got[64] = "";
    snprintf(cmd, sizeof(cmd), "/usr/bin/docker inspect -f '{{.HostConfig.Runtime}}' %s",
             container_id);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    if (fgets(got, sizeof(got), p) == NULL)
        got[0] = '\0';
    pclose(p);
    got[strcspn(got, "\n")] = '\0';
    if (strcmp(got, expected_runtime()) != 0)
        fail_msg("container %.12s runs under '%s', not '%s'", container_id, got,
                 expected_runtime());
}

static raw_conn *conn(void)
{
    raw_conn *c = raw_connect(P.port);
    assert_non_null(c);
    moat_frame ack;
    assert_int_equal(raw_hello(c, NULL, &ack), 1);
    assert_int_equal(ack.kind, MOAT_FRAME_HELLO_ACK);
    return c;
}

static Moat__V1__SandboxSession *create(raw_conn *c, const char *chat, uint32_t ttl, bool force_new)
{
    Moat__V1__CreateSessionRequest req = MOAT__V1__CREATE_SESSION_REQUEST__INIT;
    req.chat_id = (char *)chat;
    req.ttl_seconds = ttl;
    req.force_new = force_new;
    ProtobufCMessage *resp = NULL;
    char reason[64] = "";
    int code = raw_unary(c, "/moat.v1.Sandboxes/CreateSession", &req.base,
                         &moat__v1__sandbox_session__descriptor, &resp, reason, sizeof(reason));
    if (code != MOAT_CODE_OK) {
        moatd_dump_log(&P);
        fail_msg("CreateSession: code %d reason %s", code, reason);
    }
    assert_container_runtime(((Moat__V1__SandboxSession *)resp)->container_id);
    return (Moat__V1__SandboxSession *)resp;
}

/* What one execution produced. */
typedef struct run_result {
    int end_code;
    char end_reason[64];
    uint64_t events;
    uint64_t last_seq;
    bool seq_ok;
    bool has_exit;
    bool exit_known;
    int exit_code;
    bool timed_out;
    char execution_id[128];
    int64_t init_ts, exit_ts;
    uint8_t *out;
    size_t out_len, out_cap;
    char order[64]; /* first output streams in order: 'o' or 'e' */
    size_t norder;
} run_result;

static void result_free(run_result *r)
{
    free(r->out);
}

static void on_event(run_result *r, const Moat__V1__ExecEvent *ev, bool keep)
{
    r->events++;
    if (ev->sequence != r->last_seq + 1)
        r->seq_ok = false;
    r->last_seq = ev->sequence;
    switch (ev->kind_case) {
    case MOAT__V1__EXEC_EVENT__KIND_INIT:
        snprintf(r->execution_id, sizeof(r->execution_id), "%s", ev->init->execution_id);
        r->init_ts = ev->timestamp_ms;
        break;
    case MOAT__V1__EXEC_EVENT__KIND_OUTPUT:
        if (r->norder < sizeof(r->order) - 1)
            r->order[r->norder++] =
                ev->output->stream == MOAT__V1__OUTPUT_STREAM__STDERR ? 'e' : 'o';
        if (keep) {
            if (r->out_len + ev->output->data.len > r->out_cap) {
                r->out_cap = (r->out_len + ev->output->data.len) * 2;
                r->out = realloc(r->out, r->out_cap);
            }
            memcpy(r->out + r->out_len, ev->output->data.data, ev->output->data.len);
        }
        r->out_len += ev->output->data.len;
        break;
    case MOAT__V1__EXEC_EVENT__KIND_EXIT:
        r->has_exit = true;
        r->exit_ts = ev->timestamp_ms;
        r->timed_out = ev->exit->timed_out;
        if (ev->exit->exit_code != NULL &&
            ev->exit->exit_code->value_case == MOAT__V1__EXIT_CODE__VALUE_CODE) {
            r->exit_known = true;
            r->exit_code = ev->exit->exit_code->code;
        }
        break;
    default:
        break;
    }
}

static void grant(raw_conn *c, uint32_t id, uint32_t n)
{
    moat_frame w = {0};
    w.stream_id = id;
    w.kind = MOAT_FRAME_WINDOW_UPDATE;
    w.u.window_update.increment = n;
    raw_send(c, &w);
}

static bool collect_without_grants;
/* When set, runs after every output event collect() takes, with what came so far. */
static void (*after_output)(const run_result *r);

/* Reads one stream to its End, granting window as messages are consumed. */
static void collect(raw_conn *c, uint32_t id, run_result *r, bool keep, int pause_ms_at_start)
{
    memset(r, 0, sizeof(*r));
    r->seq_ok = true;
    r->end_code = -1;
    if (pause_ms_at_start > 0)
        usleep((useconds_t)pause_ms_at_start * 1000);
    for (;;) {
        moat_frame f;
        if (raw_recv_stream(c, id, &f, 60000) != 1)
            return;
        if (f.kind == MOAT_FRAME_MESSAGE) {
            Moat__V1__ExecEvent *ev = moat__v1__exec_event__unpack(NULL, f.u.message.payload.len,
                                                                   f.u.message.payload.data);
            assert_non_null(ev);
            if (!collect_without_grants)
                grant(c, id, (uint32_t)f.u.message.payload.len);
            on_event(r, ev, keep);
            if (after_output != NULL && ev->kind_case == MOAT__V1__EXEC_EVENT__KIND_OUTPUT)
                after_output(r);
            moat__v1__exec_event__free_unpacked(ev, NULL);
        } else if (f.kind == MOAT_FRAME_END) {
            r->end_code = (int)f.u.end.code;
            size_t n = f.u.end.reason.len < 63 ? f.u.end.reason.len : 63;
            if (n > 0)
                memcpy(r->end_reason, f.u.end.reason.data, n);
            r->end_reason[n] = '\0';
            return;
        }
    }
}

static uint32_t start_run(raw_conn *c, const char *sid, const char *cmd, uint64_t timeout_ms)
{
    Moat__V1__RunCommandRequest req = MOAT__V1__RUN_COMMAND_REQUEST__INIT;
    req.session_id = (char *)sid;
    req.command = (char *)cmd;
    req.timeout_ms = timeout_ms;
    return raw_call(c, "/moat.v1.Exec/RunCommand", 0, &req.base);
}

static void run(raw_conn *c, const char *sid, const char *cmd, run_result *r)
{
    collect(c, start_run(c, sid, cmd, 0), r, true, 0);
}

static void test_health_sees_docker(void **state)
{
    (void)state;
    raw_conn *c = conn();
    Moat__V1__HealthCheckRequest req = MOAT__V1__HEALTH_CHECK_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    assert_int_equal(raw_unary(c, "/moat.v1.Health/Check", &req.base,
                               &moat__v1__health_check_response__descriptor, &resp, NULL, 0),
                     MOAT_CODE_OK);
    Moat__V1__HealthCheckResponse *h = (Moat__V1__HealthCheckResponse *)resp;
    assert_true(h->docker_reachable);
    assert_int_equal(h->status, MOAT__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING);
    protobuf_c_message_free_unpacked(resp, NULL);
    raw_close(c);
}

static void test_create_is_idempotent_per_chat(void **state)
{
    (void)state;
    raw_conn *c = conn();
    Moat__V1__SandboxSession *s1 = create(c, chat_a, 600, false);
    assert_int_equal(s1->status, MOAT__V1__SESSION_STATUS__RUNNING);
    assert_string_equal(s1->chat_id, chat_a);
    assert_int_equal(strlen(s1->container_id), 64);
    snprintf(session_a, sizeof(session_a), "%s", s1->session_id);
    /* Another spelling of the same chat gets the same session. */
    Moat__V1__SandboxSession *s2 = create(c, "6F1C2B0E8A514C1E9D7B1F2E3D4C5B6A", 600, false);
    assert_string_equal(s2->session_id, s1->session_id);
    /* force_new makes another one. */
    Moat__V1__SandboxSession *s3 = create(c, chat_a, 600, true);
    assert_string_not_equal(s3->session_id, s1->session_id);
    /* Listing the chat shows both. */
    Moat__V1__ListSessionsRequest lr = MOAT__V1__LIST_SESSIONS_REQUEST__INIT;
    lr.chat_id = chat_a;
    ProtobufCMessage *resp = NULL;
    assert_int_equal(raw_unary(c, "/moat.v1.Sandboxes/ListSessions", &lr.base,
                               &moat__v1__list_sessions_response__descriptor, &resp, NULL, 0),
                     MOAT_CODE_OK);
    assert_int_equal(((Moat__V1__ListSessionsResponse *)resp)->n_sessions, 2);
    protobuf_c_message_free_unpacked(resp, NULL);
    /* Stop the extra one: stopped, then idempotent. */
    Moat__V1__StopSessionRequest sr = MOAT__V1__STOP_SESSION_REQUEST__INIT;
    sr.session_id = s3->session_id;
    assert_int_equal(raw_unary(c, "/moat.v1.Sandboxes/StopSession", &sr.base,
                               &moat__v1__stop_session_response__descriptor, &resp, NULL, 0),
                     MOAT_CODE_OK);
    assert_true(((Moat__V1__StopSessionResponse *)resp)->stopped);
    protobuf_c_message_free_unpacked(resp, NULL);
    assert_int_equal(raw_unary(c, "/moat.v1.Sandboxes/StopSession", &sr.base,
                               &moat__v1__stop_session_response__descriptor, &resp, NULL, 0),
                     MOAT_CODE_OK);
    assert_false(((Moat__V1__StopSessionResponse *)resp)->stopped);
    protobuf_c_message_free_unpacked(resp, NULL);
    /* A command in a stopped session is refused with a status. */
    run_result r;
    run(c, s3->session_id, "echo hi", &r);
    assert_int_equal(r.end_code, MOAT_CODE_FAILED_PRECONDITION);
    assert_string_equal(r.end_reason, "session_not_running");
    result_free(&r);
    /* GetSession still shows it, STOPPED; ListSessions leaves it out. */
    Moat__V1__GetSessionRequest gr = MOAT__V1__GET_SESSION_REQUEST__INIT;
    gr.session_id = s3->session_id;
    assert_int_equal(raw_unary(c, "/moat.v1.Sandboxes/GetSession", &gr.base,
                               &moat__v1__sandbox_session__descriptor, &resp, NULL, 0),
                     MOAT_CODE_OK);
    assert_int_equal(((Moat__V1__SandboxSession *)resp)->status, MOAT__V1__SESSION_STATUS__STOPPED);
    protobuf_c_message_free_unpacked(resp, NULL);
    assert_int_equal(raw_unary(c, "/moat.v1.Sandboxes/ListSessions", &lr.base,
                               &moat__v1__list_sessions_response__descriptor, &resp, NULL, 0),
                     MOAT_CODE_OK);
    Moat__V1__ListSessionsResponse *listed = (Moat__V1__ListSessionsResponse *)resp;
    assert_int_equal(listed->n_sessions, 1);
    assert_string_equal(listed->sessions[0]->session_id, s1->session_id);
    protobuf_c_message_free_unpacked(resp, NULL);
    protobuf_c_message_free_unpacked(&s1->base, NULL);
    protobuf_c_message_free_unpacked(&s2->base, NULL);
    protobuf_c_message_free_unpacked(&s3->base, NULL);
    raw_close(c);
}

static raw_conn *releaser;

/* Lets the command of test_exec_output_and_exit_codes make its next write: the output event
 * number n makes /tmp/go<n> in the sandbox, from another connection. */
static void release_next_write(const run_result *r)
{
    char cmd[64];
    snprintf(cmd, sizeof(cmd), "touch /tmp/go%zu", r->norder);
    assert_int_equal(raw_run_many(releaser, session_a, cmd, 1, 1, NULL, NULL), 1);
}

static void test_exec_output_and_exit_codes(void **state)
{
    (void)state;
    raw_conn *c = conn();
    run_result r;
    /* Each write waits until the test has seen the one before, so execd read it before the
     * next one was made: two pipes keep no order between writes that are both pending. */
    releaser = conn();
    after_output = release_next_write;
    run(c, session_a,
        "echo out1; until [ -e /tmp/go1 ]; do sleep 0.01; done; echo err1 >&2; "
        "until [ -e /tmp/go2 ]; do sleep 0.01; done; echo out2; exit 3",
        &r);
    after_output = NULL;
    raw_close(releaser);
    assert_int_equal(r.end_code, MOAT_CODE_OK);
    assert_true(r.seq_ok);
    assert_true(r.has_exit);
    assert_true(r.exit_known);
    assert_int_equal(r.exit_code, 3);
    assert_true(r.execution_id[0] != '\0');
    /* The exit is stamped too (it was 0), not before the init. */
    assert_true(r.init_ts > 0);
    assert_true(r.exit_ts >= r.init_ts);
    assert_int_equal(r.out_len, strlen("out1\nerr1\nout2\n"));
    assert_memory_equal(r.out, "out1\nerr1\nout2\n", r.out_len);
    assert_string_equal(r.order, "oeo");
    result_free(&r);
    /* Writes to the two pipes a moment apart keep their order (execd reads stdout first). */
    for (int i = 0; i < 10; i++) {
        run(c, session_a, "echo out; echo err >&2", &r);
        assert_string_equal(r.order, "oe");
        result_free(&r);
    }
    run(c, session_a, "true", &r);
    assert_int_equal(r.exit_code, 0);
    result_free(&r);
    /* Binary-safe output. */
    run(c, session_a, "printf 'a\\000b\\377c'", &r);
    assert_int_equal(r.out_len, 5);
    assert_memory_equal(r.out, "a\0b\377c", 5);
    result_free(&r);
    /* The command's own timeout. */
    collect(c, start_run(c, session_a, "sleep 20", 300), &r, true, 0);
    assert_int_equal(r.end_code, MOAT_CODE_OK);
    assert_true(r.timed_out);
    result_free(&r);
    raw_close(c);
}

/* The kernel the sandbox sees: the host's own under runc, gVisor's under runsc (its /proc/version
 * is made up, and its boot log starts "Starting gVisor..."). */
static void test_sandbox_kernel(void **state)
{
    (void)state;
    raw_conn *c = conn();
    run_result r;
    run(c, session_a, "cat /proc/version; dmesg 2>&1 | head -n 3", &r);
    assert_int_equal(r.end_code, MOAT_CODE_OK);
    assert_int_equal(r.exit_code, 0);
    char host[512] = "";
    FILE *f = fopen("/proc/version", "r");
    assert_non_null(f);
    assert_non_null(fgets(host, sizeof(host), f));
    fclose(f);
    bool same_kernel = r.out_len >= strlen(host) && memcmp(r.out, host, strlen(host)) == 0;
    bool gvisor_boot = memmem(r.out, r.out_len, "Starting gVisor", 15) != NULL;
    if (under_gvisor()) {
        if (same_kernel || !gvisor_boot)
            fail_msg("runtime %s, but the sandbox's kernel is not gVisor's: %.*s",
                     expected_runtime(), (int)(r.out_len < 300 ? r.out_len : 300), r.out);
    } else {
        assert_true(same_kernel);
        assert_false(gvisor_boot);
    }
    result_free(&r);
    raw_close(c);
}

static void test_cancel_interrupts_command(void **state)
{
    (void)state;
    raw_conn *c = conn();
    uint32_t id = start_run(c, session_a, "echo started; sleep 30; echo never", 0);
    moat_frame f;
    /* Wait for output, so the command is surely running. */
    bool saw_output = false;
    char eid[128] = "";
    while (!saw_output) {
        assert_int_equal(raw_recv_stream(c, id, &f, 30000), 1);
        assert_int_equal(f.kind, MOAT_FRAME_MESSAGE);
        Moat__V1__ExecEvent *ev =
            moat__v1__exec_event__unpack(NULL, f.u.message.payload.len, f.u.message.payload.data);
        if (ev->kind_case == MOAT__V1__EXEC_EVENT__KIND_INIT)
            snprintf(eid, sizeof(eid), "%s", ev->init->execution_id);
        saw_output = ev->kind_case == MOAT__V1__EXEC_EVENT__KIND_OUTPUT;
        moat__v1__exec_event__free_unpacked(ev, NULL);
    }
    moat_frame cancel = {0};
    cancel.stream_id = id;
    cancel.kind = MOAT_FRAME_CANCEL;
    raw_send(c, &cancel);
    do {
        assert_int_equal(raw_recv_stream(c, id, &f, 30000), 1);
    } while (f.kind != MOAT_FRAME_END);
    assert_int_equal(f.u.end.code, MOAT_CODE_CANCELLED);
    /* The command itself stops: its status turns to not running. */
    bool stopped = false;
    for (int i = 0; i < 100 && !stopped; i++) {
        Moat__V1__GetCommandStatusRequest sr = MOAT__V1__GET_COMMAND_STATUS_REQUEST__INIT;
        sr.session_id = session_a;
        sr.execution_id = eid;
        ProtobufCMessage *resp = NULL;
        int code = raw_unary(c, "/moat.v1.Exec/GetCommandStatus", &sr.base,
                             &moat__v1__command_status__descriptor, &resp, NULL, 0);
        assert_int_equal(code, MOAT_CODE_OK);
        stopped = !((Moat__V1__CommandStatus *)resp)->running;
        protobuf_c_message_free_unpacked(resp, NULL);
        if (!stopped)
            usleep(100000);
    }
    assert_true(stopped);
    raw_close(c);
}

static void test_fifty_concurrent_streams(void **state)
{
    (void)state;
    raw_conn *c = conn();
    enum { N = 50 };
    uint32_t ids[N];
    char cmd[128];
    for (int i = 0; i < N; i++) {
        snprintf(cmd, sizeof(cmd), "for j in 1 2 3; do echo s%d-$j; sleep 0.05; done; exit %d", i,
                 i % 7);
        ids[i] = start_run(c, session_a, cmd, 0);
        assert_true(ids[i] != 0);
    }
    /* Frames of all streams interleave; sort them out per stream. */
    run_result r[N];
    memset(r, 0, sizeof(r));
    for (int i = 0; i < N; i++) {
        r[i].seq_ok = true;
        r[i].end_code = -1;
    }
    int ended = 0;
    while (ended < N) {
        moat_frame f;
        assert_int_equal(raw_recv(c, &f, 60000), 1);
        int k = -1;
        for (int i = 0; i < N; i++)
            if (ids[i] == f.stream_id)
                k = i;
        if (k < 0)
            continue;
        if (f.kind == MOAT_FRAME_MESSAGE) {
            Moat__V1__ExecEvent *ev = moat__v1__exec_event__unpack(NULL, f.u.message.payload.len,
                                                                   f.u.message.payload.data);
            grant(c, f.stream_id, (uint32_t)f.u.message.payload.len);
            on_event(&r[k], ev, true);
            moat__v1__exec_event__free_unpacked(ev, NULL);
        } else if (f.kind == MOAT_FRAME_END) {
            r[k].end_code = (int)f.u.end.code;
            ended++;
        }
    }
    for (int i = 0; i < N; i++) {
        assert_int_equal(r[i].end_code, MOAT_CODE_OK);
        assert_true(r[i].seq_ok);
        assert_int_equal(r[i].exit_code, i % 7);
        snprintf(cmd, sizeof(cmd), "s%d-1\ns%d-2\ns%d-3\n", i, i, i);
        assert_int_equal(r[i].out_len, strlen(cmd));
        assert_memory_equal(r[i].out, cmd, r[i].out_len);
        result_free(&r[i]);
    }
    raw_close(c);
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

static void test_slow_reader_gets_every_byte_in_order(void **state)
{
    (void)state;
    raw_conn *c = conn();
    /* 64 MiB of numbered lines; the client reads nothing for 3 s first. */
    uint32_t id = start_run(c, session_a, "seq 1 8000000", 0);
    sleep(3);
    long rss_paused = rss_kb(P.pid);
    run_result r;
    collect(c, id, &r, true, 0);
    assert_int_equal(r.end_code, MOAT_CODE_OK);
    assert_int_equal(r.exit_code, 0);
    assert_true(r.seq_ok);
    /* Check every line is there once and in order. */
    uint64_t expect = 1;
    size_t pos = 0;
    while (pos < r.out_len) {
        char *nl = memchr(r.out + pos, '\n', r.out_len - pos);
        assert_non_null(nl);
        assert_true(strtoull((char *)r.out + pos, NULL, 10) == expect);
        expect++;
        pos = (size_t)((uint8_t *)nl - r.out) + 1;
    }
    assert_true(expect == 8000001);
    /* The stalled stream is held by back-pressure, not buffered in moatd:
     * far less than the 64 MiB the command wrote. */
    if (rss_checked())
        assert_true(rss_paused > 0 && rss_paused < 48 * 1024);
    else
        moat_skip_note(rss_unchecked);
    result_free(&r);
    raw_close(c);
}

/* One huge grant up front, then a client that does not read its socket: moatd
 * must neither buffer the command's output up to that window nor stall once
 * the client reads again without granting more. */
static void test_huge_window_stays_bounded(void **state)
{
    (void)state;
    raw_conn *c = conn();
    uint32_t id = start_run(c, session_a, "seq 1 8000000", 0);
    grant(c, id, 0x7fffffffu - 1048576u);
    sleep(3);
    long rss = rss_kb(P.pid);
    run_result r;
    collect_without_grants = true;
    collect(c, id, &r, true, 0);
    collect_without_grants = false;
    assert_int_equal(r.end_code, MOAT_CODE_OK);
    assert_true(r.seq_ok);
    assert_int_equal(r.exit_code, 0);
    /* seq 1 8000000 writes 62888896 bytes. */
    assert_int_equal(r.out_len, 62888896);
    if (rss_checked())
        assert_true(rss > 0 && rss < 48 * 1024);
    else
        moat_skip_note(rss_unchecked);
    result_free(&r);
    raw_close(c);
}

static void test_stalled_stream_does_not_block_others(void **state)
{
    (void)state;
    raw_conn *c = conn();
    /* A: far more output than one window; its frames are read but never
     * credited, so it stalls after the first window. */
    uint32_t a = start_run(c, session_a, "seq 1 3000000", 0);
    size_t a_bytes = 0;
    bool a_ended = false;
    /* B, C, D on the same connection complete meanwhile. */
    for (int k = 0; k < 3; k++) {
        uint32_t b = start_run(c, session_a, "echo other", 0);
        bool b_ended = false;
        while (!b_ended) {
            moat_frame f;
            assert_int_equal(raw_recv(c, &f, 30000), 1);
            if (f.stream_id == a && f.kind == MOAT_FRAME_MESSAGE)
                a_bytes += f.u.message.payload.len;
            else if (f.stream_id == a && f.kind == MOAT_FRAME_END)
                a_ended = true;
            else if (f.stream_id == b && f.kind == MOAT_FRAME_MESSAGE)
                grant(c, b, (uint32_t)f.u.message.payload.len);
            else if (f.stream_id == b && f.kind == MOAT_FRAME_END) {
                assert_int_equal(f.u.end.code, MOAT_CODE_OK);
                b_ended = true;
            }
        }
    }
    /* A never got past its window. */
    assert_false(a_ended);
    assert_true(a_bytes <= 1048576);
    moat_frame cancel = {0};
    cancel.stream_id = a;
    cancel.kind = MOAT_FRAME_CANCEL;
    raw_send(c, &cancel);
    moat_frame f;
    do {
        assert_int_equal(raw_recv_stream(c, a, &f, 30000), 1);
    } while (f.kind != MOAT_FRAME_END);
    assert_int_equal(f.u.end.code, MOAT_CODE_CANCELLED);
    raw_close(c);
}

static void test_shells_logs_attach_interrupt(void **state)
{
    (void)state;
    raw_conn *c = conn();
    ProtobufCMessage *resp = NULL;
    /* A shell keeps its state between runs. */
    Moat__V1__CreateShellRequest cs = MOAT__V1__CREATE_SHELL_REQUEST__INIT;
    cs.session_id = session_a;
    cs.cwd = (char *)"/tmp";
    assert_int_equal(raw_unary(c, "/moat.v1.Exec/CreateShell", &cs.base,
                               &moat__v1__create_shell_response__descriptor, &resp, NULL, 0),
                     MOAT_CODE_OK);
    char shell[128];
    snprintf(shell, sizeof(shell), "%s", ((Moat__V1__CreateShellResponse *)resp)->shell_id);
    protobuf_c_message_free_unpacked(resp, NULL);
    assert_true(shell[0] != '\0');
    Moat__V1__RunInShellRequest rs = MOAT__V1__RUN_IN_SHELL_REQUEST__INIT;
    rs.session_id = session_a;
    rs.shell_id = shell;
    rs.command = (char *)"export MOAT_E2E=kept; cd /";
    run_result r;
    collect(c, raw_call(c, "/moat.v1.Exec/RunInShell", 0, &rs.base), &r, true, 0);
    assert_int_equal(r.end_code, MOAT_CODE_OK);
    result_free(&r);
    rs.command = (char *)"echo $MOAT_E2E; pwd";
    collect(c, raw_call(c, "/moat.v1.Exec/RunInShell", 0, &rs.base), &r, true, 0);
    assert_int_equal(r.end_code, MOAT_CODE_OK);
    assert_int_equal(r.out_len, strlen("kept\n/\n"));
    assert_memory_equal(r.out, "kept\n/\n", r.out_len);
    result_free(&r);
    Moat__V1__DeleteShellRequest ds = MOAT__V1__DELETE_SHELL_REQUEST__INIT;
    ds.session_id = session_a;
    ds.shell_id = shell;
    assert_int_equal(raw_unary(c, "/moat.v1.Exec/DeleteShell", &ds.base, NULL, NULL, NULL, 0),
                     MOAT_CODE_OK);

    /* A background command: the stream ends after init; status and logs poll it. */
    Moat__V1__RunCommandRequest bg = MOAT__V1__RUN_COMMAND_REQUEST__INIT;
    bg.session_id = session_a;
    bg.command = (char *)"echo bg-line; sleep 30";
    bg.background = true;
    collect(c, raw_call(c, "/moat.v1.Exec/RunCommand", 0, &bg.base), &r, true, 0);
    assert_int_equal(r.end_code, MOAT_CODE_OK);
    char eid[128];
    snprintf(eid, sizeof(eid), "%s", r.execution_id);
    result_free(&r);
    assert_true(eid[0] != '\0');
    Moat__V1__GetCommandLogsRequest lg = MOAT__V1__GET_COMMAND_LOGS_REQUEST__INIT;
    lg.session_id = session_a;
    lg.execution_id = eid;
    bool seen = false;
    for (int i = 0; i < 100 && !seen; i++) {
        assert_int_equal(raw_unary(c, "/moat.v1.Exec/GetCommandLogs", &lg.base,
                                   &moat__v1__command_logs__descriptor, &resp, NULL, 0),
                         MOAT_CODE_OK);
        Moat__V1__CommandLogs *l = (Moat__V1__CommandLogs *)resp;
        seen = l->data.len >= 8 && memmem(l->data.data, l->data.len, "bg-line", 7) != NULL;
        protobuf_c_message_free_unpacked(resp, NULL);
        if (!seen)
            usleep(100000);
    }
    assert_true(seen);
    Moat__V1__InterruptRequest ir = MOAT__V1__INTERRUPT_REQUEST__INIT;
    ir.session_id = session_a;
    ir.execution_id = eid;
    assert_int_equal(raw_unary(c, "/moat.v1.Exec/Interrupt", &ir.base, NULL, NULL, NULL, 0),
                     MOAT_CODE_OK);
    Moat__V1__GetCommandStatusRequest sr = MOAT__V1__GET_COMMAND_STATUS_REQUEST__INIT;
    sr.session_id = session_a;
    sr.execution_id = eid;
    bool stopped = false;
    for (int i = 0; i < 100 && !stopped; i++) {
        assert_int_equal(raw_unary(c, "/moat.v1.Exec/GetCommandStatus", &sr.base,
                                   &moat__v1__command_status__descriptor, &resp, NULL, 0),
                         MOAT_CODE_OK);
        stopped = !((Moat__V1__CommandStatus *)resp)->running;
        protobuf_c_message_free_unpacked(resp, NULL);
        if (!stopped)
            usleep(100000);
    }
    assert_true(stopped);

    /* Attach replays a finished execution's events after a sequence number. */
    uint32_t id = start_run(c, session_a, "echo one; echo two", 0);
    collect(c, id, &r, true, 0);
    assert_int_equal(r.end_code, MOAT_CODE_OK);
    snprintf(eid, sizeof(eid), "%s", r.execution_id);
    uint64_t last = r.last_seq;
    result_free(&r);
    Moat__V1__AttachRequest ar = MOAT__V1__ATTACH_REQUEST__INIT;
    ar.session_id = session_a;
    ar.execution_id = eid;
    ar.after_sequence = 1;
    collect(c, raw_call(c, "/moat.v1.Exec/Attach", 0, &ar.base), &r, true, 0);
    assert_int_equal(r.end_code, MOAT_CODE_OK);
    assert_true(r.has_exit);
    assert_true(r.last_seq == last);
    assert_int_equal(r.out_len, strlen("one\ntwo\n"));
    assert_memory_equal(r.out, "one\ntwo\n", r.out_len);
    result_free(&r);
    ar.execution_id = (char *)"no-such-execution";
    collect(c, raw_call(c, "/moat.v1.Exec/Attach", 0, &ar.base), &r, true, 0);
    assert_int_equal(r.end_code, MOAT_CODE_NOT_FOUND);
    result_free(&r);
    raw_close(c);
}

static void test_deadline_interrupts_command(void **state)
{
    (void)state;
    raw_conn *c = conn();
    Moat__V1__RunCommandRequest req = MOAT__V1__RUN_COMMAND_REQUEST__INIT;
    req.session_id = session_a;
    req.command = (char *)"echo started; sleep 30";
    uint32_t id = raw_call(c, "/moat.v1.Exec/RunCommand", 1500, &req.base);
    run_result r;
    collect(c, id, &r, true, 0);
    assert_int_equal(r.end_code, MOAT_CODE_DEADLINE_EXCEEDED);
    assert_true(r.execution_id[0] != '\0');
    Moat__V1__GetCommandStatusRequest sr = MOAT__V1__GET_COMMAND_STATUS_REQUEST__INIT;
    sr.session_id = session_a;
    sr.execution_id = r.execution_id;
    bool stopped = false;
    for (int i = 0; i < 100 && !stopped; i++) {
        ProtobufCMessage *resp = NULL;
        assert_int_equal(raw_unary(c, "/moat.v1.Exec/GetCommandStatus", &sr.base,
                                   &moat__v1__command_status__descriptor, &resp, NULL, 0),
                         MOAT_CODE_OK);
        stopped = !((Moat__V1__CommandStatus *)resp)->running;
        protobuf_c_message_free_unpacked(resp, NULL);
        if (!stopped)
            usleep(100000);
    }
    assert_true(stopped);
    result_free(&r);
    raw_close(c);
}

/* RunCommand takes one request and no input: a second Message ends it FAILED_PRECONDITION
 * (Exec/Interactive is the call that takes stdin), and stops its command. */
static void test_second_request_message_ends_the_call(void **state)
{
    (void)state;
    raw_conn *c = conn();
    uint32_t id = start_run(c, session_a, "sleep 30", 0);
    Moat__V1__RunCommandRequest req = MOAT__V1__RUN_COMMAND_REQUEST__INIT;
    req.session_id = session_a;
    req.command = (char *)"echo twice";
    uint8_t payload[256];
    moat_frame m = {0};
    m.stream_id = id;
    m.kind = MOAT_FRAME_MESSAGE;
    m.u.message.payload = (moat_slice){payload, moat__v1__run_command_request__pack(&req, payload)};
    assert_true(raw_send(c, &m));
    run_result r;
    collect(c, id, &r, true, 0);
    assert_int_equal(r.end_code, MOAT_CODE_FAILED_PRECONDITION);
    assert_string_equal(r.end_reason, "stdin_not_requested");
    assert_false(r.has_exit);
    result_free(&r);
    raw_close(c);
}

static void test_files(void **state)
{
    (void)state;
    raw_conn *c = conn();
    ProtobufCMessage *resp = NULL;
    Moat__V1__MkdirRequest mk = MOAT__V1__MKDIR_REQUEST__INIT;
    mk.session_id = session_a;
    mk.path = (char *)"/tmp/e2e/dir";
    assert_int_equal(raw_unary(c, "/moat.v1.Files/Mkdir", &mk.base, NULL, NULL, NULL, 0),
                     MOAT_CODE_OK);
    Moat__V1__WriteRequest wr = MOAT__V1__WRITE_REQUEST__INIT;
    wr.session_id = session_a;
    wr.path = (char *)"/tmp/e2e/dir/a.bin";
    uint8_t data[200000];
    for (size_t i = 0; i < sizeof(data); i++)
        data[i] = (uint8_t)(i * 7 + 3);
    wr.data.data = data;
    wr.data.len = sizeof(data);
    assert_int_equal(raw_unary(c, "/moat.v1.Files/Write", &wr.base,
                               &moat__v1__write_response__descriptor, &resp, NULL, 0),
                     MOAT_CODE_OK);
    assert_int_equal(((Moat__V1__WriteResponse *)resp)->written, sizeof(data));
    protobuf_c_message_free_unpacked(resp, NULL);
    Moat__V1__StatRequest sr = MOAT__V1__STAT_REQUEST__INIT;
    sr.session_id = session_a;
    sr.path = (char *)"/tmp/e2e/dir/a.bin";
    assert_int_equal(raw_unary(c, "/moat.v1.Files/Stat", &sr.base, &moat__v1__file_info__descriptor,
                               &resp, NULL, 0),
                     MOAT_CODE_OK);
    assert_int_equal(((Moat__V1__FileInfo *)resp)->size, sizeof(data));
    assert_int_equal(((Moat__V1__FileInfo *)resp)->type, MOAT__V1__FILE_TYPE__FILE);
    protobuf_c_message_free_unpacked(resp, NULL);
    /* Read streams chunks in order. */
    Moat__V1__ReadRequest rr = MOAT__V1__READ_REQUEST__INIT;
    rr.session_id = session_a;
    rr.path = (char *)"/tmp/e2e/dir/a.bin";
    uint32_t id = raw_call(c, "/moat.v1.Files/Read", 0, &rr.base);
    size_t got = 0;
    bool same = true;
    for (;;) {
        moat_frame f;
        assert_int_equal(raw_recv_stream(c, id, &f, 30000), 1);
        if (f.kind == MOAT_FRAME_END) {
            assert_int_equal(f.u.end.code, MOAT_CODE_OK);
            break;
        }
        Moat__V1__FileChunk *ch =
            moat__v1__file_chunk__unpack(NULL, f.u.message.payload.len, f.u.message.payload.data);
        grant(c, id, (uint32_t)f.u.message.payload.len);
        assert_true(ch->offset == got);
        if (got + ch->data.len > sizeof(data) || memcmp(data + got, ch->data.data, ch->data.len))
            same = false;
        got += ch->data.len;
        moat__v1__file_chunk__free_unpacked(ch, NULL);
    }
    assert_int_equal(got, sizeof(data));
    assert_true(same);
    Moat__V1__MoveRequest mv = MOAT__V1__MOVE_REQUEST__INIT;
    mv.session_id = session_a;
    mv.src = (char *)"/tmp/e2e/dir/a.bin";
    mv.dest = (char *)"/tmp/e2e/dir/b.bin";
    assert_int_equal(raw_unary(c, "/moat.v1.Files/Move", &mv.base, NULL, NULL, NULL, 0),
                     MOAT_CODE_OK);
    Moat__V1__ChmodRequest ch = MOAT__V1__CHMOD_REQUEST__INIT;
    ch.session_id = session_a;
    ch.path = (char *)"/tmp/e2e/dir/b.bin";
    ch.mode = 0600;
    assert_int_equal(raw_unary(c, "/moat.v1.Files/Chmod", &ch.base, NULL, NULL, NULL, 0),
                     MOAT_CODE_OK);
    Moat__V1__ListRequest lr = MOAT__V1__LIST_REQUEST__INIT;
    lr.session_id = session_a;
    lr.path = (char *)"/tmp/e2e/dir";
    assert_int_equal(raw_unary(c, "/moat.v1.Files/List", &lr.base,
                               &moat__v1__list_response__descriptor, &resp, NULL, 0),
                     MOAT_CODE_OK);
    Moat__V1__ListResponse *l = (Moat__V1__ListResponse *)resp;
    bool found = false;
    for (size_t i = 0; i < l->n_entries; i++)
        if (strstr(l->entries[i]->path, "b.bin") != NULL) {
            found = true;
            assert_int_equal(l->entries[i]->mode, 0600);
        }
    assert_true(found);
    protobuf_c_message_free_unpacked(resp, NULL);
    Moat__V1__RemoveRequest rm = MOAT__V1__REMOVE_REQUEST__INIT;
    rm.session_id = session_a;
    rm.path = (char *)"/tmp/e2e";
    rm.recursive = true;
    assert_int_equal(raw_unary(c, "/moat.v1.Files/Remove", &rm.base, NULL, NULL, NULL, 0),
                     MOAT_CODE_OK);
    assert_int_equal(raw_unary(c, "/moat.v1.Files/Stat", &sr.base, NULL, NULL, NULL, 0),
                     MOAT_CODE_NOT_FOUND);
    raw_close(c);
}

static void test_renew_and_ttl_expiry(void **state)
{
    (void)state;
    raw_conn *c = conn();
    Moat__V1__SandboxSession *s = create(c, "0b3e6a2c-7d4f-4e8a-9c1b-2d3e4f5a6b7c", 600, false);
    Moat__V1__RenewSessionRequest rn = MOAT__V1__RENEW_SESSION_REQUEST__INIT;
    rn.session_id = s->session_id;
    rn.ttl_seconds = 2;
    ProtobufCMessage *resp = NULL;
    assert_int_equal(raw_unary(c, "/moat.v1.Sandboxes/RenewSession", &rn.base,
                               &moat__v1__sandbox_session__descriptor, &resp, NULL, 0),
                     MOAT_CODE_OK);
    Moat__V1__SandboxSession *r = (Moat__V1__SandboxSession *)resp;
    assert_true(r->expires_at_ms < s->expires_at_ms);
    protobuf_c_message_free_unpacked(resp, NULL);
    /* The reaper (every second here) ends it after its TTL. */
    Moat__V1__GetSessionRequest gr = MOAT__V1__GET_SESSION_REQUEST__INIT;
    gr.session_id = s->session_id;
    int status = 0;
    for (int i = 0; i < 200 && status != MOAT__V1__SESSION_STATUS__EXPIRED; i++) {
        assert_int_equal(raw_unary(c, "/moat.v1.Sandboxes/GetSession", &gr.base,
                                   &moat__v1__sandbox_session__descriptor, &resp, NULL, 0),
                         MOAT_CODE_OK);
        status = ((Moat__V1__SandboxSession *)resp)->status;
        protobuf_c_message_free_unpacked(resp, NULL);
        if (status != MOAT__V1__SESSION_STATUS__EXPIRED)
            usleep(100000);
    }
    assert_int_equal(status, MOAT__V1__SESSION_STATUS__EXPIRED);
    protobuf_c_message_free_unpacked(&s->base, NULL);
    raw_close(c);
}

static void test_sigkill_and_restart(void **state)
{
    (void)state;
    kill(P.pid, SIGKILL);
    moatd_wait(&P, 10000);
    /* Same state dir and port: sessions are found again. */
    char a_state[300];
    snprintf(a_state, sizeof(a_state), "--state_dir=%s", P.state_dir);
    snprintf(first_state_dir, sizeof(first_state_dir), "%s", P.state_dir);
    const char *extra[] = {prefix_arg, "--cleanup_interval_seconds=1", a_state, NULL};
    assert_true(moatd_start(&P, true, extra));
    raw_conn *c = conn();
    Moat__V1__ListSessionsRequest lr = MOAT__V1__LIST_SESSIONS_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    assert_int_equal(raw_unary(c, "/moat.v1.Sandboxes/ListSessions", &lr.base,
                               &moat__v1__list_sessions_response__descriptor, &resp, NULL, 0),
                     MOAT_CODE_OK);
    Moat__V1__ListSessionsResponse *l = (Moat__V1__ListSessionsResponse *)resp;
    bool found = false;
    for (size_t i = 0; i < l->n_sessions; i++)
        found |= strcmp(l->sessions[i]->session_id, session_a) == 0;
    assert_true(found);
    protobuf_c_message_free_unpacked(resp, NULL);
    run_result r;
    run(c, session_a, "echo back", &r);
    assert_int_equal(r.end_code, MOAT_CODE_OK);
    assert_int_equal(r.out_len, 5);
    assert_memory_equal(r.out, "back\n", 5);
    result_free(&r);
    raw_close(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_health_sees_docker),
        cmocka_unit_test(test_create_is_idempotent_per_chat),
        cmocka_unit_test(test_exec_output_and_exit_codes),
        cmocka_unit_test(test_sandbox_kernel),
        cmocka_unit_test(test_cancel_interrupts_command),
        cmocka_unit_test(test_fifty_concurrent_streams),
        cmocka_unit_test(test_slow_reader_gets_every_byte_in_order),
        cmocka_unit_test(test_huge_window_stays_bounded),
        cmocka_unit_test(test_stalled_stream_does_not_block_others),
        cmocka_unit_test(test_shells_logs_attach_interrupt),
        cmocka_unit_test(test_deadline_interrupts_command),
        cmocka_unit_test(test_second_request_message_ends_the_call),
        cmocka_unit_test(test_files),
        cmocka_unit_test(test_renew_and_ttl_expiry),
        cmocka_unit_test(test_sigkill_and_restart),
        cmocka_unit_test_prestate(test_moatd_exits_0_on_sigterm, &P),
    };
    return moat_run_group_tests("moatd_e2e", tests, setup, teardown);
}
