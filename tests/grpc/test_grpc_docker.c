/* HTTP/2 flow control through moatd's gRPC listener to a real sandbox: a client that stops
 * reading pauses the command's output at its window (moatd holds no more than that), gets every
 * byte in order once it reads again, and other calls on its connection keep flowing meanwhile. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "moat_test.h"

#include "h2_client.h"
#include "harness.h"
#include "moat/v1/exec.pb-c.h"
#include "moat/v1/sandbox.pb-c.h"

#define TOKEN  "grpc-docker-token"
#define WINDOW 65535

static moatd_proc moatd;
static char prefix_arg[96];
static char session_id[64];

static void remove_containers(void)
{
    char cmd[256];
    snprintf(cmd, sizeof(cmd),
             "ids=$(/usr/bin/docker ps -aq --filter name=moat-grpcd%d-); "
             "[ -z \"$ids\" ] || /usr/bin/docker rm -f $ids >/dev/null 2>&1",
             (int)getpid());
    int rc = system(cmd);
    (void)rc;
}

/* A request message packed behind its gRPC prefix; free it. */
static uint8_t *framed(const ProtobufCMessage *m, size_t *len)
{
    size_t n = protobuf_c_message_get_packed_size(m);
    uint8_t *out = malloc(5 + n);
    uint8_t *body = malloc(n > 0 ? n : 1);
    protobuf_c_message_pack(m, body);
    h2c_frame_message(out, body, n);
    free(body);
    *len = 5 + n;
    return out;
}

static int setup(void **state)
{
    (void)state;
    snprintf(prefix_arg, sizeof(prefix_arg), "--container_name_prefix=moat-grpcd%d-",
             (int)getpid());
    remove_containers();
    const char *extra[] = {"--token=" TOKEN, prefix_arg, NULL};
    if (!moatd_start(&moatd, true, extra))
        return -1;
    h2c *c = h2c_connect(moatd.grpc_port, 0);
    Moat__V1__CreateSessionRequest req = MOAT__V1__CREATE_SESSION_REQUEST__INIT;
    req.chat_id = "2f0e0d0c-0b0a-4908-8706-050403020102";
    size_t len;
    uint8_t *body = framed(&req.base, &len);
    h2c_stream *st = h2c_request(c, "/moat.v1.Sandboxes/CreateSession", TOKEN, NULL, body, len);
    bool ok = st != NULL && h2c_wait(c, st, 120000) && st->grpc_status == 0 && st->messages == 1;
    Moat__V1__SandboxSession *s =
        ok ? moat__v1__sandbox_session__unpack(NULL, st->last_len, st->last) : NULL;
    if (s != NULL)
        snprintf(session_id, sizeof(session_id), "%s", s->session_id);
    moat__v1__sandbox_session__free_unpacked(s, NULL);
    free(body);
    h2c_close(c);
    return s != NULL ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    int rc = moatd_stop(&moatd);
    remove_containers();
    moatd_remove_dir(moatd.state_dir);
    return rc == 0 ? 0 : -1;
}

/* What a RunCommand stream delivered, checked as it comes: stdout must be the lines 1, 2, 3, …
 * in order. */
typedef struct run_check {
    uint64_t stdout_bytes;
    uint64_t next_line; /* the number the next line must carry */
    uint64_t partial;   /* digits of the line in progress */
    bool in_order;
    bool exited;
    int exit_code;
} run_check;

static void on_event(h2c_stream *st, const uint8_t *msg, size_t len, void *ud)
{
    (void)st;
    run_check *r = ud;
    Moat__V1__ExecEvent *e = moat__v1__exec_event__unpack(NULL, len, msg);
    if (e == NULL) {
        r->in_order = false;
        return;
    }
    if (e->kind_case == MOAT__V1__EXEC_EVENT__KIND_OUTPUT &&
        e->output->stream == MOAT__V1__OUTPUT_STREAM__STDOUT) {
        r->stdout_bytes += e->output->data.len;
        for (size_t i = 0; i < e->output->data.len; i++) {
            uint8_t b = e->output->data.data[i];
            if (b == '\n') {
                r->in_order = r->in_order && r->partial == r->next_line;
                r->next_line++;
                r->partial = 0;
            } else {
                r->partial = r->partial * 10 + (uint64_t)(b - '0');
            }
        }
    } else if (e->kind_case == MOAT__V1__EXEC_EVENT__KIND_EXIT) {
        r->exited = true;
        r->exit_code = e->exit->exit_code->code;
    }
    moat__v1__exec_event__free_unpacked(e, NULL);
}

static h2c_stream *start_run(h2c *c, const char *cmd, run_check *r, uint8_t **body)
{
    Moat__V1__RunCommandRequest req = MOAT__V1__RUN_COMMAND_REQUEST__INIT;
    req.session_id = session_id;
    req.command = (char *)cmd;
    size_t len;
    *body = framed(&req.base, &len);
    *r = (run_check){.next_line = 1, .in_order = true};
    h2c_stream *st = h2c_request(c, "/moat.v1.Exec/RunCommand", TOKEN, NULL, *body, len);
    assert_non_null(st);
    st->on_message = on_event;
    st->ud = r;
    return st;
}

static bool never(h2c *c, void *ud)
{
    (void)c;
    (void)ud;
    return false;
}

static void test_slow_reader_pauses_the_command(void **state)
{
    (void)state;
    h2c *c = h2c_connect(moatd.grpc_port, WINDOW);
    run_check r, quick;
    uint8_t *body, *quick_body;
    /* 62,888,896 bytes of numbered lines, and a reader that acknowledges none of them. */
    h2c_stream *st = start_run(c, "seq 1 8000000", &r, &body);
    st->reading = false;
    h2c_run(c, never, NULL, 3000);
    /* Exactly the stream's window arrived, and moatd holds about that much, not the command's
     * 60 MiB: execd's output is paused. */
    assert_true(st->data_bytes <= WINDOW);
    assert_false(st->closed);
    long long used = metric_value(moatd.metrics_port, "moat_memory_used_bytes");
    assert_true(used >= 0 && used < 4 * 1024 * 1024);
    if (MOAT_TEST_RSS_MEANINGFUL && moatd_wrapper()[0] == '\0')
        assert_true(proc_rss_kb(moatd.pid) < 48 * 1024);
    else
        moat_skip_note("moatd's RSS means nothing under ASan or valgrind");

    /* Another call on the same connection flows meanwhile. */
    h2c_stream *other = start_run(c, "echo 1; echo 2", &quick, &quick_body);
    assert_true(h2c_wait(c, other, 60000));
    assert_int_equal(other->grpc_status, 0);
    assert_true(quick.exited && quick.exit_code == 0 && quick.in_order);
    assert_int_equal(quick.next_line, 3);
    assert_false(st->closed);

    h2c_resume_reading(c, st);
    assert_true(h2c_wait(c, st, 300000));
    assert_int_equal(st->grpc_status, 0);
    assert_true(r.exited);
    assert_int_equal(r.exit_code, 0);
    assert_true(r.in_order);
    assert_int_equal(r.stdout_bytes, 62888896);
    assert_int_equal(r.next_line, 8000001);
    free(body);
    free(quick_body);
    h2c_close(c);
}

/* A client that goes away mid-stream: moatd cancels the call and serves the next one. */
static void test_reset_mid_stream(void **state)
{
    (void)state;
    h2c *c = h2c_connect(moatd.grpc_port, WINDOW);
    run_check r, after;
    uint8_t *body, *after_body;
    h2c_stream *st = start_run(c, "seq 1 8000000", &r, &body);
    st->reading = false;
    h2c_run(c, never, NULL, 500);
    h2c_cancel(c, st);
    h2c_stream *next = start_run(c, "echo 1", &after, &after_body);
    assert_true(h2c_wait(c, next, 60000));
    assert_int_equal(next->grpc_status, 0);
    assert_true(after.exited && after.in_order);
    free(body);
    free(after_body);
    h2c_close(c);
}

int main(void)
{
    if (access("/var/run/docker.sock", F_OK) != 0)
        return moat_skip_all("no Docker engine at /var/run/docker.sock", true);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_slow_reader_pauses_the_command),
        cmocka_unit_test(test_reset_mid_stream),
    };
    return moat_run_group_tests("grpc_docker", tests, setup, teardown);
}
