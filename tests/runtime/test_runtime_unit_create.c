/* Creating a session against the fake engine: the container spec (mounts, labels, entry point,
 * limits, the allow-list), the ids accepted, and how each failure of the engine or of the
 * sandbox's start is cleaned up. */
#define _XOPEN_SOURCE 700
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include "moat_test.h"

#include "json_readers.h"
#include "runtime_fixture.h"

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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_create_mount_policy_and_labels, setup, teardown),
        cmocka_unit_test_setup_teardown(test_create_empty_container_id, setup, teardown),
        cmocka_unit_test_setup_teardown(test_create_as_root_when_asked, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tokens_differ, setup, teardown),
        cmocka_unit_test_setup_teardown(test_docker_500_on_create, setup, teardown),
        cmocka_unit_test_setup_teardown(test_userns_unmapped_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_create_image_missing_is_not_found, setup, teardown),
        cmocka_unit_test_setup_teardown(test_create_name_conflict, setup, teardown),
        cmocka_unit_test_setup_teardown(test_create_twice_keeps_the_live_session, setup, teardown),
        cmocka_unit_test_setup_teardown(test_start_failure_removes_container, setup, teardown),
        cmocka_unit_test_setup_teardown(test_readiness_timeout_removes_container, setup, teardown),
        cmocka_unit_test_setup_teardown(test_readiness_container_exited, setup, teardown),
        cmocka_unit_test_setup_teardown(test_large_limits_are_exact_integers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_invalid_ids, setup, teardown),
        cmocka_unit_test_setup_teardown(test_image_allow_list_and_limits, setup, teardown),
    };
    return moat_run_group_tests("test_runtime_unit_create", tests, NULL, NULL);
}
