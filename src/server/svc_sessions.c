/* The Sandboxes service (through the runtime, on the thread pool), Health (from the background
 * probe, on the loop) and the start-up reconciliation. Each operation has a job of its own. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster_place.h"
#include "handlers.h"
#include "moat/v1/health.pb-c.h"
#include "moat/v1/sandbox.pb-c.h"

static Moat__V1__SessionStatus proto_status(moat_session_state s)
{
    switch (s) {
    case MOAT_SESSION_RUNNING:
        return MOAT__V1__SESSION_STATUS__RUNNING;
    case MOAT_SESSION_STOPPED:
        return MOAT__V1__SESSION_STATUS__STOPPED;
    case MOAT_SESSION_EXPIRED:
        return MOAT__V1__SESSION_STATUS__EXPIRED;
    case MOAT_SESSION_GONE:
    case MOAT_SESSION_FAILED:
        return MOAT__V1__SESSION_STATUS__GONE;
    }
    return MOAT__V1__SESSION_STATUS__SESSION_STATUS_UNSPECIFIED;
}

static void local_view(const moat_session *in, session_view *out)
{
    out->session_id = in->session_id;
    out->chat_id = in->chat_id;
    out->container_id = in->container_id;
    out->image = in->image;
    out->state = in->state;
    out->created_at_ms = in->created_at_ms;
    out->expires_at_ms = in->expires_at_ms;
    out->owner_address = "";
}

/* Fills a SandboxSession pointing into what *in points to and *labels (which must outlive it). */
static void to_proto(const session_view *in, Moat__V1__SandboxSession *out,
                     Moat__V1__SandboxSession__LabelsEntry lab[3],
                     Moat__V1__SandboxSession__LabelsEntry *labp[3])
{
    moat__v1__sandbox_session__init(out);
    out->session_id = (char *)in->session_id;
    out->chat_id = (char *)in->chat_id;
    out->container_id = (char *)in->container_id;
    out->status = proto_status(in->state);
    out->created_at_ms = in->created_at_ms;
    out->expires_at_ms = in->expires_at_ms;
    out->image = (char *)in->image;
    out->owner_address = (char *)in->owner_address;
    /* The labels moat itself put on the container (its expiry label is the
     * original one; expires_at_ms above is the authoritative expiry). */
    static const char *keys[3] = {"session_id", "chat_id", "moat.managed"};
    const char *vals[3] = {in->session_id, in->chat_id, "true"};
    for (int i = 0; i < 3; i++) {
        moat__v1__sandbox_session__labels_entry__init(&lab[i]);
        lab[i].key = (char *)keys[i];
        lab[i].value = (char *)vals[i];
        labp[i] = &lab[i];
    }
    out->n_labels = 3;
    out->labels = labp;
}

/* owner: "" for this node's own session, else the owner's host:port (SandboxSession's
 * owner_address, how a client learns where to call it). */
static void reply_session(stream *st, const moat_session *sess, const char *owner)
{
    Moat__V1__SandboxSession msg;
    Moat__V1__SandboxSession__LabelsEntry lab[3];
    Moat__V1__SandboxSession__LabelsEntry *labp[3];
    session_view v;
    local_view(sess, &v);
    v.owner_address = owner;
    to_proto(&v, &msg, lab, labp);
    moat_rpc_call_reply(st->call, &msg.base);
}

/* A ttl past max_ttl_seconds is refused rather than clamped: the client learns
 * at once that its session would not live as long as it asked. */
static bool ttl_ok(stream *st, uint32_t ttl_seconds)
{
    uint32_t max = st->s->cfg.max_ttl_seconds;
    if (ttl_seconds <= max)
        return true;
    moat_log_limited(&st->s->logs.ttl_refused, MOAT_LOG_INFO, "ttl_refused",
                     "peer=%s ttl_seconds=%u max=%u", moat__stream_peer(st), ttl_seconds, max);
    moat_status status;
    moat_status_set(&status, MOAT_CODE_INVALID_ARGUMENT, "ttl_too_long",
                    "ttl_seconds %u is longer than this server allows (max_ttl_seconds %u)",
                    ttl_seconds, max);
    char v[16];
    snprintf(v, sizeof(v), "%u", max);
    moat_status_add_detail(&status, "max_ttl_seconds", v);
    moat_rpc_call_end(st->call, &status);
    return false;
}

static int64_t ttl_ms(const srv *s, uint32_t ttl_seconds)
{
    return (int64_t)(ttl_seconds != 0 ? ttl_seconds : s->cfg.ttl_seconds) * 1000;
}

/* ------------------------------------------------------------ CreateSession */

/* One create in flight per chat; later ones for the same chat wait and then find the session
 * the first one made. */
typedef struct create_wait {
    struct create_wait *next;
    char chat[MOAT_UUID_STR_LEN];
    stream **waiting;
    size_t nwaiting;
} create_wait;

typedef struct create_job {
    engine_job base;
    char chat[MOAT_UUID_STR_LEN];
    int64_t ttl_ms;
    moat_session_options opts; /* opts.image points into image */
    char image[MOAT_IMAGE_NAME_MAX];
    /* Other creates in flight (all, and of this chat) and the limits, read on the loop for the
     * job's thread. */
    uint32_t others_total, others_chat;
    uint32_t max_total, max_chat;
    moat_session session;
    bool found_existing;   /* the chat's live session, not a new one */
    bool claimed;          /* a warm pool sandbox */
    cluster_claim cluster; /* in a cluster: the chat key and the record (cluster_place.c) */
} create_job;

static create_wait *wait_find(srv *s, const char *chat)
{
    for (create_wait *w = s->create_waiters; w != NULL; w = w->next) {
        if (strcmp(w->chat, chat) == 0)
            return w;
    }
    return NULL;
}

/* Whether one more session fits max_sessions and max_sessions_per_chat, counting
 * the sessions there are and the creates in flight; else sets c's refusal. */
static bool create_fits(create_job *c, const moat_session *all, size_t n,
                        const moat_pool_stats *pool)
{
    engine_job *j = &c->base;
    size_t of_chat = 0;
    for (size_t i = 0; i < n; i++)
        of_chat += strcmp(all[i].chat_id, c->chat) == 0;
    /* Pool sandboxes count; a claim turns one into this session instead of adding one. */
    size_t held = n + c->others_total + pool->ready + pool->starting - (pool->ready > 0);
    if (held >= c->max_total) {
        j->code = MOAT_CODE_RESOURCE_EXHAUSTED;
        moat_status_set(&j->status, j->code, "too_many_sessions",
                        "%zu sessions exist, are being made or wait in the pool (max_sessions "
                        "%u); stop one first",
                        held, c->max_total);
        return false;
    }
    if (of_chat + c->others_chat >= c->max_chat) {
        j->code = MOAT_CODE_RESOURCE_EXHAUSTED;
        moat_status_set(&j->status, j->code, "too_many_sessions_for_chat",
                        "chat %s has %zu sessions or creates in flight (max_sessions_per_chat %u); "
                        "stop one or create without force_new",
                        c->chat, of_chat + c->others_chat, c->max_chat);
        moat_status_add_detail(&j->status, "chat_id", c->chat);
        return false;
    }
    return true;
}

/* The chat's session is its newest one not made with force_new: the one the sweeps keep when
 * they find two (docs/runtime.md); a force_new one only when it has no other. */
static const moat_session *live_session_of(const char *chat, const moat_session *all, size_t n)
{
    int64_t now = moat_time_now_ms();
    const moat_session *best = NULL;
    for (size_t i = 0; i < n; i++) {
        if (strcmp(all[i].chat_id, chat) == 0 && all[i].state == MOAT_SESSION_RUNNING &&
            all[i].expires_at_ms > now &&
            (best == NULL || (best->force_new && !all[i].force_new) ||
             (best->force_new == all[i].force_new && all[i].created_at_ms > best->created_at_ms)))
            best = &all[i];
    }
    return best;
}

/* The create under the chat key (a no-op outside a cluster): the key is taken with the
 * session's id before the sandbox is the chat's, so from_pool reserves a pool sandbox first, for
 * its id, and binds it only once the key is this node's; a chat held elsewhere, or a claim that
 * failed, gives it back (removed instead when the claim's transaction got no clear answer and
 * the id may be in etcd). docs/CLUSTER.md, "Warm pool sandboxes". false: a reserved sandbox
 * could not be bound (removed, keys given up), and a cold create may follow. */
static bool keyed_create(create_job *c, int64_t now, bool from_pool)
{
    engine_job *j = &c->base;
    srv *s = j->s;
    char id[MOAT_UUID_STR_LEN];
    bool reserved =
        from_pool && s->rt_ops->pool_reserve(s->rt, &c->opts, id, &j->status) == MOAT_CODE_OK;
    moat_status_clear(&j->status);
    if (!reserved)
        moat_uuid_generate(id);
    j->code = moat__cluster_claim(s, c->chat, id, now, now + c->ttl_ms, &c->opts, &c->cluster,
                                  &j->status);
    if (j->code != MOAT_CODE_OK || c->cluster.lost) {
        if (reserved)
            s->rt_ops->pool_unreserve(s->rt, id, !c->cluster.unsure);
        return true;
    }
    if (reserved)
        j->code =
            s->rt_ops->pool_bind(s->rt, id, c->chat, now, now + c->ttl_ms, &c->session, &j->status);
    else
        j->code = s->rt_ops->create(s->rt, id, c->chat, now, now + c->ttl_ms, &c->opts, &c->session,
                                    &j->status);
    c->claimed = reserved && j->code == MOAT_CODE_OK;
    moat__cluster_created(s, &c->cluster, &c->session, j->code == MOAT_CODE_OK);
    return !reserved || c->claimed;
}

static void create_run(engine_job *j)
{
    create_job *c = (create_job *)j;
    srv *s = j->s;
    /* A refused image is refused whether or not the chat has a session to reuse. */
    if (c->opts.image != NULL &&
        s->rt_ops->check_image(s->rt, c->opts.image, &j->status) != MOAT_CODE_OK) {
        j->code = j->status.code;
        return;
    }
    moat_session *all = NULL;
    size_t n = 0;
    if (s->rt_ops->list_active(s->rt, &all, &n, &j->status) != MOAT_CODE_OK) {
        j->code = j->status.code;
        return;
    }
    const moat_session *live = c->opts.force_new ? NULL : live_session_of(c->chat, all, n);
    /* A request that names an image gets the chat's session only if it runs that image;
     * silently handing back another one would run its commands where they cannot work. */
    if (live != NULL && c->opts.image != NULL && strcmp(live->image, c->opts.image) != 0) {
        j->code = MOAT_CODE_FAILED_PRECONDITION;
        moat_status_set(&j->status, j->code, "session_image_differs",
                        "chat %s has session %s running image '%s'; stop it or create with "
                        "force_new",
                        c->chat, live->session_id, live->image);
        moat_status_add_detail(&j->status, "session_id", live->session_id);
        moat_status_add_detail(&j->status, "image", live->image);
        free(all);
        return;
    }
    if (live != NULL) {
        c->session = *live;
        c->found_existing = true;
        j->code = MOAT_CODE_OK;
        free(all);
        return;
    }
    moat_pool_stats pool = {0};
    if (s->rt_ops->pool_stats != NULL)
        s->rt_ops->pool_stats(s->rt, &pool);
    bool fits = create_fits(c, all, n, &pool);
    free(all);
    if (!fits)
        return;
    int64_t now = moat_time_now_ms();
    moat_status_clear(&j->status);
    if (s->rt_ops->claim != NULL && s->cluster == NULL) {
        j->code = s->rt_ops->claim(s->rt, c->chat, now, now + c->ttl_ms, &c->opts, &c->session,
                                   &j->status);
        c->claimed = j->code == MOAT_CODE_OK;
        /* A claim that failed has logged why and removed its sandbox: a cold create follows. */
        if (c->claimed || j->code == MOAT_CODE_INVALID_ARGUMENT)
            return;
        moat_status_clear(&j->status);
    }
    /* A pool sandbox whose bind failed has been removed and its keys given up: cold then. */
    bool from_pool = s->cluster != NULL && s->rt_ops->pool_reserve != NULL;
    if (!keyed_create(c, now, from_pool))
        keyed_create(c, now, false);
    /* Say when the pool could not help because its sandboxes do not start. */
    if (j->code != MOAT_CODE_OK && pool.size > 0 && pool.failures_in_row > 0)
        moat_status_add_detail(&j->status, "pool", "failing");
}

/* Wakes the calls that waited for this chat; they now see its session. */
static void wake_waiters(srv *s, const char *chat)
{
    create_wait **pp = (create_wait **)&s->create_waiters;
    while (*pp != NULL && strcmp((*pp)->chat, chat) != 0)
        pp = &(*pp)->next;
    if (*pp == NULL)
        return;
    create_wait *w = *pp;
    *pp = w->next;
    for (size_t i = 0; i < w->nwaiting; i++) {
        stream *st = w->waiting[i];
        if (moat__running(st))
            moat__dispatch(st, NULL);
        moat__stream_unref(st);
    }
    free(w->waiting);
    free(w);
}

static void create_done(engine_job *j)
{
    create_job *c = (create_job *)j;
    srv *s = j->s;
    s->creates_inflight--;
    if (j->code == MOAT_CODE_OK && c->cluster.lost) {
        if (moat__running(j->st))
            moat__cluster_reply_record(j->st, &c->cluster.rec);
    } else if (j->code == MOAT_CODE_OK) {
        moat__session_cache_put(s, &c->session);
        if (!c->found_existing) {
            uint64_t took_ns = moat_time_mono_ns() - j->started_ns;
            moat__metrics_create_latency(s->metrics, took_ns);
            moat__metrics_session_delta(s->metrics, 1);
            moat_log(MOAT_LOG_INFO, "session_created",
                     "session_id=%s chat_id=%s duration_ms=%llu from_pool=%s",
                     c->session.session_id, c->chat, (unsigned long long)(took_ns / 1000000u),
                     c->claimed ? "true" : "false");
        }
        if (moat__running(j->st))
            reply_session(j->st, &c->session, "");
    } else {
        moat_log_limited(&s->logs.create_failed, MOAT_LOG_WARN, "session_create_failed",
                         "chat_id=%s code=%s reason=%s msg=\"%s\"", c->chat,
                         moat_code_name(j->status.code), j->status.reason, j->status.message);
        if (j->status.code == MOAT_CODE_OK)
            moat_status_set(&j->status, j->code, "sandbox_start_failed", "create failed");
        moat_rpc_call_end(j->st->call, &j->status);
    }
    wake_waiters(s, c->chat);
}

static void create_start(stream *st, const Moat__V1__CreateSessionRequest *req, const char *chat)
{
    srv *s = st->s;
    create_job *c = moat__job_new(st, sizeof(*c));
    if (c == NULL)
        return;
    snprintf(c->chat, sizeof(c->chat), "%s", chat);
    c->opts.force_new = req->force_new;
    c->others_total = s->creates_inflight;
    for (create_wait *w = s->create_waiters; w != NULL; w = w->next)
        c->others_chat += strcmp(w->chat, chat) == 0;
    c->max_total = s->cfg.max_sessions;
    c->max_chat = s->cfg.max_sessions_per_chat;
    s->creates_inflight++;
    c->ttl_ms = ttl_ms(s, req->ttl_seconds);
    if (req->image != NULL && req->image[0] != '\0') {
        snprintf(c->image, sizeof(c->image), "%s", req->image);
        c->opts.image = c->image;
    }
    if (req->resources != NULL) {
        c->opts.memory_bytes = (int64_t)req->resources->memory_bytes;
        c->opts.nano_cpus = (int64_t)req->resources->cpu_millis * 1000000;
        c->opts.pids_limit = req->resources->pids_limit;
    }
    create_wait *w = calloc(1, sizeof(*w));
    if (w != NULL) {
        snprintf(w->chat, sizeof(w->chat), "%s", chat);
        w->next = s->create_waiters;
        s->create_waiters = w;
    }
    moat__job_start(&c->base, create_run, create_done);
}

void moat__sandboxes_create(stream *st, const ProtobufCMessage *msg)
{
    const Moat__V1__CreateSessionRequest *req = (const Moat__V1__CreateSessionRequest *)msg;
    char chat[MOAT_UUID_STR_LEN];
    if (!moat__canon(st, req->chat_id, "chat_id", chat) || !ttl_ok(st, req->ttl_seconds))
        return;
    /* Longer than any image the config allows (they are checked against this size). */
    if (req->image != NULL && strlen(req->image) >= MOAT_IMAGE_NAME_MAX) {
        moat_status status;
        moat_status_set(&status, MOAT_CODE_INVALID_ARGUMENT, "image_not_allowed",
                        "image name longer than %d bytes", MOAT_IMAGE_NAME_MAX - 1);
        moat_status_add_detail(&status, "field", "image");
        moat_rpc_call_end(st->call, &status);
        return;
    }
    if (moat__cluster_fenced(st->s)) {
        moat_status status;
        moat_status_set(&status, MOAT_CODE_UNAVAILABLE, "node_fenced",
                        "this node cannot reach etcd to prove it is still a cluster member; it "
                        "accepts no create until it can");
        moat_rpc_call_end(st->call, &status);
        return;
    }
    if (!moat__cluster_create(st, req, chat))
        moat__create_local(st, req, chat);
}

void moat__create_local(stream *st, const Moat__V1__CreateSessionRequest *req, const char *chat)
{
    create_wait *w = wait_find(st->s, chat);
    if (w != NULL && !req->force_new) {
        stream **n = realloc(w->waiting, (w->nwaiting + 1) * sizeof(*n));
        if (n == NULL) {
            moat_rpc_call_fail(st->call, MOAT_CODE_RESOURCE_EXHAUSTED, "out_of_memory",
                               "out of memory");
            return;
        }
        w->waiting = n;
        w->waiting[w->nwaiting++] = st;
        moat__stream_ref(st);
        return;
    }
    create_start(st, req, chat);
}

/* ------------------------------------------------------------ GetSession, RenewSession */

/* One session in, one session out. */
typedef struct session_job {
    engine_job base;
    char session_id[MOAT_UUID_STR_LEN];
    int64_t ttl_ms; /* RenewSession */
    moat_session session;
    char owner[MOAT_NODE_ADDRESS_MAX]; /* GetSession of another node's session: its address */
} session_job;

static void get_run(engine_job *j)
{
    session_job *g = (session_job *)j;
    if (!moat__engine_skipped(j))
        j->code = j->s->rt_ops->get(j->s->rt, g->session_id, &g->session, &j->status);
    /* Another node's session, live or not, is answered from its record. */
    session_route r;
    if (moat__directory_knows(j, g->session_id, &r)) {
        moat__route_session(&r.entry, &g->session);
        if (strcmp(r.entry.rec.node_id, j->s->cfg.cluster_node_id) != 0)
            snprintf(g->owner, sizeof(g->owner), "%s", r.entry.rec.address);
        j->code = MOAT_CODE_OK;
    }
}

static void renew_run(engine_job *j)
{
    session_job *g = (session_job *)j;
    int64_t at = moat_time_now_ms() + g->ttl_ms;
    /* Durable in the directory first: a renewal etcd did not take is not one. Another node's
     * session has no record of this node's to move, and is routed below. */
    j->code = moat__cluster_renew(j->s, g->session_id, at, &j->status);
    if (j->code != MOAT_CODE_OK)
        return;
    if (!moat__engine_skipped(j))
        j->code = j->s->rt_ops->renew(j->s->rt, g->session_id, at, &g->session, &j->status);
    /* Renewed by its owner only (ended: session_not_found, as here). */
    session_route r;
    if (moat__directory_knows(j, g->session_id, &r) && moat__route_status(&r, &j->status))
        j->code = j->status.code;
}

static void session_done(engine_job *j)
{
    session_job *g = (session_job *)j;
    if (j->code != MOAT_CODE_OK) {
        if (!moat__proxy_route(j->st, &j->status))
            moat_rpc_call_end(j->st->call, &j->status);
        return;
    }
    if (g->session.state == MOAT_SESSION_RUNNING)
        moat__session_cache_put(j->s, &g->session);
    else
        moat__session_cache_drop(j->s, g->session.session_id);
    if (moat__running(j->st))
        reply_session(j->st, &g->session, g->owner);
}

/* A session_job for the session the call names; NULL when the call ended. */
static session_job *session_job_new(stream *st, const char *session_id)
{
    char id[MOAT_UUID_STR_LEN];
    if (!moat__canon(st, session_id, "session_id", id))
        return NULL;
    session_job *g = moat__job_new_routed(st, sizeof(*g));
    if (g != NULL)
        snprintf(g->session_id, sizeof(g->session_id), "%s", id);
    return g;
}

void moat__sandboxes_get(stream *st, const ProtobufCMessage *msg)
{
    const Moat__V1__GetSessionRequest *req = (const Moat__V1__GetSessionRequest *)msg;
    char id[MOAT_UUID_STR_LEN];
    if (!moat__canon(st, req->session_id, "session_id", id))
        return;
    /* Another live node's, by the copy: answered from its record, as get_run would after the
     * engine's NOT_FOUND, without that round trip (moat__cluster_elsewhere says why it holds). */
    moat_dir_entry e;
    if (moat__cluster_elsewhere(st->s, id, &e)) {
        moat_session session;
        moat__route_session(&e, &session);
        reply_session(st, &session, e.rec.address);
        return;
    }
    session_job *g = session_job_new(st, id);
    if (g != NULL)
        moat__job_start(&g->base, get_run, session_done);
}

void moat__sandboxes_renew(stream *st, const ProtobufCMessage *msg)
{
    const Moat__V1__RenewSessionRequest *req = (const Moat__V1__RenewSessionRequest *)msg;
    char id[MOAT_UUID_STR_LEN];
    /* Another live node's session is renewed by its owner: neither this node's etcd read of its
     * record nor its engine's lookup can say more than the copy. */
    if (!moat__canon(st, req->session_id, "session_id", id) || !ttl_ok(st, req->ttl_seconds) ||
        moat__cluster_moved(st, id))
        return;
    session_job *g = session_job_new(st, id);
    if (g == NULL)
        return;
    g->ttl_ms = ttl_ms(st->s, req->ttl_seconds);
    moat__job_start(&g->base, renew_run, session_done);
}

/* ------------------------------------------------------------ ListSessions */

typedef struct list_job {
    engine_job base;
    char chat[MOAT_UUID_STR_LEN]; /* "" = every chat */
    moat_session *sessions;       /* from list_active: freed by list_done */
    moat_dir_entry *records;      /* in a cluster, from the directory instead: freed too */
    size_t count;
    bool cluster; /* records, not sessions */
} list_job;

static void list_run(engine_job *j)
{
    list_job *l = (list_job *)j;
    l->cluster = moat__cluster_etcd(j->s) != NULL;
    if (l->cluster)
        j->code = moat__cluster_list(j->s, l->chat, &l->records, &l->count, &j->status);
    else
        j->code = j->s->rt_ops->list_active(j->s->rt, &l->sessions, &l->count, &j->status);
}

static void list_reply(list_job *l)
{
    stream *st = l->base.st;
    size_t n = 0;
    Moat__V1__SandboxSession *items = calloc(l->count + 1, sizeof(*items));
    Moat__V1__SandboxSession **ptrs = calloc(l->count + 1, sizeof(*ptrs));
    Moat__V1__SandboxSession__LabelsEntry(*lab)[3] = calloc(l->count + 1, sizeof(*lab));
    Moat__V1__SandboxSession__LabelsEntry *(*labp)[3] = calloc(l->count + 1, sizeof(*labp));
    if (items == NULL || ptrs == NULL || lab == NULL || labp == NULL) {
        moat_rpc_call_fail(st->call, MOAT_CODE_RESOURCE_EXHAUSTED, "out_of_memory",
                           "out of memory");
    } else {
        /* The directory's listing is filtered already, and holds no execd to cache. */
        for (size_t i = 0; i < l->count; i++) {
            session_view v;
            if (l->cluster) {
                moat__route_view(&l->records[i], st->s->cfg.cluster_node_id, &v);
            } else if (l->chat[0] != '\0' && strcmp(l->sessions[i].chat_id, l->chat) != 0) {
                continue;
            } else {
                moat__session_cache_put(st->s, &l->sessions[i]);
                local_view(&l->sessions[i], &v);
            }
            to_proto(&v, &items[n], lab[n], labp[n]);
            ptrs[n] = &items[n];
            n++;
        }
        Moat__V1__ListSessionsResponse resp = MOAT__V1__LIST_SESSIONS_RESPONSE__INIT;
        resp.n_sessions = n;
        resp.sessions = ptrs;
        if (moat__running(st))
            moat_rpc_call_reply(st->call, &resp.base);
    }
    free(items);
    free(ptrs);
    free(lab);
    free(labp);
}

static void list_done(engine_job *j)
{
    list_job *l = (list_job *)j;
    if (j->code != MOAT_CODE_OK) {
        moat_rpc_call_end(j->st->call, &j->status);
    } else {
        /* Only this node's own listing counts its sessions. */
        if (!l->cluster)
            moat__metrics_sessions_set(j->s->metrics, (int64_t)l->count);
        list_reply(l);
    }
    free(l->sessions);
    free(l->records);
}

void moat__sandboxes_list(stream *st, const ProtobufCMessage *msg)
{
    const Moat__V1__ListSessionsRequest *req = (const Moat__V1__ListSessionsRequest *)msg;
    char chat[MOAT_UUID_STR_LEN] = "";
    if (req->chat_id[0] != '\0' && !moat__canon(st, req->chat_id, "chat_id", chat))
        return;
    list_job *l = moat__job_new_routed(st, sizeof(*l));
    if (l == NULL)
        return;
    snprintf(l->chat, sizeof(l->chat), "%s", chat);
    moat__job_start(&l->base, list_run, list_done);
}

/* ------------------------------------------------------------ StopSession */

typedef struct stop_job {
    engine_job base;
    char session_id[MOAT_UUID_STR_LEN];
    bool stopped; /* it was running and this call stopped it */
} stop_job;

static void stop_run(engine_job *j)
{
    stop_job *p = (stop_job *)j;
    moat_session cur;
    if (!moat__engine_skipped(j))
        j->code = j->s->rt_ops->get(j->s->rt, p->session_id, &cur, &j->status);
    /* Another node's session is stopped by its owner; one whose node is gone or that ended is
     * not running, and stop is idempotent. */
    session_route r;
    if (moat__directory_knows(j, p->session_id, &r)) {
        bool moved = r.verdict == ROUTE_MOVED && moat__route_status(&r, &j->status);
        j->code = moved ? j->status.code : MOAT_CODE_OK;
        return;
    }
    if (j->code == MOAT_CODE_OK && cur.state == MOAT_SESSION_RUNNING) {
        j->code = j->s->rt_ops->stop(j->s->rt, p->session_id, &j->status);
        p->stopped = j->code == MOAT_CODE_OK;
    }
    /* Also for one already over here: a record an earlier end could not write. */
    if (j->code == MOAT_CODE_OK)
        moat__cluster_ended(j->s, p->session_id, "stopped");
}

static void stop_done(engine_job *j)
{
    stop_job *p = (stop_job *)j;
    if (j->code != MOAT_CODE_OK) {
        if (!moat__proxy_route(j->st, &j->status))
            moat_rpc_call_end(j->st->call, &j->status);
        return;
    }
    moat__session_cache_drop(j->s, p->session_id);
    /* Its retained replay can no longer be wanted: memory goes back now. */
    moat_bridge_drop_scope(j->s->bridge, p->session_id);
    if (p->stopped) {
        moat__metrics_session_delta(j->s->metrics, -1);
        moat_log(MOAT_LOG_INFO, "session_stopped", "session_id=%s", p->session_id);
    }
    Moat__V1__StopSessionResponse resp = MOAT__V1__STOP_SESSION_RESPONSE__INIT;
    resp.stopped = p->stopped;
    if (moat__running(j->st))
        moat_rpc_call_reply(j->st->call, &resp.base);
}

void moat__sandboxes_stop(stream *st, const ProtobufCMessage *msg)
{
    const Moat__V1__StopSessionRequest *req = (const Moat__V1__StopSessionRequest *)msg;
    char id[MOAT_UUID_STR_LEN];
    /* Another live node's session is stopped by its owner. */
    if (!moat__canon(st, req->session_id, "session_id", id) || moat__cluster_moved(st, id))
        return;
    stop_job *p = moat__job_new_routed(st, sizeof(*p));
    if (p == NULL)
        return;
    snprintf(p->session_id, sizeof(p->session_id), "%s", id);
    moat__job_start(&p->base, stop_run, stop_done);
}

/* ------------------------------------------------------------ Health */

/* Answered on the loop from the background probe, so it never waits on the engine. Without the
 * engine no session can be made or found, hence NOT_SERVING, though commands in running
 * sessions still work (they go to execd, not to Docker). */
void moat__health_check(stream *st, const ProtobufCMessage *req)
{
    (void)req;
    bool up = moat__health_state(st->s->health, NULL) == MOAT_ENGINE_UP;
    Moat__V1__HealthCheckResponse resp = MOAT__V1__HEALTH_CHECK_RESPONSE__INIT;
    resp.status = up && !st->s->draining
                      ? MOAT__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING
                      : MOAT__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING;
    resp.server_version = (char *)"moatd/" MOAT_VERSION;
    resp.docker_reachable = up;
    int64_t live = moat__metrics_sessions(st->s->metrics);
    resp.live_sessions = live > 0 ? (uint32_t)live : 0;
    /* Read under the pool's own lock: no engine call, so the loop never waits on Docker. */
    moat_pool_stats pool = {0};
    if (st->s->rt_ops->pool_stats != NULL)
        st->s->rt_ops->pool_stats(st->s->rt, &pool);
    resp.pool_size = pool.size;
    resp.pool_ready = pool.ready;
    resp.pool_failing = pool.failures_in_row > 0;
    moat_rpc_call_reply(st->call, &resp.base);
}

/* ------------------------------------------------------------ start-up */

typedef struct reconcile_job {
    engine_job base;
    moat_reconcile_report report;
} reconcile_job;

static void reconcile_run(engine_job *j)
{
    reconcile_job *r = (reconcile_job *)j;
    j->code = j->s->rt_ops->reconcile(j->s->rt, moat_time_now_ms(), &r->report, &j->status);
    /* Started even when reconcile failed (the engine is down): the reaper retries it once the
     * engine answers, and the watcher's stream tells it when an engine restart stopped the
     * sandboxes while moatd keeps running. */
    moat_status why;
    if (j->s->rt_ops->start_reaper(j->s->rt, &why) != MOAT_CODE_OK)
        moat_log(MOAT_LOG_WARN, "reaper_not_started", "msg=\"%s\"", why.message);
    if (j->s->rt_ops->start_watcher(j->s->rt, &why) != MOAT_CODE_OK)
        moat_log(MOAT_LOG_WARN, "watcher_not_started", "msg=\"%s\"", why.message);
    /* After the reconcile, which removed the unclaimed sandboxes an earlier run left. */
    if (j->s->rt_ops->start_pool != NULL &&
        j->s->rt_ops->start_pool(j->s->rt, &why) != MOAT_CODE_OK)
        moat_log(MOAT_LOG_WARN, "pool_not_started", "msg=\"%s\"", why.message);
}

static void reconcile_done(engine_job *j)
{
    reconcile_job *r = (reconcile_job *)j;
    if (j->code != MOAT_CODE_OK) {
        moat_log(MOAT_LOG_WARN, "reconcile_failed", "code=%s msg=\"%s\"",
                 moat_code_name(j->status.code), j->status.message);
        return;
    }
    moat__metrics_sessions_set(j->s->metrics, (int64_t)r->report.adopted);
    moat_log(MOAT_LOG_INFO, "reconciled", "adopted=%zu reaped=%zu gone=%zu", r->report.adopted,
             r->report.reaped, r->report.gone);
}

void moat__sessions_start(srv *s)
{
    reconcile_job *r = moat__job_new_unattached(s, sizeof(*r));
    if (r != NULL)
        moat__job_start(&r->base, reconcile_run, reconcile_done);
}
