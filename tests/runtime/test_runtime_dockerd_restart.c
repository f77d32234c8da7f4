/* The engine goes down while the runtime works, and comes back. The test starts its OWN dockerd
 * (private socket, data-root and exec-root under /tmp, no bridge, no iptables), so stopping it
 * disturbs no one else's containers; the sandbox image is copied in from the main engine
 * (docker save | docker load). Needs root and dockerd, like the other docker tests. */
#define _XOPEN_SOURCE 700
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "moat_test.h"

#include "runtime/runtime.h"
#include "host_mounts.h"
#include "private_dockerd.h"

#define IMAGE "moat-sandbox:latest"

static private_dockerd eng;

static int run(const char *cmd)
{
    int rc = system(cmd);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

static int group_setup(void **state)
{
    (void)state;
    const char *build = getenv("MOAT_BUILD_DIR");
    const char *src = getenv("MOAT_SOURCE_DIR");
    if (build == NULL || src == NULL)
        return -1;
    char cmd[2048];
    if (getenv("MOAT_EXECD_BUNDLE") != NULL) /* sanitizer builds borrow a normal build's */
        snprintf(cmd, sizeof(cmd),
                 "test -x %s/run && /usr/bin/docker image inspect " IMAGE " >/dev/null 2>&1",
                 getenv("MOAT_EXECD_BUNDLE"));
    else
        snprintf(cmd, sizeof(cmd),
                 "test -x %s/execd-bundle/run && /usr/bin/docker image inspect " IMAGE
                 " >/dev/null 2>&1 || %s/scripts/build-sandbox-image.sh %s >/dev/null",
                 build, src, build);
    if (run(cmd) != 0)
        return -1;
    snprintf(eng.dir, sizeof(eng.dir), "/tmp/moat-rtdd-XXXXXX");
    if (mkdtemp(eng.dir) == NULL)
        return -1;
    snprintf(eng.sock, sizeof(eng.sock), "%s/docker.sock", eng.dir);
    if (private_dockerd_start(&eng, 30) != 0) {
        fprintf(stderr, "private dockerd did not start; see %s/dockerd.log\n", eng.dir);
        private_dockerd_stop(&eng, 60);
        return -1;
    }
    snprintf(cmd, sizeof(cmd),
             "/usr/bin/docker save " IMAGE " | /usr/bin/docker -H unix://%s load >/dev/null",
             eng.sock);
    return run(cmd) == 0 ? 0 : -1;
}

/* The runtime's own directories, removed by group_teardown too when a failed assertion left the
 * test before its end (moatd's runtime leaves nosuid,nodev self-binds there). */
static char runtime_dir[32];

static void remove_runtime_dir(void)
{
    if (runtime_dir[0] == '\0')
        return;
    char cmd[128];
    host_unmount_under(runtime_dir);
    snprintf(cmd, sizeof(cmd), "rm -rf %s", runtime_dir);
    run(cmd);
    runtime_dir[0] = '\0';
}

static int group_teardown(void **state)
{
    (void)state;
    remove_runtime_dir();
    char cmd[512];
    snprintf(cmd, sizeof(cmd),
             "/usr/bin/docker -H unix://%s ps -aq | xargs -r /usr/bin/docker -H unix://%s rm -f "
             ">/dev/null 2>&1",
             eng.sock, eng.sock);
    if (eng.pid > 0)
        run(cmd);
    private_dockerd_stop(&eng, 60);
    host_unmount_under(eng.dir);
    snprintf(cmd, sizeof(cmd), "rm -rf %s", eng.dir);
    run(cmd);
    return 0;
}

static bool ping(const moat_session *s)
{
    char cmd[4400];
    snprintf(cmd, sizeof(cmd),
             "curl -s -o /dev/null --max-time 1 -w '%%{http_code}' -H 'X-EXECD-ACCESS-TOKEN: %s' "
             "--unix-socket %s http://localhost/ping | grep -q 200",
             s->execd_token, s->execd_socket);
    return run(cmd) == 0;
}

static void test_engine_down_then_back(void **state)
{
    (void)state;
    snprintf(runtime_dir, sizeof(runtime_dir), "/tmp/moat-rtddrt-XXXXXX");
    assert_non_null(mkdtemp(runtime_dir));
    const char *dir = runtime_dir;
    char deps[128], lambda[128], chats[128], st_dir[128], store[128], bundle[1024];
    snprintf(deps, sizeof(deps), "%s/deps", dir);
    snprintf(lambda, sizeof(lambda), "%s/lambda", dir);
    snprintf(chats, sizeof(chats), "%s/chats", dir);
    snprintf(st_dir, sizeof(st_dir), "%s/state", dir);
    snprintf(store, sizeof(store), "%s/state.db", dir);
    if (getenv("MOAT_EXECD_BUNDLE") != NULL)
        snprintf(bundle, sizeof(bundle), "%s", getenv("MOAT_EXECD_BUNDLE"));
    else
        snprintf(bundle, sizeof(bundle), "%s/execd-bundle", getenv("MOAT_BUILD_DIR"));
    mkdir(deps, 0755);
    mkdir(lambda, 0755);
    moat_runtime_config cfg;
    moat_runtime_config_defaults(&cfg);
    cfg.image = IMAGE;
    cfg.docker_host = eng.sock;
    cfg.docker_timeout_ms = 5000;
    cfg.chats_root = chats;
    cfg.dependencies_host_path = deps;
    cfg.lambda_tools_host_path = lambda;
    cfg.execd_bundle_dir = bundle;
    cfg.state_dir = st_dir;
    cfg.store_path = store;
    cfg.container_name_prefix = "moat-rtdd-";
    cfg.cleanup_interval_seconds = 1;
    cfg.default_memory_bytes = 64ll * 1024 * 1024;
    cfg.stop_timeout_seconds = 1;
    cfg.workspace_quota = false; /* about the engine's restart; test_workspace_docker has quotas */
    moat_status st;
    moat_runtime *rt = moat_runtime_open(&cfg, &st);
    assert_non_null(rt);
    assert_int_equal(moat_runtime_start_reaper(rt, &st), MOAT_CODE_OK);
    assert_int_equal(moat_runtime_start_watcher(rt, &st), MOAT_CODE_OK);

    char sid[MOAT_UUID_STR_LEN], sid2[MOAT_UUID_STR_LEN];
    moat_uuid_generate(sid);
    moat_uuid_generate(sid2);
    moat_session s;
    int64_t now = moat_time_now_ms();
    assert_int_equal(moat_runtime_create(rt, sid, "{7D444840-9DC0-11D1-B245-5FFDCE74FAD2}", now,
                                         now + 300000, NULL, &s, &st),
                     MOAT_CODE_OK);
    moat_session *list = NULL;
    size_t n = 0;
    assert_int_equal(moat_runtime_list_active(rt, &list, &n, &st), MOAT_CODE_OK);
    assert_int_equal(n, 1);
    free(list);

    /* The engine goes down under the running reaper and watcher. */
    private_dockerd_stop(&eng, 60);
    assert_int_equal(moat_runtime_list_active(rt, &list, &n, &st), MOAT_CODE_UNAVAILABLE);
    assert_string_equal(st.reason, "docker_unavailable");
    now = moat_time_now_ms();
    assert_int_equal(moat_runtime_create(rt, sid2, "7d444840-9dc0-11d1-b245-5ffdce74fad2", now,
                                         now + 300000, NULL, &s, &st),
                     MOAT_CODE_UNAVAILABLE);
    assert_string_equal(st.reason, "sandbox_start_failed");
    assert_int_equal(moat_runtime_renew(rt, sid, now + 600000, NULL, &st), MOAT_CODE_UNAVAILABLE);
    size_t reaped = 0;
    assert_int_equal(moat_runtime_reap(rt, now, &reaped, &st), MOAT_CODE_UNAVAILABLE);

    /* Back: the same runtime object works again; reconcile restarts the session the engine
     * stopped on shutdown, and its execd answers again. */
    assert_int_equal(private_dockerd_start(&eng, 30), 0);
    moat_reconcile_report rep;
    assert_int_equal(moat_runtime_reconcile(rt, moat_time_now_ms(), &rep, &st), MOAT_CODE_OK);
    assert_int_equal(rep.adopted, 1);
    assert_int_equal(rep.gone, 0);
    bool up = false;
    for (int i = 0; i < 100 && !up; i++) { /* bounded: 10 s */
        up = ping(&s);
        if (!up)
            usleep(100000);
    }
    assert_true(up);
    assert_int_equal(moat_runtime_renew(rt, sid, moat_time_now_ms() + 600000, NULL, &st),
                     MOAT_CODE_OK);
    assert_int_equal(moat_runtime_list_active(rt, &list, &n, &st), MOAT_CODE_OK);
    assert_int_equal(n, 1);
    assert_string_equal(list[0].session_id, sid);
    free(list);
    now = moat_time_now_ms();
    assert_int_equal(moat_runtime_create(rt, sid2, "7d444840-9dc0-11d1-b245-5ffdce74fad2", now,
                                         now + 300000, NULL, &s, &st),
                     MOAT_CODE_OK);
    assert_int_equal(moat_runtime_stop(rt, sid, &st), MOAT_CODE_OK);
    assert_int_equal(moat_runtime_stop(rt, sid2, &st), MOAT_CODE_OK);
    moat_runtime_close(rt);
    remove_runtime_dir();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_engine_down_then_back),
    };
    return moat_run_group_tests("test_runtime_dockerd_restart", tests, group_setup, group_teardown);
}
