/* moatd's service handlers: the dispatch of a decoded request to its service, what the services
 * share, and their start and stop. Sandboxes and Health go through the runtime (svc_sessions.c),
 * Exec and Files through the bridge (svc_exec.c, svc_files.c). They translate between protobuf-c
 * messages and the modules' C structs; the decisions belong to the runtime and the bridge. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "handlers.h"
#include "moat/v1/exec.pb-c.h"
#include "moat/v1/files.pb-c.h"

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

/* The stream stays referenced until the bridge answers; a call cancelled in
 * the meantime has ended and the answer is dropped. */
stream *moat__hold(stream *st)
{
    moat__stream_ref(st);
    return st;
}

void moat__bridge_started(stream *st, moat_err err, const moat_status *status)
{
    if (err == MOAT_OK)
        return;
    moat__stream_unref(st);
    moat_rpc_call_end(st->call, status);
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

void moat__dispatch(stream *st, const ProtobufCMessage *req)
{
    if (req != NULL)
        moat_rpc_call_set_data(st->call, (void *)req);
    req = moat_rpc_call_get_data(st->call);
    switch (moat_rpc_call_method(st->call)->id) {
    case MOAT_RPC_SANDBOXES_CREATE_SESSION:
        moat__sandboxes_create(st, req);
        return;
    case MOAT_RPC_SANDBOXES_GET_SESSION:
        moat__sandboxes_get(st, req);
        return;
    case MOAT_RPC_SANDBOXES_LIST_SESSIONS:
        moat__sandboxes_list(st, req);
        return;
    case MOAT_RPC_SANDBOXES_RENEW_SESSION:
        moat__sandboxes_renew(st, req);
        return;
    case MOAT_RPC_SANDBOXES_STOP_SESSION:
        moat__sandboxes_stop(st, req);
        return;
    case MOAT_RPC_HEALTH_CHECK:
        moat__health_check(st, req);
        return;
    case MOAT_RPC_EXEC_RUN_COMMAND:
        moat__with_session(st, ((const Moat__V1__RunCommandRequest *)req)->session_id,
                           moat__exec_run_command);
        return;
    case MOAT_RPC_EXEC_RUN_IN_SHELL:
        moat__with_session(st, ((const Moat__V1__RunInShellRequest *)req)->session_id,
                           moat__exec_run_in_shell);
        return;
    case MOAT_RPC_EXEC_CREATE_SHELL:
        moat__with_session(st, ((const Moat__V1__CreateShellRequest *)req)->session_id,
                           moat__exec_create_shell);
        return;
    case MOAT_RPC_EXEC_DELETE_SHELL:
        moat__with_session(st, ((const Moat__V1__DeleteShellRequest *)req)->session_id,
                           moat__exec_delete_shell);
        return;
    case MOAT_RPC_EXEC_INTERRUPT:
        moat__with_session(st, ((const Moat__V1__InterruptRequest *)req)->session_id,
                           moat__exec_interrupt);
        return;
    case MOAT_RPC_EXEC_GET_COMMAND_STATUS:
        moat__with_session(st, ((const Moat__V1__GetCommandStatusRequest *)req)->session_id,
                           moat__exec_command_status);
        return;
    case MOAT_RPC_EXEC_GET_COMMAND_LOGS:
        moat__with_session(st, ((const Moat__V1__GetCommandLogsRequest *)req)->session_id,
                           moat__exec_command_logs);
        return;
    case MOAT_RPC_EXEC_ATTACH:
        moat__with_session(st, ((const Moat__V1__AttachRequest *)req)->session_id,
                           moat__exec_attach);
        return;
    case MOAT_RPC_FILES_STAT:
        moat__with_session(st, ((const Moat__V1__StatRequest *)req)->session_id, moat__files_stat);
        return;
    case MOAT_RPC_FILES_LIST:
        moat__with_session(st, ((const Moat__V1__ListRequest *)req)->session_id, moat__files_list);
        return;
    case MOAT_RPC_FILES_READ:
        moat__with_session(st, ((const Moat__V1__ReadRequest *)req)->session_id, moat__files_read);
        return;
    case MOAT_RPC_FILES_WRITE:
        moat__with_session(st, ((const Moat__V1__WriteRequest *)req)->session_id,
                           moat__files_write);
        return;
    case MOAT_RPC_FILES_REMOVE:
        moat__with_session(st, ((const Moat__V1__RemoveRequest *)req)->session_id,
                           moat__files_remove);
        return;
    case MOAT_RPC_FILES_MOVE:
        moat__with_session(st, ((const Moat__V1__MoveRequest *)req)->session_id, moat__files_move);
        return;
    case MOAT_RPC_FILES_MKDIR:
        moat__with_session(st, ((const Moat__V1__MkdirRequest *)req)->session_id,
                           moat__files_mkdir);
        return;
    case MOAT_RPC_FILES_CHMOD:
        moat__with_session(st, ((const Moat__V1__ChmodRequest *)req)->session_id,
                           moat__files_chmod);
        return;
    case MOAT_RPC_EXEC_INTERACTIVE: /* in the schema, not served yet (docs/PROTOCOL.md) */
    case MOAT_RPC_METHOD_COUNT:
        break;
    }
    moat_rpc_call_fail(st->call, MOAT_CODE_UNIMPLEMENTED, "unknown_method", "no handler");
}

moat_err moat__handlers_init(srv *s)
{
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
