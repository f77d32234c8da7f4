/* The cluster directory's reads: one record and its owner's standing, and pages of records. */
#include <stdlib.h>
#include <string.h>

#include "cluster/dir_read.h"

/* Whether node_id is a member under lease now: its key's lease is the record's. */
static moat_code node_holds(moat_etcd *etcd, const char *node_id, int64_t lease, bool *live,
                            moat_status *st)
{
    char key[sizeof(MOAT_NODES_PREFIX) + MOAT_NODE_ID_MAX];
    *live = false;
    size_t n = moat_node_key(node_id, key, sizeof(key));
    if (n == 0)
        return MOAT_CODE_OK; /* the record decoded, so this cannot be; a lost owner if it were */
    moat_etcd_result r;
    moat_code code = moat_etcd_range(etcd, (moat_slice){(const uint8_t *)key, n}, false, 1, &r, st);
    *live = code == MOAT_CODE_OK && r.kv_count == 1 && r.kvs[0].lease == lease;
    moat_etcd_result_free(&r);
    return code;
}

moat_code moat_directory_get(moat_etcd *etcd, const char *session_id, moat_dir_found *found,
                             moat_dir_entry *out, moat_status *st)
{
    char key[MOAT_RECORD_KEY_MAX];
    *found = MOAT_DIR_ABSENT;
    memset(out, 0, sizeof(*out));
    size_t n = moat_session_record_key(session_id, key, sizeof(key));
    if (n == 0) {
        moat_status_set(st, MOAT_CODE_INVALID_ARGUMENT, "invalid_session_id",
                        "session_id is not a canonical UUID");
        return st->code;
    }
    moat_etcd_result r;
    moat_code code = moat_etcd_range(etcd, (moat_slice){(const uint8_t *)key, n}, false, 1, &r, st);
    if (code == MOAT_CODE_OK && r.kv_count == 1) {
        const moat_etcd_kv *kv = &r.kvs[0];
        *found = moat_session_record_decode(kv->key, kv->key_len, kv->value, kv->value_len,
                                            &out->rec) == MOAT_OK
                     ? MOAT_DIR_FOUND
                     : MOAT_DIR_INVALID;
    }
    moat_etcd_result_free(&r);
    if (code == MOAT_CODE_OK && *found == MOAT_DIR_FOUND)
        code = node_holds(etcd, out->rec.node_id, out->rec.node_lease, &out->owner_live, st);
    return code;
}

bool moat__dir_take(moat_dir_acc *a, const uint8_t *key, size_t key_len, const uint8_t *value,
                    size_t value_len, moat_status *st)
{
    moat_session_record rec;
    if (moat_session_record_decode(key, key_len, value, value_len, &rec) != MOAT_OK) {
        a->skipped++;
        return true;
    }
    if (rec.state == MOAT_RECORD_ENDED ||
        (a->chat_id[0] != '\0' && strcmp(rec.chat_id, a->chat_id)))
        return true;
    if (a->count == a->max) {
        moat_status_set(st, MOAT_CODE_RESOURCE_EXHAUSTED, "listing_too_large",
                        "more than %zu sessions match; list one chat's", a->max);
        return false;
    }
    if (a->count == a->cap) {
        size_t ncap = a->cap != 0 ? a->cap * 2 : 64;
        moat_dir_entry *grown = realloc(a->out, ncap * sizeof(*a->out));
        if (grown == NULL) {
            moat_status_set(st, MOAT_CODE_RESOURCE_EXHAUSTED, "out_of_memory", "out of memory");
            return false;
        }
        a->out = grown;
        a->cap = ncap;
    }
    a->out[a->count].rec = rec;
    a->out[a->count].owner_live = moat_session_record_owner(&rec, a->nodes, a->nnodes) != NULL;
    a->count++;
    return true;
}

moat_code moat_directory_scan(moat_etcd *etcd, moat_directory_fn fn, void *ud, int64_t *revision,
                              moat_status *st)
{
    const moat_slice prefix = moat_slice_str(MOAT_SESSIONS_PREFIX);
    uint8_t end[sizeof(MOAT_SESSIONS_PREFIX)];
    moat_slice end_s = {end, moat_etcd_prefix_end(prefix, end)};
    /* The next page starts just past the last key seen: that key with a 0 byte appended. */
    uint8_t from[MOAT_ETCD_KEY_MAX + 1];
    memcpy(from, prefix.data, prefix.len);
    moat_slice from_s = {from, prefix.len};
    if (revision != NULL)
        *revision = 0;
    moat_code code = MOAT_CODE_OK;
    bool more = true;
    while (code == MOAT_CODE_OK && more) {
        moat_etcd_result r;
        code = moat_etcd_range_to(etcd, from_s, end_s, MOAT_DIRECTORY_PAGE, &r, st);
        if (code == MOAT_CODE_OK && revision != NULL && *revision == 0)
            *revision = r.revision;
        for (size_t i = 0; code == MOAT_CODE_OK && i < r.kv_count; i++) {
            if (!fn(ud, &r.kvs[i], st))
                code = st->code;
        }
        more = code == MOAT_CODE_OK && r.more && r.kv_count > 0;
        if (more) {
            const moat_etcd_kv *last = &r.kvs[r.kv_count - 1];
            /* The codec bounds a key by MOAT_ETCD_KEY_MAX; one of that length cannot be
             * followed here, and the next range refuses it (etcd_bad_request). */
            memcpy(from, last->key, last->key_len);
            from[last->key_len] = 0;
            from_s.len = last->key_len + 1;
        }
        moat_etcd_result_free(&r);
    }
    return code;
}

static bool take_kv(void *ud, const moat_etcd_kv *kv, moat_status *st)
{
    return moat__dir_take(ud, kv->key, kv->key_len, kv->value, kv->value_len, st);
}

moat_code moat_directory_list(moat_etcd *etcd, const char *chat_id, size_t max,
                              moat_dir_entry **out, size_t *count, size_t *skipped, moat_status *st)
{
    moat_node *nodes = NULL;
    size_t nnodes = 0;
    moat_code code = moat_cluster_nodes(etcd, &nodes, &nnodes, NULL, st);
    moat_dir_acc a = {chat_id, nodes, nnodes, max, NULL, 0, 0, 0};
    if (code == MOAT_CODE_OK)
        code = moat_directory_scan(etcd, take_kv, &a, NULL, st);
    free(nodes);
    return moat__dir_finish(&a, code, out, count, skipped);
}

moat_code moat__dir_finish(moat_dir_acc *a, moat_code code, moat_dir_entry **out, size_t *count,
                           size_t *skipped)
{
    if (code != MOAT_CODE_OK) {
        free(a->out);
        a->out = NULL;
        a->count = 0;
    }
    *out = a->out;
    *count = a->count;
    *skipped = a->skipped;
    return code;
}
