/* PTY sessions over the WebSocket (integration, the real moat-execd): a shell on both
 * transports, resize and TERM, SIGINT, pipe mode's stderr, close_stdin, replay, a second
 * client, malformed frames and DELETE. Waits are generous bounds against a hang, never a
 * measure. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include "moat_test.h"

#include "pty_fixture.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void test_shell_over_both_transports(void **state)
{
    (void)state;
    const xd_target *targets[2] = {&unix_t, &tcp_t};
    for (int i = 0; i < 2; i++) {
        const char *id = create(targets[i], NULL);
        cJSON *st = status_of(id, 200);
        assert_false(cJSON_IsTrue(cJSON_GetObjectItem(st, "running")));
        assert_int_equal(xd_json_i64(st, "output_offset"), 0);
        cJSON_Delete(st);
        xd_ws *ws = attach(targets[i], id, "");
        expect_connected(ws, id, "pty");
        type_line(ws, "echo $((6*7))\n");
        assert_non_null(xd_ws_wait_output(ws, "42\r\n", WAIT_MS));
        send_json(ws, "{\"type\":\"ping\"}");
        expect_type(ws, "pong", NULL);
        send_json(ws, "{\"type\":\"stdin\",\"data\":\"echo $TERM-$((2+2))\\n\"}");
        assert_non_null(xd_ws_wait_output(ws, "xterm-256color-4", WAIT_MS));
        st = status_of(id, 200);
        assert_true(cJSON_IsTrue(cJSON_GetObjectItem(st, "running")));
        assert_true(xd_json_i64(st, "output_offset") > 0);
        cJSON_Delete(st);
        type_line(ws, "exit 3\n");
        cJSON *j = next_json(ws);
        assert_string_equal(moat_json_str(j, "type", NULL), "exit");
        assert_int_equal(xd_json_i64(j, "exit_code"), 3);
        cJSON_Delete(j);
        char reason[64];
        assert_int_equal(expect_close(ws, reason, sizeof(reason)), 1000);
        assert_string_equal(reason, "process exited");
        xd_ws_close(ws);
        st = status_of(id, 200);
        assert_false(cJSON_IsTrue(cJSON_GetObjectItem(st, "running")));
        cJSON_Delete(st);
        delete_session(id, 200);
        status_of(id, 404);
    }
}

static void test_resize_and_term(void **state)
{
    (void)state;
    const char *id = create(&unix_t, "{\"cwd\":\"/tmp\"}");
    xd_ws *ws = attach(&unix_t, id, "?term=vt100");
    expect_connected(ws, id, "pty");
    type_line(ws, "stty size; echo $TERM; pwd\n");
    assert_non_null(xd_ws_wait_output(ws, "24 80\r\nvt100\r\n/tmp\r\n", WAIT_MS));
    /* Bad frames are answered and the session goes on. */
    send_json(ws, "{\"type\":\"resize\",\"cols\":0,\"rows\":0}");
    expect_type(ws, "error", "INVALID_FRAME");
    send_json(ws, "{\"type\":\"resize\",\"cols\":80,\"rows\":65536}");
    expect_type(ws, "error", "INVALID_FRAME");
    send_json(ws, "{\"type\":\"nope\"}");
    expect_type(ws, "error", "INVALID_FRAME");
    send_json(ws, "{\"type\":\"signal\",\"signal\":\"SIGSTOP\"}");
    expect_type(ws, "error", "INVALID_FRAME");
    send_json(ws, "not json");
    expect_type(ws, "error", "INVALID_FRAME");
    uint8_t bad_binary[] = {0x01, 'x'};
    assert_true(xd_ws_send(ws, 2, bad_binary, sizeof(bad_binary)));
    expect_type(ws, "error", "INVALID_FRAME");
    type_line(ws, "echo still-$((1+1))\n");
    assert_non_null(xd_ws_wait_output(ws, "still-2", WAIT_MS));
    xd_ws_close(ws);
    delete_session(id, 200);

    /* A resize reaches the process as SIGWINCH, with the new size on its terminal. */
    id = create(&unix_t, "{\"command\":\"trap 'stty size' WINCH; echo ready; while :; do "
                         "sleep 0.05; done\"}");
    ws = attach(&unix_t, id, "");
    expect_connected(ws, id, "pty");
    assert_non_null(xd_ws_wait_output(ws, "ready\r\n", WAIT_MS));
    send_json(ws, "{\"type\":\"resize\",\"cols\":132,\"rows\":43}");
    assert_non_null(xd_ws_wait_output(ws, "43 132\r\n", WAIT_MS));
    xd_ws_close(ws);
    delete_session(id, 200);

    /* rows= and cols= (moat's extension): the size the command sees from its start; values out
     * of 1..65535 leave the default. */
    static const char *const sizes[][2] = {{"?rows=50&cols=170", "50 170\r\n"},
                                           {"?rows=0&cols=65536", "24 80\r\n"}};
    for (size_t i = 0; i < 2; i++) {
        id = create(&unix_t, "{\"command\":\"stty size\"}");
        ws = attach(&unix_t, id, sizes[i][0]);
        expect_connected(ws, id, "pty");
        assert_non_null(xd_ws_wait_output(ws, sizes[i][1], WAIT_MS));
        xd_ws_close(ws);
        delete_session(id, 200);
    }
}

/* Whether a process with exactly this command line exists. */
static bool process_running(const char *argv0, const char *arg1)
{
    DIR *d = opendir("/proc");
    bool found = false;
    struct dirent *e;
    while (!found && d != NULL && (e = readdir(d)) != NULL) {
        char path[300], cmd[256] = "";
        snprintf(path, sizeof(path), "/proc/%s/cmdline", e->d_name);
        FILE *f = fopen(path, "r");
        if (f == NULL)
            continue;
        size_t n = fread(cmd, 1, sizeof(cmd) - 1, f);
        fclose(f);
        size_t l0 = strlen(argv0);
        found = n > l0 && strcmp(cmd, argv0) == 0 && strcmp(cmd + l0 + 1, arg1) == 0;
    }
    if (d != NULL)
        closedir(d);
    return found;
}

static void test_sigint_stops_foreground_job(void **state)
{
    (void)state;
    char arg[32];
    snprintf(arg, sizeof(arg), "%d.5", 100 + (int)(getpid() % 800));
    const char *id = create(&unix_t, NULL);
    xd_ws *ws = attach(&unix_t, id, "");
    expect_connected(ws, id, "pty");
    char line[128];
    snprintf(line, sizeof(line), "sleep %s\n", arg);
    type_line(ws, line);
    for (int i = 0; i < WAIT_MS / 20 && !process_running("sleep", arg); i++)
        nap_ms(20);
    assert_true(process_running("sleep", arg));
    send_json(ws, "{\"type\":\"signal\",\"signal\":\"SIGINT\"}");
    type_line(ws, "echo rc=$?\n");
    assert_non_null(xd_ws_wait_output(ws, "rc=130", WAIT_MS));
    type_line(ws, "echo alive-$((3*3))\n");
    assert_non_null(xd_ws_wait_output(ws, "alive-9", WAIT_MS));
    xd_ws_close(ws);
    delete_session(id, 200);
}

static void test_pipe_mode_separates_stderr(void **state)
{
    (void)state;
    const char *id = create(&unix_t, "{\"command\":\"read -r x; echo out-$x; echo err-$x >&2\"}");
    xd_ws *ws = attach(&unix_t, id, "?pty=0");
    expect_connected(ws, id, "pipe");
    send_json(ws, "{\"type\":\"resize\",\"cols\":100,\"rows\":30}"); /* ignored without a pty */
    type_line(ws, "v\n");
    char out[64] = "", err[64] = "";
    int exit_code = -1000;
    for (;;) {
        xd_ws_msg m;
        assert_true(xd_ws_next(ws, &m, WAIT_MS));
        if (m.opcode == 2 && m.data[0] == 1)
            strncat(out, (const char *)m.data + 1, m.len - 1);
        else if (m.opcode == 2 && m.data[0] == 2)
            strncat(err, (const char *)m.data + 1, m.len - 1);
        else if (m.opcode == 1) {
            cJSON *j = moat_json_parse((const char *)m.data, m.len, MOAT_JSON_NUL_REJECT);
            assert_string_equal(moat_json_str(j, "type", NULL), "exit");
            exit_code = (int)xd_json_i64(j, "exit_code");
            cJSON_Delete(j);
        } else {
            assert_int_equal(m.opcode, 8);
            assert_int_equal(m.close_code, 1000);
            xd_ws_msg_free(&m);
            break;
        }
        xd_ws_msg_free(&m);
    }
    assert_string_equal(out, "out-v\n");
    assert_string_equal(err, "err-v\n");
    assert_int_equal(exit_code, 0);
    xd_ws_close(ws);
    delete_session(id, 200);
}

/* moat's close_stdin: in pipe mode the pipe closes once what was sent is written, so wc sees
 * EOF while the shell goes on; later stdin is refused. In pty mode it is ^D. */
static void test_close_stdin(void **state)
{
    (void)state;
    const char *id = create(&unix_t, "{\"command\":\"wc -l; while :; do sleep 1; done\"}");
    xd_ws *ws = attach(&unix_t, id, "?pty=0");
    expect_connected(ws, id, "pipe");
    type_line(ws, "a\nb\n");
    send_json(ws, "{\"type\":\"close_stdin\"}");
    send_json(ws, "{\"type\":\"close_stdin\"}"); /* a second one changes nothing */
    type_line(ws, "c\n");
    assert_non_null(xd_ws_wait_output(ws, "2\n", WAIT_MS));
    expect_type(ws, "error", "INVALID_FRAME");
    send_json(ws, "{\"type\":\"signal\",\"signal\":\"SIGKILL\"}");
    cJSON *j = next_json(ws);
    assert_string_equal(moat_json_str(j, "type", NULL), "exit");
    cJSON_Delete(j);
    assert_int_equal(expect_close(ws, NULL, 0), 1000);
    xd_ws_close(ws);
    delete_session(id, 200);

    id = create(&unix_t, "{\"command\":\"wc -l\"}");
    ws = attach(&unix_t, id, "?pty=1");
    expect_connected(ws, id, "pty");
    type_line(ws, "a\nb\n");
    send_json(ws, "{\"type\":\"close_stdin\"}");
    assert_non_null(xd_ws_wait_output(ws, "2\r\n", WAIT_MS));
    j = next_json(ws);
    assert_string_equal(moat_json_str(j, "type", NULL), "exit");
    assert_int_equal(xd_json_i64(j, "exit_code"), 0);
    cJSON_Delete(j);
    xd_ws_close(ws);
    delete_session(id, 200);
}

/* The replay frame: 0x03, the big-endian offset of its first byte, the bytes. */
static void expect_replay(xd_ws *ws, uint64_t offset, const char *bytes, size_t len)
{
    xd_ws_msg m;
    assert_true(xd_ws_next(ws, &m, WAIT_MS));
    assert_int_equal(m.opcode, 2);
    assert_true(m.len == 9 + len);
    assert_int_equal(m.data[0], 0x03);
    uint64_t off = 0;
    for (int i = 0; i < 8; i++)
        off = off << 8 | m.data[1 + i];
    assert_true(off == offset);
    if (bytes != NULL)
        assert_memory_equal(m.data + 9, bytes, len);
    xd_ws_msg_free(&m);
}

static void test_replay_since(void **state)
{
    (void)state;
    const char *id = create(&unix_t, NULL);
    xd_ws *ws = attach(&unix_t, id, "?pty=0");
    expect_connected(ws, id, "pipe");
    type_line(ws, "echo one\n");
    assert_non_null(xd_ws_wait_output(ws, "one\n", WAIT_MS));
    xd_ws_close(ws);

    ws = attach(&unix_t, id, "?since=1");
    expect_replay(ws, 1, "ne\n", 3);
    expect_connected(ws, id, "pipe"); /* the mode is the session's, whatever the query says */
    /* More than the 1 MiB ring: since=0 is clamped to its oldest byte. */
    type_line(ws, "head -c 1100000 /dev/zero | tr '\\0' a; echo; echo done\n");
    assert_non_null(xd_ws_wait_output(ws, "done\n", WAIT_MS));
    xd_ws_close(ws);
    cJSON *st = status_of(id, 200);
    int64_t total = xd_json_i64(st, "output_offset");
    cJSON_Delete(st);
    assert_int_equal(total, 4 + 1100000 + 1 + 5);
    ws = attach(&unix_t, id, "?since=0");
    expect_replay(ws, (uint64_t)total - (1u << 20), NULL, 1u << 20);
    expect_connected(ws, id, "pipe");
    xd_ws_close(ws);
    /* since past the end, or not a number: nothing to replay. */
    ws = attach(&unix_t, id, "?since=99999999");
    expect_connected(ws, id, "pipe");
    xd_ws_close(ws);
    delete_session(id, 200);
}

static void test_conflict_and_takeover(void **state)
{
    (void)state;
    const char *id = create(&unix_t, NULL);
    xd_ws *first = attach(&unix_t, id, "");
    expect_connected(first, id, "pty");
    char path[128], *body = NULL;
    long status;
    snprintf(path, sizeof(path), "/pty/%s/ws", id);
    assert_null(xd_ws_open(&tcp_t, path, &status, &body));
    assert_int_equal(status, 409);
    assert_non_null(strstr(body, "\"code\":\"ALREADY_CONNECTED\""));
    free(body);
    xd_ws *second = attach(&tcp_t, id, "?takeover=1");
    char reason[64];
    assert_int_equal(expect_close(first, reason, sizeof(reason)), 4001);
    assert_string_equal(reason, "TAKEN_OVER");
    xd_ws_close(first);
    expect_connected(second, id, "pty");
    type_line(second, "echo taken-$((5*5))\n");
    assert_non_null(xd_ws_wait_output(second, "taken-25", WAIT_MS));
    xd_ws_close(second);
    /* The client's end frees the session for the next one. */
    xd_ws *third = attach(&unix_t, id, "");
    expect_connected(third, id, "pty");
    xd_ws_close(third);
    delete_session(id, 200);
}

/* Each malformed frame closes the connection with its RFC code; the session survives. */
static void test_malformed_frames(void **state)
{
    (void)state;
    static const struct {
        const char *name;
        uint8_t bytes[16];
        size_t len;
        uint16_t code;
    } cases[] = {
        {"unmasked", {0x82, 0x02, 0x00, 'x'}, 4, 1002},
        {"reserved opcode", {0x83, 0x80, 1, 2, 3, 4}, 6, 1002},
        {"invalid UTF-8 text", {0x81, 0x82, 0, 0, 0, 0, 0xc3, 0x28}, 8, 1007},
        {"declares 2^40 bytes", {0x82, 0xff, 0, 0, 1, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5}, 15, 1009},
        /* wslay's frame parser rejects it itself; its close carries no code. */
        {"fragmented ping", {0x09, 0x80, 1, 2, 3, 4}, 6, 0},
    };
    const char *id = create(&unix_t, NULL);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        xd_ws *ws = attach(&unix_t, id, "");
        expect_connected(ws, id, "pty");
        assert_true(xd_ws_send_raw(ws, cases[i].bytes, cases[i].len));
        uint16_t code = expect_close(ws, NULL, 0);
        if (code != cases[i].code)
            fail_msg("%s: close %u, want %u", cases[i].name, code, cases[i].code);
        xd_ws_close(ws);
    }
    xd_ws *ws = attach(&unix_t, id, "");
    expect_connected(ws, id, "pty");
    type_line(ws, "echo survived-$((4*4))\n");
    assert_non_null(xd_ws_wait_output(ws, "survived-16", WAIT_MS));
    xd_ws_close(ws);
    delete_session(id, 200);
}

static void test_delete_kills(void **state)
{
    (void)state;
    char arg[32];
    snprintf(arg, sizeof(arg), "%d.25", 1000 + (int)(getpid() % 800));
    char body[128];
    snprintf(body, sizeof(body), "{\"command\":\"sleep %s\"}", arg);
    const char *id = create(&unix_t, body);
    xd_ws *ws = attach(&unix_t, id, "");
    expect_connected(ws, id, "pty");
    for (int i = 0; i < WAIT_MS / 20 && !process_running("sleep", arg); i++)
        nap_ms(20);
    assert_true(process_running("sleep", arg));
    delete_session(id, 200);
    cJSON *j = next_json(ws);
    assert_string_equal(moat_json_str(j, "type", NULL), "exit");
    assert_int_equal(xd_json_i64(j, "exit_code"), -1);
    cJSON_Delete(j);
    assert_int_equal(expect_close(ws, NULL, 0), 1000);
    xd_ws_close(ws);
    for (int i = 0; i < WAIT_MS / 20 && process_running("sleep", arg); i++)
        nap_ms(20);
    assert_false(process_running("sleep", arg));
    status_of(id, 404);
    delete_session(id, 404);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shell_over_both_transports),
        cmocka_unit_test(test_resize_and_term),
        cmocka_unit_test(test_sigint_stops_foreground_job),
        cmocka_unit_test(test_pipe_mode_separates_stderr),
        cmocka_unit_test(test_close_stdin),
        cmocka_unit_test(test_replay_since),
        cmocka_unit_test(test_conflict_and_takeover),
        cmocka_unit_test(test_malformed_frames),
        cmocka_unit_test(test_delete_kills),
    };
    return moat_run_group_tests("test_execd_pty_session", tests, pty_fixture_setup,
                                pty_fixture_teardown);
}
