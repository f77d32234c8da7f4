/* The cluster directory's reads and writes through etcd, and the power of two choices. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster/directory.h"

/* A write compared on a record that keeps moving is tried this often before giving up; each
 * try reads it anew, so this is only reached when other writers race it without end. */
#define DIR_TRIES 5

static moat_slice key_slice(const char *key)
{
    return (moat_slice){(const uint8_t *)key, strlen(key)};
}

static moat_code invalid(moat_status *st, const char *key)
{
    moat_status_set(st, MOAT_CODE_INTERNAL, "cluster_record_invalid",
                    "the directory's key %s does not hold a valid record", key);
    moat_status_add_detail(st, "key", key);
    return MOAT_CODE_INTERNAL;
}

/* ---- placement ---------------------------------------------------------------------------- */

bool moat_place_fits(const moat_node *n, int64_t memory_bytes)
{
    return n->load.slots_used < n->load.slots_total &&
           n->load.memory_total_bytes - n->load.memory_used_bytes >= memory_bytes;
}

/* Whether a is the better of two: with warm, a ready pool sandbox (a create there starts no
 * container), then more free slots, then more free memory. */
static bool better(const moat_node *a, const moat_node *b, bool warm)
{
    if (warm && (a->load.pool_ready > 0) != (b->load.pool_ready > 0))
        return a->load.pool_ready > 0;
    int64_t sa = a->load.slots_total - a->load.slots_used;
    int64_t sb = b->load.slots_total - b->load.slots_used;
    if (sa != sb)
        return sa > sb;
    return a->load.memory_total_bytes - a->load.memory_used_bytes >
           b->load.memory_total_bytes - b->load.memory_used_bytes;
}

long moat_place_choose(const moat_node *nodes, size_t count, int64_t memory_bytes, const char *home,
                       bool warm, uint64_t (*rnd)(void *), void *rnd_ctx)
{
    size_t fit = 0;
    for (size_t i = 0; i < count; i++) {
        if (!moat_place_fits(&nodes[i], memory_bytes))
            continue;
        if (home != NULL && home[0] != '\0' && strcmp(nodes[i].id, home) == 0)
            return (long)i;
        fit++;
    }
    if (fit == 0)
        return -1;
    /* The a-th and b-th fitting nodes, a != b when there are two or more. */
    size_t a = (size_t)(rnd(rnd_ctx) % fit), b = a;
    if (fit > 1) {
        b = (size_t)(rnd(rnd_ctx) % (fit - 1));
        if (b >= a)
            b++;
    }
    long ia = -1, ib = -1;
    for (size_t i = 0, k = 0; i < count; i++) {
        if (!moat_place_fits(&nodes[i], memory_bytes))
            continue;
        if (k == a)
            ia = (long)i;
        if (k == b)
            ib = (long)i;
        k++;
    }
    return better(&nodes[ib], &nodes[ia], warm) ? ib : ia;
}

/* ---- reads -------------------------------------------------------------------------------- */

/* One key: *found, and its kv copied into *out (the caller frees res). */
static moat_code get_one(moat_etcd *etcd, const char *key, moat_etcd_result *res, bool *found,
                         moat_status *st)
{
    moat_code code = moat_etcd_range(etcd, key_slice(key), false, 1, res, st);
    *found = code == MOAT_CODE_OK && res->kv_count > 0;
    return code;
}

moat_code moat_dir_chat(moat_etcd *etcd, const char *chat_id, bool *found, moat_chat_record *out,
                        int64_t *mod_revision, moat_status *st)
{
    char key[MOAT_RECORD_KEY_MAX];
    *found = false;
    if (moat_chat_record_key(chat_id, key, sizeof(key)) == 0)
        return invalid(st, chat_id);
    moat_etcd_result res;
    moat_code code = get_one(etcd, key, &res, found, st);
    if (code == MOAT_CODE_OK && *found) {
        const moat_etcd_kv *kv = &res.kvs[0];
        if (moat_chat_record_decode(kv->key, kv->key_len, kv->value, kv->value_len, out) != MOAT_OK)
            code = invalid(st, key);
        *mod_revision = kv->mod_revision;
    }
    moat_etcd_result_free(&res);
    return code;
}

moat_code moat_dir_record(moat_etcd *etcd, const char *session_id, bool *found,
                          moat_session_record *out, int64_t *mod_revision, moat_status *st)
{
    char key[MOAT_RECORD_KEY_MAX];
    *found = false;
    if (moat_session_record_key(session_id, key, sizeof(key)) == 0)
        return invalid(st, session_id);
    moat_etcd_result res;
    moat_code code = get_one(etcd, key, &res, found, st);
    if (code == MOAT_CODE_OK && *found) {
        const moat_etcd_kv *kv = &res.kvs[0];
        if (moat_session_record_decode(kv->key, kv->key_len, kv->value, kv->value_len, out) !=
            MOAT_OK)
            code = invalid(st, key);
        *mod_revision = kv->mod_revision;
    }
    moat_etcd_result_free(&res);
    return code;
}

void moat_dir_home(moat_etcd *etcd, const char *chat_id, char node_id[MOAT_NODE_ID_MAX])
{
    char key[MOAT_RECORD_KEY_MAX];
    node_id[0] = '\0';
    if (moat_home_record_key(chat_id, key, sizeof(key)) == 0)
        return;
    moat_etcd_result res;
    moat_status st;
    bool found;
    if (get_one(etcd, key, &res, &found, &st) == MOAT_CODE_OK && found &&
        moat_home_record_decode(res.kvs[0].value, res.kvs[0].value_len, node_id) != MOAT_OK)
        node_id[0] = '\0';
    moat_etcd_result_free(&res);
}

moat_code moat_dir_records(moat_etcd *etcd, moat_session_record **out, size_t *count,
                           size_t *skipped, moat_status *st)
{
    *out = NULL;
    *count = *skipped = 0;
    moat_etcd_result res;
    moat_code code = moat_etcd_range(etcd, key_slice(MOAT_SESSIONS_PREFIX), true, 0, &res, st);
    if (code == MOAT_CODE_OK && res.kv_count > 0) {
        *out = calloc(res.kv_count, sizeof(**out));
        if (*out == NULL) {
            moat_status_set(st, MOAT_CODE_RESOURCE_EXHAUSTED, "out_of_memory", "out of memory");
            code = MOAT_CODE_RESOURCE_EXHAUSTED;
        }
        for (size_t i = 0; *out != NULL && i < res.kv_count; i++) {
            const moat_etcd_kv *kv = &res.kvs[i];
            if (moat_session_record_decode(kv->key, kv->key_len, kv->value, kv->value_len,
                                           &(*out)[*count]) == MOAT_OK)
                (*count)++;
            else
                (*skipped)++;
        }
    }
    moat_etcd_result_free(&res);
    return code;
}

/* ---- writes ------------------------------------------------------------------------------- */

moat_code moat_dir_claim(moat_etcd *etcd, const moat_session_record *rec, int64_t lease,
                         bool take_chat, moat_dir_claim_result *out, moat_status *st)
{
    memset(out, 0, sizeof(*out));
    char rkey[MOAT_RECORD_KEY_MAX], ckey[MOAT_RECORD_KEY_MAX];
    char rval[MOAT_RECORD_VALUE_MAX], cval[MOAT_RECORD_VALUE_MAX];
    moat_chat_record chat = {{0}, {0}, {0}};
    snprintf(chat.chat_id, sizeof(chat.chat_id), "%s", rec->chat_id);
    snprintf(chat.session_id, sizeof(chat.session_id), "%s", rec->session_id);
    snprintf(chat.node_id, sizeof(chat.node_id), "%s", rec->node_id);
    size_t rlen = moat_session_record_encode(rec, rval, sizeof(rval));
    size_t clen = moat_chat_record_encode(&chat, cval, sizeof(cval));
    if (moat_session_record_key(rec->session_id, rkey, sizeof(rkey)) == 0 ||
        moat_chat_record_key(rec->chat_id, ckey, sizeof(ckey)) == 0 || rlen == 0 || clen == 0)
        return invalid(st, rec->session_id);
    moat_etcd_cmp cmp = {key_slice(take_chat ? ckey : rkey), MOAT_ETCD_CREATE_REVISION,
                         MOAT_ETCD_EQUAL, 0};
    moat_etcd_op ok[2] = {
        {MOAT_ETCD_OP_PUT, key_slice(rkey), {(const uint8_t *)rval, rlen}, 0, false},
        {MOAT_ETCD_OP_PUT, key_slice(ckey), {(const uint8_t *)cval, clen}, lease, false},
    };
    moat_etcd_op fail = {MOAT_ETCD_OP_RANGE, key_slice(ckey), {NULL, 0}, 0, false};
    moat_etcd_txn_spec txn = {&cmp, 1, ok, take_chat ? 2 : 1, &fail, take_chat ? 1 : 0};
    moat_etcd_result res;
    moat_code code = moat_etcd_txn(etcd, &txn, &res, st);
    if (code == MOAT_CODE_OK && res.succeeded) {
        out->won = true;
        out->record_mod_revision = res.revision;
        out->chat_mod_revision = take_chat ? res.revision : 0;
    } else if (code == MOAT_CODE_OK && take_chat) {
        /* The chat key went between the compare and the range only if its lease expired in
         * that instant: then it is free, and the caller's retry will take it. */
        if (res.kv_count == 0) {
            moat_status_set(st, MOAT_CODE_UNAVAILABLE, "record_changed",
                            "chat %s was taken and freed during the claim; retry", rec->chat_id);
            code = MOAT_CODE_UNAVAILABLE;
        } else if (moat_chat_record_decode(res.kvs[0].key, res.kvs[0].key_len, res.kvs[0].value,
                                           res.kvs[0].value_len, &out->holder) != MOAT_OK) {
            code = invalid(st, ckey);
        } else {
            out->holder_revision = res.kvs[0].mod_revision;
        }
    } else if (code == MOAT_CODE_OK) {
        moat_status_set(st, MOAT_CODE_ALREADY_EXISTS, "record_changed",
                        "session %s already has a record", rec->session_id);
        code = MOAT_CODE_ALREADY_EXISTS;
    }
    moat_etcd_result_free(&res);
    return code;
}

moat_code moat_dir_update(moat_etcd *etcd, const moat_session_record *rec, int64_t mod_revision,
                          int64_t *new_revision, moat_status *st)
{
    char rkey[MOAT_RECORD_KEY_MAX], rval[MOAT_RECORD_VALUE_MAX];
    size_t rlen = moat_session_record_encode(rec, rval, sizeof(rval));
    if (moat_session_record_key(rec->session_id, rkey, sizeof(rkey)) == 0 || rlen == 0)
        return invalid(st, rec->session_id);
    moat_etcd_cmp cmp = {key_slice(rkey), MOAT_ETCD_MOD_REVISION, MOAT_ETCD_EQUAL, mod_revision};
    moat_etcd_op put = {MOAT_ETCD_OP_PUT, key_slice(rkey), {(const uint8_t *)rval, rlen}, 0, false};
    moat_etcd_txn_spec txn = {&cmp, 1, &put, 1, NULL, 0};
    moat_etcd_result res;
    moat_code code = moat_etcd_txn(etcd, &txn, &res, st);
    if (code == MOAT_CODE_OK && !res.succeeded) {
        moat_status_set(st, MOAT_CODE_FAILED_PRECONDITION, "record_changed",
                        "session %s's record changed under the write", rec->session_id);
        code = MOAT_CODE_FAILED_PRECONDITION;
    }
    if (code == MOAT_CODE_OK && new_revision != NULL)
        *new_revision = res.revision;
    moat_etcd_result_free(&res);
    return code;
}

moat_code moat_dir_abort(moat_etcd *etcd, const char *session_id, const char *chat_id,
                         int64_t record_mod_revision, int64_t chat_mod_revision, moat_status *st)
{
    char rkey[MOAT_RECORD_KEY_MAX], ckey[MOAT_RECORD_KEY_MAX];
    if (moat_session_record_key(session_id, rkey, sizeof(rkey)) == 0 ||
        moat_chat_record_key(chat_id, ckey, sizeof(ckey)) == 0)
        return invalid(st, session_id);
    moat_etcd_cmp cmp[2] = {
        {key_slice(rkey), MOAT_ETCD_MOD_REVISION, MOAT_ETCD_EQUAL, record_mod_revision},
        {key_slice(ckey), MOAT_ETCD_MOD_REVISION, MOAT_ETCD_EQUAL, chat_mod_revision},
    };
    moat_etcd_op del[2] = {
        {MOAT_ETCD_OP_DELETE, key_slice(rkey), {NULL, 0}, 0, false},
        {MOAT_ETCD_OP_DELETE, key_slice(ckey), {NULL, 0}, 0, false},
    };
    size_t n = chat_mod_revision != 0 ? 2 : 1;
    moat_etcd_txn_spec txn = {cmp, n, del, n, NULL, 0};
    moat_etcd_result res;
    moat_code code = moat_etcd_txn(etcd, &txn, &res, st);
    moat_etcd_result_free(&res);
    return code;
}

moat_code moat_dir_free_chat(moat_etcd *etcd, const char *chat_id, int64_t mod_revision,
                             moat_status *st)
{
    char ckey[MOAT_RECORD_KEY_MAX];
    if (moat_chat_record_key(chat_id, ckey, sizeof(ckey)) == 0)
        return invalid(st, chat_id);
    moat_etcd_cmp cmp = {key_slice(ckey), MOAT_ETCD_MOD_REVISION, MOAT_ETCD_EQUAL, mod_revision};
    moat_etcd_op del = {MOAT_ETCD_OP_DELETE, key_slice(ckey), {NULL, 0}, 0, false};
    moat_etcd_txn_spec txn = {&cmp, 1, &del, 1, NULL, 0};
    moat_etcd_result res;
    moat_code code = moat_etcd_txn(etcd, &txn, &res, st);
    moat_etcd_result_free(&res);
    return code;
}

moat_code moat_dir_renew(moat_etcd *etcd, const char *session_id, const char *node_id,
                         int64_t expires_at_ms, bool *owned, moat_status *st)
{
    *owned = false;
    moat_code code = MOAT_CODE_OK;
    for (int i = 0; i < DIR_TRIES; i++) {
        moat_session_record rec;
        int64_t rev = 0;
        bool found;
        code = moat_dir_record(etcd, session_id, &found, &rec, &rev, st);
        if (code != MOAT_CODE_OK || !found || rec.state == MOAT_RECORD_ENDED ||
            strcmp(rec.node_id, node_id) != 0)
            return code;
        *owned = true;
        rec.expires_at_ms = expires_at_ms;
        code = moat_dir_update(etcd, &rec, rev, NULL, st);
        if (code != MOAT_CODE_FAILED_PRECONDITION)
            return code;
    }
    return code;
}

moat_code moat_dir_end(moat_etcd *etcd, const char *session_id, const char *node_id,
                       int64_t ended_at_ms, const char *reason, bool *ended, moat_status *st)
{
    *ended = false;
    moat_code code = MOAT_CODE_OK;
    for (int i = 0; i < DIR_TRIES; i++) {
        moat_session_record rec;
        moat_chat_record chat;
        int64_t rrev = 0, crev = 0;
        bool found, chat_found;
        code = moat_dir_record(etcd, session_id, &found, &rec, &rrev, st);
        if (code != MOAT_CODE_OK || !found || rec.state == MOAT_RECORD_ENDED ||
            strcmp(rec.node_id, node_id) != 0)
            return code;
        code = moat_dir_chat(etcd, rec.chat_id, &chat_found, &chat, &crev, st);
        /* Garbage in the chat key is not this session's: the end goes on without it. */
        if (code == MOAT_CODE_INTERNAL)
            chat_found = false;
        else if (code != MOAT_CODE_OK)
            return code;
        bool ours = chat_found && strcmp(chat.session_id, session_id) == 0;
        rec.state = MOAT_RECORD_ENDED;
        rec.ended_at_ms = ended_at_ms;
        snprintf(rec.end_reason, sizeof(rec.end_reason), "%s", reason);
        char rkey[MOAT_RECORD_KEY_MAX], ckey[MOAT_RECORD_KEY_MAX], hkey[MOAT_RECORD_KEY_MAX];
        char rval[MOAT_RECORD_VALUE_MAX], hval[MOAT_RECORD_VALUE_MAX];
        size_t rlen = moat_session_record_encode(&rec, rval, sizeof(rval));
        size_t hlen = moat_home_record_encode(node_id, hval, sizeof(hval));
        if (rlen == 0 || hlen == 0 ||
            moat_session_record_key(session_id, rkey, sizeof(rkey)) == 0 ||
            moat_chat_record_key(rec.chat_id, ckey, sizeof(ckey)) == 0 ||
            moat_home_record_key(rec.chat_id, hkey, sizeof(hkey)) == 0)
            return invalid(st, session_id);
        moat_etcd_cmp cmp[2] = {
            {key_slice(rkey), MOAT_ETCD_MOD_REVISION, MOAT_ETCD_EQUAL, rrev},
            {key_slice(ckey), MOAT_ETCD_MOD_REVISION, MOAT_ETCD_EQUAL, crev},
        };
        moat_etcd_op ops[3] = {
            {MOAT_ETCD_OP_PUT, key_slice(rkey), {(const uint8_t *)rval, rlen}, 0, false},
            {MOAT_ETCD_OP_PUT, key_slice(hkey), {(const uint8_t *)hval, hlen}, 0, false},
            {MOAT_ETCD_OP_DELETE, key_slice(ckey), {NULL, 0}, 0, false},
        };
        moat_etcd_txn_spec txn = {cmp, ours ? 2 : 1, ops, ours ? 3 : 2, NULL, 0};
        moat_etcd_result res;
        code = moat_etcd_txn(etcd, &txn, &res, st);
        bool done = code == MOAT_CODE_OK && res.succeeded;
        moat_etcd_result_free(&res);
        if (code != MOAT_CODE_OK)
            return code;
        if (done) {
            *ended = true;
            return MOAT_CODE_OK;
        }
    }
    moat_status_set(st, MOAT_CODE_FAILED_PRECONDITION, "record_changed",
                    "session %s's record kept changing under its end", session_id);
    return MOAT_CODE_FAILED_PRECONDITION;
}
