/* Routing in a cluster (docs/CLUSTER.md, "Routing"): a call that names a session this node's
 * runtime does not know asks the directory where it is. The record's owner live and not this
 * node: the call ends session_moved with the owner's address (clients follow it, as Redis
 * Cluster's clients follow MOVED); its node gone: node_lost; ended: as an ended local session.
 * ListSessions and GetSession answer from the directory for the whole cluster.
 *
 * Routing and ListSessions read the node's copy of the directory, records and members, kept by a
 * watch (src/cluster/dircache.h, which argues why its verdicts hold): reading the record and its
 * owner's key from etcd costs two ranges (2-3 ms through the gateway) on every redirect, and a
 * listing of 900 records 20-30 ms of JSON. A record the copy does not have yet, or a copy not in
 * step, is read from etcd, on the worker the call's job already runs on, with the etcd client's
 * timeouts, never on the loop. A session the copy says another live node holds is not even
 * asked of the runtime (moat__cluster_elsewhere, on the loop: the copy alone, no I/O). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster/dircache.h"
#include "cluster/dir_read.h"
#include "handlers.h"

moat_code moat__cluster_route(srv *s, const char *session_id, session_route *out, moat_status *st)
{
    memset(out, 0, sizeof(*out));
    moat_etcd *etcd = moat__cluster_etcd(s);
    if (etcd == NULL)
        return MOAT_CODE_OK;
    moat_dir_found found;
    moat_dircache *dir = moat__cluster_dircache(s);
    moat_code code = dir != NULL
                         ? moat_dircache_get(dir, etcd, session_id, &found, &out->entry, NULL, st)
                         : moat_directory_get(etcd, session_id, &found, &out->entry, st);
    if (code == MOAT_CODE_OK && found == MOAT_DIR_INVALID) {
        moat_status_set(st, MOAT_CODE_INTERNAL, "session_record_invalid",
                        "the cluster directory's record of session %s cannot be read", session_id);
        moat_status_add_detail(st, "session_id", session_id);
        code = st->code;
    }
    if (code != MOAT_CODE_OK)
        return code;
    const moat_session_record *r = &out->entry.rec;
    if (found == MOAT_DIR_ABSENT)
        out->verdict = ROUTE_LOCAL;
    else if (r->state == MOAT_RECORD_ENDED)
        out->verdict = ROUTE_ENDED;
    else if (!out->entry.owner_live)
        out->verdict = ROUTE_LOST;
    /* This node's own record of a session its runtime does not know (a create still starting,
     * or one that failed): the runtime's answer stands. */
    else if (strcmp(r->node_id, s->cfg.cluster_node_id) == 0)
        out->verdict = ROUTE_LOCAL;
    else
        out->verdict = ROUTE_MOVED;
    return MOAT_CODE_OK;
}

bool moat__cluster_elsewhere(srv *s, const char *session_id, moat_dir_entry *out)
{
    moat_dircache *dir = moat__cluster_dircache(s);
    moat_dir_found found;
    return dir != NULL && !moat__session_cached(s, session_id) &&
           moat_dircache_peek(dir, session_id, &found, out) && found == MOAT_DIR_FOUND &&
           out->rec.state != MOAT_RECORD_ENDED && out->owner_live &&
           strcmp(out->rec.node_id, s->cfg.cluster_node_id) != 0;
}

bool moat__cluster_moved(stream *st, const char *session_id)
{
    session_route r = {.verdict = ROUTE_MOVED};
    if (!moat__cluster_elsewhere(st->s, session_id, &r.entry))
        return false;
    moat_status moved;
    moat_status_clear(&moved);
    moat__route_status(&r, &moved);
    if (!moat__proxy_route(st, &moved))
        moat_rpc_call_end(st->call, &moved);
    return true;
}

bool moat__engine_skipped(engine_job *j)
{
    /* What the runtime says of a session it does not have, which the directory then explains. */
    if (j->engine_down) {
        j->code = MOAT_CODE_NOT_FOUND;
        moat_status_set(&j->status, j->code, "session_not_found", "no session of that id here");
    }
    return j->engine_down;
}

bool moat__directory_knows(engine_job *j, const char *session_id, session_route *r)
{
    if (j->code != MOAT_CODE_NOT_FOUND)
        return false;
    moat_status why;
    moat_status_clear(&why);
    if (moat__cluster_route(j->s, session_id, r, &why) != MOAT_CODE_OK) {
        j->status = why;
        j->code = why.code;
        return false;
    }
    if (r->verdict != ROUTE_LOCAL)
        return true;
    if (j->engine_down) {
        j->status = j->engine_status;
        j->code = j->status.code;
    }
    return false;
}

bool moat__route_status(const session_route *r, moat_status *st)
{
    const moat_session_record *rec = &r->entry.rec;
    if (r->verdict == ROUTE_MOVED) {
        moat_status_set(st, MOAT_CODE_FAILED_PRECONDITION, "session_moved",
                        "session %s is held by node %s at %s; call it there", rec->session_id,
                        rec->node_id, rec->address);
        moat_status_add_detail(st, "owner_address", rec->address);
        moat_status_add_detail(st, "owner_node", rec->node_id);
        moat_status_add_detail(st, "session_id", rec->session_id);
        return true;
    }
    if (r->verdict == ROUTE_LOST) {
        moat_status_set(st, MOAT_CODE_FAILED_PRECONDITION, "node_lost",
                        "session %s was held by node %s, which has left the cluster; the session "
                        "is gone",
                        rec->session_id, rec->node_id);
        moat_status_add_detail(st, "owner_node", rec->node_id);
        moat_status_add_detail(st, "session_id", rec->session_id);
        return true;
    }
    return false;
}

/* An ended record's state as the runtime names a local session's end. */
static moat_session_state ended_state(const char *end_reason)
{
    if (strcmp(end_reason, "stopped") == 0)
        return MOAT_SESSION_STOPPED;
    if (strcmp(end_reason, "expired") == 0 || strcmp(end_reason, "ttl") == 0)
        return MOAT_SESSION_EXPIRED;
    return MOAT_SESSION_GONE;
}

/* Creating counts as running: its owner answers the create once the sandbox runs. */
moat_session_state moat__route_state(const moat_dir_entry *e)
{
    if (e->rec.state == MOAT_RECORD_ENDED)
        return ended_state(e->rec.end_reason);
    return e->owner_live ? MOAT_SESSION_RUNNING : MOAT_SESSION_GONE;
}

void moat__route_session(const moat_dir_entry *e, moat_session *out)
{
    const moat_session_record *r = &e->rec;
    memset(out, 0, sizeof(*out));
    snprintf(out->session_id, sizeof(out->session_id), "%s", r->session_id);
    snprintf(out->chat_id, sizeof(out->chat_id), "%s", r->chat_id);
    snprintf(out->image, sizeof(out->image), "%s", r->image);
    out->created_at_ms = r->created_at_ms;
    out->expires_at_ms = r->expires_at_ms;
    out->ended_at_ms = r->ended_at_ms;
    out->state = moat__route_state(e);
    /* No container id or execd here: the session lives on its owner (moat__session_cache_put
     * keeps sessions without an execd socket out of the cache). */
}

void moat__route_view(const moat_dir_entry *e, const char *self, session_view *out)
{
    out->session_id = e->rec.session_id;
    out->chat_id = e->rec.chat_id;
    out->container_id = "";
    out->image = e->rec.image;
    out->state = moat__route_state(e);
    out->created_at_ms = e->rec.created_at_ms;
    out->expires_at_ms = e->rec.expires_at_ms;
    out->owner_address = strcmp(e->rec.node_id, self) != 0 ? e->rec.address : "";
}

moat_code moat__cluster_list(srv *s, const char *chat, moat_dir_entry **out, size_t *count,
                             moat_status *st)
{
    size_t skipped = 0;
    /* The answer is one frame, and a session takes at least 150 bytes of it. */
    size_t max = s->cfg.max_frame_size / 150;
    moat_dircache *dir = moat__cluster_dircache(s);
    moat_code code =
        dir != NULL
            ? moat_dircache_list(dir, chat, max, out, count, &skipped, NULL, st)
            : moat_directory_list(moat__cluster_etcd(s), chat, max, out, count, &skipped, st);
    if (code == MOAT_CODE_OK && skipped > 0)
        moat_log(MOAT_LOG_WARN, "session_records_invalid", "skipped=%zu", skipped);
    return code;
}
