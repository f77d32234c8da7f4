/* What an attacker holding the token can make moatd hold or refuse, against the real moatd,
 * dockerd and moat-execd (issue #12): a small memory budget under many finished 4 MB runs and
 * under 100 unread streams on one connection, with a legitimate session next to them; caps on
 * ttl, sessions (in total and per chat) and concurrent calls per session; timed_out only for
 * the timeout; a fork bomb that does not outlive its timeout. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "moat_test.h"

#include "bridge/bridge.h"
#include "harness.h"
#include "moat/v1/exec.pb-c.h"
#include "moat/v1/sandbox.pb-c.h"

/* Large enough that the 100 unread streams below cannot fill it alone: a connection holds at
 * most twice its share (a quarter) plus MOAT_BRIDGE_TRANSFER_OVERSHOOT_MAX per stream
 * (docs/bridge.md), 32 + 56 MiB here. */
#define BUDGET (96ll << 20)
/* What the budget may be passed by besides the transfers' own costs: a batch of frames. */
#define SLACK (1ll << 20)

static moatd_proc P;
static char prefix[64], prefix_arg[96], instance_arg[64];
static char chat_a[] = "5d1c2b0e-8a51-4c1e-9d7b-1f2e3d4c5b01";
static char chat_b[] = "5d1c2b0e-8a51-4c1e-9d7b-1f2e3d4c5b02";
static char chat_c[] = "5d1c2b0e-8a51-4c1e-9d7b-1f2e3d4c5b03";
static char chat_d[] = "5d1c2b0e-8a51-4c1e-9d7b-1f2e3d4c5b04";
static char attack_sid[64], legit_sid[64];

static int setup(void **state)
{
    (void)state;
    int pid = (int)getpid();
    snprintf(prefix, sizeof(prefix), "moat-chaos-%d-", pid);
    snprintf(prefix_arg, sizeof(prefix_arg), "--container_name_prefix=%s", prefix);
    snprintf(instance_arg, sizeof(instance_arg), "--instance=chaos%d", pid);
    docker_remove_prefixed(prefix);
    const char *extra[] = {prefix_arg,
                           instance_arg,
                           "--log_level=info",
                           "--memory_budget_bytes=100663296",
                           "--max_streams_per_connection=300",
                           "--max_sessions=4",
                           "--max_sessions_per_chat=2",
                           "--max_calls_per_session=64",
                           "--max_ttl_seconds=3600",
                           NULL};
    return moatd_start(&P, true, extra) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    int rc = moatd_stop(&P);
    docker_remove_prefixed(prefix);
    moatd_remove_dir(P.state_dir);
    return rc == 0 ? 0 : -1;
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

/* CreateSession; the code, and on OK the session id in sid. */
static int create(raw_conn *c, const char *chat, uint32_t ttl, bool force_new, char sid[64],
                  char reason[64])
{
    Moat__V1__CreateSessionRequest req = MOAT__V1__CREATE_SESSION_REQUEST__INIT;
    req.chat_id = (char *)chat;
    req.ttl_seconds = ttl;
    req.force_new = force_new;
    ProtobufCMessage *resp = NULL;
    reason[0] = '\0';
    int code = raw_unary(c, "/moat.v1.Sandboxes/CreateSession", &req.base,
                         &moat__v1__sandbox_session__descriptor, &resp, reason, 64);
    if (code == MOAT_CODE_OK)
        snprintf(sid, 64, "%s", ((Moat__V1__SandboxSession *)resp)->session_id);
    if (resp != NULL)
        protobuf_c_message_free_unpacked(resp, NULL);
    return code;
}

static int stop(raw_conn *c, const char *sid)
{
    Moat__V1__StopSessionRequest req = MOAT__V1__STOP_SESSION_REQUEST__INIT;
    req.session_id = (char *)sid;
    ProtobufCMessage *resp = NULL;
    int code = raw_unary(c, "/moat.v1.Sandboxes/StopSession", &req.base,
                         &moat__v1__stop_session_response__descriptor, &resp, NULL, 0);
    if (resp != NULL)
        protobuf_c_message_free_unpacked(resp, NULL);
    return code;
}

static int renew(raw_conn *c, const char *sid, uint32_t ttl, char reason[64])
{
    Moat__V1__RenewSessionRequest req = MOAT__V1__RENEW_SESSION_REQUEST__INIT;
    req.session_id = (char *)sid;
    req.ttl_seconds = ttl;
    ProtobufCMessage *resp = NULL;
    int code = raw_unary(c, "/moat.v1.Sandboxes/RenewSession", &req.base,
                         &moat__v1__sandbox_session__descriptor, &resp, reason, 64);
    if (resp != NULL)
        protobuf_c_message_free_unpacked(resp, NULL);
    return code;
}

/* One run read to its end. */
typedef struct run_result {
    int end_code;
    char end_reason[64];
    char end_scope[16]; /* the End's detail "scope", if any */
    bool exit_known, timed_out;
    int exit_code;
    char execution_id[128];
    char out[256];
    size_t out_len;
} run_result;

static void collect(raw_conn *c, uint32_t id, run_result *r)
{
    memset(r, 0, sizeof(*r));
    r->end_code = -1;
    for (;;) {
        moat_frame f;
        if (raw_recv_stream(c, id, &f, 120000) != 1)
            return;
        if (f.kind == MOAT_FRAME_END) {
            r->end_code = (int)f.u.end.code;
            size_t n = f.u.end.reason.len < 63 ? f.u.end.reason.len : 63;
            memcpy(r->end_reason, f.u.end.reason.data, n);
            r->end_reason[n] = '\0';
            for (size_t i = 0; i < f.u.end.detail_count; i++) {
                const moat_kv *d = &f.u.end.details[i];
                if (d->key.len == 5 && memcmp(d->key.data, "scope", 5) == 0)
                    snprintf(r->end_scope, sizeof(r->end_scope), "%.*s", (int)d->value.len,
                             (const char *)d->value.data);
            }
            return;
        }
        if (f.kind != MOAT_FRAME_MESSAGE)
            continue;
        moat_frame w = {0};
        w.stream_id = id;
        w.kind = MOAT_FRAME_WINDOW_UPDATE;
        w.u.window_update.increment = (uint32_t)f.u.message.payload.len;
        if (w.u.window_update.increment > 0)
            raw_send(c, &w);
        Moat__V1__ExecEvent *ev =
            moat__v1__exec_event__unpack(NULL, f.u.message.payload.len, f.u.message.payload.data);
        assert_non_null(ev);
        if (ev->kind_case == MOAT__V1__EXEC_EVENT__KIND_INIT) {
            snprintf(r->execution_id, sizeof(r->execution_id), "%s", ev->init->execution_id);
        } else if (ev->kind_case == MOAT__V1__EXEC_EVENT__KIND_OUTPUT &&
                   ev->output->stream == MOAT__V1__OUTPUT_STREAM__STDOUT) {
            size_t room = sizeof(r->out) - 1 - r->out_len;
            size_t n = ev->output->data.len < room ? ev->output->data.len : room;
            memcpy(r->out + r->out_len, ev->output->data.data, n);
            r->out_len += n;
            r->out[r->out_len] = '\0';
        } else if (ev->kind_case == MOAT__V1__EXEC_EVENT__KIND_EXIT) {
            r->timed_out = ev->exit->timed_out;
            if (ev->exit->exit_code != NULL &&
                ev->exit->exit_code->value_case == MOAT__V1__EXIT_CODE__VALUE_CODE) {
                r->exit_known = true;
                r->exit_code = ev->exit->exit_code->code;
            }
        }
        moat__v1__exec_event__free_unpacked(ev, NULL);
    }
}

static void run(raw_conn *c, const char *sid, const char *cmd, uint64_t timeout_ms, run_result *r)
{
    collect(c, raw_start_run(c, sid, cmd, timeout_ms), r);
}

/* The legitimate user next to the attack: `echo hi` works. */
static void legit_echo(void)
{
    raw_conn *c = conn();
    run_result r;
    run(c, legit_sid, "echo hi", 0, &r);
    assert_int_equal(r.end_code, MOAT_CODE_OK);
    assert_true(r.exit_known);
    assert_int_equal(r.exit_code, 0);
    assert_string_equal(r.out, "hi\n");
    raw_close(c);
}

/* The budget's peak stays at the cap, passed only by what each open run transfer may
 * add (MOAT_BRIDGE_TRANSFER_OVERSHOOT_MAX) and a batch of frames. */
static void assert_under_budget(int transfers)
{
    long long peak = metric_value(P.metrics_port, "moat_memory_peak_bytes");
    long long cap = metric_value(P.metrics_port, "moat_memory_budget_bytes");
    assert_int_equal(cap, BUDGET);
    assert_true(peak > 0);
    long long bound = BUDGET + SLACK + (long long)transfers * MOAT_BRIDGE_TRANSFER_OVERSHOOT_MAX;
    if (peak > bound)
        fail_msg("moat_memory_peak_bytes %lld is over the budget %lld (%lld with %d transfers)",
                 peak, BUDGET, bound, transfers);
}

/* Waits (bounded) until the metric satisfies cmp against v. */
static long long wait_metric(const char *name, bool (*ok)(long long v, long long want),
                             long long want)
{
    long long v = -1;
    for (int i = 0; i < 1200; i++) {
        v = metric_value(P.metrics_port, name);
        if (ok(v, want))
            return v;
        usleep(50000);
    }
    fail_msg("%s stayed at %lld (want %lld)", name, v, want);
    return v;
}

static bool at_least(long long v, long long want)
{
    return v >= want;
}

static bool at_most(long long v, long long want)
{
    return v >= 0 && v <= want;
}

/* ttl, max_sessions_per_chat and max_sessions, each refused with its reason. */
static void test_session_limits(void **state)
{
    (void)state;
    raw_conn *c = conn();
    char sid[64], s2[64], s4[64], reason[64];
    assert_int_equal(create(c, chat_a, 4294967295u, false, sid, reason),
                     MOAT_CODE_INVALID_ARGUMENT);
    assert_string_equal(reason, "ttl_too_long");
    assert_int_equal(create(c, chat_a, 600, false, attack_sid, reason), MOAT_CODE_OK);
    assert_int_equal(renew(c, attack_sid, 3601, reason), MOAT_CODE_INVALID_ARGUMENT);
    assert_string_equal(reason, "ttl_too_long");
    assert_int_equal(renew(c, attack_sid, 3600, reason), MOAT_CODE_OK);
    /* per chat: force_new makes a second, not a third */
    assert_int_equal(create(c, chat_a, 600, true, s2, reason), MOAT_CODE_OK);
    assert_int_equal(create(c, chat_a, 600, true, sid, reason), MOAT_CODE_RESOURCE_EXHAUSTED);
    assert_string_equal(reason, "too_many_sessions_for_chat");
    /* without force_new the chat's session is found, not counted again */
    assert_int_equal(create(c, chat_a, 600, false, sid, reason), MOAT_CODE_OK);
    /* in total: 4 */
    assert_int_equal(create(c, chat_b, 600, false, legit_sid, reason), MOAT_CODE_OK);
    assert_int_equal(create(c, chat_c, 600, false, s4, reason), MOAT_CODE_OK);
    assert_int_equal(create(c, chat_d, 600, false, sid, reason), MOAT_CODE_RESOURCE_EXHAUSTED);
    assert_string_equal(reason, "too_many_sessions");
    assert_int_equal(stop(c, s2), MOAT_CODE_OK);
    assert_int_equal(stop(c, s4), MOAT_CODE_OK);
    assert_int_equal(create(c, chat_d, 600, false, sid, reason), MOAT_CODE_OK);
    assert_int_equal(stop(c, sid), MOAT_CODE_OK);
    raw_close(c);
}

/* 200 calls at once to one session: max_calls_per_session run, the rest are refused with a
 * reason, and none fails with a transport message. */
static void test_calls_per_session(void **state)
{
    (void)state;
    raw_conn *c = conn();
    enum { N = 200 };
    for (int i = 0; i < N; i++)
        assert_true(raw_start_run(c, attack_sid, "sleep 2; echo done", 0) != 0);
    /* Interrupt frees slots, so it is never refused: this one reaches execd, which knows no
     * such execution. */
    Moat__V1__InterruptRequest ir = MOAT__V1__INTERRUPT_REQUEST__INIT;
    ir.session_id = attack_sid;
    ir.execution_id = (char *)"no-such-execution";
    uint32_t interrupt = raw_call(c, "/moat.v1.Exec/Interrupt", 0, &ir.base);
    int ok = 0, refused = 0, ended = 0;
    bool interrupt_ended = false;
    while (ended < N || !interrupt_ended) {
        moat_frame f;
        assert_int_equal(raw_recv(c, &f, 120000), 1);
        if (f.kind == MOAT_FRAME_MESSAGE) {
            moat_frame w = {0};
            w.stream_id = f.stream_id;
            w.kind = MOAT_FRAME_WINDOW_UPDATE;
            w.u.window_update.increment = (uint32_t)f.u.message.payload.len;
            raw_send(c, &w);
        } else if (f.kind == MOAT_FRAME_END && f.stream_id == interrupt) {
            interrupt_ended = true;
            assert_int_not_equal(f.u.end.code, MOAT_CODE_RESOURCE_EXHAUSTED);
        } else if (f.kind == MOAT_FRAME_END) {
            ended++;
            if (f.u.end.code == MOAT_CODE_OK) {
                ok++;
            } else {
                char reason[64] = "";
                memcpy(reason, f.u.end.reason.data,
                       f.u.end.reason.len < 63 ? f.u.end.reason.len : 63);
                assert_int_equal(f.u.end.code, MOAT_CODE_RESOURCE_EXHAUSTED);
                assert_string_equal(reason, "too_many_calls");
                refused++;
            }
        }
    }
    assert_true(ok >= 1 && ok <= 64);
    assert_true(refused >= N - 64);
    /* once they are over, the session takes calls again */
    run_result r;
    run(c, attack_sid, "echo again", 0, &r);
    assert_int_equal(r.end_code, MOAT_CODE_OK);
    assert_string_equal(r.out, "again\n");
    raw_close(c);
}

/* Many finished runs of 4 MB: their replay stays under the budget, the oldest goes first
 * (Attach says DATA_LOSS), and the legitimate session still runs. */
static void test_budget_finished_runs(void **state)
{
    (void)state;
    raw_conn *c = conn();
    run_result first;
    run(c, attack_sid, "head -c 4000000 /dev/zero", 0, &first);
    assert_int_equal(first.end_code, MOAT_CODE_OK);
    assert_true(first.execution_id[0] != '\0');
    assert_int_equal(raw_run_many(c, attack_sid, "head -c 4000000 /dev/zero", 40, 2, NULL, NULL),
                     40);
    assert_under_budget(2);
    wait_metric("moat_memory_dropped_bytes_total", at_least, 1);
    Moat__V1__AttachRequest req = MOAT__V1__ATTACH_REQUEST__INIT;
    req.session_id = attack_sid;
    req.execution_id = first.execution_id;
    req.after_sequence = 0;
    run_result r;
    collect(c, raw_call(c, "/moat.v1.Exec/Attach", 0, &req.base), &r);
    assert_int_equal(r.end_code, MOAT_CODE_DATA_LOSS);
    assert_string_equal(r.end_reason, "replay_ring_overrun");
    legit_echo();
    raw_close(c);
}

/* 100 streams on one connection that reads nothing: that connection's share of the budget
 * fills, its next stream is refused with a reason, the total stays under the budget, and the
 * legitimate session still runs. Closing it gives everything back. */
static void test_budget_unread_streams(void **state)
{
    (void)state;
    raw_conn *a = conn();
    /* max_calls_per_session is 64: spread the 100 over two sessions */
    char second[64], reason[64];
    assert_int_equal(create(a, chat_a, 600, true, second, reason), MOAT_CODE_OK);
    for (int i = 0; i < 100; i++)
        assert_true(raw_start_run(a, i % 2 ? attack_sid : second, "yes", 0) != 0);
    wait_metric("moat_memory_pinned_bytes", at_least, BUDGET / 4);
    /* The connection's share moves as its frames drain into the socket, so a probe can come
     * in just under it. Admitted, a probe that is read must end as any such call does while
     * others on the connection wait (PROTOCOL.md section 4); once the share is full, one is
     * refused with scope=connection (section 3). */
    bool refused = false;
    for (int i = 0; i < 50 && !refused; i++) {
        run_result r;
        run(a, attack_sid, "echo probe", 0, &r);
        if (r.end_code == MOAT_CODE_RESOURCE_EXHAUSTED) {
            assert_string_equal(r.end_reason, "memory_budget_exhausted");
            assert_string_equal(r.end_scope, "connection");
            refused = true;
        } else if (r.end_code != MOAT_CODE_OK || !r.exit_known || r.exit_code != 0 ||
                   strcmp(r.out, "probe\n") != 0) {
            fail_msg("admitted probe %d ended code %d reason \"%s\", exit %s%d, stdout \"%s\"", i,
                     r.end_code, r.end_reason, r.exit_known ? "" : "unknown ", r.exit_code, r.out);
        }
    }
    assert_true(refused);
    /* moatd publishes its budget figures once per loop turn: the END can arrive first */
    wait_metric("moat_memory_refused_total", at_least, 1);
    legit_echo();
    assert_under_budget(101);
    raw_close(a);
    /* the streams are cancelled and their commands interrupted: nothing stays pinned */
    wait_metric("moat_memory_pinned_bytes", at_most, 0);
    raw_conn *c = conn();
    assert_int_equal(stop(c, second), MOAT_CODE_OK);
    assert_int_equal(stop(c, attack_sid), MOAT_CODE_OK);
    raw_close(c);
    /* the stopped sessions' replay is dropped at once */
    wait_metric("moat_memory_used_bytes", at_most, 1 << 20);
    assert_under_budget(101);
    legit_echo();
}

/* timed_out only when the timeout fired; a fork bomb's leftovers die at its deadline and the
 * session answers again. */
static void test_timeouts_and_fork_bomb(void **state)
{
    (void)state;
    raw_conn *c = conn();
    run_result r;
    run(c, legit_sid, "kill -KILL $$", 60000, &r);
    assert_int_equal(r.end_code, MOAT_CODE_OK);
    assert_true(r.exit_known);
    assert_int_equal(r.exit_code, -1);
    assert_false(r.timed_out);
    run(c, legit_sid, "sleep 20", 300, &r);
    assert_true(r.exit_known);
    assert_int_equal(r.exit_code, -1);
    assert_true(r.timed_out);
    /* the classic bomb: its command returns at once, its children fill the pids limit */
    run(c, legit_sid, ":(){ :|:& };:", 3000, &r);
    assert_int_equal(r.end_code, MOAT_CODE_OK);
    bool answered = false;
    for (int i = 0; i < 240 && !answered; i++) {
        run(c, legit_sid, "echo ok", 0, &r);
        answered = r.end_code == MOAT_CODE_OK && r.exit_known && r.exit_code == 0 &&
                   strcmp(r.out, "ok\n") == 0;
        if (!answered)
            usleep(500000);
    }
    assert_true(answered);
    raw_close(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_session_limits),         cmocka_unit_test(test_calls_per_session),
        cmocka_unit_test(test_budget_finished_runs),   cmocka_unit_test(test_budget_unread_streams),
        cmocka_unit_test(test_timeouts_and_fork_bomb),
    };
    return moat_run_group_tests("test_chaos", tests, setup, teardown);
}
