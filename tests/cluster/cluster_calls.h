/* What the cluster tests share: calls on a raw connection that keep their End's reason and
 * the details routing adds, and session records put into etcd as their owner would put them
 * (records.h's encoder). */
#ifndef MOAT_TEST_CLUSTER_CALLS_H
#define MOAT_TEST_CLUSTER_CALLS_H

#include <stdbool.h>
#include <stdint.h>

#include "cluster/records.h"
#include "etcd_cluster.h"
#include "harness.h"

/* A moatd node of a test's cluster. */
typedef struct rc_node {
    moatd_proc p;
    bool started;
    char id[32];    /* <tag><pid>-n<i+1> */
    raw_conn *conn; /* with the token given at start; NULL unless asked for */
} rc_node;

/* Starts node i as a member of cl's etcd with a 2 s lease, its id <tag><pid>-n<i+1>; with
 * docker, on the shared dockerd with an instance and container names of its own
 * (moat-<tag><pid>-n<i+1>-; docker_remove_prefixed("moat-<tag><pid>-") removes them all), else
 * with a dead engine; extra flags after those (NULL-terminated, may be NULL). connect: a
 * connection with token (NULL: none) in n->conn. false on failure (after printing the log). */
bool rc_node_start(rc_node *n, const etcd_cluster *cl, const char *tag, int i, bool docker,
                   const char *const *extra, bool connect, const char *token);
/* Closes its connection, stops it (unless a test killed it: p.pid 0) and removes its state
 * dir, also one a failed start left; a second call does nothing. */
void rc_node_stop(rc_node *n);
/* Stops nodes[0..count) and closes the test's etcd (*etcd becomes NULL): a group's teardown,
 * and what a group setup that failed half way runs itself. cmocka 1.1.5 then runs the group
 * teardown as well (some versions do not), which finds nothing left to do. */
void rc_cluster_close(rc_node *nodes, int count, etcd_cluster *cl, moat_etcd **etcd);

/* A call's End: code, reason and the details the test looks at. */
typedef struct rc_end {
    int code; /* -1: no End (transport failure) */
    char reason[64];
    char message[160];
    char owner_address[MOAT_NODE_ADDRESS_MAX];
    char owner_node[MOAT_NODE_ID_MAX];
    ProtobufCMessage *resp; /* the response message, when resp_desc was given */
} rc_end;

/* Runs a call to its End; the first response message is unpacked with resp_desc (may be NULL)
 * into e.resp (rc_free frees it). */
rc_end rc_call(raw_conn *c, const char *method, const ProtobufCMessage *req,
               const ProtobufCMessageDescriptor *resp_desc);
void rc_free(rc_end *e);
bool rc_is(const rc_end *e, int code, const char *reason);

/* One call of each kind that names a session (rc_run_command runs `echo hi`, rc_stat stats
 * /tmp, rc_interactive starts `cat`), GetSession and StopSession with their responses, and
 * ListSessions (chat "" for all). */
rc_end rc_run_command(raw_conn *c, const char *sid);
rc_end rc_stat(raw_conn *c, const char *sid);
rc_end rc_interactive(raw_conn *c, const char *sid);
rc_end rc_renew(raw_conn *c, const char *sid);
rc_end rc_stop(raw_conn *c, const char *sid);
rc_end rc_get(raw_conn *c, const char *sid);
rc_end rc_list(raw_conn *c, const char *chat);
/* How many sessions ListSessions lists, or -1. A listing comes from the node's copy of the
 * directory, which follows etcd by its watch: tests wait for what they put to show. */
long rc_list_count(raw_conn *c, const char *chat);

/* Puts sessions/<sid> (a 10-minute session of moat-sandbox:latest; end_reason for an ended one)
 * as its owner would; asserts (cmocka) that etcd took it. */
void rc_put_record(moat_etcd *etcd, const char *sid, const char *chat, const char *owner,
                   int64_t lease, const char *address, moat_record_state state,
                   const char *end_reason);
/* Puts n running records of owner (each of its own chat when chat is NULL), 100 to a
 * transaction; false when etcd refused one. No cmocka: benches use it too. */
bool rc_put_records(moat_etcd *etcd, size_t n, const char *chat, const char *owner, int64_t lease,
                    const char *address);
/* Takes chats/<chat> for a new creating record sid of owner under lease, as owner's create
 * would; asserts (cmocka) that it won. */
void rc_claim_chat(moat_etcd *etcd, const char *sid, const char *chat, const char *owner,
                   int64_t lease, const char *address);
/* Puts any value at sessions/<sid>. */
void rc_put_raw(moat_etcd *etcd, const char *sid, const char *value);
/* Puts value at key (under lease, 0 for none); asserts (cmocka) that etcd took it. */
void rc_put_key(moat_etcd *etcd, const char *key, const char *value, size_t value_len,
                int64_t lease);
/* Puts chats/<chat> naming sid on owner, under lease, as the owner's claim writes it. */
void rc_put_chat(moat_etcd *etcd, const char *chat, const char *sid, const char *owner,
                 int64_t lease);
/* A member as membership registers one: nodes/<id> with address under a lease of its own
 * (granted here, a minute long: only a revoke ends it within a test). The lease, or 0 when etcd
 * did not take it (no cmocka: callers may try again). */
int64_t rc_put_member(moat_etcd *etcd, const char *id, const char *address);
/* Deletes every session record (tests that list must not see another test's). */
void rc_clear_records(moat_etcd *etcd);
/* Revokes lease (a member's death, as its expiry would be); asserts (cmocka) that etcd did. */
void rc_revoke(moat_etcd *etcd, int64_t lease);

/* ---- nodes on the shared dockerd (test_cluster_place, test_cluster_pool) ------------------ */

/* Whether the shared dockerd answers at /var/run/docker.sock. */
bool rc_docker_present(void);
/* A case's first line in tests of nodes on the shared dockerd: skipped (cmocka) without etcd or
 * Docker. Needs moat_test.h. */
#define RC_REQUIRE_MEMBERS()                                                                       \
    do {                                                                                           \
        ETCD_REQUIRE();                                                                            \
        moat_require(rc_docker_present(), "no Docker engine at /var/run/docker.sock");             \
    } while (0)
/* Node i of a test's cluster on the shared dockerd, a member of cl's etcd: id <tag><pid>-n<i>
 * (into id), instance <tag><pid>n<i>, containers named <tag><pid>n<i>-, advertising
 * 127.0.0.1:<its port>, a lease TTL of ttl_s, the token, workspace quotas off, on state_dir when
 * not NULL (a killed node run again); extra flags after those (NULL-terminated, may be NULL).
 * false unless it starts and is listed in nodes/ within wait_s. */
bool rc_member_start(moatd_proc *p, char id[32], const etcd_cluster *cl, moat_etcd *etcd,
                     const char *tag, int i, int ttl_s, const char *token, const char *state_dir,
                     const char *const *extra, int wait_s);
/* Removes the containers of every node rc_member_start started with tag. */
void rc_members_remove_containers(const char *tag);
/* A group setup's: without Docker or etcd, 0 and nothing started (the cases skip); else the
 * test's etcd opened into cl and *etcd, the containers of tag's nodes removed and start(i, NULL)
 * run for each of count nodes. One that fails: -1 after rc_members_teardown, so that nothing is
 * left whether or not cmocka runs the group teardown after a failed setup (1.1.5 does). */
int rc_members_setup(etcd_cluster *cl, moat_etcd **etcd, const char *tag, int count,
                     bool (*start)(int i, const char *state_dir), moatd_proc *nodes,
                     char extra_dir[256], int wait_s);
/* A group teardown's: stops nodes[0..count) still running (SIGCONT first: a failed case may have
 * left one SIGSTOPped), removes their state dirs and extra_dir (a killed node's, run again; may
 * be ""), tag's containers, and the test's etcd. Every path it removed becomes "" and *etcd
 * NULL, so a second call does nothing more. -1 when a node did not exit cleanly. */
int rc_members_teardown(etcd_cluster *cl, moat_etcd **etcd, const char *tag, moatd_proc *nodes,
                        int count, char extra_dir[256]);
/* The index of the running node among nodes[0..count) whose address is addr
 * ("127.0.0.1:<port>"), or -1. */
int rc_member_of(const moatd_proc *nodes, int count, const char *addr);
/* Whether `echo hi` runs in session sid through the node on port. */
bool rc_runs_echo(int port, const char *token, const char *sid);
/* StopSession of sid through the node on port; asserts (cmocka) that it ends OK. */
void rc_stop_session(int port, const char *token, const char *sid);
/* sessions/<sid> read from etcd (asserts it answered): *found whether it is there. */
moat_session_record rc_record_of(moat_etcd *etcd, const char *sid, bool *found);
/* Whether chats/<chat> is there, into *out (may be NULL); asserts etcd answered. */
bool rc_chat_held(moat_etcd *etcd, const char *chat, moat_chat_record *out);

#endif
