/* The warm pool with real sandboxes (labels integration;docker; root, for the mounts): claims
 * against the real dockerd and moat-sandbox:latest, with workspace quotas. Containers are named
 * moat-pooltest<pid>-* and labelled moat.instance=pooltest<pid>, so runs at the same time never
 * touch each other's; the host side lives under /tmp/moat-pool-<pid>-XXXXXX, and the teardown
 * removes the containers, unmounts what is left there and removes it, even when a test failed.
 * The sandbox image and execd bundle must exist (test_workspace_docker builds them). */
#define _XOPEN_SOURCE 700
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "moat_test.h"

#include "host_mounts.h"
#include "internal.h"

#define IMAGE "moat-sandbox:latest"

typedef struct fx {
    char dir[96], deps[128], lambda[128], chats[128], state[128], store[160];
    char bundle[1024];
    moat_runtime_config cfg;
    moat_runtime *rt;
} fx;

static char prefix[48], instance[48];

static int run(const char *cmd)
{
    int rc = system(cmd);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

/* Runs sh -c script as the sandbox user in the session's container; its output (malloc'd). */
static char *in_sandbox(const moat_session *s, const char *script)
{
    char cmd[1536];
    snprintf(cmd, sizeof(cmd), "/usr/bin/docker exec --user 1000:1000 %s sh -c '%s' 2>&1",
             s->container_id, script);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    char *out = calloc(1, 65536);
    size_t len = 0, n;
    while ((n = fread(out + len, 1, 65535 - len, p)) > 0)
        len += n;
    pclose(p);
    return out;
}

static void remove_test_containers(void)
{
    char cmd[200];
    snprintf(cmd, sizeof(cmd),
             "/usr/bin/docker ps -aq --filter name=%s | xargs -r /usr/bin/docker rm -f "
             ">/dev/null 2>&1",
             prefix);
    run(cmd);
}

static int group_setup(void **state)
{
    (void)state;
    if (getenv("MOAT_BUILD_DIR") == NULL || !moat__can_mount()) {
        fprintf(stderr, "needs MOAT_BUILD_DIR (ctest sets it) and root to mount workspaces\n");
        return -1;
    }
    snprintf(prefix, sizeof(prefix), "moat-pooltest%d-", (int)getpid());
    snprintf(instance, sizeof(instance), "pooltest%d", (int)getpid());
    remove_test_containers();
    return 0;
}

static moat_runtime *open_runtime(const fx *f)
{
    moat_status st;
    moat_runtime *rt = moat_runtime_open(&f->cfg, &st);
    if (rt == NULL)
        fail_msg("open: %s", st.message);
    return rt;
}

static int setup(void **state)
{
    fx *f = calloc(1, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "/tmp/moat-pool-%d-XXXXXX", (int)getpid());
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->deps, sizeof(f->deps), "%s/dependencies", f->dir);
    snprintf(f->lambda, sizeof(f->lambda), "%s/lambda-tools", f->dir);
    snprintf(f->chats, sizeof(f->chats), "%s/chats", f->dir);
    snprintf(f->state, sizeof(f->state), "%s/state", f->dir);
    snprintf(f->store, sizeof(f->store), "%s/state.db", f->dir);
    const char *bundle = getenv("MOAT_EXECD_BUNDLE");
    if (bundle != NULL)
        snprintf(f->bundle, sizeof(f->bundle), "%s", bundle);
    else
        snprintf(f->bundle, sizeof(f->bundle), "%s/execd-bundle", getenv("MOAT_BUILD_DIR"));
    mkdir(f->deps, 0755);
    mkdir(f->lambda, 0755);
    moat_runtime_config_defaults(&f->cfg);
    f->cfg.image = IMAGE;
    f->cfg.chats_root = f->chats;
    f->cfg.dependencies_host_path = f->deps;
    f->cfg.lambda_tools_host_path = f->lambda;
    f->cfg.execd_bundle_dir = f->bundle;
    f->cfg.state_dir = f->state;
    f->cfg.store_path = f->store;
    f->cfg.container_name_prefix = prefix;
    f->cfg.instance = instance;
    f->cfg.workspace_size_bytes = 32ll * 1024 * 1024;
    f->cfg.workspace_inodes = 4096;
    f->cfg.default_memory_bytes = 128ll * 1024 * 1024;
    f->cfg.default_pids_limit = 64;
    f->cfg.readiness_timeout_ms = 20000;
    f->cfg.stop_timeout_seconds = 1;
    f->cfg.pool_size = 1;
    f->cfg.pool_fill_concurrency = 1;
    f->rt = open_runtime(f);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx *f = *state;
    moat_runtime_close(f->rt);
    remove_test_containers();
    int rc = host_remove_tree_checked(f->dir);
    free(f);
    return rc;
}

/* Waits (up to a minute: the host is shared) until the pool has want slots ready. */
static void wait_ready(moat_runtime *rt, uint32_t want)
{
    moat_pool_stats ps;
    for (int i = 0; i < 1200; i++) {
        moat_runtime_pool_stats(rt, &ps);
        if (ps.ready >= want)
            return;
        struct timespec ts = {0, 50000000};
        nanosleep(&ts, NULL);
    }
    fail_msg("pool: %u of %u ready after a minute; last error: %s", ps.ready, want, ps.last_error);
}

static void claim(moat_runtime *rt, const char *chat, int64_t ttl_ms, moat_session *s)
{
    moat_status st;
    int64_t now = moat_time_now_ms();
    if (moat_runtime_claim(rt, chat, now, now + ttl_ms, NULL, s, &st) != MOAT_CODE_OK)
        fail_msg("claim: %s (%s)", st.message, st.reason);
}

/* A cold session for chat (CreateSession's way when the pool cannot serve); its id in sid. */
static void cold_create(moat_runtime *rt, const char *chat, char sid[MOAT_UUID_STR_LEN],
                        moat_session *s)
{
    moat_status st;
    moat_uuid_generate(sid);
    int64_t now = moat_time_now_ms();
    if (moat_runtime_create(rt, sid, chat, now, now + 600000, NULL, s, &st) != MOAT_CODE_OK)
        fail_msg("create: %s (%s)", st.message, st.reason);
}

static void expect_contains(const char *text, const char *want)
{
    if (strstr(text, want) == NULL)
        fail_msg("expected \"%s\" in:\n%s", want, text);
}

/* Whether anything is left of slot_id's prepared workspace: its image or its staging mount. */
static bool prepared_left(const moat_runtime *rt, const char *slot_id)
{
    char image[MOAT_RUNTIME_PATH_MAX], staging[MOAT_RUNTIME_PATH_MAX];
    snprintf(image, sizeof(image), "%s/%s.prepared.ext4", rt->ws.images_dir, slot_id);
    snprintf(staging, sizeof(staging), "%s/pool-staging/%s", rt->cfg.state_dir, slot_id);
    return access(image, F_OK) == 0 || access(staging, F_OK) == 0;
}

/* The id of the oldest ready slot. */
static void ready_slot(moat_runtime *rt, char out[MOAT_UUID_STR_LEN])
{
    pthread_mutex_lock(&rt->pool_mu);
    assert_true(rt->pool_ready_count > 0);
    memcpy(out, rt->pool_ready[0].session_id, MOAT_UUID_STR_LEN);
    assert_true(rt->pool_ready[0].prepared);
    pthread_mutex_unlock(&rt->pool_mu);
}

/* A claimed slot is the chat's session: its workspace, its records, its end. */
static void test_claim_behaves_as_a_session(void **state)
{
    fx *f = *state;
    moat_status st;
    assert_int_equal(moat_runtime_start_pool(f->rt, &st), MOAT_CODE_OK);
    wait_ready(f->rt, 1);
    char chat[MOAT_UUID_STR_LEN], slot[MOAT_UUID_STR_LEN];
    moat_uuid_generate(chat);
    ready_slot(f->rt, slot);
    assert_true(prepared_left(f->rt, slot));
    moat_session s;
    claim(f->rt, chat, 600000, &s);
    assert_string_equal(s.chat_id, chat);
    assert_string_equal(s.session_id, slot);
    assert_int_equal(s.state, MOAT_SESSION_RUNNING);
    /* The prepared workspace became the chat's: renamed, moved, nothing of it left behind. */
    assert_false(prepared_left(f->rt, slot));
    char image[MOAT_RUNTIME_PATH_MAX];
    snprintf(image, sizeof(image), "%s/%s.ext4", f->rt->ws.images_dir, chat);
    assert_int_equal(access(image, F_OK), 0);

    /* The chat's ext4 workspace, empty, read-write for the sandbox user, hardened as a cold one. */
    char *out = in_sandbox(&s, "grep \" /workspace/chat \" /proc/self/mountinfo | tail -n 1; "
                               "ls -A /workspace/chat | wc -l; stat -c %a /workspace/chat; "
                               "echo pooled > /workspace/chat/note && echo wrote");
    expect_contains(out, "ext4");
    expect_contains(out, "nosuid");
    expect_contains(out, "nodev");
    expect_contains(out, "noatime");
    expect_contains(out, "\n0\n700\nwrote");
    free(out);
    char host_note[256];
    snprintf(host_note, sizeof(host_note), "%s/%s/note", f->chats, chat);
    assert_int_equal(access(host_note, F_OK), 0);

    /* Listed with its chat, found, renewed. */
    moat_session *all = NULL;
    size_t n = 0;
    assert_int_equal(moat_runtime_list_active(f->rt, &all, &n, &st), MOAT_CODE_OK);
    bool listed = false;
    for (size_t i = 0; i < n; i++)
        listed |= strcmp(all[i].session_id, s.session_id) == 0 && strcmp(all[i].chat_id, chat) == 0;
    free(all);
    assert_true(listed);
    moat_session got;
    assert_int_equal(moat_runtime_get(f->rt, s.session_id, &got, &st), MOAT_CODE_OK);
    assert_string_equal(got.chat_id, chat);
    int64_t later = moat_time_now_ms() + 900000;
    assert_int_equal(moat_runtime_renew(f->rt, s.session_id, later, &got, &st), MOAT_CODE_OK);
    assert_int_equal(moat_runtime_get(f->rt, s.session_id, &got, &st), MOAT_CODE_OK);
    assert_true(got.expires_at_ms == later);

    /* Stop: the slot's mounts go; the chat's next (cold) session finds the file. */
    assert_int_equal(moat_runtime_stop(f->rt, s.session_id, &st), MOAT_CODE_OK);
    char slot_dir[MOAT_RUNTIME_PATH_MAX];
    moat__pool_slot_dir(f->rt, s.session_id, slot_dir, sizeof(slot_dir));
    assert_int_equal(access(slot_dir, F_OK), -1);
    char sid[MOAT_UUID_STR_LEN];
    moat_session cold;
    cold_create(f->rt, chat, sid, &cold);
    out = in_sandbox(&cold, "cat /workspace/chat/note");
    assert_string_equal(out, "pooled\n");
    free(out);
    assert_int_equal(moat_runtime_stop(f->rt, sid, &st), MOAT_CODE_OK);

    /* A chat with a workspace: the claim attaches that one, and the prepared one goes. */
    wait_ready(f->rt, 1);
    ready_slot(f->rt, slot);
    claim(f->rt, chat, 600000, &s);
    assert_false(prepared_left(f->rt, slot));
    out = in_sandbox(&s, "cat /workspace/chat/note");
    assert_string_equal(out, "pooled\n");
    free(out);
    assert_int_equal(moat_runtime_stop(f->rt, s.session_id, &st), MOAT_CODE_OK);
}

typedef struct claimer {
    moat_runtime *rt;
    char chat[MOAT_UUID_STR_LEN];
    moat_session s;
    moat_code code;
} claimer;

static void *claim_main(void *arg)
{
    claimer *c = arg;
    moat_status st;
    int64_t now = moat_time_now_ms();
    c->code = moat_runtime_claim(c->rt, c->chat, now, now + 600000, NULL, &c->s, &st);
    return NULL;
}

static void *reap_main(void *arg)
{
    moat_status st;
    moat_runtime_reap(arg, moat_time_now_ms(), NULL, &st);
    return NULL;
}

/* Two chats race for one slot: one gets it, the other waits for its refill or is told the pool is
 * empty, never handed the same sandbox; a claim racing a reaper sweep keeps its sandbox. */
static void test_claim_races(void **state)
{
    fx *f = *state;
    moat_status st;
    assert_int_equal(moat_runtime_start_pool(f->rt, &st), MOAT_CODE_OK);
    wait_ready(f->rt, 1);
    claimer c[2] = {{.rt = f->rt}, {.rt = f->rt}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++) {
        moat_uuid_generate(c[i].chat);
        pthread_create(&t[i], NULL, claim_main, &c[i]);
    }
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    int won = (c[0].code == MOAT_CODE_OK) + (c[1].code == MOAT_CODE_OK);
    assert_true(won >= 1);
    if (won == 2)
        assert_string_not_equal(c[0].s.session_id, c[1].s.session_id);
    else
        assert_int_equal((c[0].code == MOAT_CODE_OK ? &c[1] : &c[0])->code, MOAT_CODE_NOT_FOUND);

    wait_ready(f->rt, 1);
    claimer during = {.rt = f->rt};
    moat_uuid_generate(during.chat);
    pthread_t reaper;
    pthread_create(&reaper, NULL, reap_main, f->rt);
    pthread_create(&t[0], NULL, claim_main, &during);
    pthread_join(t[0], NULL);
    pthread_join(reaper, NULL);
    assert_int_equal(during.code, MOAT_CODE_OK);
    for (int i = 0; i < 2; i++)
        if (c[i].code == MOAT_CODE_OK)
            assert_string_not_equal(during.s.session_id, c[i].s.session_id);
    moat_runtime_reap(f->rt, moat_time_now_ms(), NULL, &st);
    moat_session got;
    assert_int_equal(moat_runtime_get(f->rt, during.s.session_id, &got, &st), MOAT_CODE_OK);
    assert_int_equal(got.state, MOAT_SESSION_RUNNING);
    assert_string_equal(got.chat_id, during.chat);
}

/* The reaper ends a claimed session at its expiry, as any other. */
static void test_reaper_expires_a_claim(void **state)
{
    fx *f = *state;
    moat_status st;
    assert_int_equal(moat_runtime_start_pool(f->rt, &st), MOAT_CODE_OK);
    wait_ready(f->rt, 1);
    char chat[MOAT_UUID_STR_LEN];
    moat_uuid_generate(chat);
    moat_session s;
    claim(f->rt, chat, 1000, &s);
    size_t reaped = 0;
    assert_int_equal(moat_runtime_reap(f->rt, moat_time_now_ms() + 2000, &reaped, &st),
                     MOAT_CODE_OK);
    assert_true(reaped >= 1);
    moat_session got;
    assert_int_equal(moat_runtime_get(f->rt, s.session_id, &got, &st), MOAT_CODE_OK);
    assert_int_equal(got.state, MOAT_SESSION_EXPIRED);
    char host_dir[256];
    snprintf(host_dir, sizeof(host_dir), "%s/%s", f->chats, chat);
    assert_int_equal(host_mounts_at(host_dir), 0);
}

/* A restart: the next runtime (nothing of the first in its memory) adopts the claimed session
 * and removes the slot nobody claimed, with its prepared workspace. */
static void test_reconcile_after_restart(void **state)
{
    fx *f = *state;
    moat_status st;
    f->cfg.pool_size = 2;
    moat_runtime_close(f->rt);
    f->rt = open_runtime(f);
    assert_int_equal(moat_runtime_start_pool(f->rt, &st), MOAT_CODE_OK);
    wait_ready(f->rt, 2);
    char chat[MOAT_UUID_STR_LEN];
    moat_uuid_generate(chat);
    moat_session s;
    claim(f->rt, chat, 600000, &s);
    moat_runtime_stop_pool(f->rt);
    /* The first runtime's pool is stopped: start one whose slots the next runtime never knew. */
    f->cfg.pool_size = 1;
    moat_runtime *first = f->rt;
    f->rt = NULL;
    moat_runtime *older = open_runtime(f);
    assert_int_equal(moat_runtime_start_pool(older, &st), MOAT_CODE_OK);
    wait_ready(older, 1);
    char unclaimed[MOAT_UUID_STR_LEN];
    ready_slot(older, unclaimed);
    assert_true(prepared_left(older, unclaimed));
    f->cfg.pool_size = 0;
    f->rt = open_runtime(f);
    moat_reconcile_report rep;
    assert_int_equal(moat_runtime_reconcile(f->rt, moat_time_now_ms(), &rep, &st), MOAT_CODE_OK);
    assert_int_equal(rep.pool_slots_removed, 1);
    assert_false(prepared_left(f->rt, unclaimed));
    moat_session got;
    assert_int_equal(moat_runtime_get(f->rt, s.session_id, &got, &st), MOAT_CODE_OK);
    assert_int_equal(got.state, MOAT_SESSION_RUNNING);
    assert_string_equal(got.chat_id, chat);
    char *out = in_sandbox(&got, "echo again > /workspace/chat/after && echo ok");
    assert_string_equal(out, "ok\n");
    free(out);
    moat_runtime_close(older);
    moat_runtime_close(first);
    assert_int_equal(moat_runtime_stop(f->rt, s.session_id, &st), MOAT_CODE_OK);
}

/* Waits (up to a minute) until the pool has nothing ready and a slot starting. */
static void wait_starting(moat_runtime *rt)
{
    moat_pool_stats ps;
    for (int i = 0; i < 1200; i++) {
        moat_runtime_pool_stats(rt, &ps);
        if (ps.ready == 0 && ps.starting > 0)
            return;
        struct timespec ts = {0, 5000000};
        nanosleep(&ts, NULL);
    }
    fail_msg("pool: no slot starting after a minute (%u ready); last error: %s", ps.ready,
             ps.last_error);
}

/* Whether the chat's workspace in the sandbox is its own ext4 image, empty and writable. */
static void expect_new_workspace(const fx *f, const moat_session *s, const char *chat)
{
    char *out =
        in_sandbox(s, "grep \" /workspace/chat \" /proc/self/mountinfo | tail -n 1; "
                      "ls -A /workspace/chat | wc -l; echo x > /workspace/chat/f && echo w");
    expect_contains(out, "ext4");
    expect_contains(out, "\n0\nw");
    free(out);
    char image[MOAT_RUNTIME_PATH_MAX];
    snprintf(image, sizeof(image), "%s/%s.ext4", f->rt->ws.images_dir, chat);
    assert_int_equal(access(image, F_OK), 0);
}

/* A claim that finds the pool empty: with a slot starting it waits for that one (its chat's
 * workspace attached meanwhile); with none starting it is told at once, leaves nothing of the
 * chat mounted, and a cold create serves the chat. */
static void test_claim_on_an_empty_pool(void **state)
{
    fx *f = *state;
    moat_status st;
    assert_int_equal(moat_runtime_start_pool(f->rt, &st), MOAT_CODE_OK);
    wait_ready(f->rt, 1);
    char first[MOAT_UUID_STR_LEN], waiting[MOAT_UUID_STR_LEN], cold_chat[MOAT_UUID_STR_LEN];
    moat_uuid_generate(first);
    moat_uuid_generate(waiting);
    moat_uuid_generate(cold_chat);
    moat_session a, b;
    claim(f->rt, first, 600000, &a);
    wait_starting(f->rt);
    claim(f->rt, waiting, 600000, &b);
    assert_string_not_equal(a.session_id, b.session_id);
    assert_string_equal(b.chat_id, waiting);
    expect_new_workspace(f, &b, waiting);
    assert_false(prepared_left(f->rt, b.session_id));
    pthread_mutex_lock(&f->rt->pool_mu);
    assert_int_equal(f->rt->pool_claims_waiting, 0);
    pthread_mutex_unlock(&f->rt->pool_mu);

    /* No pool at all: nothing to wait for. */
    moat_runtime_stop_pool(f->rt);
    moat_session c;
    int64_t now = moat_time_now_ms();
    assert_int_equal(moat_runtime_claim(f->rt, cold_chat, now, now + 600000, NULL, &c, &st),
                     MOAT_CODE_NOT_FOUND);
    assert_string_equal(st.reason, "pool_empty");
    char chat_dir[256];
    snprintf(chat_dir, sizeof(chat_dir), "%s/%s", f->chats, cold_chat);
    assert_int_equal(host_mounts_at(chat_dir), 0);
    char sid[MOAT_UUID_STR_LEN];
    cold_create(f->rt, cold_chat, sid, &c);
    expect_new_workspace(f, &c, cold_chat);
    assert_int_equal(moat_runtime_stop(f->rt, sid, &st), MOAT_CODE_OK);
    assert_int_equal(moat_runtime_stop(f->rt, a.session_id, &st), MOAT_CODE_OK);
    assert_int_equal(moat_runtime_stop(f->rt, b.session_id, &st), MOAT_CODE_OK);
}

/* A crash in a claim between the rename of the slot's prepared workspace to the chat's and the
 * move of its mount: the restart's reconcile removes the slot (it has no row, so no chat has
 * it) and its staging mount; the chat keeps a whole, empty image that its next session mounts,
 * and no mount or loop device of the slot is left. */
static void test_crash_between_rename_and_move(void **state)
{
    fx *f = *state;
    moat_status st;
    moat_runtime *crashed = f->rt;
    assert_int_equal(moat_runtime_start_pool(crashed, &st), MOAT_CODE_OK);
    wait_ready(crashed, 1);
    char slot[MOAT_UUID_STR_LEN], chat[MOAT_UUID_STR_LEN];
    ready_slot(crashed, slot);
    moat_uuid_generate(chat);
    /* The claim's first step, as moat__prepared_claim takes it; the process dies after it. */
    char prepared[MOAT_RUNTIME_PATH_MAX], image[MOAT_RUNTIME_PATH_MAX];
    snprintf(prepared, sizeof(prepared), "%s/%s.prepared.ext4", crashed->ws.images_dir, slot);
    snprintf(image, sizeof(image), "%s/%s.ext4", crashed->ws.images_dir, chat);
    assert_int_equal(rename(prepared, image), 0);
    char container[MOAT_CONTAINER_ID_MAX];
    pthread_mutex_lock(&crashed->pool_mu);
    memcpy(container, crashed->pool_ready[0].container_id, sizeof(container));
    pthread_mutex_unlock(&crashed->pool_mu);

    f->cfg.pool_size = 0;
    f->rt = open_runtime(f);
    moat_reconcile_report rep;
    assert_int_equal(moat_runtime_reconcile(f->rt, moat_time_now_ms(), &rep, &st), MOAT_CODE_OK);
    assert_int_equal(rep.pool_slots_removed, 1);
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "/usr/bin/docker inspect %s >/dev/null 2>&1", container);
    assert_int_not_equal(run(cmd), 0);
    moat_session got;
    assert_true(moat_runtime_get(f->rt, slot, &got, &st) != MOAT_CODE_OK ||
                got.state != MOAT_SESSION_RUNNING);
    char staging[MOAT_RUNTIME_PATH_MAX], slot_dir[MOAT_RUNTIME_PATH_MAX], chat_dir[256];
    snprintf(staging, sizeof(staging), "%s/pool-staging/%s", f->state, slot);
    moat__pool_slot_dir(f->rt, slot, slot_dir, sizeof(slot_dir));
    snprintf(chat_dir, sizeof(chat_dir), "%s/%s", f->chats, chat);
    assert_int_equal(host_mounts_at(staging), 0);
    assert_int_equal(host_mounts_at(slot_dir), 0);
    assert_int_equal(host_mounts_at(chat_dir), 0);
    assert_int_equal(host_loops_under(image), 0);
    assert_false(prepared_left(f->rt, slot));

    char sid[MOAT_UUID_STR_LEN];
    moat_session s;
    cold_create(f->rt, chat, sid, &s);
    expect_new_workspace(f, &s, chat);
    assert_int_equal(moat_runtime_stop(f->rt, sid, &st), MOAT_CODE_OK);
    assert_int_equal(host_mounts_at(chat_dir), 0);
    moat_runtime_close(crashed);
}

static bool snapshot_usable(moat_runtime *rt)
{
    pthread_mutex_lock(&rt->cache_mu);
    bool usable = rt->watch_connected && rt->cache_valid && rt->cache_snapshot_gen == rt->cache_gen;
    pthread_mutex_unlock(&rt->cache_mu);
    return usable;
}

/* The session session_id as list_active has it; false when it is not listed. */
static bool listed_as(moat_runtime *rt, const char *session_id, moat_session *out)
{
    moat_session *all = NULL;
    size_t n = 0;
    moat_status st;
    assert_int_equal(moat_runtime_list_active(rt, &all, &n, &st), MOAT_CODE_OK);
    bool found = false;
    for (size_t i = 0; i < n && !found; i++) {
        found = strcmp(all[i].session_id, session_id) == 0;
        if (found)
            *out = all[i];
    }
    free(all);
    return found;
}

/* With the event watcher, the list snapshot stays in use through a claim (which adds its
 * session), the slot's refill (whose events are an unclaimed slot's) and the session's stop
 * (which takes it out), and agrees with Docker's own list. */
static void test_list_snapshot_follows_claims(void **state)
{
    fx *f = *state;
    moat_status st;
    assert_int_equal(moat_runtime_start_watcher(f->rt, &st), MOAT_CODE_OK);
    assert_int_equal(moat_runtime_start_pool(f->rt, &st), MOAT_CODE_OK);
    wait_ready(f->rt, 1);
    bool connected = false;
    for (int i = 0; i < 1200 && !connected; i++) {
        pthread_mutex_lock(&f->rt->cache_mu);
        connected = f->rt->watch_connected;
        pthread_mutex_unlock(&f->rt->cache_mu);
        struct timespec ts = {0, 50000000};
        nanosleep(&ts, NULL);
    }
    assert_true(connected);
    char chat[MOAT_UUID_STR_LEN];
    moat_uuid_generate(chat);
    moat_session s, cached, fresh, *all = NULL;
    size_t n = 0;
    assert_int_equal(moat_runtime_list_active(f->rt, &all, &n, &st), MOAT_CODE_OK);
    free(all);
    assert_true(snapshot_usable(f->rt));
    claim(f->rt, chat, 600000, &s);
    assert_true(snapshot_usable(f->rt));
    assert_true(listed_as(f->rt, s.session_id, &cached));
    wait_ready(f->rt, 1);
    assert_true(snapshot_usable(f->rt));
    moat__cache_invalidate(f->rt);
    assert_true(listed_as(f->rt, s.session_id, &fresh));
    assert_string_equal(cached.chat_id, chat);
    assert_string_equal(cached.chat_id, fresh.chat_id);
    assert_string_equal(cached.container_id, fresh.container_id);
    assert_string_equal(cached.image, fresh.image);
    assert_string_equal(cached.execd_token, fresh.execd_token);
    assert_string_equal(cached.execd_socket, fresh.execd_socket);
    assert_int_equal(cached.state, fresh.state);
    assert_true(cached.created_at_ms == fresh.created_at_ms);
    assert_true(cached.expires_at_ms == fresh.expires_at_ms);
    assert_int_equal(cached.force_new, fresh.force_new);

    assert_int_equal(moat_runtime_stop(f->rt, s.session_id, &st), MOAT_CODE_OK);
    assert_true(snapshot_usable(f->rt));
    assert_false(listed_as(f->rt, s.session_id, &cached));
    moat_runtime_stop_watcher(f->rt);
}

/* Containers of this run labelled session_id=sid. */
static int containers_of_session(const char *sid)
{
    char cmd[256];
    snprintf(cmd, sizeof(cmd),
             "/usr/bin/docker ps -aq --filter name=%s --filter label=session_id=%s | wc -l", prefix,
             sid);
    FILE *p = popen(cmd, "r");
    int n = -1;
    if (p != NULL && fscanf(p, "%d", &n) != 1)
        n = -1;
    if (p != NULL)
        pclose(p);
    return n;
}

static void reserve(moat_runtime *rt, char sid[MOAT_UUID_STR_LEN])
{
    moat_status st;
    if (moat_runtime_pool_reserve(rt, NULL, sid, &st) != MOAT_CODE_OK)
        fail_msg("reserve: %s (%s)", st.message, st.reason);
}

/* A cluster create's reservation: the oldest ready slot out of the pool (no second reservation
 * or claim gets it, no sweep removes it), given back to the head of the pool unchanged, or
 * bound to a chat once and only once, or removed when its id may be known elsewhere. */
static void test_reservation(void **state)
{
    fx *f = *state;
    moat_status st;
    assert_int_equal(moat_runtime_start_pool(f->rt, &st), MOAT_CODE_OK);
    wait_ready(f->rt, 1);
    char oldest[MOAT_UUID_STR_LEN], sid[MOAT_UUID_STR_LEN], other[MOAT_UUID_STR_LEN];
    ready_slot(f->rt, oldest);
    reserve(f->rt, sid);
    assert_string_equal(sid, oldest);
    moat_pool_stats ps;
    moat_runtime_pool_stats(f->rt, &ps);
    assert_int_equal(ps.reserved, 1);
    assert_int_equal(ps.ready, 0);
    /* No refill while a reservation is open: the pool is empty to everyone else. */
    assert_int_equal(moat_runtime_pool_reserve(f->rt, NULL, other, &st), MOAT_CODE_NOT_FOUND);
    assert_string_equal(st.reason, "pool_empty");
    char chat[MOAT_UUID_STR_LEN];
    moat_uuid_generate(chat);
    moat_session s;
    int64_t now = moat_time_now_ms();
    assert_int_equal(moat_runtime_claim(f->rt, chat, now, now + 600000, NULL, &s, &st),
                     MOAT_CODE_NOT_FOUND);
    moat_reconcile_report rep;
    assert_int_equal(moat_runtime_reconcile(f->rt, moat_time_now_ms(), &rep, &st), MOAT_CODE_OK);
    assert_int_equal(rep.pool_slots_removed, 0);
    assert_int_equal(containers_of_session(sid), 1);

    moat_runtime_pool_unreserve(f->rt, sid, true);
    moat_runtime_pool_stats(f->rt, &ps);
    assert_int_equal(ps.reserved, 0);
    ready_slot(f->rt, oldest);
    assert_string_equal(oldest, sid);
    /* Given back once: a second give-back or a bind of it finds no reservation. */
    moat_runtime_pool_unreserve(f->rt, sid, false);
    assert_int_equal(containers_of_session(sid), 1);
    assert_int_equal(moat_runtime_pool_bind(f->rt, sid, chat, now, now + 600000, &s, &st),
                     MOAT_CODE_NOT_FOUND);

    reserve(f->rt, sid);
    assert_string_equal(sid, oldest);
    assert_int_equal(moat_runtime_pool_bind(f->rt, sid, "not-a-uuid", now, now + 600000, &s, &st),
                     MOAT_CODE_INVALID_ARGUMENT);
    ready_slot(f->rt, oldest);
    assert_string_equal(oldest, sid);
    reserve(f->rt, sid);
    assert_int_equal(moat_runtime_pool_bind(f->rt, sid, chat, now, now + 600000, &s, &st),
                     MOAT_CODE_OK);
    assert_string_equal(s.session_id, sid);
    assert_string_equal(s.chat_id, chat);
    char *out = in_sandbox(&s, "echo bound > /workspace/chat/note && cat /workspace/chat/note");
    assert_string_equal(out, "bound\n");
    free(out);
    char other_chat[MOAT_UUID_STR_LEN];
    moat_uuid_generate(other_chat);
    moat_session again;
    assert_int_equal(moat_runtime_pool_bind(f->rt, sid, other_chat, now, now + 600000, &again, &st),
                     MOAT_CODE_NOT_FOUND);
    moat_runtime_pool_unreserve(f->rt, sid, true);
    moat_session got;
    assert_int_equal(moat_runtime_get(f->rt, sid, &got, &st), MOAT_CODE_OK);
    assert_string_equal(got.chat_id, chat);
    assert_int_equal(got.state, MOAT_SESSION_RUNNING);

    /* The refill follows; a reservation dropped without reuse takes its sandbox with it. */
    wait_ready(f->rt, 1);
    reserve(f->rt, other);
    moat_runtime_pool_unreserve(f->rt, other, false);
    assert_int_equal(containers_of_session(other), 0);
    assert_int_equal(moat_runtime_stop(f->rt, sid, &st), MOAT_CODE_OK);
}

typedef struct reserver {
    moat_runtime *rt;
    char sid[MOAT_UUID_STR_LEN];
    moat_code code;
} reserver;

static void *reserve_main(void *arg)
{
    reserver *r = arg;
    moat_status st;
    r->code = moat_runtime_pool_reserve(r->rt, NULL, r->sid, &st);
    return NULL;
}

/* A reservation racing a claim for one ready slot: never both get it. A reservation left open
 * when its process dies: the next runtime's reconcile removes the slot, so its id is never a
 * session there. */
static void test_reservation_races_and_restart(void **state)
{
    fx *f = *state;
    moat_status st;
    assert_int_equal(moat_runtime_start_pool(f->rt, &st), MOAT_CODE_OK);
    wait_ready(f->rt, 1);
    reserver r = {.rt = f->rt};
    claimer c = {.rt = f->rt};
    moat_uuid_generate(c.chat);
    pthread_t t[2];
    pthread_create(&t[0], NULL, reserve_main, &r);
    pthread_create(&t[1], NULL, claim_main, &c);
    pthread_join(t[0], NULL);
    pthread_join(t[1], NULL);
    assert_true(r.code == MOAT_CODE_OK || c.code == MOAT_CODE_OK);
    if (r.code == MOAT_CODE_OK && c.code == MOAT_CODE_OK)
        assert_string_not_equal(r.sid, c.s.session_id);
    if (c.code == MOAT_CODE_OK)
        assert_int_equal(moat_runtime_stop(f->rt, c.s.session_id, &st), MOAT_CODE_OK);
    if (r.code != MOAT_CODE_OK) {
        wait_ready(f->rt, 1);
        reserve(f->rt, r.sid);
    }
    /* A restart with the reservation open: nothing of the first runtime in the next's memory. */
    moat_runtime *first = f->rt;
    f->cfg.pool_size = 0;
    f->rt = open_runtime(f);
    moat_reconcile_report rep;
    assert_int_equal(moat_runtime_reconcile(f->rt, moat_time_now_ms(), &rep, &st), MOAT_CODE_OK);
    assert_true(rep.pool_slots_removed >= 1);
    assert_int_equal(containers_of_session(r.sid), 0);
    moat_session got;
    assert_int_equal(moat_runtime_get(f->rt, r.sid, &got, &st), MOAT_CODE_NOT_FOUND);
    moat_runtime_close(first);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_claim_behaves_as_a_session, setup, teardown),
        cmocka_unit_test_setup_teardown(test_claim_races, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reaper_expires_a_claim, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reconcile_after_restart, setup, teardown),
        cmocka_unit_test_setup_teardown(test_list_snapshot_follows_claims, setup, teardown),
        cmocka_unit_test_setup_teardown(test_claim_on_an_empty_pool, setup, teardown),
        cmocka_unit_test_setup_teardown(test_crash_between_rename_and_move, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reservation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reservation_races_and_restart, setup, teardown),
    };
    return moat_run_group_tests("test_pool_docker", tests, group_setup, NULL);
}
