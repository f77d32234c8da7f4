/* Token buckets of failed hellos, in an open-addressed table of fixed size. */
#include "throttle.h"

#include <stdlib.h>
#include <string.h>

#define PROBE 8 /* slots looked at for one address */
#define FULL  ((uint32_t)MOAT_THROTTLE_BURST * MOAT_THROTTLE_REFILL_MS)

/* tokens are counted in milliseconds of refill: FULL is a full bucket, and one failed hello
 * costs MOAT_THROTTLE_REFILL_MS, so refilling is adding the time that passed. */
typedef struct slot {
    moat_throttle_addr addr;
    uint64_t updated_ms;
    uint32_t tokens;
    bool used;
} slot;

struct moat_throttle {
    uint64_t seed;
    slot slots[MOAT_THROTTLE_SLOTS];
};

moat_throttle *moat_throttle_new(uint64_t seed)
{
    moat_throttle *t = calloc(1, sizeof(*t));
    if (t != NULL)
        t->seed = seed;
    return t;
}

void moat_throttle_free(moat_throttle *t)
{
    free(t);
}

static size_t hash(const moat_throttle *t, const moat_throttle_addr *a)
{
    uint64_t h = t->seed ^ 14695981039346656037ull;
    for (size_t i = 0; i < sizeof(a->b); i++)
        h = (h ^ a->b[i]) * 1099511628211ull;
    h ^= h >> 29;
    return (size_t)(h % MOAT_THROTTLE_SLOTS);
}

static uint32_t refilled(const slot *s, uint64_t now_ms)
{
    uint64_t gained = now_ms > s->updated_ms ? now_ms - s->updated_ms : 0;
    uint64_t tokens = (uint64_t)s->tokens + gained;
    return tokens > FULL ? FULL : (uint32_t)tokens;
}

/* The address's slot, or NULL when it has none (a full bucket). */
static slot *find(moat_throttle *t, const moat_throttle_addr *a)
{
    size_t h = hash(t, a);
    for (size_t i = 0; i < PROBE; i++) {
        slot *s = &t->slots[(h + i) % MOAT_THROTTLE_SLOTS];
        if (s->used && memcmp(&s->addr, a, sizeof(*a)) == 0)
            return s;
    }
    return NULL;
}

bool moat_throttle_allows(moat_throttle *t, const moat_throttle_addr *addr, uint64_t now_ms)
{
    return moat_throttle_retry_ms(t, addr, now_ms) == 0;
}

uint64_t moat_throttle_retry_ms(moat_throttle *t, const moat_throttle_addr *addr, uint64_t now_ms)
{
    slot *s = find(t, addr);
    uint32_t tokens = s != NULL ? refilled(s, now_ms) : FULL;
    return tokens >= MOAT_THROTTLE_REFILL_MS ? 0 : MOAT_THROTTLE_REFILL_MS - tokens;
}

void moat_throttle_charge(moat_throttle *t, const moat_throttle_addr *addr, uint64_t now_ms)
{
    slot *s = find(t, addr);
    if (s == NULL) {
        /* A free slot, else the one with the fullest bucket: the address that has failed least
         * recently loses its record, and a throttled one keeps its own while addresses that
         * failed once churn past it. */
        size_t h = hash(t, addr);
        uint32_t best_tokens = 0;
        for (size_t i = 0; i < PROBE; i++) {
            slot *c = &t->slots[(h + i) % MOAT_THROTTLE_SLOTS];
            if (!c->used) {
                s = c;
                break;
            }
            uint32_t tokens = refilled(c, now_ms);
            if (s == NULL || tokens > best_tokens) {
                s = c;
                best_tokens = tokens;
            }
        }
        s->used = true;
        s->addr = *addr;
        s->tokens = FULL;
        s->updated_ms = now_ms;
    }
    uint32_t tokens = refilled(s, now_ms);
    s->tokens = tokens > MOAT_THROTTLE_REFILL_MS ? tokens - MOAT_THROTTLE_REFILL_MS : 0;
    s->updated_ms = now_ms;
}
