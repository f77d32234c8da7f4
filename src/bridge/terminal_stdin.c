/* Stdin of a terminal's process on its way to execd (terminal.c has the WebSocket).
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
#include "terminal_internal.h"

#include "common/unix_socket.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

/* How long execd's stdin socket may take to answer before the upload is asked instead. */
#define LEND_ANSWER_NS (5ull * 1000000000ull)
/* The byte that tells execd stdin has ended (its own copy of the pipe is then closed). */
#define LEND_CLOSE_STDIN "E"

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

static void watch(moat_bridge_terminal *t, int fd, int what)
{
    if (t->b->sock_fn != NULL)
        t->b->sock_fn(t->b->loop_ud, fd, what);
}

/* Ends the loan of the pipe: close_stdin tells execd to close its own copy (the process reads
 * EOF); without it execd takes the pipe back with stdin open, as from an upload cut short. */
void moat__terminal_lend_end(moat_bridge_terminal *t, bool close_stdin)
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
        if (moat__terminal_ws_stdin(t, front, run) != MOAT_OK) {
            moat_log(MOAT_LOG_WARN, "terminal_stdin_lost", "session_id=%s bytes=%zu", t->session_id,
                     t->stdin_q.len);
            break;
        }
        ring_drop(&t->stdin_q, run);
    }
    t->stdin_q.len = t->stdin_q.start = 0;
    if (t->stdin_closed)
        moat__terminal_queue_text(t, "{\"type\":\"close_stdin\"}");
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
static void lend_flush(moat_bridge_terminal *t);

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
        moat__terminal_lend_end(t, false);
        start_post(t);
        return;
    }
    t->pipe_fd = mine;
    lend_flush(t);
}

void moat__terminal_sweep(moat_bridge *b)
{
    uint64_t now = moat_time_mono_ns();
    /* start_post may end a terminal, so the walk starts over after each one given up on; a
     * loan given up on no longer matches, so the walk ends (one per sweep let a sandbox's many
     * silent sockets delay the others' by a second each) */
    bool gave_up = true;
    while (gave_up) {
        gave_up = false;
        for (moat_bridge_terminal *t = b->terminals; t != NULL; t = t->next) {
            if (t->lend_fd >= 0 && t->pipe_fd < 0 && now >= t->lend_until_ns) {
                lend_take(t, true);
                gave_up = true;
                break;
            }
        }
    }
}

/* Stdin can go no further (the process closed it, or execd ended the loan): what comes later
 * is dropped, as after an upload's end. */
static void lend_over(moat_bridge_terminal *t)
{
    moat__terminal_lend_end(t, false);
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
        moat__terminal_lend_end(t, true);
        t->up_over = true;
    }
    if (t->stdin_q.len < before && !t->in_input && t->c.on_writable != NULL)
        t->c.on_writable(t->c.ud, t);
}

/* The process has started: the upload can take its stdin. */
void moat__terminal_on_connected(moat_bridge_terminal *t, const char *mode)
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

/* What waits goes on its way: into the lent pipe, or to the upload's read callback. Inside the
 * consumer's own call, which on_writable must not re-enter. */
static void send_queued(moat_bridge_terminal *t)
{
    t->in_input = true;
    if (t->pipe_fd >= 0)
        lend_flush(t);
    else
        stdin_unpause(t);
    t->in_input = false;
}

moat_err moat_bridge_terminal_stdin(moat_bridge_terminal *t, const uint8_t *data, size_t len)
{
    if (t->stdin_closed || t->ended || t->closing)
        return MOAT_E_STATE;
    if (stdin_over_ws(t))
        return moat__terminal_ws_stdin(t, data, len);
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
    send_queued(t);
    return MOAT_OK;
}

moat_err moat_bridge_terminal_close_stdin(moat_bridge_terminal *t)
{
    if (t->stdin_closed)
        return MOAT_E_STATE;
    if (stdin_over_ws(t)) {
        moat_err err = moat__terminal_queue_text(t, "{\"type\":\"close_stdin\"}");
        if (err == MOAT_OK)
            t->stdin_closed = true;
        return err;
    }
    if (t->ended || t->closing)
        return MOAT_E_STATE;
    /* the upload's body (or the loan) ends once what is queued has gone */
    t->stdin_closed = true;
    send_queued(t);
    return MOAT_OK;
}

bool moat__terminal_stdin_fd_action(moat_bridge_terminal *t, int fd)
{
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
    return false;
}
