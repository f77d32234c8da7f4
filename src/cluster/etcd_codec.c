/* The etcd gateway's JSON: request bodies and answers. No I/O. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster/etcd.h"
#include "common/json.h"

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

size_t moat_etcd_b64_encode(const uint8_t *data, size_t len, char *out, size_t cap)
{
    size_t need = (len + 2) / 3 * 4;
    if (cap < need + 1)
        return 0;
    size_t o = 0;
    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)data[i] << 16;
        if (i + 1 < len)
            v |= (uint32_t)data[i + 1] << 8;
        if (i + 2 < len)
            v |= data[i + 2];
        out[o++] = b64_alphabet[(v >> 18) & 63];
        out[o++] = b64_alphabet[(v >> 12) & 63];
        out[o++] = i + 1 < len ? b64_alphabet[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < len ? b64_alphabet[v & 63] : '=';
    }
    out[o] = '\0';
    return o;
}

static int b64_value(char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

moat_err moat_etcd_b64_decode(const char *text, size_t len, uint8_t *out, size_t cap,
                              size_t *out_len)
{
    *out_len = 0;
    if (len % 4 != 0)
        return MOAT_E_INVAL;
    size_t pad = 0;
    if (len > 0 && text[len - 1] == '=')
        pad = len > 1 && text[len - 2] == '=' ? 2 : 1;
    size_t n = len / 4 * 3 - pad;
    if (n > cap)
        return MOAT_E_TOO_BIG;
    size_t o = 0;
    for (size_t i = 0; i < len; i += 4) {
        bool last = i + 4 == len;
        uint32_t v = 0;
        for (size_t j = 0; j < 4; j++) {
            int d = b64_value(text[i + j]);
            if (d < 0) {
                /* '=' only as the padding counted above. */
                if (!last || text[i + j] != '=' || j < 4 - pad)
                    return MOAT_E_INVAL;
                d = 0;
            }
            v = v << 6 | (uint32_t)d;
        }
        /* Bits the padding drops must be zero: one spelling per byte string. */
        if (last && ((pad == 1 && (v & 0xff) != 0) || (pad == 2 && (v & 0xffff) != 0)))
            return MOAT_E_INVAL;
        out[o++] = (uint8_t)(v >> 16);
        if (o < n)
            out[o++] = (uint8_t)(v >> 8);
        if (o < n)
            out[o++] = (uint8_t)v;
    }
    *out_len = n;
    return MOAT_OK;
}

size_t moat_etcd_prefix_end(moat_slice prefix, uint8_t *out)
{
    for (size_t i = prefix.len; i > 0; i--) {
        if (prefix.data[i - 1] != 0xff) {
            memcpy(out, prefix.data, i - 1);
            out[i - 1] = (uint8_t)(prefix.data[i - 1] + 1);
            return i;
        }
    }
    out[0] = 0;
    return 1;
}

/* ---- requests ----------------------------------------------------------------------------- */

static bool add_bytes(cJSON *obj, const char *name, const uint8_t *data, size_t len)
{
    char text[(MOAT_ETCD_VALUE_MAX + 2) / 3 * 4 + 1];
    if (len > MOAT_ETCD_VALUE_MAX ||
        (len > 0 && moat_etcd_b64_encode(data, len, text, sizeof(text)) == 0))
        return false;
    if (len == 0)
        text[0] = '\0';
    return cJSON_AddStringToObject(obj, name, text) != NULL;
}

/* int64 as a JSON string, as the gateway writes them (a double would lose bits past 2^53). */
static bool add_i64(cJSON *obj, const char *name, int64_t v)
{
    char text[24];
    snprintf(text, sizeof(text), "%" PRId64, v);
    return cJSON_AddStringToObject(obj, name, text) != NULL;
}

static bool key_ok(moat_slice key)
{
    return key.len > 0 && key.len <= MOAT_ETCD_KEY_MAX;
}

static bool add_key_range(cJSON *obj, moat_slice key, bool prefix)
{
    if (!add_bytes(obj, "key", key.data, key.len))
        return false;
    if (!prefix)
        return true;
    uint8_t end[MOAT_ETCD_KEY_MAX];
    size_t n = moat_etcd_prefix_end(key, end);
    return add_bytes(obj, "range_end", end, n);
}

static char *finish(cJSON *obj, bool ok, moat_err *err)
{
    char *text = ok ? cJSON_PrintUnformatted(obj) : NULL;
    cJSON_Delete(obj);
    if (text == NULL && *err == MOAT_OK)
        *err = MOAT_E_NOMEM;
    return text;
}

char *moat_etcd_req_put(moat_slice key, moat_slice value, int64_t lease, moat_err *err)
{
    *err = MOAT_OK;
    if (!key_ok(key) || value.len > MOAT_ETCD_VALUE_MAX) {
        *err = MOAT_E_INVAL;
        return NULL;
    }
    cJSON *obj = cJSON_CreateObject();
    bool ok = obj != NULL && add_bytes(obj, "key", key.data, key.len) &&
              add_bytes(obj, "value", value.data, value.len) &&
              (lease == 0 || add_i64(obj, "lease", lease));
    return finish(obj, ok, err);
}

char *moat_etcd_req_range(moat_slice key, bool prefix, int64_t limit, moat_err *err)
{
    *err = MOAT_OK;
    if (!key_ok(key) || limit < 0) {
        *err = MOAT_E_INVAL;
        return NULL;
    }
    cJSON *obj = cJSON_CreateObject();
    bool ok = obj != NULL && add_key_range(obj, key, prefix) &&
              (limit == 0 || add_i64(obj, "limit", limit));
    return finish(obj, ok, err);
}

char *moat_etcd_req_range_to(moat_slice key, moat_slice end, int64_t limit, moat_err *err)
{
    *err = MOAT_OK;
    if (!key_ok(key) || !key_ok(end) || limit < 0) {
        *err = MOAT_E_INVAL;
        return NULL;
    }
    cJSON *obj = cJSON_CreateObject();
    bool ok = obj != NULL && add_bytes(obj, "key", key.data, key.len) &&
              add_bytes(obj, "range_end", end.data, end.len) &&
              (limit == 0 || add_i64(obj, "limit", limit));
    return finish(obj, ok, err);
}

char *moat_etcd_req_watch(moat_slice key, moat_slice end, int64_t start_revision, moat_err *err)
{
    *err = MOAT_OK;
    if (!key_ok(key) || !key_ok(end) || start_revision < 0) {
        *err = MOAT_E_INVAL;
        return NULL;
    }
    cJSON *obj = cJSON_CreateObject();
    cJSON *create = cJSON_AddObjectToObject(obj, "create_request");
    bool ok = create != NULL && add_bytes(create, "key", key.data, key.len) &&
              add_bytes(create, "range_end", end.data, end.len) &&
              (start_revision == 0 || add_i64(create, "start_revision", start_revision));
    return finish(obj, ok, err);
}

char *moat_etcd_req_delete(moat_slice key, bool prefix, moat_err *err)
{
    *err = MOAT_OK;
    if (!key_ok(key)) {
        *err = MOAT_E_INVAL;
        return NULL;
    }
    cJSON *obj = cJSON_CreateObject();
    return finish(obj, obj != NULL && add_key_range(obj, key, prefix), err);
}

static const char *const target_names[] = {"CREATE", "MOD", "VERSION"};
static const char *const target_fields[] = {"create_revision", "mod_revision", "version"};
static const char *const result_names[] = {"EQUAL", "GREATER", "LESS", "NOT_EQUAL"};

static bool add_ops(cJSON *parent, const char *name, const moat_etcd_op *ops, size_t count)
{
    cJSON *arr = cJSON_AddArrayToObject(parent, name);
    if (arr == NULL)
        return false;
    for (size_t i = 0; i < count; i++) {
        const moat_etcd_op *op = &ops[i];
        cJSON *wrap = cJSON_CreateObject();
        if (wrap == NULL || !cJSON_AddItemToArray(arr, wrap))
            return false;
        static const char *const kinds[] = {"request_put", "request_range", "request_delete_range"};
        cJSON *req = cJSON_AddObjectToObject(wrap, kinds[op->kind]);
        if (req == NULL)
            return false;
        bool ok = op->kind == MOAT_ETCD_OP_PUT
                      ? add_bytes(req, "key", op->key.data, op->key.len) &&
                            add_bytes(req, "value", op->value.data, op->value.len) &&
                            (op->lease == 0 || add_i64(req, "lease", op->lease))
                      : add_key_range(req, op->key, op->prefix);
        if (!ok)
            return false;
    }
    return true;
}

static bool ops_ok(const moat_etcd_op *ops, size_t count)
{
    if (count > MOAT_ETCD_TXN_OPS_MAX)
        return false;
    for (size_t i = 0; i < count; i++) {
        if ((unsigned)ops[i].kind > MOAT_ETCD_OP_DELETE || !key_ok(ops[i].key) ||
            ops[i].value.len > MOAT_ETCD_VALUE_MAX)
            return false;
    }
    return true;
}

char *moat_etcd_req_txn(const moat_etcd_txn_spec *txn, moat_err *err)
{
    *err = MOAT_OK;
    bool valid = txn->cmp_count <= MOAT_ETCD_TXN_OPS_MAX &&
                 ops_ok(txn->success, txn->success_count) &&
                 ops_ok(txn->failure, txn->failure_count);
    for (size_t i = 0; valid && i < txn->cmp_count; i++) {
        const moat_etcd_cmp *c = &txn->cmp[i];
        valid = key_ok(c->key) && (unsigned)c->target <= MOAT_ETCD_VERSION &&
                (unsigned)c->result <= MOAT_ETCD_NOT_EQUAL;
    }
    if (!valid) {
        *err = MOAT_E_INVAL;
        return NULL;
    }
    cJSON *obj = cJSON_CreateObject();
    cJSON *cmps = obj != NULL ? cJSON_AddArrayToObject(obj, "compare") : NULL;
    bool ok = cmps != NULL;
    for (size_t i = 0; ok && i < txn->cmp_count; i++) {
        const moat_etcd_cmp *c = &txn->cmp[i];
        cJSON *item = cJSON_CreateObject();
        ok = item != NULL && cJSON_AddItemToArray(cmps, item) &&
             add_bytes(item, "key", c->key.data, c->key.len) &&
             cJSON_AddStringToObject(item, "target", target_names[c->target]) != NULL &&
             cJSON_AddStringToObject(item, "result", result_names[c->result]) != NULL &&
             add_i64(item, target_fields[c->target], c->number);
    }
    ok = ok && add_ops(obj, "success", txn->success, txn->success_count) &&
         add_ops(obj, "failure", txn->failure, txn->failure_count);
    return finish(obj, ok, err);
}

char *moat_etcd_req_lease_grant(int64_t ttl_seconds, moat_err *err)
{
    *err = MOAT_OK;
    if (ttl_seconds <= 0) {
        *err = MOAT_E_INVAL;
        return NULL;
    }
    cJSON *obj = cJSON_CreateObject();
    return finish(obj, obj != NULL && add_i64(obj, "TTL", ttl_seconds), err);
}

char *moat_etcd_req_lease_id(int64_t lease, moat_err *err)
{
    *err = MOAT_OK;
    if (lease == 0) {
        *err = MOAT_E_INVAL;
        return NULL;
    }
    cJSON *obj = cJSON_CreateObject();
    return finish(obj, obj != NULL && add_i64(obj, "ID", lease), err);
}

/* ---- answers ------------------------------------------------------------------------------ */

const char *moat_etcd_call_path(moat_etcd_call call)
{
    static const char *const paths[] = {
        "/v3/kv/put",      "/v3/kv/range",        "/v3/kv/deleterange", "/v3/kv/txn",
        "/v3/lease/grant", "/v3/lease/keepalive", "/v3/lease/revoke",   "/v3/watch",
    };
    return (unsigned)call < sizeof(paths) / sizeof(paths[0]) ? paths[call] : "/";
}

void moat_etcd_result_free(moat_etcd_result *res)
{
    for (size_t i = 0; i < res->kv_count; i++) {
        free(res->kvs[i].key);
        free(res->kvs[i].value);
    }
    free(res->kvs);
    memset(res, 0, sizeof(*res));
}

/* obj[name] as an int64: absent is 0 (the gateway leaves zero values out); a decimal string or
 * an integral number; false for anything else. */
static bool get_i64(const cJSON *obj, const char *name, int64_t *out)
{
    *out = 0;
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, name);
    if (item == NULL)
        return true;
    if (cJSON_IsNumber(item))
        return moat_json_int_value(item, out);
    if (!cJSON_IsString(item))
        return false;
    const char *s = item->valuestring;
    if (*s == '\0' || (*s != '-' && (*s < '0' || *s > '9')))
        return false;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno != 0 || *end != '\0')
        return false;
    *out = v;
    return true;
}

static bool get_bool(const cJSON *obj, const char *name, bool *out)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, name);
    *out = cJSON_IsTrue(item);
    return item == NULL || cJSON_IsBool(item);
}

/* A base64 field decoded into a fresh allocation (NULL for an empty or absent one). */
static bool get_bytes(const cJSON *obj, const char *name, size_t max, uint8_t **out,
                      size_t *out_len)
{
    *out = NULL;
    *out_len = 0;
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, name);
    if (item == NULL)
        return true;
    if (!cJSON_IsString(item))
        return false;
    size_t len = strlen(item->valuestring);
    /* The declared size, checked before the allocation. */
    if (len / 4 * 3 > max + 2)
        return false;
    if (len == 0)
        return true;
    uint8_t *buf = malloc(len / 4 * 3);
    if (buf == NULL)
        return false;
    if (moat_etcd_b64_decode(item->valuestring, len, buf, max, out_len) != MOAT_OK) {
        free(buf);
        return false;
    }
    *out = buf;
    return true;
}

static bool parse_kv(const cJSON *obj, moat_etcd_kv *kv)
{
    return cJSON_IsObject(obj) &&
           get_bytes(obj, "key", MOAT_ETCD_KEY_MAX, &kv->key, &kv->key_len) && kv->key_len > 0 &&
           get_bytes(obj, "value", MOAT_ETCD_VALUE_MAX, &kv->value, &kv->value_len) &&
           get_i64(obj, "create_revision", &kv->create_revision) &&
           get_i64(obj, "mod_revision", &kv->mod_revision) &&
           get_i64(obj, "version", &kv->version) && get_i64(obj, "lease", &kv->lease);
}

/* Appends the kvs array of obj (absent: none) to res, whose kvs has room. */
static bool parse_kvs(const cJSON *obj, moat_etcd_result *res)
{
    const cJSON *kvs = cJSON_GetObjectItemCaseSensitive(obj, "kvs");
    if (kvs == NULL)
        return true;
    if (!cJSON_IsArray(kvs))
        return false;
    const cJSON *item;
    cJSON_ArrayForEach(item, kvs)
    {
        /* Counted before the kv's fields, so a half-parsed one is freed with the result. */
        if (!parse_kv(item, &res->kvs[res->kv_count++]))
            return false;
    }
    return true;
}

static size_t kvs_size(const cJSON *obj)
{
    const cJSON *kvs = cJSON_GetObjectItemCaseSensitive(obj, "kvs");
    return cJSON_IsArray(kvs) ? (size_t)cJSON_GetArraySize(kvs) : 0;
}

static bool reserve_kvs(moat_etcd_result *res, size_t n)
{
    if (n == 0)
        return true;
    res->kvs = calloc(n, sizeof(*res->kvs));
    return res->kvs != NULL;
}

static bool parse_range(const cJSON *obj, moat_etcd_result *res)
{
    return get_i64(obj, "count", &res->count) && get_bool(obj, "more", &res->more) &&
           reserve_kvs(res, kvs_size(obj)) && parse_kvs(obj, res);
}

static bool parse_txn(const cJSON *obj, moat_etcd_result *res)
{
    const cJSON *responses = cJSON_GetObjectItemCaseSensitive(obj, "responses");
    if (!get_bool(obj, "succeeded", &res->succeeded) ||
        (responses != NULL && !cJSON_IsArray(responses)))
        return false;
    size_t total = 0;
    const cJSON *r;
    cJSON_ArrayForEach(r, responses)
    {
        total += kvs_size(cJSON_GetObjectItemCaseSensitive(r, "response_range"));
    }
    if (!reserve_kvs(res, total))
        return false;
    cJSON_ArrayForEach(r, responses)
    {
        if (!cJSON_IsObject(r) || cJSON_GetArraySize(r) != 1)
            return false;
        const cJSON *inner = r->child;
        if (!cJSON_IsObject(inner))
            return false;
        int64_t deleted;
        if (strcmp(inner->string, "response_range") == 0) {
            if (!parse_kvs(inner, res))
                return false;
        } else if (strcmp(inner->string, "response_delete_range") == 0) {
            if (!get_i64(inner, "deleted", &deleted))
                return false;
            res->deleted += deleted;
        } else if (strcmp(inner->string, "response_put") != 0) {
            return false;
        }
    }
    return true;
}

static moat_code bad_answer(moat_status *st, moat_etcd_call call, const char *why)
{
    moat_status_set(st, MOAT_CODE_INTERNAL, "etcd_bad_answer", "etcd answered %s with %s",
                    moat_etcd_call_path(call), why);
    return st->code;
}

static moat_code etcd_error(moat_status *st, moat_etcd_call call, int64_t code, const char *msg)
{
    moat_code c = code > 0 && code < MOAT_CODE_COUNT ? (moat_code)code : MOAT_CODE_UNKNOWN;
    moat_status_set(st, c, "etcd_error", "etcd %s: %s", moat_etcd_call_path(call), msg);
    char text[24];
    snprintf(text, sizeof(text), "%" PRId64, code);
    moat_status_add_detail(st, "etcd_code", text);
    return c;
}

/* An error object, in the unary shape or the stream's; MOAT_CODE_OK when obj is none. */
static moat_code error_answer(const cJSON *obj, moat_etcd_call call, long http_status,
                              moat_status *st)
{
    const cJSON *err = cJSON_GetObjectItemCaseSensitive(obj, "error");
    int64_t code = 0;
    if (cJSON_IsObject(err)) {
        const char *msg = moat_json_str(err, "message", NULL);
        if (!get_i64(err, "grpc_code", &code) || code == 0 || msg == NULL)
            return bad_answer(st, call, "a malformed error");
        return etcd_error(st, call, code, msg);
    }
    /* A LeaseGrantResponse has an "error" string of its own, next to its header. */
    bool grant_error = call == MOAT_ETCD_CALL_LEASE_GRANT &&
                       cJSON_GetObjectItemCaseSensitive(obj, "header") != NULL;
    if (cJSON_IsString(err) && (err->valuestring[0] != '\0' || http_status / 100 != 2)) {
        if (grant_error)
            return etcd_error(st, call, MOAT_CODE_UNKNOWN, err->valuestring);
        if (!get_i64(obj, "code", &code) || code == 0)
            return bad_answer(st, call, "a malformed error");
        return etcd_error(st, call, code, err->valuestring);
    }
    if (err != NULL && !cJSON_IsString(err))
        return bad_answer(st, call, "a malformed error");
    if (http_status / 100 != 2) {
        char msg[48];
        snprintf(msg, sizeof(msg), "HTTP %ld", http_status);
        moat_code c = moat_code_from_http(http_status);
        return etcd_error(st, call, c == MOAT_CODE_OK ? MOAT_CODE_UNKNOWN : c, msg);
    }
    return MOAT_CODE_OK;
}

moat_code moat_etcd_parse(moat_etcd_call call, long http_status, const char *body, size_t len,
                          moat_etcd_result *res, moat_status *st)
{
    if ((unsigned)call > MOAT_ETCD_CALL_LEASE_REVOKE)
        return bad_answer(st, call, "a call moat does not make");
    if (len > MOAT_ETCD_ANSWER_MAX)
        return bad_answer(st, call, "an answer over its size limit");
    cJSON *root = moat_json_parse(body, len, MOAT_JSON_NUL_REJECT);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        if (http_status / 100 != 2) {
            char msg[48];
            snprintf(msg, sizeof(msg), "HTTP %ld", http_status);
            moat_code c = moat_code_from_http(http_status);
            return etcd_error(st, call, c == MOAT_CODE_OK ? MOAT_CODE_UNKNOWN : c, msg);
        }
        return bad_answer(st, call, "text that is not a JSON object");
    }
    moat_code code = error_answer(root, call, http_status, st);
    const cJSON *obj = root;
    if (code == MOAT_CODE_OK && call == MOAT_ETCD_CALL_LEASE_KEEPALIVE) {
        /* The keepalive is a stream: each message comes wrapped in "result". */
        obj = cJSON_GetObjectItemCaseSensitive(root, "result");
        if (!cJSON_IsObject(obj))
            code = bad_answer(st, call, "no result");
    }
    const cJSON *header =
        code == MOAT_CODE_OK ? cJSON_GetObjectItemCaseSensitive(obj, "header") : NULL;
    if (code == MOAT_CODE_OK &&
        (!cJSON_IsObject(header) || !get_i64(header, "revision", &res->revision)))
        code = bad_answer(st, call, "no header");
    if (code != MOAT_CODE_OK) {
        cJSON_Delete(root);
        return code;
    }
    bool ok = true;
    switch (call) {
    case MOAT_ETCD_CALL_RANGE:
        ok = parse_range(obj, res);
        break;
    case MOAT_ETCD_CALL_TXN:
        ok = parse_txn(obj, res);
        break;
    case MOAT_ETCD_CALL_DELETE:
        ok = get_i64(obj, "deleted", &res->deleted);
        break;
    case MOAT_ETCD_CALL_LEASE_GRANT:
        ok = get_i64(obj, "ID", &res->lease_id) && get_i64(obj, "TTL", &res->ttl) &&
             res->lease_id != 0 && res->ttl > 0;
        break;
    case MOAT_ETCD_CALL_LEASE_KEEPALIVE:
        ok = get_i64(obj, "ID", &res->lease_id) && get_i64(obj, "TTL", &res->ttl) && res->ttl >= 0;
        break;
    case MOAT_ETCD_CALL_PUT:
    case MOAT_ETCD_CALL_LEASE_REVOKE:
    case MOAT_ETCD_CALL_WATCH: /* refused above: moat_etcd_parse_watch reads its messages */
        break;
    }
    cJSON_Delete(root);
    if (!ok)
        return bad_answer(st, call, "fields of the wrong type or size");
    if (call == MOAT_ETCD_CALL_LEASE_KEEPALIVE && res->ttl == 0) {
        moat_status_set(st, MOAT_CODE_NOT_FOUND, "etcd_lease_not_found",
                        "etcd lease %" PRId64 " has expired or was revoked", res->lease_id);
        return st->code;
    }
    moat_status_clear(st);
    return MOAT_CODE_OK;
}

void moat_etcd_watch_msg_free(moat_etcd_watch_msg *m)
{
    for (size_t i = 0; i < m->event_count; i++) {
        free(m->events[i].key);
        free(m->events[i].value);
    }
    free(m->events);
    memset(m, 0, sizeof(*m));
}

/* One event: its kv, and DELETE (version 0) or PUT. */
static bool parse_event(const cJSON *ev, moat_etcd_kv *kv)
{
    /* PUT is the enum's zero value, which the gateway leaves out. */
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(ev, "type");
    const char *type = t == NULL ? "PUT" : moat_json_str(ev, "type", NULL);
    bool del = type != NULL && strcmp(type, "DELETE") == 0;
    if (!cJSON_IsObject(ev) || type == NULL || (!del && strcmp(type, "PUT") != 0) ||
        !parse_kv(cJSON_GetObjectItemCaseSensitive(ev, "kv"), kv))
        return false;
    if (del)
        kv->version = 0;
    return del || kv->version > 0;
}

moat_code moat_etcd_parse_watch(const char *line, size_t len, moat_etcd_watch_msg *m,
                                moat_status *st)
{
    const moat_etcd_call call = MOAT_ETCD_CALL_WATCH;
    if (len > MOAT_ETCD_ANSWER_MAX)
        return bad_answer(st, call, "an answer over its size limit");
    cJSON *root = moat_json_parse(line, len, MOAT_JSON_NUL_REJECT);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return bad_answer(st, call, "text that is not a JSON object");
    }
    moat_code code = error_answer(root, call, 200, st);
    const cJSON *obj = cJSON_GetObjectItemCaseSensitive(root, "result");
    const cJSON *header = cJSON_GetObjectItemCaseSensitive(obj, "header");
    const cJSON *events = cJSON_GetObjectItemCaseSensitive(obj, "events");
    if (code == MOAT_CODE_OK &&
        (!cJSON_IsObject(obj) || !cJSON_IsObject(header) ||
         !get_i64(header, "revision", &m->revision) || !get_bool(obj, "created", &m->created) ||
         !get_bool(obj, "canceled", &m->canceled) ||
         !get_i64(obj, "compact_revision", &m->compact_revision) ||
         (events != NULL && !cJSON_IsArray(events))))
        code = bad_answer(st, call, "no header, or fields of the wrong type");
    size_t n = code == MOAT_CODE_OK && events != NULL ? (size_t)cJSON_GetArraySize(events) : 0;
    if (n > 0) {
        m->events = calloc(n, sizeof(*m->events));
        if (m->events == NULL) {
            moat_status_set(st, MOAT_CODE_RESOURCE_EXHAUSTED, "out_of_memory", "out of memory");
            code = st->code;
        }
    }
    const cJSON *ev;
    const cJSON *each = n > 0 && code == MOAT_CODE_OK ? events : NULL;
    cJSON_ArrayForEach(ev, each)
    {
        /* Counted first, so a half-parsed one is freed with the message. */
        if (!parse_event(ev, &m->events[m->event_count++])) {
            code = bad_answer(st, call, "an event of the wrong shape");
            break;
        }
    }
    cJSON_Delete(root);
    if (code == MOAT_CODE_OK)
        moat_status_clear(st);
    return code;
}
