/* Incremental splitter of a byte stream into frame bodies. */
#include <string.h>

#include "wire/wire.h"

void moat_wire_decoder_init(moat_wire_decoder *d, uint32_t max_frame)
{
    memset(d, 0, sizeof *d);
    d->max_frame = max_frame > MOAT_WIRE_MAX_FRAME_LIMIT ? MOAT_WIRE_MAX_FRAME_LIMIT : max_frame;
    moat_buf_init(&d->body, d->max_frame);
    d->error = MOAT_OK;
    d->error_reason = "";
}

void moat_wire_decoder_set_max(moat_wire_decoder *d, uint32_t max_frame)
{
    d->max_frame = max_frame > MOAT_WIRE_MAX_FRAME_LIMIT ? MOAT_WIRE_MAX_FRAME_LIMIT : max_frame;
}

void moat_wire_decoder_free(moat_wire_decoder *d)
{
    moat_buf_free(&d->body);
}

static moat_err fail(moat_wire_decoder *d, moat_err err, const char *reason)
{
    d->error = err;
    d->error_reason = reason;
    return err;
}

moat_err moat_wire_decoder_feed(moat_wire_decoder *d, const uint8_t *in, size_t len,
                                size_t *consumed, moat_slice *body)
{
    size_t pos = 0;
    *consumed = 0;
    if (d->error != MOAT_OK)
        return d->error;
    /* A body handed out from our buffer last time is no longer needed. */
    if (d->header_seen == 0)
        moat_buf_reset(&d->body);
    while (d->header_seen < MOAT_WIRE_HEADER_SIZE) {
        if (pos == len) {
            *consumed = pos;
            return MOAT_E_AGAIN;
        }
        d->header[d->header_seen++] = in[pos++];
        if (d->header_seen == MOAT_WIRE_HEADER_SIZE) {
            d->body_len = (uint32_t)d->header[0] << 24 | (uint32_t)d->header[1] << 16 |
                          (uint32_t)d->header[2] << 8 | (uint32_t)d->header[3];
            if (d->body_len == 0)
                return fail(d, MOAT_E_ZERO_LENGTH, "frame length is zero");
            if (d->body_len > d->max_frame)
                return fail(d, MOAT_E_TOO_BIG, "frame length is over the limit");
        }
    }
    size_t avail = len - pos;
    if (d->body.len == 0 && avail >= d->body_len) {
        /* The whole body is in the input: hand it out without a copy. */
        body->data = in + pos;
        body->len = d->body_len;
        d->header_seen = 0;
        *consumed = pos + d->body_len;
        return MOAT_OK;
    }
    if (d->body.len == 0) {
        /* The buffer grows to the current limit at most; it is kept for the
         * next frames, so a steady stream allocates nothing. */
        d->body.max = d->max_frame;
        if (moat_buf_reserve(&d->body, d->body_len) != MOAT_OK)
            return fail(d, MOAT_E_NOMEM, "out of memory for a frame");
    }
    size_t take = d->body_len - d->body.len;
    if (take > avail)
        take = avail;
    if (take > 0)
        memcpy(d->body.data + d->body.len, in + pos, take);
    d->body.len += take;
    pos += take;
    *consumed = pos;
    if (d->body.len < d->body_len)
        return MOAT_E_AGAIN;
    body->data = d->body.data;
    body->len = d->body_len;
    d->header_seen = 0;
    return MOAT_OK;
}

const char *moat_wire_decoder_reason(const moat_wire_decoder *d)
{
    return d->error_reason ? d->error_reason : "";
}
