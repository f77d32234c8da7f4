/* A real etcd cluster of a test's own: three members (Debian's etcd-server) on loopback ports,
 * data and logs in a fresh directory under /tmp. Each member dies with the test process
 * (PR_SET_PDEATHSIG), and etcd_cluster_stop removes the directory, so nothing outlives a run. */
#ifndef MOAT_TEST_ETCD_CLUSTER_H
#define MOAT_TEST_ETCD_CLUSTER_H

#include <stdbool.h>
#include <sys/types.h>

#include "cluster/membership.h"

#define ETCD_CLUSTER_MEMBERS 3
#define ETCD_BINARY          "/usr/bin/etcd"

/* A cluster that serves its client URLs over TLS (https://; the peers stay plain on loopback):
 * each member presents cert and key and, with --client-cert-auth, takes only clients whose
 * certificate ca signed; the harness's own clients (its readiness check, etcd_cluster_open)
 * present client. Every path is the caller's, kept for as long as the cluster runs. */
typedef struct etcd_cluster_tls {
    const char *ca;
    const char *cert, *key;
    moat_etcd_tls client;
} etcd_cluster_tls;

typedef struct etcd_cluster {
    char dir[64];
    const etcd_cluster_tls *tls; /* NULL: plain http:// */
    /* Each member's certificate and key (tls->cert and tls->key at start); a test changes one
     * for the member's next etcd_cluster_restart. */
    const char *cert[ETCD_CLUSTER_MEMBERS], *key[ETCD_CLUSTER_MEMBERS];
    int client_port[ETCD_CLUSTER_MEMBERS];
    int peer_port[ETCD_CLUSTER_MEMBERS];
    pid_t pid[ETCD_CLUSTER_MEMBERS];        /* 0 when not running */
    char url[ETCD_CLUSTER_MEMBERS][64];     /* http:// or, with tls, https:// */
    const char *urls[ETCD_CLUSTER_MEMBERS]; /* url[i], for moat_etcd_config */
} etcd_cluster;

/* Whether the etcd binary is installed. */
bool etcd_cluster_available(void);
/* Starts the three members (with tls, NULL for none) and waits (bounded by wait_s) until a write
 * through each of them commits. 0, or -1 (the members' logs are in dir, which etcd_cluster_stop
 * removes). */
int etcd_cluster_start(etcd_cluster *c, const etcd_cluster_tls *tls, int wait_s);
/* SIGKILL to one member. */
void etcd_cluster_kill(etcd_cluster *c, int member);
/* Starts a killed member again on its data. 0 or -1. */
int etcd_cluster_restart(etcd_cluster *c, int member);
/* Kills every member and removes the directory. Safe on a cluster that did not start. */
void etcd_cluster_stop(etcd_cluster *c);

/* What the tests' group setups share: a started cluster (with tls, NULL for none) and a client
 * for all its members (500 ms to connect, request_timeout_ms an exchange, tls->client). 0, also
 * when etcd is not installed (each test then skips, saying so), or -1 after printing the
 * members' logs and removing the rest. */
int etcd_cluster_open(etcd_cluster *c, const etcd_cluster_tls *tls, moat_etcd **etcd,
                      long request_timeout_ms, int wait_s);
/* Closes *etcd (may be NULL), which becomes NULL, and stops the cluster: safe to call again, and
 * on what etcd_cluster_open did not start (a group teardown after a failed setup). */
void etcd_cluster_close(etcd_cluster *c, moat_etcd **etcd);
/* In a test: skips it (fails it under CI=true) when etcd is not installed. */
#define ETCD_REQUIRE()                                                                             \
    moat_require(etcd_cluster_available(), "etcd is not installed (apt-get install etcd-server)")

/* For the tests' waits. */
void etcd_cluster_sleep_ms(long ms);
/* How many keys etcd holds at key (0 or 1), or -1 when it did not answer. */
long etcd_cluster_key_count(moat_etcd *etcd, const char *key);
/* Whether the member list (read through etcd) has the node id; *out (may be NULL) gets it. */
bool etcd_cluster_lists_node(moat_etcd *etcd, const char *id, moat_node *out);

/* Waits for a condition, polling every 50 ms, at most wait_s seconds: a generous bound on
 * something that must happen (an expiry, an election), never a measurement. Then asserts it
 * (cmocka). */
#define ETCD_WAIT_FOR(cond, wait_s)                                                                \
    do {                                                                                           \
        for (int tick_ = 0; !(cond) && tick_ < (wait_s)*20; tick_++)                               \
            etcd_cluster_sleep_ms(50);                                                             \
        assert_true(cond);                                                                         \
    } while (0)

#endif
