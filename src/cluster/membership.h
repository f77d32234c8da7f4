/* Cluster membership (docs/CLUSTER.md, "Membership"): each moatd holds an etcd lease and, under
 * it, the key /moat/v1/nodes/<node-id> with its address, capacity and load. A node whose lease
 * expires drops out of the member list by etcd's doing; no failure detector is written here.
 *
 * - the node record codec (node.c): the key and the JSON value. No I/O, bounded.
 * - the membership (membership.c): registration, and a thread that keeps the lease alive,
 *   republishes the load, fences the node when it cannot prove its lease is held, and
 *   registers it again once etcd answers.
 * - the member list: one prefix range. */
#ifndef MOAT_CLUSTER_MEMBERSHIP_H
#define MOAT_CLUSTER_MEMBERSHIP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cluster/etcd.h"

#define MOAT_NODES_PREFIX     "/moat/v1/nodes/"
#define MOAT_NODE_ID_MAX      64  /* 1..63 of [A-Za-z0-9_.-], and a NUL */
#define MOAT_NODE_ADDRESS_MAX 256 /* host:port, printable ASCII, and a NUL */
#define MOAT_NODE_VALUE_MAX   1024

/* Capacity and load. Free capacity is total - used of each. */
typedef struct moat_node_load {
    int64_t slots_total; /* sessions this node may hold (moatd's max_sessions) */
    int64_t slots_used;
    int64_t memory_total_bytes; /* what its sandboxes may use together */
    int64_t memory_used_bytes;  /* the limits of the sandboxes it holds */
    /* Warm pool sandboxes ready for a create (0 without a pool; absent from the record then). */
    int64_t pool_ready;
} moat_node_load;

/* A node as listed. By value; no pointers inside. */
typedef struct moat_node {
    char id[MOAT_NODE_ID_MAX];
    char address[MOAT_NODE_ADDRESS_MAX];
    moat_node_load load;
    int64_t lease; /* the etcd lease its key lives under */
} moat_node;

/* ---- node record codec ------------------------------------------------------------------- */

/* Whether id is a valid node id, and address a valid advertised address ("host:port", at most
 * 255 bytes of printable ASCII without spaces, quotes or backslashes, port 1..65535). */
bool moat_node_id_valid(const char *id);
bool moat_node_address_valid(const char *address);
/* MOAT_NODES_PREFIX + id into out (cap >= sizeof(MOAT_NODES_PREFIX) + MOAT_NODE_ID_MAX);
 * returns its length, or 0 for an invalid id. */
size_t moat_node_key(const char *id, char *out, size_t cap);
/* The value of n's key, {"address": …, "slots_total": …, …}, NUL-terminated in out[0..cap).
 * Returns its length, or 0 when n is invalid (id, address, a negative count) or cap too small.
 * Used may exceed total (a node whose capacity was lowered under its load): it has no room. */
size_t moat_node_encode(const moat_node *n, char *out, size_t cap);
/* A node from its key and value as etcd returned them. MOAT_E_INVAL for a key outside
 * MOAT_NODES_PREFIX, an invalid id or a value that is not a valid record (too long, not JSON,
 * a field missing or of the wrong type, a count out of range); the value's size is checked
 * before it is parsed. */
moat_err moat_node_decode(const uint8_t *key, size_t key_len, const uint8_t *value,
                          size_t value_len, int64_t lease, moat_node *out);

/* ---- membership -------------------------------------------------------------------------- */

/* The caller owns every string; moat_membership_start copies them. */
typedef struct moat_membership_config {
    moat_etcd *etcd; /* borrowed: must outlive the membership */
    const char *node_id;
    const char *address; /* what clients and other nodes dial */
    int64_t lease_ttl_s; /* the lease's TTL; 0: 5 s. Keepalives go every third of it. */
    moat_node_load load; /* the first record's */
    /* The lease this node held in its previous run (moat_membership_lease, kept by the caller
     * across a restart), or 0. When etcd still has it and the node's key is absent or under
     * it, the node carries on with it at once: a restart within the TTL is not a departure. */
    int64_t resume_lease;
} moat_membership_config;

typedef struct moat_membership moat_membership;

/* Grants a lease, writes the node's key under it only if no other node holds that id (a
 * transaction on the key's create revision), and starts the keepalive thread. With etcd
 * unreachable (UNAVAILABLE) it still starts, fenced, and the thread registers the node once
 * etcd answers. NULL with st set: INVALID_ARGUMENT "invalid_config" (a bad id, address, TTL or
 * load), ALREADY_EXISTS "node_id_taken" (another live node still held the id after two TTLs:
 * a node restarted within its TTL waits for its former record to expire), or the etcd
 * client's other statuses. The caller stops it with moat_membership_stop. */
moat_membership *moat_membership_start(const moat_membership_config *cfg, moat_status *st);

/* The load the next keepalive round publishes (a put only when it changed). Thread-safe. */
void moat_membership_set_load(moat_membership *m, const moat_node_load *load);

/* The lease the node holds now, or 0 while it holds none (fenced before its first registration,
 * or between a lost lease and the next). It changes when the node registers anew. Thread-safe. */
int64_t moat_membership_lease(moat_membership *m);

/* Whether the node may act as a member: its lease is provably held, i.e. the last keepalive
 * that etcd answered was SENT less than the TTL it granted ago. Past that, another node may
 * already have seen the lease expire, so the node is fenced (it accepts no create) until it
 * keeps the lease alive again or registers anew. Thread-safe. */
bool moat_membership_live(moat_membership *m);

/* Stops the thread, revokes the lease (the key goes at once; a failure leaves it to expire),
 * and frees m. */
void moat_membership_stop(moat_membership *m);

/* The live nodes: *nodes (the caller frees it with free()) gets *count of them, in key order.
 * Records that cannot be decoded are skipped and counted in *skipped (may be NULL). */
moat_code moat_cluster_nodes(moat_etcd *etcd, moat_node **nodes, size_t *count, size_t *skipped,
                             moat_status *st);

#endif
