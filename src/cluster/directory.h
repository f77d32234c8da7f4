/* The cluster directory's writes and reads (docs/CLUSTER.md, "Keys", "Placement", "Reaping"):
 * the chat key taken in one transaction with the session record, the record moved to running,
 * renewed, ended, and the power of two choices over the member list. Blocking (the etcd
 * client's calls): run them on a worker, never on moatd's loop. Every write is a transaction on
 * a create or mod revision, so a caller may repeat it.
 *
 * Statuses besides the etcd client's: INTERNAL "cluster_record_invalid" (detail key) for a
 * chat key or session record that does not decode (garbage put by someone else);
 * FAILED_PRECONDITION "record_changed" when a record kept changing under a write that
 * compares its mod revision. */
#ifndef MOAT_CLUSTER_DIRECTORY_H
#define MOAT_CLUSTER_DIRECTORY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cluster/records.h"

/* ---- placement (no I/O) -------------------------------------------------------------------- */

/* Whether n has a free slot and at least memory_bytes of free memory. */
bool moat_place_fits(const moat_node *n, int64_t memory_bytes);

/* The power of two choices over nodes[0..count): two distinct nodes drawn with rnd (any
 * uniform 64-bit source; called at most twice) from those that fit memory_bytes; with warm (a
 * request a warm pool can serve) the one with a ready pool sandbox if only one has, then the one
 * with more free slots, then more free memory. The node named home (may be NULL or "") wins when
 * it fits (its workspace is there). The index, or -1 when no node fits. */
long moat_place_choose(const moat_node *nodes, size_t count, int64_t memory_bytes, const char *home,
                       bool warm, uint64_t (*rnd)(void *), void *rnd_ctx);

/* ---- the directory (blocking) -------------------------------------------------------------- */

/* The chat key: *found false when it is absent; else *out and its mod revision. */
moat_code moat_dir_chat(moat_etcd *etcd, const char *chat_id, bool *found, moat_chat_record *out,
                        int64_t *mod_revision, moat_status *st);

/* The session record: *found false when absent; else *out and its mod revision. */
moat_code moat_dir_record(moat_etcd *etcd, const char *session_id, bool *found,
                          moat_session_record *out, int64_t *mod_revision, moat_status *st);

/* The chat's home node (homes/<chat>): "" when it has none or it does not decode (a hint). */
void moat_dir_home(moat_etcd *etcd, const char *chat_id, char node_id[MOAT_NODE_ID_MAX]);

/* What moat_dir_claim did. */
typedef struct moat_dir_claim_result {
    bool won;                    /* the keys are written */
    int64_t chat_mod_revision;   /* won with the chat key: the chat key's revision */
    int64_t record_mod_revision; /* won: the record's */
    moat_chat_record holder;     /* lost: the chat key that was there */
    int64_t holder_revision;     /* lost: its mod revision */
} moat_dir_claim_result;

/* Writes rec (state creating) for a new session. take_chat: only if chats/<chat> does not
 * exist (compare its create revision with 0), and the chat key {session, node} with it under
 * lease, in one transaction; lost, *out holds the chat key found. Without take_chat (a
 * force_new session beside the chat's): the record alone, if it does not exist. */
moat_code moat_dir_claim(moat_etcd *etcd, const moat_session_record *rec, int64_t lease,
                         bool take_chat, moat_dir_claim_result *out, moat_status *st);

/* Deletes the chat key if it is still at mod_revision (a key left by an end whose write
 * failed, found by its owner). */
moat_code moat_dir_free_chat(moat_etcd *etcd, const char *chat_id, int64_t mod_revision,
                             moat_status *st);

/* Puts rec over the record at mod_revision (a transaction comparing it); *new_revision (may be
 * NULL) gets the record's revision after. FAILED_PRECONDITION "record_changed" when it moved. */
moat_code moat_dir_update(moat_etcd *etcd, const moat_session_record *rec, int64_t mod_revision,
                          int64_t *new_revision, moat_status *st);

/* A create that failed after its claim: deletes the record and, when chat_mod_revision is not
 * 0, the chat key, each only at the revision the claim wrote. */
moat_code moat_dir_abort(moat_etcd *etcd, const char *session_id, const char *chat_id,
                         int64_t record_mod_revision, int64_t chat_mod_revision, moat_status *st);

/* Moves the expiry of node_id's session to expires_at_ms (read, then a transaction on the
 * record's mod revision, again if it moved meanwhile). *owned false (OK, nothing written) when
 * the record is absent, ended or another node's. */
moat_code moat_dir_renew(moat_etcd *etcd, const char *session_id, const char *node_id,
                         int64_t expires_at_ms, bool *owned, moat_status *st);

/* One renewal of a batch (moat_dir_renew_batch). The caller sets session_id and expires_at_ms;
 * the rest is the batch's: the answer (code and status, OK also when nothing was written),
 * written (the record's expiry moved), ended (the record is node_id's and ended), and what the
 * read found for the write. By value. */
typedef struct moat_dir_renewal {
    char session_id[MOAT_UUID_STR_LEN];
    int64_t expires_at_ms;
    moat_code code;
    moat_status status;
    bool written, ended;
    bool done;  /* answered */
    bool alone; /* renewed by itself after the batch (its record moved, or a repeated id) */
    int64_t mod_revision;
    char rkey[MOAT_RECORD_KEY_MAX];
    char rval[MOAT_RECORD_VALUE_MAX];
    size_t rlen;
} moat_dir_renewal;

/* Renewals per batch: the write compares each record (one compare), puts it (one operation)
 * and, when a compare fails, reads it back (one failure operation), and etcd takes
 * MOAT_ETCD_TXN_OPS_MAX of each. */
#define MOAT_DIR_RENEW_BATCH MOAT_ETCD_TXN_OPS_MAX

/* moat_dir_renew for up to MOAT_DIR_RENEW_BATCH sessions of node_id with distinct ids:
 * moat_dir_renew_read, then moat_dir_renew_write. Every item is answered. Returns the etcd calls
 * made. */
size_t moat_dir_renew_batch(moat_etcd *etcd, const char *node_id, moat_dir_renewal *r, size_t n);
/* The records of r[0..n) in one transaction of ranges: an item whose record is absent, another
 * node's or ended (ended set) is answered OK, one that does not decode INTERNAL
 * "cluster_record_invalid"; etcd's error answers every item; a session id that repeats an
 * earlier one is left for moat_dir_renew_write to renew alone. Returns the etcd calls made. */
size_t moat_dir_renew_read(moat_etcd *etcd, const char *node_id, moat_dir_renewal *r, size_t n);
/* The items read and not answered, in one transaction comparing each record's mod revision and
 * putting it with its new expiry; when a compare fails, its failure branch reads the records
 * back, and those that moved are renewed alone (moat_dir_renew), the others together again, so
 * one record changed behind the batch's back fails none of the others. Returns the etcd calls
 * made. */
size_t moat_dir_renew_write(moat_etcd *etcd, const char *node_id, moat_dir_renewal *r, size_t n);

/* The end by its owner: in one transaction, the record written ended (ended_at_ms, reason),
 * the chat key deleted if it still names this session, and homes/<chat> set to node_id. Only
 * for node_id's record, and when it is not ended already (*ended false then, OK). */
moat_code moat_dir_end(moat_etcd *etcd, const char *session_id, const char *node_id,
                       int64_t ended_at_ms, const char *reason, bool *ended, moat_status *st);

/* One end for moat_dir_end_batch. By value. */
typedef struct moat_dir_end_item {
    char session_id[MOAT_UUID_STR_LEN];
    char reason[MOAT_RECORD_END_REASON_MAX];
    int64_t ended_at_ms;
} moat_dir_end_item;

/* Ends per batch: each takes up to three operations of a transaction (the record, the home, the
 * chat key), and etcd takes at most MOAT_ETCD_TXN_OPS_MAX. */
#define MOAT_DIR_END_BATCH 40

/* moat_dir_end for up to MOAT_DIR_END_BATCH sessions of node_id at once, in three etcd calls
 * (the records read in one transaction, their chat keys in another, the ends written in a
 * third that compares every revision read), again from the reads if something moved
 * meanwhile. done[i] is set for each item that needs nothing more: written now, or found
 * absent, ended, another node's or undecodable (those are nothing for an end to repair). An
 * item whose chat another item of the batch already ends is left for a later batch (done[i]
 * false), since a transaction may not write a key twice. On failure (etcd's status) nothing
 * was marked done. */
moat_code moat_dir_end_batch(moat_etcd *etcd, const char *node_id, const moat_dir_end_item *items,
                             size_t n, bool *done, moat_status *st);

/* The records of every session (all of sessions/, one range): *out (free()) gets *count of
 * them; records that do not decode are counted in *skipped. */
moat_code moat_dir_records(moat_etcd *etcd, moat_session_record **out, size_t *count,
                           size_t *skipped, moat_status *st);

#endif
