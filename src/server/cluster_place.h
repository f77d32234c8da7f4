/* Cluster mode's write path in moatd (docs/CLUSTER.md, "Placement", "Reaping", "Faults"):
 * CreateSession placed by the power of two choices and forwarded to the chosen node, the chat
 * key's transaction around the local create, renewals and ends written to the directory, and
 * the sessions of a lost incarnation stopped. Every function is a no-op (or false) outside a
 * cluster, so moatd without cluster_etcd_endpoints behaves as it always has. */
#ifndef MOAT_SERVER_CLUSTER_PLACE_H
#define MOAT_SERVER_CLUSTER_PLACE_H

#include "cluster/directory.h"
#include "handlers.h"
#include "moat/v1/sandbox.pb-c.h"

/* ---- what cluster.c gives the rest of moatd (any thread unless said) ---------------------- */

/* moat__cluster_etcd (server_internal.h): the etcd client. */
/* The lease this node holds now, 0 while it holds none (fenced before registering). */
int64_t moat__cluster_lease(srv *s);

/* The live members, from a copy at most a second old (placement's view; one range of nodes/
 * otherwise). *nodes (free()) gets *count of them. */
moat_code moat__cluster_members(srv *s, moat_node **nodes, size_t *count, moat_status *st);

/* ---- the create ------------------------------------------------------------------------- */

/* Loop: takes a CreateSession over when it must be placed (cluster mode, and the request is not
 * one another node placed here): the chat's owner answers, or a node is chosen and the create
 * forwarded to it. false: the caller creates here as it always has. */
bool moat__cluster_create(stream *st, const Moat__V1__CreateSessionRequest *req, const char *chat);

/* Loop: the create on this node as it has always run (svc_sessions.c): a create of the same
 * chat in flight here is waited for, else the job starts. */
void moat__create_local(stream *st, const Moat__V1__CreateSessionRequest *req, const char *chat);

/* The chat key's claim around a local create (worker). */
typedef struct cluster_claim {
    bool active; /* keys were written: moat__cluster_created must follow */
    moat_session_record rec;
    int64_t record_rev, chat_rev;
    bool lost; /* another node's session holds the chat: answer with rec */
    /* A claim transaction got no clear answer: the keys may name this session id though the
     * claim failed, so the id must never serve another chat (a reserved pool sandbox is
     * removed, not given back). */
    bool unsure;
} cluster_claim;

/* Before the container of session sid exists: writes its record (creating) and takes the chat
 * key, or with force_new beside this node's key for the chat, the record alone
 * (docs/CLUSTER.md, "Placement"). OK with cc->lost when another
 * node's session holds the chat (cc->rec is it, once running); a key this node holds for a
 * session that is no longer live here is given up first. Other codes: the create fails with
 * st. Outside a cluster: OK, nothing done. */
moat_code moat__cluster_claim(srv *s, const char *chat, const char *sid, int64_t created_at_ms,
                              int64_t expires_at_ms, const moat_session_options *opts,
                              cluster_claim *cc, moat_status *st);
/* After the create (worker): the record becomes running, or on a failed start both keys go. */
void moat__cluster_created(srv *s, cluster_claim *cc, const moat_session *sess, bool ok);

/* Loop: answers a create with another node's session from its record, its owner_address the
 * owner's. */
void moat__cluster_reply_record(stream *st, const moat_session_record *rec);

/* ---- renew and end (worker or the reaper's thread) ---------------------------------------- */

/* Before a local renewal: the record's expiry moved durably (FAILED unless OK; UNAVAILABLE
 * node_fenced or the etcd client's status). OK without a write outside a cluster or for a
 * session this node's directory does not own. */
moat_code moat__cluster_renew(srv *s, const char *sid, int64_t expires_at_ms, moat_status *st);

/* ---- ends kept for later, creates in flight, the sweep (cluster_sweep.c) ------------------- */

typedef struct cluster_upkeep cluster_upkeep;
/* cluster.c's, while the node is in a cluster; NULL otherwise. */
cluster_upkeep *moat__cluster_upkeep(srv *s);

/* Loop, from moat__cluster_start: the thread that writes the ends etcd could not take, and the
 * periodic sweep's timer. NULL when out of memory or threads (ends are then written as they
 * come, and only the sweep at registration repairs what failed). */
cluster_upkeep *moat__upkeep_start(srv *s, moat_etcd *etcd);
/* Loop, before etcd is closed: joins the thread (ends still kept are given up, and logged: the
 * sweep at the next start ends their records) and closes the timer, which frees u. */
void moat__upkeep_stop(cluster_upkeep *u);

/* After the local end of sid (stop, reap, gone), any thread: the record ended with reason, the
 * chat key freed, the home written (moat_dir_end). When etcd does not answer, the end is kept
 * (at most MOAT_CLUSTER_ENDS_KEPT) and written with the others kept, in batches, once it does;
 * while ends are kept, or the node is fenced, a new one joins them without trying etcd, so a
 * reaper ending many sessions during an outage waits for no timeout after the first. Past the
 * bound an end is dropped (logged cluster_end_dropped) and the periodic sweep ends its record. */
void moat__cluster_ended(srv *s, const char *sid, const char *reason);
#define MOAT_CLUSTER_ENDS_KEPT 4096

/* Around a local create (worker): sid's record may exist while its sandbox does not yet, and
 * the sweep must leave it. begin before the claim writes the record (false: out of memory, and
 * the create must not go on); end once the runtime has its final word on the session (created
 * or not) and the record says so. */
bool moat__cluster_creating_begin(srv *s, const char *sid);
void moat__cluster_creating_end(srv *s, const char *sid);

/* Loop. The node holds lease now, a new one or its first: a sweep through etcd (one range of
 * sessions/): its sessions under any older lease are stopped (end reason node_lost) and their
 * records written ended; records of this incarnation that say running or creating for a
 * session the runtime no longer has, and that no create here holds, are ended too. The
 * periodic sweep (every cluster_sweep_interval_seconds while the node is live) does the same
 * from the node's copy of the directory. On a worker. */
void moat__cluster_sweep(srv *s, int64_t lease);

#endif
