/* A node's copy of the directory's session records, for ListSessions (docs/CLUSTER.md,
 * "Routing"): loaded with ranges, then kept in step by a watch on sessions/ (the gateway's
 * POST /v3/watch stream) on a thread of its own. Listing 900 records through the gateway costs
 * it 20-30 ms of JSON on a busy host (bench/cluster bench_route); from this copy, the records'
 * decoding alone. It may lag etcd by the watch's delay (milliseconds): a listing is a recent
 * view, not a linearizable read. Routing a call still reads the one record it needs from etcd. */
#ifndef MOAT_CLUSTER_DIRCACHE_H
#define MOAT_CLUSTER_DIRCACHE_H

#include <stdbool.h>
#include <stddef.h>

#include "cluster/dir_read.h"

typedef struct moat_dircache moat_dircache;

/* Starts the thread (etcd is borrowed and must outlive the cache). NULL when out of memory or
 * threads. With etcd unreachable it keeps trying, every half second, and lists through etcd
 * meanwhile. */
moat_dircache *moat_dircache_start(moat_etcd *etcd);
/* Stops the thread (within about a second: the watch looks at its stop flag that often) and
 * frees d. NULL is fine. */
void moat_dircache_stop(moat_dircache *d);

/* What moat_directory_list answers, from the copy while it is in step with etcd (loaded and
 * watched), else through etcd. *from_cache (may be NULL) says which. Thread-safe. */
moat_code moat_dircache_list(moat_dircache *d, const char *chat_id, size_t max,
                             moat_dir_entry **out, size_t *count, size_t *skipped, bool *from_cache,
                             moat_status *st);

#endif
