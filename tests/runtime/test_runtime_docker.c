/* Integration tests of the runtime against the real dockerd, the local image
 * moat-sandbox:latest and the execd bundle at $MOAT_BUILD_DIR/execd-bundle (both made by
 * scripts/build-sandbox-image.sh, which this test runs when they are missing). Every container
 * it makes is named moat-rttest<pid>-*, labelled moat.instance=rttest<pid>, and removed at
 * teardown.
 * MOAT_EXECD_BUNDLE overrides the bundle dir (sanitizer builds cannot build their own);
 * MOAT_DOCKER_HOST the engine the runtime uses (the docker CLI follows DOCKER_HOST). */
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
#include <unistd.h>

#include "moat_test.h"

#include "json_readers.h"
#include "runtime/runtime.h"
#include "host_mounts.h"

#define IMAGE        "moat-sandbox:latest"
#define CHAT_A       "{7D444840-9DC0-11D1-B245-5FFDCE74FAD2}"
#define CHAT_A_CANON "7d444840-9dc0-11d1-b245-5ffdce74fad2"

typedef struct fx {
    char dir[64];
    char deps[128], lambda[128], chats[128], state[128], store[160];
    char bundle[1024];
    moat_runtime_config cfg;
    moat_runtime *rt;
} fx;

static int run(const char *cmd)
{
    int rc = system(cmd);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

/* Runs cmd and returns its stdout (malloc'd). */
static char *capture(const char *cmd)
{
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t cap = 65536, len = 0;
    char *out = calloc(1, cap);
    size_t n;
    while ((n = fread(out + len, 1, cap - len - 1, p)) > 0)
        len += n;
    pclose(p);
    return out;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* Private to this run, so that runs from other clones on the same engine never collide. */
static char prefix[48], instance[48];

static void remove_test_containers(void)
{
    char cmd[256];
    snprintf(cmd, sizeof(cmd),
             "/usr/bin/docker ps -aq --filter name=%s | xargs -r /usr/bin/docker rm -f "
             ">/dev/null 2>&1",
             prefix);
    run(cmd);
}

static int group_setup(void **state)
{
    snprintf(prefix, sizeof(prefix), "moat-rttest%d-", (int)getpid());
    snprintf(instance, sizeof(instance), "rttest%d", (int)getpid());
    (void)state;
    const char *build = getenv("MOAT_BUILD_DIR");
    const char *src = getenv("MOAT_SOURCE_DIR");
    if (build == NULL || src == NULL) {
        fprintf(stderr, "MOAT_BUILD_DIR and MOAT_SOURCE_DIR must be set (ctest sets them)\n");
        return -1;
    }
    char cmd[2048];
    const char *bundle = getenv("MOAT_EXECD_BUNDLE");
    if (bundle != NULL) { /* e.g. a sanitizer build borrowing a normal build's bundle */
        snprintf(cmd, sizeof(cmd),
                 "test -x %s/run && /usr/bin/docker image inspect " IMAGE " >/dev/null 2>&1",
                 bundle);
        if (run(cmd) != 0) {
            fprintf(stderr, "MOAT_EXECD_BUNDLE=%s has no run launcher or the image is missing\n",
                    bundle);
            return -1;
        }
        remove_test_containers();
        return 0;
    }
    snprintf(cmd, sizeof(cmd),
             "test -x %s/execd-bundle/run && /usr/bin/docker image inspect " IMAGE
             " >/dev/null 2>&1",
             build);
    if (run(cmd) != 0) {
        snprintf(cmd, sizeof(cmd), "%s/scripts/build-sandbox-image.sh %s", src, build);
        if (run(cmd) != 0) {
            fprintf(stderr, "cannot build the sandbox image and execd bundle: %s\n", cmd);
            return -1;
        }
    }
    remove_test_containers();
    return 0;
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
    snprintf(f->dir, sizeof(f->dir), "/tmp/moat-rtd-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->deps, sizeof(f->deps), "%s/dependencies", f->dir);
    snprintf(f->lambda, sizeof(f->lambda), "%s/lambda-tools", f->dir);
    snprintf(f->chats, sizeof(f->chats), "%s/chats", f->dir);
    snprintf(f->state, sizeof(f->state), "%s/state", f->dir);
    snprintf(f->store, sizeof(f->store), "%s/state.db", f->dir);
    if (getenv("MOAT_EXECD_BUNDLE") != NULL)
        snprintf(f->bundle, sizeof(f->bundle), "%s", getenv("MOAT_EXECD_BUNDLE"));
    else
        snprintf(f->bundle, sizeof(f->bundle), "%s/execd-bundle", getenv("MOAT_BUILD_DIR"));
    mkdir(f->deps, 0755);
    mkdir(f->lambda, 0755);
    char marker[160];
    snprintf(marker, sizeof(marker), "%s/dep.txt", f->deps);
    FILE *fp = fopen(marker, "w");
    fputs("dependency\n", fp);
    fclose(fp);
    moat_runtime_config_defaults(&f->cfg);
    f->cfg.image = IMAGE;
    if (getenv("MOAT_DOCKER_HOST") != NULL)
        f->cfg.docker_host = getenv("MOAT_DOCKER_HOST");
    f->cfg.chats_root = f->chats;
    f->cfg.dependencies_host_path = f->deps;
    f->cfg.lambda_tools_host_path = f->lambda;
    f->cfg.execd_bundle_dir = f->bundle;
    f->cfg.state_dir = f->state;
    f->cfg.store_path = f->store;
    f->cfg.container_name_prefix = prefix;
    f->cfg.instance = instance; /* never touch other users' sandboxes on a shared engine */
    f->cfg.default_memory_bytes = 64ll * 1024 * 1024;
    f->cfg.default_pids_limit = 64;
    f->cfg.default_nano_cpus = 500000000;
    f->cfg.readiness_timeout_ms = 20000;
    f->cfg.stop_timeout_seconds = 1;
    /* These tests read the chat directory from the host after a stop, when a quota'd workspace
     * is no longer mounted there; test_workspace_docker runs sandboxes with quotas. */
    f->cfg.workspace_quota = false;
    open_runtime(f);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx *f = *state;
    moat_runtime_close(f->rt);
    remove_test_containers();
    host_unmount_under(f->dir);
    nftw(f->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(f);
    return 0;
}

static void new_session_id(char out[MOAT_UUID_STR_LEN])
{
    moat_uuid_generate(out);
}

static cJSON *inspect(fx *f, const char *container_id, long *http)
{
    char path[200];
    snprintf(path, sizeof(path), "/containers/%s/json", container_id);
    moat_docker_response resp;
    moat_status st;
    moat_runtime_docker_call(f->rt, "inspect", "GET", path, NULL, &resp, &st);
    *http = resp.http_status;
    return resp.json;
}

static moat_code create(fx *f, const char *sid, const char *chat, int64_t ttl_ms,
                        const moat_session_options *o, moat_session *s, moat_status *st)
{
    int64_t now = moat_time_now_ms();
    return moat_runtime_create(f->rt, sid, chat, now, now + ttl_ms, o, s, st);
}

static void test_labels_mounts_limits_and_isolation(void **state)
{
    fx *f = *state;
    char sid[MOAT_UUID_STR_LEN];
    new_session_id(sid);
    moat_session s;
    moat_status st;
    assert_int_equal(create(f, sid, CHAT_A, 300000, NULL, &s, &st), MOAT_CODE_OK);
    assert_string_equal(s.chat_id, CHAT_A_CANON);
    assert_int_equal(s.state, MOAT_SESSION_RUNNING);
    assert_int_equal(access(s.execd_socket, F_OK), 0);

    long http;
    cJSON *c = inspect(f, s.container_id, &http);
    assert_int_equal(http, 200);
    cJSON *labels = jget(jget(c, "Config"), "Labels");
    assert_string_equal(jsv(jget(labels, "session_id")), sid);
    assert_string_equal(jsv(jget(labels, "chat_id")), CHAT_A_CANON);
    char exp[MOAT_TIME_ISO_MAX];
    moat_time_format_iso8601(s.expires_at_ms, exp);
    assert_string_equal(jsv(jget(labels, "expires_at")), exp);
    assert_string_equal(jsv(jget(labels, "moat.managed")), "true");
    assert_non_null(jget(labels, "moat.version"));

    /* Mounts as requested, in order, with their modes. */
    cJSON *host = jget(c, "HostConfig");
    cJSON *mounts = jget(host, "Mounts");
    const char *targets[] = {"/workspace/chat", "/workspace/dependencies",
                             "/workspace/lambda-tools", "/opt/moat", "/run/moat"};
    const bool ro[] = {false, true, true, true, false};
    assert_int_equal(cJSON_GetArraySize(mounts), 5);
    for (size_t i = 0; i < 5; i++) {
        cJSON *m = cJSON_GetArrayItem(mounts, i);
        assert_string_equal(jsv(jget(m, "Target")), targets[i]);
        assert_string_equal(jsv(jget(m, "Type")), "bind");
        assert_int_equal(cJSON_IsTrue(jget(m, "ReadOnly")), ro[i]);
    }
    char chat_dir[256];
    snprintf(chat_dir, sizeof(chat_dir), "%s/%s", f->chats, CHAT_A_CANON);
    assert_string_equal(jsv(jget(cJSON_GetArrayItem(mounts, 0), "Source")), chat_dir);
    /* And as the engine applied them. */
    cJSON *applied = jget(c, "Mounts");
    const cJSON *m;
    size_t seen = 0;
    cJSON_ArrayForEach(m, applied)
    {
        const char *dst = jsv(jget(m, "Destination"));
        for (size_t k = 0; k < 5; k++)
            if (strcmp(dst, targets[k]) == 0) {
                assert_int_equal(cJSON_IsTrue(jget(m, "RW")), !ro[k]);
                seen++;
            }
    }
    assert_int_equal(seen, 5);

    assert_string_equal(jsv(jget(host, "NetworkMode")), "none");
    assert_string_equal(jsv(cJSON_GetArrayItem(jget(host, "CapDrop"), 0)), "ALL");
    assert_string_equal(jsv(cJSON_GetArrayItem(jget(host, "SecurityOpt"), 0)), "no-new-privileges");
    assert_int_equal(jiv(jget(host, "PidsLimit")), 64);
    assert_int_equal(jiv(jget(host, "Memory")), 64ll * 1024 * 1024);
    assert_int_equal(jiv(jget(host, "NanoCpus")), 500000000);
    const cJSON *cap_add = jget(host, "CapAdd");
    assert_int_equal(cJSON_GetArraySize(cap_add), 4);
    assert_non_null(strstr(jsv(cJSON_GetArrayItem(cap_add, 0)), "SETUID"));
    cJSON_Delete(c);

    /* From inside: the sandbox user holds no capability, and no process there can ever hold
     * more than execd's four (CHOWN, KILL, SETGID, SETUID); no-new-privileges, only loopback,
     * read-only mounts. */
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "/usr/bin/docker exec --user 1000:1000 %s cat /proc/self/status",
             s.container_id);
    char *status = capture(cmd);
    assert_non_null(strstr(status, "CapEff:\t0000000000000000"));
    assert_non_null(strstr(status, "CapPrm:\t0000000000000000"));
    assert_non_null(strstr(status, "CapBnd:\t00000000000000e1"));
    assert_non_null(strstr(status, "NoNewPrivs:\t1"));
    free(status);
    snprintf(cmd, sizeof(cmd), "/usr/bin/docker exec %s cat /proc/net/dev", s.container_id);
    char *netdev = capture(cmd);
    assert_non_null(strstr(netdev, "lo:"));
    assert_null(strstr(netdev, "eth0"));
    free(netdev);
    snprintf(cmd, sizeof(cmd),
             "/usr/bin/docker exec %s sh -c 'touch /workspace/dependencies/x' 2>/dev/null",
             s.container_id);
    assert_int_not_equal(run(cmd), 0);
    snprintf(cmd, sizeof(cmd), "/usr/bin/docker exec %s cat /workspace/dependencies/dep.txt",
             s.container_id);
    char *dep = capture(cmd);
    assert_string_equal(dep, "dependency\n");
    free(dep);
    snprintf(cmd, sizeof(cmd),
             "/usr/bin/docker exec --user 1000:1000 %s sh -c 'echo hi > /workspace/chat/out.txt'",
             s.container_id);
    assert_int_equal(run(cmd), 0);

    /* Listed as active. */
    moat_session *list = NULL;
    size_t n = 0;
    assert_int_equal(moat_runtime_list_active(f->rt, &list, &n, &st), MOAT_CODE_OK);
    bool found = false;
    for (size_t k = 0; k < n; k++)
        found |= strcmp(list[k].session_id, sid) == 0;
    free(list);
    assert_true(found);

    /* Stop is idempotent; the workspace stays. */
    assert_int_equal(moat_runtime_stop(f->rt, sid, &st), MOAT_CODE_OK);
    assert_int_equal(moat_runtime_stop(f->rt, sid, &st), MOAT_CODE_OK);
    assert_int_equal(moat_runtime_stop_container(f->rt, s.container_id, &st), MOAT_CODE_OK);
    c = inspect(f, s.container_id, &http);
    cJSON_Delete(c);
    assert_int_equal(http, 404);
    char out[300];
    snprintf(out, sizeof(out), "%s/out.txt", chat_dir);
    assert_int_equal(access(out, F_OK), 0);
    assert_int_equal(moat_runtime_get(f->rt, sid, &s, &st), MOAT_CODE_OK);
    assert_int_equal(s.state, MOAT_SESSION_STOPPED);
}

static void test_read_only_rootfs(void **state)
{
    fx *f = *state;
    moat_runtime_close(f->rt);
    f->cfg.read_only_rootfs = true;
    open_runtime(f);
    char sid[MOAT_UUID_STR_LEN];
    new_session_id(sid);
    moat_session s;
    moat_status st;
    assert_int_equal(create(f, sid, CHAT_A, 300000, NULL, &s, &st), MOAT_CODE_OK);
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "/usr/bin/docker exec %s sh -c 'touch /etc/x' 2>/dev/null",
             s.container_id);
    assert_int_not_equal(run(cmd), 0);
    snprintf(cmd, sizeof(cmd), "/usr/bin/docker exec %s sh -c 'touch /tmp/x'", s.container_id);
    assert_int_equal(run(cmd), 0);
    assert_int_equal(moat_runtime_stop(f->rt, sid, &st), MOAT_CODE_OK);
}

static void test_bad_labels_left_alone(void **state)
{
    fx *f = *state;
    char cmd[768];
    snprintf(cmd, sizeof(cmd),
             "/usr/bin/docker run -d --name %sbadlabels --network none "
             "--label session_id=not-a-uuid --label chat_id=" CHAT_A_CANON
             " --label expires_at=2000-01-01T00:00:00+00:00 --label moat.managed=true "
             "--label moat.instance=%s --entrypoint /bin/sleep " IMAGE " 300 >/dev/null",
             prefix, instance);
    assert_int_equal(run(cmd), 0);
    snprintf(cmd, sizeof(cmd),
             "/usr/bin/docker run -d --name %snolabels --network none --label chat_id=" CHAT_A_CANON
             " --label expires_at=2000-01-01T00:00:00+00:00 --label moat.instance=%s "
             "--entrypoint /bin/sleep " IMAGE " 300 >/dev/null",
             prefix, instance);
    assert_int_equal(run(cmd), 0);
    moat_session *list = NULL;
    size_t n = 0;
    moat_status st;
    assert_int_equal(moat_runtime_list_active(f->rt, &list, &n, &st), MOAT_CODE_OK);
    for (size_t k = 0; k < n; k++)
        assert_null(strstr(list[k].container_id, "badlabels"));
    free(list);
    size_t reaped = 0;
    assert_int_equal(moat_runtime_reap(f->rt, moat_time_now_ms(), &reaped, &st), MOAT_CODE_OK);
    moat_reconcile_report rep;
    assert_int_equal(moat_runtime_reconcile(f->rt, moat_time_now_ms(), &rep, &st), MOAT_CODE_OK);
    assert_true(rep.skipped >= 1);
    snprintf(cmd, sizeof(cmd),
             "/usr/bin/docker inspect -f '{{.State.Running}}' %sbadlabels %snolabels", prefix,
             prefix);
    char *state_text = capture(cmd);
    assert_string_equal(state_text, "true\ntrue\n");
    free(state_text);
}

static void test_short_ttl_reaped_within_interval(void **state)
{
    fx *f = *state;
    moat_runtime_close(f->rt);
    f->cfg.cleanup_interval_seconds = 1;
    open_runtime(f);
    char sid[MOAT_UUID_STR_LEN];
    new_session_id(sid);
    moat_session s;
    moat_status st;
    assert_int_equal(create(f, sid, CHAT_A, 1500, NULL, &s, &st), MOAT_CODE_OK);
    assert_int_equal(moat_runtime_start_reaper(f->rt, &st), MOAT_CODE_OK);
    long http = 200;
    /* Bounded wait: expiry (1.5 s) + one interval (1 s) + removal, with slack for a busy host. */
    for (int i = 0; i < 100 && http != 404; i++) {
        usleep(100000);
        cJSON_Delete(inspect(f, s.container_id, &http));
    }
    moat_runtime_stop_reaper(f->rt);
    assert_int_equal(http, 404);
    assert_int_equal(moat_runtime_get(f->rt, sid, &s, &st), MOAT_CODE_OK);
    assert_int_equal(s.state, MOAT_SESSION_EXPIRED);
    assert_string_equal(s.end_reason, "ttl");
    char chat_dir[256];
    snprintf(chat_dir, sizeof(chat_dir), "%s/%s", f->chats, CHAT_A_CANON);
    assert_int_equal(access(chat_dir, F_OK), 0);
}

static void test_renew_survives_restart(void **state)
{
    fx *f = *state;
    char sid[MOAT_UUID_STR_LEN];
    new_session_id(sid);
    moat_session s;
    moat_status st;
    assert_int_equal(create(f, sid, CHAT_A, 2000, NULL, &s, &st), MOAT_CODE_OK);
    int64_t label_exp = s.expires_at_ms;
    int64_t renewed = moat_time_now_ms() + 120000;
    assert_int_equal(moat_runtime_renew(f->rt, sid, renewed, NULL, &st), MOAT_CODE_OK);
    moat_runtime_close(f->rt);
    f->rt = NULL;
    while (moat_time_now_ms() <= label_exp + 200)
        usleep(100000);
    open_runtime(f);
    moat_reconcile_report rep;
    assert_int_equal(moat_runtime_reconcile(f->rt, moat_time_now_ms(), &rep, &st), MOAT_CODE_OK);
    assert_true(rep.adopted >= 1);
    size_t reaped = 9;
    assert_int_equal(moat_runtime_reap(f->rt, moat_time_now_ms(), &reaped, &st), MOAT_CODE_OK);
    assert_int_equal(reaped, 0);
    assert_int_equal(moat_runtime_get(f->rt, sid, &s, &st), MOAT_CODE_OK);
    assert_int_equal(s.state, MOAT_SESSION_RUNNING);
    assert_int_equal(s.expires_at_ms, renewed);
    long http;
    cJSON *c = inspect(f, s.container_id, &http);
    assert_int_equal(http, 200);
    assert_true(cJSON_IsTrue(jget(jget(c, "State"), "Running")));
    cJSON_Delete(c);
    assert_int_equal(moat_runtime_stop(f->rt, sid, &st), MOAT_CODE_OK);
}

static void test_docker_unreachable_then_recovers(void **state)
{
    fx *f = *state;
    moat_runtime_close(f->rt);
    char dead[160];
    snprintf(dead, sizeof(dead), "%s/dead-docker.sock", f->dir);
    f->cfg.docker_host = dead;
    open_runtime(f);
    char sid[MOAT_UUID_STR_LEN];
    new_session_id(sid);
    moat_session s;
    moat_status st;
    assert_int_equal(create(f, sid, CHAT_A, 60000, NULL, &s, &st), MOAT_CODE_UNAVAILABLE);
    assert_string_equal(st.reason, "sandbox_start_failed");
    moat_session *list = NULL;
    size_t n = 0;
    assert_int_equal(moat_runtime_list_active(f->rt, &list, &n, &st), MOAT_CODE_UNAVAILABLE);
    /* Back on the live engine, the same store and ids work. */
    moat_runtime_close(f->rt);
    f->cfg.docker_host =
        getenv("MOAT_DOCKER_HOST") ? getenv("MOAT_DOCKER_HOST") : "unix:///var/run/docker.sock";
    open_runtime(f);
    assert_int_equal(create(f, sid, CHAT_A, 60000, NULL, &s, &st), MOAT_CODE_OK);
    assert_int_equal(moat_runtime_stop(f->rt, sid, &st), MOAT_CODE_OK);
}

static void test_fork_bomb_contained(void **state)
{
    fx *f = *state;
    char bomb_sid[MOAT_UUID_STR_LEN], calm_sid[MOAT_UUID_STR_LEN];
    new_session_id(bomb_sid);
    new_session_id(calm_sid);
    moat_session bomb, calm;
    moat_status st;
    moat_session_options o = {.pids_limit = 32};
    assert_int_equal(create(f, bomb_sid, CHAT_A, 300000, &o, &bomb, &st), MOAT_CODE_OK);
    assert_int_equal(
        create(f, calm_sid, "11111111-2222-3333-4444-555555555555", 300000, NULL, &calm, &st),
        MOAT_CODE_OK);
    char cmd[512];
    snprintf(cmd, sizeof(cmd),
             "/usr/bin/docker exec -d %s /bin/bash -c 'b(){ b | b & }; b' >/dev/null 2>&1",
             bomb.container_id);
    assert_int_equal(run(cmd), 0);
    /* The bomb fills its pids cgroup up to the limit and no further: polled (each sample at
     * most the limit) until it is reached, for as long as a busy host may need. */
    char cg[600];
    snprintf(cg, sizeof(cg),
             "cat /sys/fs/cgroup/pids/docker/%s/pids.current "
             "/sys/fs/cgroup/system.slice/docker-%s.scope/pids.current 2>/dev/null",
             bomb.container_id, bomb.container_id);
    char *count = capture(cg);
    bool cgroup_counted = count[0] != '\0';
    free(count);
    if (!cgroup_counted) /* another cgroup layout: count the processes instead */
        snprintf(cg, sizeof(cg), "/usr/bin/docker top %s -o pid | tail -n +2 | wc -l",
                 bomb.container_id);
    /* Without the cgroup's count, processes that exit between fork and `docker top` may keep
     * the count below the limit: more than one is then enough. */
    long want = cgroup_counted ? 32 : 2, pids = 0;
    for (int i = 0; i < 600 && pids < want; i++) {
        if (i > 0)
            usleep(100 * 1000);
        count = capture(cg);
        pids = strtol(count, NULL, 10);
        free(count);
        if (pids > 32)
            fail_msg("the bomb's sandbox has %ld pids, over its limit of 32", pids);
    }
    if (pids < want)
        fail_msg("the bomb reached %ld pids in 60 s, not %ld", pids, want);
    /* ... while the other sandbox keeps working. */
    snprintf(cmd, sizeof(cmd), "/usr/bin/docker exec %s sh -c 'echo alive'", calm.container_id);
    char *alive = capture(cmd);
    assert_string_equal(alive, "alive\n");
    free(alive);
    char ping[4300];
    snprintf(ping, sizeof(ping),
             "curl -s -o /dev/null -w '%%{http_code}' -H 'X-EXECD-ACCESS-TOKEN: %s' "
             "--unix-socket %s http://localhost/ping",
             calm.execd_token, calm.execd_socket);
    char *code = capture(ping);
    assert_string_equal(code, "200");
    free(code);
    /* And the bombed one can still be stopped. */
    assert_int_equal(moat_runtime_stop(f->rt, bomb_sid, &st), MOAT_CODE_OK);
    assert_int_equal(moat_runtime_stop(f->rt, calm_sid, &st), MOAT_CODE_OK);
}

static bool listed(fx *f, const char *container_name_part, size_t *count)
{
    moat_session *list = NULL;
    size_t n = 0;
    moat_status st;
    assert_int_equal(moat_runtime_list_active(f->rt, &list, &n, &st), MOAT_CODE_OK);
    bool found = false;
    for (size_t k = 0; k < n; k++) {
        char cmd[256];
        snprintf(cmd, sizeof(cmd), "/usr/bin/docker inspect -f '{{.Name}}' %s",
                 list[k].container_id);
        char *name = capture(cmd);
        found |= strstr(name, container_name_part) != NULL;
        free(name);
    }
    free(list);
    if (count)
        *count = n;
    return found;
}

/* With the event watcher, repeated lists come from a snapshot; a container change made behind
 * the runtime's back (docker CLI, with the name and labels the runtime gives its own) still
 * shows up in the next list. */
static void test_watcher_keeps_list_coherent(void **state)
{
    fx *f = *state;
    moat_status st;
    assert_int_equal(moat_runtime_start_watcher(f->rt, &st), MOAT_CODE_OK);
    assert_int_equal(moat_runtime_start_watcher(f->rt, &st), MOAT_CODE_FAILED_PRECONDITION);
    char sid[MOAT_UUID_STR_LEN];
    new_session_id(sid);
    moat_session s;
    assert_int_equal(create(f, sid, CHAT_A, 300000, NULL, &s, &st), MOAT_CODE_OK);
    size_t before = 0;
    /* Let the watcher connect, then two lists: the first fills the snapshot. */
    usleep(300000);
    assert_true(listed(f, sid, &before));
    assert_true(listed(f, sid, NULL));
    char other[MOAT_UUID_STR_LEN], cmd[512];
    new_session_id(other);
    snprintf(cmd, sizeof(cmd),
             "/usr/bin/docker run -d --name %s%s --network none --label session_id=%s "
             "--label chat_id=" CHAT_A_CANON " --label expires_at=2099-01-01T00:00:00+00:00 "
             "--label moat.managed=true --label moat.instance=%s "
             "--entrypoint /bin/sleep " IMAGE " 300 >/dev/null",
             prefix, other, other, instance);
    assert_int_equal(run(cmd), 0);
    /* The event reaches the watcher asynchronously; bounded wait for the list to show it. */
    bool seen = false;
    size_t after = 0;
    for (int i = 0; i < 50 && !seen; i++) {
        seen = listed(f, other, &after);
        if (!seen)
            usleep(100000);
    }
    assert_true(seen);
    assert_int_equal(after, before + 1);
    snprintf(cmd, sizeof(cmd), "/usr/bin/docker rm -f %s%s >/dev/null", prefix, other);
    assert_int_equal(run(cmd), 0);
    bool gone = false;
    for (int i = 0; i < 50 && !gone; i++) {
        gone = !listed(f, other, &after);
        if (!gone)
            usleep(100000);
    }
    assert_true(gone);
    /* Stop through the runtime is visible immediately. */
    assert_int_equal(moat_runtime_stop(f->rt, sid, &st), MOAT_CODE_OK);
    assert_false(listed(f, sid, NULL));
    moat_runtime_stop_watcher(f->rt);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_labels_mounts_limits_and_isolation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_read_only_rootfs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_labels_left_alone, setup, teardown),
        cmocka_unit_test_setup_teardown(test_short_ttl_reaped_within_interval, setup, teardown),
        cmocka_unit_test_setup_teardown(test_renew_survives_restart, setup, teardown),
        cmocka_unit_test_setup_teardown(test_docker_unreachable_then_recovers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fork_bomb_contained, setup, teardown),
        cmocka_unit_test_setup_teardown(test_watcher_keeps_list_coherent, setup, teardown),
    };
    return moat_run_group_tests("test_runtime_docker", tests, group_setup, NULL);
}
