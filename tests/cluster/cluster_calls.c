/* What the cluster tests share (cluster_calls.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <signal.h>

#include <cmocka.h>

#include "cluster/directory.h"
#include "cluster_calls.h"
#include "moat/v1/exec.pb-c.h"
#include "moat/v1/files.pb-c.h"
#include "moat/v1/sandbox.pb-c.h"

static void rc_copy(moat_slice s, char *out, size_t cap)
{
    size_t n = s.len < cap - 1 ? s.len : cap - 1;
    if (n > 0)
        memcpy(out, s.data, n);
    out[n] = '\0';
}

rc_end rc_call(raw_conn *c, const char *method, const ProtobufCMessage *req,
               const ProtobufCMessageDescriptor *resp_desc)
{
    rc_end e = {-1, "", "", "", "", NULL};
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
            rc_copy(f.u.end.reason, e.reason, sizeof(e.reason));
            rc_copy(f.u.end.message, e.message, sizeof(e.message));
            for (size_t i = 0; i < f.u.end.detail_count; i++) {
                if (moat_slice_eq_str(f.u.end.details[i].key, "owner_address"))
                    rc_copy(f.u.end.details[i].value, e.owner_address, sizeof(e.owner_address));
                if (moat_slice_eq_str(f.u.end.details[i].key, "owner_node"))
                    rc_copy(f.u.end.details[i].value, e.owner_node, sizeof(e.owner_node));
            }
            return e;
        }
    }
}

void rc_free(rc_end *e)
{
    if (e->resp != NULL)
        protobuf_c_message_free_unpacked(e->resp, NULL);
    e->resp = NULL;
}

rc_end rc_run_command(raw_conn *c, const char *sid)
{
    Moat__V1__RunCommandRequest r = MOAT__V1__RUN_COMMAND_REQUEST__INIT;
    r.session_id = (char *)sid;
    r.command = (char *)"echo hi";
    return rc_call(c, "/moat.v1.Exec/RunCommand", &r.base, NULL);
}

rc_end rc_stat(raw_conn *c, const char *sid)
{
    Moat__V1__StatRequest r = MOAT__V1__STAT_REQUEST__INIT;
    r.session_id = (char *)sid;
    r.path = (char *)"/tmp";
    return rc_call(c, "/moat.v1.Files/Stat", &r.base, NULL);
}

rc_end rc_interactive(raw_conn *c, const char *sid)
{
    Moat__V1__InteractiveRequest r = MOAT__V1__INTERACTIVE_REQUEST__INIT;
    Moat__V1__InteractiveStart s = MOAT__V1__INTERACTIVE_START__INIT;
    s.session_id = (char *)sid;
    s.command = (char *)"cat";
    r.input_case = MOAT__V1__INTERACTIVE_REQUEST__INPUT_START;
    r.start = &s;
    return rc_call(c, "/moat.v1.Exec/Interactive", &r.base, NULL);
}

rc_end rc_renew(raw_conn *c, const char *sid)
{
    Moat__V1__RenewSessionRequest r = MOAT__V1__RENEW_SESSION_REQUEST__INIT;
    r.session_id = (char *)sid;
    return rc_call(c, "/moat.v1.Sandboxes/RenewSession", &r.base, NULL);
}

rc_end rc_stop(raw_conn *c, const char *sid)
{
    Moat__V1__StopSessionRequest r = MOAT__V1__STOP_SESSION_REQUEST__INIT;
    r.session_id = (char *)sid;
    return rc_call(c, "/moat.v1.Sandboxes/StopSession", &r.base,
                   &moat__v1__stop_session_response__descriptor);
}

rc_end rc_get(raw_conn *c, const char *sid)
{
    Moat__V1__GetSessionRequest r = MOAT__V1__GET_SESSION_REQUEST__INIT;
    r.session_id = (char *)sid;
    return rc_call(c, "/moat.v1.Sandboxes/GetSession", &r.base,
                   &moat__v1__sandbox_session__descriptor);
}

rc_end rc_list(raw_conn *c, const char *chat)
{
    Moat__V1__ListSessionsRequest r = MOAT__V1__LIST_SESSIONS_REQUEST__INIT;
    r.chat_id = (char *)chat;
    return rc_call(c, "/moat.v1.Sandboxes/ListSessions", &r.base,
                   &moat__v1__list_sessions_response__descriptor);
}

long rc_list_count(raw_conn *c, const char *chat)
{
    rc_end e = rc_list(c, chat);
    long n = e.code == MOAT_CODE_OK && e.resp != NULL
                 ? (long)((Moat__V1__ListSessionsResponse *)e.resp)->n_sessions
                 : -1;
    rc_free(&e);
    return n;
}

bool rc_is(const rc_end *e, int code, const char *reason)
{
    return e->code == code && strcmp(e->reason, reason) == 0;
}

/* Puts sessions/<sid> as its owner would. */
static void fill_record(moat_session_record *r, const char *sid, const char *chat,
                        const char *owner, int64_t lease, const char *address,
                        moat_record_state state, const char *end_reason)
{
    memset(r, 0, sizeof(*r));
    snprintf(r->session_id, sizeof(r->session_id), "%s", sid);
    snprintf(r->chat_id, sizeof(r->chat_id), "%s", chat);
    snprintf(r->node_id, sizeof(r->node_id), "%.63s", owner);
    r->node_lease = lease;
    snprintf(r->address, sizeof(r->address), "%s", address);
    r->state = state;
    snprintf(r->image, sizeof(r->image), "moat-sandbox:latest");
    r->created_at_ms = moat_time_now_ms();
    r->expires_at_ms = r->created_at_ms + 600000;
    if (state == MOAT_RECORD_ENDED) {
        r->ended_at_ms = r->created_at_ms + 1;
        snprintf(r->end_reason, sizeof(r->end_reason), "%s", end_reason);
    }
}

void rc_put_key(moat_etcd *etcd, const char *key, const char *value, size_t value_len,
                int64_t lease)
{
    moat_etcd_result res;
    moat_status st;
    assert_true(key[0] != '\0');
    assert_int_equal(moat_etcd_put(etcd, moat_slice_str(key),
                                   (moat_slice){(const uint8_t *)value, value_len}, lease, &res,
                                   &st),
                     MOAT_CODE_OK);
    moat_etcd_result_free(&res);
}

void rc_put_record(moat_etcd *etcd, const char *sid, const char *chat, const char *owner,
                   int64_t lease, const char *address, moat_record_state state,
                   const char *end_reason)
{
    moat_session_record r;
    fill_record(&r, sid, chat, owner, lease, address, state, end_reason);
    char key[MOAT_RECORD_KEY_MAX], value[MOAT_RECORD_VALUE_MAX];
    size_t kn = moat_session_record_key(sid, key, sizeof(key));
    size_t vn = moat_session_record_encode(&r, value, sizeof(value));
    assert_true(kn > 0 && vn > 0);
    rc_put_key(etcd, key, value, vn, 0);
}

void rc_put_chat(moat_etcd *etcd, const char *chat, const char *sid, const char *owner,
                 int64_t lease)
{
    moat_chat_record c;
    memset(&c, 0, sizeof(c));
    snprintf(c.chat_id, sizeof(c.chat_id), "%.36s", chat);
    snprintf(c.session_id, sizeof(c.session_id), "%.36s", sid);
    snprintf(c.node_id, sizeof(c.node_id), "%s", owner);
    char key[MOAT_RECORD_KEY_MAX], value[MOAT_RECORD_VALUE_MAX];
    size_t kn = moat_chat_record_key(chat, key, sizeof(key));
    size_t vn = moat_chat_record_encode(&c, value, sizeof(value));
    assert_true(kn > 0 && vn > 0);
    rc_put_key(etcd, key, value, vn, lease);
}

void rc_claim_chat(moat_etcd *etcd, const char *sid, const char *chat, const char *owner,
                   int64_t lease, const char *address)
{
    moat_session_record r;
    fill_record(&r, sid, chat, owner, lease, address, MOAT_RECORD_CREATING, "");
    moat_dir_claim_result res;
    moat_status st;
    assert_int_equal(moat_dir_claim(etcd, &r, lease, true, &res, &st), MOAT_CODE_OK);
    assert_true(res.won);
}

bool rc_put_records(moat_etcd *etcd, size_t n, const char *chat, const char *owner, int64_t lease,
                    const char *address)
{
    enum { BATCH = 100 };
    static char keys[BATCH][MOAT_RECORD_KEY_MAX], values[BATCH][MOAT_RECORD_VALUE_MAX];
    moat_etcd_op ops[BATCH];
    for (size_t done = 0; done < n;) {
        size_t k = 0;
        for (; k < BATCH && done + k < n; k++) {
            char sid[MOAT_UUID_STR_LEN], own_chat[MOAT_UUID_STR_LEN];
            moat_uuid_generate(sid);
            moat_uuid_generate(own_chat);
            moat_session_record r;
            fill_record(&r, sid, chat != NULL ? chat : own_chat, owner, lease, address,
                        MOAT_RECORD_RUNNING, "");
            size_t kn = moat_session_record_key(sid, keys[k], sizeof(keys[k]));
            size_t vn = moat_session_record_encode(&r, values[k], sizeof(values[k]));
            ops[k] = (moat_etcd_op){MOAT_ETCD_OP_PUT,
                                    {(const uint8_t *)keys[k], kn},
                                    {(const uint8_t *)values[k], vn},
                                    0,
                                    false};
        }
        moat_etcd_txn_spec txn = {NULL, 0, ops, k, NULL, 0};
        moat_etcd_result res;
        moat_status st;
        bool ok = moat_etcd_txn(etcd, &txn, &res, &st) == MOAT_CODE_OK;
        moat_etcd_result_free(&res);
        if (!ok)
            return false;
        done += k;
    }
    return true;
}

void rc_put_raw(moat_etcd *etcd, const char *sid, const char *value)
{
    char key[MOAT_RECORD_KEY_MAX];
    if (moat_session_record_key(sid, key, sizeof(key)) == 0)
        key[0] = '\0';
    rc_put_key(etcd, key, value, strlen(value), 0);
}

int64_t rc_put_member(moat_etcd *etcd, const char *id, const char *address)
{
    moat_etcd_result res;
    moat_status st;
    int64_t lease = 0;
    if (moat_etcd_lease_grant(etcd, 60, &res, &st) == MOAT_CODE_OK)
        lease = res.lease_id;
    moat_etcd_result_free(&res);
    moat_node n = {.load = {10, 0, 1 << 30, 0, 0}, .lease = lease};
    snprintf(n.id, sizeof(n.id), "%s", id);
    snprintf(n.address, sizeof(n.address), "%s", address);
    char key[sizeof(MOAT_NODES_PREFIX) + MOAT_NODE_ID_MAX], value[MOAT_NODE_VALUE_MAX];
    size_t kn = moat_node_key(id, key, sizeof(key));
    size_t vn = moat_node_encode(&n, value, sizeof(value));
    if (lease == 0 || kn == 0 || vn == 0)
        return 0;
    moat_code code = moat_etcd_put(etcd, (moat_slice){(const uint8_t *)key, kn},
                                   (moat_slice){(const uint8_t *)value, vn}, lease, &res, &st);
    moat_etcd_result_free(&res);
    return code == MOAT_CODE_OK ? lease : 0;
}

void rc_clear_records(moat_etcd *etcd)
{
    moat_etcd_result res;
    moat_status st;
    moat_etcd_delete(etcd, moat_slice_str(MOAT_SESSIONS_PREFIX), true, &res, &st);
    moat_etcd_result_free(&res);
}

void rc_revoke(moat_etcd *etcd, int64_t lease)
{
    moat_etcd_result res;
    moat_status st;
    assert_int_equal(moat_etcd_lease_revoke(etcd, lease, &res, &st), MOAT_CODE_OK);
    moat_etcd_result_free(&res);
}

bool rc_node_start(rc_node *n, const etcd_cluster *cl, const char *tag, int i, bool docker,
                   const char *const *extra, bool connect, const char *token)
{
    char eps[300], id_arg[64], inst[64], prefix[80];
    snprintf(n->id, sizeof(n->id), "%.12s%d-n%d", tag, (int)getpid(), i + 1);
    snprintf(eps, sizeof(eps), "--cluster_etcd_endpoints=%s,%s,%s", cl->urls[0], cl->urls[1],
             cl->urls[2]);
    snprintf(id_arg, sizeof(id_arg), "--cluster_node_id=%s", n->id);
    snprintf(inst, sizeof(inst), "--instance=%s", n->id);
    snprintf(prefix, sizeof(prefix), "--container_name_prefix=moat-%s-", n->id);
    /* Records carry the address clients dial, which the tests write into them themselves. */
    const char *args[40] = {
        eps,  id_arg, "--cluster_advertise=127.0.0.1:1", "--cluster_lease_ttl_seconds=2",
        inst, prefix};
    size_t k = 6;
    for (size_t e = 0; extra != NULL && extra[e] != NULL && k < 39; e++)
        args[k++] = extra[e];
    args[k] = NULL;
    if (!moatd_start(&n->p, docker, args))
        return false;
    n->started = true;
    if (connect)
        n->conn = raw_connect_ready(n->p.port, token);
    return !connect || n->conn != NULL;
}

void rc_node_stop(rc_node *n)
{
    if (n->conn != NULL)
        raw_close(n->conn);
    n->conn = NULL;
    if (n->started && n->p.pid > 0)
        moatd_stop(&n->p);
    /* A moatd that did not start leaves its state dir (its log) too. */
    moatd_remove_dir(n->p.state_dir);
    n->p.state_dir[0] = '\0';
    n->started = false;
}

void rc_cluster_close(rc_node *nodes, int count, etcd_cluster *cl, moat_etcd **etcd)
{
    for (int i = 0; i < count; i++)
        rc_node_stop(&nodes[i]);
    etcd_cluster_close(cl, etcd);
}

bool rc_docker_present(void)
{
    return access("/var/run/docker.sock", F_OK) == 0 &&
           system("/usr/bin/docker info >/dev/null 2>&1") == 0;
}

bool rc_member_start(moatd_proc *p, char id[32], const etcd_cluster *cl, moat_etcd *etcd,
                     const char *tag, int i, int ttl_s, const char *token, const char *state_dir,
                     const char *const *extra, int wait_s)
{
    char a[7][300];
    snprintf(id, 32, "%.12s%d-n%d", tag, (int)getpid(), i);
    snprintf(a[0], sizeof(a[0]), "--cluster_etcd_endpoints=%s,%s,%s", cl->urls[0], cl->urls[1],
             cl->urls[2]);
    snprintf(a[1], sizeof(a[1]), "--cluster_node_id=%s", id);
    snprintf(a[2], sizeof(a[2]), "--instance=%.12s%dn%d", tag, (int)getpid(), i);
    snprintf(a[3], sizeof(a[3]), "--container_name_prefix=%.12s%dn%d-", tag, (int)getpid(), i);
    snprintf(a[4], sizeof(a[4]), "--cluster_lease_ttl_seconds=%d", ttl_s);
    snprintf(a[5], sizeof(a[5]), "--token=%s", token);
    snprintf(a[6], sizeof(a[6]), "--state_dir=%s", state_dir != NULL ? state_dir : "");
    const char *args[24] = {a[0],
                            a[1],
                            a[2],
                            a[3],
                            "--cluster_advertise=127.0.0.1:%PORT%",
                            a[4],
                            a[5],
                            "--workspace_quota=false"};
    size_t k = 8;
    if (state_dir != NULL)
        args[k++] = a[6];
    for (size_t e = 0; extra != NULL && extra[e] != NULL && k < 23; e++)
        args[k++] = extra[e];
    args[k] = NULL;
    if (!moatd_start(p, true, args))
        return false;
    for (int tick = 0; tick < wait_s * 20 && !etcd_cluster_lists_node(etcd, id, NULL); tick++)
        etcd_cluster_sleep_ms(50);
    return etcd_cluster_lists_node(etcd, id, NULL);
}

void rc_members_remove_containers(const char *tag)
{
    char prefix[64];
    snprintf(prefix, sizeof(prefix), "%.12s%dn", tag, (int)getpid());
    docker_remove_prefixed(prefix);
}

int rc_members_teardown(etcd_cluster *cl, moat_etcd **etcd, const char *tag, moatd_proc *nodes,
                        int count, char extra_dir[256])
{
    int rc = 0;
    for (int i = 0; i < count; i++) {
        if (nodes[i].pid != 0)
            kill(nodes[i].pid, SIGCONT);
        if (nodes[i].pid != 0 && moatd_stop(&nodes[i]) != 0)
            rc = -1;
        if (nodes[i].state_dir[0] != '\0')
            moatd_remove_dir(nodes[i].state_dir);
        nodes[i].state_dir[0] = '\0';
    }
    if (extra_dir[0] != '\0')
        moatd_remove_dir(extra_dir);
    extra_dir[0] = '\0';
    rc_members_remove_containers(tag);
    etcd_cluster_close(cl, etcd);
    return rc;
}

int rc_members_setup(etcd_cluster *cl, moat_etcd **etcd, const char *tag, int count,
                     bool (*start)(int i, const char *state_dir), moatd_proc *nodes,
                     char extra_dir[256], int wait_s)
{
    if (!rc_docker_present() || !etcd_cluster_available())
        return 0;
    if (etcd_cluster_open(cl, NULL, etcd, 1000, wait_s) != 0)
        return -1;
    rc_members_remove_containers(tag);
    for (int i = 0; i < count; i++) {
        if (!start(i, NULL)) {
            rc_members_teardown(cl, etcd, tag, nodes, count, extra_dir);
            return -1;
        }
    }
    return 0;
}

int rc_member_of(const moatd_proc *nodes, int count, const char *addr)
{
    for (int i = 0; i < count; i++) {
        char want[64];
        snprintf(want, sizeof(want), "127.0.0.1:%d", nodes[i].port);
        if (nodes[i].pid != 0 && strcmp(addr, want) == 0)
            return i;
    }
    return -1;
}

bool rc_runs_echo(int port, const char *token, const char *sid)
{
    raw_conn *c = raw_connect_ready(port, token);
    if (c == NULL)
        return false;
    int ok = raw_run_many(c, sid, "echo hi", 1, 1, NULL, NULL);
    raw_close(c);
    return ok == 1;
}

void rc_stop_session(int port, const char *token, const char *sid)
{
    raw_conn *c = raw_connect_ready(port, token);
    assert_non_null(c);
    Moat__V1__StopSessionRequest req = MOAT__V1__STOP_SESSION_REQUEST__INIT;
    req.session_id = (char *)sid;
    assert_int_equal(raw_unary(c, "/moat.v1.Sandboxes/StopSession", &req.base, NULL, NULL, NULL, 0),
                     0);
    raw_close(c);
}

moat_session_record rc_record_of(moat_etcd *etcd, const char *sid, bool *found)
{
    moat_session_record rec;
    memset(&rec, 0, sizeof(rec));
    int64_t rev;
    moat_status st;
    assert_int_equal(moat_dir_record(etcd, sid, found, &rec, &rev, &st), MOAT_CODE_OK);
    return rec;
}

bool rc_chat_held(moat_etcd *etcd, const char *chat, moat_chat_record *out)
{
    bool found = false;
    int64_t rev;
    moat_status st;
    moat_chat_record tmp;
    assert_int_equal(moat_dir_chat(etcd, chat, &found, out != NULL ? out : &tmp, &rev, &st),
                     MOAT_CODE_OK);
    return found;
}
