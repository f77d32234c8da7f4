/* The node record codec: ids, addresses, the key, the value both ways, its truncations one byte
 * at a time, mutations and limits. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "moat_test.h"

#include "cluster/membership.h"

#define KEY "/moat/v1/nodes/node-1"

static const char value[] = "{\"address\":\"10.0.0.1:7070\",\"slots_total\":1000,\"slots_used\":"
                            "12,\"memory_total_bytes\":68719476736,\"memory_used_bytes\":"
                            "6442450944}";

static moat_err decode(const char *key, const char *val, size_t len, moat_node *n)
{
    return moat_node_decode((const uint8_t *)key, strlen(key), (const uint8_t *)val, len, 7, n);
}

static void test_ids_and_addresses(void **state)
{
    (void)state;
    assert_true(moat_node_id_valid("node-1"));
    assert_true(moat_node_id_valid("A.b_c-9"));
    char id63[64];
    memset(id63, 'a', 63);
    id63[63] = '\0';
    assert_true(moat_node_id_valid(id63));
    static const char *const bad_ids[] = {"", "a/b", "a b", "é", "a\n", "..:"};
    for (size_t i = 0; i < sizeof(bad_ids) / sizeof(bad_ids[0]); i++)
        assert_false(moat_node_id_valid(bad_ids[i]));
    char id64[65];
    memset(id64, 'a', 64);
    id64[64] = '\0';
    assert_false(moat_node_id_valid(id64));
    assert_false(moat_node_id_valid(NULL));

    assert_true(moat_node_address_valid("10.0.0.1:7070"));
    assert_true(moat_node_address_valid("[::1]:1"));
    assert_true(moat_node_address_valid("host.example:65535"));
    static const char *const bad_addrs[] = {"",        "10.0.0.1", ":7070",      "h:",   "h:0",
                                            "h:65536", "h:07070",  "h:123456",   "h :1", "h\":1",
                                            "h\\:1",   "h:1x",     "h:\xc3\xa9", "h:-1"};
    for (size_t i = 0; i < sizeof(bad_addrs) / sizeof(bad_addrs[0]); i++)
        assert_false(moat_node_address_valid(bad_addrs[i]));
    assert_false(moat_node_address_valid(NULL));

    char key[128];
    assert_int_equal(moat_node_key("node-1", key, sizeof(key)), strlen(KEY));
    assert_string_equal(key, KEY);
    assert_int_equal(moat_node_key("a/b", key, sizeof(key)), 0);
    assert_int_equal(moat_node_key("node-1", key, 10), 0);
}

static void test_round_trip(void **state)
{
    (void)state;
    moat_node n;
    assert_int_equal(decode(KEY, value, strlen(value), &n), MOAT_OK);
    assert_string_equal(n.id, "node-1");
    assert_string_equal(n.address, "10.0.0.1:7070");
    assert_int_equal(n.load.slots_total, 1000);
    assert_int_equal(n.load.slots_used, 12);
    assert_int_equal(n.load.memory_total_bytes, 68719476736LL);
    assert_int_equal(n.load.memory_used_bytes, 6442450944LL);
    assert_int_equal(n.lease, 7);
    char out[MOAT_NODE_VALUE_MAX];
    assert_int_equal(moat_node_encode(&n, out, sizeof(out)), strlen(value));
    assert_string_equal(out, value);
    assert_int_equal(moat_node_encode(&n, out, strlen(value)), 0); /* no room for the NUL */
    /* Over its capacity is a node without room, not an invalid one. */
    n.load.slots_used = 2000;
    assert_true(moat_node_encode(&n, out, sizeof(out)) > 0);
    n.load.slots_used = -1;
    assert_int_equal(moat_node_encode(&n, out, sizeof(out)), 0);
    n.load.slots_used = 0;
    /* A ready pool is written, and read back; none is left out (a node without a pool writes
     * what it always wrote). */
    n.load.pool_ready = 3;
    size_t len = moat_node_encode(&n, out, sizeof(out));
    assert_non_null(strstr(out, ",\"pool_ready\":3}"));
    moat_node back;
    assert_int_equal(decode(KEY, out, len, &back), MOAT_OK);
    assert_int_equal(back.load.pool_ready, 3);
    n.load.pool_ready = -1;
    assert_int_equal(moat_node_encode(&n, out, sizeof(out)), 0);
    n.load.pool_ready = 0;
    strcpy(n.address, "no port");
    assert_int_equal(moat_node_encode(&n, out, sizeof(out)), 0);
}

static void test_rejects(void **state)
{
    (void)state;
    moat_node n;
    static const char *const bad_keys[] = {"/moat/v1/nodes/", "/moat/v1/node/x", "x",
                                           "/moat/v1/nodes/a/b", "/moat/v1/nodes/a b"};
    for (size_t i = 0; i < sizeof(bad_keys) / sizeof(bad_keys[0]); i++)
        assert_int_equal(decode(bad_keys[i], value, strlen(value), &n), MOAT_E_INVAL);
    static const char *const bad_values[] = {
        "",
        "[]",
        "{}",
        "{\"address\":\"a:1\"}",
        "{\"address\":7,\"slots_total\":1,\"slots_used\":0,\"memory_total_bytes\":1,"
        "\"memory_used_bytes\":0}",
        "{\"address\":\"a:1\",\"slots_total\":1.5,\"slots_used\":0,\"memory_total_bytes\":1,"
        "\"memory_used_bytes\":0}",
        "{\"address\":\"a:1\",\"slots_total\":-1,\"slots_used\":0,\"memory_total_bytes\":1,"
        "\"memory_used_bytes\":0}",
        "{\"address\":\"a:1\",\"slots_total\":\"1\",\"slots_used\":0,\"memory_total_bytes\":1,"
        "\"memory_used_bytes\":0}",
        "{\"address\":\"no-port\",\"slots_total\":1,\"slots_used\":0,\"memory_total_bytes\":1,"
        "\"memory_used_bytes\":0}",
        "{\"address\":\"a:1\\u0000x\",\"slots_total\":1,\"slots_used\":0,\"memory_total_bytes\":1,"
        "\"memory_used_bytes\":0}",
        "{\"address\":\"a:1\",\"slots_total\":1,\"slots_used\":0,\"memory_total_bytes\":1,"
        "\"memory_used_bytes\":1e300}",
        "{\"address\":\"a:1\",\"slots_total\":1,\"slots_used\":0,\"memory_total_bytes\":1,"
        "\"memory_used_bytes\":0,\"pool_ready\":-1}",
        "{\"address\":\"a:1\",\"slots_total\":1,\"slots_used\":0,\"memory_total_bytes\":1,"
        "\"memory_used_bytes\":0,\"pool_ready\":1.5}",
        "{\"address\":\"a:1\",\"slots_total\":1,\"slots_used\":0,\"memory_total_bytes\":1,"
        "\"memory_used_bytes\":0,\"pool_ready\":\"2\"}",
        "{\"address\":\"a:1\",\"slots_total\":1,\"slots_used\":0,\"memory_total_bytes\":1,"
        "\"memory_used_bytes\":0,\"pool_ready\":null}",
    };
    for (size_t i = 0; i < sizeof(bad_values) / sizeof(bad_values[0]); i++)
        assert_int_equal(decode(KEY, bad_values[i], strlen(bad_values[i]), &n), MOAT_E_INVAL);
    /* A value over its limit is refused from its size alone. */
    char *big = malloc(MOAT_NODE_VALUE_MAX + 1);
    assert_non_null(big);
    memset(big, ' ', MOAT_NODE_VALUE_MAX + 1);
    memcpy(big, value, strlen(value));
    assert_int_equal(decode(KEY, big, MOAT_NODE_VALUE_MAX + 1, &n), MOAT_E_INVAL);
    assert_int_equal(decode(KEY, big, MOAT_NODE_VALUE_MAX, &n), MOAT_OK);
    free(big);
    /* An address as long as its field, and one byte longer. */
    char addr_value[MOAT_NODE_VALUE_MAX];
    char addr[MOAT_NODE_ADDRESS_MAX + 1];
    memset(addr, 'h', sizeof(addr));
    for (size_t len = MOAT_NODE_ADDRESS_MAX - 1; len <= MOAT_NODE_ADDRESS_MAX; len++) {
        memcpy(addr + len - 2, ":1", 3);
        snprintf(addr_value, sizeof(addr_value),
                 "{\"address\":\"%s\",\"slots_total\":1,\"slots_used\":0,\"memory_total_bytes\":1,"
                 "\"memory_used_bytes\":0}",
                 addr);
        assert_int_equal(decode(KEY, addr_value, strlen(addr_value), &n),
                         len < MOAT_NODE_ADDRESS_MAX ? MOAT_OK : MOAT_E_INVAL);
        memset(addr, 'h', sizeof(addr));
    }
}

/* The value as it grows one byte at a time: refused until whole; and every byte mutated. */
static void test_one_byte_at_a_time(void **state)
{
    (void)state;
    size_t len = strlen(value);
    moat_node n;
    for (size_t i = 0; i < len; i++)
        assert_int_equal(decode(KEY, value, i, &n), MOAT_E_INVAL);
    assert_int_equal(decode(KEY, value, len, &n), MOAT_OK);
    static const char hostile[] = {'\0', '"', '}', 'x', '9', '\\', (char)0xff, '-', ' '};
    char copy[sizeof(value)];
    for (size_t i = 0; i < len; i++) {
        for (size_t h = 0; h < sizeof(hostile); h++) {
            memcpy(copy, value, len);
            copy[i] = hostile[h];
            if (decode(KEY, copy, len, &n) == MOAT_OK) {
                assert_true(moat_node_address_valid(n.address));
                assert_true(n.load.slots_total >= 0 && n.load.memory_used_bytes >= 0);
            }
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ids_and_addresses),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_rejects),
        cmocka_unit_test(test_one_byte_at_a_time),
    };
    return moat_run_group_tests("test_node_codec", tests, NULL, NULL);
}
