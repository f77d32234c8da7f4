/* Workspace quotas with real sandboxes (labels integration;docker; root, for the mounts): the
 * runtime with its defaults (workspace images, a tmpfs /run/moat, a read-only root) against the
 * real dockerd and moat-sandbox:latest. Containers are named moat-wstest<pid>-* and labelled
 * moat.instance=wstest<pid>, so that runs at the same time on one engine never touch each
 * other's; everything on the host lives under /tmp/moat-wsdocker-<pid>-XXXXXX, and
 * the teardown removes the containers, unmounts what is left there and removes it, even when a
 * test failed. Runs scripts/build-sandbox-image.sh when the image or the bundle is missing. */
#define _XOPEN_SOURCE 700
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include "moat_test.h"

#include "host_mounts.h"
#include "internal.h"

#define IMAGE      "moat-sandbox:latest"
#define QUOTA      (64ll * 1024 * 1024)
#define TMPFS_SIZE (16ll * 1024 * 1024)

typedef struct fx {
    char dir[96], deps[128], lambda[128], chats[128], state[128], store[160];
    char bundle[1024];
    moat_runtime_config cfg;
    moat_runtime *rt;
} fx;

static int run(const char *cmd)
{
    int rc = system(cmd);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

/* Runs cmd and returns its stdout and stderr (malloc'd). */
static char *capture(const char *cmd)
{
    char full[2048];
    snprintf(full, sizeof(full), "%s 2>&1", cmd);
    FILE *p = popen(full, "r");
    assert_non_null(p);
    size_t cap = 1 << 20, len = 0, n;
    char *out = calloc(1, cap);
    while ((n = fread(out + len, 1, cap - len - 1, p)) > 0)
        len += n;
    pclose(p);
    return out;
}

static char prefix[48], instance[48];

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
    const char *build = getenv("MOAT_BUILD_DIR");
    const char *src = getenv("MOAT_SOURCE_DIR");
    if (build == NULL || src == NULL) {
        fprintf(stderr, "MOAT_BUILD_DIR and MOAT_SOURCE_DIR must be set (ctest sets them)\n");
        return -1;
    }
    if (!moat__can_mount()) {
        fprintf(stderr, "needs root (CAP_SYS_ADMIN) to mount workspaces\n");
        return -1;
    }
    char cmd[2048];
    snprintf(cmd, sizeof(cmd),
             "test -x %s/execd-bundle/run && /usr/bin/docker image inspect " IMAGE
             " >/dev/null 2>&1 || %s/scripts/build-sandbox-image.sh %s >/dev/null",
             build, src, build);
    if (getenv("MOAT_EXECD_BUNDLE") == NULL && run(cmd) != 0) {
        fprintf(stderr, "cannot build the sandbox image and execd bundle: %s\n", cmd);
        return -1;
    }
    snprintf(prefix, sizeof(prefix), "moat-wstest%d-", (int)getpid());
    snprintf(instance, sizeof(instance), "wstest%d", (int)getpid());
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
    snprintf(f->dir, sizeof(f->dir), "/tmp/moat-wsdocker-%d-XXXXXX", (int)getpid());
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
    moat_runtime_config_defaults(&f->cfg); /* with quotas and a read-only root */
    f->cfg.image = IMAGE;
    f->cfg.chats_root = f->chats;
    f->cfg.dependencies_host_path = f->deps;
    f->cfg.lambda_tools_host_path = f->lambda;
    f->cfg.execd_bundle_dir = f->bundle;
    f->cfg.state_dir = f->state;
    f->cfg.store_path = f->store;
    f->cfg.container_name_prefix = prefix;
    f->cfg.instance = instance;
    /* Small, so that filling them is quick; tmpfs pages count against the memory limit. */
    f->cfg.workspace_size_bytes = QUOTA;
    f->cfg.workspace_inodes = 4096;
    f->cfg.tmpfs_size_bytes = TMPFS_SIZE;
    f->cfg.default_memory_bytes = 256ll * 1024 * 1024;
    f->cfg.default_pids_limit = 64;
    f->cfg.readiness_timeout_ms = 20000;
    f->cfg.stop_timeout_seconds = 1;
    open_runtime(f);
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

static void create(fx *f, const char *chat, moat_session *s)
{
    char sid[MOAT_UUID_STR_LEN];
    moat_uuid_generate(sid);
    moat_status st;
    int64_t now = moat_time_now_ms();
    if (moat_runtime_create(f->rt, sid, chat, now, now + 600000, NULL, s, &st) != MOAT_CODE_OK)
        fail_msg("create: %s (%s)", st.message, st.reason);
}

/* Runs sh -c script in the session's container as user ("1000:1000", the sandbox user, as execd
 * would, or "0:0" for what only execd's root may do); returns its output (malloc'd). */
static char *in_sandbox_as(const moat_session *s, const char *user, const char *script)
{
    char cmd[1536];
    snprintf(cmd, sizeof(cmd), "/usr/bin/docker exec --user %s %s sh -c '%s'", user,
             s->container_id, script);
    return capture(cmd);
}

static char *in_sandbox(const moat_session *s, const char *script)
{
    return in_sandbox_as(s, "1000:1000", script);
}

typedef struct found {
    const char *target;
    bool seen;
    moat__mount_entry entry;
} found;

static void on_entry(void *ctx, const moat__mount_entry *e)
{
    found *f = ctx;
    if (strcmp(e->mount_point, f->target) == 0) {
        f->seen = true;
        f->entry = *e;
    }
}

/* The mount at target as the sandbox sees it (its /proc/self/mountinfo). */
static moat__mount_entry *sandbox_mount(const char *mountinfo, const char *target)
{
    static found f;
    moat__mountinfo_reader *r = malloc(sizeof(*r));
    memset(&f, 0, sizeof(f));
    f.target = target;
    moat__mountinfo_init(r);
    moat__mountinfo_feed(r, mountinfo, strlen(mountinfo), on_entry, &f);
    free(r);
    if (!f.seen)
        fail_msg("no mount at %s in the sandbox:\n%s", target, mountinfo);
    return &f.entry;
}

static bool is_mount_point(const char *dir)
{
    char parent[MOAT_RUNTIME_PATH_MAX + 4];
    snprintf(parent, sizeof(parent), "%s/..", dir);
    struct stat d, p;
    return stat(dir, &d) == 0 && stat(parent, &p) == 0 && d.st_dev != p.st_dev;
}

static void expect_contains(const char *text, const char *want)
{
    if (strstr(text, want) == NULL)
        fail_msg("expected \"%s\" in:\n%s", want, text);
}

/* The sandbox's mounts keep the host's nosuid,nodev; /run/moat is the small tmpfs; the root is
 * read-only and what a shell writes outside the workspace is bounded. */
static void test_sandbox_mounts(void **state)
{
    fx *f = *state;
    assert_true(f->cfg.workspace_quota && f->cfg.read_only_rootfs); /* the defaults */
    char chat[MOAT_UUID_STR_LEN];
    moat_uuid_generate(chat);
    moat_session s;
    create(f, chat, &s);
    char *mi = in_sandbox(&s, "cat /proc/self/mountinfo");
    moat__mount_entry *e = sandbox_mount(mi, "/workspace/chat");
    assert_string_equal(e->fstype, "ext4");
    assert_true(e->nosuid && e->nodev && !e->read_only);
    e = sandbox_mount(mi, "/run/moat");
    assert_string_equal(e->fstype, "tmpfs");
    assert_true(e->nosuid && e->nodev && e->noexec);
    e = sandbox_mount(mi, "/");
    assert_true(e->read_only);
    const char *writable[] = {"/tmp", "/var/tmp", "/root"};
    for (size_t i = 0; i < 3; i++) {
        e = sandbox_mount(mi, writable[i]);
        assert_string_equal(e->fstype, "tmpfs");
        assert_true(e->nosuid && e->nodev && !e->read_only);
    }
    free(mi);

    char *out = in_sandbox(&s, "touch /etc/x; echo x >> /etc/hosts; touch /opt/x; echo rc=$?");
    expect_contains(out, "Read-only file system");
    expect_contains(out, "rc=1");
    free(out);
    out = in_sandbox(&s, "dd if=/dev/zero of=/tmp/fill bs=1M count=32; rm -f /tmp/fill; "
                         "touch /var/tmp/ok && echo writable; touch /root/ok || echo root-only");
    expect_contains(out, "No space left on device");
    expect_contains(out, "writable");
    expect_contains(out, "root-only");
    free(out);
    /* The session's execd directory holds at most 4 MiB. */
    out = in_sandbox_as(&s, "0:0",
                        "dd if=/dev/zero of=/run/moat/fill bs=1M count=8; rm -f /run/moat/fill");
    expect_contains(out, "No space left on device");
    free(out);
    assert_true(moat__execd_ping(s.execd_socket, s.execd_token, 5000));
    moat_status st;
    assert_int_equal(moat_runtime_stop(f->rt, s.session_id, &st), MOAT_CODE_OK);
}

/* A sandbox that writes past its quota gets ENOSPC; earlier files stay intact, the session keeps
 * answering, and the files survive stop, a restart of the runtime and the chat's next session. A
 * second session of the chat shares the mount; the host unmounts it with the last one. */
static void test_quota_and_persistence(void **state)
{
    fx *f = *state;
    char chat[MOAT_UUID_STR_LEN];
    moat_uuid_generate(chat);
    moat_session s1, s2, s3;
    create(f, chat, &s1);
    char *out = in_sandbox(&s1, "echo keep > /workspace/chat/keep.txt && ls -A /workspace/chat");
    assert_string_equal(out, "keep.txt\n"); /* nothing else: no lost+found */
    free(out);
    out = in_sandbox(&s1, "dd if=/dev/zero of=/workspace/chat/fill bs=1M count=128; echo rc=$?");
    expect_contains(out, "No space left on device");
    expect_contains(out, "rc=1");
    free(out);
    /* Then the inodes, with the bytes free again. */
    out = in_sandbox(&s1, "rm /workspace/chat/fill; i=0; "
                          "while touch /workspace/chat/f$i 2>/dev/null; do i=$((i+1)); done; "
                          "touch /workspace/chat/one-more");
    expect_contains(out, "No space left on device");
    free(out);
    out = in_sandbox(&s1, "cat /workspace/chat/keep.txt");
    assert_string_equal(out, "keep\n");
    free(out);
    assert_true(moat__execd_ping(s1.execd_socket, s1.execd_token, 5000));

    /* The host sees the same files, in an image no bigger than the quota. */
    char host_dir[MOAT_RUNTIME_PATH_MAX], image[MOAT_RUNTIME_PATH_MAX];
    char real[MOAT_RUNTIME_PATH_MAX], images[MOAT_RUNTIME_PATH_MAX + 16];
    assert_non_null(realpath(f->chats, real));
    snprintf(images, sizeof(images), "%s/.images", real);
    assert_true(moat__workspace_path(real, chat, "", host_dir, sizeof(host_dir)));
    assert_true(moat__workspace_path(images, chat, ".ext4", image, sizeof(image)));
    assert_true(is_mount_point(host_dir));
    struct statvfs vfs;
    assert_int_equal(statvfs(host_dir, &vfs), 0);
    assert_int_equal(vfs.f_ffree, 0);
    assert_true(vfs.f_bfree > vfs.f_blocks / 2);
    struct stat sb;
    assert_int_equal(stat(image, &sb), 0);
    assert_true(sb.st_blocks * 512 <= QUOTA);

    /* moatd restarts; a second session of the chat shares the mount. */
    moat_runtime_close(f->rt);
    open_runtime(f);
    moat_status st;
    moat_reconcile_report rep;
    assert_int_equal(moat_runtime_reconcile(f->rt, moat_time_now_ms(), &rep, &st), MOAT_CODE_OK);
    assert_int_equal(rep.adopted, 1);
    assert_true(is_mount_point(host_dir));
    create(f, chat, &s2);
    assert_int_equal(host_mounts_at(host_dir), 1);
    out = in_sandbox(&s2, "cat /workspace/chat/keep.txt");
    assert_string_equal(out, "keep\n");
    free(out);

    assert_int_equal(moat_runtime_stop(f->rt, s1.session_id, &st), MOAT_CODE_OK);
    assert_true(is_mount_point(host_dir)); /* s2 still runs */
    assert_int_equal(moat_runtime_stop(f->rt, s2.session_id, &st), MOAT_CODE_OK);
    assert_false(is_mount_point(host_dir));
    assert_int_equal(host_loops_under(image), 0);
    char run_dir[MOAT_RUNTIME_PATH_MAX];
    snprintf(run_dir, sizeof(run_dir), "%s/sessions/%s", f->state, s2.session_id);
    assert_int_equal(access(run_dir, F_OK), -1);

    create(f, chat, &s3);
    out = in_sandbox(&s3, "cat /workspace/chat/keep.txt; ls /workspace/chat | wc -l");
    assert_int_equal(strncmp(out, "keep\n", 5), 0);
    assert_true((fsfilcnt_t)atoi(out + 5) + 16 >= vfs.f_files); /* and every file made before */
    free(out);
    assert_int_equal(moat_runtime_stop(f->rt, s3.session_id, &st), MOAT_CODE_OK);
    assert_false(is_mount_point(host_dir));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_sandbox_mounts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_quota_and_persistence, setup, teardown),
    };
    return moat_run_group_tests("test_workspace_docker", tests, group_setup, NULL);
}
