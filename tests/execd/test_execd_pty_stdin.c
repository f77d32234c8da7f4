/* A PTY session's stdin three ways (integration, the real moat-execd): WebSocket frames under
 * back-pressure, the upload (POST /pty/{id}/stdin, hostile ones too) and the stdin socket that
 * lends the pipe. Waits are generous bounds against a hang, never a measure. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include "moat_test.h"

#include "pty_fixture.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stdin_back_pressure),
        cmocka_unit_test(test_stdin_upload),
        cmocka_unit_test(test_stdin_upload_hostile),
        cmocka_unit_test(test_stdin_upload_back_pressure),
        cmocka_unit_test(test_stdin_socket),
    };
    return moat_run_group_tests("test_execd_pty_stdin", tests, pty_fixture_setup,
                                pty_fixture_teardown);
}
