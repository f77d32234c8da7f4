/* Proxy mode (cluster_route = proxy) with real parts: a three-member etcd started here, and two
 * real moatd nodes on the shared dockerd (own instances and name prefixes) sharing a token. A
 * real session lives on the owner; its record is put here as the owner would. Through the
 * other node: a command's stdout, stderr and exit code come back exactly, 64 MiB of output
 * arrive byte for byte while the proxy's RSS stays flat (a client that stops reading holds the
 * owner, not the proxy), a cancel reaches the owner's command, stdin goes through (a client's
 * dropped connection leaves an interactive command for a reattach, a Cancel ends it), and the
 * one-answer calls relay; an owner that cannot be reached is UNAVAILABLE owner_unreachable, as
 * is one that closes the connection mid-call, a pooled connection whose peer restarted is
 * replaced, and calls past the streams an owner takes on one connection go on others (a fake
 * node for those). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <curl/curl.h>

#include "moat_test.h"

#include "cluster_calls.h"
#include "etcd_cluster.h"
#include "fake_peer.h"
#include "h2_client.h"
#include "harness.h"
#include "moat/v1/exec.pb-c.h"
#include "moat/v1/files.pb-c.h"
#include "moat/v1/sandbox.pb-c.h"

#define WAIT_S 60

#if defined(__SANITIZE_ADDRESS__)
#define SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SANITIZED 1
#endif
#endif
#ifndef SANITIZED
#define SANITIZED 0
#endif
#define TOKEN "cluster-proxy-test-token"

enum { OWNER = 0, PROXY = 1, NODES = 2 };

static etcd_cluster cl;
static moat_etcd *etcd;
static rc_node nodes[NODES];
static char prefix[64];
static char sid[MOAT_UUID_STR_LEN];

/* What an Exec stream carried, read to its End with the window given back as it goes. */
typedef struct exec_result {
    int code; /* the End's; -1 on a transport failure */
    char reason[64];
    char message[256];
    char stdout_head[256];
    size_t stdout_len, stderr_len;
    char stderr_head[256];
    int exit_code; /* -1 when none came */
    char execution_id[128];
    long rss_peak_kb; /* the proxy's RSS, sampled every 64 messages */
} exec_result;

static void keep_head(char *head, size_t cap, size_t have, const uint8_t *data, size_t len)
{
    if (have + 1 >= cap)
        return;
    size_t n = len < cap - 1 - have ? len : cap - 1 - have;
    if (n > 0)
        memcpy(head + have, data, n);
    head[have + n] = '\0';
}

/* Reads stream id of c to its End. pause_after: after that many stdout bytes, stops reading for
 * a while once (a slow client), sampling the proxy's RSS meanwhile. */
static exec_result read_exec(raw_conn *c, uint32_t id, size_t pause_after)
{
    exec_result r;
    memset(&r, 0, sizeof(r));
    r.code = -1;
    r.exit_code = -1;
    bool paused = false;
    for (unsigned n = 0;; n++) {
        moat_frame f;
        if (raw_recv_stream(c, id, &f, 120000) != 1)
            return r;
        if (f.kind == MOAT_FRAME_END) {
            r.code = (int)f.u.end.code;
            size_t k = f.u.end.reason.len < sizeof(r.reason) - 1 ? f.u.end.reason.len
                                                                 : sizeof(r.reason) - 1;
            if (k > 0)
                memcpy(r.reason, f.u.end.reason.data, k);
            k = f.u.end.message.len < sizeof(r.message) - 1 ? f.u.end.message.len
                                                            : sizeof(r.message) - 1;
            if (k > 0)
                memcpy(r.message, f.u.end.message.data, k);
            return r;
        }
        if (f.kind != MOAT_FRAME_MESSAGE)
            continue;
        Moat__V1__ExecEvent *e =
            moat__v1__exec_event__unpack(NULL, f.u.message.payload.len, f.u.message.payload.data);
        assert_non_null(e);
        moat_frame w = {0};
        w.stream_id = id;
        w.kind = MOAT_FRAME_WINDOW_UPDATE;
        w.u.window_update.increment = (uint32_t)f.u.message.payload.len;
        if (w.u.window_update.increment > 0)
            assert_true(raw_send(c, &w));
        if (e->kind_case == MOAT__V1__EXEC_EVENT__KIND_INIT)
            snprintf(r.execution_id, sizeof(r.execution_id), "%s", e->init->execution_id);
        if (e->kind_case == MOAT__V1__EXEC_EVENT__KIND_OUTPUT) {
            bool err = e->output->stream == MOAT__V1__OUTPUT_STREAM__STDERR;
            keep_head(err ? r.stderr_head : r.stdout_head, sizeof(r.stdout_head),
                      err ? r.stderr_len : r.stdout_len, e->output->data.data, e->output->data.len);
            *(err ? &r.stderr_len : &r.stdout_len) += e->output->data.len;
        }
        if (e->kind_case == MOAT__V1__EXEC_EVENT__KIND_EXIT &&
            e->exit->exit_code->value_case == MOAT__V1__EXIT_CODE__VALUE_CODE)
            r.exit_code = e->exit->exit_code->code;
        moat__v1__exec_event__free_unpacked(e, NULL);
        if (n % 64 == 0) {
            long rss = proc_rss_kb(nodes[PROXY].p.pid);
            if (rss > r.rss_peak_kb)
                r.rss_peak_kb = rss;
        }
        if (pause_after > 0 && !paused && r.stdout_len >= pause_after) {
            paused = true;
            /* The owner keeps producing; only a window's worth may pile up at the proxy. */
            for (int k = 0; k < 10; k++) {
                etcd_cluster_sleep_ms(100);
                long rss = proc_rss_kb(nodes[PROXY].p.pid);
                if (rss > r.rss_peak_kb)
                    r.rss_peak_kb = rss;
            }
        }
    }
}

static uint32_t start_run(raw_conn *c, const char *command)
{
    Moat__V1__RunCommandRequest req = MOAT__V1__RUN_COMMAND_REQUEST__INIT;
    req.session_id = sid;
    req.command = (char *)command;
    return raw_call(c, "/moat.v1.Exec/RunCommand", 0, &req.base);
}

static int group_teardown(void **state);

static int group_setup(void **state)
{
    (void)state;
    if (etcd_cluster_open(&cl, NULL, &etcd, 1000, WAIT_S) != 0)
        return -1;
    if (!etcd_cluster_available())
        return 0;
    snprintf(prefix, sizeof(prefix), "moat-proxy%d-", (int)getpid());
    for (int i = 0; i < NODES; i++) {
        const char *extra[] = {"--token=" TOKEN, "--hello_timeout_seconds=2",
                               i == PROXY ? "--cluster_route=proxy" : "--cluster_route=redirect",
                               NULL};
        if (!rc_node_start(&nodes[i], &cl, "proxy", i, true, extra, true, TOKEN))
            goto failed;
    }
    moat_node owner;
    for (int t = 0; t < WAIT_S * 20 && !etcd_cluster_lists_node(etcd, nodes[OWNER].id, &owner); t++)
        etcd_cluster_sleep_ms(50);
    if (!etcd_cluster_lists_node(etcd, nodes[OWNER].id, &owner))
        goto failed;
    /* A real session on the owner, and its record as the owner would write it. */
    char chat[MOAT_UUID_STR_LEN], addr[64];
    moat_uuid_generate(chat);
    Moat__V1__CreateSessionRequest cr = MOAT__V1__CREATE_SESSION_REQUEST__INIT;
    cr.chat_id = chat;
    rc_end e = rc_call(nodes[OWNER].conn, "/moat.v1.Sandboxes/CreateSession", &cr.base,
                       &moat__v1__sandbox_session__descriptor);
    if (e.code != 0 || e.resp == NULL) {
        fprintf(stderr, "CreateSession on the owner: %d %s\n", e.code, e.reason);
        rc_free(&e);
        goto failed;
    }
    snprintf(sid, sizeof(sid), "%s", ((Moat__V1__SandboxSession *)e.resp)->session_id);
    rc_free(&e);
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", nodes[OWNER].p.port);
    rc_put_record(etcd, sid, chat, nodes[OWNER].id, owner.lease, addr, MOAT_RECORD_RUNNING, "");
    /* The proxy routes from its copy of the directory, which follows etcd by its watch: until
     * the put shows there it holds the record the owner wrote (the owner advertises
     * 127.0.0.1:1 here), so the tests start once a call goes through. */
    rc_end ran = {.code = -1};
    for (int t = 0; t < WAIT_S * 10 && ran.code != MOAT_CODE_OK; t++) {
        if (t > 0)
            etcd_cluster_sleep_ms(100);
        rc_free(&ran);
        ran = rc_run_command(nodes[PROXY].conn, sid);
    }
    if (ran.code != MOAT_CODE_OK) {
        fprintf(stderr, "a call through the proxy: %d %s %s\n", ran.code, ran.reason, ran.message);
        rc_free(&ran);
        goto failed;
    }
    rc_free(&ran);
    return 0;
failed:
    group_teardown(state);
    return -1;
}

static int group_teardown(void **state)
{
    (void)state;
    rc_cluster_close(nodes, NODES, &cl, &etcd);
    if (prefix[0] != '\0')
        docker_remove_prefixed(prefix);
    return 0;
}

static void test_exec_exact(void **state)
{
    (void)state;
    ETCD_REQUIRE();
    uint32_t id = start_run(nodes[PROXY].conn, "printf 'out\\n'; printf 'err\\n' >&2; exit 3");
    exec_result r = read_exec(nodes[PROXY].conn, id, 0);
    if (r.code != MOAT_CODE_OK)
        print_message("the call ended %d %s: %s\n", r.code, r.reason, r.message);
    assert_int_equal(r.code, MOAT_CODE_OK);
    assert_string_equal(r.stdout_head, "out\n");
    assert_string_equal(r.stderr_head, "err\n");
    assert_int_equal(r.exit_code, 3);
}

/* 64 MiB through the proxy, exact, with a client that stops reading for a second on the way:
 * the proxy holds about a window, not what the owner could send. */
static void test_large_output_flat(void **state)
{
    (void)state;
    ETCD_REQUIRE();
    enum { TOTAL = 64 << 20 };
    long before = proc_rss_kb(nodes[PROXY].p.pid);
    uint32_t id = start_run(nodes[PROXY].conn, "head -c 67108864 /dev/zero");
    exec_result r = read_exec(nodes[PROXY].conn, id, 8 << 20);
    assert_int_equal(r.code, MOAT_CODE_OK);
    assert_int_equal(r.stdout_len, TOTAL);
    assert_int_equal(r.stderr_len, 0);
    assert_int_equal(r.exit_code, 0);
    print_message("proxy RSS %ld KiB before, %ld KiB at most during 64 MiB\n", before,
                  r.rss_peak_kb);
    /* Two windows (1 MiB each) and the allocator's slack, far below what went through; under
     * valgrind (MOAT_DAEMON_WRAPPER) the RSS is valgrind's own, and ASan's quarantine keeps
     * freed memory resident by design. */
    if (moatd_wrapper()[0] == '\0' && !SANITIZED)
        assert_true(r.rss_peak_kb - before < 16 * 1024);
}

typedef struct grpc_events {
    char out[64], err[64];
    size_t out_len, err_len;
    int exit_code;
} grpc_events;

static void on_grpc_event(h2c_stream *st, const uint8_t *msg, size_t len, void *ud)
{
    (void)st;
    grpc_events *g = ud;
    Moat__V1__ExecEvent *e = moat__v1__exec_event__unpack(NULL, len, msg);
    if (e == NULL)
        return;
    if (e->kind_case == MOAT__V1__EXEC_EVENT__KIND_OUTPUT) {
        bool err = e->output->stream == MOAT__V1__OUTPUT_STREAM__STDERR;
        keep_head(err ? g->err : g->out, sizeof(g->out), err ? g->err_len : g->out_len,
                  e->output->data.data, e->output->data.len);
        *(err ? &g->err_len : &g->out_len) += e->output->data.len;
    }
    if (e->kind_case == MOAT__V1__EXEC_EVENT__KIND_EXIT &&
        e->exit->exit_code->value_case == MOAT__V1__EXIT_CODE__VALUE_CODE)
        g->exit_code = e->exit->exit_code->code;
    moat__v1__exec_event__free_unpacked(e, NULL);
}

/* A gRPC client (which cannot follow a redirect) through the proxy: the same exact stream. */
static void test_grpc_through_proxy(void **state)
{
    (void)state;
    ETCD_REQUIRE();
    h2c *c = h2c_connect(nodes[PROXY].p.grpc_port, 0);
    assert_non_null(c);
    Moat__V1__RunCommandRequest req = MOAT__V1__RUN_COMMAND_REQUEST__INIT;
    req.session_id = sid;
    req.command = (char *)"printf 'out\\n'; printf 'err\\n' >&2; exit 3";
    size_t n = protobuf_c_message_get_packed_size(&req.base);
    uint8_t *msg = malloc(n), *body = malloc(5 + n);
    assert_true(msg != NULL && body != NULL);
    protobuf_c_message_pack(&req.base, msg);
    h2c_frame_message(body, msg, n);
    grpc_events g = {"", "", 0, 0, -1};
    h2c_stream *st = h2c_request(c, "/moat.v1.Exec/RunCommand", TOKEN, NULL, body, 5 + n);
    assert_non_null(st);
    st->on_message = on_grpc_event;
    st->ud = &g;
    assert_true(h2c_wait(c, st, 60000));
    assert_int_equal(st->grpc_status, 0);
    assert_string_equal(g.out, "out\n");
    assert_string_equal(g.err, "err\n");
    assert_int_equal(g.exit_code, 3);
    h2c_close(c);
    free(msg);
    free(body);
}

/* The client's Cancel reaches the owner: the command there stops. */
static void test_cancel_reaches_owner(void **state)
{
    (void)state;
    ETCD_REQUIRE();
    uint32_t id = start_run(nodes[PROXY].conn, "sleep 600");
    char eid[128] = "";
    while (eid[0] == '\0') {
        moat_frame f;
        assert_int_equal(raw_recv_stream(nodes[PROXY].conn, id, &f, 60000), 1);
        assert_int_equal(f.kind, MOAT_FRAME_MESSAGE);
        Moat__V1__ExecEvent *e =
            moat__v1__exec_event__unpack(NULL, f.u.message.payload.len, f.u.message.payload.data);
        assert_non_null(e);
        if (e->kind_case == MOAT__V1__EXEC_EVENT__KIND_INIT)
            snprintf(eid, sizeof(eid), "%s", e->init->execution_id);
        moat__v1__exec_event__free_unpacked(e, NULL);
    }
    moat_frame cancel = {0};
    cancel.stream_id = id;
    cancel.kind = MOAT_FRAME_CANCEL;
    cancel.u.cancel.reason = moat_slice_str("test");
    assert_true(raw_send(nodes[PROXY].conn, &cancel));
    exec_result r = read_exec(nodes[PROXY].conn, id, 0);
    assert_int_equal(r.code, MOAT_CODE_CANCELLED);
    Moat__V1__GetCommandStatusRequest q = MOAT__V1__GET_COMMAND_STATUS_REQUEST__INIT;
    q.session_id = sid;
    q.execution_id = eid;
    rc_end e;
    bool stopped = false;
    for (int t = 0; t < WAIT_S * 20 && !stopped; t++) {
        e = rc_call(nodes[OWNER].conn, "/moat.v1.Exec/GetCommandStatus", &q.base,
                    &moat__v1__command_status__descriptor);
        stopped = e.code == 0 && e.resp != NULL && !((Moat__V1__CommandStatus *)e.resp)->running;
        rc_free(&e);
        if (!stopped)
            etcd_cluster_sleep_ms(50);
    }
    assert_true(stopped);
}

/* Interactive: stdin through the proxy (wc -l counts two lines), then close_stdin. */
static void test_interactive_stdin(void **state)
{
    (void)state;
    ETCD_REQUIRE();
    Moat__V1__InteractiveRequest r = MOAT__V1__INTERACTIVE_REQUEST__INIT;
    Moat__V1__InteractiveStart s = MOAT__V1__INTERACTIVE_START__INIT;
    s.session_id = sid;
    s.command = (char *)"wc -l";
    r.input_case = MOAT__V1__INTERACTIVE_REQUEST__INPUT_START;
    r.start = &s;
    uint32_t id = raw_call(nodes[PROXY].conn, "/moat.v1.Exec/Interactive", 0, &r.base);
    Moat__V1__InteractiveRequest in = MOAT__V1__INTERACTIVE_REQUEST__INIT;
    in.input_case = MOAT__V1__INTERACTIVE_REQUEST__INPUT_STDIN;
    in.stdin = (ProtobufCBinaryData){4, (uint8_t *)"a\nb\n"};
    Moat__V1__InteractiveRequest close = MOAT__V1__INTERACTIVE_REQUEST__INIT;
    close.input_case = MOAT__V1__INTERACTIVE_REQUEST__INPUT_CLOSE_STDIN;
    close.close_stdin = true;
    const Moat__V1__InteractiveRequest *msgs[] = {&in, &close};
    for (size_t k = 0; k < 2; k++) {
        uint8_t buf[64];
        size_t n = protobuf_c_message_pack(&msgs[k]->base, buf);
        moat_frame f = {0};
        f.stream_id = id;
        f.kind = MOAT_FRAME_MESSAGE;
        f.u.message.payload = (moat_slice){buf, n};
        assert_true(raw_send(nodes[PROXY].conn, &f));
    }
    exec_result res = read_exec(nodes[PROXY].conn, id, 0);
    assert_int_equal(res.code, MOAT_CODE_OK);
    assert_string_equal(res.stdout_head, "2\n");
    assert_int_equal(res.exit_code, 0);
}

/* Starts an Interactive call on c in pipe mode: `command`, or an attach to attach_id after
 * after_offset output bytes when attach_id is not NULL. */
static uint32_t start_interactive(raw_conn *c, const char *command, const char *attach_id,
                                  uint64_t after_offset)
{
    Moat__V1__InteractiveRequest r = MOAT__V1__INTERACTIVE_REQUEST__INIT;
    Moat__V1__InteractiveStart s = MOAT__V1__INTERACTIVE_START__INIT;
    s.session_id = sid;
    s.command = (char *)command;
    s.attach_id = (char *)attach_id;
    s.after_offset = after_offset;
    r.input_case = MOAT__V1__INTERACTIVE_REQUEST__INPUT_START;
    r.start = &s;
    return raw_call(c, "/moat.v1.Exec/Interactive", 0, &r.base);
}

static void send_input(raw_conn *c, uint32_t id, const char *text)
{
    Moat__V1__InteractiveRequest in = MOAT__V1__INTERACTIVE_REQUEST__INIT;
    if (text != NULL) {
        in.input_case = MOAT__V1__INTERACTIVE_REQUEST__INPUT_STDIN;
        in.stdin = (ProtobufCBinaryData){strlen(text), (uint8_t *)text};
    } else {
        in.input_case = MOAT__V1__INTERACTIVE_REQUEST__INPUT_CLOSE_STDIN;
        in.close_stdin = true;
    }
    uint8_t buf[256];
    assert_true(protobuf_c_message_get_packed_size(&in.base) <= sizeof(buf));
    size_t n = protobuf_c_message_pack(&in.base, buf);
    moat_frame f = {0};
    f.stream_id = id;
    f.kind = MOAT_FRAME_MESSAGE;
    f.u.message.payload = (moat_slice){buf, n};
    assert_true(raw_send(c, &f));
}

/* Reads stream id until its init and an output of "up\n" came: the command runs. Its
 * execution id into exec_id. */
static void read_until_up(raw_conn *c, uint32_t id, char exec_id[128])
{
    exec_id[0] = '\0';
    bool up = false;
    while (!up || exec_id[0] == '\0') {
        moat_frame f;
        assert_int_equal(raw_recv_stream(c, id, &f, 60000), 1);
        assert_int_not_equal(f.kind, MOAT_FRAME_END);
        if (f.kind != MOAT_FRAME_MESSAGE)
            continue;
        Moat__V1__ExecEvent *e =
            moat__v1__exec_event__unpack(NULL, f.u.message.payload.len, f.u.message.payload.data);
        assert_non_null(e);
        if (e->kind_case == MOAT__V1__EXEC_EVENT__KIND_INIT)
            snprintf(exec_id, 128, "%s", e->init->execution_id);
        if (e->kind_case == MOAT__V1__EXEC_EVENT__KIND_OUTPUT && e->output->data.len == 3 &&
            memcmp(e->output->data.data, "up\n", 3) == 0)
            up = true;
        moat__v1__exec_event__free_unpacked(e, NULL);
    }
}

/* Asserts that the cancelled command exec_id is gone: an attach to it ends NOT_FOUND. The owner
 * ends the command through execd after the call's End: an attach in between finds it still there
 * and sees it end (with its exit, or UNAVAILABLE as execd closes the WebSocket); one to a command
 * left running would wait for stdin and time out (-1). */
static void assert_command_gone(raw_conn *c, const char *exec_id)
{
    exec_result after = {.code = MOAT_CODE_OK};
    for (int t = 0; t < 50 && after.code != MOAT_CODE_NOT_FOUND && after.code != -1; t++) {
        if (t > 0) {
            print_message("# an attach ended %d %s: %s\n", after.code, after.reason, after.message);
            etcd_cluster_sleep_ms(100);
        }
        after = read_exec(c, start_interactive(c, NULL, exec_id, 0), 0);
    }
    assert_int_equal(after.code, MOAT_CODE_NOT_FOUND);
    assert_string_equal(after.reason, "execd_api_error");
}

/* A pipe-mode call whose client's connection to the proxy drops is, at the owner, a dropped
 * call and not a cancelled one: its command waits there for a reattach, as on a single node
 * (docs/PROTOCOL.md, "Interactive calls"). A Cancel through the proxy still ends the command:
 * an attach to it then ends NOT_FOUND. */
static void test_interactive_drop_and_cancel(void **state)
{
    (void)state;
    ETCD_REQUIRE();
    char exec_id[128];
    raw_conn *gone = raw_connect_ready(nodes[PROXY].p.port, TOKEN);
    assert_non_null(gone);
    uint32_t id = start_interactive(gone, "echo up; cat", NULL, 0);
    read_until_up(gone, id, exec_id);
    raw_close(gone);

    id = start_interactive(nodes[PROXY].conn, NULL, exec_id, 3);
    send_input(nodes[PROXY].conn, id, "still-here\n");
    send_input(nodes[PROXY].conn, id, NULL);
    exec_result back = read_exec(nodes[PROXY].conn, id, 0);
    if (back.code != MOAT_CODE_OK)
        print_message("the reattach ended %d %s: %s\n", back.code, back.reason, back.message);
    assert_int_equal(back.code, MOAT_CODE_OK);
    assert_string_equal(back.stdout_head, "still-here\n");
    assert_int_equal(back.exit_code, 0);

    id = start_interactive(nodes[PROXY].conn, "echo up; cat", NULL, 0);
    read_until_up(nodes[PROXY].conn, id, exec_id);
    moat_frame cancel = {0};
    cancel.stream_id = id;
    cancel.kind = MOAT_FRAME_CANCEL;
    assert_true(raw_send(nodes[PROXY].conn, &cancel));
    exec_result cancelled = read_exec(nodes[PROXY].conn, id, 0);
    assert_int_equal(cancelled.code, MOAT_CODE_CANCELLED);
    assert_command_gone(nodes[PROXY].conn, exec_id);
}

/* A client that is not a relaying moatd cannot turn its Cancel into a dropped call by naming
 * the proxy's reason: the call ends `cancelled` and its command with it. */
static void test_cancel_naming_connection_closed(void **state)
{
    (void)state;
    ETCD_REQUIRE();
    char exec_id[128];
    uint32_t id = start_interactive(nodes[OWNER].conn, "echo up; cat", NULL, 0);
    read_until_up(nodes[OWNER].conn, id, exec_id);
    moat_frame cancel = {0};
    cancel.stream_id = id;
    cancel.kind = MOAT_FRAME_CANCEL;
    cancel.u.cancel.reason = (moat_slice){(const uint8_t *)"connection_closed", 17};
    assert_true(raw_send(nodes[OWNER].conn, &cancel));
    exec_result cancelled = read_exec(nodes[OWNER].conn, id, 0);
    assert_int_equal(cancelled.code, MOAT_CODE_CANCELLED);
    assert_string_equal(cancelled.reason, "cancelled");
    assert_command_gone(nodes[OWNER].conn, exec_id);
}

/* One-answer calls relay their answer; GetSession answers from the directory. */
static void test_unary_calls(void **state)
{
    (void)state;
    ETCD_REQUIRE();
    rc_end e = rc_stat(nodes[PROXY].conn, sid);
    assert_int_equal(e.code, MOAT_CODE_OK);
    Moat__V1__RenewSessionRequest renew = MOAT__V1__RENEW_SESSION_REQUEST__INIT;
    renew.session_id = sid;
    renew.ttl_seconds = 300;
    e = rc_call(nodes[PROXY].conn, "/moat.v1.Sandboxes/RenewSession", &renew.base,
                &moat__v1__sandbox_session__descriptor);
    assert_int_equal(e.code, MOAT_CODE_OK);
    assert_string_equal(((Moat__V1__SandboxSession *)e.resp)->session_id, sid);
    /* Renewed by the owner, which answers with its container. */
    assert_true(((Moat__V1__SandboxSession *)e.resp)->container_id[0] != '\0');
    rc_free(&e);
    e = rc_get(nodes[PROXY].conn, sid);
    assert_int_equal(e.code, MOAT_CODE_OK);
    assert_int_equal(((Moat__V1__SandboxSession *)e.resp)->status,
                     MOAT__V1__SESSION_STATUS__RUNNING);
    rc_free(&e);
}

/* A record whose owner is live but whose address answers nothing. */
static void test_owner_unreachable(void **state)
{
    (void)state;
    ETCD_REQUIRE();
    moat_node owner;
    assert_true(etcd_cluster_lists_node(etcd, nodes[OWNER].id, &owner));
    char other[MOAT_UUID_STR_LEN], chat[MOAT_UUID_STR_LEN];
    moat_uuid_generate(other);
    moat_uuid_generate(chat);
    rc_put_record(etcd, other, chat, nodes[OWNER].id, owner.lease, "127.0.0.1:1",
                  MOAT_RECORD_RUNNING, "");
    rc_end e = rc_run_command(nodes[PROXY].conn, other);
    assert_true(rc_is(&e, MOAT_CODE_UNAVAILABLE, "owner_unreachable"));
    assert_string_equal(e.owner_address, "127.0.0.1:1");

    /* An address that takes the connection (the kernel's backlog) and never answers the Hello:
     * the call, which has no deadline, ends at the proxy's hello_timeout_seconds. */
    char silent[32];
    int fd = silent_peer_open(silent);
    assert_true(fd >= 0);
    moat_uuid_generate(other);
    rc_put_record(etcd, other, chat, nodes[OWNER].id, owner.lease, silent, MOAT_RECORD_RUNNING, "");
    e = rc_run_command(nodes[PROXY].conn, other);
    close(fd);
    assert_true(rc_is(&e, MOAT_CODE_UNAVAILABLE, "owner_unreachable"));
    assert_string_equal(e.owner_address, silent);
}

/* A record of the owner's naming the fake node's address, and RunCommand on it through the
 * proxy. */
static rc_end run_on_fake(const fake_peer *f)
{
    moat_node owner;
    assert_true(etcd_cluster_lists_node(etcd, nodes[OWNER].id, &owner));
    char other[MOAT_UUID_STR_LEN], chat[MOAT_UUID_STR_LEN];
    moat_uuid_generate(other);
    moat_uuid_generate(chat);
    rc_put_record(etcd, other, chat, nodes[OWNER].id, owner.lease, f->address, MOAT_RECORD_RUNNING,
                  "");
    return rc_run_command(nodes[PROXY].conn, other);
}

/* The owner closes the connection once it has the call: owner_unreachable, and the next call
 * gets a new connection rather than the dead one, and the fake's End as it sent it. */
static void test_owner_closes_mid_call(void **state)
{
    (void)state;
    ETCD_REQUIRE();
    fake_peer f;
    assert_true(fake_peer_start(&f));
    atomic_store(&f.close_mid_call, true);
    rc_end e = run_on_fake(&f);
    atomic_store(&f.close_mid_call, false);
    bool closed = rc_is(&e, MOAT_CODE_UNAVAILABLE, "owner_unreachable") &&
                  strcmp(e.owner_address, f.address) == 0 && atomic_load(&f.calls) == 1;
    rc_end again = run_on_fake(&f);
    int accepted = atomic_load(&f.accepted);
    fake_peer_stop(&f);
    assert_true(closed);
    assert_true(rc_is(&again, MOAT_CODE_NOT_FOUND, "fake_end"));
    assert_int_equal(accepted, 2);
}

/* Calls share one pooled connection; once the peer restarted (its connection closed), at most
 * the first call after it can meet the dead connection, and the next goes on a new one. */
static void test_pooled_peer_restarted(void **state)
{
    (void)state;
    ETCD_REQUIRE();
    fake_peer f;
    assert_true(fake_peer_start(&f));
    rc_end first = run_on_fake(&f), second = run_on_fake(&f);
    int pooled = atomic_load(&f.accepted);
    fake_peer_restart(&f);
    rc_end third = run_on_fake(&f), fourth = run_on_fake(&f);
    int accepted = atomic_load(&f.accepted);
    fake_peer_stop(&f);
    assert_true(rc_is(&first, MOAT_CODE_NOT_FOUND, "fake_end"));
    assert_true(rc_is(&second, MOAT_CODE_NOT_FOUND, "fake_end"));
    assert_int_equal(pooled, 1);
    assert_true(rc_is(&third, MOAT_CODE_NOT_FOUND, "fake_end") ||
                rc_is(&third, MOAT_CODE_UNAVAILABLE, "owner_unreachable"));
    assert_true(rc_is(&fourth, MOAT_CODE_NOT_FOUND, "fake_end"));
    assert_int_equal(accepted, 2);
}

/* An owner that takes one call at a time per connection (its HelloAck) and ends none until it
 * has three: three calls at once go on three connections, none past the limit on one. */
static void test_owner_stream_limit(void **state)
{
    (void)state;
    ETCD_REQUIRE();
    fake_peer f;
    assert_true(fake_peer_start(&f));
    atomic_store(&f.max_streams, 1);
    atomic_store(&f.hold_until, 3);
    moat_node owner;
    assert_true(etcd_cluster_lists_node(etcd, nodes[OWNER].id, &owner));
    uint32_t ids[3];
    for (int i = 0; i < 3; i++) {
        char other[MOAT_UUID_STR_LEN], chat[MOAT_UUID_STR_LEN];
        moat_uuid_generate(other);
        moat_uuid_generate(chat);
        rc_put_record(etcd, other, chat, nodes[OWNER].id, owner.lease, f.address,
                      MOAT_RECORD_RUNNING, "");
        Moat__V1__RunCommandRequest req = MOAT__V1__RUN_COMMAND_REQUEST__INIT;
        req.session_id = other;
        req.command = "echo hi";
        ids[i] = raw_call(nodes[PROXY].conn, "/moat.v1.Exec/RunCommand", 0, &req.base);
    }
    /* The Ends come in any order: each on its own connection to the owner. */
    int ended = 0, done = 0;
    moat_frame fr;
    while (done < 3 && raw_recv(nodes[PROXY].conn, &fr, 60000) == 1) {
        if (fr.kind != MOAT_FRAME_END ||
            (fr.stream_id != ids[0] && fr.stream_id != ids[1] && fr.stream_id != ids[2]))
            continue;
        done++;
        bool fake =
            fr.u.end.code == MOAT_CODE_NOT_FOUND && moat_slice_eq_str(fr.u.end.reason, "fake_end");
        if (!fake)
            fprintf(stderr, "a call ended %d %.*s: %.*s\n", (int)fr.u.end.code,
                    (int)fr.u.end.reason.len, (const char *)fr.u.end.reason.data,
                    (int)fr.u.end.message.len, (const char *)fr.u.end.message.data);
        ended += fake;
    }
    int refused = atomic_load(&f.refused), accepted = atomic_load(&f.accepted);
    fake_peer_stop(&f);
    assert_int_equal(ended, 3);
    assert_int_equal(refused, 0);
    assert_int_equal(accepted, 3);
}

/* Last: StopSession through the proxy stops the owner's session. */
static void test_stop_through_proxy(void **state)
{
    (void)state;
    ETCD_REQUIRE();
    rc_end e = rc_stop(nodes[PROXY].conn, sid);
    assert_int_equal(e.code, MOAT_CODE_OK);
    assert_true(((Moat__V1__StopSessionResponse *)e.resp)->stopped);
    rc_free(&e);
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_ALL);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exec_exact),
        cmocka_unit_test(test_grpc_through_proxy),
        cmocka_unit_test(test_large_output_flat),
        cmocka_unit_test(test_cancel_reaches_owner),
        cmocka_unit_test(test_interactive_stdin),
        cmocka_unit_test(test_interactive_drop_and_cancel),
        cmocka_unit_test(test_cancel_naming_connection_closed),
        cmocka_unit_test(test_unary_calls),
        cmocka_unit_test(test_owner_unreachable),
        cmocka_unit_test(test_owner_closes_mid_call),
        cmocka_unit_test(test_pooled_peer_restarted),
        cmocka_unit_test(test_owner_stream_limit),
        cmocka_unit_test(test_stop_through_proxy),
    };
    int rc = moat_run_group_tests("test_cluster_proxy", tests, group_setup, group_teardown);
    curl_global_cleanup();
    return rc;
}
