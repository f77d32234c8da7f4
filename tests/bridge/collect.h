/* Test helper: records bridge events and the end status of a stream. */
#ifndef MOAT_TEST_BRIDGE_COLLECT_H
#define MOAT_TEST_BRIDGE_COLLECT_H

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bridge/bridge.h"

typedef struct col_event {
    uint64_t seq;
    int64_t ts;
    moat_bridge_event_kind kind;
    int stream;
    char *text; /* id, output, result text, error value, exit reason */
    size_t len;
    char *name;
    size_t tb_count;
    char *tb0;
    uint64_t exec_time;
    bool known;
    int32_t code;
    bool timed_out;
} col_event;

typedef struct collect {
    col_event *ev;
    size_t n, cap;
    /* all output bytes of each stream, concatenated (bounded by out_max) */
    uint8_t *out[3];
    size_t out_len[3];
    size_t out_max;
    uint64_t out_total[3];
    bool keep_events; /* false: only count output bytes (for big streams) */
    bool ended;
    moat_status end;
    uint64_t last_seq;
    bool seq_gap;
    uint64_t events;
    /* optional hook: grant this much credit back per event (0 = none) */
    uint64_t regrant;
    moat_bridge_exec *ex;
} collect;

static inline char *col_dup(const void *p, size_t n)
{
    char *s = malloc(n + 1);
    if (n > 0)
        memcpy(s, p, n);
    s[n] = '\0';
    return s;
}

static inline void col_init(collect *c)
{
    memset(c, 0, sizeof(*c));
    c->keep_events = true;
    c->out_max = 1u << 20;
}

static inline void col_free(collect *c)
{
    for (size_t i = 0; i < c->n; i++) {
        free(c->ev[i].text);
        free(c->ev[i].name);
        free(c->ev[i].tb0);
    }
    free(c->ev);
    for (int i = 0; i < 3; i++)
        free(c->out[i]);
    memset(c, 0, sizeof(*c));
}

static inline void col_add(collect *c, const moat_bridge_event *ev)
{
    if (c->last_seq != 0 && ev->sequence != c->last_seq + 1)
        c->seq_gap = true;
    c->last_seq = ev->sequence;
    c->events++;
    if (ev->kind == MOAT_BRIDGE_EV_OUTPUT) {
        int s = ev->u.output.stream == MOAT_BRIDGE_STDERR ? 2 : 1;
        c->out_total[s] += ev->u.output.len;
        size_t room = c->out_max - c->out_len[s];
        size_t take = ev->u.output.len < room ? ev->u.output.len : room;
        if (take > 0) {
            c->out[s] = realloc(c->out[s], c->out_len[s] + take);
            memcpy(c->out[s] + c->out_len[s], ev->u.output.data, take);
            c->out_len[s] += take;
        }
    }
    if (!c->keep_events && ev->kind == MOAT_BRIDGE_EV_OUTPUT)
        return;
    if (c->n == c->cap) {
        c->cap = c->cap ? c->cap * 2 : 16;
        c->ev = realloc(c->ev, c->cap * sizeof(*c->ev));
    }
    col_event *e = &c->ev[c->n++];
    memset(e, 0, sizeof(*e));
    e->seq = ev->sequence;
    e->ts = ev->timestamp_ms;
    e->kind = ev->kind;
    switch (ev->kind) {
    case MOAT_BRIDGE_EV_INIT:
        e->text = col_dup(ev->u.init.execution_id.data, ev->u.init.execution_id.len);
        e->len = ev->u.init.execution_id.len;
        break;
    case MOAT_BRIDGE_EV_OUTPUT:
        e->stream = ev->u.output.stream;
        e->text = col_dup(ev->u.output.data, ev->u.output.len);
        e->len = ev->u.output.len;
        break;
    case MOAT_BRIDGE_EV_RESULT:
        e->text = col_dup(ev->u.result.text.data, ev->u.result.text.len);
        e->len = ev->u.result.text.len;
        break;
    case MOAT_BRIDGE_EV_ERROR:
        e->text = col_dup(ev->u.error.value.data, ev->u.error.value.len);
        e->len = ev->u.error.value.len;
        e->name = col_dup(ev->u.error.name.data, ev->u.error.name.len);
        e->tb_count = ev->u.error.traceback_count;
        if (e->tb_count > 0)
            e->tb0 = col_dup(ev->u.error.traceback[0].data, ev->u.error.traceback[0].len);
        break;
    case MOAT_BRIDGE_EV_COMPLETE:
        e->exec_time = ev->u.complete.execution_time_ms;
        break;
    case MOAT_BRIDGE_EV_EXIT:
        e->known = ev->u.exit.known;
        e->code = ev->u.exit.code;
        e->timed_out = ev->u.exit.timed_out;
        e->text = col_dup(ev->u.exit.unknown_reason.data, ev->u.exit.unknown_reason.len);
        e->len = ev->u.exit.unknown_reason.len;
        break;
    }
}

/* The first event of a kind, or NULL. */
static inline const col_event *col_find(const collect *c, moat_bridge_event_kind k)
{
    for (size_t i = 0; i < c->n; i++)
        if (c->ev[i].kind == k)
            return &c->ev[i];
    return NULL;
}

static inline size_t col_count(const collect *c, moat_bridge_event_kind k)
{
    size_t n = 0;
    for (size_t i = 0; i < c->n; i++)
        n += c->ev[i].kind == k;
    return n;
}

static inline bool col_emit(void *ud, const moat_bridge_event *ev)
{
    col_add(ud, ev);
    return true;
}

static inline void col_on_event(void *ud, moat_bridge_exec *ex, const moat_bridge_event *ev)
{
    collect *c = ud;
    col_add(c, ev);
    if (c->regrant > 0)
        moat_bridge_exec_credit(ex, c->regrant);
}

static inline void col_on_end(void *ud, moat_bridge_exec *ex, const moat_status *st)
{
    (void)ex;
    collect *c = ud;
    c->ended = true;
    c->end = *st;
}

static inline moat_bridge_consumer col_consumer(collect *c)
{
    moat_bridge_consumer k = {col_on_event, col_on_end, c, NULL};
    return k;
}

#endif
