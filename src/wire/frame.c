/* Frame envelope encode/decode with nanopb; decoded slices point into the input. */
#include <stddef.h>
#include <string.h>

#include "moat/v1/frame.pb.h"
#include "wire/wire.h"
#include "wire/wire_pb.h"

_Static_assert(sizeof(moat_v1_Call_MetadataEntry) == 2 * sizeof(pb_callback_t), "map entry layout");
_Static_assert(sizeof(moat_v1_ErrorDetails_MetadataEntry) == 2 * sizeof(pb_callback_t),
               "map entry layout");

const char *moat_frame_kind_name(moat_frame_kind kind)
{
    switch (kind) {
    case MOAT_FRAME_HELLO:
        return "hello";
    case MOAT_FRAME_HELLO_ACK:
        return "hello_ack";
    case MOAT_FRAME_CALL:
        return "call";
    case MOAT_FRAME_MESSAGE:
        return "message";
    case MOAT_FRAME_END:
        return "end";
    case MOAT_FRAME_CANCEL:
        return "cancel";
    case MOAT_FRAME_WINDOW_UPDATE:
        return "window_update";
    case MOAT_FRAME_PING:
        return "ping";
    case MOAT_FRAME_PONG:
        return "pong";
    case MOAT_FRAME_GO_AWAY:
        return "go_away";
    case MOAT_FRAME_NONE:
        break;
    }
    return "unknown";
}

static moat_code code_from_pb(moat_v1_StatusCode c)
{
    /* Codes this build does not know read as UNKNOWN, as gRPC does. */
    return (int)c >= 0 && (int)c < MOAT_CODE_COUNT ? (moat_code)c : MOAT_CODE_UNKNOWN;
}

typedef struct decode_ctx {
    moat_frame *f;
    moat__pb_kvs kvs;
} decode_ctx;

/* The nanopb descriptor of the `kind` member with this field number. */
static const pb_msgdesc_t *kind_fields(uint32_t tag)
{
    switch (tag) {
    case moat_v1_Frame_hello_tag:
        return moat_v1_Hello_fields;
    case moat_v1_Frame_hello_ack_tag:
        return moat_v1_HelloAck_fields;
    case moat_v1_Frame_call_tag:
        return moat_v1_Call_fields;
    case moat_v1_Frame_message_tag:
        return moat_v1_Message_fields;
    case moat_v1_Frame_end_tag:
        return moat_v1_End_fields;
    case moat_v1_Frame_cancel_tag:
        return moat_v1_Cancel_fields;
    case moat_v1_Frame_window_update_tag:
        return moat_v1_WindowUpdate_fields;
    case moat_v1_Frame_ping_tag:
        return moat_v1_Ping_fields;
    case moat_v1_Frame_pong_tag:
        return moat_v1_Pong_fields;
    case moat_v1_Frame_go_away_tag:
        return moat_v1_GoAway_fields;
    default:
        return NULL;
    }
}

/* Points the member's string fields at slices of the frame being decoded. */
static void prepare_decode(uint32_t tag, moat_v1_Frame *msg, decode_ctx *ctx)
{
    moat_frame *f = ctx->f;
    ctx->kvs.overflow = false;
    ctx->kvs.count = 0;
    switch (tag) {
    case moat_v1_Frame_hello_tag:
        moat__pb_decode_slice(&msg->kind.hello.client_name, &f->u.hello.client_name);
        moat__pb_decode_slice(&msg->kind.hello.token, &f->u.hello.token);
        break;
    case moat_v1_Frame_hello_ack_tag:
        moat__pb_decode_slice(&msg->kind.hello_ack.server_version, &f->u.hello_ack.server_version);
        break;
    case moat_v1_Frame_call_tag:
        moat__pb_decode_slice(&msg->kind.call.method, &f->u.call.method);
        ctx->kvs.items = f->u.call.metadata;
        ctx->kvs.max = MOAT_WIRE_MAX_KV;
        ctx->kvs.entry_fields = moat_v1_Call_MetadataEntry_fields;
        moat__pb_decode_kvs(&msg->kind.call.metadata, &ctx->kvs);
        break;
    case moat_v1_Frame_message_tag:
        moat__pb_decode_slice(&msg->kind.message.payload, &f->u.message.payload);
        break;
    case moat_v1_Frame_end_tag:
        moat__pb_decode_slice(&msg->kind.end.message, &f->u.end.message);
        moat__pb_decode_slice(&msg->kind.end.details.reason, &f->u.end.reason);
        ctx->kvs.items = f->u.end.details;
        ctx->kvs.max = MOAT_WIRE_MAX_KV;
        ctx->kvs.entry_fields = moat_v1_ErrorDetails_MetadataEntry_fields;
        moat__pb_decode_kvs(&msg->kind.end.details.metadata, &ctx->kvs);
        break;
    case moat_v1_Frame_cancel_tag:
        moat__pb_decode_slice(&msg->kind.cancel.reason, &f->u.cancel.reason);
        break;
    case moat_v1_Frame_go_away_tag:
        moat__pb_decode_slice(&msg->kind.go_away.message, &f->u.go_away.message);
        break;
    default:
        break;
    }
}

/* WindowUpdate, Ping and Pong hold one varint (field 1). They are the bulk of
 * control traffic, so they skip pb_decode's descriptor walk. */
static bool is_scalar_kind(uint32_t tag)
{
    return tag == moat_v1_Frame_window_update_tag || tag == moat_v1_Frame_ping_tag ||
           tag == moat_v1_Frame_pong_tag;
}

static bool decode_scalar_kind(pb_istream_t *sub, uint64_t *value)
{
    for (;;) {
        pb_wire_type_t wt;
        uint32_t tag;
        bool eof;
        if (!pb_decode_tag(sub, &wt, &tag, &eof))
            return eof;
        if (tag == 1) {
            if (wt != PB_WT_VARINT || !pb_decode_varint(sub, value))
                return false;
        } else if (!pb_skip_field(sub, wt)) {
            return false;
        }
    }
}

/* The envelope is walked with nanopb's field primitives and only the one
 * `kind` member goes through pb_decode: iterating the Frame descriptor's
 * eleven fields for every frame cost more than the rest of the decode. */
moat_err moat_wire_frame_decode(moat_slice body, moat_frame *out)
{
    memset(out, 0, offsetof(moat_frame, u));
    decode_ctx ctx = {.f = out};
    moat_v1_Frame msg;
    uint32_t kind = 0;
    uint64_t scalar = 0;
    pb_istream_t stream = moat__pb_istream(body);
    for (;;) {
        pb_wire_type_t wt;
        uint32_t tag;
        bool eof;
        if (!pb_decode_tag(&stream, &wt, &tag, &eof)) {
            if (eof)
                break;
            return MOAT_E_PROTO;
        }
        if (tag == moat_v1_Frame_stream_id_tag) {
            if (wt != PB_WT_VARINT || !pb_decode_varint32(&stream, &out->stream_id))
                return MOAT_E_PROTO;
            continue;
        }
        const pb_msgdesc_t *fields = kind_fields(tag);
        if (fields == NULL) {
            /* Unknown fields are skipped, as protobuf does; a frame with no
             * known kind is refused below. */
            if (!pb_skip_field(&stream, wt))
                return MOAT_E_PROTO;
            continue;
        }
        if (wt != PB_WT_STRING)
            return MOAT_E_PROTO;
        /* A repeated member merges into the previous one; another kind replaces it. */
        bool scalar_kind = is_scalar_kind(tag);
        if (tag != kind) {
            if (scalar_kind)
                scalar = 0;
            else
                memset(&msg.kind, 0, sizeof msg.kind);
            prepare_decode(tag, &msg, &ctx);
            kind = tag;
        }
        pb_istream_t sub;
        if (!pb_make_string_substream(&stream, &sub))
            return MOAT_E_PROTO;
        bool ok = scalar_kind ? decode_scalar_kind(&sub, &scalar)
                              : pb_decode_ex(&sub, fields, &msg.kind, PB_DECODE_NOINIT);
        if (!pb_close_string_substream(&stream, &sub) || !ok)
            return ctx.kvs.overflow ? MOAT_E_TOO_BIG : MOAT_E_PROTO;
    }
    switch (kind) {
    case moat_v1_Frame_hello_tag:
        out->kind = MOAT_FRAME_HELLO;
        out->u.hello.protocol_version = msg.kind.hello.protocol_version;
        break;
    case moat_v1_Frame_hello_ack_tag: {
        const moat_v1_HelloAck *m = &msg.kind.hello_ack;
        out->kind = MOAT_FRAME_HELLO_ACK;
        out->u.hello_ack.protocol_version = m->protocol_version;
        out->u.hello_ack.max_frame_size = m->max_frame_size;
        out->u.hello_ack.initial_window = m->initial_window;
        out->u.hello_ack.max_concurrent_streams = m->max_concurrent_streams;
        out->u.hello_ack.idle_timeout_seconds = m->idle_timeout_seconds;
        break;
    }
    case moat_v1_Frame_call_tag:
        out->kind = MOAT_FRAME_CALL;
        out->u.call.deadline_ms = msg.kind.call.deadline_ms;
        out->u.call.metadata_count = ctx.kvs.count;
        break;
    case moat_v1_Frame_message_tag:
        out->kind = MOAT_FRAME_MESSAGE;
        break;
    case moat_v1_Frame_end_tag:
        out->kind = MOAT_FRAME_END;
        out->u.end.code = code_from_pb(msg.kind.end.code);
        out->u.end.detail_count = ctx.kvs.count;
        break;
    case moat_v1_Frame_cancel_tag:
        out->kind = MOAT_FRAME_CANCEL;
        break;
    case moat_v1_Frame_window_update_tag:
        if (scalar > UINT32_MAX)
            return MOAT_E_PROTO;
        out->kind = MOAT_FRAME_WINDOW_UPDATE;
        out->u.window_update.increment = (uint32_t)scalar;
        break;
    case moat_v1_Frame_ping_tag:
        out->kind = MOAT_FRAME_PING;
        out->u.ping.payload = scalar;
        break;
    case moat_v1_Frame_pong_tag:
        out->kind = MOAT_FRAME_PONG;
        out->u.pong.payload = scalar;
        break;
    case moat_v1_Frame_go_away_tag:
        out->kind = MOAT_FRAME_GO_AWAY;
        out->u.go_away.last_stream_id = msg.kind.go_away.last_stream_id;
        out->u.go_away.code = code_from_pb(msg.kind.go_away.code);
        break;
    default:
        return MOAT_E_UNKNOWN_KIND;
    }
    return MOAT_OK;
}

/* The nanopb `kind` member for f, with callbacks reading f's slices; kvs must
 * live as long as msg is used. */
typedef struct encode_ctx {
    moat_v1_Frame msg;
    moat__pb_kvs kvs;
} encode_ctx;

static bool prepare_encode(const moat_frame *f, encode_ctx *ctx)
{
    moat_v1_Frame *msg = &ctx->msg;
    switch (f->kind) {
    case MOAT_FRAME_HELLO:
        msg->kind.hello.protocol_version = f->u.hello.protocol_version;
        moat__pb_encode_slice(&msg->kind.hello.client_name, &f->u.hello.client_name);
        moat__pb_encode_slice(&msg->kind.hello.token, &f->u.hello.token);
        return true;
    case MOAT_FRAME_HELLO_ACK: {
        moat_v1_HelloAck *m = &msg->kind.hello_ack;
        m->protocol_version = f->u.hello_ack.protocol_version;
        moat__pb_encode_slice(&m->server_version, &f->u.hello_ack.server_version);
        m->max_frame_size = f->u.hello_ack.max_frame_size;
        m->initial_window = f->u.hello_ack.initial_window;
        m->max_concurrent_streams = f->u.hello_ack.max_concurrent_streams;
        m->idle_timeout_seconds = f->u.hello_ack.idle_timeout_seconds;
        return true;
    }
    case MOAT_FRAME_CALL:
        if (f->u.call.metadata_count > MOAT_WIRE_MAX_KV)
            return false;
        moat__pb_encode_slice(&msg->kind.call.method, &f->u.call.method);
        msg->kind.call.deadline_ms = f->u.call.deadline_ms;
        ctx->kvs.items = (moat_kv *)f->u.call.metadata;
        ctx->kvs.count = f->u.call.metadata_count;
        ctx->kvs.entry_fields = moat_v1_Call_MetadataEntry_fields;
        moat__pb_encode_kvs(&msg->kind.call.metadata, &ctx->kvs);
        return true;
    case MOAT_FRAME_MESSAGE:
        moat__pb_encode_slice(&msg->kind.message.payload, &f->u.message.payload);
        return true;
    case MOAT_FRAME_END: {
        moat_v1_End *m = &msg->kind.end;
        if (f->u.end.detail_count > MOAT_WIRE_MAX_KV)
            return false;
        m->code = (moat_v1_StatusCode)f->u.end.code;
        moat__pb_encode_slice(&m->message, &f->u.end.message);
        m->has_details = f->u.end.reason.len > 0 || f->u.end.detail_count > 0;
        memset(&m->details, 0, sizeof m->details);
        moat__pb_encode_slice(&m->details.reason, &f->u.end.reason);
        ctx->kvs.items = (moat_kv *)f->u.end.details;
        ctx->kvs.count = f->u.end.detail_count;
        ctx->kvs.entry_fields = moat_v1_ErrorDetails_MetadataEntry_fields;
        moat__pb_encode_kvs(&m->details.metadata, &ctx->kvs);
        return true;
    }
    case MOAT_FRAME_CANCEL:
        moat__pb_encode_slice(&msg->kind.cancel.reason, &f->u.cancel.reason);
        return true;
    case MOAT_FRAME_WINDOW_UPDATE:
        msg->kind.window_update.increment = f->u.window_update.increment;
        return true;
    case MOAT_FRAME_PING:
        msg->kind.ping.payload = f->u.ping.payload;
        return true;
    case MOAT_FRAME_PONG:
        msg->kind.pong.payload = f->u.pong.payload;
        return true;
    case MOAT_FRAME_GO_AWAY:
        msg->kind.go_away.last_stream_id = f->u.go_away.last_stream_id;
        msg->kind.go_away.code = (moat_v1_StatusCode)f->u.go_away.code;
        moat__pb_encode_slice(&msg->kind.go_away.message, &f->u.go_away.message);
        return true;
    case MOAT_FRAME_NONE:
        break;
    }
    return false;
}

/* Writes the envelope (stream_id, then the one kind member) as protobuf
 * would: field order, proto3 defaults omitted. */
static bool encode_body(pb_ostream_t *stream, const moat_frame *f, const encode_ctx *ctx)
{
    if (f->stream_id != 0 && (!pb_encode_tag(stream, PB_WT_VARINT, moat_v1_Frame_stream_id_tag) ||
                              !pb_encode_varint(stream, f->stream_id)))
        return false;
    if (is_scalar_kind((uint32_t)f->kind)) {
        uint64_t value = f->kind == MOAT_FRAME_WINDOW_UPDATE ? f->u.window_update.increment
                         : f->kind == MOAT_FRAME_PING        ? f->u.ping.payload
                                                             : f->u.pong.payload;
        /* Field 1, omitted when 0 as proto3 does. */
        pb_ostream_t sizing = PB_OSTREAM_SIZING;
        if (value != 0 &&
            (!pb_encode_tag(&sizing, PB_WT_VARINT, 1) || !pb_encode_varint(&sizing, value)))
            return false;
        return pb_encode_tag(stream, PB_WT_STRING, (uint32_t)f->kind) &&
               pb_encode_varint(stream, sizing.bytes_written) &&
               (value == 0 ||
                (pb_encode_tag(stream, PB_WT_VARINT, 1) && pb_encode_varint(stream, value)));
    }
    return pb_encode_tag(stream, PB_WT_STRING, (uint32_t)f->kind) &&
           pb_encode_submessage(stream, kind_fields((uint32_t)f->kind), &ctx->msg.kind);
}

size_t moat_wire_encoded_size(const moat_frame *f)
{
    encode_ctx ctx;
    if (!prepare_encode(f, &ctx))
        return 0;
    pb_ostream_t sizing = PB_OSTREAM_SIZING;
    if (!encode_body(&sizing, f, &ctx) || sizing.bytes_written > UINT32_MAX)
        return 0;
    return sizing.bytes_written + MOAT_WIRE_HEADER_SIZE;
}

moat_err moat_wire_encode(const moat_frame *f, uint8_t *out, size_t cap, size_t *written)
{
    encode_ctx ctx;
    if (!prepare_encode(f, &ctx))
        return MOAT_E_INVAL;
    if (cap < MOAT_WIRE_HEADER_SIZE)
        return MOAT_E_TOO_BIG;
    size_t room = cap - MOAT_WIRE_HEADER_SIZE;
    if (room > UINT32_MAX)
        room = UINT32_MAX;
    /* One pass: encode after the prefix, then fill the prefix in. Our callbacks
     * cannot fail, so a failure means the buffer is full. */
    pb_ostream_t stream = pb_ostream_from_buffer(out + MOAT_WIRE_HEADER_SIZE, room);
    if (!encode_body(&stream, f, &ctx))
        return MOAT_E_TOO_BIG;
    size_t n = stream.bytes_written;
    out[0] = (uint8_t)(n >> 24);
    out[1] = (uint8_t)(n >> 16);
    out[2] = (uint8_t)(n >> 8);
    out[3] = (uint8_t)n;
    *written = n + MOAT_WIRE_HEADER_SIZE;
    return MOAT_OK;
}

/* Keeps the bytes before `want` and counts the rest without reading them: the
 * payload is written last and its bytes are not there. nanopb resets
 * bytes_written in submessage streams, so the position is kept here. */
typedef struct prefix_out {
    uint8_t *out;
    size_t pos;
    size_t want;
} prefix_out;

static bool write_prefix(pb_ostream_t *stream, const pb_byte_t *buf, size_t count)
{
    prefix_out *p = stream->state;
    if (p->pos < p->want) {
        size_t n = count < p->want - p->pos ? count : p->want - p->pos;
        memcpy(p->out + p->pos, buf, n);
    }
    p->pos += count;
    return true;
}

moat_err moat_wire_encode_message_prefix(uint32_t stream_id, size_t payload_len, uint8_t *out,
                                         size_t cap, size_t *written)
{
    if (payload_len > UINT32_MAX)
        return MOAT_E_TOO_BIG;
    moat_frame f = {0};
    f.stream_id = stream_id;
    f.kind = MOAT_FRAME_MESSAGE;
    f.u.message.payload = (moat_slice){NULL, payload_len};
    encode_ctx ctx;
    if (!prepare_encode(&f, &ctx))
        return MOAT_E_INVAL;
    pb_ostream_t sizing = PB_OSTREAM_SIZING;
    if (!encode_body(&sizing, &f, &ctx) || sizing.bytes_written > UINT32_MAX)
        return MOAT_E_TOO_BIG;
    size_t body = sizing.bytes_written, head = body - payload_len;
    if (cap < MOAT_WIRE_HEADER_SIZE + head)
        return MOAT_E_TOO_BIG;
    prefix_out p = {out + MOAT_WIRE_HEADER_SIZE, 0, head};
    pb_ostream_t stream = {.callback = write_prefix, .state = &p, .max_size = body};
    if (!encode_body(&stream, &f, &ctx))
        return MOAT_E_INVAL;
    out[0] = (uint8_t)(body >> 24);
    out[1] = (uint8_t)(body >> 16);
    out[2] = (uint8_t)(body >> 8);
    out[3] = (uint8_t)body;
    *written = MOAT_WIRE_HEADER_SIZE + head;
    return MOAT_OK;
}
