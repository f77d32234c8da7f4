/* The testable pieces of moat-execd's PTY sessions (OpenSandbox's /pty API): the output ring
 * that `since=` replays from, the parser of the client's JSON frames, the WebSocket handshake
 * key, and a WebSocket connection (libwslay's event API) whose I/O goes through callbacks so
 * that a test can feed it one byte at a time. No I/O of their own. */
#ifndef MOAT_EXECD_PTY_PROTO_H
#define MOAT_EXECD_PTY_PROTO_H

#include "common/common.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* ---- Output ring -------------------------------------------------------------------------- */

/* The last `cap` bytes of a session's output, addressed by absolute offset (bytes ever
 * written before them). */
typedef struct moat_execd_ring {
    uint8_t *data;
    size_t cap;
    uint64_t end; /* total bytes ever written */
} moat_execd_ring;

moat_err moat_execd_ring_init(moat_execd_ring *r, size_t cap);
void moat_execd_ring_free(moat_execd_ring *r);
void moat_execd_ring_write(moat_execd_ring *r, const void *data, size_t len);
/* Offset of the oldest byte still held. */
uint64_t moat_execd_ring_start(const moat_execd_ring *r);
/* Copies up to len bytes from absolute offset off (clamped into [start, end]) and returns
 * how many; *from receives the clamped offset. */
size_t moat_execd_ring_read(const moat_execd_ring *r, uint64_t off, void *out, size_t len,
                            uint64_t *from);

/* ---- Client frames ------------------------------------------------------------------------ */

typedef enum moat_execd_pty_frame_type {
    MOAT_EXECD_PTY_INVALID = 0, /* answered with an INVALID_FRAME error frame */
    MOAT_EXECD_PTY_STDIN,
    MOAT_EXECD_PTY_RESIZE,
    MOAT_EXECD_PTY_SIGNAL,
    MOAT_EXECD_PTY_PING,
    MOAT_EXECD_PTY_CLOSE_STDIN, /* moat's extension: end of input */
} moat_execd_pty_frame_type;

typedef struct moat_execd_pty_frame {
    moat_execd_pty_frame_type type;
    const char *why; /* INVALID: a static reason */
    char *data;      /* STDIN: malloc'd bytes (the caller frees), data_len of them */
    size_t data_len;
    uint16_t cols, rows; /* RESIZE: each 1..65535 */
    int signo;           /* SIGNAL: SIGINT, SIGTERM, SIGKILL, SIGQUIT or SIGHUP */
} moat_execd_pty_frame;

/* Parses one text frame: {"type":"stdin","data"}, {"type":"resize","cols","rows"},
 * {"type":"signal","signal":"SIGINT|SIGTERM|SIGKILL|SIGQUIT|SIGHUP"}, {"type":"ping"},
 * {"type":"close_stdin"}.
 * Anything else (not JSON, unknown type, bad field) is MOAT_EXECD_PTY_INVALID. */
void moat_execd_pty_parse_frame(const char *text, size_t len, moat_execd_pty_frame *out);

/* ---- WebSocket ---------------------------------------------------------------------------- */

/* Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 §4.2.2). false when the key is not
 * the base64 of 16 bytes. */
#define MOAT_EXECD_WS_ACCEPT_LEN 29 /* 28 characters and NUL */
bool moat_execd_ws_accept_key(const char *key, char out[MOAT_EXECD_WS_ACCEPT_LEN]);

#define MOAT_EXECD_WS_TEXT   0x1
#define MOAT_EXECD_WS_BINARY 0x2
#define MOAT_EXECD_WS_PING   0x9

/* The transport and the receiver of a server-side WebSocket. recv and send return a byte
 * count, or -1 with errno (EAGAIN: try later); recv returning 0 is the peer's end. */
typedef struct moat_execd_ws_io {
    ssize_t (*recv)(void *ud, uint8_t *buf, size_t len);
    ssize_t (*send)(void *ud, const uint8_t *buf, size_t len);
    /* A whole text or binary message; valid during the call only. */
    void (*on_message)(void *ud, int opcode, const uint8_t *msg, size_t len);
    void *ud;
} moat_execd_ws_io;

typedef struct moat_execd_ws moat_execd_ws;

/* Reads from the ring from a position the caller keeps, for a replay sent in pieces. */
typedef struct moat_execd_ws_replay {
    const moat_execd_ring *ring;
    uint64_t next, end;
    uint8_t header[9]; /* 0x03 and the big-endian offset of the first byte */
    size_t header_sent;
} moat_execd_ws_replay;

/* A message larger than max_message closes the connection with 1009. NULL when out of
 * memory. */
moat_execd_ws *moat_execd_ws_new(const moat_execd_ws_io *io, size_t max_message);
void moat_execd_ws_free(moat_execd_ws *ws);
/* Reads what the transport has (until EAGAIN), delivering messages. Malformed input queues
 * a close with the RFC's code (1002, 1007, 1009; none for what wslay's frame parser itself
 * rejects, such as a fragmented control frame) and stops reading. false on a transport error
 * or the peer's end. */
bool moat_execd_ws_recv(moat_execd_ws *ws);
/* Writes what is queued until the transport says EAGAIN. false on a transport error. */
bool moat_execd_ws_send(moat_execd_ws *ws);
/* Queues a message (copied). false once a close was queued or out of memory. */
bool moat_execd_ws_queue(moat_execd_ws *ws, int opcode, const void *data, size_t len);
/* Queues one binary message 0x03 + offset + ring[from, end), read from the ring as it is
 * sent; rp must live, and the ring stay unwritten, until nothing is queued any more. */
bool moat_execd_ws_queue_replay(moat_execd_ws *ws, moat_execd_ws_replay *rp,
                                const moat_execd_ring *ring, uint64_t from);
bool moat_execd_ws_close(moat_execd_ws *ws, uint16_t code, const char *reason);
bool moat_execd_ws_want_read(const moat_execd_ws *ws);
bool moat_execd_ws_want_write(const moat_execd_ws *ws);
size_t moat_execd_ws_queued(const moat_execd_ws *ws);
/* The code of the close sent, or 0 when none was sent yet. */
uint16_t moat_execd_ws_close_sent(const moat_execd_ws *ws);
bool moat_execd_ws_close_received(const moat_execd_ws *ws);

#endif
