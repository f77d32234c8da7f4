/* Workspace quotas on the real host (labels integration;root): loop-mounted ext4 images under a
 * per-run temporary directory (/tmp/moat-wsroot-<pid>-XXXXXX). Each test makes its own chat ids;
 * the teardown unmounts whatever is still mounted under that directory and removes it, even when
 * a test failed, and checks that no loop device is left bound to a file in it. Needs root,
 * /dev/loop-control and mkfs.ext4, and fails at once, saying so, without them. */
#define _XOPEN_SOURCE 700
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <unistd.h>

#include "moat_test.h"

#include "host_mounts.h"
#include "internal.h"

#define SIZE_BYTES (32ll * 1024 * 1024)
#define INODES     2048
#define OWNER      4242
/* The host uid of a sandbox's root under an engine's userns-remap. */
#define RUN_OWNER 1300000

typedef struct fx {
    char dir[96], chats[128], images[128];
    moat__workspace_config cfg;
} fx;

static int group_setup(void **state)
{
    (void)state;
    if (!moat__can_mount() || access(MOAT__LOOP_CONTROL, R_OK | W_OK) != 0 ||
        access(MOAT__MKFS_EXT4, X_OK) != 0) {
        fprintf(stderr, "needs root (CAP_SYS_ADMIN), %s and %s\n", MOAT__LOOP_CONTROL,
                MOAT__MKFS_EXT4);
        return -1;
    }
    return 0;
}

static int setup(void **state)
{
    fx *f = calloc(1, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "/tmp/moat-wsroot-%d-XXXXXX", (int)getpid());
    assert_non_null(mkdtemp(f->dir));
    /* Others may search it: the setuid check runs a program in it as nobody. */
    chmod(f->dir, 0711);
    snprintf(f->chats, sizeof(f->chats), "%s/chats", f->dir);
    snprintf(f->images, sizeof(f->images), "%s/images", f->dir);
    mkdir(f->chats, 0755);
    f->cfg = (moat__workspace_config){
        .quota = true,
        .chats_root = f->chats,
        .images_dir = f->images,
        .mkfs_path = MOAT__MKFS_EXT4,
        .loop_control = MOAT__LOOP_CONTROL,
        .size_bytes = SIZE_BYTES,
        .inodes = INODES,
    };
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx *f = *state;
    int rc = host_remove_tree_checked(f->dir);
    free(f);
    return rc;
}

static void new_chat(char out[MOAT_UUID_STR_LEN])
{
    moat_uuid_generate(out);
}

static void attach_ok(fx *f, const char *chat, moat__workspace *ws)
{
    moat_status st;
    if (moat__workspace_attach(&f->cfg, chat, OWNER, OWNER, ws, &st) != MOAT_CODE_OK)
        fail_msg("attach %s: %s (%s)", chat, st.message, moat_status_detail_get(&st, "why"));
    assert_true(ws->lock_fd >= 0);
}

static void image_path(fx *f, const char *chat, const char *suffix, char *out, size_t cap)
{
    assert_true(moat__workspace_path(f->images, chat, suffix, out, cap));
}

static bool is_mount_point(const char *dir)
{
    char parent[MOAT_RUNTIME_PATH_MAX + 4];
    snprintf(parent, sizeof(parent), "%s/..", dir);
    struct stat d, p;
    return stat(dir, &d) == 0 && stat(parent, &p) == 0 && d.st_dev != p.st_dev;
}

static void write_file(const char *path, const char *text)
{
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    assert_int_equal(fputs(text, fp) >= 0, 1);
    assert_int_equal(fclose(fp), 0);
}

static char *read_text(const char *path)
{
    static char buf[256];
    FILE *fp = fopen(path, "r");
    if (fp == NULL)
        return NULL;
    size_t n = fread(buf, 1, sizeof(buf) - 1, fp);
    buf[n] = '\0';
    fclose(fp);
    return buf;
}

static size_t entries(const char *dir)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        n += strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0;
    closedir(d);
    return n;
}

/* A fresh workspace: empty, owned as configured, nosuid,nodev; bytes and inodes run out with
 * ENOSPC at the quota; the host file grows by at most the quota. */
static void test_size_and_inode_quota(void **state)
{
    fx *f = *state;
    char chat[MOAT_UUID_STR_LEN], image[MOAT_RUNTIME_PATH_MAX];
    new_chat(chat);
    moat__workspace ws;
    attach_ok(f, chat, &ws);
    moat__workspace_release(&ws);
    assert_int_equal(ws.lock_fd, -1);
    image_path(f, chat, ".ext4", image, sizeof(image));

    assert_true(is_mount_point(ws.dir));
    struct statvfs vfs;
    assert_int_equal(statvfs(ws.dir, &vfs), 0);
    assert_true((vfs.f_flag & ST_NOSUID) && (vfs.f_flag & ST_NODEV));
    assert_true((uint64_t)vfs.f_blocks * vfs.f_frsize <= (uint64_t)SIZE_BYTES);
    /* mkfs rounds the inode count to whole inode tables per block group. */
    assert_true(vfs.f_files >= INODES / 2 && vfs.f_files <= INODES * 2);
    assert_int_equal(entries(ws.dir), 0); /* no lost+found */
    struct stat sb, img;
    assert_int_equal(stat(ws.dir, &sb), 0);
    assert_int_equal(sb.st_uid, OWNER);
    assert_int_equal(sb.st_gid, OWNER);
    assert_int_equal(stat(image, &img), 0);
    assert_int_equal(img.st_size, SIZE_BYTES);
    assert_true(img.st_blocks * 512 < SIZE_BYTES / 4); /* sparse */

    char path[MOAT_RUNTIME_PATH_MAX + 32];
    snprintf(path, sizeof(path), "%s/fill", ws.dir);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    assert_true(fd >= 0);
    static char chunk[1 << 20];
    memset(chunk, 'x', sizeof(chunk));
    int64_t written = 0;
    ssize_t n;
    int err = 0;
    for (;;) {
        n = write(fd, chunk, sizeof(chunk));
        if (n < 0) {
            err = errno;
            break;
        }
        written += n;
        assert_true(written <= SIZE_BYTES);
    }
    /* Delayed allocation may report the shortage at fsync or close instead. */
    if (err == 0)
        err = fsync(fd) != 0 ? errno : 0;
    close(fd);
    assert_int_equal(err, ENOSPC);
    assert_true(written > SIZE_BYTES / 2);
    assert_int_equal(stat(image, &img), 0);
    assert_true(img.st_blocks * 512 <= SIZE_BYTES);
    assert_int_equal(unlink(path), 0);

    size_t files = 0;
    for (;;) {
        snprintf(path, sizeof(path), "%s/f%zu", ws.dir, files);
        fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0644);
        if (fd < 0)
            break;
        close(fd);
        files++;
        assert_true(files <= vfs.f_files);
    }
    assert_int_equal(errno, ENOSPC);
    assert_true(files >= vfs.f_files - 16); /* the root and ext4's reserved inodes */
}

/* Runs path as nobody with bash's -p (which keeps a setuid euid) and returns what `id -u`
 * printed there. */
static char *euid_as_nobody(const char *bash)
{
    char cmd[MOAT_RUNTIME_PATH_MAX + 128];
    snprintf(cmd, sizeof(cmd),
             "setpriv --reuid=65534 --regid=65534 --clear-groups -- %s -p -c 'id -u' 2>&1", bash);
    static char out[64];
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t n = fread(out, 1, sizeof(out) - 1, p);
    out[n] = '\0';
    pclose(p);
    return out;
}

static void copy_setuid_bash(const char *to)
{
    int in = open("/bin/bash", O_RDONLY);
    int out = open(to, O_WRONLY | O_CREAT | O_TRUNC, 0700);
    assert_true(in >= 0 && out >= 0);
    char buf[65536];
    ssize_t n;
    while ((n = read(in, buf, sizeof(buf))) > 0)
        assert_int_equal(write(out, buf, (size_t)n), n);
    close(in);
    assert_int_equal(fchown(out, 0, 0), 0);
    assert_int_equal(fchmod(out, 04755), 0);
    close(out);
}

/* A setuid-root program and a device node in a workspace have no effect on the host. The same
 * program outside the workspace (when that file system allows setuid) proves the check works. */
static void test_setuid_and_devices_inert(void **state)
{
    fx *f = *state;
    char chat[MOAT_UUID_STR_LEN];
    new_chat(chat);
    moat__workspace ws;
    attach_ok(f, chat, &ws);
    moat__workspace_release(&ws);

    char bash[MOAT_RUNTIME_PATH_MAX + 16];
    snprintf(bash, sizeof(bash), "%s/bash", ws.dir);
    copy_setuid_bash(bash);
    struct stat sb;
    assert_int_equal(stat(bash, &sb), 0);
    assert_true(sb.st_mode & S_ISUID);
    assert_string_equal(euid_as_nobody(bash), "65534\n");

    struct statvfs vfs;
    assert_int_equal(statvfs(f->dir, &vfs), 0);
    if (!(vfs.f_flag & ST_NOSUID)) {
        char control[160];
        snprintf(control, sizeof(control), "%s/control-bash", f->dir);
        copy_setuid_bash(control);
        assert_string_equal(euid_as_nobody(control), "0\n");
        unlink(control);
    }

    char node[MOAT_RUNTIME_PATH_MAX + 16];
    snprintf(node, sizeof(node), "%s/null", ws.dir);
    assert_int_equal(mknod(node, S_IFCHR | 0666, makedev(1, 3)), 0);
    errno = 0;
    assert_int_equal(open(node, O_RDWR), -1);
    assert_int_equal(errno, EACCES);
}

static bool always_in_use(void *ctx, const char *chat_id)
{
    (void)ctx;
    (void)chat_id;
    return true;
}

/* Attach is idempotent; detach unmounts (the loop device goes with it) only when unused; data
 * survives detach and a new attach, which never reformats. */
static void test_survives_detach_and_reattach(void **state)
{
    fx *f = *state;
    char chat[MOAT_UUID_STR_LEN], image[MOAT_RUNTIME_PATH_MAX];
    new_chat(chat);
    image_path(f, chat, ".ext4", image, sizeof(image));
    moat__workspace ws;
    attach_ok(f, chat, &ws);
    moat__workspace_release(&ws);
    char keep[MOAT_RUNTIME_PATH_MAX + 16];
    snprintf(keep, sizeof(keep), "%s/keep.txt", ws.dir);
    write_file(keep, "kept\n");
    struct stat first;
    assert_int_equal(stat(image, &first), 0);

    attach_ok(f, chat, &ws);
    moat__workspace_release(&ws);
    assert_int_equal(host_mounts_at(ws.dir), 1);
    assert_int_equal(host_loops_under(f->images), 1);

    moat_status st;
    assert_int_equal(moat__workspace_detach(&f->cfg, chat, always_in_use, NULL, &st), MOAT_CODE_OK);
    assert_int_equal(host_mounts_at(ws.dir), 1);
    assert_int_equal(moat__workspace_detach(&f->cfg, chat, NULL, NULL, &st), MOAT_CODE_OK);
    assert_int_equal(host_mounts_at(ws.dir), 0);
    assert_false(is_mount_point(ws.dir));
    assert_null(read_text(keep));
    assert_int_equal(host_loops_under(f->images), 0);
    /* Detaching again, or a chat never attached, is a no-op. */
    assert_int_equal(moat__workspace_detach(&f->cfg, chat, NULL, NULL, &st), MOAT_CODE_OK);
    char other[MOAT_UUID_STR_LEN];
    new_chat(other);
    assert_int_equal(moat__workspace_detach(&f->cfg, other, NULL, NULL, &st), MOAT_CODE_OK);

    attach_ok(f, chat, &ws);
    moat__workspace_release(&ws);
    assert_string_equal(read_text(keep), "kept\n");
    struct stat again;
    assert_int_equal(stat(image, &again), 0);
    assert_int_equal(again.st_ino, first.st_ino);
}

/* A file system still held elsewhere (as by a running sandbox) after the host mount is gone is
 * mounted again through the same loop device, never through a second one. */
static void test_reattach_reuses_held_loop_device(void **state)
{
    fx *f = *state;
    char chat[MOAT_UUID_STR_LEN], image[MOAT_RUNTIME_PATH_MAX];
    new_chat(chat);
    image_path(f, chat, ".ext4", image, sizeof(image));
    moat__workspace ws;
    attach_ok(f, chat, &ws);
    moat__workspace_release(&ws);
    /* A second mount of the same file system stands in for a container's bind mount. */
    char holder[160];
    snprintf(holder, sizeof(holder), "%s/holder", f->dir);
    mkdir(holder, 0700);
    assert_int_equal(mount(ws.dir, holder, NULL, MS_BIND, NULL), 0);
    moat_status st;
    assert_int_equal(moat__workspace_detach(&f->cfg, chat, NULL, NULL, &st), MOAT_CODE_OK);
    assert_false(is_mount_point(ws.dir));
    assert_int_equal(host_loops_under(f->images), 1);
    char path[200];
    snprintf(path, sizeof(path), "%s/written-while-detached", holder);
    write_file(path, "held\n");

    attach_ok(f, chat, &ws);
    moat__workspace_release(&ws);
    assert_int_equal(host_loops_under(f->images), 1);
    char seen[MOAT_RUNTIME_PATH_MAX + 32];
    snprintf(seen, sizeof(seen), "%s/written-while-detached", ws.dir);
    assert_string_equal(read_text(seen), "held\n");
    assert_int_equal(umount2(holder, 0), 0);
}

typedef struct racer {
    fx *f;
    const char *chat;
    moat_code code;
    char dir[MOAT_RUNTIME_PATH_MAX];
} racer;

static void *race_attach(void *arg)
{
    racer *r = arg;
    moat__workspace ws;
    moat_status st;
    r->code = moat__workspace_attach(&r->f->cfg, r->chat, OWNER, OWNER, &ws, &st);
    memcpy(r->dir, ws.dir, sizeof(r->dir));
    moat__workspace_release(&ws);
    return NULL;
}

/* Creates racing for one new chat make one image and one mount. */
static void test_concurrent_attach(void **state)
{
    fx *f = *state;
    char chat[MOAT_UUID_STR_LEN];
    new_chat(chat);
    enum { N = 6 };
    racer r[N];
    pthread_t t[N];
    for (int i = 0; i < N; i++) {
        r[i] = (racer){.f = f, .chat = chat};
        assert_int_equal(pthread_create(&t[i], NULL, race_attach, &r[i]), 0);
    }
    for (int i = 0; i < N; i++) {
        pthread_join(t[i], NULL);
        assert_int_equal(r[i].code, MOAT_CODE_OK);
    }
    assert_int_equal(host_mounts_at(r[0].dir), 1);
    assert_int_equal(host_loops_under(f->images), 1);
    /* the image, its lock, and the formatted template new chats' images are copied from */
    assert_int_equal(entries(f->images), 3);
    /* another new chat copies the same template: its image and lock, nothing more */
    char other[MOAT_UUID_STR_LEN];
    new_chat(other);
    racer second = {.f = f, .chat = other};
    race_attach(&second);
    assert_int_equal(second.code, MOAT_CODE_OK);
    assert_int_equal(entries(f->images), 5);
}

static void expect_failure(fx *f, const moat__workspace_config *cfg, const char *chat,
                           moat_code code, const char *why)
{
    moat__workspace ws;
    moat_status st;
    assert_int_equal(moat__workspace_attach(cfg, chat, OWNER, OWNER, &ws, &st), code);
    assert_int_equal(ws.lock_fd, -1);
    assert_string_equal(st.reason, "workspace_unavailable");
    assert_string_equal(moat_status_detail_get(&st, "why"), why);
    assert_string_equal(moat_status_detail_get(&st, "chat_id"), chat);
    char dir[MOAT_RUNTIME_PATH_MAX];
    char real[MOAT_RUNTIME_PATH_MAX];
    assert_non_null(realpath(f->chats, real));
    assert_true(moat__workspace_path(real, chat, "", dir, sizeof(dir)));
    assert_int_equal(host_mounts_at(dir), 0);
    char image[MOAT_RUNTIME_PATH_MAX];
    image_path(f, chat, ".ext4", image, sizeof(image));
    assert_int_equal(host_loops_under(image), 0);
}

/* Each failure is a status with a reason, leaves nothing mounted, bound or locked, and a later
 * attach with a working setup succeeds. */
static void test_failures(void **state)
{
    fx *f = *state;
    char chat[MOAT_UUID_STR_LEN], image[MOAT_RUNTIME_PATH_MAX], tmp[MOAT_RUNTIME_PATH_MAX];
    moat__workspace ws;

    /* mkfs fails: no image, no temporary. */
    new_chat(chat);
    moat__workspace_config c = f->cfg;
    c.mkfs_path = "/bin/false";
    expect_failure(f, &c, chat, MOAT_CODE_UNAVAILABLE, "mkfs_failed");
    image_path(f, chat, ".ext4", image, sizeof(image));
    image_path(f, chat, ".ext4.tmp", tmp, sizeof(tmp));
    assert_int_equal(access(image, F_OK), -1);
    assert_int_equal(access(tmp, F_OK), -1);
    c.mkfs_path = "/nonexistent/mkfs.ext4";
    expect_failure(f, &c, chat, MOAT_CODE_UNAVAILABLE, "mkfs_failed");
    attach_ok(f, chat, &ws);
    moat__workspace_release(&ws);

    /* No loop device (the path a host without free ones takes): the image stays for later. */
    new_chat(chat);
    c = f->cfg;
    c.loop_control = "/dev/null";
    expect_failure(f, &c, chat, MOAT_CODE_UNAVAILABLE, "no_loop_device");
    c.loop_control = "/nonexistent/loop-control";
    expect_failure(f, &c, chat, MOAT_CODE_UNAVAILABLE, "no_loop_device");
    image_path(f, chat, ".ext4", image, sizeof(image));
    assert_int_equal(access(image, F_OK), 0);

    /* An image that is not a file system: the loop device bound for it clears itself. */
    new_chat(chat);
    image_path(f, chat, ".ext4", image, sizeof(image));
    int fd = open(image, O_WRONLY | O_CREAT, 0600);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, SIZE_BYTES), 0);
    close(fd);
    expect_failure(f, &f->cfg, chat, MOAT_CODE_UNAVAILABLE, "mount_failed");

    /* Something else mounted on the chat's directory. */
    new_chat(chat);
    char dir[MOAT_RUNTIME_PATH_MAX];
    assert_true(moat__workspace_path(f->chats, chat, "", dir, sizeof(dir)));
    mkdir(dir, 0755);
    assert_int_equal(mount("moat-test", dir, "tmpfs", 0, "size=1m"), 0);
    moat_status st;
    assert_int_equal(moat__workspace_attach(&f->cfg, chat, OWNER, OWNER, &ws, &st),
                     MOAT_CODE_FAILED_PRECONDITION);
    assert_string_equal(moat_status_detail_get(&st, "why"), "foreign_mount");
    assert_int_equal(host_mounts_at(dir), 1);
    /* and detach leaves it alone */
    assert_int_equal(moat__workspace_detach(&f->cfg, chat, NULL, NULL, &st), MOAT_CODE_OK);
    assert_int_equal(host_mounts_at(dir), 1);
    assert_int_equal(umount2(dir, 0), 0);

    /* A workspace from before quotas: refused, its files untouched, no image made. */
    new_chat(chat);
    assert_true(moat__workspace_path(f->chats, chat, "", dir, sizeof(dir)));
    mkdir(dir, 0755);
    char old[MOAT_RUNTIME_PATH_MAX + 16];
    snprintf(old, sizeof(old), "%s/old.txt", dir);
    write_file(old, "old\n");
    expect_failure(f, &f->cfg, chat, MOAT_CODE_FAILED_PRECONDITION, "legacy_directory");
    assert_string_equal(read_text(old), "old\n");
    image_path(f, chat, ".ext4", image, sizeof(image));
    assert_int_equal(access(image, F_OK), -1);

    /* A link in place of the directory is never followed. */
    new_chat(chat);
    assert_true(moat__workspace_path(f->chats, chat, "", dir, sizeof(dir)));
    assert_int_equal(symlink("/etc", dir), 0);
    expect_failure(f, &f->cfg, chat, MOAT_CODE_FAILED_PRECONDITION, "not_a_directory");
}

/* Quotas off: a plain directory owned as configured, nothing mounted, no lock held. */
static void test_quota_off_plain_directory(void **state)
{
    fx *f = *state;
    moat__workspace_config c = f->cfg;
    c.quota = false;
    char chat[MOAT_UUID_STR_LEN];
    new_chat(chat);
    moat__workspace ws;
    moat_status st;
    assert_int_equal(moat__workspace_attach(&c, chat, OWNER, OWNER, &ws, &st), MOAT_CODE_OK);
    assert_int_equal(ws.lock_fd, -1);
    assert_false(is_mount_point(ws.dir));
    struct stat sb;
    assert_int_equal(stat(ws.dir, &sb), 0);
    assert_int_equal(sb.st_uid, OWNER);
    assert_int_equal(access(f->images, F_OK), -1);
    assert_int_equal(moat__workspace_detach(&c, chat, NULL, NULL, &st), MOAT_CODE_OK);
}

/* A session's execd directory: a small tmpfs (nosuid,nodev,noexec, 0700, the given owner's) whose
 * socket is reachable through the host path; full at its size; gone after detach. */
static void test_run_dir(void **state)
{
    fx *f = *state;
    char dir[160];
    snprintf(dir, sizeof(dir), "%s/session", f->dir);
    moat_status st;
    assert_int_equal(moat__rundir_attach(&f->cfg, dir, RUN_OWNER, RUN_OWNER, &st), MOAT_CODE_OK);
    assert_int_equal(moat__rundir_attach(&f->cfg, dir, RUN_OWNER, RUN_OWNER, &st),
                     MOAT_CODE_OK); /* idempotent */
    assert_int_equal(host_mounts_at(dir), 1);
    struct statvfs vfs;
    assert_int_equal(statvfs(dir, &vfs), 0);
    assert_true((vfs.f_flag & ST_NOSUID) && (vfs.f_flag & ST_NODEV) && (vfs.f_flag & ST_NOEXEC));
    assert_int_equal((uint64_t)vfs.f_blocks * vfs.f_frsize, MOAT__RUNDIR_BYTES);
    struct stat sb;
    assert_int_equal(stat(dir, &sb), 0);
    assert_int_equal(sb.st_mode & 07777, 0700);
    assert_int_equal(sb.st_uid, RUN_OWNER);
    assert_int_equal(sb.st_gid, RUN_OWNER);

    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    assert_true(strlen(dir) + sizeof("/execd.sock") <= sizeof(addr.sun_path));
    memcpy(addr.sun_path, dir, strlen(dir));
    memcpy(addr.sun_path + strlen(dir), "/execd.sock", sizeof("/execd.sock"));
    int server = socket(AF_UNIX, SOCK_STREAM, 0), client = socket(AF_UNIX, SOCK_STREAM, 0);
    assert_int_equal(bind(server, (struct sockaddr *)&addr, sizeof(addr)), 0);
    assert_int_equal(listen(server, 1), 0);
    assert_int_equal(connect(client, (struct sockaddr *)&addr, sizeof(addr)), 0);
    close(client);
    close(server);
    unlink(addr.sun_path);

    char path[200];
    snprintf(path, sizeof(path), "%s/fill", dir);
    int fd = open(path, O_WRONLY | O_CREAT, 0600);
    static char chunk[1 << 20];
    ssize_t n = 0;
    for (int i = 0; i < 8 && n >= 0; i++)
        n = write(fd, chunk, sizeof(chunk));
    assert_int_equal(n, -1);
    assert_int_equal(errno, ENOSPC);
    close(fd);
    unlink(path);

    moat__rundir_detach(dir);
    assert_int_equal(host_mounts_at(dir), 0);
    assert_int_equal(access(dir, F_OK), -1);

    moat__workspace_config c = f->cfg;
    c.quota = false;
    assert_int_equal(moat__rundir_attach(&c, dir, RUN_OWNER, RUN_OWNER, &st), MOAT_CODE_OK);
    assert_int_equal(host_mounts_at(dir), 0);
    assert_int_equal(stat(dir, &sb), 0);
    assert_int_equal(sb.st_uid, RUN_OWNER);
    assert_int_equal(sb.st_gid, RUN_OWNER);
    moat__rundir_detach(dir);
    assert_int_equal(access(dir, F_OK), -1);

    /* A path that cannot be made: a status, nothing mounted. */
    snprintf(path, sizeof(path), "%s/missing/session", f->dir);
    assert_int_equal(moat__rundir_attach(&f->cfg, path, 0, 0, &st), MOAT_CODE_UNAVAILABLE);
    assert_string_equal(moat_status_detail_get(&st, "why"), "run_dir");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_size_and_inode_quota, setup, teardown),
        cmocka_unit_test_setup_teardown(test_setuid_and_devices_inert, setup, teardown),
        cmocka_unit_test_setup_teardown(test_survives_detach_and_reattach, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reattach_reuses_held_loop_device, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_attach, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failures, setup, teardown),
        cmocka_unit_test_setup_teardown(test_quota_off_plain_directory, setup, teardown),
        cmocka_unit_test_setup_teardown(test_run_dir, setup, teardown),
    };
    return moat_run_group_tests("test_workspace_root", tests, group_setup, NULL);
}
