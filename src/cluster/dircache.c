/* A node's copy of sessions/ and nodes/: a load by ranges, then one watch over both from the
 * load's revision on. */
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
    int64_t lease;
    int64_t mod_revision; /* a change at or before it is in the item already */
    size_t key_len;
    uint8_t key[];
} dc_item;

/* The items in key order, as a listing returns them. */
typedef struct dc_set {
    dc_item **items;
    size_t count, cap;
    /* The set was loaded at this revision or later: the watch's replay of changes up to it is
     * skipped (it would show older states for a moment). */
    int64_t floor;
} dc_set;

struct moat_dircache {
    moat_etcd *etcd;
    pthread_t thread;
    moat_stopper stopper;
    /* Guards what follows. Readers (lookups, on moatd's loop too, and listings, which decode
     * every record) share it; only the watch's thread writes. */
    pthread_rwlock_t mu;
    dc_set sessions; /* sessions/ */
    dc_set nodes;    /* nodes/ */
    /* synced: both sets are etcd's, up to the watch's delay */
    moat_dircache_sync sync;
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

/* A put (version > 0) or a delete of kv, unless the set holds that change already. false when
 * out of memory (the copy is then dropped and loaded again). */
static bool set_apply(dc_set *s, const moat_etcd_kv *kv)
{
    bool found;
    size_t at = set_find(s, kv->key, kv->key_len, &found);
    if (kv->mod_revision <= s->floor || (found && kv->mod_revision <= s->items[at]->mod_revision))
        return true;
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
        s->items[at]->lease = kv->lease;
        s->items[at]->mod_revision = kv->mod_revision;
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
    it->lease = kv->lease;
    it->mod_revision = kv->mod_revision;
    memmove(&s->items[at + 1], &s->items[at], (s->count - at) * sizeof(*s->items));
    s->items[at] = it;
    s->count++;
    return true;
}

static const moat_slice sessions_prefix = {(const uint8_t *)MOAT_SESSIONS_PREFIX,
                                           sizeof(MOAT_SESSIONS_PREFIX) - 1};
static const moat_slice nodes_prefix = {(const uint8_t *)MOAT_NODES_PREFIX,
                                        sizeof(MOAT_NODES_PREFIX) - 1};

static bool has_prefix(const moat_etcd_kv *kv, moat_slice p)
{
    return kv->key_len >= p.len && memcmp(kv->key, p.data, p.len) == 0;
}

static bool load_kv(void *ud, const moat_etcd_kv *kv, moat_status *st)
{
    if (set_apply(ud, kv))
        return true;
    moat_status_set(st, MOAT_CODE_RESOURCE_EXHAUSTED, "out_of_memory", "out of memory");
    return false;
}

/* The member list, in one range (a node's key is about 200 bytes: 100 of them fit easily). */
static moat_code load_nodes(moat_etcd *etcd, dc_set *nodes, moat_status *st)
{
    moat_etcd_result r;
    moat_code code = moat_etcd_range(etcd, nodes_prefix, true, 0, &r, st);
    for (size_t i = 0; code == MOAT_CODE_OK && i < r.kv_count; i++)
        if (!load_kv(nodes, &r.kvs[i], st))
            code = st->code;
    nodes->floor = r.revision;
    moat_etcd_result_free(&r);
    return code;
}

static bool on_message(void *ud, const moat_etcd_watch_msg *m)
{
    moat_dircache *d = ud;
    if (m->canceled)
        return false; /* compacted past, or ended by etcd: load again */
    bool ok = true;
    /* A message's changes go in together, so a reader sees both prefixes at one revision. */
    pthread_rwlock_wrlock(&d->mu);
    for (size_t i = 0; ok && i < m->event_count; i++) {
        const moat_etcd_kv *kv = &m->events[i];
        /* The watched range, nodes/ to the end of sessions/, holds only these two today; a key
         * of another prefix put between them later is not the copy's. */
        if (has_prefix(kv, sessions_prefix))
            ok = set_apply(&d->sessions, kv);
        else if (has_prefix(kv, nodes_prefix))
            ok = set_apply(&d->nodes, kv);
    }
    moat_dircache_sync_message(&d->sync, m->created, m->revision);
    if (!ok)
        d->sync.synced = false;
    pthread_rwlock_unlock(&d->mu);
    return ok;
}

static void *run(void *arg)
{
    moat_dircache *d = arg;
    uint8_t end[sizeof(MOAT_SESSIONS_PREFIX)];
    moat_slice end_s = {end, moat_etcd_prefix_end(sessions_prefix, end)};
    do {
        dc_set sessions = {0}, nodes = {0};
        int64_t revision;
        moat_status st;
        moat_status_clear(&st);
        /* Records first, members after (the header's consistency argument). The record ranges
         * may see changes after the first one's revision: the watch from it replays them, and
         * one a key holds already is skipped by its mod revision. */
        if (moat_directory_scan(d->etcd, load_kv, &sessions, &revision, &st) != MOAT_CODE_OK ||
            load_nodes(d->etcd, &nodes, &st) != MOAT_CODE_OK) {
            set_free(&sessions);
            set_free(&nodes);
            continue;
        }
        sessions.floor = revision;
        /* Swapped under the lock, the old sets freed after it: moatd's loop reads the copy. */
        pthread_rwlock_wrlock(&d->mu);
        dc_set old_sessions = d->sessions, old_nodes = d->nodes;
        d->sessions = sessions;
        d->nodes = nodes;
        moat_dircache_sync_loaded(&d->sync, revision);
        pthread_rwlock_unlock(&d->mu);
        set_free(&old_sessions);
        set_free(&old_nodes);
        moat_etcd_watch(d->etcd, nodes_prefix, end_s, revision + 1, on_message, d, &d->stopper.stop,
                        &st);
        pthread_rwlock_wrlock(&d->mu);
        d->sync.synced = false;
        pthread_rwlock_unlock(&d->mu);
        if (!atomic_load(&d->stopper.stop))
            moat_log(MOAT_LOG_INFO, "directory_watch_ended", "code=%s reason=%s msg=\"%s\"",
                     moat_code_name(st.code), st.reason, st.message);
    } while (moat__stopper_wait_ms(&d->stopper, 500));
    return NULL;
}

void moat_dircache_sync_loaded(moat_dircache_sync *s, int64_t loaded)
{
    *s = (moat_dircache_sync){.loaded = loaded};
}

bool moat_dircache_sync_message(moat_dircache_sync *s, bool created, int64_t revision)
{
    if (created) {
        s->target = revision;
        s->synced = revision <= s->loaded;
    } else if (s->target != 0 && revision >= s->target) {
        s->synced = true; /* the changes since the load have all arrived */
    }
    return s->synced;
}

moat_dircache *moat_dircache_start(moat_etcd *etcd)
{
    moat_dircache *d = calloc(1, sizeof(*d));
    if (d == NULL)
        return NULL;
    d->etcd = etcd;
    moat__stopper_init(&d->stopper);
    pthread_rwlock_init(&d->mu, NULL);
    if (pthread_create(&d->thread, NULL, run, d) != 0) {
        moat__stopper_destroy(&d->stopper);
        pthread_rwlock_destroy(&d->mu);
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
    set_free(&d->sessions);
    set_free(&d->nodes);
    moat__stopper_destroy(&d->stopper);
    pthread_rwlock_destroy(&d->mu);
    free(d);
}

/* Whether the copy could answer (in step, holding the record): then *found and *out. Called with
 * d->mu held (to read), so the record and its owner's key are read at one revision. */
static bool copy_get(moat_dircache *d, const char *key, size_t key_len, moat_dir_found *found,
                     moat_dir_entry *out)
{
    bool present;
    size_t at = set_find(&d->sessions, (const uint8_t *)key, key_len, &present);
    if (!d->sync.synced || !present)
        return false;
    const dc_item *it = d->sessions.items[at];
    if (moat_session_record_decode(it->key, it->key_len, it->value, it->value_len, &out->rec) !=
        MOAT_OK) {
        *found = MOAT_DIR_INVALID;
        return true;
    }
    *found = MOAT_DIR_FOUND;
    char nkey[sizeof(MOAT_NODES_PREFIX) + MOAT_NODE_ID_MAX];
    size_t n = moat_node_key(out->rec.node_id, nkey, sizeof(nkey));
    at = set_find(&d->nodes, (const uint8_t *)nkey, n, &present);
    out->owner_live = n != 0 && present && d->nodes.items[at]->lease == out->rec.node_lease;
    return true;
}

bool moat_dircache_peek(moat_dircache *d, const char *session_id, moat_dir_found *found,
                        moat_dir_entry *out)
{
    char key[MOAT_RECORD_KEY_MAX];
    size_t n = moat_session_record_key(session_id, key, sizeof(key));
    if (n == 0)
        return false;
    memset(out, 0, sizeof(*out));
    pthread_rwlock_rdlock(&d->mu);
    bool copied = copy_get(d, key, n, found, out);
    pthread_rwlock_unlock(&d->mu);
    return copied;
}

moat_code moat_dircache_get(moat_dircache *d, moat_etcd *etcd, const char *session_id,
                            moat_dir_found *found, moat_dir_entry *out, bool *from_copy,
                            moat_status *st)
{
    bool copied = moat_dircache_peek(d, session_id, found, out);
    if (from_copy != NULL)
        *from_copy = copied;
    /* Not a canonical id: moat_directory_get says so. */
    return copied ? MOAT_CODE_OK : moat_directory_get(etcd, session_id, found, out, st);
}

/* The copied members as moat_cluster_nodes lists them (undecodable ones left out), with d->mu
 * held; the caller frees them. NULL when there are none, or out of memory. */
static moat_node *copy_nodes(const moat_dircache *d, size_t *count)
{
    *count = 0;
    moat_node *nodes = d->nodes.count > 0 ? calloc(d->nodes.count, sizeof(*nodes)) : NULL;
    for (size_t i = 0; nodes != NULL && i < d->nodes.count; i++) {
        const dc_item *it = d->nodes.items[i];
        if (moat_node_decode(it->key, it->key_len, it->value, it->value_len, it->lease,
                             &nodes[*count]) == MOAT_OK)
            (*count)++;
    }
    return nodes;
}

moat_code moat_dircache_list(moat_dircache *d, const char *chat_id, size_t max,
                             moat_dir_entry **out, size_t *count, size_t *skipped, bool *from_cache,
                             moat_status *st)
{
    if (from_cache != NULL)
        *from_cache = false;
    moat_code code = MOAT_CODE_OK;
    moat_dir_acc a = {chat_id, NULL, 0, max, NULL, 0, 0, 0};
    pthread_rwlock_rdlock(&d->mu);
    bool synced = d->sync.synced;
    moat_node *nodes = synced ? copy_nodes(d, &a.nnodes) : NULL;
    if (synced && nodes == NULL && d->nodes.count > 0) {
        moat_status_set(st, MOAT_CODE_RESOURCE_EXHAUSTED, "out_of_memory", "out of memory");
        code = st->code;
    }
    a.nodes = nodes;
    for (size_t i = 0; synced && code == MOAT_CODE_OK && i < d->sessions.count; i++) {
        const dc_item *it = d->sessions.items[i];
        if (!moat__dir_take(&a, it->key, it->key_len, it->value, it->value_len, st))
            code = st->code;
    }
    pthread_rwlock_unlock(&d->mu);
    free(nodes);
    if (!synced)
        return moat_directory_list(d->etcd, chat_id, max, out, count, skipped, st);
    if (from_cache != NULL)
        *from_cache = code == MOAT_CODE_OK;
    return moat__dir_finish(&a, code, out, count, skipped);
}
