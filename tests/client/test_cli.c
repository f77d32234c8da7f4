/* The moat CLI (the real binary, run as a child process) against the fake
 * server, whose handlers answer with protobuf-c: the server side's library. */
#include <fcntl.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include "moat_test.h"

#include "fake_server.h"
#include "common/json.h"
#include "moat/v1/exec.pb-c.h"
#include "moat/v1/files.pb-c.h"
#include "moat/v1/health.pb-c.h"
#include "moat/v1/sandbox.pb-c.h"

#define CHAT "123e4567-e89b-12d3-a456-426614174000"

static uint8_t stored[1 << 20];
static size_t stored_len;
static bool stored_exists;
static uint32_t stored_mode;
/* Offsets and sizes of the Writes seen, in order. */
static uint64_t write_offsets[64];
static size_t write_lens[64];
static size_t nwrites;
/* The timeout_ms of the last RunCommand. */
static uint64_t run_timeout_ms;

static void reply_session(fake *s, uint32_t id, const char *session_id, const char *chat,
                          int64_t expires)
{
    Moat__V1__SandboxSession sess = MOAT__V1__SANDBOX_SESSION__INIT;
    Moat__V1__SandboxSession__LabelsEntry label = MOAT__V1__SANDBOX_SESSION__LABELS_ENTRY__INIT;
    Moat__V1__SandboxSession__LabelsEntry *labels[] = {&label};
    label.key = "chat_id";
    label.value = (char *)chat;
    sess.session_id = (char *)session_id;
    sess.chat_id = (char *)chat;
    sess.container_id = "c0ffee";
    sess.status = MOAT__V1__SESSION_STATUS__RUNNING;
    sess.created_at_ms = 1718000000000;
    sess.expires_at_ms = expires;
    sess.image = "moat-sandbox:latest";
    sess.n_labels = 1;
    sess.labels = labels;
    fake_reply(s, id, &sess.base);
}

static void send_event(fake *s, uint32_t id, Moat__V1__ExecEvent *ev)
{
    static uint8_t buf[4096];
    size_t n = moat__v1__exec_event__pack(ev, buf);
    fake_send_message(s, id, buf, n);
}

static void run_command(fake *s, uint32_t id, Moat__V1__RunCommandRequest *r)
{
    Moat__V1__ExecEvent ev = MOAT__V1__EXEC_EVENT__INIT;
    Moat__V1__ExecEvent__Output out = MOAT__V1__EXEC_EVENT__OUTPUT__INIT;
    char text[512];
    snprintf(text, sizeof text, "out:%s cwd=%s env=%s=%s\n", r->command, r->cwd,
             r->n_env ? r->env[0]->key : "", r->n_env ? r->env[0]->value : "");
    ev.sequence = 1;
    ev.kind_case = MOAT__V1__EXEC_EVENT__KIND_OUTPUT;
    ev.output = &out;
    out.stream = MOAT__V1__OUTPUT_STREAM__STDOUT;
    out.data.data = (uint8_t *)text;
    out.data.len = strlen(text);
    send_event(s, id, &ev);
    static uint8_t err_bytes[] = {'e', 'r', 'r', 0xff, '\n'};
    ev.sequence = 2;
    out.stream = MOAT__V1__OUTPUT_STREAM__STDERR;
    out.data.data = err_bytes;
    out.data.len = sizeof err_bytes;
    send_event(s, id, &ev);
    Moat__V1__ExecEvent__Exit exit_ev = MOAT__V1__EXEC_EVENT__EXIT__INIT;
    Moat__V1__ExitCode code = MOAT__V1__EXIT_CODE__INIT;
    exit_ev.exit_code = &code;
    run_timeout_ms = r->timeout_ms;
    /* A command with a timeout times out: the exit the CLI shows as 124. */
    if (r->timeout_ms > 0) {
        code.value_case = MOAT__V1__EXIT_CODE__VALUE_CODE;
        code.code = -1;
        exit_ev.timed_out = true;
    } else if (strstr(r->command, "lost")) {
        code.value_case = MOAT__V1__EXIT_CODE__VALUE_UNKNOWN_REASON;
        code.unknown_reason = "execd went away";
    } else {
        code.value_case = MOAT__V1__EXIT_CODE__VALUE_CODE;
        code.code = 7;
    }
    ev.sequence = 3;
    ev.kind_case = MOAT__V1__EXEC_EVENT__KIND_EXIT;
    ev.exit = &exit_ev;
    send_event(s, id, &ev);
    fake_send_end(s, id, MOAT_CODE_OK, "", "", NULL);
}

/* The fake's Exec/Interactive. Pipe mode runs "wc -l" (counts the newlines of
 * stdin, prints the count at close_stdin, exits 0) or "cat" (echoes stdin,
 * exits 3 at close_stdin after a line on stderr). A tty echoes what it gets
 * and reports resizes and signals; the byte 'q' ends it with exit 5, 'd'
 * drops the connection, and close_stdin ends it with exit 0. Every input is
 * granted back once handled, as moatd grants it. */
typedef struct interactive_state {
    bool tty;
    char command[32];
    uint64_t sequence;
    uint64_t newlines;
    bool stdin_closed;
} interactive_state;
static interactive_state term;

static void send_output(fake *s, uint32_t id, Moat__V1__OutputStream stream, const void *data,
                        size_t len)
{
    Moat__V1__ExecEvent ev = MOAT__V1__EXEC_EVENT__INIT;
    Moat__V1__ExecEvent__Output out = MOAT__V1__EXEC_EVENT__OUTPUT__INIT;
    ev.sequence = ++term.sequence;
    ev.kind_case = MOAT__V1__EXEC_EVENT__KIND_OUTPUT;
    ev.output = &out;
    out.stream = stream;
    out.data.data = (uint8_t *)data;
    out.data.len = len;
    send_event(s, id, &ev);
}

static void send_text(fake *s, uint32_t id, const char *text)
{
    send_output(s, id, MOAT__V1__OUTPUT_STREAM__STDOUT, text, strlen(text));
}

static void interactive_exit(fake *s, uint32_t id, int code)
{
    Moat__V1__ExecEvent ev = MOAT__V1__EXEC_EVENT__INIT;
    Moat__V1__ExecEvent__Exit exit_ev = MOAT__V1__EXEC_EVENT__EXIT__INIT;
    Moat__V1__ExitCode exit_code = MOAT__V1__EXIT_CODE__INIT;
    exit_code.value_case = MOAT__V1__EXIT_CODE__VALUE_CODE;
    exit_code.code = code;
    exit_ev.exit_code = &exit_code;
    ev.sequence = ++term.sequence;
    ev.kind_case = MOAT__V1__EXEC_EVENT__KIND_EXIT;
    ev.exit = &exit_ev;
    send_event(s, id, &ev);
    fake_send_end(s, id, MOAT_CODE_OK, "", "", NULL);
}

static void interactive_start(fake *s, uint32_t id, const Moat__V1__InteractiveStart *st)
{
    memset(&term, 0, sizeof term);
    if (strcmp(st->session_id, "nope") == 0) {
        fake_send_end(s, id, MOAT_CODE_NOT_FOUND, "no such session", "session_not_found", NULL);
        return;
    }
    term.tty = st->tty;
    snprintf(term.command, sizeof term.command, "%s", st->command);
    char text[160];
    snprintf(text, sizeof text, "%s rows=%u cols=%u term=%s command=%s\r\n",
             st->tty ? "tty" : "pipe", st->size ? st->size->rows : 0, st->size ? st->size->cols : 0,
             st->term, st->command);
    if (st->tty)
        send_text(s, id, text);
}

static void interactive_stdin(fake *s, uint32_t id, ProtobufCBinaryData in)
{
    if (!term.tty) {
        for (size_t i = 0; i < in.len; i++)
            term.newlines += in.data[i] == '\n';
        if (strcmp(term.command, "cat") == 0)
            send_output(s, id, MOAT__V1__OUTPUT_STREAM__STDOUT, in.data, in.len);
        return;
    }
    for (size_t i = 0; i < in.len; i++) {
        if (in.data[i] == 'q') {
            interactive_exit(s, id, 5);
            return;
        }
        if (in.data[i] == 'd') {
            s->drop = true;
            return;
        }
        if (in.data[i] == 3)
            send_text(s, id, "^C");
        else
            send_output(s, id, MOAT__V1__OUTPUT_STREAM__STDOUT, in.data + i, 1);
    }
}

static void interactive(fake *s, uint32_t id, moat_slice req)
{
    Moat__V1__InteractiveRequest *r =
        moat__v1__interactive_request__unpack(NULL, req.len, req.data);
    if (r == NULL ||
        (term.stdin_closed && r->input_case == MOAT__V1__INTERACTIVE_REQUEST__INPUT_STDIN)) {
        s->failed = true;
        moat__v1__interactive_request__free_unpacked(r, NULL);
        return;
    }
    char text[64];
    switch (r->input_case) {
    case MOAT__V1__INTERACTIVE_REQUEST__INPUT_START:
        interactive_start(s, id, r->start);
        break;
    case MOAT__V1__INTERACTIVE_REQUEST__INPUT_STDIN:
        interactive_stdin(s, id, r->stdin);
        break;
    case MOAT__V1__INTERACTIVE_REQUEST__INPUT_RESIZE:
        snprintf(text, sizeof text, "resize %ux%u\r\n", r->resize->rows, r->resize->cols);
        send_text(s, id, text);
        break;
    case MOAT__V1__INTERACTIVE_REQUEST__INPUT_SIGNAL:
        snprintf(text, sizeof text, "signal %s\r\n", r->signal);
        send_text(s, id, text);
        break;
    case MOAT__V1__INTERACTIVE_REQUEST__INPUT_CLOSE_STDIN:
        term.stdin_closed = true;
        if (strcmp(term.command, "'wc' '-l'") == 0) {
            snprintf(text, sizeof text, "%llu\n", (unsigned long long)term.newlines);
            send_text(s, id, text);
            interactive_exit(s, id, 0);
        } else if (strcmp(term.command, "cat") == 0) {
            send_output(s, id, MOAT__V1__OUTPUT_STREAM__STDERR, "bye\n", 4);
            interactive_exit(s, id, 3);
        } else if (term.tty) {
            interactive_exit(s, id, 0);
        }
        break;
    default:
        s->failed = true;
    }
    if (!s->drop)
        fake_grant(s, id, (uint32_t)req.len);
    moat__v1__interactive_request__free_unpacked(r, NULL);
}

static void handler(fake *s, uint32_t id, const char *method, moat_slice req)
{
    if (strcmp(method, "/moat.v1.Exec/Interactive") == 0) {
        interactive(s, id, req);
    } else if (strcmp(method, "/moat.v1.Sandboxes/CreateSession") == 0) {
        Moat__V1__CreateSessionRequest *r =
            moat__v1__create_session_request__unpack(NULL, req.len, req.data);
        if (r == NULL || strcmp(r->chat_id, CHAT) != 0)
            fake_send_end(s, id, MOAT_CODE_INVALID_ARGUMENT, "chat id is not a UUID",
                          "invalid_chat_id", NULL);
        else
            reply_session(s, id, r->force_new ? "sess-new" : "sess-1", r->chat_id,
                          1718000000000 + (int64_t)r->ttl_seconds * 1000);
        moat__v1__create_session_request__free_unpacked(r, NULL);
    } else if (strcmp(method, "/moat.v1.Sandboxes/GetSession") == 0) {
        Moat__V1__GetSessionRequest *r =
            moat__v1__get_session_request__unpack(NULL, req.len, req.data);
        if (strcmp(r->session_id, "sess-1") == 0) {
            reply_session(s, id, "sess-1", CHAT, 1718000060000);
        } else if (strcmp(r->session_id, "sess-odd") == 0) {
            /* SandboxSession written by hand: strings holding a NUL, bytes
             * that are not UTF-8, a quote in a label key, a cut sequence */
            static const uint8_t m[] = {0x0a, 3,   'a',  0,    'b',  0x12, 2,    'c', 0xff,
                                        0x20, 1,   0x3a, 8,    0x0a, 2,    'k',  '"', 0x12,
                                        2,    'v', 0,    0x42, 3,    'i',  0xe2, 0x82};
            fake_send_message(s, id, m, sizeof m);
            fake_send_end(s, id, MOAT_CODE_OK, "", "", NULL);
        } else {
            fake_send_end(s, id, MOAT_CODE_NOT_FOUND, "no such session", "session_not_found", NULL);
        }
        moat__v1__get_session_request__free_unpacked(r, NULL);
    } else if (strcmp(method, "/moat.v1.Sandboxes/RenewSession") == 0) {
        Moat__V1__RenewSessionRequest *r =
            moat__v1__renew_session_request__unpack(NULL, req.len, req.data);
        reply_session(s, id, r->session_id, CHAT, 1718000000000 + (int64_t)r->ttl_seconds * 1000);
        moat__v1__renew_session_request__free_unpacked(r, NULL);
    } else if (strcmp(method, "/moat.v1.Sandboxes/ListSessions") == 0) {
        Moat__V1__SandboxSession a = MOAT__V1__SANDBOX_SESSION__INIT,
                                 b = MOAT__V1__SANDBOX_SESSION__INIT;
        Moat__V1__SandboxSession *list[] = {&a, &b};
        a.session_id = "sess-1";
        a.chat_id = CHAT;
        a.status = MOAT__V1__SESSION_STATUS__RUNNING;
        b.session_id = "sess-2";
        b.chat_id = CHAT;
        b.status = MOAT__V1__SESSION_STATUS__EXPIRED;
        Moat__V1__ListSessionsResponse resp = MOAT__V1__LIST_SESSIONS_RESPONSE__INIT;
        resp.n_sessions = 2;
        resp.sessions = list;
        fake_reply(s, id, &resp.base);
    } else if (strcmp(method, "/moat.v1.Sandboxes/StopSession") == 0) {
        Moat__V1__StopSessionResponse resp = MOAT__V1__STOP_SESSION_RESPONSE__INIT;
        resp.stopped = true;
        fake_reply(s, id, &resp.base);
    } else if (strcmp(method, "/moat.v1.Exec/RunCommand") == 0) {
        Moat__V1__RunCommandRequest *r =
            moat__v1__run_command_request__unpack(NULL, req.len, req.data);
        run_command(s, id, r);
        moat__v1__run_command_request__free_unpacked(r, NULL);
    } else if (strcmp(method, "/moat.v1.Files/Write") == 0) {
        /* One file, as moatd keeps it: offset 0 creates or truncates, a later offset
         * needs the file; "short" paths answer one byte less than they got. */
        Moat__V1__WriteRequest *r = moat__v1__write_request__unpack(NULL, req.len, req.data);
        if (r->offset + r->data.len > sizeof stored || nwrites == 64) {
            fake_send_end(s, id, MOAT_CODE_OUT_OF_RANGE, "too big for the fake", "", NULL);
        } else if (r->offset > 0 && !stored_exists) {
            fake_send_end(s, id, MOAT_CODE_NOT_FOUND, "file not found", "execd_api_error", NULL);
        } else {
            write_offsets[nwrites] = r->offset;
            write_lens[nwrites++] = r->data.len;
            if (r->offset == 0) {
                stored_len = 0;
                stored_mode = r->mode;
                stored_exists = strstr(r->path, "gone") == NULL;
            }
            if (r->data.len > 0)
                memcpy(stored + r->offset, r->data.data, r->data.len);
            if (r->offset + r->data.len > stored_len)
                stored_len = r->offset + r->data.len;
            Moat__V1__WriteResponse resp = MOAT__V1__WRITE_RESPONSE__INIT;
            resp.written = r->data.len - (strstr(r->path, "short") && r->data.len ? 1 : 0);
            fake_reply(s, id, &resp.base);
        }
        moat__v1__write_request__free_unpacked(r, NULL);
    } else if (strcmp(method, "/moat.v1.Files/Read") == 0) {
        /* 40000-byte chunks with their offsets. */
        Moat__V1__FileChunk c = MOAT__V1__FILE_CHUNK__INIT;
        static uint8_t buf[40100];
        for (size_t off = 0; off < stored_len; off += 40000) {
            c.offset = off;
            c.data.data = stored + off;
            c.data.len = stored_len - off < 40000 ? stored_len - off : 40000;
            fake_send_message(s, id, buf, moat__v1__file_chunk__pack(&c, buf));
        }
        fake_send_end(s, id, MOAT_CODE_OK, "", "", NULL);
    } else if (strcmp(method, "/moat.v1.Health/Check") == 0) {
        Moat__V1__HealthCheckResponse resp = MOAT__V1__HEALTH_CHECK_RESPONSE__INIT;
        resp.status = MOAT__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
        resp.server_version = "fake/1";
        resp.docker_reachable = true;
        resp.live_sessions = 2;
        resp.pool_size = 2;
        resp.pool_ready = 1;
        fake_reply(s, id, &resp.base);
    } else {
        fake_send_end(s, id, MOAT_CODE_UNIMPLEMENTED, "no such method", "", NULL);
    }
}

static fake server;
static char addr[160];

typedef struct run {
    int status;
    char out[8192];
    size_t out_len;
    char err[8192];
    size_t err_len;
} run;

static void slurp(int fd, char *buf, size_t cap, size_t *len)
{
    *len = 0;
    ssize_t n;
    while (*len < cap - 1 && (n = read(fd, buf + *len, cap - 1 - *len)) > 0)
        *len += (size_t)n;
    buf[*len] = '\0';
}

/* When set, the next moat() reads its stdin from a file holding this text. */
static const char *cli_input;

/* Runs moat with args (NULL-terminated) against the fake; stdout and stderr
 * go to temp files so large outputs cannot block the child. */
static void moat(run *r, const char *a0, ...)
{
    const char *argv[32] = {MOAT_CLI_PATH, a0};
    int argc = 2;
    va_list ap;
    va_start(ap, a0);
    const char *a;
    while ((a = va_arg(ap, const char *)) != NULL && argc < 31)
        argv[argc++] = a;
    va_end(ap);
    argv[argc] = NULL;
    FILE *out = tmpfile(), *err = tmpfile(), *in = NULL;
    assert_non_null(out);
    assert_non_null(err);
    if (cli_input != NULL) {
        in = tmpfile();
        assert_non_null(in);
        assert_int_equal(fwrite(cli_input, 1, strlen(cli_input), in), strlen(cli_input));
        fflush(in);
        lseek(fileno(in), 0, SEEK_SET);
    }
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        if (in != NULL)
            dup2(fileno(in), 0);
        dup2(fileno(out), 1);
        dup2(fileno(err), 2);
        setenv("MOAT_ADDR", addr, 1);
        setenv("MOAT_TOKEN", "tok", 1);
        execv(MOAT_CLI_PATH, (char *const *)argv);
        _exit(127);
    }
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st));
    r->status = WEXITSTATUS(st);
    lseek(fileno(out), 0, SEEK_SET);
    lseek(fileno(err), 0, SEEK_SET);
    slurp(fileno(out), r->out, sizeof r->out, &r->out_len);
    slurp(fileno(err), r->err, sizeof r->err, &r->err_len);
    fclose(out);
    fclose(err);
    if (in != NULL)
        fclose(in);
}

static int setup(void **state)
{
    (void)state;
    fake_start_unix(&server, handler, NULL);
    snprintf(addr, sizeof addr, "unix:%s", server.path);
    return 0;
}

/* Stops the fake only when a failure came before the last test. */
static int teardown(void **state)
{
    (void)state;
    fake_stop(&server);
    return 0;
}

static void test_create_json(void **state)
{
    (void)state;
    static run r;
    moat(&r, "create", "--chat", CHAT, "--ttl", "60", "--json", NULL);
    assert_int_equal(r.status, 0);
    assert_int_equal(r.err_len, 0);
    /* One JSON document on one line. */
    assert_non_null(strchr(r.out, '\n'));
    assert_null(strchr(r.out, '\n') + 1 < r.out + r.out_len ? strchr(strchr(r.out, '\n') + 1, '\n')
                                                            : NULL);
    cJSON *o = moat_json_parse(r.out, r.out_len, MOAT_JSON_NUL_REJECT);
    assert_non_null(o);
    assert_string_equal(moat_json_str(o, "session_id", NULL), "sess-1");
    assert_string_equal(moat_json_str(o, "chat_id", NULL), CHAT);
    assert_string_equal(moat_json_str(o, "status", NULL), "RUNNING");
    assert_string_equal(moat_json_str(o, "expires_at", NULL), "2024-06-10T06:14:20+00:00");
    int64_t ms = 0;
    assert_true(moat_json_int(o, "expires_at_ms", &ms));
    assert_int_equal(ms, 1718000060000);
    assert_string_equal(
        moat_json_str(cJSON_GetObjectItemCaseSensitive(o, "labels"), "chat_id", NULL), CHAT);
    cJSON_Delete(o);

    moat(&r, "create", "--chat", CHAT, "--new", NULL);
    assert_int_equal(r.status, 0);
    assert_non_null(strstr(r.out, "sess-new\t" CHAT "\tRUNNING"));
}

/* cJSON strings end at a NUL: the CLI writes each NUL, and each byte that is
 * not UTF-8, as U+FFFD, so --json output stays one valid JSON document. */
static void test_json_odd_strings(void **state)
{
    (void)state;
    static run r;
    moat(&r, "get", "sess-odd", "--json", NULL);
    assert_int_equal(r.status, 0);
    assert_ptr_equal(strchr(r.out, '\n'), r.out + r.out_len - 1);
    cJSON *o = moat_json_parse(r.out, r.out_len, MOAT_JSON_NUL_REJECT);
    assert_non_null(o);
    assert_string_equal(moat_json_str(o, "session_id", NULL), "a\xef\xbf\xbd"
                                                              "b");
    assert_string_equal(moat_json_str(o, "chat_id", NULL), "c\xef\xbf\xbd");
    assert_string_equal(moat_json_str(o, "image", NULL), "i\xef\xbf\xbd\xef\xbf\xbd");
    assert_string_equal(moat_json_str(cJSON_GetObjectItemCaseSensitive(o, "labels"), "k\"", NULL),
                        "v\xef\xbf\xbd");
    int64_t ms = -1;
    assert_true(moat_json_int(o, "expires_at_ms", &ms));
    assert_int_equal(ms, 0);
    cJSON_Delete(o);

    moat(&r, "stop", "sess-\"1", "--json", NULL);
    assert_int_equal(r.status, 0);
    assert_string_equal(r.out, "{\"session_id\":\"sess-\\\"1\",\"stopped\":true}\n");
}

static void test_errors(void **state)
{
    (void)state;
    static run r;
    moat(&r, "create", "--chat", "not-a-uuid", NULL);
    assert_int_equal(r.status, 1);
    assert_string_equal(r.err,
                        "moat: INVALID_ARGUMENT: chat id is not a UUID (reason=invalid_chat_id)\n");
    moat(&r, "get", "nope", NULL);
    assert_int_equal(r.status, 1);
    assert_string_equal(r.err, "moat: NOT_FOUND: no such session (reason=session_not_found)\n");
    moat(&r, "frobnicate", NULL);
    assert_int_equal(r.status, 2);
    moat(&r, "renew", "sess-1", NULL); /* --ttl missing */
    assert_int_equal(r.status, 2);
    moat(&r, "--addr", "unix:/nonexistent/moat.sock", "health", NULL);
    assert_int_equal(r.status, 1);
    assert_non_null(strstr(r.err, "moat: UNAVAILABLE: "));
    assert_non_null(strstr(r.err, "(reason=connect_failed)"));
}

static void test_ls_get_renew_stop(void **state)
{
    (void)state;
    static run r;
    moat(&r, "ls", "--json", NULL);
    assert_int_equal(r.status, 0);
    char *second = strchr(r.out, '\n');
    assert_non_null(second);
    *second++ = '\0';
    cJSON *a = moat_json_parse(r.out, strlen(r.out), MOAT_JSON_NUL_REJECT);
    cJSON *b = moat_json_parse(second, strlen(second), MOAT_JSON_NUL_REJECT);
    assert_non_null(a);
    assert_non_null(b);
    assert_string_equal(moat_json_str(a, "session_id", NULL), "sess-1");
    assert_string_equal(moat_json_str(b, "status", NULL), "EXPIRED");
    cJSON_Delete(a);
    cJSON_Delete(b);
    moat(&r, "get", "sess-1", NULL);
    assert_int_equal(r.status, 0);
    assert_non_null(strstr(r.out, "sess-1\t" CHAT "\tRUNNING\t2024-06-10T06:14:20+00:00"));
    moat(&r, "renew", "sess-1", "--ttl", "120", "--json", NULL);
    assert_int_equal(r.status, 0);
    assert_non_null(strstr(r.out, "\"expires_at_ms\":1718000120000"));
    moat(&r, "stop", "sess-1", NULL);
    assert_int_equal(r.status, 0);
    assert_string_equal(r.out, "sess-1\tstopped\n");
}

static void test_exec(void **state)
{
    (void)state;
    static run r;
    moat(&r, "exec", "sess-1", "--cwd", "/w", "--env", "A=1", "--", "echo", "hi", NULL);
    assert_int_equal(r.status, 7);
    assert_string_equal(r.out, "out:'echo' 'hi' cwd=/w env=A=1\n");
    assert_int_equal(r.err_len, 5);
    assert_memory_equal(r.err, "err\xff\n", 5);
    assert_int_equal(run_timeout_ms, 0);
    moat(&r, "exec", "sess-1", "--timeout", "100", "--", "sleep", "5", NULL);
    assert_int_equal(run_timeout_ms, 100);
    assert_int_equal(r.status, 124);
    moat(&r, "exec", "sess-1", "--", "echo 'it''s' | wc -c", NULL); /* one word: as written */
    assert_int_equal(r.status, 7);
    assert_string_equal(r.out, "out:echo 'it''s' | wc -c cwd= env==\n");
    moat(&r, "exec", "sess-1", "--", "printf", "%s", "it's", NULL); /* quoted words */
    assert_string_equal(r.out, "out:'printf' '%s' 'it'\\''s' cwd= env==\n");
    moat(&r, "exec", "sess-1", "--", "lost", NULL);
    assert_int_equal(r.status, 255);
    assert_non_null(strstr(r.err, "moat: exit code unknown: execd went away"));
}

static void make_local(char *path, const uint8_t *data, size_t len, mode_t mode)
{
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, data, len), (ssize_t)len);
    fchmod(fd, mode);
    close(fd);
}

static void test_cp_and_health(void **state)
{
    (void)state;
    static run r;
    char local[] = "/tmp/moat-cli-test-XXXXXX";
    /* 300000 bytes: five Writes on the fake's 64 KiB window, in order */
    static uint8_t data[300000];
    for (size_t i = 0; i < sizeof data; i++)
        data[i] = (uint8_t)(i * 13 + i / 251);
    make_local(local, data, sizeof data, 0640);
    nwrites = 0;
    moat(&r, "cp", local, "sess-1:/workspace/f.bin", NULL);
    assert_int_equal(r.status, 0);
    assert_int_equal(r.err_len, 0);
    assert_int_equal(stored_len, sizeof data);
    assert_memory_equal(stored, data, sizeof data);
    assert_int_equal(stored_mode, 0640);
    assert_int_equal(nwrites, 5);
    uint64_t next = 0;
    for (size_t i = 0; i < nwrites; i++) {
        assert_int_equal(write_offsets[i], next);
        assert_true(write_lens[i] > 0 && write_lens[i] < FAKE_WINDOW);
        next += write_lens[i];
    }
    char back[64];
    snprintf(back, sizeof back, "%s.back", local);
    moat(&r, "cp", "sess-1:/workspace/f.bin", back, NULL);
    assert_int_equal(r.status, 0);
    int fd = open(back, O_RDONLY);
    assert_true(fd >= 0);
    static uint8_t got[sizeof data + 1];
    size_t total = 0;
    ssize_t n;
    while ((n = read(fd, got + total, sizeof got - total)) > 0)
        total += (size_t)n;
    assert_int_equal(total, sizeof data);
    assert_memory_equal(got, data, sizeof data);
    close(fd);
    unlink(local);
    unlink(back);

    /* an empty file: one Write at offset 0 with no data, which creates it */
    char empty[] = "/tmp/moat-cli-test-XXXXXX";
    make_local(empty, data, 0, 0600);
    nwrites = 0;
    stored_exists = false;
    moat(&r, "cp", empty, "sess-1:/workspace/empty", NULL);
    assert_int_equal(r.status, 0);
    assert_int_equal(nwrites, 1);
    assert_int_equal(write_offsets[0], 0);
    assert_int_equal(write_lens[0], 0);
    assert_true(stored_exists);
    assert_int_equal(stored_len, 0);
    assert_int_equal(stored_mode, 0600);
    unlink(empty);

    /* the server wrote less than it was sent: DATA_LOSS, non-zero */
    char small[] = "/tmp/moat-cli-test-XXXXXX";
    make_local(small, data, 1000, 0644);
    moat(&r, "cp", small, "sess-1:/workspace/short.bin", NULL);
    assert_int_equal(r.status, 1);
    assert_non_null(
        strstr(r.err, "moat: DATA_LOSS: the server wrote 999 of 1000 bytes at offset 0"));
    unlink(small);
    /* a later piece fails (the file vanished): its status name and reason */
    char big[] = "/tmp/moat-cli-test-XXXXXX";
    make_local(big, data, 100000, 0644);
    moat(&r, "cp", big, "sess-1:/workspace/gone.bin", NULL);
    assert_int_equal(r.status, 1);
    assert_string_equal(r.err, "moat: NOT_FOUND: file not found (reason=execd_api_error)\n");
    unlink(big);
    /* a local file that is not there */
    moat(&r, "cp", "/nonexistent/moat-cli", "sess-1:/workspace/x", NULL);
    assert_int_equal(r.status, 1);
    assert_non_null(strstr(r.err, "moat: NOT_FOUND: "));

    moat(&r, "health", NULL);
    assert_int_equal(r.status, 0);
    assert_string_equal(r.out, "SERVING fake/1 docker_reachable=true live_sessions=2 pool_size=2 "
                               "pool_ready=1 pool_failing=false\n");
    moat(&r, "health", "--json", NULL);
    assert_int_equal(r.status, 0);
    assert_string_equal(r.out, "{\"status\":\"SERVING\",\"server_version\":\"fake/"
                               "1\",\"docker_reachable\":true,\"live_sessions\":2,\"pool_size\":"
                               "2,\"pool_ready\":1,\"pool_failing\":false}\n");
}

static void test_exec_stdin(void **state)
{
    (void)state;
    static run r;
    cli_input = "a\nb\n";
    moat(&r, "exec", "-i", "sess-1", "--", "wc", "-l", NULL);
    assert_int_equal(r.status, 0);
    assert_string_equal(r.out, "2\n");
    /* stdout and stderr apart, the remote exit code as the CLI's */
    cli_input = "hello\n";
    moat(&r, "exec", "sess-1", "--interactive", "--", "cat", NULL);
    assert_int_equal(r.status, 3);
    assert_string_equal(r.out, "hello\n");
    assert_string_equal(r.err, "bye\n");
    /* nothing to read at all: close_stdin at once */
    cli_input = "";
    moat(&r, "exec", "-i", "sess-1", "--", "wc", "-l", NULL);
    assert_int_equal(r.status, 0);
    assert_string_equal(r.out, "0\n");
    /* the server's refusal, as any call's */
    cli_input = "x\n";
    moat(&r, "exec", "-i", "nope", "--", "cat", NULL);
    assert_int_equal(r.status, 1);
    assert_string_equal(r.err, "moat: NOT_FOUND: no such session (reason=session_not_found)\n");
    /* a terminal needs one at this end, as docker exec -it does */
    moat(&r, "exec", "-it", "sess-1", "--", "cat", NULL);
    assert_int_equal(r.status, 1);
    assert_string_equal(r.err, "moat: INVALID_ARGUMENT: the input device is not a TTY "
                               "(reason=not_a_tty)\n");
    cli_input = NULL;
    /* an interactive call has no environment or timeout; -i is exec's */
    moat(&r, "exec", "-i", "sess-1", "--env", "A=1", "--", "cat", NULL);
    assert_int_equal(r.status, 2);
    moat(&r, "exec", "-i", "sess-1", "--timeout", "5", "--", "cat", NULL);
    assert_int_equal(r.status, 2);
    moat(&r, "ls", "-i", NULL);
    assert_int_equal(r.status, 2);
    moat(&r, "shell", NULL);
    assert_int_equal(r.status, 2);
}

/* The CLI on a pty of its own (its controlling terminal, 30 x 100,
 * TERM=xterm-test), as a person's terminal runs it; the test types on the
 * master side. A failed test's CLI is killed by the teardown. */
typedef struct pty_run {
    int master, slave;
    pid_t pid;
    FILE *err;
    char seen[8192];
    size_t seen_len;
} pty_run;
static pty_run pty = {.master = -1, .slave = -1};

static void pty_start(const char *const *args)
{
    const char *argv[16] = {MOAT_CLI_PATH};
    for (int i = 0; args[i] != NULL && i < 14; i++)
        argv[i + 1] = args[i];
    struct winsize ws = {.ws_row = 30, .ws_col = 100};
    assert_int_equal(openpty(&pty.master, &pty.slave, NULL, NULL, &ws), 0);
    pty.err = tmpfile();
    assert_non_null(pty.err);
    pty.seen_len = 0;
    pty.pid = fork();
    assert_true(pty.pid >= 0);
    if (pty.pid == 0) {
        setsid();
        ioctl(pty.slave, TIOCSCTTY, 0);
        dup2(pty.slave, 0);
        dup2(pty.slave, 1);
        dup2(fileno(pty.err), 2);
        close(pty.master);
        setenv("MOAT_ADDR", addr, 1);
        setenv("MOAT_TOKEN", "tok", 1);
        setenv("TERM", "xterm-test", 1);
        execv(MOAT_CLI_PATH, (char *const *)argv);
        _exit(127);
    }
}

/* Reads the terminal's output until text has appeared in it. */
static void pty_expect(const char *text)
{
    while (memmem(pty.seen, pty.seen_len, text, strlen(text)) == NULL) {
        struct pollfd pfd = {pty.master, POLLIN, 0};
        /* bounded only so that a broken CLI fails the test instead of hanging it */
        assert_int_equal(poll(&pfd, 1, 30000), 1);
        ssize_t n = read(pty.master, pty.seen + pty.seen_len, sizeof pty.seen - 1 - pty.seen_len);
        assert_true(n > 0);
        pty.seen_len += (size_t)n;
    }
}

static void pty_type(const char *bytes)
{
    assert_int_equal(write(pty.master, bytes, strlen(bytes)), (ssize_t)strlen(bytes));
}

/* Whether the terminal is in the cooked mode it started in (line editing, echo). */
static bool pty_cooked(void)
{
    struct termios t;
    assert_int_equal(tcgetattr(pty.slave, &t), 0);
    return (t.c_lflag & ICANON) && (t.c_lflag & ECHO) && (t.c_lflag & ISIG) && (t.c_oflag & OPOST);
}

/* The CLI's exit status; the terminal is closed after. */
static int pty_finish(char *err, size_t cap)
{
    int st;
    assert_int_equal(waitpid(pty.pid, &st, 0), pty.pid);
    pty.pid = 0;
    size_t len;
    lseek(fileno(pty.err), 0, SEEK_SET);
    slurp(fileno(pty.err), err, cap, &len);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static int pty_teardown(void **state)
{
    (void)state;
    if (pty.pid > 0) {
        kill(pty.pid, SIGKILL);
        waitpid(pty.pid, NULL, 0);
        pty.pid = 0;
    }
    if (pty.master >= 0)
        close(pty.master);
    if (pty.slave >= 0)
        close(pty.slave);
    if (pty.err != NULL)
        fclose(pty.err);
    pty.master = pty.slave = -1;
    pty.err = NULL;
    return 0;
}

/* `moat shell`: raw mode while it runs (Ctrl-C travels as a byte), the first
 * size and TERM in the start, SIGWINCH as a resize, the remote exit code, and
 * cooked mode again after. */
static void test_shell_terminal(void **state)
{
    (void)state;
    static char err[4096];
    const char *args[] = {"shell", "sess-1", NULL};
    pty_start(args);
    pty_expect("tty rows=30 cols=100 term=xterm-test command=\r\n");
    assert_false(pty_cooked());
    pty_type("hi\x03");
    pty_expect("hi^C");
    struct winsize ws = {.ws_row = 50, .ws_col = 132};
    assert_int_equal(ioctl(pty.master, TIOCSWINSZ, &ws), 0);
    pty_expect("resize 50x132\r\n");
    /* signals that reach the CLI itself go to the remote process group */
    kill(pty.pid, SIGINT);
    pty_expect("signal SIGINT\r\n");
    pty_type("q");
    assert_int_equal(pty_finish(err, sizeof err), 5);
    assert_true(pty_cooked());
    assert_string_equal(err, "");
}

/* The terminal is restored however the session ends: SIGTERM and SIGHUP to the
 * CLI (128 + the signal, as a shell reports it), and the connection dropping
 * (an error with its status). */
static void test_terminal_restored_on_every_exit(void **state)
{
    (void)state;
    static char err[4096];
    const char *exec_args[] = {"exec", "-it", "sess-1", "--", "cat", NULL};
    const char *shell_args[] = {"shell", "sess-1", NULL};
    static const int signals[] = {SIGTERM, SIGHUP};
    for (size_t i = 0; i < 2; i++) {
        pty_start(exec_args);
        pty_expect("tty rows=30 cols=100 term=xterm-test command=cat\r\n");
        assert_false(pty_cooked());
        kill(pty.pid, signals[i]);
        assert_int_equal(pty_finish(err, sizeof err), 128 + signals[i]);
        assert_true(pty_cooked());
        pty_teardown(NULL);
    }
    pty_start(shell_args);
    pty_expect("command=\r\n");
    assert_false(pty_cooked());
    pty_type("d");
    assert_int_equal(pty_finish(err, sizeof err), 1);
    assert_true(pty_cooked());
    assert_non_null(strstr(err, "moat: UNAVAILABLE: "));
}

/* The last test: no request the CLI sent broke a check on the fake server's thread. */
static void test_server_saw_no_protocol_violation(void **state)
{
    (void)state;
    assert_true(fake_stop(&server));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_create_json),
        cmocka_unit_test(test_json_odd_strings),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_ls_get_renew_stop),
        cmocka_unit_test(test_exec),
        cmocka_unit_test(test_cp_and_health),
        cmocka_unit_test(test_exec_stdin),
        cmocka_unit_test_teardown(test_shell_terminal, pty_teardown),
        cmocka_unit_test_teardown(test_terminal_restored_on_every_exit, pty_teardown),
        cmocka_unit_test(test_server_saw_no_protocol_violation),
    };
    return moat_run_group_tests("test_cli", tests, setup, teardown);
}
