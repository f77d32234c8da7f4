/* libmoat's typed calls: each encodes its request with nanopb into the
 * client's request buffer, runs it (unary, or starts the stream) and decodes
 * the answer into moat's own types, strings as slices of the client's
 * response buffer. */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "client.h"
#include "moat/v1/exec.pb.h"
#include "moat/v1/files.pb.h"
#include "moat/v1/health.pb.h"
#include "moat/v1/sandbox.pb.h"
#include "wire/wire_pb.h"

/* Room for the envelope around a request in its frame. */
#define WRITE_FRAME_SLACK 4096u

static moat_err scratch_of(moat_client *c, moat__scratch *buf, moat_status *st)
{
    *buf = moat__client_scratch(c);
    if (buf->request != NULL)
        return MOAT_OK;
    moat_status_set(st, MOAT_CODE_RESOURCE_EXHAUSTED, "no_memory", "out of memory");
    return MOAT_E_NOMEM;
}

static moat_err too_big(const char *method, moat_status *st)
{
    moat_status_set(st, MOAT_CODE_INVALID_ARGUMENT, "request_too_big",
                    "the %s request does not fit in a frame", method);
    return MOAT_E_TOO_BIG;
}

static moat_err encode(moat_client *c, const char *method, const pb_msgdesc_t *fields,
                       const void *msg, moat_slice *out, moat_status *st)
{
    moat__scratch buf;
    moat_err err = scratch_of(c, &buf, st);
    if (err != MOAT_OK)
        return err;
    pb_ostream_t os = pb_ostream_from_buffer(buf.request, buf.cap);
    if (!pb_encode(&os, fields, msg))
        return too_big(method, st);
    *out = (moat_slice){buf.request, os.bytes_written};
    return MOAT_OK;
}

static moat_err decode(moat_slice payload, const pb_msgdesc_t *fields, void *msg, moat_status *st)
{
    pb_istream_t is = moat__pb_istream(payload);
    if (pb_decode_ex(&is, fields, msg, PB_DECODE_NOINIT))
        return MOAT_OK;
    moat_status_set(st, MOAT_CODE_INTERNAL, "bad_response", "cannot decode the answer");
    return MOAT_E_PROTO;
}

/* A unary call: *answer is the response message in the client's buffer. A
 * call that names session (NULL: none) goes to its owner (route.c). */
static moat_err unary(moat_client *c, const char *session, const char *method, uint64_t deadline_ms,
                      const pb_msgdesc_t *fields, const void *msg, moat_slice *answer,
                      moat_status *st)
{
    moat_slice request;
    moat_err err = encode(c, method, fields, msg, &request, st);
    if (err != MOAT_OK)
        return err;
    moat__scratch buf = moat__client_scratch(c);
    answer->data = buf.response;
    return moat__routed_unary(c, session, method, deadline_ms, request, buf.response, buf.cap,
                              &answer->len, st);
}

/* A unary call whose answer is decoded into resp (its callbacks set by the caller). */
static moat_err call(moat_client *c, const char *session, const char *method, uint64_t deadline_ms,
                     const pb_msgdesc_t *req_fields, const void *req,
                     const pb_msgdesc_t *resp_fields, void *resp, moat_status *st)
{
    moat_status scratch;
    if (st == NULL)
        st = &scratch;
    moat_slice answer;
    moat_err err = unary(c, session, method, deadline_ms, req_fields, req, &answer, st);
    return err != MOAT_OK ? err : decode(answer, resp_fields, resp, st);
}

static moat_err stream(moat_client *c, const char *session, const char *method,
                       uint64_t deadline_ms, const pb_msgdesc_t *fields, const void *msg,
                       moat_call **out, moat_status *st)
{
    moat_status scratch;
    if (st == NULL)
        st = &scratch;
    moat_slice request;
    moat_err err = encode(c, method, fields, msg, &request, st);
    return err != MOAT_OK
               ? err
               : moat__routed_start(c, session, method, deadline_ms, request, false, out, st);
}

/* Requests made of session_id (field 1) and one more string (field 2): their
 * nanopb structs differ only in the second member's name, so one struct with
 * the same layout serves them all with their own descriptors. */
typedef struct pair_req {
    pb_callback_t session_id;
    pb_callback_t other;
    moat_slice session, second; /* what the callbacks encode */
} pair_req;

#define PAIR_LAYOUT(type, member)                                                                  \
    _Static_assert(offsetof(type, session_id) == offsetof(pair_req, session_id) &&                 \
                       offsetof(type, member) == offsetof(pair_req, other),                        \
                   #type " is a pair request")
PAIR_LAYOUT(moat_v1_CreateShellRequest, cwd);
PAIR_LAYOUT(moat_v1_DeleteShellRequest, shell_id);
PAIR_LAYOUT(moat_v1_InterruptRequest, execution_id);
PAIR_LAYOUT(moat_v1_GetCommandStatusRequest, execution_id);
PAIR_LAYOUT(moat_v1_StatRequest, path);

static void pair_init(pair_req *r, const char *session_id, const char *other)
{
    r->session = moat_slice_str(session_id);
    r->second = moat_slice_str(other);
    moat__pb_encode_slice(&r->session_id, &r->session);
    moat__pb_encode_slice(&r->other, &r->second);
}

/* A call whose answer is an empty message (DeleteShellResponse, InterruptResponse,
 * FilesEmpty): any of them decodes into a FilesEmpty, which has no field either. */
static moat_err empty_call(moat_client *c, const char *session, const char *method,
                           uint64_t deadline_ms, const pb_msgdesc_t *req_fields, const void *req,
                           const pb_msgdesc_t *empty_fields, moat_status *st)
{
    moat_v1_FilesEmpty resp = moat_v1_FilesEmpty_init_zero;
    return call(c, session, method, deadline_ms, req_fields, req, empty_fields, &resp, st);
}

/* --- Sandboxes --- */

const char *moat_session_status_name(moat_session_status status)
{
    switch (status) {
    case MOAT_SESSION_RUNNING:
        return "RUNNING";
    case MOAT_SESSION_STOPPED:
        return "STOPPED";
    case MOAT_SESSION_EXPIRED:
        return "EXPIRED";
    case MOAT_SESSION_GONE:
        return "GONE";
    case MOAT_SESSION_STATUS_UNSPECIFIED:
        break;
    }
    return "UNSPECIFIED";
}

/* A SandboxSession being decoded into a moat_session. */
typedef struct session_msg {
    moat_v1_SandboxSession msg;
    moat__pb_kvs labels;
    moat_slice owner_address; /* kept by the client, not given to the caller */
} session_msg;

static void session_prepare(session_msg *m, moat_session *out)
{
    memset(m, 0, sizeof *m);
    memset(out, 0, offsetof(moat_session, labels));
    moat__pb_decode_slice(&m->msg.session_id, &out->session_id);
    moat__pb_decode_slice(&m->msg.chat_id, &out->chat_id);
    moat__pb_decode_slice(&m->msg.container_id, &out->container_id);
    moat__pb_decode_slice(&m->msg.image, &out->image);
    m->owner_address = (moat_slice){NULL, 0};
    moat__pb_decode_slice(&m->msg.owner_address, &m->owner_address);
    m->labels.items = out->labels;
    m->labels.max = MOAT_SESSION_MAX_LABELS;
    m->labels.entry_fields = moat_v1_SandboxSession_LabelsEntry_fields;
    moat__pb_decode_kvs(&m->msg.labels, &m->labels);
}

static void session_finish(const session_msg *m, moat_session *out)
{
    out->status = (moat_session_status)m->msg.status;
    out->created_at_ms = m->msg.created_at_ms;
    out->expires_at_ms = m->msg.expires_at_ms;
    out->label_count = m->labels.count;
    out->labels_truncated = m->labels.overflow;
}

/* A call answered by a SandboxSession; one that names its owner (in a
 * cluster, a session another node holds) teaches the client where it is. */
static moat_err session_call(moat_client *c, const char *session, const char *method,
                             uint64_t deadline_ms, const pb_msgdesc_t *fields, const void *req,
                             moat_session *out, moat_status *st)
{
    session_msg m;
    session_prepare(&m, out);
    moat_err err = call(c, session, method, deadline_ms, fields, req, moat_v1_SandboxSession_fields,
                        &m.msg, st);
    if (err == MOAT_OK)
        session_finish(&m, out);
    if (err == MOAT_OK && m.owner_address.len > 0)
        moat__route_learn(c, out->session_id, m.owner_address);
    return err;
}

moat_err moat_session_create(moat_client *c, const moat_session_create_req *req,
                             uint64_t deadline_ms, moat_session *out, moat_status *st)
{
    moat_v1_CreateSessionRequest r = moat_v1_CreateSessionRequest_init_zero;
    moat_slice chat = moat_slice_str(req->chat_id), image = moat_slice_str(req->image);
    moat__pb_encode_slice(&r.chat_id, &chat);
    moat__pb_encode_slice(&r.image, &image);
    r.ttl_seconds = req->ttl_seconds;
    r.force_new = req->force_new;
    r.has_resources = req->memory_bytes || req->cpu_millis || req->pids_limit;
    r.resources.memory_bytes = req->memory_bytes;
    r.resources.cpu_millis = req->cpu_millis;
    r.resources.pids_limit = req->pids_limit;
    return session_call(c, NULL, "/moat.v1.Sandboxes/CreateSession", deadline_ms,
                        moat_v1_CreateSessionRequest_fields, &r, out, st);
}

moat_err moat_session_get(moat_client *c, const char *session_id, uint64_t deadline_ms,
                          moat_session *out, moat_status *st)
{
    moat_v1_GetSessionRequest r = moat_v1_GetSessionRequest_init_zero;
    moat_slice session = moat_slice_str(session_id);
    moat__pb_encode_slice(&r.session_id, &session);
    return session_call(c, session_id, "/moat.v1.Sandboxes/GetSession", deadline_ms,
                        moat_v1_GetSessionRequest_fields, &r, out, st);
}

moat_err moat_session_renew(moat_client *c, const char *session_id, uint32_t ttl_seconds,
                            uint64_t deadline_ms, moat_session *out, moat_status *st)
{
    moat_v1_RenewSessionRequest r = moat_v1_RenewSessionRequest_init_zero;
    moat_slice session = moat_slice_str(session_id);
    moat__pb_encode_slice(&r.session_id, &session);
    r.ttl_seconds = ttl_seconds;
    return session_call(c, session_id, "/moat.v1.Sandboxes/RenewSession", deadline_ms,
                        moat_v1_RenewSessionRequest_fields, &r, out, st);
}

moat_err moat_session_stop(moat_client *c, const char *session_id, uint64_t deadline_ms,
                           bool *stopped, moat_status *st)
{
    moat_v1_StopSessionRequest r = moat_v1_StopSessionRequest_init_zero;
    moat_slice session = moat_slice_str(session_id);
    moat__pb_encode_slice(&r.session_id, &session);
    moat_v1_StopSessionResponse resp = moat_v1_StopSessionResponse_init_zero;
    moat_err err =
        call(c, session_id, "/moat.v1.Sandboxes/StopSession", deadline_ms,
             moat_v1_StopSessionRequest_fields, &r, moat_v1_StopSessionResponse_fields, &resp, st);
    if (err == MOAT_OK && stopped)
        *stopped = resp.stopped;
    return err;
}

/* A listing: the caller's callback (one of the two) and arg; stopped once it said so. */
typedef struct listing {
    moat_session_fn session_fn;
    moat_file_fn file_fn;
    void *arg;
    bool stopped;
} listing;

/* go_on is the caller's callback's answer; false ends the decode, and the
 * listing still succeeds. */
static bool listing_go_on(listing *l, bool go_on)
{
    if (!go_on)
        l->stopped = true;
    return go_on;
}

static moat_err listing_end(const listing *l, moat_err err, moat_status *st)
{
    if (err == MOAT_E_PROTO && l->stopped) {
        moat_status_clear(st);
        return MOAT_OK;
    }
    return err;
}

static bool session_entry_cb(pb_istream_t *stream, const pb_field_t *field, void **arg)
{
    (void)field;
    session_msg m;
    moat_session s;
    session_prepare(&m, &s);
    if (!pb_decode_ex(stream, moat_v1_SandboxSession_fields, &m.msg, PB_DECODE_NOINIT))
        return false;
    session_finish(&m, &s);
    listing *l = *arg;
    return listing_go_on(l, l->session_fn(&s, l->arg));
}

moat_err moat_session_list(moat_client *c, const char *chat_id, uint64_t deadline_ms,
                           moat_session_fn fn, void *arg, moat_status *st)
{
    moat_status scratch;
    if (st == NULL)
        st = &scratch;
    moat_v1_ListSessionsRequest r = moat_v1_ListSessionsRequest_init_zero;
    moat_slice chat = moat_slice_str(chat_id);
    moat__pb_encode_slice(&r.chat_id, &chat);
    listing l = {.session_fn = fn, .arg = arg};
    moat_v1_ListSessionsResponse resp = moat_v1_ListSessionsResponse_init_zero;
    resp.sessions.funcs.decode = session_entry_cb;
    resp.sessions.arg = &l;
    moat_err err = call(c, NULL, "/moat.v1.Sandboxes/ListSessions", deadline_ms,
                        moat_v1_ListSessionsRequest_fields, &r, moat_v1_ListSessionsResponse_fields,
                        &resp, st);
    return listing_end(&l, err, st);
}

/* --- Exec --- */

moat_err moat_exec_run(moat_client *c, const moat_run_command_req *req, uint64_t deadline_ms,
                       moat_call **out, moat_status *st)
{
    moat_status scratch;
    if (st == NULL)
        st = &scratch;
    const char *method = "/moat.v1.Exec/RunCommand";
    moat__scratch buf;
    size_t len;
    moat_err err = scratch_of(c, &buf, st);
    if (err != MOAT_OK)
        return err;
    if (moat_run_command_req_encode(req, buf.request, buf.cap, &len) != MOAT_OK)
        return too_big(method, st);
    return moat__routed_start(c, req->session_id, method, deadline_ms,
                              (moat_slice){buf.request, len}, false, out, st);
}

moat_err moat_exec_run_in_shell(moat_client *c, const moat_run_in_shell_req *req,
                                uint64_t deadline_ms, moat_call **out, moat_status *st)
{
    moat_v1_RunInShellRequest r = moat_v1_RunInShellRequest_init_zero;
    moat_slice session = moat_slice_str(req->session_id), shell = moat_slice_str(req->shell_id),
               command = moat_slice_str(req->command), cwd = moat_slice_str(req->cwd);
    moat__pb_encode_slice(&r.session_id, &session);
    moat__pb_encode_slice(&r.shell_id, &shell);
    moat__pb_encode_slice(&r.command, &command);
    moat__pb_encode_slice(&r.cwd, &cwd);
    r.timeout_ms = req->timeout_ms;
    return stream(c, req->session_id, "/moat.v1.Exec/RunInShell", deadline_ms,
                  moat_v1_RunInShellRequest_fields, &r, out, st);
}

moat_err moat_exec_attach(moat_client *c, const char *session_id, const char *execution_id,
                          uint64_t after_sequence, uint64_t deadline_ms, moat_call **out,
                          moat_status *st)
{
    moat_v1_AttachRequest r = moat_v1_AttachRequest_init_zero;
    moat_slice session = moat_slice_str(session_id), execution = moat_slice_str(execution_id);
    moat__pb_encode_slice(&r.session_id, &session);
    moat__pb_encode_slice(&r.execution_id, &execution);
    r.after_sequence = after_sequence;
    return stream(c, session_id, "/moat.v1.Exec/Attach", deadline_ms, moat_v1_AttachRequest_fields,
                  &r, out, st);
}

moat_err moat_exec_next(moat_call *call, int timeout_ms, moat_exec_event *ev)
{
    moat_slice msg;
    moat_err err = moat_call_recv(call, timeout_ms, &msg);
    return err != MOAT_OK ? err : moat_exec_event_decode(msg, ev);
}

/* A terminal's rows and columns are 16-bit (struct winsize), and 0 is no size. */
#define TERMINAL_SIZE_MAX 65535u

static bool terminal_size_ok(uint32_t rows, uint32_t cols)
{
    return rows >= 1 && rows <= TERMINAL_SIZE_MAX && cols >= 1 && cols <= TERMINAL_SIZE_MAX;
}

moat_err moat_exec_interactive(moat_client *c, const moat_interactive_req *req,
                               uint64_t deadline_ms, moat_call **out, moat_status *st)
{
    moat_status scratch;
    if (st == NULL)
        st = &scratch;
    bool sized = req->rows != 0 || req->cols != 0;
    if (sized && !terminal_size_ok(req->rows, req->cols)) {
        moat_status_set(st, MOAT_CODE_INVALID_ARGUMENT, "bad_terminal_size",
                        "a terminal is 1 to %u rows and columns, not %u x %u", TERMINAL_SIZE_MAX,
                        req->rows, req->cols);
        return MOAT_E_INVAL;
    }
    moat_v1_InteractiveRequest r = moat_v1_InteractiveRequest_init_zero;
    r.which_input = moat_v1_InteractiveRequest_start_tag;
    moat_v1_InteractiveStart *start = &r.input.start;
    moat_slice session = moat_slice_str(req->session_id), command = moat_slice_str(req->command),
               cwd = moat_slice_str(req->cwd), term = moat_slice_str(req->term),
               attach = moat_slice_str(req->attach_id);
    moat__pb_encode_slice(&start->session_id, &session);
    moat__pb_encode_slice(&start->command, &command);
    moat__pb_encode_slice(&start->cwd, &cwd);
    moat__pb_encode_slice(&start->term, &term);
    moat__pb_encode_slice(&start->attach_id, &attach);
    start->tty = req->tty;
    start->has_size = sized;
    start->size.rows = req->rows;
    start->size.cols = req->cols;
    start->after_offset = req->after_offset;
    return stream(c, req->session_id, "/moat.v1.Exec/Interactive", deadline_ms,
                  moat_v1_InteractiveRequest_fields, &r, out, st);
}

/* A stdin request's envelope: the field's tag and a length of up to five bytes. */
#define STDIN_ENVELOPE 6u

size_t moat_exec_stdin_max(const moat_client *c)
{
    const moat_client_limits *l = moat_client_get_limits(c);
    size_t room = l->max_frame_size > WRITE_FRAME_SLACK ? l->max_frame_size - WRITE_FRAME_SLACK : 0;
    if (room > l->initial_window)
        room = l->initial_window;
    return room > STDIN_ENVELOPE ? room - STDIN_ENVELOPE : 0;
}

/* Encodes one input request into the client's request buffer and sends it. */
static moat_err send_input(moat_call *call, const moat_v1_InteractiveRequest *r, int timeout_ms)
{
    moat__scratch buf = moat__client_scratch(moat__call_client(call));
    if (buf.request == NULL)
        return MOAT_E_NOMEM;
    pb_ostream_t os = pb_ostream_from_buffer(buf.request, buf.cap);
    if (!pb_encode(&os, moat_v1_InteractiveRequest_fields, r))
        return MOAT_E_TOO_BIG;
    return moat_call_send(call, (moat_slice){buf.request, os.bytes_written}, timeout_ms);
}

/* A stdin request's tag and length for len bytes into head[0..16); false if they cannot be. */
static bool stdin_envelope(size_t len, uint8_t *head, size_t *n)
{
    pb_ostream_t os = pb_ostream_from_buffer(head, 16);
    if (!pb_encode_tag(&os, PB_WT_STRING, moat_v1_InteractiveRequest_stdin_tag) ||
        !pb_encode_varint(&os, len))
        return false;
    *n = os.bytes_written;
    return true;
}

moat_err moat_exec_stdin(moat_call *call, moat_slice data, int timeout_ms)
{
    if (data.len > moat_exec_stdin_max(moat__call_client(call)))
        return MOAT_E_TOO_BIG;
    /* An InteractiveRequest holding only stdin is its field's tag and length, then the bytes:
     * those go to the socket from the caller's buffer, not through two encodings. */
    uint8_t head[16];
    size_t hn;
    if (!stdin_envelope(data.len, head, &hn))
        return MOAT_E_TOO_BIG;
    return moat__call_send_parts(call, (moat_slice){head, hn}, data, timeout_ms);
}

moat_err moat_exec_stdin_from_fd(moat_call *call, int fd, size_t max, size_t *moved, int timeout_ms)
{
    *moved = 0;
    moat_client *c = moat__call_client(call);
    size_t most = moat_exec_stdin_max(c);
    if (max > most)
        max = most;
    if (max == 0)
        return MOAT_E_INVAL;
    uint8_t head[16];
    size_t hn;
    int read_end = -1;
    int pipe_w = moat__call_records(call) ? -1 : moat__client_splice_pipe(c, fd, &read_end);
    if (pipe_w >= 0) {
        /* Into our pipe first, which holds exactly what the message then carries. */
        ssize_t n = splice(fd, NULL, pipe_w, NULL, max, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (n == 0)
            return MOAT_OK;
        if (n < 0 && errno == EAGAIN)
            return MOAT_E_AGAIN;
        if (n > 0) {
            if (!stdin_envelope((size_t)n, head, &hn))
                return MOAT_E_TOO_BIG;
            *moved = (size_t)n;
            return moat__call_send_spliced(call, (moat_slice){head, hn}, read_end, (size_t)n,
                                           timeout_ms);
        }
        /* EINVAL and the like: fd is not something splice reads (a terminal); read it */
        moat__client_splice_refused(c, fd);
    }
    moat__scratch buf = moat__client_scratch(c);
    if (buf.request == NULL)
        return MOAT_E_NOMEM;
    if (max > buf.cap)
        max = buf.cap;
    ssize_t n = read(fd, buf.request, max);
    if (n < 0)
        return errno == EAGAIN || errno == EINTR ? MOAT_E_AGAIN : MOAT_E_IO;
    if (n == 0)
        return MOAT_OK;
    *moved = (size_t)n;
    return moat_exec_stdin(call, (moat_slice){buf.request, (size_t)n}, timeout_ms);
}

moat_err moat_exec_close_stdin(moat_call *call, int timeout_ms)
{
    moat_v1_InteractiveRequest r = moat_v1_InteractiveRequest_init_zero;
    r.which_input = moat_v1_InteractiveRequest_close_stdin_tag;
    r.input.close_stdin = true;
    return send_input(call, &r, timeout_ms);
}

moat_err moat_exec_resize(moat_call *call, uint32_t rows, uint32_t cols, int timeout_ms)
{
    if (!terminal_size_ok(rows, cols))
        return MOAT_E_INVAL;
    moat_v1_InteractiveRequest r = moat_v1_InteractiveRequest_init_zero;
    r.which_input = moat_v1_InteractiveRequest_resize_tag;
    r.input.resize.rows = rows;
    r.input.resize.cols = cols;
    return send_input(call, &r, timeout_ms);
}

moat_err moat_exec_signal(moat_call *call, const char *name, int timeout_ms)
{
    moat_v1_InteractiveRequest r = moat_v1_InteractiveRequest_init_zero;
    r.which_input = moat_v1_InteractiveRequest_signal_tag;
    moat_slice signal = moat_slice_str(name);
    moat__pb_encode_slice(&r.input.signal, &signal);
    return send_input(call, &r, timeout_ms);
}

moat_err moat_shell_create(moat_client *c, const char *session_id, const char *cwd,
                           uint64_t deadline_ms, moat_slice *shell_id, moat_status *st)
{
    pair_req r;
    pair_init(&r, session_id, cwd);
    moat_v1_CreateShellResponse resp = moat_v1_CreateShellResponse_init_zero;
    moat__pb_decode_slice(&resp.shell_id, shell_id);
    return call(c, session_id, "/moat.v1.Exec/CreateShell", deadline_ms,
                moat_v1_CreateShellRequest_fields, &r, moat_v1_CreateShellResponse_fields, &resp,
                st);
}

moat_err moat_shell_delete(moat_client *c, const char *session_id, const char *shell_id,
                           uint64_t deadline_ms, moat_status *st)
{
    pair_req r;
    pair_init(&r, session_id, shell_id);
    return empty_call(c, session_id, "/moat.v1.Exec/DeleteShell", deadline_ms,
                      moat_v1_DeleteShellRequest_fields, &r, moat_v1_DeleteShellResponse_fields,
                      st);
}

moat_err moat_exec_interrupt(moat_client *c, const char *session_id, const char *execution_id,
                             uint64_t deadline_ms, moat_status *st)
{
    pair_req r;
    pair_init(&r, session_id, execution_id);
    return empty_call(c, session_id, "/moat.v1.Exec/Interrupt", deadline_ms,
                      moat_v1_InterruptRequest_fields, &r, moat_v1_InterruptResponse_fields, st);
}

moat_err moat_exec_status(moat_client *c, const char *session_id, const char *execution_id,
                          uint64_t deadline_ms, moat_command_status *out, moat_status *st)
{
    moat_status scratch;
    if (st == NULL)
        st = &scratch;
    pair_req r;
    pair_init(&r, session_id, execution_id);
    moat_slice answer;
    moat_err err = unary(c, session_id, "/moat.v1.Exec/GetCommandStatus", deadline_ms,
                         moat_v1_GetCommandStatusRequest_fields, &r, &answer, st);
    if (err == MOAT_OK && moat__command_status_decode(answer, out) != MOAT_OK) {
        moat_status_set(st, MOAT_CODE_INTERNAL, "bad_response", "cannot decode CommandStatus");
        err = MOAT_E_PROTO;
    }
    return err;
}

moat_err moat_exec_logs(moat_client *c, const char *session_id, const char *execution_id,
                        uint64_t cursor, uint64_t deadline_ms, moat_command_logs *out,
                        moat_status *st)
{
    moat_v1_GetCommandLogsRequest r = moat_v1_GetCommandLogsRequest_init_zero;
    moat_slice session = moat_slice_str(session_id), execution = moat_slice_str(execution_id);
    moat__pb_encode_slice(&r.session_id, &session);
    moat__pb_encode_slice(&r.execution_id, &execution);
    r.cursor = cursor;
    moat_v1_CommandLogs resp = moat_v1_CommandLogs_init_zero;
    moat__pb_decode_slice(&resp.data, &out->data);
    moat_err err =
        call(c, session_id, "/moat.v1.Exec/GetCommandLogs", deadline_ms,
             moat_v1_GetCommandLogsRequest_fields, &r, moat_v1_CommandLogs_fields, &resp, st);
    out->next_cursor = resp.next_cursor;
    return err;
}

/* --- Files --- */

static void file_info_prepare(moat_v1_FileInfo *msg, moat_file_info *out)
{
    memset(msg, 0, sizeof *msg);
    memset(out, 0, sizeof *out);
    moat__pb_decode_slice(&msg->path, &out->path);
    moat__pb_decode_slice(&msg->owner, &out->owner);
    moat__pb_decode_slice(&msg->group, &out->group);
}

static void file_info_finish(const moat_v1_FileInfo *msg, moat_file_info *out)
{
    out->type = (moat_file_type)msg->type;
    out->size = msg->size;
    out->mode = msg->mode;
    out->modified_at_ms = msg->modified_at_ms;
}

moat_err moat_file_stat(moat_client *c, const char *session_id, const char *path,
                        uint64_t deadline_ms, moat_file_info *out, moat_status *st)
{
    pair_req r;
    pair_init(&r, session_id, path);
    moat_v1_FileInfo resp;
    file_info_prepare(&resp, out);
    moat_err err = call(c, session_id, "/moat.v1.Files/Stat", deadline_ms,
                        moat_v1_StatRequest_fields, &r, moat_v1_FileInfo_fields, &resp, st);
    file_info_finish(&resp, out);
    return err;
}

static bool file_entry_cb(pb_istream_t *stream, const pb_field_t *field, void **arg)
{
    (void)field;
    moat_v1_FileInfo msg;
    moat_file_info entry;
    file_info_prepare(&msg, &entry);
    if (!pb_decode_ex(stream, moat_v1_FileInfo_fields, &msg, PB_DECODE_NOINIT))
        return false;
    file_info_finish(&msg, &entry);
    listing *l = *arg;
    return listing_go_on(l, l->file_fn(&entry, l->arg));
}

moat_err moat_file_list(moat_client *c, const char *session_id, const char *path, uint32_t depth,
                        uint64_t deadline_ms, moat_file_fn fn, void *arg, moat_status *st)
{
    moat_status scratch;
    if (st == NULL)
        st = &scratch;
    moat_v1_ListRequest r = moat_v1_ListRequest_init_zero;
    moat_slice session = moat_slice_str(session_id), dir = moat_slice_str(path);
    moat__pb_encode_slice(&r.session_id, &session);
    moat__pb_encode_slice(&r.path, &dir);
    r.depth = depth;
    listing l = {.file_fn = fn, .arg = arg};
    moat_v1_ListResponse resp = moat_v1_ListResponse_init_zero;
    resp.entries.funcs.decode = file_entry_cb;
    resp.entries.arg = &l;
    moat_err err = call(c, session_id, "/moat.v1.Files/List", deadline_ms,
                        moat_v1_ListRequest_fields, &r, moat_v1_ListResponse_fields, &resp, st);
    return listing_end(&l, err, st);
}

moat_err moat_file_read(moat_client *c, const char *session_id, const char *path, uint64_t offset,
                        uint64_t length, uint64_t deadline_ms, moat_call **out, moat_status *st)
{
    moat_v1_ReadRequest r = moat_v1_ReadRequest_init_zero;
    moat_slice session = moat_slice_str(session_id), file = moat_slice_str(path);
    moat__pb_encode_slice(&r.session_id, &session);
    moat__pb_encode_slice(&r.path, &file);
    r.offset = offset;
    r.length = length;
    return stream(c, session_id, "/moat.v1.Files/Read", deadline_ms, moat_v1_ReadRequest_fields, &r,
                  out, st);
}

moat_err moat_file_next(moat_call *call, int timeout_ms, moat_file_chunk *chunk)
{
    moat_slice msg;
    moat_err err = moat_call_recv(call, timeout_ms, &msg);
    if (err != MOAT_OK)
        return err;
    moat_v1_FileChunk m = moat_v1_FileChunk_init_zero;
    moat__pb_decode_slice(&m.data, &chunk->data);
    pb_istream_t is = moat__pb_istream(msg);
    if (!pb_decode_ex(&is, moat_v1_FileChunk_fields, &m, PB_DECODE_NOINIT))
        return MOAT_E_PROTO;
    chunk->offset = m.offset;
    return MOAT_OK;
}

/* Tags and varints of a WriteRequest besides its strings' bytes: five tags, three
 * length prefixes, mode and offset at their longest. */
#define WRITE_FIELDS_MAX 40u

size_t moat_file_write_max(const moat_client *c, const char *session_id, const char *path)
{
    const moat_client_limits *l = moat_client_get_limits(c);
    size_t room = l->max_frame_size > WRITE_FRAME_SLACK ? l->max_frame_size - WRITE_FRAME_SLACK : 0;
    if (room > l->initial_window)
        room = l->initial_window;
    size_t fixed =
        (session_id ? strlen(session_id) : 0) + (path ? strlen(path) : 0) + WRITE_FIELDS_MAX;
    return room > fixed ? room - fixed : 0;
}

moat_err moat_file_write(moat_client *c, const moat_write_req *req, uint64_t deadline_ms,
                         uint64_t *written, moat_status *st)
{
    moat_status scratch;
    if (st == NULL)
        st = &scratch;
    const char *method = "/moat.v1.Files/Write";
    moat__scratch buf;
    size_t len, n;
    moat_err err = scratch_of(c, &buf, st);
    if (err != MOAT_OK)
        return err;
    if (moat_write_req_encode(req, buf.request, buf.cap, &len) != MOAT_OK)
        return too_big(method, st);
    err = moat__routed_unary(c, req->session_id, method, deadline_ms,
                             (moat_slice){buf.request, len}, buf.response, buf.cap, &n, st);
    moat_v1_WriteResponse resp = moat_v1_WriteResponse_init_zero;
    if (err == MOAT_OK)
        err = decode((moat_slice){buf.response, n}, moat_v1_WriteResponse_fields, &resp, st);
    if (err == MOAT_OK && written)
        *written = resp.written;
    return err;
}

moat_err moat_file_remove(moat_client *c, const char *session_id, const char *path, bool recursive,
                          uint64_t deadline_ms, moat_status *st)
{
    moat_v1_RemoveRequest r = moat_v1_RemoveRequest_init_zero;
    moat_slice session = moat_slice_str(session_id), file = moat_slice_str(path);
    moat__pb_encode_slice(&r.session_id, &session);
    moat__pb_encode_slice(&r.path, &file);
    r.recursive = recursive;
    return empty_call(c, session_id, "/moat.v1.Files/Remove", deadline_ms,
                      moat_v1_RemoveRequest_fields, &r, moat_v1_FilesEmpty_fields, st);
}

moat_err moat_file_move(moat_client *c, const char *session_id, const char *src, const char *dest,
                        uint64_t deadline_ms, moat_status *st)
{
    moat_v1_MoveRequest r = moat_v1_MoveRequest_init_zero;
    moat_slice session = moat_slice_str(session_id), from = moat_slice_str(src),
               to = moat_slice_str(dest);
    moat__pb_encode_slice(&r.session_id, &session);
    moat__pb_encode_slice(&r.src, &from);
    moat__pb_encode_slice(&r.dest, &to);
    return empty_call(c, session_id, "/moat.v1.Files/Move", deadline_ms, moat_v1_MoveRequest_fields,
                      &r, moat_v1_FilesEmpty_fields, st);
}

moat_err moat_file_mkdir(moat_client *c, const char *session_id, const char *path, uint32_t mode,
                         uint64_t deadline_ms, moat_status *st)
{
    moat_v1_MkdirRequest r = moat_v1_MkdirRequest_init_zero;
    moat_slice session = moat_slice_str(session_id), dir = moat_slice_str(path);
    moat__pb_encode_slice(&r.session_id, &session);
    moat__pb_encode_slice(&r.path, &dir);
    r.mode = mode;
    return empty_call(c, session_id, "/moat.v1.Files/Mkdir", deadline_ms,
                      moat_v1_MkdirRequest_fields, &r, moat_v1_FilesEmpty_fields, st);
}

moat_err moat_file_chmod(moat_client *c, const moat_chmod_req *req, uint64_t deadline_ms,
                         moat_status *st)
{
    moat_v1_ChmodRequest r = moat_v1_ChmodRequest_init_zero;
    moat_slice session = moat_slice_str(req->session_id), file = moat_slice_str(req->path),
               owner = moat_slice_str(req->owner), group = moat_slice_str(req->group);
    moat__pb_encode_slice(&r.session_id, &session);
    moat__pb_encode_slice(&r.path, &file);
    moat__pb_encode_slice(&r.owner, &owner);
    moat__pb_encode_slice(&r.group, &group);
    r.mode = req->mode;
    return empty_call(c, req->session_id, "/moat.v1.Files/Chmod", deadline_ms,
                      moat_v1_ChmodRequest_fields, &r, moat_v1_FilesEmpty_fields, st);
}

/* --- Health --- */

moat_err moat_health_check(moat_client *c, uint64_t deadline_ms, moat_health *out, moat_status *st)
{
    moat_v1_HealthCheckRequest r = moat_v1_HealthCheckRequest_init_zero;
    moat_v1_HealthCheckResponse resp = moat_v1_HealthCheckResponse_init_zero;
    moat__pb_decode_slice(&resp.server_version, &out->server_version);
    moat_err err =
        call(c, NULL, "/moat.v1.Health/Check", deadline_ms, moat_v1_HealthCheckRequest_fields, &r,
             moat_v1_HealthCheckResponse_fields, &resp, st);
    out->status = (moat_serving_status)resp.status;
    out->docker_reachable = resp.docker_reachable;
    out->live_sessions = resp.live_sessions;
    out->pool_size = resp.pool_size;
    out->pool_ready = resp.pool_ready;
    out->pool_failing = resp.pool_failing;
    return err;
}
