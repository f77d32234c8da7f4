/* The read path of a cluster (docs/CLUSTER.md, "Routing") with real parts: a three-member etcd
 * started here and three real moatd nodes on loopback. Two of them have the shared dockerd (own
 * instance and name prefix, no sandbox is made here), the third a dead engine socket, so both
 * ways of routing run: after the runtime's NOT_FOUND, and from the directory alone while the
 * engine is down. The session records are put here as their owner would put them
 * (records.h's encoder): calls to a non-owner end session_moved with the owner's address, a
 * record whose node is gone is node_lost from any node, an ended one answers as an ended local
 * session, garbage is a status with a reason, ListSessions and GetSession answer for the whole
 * cluster, and with etcd down every call ends UNAVAILABLE with a reason instead of hanging. */
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

#include "cluster/directory.h"
#include "cluster/records.h"
#include "etcd_cluster.h"
#include "harness.h"
#include "moat/v1/exec.pb-c.h"
#include "moat/v1/files.pb-c.h"
#include "moat/v1/sandbox.pb-c.h"

#define WAIT_S 60
#define NODES  3

static etcd_cluster cl;
static moat_etcd *etcd;
static moatd_proc node[NODES];
static bool started[NODES];
static char node_id[NODES][32];
static raw_conn *conn[NODES];

/* A call's End: code, reason and the details the test looks at. */
typedef struct end_status {
    int code; /* -1: no End (transport failure) */
    char reason[64];
    char owner_address[MOAT_NODE_ADDRESS_MAX];
    char owner_node[MOAT_NODE_ID_MAX];
    ProtobufCMessage *resp; /* the response message, when resp_desc was given */
} end_status;

static void copy_slice(moat_slice s, char *out, size_t cap)
{
    size_t n = s.len < cap - 1 ? s.len : cap - 1;
    if (n > 0)
        memcpy(out, s.data, n);
    out[n] = '\0';
}

static end_status call(raw_conn *c, const char *method, const ProtobufCMessage *req,
                       const ProtobufCMessageDescriptor *resp_desc)
{
    end_status e = {-1, "", "", "", NULL};
    uint32_t id = raw_call(c, method, 0, req);
    for (;;) {
        moat_frame f;
        if (id == 0 || raw_recv_stream(c, id, &f, 60000) != 1)
            return e;
        if (f.kind == MOAT_FRAME_MESSAGE && resp_desc != NULL && e.resp == NULL) {
            e.resp = protobuf_c_message_unpack(resp_desc, NULL, f.u.message.payload.len,
                                               f.u.message.payload.data);
        } else if (f.kind == MOAT_FRAME_END) {
            e.code = (int)f.u.end.code;
            copy_slice(f.u.end.reason, e.reason, sizeof(e.reason));
            for (size_t i = 0; i < f.u.end.detail_count; i++) {
                if (moat_slice_eq_str(f.u.end.details[i].key, "owner_address"))
                    copy_slice(f.u.end.details[i].value, e.owner_address, sizeof(e.owner_address));
                if (moat_slice_eq_str(f.u.end.details[i].key, "owner_node"))
                    copy_slice(f.u.end.details[i].value, e.owner_node, sizeof(e.owner_node));
            }
            return e;
        }
    }
}

static void end_free(end_status *e)
{
    if (e->resp != NULL)
        protobuf_c_message_free_unpacked(e->resp, NULL);
    e->resp = NULL;
}

static end_status run_command(raw_conn *c, const char *sid)
{
    Moat__V1__RunCommandRequest r = MOAT__V1__RUN_COMMAND_REQUEST__INIT;
    r.session_id = (char *)sid;
    r.command = (char *)"echo hi";
    return call(c, "/moat.v1.Exec/RunCommand", &r.base, NULL);
}

static end_status stat_file(raw_conn *c, const char *sid)
{
    Moat__V1__StatRequest r = MOAT__V1__STAT_REQUEST__INIT;
    r.session_id = (char *)sid;
    r.path = (char *)"/tmp";
    return call(c, "/moat.v1.Files/Stat", &r.base, NULL);
}

static end_status interactive(raw_conn *c, const char *sid)
{
    Moat__V1__InteractiveRequest r = MOAT__V1__INTERACTIVE_REQUEST__INIT;
    Moat__V1__InteractiveStart s = MOAT__V1__INTERACTIVE_START__INIT;
    s.session_id = (char *)sid;
    s.command = (char *)"cat";
    r.input_case = MOAT__V1__INTERACTIVE_REQUEST__INPUT_START;
    r.start = &s;
    return call(c, "/moat.v1.Exec/Interactive", &r.base, NULL);
}

static end_status renew(raw_conn *c, const char *sid)
{
    Moat__V1__RenewSessionRequest r = MOAT__V1__RENEW_SESSION_REQUEST__INIT;
    r.session_id = (char *)sid;
    return call(c, "/moat.v1.Sandboxes/RenewSession", &r.base, NULL);
}

static end_status stop(raw_conn *c, const char *sid)
{
    Moat__V1__StopSessionRequest r = MOAT__V1__STOP_SESSION_REQUEST__INIT;
    r.session_id = (char *)sid;
    return call(c, "/moat.v1.Sandboxes/StopSession", &r.base,
                &moat__v1__stop_session_response__descriptor);
}

static end_status get(raw_conn *c, const char *sid)
{
    Moat__V1__GetSessionRequest r = MOAT__V1__GET_SESSION_REQUEST__INIT;
    r.session_id = (char *)sid;
    return call(c, "/moat.v1.Sandboxes/GetSession", &r.base,
                &moat__v1__sandbox_session__descriptor);
}

static end_status list(raw_conn *c, const char *chat)
{
    Moat__V1__ListSessionsRequest r = MOAT__V1__LIST_SESSIONS_REQUEST__INIT;
    r.chat_id = (char *)chat;
    return call(c, "/moat.v1.Sandboxes/ListSessions", &r.base,
                &moat__v1__list_sessions_response__descriptor);
}

/* How many sessions ListSessions lists, or -1. A listing comes from the node's copy of the
 * directory, which follows etcd by its watch: tests wait for what they put to show. */
static long list_count(raw_conn *c, const char *chat)
{
    end_status e = list(c, chat);
    long n = e.code == MOAT_CODE_OK && e.resp != NULL
                 ? (long)((Moat__V1__ListSessionsResponse *)e.resp)->n_sessions
                 : -1;
    end_free(&e);
    return n;
}

static bool is(const end_status *e, int code, const char *reason)
{
    return e->code == code && strcmp(e->reason, reason) == 0;
}

static void new_uuid(char out[MOAT_UUID_STR_LEN])
{
    moat_uuid_generate(out);
}

/* The address the test writes in a record for node i: its real listener. */
static void node_address(int i, char *out, size_t cap)
{
    snprintf(out, cap, "127.0.0.1:%d", node[i].port);
}

static int64_t node_lease(int i)
{
    moat_node n;
    assert_true(etcd_cluster_lists_node(etcd, node_id[i], &n));
    return n.lease;
}

/* Puts sessions/<sid> as its owner would. */
static void put_record(const char *sid, const char *chat, const char *owner, int64_t lease,
                       const char *address, moat_record_state state, const char *end_reason)
{
    moat_session_record r;
    memset(&r, 0, sizeof(r));
    snprintf(r.session_id, sizeof(r.session_id), "%s", sid);
    snprintf(r.chat_id, sizeof(r.chat_id), "%s", chat);
    snprintf(r.node_id, sizeof(r.node_id), "%s", owner);
    r.node_lease = lease;
    snprintf(r.address, sizeof(r.address), "%s", address);
    r.state = state;
    snprintf(r.image, sizeof(r.image), "moat-sandbox:latest");
    r.created_at_ms = moat_time_now_ms();
    r.expires_at_ms = r.created_at_ms + 600000;
    if (state == MOAT_RECORD_ENDED) {
        r.ended_at_ms = r.created_at_ms + 1;
        snprintf(r.end_reason, sizeof(r.end_reason), "%s", end_reason);
    }
    char key[MOAT_RECORD_KEY_MAX], value[MOAT_RECORD_VALUE_MAX];
    size_t kn = moat_session_record_key(sid, key, sizeof(key));
    size_t vn = moat_session_record_encode(&r, value, sizeof(value));
    assert_true(kn > 0 && vn > 0);
    moat_etcd_result res;
    moat_status st;
    assert_int_equal(moat_etcd_put(etcd, (moat_slice){(const uint8_t *)key, kn},
                                   (moat_slice){(const uint8_t *)value, vn}, 0, &res, &st),
                     MOAT_CODE_OK);
    moat_etcd_result_free(&res);
}

static void put_raw(const char *sid, const char *value)
{
    char key[MOAT_RECORD_KEY_MAX];
    size_t kn = moat_session_record_key(sid, key, sizeof(key));
    moat_etcd_result res;
    moat_status st;
    assert_int_equal(moat_etcd_put(etcd, (moat_slice){(const uint8_t *)key, kn},
                                   moat_slice_str(value), 0, &res, &st),
                     MOAT_CODE_OK);
    moat_etcd_result_free(&res);
}

/* Removes every record this run put (the records live in the run's own etcd, but tests that
 * list must not see another test's). */
static void clear_records(void)
{
    moat_etcd_result res;
    moat_status st;
    moat_etcd_delete(etcd, moat_slice_str(MOAT_SESSIONS_PREFIX), true, &res, &st);
    moat_etcd_result_free(&res);
}

static int group_setup(void **state)
{
    (void)state;
    if (etcd_cluster_open(&cl, &etcd, 1000, WAIT_S) != 0)
        return -1;
    if (!etcd_cluster_available())
        return 0;
    char eps[300];
    snprintf(eps, sizeof(eps), "--cluster_etcd_endpoints=%s,%s,%s", cl.urls[0], cl.urls[1],
             cl.urls[2]);
    for (int i = 0; i < NODES; i++) {
        char id_arg[64], adv[64], inst[64], prefix[64];
        snprintf(node_id[i], sizeof(node_id[i]), "route%d-n%d", (int)getpid(), i + 1);
        snprintf(id_arg, sizeof(id_arg), "--cluster_node_id=%s", node_id[i]);
        /* Records carry the address clients dial; the test writes the real one into them. */
        snprintf(adv, sizeof(adv), "--cluster_advertise=127.0.0.1:%d", 20000 + i);
        snprintf(inst, sizeof(inst), "--instance=route%d-n%d", (int)getpid(), i + 1);
        snprintf(prefix, sizeof(prefix), "--container_name_prefix=moat-route%d-n%d-", (int)getpid(),
                 i + 1);
        const char *extra[] = {eps,  id_arg, adv, "--cluster_lease_ttl_seconds=2",
                               inst, prefix, NULL};
        /* The third node's engine is dead: it routes from the directory alone. */
        if (!moatd_start(&node[i], i < 2, extra))
            return -1;
        started[i] = true;
        conn[i] = raw_connect_ready(node[i].port, NULL);
        if (conn[i] == NULL)
            return -1;
    }
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    for (int i = 0; i < NODES; i++) {
        if (conn[i] != NULL)
            raw_close(conn[i]);
        if (started[i]) {
            moatd_stop(&node[i]);
            moatd_remove_dir(node[i].state_dir);
        }
    }
    etcd_cluster_close(&cl, etcd);
    return 0;
}

static void wait_members(void)
{
    for (int i = 0; i < NODES; i++)
        ETCD_WAIT_FOR(etcd_cluster_lists_node(etcd, node_id[i], NULL), WAIT_S);
}

/* Every call naming a session held by node 2 ends session_moved with its address on nodes 1
 * and 3; GetSession answers it from the record. */
static void test_moved(void **state)
{
    (void)state;
    ETCD_REQUIRE();
    wait_members();
    char sid[MOAT_UUID_STR_LEN], chat[MOAT_UUID_STR_LEN], addr[64];
    new_uuid(sid);
    new_uuid(chat);
    node_address(1, addr, sizeof(addr));
    put_record(sid, chat, node_id[1], node_lease(1), addr, MOAT_RECORD_RUNNING, "");
    const int asked[] = {0, 2};
    for (size_t k = 0; k < 2; k++) {
        raw_conn *c = conn[asked[k]];
        end_status e;
        /* The dead engine's node routes once its probe has called the engine down. */
        ETCD_WAIT_FOR(
            (e = run_command(c, sid), is(&e, MOAT_CODE_FAILED_PRECONDITION, "session_moved")),
            WAIT_S);
        assert_string_equal(e.owner_address, addr);
        assert_string_equal(e.owner_node, node_id[1]);
        end_status calls[] = {stat_file(c, sid), interactive(c, sid), renew(c, sid), stop(c, sid)};
        for (size_t i = 0; i < sizeof(calls) / sizeof(calls[0]); i++) {
            assert_true(is(&calls[i], MOAT_CODE_FAILED_PRECONDITION, "session_moved"));
            assert_string_equal(calls[i].owner_address, addr);
            assert_string_equal(calls[i].owner_node, node_id[1]);
            end_free(&calls[i]);
        }
        e = get(c, sid);
        assert_int_equal(e.code, MOAT_CODE_OK);
        Moat__V1__SandboxSession *s = (Moat__V1__SandboxSession *)e.resp;
        assert_non_null(s);
        assert_string_equal(s->session_id, sid);
        assert_string_equal(s->chat_id, chat);
        assert_int_equal(s->status, MOAT__V1__SESSION_STATUS__RUNNING);
        end_free(&e);
    }
    clear_records();
}

/* A record whose node is not a member, or is under another lease (a restarted node): node_lost
 * from any node, GetSession GONE, StopSession not stopped. */
static void test_node_lost(void **state)
{
    (void)state;
    ETCD_REQUIRE();
    wait_members();
    char gone[MOAT_UUID_STR_LEN], old[MOAT_UUID_STR_LEN], chat[MOAT_UUID_STR_LEN];
    new_uuid(gone);
    new_uuid(old);
    new_uuid(chat);
    put_record(gone, chat, "never-a-member", 7, "127.0.0.1:1", MOAT_RECORD_RUNNING, "");
    put_record(old, chat, node_id[1], node_lease(1) + 1, "127.0.0.1:1", MOAT_RECORD_RUNNING, "");
    const char *sids[] = {gone, old};
    for (int i = 0; i < NODES; i++) {
        for (size_t k = 0; k < 2; k++) {
            end_status e;
            ETCD_WAIT_FOR((e = run_command(conn[i], sids[k]),
                           is(&e, MOAT_CODE_FAILED_PRECONDITION, "node_lost")),
                          WAIT_S);
            e = renew(conn[i], sids[k]);
            assert_true(is(&e, MOAT_CODE_FAILED_PRECONDITION, "node_lost"));
            e = get(conn[i], sids[k]);
            assert_int_equal(e.code, MOAT_CODE_OK);
            assert_int_equal(((Moat__V1__SandboxSession *)e.resp)->status,
                             MOAT__V1__SESSION_STATUS__GONE);
            end_free(&e);
            e = stop(conn[i], sids[k]);
            assert_int_equal(e.code, MOAT_CODE_OK);
            assert_false(((Moat__V1__StopSessionResponse *)e.resp)->stopped);
            end_free(&e);
        }
    }
    clear_records();
}

/* An ended record answers as an ended local session; no record is NOT_FOUND as today (from the
 * nodes whose engine answers). */
static void test_ended_and_absent(void **state)
{
    (void)state;
    ETCD_REQUIRE();
    wait_members();
    char sid[MOAT_UUID_STR_LEN], chat[MOAT_UUID_STR_LEN], none[MOAT_UUID_STR_LEN];
    new_uuid(sid);
    new_uuid(chat);
    new_uuid(none);
    put_record(sid, chat, node_id[1], node_lease(1), "127.0.0.1:1", MOAT_RECORD_ENDED, "stopped");
    for (int i = 0; i < NODES; i++) {
        end_status e;
        ETCD_WAIT_FOR((e = run_command(conn[i], sid),
                       is(&e, MOAT_CODE_FAILED_PRECONDITION, "session_not_running")),
                      WAIT_S);
        e = renew(conn[i], sid);
        assert_true(is(&e, MOAT_CODE_NOT_FOUND, "session_not_found"));
        e = get(conn[i], sid);
        assert_int_equal(e.code, MOAT_CODE_OK);
        assert_int_equal(((Moat__V1__SandboxSession *)e.resp)->status,
                         MOAT__V1__SESSION_STATUS__STOPPED);
        end_free(&e);
    }
    for (int i = 0; i < 2; i++) {
        end_status e = run_command(conn[i], none);
        assert_true(is(&e, MOAT_CODE_NOT_FOUND, "session_not_found"));
        e = get(conn[i], none);
        assert_true(is(&e, MOAT_CODE_NOT_FOUND, "session_not_found"));
    }
    /* The node without an engine cannot tell an unrecorded session of its own from none. */
    end_status e = run_command(conn[2], none);
    assert_true(is(&e, MOAT_CODE_UNAVAILABLE, "docker_unreachable"));
    clear_records();
}

/* A record that is not one: a status with a reason; ListSessions leaves it out. */
static void test_garbage(void **state)
{
    (void)state;
    ETCD_REQUIRE();
    wait_members();
    char bad[MOAT_UUID_STR_LEN], good[MOAT_UUID_STR_LEN], chat[MOAT_UUID_STR_LEN], addr[64];
    new_uuid(bad);
    new_uuid(good);
    new_uuid(chat);
    node_address(0, addr, sizeof(addr));
    put_raw(bad, "{\"node_id\": 12, not json");
    put_record(good, chat, node_id[0], node_lease(0), addr, MOAT_RECORD_RUNNING, "");
    for (int i = 0; i < NODES; i++) {
        end_status e;
        ETCD_WAIT_FOR(
            (e = run_command(conn[i], bad), is(&e, MOAT_CODE_INTERNAL, "session_record_invalid")),
            WAIT_S);
        e = get(conn[i], bad);
        assert_true(is(&e, MOAT_CODE_INTERNAL, "session_record_invalid"));
        ETCD_WAIT_FOR(list_count(conn[i], "") == 1, WAIT_S);
        e = list(conn[i], "");
        assert_int_equal(e.code, MOAT_CODE_OK);
        Moat__V1__ListSessionsResponse *r = (Moat__V1__ListSessionsResponse *)e.resp;
        assert_int_equal(r->n_sessions, 1);
        assert_string_equal(r->sessions[0]->session_id, good);
        end_free(&e);
    }
    clear_records();
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
    new_uuid(chat);
    new_uuid(other);
    for (int i = 0; i < NODES; i++) {
        char addr[64];
        node_address(i, addr, sizeof(addr));
        for (int k = 0; k < PER_NODE; k++) {
            new_uuid(sid);
            put_record(sid, k == 0 ? chat : other, node_id[i], node_lease(i), addr,
                       MOAT_RECORD_RUNNING, "");
        }
        new_uuid(sid);
        put_record(sid, chat, node_id[i], node_lease(i), addr, MOAT_RECORD_ENDED, "expired");
    }
    new_uuid(sid);
    put_record(sid, chat, "lost-node", 9, "127.0.0.1:1", MOAT_RECORD_RUNNING, "");
    for (int i = 0; i < NODES; i++) {
        end_status e;
        ETCD_WAIT_FOR(list_count(conn[i], "") == NODES * PER_NODE + 1, WAIT_S);
        e = list(conn[i], "");
        Moat__V1__ListSessionsResponse *r = (Moat__V1__ListSessionsResponse *)e.resp;
        assert_int_equal(r->n_sessions, NODES * PER_NODE + 1);
        size_t gone = 0;
        for (size_t k = 0; k < r->n_sessions; k++)
            gone += r->sessions[k]->status == MOAT__V1__SESSION_STATUS__GONE;
        assert_int_equal(gone, 1);
        end_free(&e);
        e = list(conn[i], chat);
        r = (Moat__V1__ListSessionsResponse *)e.resp;
        assert_int_equal(e.code, MOAT_CODE_OK);
        assert_int_equal(r->n_sessions, NODES + 1);
        for (size_t k = 0; k < r->n_sessions; k++)
            assert_string_equal(r->sessions[k]->chat_id, chat);
        end_free(&e);
    }
    clear_records();
}

/* More records than one range takes: ListSessions pages through them all, each once. */
static void test_list_pages(void **state)
{
    (void)state;
    ETCD_REQUIRE();
    wait_members();
    enum { TOTAL = 2 * MOAT_DIRECTORY_PAGE + 3, BATCH = 100 };
    char chat[MOAT_UUID_STR_LEN], addr[64];
    new_uuid(chat);
    node_address(0, addr, sizeof(addr));
    int64_t lease = node_lease(0);
    static char keys[BATCH][MOAT_RECORD_KEY_MAX], values[BATCH][MOAT_RECORD_VALUE_MAX];
    moat_etcd_op ops[BATCH];
    for (int done = 0; done < TOTAL;) {
        int n = TOTAL - done < BATCH ? TOTAL - done : BATCH;
        for (int k = 0; k < n; k++) {
            moat_session_record r;
            memset(&r, 0, sizeof(r));
            new_uuid(r.session_id);
            snprintf(r.chat_id, sizeof(r.chat_id), "%s", chat);
            snprintf(r.node_id, sizeof(r.node_id), "%s", node_id[0]);
            r.node_lease = lease;
            snprintf(r.address, sizeof(r.address), "%s", addr);
            r.state = MOAT_RECORD_RUNNING;
            snprintf(r.image, sizeof(r.image), "moat-sandbox:latest");
            r.created_at_ms = moat_time_now_ms();
            r.expires_at_ms = r.created_at_ms + 600000;
            size_t kn = moat_session_record_key(r.session_id, keys[k], sizeof(keys[k]));
            size_t vn = moat_session_record_encode(&r, values[k], sizeof(values[k]));
            ops[k] = (moat_etcd_op){MOAT_ETCD_OP_PUT,
                                    {(const uint8_t *)keys[k], kn},
                                    {(const uint8_t *)values[k], vn},
                                    0,
                                    false};
        }
        moat_etcd_txn_spec txn = {NULL, 0, ops, (size_t)n, NULL, 0};
        moat_etcd_result res;
        moat_status st;
        assert_int_equal(moat_etcd_txn(etcd, &txn, &res, &st), MOAT_CODE_OK);
        moat_etcd_result_free(&res);
        done += n;
    }
    ETCD_WAIT_FOR(list_count(conn[1], "") == TOTAL, WAIT_S);
    end_status e = list(conn[1], "");
    assert_int_equal(e.code, MOAT_CODE_OK);
    Moat__V1__ListSessionsResponse *r = (Moat__V1__ListSessionsResponse *)e.resp;
    assert_int_equal(r->n_sessions, TOTAL);
    /* In key order, so a session seen twice would sit beside itself. */
    for (size_t k = 1; k < r->n_sessions; k++)
        assert_true(strcmp(r->sessions[k - 1]->session_id, r->sessions[k]->session_id) < 0);
    end_free(&e);
    clear_records();
}

/* etcd down: calls that need the directory end UNAVAILABLE etcd_unavailable, none hangs; when
 * etcd is back they route again. */
static void test_etcd_down(void **state)
{
    (void)state;
    ETCD_REQUIRE();
    wait_members();
    char sid[MOAT_UUID_STR_LEN], chat[MOAT_UUID_STR_LEN], addr[64];
    new_uuid(sid);
    new_uuid(chat);
    node_address(1, addr, sizeof(addr));
    put_record(sid, chat, node_id[1], node_lease(1), addr, MOAT_RECORD_RUNNING, "");
    for (int m = 0; m < ETCD_CLUSTER_MEMBERS; m++)
        etcd_cluster_kill(&cl, m);
    for (int i = 0; i < NODES; i++) {
        end_status e = run_command(conn[i], sid);
        assert_true(is(&e, MOAT_CODE_UNAVAILABLE, "etcd_unavailable"));
        e = get(conn[i], sid);
        assert_true(is(&e, MOAT_CODE_UNAVAILABLE, "etcd_unavailable"));
        e = list(conn[i], "");
        assert_true(is(&e, MOAT_CODE_UNAVAILABLE, "etcd_unavailable"));
    }
    for (int m = 0; m < ETCD_CLUSTER_MEMBERS; m++)
        assert_int_equal(etcd_cluster_restart(&cl, m), 0);
    wait_members();
    end_status e;
    ETCD_WAIT_FOR(
        (e = run_command(conn[0], sid), is(&e, MOAT_CODE_FAILED_PRECONDITION, "session_moved")),
        WAIT_S);
    /* Each node's copy of the directory loads again and follows what changes from then on. */
    char later[MOAT_UUID_STR_LEN];
    new_uuid(later);
    put_record(later, chat, node_id[1], node_lease(1), addr, MOAT_RECORD_RUNNING, "");
    for (int i = 0; i < NODES; i++)
        ETCD_WAIT_FOR(list_count(conn[i], chat) == 2, WAIT_S);
    clear_records();
    for (int i = 0; i < NODES; i++)
        ETCD_WAIT_FOR(list_count(conn[i], "") == 0, WAIT_S);
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_ALL);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_moved),
        cmocka_unit_test(test_node_lost),
        cmocka_unit_test(test_ended_and_absent),
        cmocka_unit_test(test_garbage),
        cmocka_unit_test(test_list_cluster),
        cmocka_unit_test(test_list_pages),
        cmocka_unit_test(test_etcd_down),
    };
    int rc = moat_run_group_tests("test_cluster_route", tests, group_setup, group_teardown);
    curl_global_cleanup();
    return rc;
}
