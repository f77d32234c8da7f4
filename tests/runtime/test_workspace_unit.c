/* Unit tests of the pure parts of workspace quotas: the mountinfo reader (fed whole, one byte at a
 * time and split at every offset), workspace path building, the quota settings' validation
 * (including a process without CAP_SYS_ADMIN), and the readers of a userns-remapped engine's id
 * mapping. Changes nothing on the host. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ftw.h>
#include <linux/capability.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "moat_test.h"

#include "internal.h"

#define CHAT_ID "123e4567-e89b-12d3-a456-426614174000"

/* Six lines: two with optional fields, one with escapes, one without optional fields, one
 * malformed (no "-" separator), one a loop-mounted workspace. */
static const char SAMPLE[] =
    "22 27 0:21 / /proc rw,relatime - proc proc rw\n"
    "27 1 254:0 / / rw,relatime shared:1 master:2 - ext4 /dev/vda rw,discard\n"
    "40 27 0:40 / /mnt/with\\040space\\134x ro,nosuid,nodev,noexec - tmpfs my\\011src rw\n"
    "41 27 0:41 / /broken rw,relatime shared:3 tmpfs tmpfs rw\n"
    "90 27 7:3 / /var/lib/moat/chats/" CHAT_ID " rw,nosuid,nodev,noatime shared:9 - ext4 "
    "/dev/loop3 rw\n"
    "91 27 0:55 / /var/lib/moat/sessions/s rw,nosuid,nodev,noexec,relatime - tmpfs moat-run "
    "rw,size=4096k,nr_inodes=64,mode=700\n";

typedef struct collected {
    moat__mount_entry entries[8];
    size_t count;
} collected;

static void on_entry(void *ctx, const moat__mount_entry *entry)
{
    collected *c = ctx;
    assert_true(c->count < 8);
    c->entries[c->count++] = *entry;
}

static void check_sample(const collected *c, size_t skipped)
{
    assert_int_equal(c->count, 5);
    assert_int_equal(skipped, 1);
    const moat__mount_entry *e = &c->entries[0];
    assert_string_equal(e->mount_point, "/proc");
    assert_string_equal(e->fstype, "proc");
    assert_int_equal(e->major, 0);
    assert_int_equal(e->minor, 21);
    e = &c->entries[1];
    assert_string_equal(e->mount_point, "/");
    assert_string_equal(e->source, "/dev/vda");
    assert_int_equal(e->major, 254);
    assert_false(e->nosuid);
    e = &c->entries[2];
    assert_string_equal(e->mount_point, "/mnt/with space\\x");
    assert_string_equal(e->source, "my\tsrc");
    assert_true(e->read_only && e->nosuid && e->nodev && e->noexec);
    assert_false(e->noatime);
    e = &c->entries[3];
    assert_string_equal(e->mount_point, "/var/lib/moat/chats/" CHAT_ID);
    assert_string_equal(e->fstype, "ext4");
    assert_string_equal(e->source, "/dev/loop3");
    assert_int_equal(e->major, 7);
    assert_int_equal(e->minor, 3);
    assert_true(e->nosuid && e->nodev && e->noatime);
    assert_false(e->read_only || e->noexec);
    e = &c->entries[4];
    assert_string_equal(e->fstype, "tmpfs");
    assert_true(e->nosuid && e->nodev && e->noexec);
}

static void test_mountinfo_whole_and_byte_at_a_time(void **state)
{
    (void)state;
    moat__mountinfo_reader *r = malloc(sizeof(*r));
    collected *c = calloc(1, sizeof(*c));
    moat__mountinfo_init(r);
    moat__mountinfo_feed(r, SAMPLE, strlen(SAMPLE), on_entry, c);
    check_sample(c, r->skipped);

    memset(c, 0, sizeof(*c));
    moat__mountinfo_init(r);
    for (size_t i = 0; i < strlen(SAMPLE); i++)
        moat__mountinfo_feed(r, SAMPLE + i, 1, on_entry, c);
    check_sample(c, r->skipped);

    for (size_t cut = 0; cut <= strlen(SAMPLE); cut++) {
        memset(c, 0, sizeof(*c));
        moat__mountinfo_init(r);
        moat__mountinfo_feed(r, SAMPLE, cut, on_entry, c);
        moat__mountinfo_feed(r, SAMPLE + cut, strlen(SAMPLE) - cut, on_entry, c);
        check_sample(c, r->skipped);
    }
    free(c);
    free(r);
}

static void test_mountinfo_overlong_line_skipped(void **state)
{
    (void)state;
    /* An overlay line longer than the reader's buffer, then a normal one. */
    size_t big = MOAT__MOUNTINFO_LINE_MAX + 100;
    char *text = malloc(big + 200);
    int n = snprintf(text, big + 200, "50 45 0:40 / /merged rw - overlay overlay lowerdir=");
    memset(text + n, 'a', big);
    n += (int)big;
    n += snprintf(text + n, 200, "\n22 27 0:21 / /proc rw - proc proc rw\n");
    moat__mountinfo_reader *r = malloc(sizeof(*r));
    collected *c = calloc(1, sizeof(*c));
    moat__mountinfo_init(r);
    for (int i = 0; i < n; i += 1000)
        moat__mountinfo_feed(r, text + i, (size_t)(n - i < 1000 ? n - i : 1000), on_entry, c);
    assert_int_equal(c->count, 1);
    assert_string_equal(c->entries[0].mount_point, "/proc");
    assert_int_equal(r->skipped, 1);
    /* A last line without its newline is not an entry yet. */
    moat__mountinfo_feed(r, "23 27 0:22 / /sys rw - sysfs sysfs rw", 37, on_entry, c);
    assert_int_equal(c->count, 1);
    moat__mountinfo_feed(r, "\n", 1, on_entry, c);
    assert_int_equal(c->count, 2);
    assert_string_equal(c->entries[1].mount_point, "/sys");
    free(c);
    free(r);
    free(text);
}

static void test_mountinfo_malformed_lines(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",
        "x 27 0:21 / /proc rw - proc proc rw",
        "22 27 021 / /proc rw - proc proc rw",
        "22 27 0:x / /proc rw - proc proc rw",
        "22 27 0:21 / /proc rw proc proc rw",                               /* no separator */
        "22 27 0:21 / /pr\\0oc rw - proc proc rw",                          /* short escape */
        "22 27 0:21 / /pr\\09x rw - proc proc rw",                          /* not octal */
        "22 27 0:21 / /pr\\000c rw - proc proc rw",                         /* NUL */
        "22 27 0:21 / /proc rw - proc proc",                                /* no super options */
        "22 27 0:21 / /proc rw - procprocprocprocprocprocprocproc proc rw", /* fstype too long */
        "22 27 1234567890:21 / /proc rw - proc proc rw",
    };
    moat__mount_entry e;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_false(moat__mountinfo_parse_line(bad[i], strlen(bad[i]), &e));
    /* Every prefix of a good line either parses or is refused: never read past its end. */
    const char *good = "90 27 7:3 / /a\\040b rw,nosuid - ext4 /dev/loop3 rw,x";
    for (size_t len = 0; len < strlen(good); len++) {
        char *copy = malloc(len ? len : 1);
        memcpy(copy, good, len);
        bool ok = moat__mountinfo_parse_line(copy, len, &e);
        assert_true(!ok || len > strlen("90 27 7:3 / /a\\040b rw,nosuid - ext4 /dev/loop3 "));
        free(copy);
    }
    assert_true(moat__mountinfo_parse_line(good, strlen(good), &e));
    assert_string_equal(e.mount_point, "/a b");
}

static void test_workspace_paths(void **state)
{
    (void)state;
    char out[MOAT_RUNTIME_PATH_MAX];
    assert_true(moat__workspace_path("/var/lib/moat/chats", CHAT_ID, "", out, sizeof(out)));
    assert_string_equal(out, "/var/lib/moat/chats/" CHAT_ID);
    assert_true(moat__workspace_path("/i", CHAT_ID, ".ext4", out, sizeof(out)));
    assert_string_equal(out, "/i/" CHAT_ID ".ext4");
    /* Only canonical ids: nothing else can reach the file system. */
    assert_false(
        moat__workspace_path("/i", "123E4567-E89B-12D3-A456-426614174000", "", out, sizeof(out)));
    assert_false(moat__workspace_path("/i", "{" CHAT_ID "}", "", out, sizeof(out)));
    assert_false(moat__workspace_path("/i", "../etc", "", out, sizeof(out)));
    assert_false(moat__workspace_path("/i", "", "", out, sizeof(out)));
    /* Exactly fits, then one byte short. */
    size_t need = strlen("/i/" CHAT_ID ".lock") + 1;
    assert_true(moat__workspace_path("/i", CHAT_ID, ".lock", out, need));
    assert_false(moat__workspace_path("/i", CHAT_ID, ".lock", out, need - 1));
}

/* ---- validation ------------------------------------------------------------------------------ */

typedef struct fx {
    char dir[64], deps[96], lambda[96], bundle[96], chats[96], state[96], store[128];
    moat_runtime_config cfg;
} fx;

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int setup(void **state)
{
    fx *f = calloc(1, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "/tmp/moat-wsunit-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->deps, sizeof(f->deps), "%s/deps", f->dir);
    snprintf(f->lambda, sizeof(f->lambda), "%s/lambda", f->dir);
    snprintf(f->bundle, sizeof(f->bundle), "%s/bundle", f->dir);
    snprintf(f->chats, sizeof(f->chats), "%s/chats", f->dir);
    snprintf(f->state, sizeof(f->state), "%s/state", f->dir);
    snprintf(f->store, sizeof(f->store), "%s/state.db", f->dir);
    mkdir(f->deps, 0755);
    mkdir(f->lambda, 0755);
    mkdir(f->bundle, 0755);
    moat_runtime_config_defaults(&f->cfg);
    f->cfg.chats_root = f->chats;
    f->cfg.dependencies_host_path = f->deps;
    f->cfg.lambda_tools_host_path = f->lambda;
    f->cfg.execd_bundle_dir = f->bundle;
    f->cfg.state_dir = f->state;
    f->cfg.store_path = f->store;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx *f = *state;
    nftw(f->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(f);
    return 0;
}

static void expect_bad(const moat_runtime_config *c, const char *setting)
{
    moat_status st;
    assert_int_equal(moat_runtime_config_validate(c, &st), MOAT_CODE_INVALID_ARGUMENT);
    assert_string_equal(st.reason, "invalid_config");
    assert_string_equal(moat_status_detail_get(&st, "setting"), setting);
    assert_non_null(strstr(st.message, setting));
}

static void test_quota_settings_validated(void **state)
{
    fx *f = *state;
    moat_runtime_config c = f->cfg;
    moat_status st;
    assert_true(c.workspace_quota);
    assert_true(c.read_only_rootfs);
    assert_int_equal(c.workspace_size_bytes, 1024ll * 1024 * 1024);
    assert_int_equal(c.workspace_inodes, 65536);
    assert_int_equal(c.sandbox_uid, 1000);
    assert_null(c.workspace_images_dir);

    c.workspace_size_bytes = 16ll * 1024 * 1024 - 1;
    expect_bad(&c, "workspace_size_bytes");
    c.workspace_size_bytes = 16ll * 1024 * 1024 * 1024 * 1024 + 1;
    expect_bad(&c, "workspace_size_bytes");
    c = f->cfg;
    c.workspace_inodes = 63;
    expect_bad(&c, "workspace_inodes");
    c.workspace_inodes = 4294967296ll;
    expect_bad(&c, "workspace_inodes");
    c.workspace_size_bytes = 16ll * 1024 * 1024;
    c.workspace_inodes = 16 * 1024 + 1; /* more than one per KiB */
    expect_bad(&c, "workspace_inodes");
    c.workspace_inodes = 16 * 1024;
    c.workspace_images_dir = "images";
    expect_bad(&c, "workspace_images_dir");

    /* Quotas off: the settings are not used, so not checked, and nothing needs privileges. */
    c.workspace_quota = false;
    c.workspace_size_bytes = 1;
    assert_int_equal(moat_runtime_config_validate(&c, &st), MOAT_CODE_OK);

    /* Quotas on, within bounds: fine where this process can mount, else it says what to do. */
    c = f->cfg;
    if (moat__can_mount())
        assert_int_equal(moat_runtime_config_validate(&c, &st), MOAT_CODE_OK);
    else
        expect_bad(&c, "workspace_quota");
}

/* In a child without CAP_SYS_ADMIN in its effective set, a config with quotas is refused with a
 * message pointing at the off switch; without quotas it is fine. */
static void test_quota_needs_cap_sys_admin(void **state)
{
    fx *f = *state;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
        struct __user_cap_data_struct d[_LINUX_CAPABILITY_U32S_3];
        if (syscall(SYS_capget, &h, d) != 0)
            _exit(10);
        d[CAP_TO_INDEX(CAP_SYS_ADMIN)].effective &= ~CAP_TO_MASK(CAP_SYS_ADMIN);
        if (syscall(SYS_capset, &h, d) != 0 || moat__can_mount())
            _exit(11);
        moat_status st;
        moat_runtime_config c = f->cfg;
        if (moat_runtime_config_validate(&c, &st) != MOAT_CODE_INVALID_ARGUMENT ||
            strcmp(moat_status_detail_get(&st, "setting"), "workspace_quota") != 0 ||
            strstr(st.message, "CAP_SYS_ADMIN") == NULL ||
            strstr(st.message, "workspace_quota = false") == NULL)
            _exit(12);
        c.workspace_quota = false;
        _exit(moat_runtime_config_validate(&c, &st) == MOAT_CODE_OK ? 0 : 13);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

/* A remapped engine's DockerRootDir names container root's host ids; nothing else does. */
static void test_userns_root_dir(void **state)
{
    (void)state;
    uint32_t uid = 0, gid = 0;
    assert_true(moat__userns_root_dir("/var/lib/docker/100000.100000", &uid, &gid));
    assert_int_equal(uid, 100000);
    assert_int_equal(gid, 100000);
    assert_true(moat__userns_root_dir("/d/1300000.1400000", &uid, &gid));
    assert_int_equal(uid, 1300000);
    assert_int_equal(gid, 1400000);
    assert_true(moat__userns_root_dir("/d/4294967295.0", &uid, &gid));
    assert_int_equal(uid, 4294967295u);
    static const char *const bad[] = {
        "/var/lib/docker",   "/d/100000",        "/d/100000.", "/d/.1",
        "/d/100000.100000/", "/d/1.2.3",         "/d/-1.2",    "/d/1 .2",
        "/d/4294967296.1",   "/d/00000000001.1", "",           "/d/a1.2"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (moat__userns_root_dir(bad[i], &uid, &gid))
            fail_msg("'%s' was read as ids", bad[i]);
    assert_false(moat__userns_root_dir(NULL, &uid, &gid));
}

/* /etc/subuid: the first well-formed line whose start is the base; odd lines are skipped. */
static void test_subid_count(void **state)
{
    (void)state;
    const char *text = "root:1:2:3\n" /* a name with a colon: the last two fields count */
                       "bad line\n"
                       "x:100000:\n"
                       "dockremap:100000:65536\n"
                       "other:100000:10\n"
                       "crlf:300000:7\r\n"
                       "last:400000:5"; /* no newline at the end */
    uint64_t n = 0;
    assert_true(moat__subid_count(text, 100000, &n));
    assert_int_equal(n, 65536);
    assert_true(moat__subid_count(text, 2, &n));
    assert_int_equal(n, 3);
    assert_true(moat__subid_count(text, 300000, &n));
    assert_int_equal(n, 7);
    assert_true(moat__subid_count(text, 400000, &n));
    assert_int_equal(n, 5);
    assert_false(moat__subid_count(text, 200000, &n));
    assert_false(moat__subid_count("a:5:0\n", 5, &n)); /* an empty range maps nothing */
    assert_false(moat__subid_count("", 5, &n));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mountinfo_whole_and_byte_at_a_time),
        cmocka_unit_test(test_mountinfo_overlong_line_skipped),
        cmocka_unit_test(test_mountinfo_malformed_lines),
        cmocka_unit_test(test_workspace_paths),
        cmocka_unit_test(test_userns_root_dir),
        cmocka_unit_test(test_subid_count),
        cmocka_unit_test_setup_teardown(test_quota_settings_validated, setup, teardown),
        cmocka_unit_test_setup_teardown(test_quota_needs_cap_sys_admin, setup, teardown),
    };
    return moat_run_group_tests("test_workspace_unit", tests, NULL, NULL);
}
