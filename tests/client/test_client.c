/* libmoat against a fake moatd: a real Unix/TCP socket served by a thread in
 * this process, speaking frames through moat_wire. */
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

#include "moat_test.h"

#include "client/client.h"
#include "moat/v1/exec.pb-c.h"
#include "moat/v1/files.pb-c.h"
#include "moat/v1/sandbox.pb-c.h"
#include "wire/wire.h"

#include "fake_server.h"

#define WINDOW     FAKE_WINDOW
#define OUT_CHUNKS 12u /* 12 × 16 KiB = 3 windows: the server needs updates */
#define CHUNK      (16u * 1024u)

static void send_event(fake *s, uint32_t stream, moat_exec_event *ev)
{
    static uint8_t buf[CHUNK + 256];
    size_t n;
    if (moat_exec_event_encode(ev, buf, sizeof buf, &n) != MOAT_OK)
        s->failed = true;
    else
        fake_send_message(s, stream, buf, n);
}

static void run_command(fake *s, uint32_t stream)
{
    static moat_exec_event ev;
    static uint8_t data[CHUNK];
    memset(&ev, 0, sizeof ev);
    ev.sequence = 1;
    ev.kind = MOAT_EXEC_INIT;
    ev.execution_id = moat_slice_str("exec-1");
    send_event(s, stream, &ev);
    for (uint32_t i = 0; i < OUT_CHUNKS; i++) {
        for (size_t j = 0; j < CHUNK; j++)
            data[j] = (uint8_t)(i * 7 + j);
        memset(&ev, 0, sizeof ev);
        ev.sequence = 2 + i;
        ev.kind = MOAT_EXEC_OUTPUT;
        ev.stream = i % 2 ? MOAT_EXEC_STDERR : MOAT_EXEC_STDOUT;
        ev.data = (moat_slice){data, CHUNK};
        send_event(s, stream, &ev);
    }
    memset(&ev, 0, sizeof ev);
    ev.sequence = 2 + OUT_CHUNKS;
    ev.kind = MOAT_EXEC_EXIT;
    ev.exit_known = true;
    ev.exit_code = 3;
    send_event(s, stream, &ev);
    fake_send_end(s, stream, MOAT_CODE_OK, "", "", NULL);
}

/* What the fake's Files/Write saw, and the file it keeps (one, whatever the path). */
#define WRITES_MAX 64
typedef struct write_seen {
    uint64_t offset;
    size_t len;
    uint32_t mode;
    char path[64];
    char session[64];
} write_seen;
static write_seen writes[WRITES_MAX];
static size_t nwrites;
static uint8_t wfile[1 << 20];
static size_t wfile_len;
static bool wfile_exists;

static void files_write(fake *s, uint32_t id, moat_slice request)
{
    Moat__V1__WriteRequest *r = moat__v1__write_request__unpack(NULL, request.len, request.data);
    if (r == NULL || nwrites == WRITES_MAX || r->offset + r->data.len > sizeof wfile) {
        s->failed = true;
        fake_send_end(s, id, MOAT_CODE_INVALID_ARGUMENT, "bad request", "", NULL);
        moat__v1__write_request__free_unpacked(r, NULL);
        return;
    }
    write_seen *w = &writes[nwrites++];
    w->offset = r->offset;
    w->len = r->data.len;
    w->mode = r->mode;
    snprintf(w->path, sizeof w->path, "%s", r->path);
    snprintf(w->session, sizeof w->session, "%s", r->session_id);
    if (r->offset > 0 && !wfile_exists) {
        fake_send_end(s, id, MOAT_CODE_NOT_FOUND, "file not found", "execd_api_error", NULL);
    } else {
        if (r->offset == 0)
            wfile_len = 0;
        wfile_exists = true;
        if (r->data.len > 0)
            memcpy(wfile + r->offset, r->data.data, r->data.len);
        if (r->offset + r->data.len > wfile_len)
            wfile_len = r->offset + r->data.len;
        Moat__V1__WriteResponse resp = MOAT__V1__WRITE_RESPONSE__INIT;
        resp.written = r->data.len;
        uint8_t buf[32];
        fake_send_message(s, id, buf, moat__v1__write_response__pack(&resp, buf));
        fake_send_end(s, id, MOAT_CODE_OK, "", "", NULL);
    }
    moat__v1__write_request__free_unpacked(r, NULL);
}

static void command_status(fake *s, uint32_t id)
{
    Moat__V1__ExitCode exit_code = MOAT__V1__EXIT_CODE__INIT;
    exit_code.value_case = MOAT__V1__EXIT_CODE__VALUE_UNKNOWN_REASON;
    exit_code.unknown_reason = "killed by a signal";
    Moat__V1__CommandStatus cs = MOAT__V1__COMMAND_STATUS__INIT;
    cs.execution_id = "ex-1";
    cs.command = "sleep 9";
    cs.exit_code = &exit_code;
    cs.error = "signal: killed";
    cs.started_at_ms = 1718000000000;
    cs.finished_at_ms = 1718000001000;
    fake_reply(s, id, &cs.base);
}

static void list_sessions(fake *s, uint32_t id)
{
    Moat__V1__SandboxSession sessions[3], *items[3];
    static const char *ids[] = {"s-1", "s-2", "s-3"};
    for (size_t i = 0; i < 3; i++) {
        moat__v1__sandbox_session__init(&sessions[i]);
        sessions[i].session_id = (char *)ids[i];
        sessions[i].status = MOAT__V1__SESSION_STATUS__RUNNING;
        sessions[i].expires_at_ms = 1718000000000 + (int64_t)i;
        items[i] = &sessions[i];
    }
    Moat__V1__ListSessionsResponse l = MOAT__V1__LIST_SESSIONS_RESPONSE__INIT;
    l.n_sessions = 3;
    l.sessions = items;
    fake_reply(s, id, &l.base);
}

/* What the fake's Exec/Interactive saw. It answers by the start's command:
 * "echo" echoes stdin, reports resizes and signals as output and exits 0 at
 * close_stdin, granting credit back for each message; "slow" grants only once
 * the client has no room for another message like its last, after an output
 * "full"; "hold" never grants; "drop" closes the connection at the first stdin;
 * "overgrant" grants past the window's limit at once. */
typedef struct interactive_seen {
    char command[32], session[64], cwd[64], term[32], attach[32];
    bool tty, has_size;
    uint32_t rows, cols;
    uint64_t after_offset;
    uint64_t stdin_bytes; /* "slow" and "hold" check them against stdin_byte() */
    bool stdin_pattern_ok;
    uint64_t sequence;
} interactive_seen;
static interactive_seen iseen;

static uint8_t stdin_byte(uint64_t i)
{
    return (uint8_t)(i * 7 + 3);
}

static void send_output(fake *s, uint32_t id, const char *text, size_t len)
{
    moat_exec_event ev;
    memset(&ev, 0, sizeof ev);
    ev.sequence = ++iseen.sequence;
    ev.kind = MOAT_EXEC_OUTPUT;
    ev.stream = MOAT_EXEC_STDOUT;
    ev.data = (moat_slice){(const uint8_t *)text, len};
    send_event(s, id, &ev);
}

static void interactive_start(fake *s, uint32_t id, const Moat__V1__InteractiveStart *st)
{
    memset(&iseen, 0, sizeof iseen);
    iseen.stdin_pattern_ok = true;
    snprintf(iseen.command, sizeof iseen.command, "%s", st->command);
    snprintf(iseen.session, sizeof iseen.session, "%s", st->session_id);
    snprintf(iseen.cwd, sizeof iseen.cwd, "%s", st->cwd);
    snprintf(iseen.term, sizeof iseen.term, "%s", st->term);
    snprintf(iseen.attach, sizeof iseen.attach, "%s", st->attach_id);
    iseen.tty = st->tty;
    iseen.has_size = st->size != NULL;
    iseen.rows = st->size ? st->size->rows : 0;
    iseen.cols = st->size ? st->size->cols : 0;
    iseen.after_offset = st->after_offset;
    moat_exec_event ev;
    memset(&ev, 0, sizeof ev);
    ev.sequence = ++iseen.sequence;
    ev.kind = MOAT_EXEC_INIT;
    ev.execution_id = moat_slice_str("term-1");
    send_event(s, id, &ev);
    if (strcmp(iseen.command, "overgrant") == 0) {
        moat_frame g = {.kind = MOAT_FRAME_WINDOW_UPDATE, .stream_id = id};
        g.u.window_update.increment = MOAT_WIRE_MAX_WINDOW;
        uint8_t buf[32];
        size_t n;
        if (moat_wire_encode(&g, buf, sizeof buf, &n) == MOAT_OK)
            fake_send_raw(s, buf, n);
    }
}

static void interactive_stdin(fake *s, uint32_t id, ProtobufCBinaryData data, size_t msg_len)
{
    const char *cmd = iseen.command;
    if (strcmp(cmd, "echo") == 0) {
        send_output(s, id, (const char *)data.data, data.len);
        fake_grant(s, id, (uint32_t)msg_len);
        return;
    }
    if (strcmp(cmd, "drop") == 0) {
        s->drop = true;
        return;
    }
    for (size_t i = 0; i < data.len; i++)
        if (data.data[i] != stdin_byte(iseen.stdin_bytes + i))
            iseen.stdin_pattern_ok = false;
    iseen.stdin_bytes += data.len;
    moat_window *w = &s->client_window[id % 64];
    if (strcmp(cmd, "slow") == 0 && w->available < msg_len) {
        send_output(s, id, "full", 4);
        fake_grant(s, id, FAKE_WINDOW - w->available);
    }
}

static void interactive(fake *s, uint32_t id, moat_slice request)
{
    Moat__V1__InteractiveRequest *r =
        moat__v1__interactive_request__unpack(NULL, request.len, request.data);
    if (r == NULL) {
        s->failed = true;
        return;
    }
    char text[64];
    int n = 0;
    switch (r->input_case) {
    case MOAT__V1__INTERACTIVE_REQUEST__INPUT_START:
        interactive_start(s, id, r->start);
        break;
    case MOAT__V1__INTERACTIVE_REQUEST__INPUT_STDIN:
        interactive_stdin(s, id, r->stdin, request.len);
        break;
    case MOAT__V1__INTERACTIVE_REQUEST__INPUT_RESIZE:
        n = snprintf(text, sizeof text, "resize %ux%u", r->resize->rows, r->resize->cols);
        break;
    case MOAT__V1__INTERACTIVE_REQUEST__INPUT_SIGNAL:
        n = snprintf(text, sizeof text, "signal %s", r->signal);
        break;
    case MOAT__V1__INTERACTIVE_REQUEST__INPUT_CLOSE_STDIN: {
        moat_exec_event ev;
        memset(&ev, 0, sizeof ev);
        ev.sequence = ++iseen.sequence;
        ev.kind = MOAT_EXEC_EXIT;
        ev.exit_known = true;
        send_event(s, id, &ev);
        fake_send_end(s, id, MOAT_CODE_OK, "", "", NULL);
        break;
    }
    default:
        s->failed = true;
    }
    if (n > 0) {
        send_output(s, id, text, (size_t)n);
        fake_grant(s, id, (uint32_t)request.len);
    }
    moat__v1__interactive_request__free_unpacked(r, NULL);
}

static void handler(fake *s, uint32_t id, const char *method, moat_slice request)
{
    if (strcmp(method, "/moat.v1.Exec/Interactive") == 0) {
        interactive(s, id, request);
        return;
    }
    if (strcmp(method, "/moat.v1.Exec/GetCommandStatus") == 0) {
        command_status(s, id);
    } else if (strcmp(method, "/moat.v1.Sandboxes/ListSessions") == 0) {
        list_sessions(s, id);
    } else if (strcmp(method, "/moat.v1.Exec/Interrupt") == 0) {
        fake_send_end(s, id, MOAT_CODE_NOT_FOUND, "no such execution", "execution_not_found", NULL);
    } else if (strcmp(method, "/moat.v1.Files/Write") == 0) {
        files_write(s, id, request);
    } else if (strcmp(method, "/test/Echo") == 0) {
        fake_send_message(s, id, request.data, request.len);
        fake_send_end(s, id, MOAT_CODE_OK, "", "", NULL);
    } else if (strcmp(method, "/moat.v1.Exec/RunCommand") == 0) {
        run_command(s, id);
    } else if (strcmp(method, "/test/Fail") == 0) {
        fake_send_end(s, id, MOAT_CODE_UNAVAILABLE, "sandbox container did not start",
                      "sandbox_start_failed", "123e4567-e89b-12d3-a456-426614174000");
    } else if (strcmp(method, "/test/Drop") == 0) {
        s->drop = true;
    } else if (strcmp(method, "/test/PingMe") == 0) {
        /* A server ping mid-call: the client must answer it while reading. */
        moat_frame p = {.kind = MOAT_FRAME_PING};
        p.u.ping.payload = 77;
        uint8_t buf[32];
        size_t n;
        if (moat_wire_encode(&p, buf, sizeof buf, &n) == MOAT_OK)
            fake_send_raw(s, buf, n);
        fake_send_message(s, id, request.data, request.len);
        fake_send_end(s, id, MOAT_CODE_OK, "", "", NULL);
    } else if (strcmp(method, "/test/GoAway") == 0) {
        moat_frame g = {.kind = MOAT_FRAME_GO_AWAY};
        g.u.go_away.last_stream_id = id - 2;
        g.u.go_away.code = MOAT_CODE_UNAVAILABLE;
        g.u.go_away.message = moat_slice_str("shutting down");
        uint8_t buf[64];
        size_t n;
        if (moat_wire_encode(&g, buf, sizeof buf, &n) == MOAT_OK)
            fake_send_raw(s, buf, n);
    } else if (strcmp(method, "/test/Garbage") == 0) {
        static const uint8_t zero[4] = {0, 0, 0, 0};
        fake_send_raw(s, zero, sizeof zero);
    }
}

static void start_unix(fake *s)
{
    fake_start_unix(s, handler, NULL);
}

static void start_tcp(fake *s)
{
    fake_start_tcp(s, handler, NULL);
}

static void stop(fake *s)
{
    assert_true(fake_stop(s));
}

static moat_client *connect_unix(fake *s)
{
    char addr[128];
    snprintf(addr, sizeof addr, "unix:%s", s->path);
    moat_client_options o = {.token = "tok", .client_name = "test"};
    moat_client *c = NULL;
    moat_status st;
    assert_int_equal(moat_client_connect(addr, &o, &c, &st), MOAT_OK);
    return c;
}

static void test_hello_and_unary(void **state)
{
    (void)state;
    fake s;
    start_tcp(&s);
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", s.port);
    moat_client_options o = {.token = "tok"};
    moat_client *c = NULL;
    moat_status st;
    assert_int_equal(moat_client_connect(addr, &o, &c, &st), MOAT_OK);
    const moat_client_limits *l = moat_client_get_limits(c);
    assert_int_equal(l->max_frame_size, 2 * WINDOW);
    assert_int_equal(l->initial_window, WINDOW);
    assert_int_equal(l->max_concurrent_streams, 8);
    assert_string_equal(l->server_version, "fake/1");
    assert_int_equal(moat_client_ping(c, 5000), MOAT_OK);
    /* A request over the window or a frame is refused before anything is sent. */
    static uint8_t big[2 * WINDOW];
    moat_call *too_big;
    assert_int_equal(
        moat_call_start(c, "/test/Echo", 0, NULL, 0, (moat_slice){big, WINDOW + 1}, &too_big),
        MOAT_E_TOO_BIG);
    moat_kv many[MOAT_WIRE_MAX_KV + 1];
    memset(many, 0, sizeof many);
    assert_int_equal(moat_call_start(c, "/test/Echo", 0, many, MOAT_WIRE_MAX_KV + 1,
                                     moat_slice_str("x"), &too_big),
                     MOAT_E_TOO_BIG);
    uint8_t resp[64];
    size_t n;
    assert_int_equal(
        moat_client_unary(c, "/test/Echo", 0, moat_slice_str("abc"), resp, sizeof resp, &n, &st),
        MOAT_OK);
    assert_int_equal(n, 3);
    assert_memory_equal(resp, "abc", 3);
    assert_int_equal(
        moat_client_unary(c, "/test/Fail", 0, moat_slice_str("x"), resp, sizeof resp, &n, &st),
        MOAT_E_REMOTE);
    assert_int_equal(st.code, MOAT_CODE_UNAVAILABLE);
    assert_string_equal(st.reason, "sandbox_start_failed");
    assert_string_equal(st.message, "sandbox container did not start");
    assert_string_equal(moat_status_detail_get(&st, "chat_id"),
                        "123e4567-e89b-12d3-a456-426614174000");
    moat_client_close(c);
    stop(&s);
}

static void test_bad_token(void **state)
{
    (void)state;
    fake s;
    start_unix(&s);
    char addr[128];
    snprintf(addr, sizeof addr, "unix:%s", s.path);
    moat_client_options o = {.token = "wrong"};
    moat_client *c = NULL;
    moat_status st;
    assert_int_equal(moat_client_connect(addr, &o, &c, &st), MOAT_E_REMOTE);
    assert_null(c);
    assert_int_equal(st.code, MOAT_CODE_UNAUTHENTICATED);
    assert_string_equal(st.reason, "bad_token");
    stop(&s);
    assert_int_equal(moat_client_connect("unix:/nonexistent/moat.sock", &o, &c, &st), MOAT_E_IO);
    assert_int_equal(st.code, MOAT_CODE_UNAVAILABLE);
    assert_int_equal(moat_client_connect("no-port", &o, &c, &st), MOAT_E_INVAL);
}

static void test_streaming_with_windows(void **state)
{
    (void)state;
    fake s;
    start_unix(&s);
    moat_client *c = connect_unix(&s);
    uint8_t req[256];
    size_t n;
    moat_run_command_req r = {.session_id = "s1", .command = "yes"};
    assert_int_equal(moat_run_command_req_encode(&r, req, sizeof req, &n), MOAT_OK);
    moat_call *call;
    assert_int_equal(
        moat_call_start(c, "/moat.v1.Exec/RunCommand", 10000, NULL, 0, (moat_slice){req, n}, &call),
        MOAT_OK);
    moat_slice msg;
    static moat_exec_event ev;
    uint64_t seq = 0;
    size_t out_bytes = 0;
    bool exited = false;
    moat_err err;
    while ((err = moat_call_recv(call, 10000, &msg)) == MOAT_OK) {
        assert_int_equal(moat_exec_event_decode(msg, &ev), MOAT_OK);
        assert_int_equal(ev.sequence, ++seq);
        if (ev.kind == MOAT_EXEC_OUTPUT) {
            uint32_t i = (uint32_t)ev.sequence - 2;
            assert_int_equal(ev.stream, i % 2 ? MOAT_EXEC_STDERR : MOAT_EXEC_STDOUT);
            assert_int_equal(ev.data.len, CHUNK);
            for (size_t j = 0; j < CHUNK; j++)
                assert_int_equal(ev.data.data[j], (uint8_t)(i * 7 + j));
            out_bytes += ev.data.len;
        } else if (ev.kind == MOAT_EXEC_EXIT) {
            exited = true;
            assert_true(ev.exit_known);
            assert_int_equal(ev.exit_code, 3);
        }
    }
    assert_int_equal(err, MOAT_E_CLOSED);
    assert_true(exited);
    assert_int_equal(out_bytes, OUT_CHUNKS * CHUNK);
    assert_int_equal(moat_call_status(call)->code, MOAT_CODE_OK);
    moat_call_free(call);
    moat_client_close(c);
    stop(&s);
    /* Three windows of data could only flow because updates were sent. */
    assert_true(s.updates_seen >= 2);
}

static void test_multiplexed_and_cancel(void **state)
{
    (void)state;
    fake s;
    start_unix(&s);
    moat_client *c = connect_unix(&s);
    moat_call *a, *b, *h;
    assert_int_equal(moat_call_start(c, "/test/Echo", 0, NULL, 0, moat_slice_str("first"), &a),
                     MOAT_OK);
    assert_int_equal(moat_call_start(c, "/test/Echo", 0, NULL, 0, moat_slice_str("second"), &b),
                     MOAT_OK);
    moat_slice msg;
    /* Read b first: a's message and End arrive meanwhile and are kept. */
    assert_int_equal(moat_call_recv(b, 5000, &msg), MOAT_OK);
    assert_int_equal(msg.len, 6);
    assert_memory_equal(msg.data, "second", 6);
    assert_int_equal(moat_call_recv(b, 5000, &msg), MOAT_E_CLOSED);
    assert_int_equal(moat_call_recv(a, 5000, &msg), MOAT_OK);
    assert_int_equal(msg.len, 5);
    assert_memory_equal(msg.data, "first", 5);
    assert_int_equal(moat_call_recv(a, 5000, &msg), MOAT_E_CLOSED);
    assert_int_equal(moat_call_status(a)->code, MOAT_CODE_OK);
    moat_call_free(a);
    moat_call_free(b);

    moat_kv md[] = {{moat_slice_str("request_id"), moat_slice_str("r1")}};
    assert_int_equal(moat_call_start(c, "/test/Hang", 0, md, 1, moat_slice_str("x"), &h), MOAT_OK);
    assert_int_equal(moat_call_recv(h, 50, &msg), MOAT_E_TIMEOUT);
    assert_int_equal(moat_call_cancel(h, "bored"), MOAT_OK);
    assert_int_equal(moat_call_recv(h, 5000, &msg), MOAT_E_CLOSED);
    assert_int_equal(moat_call_status(h)->code, MOAT_CODE_CANCELLED);
    moat_call_free(h);
    moat_client_close(c);
    stop(&s);
}

static void test_eof_is_unavailable(void **state)
{
    (void)state;
    fake s;
    start_unix(&s);
    moat_client *c = connect_unix(&s);
    moat_call *a, *d;
    assert_int_equal(moat_call_start(c, "/test/Hang", 0, NULL, 0, moat_slice_str("x"), &a),
                     MOAT_OK);
    assert_int_equal(moat_call_start(c, "/test/Drop", 0, NULL, 0, moat_slice_str("x"), &d),
                     MOAT_OK);
    moat_slice msg;
    assert_int_equal(moat_call_recv(d, 5000, &msg), MOAT_E_CLOSED);
    assert_int_equal(moat_call_status(d)->code, MOAT_CODE_UNAVAILABLE);
    assert_int_equal(moat_call_recv(a, 5000, &msg), MOAT_E_CLOSED);
    assert_int_equal(moat_call_status(a)->code, MOAT_CODE_UNAVAILABLE);
    moat_call *e;
    assert_int_equal(moat_call_start(c, "/test/Echo", 0, NULL, 0, moat_slice_str("x"), &e),
                     MOAT_E_CLOSED);
    moat_call_free(a);
    moat_call_free(d);
    moat_client_close(c);
    stop(&s);
}

static void test_garbage_from_server(void **state)
{
    (void)state;
    fake s;
    start_unix(&s);
    moat_client *c = connect_unix(&s);
    moat_call *g;
    assert_int_equal(moat_call_start(c, "/test/Garbage", 0, NULL, 0, moat_slice_str("x"), &g),
                     MOAT_OK);
    moat_slice msg;
    assert_int_equal(moat_call_recv(g, 5000, &msg), MOAT_E_CLOSED);
    assert_int_equal(moat_call_status(g)->code, MOAT_CODE_INTERNAL);
    assert_string_equal(moat_call_status(g)->reason, "bad_frame");
    moat_call_free(g);
    moat_client_close(c); /* closing makes the fake's read see EOF */
    stop(&s);
}

static void test_deadline(void **state)
{
    (void)state;
    fake s;
    start_unix(&s);
    moat_client *c = connect_unix(&s);
    moat_call *h;
    /* The fake ignores deadlines: the client ends the call itself. */
    assert_int_equal(moat_call_start(c, "/test/Hang", 1, NULL, 0, moat_slice_str("x"), &h),
                     MOAT_OK);
    moat_slice msg;
    moat_err err;
    while ((err = moat_call_recv(h, 5000, &msg)) == MOAT_OK)
        ;
    assert_int_equal(err, MOAT_E_CLOSED);
    /* The client's own verdict, whatever the fake answers to its Cancel. */
    assert_int_equal(moat_call_status(h)->code, MOAT_CODE_DEADLINE_EXCEEDED);
    moat_call_free(h);
    moat_client_close(c);
    stop(&s);
}

static void test_limits_ping_goaway(void **state)
{
    (void)state;
    fake s;
    start_unix(&s);
    moat_client *c = connect_unix(&s);
    /* max_concurrent_streams (8) is enforced locally. */
    moat_call *calls[9];
    for (int i = 0; i < 8; i++)
        assert_int_equal(
            moat_call_start(c, "/test/Hang", 0, NULL, 0, moat_slice_str("x"), &calls[i]), MOAT_OK);
    assert_int_equal(moat_call_start(c, "/test/Hang", 0, NULL, 0, moat_slice_str("x"), &calls[8]),
                     MOAT_E_TOO_BIG);
    for (int i = 0; i < 8; i++)
        moat_call_free(calls[i]);
    /* The server pings: the Pong goes out and the call completes. */
    moat_call *p;
    assert_int_equal(moat_call_start(c, "/test/PingMe", 0, NULL, 0, moat_slice_str("pp"), &p),
                     MOAT_OK);
    moat_slice msg;
    assert_int_equal(moat_call_recv(p, 5000, &msg), MOAT_OK);
    assert_int_equal(msg.len, 2);
    assert_int_equal(moat_call_recv(p, 5000, &msg), MOAT_E_CLOSED);
    moat_call_free(p);
    /* GoAway: an open call above last_stream_id ends UNAVAILABLE; no new calls. */
    moat_call *h, *g;
    assert_int_equal(moat_call_start(c, "/test/Hang", 0, NULL, 0, moat_slice_str("x"), &h),
                     MOAT_OK);
    assert_int_equal(moat_call_start(c, "/test/GoAway", 0, NULL, 0, moat_slice_str("x"), &g),
                     MOAT_OK);
    assert_int_equal(moat_call_recv(g, 5000, &msg), MOAT_E_CLOSED);
    assert_int_equal(moat_call_status(g)->code, MOAT_CODE_UNAVAILABLE);
    assert_string_equal(moat_call_status(g)->reason, "go_away");
    assert_string_equal(moat_call_status(g)->message, "shutting down");
    assert_int_equal(moat_call_recv(h, 50, &msg),
                     MOAT_E_TIMEOUT); /* at or below last_stream_id: still open */
    moat_call *n;
    assert_int_equal(moat_call_start(c, "/test/Echo", 0, NULL, 0, moat_slice_str("x"), &n),
                     MOAT_E_CLOSED);
    moat_call_free(h);
    moat_call_free(g);
    moat_client_close(c);
    stop(&s);
    assert_int_equal(s.pongs_seen, 1);
}

/* A file larger than a request goes in pieces at increasing offsets, each
 * within moat_file_write_max, which is a bound that really fits. */
static void test_write_pieces(void **state)
{
    (void)state;
    fake s;
    start_unix(&s);
    moat_client *c = connect_unix(&s);
    nwrites = 0;
    wfile_exists = false;
    const char *sess = "sess-1", *path = "/workspace/big.bin";
    size_t max = moat_file_write_max(c, sess, path);
    /* the fake's window (64 KiB) is below its frame size less 4 KiB */
    assert_int_equal(max, WINDOW - strlen(sess) - strlen(path) - 40);
    static uint8_t data[200000];
    for (size_t i = 0; i < sizeof data; i++)
        data[i] = (uint8_t)(i * 31 + 7);
    moat_status st;
    uint64_t written = 0;
    /* offset > 0 before the file exists: the server's NOT_FOUND comes back */
    moat_write_req early = {sess, path, {data, 10}, 0, 5};
    assert_int_equal(moat_file_write(c, &early, 5000, &written, &st), MOAT_E_REMOTE);
    assert_int_equal(st.code, MOAT_CODE_NOT_FOUND);
    nwrites = 0;
    size_t off = 0, pieces = 0;
    do {
        size_t n = sizeof data - off < max ? sizeof data - off : max;
        moat_write_req r = {sess, path, {data + off, n}, off == 0 ? 0640 : 0, off};
        assert_int_equal(moat_file_write(c, &r, 5000, &written, &st), MOAT_OK);
        assert_int_equal(written, n);
        off += n;
        pieces++;
    } while (off < sizeof data);
    assert_int_equal(pieces, (sizeof data + max - 1) / max);
    assert_int_equal(nwrites, pieces);
    for (size_t i = 0; i < nwrites; i++) {
        assert_int_equal(writes[i].offset, i * max);
        assert_int_equal(writes[i].len, i + 1 < nwrites ? max : sizeof data - i * max);
        assert_int_equal(writes[i].mode, i == 0 ? 0640 : 0);
        assert_string_equal(writes[i].path, path);
        assert_string_equal(writes[i].session, sess);
    }
    assert_int_equal(wfile_len, sizeof data);
    assert_memory_equal(wfile, data, sizeof data);
    /* an empty write at offset 0 truncates (creates) the file */
    moat_write_req empty = {sess, path, {NULL, 0}, 0, 0};
    assert_int_equal(moat_file_write(c, &empty, 5000, &written, &st), MOAT_OK);
    assert_int_equal(written, 0);
    assert_int_equal(wfile_len, 0);
    /* a request larger than a frame: refused locally */
    uint64_t before = nwrites;
    size_t frame = moat_client_get_limits(c)->max_frame_size;
    uint8_t *big = calloc(1, frame);
    assert_non_null(big);
    moat_write_req r = {sess, path, {big, frame}, 0, 0};
    moat_err err = moat_file_write(c, &r, 5000, &written, &st);
    free(big);
    assert_int_equal(err, MOAT_E_TOO_BIG);
    assert_int_equal(st.code, MOAT_CODE_INVALID_ARGUMENT);
    assert_int_equal(nwrites, before);
    moat_client_close(c);
    stop(&s);
}

/* Sessions seen by a listing's callback, which stops after `stop_after`. */
typedef struct seen {
    size_t count, stop_after;
    char last[8];
} seen;

static bool count_session(const moat_session *session, void *arg)
{
    seen *v = arg;
    v->count++;
    moat_slice_copy(session->session_id, v->last, sizeof v->last);
    return v->count < v->stop_after;
}

/* Typed calls decode into moat's structs; a listing stops when its callback says so and
 * still succeeds; a server's error comes back with its reason. */
static void test_typed_calls(void **state)
{
    (void)state;
    fake s;
    start_unix(&s);
    moat_client *c = connect_unix(&s);
    moat_status st;
    moat_command_status cs;
    assert_int_equal(moat_exec_status(c, "sess-1", "ex-1", 5000, &cs, &st), MOAT_OK);
    assert_true(moat_slice_eq_str(cs.execution_id, "ex-1"));
    assert_true(moat_slice_eq_str(cs.command, "sleep 9"));
    assert_false(cs.running);
    assert_true(cs.exited);
    assert_false(cs.exit_known);
    assert_true(moat_slice_eq_str(cs.exit_unknown_reason, "killed by a signal"));
    assert_true(moat_slice_eq_str(cs.error, "signal: killed"));
    assert_int_equal(cs.started_at_ms, 1718000000000);
    assert_int_equal(cs.finished_at_ms, 1718000001000);

    seen all = {0, 100, ""}, two = {0, 2, ""};
    assert_int_equal(moat_session_list(c, NULL, 5000, count_session, &all, &st), MOAT_OK);
    assert_int_equal(all.count, 3);
    assert_string_equal(all.last, "s-3");
    assert_int_equal(moat_session_list(c, NULL, 5000, count_session, &two, &st), MOAT_OK);
    assert_int_equal(st.code, MOAT_CODE_OK);
    assert_int_equal(two.count, 2);
    assert_string_equal(two.last, "s-2");

    assert_int_equal(moat_exec_interrupt(c, "sess-1", "ex-9", 5000, &st), MOAT_E_REMOTE);
    assert_int_equal(st.code, MOAT_CODE_NOT_FOUND);
    assert_string_equal(st.reason, "execution_not_found");
    moat_client_close(c);
    stop(&s);
}

static moat_call *interactive_call(moat_client *c, const moat_interactive_req *r)
{
    moat_call *call = NULL;
    moat_status st;
    assert_int_equal(moat_exec_interactive(c, r, 0, &call, &st), MOAT_OK);
    static moat_exec_event ev;
    assert_int_equal(moat_exec_next(call, 10000, &ev), MOAT_OK);
    assert_int_equal(ev.kind, MOAT_EXEC_INIT);
    assert_true(moat_slice_eq_str(ev.execution_id, "term-1"));
    return call;
}

static void expect_output(moat_call *call, int timeout_ms, const char *text)
{
    static moat_exec_event ev;
    assert_int_equal(moat_exec_next(call, timeout_ms, &ev), MOAT_OK);
    assert_int_equal(ev.kind, MOAT_EXEC_OUTPUT);
    assert_int_equal(ev.stream, MOAT_EXEC_STDOUT);
    assert_int_equal(ev.data.len, strlen(text));
    assert_memory_equal(ev.data.data, text, ev.data.len);
}

/* The start carries every field; stdin, resize and signal each go as one
 * request Message; the connection's fd polls readable for the answers once
 * libmoat has nothing read ahead; close_stdin ends it. */
static void test_interactive_inputs(void **state)
{
    (void)state;
    fake s;
    start_unix(&s);
    moat_client *c = connect_unix(&s);
    moat_status st;
    moat_call *call = NULL;
    moat_interactive_req bad = {.session_id = "sess-1", .tty = true, .rows = 70000, .cols = 80};
    assert_int_equal(moat_exec_interactive(c, &bad, 0, &call, &st), MOAT_E_INVAL);
    assert_int_equal(st.code, MOAT_CODE_INVALID_ARGUMENT);
    assert_string_equal(st.reason, "bad_terminal_size");
    bad.rows = 24;
    bad.cols = 0;
    assert_int_equal(moat_exec_interactive(c, &bad, 0, &call, &st), MOAT_E_INVAL);
    assert_null(call);
    /* a start larger than a frame, and one within a frame but past the window */
    static char command[3 * WINDOW];
    memset(command, 'x', sizeof command - 1);
    moat_interactive_req huge = {.session_id = "sess-1", .command = command};
    assert_int_equal(moat_exec_interactive(c, &huge, 0, &call, &st), MOAT_E_TOO_BIG);
    assert_string_equal(st.reason, "request_too_big");
    command[WINDOW + 10] = '\0';
    assert_int_equal(moat_exec_interactive(c, &huge, 0, &call, &st), MOAT_E_TOO_BIG);
    assert_int_equal(st.code, MOAT_CODE_INVALID_ARGUMENT);
    assert_null(call);
    moat_interactive_req r = {.session_id = "sess-1",
                              .command = "echo",
                              .cwd = "/w",
                              .tty = true,
                              .rows = 24,
                              .cols = 80,
                              .term = "xterm-256color",
                              .attach_id = "term-0",
                              .after_offset = 5};
    call = interactive_call(c, &r);
    assert_string_equal(iseen.session, "sess-1");
    assert_string_equal(iseen.cwd, "/w");
    assert_true(iseen.tty);
    assert_true(iseen.has_size);
    assert_int_equal(iseen.rows, 24);
    assert_int_equal(iseen.cols, 80);
    assert_string_equal(iseen.term, "xterm-256color");
    assert_string_equal(iseen.attach, "term-0");
    assert_int_equal(iseen.after_offset, 5);

    static moat_exec_event ev;
    assert_int_equal(moat_exec_next(call, 0, &ev), MOAT_E_TIMEOUT);
    assert_int_equal(moat_exec_stdin(call, moat_slice_str("hello"), 0), MOAT_OK);
    struct pollfd pfd = {moat_client_fd(c), POLLIN, 0};
    assert_int_equal(poll(&pfd, 1, 10000), 1);
    expect_output(call, 0, "hello");
    assert_int_equal(moat_exec_resize(call, 50, 132, 0), MOAT_OK);
    expect_output(call, 10000, "resize 50x132");
    assert_int_equal(moat_exec_resize(call, 0, 80, 0), MOAT_E_INVAL);
    assert_int_equal(moat_exec_resize(call, 24, 65536, 0), MOAT_E_INVAL);
    assert_int_equal(moat_exec_signal(call, "SIGINT", 0), MOAT_OK);
    expect_output(call, 10000, "signal SIGINT");
    /* More than one message may carry: refused before anything is sent. */
    size_t max = moat_exec_stdin_max(c);
    assert_int_equal(max, WINDOW - 6);
    uint8_t *big = calloc(1, max + 1);
    assert_non_null(big);
    assert_int_equal(moat_exec_stdin(call, (moat_slice){big, max + 1}, 0), MOAT_E_TOO_BIG);
    assert_int_equal(moat_call_send(call, (moat_slice){big, WINDOW + 1}, 0), MOAT_E_TOO_BIG);
    free(big);
    assert_int_equal(moat_exec_close_stdin(call, 0), MOAT_OK);
    assert_int_equal(moat_exec_next(call, 10000, &ev), MOAT_OK);
    assert_int_equal(ev.kind, MOAT_EXEC_EXIT);
    assert_true(ev.exit_known);
    assert_int_equal(ev.exit_code, 0);
    assert_int_equal(moat_exec_next(call, 10000, &ev), MOAT_E_CLOSED);
    assert_int_equal(moat_call_status(call)->code, MOAT_CODE_OK);
    /* An ended call takes no more input. */
    assert_int_equal(moat_exec_stdin(call, moat_slice_str("late"), 0), MOAT_E_CLOSED);
    moat_call_free(call);
    moat_client_close(c);
    stop(&s);
    assert_int_equal(s.window_violations, 0);
}

static void fill_stdin(uint8_t *chunk, size_t len, uint64_t from)
{
    for (size_t i = 0; i < len; i++)
        chunk[i] = stdin_byte(from + i);
}

/* Ends the test: the fake got exactly the sent bytes, in order, each within
 * the credit it had granted. */
static void close_and_check_stdin(fake *s, moat_client *c, moat_call *call, uint64_t sent)
{
    moat_call_free(call);
    moat_client_close(c);
    stop(s);
    assert_int_equal(iseen.stdin_bytes, sent);
    assert_true(iseen.stdin_pattern_ok);
    assert_int_equal(s->window_violations, 0);
}

/* A stdin request of CHUNK bytes: its field's tag and a 3-byte length. */
#define CHUNK_MESSAGE (CHUNK + 4u)

/* 1 MiB of stdin through a 64 KiB window that the server refills only once the
 * client has no room left: each send that finds the window short waits for
 * the grant, keeping the output that arrives meanwhile for moat_exec_next. */
static void test_interactive_send_waits_for_window(void **state)
{
    (void)state;
    fake s;
    start_unix(&s);
    moat_client *c = connect_unix(&s);
    moat_interactive_req r = {.session_id = "sess-1", .command = "slow"};
    moat_call *call = interactive_call(c, &r);
    static uint8_t chunk[CHUNK];
    uint64_t sent = 0;
    size_t waits = 0;
    while (sent < (1u << 20)) {
        if (moat_call_send_window(call) < CHUNK_MESSAGE)
            waits++; /* the credit left cannot take it: this send must wait */
        fill_stdin(chunk, CHUNK, sent);
        assert_int_equal(moat_exec_stdin(call, (moat_slice){chunk, CHUNK}, -1), MOAT_OK);
        sent += CHUNK;
    }
    assert_true(waits >= 15);
    assert_int_equal(moat_exec_close_stdin(call, -1), MOAT_OK);
    static moat_exec_event ev;
    size_t fulls = 0;
    moat_err err;
    while ((err = moat_exec_next(call, 10000, &ev)) == MOAT_OK) {
        if (ev.kind == MOAT_EXEC_OUTPUT) {
            assert_true(ev.data.len == 4 && memcmp(ev.data.data, "full", 4) == 0);
            fulls++;
        }
    }
    assert_int_equal(err, MOAT_E_CLOSED);
    assert_int_equal(moat_call_status(call)->code, MOAT_CODE_OK);
    /* one grant, announced by one "full", for every send that had to wait */
    assert_int_equal(fulls, waits);
    close_and_check_stdin(&s, c, call, sent);
}

/* moat_exec_stdin_from_fd from a file and a pipe (spliced once the routed call stops keeping
 * what it sends) and from a terminal (read): the server gets every byte in order within its
 * credit; an empty non-blocking pipe is MOAT_E_AGAIN and its end 0 bytes. */
static void test_interactive_stdin_from_fd(void **state)
{
    (void)state;
    fake s;
    start_unix(&s);
    moat_client *c = connect_unix(&s);
    moat_interactive_req r = {.session_id = "sess-1", .command = "slow"};
    moat_call *call = interactive_call(c, &r);
    static uint8_t chunk[CHUNK];
    uint64_t sent = 0;
    size_t moved;
    moat_err err;

    char path[] = "/tmp/moat-stdin-XXXXXX";
    int f = mkstemp(path);
    assert_true(f >= 0);
    unlink(path);
    const uint64_t file_bytes = 64u * CHUNK;
    for (uint64_t at = 0; at < file_bytes; at += CHUNK) {
        fill_stdin(chunk, CHUNK, at);
        assert_int_equal(write(f, chunk, CHUNK), CHUNK);
    }
    assert_int_equal(lseek(f, 0, SEEK_SET), 0);
    while ((err = moat_exec_stdin_from_fd(call, f, CHUNK + 100, &moved, -1)) == MOAT_OK &&
           moved > 0)
        sent += moved;
    assert_int_equal(err, MOAT_OK);
    assert_int_equal(sent, file_bytes);
    close(f);
    /* past a window's worth, the routed call keeps nothing and the bytes went by splice */
    assert_false(moat__call_records(call));

    int p[2];
    assert_int_equal(pipe2(p, O_NONBLOCK), 0);
    fill_stdin(chunk, CHUNK, sent);
    assert_int_equal(write(p[1], chunk, CHUNK), CHUNK);
    assert_int_equal(moat_exec_stdin_from_fd(call, p[0], 2 * CHUNK, &moved, -1), MOAT_OK);
    assert_int_equal(moved, CHUNK);
    sent += moved;
    assert_int_equal(moat_exec_stdin_from_fd(call, p[0], CHUNK, &moved, -1), MOAT_E_AGAIN);
    assert_int_equal(moved, 0);
    close(p[1]);
    assert_int_equal(moat_exec_stdin_from_fd(call, p[0], CHUNK, &moved, -1), MOAT_OK);
    assert_int_equal(moved, 0);
    close(p[0]);

    int master = posix_openpt(O_RDWR | O_NOCTTY);
    assert_true(master >= 0);
    assert_int_equal(grantpt(master), 0);
    assert_int_equal(unlockpt(master), 0);
    int tty = open(ptsname(master), O_RDWR | O_NOCTTY);
    assert_true(tty >= 0);
    struct termios raw;
    assert_int_equal(tcgetattr(tty, &raw), 0);
    cfmakeraw(&raw);
    assert_int_equal(tcsetattr(tty, TCSANOW, &raw), 0);
    fill_stdin(chunk, 1000, sent);
    assert_int_equal(write(master, chunk, 1000), 1000);
    for (uint64_t got = 0; got < 1000; got += moved) {
        assert_int_equal(moat_exec_stdin_from_fd(call, tty, CHUNK, &moved, -1), MOAT_OK);
        assert_true(moved > 0);
    }
    sent += 1000;
    close(tty);
    close(master);

    assert_int_equal(moat_exec_close_stdin(call, -1), MOAT_OK);
    static moat_exec_event ev;
    while ((err = moat_exec_next(call, 10000, &ev)) == MOAT_OK)
        ;
    assert_int_equal(err, MOAT_E_CLOSED);
    assert_int_equal(moat_call_status(call)->code, MOAT_CODE_OK);
    close_and_check_stdin(&s, c, call, sent);
}

/* A server that never grants: sends go while the first window lasts, then a
 * send times out with nothing sent, and the server never got more than its
 * window. */
static void test_interactive_never_granted(void **state)
{
    (void)state;
    fake s;
    start_unix(&s);
    moat_client *c = connect_unix(&s);
    moat_interactive_req r = {.session_id = "sess-1", .command = "hold"};
    moat_call *call = interactive_call(c, &r);
    static uint8_t chunk[CHUNK];
    uint64_t sent = 0;
    moat_err err;
    for (;;) {
        fill_stdin(chunk, CHUNK, sent);
        if ((err = moat_exec_stdin(call, (moat_slice){chunk, CHUNK}, 0)) != MOAT_OK)
            break;
        sent += CHUNK;
    }
    assert_int_equal(err, MOAT_E_TIMEOUT);
    assert_true(moat_call_send_window(call) < CHUNK_MESSAGE);
    assert_int_equal(sent, (WINDOW / CHUNK_MESSAGE) * CHUNK);
    assert_int_equal(moat_exec_stdin(call, (moat_slice){chunk, CHUNK}, 50), MOAT_E_TIMEOUT);
    /* Small messages still go while they fit. */
    uint32_t left = moat_call_send_window(call);
    assert_int_equal(moat_exec_stdin(call, (moat_slice){chunk, 1}, 0), MOAT_OK);
    assert_int_equal(moat_call_send_window(call), left - 3);
    sent += 1;
    close_and_check_stdin(&s, c, call, sent);
}

/* The connection drops while stdin is going out: the send fails CLOSED, the
 * call ends UNAVAILABLE, and later sends and calls are refused. */
static void test_interactive_connection_drops(void **state)
{
    (void)state;
    fake s;
    start_unix(&s);
    moat_client *c = connect_unix(&s);
    moat_interactive_req r = {.session_id = "sess-1", .command = "drop"};
    moat_call *call = interactive_call(c, &r);
    static uint8_t chunk[CHUNK];
    moat_err err;
    int sends = 0;
    while ((err = moat_exec_stdin(call, (moat_slice){chunk, CHUNK}, -1)) == MOAT_OK)
        assert_true(++sends < 100000);
    assert_int_equal(err, MOAT_E_CLOSED);
    static moat_exec_event ev;
    assert_int_equal(moat_exec_next(call, 10000, &ev), MOAT_E_CLOSED);
    assert_int_equal(moat_call_status(call)->code, MOAT_CODE_UNAVAILABLE);
    assert_int_equal(moat_exec_close_stdin(call, -1), MOAT_E_CLOSED);
    moat_call *other;
    moat_status st;
    assert_int_equal(moat_exec_interactive(c, &r, 0, &other, &st), MOAT_E_CLOSED);
    assert_int_equal(st.code, MOAT_CODE_UNAVAILABLE);
    moat_call_free(call);
    moat_client_close(c);
    stop(&s);

    /* A grant past the window's limit breaks the protocol: the connection ends. */
    start_unix(&s);
    c = connect_unix(&s);
    moat_interactive_req over = {.session_id = "sess-1", .command = "overgrant"};
    call = interactive_call(c, &over);
    assert_int_equal(moat_exec_next(call, 10000, &ev), MOAT_E_CLOSED);
    assert_int_equal(moat_call_status(call)->code, MOAT_CODE_INTERNAL);
    assert_string_equal(moat_call_status(call)->reason, "flow_control_error");
    assert_int_equal(moat_exec_stdin(call, moat_slice_str("x"), 0), MOAT_E_CLOSED);
    moat_call_free(call);
    moat_client_close(c);
    stop(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hello_and_unary),
        cmocka_unit_test(test_bad_token),
        cmocka_unit_test(test_streaming_with_windows),
        cmocka_unit_test(test_multiplexed_and_cancel),
        cmocka_unit_test(test_eof_is_unavailable),
        cmocka_unit_test(test_garbage_from_server),
        cmocka_unit_test(test_deadline),
        cmocka_unit_test(test_limits_ping_goaway),
        cmocka_unit_test(test_write_pieces),
        cmocka_unit_test(test_typed_calls),
        cmocka_unit_test(test_interactive_inputs),
        cmocka_unit_test(test_interactive_send_waits_for_window),
        cmocka_unit_test(test_interactive_stdin_from_fd),
        cmocka_unit_test(test_interactive_never_granted),
        cmocka_unit_test(test_interactive_connection_drops),
    };
    return moat_run_group_tests("test_client", tests, NULL, NULL);
}
