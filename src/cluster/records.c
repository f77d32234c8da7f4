/* The cluster directory's records: keys and JSON values. No I/O. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster/records.h"
#include "common/common.h"
#include "common/json.h"

const char *moat_record_state_name(moat_record_state s)
{
    switch (s) {
    case MOAT_RECORD_CREATING:
        return "creating";
    case MOAT_RECORD_RUNNING:
        return "running";
    case MOAT_RECORD_ENDED:
        return "ended";
    }
    return NULL;
}

static bool state_from_name(const char *name, size_t len, moat_record_state *out)
{
    for (moat_record_state s = MOAT_RECORD_CREATING; s <= MOAT_RECORD_ENDED; s++) {
        const char *n = moat_record_state_name(s);
        if (strlen(n) == len && memcmp(n, name, len) == 0) {
            *out = s;
            return true;
        }
    }
    return false;
}

/* A canonical UUID: what moat_uuid_canonicalize leaves unchanged. */
static bool uuid_canonical(const char *id)
{
    char canon[MOAT_UUID_STR_LEN];
    return id != NULL && moat_uuid_canonicalize(id, canon) == MOAT_OK && strcmp(canon, id) == 0;
}

/* Printable ASCII without quotes or backslashes, 1..cap-1 bytes: written into JSON as it is. */
static bool plain_string(const char *s, size_t cap)
{
    size_t len = strnlen(s, cap);
    if (len == 0 || len >= cap)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= 0x20 || c >= 0x7f || c == '"' || c == '\\')
            return false;
    }
    return true;
}

static bool reason_valid(const char *s)
{
    size_t len = strnlen(s, MOAT_RECORD_END_REASON_MAX);
    return len > 0 && len < MOAT_RECORD_END_REASON_MAX &&
           strspn(s, "abcdefghijklmnopqrstuvwxyz0123456789_") == len;
}

static size_t uuid_key(const char *prefix, const char *id, char *out, size_t cap)
{
    if (!uuid_canonical(id))
        return 0;
    int n = snprintf(out, cap, "%s%s", prefix, id);
    return n > 0 && (size_t)n < cap ? (size_t)n : 0;
}

size_t moat_session_record_key(const char *session_id, char *out, size_t cap)
{
    return uuid_key(MOAT_SESSIONS_PREFIX, session_id, out, cap);
}

size_t moat_chat_record_key(const char *chat_id, char *out, size_t cap)
{
    return uuid_key(MOAT_CHATS_PREFIX, chat_id, out, cap);
}

size_t moat_home_record_key(const char *chat_id, char *out, size_t cap)
{
    return uuid_key(MOAT_HOMES_PREFIX, chat_id, out, cap);
}

static bool session_record_valid(const moat_session_record *r)
{
    bool ended = r->state == MOAT_RECORD_ENDED;
    return uuid_canonical(r->session_id) && uuid_canonical(r->chat_id) &&
           moat_node_id_valid(r->node_id) && r->node_lease > 0 &&
           moat_node_address_valid(r->address) && moat_record_state_name(r->state) != NULL &&
           plain_string(r->image, sizeof(r->image)) && r->created_at_ms >= 0 &&
           r->expires_at_ms >= 0 && r->ended_at_ms >= 0 && (r->ended_at_ms > 0) == ended &&
           (ended ? reason_valid(r->end_reason) : r->end_reason[0] == '\0');
}

static size_t finish(int n, size_t cap)
{
    return n > 0 && (size_t)n < cap ? (size_t)n : 0;
}

size_t moat_session_record_encode(const moat_session_record *r, char *out, size_t cap)
{
    if (!session_record_valid(r))
        return 0;
    /* Every string was checked to need no JSON escape. The lease is a string, as etcd's gateway
     * writes 64-bit numbers: lease ids use all 63 bits, past a double's exact integers. */
    return finish(snprintf(out, cap,
                           "{\"chat_id\":\"%s\",\"node_id\":\"%s\",\"node_lease\":\"%" PRId64
                           "\",\"address\":\"%s\",\"state\":\"%s\",\"image\":\"%s\","
                           "\"created_at_ms\":%" PRId64 ",\"expires_at_ms\":%" PRId64
                           ",\"ended_at_ms\":%" PRId64 ",\"end_reason\":\"%s\"}",
                           r->chat_id, r->node_id, r->node_lease, r->address,
                           moat_record_state_name(r->state), r->image, r->created_at_ms,
                           r->expires_at_ms, r->ended_at_ms, r->end_reason),
                  cap);
}

size_t moat_chat_record_encode(const moat_chat_record *r, char *out, size_t cap)
{
    if (!uuid_canonical(r->chat_id) || !uuid_canonical(r->session_id) ||
        !moat_node_id_valid(r->node_id))
        return 0;
    return finish(
        snprintf(out, cap, "{\"session_id\":\"%s\",\"node_id\":\"%s\"}", r->session_id, r->node_id),
        cap);
}

size_t moat_home_record_encode(const char *node_id, char *out, size_t cap)
{
    if (!moat_node_id_valid(node_id))
        return 0;
    return finish(snprintf(out, cap, "{\"node_id\":\"%s\"}", node_id), cap);
}

/* The canonical UUID after prefix in key into id. */
static bool key_uuid(const uint8_t *key, size_t key_len, const char *prefix,
                     char id[MOAT_UUID_STR_LEN])
{
    size_t plen = strlen(prefix);
    if (key_len != plen + MOAT_UUID_STR_LEN - 1 || memcmp(key, prefix, plen) != 0)
        return false;
    memcpy(id, key + plen, MOAT_UUID_STR_LEN - 1);
    id[MOAT_UUID_STR_LEN - 1] = '\0';
    return uuid_canonical(id);
}

/* obj[key], a string of 0..cap-1 bytes without a NUL, into out. */
static bool copy_str(const cJSON *obj, const char *key, char *out, size_t cap)
{
    size_t len = 0;
    const char *s = moat_json_str(obj, key, &len);
    if (s == NULL || len >= cap || memchr(s, '\0', len) != NULL)
        return false;
    memcpy(out, s, len);
    out[len] = '\0';
    return true;
}

/* A positive int64 written as a decimal string, as etcd writes ids. */
static bool str_int(const cJSON *obj, const char *key, int64_t *out)
{
    char buf[24];
    if (!copy_str(obj, key, buf, sizeof(buf)) || buf[0] < '1' || buf[0] > '9' ||
        strspn(buf, "0123456789") != strlen(buf))
        return false;
    errno = 0;
    long long v = strtoll(buf, NULL, 10);
    if (errno != 0)
        return false;
    *out = v;
    return true;
}

static cJSON *parse_value(const uint8_t *value, size_t value_len)
{
    if (value_len > MOAT_RECORD_VALUE_MAX)
        return NULL;
    cJSON *root = moat_json_parse((const char *)value, value_len, MOAT_JSON_NUL_REJECT);
    if (root != NULL && !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}

moat_err moat_session_record_decode(const uint8_t *key, size_t key_len, const uint8_t *value,
                                    size_t value_len, moat_session_record *out)
{
    memset(out, 0, sizeof(*out));
    if (!key_uuid(key, key_len, MOAT_SESSIONS_PREFIX, out->session_id))
        return MOAT_E_INVAL;
    cJSON *root = parse_value(value, value_len);
    size_t state_len = 0;
    const char *state = moat_json_str(root, "state", &state_len);
    bool ok = root != NULL && copy_str(root, "chat_id", out->chat_id, sizeof(out->chat_id)) &&
              copy_str(root, "node_id", out->node_id, sizeof(out->node_id)) &&
              str_int(root, "node_lease", &out->node_lease) &&
              copy_str(root, "address", out->address, sizeof(out->address)) && state != NULL &&
              state_from_name(state, state_len, &out->state) &&
              copy_str(root, "image", out->image, sizeof(out->image)) &&
              moat_json_int(root, "created_at_ms", &out->created_at_ms) &&
              moat_json_int(root, "expires_at_ms", &out->expires_at_ms) &&
              moat_json_int(root, "ended_at_ms", &out->ended_at_ms) &&
              copy_str(root, "end_reason", out->end_reason, sizeof(out->end_reason)) &&
              session_record_valid(out);
    cJSON_Delete(root);
    if (!ok) {
        memset(out, 0, sizeof(*out));
        return MOAT_E_INVAL;
    }
    return MOAT_OK;
}

moat_err moat_chat_record_decode(const uint8_t *key, size_t key_len, const uint8_t *value,
                                 size_t value_len, moat_chat_record *out)
{
    memset(out, 0, sizeof(*out));
    if (!key_uuid(key, key_len, MOAT_CHATS_PREFIX, out->chat_id))
        return MOAT_E_INVAL;
    cJSON *root = parse_value(value, value_len);
    bool ok = root != NULL &&
              copy_str(root, "session_id", out->session_id, sizeof(out->session_id)) &&
              copy_str(root, "node_id", out->node_id, sizeof(out->node_id)) &&
              uuid_canonical(out->session_id) && moat_node_id_valid(out->node_id);
    cJSON_Delete(root);
    if (!ok) {
        memset(out, 0, sizeof(*out));
        return MOAT_E_INVAL;
    }
    return MOAT_OK;
}

moat_err moat_home_record_decode(const uint8_t *value, size_t value_len,
                                 char node_id[MOAT_NODE_ID_MAX])
{
    cJSON *root = parse_value(value, value_len);
    bool ok = root != NULL && copy_str(root, "node_id", node_id, MOAT_NODE_ID_MAX) &&
              moat_node_id_valid(node_id);
    cJSON_Delete(root);
    if (!ok) {
        node_id[0] = '\0';
        return MOAT_E_INVAL;
    }
    return MOAT_OK;
}

const moat_node *moat_session_record_owner(const moat_session_record *r, const moat_node *nodes,
                                           size_t count)
{
    for (size_t i = 0; i < count; i++)
        if (strcmp(nodes[i].id, r->node_id) == 0)
            return nodes[i].lease == r->node_lease ? &nodes[i] : NULL;
    return NULL;
}
