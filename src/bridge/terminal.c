/* Terminal sessions over execd's WebSocket (OpenSandbox's PTY API, docs/bridge.md "Terminals").
 * curl connects (through the bridge's pinned-socket callback) and makes the upgrade: a ws://
 * transfer in raw mode hands the write callback the frames as they arrive, and back-pressure
 * pauses it like any transfer. libwslay frames both directions: curl 7.88's own framing stalls
 * on a frame header split across reads and loses framing on a partial write. Our frames go out
 * through a duplicate of curl's socket (curl writes nothing after its request), watched through
 * the loop's socket function while execd's socket is full. The ways stdin reaches the process
 * are terminal_stdin.c's. */
#include "terminal_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include <wslay/wslay.h>

/* Frame codes of the PTY protocol (first byte of a binary message). */
#define PTY_STDIN  0x00
#define PTY_STDOUT 0x01
#define PTY_STDERR 0x02
#define PTY_REPLAY 0x03
/* A replay is the 1 MiB ring at most, with its code and 8-byte offset. */
#define PTY_MAX_MESSAGE ((1u << 20) + 64u)
/* Close code of a client that another attach took over. */
#define WS_TAKEN_OVER 4001

static moat_log_limit bad_frame_log = MOAT_LOG_LIMIT_INIT;

static void terminal_free(moat_bridge_terminal *t)
{
    moat__terminal_lend_end(t, false);
    if (t->wfd >= 0) {
        if (t->b->sock_fn != NULL)
            t->b->sock_fn(t->b->loop_ud, t->wfd, MOAT_BRIDGE_POLL_REMOVE);
        close(t->wfd);
    }
    if (t->ws != NULL)
        wslay_event_context_free(t->ws);
    free(t->stdin_q.data);
    free(t->unix_socket);
    free(t->base_url);
    free(t->token);
    free(t->command);
    free(t->cwd);
    free(t->term);
    free(t);
}

static void terminal_end(moat_bridge_terminal *t, const moat_status *st)
{
    if (t->ended)
        return;
    t->ended = true;
    moat__terminal_lend_end(t, false);
    if (t->up != NULL) {
        bridge_req *up = t->up;
        t->up = NULL;
        up->owner = NULL;
        moat__req_cancel(up);
    }
    moat__terminal_unlink(t->b, t);
    t->c.on_end(t->c.ud, t, st);
    terminal_free(t);
}

/* ------------------------------------------------------------ wslay's I/O */

static ssize_t ws_recv(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags, void *ud)
{
    (void)flags;
    moat_bridge_terminal *t = ud;
    if (t->in_len == 0) {
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    size_t n = len < t->in_len ? len : t->in_len;
    memcpy(buf, t->in, n);
    t->in += n;
    t->in_len -= n;
    return (ssize_t)n;
}

static ssize_t ws_send(wslay_event_context_ptr ctx, const uint8_t *data, size_t len, int flags,
                       void *ud)
{
    (void)flags;
    moat_bridge_terminal *t = ud;
    ssize_t n;
    do
        n = send(t->fd, data, len, MSG_NOSIGNAL | MSG_DONTWAIT);
    while (n < 0 && errno == EINTR);
    if (n < 0) {
        wslay_event_set_error(ctx, errno == EAGAIN || errno == EWOULDBLOCK
                                       ? WSLAY_ERR_WOULDBLOCK
                                       : WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
    return n;
}

static int ws_genmask(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, void *ud)
{
    (void)ctx;
    (void)ud;
    return getrandom(buf, len, 0) == (ssize_t)len ? 0 : -1;
}

/* Writes what wslay holds; watches the socket for room when execd is not reading. on_writable
 * is told only when the socket's readiness drove the write, never from inside an input call. */
static void flush_output(moat_bridge_terminal *t, bool notify)
{
    if (!t->upgraded || t->ended)
        return;
    size_t before = wslay_event_get_queued_msg_length(t->ws);
    if (wslay_event_want_write(t->ws) && wslay_event_send(t->ws) != 0)
        return; /* the socket broke: curl's read side sees it and ends the transfer */
    bool waiting = wslay_event_want_write(t->ws);
    if (waiting && t->wfd < 0 && t->b->sock_fn != NULL) {
        t->wfd = fcntl(t->fd, F_DUPFD_CLOEXEC, 0);
        if (t->wfd >= 0)
            t->b->sock_fn(t->b->loop_ud, t->wfd, MOAT_BRIDGE_POLL_OUT);
    } else if (!waiting && t->wfd >= 0) {
        t->b->sock_fn(t->b->loop_ud, t->wfd, MOAT_BRIDGE_POLL_REMOVE);
        close(t->wfd);
        t->wfd = -1;
    }
    if (notify && wslay_event_get_queued_msg_length(t->ws) < before && t->c.on_writable != NULL)
        t->c.on_writable(t->c.ud, t);
}

bool moat__terminal_socket_action(moat_bridge *b, int fd)
{
    for (moat_bridge_terminal *t = b->terminals; t != NULL; t = t->next) {
        if (t->wfd == fd) {
            flush_output(t, true);
            return true;
        }
        if (moat__terminal_stdin_fd_action(t, fd))
            return true;
    }
    return false;
}

/* ------------------------------------------------------------ execd's messages */

static void deliver_output(moat_bridge_terminal *t, moat_bridge_stream stream, const uint8_t *p,
                           size_t len)
{
    while (len > 0 && !t->ended) {
        size_t n = len < MOAT_BRIDGE_MAX_BINARY ? len : MOAT_BRIDGE_MAX_BINARY;
        t->credit -= (int64_t)(n + MOAT_BRIDGE_TERMINAL_OUTPUT_OVERHEAD);
        t->c.on_output(t->c.ud, t, stream, p, n);
        p += n;
        len -= n;
    }
}

static void on_text(moat_bridge_terminal *t, const uint8_t *msg, size_t len)
{
    cJSON *j = moat_json_parse((const char *)msg, len, MOAT_JSON_NUL_REJECT);
    const char *type = j != NULL ? cJSON_GetStringValue(cJSON_GetObjectItem(j, "type")) : NULL;
    int64_t code = 0;
    if (type != NULL && strcmp(type, "connected") == 0) {
        moat__terminal_on_connected(t, cJSON_GetStringValue(cJSON_GetObjectItem(j, "mode")));
    } else if (type != NULL && strcmp(type, "exit") == 0 && moat_json_int(j, "exit_code", &code)) {
        if (!t->exited) {
            t->exited = true;
            t->c.on_exit(t->c.ud, t, code < INT32_MIN || code > INT32_MAX ? -1 : (int)code);
        }
    } else if (type != NULL && strcmp(type, "error") == 0) {
        const char *why = cJSON_GetStringValue(cJSON_GetObjectItem(j, "error"));
        moat_log(MOAT_LOG_WARN, "terminal_error", "session_id=%s code=%s error=\"%s\"",
                 t->session_id, cJSON_GetStringValue(cJSON_GetObjectItem(j, "code")),
                 why != NULL ? why : "");
    }
    /* pong needs nothing; anything else is ignored as newer execd's news. */
    cJSON_Delete(j);
}

static void ws_on_message(wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *m,
                          void *ud)
{
    (void)ctx;
    moat_bridge_terminal *t = ud;
    if (m->opcode == WSLAY_TEXT_FRAME) {
        on_text(t, m->msg, m->msg_length);
        return;
    }
    if (m->opcode == WSLAY_CONNECTION_CLOSE) {
        t->close_code = m->status_code;
        return;
    }
    if (m->opcode != WSLAY_BINARY_FRAME || m->msg_length == 0)
        return;
    const uint8_t *p = m->msg + 1;
    size_t len = m->msg_length - 1;
    switch (m->msg[0]) {
    case PTY_STDOUT:
        deliver_output(t, MOAT_BRIDGE_STDOUT, p, len);
        break;
    case PTY_STDERR:
        deliver_output(t, MOAT_BRIDGE_STDERR, p, len);
        break;
    case PTY_REPLAY:
        if (len >= 8)
            deliver_output(t, MOAT_BRIDGE_STDOUT, p + 8, len - 8);
        break;
    default:
        moat_log_limited(&bad_frame_log, MOAT_LOG_WARN, "terminal_bad_frame",
                         "session_id=%s code=%u", t->session_id, m->msg[0]);
    }
}

/* curl's write callback in raw mode: the WebSocket's bytes as they come. */
static size_t ws_write(bridge_req *r, const char *p, size_t n)
{
    moat_bridge_terminal *t = r->owner;
    if (t->credit <= 0) {
        t->paused = true;
        return CURL_WRITEFUNC_PAUSE;
    }
    if (!t->upgraded) {
        t->upgraded = true;
        if (t->c.on_ready != NULL)
            t->c.on_ready(t->c.ud, t, t->session_id);
    }
    t->in = (const uint8_t *)p;
    t->in_len = n;
    int rc = wslay_event_recv(t->ws);
    t->in_len = 0;
    if (rc != 0 || t->ended)
        return 0;
    flush_output(t, true);
    return n;
}

static curl_socket_t take_socket(void *ud, curl_socket_t fd, curlsocktype purpose)
{
    (void)purpose;
    ((moat_bridge_terminal *)ud)->fd = (int)fd;
    return CURL_SOCKOPT_OK;
}

static void ws_done(bridge_req *r, CURLcode rc)
{
    moat_bridge_terminal *t = r->owner;
    t->req = NULL;
    moat_status st;
    if (t->exited && !t->closing) {
        moat_status_clear(&st);
    } else if (t->close_code == WS_TAKEN_OVER) {
        moat_status_set(&st, MOAT_CODE_ABORTED, "superseded_by_attach",
                        "another client attached to this terminal");
    } else if (!t->upgraded && rc == CURLE_HTTP_RETURNED_ERROR) {
        moat__req_fail_status(r, CURLE_OK, &st);
    } else if (t->upgraded && !t->closing) {
        /* the 101 made the transfer a success to curl, however it ended */
        moat_status_set(&st, MOAT_CODE_UNAVAILABLE, "execd_reset",
                        "execd closed the terminal's connection before the process exited");
    } else {
        moat__req_fail_status(r, rc, &st);
    }
    terminal_end(t, &st);
}

static moat_err connect_ws(moat_bridge_terminal *t, moat_status *st)
{
    char path[320];
    int len = snprintf(path, sizeof(path), "/pty/%s/ws?pty=%d", t->session_id, t->opts.tty ? 1 : 0);
    if (t->term != NULL)
        len += snprintf(path + len, sizeof(path) - (size_t)len, "&term=%s", t->term);
    if (t->opts.rows > 0 && t->opts.cols > 0)
        len += snprintf(path + len, sizeof(path) - (size_t)len, "&rows=%u&cols=%u", t->opts.rows,
                        t->opts.cols);
    if (t->attaching)
        len += snprintf(path + len, sizeof(path) - (size_t)len, "&takeover=1");
    if (t->attaching && t->opts.replay)
        snprintf(path + len, sizeof(path) - (size_t)len, "&since=%llu",
                 (unsigned long long)t->opts.since);
    bridge_req *r = moat__req_new(t->b, &t->ep, "GET", path, NULL, st);
    if (r == NULL)
        return MOAT_E_NOMEM;
    /* ws:// on the same host, port or socket as every other call */
    const char *base = t->ep.unix_socket != NULL ? "http://localhost" : t->ep.base_url;
    char url[512];
    int n = snprintf(url, sizeof(url), "ws%s%s", base + 4, path);
    if (strncmp(base, "http", 4) != 0 || n < 0 || (size_t)n >= sizeof(url)) {
        moat__req_discard(r);
        moat_status_set(st, MOAT_CODE_INVALID_ARGUMENT, "bad_endpoint",
                        "execd's base URL is not http://");
        return MOAT_E_INVAL;
    }
    curl_easy_setopt(r->easy, CURLOPT_URL, url);
    curl_easy_setopt(r->easy, CURLOPT_WS_OPTIONS, (long)CURLWS_RAW_MODE);
    curl_easy_setopt(r->easy, CURLOPT_TIMEOUT_MS, 0L);
    /* Keystrokes and screens, not bulk: a small receive buffer keeps an idle terminal cheap. */
    curl_easy_setopt(r->easy, CURLOPT_BUFFERSIZE, (long)MOAT_BRIDGE_TERMINAL_RECV_BUFFER);
    /* A connection of its own: take_socket must see it, and it is never handed back. */
    curl_easy_setopt(r->easy, CURLOPT_FRESH_CONNECT, 1L);
    curl_easy_setopt(r->easy, CURLOPT_FORBID_REUSE, 1L);
    curl_easy_setopt(r->easy, CURLOPT_SOCKOPTFUNCTION, take_socket);
    curl_easy_setopt(r->easy, CURLOPT_SOCKOPTDATA, t);
    r->write = ws_write;
    r->done = ws_done;
    r->owner = t;
    t->req = r;
    moat_err err = moat__req_start(r, st);
    if (err != MOAT_OK)
        t->req = NULL;
    return err;
}

static void created(void *ud, const moat_status *st, const char *session_id)
{
    moat_bridge_terminal *t = ud;
    t->creating = false;
    moat_status err;
    if (t->closing) {
        /* for a consumer that ends the session it closed (moat_bridge_terminal_session_id) */
        if (st->code == MOAT_CODE_OK && strlen(session_id) < sizeof(t->session_id))
            snprintf(t->session_id, sizeof(t->session_id), "%s", session_id);
        moat_status_set(&err, MOAT_CODE_CANCELLED, "cancelled", "the terminal was closed");
        terminal_end(t, &err);
        return;
    }
    const char *execd_code = moat_status_detail_get(st, "execd_code");
    if (st->code == MOAT_CODE_RESOURCE_EXHAUSTED && execd_code != NULL &&
        strcmp(execd_code, "TOO_MANY_SESSIONS") == 0) {
        /* A limit the client can act on, not execd failing: a reason of its own. */
        moat_status_set(&err, MOAT_CODE_RESOURCE_EXHAUSTED, "too_many_terminals",
                        "the sandbox has as many live terminal sessions as execd keeps (running, "
                        "or detached and waiting for a reattach); end one, or wait for the idle "
                        "timeout of a detached one (%s)",
                        st->message);
        terminal_end(t, &err);
        return;
    }
    if (st->code != MOAT_CODE_OK) {
        terminal_end(t, st);
        return;
    }
    if (strlen(session_id) >= sizeof(t->session_id)) {
        moat_status_set(&err, MOAT_CODE_INTERNAL, "execd_bad_answer",
                        "execd's terminal session id is too long");
        terminal_end(t, &err);
        return;
    }
    snprintf(t->session_id, sizeof(t->session_id), "%s", session_id);
    if (connect_ws(t, &err) != MOAT_OK)
        terminal_end(t, &err);
}

static char *dup_or_null(const char *s, bool *failed)
{
    if (s == NULL || *s == '\0')
        return NULL;
    char *d = strdup(s);
    if (d == NULL)
        *failed = true;
    return d;
}

static bool term_name_ok(const char *term)
{
    size_t n = strlen(term);
    if (n == 0 || n > 64)
        return false;
    for (size_t i = 0; i < n; i++)
        if (strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._+-", term[i]) ==
            NULL)
            return false;
    return true;
}

moat_err moat_bridge_terminal_open(moat_bridge *b, const moat_bridge_endpoint *ep,
                                   const moat_bridge_terminal_opts *opts,
                                   const moat_bridge_terminal_consumer *consumer, uint64_t credit,
                                   moat_bridge_terminal **out, moat_status *st)
{
    if (opts->term != NULL && *opts->term && !term_name_ok(opts->term)) {
        moat_status_set(st, MOAT_CODE_INVALID_ARGUMENT, "bad_term",
                        "term must be 1 to 64 letters, digits or ._+-");
        return MOAT_E_INVAL;
    }
    if (opts->rows > UINT16_MAX || opts->cols > UINT16_MAX) {
        moat_status_set(st, MOAT_CODE_INVALID_ARGUMENT, "bad_terminal_size",
                        "rows and cols are at most 65535");
        return MOAT_E_INVAL;
    }
    bool attaching = opts->attach_id != NULL && *opts->attach_id;
    char attach_id[MOAT_UUID_STR_LEN];
    if (attaching && moat_uuid_canonicalize(opts->attach_id, attach_id) != MOAT_OK) {
        moat_status_set(st, MOAT_CODE_INVALID_ARGUMENT, "invalid_attach_id",
                        "attach_id is not a terminal session's id");
        return MOAT_E_INVAL;
    }
    moat_bridge_terminal *t = calloc(1, sizeof(*t));
    bool failed = t == NULL;
    if (t != NULL) {
        t->b = b;
        t->fd = t->wfd = t->lend_fd = t->pipe_fd = -1;
        t->credit = credit > INT64_MAX / 2 ? INT64_MAX / 2 : (int64_t)credit;
        t->c = *consumer;
        t->opts = *opts;
        t->attaching = attaching;
        /* A new session's mode is ours; a reattached one's comes with execd's connected. */
        t->mode_known = !attaching;
        t->pipe_mode = !opts->tty;
        t->unix_socket = dup_or_null(ep->unix_socket, &failed);
        t->base_url = dup_or_null(ep->base_url, &failed);
        t->token = dup_or_null(ep->access_token, &failed);
        t->command = dup_or_null(opts->command, &failed);
        t->cwd = dup_or_null(opts->cwd, &failed);
        t->term = dup_or_null(opts->term, &failed);
        t->ep.unix_socket = t->unix_socket;
        t->ep.base_url = t->base_url;
        t->ep.access_token = t->token;
        t->ep.scope = ep->scope;
        struct wslay_event_callbacks cbs = {ws_recv, ws_send, ws_genmask,   NULL,
                                            NULL,    NULL,    ws_on_message};
        if (!failed && wslay_event_context_client_init(&t->ws, &cbs, t) != 0)
            failed = true;
    }
    if (failed) {
        if (t != NULL)
            terminal_free(t);
        moat_status_set(st, MOAT_CODE_RESOURCE_EXHAUSTED, "no_memory", "out of memory");
        return MOAT_E_NOMEM;
    }
    wslay_event_config_set_max_recv_msg_length(t->ws, PTY_MAX_MESSAGE);
    moat_err err;
    if (t->attaching) {
        snprintf(t->session_id, sizeof(t->session_id), "%s", attach_id);
        err = connect_ws(t, st);
    } else {
        err = moat_bridge_create_pty(b, &t->ep, t->command, t->cwd, created, t, st);
        t->creating = err == MOAT_OK;
    }
    if (err != MOAT_OK) {
        terminal_free(t);
        return err;
    }
    moat__terminal_link(b, t);
    *out = t;
    return MOAT_OK;
}

/* ------------------------------------------------------------ input */

static moat_err queue_message(moat_bridge_terminal *t, uint8_t opcode, const uint8_t *msg,
                              size_t len)
{
    if (t->ended || t->closing)
        return MOAT_E_STATE;
    struct wslay_event_msg m = {opcode, msg, len};
    if (wslay_event_queue_msg(t->ws, &m) != 0)
        return MOAT_E_NOMEM;
    flush_output(t, false);
    return MOAT_OK;
}

/* Stdin as WebSocket messages of a size execd takes (it closes the WebSocket on one past
 * 256 KiB). */
moat_err moat__terminal_ws_stdin(moat_bridge_terminal *t, const uint8_t *data, size_t len)
{
    size_t first =
        len < MOAT_BRIDGE_TERMINAL_STDIN_MESSAGE ? len : MOAT_BRIDGE_TERMINAL_STDIN_MESSAGE;
    uint8_t *msg = malloc(first + 1);
    if (msg == NULL)
        return MOAT_E_NOMEM;
    moat_err err = MOAT_OK;
    size_t off = 0;
    do {
        size_t n = len - off < first ? len - off : first;
        msg[0] = PTY_STDIN;
        if (n > 0)
            memcpy(msg + 1, data + off, n);
        err = queue_message(t, WSLAY_BINARY_FRAME, msg, n + 1);
        off += n;
    } while (err == MOAT_OK && off < len);
    free(msg);
    return err;
}

moat_err moat__terminal_queue_text(moat_bridge_terminal *t, const char *text)
{
    return queue_message(t, WSLAY_TEXT_FRAME, (const uint8_t *)text, strlen(text));
}

moat_err moat_bridge_terminal_resize(moat_bridge_terminal *t, uint32_t rows, uint32_t cols)
{
    char json[80];
    snprintf(json, sizeof(json), "{\"type\":\"resize\",\"cols\":%u,\"rows\":%u}", cols, rows);
    return moat__terminal_queue_text(t, json);
}

moat_err moat_bridge_terminal_signal(moat_bridge_terminal *t, const char *name)
{
    static const char *const known[] = {"SIGINT", "SIGTERM", "SIGKILL", "SIGQUIT", "SIGHUP"};
    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++) {
        if (strcmp(name, known[i]) == 0) {
            char json[64];
            snprintf(json, sizeof(json), "{\"type\":\"signal\",\"signal\":\"%s\"}", known[i]);
            return moat__terminal_queue_text(t, json);
        }
    }
    return MOAT_E_INVAL;
}

size_t moat_bridge_terminal_queued(const moat_bridge_terminal *t)
{
    return wslay_event_get_queued_msg_length(t->ws) + t->stdin_q.len;
}

void moat_bridge_terminal_credit(moat_bridge_terminal *t, uint64_t bytes)
{
    /* credit stays far from overflow whatever a consumer grants */
    const int64_t most = INT64_MAX / 2;
    if (bytes >= (uint64_t)most || t->credit >= most - (int64_t)bytes)
        t->credit = most;
    else
        t->credit += (int64_t)bytes;
    if (t->paused && t->credit > 0 && t->req != NULL) {
        t->paused = false;
        moat__req_unpause(t->req);
    }
}

void moat_bridge_terminal_close(moat_bridge_terminal *t)
{
    if (t->closing || t->ended)
        return;
    t->closing = true;
    if (t->req != NULL)
        moat__req_cancel(t->req);
    /* while POST /pty is in flight, its answer ends the terminal */
}

const char *moat_bridge_terminal_session_id(const moat_bridge_terminal *t)
{
    return t->session_id;
}

bool moat_bridge_terminal_pipe_mode(const moat_bridge_terminal *t)
{
    return t->mode_known && t->pipe_mode;
}

void moat__terminal_link(moat_bridge *b, moat_bridge_terminal *t)
{
    t->next = b->terminals;
    if (b->terminals != NULL)
        b->terminals->prev = t;
    b->terminals = t;
}

void moat__terminal_unlink(moat_bridge *b, moat_bridge_terminal *t)
{
    if (t->prev != NULL)
        t->prev->next = t->next;
    else if (b->terminals == t)
        b->terminals = t->next;
    if (t->next != NULL)
        t->next->prev = t->prev;
    t->next = t->prev = NULL;
}
