/* The cluster directory's reads and writes through etcd, and the power of two choices. */
#include <stddef.h>
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

static const moat_etcd_kv *kv_of(const moat_etcd_result *res, const char *key);

/* moat_dir_renew, *ended set when the record is node_id's and ended. */
static moat_code renew_one(moat_etcd *etcd, const char *session_id, const char *node_id,
                           int64_t expires_at_ms, bool *owned, bool *ended, size_t *calls,
                           moat_status *st)
{
    *owned = *ended = false;
    moat_code code = MOAT_CODE_OK;
    for (int i = 0; i < DIR_TRIES; i++) {
        moat_session_record rec;
        int64_t rev = 0;
        bool found;
        code = moat_dir_record(etcd, session_id, &found, &rec, &rev, st);
        (*calls)++;
        if (code != MOAT_CODE_OK || !found || strcmp(rec.node_id, node_id) != 0)
            return code;
        if (rec.state == MOAT_RECORD_ENDED) {
            *ended = true;
            return code;
        }
        *owned = true;
        rec.expires_at_ms = expires_at_ms;
        code = moat_dir_update(etcd, &rec, rev, NULL, st);
        (*calls)++;
        if (code != MOAT_CODE_FAILED_PRECONDITION)
            return code;
    }
    return code;
}

moat_code moat_dir_renew(moat_etcd *etcd, const char *session_id, const char *node_id,
                         int64_t expires_at_ms, bool *owned, moat_status *st)
{
    bool ended;
    size_t calls = 0;
    return renew_one(etcd, session_id, node_id, expires_at_ms, owned, &ended, &calls, st);
}

static void renewal_answer(moat_dir_renewal *r, moat_code code, const moat_status *st)
{
    r->code = code;
    if (code != MOAT_CODE_OK)
        r->status = *st;
    else
        moat_status_clear(&r->status);
    r->done = true;
}

size_t moat_dir_renew_read(moat_etcd *etcd, const char *node_id, moat_dir_renewal *r, size_t n)
{
    moat_etcd_op ops[MOAT_DIR_RENEW_BATCH];
    size_t k = 0;
    if (n > MOAT_DIR_RENEW_BATCH)
        n = MOAT_DIR_RENEW_BATCH;
    for (size_t i = 0; i < n; i++) {
        r[i].done = r[i].alone = r[i].written = r[i].ended = false;
        moat_status st;
        if (moat_session_record_key(r[i].session_id, r[i].rkey, sizeof(r[i].rkey)) == 0) {
            renewal_answer(&r[i], invalid(&st, r[i].session_id), &st);
            continue;
        }
        /* A transaction may write a key once. */
        for (size_t j = 0; j < i && !r[i].alone; j++)
            r[i].alone = !r[j].done && strcmp(r[j].session_id, r[i].session_id) == 0;
        if (!r[i].alone)
            ops[k++] =
                (moat_etcd_op){MOAT_ETCD_OP_RANGE, key_slice(r[i].rkey), {NULL, 0}, 0, false};
    }
    if (k == 0)
        return 0;
    moat_etcd_txn_spec txn = {NULL, 0, ops, k, NULL, 0};
    moat_etcd_result res;
    moat_status st;
    moat_code code = moat_etcd_txn(etcd, &txn, &res, &st);
    for (size_t i = 0; i < n; i++) {
        if (r[i].done || r[i].alone)
            continue;
        if (code != MOAT_CODE_OK) {
            renewal_answer(&r[i], code, &st);
            continue;
        }
        const moat_etcd_kv *kv = kv_of(&res, r[i].rkey);
        moat_session_record rec;
        if (kv == NULL) {
            renewal_answer(&r[i], MOAT_CODE_OK, &st);
        } else if (moat_session_record_decode(kv->key, kv->key_len, kv->value, kv->value_len,
                                              &rec) != MOAT_OK) {
            renewal_answer(&r[i], invalid(&st, r[i].rkey), &st);
        } else if (strcmp(rec.node_id, node_id) != 0 || rec.state == MOAT_RECORD_ENDED) {
            r[i].ended = strcmp(rec.node_id, node_id) == 0;
            renewal_answer(&r[i], MOAT_CODE_OK, &st);
        } else {
            rec.expires_at_ms = r[i].expires_at_ms;
            r[i].mod_revision = kv->mod_revision;
            r[i].rlen = moat_session_record_encode(&rec, r[i].rval, sizeof(r[i].rval));
            if (r[i].rlen == 0)
                renewal_answer(&r[i], invalid(&st, r[i].rkey), &st);
        }
    }
    moat_etcd_result_free(&res);
    return 1;
}

/* One write of the items read and not answered: *moved whether a compare failed (those whose
 * record moved are marked alone). Returns the etcd calls made (0 with nothing to write). */
static size_t renew_round(moat_etcd *etcd, moat_dir_renewal *r, size_t n, bool *moved)
{
    moat_etcd_cmp cmp[MOAT_DIR_RENEW_BATCH];
    moat_etcd_op put[MOAT_DIR_RENEW_BATCH], get[MOAT_DIR_RENEW_BATCH];
    size_t k = 0;
    *moved = false;
    for (size_t i = 0; i < n; i++) {
        if (r[i].done || r[i].alone)
            continue;
        cmp[k] = (moat_etcd_cmp){key_slice(r[i].rkey), MOAT_ETCD_MOD_REVISION, MOAT_ETCD_EQUAL,
                                 r[i].mod_revision};
        put[k] = (moat_etcd_op){MOAT_ETCD_OP_PUT,
                                key_slice(r[i].rkey),
                                {(const uint8_t *)r[i].rval, r[i].rlen},
                                0,
                                false};
        get[k++] = (moat_etcd_op){MOAT_ETCD_OP_RANGE, key_slice(r[i].rkey), {NULL, 0}, 0, false};
    }
    if (k == 0)
        return 0;
    moat_etcd_txn_spec txn = {cmp, k, put, k, get, k};
    moat_etcd_result res;
    moat_status st;
    moat_code code = moat_etcd_txn(etcd, &txn, &res, &st);
    *moved = code == MOAT_CODE_OK && !res.succeeded;
    bool any_moved = false;
    for (size_t i = 0; i < n; i++) {
        if (r[i].done || r[i].alone)
            continue;
        if (!*moved) {
            r[i].written = code == MOAT_CODE_OK;
            renewal_answer(&r[i], code, &st);
            continue;
        }
        const moat_etcd_kv *kv = kv_of(&res, r[i].rkey);
        r[i].alone = kv == NULL || kv->mod_revision != r[i].mod_revision;
        any_moved = any_moved || r[i].alone;
    }
    /* A failed compare whose record did not move (etcd's answer and its reads disagree): none
     * is trusted to go together again. */
    for (size_t i = 0; *moved && !any_moved && i < n; i++)
        r[i].alone = !r[i].done;
    moat_etcd_result_free(&res);
    return 1;
}

size_t moat_dir_renew_write(moat_etcd *etcd, const char *node_id, moat_dir_renewal *r, size_t n)
{
    size_t calls = 0;
    if (n > MOAT_DIR_RENEW_BATCH)
        n = MOAT_DIR_RENEW_BATCH;
    /* Each failed round sends at least one item alone, so the rest end within n rounds; the
     * bound sends them all alone if records keep moving. */
    bool moved = true;
    for (int t = 0; t < DIR_TRIES && moved; t++) {
        calls += renew_round(etcd, r, n, &moved);
        for (size_t i = 0; moved && t == DIR_TRIES - 1 && i < n; i++)
            r[i].alone = !r[i].done;
    }
    for (size_t i = 0; i < n; i++) {
        if (r[i].done)
            continue;
        moat_status st;
        bool owned;
        moat_code code = renew_one(etcd, r[i].session_id, node_id, r[i].expires_at_ms, &owned,
                                   &r[i].ended, &calls, &st);
        r[i].written = code == MOAT_CODE_OK && owned;
        renewal_answer(&r[i], code, &st);
    }
    return calls;
}

size_t moat_dir_renew_batch(moat_etcd *etcd, const char *node_id, moat_dir_renewal *r, size_t n)
{
    size_t calls = moat_dir_renew_read(etcd, node_id, r, n);
    return calls + moat_dir_renew_write(etcd, node_id, r, n);
}

/* What one end writes: the keys and values its transaction points into, so they outlive it. */
typedef struct end_write {
    char rkey[MOAT_RECORD_KEY_MAX], ckey[MOAT_RECORD_KEY_MAX], hkey[MOAT_RECORD_KEY_MAX];
    char rval[MOAT_RECORD_VALUE_MAX], hval[MOAT_RECORD_VALUE_MAX];
    size_t rlen, hlen;
} end_write;

/* The keys of rec's session: false when they cannot be made. */
static bool end_keys(end_write *w, const char *session_id, const char *chat_id)
{
    return moat_session_record_key(session_id, w->rkey, sizeof(w->rkey)) != 0 &&
           moat_chat_record_key(chat_id, w->ckey, sizeof(w->ckey)) != 0 &&
           moat_home_record_key(chat_id, w->hkey, sizeof(w->hkey)) != 0;
}

/* rec (node_id's, read at rrev) written ended at ended_at_ms with reason, and the chat's home:
 * w's keys (end_keys) and values, and the compares and operations appended to cmp and ops; the
 * chat key (at crev) compared and deleted only when ours (it names this session). false when a
 * value cannot be made. */
static bool end_prepare(end_write *w, moat_session_record *rec, const char *node_id,
                        int64_t ended_at_ms, const char *reason, int64_t rrev, bool ours,
                        int64_t crev, moat_etcd_cmp *cmp, size_t *ncmp, moat_etcd_op *ops,
                        size_t *nops)
{
    rec->state = MOAT_RECORD_ENDED;
    rec->ended_at_ms = ended_at_ms;
    snprintf(rec->end_reason, sizeof(rec->end_reason), "%s", reason);
    w->rlen = moat_session_record_encode(rec, w->rval, sizeof(w->rval));
    w->hlen = moat_home_record_encode(node_id, w->hval, sizeof(w->hval));
    if (w->rlen == 0 || w->hlen == 0)
        return false;
    cmp[(*ncmp)++] =
        (moat_etcd_cmp){key_slice(w->rkey), MOAT_ETCD_MOD_REVISION, MOAT_ETCD_EQUAL, rrev};
    ops[(*nops)++] = (moat_etcd_op){
        MOAT_ETCD_OP_PUT, key_slice(w->rkey), {(const uint8_t *)w->rval, w->rlen}, 0, false};
    ops[(*nops)++] = (moat_etcd_op){
        MOAT_ETCD_OP_PUT, key_slice(w->hkey), {(const uint8_t *)w->hval, w->hlen}, 0, false};
    if (ours) {
        cmp[(*ncmp)++] =
            (moat_etcd_cmp){key_slice(w->ckey), MOAT_ETCD_MOD_REVISION, MOAT_ETCD_EQUAL, crev};
        ops[(*nops)++] =
            (moat_etcd_op){MOAT_ETCD_OP_DELETE, key_slice(w->ckey), {NULL, 0}, 0, false};
    }
    return true;
}

static moat_code record_changed(moat_status *st, const char *what)
{
    moat_status_set(st, MOAT_CODE_FAILED_PRECONDITION, "record_changed",
                    "%s's record kept changing under its end", what);
    return MOAT_CODE_FAILED_PRECONDITION;
}

moat_code moat_dir_end(moat_etcd *etcd, const char *session_id, const char *node_id,
                       int64_t ended_at_ms, const char *reason, bool *ended, moat_status *st)
{
    *ended = false;
    for (int i = 0; i < DIR_TRIES; i++) {
        moat_session_record rec;
        moat_chat_record chat;
        int64_t rrev = 0, crev = 0;
        bool found, chat_found;
        moat_code code = moat_dir_record(etcd, session_id, &found, &rec, &rrev, st);
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
        end_write w;
        moat_etcd_cmp cmp[2];
        moat_etcd_op ops[3];
        size_t ncmp = 0, nops = 0;
        if (!end_keys(&w, session_id, rec.chat_id) ||
            !end_prepare(&w, &rec, node_id, ended_at_ms, reason, rrev, ours, crev, cmp, &ncmp, ops,
                         &nops))
            return invalid(st, session_id);
        moat_etcd_txn_spec txn = {cmp, ncmp, ops, nops, NULL, 0};
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
    return record_changed(st, session_id);
}

/* The kv of res whose key is key, or NULL. */
static const moat_etcd_kv *kv_of(const moat_etcd_result *res, const char *key)
{
    size_t len = strlen(key);
    for (size_t i = 0; i < res->kv_count; i++) {
        if (res->kvs[i].key_len == len && memcmp(res->kvs[i].key, key, len) == 0)
            return &res->kvs[i];
    }
    return NULL;
}

/* One transaction of ranges, one key each: the keys of the items want[i] selects, at offset
 * off (rkey or ckey) in w. */
static moat_code read_keys(moat_etcd *etcd, const end_write *w, size_t off, const bool *want,
                           size_t n, moat_etcd_result *res, moat_status *st)
{
    moat_etcd_op ops[MOAT_DIR_END_BATCH];
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (want[i])
            ops[k++] = (moat_etcd_op){
                MOAT_ETCD_OP_RANGE, key_slice((const char *)&w[i] + off), {NULL, 0}, 0, false};
    }
    moat_etcd_txn_spec txn = {NULL, 0, ops, k, NULL, 0};
    return moat_etcd_txn(etcd, &txn, res, st);
}

static bool any(const bool *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (b[i])
            return true;
    }
    return false;
}

/* One round of a batch: reads, then the ends of the live records in one transaction. *again:
 * it did not hold (something moved between the reads and the write). */
static moat_code end_round(moat_etcd *etcd, const char *node_id, const moat_dir_end_item *items,
                           size_t n, bool *done, end_write *w, bool *again, moat_status *st)
{
    moat_session_record recs[MOAT_DIR_END_BATCH];
    int64_t rrev[MOAT_DIR_END_BATCH];
    bool live[MOAT_DIR_END_BATCH];
    *again = false;
    for (size_t i = 0; i < n; i++) {
        /* A session id that makes no key has no record to end. */
        if (!done[i] &&
            moat_session_record_key(items[i].session_id, w[i].rkey, sizeof(w[i].rkey)) == 0)
            done[i] = true;
        live[i] = !done[i];
    }
    if (!any(live, n))
        return MOAT_CODE_OK;
    moat_etcd_result res;
    moat_code code = read_keys(etcd, w, offsetof(end_write, rkey), live, n, &res, st);
    for (size_t i = 0; code == MOAT_CODE_OK && i < n; i++) {
        if (!live[i])
            continue;
        const moat_etcd_kv *kv = kv_of(&res, w[i].rkey);
        bool mine = kv != NULL &&
                    moat_session_record_decode(kv->key, kv->key_len, kv->value, kv->value_len,
                                               &recs[i]) == MOAT_OK &&
                    recs[i].state != MOAT_RECORD_ENDED && strcmp(recs[i].node_id, node_id) == 0 &&
                    end_keys(&w[i], items[i].session_id, recs[i].chat_id);
        /* Absent, ended, another node's or garbage: nothing for an end to repair. */
        if (!mine) {
            live[i] = false;
            done[i] = true;
            continue;
        }
        rrev[i] = kv->mod_revision;
        /* A transaction may write a key once: a second end of one chat waits a round. */
        for (size_t j = 0; j < i && live[i]; j++)
            live[i] = !(live[j] && strcmp(recs[j].chat_id, recs[i].chat_id) == 0);
    }
    moat_etcd_result_free(&res);
    if (code != MOAT_CODE_OK || !any(live, n))
        return code;
    code = read_keys(etcd, w, offsetof(end_write, ckey), live, n, &res, st);
    moat_etcd_cmp cmp[2 * MOAT_DIR_END_BATCH];
    moat_etcd_op ops[3 * MOAT_DIR_END_BATCH];
    size_t ncmp = 0, nops = 0;
    for (size_t i = 0; code == MOAT_CODE_OK && i < n; i++) {
        if (!live[i])
            continue;
        const moat_etcd_kv *kv = kv_of(&res, w[i].ckey);
        moat_chat_record chat;
        /* Garbage in the chat key is not this session's, as in moat_dir_end. */
        bool ours = kv != NULL &&
                    moat_chat_record_decode(kv->key, kv->key_len, kv->value, kv->value_len,
                                            &chat) == MOAT_OK &&
                    strcmp(chat.session_id, items[i].session_id) == 0;
        if (!end_prepare(&w[i], &recs[i], node_id, items[i].ended_at_ms, items[i].reason, rrev[i],
                         ours, ours ? kv->mod_revision : 0, cmp, &ncmp, ops, &nops)) {
            live[i] = false;
            done[i] = true;
        }
    }
    moat_etcd_result_free(&res);
    if (code != MOAT_CODE_OK || nops == 0)
        return code;
    moat_etcd_txn_spec txn = {cmp, ncmp, ops, nops, NULL, 0};
    code = moat_etcd_txn(etcd, &txn, &res, st);
    *again = code == MOAT_CODE_OK && !res.succeeded;
    for (size_t i = 0; code == MOAT_CODE_OK && !*again && i < n; i++)
        done[i] = done[i] || live[i];
    moat_etcd_result_free(&res);
    return code;
}

moat_code moat_dir_end_batch(moat_etcd *etcd, const char *node_id, const moat_dir_end_item *items,
                             size_t n, bool *done, moat_status *st)
{
    if (n > MOAT_DIR_END_BATCH)
        n = MOAT_DIR_END_BATCH;
    for (size_t i = 0; i < n; i++)
        done[i] = false;
    end_write *w = calloc(n > 0 ? n : 1, sizeof(*w));
    if (w == NULL) {
        moat_status_set(st, MOAT_CODE_RESOURCE_EXHAUSTED, "out_of_memory", "out of memory");
        return MOAT_CODE_RESOURCE_EXHAUSTED;
    }
    moat_code code = MOAT_CODE_OK;
    bool again = true;
    for (int i = 0; i < DIR_TRIES && again && code == MOAT_CODE_OK; i++)
        code = end_round(etcd, node_id, items, n, done, w, &again, st);
    free(w);
    if (code == MOAT_CODE_OK && again)
        return record_changed(st, "a batch of sessions");
    return code;
}
