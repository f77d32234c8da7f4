/* libmoat's internals, shared by its files and its tests; not installed. */
#ifndef MOAT_CLIENT_INTERNAL_H
#define MOAT_CLIENT_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "moat/client.h"

/* Encodes ev as a server would into out[0..cap); MOAT_E_TOO_BIG if short.
 * For tests and benchmarks that play the server. */
moat_err moat_exec_event_encode(const moat_exec_event *ev, uint8_t *out, size_t cap, size_t *len);

/* Decodes a moat.v1.CommandStatus; slices point into payload. MOAT_E_PROTO
 * when it is malformed. */
moat_err moat__command_status_decode(moat_slice payload, moat_command_status *out);

/* The client's buffers for typed calls, each max_frame_size (cap) bytes and
 * owned by the client: request for encoding a request, response for a unary
 * call's answer, whose decoded slices stay valid until the next call. */
typedef struct moat__scratch {
    uint8_t *request;
    uint8_t *response;
    size_t cap;
} moat__scratch;

moat__scratch moat__client_scratch(moat_client *c);
/* The client a call belongs to. */
moat_client *moat__call_client(const moat_call *call);

/* moat_call_send of a payload that is head (a few bytes of encoding) followed by data, written
 * with one sendmsg from where they are: a bulk payload (stdin) is not copied into an encoded
 * request and then into a frame. */
moat_err moat__call_send_parts(moat_call *call, moat_slice head, moat_slice data, int timeout_ms);

/* moat_call_start that fills st (not NULL) when the call cannot start. */
moat_err moat__call_start(moat_client *c, const char *method, uint64_t deadline_ms,
                          moat_slice request, moat_call **out, moat_status *st);

#endif
