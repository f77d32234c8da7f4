/* POST /pty/{id}/stdin (moat extension, docs/execd.md "Stdin as an upload"): a pipe-mode
 * session's stdin as one streamed request body, written straight from libmicrohttpd's buffer
 * into the process's stdin pipe. A WebSocket client's stdin is masked byte by byte on both
 * sides; a body is not. The request's thread borrows the pipe from the session's thread, and
 * while the pipe is full it waits in poll without reading its socket, so the sender is held
 * by the transport's window. */
#include "pty.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct xd_pty_upload {
    xd_pty *session; /* a reference */
    int fd;          /* the borrowed pipe; -1 once closed or given back */
    int conn_fd;     /* the request's socket: its peer hanging up ends a wait */
    uint64_t written;
    unsigned status; /* non-zero: the error answered at the body's end */
    char code[32];
    char message[256];
} xd_pty_upload;

bool xd_pty_is_stdin(const char *url, const char *method)
{
    size_t n = strlen(url);
    return strcmp(method, "POST") == 0 && strncmp(url, "/pty/", 5) == 0 && n > 11 &&
           strcmp(url + n - 6, "/stdin") == 0;
}

/* The session's id in /pty/{id}/stdin, false when it cannot be one. */
static bool url_id(const char *url, char id[MOAT_UUID_STR_LEN])
{
    const char *p = url + 5;
    size_t n = strcspn(p, "/");
    if (n == 0 || n >= MOAT_UUID_STR_LEN || strcmp(p + n, "/stdin") != 0)
        return false;
    memcpy(id, p, n);
    id[n] = '\0';
    return true;
}

xd_pty_borrowed xd_pty_borrow_stdin(xd_pty *s, int *fd, bool *pipe_mode)
{
    pthread_mutex_lock(&s->mu);
    *pipe_mode = s->pipe_mode;
    xd_pty_borrowed got = XD_PTY_BUSY;
    if (!s->started || s->closing || s->stdin_state == XD_STDIN_CLOSED) {
        got = XD_PTY_ENDED;
    } else if (s->pipe_mode && s->stdin_state == XD_STDIN_OWN) {
        s->stdin_state = XD_STDIN_WANTED;
        pthread_mutex_unlock(&s->mu);
        xd_pty_wake(s);
        pthread_mutex_lock(&s->mu);
        while (s->stdin_state == XD_STDIN_WANTED && s->started && !s->closing)
            pthread_cond_wait(&s->stdin_cv, &s->mu);
        if (s->stdin_state == XD_STDIN_LENT) {
            *fd = s->stdin_fd;
            s->stdin_fd = -1;
            got = XD_PTY_BORROWED;
        } else {
            /* refused, or the session closed (or its thread never started) meanwhile */
            s->stdin_state = XD_STDIN_CLOSED;
            got = XD_PTY_ENDED;
        }
    }
    pthread_mutex_unlock(&s->mu);
    return got;
}

enum MHD_Result xd_pty_stdin_begin(struct MHD_Connection *conn, xd_req *r, const char *url)
{
    char id[MOAT_UUID_STR_LEN];
    xd_pty *s = url_id(url, id) ? xd_pty_find(id) : NULL;
    r->handled = true;
    if (s == NULL)
        return xd_respond_error(conn, 404, "CONTEXT_NOT_FOUND", "pty session not found");
    bool started;
    pthread_mutex_lock(&s->mu);
    started = s->started;
    pthread_mutex_unlock(&s->mu);
    if (!started) {
        xd_pty_unref(s);
        return xd_respond_error(conn, 409, "NOT_STARTED",
                                "the session's process starts at its first WebSocket attach");
    }
    xd_pty_upload *u = calloc(1, sizeof(*u));
    if (u == NULL) {
        xd_pty_unref(s);
        return xd_respond_error(conn, 500, "RUNTIME_ERROR", "out of memory");
    }
    u->session = s;
    u->fd = -1;
    bool pipe_mode = false;
    xd_pty_borrowed got = xd_pty_borrow_stdin(s, &u->fd, &pipe_mode);
    enum MHD_Result ret = MHD_YES;
    if (!pipe_mode)
        ret = xd_respond_error(conn, 409, "NOT_PIPE_MODE",
                               "a terminal's input goes over its WebSocket");
    else if (got == XD_PTY_BORROWED)
        r->handled = false;
    else if (got == XD_PTY_ENDED)
        ret = xd_respond_error(conn, 409, "STDIN_CLOSED",
                               "stdin was closed, or the process has ended");
    else
        ret = xd_respond_error(conn, 409, "ALREADY_CONNECTED", "stdin already has an uploader");
    if (r->handled) {
        xd_pty_unref(s);
        free(u);
        return ret;
    }
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    u->conn_fd = ci != NULL ? ci->connect_fd : -1;
    (void)fcntl(u->fd, F_SETPIPE_SZ, XD_PTY_STDIN_PIPE_BYTES);
    r->pty_stdin = u;
    return MHD_YES;
}

static void upload_fail(xd_pty_upload *u, unsigned status, const char *code, const char *why)
{
    if (u->status != 0)
        return;
    u->status = status;
    snprintf(u->code, sizeof(u->code), "%s", code);
    snprintf(u->message, sizeof(u->message), "%s", why);
    if (u->fd >= 0)
        close(u->fd);
    u->fd = -1;
}

enum MHD_Result xd_pty_stdin_data(struct MHD_Connection *conn, xd_req *r, const char *data,
                                  size_t len)
{
    (void)conn;
    xd_pty_upload *u = r->pty_stdin;
    /* After an error the rest of the body is read and dropped, as /files/write does. */
    while (u != NULL && u->fd >= 0 && len > 0) {
        ssize_t n = write(u->fd, data, len);
        if (n > 0) {
            data += n;
            len -= (size_t)n;
            u->written += (uint64_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno != EAGAIN) {
            upload_fail(u, 409, "STDIN_CLOSED", "the process closed its stdin");
            break;
        }
        struct pollfd pfd[3] = {{.fd = u->fd, .events = POLLOUT},
                                {.fd = u->session->gone_r, .events = POLLIN},
                                {.fd = u->conn_fd, .events = POLLRDHUP}};
        if (poll(pfd, 3, -1) < 0 && errno != EINTR)
            return MHD_NO;
        if (pfd[1].revents != 0) {
            upload_fail(u, 404, "CONTEXT_NOT_FOUND", "the pty session was closed");
            break;
        }
        /* The peer went mid-body: the connection ends, and the pipe goes back (xd_pty_stdin_end).
         */
        if (pfd[2].revents != 0)
            return MHD_NO;
    }
    return MHD_YES;
}

void xd_pty_give_back_stdin(xd_pty *s, int fd, bool done)
{
    pthread_mutex_lock(&s->mu);
    if (done || fd < 0) {
        if (fd >= 0)
            close(fd);
        s->stdin_state = XD_STDIN_CLOSED;
    } else {
        s->stdin_fd = fd;
        s->stdin_state = XD_STDIN_RETURNED;
    }
    pthread_mutex_unlock(&s->mu);
    xd_pty_wake(s);
}

static void give_back(xd_pty_upload *u, bool body_done)
{
    xd_pty_give_back_stdin(u->session, u->fd, body_done);
    u->fd = -1;
}

enum MHD_Result xd_pty_stdin_done(struct MHD_Connection *conn, xd_req *r)
{
    xd_pty_upload *u = r->pty_stdin;
    give_back(u, true);
    if (u->status != 0)
        return xd_respond_error(conn, u->status, u->code, "%s", u->message);
    cJSON *o = cJSON_CreateObject();
    if (o != NULL && cJSON_AddNumberToObject(o, "written", (double)u->written) == NULL) {
        cJSON_Delete(o);
        o = NULL;
    }
    return xd_respond_json(conn, 200, o);
}

void xd_pty_stdin_end(xd_req *r)
{
    xd_pty_upload *u = r->pty_stdin;
    if (u == NULL)
        return;
    r->pty_stdin = NULL;
    if (u->fd >= 0)
        give_back(u, false);
    xd_pty_unref(u->session);
    free(u);
}
