/* The node's copy of the directory (src/cluster/dircache.h) against a real three-member etcd on
 * loopback (started here), with no moatd: a record looked up in the copy with its owner's
 * standing from the copied member list, garbage members judged as etcd's reads judge them; a
 * member whose lease is revoked (a node's death) makes its records' owner lost through the copy,
 * in listings too, and a new incarnation of the node does not revive them; a record the copy
 * does not hold yet is read from etcd. That one is made deterministic by stopping (SIGSTOP) the
 * one member the copy watches through, so the copy stays in step as far as it knows while the
 * other two commit a record it cannot see; and that member cut off from the other two (they are
 * stopped) ends the copy's watch, so it stops answering. Every wait is for a condition, bounded
 * generously, never a measured time. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

#include "moat_test.h"

#include "cluster/dircache.h"
#include "cluster_calls.h"
#include "etcd_cluster.h"

#define WAIT_S 60

static etcd_cluster cl;
static moat_etcd *etcd;
/* What a test started, for the teardown when it failed half-way. */
static moat_dircache *dc;
static moat_etcd *first, *others;

static void stop_all(void)
{
    moat_dircache_stop(dc);
    dc = NULL;
    moat_etcd_close(first);
    moat_etcd_close(others);
    first = others = NULL;
}

static int group_setup(void **state)
{
    (void)state;
    return etcd_cluster_open(&cl, NULL, &etcd, 1000, WAIT_S);
}

static int group_teardown(void **state)
{
    (void)state;
    stop_all();
    etcd_cluster_close(&cl, &etcd);
    return 0;
}

/* A client of members [from, from + count). */
static moat_etcd *open_members(int from, int count)
{
    moat_etcd_config cfg = {.endpoints = &cl.urls[from],
                            .endpoint_count = (size_t)count,
                            .connect_timeout_ms = 500,
                            .request_timeout_ms = 1000};
    moat_status st;
    moat_etcd *e = moat_etcd_open(&cfg, &st);
    assert_non_null(e);
    return e;
}

/* What the copy (or etcd behind it) says of sid. */
typedef struct lookup {
    moat_code code;
    moat_dir_found found;
    moat_dir_entry e;
    bool from_copy;
    moat_status st;
} lookup;

static lookup get(moat_dircache *d, moat_etcd *fallback, const char *sid)
{
    lookup l;
    moat_status_clear(&l.st);
    l.code = moat_dircache_get(d, fallback, sid, &l.found, &l.e, &l.from_copy, &l.st);
    return l;
}

/* Whether the copy answered sid itself, found, with its owner live or not. */
static bool copy_says(moat_dircache *d, const char *sid, bool live)
{
    lookup l = get(d, etcd, sid);
    return l.code == MOAT_CODE_OK && l.from_copy && l.found == MOAT_DIR_FOUND &&
           l.e.owner_live == live;
}

static bool in_step(moat_dircache *d)
{
    moat_dir_entry *out = NULL;
    size_t count = 0, skipped = 0;
    bool from_cache = false;
    moat_status st;
    moat_dircache_list(d, "", 100000, &out, &count, &skipped, &from_cache, &st);
    free(out);
    return from_cache;
}

/* A copy in step, with member id registered under *lease. */
static moat_dircache *start_with_member(const char *id, int64_t *lease)
{
    moat_dircache *d = dc = moat_dircache_start(etcd);
    assert_non_null(d);
    ETCD_WAIT_FOR(in_step(d), WAIT_S);
    *lease = rc_put_member(etcd, id, "127.0.0.1:7999");
    assert_true(*lease != 0);
    return d;
}

/* Running, ended, garbage, another incarnation's and absent records: each as etcd says it. */
static void test_lookup(void **state)
{
    (void)state;
    ETCD_REQUIRE();
    int64_t lease;
    moat_dircache *d = start_with_member("dc-a", &lease);
    char run[MOAT_UUID_STR_LEN], ended[MOAT_UUID_STR_LEN], bad[MOAT_UUID_STR_LEN],
        older[MOAT_UUID_STR_LEN], none[MOAT_UUID_STR_LEN], chat[MOAT_UUID_STR_LEN];
    moat_uuid_generate(run);
    moat_uuid_generate(ended);
    moat_uuid_generate(bad);
    moat_uuid_generate(older);
    moat_uuid_generate(none);
    moat_uuid_generate(chat);
    rc_put_record(etcd, run, chat, "dc-a", lease, "127.0.0.1:7999", MOAT_RECORD_RUNNING, "");
    rc_put_record(etcd, ended, chat, "dc-a", lease, "127.0.0.1:7999", MOAT_RECORD_ENDED, "stopped");
    rc_put_raw(etcd, bad, "{\"node_id\": 12, not json");
    rc_put_record(etcd, older, chat, "dc-a", lease + 1, "127.0.0.1:7999", MOAT_RECORD_RUNNING, "");
    ETCD_WAIT_FOR(copy_says(d, run, true), WAIT_S);
    lookup l = get(d, etcd, run);
    assert_string_equal(l.e.rec.address, "127.0.0.1:7999");
    assert_string_equal(l.e.rec.chat_id, chat);
    assert_int_equal(l.e.rec.state, MOAT_RECORD_RUNNING);
    ETCD_WAIT_FOR(copy_says(d, ended, true), WAIT_S);
    assert_int_equal(get(d, etcd, ended).e.rec.state, MOAT_RECORD_ENDED);
    ETCD_WAIT_FOR(copy_says(d, older, false), WAIT_S);
    ETCD_WAIT_FOR((l = get(d, etcd, bad), l.from_copy), WAIT_S);
    assert_int_equal(l.code, MOAT_CODE_OK);
    assert_int_equal(l.found, MOAT_DIR_INVALID);
    /* Absent from the copy: etcd is asked, and has none either. */
    l = get(d, etcd, none);
    assert_int_equal(l.code, MOAT_CODE_OK);
    assert_false(l.from_copy);
    assert_int_equal(l.found, MOAT_DIR_ABSENT);
    /* Hostile ids: refused as moat_directory_get refuses them, the copy never searched. */
    const char *ids[] = {"not-a-uuid", "", "0F8FAD5B-D9CB-469F-A165-70867728950E",
                         "../../nodes/dc-a"};
    for (size_t i = 0; i < sizeof(ids) / sizeof(ids[0]); i++) {
        l = get(d, etcd, ids[i]);
        assert_int_equal(l.code, MOAT_CODE_INVALID_ARGUMENT);
        assert_string_equal(l.st.reason, "invalid_session_id");
        assert_false(l.from_copy);
    }
    stop_all();
    rc_revoke(etcd, lease);
    rc_clear_records(etcd);
}

static void put_raw_key(const char *key, const char *value, int64_t lease)
{
    moat_etcd_result res;
    moat_status st;
    assert_int_equal(
        moat_etcd_put(etcd, moat_slice_str(key), moat_slice_str(value), lease, &res, &st),
        MOAT_CODE_OK);
    moat_etcd_result_free(&res);
}

/* Garbage in the watched range: a member whose value is not a node record is judged by the copy
 * as etcd's reads judge it (a lookup by its key and lease, as moat_directory_get; a listing
 * leaves it out of the members, as moat_directory_list), and a key between the two prefixes is
 * not the copy's and stops nothing. */
static void test_garbage_member(void **state)
{
    (void)state;
    ETCD_REQUIRE();
    int64_t lease;
    moat_dircache *d = start_with_member("dc-g", &lease);
    put_raw_key(MOAT_NODES_PREFIX "dc-g", "{\"address\": 7, not json", lease);
    put_raw_key("/moat/v1/other", "whatever", 0);
    char sid[MOAT_UUID_STR_LEN], chat[MOAT_UUID_STR_LEN];
    moat_uuid_generate(sid);
    moat_uuid_generate(chat);
    rc_put_record(etcd, sid, chat, "dc-g", lease, "127.0.0.1:7999", MOAT_RECORD_RUNNING, "");
    lookup l;
    ETCD_WAIT_FOR((l = get(d, etcd, sid), l.from_copy), WAIT_S);
    moat_dir_found found;
    moat_dir_entry e;
    moat_status st;
    assert_int_equal(moat_directory_get(etcd, sid, &found, &e, &st), MOAT_CODE_OK);
    assert_int_equal(l.found, found);
    assert_int_equal(l.e.owner_live, e.owner_live);
    moat_dir_entry *copied = NULL, *read = NULL;
    size_t ncopied = 0, nread = 0, skipped = 0;
    bool from_cache = false;
    assert_int_equal(moat_dircache_list(d, chat, 10, &copied, &ncopied, &skipped, &from_cache, &st),
                     MOAT_CODE_OK);
    assert_true(from_cache);
    assert_int_equal(moat_directory_list(etcd, chat, 10, &read, &nread, &skipped, &st),
                     MOAT_CODE_OK);
    assert_int_equal(ncopied, 1);
    assert_int_equal(nread, 1);
    assert_int_equal(copied[0].owner_live, read[0].owner_live);
    free(copied);
    free(read);
    stop_all();
    rc_revoke(etcd, lease);
    moat_etcd_result res;
    moat_etcd_delete(etcd, moat_slice_str("/moat/v1/other"), false, &res, &st);
    moat_etcd_result_free(&res);
    rc_clear_records(etcd);
}

/* A member's lease revoked (what its expiry does): its records' owner is lost through the copy,
 * in a listing too; the node back under a new lease does not revive the old incarnation's
 * records, and its new ones are live. */
static void test_node_death(void **state)
{
    (void)state;
    ETCD_REQUIRE();
    int64_t lease;
    moat_dircache *d = start_with_member("dc-b", &lease);
    char sid[MOAT_UUID_STR_LEN], later[MOAT_UUID_STR_LEN], chat[MOAT_UUID_STR_LEN];
    moat_uuid_generate(sid);
    moat_uuid_generate(later);
    moat_uuid_generate(chat);
    rc_put_record(etcd, sid, chat, "dc-b", lease, "127.0.0.1:7999", MOAT_RECORD_RUNNING, "");
    ETCD_WAIT_FOR(copy_says(d, sid, true), WAIT_S);
    rc_revoke(etcd, lease);
    ETCD_WAIT_FOR(copy_says(d, sid, false), WAIT_S);
    moat_dir_entry *out = NULL;
    size_t count = 0, skipped = 0;
    bool from_cache = false;
    moat_status st;
    assert_int_equal(moat_dircache_list(d, chat, 100, &out, &count, &skipped, &from_cache, &st),
                     MOAT_CODE_OK);
    assert_true(from_cache);
    assert_int_equal(count, 1);
    assert_false(out[0].owner_live);
    free(out);
    int64_t again = rc_put_member(etcd, "dc-b", "127.0.0.1:7999");
    assert_true(again != 0 && again != lease);
    rc_put_record(etcd, later, chat, "dc-b", again, "127.0.0.1:7999", MOAT_RECORD_RUNNING, "");
    ETCD_WAIT_FOR(copy_says(d, later, true), WAIT_S);
    assert_true(copy_says(d, sid, false));
    assert_int_equal(moat_dircache_list(d, chat, 100, &out, &count, &skipped, &from_cache, &st),
                     MOAT_CODE_OK);
    assert_int_equal(count, 2);
    assert_int_equal(out[0].owner_live + out[1].owner_live, 1);
    free(out);
    stop_all();
    rc_revoke(etcd, again);
    rc_clear_records(etcd);
}

/* A record committed while the copy's member is stopped: the copy, in step as far as it knows,
 * lacks it, and the lookup reads it from etcd; once the member runs again the copy has it. */
static void test_not_in_copy_yet(void **state)
{
    (void)state;
    ETCD_REQUIRE();
    first = open_members(0, 1);
    others = open_members(1, 2);
    moat_dircache *d = dc = moat_dircache_start(first);
    assert_non_null(d);
    ETCD_WAIT_FOR(in_step(d), WAIT_S);
    assert_int_equal(kill(cl.pid[0], SIGSTOP), 0);
    char sid[MOAT_UUID_STR_LEN], chat[MOAT_UUID_STR_LEN];
    moat_uuid_generate(sid);
    moat_uuid_generate(chat);
    /* The two others may first elect a leader (member 0 may have been it). */
    int64_t lease = 0;
    ETCD_WAIT_FOR((lease = lease != 0 ? lease : rc_put_member(others, "dc-c", "127.0.0.1:7999")) !=
                      0,
                  WAIT_S);
    rc_put_record(others, sid, chat, "dc-c", lease, "127.0.0.1:7999", MOAT_RECORD_RUNNING, "");
    assert_true(in_step(d));
    lookup l = get(d, others, sid);
    assert_int_equal(l.code, MOAT_CODE_OK);
    assert_false(l.from_copy);
    assert_int_equal(l.found, MOAT_DIR_FOUND);
    assert_true(l.e.owner_live);
    assert_int_equal(kill(cl.pid[0], SIGCONT), 0);
    ETCD_WAIT_FOR((l = get(d, others, sid), l.from_copy && l.e.owner_live), WAIT_S);
    stop_all();
    rc_revoke(etcd, lease);
    rc_clear_records(etcd);
}

/* The copy's member cut off from the two others (they are stopped): it loses its leader, etcd
 * ends the watch (the copy asked it to), and the copy, no longer in step, reads etcd (which
 * cannot answer) instead of answering from a view that no longer moves. */
static void test_member_cut_off(void **state)
{
    (void)state;
    ETCD_REQUIRE();
    first = open_members(0, 1);
    moat_dircache *d = dc = moat_dircache_start(first);
    assert_non_null(d);
    ETCD_WAIT_FOR(in_step(d), WAIT_S);
    assert_int_equal(kill(cl.pid[1], SIGSTOP), 0);
    assert_int_equal(kill(cl.pid[2], SIGSTOP), 0);
    ETCD_WAIT_FOR(!in_step(d), WAIT_S);
    assert_int_equal(kill(cl.pid[1], SIGCONT), 0);
    assert_int_equal(kill(cl.pid[2], SIGCONT), 0);
    ETCD_WAIT_FOR(in_step(d), WAIT_S);
    stop_all();
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_ALL);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lookup),         cmocka_unit_test(test_garbage_member),
        cmocka_unit_test(test_node_death),     cmocka_unit_test(test_not_in_copy_yet),
        cmocka_unit_test(test_member_cut_off),
    };
    int rc = moat_run_group_tests("test_dircache_real", tests, group_setup, group_teardown);
    curl_global_cleanup();
    return rc;
}
