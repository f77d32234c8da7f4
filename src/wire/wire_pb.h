/* Internal nanopb glue shared by moat_wire and libmoat: string/bytes fields as
 * zero-copy moat_slice values and string→string maps as moat_kv arrays. */
#ifndef MOAT_WIRE_PB_H
#define MOAT_WIRE_PB_H

#include <pb.h>
#include <pb_decode.h>
#include <pb_encode.h>

#include "wire/wire.h"

/* A map<string,string> (or repeated key/value) field. Decoding appends to
 * items[count] up to max and sets overflow when there are more; encoding
 * writes items[0..count). entry_fields is the map entry's descriptor. */
typedef struct moat__pb_kvs {
    moat_kv *items;
    size_t count;
    size_t max;
    const pb_msgdesc_t *entry_fields;
    bool overflow;
} moat__pb_kvs;

/* A repeated string field: decoding keeps the first max elements (overflow
 * says more were skipped); encoding writes items[0..count). */
typedef struct moat__pb_strs {
    moat_slice *items;
    size_t count;
    size_t max;
    bool overflow;
} moat__pb_strs;

/* Starts decoding input: every decode whose callbacks make slices must use a
 * stream from here (one decode at a time per thread). */
pb_istream_t moat__pb_istream(moat_slice input);
/* Decoding: *s points into the input given to moat__pb_istream, valid as long
 * as that buffer is; a field whose bytes are not in it fails the decode. */
void moat__pb_decode_slice(pb_callback_t *cb, moat_slice *s);
/* Encoding: writes *s (nothing when empty, as proto3 does). s must outlive the encode. */
void moat__pb_encode_slice(pb_callback_t *cb, const moat_slice *s);
void moat__pb_decode_strings(pb_callback_t *cb, moat__pb_strs *strs);
void moat__pb_encode_strings(pb_callback_t *cb, const moat__pb_strs *strs);
void moat__pb_decode_kvs(pb_callback_t *cb, moat__pb_kvs *kvs);
void moat__pb_encode_kvs(pb_callback_t *cb, const moat__pb_kvs *kvs);

#endif
