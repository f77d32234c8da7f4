/* The Exec service: streams of a command's events (RunCommand, RunInShell, Attach) with the credit
 * policy that bounds what one stream holds inside moatd, and the one-answer calls about shells and
 * commands. All on the loop, through the bridge. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "handlers.h"
#include "moat/v1/exec.pb-c.h"

typedef struct exec_ctx {
    stream *st;
    moat_bridge_exec *ex;
    moat_bridge *bridge;
    char session_id[MOAT_UUID_STR_LEN];
    char *sock;
    char token[MOAT_EXECD_TOKEN_MAX];
    /* Credit given to the bridge and not yet used by delivered events. It
     * is kept at most min(the client's window left, initial_window), so
     * however large a window a client grants, one stream never has more
     * than initial_window in flight inside moatd. */
    uint64_t outstanding;
    bool cancelled;
} exec_ctx;

static void exec_ctx_free(exec_ctx *x)
{
    x->st->on_credit = NULL;
    x->st->hctx = NULL;
    moat__stream_unref(x->st);
    free(x->sock);
    free(x);
}

/* An interrupt of an abandoned command, in flight. */
typedef struct abandoned_interrupt {
    srv *s;
    char execution_id[];
} abandoned_interrupt;

static void interrupt_done(void *ud, const moat_status *st)
{
    abandoned_interrupt *ai = ud;
    moat_log(st->code == MOAT_CODE_OK ? MOAT_LOG_DEBUG : MOAT_LOG_WARN, "interrupt",
             "execution_id=%s code=%s msg=\"%s\"", ai->execution_id, moat_code_name(st->code),
             st->message);
    /* A drain waits for interrupts in flight, so a cancelled command is
     * really stopped before moatd exits. */
    moat__srv_job(ai->s, -1);
    free(ai);
}

/* Interrupts the command and lets go of its stream (it stays attachable). */
static void exec_abandon(exec_ctx *x)
{
    const char *eid = moat_bridge_exec_id(x->ex);
    moat_bridge_endpoint ep = {0};
    ep.unix_socket = x->sock;
    ep.access_token = x->token;
    ep.scope = x->session_id;
    abandoned_interrupt *ai = malloc(sizeof(*ai) + strlen(eid) + 1);
    moat_status st;
    if (ai != NULL) {
        ai->s = x->st->s;
        strcpy(ai->execution_id, eid);
        if (moat_bridge_interrupt(x->bridge, &ep, eid, interrupt_done, ai, &st) == MOAT_OK)
            moat__srv_job(ai->s, 1);
        else
            free(ai);
    }
    moat_bridge_exec_detach(x->ex);
    exec_ctx_free(x);
}

static void exec_on_event(void *ud, moat_bridge_exec *ex, const moat_bridge_event *ev)
{
    (void)ex;
    exec_ctx *x = ud;
    x->ex = ex;
    if (x->cancelled) {
        /* Cancelled before the execution had an id: now it has one. */
        if (ev->kind == MOAT_BRIDGE_EV_INIT)
            exec_abandon(x);
        return;
    }
    Moat__V1__ExecEvent e = MOAT__V1__EXEC_EVENT__INIT;
    Moat__V1__ExecEvent__Init init = MOAT__V1__EXEC_EVENT__INIT__INIT;
    Moat__V1__ExecEvent__Output out = MOAT__V1__EXEC_EVENT__OUTPUT__INIT;
    Moat__V1__ExecEvent__Result res = MOAT__V1__EXEC_EVENT__RESULT__INIT;
    Moat__V1__ExecEvent__Error err = MOAT__V1__EXEC_EVENT__ERROR__INIT;
    Moat__V1__ExecEvent__Complete comp = MOAT__V1__EXEC_EVENT__COMPLETE__INIT;
    Moat__V1__ExecEvent__Exit exit_ = MOAT__V1__EXEC_EVENT__EXIT__INIT;
    Moat__V1__ExitCode code = MOAT__V1__EXIT_CODE__INIT;
    char **tb = NULL;
    e.sequence = ev->sequence;
    e.timestamp_ms = ev->timestamp_ms;
    switch (ev->kind) {
    case MOAT_BRIDGE_EV_INIT:
        init.execution_id = (char *)ev->u.init.execution_id.data;
        e.kind_case = MOAT__V1__EXEC_EVENT__KIND_INIT;
        e.init = &init;
        break;
    case MOAT_BRIDGE_EV_OUTPUT:
        out.stream = ev->u.output.stream == MOAT_BRIDGE_STDERR ? MOAT__V1__OUTPUT_STREAM__STDERR
                                                               : MOAT__V1__OUTPUT_STREAM__STDOUT;
        out.data.data = (uint8_t *)ev->u.output.data;
        out.data.len = ev->u.output.len;
        e.kind_case = MOAT__V1__EXEC_EVENT__KIND_OUTPUT;
        e.output = &out;
        break;
    case MOAT_BRIDGE_EV_RESULT:
        res.text = (char *)ev->u.result.text.data;
        e.kind_case = MOAT__V1__EXEC_EVENT__KIND_RESULT;
        e.result = &res;
        break;
    case MOAT_BRIDGE_EV_ERROR:
        err.name = (char *)ev->u.error.name.data;
        err.value = (char *)ev->u.error.value.data;
        if (ev->u.error.traceback_count > 0) {
            tb = calloc(ev->u.error.traceback_count, sizeof(*tb));
            if (tb != NULL) {
                for (size_t i = 0; i < ev->u.error.traceback_count; i++)
                    tb[i] = (char *)ev->u.error.traceback[i].data;
                err.n_traceback = ev->u.error.traceback_count;
                err.traceback = tb;
            }
        }
        e.kind_case = MOAT__V1__EXEC_EVENT__KIND_ERROR;
        e.error = &err;
        break;
    case MOAT_BRIDGE_EV_COMPLETE:
        comp.execution_time_ms = ev->u.complete.execution_time_ms;
        e.kind_case = MOAT__V1__EXEC_EVENT__KIND_COMPLETE;
        e.complete = &comp;
        break;
    case MOAT_BRIDGE_EV_EXIT:
        if (ev->u.exit.known) {
            code.value_case = MOAT__V1__EXIT_CODE__VALUE_CODE;
            code.code = ev->u.exit.code;
        } else {
            code.value_case = MOAT__V1__EXIT_CODE__VALUE_UNKNOWN_REASON;
            code.unknown_reason =
                (char *)(ev->u.exit.unknown_reason.data != NULL ? ev->u.exit.unknown_reason.data
                                                                : "");
        }
        exit_.exit_code = &code;
        exit_.timed_out = ev->u.exit.timed_out;
        e.kind_case = MOAT__V1__EXEC_EVENT__KIND_EXIT;
        e.exit = &exit_;
        break;
    }
    size_t cost = moat_bridge_event_cost(ev);
    x->outstanding -= cost < x->outstanding ? cost : x->outstanding;
    /* Running low: top up once this event has been written (not from inside
     * the bridge's callback). */
    if (x->outstanding < x->st->initial_window / 2)
        moat__stream_want_credit(x->st);
    moat_err rc = moat_rpc_call_send(x->st->call, &e.base);
    free(tb);
    if (rc != MOAT_OK && moat__running(x->st))
        moat_rpc_call_fail(x->st->call, MOAT_CODE_INTERNAL, "send_failed", "cannot send event: %s",
                           moat_strerror(rc));
}

static void exec_on_end(void *ud, moat_bridge_exec *ex, const moat_status *status)
{
    (void)ex;
    exec_ctx *x = ud;
    if (!x->cancelled)
        moat_rpc_call_end(x->st->call, status);
    exec_ctx_free(x);
}

/* Runs on WindowUpdates (inc > 0) and when the connection's writes drain
 * (inc == 0); never from inside a bridge callback. */
static void exec_on_credit(stream *st, uint32_t inc)
{
    (void)inc;
    exec_ctx *x = st->hctx;
    if (x == NULL || x->cancelled || x->ex == NULL)
        return;
    uint64_t want = moat__stream_credit_target(st);
    if (want > x->outstanding) {
        uint64_t give = want - x->outstanding;
        x->outstanding = want;
        moat_bridge_exec_credit(x->ex, give);
    }
}

static void exec_on_cancel(moat_rpc_call *call, const moat_status *why, void *arg)
{
    (void)call;
    (void)why;
    exec_ctx *x = arg;
    x->cancelled = true;
    x->st->on_credit = NULL;
    /* The connection (and its account) may go before the execution names itself. */
    moat_bridge_exec_set_account(x->ex, NULL);
    if (moat_bridge_exec_id(x->ex)[0] != '\0') {
        exec_abandon(x);
        return;
    }
    /* No execution id yet: keep reading until init names it, with enough
     * credit to get there. */
    moat_bridge_exec_credit(x->ex, MOAT_BRIDGE_MAX_EVENT_COST);
}

static void log_budget_refusal(stream *st, const moat_status *status)
{
    if (strcmp(status->reason, "memory_budget_exhausted") != 0)
        return;
    const moat_bridge_budget *bg = &st->s->budget;
    const moat_bridge_account *a = moat__stream_account(st);
    moat_log_limited(&st->s->logs.budget_refused, MOAT_LOG_WARN, "memory_budget_refused",
                     "peer=%s used=%zu pinned=%zu cap=%zu conn_pinned=%zu conn_limit=%zu",
                     moat__stream_peer(st), bg->used, bg->pinned, bg->cap,
                     a != NULL ? a->pinned : 0, a != NULL ? a->limit : 0);
}

bool moat__refuse_unread_connection(stream *st)
{
    const moat_bridge_account *a = moat__stream_account(st);
    if (a == NULL || a->limit == 0 || a->pinned < a->limit)
        return false;
    moat_status status;
    moat_status_set(&status, MOAT_CODE_RESOURCE_EXHAUSTED, "memory_budget_exhausted",
                    "this connection has %zu bytes of output waiting to be read, its share of the "
                    "memory budget; read or cancel its streams, then retry",
                    a->pinned);
    moat_status_add_detail(&status, "scope", "connection");
    st->s->budget.refused++;
    log_budget_refusal(st, &status);
    moat_rpc_call_end(st->call, &status);
    return true;
}

static exec_ctx *exec_ctx_new(stream *st, const moat_bridge_endpoint *ep)
{
    exec_ctx *x = calloc(1, sizeof(*x));
    if (x == NULL)
        return NULL;
    x->sock = strdup(ep->unix_socket);
    if (x->sock == NULL) {
        free(x);
        return NULL;
    }
    snprintf(x->token, sizeof(x->token), "%s", ep->access_token);
    x->st = st;
    x->bridge = st->s->bridge;
    snprintf(x->session_id, sizeof(x->session_id), "%s", ep->scope);
    return x;
}

/* What an Exec stream follows: a command it starts, or one it attaches to. */
typedef struct exec_source {
    const moat_bridge_run_opts *run;       /* RunCommand, RunInShell */
    const Moat__V1__AttachRequest *attach; /* Attach */
} exec_source;

static void exec_start(stream *st, const moat_bridge_endpoint *ep, const exec_source *src)
{
    if (moat__refuse_unread_connection(st))
        return;
    exec_ctx *x = exec_ctx_new(st, ep);
    if (x == NULL) {
        moat_rpc_call_fail(st->call, MOAT_CODE_RESOURCE_EXHAUSTED, "out_of_memory",
                           "out of memory");
        return;
    }
    moat_bridge_consumer c = {exec_on_event, exec_on_end, x, moat__stream_account(st)};
    moat_bridge_exec *ex = NULL;
    moat_status status;
    moat_status_clear(&status);
    /* Take the reference before the bridge may call back. */
    moat__stream_ref(st);
    st->hctx = x;
    st->on_credit = exec_on_credit;
    moat_rpc_call_on_cancel(st->call, exec_on_cancel, x);
    x->outstanding = moat__stream_credit_target(st);
    /* Callbacks (replayed events, the end) may run before the bridge returns and end the call:
     * keep the stream alive until we have looked. */
    moat__stream_ref(st);
    moat_err err =
        src->run != NULL
            ? moat_bridge_run(st->s->bridge, ep, src->run, &c, x->outstanding, &ex, &status)
            : moat_bridge_attach(st->s->bridge, ep->scope, src->attach->execution_id,
                                 src->attach->after_sequence, &c, x->outstanding, &ex, &status);
    if (err != MOAT_OK) {
        log_budget_refusal(st, &status);
        moat_rpc_call_on_cancel(st->call, NULL, NULL);
        exec_ctx_free(x);
        moat_rpc_call_end(st->call, &status);
    } else if (st->hctx == x) {
        x->ex = ex;
    }
    moat__stream_unref(st);
}

void moat__exec_run_command(stream *st, const moat_bridge_endpoint *ep)
{
    const Moat__V1__RunCommandRequest *req = moat_rpc_call_get_data(st->call);
    const char *keys[64];
    const char *vals[64];
    if (req->n_env > 64) {
        moat_rpc_call_fail(st->call, MOAT_CODE_INVALID_ARGUMENT, "too_many_env",
                           "at most 64 environment variables");
        return;
    }
    for (size_t i = 0; i < req->n_env; i++) {
        keys[i] = req->env[i]->key;
        vals[i] = req->env[i]->value;
    }
    moat_bridge_run_opts o = {0};
    o.command = req->command;
    o.cwd = req->cwd;
    o.timeout_ms = req->timeout_ms;
    o.env_keys = keys;
    o.env_values = vals;
    o.env_count = req->n_env;
    o.background = req->background;
    exec_source src = {&o, NULL};
    exec_start(st, ep, &src);
}

void moat__exec_run_in_shell(stream *st, const moat_bridge_endpoint *ep)
{
    const Moat__V1__RunInShellRequest *req = moat_rpc_call_get_data(st->call);
    moat_bridge_run_opts o = {0};
    o.command = req->command;
    o.cwd = req->cwd;
    o.timeout_ms = req->timeout_ms;
    o.session_id = req->shell_id;
    exec_source src = {&o, NULL};
    exec_start(st, ep, &src);
}

void moat__exec_attach(stream *st, const moat_bridge_endpoint *ep)
{
    exec_source src = {NULL, moat_rpc_call_get_data(st->call)};
    exec_start(st, ep, &src);
}

/* ------------------------------------------------------------ one-answer calls */

static void create_shell_cb(void *ud, const moat_status *status, const char *shell_id)
{
    stream *st = ud;
    if (moat__answer_ok(st, status)) {
        Moat__V1__CreateShellResponse r = MOAT__V1__CREATE_SHELL_RESPONSE__INIT;
        r.shell_id = (char *)(shell_id != NULL ? shell_id : "");
        moat_rpc_call_reply(st->call, &r.base);
    }
    moat__stream_unref(st);
}

moat_err moat__exec_create_shell(stream *st, const moat_bridge_endpoint *ep, moat_status *status)
{
    const Moat__V1__CreateShellRequest *req = moat_rpc_call_get_data(st->call);
    return moat_bridge_create_session(st->s->bridge, ep, req->cwd, create_shell_cb, st, status);
}

moat_err moat__exec_delete_shell(stream *st, const moat_bridge_endpoint *ep, moat_status *status)
{
    const Moat__V1__DeleteShellRequest *req = moat_rpc_call_get_data(st->call);
    return moat_bridge_delete_session(st->s->bridge, ep, req->shell_id, moat__empty_answer, st,
                                      status);
}

moat_err moat__exec_interrupt(stream *st, const moat_bridge_endpoint *ep, moat_status *status)
{
    const Moat__V1__InterruptRequest *req = moat_rpc_call_get_data(st->call);
    return moat_bridge_interrupt(st->s->bridge, ep, req->execution_id, moat__empty_answer, st,
                                 status);
}

static void status_cb(void *ud, const moat_status *status, const moat_bridge_cmd_status *cs)
{
    stream *st = ud;
    if (moat__answer_ok(st, status) && cs != NULL) {
        Moat__V1__CommandStatus r = MOAT__V1__COMMAND_STATUS__INIT;
        Moat__V1__ExitCode code = MOAT__V1__EXIT_CODE__INIT;
        r.execution_id = (char *)(cs->execution_id != NULL ? cs->execution_id : "");
        r.command = (char *)(cs->content != NULL ? cs->content : "");
        r.running = cs->running;
        if (!cs->running) {
            if (cs->exit_known) {
                code.value_case = MOAT__V1__EXIT_CODE__VALUE_CODE;
                code.code = cs->exit_code;
            } else {
                code.value_case = MOAT__V1__EXIT_CODE__VALUE_UNKNOWN_REASON;
                code.unknown_reason = (char *)"execd reported no exit code";
            }
            r.exit_code = &code;
        }
        r.error = (char *)(cs->error != NULL ? cs->error : "");
        r.started_at_ms = cs->started_at_ms;
        r.finished_at_ms = cs->finished_at_ms;
        moat_rpc_call_reply(st->call, &r.base);
    }
    moat__stream_unref(st);
}

moat_err moat__exec_command_status(stream *st, const moat_bridge_endpoint *ep, moat_status *status)
{
    const Moat__V1__GetCommandStatusRequest *req = moat_rpc_call_get_data(st->call);
    return moat_bridge_command_status(st->s->bridge, ep, req->execution_id, status_cb, st, status);
}

static void logs_cb(void *ud, const moat_status *status, const uint8_t *data, size_t len,
                    uint64_t next)
{
    stream *st = ud;
    if (moat__answer_ok(st, status)) {
        /* One response must fit in a frame: hand back less and move the
         * cursor only as far as what was sent. */
        size_t cap = st->max_frame_size - 256;
        Moat__V1__CommandLogs r = MOAT__V1__COMMAND_LOGS__INIT;
        const Moat__V1__GetCommandLogsRequest *req = moat_rpc_call_get_data(st->call);
        if (len > cap) {
            next = req->cursor + cap;
            len = cap;
        }
        r.data.data = (uint8_t *)data;
        r.data.len = len;
        r.next_cursor = next;
        moat_rpc_call_reply(st->call, &r.base);
    }
    moat__stream_unref(st);
}

moat_err moat__exec_command_logs(stream *st, const moat_bridge_endpoint *ep, moat_status *status)
{
    const Moat__V1__GetCommandLogsRequest *req = moat_rpc_call_get_data(st->call);
    return moat_bridge_command_logs(st->s->bridge, ep, req->execution_id, req->cursor, logs_cb, st,
                                    status);
}
