/* A fake cluster node on loopback for the hostile cases of calls between nodes (cluster_peer.c):
 * it serves up to 8 connections at once on its own thread, answers each Hello with a HelloAck
 * announcing max_streams, and then either closes a connection as soon as a call arrives on it,
 * or answers nothing more (mute), or ends every call with its own status (NOT_FOUND "fake_end",
 * detail fake_key=fake_value), once it has seen hold_until calls in all, and keeps the connection
 * open for the next, as a pooled one. A call past max_streams open on one connection is counted in
 * refused. */
#ifndef MOAT_TEST_FAKE_PEER_H
#define MOAT_TEST_FAKE_PEER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

typedef struct fake_peer {
    int lfd;
    char address[32]; /* 127.0.0.1:<port> */
    pthread_t thread;
    atomic_bool close_mid_call; /* the next calls get the connection closed on them */
    atomic_bool mute;           /* past Hellos, it answers nothing: a stuck node's kernel */
    atomic_int max_streams;     /* in its HelloAck; 8 unless set before the first connection */
    atomic_int hold_until;      /* calls are ended once this many came (0: at once) */
    atomic_int refused;         /* calls that came past max_streams on their connection */
    atomic_bool restart;        /* set: the open connection is closed, then it is cleared */
    atomic_bool stop;
    atomic_int accepted; /* connections taken */
    atomic_int calls;    /* Call frames seen */
} fake_peer;

/* Listens on an ephemeral loopback port and serves it on a thread; false on failure. */
bool fake_peer_start(fake_peer *f);
/* Closes its open connections as a restarted process would, and returns once it has. */
void fake_peer_restart(fake_peer *f);
void fake_peer_stop(fake_peer *f);

/* A loopback listener that never accepts: connections to it complete in the kernel's backlog
 * and nothing answers their Hello. Its fd (close() it), address into address; -1 on failure. */
int silent_peer_open(char address[32]);

#endif
