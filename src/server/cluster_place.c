/* Cluster mode's write path (docs/CLUSTER.md, "Placement", "Reaping", "Faults"). The create:
 * on any node, a job reads the chat key; a chat held by another node is forwarded to that node,
 * which answers with its session; a free chat is placed by the power of two choices and
 * forwarded to the chosen node unless it is this one. The node that creates takes the chat key
 * in one transaction with the session's record before the container exists, so two creates of
 * one chat never both start one. Forwarded requests carry placed_by, and the node they reach
 * creates there and places nothing again: one hop at most. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cluster_peer.h"
#include "cluster_place.h"

/* How long a creating record is waited for, in steps of POLL_MS, by a create that lost the
 * chat key to it: the winner is starting its container. */
#define POLL_MS 50

/* What a create asks for when its request names no memory: the runtime's default. */
static int64_t default_memory(void)
{
    moat_runtime_config d;
    moat_runtime_config_defaults(&d);
    return d.default_memory_bytes;
}

static bool in_cluster(srv *s)
{
    return moat__cluster_etcd(s) != NULL;
}

/* A forwarded create's deadline: the peer's create (its etcd calls, the engine's create and
 * start, execd's readiness), with room for the etcd calls around it. */
static uint64_t forward_timeout_ms(const srv *s)
{
    return (uint64_t)s->cfg.readiness_timeout_ms + 2u * s->cfg.docker_timeout_ms + 10000u;
}

static uint64_t splitmix(void *ctx)
{
    uint64_t *x = ctx;
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static moat_code fenced(moat_status *st)
{
    moat_status_set(st, MOAT_CODE_UNAVAILABLE, "node_fenced",
                    "this node cannot reach etcd to prove it is still a cluster member; it "
                    "accepts no create or renewal until it can");
    return MOAT_CODE_UNAVAILABLE;
}

/* ------------------------------------------------------------ the placing node */

typedef struct place_job {
    engine_job base;
    const Moat__V1__CreateSessionRequest *req; /* the call's, read on the loop only */
    char chat[MOAT_UUID_STR_LEN];
    bool force_new;
    bool warm; /* a warm pool can serve it: placement prefers a node with a ready sandbox */
    int64_t memory_bytes;
    uint8_t *fwd; /* the request with placed_by set, packed on the loop */
    size_t fwd_len;
    bool local;    /* this node creates */
    uint8_t *resp; /* the chosen node's SandboxSession */
    size_t resp_len;
    char target[MOAT_NODE_ID_MAX];
    char target_addr[MOAT_NODE_ADDRESS_MAX]; /* where it was forwarded */
    uint64_t rng;
} place_job;

/* The address of node id among the members, or of the chat's session record. */
static bool node_address(srv *s, const char *id, const moat_chat_record *chat, char *out,
                         size_t cap, moat_status *st)
{
    moat_node *nodes = NULL;
    size_t n = 0;
    bool found = false;
    if (moat__cluster_members(s, &nodes, &n, st) == MOAT_CODE_OK) {
        for (size_t i = 0; i < n && !found; i++) {
            if (strcmp(nodes[i].id, id) == 0) {
                snprintf(out, cap, "%s", nodes[i].address);
                found = true;
            }
        }
    }
    free(nodes);
    if (found || chat == NULL)
        return found;
    moat_session_record rec;
    int64_t rev;
    if (moat_dir_record(moat__cluster_etcd(s), chat->session_id, &found, &rec, &rev, st) !=
            MOAT_CODE_OK ||
        !found)
        return false;
    snprintf(out, cap, "%s", rec.address);
    return true;
}

static moat_code forward(place_job *p, const char *addr)
{
    srv *s = p->base.s;
    free(p->resp);
    p->resp = NULL;
    snprintf(p->target_addr, sizeof(p->target_addr), "%s", addr);
    return moat__peer_unary(s, addr, "/moat.v1.Sandboxes/CreateSession",
                            (moat_slice){p->fwd, p->fwd_len}, forward_timeout_ms(s), &p->resp,
                            &p->resp_len, &p->base.status);
}

/* A free chat: the power of two choices over the members (the chat's home first), and the
 * create where it lands. A chosen node that cannot be reached, or is fenced, is left out and
 * another chosen, once: it may have died or lost etcd since the member list was read. */
static void place_free(place_job *p)
{
    engine_job *j = &p->base;
    srv *s = j->s;
    moat_node *nodes = NULL;
    size_t n = 0;
    j->code = moat__cluster_members(s, &nodes, &n, &j->status);
    if (j->code != MOAT_CODE_OK)
        return;
    char home[MOAT_NODE_ID_MAX];
    moat_dir_home(moat__cluster_etcd(s), p->chat, home);
    for (int attempt = 0; attempt < 2; attempt++) {
        long i = moat_place_choose(nodes, n, p->memory_bytes, home, p->warm, splitmix, &p->rng);
        if (i < 0) {
            j->code = MOAT_CODE_RESOURCE_EXHAUSTED;
            moat_status_set(&j->status, j->code, "no_node_available",
                            "no live node of the cluster has a free slot and %lld bytes of free "
                            "memory",
                            (long long)p->memory_bytes);
            break;
        }
        snprintf(p->target, sizeof(p->target), "%s", nodes[i].id);
        if (strcmp(nodes[i].id, s->cfg.cluster_node_id) == 0) {
            p->local = true;
            j->code = MOAT_CODE_OK;
            break;
        }
        j->code = forward(p, nodes[i].address);
        if (j->code != MOAT_CODE_UNAVAILABLE ||
            (strcmp(j->status.reason, "peer_unavailable") != 0 &&
             strcmp(j->status.reason, "node_fenced") != 0))
            break;
        nodes[i] = nodes[--n];
        home[0] = '\0';
    }
    free(nodes);
}

static void place_run(engine_job *j)
{
    place_job *p = (place_job *)j;
    srv *s = j->s;
    p->rng = moat_time_mono_ns() ^ (uint64_t)(uintptr_t)p;
    bool found;
    moat_chat_record chat;
    int64_t rev;
    j->code = moat_dir_chat(moat__cluster_etcd(s), p->chat, &found, &chat, &rev, &j->status);
    if (j->code != MOAT_CODE_OK)
        return;
    if (!found) {
        place_free(p);
        return;
    }
    /* The chat's owner answers: with its live session (today's idempotent create), or a second
     * one beside it (force_new), on its host, where the chat's workspace is. */
    snprintf(p->target, sizeof(p->target), "%s", chat.node_id);
    if (strcmp(chat.node_id, s->cfg.cluster_node_id) == 0) {
        p->local = true;
        return;
    }
    char addr[MOAT_NODE_ADDRESS_MAX];
    if (!node_address(s, chat.node_id, &chat, addr, sizeof(addr), &j->status)) {
        j->code = MOAT_CODE_UNAVAILABLE;
        moat_status_set(&j->status, j->code, "peer_unavailable",
                        "chat %s is held by node %s, whose address is unknown", p->chat,
                        chat.node_id);
        return;
    }
    j->code = forward(p, addr);
}

static void place_done(engine_job *j)
{
    place_job *p = (place_job *)j;
    stream *st = j->st;
    if (j->code == MOAT_CODE_OK && p->local && moat__running(st)) {
        moat__create_local(st, p->req, p->chat);
    } else if (j->code == MOAT_CODE_OK && !p->local) {
        Moat__V1__SandboxSession *sess =
            moat__v1__sandbox_session__unpack(NULL, p->resp_len, p->resp);
        if (sess == NULL) {
            moat_status_set(&j->status, MOAT_CODE_UNAVAILABLE, "peer_unavailable",
                            "node %s answered the create with a message that does not decode",
                            p->target);
            moat_rpc_call_end(st->call, &j->status);
        } else if (moat__running(st)) {
            /* The node that made it answered for its own session, with no owner_address; this
             * node does not hold it, so the client learns where it lives. */
            char *given = sess->owner_address;
            if (given == NULL || given[0] == '\0')
                sess->owner_address = p->target_addr;
            moat_rpc_call_reply(st->call, &sess->base);
            sess->owner_address = given;
        }
        if (sess != NULL)
            moat__v1__sandbox_session__free_unpacked(sess, NULL);
    } else if (j->code != MOAT_CODE_OK) {
        moat_log_limited(&j->s->logs.create_failed, MOAT_LOG_WARN, "session_create_failed",
                         "chat_id=%s node=%s code=%s reason=%s msg=\"%s\"", p->chat, p->target,
                         moat_code_name(j->status.code), j->status.reason, j->status.message);
        moat_rpc_call_end(st->call, &j->status);
    }
    free(p->fwd);
    free(p->resp);
}

bool moat__cluster_create(stream *st, const Moat__V1__CreateSessionRequest *req, const char *chat)
{
    srv *s = st->s;
    if (!in_cluster(s) || (req->placed_by != NULL && req->placed_by[0] != '\0'))
        return false;
    place_job *p = moat__job_new(st, sizeof(*p));
    if (p == NULL)
        return true;
    p->req = req;
    snprintf(p->chat, sizeof(p->chat), "%s", chat);
    p->force_new = req->force_new;
    /* What a pool holds (the default image and limits, no force_new; pool.c's pool_kind), as far
     * as this node can tell: limits given at all are taken as not the defaults. */
    p->warm =
        !req->force_new && req->resources == NULL &&
        (req->image == NULL || req->image[0] == '\0' || strcmp(req->image, s->cfg.image) == 0);
    p->memory_bytes = req->resources != NULL && req->resources->memory_bytes > 0
                          ? (int64_t)req->resources->memory_bytes
                          : default_memory();
    Moat__V1__CreateSessionRequest fwd = *req;
    fwd.placed_by = s->cfg.cluster_node_id;
    p->fwd_len = moat__v1__create_session_request__get_packed_size(&fwd);
    p->fwd = malloc(p->fwd_len + 1);
    if (p->fwd == NULL) {
        free(p);
        moat_rpc_call_fail(st->call, MOAT_CODE_RESOURCE_EXHAUSTED, "out_of_memory",
                           "out of memory");
        return true;
    }
    moat__v1__create_session_request__pack(&fwd, p->fwd);
    moat__job_start(&p->base, place_run, place_done);
    return true;
}

/* ------------------------------------------------------------ the creating node */

/* Waits for the record of the session that holds the chat to be running (its node is starting
 * it). OK with *rec running; NOT_FOUND when it ended or went (the chat may be free again). */
static moat_code wait_running(srv *s, const char *sid, moat_session_record *rec, moat_status *st)
{
    uint64_t until = moat_time_mono_ns() + forward_timeout_ms(s) * 1000000u;
    for (;;) {
        bool found;
        int64_t rev;
        moat_code code = moat_dir_record(moat__cluster_etcd(s), sid, &found, rec, &rev, st);
        if (code != MOAT_CODE_OK)
            return code;
        if (!found || rec->state == MOAT_RECORD_ENDED)
            return MOAT_CODE_NOT_FOUND;
        if (rec->state == MOAT_RECORD_RUNNING)
            return MOAT_CODE_OK;
        if (moat_time_mono_ns() >= until) {
            moat_status_set(st, MOAT_CODE_UNAVAILABLE, "peer_unavailable",
                            "session %s of node %s did not start in time", sid, rec->node_id);
            moat_status_add_detail(st, "owner_address", rec->address);
            return MOAT_CODE_UNAVAILABLE;
        }
        struct timespec ts = {0, POLL_MS * 1000000L};
        nanosleep(&ts, NULL);
    }
}

/* moat__cluster_claim in a cluster, sid counted as creating. */
static moat_code claim_keys(srv *s, moat_etcd *etcd, const char *chat, const char *sid,
                            int64_t created_at_ms, int64_t expires_at_ms,
                            const moat_session_options *opts, cluster_claim *cc, moat_status *st)
{
    int64_t lease = moat__cluster_lease(s);
    if (lease == 0 || moat__cluster_fenced(s))
        return fenced(st);
    moat_session_record *rec = &cc->rec;
    snprintf(rec->session_id, sizeof(rec->session_id), "%s", sid);
    snprintf(rec->chat_id, sizeof(rec->chat_id), "%s", chat);
    snprintf(rec->node_id, sizeof(rec->node_id), "%s", s->cfg.cluster_node_id);
    snprintf(rec->address, sizeof(rec->address), "%s", s->cfg.cluster_advertise);
    snprintf(rec->image, sizeof(rec->image), "%s",
             opts->image != NULL ? opts->image : s->cfg.image);
    rec->node_lease = lease;
    rec->state = MOAT_RECORD_CREATING;
    rec->created_at_ms = created_at_ms;
    rec->expires_at_ms = expires_at_ms;
    /* A lost claim whose holder then goes (ended, or its key freed) is tried again; twice is
     * enough unless creates of this chat keep racing, and then the caller retries. */
    bool take_chat = true;
    for (int attempt = 0; attempt < 3; attempt++) {
        moat_dir_claim_result claim;
        moat_code code = moat_dir_claim(etcd, rec, lease, take_chat, &claim, st);
        if (code != MOAT_CODE_OK) {
            cc->unsure = true;
            return code;
        }
        if (claim.won) {
            cc->active = true;
            cc->record_rev = claim.record_mod_revision;
            cc->chat_rev = claim.chat_mod_revision;
            return MOAT_CODE_OK;
        }
        if (strcmp(claim.holder.node_id, s->cfg.cluster_node_id) == 0 && opts->force_new) {
            /* A second session beside the chat's, which keeps the key. */
            take_chat = false;
            continue;
        }
        if (strcmp(claim.holder.node_id, s->cfg.cluster_node_id) == 0) {
            /* This node found no live session of the chat, yet holds its key: an end whose
             * write failed left it. Its record is ended and the key freed, then the claim
             * again. */
            moat_log(MOAT_LOG_WARN, "cluster_chat_key_stale", "chat_id=%s session_id=%s", chat,
                     claim.holder.session_id);
            moat__cluster_ended(s, claim.holder.session_id, "gone");
            moat_status why;
            moat_dir_free_chat(etcd, chat, claim.holder_revision, &why);
            continue;
        }
        moat_session_record held;
        code = wait_running(s, claim.holder.session_id, &held, st);
        if (code == MOAT_CODE_OK && opts->image != NULL && strcmp(held.image, opts->image) != 0) {
            /* As on one node: the chat's session is not handed to a request for another image. */
            moat_status_set(st, MOAT_CODE_FAILED_PRECONDITION, "session_image_differs",
                            "chat %s has session %s running image '%s'; stop it or create with "
                            "force_new",
                            chat, held.session_id, held.image);
            moat_status_add_detail(st, "session_id", held.session_id);
            moat_status_add_detail(st, "image", held.image);
            return MOAT_CODE_FAILED_PRECONDITION;
        }
        if (code == MOAT_CODE_OK) {
            cc->lost = true;
            cc->rec = held;
            return MOAT_CODE_OK;
        }
        if (code != MOAT_CODE_NOT_FOUND)
            return code;
    }
    moat_status_set(st, MOAT_CODE_ABORTED, "create_raced",
                    "creates of chat %s on other nodes kept taking it; retry", chat);
    return MOAT_CODE_ABORTED;
}

moat_code moat__cluster_claim(srv *s, const char *chat, const char *sid, int64_t created_at_ms,
                              int64_t expires_at_ms, const moat_session_options *opts,
                              cluster_claim *cc, moat_status *st)
{
    memset(cc, 0, sizeof(*cc));
    moat_etcd *etcd = moat__cluster_etcd(s);
    if (etcd == NULL)
        return MOAT_CODE_OK;
    /* Before the record exists, so that no sweep can see it without seeing the create. */
    if (!moat__cluster_creating_begin(s, sid)) {
        moat_status_set(st, MOAT_CODE_RESOURCE_EXHAUSTED, "out_of_memory", "out of memory");
        return MOAT_CODE_RESOURCE_EXHAUSTED;
    }
    moat_code code = claim_keys(s, etcd, chat, sid, created_at_ms, expires_at_ms, opts, cc, st);
    if (!cc->active)
        moat__cluster_creating_end(s, sid);
    return code;
}

void moat__cluster_created(srv *s, cluster_claim *cc, const moat_session *sess, bool ok)
{
    if (!cc->active)
        return;
    moat_etcd *etcd = moat__cluster_etcd(s);
    moat_status st;
    moat_code code = MOAT_CODE_UNAVAILABLE;
    if (ok) {
        cc->rec.state = MOAT_RECORD_RUNNING;
        cc->rec.created_at_ms = sess->created_at_ms;
        cc->rec.expires_at_ms = sess->expires_at_ms;
        snprintf(cc->rec.image, sizeof(cc->rec.image), "%s", sess->image);
    }
    /* Both compare the revisions the claim wrote, so a write whose answer was lost is safe to
     * send again (a repeat that finds them moved has nothing left to do); creates of the chat
     * elsewhere wait for this record to be running. */
    for (int i = 0; i < 3 && code == MOAT_CODE_UNAVAILABLE; i++) {
        if (ok) {
            code = moat_dir_update(etcd, &cc->rec, cc->record_rev, NULL, &st);
            /* A repeat that finds the revision moved: the write before it went through. */
            if (i > 0 && code == MOAT_CODE_FAILED_PRECONDITION)
                code = MOAT_CODE_OK;
        } else {
            code = moat_dir_abort(etcd, cc->rec.session_id, cc->rec.chat_id, cc->record_rev,
                                  cc->chat_rev, &st);
        }
    }
    if (code != MOAT_CODE_OK)
        moat_log(MOAT_LOG_WARN, "cluster_record_not_written",
                 "session_id=%s state=%s code=%s reason=%s msg=\"%s\"", cc->rec.session_id,
                 ok ? "running" : "aborted", moat_code_name(st.code), st.reason, st.message);
    /* The runtime has its final word on the session now: the sweep may judge its record. */
    moat__cluster_creating_end(s, cc->rec.session_id);
}

void moat__cluster_reply_record(stream *st, const moat_session_record *rec)
{
    Moat__V1__SandboxSession msg = MOAT__V1__SANDBOX_SESSION__INIT;
    msg.session_id = (char *)rec->session_id;
    msg.chat_id = (char *)rec->chat_id;
    msg.status = MOAT__V1__SESSION_STATUS__RUNNING;
    msg.created_at_ms = rec->created_at_ms;
    msg.expires_at_ms = rec->expires_at_ms;
    msg.image = (char *)rec->image;
    msg.owner_address = (char *)rec->address;
    moat_rpc_call_reply(st->call, &msg.base);
}

/* ------------------------------------------------------------ renew and end */

moat_code moat__cluster_renew(srv *s, const char *sid, int64_t expires_at_ms, moat_status *st)
{
    moat_etcd *etcd = moat__cluster_etcd(s);
    if (etcd == NULL)
        return MOAT_CODE_OK;
    if (moat__cluster_fenced(s))
        return fenced(st);
    bool owned;
    return moat_dir_renew(etcd, sid, s->cfg.cluster_node_id, expires_at_ms, &owned, st);
}
