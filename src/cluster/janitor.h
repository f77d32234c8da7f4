/* The janitor (docs/CLUSTER.md, "Reaping: by ownership"): the session records of nodes gone for
 * good are removed by one node of the cluster, elected through the key /moat/v1/janitor (a
 * transaction on its create revision, the key under the winner's lease: etcd's election
 * recipe; when the janitor's lease goes, so does the key, and another node takes it). A record
 * is its node's while that node is a member under the record's lease; once the janitor has seen
 * an incarnation's records without their node for the grace period, it deletes them, each only
 * if unchanged since it looked. Until then GetSession answers them GONE node_lost; after, as
 * unknown. A new janitor counts the grace from its own first sight, so a failover only delays. */
#ifndef MOAT_CLUSTER_JANITOR_H
#define MOAT_CLUSTER_JANITOR_H

#include <stdint.h>

#include "cluster/membership.h"

#define MOAT_JANITOR_KEY "/moat/v1/janitor"

typedef struct moat_janitor_config {
    moat_etcd *etcd;         /* borrowed: outlives the janitor */
    moat_membership *member; /* borrowed: the lease the election key lives under */
    const char *node_id;     /* copied */
    int64_t grace_ms;        /* how long an incarnation is gone before its records are */
} moat_janitor_config;

typedef struct moat_janitor moat_janitor;

/* Starts the thread that stands for election and, once elected, sweeps every half grace (at
 * least every second, at most every minute). NULL when out of memory or threads. */
moat_janitor *moat_janitor_start(const moat_janitor_config *cfg);
/* Stops the thread and frees j. A key this node held goes with its lease (revoked as it
 * leaves, or expired). NULL is fine. */
void moat_janitor_stop(moat_janitor *j);

#endif
