/* The owner's upkeep of its records, for real: a three-member etcd of this run's own and two
 * moatd nodes on the shared dockerd. Node "ends" (no periodic sweep to speak of) reaps sessions
 * while all of etcd is down: the first end that finds etcd gone keeps it, every later one is
 * kept without trying etcd, and once etcd is back every end lands, written by the batch writer
 * (/metrics' moat_cluster_ends_kept counts them meanwhile, and drains).
 * Node "sweep" (a sweep every second, its engine reached through a proxy of the test's that can
 * hold a container's create): a running record of its own for a session it does not have is
 * ended, an older incarnation's is ended node_lost, another node's is left; and the record of a
 * session whose create is held between its claim and its container is left creating through
 * sweeps, then runs. */
#include <errno.h>
#include <stdint.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <curl/curl.h>

#include "moat_test.h"

#include "cluster/directory.h"
#include "cluster_calls.h"
#include "etcd_cluster.h"
#include "harness.h"
#include "moat/v1/sandbox.pb-c.h"

#define WAIT_S   60
#define TOKEN    "cluster-sweep-token"
#define SESSIONS 4
#define ENGINE   "/var/run/docker.sock"
/* The reaped sessions' lifetime: long enough for their creates and etcd's kill to come first. */
#define TTL_S 20

enum { ENDS = 0, SWEEP = 1, NODES = 2 };

static etcd_cluster cl;
static moat_etcd *etcd;
static rc_node nodes[NODES];
static char stopped_dir[256]; /* the ends node's state dir, run again on it */

/* ---- an engine proxy that can hold a container's create ---------------------------------- */

static struct {
    char path[108];
    int fd;
    pthread_t thread;
    bool started;
    atomic_bool hold;   /* hold requests to /containers/create */
    atomic_int holding; /* requests held now */
    atomic_bool stop;
    atomic_int relays; /* relay threads running */
} proxy = {.fd = -1};

static bool write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return false;
        p += w;
        n -= (size_t)w;
    }
    return true;
}

/* One client connection relayed to the engine both ways; a create held while proxy.hold. */
static void *relay(void *arg)
{
    int c = (int)(intptr_t)arg;
    int e = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof(a.sun_path), "%s", ENGINE);
    bool ok = e >= 0 && connect(e, (struct sockaddr *)&a, sizeof(a)) == 0;
    char buf[65536];
    while (ok && !atomic_load(&proxy.stop)) {
        struct pollfd p[2] = {{c, POLLIN, 0}, {e, POLLIN, 0}};
        if (poll(p, 2, 200) <= 0)
            continue;
        for (int i = 0; i < 2 && ok; i++) {
            if (p[i].revents == 0)
                continue;
            ssize_t n = read(p[i].fd, buf, sizeof(buf));
            if (n <= 0) {
                ok = false;
                break;
            }
            if (i == 0 && atomic_load(&proxy.hold) &&
                memmem(buf, (size_t)n, "/containers/create", 18) != NULL) {
                atomic_fetch_add(&proxy.holding, 1);
                while (atomic_load(&proxy.hold) && !atomic_load(&proxy.stop))
                    etcd_cluster_sleep_ms(20);
                atomic_fetch_sub(&proxy.holding, 1);
            }
            ok = write_all(i == 0 ? e : c, buf, (size_t)n);
        }
    }
    close(c);
    if (e >= 0)
        close(e);
    atomic_fetch_sub(&proxy.relays, 1);
    return NULL;
}

static void *accepter(void *arg)
{
    (void)arg;
    while (!atomic_load(&proxy.stop)) {
        struct pollfd p = {proxy.fd, POLLIN, 0};
        if (poll(&p, 1, 200) <= 0)
            continue;
        int c = accept(proxy.fd, NULL, NULL);
        if (c < 0)
            continue;
        pthread_t t;
        atomic_fetch_add(&proxy.relays, 1);
        if (pthread_create(&t, NULL, relay, (void *)(intptr_t)c) != 0) {
            atomic_fetch_sub(&proxy.relays, 1);
            close(c);
            continue;
        }
        pthread_detach(t);
    }
    return NULL;
}

static bool proxy_start(void)
{
    snprintf(proxy.path, sizeof(proxy.path), "/tmp/mcs%d-engine.sock", (int)getpid());
    unlink(proxy.path);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof(a.sun_path), "%s", proxy.path);
    proxy.fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (proxy.fd < 0 || bind(proxy.fd, (struct sockaddr *)&a, sizeof(a)) != 0 ||
        listen(proxy.fd, 64) != 0)
        return false;
    proxy.started = pthread_create(&proxy.thread, NULL, accepter, NULL) == 0;
    return proxy.started;
}

static void proxy_stop(void)
{
    atomic_store(&proxy.hold, false);
    atomic_store(&proxy.stop, true);
    if (proxy.started)
        pthread_join(proxy.thread, NULL);
    proxy.started = false;
    for (int i = 0; i < 100 && atomic_load(&proxy.relays) > 0; i++)
        etcd_cluster_sleep_ms(20);
    if (proxy.fd >= 0)
        close(proxy.fd);
    proxy.fd = -1;
    unlink(proxy.path);
}

/* ---- the cluster ------------------------------------------------------------------------- */

static bool docker_present(void)
{
    return access(ENGINE, F_OK) == 0 && system("/usr/bin/docker info >/dev/null 2>&1") == 0;
}

static void remove_containers(void)
{
    char prefix[64];
    snprintf(prefix, sizeof(prefix), "moat-mcs%d-", (int)getpid());
    docker_remove_prefixed(prefix);
}

/* The ends node started (again, on state_dir when not NULL). A lease long enough that the node
 * is not fenced while etcd is down in its cases: each end decides by the ends kept before it,
 * not by the fence. */
static bool start_ends(const char *state_dir)
{
    char dir_arg[300];
    snprintf(dir_arg, sizeof(dir_arg), "--state_dir=%s", state_dir != NULL ? state_dir : "");
    const char *ends[] = {"--token=" TOKEN,
                          "--workspace_quota=false",
                          "--cleanup_interval_seconds=1",
                          "--cluster_sweep_interval_seconds=3600",
                          "--cluster_lease_ttl_seconds=60",
                          state_dir != NULL ? dir_arg : NULL,
                          NULL};
    return rc_node_start(&nodes[ENDS], &cl, "mcs", ENDS, true, ends, false, NULL);
}

static int group_setup(void **state)
{
    (void)state;
    if (!docker_present() || !etcd_cluster_available())
        return 0;
    if (etcd_cluster_open(&cl, NULL, &etcd, 1000, WAIT_S) != 0)
        return -1;
    bool proxied = proxy_start();
    char engine[160];
    snprintf(engine, sizeof(engine), "--docker_host=%s", proxy.path);
    /* A lease long enough that the node is not fenced while etcd is down in its case: each end
     * decides by the ends kept before it, not by the fence. */
    const char *sweep[] = {"--token=" TOKEN, "--workspace_quota=false",
                           "--cluster_sweep_interval_seconds=1", engine, NULL};
    /* What started goes here, whether or not cmocka runs the group teardown after a failed
     * setup (1.1.5 does; it then finds nothing left). */
    if (!proxied || !start_ends(NULL) ||
        !rc_node_start(&nodes[SWEEP], &cl, "mcs", SWEEP, true, sweep, false, NULL)) {
        rc_cluster_close(nodes, NODES, &cl, &etcd);
        proxy_stop();
        remove_containers();
        return -1;
    }
    for (int i = 0; i < NODES; i++)
        ETCD_WAIT_FOR(etcd_cluster_lists_node(etcd, nodes[i].id, NULL), WAIT_S);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    rc_cluster_close(nodes, NODES, &cl, &etcd);
    proxy_stop();
    remove_containers();
    if (stopped_dir[0] != '\0')
        moatd_remove_dir(stopped_dir);
    return 0;
}

#define REQUIRE()                                                                                  \
    do {                                                                                           \
        ETCD_REQUIRE();                                                                            \
        moat_require(docker_present(), "no Docker engine at " ENGINE);                             \
    } while (0)

/* Lines of node n's log that hold needle. */
static int log_count(const rc_node *n, const char *needle)
{
    char *log = slurp_file(n->p.log_path);
    int count = 0;
    for (const char *at = log; (at = strstr(at, needle)) != NULL; at += strlen(needle))
        count++;
    free(log);
    return count;
}

/* What a failed case needs to tell why: the node's log lines about its sessions and etcd. */
static void dump_log(const rc_node *n)
{
    char cmd[400];
    snprintf(cmd, sizeof(cmd), "grep -E 'cluster_|session|reap|gone' %s | tail -60", n->p.log_path);
    if (system(cmd) != 0)
        printf("(no log lines)\n");
}

static moat_session_record record_of(const char *sid)
{
    bool found = false;
    moat_session_record rec = rc_record_of(etcd, sid, &found);
    assert_true(found);
    return rec;
}

/* Whether sid's record is in state; false too while etcd does not answer (its members just
 * started again). */
static bool record_is(const char *sid, moat_record_state state)
{
    moat_session_record rec;
    bool found = false;
    int64_t rev;
    moat_status st;
    return moat_dir_record(etcd, sid, &found, &rec, &rev, &st) == MOAT_CODE_OK && found &&
           rec.state == state;
}

static bool ended(const char *sid)
{
    return record_is(sid, MOAT_RECORD_ENDED);
}

/* The chat key's session ("" when the chat is free). */
static void chat_session(const char *chat, char sid[MOAT_UUID_STR_LEN])
{
    bool found = false;
    int64_t rev;
    moat_status st;
    moat_chat_record c;
    assert_int_equal(moat_dir_chat(etcd, chat, &found, &c, &rev, &st), MOAT_CODE_OK);
    snprintf(sid, MOAT_UUID_STR_LEN, "%s", found ? c.session_id : "");
}

static bool chat_free(const char *chat)
{
    char sid[MOAT_UUID_STR_LEN];
    chat_session(chat, sid);
    return sid[0] == '\0';
}

static int64_t lease_of(const rc_node *n)
{
    moat_node m;
    assert_true(etcd_cluster_lists_node(etcd, n->id, &m));
    return m.lease;
}

/* The chat's home: placement prefers it, so the test's creates stay on the node it names. */
static void put_home(const char *chat, const char *node)
{
    char key[MOAT_RECORD_KEY_MAX], value[MOAT_RECORD_VALUE_MAX];
    size_t kn = moat_home_record_key(chat, key, sizeof(key));
    size_t vn = moat_home_record_encode(node, value, sizeof(value));
    assert_true(kn > 0 && vn > 0);
    rc_put_key(etcd, key, value, vn, 0);
}

/* A session of node n's own that its runtime does not have (running, with its chat key under
 * lease), as an end whose write failed leaves it. */
static void put_orphan(const rc_node *n, int64_t lease, char sid[MOAT_UUID_STR_LEN],
                       char chat[MOAT_UUID_STR_LEN])
{
    moat_uuid_generate(sid);
    moat_uuid_generate(chat);
    rc_put_record(etcd, sid, chat, n->id, lease, "127.0.0.1:1", MOAT_RECORD_RUNNING, "");
    rc_put_chat(etcd, chat, sid, n->id, lease);
}

/* A session of chat created on node n, living ttl_seconds: its id into sid, its expiry. */
static int64_t create_for(const rc_node *n, const char *chat, uint32_t ttl_seconds,
                          char sid[MOAT_UUID_STR_LEN])
{
    raw_conn *c = raw_connect_ready(n->p.port, TOKEN);
    assert_non_null(c);
    Moat__V1__CreateSessionRequest req = MOAT__V1__CREATE_SESSION_REQUEST__INIT;
    req.chat_id = (char *)chat;
    req.ttl_seconds = ttl_seconds;
    ProtobufCMessage *resp = NULL;
    assert_int_equal(raw_unary(c, "/moat.v1.Sandboxes/CreateSession", &req.base,
                               &moat__v1__sandbox_session__descriptor, &resp, NULL, 0),
                     0);
    raw_close(c);
    assert_non_null(resp);
    Moat__V1__SandboxSession *sess = (Moat__V1__SandboxSession *)resp;
    /* Placed here (its home): the answer of a node for its own session names no owner. */
    assert_string_equal(sess->owner_address, "");
    snprintf(sid, MOAT_UUID_STR_LEN, "%.36s", sess->session_id);
    int64_t expires = sess->expires_at_ms;
    protobuf_c_message_free_unpacked(resp, NULL);
    return expires;
}

/* Sessions reaped (their TTL over) with all of etcd down, the node not yet fenced: one end
 * tries etcd, the others are kept without trying; etcd back, every end lands (written by the batch
 * writer: no sweep runs on this node and its lease is the same) and frees its chat. The times are
 * printed, not judged. */
/* SESSIONS sessions of new chats on node n (their ids and chats into sids and chats), reaped
 * when their TTL is over with all of etcd down and the node not yet fenced: the first end
 * tries etcd, the others are kept without trying. etcd stays down. */
static void reap_with_etcd_down(rc_node *n, char (*sids)[MOAT_UUID_STR_LEN],
                                char (*chats)[MOAT_UUID_STR_LEN])
{
    int64_t first_expiry = INT64_MAX;
    for (int i = 0; i < SESSIONS; i++) {
        moat_uuid_generate(chats[i]);
        put_home(chats[i], n->id);
        int64_t expires = create_for(n, chats[i], TTL_S, sids[i]);
        first_expiry = expires < first_expiry ? expires : first_expiry;
        assert_int_equal(record_of(sids[i]).state, MOAT_RECORD_RUNNING);
    }
    int kept_before = log_count(n, "cluster_end_kept");
    int tried_before = log_count(n, "tried=1");
    for (int m = 0; m < ETCD_CLUSTER_MEMBERS; m++)
        etcd_cluster_kill(&cl, m);
    /* What the case is about: every end comes after etcd went. */
    bool in_time = moat_time_now_ms() < first_expiry;
    for (int tick = 0;
         tick < WAIT_S * 20 && log_count(n, "cluster_end_kept") - kept_before < SESSIONS; tick++)
        etcd_cluster_sleep_ms(50);
    int kept = log_count(n, "cluster_end_kept") - kept_before;
    int tried = log_count(n, "tried=1") - tried_before;
    bool fenced = moatd_log_contains(&n->p, "cluster_fenced");
    if (!in_time || kept != SESSIONS || tried != 1 || fenced) {
        /* The later cases need etcd. */
        dump_log(n);
        for (int m = 0; m < ETCD_CLUSTER_MEMBERS; m++)
            etcd_cluster_restart(&cl, m);
    }
    assert_true(in_time);
    assert_int_equal(kept, SESSIONS);
    /* Only the first waited for the client's answer (here a refused connection; the timeouts
     * of a member that hangs); the others joined it. */
    assert_false(fenced);
    assert_int_equal(tried, 1);
}

static void test_ends_kept_while_etcd_down(void **state)
{
    (void)state;
    REQUIRE();
    rc_node *n = &nodes[ENDS];
    int64_t lease = lease_of(n);
    char sids[SESSIONS][MOAT_UUID_STR_LEN], chats[SESSIONS][MOAT_UUID_STR_LEN];
    long long kept_before = metric_value(n->p.metrics_port, "moat_cluster_ends_kept");
    reap_with_etcd_down(n, sids, chats);
    /* /metrics while they wait: the gauge counts them, none written yet. */
    long long kept = metric_value(n->p.metrics_port, "moat_cluster_ends_kept");
    long long written0 = metric_value(n->p.metrics_port, "moat_cluster_ends_written_total");

    int written_before = log_count(n, "cluster_ends_written");
    for (int m = 0; m < ETCD_CLUSTER_MEMBERS; m++)
        assert_int_equal(etcd_cluster_restart(&cl, m), 0);
    assert_int_equal(kept_before, 0);
    assert_int_equal(kept, SESSIONS);
    assert_true(written0 >= 0);
    uint64_t t1 = moat_time_mono_ns();
    for (int i = 0; i < SESSIONS; i++)
        ETCD_WAIT_FOR(ended(sids[i]), WAIT_S);
    printf("all ends in etcd %llu ms after its members were started again\n",
           (unsigned long long)((moat_time_mono_ns() - t1) / 1000000u));
    for (int i = 0; i < SESSIONS; i++) {
        assert_string_equal(record_of(sids[i]).end_reason, "ttl");
        assert_true(chat_free(chats[i]));
    }
    assert_true(log_count(n, "cluster_ends_written") > written_before);
    /* The gauge drains as the writer forgets what it wrote, after the writes show in etcd. */
    ETCD_WAIT_FOR(metric_value(n->p.metrics_port, "moat_cluster_ends_kept") == 0, WAIT_S);
    assert_int_equal(metric_value(n->p.metrics_port, "moat_cluster_ends_written_total") - written0,
                     SESSIONS);
    assert_int_equal(lease_of(n), lease);
    assert_int_equal(log_count(n, "periodic=1"), 0);
}

/* Records of the sweep node's own that no session backs: this incarnation's is ended "gone"
 * and its chat freed, one left creating by a create long over too, one of a session stopped
 * here with the runtime's reason ("stopped"), an older incarnation's "node_lost"; another
 * node's stays running. */
static void test_sweep_ends_orphans(void **state)
{
    (void)state;
    REQUIRE();
    rc_node *n = &nodes[SWEEP];
    int64_t lease = lease_of(n);
    char sid[MOAT_UUID_STR_LEN], chat[MOAT_UUID_STR_LEN];
    char old_sid[MOAT_UUID_STR_LEN], old_chat[MOAT_UUID_STR_LEN];
    char other_sid[MOAT_UUID_STR_LEN], other_chat[MOAT_UUID_STR_LEN];
    moat_uuid_generate(other_sid);
    moat_uuid_generate(other_chat);
    rc_put_record(etcd, other_sid, other_chat, nodes[ENDS].id, lease_of(&nodes[ENDS]),
                  "127.0.0.1:1", MOAT_RECORD_RUNNING, "");
    moat_uuid_generate(old_sid);
    moat_uuid_generate(old_chat);
    rc_put_record(etcd, old_sid, old_chat, n->id, lease + 1, "127.0.0.1:1", MOAT_RECORD_RUNNING,
                  "");
    /* A create whose start failed and whose keys could not be taken back. */
    char stuck_sid[MOAT_UUID_STR_LEN], stuck_chat[MOAT_UUID_STR_LEN];
    moat_uuid_generate(stuck_sid);
    moat_uuid_generate(stuck_chat);
    rc_put_record(etcd, stuck_sid, stuck_chat, n->id, lease, "127.0.0.1:1", MOAT_RECORD_CREATING,
                  "");
    /* A real session stopped here whose end did not reach etcd: its record says running. */
    char stopped_chat[MOAT_UUID_STR_LEN], stopped_sid[MOAT_UUID_STR_LEN];
    moat_uuid_generate(stopped_chat);
    put_home(stopped_chat, n->id);
    raw_created c = raw_create(n->p.port, TOKEN, stopped_chat, false, NULL);
    assert_int_equal(c.code, 0);
    snprintf(stopped_sid, sizeof(stopped_sid), "%.36s", c.session_id);
    raw_conn *conn = raw_connect_ready(n->p.port, TOKEN);
    assert_non_null(conn);
    rc_end e = rc_stop(conn, stopped_sid);
    raw_close(conn);
    assert_int_equal(e.code, 0);
    rc_free(&e);
    rc_put_record(etcd, stopped_sid, stopped_chat, n->id, lease, "127.0.0.1:1", MOAT_RECORD_RUNNING,
                  "");
    put_orphan(n, lease, sid, chat);
    ETCD_WAIT_FOR(ended(sid) && ended(old_sid) && ended(stuck_sid) && ended(stopped_sid), WAIT_S);
    assert_string_equal(record_of(sid).end_reason, "gone");
    assert_string_equal(record_of(old_sid).end_reason, "node_lost");
    assert_string_equal(record_of(stuck_sid).end_reason, "gone");
    /* The runtime's own reason for it. */
    assert_string_equal(record_of(stopped_sid).end_reason, "stopped");
    assert_true(chat_free(chat));
    char home[MOAT_NODE_ID_MAX];
    moat_dir_home(etcd, chat, home);
    assert_string_equal(home, n->id);
    /* The pass that ended them saw this one too: another node's record is not this one's. */
    assert_int_equal(record_of(other_sid).state, MOAT_RECORD_RUNNING);
    assert_true(moatd_log_contains(&n->p, "periodic=1"));
}

/* A session that runs here but whose record still says creating (its create's running write was
 * lost: etcd did not take it, or the process died after the bind): the sweep writes it running,
 * and the session goes on. */
static void test_sweep_finishes_creating(void **state)
{
    (void)state;
    REQUIRE();
    rc_node *n = &nodes[SWEEP];
    int64_t lease = lease_of(n);
    char chat[MOAT_UUID_STR_LEN], sid[MOAT_UUID_STR_LEN];
    moat_uuid_generate(chat);
    put_home(chat, n->id);
    raw_created c = raw_create(n->p.port, TOKEN, chat, false, NULL);
    assert_int_equal(c.code, 0);
    snprintf(sid, sizeof(sid), "%.36s", c.session_id);
    rc_put_record(etcd, sid, chat, n->id, lease, "127.0.0.1:1", MOAT_RECORD_CREATING, "");
    ETCD_WAIT_FOR(record_is(sid, MOAT_RECORD_RUNNING), WAIT_S);
    assert_true(moatd_log_contains(&n->p, "creating_finished=1"));
    assert_true(rc_runs_echo(n->p.port, TOKEN, sid));
    char held[MOAT_UUID_STR_LEN];
    chat_session(chat, held);
    assert_string_equal(held, sid);
}

/* The item's record ended as the batch says, its chat key gone and its home written. */
static void assert_ended_by_batch(const moat_dir_end_item *it, const char *chat, const char *node)
{
    moat_session_record r = record_of(it->session_id);
    assert_int_equal(r.state, MOAT_RECORD_ENDED);
    assert_string_equal(r.end_reason, it->reason);
    assert_int_equal(r.ended_at_ms, it->ended_at_ms);
    assert_true(chat_free(chat));
    char home[MOAT_NODE_ID_MAX];
    moat_dir_home(etcd, chat, home);
    assert_string_equal(home, node);
}

/* moat_dir_end_batch against what a directory may hold: a full batch of a node's running
 * records ends in one call; two of one chat end over two calls (a transaction writes a key
 * once); absent, ended, another node's, garbage and a session id that is no UUID are done
 * without a write, and left as they were. */
static void test_end_batch(void **state)
{
    (void)state;
    REQUIRE();
    const char *node = "batch-node";
    moat_dir_end_item items[MOAT_DIR_END_BATCH];
    memset(items, 0, sizeof(items));
    char chats[MOAT_DIR_END_BATCH][MOAT_UUID_STR_LEN];
    enum { SAME_CHAT = 0, ABSENT, ENDED, OTHERS, GARBAGE, NOT_UUID, FIRST_LIVE };
    for (int i = 0; i < MOAT_DIR_END_BATCH; i++) {
        moat_uuid_generate(items[i].session_id);
        moat_uuid_generate(chats[i]);
        snprintf(items[i].reason, sizeof(items[i].reason), "ttl");
        items[i].ended_at_ms = 1000 + i;
        if (i >= FIRST_LIVE) {
            rc_put_record(etcd, items[i].session_id, chats[i], node, 7, "127.0.0.1:1",
                          MOAT_RECORD_RUNNING, "");
            rc_put_chat(etcd, chats[i], items[i].session_id, node, 0);
        }
    }
    /* A second session of the last live one's chat (force_new beside it). */
    snprintf(chats[SAME_CHAT], sizeof(chats[SAME_CHAT]), "%s", chats[MOAT_DIR_END_BATCH - 1]);
    rc_put_record(etcd, items[SAME_CHAT].session_id, chats[SAME_CHAT], node, 7, "127.0.0.1:1",
                  MOAT_RECORD_RUNNING, "");
    rc_put_record(etcd, items[ENDED].session_id, chats[ENDED], node, 7, "127.0.0.1:1",
                  MOAT_RECORD_ENDED, "stopped");
    rc_put_record(etcd, items[OTHERS].session_id, chats[OTHERS], "another-node", 7, "127.0.0.1:1",
                  MOAT_RECORD_RUNNING, "");
    rc_put_raw(etcd, items[GARBAGE].session_id, "{\"session\":");
    snprintf(items[NOT_UUID].session_id, sizeof(items[NOT_UUID].session_id), "../../nodes/x");

    bool done[MOAT_DIR_END_BATCH];
    moat_status st;
    assert_int_equal(moat_dir_end_batch(etcd, node, items, MOAT_DIR_END_BATCH, done, &st),
                     MOAT_CODE_OK);
    /* The last live one's chat is the first item's too: it waits for another call. */
    const int last = MOAT_DIR_END_BATCH - 1;
    for (int i = 0; i < MOAT_DIR_END_BATCH; i++)
        assert_true(done[i] == (i != last));
    for (int i = FIRST_LIVE; i < last; i++)
        assert_ended_by_batch(&items[i], chats[i], node);
    assert_int_equal(record_of(items[SAME_CHAT].session_id).state, MOAT_RECORD_ENDED);
    assert_int_equal(record_of(items[last].session_id).state, MOAT_RECORD_RUNNING);
    assert_false(chat_free(chats[last]));
    assert_false(ended(items[ABSENT].session_id));
    assert_string_equal(record_of(items[ENDED].session_id).end_reason, "stopped");
    assert_int_equal(record_of(items[OTHERS].session_id).state, MOAT_RECORD_RUNNING);
    moat_session_record r;
    bool found;
    int64_t rev;
    assert_int_equal(moat_dir_record(etcd, items[GARBAGE].session_id, &found, &r, &rev, &st),
                     MOAT_CODE_INTERNAL);
    assert_int_equal(etcd_cluster_key_count(etcd, "/moat/v1/nodes/x"), 0);

    assert_int_equal(moat_dir_end_batch(etcd, node, &items[last], 1, done, &st), MOAT_CODE_OK);
    assert_true(done[0]);
    assert_ended_by_batch(&items[last], chats[last], node);
}

typedef struct held_create {
    int port;
    char chat[MOAT_UUID_STR_LEN];
    raw_created out;
} held_create;

static void *create_thread(void *arg)
{
    held_create *h = arg;
    h->out = raw_create(h->port, TOKEN, h->chat, false, NULL);
    return NULL;
}

/* A create held at its container's create (the claim has written the record, creating, and
 * taken the chat key; the runtime has no session yet): sweeps pass over its record, which an
 * orphan put after it and ended by a sweep proves; let go, the create succeeds and its record
 * runs. */
static void test_sweep_leaves_creating(void **state)
{
    (void)state;
    REQUIRE();
    rc_node *n = &nodes[SWEEP];
    held_create h = {.port = n->p.port};
    moat_uuid_generate(h.chat);
    put_home(h.chat, n->id);
    atomic_store(&proxy.hold, true);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, create_thread, &h), 0);
    char sid[MOAT_UUID_STR_LEN] = "";
    for (int tick = 0; tick < WAIT_S * 20 && (atomic_load(&proxy.holding) == 0 || sid[0] == '\0');
         tick++) {
        etcd_cluster_sleep_ms(50);
        chat_session(h.chat, sid);
    }
    bool held = atomic_load(&proxy.holding) > 0 && sid[0] != '\0';
    char orphan[MOAT_UUID_STR_LEN], orphan_chat[MOAT_UUID_STR_LEN];
    if (held) {
        put_orphan(n, lease_of(n), orphan, orphan_chat);
        for (int tick = 0; tick < WAIT_S * 20 && !ended(orphan); tick++)
            etcd_cluster_sleep_ms(50);
    }
    moat_record_state during = held ? record_of(sid).state : MOAT_RECORD_ENDED;
    char holder[MOAT_UUID_STR_LEN];
    chat_session(h.chat, holder);
    /* Let go before asserting, so that a failure leaves no create hanging. */
    atomic_store(&proxy.hold, false);
    pthread_join(t, NULL);
    assert_true(held);
    assert_true(ended(orphan));
    assert_int_equal(during, MOAT_RECORD_CREATING);
    assert_string_equal(holder, sid);
    assert_int_equal(h.out.code, 0);
    assert_string_equal(h.out.session_id, sid);
    assert_int_equal(record_of(sid).state, MOAT_RECORD_RUNNING);
    raw_conn *c = raw_connect_ready(n->p.port, TOKEN);
    assert_non_null(c);
    assert_int_equal(raw_run_many(c, sid, "echo hi", 1, 1, NULL, NULL), 1);
    raw_close(c);
    /* Sweeps after the create leave it too: it runs. */
    put_orphan(n, lease_of(n), orphan, orphan_chat);
    ETCD_WAIT_FOR(ended(orphan), WAIT_S);
    assert_int_equal(record_of(sid).state, MOAT_RECORD_RUNNING);
}

/* A session stopped on a node fenced by etcd's absence: its end is kept without trying etcd
 * (the stop does not wait for the client), and written once etcd is back. */
static void test_stop_while_fenced(void **state)
{
    (void)state;
    REQUIRE();
    rc_node *n = &nodes[SWEEP];
    char chat[MOAT_UUID_STR_LEN], sid[MOAT_UUID_STR_LEN];
    moat_uuid_generate(chat);
    put_home(chat, n->id);
    raw_created c = raw_create(n->p.port, TOKEN, chat, false, NULL);
    assert_int_equal(c.code, 0);
    snprintf(sid, sizeof(sid), "%.36s", c.session_id);
    int fenced_before = log_count(n, "cluster_fenced");
    int untried_before = log_count(n, "tried=0");
    int tried_before = log_count(n, "tried=1");
    for (int m = 0; m < ETCD_CLUSTER_MEMBERS; m++)
        etcd_cluster_kill(&cl, m);
    for (int tick = 0; tick < WAIT_S * 20 && log_count(n, "cluster_fenced") <= fenced_before;
         tick++)
        etcd_cluster_sleep_ms(50);
    bool fenced = log_count(n, "cluster_fenced") > fenced_before;
    /* Nothing asserted while etcd is down: the later cases need it back. */
    raw_conn *conn = fenced ? raw_connect_ready(n->p.port, TOKEN) : NULL;
    int stop_code = -1;
    if (conn != NULL) {
        rc_end e = rc_stop(conn, sid);
        stop_code = e.code;
        rc_free(&e);
        raw_close(conn);
    }
    int untried = log_count(n, "tried=0") - untried_before;
    int tried = log_count(n, "tried=1") - tried_before;
    for (int m = 0; m < ETCD_CLUSTER_MEMBERS; m++)
        assert_int_equal(etcd_cluster_restart(&cl, m), 0);
    assert_true(fenced);
    assert_int_equal(stop_code, 0);
    assert_int_equal(untried, 1);
    assert_int_equal(tried, 0);
    ETCD_WAIT_FOR(ended(sid), WAIT_S);
    assert_string_equal(record_of(sid).end_reason, "stopped");
    ETCD_WAIT_FOR(chat_free(chat), WAIT_S);
}

/* Whether etcd took the delete of key. */
static bool delete_key(const char *key)
{
    moat_etcd_result res;
    moat_status st;
    moat_code code = moat_etcd_delete(etcd, moat_slice_str(key), false, &res, &st);
    moat_etcd_result_free(&res);
    return code == MOAT_CODE_OK;
}

/* Ends kept with etcd down and given up when moatd stops (SIGTERM) before etcd is back: the
 * node started again on its state dir, etcd back, the sweep at its registration ends their
 * records with the reason its runtime's store kept (ttl), not node_lost, though its old lease
 * went with its stop. */
static void test_ends_given_up_swept_at_start(void **state)
{
    (void)state;
    REQUIRE();
    rc_node *n = &nodes[ENDS];
    char sids[SESSIONS][MOAT_UUID_STR_LEN], chats[SESSIONS][MOAT_UUID_STR_LEN];
    reap_with_etcd_down(n, sids, chats);
    snprintf(stopped_dir, sizeof(stopped_dir), "%s", n->p.state_dir);
    moatd_stop(&n->p);
    n->p.pid = 0;
    bool given_up = moatd_log_contains(&n->p, "cluster_ends_given_up");
    for (int m = 0; m < ETCD_CLUSTER_MEMBERS; m++)
        assert_int_equal(etcd_cluster_restart(&cl, m), 0);
    assert_true(given_up);
    /* Its stop could not revoke its lease, which etcd's new leader renewed: its key goes as it
     * would when the lease expires, so that the node registers at once rather than after two
     * lease TTLs (a minute each here). */
    char key[128];
    snprintf(key, sizeof(key), "%s%s", MOAT_NODES_PREFIX, n->id);
    ETCD_WAIT_FOR(delete_key(key), WAIT_S);
    assert_true(start_ends(stopped_dir));
    for (int i = 0; i < SESSIONS; i++)
        ETCD_WAIT_FOR(ended(sids[i]), WAIT_S);
    for (int i = 0; i < SESSIONS; i++) {
        assert_string_equal(record_of(sids[i]).end_reason, "ttl");
        assert_true(chat_free(chats[i]));
    }
    /* Logged on the loop once the sweep's worker is done, after its writes, which show first. */
    ETCD_WAIT_FOR(moatd_log_contains(&n->p, "cluster_swept"), WAIT_S);
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_ALL);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_end_batch),
        cmocka_unit_test(test_sweep_ends_orphans),
        cmocka_unit_test(test_sweep_finishes_creating),
        cmocka_unit_test(test_sweep_leaves_creating),
        cmocka_unit_test(test_stop_while_fenced),
        cmocka_unit_test(test_ends_kept_while_etcd_down),
        cmocka_unit_test(test_ends_given_up_swept_at_start),
    };
    int rc = moat_run_group_tests("test_cluster_sweep", tests, group_setup, group_teardown);
    curl_global_cleanup();
    return rc;
}
