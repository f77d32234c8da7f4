/* Restarts and crashes around running sessions (docs/runtime.md, "TTL, store and recovery"),
 * against a PRIVATE dockerd this test starts (socket, data-root and exec-root under
 * /tmp/moat-chaos-<pid>-*, no bridge, no iptables), stops with SIGTERM and starts again on the
 * same data-root; the shared engine is only read, to copy the sandbox image in. Workspace quotas
 * are on, so a restarted sandbox needs its loop-mounted workspace and its tmpfs /run/moat back.
 * Everything the test made goes in the group teardown, even after a failure. Needs root. */
#define _XOPEN_SOURCE 700
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "moat_test.h"

#include "host_mounts.h"
#include "private_dockerd.h"
#include "runtime/runtime.h"

#define IMAGE "moat-sandbox:latest"

static private_dockerd eng;
static char name_prefix[64]; /* of this run's containers */
static char execd_bundle[1024];

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
    if (build == NULL || src == NULL || geteuid() != 0) {
        fprintf(stderr, "needs root, MOAT_BUILD_DIR and MOAT_SOURCE_DIR\n");
        return -1;
    }
    char cmd[2400];
    if (getenv("MOAT_EXECD_BUNDLE") != NULL) { /* sanitizer builds borrow a normal build's */
        snprintf(execd_bundle, sizeof(execd_bundle), "%s", getenv("MOAT_EXECD_BUNDLE"));
        snprintf(cmd, sizeof(cmd),
                 "test -x %s/run && /usr/bin/docker image inspect " IMAGE " >/dev/null 2>&1",
                 execd_bundle);
    } else {
        snprintf(execd_bundle, sizeof(execd_bundle), "%s/execd-bundle", build);
        snprintf(cmd, sizeof(cmd),
                 "test -x %s/run && /usr/bin/docker image inspect " IMAGE
                 " >/dev/null 2>&1 || %s/scripts/build-sandbox-image.sh %s >/dev/null",
                 execd_bundle, src, build);
    }
    if (run(cmd) != 0)
        return -1;
    snprintf(eng.dir, sizeof(eng.dir), "/tmp/moat-chaos-%d-XXXXXX", (int)getpid());
    if (mkdtemp(eng.dir) == NULL)
        return -1;
    snprintf(eng.sock, sizeof(eng.sock), "%s/docker.sock", eng.dir);
    snprintf(name_prefix, sizeof(name_prefix), "moat-chaos-%d-", (int)getpid());
    if (private_dockerd_start(&eng, 60) != 0) {
        fprintf(stderr, "private dockerd did not start; see %s/dockerd.log\n", eng.dir);
        return -1;
    }
    snprintf(cmd, sizeof(cmd),
             "/usr/bin/docker save " IMAGE " | /usr/bin/docker -H unix://%s load >/dev/null",
             eng.sock);
    return run(cmd) == 0 ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    char cmd[512];
    if (eng.pid > 0) {
        snprintf(cmd, sizeof(cmd),
                 "/usr/bin/docker -H unix://%s ps -aq | xargs -r /usr/bin/docker -H unix://%s "
                 "rm -f >/dev/null 2>&1",
                 eng.sock, eng.sock);
        run(cmd);
    }
    private_dockerd_stop(&eng, 90);
    if (eng.dir[0] != '\0')
        host_remove_tree(eng.dir);
    return 0;
}

/* A runtime on the private engine, its state under the test's directory. */
typedef struct rig {
    char deps[160], lambda[160], chats[160], state[160], store[160];
    char prefix[96]; /* its own: runtimes on one engine see only their prefix's containers */
    moat_runtime_config cfg;
} rig;

static void rig_init(rig *r, const char *name)
{
    snprintf(r->deps, sizeof(r->deps), "%s/%s-deps", eng.dir, name);
    snprintf(r->lambda, sizeof(r->lambda), "%s/%s-lambda", eng.dir, name);
    snprintf(r->chats, sizeof(r->chats), "%s/%s-chats", eng.dir, name);
    snprintf(r->state, sizeof(r->state), "%s/%s-state", eng.dir, name);
    snprintf(r->store, sizeof(r->store), "%s/%s-state.db", eng.dir, name);
    snprintf(r->prefix, sizeof(r->prefix), "%s%s-", name_prefix, name);
    mkdir(r->deps, 0755);
    mkdir(r->lambda, 0755);
    moat_runtime_config *c = &r->cfg;
    moat_runtime_config_defaults(c);
    c->image = IMAGE;
    c->docker_host = eng.sock;
    c->docker_timeout_ms = 30000;
    c->chats_root = r->chats;
    c->dependencies_host_path = r->deps;
    c->lambda_tools_host_path = r->lambda;
    c->execd_bundle_dir = execd_bundle;
    c->state_dir = r->state;
    c->store_path = r->store;
    c->container_name_prefix = r->prefix;
    c->cleanup_interval_seconds = 1;
    c->default_memory_bytes = 64ll * 1024 * 1024;
    c->stop_timeout_seconds = 1;
    c->readiness_timeout_ms = 30000;
    c->workspace_size_bytes = 16ll * 1024 * 1024;
    c->workspace_inodes = 1024;
}

static moat_runtime *rig_open(rig *r)
{
    moat_status st;
    moat_runtime *rt = moat_runtime_open(&r->cfg, &st);
    if (rt == NULL)
        fprintf(stderr, "runtime_open: %s\n", st.message);
    assert_non_null(rt);
    return rt;
}

static void create(moat_runtime *rt, const char *chat, bool force_new, moat_session *s)
{
    char sid[MOAT_UUID_STR_LEN];
    moat_uuid_generate(sid);
    moat_session_options opts = {0};
    opts.force_new = force_new;
    moat_status st;
    int64_t now = moat_time_now_ms();
    moat_code code = moat_runtime_create(rt, sid, chat, now, now + 600000, &opts, s, &st);
    if (code != MOAT_CODE_OK)
        fprintf(stderr, "create: %s %s\n", st.reason, st.message);
    assert_int_equal(code, MOAT_CODE_OK);
}

/* execd of this session answers /ping with its token. */
static bool ping(const moat_session *s)
{
    char cmd[4400];
    snprintf(cmd, sizeof(cmd),
             "curl -s -o /dev/null --max-time 2 -w '%%{http_code}' -H 'X-EXECD-ACCESS-TOKEN: %s' "
             "--unix-socket %s http://localhost/ping | grep -q 200",
             s->execd_token, s->execd_socket);
    return run(cmd) == 0;
}

static void write_note(const rig *r, const moat_session *s)
{
    char path[256];
    snprintf(path, sizeof(path), "%s/%s/note.txt", r->chats, s->chat_id);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f, "note of %s\n", s->session_id);
    assert_int_equal(fclose(f), 0);
}

/* The session's sandbox reads, as its sandbox user, the note its workspace held before the
 * restart. */
static bool sandbox_has_note(const rig *r, const moat_session *s)
{
    char cmd[1024];
    snprintf(cmd, sizeof(cmd),
             "/usr/bin/docker -H unix://%.160s exec -u %u:%u %.72s cat /workspace/chat/note.txt "
             "2>/dev/null | grep -qx 'note of %.40s'",
             eng.sock, r->cfg.sandbox_uid, r->cfg.sandbox_gid, s->container_id, s->session_id);
    return run(cmd) == 0;
}

/* Containers of the private engine labelled with the session's id, in any state. */
static int containers_of(const char *session_id)
{
    char cmd[1024];
    snprintf(cmd, sizeof(cmd),
             "test -z \"$(/usr/bin/docker -H unix://%s ps -aq --filter label=session_id=%s)\"",
             eng.sock, session_id);
    return run(cmd) == 0 ? 0 : 1;
}

static moat_session get(moat_runtime *rt, const char *session_id)
{
    moat_session s;
    moat_status st;
    assert_int_equal(moat_runtime_get(rt, session_id, &s, &st), MOAT_CODE_OK);
    return s;
}

static bool running_and_ready(moat_runtime *rt, const moat_session *s)
{
    moat_session now;
    moat_status st;
    return moat_runtime_get(rt, s->session_id, &now, &st) == MOAT_CODE_OK &&
           now.state == MOAT_SESSION_RUNNING && ping(s);
}

/* dockerd restarts under a running runtime (reaper and watcher on): nobody calls reconcile, yet
 * every session comes back with its workspace, or is GONE with the reason. A's host mounts are
 * left as they were; B's workspace and tmpfs are unmounted while the engine is down (as a host
 * that lost them); C's workspace directory has something else mounted on it, so C cannot come
 * back. */
static void test_engine_restart_under_running_runtime(void **state)
{
    (void)state;
    rig r;
    rig_init(&r, "live");
    moat_runtime *rt = rig_open(&r);
    moat_status st;
    assert_int_equal(moat_runtime_start_reaper(rt, &st), MOAT_CODE_OK);
    assert_int_equal(moat_runtime_start_watcher(rt, &st), MOAT_CODE_OK);
    char chat[3][MOAT_UUID_STR_LEN];
    moat_session s[3];
    for (int i = 0; i < 3; i++) {
        moat_uuid_generate(chat[i]);
        create(rt, chat[i], false, &s[i]);
        write_note(&r, &s[i]);
    }

    private_dockerd_stop(&eng, 90);
    char path[256];
    snprintf(path, sizeof(path), "%s/%s", r.chats, chat[1]);
    assert_int_equal(umount2(path, 0), 0);
    snprintf(path, sizeof(path), "%s/sessions/%s", r.state, s[1].session_id);
    assert_int_equal(umount2(path, 0), 0);
    char foreign[256];
    snprintf(foreign, sizeof(foreign), "%s/%s", r.chats, chat[2]);
    assert_int_equal(mount("tmpfs", foreign, "tmpfs", 0, "size=1m"), 0);
    assert_int_equal(private_dockerd_start(&eng, 60), 0);

    bool back = false;
    for (int i = 0; i < 1200 && !back; i++) { /* bounded: 120 s */
        back = running_and_ready(rt, &s[0]) && running_and_ready(rt, &s[1]) &&
               get(rt, s[2].session_id).state == MOAT_SESSION_GONE;
        if (!back)
            usleep(100000);
    }
    assert_true(back);
    for (int i = 0; i < 2; i++) {
        moat_session now = get(rt, s[i].session_id);
        assert_string_equal(now.container_id, s[i].container_id);
        assert_true(sandbox_has_note(&r, &s[i]));
    }
    moat_session gone = get(rt, s[2].session_id);
    assert_string_equal(gone.end_reason, "engine_restart_failed: foreign_mount");
    assert_int_equal(containers_of(s[2].session_id), 0);
    moat_session *list = NULL;
    size_t n = 0;
    assert_int_equal(moat_runtime_list_active(rt, &list, &n, &st), MOAT_CODE_OK);
    assert_int_equal(n, 2);
    free(list);

    assert_int_equal(umount2(foreign, 0), 0);
    for (int i = 0; i < 2; i++)
        assert_int_equal(moat_runtime_stop(rt, s[i].session_id, &st), MOAT_CODE_OK);
    moat_runtime_close(rt);
}

/* Closes rt (as moatd's exit), restarts dockerd while the host loses every mount under the rig (a
 * reboot), then opens a runtime whose start-up reconcile must bring s, the one session, back
 * with its note. Returns that runtime. */
static moat_runtime *reboot_and_reconcile(rig *r, moat_runtime *rt, const moat_session *s)
{
    moat_runtime_close(rt);
    private_dockerd_stop(&eng, 90);
    assert_true(host_unmount_under(r->chats) > 0);
    assert_true(host_unmount_under(r->state) > 0);
    assert_int_equal(private_dockerd_start(&eng, 60), 0);

    rt = rig_open(r);
    moat_reconcile_report rep;
    moat_status st;
    assert_int_equal(moat_runtime_reconcile(rt, moat_time_now_ms(), &rep, &st), MOAT_CODE_OK);
    assert_int_equal(rep.restarted, 1);
    assert_int_equal(rep.restart_failed, 0);
    assert_int_equal(rep.pool_slots_removed, 0);
    assert_true(running_and_ready(rt, s));
    assert_true(sandbox_has_note(r, s));
    return rt;
}

/* moatd is down while dockerd restarts and the host loses every mount (a reboot): the next
 * runtime's start-up reconcile brings the session back with its files. */
static void test_moatd_starts_after_engine_restart(void **state)
{
    (void)state;
    rig r;
    rig_init(&r, "later");
    moat_runtime *rt = rig_open(&r);
    char chat[MOAT_UUID_STR_LEN];
    moat_uuid_generate(chat);
    moat_session s;
    create(rt, chat, false, &s);
    write_note(&r, &s);
    rt = reboot_and_reconcile(&r, rt, &s);
    moat_status st;
    assert_int_equal(moat_runtime_stop(rt, s.session_id, &st), MOAT_CODE_OK);
    moat_runtime_close(rt);
}

/* A session claimed from the warm pool sees its workspace through its slot directory
 * (<state_dir>/pool/<id>, shared, mounted rslave into the sandbox). After dockerd restarts while
 * moatd is down and the host loses every mount, the next runtime's reconcile mounts the chat's
 * workspace onto that directory again before it starts the container: the note is back. */
static void test_claimed_sandbox_after_engine_restart(void **state)
{
    (void)state;
    rig r;
    rig_init(&r, "pool");
    r.cfg.pool_size = 1;
    r.cfg.pool_fill_concurrency = 1;
    moat_runtime *rt = rig_open(&r);
    moat_status st;
    assert_int_equal(moat_runtime_start_pool(rt, &st), MOAT_CODE_OK);
    moat_pool_stats pool = {0};
    for (int i = 0; i < 600 && pool.ready == 0; i++) { /* bounded: 60 s */
        moat_runtime_pool_stats(rt, &pool);
        if (pool.ready == 0)
            usleep(100000);
    }
    assert_int_equal(pool.ready, 1);
    char chat[MOAT_UUID_STR_LEN];
    moat_uuid_generate(chat);
    moat_session s;
    int64_t now = moat_time_now_ms();
    assert_int_equal(moat_runtime_claim(rt, chat, now, now + 600000, NULL, &s, &st), MOAT_CODE_OK);
    write_note(&r, &s);
    assert_true(sandbox_has_note(&r, &s));
    /* Closing removes the slot started in the claimed one's place. */
    rt = reboot_and_reconcile(&r, rt, &s);
    assert_string_equal(get(rt, s.session_id).chat_id, chat);
    assert_int_equal(moat_runtime_stop(rt, s.session_id, &st), MOAT_CODE_OK);
    moat_runtime_close(rt);
}

/* Two runtimes on one store each made a session of one chat (as two moatds, or a create while
 * the chat's session was down, do). After a restart, reconcile keeps the newest; a force_new
 * session of the chat is no duplicate. */
static void test_duplicate_chat_resolved(void **state)
{
    (void)state;
    rig r;
    rig_init(&r, "dup");
    moat_runtime *first = rig_open(&r);
    moat_runtime *second = rig_open(&r);
    char chat[MOAT_UUID_STR_LEN];
    moat_uuid_generate(chat);
    moat_session older, newer, extra;
    create(first, chat, false, &older);
    create(second, chat, false, &newer);
    create(first, chat, true, &extra);
    assert_true(extra.force_new);
    moat_runtime_close(first);
    moat_runtime_close(second);

    moat_runtime *rt = rig_open(&r);
    moat_reconcile_report rep;
    moat_status st;
    assert_int_equal(moat_runtime_reconcile(rt, moat_time_now_ms(), &rep, &st), MOAT_CODE_OK);
    assert_int_equal(rep.duplicates, 1);
    moat_session s = get(rt, older.session_id);
    assert_int_equal(s.state, MOAT_SESSION_STOPPED);
    assert_string_equal(s.end_reason, "duplicate");
    assert_int_equal(containers_of(older.session_id), 0);
    assert_true(running_and_ready(rt, &newer));
    assert_true(running_and_ready(rt, &extra));
    moat_session *list = NULL;
    size_t n = 0;
    assert_int_equal(moat_runtime_list_active(rt, &list, &n, &st), MOAT_CODE_OK);
    assert_int_equal(n, 2);
    for (size_t i = 0; i < n; i++)
        assert_true(strcmp(list[i].session_id, newer.session_id) == 0 ||
                    (strcmp(list[i].session_id, extra.session_id) == 0 && list[i].force_new));
    free(list);
    /* A second pass finds nothing more to resolve. */
    assert_int_equal(moat_runtime_reconcile(rt, moat_time_now_ms(), &rep, &st), MOAT_CODE_OK);
    assert_int_equal(rep.duplicates, 0);
    assert_int_equal(moat_runtime_stop(rt, newer.session_id, &st), MOAT_CODE_OK);
    assert_int_equal(moat_runtime_stop(rt, extra.session_id, &st), MOAT_CODE_OK);
    moat_runtime_close(rt);
}

/* A container as an interrupted create leaves it: the runtime's name and labels, never started. */
static void make_created_orphan(const rig *r, const char *chat, char *session_id)
{
    moat_uuid_generate(session_id);
    char expires[MOAT_TIME_ISO_MAX];
    moat_time_format_iso8601(moat_time_now_ms() + 600000, expires);
    char cmd[1024];
    snprintf(cmd, sizeof(cmd),
             "/usr/bin/docker -H unix://%s create --name %s%s --label session_id=%s --label "
             "chat_id=%s --label expires_at=%s --label moat.managed=true " IMAGE " >/dev/null",
             eng.sock, r->prefix, session_id, session_id, chat, expires);
    assert_int_equal(run(cmd), 0);
    assert_int_equal(containers_of(session_id), 1);
}

/* Containers left in Created go, by the reaper's sweep and by reconcile, and their sessions are
 * FAILED create_interrupted, while a session of the same chat next to them keeps running. */
static void test_created_orphans_removed(void **state)
{
    (void)state;
    rig r;
    rig_init(&r, "orphan");
    moat_runtime *rt = rig_open(&r);
    char chat[MOAT_UUID_STR_LEN];
    moat_uuid_generate(chat);
    moat_session live;
    create(rt, chat, false, &live);

    char orphan[MOAT_UUID_STR_LEN];
    make_created_orphan(&r, chat, orphan);
    size_t reaped = 0;
    moat_status st;
    assert_int_equal(moat_runtime_reap(rt, moat_time_now_ms(), &reaped, &st), MOAT_CODE_OK);
    assert_int_equal(containers_of(orphan), 0);
    moat_session s = get(rt, orphan);
    assert_int_equal(s.state, MOAT_SESSION_FAILED);
    assert_string_equal(s.end_reason, "create_interrupted");

    make_created_orphan(&r, chat, orphan);
    moat_reconcile_report rep;
    assert_int_equal(moat_runtime_reconcile(rt, moat_time_now_ms(), &rep, &st), MOAT_CODE_OK);
    assert_int_equal(rep.orphans, 1);
    assert_int_equal(containers_of(orphan), 0);
    assert_string_equal(get(rt, orphan).end_reason, "create_interrupted");

    assert_true(running_and_ready(rt, &live));
    assert_int_equal(moat_runtime_stop(rt, live.session_id, &st), MOAT_CODE_OK);
    moat_runtime_close(rt);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_created_orphans_removed),
        cmocka_unit_test(test_duplicate_chat_resolved),
        cmocka_unit_test(test_moatd_starts_after_engine_restart),
        cmocka_unit_test(test_engine_restart_under_running_runtime),
        cmocka_unit_test(test_claimed_sandbox_after_engine_restart),
    };
    return moat_run_group_tests("test_chaos_restarts", tests, group_setup, group_teardown);
}
