/* The bridge's terminals against a fake execd: POST /pty, the WebSocket upgrade, then frames
 * that the fake (libwslay's server side) writes a few bytes at a time, so every frame header
 * and payload arrives split across reads; stdin in bulk against a fake that reads slowly, over
 * the WebSocket (a fake without POST /pty/{id}/stdin) and as that upload; and execd's stdin
 * socket lending the pipe itself, against fakes that lend anything but one pipe, never
 * answer, hide behind a link, or make the pipe blocking under moatd's feet. */
#include "moat_test.h"

#include <errno.h>
#include <fcntl.h>
#include <dirent.h>
#include <malloc.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/un.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <uv.h>
#include <wslay/wslay.h>

#include "bridge/terminal.h"
#include "fake_execd.h"
#include "pty_proto.h"

#define STDIN_TOTAL (4u << 20)
/* Through the upload: enough for a queue that grew with the stream to show. */
#define UPLOAD_TOTAL (32u << 20)
#define STDIN_PIECE  (60u * 1024)
/* The consumer stops feeding while this much waits for execd's socket. */
#define QUEUE_HIGH (256u * 1024)
/* ... and with the upload, a call's default window (more than curl takes at once). */
#define UPLOAD_QUEUE_HIGH (1u << 20)

/* ------------------------------------------------------------ the fake's WebSocket */

typedef struct fake_ws {
    int fd;
    size_t piece; /* bytes per send, so the client reads split frames */
    uint64_t stdin_bytes, stdin_sum, newlines;
    bool stdin_closed, close_queued;
    char texts[512]; /* the text frames other than close_stdin, one per line */
} fake_ws;

static void nap_us(long us)
{
    struct timespec ts = {0, us * 1000};
    nanosleep(&ts, NULL);
}

static ssize_t fake_recv(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags, void *ud)
{
    (void)flags;
    fake_ws *w = ud;
    /* a slow reader: the client's socket fills and its stdin must wait */
    ssize_t n = recv(w->fd, buf, len < 4096 ? len : 4096, MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    if (n <= 0) {
        wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
    return n;
}

static ssize_t fake_send(wslay_event_context_ptr ctx, const uint8_t *data, size_t len, int flags,
                         void *ud)
{
    (void)flags;
    fake_ws *w = ud;
    ssize_t n = send(w->fd, data, len < w->piece ? len : w->piece, MSG_NOSIGNAL);
    if (n < 0) {
        wslay_event_set_error(ctx,
                              errno == EAGAIN ? WSLAY_ERR_WOULDBLOCK : WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
    nap_us(100);
    return n;
}

static void queue(wslay_event_context_ptr ctx, uint8_t opcode, const void *data, size_t len)
{
    struct wslay_event_msg m = {opcode, data, len};
    wslay_event_queue_msg(ctx, &m);
}

/* What the process printed once its stdin ended, and its exit. */
static void queue_exit(wslay_event_context_ptr ctx, const fake_ws *w)
{
    char out[64];
    int n = snprintf(out, sizeof(out), "%c%llu lines", 0x01, (unsigned long long)w->newlines);
    queue(ctx, WSLAY_BINARY_FRAME, out, (size_t)n);
    queue(ctx, WSLAY_BINARY_FRAME,
          "\x02"
          "err",
          4);
    const char exit_json[] = "{\"type\":\"exit\",\"exit_code\":3}";
    queue(ctx, WSLAY_TEXT_FRAME, exit_json, sizeof(exit_json) - 1);
}

/* POST /pty/t1/stdin, when the fake serves it: its body, read on another thread. */
static bool serve_upload;
static volatile bool upload_over;
static uint64_t upload_bytes, upload_sum, upload_newlines;
static atomic_int upload_posts;

static void fake_message(wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *m,
                         void *ud)
{
    fake_ws *w = ud;
    if (m->opcode == WSLAY_BINARY_FRAME && m->msg_length > 0 && m->msg[0] == 0x00) {
        for (size_t i = 1; i < m->msg_length; i++) {
            w->stdin_sum = w->stdin_sum * 31 + m->msg[i];
            w->newlines += m->msg[i] == '\n';
        }
        w->stdin_bytes += m->msg_length - 1;
    } else if (m->opcode == WSLAY_TEXT_FRAME) {
        moat_execd_pty_frame f;
        moat_execd_pty_parse_frame((const char *)m->msg, m->msg_length, &f);
        free(f.data);
        if (f.type == MOAT_EXECD_PTY_CLOSE_STDIN && !w->stdin_closed) {
            w->stdin_closed = true;
            queue_exit(ctx, w);
        } else {
            size_t used = strlen(w->texts);
            snprintf(w->texts + used, sizeof(w->texts) - used, "%.*s\n", (int)m->msg_length,
                     (const char *)m->msg);
        }
    }
}

static fake_ws last_ws;

static void serve_ws(int fd, const fake_req *req)
{
    char key[64] = "", accept[MOAT_EXECD_WS_ACCEPT_LEN];
    const char *k = strcasestr(req->headers, "\r\nSec-WebSocket-Key: ");
    assert_non_null(k);
    sscanf(k + 21, "%63[^\r]", key);
    assert_true(moat_execd_ws_accept_key(key, accept));
    char head[256];
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n",
                     accept);
    fake_write_all(fd, head, (size_t)n);
    fake_ws *w = &last_ws;
    memset(w, 0, sizeof(*w));
    w->fd = fd;
    w->piece = 3;
    fcntl(fd, F_SETFL, O_NONBLOCK);
    struct wslay_event_callbacks cbs = {fake_recv, fake_send, NULL, NULL, NULL, NULL, fake_message};
    wslay_event_context_ptr ctx;
    assert_int_equal(wslay_event_context_server_init(&ctx, &cbs, w), 0);
    const char connected[] = "{\"type\":\"connected\",\"session_id\":\"t1\",\"mode\":\"pipe\"}";
    queue(ctx, WSLAY_TEXT_FRAME, connected, sizeof(connected) - 1);
    int idle = 0;
    while (wslay_event_want_read(ctx) || wslay_event_want_write(ctx)) {
        struct pollfd p = {fd,
                           (short)((wslay_event_want_read(ctx) ? POLLIN : 0) |
                                   (wslay_event_want_write(ctx) ? POLLOUT : 0)),
                           0};
        int ready = poll(&p, 1, 20);
        if (ready < 0 || (ready == 0 && ++idle > 500))
            break;
        /* the upload's end is stdin's: answer as a close_stdin frame would be */
        if (upload_over && !w->stdin_closed) {
            w->stdin_closed = true;
            w->stdin_bytes = upload_bytes;
            w->stdin_sum = upload_sum;
            w->newlines = upload_newlines;
            queue_exit(ctx, w);
        }
        if (ready == 0)
            continue;
        idle = 0;
        if ((p.revents & POLLIN) && wslay_event_recv(ctx) != 0)
            break;
        if ((p.revents & POLLOUT) && wslay_event_send(ctx) != 0)
            break;
        /* wslay sends control frames first: the close waits for the exit to have gone */
        if (w->stdin_closed && wslay_event_get_queued_msg_count(ctx) == 0 && !w->close_queued) {
            w->close_queued = true;
            wslay_event_queue_close(ctx, 1000, (const uint8_t *)"process exited", 14);
        }
        if (p.revents & (POLLERR | POLLHUP))
            break;
        /* slow: execd's socket fills while stdin pours in */
        if (!w->stdin_closed)
            nap_us(200);
    }
    wslay_event_context_free(ctx);
}

/* Reads the chunked body from fd (a slow reader, so curl's side has to wait), summing its
 * bytes as fake_message does; answers 200 at the body's end, which is stdin's. */
static void serve_stdin_upload(int fd)
{
    upload_posts++;
    const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
    fake_write_all(fd, cont, sizeof(cont) - 1);
    static uint8_t buf[64 * 1024];
    size_t have = 0, left = 0; /* bytes in buf; of the chunk being read */
    bool want_crlf = false, done = false;
    while (!done) {
        ssize_t n = recv(fd, buf + have, sizeof(buf) - have, 0);
        if (n <= 0)
            return;
        have += (size_t)n;
        size_t o = 0;
        for (;;) {
            if (left > 0) {
                size_t k = have - o < left ? have - o : left;
                for (size_t i = 0; i < k; i++) {
                    upload_sum = upload_sum * 31 + buf[o + i];
                    upload_newlines += buf[o + i] == '\n';
                }
                upload_bytes += k;
                o += k;
                left -= k;
                want_crlf = left == 0;
                if (left > 0)
                    break;
            }
            size_t skip = want_crlf ? 2 : 0;
            if (have - o < skip)
                break;
            uint8_t *nl = memchr(buf + o + skip, '\n', have - o - skip);
            if (nl == NULL)
                break;
            char line[32];
            size_t len = (size_t)(nl - (buf + o + skip));
            assert_true(len < sizeof(line));
            memcpy(line, buf + o + skip, len);
            line[len] = '\0';
            o = (size_t)(nl - buf) + 1;
            want_crlf = false;
            left = strtoul(line, NULL, 16);
            if (left == 0) {
                done = true;
                break;
            }
        }
        memmove(buf, buf + o, have - o);
        have -= o;
        nap_us(300);
    }
    char body[64];
    int n = snprintf(body, sizeof(body), "{\"written\":%llu}", (unsigned long long)upload_bytes);
    fake_reply(fd, 200, "Content-Type: application/json\r\n", body, (size_t)n);
    upload_over = true;
}

static void handler(fake_execd *f, int fd, const fake_req *req)
{
    (void)f;
    if (strcmp(req->method, "POST") == 0 && strcmp(req->path, "/pty") == 0) {
        const char b[] = "{\"session_id\":\"t1\"}";
        fake_reply(fd, 201, "Content-Type: application/json\r\n", b, sizeof(b) - 1);
    } else if (strncmp(req->path, "/pty/t1/ws?pty=0", 16) == 0) {
        serve_ws(fd, req);
    } else if (serve_upload && strcmp(req->path, "/pty/t1/stdin") == 0) {
        serve_stdin_upload(fd);
    } else {
        fake_reply(fd, 404, NULL, "{\"code\":\"CONTEXT_NOT_FOUND\"}", 28);
    }
}

/* ------------------------------------------------------------ the fake's stdin socket */

typedef enum lend_mode {
    LEND_ABSENT,  /* no stdin socket: the upload */
    LEND_PIPE,    /* a pipe, read as the process would */
    LEND_FLIP,    /* a pipe made blocking (its description, shared) once moatd writes */
    LEND_NO_FD,   /* "OK" and nothing with it */
    LEND_TWO_FDS, /* two pipes */
    LEND_FILE,    /* a regular file */
    LEND_SOCKET,  /* a socket */
    LEND_SILENT,  /* never answers */
    LEND_SYMLINK, /* the socket's name is a link to a socket that would lend a pipe */
} lend_mode;

static struct {
    lend_mode mode;
    char path[128], target[128];
    int lfd;
    pthread_t thr;
    atomic_bool stop, may_read, full;
    atomic_int accepted;
    bool close_byte; /* moatd said stdin has ended */
    char request[512];
} lender = {.lfd = -1};

static void send_fds(int fd, const int *fds, int n)
{
    char ok[] = "OK\n";
    struct iovec iov = {ok, 3};
    union {
        char buf[CMSG_SPACE(2 * sizeof(int))];
        struct cmsghdr align;
    } ctl;
    memset(&ctl, 0, sizeof(ctl));
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1};
    if (n > 0) {
        m.msg_control = ctl.buf;
        m.msg_controllen = CMSG_SPACE(n * sizeof(int));
        struct cmsghdr *c = CMSG_FIRSTHDR(&m);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(n * sizeof(int));
        memcpy(CMSG_DATA(c), fds, n * sizeof(int));
    }
    assert_int_equal(sendmsg(fd, &m, MSG_NOSIGNAL), 3);
}

/* The process's side of a lent pipe: what it reads, summed as the fake's WebSocket does,
 * until EOF; then the byte that ended stdin on conn. */
static void lend_pipe(int conn, bool flip)
{
    int p[2];
    assert_int_equal(pipe2(p, O_CLOEXEC), 0);
    fcntl(p[1], F_SETFL, O_NONBLOCK);
    send_fds(conn, &p[1], 1);
    if (flip) {
        /* once moatd has written, the description it was sent turns blocking */
        struct pollfd pf = {p[0], POLLIN, 0};
        assert_int_equal(poll(&pf, 1, 30000), 1);
        assert_int_equal(fcntl(p[1], F_SETFL, 0), 0);
        lender.full = true;
        while (!lender.may_read && !lender.stop)
            nap_us(1000);
    }
    close(p[1]);
    static uint8_t buf[64 * 1024];
    ssize_t n;
    while ((n = read(p[0], buf, sizeof(buf))) > 0) {
        for (ssize_t i = 0; i < n; i++) {
            upload_sum = upload_sum * 31 + buf[i];
            upload_newlines += buf[i] == '\n';
        }
        upload_bytes += (uint64_t)n;
        /* slower than moatd: the pipe fills and stdin waits */
        nap_us(300);
    }
    close(p[0]);
    char c = 0;
    lender.close_byte = recv(conn, &c, 1, 0) == 1 && c == 'E';
    upload_over = true;
}

static void *lender_main(void *arg)
{
    (void)arg;
    int conn = -1;
    while (!lender.stop && conn < 0) {
        struct pollfd pf = {lender.lfd, POLLIN, 0};
        if (poll(&pf, 1, 20) == 1)
            conn = accept(lender.lfd, NULL, NULL);
    }
    if (conn < 0)
        return NULL;
    lender.accepted++;
    size_t have = 0;
    while (have < sizeof(lender.request) - 1 && memchr(lender.request, '\n', have) == NULL) {
        ssize_t n = recv(conn, lender.request + have, sizeof(lender.request) - 1 - have, 0);
        if (n <= 0)
            break;
        have += (size_t)n;
    }
    int p[2] = {-1, -1}, q[2] = {-1, -1}, file = -1;
    switch (lender.mode) {
    case LEND_PIPE:
    case LEND_SYMLINK:
        lend_pipe(conn, false);
        break;
    case LEND_FLIP:
        lend_pipe(conn, true);
        break;
    case LEND_NO_FD:
        send_fds(conn, NULL, 0);
        break;
    case LEND_TWO_FDS:
        assert_int_equal(pipe(p), 0);
        assert_int_equal(pipe(q), 0);
        send_fds(conn, (int[]){p[1], q[1]}, 2);
        break;
    case LEND_FILE: {
        char name[] = "/tmp/moat-bridge-lend-XXXXXX";
        file = mkstemp(name);
        assert_true(file >= 0);
        unlink(name);
        send_fds(conn, &file, 1);
        break;
    }
    case LEND_SOCKET:
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, p), 0);
        send_fds(conn, &p[1], 1);
        break;
    default: /* LEND_SILENT */
        break;
    }
    /* held until moatd lets go (or the test ends) */
    struct pollfd pf = {conn, POLLIN, 0};
    while (!lender.stop && poll(&pf, 1, 20) == 0)
        ;
    int fds[] = {p[0], p[1], q[0], q[1], file, conn};
    for (size_t i = 0; i < sizeof(fds) / sizeof(fds[0]); i++)
        if (fds[i] >= 0)
            close(fds[i]);
    return NULL;
}

static void lender_start(const char *execd_sock, lend_mode mode)
{
    memset(&lender, 0, sizeof(lender));
    lender.mode = mode;
    lender.lfd = -1;
    if (mode == LEND_ABSENT)
        return;
    assert_true(strlen(execd_sock) < 100);
    snprintf(lender.path, sizeof(lender.path), "%.100s.stdin", execd_sock);
    snprintf(lender.target, sizeof(lender.target), "%.100s.target", execd_sock);
    const char *listen_at = mode == LEND_SYMLINK ? lender.target : lender.path;
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    memcpy(a.sun_path, listen_at, strlen(listen_at) + 1);
    unlink(listen_at);
    lender.lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_int_equal(bind(lender.lfd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(lender.lfd, 4), 0);
    if (mode == LEND_SYMLINK) {
        unlink(lender.path);
        assert_int_equal(symlink(lender.target, lender.path), 0);
    }
    assert_int_equal(pthread_create(&lender.thr, NULL, lender_main, NULL), 0);
}

/* Idempotent: a failed test's teardown runs it again. */
static void lender_stop(void)
{
    if (lender.lfd < 0)
        return;
    lender.stop = true;
    pthread_join(lender.thr, NULL);
    close(lender.lfd);
    lender.lfd = -1;
    unlink(lender.path);
    if (lender.mode == LEND_SYMLINK)
        unlink(lender.target);
}

static int open_fds(void)
{
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    assert_non_null(d);
    while (readdir(d) != NULL)
        n++;
    closedir(d);
    return n;
}

/* ------------------------------------------------------------ the consumer */

typedef struct term_run {
    moat_bridge_terminal *t;
    char session_id[64];
    char out[2][256];
    int exit_code;
    bool exited, ended;
    moat_status end;
    uint64_t total, sent, sum;
    size_t high;       /* feeding stops while this much waits */
    uint64_t turn_max; /* most bytes one call of feed sends; 0: no limit */
    size_t queued_max;
    size_t heap_base, heap_max; /* the process's heap in use: first, and most while feeding */
    uint8_t piece[STDIN_PIECE];
} term_run;

/* Feeds stdin while execd's socket keeps up; on_writable brings it back. With turn_max, a
 * reader as fast as the feeding never fills the pipe, so the caller's loop feeds again. */
static void feed(term_run *r)
{
    uint64_t turn_end = r->turn_max == 0 ? r->total : r->sent + r->turn_max;
    while (r->sent < r->total && r->sent < turn_end &&
           moat_bridge_terminal_queued(r->t) < r->high) {
        size_t n = r->total - r->sent < STDIN_PIECE ? r->total - r->sent : STDIN_PIECE;
        for (size_t i = 0; i < n; i++) {
            r->piece[i] = (uint8_t)((r->sent + i) % 64 == 63 ? '\n' : 'a' + (r->sent + i) % 26);
            r->sum = r->sum * 31 + r->piece[i];
        }
        assert_int_equal(moat_bridge_terminal_stdin(r->t, r->piece, n), MOAT_OK);
        r->sent += n;
        size_t q = moat_bridge_terminal_queued(r->t);
        if (q > r->queued_max)
            r->queued_max = q;
    }
    struct mallinfo2 mi = mallinfo2();
    size_t heap = mi.uordblks + mi.hblkhd;
    if (r->heap_base == 0)
        r->heap_base = heap;
    if (heap > r->heap_max)
        r->heap_max = heap;
    if (r->sent == r->total && moat_bridge_terminal_close_stdin(r->t) == MOAT_OK)
        assert_int_equal(moat_bridge_terminal_stdin(r->t, (const uint8_t *)"x", 1), MOAT_E_STATE);
}

static void on_ready(void *ud, moat_bridge_terminal *t, const char *session_id)
{
    term_run *r = ud;
    r->t = t;
    snprintf(r->session_id, sizeof(r->session_id), "%s", session_id);
    assert_int_equal(moat_bridge_terminal_resize(t, 30, 100), MOAT_OK);
    assert_int_equal(moat_bridge_terminal_signal(t, "SIGINT"), MOAT_OK);
    assert_int_equal(moat_bridge_terminal_signal(t, "SIGSTOP"), MOAT_E_INVAL);
    feed(r);
}

static void on_output(void *ud, moat_bridge_terminal *t, moat_bridge_stream stream,
                      const uint8_t *data, size_t len)
{
    (void)t;
    term_run *r = ud;
    char *o = r->out[stream == MOAT_BRIDGE_STDERR];
    size_t used = strlen(o);
    snprintf(o + used, 256 - used, "%.*s", (int)len, (const char *)data);
}

static void on_exit_code(void *ud, moat_bridge_terminal *t, int code)
{
    (void)t;
    term_run *r = ud;
    r->exited = true;
    r->exit_code = code;
}

static void on_writable(void *ud, moat_bridge_terminal *t)
{
    (void)t;
    feed(ud);
}

static void on_end(void *ud, moat_bridge_terminal *t, const moat_status *st)
{
    (void)t;
    term_run *r = ud;
    r->ended = true;
    r->end = *st;
}

static void answered(void *ud, const moat_status *st)
{
    *(moat_code *)ud = st->code;
}

/* While the lent pipe is full and blocking for whoever holds its shared description, another
 * call on the same bridge goes through: moatd's loop is not stuck in a write. */
static void call_meanwhile(moat_bridge *b, const moat_bridge_endpoint *ep, uv_loop_t *loop)
{
    moat_code done = (moat_code)-1;
    moat_status st;
    assert_int_equal(moat_bridge_delete_session(b, ep, "s1", answered, &done, &st), MOAT_OK);
    uint64_t until = moat_time_mono_ns() + 60ull * 1000000000ull;
    while (done == (moat_code)-1) {
        assert_true(moat_time_mono_ns() < until);
        uv_run(loop, UV_RUN_ONCE);
    }
    /* the fake knows no session: its answer is a 404 */
    assert_int_equal(done, MOAT_CODE_NOT_FOUND);
    lender.may_read = true;
}

/* Runs `wc -l` in pipe mode with total bytes of stdin, fed while less than high waits. */
static void run_pipe(term_run *r, uint64_t total, size_t high)
{
    int fds_before = open_fds();
    uv_loop_t loop;
    uv_loop_init(&loop);
    fake_execd f;
    fake_start(&f, handler, NULL, false);
    lender_start(f.sock_path, lender.mode);
    moat_bridge_config cfg = {0};
    moat_bridge *b;
    assert_int_equal(moat_bridge_new(&cfg, &b), MOAT_OK);
    assert_int_equal(moat_bridge_attach_uv(b, &loop), MOAT_OK);
    moat_bridge_endpoint ep = {.unix_socket = f.sock_path, .scope = "sandbox-1"};

    memset(r, 0, sizeof(*r));
    r->total = total;
    r->high = high;
    upload_over = false;
    upload_bytes = upload_sum = upload_newlines = 0;
    upload_posts = 0;
    bool called = false;
    moat_bridge_terminal_consumer c = {on_ready, on_output, on_exit_code, on_writable, on_end, r};
    moat_bridge_terminal_opts o = {.command = "wc -l", .tty = false};
    moat_bridge_terminal *t;
    moat_status st;
    assert_int_equal(moat_bridge_terminal_open(b, &ep, &o, &c, 1u << 30, &t, &st), MOAT_OK);
    uint64_t until = moat_time_mono_ns() + 120ull * 1000000000ull;
    while (!r->ended) {
        assert_true(moat_time_mono_ns() < until);
        uv_run(&loop, UV_RUN_ONCE);
        if (lender.full && !called) {
            called = true;
            call_meanwhile(b, &ep, &loop);
        }
    }
    if (r->end.code != MOAT_CODE_OK)
        fail_msg("ended %s %s: %s", moat_code_name(r->end.code), r->end.reason, r->end.message);
    assert_string_equal(r->session_id, "t1");
    assert_true(r->exited);
    assert_int_equal(r->exit_code, 3);
    char want[64];
    snprintf(want, sizeof(want), "%llu lines", (unsigned long long)(total / 64));
    assert_string_equal(r->out[0], want);
    assert_string_equal(r->out[1], "err");
    /* stdin waited for the socket rather than piling up */
    assert_true(r->queued_max < high + STDIN_PIECE + 16);

    moat_bridge_free(b);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
    fake_stop(&f);
    lender_stop();
    /* every descriptor moatd was sent or opened is closed (libraries' own, opened at first
     * use, are there by the lender's tests, which come later) */
    if (lender.mode != LEND_ABSENT)
        assert_int_equal(open_fds(), fds_before);
    assert_int_equal(last_ws.stdin_bytes, total);
    assert_true(last_ws.stdin_sum == r->sum);
    assert_string_equal(last_ws.texts, "{\"type\":\"resize\",\"cols\":100,\"rows\":30}\n"
                                       "{\"type\":\"signal\",\"signal\":\"SIGINT\"}\n");
}

/* An execd without the upload: stdin takes the WebSocket. */
static void test_terminal_pipe_mode(void **state)
{
    (void)state;
    static term_run r;
    serve_upload = false;
    lender.mode = LEND_ABSENT;
    run_pipe(&r, STDIN_TOTAL, QUEUE_HIGH);
    assert_false(upload_over);
}

/* Stdin as POST /pty/{id}/stdin, fed a window ahead of a slow reader: the queue holds what
 * waits, not what went (it kept every byte while curl never drained it whole: 32 MiB here). */
static void test_terminal_pipe_upload(void **state)
{
    (void)state;
    static term_run r;
    serve_upload = true;
    lender.mode = LEND_ABSENT;
    run_pipe(&r, UPLOAD_TOTAL, UPLOAD_QUEUE_HIGH);
    assert_true(upload_over);
    size_t grew = r.heap_max - r.heap_base;
    fprintf(stderr, "upload of %u MiB: the heap grew by %zu KiB at most\n", UPLOAD_TOTAL >> 20,
            grew >> 10);
    if (MOAT_TEST_RSS_MEANINGFUL)
        assert_true(grew < 4 * UPLOAD_QUEUE_HIGH);
    else
        moat_skip_note("the heap's size is not checked under ASan or valgrind");
}

/* Runs the upload's test with the stdin socket in mode: the pipe lent (no upload), or a
 * refusal (the upload); every byte arrives once either way. */
static void run_lent(lend_mode mode, bool lent)
{
    static term_run r;
    serve_upload = true;
    lender.mode = mode;
    run_pipe(&r, UPLOAD_TOTAL, UPLOAD_QUEUE_HIGH);
    assert_true(upload_over);
    assert_int_equal(upload_posts, lent ? 0 : 1);
    assert_true(lender.close_byte == lent);
    /* the other call went through while the pipe was full and blocking for the lender */
    assert_true(lender.may_read == (mode == LEND_FLIP));
    if (lent && MOAT_TEST_RSS_MEANINGFUL)
        assert_true(r.heap_max - r.heap_base < 4 * UPLOAD_QUEUE_HIGH);
    if (mode != LEND_SYMLINK)
        assert_string_equal(lender.request, "t1\n");
}

/* The pipe lent: moatd writes stdin into it and ends it by closing its own descriptor and
 * sending the byte that closes execd's. */
static void test_terminal_stdin_lent(void **state)
{
    (void)state;
    run_lent(LEND_PIPE, true);
}

/* The pipe's shared description made blocking while full: moatd writes through its own. */
static void test_terminal_stdin_lent_made_blocking(void **state)
{
    (void)state;
    run_lent(LEND_FLIP, true);
}

static void test_terminal_stdin_lent_hostile(void **state)
{
    (void)state;
    run_lent(LEND_TWO_FDS, false);
    run_lent(LEND_NO_FD, false);
    run_lent(LEND_FILE, false);
    run_lent(LEND_SOCKET, false);
}

/* A stdin socket that never answers is given up on (the upload), one that is a link is never
 * connected to. */
static void test_terminal_stdin_socket_silent_or_linked(void **state)
{
    (void)state;
    run_lent(LEND_SILENT, false);
    run_lent(LEND_SYMLINK, false);
    assert_int_equal(lender.accepted, 0);
}

/* The terminal closed with stdin still open (a detach): moatd lets go of the pipe without the
 * byte that would end stdin, so execd takes it back open for a reattach. */
static void test_terminal_stdin_lent_detach(void **state)
{
    (void)state;
    static term_run r;
    int fds_before = open_fds();
    uv_loop_t loop;
    uv_loop_init(&loop);
    fake_execd f;
    fake_start(&f, handler, NULL, false);
    lender_start(f.sock_path, LEND_PIPE);
    moat_bridge *b;
    moat_bridge_config cfg = {0};
    assert_int_equal(moat_bridge_new(&cfg, &b), MOAT_OK);
    assert_int_equal(moat_bridge_attach_uv(b, &loop), MOAT_OK);
    moat_bridge_endpoint ep = {.unix_socket = f.sock_path, .scope = "sandbox-1"};
    memset(&r, 0, sizeof(r));
    r.total = UINT64_MAX / 2; /* never all sent: stdin is never closed */
    r.high = UPLOAD_QUEUE_HIGH;
    r.turn_max = 4 * STDIN_PIECE;
    upload_over = false;
    upload_bytes = upload_sum = upload_newlines = 0;
    moat_bridge_terminal_consumer c = {on_ready, on_output, on_exit_code, on_writable, on_end, &r};
    moat_bridge_terminal_opts o = {.command = "wc -l", .tty = false};
    moat_bridge_terminal *t;
    moat_status st;
    assert_int_equal(moat_bridge_terminal_open(b, &ep, &o, &c, 1u << 30, &t, &st), MOAT_OK);
    uint64_t until = moat_time_mono_ns() + 120ull * 1000000000ull;
    bool closed = false;
    while (!r.ended || !upload_over) {
        assert_true(moat_time_mono_ns() < until);
        uv_run(&loop, UV_RUN_NOWAIT);
        if (!closed && upload_bytes > 0) {
            closed = true;
            moat_bridge_terminal_close(t);
        } else if (!closed && r.t != NULL) {
            feed(&r);
        }
        nap_us(100);
    }
    moat_bridge_free(b);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
    fake_stop(&f);
    lender_stop();
    assert_int_equal(open_fds(), fds_before);
    assert_true(upload_bytes > 0);
    assert_false(lender.close_byte);
}

static int teardown(void **state)
{
    (void)state;
    lender_stop();
    return 0;
}

int main(void)
{
    /* a lent pipe whose reader has gone raises it, as in moatd (which ignores it) */
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_terminal_pipe_mode),
        cmocka_unit_test(test_terminal_pipe_upload),
        cmocka_unit_test_teardown(test_terminal_stdin_lent, teardown),
        cmocka_unit_test_teardown(test_terminal_stdin_lent_made_blocking, teardown),
        cmocka_unit_test_teardown(test_terminal_stdin_lent_detach, teardown),
        cmocka_unit_test_teardown(test_terminal_stdin_lent_hostile, teardown),
        cmocka_unit_test_teardown(test_terminal_stdin_socket_silent_or_linked, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, teardown);
}
