/* moatd's service handlers: Sandboxes and Health through the runtime (on
 * libuv's thread pool), Exec and Files through the bridge (on the loop). They
 * translate between protobuf-c messages and the modules' C structs; the
 * decisions belong to the runtime and the bridge. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moat/v1/exec.pb-c.h"
#include "moat/v1/files.pb-c.h"
#include "moat/v1/health.pb-c.h"
#include "moat/v1/sandbox.pb-c.h"
#include "server_internal.h"

/* ------------------------------------------------------------ session cache */

/* Sessions known to be running, so a command does not need a Docker round
 * trip first. A miss asks the runtime; stop and the reaper remove entries. */
#define CACHE_BUCKETS 1024

/* Where a session's execd listens, and the token it requires; both borrowed. */
typedef struct session_addr {
    const char *sock;
    const char *token;
} session_addr;

typedef struct cache_entry {
    struct cache_entry *next;
    char id[MOAT_UUID_STR_LEN];
    char token[MOAT_EXECD_TOKEN_MAX];
    char sock[];
} cache_entry;

typedef struct cache {
    cache_entry *b[CACHE_BUCKETS];
} cache;

static unsigned hash_id(const char *id)
{
    unsigned h = 2166136261u;
    for (const char *p = id; *p; p++)
        h = (h ^ (unsigned char)*p) * 16777619u;
    return h % CACHE_BUCKETS;
}

static cache_entry *cache_find(srv *s, const char *id)
{
    cache *c = s->sessions;
    for (cache_entry *e = c->b[hash_id(id)]; e != NULL; e = e->next) {
        if (strcmp(e->id, id) == 0)
            return e;
    }
    return NULL;
}

static void cache_put(srv *s, const moat_session *session)
{
    const char *id = session->session_id;
    if (cache_find(s, id) != NULL)
        return;
    cache *c = s->sessions;
    cache_entry *e = malloc(sizeof(*e) + strlen(session->execd_socket) + 1);
    if (e == NULL)
        return;
    snprintf(e->id, sizeof(e->id), "%s", id);
    memcpy(e->token, session->execd_token, sizeof(e->token));
    strcpy(e->sock, session->execd_socket);
    unsigned h = hash_id(id);
    e->next = c->b[h];
    c->b[h] = e;
}

static void cache_drop(srv *s, const char *id)
{
    cache *c = s->sessions;
    cache_entry **pp = &c->b[hash_id(id)];
    while (*pp != NULL) {
        if (strcmp((*pp)->id, id) == 0) {
            cache_entry *e = *pp;
            *pp = e->next;
            free(e);
            return;
        }
        pp = &(*pp)->next;
    }
}

static void cache_free(srv *s)
{
    cache *c = s->sessions;
    if (c == NULL)
        return;
    for (size_t i = 0; i < CACHE_BUCKETS; i++) {
        cache_entry *e = c->b[i];
        while (e != NULL) {
            cache_entry *n = e->next;
            free(e);
            e = n;
        }
    }
    free(c);
    s->sessions = NULL;
}

/* ------------------------------------------------------------ calls per session */

/* Exec and Files calls open to each session, bounded by max_calls_per_session
 * so a burst cannot overrun the execd's accept queue (or its threads). An
 * entry lives while its count is not 0; a stream holding one names it. */
typedef struct call_count {
    struct call_count *next;
    char id[MOAT_UUID_STR_LEN];
    uint32_t n;
} call_count;

typedef struct call_counts {
    call_count *b[CACHE_BUCKETS];
} call_counts;

/* Counts one more call to session id for st; false (the call ended
 * RESOURCE_EXHAUSTED) at the limit. */
static bool calls_acquire(stream *st, const char *id)
{
    call_counts *t = st->s->call_counts;
    if (t == NULL)
        return true; /* handlers not started: nothing reaches a session */
    /* Interrupt is how a client frees its slots: never refused, never counted. */
    if (moat_rpc_call_method(st->call)->id == MOAT_RPC_EXEC_INTERRUPT)
        return true;
    call_count *e = t->b[hash_id(id)];
    while (e != NULL && strcmp(e->id, id) != 0)
        e = e->next;
    if (e != NULL && e->n >= st->s->cfg.max_calls_per_session) {
        moat_log_limited(&st->s->logs.calls_refused, MOAT_LOG_WARN, "calls_refused",
                         "session_id=%s peer=%s limit=%u", id, st->c != NULL ? st->c->peer : "-",
                         st->s->cfg.max_calls_per_session);
        moat_status status;
        moat_status_set(&status, MOAT_CODE_RESOURCE_EXHAUSTED, "too_many_calls",
                        "session %s already has %u calls open (max_calls_per_session); retry when "
                        "one ends",
                        id, e->n);
        moat_status_add_detail(&status, "session_id", id);
        moat_rpc_call_end(st->call, &status);
        return false;
    }
    if (e == NULL) {
        e = calloc(1, sizeof(*e));
        if (e == NULL) {
            moat_rpc_call_fail(st->call, MOAT_CODE_RESOURCE_EXHAUSTED, "out_of_memory",
                               "out of memory");
            return false;
        }
        snprintf(e->id, sizeof(e->id), "%s", id);
        unsigned h = hash_id(id);
        e->next = t->b[h];
        t->b[h] = e;
    }
    e->n++;
    st->session_calls = e;
    return true;
}

static void calls_free(srv *s)
{
    call_counts *t = s->call_counts;
    if (t == NULL)
        return;
    for (size_t i = 0; i < CACHE_BUCKETS; i++) {
        call_count *e = t->b[i];
        while (e != NULL) {
            call_count *n = e->next;
            free(e);
            e = n;
        }
    }
    free(t);
    s->call_counts = NULL;
}

void moat__handlers_stream_gone(stream *st)
{
    call_count *e = st->session_calls;
    if (e == NULL || st->s->call_counts == NULL)
        return;
    st->session_calls = NULL;
    if (--e->n > 0)
        return;
    call_counts *t = st->s->call_counts;
    call_count **pp = &t->b[hash_id(e->id)];
    while (*pp != e)
        pp = &(*pp)->next;
    *pp = e->next;
    free(e);
}

static void on_gone_async(uv_async_t *a)
{
    srv *s = a->data;
    gone_queue *q = s->gone;
    pthread_mutex_lock(&q->mu);
    if (q->overflow) {
        cache_free(s);
        s->sessions = calloc(1, sizeof(cache));
    } else {
        for (size_t i = 0; i < q->count; i++) {
            cache_drop(s, q->ids[i]);
            moat_bridge_drop_scope(s->bridge, q->ids[i]);
        }
    }
    q->count = 0;
    q->overflow = false;
    pthread_mutex_unlock(&q->mu);
}

/* The runtime's hook, on its threads. */
static void rt_session_event(void *ctx, const char *event, const char *session_id, moat_code code,
                             uint64_t duration_ns)
{
    (void)duration_ns;
    (void)code;
    srv *s = ctx;
    if (strcmp(event, "expired") == 0 || strcmp(event, "gone") == 0 ||
        strcmp(event, "adopted") == 0)
        moat__metrics_reaper(s->metrics, event);
    if (strcmp(event, "expired") == 0 || strcmp(event, "gone") == 0) {
        moat__metrics_session_delta(s->metrics, -1);
        gone_queue *q = s->gone;
        pthread_mutex_lock(&q->mu);
        if (q->count < GONE_MAX)
            snprintf(q->ids[q->count++], MOAT_UUID_STR_LEN, "%s", session_id);
        else
            q->overflow = true;
        pthread_mutex_unlock(&q->mu);
        uv_async_send(&s->gone_async);
    }
}

/* ------------------------------------------------------------ thread-pool jobs */

typedef struct job job;
typedef void (*job_fn)(job *j);

struct job {
    uv_work_t req;
    srv *s;
    stream *st;
    job_fn run, done;
    moat_status status;
    moat_code code;
    char id[MOAT_UUID_STR_LEN];
    char chat[MOAT_UUID_STR_LEN];
    int64_t when_ms;
    int64_t ttl_ms;
    bool flag;
    moat_session_options opts;
    char image[MOAT_IMAGE_NAME_MAX];
    moat_session one;
    moat_session *many;
    size_t count;
    uint64_t t0;
    /* CreateSession: other creates in flight (all, and of this chat) and the
     * limits, read on the loop for the job's thread. */
    uint32_t others_total, others_chat;
    uint32_t max_total, max_chat;
    /* What to do on the loop once the job found a session (Exec and Files). */
    void (*then)(stream *st, const char *session_id, const session_addr *sock);
    job *eng_next, *eng_prev; /* in s->engine_jobs while a call waits on it */
};

static void job_work(uv_work_t *r)
{
    job *j = r->data;
    moat_status_clear(&j->status);
    j->run(j);
}

static void engine_jobs_unlink(job *j)
{
    if (j->st == NULL)
        return;
    if (j->eng_prev != NULL)
        j->eng_prev->eng_next = j->eng_next;
    else
        j->s->engine_jobs = j->eng_next;
    if (j->eng_next != NULL)
        j->eng_next->eng_prev = j->eng_prev;
}

static void job_after(uv_work_t *r, int status)
{
    (void)status;
    job *j = r->data;
    engine_jobs_unlink(j);
    j->done(j);
    if (j->st != NULL)
        moat__stream_unref(j->st);
    moat__srv_job(j->s, -1);
    free(j->many);
    free(j);
}

static void fail_engine_down(stream *st, uint64_t age_ms)
{
    moat_rpc_call_fail(st->call, MOAT_CODE_UNAVAILABLE, "docker_unreachable",
                       "the docker engine did not answer its health probe %llu ms ago",
                       (unsigned long long)age_ms);
}

/* A job for a call that needs the engine; NULL (the call ended) when it cannot run: with the
 * engine down the call fails at once rather than hold a worker for docker_timeout_ms. */
static job *job_new(stream *st)
{
    uint64_t age_ms;
    if (moat__health_state(st->s->health, &age_ms) == MOAT_ENGINE_DOWN) {
        fail_engine_down(st, age_ms);
        return NULL;
    }
    job *j = calloc(1, sizeof(*j));
    if (j == NULL) {
        moat_rpc_call_fail(st->call, MOAT_CODE_RESOURCE_EXHAUSTED, "out_of_memory",
                           "out of memory");
        return NULL;
    }
    j->s = st->s;
    j->st = st;
    j->t0 = moat_time_mono_ns();
    return j;
}

static void job_start(job *j, job_fn run, job_fn done)
{
    j->run = run;
    j->done = done;
    j->req.data = j;
    if (j->st != NULL) {
        moat__stream_ref(j->st);
        j->eng_prev = NULL;
        j->eng_next = j->s->engine_jobs;
        if (j->eng_next != NULL)
            j->eng_next->eng_prev = j;
        j->s->engine_jobs = j;
    }
    moat__srv_job(j->s, 1);
    uv_queue_work(j->s->loop, &j->req, job_work, job_after);
}

static bool running(stream *st)
{
    return moat_rpc_call_state(st->call) == MOAT_RPC_RUNNING;
}

static void fail_status(stream *st, const moat_status *status)
{
    moat_rpc_call_end(st->call, status);
}

void moat__engine_changed(srv *s, int state)
{
    if (state != MOAT_ENGINE_DOWN)
        return;
    /* Their workers stay blocked until docker_timeout_ms; the calls need not. A job's after-work
     * callback finds its call ended and drops the late result. */
    uint64_t age_ms;
    moat__health_state(s->health, &age_ms);
    for (job *j = s->engine_jobs; j != NULL; j = j->eng_next) {
        if (running(j->st))
            fail_engine_down(j->st, age_ms);
    }
}

/* ------------------------------------------------------------ Sandboxes */

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

/* Fills a SandboxSession pointing into *in and *labels (which must outlive it). */
static void to_proto(const moat_session *in, Moat__V1__SandboxSession *out,
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

static void reply_session(stream *st, const moat_session *sess)
{
    Moat__V1__SandboxSession msg;
    Moat__V1__SandboxSession__LabelsEntry lab[3];
    Moat__V1__SandboxSession__LabelsEntry *labp[3];
    to_proto(sess, &msg, lab, labp);
    moat_rpc_call_reply(st->call, &msg.base);
}

static bool canon(stream *st, const char *in, const char *field, char out[MOAT_UUID_STR_LEN])
{
    if (moat_uuid_canonicalize(in, out) == MOAT_OK)
        return true;
    moat_status status;
    moat_status_set(&status, MOAT_CODE_INVALID_ARGUMENT,
                    field[0] == 'c' ? "invalid_chat_id" : "invalid_session_id", "%s is not a UUID",
                    field);
    moat_status_add_detail(&status, field, in);
    fail_status(st, &status);
    return false;
}

/* CreateSession: one in flight per chat; later ones for the same chat wait
 * and then find the session the first one made. */
typedef struct create_wait {
    struct create_wait *next;
    char chat[MOAT_UUID_STR_LEN];
    stream **waiting;
    size_t nwaiting;
} create_wait;

static void create_run(job *j);
static void create_done(job *j);

static create_wait *wait_find(srv *s, const char *chat)
{
    for (create_wait *w = s->create_waiters; w != NULL; w = w->next) {
        if (strcmp(w->chat, chat) == 0)
            return w;
    }
    return NULL;
}

static void create_start(stream *st, const Moat__V1__CreateSessionRequest *req, const char *chat)
{
    srv *s = st->s;
    job *j = job_new(st);
    if (j == NULL)
        return;
    snprintf(j->chat, sizeof(j->chat), "%s", chat);
    j->flag = req->force_new;
    j->opts.force_new = req->force_new;
    j->others_total = s->creates_inflight;
    for (create_wait *w = s->create_waiters; w != NULL; w = w->next)
        j->others_chat += strcmp(w->chat, chat) == 0;
    j->max_total = s->cfg.max_sessions;
    j->max_chat = s->cfg.max_sessions_per_chat;
    s->creates_inflight++;
    j->ttl_ms = (int64_t)(req->ttl_seconds != 0 ? req->ttl_seconds : s->cfg.ttl_seconds) * 1000;
    if (req->image != NULL && req->image[0] != '\0') {
        snprintf(j->image, sizeof(j->image), "%s", req->image);
        j->opts.image = j->image;
    }
    if (req->resources != NULL) {
        j->opts.memory_bytes = (int64_t)req->resources->memory_bytes;
        j->opts.nano_cpus = (int64_t)req->resources->cpu_millis * 1000000;
        j->opts.pids_limit = req->resources->pids_limit;
    }
    create_wait *w = calloc(1, sizeof(*w));
    if (w != NULL) {
        snprintf(w->chat, sizeof(w->chat), "%s", chat);
        w->next = s->create_waiters;
        s->create_waiters = w;
    }
    job_start(j, create_run, create_done);
}

/* Whether one more session fits max_sessions and max_sessions_per_chat, counting
 * the sessions there are and the creates in flight; else sets j's refusal. */
static bool create_fits(job *j, const moat_session *all, size_t n)
{
    size_t of_chat = 0;
    for (size_t i = 0; i < n; i++)
        of_chat += strcmp(all[i].chat_id, j->chat) == 0;
    if (n + j->others_total >= j->max_total) {
        j->code = MOAT_CODE_RESOURCE_EXHAUSTED;
        moat_status_set(&j->status, j->code, "too_many_sessions",
                        "%zu sessions exist or are being made (max_sessions %u); stop one first",
                        n + j->others_total, j->max_total);
        return false;
    }
    if (of_chat + j->others_chat >= j->max_chat) {
        j->code = MOAT_CODE_RESOURCE_EXHAUSTED;
        moat_status_set(&j->status, j->code, "too_many_sessions_for_chat",
                        "chat %s has %zu sessions or creates in flight (max_sessions_per_chat %u); "
                        "stop one or create without force_new",
                        j->chat, of_chat + j->others_chat, j->max_chat);
        moat_status_add_detail(&j->status, "chat_id", j->chat);
        return false;
    }
    return true;
}

static void create_run(job *j)
{
    srv *s = j->s;
    moat_session *all = NULL;
    size_t n = 0;
    if (s->rt_ops->list_active(s->rt, &all, &n, &j->status) != MOAT_CODE_OK) {
        j->code = j->status.code;
        return;
    }
    if (!j->flag) {
        int64_t now = moat_time_now_ms();
        const moat_session *best = NULL;
        /* The chat's session is its newest one not made with force_new: the one the sweeps keep
         * when they find two (docs/runtime.md); a force_new one only when it has no other. */
        for (size_t i = 0; i < n; i++) {
            if (strcmp(all[i].chat_id, j->chat) == 0 && all[i].state == MOAT_SESSION_RUNNING &&
                all[i].expires_at_ms > now &&
                (best == NULL || (best->force_new && !all[i].force_new) ||
                 (best->force_new == all[i].force_new &&
                  all[i].created_at_ms > best->created_at_ms)))
                best = &all[i];
        }
        if (best != NULL) {
            j->one = *best;
            j->code = MOAT_CODE_OK;
            j->count = 1; /* found, not created */
            free(all);
            return;
        }
    }
    bool fits = create_fits(j, all, n);
    free(all);
    if (!fits)
        return;
    char id[MOAT_UUID_STR_LEN];
    moat_uuid_generate(id);
    int64_t now = moat_time_now_ms();
    moat_status_clear(&j->status);
    j->code =
        s->rt_ops->create(s->rt, id, j->chat, now, now + j->ttl_ms, &j->opts, &j->one, &j->status);
}

static void create_done(job *j)
{
    srv *s = j->s;
    s->creates_inflight--;
    if (j->code == MOAT_CODE_OK) {
        cache_put(s, &j->one);
        if (j->count == 0) {
            moat__metrics_create_latency(s->metrics, moat_time_mono_ns() - j->t0);
            moat__metrics_session_delta(s->metrics, 1);
            moat_log(MOAT_LOG_INFO, "session_created", "session_id=%s chat_id=%s duration_ms=%llu",
                     j->one.session_id, j->chat,
                     (unsigned long long)((moat_time_mono_ns() - j->t0) / 1000000u));
        }
        if (running(j->st))
            reply_session(j->st, &j->one);
    } else {
        moat_log_limited(&s->logs.create_failed, MOAT_LOG_WARN, "session_create_failed",
                         "chat_id=%s code=%s reason=%s msg=\"%s\"", j->chat,
                         moat_code_name(j->status.code), j->status.reason, j->status.message);
        if (j->status.code == MOAT_CODE_OK)
            moat_status_set(&j->status, j->code, "sandbox_start_failed", "create failed");
        fail_status(j->st, &j->status);
    }
    /* Wake the calls that waited for this chat; they now see its session. */
    create_wait **pp = (create_wait **)&s->create_waiters;
    while (*pp != NULL && strcmp((*pp)->chat, j->chat) != 0)
        pp = &(*pp)->next;
    if (*pp == NULL)
        return;
    create_wait *w = *pp;
    *pp = w->next;
    for (size_t i = 0; i < w->nwaiting; i++) {
        stream *st = w->waiting[i];
        if (running(st)) {
            moat__dispatch(st, NULL);
        }
        moat__stream_unref(st);
    }
    free(w->waiting);
    free(w);
}

/* A ttl past max_ttl_seconds is refused rather than clamped: the client learns
 * at once that its session would not live as long as it asked. */
static bool ttl_ok(stream *st, uint32_t ttl_seconds)
{
    uint32_t max = st->s->cfg.max_ttl_seconds;
    if (ttl_seconds <= max)
        return true;
    moat_log_limited(&st->s->logs.ttl_refused, MOAT_LOG_INFO, "ttl_refused",
                     "peer=%s ttl_seconds=%u max=%u", st->c != NULL ? st->c->peer : "-",
                     ttl_seconds, max);
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

static void handle_create(stream *st, const Moat__V1__CreateSessionRequest *req)
{
    char chat[MOAT_UUID_STR_LEN];
    if (!canon(st, req->chat_id, "chat_id", chat) || !ttl_ok(st, req->ttl_seconds))
        return;
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

static void get_run(job *j)
{
    j->code = j->s->rt_ops->get(j->s->rt, j->id, &j->one, &j->status);
}

static void get_done(job *j)
{
    if (j->code != MOAT_CODE_OK) {
        fail_status(j->st, &j->status);
        return;
    }
    if (j->one.state == MOAT_SESSION_RUNNING)
        cache_put(j->s, &j->one);
    else
        cache_drop(j->s, j->one.session_id);
    if (running(j->st))
        reply_session(j->st, &j->one);
}

static void list_run(job *j)
{
    j->code = j->s->rt_ops->list_active(j->s->rt, &j->many, &j->count, &j->status);
}

static void list_done(job *j)
{
    if (j->code != MOAT_CODE_OK) {
        fail_status(j->st, &j->status);
        return;
    }
    moat__metrics_sessions_set(j->s->metrics, (int64_t)j->count);
    size_t n = 0;
    Moat__V1__SandboxSession *items = calloc(j->count + 1, sizeof(*items));
    Moat__V1__SandboxSession **ptrs = calloc(j->count + 1, sizeof(*ptrs));
    Moat__V1__SandboxSession__LabelsEntry(*lab)[3] = calloc(j->count + 1, sizeof(*lab));
    Moat__V1__SandboxSession__LabelsEntry *(*labp)[3] = calloc(j->count + 1, sizeof(*labp));
    if (items == NULL || ptrs == NULL || lab == NULL || labp == NULL) {
        moat_rpc_call_fail(j->st->call, MOAT_CODE_RESOURCE_EXHAUSTED, "out_of_memory",
                           "out of memory");
    } else {
        for (size_t i = 0; i < j->count; i++) {
            if (j->chat[0] != '\0' && strcmp(j->many[i].chat_id, j->chat) != 0)
                continue;
            cache_put(j->s, &j->many[i]);
            to_proto(&j->many[i], &items[n], lab[n], labp[n]);
            ptrs[n] = &items[n];
            n++;
        }
        Moat__V1__ListSessionsResponse resp = MOAT__V1__LIST_SESSIONS_RESPONSE__INIT;
        resp.n_sessions = n;
        resp.sessions = ptrs;
        if (running(j->st))
            moat_rpc_call_reply(j->st->call, &resp.base);
    }
    free(items);
    free(ptrs);
    free(lab);
    free(labp);
}

static void renew_run(job *j)
{
    int64_t at = moat_time_now_ms() + j->ttl_ms;
    j->code = j->s->rt_ops->renew(j->s->rt, j->id, at, &j->one, &j->status);
}

static void stop_run(job *j)
{
    moat_session cur;
    j->code = j->s->rt_ops->get(j->s->rt, j->id, &cur, &j->status);
    if (j->code != MOAT_CODE_OK)
        return;
    if (cur.state != MOAT_SESSION_RUNNING) {
        j->flag = false;
        return;
    }
    j->code = j->s->rt_ops->stop(j->s->rt, j->id, &j->status);
    j->flag = j->code == MOAT_CODE_OK;
}

static void stop_done(job *j)
{
    if (j->code != MOAT_CODE_OK) {
        fail_status(j->st, &j->status);
        return;
    }
    cache_drop(j->s, j->id);
    /* Its retained replay can no longer be wanted: memory goes back now. */
    moat_bridge_drop_scope(j->s->bridge, j->id);
    if (j->flag) {
        moat__metrics_session_delta(j->s->metrics, -1);
        moat_log(MOAT_LOG_INFO, "session_stopped", "session_id=%s", j->id);
    }
    Moat__V1__StopSessionResponse resp = MOAT__V1__STOP_SESSION_RESPONSE__INIT;
    resp.stopped = j->flag;
    if (running(j->st))
        moat_rpc_call_reply(j->st->call, &resp.base);
}

/* ------------------------------------------------------------ Health */

/* Answered on the loop from the background probe, so it never waits on the engine. Without the
 * engine no session can be made or found, hence NOT_SERVING, though commands in running
 * sessions still work (they go to execd, not to Docker). */
static void health_check(stream *st)
{
    bool up = moat__health_state(st->s->health, NULL) == MOAT_ENGINE_UP;
    Moat__V1__HealthCheckResponse resp = MOAT__V1__HEALTH_CHECK_RESPONSE__INIT;
    resp.status = up && !st->s->draining
                      ? MOAT__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING
                      : MOAT__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING;
    resp.server_version = (char *)"moatd/" MOAT_VERSION;
    resp.docker_reachable = up;
    int64_t live = moat__metrics_sessions(st->s->metrics);
    resp.live_sessions = live > 0 ? (uint32_t)live : 0;
    moat_rpc_call_reply(st->call, &resp.base);
}

/* ------------------------------------------------------------ session lookup for Exec/Files */

static void lookup_run(job *j)
{
    j->code = j->s->rt_ops->get(j->s->rt, j->id, &j->one, &j->status);
}

static void lookup_done(job *j)
{
    if (!running(j->st))
        return;
    if (j->code != MOAT_CODE_OK) {
        fail_status(j->st, &j->status);
        return;
    }
    if (j->one.state != MOAT_SESSION_RUNNING) {
        moat_rpc_call_fail(j->st->call, MOAT_CODE_FAILED_PRECONDITION, "session_not_running",
                           "session %s is %s", j->id, moat_session_state_name(j->one.state));
        return;
    }
    cache_put(j->s, &j->one);
    session_addr addr = {j->one.execd_socket, j->one.execd_token};
    j->then(j->st, j->id, &addr);
}

/* Runs `then` with the session's execd socket, from the cache or the runtime. */
static void with_session(stream *st, const char *session_id,
                         void (*then)(stream *st, const char *session_id, const session_addr *sock))
{
    char id[MOAT_UUID_STR_LEN];
    if (!canon(st, session_id, "session_id", id) || !calls_acquire(st, id))
        return;
    cache_entry *e = cache_find(st->s, id);
    if (e != NULL) {
        session_addr addr = {e->sock, e->token};
        then(st, id, &addr);
        return;
    }
    job *j = job_new(st);
    if (j == NULL)
        return;
    snprintf(j->id, sizeof(j->id), "%s", id);
    j->then = then;
    job_start(j, lookup_run, lookup_done);
}

static moat_bridge_endpoint endpoint(const char *session_id, const session_addr *addr)
{
    moat_bridge_endpoint ep = {0};
    ep.unix_socket = addr->sock;
    ep.access_token = addr->token;
    ep.scope = session_id;
    return ep;
}

/* ------------------------------------------------------------ Exec streams */

typedef struct exec_ctx {
    stream *st;
    moat_bridge_exec *ex;
    moat_bridge *bridge;
    char session_id[MOAT_UUID_STR_LEN];
    char *sock;
    char token[MOAT_EXECD_TOKEN_MAX];
    /* Credit given to the bridge and not yet used by delivered events. It
     * is kept at most min(the client's window left, initial_window), so
     * however large a window a client grants, one stream never has more
     * than initial_window in flight inside moatd. */
    uint64_t outstanding;
    bool cancelled;
} exec_ctx;

static void exec_ctx_free(exec_ctx *x)
{
    x->st->on_credit = NULL;
    x->st->hctx = NULL;
    moat__stream_unref(x->st);
    free(x->sock);
    free(x);
}

/* An interrupt of an abandoned command, in flight. */
typedef struct abandoned_interrupt {
    srv *s;
    char execution_id[];
} abandoned_interrupt;

static void interrupt_done(void *ud, const moat_status *st)
{
    abandoned_interrupt *ai = ud;
    moat_log(st->code == MOAT_CODE_OK ? MOAT_LOG_DEBUG : MOAT_LOG_WARN, "interrupt",
             "execution_id=%s code=%s msg=\"%s\"", ai->execution_id, moat_code_name(st->code),
             st->message);
    /* A drain waits for interrupts in flight, so a cancelled command is
     * really stopped before moatd exits. */
    moat__srv_job(ai->s, -1);
    free(ai);
}

/* Interrupts the command and lets go of its stream (it stays attachable). */
static void exec_abandon(exec_ctx *x)
{
    const char *eid = moat_bridge_exec_id(x->ex);
    session_addr addr = {x->sock, x->token};
    moat_bridge_endpoint ep = endpoint(x->session_id, &addr);
    abandoned_interrupt *ai = malloc(sizeof(*ai) + strlen(eid) + 1);
    moat_status st;
    if (ai != NULL) {
        ai->s = x->st->s;
        strcpy(ai->execution_id, eid);
        if (moat_bridge_interrupt(x->bridge, &ep, eid, interrupt_done, ai, &st) == MOAT_OK)
            moat__srv_job(ai->s, 1);
        else
            free(ai);
    }
    moat_bridge_exec_detach(x->ex);
    exec_ctx_free(x);
}

static void exec_on_event(void *ud, moat_bridge_exec *ex, const moat_bridge_event *ev)
{
    (void)ex;
    exec_ctx *x = ud;
    x->ex = ex;
    if (x->cancelled) {
        /* Cancelled before the execution had an id: now it has one. */
        if (ev->kind == MOAT_BRIDGE_EV_INIT)
            exec_abandon(x);
        return;
    }
    Moat__V1__ExecEvent e = MOAT__V1__EXEC_EVENT__INIT;
    Moat__V1__ExecEvent__Init init = MOAT__V1__EXEC_EVENT__INIT__INIT;
    Moat__V1__ExecEvent__Output out = MOAT__V1__EXEC_EVENT__OUTPUT__INIT;
    Moat__V1__ExecEvent__Result res = MOAT__V1__EXEC_EVENT__RESULT__INIT;
    Moat__V1__ExecEvent__Error err = MOAT__V1__EXEC_EVENT__ERROR__INIT;
    Moat__V1__ExecEvent__Complete comp = MOAT__V1__EXEC_EVENT__COMPLETE__INIT;
    Moat__V1__ExecEvent__Exit exit_ = MOAT__V1__EXEC_EVENT__EXIT__INIT;
    Moat__V1__ExitCode code = MOAT__V1__EXIT_CODE__INIT;
    char **tb = NULL;
    e.sequence = ev->sequence;
    e.timestamp_ms = ev->timestamp_ms;
    switch (ev->kind) {
    case MOAT_BRIDGE_EV_INIT:
        init.execution_id = (char *)ev->u.init.execution_id.data;
        e.kind_case = MOAT__V1__EXEC_EVENT__KIND_INIT;
        e.init = &init;
        break;
    case MOAT_BRIDGE_EV_OUTPUT:
        out.stream = ev->u.output.stream == MOAT_BRIDGE_STDERR ? MOAT__V1__OUTPUT_STREAM__STDERR
                                                               : MOAT__V1__OUTPUT_STREAM__STDOUT;
        out.data.data = (uint8_t *)ev->u.output.data;
        out.data.len = ev->u.output.len;
        e.kind_case = MOAT__V1__EXEC_EVENT__KIND_OUTPUT;
        e.output = &out;
        break;
    case MOAT_BRIDGE_EV_RESULT:
        res.text = (char *)ev->u.result.text.data;
        e.kind_case = MOAT__V1__EXEC_EVENT__KIND_RESULT;
        e.result = &res;
        break;
    case MOAT_BRIDGE_EV_ERROR:
        err.name = (char *)ev->u.error.name.data;
        err.value = (char *)ev->u.error.value.data;
        if (ev->u.error.traceback_count > 0) {
            tb = calloc(ev->u.error.traceback_count, sizeof(*tb));
            if (tb != NULL) {
                for (size_t i = 0; i < ev->u.error.traceback_count; i++)
                    tb[i] = (char *)ev->u.error.traceback[i].data;
                err.n_traceback = ev->u.error.traceback_count;
                err.traceback = tb;
            }
        }
        e.kind_case = MOAT__V1__EXEC_EVENT__KIND_ERROR;
        e.error = &err;
        break;
    case MOAT_BRIDGE_EV_COMPLETE:
        comp.execution_time_ms = ev->u.complete.execution_time_ms;
        e.kind_case = MOAT__V1__EXEC_EVENT__KIND_COMPLETE;
        e.complete = &comp;
        break;
    case MOAT_BRIDGE_EV_EXIT:
        if (ev->u.exit.known) {
            code.value_case = MOAT__V1__EXIT_CODE__VALUE_CODE;
            code.code = ev->u.exit.code;
        } else {
            code.value_case = MOAT__V1__EXIT_CODE__VALUE_UNKNOWN_REASON;
            code.unknown_reason =
                (char *)(ev->u.exit.unknown_reason.data != NULL ? ev->u.exit.unknown_reason.data
                                                                : "");
        }
        exit_.exit_code = &code;
        exit_.timed_out = ev->u.exit.timed_out;
        e.kind_case = MOAT__V1__EXEC_EVENT__KIND_EXIT;
        e.exit = &exit_;
        break;
    }
    size_t cost = moat_bridge_event_cost(ev);
    x->outstanding -= cost < x->outstanding ? cost : x->outstanding;
    /* Running low: top up once this event has been written (not from inside
     * the bridge's callback). */
    if (x->outstanding < x->st->initial_window / 2 && x->st->c != NULL) {
        x->st->wants_credit = true;
        x->st->c->credit_wanted = true;
    }
    moat_err rc = moat_rpc_call_send(x->st->call, &e.base);
    free(tb);
    if (rc != MOAT_OK && running(x->st))
        moat_rpc_call_fail(x->st->call, MOAT_CODE_INTERNAL, "send_failed", "cannot send event: %s",
                           moat_strerror(rc));
}

static void exec_on_end(void *ud, moat_bridge_exec *ex, const moat_status *status)
{
    (void)ex;
    exec_ctx *x = ud;
    if (!x->cancelled)
        moat_rpc_call_end(x->st->call, status);
    exec_ctx_free(x);
}

/* How much credit the bridge may hold for this stream now. Nothing while the
 * connection's socket is backed up; the server asks again as writes drain. */
static uint64_t exec_credit_target(const stream *st)
{
    if (st->c == NULL || st->c->pending_write > st->s->cfg.max_pending_bytes)
        return 0;
    uint64_t want = moat__stream_credit(st);
    return want < st->initial_window ? want : st->initial_window;
}

/* Runs on WindowUpdates (inc > 0) and when the connection's writes drain
 * (inc == 0); never from inside a bridge callback. */
static void exec_on_credit(stream *st, uint32_t inc)
{
    (void)inc;
    exec_ctx *x = st->hctx;
    if (x == NULL || x->cancelled || x->ex == NULL)
        return;
    uint64_t want = exec_credit_target(st);
    if (want > x->outstanding) {
        uint64_t give = want - x->outstanding;
        x->outstanding = want;
        moat_bridge_exec_credit(x->ex, give);
    }
}

static void exec_on_cancel(moat_rpc_call *call, moat_code code, void *arg)
{
    (void)call;
    (void)code;
    exec_ctx *x = arg;
    x->cancelled = true;
    x->st->on_credit = NULL;
    /* The connection (and its account) may go before the execution names itself. */
    moat_bridge_exec_set_account(x->ex, NULL);
    if (moat_bridge_exec_id(x->ex)[0] != '\0') {
        exec_abandon(x);
        return;
    }
    /* No execution id yet: keep reading until init names it, with enough
     * credit to get there. */
    moat_bridge_exec_credit(x->ex, MOAT_BRIDGE_MAX_EVENT_COST);
}

static void log_budget_refusal(stream *st, const moat_status *status)
{
    if (strcmp(status->reason, "memory_budget_exhausted") != 0)
        return;
    const moat_bridge_budget *bg = &st->s->budget;
    moat_log_limited(&st->s->logs.budget_refused, MOAT_LOG_WARN, "memory_budget_refused",
                     "peer=%s used=%zu pinned=%zu cap=%zu conn_pinned=%zu conn_limit=%zu",
                     st->c != NULL ? st->c->peer : "-", bg->used, bg->pinned, bg->cap,
                     st->c != NULL ? st->c->account.pinned : 0,
                     st->c != NULL ? st->c->account.limit : 0);
}

/* A connection whose undelivered output fills its share of the budget (a
 * client that does not read) gets no new stream: it could only add to what
 * already waits for it. Its streams are paused meanwhile, so the share bounds
 * it whatever their number. */
static bool refuse_unread_connection(stream *st)
{
    conn *c = st->c;
    if (c == NULL || c->account.limit == 0 || c->account.pinned < c->account.limit)
        return false;
    moat_status status;
    moat_status_set(&status, MOAT_CODE_RESOURCE_EXHAUSTED, "memory_budget_exhausted",
                    "this connection has %zu bytes of output waiting to be read, its share of the "
                    "memory budget; read or cancel its streams, then retry",
                    c->account.pinned);
    moat_status_add_detail(&status, "scope", "connection");
    st->s->budget.refused++;
    log_budget_refusal(st, &status);
    moat_rpc_call_end(st->call, &status);
    return true;
}

static exec_ctx *exec_ctx_new(stream *st, const char *session_id, const session_addr *sock)
{
    exec_ctx *x = calloc(1, sizeof(*x));
    if (x == NULL)
        return NULL;
    x->sock = strdup(sock->sock);
    if (x->sock == NULL) {
        free(x);
        return NULL;
    }
    snprintf(x->token, sizeof(x->token), "%s", sock->token);
    x->st = st;
    x->bridge = st->s->bridge;
    snprintf(x->session_id, sizeof(x->session_id), "%s", session_id);
    return x;
}

static void exec_start(stream *st, const char *session_id, const session_addr *sock,
                       const moat_bridge_run_opts *opts)
{
    if (refuse_unread_connection(st))
        return;
    exec_ctx *x = exec_ctx_new(st, session_id, sock);
    if (x == NULL) {
        moat_rpc_call_fail(st->call, MOAT_CODE_RESOURCE_EXHAUSTED, "out_of_memory",
                           "out of memory");
        return;
    }
    moat_bridge_endpoint ep = endpoint(session_id, sock);
    moat_bridge_consumer c = {exec_on_event, exec_on_end, x, &st->c->account};
    moat_bridge_exec *ex = NULL;
    moat_status status;
    moat_status_clear(&status);
    /* Take the reference before the bridge may call back. */
    moat__stream_ref(st);
    x->st = st;
    st->hctx = x;
    st->on_credit = exec_on_credit;
    moat_rpc_call_on_cancel(st->call, exec_on_cancel, x);
    x->outstanding = exec_credit_target(st);
    /* Callbacks may run before the bridge returns and end the call: keep the
     * stream alive until we have looked. */
    moat__stream_ref(st);
    moat_err err = moat_bridge_run(st->s->bridge, &ep, opts, &c, x->outstanding, &ex, &status);
    if (err != MOAT_OK) {
        log_budget_refusal(st, &status);
        moat_rpc_call_on_cancel(st->call, NULL, NULL);
        exec_ctx_free(x);
        fail_status(st, &status);
    } else if (st->hctx == x) {
        x->ex = ex;
    }
    moat__stream_unref(st);
}

static void run_command_go(stream *st, const char *session_id, const session_addr *sock)
{
    const Moat__V1__RunCommandRequest *req = moat_rpc_call_get_data(st->call);
    const char *keys[64];
    const char *vals[64];
    if (req->n_env > 64) {
        moat_rpc_call_fail(st->call, MOAT_CODE_INVALID_ARGUMENT, "too_many_env",
                           "at most 64 environment variables");
        return;
    }
    for (size_t i = 0; i < req->n_env; i++) {
        keys[i] = req->env[i]->key;
        vals[i] = req->env[i]->value;
    }
    moat_bridge_run_opts o = {0};
    o.command = req->command;
    o.cwd = req->cwd;
    o.timeout_ms = req->timeout_ms;
    o.env_keys = keys;
    o.env_values = vals;
    o.env_count = req->n_env;
    o.background = req->background;
    exec_start(st, session_id, sock, &o);
}

static void run_in_shell_go(stream *st, const char *session_id, const session_addr *sock)
{
    const Moat__V1__RunInShellRequest *req = moat_rpc_call_get_data(st->call);
    moat_bridge_run_opts o = {0};
    o.command = req->command;
    o.cwd = req->cwd;
    o.timeout_ms = req->timeout_ms;
    o.session_id = req->shell_id;
    exec_start(st, session_id, sock, &o);
}

static void attach_go(stream *st, const char *session_id, const session_addr *sock)
{
    const Moat__V1__AttachRequest *req = moat_rpc_call_get_data(st->call);
    if (refuse_unread_connection(st))
        return;
    exec_ctx *x = exec_ctx_new(st, session_id, sock);
    if (x == NULL) {
        moat_rpc_call_fail(st->call, MOAT_CODE_RESOURCE_EXHAUSTED, "out_of_memory",
                           "out of memory");
        return;
    }
    moat_bridge_consumer c = {exec_on_event, exec_on_end, x, &st->c->account};
    moat_bridge_exec *ex = NULL;
    moat_status status;
    moat_status_clear(&status);
    moat__stream_ref(st);
    st->hctx = x;
    st->on_credit = exec_on_credit;
    moat_rpc_call_on_cancel(st->call, exec_on_cancel, x);
    x->outstanding = exec_credit_target(st);
    /* Replayed events, and the end, may be delivered before attach returns. */
    moat__stream_ref(st);
    moat_err err = moat_bridge_attach(st->s->bridge, session_id, req->execution_id,
                                      req->after_sequence, &c, x->outstanding, &ex, &status);
    if (err != MOAT_OK) {
        log_budget_refusal(st, &status);
        moat_rpc_call_on_cancel(st->call, NULL, NULL);
        exec_ctx_free(x);
        fail_status(st, &status);
    } else if (st->hctx == x) {
        x->ex = ex;
    }
    moat__stream_unref(st);
}

/* ------------------------------------------------------------ one-answer bridge calls */

/* The stream stays referenced until the bridge answers; a call cancelled in
 * the meantime has ended and the answer is dropped. */
static stream *hold(stream *st)
{
    moat__stream_ref(st);
    return st;
}

static bool answer_ok(stream *st, const moat_status *status)
{
    if (!running(st))
        return false;
    if (status->code != MOAT_CODE_OK) {
        fail_status(st, status);
        return false;
    }
    return true;
}

static void bridge_refused(stream *st, const moat_status *status)
{
    moat__stream_unref(st);
    fail_status(st, status);
}

static void create_shell_cb(void *ud, const moat_status *status, const char *shell_id)
{
    stream *st = ud;
    if (answer_ok(st, status)) {
        Moat__V1__CreateShellResponse r = MOAT__V1__CREATE_SHELL_RESPONSE__INIT;
        r.shell_id = (char *)(shell_id != NULL ? shell_id : "");
        moat_rpc_call_reply(st->call, &r.base);
    }
    moat__stream_unref(st);
}

static void create_shell_go(stream *st, const char *sid, const session_addr *sock)
{
    const Moat__V1__CreateShellRequest *req = moat_rpc_call_get_data(st->call);
    moat_bridge_endpoint ep = endpoint(sid, sock);
    moat_status status;
    if (moat_bridge_create_session(st->s->bridge, &ep, req->cwd, create_shell_cb, hold(st),
                                   &status) != MOAT_OK)
        bridge_refused(st, &status);
}

/* Calls answered by an empty message of the method's response type. */
static void empty_cb(void *ud, const moat_status *status)
{
    stream *st = ud;
    if (answer_ok(st, status)) {
        const ProtobufCMessageDescriptor *d = moat_rpc_call_method(st->call)->response;
        uint8_t storage[64];
        ProtobufCMessage *m = (ProtobufCMessage *)storage;
        if (d->sizeof_message <= sizeof(storage)) {
            protobuf_c_message_init(d, m);
            moat_rpc_call_reply(st->call, m);
        }
    }
    moat__stream_unref(st);
}

static void delete_shell_go(stream *st, const char *sid, const session_addr *sock)
{
    const Moat__V1__DeleteShellRequest *req = moat_rpc_call_get_data(st->call);
    moat_bridge_endpoint ep = endpoint(sid, sock);
    moat_status status;
    if (moat_bridge_delete_session(st->s->bridge, &ep, req->shell_id, empty_cb, hold(st),
                                   &status) != MOAT_OK)
        bridge_refused(st, &status);
}

static void interrupt_go(stream *st, const char *sid, const session_addr *sock)
{
    const Moat__V1__InterruptRequest *req = moat_rpc_call_get_data(st->call);
    moat_bridge_endpoint ep = endpoint(sid, sock);
    moat_status status;
    if (moat_bridge_interrupt(st->s->bridge, &ep, req->execution_id, empty_cb, hold(st), &status) !=
        MOAT_OK)
        bridge_refused(st, &status);
}

static void status_cb(void *ud, const moat_status *status, const moat_bridge_cmd_status *cs)
{
    stream *st = ud;
    if (answer_ok(st, status) && cs != NULL) {
        Moat__V1__CommandStatus r = MOAT__V1__COMMAND_STATUS__INIT;
        Moat__V1__ExitCode code = MOAT__V1__EXIT_CODE__INIT;
        r.execution_id = (char *)(cs->execution_id != NULL ? cs->execution_id : "");
        r.command = (char *)(cs->content != NULL ? cs->content : "");
        r.running = cs->running;
        if (!cs->running) {
            if (cs->exit_known) {
                code.value_case = MOAT__V1__EXIT_CODE__VALUE_CODE;
                code.code = cs->exit_code;
            } else {
                code.value_case = MOAT__V1__EXIT_CODE__VALUE_UNKNOWN_REASON;
                code.unknown_reason = (char *)"execd reported no exit code";
            }
            r.exit_code = &code;
        }
        r.error = (char *)(cs->error != NULL ? cs->error : "");
        r.started_at_ms = cs->started_at_ms;
        r.finished_at_ms = cs->finished_at_ms;
        moat_rpc_call_reply(st->call, &r.base);
    }
    moat__stream_unref(st);
}

static void command_status_go(stream *st, const char *sid, const session_addr *sock)
{
    const Moat__V1__GetCommandStatusRequest *req = moat_rpc_call_get_data(st->call);
    moat_bridge_endpoint ep = endpoint(sid, sock);
    moat_status status;
    if (moat_bridge_command_status(st->s->bridge, &ep, req->execution_id, status_cb, hold(st),
                                   &status) != MOAT_OK)
        bridge_refused(st, &status);
}

static void logs_cb(void *ud, const moat_status *status, const uint8_t *data, size_t len,
                    uint64_t next)
{
    stream *st = ud;
    if (answer_ok(st, status)) {
        /* One response must fit in a frame: hand back less and move the
         * cursor only as far as what was sent. */
        size_t cap = st->max_frame_size - 256;
        Moat__V1__CommandLogs r = MOAT__V1__COMMAND_LOGS__INIT;
        const Moat__V1__GetCommandLogsRequest *req = moat_rpc_call_get_data(st->call);
        if (len > cap) {
            next = req->cursor + cap;
            len = cap;
        }
        r.data.data = (uint8_t *)data;
        r.data.len = len;
        r.next_cursor = next;
        moat_rpc_call_reply(st->call, &r.base);
    }
    moat__stream_unref(st);
}

static void command_logs_go(stream *st, const char *sid, const session_addr *sock)
{
    const Moat__V1__GetCommandLogsRequest *req = moat_rpc_call_get_data(st->call);
    moat_bridge_endpoint ep = endpoint(sid, sock);
    moat_status status;
    if (moat_bridge_command_logs(st->s->bridge, &ep, req->execution_id, req->cursor, logs_cb,
                                 hold(st), &status) != MOAT_OK)
        bridge_refused(st, &status);
}

/* ------------------------------------------------------------ Files */

static void file_info(const moat_bridge_file_info *fi, Moat__V1__FileInfo *out)
{
    moat__v1__file_info__init(out);
    out->path = (char *)(fi->path != NULL ? fi->path : "");
    out->type = (Moat__V1__FileType)fi->type;
    out->size = fi->size;
    out->mode = fi->mode;
    out->owner = (char *)(fi->owner != NULL ? fi->owner : "");
    out->group = (char *)(fi->group != NULL ? fi->group : "");
    out->modified_at_ms = fi->modified_at_ms;
}

static void stat_cb(void *ud, const moat_status *status, const moat_bridge_file_info *fi)
{
    stream *st = ud;
    if (answer_ok(st, status) && fi != NULL) {
        Moat__V1__FileInfo r;
        file_info(fi, &r);
        moat_rpc_call_reply(st->call, &r.base);
    }
    moat__stream_unref(st);
}

static void stat_go(stream *st, const char *sid, const session_addr *sock)
{
    const Moat__V1__StatRequest *req = moat_rpc_call_get_data(st->call);
    moat_bridge_endpoint ep = endpoint(sid, sock);
    moat_status status;
    if (moat_bridge_stat(st->s->bridge, &ep, req->path, stat_cb, hold(st), &status) != MOAT_OK)
        bridge_refused(st, &status);
}

static void list_cb(void *ud, const moat_status *status, const moat_bridge_file_info *entries,
                    size_t count)
{
    stream *st = ud;
    if (answer_ok(st, status)) {
        Moat__V1__FileInfo *items = calloc(count + 1, sizeof(*items));
        Moat__V1__FileInfo **ptrs = calloc(count + 1, sizeof(*ptrs));
        if (items == NULL || ptrs == NULL) {
            moat_rpc_call_fail(st->call, MOAT_CODE_RESOURCE_EXHAUSTED, "out_of_memory",
                               "out of memory");
        } else {
            for (size_t i = 0; i < count; i++) {
                file_info(&entries[i], &items[i]);
                ptrs[i] = &items[i];
            }
            Moat__V1__ListResponse r = MOAT__V1__LIST_RESPONSE__INIT;
            r.n_entries = count;
            r.entries = ptrs;
            if (protobuf_c_message_get_packed_size(&r.base) > st->max_frame_size - 256)
                moat_rpc_call_fail(st->call, MOAT_CODE_RESOURCE_EXHAUSTED, "listing_too_large",
                                   "%zu entries do not fit in one frame; list a smaller depth",
                                   count);
            else
                moat_rpc_call_reply(st->call, &r.base);
        }
        free(items);
        free(ptrs);
    }
    moat__stream_unref(st);
}

static void list_go(stream *st, const char *sid, const session_addr *sock)
{
    const Moat__V1__ListRequest *req = moat_rpc_call_get_data(st->call);
    moat_bridge_endpoint ep = endpoint(sid, sock);
    moat_status status;
    if (moat_bridge_list(st->s->bridge, &ep, req->path, req->depth, list_cb, hold(st), &status) !=
        MOAT_OK)
        bridge_refused(st, &status);
}

static void remove_go(stream *st, const char *sid, const session_addr *sock)
{
    const Moat__V1__RemoveRequest *req = moat_rpc_call_get_data(st->call);
    moat_bridge_endpoint ep = endpoint(sid, sock);
    moat_status status;
    if (moat_bridge_remove(st->s->bridge, &ep, req->path, req->recursive, empty_cb, hold(st),
                           &status) != MOAT_OK)
        bridge_refused(st, &status);
}

static void move_go(stream *st, const char *sid, const session_addr *sock)
{
    const Moat__V1__MoveRequest *req = moat_rpc_call_get_data(st->call);
    moat_bridge_endpoint ep = endpoint(sid, sock);
    moat_status status;
    if (moat_bridge_move(st->s->bridge, &ep, req->src, req->dest, empty_cb, hold(st), &status) !=
        MOAT_OK)
        bridge_refused(st, &status);
}

static void mkdir_go(stream *st, const char *sid, const session_addr *sock)
{
    const Moat__V1__MkdirRequest *req = moat_rpc_call_get_data(st->call);
    moat_bridge_endpoint ep = endpoint(sid, sock);
    moat_status status;
    if (moat_bridge_mkdir(st->s->bridge, &ep, req->path, req->mode, empty_cb, hold(st), &status) !=
        MOAT_OK)
        bridge_refused(st, &status);
}

static void chmod_go(stream *st, const char *sid, const session_addr *sock)
{
    const Moat__V1__ChmodRequest *req = moat_rpc_call_get_data(st->call);
    moat_bridge_endpoint ep = endpoint(sid, sock);
    moat_status status;
    if (moat_bridge_chmod(st->s->bridge, &ep, req->path, req->mode, req->owner, req->group,
                          empty_cb, hold(st), &status) != MOAT_OK)
        bridge_refused(st, &status);
}

/* Read: chunks go out only within the client's window; otherwise the
 * download pauses until a WindowUpdate. */
typedef struct xfer_ctx {
    stream *st;
    moat_bridge_xfer *x;
    bool cancelled;
    bool paused;
    /* Write: the request's bytes still to upload. */
    const uint8_t *data;
    size_t left;
} xfer_ctx;

#define CHUNK_OVERHEAD 32

static void xfer_free(xfer_ctx *x)
{
    x->st->hctx = NULL;
    x->st->on_credit = NULL;
    moat__stream_unref(x->st);
    free(x);
}

static bool read_chunk(void *ud, moat_bridge_xfer *bx, uint64_t offset, const uint8_t *data,
                       size_t len)
{
    xfer_ctx *x = ud;
    x->x = bx;
    if (x->cancelled || !running(x->st))
        return true;
    if (moat__stream_credit(x->st) < len + CHUNK_OVERHEAD) {
        x->paused = true;
        return false;
    }
    Moat__V1__FileChunk c = MOAT__V1__FILE_CHUNK__INIT;
    c.offset = offset;
    c.data.data = (uint8_t *)data;
    c.data.len = len;
    moat_rpc_call_send(x->st->call, &c.base);
    return true;
}

static void read_done(void *ud, moat_bridge_xfer *bx, const moat_status *status)
{
    (void)bx;
    xfer_ctx *x = ud;
    if (!x->cancelled)
        moat_rpc_call_end(x->st->call, status);
    xfer_free(x);
}

static void xfer_on_credit(stream *st, uint32_t inc)
{
    (void)inc;
    xfer_ctx *x = st->hctx;
    if (x != NULL && x->paused && x->x != NULL) {
        x->paused = false;
        moat_bridge_xfer_resume(x->x);
    }
}

static void xfer_on_cancel(moat_rpc_call *call, moat_code code, void *arg)
{
    (void)call;
    (void)code;
    xfer_ctx *x = arg;
    x->cancelled = true;
    if (x->x != NULL)
        moat_bridge_xfer_cancel(x->x); /* read_done/write_done free x */
}

static xfer_ctx *xfer_new(stream *st)
{
    xfer_ctx *x = calloc(1, sizeof(*x));
    if (x == NULL) {
        moat_rpc_call_fail(st->call, MOAT_CODE_RESOURCE_EXHAUSTED, "out_of_memory",
                           "out of memory");
        return NULL;
    }
    x->st = st;
    moat__stream_ref(st);
    st->hctx = x;
    st->on_credit = xfer_on_credit;
    moat_rpc_call_on_cancel(st->call, xfer_on_cancel, x);
    return x;
}

static void read_go(stream *st, const char *sid, const session_addr *sock)
{
    const Moat__V1__ReadRequest *req = moat_rpc_call_get_data(st->call);
    moat_bridge_endpoint ep = endpoint(sid, sock);
    xfer_ctx *x = xfer_new(st);
    if (x == NULL)
        return;
    moat_bridge_download_cbs cbs = {read_chunk, read_done, x};
    moat_bridge_xfer *bx = NULL;
    moat_status status;
    moat__stream_ref(st);
    if (moat_bridge_download(st->s->bridge, &ep, req->path, req->offset, req->length, &cbs, &bx,
                             &status) != MOAT_OK) {
        moat_rpc_call_on_cancel(st->call, NULL, NULL);
        xfer_free(x);
        fail_status(st, &status);
    } else if (st->hctx == x) {
        x->x = bx;
    }
    moat__stream_unref(st);
}

static size_t write_read(void *ud, moat_bridge_xfer *bx, uint8_t *buf, size_t cap)
{
    xfer_ctx *x = ud;
    x->x = bx;
    if (x->cancelled)
        return MOAT_BRIDGE_READ_ABORT;
    size_t n = x->left < cap ? x->left : cap;
    memcpy(buf, x->data, n);
    x->data += n;
    x->left -= n;
    return n;
}

static void write_done(void *ud, moat_bridge_xfer *bx, const moat_status *status, uint64_t written)
{
    (void)bx;
    xfer_ctx *x = ud;
    if (!x->cancelled && answer_ok(x->st, status)) {
        Moat__V1__WriteResponse r = MOAT__V1__WRITE_RESPONSE__INIT;
        r.written = written;
        moat_rpc_call_reply(x->st->call, &r.base);
    }
    xfer_free(x);
}

static void write_go(stream *st, const char *sid, const session_addr *sock)
{
    const Moat__V1__WriteRequest *req = moat_rpc_call_get_data(st->call);
    moat_bridge_endpoint ep = endpoint(sid, sock);
    xfer_ctx *x = xfer_new(st);
    if (x == NULL)
        return;
    st->on_credit = NULL;
    x->data = req->data.data;
    x->left = req->data.len;
    moat_bridge_upload_cbs cbs = {write_read, write_done, x};
    moat_bridge_xfer *bx = NULL;
    moat_status status;
    moat__stream_ref(st);
    /* Offset 0 is the reference's multipart upload (any execd); later pieces of a large
     * file need moat-execd's offset writes. */
    moat_err err = req->offset > 0 ? moat_bridge_write_at(st->s->bridge, &ep, req->path,
                                                          req->offset, &cbs, &bx, &status)
                                   : moat_bridge_upload(st->s->bridge, &ep, req->path, req->mode,
                                                        NULL, NULL, &cbs, &bx, &status);
    if (err != MOAT_OK) {
        moat_rpc_call_on_cancel(st->call, NULL, NULL);
        xfer_free(x);
        fail_status(st, &status);
    } else if (st->hctx == x) {
        x->x = bx;
    }
    moat__stream_unref(st);
}

/* ------------------------------------------------------------ dispatch */

void moat__dispatch(stream *st, const ProtobufCMessage *req)
{
    if (req != NULL)
        moat_rpc_call_set_data(st->call, (void *)req);
    req = moat_rpc_call_get_data(st->call);
    srv *s = st->s;
    job *j;
    switch (moat_rpc_call_method(st->call)->id) {
    case MOAT_RPC_SANDBOXES_CREATE_SESSION:
        handle_create(st, (const Moat__V1__CreateSessionRequest *)req);
        return;
    case MOAT_RPC_SANDBOXES_GET_SESSION: {
        const Moat__V1__GetSessionRequest *r = (const void *)req;
        char id[MOAT_UUID_STR_LEN];
        if (!canon(st, r->session_id, "session_id", id) || (j = job_new(st)) == NULL)
            return;
        snprintf(j->id, sizeof(j->id), "%s", id);
        job_start(j, get_run, get_done);
        return;
    }
    case MOAT_RPC_SANDBOXES_LIST_SESSIONS: {
        const Moat__V1__ListSessionsRequest *r = (const void *)req;
        char chat[MOAT_UUID_STR_LEN] = "";
        if (r->chat_id[0] != '\0' && !canon(st, r->chat_id, "chat_id", chat))
            return;
        if ((j = job_new(st)) == NULL)
            return;
        snprintf(j->chat, sizeof(j->chat), "%s", chat);
        job_start(j, list_run, list_done);
        return;
    }
    case MOAT_RPC_SANDBOXES_RENEW_SESSION: {
        const Moat__V1__RenewSessionRequest *r = (const void *)req;
        char id[MOAT_UUID_STR_LEN];
        if (!canon(st, r->session_id, "session_id", id) || !ttl_ok(st, r->ttl_seconds) ||
            (j = job_new(st)) == NULL)
            return;
        snprintf(j->id, sizeof(j->id), "%s", id);
        j->ttl_ms = (int64_t)(r->ttl_seconds != 0 ? r->ttl_seconds : s->cfg.ttl_seconds) * 1000;
        job_start(j, renew_run, get_done);
        return;
    }
    case MOAT_RPC_SANDBOXES_STOP_SESSION: {
        const Moat__V1__StopSessionRequest *r = (const void *)req;
        char id[MOAT_UUID_STR_LEN];
        if (!canon(st, r->session_id, "session_id", id) || (j = job_new(st)) == NULL)
            return;
        snprintf(j->id, sizeof(j->id), "%s", id);
        job_start(j, stop_run, stop_done);
        return;
    }
    case MOAT_RPC_HEALTH_CHECK:
        health_check(st);
        return;
    case MOAT_RPC_EXEC_RUN_COMMAND:
        with_session(st, ((const Moat__V1__RunCommandRequest *)req)->session_id, run_command_go);
        return;
    case MOAT_RPC_EXEC_RUN_IN_SHELL:
        with_session(st, ((const Moat__V1__RunInShellRequest *)req)->session_id, run_in_shell_go);
        return;
    case MOAT_RPC_EXEC_CREATE_SHELL:
        with_session(st, ((const Moat__V1__CreateShellRequest *)req)->session_id, create_shell_go);
        return;
    case MOAT_RPC_EXEC_DELETE_SHELL:
        with_session(st, ((const Moat__V1__DeleteShellRequest *)req)->session_id, delete_shell_go);
        return;
    case MOAT_RPC_EXEC_INTERRUPT:
        with_session(st, ((const Moat__V1__InterruptRequest *)req)->session_id, interrupt_go);
        return;
    case MOAT_RPC_EXEC_GET_COMMAND_STATUS:
        with_session(st, ((const Moat__V1__GetCommandStatusRequest *)req)->session_id,
                     command_status_go);
        return;
    case MOAT_RPC_EXEC_GET_COMMAND_LOGS:
        with_session(st, ((const Moat__V1__GetCommandLogsRequest *)req)->session_id,
                     command_logs_go);
        return;
    case MOAT_RPC_EXEC_ATTACH:
        with_session(st, ((const Moat__V1__AttachRequest *)req)->session_id, attach_go);
        return;
    case MOAT_RPC_FILES_STAT:
        with_session(st, ((const Moat__V1__StatRequest *)req)->session_id, stat_go);
        return;
    case MOAT_RPC_FILES_LIST:
        with_session(st, ((const Moat__V1__ListRequest *)req)->session_id, list_go);
        return;
    case MOAT_RPC_FILES_READ:
        with_session(st, ((const Moat__V1__ReadRequest *)req)->session_id, read_go);
        return;
    case MOAT_RPC_FILES_WRITE:
        with_session(st, ((const Moat__V1__WriteRequest *)req)->session_id, write_go);
        return;
    case MOAT_RPC_FILES_REMOVE:
        with_session(st, ((const Moat__V1__RemoveRequest *)req)->session_id, remove_go);
        return;
    case MOAT_RPC_FILES_MOVE:
        with_session(st, ((const Moat__V1__MoveRequest *)req)->session_id, move_go);
        return;
    case MOAT_RPC_FILES_MKDIR:
        with_session(st, ((const Moat__V1__MkdirRequest *)req)->session_id, mkdir_go);
        return;
    case MOAT_RPC_FILES_CHMOD:
        with_session(st, ((const Moat__V1__ChmodRequest *)req)->session_id, chmod_go);
        return;
    case MOAT_RPC_METHOD_COUNT:
        break;
    }
    moat_rpc_call_fail(st->call, MOAT_CODE_UNIMPLEMENTED, "unknown_method", "no handler");
}

/* ------------------------------------------------------------ start and stop */

static void reconcile_run(job *j)
{
    moat_reconcile_report rep = {0};
    j->code = j->s->rt_ops->reconcile(j->s->rt, moat_time_now_ms(), &rep, &j->status);
    j->count = rep.adopted;
    j->when_ms = (int64_t)rep.reaped;
    j->ttl_ms = (int64_t)rep.gone;
    /* Started even when reconcile failed (the engine is down): the reaper retries it once the
     * engine answers, and the watcher's stream tells it when an engine restart stopped the
     * sandboxes while moatd keeps running. */
    moat_status st2;
    if (j->s->rt_ops->start_reaper(j->s->rt, &st2) != MOAT_CODE_OK)
        moat_log(MOAT_LOG_WARN, "reaper_not_started", "msg=\"%s\"", st2.message);
    if (j->s->rt_ops->start_watcher(j->s->rt, &st2) != MOAT_CODE_OK)
        moat_log(MOAT_LOG_WARN, "watcher_not_started", "msg=\"%s\"", st2.message);
}

static void reconcile_done(job *j)
{
    if (j->code != MOAT_CODE_OK) {
        moat_log(MOAT_LOG_WARN, "reconcile_failed", "code=%s msg=\"%s\"",
                 moat_code_name(j->status.code), j->status.message);
        return;
    }
    moat__metrics_sessions_set(j->s->metrics, (int64_t)j->count);
    moat_log(MOAT_LOG_INFO, "reconciled", "adopted=%zu reaped=%lld gone=%lld", j->count,
             (long long)j->when_ms, (long long)j->ttl_ms);
}

static void gone_free(srv *s)
{
    if (s->gone == NULL)
        return;
    pthread_mutex_destroy(&s->gone->mu);
    free(s->gone);
    s->gone = NULL;
}

/* What handlers_init made, apart from the runtime and the bridge. */
static void tables_free(srv *s)
{
    calls_free(s);
    cache_free(s);
    gone_free(s);
}

moat_err moat__handlers_init(srv *s)
{
    s->sessions = calloc(1, sizeof(cache));
    s->call_counts = calloc(1, sizeof(call_counts));
    s->gone = calloc(1, sizeof(gone_queue));
    if (s->sessions == NULL || s->call_counts == NULL || s->gone == NULL) {
        free(s->gone);
        s->gone = NULL;
        tables_free(s);
        return MOAT_E_NOMEM;
    }
    pthread_mutex_init(&s->gone->mu, NULL);
    const moat_server_config *c = &s->cfg;
    moat_runtime_metrics hooks = {0};
    hooks.ctx = s;
    hooks.session_event = rt_session_event;
    moat_status st;
    moat_status_clear(&st);
    s->rt = s->rt_ops->open(c, &hooks, &st);
    if (s->rt == NULL) {
        moat_log(MOAT_LOG_ERROR, "runtime_open_failed", "code=%s reason=%s msg=\"%s\"",
                 moat_code_name(st.code), st.reason, st.message);
        fprintf(stderr, "moatd: %s\n", st.message);
        tables_free(s);
        return MOAT_E_INVAL;
    }
    moat_bridge_config bc;
    moat_bridge_config_default(&bc);
    s->budget.cap = (size_t)c->memory_budget_bytes;
    bc.budget = &s->budget;
    if (moat_bridge_new(&bc, &s->bridge) != MOAT_OK ||
        moat_bridge_attach_uv(s->bridge, s->loop) != MOAT_OK) {
        moat_log(MOAT_LOG_ERROR, "bridge_init_failed", "%s", "");
        if (s->bridge != NULL)
            moat_bridge_free(s->bridge);
        s->bridge = NULL;
        s->rt_ops->close(s->rt);
        s->rt = NULL;
        tables_free(s);
        return MOAT_E_IO;
    }
    uv_async_init(s->loop, &s->gone_async, on_gone_async);
    s->gone_async.data = s;
    s->health = moat__health_start(s);
    job *j = calloc(1, sizeof(*j));
    if (j != NULL) {
        j->s = s;
        job_start(j, reconcile_run, reconcile_done);
    }
    return MOAT_OK;
}

void moat__handlers_close(srv *s)
{
    moat__health_stop(s->health);
    s->health = NULL;
    if (s->bridge != NULL)
        moat_bridge_free(s->bridge);
    s->bridge = NULL;
    if (s->rt != NULL)
        s->rt_ops->close(s->rt);
    s->rt = NULL;
    uv_close((uv_handle_t *)&s->gone_async, NULL);
    tables_free(s);
}
