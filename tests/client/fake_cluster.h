/* Fake moat cluster nodes for libmoat's routing tests and bench: real TCP
 * listeners on loopback ephemeral ports, all served by one thread with poll,
 * speaking frames through moat_wire. A node answers every call itself, or
 * (with moved_to set) ends each call that names a session FAILED_PRECONDITION
 * session_moved with owner_address moved_to, as a moatd in a cluster does
 * for a session another node holds. Counters and settings are read and
 * changed under fake_cluster_lock. */
#ifndef MOAT_TEST_FAKE_CLUSTER_H
#define MOAT_TEST_FAKE_CLUSTER_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#define FAKE_NODES_MAX 4
#define FAKE_CONNS_MAX 32

typedef struct fake_node {
    int lfd; /* -1 once down */
    int port;
    char addr[32]; /* "127.0.0.1:port" */
    /* Behaviour */
    char moved_to[512];    /* "": answer; else session_moved to this owner_address */
    char create_owner[64]; /* CreateSession's answer names this owner_address ("": none) */
    bool hang;             /* calls get no answer at all */
    /* Counters */
    int connections;
    int calls;
    int messages; /* request messages of all calls */
    uint64_t last_deadline_ms;
    char last_stdin[64]; /* stdin of the last Interactive call, as received */
} fake_node;

typedef struct fake_cluster fake_cluster;

/* Starts n nodes (n <= FAKE_NODES_MAX); NULL on failure. */
fake_cluster *fake_cluster_start(int n);
/* Stops the thread, closes everything; true if no check on the server side failed. NULL is fine. */
bool fake_cluster_stop(fake_cluster *f);
fake_node *fake_cluster_node(fake_cluster *f, int i);
void fake_cluster_lock(fake_cluster *f);
void fake_cluster_unlock(fake_cluster *f);
/* Closes node i's listener and connections: connects to it are refused from then on. */
void fake_cluster_down(fake_cluster *f, int i);

#endif
