/* nanopb codecs for ExecEvent, CommandStatus (both hold an ExitCode, whose
 * string oneof member nanopb cannot give a callback) and the requests libmoat's
 * users build most. */
#include <string.h>

#include "client.h"
#include "moat/v1/exec.pb.h"
#include "moat/v1/files.pb.h"
#include "wire/wire_pb.h"

/* A string field at the stream's position, as a slice of the input (a stream
 * from moat__pb_istream, whose state is the read position). */
static bool read_slice(pb_istream_t *stream, moat_slice *out)
{
    pb_istream_t sub;
    if (!pb_make_string_substream(stream, &sub))
        return false;
    *out = (moat_slice){sub.state, sub.bytes_left};
    return pb_read(&sub, NULL, sub.bytes_left) && pb_close_string_substream(stream, &sub);
}

/* An ExitCode, as moat_exec_event and moat_command_status both hold it. */
typedef struct exit_fields {
    bool *known;
    int32_t *code;
    moat_slice *unknown_reason;
} exit_fields;

/* ExitCode is a oneof holding a string, which nanopb cannot give a callback;
 * it is walked with nanopb's field primitives instead. */
static bool decode_exit_code(pb_istream_t *stream, exit_fields ex)
{
    for (;;) {
        pb_wire_type_t wt;
        uint32_t tag;
        bool eof;
        if (!pb_decode_tag(stream, &wt, &tag, &eof))
            return eof;
        if (tag == moat_v1_ExitCode_code_tag && wt == PB_WT_VARINT) {
            int64_t v;
            if (!pb_decode_svarint(stream, &v) || v < INT32_MIN || v > INT32_MAX)
                return false;
            *ex.known = true;
            *ex.code = (int32_t)v;
            *ex.unknown_reason = (moat_slice){NULL, 0};
        } else if (tag == moat_v1_ExitCode_unknown_reason_tag && wt == PB_WT_STRING) {
            *ex.known = false;
            *ex.code = 0;
            if (!read_slice(stream, ex.unknown_reason))
                return false;
        } else if (tag == moat_v1_ExitCode_code_tag || tag == moat_v1_ExitCode_unknown_reason_tag ||
                   !pb_skip_field(stream, wt)) {
            return false;
        }
    }
}

static bool decode_exit(pb_istream_t *stream, moat_exec_event *ev)
{
    for (;;) {
        pb_wire_type_t wt;
        uint32_t tag;
        bool eof;
        if (!pb_decode_tag(stream, &wt, &tag, &eof))
            return eof;
        if (tag == moat_v1_ExecEvent_Exit_exit_code_tag && wt == PB_WT_STRING) {
            pb_istream_t sub;
            if (!pb_make_string_substream(stream, &sub))
                return false;
            exit_fields ex = {&ev->exit_known, &ev->exit_code, &ev->exit_unknown_reason};
            bool ok = decode_exit_code(&sub, ex);
            if (!pb_close_string_substream(stream, &sub) || !ok)
                return false;
        } else if (tag == moat_v1_ExecEvent_Exit_timed_out_tag && wt == PB_WT_VARINT) {
            if (!pb_decode_bool(stream, &ev->timed_out))
                return false;
        } else if (tag == moat_v1_ExecEvent_Exit_exit_code_tag ||
                   tag == moat_v1_ExecEvent_Exit_timed_out_tag || !pb_skip_field(stream, wt)) {
            return false;
        }
    }
}

/* Points the kind member's strings at slices of the payload. */
static const pb_msgdesc_t *prepare_kind(uint32_t tag, moat_v1_ExecEvent *msg, moat_exec_event *ev,
                                        moat__pb_strs *traceback)
{
    switch (tag) {
    case moat_v1_ExecEvent_init_tag:
        moat__pb_decode_slice(&msg->kind.init.execution_id, &ev->execution_id);
        return moat_v1_ExecEvent_Init_fields;
    case moat_v1_ExecEvent_output_tag:
        moat__pb_decode_slice(&msg->kind.output.data, &ev->data);
        return moat_v1_ExecEvent_Output_fields;
    case moat_v1_ExecEvent_result_tag:
        moat__pb_decode_slice(&msg->kind.result.text, &ev->text);
        return moat_v1_ExecEvent_Result_fields;
    case moat_v1_ExecEvent_error_tag:
        moat__pb_decode_slice(&msg->kind.error.name, &ev->error_name);
        moat__pb_decode_slice(&msg->kind.error.value, &ev->error_value);
        traceback->items = ev->traceback;
        traceback->max = MOAT_EXEC_MAX_TRACEBACK;
        moat__pb_decode_strings(&msg->kind.error.traceback, traceback);
        return moat_v1_ExecEvent_Error_fields;
    case moat_v1_ExecEvent_complete_tag:
        return moat_v1_ExecEvent_Complete_fields;
    default:
        return NULL;
    }
}

/* Like the frame envelope, the event is walked with nanopb's field primitives
 * and only its kind member goes through pb_decode (see frame.c). */
moat_err moat_exec_event_decode(moat_slice payload, moat_exec_event *ev)
{
    memset(ev, 0, offsetof(moat_exec_event, traceback));
    ev->execution_time_ms = 0;
    ev->exit_known = false;
    ev->exit_code = 0;
    ev->exit_unknown_reason = (moat_slice){NULL, 0};
    ev->timed_out = false;
    moat_v1_ExecEvent msg;
    moat__pb_strs traceback = {ev->traceback, 0, MOAT_EXEC_MAX_TRACEBACK, false};
    uint32_t kind = 0;
    pb_istream_t stream = moat__pb_istream(payload);
    for (;;) {
        pb_wire_type_t wt;
        uint32_t tag;
        bool eof;
        if (!pb_decode_tag(&stream, &wt, &tag, &eof)) {
            if (eof)
                break;
            return MOAT_E_PROTO;
        }
        if (tag == moat_v1_ExecEvent_sequence_tag || tag == moat_v1_ExecEvent_timestamp_ms_tag) {
            uint64_t v;
            if (wt != PB_WT_VARINT || !pb_decode_varint(&stream, &v))
                return MOAT_E_PROTO;
            if (tag == moat_v1_ExecEvent_sequence_tag)
                ev->sequence = v;
            else
                ev->timestamp_ms = (int64_t)v;
            continue;
        }
        if (tag < moat_v1_ExecEvent_init_tag || tag > moat_v1_ExecEvent_exit_tag) {
            if (!pb_skip_field(&stream, wt))
                return MOAT_E_PROTO;
            continue;
        }
        if (wt != PB_WT_STRING)
            return MOAT_E_PROTO;
        const pb_msgdesc_t *fields = NULL;
        if (tag != kind) {
            memset(&msg.kind, 0, sizeof msg.kind);
            kind = tag;
        }
        /* Set up on every occurrence: a repeated member merges into the same slices. */
        fields = prepare_kind(tag, &msg, ev, &traceback);
        pb_istream_t sub;
        if (!pb_make_string_substream(&stream, &sub))
            return MOAT_E_PROTO;
        bool ok = fields ? pb_decode_ex(&sub, fields, &msg.kind, PB_DECODE_NOINIT)
                         : decode_exit(&sub, ev);
        if (!pb_close_string_substream(&stream, &sub) || !ok)
            return MOAT_E_PROTO;
    }
    ev->kind = (moat_exec_kind)kind;
    switch (kind) {
    case moat_v1_ExecEvent_output_tag:
        ev->stream = (uint32_t)msg.kind.output.stream;
        break;
    case moat_v1_ExecEvent_error_tag:
        ev->traceback_count = traceback.count;
        ev->traceback_truncated = traceback.overflow;
        break;
    case moat_v1_ExecEvent_complete_tag:
        ev->execution_time_ms = msg.kind.complete.execution_time_ms;
        break;
    case moat_v1_ExecEvent_init_tag:
    case moat_v1_ExecEvent_result_tag:
    case moat_v1_ExecEvent_exit_tag:
        break;
    default:
        ev->kind = MOAT_EXEC_NONE;
        return MOAT_E_UNKNOWN_KIND;
    }
    return MOAT_OK;
}

moat_err moat_exec_event_encode(const moat_exec_event *ev, uint8_t *out, size_t cap, size_t *len)
{
    moat_v1_ExecEvent msg;
    memset(&msg, 0, sizeof msg);
    moat__pb_strs traceback = {(moat_slice *)ev->traceback, ev->traceback_count,
                               MOAT_EXEC_MAX_TRACEBACK, false};
    msg.sequence = ev->sequence;
    msg.timestamp_ms = ev->timestamp_ms;
    msg.which_kind = (pb_size_t)ev->kind;
    switch (ev->kind) {
    case MOAT_EXEC_INIT:
        moat__pb_encode_slice(&msg.kind.init.execution_id, &ev->execution_id);
        break;
    case MOAT_EXEC_OUTPUT:
        msg.kind.output.stream = (moat_v1_OutputStream)ev->stream;
        moat__pb_encode_slice(&msg.kind.output.data, &ev->data);
        break;
    case MOAT_EXEC_RESULT:
        moat__pb_encode_slice(&msg.kind.result.text, &ev->text);
        break;
    case MOAT_EXEC_ERROR:
        if (ev->traceback_count > MOAT_EXEC_MAX_TRACEBACK)
            return MOAT_E_INVAL;
        moat__pb_encode_slice(&msg.kind.error.name, &ev->error_name);
        moat__pb_encode_slice(&msg.kind.error.value, &ev->error_value);
        moat__pb_encode_strings(&msg.kind.error.traceback, &traceback);
        break;
    case MOAT_EXEC_COMPLETE:
        msg.kind.complete.execution_time_ms = ev->execution_time_ms;
        break;
    case MOAT_EXEC_EXIT:
        msg.kind.exit.has_exit_code = true;
        msg.kind.exit.timed_out = ev->timed_out;
        if (ev->exit_known) {
            msg.kind.exit.exit_code.which_value = moat_v1_ExitCode_code_tag;
            msg.kind.exit.exit_code.value.code = ev->exit_code;
        } else {
            msg.kind.exit.exit_code.which_value = moat_v1_ExitCode_unknown_reason_tag;
            moat__pb_encode_slice(&msg.kind.exit.exit_code.value.unknown_reason,
                                  &ev->exit_unknown_reason);
        }
        break;
    case MOAT_EXEC_NONE:
        return MOAT_E_INVAL;
    }
    pb_ostream_t stream = pb_ostream_from_buffer(out, cap);
    if (!pb_encode(&stream, moat_v1_ExecEvent_fields, &msg))
        return MOAT_E_TOO_BIG;
    *len = stream.bytes_written;
    return MOAT_OK;
}

moat_err moat_run_command_req_encode(const moat_run_command_req *req, uint8_t *out, size_t cap,
                                     size_t *len)
{
    moat_v1_RunCommandRequest msg;
    memset(&msg, 0, sizeof msg);
    moat_slice session = moat_slice_str(req->session_id), command = moat_slice_str(req->command),
               cwd = moat_slice_str(req->cwd);
    moat__pb_kvs env = {(moat_kv *)req->env, req->env_count, req->env_count,
                        moat_v1_RunCommandRequest_EnvEntry_fields, false};
    moat__pb_encode_slice(&msg.session_id, &session);
    moat__pb_encode_slice(&msg.command, &command);
    moat__pb_encode_slice(&msg.cwd, &cwd);
    msg.timeout_ms = req->timeout_ms;
    moat__pb_encode_kvs(&msg.env, &env);
    msg.background = req->background;
    pb_ostream_t stream = pb_ostream_from_buffer(out, cap);
    if (!pb_encode(&stream, moat_v1_RunCommandRequest_fields, &msg))
        return MOAT_E_TOO_BIG;
    *len = stream.bytes_written;
    return MOAT_OK;
}

moat_err moat_write_req_encode(const moat_write_req *req, uint8_t *out, size_t cap, size_t *len)
{
    moat_v1_WriteRequest msg = moat_v1_WriteRequest_init_zero;
    moat_slice session = moat_slice_str(req->session_id), path = moat_slice_str(req->path);
    moat__pb_encode_slice(&msg.session_id, &session);
    moat__pb_encode_slice(&msg.path, &path);
    moat__pb_encode_slice(&msg.data, &req->data);
    msg.mode = req->mode;
    msg.offset = req->offset;
    pb_ostream_t stream = pb_ostream_from_buffer(out, cap);
    if (!pb_encode(&stream, moat_v1_WriteRequest_fields, &msg))
        return MOAT_E_TOO_BIG;
    *len = stream.bytes_written;
    return MOAT_OK;
}

moat_err moat__command_status_decode(moat_slice payload, moat_command_status *out)
{
    memset(out, 0, sizeof *out);
    pb_istream_t stream = moat__pb_istream(payload);
    for (;;) {
        pb_wire_type_t wt;
        uint32_t tag;
        bool eof;
        if (!pb_decode_tag(&stream, &wt, &tag, &eof))
            return eof ? MOAT_OK : MOAT_E_PROTO;
        bool string = wt == PB_WT_STRING, varint = wt == PB_WT_VARINT, ok;
        uint64_t v = 0;
        pb_istream_t sub;
        exit_fields ex = {&out->exit_known, &out->exit_code, &out->exit_unknown_reason};
        switch (tag) {
        case moat_v1_CommandStatus_execution_id_tag:
            ok = string && read_slice(&stream, &out->execution_id);
            break;
        case moat_v1_CommandStatus_command_tag:
            ok = string && read_slice(&stream, &out->command);
            break;
        case moat_v1_CommandStatus_error_tag:
            ok = string && read_slice(&stream, &out->error);
            break;
        case moat_v1_CommandStatus_exit_code_tag:
            ok = string && pb_make_string_substream(&stream, &sub) && decode_exit_code(&sub, ex) &&
                 pb_close_string_substream(&stream, &sub);
            out->exited = true;
            break;
        case moat_v1_CommandStatus_running_tag:
            ok = varint && pb_decode_varint(&stream, &v);
            out->running = v != 0;
            break;
        case moat_v1_CommandStatus_started_at_ms_tag:
            ok = varint && pb_decode_varint(&stream, &v);
            out->started_at_ms = (int64_t)v;
            break;
        case moat_v1_CommandStatus_finished_at_ms_tag:
            ok = varint && pb_decode_varint(&stream, &v);
            out->finished_at_ms = (int64_t)v;
            break;
        default:
            ok = pb_skip_field(&stream, wt);
        }
        if (!ok)
            return MOAT_E_PROTO;
    }
}
