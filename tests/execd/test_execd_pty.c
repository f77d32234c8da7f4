/* Integration tests of moat-execd's PTY sessions (OpenSandbox's /pty API): the real binary,
 * REST over libcurl and the WebSocket with libwslay's client side. Waits are generous bounds
 * against a hang, never a measure. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include "moat_test.h"

#include "xd_ws_client.h"

#include <curl/curl.h>
#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define WAIT_MS 30000

static xd_proc xp;
static xd_target unix_t, tcp_t;
static const char token[] = "pty-test-token";

static void nap_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* POST /pty; returns the session id (static). */
static const char *create(const xd_target *t, const char *body)
{
    static char id[64];
    xd_resp r = xd_http(t, "POST", "/pty", body, "Content-Type: application/json");
    assert_int_equal(r.status, 201);
    cJSON *j = xd_json(&r);
    assert_non_null(j);
    const char *sid = moat_json_str(j, "session_id", NULL);
    assert_non_null(sid);
    assert_int_equal(strlen(sid), 36);
    snprintf(id, sizeof(id), "%s", sid);
    cJSON_Delete(j);
    xd_resp_free(&r);
    return id;
}

/* A client that just left may still count as attached (409) until execd has seen it go. */
static xd_ws *attach(const xd_target *t, const char *id, const char *query)
{
    char path[256];
    snprintf(path, sizeof(path), "/pty/%s/ws%s", id, query);
    long status = 409;
    xd_ws *ws = NULL;
    for (int i = 0; i < WAIT_MS / 20 && status == 409; i++)
        if ((ws = xd_ws_open(t, path, &status, NULL)) == NULL && status == 409)
            nap_ms(20);
    assert_int_equal(status, 101);
    assert_non_null(ws);
    return ws;
}

/* The next text message, parsed; binary output before it is skipped. */
static cJSON *next_json(xd_ws *ws)
{
    for (;;) {
        xd_ws_msg m;
        assert_true(xd_ws_next(ws, &m, WAIT_MS));
        if (m.opcode == 1) {
            cJSON *j = moat_json_parse((const char *)m.data, m.len, MOAT_JSON_NUL_REJECT);
            xd_ws_msg_free(&m);
            assert_non_null(j);
            return j;
        }
        assert_int_equal(m.opcode, 2);
        xd_ws_msg_free(&m);
    }
}

static void expect_type(xd_ws *ws, const char *type, const char *code)
{
    cJSON *j = next_json(ws);
    assert_string_equal(moat_json_str(j, "type", NULL), type);
    if (code != NULL)
        assert_string_equal(moat_json_str(j, "code", NULL), code);
    cJSON_Delete(j);
}

static void expect_connected(xd_ws *ws, const char *id, const char *mode)
{
    cJSON *j = next_json(ws);
    assert_string_equal(moat_json_str(j, "type", NULL), "connected");
    assert_string_equal(moat_json_str(j, "session_id", NULL), id);
    assert_string_equal(moat_json_str(j, "mode", NULL), mode);
    cJSON_Delete(j);
}

/* The close frame that ends the connection, skipping messages before it. */
static uint16_t expect_close(xd_ws *ws, char *reason, size_t reason_len)
{
    for (;;) {
        xd_ws_msg m;
        assert_true(xd_ws_next(ws, &m, WAIT_MS));
        if (m.opcode == 8) {
            if (reason != NULL)
                snprintf(reason, reason_len, "%.*s", (int)(m.len > 2 ? m.len - 2 : 0),
                         (const char *)m.data + 2);
            uint16_t code = m.close_code;
            xd_ws_msg_free(&m);
            return code;
        }
        xd_ws_msg_free(&m);
    }
}

static void type_line(xd_ws *ws, const char *line)
{
    size_t n = strlen(line);
    char *frame = malloc(n + 1);
    frame[0] = 0x00;
    memcpy(frame + 1, line, n);
    assert_true(xd_ws_send(ws, 2, frame, n + 1));
    free(frame);
}

static void send_json(xd_ws *ws, const char *json)
{
    assert_true(xd_ws_send(ws, 1, json, strlen(json)));
}

static cJSON *status_of(const char *id, long want)
{
    char path[128];
    snprintf(path, sizeof(path), "/pty/%s", id);
    xd_resp r = xd_http(&unix_t, "GET", path, NULL, NULL);
    assert_int_equal(r.status, want);
    cJSON *j = want == 200 ? xd_json(&r) : NULL;
    xd_resp_free(&r);
    return j;
}

static void delete_session(const char *id, long want)
{
    char path[128];
    snprintf(path, sizeof(path), "/pty/%.64s", id);
    xd_resp r = xd_http(&unix_t, "DELETE", path, NULL, NULL);
    assert_int_equal(r.status, want);
    if (want == 404)
        assert_string_equal(xd_error_code(&r), "CONTEXT_NOT_FOUND");
    xd_resp_free(&r);
}

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

typedef struct sender {
    xd_ws *ws;
    size_t total;
    _Atomic size_t sent;
    bool ok;
} sender;

static void *send_stdin(void *arg)
{
    sender *sd = arg;
    static uint8_t frame[1 + 64 * 1024];
    memset(frame, 'x', sizeof(frame));
    frame[0] = 0x00;
    sd->ok = true;
    while (sd->ok && sd->sent < sd->total) {
        sd->ok = xd_ws_send(sd->ws, 2, frame, sizeof(frame));
        sd->sent += sizeof(frame) - 1;
    }
    return NULL;
}

/* Waits until a sender makes no progress for a while (it is held), and checks that execd's RSS
 * stayed within 16 MiB of rss_before meanwhile; false when RSS is not meaningful here. */
static bool wait_held(const _Atomic size_t *sent, size_t total, long rss_before)
{
    size_t last = (size_t)-1;
    long rss_max = 0;
    for (int still = 0; still < 20 && *sent < total;) {
        nap_ms(50);
        long rss = xd_rss_kb(xp.pid);
        rss_max = rss > rss_max ? rss : rss_max;
        still = *sent == last ? still + 1 : 0;
        last = *sent;
    }
    assert_true(*sent < total);
    bool rss_checked = !xd_wrapped() && MOAT_TEST_RSS_MEANINGFUL;
    if (rss_checked)
        assert_true(rss_max - rss_before < 16 * 1024);
    return rss_checked;
}

/* 64 MiB of stdin to a process that does not read it yet: execd stops reading the socket
 * (the client's send blocks) and its memory stays within a bound far below the stdin's. */
static void test_stdin_back_pressure(void **state)
{
    (void)state;
    char go[160], body[512];
    snprintf(go, sizeof(go), "%s/go", xp.dir);
    snprintf(body, sizeof(body),
             "{\"command\":\"while [ ! -e %s ]; do sleep 0.05; done; head -c 67108864 | wc -c\"}",
             go);
    const char *id = create(&unix_t, body);
    xd_ws *ws = attach(&unix_t, id, "?pty=0");
    expect_connected(ws, id, "pipe");
    long rss_before = xd_rss_kb(xp.pid);
    sender sd = {.ws = ws, .total = 64u << 20};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, send_stdin, &sd), 0);
    /* the sender is held */
    bool rss_checked = wait_held(&sd.sent, sd.total, rss_before);
    if (!rss_checked)
        moat_skip_note("execd's RSS bound not checked under valgrind or ASan");
    FILE *f = fopen(go, "w");
    assert_non_null(f);
    fclose(f);
    pthread_join(t, NULL);
    assert_true(sd.ok);
    char want[32];
    snprintf(want, sizeof(want), "%zu\n", sd.sent);
    assert_non_null(xd_ws_wait_output(ws, want, WAIT_MS * 4));
    if (rss_checked)
        assert_true(xd_rss_kb(xp.pid) - rss_before < 16 * 1024);
    xd_ws_close(ws);
    unlink(go);
    delete_session(id, 200);
}

/* ---- stdin as an upload: POST /pty/{id}/stdin ---- */

static int connect_execd(void)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    assert_true(strlen(unix_t.unix_path) < sizeof(sa.sun_path));
    memcpy(sa.sun_path, unix_t.unix_path, strlen(unix_t.unix_path));
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    return fd;
}

/* An upload that holds the pipe: execd's 100 Continue says it was lent (an uploader that
 * just went may still hold it, so a refusal is retried). extra_headers end with CRLF. */
static int upload_hold(const char *path, const char *extra_headers)
{
    for (int i = 0; i < WAIT_MS / 20; i++) {
        int fd = connect_execd();
        char head[512], got[512] = "";
        int n = snprintf(head, sizeof(head),
                         "POST %s HTTP/1.1\r\nHost: localhost\r\nX-EXECD-ACCESS-TOKEN: %s\r\n"
                         "%sExpect: 100-continue\r\n\r\n",
                         path, token, extra_headers);
        assert_int_equal(send(fd, head, (size_t)n, MSG_NOSIGNAL), n);
        struct timeval tv = {WAIT_MS / 1000, 0};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        ssize_t k = recv(fd, got, sizeof(got) - 1, 0);
        if (k > 0 && strstr(got, "100 Continue") != NULL)
            return fd;
        assert_non_null(strstr(got, "ALREADY_CONNECTED"));
        close(fd);
        nap_ms(20);
    }
    fail_msg("no upload got the pipe");
    return -1;
}

static bool send_all(int fd, const void *data, size_t len)
{
    const char *p = data;
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n <= 0)
            return false;
        p += n;
        len -= (size_t)n;
    }
    return true;
}

/* One chunk of the body. */
static bool send_chunk(int fd, const void *data, size_t len)
{
    char size[32];
    int n = snprintf(size, sizeof(size), "%zx\r\n", len);
    return send_all(fd, size, (size_t)n) && send_all(fd, data, len) && send_all(fd, "\r\n", 2);
}

/* What execd answered on a raw upload connection (its status line and JSON code), reading
 * until the answer's end; the interim 100 Continue is skipped. */
static long upload_answer(int fd, char *code, size_t code_len)
{
    char buf[4096];
    size_t have = 0;
    struct timeval tv = {WAIT_MS / 1000, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    for (;;) {
        ssize_t n = recv(fd, buf + have, sizeof(buf) - 1 - have, 0);
        if (n <= 0)
            break;
        have += (size_t)n;
        buf[have] = '\0';
        const char *final =
            strstr(buf, "100 Continue\r\n\r\n") ? strstr(buf, "\r\n\r\nHTTP/") : buf;
        if (final != NULL && final != buf)
            final += 4;
        if (final != NULL && strstr(final, "}") != NULL)
            break;
    }
    buf[have] = '\0';
    const char *st = strstr(buf, "HTTP/1.1 100") == buf ? strstr(buf + 1, "HTTP/1.1 ") : buf;
    long status = st != NULL && strncmp(st, "HTTP/1.1 ", 9) == 0 ? strtol(st + 9, NULL, 10) : 0;
    const char *c = strstr(buf, "\"code\":\"");
    snprintf(code, code_len, "%.*s", c != NULL ? (int)strcspn(c + 8, "\"") : 0,
             c != NULL ? c + 8 : "");
    return status;
}

static long upload(const char *id, const char *body, char *code, size_t code_len)
{
    char path[128];
    snprintf(path, sizeof(path), "/pty/%s/stdin", id);
    xd_resp r = xd_http_body(&unix_t, "POST", path, body, strlen(body), NULL);
    long status = r.status;
    snprintf(code, code_len, "%s", status == 200 ? "" : xd_error_code(&r));
    xd_resp_free(&r);
    return status;
}

/* The body goes into the process's stdin as it comes; its end is the stdin's end. */
static void test_stdin_upload(void **state)
{
    (void)state;
    const char *id = create(&unix_t, "{\"command\":\"wc -l\"}");
    char sid[64], code[64];
    snprintf(sid, sizeof(sid), "%s", id);
    xd_ws *ws = attach(&unix_t, sid, "?pty=0");
    expect_connected(ws, sid, "pipe");
    assert_int_equal(upload(sid, "a\nb\n", code, sizeof(code)), 200);
    assert_non_null(xd_ws_wait_output(ws, "2\n", WAIT_MS));
    cJSON *j = next_json(ws);
    assert_string_equal(moat_json_str(j, "type", NULL), "exit");
    assert_int_equal(xd_json_i64(j, "exit_code"), 0);
    cJSON_Delete(j);
    xd_ws_close(ws);
    delete_session(sid, 200);

    /* Chunks larger than execd's receive buffer, as moatd's curl sends them (256 KiB). */
    snprintf(sid, sizeof(sid), "%s", create(&unix_t, "{\"command\":\"wc -c\"}"));
    ws = attach(&unix_t, sid, "?pty=0");
    expect_connected(ws, sid, "pipe");
    char path[160];
    snprintf(path, sizeof(path), "/pty/%s/stdin", sid);
    int fd = upload_hold(path, "Transfer-Encoding: chunked\r\n");
    size_t big = 256u * 1024;
    char *chunk = malloc(big);
    assert_non_null(chunk);
    memset(chunk, 'q', big);
    for (int i = 0; i < 4; i++)
        assert_true(send_chunk(fd, chunk, big));
    free(chunk);
    assert_true(send_all(fd, "0\r\n\r\n", 5));
    assert_int_equal(upload_answer(fd, code, sizeof(code)), 200);
    close(fd);
    assert_non_null(xd_ws_wait_output(ws, "1048576\n", WAIT_MS));
    /* A finished command's stdin takes no upload. */
    assert_int_equal(upload(sid, "c\n", code, sizeof(code)), 409);
    assert_string_equal(code, "STDIN_CLOSED");
    xd_ws_close(ws);
    delete_session(sid, 200);
}

/* Every way to get the endpoint wrong: unknown or malformed ids, a session not started, a
 * terminal, a second uploader, stdin over the WebSocket while an upload holds it, uploaders
 * that stop mid-body (the pipe goes back and the next one goes on where it stopped), a body
 * declaring more than it sends, broken chunk framing, and an upload after close_stdin. */
static void test_stdin_upload_hostile(void **state)
{
    (void)state;
    char code[64], path[160];
    assert_int_equal(upload("00000000-0000-0000-0000-000000000000", "x", code, sizeof(code)), 404);
    assert_string_equal(code, "CONTEXT_NOT_FOUND");
    assert_int_equal(upload("a-much-too-long-id-that-cannot-be-any-session-id-at-all-xxxx", "x",
                            code, sizeof(code)),
                     404);
    xd_resp r =
        xd_http(&unix_t, "GET", "/pty/00000000-0000-0000-0000-000000000000/stdin", NULL, NULL);
    assert_int_equal(r.status, 404);
    xd_resp_free(&r);

    /* cat: what reaches stdin comes back as output, so each step can wait for its bytes */
    char sid[64];
    snprintf(sid, sizeof(sid), "%s", create(&unix_t, "{\"command\":\"cat\"}"));
    assert_int_equal(upload(sid, "x", code, sizeof(code)), 409);
    assert_string_equal(code, "NOT_STARTED");
    char tty_id[64];
    snprintf(tty_id, sizeof(tty_id), "%s", create(&unix_t, "{\"command\":\"cat\"}"));
    xd_ws *tty = attach(&unix_t, tty_id, "?pty=1");
    expect_connected(tty, tty_id, "pty");
    assert_int_equal(upload(tty_id, "x", code, sizeof(code)), 409);
    assert_string_equal(code, "NOT_PIPE_MODE");
    xd_ws_close(tty);
    delete_session(tty_id, 200);

    xd_ws *ws = attach(&unix_t, sid, "?pty=0");
    expect_connected(ws, sid, "pipe");
    snprintf(path, sizeof(path), "/pty/%s/stdin", sid);
    /* The first uploader sends 5 bytes and stalls mid-body; a second is refused. */
    int first = upload_hold(path, "Transfer-Encoding: chunked\r\n");
    assert_true(send_chunk(first, "12345", 5));
    assert_non_null(xd_ws_wait_output(ws, "12345", WAIT_MS));
    assert_int_equal(upload(sid, "y", code, sizeof(code)), 409);
    assert_string_equal(code, "ALREADY_CONNECTED");
    type_line(ws, "z");
    expect_type(ws, "error", "STDIN_WRITE_FAILED");
    /* It goes without ending its body: the pipe goes back, stdin stays open. */
    close(first);
    /* A body that declares far more than it sends, then goes. */
    int liar = upload_hold(path, "Content-Length: 4611686018427387904\r\n");
    assert_true(send_all(liar, "678", 3));
    assert_non_null(xd_ws_wait_output(ws, "678", WAIT_MS));
    close(liar);
    /* Broken chunk framing: execd drops the connection, and the pipe goes back again. */
    int bad = upload_hold(path, "Transfer-Encoding: chunked\r\n");
    assert_true(send_all(bad, "zz-not-hex\r\n", 12));
    upload_answer(bad, code, sizeof(code));
    close(bad);
    /* The last one ends its body: the process reads EOF after every byte that got in. */
    long status = 409;
    for (int i = 0; i < WAIT_MS / 20 && status == 409; i++) {
        status = upload(sid, "9", code, sizeof(code));
        if (status == 409)
            nap_ms(20);
    }
    assert_int_equal(status, 200);
    /* cat reads EOF after the last byte and exits */
    assert_non_null(xd_ws_wait_output(ws, "9", WAIT_MS));
    cJSON *j = next_json(ws);
    assert_string_equal(moat_json_str(j, "type", NULL), "exit");
    assert_int_equal(xd_json_i64(j, "exit_code"), 0);
    cJSON_Delete(j);
    /* A later upload and later WebSocket stdin find stdin closed. */
    assert_int_equal(upload(sid, "x", code, sizeof(code)), 409);
    assert_string_equal(code, "STDIN_CLOSED");
    xd_ws_close(ws);
    delete_session(sid, 200);

    /* close_stdin over the WebSocket first: no upload gets the pipe. */
    snprintf(sid, sizeof(sid), "%s", create(&unix_t, "{\"command\":\"sleep 60\"}"));
    ws = attach(&unix_t, sid, "?pty=0");
    expect_connected(ws, sid, "pipe");
    send_json(ws, "{\"type\":\"close_stdin\"}");
    status = 200;
    for (int i = 0; i < WAIT_MS / 20 && status != 409; i++) {
        status = upload(sid, "x", code, sizeof(code));
        if (status != 409)
            nap_ms(20);
    }
    assert_int_equal(status, 409);
    assert_string_equal(code, "STDIN_CLOSED");
    xd_ws_close(ws);
    delete_session(sid, 200);
}

/* ---- the stdin socket (docs/execd.md "Stdin as a descriptor") ---- */

/* Sends line to the stdin socket; the answer's code (static), *pipe the descriptor sent with
 * it (or -1), *conn the connection when it is wanted open (else it is closed). */
static const char *lend_ask(const char *line, size_t len, int *pipe_fd, int *conn)
{
    static char code[64];
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof(a.sun_path), "%.100s.stdin", unix_t.unix_path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    (void)send(fd, line, len, MSG_NOSIGNAL);
    struct pollfd p = {fd, POLLIN, 0};
    assert_int_equal(poll(&p, 1, WAIT_MS), 1);
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } ctl;
    struct iovec iov = {code, sizeof(code) - 1};
    struct msghdr m = {
        .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf, .msg_controllen = sizeof(ctl)};
    ssize_t n = recvmsg(fd, &m, MSG_CMSG_CLOEXEC);
    assert_true(n > 0);
    code[n] = '\0';
    char *nl = strchr(code, '\n');
    assert_non_null(nl);
    *nl = '\0';
    *pipe_fd = -1;
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    if (c != NULL && c->cmsg_type == SCM_RIGHTS)
        memcpy(pipe_fd, CMSG_DATA(c), sizeof(int));
    if (conn != NULL)
        *conn = fd;
    else
        close(fd);
    return code;
}

/* "<id> <token>\n", as moatd sends it. */
static const char *lend_line(const char *id)
{
    static char line[160];
    snprintf(line, sizeof(line), "%s %s\n", id, token);
    return line;
}

/* The request refused, nothing lent. */
static void lend_refused(const char *line, size_t len, const char *code)
{
    int fd;
    assert_string_equal(lend_ask(line, len, &fd, NULL), code);
    assert_int_equal(fd, -1);
}

/* The pipe lent over the stdin socket: after WebSocket stdin, in order; one borrower at a
 * time (the upload too); a borrower that goes without ending stdin gives the pipe back; 'E'
 * ends stdin; a deleted session ends the loan. Every refusal: a bad, unknown or too long id,
 * a missing or wrong token, a request too long or cut short, a session not started, a
 * terminal (its stdin stays the WebSocket's). */
static void test_stdin_socket(void **state)
{
    (void)state;
    char code[64], too_long[400];
    lend_refused("00000000-0000-0000-0000-000000000000\n", 37, "UNAUTHORIZED");
    lend_refused("00000000-0000-0000-0000-000000000000 nope\n", 42, "UNAUTHORIZED");
    const char *l = lend_line("00000000-0000-0000-0000-000000000000");
    lend_refused(l, strlen(l), "CONTEXT_NOT_FOUND");
    l = lend_line("a-much-too-long-id-that-cannot-be-any-session-id-at-all-xxxx");
    lend_refused(l, strlen(l), "CONTEXT_NOT_FOUND");
    memset(too_long, 'a', sizeof(too_long));
    lend_refused(too_long, sizeof(too_long), "BAD_REQUEST");
    lend_refused("no-newline", 10, "BAD_REQUEST"); /* the socket's end comes first */
    lend_refused("two\nlines\n", 11, "BAD_REQUEST");

    char sid[64], tty_id[64];
    snprintf(sid, sizeof(sid), "%s", create(&unix_t, "{\"command\":\"cat\"}"));
    l = lend_line(sid);
    lend_refused(l, strlen(l), "NOT_STARTED");
    snprintf(tty_id, sizeof(tty_id), "%s", create(&unix_t, "{\"command\":\"cat\"}"));
    xd_ws *tty = attach(&unix_t, tty_id, "?pty=1");
    expect_connected(tty, tty_id, "pty");
    l = lend_line(tty_id);
    lend_refused(l, strlen(l), "NOT_PIPE_MODE");
    xd_ws_close(tty);
    delete_session(tty_id, 200);

    xd_ws *ws = attach(&unix_t, sid, "?pty=0");
    expect_connected(ws, sid, "pipe");
    /* WebSocket stdin sent before the loan reaches the process before the loan's */
    type_line(ws, "1");
    int pipe_fd, conn;
    l = lend_line(sid);
    assert_string_equal(lend_ask(l, strlen(l), &pipe_fd, &conn), "OK");
    struct stat st;
    assert_int_equal(fstat(pipe_fd, &st), 0);
    assert_true(S_ISFIFO(st.st_mode));
    assert_int_equal(write(pipe_fd, "2", 1), 1);
    assert_non_null(xd_ws_wait_output(ws, "12", WAIT_MS));
    /* one writer at a time */
    lend_refused(l, strlen(l), "ALREADY_CONNECTED");
    assert_int_equal(upload(sid, "x", code, sizeof(code)), 409);
    assert_string_equal(code, "ALREADY_CONNECTED");
    /* going without 'E' (a detach) gives the pipe back, stdin open */
    close(pipe_fd);
    close(conn);
    const char *got = "ALREADY_CONNECTED";
    for (int i = 0; i < WAIT_MS / 20 && strcmp(got, "ALREADY_CONNECTED") == 0; i++) {
        got = lend_ask(l, strlen(l), &pipe_fd, &conn);
        if (strcmp(got, "ALREADY_CONNECTED") == 0)
            nap_ms(20);
    }
    assert_string_equal(got, "OK");
    assert_int_equal(write(pipe_fd, "3", 1), 1);
    assert_non_null(xd_ws_wait_output(ws, "3", WAIT_MS));
    /* 'E' and our copy closed: cat reads EOF and exits */
    close(pipe_fd);
    assert_int_equal(send(conn, "E", 1, MSG_NOSIGNAL), 1);
    cJSON *j = next_json(ws);
    assert_string_equal(moat_json_str(j, "type", NULL), "exit");
    assert_int_equal(xd_json_i64(j, "exit_code"), 0);
    cJSON_Delete(j);
    close(conn);
    lend_refused(l, strlen(l), "STDIN_CLOSED");
    xd_ws_close(ws);
    delete_session(sid, 200);

    /* a session deleted while lent ends the loan: execd closes the connection */
    snprintf(sid, sizeof(sid), "%s", create(&unix_t, "{\"command\":\"cat\"}"));
    ws = attach(&unix_t, sid, "?pty=0");
    expect_connected(ws, sid, "pipe");
    l = lend_line(sid);
    assert_string_equal(lend_ask(l, strlen(l), &pipe_fd, &conn), "OK");
    delete_session(sid, 200);
    struct pollfd p = {conn, POLLIN, 0};
    assert_int_equal(poll(&p, 1, WAIT_MS), 1);
    char c;
    assert_int_equal(recv(conn, &c, 1, 0), 0);
    close(conn);
    close(pipe_fd);
    xd_ws_close(ws);
}

typedef struct up_sender {
    int fd;
    size_t total;
    _Atomic size_t sent;
    bool ok;
} up_sender;

static void *send_upload(void *arg)
{
    up_sender *sd = arg;
    static uint8_t chunk[64 * 1024];
    memset(chunk, 'x', sizeof(chunk));
    sd->ok = true;
    while (sd->ok && sd->sent < sd->total) {
        sd->ok = send_chunk(sd->fd, chunk, sizeof(chunk));
        sd->sent += sizeof(chunk);
    }
    sd->ok = sd->ok && send_all(sd->fd, "0\r\n\r\n", 5);
    return NULL;
}

/* 64 MiB uploaded to a process that does not read yet: execd stops reading the upload's
 * socket (the sender is held) with its memory flat; then every byte arrives, and the DELETE
 * of a session ends an upload waiting on it. */
static void test_stdin_upload_back_pressure(void **state)
{
    (void)state;
    char go[160], body[512], path[160];
    snprintf(go, sizeof(go), "%s/upgo", xp.dir);
    snprintf(body, sizeof(body), "{\"command\":\"while [ ! -e %s ]; do sleep 0.05; done; wc -c\"}",
             go);
    char sid[64];
    snprintf(sid, sizeof(sid), "%s", create(&unix_t, body));
    xd_ws *ws = attach(&unix_t, sid, "?pty=0");
    expect_connected(ws, sid, "pipe");
    snprintf(path, sizeof(path), "/pty/%s/stdin", sid);
    long rss_before = xd_rss_kb(xp.pid);
    up_sender sd = {.fd = upload_hold(path, "Transfer-Encoding: chunked\r\n"), .total = 64u << 20};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, send_upload, &sd), 0);
    wait_held(&sd.sent, sd.total, rss_before);
    FILE *f = fopen(go, "w");
    assert_non_null(f);
    fclose(f);
    pthread_join(t, NULL);
    assert_true(sd.ok);
    char code[64];
    assert_int_equal(upload_answer(sd.fd, code, sizeof(code)), 200);
    close(sd.fd);
    char want[32];
    snprintf(want, sizeof(want), "%zu\n", sd.total);
    assert_non_null(xd_ws_wait_output(ws, want, WAIT_MS * 4));
    xd_ws_close(ws);
    unlink(go);
    delete_session(sid, 200);

    /* An upload held by a process that never reads ends when its session is deleted. */
    snprintf(sid, sizeof(sid), "%s", create(&unix_t, "{\"command\":\"sleep 600\"}"));
    ws = attach(&unix_t, sid, "?pty=0");
    expect_connected(ws, sid, "pipe");
    snprintf(path, sizeof(path), "/pty/%s/stdin", sid);
    up_sender held = {.fd = upload_hold(path, "Transfer-Encoding: chunked\r\n"),
                      .total = 64u << 20};
    assert_int_equal(pthread_create(&t, NULL, send_upload, &held), 0);
    wait_held(&held.sent, held.total, xd_rss_kb(xp.pid));
    delete_session(sid, 200);
    /* execd reads (and drops) the rest of the body, then answers */
    pthread_join(t, NULL);
    long st = upload_answer(held.fd, code, sizeof(code));
    assert_true(st == 404 || st == 409);
    close(held.fd);
    xd_ws_close(ws);
}

static void test_bad_requests(void **state)
{
    (void)state;
    xd_resp r = xd_http(&unix_t, "POST", "/pty", "{\"cwd\":5}", NULL);
    assert_int_equal(r.status, 400);
    xd_resp_free(&r);
    r = xd_http(&unix_t, "POST", "/pty", "{\"command\":\"x\\u0000y\"}", NULL);
    assert_int_equal(r.status, 400);
    xd_resp_free(&r);
    const char *id = create(&unix_t, NULL);
    char path[128];
    snprintf(path, sizeof(path), "/pty/%s/ws", id);
    r = xd_http(&unix_t, "GET", path, NULL, NULL); /* not an upgrade */
    assert_int_equal(r.status, 400);
    xd_resp_free(&r);
    long status;
    snprintf(path, sizeof(path), "/pty/%s/ws?term=a%%3Bb", id);
    assert_null(xd_ws_open(&unix_t, path, &status, NULL));
    assert_int_equal(status, 400);
    assert_null(xd_ws_open(&unix_t, "/pty/00000000-0000-0000-0000-000000000000/ws", &status, NULL));
    assert_int_equal(status, 404);
    /* The token guards the WebSocket like every endpoint. */
    xd_target no_token = unix_t;
    no_token.token = NULL;
    snprintf(path, sizeof(path), "/pty/%s/ws", id);
    assert_null(xd_ws_open(&no_token, path, &status, NULL));
    assert_int_equal(status, 401);
    r = xd_http(&no_token, "POST", "/pty", NULL, NULL);
    assert_int_equal(r.status, 401);
    xd_resp_free(&r);
    delete_session(id, 200);

    /* Sessions are bounded (64): one more is 429, a limit the client can act on. */
    char ids[64][40];
    for (int i = 0; i < 64; i++)
        snprintf(ids[i], sizeof(ids[i]), "%s", create(&unix_t, NULL));
    r = xd_http(&unix_t, "POST", "/pty", NULL, NULL);
    assert_int_equal(r.status, 429);
    xd_resp_free(&r);
    for (int i = 0; i < 64; i++)
        delete_session(ids[i], 200);
}

/* Runs a session to its end as a client does: attaches in the mode asked, sends stdin and
 * close_stdin, reads to the close 1000; returns the exit code, the output in out. */
static int run_to_exit(const char *id, bool pipe_mode, const char *in, char *out, size_t out_len)
{
    xd_ws *ws = attach(&unix_t, id, pipe_mode ? "?pty=0" : "?pty=1");
    expect_connected(ws, id, pipe_mode ? "pipe" : "pty");
    if (in != NULL) {
        type_line(ws, in);
        send_json(ws, "{\"type\":\"close_stdin\"}");
    }
    out[0] = '\0';
    int exit_code = -1000;
    for (;;) {
        xd_ws_msg m;
        assert_true(xd_ws_next(ws, &m, WAIT_MS));
        if (m.opcode == 2 && m.len > 0 && m.data[0] == 1) {
            size_t have = strlen(out);
            snprintf(out + have, out_len - have, "%.*s", (int)(m.len - 1),
                     (const char *)m.data + 1);
        } else if (m.opcode == 1) {
            cJSON *j = moat_json_parse((const char *)m.data, m.len, MOAT_JSON_NUL_REJECT);
            assert_string_equal(moat_json_str(j, "type", NULL), "exit");
            exit_code = (int)xd_json_i64(j, "exit_code");
            cJSON_Delete(j);
        } else if (m.opcode == 8) {
            assert_int_equal(m.close_code, 1000);
            xd_ws_msg_free(&m);
            break;
        }
        xd_ws_msg_free(&m);
    }
    xd_ws_close(ws);
    return exit_code;
}

/* Issue 14: a session whose process has ended and whose exit a client has taken no longer
 * counts against the 64 live sessions, so commands run one after another never hit the limit
 * (they did at the 65th, for the idle timeout's 30 minutes). Released sessions still answer
 * GET and a late attach (connected, exit, close) and DELETE; past 256 of them the oldest goes. */
static void test_sequential_sessions_never_fill_the_table(void **state)
{
    (void)state;
    char first[64] = "", id[64] = "", out[256];
    for (int i = 0; i < 200; i++) {
        snprintf(id, sizeof(id), "%s", create(&unix_t, "{\"command\":\"wc -l; exit 4\"}"));
        if (i == 0)
            snprintf(first, sizeof(first), "%s", id);
        assert_int_equal(run_to_exit(id, true, "a\nb\n", out, sizeof(out)), 4);
        assert_string_equal(out, "2\n");
    }
    for (int i = 0; i < 200; i++) {
        snprintf(id, sizeof(id), "%s", create(&unix_t, "{\"command\":\"printf pty-ok; exit 3\"}"));
        assert_int_equal(run_to_exit(id, false, NULL, out, sizeof(out)), 3);
        assert_string_equal(out, "pty-ok");
    }
    cJSON *j = status_of(id, 200);
    assert_false(cJSON_IsTrue(cJSON_GetObjectItem(j, "running")));
    assert_int_equal(xd_json_i64(j, "output_offset"), 6);
    cJSON_Delete(j);
    /* attached again: the exit once more (the ring went with the release), and still no slot */
    assert_int_equal(run_to_exit(id, false, NULL, out, sizeof(out)), 3);
    assert_string_equal(out, "");
    assert_null(status_of(first, 404)); /* the oldest of more than 256 released ones went */
    delete_session(id, 200);
    delete_session(id, 404);
}

/* POST /pty until it is not 429: the slot a client freed comes back once execd's session
 * thread has seen that client go (a bound against a hang, not a measure). */
static const char *create_once_freed(void)
{
    static char id[64];
    for (int i = 0; i < WAIT_MS / 20; i++) {
        xd_resp r = xd_http(&unix_t, "POST", "/pty", NULL, NULL);
        cJSON *j = r.status == 201 ? xd_json(&r) : NULL;
        const char *sid = j != NULL ? moat_json_str(j, "session_id", NULL) : NULL;
        snprintf(id, sizeof(id), "%s", sid != NULL ? sid : "");
        cJSON_Delete(j);
        long status = r.status;
        xd_resp_free(&r);
        if (status != 429) {
            assert_int_equal(status, 201);
            assert_int_equal(strlen(id), 36);
            return id;
        }
        nap_ms(20);
    }
    fail_msg("the freed slot never came back");
    return NULL;
}

/* The limit still holds against a client that keeps sessions open: 64 live ones (running and
 * attached, running with their client gone, or never attached) and the 65th is 429
 * TOO_MANY_SESSIONS; one that ends, or one deleted, lets exactly one more in. */
static void test_held_sessions_keep_the_limit(void **state)
{
    (void)state;
    char ids[64][64];
    xd_ws *held[64] = {NULL};
    for (int i = 0; i < 64; i++) {
        snprintf(ids[i], sizeof(ids[i]), "%s", create(&unix_t, "{\"command\":\"cat\"}"));
        if (i % 3 == 2)
            continue; /* never attached */
        held[i] = attach(&unix_t, ids[i], i % 2 == 0 ? "?pty=0" : "?pty=1");
        expect_connected(held[i], ids[i], i % 2 == 0 ? "pipe" : "pty");
        if (i % 3 == 1) { /* running, its client gone: kept for a reattach */
            xd_ws_close(held[i]);
            held[i] = NULL;
        }
    }
    xd_resp r = xd_http(&unix_t, "POST", "/pty", NULL, NULL);
    assert_int_equal(r.status, 429);
    assert_string_equal(xd_error_code(&r), "TOO_MANY_SESSIONS");
    xd_resp_free(&r);

    /* cat in pipe mode ends with its stdin: its client takes the exit and goes */
    send_json(held[0], "{\"type\":\"close_stdin\"}");
    assert_int_equal(expect_close(held[0], NULL, 0), 1000);
    xd_ws_close(held[0]);
    held[0] = NULL;
    char extra[2][64];
    snprintf(extra[0], sizeof(extra[0]), "%s", create_once_freed());
    r = xd_http(&unix_t, "POST", "/pty", NULL, NULL);
    assert_int_equal(r.status, 429);
    xd_resp_free(&r);
    /* DELETE frees its slot at once */
    delete_session(ids[1], 200);
    snprintf(extra[1], sizeof(extra[1]), "%s", create(&unix_t, NULL));
    r = xd_http(&unix_t, "POST", "/pty", NULL, NULL);
    assert_int_equal(r.status, 429);
    xd_resp_free(&r);

    for (int i = 0; i < 64; i++)
        if (held[i] != NULL)
            xd_ws_close(held[i]);
    for (int i = 0; i < 64; i++)
        if (i != 1)
            delete_session(ids[i], 200);
    delete_session(extra[0], 200);
    delete_session(extra[1], 200);
}

static int setup(void **state)
{
    (void)state;
    curl_global_init(CURL_GLOBAL_ALL);
    if (!xd_start(&xp, (const char *const[]){"--access-token", token, NULL}))
        return -1;
    unix_t = xp.unix_t;
    tcp_t = xp.tcp_t;
    unix_t.token = tcp_t.token = token;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    xd_stop(&xp);
    curl_global_cleanup();
    return 0;
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
        cmocka_unit_test(test_stdin_back_pressure),
        cmocka_unit_test(test_stdin_upload),
        cmocka_unit_test(test_stdin_upload_hostile),
        cmocka_unit_test(test_stdin_upload_back_pressure),
        cmocka_unit_test(test_stdin_socket),
        cmocka_unit_test(test_bad_requests),
        cmocka_unit_test(test_sequential_sessions_never_fill_the_table),
        cmocka_unit_test(test_held_sessions_keep_the_limit),
    };
    return moat_run_group_tests("test_execd_pty", tests, setup, teardown);
}
