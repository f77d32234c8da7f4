#include "rpc/rpc.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "grpc/health/v1/health.pb-c.h"
#include "moat/v1/exec.pb-c.h"
#include "moat/v1/files.pb-c.h"
#include "moat/v1/health.pb-c.h"
#include "moat/v1/sandbox.pb-c.h"

/* What methods.h gives for each method; the rest comes from its service descriptor. */
typedef struct method_line {
    const ProtobufCServiceDescriptor *service;
    const char *name;
    bool server_streaming, client_streaming;
} method_line;

/* gRPC's standard health service, under the name methods.h's column pastes together. */
#define moat__v1__grpc_health__descriptor grpc__health__v1__health__descriptor

/* methods.h's shapes: which sides stream. */
#define SHAPE_UNARY         false, false
#define SHAPE_SERVER_STREAM true, false
#define SHAPE_BIDI_STREAM   true, true
#define METHOD_LINE(id, service, name, shape, handler)                                             \
    [MOAT_RPC_##id] = {&moat__v1__##service##__descriptor, name, SHAPE_##shape},
static const method_line method_lines[MOAT_RPC_METHOD_COUNT] = {MOAT_RPC_METHODS(METHOD_LINE)};
#undef METHOD_LINE

/* "/moat.v1.Files/Chmod": package, service and method names are short. */
#define FULL_NAME_MAX 96

static moat_rpc_method methods[MOAT_RPC_METHOD_COUNT];
static char full_names[MOAT_RPC_METHOD_COUNT][FULL_NAME_MAX];
static pthread_once_t methods_once = PTHREAD_ONCE_INIT;

static void methods_fill(void)
{
    for (size_t i = 0; i < MOAT_RPC_METHOD_COUNT; i++) {
        const method_line *l = &method_lines[i];
        const ProtobufCMethodDescriptor *d =
            protobuf_c_service_descriptor_get_method_by_name(l->service, l->name);
        int n = d != NULL
                    ? snprintf(full_names[i], FULL_NAME_MAX, "/%s/%s", l->service->name, d->name)
                    : -1;
        if (n < 0 || n >= FULL_NAME_MAX) {
            /* methods.h names a method the schema does not have: a build that cannot serve. */
            fprintf(stderr, "moat rpc: no method %s in service %s\n", l->name, l->service->name);
            abort();
        }
        methods[i] = (moat_rpc_method){(moat_rpc_method_id)i,
                                       full_names[i],
                                       l->service,
                                       (unsigned)(d - l->service->methods),
                                       d->input,
                                       d->output,
                                       l->server_streaming,
                                       l->client_streaming};
    }
}

const moat_rpc_method *moat_rpc_method_lookup(const char *name, size_t len)
{
    if (name == NULL)
        return NULL;
    pthread_once(&methods_once, methods_fill);
    for (size_t i = 0; i < MOAT_RPC_METHOD_COUNT; i++) {
        const char *n = methods[i].name;
        if (strlen(n) == len && memcmp(n, name, len) == 0)
            return &methods[i];
    }
    return NULL;
}

const moat_rpc_method *moat_rpc_method_get(moat_rpc_method_id id)
{
    if ((int)id < 0 || id >= MOAT_RPC_METHOD_COUNT)
        return NULL;
    pthread_once(&methods_once, methods_fill);
    return &methods[id];
}

typedef struct held_input {
    struct held_input *next;
    ProtobufCMessage *msg;
    size_t len;
} held_input;

static void held_drop(moat_rpc_call *call);

struct moat_rpc_call {
    const moat_rpc_method *method;
    uint32_t stream_id;
    unsigned refs;
    moat_rpc_state state;
    uint64_t deadline_at;
    uint64_t sent;
    const moat_rpc_sink *sink;
    void *sink_user;
    ProtobufCMessage *request;
    /* Input that came before the handler set its hook, oldest first. */
    struct held_input *held, *held_tail;
    moat_rpc_input_fn input_fn;
    void *input_arg;
    moat_rpc_cancel_fn cancel_fn;
    void *cancel_arg;
    void *data;
    bool cancelling;
};

moat_rpc_call *moat_rpc_call_new(const moat_rpc_method *method, uint32_t stream_id,
                                 uint64_t deadline_ms, uint64_t now_ms, const moat_rpc_sink *sink,
                                 void *sink_user)
{
    if (method == NULL || sink == NULL)
        return NULL;
    moat_rpc_call *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->method = method;
    c->stream_id = stream_id;
    c->refs = 1;
    c->state = MOAT_RPC_AWAIT_REQUEST;
    /* A deadline so far away that it would overflow is no deadline at all. */
    c->deadline_at =
        (deadline_ms != 0 && deadline_ms < UINT64_MAX - now_ms) ? now_ms + deadline_ms : 0;
    c->sink = sink;
    c->sink_user = sink_user;
    return c;
}

void moat_rpc_call_ref(moat_rpc_call *call)
{
    call->refs++;
}

void moat_rpc_call_unref(moat_rpc_call *call)
{
    if (call == NULL)
        return;
    if (call->refs > 1) {
        call->refs--;
        return;
    }
    if (call->state != MOAT_RPC_ENDED)
        moat_rpc_call_cancel(call, MOAT_CODE_CANCELLED, "call abandoned");
    if (call->request != NULL)
        protobuf_c_message_free_unpacked(call->request, NULL);
    held_drop(call);
    free(call);
}

const moat_rpc_method *moat_rpc_call_method(const moat_rpc_call *call)
{
    return call->method;
}

uint32_t moat_rpc_call_stream_id(const moat_rpc_call *call)
{
    return call->stream_id;
}

moat_rpc_state moat_rpc_call_state(const moat_rpc_call *call)
{
    return call->state;
}

uint64_t moat_rpc_call_deadline(const moat_rpc_call *call)
{
    return call->deadline_at;
}

void moat_rpc_call_set_data(moat_rpc_call *call, void *data)
{
    call->data = data;
}

void *moat_rpc_call_get_data(const moat_rpc_call *call)
{
    return call->data;
}

uint64_t moat_rpc_call_sent(const moat_rpc_call *call)
{
    return call->sent;
}

static bool read_varint(const uint8_t *p, size_t len, size_t *off, uint64_t *out)
{
    uint64_t v = 0;
    for (unsigned shift = 0; shift < 64 && *off < len; shift += 7) {
        uint8_t b = p[(*off)++];
        v |= (uint64_t)(b & 0x7f) << shift;
        if ((b & 0x80) == 0) {
            *out = v;
            return true;
        }
    }
    return false;
}

/* The first string field (in messages nested up to `depth` deep) whose
 * encoded bytes hold a NUL, or NULL. protobuf-c hands strings out
 * NUL-terminated, so such a value would silently end at its first NUL. */
static const char *find_nul_string(const ProtobufCMessageDescriptor *d, const uint8_t *p,
                                   size_t len, int depth)
{
    size_t off = 0;
    while (off < len) {
        uint64_t key, n;
        if (!read_varint(p, len, &off, &key))
            return NULL;
        switch (key & 7) {
        case 0:
            if (!read_varint(p, len, &off, &n))
                return NULL;
            break;
        case 1:
            off += 8;
            break;
        case 5:
            off += 4;
            break;
        case 2: {
            if (!read_varint(p, len, &off, &n) || n > len - off)
                return NULL;
            const ProtobufCFieldDescriptor *f =
                key >> 3 <= UINT32_MAX
                    ? protobuf_c_message_descriptor_get_field(d, (unsigned)(key >> 3))
                    : NULL;
            if (f != NULL && f->type == PROTOBUF_C_TYPE_STRING && memchr(p + off, 0, n) != NULL)
                return f->name;
            if (f != NULL && f->type == PROTOBUF_C_TYPE_MESSAGE && depth > 0) {
                const char *in = find_nul_string(f->descriptor, p + off, n, depth - 1);
                if (in != NULL)
                    return in;
            }
            off += n;
            break;
        }
        default:
            return NULL; /* groups: unpack has already judged the message */
        }
    }
    return NULL;
}

/* A request message decoded and checked; NULL (the call ended INVALID_ARGUMENT, *err says how)
 * when it is not one. */
static ProtobufCMessage *request_decode(moat_rpc_call *call, const uint8_t *payload, size_t len,
                                        moat_err *err)
{
    ProtobufCMessage *m = protobuf_c_message_unpack(call->method->request, NULL, len, payload);
    if (m == NULL) {
        moat_rpc_call_fail(call, MOAT_CODE_INVALID_ARGUMENT, "bad_request",
                           "request is not a valid %s", call->method->request->name);
        *err = MOAT_E_PROTO;
        return NULL;
    }
    const char *field = find_nul_string(call->method->request, payload, len, 8);
    if (field != NULL) {
        protobuf_c_message_free_unpacked(m, NULL);
        moat_status st;
        moat_status_set(&st, MOAT_CODE_INVALID_ARGUMENT, "nul_in_argument",
                        "%s holds a NUL byte, which no command, path or name can carry", field);
        moat_status_add_detail(&st, "field", field);
        moat_rpc_call_end(call, &st);
        *err = MOAT_E_INVAL;
        return NULL;
    }
    return m;
}

moat_err moat_rpc_call_request(moat_rpc_call *call, const uint8_t *payload, size_t len,
                               const ProtobufCMessage **out)
{
    if (call->state != MOAT_RPC_AWAIT_REQUEST)
        return MOAT_E_STATE;
    moat_err err = MOAT_OK;
    ProtobufCMessage *m = request_decode(call, payload, len, &err);
    if (m == NULL)
        return err;
    call->request = m;
    call->state = MOAT_RPC_RUNNING;
    if (out != NULL)
        *out = m;
    return MOAT_OK;
}

static void held_drop(moat_rpc_call *call)
{
    while (call->held != NULL) {
        held_input *h = call->held;
        call->held = h->next;
        protobuf_c_message_free_unpacked(h->msg, NULL);
        free(h);
    }
    call->held_tail = NULL;
}

/* Hands held input to the hook, in order, while the call runs and has a hook. */
static void held_deliver(moat_rpc_call *call)
{
    while (call->held != NULL && call->input_fn != NULL && call->state == MOAT_RPC_RUNNING) {
        held_input *h = call->held;
        call->held = h->next;
        if (call->held == NULL)
            call->held_tail = NULL;
        call->input_fn(call, h->msg, h->len, call->input_arg);
        protobuf_c_message_free_unpacked(h->msg, NULL);
        free(h);
    }
    if (call->state == MOAT_RPC_ENDED)
        held_drop(call);
}

moat_err moat_rpc_call_input(moat_rpc_call *call, const uint8_t *payload, size_t len)
{
    if (!call->method->client_streaming || call->state == MOAT_RPC_AWAIT_REQUEST)
        return MOAT_E_STATE;
    if (call->state == MOAT_RPC_ENDED)
        return MOAT_OK;
    moat_err err = MOAT_OK;
    ProtobufCMessage *m = request_decode(call, payload, len, &err);
    if (m == NULL)
        return err;
    held_input *h = malloc(sizeof(*h));
    if (h == NULL) {
        protobuf_c_message_free_unpacked(m, NULL);
        return MOAT_E_NOMEM;
    }
    *h = (held_input){NULL, m, len};
    if (call->held_tail != NULL)
        call->held_tail->next = h;
    else
        call->held = h;
    call->held_tail = h;
    moat_rpc_call_ref(call);
    held_deliver(call);
    moat_rpc_call_unref(call);
    return MOAT_OK;
}

void moat_rpc_call_on_input(moat_rpc_call *call, moat_rpc_input_fn fn, void *arg)
{
    call->input_fn = fn;
    call->input_arg = arg;
    moat_rpc_call_ref(call);
    held_deliver(call);
    moat_rpc_call_unref(call);
}

void moat_rpc_call_input_done(moat_rpc_call *call, size_t len)
{
    if (len > 0 && call->sink->input_done != NULL)
        call->sink->input_done(call, len, call->sink_user);
}

moat_err moat_rpc_call_send(moat_rpc_call *call, const ProtobufCMessage *msg)
{
    if (call->state != MOAT_RPC_RUNNING)
        return MOAT_E_STATE;
    if (msg == NULL || msg->descriptor != call->method->response)
        return MOAT_E_INVAL;
    if (!call->method->server_streaming && call->sent > 0)
        return MOAT_E_STATE;
    size_t n = protobuf_c_message_get_packed_size(msg);
    moat_err err = call->sink->message(call, msg, n, call->sink_user);
    if (err == MOAT_OK)
        call->sent++;
    return err;
}

moat_err moat_rpc_call_reply(moat_rpc_call *call, const ProtobufCMessage *msg)
{
    moat_err err = moat_rpc_call_send(call, msg);
    if (err == MOAT_E_TOO_BIG) {
        moat_rpc_call_fail(call, MOAT_CODE_RESOURCE_EXHAUSTED, "response_too_large",
                           "the response does not fit in one frame");
        return err;
    }
    if (err != MOAT_OK) {
        moat_rpc_call_fail(call, MOAT_CODE_INTERNAL, "send_failed", "cannot send the response: %s",
                           moat_strerror(err));
        return err;
    }
    moat_status ok;
    moat_status_clear(&ok);
    moat_rpc_call_end(call, &ok);
    return MOAT_OK;
}

bool moat_rpc_call_end(moat_rpc_call *call, const moat_status *st)
{
    if (call->state == MOAT_RPC_ENDED)
        return false;
    call->state = MOAT_RPC_ENDED;
    moat_status fixed;
    if (st->code == MOAT_CODE_OK && !call->method->server_streaming && call->sent == 0) {
        moat_status_set(&fixed, MOAT_CODE_INTERNAL, "no_response", "handler sent no response");
        st = &fixed;
    }
    call->sink->end(call, st, call->sink_user);
    return true;
}

bool moat_rpc_call_fail(moat_rpc_call *call, moat_code code, const char *reason, const char *fmt,
                        ...)
{
    if (call->state == MOAT_RPC_ENDED)
        return false;
    moat_status st;
    moat_status_clear(&st);
    st.code = code;
    if (reason != NULL)
        snprintf(st.reason, sizeof(st.reason), "%s", reason);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(st.message, sizeof(st.message), fmt, ap);
    va_end(ap);
    return moat_rpc_call_end(call, &st);
}

void moat_rpc_call_on_cancel(moat_rpc_call *call, moat_rpc_cancel_fn fn, void *arg)
{
    call->cancel_fn = fn;
    call->cancel_arg = arg;
}

bool moat_rpc_call_cancel_with(moat_rpc_call *call, const moat_status *st)
{
    if (call->state == MOAT_RPC_ENDED || call->cancelling)
        return false;
    /* The hook may itself end the call; guard against re-entry meanwhile. */
    call->cancelling = true;
    moat_rpc_cancel_fn fn = call->cancel_fn;
    call->cancel_fn = NULL;
    if (fn != NULL)
        fn(call, st, call->cancel_arg);
    call->cancelling = false;
    if (call->state == MOAT_RPC_ENDED)
        return true;
    call->state = MOAT_RPC_ENDED;
    call->sink->end(call, st, call->sink_user);
    return true;
}

bool moat_rpc_call_cancel(moat_rpc_call *call, moat_code code, const char *why)
{
    moat_status st;
    moat_status_set(&st, code,
                    code == MOAT_CODE_DEADLINE_EXCEEDED ? "deadline_exceeded" : "cancelled", "%s",
                    why != NULL ? why : moat_code_name(code));
    return moat_rpc_call_cancel_with(call, &st);
}

bool moat_rpc_call_check_deadline(moat_rpc_call *call, uint64_t now_ms)
{
    if (call->deadline_at == 0 || now_ms < call->deadline_at)
        return false;
    return moat_rpc_call_cancel(call, MOAT_CODE_DEADLINE_EXCEEDED, "deadline exceeded");
}
