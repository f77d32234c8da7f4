/* gRPC's length-prefixed messages, grpc-timeout, and the text encodings of its trailers. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "grpc/grpc.h"

void moat_grpc_message_prefix(uint8_t out[MOAT_GRPC_PREFIX_SIZE], uint32_t len)
{
    out[0] = 0;
    out[1] = (uint8_t)(len >> 24);
    out[2] = (uint8_t)(len >> 16);
    out[3] = (uint8_t)(len >> 8);
    out[4] = (uint8_t)len;
}

void moat_grpc_decoder_init(moat_grpc_decoder *d, size_t max_message)
{
    memset(d, 0, sizeof(*d));
    d->max = max_message;
}

void moat_grpc_decoder_free(moat_grpc_decoder *d)
{
    free(d->body);
    d->body = NULL;
}

bool moat_grpc_decoder_partial(const moat_grpc_decoder *d)
{
    return d->head_len > 0;
}

const char *moat_grpc_decoder_reason(const moat_grpc_decoder *d)
{
    return d->reason;
}

static moat_err decoder_fail(moat_grpc_decoder *d, moat_err err, const char *why)
{
    snprintf(d->reason, sizeof(d->reason), "%s", why);
    return err;
}

/* The prefix is complete: check what it declares before anything is allocated. */
static moat_err decoder_head_done(moat_grpc_decoder *d)
{
    if (d->head[0] == 1)
        return decoder_fail(d, MOAT_E_UNSUPPORTED,
                            "compressed message, and no grpc-encoding was negotiated");
    if (d->head[0] != 0)
        return decoder_fail(d, MOAT_E_PROTO, "compressed flag is neither 0 nor 1");
    d->body_want = (size_t)d->head[1] << 24 | (size_t)d->head[2] << 16 | (size_t)d->head[3] << 8 |
                   (size_t)d->head[4];
    if (d->body_want > d->max) {
        snprintf(d->reason, sizeof(d->reason), "message of %zu bytes, over the limit of %zu",
                 d->body_want, d->max);
        return MOAT_E_TOO_BIG;
    }
    d->in_body = true;
    return MOAT_OK;
}

static void decoder_reset(moat_grpc_decoder *d)
{
    d->head_len = 0;
    d->in_body = false;
    d->body_len = d->body_want = 0;
}

moat_err moat_grpc_decoder_feed(moat_grpc_decoder *d, const uint8_t *p, size_t len, size_t *used,
                                moat_slice *msg)
{
    *used = 0;
    d->reason[0] = '\0';
    /* The message handed out last time is no longer needed. */
    if (d->body != NULL && !d->in_body) {
        free(d->body);
        d->body = NULL;
    }
    while (!d->in_body) {
        if (*used == len)
            return MOAT_E_AGAIN;
        d->head[d->head_len++] = p[(*used)++];
        if (d->head_len < MOAT_GRPC_PREFIX_SIZE)
            continue;
        moat_err err = decoder_head_done(d);
        if (err != MOAT_OK)
            return err;
    }
    size_t left = len - *used;
    if (d->body == NULL && left >= d->body_want) {
        /* The whole message is in this piece: hand it out where it is. */
        *msg = (moat_slice){p + *used, d->body_want};
        *used += d->body_want;
        decoder_reset(d);
        return MOAT_OK;
    }
    if (d->body == NULL) {
        d->body = malloc(d->body_want);
        if (d->body == NULL)
            return decoder_fail(d, MOAT_E_NOMEM, "out of memory");
    }
    size_t take = d->body_want - d->body_len;
    if (take > left)
        take = left;
    memcpy(d->body + d->body_len, p + *used, take);
    d->body_len += take;
    *used += take;
    if (d->body_len < d->body_want)
        return MOAT_E_AGAIN;
    *msg = (moat_slice){d->body, d->body_want};
    decoder_reset(d);
    return MOAT_OK;
}

moat_err moat_grpc_timeout_parse(const char *value, size_t len, uint64_t *ms)
{
    if (len < 2 || len > 9)
        return MOAT_E_INVAL;
    uint64_t n = 0;
    for (size_t i = 0; i + 1 < len; i++) {
        if (value[i] < '0' || value[i] > '9')
            return MOAT_E_INVAL;
        n = n * 10 + (uint64_t)(value[i] - '0');
    }
    /* At most 99,999,999 of any unit: hours in ms stay far below 2^64. */
    switch (value[len - 1]) {
    case 'H':
        *ms = n * 3600000u;
        return MOAT_OK;
    case 'M':
        *ms = n * 60000u;
        return MOAT_OK;
    case 'S':
        *ms = n * 1000u;
        return MOAT_OK;
    case 'm':
        *ms = n;
        return MOAT_OK;
    case 'u':
        *ms = (n + 999u) / 1000u;
        return MOAT_OK;
    case 'n':
        *ms = (n + 999999u) / 1000000u;
        return MOAT_OK;
    default:
        return MOAT_E_INVAL;
    }
}

static const char hex_digits[] = "0123456789ABCDEF";

moat_err moat_grpc_percent_encode(const char *in, size_t len, char *out, size_t cap)
{
    if (cap == 0)
        return MOAT_E_TOO_BIG;
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        uint8_t b = (uint8_t)in[i];
        bool plain = b >= 0x20 && b <= 0x7e && b != '%';
        size_t need = plain ? 1 : 3;
        if (o + need >= cap) {
            out[o] = '\0';
            return MOAT_E_TOO_BIG;
        }
        if (plain) {
            out[o++] = (char)b;
            continue;
        }
        out[o++] = '%';
        out[o++] = hex_digits[b >> 4];
        out[o++] = hex_digits[b & 15];
    }
    out[o] = '\0';
    return MOAT_OK;
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

size_t moat_grpc_percent_decode(const char *in, size_t len, char *out, size_t cap)
{
    if (cap == 0)
        return 0;
    size_t o = 0;
    for (size_t i = 0; i < len && o + 1 < cap; i++) {
        int hi = -1, lo = -1;
        if (in[i] == '%' && i + 2 < len) {
            hi = hex_value(in[i + 1]);
            lo = hex_value(in[i + 2]);
        }
        if (hi >= 0 && lo >= 0) {
            out[o++] = (char)(hi << 4 | lo);
            i += 2;
        } else {
            out[o++] = in[i];
        }
    }
    out[o] = '\0';
    return o;
}

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

moat_err moat_grpc_base64_encode(const uint8_t *in, size_t len, char *out, size_t cap)
{
    size_t need = len / 3 * 4 + (len % 3 == 0 ? 0 : len % 3 + 1);
    if (cap == 0 || need >= cap)
        return MOAT_E_TOO_BIG;
    size_t o = 0;
    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        size_t n = len - i < 3 ? len - i : 3;
        if (n > 1)
            v |= (uint32_t)in[i + 1] << 8;
        if (n > 2)
            v |= in[i + 2];
        out[o++] = b64_alphabet[v >> 18 & 63];
        out[o++] = b64_alphabet[v >> 12 & 63];
        if (n > 1)
            out[o++] = b64_alphabet[v >> 6 & 63];
        if (n > 2)
            out[o++] = b64_alphabet[v & 63];
    }
    out[o] = '\0';
    return MOAT_OK;
}

static int b64_value(char c)
{
    const char *p = c != '\0' ? strchr(b64_alphabet, c) : NULL;
    return p != NULL ? (int)(p - b64_alphabet) : -1;
}

moat_err moat_grpc_base64_decode(const char *in, size_t len, uint8_t *out, size_t cap,
                                 size_t *out_len)
{
    /* Padding only completes the last group. */
    if (len % 4 == 0 && len >= 1 && in[len - 1] == '=')
        len -= len >= 2 && in[len - 2] == '=' ? 2 : 1;
    if (len % 4 == 1)
        return MOAT_E_INVAL;
    size_t o = 0;
    uint32_t acc = 0;
    unsigned bits = 0;
    for (size_t i = 0; i < len; i++) {
        int v = b64_value(in[i]);
        if (v < 0)
            return MOAT_E_INVAL;
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (o == cap)
                return MOAT_E_TOO_BIG;
            out[o++] = (uint8_t)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    *out_len = o;
    return MOAT_OK;
}
