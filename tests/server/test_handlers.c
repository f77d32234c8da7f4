/* moatd's handlers in-process, without Docker: a server handle on its own thread, a fake runtime
 * behind its operations table (sessions in memory, each pointing at a fake execd's socket), and
 * a raw-frame client over a real loopback TCP connection. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "moat_test.h"

#include "fake_execd.h"
#include "harness.h"
#include "moat/v1/exec.pb-c.h"
#include "moat/v1/files.pb-c.h"
#include "moat/v1/health.pb-c.h"
#include "moat/v1/sandbox.pb-c.h"
#include "server/server.h"

/* ------------------------------------------------------------ fake runtime */

#define FAKE_MAX_SESSIONS 16

typedef struct fake_runtime {
    pthread_mutex_t mu;
    moat_session sessions[FAKE_MAX_SESSIONS];
    size_t count;
    char execd_socket[MOAT_RUNTIME_PATH_MAX];
    /* A warm pool of the default image: stats as Health and the budget see them; a claim takes
     * a ready sandbox, or fails with claim_fails (the server then creates cold). */
    moat_pool_stats pool;
    moat_code claim_fails;
    unsigned claims;
} fake_runtime;

/* The one the test's server opens; set before moat_server_init. */
static fake_runtime fake_rt;

static void *rt_open(const moat_server_config *cfg, const moat_runtime_metrics *hooks,
                     moat_status *st)
{
    (void)cfg;
    (void)hooks;
    (void)st;
    return &fake_rt;
}

static void rt_close(void *rt)
{
    (void)rt;
}

static moat_session *rt_find(fake_runtime *f, const char *session_id)
{
    for (size_t i = 0; i < f->count; i++) {
        if (strcmp(f->sessions[i].session_id, session_id) == 0)
            return &f->sessions[i];
    }
    return NULL;
}

/* Under f->mu: a new running session in a container named kind-<session id>. */
static moat_code add_session(fake_runtime *f, const char *kind, const char *session_id,
                             const char *chat_id, int64_t created_at_ms, int64_t expires_at_ms,
                             const moat_session_options *opts, moat_session *out, moat_status *st)
{
    if (f->count == FAKE_MAX_SESSIONS) {
        moat_status_set(st, MOAT_CODE_RESOURCE_EXHAUSTED, "sandbox_start_failed", "fake is full");
        return st->code;
    }
    moat_session *s = &f->sessions[f->count++];
    memset(s, 0, sizeof(*s));
    snprintf(s->session_id, sizeof(s->session_id), "%s", session_id);
    snprintf(s->chat_id, sizeof(s->chat_id), "%s", chat_id);
    snprintf(s->container_id, sizeof(s->container_id), "%s-%s", kind, session_id);
    snprintf(s->image, sizeof(s->image), "%s", opts->image != NULL ? opts->image : "fake:latest");
    snprintf(s->execd_socket, sizeof(s->execd_socket), "%s", f->execd_socket);
    s->state = MOAT_SESSION_RUNNING;
    s->created_at_ms = created_at_ms;
    s->expires_at_ms = expires_at_ms;
    s->force_new = opts->force_new;
    *out = *s;
    return MOAT_CODE_OK;
}

static moat_code rt_create(void *rt, const char *session_id, const char *chat_id,
                           int64_t created_at_ms, int64_t expires_at_ms,
                           const moat_session_options *opts, moat_session *out, moat_status *st)
{
    fake_runtime *f = rt;
    pthread_mutex_lock(&f->mu);
    moat_code code =
        add_session(f, "fake", session_id, chat_id, created_at_ms, expires_at_ms, opts, out, st);
    pthread_mutex_unlock(&f->mu);
    return code;
}

/* Claims only for the default image, as the real pool does; the claimed sandbox's container is
 * named pool-<session id>. */
static moat_code rt_claim(void *rt, const char *chat_id, int64_t created_at_ms,
                          int64_t expires_at_ms, const moat_session_options *opts,
                          moat_session *out, moat_status *st)
{
    fake_runtime *f = rt;
    pthread_mutex_lock(&f->mu);
    moat_code code = f->claim_fails;
    if (code != MOAT_CODE_OK) {
        moat_status_set(st, code, "sandbox_start_failed", "the fake's claim fails");
    } else if (f->pool.ready == 0 || opts->force_new || opts->image != NULL) {
        code = MOAT_CODE_NOT_FOUND;
        moat_status_set(st, code, "pool_empty", "no pool sandbox ready");
    } else {
        char session_id[MOAT_UUID_STR_LEN];
        moat_uuid_generate(session_id);
        code = add_session(f, "pool", session_id, chat_id, created_at_ms, expires_at_ms, opts, out,
                           st);
        f->pool.ready--;
        f->claims++;
    }
    pthread_mutex_unlock(&f->mu);
    return code;
}

static void rt_pool_stats(void *rt, moat_pool_stats *out)
{
    fake_runtime *f = rt;
    pthread_mutex_lock(&f->mu);
    *out = f->pool;
    pthread_mutex_unlock(&f->mu);
}

static void fake_pool_set(uint32_t size, uint32_t ready, uint32_t starting,
                          uint32_t failures_in_row, moat_code claim_fails)
{
    pthread_mutex_lock(&fake_rt.mu);
    fake_rt.pool = (moat_pool_stats){
        .size = size, .ready = ready, .starting = starting, .failures_in_row = failures_in_row};
    fake_rt.claim_fails = claim_fails;
    pthread_mutex_unlock(&fake_rt.mu);
}

static moat_code rt_get(void *rt, const char *session_id, moat_session *out, moat_status *st)
{
    fake_runtime *f = rt;
    pthread_mutex_lock(&f->mu);
    moat_session *s = rt_find(f, session_id);
    if (s != NULL)
        *out = *s;
    pthread_mutex_unlock(&f->mu);
    if (s == NULL) {
        moat_status_set(st, MOAT_CODE_NOT_FOUND, "session_not_found", "no session %s", session_id);
        return st->code;
    }
    return MOAT_CODE_OK;
}

static moat_code rt_list_active(void *rt, moat_session **out, size_t *count, moat_status *st)
{
    (void)st;
    fake_runtime *f = rt;
    pthread_mutex_lock(&f->mu);
    *out = NULL;
    *count = 0;
    if (f->count > 0)
        *out = malloc(f->count * sizeof(**out));
    for (size_t i = 0; *out != NULL && i < f->count; i++) {
        if (f->sessions[i].state == MOAT_SESSION_RUNNING)
            (*out)[(*count)++] = f->sessions[i];
    }
    pthread_mutex_unlock(&f->mu);
    return MOAT_CODE_OK;
}

static moat_code rt_renew(void *rt, const char *session_id, int64_t new_expires_at_ms,
                          moat_session *out, moat_status *st)
{
    fake_runtime *f = rt;
    pthread_mutex_lock(&f->mu);
    moat_session *s = rt_find(f, session_id);
    if (s != NULL && s->state == MOAT_SESSION_RUNNING) {
        s->expires_at_ms = new_expires_at_ms;
        s->renewed = true;
        *out = *s;
    }
    pthread_mutex_unlock(&f->mu);
    if (s == NULL || out->session_id[0] == '\0') {
        moat_status_set(st, MOAT_CODE_NOT_FOUND, "session_not_found", "no running session %s",
                        session_id);
        return st->code;
    }
    return MOAT_CODE_OK;
}

static moat_code rt_stop(void *rt, const char *session_id, moat_status *st)
{
    (void)st;
    fake_runtime *f = rt;
    pthread_mutex_lock(&f->mu);
    moat_session *s = rt_find(f, session_id);
    if (s != NULL) {
        s->state = MOAT_SESSION_STOPPED;
        snprintf(s->end_reason, sizeof(s->end_reason), "stopped");
    }
    pthread_mutex_unlock(&f->mu);
    return MOAT_CODE_OK;
}

static moat_code rt_reconcile(void *rt, int64_t now_ms, moat_reconcile_report *report,
                              moat_status *st)
{
    (void)rt;
    (void)now_ms;
    (void)st;
    memset(report, 0, sizeof(*report));
    return MOAT_CODE_OK;
}

static moat_code rt_no_thread(void *rt, moat_status *st)
{
    (void)rt;
    (void)st;
    return MOAT_CODE_OK;
}

static moat_code rt_ping(void *rt, long timeout_ms, moat_status *st)
{
    (void)rt;
    (void)timeout_ms;
    (void)st;
    return MOAT_CODE_OK;
}

/* The fake allows two images, as allowed_images would. */
static moat_code rt_check_image(void *rt, const char *image, moat_status *st)
{
    (void)rt;
    if (strcmp(image, "fake:latest") == 0 || strcmp(image, "other:1") == 0)
        return MOAT_CODE_OK;
    moat_status_set(st, MOAT_CODE_INVALID_ARGUMENT, "image_not_allowed", "not allowed: %s", image);
    return st->code;
}

static const moat_server_runtime_ops fake_ops = {
    .open = rt_open,
    .close = rt_close,
    .create = rt_create,
    .get = rt_get,
    .list_active = rt_list_active,
    .renew = rt_renew,
    .stop = rt_stop,
    .reconcile = rt_reconcile,
    .start_reaper = rt_no_thread,
    .start_watcher = rt_no_thread,
    .ping = rt_ping,
    .check_image = rt_check_image,
    .claim = rt_claim,
    .start_pool = rt_no_thread,
    .pool_stats = rt_pool_stats,
};

/* ------------------------------------------------------------ fake execd */

static void execd_handler(fake_execd *f, int fd, const fake_req *req)
{
    (void)f;
    if (strcmp(req->path, "/files/info?path=%2Fetc%2Fhostname") == 0) {
        static const char b[] =
            "{\"/etc/hostname\":{\"path\":\"/etc/hostname\",\"type\":\"file\",\"size\":12,"
            "\"modified_at\":\"2026-01-02T03:04:05Z\",\"owner\":\"root\",\"group\":\"root\","
            "\"mode\":644}}";
        fake_reply(fd, 200, NULL, b, sizeof(b) - 1);
        return;
    }
    static const char nf[] = "{\"code\":\"NOT_FOUND\",\"message\":\"no such path\"}";
    fake_reply(fd, 404, NULL, nf, sizeof(nf) - 1);
}

/* ------------------------------------------------------------ the server */

typedef struct fixture {
    moat_server *server;
    pthread_t thread;
    fake_execd execd;
    int port;
    char state_dir[64];
} fixture;

static fixture F;

static void *serve(void *arg)
{
    moat_server_run(arg);
    return NULL;
}

static int setup(void **state)
{
    (void)state;
    pthread_mutex_init(&fake_rt.mu, NULL);
    fake_start(&F.execd, execd_handler, NULL, false);
    snprintf(fake_rt.execd_socket, sizeof(fake_rt.execd_socket), "%s", F.execd.sock_path);
    snprintf(F.state_dir, sizeof(F.state_dir), "/tmp/moat-srvtest-XXXXXX");
    if (mkdtemp(F.state_dir) == NULL)
        return -1;
    F.port = free_port();
    moat_server_config cfg;
    moat_server_config_defaults(&cfg);
    char listen[64], err[256];
    snprintf(listen, sizeof(listen), "127.0.0.1:%d", F.port);
    if (moat_server_config_set(&cfg, "listen", listen, err, sizeof(err)) != MOAT_OK ||
        moat_server_config_set(&cfg, "state_dir", F.state_dir, err, sizeof(err)) != MOAT_OK ||
        /* Small enough for test_create_claims_from_pool to reach with pool sandboxes. */
        moat_server_config_set(&cfg, "max_sessions", "4", err, sizeof(err)) != MOAT_OK ||
        moat_server_config_finish(&cfg, NULL, err, sizeof(err)) != MOAT_OK) {
        fprintf(stderr, "config: %s\n", err);
        moat_server_config_free(&cfg);
        return -1;
    }
    if (moat_server_init(&F.server, &cfg, &fake_ops) != MOAT_OK)
        return -1;
    if (moat_server_listen(F.server) != MOAT_OK)
        return -1;
    return pthread_create(&F.thread, NULL, serve, F.server) == 0 ? 0 : -1;
}

static void on_closed(moat_server *s, void *ud)
{
    (void)s;
    *(bool *)ud = true;
}

static bool closed;

static int teardown(void **state)
{
    (void)state;
    moat_server_close(F.server, on_closed, &closed);
    pthread_join(F.thread, NULL);
    moat_server_free(F.server);
    fake_stop(&F.execd);
    moatd_remove_dir(F.state_dir);
    pthread_mutex_destroy(&fake_rt.mu);
    return closed ? 0 : -1;
}

static raw_conn *connected(void)
{
    raw_conn *c = raw_connect_ready(F.port, NULL);
    assert_non_null(c);
    return c;
}

/* ------------------------------------------------------------ tests */

#define CHAT           "1B4E28BA-2FA1-11D2-883F-0016D3CCA427"
#define CHAT_CANONICAL "1b4e28ba-2fa1-11d2-883f-0016d3cca427"

/* A unary call that must end OK; its response (free it). */
static ProtobufCMessage *call_ok(raw_conn *c, const char *method, const ProtobufCMessage *req,
                                 const ProtobufCMessageDescriptor *resp_desc)
{
    ProtobufCMessage *resp = NULL;
    assert_int_equal(raw_unary(c, method, req, resp_desc, &resp, NULL, 0), MOAT_CODE_OK);
    assert_non_null(resp);
    return resp;
}

static Moat__V1__SandboxSession *create_session_of(raw_conn *c, const char *chat)
{
    Moat__V1__CreateSessionRequest req = MOAT__V1__CREATE_SESSION_REQUEST__INIT;
    req.chat_id = (char *)chat;
    return (Moat__V1__SandboxSession *)call_ok(c, "/moat.v1.Sandboxes/CreateSession", &req.base,
                                               &moat__v1__sandbox_session__descriptor);
}

static Moat__V1__SandboxSession *create_session(raw_conn *c)
{
    return create_session_of(c, CHAT);
}

static size_t list_count(raw_conn *c)
{
    Moat__V1__ListSessionsRequest req = MOAT__V1__LIST_SESSIONS_REQUEST__INIT;
    ProtobufCMessage *resp = call_ok(c, "/moat.v1.Sandboxes/ListSessions", &req.base,
                                     &moat__v1__list_sessions_response__descriptor);
    size_t n = ((Moat__V1__ListSessionsResponse *)resp)->n_sessions;
    protobuf_c_message_free_unpacked(resp, NULL);
    return n;
}

static Moat__V1__SandboxSession *get_session(raw_conn *c, const char *session_id)
{
    Moat__V1__GetSessionRequest req = MOAT__V1__GET_SESSION_REQUEST__INIT;
    req.session_id = (char *)session_id;
    return (Moat__V1__SandboxSession *)call_ok(c, "/moat.v1.Sandboxes/GetSession", &req.base,
                                               &moat__v1__sandbox_session__descriptor);
}

static bool stop_session(raw_conn *c, const char *session_id)
{
    Moat__V1__StopSessionRequest req = MOAT__V1__STOP_SESSION_REQUEST__INIT;
    req.session_id = (char *)session_id;
    ProtobufCMessage *resp = call_ok(c, "/moat.v1.Sandboxes/StopSession", &req.base,
                                     &moat__v1__stop_session_response__descriptor);
    bool stopped = ((Moat__V1__StopSessionResponse *)resp)->stopped;
    protobuf_c_message_free_unpacked(resp, NULL);
    return stopped;
}

/* RunCommand to its End, skipping any event; the End's code, its reason copied out. */
static int run_command_end(raw_conn *c, const char *session_id, const char *command,
                           char reason[64])
{
    Moat__V1__RunCommandRequest req = MOAT__V1__RUN_COMMAND_REQUEST__INIT;
    req.session_id = (char *)session_id;
    req.command = (char *)command;
    uint32_t id = raw_call(c, "/moat.v1.Exec/RunCommand", 0, &req.base);
    moat_frame f;
    while (raw_recv_stream(c, id, &f, 10000) == 1) {
        if (f.kind != MOAT_FRAME_END)
            continue;
        size_t n = f.u.end.reason.len < 63 ? f.u.end.reason.len : 63;
        memcpy(reason, f.u.end.reason.data, n);
        reason[n] = '\0';
        return (int)f.u.end.code;
    }
    return -1;
}

static void test_session_lifecycle(void **state)
{
    (void)state;
    raw_conn *c = connected();
    size_t before = list_count(c);
    Moat__V1__SandboxSession *made = create_session(c);
    assert_string_equal(made->chat_id, CHAT_CANONICAL);
    assert_int_equal(made->status, MOAT__V1__SESSION_STATUS__RUNNING);
    /* A second create for the chat finds its live session. */
    Moat__V1__SandboxSession *again = create_session(c);
    assert_string_equal(again->session_id, made->session_id);
    protobuf_c_message_free_unpacked(&again->base, NULL);
    Moat__V1__SandboxSession *got = get_session(c, made->session_id);
    assert_string_equal(got->session_id, made->session_id);
    assert_int_equal(got->status, MOAT__V1__SESSION_STATUS__RUNNING);
    protobuf_c_message_free_unpacked(&got->base, NULL);
    assert_int_equal(list_count(c), before + 1);
    assert_true(stop_session(c, made->session_id));
    assert_false(stop_session(c, made->session_id));
    got = get_session(c, made->session_id);
    assert_int_equal(got->status, MOAT__V1__SESSION_STATUS__STOPPED);
    protobuf_c_message_free_unpacked(&got->base, NULL);
    assert_int_equal(list_count(c), before);
    protobuf_c_message_free_unpacked(&made->base, NULL);
    raw_close(c);
}

/* CreateSession with an image: one not allowed (or too long for any) is refused even though
 * the chat has a session; the chat's session is reused only if it runs the named image. */
static void test_create_images(void **state)
{
    (void)state;
    raw_conn *c = connected();
    Moat__V1__SandboxSession *made = create_session(c);
    Moat__V1__CreateSessionRequest req = MOAT__V1__CREATE_SESSION_REQUEST__INIT;
    req.chat_id = (char *)CHAT;
    char reason[64];
    char long_name[300];
    memset(long_name, 'a', sizeof(long_name) - 1);
    long_name[sizeof(long_name) - 1] = '\0';
    const char *refused[] = {"evil:latest", long_name};
    for (size_t i = 0; i < 2; i++) {
        req.image = (char *)refused[i];
        assert_int_equal(raw_unary(c, "/moat.v1.Sandboxes/CreateSession", &req.base, NULL, NULL,
                                   reason, sizeof(reason)),
                         MOAT_CODE_INVALID_ARGUMENT);
        assert_string_equal(reason, "image_not_allowed");
    }
    req.image = (char *)"other:1";
    assert_int_equal(raw_unary(c, "/moat.v1.Sandboxes/CreateSession", &req.base, NULL, NULL, reason,
                               sizeof(reason)),
                     MOAT_CODE_FAILED_PRECONDITION);
    assert_string_equal(reason, "session_image_differs");
    req.image = (char *)"fake:latest";
    ProtobufCMessage *same = call_ok(c, "/moat.v1.Sandboxes/CreateSession", &req.base,
                                     &moat__v1__sandbox_session__descriptor);
    assert_string_equal(((Moat__V1__SandboxSession *)same)->session_id, made->session_id);
    protobuf_c_message_free_unpacked(same, NULL);
    assert_true(stop_session(c, made->session_id));
    protobuf_c_message_free_unpacked(&made->base, NULL);
    raw_close(c);
}

static void test_exec_errors(void **state)
{
    (void)state;
    raw_conn *c = connected();
    char reason[64];
    assert_int_equal(run_command_end(c, "123e4567-e89b-12d3-a456-426614174000", "true", reason),
                     MOAT_CODE_NOT_FOUND);
    assert_string_equal(reason, "session_not_found");
    assert_int_equal(run_command_end(c, "not-a-uuid", "true", reason), MOAT_CODE_INVALID_ARGUMENT);
    assert_string_equal(reason, "invalid_session_id");
    Moat__V1__SandboxSession *made = create_session(c);
    assert_int_equal(run_command_end(c, made->session_id, "   ", reason),
                     MOAT_CODE_INVALID_ARGUMENT);
    assert_string_equal(reason, "blank_command");
    assert_true(stop_session(c, made->session_id));
    assert_int_equal(run_command_end(c, made->session_id, "true", reason),
                     MOAT_CODE_FAILED_PRECONDITION);
    assert_string_equal(reason, "session_not_running");
    protobuf_c_message_free_unpacked(&made->base, NULL);
    raw_close(c);
}

static void test_files_stat(void **state)
{
    (void)state;
    raw_conn *c = connected();
    Moat__V1__SandboxSession *made = create_session(c);
    Moat__V1__StatRequest req = MOAT__V1__STAT_REQUEST__INIT;
    req.session_id = made->session_id;
    req.path = (char *)"/etc/hostname";
    ProtobufCMessage *resp =
        call_ok(c, "/moat.v1.Files/Stat", &req.base, &moat__v1__file_info__descriptor);
    Moat__V1__FileInfo *fi = (Moat__V1__FileInfo *)resp;
    assert_string_equal(fi->path, "/etc/hostname");
    assert_int_equal(fi->size, 12);
    assert_int_equal(fi->mode, 0644);
    assert_int_equal(fi->type, MOAT__V1__FILE_TYPE__FILE);
    protobuf_c_message_free_unpacked(resp, NULL);
    char reason[64] = "";
    req.path = (char *)"/missing";
    assert_int_equal(
        raw_unary(c, "/moat.v1.Files/Stat", &req.base, NULL, NULL, reason, sizeof(reason)),
        MOAT_CODE_NOT_FOUND);
    assert_true(stop_session(c, made->session_id));
    protobuf_c_message_free_unpacked(&made->base, NULL);
    raw_close(c);
}

static Moat__V1__HealthCheckResponse *health(raw_conn *c)
{
    Moat__V1__HealthCheckRequest req = MOAT__V1__HEALTH_CHECK_REQUEST__INIT;
    return (Moat__V1__HealthCheckResponse *)call_ok(c, "/moat.v1.Health/Check", &req.base,
                                                    &moat__v1__health_check_response__descriptor);
}

/* The session's container was claimed from the fake's pool (pool-…), not made cold (fake-…). */
static bool from_pool(const Moat__V1__SandboxSession *s)
{
    return strncmp(s->container_id, "pool-", 5) == 0;
}

static void test_create_claims_from_pool(void **state)
{
    (void)state;
    raw_conn *c = connected();
    fake_pool_set(3, 2, 1, 0, MOAT_CODE_OK);
    Moat__V1__HealthCheckResponse *h = health(c);
    assert_int_equal(h->pool_size, 3);
    assert_int_equal(h->pool_ready, 2);
    assert_false(h->pool_failing);
    protobuf_c_message_free_unpacked(&h->base, NULL);

    /* A new chat gets a pool sandbox; its chat's next create finds that session. */
    Moat__V1__SandboxSession *a = create_session_of(c, "00000000-0000-4000-8000-00000000000a");
    assert_true(from_pool(a));
    Moat__V1__SandboxSession *again = create_session_of(c, "00000000-0000-4000-8000-00000000000a");
    assert_string_equal(again->session_id, a->session_id);
    protobuf_c_message_free_unpacked(&again->base, NULL);
    Moat__V1__SandboxSession *got = get_session(c, a->session_id);
    assert_string_equal(got->chat_id, "00000000-0000-4000-8000-00000000000a");
    protobuf_c_message_free_unpacked(&got->base, NULL);

    /* Another image, or a claim that fails, is created cold. */
    Moat__V1__CreateSessionRequest req = MOAT__V1__CREATE_SESSION_REQUEST__INIT;
    req.chat_id = (char *)"00000000-0000-4000-8000-00000000000b";
    req.image = (char *)"other:1";
    Moat__V1__SandboxSession *b = (Moat__V1__SandboxSession *)call_ok(
        c, "/moat.v1.Sandboxes/CreateSession", &req.base, &moat__v1__sandbox_session__descriptor);
    assert_false(from_pool(b));
    assert_true(stop_session(c, b->session_id));
    protobuf_c_message_free_unpacked(&b->base, NULL);
    fake_pool_set(3, 1, 0, 0, MOAT_CODE_INTERNAL);
    b = create_session_of(c, "00000000-0000-4000-8000-00000000000b");
    assert_false(from_pool(b));

    /* Ready and starting pool sandboxes count against max_sessions (4), less the one a claim
     * turns into the session: 2 running + 1 ready + 2 starting - 1 leave no room. */
    fake_pool_set(3, 1, 2, 0, MOAT_CODE_OK);
    req.image = NULL;
    req.chat_id = (char *)"00000000-0000-4000-8000-00000000000c";
    char reason[64];
    assert_int_equal(raw_unary(c, "/moat.v1.Sandboxes/CreateSession", &req.base, NULL, NULL, reason,
                               sizeof(reason)),
                     MOAT_CODE_RESOURCE_EXHAUSTED);
    assert_string_equal(reason, "too_many_sessions");
    fake_pool_set(3, 1, 1, 0, MOAT_CODE_OK);
    Moat__V1__SandboxSession *d = create_session_of(c, "00000000-0000-4000-8000-00000000000c");
    assert_true(from_pool(d));

    /* An empty pool whose starts fail: Health says so, and a create is cold. */
    fake_pool_set(3, 0, 0, 4, MOAT_CODE_OK);
    h = health(c);
    assert_int_equal(h->pool_ready, 0);
    assert_true(h->pool_failing);
    protobuf_c_message_free_unpacked(&h->base, NULL);
    pthread_mutex_lock(&fake_rt.mu);
    assert_int_equal(fake_rt.claims, 2);
    pthread_mutex_unlock(&fake_rt.mu);

    Moat__V1__SandboxSession *made[] = {a, b, d};
    for (size_t i = 0; i < 3; i++) {
        assert_true(stop_session(c, made[i]->session_id));
        protobuf_c_message_free_unpacked(&made[i]->base, NULL);
    }
    fake_pool_set(0, 0, 0, 0, MOAT_CODE_OK);
    raw_close(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_session_lifecycle),
        cmocka_unit_test(test_create_images),
        cmocka_unit_test(test_exec_errors),
        cmocka_unit_test(test_files_stat),
        cmocka_unit_test(test_create_claims_from_pool),
    };
    return moat_run_group_tests("handlers", tests, setup, teardown);
}
