/* Proxy mode (cluster_route = proxy, docs/CLUSTER.md "Routing"): a call for a session another
 * node holds is opened again on that node, through the pool of connections to peers
 * (cluster_peer.c: the cluster's token in its Hello, this node's loop as the client), and its
 * messages are relayed both ways. Credit is relayed too: the owner may send this node only what
 * the client's window lets it write on at once (as an Exec stream gives execd credit), and input
 * goes to the owner only within the owner's window for it, its credit back to the client as it
 * leaves; so a relayed call holds at most a window each way here, whatever its size. A call
 * that came in through another node's proxy is never relayed again: one hop at most. Loop
 * thread only. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster/membership.h"
#include "cluster_peer.h"
#include "handlers.h"

/* Input of an Interactive call waiting for the owner's window. */
typedef struct held_input {
    struct held_input *next;
    size_t len;    /* packed again for the owner */
    size_t credit; /* what the client was charged for it, given back as it leaves */
    uint8_t data[];
} held_input;

/* One relayed call: owned by its stream's hctx while relayed. */
typedef struct proxy_call {
    stream *st;      /* referenced while relayed */
    peer_call *call; /* the pool's, until it ends or is cancelled */
    bool started;    /* the owner has the call */
    char address[MOAT_NODE_ADDRESS_MAX];
    moat_window up;  /* the owner's credit for our input messages */
    int64_t granted; /* what the owner may still send us: what we granted, less what came */
    held_input *held, *held_tail;
} proxy_call;

/* Grants the owner what the client lets this stream write now, less what it holds already. */
static void call_top_up(proxy_call *pc)
{
    if (!pc->started)
        return;
    uint64_t want = moat__stream_credit_target(pc->st);
    if ((int64_t)want > pc->granted) {
        uint64_t inc = (uint64_t)((int64_t)want - pc->granted);
        if (inc > MOAT_WIRE_MAX_WINDOW)
            inc = MOAT_WIRE_MAX_WINDOW;
        pc->granted += (int64_t)inc;
        moat__peer_call_window(pc->call, (uint32_t)inc);
    }
}

static void on_credit(stream *st, uint32_t increment)
{
    (void)increment;
    if (st->hctx != NULL)
        call_top_up(st->hctx);
}

/* Sends held input within the owner's window; each message's credit goes back to the client as
 * it leaves. */
static void call_flush_input(proxy_call *pc)
{
    while (pc->held != NULL && pc->started) {
        held_input *h = pc->held;
        if (moat_window_consume(&pc->up, (uint32_t)h->len) != MOAT_OK)
            return;
        moat__peer_call_send(pc->call, (moat_slice){h->data, h->len});
        pc->held = h->next;
        if (pc->held == NULL)
            pc->held_tail = NULL;
        moat_rpc_call_input_done(pc->st->call, h->credit);
        free(h);
    }
}

static void on_input(moat_rpc_call *call, const ProtobufCMessage *msg, size_t len, void *arg)
{
    (void)call;
    proxy_call *pc = arg;
    held_input *h = malloc(sizeof(*h) + len);
    if (h == NULL) {
        moat_rpc_call_fail(pc->st->call, MOAT_CODE_RESOURCE_EXHAUSTED, "out_of_memory",
                           "out of memory");
        return;
    }
    h->next = NULL;
    h->credit = len;
    h->len = protobuf_c_message_pack(msg, h->data);
    if (pc->held_tail != NULL)
        pc->held_tail->next = h;
    else
        pc->held = h;
    pc->held_tail = h;
    call_flush_input(pc);
}

/* The call leaves its stream: no more relaying either way. */
static void call_detach(proxy_call *pc)
{
    stream *st = pc->st;
    while (pc->held != NULL) {
        held_input *h = pc->held;
        pc->held = h->next;
        free(h);
    }
    st->hctx = NULL;
    st->on_credit = NULL;
    moat_rpc_call_on_cancel(st->call, NULL, NULL);
    moat_rpc_call_on_input(st->call, NULL, NULL);
    free(pc);
    moat__stream_unref(st);
}

/* The call is over here before the owner's End: the owner's call is cancelled too, so its
 * command stops there. */
static void call_abandon(proxy_call *pc, const char *why)
{
    moat__peer_call_cancel(pc->call, why);
    call_detach(pc);
}

static void on_cancel(moat_rpc_call *call, const moat_status *why, void *arg)
{
    (void)call;
    const char *reason = "cancelled by the client";
    if (why->code == MOAT_CODE_DEADLINE_EXCEEDED)
        reason = "deadline exceeded at the proxy";
    else if (strcmp(why->reason, MOAT__CONNECTION_CLOSED) == 0)
        reason = MOAT__CONNECTION_CLOSED; /* the owner treats the call as dropped, not cancelled */
    call_abandon(arg, reason);
}

/* Ends the client's call with status once the call has left it (call_detach). */
static void end_detached(proxy_call *pc, const moat_status *status, bool cancel_owner)
{
    stream *st = pc->st;
    moat__stream_ref(st);
    if (cancel_owner)
        call_abandon(pc, "the proxy ended the call");
    else
        call_detach(pc);
    moat_rpc_call_end(st->call, status);
    moat__stream_unref(st);
}

static void unreachable(moat_status *status, const char *address, const char *why)
{
    moat_status_set(status, MOAT_CODE_UNAVAILABLE, "owner_unreachable",
                    "cannot relay the call to the session's node at %s: %s", address, why);
    moat_status_add_detail(status, "owner_address", address);
}

static void on_started(peer_call *c, void *ud, uint32_t window)
{
    proxy_call *pc = ud;
    pc->call = c;
    pc->started = true;
    moat_window_init(&pc->up, window);
    /* A client-streaming call's first message is given back at once by the owner's transport
     * (moat__stream_request): it does not count against the input window. */
    pc->granted = window;
    call_top_up(pc);
    call_flush_input(pc);
}

/* A response message from the owner, handed on as it came. */
static void on_message(peer_call *c, void *ud, moat_slice payload)
{
    (void)c;
    proxy_call *pc = ud;
    stream *st = pc->st;
    const moat_rpc_method *m = moat_rpc_call_method(st->call);
    pc->granted -= (int64_t)payload.len;
    ProtobufCMessage *msg = protobuf_c_message_unpack(m->response, NULL, payload.len, payload.data);
    if (msg == NULL) {
        moat_status status;
        unreachable(&status, pc->address, "it sent a message that does not decode");
        end_detached(pc, &status, true);
        return;
    }
    moat_err rc = moat_rpc_call_send(st->call, msg);
    protobuf_c_message_free_unpacked(msg, NULL);
    if (rc != MOAT_OK) {
        moat__stream_ref(st);
        call_abandon(pc, "the proxy could not relay a message");
        if (moat__running(st))
            moat_rpc_call_fail(st->call, MOAT_CODE_INTERNAL, "send_failed", "cannot relay: %s",
                               moat_strerror(rc));
        moat__stream_unref(st);
        return;
    }
    /* Running low: top up once this has been written. */
    if (pc->granted < (int64_t)st->initial_window / 2)
        moat__stream_want_credit(st);
}

static void on_window(peer_call *c, void *ud, uint32_t increment)
{
    (void)c;
    proxy_call *pc = ud;
    if (moat_window_grant(&pc->up, increment) == MOAT_OK)
        call_flush_input(pc);
}

/* The owner's End is the call's; a lost owner is owner_unreachable. */
static void on_ended(peer_call *c, void *ud, const moat_status *end, const char *failed)
{
    (void)c;
    proxy_call *pc = ud;
    moat_status status;
    if (end == NULL)
        unreachable(&status, pc->address, failed);
    end_detached(pc, end != NULL ? end : &status, false);
}

static const peer_call_ops proxy_ops = {on_started, on_message, on_window, on_ended};

bool moat__proxy_route(stream *st, const moat_status *status)
{
    srv *s = st->s;
    const char *address = moat_status_detail_get(status, "owner_address");
    if (s->peers == NULL || strcmp(s->cfg.cluster_route, "proxy") != 0 || !moat__running(st) ||
        strcmp(status->reason, "session_moved") != 0 || address == NULL ||
        (st->c != NULL && st->c->from_proxy))
        return false;
    moat_rpc_call *call = st->call;
    const ProtobufCMessage *req = moat_rpc_call_get_data(call);
    size_t len = protobuf_c_message_get_packed_size(req);
    uint8_t small[512];
    uint8_t *packed = len <= sizeof(small) ? small : malloc(len);
    proxy_call *pc = packed != NULL ? calloc(1, sizeof(*pc)) : NULL;
    if (pc == NULL) {
        if (packed != small)
            free(packed);
        moat_rpc_call_fail(call, MOAT_CODE_UNAVAILABLE, "owner_unreachable",
                           "cannot relay the call to %s", address);
        return true;
    }
    protobuf_c_message_pack(req, packed);
    pc->st = st;
    snprintf(pc->address, sizeof(pc->address), "%s", address);
    moat__stream_ref(st);
    st->hctx = pc;
    st->on_credit = on_credit;
    moat_rpc_call_on_cancel(call, on_cancel, pc);
    if (moat_rpc_call_method(call)->client_streaming)
        moat_rpc_call_on_input(call, on_input, pc);
    peer_call *c = moat__peer_call_open(s, address, moat_rpc_call_method(call)->name,
                                        (moat_slice){packed, len}, moat_rpc_call_deadline(call),
                                        &proxy_ops, pc);
    if (packed != small)
        free(packed);
    if (c == NULL) {
        moat_status fail;
        unreachable(&fail, address, "the call could not be opened");
        end_detached(pc, &fail, false);
        return true;
    }
    pc->call = c;
    return true;
}
