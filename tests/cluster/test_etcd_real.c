/* The etcd client against a real three-member etcd on loopback (started here): every call,
 * compare-and-swap, lease expiry, a member killed, and quorum lost and regained. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>

#include "moat_test.h"

#include "cluster/etcd.h"
#include "etcd_cluster.h"

/* Generous bound on waiting for a condition (an expiry, an election): never a measurement. */
#define WAIT_S 60

typedef struct fixture {
    etcd_cluster c;
    moat_etcd *e;
} fixture;

static fixture fx;

static int group_setup(void **state)
{
    (void)state;
    return etcd_cluster_open(&fx.c, NULL, &fx.e, 2000, WAIT_S);
}

static int group_teardown(void **state)
{
    (void)state;
    etcd_cluster_close(&fx.c, &fx.e);
    return 0;
}

static void test_kv(void **state)
{
    (void)state;
    ETCD_REQUIRE();
    moat_etcd_result r;
    moat_status st;
    assert_int_equal(
        moat_etcd_put(fx.e, moat_slice_str("/t/kv/a"), moat_slice_str("1"), 0, &r, &st), 0);
    const uint8_t binary[] = {0, 1, 0xff, '"', '\\', 0};
    assert_int_equal(moat_etcd_put(fx.e, moat_slice_str("/t/kv/b"),
                                   (moat_slice){binary, sizeof(binary)}, 0, &r, &st),
                     0);
    assert_int_equal(moat_etcd_put(fx.e, moat_slice_str("/t/kw"), moat_slice_str("x"), 0, &r, &st),
                     0);
    assert_int_equal(moat_etcd_range(fx.e, moat_slice_str("/t/kv/"), true, 0, &r, &st), 0);
    assert_int_equal(r.kv_count, 2);
    assert_memory_equal(r.kvs[0].key, "/t/kv/a", 7);
    assert_int_equal(r.kvs[1].value_len, sizeof(binary));
    assert_memory_equal(r.kvs[1].value, binary, sizeof(binary));
    moat_etcd_result_free(&r);
    assert_int_equal(moat_etcd_range(fx.e, moat_slice_str("/t/kv/"), true, 1, &r, &st), 0);
    assert_int_equal(r.kv_count, 1);
    assert_true(r.more);
    assert_int_equal(r.count, 2);
    moat_etcd_result_free(&r);
    assert_int_equal(moat_etcd_delete(fx.e, moat_slice_str("/t/kv/"), true, &r, &st), 0);
    assert_int_equal(r.deleted, 2);
    assert_int_equal(moat_etcd_range(fx.e, moat_slice_str("/t/kw"), false, 0, &r, &st), 0);
    assert_int_equal(r.kv_count, 1);
    moat_etcd_result_free(&r);
}

/* The chat key's transaction: only the first creator wins; the loser reads the holder. */
static void test_compare_and_swap(void **state)
{
    (void)state;
    ETCD_REQUIRE();
    moat_etcd_result r;
    moat_status st;
    moat_slice key = moat_slice_str("/t/chats/c1");
    moat_etcd_cmp absent = {key, MOAT_ETCD_CREATE_REVISION, MOAT_ETCD_EQUAL, 0};
    moat_etcd_op get = {MOAT_ETCD_OP_RANGE, key, {NULL, 0}, 0, false};
    moat_etcd_op put1 = {MOAT_ETCD_OP_PUT, key, moat_slice_str("session-1"), 0, false};
    moat_etcd_op put2 = {MOAT_ETCD_OP_PUT, key, moat_slice_str("session-2"), 0, false};
    moat_etcd_txn_spec first = {&absent, 1, &put1, 1, &get, 1};
    moat_etcd_txn_spec second = {&absent, 1, &put2, 1, &get, 1};
    assert_int_equal(moat_etcd_txn(fx.e, &first, &r, &st), 0);
    assert_true(r.succeeded);
    int64_t rev = r.revision;
    assert_int_equal(moat_etcd_txn(fx.e, &second, &r, &st), 0);
    assert_false(r.succeeded);
    assert_int_equal(r.kv_count, 1);
    assert_memory_equal(r.kvs[0].value, "session-1", 9);
    assert_int_equal(r.kvs[0].mod_revision, rev);
    moat_etcd_result_free(&r);
    /* Replace only if nobody changed it since: a stale revision loses. */
    moat_etcd_cmp same = {key, MOAT_ETCD_MOD_REVISION, MOAT_ETCD_EQUAL, rev};
    moat_etcd_cmp stale = {key, MOAT_ETCD_MOD_REVISION, MOAT_ETCD_EQUAL, rev - 1};
    moat_etcd_txn_spec swap = {&same, 1, &put2, 1, NULL, 0};
    moat_etcd_txn_spec stale_swap = {&stale, 1, &put1, 1, NULL, 0};
    assert_int_equal(moat_etcd_txn(fx.e, &stale_swap, &r, &st), 0);
    assert_false(r.succeeded);
    assert_int_equal(moat_etcd_txn(fx.e, &swap, &r, &st), 0);
    assert_true(r.succeeded);
}

static void test_leases(void **state)
{
    (void)state;
    ETCD_REQUIRE();
    moat_etcd_result r;
    moat_status st;
    /* Revoked: its keys go at once. */
    assert_int_equal(moat_etcd_lease_grant(fx.e, 30, &r, &st), 0);
    int64_t lease = r.lease_id;
    assert_int_equal(r.ttl, 30);
    assert_int_equal(
        moat_etcd_put(fx.e, moat_slice_str("/t/lease/a"), moat_slice_str("1"), lease, &r, &st), 0);
    assert_int_equal(moat_etcd_lease_keepalive(fx.e, lease, &r, &st), 0);
    assert_int_equal(r.ttl, 30);
    assert_int_equal(moat_etcd_range(fx.e, moat_slice_str("/t/lease/a"), false, 0, &r, &st), 0);
    assert_int_equal(r.kvs[0].lease, lease);
    moat_etcd_result_free(&r);
    assert_int_equal(moat_etcd_lease_revoke(fx.e, lease, &r, &st), 0);
    assert_int_equal(etcd_cluster_key_count(fx.e, "/t/lease/a"), 0);
    assert_int_equal(moat_etcd_lease_keepalive(fx.e, lease, &r, &st), MOAT_CODE_NOT_FOUND);
    assert_string_equal(st.reason, "etcd_lease_not_found");
    assert_int_equal(
        moat_etcd_put(fx.e, moat_slice_str("/t/lease/a"), moat_slice_str("1"), lease, &r, &st),
        MOAT_CODE_NOT_FOUND);
    assert_string_equal(st.reason, "etcd_error");

    /* Not kept alive: its keys go when it expires. */
    assert_int_equal(moat_etcd_lease_grant(fx.e, 1, &r, &st), 0);
    assert_int_equal(
        moat_etcd_put(fx.e, moat_slice_str("/t/lease/b"), moat_slice_str("1"), r.lease_id, &r, &st),
        0);
    int waited = 0;
    while (etcd_cluster_key_count(fx.e, "/t/lease/b") != 0 && waited++ < WAIT_S * 10)
        etcd_cluster_sleep_ms(100);
    assert_int_equal(etcd_cluster_key_count(fx.e, "/t/lease/b"), 0);
}

/* Calls that must go through while one member is down. */
static void exercise(const char *key)
{
    moat_etcd_result r;
    moat_status st;
    assert_int_equal(moat_etcd_lease_grant(fx.e, 30, &r, &st), 0);
    int64_t lease = r.lease_id;
    for (int i = 0; i < 20; i++) {
        assert_int_equal(
            moat_etcd_put(fx.e, moat_slice_str(key), moat_slice_str("v"), lease, &r, &st), 0);
        assert_int_equal(moat_etcd_range(fx.e, moat_slice_str(key), false, 0, &r, &st), 0);
        assert_int_equal(r.kv_count, 1);
        moat_etcd_result_free(&r);
        assert_int_equal(moat_etcd_lease_keepalive(fx.e, lease, &r, &st), 0);
    }
    assert_int_equal(moat_etcd_lease_revoke(fx.e, lease, &r, &st), 0);
}

/* Writes go to a leader; wait (bounded) until the survivors have one, as a client would
 * retry an UNAVAILABLE create. */
static void wait_for_quorum(void)
{
    moat_etcd_result r;
    moat_status st;
    moat_code code = MOAT_CODE_UNAVAILABLE;
    for (int i = 0; i < WAIT_S * 10 && code != MOAT_CODE_OK; i++) {
        code = moat_etcd_put(fx.e, moat_slice_str("/t/quorum"), moat_slice_str("1"), 0, &r, &st);
        if (code != MOAT_CODE_OK) {
            assert_int_equal(code, MOAT_CODE_UNAVAILABLE);
            etcd_cluster_sleep_ms(100);
        }
    }
    assert_int_equal(code, MOAT_CODE_OK);
}

static void test_member_killed(void **state)
{
    (void)state;
    ETCD_REQUIRE();
    exercise("/t/member/warm");
    /* Every member in turn, the one the client uses first (it answered last) included. */
    for (int m = 0; m < ETCD_CLUSTER_MEMBERS; m++) {
        etcd_cluster_kill(&fx.c, m);
        wait_for_quorum();
        exercise("/t/member/key");
        assert_int_equal(etcd_cluster_restart(&fx.c, m), 0);
    }
}

static void test_quorum_lost(void **state)
{
    (void)state;
    ETCD_REQUIRE();
    wait_for_quorum();
    etcd_cluster_kill(&fx.c, 1);
    etcd_cluster_kill(&fx.c, 2);
    moat_etcd_result r;
    moat_status st;
    /* A status with a reason, within the request timeout: nothing hangs. */
    assert_int_equal(moat_etcd_put(fx.e, moat_slice_str("/t/q"), moat_slice_str("1"), 0, &r, &st),
                     MOAT_CODE_UNAVAILABLE);
    assert_true(strcmp(st.reason, "etcd_unavailable") == 0 || strcmp(st.reason, "etcd_error") == 0);
    assert_int_equal(moat_etcd_lease_grant(fx.e, 5, &r, &st), MOAT_CODE_UNAVAILABLE);
    etcd_cluster_kill(&fx.c, 0);
    assert_int_equal(moat_etcd_range(fx.e, moat_slice_str("/t/q"), false, 0, &r, &st),
                     MOAT_CODE_UNAVAILABLE);
    assert_string_equal(st.reason, "etcd_unavailable");
    /* Back: the same client recovers. */
    for (int m = 0; m < ETCD_CLUSTER_MEMBERS; m++)
        assert_int_equal(etcd_cluster_restart(&fx.c, m), 0);
    wait_for_quorum();
    exercise("/t/q");
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_ALL);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kv),          cmocka_unit_test(test_compare_and_swap),
        cmocka_unit_test(test_leases),      cmocka_unit_test(test_member_killed),
        cmocka_unit_test(test_quorum_lost),
    };
    int rc = moat_run_group_tests("test_etcd_real", tests, group_setup, group_teardown);
    curl_global_cleanup();
    return rc;
}
