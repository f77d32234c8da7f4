/* A PTY session's thread: starts the process at the first attach, keeps its output in the
 * ring, and serves one WebSocket client at a time with back-pressure both ways. */
#include "pty.h"

#include "execd_json.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <termios.h>
#include <unistd.h>

#define NS_PER_MS        1000000ull
#define RING_BYTES       (1u << 20)
#define CHUNK_MAX        (32u * 1024)
#define MESSAGE_MAX      (256u * 1024) /* larger client messages are closed with 1009 */
#define STDIN_MAX        (1u << 20)    /* stdin the process has not read yet */
#define PING_NS          (30000ull * NS_PER_MS)
#define READ_DEADLINE_NS (60000ull * NS_PER_MS)
#define CLOSE_GRACE_NS   (2000ull * NS_PER_MS)
/* After the process ended, output still arriving (a pty hands it over asynchronously, and
 * children may hold the terminal) is taken until this long passes without any. */
#define DRAIN_QUIET_NS (100ull * NS_PER_MS)

typedef struct session_io {
    xd_pty *s;
    xd_cmd *cmd;
    int pty_master;            /* -1 in pipe mode */
    int in_fd, out_fd, err_fd; /* -1 once closed or at their end */
    bool start_failed;
    char start_error[512];
    bool exited, output_done, killed;
    bool exit_delivered; /* a client took the exit (or START_FAILED): the session may go */
    int exit_code;
    uint64_t quiet_until_ns;
    moat_execd_ring ring;
    moat_buf stdin_buf;
    bool stdin_closed; /* close_stdin came: the pipe closes once stdin_buf is written */
    bool stdin_lent;   /* in_fd is an uploader's (pty_stdin.c) */
    xd_pty_client *client;
    uint64_t detached_since_ns;
    uint8_t chunk[1 + CHUNK_MAX];
} session_io;

static void queue_text(xd_pty_client *c, const char *json)
{
    moat_execd_ws_queue(c->ws, MOAT_EXECD_WS_TEXT, json, strlen(json));
}

static void send_error(xd_pty_client *c, const char *code, const char *message)
{
    cJSON *o = cJSON_CreateObject();
    char *text = NULL;
    if (o != NULL && cJSON_AddStringToObject(o, "type", "error") != NULL &&
        cJSON_AddStringToObject(o, "code", code) != NULL &&
        moat__execd_json_set(o, "error", moat__execd_json_str(message)))
        text = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (text != NULL)
        queue_text(c, text);
    cJSON_free(text);
}

/* The close goes once what is queued before it is sent. */
static void close_after_queued(xd_pty_client *c, uint16_t code, const char *reason, uint64_t now)
{
    c->close_code = code;
    c->close_reason = reason;
    c->close_deadline_ns = now + CLOSE_GRACE_NS;
}

static void send_exit(session_io *io, xd_pty_client *c, uint64_t now)
{
    char json[64];
    snprintf(json, sizeof(json), "{\"type\":\"exit\",\"exit_code\":%d}", io->exit_code);
    queue_text(c, json);
    close_after_queued(c, 1000, "process exited", now);
    c->exit_sent = true;
}

/* ---- starting the process ---- */

static bool open_pty(session_io *io, int *slave)
{
    char name[128];
    int m = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (m < 0 || grantpt(m) != 0 || unlockpt(m) != 0 || ptsname_r(m, name, sizeof(name)) != 0 ||
        (*slave = open(name, O_RDWR | O_NOCTTY | O_CLOEXEC)) < 0) {
        snprintf(io->start_error, sizeof(io->start_error), "open pty: %s", strerror(errno));
        if (m >= 0)
            close(m);
        return false;
    }
    struct winsize size = {.ws_row = io->s->rows, .ws_col = io->s->cols};
    ioctl(m, TIOCSWINSZ, &size);
    fcntl(m, F_SETFL, O_NONBLOCK);
    io->pty_master = io->in_fd = io->out_fd = m;
    return true;
}

/* Pipe mode: child[] gets the child's ends, io the non-blocking other ends. */
static bool open_pipes(session_io *io, int child[3])
{
    int p[3][2];
    for (int i = 0; i < 3; i++) {
        if (pipe2(p[i], O_CLOEXEC) != 0) {
            snprintf(io->start_error, sizeof(io->start_error), "pipe: %s", strerror(errno));
            for (int j = 0; j < i; j++) {
                close(p[j][0]);
                close(p[j][1]);
            }
            return false;
        }
    }
    child[0] = p[0][0];
    child[1] = p[1][1];
    child[2] = p[2][1];
    io->in_fd = p[0][1];
    io->out_fd = p[1][0];
    io->err_fd = p[2][0];
    fcntl(io->in_fd, F_SETFL, O_NONBLOCK);
    fcntl(io->out_fd, F_SETFL, O_NONBLOCK);
    fcntl(io->err_fd, F_SETFL, O_NONBLOCK);
    return true;
}

static void start_process(session_io *io)
{
    xd_pty *s = io->s;
    int child[3] = {-1, -1, -1};
    bool opened = s->pipe_mode ? open_pipes(io, child) : open_pty(io, &child[0]);
    if (!opened) {
        io->start_failed = true;
        return;
    }
    if (!s->pipe_mode)
        child[1] = child[2] = child[0];
    char *argv[6];
    size_t k = 0;
    argv[k++] = (char *)xd.cfg.shell;
    if (xd.cfg.shell_is_bash) {
        argv[k++] = "--norc";
        argv[k++] = "--noprofile";
    }
    if (s->command != NULL) {
        argv[k++] = "-c";
        argv[k++] = s->command;
    }
    argv[k] = NULL;
    char **env = xd_env_build(NULL, NULL);
    if (env != NULL && !s->pipe_mode)
        env = xd_env_set(env, "TERM", 4, s->term, strlen(s->term));
    xd_spawn sp = {.argv = argv,
                   .envp = env,
                   .cwd = s->cwd,
                   .with_stdin = true,
                   .in_fd = child[0],
                   .out_fd = child[1],
                   .err_fd = child[2],
                   .controlling_tty = !s->pipe_mode};
    io->cmd =
        env != NULL ? xd_cmd_new(s->command != NULL ? s->command : argv[0], true, NULL) : NULL;
    if (io->cmd == NULL) {
        snprintf(io->start_error, sizeof(io->start_error),
                 "too many commands are running or retained");
        io->start_failed = true;
    } else if (xd_cmd_start(io->cmd, &sp, 0, io->start_error, sizeof(io->start_error)) != 0) {
        io->start_failed = true;
    } else {
        atomic_store(&s->running, true);
    }
    xd_env_free(env);
    close(child[0]);
    if (s->pipe_mode) {
        close(child[1]);
        close(child[2]);
    }
}

/* ---- signals ---- */

/* In a terminal the shell's jobs run in groups of their own: a signal goes where Ctrl-C
 * would, the terminal's foreground group. */
static void signal_process(session_io *io, int signo)
{
    if (io->cmd == NULL || io->exited || io->cmd->pid <= 0)
        return;
    pid_t fg = io->pty_master >= 0 ? tcgetpgrp(io->pty_master) : -1;
    kill(fg > 0 ? -fg : -io->cmd->pid, signo);
}

static void kill_everything(session_io *io)
{
    io->killed = true;
    if (io->cmd == NULL || io->exited || io->cmd->pid <= 0)
        return;
    pid_t fg = io->pty_master >= 0 ? tcgetpgrp(io->pty_master) : -1;
    if (fg > 0 && fg != io->cmd->pid)
        kill(-fg, SIGKILL);
    kill(-io->cmd->pid, SIGKILL);
}

/* ---- the client ---- */

static bool stdin_full(const session_io *io)
{
    return io->in_fd >= 0 && io->stdin_buf.len + MESSAGE_MAX > STDIN_MAX;
}

static ssize_t client_recv(void *ud, uint8_t *buf, size_t len)
{
    xd_pty_client *c = ud;
    session_io *io = c->owner;
    /* Room for one more whole message, or the socket waits (and so the client's TCP window). */
    if (stdin_full(io)) {
        errno = EAGAIN;
        return -1;
    }
    ssize_t n;
    if (c->early_off < c->early_len) {
        n = (ssize_t)(c->early_len - c->early_off < len ? c->early_len - c->early_off : len);
        memcpy(buf, c->early + c->early_off, (size_t)n);
        c->early_off += (size_t)n;
    } else {
        n = recv(c->fd, buf, len, MSG_DONTWAIT);
    }
    if (n > 0)
        c->last_recv_ns = moat_time_mono_ns();
    return n;
}

static ssize_t client_send(void *ud, const uint8_t *buf, size_t len)
{
    xd_pty_client *c = ud;
    return send(c->fd, buf, len, MSG_DONTWAIT | MSG_NOSIGNAL);
}

static void stdin_append(session_io *io, xd_pty_client *c, const void *data, size_t len)
{
    if (io->stdin_closed) {
        send_error(c, "INVALID_FRAME", "stdin was closed");
        return;
    }
    if (io->stdin_lent) {
        send_error(c, "STDIN_WRITE_FAILED", "stdin is being uploaded (POST /pty/{id}/stdin)");
        return;
    }
    if (io->in_fd < 0)
        return;
    if (moat_buf_append(&io->stdin_buf, data, len) != MOAT_OK)
        send_error(c, "STDIN_WRITE_FAILED", "stdin buffer full");
}

/* Pipe mode: the process reads EOF once what it was sent is written. */
static void end_stdin_when_written(session_io *io)
{
    if (io->stdin_closed && io->pty_master < 0 && io->in_fd >= 0 && io->stdin_buf.len == 0) {
        close(io->in_fd);
        io->in_fd = -1;
    }
}

/* A terminal has no end of input but its VEOF character (^D), read as EOF by a program in
 * canonical mode at the start of a line. */
static void close_stdin(session_io *io, xd_pty_client *c)
{
    if (io->stdin_closed)
        return;
    if (io->pty_master >= 0) {
        struct termios tio;
        char veof = tcgetattr(io->pty_master, &tio) == 0 ? (char)tio.c_cc[VEOF] : 0x04;
        stdin_append(io, c, &veof, 1);
    }
    io->stdin_closed = true;
    end_stdin_when_written(io);
}

static void on_frame(session_io *io, xd_pty_client *c, const moat_execd_pty_frame *f)
{
    switch (f->type) {
    case MOAT_EXECD_PTY_STDIN:
        stdin_append(io, c, f->data, f->data_len);
        break;
    case MOAT_EXECD_PTY_RESIZE:
        /* Pipe mode has no window; the reference accepts and ignores the frame. */
        if (io->pty_master >= 0) {
            struct winsize size = {.ws_row = f->rows, .ws_col = f->cols};
            if (ioctl(io->pty_master, TIOCSWINSZ, &size) != 0)
                send_error(c, "RUNTIME_ERROR", strerror(errno));
        }
        break;
    case MOAT_EXECD_PTY_SIGNAL:
        signal_process(io, f->signo);
        break;
    case MOAT_EXECD_PTY_PING:
        queue_text(c, "{\"type\":\"pong\"}");
        break;
    case MOAT_EXECD_PTY_CLOSE_STDIN:
        close_stdin(io, c);
        break;
    case MOAT_EXECD_PTY_INVALID:
        send_error(c, "INVALID_FRAME", f->why);
        break;
    }
}

static void client_message(void *ud, int opcode, const uint8_t *msg, size_t len)
{
    xd_pty_client *c = ud;
    session_io *io = c->owner;
    if (opcode == MOAT_EXECD_WS_BINARY) {
        if (len >= 1 && msg[0] == 0x00)
            stdin_append(io, c, msg + 1, len - 1);
        else
            send_error(c, "INVALID_FRAME", "a binary frame is 0x00 followed by stdin bytes");
        return;
    }
    moat_execd_pty_frame f;
    moat_execd_pty_parse_frame((const char *)msg, len, &f);
    on_frame(io, c, &f);
    free(f.data);
}

static void client_begin(session_io *io, xd_pty_client *c, uint64_t now)
{
    moat_execd_ws_io wio = {
        .recv = client_recv, .send = client_send, .on_message = client_message, .ud = c};
    c->owner = io;
    c->ws = moat_execd_ws_new(&wio, MESSAGE_MAX);
    if (c->ws == NULL) {
        xd_pty_client_drop(c);
        return;
    }
    c->last_recv_ns = now;
    c->next_ping_ns = now + PING_NS;
    if (c->has_since && c->since < io->ring.end)
        moat_execd_ws_queue_replay(c->ws, &c->replay, &io->ring, c->since);
    char json[160];
    snprintf(json, sizeof(json), "{\"type\":\"connected\",\"session_id\":\"%s\",\"mode\":\"%s\"}",
             io->s->id, io->s->pipe_mode ? "pipe" : "pty");
    queue_text(c, json);
    if (io->start_failed) {
        send_error(c, "START_FAILED", io->start_error);
        close_after_queued(c, 1011, "start failed", now);
    } else if (io->output_done) {
        send_exit(io, c, now);
    }
    io->client = c;
}

static void client_end(session_io *io, uint64_t now)
{
    xd_pty_client *c = io->client;
    /* Written out whole (its close follows it), so a client that hangs up at once after the
     * exit, without waiting for the close, has still had it. */
    if ((c->exit_sent || io->start_failed) &&
        (moat_execd_ws_close_sent(c->ws) != 0 || !moat_execd_ws_want_write(c->ws)))
        io->exit_delivered = true;
    xd_pty_client_drop(c);
    io->client = NULL;
    io->detached_since_ns = now;
}

/* A second client with takeover=1: the first one is told why it goes. */
static void take_over(session_io *io, uint64_t now)
{
    moat_execd_ws_close(io->client->ws, 4001, "TAKEN_OVER");
    moat_execd_ws_send(io->client->ws);
    client_end(io, now);
}

/* ---- the process's side ---- */

/* Output is read only when the client has sent everything queued (or there is none): a
 * client that does not read stops the reading, and the process blocks on its terminal. */
static bool output_wanted(const session_io *io)
{
    return io->client == NULL || moat_execd_ws_queued(io->client->ws) == 0;
}

static void end_fd(session_io *io, int *fd)
{
    if (*fd != io->pty_master)
        close(*fd);
    *fd = -1;
}

static void read_output(session_io *io, int *fd, uint8_t stream, uint64_t now)
{
    ssize_t n = read(*fd, io->chunk + 1, CHUNK_MAX);
    if (n > 0) {
        moat_execd_ring_write(&io->ring, io->chunk + 1, (size_t)n);
        atomic_store(&io->s->output_offset, io->ring.end);
        io->chunk[0] = stream;
        if (io->client != NULL)
            moat_execd_ws_queue(io->client->ws, MOAT_EXECD_WS_BINARY, io->chunk, (size_t)n + 1);
        io->quiet_until_ns = now + DRAIN_QUIET_NS;
    } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
        /* EOF of a pipe; EIO of a pty whose other side is closed everywhere. */
        end_fd(io, fd);
    }
}

static void write_stdin(session_io *io)
{
    ssize_t n = write(io->in_fd, io->stdin_buf.data, io->stdin_buf.len);
    if (n > 0) {
        moat_buf_consume(&io->stdin_buf, (size_t)n);
    } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
        if (io->client != NULL)
            send_error(io->client, "STDIN_WRITE_FAILED", strerror(errno));
        moat_buf_reset(&io->stdin_buf);
        end_fd(io, &io->in_fd);
    }
}

static void note_exit(session_io *io, uint64_t now)
{
    char byte;
    if (read(io->cmd->notify_r, &byte, 1) != 1)
        return;
    pthread_mutex_lock(&xd.lock);
    io->exited = !io->cmd->running;
    io->exit_code = io->cmd->exit_code;
    pthread_mutex_unlock(&xd.lock);
    if (io->exited) {
        atomic_store(&io->s->running, false);
        io->quiet_until_ns = now + DRAIN_QUIET_NS;
    }
}

static void update_output_done(session_io *io, bool closing, uint64_t now)
{
    if (io->output_done)
        return;
    if (io->exited && io->client != NULL && !output_wanted(io))
        io->quiet_until_ns = now + DRAIN_QUIET_NS; /* a slow client is not silence */
    bool drained = (io->out_fd < 0 && io->err_fd < 0) || now >= io->quiet_until_ns || closing;
    io->output_done = io->start_failed || (io->exited && drained);
}

/* ---- stdin lent to an upload (pty_stdin.c) ---- */

/* Answers an uploader's request for the pipe and takes back what it gives back or ends. */
static void stdin_handover(session_io *io)
{
    xd_pty *s = io->s;
    pthread_mutex_lock(&s->mu);
    switch (s->stdin_state) {
    case XD_STDIN_WANTED:
        if (io->in_fd < 0 || io->stdin_closed || io->exited || io->pty_master >= 0) {
            s->stdin_state = XD_STDIN_CLOSED;
            pthread_cond_broadcast(&s->stdin_cv);
        } else if (io->stdin_buf.len == 0) {
            /* stdin that came over the WebSocket is written first: the order stays */
            s->stdin_fd = io->in_fd;
            io->in_fd = -1;
            io->stdin_lent = true;
            s->stdin_state = XD_STDIN_LENT;
            pthread_cond_broadcast(&s->stdin_cv);
        }
        break;
    case XD_STDIN_RETURNED:
        io->in_fd = s->stdin_fd;
        s->stdin_fd = -1;
        io->stdin_lent = false;
        s->stdin_state = XD_STDIN_OWN;
        end_stdin_when_written(io);
        break;
    case XD_STDIN_CLOSED:
        if (io->stdin_lent) {
            io->stdin_lent = false;
            io->stdin_closed = true;
        }
        break;
    default:
        break;
    }
    pthread_mutex_unlock(&s->mu);
}

/* ---- the loop ---- */

typedef struct poll_set {
    struct pollfd fds[6];
    int wake, notify, out, err, in, client;
    int n;
} poll_set;

static int add_fd(poll_set *ps, int fd, short events)
{
    if (fd < 0 || events == 0)
        return -1;
    ps->fds[ps->n] = (struct pollfd){.fd = fd, .events = events};
    return ps->n++;
}

static bool ready(const poll_set *ps, int i)
{
    return i >= 0 && (ps->fds[i].revents & (ps->fds[i].events | POLLHUP | POLLERR)) != 0;
}

static uint64_t earliest(uint64_t a, uint64_t b)
{
    return b != 0 && b < a ? b : a;
}

/* After a close was sent with reading over (malformed input, or the close handshake done),
 * what the client still sends is read and dropped until its end: closing a socket with
 * unread bytes would reset the connection, and the client could lose the close frame. */
static bool draining(const xd_pty_client *c)
{
    return moat_execd_ws_close_sent(c->ws) != 0 && !moat_execd_ws_want_read(c->ws);
}

/* false when the client has gone. */
static bool drain(xd_pty_client *c)
{
    uint8_t scratch[4096];
    ssize_t n;
    while ((n = recv(c->fd, scratch, sizeof(scratch), MSG_DONTWAIT)) > 0)
        ;
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR);
}

/* Serves the client's socket after poll; false when the client is gone. */
static bool serve_client(session_io *io, const poll_set *ps, uint64_t now)
{
    xd_pty_client *c = io->client;
    bool early = c->early_off < c->early_len && !stdin_full(io);
    if (draining(c)) {
        if (ready(ps, ps->client) && !drain(c))
            return false;
    } else if ((ready(ps, ps->client) || early) && moat_execd_ws_want_read(c->ws) &&
               !moat_execd_ws_recv(c->ws)) {
        return false;
    }
    if (now >= c->next_ping_ns) {
        moat_execd_ws_queue(c->ws, MOAT_EXECD_WS_PING, "", 0);
        c->next_ping_ns = now + PING_NS;
    }
    if (stdin_full(io))
        c->last_recv_ns = now; /* not reading is execd's choice, not the client's silence */
    /* last_recv_ns may be later than now: set while reading above. */
    if (now > c->last_recv_ns && now - c->last_recv_ns >= READ_DEADLINE_NS)
        return false;
    if (c->close_code != 0 && moat_execd_ws_queued(c->ws) == 0) {
        moat_execd_ws_close(c->ws, c->close_code, c->close_reason);
        c->close_code = 0;
    }
    if (moat_execd_ws_want_write(c->ws) && !moat_execd_ws_send(c->ws))
        return false;
    /* Both closes went: the handshake is over, and a client waiting for the socket to end (as
     * moatd's bridge does before it ends the call) should not wait for the grace period. */
    if (moat_execd_ws_close_sent(c->ws) != 0 && moat_execd_ws_close_received(c->ws) &&
        !moat_execd_ws_want_write(c->ws))
        return false;
    /* Malformed input made wslay queue a close (1002, 1007, 1009). */
    if (!moat_execd_ws_want_read(c->ws) && c->close_deadline_ns == 0)
        c->close_deadline_ns = now + CLOSE_GRACE_NS;
    return c->close_deadline_ns == 0 || now < c->close_deadline_ns;
}

static int poll_timeout_ms(const session_io *io, bool closing, uint64_t now)
{
    uint64_t at = now + 3600000ull * NS_PER_MS;
    if (io->client != NULL) {
        at = earliest(at, io->client->next_ping_ns);
        at = earliest(at, io->client->last_recv_ns + READ_DEADLINE_NS);
        at = earliest(at, io->client->close_deadline_ns);
        if (io->client->early_off < io->client->early_len && !stdin_full(io))
            at = now;
        /* A close waiting only for what was queued before it, which has gone: send it now. */
        if (io->client->close_code != 0 && moat_execd_ws_queued(io->client->ws) == 0)
            at = now;
    } else if (!closing) {
        at = earliest(at, io->detached_since_ns + xd.cfg.pty_idle_ns);
    }
    if (io->exited && !io->output_done)
        at = earliest(at, io->quiet_until_ns);
    return at <= now ? 0 : (int)((at - now + NS_PER_MS - 1) / NS_PER_MS);
}

/* true when the session was released (xd_pty_release) rather than closed. */
static bool run(session_io *io)
{
    xd_pty *s = io->s;
    for (;;) {
        uint64_t now = moat_time_mono_ns();
        pthread_mutex_lock(&s->mu);
        xd_pty_client *pending = s->pending;
        s->pending = NULL;
        bool closing = s->closing;
        pthread_mutex_unlock(&s->mu);
        if (pending != NULL) {
            if (io->client != NULL)
                take_over(io, now);
            client_begin(io, pending, now);
        }
        if (closing && !io->killed)
            kill_everything(io);
        stdin_handover(io);
        if (io->client == NULL && !closing && now - io->detached_since_ns >= xd.cfg.pty_idle_ns) {
            xd_pty_unlist(s);
            continue;
        }
        update_output_done(io, closing, now);
        if (io->output_done && io->client != NULL && !io->client->exit_sent && !io->start_failed)
            send_exit(io, io->client, now);
        if (io->client != NULL && moat_execd_ws_want_write(io->client->ws) &&
            !moat_execd_ws_send(io->client->ws))
            client_end(io, now);
        if (closing && io->output_done && io->client == NULL)
            return false;
        if (io->output_done && io->client == NULL && io->exit_delivered &&
            xd_pty_release(s, io->exit_code, io->start_failed ? io->start_error : NULL))
            return true;

        poll_set ps = {.n = 0};
        ps.wake = add_fd(&ps, s->wake_r, POLLIN);
        ps.notify = add_fd(&ps, io->cmd != NULL && !io->exited ? io->cmd->notify_r : -1, POLLIN);
        short out_events = output_wanted(io) ? POLLIN : 0;
        ps.out = add_fd(&ps, io->out_fd, out_events);
        ps.err = add_fd(&ps, io->err_fd, out_events);
        ps.in = add_fd(&ps, io->stdin_buf.len > 0 ? io->in_fd : -1, POLLOUT);
        ps.client = -1;
        if (io->client != NULL) {
            moat_execd_ws *ws = io->client->ws;
            bool reading = draining(io->client) || (moat_execd_ws_want_read(ws) && !stdin_full(io));
            short ev =
                (short)((reading ? POLLIN : 0) | (moat_execd_ws_want_write(ws) ? POLLOUT : 0));
            ps.client = add_fd(&ps, ev != 0 ? io->client->fd : -1, ev);
        }
        int rc = poll(ps.fds, (nfds_t)ps.n, poll_timeout_ms(io, closing, now));
        if (rc < 0 && errno != EINTR)
            return false;
        now = moat_time_mono_ns();
        char drain[64];
        if (ready(&ps, ps.wake))
            while (read(s->wake_r, drain, sizeof(drain)) > 0)
                ;
        if (ready(&ps, ps.notify))
            note_exit(io, now);
        /* stdout first: output written to both before this wake-up keeps that order. */
        if (ready(&ps, ps.out))
            read_output(io, &io->out_fd, 0x01, now);
        if (ready(&ps, ps.err))
            read_output(io, &io->err_fd, 0x02, now);
        if (ready(&ps, ps.in)) {
            write_stdin(io);
            end_stdin_when_written(io);
        }
        if (io->client != NULL && !serve_client(io, &ps, now))
            client_end(io, now);
    }
}

void *xd_pty_session_main(void *arg)
{
    session_io *io = calloc(1, sizeof(*io));
    xd_pty *s = arg;
    if (io == NULL || moat_execd_ring_init(&io->ring, RING_BYTES) != MOAT_OK) {
        if (io != NULL)
            free(io);
        xd_pty_unlist(s);
        pthread_mutex_lock(&s->mu);
        xd_pty_client *pending = s->pending;
        s->pending = NULL;
        pthread_mutex_unlock(&s->mu);
        xd_pty_client_drop(pending);
        xd_pty_unref(s);
        xd_pty_thread_exit();
        return NULL;
    }
    io->s = s;
    io->pty_master = io->in_fd = io->out_fd = io->err_fd = -1;
    moat_buf_init(&io->stdin_buf, STDIN_MAX);
    io->detached_since_ns = moat_time_mono_ns();
    pthread_mutex_lock(&s->mu);
    bool finished = s->finished;
    if (finished) {
        /* A released session attached again: its exit (no replay: the ring went with the
         * release), and the thread ends once that client does. */
        io->exited = io->exit_delivered = true;
        io->exit_code = s->exit_code;
        io->start_failed = s->start_error != NULL;
        if (io->start_failed)
            snprintf(io->start_error, sizeof(io->start_error), "%s", s->start_error);
    }
    pthread_mutex_unlock(&s->mu);
    if (!finished)
        start_process(io);
    bool released = run(io);
    if (io->client != NULL)
        client_end(io, 0);
    /* Once released, a pending client belongs to the next thread. */
    pthread_mutex_lock(&s->mu);
    xd_pty_client *pending = released ? NULL : s->pending;
    if (!released)
        s->pending = NULL;
    pthread_mutex_unlock(&s->mu);
    xd_pty_client_drop(pending);
    kill_everything(io);
    atomic_store(&s->running, false);
    if (io->in_fd >= 0)
        end_fd(io, &io->in_fd);
    if (io->out_fd >= 0)
        end_fd(io, &io->out_fd);
    if (io->err_fd >= 0)
        end_fd(io, &io->err_fd);
    if (io->pty_master >= 0)
        close(io->pty_master);
    xd_cmd_unref(io->cmd);
    moat_execd_ring_free(&io->ring);
    moat_buf_free(&io->stdin_buf);
    free(io);
    if (!released)
        xd_pty_unlist(s);
    xd_pty_unref(s);
    xd_pty_thread_exit();
    return NULL;
}
