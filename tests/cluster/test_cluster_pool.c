/* Warm pool sandboxes for creates in a cluster, for real: two moatd nodes on loopback (their own
 * ports, state dirs, instances and container name prefixes on the shared dockerd) and a
 * three-member etcd of this run's own. Node 0 keeps a pool of one sandbox, node 1 none. A
 * create placed on node 0 (forwarded with placed_by, or by the chat's home) takes the pool
 * sandbox: the session's id is the sandbox's, its record in etcd carries it, and the pool
 * refills. A chat live on node 1 gets that session from node 0, whatever placed_by a client
 * forges, and node 0's reserved sandbox goes back to its pool, still unclaimed; racing creates
 * of one chat make one session; with etcd down a sandbox whose id a lost transaction may have
 * written is removed, not given back; a node restarted between a chat key's transaction and
 * the bind (its lease resumed) ends the record it left and removes the sandbox. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/wait.h>

#include <curl/curl.h>

#include "moat_test.h"

#include "cluster/directory.h"
#include "cluster_calls.h"
#include "etcd_cluster.h"
#include "harness.h"
#include "moat/v1/health.pb-c.h"
#include "moat/v1/sandbox.pb-c.h"

#define WAIT_S 60
#define NODES  2
#define TOKEN  "cluster-pool-token"
/* Long enough that a node SIGKILLed and started again resumes its lease (moatd_slowdown():
 * under valgrind keepalives run ten times slower). */
#define TTL_S 8

static etcd_cluster cl;
static moat_etcd *etcd;
static moatd_proc node[NODES];
static char node_id[NODES][32];
static char restarted_dir[256];

/* Node i started (again, on state_dir when not NULL); node 0 with a pool of one. */
static bool start_node(int i, const char *state_dir)
{
    const char *pool[] = {i == 0 ? "--pool_size=1" : "--pool_size=0", "--pool_fill_concurrency=1",
                          NULL};
    return rc_member_start(&node[i], node_id[i], &cl, etcd, "mcl", i, TTL_S * moatd_slowdown(),
                           TOKEN, state_dir, pool, WAIT_S);
}

static int group_setup(void **state)
{
    (void)state;
    return rc_members_setup(&cl, &etcd, "mcl", NODES, start_node, node, restarted_dir, WAIT_S);
}

static int group_teardown(void **state)
{
    (void)state;
    return rc_members_teardown(&cl, &etcd, "mcl", node, NODES, restarted_dir);
}

typedef raw_created created;

/* CreateSession on node i; placed_by (NULL: none) as a forwarding node, or a client, sets it. An
 * empty owner_address is the node that answered. */
static created create_on(int i, const char *chat, const char *placed_by)
{
    created out = raw_create_placed(node[i].port, TOKEN, chat, false, placed_by, NULL);
    if (out.code == 0 && out.owner[0] == '\0')
        snprintf(out.owner, sizeof(out.owner), "127.0.0.1:%d", node[i].port);
    return out;
}

static int node_of(const char *addr)
{
    return rc_member_of(node, NODES, addr);
}

static void stop_on(int i, const char *sid)
{
    rc_stop_session(node[i].port, TOKEN, sid);
}

/* Health's pool_ready of node i. */
static uint32_t pool_ready(int i)
{
    raw_conn *c = raw_connect_ready(node[i].port, TOKEN);
    assert_non_null(c);
    Moat__V1__HealthCheckRequest req = MOAT__V1__HEALTH_CHECK_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    int code = raw_unary(c, "/moat.v1.Health/Check", &req.base,
                         &moat__v1__health_check_response__descriptor, &resp, NULL, 0);
    raw_close(c);
    assert_int_equal(code, 0);
    uint32_t ready = ((Moat__V1__HealthCheckResponse *)resp)->pool_ready;
    protobuf_c_message_free_unpacked(resp, NULL);
    return ready;
}

/* The session ids of node 0's pool containers (claimed or not) not in skip[0..nskip), at most
 * 8, into ids; how many. */
static int pool_ids(char ids[8][MOAT_UUID_STR_LEN], const char (*skip)[MOAT_UUID_STR_LEN],
                    int nskip)
{
    char cmd[300];
    snprintf(cmd, sizeof(cmd),
             "/usr/bin/docker ps --filter name=mcl%dn0- --filter label=moat.pool=true "
             "--format '{{.Label \"session_id\"}}'",
             (int)getpid());
    FILE *f = popen(cmd, "r");
    assert_non_null(f);
    int n = 0;
    char line[128];
    while (fgets(line, sizeof(line), f) != NULL && n < 8) {
        line[strcspn(line, "\n")] = '\0';
        bool skipped = false;
        for (int k = 0; k < nskip; k++)
            skipped = skipped || strcmp(line, skip[k]) == 0;
        if (!skipped && strlen(line) == MOAT_UUID_STR_LEN - 1)
            memcpy(ids[n++], line, MOAT_UUID_STR_LEN);
    }
    pclose(f);
    return n;
}

/* Waits until node 0's pool of one is ready; its sandbox's id (the one pool container that is
 * no session of skip) into out. */
static void ready_id(char out[MOAT_UUID_STR_LEN], const char (*skip)[MOAT_UUID_STR_LEN], int nskip)
{
    ETCD_WAIT_FOR(pool_ready(0) == 1, WAIT_S);
    char ids[8][MOAT_UUID_STR_LEN];
    assert_int_equal(pool_ids(ids, skip, nskip), 1);
    memcpy(out, ids[0], MOAT_UUID_STR_LEN);
}

/* Whether sid is one of node 0's pool containers (claimed or not). */
static bool in_pool(const char *sid)
{
    char ids[8][MOAT_UUID_STR_LEN];
    int n = pool_ids(ids, NULL, 0);
    bool found = false;
    for (int i = 0; i < n; i++)
        found = found || strcmp(ids[i], sid) == 0;
    return found;
}

/* The records of chat that are not ended. */
static int live_records_of(const char *chat)
{
    moat_session_record *recs = NULL;
    size_t n = 0, skipped = 0;
    moat_status st;
    assert_int_equal(moat_dir_records(etcd, &recs, &n, &skipped, &st), MOAT_CODE_OK);
    int live = 0;
    for (size_t i = 0; i < n; i++)
        live += strcmp(recs[i].chat_id, chat) == 0 && recs[i].state != MOAT_RECORD_ENDED;
    free(recs);
    return live;
}

static bool claimed_in_log(const char *sid)
{
    char want[160];
    snprintf(want, sizeof(want), "event=pool_slot_claimed session_id=%s", sid);
    return moatd_log_contains(&node[0], want);
}

/* A create forwarded to node 0 (placed_by node 1) takes its pool sandbox: the session's id is
 * the sandbox's, its record says running on node 0 and the chat key names it; the pool refills
 * with another. A create through node 1 for a chat whose home is node 0 lands there and takes
 * the new one. */
static void test_create_claims_pool_sandbox(void **state)
{
    (void)state;
    RC_REQUIRE_MEMBERS();
    char pooled[MOAT_UUID_STR_LEN], chat[MOAT_UUID_STR_LEN];
    ready_id(pooled, NULL, 0);
    moat_uuid_generate(chat);
    created c = create_on(0, chat, node_id[1]);
    assert_int_equal(c.code, 0);
    assert_string_equal(c.session_id, pooled);
    assert_int_equal(node_of(c.owner), 0);
    assert_true(claimed_in_log(pooled));
    bool found = false;
    moat_session_record rec = rc_record_of(etcd, pooled, &found);
    assert_true(found);
    assert_int_equal(rec.state, MOAT_RECORD_RUNNING);
    assert_string_equal(rec.node_id, node_id[0]);
    assert_string_equal(rec.chat_id, chat);
    moat_chat_record held;
    assert_true(rc_chat_held(etcd, chat, &held));
    assert_string_equal(held.session_id, pooled);
    assert_true(rc_runs_echo(node[0].port, TOKEN, pooled));
    /* The same chat again, through either node: the same session. */
    assert_string_equal(create_on(1, chat, NULL).session_id, pooled);

    char refill[MOAT_UUID_STR_LEN], homed[MOAT_UUID_STR_LEN], key[MOAT_RECORD_KEY_MAX];
    ready_id(refill, (const char(*)[MOAT_UUID_STR_LEN])pooled, 1);
    assert_string_not_equal(refill, pooled);
    moat_uuid_generate(homed);
    char home[MOAT_NODE_ID_MAX + 64];
    moat_home_record_key(homed, key, sizeof(key));
    moat_home_record_encode(node_id[0], home, sizeof(home));
    moat_etcd_result res;
    moat_status st;
    assert_int_equal(moat_etcd_put(etcd, moat_slice_str(key), moat_slice_str(home), 0, &res, &st),
                     MOAT_CODE_OK);
    moat_etcd_result_free(&res);
    created h = create_on(1, homed, NULL);
    assert_int_equal(h.code, 0);
    assert_int_equal(node_of(h.owner), 0);
    assert_string_equal(h.session_id, refill);
    assert_int_equal(rc_record_of(etcd, refill, &found).state, MOAT_RECORD_RUNNING);
    stop_on(0, refill);
    stop_on(0, pooled);
    assert_int_equal(rc_record_of(etcd, pooled, &found).state, MOAT_RECORD_ENDED);
    assert_false(rc_chat_held(etcd, chat, &held));
}

/* A chat whose session lives on node 1, created again on node 0 with a placed_by a client
 * forged: node 0 reserves its pool sandbox for the chat key's transaction, loses the key to
 * node 1's session, answers with that session and gives the sandbox back, unclaimed and with no
 * record in etcd; the next new chat on node 0 gets it, once. */
static void test_chat_live_elsewhere_gives_it_back(void **state)
{
    (void)state;
    RC_REQUIRE_MEMBERS();
    char pooled[MOAT_UUID_STR_LEN], chat[MOAT_UUID_STR_LEN];
    ready_id(pooled, NULL, 0);
    moat_uuid_generate(chat);
    created there = create_on(1, chat, node_id[0]);
    assert_int_equal(there.code, 0);
    assert_int_equal(node_of(there.owner), 1);
    const char *forged[] = {node_id[0], node_id[1], "no-such-node"};
    for (int k = 0; k < 3; k++) {
        created via0 = create_on(0, chat, forged[k]);
        assert_int_equal(via0.code, 0);
        assert_string_equal(via0.session_id, there.session_id);
        assert_int_equal(node_of(via0.owner), 1);
        char back[MOAT_UUID_STR_LEN];
        ready_id(back, NULL, 0);
        assert_string_equal(back, pooled);
        bool found = true;
        rc_record_of(etcd, pooled, &found);
        assert_false(found);
    }
    assert_int_equal(live_records_of(chat), 1);
    assert_false(claimed_in_log(pooled));

    char fresh[MOAT_UUID_STR_LEN];
    moat_uuid_generate(fresh);
    created mine = create_on(0, fresh, node_id[1]);
    assert_int_equal(mine.code, 0);
    assert_string_equal(mine.session_id, pooled);
    bool found = false;
    assert_string_equal(rc_record_of(etcd, pooled, &found).chat_id, fresh);
    stop_on(0, pooled);
    stop_on(1, there.session_id);
}

/* Node 0 publishes its ready sandbox in its record; a new chat created through node 1 (no
 * pool, placement over both nodes) then lands on node 0 and takes it. */
static void test_placement_prefers_warm(void **state)
{
    (void)state;
    RC_REQUIRE_MEMBERS();
    char pooled[MOAT_UUID_STR_LEN], chat[MOAT_UUID_STR_LEN];
    ready_id(pooled, NULL, 0);
    moat_node me;
    ETCD_WAIT_FOR(etcd_cluster_lists_node(etcd, node_id[0], &me) && me.load.pool_ready == 1,
                  WAIT_S);
    moat_uuid_generate(chat);
    created c = create_on(1, chat, NULL);
    assert_int_equal(c.code, 0);
    assert_int_equal(node_of(c.owner), 0);
    assert_string_equal(c.session_id, pooled);
    stop_on(0, c.session_id);
}

typedef struct racer {
    int node;
    const char *chat;
    created got;
} racer;

static void *race(void *arg)
{
    racer *r = arg;
    r->got = create_on(r->node, r->chat, node_id[1 - r->node]);
    return NULL;
}

/* Creates of one chat on both nodes at once, each placed where it is called: one session, one
 * live record; node 0's pool sandbox is that session or back in its pool, never both. */
static void test_racing_creates_one_session(void **state)
{
    (void)state;
    RC_REQUIRE_MEMBERS();
    for (int round = 0; round < 3; round++) {
        char pooled[MOAT_UUID_STR_LEN], chat[MOAT_UUID_STR_LEN];
        ready_id(pooled, NULL, 0);
        moat_uuid_generate(chat);
        racer r[4];
        pthread_t t[4];
        for (int i = 0; i < 4; i++) {
            r[i] = (racer){i % NODES, chat, {0}};
            assert_int_equal(pthread_create(&t[i], NULL, race, &r[i]), 0);
        }
        for (int i = 0; i < 4; i++)
            pthread_join(t[i], NULL);
        for (int i = 0; i < 4; i++) {
            assert_int_equal(r[i].got.code, 0);
            assert_string_equal(r[i].got.session_id, r[0].got.session_id);
        }
        assert_int_equal(live_records_of(chat), 1);
        int owner = node_of(r[0].got.owner);
        bool won_by_pool = strcmp(r[0].got.session_id, pooled) == 0;
        assert_true(!won_by_pool || owner == 0);
        if (!won_by_pool) {
            char back[MOAT_UUID_STR_LEN];
            ready_id(back, (const char(*)[MOAT_UUID_STR_LEN])r[0].got.session_id, 1);
            assert_string_equal(back, pooled);
        }
        printf("round %d: node %d won, from the pool: %s\n", round, owner,
               won_by_pool ? "yes" : "no");
        stop_on(owner, r[0].got.session_id);
    }
}

/* Node 0 killed between a chat key's transaction and the bind: the record (creating, under its
 * lease, with the pool sandbox's id) and the chat key are written as that transaction would,
 * then the node dies. Started again within its lease, it resumes the lease; its reconcile
 * removes the sandbox no pool holds, its first sweep ends the record (which frees the chat
 * key), and the chat's next create makes a session with another id. */
static void test_restart_between_key_and_bind(void **state)
{
    (void)state;
    RC_REQUIRE_MEMBERS();
    char pooled[MOAT_UUID_STR_LEN], chat[MOAT_UUID_STR_LEN];
    ready_id(pooled, NULL, 0);
    moat_uuid_generate(chat);
    moat_node me;
    assert_true(etcd_cluster_lists_node(etcd, node_id[0], &me));
    moat_session_record rec;
    memset(&rec, 0, sizeof(rec));
    snprintf(rec.session_id, sizeof(rec.session_id), "%s", pooled);
    snprintf(rec.chat_id, sizeof(rec.chat_id), "%s", chat);
    snprintf(rec.node_id, sizeof(rec.node_id), "%s", node_id[0]);
    snprintf(rec.address, sizeof(rec.address), "127.0.0.1:%d", node[0].port);
    snprintf(rec.image, sizeof(rec.image), "moat-sandbox:latest");
    rec.node_lease = me.lease;
    rec.state = MOAT_RECORD_CREATING;
    rec.created_at_ms = moat_time_now_ms();
    rec.expires_at_ms = rec.created_at_ms + 600000;
    moat_dir_claim_result claim;
    moat_status st;
    assert_int_equal(moat_dir_claim(etcd, &rec, me.lease, true, &claim, &st), MOAT_CODE_OK);
    assert_true(claim.won);

    char state_dir[256];
    snprintf(state_dir, sizeof(state_dir), "%s", node[0].state_dir);
    kill(node[0].pid, SIGKILL);
    waitpid(node[0].pid, NULL, 0);
    node[0].pid = 0;
    snprintf(restarted_dir, sizeof(restarted_dir), "%s", state_dir);
    assert_true(start_node(0, restarted_dir));
    moat_node again;
    assert_true(etcd_cluster_lists_node(etcd, node_id[0], &again));
    assert_int_equal(again.lease, me.lease);
    bool found = false;
    ETCD_WAIT_FOR(rc_record_of(etcd, pooled, &found).state == MOAT_RECORD_ENDED, WAIT_S);
    /* "gone" from the first sweep of the resumed lease ("node_lost" would be a new lease's). */
    assert_string_equal(rc_record_of(etcd, pooled, &found).end_reason, "gone");
    moat_chat_record held;
    assert_false(rc_chat_held(etcd, chat, &held));
    ETCD_WAIT_FOR(pool_ready(0) == 1, WAIT_S);
    assert_false(in_pool(pooled));
    created c = create_on(0, chat, node_id[1]);
    assert_int_equal(c.code, 0);
    assert_string_not_equal(c.session_id, pooled);
    assert_int_equal(rc_record_of(etcd, c.session_id, &found).state, MOAT_RECORD_RUNNING);
    stop_on(0, c.session_id);
}

/* All of etcd down while node 0 holds a ready pool sandbox: a create placed there fails
 * UNAVAILABLE. Fenced already, it never reached etcd and the sandbox is back in the pool; else
 * the chat key's transaction got no answer, its keys may name the sandbox's id, and the
 * sandbox is removed, never to be any chat's. etcd back, the chat's create works, with another
 * id in the second case. */
static void test_etcd_down_during_a_pool_create(void **state)
{
    (void)state;
    RC_REQUIRE_MEMBERS();
    char pooled[MOAT_UUID_STR_LEN], chat[MOAT_UUID_STR_LEN];
    ready_id(pooled, NULL, 0);
    moat_uuid_generate(chat);
    for (int m = 0; m < ETCD_CLUSTER_MEMBERS; m++)
        etcd_cluster_kill(&cl, m);
    created refused = create_on(0, chat, node_id[1]);
    assert_int_equal(refused.code, MOAT_CODE_UNAVAILABLE);
    bool fenced = strcmp(refused.reason, "node_fenced") == 0;
    assert_true(fenced || strcmp(refused.reason, "etcd_unavailable") == 0);
    bool kept = in_pool(pooled);
    printf("etcd down: %s, the pool sandbox %s\n", refused.reason, kept ? "kept" : "removed");
    assert_true(kept == fenced);
    for (int m = 0; m < ETCD_CLUSTER_MEMBERS; m++)
        assert_int_equal(etcd_cluster_restart(&cl, m), 0);
    created c = {.code = -1};
    for (int tick = 0; tick < WAIT_S * 20 && c.code != 0; tick++) {
        c = create_on(0, chat, node_id[1]);
        if (c.code != 0)
            etcd_cluster_sleep_ms(50);
    }
    assert_int_equal(c.code, 0);
    if (!kept)
        assert_string_not_equal(c.session_id, pooled);
    bool found = false;
    moat_session_record rec = rc_record_of(etcd, c.session_id, &found);
    assert_true(found);
    assert_int_equal(rec.state, MOAT_RECORD_RUNNING);
    assert_int_equal(live_records_of(chat), 1);
    stop_on(0, c.session_id);
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_ALL);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_create_claims_pool_sandbox),
        cmocka_unit_test(test_chat_live_elsewhere_gives_it_back),
        cmocka_unit_test(test_placement_prefers_warm),
        cmocka_unit_test(test_racing_creates_one_session),
        cmocka_unit_test(test_etcd_down_during_a_pool_create),
        cmocka_unit_test(test_restart_between_key_and_bind),
    };
    int rc = moat_run_group_tests("test_cluster_pool", tests, group_setup, group_teardown);
    curl_global_cleanup();
    return rc;
}
