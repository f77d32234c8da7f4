/* Calls from this moatd to the other nodes of its cluster (docs/CLUSTER.md, "Between nodes"):
 * the one place that dials a peer, says Hello with the cluster's token, pools connections,
 * times out connects and Hellos, evicts dead connections and maps a peer's End to a status.
 * Both users go through it: a create forwarded to the node placed for it (cluster_place.c, from
 * a worker, moat__peer_unary) and a call relayed to its session's owner (cluster_proxy.c, on the
 * loop, moat__peer_call_open).
 *
 * The pool (srv's peers, made by moat__peers_init in cluster mode, freed by moat__peers_close
 * once no job runs) keeps at most PEER_CONNS_MAX connections per peer address, each carrying
 * up to the peer's max_concurrent_streams calls at once: a call goes on the first with room,
 * else on a new one while there are fewer, else waits for a slot on the least busy. A
 * connection that fails, closes, does not answer its Hello within hello_timeout_seconds, or
 * sends what does not decode leaves the pool at once and fails its calls; one that sent GoAway
 * finishes its calls and takes no new one. Loop thread only, except moat__peer_unary. */
#ifndef MOAT_SERVER_CLUSTER_PEER_H
#define MOAT_SERVER_CLUSTER_PEER_H

#include "server_internal.h"

#define PEER_CONNS_MAX 4u

typedef struct peer_call peer_call;

/* What a call reports, each with the call and the ud given to moat__peer_call_open. started may
 * come before moat__peer_call_open returns; the others come from the loop later. */
typedef struct peer_call_ops {
    /* Its Call and request went out; window: the peer's credit for further input. */
    void (*started)(peer_call *c, void *ud, uint32_t window);
    /* A response message; payload is valid during the call only. */
    void (*message)(peer_call *c, void *ud, moat_slice payload);
    /* The peer granted more credit for input. */
    void (*window)(peer_call *c, void *ud, uint32_t increment);
    /* The call is over: end is the peer's End, or NULL and failed says why the peer could not
     * be reached or the connection was lost. c is freed once this returns. */
    void (*ended)(peer_call *c, void *ud, const moat_status *end, const char *failed);
} peer_call_ops;

/* Opens a call of method on the peer at address ("host:port") with one request message (copied),
 * its deadline deadline_at (moat__now_ms clock, 0 for none) sent as what is left of it when the
 * call starts. ops (static) report to ud until ended, or until moat__peer_call_cancel. NULL when
 * out of memory, address is not host:port or the call could not be sent: nothing is reported
 * then. */
peer_call *moat__peer_call_open(srv *s, const char *address, const char *method, moat_slice request,
                                uint64_t deadline_at, const peer_call_ops *ops, void *ud);
/* Whether the peer answered the Ping sent after c's Call: its loop has read the call, where a
 * stuck node's kernel takes it alone. */
bool moat__peer_call_heard(const peer_call *c);
/* One more input message (client streaming), within the credit the peer gave. */
bool moat__peer_call_send(peer_call *c, moat_slice payload);
/* Lets the peer send increment more bytes of responses. A no-op before started. */
void moat__peer_call_window(peer_call *c, uint32_t increment);
/* Ends the call here: the peer gets a Cancel with why if it had the call; c is freed and
 * nothing more is reported. Not from within ended. */
void moat__peer_call_cancel(peer_call *c, const char *why);

/* One unary call from a worker thread, through the loop's pool: *response (free()) gets the
 * answer's message. The peer's status as it ended the call, or UNAVAILABLE "peer_unavailable"
 * (detail owner_address) when it could not be reached, had not taken the call (read it, by
 * its Pong) within the smaller of timeout_ms and PEER_CONNECT_MS, or did not answer within
 * timeout_ms. Blocking; not on the loop. */
#define PEER_CONNECT_MS 3000u
moat_code moat__peer_unary(srv *s, const char *address, const char *method, moat_slice request,
                           uint64_t timeout_ms, uint8_t **response, size_t *response_len,
                           moat_status *st);

/* The pool in cluster mode (nothing otherwise); closed with the server, after its jobs. */
moat_err moat__peers_init(srv *s);
void moat__peers_close(srv *s);

/* Between the pool and cluster_peer_unary.c: the workers' inbox, made and closed with the pool
 * (NULL when out of memory), and the pool's (NULL outside a cluster). */
typedef struct peer_inbox peer_inbox;
peer_inbox *moat__peer_inbox_new(srv *s);
void moat__peer_inbox_close(peer_inbox *in);
peer_inbox *moat__peers_inbox(srv *s);

#endif
