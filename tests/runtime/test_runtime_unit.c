/* Unit tests of the runtime against a fake Docker engine (a real HTTP server on a Unix socket).
 * Covers every case of seed 000 and the failure modes around it. */
#define _XOPEN_SOURCE 700
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <ftw.h>
#include <limits.h>
#include <pthread.h>
#include <unistd.h>

#include "moat_test.h"
#include <curl/curl.h>
#include <sqlite3.h>

#include "fake_docker.h"
#include "json_readers.h"
#include "runtime/runtime.h"
#include "host_mounts.h"
#include "internal.h"

#define CHAT_ID               "123e4567-e89b-12d3-a456-426614174000"
#define NON_CANONICAL_CHAT_ID "123E4567E89B12D3A456426614174000"
#define SESSION_ID            "00000000-0000-0000-0000-000000000010"
#define SESSION_ID2           "00000000-0000-0000-0000-000000000011"
#define SESSION_ID3           "00000000-0000-0000-0000-000000000012"
#define PREFIX                "moat-unit-"

typedef struct fx {
    char dir[64];
    char deps[128], lambda[128], bundle[128], chats[128], state[128], store[160], sock[128];
    fake_docker fd;
    moat_runtime_config cfg;
    moat_runtime *rt;
} fx;

static int64_t iso(const char *text)
{
    int64_t ms = 0;
    assert_int_equal(moat_time_parse_iso8601(text, &ms), MOAT_OK);
    return ms;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void open_runtime(fx *f)
{
    moat_status st;
    f->rt = moat_runtime_open(&f->cfg, &st);
    if (f->rt == NULL)
        fail_msg("open: %s", st.message);
}

static int setup(void **state)
{
    fx *f = calloc(1, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "/tmp/moat-rt-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->deps, sizeof(f->deps), "%s/dependencies", f->dir);
    snprintf(f->lambda, sizeof(f->lambda), "%s/lambda-tools", f->dir);
    snprintf(f->bundle, sizeof(f->bundle), "%s/bundle", f->dir);
    snprintf(f->chats, sizeof(f->chats), "%s/chats", f->dir);
    snprintf(f->state, sizeof(f->state), "%s/state", f->dir);
    snprintf(f->store, sizeof(f->store), "%s/state/state.db", f->dir);
    snprintf(f->sock, sizeof(f->sock), "%s/docker.sock", f->dir);
    mkdir(f->deps, 0755);
    mkdir(f->lambda, 0755);
    mkdir(f->bundle, 0755);
    mkdir(f->state, 0755);
    assert_int_equal(fake_docker_start(&f->fd, f->sock), 0);
    moat_runtime_config_defaults(&f->cfg);
    f->cfg.image = "sandbox:latest";
    f->cfg.ttl_seconds = 300;
    f->cfg.cleanup_interval_seconds = 60;
    f->cfg.chats_root = f->chats;
    f->cfg.dependencies_host_path = f->deps;
    f->cfg.lambda_tools_host_path = f->lambda;
    f->cfg.execd_bundle_dir = f->bundle;
    f->cfg.state_dir = f->state;
    f->cfg.store_path = f->store;
    f->cfg.docker_host = f->sock;
    f->cfg.docker_timeout_ms = 2000;
    f->cfg.readiness_timeout_ms = 2000;
    f->cfg.container_name_prefix = PREFIX;
    /* A fake engine and no change to the host: no workspace images or mounts here
     * (test_workspace_root covers them). */
    f->cfg.workspace_quota = false;
    open_runtime(f);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx *f = *state;
    moat_runtime_close(f->rt);
    fake_docker_stop(&f->fd);
    host_unmount_under(f->dir);
    nftw(f->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(f);
    return 0;
}

static cJSON *body_of(const fake_request *rq)
{
    assert_non_null(rq);
    cJSON *j = moat_json_parse(rq->body, strlen(rq->body), MOAT_JSON_NUL_REJECT);
    assert_non_null(j);
    return j;
}

static char *resolved(const char *path)
{
    static char buf[8][PATH_MAX];
    static int next;
    char *out = buf[next++ % 8];
    assert_non_null(realpath(path, out));
    return out;
}

static void assert_mount(cJSON *m, const char *target, const char *source, bool ro)
{
    assert_int_equal(cJSON_GetArraySize(m), 4);
    assert_string_equal(jsv(jget(m, "Target")), target);
    assert_string_equal(jsv(jget(m, "Source")), source);
    assert_string_equal(jsv(jget(m, "Type")), "bind");
    assert_true(cJSON_IsBool(jget(m, "ReadOnly")));
    assert_int_equal(cJSON_IsTrue(jget(m, "ReadOnly")), ro);
}

static moat_code create_default(fx *f, const char *chat, moat_session *s, moat_status *st)
{
    int64_t created = iso("2026-04-02T12:00:00+00:00");
    return moat_runtime_create(f->rt, SESSION_ID, chat, created, created + 5 * 60 * 1000, NULL, s,
                               st);
}

/* seed: test_runtime_create_applies_mount_policy_and_labels_with_canonical_chat_id */
static void test_create_mount_policy_and_labels(void **state)
{
    fx *f = *state;
    moat_session s;
    moat_status st;
    int64_t created = iso("2026-04-02T12:00:00+00:00");
    int64_t expires = created + 5 * 60 * 1000;
    assert_int_equal(moat_runtime_create(f->rt, SESSION_ID, NON_CANONICAL_CHAT_ID, created, expires,
                                         NULL, &s, &st),
                     MOAT_CODE_OK);
    assert_string_equal(s.session_id, SESSION_ID);
    assert_string_equal(s.chat_id, CHAT_ID);
    assert_string_equal(s.container_id, "container-123");
    assert_int_equal(s.state, MOAT_SESSION_RUNNING);
    assert_int_equal(s.created_at_ms, created);
    assert_int_equal(s.expires_at_ms, expires);

    char chat_dir[256];
    struct stat sb;
    snprintf(chat_dir, sizeof(chat_dir), "%s/%s", f->chats, CHAT_ID);
    assert_int_equal(stat(chat_dir, &sb), 0);
    assert_true(S_ISDIR(sb.st_mode));
    /* The sandbox user's, closed to everyone else. */
    assert_int_equal(sb.st_uid, 1000);
    assert_int_equal(sb.st_gid, 1000);
    assert_int_equal(sb.st_mode & 07777, 0700);

    /* Request sequence: version negotiation, the engine's id mapping, create (named), start. */
    assert_int_equal(f->fd.request_count >= 4, 1);
    assert_string_equal(f->fd.requests[0].url, "/version");
    assert_string_equal(f->fd.requests[1].url, "/v1.41/info");
    assert_string_equal(f->fd.requests[2].method, "POST");
    assert_string_equal(f->fd.requests[2].url,
                        "/v1.41/containers/create?name=moat-unit-" SESSION_ID);
    assert_string_equal(f->fd.requests[3].url, "/v1.41/containers/container-123/start");

    cJSON *spec = body_of(fake_docker_find(&f->fd, "POST", "/containers/create"));
    assert_string_equal(jsv(jget(spec, "Image")), "sandbox:latest");
    cJSON *labels = jget(spec, "Labels");
    assert_int_equal(cJSON_GetArraySize(labels), 5);
    assert_string_equal(jsv(jget(labels, "session_id")), SESSION_ID);
    assert_string_equal(jsv(jget(labels, "chat_id")), CHAT_ID);
    assert_string_equal(jsv(jget(labels, "expires_at")), "2026-04-02T12:05:00+00:00");
    assert_string_equal(jsv(jget(labels, "moat.managed")), "true");
    assert_non_null(jsv(jget(labels, "moat.version")));

    cJSON *ep = jget(spec, "Entrypoint");
    assert_int_equal(cJSON_GetArraySize(ep), 7);
    assert_string_equal(jsv(cJSON_GetArrayItem(ep, 0)), "/opt/moat/run");
    assert_string_equal(jsv(cJSON_GetArrayItem(ep, 1)), "--listen");
    assert_string_equal(jsv(cJSON_GetArrayItem(ep, 2)), "unix:/run/moat/execd.sock");
    assert_string_equal(jsv(cJSON_GetArrayItem(ep, 3)), "--pty-idle-timeout");
    assert_string_equal(jsv(cJSON_GetArrayItem(ep, 4)), "1800");
    assert_string_equal(jsv(cJSON_GetArrayItem(ep, 5)), "--run-as");
    assert_string_equal(jsv(cJSON_GetArrayItem(ep, 6)), "1000:1000");
    /* The session's own execd token, only in the environment; HOME is the workspace. */
    cJSON *env = jget(spec, "Env");
    assert_int_equal(cJSON_GetArraySize(env), 2);
    const char *token_env = jsv(cJSON_GetArrayItem(env, 0));
    assert_int_equal(strncmp(token_env, "EXECD_ACCESS_TOKEN=", 19), 0);
    assert_int_equal(strlen(token_env + 19), 64);
    assert_int_equal(strspn(token_env + 19, "0123456789abcdef"), 64);
    assert_string_equal(jsv(cJSON_GetArrayItem(env, 1)), "HOME=/workspace/chat");

    cJSON *host = jget(spec, "HostConfig");
    cJSON *mounts = jget(host, "Mounts");
    assert_int_equal(cJSON_GetArraySize(mounts), 5);
    char session_dir[256];
    snprintf(session_dir, sizeof(session_dir), "%s/sessions/%s", f->state, SESSION_ID);
    assert_mount(cJSON_GetArrayItem(mounts, 0), "/workspace/chat", resolved(chat_dir), false);
    assert_mount(cJSON_GetArrayItem(mounts, 1), "/workspace/dependencies", resolved(f->deps), true);
    assert_mount(cJSON_GetArrayItem(mounts, 2), "/workspace/lambda-tools", resolved(f->lambda),
                 true);
    assert_mount(cJSON_GetArrayItem(mounts, 3), "/opt/moat", resolved(f->bundle), true);
    assert_mount(cJSON_GetArrayItem(mounts, 4), "/run/moat", resolved(session_dir), false);

    assert_string_equal(jsv(jget(host, "NetworkMode")), "none");
    cJSON *caps = jget(host, "CapDrop");
    assert_int_equal(cJSON_GetArraySize(caps), 1);
    assert_string_equal(jsv(cJSON_GetArrayItem(caps, 0)), "ALL");
    cJSON *sec = jget(host, "SecurityOpt");
    assert_string_equal(jsv(cJSON_GetArrayItem(sec, 0)), "no-new-privileges");
    /* Only what execd needs to run commands as the sandbox user and signal them. */
    cJSON *cap_add = jget(host, "CapAdd");
    assert_int_equal(cJSON_GetArraySize(cap_add), 4);
    const char *want_caps[] = {"SETUID", "SETGID", "KILL", "CHOWN"};
    for (int i = 0; i < 4; i++)
        assert_string_equal(jsv(cJSON_GetArrayItem(cap_add, i)), want_caps[i]);
    /* The token handed to execd is the session's, and the store keeps it. */
    assert_string_equal(token_env + 19, s.execd_token);
    moat_session got;
    assert_int_equal(moat_runtime_get(f->rt, SESSION_ID, &got, &st), MOAT_CODE_OK);
    assert_string_equal(got.execd_token, s.execd_token);
    assert_int_equal(jiv(jget(host, "PidsLimit")), 256);
    assert_int_equal(jiv(jget(host, "Memory")), 512ll * 1024 * 1024);
    assert_int_equal(jiv(jget(host, "NanoCpus")), 1000000000ll);
    /* By default the root file system is read-only, with bounded tmpfs mounts where a shell
     * writes. */
    assert_true(cJSON_IsTrue(jget(host, "ReadonlyRootfs")));
    cJSON *tmpfs = jget(host, "Tmpfs");
    assert_int_equal(cJSON_GetArraySize(tmpfs), 3);
    assert_string_equal(jsv(jget(tmpfs, "/tmp")),
                        "rw,nosuid,nodev,size=67108864,nr_inodes=16384,mode=1777");
    assert_string_equal(jsv(jget(tmpfs, "/var/tmp")),
                        "rw,nosuid,nodev,size=67108864,nr_inodes=16384,mode=1777");
    assert_string_equal(jsv(jget(tmpfs, "/root")),
                        "rw,nosuid,nodev,size=67108864,nr_inodes=16384,mode=0700");
    /* No runtime configured: the engine's default, so no Runtime key at all. */
    assert_null(jget(host, "Runtime"));
    cJSON_Delete(spec);
    assert_string_equal(s.execd_socket + strlen(s.execd_socket) - strlen("execd.sock"),
                        "execd.sock");
}

/* seed: test_runtime_create_raises_start_error_when_container_id_is_missing */
static void test_create_empty_container_id(void **state)
{
    fx *f = *state;
    fake_docker_route(&f->fd, "POST", "/containers/create", 201, "{\"Id\":\"\"}", -1);
    moat_session s;
    moat_status st;
    assert_int_not_equal(create_default(f, CHAT_ID, &s, &st), MOAT_CODE_OK);
    assert_string_equal(st.reason, "sandbox_start_failed");
    assert_string_equal(moat_status_detail_get(&st, "chat_id"), CHAT_ID);
    assert_int_equal(fake_docker_count(&f->fd, "POST", "/start"), 0);
}

#define MANAGED ",\"moat.managed\":\"true\""

/* A running container as Docker describes it, in the list's shape (Names, Labels) or
 * inspect's (Name, Config.Labels): the three session labels, expiring at exp, then
 * extra_labels, JSON members such as MANAGED. name is Docker's, without the leading '/'. */
static char *described(bool inspect, const char *id, const char *sid, const char *name,
                       const char *exp, const char *extra_labels)
{
    char labels[1024], text[2048];
    snprintf(labels, sizeof(labels),
             "{\"session_id\":\"%s\",\"chat_id\":\"" CHAT_ID "\",\"expires_at\":\"%s\"%s}", sid,
             exp, extra_labels);
    if (inspect)
        snprintf(text, sizeof(text),
                 "{\"Id\":\"%s\",\"Name\":\"/%s\",\"Created\":\"2026-04-02T12:00:00Z\","
                 "\"State\":{\"Running\":true},\"Config\":{\"Image\":\"sandbox:latest\","
                 "\"Labels\":%s}}",
                 id, name, labels);
    else
        snprintf(text, sizeof(text),
                 "{\"Id\":\"%s\",\"Names\":[\"/%s\"],\"Created\":1775131200,"
                 "\"State\":\"running\",\"Image\":\"sandbox:latest\",\"Labels\":%s}",
                 id, name, labels);
    char *copy = strdup(text);
    assert_non_null(copy);
    return copy;
}

/* Scripts the answer to GET /containers/<id>/json. */
static void route_inspect(fx *f, const char *id, char *described_text)
{
    char url[128];
    snprintf(url, sizeof(url), "/containers/%s/json", id);
    fake_docker_route(&f->fd, "GET", url, 200, described_text, -1);
    free(described_text);
}

/* seed: test_runtime_stop_ignores_missing_container */
static void test_stop_ignores_missing_container(void **state)
{
    fx *f = *state;
    route_inspect(f, "container-123",
                  described(true, "container-123", SESSION_ID, PREFIX SESSION_ID,
                            "2026-04-02T12:05:00+00:00", MANAGED));
    route_inspect(f, "container-456",
                  described(true, "container-456", SESSION_ID2, PREFIX SESSION_ID2,
                            "2026-04-02T12:05:00+00:00", MANAGED));
    fake_docker_route(&f->fd, "POST", "/containers/container-123/stop", 404,
                      "{\"message\":\"No such container: container-123\"}", -1);
    moat_status st;
    assert_int_equal(moat_runtime_stop_container(f->rt, "container-123", &st), MOAT_CODE_OK);
    assert_int_equal(fake_docker_count(&f->fd, "POST", "/containers/container-123/stop"), 1);
    /* A container gone between stop and remove is also fine. */
    fake_docker_route(&f->fd, "DELETE", "/containers/container-456", 404,
                      "{\"message\":\"No such container\"}", -1);
    assert_int_equal(moat_runtime_stop_container(f->rt, "container-456", &st), MOAT_CODE_OK);
    assert_int_equal(fake_docker_count(&f->fd, "DELETE", "/containers/container-456?force=1"), 1);
}

/* seed: test_runtime_stop_wraps_docker_errors */
static void test_stop_wraps_docker_errors(void **state)
{
    fx *f = *state;
    route_inspect(f, "container-123",
                  described(true, "container-123", SESSION_ID, PREFIX SESSION_ID,
                            "2026-04-02T12:05:00+00:00", MANAGED));
    fake_docker_route(&f->fd, "POST", "/stop", 500, "{\"message\":\"boom\"}", -1);
    moat_status st;
    assert_int_equal(moat_runtime_stop_container(f->rt, "container-123", &st), MOAT_CODE_INTERNAL);
    assert_string_equal(st.reason, "sandbox_stop_failed");
    assert_non_null(strstr(st.message, "boom"));
    assert_string_equal(moat_status_detail_get(&st, "docker_status"), "500");
    assert_string_equal(moat_status_detail_get(&st, "container_id"), "container-123");
    assert_int_equal(fake_docker_count(&f->fd, "DELETE", "/containers/"), 0);
}

static char *container_json(const char *id, const char *sid, const char *cid, const char *exp,
                            const char *created_iso, bool managed, const char *state)
{
    cJSON *c = cJSON_CreateObject();
    cJSON *labels = cJSON_CreateObject();
    assert_true(cJSON_AddItemToObject(c, "Id", cJSON_CreateString(id)));
    assert_true(cJSON_AddItemToObject(c, "Labels", labels));
    if (sid)
        assert_non_null(cJSON_AddStringToObject(labels, "session_id", sid));
    if (cid)
        assert_non_null(cJSON_AddStringToObject(labels, "chat_id", cid));
    if (exp)
        assert_non_null(cJSON_AddStringToObject(labels, "expires_at", exp));
    if (managed)
        assert_non_null(cJSON_AddStringToObject(labels, "moat.managed", "true"));
    if (sid) { /* the name this runtime gives its sessions */
        char name[128];
        snprintf(name, sizeof(name), "/" PREFIX "%s", sid);
        cJSON *names = cJSON_AddArrayToObject(c, "Names");
        assert_true(cJSON_AddItemToArray(names, cJSON_CreateString(name)));
    }
    assert_non_null(cJSON_AddStringToObject(c, "State", state));
    assert_non_null(cJSON_AddStringToObject(c, "Image", "sandbox:latest"));
    if (created_iso)
        assert_non_null(cJSON_AddStringToObject(c, "Created", created_iso));
    else /* 2026-04-02T12:00:00Z */
        assert_non_null(cJSON_AddNumberToObject(c, "Created", 1775131200));
    char *printed = cJSON_PrintUnformatted(c);
    cJSON_Delete(c);
    assert_non_null(printed);
    char *text = strdup(printed); /* route_list free()s it */
    cJSON_free(printed);
    return text;
}

static void route_list(fx *f, const char *url_part, char **items, size_t n)
{
    size_t total = 3;
    for (size_t i = 0; i < n; i++)
        total += strlen(items[i]) + 1;
    char *body = calloc(1, total);
    strcat(body, "[");
    for (size_t i = 0; i < n; i++) {
        if (i)
            strcat(body, ",");
        strcat(body, items[i]);
        free(items[i]);
    }
    strcat(body, "]");
    fake_docker_route(&f->fd, "GET", url_part, 200, body, -1);
    free(body);
}

static char *decoded_filters(const char *url)
{
    const char *q = strstr(url, "filters=");
    assert_non_null(q);
    q += strlen("filters=");
    size_t len = strcspn(q, "&");
    int outlen = 0;
    char *raw = curl_easy_unescape(NULL, q, (int)len, &outlen);
    char *copy = strdup(raw);
    curl_free(raw);
    return copy;
}

/* seed: test_runtime_list_active_sessions_reads_valid_labeled_containers */
static void test_list_active_skips_bad_labels(void **state)
{
    fx *f = *state;
    char *items[] = {
        container_json("container-123", SESSION_ID, CHAT_ID, "2026-04-02T12:05:00+00:00",
                       "2026-04-02T12:00:00Z", true, "running"),
        container_json("container-bad", NULL, CHAT_ID, "2026-04-02T12:05:00+00:00",
                       "2026-04-02T12:01:00Z", false, "running"),
        container_json("container-bad-uuid", "not-a-uuid", CHAT_ID, "2026-04-02T12:05:00+00:00",
                       "2026-04-02T12:01:00Z", false, "running"),
        container_json("container-bad-time", SESSION_ID2, CHAT_ID, "tomorrow",
                       "2026-04-02T12:01:00Z", false, "running"),
        container_json("container-int-created", SESSION_ID3, NON_CANONICAL_CHAT_ID,
                       "2026-04-02T12:06:00.250000+00:00", NULL, true, "running"),
    };
    route_list(f, "/containers/json", items, 5);
    moat_session *sessions = NULL;
    size_t n = 0;
    moat_status st;
    assert_int_equal(moat_runtime_list_active(f->rt, &sessions, &n, &st), MOAT_CODE_OK);
    assert_int_equal(n, 2);
    assert_string_equal(sessions[0].session_id, SESSION_ID);
    assert_string_equal(sessions[0].chat_id, CHAT_ID);
    assert_string_equal(sessions[0].container_id, "container-123");
    assert_int_equal(sessions[0].state, MOAT_SESSION_RUNNING);
    assert_int_equal(sessions[0].created_at_ms, iso("2026-04-02T12:00:00Z"));
    assert_int_equal(sessions[0].expires_at_ms, iso("2026-04-02T12:05:00+00:00"));
    assert_string_equal(sessions[1].chat_id, CHAT_ID);
    assert_int_equal(sessions[1].created_at_ms, iso("2026-04-02T12:00:00Z"));
    assert_int_equal(sessions[1].expires_at_ms, iso("2026-04-02T12:06:00.25Z"));
    free(sessions);

    /* Exactly one list call, filtered on the three labels and moat.managed=true, running
     * containers only. */
    assert_int_equal(fake_docker_count(&f->fd, "GET", "/containers/json"), 1);
    const fake_request *rq = fake_docker_find(&f->fd, "GET", "/containers/json");
    assert_null(strstr(rq->url, "all=1"));
    char *filters = decoded_filters(rq->url);
    assert_string_equal(filters, "{\"label\":[\"session_id\",\"chat_id\",\"expires_at\","
                                 "\"moat.managed=true\"]}");
    free(filters);
}

static void test_list_empty(void **state)
{
    fx *f = *state;
    moat_session *sessions = (moat_session *)1;
    size_t n = 9;
    moat_status st;
    assert_int_equal(moat_runtime_list_active(f->rt, &sessions, &n, &st), MOAT_CODE_OK);
    assert_int_equal(n, 0);
    assert_null(sessions);
}

/* An engine with userns-remap whose base no /etc/subuid range starts at: create refuses before
 * touching anything, saying why, rather than start a sandbox that cannot use its directories. */
static void test_userns_unmapped_refused(void **state)
{
    fx *f = *state;
    fake_docker_route(&f->fd, "GET", "/info", 200,
                      "{\"SecurityOptions\":[\"name=seccomp,profile=default\",\"name=userns\"],"
                      "\"DockerRootDir\":\"/var/lib/docker/4294900000.4294900000\"}",
                      -1);
    moat_session s;
    moat_status st;
    assert_int_equal(create_default(f, CHAT_ID, &s, &st), MOAT_CODE_FAILED_PRECONDITION);
    assert_string_equal(st.reason, "sandbox_start_failed");
    assert_string_equal(moat_status_detail_get(&st, "why"), "userns_unmapped");
    assert_string_equal(moat_status_detail_get(&st, "chat_id"), CHAT_ID);
    assert_non_null(strstr(st.message, "4294900000"));
    assert_int_equal(fake_docker_count(&f->fd, "POST", "/containers/create"), 0);
    char path[256];
    snprintf(path, sizeof(path), "%s/sessions/%s", f->state, SESSION_ID);
    assert_int_not_equal(access(path, F_OK), 0);

    /* A DockerRootDir that names no ids: the same refusal. */
    fake_docker_route(&f->fd, "GET", "/info", 200,
                      "{\"SecurityOptions\":[\"name=userns\"],\"DockerRootDir\":\"/srv/docker\"}",
                      -1);
    assert_int_equal(create_default(f, CHAT_ID, &s, &st), MOAT_CODE_FAILED_PRECONDITION);
    assert_non_null(strstr(st.message, "/srv/docker"));
}

static void test_docker_500_on_create(void **state)
{
    fx *f = *state;
    fake_docker_route(&f->fd, "POST", "/containers/create", 500,
                      "{\"message\":\"driver failed programming\"}", -1);
    moat_session s;
    moat_status st;
    assert_int_equal(create_default(f, CHAT_ID, &s, &st), MOAT_CODE_INTERNAL);
    assert_string_equal(st.reason, "sandbox_start_failed");
    assert_non_null(strstr(st.message, "driver failed programming"));
    assert_string_equal(moat_status_detail_get(&st, "docker_status"), "500");
    assert_string_equal(moat_status_detail_get(&st, "chat_id"), CHAT_ID);
    assert_int_equal(fake_docker_count(&f->fd, "POST", "/start"), 0);
    /* The socket dir was cleaned up; the chat workspace stays. */
    char path[256];
    snprintf(path, sizeof(path), "%s/sessions/%s", f->state, SESSION_ID);
    assert_int_not_equal(access(path, F_OK), 0);
    snprintf(path, sizeof(path), "%s/%s", f->chats, CHAT_ID);
    assert_int_equal(access(path, F_OK), 0);
}

static void test_create_image_missing_is_not_found(void **state)
{
    fx *f = *state;
    fake_docker_route(&f->fd, "POST", "/containers/create", 404,
                      "{\"message\":\"No such image: sandbox:latest\"}", -1);
    moat_session s;
    moat_status st;
    assert_int_equal(create_default(f, CHAT_ID, &s, &st), MOAT_CODE_NOT_FOUND);
    assert_string_equal(st.reason, "sandbox_start_failed");
    assert_non_null(strstr(st.message, "No such image"));
}

static void test_create_name_conflict(void **state)
{
    fx *f = *state;
    fake_docker_route(&f->fd, "POST", "/containers/create", 409,
                      "{\"message\":\"Conflict. The container name is already in use\"}", -1);
    moat_session s;
    moat_status st;
    assert_int_equal(create_default(f, CHAT_ID, &s, &st), MOAT_CODE_ALREADY_EXISTS);
    assert_string_equal(moat_status_detail_get(&st, "docker_status"), "409");
}

static void test_create_twice_keeps_the_live_session(void **state)
{
    fx *f = *state;
    moat_session s;
    moat_status st;
    assert_int_equal(create_default(f, CHAT_ID, &s, &st), MOAT_CODE_OK);
    size_t before = f->fd.request_count;
    assert_int_equal(create_default(f, CHAT_ID, &s, &st), MOAT_CODE_ALREADY_EXISTS);
    assert_string_equal(st.reason, "sandbox_start_failed");
    assert_int_equal(f->fd.request_count, before);
    /* The live session's execd socket is untouched. */
    char sock[300];
    snprintf(sock, sizeof(sock), "%s/sessions/%s/execd.sock", f->state, SESSION_ID);
    assert_int_equal(access(sock, F_OK), 0);
}

static void test_start_failure_removes_container(void **state)
{
    fx *f = *state;
    fake_docker_route(&f->fd, "POST", "/start", 500, "{\"message\":\"oci runtime error\"}", -1);
    moat_session s;
    moat_status st;
    assert_int_equal(create_default(f, CHAT_ID, &s, &st), MOAT_CODE_INTERNAL);
    assert_string_equal(st.reason, "sandbox_start_failed");
    assert_non_null(strstr(st.message, "oci runtime error"));
    assert_int_equal(fake_docker_count(&f->fd, "DELETE", "/containers/container-123?force=1"), 1);
}

/* sandbox_user = root: no --run-as, no capability added, a workspace of root's; the token stays. */
static void test_create_as_root_when_asked(void **state)
{
    fx *f = *state;
    moat_runtime_close(f->rt);
    f->cfg.sandbox_user_root = true;
    open_runtime(f);
    moat_session s;
    moat_status st;
    assert_int_equal(create_default(f, CHAT_ID, &s, &st), MOAT_CODE_OK);
    cJSON *spec = body_of(fake_docker_find(&f->fd, "POST", "/containers/create"));
    assert_int_equal(cJSON_GetArraySize(jget(spec, "Entrypoint")), 5);
    cJSON *env = jget(spec, "Env");
    assert_int_equal(cJSON_GetArraySize(env), 1);
    assert_int_equal(strncmp(jsv(cJSON_GetArrayItem(env, 0)), "EXECD_ACCESS_TOKEN=", 19), 0);
    assert_null(jget(jget(spec, "HostConfig"), "CapAdd"));
    cJSON_Delete(spec);
    char chat_dir[256];
    struct stat sb;
    snprintf(chat_dir, sizeof(chat_dir), "%s/%s", f->chats, CHAT_ID);
    assert_int_equal(stat(chat_dir, &sb), 0);
    assert_int_equal(sb.st_uid, 0);
    assert_int_equal(sb.st_mode & 07777, 0700);
}

/* Two sessions never share a token. */
static void test_tokens_differ(void **state)
{
    fx *f = *state;
    moat_session a, b;
    moat_status st;
    assert_int_equal(create_default(f, CHAT_ID, &a, &st), MOAT_CODE_OK);
    assert_int_equal(moat_runtime_create(f->rt, "0d3f6a0e-0000-4000-8000-000000000002", CHAT_ID, 0,
                                         600000, NULL, &b, &st),
                     MOAT_CODE_OK);
    assert_int_equal(strlen(a.execd_token), 64);
    assert_string_not_equal(a.execd_token, b.execd_token);
}

static void test_readiness_timeout_removes_container(void **state)
{
    fx *f = *state;
    f->fd.start_execd = false;
    moat_runtime_close(f->rt);
    f->cfg.readiness_timeout_ms = 300;
    open_runtime(f);
    moat_session s;
    moat_status st;
    assert_int_equal(create_default(f, CHAT_ID, &s, &st), MOAT_CODE_DEADLINE_EXCEEDED);
    assert_string_equal(st.reason, "sandbox_start_failed");
    assert_non_null(strstr(st.message, "/ping"));
    assert_string_equal(moat_status_detail_get(&st, "chat_id"), CHAT_ID);
    assert_int_equal(fake_docker_count(&f->fd, "DELETE", "/containers/container-123?force=1"), 1);
}

static void test_readiness_container_exited(void **state)
{
    fx *f = *state;
    f->fd.start_execd = false;
    fake_docker_route(&f->fd, "GET", "/containers/container-123/json", 200,
                      "{\"Id\":\"container-123\",\"State\":{\"Running\":false,\"ExitCode\":127}}",
                      -1);
    moat_session s;
    moat_status st;
    assert_int_equal(create_default(f, CHAT_ID, &s, &st), MOAT_CODE_UNAVAILABLE);
    assert_string_equal(st.reason, "sandbox_start_failed");
    assert_non_null(strstr(st.message, "127"));
    assert_int_equal(fake_docker_count(&f->fd, "DELETE", "/containers/container-123?force=1"), 1);
}

static void test_docker_timeout(void **state)
{
    fx *f = *state;
    moat_runtime_close(f->rt);
    f->cfg.docker_timeout_ms = 200;
    open_runtime(f);
    fake_docker_route_hold(&f->fd, "GET", "/containers/json");
    moat_session *sessions = NULL;
    size_t n = 0;
    moat_status st;
    assert_int_equal(moat_runtime_list_active(f->rt, &sessions, &n, &st), MOAT_CODE_UNAVAILABLE);
    assert_string_equal(st.reason, "docker_timeout");
    assert_null(sessions);
}

static void test_malformed_json(void **state)
{
    fx *f = *state;
    fake_docker_route(&f->fd, "GET", "/containers/json", 200, "[{\"Id\": \"abc\", ", -1);
    moat_session *sessions = NULL;
    size_t n = 0;
    moat_status st;
    assert_int_equal(moat_runtime_list_active(f->rt, &sessions, &n, &st), MOAT_CODE_INTERNAL);
    assert_string_equal(st.reason, "docker_protocol");
    /* Valid JSON of the wrong shape is also a protocol error, not a crash. */
    fake_docker_route(&f->fd, "POST", "/containers/create", 201, "[1,2,3]", -1);
    moat_session s;
    assert_int_not_equal(create_default(f, CHAT_ID, &s, &st), MOAT_CODE_OK);
    assert_string_equal(st.reason, "sandbox_start_failed");
}

/* Engine answers are parsed strictly: \u0000, a raw control character or bytes that are not
 * UTF-8 make a body "not JSON" (INTERNAL docker_protocol), as with any malformed answer. */
static void test_answer_not_strict_json_is_protocol_error(void **state)
{
    fx *f = *state;
    const char *bad[] = {
        "[{\"Id\":\"abc\\u0000def\",\"Labels\":{}}]", /* would cut the id short */
        "[{\"Id\":\"ab\x01"
        "c\",\"Labels\":{}}]",                  /* raw control character in a string */
        "[\x01{\"Id\":\"abc\",\"Labels\":{}}]", /* and between tokens */
        "[{\"Id\":\"ab\xff"
        "c\",\"Labels\":{}}]", /* not UTF-8 */
        "[{\"Id\":\"ab\xc0\xaf"
        "c\"}]", /* overlong encoding of '/' */
        "[{\"Id\":\"ab\xed\xa0\x80"
        "c\"}]", /* a UTF-16 surrogate */
        "[{\"Id\":\"ab\xe2\x82"
        "\"}]", /* cut short */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        fake_docker_route(&f->fd, "GET", "/containers/json", 200, bad[i], 1);
        moat_session *sessions = NULL;
        size_t n = 0;
        moat_status st;
        assert_int_equal(moat_runtime_list_active(f->rt, &sessions, &n, &st), MOAT_CODE_INTERNAL);
        assert_string_equal(st.reason, "docker_protocol");
        assert_null(sessions);
    }

    /* Well-formed UTF-8 (2-, 3- and 4-byte sequences) and escapes other than \u0000 pass. */
    fake_docker_route(&f->fd, "GET", "/containers/json", 200,
                      "[{\"Id\":\"container-123\",\"State\":\"running\",\"Created\":1775131200,"
                      "\"Image\":\"s\xc3\xa4nd\xe2\x82\xac\xf0\x9f\x90\xb3\\u00e9\\t\","
                      "\"Names\":[\"/" PREFIX SESSION_ID "\"],"
                      "\"Labels\":{\"session_id\":\"" SESSION_ID "\",\"chat_id\":\"" CHAT_ID "\","
                      "\"expires_at\":\"2026-04-02T12:05:00+00:00\"" MANAGED "}}]",
                      -1);
    moat_session *sessions = NULL;
    size_t n = 0;
    moat_status st;
    assert_int_equal(moat_runtime_list_active(f->rt, &sessions, &n, &st), MOAT_CODE_OK);
    assert_int_equal(n, 1);
    assert_string_equal(sessions[0].image, "s\xc3\xa4nd\xe2\x82\xac\xf0\x9f\x90\xb3\xc3\xa9\t");
    free(sessions);

    /* A create answer whose id holds \u0000 starts nothing. */
    fake_docker_route(&f->fd, "POST", "/containers/create", 201,
                      "{\"Id\":\"container-123\\u0000; rm -rf /\"}", -1);
    moat_session s;
    assert_int_equal(create_default(f, CHAT_ID, &s, &st), MOAT_CODE_INTERNAL);
    assert_string_equal(st.reason, "sandbox_start_failed");
    assert_non_null(strstr(st.message, "not JSON"));
    assert_int_equal(fake_docker_count(&f->fd, "POST", "/start"), 0);

    /* An HTTP error whose body is not strict JSON keeps its code; the raw body is the message. */
    fake_docker_route(&f->fd, "GET", "/images/", 404, "{\"message\":\"no such image\\u0000x\"}",
                      -1);
    assert_int_equal(moat_runtime_image_inspect(f->rt, "sandbox:latest", &st), MOAT_CODE_NOT_FOUND);
    assert_string_equal(st.reason, "docker_error");
    assert_non_null(strstr(st.message, "no such image\\u0000x"));
    assert_string_equal(moat_status_detail_get(&st, "docker_status"), "404");
}

/* cJSON numbers are doubles: Created must still be whole seconds whose milliseconds fit
 * int64_t, else the entry is skipped like any malformed one. */
static void test_created_must_be_whole_seconds(void **state)
{
    fx *f = *state;
    /* 9300000000000000 fits int64_t, its milliseconds do not. */
    const char *created[] = {
        "1775131200.5",   "-5",   "1e300",     "9223372036854775807", "9300000000000000",
        "\"1775131200\"", "true", "1775131200"};
    for (size_t i = 0; i < sizeof(created) / sizeof(created[0]); i++) {
        char body[512];
        snprintf(body, sizeof(body),
                 "[{\"Id\":\"container-123\",\"State\":\"running\",\"Created\":%s,"
                 "\"Names\":[\"/" PREFIX SESSION_ID "\"],"
                 "\"Labels\":{\"session_id\":\"" SESSION_ID "\",\"chat_id\":\"" CHAT_ID "\","
                 "\"expires_at\":\"2026-04-02T12:05:00+00:00\"" MANAGED "}}]",
                 created[i]);
        fake_docker_route(&f->fd, "GET", "/containers/json", 200, body, 1);
        moat_session *sessions = NULL;
        size_t n = 9;
        moat_status st;
        assert_int_equal(moat_runtime_list_active(f->rt, &sessions, &n, &st), MOAT_CODE_OK);
        bool last = i + 1 == sizeof(created) / sizeof(created[0]);
        assert_int_equal(n, last ? 1 : 0);
        if (last)
            assert_int_equal(sessions[0].created_at_ms, iso("2026-04-02T12:00:00Z"));
        free(sessions);
    }
}

/* Limits past 2^53 still reach Docker as exact integers, never as 9.007e+15. */
static void test_large_limits_are_exact_integers(void **state)
{
    fx *f = *state;
    moat_runtime_close(f->rt);
    f->cfg.max_memory_bytes = INT64_MAX;
    open_runtime(f);
    moat_session s;
    moat_status st;
    int64_t now = moat_time_now_ms();
    moat_session_options o = {.memory_bytes = 9007199254740993ll}; /* 2^53 + 1 */
    assert_int_equal(moat_runtime_create(f->rt, SESSION_ID, CHAT_ID, now, now + 1000, &o, &s, &st),
                     MOAT_CODE_OK);
    const fake_request *rq = fake_docker_find(&f->fd, "POST", "/containers/create");
    assert_non_null(rq);
    assert_non_null(strstr(rq->body, "\"Memory\":9007199254740993,"));
    assert_non_null(strstr(rq->body, "\"MemorySwap\":9007199254740993,"));
    assert_non_null(strstr(rq->body, "\"NanoCpus\":1000000000,"));
    cJSON *spec = body_of(rq);
    assert_true(cJSON_IsNumber(jget(jget(spec, "HostConfig"), "Memory")));
    cJSON_Delete(spec);
}

static void test_list_not_array(void **state)
{
    fx *f = *state;
    fake_docker_route(&f->fd, "GET", "/containers/json", 200, "{\"oops\":true}", -1);
    moat_session *sessions = NULL;
    size_t n = 0;
    moat_status st;
    assert_int_equal(moat_runtime_list_active(f->rt, &sessions, &n, &st), MOAT_CODE_INTERNAL);
    assert_string_equal(st.reason, "docker_protocol");
}

static void test_connection_cut_mid_response(void **state)
{
    fx *f = *state;
    fake_docker_route_cut(&f->fd, "GET", "/containers/json");
    moat_session *sessions = NULL;
    size_t n = 0;
    moat_status st;
    assert_int_equal(moat_runtime_list_active(f->rt, &sessions, &n, &st), MOAT_CODE_UNAVAILABLE);
    assert_string_equal(st.reason, "docker_unavailable");
}

static void test_dead_socket_unavailable(void **state)
{
    fx *f = *state;
    moat_runtime_close(f->rt);
    char dead[160];
    snprintf(dead, sizeof(dead), "%s/nobody-here.sock", f->dir);
    f->cfg.docker_host = dead;
    open_runtime(f);
    moat_session s;
    moat_status st;
    assert_int_equal(create_default(f, CHAT_ID, &s, &st), MOAT_CODE_UNAVAILABLE);
    assert_string_equal(st.reason, "sandbox_start_failed");
    assert_non_null(strstr(st.message, "nobody-here.sock"));
    assert_int_equal(moat_runtime_stop_container(f->rt, "container-123", &st),
                     MOAT_CODE_UNAVAILABLE);
    assert_string_equal(st.reason, "sandbox_stop_failed");
    size_t reaped = 7;
    assert_int_equal(moat_runtime_reap(f->rt, moat_time_now_ms(), &reaped, &st),
                     MOAT_CODE_UNAVAILABLE);
    assert_int_equal(reaped, 0);
}

static void test_version_negotiation(void **state)
{
    fx *f = *state;
    char v[16];
    moat_status st;
    snprintf(f->fd.api_version, sizeof(f->fd.api_version), "1.47");
    assert_int_equal(moat_runtime_docker_version(f->rt, v, &st), MOAT_CODE_OK);
    assert_string_equal(v, "1.44");
    assert_int_equal(moat_runtime_image_inspect(f->rt, "sandbox:latest", &st), MOAT_CODE_OK);
    assert_non_null(fake_docker_find(&f->fd, "GET", "/v1.44/images/sandbox%3Alatest/json"));
    /* Negotiated once. */
    assert_int_equal(fake_docker_count(&f->fd, "GET", "/version"), 1);

    moat_runtime_close(f->rt);
    open_runtime(f);
    snprintf(f->fd.api_version, sizeof(f->fd.api_version), "1.12");
    assert_int_equal(moat_runtime_docker_version(f->rt, v, &st), MOAT_CODE_FAILED_PRECONDITION);
    assert_string_equal(st.reason, "docker_too_old");
}

static void test_image_inspect_not_found(void **state)
{
    fx *f = *state;
    fake_docker_route(&f->fd, "GET", "/images/", 404, "{\"message\":\"No such image: nope\"}", -1);
    moat_status st;
    assert_int_equal(moat_runtime_image_inspect(f->rt, "nope", &st), MOAT_CODE_NOT_FOUND);
    assert_non_null(strstr(st.message, "No such image"));
}

static void test_invalid_ids(void **state)
{
    fx *f = *state;
    moat_session s;
    moat_status st;
    const char *bad[] = {"", "not-a-uuid", "123e4567-e89b-12d3-a456-42661417400", "../../etc",
                         "123e4567-e89b-12d3-a456-426614174000/../x"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(create_default(f, bad[i], &s, &st), MOAT_CODE_INVALID_ARGUMENT);
        assert_string_equal(moat_status_detail_get(&st, "field"), "chat_id");
        assert_non_null(strstr(st.message, "chat_id"));
    }
    assert_int_equal(create_default(f, NULL, &s, &st), MOAT_CODE_INVALID_ARGUMENT);
    assert_int_equal(moat_runtime_create(f->rt, "nope", CHAT_ID, 1, 2, NULL, &s, &st),
                     MOAT_CODE_INVALID_ARGUMENT);
    assert_string_equal(moat_status_detail_get(&st, "field"), "session_id");
    assert_int_equal(f->fd.request_count, 0);

    /* Every spelling Python's uuid.UUID accepts lands on the canonical directory. */
    const char *spellings[] = {"{123e4567-e89b-12d3-a456-426614174000}",
                               "urn:uuid:123E4567-E89B-12D3-A456-426614174000",
                               "123e4567e89b12d3a456426614174000"};
    const char *sessions[] = {SESSION_ID, SESSION_ID2, SESSION_ID3};
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(
            moat_runtime_create(f->rt, sessions[i], spellings[i], 1000, 2000, NULL, &s, &st),
            MOAT_CODE_OK);
        assert_string_equal(s.chat_id, CHAT_ID);
    }
}

static void test_image_allow_list_and_limits(void **state)
{
    fx *f = *state;
    moat_runtime_close(f->rt);
    const char *allowed[] = {"python:3.12-slim"};
    f->cfg.allowed_images = allowed;
    f->cfg.allowed_image_count = 1;
    f->cfg.read_only_rootfs = true;
    open_runtime(f);
    moat_session s;
    moat_status st;
    int64_t now = moat_time_now_ms();
    moat_session_options o = {.image = "evil:latest"};
    assert_int_equal(moat_runtime_create(f->rt, SESSION_ID, CHAT_ID, now, now + 1000, &o, &s, &st),
                     MOAT_CODE_INVALID_ARGUMENT);
    assert_string_equal(st.reason, "image_not_allowed");
    assert_string_equal(moat_status_detail_get(&st, "field"), "image");
    /* The same check, for a caller that refuses before it looks for a session to reuse. */
    assert_int_equal(moat_runtime_check_image(f->rt, "evil:latest", &st),
                     MOAT_CODE_INVALID_ARGUMENT);
    assert_string_equal(st.reason, "image_not_allowed");
    assert_int_equal(moat_runtime_check_image(f->rt, "python:3.12-slim", &st), MOAT_CODE_OK);
    assert_int_equal(moat_runtime_check_image(f->rt, f->cfg.image, &st), MOAT_CODE_OK);
    /* Names are compared whole: a prefix or another tag of an allowed image is not allowed. */
    assert_int_equal(moat_runtime_check_image(f->rt, "python:3.12", &st),
                     MOAT_CODE_INVALID_ARGUMENT);

    o = (moat_session_options){.memory_bytes = 5ll * 1024 * 1024 * 1024};
    assert_int_equal(moat_runtime_create(f->rt, SESSION_ID, CHAT_ID, now, now + 1000, &o, &s, &st),
                     MOAT_CODE_INVALID_ARGUMENT);
    assert_string_equal(moat_status_detail_get(&st, "field"), "memory_bytes");
    o = (moat_session_options){.nano_cpus = 3000000000ll};
    assert_int_equal(moat_runtime_create(f->rt, SESSION_ID, CHAT_ID, now, now + 1000, &o, &s, &st),
                     MOAT_CODE_INVALID_ARGUMENT);
    o = (moat_session_options){.pids_limit = 100000};
    assert_int_equal(moat_runtime_create(f->rt, SESSION_ID, CHAT_ID, now, now + 1000, &o, &s, &st),
                     MOAT_CODE_INVALID_ARGUMENT);
    assert_int_equal(f->fd.request_count, 0);

    o = (moat_session_options){.image = "python:3.12-slim",
                               .memory_bytes = 64ll * 1024 * 1024,
                               .nano_cpus = 500000000,
                               .pids_limit = 64};
    assert_int_equal(moat_runtime_create(f->rt, SESSION_ID, CHAT_ID, now, now + 1000, &o, &s, &st),
                     MOAT_CODE_OK);
    assert_string_equal(s.image, "python:3.12-slim");
    cJSON *spec = body_of(fake_docker_find(&f->fd, "POST", "/containers/create"));
    cJSON *host = jget(spec, "HostConfig");
    assert_string_equal(jsv(jget(spec, "Image")), "python:3.12-slim");
    assert_int_equal(jiv(jget(host, "Memory")), 64ll * 1024 * 1024);
    assert_int_equal(jiv(jget(host, "NanoCpus")), 500000000);
    assert_int_equal(jiv(jget(host, "PidsLimit")), 64);
    assert_true(cJSON_IsTrue(jget(host, "ReadonlyRootfs")));
    const char *tmpfs = jsv(jget(jget(host, "Tmpfs"), "/tmp"));
    assert_non_null(tmpfs);
    assert_non_null(strstr(tmpfs, "size=67108864"));
    cJSON_Delete(spec);
}

static int64_t store_expiry(const char *store, const char *session_id, int *renewed, int *state)
{
    sqlite3 *db;
    assert_int_equal(sqlite3_open_v2(store, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_stmt *s;
    assert_int_equal(sqlite3_prepare_v2(db,
                                        "SELECT expires_at_ms, renewed, state FROM sessions "
                                        "WHERE session_id = ?",
                                        -1, &s, NULL),
                     SQLITE_OK);
    sqlite3_bind_text(s, 1, session_id, -1, SQLITE_STATIC);
    int64_t v = -1;
    if (sqlite3_step(s) == SQLITE_ROW) {
        v = sqlite3_column_int64(s, 0);
        if (renewed)
            *renewed = sqlite3_column_int(s, 1);
        if (state)
            *state = sqlite3_column_int(s, 2);
    }
    sqlite3_finalize(s);
    sqlite3_close(db);
    return v;
}

static void test_renew_is_durable(void **state)
{
    fx *f = *state;
    int64_t now = moat_time_now_ms();
    int64_t label_exp = now + 60000;
    moat_session s;
    moat_status st;
    assert_int_equal(moat_runtime_create(f->rt, SESSION_ID, CHAT_ID, now, label_exp, NULL, &s, &st),
                     MOAT_CODE_OK);
    char exp_text[MOAT_TIME_ISO_MAX];
    moat_time_format_iso8601(label_exp, exp_text);
    char *items[] = {
        container_json("container-123", SESSION_ID, CHAT_ID, exp_text, NULL, true, "running")};
    route_list(f, "/containers/json", items, 1);

    int64_t renewed_exp = now + 3600000;
    assert_int_equal(moat_runtime_renew(f->rt, SESSION_ID, renewed_exp, &s, &st), MOAT_CODE_OK);
    assert_int_equal(s.expires_at_ms, renewed_exp);
    assert_true(s.renewed);
    /* On disk (another connection sees it) as soon as renew returned. */
    int renewed = 0;
    assert_int_equal(store_expiry(f->store, SESSION_ID, &renewed, NULL), renewed_exp);
    assert_int_equal(renewed, 1);

    /* A restarted runtime still uses the renewed expiry over the label. */
    moat_runtime_close(f->rt);
    open_runtime(f);
    assert_int_equal(moat_runtime_get(f->rt, SESSION_ID, &s, &st), MOAT_CODE_OK);
    assert_int_equal(s.expires_at_ms, renewed_exp);
    moat_session *list = NULL;
    size_t n = 0;
    assert_int_equal(moat_runtime_list_active(f->rt, &list, &n, &st), MOAT_CODE_OK);
    assert_int_equal(n, 1);
    assert_int_equal(list[0].expires_at_ms, renewed_exp);
    free(list);
    /* Past the label's expiry but before the renewed one: the reaper leaves it alone. */
    size_t reaped = 9;
    assert_int_equal(moat_runtime_reap(f->rt, label_exp + 1000, &reaped, &st), MOAT_CODE_OK);
    assert_int_equal(reaped, 0);
    assert_int_equal(fake_docker_count(&f->fd, "POST", "/stop"), 0);
    assert_int_equal(moat_runtime_reap(f->rt, renewed_exp + 1, &reaped, &st), MOAT_CODE_OK);
    assert_int_equal(reaped, 1);

    /* Bad renewals. */
    assert_int_equal(moat_runtime_renew(f->rt, SESSION_ID, now - 1, NULL, &st),
                     MOAT_CODE_INVALID_ARGUMENT);
    assert_int_equal(moat_runtime_renew(f->rt, "zzz", now + 1000, NULL, &st),
                     MOAT_CODE_INVALID_ARGUMENT);
}

static void test_renew_unknown_session(void **state)
{
    fx *f = *state;
    moat_status st;
    assert_int_equal(moat_runtime_renew(f->rt, SESSION_ID, moat_time_now_ms() + 10000, NULL, &st),
                     MOAT_CODE_NOT_FOUND);
    const fake_request *rq = fake_docker_find(&f->fd, "GET", "/containers/json");
    char *filters = decoded_filters(rq->url);
    assert_string_equal(filters, "{\"label\":[\"session_id=" SESSION_ID
                                 "\",\"chat_id\",\"expires_at\",\"moat.managed=true\"]}");
    free(filters);
}

static void test_reaper_removes_only_expired_managed(void **state)
{
    fx *f = *state;
    int64_t now = iso("2026-04-02T13:00:00Z");
    char *items[] = {
        container_json("c-expired", SESSION_ID, CHAT_ID, "2026-04-02T12:05:00+00:00", NULL, true,
                       "running"),
        container_json("c-live", SESSION_ID2, CHAT_ID, "2026-04-02T14:00:00+00:00", NULL, true,
                       "running"),
        container_json("c-badlabels", "nope", CHAT_ID, "2026-04-02T12:05:00+00:00", NULL, true,
                       "running"),
        container_json("c-notmoat", SESSION_ID3, CHAT_ID, "2026-04-02T12:05:00+00:00", NULL, false,
                       "running"),
        /* Another (scoped) runtime's sandbox: an unscoped runtime owns only unscoped ones. */
        "{\"Id\":\"c-other-instance\",\"Created\":1775131200,\"State\":\"running\","
        "\"Labels\":{\"session_id\":\"" SESSION_ID3 "\",\"chat_id\":\"" CHAT_ID "\","
        "\"expires_at\":\"2026-04-02T12:05:00+00:00\",\"moat.managed\":\"true\","
        "\"moat.instance\":\"blue\"}}",
    };
    items[4] = strdup(items[4]);
    route_list(f, "/containers/json", items, 5);
    /* The expired session's chat workspace, with a file in it, which the reap must leave. */
    char chat_file[256];
    snprintf(chat_file, sizeof(chat_file), "%s/%s", f->chats, CHAT_ID);
    assert_int_equal(mkdir(chat_file, 0755), 0);
    strcat(chat_file, "/kept");
    FILE *kept = fopen(chat_file, "w");
    assert_non_null(kept);
    assert_int_equal(fclose(kept), 0);
    size_t reaped = 0;
    moat_status st;
    assert_int_equal(moat_runtime_reap(f->rt, now, &reaped, &st), MOAT_CODE_OK);
    assert_int_equal(reaped, 1);
    assert_int_equal(fake_docker_count(&f->fd, "POST", "/containers/c-expired/stop"), 1);
    assert_int_equal(fake_docker_count(&f->fd, "DELETE", "/containers/c-expired"), 1);
    assert_int_equal(fake_docker_count(&f->fd, "POST", "/stop"), 1);
    assert_int_equal(fake_docker_count(&f->fd, "DELETE", "/containers/"), 1);

    const fake_request *rq = fake_docker_find(&f->fd, "GET", "/containers/json");
    assert_non_null(strstr(rq->url, "all=1"));
    char *filters = decoded_filters(rq->url);
    assert_string_equal(filters, "{\"label\":[\"session_id\",\"chat_id\",\"expires_at\","
                                 "\"moat.managed=true\"]}");
    free(filters);

    moat_session s;
    fake_docker_route(&f->fd, "GET", "session_id%3D" SESSION_ID, 200, "[]", -1);
    assert_int_equal(moat_runtime_get(f->rt, SESSION_ID, &s, &st), MOAT_CODE_OK);
    assert_int_equal(s.state, MOAT_SESSION_EXPIRED);
    assert_string_equal(s.end_reason, "ttl");
    assert_true(s.ended_at_ms > 0);
    /* The chat workspace is never removed by expiry. */
    assert_int_equal(access(chat_file, F_OK), 0);
}

static void test_reaper_failure_retries(void **state)
{
    fx *f = *state;
    char *items[] = {container_json("c-expired", SESSION_ID, CHAT_ID, "2026-04-02T12:05:00+00:00",
                                    NULL, true, "running")};
    route_list(f, "/containers/json", items, 1);
    fake_docker_route(&f->fd, "POST", "/stop", 500, "{\"message\":\"device busy\"}", 1);
    size_t reaped = 0;
    moat_status st;
    int64_t now = iso("2026-04-02T13:00:00Z");
    assert_int_equal(moat_runtime_reap(f->rt, now, &reaped, &st), MOAT_CODE_INTERNAL);
    assert_string_equal(st.reason, "sandbox_stop_failed");
    assert_int_equal(reaped, 0);
    /* The claim was released, so the next sweep retries and succeeds. */
    assert_int_equal(moat_runtime_reap(f->rt, now, &reaped, &st), MOAT_CODE_OK);
    assert_int_equal(reaped, 1);
}

static void test_reconcile(void **state)
{
    fx *f = *state;
    int64_t now = iso("2026-04-02T13:00:00Z");
    /* Session 1 renewed in a previous life: label expired, store expiry in the future. */
    moat_session s;
    moat_status st;
    int64_t created = iso("2026-04-02T12:00:00Z");
    char *adopt_items[] = {container_json("container-123", SESSION_ID, CHAT_ID,
                                          "2026-04-02T12:05:00+00:00", NULL, true, "running")};
    assert_int_equal(moat_runtime_create(f->rt, SESSION_ID, CHAT_ID, created,
                                         iso("2026-04-02T12:05:00Z"), NULL, &s, &st),
                     MOAT_CODE_OK);
    route_list(f, "session_id%3D" SESSION_ID, adopt_items, 1);
    assert_int_equal(moat_runtime_renew(f->rt, SESSION_ID, moat_time_now_ms() + 3600000, NULL, &st),
                     MOAT_CODE_OK);
    int64_t renewed_exp = store_expiry(f->store, SESSION_ID, NULL, NULL);
    /* Session 2: in the store, but its container vanished. */
    fake_docker_route(&f->fd, "POST", "/containers/create", 201, "{\"Id\":\"container-222\"}", 1);
    assert_int_equal(moat_runtime_create(f->rt, SESSION_ID2, CHAT_ID, created,
                                         iso("2026-04-02T14:00:00Z"), NULL, &s, &st),
                     MOAT_CODE_OK);
    moat_runtime_close(f->rt);
    open_runtime(f);

    char *items[] = {
        container_json("container-123", SESSION_ID, CHAT_ID, "2026-04-02T12:05:00+00:00", NULL,
                       true, "running"),
        container_json("container-333", SESSION_ID3, CHAT_ID, "2026-04-02T12:30:00+00:00", NULL,
                       true, "running"),
        container_json("container-bad", "x", CHAT_ID, "2026-04-02T12:30:00+00:00", NULL, true,
                       "running"),
    };
    route_list(f, "all=1&filters", items, 3);
    moat_reconcile_report rep;
    assert_int_equal(moat_runtime_reconcile(f->rt, now, &rep, &st), MOAT_CODE_OK);
    assert_int_equal(rep.adopted, 1);
    assert_int_equal(rep.reaped, 1);
    assert_int_equal(rep.gone, 1);
    assert_int_equal(rep.skipped, 1);
    assert_int_equal(fake_docker_count(&f->fd, "POST", "/containers/container-333/stop"), 1);
    assert_int_equal(fake_docker_count(&f->fd, "POST", "/containers/container-123/stop"), 0);
    assert_int_equal(fake_docker_count(&f->fd, "POST", "/containers/container-bad"), 0);
    assert_int_equal(fake_docker_count(&f->fd, "DELETE", "/containers/container-bad"), 0);
    int state2 = -1, state3 = -1;
    store_expiry(f->store, SESSION_ID2, NULL, &state2);
    assert_int_equal(state2, MOAT_SESSION_GONE);
    assert_int_equal(store_expiry(f->store, SESSION_ID3, NULL, &state3),
                     iso("2026-04-02T12:30:00Z"));
    assert_int_equal(state3, MOAT_SESSION_EXPIRED);
    int renewed = 0, state1 = -1;
    assert_int_equal(store_expiry(f->store, SESSION_ID, &renewed, &state1), renewed_exp);
    assert_int_equal(renewed, 1);
    assert_int_equal(state1, MOAT_SESSION_RUNNING);
}

static void test_stop_session_keeps_workspace(void **state)
{
    fx *f = *state;
    moat_session s;
    moat_status st;
    assert_int_equal(create_default(f, CHAT_ID, &s, &st), MOAT_CODE_OK);
    char file[256];
    snprintf(file, sizeof(file), "%s/%s/notes.txt", f->chats, CHAT_ID);
    FILE *fp = fopen(file, "w");
    assert_non_null(fp);
    fputs("keep me", fp);
    fclose(fp);
    /* The store's container id, inspected and found to be this runtime's: no list call. */
    assert_int_equal(moat_runtime_stop(f->rt, SESSION_ID, &st), MOAT_CODE_OK);
    assert_int_equal(fake_docker_count(&f->fd, "GET", "/containers/container-123/json"), 1);
    assert_int_equal(fake_docker_count(&f->fd, "GET", "/containers/json"), 0);
    assert_int_equal(fake_docker_count(&f->fd, "POST", "/containers/container-123/stop?t=2"), 1);
    assert_int_equal(fake_docker_count(&f->fd, "DELETE", "/containers/container-123?force=1"), 1);
    assert_int_equal(access(file, F_OK), 0);
    int st_state = -1;
    store_expiry(f->store, SESSION_ID, NULL, &st_state);
    assert_int_equal(st_state, MOAT_SESSION_STOPPED);
    /* Stop is idempotent: the container is gone now. */
    fake_docker_route(&f->fd, "GET", "session_id%3D" SESSION_ID2, 200, "[]", -1);
    assert_int_equal(moat_runtime_stop(f->rt, SESSION_ID2, &st), MOAT_CODE_OK);
}

static void test_get_not_found(void **state)
{
    fx *f = *state;
    moat_session s;
    moat_status st;
    assert_int_equal(moat_runtime_get(f->rt, SESSION_ID, &s, &st), MOAT_CODE_NOT_FOUND);
    assert_string_equal(moat_status_detail_get(&st, "session_id"), SESSION_ID);
}

static void test_config_validation(void **state)
{
    fx *f = *state;
    moat_runtime_config c = f->cfg;
    moat_status st;
    assert_int_equal(moat_runtime_config_validate(&c, &st), MOAT_CODE_OK);
    c.sandbox_uid = 0; /* root only when asked for by name */
    assert_int_equal(moat_runtime_config_validate(&c, &st), MOAT_CODE_INVALID_ARGUMENT);
    assert_string_equal(moat_status_detail_get(&st, "setting"), "sandbox_user");
    c.sandbox_user_root = true;
    assert_int_equal(moat_runtime_config_validate(&c, &st), MOAT_CODE_OK);
    c = f->cfg;
    c.chats_root = "relative/chats";
    assert_int_equal(moat_runtime_config_validate(&c, &st), MOAT_CODE_INVALID_ARGUMENT);
    assert_string_equal(moat_status_detail_get(&st, "setting"), "chats_root");
    assert_non_null(strstr(st.message, "chats_root"));
    c = f->cfg;
    c.dependencies_host_path = "/nonexistent/moat/deps";
    assert_int_equal(moat_runtime_config_validate(&c, &st), MOAT_CODE_INVALID_ARGUMENT);
    assert_string_equal(moat_status_detail_get(&st, "setting"), "dependencies_host_path");
    assert_null(moat_runtime_open(&c, &st));
    assert_string_equal(moat_status_detail_get(&st, "setting"), "dependencies_host_path");
    c = f->cfg;
    c.execd_bundle_dir = "bundle";
    assert_int_equal(moat_runtime_config_validate(&c, &st), MOAT_CODE_INVALID_ARGUMENT);
    assert_string_equal(moat_status_detail_get(&st, "setting"), "execd_bundle_dir");
    c = f->cfg;
    c.docker_host = "docker.sock";
    assert_int_equal(moat_runtime_config_validate(&c, &st), MOAT_CODE_INVALID_ARGUMENT);
    assert_string_equal(moat_status_detail_get(&st, "setting"), "docker_host");
    c = f->cfg;
    c.docker_host = "tcp://127.0.0.1:2376";
    c.docker_tls_cert = "/nonexistent/cert.pem";
    c.docker_tls_key = "/nonexistent/key.pem";
    assert_int_equal(moat_runtime_config_validate(&c, &st), MOAT_CODE_INVALID_ARGUMENT);
    assert_string_equal(moat_status_detail_get(&st, "setting"), "docker_tls_cert");
    c = f->cfg;
    c.default_memory_bytes = c.max_memory_bytes + 1;
    assert_int_equal(moat_runtime_config_validate(&c, &st), MOAT_CODE_INVALID_ARGUMENT);
    c = f->cfg;
    c.chat_mount_path = "/run/moat";
    assert_int_equal(moat_runtime_config_validate(&c, &st), MOAT_CODE_INVALID_ARGUMENT);
    assert_string_equal(moat_status_detail_get(&st, "setting"), "chat_mount_path");
    c = f->cfg;
    c.store_path = "state.db";
    assert_int_equal(moat_runtime_config_validate(&c, &st), MOAT_CODE_INVALID_ARGUMENT);
    assert_string_equal(moat_status_detail_get(&st, "setting"), "store_path");
    /* A '/' would make names Docker lists as link aliases; only Docker's name characters. */
    const char *bad_prefixes[] = {"moat/", "moat x-", NULL};
    for (size_t i = 0; i < 3; i++) {
        c = f->cfg;
        c.container_name_prefix = bad_prefixes[i];
        assert_int_equal(moat_runtime_config_validate(&c, &st), MOAT_CODE_INVALID_ARGUMENT);
        assert_string_equal(moat_status_detail_get(&st, "setting"), "container_name_prefix");
    }
    /* Images must be references Docker could name: a typo in the list is refused at start. */
    const char *long_image = "a234567890123456789012345678901234567890123456789012345678901234"
                             "a234567890123456789012345678901234567890123456789012345678901234"
                             "a234567890123456789012345678901234567890123456789012345678901234"
                             "a234567890123456789012345678901234567890123456789012345678901234";
    const char *bad_images[] = {"", "moat sandbox", "a;b", "-x", long_image};
    for (size_t i = 0; i < sizeof(bad_images) / sizeof(bad_images[0]); i++) {
        c = f->cfg;
        c.image = bad_images[i];
        assert_int_equal(moat_runtime_config_validate(&c, &st), MOAT_CODE_INVALID_ARGUMENT);
        assert_string_equal(moat_status_detail_get(&st, "setting"), "image");
        c = f->cfg;
        const char *list[] = {"moat-sandbox:latest", bad_images[i]};
        c.allowed_images = list;
        c.allowed_image_count = 2;
        assert_int_equal(moat_runtime_config_validate(&c, &st), MOAT_CODE_INVALID_ARGUMENT);
        assert_string_equal(moat_status_detail_get(&st, "setting"), "allowed_images");
    }
    c = f->cfg;
    const char *good[] = {"moat-sandbox:latest", "registry.local:5000/team/py:3.12",
                          "debian@sha256:0123abcd"};
    c.allowed_images = good;
    c.allowed_image_count = 3;
    assert_int_equal(moat_runtime_config_validate(&c, &st), MOAT_CODE_OK);
}

typedef struct hook_counts {
    int docker_calls;
    int created;
    int spans_started;
    int spans_ended;
} hook_counts;

static void on_docker(void *ctx, const char *op, long http, moat_code code, uint64_t ns)
{
    (void)op;
    (void)http;
    (void)code;
    (void)ns;
    ((hook_counts *)ctx)->docker_calls++;
}

static void on_session(void *ctx, const char *event, const char *sid, moat_code code, uint64_t ns)
{
    (void)sid;
    (void)ns;
    if (strcmp(event, "created") == 0 && code == MOAT_CODE_OK)
        ((hook_counts *)ctx)->created++;
}

static void *on_span_start(void *ctx, const char *name, const char *sid)
{
    (void)name;
    (void)sid;
    ((hook_counts *)ctx)->spans_started++;
    return ctx;
}

static void on_span_end(void *ctx, void *span, const moat_status *st)
{
    (void)st;
    assert_ptr_equal(ctx, span);
    ((hook_counts *)ctx)->spans_ended++;
}

static void test_hooks(void **state)
{
    fx *f = *state;
    hook_counts h = {0};
    moat_runtime_close(f->rt);
    f->cfg.metrics =
        (moat_runtime_metrics){.ctx = &h, .docker_call = on_docker, .session_event = on_session};
    f->cfg.tracer =
        (moat_runtime_tracer){.ctx = &h, .span_start = on_span_start, .span_end = on_span_end};
    open_runtime(f);
    moat_session s;
    moat_status st;
    assert_int_equal(create_default(f, CHAT_ID, &s, &st), MOAT_CODE_OK);
    assert_int_equal(h.created, 1);
    assert_true(h.docker_calls >= 3);
    assert_int_equal(h.spans_started, 1);
    assert_int_equal(h.spans_ended, 1);
}

static void test_reaper_thread_runs(void **state)
{
    fx *f = *state;
    moat_runtime_close(f->rt);
    f->cfg.cleanup_interval_seconds = 1;
    open_runtime(f);
    char *items[] = {container_json("c-expired", SESSION_ID, CHAT_ID, "2026-04-02T12:05:00+00:00",
                                    NULL, true, "running")};
    route_list(f, "/containers/json", items, 1);
    moat_status st;
    assert_int_equal(moat_runtime_start_reaper(f->rt, &st), MOAT_CODE_OK);
    assert_int_equal(moat_runtime_start_reaper(f->rt, &st), MOAT_CODE_FAILED_PRECONDITION);
    /* Wait (bounded) for one sweep to have removed the container. */
    for (int i = 0; i < 50 && fake_docker_count(&f->fd, "DELETE", "/containers/c-expired") == 0;
         i++)
        usleep(100000);
    moat_runtime_stop_reaper(f->rt);
    assert_int_equal(fake_docker_count(&f->fd, "DELETE", "/containers/c-expired"), 1);
}

static void test_instance_scoping(void **state)
{
    fx *f = *state;
    moat_runtime_close(f->rt);
    f->cfg.instance = "blue";
    open_runtime(f);
    moat_session s;
    moat_status st;
    assert_int_equal(create_default(f, CHAT_ID, &s, &st), MOAT_CODE_OK);
    cJSON *spec = body_of(fake_docker_find(&f->fd, "POST", "/containers/create"));
    assert_string_equal(jsv(jget(jget(spec, "Labels"), "moat.instance")), "blue");
    cJSON_Delete(spec);

    /* A container of another instance that Docker returns anyway is never reaped. */
    char *green = container_json("c-green", SESSION_ID2, CHAT_ID, "2026-04-02T12:05:00+00:00", NULL,
                                 true, "running");
    route_list(f, "/containers/json", &green, 1);
    size_t reaped = 9;
    assert_int_equal(moat_runtime_reap(f->rt, iso("2026-04-02T13:00:00Z"), &reaped, &st),
                     MOAT_CODE_OK);
    assert_int_equal(reaped, 0);
    assert_int_equal(fake_docker_count(&f->fd, "POST", "/stop"), 0);
    char *filters = decoded_filters(fake_docker_find(&f->fd, "GET", "/containers/json")->url);
    assert_string_equal(filters, "{\"label\":[\"session_id\",\"chat_id\",\"expires_at\","
                                 "\"moat.managed=true\",\"moat.instance=blue\"]}");
    free(filters);

    moat_runtime_config c = f->cfg;
    c.instance = "bad instance!";
    assert_int_equal(moat_runtime_config_validate(&c, &st), MOAT_CODE_INVALID_ARGUMENT);
    assert_string_equal(moat_status_detail_get(&st, "setting"), "instance");
}

/* ---- containers that are not this runtime's ------------------------------------------------ */

/* stderr, where moat_log writes, goes to a file between these two calls. No assertion may run in
 * between: a failing one would leave stderr redirected. */
static int stderr_to_file(char *path)
{
    fflush(stderr);
    int saved = dup(2);
    int fd = mkstemp(path);
    assert_true(saved >= 0 && fd >= 0);
    dup2(fd, 2);
    close(fd);
    return saved;
}

/* Restores stderr and returns what was written meanwhile (malloc'd). */
static char *stderr_back(int saved, const char *path)
{
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    FILE *fp = fopen(path, "r");
    assert_non_null(fp);
    size_t cap = 1 << 20, len = 0, n;
    char *text = calloc(1, cap);
    while ((n = fread(text + len, 1, cap - 1 - len, fp)) > 0)
        len += n;
    fclose(fp);
    unlink(path);
    return text;
}

static size_t occurrences(const char *text, const char *needle)
{
    size_t n = 0;
    for (const char *p = strstr(text, needle); p != NULL; p = strstr(p + 1, needle))
        n++;
    return n;
}

typedef struct spoof {
    const char *what;
    const char *name;   /* Docker's name, without the leading '/' */
    const char *labels; /* label members after the three session labels */
} spoof;

/* A legitimate session (SESSION_ID in c-legit, labelled legit_labels, expiring at 14:00) and a
 * spoof (SESSION_ID2 in spoof_id, its session labels expired at 12:05) on a fresh fake engine.
 * Every entry point is aimed at the spoof, and then the time is 13:00: the spoof is never
 * listed, found, adopted, renewed, killed, stopped or removed, and is logged exactly once;
 * the legitimate session is listed, adopted and left running. */
static void assert_spoof_left_alone(fx *f, const char *legit_labels, const spoof *sp,
                                    const char *spoof_id)
{
    fake_docker_stop(&f->fd);
    assert_int_equal(fake_docker_start(&f->fd, f->sock), 0);
    const char *live = "2026-04-02T14:00:00+00:00", *expired = "2026-04-02T12:05:00+00:00";
    char *all[] = {described(false, "c-legit", SESSION_ID, PREFIX SESSION_ID, live, legit_labels),
                   described(false, spoof_id, SESSION_ID2, sp->name, expired, sp->labels)};
    char *legit[] = {
        described(false, "c-legit", SESSION_ID, PREFIX SESSION_ID, live, legit_labels)};
    char *spoofed[] = {described(false, spoof_id, SESSION_ID2, sp->name, expired, sp->labels)};
    route_list(f, "/containers/json", all, 2);
    route_list(f, "session_id%3D" SESSION_ID "%22", legit, 1);
    route_list(f, "session_id%3D" SESSION_ID2 "%22", spoofed, 1);
    route_inspect(f, spoof_id,
                  described(true, spoof_id, SESSION_ID2, sp->name, expired, sp->labels));
    int64_t now = iso("2026-04-02T13:00:00Z");

    char log_path[] = "/tmp/moat-rt-log-XXXXXX";
    int saved = stderr_to_file(log_path);
    moat_session *list = NULL, s;
    size_t n = 0, reaped[3] = {9, 9, 9};
    moat_status list_st, get_st, renew_st, kill_st, stop_st, stop_id_st, rec_st, reap_st[3];
    moat_code list_code = moat_runtime_list_active(f->rt, &list, &n, &list_st);
    moat_code get_code = moat_runtime_get(f->rt, SESSION_ID2, &s, &get_st);
    moat_code renew_code =
        moat_runtime_renew(f->rt, SESSION_ID2, moat_time_now_ms() + 60000, NULL, &renew_st);
    moat_code kill_code = moat_runtime_kill(f->rt, SESSION_ID2, "KILL", &kill_st);
    moat_code stop_code = moat_runtime_stop(f->rt, SESSION_ID2, &stop_st);
    moat_code stop_id_code = moat_runtime_stop_container(f->rt, spoof_id, &stop_id_st);
    moat_reconcile_report rep;
    moat_code rec_code = moat_runtime_reconcile(f->rt, now, &rep, &rec_st);
    moat_code reap_code[3];
    for (int i = 0; i < 3; i++)
        reap_code[i] = moat_runtime_reap(f->rt, now, &reaped[i], &reap_st[i]);
    char *log = stderr_back(saved, log_path);

    print_message("spoof: %s\n", sp->what);
    assert_int_equal(list_code, MOAT_CODE_OK);
    assert_int_equal(n, 1);
    assert_string_equal(list[0].session_id, SESSION_ID);
    free(list);
    assert_int_equal(get_code, MOAT_CODE_NOT_FOUND);
    assert_string_equal(get_st.reason, "session_not_found");
    assert_int_equal(renew_code, MOAT_CODE_NOT_FOUND);
    assert_string_equal(renew_st.reason, "session_not_found");
    assert_int_equal(kill_code, MOAT_CODE_NOT_FOUND);
    /* Nothing of this runtime's to stop: success, as for a container already gone. */
    assert_int_equal(stop_code, MOAT_CODE_OK);
    assert_int_equal(stop_id_code, MOAT_CODE_PERMISSION_DENIED);
    assert_string_equal(stop_id_st.reason, "container_not_owned");
    assert_string_equal(moat_status_detail_get(&stop_id_st, "container_id"), spoof_id);
    assert_int_equal(rec_code, MOAT_CODE_OK);
    assert_int_equal(rep.adopted, 1);
    assert_int_equal(rep.reaped, 0);
    assert_int_equal(rep.skipped, 1);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(reap_code[i], MOAT_CODE_OK);
        assert_int_equal(reaped[i], 0);
    }
    /* Docker was only ever asked to read it. */
    assert_int_equal(fake_docker_count(&f->fd, "POST", spoof_id), 0);
    assert_int_equal(fake_docker_count(&f->fd, "DELETE", spoof_id), 0);
    assert_int_equal(fake_docker_count(&f->fd, "POST", "/containers/c-legit/"), 0);
    assert_int_equal(fake_docker_count(&f->fd, "DELETE", "/containers/c-legit"), 0);
    char line[96];
    snprintf(line, sizeof(line), "event=foreign_container_ignored container_id=%.12s ", spoof_id);
    if (occurrences(log, line) != 1)
        fail_msg("%s: want one \"%s\" line in:\n%s", sp->what, line, log);
    free(log);
    assert_int_equal(moat_runtime_get(f->rt, SESSION_ID, &s, &get_st), MOAT_CODE_OK);
    assert_int_equal(s.state, MOAT_SESSION_RUNNING);
    assert_string_equal(s.container_id, "c-legit");
}

/* A runtime without an instance owns only managed containers with no moat.instance label, named
 * prefix + session id. Labels alone, however complete, prove nothing. */
static void test_spoofs_left_alone_without_instance(void **state)
{
    fx *f = *state;
    const spoof spoofs[] = {
        {"the three seed labels only", PREFIX SESSION_ID2, ""},
        {"moat.managed=false", PREFIX SESSION_ID2, ",\"moat.managed\":\"false\""},
        {"managed, name without the prefix", "evil-" SESSION_ID2, MANAGED},
        {"managed, the prefix with another session id", PREFIX SESSION_ID3, MANAGED},
        {"managed, the right name only as a link alias", "other/" PREFIX SESSION_ID2, MANAGED},
        {"managed, another instance's label", PREFIX SESSION_ID2,
         MANAGED ",\"moat.instance\":\"blue\""},
        {"managed, an empty moat.instance label", PREFIX SESSION_ID2,
         MANAGED ",\"moat.instance\":\"\""},
    };
    for (size_t i = 0; i < sizeof(spoofs) / sizeof(spoofs[0]); i++) {
        char id[32];
        snprintf(id, sizeof(id), "c-spoof-%zu", i);
        assert_spoof_left_alone(f, MANAGED, &spoofs[i], id);
    }
}

#define LONG_INSTANCE "i23456789012345678901234567890123456789012345678901234567890123"

/* A runtime with an instance owns only containers labelled with it. The instance here has the
 * longest length allowed, so a longer label that starts with it is seen whole. */
static void test_spoofs_left_alone_with_instance(void **state)
{
    fx *f = *state;
    moat_runtime_close(f->rt);
    f->cfg.instance = LONG_INSTANCE;
    open_runtime(f);
    const char *mine = MANAGED ",\"moat.instance\":\"" LONG_INSTANCE "\"";
    const spoof spoofs[] = {
        {"the three seed labels and the instance, not managed", PREFIX SESSION_ID2,
         ",\"moat.instance\":\"" LONG_INSTANCE "\""},
        {"managed, another instance's label", PREFIX SESSION_ID2,
         MANAGED ",\"moat.instance\":\"green\""},
        {"managed, no moat.instance label", PREFIX SESSION_ID2, MANAGED},
        {"managed, a longer label that starts with this instance", PREFIX SESSION_ID2,
         MANAGED ",\"moat.instance\":\"" LONG_INSTANCE "4\""},
        {"managed, this instance, name without the prefix", "evil-" SESSION_ID2, mine},
    };
    for (size_t i = 0; i < sizeof(spoofs) / sizeof(spoofs[0]); i++) {
        char id[32];
        snprintf(id, sizeof(id), "c-spoof-%zu", i);
        assert_spoof_left_alone(f, mine, &spoofs[i], id);
    }
    char *filters = decoded_filters(fake_docker_find(&f->fd, "GET", "/containers/json")->url);
    assert_string_equal(filters, "{\"label\":[\"session_id\",\"chat_id\",\"expires_at\","
                                 "\"moat.managed=true\",\"moat.instance=" LONG_INSTANCE "\"]}");
    free(filters);
}

/* A spoof carrying a live session's id next to the real container: every path picks the real
 * one and never touches the spoof. */
static void test_spoof_with_a_live_session_id(void **state)
{
    fx *f = *state;
    moat_session s;
    moat_status st;
    assert_int_equal(create_default(f, CHAT_ID, &s, &st), MOAT_CODE_OK);
    const char *exp = "2026-04-02T12:05:00+00:00";
    /* The spoof comes last and runs, so a pick of "the running one" without the check is it. */
    char *both[] = {described(false, "container-123", SESSION_ID, PREFIX SESSION_ID, exp, MANAGED),
                    described(false, "c-twin", SESSION_ID, "evil-" SESSION_ID, exp, MANAGED)};
    char *both2[] = {described(false, "container-123", SESSION_ID, PREFIX SESSION_ID, exp, MANAGED),
                     described(false, "c-twin", SESSION_ID, "evil-" SESSION_ID, exp, MANAGED)};
    route_list(f, "/containers/json", both, 2);
    route_list(f, "session_id%3D" SESSION_ID, both2, 2);
    moat_session *list = NULL;
    size_t n = 0;
    assert_int_equal(moat_runtime_list_active(f->rt, &list, &n, &st), MOAT_CODE_OK);
    assert_int_equal(n, 1);
    assert_string_equal(list[0].container_id, "container-123");
    free(list);
    assert_int_equal(moat_runtime_get(f->rt, SESSION_ID, &s, &st), MOAT_CODE_OK);
    assert_string_equal(s.container_id, "container-123");
    assert_int_equal(moat_runtime_renew(f->rt, SESSION_ID, moat_time_now_ms() + 60000, &s, &st),
                     MOAT_CODE_OK);
    assert_string_equal(s.container_id, "container-123");
    assert_int_equal(moat_runtime_kill(f->rt, SESSION_ID, "KILL", &st), MOAT_CODE_OK);
    assert_int_equal(fake_docker_count(&f->fd, "POST", "/containers/container-123/kill"), 1);
    assert_int_equal(moat_runtime_stop(f->rt, SESSION_ID, &st), MOAT_CODE_OK);
    assert_int_equal(fake_docker_count(&f->fd, "DELETE", "/containers/container-123?"), 1);
    assert_int_equal(moat_runtime_reap(f->rt, iso("2026-04-02T13:00:00Z"), NULL, &st),
                     MOAT_CODE_OK);
    assert_int_equal(fake_docker_count(&f->fd, "POST", "c-twin"), 0);
    assert_int_equal(fake_docker_count(&f->fd, "DELETE", "c-twin"), 0);
}

/* A store row is only a hint: the container it names is inspected and checked again before a
 * stop, so a row left by a runtime configured otherwise (here another instance, on the same
 * store) cannot make this one stop that runtime's container. */
static void test_store_row_checked_before_stop(void **state)
{
    fx *f = *state;
    moat_runtime_close(f->rt);
    f->cfg.instance = "blue";
    open_runtime(f);
    moat_session s;
    moat_status st;
    assert_int_equal(create_default(f, CHAT_ID, &s, &st), MOAT_CODE_OK);
    moat_runtime_close(f->rt);
    f->cfg.instance = "green";
    open_runtime(f);
    /* The fake's inspect of container-123 still shows moat.instance=blue. */
    assert_int_equal(moat_runtime_renew(f->rt, SESSION_ID, moat_time_now_ms() + 60000, NULL, &st),
                     MOAT_CODE_NOT_FOUND);
    assert_int_equal(moat_runtime_kill(f->rt, SESSION_ID, "KILL", &st), MOAT_CODE_NOT_FOUND);
    assert_int_equal(moat_runtime_stop(f->rt, SESSION_ID, &st), MOAT_CODE_OK);
    assert_int_equal(fake_docker_count(&f->fd, "GET", "/containers/container-123/json"), 1);
    assert_int_equal(moat_runtime_stop_container(f->rt, "container-123", &st),
                     MOAT_CODE_PERMISSION_DENIED);
    assert_int_equal(fake_docker_count(&f->fd, "POST", "/containers/container-123/stop"), 0);
    assert_int_equal(fake_docker_count(&f->fd, "POST", "/containers/container-123/kill"), 0);
    assert_int_equal(fake_docker_count(&f->fd, "DELETE", "/containers/container-123"), 0);

    /* A row whose container now carries another session's labels is not stopped either. */
    moat_runtime_close(f->rt);
    f->cfg.instance = "blue";
    open_runtime(f);
    assert_int_equal(moat_runtime_create(f->rt, SESSION_ID3, CHAT_ID, 1000, 2000, NULL, &s, &st),
                     MOAT_CODE_OK);
    route_inspect(f, "container-123",
                  described(true, "container-123", SESSION_ID2, PREFIX SESSION_ID2,
                            "2026-04-02T12:05:00+00:00", MANAGED ",\"moat.instance\":\"blue\""));
    assert_int_equal(moat_runtime_stop(f->rt, SESSION_ID3, &st), MOAT_CODE_OK);
    assert_int_equal(fake_docker_count(&f->fd, "POST", "/containers/container-123/stop"), 0);

    /* Docker failing the inspect fails the stop, as any Docker failure does. */
    assert_int_equal(moat_runtime_create(f->rt, SESSION_ID2, CHAT_ID, 1000, 2000, NULL, &s, &st),
                     MOAT_CODE_OK);
    fake_docker_route(&f->fd, "GET", "/containers/container-123/json", 500,
                      "{\"message\":\"boom\"}", -1);
    assert_int_equal(moat_runtime_stop(f->rt, SESSION_ID2, &st), MOAT_CODE_INTERNAL);
    assert_string_equal(st.reason, "sandbox_stop_failed");
    assert_int_equal(moat_runtime_stop_container(f->rt, "container-123", &st), MOAT_CODE_INTERNAL);
    assert_string_equal(st.reason, "sandbox_stop_failed");
    assert_string_equal(moat_status_detail_get(&st, "container_id"), "container-123");
    assert_int_equal(fake_docker_count(&f->fd, "POST", "/containers/container-123/stop"), 0);
}

/* The reaper sees the same foreign containers every sweep: one line each, ever, and a bounded
 * memory of what was logged. Past that bound one line says so and the rest stay quiet. */
static void test_foreign_log_is_bounded(void **state)
{
    fx *f = *state;
    enum { N = 1025 };
    char **items = calloc(N, sizeof(char *));
    for (size_t i = 0; i < N; i++) {
        char id[32];
        snprintf(id, sizeof(id), "f-%08zu", i);
        items[i] =
            described(false, id, SESSION_ID2, PREFIX SESSION_ID2, "2026-04-02T12:05:00+00:00", "");
    }
    route_list(f, "/containers/json", items, N);
    free(items);
    char log_path[] = "/tmp/moat-rt-log-XXXXXX";
    int saved = stderr_to_file(log_path);
    moat_status st[2];
    size_t reaped[2] = {9, 9};
    moat_code code[2];
    for (int i = 0; i < 2; i++)
        code[i] = moat_runtime_reap(f->rt, iso("2026-04-02T13:00:00Z"), &reaped[i], &st[i]);
    char *log = stderr_back(saved, log_path);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(code[i], MOAT_CODE_OK);
        assert_int_equal(reaped[i], 0);
    }
    assert_int_equal(occurrences(log, "event=foreign_container_ignored "), N - 1);
    assert_int_equal(occurrences(log, "event=foreign_containers_not_logged "), 1);
    assert_non_null(strstr(log, "container_id=f-00000000 name=" PREFIX SESSION_ID2
                                " session_id=" SESSION_ID2 " why=\"not labelled"));
    free(log);
    assert_int_equal(fake_docker_count(&f->fd, "POST", "/stop"), 0);
    assert_int_equal(fake_docker_count(&f->fd, "DELETE", "/containers/"), 0);
}

static void test_tcp_endpoint(void **state)
{
    fx *f = *state;
    fake_docker tcp;
    int port = 0;
    assert_int_equal(fake_docker_start_tcp(&tcp, &port), 0);
    moat_runtime_close(f->rt);
    char host[64];
    snprintf(host, sizeof(host), "tcp://127.0.0.1:%d", port);
    f->cfg.docker_host = host;
    open_runtime(f);
    moat_session s;
    moat_status st;
    assert_int_equal(create_default(f, CHAT_ID, &s, &st), MOAT_CODE_OK);
    assert_int_equal(fake_docker_count(&tcp, "POST", "/v1.41/containers/create"), 1);
    assert_int_equal(fake_docker_count(&f->fd, "POST", "/containers/create"), 0);
    moat_runtime_close(f->rt);
    f->rt = NULL;
    fake_docker_stop(&tcp);
    open_runtime(f);
    /* The engine went away: UNAVAILABLE, not a hang or a crash. */
    assert_int_equal(moat_runtime_image_inspect(f->rt, "sandbox:latest", &st),
                     MOAT_CODE_UNAVAILABLE);
}

/* The engine goes away and comes back on the same socket: UNAVAILABLE meanwhile, and the same
 * runtime object works again afterwards without being reopened. */
static void test_engine_restart_recovers(void **state)
{
    fx *f = *state;
    moat_session s;
    moat_status st;
    assert_int_equal(create_default(f, CHAT_ID, &s, &st), MOAT_CODE_OK);
    fake_docker_stop(&f->fd);
    moat_session *list = NULL;
    size_t n = 0;
    assert_int_equal(moat_runtime_list_active(f->rt, &list, &n, &st), MOAT_CODE_UNAVAILABLE);
    assert_int_equal(moat_runtime_stop(f->rt, SESSION_ID, &st), MOAT_CODE_UNAVAILABLE);
    assert_string_equal(st.reason, "sandbox_stop_failed");
    assert_int_equal(fake_docker_start(&f->fd, f->sock), 0);
    char *items[] = {container_json("container-123", SESSION_ID, CHAT_ID,
                                    "2026-04-02T12:05:00+00:00", NULL, true, "running")};
    route_list(f, "/containers/json", items, 1);
    assert_int_equal(moat_runtime_list_active(f->rt, &list, &n, &st), MOAT_CODE_OK);
    assert_int_equal(n, 1);
    free(list);
    assert_int_equal(moat_runtime_stop(f->rt, SESSION_ID, &st), MOAT_CODE_OK);
    assert_int_equal(fake_docker_count(&f->fd, "DELETE", "/containers/container-123"), 1);
}

static void test_kill(void **state)
{
    fx *f = *state;
    moat_status st;
    char *items[] = {container_json("container-123", SESSION_ID, CHAT_ID,
                                    "2026-04-02T12:05:00+00:00", NULL, true, "running")};
    route_list(f, "session_id%3D" SESSION_ID, items, 1);
    assert_int_equal(moat_runtime_kill(f->rt, SESSION_ID, "KILL", &st), MOAT_CODE_OK);
    assert_int_equal(
        fake_docker_count(&f->fd, "POST", "/v1.41/containers/container-123/kill?signal=KILL"), 1);
    assert_int_equal(fake_docker_count(&f->fd, "DELETE", "/containers/"), 0);
    fake_docker_route(&f->fd, "POST", "/kill", 409,
                      "{\"message\":\"Container container-123 is not running\"}", -1);
    assert_int_equal(moat_runtime_kill(f->rt, SESSION_ID, "TERM", &st),
                     MOAT_CODE_FAILED_PRECONDITION);
    assert_non_null(strstr(st.message, "is not running"));
    assert_int_equal(moat_runtime_kill(f->rt, SESSION_ID, "KILL&x=1", &st),
                     MOAT_CODE_INVALID_ARGUMENT);
    fake_docker_route(&f->fd, "GET", "session_id%3D" SESSION_ID2, 200, "[]", -1);
    assert_int_equal(moat_runtime_kill(f->rt, SESSION_ID2, "KILL", &st), MOAT_CODE_NOT_FOUND);
}

static void test_runtime_setting(void **state)
{
    fx *f = *state;
    moat_runtime_close(f->rt);
    f->cfg.runtime = "runsc";
    open_runtime(f);
    moat_session s;
    moat_status st;
    assert_int_equal(create_default(f, CHAT_ID, &s, &st), MOAT_CODE_OK);
    cJSON *spec = body_of(fake_docker_find(&f->fd, "POST", "/containers/create"));
    assert_string_equal(jsv(jget(jget(spec, "HostConfig"), "Runtime")), "runsc");
    cJSON_Delete(spec);

    /* "" is the engine's default, as NULL is: no Runtime key. */
    moat_runtime_close(f->rt);
    f->cfg.runtime = "";
    open_runtime(f);
    assert_int_equal(moat_runtime_create(f->rt, SESSION_ID2, CHAT_ID, iso("2026-04-02T12:00:00Z"),
                                         iso("2026-04-02T12:05:00Z"), NULL, &s, &st),
                     MOAT_CODE_OK);
    spec = moat_json_parse(f->fd.last_create_body, strlen(f->fd.last_create_body),
                           MOAT_JSON_NUL_REJECT);
    assert_string_equal(jsv(jget(jget(spec, "Labels"), "session_id")), SESSION_ID2);
    assert_null(jget(jget(spec, "HostConfig"), "Runtime"));
    cJSON_Delete(spec);

    moat_runtime_config c = f->cfg;
    c.runtime = "runsc-kvm_2.x";
    assert_int_equal(moat_runtime_config_validate(&c, &st), MOAT_CODE_OK);
    char too_long[65];
    memset(too_long, 'r', 64);
    too_long[64] = '\0';
    const char *refused[] = {"run sc",     "runsc;rm", "-runsc", ".runsc",
                             "runsc/../x", "rünsc",    too_long};
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
        c.runtime = refused[i];
        assert_int_equal(moat_runtime_config_validate(&c, &st), MOAT_CODE_INVALID_ARGUMENT);
        assert_string_equal(st.reason, "invalid_config");
        assert_string_equal(moat_status_detail_get(&st, "setting"), "runtime");
        assert_non_null(strstr(st.message, "config runtime:"));
        assert_null(moat_runtime_open(&c, &st));
        assert_string_equal(moat_status_detail_get(&st, "setting"), "runtime");
    }
}

static int64_t last_pids_limit(fx *f)
{
    cJSON *spec = moat_json_parse(f->fd.last_create_body, strlen(f->fd.last_create_body),
                                  MOAT_JSON_NUL_REJECT);
    assert_non_null(spec);
    int64_t pids = jiv(jget(jget(spec, "HostConfig"), "PidsLimit"));
    cJSON_Delete(spec);
    return pids;
}

/* Under gVisor the pids limit counts gVisor's own threads: a larger default and maximum, and
 * a floor, for requests and for the config. */
static void test_gvisor_pids_limits(void **state)
{
    fx *f = *state;
    assert_true(moat_runtime_is_gvisor("runsc"));
    assert_true(moat_runtime_is_gvisor("runsc-kvm"));
    assert_false(moat_runtime_is_gvisor("runsc2"));
    assert_false(moat_runtime_is_gvisor("runc"));
    assert_false(moat_runtime_is_gvisor(""));
    assert_false(moat_runtime_is_gvisor(NULL));

    moat_runtime_close(f->rt);
    f->cfg.runtime = "runsc";
    open_runtime(f);
    moat_session s;
    moat_status st;
    int64_t now = iso("2026-04-02T12:00:00Z");
    assert_int_equal(
        moat_runtime_create(f->rt, SESSION_ID, CHAT_ID, now, now + 1000, NULL, &s, &st),
        MOAT_CODE_OK);
    assert_int_equal(last_pids_limit(f), MOAT_GVISOR_PIDS_LIMIT_DEFAULT);
    moat_session_options o = {.pids_limit = MOAT_GVISOR_PIDS_LIMIT_MIN - 1};
    assert_int_equal(moat_runtime_create(f->rt, SESSION_ID2, CHAT_ID, now, now + 1000, &o, &s, &st),
                     MOAT_CODE_INVALID_ARGUMENT);
    assert_string_equal(moat_status_detail_get(&st, "field"), "pids_limit");
    assert_non_null(strstr(st.message, "gVisor"));
    o.pids_limit = MOAT_GVISOR_PIDS_LIMIT_MAX + 1;
    assert_int_equal(moat_runtime_create(f->rt, SESSION_ID2, CHAT_ID, now, now + 1000, &o, &s, &st),
                     MOAT_CODE_INVALID_ARGUMENT);
    assert_string_equal(moat_status_detail_get(&st, "field"), "pids_limit");
    o.pids_limit = MOAT_GVISOR_PIDS_LIMIT_MIN;
    assert_int_equal(moat_runtime_create(f->rt, SESSION_ID2, CHAT_ID, now, now + 1000, &o, &s, &st),
                     MOAT_CODE_OK);
    assert_int_equal(last_pids_limit(f), MOAT_GVISOR_PIDS_LIMIT_MIN);
    o.pids_limit = MOAT_GVISOR_PIDS_LIMIT_MAX;
    assert_int_equal(moat_runtime_create(f->rt, SESSION_ID3, CHAT_ID, now, now + 1000, &o, &s, &st),
                     MOAT_CODE_OK);
    assert_int_equal(last_pids_limit(f), MOAT_GVISOR_PIDS_LIMIT_MAX);

    /* A configured default below the floor is refused at start, naming the setting. */
    moat_runtime_config c = f->cfg;
    c.default_pids_limit = 64;
    assert_int_equal(moat_runtime_config_validate(&c, &st), MOAT_CODE_INVALID_ARGUMENT);
    assert_string_equal(st.reason, "invalid_config");
    assert_string_equal(moat_status_detail_get(&st, "setting"), "default_pids_limit");
    assert_non_null(strstr(st.message, "gVisor"));
    c.default_pids_limit = 256;
    assert_int_equal(moat_runtime_config_validate(&c, &st), MOAT_CODE_OK);
    /* The same 64 is fine under runc, and runc's own maximum still applies there. */
    c.runtime = NULL;
    c.default_pids_limit = 64;
    assert_int_equal(moat_runtime_config_validate(&c, &st), MOAT_CODE_OK);
    c.default_pids_limit = MOAT_RUNC_PIDS_LIMIT_MAX + 1;
    assert_int_equal(moat_runtime_config_validate(&c, &st), MOAT_CODE_INVALID_ARGUMENT);
    assert_string_equal(moat_status_detail_get(&st, "setting"), "default_pids_limit");
    c.default_pids_limit = -1;
    assert_int_equal(moat_runtime_config_validate(&c, &st), MOAT_CODE_INVALID_ARGUMENT);
}

/* ---- the warm pool's refills give way to creates (issue #15) ---- */

typedef struct cold_create {
    fx *f;
    moat_code code;
} cold_create;

static void *cold_create_main(void *arg)
{
    cold_create *c = arg;
    moat_session s;
    moat_status st;
    c->code = create_default(c->f, CHAT_ID, &s, &st);
    return NULL;
}

/* A create's session list, on a thread of its own as a burst's creates are. */
typedef struct lister {
    fx *f;
    pthread_t th;
    moat_code code;
    size_t count;
    char reason[MOAT_STATUS_REASON_MAX];
} lister;

static void *lister_main(void *arg)
{
    lister *l = arg;
    moat_session *all = NULL;
    moat_status st;
    l->code = moat_runtime_list_active(l->f->rt, &all, &l->count, &st);
    snprintf(l->reason, sizeof(l->reason), "%s", st.reason);
    free(all);
    return NULL;
}

static size_t lists_joined(fx *f)
{
    pthread_mutex_lock(&f->rt->cache_mu);
    size_t n = f->rt->list_joined;
    pthread_mutex_unlock(&f->rt->cache_mu);
    return n;
}

/* Waits (at most 60 s, a bound for a stalled machine, not a measure) until Docker's list calls
 * and the callers that joined one add up to n: every caller has either listed or joined. */
static void wait_listed_or_joined(fx *f, size_t n)
{
    for (int i = 0;
         i < 10000 && fake_docker_count(&f->fd, "GET", "/containers/json") + lists_joined(f) < n;
         i++)
        usleep(1000);
}

/* The held list answers when the test releases it: no client timeout may end it first, however
 * slowly the callers start (valgrind, a loaded host). */
static void reopen_patient(fx *f)
{
    moat_runtime_close(f->rt);
    f->cfg.docker_timeout_ms = 120000;
    open_runtime(f);
}

#define BURST 20

/* Twenty creates that miss the snapshot at once (no event stream here, so every list misses)
 * ask Docker once between them, and all get its answer: a session, or its failure. */
static void burst_lists_once(fx *f, int status, const char *body, moat_code want, size_t want_count)
{
    reopen_patient(f);
    fake_docker_route_held(&f->fd, "GET", "/containers/json", status, body);
    lister l[BURST];
    for (size_t i = 0; i < BURST; i++) {
        l[i] = (lister){.f = f};
        assert_int_equal(pthread_create(&l[i].th, NULL, lister_main, &l[i]), 0);
    }
    wait_listed_or_joined(f, BURST);
    fake_docker_release(&f->fd);
    for (size_t i = 0; i < BURST; i++)
        pthread_join(l[i].th, NULL);
    assert_int_equal(fake_docker_count(&f->fd, "GET", "/containers/json"), 1);
    assert_int_equal(lists_joined(f), BURST - 1);
    for (size_t i = 0; i < BURST; i++) {
        assert_int_equal(l[i].code, want);
        assert_int_equal(l[i].count, want_count);
        assert_string_equal(l[i].reason, l[0].reason);
    }
}

static void test_list_shared_by_a_burst(void **state)
{
    fx *f = *state;
    char *item = container_json("container-123", SESSION_ID, CHAT_ID, "2026-04-02T12:05:00+00:00",
                                "2026-04-02T12:00:00Z", true, "running");
    char body[4096];
    snprintf(body, sizeof(body), "[%s]", item);
    free(item);
    burst_lists_once(f, 200, body, MOAT_CODE_OK, 1);
}

static void test_list_failure_shared_by_a_burst(void **state)
{
    fx *f = *state;
    burst_lists_once(f, 500, "{\"message\":\"engine broke\"}", MOAT_CODE_INTERNAL, 0);
}

/* A change while a list is under way: a create that begins after it does not take that list's
 * answer, it asks Docker again. */
static void test_list_after_invalidation_lists_again(void **state)
{
    fx *f = *state;
    reopen_patient(f);
    fake_docker_route_held(&f->fd, "GET", "/containers/json", 200, "[]");
    lister first = {.f = f}, second = {.f = f};
    assert_int_equal(pthread_create(&first.th, NULL, lister_main, &first), 0);
    wait_listed_or_joined(f, 1);
    moat__cache_invalidate(f->rt);
    assert_int_equal(pthread_create(&second.th, NULL, lister_main, &second), 0);
    wait_listed_or_joined(f, 2);
    fake_docker_release(&f->fd);
    pthread_join(first.th, NULL);
    pthread_join(second.th, NULL);
    assert_int_equal(fake_docker_count(&f->fd, "GET", "/containers/json"), 2);
    assert_int_equal(lists_joined(f), 0);
    assert_int_equal(first.code, MOAT_CODE_OK);
    assert_int_equal(second.code, MOAT_CODE_OK);
}

/* An inspect answer: the container has exited. */
#define EXITED(id) "{\"Id\":\"" id "\",\"State\":{\"Running\":false,\"ExitCode\":1}}"

/* Waits (at most 10 s, a bound for a stalled machine, not a measure) until the pool reports
 * a refill giving way; false if it never does. */
static bool pool_gives_way(fx *f)
{
    for (int i = 0; i < 60000; i++) {
        moat_pool_stats ps;
        moat_runtime_pool_stats(f->rt, &ps);
        if (ps.giving_way == 1)
            return true;
        usleep(1000);
    }
    return false;
}

/* The index of the first recorded request matching method and url_contains, or -1. */
static long request_index(fx *f, const char *method, const char *url_contains)
{
    long at = -1;
    pthread_mutex_lock(&f->fd.mu);
    for (size_t i = 0; i < f->fd.request_count && at < 0; i++)
        if (strcmp(f->fd.requests[i].method, method) == 0 &&
            strstr(f->fd.requests[i].url, url_contains) != NULL)
            at = (long)i;
    pthread_mutex_unlock(&f->fd.mu);
    return at;
}

/* A refill under way when a user's create begins does not start its container until that
 * create has ended: the user's create has the engine and the CPU to itself. */
static void test_pool_refill_gives_way_to_create(void **state)
{
    fx *f = *state;
    moat_require(geteuid() == 0, "a pool slot's directory is a bind mount: needs root");
    moat_runtime_close(f->rt);
    f->cfg.pool_size = 1;
    f->cfg.pool_fill_concurrency = 1;
    /* The cold create ends when the test says its container exited, not on a timer. */
    f->cfg.readiness_timeout_ms = 60000;
    open_runtime(f);
    /* The refill's engine create is held, so the refill is under way when the create begins;
     * the cold create's own is answered at once (the newer route wins) and its execd never
     * answers. */
    fake_docker_route_hold(&f->fd, "POST", "/containers/create");
    fake_docker_route(&f->fd, "POST", "name=" PREFIX SESSION_ID, 201, "{\"Id\":\"cold-container\"}",
                      1);
    f->fd.start_execd = false; /* no request yet: the engine's threads do not read it */
    moat_status st;
    assert_int_equal(moat_runtime_start_pool(f->rt, &st), MOAT_CODE_OK);
    for (int i = 0; i < 10000 && fake_docker_count(&f->fd, "POST", "/containers/create") == 0; i++)
        usleep(1000);
    assert_int_equal(fake_docker_count(&f->fd, "POST", "/containers/create"), 1);

    cold_create c = {f, MOAT_CODE_OK};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, cold_create_main, &c), 0);
    for (int i = 0; i < 10000 && fake_docker_count(&f->fd, "POST", "cold-container/start") == 0;
         i++)
        usleep(1000);
    bool cold_started = fake_docker_count(&f->fd, "POST", "cold-container/start") == 1;
    /* The refill's create answers now, while the cold create waits for its execd. */
    fake_docker_release(&f->fd);
    bool gave_way = cold_started && pool_gives_way(f);
    size_t early_starts = fake_docker_count(&f->fd, "POST", "container-123/start");
    /* The cold container exits: the create fails and ends. */
    fake_docker_route(&f->fd, "GET", "/containers/cold-container/json", 200,
                      EXITED("cold-container"), -1);
    pthread_join(th, NULL);
    /* No execd answers for the slot either: its container exits too once started, and the
     * engine answers the next refill's create at once, so the pool stops (or a failed test
     * ends) without waiting out a timeout. */
    fake_docker_route(&f->fd, "GET", "/containers/container-123/json", 200, EXITED("container-123"),
                      -1);
    fake_docker_route(&f->fd, "POST", "/containers/create", 201, "{\"Id\":\"container-123\"}", -1);
    assert_true(cold_started);
    assert_true(gave_way);
    assert_int_equal(early_starts, 0);
    assert_int_not_equal(c.code, MOAT_CODE_OK);

    /* Then the refill goes on, its start after everything the cold create asked of the engine. */
    for (int i = 0; i < 10000 && fake_docker_count(&f->fd, "POST", "container-123/start") == 0; i++)
        usleep(1000);
    long cold_removed = request_index(f, "DELETE", "/containers/cold-container");
    long refill_start = request_index(f, "POST", "container-123/start");
    moat_runtime_stop_pool(f->rt);
    assert_true(cold_removed >= 0);
    assert_true(refill_start > cold_removed);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_create_mount_policy_and_labels, setup, teardown),
        cmocka_unit_test_setup_teardown(test_create_empty_container_id, setup, teardown),
        cmocka_unit_test_setup_teardown(test_create_as_root_when_asked, setup, teardown),
        cmocka_unit_test_setup_teardown(test_runtime_setting, setup, teardown),
        cmocka_unit_test_setup_teardown(test_gvisor_pids_limits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pool_refill_gives_way_to_create, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tokens_differ, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stop_ignores_missing_container, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stop_wraps_docker_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_list_active_skips_bad_labels, setup, teardown),
        cmocka_unit_test_setup_teardown(test_list_empty, setup, teardown),
        cmocka_unit_test_setup_teardown(test_docker_500_on_create, setup, teardown),
        cmocka_unit_test_setup_teardown(test_userns_unmapped_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_create_image_missing_is_not_found, setup, teardown),
        cmocka_unit_test_setup_teardown(test_create_name_conflict, setup, teardown),
        cmocka_unit_test_setup_teardown(test_create_twice_keeps_the_live_session, setup, teardown),
        cmocka_unit_test_setup_teardown(test_start_failure_removes_container, setup, teardown),
        cmocka_unit_test_setup_teardown(test_readiness_timeout_removes_container, setup, teardown),
        cmocka_unit_test_setup_teardown(test_readiness_container_exited, setup, teardown),
        cmocka_unit_test_setup_teardown(test_docker_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_malformed_json, setup, teardown),
        cmocka_unit_test_setup_teardown(test_list_not_array, setup, teardown),
        cmocka_unit_test_setup_teardown(test_answer_not_strict_json_is_protocol_error, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_created_must_be_whole_seconds, setup, teardown),
        cmocka_unit_test_setup_teardown(test_large_limits_are_exact_integers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_connection_cut_mid_response, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dead_socket_unavailable, setup, teardown),
        cmocka_unit_test_setup_teardown(test_version_negotiation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_image_inspect_not_found, setup, teardown),
        cmocka_unit_test_setup_teardown(test_invalid_ids, setup, teardown),
        cmocka_unit_test_setup_teardown(test_image_allow_list_and_limits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_renew_is_durable, setup, teardown),
        cmocka_unit_test_setup_teardown(test_renew_unknown_session, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reaper_removes_only_expired_managed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reaper_failure_retries, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reconcile, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stop_session_keeps_workspace, setup, teardown),
        cmocka_unit_test_setup_teardown(test_get_not_found, setup, teardown),
        cmocka_unit_test_setup_teardown(test_config_validation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hooks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reaper_thread_runs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_instance_scoping, setup, teardown),
        cmocka_unit_test_setup_teardown(test_spoofs_left_alone_without_instance, setup, teardown),
        cmocka_unit_test_setup_teardown(test_spoofs_left_alone_with_instance, setup, teardown),
        cmocka_unit_test_setup_teardown(test_spoof_with_a_live_session_id, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_row_checked_before_stop, setup, teardown),
        cmocka_unit_test_setup_teardown(test_foreign_log_is_bounded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tcp_endpoint, setup, teardown),
        cmocka_unit_test_setup_teardown(test_engine_restart_recovers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kill, setup, teardown),
        cmocka_unit_test_setup_teardown(test_list_shared_by_a_burst, setup, teardown),
        cmocka_unit_test_setup_teardown(test_list_failure_shared_by_a_burst, setup, teardown),
        cmocka_unit_test_setup_teardown(test_list_after_invalidation_lists_again, setup, teardown),
    };
    return moat_run_group_tests("test_runtime_unit", tests, NULL, NULL);
}
