/* The real moatd in cluster mode against a real three-member etcd on loopback (started here):
 * it joins with its address and capacity, refuses creates with node_fenced while etcd is down
 * and accepts them again when etcd is back, and leaves the cluster at once on SIGTERM. No
 * Docker: the creates fail on the engine once the node is not fenced. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/wait.h>
#include <signal.h>

#include <curl/curl.h>

#include "moat_test.h"

#include "cluster/membership.h"
#include "etcd_cluster.h"
#include "harness.h"
#include "moat/v1/sandbox.pb-c.h"

#define WAIT_S 60

static etcd_cluster cl;
static moat_etcd *etcd;

/* A CreateSession's reason (any code but OK). */
static bool create_reason(raw_conn *c, char *reason, size_t cap)
{
    Moat__V1__CreateSessionRequest cr = MOAT__V1__CREATE_SESSION_REQUEST__INIT;
    cr.chat_id = (char *)"123e4567-e89b-12d3-a456-426614174000";
    int code = raw_unary(c, "/moat.v1.Sandboxes/CreateSession", &cr.base, NULL, NULL, reason, cap);
    return code > 0;
}

static bool create_fenced(raw_conn *c)
{
    char reason[64] = "";
    return create_reason(c, reason, sizeof(reason)) && strcmp(reason, "node_fenced") == 0;
}

static bool create_not_fenced(raw_conn *c)
{
    char reason[64] = "";
    return create_reason(c, reason, sizeof(reason)) && strcmp(reason, "node_fenced") != 0;
}

static int group_setup(void **state)
{
    (void)state;
    return etcd_cluster_open(&cl, NULL, &etcd, 1000, WAIT_S);
}

static int group_teardown(void **state)
{
    (void)state;
    etcd_cluster_close(&cl, &etcd);
    return 0;
}

static void test_join_fence_leave(void **state)
{
    (void)state;
    ETCD_REQUIRE();
    char endpoints[256], eps_flag[300];
    snprintf(endpoints, sizeof(endpoints), "%s,%s,%s", cl.urls[0], cl.urls[1], cl.urls[2]);
    snprintf(eps_flag, sizeof(eps_flag), "--cluster_etcd_endpoints=%s", endpoints);
    const char *extra[] = {eps_flag,
                           "--cluster_node_id=moatd-1",
                           "--cluster_advertise=127.0.0.1:7070",
                           "--cluster_lease_ttl_seconds=2",
                           "--max_sessions=77",
                           NULL};
    moatd_proc p;
    assert_true(moatd_start(&p, false, extra));
    moat_node n;
    ETCD_WAIT_FOR(etcd_cluster_lists_node(etcd, "moatd-1", &n), WAIT_S);
    assert_string_equal(n.address, "127.0.0.1:7070");
    assert_int_equal(n.load.slots_total, 77);
    assert_true(n.load.memory_total_bytes > 0);

    raw_conn *c = raw_connect_ready(p.port, NULL);
    assert_non_null(c);
    assert_true(create_not_fenced(c));

    /* etcd gone: within the lease's TTL the node stops accepting creates. */
    for (int m = 0; m < ETCD_CLUSTER_MEMBERS; m++)
        etcd_cluster_kill(&cl, m);
    ETCD_WAIT_FOR(create_fenced(c), WAIT_S);
    for (int m = 0; m < ETCD_CLUSTER_MEMBERS; m++)
        assert_int_equal(etcd_cluster_restart(&cl, m), 0);
    ETCD_WAIT_FOR(create_not_fenced(c), WAIT_S);
    ETCD_WAIT_FOR(etcd_cluster_lists_node(etcd, "moatd-1", &n), WAIT_S);
    raw_close(c);

    /* SIGTERM: it revokes its lease on the way out, so it is gone at once. */
    assert_int_equal(moatd_stop(&p), 0);
    assert_false(etcd_cluster_lists_node(etcd, "moatd-1", &n));
    moatd_remove_dir(p.state_dir);
}

/* moatd SIGKILLed and started again on its state dir resumes its lease at once (kept in
 * <state_dir>/cluster.lease), so the restart is not a departure; SIGTERM then leaves. */
static void test_restart_resumes(void **state)
{
    (void)state;
    ETCD_REQUIRE();
    char eps_flag[300], state_flag[300], ttl_flag[64];
    snprintf(eps_flag, sizeof(eps_flag), "--cluster_etcd_endpoints=%s,%s,%s", cl.urls[0],
             cl.urls[1], cl.urls[2]);
    /* The restart must come within the TTL, and under valgrind moatd starts ten times slower. */
    snprintf(ttl_flag, sizeof(ttl_flag), "--cluster_lease_ttl_seconds=%d", 2 * moatd_slowdown());
    const char *extra[] = {
        eps_flag, "--cluster_node_id=moatd-r", "--cluster_advertise=127.0.0.1:7070", ttl_flag, NULL,
        NULL};
    moatd_proc first, second;
    assert_true(moatd_start(&first, false, extra));
    moat_node n;
    ETCD_WAIT_FOR(etcd_cluster_lists_node(etcd, "moatd-r", &n), WAIT_S);
    int64_t lease = n.lease;
    char path[400];
    snprintf(path, sizeof(path), "%s/cluster.lease", first.state_dir);
    ETCD_WAIT_FOR(access(path, F_OK) == 0, WAIT_S);
    kill(first.pid, SIGKILL);
    waitpid(first.pid, NULL, 0);
    first.pid = 0;

    snprintf(state_flag, sizeof(state_flag), "--state_dir=%s", first.state_dir);
    extra[4] = state_flag;
    assert_true(moatd_start(&second, false, extra));
    ETCD_WAIT_FOR(moatd_log_contains(&second, "cluster_resumed"), WAIT_S);
    assert_true(etcd_cluster_lists_node(etcd, "moatd-r", &n));
    assert_int_equal(n.lease, lease);
    assert_int_equal(moatd_stop(&second), 0);
    assert_false(etcd_cluster_lists_node(etcd, "moatd-r", NULL));
    assert_int_not_equal(access(path, F_OK), 0);
    moatd_remove_dir(second.state_dir);
    moatd_remove_dir(first.state_dir);
}

/* A node id another live node holds: moatd does not start (after waiting out two TTLs). */
static void test_duplicate_node_id(void **state)
{
    (void)state;
    ETCD_REQUIRE();
    moat_membership_config cfg = {etcd, "taken", "127.0.0.1:1", 2, {1, 0, 1, 0, 0}, 0};
    moat_status st;
    moat_membership *holder = moat_membership_start(&cfg, &st);
    assert_non_null(holder);
    char eps_flag[300];
    snprintf(eps_flag, sizeof(eps_flag), "--cluster_etcd_endpoints=%s", cl.urls[0]);
    const char *extra[] = {eps_flag, "--cluster_node_id=taken", "--cluster_advertise=127.0.0.1:2",
                           "--cluster_lease_ttl_seconds=2", NULL};
    moatd_proc p;
    /* It may or may not be seen listening before it gives up; either way it exits, saying why. */
    if (moatd_start(&p, false, extra))
        assert_int_not_equal(moatd_wait(&p, WAIT_S * 1000), 0);
    assert_true(moatd_log_contains(&p, "node_id_taken"));
    moatd_remove_dir(p.state_dir);
    moat_membership_stop(holder);
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_ALL);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_join_fence_leave),
        cmocka_unit_test(test_restart_resumes),
        cmocka_unit_test(test_duplicate_node_id),
    };
    int rc = moat_run_group_tests("test_moatd_cluster", tests, group_setup, group_teardown);
    curl_global_cleanup();
    return rc;
}
