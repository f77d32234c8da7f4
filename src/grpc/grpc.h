/* moat grpc: the parts of gRPC over HTTP/2 that are not HTTP/2 itself, with no I/O: the
 * length-prefixed message codec, grpc-timeout, the checks of a request's headers, and the
 * trailers' encodings (grpc-message percent-encoding, grpc-status-details-bin as base64 of a
 * google.rpc.Status). The HTTP/2 connection on libnghttp2 is h2.h, beside this.
 *
 * Every function is bounded by the sizes it is given and allocates only where it says so. */
#ifndef MOAT_GRPC_H
#define MOAT_GRPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/common.h"
#include "rpc/rpc.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- messages: a 1-byte compressed flag, a 4-byte big-endian length, the bytes ------------- */

#define MOAT_GRPC_PREFIX_SIZE 5

/* Writes the prefix of an uncompressed message of len bytes. */
void moat_grpc_message_prefix(uint8_t out[MOAT_GRPC_PREFIX_SIZE], uint32_t len);

/* Splits a request's DATA bytes into messages, fed in pieces of any size. */
typedef struct moat_grpc_decoder {
    size_t max;                          /* largest message accepted */
    uint8_t head[MOAT_GRPC_PREFIX_SIZE]; /* the prefix being read */
    size_t head_len;                     /* its bytes seen */
    uint8_t *body;                       /* a message split across feeds, or NULL */
    size_t body_len, body_want;          /* bytes held and declared */
    bool in_body;                        /* the prefix is complete */
    char reason[96];                     /* why the last feed failed */
} moat_grpc_decoder;

void moat_grpc_decoder_init(moat_grpc_decoder *d, size_t max_message);
void moat_grpc_decoder_free(moat_grpc_decoder *d);
/* Takes bytes from p[0..len) until one message is complete: MOAT_OK with *msg set (pointing
 * into p, or into the decoder until the next feed or free), MOAT_E_AGAIN when all len bytes were
 * taken and no message is complete. *used says how many bytes were taken either way. Errors,
 * after which the decoder is spent: MOAT_E_TOO_BIG for a declared length over max (refused
 * before anything is allocated), MOAT_E_UNSUPPORTED for a set compressed flag (moatd negotiates
 * no compression), MOAT_E_PROTO for a flag other than 0 or 1, MOAT_E_NOMEM. */
moat_err moat_grpc_decoder_feed(moat_grpc_decoder *d, const uint8_t *p, size_t len, size_t *used,
                                moat_slice *msg);
/* Whether part of a message has been taken (the stream must not end there). */
bool moat_grpc_decoder_partial(const moat_grpc_decoder *d);
/* Why the last feed failed; "" when it did not. Static storage inside d. */
const char *moat_grpc_decoder_reason(const moat_grpc_decoder *d);

/* ---- grpc-timeout ------------------------------------------------------------------------ */

/* Parses a grpc-timeout value: 1 to 8 ASCII digits, then one unit of H M S m u n. *ms is the
 * timeout rounded up to whole milliseconds (a positive timeout is at least 1 ms; 0 stays 0, an
 * expired deadline). MOAT_E_INVAL for anything else. */
moat_err moat_grpc_timeout_parse(const char *value, size_t len, uint64_t *ms);

/* ---- request headers --------------------------------------------------------------------- */

/* How to answer a request whose headers are in. */
typedef enum moat_grpc_verdict {
    MOAT_GRPC_ACCEPT = 0, /* open the call */
    MOAT_GRPC_HTTP_ERROR, /* answer with http_status alone, no gRPC status (not a gRPC request) */
    MOAT_GRPC_GRPC_ERROR, /* answer with status in trailers only */
} moat_grpc_verdict;

/* A bearer token as long as this is refused without comparing it. */
#define MOAT_GRPC_TOKEN_MAX 512

/* What a request's headers say, gathered one header at a time (HTTP/2 and HPACK are nghttp2's:
 * names arrive lowercase, validated, pseudo-headers first). Fixed size: nothing allocated. */
typedef struct moat_grpc_request {
    size_t header_bytes, max_header_bytes; /* name + value + 32 per header, as HTTP/2 counts */
    bool too_big;
    bool post, content_type_ok, content_type_seen, te_trailers;
    bool bad_timeout, has_timeout;
    bool encoding_unsupported; /* grpc-encoding other than identity */
    bool has_auth, auth_malformed;
    const moat_rpc_method *method; /* the :path's method, NULL when unknown */
    bool reflection;               /* the :path is server reflection's stream (reflection.h) */
    char path[128];                /* the :path, cut to fit (for messages) */
    uint64_t timeout_ms;
    uint8_t token[MOAT_GRPC_TOKEN_MAX];
    size_t token_len;
} moat_grpc_request;

/* max_header_bytes bounds the sum over headers of name + value + 32. */
void moat_grpc_request_init(moat_grpc_request *r, size_t max_header_bytes);
/* One header; name and value need not be NUL-terminated and are not kept. */
void moat_grpc_request_header(moat_grpc_request *r, const uint8_t *name, size_t nlen,
                              const uint8_t *value, size_t vlen);

/* Checks a presented bearer token in constant time (the server's token comparison). */
typedef bool (*moat_grpc_token_check)(const uint8_t *token, size_t len, void *ud);

/* Decides once the headers are in: the HTTP checks (POST, content-type application/grpc or
 * application/grpc+proto, else 415), then the header list size, then the token (when
 * token_required, except for grpc.health.v1, which probes call without one: check says whether
 * it matches), then the method, grpc-encoding, te and grpc-timeout. Fills *http_status (200
 * unless MOAT_GRPC_HTTP_ERROR) and, for a gRPC error, st with its code and reason. */
moat_grpc_verdict moat_grpc_request_finish(const moat_grpc_request *r, bool token_required,
                                           moat_grpc_token_check check, void *ud, int *http_status,
                                           moat_status *st);

/* ---- trailers ---------------------------------------------------------------------------- */

/* grpc-message of a status message of at most MOAT_STATUS_MESSAGE_MAX bytes fits this. */
#define MOAT_GRPC_MESSAGE_MAX (3 * MOAT_STATUS_MESSAGE_MAX + 1)
/* Percent-encodes in as gRPC's spec asks for grpc-message (bytes outside 0x20-0x7E and '%'
 * become %XX) into out, NUL-terminated. MOAT_E_TOO_BIG when it does not fit (out holds what
 * did). */
moat_err moat_grpc_percent_encode(const char *in, size_t len, char *out, size_t cap);
/* The reverse, for clients and tests: a '%' not followed by two hex digits is kept as it is, as
 * the spec asks. out gets at most cap-1 bytes and a NUL; returns the decoded length. */
size_t moat_grpc_percent_decode(const char *in, size_t len, char *out, size_t cap);

/* Base64 with the standard alphabet. encode writes no padding (the spec's "should emit
 * unpadded") and a NUL; MOAT_E_TOO_BIG when out is short. decode accepts padded and unpadded
 * text; MOAT_E_INVAL for anything else, MOAT_E_TOO_BIG when out is short. */
moat_err moat_grpc_base64_encode(const uint8_t *in, size_t len, char *out, size_t cap);
moat_err moat_grpc_base64_decode(const char *in, size_t len, uint8_t *out, size_t cap,
                                 size_t *out_len);

/* grpc-status-details-bin of any moat_status fits this (its strings are bounded). */
#define MOAT_GRPC_DETAILS_MAX 4096
/* grpc-status-details-bin: base64 of a google.rpc.Status {code, message, details: [Any of a
 * google.rpc.ErrorInfo {reason, domain "moat", metadata: the status's details}]} into out,
 * NUL-terminated. "" (MOAT_OK) for an OK status without a reason: there is nothing to say. */
moat_err moat_grpc_status_details(const moat_status *st, char *out, size_t cap);
/* Decodes such a value back into st (code, message, reason, details), for clients and tests.
 * MOAT_E_INVAL for what is not base64 of a google.rpc.Status. */
moat_err moat_grpc_status_details_parse(const char *value, size_t len, moat_status *st);

#ifdef __cplusplus
}
#endif
#endif
