/* Renewals in batches (src/cluster/renewals.h, moat_dir_renew_batch) against a real
 * three-member etcd on loopback (started here), without moatd: many renewals made at once from
 * several threads all move their records and take fewer etcd calls than one at a time would; a
 * record changed or ended behind a batch's back between its read and its write is renewed (or
 * answered ended) alone while the others go together; absent, foreign, garbage, non-UUID and
 * repeated entries in one batch; and etcd down (every member killed, or one that never answers):
 * every caller gets etcd_unavailable, none hangs. No timing thresholds: a hang is the test's
 * timeout. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include "moat_test.h"

#include "cluster/renewals.h"
#include "cluster_calls.h"
#include "etcd_cluster.h"
#include "fake_etcd.h"

#define WAIT_S  60
#define NODE    "rn-node"
#define ADDR    "127.0.0.1:1"
#define THREADS 10
#define EACH    5
#define MANY    (THREADS * EACH)

static etcd_cluster cl;
static moat_etcd *etcd;
/* What a test started, for the teardown when it failed half-way. */
static moat_renewals *ren;
static moat_etcd *other;
static fake_etcd fake;
static bool fake_started;

static void stop_all(void)
{
    moat_renewals_close(ren);
    ren = NULL;
    moat_etcd_close(other);
    other = NULL;
    if (fake_started)
        fake_etcd_stop(&fake);
    fake_started = false;
}

static int group_setup(void **state)
{
    (void)state;
    return etcd_cluster_open(&cl, NULL, &etcd, 2000, WAIT_S);
}

static int group_teardown(void **state)
{
    (void)state;
    stop_all();
    etcd_cluster_close(&cl, &etcd);
    return 0;
}

static int case_teardown(void **state)
{
    (void)state;
    stop_all();
    return 0;
}

/* n running records of NODE, their ids into sids. */
static void put_records(char (*sids)[MOAT_UUID_STR_LEN], size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char chat[MOAT_UUID_STR_LEN];
        moat_uuid_generate(sids[i]);
        moat_uuid_generate(chat);
        rc_put_record(etcd, sids[i], chat, NODE, 7, ADDR, MOAT_RECORD_RUNNING, "");
    }
}

/* MANY records of NODE into sids, and ren for NODE. */
static void open_with_records(char (*sids)[MOAT_UUID_STR_LEN])
{
    put_records(sids, MANY);
    ren = moat_renewals_open(etcd, NODE);
    assert_non_null(ren);
}

static int64_t expiry_of(const char *sid)
{
    bool found;
    moat_session_record rec = rc_record_of(etcd, sid, &found);
    assert_true(found);
    return rec.expires_at_ms;
}

/* n renewals of ids to at (free()). */
static moat_dir_renewal *renewals_of(char (*ids)[MOAT_UUID_STR_LEN], size_t n, int64_t at)
{
    moat_dir_renewal *r = calloc(n, sizeof(*r));
    assert_non_null(r);
    for (size_t i = 0; i < n; i++) {
        snprintf(r[i].session_id, sizeof(r[i].session_id), "%.36s", ids[i]);
        r[i].expires_at_ms = at;
    }
    return r;
}

/* A thread's renewals: EACH of sids from first on, all released at once by the barrier. */
typedef struct renewer {
    pthread_t t;
    pthread_barrier_t *go;
    char (*sids)[MOAT_UUID_STR_LEN];
    size_t first;
    int64_t at;
    moat_code code[EACH];
    bool owned[EACH], ended[EACH];
    char reason[EACH][64];
} renewer;

static void *renew_thread(void *arg)
{
    renewer *w = arg;
    pthread_barrier_wait(w->go);
    for (size_t i = 0; i < EACH; i++) {
        moat_status st;
        moat_status_clear(&st);
        w->code[i] =
            moat_renewals_renew(ren, w->sids[w->first + i], w->at, &w->owned[i], &w->ended[i], &st);
        snprintf(w->reason[i], sizeof(w->reason[i]), "%s", st.reason);
    }
    return NULL;
}

/* MANY renewals from THREADS threads at once; each renewer's answers are left in w. */
static void renew_at_once(char (*sids)[MOAT_UUID_STR_LEN], int64_t at, renewer *w)
{
    pthread_barrier_t go;
    pthread_barrier_init(&go, NULL, THREADS);
    for (size_t t = 0; t < THREADS; t++) {
        w[t] = (renewer){.go = &go, .sids = sids, .first = t * EACH, .at = at};
        assert_int_equal(pthread_create(&w[t].t, NULL, renew_thread, &w[t]), 0);
    }
    for (size_t t = 0; t < THREADS; t++)
        pthread_join(w[t].t, NULL);
    pthread_barrier_destroy(&go);
}

/* MANY sessions renewed at once from THREADS threads: every one answered OK and moved in etcd,
 * in fewer batches than renewals and fewer etcd calls than the two each of one at a time. */
static void test_concurrent(void **state)
{
    (void)state;
    ETCD_REQUIRE();
    static char sids[MANY][MOAT_UUID_STR_LEN];
    open_with_records(sids);
    int64_t at = moat_time_now_ms() + 3600000;
    renewer w[THREADS];
    renew_at_once(sids, at, w);
    for (size_t t = 0; t < THREADS; t++) {
        for (size_t i = 0; i < EACH; i++) {
            assert_int_equal(w[t].code[i], MOAT_CODE_OK);
            assert_true(w[t].owned[i]);
            assert_false(w[t].ended[i]);
        }
    }
    for (size_t i = 0; i < MANY; i++)
        assert_int_equal(expiry_of(sids[i]), at);
    moat_renewals_stats s = moat_renewals_stats_get(ren);
    printf("# %d renewals in %llu batches, %llu etcd calls\n", MANY, (unsigned long long)s.batches,
           (unsigned long long)s.etcd_calls);
    assert_int_equal(s.renewals, MANY);
    assert_true(s.batches < MANY);
    assert_true(s.etcd_calls < 2 * MANY);
}

/* Between a batch's read and its write, one record is rewritten and one ended by someone else:
 * the write's compare fails, the other eight go together in one more transaction, the rewritten
 * one is renewed alone (its other fields kept), the ended one answered ended and left ended. */
static void test_moved_alone(void **state)
{
    (void)state;
    ETCD_REQUIRE();
    enum { N = 10, MOVED = 3, ENDED = 7 };
    char sids[N][MOAT_UUID_STR_LEN];
    put_records(sids, N);
    int64_t at = moat_time_now_ms() + 3600000;
    moat_dir_renewal *r = renewals_of(sids, N, at);
    assert_int_equal(moat_dir_renew_read(etcd, NODE, r, N), 1);
    for (size_t i = 0; i < N; i++)
        assert_false(r[i].done);
    moat_session_record moved = rc_record_of(etcd, sids[MOVED], &(bool){false});
    snprintf(moved.address, sizeof(moved.address), "127.0.0.1:2");
    char key[MOAT_RECORD_KEY_MAX], value[MOAT_RECORD_VALUE_MAX];
    size_t vn = moat_session_record_encode(&moved, value, sizeof(value));
    assert_true(moat_session_record_key(sids[MOVED], key, sizeof(key)) > 0 && vn > 0);
    rc_put_key(etcd, key, value, vn, 0);
    rc_put_record(etcd, sids[ENDED], sids[ENDED], NODE, 7, ADDR, MOAT_RECORD_ENDED, "stopped");
    /* The failed write, the eight again, the moved one's read and write, the ended one's read. */
    size_t calls = moat_dir_renew_write(etcd, NODE, r, N);
    for (size_t i = 0; i < N; i++) {
        assert_true(r[i].done);
        assert_int_equal(r[i].code, MOAT_CODE_OK);
        assert_int_equal(r[i].written, i != ENDED);
        assert_int_equal(r[i].ended, i == ENDED);
        assert_int_equal(r[i].alone, i == MOVED || i == ENDED);
    }
    assert_int_equal(calls, 5);
    for (size_t i = 0; i < N; i++) {
        bool found;
        moat_session_record rec = rc_record_of(etcd, sids[i], &found);
        assert_true(found);
        if (i == ENDED) {
            assert_int_equal(rec.state, MOAT_RECORD_ENDED);
            assert_int_not_equal(rec.expires_at_ms, at);
            continue;
        }
        assert_int_equal(rec.expires_at_ms, at);
        assert_string_equal(rec.address, i == MOVED ? "127.0.0.1:2" : ADDR);
    }
    free(r);
}

/* One batch with every kind of entry: absent, another node's, garbage, an id that is no UUID,
 * the same session twice, and a plain one. */
static void test_hostile_batch(void **state)
{
    (void)state;
    ETCD_REQUIRE();
    enum { N = 7 };
    char ids[N][MOAT_UUID_STR_LEN];
    for (size_t i = 0; i < N; i++)
        moat_uuid_generate(ids[i]);
    rc_put_record(etcd, ids[1], ids[1], "rn-other", 7, ADDR, MOAT_RECORD_RUNNING, "");
    rc_put_raw(etcd, ids[2], "{\"session_id\": 7, garbage");
    snprintf(ids[3], sizeof(ids[3]), "../../nodes/x");
    rc_put_record(etcd, ids[4], ids[4], NODE, 7, ADDR, MOAT_RECORD_RUNNING, "");
    snprintf(ids[5], sizeof(ids[5]), "%s", ids[4]);
    rc_put_record(etcd, ids[6], ids[6], NODE, 7, ADDR, MOAT_RECORD_RUNNING, "");
    int64_t at = moat_time_now_ms() + 3600000;
    moat_dir_renewal *r = renewals_of(ids, N, at);
    moat_dir_renew_batch(etcd, NODE, r, N);
    const moat_code code[N] = {MOAT_CODE_OK, MOAT_CODE_OK, MOAT_CODE_INTERNAL, MOAT_CODE_INTERNAL,
                               MOAT_CODE_OK, MOAT_CODE_OK, MOAT_CODE_OK};
    const bool written[N] = {false, false, false, false, true, true, true};
    for (size_t i = 0; i < N; i++) {
        assert_true(r[i].done);
        assert_int_equal(r[i].code, code[i]);
        assert_int_equal(r[i].written, written[i]);
        assert_false(r[i].ended);
        if (code[i] != MOAT_CODE_OK)
            assert_string_equal(r[i].status.reason, "cluster_record_invalid");
    }
    assert_true(r[5].alone);
    assert_int_equal(expiry_of(ids[4]), at);
    assert_int_equal(expiry_of(ids[6]), at);
    bool found;
    assert_int_not_equal(rc_record_of(etcd, ids[1], &found).expires_at_ms, at);
    rc_record_of(etcd, ids[0], &found);
    assert_false(found);
    free(r);
}

/* Every caller of a batch answered etcd_unavailable. */
static void all_unavailable(const renewer *w)
{
    for (size_t t = 0; t < THREADS; t++) {
        for (size_t i = 0; i < EACH; i++) {
            assert_int_equal(w[t].code[i], MOAT_CODE_UNAVAILABLE);
            assert_string_equal(w[t].reason[i], "etcd_unavailable");
            assert_false(w[t].owned[i]);
        }
    }
}

/* Every member killed: all renewals at once answer etcd_unavailable; with etcd back, they work. */
static void test_etcd_down(void **state)
{
    (void)state;
    ETCD_REQUIRE();
    static char sids[MANY][MOAT_UUID_STR_LEN];
    open_with_records(sids);
    for (int m = 0; m < ETCD_CLUSTER_MEMBERS; m++)
        etcd_cluster_kill(&cl, m);
    renewer w[THREADS];
    renew_at_once(sids, moat_time_now_ms() + 3600000, w);
    for (int m = 0; m < ETCD_CLUSTER_MEMBERS; m++)
        assert_int_equal(etcd_cluster_restart(&cl, m), 0);
    all_unavailable(w);
    int64_t at = moat_time_now_ms() + 7200000;
    bool owned = false, ended;
    moat_status st;
    ETCD_WAIT_FOR(moat_renewals_renew(ren, sids[0], at, &owned, &ended, &st) == MOAT_CODE_OK,
                  WAIT_S);
    assert_true(owned);
    assert_int_equal(expiry_of(sids[0]), at);
}

/* A member that takes the requests and never answers: every renewal ends etcd_unavailable at
 * the client's timeout (the batch's read), none hangs. */
static void test_etcd_hangs(void **state)
{
    (void)state;
    assert_int_equal(fake_etcd_start(&fake), 0);
    fake_started = true;
    fake_etcd_set(&fake, FAKE_ETCD_HANG, 200, "{}");
    const char *eps[] = {fake.url};
    moat_etcd_config cfg = {.endpoints = eps, .endpoint_count = 1, .request_timeout_ms = 300};
    moat_status st;
    other = moat_etcd_open(&cfg, &st);
    assert_non_null(other);
    ren = moat_renewals_open(other, NODE);
    assert_non_null(ren);
    static char sids[MANY][MOAT_UUID_STR_LEN];
    for (size_t i = 0; i < MANY; i++)
        moat_uuid_generate(sids[i]);
    renewer w[THREADS];
    renew_at_once(sids, moat_time_now_ms() + 3600000, w);
    all_unavailable(w);
    moat_renewals_stats s = moat_renewals_stats_get(ren);
    assert_int_equal(s.renewals, MANY);
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_concurrent, case_teardown),
        cmocka_unit_test_teardown(test_moved_alone, case_teardown),
        cmocka_unit_test_teardown(test_hostile_batch, case_teardown),
        cmocka_unit_test_teardown(test_etcd_hangs, case_teardown),
        cmocka_unit_test_teardown(test_etcd_down, case_teardown),
    };
    int rc = cmocka_run_group_tests(tests, group_setup, group_teardown);
    curl_global_cleanup();
    return rc;
}
