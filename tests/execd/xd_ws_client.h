/* Test helpers: a WebSocket client (libwslay's client side) for moat-execd's /pty/{id}/ws. */
#ifndef MOAT_TEST_XD_WS_CLIENT_H
#define MOAT_TEST_XD_WS_CLIENT_H

#include "xd_client.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct xd_ws xd_ws;

typedef struct xd_ws_msg {
    int opcode; /* 1 text, 2 binary, 8 close */
    uint8_t *data;
    size_t len;
    uint16_t close_code; /* opcode 8 */
} xd_ws_msg;

/* Opens path with a WebSocket handshake. On 101 returns the connection; otherwise NULL with
 * *status and (when body is not NULL) the body, malloc'd. */
xd_ws *xd_ws_open(const xd_target *t, const char *path, long *status, char **body);
/* The next message (control frames other than close are handled inside), waiting up to
 * timeout_ms; false on timeout or when the connection ended without a close frame. */
bool xd_ws_next(xd_ws *ws, xd_ws_msg *out, int timeout_ms);
void xd_ws_msg_free(xd_ws_msg *m);
bool xd_ws_send(xd_ws *ws, int opcode, const void *data, size_t len);
/* Bytes written as they are, past the framing (for malformed frames). */
bool xd_ws_send_raw(xd_ws *ws, const void *data, size_t len);
/* Collects output frames (0x01 and 0x02, also into *err_out when not NULL) until needle
 * appears in the 0x01/0x02 text; returns the text (static, NUL-terminated) or NULL. Other
 * messages are kept for xd_ws_next. */
const char *xd_ws_wait_output(xd_ws *ws, const char *needle, int timeout_ms);
int xd_ws_fd(const xd_ws *ws);
void xd_ws_close(xd_ws *ws);

#endif
