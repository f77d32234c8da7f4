/* The directory's records: keys, values both ways, truncations one byte at a time, mutations,
 * limits, and who owns a session by its node's incarnation. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moat_test.h"

#include "cluster/records.h"

#define SID  "3f2c1a9e-5b7d-4e21-9c3a-1d2e3f405162"
#define CHAT "123e4567-e89b-42d3-a456-426614174000"
#define SKEY "/moat/v1/sessions/" SID
#define CKEY "/moat/v1/chats/" CHAT

static const char session_value[] =
    "{\"chat_id\":\"" CHAT "\",\"node_id\":\"n1\",\"node_lease\":\"7587869498238211075\","
    "\"address\":\"10.213.0.11:7070\",\"state\":\"running\",\"image\":\"moat-sandbox:latest\","
    "\"created_at_ms\":1796000000000,\"expires_at_ms\":1796000600000,\"ended_at_ms\":0,"
    "\"end_reason\":\"\"}";
static const char chat_value[] = "{\"session_id\":\"" SID "\",\"node_id\":\"n1\"}";

static moat_err decode_session(const char *key, const char *val, size_t len, moat_session_record *r)
{
    return moat_session_record_decode((const uint8_t *)key, strlen(key), (const uint8_t *)val, len,
                                      r);
}

static moat_err decode_chat(const char *key, const char *val, size_t len, moat_chat_record *r)
{
    return moat_chat_record_decode((const uint8_t *)key, strlen(key), (const uint8_t *)val, len, r);
}

static void test_keys(void **state)
{
    (void)state;
    char key[MOAT_RECORD_KEY_MAX];
    assert_int_equal(moat_session_record_key(SID, key, sizeof(key)), strlen(SKEY));
    assert_string_equal(key, SKEY);
    assert_int_equal(moat_chat_record_key(CHAT, key, sizeof(key)), strlen(CKEY));
    assert_string_equal(key, CKEY);
    assert_true(moat_home_record_key(CHAT, key, sizeof(key)) > 0);
    assert_string_equal(key, "/moat/v1/homes/" CHAT);
    /* Only the canonical spelling names a key: one chat, one key. */
    static const char *const bad[] = {"",
                                      "x",
                                      "123E4567-E89B-42D3-A456-426614174000",
                                      "123e4567e89b42d3a456426614174000",
                                      "{123e4567-e89b-42d3-a456-426614174000}",
                                      "../../nodes/n1"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(moat_session_record_key(bad[i], key, sizeof(key)), 0);
        assert_int_equal(moat_chat_record_key(bad[i], key, sizeof(key)), 0);
    }
    assert_int_equal(moat_chat_record_key(CHAT, key, strlen(CKEY)), 0); /* no room for the NUL */
}

static void test_session_round_trip(void **state)
{
    (void)state;
    moat_session_record r;
    assert_int_equal(decode_session(SKEY, session_value, strlen(session_value), &r), MOAT_OK);
    assert_string_equal(r.session_id, SID);
    assert_string_equal(r.chat_id, CHAT);
    assert_string_equal(r.node_id, "n1");
    assert_true(r.node_lease == 7587869498238211075LL); /* past a double's exact integers */
    assert_string_equal(r.address, "10.213.0.11:7070");
    assert_int_equal(r.state, MOAT_RECORD_RUNNING);
    assert_string_equal(r.image, "moat-sandbox:latest");
    assert_true(r.created_at_ms == 1796000000000LL && r.expires_at_ms == 1796000600000LL);
    char out[MOAT_RECORD_VALUE_MAX];
    assert_int_equal(moat_session_record_encode(&r, out, sizeof(out)), strlen(session_value));
    assert_string_equal(out, session_value);
    assert_int_equal(moat_session_record_encode(&r, out, strlen(session_value)), 0);

    /* Ended: both the time and the reason, or neither. */
    r.state = MOAT_RECORD_ENDED;
    assert_int_equal(moat_session_record_encode(&r, out, sizeof(out)), 0);
    r.ended_at_ms = 1796000300000LL;
    assert_int_equal(moat_session_record_encode(&r, out, sizeof(out)), 0);
    strcpy(r.end_reason, "node_lost");
    size_t len = moat_session_record_encode(&r, out, sizeof(out));
    assert_true(len > 0);
    moat_session_record back;
    assert_int_equal(decode_session(SKEY, out, len, &back), MOAT_OK);
    assert_memory_equal(&back, &r, sizeof(r));
    r.state = MOAT_RECORD_RUNNING;
    assert_int_equal(moat_session_record_encode(&r, out, sizeof(out)), 0);

    /* Strings JSON would have to escape are refused, not written raw. */
    assert_int_equal(decode_session(SKEY, session_value, strlen(session_value), &r), MOAT_OK);
    strcpy(r.image, "a\"b");
    assert_int_equal(moat_session_record_encode(&r, out, sizeof(out)), 0);
    strcpy(r.image, "img");
    strcpy(r.node_id, "a/b");
    assert_int_equal(moat_session_record_encode(&r, out, sizeof(out)), 0);
    strcpy(r.node_id, "n1");
    r.node_lease = 0;
    assert_int_equal(moat_session_record_encode(&r, out, sizeof(out)), 0);
}

static void test_chat_and_home(void **state)
{
    (void)state;
    moat_chat_record c;
    assert_int_equal(decode_chat(CKEY, chat_value, strlen(chat_value), &c), MOAT_OK);
    assert_string_equal(c.chat_id, CHAT);
    assert_string_equal(c.session_id, SID);
    assert_string_equal(c.node_id, "n1");
    char out[MOAT_RECORD_VALUE_MAX];
    assert_int_equal(moat_chat_record_encode(&c, out, sizeof(out)), strlen(chat_value));
    assert_string_equal(out, chat_value);
    assert_int_equal(decode_chat(SKEY, chat_value, strlen(chat_value), &c), MOAT_E_INVAL);
    static const char *const bad[] = {"{}",
                                      "{\"session_id\":\"x\",\"node_id\":\"n1\"}",
                                      "{\"session_id\":\"" SID "\",\"node_id\":\"a b\"}",
                                      "{\"session_id\":\"" SID "\"}",
                                      "[]",
                                      "null"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(decode_chat(CKEY, bad[i], strlen(bad[i]), &c), MOAT_E_INVAL);

    size_t len = moat_home_record_encode("n2", out, sizeof(out));
    assert_string_equal(out, "{\"node_id\":\"n2\"}");
    char node[MOAT_NODE_ID_MAX];
    assert_int_equal(moat_home_record_decode((const uint8_t *)out, len, node), MOAT_OK);
    assert_string_equal(node, "n2");
    assert_int_equal(moat_home_record_decode((const uint8_t *)"{\"node_id\":7}", 13, node),
                     MOAT_E_INVAL);
    assert_int_equal(moat_home_record_encode("", out, sizeof(out)), 0);
}

static void test_session_rejects(void **state)
{
    (void)state;
    moat_session_record r;
    static const char *const bad_keys[] = {
        "/moat/v1/sessions/", "/moat/v1/chats/" SID, "/moat/v1/sessions/" SID "x",
        "/moat/v1/sessions/3F2C1A9E-5B7D-4E21-9C3A-1D2E3F405162"};
    for (size_t i = 0; i < sizeof(bad_keys) / sizeof(bad_keys[0]); i++)
        assert_int_equal(decode_session(bad_keys[i], session_value, strlen(session_value), &r),
                         MOAT_E_INVAL);
    /* Each field replaced by something wrong, one at a time. */
    static const struct {
        const char *from, *to;
    } swaps[] = {
        {"\"node_lease\":\"7587869498238211075\"", "\"node_lease\":7587869498238211075"},
        {"\"node_lease\":\"7587869498238211075\"", "\"node_lease\":\"99999999999999999999\""},
        {"\"node_lease\":\"7587869498238211075\"", "\"node_lease\":\"-1\""},
        {"\"node_lease\":\"7587869498238211075\"", "\"node_lease\":\"0\""},
        {"\"state\":\"running\"", "\"state\":\"RUNNING\""},
        {"\"state\":\"running\"", "\"state\":\"ended\""},
        {"\"created_at_ms\":1796000000000", "\"created_at_ms\":-1"},
        {"\"created_at_ms\":1796000000000", "\"created_at_ms\":1.5"},
        {"\"expires_at_ms\":1796000600000", "\"expires_at_ms\":\"1\""},
        {"\"ended_at_ms\":0", "\"ended_at_ms\":1"},
        {"\"end_reason\":\"\"", "\"end_reason\":\"gone\""},
        {"\"address\":\"10.213.0.11:7070\"", "\"address\":\"10.213.0.11\""},
        {"\"chat_id\":\"" CHAT "\"", "\"chat_id\":\"" SID "x\""},
        {"\"image\":\"moat-sandbox:latest\"", "\"image\":\"\""},
        {"\"image\":\"moat-sandbox:latest\"", "\"image\":\"a b\""},
        {"\"image\":\"moat-sandbox:latest\"", "\"image\":\"a\\u0000b\""},
        {"\"node_id\":\"n1\",", ""},
    };
    for (size_t i = 0; i < sizeof(swaps) / sizeof(swaps[0]); i++) {
        char buf[MOAT_RECORD_VALUE_MAX];
        const char *at = strstr(session_value, swaps[i].from);
        assert_non_null(at);
        int n = snprintf(buf, sizeof(buf), "%.*s%s%s", (int)(at - session_value), session_value,
                         swaps[i].to, at + strlen(swaps[i].from));
        assert_true(n > 0);
        assert_int_equal(decode_session(SKEY, buf, (size_t)n, &r), MOAT_E_INVAL);
        assert_true(r.session_id[0] == '\0' && r.node_lease == 0);
    }
    /* A value over its limit is refused from its size alone; at the limit it is parsed. */
    char *big = malloc(MOAT_RECORD_VALUE_MAX + 1);
    assert_non_null(big);
    memset(big, ' ', MOAT_RECORD_VALUE_MAX + 1);
    memcpy(big, session_value, strlen(session_value));
    assert_int_equal(decode_session(SKEY, big, MOAT_RECORD_VALUE_MAX + 1, &r), MOAT_E_INVAL);
    assert_int_equal(decode_session(SKEY, big, MOAT_RECORD_VALUE_MAX, &r), MOAT_OK);
    free(big);
}

static void test_one_byte_at_a_time(void **state)
{
    (void)state;
    size_t len = strlen(session_value);
    moat_session_record r;
    for (size_t i = 0; i < len; i++)
        assert_int_equal(decode_session(SKEY, session_value, i, &r), MOAT_E_INVAL);
    static const char hostile[] = {'\0', '"', '}', 'x', '9', '\\', (char)0xff, '-', ' '};
    char copy[sizeof(session_value)];
    char out[MOAT_RECORD_VALUE_MAX];
    for (size_t i = 0; i < len; i++) {
        for (size_t h = 0; h < sizeof(hostile); h++) {
            memcpy(copy, session_value, len);
            copy[i] = hostile[h];
            /* Whatever decodes is a record that encodes again. */
            if (decode_session(SKEY, copy, len, &r) == MOAT_OK)
                assert_true(moat_session_record_encode(&r, out, sizeof(out)) > 0);
        }
    }
    moat_chat_record c;
    for (size_t i = 0; i < strlen(chat_value); i++)
        assert_int_equal(decode_chat(CKEY, chat_value, i, &c), MOAT_E_INVAL);
}

static void test_owner(void **state)
{
    (void)state;
    moat_session_record r;
    assert_int_equal(decode_session(SKEY, session_value, strlen(session_value), &r), MOAT_OK);
    moat_node nodes[2];
    memset(nodes, 0, sizeof(nodes));
    strcpy(nodes[0].id, "n0");
    nodes[0].lease = 1;
    strcpy(nodes[1].id, "n1");
    nodes[1].lease = r.node_lease;
    assert_ptr_equal(moat_session_record_owner(&r, nodes, 2), &nodes[1]);
    /* The same id under another lease is a new incarnation: the session's node is gone. */
    nodes[1].lease = r.node_lease + 1;
    assert_null(moat_session_record_owner(&r, nodes, 2));
    assert_null(moat_session_record_owner(&r, nodes, 1));
    assert_null(moat_session_record_owner(&r, NULL, 0));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_keys),
        cmocka_unit_test(test_session_round_trip),
        cmocka_unit_test(test_chat_and_home),
        cmocka_unit_test(test_session_rejects),
        cmocka_unit_test(test_one_byte_at_a_time),
        cmocka_unit_test(test_owner),
    };
    return moat_run_group_tests("test_records_codec", tests, NULL, NULL);
}
