/* A connection's way out: frames produced in one loop iteration are batched into one write,
 * their bytes are charged to the memory budget until libuv has written them, and reading stops
 * while a client leaves too many of them unread. Loop thread only. */
#include <stdlib.h>
#include <string.h>

#include "server_internal.h"

/* Frames produced during one loop iteration are written together: each
 * frame is its own block, and a batch hands up to BATCH_MAX of them to one
 * uv_write (one writev), submitted from the loop's check phase (after I/O
 * callbacks) or prepare phase (after timer callbacks, before the loop blocks). */
#define BATCH_MAX 64

typedef struct wbatch {
    uv_write_t req;
    conn *c;
    size_t total;
    unsigned n;
    uv_buf_t bufs[BATCH_MAX];
} wbatch;

/* Unsent bytes of a connection count in the memory budget, against its share. */
static void conn_pending(conn *c, int64_t delta)
{
    c->pending_write = (size_t)((int64_t)c->pending_write + delta);
    if (c->s->bridge != NULL)
        moat_bridge_budget_charge(c->s->bridge, &c->account, delta);
}

static void on_write(uv_write_t *req, int status)
{
    wbatch *b = (wbatch *)req;
    conn *c = b->c;
    conn_pending(c, -(int64_t)b->total);
    for (unsigned i = 0; i < b->n; i++)
        free(b->bufs[i].base);
    free(b);
    if (status < 0) {
        if (c->state != CONN_CLOSING)
            moat__conn_close(c, MOAT_CODE_UNAVAILABLE, uv_strerror(status));
        return;
    }
    if (c->closing || c->pending_write > c->s->cfg.max_pending_bytes / 2)
        return;
    /* Reading was paused while the client left our answers unread. */
    if (!c->reading)
        moat__conn_pump(c);
    /* Producers held back while the socket was full, or running low on
     * credit while the client's window still has room, may go on. */
    if (c->throttled || c->credit_wanted) {
        bool all = c->throttled;
        c->throttled = false;
        c->credit_wanted = false;
        stream *st = c->streams;
        while (st != NULL && !c->closing) {
            moat__stream_ref(st);
            if (st->on_credit != NULL && (all || st->wants_credit)) {
                st->wants_credit = false;
                st->on_credit(st, 0);
            }
            stream *next = st->c == c ? st->next : NULL;
            moat__stream_unref(st);
            st = next;
        }
    }
}

static void dirty_unlink(conn *c)
{
    if (!c->dirty)
        return;
    if (c->dirty_prev != NULL)
        c->dirty_prev->dirty_next = c->dirty_next;
    else
        c->s->dirty = c->dirty_next;
    if (c->dirty_next != NULL)
        c->dirty_next->dirty_prev = c->dirty_prev;
    c->dirty_next = c->dirty_prev = NULL;
    c->dirty = false;
}

/* Hands the connection's current batch to libuv. */
void moat__conn_flush(conn *c)
{
    dirty_unlink(c);
    wbatch *b = c->batch;
    if (b == NULL)
        return;
    c->batch = NULL;
    if (uv_write(&b->req, &c->h.stream, b->bufs, b->n, on_write) < 0) {
        conn_pending(c, -(int64_t)b->total);
        for (unsigned i = 0; i < b->n; i++)
            free(b->bufs[i].base);
        free(b);
        if (c->state != CONN_CLOSING)
            moat__conn_close(c, MOAT_CODE_UNAVAILABLE, "write failed");
    }
}

/* Takes ownership of block (len bytes, from malloc). */
moat_err moat__conn_queue_block(conn *c, uint8_t *block, size_t len)
{
    if (c->state == CONN_CLOSING) {
        free(block);
        return MOAT_E_CLOSED;
    }
    if (c->batch == NULL) {
        c->batch = malloc(sizeof(wbatch));
        if (c->batch == NULL) {
            free(block);
            return MOAT_E_NOMEM;
        }
        c->batch->c = c;
        c->batch->n = 0;
        c->batch->total = 0;
        srv *s = c->s;
        c->dirty = true;
        c->dirty_prev = NULL;
        c->dirty_next = s->dirty;
        if (s->dirty != NULL)
            s->dirty->dirty_prev = c;
        s->dirty = c;
    }
    wbatch *b = c->batch;
    b->bufs[b->n++] = uv_buf_init((char *)block, (unsigned)len);
    b->total += len;
    conn_pending(c, (int64_t)len);
    if (b->n == BATCH_MAX)
        moat__conn_flush(c);
    if (c->pending_write > c->s->cfg.max_pending_bytes) {
        c->throttled = true;
        if (c->reading) {
            uv_read_stop(&c->h.stream);
            c->reading = false;
        }
    }
    return MOAT_OK;
}

moat_err moat__conn_write_raw(conn *c, const uint8_t *data, size_t len)
{
    uint8_t *block = malloc(len);
    if (block == NULL)
        return MOAT_E_NOMEM;
    memcpy(block, data, len);
    return moat__conn_queue_block(c, block, len);
}

/* Encodes a frame straight into its block: one allocation, one copy. */
moat_err moat__conn_send(conn *c, const moat_frame *f)
{
    size_t n = moat_wire_encoded_size(f);
    if (n == 0)
        return MOAT_E_INVAL;
    uint8_t *block = malloc(n);
    if (block == NULL)
        return MOAT_E_NOMEM;
    size_t w = 0;
    moat_err err = moat_wire_encode(f, block, n, &w);
    if (err != MOAT_OK) {
        free(block);
        return err;
    }
    return moat__conn_queue_block(c, block, w);
}

void moat__conn_send_go_away(conn *c, moat_code code, const char *msg)
{
    moat_frame f = {0};
    f.kind = MOAT_FRAME_GO_AWAY;
    f.u.go_away.last_stream_id = c->table != NULL ? moat_stream_table_last_id(c->table) : 0;
    f.u.go_away.code = code;
    f.u.go_away.message = moat_slice_str(msg);
    moat__conn_send(c, &f);
}

void moat__conn_send_end(conn *c, uint32_t id, const moat_status *st)
{
    moat_frame f = {0};
    f.stream_id = id;
    f.kind = MOAT_FRAME_END;
    f.u.end.code = st->code;
    f.u.end.message = moat_slice_str(st->message);
    f.u.end.reason = moat_slice_str(st->reason);
    for (size_t i = 0; i < st->detail_count && i < MOAT_WIRE_MAX_KV; i++) {
        f.u.end.details[i].key = moat_slice_str(st->details[i].key);
        f.u.end.details[i].value = moat_slice_str(st->details[i].value);
    }
    f.u.end.detail_count = st->detail_count;
    moat__conn_send(c, &f);
    moat__metrics_status(c->s->metrics, st->code);
}
