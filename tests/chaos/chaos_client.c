#include "chaos_client.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "moat/v1/exec.pb-c.h"
#include "moat/v1/health.pb-c.h"
#include "moat/v1/sandbox.pb-c.h"

long long chaos_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void chaos_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

int chaos_create(raw_conn *c, const char *chat, char sid[MOAT_UUID_STR_LEN], char *reason,
                 size_t reason_len)
{
    Moat__V1__CreateSessionRequest req = MOAT__V1__CREATE_SESSION_REQUEST__INIT;
    req.chat_id = (char *)chat;
    ProtobufCMessage *resp = NULL;
    int code = raw_unary(c, "/moat.v1.Sandboxes/CreateSession", &req.base,
                         &moat__v1__sandbox_session__descriptor, &resp, reason, reason_len);
    if (code == MOAT_CODE_OK && resp != NULL)
        snprintf(sid, MOAT_UUID_STR_LEN, "%s", ((Moat__V1__SandboxSession *)resp)->session_id);
    if (resp != NULL)
        protobuf_c_message_free_unpacked(resp, NULL);
    return code;
}

int chaos_run(raw_conn *c, const char *sid, const char *cmd, char *out, size_t cap, int *exit_code)
{
    Moat__V1__RunCommandRequest req = MOAT__V1__RUN_COMMAND_REQUEST__INIT;
    req.session_id = (char *)sid;
    req.command = (char *)cmd;
    uint32_t id = raw_call(c, "/moat.v1.Exec/RunCommand", 0, &req.base);
    size_t len = 0;
    out[0] = '\0';
    *exit_code = -1;
    for (;;) {
        moat_frame f;
        if (id == 0 || raw_recv_stream(c, id, &f, 60000) != 1)
            return -1;
        if (f.kind == MOAT_FRAME_END)
            return (int)f.u.end.code;
        if (f.kind != MOAT_FRAME_MESSAGE)
            continue;
        /* Give back the window the message used, as a client that keeps reading does. */
        moat_frame w = {0};
        w.stream_id = id;
        w.kind = MOAT_FRAME_WINDOW_UPDATE;
        w.u.window_update.increment = (uint32_t)f.u.message.payload.len;
        if (w.u.window_update.increment > 0)
            raw_send(c, &w);
        Moat__V1__ExecEvent *ev =
            moat__v1__exec_event__unpack(NULL, f.u.message.payload.len, f.u.message.payload.data);
        if (ev == NULL)
            return -1;
        if (ev->kind_case == MOAT__V1__EXEC_EVENT__KIND_OUTPUT) {
            size_t n = ev->output->data.len;
            if (n > cap - 1 - len)
                n = cap - 1 - len;
            memcpy(out + len, ev->output->data.data, n);
            len += n;
            out[len] = '\0';
        } else if (ev->kind_case == MOAT__V1__EXEC_EVENT__KIND_EXIT &&
                   ev->exit->exit_code != NULL &&
                   ev->exit->exit_code->value_case == MOAT__V1__EXIT_CODE__VALUE_CODE) {
            *exit_code = ev->exit->exit_code->code;
        }
        moat__v1__exec_event__free_unpacked(ev, NULL);
    }
}

int chaos_health(raw_conn *c, bool *serving, bool *reachable)
{
    Moat__V1__HealthCheckRequest req = MOAT__V1__HEALTH_CHECK_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    int code = raw_unary(c, "/moat.v1.Health/Check", &req.base,
                         &moat__v1__health_check_response__descriptor, &resp, NULL, 0);
    *serving = *reachable = false;
    if (code == MOAT_CODE_OK && resp != NULL) {
        Moat__V1__HealthCheckResponse *h = (Moat__V1__HealthCheckResponse *)resp;
        *serving = h->status == MOAT__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
        *reachable = h->docker_reachable;
    }
    if (resp != NULL)
        protobuf_c_message_free_unpacked(resp, NULL);
    return code;
}

int chaos_stop(raw_conn *c, const char *sid)
{
    Moat__V1__StopSessionRequest req = MOAT__V1__STOP_SESSION_REQUEST__INIT;
    req.session_id = (char *)sid;
    return raw_unary(c, "/moat.v1.Sandboxes/StopSession", &req.base, NULL, NULL, NULL, 0);
}
