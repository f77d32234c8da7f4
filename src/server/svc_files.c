/* The Files service: one bridge call per request to the session's execd, on the loop; Read
 * streams chunks within the client's window. */
#include <stdlib.h>
#include <string.h>

#include "handlers.h"
#include "moat/v1/files.pb-c.h"

static void file_info(const moat_bridge_file_info *fi, Moat__V1__FileInfo *out)
{
    moat__v1__file_info__init(out);
    out->path = (char *)(fi->path != NULL ? fi->path : "");
    out->type = (Moat__V1__FileType)fi->type;
    out->size = fi->size;
    out->mode = fi->mode;
    out->owner = (char *)(fi->owner != NULL ? fi->owner : "");
    out->group = (char *)(fi->group != NULL ? fi->group : "");
    out->modified_at_ms = fi->modified_at_ms;
}

static void stat_cb(void *ud, const moat_status *status, const moat_bridge_file_info *fi)
{
    stream *st = ud;
    if (moat__answer_ok(st, status) && fi != NULL) {
        Moat__V1__FileInfo r;
        file_info(fi, &r);
        moat_rpc_call_reply(st->call, &r.base);
    }
    moat__stream_unref(st);
}

moat_err moat__files_stat(stream *st, const moat_bridge_endpoint *ep, moat_status *status)
{
    const Moat__V1__StatRequest *req = moat_rpc_call_get_data(st->call);
    return moat_bridge_stat(st->s->bridge, ep, req->path, stat_cb, st, status);
}

static void list_cb(void *ud, const moat_status *status, const moat_bridge_file_info *entries,
                    size_t count)
{
    stream *st = ud;
    if (moat__answer_ok(st, status)) {
        Moat__V1__FileInfo *items = calloc(count + 1, sizeof(*items));
        Moat__V1__FileInfo **ptrs = calloc(count + 1, sizeof(*ptrs));
        if (items == NULL || ptrs == NULL) {
            moat_rpc_call_fail(st->call, MOAT_CODE_RESOURCE_EXHAUSTED, "out_of_memory",
                               "out of memory");
        } else {
            for (size_t i = 0; i < count; i++) {
                file_info(&entries[i], &items[i]);
                ptrs[i] = &items[i];
            }
            Moat__V1__ListResponse r = MOAT__V1__LIST_RESPONSE__INIT;
            r.n_entries = count;
            r.entries = ptrs;
            if (protobuf_c_message_get_packed_size(&r.base) > st->max_frame_size - 256)
                moat_rpc_call_fail(st->call, MOAT_CODE_RESOURCE_EXHAUSTED, "listing_too_large",
                                   "%zu entries do not fit in one frame; list a smaller depth",
                                   count);
            else
                moat_rpc_call_reply(st->call, &r.base);
        }
        free(items);
        free(ptrs);
    }
    moat__stream_unref(st);
}

moat_err moat__files_list(stream *st, const moat_bridge_endpoint *ep, moat_status *status)
{
    const Moat__V1__ListRequest *req = moat_rpc_call_get_data(st->call);
    return moat_bridge_list(st->s->bridge, ep, req->path, req->depth, list_cb, st, status);
}

moat_err moat__files_remove(stream *st, const moat_bridge_endpoint *ep, moat_status *status)
{
    const Moat__V1__RemoveRequest *req = moat_rpc_call_get_data(st->call);
    return moat_bridge_remove(st->s->bridge, ep, req->path, req->recursive, moat__empty_answer, st,
                              status);
}

moat_err moat__files_move(stream *st, const moat_bridge_endpoint *ep, moat_status *status)
{
    const Moat__V1__MoveRequest *req = moat_rpc_call_get_data(st->call);
    return moat_bridge_move(st->s->bridge, ep, req->src, req->dest, moat__empty_answer, st, status);
}

moat_err moat__files_mkdir(stream *st, const moat_bridge_endpoint *ep, moat_status *status)
{
    const Moat__V1__MkdirRequest *req = moat_rpc_call_get_data(st->call);
    return moat_bridge_mkdir(st->s->bridge, ep, req->path, req->mode, moat__empty_answer, st,
                             status);
}

moat_err moat__files_chmod(stream *st, const moat_bridge_endpoint *ep, moat_status *status)
{
    const Moat__V1__ChmodRequest *req = moat_rpc_call_get_data(st->call);
    return moat_bridge_chmod(st->s->bridge, ep, req->path, req->mode, req->owner, req->group,
                             moat__empty_answer, st, status);
}

/* Read: chunks go out only within the client's window; otherwise the
 * download pauses until a WindowUpdate. */
typedef struct xfer_ctx {
    stream *st;
    moat_bridge_xfer *x;
    bool cancelled;
    bool paused;
    /* Write: the request's bytes still to upload. */
    const uint8_t *data;
    size_t left;
} xfer_ctx;

#define CHUNK_OVERHEAD 32

static void xfer_free(xfer_ctx *x)
{
    x->st->hctx = NULL;
    x->st->on_credit = NULL;
    moat__stream_unref(x->st);
    free(x);
}

static bool read_chunk(void *ud, moat_bridge_xfer *bx, uint64_t offset, const uint8_t *data,
                       size_t len)
{
    xfer_ctx *x = ud;
    x->x = bx;
    if (x->cancelled || !moat__running(x->st))
        return true;
    if (moat__stream_credit(x->st) < len + CHUNK_OVERHEAD) {
        x->paused = true;
        return false;
    }
    Moat__V1__FileChunk c = MOAT__V1__FILE_CHUNK__INIT;
    c.offset = offset;
    c.data.data = (uint8_t *)data;
    c.data.len = len;
    moat_rpc_call_send(x->st->call, &c.base);
    return true;
}

static void read_done(void *ud, moat_bridge_xfer *bx, const moat_status *status)
{
    (void)bx;
    xfer_ctx *x = ud;
    if (!x->cancelled)
        moat_rpc_call_end(x->st->call, status);
    xfer_free(x);
}

static void xfer_on_credit(stream *st, uint32_t inc)
{
    (void)inc;
    xfer_ctx *x = st->hctx;
    if (x != NULL && x->paused && x->x != NULL) {
        x->paused = false;
        moat_bridge_xfer_resume(x->x);
    }
}

static void xfer_on_cancel(moat_rpc_call *call, const moat_status *why, void *arg)
{
    (void)call;
    (void)why;
    xfer_ctx *x = arg;
    x->cancelled = true;
    if (x->x != NULL)
        moat_bridge_xfer_cancel(x->x); /* read_done/write_done free x */
}

static xfer_ctx *xfer_new(stream *st)
{
    xfer_ctx *x = calloc(1, sizeof(*x));
    if (x == NULL) {
        moat_rpc_call_fail(st->call, MOAT_CODE_RESOURCE_EXHAUSTED, "out_of_memory",
                           "out of memory");
        return NULL;
    }
    x->st = st;
    moat__stream_ref(st);
    st->hctx = x;
    st->on_credit = xfer_on_credit;
    moat_rpc_call_on_cancel(st->call, xfer_on_cancel, x);
    return x;
}

/* The transfer began (err MOAT_OK) or was refused, which ends the call. Gives back the reference
 * the caller took on st before the bridge could call back; x may be gone by then. */
static void xfer_started(stream *st, xfer_ctx *x, moat_err err, moat_bridge_xfer *bx,
                         const moat_status *status)
{
    if (err != MOAT_OK) {
        moat_rpc_call_on_cancel(st->call, NULL, NULL);
        xfer_free(x);
        moat_rpc_call_end(st->call, status);
    } else if (st->hctx == x) {
        x->x = bx;
    }
    moat__stream_unref(st);
}

void moat__files_read(stream *st, const moat_bridge_endpoint *ep)
{
    const Moat__V1__ReadRequest *req = moat_rpc_call_get_data(st->call);
    xfer_ctx *x = xfer_new(st);
    if (x == NULL)
        return;
    moat_bridge_download_cbs cbs = {read_chunk, read_done, x};
    moat_bridge_xfer *bx = NULL;
    moat_status status;
    moat__stream_ref(st);
    moat_err err = moat_bridge_download(st->s->bridge, ep, req->path, req->offset, req->length,
                                        &cbs, &bx, &status);
    xfer_started(st, x, err, bx, &status);
}

static size_t write_read(void *ud, moat_bridge_xfer *bx, uint8_t *buf, size_t cap)
{
    xfer_ctx *x = ud;
    x->x = bx;
    if (x->cancelled)
        return MOAT_BRIDGE_READ_ABORT;
    size_t n = x->left < cap ? x->left : cap;
    memcpy(buf, x->data, n);
    x->data += n;
    x->left -= n;
    return n;
}

static void write_done(void *ud, moat_bridge_xfer *bx, const moat_status *status, uint64_t written)
{
    (void)bx;
    xfer_ctx *x = ud;
    if (!x->cancelled && moat__answer_ok(x->st, status)) {
        Moat__V1__WriteResponse r = MOAT__V1__WRITE_RESPONSE__INIT;
        r.written = written;
        moat_rpc_call_reply(x->st->call, &r.base);
    }
    xfer_free(x);
}

void moat__files_write(stream *st, const moat_bridge_endpoint *ep)
{
    const Moat__V1__WriteRequest *req = moat_rpc_call_get_data(st->call);
    xfer_ctx *x = xfer_new(st);
    if (x == NULL)
        return;
    st->on_credit = NULL;
    x->data = req->data.data;
    x->left = req->data.len;
    moat_bridge_upload_cbs cbs = {write_read, write_done, x};
    moat_bridge_xfer *bx = NULL;
    moat_status status;
    moat__stream_ref(st);
    /* Offset 0 is the reference's multipart upload (any execd); later pieces of a large
     * file need moat-execd's offset writes. */
    moat_err err = req->offset > 0 ? moat_bridge_write_at(st->s->bridge, ep, req->path, req->offset,
                                                          &cbs, &bx, &status)
                                   : moat_bridge_upload(st->s->bridge, ep, req->path, req->mode,
                                                        NULL, NULL, &cbs, &bx, &status);
    xfer_started(st, x, err, bx, &status);
}
