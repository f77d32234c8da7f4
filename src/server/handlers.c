/* moatd's service handlers: the dispatch of a decoded request to its service, what the services
 * share, and their start and stop. Sandboxes and Health go through the runtime (svc_sessions.c),
 * Exec and Files through the bridge (svc_exec.c, svc_files.c). They translate between protobuf-c
 * messages and the modules' C structs; the decisions belong to the runtime and the bridge. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "handlers.h"

bool moat__running(const stream *st)
{
    return moat_rpc_call_state(st->call) == MOAT_RPC_RUNNING;
}

bool moat__canon(stream *st, const char *in, const char *field, char out[MOAT_UUID_STR_LEN])
{
    if (moat_uuid_canonicalize(in, out) == MOAT_OK)
        return true;
    moat_status status;
    moat_status_set(&status, MOAT_CODE_INVALID_ARGUMENT,
                    field[0] == 'c' ? "invalid_chat_id" : "invalid_session_id", "%s is not a UUID",
                    field);
    moat_status_add_detail(&status, field, in);
    moat_rpc_call_end(st->call, &status);
    return false;
}

bool moat__answer_ok(stream *st, const moat_status *status)
{
    if (!moat__running(st))
        return false;
    if (status->code != MOAT_CODE_OK) {
        moat_rpc_call_end(st->call, status);
        return false;
    }
    return true;
}

void moat__empty_answer(void *ud, const moat_status *status)
{
    stream *st = ud;
    if (moat__answer_ok(st, status)) {
        const ProtobufCMessageDescriptor *d = moat_rpc_call_method(st->call)->response;
        uint8_t storage[64];
        ProtobufCMessage *m = (ProtobufCMessage *)storage;
        if (d->sizeof_message <= sizeof(storage)) {
            protobuf_c_message_init(d, m);
            moat_rpc_call_reply(st->call, m);
        }
    }
    moat__stream_unref(st);
}

/* How moatd serves each method: the last column of rpc's method list (rpc/methods.h). */
typedef struct method_handler {
    /* Sandboxes and Health: runs with the decoded request. */
    void (*direct)(stream *st, const ProtobufCMessage *req);
    /* Exec and Files: runs once the request's session_id names a running session... */
    session_then_fn in_session;
    /* ...or, for a call with one answer, starts the bridge call whose callback gives it. */
    bridge_call_fn bridge;
    bool uncounted; /* not counted against max_calls_per_session */
} method_handler;

/* clang-format off */
#define DIRECT(fn)           {.direct = fn}
#define SESSION(fn)          {.in_session = fn}
#define BRIDGE(fn)           {.bridge = fn}
/* Interrupt is how a client frees its slots: never refused, never counted. */
#define BRIDGE_UNCOUNTED(fn) {.bridge = fn, .uncounted = true}
/* clang-format on */
#define METHOD_HANDLER(id, service, name, streaming, handler) [MOAT_RPC_##id] = handler,
static const method_handler method_handlers[MOAT_RPC_METHOD_COUNT] = {
    MOAT_RPC_METHODS(METHOD_HANDLER)};

static const method_handler *handler_of(const stream *st)
{
    return &method_handlers[moat_rpc_call_method(st->call)->id];
}

bool moat__counted_call(const stream *st)
{
    return !handler_of(st)->uncounted;
}

static const ProtobufCFieldDescriptor *session_id_field(const ProtobufCMessageDescriptor *request)
{
    const ProtobufCFieldDescriptor *f =
        protobuf_c_message_descriptor_get_field_by_name(request, "session_id");
    return f != NULL && f->type == PROTOBUF_C_TYPE_STRING && f->label != PROTOBUF_C_LABEL_REPEATED
               ? f
               : NULL;
}

/* Whether every method served in a session has a session_id to look up (checked once, so
 * dispatch can read it without asking again). */
static bool session_methods_name_their_session(void)
{
    for (size_t i = 0; i < MOAT_RPC_METHOD_COUNT; i++) {
        const moat_rpc_method *m = moat_rpc_method_get((moat_rpc_method_id)i);
        if (method_handlers[i].direct == NULL && session_id_field(m->request) == NULL) {
            moat_log(MOAT_LOG_ERROR, "method_without_session_id", "method=%s", m->name);
            return false;
        }
    }
    return true;
}

static const char *request_session_id(const ProtobufCMessage *req)
{
    const ProtobufCFieldDescriptor *f = session_id_field(req->descriptor);
    return *(const char *const *)(const void *)((const char *)req + f->offset);
}

/* The reference taken here is the bridge callback's to give back. */
static void bridge_in_session(stream *st, const moat_bridge_endpoint *ep)
{
    moat_status status;
    moat__stream_ref(st);
    if (handler_of(st)->bridge(st, ep, &status) != MOAT_OK) {
        moat_rpc_call_end(st->call, &status);
        moat__stream_unref(st);
    }
}

void moat__dispatch(stream *st, const ProtobufCMessage *req)
{
    if (req != NULL)
        moat_rpc_call_set_data(st->call, (void *)req);
    req = moat_rpc_call_get_data(st->call);
    const method_handler *h = handler_of(st);
    if (h->direct != NULL)
        h->direct(st, req);
    else
        moat__with_session(st, request_session_id(req),
                           h->bridge != NULL ? bridge_in_session : h->in_session);
}

moat_err moat__handlers_init(srv *s)
{
    if (!session_methods_name_their_session())
        return MOAT_E_INVAL;
    if (moat__session_cache_init(s) != MOAT_OK || moat__calls_init(s) != MOAT_OK ||
        moat__reaper_events_init(s) != MOAT_OK) {
        moat__calls_free(s);
        moat__session_cache_free(s);
        return MOAT_E_NOMEM;
    }
    const moat_server_config *c = &s->cfg;
    moat_runtime_metrics hooks = {0};
    hooks.ctx = s;
    hooks.session_event = moat__reaper_session_event;
    moat_status st;
    moat_status_clear(&st);
    s->rt = s->rt_ops->open(c, &hooks, &st);
    if (s->rt == NULL) {
        moat_log(MOAT_LOG_ERROR, "runtime_open_failed", "code=%s reason=%s msg=\"%s\"",
                 moat_code_name(st.code), st.reason, st.message);
        fprintf(stderr, "moatd: %s\n", st.message);
        moat__handlers_close(s);
        return MOAT_E_INVAL;
    }
    moat_bridge_config bc;
    moat_bridge_config_default(&bc);
    s->budget.cap = (size_t)c->memory_budget_bytes;
    /* One connection holds at most twice its share (a quarter of the budget) and each of its
     * streams' transfer overshoot (docs/bridge.md): past half the budget, it alone could fill
     * the budget and turn everyone's new streams away. */
    uint64_t one_conn =
        (uint64_t)c->max_streams_per_connection * MOAT_BRIDGE_TRANSFER_OVERSHOOT_MAX;
    if (one_conn >= c->memory_budget_bytes / 2)
        moat_log(MOAT_LOG_WARN, "memory_budget_small",
                 "memory_budget_bytes=%llu max_streams_per_connection=%u: one connection's %u "
                 "streams may hold %llu bytes beyond its share, enough to fill the budget",
                 (unsigned long long)c->memory_budget_bytes, c->max_streams_per_connection,
                 c->max_streams_per_connection, (unsigned long long)one_conn);
    bc.budget = &s->budget;
    if (moat_bridge_new(&bc, &s->bridge) != MOAT_OK ||
        moat_bridge_attach_uv(s->bridge, s->loop) != MOAT_OK) {
        moat_log(MOAT_LOG_ERROR, "bridge_init_failed", "%s", "");
        moat__handlers_close(s);
        return MOAT_E_IO;
    }
    s->health = moat__health_start(s);
    moat__sessions_start(s);
    return MOAT_OK;
}

void moat__handlers_close(srv *s)
{
    moat__health_stop(s->health);
    s->health = NULL;
    if (s->bridge != NULL)
        moat_bridge_free(s->bridge);
    s->bridge = NULL;
    if (s->rt != NULL)
        s->rt_ops->close(s->rt);
    s->rt = NULL;
    moat__reaper_events_close(s);
    moat__calls_free(s);
    moat__session_cache_free(s);
}
