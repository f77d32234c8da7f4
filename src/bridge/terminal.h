/* moat bridge: execd's terminal sessions (OpenSandbox's PTY API): POST /pty makes one, and a
 * WebSocket on GET /pty/{id}/ws carries its input and output. Part of the bridge module
 * (bridge.h's threading rules apply: loop thread only; callbacks run from inside
 * moat_bridge_socket_action and moat_bridge_timeout, and from these functions only where
 * said). */
#ifndef MOAT_BRIDGE_TERMINAL_H
#define MOAT_BRIDGE_TERMINAL_H

#include "bridge/bridge.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct moat_bridge_terminal moat_bridge_terminal;

/* What an output delivery costs the consumer's credit beyond its bytes, as an exec event does. */
#define MOAT_BRIDGE_TERMINAL_OUTPUT_OVERHEAD 16u
/* Stdin goes to execd in WebSocket messages of at most this many bytes. */
#define MOAT_BRIDGE_TERMINAL_STDIN_MESSAGE (128u * 1024)
/* curl's upload buffer of a pipe-mode command's stdin: what one read callback takes. */
#define MOAT_BRIDGE_TERMINAL_UPLOAD_BUFFER (256u * 1024)
/* curl's receive buffer for a terminal's WebSocket: what one delivery may run past credit. */
#define MOAT_BRIDGE_TERMINAL_RECV_BUFFER (16u * 1024)

/* What the terminal's owner hears. Pointers are valid during the callback only. */
typedef struct moat_bridge_terminal_consumer {
    /* The WebSocket is up; session_id is execd's id of the terminal session. */
    void (*on_ready)(void *ud, moat_bridge_terminal *t, const char *session_id);
    /* Output (at most MOAT_BRIDGE_MAX_BINARY bytes); stream is STDERR only in pipe mode. */
    void (*on_output)(void *ud, moat_bridge_terminal *t, moat_bridge_stream stream,
                      const uint8_t *data, size_t len);
    /* The process exited with this code (-1: killed by a signal). */
    void (*on_exit)(void *ud, moat_bridge_terminal *t, int code);
    /* Input that had waited for execd's socket has gone out (see moat_bridge_terminal_queued). */
    void (*on_writable)(void *ud, moat_bridge_terminal *t);
    /* The last callback: OK after on_exit, else why the terminal was lost. The terminal is
     * freed right after. */
    void (*on_end)(void *ud, moat_bridge_terminal *t, const moat_status *st);
    void *ud;
} moat_bridge_terminal_consumer;

typedef struct moat_bridge_terminal_opts {
    const char *command; /* bash -c COMMAND; NULL or "" = an interactive bash */
    const char *cwd;     /* NULL or "" = execd's default */
    bool tty;            /* a pty (one output stream); false: pipes (stdout and stderr apart) */
    const char *term;    /* TERM, tty only; NULL or "" = execd's default */
    uint32_t rows, cols; /* tty only: the size it starts with (1 to 65535); 0 = execd's default */
    /* Reattach to this running terminal session instead of making one (command, cwd and tty
     * are then its own); a client still attached to it is taken over. */
    const char *attach_id;
    bool replay;    /* with attach_id: first the output execd still holds from... */
    uint64_t since; /* ...this byte offset on */
} moat_bridge_terminal_opts;

/* Creates a terminal session in execd (or takes opts->attach_id) and connects to it. credit is the
 * output bytes the consumer takes before it calls moat_bridge_terminal_credit (an output costs its
 * length + MOAT_BRIDGE_TERMINAL_OUTPUT_OVERHEAD; a terminal delivers at most what one receive
 * buffer completes past its credit before it pauses: MOAT_BRIDGE_TERMINAL_RECV_BUFFER, or a replay
 * of execd's ring, 1 MiB at most). *out stays valid until on_end returns. On error nothing was
 * started, *st says why and no callback runs. */
moat_err moat_bridge_terminal_open(moat_bridge *b, const moat_bridge_endpoint *ep,
                                   const moat_bridge_terminal_opts *opts,
                                   const moat_bridge_terminal_consumer *consumer, uint64_t credit,
                                   moat_bridge_terminal **out, moat_status *st);

/* Input, queued in order (copied) and written as execd's socket takes it. MOAT_E_STATE once
 * the terminal has ended or its stdin was closed, MOAT_E_NOMEM. */
moat_err moat_bridge_terminal_stdin(moat_bridge_terminal *t, const uint8_t *data, size_t len);
moat_err moat_bridge_terminal_close_stdin(moat_bridge_terminal *t);
moat_err moat_bridge_terminal_resize(moat_bridge_terminal *t, uint32_t rows, uint32_t cols);
/* name: SIGINT, SIGTERM, SIGKILL, SIGQUIT or SIGHUP (execd refuses others). */
moat_err moat_bridge_terminal_signal(moat_bridge_terminal *t, const char *name);
/* Input bytes queued and not yet written to execd. */
size_t moat_bridge_terminal_queued(const moat_bridge_terminal *t);
/* The consumer took more output. */
void moat_bridge_terminal_credit(moat_bridge_terminal *t, uint64_t bytes);
/* execd's id of the terminal session: opts->attach_id's, or POST /pty's once it answered (also
 * when the terminal was closed meanwhile); "" before. Valid until on_end returns. */
const char *moat_bridge_terminal_session_id(const moat_bridge_terminal *t);
/* Whether its process runs with pipes (no tty): known from the start for a new session, from
 * execd's first message for a reattached one (false until then). */
bool moat_bridge_terminal_pipe_mode(const moat_bridge_terminal *t);
/* Closes the WebSocket; execd keeps the session. on_end runs (CANCELLED) before it returns,
 * or right after the bridge callback it is called from, or when POST /pty answers. */
void moat_bridge_terminal_close(moat_bridge_terminal *t);

#ifdef __cplusplus
}
#endif
#endif
