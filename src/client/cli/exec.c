/* The CLI's commands that run something in a session (cli.h): `exec`, streamed, with Ctrl-C
 * cancelling the remote command; `exec -i`/`-t` and `shell`, an interactive call with stdin
 * forwarded under the send window and, with a terminal, the local one in raw mode, its resizes
 * and signals sent, and restored on every way out; and the command line both send to bash -c.
 * Arguments, the session, file and health commands are main.c's. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include "cli.h"

static bool write_fd(int fd, const uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return false;
        p += w;
        n -= (size_t)w;
    }
    return true;
}

/* Appends word to buf as one shell word, in single quotes. */
static bool shell_quote(char *buf, size_t cap, size_t *len, const char *word)
{
    size_t n = *len;
    if (n + 1 >= cap)
        return false;
    buf[n++] = '\'';
    for (const char *p = word; *p; p++) {
        const char *piece = *p == '\'' ? "'\\''" : NULL;
        size_t plen = piece ? 4 : 1;
        if (n + plen + 2 >= cap)
            return false;
        if (piece)
            memcpy(buf + n, piece, plen);
        else
            buf[n] = *p;
        n += plen;
    }
    buf[n++] = '\'';
    buf[n] = '\0';
    *len = n;
    return true;
}

static volatile sig_atomic_t interrupted;

static void on_signal(int sig)
{
    (void)sig;
    interrupted = 1;
}

char *cli_command_line(cli *c, int argc, char **argv, int *rc)
{
    char *command = malloc(c->max_frame);
    if (command == NULL) {
        *rc = cli_fail(MOAT_CODE_RESOURCE_EXHAUSTED, "no_memory", "out of memory");
        return NULL;
    }
    size_t len = 0;
    command[0] = '\0';
    bool fits = true;
    if (argc == 1) {
        fits = strlen(argv[0]) < c->max_frame;
        if (fits)
            memcpy(command, argv[0], strlen(argv[0]) + 1);
    }
    for (int i = 0; argc > 1 && i < argc && fits; i++) {
        if (i)
            command[len++] = ' ';
        fits = shell_quote(command, c->max_frame, &len, argv[i]);
    }
    if (!fits) {
        free(command);
        *rc = cli_fail(MOAT_CODE_INVALID_ARGUMENT, "request_too_big",
                       "the command does not fit in a frame");
        return NULL;
    }
    return command;
}

/* How an Exec stream ended: the remote exit code, kept from its exit event. */
typedef struct exec_outcome {
    int exit_status;   /* -1 until an exit event with a code (124: timed out) */
    char unknown[512]; /* why the code is unknown, from such an exit event */
} exec_outcome;

/* Writes an output event where it belongs, or keeps an exit event's code. */
static void exec_event_apply(const moat_exec_event *ev, exec_outcome *out)
{
    if (ev->kind == MOAT_EXEC_OUTPUT) {
        write_fd(ev->stream == MOAT_EXEC_STDERR ? STDERR_FILENO : STDOUT_FILENO, ev->data.data,
                 ev->data.len);
    } else if (ev->kind == MOAT_EXEC_EXIT) {
        if (ev->timed_out)
            out->exit_status = 124;
        else if (ev->exit_known)
            out->exit_status = ev->exit_code >= 0 && ev->exit_code <= 255 ? ev->exit_code : 255;
        else
            snprintf(out->unknown, sizeof out->unknown, "%.*s", (int)ev->exit_unknown_reason.len,
                     ev->exit_unknown_reason.len ? (const char *)ev->exit_unknown_reason.data
                                                 : "no reason given");
    }
}

/* The CLI's exit status once the stream ended with st. */
static int exec_exit(const moat_status *st, const exec_outcome *out)
{
    if (st->code != MOAT_CODE_OK)
        return cli_report(st);
    if (out->exit_status >= 0)
        return out->exit_status;
    fprintf(stderr, "moat: exit code unknown: %s\n",
            out->unknown[0] ? out->unknown : "the command ended without an exit event");
    return 255;
}

int cmd_exec(cli *c, const char *session, const char *cwd, uint64_t timeout_ms, const moat_kv *env,
             size_t env_count, int argc, char **argv)
{
    int rc;
    char *command = cli_command_line(c, argc, argv, &rc);
    if (command == NULL)
        return rc;
    moat_run_command_req r = {session, command, cwd, timeout_ms, env, env_count, false};
    moat_call *call;
    moat_status st;
    moat_err err = moat_exec_run(c->client, &r, 0, &call, &st);
    free(command);
    if (err != MOAT_OK)
        return cli_report(&st);
    /* Ctrl-C cancels the remote command instead of abandoning it. */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    static moat_exec_event ev;
    exec_outcome outcome = {.exit_status = -1};
    bool cancelled = false;
    for (;;) {
        err = moat_exec_next(call, 200, &ev);
        if (err == MOAT_E_TIMEOUT) {
            if (interrupted && !cancelled) {
                moat_call_cancel(call, "interrupted");
                cancelled = true;
            }
            continue;
        }
        if (err == MOAT_E_CLOSED)
            break;
        if (err == MOAT_OK) /* else an event that does not decode */
            exec_event_apply(&ev, &outcome);
    }
    st = *moat_call_status(call);
    moat_call_free(call);
    if (st.code == MOAT_CODE_CANCELLED && cancelled)
        return 130;
    return exec_exit(&st, &outcome);
}

/* Signals an interactive session handles in its loop: the handler only
 * writes the signal's number to this pipe, which the loop polls. */
static int signal_pipe[2] = {-1, -1};

static void on_session_signal(int sig)
{
    int saved = errno;
    unsigned char b = (unsigned char)sig;
    (void)!write(signal_pipe[1], &b, 1);
    errno = saved;
}

/* Stdin is read only while the send window has room for a read and this
 * much more, so that a resize, signal or close_stdin never waits for credit
 * (waiting would stop the output, which the process may be blocked on). */
#define CONTROL_RESERVE 256u
/* The largest stdin read: bigger ones bring fewer messages and no more speed. */
#define STDIN_CHUNK (128u * 1024u)

/* The local terminal while a session has it in raw mode. */
typedef struct local_terminal {
    bool raw;
    struct termios saved;
} local_terminal;

/* Raw mode as `docker exec -it` sets it: every byte, Ctrl-C included, goes to
 * the remote pty, whose line discipline does the signals and the echo. */
static bool terminal_make_raw(local_terminal *t)
{
    if (tcgetattr(STDIN_FILENO, &t->saved) != 0)
        return false;
    struct termios raw = t->saved;
    cfmakeraw(&raw);
    if (tcsetattr(STDIN_FILENO, TCSANOW, &raw) != 0)
        return false;
    t->raw = true;
    return true;
}

static void terminal_restore(local_terminal *t)
{
    if (t->raw)
        tcsetattr(STDIN_FILENO, TCSANOW, &t->saved);
    t->raw = false;
}

/* The local terminal's size, false when it has none. */
static bool terminal_size(uint32_t *rows, uint32_t *cols)
{
    struct winsize ws;
    if (ioctl(STDIN_FILENO, TIOCGWINSZ, &ws) != 0 || ws.ws_row == 0 || ws.ws_col == 0)
        return false;
    *rows = ws.ws_row;
    *cols = ws.ws_col;
    return true;
}

/* One interactive call in progress. */
typedef struct session_io {
    moat_call *call;
    bool tty;
    bool stdin_open;     /* stdin is forwarded and has not ended */
    bool resize_pending; /* SIGWINCH came; the size goes when there is credit */
    int ended_by;        /* SIGTERM or SIGHUP to the CLI: the call is cancelled */
} session_io;

/* Handles the signals the pipe holds. */
static void session_signals(session_io *io)
{
    unsigned char sigs[32];
    ssize_t n = read(signal_pipe[0], sigs, sizeof sigs);
    for (ssize_t i = 0; i < n; i++) {
        if (sigs[i] == SIGWINCH)
            io->resize_pending = io->tty;
        else if (sigs[i] == SIGINT)
            moat_exec_signal(io->call, "SIGINT", 0);
        else if (sigs[i] == SIGQUIT)
            moat_exec_signal(io->call, "SIGQUIT", 0);
        else
            io->ended_by = sigs[i];
    }
}

/* Reads what stdin has, as much as the credit takes, and sends it; EOF sends close_stdin. */
static void session_stdin(session_io *io)
{
    uint32_t credit = moat_call_send_window(io->call) - CONTROL_RESERVE;
    size_t moved;
    moat_err err = moat_exec_stdin_from_fd(io->call, STDIN_FILENO,
                                           credit < STDIN_CHUNK ? credit : STDIN_CHUNK, &moved, -1);
    if (err == MOAT_E_AGAIN || moved > 0)
        return;
    /* EOF, or a read error, which ends the input as EOF would */
    io->stdin_open = false;
    moat_exec_close_stdin(io->call, -1);
}

int cmd_interactive(cli *c, const char *session, const char *cwd, bool forward_stdin, bool tty,
                    const char *command)
{
    bool raw_wanted = tty && forward_stdin;
    if (raw_wanted && !isatty(STDIN_FILENO))
        return cli_fail(MOAT_CODE_INVALID_ARGUMENT, "not_a_tty", "the input device is not a TTY");
    moat_interactive_req r = {.session_id = session, .command = command, .cwd = cwd, .tty = tty};
    if (tty) {
        terminal_size(&r.rows, &r.cols);
        r.term = getenv("TERM");
    }
    session_io io = {.tty = tty, .stdin_open = forward_stdin};
    /* A pipe holds 64 KiB by default, so each read would bring at most that: a larger one
     * (best effort, capped by the kernel's pipe-max-size) halves the reads and wake-ups of a
     * bulk copy, and leaves the producer's side of the pipe no different. */
    struct stat in_st;
    if (forward_stdin && !tty && fstat(STDIN_FILENO, &in_st) == 0 && S_ISFIFO(in_st.st_mode))
        (void)fcntl(STDIN_FILENO, F_SETPIPE_SZ, 1 << 20);
    if (pipe2(signal_pipe, O_CLOEXEC | O_NONBLOCK) != 0)
        return cli_fail(MOAT_CODE_RESOURCE_EXHAUSTED, "no_memory", "out of memory or descriptors");
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_session_signal;
    static const int handled[] = {SIGINT, SIGQUIT, SIGTERM, SIGHUP, SIGWINCH};
    for (size_t i = 0; i < sizeof handled / sizeof handled[0]; i++)
        sigaction(handled[i], &sa, NULL);
    /* A closed stdout must end the session through the restore, not kill it. */
    signal(SIGPIPE, SIG_IGN);

    moat_status st;
    moat_err err = moat_exec_interactive(c->client, &r, 0, &io.call, &st);
    local_terminal term = {0};
    if (err == MOAT_OK && raw_wanted && !terminal_make_raw(&term)) {
        moat_status_set(&st, MOAT_CODE_FAILED_PRECONDITION, "terminal", "cannot set raw mode: %s",
                        strerror(errno));
        err = MOAT_E_IO;
    }
    static moat_exec_event ev;
    exec_outcome outcome = {.exit_status = -1};
    int keepalive_ms = (int)moat_client_get_limits(c->client)->idle_timeout_seconds * 500;
    while (err == MOAT_OK && io.ended_by == 0) {
        moat_err next;
        while ((next = moat_exec_next(io.call, 0, &ev)) != MOAT_E_TIMEOUT && next != MOAT_E_CLOSED)
            if (next == MOAT_OK)
                exec_event_apply(&ev, &outcome);
        if (next == MOAT_E_CLOSED)
            break;
        if (io.resize_pending && terminal_size(&r.rows, &r.cols))
            io.resize_pending = moat_exec_resize(io.call, r.rows, r.cols, 0) == MOAT_E_TIMEOUT;
        struct pollfd pfd[3] = {{moat_call_fd(io.call), POLLIN, 0},
                                {signal_pipe[0], POLLIN, 0},
                                {STDIN_FILENO, POLLIN, 0}};
        bool read_stdin = io.stdin_open && moat_call_send_window(io.call) > CONTROL_RESERVE;
        if (poll(pfd, read_stdin ? 3 : 2, keepalive_ms > 0 ? keepalive_ms : -1) < 0 &&
            errno != EINTR)
            break;
        if (pfd[1].revents)
            session_signals(&io);
        if (read_stdin && pfd[2].revents && io.ended_by == 0)
            session_stdin(&io);
    }
    terminal_restore(&term);
    if (err == MOAT_OK)
        st = *moat_call_status(io.call);
    moat_call_free(io.call);
    /* No handler may write to the pipe's descriptors once they are closed (and reused). */
    sa.sa_handler = SIG_DFL;
    for (size_t i = 0; i < sizeof handled / sizeof handled[0]; i++)
        sigaction(handled[i], &sa, NULL);
    close(signal_pipe[0]);
    close(signal_pipe[1]);
    if (io.ended_by != 0)
        return 128 + io.ended_by;
    return err != MOAT_OK ? cli_report(&st) : exec_exit(&st, &outcome);
}
