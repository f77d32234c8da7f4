/* bench/cluster bench_route: the read path of a cluster (issue #16's "ListSessions over 3 nodes
 * × 300 sessions p50 < 20 ms"). A three-member etcd on loopback and three moatd nodes (no
 * engine needed: the directory answers), 300 session records per node put here as their
 * owners would put them; then ListSessions through each node in turn, and a call to a
 * non-owner answered session_moved. Baselines in the same run: one range of the same 900
 * records straight through the gateway (the floor any directory listing pays), and
 * ListSessions on a moatd that is in no cluster (its own empty list on the shared dockerd: the
 * call's own cost). Node 3 proxies (cluster_route = proxy): a call on it for node 2's session is
 * relayed there over the pooled connections between nodes (cluster_peer.c), against the same
 * call made on node 2 itself. Node 1 has an engine (the shared dockerd, an instance of its own):
 * GetSession, RenewSession, StopSession and RunCommand on it for node 2's session, answered from
 * its copy of the directory before any engine lookup, against the same calls for an ended session
 * of node 2's, which node 1 still asks its engine about (and etcd, for a renewal) before its copy
 * answers: what the former cost when they too asked the engine first. Prints p50 and p99 of
 * each. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <curl/curl.h>

#include "cluster/directory.h"
#include "cluster/records.h"
#include "cluster_calls.h"
#include "etcd_cluster.h"
#include "harness.h"
#include "moat/v1/exec.pb-c.h"
#include "moat/v1/sandbox.pb-c.h"

#define NODES    3
#define PER_NODE 300
#define ROUNDS   200

static etcd_cluster cl;
static moat_etcd *etcd;
static moatd_proc node[NODES + 1]; /* the last: the baseline, alone */
static bool started[NODES + 1];

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void report(const char *what, uint64_t *ns, size_t n)
{
    qsort(ns, n, sizeof(*ns), cmp_u64);
    printf("%-52s p50 %7.3f ms  p99 %7.3f ms  (%zu calls)\n", what, (double)ns[n / 2] / 1e6,
           (double)ns[n * 99 / 100] / 1e6, n);
}

static void cleanup(void)
{
    for (int i = 0; i <= NODES; i++) {
        if (started[i]) {
            moatd_stop(&node[i]);
            moatd_remove_dir(node[i].state_dir);
        }
    }
    etcd_cluster_close(&cl, &etcd);
}

static void fail(const char *what)
{
    fprintf(stderr, "bench_route: %s\n", what);
    cleanup();
    exit(1);
}

/* The calls that name a session, measured on node 1 for a session held elsewhere and for an ended
 * one; what each must end with (its reason, "" for OK), for the one and the other. */
enum { KINDS = 4 };
static const char *const kind_method[KINDS] = {
    "/moat.v1.Sandboxes/GetSession", "/moat.v1.Sandboxes/RenewSession",
    "/moat.v1.Sandboxes/StopSession", "/moat.v1.Exec/RunCommand"};
static const char *const kind_moved[KINDS] = {"", "session_moved", "session_moved",
                                              "session_moved"};
static const char *const kind_ended[KINDS] = {"", "session_not_found", "", "session_not_running"};

typedef struct kind_reqs {
    Moat__V1__GetSessionRequest get;
    Moat__V1__RenewSessionRequest renew;
    Moat__V1__StopSessionRequest stop;
    Moat__V1__RunCommandRequest run;
} kind_reqs;

/* The four requests for sid (kept by the caller); their messages into msg[KINDS]. */
static void kind_reqs_init(kind_reqs *q, char *sid, const ProtobufCMessage *msg[KINDS])
{
    *q = (kind_reqs){MOAT__V1__GET_SESSION_REQUEST__INIT, MOAT__V1__RENEW_SESSION_REQUEST__INIT,
                     MOAT__V1__STOP_SESSION_REQUEST__INIT, MOAT__V1__RUN_COMMAND_REQUEST__INIT};
    q->get.session_id = q->renew.session_id = q->stop.session_id = q->run.session_id = sid;
    q->run.command = (char *)"true";
    msg[0] = &q->get.base;
    msg[1] = &q->renew.base;
    msg[2] = &q->stop.base;
    msg[3] = &q->run.base;
}

/* One ListSessions; its session count, or -1. */
static long list_once(raw_conn *c)
{
    Moat__V1__ListSessionsRequest req = MOAT__V1__LIST_SESSIONS_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    int code = raw_unary(c, "/moat.v1.Sandboxes/ListSessions", &req.base,
                         &moat__v1__list_sessions_response__descriptor, &resp, NULL, 0);
    long n =
        code == 0 && resp != NULL ? (long)((Moat__V1__ListSessionsResponse *)resp)->n_sessions : -1;
    if (resp != NULL)
        protobuf_c_message_free_unpacked(resp, NULL);
    return n;
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_ALL);
    if (!etcd_cluster_available() || etcd_cluster_open(&cl, NULL, &etcd, 3000, 60) != 0)
        fail("no etcd cluster (apt-get install etcd-server)");
    char eps[300];
    snprintf(eps, sizeof(eps), "--cluster_etcd_endpoints=%s,%s,%s", cl.urls[0], cl.urls[1],
             cl.urls[2]);
    char ids[NODES][32];
    for (int i = 0; i < NODES; i++) {
        char id_arg[64];
        snprintf(ids[i], sizeof(ids[i]), "bench%d-n%d", (int)getpid(), i + 1);
        snprintf(id_arg, sizeof(id_arg), "--cluster_node_id=%.31s", ids[i]);
        char own_inst[64];
        snprintf(own_inst, sizeof(own_inst), "--instance=bench-route%d-n1", (int)getpid());
        const char *extra[] = {eps, id_arg, "--cluster_advertise=127.0.0.1:1",
                               i == 0           ? own_inst
                               : i == NODES - 1 ? "--cluster_route=proxy"
                                                : NULL,
                               NULL};
        if (!moatd_start(&node[i], i == 0, extra))
            fail("moatd did not start");
        started[i] = true;
    }
    char inst[64];
    snprintf(inst, sizeof(inst), "--instance=bench-route%d", (int)getpid());
    const char *alone[] = {inst, NULL};
    if (!moatd_start(&node[NODES], true, alone))
        fail("the baseline moatd did not start");
    started[NODES] = true;

    for (int i = 0; i < NODES; i++) {
        moat_node n;
        for (int t = 0; t < 200 && !etcd_cluster_lists_node(etcd, ids[i], &n); t++)
            etcd_cluster_sleep_ms(50);
        if (!etcd_cluster_lists_node(etcd, ids[i], &n))
            fail("a node did not join");
        char addr[64];
        snprintf(addr, sizeof(addr), "127.0.0.1:%d", node[i].port);
        if (!rc_put_records(etcd, PER_NODE, NULL, ids[i], n.lease, addr))
            fail("etcd refused the records");
    }

    raw_conn *c[NODES + 1];
    for (int i = 0; i <= NODES; i++) {
        c[i] = raw_connect_ready(node[i].port, NULL);
        if (c[i] == NULL)
            fail("cannot connect");
    }
    static uint64_t ns[ROUNDS];
    /* Warm each connection and wait for the count: a node's copy of the directory follows the
     * puts above by its watch's delay (the bench ran into it with the host's load at 16). */
    for (int i = 0; i < NODES; i++) {
        for (int t = 0; t < 200 && list_once(c[i]) != NODES * PER_NODE; t++)
            etcd_cluster_sleep_ms(50);
        if (list_once(c[i]) != NODES * PER_NODE)
            fail("ListSessions did not list every record");
    }
    for (int r = 0; r < ROUNDS; r++) {
        uint64_t t0 = moat_time_mono_ns();
        long n = list_once(c[r % NODES]);
        ns[r] = moat_time_mono_ns() - t0;
        if (n != NODES * PER_NODE)
            fail("ListSessions failed");
    }
    report("ListSessions, 3 nodes x 300 records (cluster)", ns, ROUNDS);

    for (int r = 0; r < ROUNDS; r++) {
        moat_etcd_result res;
        moat_status st;
        uint64_t t0 = moat_time_mono_ns();
        moat_code code =
            moat_etcd_range(etcd, moat_slice_str(MOAT_SESSIONS_PREFIX), true, 0, &res, &st);
        ns[r] = moat_time_mono_ns() - t0;
        bool ok = code == MOAT_CODE_OK && res.kv_count == NODES * PER_NODE;
        moat_etcd_result_free(&res);
        if (!ok)
            fail("range failed");
    }
    report("baseline: one gateway range of the 900 records", ns, ROUNDS);

    list_once(c[NODES]);
    for (int r = 0; r < ROUNDS; r++) {
        uint64_t t0 = moat_time_mono_ns();
        long n = list_once(c[NODES]);
        ns[r] = moat_time_mono_ns() - t0;
        if (n < 0)
            fail("the baseline's ListSessions failed");
    }
    report("baseline: ListSessions, one moatd in no cluster", ns, ROUNDS);

    /* A session of node 2 asked of node 1: the redirect's lookup (record + node key). */
    moat_etcd_result res;
    moat_status st;
    if (moat_etcd_range(etcd, moat_slice_str(MOAT_SESSIONS_PREFIX), true, 0, &res, &st) !=
        MOAT_CODE_OK)
        fail("range failed");
    moat_session_record rec;
    char sid[MOAT_UUID_STR_LEN] = "", ended[MOAT_UUID_STR_LEN] = "";
    for (size_t k = 0; k < res.kv_count && ended[0] == '\0'; k++) {
        if (moat_session_record_decode(res.kvs[k].key, res.kvs[k].key_len, res.kvs[k].value,
                                       res.kvs[k].value_len, &rec) == MOAT_OK &&
            strcmp(rec.node_id, ids[1]) == 0)
            snprintf(sid[0] == '\0' ? sid : ended, MOAT_UUID_STR_LEN, "%s", rec.session_id);
    }
    moat_etcd_result_free(&res);
    for (int r = 0; r < ROUNDS; r++) {
        Moat__V1__RunCommandRequest req = MOAT__V1__RUN_COMMAND_REQUEST__INIT;
        req.session_id = sid;
        req.command = (char *)"true";
        char reason[64] = "";
        uint64_t t0 = moat_time_mono_ns();
        raw_unary(c[0], "/moat.v1.Exec/RunCommand", &req.base, NULL, NULL, reason, sizeof(reason));
        ns[r] = moat_time_mono_ns() - t0;
        if (strcmp(reason, "session_moved") != 0)
            fail("no session_moved");
    }
    report("RunCommand on a non-owner: session_moved", ns, ROUNDS);

    /* The owner's own answer for its session (it has no engine: the same End each time), made
     * on it and relayed through the proxying node. */
    static uint64_t relayed[ROUNDS];
    char want[64] = "";
    for (int r = 0; r < ROUNDS; r++) {
        for (int via = 1; via <= 2; via++) {
            Moat__V1__RunCommandRequest req = MOAT__V1__RUN_COMMAND_REQUEST__INIT;
            req.session_id = sid;
            req.command = (char *)"true";
            char reason[64] = "";
            uint64_t t0 = moat_time_mono_ns();
            raw_unary(c[via], "/moat.v1.Exec/RunCommand", &req.base, NULL, NULL, reason,
                      sizeof(reason));
            (via == 1 ? ns : relayed)[r] = moat_time_mono_ns() - t0;
            if (want[0] == '\0')
                snprintf(want, sizeof(want), "%s", reason);
            if (strcmp(reason, want) != 0 || strcmp(reason, "session_moved") == 0)
                fail("the proxy did not relay the owner's answer");
        }
    }
    report("baseline: RunCommand on its owner", ns, ROUNDS);
    report("RunCommand relayed by a proxying node", relayed, ROUNDS);

    bool was_running = false;
    if (moat_dir_end(etcd, ended, ids[1], moat_time_now_ms(), "stopped", &was_running, &st) !=
            MOAT_CODE_OK ||
        !was_running)
        fail("etcd did not take the end");
    for (int t = 0; t < 200 && list_once(c[0]) != NODES * PER_NODE - 1; t++)
        etcd_cluster_sleep_ms(50);
    if (list_once(c[0]) != NODES * PER_NODE - 1)
        fail("node 1's copy did not see the end");
    kind_reqs moved_q, ended_q;
    const ProtobufCMessage *moved_msg[KINDS], *ended_msg[KINDS];
    kind_reqs_init(&moved_q, sid, moved_msg);
    kind_reqs_init(&ended_q, ended, ended_msg);
    static uint64_t kind_ns[KINDS][2][ROUNDS];
    for (int r = 0; r < ROUNDS; r++) {
        for (int k = 0; k < KINDS; k++) {
            for (int e = 0; e < 2; e++) {
                char reason[64] = "";
                uint64_t t0 = moat_time_mono_ns();
                raw_unary(c[0], kind_method[k], e ? ended_msg[k] : moved_msg[k], NULL, NULL, reason,
                          sizeof(reason));
                kind_ns[k][e][r] = moat_time_mono_ns() - t0;
                if (strcmp(reason, e ? kind_ended[k] : kind_moved[k]) != 0)
                    fail(kind_method[k]);
            }
        }
    }
    for (int k = 0; k < KINDS; k++) {
        char what[2][96];
        const char *name = strrchr(kind_method[k], '/') + 1;
        snprintf(what[0], sizeof(what[0]), "%s, non-owner: from its copy", name);
        snprintf(what[1], sizeof(what[1]), "baseline: %s, ended: engine first", name);
        for (int e = 0; e < 2; e++)
            report(what[e], kind_ns[k][e], ROUNDS);
    }

    for (int i = 0; i <= NODES; i++)
        raw_close(c[i]);
    cleanup();
    curl_global_cleanup();
    return 0;
}
