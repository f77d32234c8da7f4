/* Unit tests of the rpc module: method table, call lifecycle, deadlines, cancel. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "moat_test.h"

#include "rpc/rpc.h"
#include "grpc/health/v1/health.pb-c.h"
#include "moat/v1/exec.pb-c.h"
#include "moat/v1/files.pb-c.h"
#include "moat/v1/health.pb-c.h"
#include "moat/v1/sandbox.pb-c.h"

/* A sink that records what a call emitted. */
typedef struct rec {
    int messages;
    size_t last_len;
    uint8_t last[256];
    int ends;
    moat_status end;
    moat_err fail_with;
    size_t input_done; /* input bytes the handler gave back */
} rec;

static moat_err rec_message(moat_rpc_call *call, const ProtobufCMessage *msg, size_t len,
                            void *user)
{
    (void)call;
    rec *r = user;
    if (r->fail_with != MOAT_OK)
        return r->fail_with;
    assert_true(len <= sizeof(r->last));
    assert_int_equal(protobuf_c_message_pack(msg, r->last), len);
    r->messages++;
    r->last_len = len;
    return MOAT_OK;
}

static void rec_end(moat_rpc_call *call, const moat_status *st, void *user)
{
    (void)call;
    rec *r = user;
    r->ends++;
    r->end = *st;
}

static void rec_input_done(moat_rpc_call *call, size_t len, void *user)
{
    (void)call;
    ((rec *)user)->input_done += len;
}

static const moat_rpc_sink sink = {rec_message, rec_end, rec_input_done};

static void test_every_schema_method_is_in_the_table(void **state)
{
    (void)state;
    const ProtobufCServiceDescriptor *svcs[] = {
        &moat__v1__sandboxes__descriptor, &moat__v1__exec__descriptor, &moat__v1__files__descriptor,
        &moat__v1__health__descriptor, &grpc__health__v1__health__descriptor};
    size_t total = 0;
    for (size_t s = 0; s < sizeof(svcs) / sizeof(svcs[0]); s++) {
        for (unsigned i = 0; i < svcs[s]->n_methods; i++) {
            char name[128];
            snprintf(name, sizeof(name), "/%s/%s", svcs[s]->name, svcs[s]->methods[i].name);
            const moat_rpc_method *m = moat_rpc_method_lookup(name, strlen(name));
            assert_non_null(m);
            assert_string_equal(m->name, name);
            assert_ptr_equal(m->service, svcs[s]);
            assert_int_equal(m->service_index, i);
            assert_ptr_equal(m->request, svcs[s]->methods[i].input);
            assert_ptr_equal(m->response, svcs[s]->methods[i].output);
            assert_ptr_equal(moat_rpc_method_get(m->id), m);
            total++;
        }
    }
    assert_int_equal(total, MOAT_RPC_METHOD_COUNT);
}

static void test_streaming_methods(void **state)
{
    (void)state;
    size_t streaming = 0, client_streaming = 0;
    for (int i = 0; i < MOAT_RPC_METHOD_COUNT; i++) {
        const moat_rpc_method *m = moat_rpc_method_get((moat_rpc_method_id)i);
        if (m->server_streaming)
            streaming++;
        if (m->client_streaming)
            client_streaming++;
    }
    assert_int_equal(streaming, 6);
    assert_int_equal(client_streaming, 1);
    assert_true(moat_rpc_method_get(MOAT_RPC_EXEC_INTERACTIVE)->client_streaming);
    assert_true(moat_rpc_method_get(MOAT_RPC_EXEC_RUN_COMMAND)->server_streaming);
    assert_true(moat_rpc_method_get(MOAT_RPC_EXEC_INTERACTIVE)->server_streaming);
    assert_true(moat_rpc_method_get(MOAT_RPC_GRPC_HEALTH_WATCH)->server_streaming);
    assert_true(moat_rpc_method_get(MOAT_RPC_EXEC_RUN_IN_SHELL)->server_streaming);
    assert_true(moat_rpc_method_get(MOAT_RPC_EXEC_ATTACH)->server_streaming);
    assert_true(moat_rpc_method_get(MOAT_RPC_FILES_READ)->server_streaming);
    assert_false(moat_rpc_method_get(MOAT_RPC_SANDBOXES_CREATE_SESSION)->server_streaming);
}

static void test_lookup_rejects_near_misses(void **state)
{
    (void)state;
    const char *bad[] = {"",
                         "/",
                         "/moat.v1.Exec/",
                         "/moat.v1.Exec/RunCommandX",
                         "/moat.v1.Exec/runcommand",
                         "moat.v1.Exec/RunCommand",
                         "/moat.v2.Exec/RunCommand",
                         "/moat.v1.Exec/RunCommand/"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_null(moat_rpc_method_lookup(bad[i], strlen(bad[i])));
    /* Length is honoured: a prefix of a real name is not that name. */
    const char *full = "/moat.v1.Health/Check";
    assert_null(moat_rpc_method_lookup(full, strlen(full) - 1));
    assert_non_null(moat_rpc_method_lookup(full, strlen(full)));
    assert_null(moat_rpc_method_lookup(NULL, 0));
    assert_null(moat_rpc_method_get(MOAT_RPC_METHOD_COUNT));
}

static size_t pack_get_session(uint8_t *buf, const char *id)
{
    Moat__V1__GetSessionRequest r = MOAT__V1__GET_SESSION_REQUEST__INIT;
    r.session_id = (char *)id;
    return protobuf_c_message_pack(&r.base, buf);
}

static void test_unary_lifecycle(void **state)
{
    (void)state;
    rec r = {0};
    const moat_rpc_method *m = moat_rpc_method_get(MOAT_RPC_SANDBOXES_GET_SESSION);
    moat_rpc_call *c = moat_rpc_call_new(m, 1, 0, 1000, &sink, &r);
    assert_non_null(c);
    assert_int_equal(moat_rpc_call_state(c), MOAT_RPC_AWAIT_REQUEST);
    assert_int_equal(moat_rpc_call_stream_id(c), 1);
    assert_int_equal(moat_rpc_call_deadline(c), 0);

    Moat__V1__SandboxSession resp = MOAT__V1__SANDBOX_SESSION__INIT;
    resp.session_id = (char *)"abc";
    /* No response before the request. */
    assert_int_equal(moat_rpc_call_send(c, &resp.base), MOAT_E_STATE);

    uint8_t buf[128];
    size_t n = pack_get_session(buf, "s-1");
    const ProtobufCMessage *req = NULL;
    assert_int_equal(moat_rpc_call_request(c, buf, n, &req), MOAT_OK);
    assert_int_equal(moat_rpc_call_state(c), MOAT_RPC_RUNNING);
    assert_string_equal(((const Moat__V1__GetSessionRequest *)req)->session_id, "s-1");
    /* A second request message is refused. */
    assert_int_equal(moat_rpc_call_request(c, buf, n, NULL), MOAT_E_STATE);

    /* A message of the wrong type is refused. */
    Moat__V1__HealthCheckResponse wrong = MOAT__V1__HEALTH_CHECK_RESPONSE__INIT;
    assert_int_equal(moat_rpc_call_send(c, &wrong.base), MOAT_E_INVAL);

    assert_int_equal(moat_rpc_call_send(c, &resp.base), MOAT_OK);
    assert_int_equal(r.messages, 1);
    Moat__V1__SandboxSession *back = moat__v1__sandbox_session__unpack(NULL, r.last_len, r.last);
    assert_non_null(back);
    assert_string_equal(back->session_id, "abc");
    moat__v1__sandbox_session__free_unpacked(back, NULL);

    /* Unary: only one response. */
    assert_int_equal(moat_rpc_call_send(c, &resp.base), MOAT_E_STATE);
    assert_int_equal(moat_rpc_call_sent(c), 1);

    moat_status ok;
    moat_status_clear(&ok);
    assert_true(moat_rpc_call_end(c, &ok));
    assert_int_equal(r.ends, 1);
    assert_int_equal(r.end.code, MOAT_CODE_OK);
    /* Exactly one End. */
    assert_false(moat_rpc_call_end(c, &ok));
    assert_false(moat_rpc_call_fail(c, MOAT_CODE_INTERNAL, "x", "late"));
    assert_false(moat_rpc_call_cancel(c, MOAT_CODE_CANCELLED, "late"));
    assert_int_equal(r.ends, 1);
    assert_int_equal(moat_rpc_call_send(c, &resp.base), MOAT_E_STATE);
    moat_rpc_call_unref(c);
    assert_int_equal(r.ends, 1);
}

static void test_unary_ok_without_response_is_internal(void **state)
{
    (void)state;
    rec r = {0};
    moat_rpc_call *c =
        moat_rpc_call_new(moat_rpc_method_get(MOAT_RPC_HEALTH_CHECK), 3, 0, 0, &sink, &r);
    assert_int_equal(moat_rpc_call_request(c, (const uint8_t *)"", 0, NULL), MOAT_OK);
    moat_status ok;
    moat_status_clear(&ok);
    moat_rpc_call_end(c, &ok);
    assert_int_equal(r.end.code, MOAT_CODE_INTERNAL);
    assert_string_equal(r.end.reason, "no_response");
    moat_rpc_call_unref(c);
}

static void test_bad_request_ends_invalid_argument(void **state)
{
    (void)state;
    rec r = {0};
    moat_rpc_call *c =
        moat_rpc_call_new(moat_rpc_method_get(MOAT_RPC_EXEC_RUN_COMMAND), 5, 0, 0, &sink, &r);
    /* Field 2 declared as a 100-byte string with 1 byte present. */
    const uint8_t garbage[] = {0x12, 0x64, 0x41};
    assert_int_equal(moat_rpc_call_request(c, garbage, sizeof(garbage), NULL), MOAT_E_PROTO);
    assert_int_equal(r.ends, 1);
    assert_int_equal(r.end.code, MOAT_CODE_INVALID_ARGUMENT);
    assert_string_equal(r.end.reason, "bad_request");
    assert_int_equal(moat_rpc_call_state(c), MOAT_RPC_ENDED);
    moat_rpc_call_unref(c);
}

/* protobuf strings may carry NUL; moatd's C strings would end there. Any string
 * field, nested ones (map entries) too, with a NUL ends the call before it runs. */
static void test_nul_in_string_is_invalid_argument(void **state)
{
    (void)state;
    /* command (2) "ec\0ho"; cwd (3) "/t\0mp"; env (5) {"K\0": "v"}; env {"K": "v\0"} */
    static const uint8_t command[] = {0x12, 5, 'e', 'c', 0, 'h', 'o'};
    static const uint8_t cwd[] = {0x12, 2, 'l', 's', 0x1a, 5, '/', 't', 0, 'm', 'p'};
    static const uint8_t env_key[] = {0x12, 2, 'l', 's', 0x2a, 7, 0x0a, 2, 'K', 0, 0x12, 1, 'v'};
    static const uint8_t env_value[] = {0x12, 2, 'l', 's', 0x2a, 7, 0x0a, 1, 'K', 0x12, 2, 'v', 0};
    struct {
        const uint8_t *p;
        size_t n;
        const char *field;
    } cases[] = {{command, sizeof(command), "command"},
                 {cwd, sizeof(cwd), "cwd"},
                 {env_key, sizeof(env_key), "key"},
                 {env_value, sizeof(env_value), "value"}};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        rec r = {0};
        moat_rpc_call *c =
            moat_rpc_call_new(moat_rpc_method_get(MOAT_RPC_EXEC_RUN_COMMAND), 5, 0, 0, &sink, &r);
        assert_int_equal(moat_rpc_call_request(c, cases[i].p, cases[i].n, NULL), MOAT_E_INVAL);
        assert_int_equal(r.ends, 1);
        assert_int_equal(r.end.code, MOAT_CODE_INVALID_ARGUMENT);
        assert_string_equal(r.end.reason, "nul_in_argument");
        assert_int_equal(r.end.detail_count, 1);
        assert_string_equal(r.end.details[0].value, cases[i].field);
        moat_rpc_call_unref(c);
    }
    /* Without the NUL the same requests are accepted. */
    static const uint8_t clean[] = {0x12, 2, 'l', 's', 0x2a, 6, 0x0a, 1, 'K', 0x12, 1, 'v'};
    rec r = {0};
    moat_rpc_call *c =
        moat_rpc_call_new(moat_rpc_method_get(MOAT_RPC_EXEC_RUN_COMMAND), 5, 0, 0, &sink, &r);
    assert_int_equal(moat_rpc_call_request(c, clean, sizeof(clean), NULL), MOAT_OK);
    assert_int_equal(r.ends, 0);
    moat_rpc_call_unref(c);
}

static void test_streaming_sends_many(void **state)
{
    (void)state;
    rec r = {0};
    moat_rpc_call *c =
        moat_rpc_call_new(moat_rpc_method_get(MOAT_RPC_EXEC_RUN_COMMAND), 7, 0, 0, &sink, &r);
    assert_int_equal(moat_rpc_call_request(c, (const uint8_t *)"", 0, NULL), MOAT_OK);
    Moat__V1__ExecEvent ev = MOAT__V1__EXEC_EVENT__INIT;
    for (uint64_t i = 1; i <= 5; i++) {
        ev.sequence = i;
        assert_int_equal(moat_rpc_call_send(c, &ev.base), MOAT_OK);
    }
    assert_int_equal(r.messages, 5);
    /* A sink failure is reported and not counted. */
    r.fail_with = MOAT_E_CLOSED;
    assert_int_equal(moat_rpc_call_send(c, &ev.base), MOAT_E_CLOSED);
    assert_int_equal(moat_rpc_call_sent(c), 5);
    r.fail_with = MOAT_OK;
    /* A streaming call may end OK having sent nothing more. */
    moat_status ok;
    moat_status_clear(&ok);
    moat_rpc_call_end(c, &ok);
    assert_int_equal(r.end.code, MOAT_CODE_OK);
    moat_rpc_call_unref(c);
}

typedef struct hook {
    int calls;
    moat_code code;
    char reason[64]; /* the End's, as the hook saw it */
    bool end_itself;
} hook;

static void on_cancel(moat_rpc_call *call, const moat_status *why, void *arg)
{
    hook *h = arg;
    h->calls++;
    h->code = why->code;
    snprintf(h->reason, sizeof(h->reason), "%s", why->reason);
    /* Re-entering cancel from the hook has no effect. */
    assert_false(moat_rpc_call_cancel(call, MOAT_CODE_CANCELLED, "again"));
    if (h->end_itself)
        moat_rpc_call_fail(call, MOAT_CODE_ABORTED, "hook", "ended by the hook");
}

/* A RunCommand call on stream id that has its request and on_cancel as its hook. */
static moat_rpc_call *running_command(rec *r, hook *h, uint32_t id)
{
    moat_rpc_call *c =
        moat_rpc_call_new(moat_rpc_method_get(MOAT_RPC_EXEC_RUN_COMMAND), id, 0, 0, &sink, r);
    moat_rpc_call_request(c, (const uint8_t *)"", 0, NULL);
    moat_rpc_call_on_cancel(c, on_cancel, h);
    return c;
}

static void test_deadline(void **state)
{
    (void)state;
    rec r = {0};
    hook h = {0};
    moat_rpc_call *c =
        moat_rpc_call_new(moat_rpc_method_get(MOAT_RPC_EXEC_RUN_COMMAND), 9, 250, 10000, &sink, &r);
    assert_int_equal(moat_rpc_call_deadline(c), 10250);
    moat_rpc_call_on_cancel(c, on_cancel, &h);
    assert_false(moat_rpc_call_check_deadline(c, 10000));
    assert_false(moat_rpc_call_check_deadline(c, 10249));
    assert_int_equal(h.calls, 0);
    assert_true(moat_rpc_call_check_deadline(c, 10250));
    assert_int_equal(h.calls, 1);
    assert_int_equal(h.code, MOAT_CODE_DEADLINE_EXCEEDED);
    assert_string_equal(h.reason, "deadline_exceeded");
    assert_int_equal(r.ends, 1);
    assert_int_equal(r.end.code, MOAT_CODE_DEADLINE_EXCEEDED);
    assert_false(moat_rpc_call_check_deadline(c, 20000));
    assert_int_equal(h.calls, 1);
    assert_int_equal(r.ends, 1);
    moat_rpc_call_unref(c);
}

static void test_no_deadline_and_overflow(void **state)
{
    (void)state;
    rec r = {0};
    moat_rpc_call *c =
        moat_rpc_call_new(moat_rpc_method_get(MOAT_RPC_HEALTH_CHECK), 1, 0, 5, &sink, &r);
    assert_false(moat_rpc_call_check_deadline(c, UINT64_MAX));
    moat_rpc_call_unref(c);
    moat_rpc_call *d =
        moat_rpc_call_new(moat_rpc_method_get(MOAT_RPC_HEALTH_CHECK), 1, UINT64_MAX, 5, &sink, &r);
    assert_int_equal(moat_rpc_call_deadline(d), 0);
    moat_rpc_call_unref(d);
}

static void test_cancel(void **state)
{
    (void)state;
    rec r = {0};
    hook h = {0};
    moat_rpc_call *c = running_command(&r, &h, 11);
    moat_rpc_call_ref(c); /* a handler's reference */
    assert_true(moat_rpc_call_cancel(c, MOAT_CODE_CANCELLED, "client said so"));
    assert_int_equal(h.calls, 1);
    assert_int_equal(h.code, MOAT_CODE_CANCELLED);
    assert_string_equal(h.reason, "cancelled");
    assert_int_equal(r.end.code, MOAT_CODE_CANCELLED);
    assert_string_equal(r.end.message, "client said so");
    /* The handler finishing later changes nothing. */
    Moat__V1__ExecEvent ev = MOAT__V1__EXEC_EVENT__INIT;
    assert_int_equal(moat_rpc_call_send(c, &ev.base), MOAT_E_STATE);
    moat_status ok;
    moat_status_clear(&ok);
    assert_false(moat_rpc_call_end(c, &ok));
    moat_rpc_call_unref(c);
    moat_rpc_call_unref(c);
    assert_int_equal(r.ends, 1);
    assert_int_equal(h.calls, 1);
}

/* The server's own reasons to stop a call keep their code, reason and details in the End. */
static void test_cancel_with_status(void **state)
{
    (void)state;
    rec r = {0};
    hook h = {0};
    moat_rpc_call *c = running_command(&r, &h, 17);
    moat_status st;
    moat_status_set(&st, MOAT_CODE_INVALID_ARGUMENT, "extra_request_message", "one is enough");
    moat_status_add_detail(&st, "stream_id", "17");
    assert_true(moat_rpc_call_cancel_with(c, &st));
    assert_int_equal(h.calls, 1);
    assert_int_equal(h.code, MOAT_CODE_INVALID_ARGUMENT);
    assert_string_equal(h.reason, "extra_request_message");
    assert_int_equal(r.ends, 1);
    assert_int_equal(r.end.code, MOAT_CODE_INVALID_ARGUMENT);
    assert_string_equal(r.end.reason, "extra_request_message");
    assert_string_equal(r.end.message, "one is enough");
    assert_int_equal(r.end.detail_count, 1);
    assert_false(moat_rpc_call_cancel_with(c, &st));
    assert_int_equal(r.ends, 1);
    moat_rpc_call_unref(c);
}

static void test_cancel_hook_may_end_the_call(void **state)
{
    (void)state;
    rec r = {0};
    hook h = {.end_itself = true};
    moat_rpc_call *c = running_command(&r, &h, 13);
    assert_true(moat_rpc_call_cancel(c, MOAT_CODE_CANCELLED, NULL));
    assert_int_equal(r.ends, 1);
    assert_int_equal(r.end.code, MOAT_CODE_ABORTED);
    moat_rpc_call_unref(c);
}

static void test_abandoned_call_still_gets_an_end(void **state)
{
    (void)state;
    rec r = {0};
    moat_rpc_call *c =
        moat_rpc_call_new(moat_rpc_method_get(MOAT_RPC_FILES_READ), 15, 0, 0, &sink, &r);
    moat_rpc_call_unref(c);
    assert_int_equal(r.ends, 1);
    assert_int_equal(r.end.code, MOAT_CODE_CANCELLED);
}

static void test_reply_that_cannot_be_sent_still_ends(void **state)
{
    (void)state;
    rec r = {0};
    moat_rpc_call *c =
        moat_rpc_call_new(moat_rpc_method_get(MOAT_RPC_HEALTH_CHECK), 19, 0, 0, &sink, &r);
    moat_rpc_call_request(c, (const uint8_t *)"", 0, NULL);
    Moat__V1__HealthCheckResponse resp = MOAT__V1__HEALTH_CHECK_RESPONSE__INIT;
    r.fail_with = MOAT_E_TOO_BIG;
    assert_int_equal(moat_rpc_call_reply(c, &resp.base), MOAT_E_TOO_BIG);
    assert_int_equal(r.ends, 1);
    assert_int_equal(r.end.code, MOAT_CODE_RESOURCE_EXHAUSTED);
    assert_string_equal(r.end.reason, "response_too_large");
    moat_rpc_call_unref(c);

    rec r2 = {0};
    c = moat_rpc_call_new(moat_rpc_method_get(MOAT_RPC_HEALTH_CHECK), 21, 0, 0, &sink, &r2);
    moat_rpc_call_request(c, (const uint8_t *)"", 0, NULL);
    r2.fail_with = MOAT_E_CLOSED;
    assert_int_equal(moat_rpc_call_reply(c, &resp.base), MOAT_E_CLOSED);
    assert_int_equal(r2.ends, 1);
    assert_int_equal(r2.end.code, MOAT_CODE_INTERNAL);
    moat_rpc_call_unref(c);
}

/* An interactive call's input message, packed into buf. */
static size_t pack_input(Moat__V1__InteractiveRequest *in, uint8_t *buf, size_t cap)
{
    size_t n = moat__v1__interactive_request__get_packed_size(in);
    assert_true(n <= cap);
    return moat__v1__interactive_request__pack(in, buf);
}

static size_t pack_stdin(const char *text, uint8_t *buf, size_t cap)
{
    Moat__V1__InteractiveRequest in = MOAT__V1__INTERACTIVE_REQUEST__INIT;
    in.input_case = MOAT__V1__INTERACTIVE_REQUEST__INPUT_STDIN;
    in.stdin = (ProtobufCBinaryData){strlen(text), (uint8_t *)text};
    return pack_input(&in, buf, cap);
}

static moat_rpc_call *interactive_call(rec *r)
{
    moat_rpc_call *c =
        moat_rpc_call_new(moat_rpc_method_get(MOAT_RPC_EXEC_INTERACTIVE), 7, 0, 0, &sink, r);
    Moat__V1__InteractiveStart start = MOAT__V1__INTERACTIVE_START__INIT;
    start.session_id = (char *)"9f1c0b7e-0000-4000-8000-000000000000";
    Moat__V1__InteractiveRequest first = MOAT__V1__INTERACTIVE_REQUEST__INIT;
    first.input_case = MOAT__V1__INTERACTIVE_REQUEST__INPUT_START;
    first.start = &start;
    uint8_t buf[128];
    size_t n = pack_input(&first, buf, sizeof(buf));
    const ProtobufCMessage *req = NULL;
    assert_int_equal(moat_rpc_call_request(c, buf, n, &req), MOAT_OK);
    assert_int_equal(((const Moat__V1__InteractiveRequest *)req)->input_case,
                     MOAT__V1__INTERACTIVE_REQUEST__INPUT_START);
    return c;
}

/* What an input hook saw, in order. */
typedef struct seen_input {
    char text[64];
    size_t bytes;
    int count;
    moat_rpc_call *end_after; /* ends this call after the first input */
} seen_input;

static void on_input(moat_rpc_call *call, const ProtobufCMessage *msg, size_t len, void *arg)
{
    seen_input *s = arg;
    const Moat__V1__InteractiveRequest *in = (const Moat__V1__InteractiveRequest *)msg;
    assert_int_equal(in->input_case, MOAT__V1__INTERACTIVE_REQUEST__INPUT_STDIN);
    strncat(s->text, (const char *)in->stdin.data, in->stdin.len);
    s->bytes += len;
    s->count++;
    moat_rpc_call_input_done(call, len);
    if (s->end_after != NULL)
        moat_rpc_call_fail(s->end_after, MOAT_CODE_ABORTED, "test", "enough");
}

/* Input before the handler is ready waits, in order; then it flows straight through, and the
 * credit it used goes back through the sink. */
static void test_input_is_held_until_a_hook_takes_it(void **state)
{
    (void)state;
    rec r = {0};
    moat_rpc_call *c = interactive_call(&r);
    uint8_t buf[64];
    size_t n1 = pack_stdin("ab", buf, sizeof(buf));
    assert_int_equal(moat_rpc_call_input(c, buf, n1), MOAT_OK);
    size_t n2 = pack_stdin("cd", buf, sizeof(buf));
    assert_int_equal(moat_rpc_call_input(c, buf, n2), MOAT_OK);
    seen_input seen = {0};
    moat_rpc_call_on_input(c, on_input, &seen);
    assert_string_equal(seen.text, "abcd");
    assert_int_equal(seen.count, 2);
    size_t n3 = pack_stdin("e", buf, sizeof(buf));
    assert_int_equal(moat_rpc_call_input(c, buf, n3), MOAT_OK);
    assert_string_equal(seen.text, "abcde");
    assert_int_equal(r.input_done, n1 + n2 + n3);
    assert_int_equal(r.ends, 0);
    moat_rpc_call_unref(c);
    assert_int_equal(r.ends, 1);
}

/* A hook that ends the call: what was held after it is dropped, later input too, and nothing
 * leaks (ASan's run checks that). */
static void test_input_after_the_end_is_dropped(void **state)
{
    (void)state;
    rec r = {0};
    moat_rpc_call *c = interactive_call(&r);
    uint8_t buf[64];
    for (int i = 0; i < 3; i++) {
        size_t n = pack_stdin("x", buf, sizeof(buf));
        assert_int_equal(moat_rpc_call_input(c, buf, n), MOAT_OK);
    }
    seen_input seen = {.end_after = c};
    moat_rpc_call_on_input(c, on_input, &seen);
    assert_int_equal(seen.count, 1);
    assert_int_equal(r.ends, 1);
    assert_int_equal(r.end.code, MOAT_CODE_ABORTED);
    size_t n = pack_stdin("y", buf, sizeof(buf));
    assert_int_equal(moat_rpc_call_input(c, buf, n), MOAT_OK);
    assert_int_equal(seen.count, 1);
    moat_rpc_call_unref(c);
}

/* Input is decoded and checked like a request; methods that take one request take no input. */
static void test_bad_input(void **state)
{
    (void)state;
    rec r = {0};
    moat_rpc_call *c = interactive_call(&r);
    const uint8_t junk[] = {0xff, 0xff, 0xff};
    assert_int_equal(moat_rpc_call_input(c, junk, sizeof(junk)), MOAT_E_PROTO);
    assert_int_equal(r.end.code, MOAT_CODE_INVALID_ARGUMENT);
    assert_string_equal(r.end.reason, "bad_request");
    moat_rpc_call_unref(c);

    rec r2 = {0};
    c = interactive_call(&r2);
    Moat__V1__InteractiveRequest in = MOAT__V1__INTERACTIVE_REQUEST__INIT;
    in.input_case = MOAT__V1__INTERACTIVE_REQUEST__INPUT_SIGNAL;
    in.signal = (char *)"SIGINT";
    uint8_t buf[64];
    size_t n = pack_input(&in, buf, sizeof(buf));
    buf[n - 1] = 0; /* "SIGIN\0" */
    assert_int_equal(moat_rpc_call_input(c, buf, n), MOAT_E_INVAL);
    assert_string_equal(r2.end.reason, "nul_in_argument");
    moat_rpc_call_unref(c);

    rec r3 = {0};
    moat_rpc_call *run =
        moat_rpc_call_new(moat_rpc_method_get(MOAT_RPC_EXEC_RUN_COMMAND), 9, 0, 0, &sink, &r3);
    n = pack_stdin("x", buf, sizeof(buf));
    assert_int_equal(moat_rpc_call_input(run, buf, n), MOAT_E_STATE); /* before its request */
    Moat__V1__RunCommandRequest req = MOAT__V1__RUN_COMMAND_REQUEST__INIT;
    req.command = (char *)"true";
    uint8_t rb[64];
    assert_int_equal(
        moat_rpc_call_request(run, rb, moat__v1__run_command_request__pack(&req, rb), NULL),
        MOAT_OK);
    assert_int_equal(moat_rpc_call_input(run, rb, moat__v1__run_command_request__pack(&req, rb)),
                     MOAT_E_STATE);
    moat_rpc_call_unref(run);
}

static void test_data_pointer(void **state)
{
    (void)state;
    rec r = {0};
    int x = 0;
    moat_rpc_call *c =
        moat_rpc_call_new(moat_rpc_method_get(MOAT_RPC_FILES_READ), 17, 0, 0, &sink, &r);
    assert_null(moat_rpc_call_get_data(c));
    moat_rpc_call_set_data(c, &x);
    assert_ptr_equal(moat_rpc_call_get_data(c), &x);
    assert_ptr_equal(moat_rpc_call_method(c), moat_rpc_method_get(MOAT_RPC_FILES_READ));
    assert_null(moat_rpc_call_new(NULL, 1, 0, 0, &sink, &r));
    assert_null(moat_rpc_call_new(moat_rpc_call_method(c), 1, 0, 0, NULL, &r));
    moat_rpc_call_unref(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_schema_method_is_in_the_table),
        cmocka_unit_test(test_streaming_methods),
        cmocka_unit_test(test_lookup_rejects_near_misses),
        cmocka_unit_test(test_unary_lifecycle),
        cmocka_unit_test(test_unary_ok_without_response_is_internal),
        cmocka_unit_test(test_bad_request_ends_invalid_argument),
        cmocka_unit_test(test_nul_in_string_is_invalid_argument),
        cmocka_unit_test(test_streaming_sends_many),
        cmocka_unit_test(test_deadline),
        cmocka_unit_test(test_no_deadline_and_overflow),
        cmocka_unit_test(test_cancel),
        cmocka_unit_test(test_cancel_with_status),
        cmocka_unit_test(test_cancel_hook_may_end_the_call),
        cmocka_unit_test(test_abandoned_call_still_gets_an_end),
        cmocka_unit_test(test_reply_that_cannot_be_sent_still_ends),
        cmocka_unit_test(test_input_is_held_until_a_hook_takes_it),
        cmocka_unit_test(test_input_after_the_end_is_dropped),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_data_pointer),
    };
    return moat_run_group_tests("test_rpc", tests, NULL, NULL);
}
