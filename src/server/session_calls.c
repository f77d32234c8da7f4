/* Exec and Files calls open to each session, bounded by max_calls_per_session so a burst cannot
 * overrun the execd's accept queue (or its threads). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "handlers.h"

#define CALL_BUCKETS 1024

static unsigned bucket(const char *id)
{
    return moat__session_hash(id) % CALL_BUCKETS;
}

/* Exec and Files calls open to each session, bounded by max_calls_per_session
 * so a burst cannot overrun the execd's accept queue (or its threads). An
 * entry lives while its count is not 0; a stream holding one names it. */
typedef struct call_count {
    struct call_count *next;
    char id[MOAT_UUID_STR_LEN];
    uint32_t n;
} call_count;

typedef struct call_counts {
    call_count *b[CALL_BUCKETS];
} call_counts;

bool moat__calls_acquire(stream *st, const char *id)
{
    call_counts *t = st->s->call_counts;
    if (t == NULL)
        return true; /* handlers not started: nothing reaches a session */
    if (!moat__counted_call(st))
        return true;
    call_count *e = t->b[bucket(id)];
    while (e != NULL && strcmp(e->id, id) != 0)
        e = e->next;
    if (e != NULL && e->n >= st->s->cfg.max_calls_per_session) {
        moat_log_limited(&st->s->logs.calls_refused, MOAT_LOG_WARN, "calls_refused",
                         "session_id=%s peer=%s limit=%u", id, moat__stream_peer(st),
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
        unsigned h = bucket(id);
        e->next = t->b[h];
        t->b[h] = e;
    }
    e->n++;
    st->session_calls = e;
    return true;
}

void moat__calls_free(srv *s)
{
    call_counts *t = s->call_counts;
    if (t == NULL)
        return;
    for (size_t i = 0; i < CALL_BUCKETS; i++) {
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
    call_count **pp = &t->b[bucket(e->id)];
    while (*pp != e)
        pp = &(*pp)->next;
    *pp = e->next;
    free(e);
}

moat_err moat__calls_init(srv *s)
{
    s->call_counts = calloc(1, sizeof(call_counts));
    return s->call_counts != NULL ? MOAT_OK : MOAT_E_NOMEM;
}
