/* The read path of a cluster (docs/CLUSTER.md, "Routing") with real parts: a three-member etcd
 * started here and three real moatd nodes on loopback. Two of them have the shared dockerd (own
 * instance and name prefix, no sandbox is made here), the third a dead engine socket, so both
 * ways of routing run: after the runtime's NOT_FOUND, and from the directory alone while the
 * engine is down. The session records are put here as their owner would put them
 * (records.h's encoder): calls to a non-owner end session_moved with the owner's address, a
 * record whose node is gone is node_lost from any node (also once a member dies under it), an ended
 * one answers as an ended local session, garbage is a status with a reason, ListSessions and
 * GetSession answer for the whole cluster, and with etcd down every call ends UNAVAILABLE with a
 * reason instead of hanging. A fourth node, on a fake engine that records its requests, shows
 * which calls its copy of the directory answers without the engine; a real session on the first
 * node shows that a session its runtime holds is never sent elsewhere. */
#include <setjmp.h>
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

#include "cluster/dir_read.h"
#include "cluster/records.h"
#include "etcd_cluster.h"
#include "cluster_calls.h"
#include "fake_docker.h"
#include "h2_client.h"
#include "harness.h"
#include "moat/v1/exec.pb-c.h"
#include "moat/v1/files.pb-c.h"
#include "moat/v1/sandbox.pb-c.h"

#define WAIT_S 60
#define NODES  3

static etcd_cluster cl;
static moat_etcd *etcd;
static rc_node nodes[NODES];
/* test_moved_from_copy's node and its engine (stopped by the group teardown if the test fails). */
static rc_node counted;
static fake_docker engine;
static bool engine_started;

/* The address the test writes in a record for node i: its real listener. */
static void node_address(int i, char *out, size_t cap)
{
    snprintf(out, cap, "127.0.0.1:%d", nodes[i].p.port);
}

static int64_t node_lease(int i)
{
    moat_node n;
    assert_true(etcd_cluster_lists_node(etcd, nodes[i].id, &n));
    return n.lease;
}

static int group_teardown(void **state);

static int group_setup(void **state)
{
    (void)state;
    if (etcd_cluster_open(&cl, NULL, &etcd, 1000, WAIT_S) != 0)
        return -1;
    if (!etcd_cluster_available())
        return 0;
    /* The third node's engine is dead: it routes from the directory alone. */
    for (int i = 0; i < NODES; i++)
        if (!rc_node_start(&nodes[i], &cl, "route", i, i < 2, NULL, true, NULL))
            goto failed;
    return 0;
failed:
    group_teardown(state);
    return -1;
}

static void counted_stop(void)
{
    rc_node_stop(&counted);
    if (engine_started)
        fake_docker_stop(&engine);
    engine_started = false;
}

static int group_teardown(void **state)
{
    (void)state;
    counted_stop();
    rc_cluster_close(nodes, NODES, &cl, &etcd);
    /* test_local_never_moved's session, if it failed before stopping it. */
    char prefix[64];
    snprintf(prefix, sizeof(prefix), "moat-route%d-", (int)getpid());
    docker_remove_prefixed(prefix);
    return 0;
}

static void wait_members(void)
{
    for (int i = 0; i < NODES; i++)
        ETCD_WAIT_FOR(etcd_cluster_lists_node(etcd, nodes[i].id, NULL), WAIT_S);
}

/* Every call naming a session held by node 2 ends session_moved with its address on nodes 1
 * and 3; GetSession answers it from the record. */
static void test_moved(void **state)
{
    (void)state;
    ETCD_REQUIRE();
    wait_members();
    char sid[MOAT_UUID_STR_LEN], chat[MOAT_UUID_STR_LEN], addr[64];
    moat_uuid_generate(sid);
    moat_uuid_generate(chat);
    node_address(1, addr, sizeof(addr));
    rc_put_record(etcd, sid, chat, nodes[1].id, node_lease(1), addr, MOAT_RECORD_RUNNING, "");
    const int asked[] = {0, 2};
    for (size_t k = 0; k < 2; k++) {
        raw_conn *c = nodes[asked[k]].conn;
        rc_end e;
        /* The dead engine's node routes once its probe has called the engine down. */
        ETCD_WAIT_FOR(
            (e = rc_run_command(c, sid), rc_is(&e, MOAT_CODE_FAILED_PRECONDITION, "session_moved")),
            WAIT_S);
        assert_string_equal(e.owner_address, addr);
        assert_string_equal(e.owner_node, nodes[1].id);
        rc_end calls[] = {rc_stat(c, sid), rc_interactive(c, sid), rc_renew(c, sid),
                          rc_stop(c, sid)};
        for (size_t i = 0; i < sizeof(calls) / sizeof(calls[0]); i++) {
            assert_true(rc_is(&calls[i], MOAT_CODE_FAILED_PRECONDITION, "session_moved"));
            assert_string_equal(calls[i].owner_address, addr);
            assert_string_equal(calls[i].owner_node, nodes[1].id);
            rc_free(&calls[i]);
        }
        e = rc_get(c, sid);
        assert_int_equal(e.code, MOAT_CODE_OK);
        Moat__V1__SandboxSession *s = (Moat__V1__SandboxSession *)e.resp;
        assert_non_null(s);
        assert_string_equal(s->session_id, sid);
        assert_string_equal(s->chat_id, chat);
        assert_int_equal(s->status, MOAT__V1__SESSION_STATUS__RUNNING);
        rc_free(&e);
    }
    /* Over gRPC the redirect is the status and its details (grpc-status-details-bin). */
    h2c *g = h2c_connect(nodes[0].p.grpc_port, 0);
    assert_non_null(g);
    Moat__V1__RunCommandRequest req = MOAT__V1__RUN_COMMAND_REQUEST__INIT;
    req.session_id = sid;
    req.command = (char *)"true";
    uint8_t msg[256], body[261];
    size_t n = protobuf_c_message_pack(&req.base, msg);
    h2c_frame_message(body, msg, n);
    h2c_stream *st = h2c_request(g, "/moat.v1.Exec/RunCommand", NULL, NULL, body, 5 + n);
    assert_non_null(st);
    assert_true(h2c_wait(g, st, 60000));
    assert_int_equal(st->grpc_status, MOAT_CODE_FAILED_PRECONDITION);
    assert_string_equal(st->details.reason, "session_moved");
    assert_string_equal(moat_status_detail_get(&st->details, "owner_address"), addr);
    assert_string_equal(moat_status_detail_get(&st->details, "owner_node"), nodes[1].id);
    h2c_close(g);
    rc_clear_records(etcd);
}

/* How many requests the counted node's engine had that name sid: its runtime's lookups of a
 * session name it in their label filter. */
static size_t engine_asked(const char *sid)
{
    return fake_docker_count(&engine, "GET", sid);
}

/* call(sid) on the counted node, again until one is answered without a request to its engine
 * about sid (its copy of the directory follows a put by the watch's delay); that call's End. A
 * node that asks its engine every time fails the test. */
static rc_end answered_from_copy(rc_end (*call)(raw_conn *, const char *), const char *sid)
{
    rc_end e = {.code = -1};
    bool quiet = false;
    for (int tick = 0; tick < WAIT_S * 20 && !quiet; tick++) {
        if (tick > 0)
            etcd_cluster_sleep_ms(50);
        rc_free(&e);
        size_t before = engine_asked(sid);
        e = call(counted.conn, sid);
        quiet = engine_asked(sid) == before;
    }
    /* A full request log counts nothing more, and would prove nothing. */
    assert_true(fake_docker_count(&engine, "GET", "") < FAKE_MAX_REQUESTS);
    assert_true(quiet);
    return e;
}

/* Every call naming another live node's session, by the node's copy of the directory, is
 * answered without asking the engine: Exec, Files and Interactive end session_moved, and so do
 * RenewSession and StopSession; GetSession answers from the record. The same node asks its
 * engine about a session no record names (so the count is not blind). */
static void test_moved_from_copy(void **state)
{
    (void)state;
    ETCD_REQUIRE();
    wait_members();
    char sock[64], engine_arg[96];
    snprintf(sock, sizeof(sock), "/tmp/mrt%d-engine.sock", (int)getpid());
    assert_int_equal(fake_docker_start(&engine, sock), 0);
    engine_started = true;
    /* Up by its health probe: the runtime is asked, not skipped. */
    fake_docker_route(&engine, "GET", "/_ping", 200, "OK", -1);
    snprintf(engine_arg, sizeof(engine_arg), "--docker_host=%s", sock);
    const char *extra[] = {engine_arg, NULL};
    assert_true(rc_node_start(&counted, &cl, "route", NODES, true, extra, true, NULL));
    ETCD_WAIT_FOR(etcd_cluster_lists_node(etcd, counted.id, NULL), WAIT_S);

    char none[MOAT_UUID_STR_LEN];
    moat_uuid_generate(none);
    rc_end e;
    ETCD_WAIT_FOR((e = rc_get(counted.conn, none), rc_free(&e),
                   rc_is(&e, MOAT_CODE_NOT_FOUND, "session_not_found")),
                  WAIT_S);
    assert_true(engine_asked(none) > 0);

    char sid[MOAT_UUID_STR_LEN], chat[MOAT_UUID_STR_LEN], addr[64];
    moat_uuid_generate(sid);
    moat_uuid_generate(chat);
    node_address(1, addr, sizeof(addr));
    rc_put_record(etcd, sid, chat, nodes[1].id, node_lease(1), addr, MOAT_RECORD_RUNNING, "");
    e = answered_from_copy(rc_get, sid);
    assert_int_equal(e.code, MOAT_CODE_OK);
    Moat__V1__SandboxSession *s = (Moat__V1__SandboxSession *)e.resp;
    assert_non_null(s);
    assert_string_equal(s->session_id, sid);
    assert_int_equal(s->status, MOAT__V1__SESSION_STATUS__RUNNING);
    assert_string_equal(s->owner_address, addr);
    rc_free(&e);
    rc_end (*const moved[])(raw_conn *, const char *) = {rc_renew, rc_stop, rc_run_command, rc_stat,
                                                         rc_interactive};
    for (size_t k = 0; k < sizeof(moved) / sizeof(moved[0]); k++) {
        e = answered_from_copy(moved[k], sid);
        assert_true(rc_is(&e, MOAT_CODE_FAILED_PRECONDITION, "session_moved"));
        assert_string_equal(e.owner_address, addr);
        assert_string_equal(e.owner_node, nodes[1].id);
        rc_free(&e);
    }
    counted_stop();
    rc_clear_records(etcd);
}

/* SandboxSession.owner_address of sid in node i's listing, "" when it names none, "-" when sid
 * is not listed; into out[64]. */
static void listed_owner(int i, const char *chat, const char *sid, char out[64])
{
    snprintf(out, 64, "-");
    rc_end e = rc_list(nodes[i].conn, chat);
    Moat__V1__ListSessionsResponse *r = (Moat__V1__ListSessionsResponse *)e.resp;
    for (size_t k = 0; r != NULL && k < r->n_sessions; k++)
        if (strcmp(r->sessions[k]->session_id, sid) == 0)
            snprintf(out, 64, "%s", r->sessions[k]->owner_address);
    rc_free(&e);
}

/* A session node 1's runtime holds is answered there, never sent elsewhere: by its own record,
 * and even under a record that names another live node (which no create writes: a record names
 * the node that made its container), since the node's session cache knows it. */
static void test_local_never_moved(void **state)
{
    (void)state;
    ETCD_REQUIRE();
    moat_require(rc_docker_present(), "no Docker engine at /var/run/docker.sock");
    wait_members();
    /* The chat's home on node 1: its create is placed there. */
    char chat[MOAT_UUID_STR_LEN], key[MOAT_RECORD_KEY_MAX], home[MOAT_RECORD_VALUE_MAX];
    moat_uuid_generate(chat);
    size_t hn = moat_home_record_encode(nodes[0].id, home, sizeof(home));
    assert_true(moat_home_record_key(chat, key, sizeof(key)) > 0 && hn > 0);
    rc_put_key(etcd, key, home, hn, 0);
    Moat__V1__CreateSessionRequest cr = MOAT__V1__CREATE_SESSION_REQUEST__INIT;
    cr.chat_id = chat;
    rc_end e = rc_call(nodes[0].conn, "/moat.v1.Sandboxes/CreateSession", &cr.base,
                       &moat__v1__sandbox_session__descriptor);
    assert_int_equal(e.code, MOAT_CODE_OK);
    assert_non_null(e.resp);
    char sid[MOAT_UUID_STR_LEN];
    snprintf(sid, sizeof(sid), "%s", ((Moat__V1__SandboxSession *)e.resp)->session_id);
    assert_string_equal(((Moat__V1__SandboxSession *)e.resp)->owner_address, "");
    rc_free(&e);

    char other[64], seen[64];
    node_address(1, other, sizeof(other));
    for (int round = 0; round < 2; round++) {
        if (round == 1) {
            rc_put_record(etcd, sid, chat, nodes[1].id, node_lease(1), other, MOAT_RECORD_RUNNING,
                          "");
            ETCD_WAIT_FOR((listed_owner(0, chat, sid, seen), strcmp(seen, other) == 0), WAIT_S);
        }
        e = rc_get(nodes[0].conn, sid);
        assert_int_equal(e.code, MOAT_CODE_OK);
        assert_string_equal(((Moat__V1__SandboxSession *)e.resp)->owner_address, "");
        assert_int_equal(((Moat__V1__SandboxSession *)e.resp)->status,
                         MOAT__V1__SESSION_STATUS__RUNNING);
        rc_free(&e);
        e = rc_renew(nodes[0].conn, sid);
        assert_int_equal(e.code, MOAT_CODE_OK);
        e = rc_run_command(nodes[0].conn, sid);
        assert_int_equal(e.code, MOAT_CODE_OK);
    }
    e = rc_stop(nodes[0].conn, sid);
    assert_int_equal(e.code, MOAT_CODE_OK);
    assert_true(((Moat__V1__StopSessionResponse *)e.resp)->stopped);
    rc_free(&e);
    rc_clear_records(etcd);
}

/* A record whose node is not a member, or is under another lease (a restarted node): node_lost
 * from any node, GetSession GONE, StopSession not stopped. */
static void test_node_lost(void **state)
{
    (void)state;
    ETCD_REQUIRE();
    wait_members();
    char gone[MOAT_UUID_STR_LEN], old[MOAT_UUID_STR_LEN], chat[MOAT_UUID_STR_LEN];
    moat_uuid_generate(gone);
    moat_uuid_generate(old);
    moat_uuid_generate(chat);
    rc_put_record(etcd, gone, chat, "never-a-member", 7, "127.0.0.1:1", MOAT_RECORD_RUNNING, "");
    rc_put_record(etcd, old, chat, nodes[1].id, node_lease(1) + 1, "127.0.0.1:1",
                  MOAT_RECORD_RUNNING, "");
    const char *sids[] = {gone, old};
    for (int i = 0; i < NODES; i++) {
        for (size_t k = 0; k < 2; k++) {
            rc_end e;
            ETCD_WAIT_FOR((e = rc_run_command(nodes[i].conn, sids[k]),
                           rc_is(&e, MOAT_CODE_FAILED_PRECONDITION, "node_lost")),
                          WAIT_S);
            e = rc_renew(nodes[i].conn, sids[k]);
            assert_true(rc_is(&e, MOAT_CODE_FAILED_PRECONDITION, "node_lost"));
            e = rc_get(nodes[i].conn, sids[k]);
            assert_int_equal(e.code, MOAT_CODE_OK);
            assert_int_equal(((Moat__V1__SandboxSession *)e.resp)->status,
                             MOAT__V1__SESSION_STATUS__GONE);
            rc_free(&e);
            e = rc_stop(nodes[i].conn, sids[k]);
            assert_int_equal(e.code, MOAT_CODE_OK);
            assert_false(((Moat__V1__StopSessionResponse *)e.resp)->stopped);
            rc_free(&e);
        }
    }
    rc_clear_records(etcd);
}

/* A member dies (its lease revoked, what its expiry does): every node, answering from its copy
 * of the directory, turns session_moved into node_lost for its sessions once the watch brings
 * the deletion. A record put just before the call, which a node's copy may not have yet, routes
 * at once all the same (read from etcd then): no wait before the first call. */
static void test_member_death(void **state)
{
    (void)state;
    ETCD_REQUIRE();
    wait_members();
    int64_t lease = rc_put_member(etcd, "route-mortal", "127.0.0.1:7999");
    assert_true(lease != 0);
    char sid[MOAT_UUID_STR_LEN], chat[MOAT_UUID_STR_LEN];
    moat_uuid_generate(sid);
    moat_uuid_generate(chat);
    rc_put_record(etcd, sid, chat, "route-mortal", lease, "127.0.0.1:7999", MOAT_RECORD_RUNNING,
                  "");
    /* The nodes whose engine answers route after its NOT_FOUND, without waiting. */
    for (int i = 0; i < 2; i++) {
        rc_end e = rc_run_command(nodes[i].conn, sid);
        assert_true(rc_is(&e, MOAT_CODE_FAILED_PRECONDITION, "session_moved"));
        assert_string_equal(e.owner_address, "127.0.0.1:7999");
    }
    rc_revoke(etcd, lease);
    for (int i = 0; i < NODES; i++) {
        rc_end e;
        ETCD_WAIT_FOR((e = rc_run_command(nodes[i].conn, sid),
                       rc_is(&e, MOAT_CODE_FAILED_PRECONDITION, "node_lost")),
                      WAIT_S);
        assert_string_equal(e.owner_node, "route-mortal");
        e = rc_get(nodes[i].conn, sid);
        assert_int_equal(e.code, MOAT_CODE_OK);
        assert_int_equal(((Moat__V1__SandboxSession *)e.resp)->status,
                         MOAT__V1__SESSION_STATUS__GONE);
        rc_free(&e);
    }
    rc_clear_records(etcd);
}

/* An ended record answers as an ended local session; no record is NOT_FOUND as today (from the
 * nodes whose engine answers). */
static void test_ended_and_absent(void **state)
{
    (void)state;
    ETCD_REQUIRE();
    wait_members();
    char sid[MOAT_UUID_STR_LEN], chat[MOAT_UUID_STR_LEN], none[MOAT_UUID_STR_LEN];
    moat_uuid_generate(sid);
    moat_uuid_generate(chat);
    moat_uuid_generate(none);
    rc_put_record(etcd, sid, chat, nodes[1].id, node_lease(1), "127.0.0.1:1", MOAT_RECORD_ENDED,
                  "stopped");
    for (int i = 0; i < NODES; i++) {
        rc_end e;
        ETCD_WAIT_FOR((e = rc_run_command(nodes[i].conn, sid),
                       rc_is(&e, MOAT_CODE_FAILED_PRECONDITION, "session_not_running")),
                      WAIT_S);
        e = rc_renew(nodes[i].conn, sid);
        assert_true(rc_is(&e, MOAT_CODE_NOT_FOUND, "session_not_found"));
        e = rc_get(nodes[i].conn, sid);
        assert_int_equal(e.code, MOAT_CODE_OK);
        assert_int_equal(((Moat__V1__SandboxSession *)e.resp)->status,
                         MOAT__V1__SESSION_STATUS__STOPPED);
        rc_free(&e);
    }
    for (int i = 0; i < 2; i++) {
        rc_end e = rc_run_command(nodes[i].conn, none);
        assert_true(rc_is(&e, MOAT_CODE_NOT_FOUND, "session_not_found"));
        e = rc_get(nodes[i].conn, none);
        assert_true(rc_is(&e, MOAT_CODE_NOT_FOUND, "session_not_found"));
    }
    /* The node without an engine cannot tell an unrecorded session of its own from none. */
    rc_end e = rc_run_command(nodes[2].conn, none);
    assert_true(rc_is(&e, MOAT_CODE_UNAVAILABLE, "docker_unreachable"));
    rc_clear_records(etcd);
}

/* A record that is not one: a status with a reason; ListSessions leaves it out. */
static void test_garbage(void **state)
{
    (void)state;
    ETCD_REQUIRE();
    wait_members();
    char bad[MOAT_UUID_STR_LEN], good[MOAT_UUID_STR_LEN], chat[MOAT_UUID_STR_LEN], addr[64];
    moat_uuid_generate(bad);
    moat_uuid_generate(good);
    moat_uuid_generate(chat);
    node_address(0, addr, sizeof(addr));
    rc_put_raw(etcd, bad, "{\"node_id\": 12, not json");
    rc_put_record(etcd, good, chat, nodes[0].id, node_lease(0), addr, MOAT_RECORD_RUNNING, "");
    for (int i = 0; i < NODES; i++) {
        rc_end e;
        ETCD_WAIT_FOR((e = rc_run_command(nodes[i].conn, bad),
                       rc_is(&e, MOAT_CODE_INTERNAL, "session_record_invalid")),
                      WAIT_S);
        e = rc_get(nodes[i].conn, bad);
        assert_true(rc_is(&e, MOAT_CODE_INTERNAL, "session_record_invalid"));
        ETCD_WAIT_FOR(rc_list_count(nodes[i].conn, "") == 1, WAIT_S);
        e = rc_list(nodes[i].conn, "");
        assert_int_equal(e.code, MOAT_CODE_OK);
        Moat__V1__ListSessionsResponse *r = (Moat__V1__ListSessionsResponse *)e.resp;
        assert_int_equal(r->n_sessions, 1);
        assert_string_equal(r->sessions[0]->session_id, good);
        rc_free(&e);
    }
    rc_clear_records(etcd);
}

/* Records on all three nodes, a lost node's and ended ones: every node lists the same live and
 * GONE sessions, and a chat's alone. */
static void test_list_cluster(void **state)
{
    (void)state;
    ETCD_REQUIRE();
    wait_members();
    enum { PER_NODE = 7 };
    char chat[MOAT_UUID_STR_LEN], other[MOAT_UUID_STR_LEN], sid[MOAT_UUID_STR_LEN];
    moat_uuid_generate(chat);
    moat_uuid_generate(other);
    for (int i = 0; i < NODES; i++) {
        char addr[64];
        node_address(i, addr, sizeof(addr));
        for (int k = 0; k < PER_NODE; k++) {
            moat_uuid_generate(sid);
            rc_put_record(etcd, sid, k == 0 ? chat : other, nodes[i].id, node_lease(i), addr,
                          MOAT_RECORD_RUNNING, "");
        }
        moat_uuid_generate(sid);
        rc_put_record(etcd, sid, chat, nodes[i].id, node_lease(i), addr, MOAT_RECORD_ENDED,
                      "expired");
    }
    moat_uuid_generate(sid);
    rc_put_record(etcd, sid, chat, "lost-node", 9, "127.0.0.1:1", MOAT_RECORD_RUNNING, "");
    for (int i = 0; i < NODES; i++) {
        rc_end e;
        ETCD_WAIT_FOR(rc_list_count(nodes[i].conn, "") == NODES * PER_NODE + 1, WAIT_S);
        e = rc_list(nodes[i].conn, "");
        Moat__V1__ListSessionsResponse *r = (Moat__V1__ListSessionsResponse *)e.resp;
        assert_int_equal(r->n_sessions, NODES * PER_NODE + 1);
        size_t gone = 0;
        for (size_t k = 0; k < r->n_sessions; k++)
            gone += r->sessions[k]->status == MOAT__V1__SESSION_STATUS__GONE;
        assert_int_equal(gone, 1);
        rc_free(&e);
        e = rc_list(nodes[i].conn, chat);
        r = (Moat__V1__ListSessionsResponse *)e.resp;
        assert_int_equal(e.code, MOAT_CODE_OK);
        assert_int_equal(r->n_sessions, NODES + 1);
        for (size_t k = 0; k < r->n_sessions; k++)
            assert_string_equal(r->sessions[k]->chat_id, chat);
        rc_free(&e);
    }
    rc_clear_records(etcd);
}

/* More records than one range takes: ListSessions pages through them all, each once. */
static void test_list_pages(void **state)
{
    (void)state;
    ETCD_REQUIRE();
    wait_members();
    enum { TOTAL = 2 * MOAT_DIRECTORY_PAGE + 3 };
    char chat[MOAT_UUID_STR_LEN], addr[64];
    moat_uuid_generate(chat);
    node_address(0, addr, sizeof(addr));
    assert_true(rc_put_records(etcd, TOTAL, chat, nodes[0].id, node_lease(0), addr));
    ETCD_WAIT_FOR(rc_list_count(nodes[1].conn, "") == TOTAL, WAIT_S);
    rc_end e = rc_list(nodes[1].conn, "");
    assert_int_equal(e.code, MOAT_CODE_OK);
    Moat__V1__ListSessionsResponse *r = (Moat__V1__ListSessionsResponse *)e.resp;
    assert_int_equal(r->n_sessions, TOTAL);
    /* In key order, so a session seen twice would sit beside itself. */
    for (size_t k = 1; k < r->n_sessions; k++)
        assert_true(strcmp(r->sessions[k - 1]->session_id, r->sessions[k]->session_id) < 0);
    rc_free(&e);
    rc_clear_records(etcd);
}

/* etcd down: calls that need the directory end UNAVAILABLE etcd_unavailable, none hangs; when
 * etcd is back they route again. */
static void test_etcd_down(void **state)
{
    (void)state;
    ETCD_REQUIRE();
    wait_members();
    char sid[MOAT_UUID_STR_LEN], chat[MOAT_UUID_STR_LEN], addr[64];
    moat_uuid_generate(sid);
    moat_uuid_generate(chat);
    node_address(1, addr, sizeof(addr));
    rc_put_record(etcd, sid, chat, nodes[1].id, node_lease(1), addr, MOAT_RECORD_RUNNING, "");
    for (int m = 0; m < ETCD_CLUSTER_MEMBERS; m++)
        etcd_cluster_kill(&cl, m);
    for (int i = 0; i < NODES; i++) {
        rc_end e = rc_run_command(nodes[i].conn, sid);
        assert_true(rc_is(&e, MOAT_CODE_UNAVAILABLE, "etcd_unavailable"));
        e = rc_get(nodes[i].conn, sid);
        assert_true(rc_is(&e, MOAT_CODE_UNAVAILABLE, "etcd_unavailable"));
        e = rc_list(nodes[i].conn, "");
        assert_true(rc_is(&e, MOAT_CODE_UNAVAILABLE, "etcd_unavailable"));
    }
    for (int m = 0; m < ETCD_CLUSTER_MEMBERS; m++)
        assert_int_equal(etcd_cluster_restart(&cl, m), 0);
    wait_members();
    rc_end e;
    ETCD_WAIT_FOR((e = rc_run_command(nodes[0].conn, sid),
                   rc_is(&e, MOAT_CODE_FAILED_PRECONDITION, "session_moved")),
                  WAIT_S);
    /* Each node's copy of the directory loads again and follows what changes from then on. */
    char later[MOAT_UUID_STR_LEN];
    moat_uuid_generate(later);
    rc_put_record(etcd, later, chat, nodes[1].id, node_lease(1), addr, MOAT_RECORD_RUNNING, "");
    for (int i = 0; i < NODES; i++)
        ETCD_WAIT_FOR(rc_list_count(nodes[i].conn, chat) == 2, WAIT_S);
    rc_clear_records(etcd);
    for (int i = 0; i < NODES; i++)
        ETCD_WAIT_FOR(rc_list_count(nodes[i].conn, "") == 0, WAIT_S);
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_ALL);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_moved),
        cmocka_unit_test(test_node_lost),
        cmocka_unit_test(test_member_death),
        cmocka_unit_test(test_ended_and_absent),
        cmocka_unit_test(test_garbage),
        cmocka_unit_test(test_list_cluster),
        cmocka_unit_test(test_list_pages),
        cmocka_unit_test(test_moved_from_copy),
        cmocka_unit_test(test_local_never_moved),
        cmocka_unit_test(test_etcd_down),
    };
    int rc = moat_run_group_tests("test_cluster_route", tests, group_setup, group_teardown);
    curl_global_cleanup();
    return rc;
}
