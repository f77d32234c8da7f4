/* Membership against a real three-member etcd on loopback (started here): nodes register and
 * are listed with their load, a duplicate id is refused, a stopped node leaves at once, a
 * killed one (another process, SIGKILLed) drops out when its lease expires and can register
 * again, and a node fences itself while etcd is down and comes back when etcd does. Leases are
 * 2 s here; every wait is for a condition, bounded generously, never a measured time. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

#include "moat_test.h"

#include "cluster/membership.h"
#include "etcd_cluster.h"

#define WAIT_S 60
#define TTL_S  2

static etcd_cluster cl;
static moat_etcd *etcd;

static moat_etcd *open_client(const char *const *urls)
{
    moat_etcd_config cfg = {.endpoints = urls,
                            .endpoint_count = ETCD_CLUSTER_MEMBERS,
                            .connect_timeout_ms = 500,
                            .request_timeout_ms = 1000};
    moat_status st;
    return moat_etcd_open(&cfg, &st);
}

static moat_membership *start_node(const char *id, const char *address, int64_t slots_used,
                                   moat_status *st)
{
    moat_membership_config cfg = {etcd, id, address, TTL_S, {100, slots_used, 1 << 30, 0, 0}, 0};
    return moat_membership_start(&cfg, st);
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

static void test_register_list_leave(void **state)
{
    (void)state;
    ETCD_REQUIRE();
    moat_status st;
    moat_membership *a = start_node("node-a", "127.0.0.1:7071", 3, &st);
    assert_non_null(a);
    moat_membership *b = start_node("node-b", "127.0.0.1:7072", 0, &st);
    assert_non_null(b);
    assert_true(moat_membership_live(a));
    moat_node n;
    assert_true(etcd_cluster_lists_node(etcd, "node-a", &n));
    assert_string_equal(n.address, "127.0.0.1:7071");
    assert_int_equal(n.load.slots_total, 100);
    assert_int_equal(n.load.slots_used, 3);
    assert_true(n.lease != 0);
    assert_true(etcd_cluster_lists_node(etcd, "node-b", NULL));

    /* The load is republished by the keepalive thread. */
    moat_node_load load = {100, 42, 1 << 30, 1 << 20, 0};
    moat_membership_set_load(a, &load);
    ETCD_WAIT_FOR(etcd_cluster_lists_node(etcd, "node-a", &n) && n.load.slots_used == 42, WAIT_S);
    assert_int_equal(n.load.memory_used_bytes, 1 << 20);

    /* Another live node with the same id is refused (after two TTLs of waiting for it). */
    moat_membership *dup = start_node("node-a", "127.0.0.1:7079", 0, &st);
    assert_null(dup);
    assert_int_equal(st.code, MOAT_CODE_ALREADY_EXISTS);
    assert_string_equal(st.reason, "node_id_taken");
    assert_true(etcd_cluster_lists_node(etcd, "node-a", &n));
    assert_string_equal(n.address, "127.0.0.1:7071");

    /* A stopped node's lease is revoked: it is gone at once. */
    moat_membership_stop(b);
    assert_false(etcd_cluster_lists_node(etcd, "node-b", NULL));
    assert_true(etcd_cluster_lists_node(etcd, "node-a", NULL));
    moat_membership_stop(a);
    assert_false(etcd_cluster_lists_node(etcd, "node-a", NULL));

    assert_null(start_node("bad/id", "127.0.0.1:1", 0, &st));
    assert_string_equal(st.reason, "invalid_config");
    assert_null(start_node("ok", "no-port", 0, &st));
    assert_null(start_node("ok", "127.0.0.1:1", -1, &st));
}

/* The child: a node in a process of its own, which the parent SIGKILLs. */
static int run_child_node(char **argv)
{
    curl_global_init(CURL_GLOBAL_ALL);
    const char *urls[ETCD_CLUSTER_MEMBERS] = {argv[3], argv[4], argv[5]};
    etcd = open_client(urls);
    moat_status st;
    moat_membership *m = etcd != NULL ? start_node(argv[1], argv[2], 0, &st) : NULL;
    if (m == NULL)
        return 1;
    printf("ready %lld\n", (long long)moat_membership_lease(m));
    fflush(stdout);
    for (;;)
        pause();
}

/* The child's pid; *lease (may be NULL) gets the lease it registered under. */
static pid_t spawn_child_node(const char *id, const char *address, int64_t *lease)
{
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlives the test */
        dup2(fds[1], 1);
        close(fds[0]);
        execl("/proc/self/exe", "test_membership_real", "--node", id, address, cl.urls[0],
              cl.urls[1], cl.urls[2], (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    char line[64] = "";
    ssize_t n = read(fds[0], line, sizeof(line) - 1);
    close(fds[0]);
    long long got = 0;
    if (n <= 0 || sscanf(line, "ready %lld", &got) != 1 || got == 0) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        fail_msg("the child node did not register");
    }
    if (lease != NULL)
        *lease = got;
    return pid;
}

static void test_killed_node_drops_out(void **state)
{
    (void)state;
    ETCD_REQUIRE();
    pid_t pid = spawn_child_node("node-c", "127.0.0.1:7073", NULL);
    moat_node before;
    assert_true(etcd_cluster_lists_node(etcd, "node-c", &before));
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    /* Nobody revoked its lease: it drops out when the lease expires. */
    ETCD_WAIT_FOR(!etcd_cluster_lists_node(etcd, "node-c", NULL), WAIT_S);

    /* Killed and restarted at once: the new process waits out the old record, then joins. */
    pid = spawn_child_node("node-c", "127.0.0.1:7073", NULL);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    moat_status st;
    moat_membership *c = start_node("node-c", "127.0.0.1:7074", 0, &st);
    assert_non_null(c);
    moat_node after;
    assert_true(etcd_cluster_lists_node(etcd, "node-c", &after));
    assert_string_equal(after.address, "127.0.0.1:7074");
    assert_true(after.lease != before.lease);
    moat_membership_stop(c);
}

/* A node killed and restarted with the lease it held (as moatd keeps it in its state dir)
 * carries on under that lease, at once; a lease that is gone is not resumed. */
static void test_restart_resumes_lease(void **state)
{
    (void)state;
    ETCD_REQUIRE();
    int64_t lease;
    pid_t pid = spawn_child_node("node-r", "127.0.0.1:7077", &lease);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    moat_membership_config cfg = {etcd, "node-r", "127.0.0.1:7078", TTL_S, {1, 0, 1, 0, 0}, lease};
    moat_status st;
    moat_membership *m = moat_membership_start(&cfg, &st);
    assert_non_null(m);
    assert_int_equal(moat_membership_lease(m), lease);
    assert_true(moat_membership_live(m));
    moat_node n;
    assert_true(etcd_cluster_lists_node(etcd, "node-r", &n));
    assert_int_equal(n.lease, lease);
    assert_string_equal(n.address, "127.0.0.1:7078");
    moat_membership_stop(m); /* revokes it */
    assert_false(etcd_cluster_lists_node(etcd, "node-r", NULL));

    m = moat_membership_start(&cfg, &st);
    assert_non_null(m);
    assert_true(moat_membership_lease(m) != 0);
    assert_true(moat_membership_lease(m) != lease);
    moat_membership_stop(m);
}

static void kill_etcd(void)
{
    for (int m = 0; m < ETCD_CLUSTER_MEMBERS; m++)
        etcd_cluster_kill(&cl, m);
}

static void restart_etcd(void)
{
    for (int m = 0; m < ETCD_CLUSTER_MEMBERS; m++)
        assert_int_equal(etcd_cluster_restart(&cl, m), 0);
}

/* etcd gone: a node stops claiming to be live (fenced) within its TTL, and a node that starts
 * meanwhile starts fenced; both are members again once etcd is back. */
static void test_fenced_while_etcd_down(void **state)
{
    (void)state;
    ETCD_REQUIRE();
    moat_status st;
    moat_membership *a = start_node("node-e", "127.0.0.1:7075", 0, &st);
    assert_non_null(a);
    assert_true(moat_membership_live(a));
    kill_etcd();
    ETCD_WAIT_FOR(!moat_membership_live(a), WAIT_S);
    moat_membership *d = start_node("node-f", "127.0.0.1:7076", 0, &st);
    assert_non_null(d);
    assert_false(moat_membership_live(d));
    restart_etcd();
    ETCD_WAIT_FOR(moat_membership_live(a) && moat_membership_live(d), WAIT_S);
    ETCD_WAIT_FOR(etcd_cluster_lists_node(etcd, "node-e", NULL) &&
                      etcd_cluster_lists_node(etcd, "node-f", NULL),
                  WAIT_S);
    moat_membership_stop(a);
    moat_membership_stop(d);
    assert_false(etcd_cluster_lists_node(etcd, "node-e", NULL));
    assert_false(etcd_cluster_lists_node(etcd, "node-f", NULL));
}

int main(int argc, char **argv)
{
    if (argc == 7 && strcmp(argv[1], "--node") == 0)
        return run_child_node(argv + 1);
    curl_global_init(CURL_GLOBAL_ALL);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_register_list_leave),
        cmocka_unit_test(test_killed_node_drops_out),
        cmocka_unit_test(test_restart_resumes_lease),
        cmocka_unit_test(test_fenced_while_etcd_down),
    };
    int rc = moat_run_group_tests("test_membership_real", tests, group_setup, group_teardown);
    curl_global_cleanup();
    return rc;
}
