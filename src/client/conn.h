/* The connection's and a call's state, shared by client.c (the connection: connect and Hello,
 * writing frames, reading and dispatching them, keepalive) and stream.c (a call on it: start,
 * recv, send with flow control, following session_moved, cancel, free, unary); no other file
 * or test sees inside them. */
#ifndef MOAT_CLIENT_CONN_H
#define MOAT_CLIENT_CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "client.h"
#include "wire/wire.h"

/* A queued message costs its payload plus this length prefix. */
#define QUEUE_PREFIX 4u
/* Method names a followed call keeps ("/moat.v1.Sandboxes/RenewSession" is 32). */
#define METHOD_MAX 64u

struct moat_call {
    moat_client *client;
    uint32_t id;
    moat_window recv_window;
    moat_window send_window; /* credit for request messages (moat_call_send) */
    uint32_t send_need;      /* what a waiting moat_call_send needs of it */
    uint32_t unreleased;     /* size of the last delivered message, released on the next recv */
    moat_buf queue; /* [u32 len][payload]… messages that arrived while reading another call */
    size_t queue_head;
    bool ended;
    bool end_reported;
    int64_t deadline_at_ms; /* 0: none */
    moat_status status;
    moat_call *next; /* all calls of the client */
    /* Following session_moved (docs/CLUSTER.md, "Routing"): only typed calls
     * that name a session follow, and only until their first answer. */
    bool follow;
    bool moved;          /* ended session_moved before any answer */
    bool moved_too_long; /* its owner_address did not fit moved_to */
    uint8_t hops;        /* session_moved answers followed so far */
    char moved_to[MOAT__ADDR_MAX + 1];
    char session[MOAT__SESSION_MAX]; /* "" when the id did not fit: followed, not cached */
    char method[METHOD_MAX];
    moat_slice request_ref; /* the request, borrowed from a unary call's caller */
    moat_buf replay; /* or copied: [u32 len][payload]…, the request and what moat_call_send sent */
};

struct moat_client {
    int fd;
    bool broken;
    bool go_away;
    uint32_t go_away_last;
    moat_status broken_status;
    moat_client_limits limits;
    moat_wire_decoder decoder;
    moat_stream_table *streams;
    uint32_t next_id;
    uint8_t *rbuf;
    size_t rpos, rlen;
    uint8_t *wbuf; /* one frame: max_frame_size + prefix */
    size_t wcap;
    uint8_t *mbuf;         /* a queued message copied out for delivery */
    moat__scratch scratch; /* typed calls' buffers, made on the first one */
    int splice_pipe[2];    /* moat__client_splice_pipe's; valid when splice_made */
    bool splice_made;
    int splice_from; /* the descriptor last asked about, or -1, and whether it splices */
    bool splice_ok;
    moat_call *calls;
    uint64_t ping_seq;
    bool pong_seen;
    int64_t last_send_ms;
    /* Routing: the address this connection was opened to, and the client the
     * caller holds (itself on the connection moat_client_connect made, which
     * alone has a router: its connections to other nodes and the owner cache). */
    char *addr;
    moat_client *top;
    moat__router *router;
};

/* Monotonic milliseconds, for deadlines and keepalive. */
int64_t moat__client_mono_ms(void);
/* Writes every byte of v[0..cnt), which it advances, with sendmsg's flags; MOAT_E_IO (and every
 * call of c failed) when the connection breaks. */
moat_err moat__client_write_iov_flags(moat_client *c, struct iovec *v, int cnt, int flags);
/* moat__client_write_iov_flags without flags. */
moat_err moat__client_write_iov(moat_client *c, struct iovec *v, int cnt);
/* What a write that returned w means: 1 when w bytes went, 0 to try again, -1 when the
 * connection broke (every call failed). */
int moat__client_write_outcome(moat_client *c, ssize_t w);
/* Encodes f into c's frame buffer and writes it; MOAT_E_CLOSED on a broken connection. */
moat_err moat__client_send_frame(moat_client *c, const moat_frame *f);
/* Writes a WindowUpdate (value: the increment) or a Ping/Pong (value: its payload). */
moat_err moat__client_send_small(moat_client *c, moat_frame_kind kind, uint32_t stream,
                                 uint64_t value);
/* Reads and dispatches c's frames until done(c, want) says stop (MOAT_OK), a message for want
 * is handed out in *deliver (MOAT_E_AGAIN; it points into c's read buffer or its decoder's, so it
 * is valid until c reads again; deliver NULL: every message is queued), the timeout passes or the
 * connection breaks. */
moat_err moat__client_pump(moat_client *c, moat_call *want, moat_slice *deliver, int timeout_ms,
                           bool (*done)(moat_client *c, moat_call *want));
/* Ends call with the given status (once) and closes its stream. */
void moat__call_end(moat_call *call, moat_code code, const char *reason, const char *msg);
/* The call has answered (or can no longer be re-issued): drops its kept request. */
void moat__call_stop_following(moat_call *call);
/* Frees the call's queue and kept request, not the call itself (stream.c). */
void moat__call_free_buffers(moat_call *call);

#endif
