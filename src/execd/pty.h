/* PTY sessions (internal): shared by the REST side (pty.c) and each session's thread
 * (pty_session.c). */
#ifndef MOAT_EXECD_PTY_H
#define MOAT_EXECD_PTY_H

#include "internal.h"
#include "pty_proto.h"

#define XD_PTY_TERM_MAX 64
/* OpenSandbox's terminal size when the client names none. */
#define XD_PTY_DEFAULT_ROWS 24
#define XD_PTY_DEFAULT_COLS 80

/* A WebSocket handed over by libmicrohttpd after the 101. */
typedef struct xd_pty_client {
    int fd;
    struct MHD_UpgradeResponseHandle *urh;
    uint8_t *early; /* bytes libmicrohttpd read past the request: the first frames */
    size_t early_len, early_off;
    bool has_since;
    uint64_t since;
    /* The rest belongs to the session's thread. */
    moat_execd_ws *ws;
    moat_execd_ws_replay replay;
    uint64_t last_recv_ns, next_ping_ns;
    uint64_t close_deadline_ns; /* 0 until a close is queued */
    /* wslay sends control frames ahead of queued messages: a close that must follow them
     * waits here until they are out. */
    uint16_t close_code;
    const char *close_reason;
    bool exit_sent;
    struct xd_pty *session;
    void *owner; /* the session thread's state */
} xd_pty_client;

/* Who holds a pipe-mode session's stdin pipe (POST /pty/{id}/stdin, pty_stdin.c). */
typedef enum xd_pty_stdin_state {
    XD_STDIN_OWN,      /* the session's thread, which writes WebSocket stdin into it */
    XD_STDIN_WANTED,   /* an uploader waits for it (once the WebSocket stdin is written) */
    XD_STDIN_LENT,     /* the uploader writes into stdin_fd */
    XD_STDIN_RETURNED, /* an upload cut short gave stdin_fd back */
    XD_STDIN_CLOSED    /* stdin has ended (or the process has): no uploader gets it */
} xd_pty_stdin_state;

typedef struct xd_pty {
    char id[MOAT_UUID_STR_LEN];
    char *cwd;     /* NULL: execd's own */
    char *command; /* NULL: an interactive shell */
    /* Guarded by mu. */
    pthread_mutex_t mu;
    int refs;   /* the table, the session's thread, pending attach requests */
    int claims; /* attach requests under way plus the client attached: > 0 answers 409 */
    bool started, closing, listed;
    bool serving; /* a thread runs for the session */
    /* Released (xd_pty_release): the process has ended and a client was given its exit; the
     * session no longer counts against the live limit. Written holding table_lock and mu. */
    bool finished;
    int exit_code;          /* once finished */
    char *start_error;      /* once finished, when the process never started; owned */
    uint64_t idle_since_ns; /* created, or released: the idle timeout counts from it */
    bool pipe_mode;
    char term[XD_PTY_TERM_MAX + 1];
    uint16_t rows, cols;    /* the terminal's first size */
    xd_pty_client *pending; /* upgraded, not yet taken by the thread */
    xd_pty_stdin_state stdin_state;
    int stdin_fd;            /* the pipe's write end while lent or returned; -1 otherwise */
    pthread_cond_t stdin_cv; /* stdin_state left XD_STDIN_WANTED, or the session closes */
    /* Unlisting closes gone_w: an uploader waiting for the pipe to take more polls gone_r.
     * Both -1 once released. */
    int gone_r, gone_w;
    /* Read by GET /pty/{id} without the lock. */
    atomic_bool running;
    _Atomic uint64_t output_offset;
    /* Guarded by mu (the thread reads wake_r alone): -1 from a release until a new attach. */
    int wake_r, wake_w;
    struct xd_pty *next;
} xd_pty;

/* An attach request between its headers and the upgrade (xd_req.pty_attach). */
typedef struct xd_pty_attach {
    xd_pty *session; /* a reference */
    bool upgraded;
    bool pipe_mode;
    char term[XD_PTY_TERM_MAX + 1];
    uint16_t rows, cols;
    bool has_since;
    uint64_t since;
} xd_pty_attach;

/* pty.c */
/* With a reference, or NULL. */
xd_pty *xd_pty_find(const char *id);
void xd_pty_unref(xd_pty *s);
/* Takes the session off the table (DELETE, idle timeout); false if it was off already. */
bool xd_pty_unlist(xd_pty *s);
/* Called by the session's thread when the process has ended and a client has taken its exit:
 * the session stops counting against the live limit, keeps what GET /pty/{id} and a later
 * attach need (exit_code, start_error: copied) and the thread may end. false (nothing done)
 * while an attach is pending or stdin is lent to an upload. */
bool xd_pty_release(xd_pty *s, int exit_code, const char *start_error);
void xd_pty_wake(xd_pty *s);
/* Gives the socket back to libmicrohttpd and frees the client; its claim ends. */
void xd_pty_client_drop(xd_pty_client *c);
/* The last thing a session's thread does. */
void xd_pty_thread_exit(void);

/* pty_stdin.c: lending a pipe-mode session's stdin pipe to one writer at a time (the upload,
 * or the stdin socket's client: pty_stdin_sock.c). */
/* A larger pipe means fewer wake-ups of the writer and of the reader at bulk rates (best
 * effort: the kernel caps it at pipe-max-size). */
#define XD_PTY_STDIN_PIPE_BYTES (1 << 20)
typedef enum xd_pty_borrowed { XD_PTY_BORROWED, XD_PTY_BUSY, XD_PTY_ENDED } xd_pty_borrowed;
/* Asks the session's thread for the pipe and waits for its answer (it lends the pipe once the
 * stdin already received over a WebSocket is written, keeping the order). BORROWED: *fd is
 * the caller's until xd_pty_give_back_stdin; BUSY: another writer holds it; ENDED: stdin or
 * the session has ended. *pipe_mode false: a terminal, nothing lent. */
xd_pty_borrowed xd_pty_borrow_stdin(xd_pty *s, int *fd, bool *pipe_mode);
/* Ends a loan: done (or fd < 0) closes fd and stdin for good (the process reads EOF once no
 * other writer holds the pipe); otherwise the session's thread takes fd back, stdin open. */
void xd_pty_give_back_stdin(xd_pty *s, int fd, bool done);

/* pty_session.c: the thread that starts the process and serves the session's clients; it
 * holds a reference. */
void *xd_pty_session_main(void *arg);

#endif
