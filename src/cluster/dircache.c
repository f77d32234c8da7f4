/* A node's copy of sessions/: a load by ranges, then a watch from the load's revision on. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "cluster/dircache.h"
#include "cluster/stopper.h"

/* One key and its value as etcd has them. */
typedef struct dc_item {
    uint8_t *value;
    size_t value_len;
    size_t key_len;
    uint8_t key[];
} dc_item;

/* The items in key order, as a listing returns them. */
typedef struct dc_set {
    dc_item **items;
    size_t count, cap;
} dc_set;

struct moat_dircache {
    moat_etcd *etcd;
    pthread_t thread;
    moat_stopper stopper;
    pthread_mutex_t mu; /* guards what follows */
    dc_set set;
    bool synced; /* the watch is in place: set is etcd's, up to the watch's delay */
};

static void set_free(dc_set *s)
{
    for (size_t i = 0; i < s->count; i++) {
        free(s->items[i]->value);
        free(s->items[i]);
    }
    free(s->items);
    memset(s, 0, sizeof(*s));
}

static int key_cmp(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen)
{
    int c = memcmp(a, b, alen < blen ? alen : blen);
    return c != 0 ? c : (alen > blen) - (alen < blen);
}

/* Where key is, or would go. */
static size_t set_find(const dc_set *s, const uint8_t *key, size_t len, bool *found)
{
    size_t lo = 0, hi = s->count;
    *found = false;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = key_cmp(s->items[mid]->key, s->items[mid]->key_len, key, len);
        if (c == 0) {
            *found = true;
            return mid;
        }
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* A put (version > 0) or a delete of kv. false when out of memory (the copy is then dropped
 * and loaded again). */
static bool set_apply(dc_set *s, const moat_etcd_kv *kv)
{
    bool found;
    size_t at = set_find(s, kv->key, kv->key_len, &found);
    if (kv->version == 0) {
        if (found) {
            free(s->items[at]->value);
            free(s->items[at]);
            memmove(&s->items[at], &s->items[at + 1], (s->count - at - 1) * sizeof(*s->items));
            s->count--;
        }
        return true;
    }
    uint8_t *value = NULL;
    if (kv->value_len > 0) {
        value = malloc(kv->value_len);
        if (value == NULL)
            return false;
        memcpy(value, kv->value, kv->value_len);
    }
    if (found) {
        free(s->items[at]->value);
        s->items[at]->value = value;
        s->items[at]->value_len = kv->value_len;
        return true;
    }
    dc_item *it = malloc(sizeof(*it) + kv->key_len);
    if (it == NULL) {
        free(value);
        return false;
    }
    if (s->count == s->cap) {
        size_t ncap = s->cap != 0 ? s->cap * 2 : 256;
        dc_item **grown = realloc(s->items, ncap * sizeof(*grown));
        if (grown == NULL) {
            free(value);
            free(it);
            return false;
        }
        s->items = grown;
        s->cap = ncap;
    }
    memcpy(it->key, kv->key, kv->key_len);
    it->key_len = kv->key_len;
    it->value = value;
    it->value_len = kv->value_len;
    memmove(&s->items[at + 1], &s->items[at], (s->count - at) * sizeof(*s->items));
    s->items[at] = it;
    s->count++;
    return true;
}

static const moat_slice prefix = {(const uint8_t *)MOAT_SESSIONS_PREFIX,
                                  sizeof(MOAT_SESSIONS_PREFIX) - 1};

static bool load_kv(void *ud, const moat_etcd_kv *kv, moat_status *st)
{
    if (set_apply(ud, kv))
        return true;
    moat_status_set(st, MOAT_CODE_RESOURCE_EXHAUSTED, "out_of_memory", "out of memory");
    return false;
}

static bool on_message(void *ud, const moat_etcd_watch_msg *m)
{
    moat_dircache *d = ud;
    if (m->canceled)
        return false; /* compacted past, or ended by etcd: load again */
    bool ok = true;
    pthread_mutex_lock(&d->mu);
    if (m->created)
        d->synced = true;
    for (size_t i = 0; ok && i < m->event_count; i++)
        ok = set_apply(&d->set, &m->events[i]);
    if (!ok)
        d->synced = false;
    pthread_mutex_unlock(&d->mu);
    return ok;
}

static void *run(void *arg)
{
    moat_dircache *d = arg;
    uint8_t end[sizeof(MOAT_SESSIONS_PREFIX)];
    moat_slice end_s = {end, moat_etcd_prefix_end(prefix, end)};
    do {
        dc_set fresh = {0};
        int64_t revision;
        moat_status st;
        moat_status_clear(&st);
        /* The ranges may see changes after the first one's revision: the watch from it replays
         * them all, and a change applied twice leaves the key as its last one did. */
        if (moat_directory_scan(d->etcd, load_kv, &fresh, &revision, &st) != MOAT_CODE_OK) {
            set_free(&fresh);
            continue;
        }
        pthread_mutex_lock(&d->mu);
        set_free(&d->set);
        d->set = fresh;
        pthread_mutex_unlock(&d->mu);
        moat_etcd_watch(d->etcd, prefix, end_s, revision + 1, on_message, d, &d->stopper.stop, &st);
        pthread_mutex_lock(&d->mu);
        d->synced = false;
        pthread_mutex_unlock(&d->mu);
        if (!atomic_load(&d->stopper.stop))
            moat_log(MOAT_LOG_INFO, "directory_watch_ended", "code=%s reason=%s msg=\"%s\"",
                     moat_code_name(st.code), st.reason, st.message);
    } while (moat__stopper_wait_ms(&d->stopper, 500));
    return NULL;
}

moat_dircache *moat_dircache_start(moat_etcd *etcd)
{
    moat_dircache *d = calloc(1, sizeof(*d));
    if (d == NULL)
        return NULL;
    d->etcd = etcd;
    moat__stopper_init(&d->stopper);
    pthread_mutex_init(&d->mu, NULL);
    if (pthread_create(&d->thread, NULL, run, d) != 0) {
        moat__stopper_destroy(&d->stopper);
        pthread_mutex_destroy(&d->mu);
        free(d);
        return NULL;
    }
    return d;
}

void moat_dircache_stop(moat_dircache *d)
{
    if (d == NULL)
        return;
    moat__stopper_stop(&d->stopper);
    pthread_join(d->thread, NULL);
    set_free(&d->set);
    moat__stopper_destroy(&d->stopper);
    pthread_mutex_destroy(&d->mu);
    free(d);
}

moat_code moat_dircache_list(moat_dircache *d, const char *chat_id, size_t max,
                             moat_dir_entry **out, size_t *count, size_t *skipped, bool *from_cache,
                             moat_status *st)
{
    if (from_cache != NULL)
        *from_cache = false;
    pthread_mutex_lock(&d->mu);
    bool synced = d->synced;
    pthread_mutex_unlock(&d->mu);
    if (!synced)
        return moat_directory_list(d->etcd, chat_id, max, out, count, skipped, st);
    /* The owners' standing is read now, not cached: a node that left is GONE at once. */
    moat_node *nodes = NULL;
    size_t nnodes = 0;
    moat_code code = moat_cluster_nodes(d->etcd, &nodes, &nnodes, NULL, st);
    moat_dir_acc a = {chat_id, nodes, nnodes, max, NULL, 0, 0, 0};
    pthread_mutex_lock(&d->mu);
    synced = d->synced;
    for (size_t i = 0; synced && code == MOAT_CODE_OK && i < d->set.count; i++) {
        const dc_item *it = d->set.items[i];
        if (!moat__dir_take(&a, it->key, it->key_len, it->value, it->value_len, st))
            code = st->code;
    }
    pthread_mutex_unlock(&d->mu);
    free(nodes);
    if (!synced) {
        moat__dir_finish(&a, MOAT_CODE_CANCELLED, out, count, skipped);
        return moat_directory_list(d->etcd, chat_id, max, out, count, skipped, st);
    }
    if (from_cache != NULL)
        *from_cache = code == MOAT_CODE_OK;
    return moat__dir_finish(&a, code, out, count, skipped);
}
