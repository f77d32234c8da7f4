/* libmoat's internals, shared by its files and its tests; not installed. */
#ifndef MOAT_CLIENT_INTERNAL_H
#define MOAT_CLIENT_INTERNAL_H

#include <stdbool.h>
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
/* Whether the call keeps what it sends, to send it again where its session moves (then every
 * byte must pass through a buffer of ours). */
bool moat__call_records(const moat_call *call);
/* The client's own pipe for splicing from `from` (made on the first use, closed with the
 * client; empty between messages): its write end, and its read end in *read_end; -1 if it
 * cannot be made, or `from` is neither a pipe nor a file (a terminal's keystrokes are read,
 * one syscall each, as before), or splice refused it (moat__client_splice_refused). What
 * `from` is is looked up once, while it is the descriptor asked about. */
int moat__client_splice_pipe(moat_client *c, int from, int *read_end);
void moat__client_splice_refused(moat_client *c, int from);
/* moat__call_send_parts of head and the len bytes that wait in pipe_fd (a pipe holding at
 * least len), which splice moves to the connection: the kernel hands over the pipe's pages
 * instead of copying them through a buffer. Not for a call that records. */
moat_err moat__call_send_spliced(moat_call *call, moat_slice head, int pipe_fd, size_t len,
                                 int timeout_ms);

/* moat_call_start that fills st (not NULL) when the call cannot start. */
moat_err moat__call_start(moat_client *c, const char *method, uint64_t deadline_ms,
                          moat_slice request, moat_call **out, moat_status *st);

/* Following session_moved (docs/CLUSTER.md, "Routing"; route.c). */

/* The longest owner_address followed: a DNS name (253 bytes) in brackets with
 * a port. A longer one is bad_redirect. */
#define MOAT__ADDR_MAX 261u
/* Session ids kept for routing: a UUID is 36 bytes; a longer id is followed
 * but not cached. */
#define MOAT__SESSION_MAX 64u

typedef struct moat__router moat__router;

/* moat_client_connect without a router: one connection, as those to other nodes are. */
moat_err moat__connect(const char *addr, const moat_client_options *opts, moat_client **out,
                       moat_status *st);

/* Made for the client moat_client_connect returns, with what a connection to
 * another node is opened with (copied). NULL when out of memory. */
moat__router *moat__router_new(const char *seed, const moat_client_options *opts);
/* Closes every connection to another node (and frees their calls). */
void moat__router_free(moat__router *r);
/* The router of the client the caller holds (NULL on other connections). */
moat__router *moat__client_router(const moat_client *c);
/* The client the caller holds, for any of its connections. */
moat_client *moat__client_top(const moat_client *c);
/* Whether new calls can start on c, and whether it has calls not yet freed. */
bool moat__client_usable(const moat_client *c);
bool moat__client_busy(const moat_client *c);
/* Takes in what c's socket holds without waiting: a connection the server
 * closed or is closing while idle is found out before a call is put on it. */
void moat__client_poll(moat_client *c);
/* Makes c a connection of top's (not the caller's to close). */
void moat__client_adopt(moat_client *c, moat_client *top);

/* The connection a call for session_id goes to first: its cached owner's (a
 * cached owner that cannot be reached is dropped and top is used), else top. */
moat_client *moat__route(moat_client *top, const char *session_id, uint64_t deadline_ms);
/* Remembers that session_id lives at addr (ignored when addr is not one
 * libmoat would follow). */
void moat__route_learn(moat_client *top, moat_slice session_id, moat_slice addr);
/* The connection to addr, opened when there is none, within timeout_ms (<= 0:
 * the client's connect timeout). NULL with st set when it cannot be reached. */
moat_client *moat__route_conn(moat_client *top, const char *addr, int timeout_ms, moat_status *st);
/* Forgets session_id's owner. */
void moat__route_forget(moat_client *top, const char *session_id);
/* Tells the caller's redirect callback, if any. */
void moat__route_notify(moat_client *top, const char *session_id, const char *from, const char *to);
/* Whether addr is a host:port libmoat follows: at most MOAT__ADDR_MAX bytes,
 * a host of letters, digits, '.', '-', '_' (or an IPv6 address in brackets)
 * and a port 1 to 65535. */
bool moat__addr_ok(moat_slice addr);
/* The address a connection was opened to. */
const char *moat__client_addr(const moat_client *c);

/* A call for session_id started on its owner's connection, re-issued on the
 * connection to the owner when it ends session_moved before any answer. With
 * borrow the request is used in place (it must outlive the call: a unary
 * call); otherwise it is copied. */
moat_err moat__routed_start(moat_client *c, const char *session_id, const char *method,
                            uint64_t deadline_ms, moat_slice request, bool borrow, moat_call **out,
                            moat_status *st);
/* A unary call as moat_client_unary, routed and followed as moat__routed_start. */
moat_err moat__routed_unary(moat_client *c, const char *session_id, const char *method,
                            uint64_t deadline_ms, moat_slice request, uint8_t *resp, size_t cap,
                            size_t *resp_len, moat_status *st);

#endif
