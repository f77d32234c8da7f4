/* Terminal sessions over execd's WebSocket (OpenSandbox's PTY API, docs/bridge.md "Terminals").
 * curl connects (through the bridge's pinned-socket callback) and makes the upgrade: a ws://
 * transfer in raw mode hands the write callback the frames as they arrive, and back-pressure
 * pauses it like any transfer. libwslay frames both directions: curl 7.88's own framing stalls
 * on a frame header split across reads and loses framing on a partial write. Our frames go out
 * through a duplicate of curl's socket (curl writes nothing after its request), watched through
 * the loop's socket function while execd's socket is full.
 *
 * A pipe-mode command's stdin does not take the WebSocket: wslay masks every byte a client
 * sends and execd unmasks it, which capped bulk input at a third of docker exec's rate. It
 * goes as one chunked POST /pty/{id}/stdin (moat's extension, docs/execd.md), fed from curl's
 * read callback and paused when nothing is queued; its end is close_stdin. An execd without
 * the endpoint refuses it before any byte of the body (Expect: 100-continue), and stdin then
 * takes the WebSocket.
 *
 * Before the upload, moatd asks execd's stdin socket ("<execd's socket>.stdin") for the write
 * end of the process's stdin pipe and writes stdin into it itself: execd, which shares the
 * sandbox's CPU with the process, then copies nothing. The descriptor comes from the sandbox:
 * exactly one, a pipe, and never written through itself (the container shares its open file
 * description and could make it blocking) but through moatd's own open of the same pipe.
 * Writing to a pipe whose reader has gone raises SIGPIPE: moatd ignores it. */
#include "bridge/terminal.h"

#include "internal.h"

#include "common/unix_socket.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
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
/* How long execd's stdin socket may take to answer before the upload is asked instead. */
#define LEND_ANSWER_NS (5ull * 1000000000ull)
/* The byte that tells execd stdin has ended (its own copy of the pipe is then closed). */
#define LEND_CLOSE_STDIN "E"

/* Stdin waiting for the upload's read callback (or the WebSocket): a ring, so that taking
 * bytes from its front never moves the rest; it grows, made straight, only when what waits
 * and what comes would not fit, so it stays near the owner's window (a linear queue that
 * dropped taken bytes only once drained whole grew with the stream: 43 MB after 256 MiB). */
typedef struct stdin_ring {
    uint8_t *data; /* owned */
    size_t cap, start, len;
} stdin_ring;

/* Drops n <= len bytes from the ring's front. */
static void ring_drop(stdin_ring *r, size_t n)
{
    r->len -= n;
    r->start = r->len == 0 ? 0 : (r->start + n) % r->cap;
}

/* Copies up to n bytes from the ring's front to out and drops them; how many. */
static size_t ring_take(stdin_ring *r, uint8_t *out, size_t n)
{
    if (n > r->len)
        n = r->len;
    size_t first = n < r->cap - r->start ? n : r->cap - r->start;
    if (n > 0) {
        memcpy(out, r->data + r->start, first);
        memcpy(out + first, r->data, n - first);
    }
    ring_drop(r, n);
    return n;
}

/* The ring's first straight run of bytes; *n how many. */
static const uint8_t *ring_front(const stdin_ring *r, size_t *n)
{
    *n = r->len < r->cap - r->start ? r->len : r->cap - r->start;
    return r->data + r->start;
}

static moat_err ring_put(stdin_ring *r, const uint8_t *p, size_t n)
{
    if (n > INT32_MAX - r->len)
        return MOAT_E_TOO_BIG;
    if (r->len + n > r->cap) {
        size_t cap = r->cap > 0 ? r->cap : 64 * 1024;
        while (cap < r->len + n)
            cap *= 2;
        uint8_t *d = malloc(cap);
        if (d == NULL)
            return MOAT_E_NOMEM;
        size_t kept = ring_take(r, d, r->len);
        free(r->data);
        *r = (stdin_ring){d, cap, 0, kept};
    }
    size_t end = (r->start + r->len) % r->cap;
    size_t first = n < r->cap - end ? n : r->cap - end;
    memcpy(r->data + end, p, first);
    memcpy(r->data, p + first, n - first);
    r->len += n;
    return MOAT_OK;
}

struct moat_bridge_terminal {
    moat_bridge *b;
    moat_bridge_endpoint ep; /* strings below */
    char *unix_socket, *base_url, *token;
    moat_bridge_terminal_opts opts;
    char *command, *cwd, *term;
    moat_bridge_terminal_consumer c;
    char session_id[64];
    bridge_req *req; /* the WebSocket transfer, once started */
    bool creating;   /* POST /pty in flight */
    bool attaching;  /* opts.attach_id: a session made earlier */
    wslay_event_context_ptr ws;
    int fd;            /* curl's socket, from its sockopt callback; -1 before */
    int wfd;           /* dup of fd that the loop watches for writability; -1 when not */
    bool upgraded;     /* the 101 came: our frames may go out */
    const uint8_t *in; /* bytes being fed to wslay from curl's write callback */
    size_t in_len;
    int64_t credit; /* output bytes the consumer takes; may go one read below 0 */
    bool paused;
    bool stdin_closed;
    bool exited;
    bool closing;    /* moat_bridge_terminal_close was called */
    bool mode_known; /* pty or pipe: from the options, or from execd's connected message */
    bool pipe_mode;
    /* Stdin that waits for the upload (and, before the mode is known, for either path). */
    stdin_ring stdin_q;
    bridge_req *up; /* the upload while it runs */
    bool up_begun;  /* execd's connected came: the upload was asked for, or not needed */
    bool up_wanted; /* to be started once curl has returned */
    bool up_paused;
    bool up_sent;     /* the upload's body has begun */
    bool up_over;     /* it ended: later stdin is dropped, as a closed pipe would */
    bool up_fallback; /* execd refused it before its body: stdin takes the WebSocket */
    bool in_input;    /* inside moat_bridge_terminal_stdin or _close_stdin */
    /* Stdin written into the process's pipe by moatd itself (execd's stdin socket). */
    int lend_fd;            /* the connection to the stdin socket, or -1 */
    int pipe_fd;            /* moatd's own open of the lent pipe, or -1 */
    bool pipe_watched;      /* the loop watches pipe_fd for room */
    uint64_t lend_until_ns; /* execd's answer is awaited until then */
    uint16_t close_code;
    bool ended;
    moat_bridge_terminal *next, *prev; /* the bridge's terminals */
};

static moat_log_limit bad_frame_log = MOAT_LOG_LIMIT_INIT;

static void watch(moat_bridge_terminal *t, int fd, int what)
{
    if (t->b->sock_fn != NULL)
        t->b->sock_fn(t->b->loop_ud, fd, what);
}

/* Ends the loan of the pipe: close_stdin tells execd to close its own copy (the process reads
 * EOF); without it execd takes the pipe back with stdin open, as from an upload cut short. */
static void lend_end(moat_bridge_terminal *t, bool close_stdin)
{
    if (t->pipe_fd >= 0) {
        if (t->pipe_watched)
            watch(t, t->pipe_fd, MOAT_BRIDGE_POLL_REMOVE);
        close(t->pipe_fd);
    }
    t->pipe_fd = -1;
    t->pipe_watched = false;
    if (t->lend_fd >= 0) {
        if (close_stdin)
            (void)send(t->lend_fd, LEND_CLOSE_STDIN, 1, MSG_NOSIGNAL | MSG_DONTWAIT);
        watch(t, t->lend_fd, MOAT_BRIDGE_POLL_REMOVE);
        close(t->lend_fd);
    }
    t->lend_fd = -1;
}

static void terminal_free(moat_bridge_terminal *t)
{
    lend_end(t, false);
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
    lend_end(t, false);
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

static void lend_take(moat_bridge_terminal *t, bool timed_out);
static void lend_flush(moat_bridge_terminal *t);
static void lend_over(moat_bridge_terminal *t);

bool moat__terminal_socket_action(moat_bridge *b, int fd)
{
    for (moat_bridge_terminal *t = b->terminals; t != NULL; t = t->next) {
        if (t->wfd == fd) {
            flush_output(t, true);
            return true;
        }
        if (t->lend_fd == fd) {
            /* after the answer, execd ends the loan only by going (its session did) */
            if (t->pipe_fd < 0)
                lend_take(t, false);
            else
                lend_over(t);
            return true;
        }
        if (t->pipe_fd == fd) {
            lend_flush(t);
            return true;
        }
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

static void on_connected(moat_bridge_terminal *t, const char *mode);

static void on_text(moat_bridge_terminal *t, const uint8_t *msg, size_t len)
{
    cJSON *j = moat_json_parse((const char *)msg, len, MOAT_JSON_NUL_REJECT);
    const char *type = j != NULL ? cJSON_GetStringValue(cJSON_GetObjectItem(j, "type")) : NULL;
    int64_t code = 0;
    if (type != NULL && strcmp(type, "connected") == 0) {
        on_connected(t, cJSON_GetStringValue(cJSON_GetObjectItem(j, "mode")));
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
static moat_err ws_stdin(moat_bridge_terminal *t, const uint8_t *data, size_t len)
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

static moat_err queue_text(moat_bridge_terminal *t, const char *text)
{
    return queue_message(t, WSLAY_TEXT_FRAME, (const uint8_t *)text, strlen(text));
}

static bool stdin_over_ws(const moat_bridge_terminal *t)
{
    return t->mode_known && (!t->pipe_mode || t->up_fallback);
}

/* What waited in stdin_q goes over the WebSocket, and close_stdin after it if it came. */
static void stdin_queue_to_ws(moat_bridge_terminal *t)
{
    size_t n = t->stdin_q.len;
    while (t->stdin_q.len > 0) {
        size_t run;
        const uint8_t *front = ring_front(&t->stdin_q, &run);
        if (ws_stdin(t, front, run) != MOAT_OK) {
            moat_log(MOAT_LOG_WARN, "terminal_stdin_lost", "session_id=%s bytes=%zu", t->session_id,
                     t->stdin_q.len);
            break;
        }
        ring_drop(&t->stdin_q, run);
    }
    t->stdin_q.len = t->stdin_q.start = 0;
    if (t->stdin_closed)
        queue_text(t, "{\"type\":\"close_stdin\"}");
    /* what went out at once frees the consumer's input as a drained socket would */
    if (n > 0 && !t->in_input && t->c.on_writable != NULL)
        t->c.on_writable(t->c.ud, t);
}

static void stdin_unpause(moat_bridge_terminal *t)
{
    if (t->up != NULL && t->up_paused) {
        t->up_paused = false;
        moat__req_unpause(t->up);
    }
}

/* curl's read callback of the upload: queued stdin, a pause when there is none, the body's end
 * after close_stdin. */
static size_t up_read(char *buf, size_t size, size_t nitems, void *ud)
{
    bridge_req *r = ud;
    moat_bridge_terminal *t = r->owner;
    if (t == NULL || r->cancelled)
        return CURL_READFUNC_ABORT;
    if (t->stdin_q.len == 0) {
        if (t->stdin_closed)
            return 0;
        t->up_paused = true;
        return CURL_READFUNC_PAUSE;
    }
    size_t n = ring_take(&t->stdin_q, (uint8_t *)buf, size * nitems);
    t->up_sent = true;
    if (!t->in_input && t->c.on_writable != NULL)
        t->c.on_writable(t->c.ud, t);
    return n;
}

static void up_done(bridge_req *r, CURLcode rc)
{
    moat_bridge_terminal *t = r->owner;
    if (t == NULL)
        return;
    t->up = NULL;
    long status = 0;
    curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status);
    bool ok = rc == CURLE_OK && status >= 200 && status < 300;
    if (!ok && !t->up_sent && !t->ended) {
        moat_log(MOAT_LOG_INFO, "terminal_stdin_websocket", "session_id=%s status=%ld",
                 t->session_id, status);
        t->up_fallback = true;
        stdin_queue_to_ws(t);
        return;
    }
    if (!ok)
        moat_log(MOAT_LOG_INFO, "terminal_stdin_ended", "session_id=%s status=%ld curl=%d",
                 t->session_id, status, (int)rc);
    t->up_over = true;
    t->stdin_q.len = t->stdin_q.start = 0;
    if (t->c.on_writable != NULL && !t->ended)
        t->c.on_writable(t->c.ud, t);
}

/* The upload's socket holds up to 1 MiB in flight (best effort, as wmem_max allows): execd
 * then takes more per wake-up, and moatd writes more per turn of its loop. */
static curl_socket_t upload_socket(void *ud, curl_socket_t fd, curlsocktype purpose)
{
    (void)ud;
    (void)purpose;
    int bytes = 1 << 20;
    (void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof bytes);
    return CURL_SOCKOPT_OK;
}

static moat_err start_upload(moat_bridge_terminal *t, moat_status *st)
{
    char path[128];
    snprintf(path, sizeof(path), "/pty/%s/stdin", t->session_id);
    bridge_req *r = moat__req_new(t->b, &t->ep, "POST", path, NULL, st);
    if (r == NULL)
        return MOAT_E_NOMEM;
    /* execd answers a refusal before the body, so no stdin is lost to it: every request's
     * "Expect:" (none) is replaced, as curl heeds the first Expect header it finds */
    struct curl_slist *hdrs = NULL;
    for (struct curl_slist *h = r->hdrs; h != NULL; h = h->next)
        if (strcmp(h->data, "Expect:") != 0)
            hdrs = curl_slist_append(hdrs, h->data);
    curl_slist_free_all(r->hdrs);
    r->hdrs = curl_slist_append(hdrs, "Expect: 100-continue");
    curl_easy_setopt(r->easy, CURLOPT_EXPECT_100_TIMEOUT_MS, 60000L);
    moat__req_chunked_body(r, up_read, r);
    curl_easy_setopt(r->easy, CURLOPT_UPLOAD_BUFFERSIZE, (long)MOAT_BRIDGE_TERMINAL_UPLOAD_BUFFER);
    curl_easy_setopt(r->easy, CURLOPT_TIMEOUT_MS, 0L);
    /* a connection of its own, which upload_socket sees made */
    curl_easy_setopt(r->easy, CURLOPT_FRESH_CONNECT, 1L);
    curl_easy_setopt(r->easy, CURLOPT_FORBID_REUSE, 1L);
    curl_easy_setopt(r->easy, CURLOPT_SOCKOPTFUNCTION, upload_socket);
    r->done = up_done;
    r->owner = t;
    t->up = r;
    moat_err err = moat__req_start(r, st);
    if (err != MOAT_OK)
        t->up = NULL;
    return err;
}

/* ------------------------------------------------------------ stdin into the lent pipe */

static moat_log_limit lend_log = MOAT_LOG_LIMIT_INIT;

/* Asks execd's stdin socket for the pipe: false when there is none (an execd without it, or
 * on TCP) or it cannot be reached, and the upload is asked instead. */
static bool lend_start(moat_bridge_terminal *t)
{
    if (t->ep.unix_socket == NULL || t->b->sock_fn == NULL)
        return false;
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)], line[512], why[256] = "";
    int n = snprintf(path, sizeof(path), "%s.stdin", t->ep.unix_socket);
    if (n < 0 || (size_t)n >= sizeof(path))
        return false;
    struct sockaddr_un sa;
    socklen_t len;
    int pin = moat_unix_pin(path, &sa, &len, why, sizeof(why));
    if (pin < 0) {
        if (errno != ENOENT)
            moat_log_limited(&lend_log, MOAT_LOG_WARN, "terminal_stdin_socket_refused",
                             "session_id=%s why=\"%s\"", t->session_id, why);
        return false;
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    bool ok = fd >= 0 && connect(fd, (struct sockaddr *)&sa, len) == 0;
    close(pin);
    n = snprintf(line, sizeof(line), "%s%s%s\n", t->session_id, t->token != NULL ? " " : "",
                 t->token != NULL ? t->token : "");
    ok = ok && n > 0 && (size_t)n < sizeof(line) &&
         send(fd, line, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT) == n;
    if (!ok) {
        if (fd >= 0)
            close(fd);
        return false;
    }
    t->lend_fd = fd;
    t->lend_until_ns = moat_time_mono_ns() + LEND_ANSWER_NS;
    watch(t, fd, MOAT_BRIDGE_POLL_IN);
    return true;
}

/* execd's answer on fd: "OK\n" with exactly one descriptor, a pipe, which is reopened as
 * moatd's own; or -1 with why set (-2: nothing to read yet). */
static int lend_receive(int fd, char *why, size_t why_len)
{
    char line[64];
    struct iovec iov = {.iov_base = line, .iov_len = sizeof(line) - 1};
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } ctl;
    struct msghdr m = {
        .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf, .msg_controllen = sizeof(ctl)};
    ssize_t n;
    do
        n = recvmsg(fd, &m, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return -2;
    /* the buffer's padding holds a second descriptor on 64-bit: any past the first is closed */
    int lent = -1;
    size_t count = 0;
    for (struct cmsghdr *c = n >= 0 ? CMSG_FIRSTHDR(&m) : NULL; c != NULL; c = CMSG_NXTHDR(&m, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        for (size_t i = 0; i < (c->cmsg_len - CMSG_LEN(0)) / sizeof(int); i++, count++) {
            int got;
            memcpy(&got, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
            if (lent < 0)
                lent = got;
            else
                close(got);
        }
    }
    if (n <= 0) {
        snprintf(why, why_len, "no answer: %s", n < 0 ? strerror(errno) : "closed");
    } else if (n != 3 || memcmp(line, "OK\n", 3) != 0) {
        size_t k = 0;
        while (k < (size_t)n && ((line[k] >= 'A' && line[k] <= 'Z') || line[k] == '_'))
            k++;
        snprintf(why, why_len, "refused: %.*s", (int)k, line);
    } else if ((m.msg_flags & (MSG_CTRUNC | MSG_TRUNC)) || count > 1) {
        snprintf(why, why_len, "more than one descriptor");
    } else if (lent < 0) {
        snprintf(why, why_len, "no descriptor");
    } else {
        struct stat lst, own;
        char proc[64];
        snprintf(proc, sizeof(proc), "/proc/self/fd/%d", lent);
        int mine = -1;
        if (fstat(lent, &lst) != 0 || !S_ISFIFO(lst.st_mode)) {
            snprintf(why, why_len, "not a pipe");
        } else if ((mine = open(proc, O_WRONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY)) < 0) {
            snprintf(why, why_len, "reopening the pipe: %s", strerror(errno));
        } else if (fstat(mine, &own) != 0 || !S_ISFIFO(own.st_mode) || own.st_ino != lst.st_ino ||
                   own.st_dev != lst.st_dev) {
            snprintf(why, why_len, "the reopened pipe is another file");
            close(mine);
            mine = -1;
        }
        close(lent);
        return mine;
    }
    if (lent >= 0)
        close(lent);
    return -1;
}

static void start_post(moat_bridge_terminal *t);

/* The stdin socket answered (or its time ran out: timed_out): the pipe, or the upload. */
static void lend_take(moat_bridge_terminal *t, bool timed_out)
{
    char why[128] = "no answer in time";
    int mine = timed_out ? -1 : lend_receive(t->lend_fd, why, sizeof(why));
    if (mine == -2)
        return;
    if (mine < 0) {
        moat_log(MOAT_LOG_INFO, "terminal_stdin_upload", "session_id=%s why=\"%s\"", t->session_id,
                 why);
        lend_end(t, false);
        start_post(t);
        return;
    }
    t->pipe_fd = mine;
    lend_flush(t);
}

void moat__terminal_sweep(moat_bridge *b)
{
    uint64_t now = moat_time_mono_ns();
    for (moat_bridge_terminal *t = b->terminals; t != NULL; t = t->next) {
        if (t->lend_fd >= 0 && t->pipe_fd < 0 && now >= t->lend_until_ns) {
            lend_take(t, true);
            return; /* start_post may have ended a terminal: the list is walked again later */
        }
    }
}

/* Stdin can go no further (the process closed it, or execd ended the loan): what comes later
 * is dropped, as after an upload's end. */
static void lend_over(moat_bridge_terminal *t)
{
    lend_end(t, false);
    t->up_over = true;
    t->stdin_q.len = t->stdin_q.start = 0;
    if (!t->in_input && t->c.on_writable != NULL && !t->ended)
        t->c.on_writable(t->c.ud, t);
}

/* Writes what the pipe takes of p; how much, or -1 once stdin can go no further. */
static ssize_t pipe_write(moat_bridge_terminal *t, const uint8_t *p, size_t n)
{
    ssize_t w;
    do
        w = write(t->pipe_fd, p, n);
    while (w < 0 && errno == EINTR);
    if (w < 0 && errno == EAGAIN)
        return 0;
    return w;
}

/* Writes what waits into the pipe, watches it for room while some is left, ends the loan with
 * stdin's end once all went. The consumer hears of the room last (it may end the terminal). */
static void lend_flush(moat_bridge_terminal *t)
{
    size_t before = t->stdin_q.len;
    while (t->stdin_q.len > 0) {
        size_t run;
        const uint8_t *front = ring_front(&t->stdin_q, &run);
        ssize_t w = pipe_write(t, front, run);
        if (w < 0) {
            lend_over(t);
            return;
        }
        if (w == 0)
            break;
        ring_drop(&t->stdin_q, (size_t)w);
    }
    bool waiting = t->stdin_q.len > 0;
    if (waiting != t->pipe_watched) {
        t->pipe_watched = waiting;
        watch(t, t->pipe_fd, waiting ? MOAT_BRIDGE_POLL_OUT : MOAT_BRIDGE_POLL_REMOVE);
    }
    if (!waiting && t->stdin_closed) {
        lend_end(t, true);
        t->up_over = true;
    }
    if (t->stdin_q.len < before && !t->in_input && t->c.on_writable != NULL)
        t->c.on_writable(t->c.ud, t);
}

/* The process has started: the upload can take its stdin. */
static void on_connected(moat_bridge_terminal *t, const char *mode)
{
    if (t->up_begun)
        return;
    t->up_begun = true;
    if (!t->mode_known) {
        t->mode_known = true;
        t->pipe_mode = mode != NULL && strcmp(mode, "pipe") == 0;
    }
    if (t->pipe_mode) {
        /* curl takes no new transfer from inside its callbacks */
        t->up_wanted = true;
        t->b->uploads_pending = true;
    } else {
        stdin_queue_to_ws(t);
    }
}

static void start_post(moat_bridge_terminal *t)
{
    moat_status st;
    if (start_upload(t, &st) != MOAT_OK) {
        moat_log(MOAT_LOG_WARN, "terminal_stdin_websocket", "session_id=%s why=\"%s\"",
                 t->session_id, st.message);
        t->up_fallback = true;
        stdin_queue_to_ws(t);
    }
}

void moat__terminal_start_uploads(moat_bridge *b)
{
    for (moat_bridge_terminal *t = b->terminals; t != NULL; t = t->next) {
        if (!t->up_wanted || t->ended)
            continue;
        t->up_wanted = false;
        if (!lend_start(t))
            start_post(t);
    }
}

moat_err moat_bridge_terminal_stdin(moat_bridge_terminal *t, const uint8_t *data, size_t len)
{
    if (t->stdin_closed || t->ended || t->closing)
        return MOAT_E_STATE;
    if (stdin_over_ws(t))
        return ws_stdin(t, data, len);
    if (t->up_over)
        return MOAT_OK;
    if (t->pipe_fd >= 0 && t->stdin_q.len == 0) {
        /* straight into the pipe, without the ring's copy, as much as it takes */
        ssize_t w = pipe_write(t, data, len);
        if (w < 0) {
            t->in_input = true;
            lend_over(t);
            t->in_input = false;
            return MOAT_OK;
        }
        data += w;
        len -= (size_t)w;
    }
    if (len > 0 && ring_put(&t->stdin_q, data, len) != MOAT_OK)
        return MOAT_E_NOMEM;
    t->in_input = true;
    if (t->pipe_fd >= 0)
        lend_flush(t);
    else
        stdin_unpause(t);
    t->in_input = false;
    return MOAT_OK;
}

moat_err moat_bridge_terminal_close_stdin(moat_bridge_terminal *t)
{
    if (t->stdin_closed)
        return MOAT_E_STATE;
    if (stdin_over_ws(t)) {
        moat_err err = queue_text(t, "{\"type\":\"close_stdin\"}");
        if (err == MOAT_OK)
            t->stdin_closed = true;
        return err;
    }
    if (t->ended || t->closing)
        return MOAT_E_STATE;
    /* the upload's body (or the loan) ends once what is queued has gone */
    t->stdin_closed = true;
    t->in_input = true;
    if (t->pipe_fd >= 0)
        lend_flush(t);
    else
        stdin_unpause(t);
    t->in_input = false;
    return MOAT_OK;
}

moat_err moat_bridge_terminal_resize(moat_bridge_terminal *t, uint32_t rows, uint32_t cols)
{
    char json[80];
    snprintf(json, sizeof(json), "{\"type\":\"resize\",\"cols\":%u,\"rows\":%u}", cols, rows);
    return queue_text(t, json);
}

moat_err moat_bridge_terminal_signal(moat_bridge_terminal *t, const char *name)
{
    static const char *const known[] = {"SIGINT", "SIGTERM", "SIGKILL", "SIGQUIT", "SIGHUP"};
    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++) {
        if (strcmp(name, known[i]) == 0) {
            char json[64];
            snprintf(json, sizeof(json), "{\"type\":\"signal\",\"signal\":\"%s\"}", known[i]);
            return queue_text(t, json);
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
