/* Exec/Interactive: a command with its stdin, or a terminal, through execd's PTY sessions (the
 * bridge's terminals). Output goes out within the client's window as Exec streams do; input
 * the client sends waits in the terminal's queue until execd's socket takes it, and only then
 * goes back to the client as window, so a client that types faster than the process reads is
 * held by flow control and moatd holds at most one window of it per call. A pipe-mode call the
 * client cancels, or whose deadline passes, ends its process (as RunCommand's does); one whose
 * connection drops, and every terminal, leaves it to execd for a reattach. On the loop. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bridge/terminal.h"
#include "handlers.h"
#include "moat/v1/exec.pb-c.h"

typedef struct interactive_ctx {
    stream *st;
    moat_bridge_terminal *t; /* NULL once it has ended */
    uint64_t outstanding;    /* output credit given to the terminal and not yet used */
    uint64_t sequence;       /* of the last event sent */
    size_t input_held;       /* input bytes not yet given back to the client as window */
    bool stdin_closed;
    bool cancelled; /* the call ended first: the terminal's end is not the call's */
    bool kill;      /* ...and its session is to be ended in execd once the terminal is closed */
    /* The sandbox's execd, for that DELETE (the endpoint's strings are the caller's). */
    char *sock;
    char token[MOAT_EXECD_TOKEN_MAX];
    char scope[MOAT_UUID_STR_LEN];
} interactive_ctx;

static void ctx_free(interactive_ctx *x)
{
    free(x->sock);
    free(x);
}

/* A DELETE /pty/{id} in flight. */
typedef struct pty_kill {
    srv *s;
    char id[64];
} pty_kill;

static void killed(void *ud, const moat_status *st)
{
    pty_kill *k = ud;
    moat_log(st->code == MOAT_CODE_OK ? MOAT_LOG_DEBUG : MOAT_LOG_WARN, "terminal_ended",
             "terminal_id=%s code=%s msg=\"%s\"", k->id, moat_code_name(st->code), st->message);
    /* A drain waits for these, as for a cancelled command's interrupt. */
    moat__srv_job(k->s, -1);
    free(k);
}

/* Ends the call's session in execd: its process group is killed and its slot freed. */
static void kill_session(interactive_ctx *x, const char *id)
{
    if (id[0] == '\0')
        return; /* POST /pty never answered with one: there is no session */
    pty_kill *k = calloc(1, sizeof(*k));
    if (k == NULL)
        return;
    k->s = x->st->s;
    snprintf(k->id, sizeof(k->id), "%s", id);
    moat_bridge_endpoint ep = {0};
    ep.unix_socket = x->sock;
    ep.access_token = x->token;
    ep.scope = x->scope;
    moat_status st;
    if (moat_bridge_delete_pty(x->st->s->bridge, &ep, id, killed, k, &st) == MOAT_OK) {
        moat__srv_job(k->s, 1);
    } else {
        moat_log(MOAT_LOG_WARN, "terminal_ended", "terminal_id=%s code=%s msg=\"%s\"", id,
                 moat_code_name(st.code), st.message);
        free(k);
    }
}

static void send_event(interactive_ctx *x, Moat__V1__ExecEvent *e)
{
    e->sequence = ++x->sequence;
    e->timestamp_ms = moat_time_now_ms();
    moat_err rc = moat_rpc_call_send(x->st->call, &e->base);
    if (rc != MOAT_OK && moat__running(x->st))
        moat_rpc_call_fail(x->st->call, MOAT_CODE_INTERNAL, "send_failed", "cannot send event: %s",
                           moat_strerror(rc));
}

/* Input that execd's socket has taken goes back to the client as window. */
static void give_back_input(interactive_ctx *x)
{
    size_t queued = x->t != NULL ? moat_bridge_terminal_queued(x->t) : 0;
    if (x->input_held <= queued)
        return;
    size_t done = x->input_held - queued;
    x->input_held = queued;
    moat_rpc_call_input_done(x->st->call, done);
}

static void on_ready(void *ud, moat_bridge_terminal *t, const char *session_id)
{
    (void)t;
    interactive_ctx *x = ud;
    Moat__V1__ExecEvent e = MOAT__V1__EXEC_EVENT__INIT;
    Moat__V1__ExecEvent__Init init = MOAT__V1__EXEC_EVENT__INIT__INIT;
    init.execution_id = (char *)session_id;
    e.kind_case = MOAT__V1__EXEC_EVENT__KIND_INIT;
    e.init = &init;
    send_event(x, &e);
}

static void on_output(void *ud, moat_bridge_terminal *t, moat_bridge_stream stream,
                      const uint8_t *data, size_t len)
{
    (void)t;
    interactive_ctx *x = ud;
    Moat__V1__ExecEvent e = MOAT__V1__EXEC_EVENT__INIT;
    Moat__V1__ExecEvent__Output out = MOAT__V1__EXEC_EVENT__OUTPUT__INIT;
    out.stream = stream == MOAT_BRIDGE_STDERR ? MOAT__V1__OUTPUT_STREAM__STDERR
                                              : MOAT__V1__OUTPUT_STREAM__STDOUT;
    out.data = (ProtobufCBinaryData){len, (uint8_t *)data};
    e.kind_case = MOAT__V1__EXEC_EVENT__KIND_OUTPUT;
    e.output = &out;
    size_t cost = len + MOAT_BRIDGE_TERMINAL_OUTPUT_OVERHEAD;
    x->outstanding -= cost < x->outstanding ? cost : x->outstanding;
    /* Running low: top up once this output has been written (not from inside the bridge's
     * callback). */
    if (x->outstanding < x->st->initial_window / 2)
        moat__stream_want_credit(x->st);
    send_event(x, &e);
}

static void on_exit_code(void *ud, moat_bridge_terminal *t, int code)
{
    (void)t;
    interactive_ctx *x = ud;
    Moat__V1__ExecEvent e = MOAT__V1__EXEC_EVENT__INIT;
    Moat__V1__ExecEvent__Exit exit_ = MOAT__V1__EXEC_EVENT__EXIT__INIT;
    Moat__V1__ExitCode exit_code = MOAT__V1__EXIT_CODE__INIT;
    if (code >= 0) {
        exit_code.value_case = MOAT__V1__EXIT_CODE__VALUE_CODE;
        exit_code.code = code;
    } else {
        exit_code.value_case = MOAT__V1__EXIT_CODE__VALUE_UNKNOWN_REASON;
        exit_code.unknown_reason = (char *)"killed by a signal";
    }
    exit_.exit_code = &exit_code;
    e.kind_case = MOAT__V1__EXEC_EVENT__KIND_EXIT;
    e.exit = &exit_;
    send_event(x, &e);
}

static void on_writable(void *ud, moat_bridge_terminal *t)
{
    (void)t;
    give_back_input(ud);
}

static void on_end(void *ud, moat_bridge_terminal *t, const moat_status *status)
{
    interactive_ctx *x = ud;
    x->t = NULL;
    if (x->kill)
        kill_session(x, moat_bridge_terminal_session_id(t));
    stream *st = x->st;
    st->on_credit = NULL;
    st->hctx = NULL;
    moat_rpc_call_on_cancel(st->call, NULL, NULL);
    moat_rpc_call_on_input(st->call, NULL, NULL);
    if (!x->cancelled)
        moat_rpc_call_end(st->call, status);
    ctx_free(x);
    moat__stream_unref(st);
}

/* Runs on WindowUpdates and when the connection's writes drain; never inside a bridge
 * callback. */
static void on_credit(stream *st, uint32_t increment)
{
    (void)increment;
    interactive_ctx *x = st->hctx;
    if (x == NULL || x->t == NULL)
        return;
    uint64_t want = moat__stream_credit_target(st);
    if (want > x->outstanding) {
        moat_bridge_terminal_credit(x->t, want - x->outstanding);
        x->outstanding = want;
    }
}

/* The call ended before the terminal. A Cancel of the client's or a passed deadline says the
 * call is over: a pipe-mode command goes with it, as RunCommand's does. A connection that
 * dropped (the client may come back with attach_id), the server's own refusals of bad input, and
 * terminals leave the session to execd for a reattach, until its idle timeout. */
static void on_cancel(moat_rpc_call *call, const moat_status *why, void *arg)
{
    (void)call;
    interactive_ctx *x = arg;
    x->cancelled = true;
    if (x->t == NULL)
        return;
    bool over = why->code == MOAT_CODE_DEADLINE_EXCEEDED ||
                (why->code == MOAT_CODE_CANCELLED && strcmp(why->reason, "cancelled") == 0);
    x->kill = over && moat_bridge_terminal_pipe_mode(x->t);
    moat_bridge_terminal_close(x->t);
}

static bool size_ok(const Moat__V1__TerminalSize *size)
{
    return size->rows >= 1 && size->rows <= UINT16_MAX && size->cols >= 1 &&
           size->cols <= UINT16_MAX;
}

/* Ends the call (stopping the terminal through the cancel hook) with code, reason and message. */
static void refuse_input(interactive_ctx *x, moat_code code, const char *reason, const char *msg)
{
    moat_status status;
    moat_status_set(&status, code, reason, "%s", msg);
    moat_rpc_call_cancel_with(x->st->call, &status);
}

static void on_input(moat_rpc_call *call, const ProtobufCMessage *msg, size_t len, void *arg)
{
    interactive_ctx *x = arg;
    const Moat__V1__InteractiveRequest *in = (const Moat__V1__InteractiveRequest *)msg;
    moat_err err = MOAT_OK;
    switch (in->input_case) {
    case MOAT__V1__INTERACTIVE_REQUEST__INPUT_STDIN:
        if (x->stdin_closed) {
            refuse_input(x, MOAT_CODE_FAILED_PRECONDITION, "stdin_closed",
                         "stdin after close_stdin");
            return;
        }
        err = moat_bridge_terminal_stdin(x->t, in->stdin.data, in->stdin.len);
        if (err == MOAT_OK) {
            /* given back as execd's socket takes it */
            x->input_held += len;
            give_back_input(x);
            return;
        }
        break;
    case MOAT__V1__INTERACTIVE_REQUEST__INPUT_CLOSE_STDIN:
        if (!x->stdin_closed)
            err = moat_bridge_terminal_close_stdin(x->t);
        x->stdin_closed = true;
        break;
    case MOAT__V1__INTERACTIVE_REQUEST__INPUT_RESIZE:
        if (!size_ok(in->resize)) {
            refuse_input(x, MOAT_CODE_INVALID_ARGUMENT, "bad_terminal_size",
                         "rows and cols must be 1 to 65535");
            return;
        }
        err = moat_bridge_terminal_resize(x->t, in->resize->rows, in->resize->cols);
        break;
    case MOAT__V1__INTERACTIVE_REQUEST__INPUT_SIGNAL:
        err = moat_bridge_terminal_signal(x->t, in->signal);
        if (err == MOAT_E_INVAL) {
            refuse_input(x, MOAT_CODE_INVALID_ARGUMENT, "bad_signal",
                         "signal must be SIGINT, SIGTERM, SIGKILL, SIGQUIT or SIGHUP");
            return;
        }
        break;
    case MOAT__V1__INTERACTIVE_REQUEST__INPUT_START:
        refuse_input(x, MOAT_CODE_INVALID_ARGUMENT, "second_start",
                     "start comes once, in the call's first message");
        return;
    default:
        refuse_input(x, MOAT_CODE_INVALID_ARGUMENT, "empty_input",
                     "an InteractiveRequest carries one of its inputs");
        return;
    }
    if (err == MOAT_E_STATE)
        return; /* the terminal is ending, and the call with it */
    if (err != MOAT_OK) {
        refuse_input(x, MOAT_CODE_RESOURCE_EXHAUSTED, "out_of_memory",
                     "cannot queue the input for the process");
        return;
    }
    moat_rpc_call_input_done(call, len);
}

static void interactive_in_session(stream *st, const moat_bridge_endpoint *ep)
{
    const Moat__V1__InteractiveRequest *req = moat_rpc_call_get_data(st->call);
    const Moat__V1__InteractiveStart *start = req->start;
    if (moat__refuse_unread_connection(st))
        return;
    interactive_ctx *x = calloc(1, sizeof(*x));
    if (x != NULL && ep->unix_socket != NULL && (x->sock = strdup(ep->unix_socket)) == NULL) {
        free(x);
        x = NULL;
    }
    if (x == NULL) {
        moat_rpc_call_fail(st->call, MOAT_CODE_RESOURCE_EXHAUSTED, "out_of_memory",
                           "out of memory");
        return;
    }
    x->st = st;
    snprintf(x->token, sizeof(x->token), "%s", ep->access_token != NULL ? ep->access_token : "");
    snprintf(x->scope, sizeof(x->scope), "%s", ep->scope != NULL ? ep->scope : "");
    moat_bridge_terminal_opts o = {0};
    o.command = start->command;
    o.cwd = start->cwd;
    o.tty = start->tty;
    o.term = start->term;
    if (start->size != NULL) {
        o.rows = start->size->rows;
        o.cols = start->size->cols;
    }
    o.attach_id = start->attach_id;
    o.replay = start->attach_id[0] != '\0';
    o.since = start->after_offset;
    moat_bridge_terminal_consumer c = {on_ready, on_output, on_exit_code, on_writable, on_end, x};
    moat_status status;
    moat_status_clear(&status);
    x->outstanding = moat__stream_credit_target(st);
    moat_err err =
        moat_bridge_terminal_open(st->s->bridge, ep, &o, &c, x->outstanding, &x->t, &status);
    if (err != MOAT_OK) {
        ctx_free(x);
        moat_rpc_call_end(st->call, &status);
        return;
    }
    /* The terminal's on_end gives this reference back. */
    moat__stream_ref(st);
    st->hctx = x;
    st->on_credit = on_credit;
    moat_rpc_call_on_cancel(st->call, on_cancel, x);
    moat_rpc_call_on_input(st->call, on_input, x);
}

void moat__exec_interactive(stream *st, const ProtobufCMessage *msg)
{
    const Moat__V1__InteractiveRequest *req = (const Moat__V1__InteractiveRequest *)msg;
    if (req->input_case != MOAT__V1__INTERACTIVE_REQUEST__INPUT_START) {
        moat_rpc_call_fail(st->call, MOAT_CODE_INVALID_ARGUMENT, "start_first",
                           "an Interactive call's first message is its start");
        return;
    }
    const Moat__V1__InteractiveStart *start = req->start;
    if (start->size != NULL && !size_ok(start->size)) {
        moat_rpc_call_fail(st->call, MOAT_CODE_INVALID_ARGUMENT, "bad_terminal_size",
                           "rows and cols must be 1 to 65535");
        return;
    }
    moat__with_session(st, start->session_id, interactive_in_session);
}
