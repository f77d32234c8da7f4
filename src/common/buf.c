#include "common/common.h"

#include <stdlib.h>
#include <string.h>

void moat_buf_init(moat_buf *buf, size_t max)
{
    buf->data = NULL;
    buf->len = 0;
    buf->cap = 0;
    buf->max = max;
}

void moat_buf_free(moat_buf *buf)
{
    free(buf->data);
    buf->data = NULL;
    buf->len = 0;
    buf->cap = 0;
}

moat_err moat_buf_reserve(moat_buf *buf, size_t extra)
{
    if (extra > buf->max || buf->len > buf->max - extra)
        return MOAT_E_TOO_BIG;
    size_t need = buf->len + extra;
    if (need <= buf->cap)
        return MOAT_OK;
    size_t cap = buf->cap ? buf->cap : 256;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    if (cap > buf->max)
        cap = buf->max;
    uint8_t *data = realloc(buf->data, cap);
    if (data == NULL)
        return MOAT_E_NOMEM;
    buf->data = data;
    buf->cap = cap;
    return MOAT_OK;
}

moat_err moat_buf_append(moat_buf *buf, const void *data, size_t len)
{
    if (len == 0)
        return MOAT_OK;
    moat_err err = moat_buf_reserve(buf, len);
    if (err != MOAT_OK)
        return err;
    memcpy(buf->data + buf->len, data, len);
    buf->len += len;
    return MOAT_OK;
}

void moat_buf_consume(moat_buf *buf, size_t n)
{
    if (n >= buf->len) {
        buf->len = 0;
        return;
    }
    memmove(buf->data, buf->data + n, buf->len - n);
    buf->len -= n;
}

void moat_buf_reset(moat_buf *buf)
{
    buf->len = 0;
}
