/* Cluster mode's write path for real: three moatd processes on loopback (their own ports, state
 * dirs, instances and container name prefixes on the shared dockerd) and a three-member etcd of
 * this run's own. A create through any node places the session and answers with its owner's
 * address; concurrent creates of one chat on different nodes make one container; renewals and
 * stops are written to etcd (renewals made at once in batches); a SIGKILLed node's chats are
 * placed elsewhere once its lease expires, and restarted it stops its old incarnation's sessions;
 * with all of etcd down creates fail UNAVAILABLE while commands in a running session go on;
 * garbage in the directory is a status with a reason; a chat held by a node that never answers its
 * Hello, or that closes the connection once it has the create, or that stops answering on a
 * pooled connection, is UNAVAILABLE peer_unavailable. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/wait.h>

#include <curl/curl.h>

#include "moat/client.h"

#include "moat_test.h"

#include "cluster/directory.h"
#include "cluster_calls.h"
#include "etcd_cluster.h"
#include "fake_peer.h"
#include "harness.h"
#include "moat/v1/sandbox.pb-c.h"

#define WAIT_S 60
#define NODES  3
#define TOKEN  "cluster-place-token"
#define TTL_S  2 /* times moatd_slowdown(): under valgrind keepalives run ten times slower */

static etcd_cluster cl;
static moat_etcd *etcd;
static moatd_proc node[NODES];
static char node_id[NODES][32];
static char restarted_dir[256]; /* a killed node's state dir, run again on it */

/* Node i started (again, on state_dir when not NULL). */
static bool start_node(int i, const char *state_dir)
{
    /* For test_renewals_batched: the renewal batches' log lines, and its force_new sessions of
     * one chat. */
    const char *extra[] = {"--log_level=debug", "--max_sessions_per_chat=16", NULL};
    return rc_member_start(&node[i], node_id[i], &cl, etcd, "mcp", i, TTL_S * moatd_slowdown(),
                           TOKEN, state_dir, extra, WAIT_S);
}

static int group_setup(void **state)
{
    (void)state;
    return rc_members_setup(&cl, &etcd, "mcp", NODES, start_node, node, restarted_dir, WAIT_S);
}

static int group_teardown(void **state)
{
    (void)state;
    return rc_members_teardown(&cl, &etcd, "mcp", node, NODES, restarted_dir);
}

typedef raw_created created;

/* An empty owner_address is the node that answered: it holds the session. */
static created create_on(int i, const char *chat, bool force_new)
{
    created c = raw_create(node[i].port, TOKEN, chat, force_new, NULL);
    if (c.code == 0 && c.owner[0] == '\0')
        snprintf(c.owner, sizeof(c.owner), "127.0.0.1:%d", node[i].port);
    return c;
}

/* The node whose advertised address is addr, or -1. */
static int node_of(const char *addr)
{
    return rc_member_of(node, NODES, addr);
}

static bool runs_echo(int i, const char *sid)
{
    return rc_runs_echo(node[i].port, TOKEN, sid);
}

/* Containers on the engine labelled with this chat, over every node's instance. */
static int containers_of(const char *chat)
{
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "/usr/bin/docker ps -q --filter label=chat_id=%s | wc -l", chat);
    FILE *f = popen(cmd, "r");
    int n = -1;
    if (f != NULL && fscanf(f, "%d", &n) != 1)
        n = -1;
    if (f != NULL)
        pclose(f);
    return n;
}

static void new_chat(char out[MOAT_UUID_STR_LEN])
{
    moat_uuid_generate(out);
}

/* A session of a new chat (its id into chat) created through node via. */
static created fresh_session(int via, char chat[MOAT_UUID_STR_LEN], bool force_new)
{
    new_chat(chat);
    created c = create_on(via, chat, force_new);
    assert_int_equal(c.code, 0);
    return c;
}

static moat_session_record record_of(const char *sid)
{
    bool found = false;
    moat_session_record rec = rc_record_of(etcd, sid, &found);
    assert_true(found);
    return rec;
}

static bool chat_held(const char *chat, moat_chat_record *out)
{
    return rc_chat_held(etcd, chat, out);
}

/* RenewSession on node i: its code, reason into reason[64] and the new expiry into *expires
 * (both may be NULL). */
static int renew_on(int i, const char *sid, uint32_t ttl_seconds, char *reason, int64_t *expires)
{
    raw_conn *c = raw_connect_ready(node[i].port, TOKEN);
    assert_non_null(c);
    Moat__V1__RenewSessionRequest req = MOAT__V1__RENEW_SESSION_REQUEST__INIT;
    req.session_id = (char *)sid;
    req.ttl_seconds = ttl_seconds;
    ProtobufCMessage *resp = NULL;
    int code = raw_unary(c, "/moat.v1.Sandboxes/RenewSession", &req.base,
                         &moat__v1__sandbox_session__descriptor, &resp, reason, 64);
    if (resp != NULL && expires != NULL)
        *expires = ((Moat__V1__SandboxSession *)resp)->expires_at_ms;
    if (resp != NULL)
        protobuf_c_message_free_unpacked(resp, NULL);
    raw_close(c);
    return code;
}

static void stop_on(int i, const char *sid)
{
    rc_stop_session(node[i].port, TOKEN, sid);
}

/* A chat held by a node (not a member: its address comes from the record) whose address is
 * hostile: the create forwarded there is UNAVAILABLE peer_unavailable naming it. */
static created create_held_by(const char *address)
{
    moat_node n0;
    assert_true(etcd_cluster_lists_node(etcd, node_id[0], &n0));
    char chat[MOAT_UUID_STR_LEN], sid[MOAT_UUID_STR_LEN];
    new_chat(chat);
    moat_uuid_generate(sid);
    rc_claim_chat(etcd, sid, chat, "ghost-node", n0.lease, address);
    return raw_create(node[0].port, TOKEN, chat, false, NULL);
}

static void test_forward_to_hostile_owner(void **state)
{
    (void)state;
    RC_REQUIRE_MEMBERS();
    fake_peer f;
    assert_true(fake_peer_start(&f));
    atomic_store(&f.close_mid_call, true);
    created mid = create_held_by(f.address);
    int calls = atomic_load(&f.calls);
    fake_peer_stop(&f);
    assert_int_equal(mid.code, MOAT_CODE_UNAVAILABLE);
    assert_string_equal(mid.reason, "peer_unavailable");
    assert_int_equal(calls, 1);

    /* Takes the connection in its kernel's backlog and never answers the Hello. */
    char silent[32];
    int fd = silent_peer_open(silent);
    assert_true(fd >= 0);
    created quiet = create_held_by(silent);
    close(fd);
    assert_int_equal(quiet.code, MOAT_CODE_UNAVAILABLE);
    assert_string_equal(quiet.reason, "peer_unavailable");
}

/* A node that took a forward over a pooled connection and then stopped answering (its kernel
 * still takes what is sent): the next create is passed over after PEER_CONNECT_MS, not held
 * to the forward's deadline. The first shows the owner's End relayed as it came. */
static void test_forward_to_stuck_pooled_owner(void **state)
{
    (void)state;
    RC_REQUIRE_MEMBERS();
    fake_peer f;
    assert_true(fake_peer_start(&f));
    moat_node n0;
    assert_true(etcd_cluster_lists_node(etcd, node_id[0], &n0));
    raw_conn *c = raw_connect_ready(node[0].port, TOKEN);
    assert_non_null(c);
    rc_end e[2];
    for (int i = 0; i < 2; i++) {
        char chat[MOAT_UUID_STR_LEN], sid[MOAT_UUID_STR_LEN];
        new_chat(chat);
        moat_uuid_generate(sid);
        rc_claim_chat(etcd, sid, chat, "ghost-node", n0.lease, f.address);
        atomic_store(&f.mute, i == 1);
        Moat__V1__CreateSessionRequest req = MOAT__V1__CREATE_SESSION_REQUEST__INIT;
        req.chat_id = chat;
        e[i] = rc_call(c, "/moat.v1.Sandboxes/CreateSession", &req.base, NULL);
    }
    raw_close(c);
    int accepted = atomic_load(&f.accepted);
    fake_peer_stop(&f);
    assert_true(rc_is(&e[0], MOAT_CODE_NOT_FOUND, "fake_end"));
    assert_true(rc_is(&e[1], MOAT_CODE_UNAVAILABLE, "peer_unavailable"));
    assert_non_null(strstr(e[1].message, "did not take the call in time"));
    assert_int_equal(accepted, 1);
}

/* Through every node the same session, with its owner's address; one container; the records in
 * etcd say running on the owner. New chats created through node 0 until one lands elsewhere:
 * the power of two choices over three nodes picks node 0 a third of the time. */
static void test_create_places_and_forwards(void **state)
{
    (void)state;
    RC_REQUIRE_MEMBERS();
    char chat[MOAT_UUID_STR_LEN];
    created first = {0};
    int owner = 0;
    for (int attempt = 0; attempt < 12 && owner == 0; attempt++) {
        if (first.session_id[0] != '\0')
            stop_on(0, first.session_id);
        new_chat(chat);
        first = create_on(0, chat, false);
        assert_int_equal(first.code, 0);
        owner = node_of(first.owner);
        assert_true(owner >= 0);
    }
    assert_int_not_equal(owner, 0);
    for (int i = 0; i < NODES; i++) {
        created again = create_on(i, chat, false);
        assert_int_equal(again.code, 0);
        assert_string_equal(again.session_id, first.session_id);
        assert_string_equal(again.owner, first.owner);
    }
    /* The owner names no other node: the session is its own. */
    assert_string_equal(raw_create(node[owner].port, TOKEN, chat, false, NULL).owner, "");
    assert_int_equal(containers_of(chat), 1);
    assert_true(runs_echo(owner, first.session_id));
    moat_session_record rec = record_of(first.session_id);
    assert_int_equal(rec.state, MOAT_RECORD_RUNNING);
    assert_string_equal(rec.node_id, node_id[owner]);
    moat_chat_record held;
    assert_true(chat_held(chat, &held));
    assert_string_equal(held.session_id, first.session_id);
    stop_on(owner, first.session_id);
}

/* A session of a new chat created through node 0, wherever placement put it: its owner and a
 * node that does not hold it. */
static created session_and_other(char chat[MOAT_UUID_STR_LEN], int *owner, int *other)
{
    created c = fresh_session(0, chat, false);
    *owner = node_of(c.owner);
    assert_true(*owner >= 0);
    *other = (*owner + 1) % NODES;
    return c;
}

/* The two halves of the cluster meet: a session the write path made on its owner (placed and
 * forwarded by CreateSession, its record written by the owner) is routed by the read path. Through
 * a non-owner, CreateSession's answer names the owner, an Exec call ends session_moved with the
 * owner's address and node, and GetSession answers from the record with the owner's address. */
static void test_created_session_routed(void **state)
{
    (void)state;
    RC_REQUIRE_MEMBERS();
    char chat[MOAT_UUID_STR_LEN];
    int owner, other;
    created c = session_and_other(chat, &owner, &other);
    created via_other = raw_create(node[other].port, TOKEN, chat, false, NULL);
    assert_int_equal(via_other.code, 0);
    assert_string_equal(via_other.session_id, c.session_id);
    assert_string_equal(via_other.owner, c.owner);
    raw_conn *conn = raw_connect_ready(node[other].port, TOKEN);
    assert_non_null(conn);
    rc_end e = rc_run_command(conn, c.session_id);
    assert_true(rc_is(&e, MOAT_CODE_FAILED_PRECONDITION, "session_moved"));
    assert_string_equal(e.owner_address, c.owner);
    assert_string_equal(e.owner_node, node_id[owner]);
    rc_free(&e);
    e = rc_get(conn, c.session_id);
    assert_int_equal(e.code, 0);
    assert_non_null(e.resp);
    Moat__V1__SandboxSession *got = (Moat__V1__SandboxSession *)e.resp;
    assert_string_equal(got->session_id, c.session_id);
    assert_string_equal(got->owner_address, c.owner);
    assert_int_equal(got->status, MOAT__V1__SESSION_STATUS__RUNNING);
    rc_free(&e);
    raw_close(conn);
    stop_on(owner, c.session_id);
}

static void record_redirect(const char *sid, const char *from, const char *to, void *arg)
{
    (void)sid;
    (void)from;
    char *last = arg;
    snprintf(last, 64, "%s", to);
}

/* libmoat connected to a non-owner only: `echo hi` on a session another node holds runs there,
 * the client following the node's session_moved (libmoat's side and moatd's side of routing,
 * end to end). */
static void test_libmoat_follows_to_owner(void **state)
{
    (void)state;
    RC_REQUIRE_MEMBERS();
    char chat[MOAT_UUID_STR_LEN];
    int owner, other;
    created c = session_and_other(chat, &owner, &other);
    char addr[64], followed[64] = "";
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", node[other].port);
    moat_client_options opts = {TOKEN, NULL, 10000};
    moat_client *mc = NULL;
    moat_status st;
    assert_int_equal(moat_client_connect(addr, &opts, &mc, &st), MOAT_OK);
    moat_client_on_redirect(mc, record_redirect, followed);
    moat_run_command_req req = {0};
    req.session_id = c.session_id;
    req.command = "echo hi";
    moat_call *call = NULL;
    assert_int_equal(moat_exec_run(mc, &req, 30000, &call, &st), MOAT_OK);
    char out[64] = "";
    size_t len = 0;
    bool exited = false;
    int32_t code = -1;
    moat_exec_event ev;
    while (moat_exec_next(call, 30000, &ev) == MOAT_OK) {
        if (ev.kind == MOAT_EXEC_OUTPUT && ev.stream == MOAT_EXEC_STDOUT &&
            len + ev.data.len < sizeof(out)) {
            memcpy(out + len, ev.data.data, ev.data.len);
            len += ev.data.len;
        }
        if (ev.kind == MOAT_EXEC_EXIT && ev.exit_known) {
            exited = true;
            code = ev.exit_code;
        }
    }
    moat_call_free(call);
    moat_client_close(mc);
    assert_string_equal(out, "hi\n");
    assert_true(exited);
    assert_int_equal(code, 0);
    assert_string_equal(followed, c.owner);
    stop_on(owner, c.session_id);
}

/* force_new through a non-owner: a second session on the chat's owner, with a record of its
 * own; the chat key keeps naming the first. On a free chat it takes the key. */
static void test_force_new_on_owner(void **state)
{
    (void)state;
    RC_REQUIRE_MEMBERS();
    char chat[MOAT_UUID_STR_LEN];
    created first = fresh_session(0, chat, true);
    int owner = node_of(first.owner);
    moat_chat_record held;
    assert_true(chat_held(chat, &held));
    assert_string_equal(held.session_id, first.session_id);
    created second = create_on((owner + 1) % NODES, chat, true);
    assert_int_equal(second.code, 0);
    assert_string_not_equal(second.session_id, first.session_id);
    assert_string_equal(second.owner, first.owner);
    assert_int_equal(record_of(second.session_id).state, MOAT_RECORD_RUNNING);
    assert_true(chat_held(chat, &held));
    assert_string_equal(held.session_id, first.session_id);
    assert_int_equal(containers_of(chat), 2);
    stop_on(owner, second.session_id);
    stop_on(owner, first.session_id);
    assert_int_equal(containers_of(chat), 0);
}

typedef struct racer {
    int node;
    const char *chat;
    created got;
} racer;

static void *race(void *arg)
{
    racer *r = arg;
    r->got = create_on(r->node, r->chat, false);
    return NULL;
}

/* Creates of one chat on every node at once: one session, one container. */
/* A client that sets placed_by itself (as a forwarding node would) only skips placement: the
 * node it called still has to take the chat's key, so for a chat another node holds it answers
 * the live session there, and no second container starts. */
static void test_client_placed_by_changes_nothing(void **state)
{
    (void)state;
    RC_REQUIRE_MEMBERS();
    char chat[MOAT_UUID_STR_LEN];
    int owner, other;
    created first = session_and_other(chat, &owner, &other);
    created c = raw_create_placed(node[other].port, TOKEN, chat, false, node_id[owner], NULL);
    assert_int_equal(c.code, 0);
    assert_string_equal(c.session_id, first.session_id);
    assert_int_equal(containers_of(chat), 1);
    assert_true(runs_echo(owner, first.session_id));
    stop_on(owner, first.session_id);
}

static void test_concurrent_creates_one_container(void **state)
{
    (void)state;
    RC_REQUIRE_MEMBERS();
    for (int round = 0; round < 3; round++) {
        char chat[MOAT_UUID_STR_LEN];
        new_chat(chat);
        racer r[NODES * 2];
        pthread_t t[NODES * 2];
        for (int i = 0; i < NODES * 2; i++) {
            r[i] = (racer){i % NODES, chat, {0}};
            assert_int_equal(pthread_create(&t[i], NULL, race, &r[i]), 0);
        }
        for (int i = 0; i < NODES * 2; i++)
            pthread_join(t[i], NULL);
        for (int i = 0; i < NODES * 2; i++) {
            assert_int_equal(r[i].got.code, 0);
            assert_string_equal(r[i].got.session_id, r[0].got.session_id);
        }
        assert_int_equal(containers_of(chat), 1);
        stop_on(node_of(r[0].got.owner), r[0].got.session_id);
        assert_int_equal(containers_of(chat), 0);
    }
}

/* A renewal moves the record's expiry in etcd; a stop writes it ended, frees the chat key and
 * leaves the chat's home. */
static void test_renew_and_stop_written(void **state)
{
    (void)state;
    RC_REQUIRE_MEMBERS();
    char chat[MOAT_UUID_STR_LEN];
    created c = fresh_session(1, chat, false);
    int owner = node_of(c.owner);
    int64_t expires = 0;
    char reason[64];
    assert_int_equal(renew_on(owner, c.session_id, 900, reason, &expires), 0);
    moat_session_record rec = record_of(c.session_id);
    assert_true(rec.expires_at_ms >= expires - 1000 && rec.expires_at_ms <= expires);

    stop_on(owner, c.session_id);
    rec = record_of(c.session_id);
    assert_int_equal(rec.state, MOAT_RECORD_ENDED);
    assert_string_equal(rec.end_reason, "stopped");
    assert_true(rec.ended_at_ms > 0);
    assert_false(chat_held(chat, NULL));
    char home[MOAT_NODE_ID_MAX];
    moat_dir_home(etcd, chat, home);
    assert_string_equal(home, node_id[owner]);
}

#define BATCHED 8 /* sessions renewed at once, a thread each */
#define ROUNDS  4 /* renewals of each */

/* The renewal batches in node i's log so far: *batches lines, *renewals their sizes summed,
 * *calls their etcd calls summed. */
static void batches_logged(int i, int *batches, int *renewals, int *calls)
{
    char *log = slurp_file(node[i].log_path);
    *batches = *renewals = *calls = 0;
    for (const char *at = log; at != NULL && (at = strstr(at, "cluster_renew_batch")) != NULL;
         at++) {
        const char *size = strstr(at, "size=");
        const char *made = strstr(at, "etcd_calls=");
        (*batches)++;
        *renewals += size != NULL ? atoi(size + 5) : 0;
        *calls += made != NULL ? atoi(made + 11) : 0;
    }
    free(log);
}

/* Node i's renewal counters on its /metrics. */
typedef struct renew_metrics {
    long long renewals, batches, calls;
} renew_metrics;

static renew_metrics renew_metrics_of(int i)
{
    renew_metrics m = {metric_value(node[i].metrics_port, "moat_cluster_renewals_total"),
                       metric_value(node[i].metrics_port, "moat_cluster_renewal_batches_total"),
                       metric_value(node[i].metrics_port, "moat_cluster_renewal_etcd_calls_total")};
    assert_true(m.renewals >= 0 && m.batches >= 0 && m.calls >= 0);
    return m;
}

typedef struct batch_renewer {
    pthread_t t;
    pthread_barrier_t *go;
    int node;
    const char *sid;
    int code[ROUNDS];
} batch_renewer;

static void *batch_renew_thread(void *arg)
{
    batch_renewer *w = arg;
    pthread_barrier_wait(w->go);
    for (int r = 0; r < ROUNDS; r++) {
        char reason[64];
        w->code[r] = renew_on(w->node, w->sid, 900, reason, NULL);
    }
    return NULL;
}

/* BATCHED sessions of one node (force_new: all on the chat's owner) renewed ROUNDS times each
 * from a thread each at once: every renewal answered OK and its record's expiry moved, in fewer
 * etcd batches than renewals (the node's debug log), which /metrics counts as the log does. A
 * session whose record was ended behind
 * the node's back (as another incarnation's end writes it) is refused session_not_found. */
static void test_renewals_batched(void **state)
{
    (void)state;
    RC_REQUIRE_MEMBERS();
    char chat[MOAT_UUID_STR_LEN];
    created c[BATCHED];
    c[0] = fresh_session(0, chat, false);
    int owner = node_of(c[0].owner);
    assert_true(owner >= 0);
    for (int i = 1; i < BATCHED; i++) {
        c[i] = create_on(owner, chat, true);
        assert_int_equal(c[i].code, 0);
        assert_int_equal(node_of(c[i].owner), owner);
    }
    int batches0, renewals0, calls0;
    batches_logged(owner, &batches0, &renewals0, &calls0);
    renew_metrics m0 = renew_metrics_of(owner);
    int64_t before = moat_time_now_ms();
    pthread_barrier_t go;
    pthread_barrier_init(&go, NULL, BATCHED);
    batch_renewer w[BATCHED];
    for (int i = 0; i < BATCHED; i++) {
        w[i] = (batch_renewer){.go = &go, .node = owner, .sid = c[i].session_id};
        assert_int_equal(pthread_create(&w[i].t, NULL, batch_renew_thread, &w[i]), 0);
    }
    for (int i = 0; i < BATCHED; i++)
        pthread_join(w[i].t, NULL);
    pthread_barrier_destroy(&go);
    for (int i = 0; i < BATCHED; i++) {
        for (int r = 0; r < ROUNDS; r++)
            assert_int_equal(w[i].code[r], 0);
        assert_true(record_of(c[i].session_id).expires_at_ms >= before + 900000);
    }
    int batches, renewals, calls;
    batches_logged(owner, &batches, &renewals, &calls);
    printf("# %d renewals in %d batches\n", renewals - renewals0, batches - batches0);
    assert_int_equal(renewals - renewals0, BATCHED * ROUNDS);
    assert_true(batches - batches0 < BATCHED * ROUNDS);
    /* Counted before each batch's callers are answered, so all of them show by now. */
    renew_metrics m = renew_metrics_of(owner);
    assert_int_equal(m.renewals - m0.renewals, BATCHED * ROUNDS);
    assert_int_equal(m.batches - m0.batches, batches - batches0);
    assert_int_equal(m.calls - m0.calls, calls - calls0);
    /* A batch reads, then writes: at least two calls each. */
    assert_true(m.calls - m0.calls >= 2 * (m.batches - m0.batches));

    moat_session_record ended = record_of(c[0].session_id);
    rc_put_record(etcd, ended.session_id, ended.chat_id, ended.node_id, ended.node_lease,
                  ended.address, MOAT_RECORD_ENDED, "node_lost");
    char reason[64];
    assert_int_equal(renew_on(owner, c[0].session_id, 900, reason, NULL), MOAT_CODE_NOT_FOUND);
    assert_string_equal(reason, "session_not_found");
    for (int i = 0; i < BATCHED; i++)
        stop_on(owner, c[i].session_id);
}

/* Creates of chat through node via until one makes a session other than old_sid: the chat's
 * node is dead or stuck, and its chat free once its lease expires. */
static created placed_again(int via, const char *chat, const char *old_sid)
{
    created again = {0};
    for (int tick = 0; tick < WAIT_S * 20; tick++) {
        again = create_on(via, chat, false);
        if (again.code == 0 && strcmp(again.session_id, old_sid) != 0)
            break;
        etcd_cluster_sleep_ms(50);
    }
    assert_int_equal(again.code, 0);
    assert_string_not_equal(again.session_id, old_sid);
    return again;
}

/* The old incarnation's session of chat is ended node_lost and its container gone, leaving the
 * chat's new one. */
static void wait_node_lost(const char *sid, const char *chat)
{
    ETCD_WAIT_FOR(record_of(sid).state == MOAT_RECORD_ENDED, WAIT_S);
    assert_string_equal(record_of(sid).end_reason, "node_lost");
    ETCD_WAIT_FOR(containers_of(chat) == 1, WAIT_S);
}

/* The owner SIGKILLed: once its lease expires a create on another node places the chat again
 * (the time from the kill is printed, not judged); restarted on its state dir as a new
 * incarnation, it stops its old session and writes it ended node_lost. */
static void test_node_killed_chat_placed_elsewhere(void **state)
{
    (void)state;
    RC_REQUIRE_MEMBERS();
    char chat[MOAT_UUID_STR_LEN];
    created c = fresh_session(0, chat, false);
    int dead = node_of(c.owner);
    int other = (dead + 1) % NODES;
    char state_dir[256];
    snprintf(state_dir, sizeof(state_dir), "%s", node[dead].state_dir);
    uint64_t t0 = moat_time_mono_ns();
    kill(node[dead].pid, SIGKILL);
    waitpid(node[dead].pid, NULL, 0);
    node[dead].pid = 0;
    created again = placed_again(other, chat, c.session_id);
    uint64_t took_ms = (moat_time_mono_ns() - t0) / 1000000u;
    assert_int_not_equal(node_of(again.owner), dead);
    printf("death to create elsewhere: %llu ms (lease TTL %d s)\n", (unsigned long long)took_ms,
           TTL_S * moatd_slowdown());

    /* The old container still runs (its moatd died, the engine did not). */
    if (containers_of(chat) != 2) {
        char dbg[700];
        snprintf(dbg, sizeof(dbg),
                 "docker ps -a --filter label=chat_id=%s --format '{{.Names}} {{.Status}}'; "
                 "grep -h cluster_ %s/moatd.log %s/moatd.log",
                 chat, state_dir, node[other].state_dir);
        if (system(dbg) != 0)
            printf("no docker\n");
        printf("old record: %d %s\n", record_of(c.session_id).state,
               record_of(c.session_id).end_reason);
    }
    assert_int_equal(containers_of(chat), 2);
    snprintf(restarted_dir, sizeof(restarted_dir), "%s", state_dir);
    assert_true(start_node(dead, restarted_dir));
    wait_node_lost(c.session_id, chat);
    stop_on(node_of(again.owner), again.session_id);
}

/* The owner stopped (SIGSTOP) past its lease, as a node cut off from etcd: its chat is placed
 * elsewhere meanwhile (a stuck node answers no hello and is passed over); let go again (SIGCONT),
 * it hears its lease is gone, registers as a new incarnation and stops its old session, whose
 * record it writes ended node_lost. */
static void test_node_cut_off_learns_lease_lost(void **state)
{
    (void)state;
    RC_REQUIRE_MEMBERS();
    char chat[MOAT_UUID_STR_LEN];
    created c = fresh_session(0, chat, false);
    int cut = node_of(c.owner);
    int other = (cut + 1) % NODES;
    moat_node before;
    assert_true(etcd_cluster_lists_node(etcd, node_id[cut], &before));
    assert_int_equal(kill(node[cut].pid, SIGSTOP), 0);
    ETCD_WAIT_FOR(!etcd_cluster_lists_node(etcd, node_id[cut], NULL), WAIT_S);
    created again = placed_again(other, chat, c.session_id);
    assert_int_equal(kill(node[cut].pid, SIGCONT), 0);
    assert_int_not_equal(node_of(again.owner), cut);

    moat_node after;
    ETCD_WAIT_FOR(
        etcd_cluster_lists_node(etcd, node_id[cut], &after) && after.lease != before.lease, WAIT_S);
    wait_node_lost(c.session_id, chat);
    assert_true(moatd_log_contains(&node[cut], "cluster_swept"));
    stop_on(node_of(again.owner), again.session_id);
}

/* All of etcd down: creates fail UNAVAILABLE with a reason, a running session still runs
 * commands; etcd back, creates work. */
static void test_etcd_down(void **state)
{
    (void)state;
    RC_REQUIRE_MEMBERS();
    char chat[MOAT_UUID_STR_LEN];
    created c = fresh_session(2, chat, false);
    int owner = node_of(c.owner);
    int64_t expiry_before = record_of(c.session_id).expires_at_ms;
    for (int m = 0; m < ETCD_CLUSTER_MEMBERS; m++)
        etcd_cluster_kill(&cl, m);
    char other[MOAT_UUID_STR_LEN];
    new_chat(other);
    for (int i = 0; i < NODES; i++) {
        created refused = create_on(i, other, false);
        assert_int_equal(refused.code, MOAT_CODE_UNAVAILABLE);
        assert_true(strcmp(refused.reason, "etcd_unavailable") == 0 ||
                    strcmp(refused.reason, "node_fenced") == 0);
    }
    assert_true(runs_echo(owner, c.session_id));
    /* A renewal must be durable: none while etcd cannot take it. */
    int64_t before = expiry_before;
    char reason[64];
    assert_int_equal(renew_on(owner, c.session_id, 900, reason, NULL), MOAT_CODE_UNAVAILABLE);
    assert_true(strcmp(reason, "etcd_unavailable") == 0 || strcmp(reason, "node_fenced") == 0);
    for (int m = 0; m < ETCD_CLUSTER_MEMBERS; m++)
        assert_int_equal(etcd_cluster_restart(&cl, m), 0);
    ETCD_WAIT_FOR(renew_on(owner, c.session_id, 900, reason, NULL) == 0, WAIT_S);
    assert_true(record_of(c.session_id).expires_at_ms > before);
    ETCD_WAIT_FOR(create_on(0, other, false).code == 0, WAIT_S);
    created o = create_on(0, other, false);
    stop_on(node_of(o.owner), o.session_id);
    stop_on(owner, c.session_id);
}

static void put_raw(const char *key, const char *value)
{
    moat_etcd_result res;
    moat_status st;
    assert_int_equal(moat_etcd_put(etcd, moat_slice_str(key), moat_slice_str(value), 0, &res, &st),
                     MOAT_CODE_OK);
    moat_etcd_result_free(&res);
}

/* Garbage in chats/ and sessions/: a status with a reason, and the nodes serve on. */
static void test_garbage_in_directory(void **state)
{
    (void)state;
    RC_REQUIRE_MEMBERS();
    char chat[MOAT_UUID_STR_LEN], key[MOAT_RECORD_KEY_MAX];
    new_chat(chat);
    moat_chat_record_key(chat, key, sizeof(key));
    put_raw(key, "{not json");
    for (int i = 0; i < NODES; i++) {
        created g = create_on(i, chat, false);
        assert_int_equal(g.code, MOAT_CODE_INTERNAL);
        assert_string_equal(g.reason, "cluster_record_invalid");
    }
    put_raw(key, "{\"session_id\":\"x\",\"node_id\":\"\"}");
    assert_string_equal(create_on(0, chat, false).reason, "cluster_record_invalid");

    /* A session's record turned to garbage under it: its renewal says so. */
    char chat2[MOAT_UUID_STR_LEN];
    new_chat(chat2);
    created c = create_on(0, chat2, false);
    assert_int_equal(c.code, 0);
    int owner = node_of(c.owner);
    moat_session_record_key(c.session_id, key, sizeof(key));
    put_raw(key, "[1,2,3]");
    char reason[64];
    assert_int_equal(renew_on(owner, c.session_id, 0, reason, NULL), MOAT_CODE_INTERNAL);
    assert_string_equal(reason, "cluster_record_invalid");
    stop_on(owner, c.session_id);
    for (int i = 0; i < NODES; i++)
        assert_true(kill(node[i].pid, 0) == 0);
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_ALL);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_create_places_and_forwards),
        cmocka_unit_test(test_created_session_routed),
        cmocka_unit_test(test_libmoat_follows_to_owner),
        cmocka_unit_test(test_force_new_on_owner),
        cmocka_unit_test(test_concurrent_creates_one_container),
        cmocka_unit_test(test_client_placed_by_changes_nothing),
        cmocka_unit_test(test_forward_to_hostile_owner),
        cmocka_unit_test(test_forward_to_stuck_pooled_owner),
        cmocka_unit_test(test_renew_and_stop_written),
        cmocka_unit_test(test_renewals_batched),
        cmocka_unit_test(test_garbage_in_directory),
        cmocka_unit_test(test_etcd_down),
        cmocka_unit_test(test_node_cut_off_learns_lease_lost),
        cmocka_unit_test(test_node_killed_chat_placed_elsewhere),
    };
    int rc = moat_run_group_tests("test_cluster_place", tests, group_setup, group_teardown);
    curl_global_cleanup();
    return rc;
}
