/* The session → execd cache, and the lookup of a session's execd for Exec and Files calls: a hit
 * needs no Docker round trip; a miss asks the runtime on the thread pool. Stop and the reaper
 * remove entries. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "handlers.h"

#define CACHE_BUCKETS 1024

typedef struct cache_entry {
    struct cache_entry *next;
    char id[MOAT_UUID_STR_LEN];
    char token[MOAT_EXECD_TOKEN_MAX];
    char sock[];
} cache_entry;

typedef struct cache {
    cache_entry *b[CACHE_BUCKETS];
} cache;

unsigned moat__session_hash(const char *id)
{
    unsigned h = 2166136261u;
    for (const char *p = id; *p; p++)
        h = (h ^ (unsigned char)*p) * 16777619u;
    return h;
}

static unsigned hash_id(const char *id)
{
    return moat__session_hash(id) % CACHE_BUCKETS;
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

void moat__session_cache_put(srv *s, const moat_session *session)
{
    const char *id = session->session_id;
    /* Another node's session (from the cluster's directory) has no execd here. */
    if (session->execd_socket[0] == '\0' || cache_find(s, id) != NULL)
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

bool moat__session_cached(srv *s, const char *id)
{
    return cache_find(s, id) != NULL;
}

void moat__session_cache_drop(srv *s, const char *id)
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

void moat__session_cache_clear(srv *s)
{
    cache *c = s->sessions;
    for (size_t i = 0; i < CACHE_BUCKETS; i++) {
        cache_entry *e = c->b[i];
        while (e != NULL) {
            cache_entry *n = e->next;
            free(e);
            e = n;
        }
        c->b[i] = NULL;
    }
}

moat_err moat__session_cache_init(srv *s)
{
    s->sessions = calloc(1, sizeof(cache));
    return s->sessions != NULL ? MOAT_OK : MOAT_E_NOMEM;
}

void moat__session_cache_free(srv *s)
{
    if (s->sessions == NULL)
        return;
    moat__session_cache_clear(s);
    free(s->sessions);
    s->sessions = NULL;
}

/* ------------------------------------------------------------ lookup */

typedef struct lookup_job {
    engine_job base;
    char session_id[MOAT_UUID_STR_LEN];
    moat_session found;
    session_then_fn then;
} lookup_job;

static void lookup_run(engine_job *j)
{
    lookup_job *l = (lookup_job *)j;
    if (!moat__engine_skipped(j))
        j->code = j->s->rt_ops->get(j->s->rt, l->session_id, &l->found, &j->status);
    /* Not here: in a cluster, the directory knows where. */
    session_route r;
    if (!moat__directory_knows(j, l->session_id, &r))
        return;
    if (moat__route_status(&r, &j->status)) {
        j->code = j->status.code;
    } else {
        j->code = MOAT_CODE_OK;
        l->found.state = moat__route_state(&r.entry); /* ended: session_not_running */
    }
}

static void lookup_done(engine_job *j)
{
    lookup_job *l = (lookup_job *)j;
    if (!moat__running(j->st))
        return;
    if (j->code != MOAT_CODE_OK) {
        if (!moat__proxy_route(j->st, &j->status))
            moat_rpc_call_end(j->st->call, &j->status);
        return;
    }
    if (l->found.state != MOAT_SESSION_RUNNING) {
        moat_rpc_call_fail(j->st->call, MOAT_CODE_FAILED_PRECONDITION, "session_not_running",
                           "session %s is %s", l->session_id,
                           moat_session_state_name(l->found.state));
        return;
    }
    moat__session_cache_put(j->s, &l->found);
    moat_bridge_endpoint ep = {0};
    ep.unix_socket = l->found.execd_socket;
    ep.access_token = l->found.execd_token;
    ep.scope = l->session_id;
    l->then(j->st, &ep);
}

void moat__with_session(stream *st, const char *session_id, session_then_fn then)
{
    char id[MOAT_UUID_STR_LEN];
    if (!moat__canon(st, session_id, "session_id", id) || !moat__calls_acquire(st, id))
        return;
    cache_entry *e = cache_find(st->s, id);
    if (e != NULL) {
        moat_bridge_endpoint ep = {0};
        ep.unix_socket = e->sock;
        ep.access_token = e->token;
        ep.scope = id;
        then(st, &ep);
        return;
    }
    /* Another live node's, by this node's copy of the directory: its container is there (the
     * node a record names made it), so the engine's lookup here, a worker's Docker round trip
     * of about half a millisecond, would only say NOT_FOUND. */
    if (moat__cluster_moved(st, id))
        return;
    lookup_job *l = moat__job_new_routed(st, sizeof(*l));
    if (l == NULL)
        return;
    snprintf(l->session_id, sizeof(l->session_id), "%s", id);
    l->then = then;
    moat__job_start(&l->base, lookup_run, lookup_done);
}
