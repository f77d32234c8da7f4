/* The fake moatd every libmoat client program shares: the handler that answers each method
 * the tests call (RunCommand's windowed output, Files/Write, Exec/Interactive, typed calls and
 * the /test/ methods), what it saw, and starting, stopping and connecting to it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "moat_test.h"

#include "client_fixture.h"
#include "moat/v1/exec.pb-c.h"
#include "moat/v1/files.pb-c.h"
#include "moat/v1/sandbox.pb-c.h"
#include "wire/wire.h"

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
write_seen writes[WRITES_MAX];
size_t nwrites;
uint8_t wfile[WFILE_MAX];
size_t wfile_len;
bool wfile_exists;

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

/* What the fake's Exec/Interactive saw (client_fixture.h says how it answers). */
interactive_seen iseen;

uint8_t stdin_byte(uint64_t i)
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

void start_unix(fake *s)
{
    fake_start_unix(s, handler, NULL);
}

void start_tcp(fake *s)
{
    fake_start_tcp(s, handler, NULL);
}

void stop(fake *s)
{
    assert_true(fake_stop(s));
}

moat_client *connect_unix(fake *s)
{
    char addr[128];
    snprintf(addr, sizeof addr, "unix:%s", s->path);
    moat_client_options o = {.token = "tok", .client_name = "test"};
    moat_client *c = NULL;
    moat_status st;
    assert_int_equal(moat_client_connect(addr, &o, &c, &st), MOAT_OK);
    return c;
}
