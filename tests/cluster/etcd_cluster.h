/* A real etcd cluster of a test's own: three members (Debian's etcd-server) on loopback ports,
 * data and logs in a fresh directory under /tmp. Each member dies with the test process
 * (PR_SET_PDEATHSIG), and etcd_cluster_stop removes the directory, so nothing outlives a run. */
#ifndef MOAT_TEST_ETCD_CLUSTER_H
#define MOAT_TEST_ETCD_CLUSTER_H

#include <stdbool.h>
#include <sys/types.h>

#define ETCD_CLUSTER_MEMBERS 3
#define ETCD_BINARY          "/usr/bin/etcd"

typedef struct etcd_cluster {
    char dir[64];
    int client_port[ETCD_CLUSTER_MEMBERS];
    int peer_port[ETCD_CLUSTER_MEMBERS];
    pid_t pid[ETCD_CLUSTER_MEMBERS]; /* 0 when not running */
    char url[ETCD_CLUSTER_MEMBERS][64];
    const char *urls[ETCD_CLUSTER_MEMBERS]; /* url[i], for moat_etcd_config */
} etcd_cluster;

/* Whether the etcd binary is installed. */
bool etcd_cluster_available(void);
/* Starts the three members and waits (bounded by wait_s) until a write through any of them
 * commits. 0, or -1 (the members' logs are in dir). */
int etcd_cluster_start(etcd_cluster *c, int wait_s);
/* SIGKILL to one member. */
void etcd_cluster_kill(etcd_cluster *c, int member);
/* Starts a killed member again on its data. 0 or -1. */
int etcd_cluster_restart(etcd_cluster *c, int member);
/* Kills every member and removes the directory. Safe on a cluster that did not start. */
void etcd_cluster_stop(etcd_cluster *c);

#endif
