/* The cluster directory as a reader sees it (docs/CLUSTER.md, "Routing"): one session's record
 * with whether its owner still holds it, and every record, page by page. The writers (create,
 * renew, end) put the records; this only reads them. Blocking, as the etcd client is: call it
 * from a worker thread, never from moatd's loop. */
#ifndef MOAT_CLUSTER_DIR_READ_H
#define MOAT_CLUSTER_DIR_READ_H

#include <stdbool.h>
#include <stddef.h>

#include "cluster/etcd.h"
#include "cluster/records.h"

/* Records asked of etcd per range while paging (about 300 bytes each). */
#define MOAT_DIRECTORY_PAGE 500

/* A record with its owner's standing. By value. */
typedef struct moat_dir_entry {
    moat_session_record rec;
    /* The record's node is a member under the record's lease (moat_session_record_owner); false:
     * the node is gone, and a session not ended is GONE "node_lost". */
    bool owner_live;
} moat_dir_entry;

typedef enum moat_dir_found {
    MOAT_DIR_ABSENT = 0,  /* no record */
    MOAT_DIR_FOUND = 1,   /* *out holds it */
    MOAT_DIR_INVALID = 2, /* a value that does not decode as a record */
} moat_dir_found;

/* session_id's record (canonical id), and whether it was there and readable. The owner's
 * standing comes from its node key read right after the record, not from a cached member list,
 * so a node whose lease expired is lost from that moment. etcd's failures are the client's
 * statuses (UNAVAILABLE "etcd_unavailable", …). */
moat_code moat_directory_get(moat_etcd *etcd, const char *session_id, moat_dir_found *found,
                             moat_dir_entry *out, moat_status *st);

/* The records not ended (creating or running), of chat_id's sessions or every chat's (""), in
 * session id order, through ranges of MOAT_DIRECTORY_PAGE keys; the owners' standing from one
 * member list read first. *out (the caller frees it with free()) gets *count of them. Records
 * that do not decode are left out and counted in *skipped. More than max matching records:
 * RESOURCE_EXHAUSTED "listing_too_large" (nothing is returned). */
moat_code moat_directory_list(moat_etcd *etcd, const char *chat_id, size_t max,
                              moat_dir_entry **out, size_t *count, size_t *skipped,
                              moat_status *st);

/* Called with each key of sessions/ in order (valid during the call); false (st set) stops the
 * scan with st's code. */
typedef bool (*moat_directory_fn)(void *ud, const moat_etcd_kv *kv, moat_status *st);
/* Every key of sessions/, through ranges of MOAT_DIRECTORY_PAGE keys: each range starts past the
 * last key of the one before, so a key is seen once; the ranges are not one snapshot (a key
 * changed meanwhile may show either way). *revision (may be NULL) gets the first range's. */
moat_code moat_directory_scan(moat_etcd *etcd, moat_directory_fn fn, void *ud, int64_t *revision,
                              moat_status *st);

/* ---- internal: what moat_directory_list and the cache's listing share ---------------------- */

/* A listing as it grows. */
typedef struct moat_dir_acc {
    const char *chat_id; /* "" for all */
    const moat_node *nodes;
    size_t nnodes;
    size_t max;
    moat_dir_entry *out;
    size_t count, cap, skipped;
} moat_dir_acc;

/* Adds a record that matches (not ended, of the chat) to a; one that does not decode is counted
 * as skipped. false (st set) past max or out of memory. */
bool moat__dir_take(moat_dir_acc *a, const uint8_t *key, size_t key_len, const uint8_t *value,
                    size_t value_len, moat_status *st);
/* Hands a's entries to the caller (none after a failure, code) and returns code. */
moat_code moat__dir_finish(moat_dir_acc *a, moat_code code, moat_dir_entry **out, size_t *count,
                           size_t *skipped);

#endif
