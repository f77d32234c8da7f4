/* nanopb callbacks that map string/bytes fields to zero-copy slices. */
#include "wire/wire_pb.h"

/* Map entries of string→string maps all have this layout (key = 1, value = 2). */
typedef struct kv_entry {
    pb_callback_t key;
    pb_callback_t value;
} kv_entry;

/* The input of the decode running on this thread. nanopb hands a callback a
 * copy on its stack when a field arrives with a scalar wire type; only bytes
 * inside the input may become a slice. */
static _Thread_local uintptr_t input_lo, input_hi;

pb_istream_t moat__pb_istream(moat_slice input)
{
    input_lo = (uintptr_t)input.data;
    input_hi = (uintptr_t)input.data + input.len;
    return pb_istream_from_buffer(input.data, input.len);
}

static bool decode_slice_cb(pb_istream_t *stream, const pb_field_t *field, void **arg)
{
    (void)field;
    moat_slice *s = *arg;
    /* Buffer streams keep their read position in state: the bytes are there. */
    /* Compared as integers: the stack copy is a different object. */
    uintptr_t p = (uintptr_t)stream->state;
    if (p == 0 || p < input_lo || p > input_hi || stream->bytes_left > input_hi - p)
        return false;
    s->data = stream->state;
    s->len = stream->bytes_left;
    return pb_read(stream, NULL, stream->bytes_left);
}

static bool encode_slice_cb(pb_ostream_t *stream, const pb_field_t *field, void *const *arg)
{
    const moat_slice *s = *arg;
    if (s->len == 0)
        return true;
    return pb_encode_tag_for_field(stream, field) && pb_encode_string(stream, s->data, s->len);
}

void moat__pb_decode_slice(pb_callback_t *cb, moat_slice *s)
{
    s->data = NULL;
    s->len = 0;
    cb->funcs.decode = decode_slice_cb;
    cb->arg = s;
}

void moat__pb_encode_slice(pb_callback_t *cb, const moat_slice *s)
{
    cb->funcs.encode = encode_slice_cb;
    cb->arg = (void *)s;
}

static bool decode_strings_cb(pb_istream_t *stream, const pb_field_t *field, void **arg)
{
    moat__pb_strs *strs = *arg;
    if (strs->count >= strs->max) {
        /* Keep the first max elements; the rest are skipped, not an error. */
        strs->overflow = true;
        return pb_read(stream, NULL, stream->bytes_left);
    }
    void *slot = &strs->items[strs->count++];
    return decode_slice_cb(stream, field, &slot);
}

static bool encode_strings_cb(pb_ostream_t *stream, const pb_field_t *field, void *const *arg)
{
    const moat__pb_strs *strs = *arg;
    for (size_t i = 0; i < strs->count; i++) {
        const moat_slice *s = &strs->items[i];
        /* Repeated strings keep empty elements, unlike singular fields. */
        if (!pb_encode_tag_for_field(stream, field) || !pb_encode_string(stream, s->data, s->len))
            return false;
    }
    return true;
}

void moat__pb_decode_strings(pb_callback_t *cb, moat__pb_strs *strs)
{
    strs->count = 0;
    strs->overflow = false;
    cb->funcs.decode = decode_strings_cb;
    cb->arg = strs;
}

void moat__pb_encode_strings(pb_callback_t *cb, const moat__pb_strs *strs)
{
    cb->funcs.encode = encode_strings_cb;
    cb->arg = (void *)strs;
}

static bool decode_kv_cb(pb_istream_t *stream, const pb_field_t *field, void **arg)
{
    (void)field;
    moat__pb_kvs *kvs = *arg;
    if (kvs->count >= kvs->max) {
        kvs->overflow = true;
        return false;
    }
    moat_kv *kv = &kvs->items[kvs->count];
    kv_entry entry;
    moat__pb_decode_slice(&entry.key, &kv->key);
    moat__pb_decode_slice(&entry.value, &kv->value);
    if (!pb_decode(stream, kvs->entry_fields, &entry))
        return false;
    kvs->count++;
    return true;
}

static bool encode_kv_cb(pb_ostream_t *stream, const pb_field_t *field, void *const *arg)
{
    const moat__pb_kvs *kvs = *arg;
    for (size_t i = 0; i < kvs->count; i++) {
        kv_entry entry;
        moat__pb_encode_slice(&entry.key, &kvs->items[i].key);
        moat__pb_encode_slice(&entry.value, &kvs->items[i].value);
        if (!pb_encode_tag_for_field(stream, field) ||
            !pb_encode_submessage(stream, kvs->entry_fields, &entry))
            return false;
    }
    return true;
}

void moat__pb_decode_kvs(pb_callback_t *cb, moat__pb_kvs *kvs)
{
    kvs->count = 0;
    kvs->overflow = false;
    cb->funcs.decode = decode_kv_cb;
    cb->arg = kvs;
}

void moat__pb_encode_kvs(pb_callback_t *cb, const moat__pb_kvs *kvs)
{
    cb->funcs.encode = encode_kv_cb;
    cb->arg = (void *)kvs;
}
