/* The stdin socket (moat extension, docs/execd.md "Stdin as a descriptor"): a client names a
 * pipe-mode session and is handed the write end of its process's stdin pipe (SCM_RIGHTS), so
 * that moatd writes stdin into the pipe itself and execd, which shares the sandbox's CPU with
 * the process, copies nothing. The loan is the upload's (pty_stdin.c): the same order with
 * WebSocket stdin, one writer at a time. execd keeps its own copy of the descriptor for as
 * long as the connection lasts: a byte 'E' from the client closes stdin for good; the
 * connection ending without it gives the pipe back to the session, stdin still open, as an
 * upload cut short does (a detach). */
#include "pty.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

/* "<session id>[ <access token>]\n", within this many bytes and milliseconds. */
#define REQUEST_MAX 320
#define REQUEST_MS  5000
/* The byte that closes stdin. */
#define CLOSE_STDIN 'E'

static int listen_fd = -1;
static pthread_t accept_thread;
static char sock_path[sizeof(((struct sockaddr_un *)0)->sun_path)];

/* Reads the request line into line (NUL-terminated, without its newline): false when it is
 * longer than REQUEST_MAX, slower than REQUEST_MS, or followed by anything. */
static bool read_request(int fd, char line[REQUEST_MAX + 1])
{
    size_t have = 0;
    uint64_t until = moat_time_mono_ns() + (uint64_t)REQUEST_MS * 1000000u;
    while (have < REQUEST_MAX) {
        uint64_t now = moat_time_mono_ns();
        if (now >= until)
            return false;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int ready = poll(&p, 1, (int)((until - now) / 1000000u) + 1);
        if (ready < 0 && errno == EINTR)
            continue;
        if (ready <= 0)
            return false;
        ssize_t n = recv(fd, line + have, REQUEST_MAX - have, 0);
        if (n <= 0)
            return false;
        char *nl = memchr(line + have, '\n', (size_t)n);
        have += (size_t)n;
        if (nl != NULL) {
            *nl = '\0';
            return nl == line + have - 1;
        }
    }
    return false;
}

static void answer(int fd, const char *code)
{
    char line[64];
    int n = snprintf(line, sizeof(line), "%s\n", code);
    (void)send(fd, line, (size_t)n, MSG_NOSIGNAL);
}

/* Sends "OK\n" with the pipe's write end. */
static bool lend(int fd, int pipe_fd)
{
    char ok[] = "OK\n";
    struct iovec iov = {.iov_base = ok, .iov_len = 3};
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } ctl;
    memset(&ctl, 0, sizeof(ctl));
    struct msghdr m = {.msg_iov = &iov,
                       .msg_iovlen = 1,
                       .msg_control = ctl.buf,
                       .msg_controllen = sizeof(ctl.buf)};
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &pipe_fd, sizeof(int));
    ssize_t n;
    do
        n = sendmsg(fd, &m, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    return n == 3;
}

/* While the pipe is lent: true when the client sent CLOSE_STDIN (or the session went, which
 * closes stdin too), false when it went without. */
static bool wait_loan_end(int fd, xd_pty *s)
{
    for (;;) {
        struct pollfd p[2] = {{.fd = fd, .events = POLLIN | POLLRDHUP},
                              {.fd = s->gone_r, .events = POLLIN}};
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            return false;
        }
        if (p[1].revents != 0)
            return true;
        char c;
        ssize_t n = recv(fd, &c, 1, MSG_DONTWAIT);
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        return n == 1 && c == CLOSE_STDIN;
    }
}

static void serve(int fd)
{
    char line[REQUEST_MAX + 1];
    if (!read_request(fd, line)) {
        answer(fd, "BAD_REQUEST");
        return;
    }
    char *token = strchr(line, ' ');
    if (token != NULL)
        *token++ = '\0';
    if (!xd_token_ok(token)) {
        answer(fd, "UNAUTHORIZED");
        return;
    }
    xd_pty *s = strlen(line) < MOAT_UUID_STR_LEN ? xd_pty_find(line) : NULL;
    if (s == NULL) {
        answer(fd, "CONTEXT_NOT_FOUND");
        return;
    }
    pthread_mutex_lock(&s->mu);
    bool started = s->started;
    pthread_mutex_unlock(&s->mu);
    int pipe_fd = -1;
    bool pipe_mode = false;
    xd_pty_borrowed got = started ? xd_pty_borrow_stdin(s, &pipe_fd, &pipe_mode) : XD_PTY_ENDED;
    if (!started)
        answer(fd, "NOT_STARTED");
    else if (!pipe_mode)
        answer(fd, "NOT_PIPE_MODE");
    else if (got == XD_PTY_ENDED)
        answer(fd, "STDIN_CLOSED");
    else if (got == XD_PTY_BUSY)
        answer(fd, "ALREADY_CONNECTED");
    if (got == XD_PTY_BORROWED) {
        (void)fcntl(pipe_fd, F_SETPIPE_SZ, XD_PTY_STDIN_PIPE_BYTES);
        bool closed = lend(fd, pipe_fd) && wait_loan_end(fd, s);
        xd_pty_give_back_stdin(s, pipe_fd, closed);
    }
    xd_pty_unref(s);
}

static void *conn_main(void *arg)
{
    int fd = (int)(intptr_t)arg;
    serve(fd);
    close(fd);
    return NULL;
}

static void *accept_main(void *arg)
{
    (void)arg;
    for (;;) {
        int fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED || errno == EMFILE || errno == ENFILE ||
                errno == ENOBUFS || errno == ENOMEM) {
                if (errno != EINTR && errno != ECONNABORTED)
                    usleep(10000); /* out of descriptors: let some close */
                continue;
            }
            return NULL; /* shut down */
        }
        pthread_t t;
        if (pthread_create(&t, NULL, conn_main, (void *)(intptr_t)fd) == 0)
            pthread_detach(t);
        else
            close(fd);
    }
}

bool xd_stdin_sock_start(const char *http_path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int n = snprintf(sa.sun_path, sizeof(sa.sun_path), "%s.stdin", http_path);
    if (n < 0 || (size_t)n >= sizeof(sa.sun_path)) {
        fprintf(stderr, "moat-execd: %s.stdin: path too long\n", http_path);
        return false;
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return false;
    unlink(sa.sun_path);
    /* Owner only, as the HTTP socket: whoever reaches it writes a command's stdin. */
    mode_t old_umask = umask(0177);
    int rc = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
    umask(old_umask);
    if (rc != 0 || listen(fd, 64) != 0) {
        fprintf(stderr, "moat-execd: cannot listen on %s: %s\n", sa.sun_path, strerror(errno));
        close(fd);
        return false;
    }
    listen_fd = fd;
    if (pthread_create(&accept_thread, NULL, accept_main, NULL) != 0) {
        close(fd);
        unlink(sa.sun_path);
        listen_fd = -1;
        return false;
    }
    snprintf(sock_path, sizeof(sock_path), "%s", sa.sun_path);
    return true;
}

void xd_stdin_sock_stop(void)
{
    if (listen_fd < 0)
        return;
    /* wakes accept4, which then fails */
    shutdown(listen_fd, SHUT_RDWR);
    pthread_join(accept_thread, NULL);
    close(listen_fd);
    listen_fd = -1;
    unlink(sock_path);
}
