/* A SIGHUP that lowers max_frame_size and initial_window applies to new connections only: a
 * connection keeps the limits its HelloAck announced, for the streams it opens afterwards too.
 * Real moatd, dockerd and moat-execd. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "moat_test.h"

#include "harness.h"
#include "moat/v1/exec.pb-c.h"
#include "moat/v1/sandbox.pb-c.h"

static moatd_proc P;
static char config_path[64], prefix_arg[96];

static void write_config(const char *text)
{
    FILE *f = fopen(config_path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static int setup(void **state)
{
    (void)state;
    snprintf(config_path, sizeof(config_path), "/tmp/moat-reload-%d.conf", (int)getpid());
    FILE *f = fopen(config_path, "w");
    if (f == NULL)
        return -1;
    fputs("max_frame_size = 1048576\ninitial_window = 1048576\n", f);
    fclose(f);
    char config_arg[96];
    snprintf(config_arg, sizeof(config_arg), "--config=%s", config_path);
    snprintf(prefix_arg, sizeof(prefix_arg), "--container_name_prefix=moat-reload%d-",
             (int)getpid());
    const char *extra[] = {config_arg, prefix_arg, NULL};
    return moatd_start(&P, true, extra) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    int rc = moatd_stop(&P);
    char cmd[256];
    snprintf(cmd, sizeof(cmd),
             "ids=$(/usr/bin/docker ps -aq --filter name=moat-reload%d-); "
             "[ -z \"$ids\" ] || /usr/bin/docker rm -f $ids >/dev/null 2>&1",
             (int)getpid());
    rc |= system(cmd) == -1;
    moatd_remove_dir(P.state_dir);
    unlink(config_path);
    return rc == 0 ? 0 : -1;
}

static raw_conn *hello(uint32_t *max_frame, uint32_t *window)
{
    raw_conn *c = raw_connect(P.port);
    assert_non_null(c);
    moat_frame ack;
    assert_int_equal(raw_hello(c, NULL, &ack), 1);
    assert_int_equal(ack.kind, MOAT_FRAME_HELLO_ACK);
    *max_frame = ack.u.hello_ack.max_frame_size;
    *window = ack.u.hello_ack.initial_window;
    return c;
}

static void test_open_connection_keeps_announced_limits(void **state)
{
    (void)state;
    uint32_t frame, window;
    raw_conn *old = hello(&frame, &window);
    assert_int_equal(frame, 1048576);
    assert_int_equal(window, 1048576);
    char chat[MOAT_UUID_STR_LEN];
    moat_uuid_generate(chat);
    Moat__V1__CreateSessionRequest creq = MOAT__V1__CREATE_SESSION_REQUEST__INIT;
    creq.chat_id = chat;
    creq.ttl_seconds = 300;
    ProtobufCMessage *resp = NULL;
    char reason[64] = "";
    assert_int_equal(raw_unary(old, "/moat.v1.Sandboxes/CreateSession", &creq.base,
                               &moat__v1__sandbox_session__descriptor, &resp, reason,
                               sizeof(reason)),
                     MOAT_CODE_OK);
    char sid[MOAT_UUID_STR_LEN];
    snprintf(sid, sizeof(sid), "%s", ((Moat__V1__SandboxSession *)resp)->session_id);
    protobuf_c_message_free_unpacked(resp, NULL);

    /* Lower both, and wait (bounded) until new connections are told so. */
    write_config("max_frame_size = 65536\ninitial_window = 65536\n");
    kill(P.pid, SIGHUP);
    bool reloaded = false;
    for (int i = 0; i < 100 && !reloaded; i++) {
        raw_conn *fresh = hello(&frame, &window);
        reloaded = frame == 65536 && window == 65536;
        raw_close(fresh);
        if (!reloaded)
            usleep(50000);
    }
    assert_true(reloaded);

    /* A stream the old connection opens now still has the 1 MiB window it was promised:
     * 300,000 bytes of output arrive with no WindowUpdate at all. */
    Moat__V1__RunCommandRequest req = MOAT__V1__RUN_COMMAND_REQUEST__INIT;
    req.session_id = sid;
    req.command = (char *)"head -c 300000 /dev/zero | tr '\\0' a";
    uint32_t id = raw_call(old, "/moat.v1.Exec/RunCommand", 0, &req.base);
    size_t got = 0;
    int end_code = -1;
    while (end_code < 0) {
        moat_frame f;
        if (raw_recv_stream(old, id, &f, 20000) != 1)
            break;
        if (f.kind == MOAT_FRAME_MESSAGE) {
            Moat__V1__ExecEvent *ev = moat__v1__exec_event__unpack(NULL, f.u.message.payload.len,
                                                                   f.u.message.payload.data);
            assert_non_null(ev);
            if (ev->kind_case == MOAT__V1__EXEC_EVENT__KIND_OUTPUT)
                got += ev->output->data.len;
            moat__v1__exec_event__free_unpacked(ev, NULL);
        } else if (f.kind == MOAT_FRAME_END) {
            end_code = (int)f.u.end.code;
        }
    }
    if (got != 300000 || end_code != MOAT_CODE_OK)
        fail_msg("the old connection got %zu of 300000 bytes (end %d) without granting window", got,
                 end_code);
    raw_close(old);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_open_connection_keeps_announced_limits),
    };
    return moat_run_group_tests("test_e2e_reload", tests, setup, teardown);
}
