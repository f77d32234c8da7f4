/* Open streams of a connection: open addressing with linear probing and
 * backward-shift deletion (no tombstones), keyed by the non-zero stream id. */
#include <stdlib.h>

#include "wire/wire.h"

typedef struct slot {
    uint32_t id; /* 0 = empty */
    void *user;
} slot;

struct moat_stream_table {
    slot *slots;
    uint32_t mask;
    uint32_t count;
    uint32_t max_streams;
    uint32_t last_id;
};

static uint32_t hash(uint32_t id)
{
    return id * 2654435761u;
}

moat_stream_table *moat_stream_table_new(uint32_t max_streams)
{
    if (max_streams > (1u << 24))
        return NULL;
    uint32_t cap = 8;
    while (cap < max_streams * 2u)
        cap *= 2;
    moat_stream_table *t = calloc(1, sizeof *t);
    if (t == NULL)
        return NULL;
    t->slots = calloc(cap, sizeof *t->slots);
    if (t->slots == NULL) {
        free(t);
        return NULL;
    }
    t->mask = cap - 1;
    t->max_streams = max_streams;
    return t;
}

void moat_stream_table_free(moat_stream_table *t)
{
    if (t == NULL)
        return;
    free(t->slots);
    free(t);
}

static slot *find(const moat_stream_table *t, uint32_t id)
{
    for (uint32_t i = hash(id) & t->mask;; i = (i + 1) & t->mask) {
        if (t->slots[i].id == id)
            return &t->slots[i];
        if (t->slots[i].id == 0)
            return NULL;
    }
}

moat_err moat_stream_table_open(moat_stream_table *t, uint32_t id, void *user)
{
    if (id == 0 || id % 2 == 0 || id <= t->last_id)
        return MOAT_E_STREAM;
    if (t->count >= t->max_streams)
        return MOAT_E_TOO_BIG;
    uint32_t i = hash(id) & t->mask;
    while (t->slots[i].id != 0)
        i = (i + 1) & t->mask;
    t->slots[i].id = id;
    t->slots[i].user = user;
    t->count++;
    t->last_id = id;
    return MOAT_OK;
}

void *moat_stream_table_get(const moat_stream_table *t, uint32_t id)
{
    if (id == 0)
        return NULL;
    slot *s = find(t, id);
    return s ? s->user : NULL;
}

moat_err moat_stream_table_close(moat_stream_table *t, uint32_t id)
{
    slot *s = id ? find(t, id) : NULL;
    if (s == NULL)
        return MOAT_E_NOT_FOUND;
    uint32_t hole = (uint32_t)(s - t->slots);
    t->slots[hole].id = 0;
    t->count--;
    /* Shift later members of the probe run back so lookups never stop early. */
    for (uint32_t i = (hole + 1) & t->mask; t->slots[i].id != 0; i = (i + 1) & t->mask) {
        uint32_t home = hash(t->slots[i].id) & t->mask;
        /* Move the entry if its home is not within (hole, i] cyclically. */
        bool stays = hole <= i ? (home > hole && home <= i) : (home > hole || home <= i);
        if (!stays) {
            t->slots[hole] = t->slots[i];
            t->slots[i].id = 0;
            hole = i;
        }
    }
    return MOAT_OK;
}

uint32_t moat_stream_table_count(const moat_stream_table *t)
{
    return t->count;
}

uint32_t moat_stream_table_last_id(const moat_stream_table *t)
{
    return t->last_id;
}

void moat_stream_table_each(const moat_stream_table *t,
                            void (*fn)(uint32_t id, void *user, void *arg), void *arg)
{
    for (uint32_t i = 0; i <= t->mask; i++)
        if (t->slots[i].id != 0)
            fn(t->slots[i].id, t->slots[i].user, arg);
}
