/* The node record: /moat/v1/nodes/<id> and its JSON value. No I/O. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster/membership.h"
#include "common/json.h"

bool moat_node_id_valid(const char *id)
{
    size_t len = id != NULL ? strlen(id) : 0;
    if (len == 0 || len >= MOAT_NODE_ID_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = id[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '_' || c == '.' || c == '-';
        if (!ok)
            return false;
    }
    return true;
}

bool moat_node_address_valid(const char *address)
{
    size_t len = address != NULL ? strlen(address) : 0;
    if (len < 3 || len >= MOAT_NODE_ADDRESS_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)address[i];
        if (c <= 0x20 || c >= 0x7f || c == '"' || c == '\\')
            return false;
    }
    const char *colon = strrchr(address, ':');
    if (colon == NULL || colon == address)
        return false;
    const char *port = colon + 1;
    size_t digits = strlen(port);
    if (digits == 0 || digits > 5 || port[0] == '0' || strspn(port, "0123456789") != digits)
        return false;
    return atol(port) <= 65535;
}

size_t moat_node_key(const char *id, char *out, size_t cap)
{
    if (!moat_node_id_valid(id))
        return 0;
    int n = snprintf(out, cap, "%s%s", MOAT_NODES_PREFIX, id);
    return n > 0 && (size_t)n < cap ? (size_t)n : 0;
}

static bool load_valid(const moat_node_load *l)
{
    return l->slots_total >= 0 && l->slots_used >= 0 && l->memory_total_bytes >= 0 &&
           l->memory_used_bytes >= 0 && l->pool_ready >= 0;
}

size_t moat_node_encode(const moat_node *n, char *out, size_t cap)
{
    if (!moat_node_id_valid(n->id) || !moat_node_address_valid(n->address) || !load_valid(&n->load))
        return 0;
    /* The address has no character JSON must escape (moat_node_address_valid). */
    /* pool_ready only when there is one: a node without a pool writes what it always wrote. */
    char pool[40] = "";
    if (n->load.pool_ready > 0)
        snprintf(pool, sizeof(pool), ",\"pool_ready\":%" PRId64, n->load.pool_ready);
    int len = snprintf(out, cap,
                       "{\"address\":\"%s\",\"slots_total\":%" PRId64 ",\"slots_used\":%" PRId64
                       ",\"memory_total_bytes\":%" PRId64 ",\"memory_used_bytes\":%" PRId64 "%s}",
                       n->address, n->load.slots_total, n->load.slots_used,
                       n->load.memory_total_bytes, n->load.memory_used_bytes, pool);
    return len > 0 && (size_t)len < cap ? (size_t)len : 0;
}

moat_err moat_node_decode(const uint8_t *key, size_t key_len, const uint8_t *value,
                          size_t value_len, int64_t lease, moat_node *out)
{
    memset(out, 0, sizeof(*out));
    size_t plen = strlen(MOAT_NODES_PREFIX);
    if (key_len <= plen || key_len - plen >= MOAT_NODE_ID_MAX ||
        memcmp(key, MOAT_NODES_PREFIX, plen) != 0 || value_len > MOAT_NODE_VALUE_MAX)
        return MOAT_E_INVAL;
    memcpy(out->id, key + plen, key_len - plen);
    if (!moat_node_id_valid(out->id))
        return MOAT_E_INVAL;
    cJSON *root = moat_json_parse((const char *)value, value_len, MOAT_JSON_NUL_REJECT);
    size_t alen = 0;
    const char *address = moat_json_str(root, "address", &alen);
    bool ok = cJSON_IsObject(root) && address != NULL && alen < MOAT_NODE_ADDRESS_MAX &&
              moat_json_int(root, "slots_total", &out->load.slots_total) &&
              moat_json_int(root, "slots_used", &out->load.slots_used) &&
              moat_json_int(root, "memory_total_bytes", &out->load.memory_total_bytes) &&
              moat_json_int(root, "memory_used_bytes", &out->load.memory_used_bytes) &&
              (cJSON_GetObjectItemCaseSensitive(root, "pool_ready") == NULL ||
               moat_json_int(root, "pool_ready", &out->load.pool_ready));
    if (ok) {
        memcpy(out->address, address, alen);
        ok = strlen(out->address) == alen && moat_node_address_valid(out->address) &&
             load_valid(&out->load);
    }
    cJSON_Delete(root);
    if (!ok) {
        memset(out, 0, sizeof(*out));
        return MOAT_E_INVAL;
    }
    out->lease = lease;
    return MOAT_OK;
}
