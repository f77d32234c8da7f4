/* What terminal.c (the WebSocket to execd) and terminal_stdin.c (the ways stdin reaches the
 * process) share: the terminal itself. Inside the bridge only; terminal.h is its API. */
#ifndef MOAT_BRIDGE_TERMINAL_INTERNAL_H
#define MOAT_BRIDGE_TERMINAL_INTERNAL_H

#include "bridge/terminal.h"

#include "internal.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <wslay/wslay.h>

/* Stdin waiting for the upload's read callback (or the WebSocket): a ring, so that taking
 * bytes from its front never moves the rest; it grows, made straight, only when what waits
 * and what comes would not fit, so it stays near the owner's window (a linear queue that
 * dropped taken bytes only once drained whole grew with the stream: 43 MB after 256 MiB). */
typedef struct stdin_ring {
    uint8_t *data; /* owned */
    size_t cap, start, len;
} stdin_ring;

/* Drops n <= len bytes from the ring's front. */

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

/* terminal.c: stdin as WebSocket messages (the terminal's, or a pipe-mode command's whose
 * upload execd refused), and a text message such as close_stdin. */
moat_err moat__terminal_ws_stdin(moat_bridge_terminal *t, const uint8_t *data, size_t len);
moat_err moat__terminal_queue_text(moat_bridge_terminal *t, const char *text);

/* terminal_stdin.c. execd's connected message came: the process runs, in mode ("pty" or
 * "pipe"; NULL when execd did not say), and its stdin can go. */
void moat__terminal_on_connected(moat_bridge_terminal *t, const char *mode);
/* Ends the loan of the pipe, if any: close_stdin tells execd stdin has ended. */
void moat__terminal_lend_end(moat_bridge_terminal *t, bool close_stdin);
/* A loop event on fd, when fd is one of the terminal's stdin sockets or its lent pipe. */
bool moat__terminal_stdin_fd_action(moat_bridge_terminal *t, int fd);

#endif
