/* The etcd gateway codec: base64, request bodies, and answers (real ones captured from etcd
 * 3.4.23 on this machine, their truncations one byte at a time, mutations, and errors). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "moat_test.h"

#include "cluster/etcd.h"

#define HDR "\"header\":{\"cluster_id\":\"2396154286861019957\",\"revision\":\"7\"}"

/* Answers etcd 3.4.23 gave through its gateway. */
static const char put_ok[] = "{" HDR "}";
static const char range_ok[] =
    "{" HDR ",\"kvs\":[{\"key\":\"Zm9v\",\"create_revision\":\"2\",\"mod_revision\":\"3\","
    "\"version\":\"2\",\"value\":\"YmFy\",\"lease\":\"3041515534812888325\"},{\"key\":\"Zm9w\","
    "\"create_revision\":\"4\",\"mod_revision\":\"4\",\"version\":\"1\"}],\"count\":\"5\","
    "\"more\":true}";
static const char range_empty[] = "{" HDR "}";
static const char txn_won[] =
    "{" HDR ",\"succeeded\":true,\"responses\":[{\"response_put\":{\"header\":{\"revision\":"
    "\"5\"}}}]}";
static const char txn_lost[] =
    "{" HDR ",\"responses\":[{\"response_range\":{\"header\":{\"revision\":\"5\"},\"kvs\":[{"
    "\"key\":\"Yw==\",\"create_revision\":\"5\",\"mod_revision\":\"5\",\"version\":\"1\","
    "\"value\":\"MQ==\"}],\"count\":\"1\"}},{\"response_delete_range\":{\"header\":{},"
    "\"deleted\":\"2\"}}]}";
static const char delete_ok[] = "{" HDR ",\"deleted\":\"1\"}";
static const char grant_ok[] = "{" HDR ",\"ID\":\"2210319928586317060\",\"TTL\":\"3\"}";
static const char keepalive_ok[] =
    "{\"result\":{" HDR ",\"ID\":\"3041515534812888325\",\"TTL\":\"5\"}}";
static const char keepalive_gone[] = "{\"result\":{" HDR ",\"ID\":\"123\"}}";
static const char err_lease[] = "{\"error\":\"etcdserver: requested lease not found\","
                                "\"message\":\"etcdserver: requested lease not found\",\"code\":5}";
static const char err_timeout[] = "{\"error\":\"etcdserver: request timed out\",\"message\":"
                                  "\"etcdserver: request timed out\",\"code\":14}";
static const char err_stream[] =
    "{\"error\":{\"grpc_code\":14,\"http_code\":503,\"message\":\"etcdserver: no leader\","
    "\"http_status\":\"Service Unavailable\"}}";

static moat_code parse(moat_etcd_call call, long http, const char *body, size_t len,
                       moat_etcd_result *res, moat_status *st)
{
    memset(res, 0, sizeof(*res));
    moat_status_clear(st);
    return moat_etcd_parse(call, http, body, len, res, st);
}

static void test_b64(void **state)
{
    (void)state;
    char text[64];
    uint8_t bytes[64];
    size_t n;
    assert_int_equal(moat_etcd_b64_encode((const uint8_t *)"foo", 3, text, sizeof(text)), 4);
    assert_string_equal(text, "Zm9v");
    assert_int_equal(moat_etcd_b64_encode((const uint8_t *)"b", 1, text, sizeof(text)), 4);
    assert_string_equal(text, "Yg==");
    assert_int_equal(moat_etcd_b64_encode((const uint8_t *)"ab", 2, text, 4), 0); /* no NUL room */
    /* Every length, every byte value, round trip. */
    for (size_t len = 0; len <= 40; len++) {
        uint8_t in[40];
        for (size_t i = 0; i < len; i++)
            in[i] = (uint8_t)(i * 37 + len * 11);
        size_t tl = moat_etcd_b64_encode(in, len, text, sizeof(text));
        assert_int_equal(tl, (len + 2) / 3 * 4);
        assert_int_equal(moat_etcd_b64_decode(text, tl, bytes, sizeof(bytes), &n), MOAT_OK);
        assert_int_equal(n, len);
        assert_memory_equal(bytes, in, len);
        if (len > 0)
            assert_int_equal(moat_etcd_b64_decode(text, tl, bytes, len - 1, &n), MOAT_E_TOO_BIG);
    }
    static const char *const bad[] = {"Zm9",  "Zm9v=",    "Z===",     "====", "Zg=a", "Zh==",
                                      "Zm9=", "Zm9v!AAA", "Zg==Zm9v", "Zm 9", "Zm-_"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(moat_etcd_b64_decode(bad[i], strlen(bad[i]), bytes, sizeof(bytes), &n),
                         MOAT_E_INVAL);
}

static void test_prefix_end(void **state)
{
    (void)state;
    uint8_t out[8];
    assert_int_equal(moat_etcd_prefix_end(moat_slice_str("/moat/"), out), 6);
    assert_memory_equal(out, "/moat0", 6);
    const uint8_t ff[] = {'a', 0xff, 0xff};
    assert_int_equal(moat_etcd_prefix_end((moat_slice){ff, 3}, out), 1);
    assert_int_equal(out[0], 'b');
    const uint8_t all[] = {0xff, 0xff};
    assert_int_equal(moat_etcd_prefix_end((moat_slice){all, 2}, out), 1);
    assert_int_equal(out[0], 0);
    assert_int_equal(moat_etcd_prefix_end((moat_slice){NULL, 0}, out), 1);
    assert_int_equal(out[0], 0);
}

static void test_requests(void **state)
{
    (void)state;
    moat_err err;
    char *s = moat_etcd_req_put(moat_slice_str("foo"), moat_slice_str("bar"), 42, &err);
    assert_string_equal(s, "{\"key\":\"Zm9v\",\"value\":\"YmFy\",\"lease\":\"42\"}");
    free(s);
    s = moat_etcd_req_put(moat_slice_str("foo"), moat_slice_str(""), 0, &err);
    assert_string_equal(s, "{\"key\":\"Zm9v\",\"value\":\"\"}");
    free(s);
    s = moat_etcd_req_range(moat_slice_str("a/"), true, 10, &err);
    assert_string_equal(s, "{\"key\":\"YS8=\",\"range_end\":\"YTA=\",\"limit\":\"10\"}");
    free(s);
    /* A page that starts past "a/x" (its key with a 0 byte) and ends at the prefix's end. */
    s = moat_etcd_req_range_to((moat_slice){(const uint8_t *)"a/x", 4}, moat_slice_str("a0"), 2,
                               &err);
    assert_string_equal(s, "{\"key\":\"YS94AA==\",\"range_end\":\"YTA=\",\"limit\":\"2\"}");
    free(s);
    s = moat_etcd_req_delete(moat_slice_str("a"), false, &err);
    assert_string_equal(s, "{\"key\":\"YQ==\"}");
    free(s);
    s = moat_etcd_req_lease_grant(5, &err);
    assert_string_equal(s, "{\"TTL\":\"5\"}");
    free(s);
    s = moat_etcd_req_lease_id(-9, &err);
    assert_string_equal(s, "{\"ID\":\"-9\"}");
    free(s);

    moat_etcd_cmp cmp = {moat_slice_str("c"), MOAT_ETCD_CREATE_REVISION, MOAT_ETCD_EQUAL, 0};
    moat_etcd_op put = {MOAT_ETCD_OP_PUT, moat_slice_str("c"), moat_slice_str("1"), 7, false};
    moat_etcd_op get = {MOAT_ETCD_OP_RANGE, moat_slice_str("c"), {NULL, 0}, 0, false};
    moat_etcd_txn_spec txn = {&cmp, 1, &put, 1, &get, 1};
    s = moat_etcd_req_txn(&txn, &err);
    assert_string_equal(
        s, "{\"compare\":[{\"key\":\"Yw==\",\"target\":\"CREATE\",\"result\":\"EQUAL\","
           "\"create_revision\":\"0\"}],\"success\":[{\"request_put\":{\"key\":\"Yw==\","
           "\"value\":\"MQ==\",\"lease\":\"7\"}}],\"failure\":[{\"request_range\":{\"key\":"
           "\"Yw==\"}}]}");
    free(s);
    moat_etcd_cmp mod = {moat_slice_str("c"), MOAT_ETCD_MOD_REVISION, MOAT_ETCD_NOT_EQUAL, 9};
    moat_etcd_op del = {MOAT_ETCD_OP_DELETE, moat_slice_str("d/"), {NULL, 0}, 0, true};
    moat_etcd_txn_spec txn2 = {&mod, 1, &del, 1, NULL, 0};
    s = moat_etcd_req_txn(&txn2, &err);
    assert_string_equal(s, "{\"compare\":[{\"key\":\"Yw==\",\"target\":\"MOD\",\"result\":"
                           "\"NOT_EQUAL\",\"mod_revision\":\"9\"}],\"success\":[{"
                           "\"request_delete_range\":{\"key\":\"ZC8=\",\"range_end\":\"ZDA=\"}}],"
                           "\"failure\":[]}");
    free(s);
}

static void test_requests_refused(void **state)
{
    (void)state;
    moat_err err;
    static uint8_t big[MOAT_ETCD_VALUE_MAX + 1];
    moat_slice long_key = {big, MOAT_ETCD_KEY_MAX + 1};
    moat_slice long_value = {big, MOAT_ETCD_VALUE_MAX + 1};
    assert_null(moat_etcd_req_put(moat_slice_str(""), moat_slice_str("v"), 0, &err));
    assert_int_equal(err, MOAT_E_INVAL);
    assert_null(moat_etcd_req_put(long_key, moat_slice_str("v"), 0, &err));
    assert_null(moat_etcd_req_put(moat_slice_str("k"), long_value, 0, &err));
    assert_null(moat_etcd_req_range(moat_slice_str("k"), false, -1, &err));
    assert_null(moat_etcd_req_range_to(moat_slice_str("k"), (moat_slice){NULL, 0}, 0, &err));
    assert_null(moat_etcd_req_range_to(long_key, moat_slice_str("z"), 0, &err));
    assert_null(moat_etcd_req_delete(long_key, true, &err));
    assert_null(moat_etcd_req_lease_grant(0, &err));
    assert_null(moat_etcd_req_lease_id(0, &err));
    assert_int_equal(err, MOAT_E_INVAL);
    /* The largest allowed key and value are accepted. */
    char *s = moat_etcd_req_put((moat_slice){big, MOAT_ETCD_KEY_MAX},
                                (moat_slice){big, MOAT_ETCD_VALUE_MAX}, 0, &err);
    assert_non_null(s);
    free(s);

    static moat_etcd_op ops[MOAT_ETCD_TXN_OPS_MAX + 1];
    for (size_t i = 0; i < MOAT_ETCD_TXN_OPS_MAX + 1; i++)
        ops[i] = (moat_etcd_op){MOAT_ETCD_OP_RANGE, moat_slice_str("k"), {NULL, 0}, 0, false};
    moat_etcd_txn_spec txn = {NULL, 0, ops, MOAT_ETCD_TXN_OPS_MAX + 1, NULL, 0};
    assert_null(moat_etcd_req_txn(&txn, &err));
    assert_int_equal(err, MOAT_E_INVAL);
    txn.success_count = MOAT_ETCD_TXN_OPS_MAX;
    s = moat_etcd_req_txn(&txn, &err);
    assert_non_null(s);
    free(s);
    moat_etcd_cmp cmp = {moat_slice_str("k"), (moat_etcd_target)7, MOAT_ETCD_EQUAL, 0};
    moat_etcd_txn_spec bad_cmp = {&cmp, 1, NULL, 0, NULL, 0};
    assert_null(moat_etcd_req_txn(&bad_cmp, &err));
    moat_etcd_op bad_kind = {(moat_etcd_op_kind)9, moat_slice_str("k"), {NULL, 0}, 0, false};
    moat_etcd_txn_spec bad_op = {NULL, 0, NULL, 0, &bad_kind, 1};
    assert_null(moat_etcd_req_txn(&bad_op, &err));
}

static void test_answers(void **state)
{
    (void)state;
    moat_etcd_result r;
    moat_status st;
    assert_int_equal(parse(MOAT_ETCD_CALL_PUT, 200, put_ok, strlen(put_ok), &r, &st), 0);
    assert_int_equal(r.revision, 7);

    assert_int_equal(parse(MOAT_ETCD_CALL_RANGE, 200, range_ok, strlen(range_ok), &r, &st), 0);
    assert_int_equal(r.kv_count, 2);
    assert_int_equal(r.count, 5);
    assert_true(r.more);
    assert_int_equal(r.kvs[0].key_len, 3);
    assert_memory_equal(r.kvs[0].key, "foo", 3);
    assert_int_equal(r.kvs[0].value_len, 3);
    assert_memory_equal(r.kvs[0].value, "bar", 3);
    assert_int_equal(r.kvs[0].create_revision, 2);
    assert_int_equal(r.kvs[0].mod_revision, 3);
    assert_int_equal(r.kvs[0].version, 2);
    assert_int_equal(r.kvs[0].lease, 3041515534812888325LL);
    assert_null(r.kvs[1].value);
    assert_int_equal(r.kvs[1].value_len, 0);
    moat_etcd_result_free(&r);
    assert_int_equal(r.kv_count, 0);

    assert_int_equal(parse(MOAT_ETCD_CALL_RANGE, 200, range_empty, strlen(range_empty), &r, &st),
                     0);
    assert_int_equal(r.kv_count, 0);
    assert_int_equal(r.count, 0);

    assert_int_equal(parse(MOAT_ETCD_CALL_TXN, 200, txn_won, strlen(txn_won), &r, &st), 0);
    assert_true(r.succeeded);
    assert_int_equal(r.kv_count, 0);
    assert_int_equal(parse(MOAT_ETCD_CALL_TXN, 200, txn_lost, strlen(txn_lost), &r, &st), 0);
    assert_false(r.succeeded);
    assert_int_equal(r.kv_count, 1);
    assert_memory_equal(r.kvs[0].value, "1", 1);
    assert_int_equal(r.kvs[0].create_revision, 5);
    assert_int_equal(r.deleted, 2);
    moat_etcd_result_free(&r);

    assert_int_equal(parse(MOAT_ETCD_CALL_DELETE, 200, delete_ok, strlen(delete_ok), &r, &st), 0);
    assert_int_equal(r.deleted, 1);
    assert_int_equal(parse(MOAT_ETCD_CALL_LEASE_GRANT, 200, grant_ok, strlen(grant_ok), &r, &st),
                     0);
    assert_int_equal(r.lease_id, 2210319928586317060LL);
    assert_int_equal(r.ttl, 3);
    assert_int_equal(
        parse(MOAT_ETCD_CALL_LEASE_KEEPALIVE, 200, keepalive_ok, strlen(keepalive_ok), &r, &st), 0);
    assert_int_equal(r.ttl, 5);
    assert_int_equal(parse(MOAT_ETCD_CALL_LEASE_REVOKE, 200, put_ok, strlen(put_ok), &r, &st), 0);
    /* Numbers as JSON numbers are read too. */
    const char num[] = "{\"header\":{\"revision\":9},\"ID\":12,\"TTL\":4}";
    assert_int_equal(parse(MOAT_ETCD_CALL_LEASE_GRANT, 200, num, strlen(num), &r, &st), 0);
    assert_int_equal(r.revision, 9);
    assert_int_equal(r.ttl, 4);
}

static void test_errors(void **state)
{
    (void)state;
    moat_etcd_result r;
    moat_status st;
    assert_int_equal(
        parse(MOAT_ETCD_CALL_LEASE_KEEPALIVE, 200, keepalive_gone, strlen(keepalive_gone), &r, &st),
        MOAT_CODE_NOT_FOUND);
    assert_string_equal(st.reason, "etcd_lease_not_found");
    assert_int_equal(parse(MOAT_ETCD_CALL_PUT, 404, err_lease, strlen(err_lease), &r, &st),
                     MOAT_CODE_NOT_FOUND);
    assert_string_equal(st.reason, "etcd_error");
    assert_string_equal(moat_status_detail_get(&st, "etcd_code"), "5");
    assert_non_null(strstr(st.message, "requested lease not found"));
    assert_int_equal(parse(MOAT_ETCD_CALL_TXN, 503, err_timeout, strlen(err_timeout), &r, &st),
                     MOAT_CODE_UNAVAILABLE);
    assert_int_equal(
        parse(MOAT_ETCD_CALL_LEASE_KEEPALIVE, 503, err_stream, strlen(err_stream), &r, &st),
        MOAT_CODE_UNAVAILABLE);
    assert_non_null(strstr(st.message, "no leader"));
    /* An HTTP error without etcd's JSON: its status decides. */
    assert_int_equal(parse(MOAT_ETCD_CALL_RANGE, 404, "Not Found\n", 10, &r, &st),
                     MOAT_CODE_NOT_FOUND);
    assert_string_equal(st.reason, "etcd_error");
    assert_int_equal(parse(MOAT_ETCD_CALL_RANGE, 502, "", 0, &r, &st), MOAT_CODE_UNAVAILABLE);
    assert_int_equal(parse(MOAT_ETCD_CALL_RANGE, 500, "{}", 2, &r, &st), MOAT_CODE_INTERNAL);
    /* A grant's own error field. */
    const char grant_err[] = "{" HDR ",\"error\":\"lease exists\"}";
    assert_int_equal(parse(MOAT_ETCD_CALL_LEASE_GRANT, 200, grant_err, strlen(grant_err), &r, &st),
                     MOAT_CODE_UNKNOWN);
    assert_string_equal(st.reason, "etcd_error");
    /* Errors whose shape is wrong. */
    static const char *const bad_errors[] = {
        "{\"error\":\"x\"}",                 /* no code */
        "{\"error\":\"x\",\"code\":\"zz\"}", /* code not a number */
        "{\"error\":{\"grpc_code\":14}}",    /* no message */
        "{\"error\":{\"message\":\"m\"}}",   /* no code */
        "{\"error\":7}",                     /* neither shape */
    };
    for (size_t i = 0; i < sizeof(bad_errors) / sizeof(bad_errors[0]); i++) {
        assert_int_equal(
            parse(MOAT_ETCD_CALL_PUT, 503, bad_errors[i], strlen(bad_errors[i]), &r, &st),
            MOAT_CODE_INTERNAL);
        assert_string_equal(st.reason, "etcd_bad_answer");
    }
    /* An error code out of gRPC's range is UNKNOWN, with etcd's number kept. */
    const char odd[] = "{\"error\":\"x\",\"code\":99}";
    assert_int_equal(parse(MOAT_ETCD_CALL_PUT, 500, odd, strlen(odd), &r, &st), MOAT_CODE_UNKNOWN);
    assert_string_equal(moat_status_detail_get(&st, "etcd_code"), "99");
}

static void expect_bad(moat_etcd_call call, const char *body)
{
    moat_etcd_result r;
    moat_status st;
    assert_int_equal(parse(call, 200, body, strlen(body), &r, &st), MOAT_CODE_INTERNAL);
    assert_string_equal(st.reason, "etcd_bad_answer");
    moat_etcd_result_free(&r);
}

static void test_garbage(void **state)
{
    (void)state;
    expect_bad(MOAT_ETCD_CALL_PUT, "");
    expect_bad(MOAT_ETCD_CALL_PUT, "[]");
    expect_bad(MOAT_ETCD_CALL_PUT, "{}");
    expect_bad(MOAT_ETCD_CALL_PUT, "{\"header\":[]}");
    expect_bad(MOAT_ETCD_CALL_PUT, "{\"header\":{\"revision\":\"7x\"}}");
    expect_bad(MOAT_ETCD_CALL_PUT, "{\"header\":{\"revision\":1.5}}");
    expect_bad(MOAT_ETCD_CALL_PUT, "{\"header\":{\"revision\":\"99999999999999999999\"}}");
    expect_bad(MOAT_ETCD_CALL_PUT, "{\"header\":{\"revision\":\"\"}}");
    expect_bad(MOAT_ETCD_CALL_RANGE, "{" HDR ",\"kvs\":{}}");
    expect_bad(MOAT_ETCD_CALL_RANGE, "{" HDR ",\"kvs\":[{}]}");
    expect_bad(MOAT_ETCD_CALL_RANGE, "{" HDR ",\"kvs\":[7]}");
    expect_bad(MOAT_ETCD_CALL_RANGE, "{" HDR ",\"kvs\":[{\"key\":\"Zm9\"}]}");
    expect_bad(MOAT_ETCD_CALL_RANGE, "{" HDR ",\"kvs\":[{\"key\":\"Zm9v\",\"value\":1}]}");
    expect_bad(MOAT_ETCD_CALL_RANGE, "{" HDR ",\"kvs\":[{\"key\":\"Zm9v\"},{\"key\":\"!!!!\"}]}");
    expect_bad(MOAT_ETCD_CALL_RANGE, "{" HDR ",\"more\":\"yes\"}");
    expect_bad(MOAT_ETCD_CALL_TXN, "{" HDR ",\"responses\":{}}");
    expect_bad(MOAT_ETCD_CALL_TXN, "{" HDR ",\"responses\":[{\"response_other\":{}}]}");
    expect_bad(MOAT_ETCD_CALL_TXN, "{" HDR ",\"responses\":[{\"response_put\":{},\"x\":{}}]}");
    expect_bad(MOAT_ETCD_CALL_TXN, "{" HDR ",\"responses\":[{\"response_range\":[]}]}");
    expect_bad(MOAT_ETCD_CALL_TXN, "{" HDR ",\"succeeded\":1}");
    expect_bad(MOAT_ETCD_CALL_LEASE_GRANT, "{" HDR ",\"ID\":\"1\"}");
    expect_bad(MOAT_ETCD_CALL_LEASE_GRANT, "{" HDR ",\"TTL\":\"1\"}");
    expect_bad(MOAT_ETCD_CALL_LEASE_KEEPALIVE, "{" HDR ",\"ID\":\"1\",\"TTL\":\"1\"}");
    expect_bad(MOAT_ETCD_CALL_LEASE_KEEPALIVE, "{\"result\":{" HDR ",\"TTL\":\"-1\"}}");
    expect_bad(MOAT_ETCD_CALL_PUT, "{" HDR "} trailing");
    expect_bad(MOAT_ETCD_CALL_PUT, "{\"header\":{\"revision\":\"1\\u0000\"}}");
    expect_bad(MOAT_ETCD_CALL_PUT, "{\"header\":{\"revision\":\"\xff\"}}");
    expect_bad((moat_etcd_call)42, put_ok);
}

/* Keys and values past their limits are refused from their declared (encoded) size. */
static void test_limits(void **state)
{
    (void)state;
    size_t klen = (MOAT_ETCD_KEY_MAX + 3) / 3 * 4;
    size_t vlen = (MOAT_ETCD_VALUE_MAX + 3) / 3 * 4;
    char *body = malloc(vlen + 256);
    assert_non_null(body);
    for (int which = 0; which < 2; which++) {
        size_t n = which == 0 ? klen : vlen;
        int off = sprintf(body, "{" HDR ",\"kvs\":[{\"key\":\"%s",
                          which == 0 ? ""
                                     : "Zm9v\","
                                       "\"value\":\"");
        memset(body + off, 'A', n);
        strcpy(body + off + n, "\"}]}");
        expect_bad(MOAT_ETCD_CALL_RANGE, body);
    }
    free(body);
    /* An answer over the size limit is refused before it is parsed. */
    size_t huge = MOAT_ETCD_ANSWER_MAX + 1;
    char *big = malloc(huge);
    assert_non_null(big);
    memset(big, ' ', huge);
    memcpy(big, put_ok, strlen(put_ok));
    moat_etcd_result r;
    moat_status st;
    assert_int_equal(parse(MOAT_ETCD_CALL_PUT, 200, big, huge, &r, &st), MOAT_CODE_INTERNAL);
    assert_non_null(strstr(st.message, "size limit"));
    free(big);
}

typedef struct sample {
    moat_etcd_call call;
    const char *body;
} sample;

static const sample samples[] = {
    {MOAT_ETCD_CALL_PUT, put_ok},
    {MOAT_ETCD_CALL_RANGE, range_ok},
    {MOAT_ETCD_CALL_TXN, txn_won},
    {MOAT_ETCD_CALL_TXN, txn_lost},
    {MOAT_ETCD_CALL_DELETE, delete_ok},
    {MOAT_ETCD_CALL_LEASE_GRANT, grant_ok},
    {MOAT_ETCD_CALL_LEASE_KEEPALIVE, keepalive_ok},
    {MOAT_ETCD_CALL_PUT, err_lease},
    {MOAT_ETCD_CALL_LEASE_KEEPALIVE, err_stream},
};

/* The answer as it grows one byte at a time: every strict prefix is refused with a status
 * (never OK, never a crash), and only the whole answer parses as it did. */
static void test_one_byte_at_a_time(void **state)
{
    (void)state;
    for (size_t s = 0; s < sizeof(samples) / sizeof(samples[0]); s++) {
        size_t len = strlen(samples[s].body);
        moat_etcd_result r;
        moat_status st;
        moat_code whole = parse(samples[s].call, 200, samples[s].body, len, &r, &st);
        moat_etcd_result_free(&r);
        moat_buf buf;
        moat_buf_init(&buf, len);
        for (size_t i = 0; i < len; i++) {
            assert_int_equal(moat_buf_append(&buf, samples[s].body + i, 1), MOAT_OK);
            moat_code c = parse(samples[s].call, 200, (const char *)buf.data, buf.len, &r, &st);
            if (i + 1 < len) {
                assert_int_equal(c, MOAT_CODE_INTERNAL);
                assert_string_equal(st.reason, "etcd_bad_answer");
            } else {
                assert_int_equal(c, whole);
            }
            moat_etcd_result_free(&r);
        }
        moat_buf_free(&buf);
    }
}

/* Every byte of every answer replaced by each of a few hostile bytes: a status either way, and
 * nothing leaks (valgrind runs this too). */
static void test_mutations(void **state)
{
    (void)state;
    static const char hostile[] = {'\0', '"', '}', ']', 'x', '9', '\\', (char)0xff, '-', '='};
    for (size_t s = 0; s < sizeof(samples) / sizeof(samples[0]); s++) {
        size_t len = strlen(samples[s].body);
        char *copy = malloc(len);
        assert_non_null(copy);
        for (size_t i = 0; i < len; i++) {
            for (size_t h = 0; h < sizeof(hostile); h++) {
                memcpy(copy, samples[s].body, len);
                copy[i] = hostile[h];
                moat_etcd_result r;
                moat_status st;
                moat_code c = parse(samples[s].call, 200, copy, len, &r, &st);
                if (c != MOAT_CODE_OK)
                    assert_true(st.reason[0] != '\0');
                moat_etcd_result_free(&r);
            }
        }
        free(copy);
    }
}

/* The watch stream's messages: its start, a put and a delete, a cancel past a compaction, an
 * error; and every byte of the put message mutated: a status either way. */
static void test_watch_messages(void **state)
{
    (void)state;
    char *req = NULL;
    moat_err err;
    req = moat_etcd_req_watch(moat_slice_str("a/"), moat_slice_str("a0"), 7, &err);
    assert_string_equal(req, "{\"create_request\":{\"key\":\"YS8=\",\"range_end\":\"YTA=\","
                             "\"start_revision\":\"7\"}}");
    free(req);
    assert_null(moat_etcd_req_watch(moat_slice_str("a/"), (moat_slice){NULL, 0}, 7, &err));

    moat_etcd_watch_msg m;
    moat_status st;
    const char *created = "{\"result\":{\"header\":{\"revision\":\"9\"},\"created\":true}}";
    memset(&m, 0, sizeof(m));
    assert_int_equal(moat_etcd_parse_watch(created, strlen(created), &m, &st), MOAT_CODE_OK);
    assert_true(m.created);
    assert_int_equal(m.revision, 9);
    assert_int_equal(m.event_count, 0);
    moat_etcd_watch_msg_free(&m);

    const char *events =
        "{\"result\":{\"header\":{\"revision\":\"11\"},\"events\":[{\"kv\":{\"key\":\"YQ==\","
        "\"create_revision\":\"10\",\"mod_revision\":\"10\",\"version\":\"1\",\"value\":\"eA==\"}},"
        "{\"type\":\"DELETE\",\"kv\":{\"key\":\"Yg==\",\"mod_revision\":\"11\"}}]}}";
    assert_int_equal(moat_etcd_parse_watch(events, strlen(events), &m, &st), MOAT_CODE_OK);
    assert_int_equal(m.event_count, 2);
    assert_int_equal(m.events[0].version, 1);
    assert_memory_equal(m.events[0].value, "x", 1);
    assert_int_equal(m.events[1].version, 0);
    assert_memory_equal(m.events[1].key, "b", 1);
    moat_etcd_watch_msg_free(&m);

    const char *canceled = "{\"result\":{\"header\":{\"revision\":\"20\"},\"canceled\":true,"
                           "\"compact_revision\":\"15\"}}";
    assert_int_equal(moat_etcd_parse_watch(canceled, strlen(canceled), &m, &st), MOAT_CODE_OK);
    assert_true(m.canceled);
    assert_int_equal(m.compact_revision, 15);
    moat_etcd_watch_msg_free(&m);

    const char *error = "{\"error\":{\"grpc_code\":14,\"message\":\"no leader\"}}";
    assert_int_equal(moat_etcd_parse_watch(error, strlen(error), &m, &st), MOAT_CODE_UNAVAILABLE);
    assert_string_equal(st.reason, "etcd_error");
    moat_etcd_watch_msg_free(&m);
    /* A PUT that says it is one, a key that exists (version 0 is a delete's), an unknown type. */
    const char *bad[] = {"[]", "{\"result\":{}}",
                         "{\"result\":{\"header\":{\"revision\":\"1\"},\"events\":[{\"kv\":{"
                         "\"key\":\"YQ==\"}}]}}",
                         "{\"result\":{\"header\":{\"revision\":\"1\"},\"events\":[{\"type\":"
                         "\"MOVE\",\"kv\":{\"key\":\"YQ==\",\"version\":\"1\"}}]}}"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(moat_etcd_parse_watch(bad[i], strlen(bad[i]), &m, &st),
                         MOAT_CODE_INTERNAL);
        assert_string_equal(st.reason, "etcd_bad_answer");
        moat_etcd_watch_msg_free(&m);
    }

    static const char hostile[] = {'\0', '"', '}', ']', 'x', '9', '\\', (char)0xff, '-', '='};
    size_t len = strlen(events);
    char *copy = malloc(len);
    assert_non_null(copy);
    for (size_t i = 0; i < len; i++) {
        for (size_t h = 0; h < sizeof(hostile); h++) {
            memcpy(copy, events, len);
            copy[i] = hostile[h];
            moat_code c = moat_etcd_parse_watch(copy, len, &m, &st);
            if (c != MOAT_CODE_OK)
                assert_true(st.reason[0] != '\0');
            moat_etcd_watch_msg_free(&m);
        }
    }
    free(copy);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_b64),
        cmocka_unit_test(test_prefix_end),
        cmocka_unit_test(test_requests),
        cmocka_unit_test(test_requests_refused),
        cmocka_unit_test(test_answers),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_garbage),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_one_byte_at_a_time),
        cmocka_unit_test(test_mutations),
        cmocka_unit_test(test_watch_messages),
    };
    return moat_run_group_tests("test_etcd_codec", tests, NULL, NULL);
}
