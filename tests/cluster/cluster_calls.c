/* What the cluster tests share (cluster_calls.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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
    moat_etcd_result res;
    moat_status st;
    assert_int_equal(moat_etcd_put(etcd, (moat_slice){(const uint8_t *)key, kn},
                                   (moat_slice){(const uint8_t *)value, vn}, 0, &res, &st),
                     MOAT_CODE_OK);
    moat_etcd_result_free(&res);
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
    size_t kn = moat_session_record_key(sid, key, sizeof(key));
    moat_etcd_result res;
    moat_status st;
    assert_int_equal(moat_etcd_put(etcd, (moat_slice){(const uint8_t *)key, kn},
                                   moat_slice_str(value), 0, &res, &st),
                     MOAT_CODE_OK);
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
    if (!n->started)
        return;
    if (n->p.pid > 0)
        moatd_stop(&n->p);
    moatd_remove_dir(n->p.state_dir);
    n->started = false;
}

void rc_cluster_close(rc_node *nodes, int count, etcd_cluster *cl, moat_etcd *etcd)
{
    for (int i = 0; i < count; i++)
        rc_node_stop(&nodes[i]);
    etcd_cluster_close(cl, etcd);
}
