#include "xd_ws_client.h"

#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <wslay/wslay.h>

#define QUEUE_MAX  256
#define OUTPUT_MAX (4u << 20)

struct xd_ws {
    int fd;
    wslay_event_context_ptr ctx;
    uint8_t *early; /* bytes read past the 101's headers */
    size_t early_len, early_off;
    xd_ws_msg queue[QUEUE_MAX];
    size_t head, count;
    char *output;
    size_t output_len;
    bool ended;
};

static int connect_target(const xd_target *t)
{
    int fd;
    if (t->unix_path[0] != '\0') {
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        if (strlen(t->unix_path) >= sizeof(sa.sun_path))
            return -1;
        memcpy(sa.sun_path, t->unix_path, strlen(t->unix_path) + 1);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
            return fd;
    } else {
        const char *colon = strrchr(t->base, ':');
        struct sockaddr_in sa = {.sin_family = AF_INET,
                                 .sin_port = htons((uint16_t)atoi(colon + 1)),
                                 .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
            return fd;
    }
    if (fd >= 0)
        close(fd);
    return -1;
}

static ssize_t on_recv(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags, void *ud)
{
    (void)flags;
    xd_ws *ws = ud;
    ssize_t n;
    if (ws->early_off < ws->early_len) {
        n = (ssize_t)(ws->early_len - ws->early_off < len ? ws->early_len - ws->early_off : len);
        memcpy(buf, ws->early + ws->early_off, (size_t)n);
        ws->early_off += (size_t)n;
        return n;
    }
    n = recv(ws->fd, buf, len, MSG_DONTWAIT);
    if (n > 0)
        return n;
    if (n == 0)
        ws->ended = true;
    wslay_event_set_error(ctx, n < 0 && errno == EAGAIN ? WSLAY_ERR_WOULDBLOCK
                                                        : WSLAY_ERR_CALLBACK_FAILURE);
    return -1;
}

static ssize_t on_send(wslay_event_context_ptr ctx, const uint8_t *data, size_t len, int flags,
                       void *ud)
{
    (void)flags;
    xd_ws *ws = ud;
    ssize_t n = send(ws->fd, data, len, MSG_NOSIGNAL);
    if (n < 0) {
        wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
    return n;
}

static int on_genmask(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, void *ud)
{
    (void)ctx;
    (void)ud;
    for (size_t i = 0; i < len; i++)
        buf[i] = (uint8_t)rand();
    return 0;
}

static void on_msg(wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *arg,
                   void *ud)
{
    (void)ctx;
    xd_ws *ws = ud;
    if (arg->opcode != WSLAY_TEXT_FRAME && arg->opcode != WSLAY_BINARY_FRAME &&
        arg->opcode != WSLAY_CONNECTION_CLOSE)
        return;
    if (ws->count == QUEUE_MAX)
        return;
    xd_ws_msg *m = &ws->queue[(ws->head + ws->count++) % QUEUE_MAX];
    m->opcode = arg->opcode;
    m->len = arg->msg_length;
    m->data = malloc(arg->msg_length + 1);
    if (m->data == NULL) {
        ws->count--;
        return;
    }
    if (arg->msg_length > 0) /* an empty message may come with no buffer */
        memcpy(m->data, arg->msg, arg->msg_length);
    m->data[m->len] = '\0';
    m->close_code = arg->status_code;
}

/* Reads the response head; returns the status, leaves the rest in *rest. */
static long read_head(int fd, char *head, size_t cap, size_t *len, char **rest)
{
    *len = 0;
    while (*len + 1 < cap) {
        ssize_t n = recv(fd, head + *len, cap - 1 - *len, 0);
        if (n <= 0)
            return -1;
        *len += (size_t)n;
        head[*len] = '\0';
        char *end = strstr(head, "\r\n\r\n");
        if (end != NULL) {
            *rest = end + 4;
            return strtol(head + 9, NULL, 10);
        }
    }
    return -1;
}

xd_ws *xd_ws_open(const xd_target *t, const char *path, long *status, char **body)
{
    static const char key[] = "dGhlIHNhbXBsZSBub25jZQ==";
    *status = -1;
    if (body != NULL)
        *body = NULL;
    int fd = connect_target(t);
    if (fd < 0)
        return NULL;
    char req[2048], token[600] = "";
    if (t->token != NULL)
        snprintf(token, sizeof(token), "X-EXECD-ACCESS-TOKEN: %s\r\n", t->token);
    int n = snprintf(req, sizeof(req),
                     "GET %s HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                     "Sec-WebSocket-Version: 13\r\n%s\r\n",
                     path, key, token);
    char head[8192];
    size_t len = 0;
    char *rest = NULL;
    if (send(fd, req, (size_t)n, MSG_NOSIGNAL) != n ||
        (*status = read_head(fd, head, sizeof(head), &len, &rest)) != 101) {
        if (body != NULL && rest != NULL) {
            const char *cl = strcasestr(head, "Content-Length:");
            size_t want = cl != NULL ? strtoul(cl + 15, NULL, 10) : 0,
                   have = len - (size_t)(rest - head);
            *body = calloc(1, want + 1);
            memcpy(*body, rest, have < want ? have : want);
            while (have < want) {
                ssize_t got = recv(fd, *body + have, want - have, 0);
                if (got <= 0)
                    break;
                have += (size_t)got;
            }
        }
        close(fd);
        return NULL;
    }
    xd_ws *ws = calloc(1, sizeof(*ws));
    ws->fd = fd;
    ws->output = malloc(OUTPUT_MAX + 1);
    ws->early_len = len - (size_t)(rest - head);
    ws->early = malloc(ws->early_len + 1);
    memcpy(ws->early, rest, ws->early_len);
    struct wslay_event_callbacks cb = {.recv_callback = on_recv,
                                       .send_callback = on_send,
                                       .genmask_callback = on_genmask,
                                       .on_msg_recv_callback = on_msg};
    wslay_event_context_client_init(&ws->ctx, &cb, ws);
    wslay_event_config_set_max_recv_msg_length(ws->ctx, 16u << 20);
    return ws;
}

bool xd_ws_next(xd_ws *ws, xd_ws_msg *out, int timeout_ms)
{
    for (int waited = 0;;) {
        if (ws->count > 0) {
            *out = ws->queue[ws->head];
            ws->head = (ws->head + 1) % QUEUE_MAX;
            ws->count--;
            return true;
        }
        if (ws->ended || waited >= timeout_ms)
            return false;
        struct pollfd p = {.fd = ws->fd, .events = POLLIN};
        if (ws->early_off == ws->early_len && poll(&p, 1, 100) == 0) {
            waited += 100;
            continue;
        }
        if (wslay_event_recv(ws->ctx) != 0)
            ws->ended = true;
        wslay_event_send(ws->ctx); /* pongs and the close reply */
    }
}

void xd_ws_msg_free(xd_ws_msg *m)
{
    free(m->data);
    m->data = NULL;
}

bool xd_ws_send(xd_ws *ws, int opcode, const void *data, size_t len)
{
    struct wslay_event_msg msg = {.opcode = (uint8_t)opcode, .msg = data, .msg_length = len};
    if (wslay_event_queue_msg(ws->ctx, &msg) != 0)
        return false;
    while (wslay_event_want_write(ws->ctx))
        if (wslay_event_send(ws->ctx) != 0)
            return false;
    return true;
}

bool xd_ws_send_raw(xd_ws *ws, const void *data, size_t len)
{
    return send(ws->fd, data, len, MSG_NOSIGNAL) == (ssize_t)len;
}

const char *xd_ws_wait_output(xd_ws *ws, const char *needle, int timeout_ms)
{
    static char found[OUTPUT_MAX + 1];
    size_t kept = 0;
    xd_ws_msg keep[QUEUE_MAX];
    const char *result = NULL;
    for (int waited = 0; result == NULL && waited < timeout_ms; waited += 100) {
        xd_ws_msg m;
        while (result == NULL && xd_ws_next(ws, &m, 100)) {
            if (m.opcode == 2 && m.len >= 1 && (m.data[0] == 1 || m.data[0] == 2)) {
                size_t add = m.len - 1;
                if (ws->output_len + add > OUTPUT_MAX)
                    add = OUTPUT_MAX - ws->output_len;
                memcpy(ws->output + ws->output_len, m.data + 1, add);
                ws->output_len += add;
                ws->output[ws->output_len] = '\0';
                xd_ws_msg_free(&m);
                if (strstr(ws->output, needle) != NULL) {
                    memcpy(found, ws->output, ws->output_len + 1);
                    ws->output_len = 0;
                    result = found;
                }
            } else if (kept < QUEUE_MAX) {
                keep[kept++] = m;
            }
        }
        if (ws->ended)
            break;
    }
    if (result == NULL)
        fprintf(stderr, "xd_ws_wait_output: no \"%s\" in: %s\n", needle, ws->output);
    /* Put the other messages back in front, in order. */
    for (size_t i = kept; i > 0; i--) {
        ws->head = (ws->head + QUEUE_MAX - 1) % QUEUE_MAX;
        ws->queue[ws->head] = keep[i - 1];
        ws->count++;
    }
    return result;
}

int xd_ws_fd(const xd_ws *ws)
{
    return ws->fd;
}

void xd_ws_close(xd_ws *ws)
{
    if (ws == NULL)
        return;
    for (; ws->count > 0; ws->count--, ws->head = (ws->head + 1) % QUEUE_MAX)
        free(ws->queue[ws->head].data);
    wslay_event_context_free(ws->ctx);
    close(ws->fd);
    free(ws->early);
    free(ws->output);
    free(ws);
}
