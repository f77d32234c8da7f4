/* Group commit of a node's renewals (docs/CLUSTER.md, "Renewals"): renewals made at once on
 * several threads go to etcd together, up to MOAT_DIR_RENEW_BATCH in one batch
 * (moat_dir_renew_batch). No timer: a renewal that finds no batch in flight makes one at once
 * with every renewal queued; those that come while it is in flight wait for it and go in the
 * next. Each caller returns once its own renewal is answered. Blocking, thread-safe: call it
 * from a worker, never from moatd's loop. */
#ifndef MOAT_CLUSTER_RENEWALS_H
#define MOAT_CLUSTER_RENEWALS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cluster/directory.h"

typedef struct moat_renewals moat_renewals;

/* For node_id's renewals through etcd (the caller's, which outlives it). NULL when out of
 * memory. */
moat_renewals *moat_renewals_open(moat_etcd *etcd, const char *node_id);
/* Once no renewal is running. NULL is fine. */
void moat_renewals_close(moat_renewals *r);

/* moat_dir_renew through the next batch: *owned true when the record's expiry moved, *ended
 * when the record is node_id's and ended (OK, nothing written, both times). */
moat_code moat_renewals_renew(moat_renewals *r, const char *session_id, int64_t expires_at_ms,
                              bool *owned, bool *ended, moat_status *st);

/* Counts since open: renewals answered, batches made, etcd calls they made. */
typedef struct moat_renewals_stats {
    uint64_t renewals, batches, etcd_calls;
} moat_renewals_stats;
moat_renewals_stats moat_renewals_stats_get(moat_renewals *r);

/* Told of each batch on the thread that made it, outside r's lock, before its callers return:
 * the renewals it answered and the etcd calls it made (moatd's /metrics counts them). */
typedef void (*moat_renewals_observer)(void *arg, size_t renewals, size_t etcd_calls);
/* Before any renewal (fn NULL: none); arg (the caller's) outlives r. */
void moat_renewals_observe(moat_renewals *r, moat_renewals_observer fn, void *arg);

#endif
