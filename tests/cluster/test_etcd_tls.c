/* TLS to etcd, for real: a three-member etcd (Debian's) serving https:// on loopback with
 * --client-cert-auth, its CA and certificates made at start by make_test_certs.sh (openssl,
 * test_pki_make) in a temp dir. The client's calls over TLS; hostile members and clients, each
 * refused with a status and a reason (no client certificate, one from another CA, a wrong CA, a
 * member certified for another host, plain http:// to a TLS member); and the real moatd joining
 * over TLS, fenced with a wrong CA, and a SIGHUP that finds a TLS file gone. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <curl/curl.h>

#include "moat_test.h"

#include "cluster/etcd.h"
#include "etcd_cluster.h"
#include "harness.h"
#include "tls_files.h"

/* Generous bound on waiting for a condition (a member up, a node listed): never a measurement. */
#define WAIT_S 60

static struct pki {
    char dir[64];
    char ca[128], other_ca[128];
    char member_cert[128], member_key[128];
    char other_host_cert[128], other_host_key[128];
    char client_cert[128], client_key[128];
    char rogue_cert[128], rogue_key[128];
} pki;

static etcd_cluster_tls tls;
static etcd_cluster cl;
static moat_etcd *etcd; /* the cluster's own client: its CA and client certificate */

static void pki_path(char out[128], const char *name)
{
    snprintf(out, 128, "%s/%s", pki.dir, name);
}

static int group_setup(void **state)
{
    (void)state;
    if (!etcd_cluster_available())
        return 0; /* each test skips, saying why */
    if (!test_pki_make(pki.dir))
        return -1;
    pki_path(pki.ca, "ca.pem");
    pki_path(pki.other_ca, "other-ca.pem");
    pki_path(pki.member_cert, "member.pem");
    pki_path(pki.member_key, "member.key");
    pki_path(pki.other_host_cert, "other-host.pem");
    pki_path(pki.other_host_key, "other-host.key");
    pki_path(pki.client_cert, "client.pem");
    pki_path(pki.client_key, "client.key");
    pki_path(pki.rogue_cert, "rogue-client.pem");
    pki_path(pki.rogue_key, "rogue-client.key");
    tls = (etcd_cluster_tls){pki.ca, pki.member_cert, pki.member_key,
                             (moat_etcd_tls){pki.ca, pki.client_cert, pki.client_key}};
    if (etcd_cluster_open(&cl, &tls, &etcd, 2000, WAIT_S) != 0) {
        test_pki_remove(pki.dir);
        return -1;
    }
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    etcd_cluster_close(&cl, &etcd);
    test_pki_remove(pki.dir);
    return 0;
}

/* A client of the members urls[0..n) that presents t. Its connect timeout bounds the TLS
 * handshake too, which under valgrind (test_etcd_tls_valgrind) with the system's CAs to load
 * takes seconds: the timeouts are generous, and no refusal here waits for them. */
static moat_etcd *client_with(const char *const *urls, size_t n, moat_etcd_tls t)
{
    moat_etcd_config cfg = {.endpoints = urls,
                            .endpoint_count = n,
                            .connect_timeout_ms = 10000,
                            .request_timeout_ms = 20000,
                            .tls = t};
    moat_status st;
    moat_etcd *e = moat_etcd_open(&cfg, &st);
    if (e == NULL)
        fail_msg("moat_etcd_open: %s", st.message);
    return e;
}

/* Every kind of call over TLS with a client certificate. */
static void test_calls_over_tls(void **state)
{
    (void)state;
    ETCD_REQUIRE();
    moat_etcd_result r;
    moat_status st;
    assert_int_equal(
        moat_etcd_put(etcd, moat_slice_str("/t/tls/a"), moat_slice_str("1"), 0, &r, &st), 0);
    assert_int_equal(moat_etcd_range(etcd, moat_slice_str("/t/tls/"), true, 0, &r, &st), 0);
    assert_int_equal(r.kv_count, 1);
    assert_memory_equal(r.kvs[0].value, "1", 1);
    moat_etcd_result_free(&r);

    moat_slice key = moat_slice_str("/t/tls/chat");
    moat_etcd_cmp absent = {key, MOAT_ETCD_CREATE_REVISION, MOAT_ETCD_EQUAL, 0};
    moat_etcd_op put = {MOAT_ETCD_OP_PUT, key, moat_slice_str("s1"), 0, false};
    moat_etcd_op get = {MOAT_ETCD_OP_RANGE, key, {NULL, 0}, 0, false};
    moat_etcd_txn_spec create = {&absent, 1, &put, 1, &get, 1};
    assert_int_equal(moat_etcd_txn(etcd, &create, &r, &st), 0);
    assert_true(r.succeeded);
    assert_int_equal(moat_etcd_txn(etcd, &create, &r, &st), 0);
    assert_false(r.succeeded);
    assert_int_equal(r.kv_count, 1);
    moat_etcd_result_free(&r);

    assert_int_equal(moat_etcd_lease_grant(etcd, 30, &r, &st), 0);
    int64_t lease = r.lease_id;
    assert_int_equal(
        moat_etcd_put(etcd, moat_slice_str("/t/tls/leased"), moat_slice_str("1"), lease, &r, &st),
        0);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(moat_etcd_lease_keepalive(etcd, lease, &r, &st), 0);
        assert_int_equal(r.ttl, 30);
    }
    assert_int_equal(moat_etcd_lease_revoke(etcd, lease, &r, &st), 0);
    assert_int_equal(etcd_cluster_key_count(etcd, "/t/tls/leased"), 0);
    assert_int_equal(moat_etcd_delete(etcd, moat_slice_str("/t/tls/"), true, &r, &st), 0);
    assert_int_equal(r.deleted, 2);
}

/* That a call ended in a refusal of our client certificate. Under TLS 1.3 the member says so
 * with an alert and a close once it has read our side of the handshake: curl meets the alert
 * inside the handshake or in place of the answer, or the close before it could send the
 * request, a race on the socket; every way is UNAVAILABLE etcd_tls_failed, naming the member. */
static void assert_refused(moat_code code, const moat_status *st)
{
    if (code != MOAT_CODE_UNAVAILABLE || strcmp(st->reason, "etcd_tls_failed") != 0 ||
        moat_status_detail_get(st, "etcd_endpoint") == NULL)
        fail_msg("not a refusal: code %d reason %s: %s", (int)code, st->reason, st->message);
}

/* A client the members refuse (no certificate, or one from another CA): every call ends with a
 * status and a reason within its timeout, and nothing is written. */
static void expect_client_refused(moat_etcd_tls t)
{
    moat_etcd *e = client_with(cl.urls, ETCD_CLUSTER_MEMBERS, t);
    moat_etcd_result r;
    moat_status st;
    moat_slice key = moat_slice_str("/t/tls/refused");
    assert_refused(moat_etcd_put(e, key, moat_slice_str("1"), 0, &r, &st), &st);
    assert_refused(moat_etcd_range(e, key, false, 0, &r, &st), &st);
    assert_refused(moat_etcd_lease_grant(e, 5, &r, &st), &st);
    moat_etcd_close(e);
    assert_int_equal(etcd_cluster_key_count(etcd, "/t/tls/refused"), 0);
}

static void test_client_without_certificate(void **state)
{
    (void)state;
    ETCD_REQUIRE();
    expect_client_refused((moat_etcd_tls){pki.ca, NULL, NULL});
}

static void test_client_of_another_ca(void **state)
{
    (void)state;
    ETCD_REQUIRE();
    expect_client_refused((moat_etcd_tls){pki.ca, pki.rogue_cert, pki.rogue_key});
}

/* The members' certificates fail verification against a CA that did not sign them, and against
 * the system's CAs (no tls.ca): TLS never falls back to trusting whatever answers. */
static void test_wrong_ca(void **state)
{
    (void)state;
    ETCD_REQUIRE();
    const char *cas[] = {pki.other_ca, NULL};
    for (size_t i = 0; i < sizeof(cas) / sizeof(cas[0]); i++) {
        moat_etcd *e = client_with(cl.urls, ETCD_CLUSTER_MEMBERS,
                                   (moat_etcd_tls){cas[i], pki.client_cert, pki.client_key});
        moat_etcd_result r;
        moat_status st;
        assert_int_equal(
            moat_etcd_put(e, moat_slice_str("/t/tls/wrong-ca"), moat_slice_str("1"), 0, &r, &st),
            MOAT_CODE_UNAVAILABLE);
        assert_string_equal(st.reason, "etcd_tls_failed");
        assert_int_equal(moat_etcd_lease_keepalive(e, 1, &r, &st), MOAT_CODE_UNAVAILABLE);
        assert_string_equal(st.reason, "etcd_tls_failed");
        moat_etcd_close(e);
    }
    assert_int_equal(etcd_cluster_key_count(etcd, "/t/tls/wrong-ca"), 0);
}

/* A plain http:// endpoint for a member that serves TLS: UNAVAILABLE, saying what it may be. */
static void test_plain_http_to_tls_member(void **state)
{
    (void)state;
    ETCD_REQUIRE();
    char plain[64];
    snprintf(plain, sizeof(plain), "http://127.0.0.1:%d", cl.client_port[0]);
    const char *urls[] = {plain};
    moat_etcd *e = client_with(urls, 1, (moat_etcd_tls){NULL, NULL, NULL});
    moat_etcd_result r;
    moat_status st;
    assert_int_equal(
        moat_etcd_put(e, moat_slice_str("/t/tls/plain"), moat_slice_str("1"), 0, &r, &st),
        MOAT_CODE_UNAVAILABLE);
    assert_string_equal(st.reason, "etcd_unavailable");
    assert_non_null(strstr(st.message, "https://"));
    assert_int_equal(moat_etcd_range(e, moat_slice_str("/t/tls/plain"), false, 0, &r, &st),
                     MOAT_CODE_UNAVAILABLE);
    moat_etcd_close(e);
    assert_int_equal(etcd_cluster_key_count(etcd, "/t/tls/plain"), 0);
}

/* Whether a range through e ends OK (reason NULL) or UNAVAILABLE with reason. */
static bool range_ends(moat_etcd *e, const char *reason)
{
    moat_etcd_result r;
    moat_status st;
    moat_code code = moat_etcd_range(e, moat_slice_str("/t/tls/host"), false, 0, &r, &st);
    moat_etcd_result_free(&r);
    return reason == NULL ? code == MOAT_CODE_OK
                          : code == MOAT_CODE_UNAVAILABLE && strcmp(st.reason, reason) == 0;
}

/* Member 2 restarted with a certificate for another host name: the client refuses it
 * (etcd_tls_failed) and, since the request was never sent, takes even a write to the next
 * member. Then it gets its own certificate back. */
static void test_member_certified_for_another_host(void **state)
{
    (void)state;
    ETCD_REQUIRE();
    const char *only2[] = {cl.urls[2]};
    const char *two_then_zero[] = {cl.urls[2], cl.urls[0]};
    moat_etcd *alone = client_with(only2, 1, tls.client);
    moat_etcd *both = client_with(two_then_zero, 2, tls.client);
    moat_etcd_result r;
    moat_status st;
    etcd_cluster_kill(&cl, 2);
    cl.cert[2] = pki.other_host_cert;
    cl.key[2] = pki.other_host_key;
    assert_int_equal(etcd_cluster_restart(&cl, 2), 0);
    /* Until it listens the connection is refused (etcd_unavailable). */
    ETCD_WAIT_FOR(range_ends(alone, "etcd_tls_failed"), WAIT_S);
    assert_int_equal(
        moat_etcd_put(alone, moat_slice_str("/t/tls/host"), moat_slice_str("1"), 0, &r, &st),
        MOAT_CODE_UNAVAILABLE);
    assert_string_equal(st.reason, "etcd_tls_failed");
    assert_string_equal(moat_status_detail_get(&st, "etcd_endpoint"), cl.urls[2]);
    assert_int_equal(
        moat_etcd_put(both, moat_slice_str("/t/tls/host"), moat_slice_str("2"), 0, &r, &st), 0);
    assert_int_equal(etcd_cluster_key_count(etcd, "/t/tls/host"), 1);

    etcd_cluster_kill(&cl, 2);
    cl.cert[2] = pki.member_cert;
    cl.key[2] = pki.member_key;
    assert_int_equal(etcd_cluster_restart(&cl, 2), 0);
    ETCD_WAIT_FOR(range_ends(alone, NULL), WAIT_S);
    moat_etcd_close(alone);
    moat_etcd_close(both);
}

/* The moatd of the test running: its teardown kills it, if a failed assertion left it running,
 * and removes its state dir. */
static moatd_proc node;

static int node_teardown(void **state)
{
    (void)state;
    if (node.pid > 0) {
        kill(node.pid, SIGKILL);
        waitpid(node.pid, NULL, 0);
    }
    if (node.state_dir[0] != '\0')
        moatd_remove_dir(node.state_dir);
    memset(&node, 0, sizeof(node));
    return 0;
}

/* Starts node: moatd with the cluster's https:// endpoints, node id id, and TLS to etcd with ca
 * and the test's client certificate. */
static bool node_start(const char *id, const char *ca)
{
    char eps[300], id_flag[64], ca_flag[200], cert[200], key[200];
    snprintf(eps, sizeof(eps), "--cluster_etcd_endpoints=%s,%s,%s", cl.urls[0], cl.urls[1],
             cl.urls[2]);
    snprintf(id_flag, sizeof(id_flag), "--cluster_node_id=%s", id);
    snprintf(ca_flag, sizeof(ca_flag), "--cluster_etcd_tls_ca=%s", ca);
    snprintf(cert, sizeof(cert), "--cluster_etcd_tls_cert=%s", pki.client_cert);
    snprintf(key, sizeof(key), "--cluster_etcd_tls_key=%s", pki.client_key);
    const char *extra[] = {eps,
                           id_flag,
                           ca_flag,
                           cert,
                           key,
                           "--cluster_advertise=127.0.0.1:7070",
                           "--cluster_lease_ttl_seconds=2",
                           NULL};
    return moatd_start(&node, false, extra);
}

/* moatd joins over TLS; a SIGHUP that finds its CA gone fails, naming the key, and the node
 * stays a member under the same lease; SIGTERM leaves at once. */
static void test_moatd_joins_over_tls(void **state)
{
    (void)state;
    ETCD_REQUIRE();
    /* A copy of its own to take away: the members keep reading theirs. */
    char ca[128], moved[160], cmd[400];
    pki_path(ca, "moatd-ca.pem");
    snprintf(moved, sizeof(moved), "%s.moved", ca);
    snprintf(cmd, sizeof(cmd), "cp '%s' '%s'", pki.ca, ca);
    assert_int_equal(system(cmd), 0);
    assert_true(node_start("tls-1", ca));
    moat_node n;
    ETCD_WAIT_FOR(etcd_cluster_lists_node(etcd, "tls-1", &n), WAIT_S);
    int64_t lease = n.lease;
    /* The directory's watch stream (ListSessions' copy) is an etcd request too: without the
     * TLS settings it fails its handshake at once and logs that it ended. */
    etcd_cluster_sleep_ms(1000);
    assert_false(moatd_log_contains(&node, "directory_watch_ended"));

    assert_int_equal(rename(ca, moved), 0);
    assert_int_equal(kill(node.pid, SIGHUP), 0);
    for (int i = 0; i < WAIT_S * 20 && !moatd_log_contains(&node, "reload_failed"); i++)
        etcd_cluster_sleep_ms(50);
    bool named = moatd_log_contains(&node, "cluster_etcd_tls_ca: ");
    assert_int_equal(rename(moved, ca), 0);
    assert_true(moatd_log_contains(&node, "reload_failed"));
    assert_true(named);
    assert_true(etcd_cluster_lists_node(etcd, "tls-1", &n));
    assert_int_equal(n.lease, lease);

    assert_int_equal(moatd_stop(&node), 0);
    assert_false(etcd_cluster_lists_node(etcd, "tls-1", NULL));
}

/* moatd trusting a CA that did not sign the members: it starts, fenced, saying why, and is
 * never listed; SIGTERM still exits cleanly. */
static void test_moatd_wrong_ca_fenced(void **state)
{
    (void)state;
    ETCD_REQUIRE();
    assert_true(node_start("tls-wrong-ca", pki.other_ca));
    ETCD_WAIT_FOR(moatd_log_contains(&node, "reason=etcd_tls_failed"), WAIT_S);
    assert_true(moatd_log_contains(&node, "cluster_fenced"));
    assert_false(etcd_cluster_lists_node(etcd, "tls-wrong-ca", NULL));
    assert_int_equal(moatd_stop(&node), 0);
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_ALL);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_calls_over_tls),
        cmocka_unit_test(test_client_without_certificate),
        cmocka_unit_test(test_client_of_another_ca),
        cmocka_unit_test(test_wrong_ca),
        cmocka_unit_test(test_plain_http_to_tls_member),
        cmocka_unit_test(test_member_certified_for_another_host),
        cmocka_unit_test_teardown(test_moatd_joins_over_tls, node_teardown),
        cmocka_unit_test_teardown(test_moatd_wrong_ca_fenced, node_teardown),
    };
    int rc = moat_run_group_tests("test_etcd_tls", tests, group_setup, group_teardown);
    curl_global_cleanup();
    return rc;
}
