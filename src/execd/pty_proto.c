/* PTY sessions' pure pieces: the output ring and the client's JSON frames. */
#include "pty_proto.h"

#include "execd_json.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>

moat_err moat_execd_ring_init(moat_execd_ring *r, size_t cap)
{
    r->end = 0;
    r->cap = cap;
    r->data = malloc(cap);
    return r->data != NULL ? MOAT_OK : MOAT_E_NOMEM;
}

void moat_execd_ring_free(moat_execd_ring *r)
{
    free(r->data);
    r->data = NULL;
}

void moat_execd_ring_write(moat_execd_ring *r, const void *data, size_t len)
{
    const uint8_t *p = data;
    r->end += len;
    /* Only the last cap bytes can survive this write. */
    if (len > r->cap) {
        p += len - r->cap;
        len = r->cap;
    }
    size_t at = (size_t)((r->end - len) % r->cap);
    size_t first = r->cap - at < len ? r->cap - at : len;
    memcpy(r->data + at, p, first);
    memcpy(r->data, p + first, len - first);
}

uint64_t moat_execd_ring_start(const moat_execd_ring *r)
{
    return r->end > r->cap ? r->end - r->cap : 0;
}

size_t moat_execd_ring_read(const moat_execd_ring *r, uint64_t off, void *out, size_t len,
                            uint64_t *from)
{
    uint64_t start = moat_execd_ring_start(r);
    off = off < start ? start : off > r->end ? r->end : off;
    *from = off;
    if (len > r->end - off)
        len = (size_t)(r->end - off);
    size_t at = (size_t)(off % r->cap);
    size_t first = r->cap - at < len ? r->cap - at : len;
    memcpy(out, r->data + at, first);
    memcpy((uint8_t *)out + first, r->data, len - first);
    return len;
}

static bool parse_size(const cJSON *root, const char *key, uint16_t *out)
{
    int64_t v;
    if (!moat_json_int(root, key, &v) || v < 1 || v > 65535)
        return false;
    *out = (uint16_t)v;
    return true;
}

static int signal_number(const char *name)
{
    static const struct {
        const char *name;
        int signo;
    } known[] = {{"SIGINT", SIGINT},
                 {"SIGTERM", SIGTERM},
                 {"SIGKILL", SIGKILL},
                 {"SIGQUIT", SIGQUIT},
                 {"SIGHUP", SIGHUP}};
    for (size_t i = 0; name != NULL && i < sizeof(known) / sizeof(known[0]); i++)
        if (strcmp(name, known[i].name) == 0)
            return known[i].signo;
    return 0;
}

static void parse_object(const cJSON *root, moat_execd_pty_frame *out)
{
    const char *type = moat_json_str(root, "type", NULL);
    if (type == NULL) {
        out->why = "frame has no string type";
    } else if (strcmp(type, "stdin") == 0) {
        size_t len;
        const char *data = moat_json_str(root, "data", &len);
        out->data = data != NULL ? malloc(len + 1) : NULL;
        if (out->data == NULL) {
            out->why = data == NULL ? "stdin frame needs a string data" : "out of memory";
            return;
        }
        memcpy(out->data, data, len);
        out->data_len = len;
        out->type = MOAT_EXECD_PTY_STDIN;
    } else if (strcmp(type, "resize") == 0) {
        if (parse_size(root, "cols", &out->cols) && parse_size(root, "rows", &out->rows))
            out->type = MOAT_EXECD_PTY_RESIZE;
        else
            out->why = "resize needs integer cols and rows from 1 to 65535";
    } else if (strcmp(type, "signal") == 0) {
        out->signo = signal_number(moat_json_str(root, "signal", NULL));
        if (out->signo != 0)
            out->type = MOAT_EXECD_PTY_SIGNAL;
        else
            out->why = "signal must be SIGINT, SIGTERM, SIGKILL, SIGQUIT or SIGHUP";
    } else if (strcmp(type, "ping") == 0) {
        out->type = MOAT_EXECD_PTY_PING;
    } else if (strcmp(type, "close_stdin") == 0) {
        out->type = MOAT_EXECD_PTY_CLOSE_STDIN;
    } else {
        out->why = "unknown frame type";
    }
}

void moat_execd_pty_parse_frame(const char *text, size_t len, moat_execd_pty_frame *out)
{
    memset(out, 0, sizeof(*out));
    const char *why = NULL;
    cJSON *root = moat__execd_json_parse(text, len, false, &why);
    if (root == NULL)
        out->why = "frame is not JSON";
    else if (!cJSON_IsObject(root))
        out->why = "frame is not a JSON object";
    else
        parse_object(root, out);
    cJSON_Delete(root);
}
