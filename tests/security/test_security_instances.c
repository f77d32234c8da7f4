/* Two real moatds with different instances on the one dockerd, and containers made by hand
 * through the Engine API to look like sessions: each moatd lists, hands out, renews, stops and
 * reaps only its own sandboxes and leaves everything else running. Real moatd, dockerd and
 * moat-execd; sessions are driven over raw frames (tests/server/harness.c).
 *
 * Every container the test makes is named moatsec<pid>-…: the teardown removes them, and a
 * later run removes those of a run that died before its teardown (its pid no longer runs). */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "moat_test.h"
#include <curl/curl.h>

#include "harness.h"
#include "common/json.h"
#include "moat/v1/exec.pb-c.h"
#include "moat/v1/sandbox.pb-c.h"

#define IMAGE       "moat-sandbox:latest"
#define ENGINE_SOCK "/var/run/docker.sock"
#define PAST        "2000-01-01T00:00:00+00:00"

static char stem[32]; /* moatsec<pid>- */
static char prefix_a[48], prefix_b[48];
static char instance_a[32], instance_b[32];
static moatd_proc A, B;
/* Legitimate sessions that must keep answering next to every attack. */
static char a1[MOAT_UUID_STR_LEN], b1[MOAT_UUID_STR_LEN];
static char a1_container[80];

/* ---- the Engine API, by hand ------------------------------------------------------------------
 */

static size_t on_body(char *data, size_t size, size_t nmemb, void *user)
{
    moat_buf *buf = user;
    return moat_buf_append(buf, data, size * nmemb) == MOAT_OK ? size * nmemb : 0;
}

/* One Engine API call; the HTTP status, and the JSON answer in *json (NULL when none). */
static long engine(const char *method, const char *path, const char *body, cJSON **json)
{
    CURL *h = curl_easy_init();
    assert_non_null(h);
    char url[512];
    snprintf(url, sizeof(url), "http://localhost%s", path);
    moat_buf buf;
    moat_buf_init(&buf, 1u << 24);
    struct curl_slist *headers = curl_slist_append(NULL, "Content-Type: application/json");
    curl_easy_setopt(h, CURLOPT_UNIX_SOCKET_PATH, ENGINE_SOCK);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
    if (strcmp(method, "POST") == 0)
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, body != NULL ? body : "");
    curl_easy_setopt(h, CURLOPT_TIMEOUT, 60L);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &buf);
    long status = 0;
    if (curl_easy_perform(h) == CURLE_OK)
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    if (json != NULL)
        *json = buf.len > 0 ? moat_json_parse((const char *)buf.data, buf.len, MOAT_JSON_NUL_REJECT)
                            : NULL;
    moat_buf_free(&buf);
    curl_slist_free_all(headers);
    curl_easy_cleanup(h);
    return status;
}

/* Creates and starts a container that sleeps, named name, with the session labels of session_id
 * (expired long ago) and extra_labels (JSON members such as ,"moat.managed":"true"). Its id. */
static char *spoof_container(const char *name, const char *session_id, const char *chat_id,
                             const char *extra_labels)
{
    char body[1024], path[256];
    snprintf(body, sizeof(body),
             "{\"Image\":\"" IMAGE "\",\"Entrypoint\":[\"/bin/sleep\",\"600\"],"
             "\"NetworkDisabled\":true,\"HostConfig\":{\"NetworkMode\":\"none\"},"
             "\"Labels\":{\"session_id\":\"%s\",\"chat_id\":\"%s\",\"expires_at\":\"" PAST "\"%s}}",
             session_id, chat_id, extra_labels);
    snprintf(path, sizeof(path), "/containers/create?name=%s", name);
    cJSON *created = NULL;
    long status = engine("POST", path, body, &created);
    const char *id = moat_json_str(created, "Id", NULL);
    if (status != 201 || id == NULL)
        fail_msg("create %s: HTTP %ld", name, status);
    char *copy = strdup(id);
    cJSON_Delete(created);
    snprintf(path, sizeof(path), "/containers/%s/start", copy);
    assert_int_equal(engine("POST", path, NULL, NULL), 204);
    return copy;
}

static bool container_running(const char *id)
{
    char path[160];
    snprintf(path, sizeof(path), "/containers/%s/json", id);
    cJSON *c = NULL;
    long status = engine("GET", path, NULL, &c);
    bool running = status == 200 && cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(
                                        cJSON_GetObjectItemCaseSensitive(c, "State"), "Running"));
    cJSON_Delete(c);
    return running;
}

static int sh(const char *cmd)
{
    int rc = system(cmd);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

static void remove_containers(const char *name_part)
{
    char cmd[256];
    snprintf(cmd, sizeof(cmd),
             "/usr/bin/docker ps -aq --filter name=%s | xargs -r /usr/bin/docker rm -f "
             ">/dev/null 2>&1",
             name_part);
    sh(cmd);
}

/* Containers of earlier runs that died before their teardown: moatsec<pid>- whose pid is gone. */
static void remove_orphans(void)
{
    FILE *p = popen("/usr/bin/docker ps -a --format '{{.Names}}' --filter name=moatsec", "r");
    if (p == NULL)
        return;
    char name[256];
    while (fgets(name, sizeof(name), p) != NULL) {
        char *end = NULL;
        if (strncmp(name, "moatsec", 7) != 0)
            continue;
        long pid = strtol(name + 7, &end, 10);
        if (end == name + 7 || *end != '-' || pid <= 0)
            continue;
        if (kill((pid_t)pid, 0) == 0 || errno == EPERM) /* still running, maybe as another user */
            continue;
        char part[32];
        snprintf(part, sizeof(part), "moatsec%ld-", pid);
        remove_containers(part);
    }
    pclose(p);
}

/* ---- moatd over raw frames ---------------------------------------------------------------------
 */

static raw_conn *conn(const moatd_proc *p)
{
    raw_conn *c = raw_connect(p->port);
    assert_non_null(c);
    moat_frame ack;
    assert_int_equal(raw_hello(c, NULL, &ack), 1);
    assert_int_equal(ack.kind, MOAT_FRAME_HELLO_ACK);
    return c;
}

static void dump_logs(void)
{
    moatd_dump_log(&A);
    moatd_dump_log(&B);
}

/* What the tests read of a SandboxSession answer. */
typedef struct session_info {
    char session_id[MOAT_UUID_STR_LEN];
    char container_id[80];
    int status;
    int64_t expires_at_ms;
} session_info;

/* A unary call to its End: its code, its reason (when reason is not NULL, 64 bytes) and the
 * session answered (when s is not NULL). */
static int call(raw_conn *c, const char *method, const ProtobufCMessage *req, session_info *s,
                char *reason)
{
    ProtobufCMessage *resp = NULL;
    char why[64] = "";
    int code = raw_unary(c, method, req, s != NULL ? &moat__v1__sandbox_session__descriptor : NULL,
                         s != NULL ? &resp : NULL, why, sizeof(why));
    if (reason != NULL)
        snprintf(reason, 64, "%s", why);
    if (s != NULL) {
        memset(s, 0, sizeof(*s));
        const Moat__V1__SandboxSession *got = (const Moat__V1__SandboxSession *)resp;
        if (got != NULL) {
            snprintf(s->session_id, sizeof(s->session_id), "%s", got->session_id);
            snprintf(s->container_id, sizeof(s->container_id), "%s", got->container_id);
            s->status = got->status;
            s->expires_at_ms = got->expires_at_ms;
            protobuf_c_message_free_unpacked(resp, NULL);
        }
    }
    return code;
}

static session_info create(raw_conn *c, const char *chat, uint32_t ttl)
{
    Moat__V1__CreateSessionRequest req = MOAT__V1__CREATE_SESSION_REQUEST__INIT;
    req.chat_id = (char *)chat;
    req.ttl_seconds = ttl;
    session_info s;
    char reason[64];
    int code = call(c, "/moat.v1.Sandboxes/CreateSession", &req.base, &s, reason);
    if (code != MOAT_CODE_OK) {
        dump_logs();
        fail_msg("CreateSession: code %d reason %s", code, reason);
    }
    return s;
}

static int get(raw_conn *c, const char *sid, session_info *s, char *reason)
{
    Moat__V1__GetSessionRequest req = MOAT__V1__GET_SESSION_REQUEST__INIT;
    req.session_id = (char *)sid;
    return call(c, "/moat.v1.Sandboxes/GetSession", &req.base, s, reason);
}

static int renew(raw_conn *c, const char *sid, uint32_t ttl, session_info *s, char *reason)
{
    Moat__V1__RenewSessionRequest req = MOAT__V1__RENEW_SESSION_REQUEST__INIT;
    req.session_id = (char *)sid;
    req.ttl_seconds = ttl;
    return call(c, "/moat.v1.Sandboxes/RenewSession", &req.base, s, reason);
}

static int stop(raw_conn *c, const char *sid, char *reason)
{
    Moat__V1__StopSessionRequest req = MOAT__V1__STOP_SESSION_REQUEST__INIT;
    req.session_id = (char *)sid;
    return call(c, "/moat.v1.Sandboxes/StopSession", &req.base, NULL, reason);
}

/* Whether ListSessions (all chats) shows the session id or the container id (either may be
 * NULL). */
static bool listed(raw_conn *c, const char *sid, const char *container_id)
{
    Moat__V1__ListSessionsRequest req = MOAT__V1__LIST_SESSIONS_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    assert_int_equal(raw_unary(c, "/moat.v1.Sandboxes/ListSessions", &req.base,
                               &moat__v1__list_sessions_response__descriptor, &resp, NULL, 0),
                     MOAT_CODE_OK);
    Moat__V1__ListSessionsResponse *l = (Moat__V1__ListSessionsResponse *)resp;
    bool found = false;
    for (size_t i = 0; i < l->n_sessions; i++)
        found |= (sid != NULL && strcmp(l->sessions[i]->session_id, sid) == 0) ||
                 (container_id != NULL && strcmp(l->sessions[i]->container_id, container_id) == 0);
    protobuf_c_message_free_unpacked(resp, NULL);
    return found;
}

/* RunCommand to its End: the End's code, and the command's output in out. */
static int run(raw_conn *c, const char *sid, const char *command, char *out, size_t cap)
{
    Moat__V1__RunCommandRequest req = MOAT__V1__RUN_COMMAND_REQUEST__INIT;
    req.session_id = (char *)sid;
    req.command = (char *)command;
    uint32_t id = raw_call(c, "/moat.v1.Exec/RunCommand", 0, &req.base);
    assert_true(id != 0);
    size_t used = 0;
    out[0] = '\0';
    for (;;) {
        moat_frame f;
        assert_int_equal(raw_recv_stream(c, id, &f, 60000), 1);
        if (f.kind == MOAT_FRAME_END)
            return (int)f.u.end.code;
        if (f.kind != MOAT_FRAME_MESSAGE)
            continue;
        Moat__V1__ExecEvent *ev =
            moat__v1__exec_event__unpack(NULL, f.u.message.payload.len, f.u.message.payload.data);
        assert_non_null(ev);
        if (ev->kind_case == MOAT__V1__EXEC_EVENT__KIND_OUTPUT) {
            size_t n =
                ev->output->data.len < cap - 1 - used ? ev->output->data.len : cap - 1 - used;
            memcpy(out + used, ev->output->data.data, n);
            used += n;
            out[used] = '\0';
        }
        moat__v1__exec_event__free_unpacked(ev, NULL);
    }
}

static void assert_answers(raw_conn *c, const char *sid)
{
    char out[64];
    assert_int_equal(run(c, sid, "echo ok", out, sizeof(out)), MOAT_CODE_OK);
    assert_string_equal(out, "ok\n");
}

static void sleep_ms(int ms)
{
    usleep((useconds_t)ms * 1000);
}

/* Bounded wait for the reaper of the moatd behind c to end sid (EXPIRED). */
static void wait_expired(raw_conn *c, const char *sid)
{
    session_info s = {0};
    for (int i = 0; i < 300; i++) {
        if (get(c, sid, &s, NULL) == MOAT_CODE_OK && s.status == MOAT__V1__SESSION_STATUS__EXPIRED)
            return;
        sleep_ms(100);
    }
    dump_logs();
    fail_msg("session %s was not reaped (status %d)", sid, s.status);
}

static size_t log_lines(const moatd_proc *p, const char *needle)
{
    FILE *f = fopen(p->log_path, "r");
    assert_non_null(f);
    char line[2048];
    size_t n = 0;
    while (fgets(line, sizeof(line), f) != NULL)
        n += strstr(line, needle) != NULL;
    fclose(f);
    return n;
}

/* ---- fixture -----------------------------------------------------------------------------------
 */

static void stop_everything(void)
{
    moatd_stop(&A);
    moatd_stop(&B);
    remove_containers(stem);
    if (A.state_dir[0] != '\0')
        moatd_remove_dir(A.state_dir);
    if (B.state_dir[0] != '\0')
        moatd_remove_dir(B.state_dir);
}

static int group_setup(void **state)
{
    (void)state;
    const char *build = getenv("MOAT_BUILD_DIR"), *src = getenv("MOAT_SOURCE_DIR");
    if (build == NULL || src == NULL) {
        fprintf(stderr, "MOAT_BUILD_DIR and MOAT_SOURCE_DIR must be set (ctest sets them)\n");
        return -1;
    }
    char cmd[2048];
    snprintf(cmd, sizeof(cmd),
             "test -x %s/execd-bundle/run && /usr/bin/docker image inspect " IMAGE
             " >/dev/null 2>&1 || %s/scripts/build-sandbox-image.sh %s",
             build, src, build);
    if (sh(cmd) != 0) {
        fprintf(stderr, "no sandbox image or execd bundle, and cannot build them: %s\n", cmd);
        return -1;
    }
    remove_orphans();
    int pid = (int)getpid();
    snprintf(stem, sizeof(stem), "moatsec%d-", pid);
    snprintf(prefix_a, sizeof(prefix_a), "%sa-", stem);
    snprintf(prefix_b, sizeof(prefix_b), "%sb-", stem);
    snprintf(instance_a, sizeof(instance_a), "sec%d-a", pid);
    snprintf(instance_b, sizeof(instance_b), "sec%d-b", pid);
    /* Each moatd: its own state_dir (and so chats, store and socket dirs), ports, prefix and
     * instance; its reaper sweeps every second. */
    char prefix_arg[2][80], instance_arg[2][64];
    snprintf(prefix_arg[0], sizeof(prefix_arg[0]), "--container_name_prefix=%s", prefix_a);
    snprintf(prefix_arg[1], sizeof(prefix_arg[1]), "--container_name_prefix=%s", prefix_b);
    snprintf(instance_arg[0], sizeof(instance_arg[0]), "--instance=%s", instance_a);
    snprintf(instance_arg[1], sizeof(instance_arg[1]), "--instance=%s", instance_b);
    const char *extra_a[] = {prefix_arg[0], instance_arg[0], "--cleanup_interval_seconds=1", NULL};
    const char *extra_b[] = {prefix_arg[1], instance_arg[1], "--cleanup_interval_seconds=1", NULL};
    if (!moatd_start(&A, true, extra_a) || !moatd_start(&B, true, extra_b)) {
        stop_everything();
        return -1;
    }
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    stop_everything();
    return 0;
}

/* ---- tests -------------------------------------------------------------------------------------
 */

/* Sessions of both moatds, one chat in common: neither lists, hands out, renews, stops, runs
 * commands in or reaps the other's; A's renewed session outlives its label through several of
 * both reapers' sweeps, while each reaper does end its own expired session. */
static void test_instances_keep_to_their_own(void **state)
{
    (void)state;
    raw_conn *a = conn(&A), *b = conn(&B);
    char chat[MOAT_UUID_STR_LEN], chat_a2[MOAT_UUID_STR_LEN], chat_b2[MOAT_UUID_STR_LEN];
    moat_uuid_generate(chat);
    moat_uuid_generate(chat_a2);
    moat_uuid_generate(chat_b2);
    int64_t label_expiry = moat_time_now_ms() + 3000;
    session_info s = create(a, chat, 3);
    snprintf(a1, sizeof(a1), "%s", s.session_id);
    snprintf(a1_container, sizeof(a1_container), "%s", s.container_id);
    /* Same chat on B: a session of B's own, never A's. */
    s = create(b, chat, 600);
    snprintf(b1, sizeof(b1), "%s", s.session_id);
    assert_string_not_equal(b1, a1);
    s = create(b, chat, 600);
    assert_string_equal(s.session_id, b1);
    char a2[MOAT_UUID_STR_LEN], b2[MOAT_UUID_STR_LEN];
    s = create(a, chat_a2, 2);
    snprintf(a2, sizeof(a2), "%s", s.session_id);
    s = create(b, chat_b2, 2);
    snprintf(b2, sizeof(b2), "%s", s.session_id);
    assert_int_equal(renew(a, a1, 3600, &s, NULL), MOAT_CODE_OK);
    assert_true(s.expires_at_ms > moat_time_now_ms() + 3500000);

    struct {
        raw_conn *by;
        const char *other;
    } cross[] = {{a, b1}, {a, b2}, {b, a1}, {b, a2}};
    for (size_t i = 0; i < sizeof(cross) / sizeof(cross[0]); i++) {
        char reason[64], out[64];
        assert_false(listed(cross[i].by, cross[i].other, NULL));
        assert_int_equal(get(cross[i].by, cross[i].other, &s, reason), MOAT_CODE_NOT_FOUND);
        assert_string_equal(reason, "session_not_found");
        assert_int_equal(renew(cross[i].by, cross[i].other, 600, &s, reason), MOAT_CODE_NOT_FOUND);
        assert_int_equal(stop(cross[i].by, cross[i].other, reason), MOAT_CODE_NOT_FOUND);
        assert_string_equal(reason, "session_not_found");
        assert_int_equal(run(cross[i].by, cross[i].other, "echo no", out, sizeof(out)),
                         MOAT_CODE_NOT_FOUND);
    }
    assert_true(listed(a, a1, NULL) && listed(a, a2, NULL));
    assert_true(listed(b, b1, NULL) && listed(b, b2, NULL));

    /* Each reaper ends its own short session; then several more sweeps of both, past a1's
     * label expiry. */
    wait_expired(a, a2);
    wait_expired(b, b2);
    while (moat_time_now_ms() < label_expiry)
        sleep_ms(100);
    sleep_ms(3500);
    assert_int_equal(get(a, a1, &s, NULL), MOAT_CODE_OK);
    assert_int_equal(s.status, MOAT__V1__SESSION_STATUS__RUNNING);
    assert_true(container_running(a1_container));
    assert_int_equal(get(b, b1, &s, NULL), MOAT_CODE_OK);
    assert_int_equal(s.status, MOAT__V1__SESSION_STATUS__RUNNING);
    assert_answers(a, a1);
    assert_answers(b, b1);
    raw_close(a);
    raw_close(b);
}

typedef struct spoof {
    const char *what;
    char name[160];
    char session_id[MOAT_UUID_STR_LEN];
    char labels[256];
    char *container_id;
} spoof;

/* Containers made by hand with session labels expired long ago: with and without
 * moat.managed, with the other instance's label, with a wrong name, and one carrying a1's
 * session id. Neither moatd lists, hands out, renews, stops or reaps any of them; each is
 * logged once by a moatd whose Docker filter lets it through; the legitimate sessions next to
 * them keep answering. */
static void test_spoofed_containers_left_alone(void **state)
{
    (void)state;
    assert_true(a1[0] != '\0' && b1[0] != '\0'); /* made by the test before */
    raw_conn *a = conn(&A), *b = conn(&B);
    char chat[MOAT_UUID_STR_LEN];
    moat_uuid_generate(chat);
    char managed[] = ",\"moat.managed\":\"true\"", mine_a[96], mine_b[96], unmanaged_a[96];
    snprintf(mine_a, sizeof(mine_a), "%s,\"moat.instance\":\"%s\"", managed, instance_a);
    snprintf(mine_b, sizeof(mine_b), "%s,\"moat.instance\":\"%s\"", managed, instance_b);
    snprintf(unmanaged_a, sizeof(unmanaged_a),
             ",\"moat.managed\":\"false\",\"moat.instance\":\"%s\"", instance_a);
    spoof spoofs[7] = {{.what = "the three seed labels, A's name"},
                       {.what = "managed, no instance label, A's name"},
                       {.what = "managed, B's instance, A's name"},
                       {.what = "managed, A's instance, a name without A's prefix"},
                       {.what = "moat.managed=false, A's instance, A's name"},
                       {.what = "managed, B's instance, a name without B's prefix"},
                       {.what = "managed, A's instance, a1's session id, another name"}};
    enum { N = sizeof(spoofs) / sizeof(spoofs[0]), TWIN = N - 1 };
    for (size_t i = 0; i < N; i++)
        moat_uuid_generate(spoofs[i].session_id);
    snprintf(spoofs[TWIN].session_id, sizeof(spoofs[TWIN].session_id), "%s", a1);
    /* A's name is prefix_a + session id; the others still start with the stem, for the
     * cleanup. */
    char other_x[48], other_y[48], other_twin[48];
    snprintf(other_x, sizeof(other_x), "%sx-", stem);
    snprintf(other_y, sizeof(other_y), "%sy-", stem);
    snprintf(other_twin, sizeof(other_twin), "%stwin-", stem);
    const char *name_prefix[N] = {prefix_a, prefix_a, prefix_a,  other_x,
                                  prefix_a, other_y,  other_twin};
    const char *labels[N] = {"", managed, mine_b, mine_a, unmanaged_a, mine_b, mine_a};
    for (size_t i = 0; i < N; i++) {
        snprintf(spoofs[i].name, sizeof(spoofs[i].name), "%s%s", name_prefix[i],
                 spoofs[i].session_id);
        snprintf(spoofs[i].labels, sizeof(spoofs[i].labels), "%s", labels[i]);
    }
    for (size_t i = 0; i < N; i++)
        spoofs[i].container_id =
            spoof_container(spoofs[i].name, spoofs[i].session_id, chat, spoofs[i].labels);

    /* Every call aimed at them, on both moatds. */
    raw_conn *both[] = {a, b};
    for (size_t i = 0; i < N; i++) {
        print_message("spoof: %s\n", spoofs[i].what);
        for (int m = 0; m < 2; m++) {
            session_info s;
            char reason[64], out[64];
            if (i == TWIN && m == 0) {
                /* A answers for a1 with a1's own container, never the spoof. */
                assert_int_equal(get(a, a1, &s, NULL), MOAT_CODE_OK);
                assert_string_equal(s.container_id, a1_container);
                assert_int_equal(renew(a, a1, 3600, &s, NULL), MOAT_CODE_OK);
                assert_string_equal(s.container_id, a1_container);
                assert_false(listed(a, NULL, spoofs[i].container_id));
                continue;
            }
            assert_false(listed(both[m], spoofs[i].session_id, spoofs[i].container_id));
            assert_int_equal(get(both[m], spoofs[i].session_id, &s, reason), MOAT_CODE_NOT_FOUND);
            assert_string_equal(reason, "session_not_found");
            assert_int_equal(renew(both[m], spoofs[i].session_id, 600, &s, reason),
                             MOAT_CODE_NOT_FOUND);
            assert_int_equal(stop(both[m], spoofs[i].session_id, reason), MOAT_CODE_NOT_FOUND);
            assert_string_equal(reason, "session_not_found");
            assert_int_equal(run(both[m], spoofs[i].session_id, "echo no", out, sizeof(out)),
                             MOAT_CODE_NOT_FOUND);
        }
    }
    /* Their chat gets a new session from each moatd, never one of them. */
    char fresh_a[MOAT_UUID_STR_LEN], fresh_b[MOAT_UUID_STR_LEN];
    session_info s = create(a, chat, 600);
    snprintf(fresh_a, sizeof(fresh_a), "%s", s.session_id);
    s = create(b, chat, 600);
    snprintf(fresh_b, sizeof(fresh_b), "%s", s.session_id);
    for (size_t i = 0; i < N; i++) {
        assert_string_not_equal(fresh_a, spoofs[i].session_id);
        assert_string_not_equal(fresh_b, spoofs[i].session_id);
    }

    /* Several sweeps of both reapers, each shown by a short session of its own ending, then
     * more: the spoofs, expired since 2000, are all still running. */
    char chat_ctl[MOAT_UUID_STR_LEN], ctl_a[MOAT_UUID_STR_LEN], ctl_b[MOAT_UUID_STR_LEN];
    moat_uuid_generate(chat_ctl);
    s = create(a, chat_ctl, 1);
    snprintf(ctl_a, sizeof(ctl_a), "%s", s.session_id);
    s = create(b, chat_ctl, 1);
    snprintf(ctl_b, sizeof(ctl_b), "%s", s.session_id);
    wait_expired(a, ctl_a);
    wait_expired(b, ctl_b);
    sleep_ms(3500);
    for (size_t i = 0; i < N; i++) {
        print_message("spoof still running: %s\n", spoofs[i].what);
        assert_true(container_running(spoofs[i].container_id));
        assert_false(listed(a, i == TWIN ? NULL : spoofs[i].session_id, spoofs[i].container_id));
        assert_false(listed(b, spoofs[i].session_id, spoofs[i].container_id));
    }
    /* Logged once each, however many sweeps saw them, by the moatd whose Docker filter
     * (managed, its instance) lets them through to its name check: A the two with A's instance,
     * B the two with B's. */
    for (size_t i = 0; i < N; i++) {
        char needle[96];
        snprintf(needle, sizeof(needle), "event=foreign_container_ignored container_id=%.12s ",
                 spoofs[i].container_id);
        bool seen_by_a = i == 3 || i == TWIN, seen_by_b = i == 2 || i == 5;
        print_message("logged once: %s\n", spoofs[i].what);
        assert_int_equal(log_lines(&A, needle), seen_by_a ? 1 : 0);
        assert_int_equal(log_lines(&B, needle), seen_by_b ? 1 : 0);
        free(spoofs[i].container_id);
    }
    /* The legitimate sessions next to the attack kept answering. */
    assert_answers(a, a1);
    assert_answers(b, b1);
    assert_answers(a, fresh_a);
    assert_answers(b, fresh_b);
    raw_close(a);
    raw_close(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_instances_keep_to_their_own),
        cmocka_unit_test(test_spoofed_containers_left_alone),
    };
    return moat_run_group_tests("security_instances", tests, group_setup, group_teardown);
}
