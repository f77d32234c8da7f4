/* libmoat in a cluster (docs/CLUSTER.md, "Routing"): which connection a call
 * for a session goes to. A client remembers each session's owner (learnt from
 * session_moved answers and from SandboxSession.owner_address) in a bounded
 * cache with clock eviction, and keeps one connection per owner, a bounded
 * number of them, closing those left idle. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "client.h"
#include "common/common.h"

/* Connections to nodes other than the seed. */
#define PEERS_MAX 16u
/* A connection to another node with no call for this long is closed. */
#define PEER_IDLE_MS 60000
/* Sessions whose owner is remembered (the hash buckets they are found by are twice as many). */
#define CACHE_ENTRIES 1024u
/* Distinct owner addresses the cache refers to (a cluster's nodes). */
#define OWNERS_MAX 128u
/* What the cache starts with, on a client's first redirect; it doubles up to the bounds above.
 * All of it at once (116 KB) cost a new client's redirected call about 70 us of page faults
 * (bench/cluster/bench_follow_real). */
#define CACHE_FIRST  16u
#define OWNERS_FIRST 4u

typedef struct peer {
    moat_client *conn; /* NULL: a free slot */
    int64_t used_ms;
} peer;

typedef struct cache_entry {
    char session[MOAT__SESSION_MAX];
    int32_t next; /* the next entry of its bucket, or -1 */
    uint16_t owner;
    bool used;
    bool ref; /* looked up since the clock hand last passed */
} cache_entry;

typedef struct owner {
    char addr[MOAT__ADDR_MAX + 1];
    uint32_t refs; /* cache entries naming it; 0: a free slot */
} owner;

struct moat__router {
    char *seed;
    char *token;
    char *client_name;
    int timeout_ms;
    moat_redirect_fn notify;
    void *notify_arg;
    peer peers[PEERS_MAX];
    /* Made when the first owner is learnt: a single-node client never needs them. */
    cache_entry *entries; /* cap of them, made of them handed out (the others unset) */
    int32_t *buckets;     /* 2 * cap */
    owner *owners;        /* owners_cap */
    uint32_t cap, made, owners_cap;
    uint32_t hand;
};

static int64_t now_ms(void)
{
    return (int64_t)(moat_time_mono_ns() / 1000000u);
}

static char *dup_or_null(const char *s, bool *ok)
{
    if (s == NULL)
        return NULL;
    char *d = strdup(s);
    if (d == NULL)
        *ok = false;
    return d;
}

moat__router *moat__router_new(const char *seed, const moat_client_options *opts)
{
    moat__router *r = calloc(1, sizeof *r);
    if (r == NULL)
        return NULL;
    bool ok = true;
    r->seed = dup_or_null(seed, &ok);
    r->token = dup_or_null(opts ? opts->token : NULL, &ok);
    r->client_name = dup_or_null(opts ? opts->client_name : NULL, &ok);
    r->timeout_ms = opts ? opts->timeout_ms : 0;
    if (!ok) {
        moat__router_free(r);
        return NULL;
    }
    return r;
}

void moat__router_free(moat__router *r)
{
    if (r == NULL)
        return;
    for (size_t i = 0; i < PEERS_MAX; i++)
        moat_client_close(r->peers[i].conn);
    free(r->entries);
    free(r->buckets);
    free(r->owners);
    free(r->seed);
    free(r->token);
    free(r->client_name);
    free(r);
}

void moat_client_on_redirect(moat_client *c, moat_redirect_fn fn, void *arg)
{
    moat__router *r = moat__client_router(c);
    if (r == NULL)
        return;
    r->notify = fn;
    r->notify_arg = arg;
}

void moat__route_notify(moat_client *top, const char *session_id, const char *from, const char *to)
{
    moat__router *r = moat__client_router(top);
    if (r != NULL && r->notify != NULL)
        r->notify(session_id, from, to, r->notify_arg);
}

bool moat__addr_ok(moat_slice addr)
{
    if (addr.len == 0 || addr.len > MOAT__ADDR_MAX)
        return false;
    const char *p = (const char *)addr.data;
    size_t colon = addr.len;
    while (colon > 0 && p[colon - 1] != ':')
        colon--;
    if (colon < 2)
        return false; /* no ':', or no host before it */
    size_t digits = addr.len - colon;
    if (digits == 0 || digits > 5)
        return false;
    unsigned port = 0;
    for (size_t i = colon; i < addr.len; i++) {
        if (p[i] < '0' || p[i] > '9')
            return false;
        port = port * 10 + (unsigned)(p[i] - '0');
    }
    if (port == 0 || port > 65535)
        return false;
    size_t hlen = colon - 1;
    bool v6 = p[0] == '[';
    if (v6 && (hlen < 3 || p[hlen - 1] != ']'))
        return false;
    for (size_t i = v6 ? 1 : 0; i < (v6 ? hlen - 1 : hlen); i++) {
        char ch = p[i];
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                  (ch >= '0' && ch <= '9') || ch == '.' ||
                  (v6 ? ch == ':' : ch == '-' || ch == '_');
        if (!ok)
            return false;
    }
    return true;
}

/* FNV-1a: session ids are server-made UUIDs, spread well enough by it. */
static uint32_t bucket_of(const moat__router *r, const char *session)
{
    uint32_t h = 2166136261u;
    for (const char *p = session; *p; p++)
        h = (h ^ (uint8_t)*p) * 16777619u;
    return h & (2 * r->cap - 1);
}

static void cache_link(moat__router *r, int32_t i)
{
    int32_t *head = &r->buckets[bucket_of(r, r->entries[i].session)];
    r->entries[i].next = *head;
    *head = i;
}

/* Room for cap entries (a power of two, more than now), the buckets made again for it. */
static bool cache_grow(moat__router *r, uint32_t cap)
{
    cache_entry *entries = realloc(r->entries, cap * sizeof *entries);
    if (entries == NULL)
        return false;
    r->entries = entries;
    int32_t *buckets = malloc(2 * cap * sizeof *buckets);
    if (buckets == NULL)
        return false; /* the entries stay as they were: the larger array is unused */
    free(r->buckets);
    r->buckets = buckets;
    r->cap = cap;
    for (size_t i = 0; i < 2 * cap; i++)
        r->buckets[i] = -1;
    for (uint32_t i = 0; i < r->made; i++)
        if (r->entries[i].used)
            cache_link(r, (int32_t)i);
    return true;
}

static bool cache_made(moat__router *r)
{
    if (r->entries != NULL)
        return true;
    r->owners = calloc(OWNERS_FIRST, sizeof *r->owners);
    if (r->owners == NULL || !cache_grow(r, CACHE_FIRST)) {
        free(r->entries);
        free(r->owners);
        r->entries = NULL;
        r->owners = NULL;
        return false;
    }
    r->owners_cap = OWNERS_FIRST;
    return true;
}

/* The entry of session, or -1; *link is where it is linked from. */
static int32_t cache_find(moat__router *r, const char *session, int32_t **link)
{
    int32_t *l = &r->buckets[bucket_of(r, session)];
    while (*l >= 0 && strcmp(r->entries[*l].session, session) != 0)
        l = &r->entries[*l].next;
    if (link)
        *link = l;
    return *l;
}

static void cache_unlink(moat__router *r, int32_t i)
{
    int32_t *link;
    cache_find(r, r->entries[i].session, &link);
    *link = r->entries[i].next;
    r->owners[r->entries[i].owner].refs--;
    r->entries[i].used = false;
}

static const char *cache_lookup(moat__router *r, const char *session)
{
    if (r->entries == NULL)
        return NULL;
    int32_t i = cache_find(r, session, NULL);
    if (i < 0)
        return NULL;
    r->entries[i].ref = true;
    return r->owners[r->entries[i].owner].addr;
}

void moat__route_forget(moat_client *top, const char *session_id)
{
    moat__router *r = moat__client_router(top);
    if (r == NULL || r->entries == NULL)
        return;
    int32_t i = cache_find(r, session_id, NULL);
    if (i >= 0)
        cache_unlink(r, i);
}

/* The owner slot of addr, taken if it has none; -1 when all are in use. */
static int owner_slot(moat__router *r, moat_slice addr)
{
    int free_slot = -1;
    for (size_t i = 0; i < r->owners_cap; i++) {
        if (r->owners[i].refs > 0 && moat_slice_eq_str(addr, r->owners[i].addr))
            return (int)i;
        if (r->owners[i].refs == 0 && free_slot < 0)
            free_slot = (int)i;
    }
    owner *grown = free_slot < 0 && r->owners_cap < OWNERS_MAX
                       ? realloc(r->owners, 2 * r->owners_cap * sizeof *grown)
                       : NULL;
    if (grown != NULL) {
        memset(&grown[r->owners_cap], 0, r->owners_cap * sizeof *grown);
        r->owners = grown;
        free_slot = (int)r->owners_cap;
        r->owners_cap *= 2;
    }
    if (free_slot >= 0)
        moat_slice_copy(addr, r->owners[free_slot].addr, sizeof r->owners[free_slot].addr);
    return free_slot;
}

/* A free entry: one never handed out, the cache grown for it while it may; then
 * the clock hand passes entries looked up since its last turn (clearing their
 * mark) and takes the first one that was not. */
static int32_t cache_victim(moat__router *r)
{
    if (r->made == r->cap && r->cap < CACHE_ENTRIES)
        cache_grow(r, 2 * r->cap); /* out of memory: the clock takes one, as when full */
    if (r->made < r->cap)
        return (int32_t)r->made++;
    for (;;) {
        uint32_t i = r->hand;
        r->hand = (r->hand + 1) % r->cap;
        cache_entry *e = &r->entries[i];
        if (e->used && e->ref) {
            e->ref = false;
            continue;
        }
        if (e->used)
            cache_unlink(r, (int32_t)i);
        return (int32_t)i;
    }
}

void moat__route_learn(moat_client *top, moat_slice session_id, moat_slice addr)
{
    moat__router *r = moat__client_router(top);
    if (r == NULL || session_id.len == 0 || session_id.len >= MOAT__SESSION_MAX ||
        memchr(session_id.data, '\0', session_id.len) != NULL || !moat__addr_ok(addr))
        return;
    char session[MOAT__SESSION_MAX];
    moat_slice_copy(session_id, session, sizeof session);
    if (moat_slice_eq_str(addr, r->seed)) {
        moat__route_forget(top, session); /* the seed is where calls go anyway */
        return;
    }
    if (!cache_made(r))
        return;
    int32_t i = cache_find(r, session, NULL);
    if (i >= 0 && moat_slice_eq_str(addr, r->owners[r->entries[i].owner].addr))
        return;
    if (i >= 0)
        cache_unlink(r, i);
    int slot = owner_slot(r, addr);
    if (slot < 0)
        return; /* OWNERS_MAX distinct owners cached: this one is followed, not kept */
    i = cache_victim(r);
    cache_entry *e = &r->entries[i];
    memcpy(e->session, session, sizeof session);
    e->owner = (uint16_t)slot;
    e->used = true;
    e->ref = false;
    cache_link(r, i);
    r->owners[slot].refs++;
}

/* Closes connections with no call that are broken or have been idle too long. */
static void close_idle(moat__router *r, int64_t now)
{
    for (size_t i = 0; i < PEERS_MAX; i++) {
        peer *p = &r->peers[i];
        if (p->conn != NULL && !moat__client_busy(p->conn) &&
            (!moat__client_usable(p->conn) || now - p->used_ms > PEER_IDLE_MS)) {
            moat_client_close(p->conn);
            p->conn = NULL;
        }
    }
}

moat_client *moat__route_conn(moat_client *top, const char *addr, int timeout_ms, moat_status *st)
{
    moat__router *r = moat__client_router(top);
    if (strcmp(addr, r->seed) == 0)
        return top;
    int64_t now = now_ms();
    close_idle(r, now);
    peer *slot = NULL, *lru = NULL;
    for (size_t i = 0; i < PEERS_MAX; i++) {
        peer *p = &r->peers[i];
        bool same = p->conn != NULL && strcmp(moat__client_addr(p->conn), addr) == 0;
        if (same)
            moat__client_poll(p->conn);
        if (p->conn == NULL) {
            slot = slot ? slot : p;
        } else if (same && moat__client_usable(p->conn)) {
            p->used_ms = now;
            return p->conn;
        } else if (!moat__client_busy(p->conn) && (lru == NULL || p->used_ms < lru->used_ms)) {
            lru = p;
        }
    }
    if (slot == NULL && lru == NULL) {
        moat_status_set(st, MOAT_CODE_RESOURCE_EXHAUSTED, "too_many_owners",
                        "%u connections to other nodes, each with calls open", PEERS_MAX);
        return NULL;
    }
    if (slot == NULL) {
        moat_client_close(lru->conn);
        lru->conn = NULL;
        slot = lru;
    }
    moat_client_options opts = {r->token, r->client_name, r->timeout_ms};
    if (timeout_ms > 0 && (opts.timeout_ms <= 0 || timeout_ms < opts.timeout_ms))
        opts.timeout_ms = timeout_ms;
    moat_client *conn;
    if (moat__connect(addr, &opts, &conn, st) != MOAT_OK)
        return NULL;
    moat__client_adopt(conn, top);
    slot->conn = conn;
    slot->used_ms = now;
    return conn;
}

moat_client *moat__route(moat_client *top, const char *session_id, uint64_t deadline_ms)
{
    moat__router *r = moat__client_router(top);
    const char *addr = r != NULL ? cache_lookup(r, session_id) : NULL;
    if (addr == NULL)
        return top;
    moat_status st;
    int timeout_ms = deadline_ms > INT_MAX ? 0 : (int)deadline_ms;
    moat_client *conn = moat__route_conn(top, addr, timeout_ms, &st);
    if (conn == NULL) /* a cached owner that cannot be reached: ask the seed again */
        moat__route_forget(top, session_id);
    return conn != NULL ? conn : top;
}
