/* The janitor with real parts: a three-member etcd started here and two real moatd nodes (no
 * engine needed) with a grace of 2 s. One of them holds the janitor key under its lease; the
 * records of an incarnation that is not a member go after the grace, and only those (a live
 * node's record and one that does not decode stay); the janitor SIGKILLed, the other node takes
 * the key, and the dead node's records go in their turn. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/wait.h>
#include <signal.h>

#include <curl/curl.h>

#include "moat_test.h"

#include "cluster/janitor.h"
#include "cluster_calls.h"
#include "etcd_cluster.h"
#include "harness.h"

#define WAIT_S 60
#define NODES  2

static etcd_cluster cl;
static moat_etcd *etcd;
static rc_node nodes[NODES];

static int group_teardown(void **state);

static int group_setup(void **state)
{
    (void)state;
    if (etcd_cluster_open(&cl, NULL, &etcd, 1000, WAIT_S) != 0)
        return -1;
    if (!etcd_cluster_available())
        return 0;
    const char *extra[] = {"--cluster_janitor_grace_seconds=2", NULL};
    for (int i = 0; i < NODES; i++)
        if (!rc_node_start(&nodes[i], &cl, "jan", i, false, extra, false, NULL))
            goto failed;
    return 0;
failed:
    group_teardown(state);
    return -1;
}

static int group_teardown(void **state)
{
    (void)state;
    rc_cluster_close(nodes, NODES, &cl, &etcd);
    return 0;
}

/* The janitor key's holder: the node index, or -1 when none holds it. */
static int janitor_holder(void)
{
    moat_etcd_result r;
    moat_status st;
    int who = -1;
    if (moat_etcd_range(etcd, moat_slice_str(MOAT_JANITOR_KEY), false, 1, &r, &st) ==
            MOAT_CODE_OK &&
        r.kv_count == 1) {
        char holder[MOAT_NODE_ID_MAX] = "";
        moat_home_record_decode(r.kvs[0].value, r.kvs[0].value_len, holder);
        for (int i = 0; i < NODES; i++) {
            moat_node n;
            if (strcmp(holder, nodes[i].id) == 0 &&
                etcd_cluster_lists_node(etcd, nodes[i].id, &n) && n.lease == r.kvs[0].lease)
                who = i;
        }
    }
    moat_etcd_result_free(&r);
    return who;
}

static bool record_exists(const char *sid)
{
    char key[MOAT_RECORD_KEY_MAX];
    size_t n = moat_session_record_key(sid, key, sizeof(key));
    moat_etcd_result r;
    moat_status st;
    bool there = moat_etcd_range(etcd, (moat_slice){(const uint8_t *)key, n}, false, 1, &r, &st) ==
                     MOAT_CODE_OK &&
                 r.kv_count == 1;
    moat_etcd_result_free(&r);
    return there;
}

static int64_t lease_of(int i)
{
    moat_node n;
    assert_true(etcd_cluster_lists_node(etcd, nodes[i].id, &n));
    return n.lease;
}

static void test_gone_records_removed(void **state)
{
    (void)state;
    ETCD_REQUIRE();
    for (int i = 0; i < NODES; i++)
        ETCD_WAIT_FOR(etcd_cluster_lists_node(etcd, nodes[i].id, NULL), WAIT_S);
    ETCD_WAIT_FOR(janitor_holder() >= 0, WAIT_S);
    char gone[2][MOAT_UUID_STR_LEN], live[MOAT_UUID_STR_LEN], bad[MOAT_UUID_STR_LEN];
    char chat[MOAT_UUID_STR_LEN];
    moat_uuid_generate(chat);
    for (int k = 0; k < 2; k++) {
        moat_uuid_generate(gone[k]);
        rc_put_record(etcd, gone[k], chat, "gone-node", 5, "127.0.0.1:1",
                      k == 0 ? MOAT_RECORD_RUNNING : MOAT_RECORD_ENDED, "node_lost");
    }
    /* The same node id as a live one, but an older incarnation's lease. */
    char old[MOAT_UUID_STR_LEN];
    moat_uuid_generate(old);
    rc_put_record(etcd, old, chat, nodes[0].id, lease_of(0) + 1, "127.0.0.1:1", MOAT_RECORD_RUNNING,
                  "");
    moat_uuid_generate(live);
    rc_put_record(etcd, live, chat, nodes[1].id, lease_of(1), "127.0.0.1:1", MOAT_RECORD_RUNNING,
                  "");
    moat_uuid_generate(bad);
    rc_put_raw(etcd, bad, "not a record");
    ETCD_WAIT_FOR(!record_exists(gone[0]) && !record_exists(gone[1]) && !record_exists(old),
                  WAIT_S);
    assert_true(record_exists(live));
    assert_true(record_exists(bad));
    int who = janitor_holder();
    assert_true(who >= 0);
    assert_true(moatd_log_contains(&nodes[who].p, "janitor_removed"));
}

/* The janitor killed: the other node takes the key within the lease's TTL, and removes the dead
 * node's records after the grace. */
static void test_failover(void **state)
{
    (void)state;
    ETCD_REQUIRE();
    ETCD_WAIT_FOR(janitor_holder() >= 0, WAIT_S);
    int who = janitor_holder(), other = 1 - who;
    char sid[MOAT_UUID_STR_LEN], chat[MOAT_UUID_STR_LEN];
    moat_uuid_generate(sid);
    moat_uuid_generate(chat);
    rc_put_record(etcd, sid, chat, nodes[who].id, lease_of(who), "127.0.0.1:1", MOAT_RECORD_RUNNING,
                  "");
    kill(nodes[who].p.pid, SIGKILL);
    waitpid(nodes[who].p.pid, NULL, 0);
    nodes[who].p.pid = 0;
    ETCD_WAIT_FOR(janitor_holder() == other, WAIT_S);
    ETCD_WAIT_FOR(!record_exists(sid), WAIT_S);
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_ALL);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gone_records_removed),
        cmocka_unit_test(test_failover),
    };
    int rc = moat_run_group_tests("test_cluster_janitor", tests, group_setup, group_teardown);
    curl_global_cleanup();
    return rc;
}
