/* moat rpc: the method table of the v1 services (the .proto files in proto/moat/v1) and the
 * life of one call: open -> request message -> handler -> response messages ->
 * exactly one End. Status codes, deadlines and cancel live here too.
 *
 * No I/O and no blocking: a call hands its response messages and its End to a
 * sink the server provides (which frames and writes them), and deadlines are
 * checked when the server's timer asks. Single-threaded: use a call only on the
 * thread that runs the server's loop. */
#ifndef MOAT_RPC_H
#define MOAT_RPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "common/common.h"
#include "rpc/methods.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Every method of every v1 service, in schema order (methods.h). */
#define MOAT_RPC_METHOD_ID(id, service, name, shape, handler) MOAT_RPC_##id,
typedef enum moat_rpc_method_id {
    MOAT_RPC_METHODS(MOAT_RPC_METHOD_ID) MOAT_RPC_METHOD_COUNT
} moat_rpc_method_id;
#undef MOAT_RPC_METHOD_ID

typedef struct moat_rpc_method {
    moat_rpc_method_id id;
    /* gRPC-style full name, e.g. "/moat.v1.Exec/RunCommand". */
    const char *name;
    /* The protobuf-c service this method belongs to and its index there. */
    const ProtobufCServiceDescriptor *service;
    unsigned service_index;
    const ProtobufCMessageDescriptor *request;
    const ProtobufCMessageDescriptor *response;
    /* True for `returns (stream …)`: zero or more responses; otherwise exactly one. */
    bool server_streaming;
    /* True for `rpc M(stream …)`: further request messages follow the first one
     * (moat_rpc_call_input); otherwise the first is the only one. */
    bool client_streaming;
} moat_rpc_method;

/* The method called `name` (not NUL-terminated), or NULL. Static storage, filled from the service
 * descriptors on first use (from any thread). */
const moat_rpc_method *moat_rpc_method_lookup(const char *name, size_t len);
/* The method with that id, or NULL when out of range. Static storage. */
const moat_rpc_method *moat_rpc_method_get(moat_rpc_method_id id);

typedef enum moat_rpc_state {
    MOAT_RPC_AWAIT_REQUEST = 0, /* opened, its request message has not arrived */
    MOAT_RPC_RUNNING = 1,       /* the handler owns it */
    MOAT_RPC_ENDED = 2,         /* its End was emitted; nothing more goes out */
} moat_rpc_state;

typedef struct moat_rpc_call moat_rpc_call;

/* Where a call's output goes. Both run synchronously inside the call function
 * that produced them. `data` is valid only during the callback. */
typedef struct moat_rpc_sink {
    /* One response message, len bytes once packed: the sink packs it
     * (protobuf_c_message_pack) where it sends it from, so its bytes are
     * copied once. A non-OK return makes the send fail. */
    moat_err (*message)(moat_rpc_call *call, const ProtobufCMessage *msg, size_t len, void *user);
    /* The call's final status; called exactly once per call. */
    void (*end)(moat_rpc_call *call, const moat_status *status, void *user);
    /* The handler is done with len bytes of input (moat_rpc_call_input_done): the transport
     * gives the client that much credit back. */
    void (*input_done)(moat_rpc_call *call, size_t len, void *user);
} moat_rpc_sink;

/* Called once when a call is cancelled by the client or by its deadline,
 * before the End goes out, so the handler can stop its work (interrupt a
 * command, abandon a request). `why` is the End it gets (valid during the call): CANCELLED
 * (reason `cancelled` for the client's Cancel, `connection_closed` for a connection that went)
 * or DEADLINE_EXCEEDED, or the server's own reason (moat_rpc_call_cancel_with). */
typedef void (*moat_rpc_cancel_fn)(moat_rpc_call *call, const moat_status *why, void *arg);

/* Opens a call of `method` on stream_id. deadline_ms is the Call frame's
 * relative deadline (0 = none), counted from now_ms (a monotonic clock in ms).
 * sink and sink_user must outlive the call's End. The call starts with one
 * reference, owned by the caller. NULL on allocation failure. */
moat_rpc_call *moat_rpc_call_new(const moat_rpc_method *method, uint32_t stream_id,
                                 uint64_t deadline_ms, uint64_t now_ms, const moat_rpc_sink *sink,
                                 void *sink_user);
/* References: whoever keeps a pointer across loop iterations (e.g. an
 * asynchronous handler) holds one. The last unref frees the call (and, if it
 * had not ended, ends it first with CANCELLED, so every call gets its End). */
void moat_rpc_call_ref(moat_rpc_call *call);
void moat_rpc_call_unref(moat_rpc_call *call);

const moat_rpc_method *moat_rpc_call_method(const moat_rpc_call *call);
uint32_t moat_rpc_call_stream_id(const moat_rpc_call *call);
moat_rpc_state moat_rpc_call_state(const moat_rpc_call *call);
/* Absolute monotonic ms at which the deadline passes; 0 when none. */
uint64_t moat_rpc_call_deadline(const moat_rpc_call *call);
/* Opaque pointer for the handler; the call never touches it. */
void moat_rpc_call_set_data(moat_rpc_call *call, void *data);
void *moat_rpc_call_get_data(const moat_rpc_call *call);

/* The request message arrived: decodes it with the method's request
 * descriptor and moves the call to RUNNING. *out is owned by the call and
 * freed with it (valid until the last unref). MOAT_E_STATE for a second
 * request or an ended call; MOAT_E_PROTO when it does not decode (the call is
 * then ended INVALID_ARGUMENT). */
moat_err moat_rpc_call_request(moat_rpc_call *call, const uint8_t *payload, size_t len,
                               const ProtobufCMessage **out);

/* A further request message of a client-streaming call: msg (the method's request type) is
 * owned by the call and freed when the hook returns; len is its encoded size, which the handler
 * gives back with moat_rpc_call_input_done once it has used the input. */
typedef void (*moat_rpc_input_fn)(moat_rpc_call *call, const ProtobufCMessage *msg, size_t len,
                                  void *arg);

/* A request message after the first, of a client-streaming method. It is decoded and checked
 * like the first (a bad one ends the call INVALID_ARGUMENT: MOAT_E_PROTO or MOAT_E_INVAL), then
 * handed to the input hook, or held in order until the handler sets one: what the transport's
 * window lets a client send bounds what is held. MOAT_OK, also when the call has ended (the
 * message is dropped); MOAT_E_STATE when the method takes one request or the first has not come;
 * MOAT_E_NOMEM. */
moat_err moat_rpc_call_input(moat_rpc_call *call, const uint8_t *payload, size_t len);
/* Sets the input hook (NULL: hold what comes) and hands it what was held, in order, until the
 * call ends (what is left then is dropped). */
void moat_rpc_call_on_input(moat_rpc_call *call, moat_rpc_input_fn fn, void *arg);
/* The handler has used len bytes of input: the sink's input_done returns the credit. */
void moat_rpc_call_input_done(moat_rpc_call *call, size_t len);

/* Packs msg (must be of the method's response type) and hands it to the sink.
 * MOAT_E_STATE once the call has ended, when it is not RUNNING, or for a second
 * response of a unary method; MOAT_E_INVAL for a message of another type. The
 * caller keeps ownership of msg. */
moat_err moat_rpc_call_send(moat_rpc_call *call, const ProtobufCMessage *msg);
/* Unary convenience: send msg then end OK. If the send fails the call still
 * ends: RESOURCE_EXHAUSTED "response_too_large" for MOAT_E_TOO_BIG, INTERNAL
 * otherwise (nothing happens on an already ended call). Returns the send's error. */
moat_err moat_rpc_call_reply(moat_rpc_call *call, const ProtobufCMessage *msg);

/* Ends the call with st (copied). Returns false, doing nothing, if it had
 * already ended (a cancel or deadline got there first). An OK End for a unary
 * call that sent no response becomes INTERNAL "handler sent no response". */
bool moat_rpc_call_end(moat_rpc_call *call, const moat_status *st);
/* Shorthand for moat_rpc_call_end with a code, reason and message. */
bool moat_rpc_call_fail(moat_rpc_call *call, moat_code code, const char *reason, const char *fmt,
                        ...) __attribute__((format(printf, 4, 5)));

/* Registers the handler's cancel hook (replacing any earlier one). */
void moat_rpc_call_on_cancel(moat_rpc_call *call, moat_rpc_cancel_fn fn, void *arg);
/* Cancels: runs the cancel hook once, then ends the call with `code`
 * (CANCELLED or DEADLINE_EXCEEDED) and `why` as its message. No effect on an
 * ended call; returns whether it did anything. */
bool moat_rpc_call_cancel(moat_rpc_call *call, moat_code code, const char *why);
/* The same with the End's whole status (any code, reason and details), for a call the server
 * stops for a reason of its own (a broken request stream, a closed connection). */
bool moat_rpc_call_cancel_with(moat_rpc_call *call, const moat_status *st);
/* Cancels with DEADLINE_EXCEEDED if now_ms is at or past the deadline.
 * Returns true when it did. */
bool moat_rpc_call_check_deadline(moat_rpc_call *call, uint64_t now_ms);

/* Number of response messages sent so far. */
uint64_t moat_rpc_call_sent(const moat_rpc_call *call);

#ifdef __cplusplus
}
#endif
#endif
