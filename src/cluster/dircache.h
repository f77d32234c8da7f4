/* A node's copy of the directory (docs/CLUSTER.md, "Routing"): the session records (sessions/)
 * and the member list (nodes/), loaded with ranges, then kept in step by one watch over both
 * prefixes (the gateway's POST /v3/watch stream) on a thread of its own. Routing and ListSessions
 * read it instead of etcd: a non-owner answers session_moved without two ranges (2-3 ms through
 * the gateway), and a listing of 900 records costs their decoding, not 20-30 ms of JSON.
 *
 * Consistency. The copy lags etcd by the watch's delay (milliseconds): it is a recent view, not a
 * linearizable read. Its member list is never older than its records: the records are loaded
 * first, the members after them, a change the load already holds is not applied again (a key
 * keeps the latest mod revision it was given), and the watch then applies both prefixes' changes
 * together, message by message, in etcd's order. So what the copy says of a record is what etcd
 * said of it at some recent revision, judged against members at least that new. An incarnation
 * (node id and lease) that left never comes back, and an ended record never runs again: "node
 * lost" and "ended" from the copy are facts. Only "the owner holds it" can be stale (the owner
 * died or ended it within the watch's delay); it sends a client to the owner, which answers for
 * itself. A record the copy does not have (a create newer than the watch's delay) is read from
 * etcd, as is everything while the copy is not in step. */
#ifndef MOAT_CLUSTER_DIRCACHE_H
#define MOAT_CLUSTER_DIRCACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cluster/dir_read.h"

typedef struct moat_dircache moat_dircache;

/* Starts the thread (etcd is borrowed and must outlive the cache). NULL when out of memory or
 * threads. With etcd unreachable it keeps trying, every half second, and answers through etcd
 * meanwhile. */
moat_dircache *moat_dircache_start(moat_etcd *etcd);
/* Stops the thread (within about a second: the watch looks at its stop flag that often) and
 * frees d. NULL is fine. */
void moat_dircache_stop(moat_dircache *d);

/* session_id's record as the copy holds it, with its owner's standing (below): false while the
 * copy is not in step, for an id that is not canonical, or a record the copy does not hold.
 * Never asks etcd: a loop may call it. Thread-safe. */
bool moat_dircache_peek(moat_dircache *d, const char *session_id, moat_dir_found *found,
                        moat_dir_entry *out);

/* What moat_directory_get answers: from the copy while it is in step and holds the record (the
 * owner's standing from the copied member list, by the rule moat_directory_get reads from etcd:
 * the node's key present under the record's lease); else from etcd through `etcd` (moatd passes
 * the client the copy watches with). *from_copy (may be NULL) says which. Thread-safe. */
moat_code moat_dircache_get(moat_dircache *d, moat_etcd *etcd, const char *session_id,
                            moat_dir_found *found, moat_dir_entry *out, bool *from_copy,
                            moat_status *st);

/* What moat_directory_list answers, from the copy (records and members) while it is in step,
 * else through etcd. *from_cache (may be NULL) says which. Thread-safe. */
moat_code moat_dircache_list(moat_dircache *d, const char *chat_id, size_t max,
                             moat_dir_entry **out, size_t *count, size_t *skipped, bool *from_cache,
                             moat_status *st);

/* ---- internal: when the copy is in step (pure, for the tests) -------------------------------
 *
 * The copy is loaded at revision `loaded` (the load's first range), then watched from loaded + 1.
 * The watch's first message says it is in place, with etcd's revision then; the changes between
 * the load and that revision come after it, in one message or more (etcd replays them to a watch
 * that starts in the past), and none come when none of them were in the watched range. So the copy
 * is in step only once a message at or past that revision has arrived, or at once when nothing was
 * written meanwhile; until then listings go to etcd, so a listing never goes back in time across
 * a reload. */
typedef struct moat_dircache_sync {
    int64_t loaded; /* the load's revision */
    int64_t target; /* the revision the watch began at; 0 before its first message */
    bool synced;
} moat_dircache_sync;

/* A load at revision `loaded` is in place (not in step yet). */
void moat_dircache_sync_loaded(moat_dircache_sync *s, int64_t loaded);
/* A message of the watch: created (its first) or not, with its header's revision. Returns
 * whether the copy is now in step. */
bool moat_dircache_sync_message(moat_dircache_sync *s, bool created, int64_t revision);

#endif
