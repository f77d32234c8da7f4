/* Host-side bounds on what a sandbox writes: each chat's workspace is a sparse ext4 image
 * loop-mounted nosuid,nodev,noatime on chats_root/<chat_id> (Docker's bind mount of that
 * directory carries the file system and its flags), and each session's execd directory a small
 * tmpfs. Files a sandbox leaves there are inert on the host and bounded in bytes and inodes.
 *
 * Locking: one lock file per chat (<images_dir>/<chat_id>.lock, flock), so concurrent creates,
 * stops and other moatd processes on the same host serialise per chat, and a workspace is never
 * unmounted between a create's attach and the moment its container holds its own reference. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/capability.h>
#include <linux/loop.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include "internal.h"

/* noatime: reads in a sandbox should not turn into writes on the host's disk. */
#define WORKSPACE_MOUNT_FLAGS (MS_NOSUID | MS_NODEV | MS_NOATIME)
/* execd's socket and nothing else lives there. */
#define RUNDIR_MOUNT_FLAGS (MS_NOSUID | MS_NODEV | MS_NOEXEC)
#define RUNDIR_INODES      64
/* Another process may take the free loop device between our GET_FREE and CONFIGURE. */
#define LOOP_ATTEMPTS 8

static moat_code fail(moat_status *st, moat_code code, const char *chat_id, const char *why,
                      const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static moat_code fail(moat_status *st, moat_code code, const char *chat_id, const char *why,
                      const char *fmt, ...)
{
    char msg[MOAT_STATUS_MESSAGE_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    moat_status_set(st, code, "workspace_unavailable", "%s", msg);
    moat_status_add_detail(st, "chat_id", chat_id);
    moat_status_add_detail(st, "why", why);
    moat_log(MOAT_LOG_WARN, "workspace_unavailable", "chat_id=%s why=%s msg=\"%s\"", chat_id, why,
             msg);
    return code;
}

bool moat__workspace_path(const char *dir, const char *chat_id, const char *suffix, char *out,
                          size_t cap)
{
    char canonical[MOAT_UUID_STR_LEN];
    if (moat_uuid_canonicalize(chat_id, canonical) != MOAT_OK || strcmp(canonical, chat_id) != 0)
        return false;
    int n = snprintf(out, cap, "%s/%s%s", dir, chat_id, suffix);
    return n > 0 && (size_t)n < cap;
}

bool moat__can_mount(void)
{
    struct __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3];
    if (syscall(SYS_capget, &header, data) != 0)
        return false;
    return (data[CAP_TO_INDEX(CAP_SYS_ADMIN)].effective & CAP_TO_MASK(CAP_SYS_ADMIN)) != 0;
}

/* ---- mount table ---------------------------------------------------------------------------- */

/* Feeds /proc/self/mountinfo to on_entry. -1 with errno when it cannot be read. */
static int read_mountinfo(void (*on_entry)(void *ctx, const moat__mount_entry *entry), void *ctx)
{
    int fd = open("/proc/self/mountinfo", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    moat__mountinfo_reader *r = malloc(sizeof(*r));
    char *buf = malloc(65536);
    if (r == NULL || buf == NULL) {
        free(r);
        free(buf);
        close(fd);
        errno = ENOMEM;
        return -1;
    }
    moat__mountinfo_init(r);
    ssize_t n;
    while ((n = read(fd, buf, 65536)) > 0 || (n < 0 && errno == EINTR))
        if (n > 0)
            moat__mountinfo_feed(r, buf, (size_t)n, on_entry, ctx);
    int err = n < 0 ? errno : 0;
    free(buf);
    free(r);
    close(fd);
    errno = err;
    return err ? -1 : 0;
}

typedef struct find_mount {
    const char *dir;
    bool found;
    moat__mount_entry entry; /* the last (topmost) mount on dir */
} find_mount;

static void on_find_mount(void *ctx, const moat__mount_entry *entry)
{
    find_mount *f = ctx;
    if (strcmp(entry->mount_point, f->dir) == 0) {
        f->found = true;
        f->entry = *entry;
    }
}

/* A loop device's backing file is identified by the device and inode the kernel reports, in
 * its "huge" dev_t encoding (major in bits 8..19, minor in bits 0..7 and 20..31). */
static bool backs(const struct loop_info64 *info, const struct stat *image)
{
    unsigned maj = (unsigned)((info->lo_device >> 8) & 0xfff);
    unsigned min = (unsigned)((info->lo_device & 0xff) | ((info->lo_device >> 12) & 0xfff00));
    return info->lo_inode == image->st_ino && maj == major(image->st_dev) &&
           min == minor(image->st_dev);
}

/* True when path names a loop device ("/dev/loop<N>") bound to image. With fd_out, returns its
 * open descriptor, which keeps an auto-clearing device bound until it is closed. */
static bool loop_backs(const char *path, const struct stat *image, int *fd_out)
{
    if (strncmp(path, "/dev/loop", 9) != 0 || path[9] == '\0' ||
        strspn(path + 9, "0123456789") != strlen(path + 9))
        return false;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    /* Zeroed first: valgrind does not know this ioctl writes the struct. */
    struct loop_info64 info = {0};
    bool ours = ioctl(fd, LOOP_GET_STATUS64, &info) == 0 && backs(&info, image);
    if (ours && fd_out != NULL)
        *fd_out = fd;
    else
        close(fd);
    return ours;
}

typedef enum mount_state { NOT_MOUNTED, MOUNTED_OURS, MOUNTED_OTHER } mount_state;

/* What is mounted on dir: nothing, this image (ext4, nosuid, nodev, on a loop device bound to
 * it, and the topmost mount there), or anything else. */
static mount_state workspace_state(const char *dir, const char *image)
{
    find_mount *f = calloc(1, sizeof(*f));
    if (f == NULL)
        return MOUNTED_OTHER;
    f->dir = dir;
    mount_state state = NOT_MOUNTED;
    if (read_mountinfo(on_find_mount, f) != 0) {
        state = MOUNTED_OTHER; /* unknown: refuse rather than mount twice */
    } else if (f->found) {
        struct stat d, img;
        state = MOUNTED_OTHER;
        if (stat(dir, &d) == 0 && d.st_dev == makedev(f->entry.major, f->entry.minor) &&
            strcmp(f->entry.fstype, "ext4") == 0 && f->entry.nosuid && f->entry.nodev &&
            stat(image, &img) == 0 && loop_backs(f->entry.source, &img, NULL))
            state = MOUNTED_OURS;
    }
    free(f);
    return state;
}

/* ---- images --------------------------------------------------------------------------------- */

/* Runs mkfs.ext4 on path. On failure returns false with the reason (its exit status and the
 * first line of what it printed) in why. */
static bool run_mkfs(const moat__workspace_config *cfg, const char *path, uint32_t owner_uid,
                     uint32_t owner_gid, char *why, size_t cap)
{
    char inodes[24], extended[96];
    snprintf(inodes, sizeof(inodes), "%lld", (long long)cfg->inodes);
    /* The image is a fresh sparse file whose holes read as zeros, so the journal need not be
     * written out: a new image costs the host well under 1 MiB instead of the journal's 32. */
    snprintf(extended, sizeof(extended), "root_owner=%u:%u,lazy_journal_init=1", owner_uid,
             owner_gid);
    /* -m 0: the whole quota is the sandbox's, whoever it runs as. */
    char *mkfs = (char *)cfg->mkfs_path, *image = (char *)path;
    char *const argv[] = {mkfs, "-q", "-F", "-m", "0", "-N", inodes, "-E", extended, image, NULL};
    char *const envp[] = {"PATH=/usr/sbin:/usr/bin:/sbin:/bin", NULL};
    int out[2];
    if (pipe2(out, O_CLOEXEC) != 0) {
        snprintf(why, cap, "pipe: %s", strerror(errno));
        return false;
    }
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&actions, out[1], 1);
    posix_spawn_file_actions_adddup2(&actions, out[1], 2);
    pid_t pid;
    int err = posix_spawn(&pid, cfg->mkfs_path, &actions, NULL, argv, envp);
    posix_spawn_file_actions_destroy(&actions);
    close(out[1]);
    if (err != 0) {
        close(out[0]);
        snprintf(why, cap, "cannot run %s: %s", cfg->mkfs_path, strerror(err));
        return false;
    }
    /* Keep the start of what it prints for the reason; read the rest so it never blocks. */
    char text[256];
    size_t len = 0;
    for (;;) {
        char chunk[512];
        ssize_t n = read(out[0], chunk, sizeof(chunk));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        size_t keep = (size_t)n < sizeof(text) - 1 - len ? (size_t)n : sizeof(text) - 1 - len;
        memcpy(text + len, chunk, keep);
        len += keep;
    }
    close(out[0]);
    text[len] = '\0';
    text[strcspn(text, "\n")] = '\0';
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
        return true;
    if (WIFEXITED(status))
        snprintf(why, cap, "%s exited with %d: %s", cfg->mkfs_path, WEXITSTATUS(status), text);
    else
        snprintf(why, cap, "%s died of signal %d", cfg->mkfs_path, WTERMSIG(status));
    return false;
}

static bool fsync_path(const char *path, int flags)
{
    int fd = open(path, flags | O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    bool ok = fsync(fd) == 0;
    close(fd);
    return ok;
}

/* Formats a sparse file of the configured size at tmp, then renames it to path, so a file at
 * path is always a whole file system (a crash leaves only the temporary). */
static moat_code format_image(const moat__workspace_config *cfg, const char *chat_id,
                              uint32_t owner_uid, uint32_t owner_gid, const char *tmp,
                              const char *path, moat_status *st)
{
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return fail(st, MOAT_CODE_UNAVAILABLE, chat_id, "io_error", "create %s: %s", tmp,
                    strerror(errno));
    bool sized = ftruncate(fd, (off_t)cfg->size_bytes) == 0;
    int err = errno;
    close(fd);
    char why[400];
    if (!sized) {
        unlink(tmp);
        return fail(st, MOAT_CODE_UNAVAILABLE, chat_id, "io_error", "size %s: %s", tmp,
                    strerror(err));
    }
    if (!run_mkfs(cfg, tmp, owner_uid, owner_gid, why, sizeof(why))) {
        unlink(tmp);
        return fail(st, MOAT_CODE_UNAVAILABLE, chat_id, "mkfs_failed", "%s", why);
    }
    if (!fsync_path(tmp, 0) || rename(tmp, path) != 0 ||
        !fsync_path(cfg->images_dir, O_DIRECTORY)) {
        err = errno;
        unlink(tmp);
        return fail(st, MOAT_CODE_UNAVAILABLE, chat_id, "io_error", "store image %s: %s", path,
                    strerror(err));
    }
    return MOAT_CODE_OK;
}

/* Copies src's data extents into dst (same size, sparse): what mkfs wrote is ~600 KiB of a
 * 1 GiB image, so this takes a millisecond where mkfs took 13-40. */
static bool copy_sparse(int src, int dst, off_t size)
{
    if (ftruncate(dst, size) != 0)
        return false;
    off_t at = 0;
    while (at < size) {
        off_t data = lseek(src, at, SEEK_DATA);
        if (data < 0)
            return errno == ENXIO; /* only a hole is left */
        off_t hole = lseek(src, data, SEEK_HOLE);
        if (hole < 0)
            return false;
        loff_t in = data, out = data;
        while (in < hole) {
            ssize_t n = copy_file_range(src, &in, dst, &out, (size_t)(hole - in), 0);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                return false;
        }
        at = hole;
    }
    return true;
}

/* Makes the chat's image as a copy of a formatted template (one per size, inodes and owner, made
 * once under images_dir), under a temporary name then renamed. The copies share the template's
 * file-system UUID, which nothing on the host looks up (each is mounted by its loop device). */
moat_code moat__workspace_make_image(const moat__workspace_config *cfg, const char *chat_id,
                                     uint32_t owner_uid, uint32_t owner_gid, const char *image,
                                     moat_status *st)
{
    char template[MOAT_RUNTIME_PATH_MAX], tmp[MOAT_RUNTIME_PATH_MAX];
    int n =
        snprintf(template, sizeof(template), "%s/.template-%lld-%lld-%u-%u.ext4", cfg->images_dir,
                 (long long)cfg->size_bytes, (long long)cfg->inodes, owner_uid, owner_gid);
    if (n < 0 || (size_t)n >= sizeof(template) ||
        !moat__workspace_path(cfg->images_dir, chat_id, ".ext4.tmp", tmp, sizeof(tmp)))
        return fail(st, MOAT_CODE_UNAVAILABLE, chat_id, "io_error", "images_dir is too long");
    struct stat sb;
    if (lstat(template, &sb) != 0 || !S_ISREG(sb.st_mode) || sb.st_size != cfg->size_bytes) {
        /* Made under this chat's temporary name (its lock is held): creates of two new chats
         * may both make it, and the second rename replaces an identical file. */
        moat_code code = format_image(cfg, chat_id, owner_uid, owner_gid, tmp, template, st);
        if (code != MOAT_CODE_OK)
            return code;
    }
    int src = open(template, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    int dst = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    bool copied =
        src >= 0 && dst >= 0 && copy_sparse(src, dst, (off_t)cfg->size_bytes) && fsync(dst) == 0;
    int err = errno;
    if (src >= 0)
        close(src);
    if (dst >= 0)
        close(dst);
    if (!copied || rename(tmp, image) != 0 || !fsync_path(cfg->images_dir, O_DIRECTORY)) {
        err = copied ? errno : err;
        unlink(tmp);
        return fail(st, MOAT_CODE_UNAVAILABLE, chat_id, "io_error", "copy %s to %s: %s", template,
                    image, strerror(err));
    }
    moat_log(MOAT_LOG_INFO, "workspace_created", "chat_id=%s image=%s size_bytes=%lld inodes=%lld",
             chat_id, image, (long long)cfg->size_bytes, (long long)cfg->inodes);
    return MOAT_CODE_OK;
}

/* A loop device already bound to the image: a sandbox still holds the file system after the host
 * mount went away. Mounting that device again gives the same file system; binding a second
 * device to the same file would corrupt it. Returns its open descriptor, or -1. */
static int find_bound_loop(const struct stat *image, char dev[32])
{
    DIR *d = opendir("/sys/block");
    if (d == NULL)
        return -1;
    int fd = -1;
    struct dirent *e;
    while (fd < 0 && (e = readdir(d)) != NULL) {
        char attr[300];
        if (strncmp(e->d_name, "loop", 4) != 0 || strlen(e->d_name) > 20)
            continue;
        snprintf(attr, sizeof(attr), "/sys/block/%s/loop/backing_file", e->d_name);
        if (access(attr, F_OK) != 0) /* not bound */
            continue;
        snprintf(dev, 32, "/dev/%s", e->d_name);
        if (!loop_backs(dev, image, &fd))
            fd = -1;
    }
    closedir(d);
    return fd;
}

/* Every thread that asks LOOP_CTL_GET_FREE at once is told the same device and all but one lose
 * CONFIGURE: a burst of 19 attaches ran out of LOOP_ATTEMPTS. Taken in turn here, the retries
 * are left for other processes. */
static pthread_mutex_t loop_bind_mu = PTHREAD_MUTEX_INITIALIZER;

/* Binds a free loop device to image_fd, auto-clearing: it goes away with its last mount. Returns
 * its open descriptor (closing it before mounting clears it), or -1 with st set. */
static int bind_free_loop_locked(const moat__workspace_config *cfg, const char *chat_id,
                                 int image_fd, const char *image, char dev[32], moat_status *st)
{
    int ctl = open(cfg->loop_control, O_RDWR | O_CLOEXEC);
    if (ctl < 0) {
        fail(st, MOAT_CODE_UNAVAILABLE, chat_id, "no_loop_device", "open %s: %s", cfg->loop_control,
             strerror(errno));
        return -1;
    }
    int fd = -1;
    for (int attempt = 0; fd < 0 && attempt < LOOP_ATTEMPTS; attempt++) {
        int n = ioctl(ctl, LOOP_CTL_GET_FREE);
        if (n < 0) {
            fail(st, MOAT_CODE_UNAVAILABLE, chat_id, "no_loop_device",
                 "no free loop device (%s: %s)", cfg->loop_control, strerror(errno));
            break;
        }
        snprintf(dev, 32, "/dev/loop%d", n);
        fd = open(dev, O_RDWR | O_CLOEXEC);
        if (fd < 0) {
            fail(st, MOAT_CODE_UNAVAILABLE, chat_id, "no_loop_device", "open %s: %s", dev,
                 strerror(errno));
            break;
        }
        struct loop_config config;
        memset(&config, 0, sizeof(config));
        config.fd = (unsigned)image_fd;
        config.info.lo_flags = LO_FLAGS_AUTOCLEAR;
        if (ioctl(fd, LOOP_CONFIGURE, &config) == 0)
            break;
        int err = errno;
        close(fd);
        fd = -1;
        if (err != EBUSY || attempt + 1 == LOOP_ATTEMPTS) {
            fail(st, MOAT_CODE_UNAVAILABLE, chat_id, "no_loop_device", "bind %s to %s: %s", dev,
                 image, strerror(err));
            break;
        }
    }
    close(ctl);
    return fd;
}

static int bind_free_loop(const moat__workspace_config *cfg, const char *chat_id, int image_fd,
                          const char *image, char dev[32], moat_status *st)
{
    pthread_mutex_lock(&loop_bind_mu);
    int fd = bind_free_loop_locked(cfg, chat_id, image_fd, image, dev, st);
    pthread_mutex_unlock(&loop_bind_mu);
    return fd;
}

moat_code moat__workspace_mount_image(const moat__workspace_config *cfg, const char *chat_id,
                                      const char *image, const char *dir, moat_status *st)
{
    int image_fd = open(image, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
    struct stat sb;
    if (image_fd < 0 || fstat(image_fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        int err = image_fd < 0 ? errno : EINVAL;
        if (image_fd >= 0)
            close(image_fd);
        return fail(st, MOAT_CODE_UNAVAILABLE, chat_id, "io_error", "open image %s: %s", image,
                    strerror(err));
    }
    char dev[32];
    int loop_fd = find_bound_loop(&sb, dev);
    if (loop_fd < 0)
        loop_fd = bind_free_loop(cfg, chat_id, image_fd, image, dev, st);
    close(image_fd);
    if (loop_fd < 0)
        return st->code;
    int rc = mount(dev, dir, "ext4", WORKSPACE_MOUNT_FLAGS, NULL);
    int err = errno;
    close(loop_fd); /* the mount holds the device now; without one, auto-clear unbinds it */
    if (rc != 0)
        return fail(st, MOAT_CODE_UNAVAILABLE, chat_id, "mount_failed", "mount %s (%s) on %s: %s",
                    image, dev, dir, strerror(err));
    return MOAT_CODE_OK;
}

/* ---- attach and detach ---------------------------------------------------------------------- */

bool moat__is_empty_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (d == NULL)
        return false;
    struct dirent *e;
    bool empty = true;
    while (empty && (e = readdir(d)) != NULL)
        empty = strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0;
    closedir(d);
    return empty;
}

int moat__mkdir_p(const char *path, mode_t mode)
{
    char buf[MOAT_RUNTIME_PATH_MAX];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof(buf))
        return -1;
    memcpy(buf, path, n + 1);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(buf, mode) != 0 && errno != EEXIST)
            return -1;
        *p = '/';
    }
    return mkdir(buf, mode) != 0 && errno != EEXIST ? -1 : 0;
}

int moat__workspace_lock(const char *lock_path, bool create)
{
    int fd = open(lock_path, O_RDWR | O_CLOEXEC | O_NOFOLLOW | (create ? O_CREAT : 0), 0600);
    if (fd < 0)
        return -1;
    while (flock(fd, LOCK_EX) != 0) {
        if (errno != EINTR) {
            int err = errno;
            close(fd);
            errno = err;
            return -1;
        }
    }
    return fd;
}

void moat__workspace_set_owner(const char *chat_id, const char *dir, uint32_t uid, uint32_t gid)
{
    struct stat sb;
    if (lstat(dir, &sb) == 0 && (sb.st_uid != uid || sb.st_gid != gid) &&
        lchown(dir, uid, gid) != 0)
        moat_log(MOAT_LOG_WARN, "workspace_chown_failed", "chat_id=%s dir=%s error=\"%s\"", chat_id,
                 dir, strerror(errno));
}

moat_code moat__workspace_attach(const moat__workspace_config *cfg, const char *chat_id,
                                 uint32_t owner_uid, uint32_t owner_gid, moat__workspace *ws,
                                 moat_status *st)
{
    moat_status_clear(st);
    ws->lock_fd = -1;
    char root[PATH_MAX];
    if (realpath(cfg->chats_root, root) == NULL)
        return fail(st, MOAT_CODE_UNAVAILABLE, chat_id, "io_error", "chats_root %s: %s",
                    cfg->chats_root, strerror(errno));
    if (!moat__workspace_path(root, chat_id, "", ws->dir, sizeof(ws->dir)))
        return fail(st, MOAT_CODE_UNAVAILABLE, chat_id, "io_error",
                    "chats_root is too long, or the chat id is not canonical");
    bool created = mkdir(ws->dir, 0755) == 0;
    if (!created && errno != EEXIST)
        return fail(st, MOAT_CODE_UNAVAILABLE, chat_id, "io_error", "mkdir %s: %s", ws->dir,
                    strerror(errno));
    struct stat sb;
    /* Never follow a link someone put in its place into another part of the host. */
    if (lstat(ws->dir, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return fail(st, MOAT_CODE_FAILED_PRECONDITION, chat_id, "not_a_directory",
                    "%s is not a directory", ws->dir);
    if (!cfg->quota) {
        if (created)
            moat__workspace_set_owner(chat_id, ws->dir, owner_uid, owner_gid);
        return MOAT_CODE_OK;
    }

    char image[MOAT_RUNTIME_PATH_MAX], lock_path[MOAT_RUNTIME_PATH_MAX];
    if (!moat__workspace_path(cfg->images_dir, chat_id, ".ext4", image, sizeof(image)) ||
        !moat__workspace_path(cfg->images_dir, chat_id, ".lock", lock_path, sizeof(lock_path)))
        return fail(st, MOAT_CODE_UNAVAILABLE, chat_id, "io_error", "images_dir is too long");
    if (moat__mkdir_p(cfg->images_dir, 0700) != 0)
        return fail(st, MOAT_CODE_UNAVAILABLE, chat_id, "io_error", "mkdir %s: %s", cfg->images_dir,
                    strerror(errno));
    int lock_fd = moat__workspace_lock(lock_path, true);
    if (lock_fd < 0)
        return fail(st, MOAT_CODE_UNAVAILABLE, chat_id, "io_error", "lock %s: %s", lock_path,
                    strerror(errno));

    mount_state state = workspace_state(ws->dir, image);
    if (state == MOUNTED_OTHER) {
        close(lock_fd);
        return fail(st, MOAT_CODE_FAILED_PRECONDITION, chat_id, "foreign_mount",
                    "%s is a mount point of something other than the chat's image %s "
                    "(or is mounted without nosuid,nodev)",
                    ws->dir, image);
    }
    if (state == NOT_MOUNTED) {
        bool fresh = false;
        if (lstat(image, &sb) != 0) {
            if (!moat__is_empty_dir(ws->dir)) {
                close(lock_fd);
                return fail(st, MOAT_CODE_FAILED_PRECONDITION, chat_id, "legacy_directory",
                            "%s holds files from before workspace quotas and has no image; "
                            "migrate it (docs/runtime.md, \"Workspaces\") or set "
                            "workspace_quota = false",
                            ws->dir);
            }
            if (moat__workspace_make_image(cfg, chat_id, owner_uid, owner_gid, image, st) !=
                MOAT_CODE_OK) {
                close(lock_fd);
                return st->code;
            }
            fresh = true;
        }
        if (moat__workspace_mount_image(cfg, chat_id, image, ws->dir, st) != MOAT_CODE_OK) {
            close(lock_fd);
            return st->code;
        }
        if (fresh) {
            /* The sandbox sees an empty workspace (e2fsck makes lost+found again when it
             * needs one). */
            char lost[MOAT_RUNTIME_PATH_MAX + 16];
            snprintf(lost, sizeof(lost), "%s/lost+found", ws->dir);
            rmdir(lost);
        }
        moat_log(MOAT_LOG_DEBUG, "workspace_mounted", "chat_id=%s dir=%s", chat_id, ws->dir);
    }
    moat__workspace_set_owner(chat_id, ws->dir, owner_uid, owner_gid);
    ws->lock_fd = lock_fd;
    return MOAT_CODE_OK;
}

void moat__workspace_release(moat__workspace *ws)
{
    if (ws->lock_fd >= 0)
        close(ws->lock_fd);
    ws->lock_fd = -1;
}

moat_code moat__workspace_detach(const moat__workspace_config *cfg, const char *chat_id,
                                 moat__chat_in_use_fn in_use, void *ctx, moat_status *st)
{
    moat_status_clear(st);
    if (!cfg->quota)
        return MOAT_CODE_OK;
    char root[PATH_MAX], dir[MOAT_RUNTIME_PATH_MAX], image[MOAT_RUNTIME_PATH_MAX],
        lock_path[MOAT_RUNTIME_PATH_MAX];
    if (realpath(cfg->chats_root, root) == NULL ||
        !moat__workspace_path(root, chat_id, "", dir, sizeof(dir)) ||
        !moat__workspace_path(cfg->images_dir, chat_id, ".ext4", image, sizeof(image)) ||
        !moat__workspace_path(cfg->images_dir, chat_id, ".lock", lock_path, sizeof(lock_path))) {
        moat_status_set(st, MOAT_CODE_INTERNAL, "workspace_detach_failed",
                        "workspace paths of chat %s: %s", chat_id, strerror(errno));
        return st->code;
    }
    int lock_fd = moat__workspace_lock(lock_path, false);
    if (lock_fd < 0 && errno == ENOENT)
        return MOAT_CODE_OK; /* never attached */
    if (lock_fd < 0) {
        moat_status_set(st, MOAT_CODE_INTERNAL, "workspace_detach_failed", "lock %s: %s", lock_path,
                        strerror(errno));
        return st->code;
    }
    if (workspace_state(dir, image) == MOUNTED_OURS && (in_use == NULL || !in_use(ctx, chat_id))) {
        if (umount2(dir, UMOUNT_NOFOLLOW) == 0) {
            moat_log(MOAT_LOG_DEBUG, "workspace_unmounted", "chat_id=%s dir=%s", chat_id, dir);
        } else if (errno == EBUSY) {
            moat_log(MOAT_LOG_WARN, "workspace_busy",
                     "chat_id=%s dir=%s msg=\"a host process uses it; it stays mounted\"", chat_id,
                     dir);
        } else {
            moat_status_set(st, MOAT_CODE_INTERNAL, "workspace_detach_failed", "umount %s: %s", dir,
                            strerror(errno));
        }
    }
    close(lock_fd);
    return st->code;
}

static bool store_in_use(void *ctx, const char *chat_id)
{
    moat_runtime *rt = ctx;
    moat__row *rows = NULL;
    size_t n = 0;
    if (moat__store_list_running(rt->store, &rows, &n) != MOAT_OK)
        return true; /* unknown: keep it mounted */
    bool used = false;
    for (size_t i = 0; i < n && !used; i++)
        used = strcmp(rows[i].chat_id, chat_id) == 0;
    free(rows);
    return used;
}

void moat__workspace_detach_idle(moat_runtime *rt, const char *chat_id)
{
    moat_status st;
    if (moat__workspace_detach(&rt->ws, chat_id, store_in_use, rt, &st) != MOAT_CODE_OK)
        moat_log(MOAT_LOG_WARN, "workspace_detach_failed", "chat_id=%s msg=\"%s\"", chat_id,
                 st.message);
}

typedef struct orphans {
    const char *root;
    size_t root_len;
    char (*chats)[MOAT_UUID_STR_LEN];
    size_t count, cap;
} orphans;

static void on_orphan(void *ctx, const moat__mount_entry *entry)
{
    orphans *o = ctx;
    const char *name = entry->mount_point + o->root_len + 1;
    char canonical[MOAT_UUID_STR_LEN];
    if (strncmp(entry->mount_point, o->root, o->root_len) != 0 ||
        entry->mount_point[o->root_len] != '/' || strcmp(entry->fstype, "ext4") != 0 ||
        moat_uuid_canonicalize(name, canonical) != MOAT_OK || strcmp(canonical, name) != 0)
        return;
    if (o->count == o->cap) {
        size_t cap = o->cap ? o->cap * 2 : 16;
        void *grown = realloc(o->chats, cap * sizeof(*o->chats));
        if (grown == NULL)
            return;
        o->chats = grown;
        o->cap = cap;
    }
    memcpy(o->chats[o->count++], canonical, MOAT_UUID_STR_LEN);
}

void moat__workspace_detach_orphans(moat_runtime *rt)
{
    char root[PATH_MAX];
    if (!rt->ws.quota || realpath(rt->ws.chats_root, root) == NULL)
        return;
    orphans o = {root, strlen(root), NULL, 0, 0};
    read_mountinfo(on_orphan, &o);
    for (size_t i = 0; i < o.count; i++)
        moat__workspace_detach_idle(rt, o.chats[i]);
    free(o.chats);
}

/* ---- the session's execd directory ---------------------------------------------------------- */

static bool is_mount_point(const char *dir)
{
    char parent[MOAT_RUNTIME_PATH_MAX + 4];
    snprintf(parent, sizeof(parent), "%s/..", dir);
    struct stat d, p;
    return stat(dir, &d) == 0 && stat(parent, &p) == 0 && d.st_dev != p.st_dev;
}

/* execd, root in the sandbox, makes its socket there: under an engine's userns-remap that root
 * is an unprivileged host id, which the directory must belong to. */
static moat_code rundir_owner(const char *dir, uint32_t uid, uint32_t gid, moat_status *st)
{
    struct stat sb;
    const char *why = NULL;
    if (lstat(dir, &sb) != 0)
        why = strerror(errno);
    else if (!S_ISDIR(sb.st_mode))
        why = "not a directory";
    else if ((sb.st_uid != uid || sb.st_gid != gid) && lchown(dir, uid, gid) != 0)
        why = strerror(errno);
    if (why == NULL)
        return MOAT_CODE_OK;
    moat_status_set(st, MOAT_CODE_UNAVAILABLE, "workspace_unavailable", "give %s to %u:%u: %s", dir,
                    uid, gid, why);
    moat_status_add_detail(st, "why", "run_dir");
    moat_log(MOAT_LOG_WARN, "workspace_unavailable", "why=run_dir msg=\"%s\"", st->message);
    return st->code;
}

moat_code moat__rundir_attach(const moat__workspace_config *cfg, const char *dir,
                              uint32_t owner_uid, uint32_t owner_gid, moat_status *st)
{
    moat_status_clear(st);
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        moat_status_set(st, MOAT_CODE_UNAVAILABLE, "workspace_unavailable", "mkdir %s: %s", dir,
                        strerror(errno));
        moat_status_add_detail(st, "why", "run_dir");
        return st->code;
    }
    if (!cfg->quota || is_mount_point(dir))
        return rundir_owner(dir, owner_uid, owner_gid, st);
    char opts[128];
    snprintf(opts, sizeof(opts), "size=%d,nr_inodes=%d,mode=0700,uid=%u,gid=%u", MOAT__RUNDIR_BYTES,
             RUNDIR_INODES, owner_uid, owner_gid);
    if (mount("moat-run", dir, "tmpfs", RUNDIR_MOUNT_FLAGS, opts) != 0) {
        moat_status_set(st, MOAT_CODE_UNAVAILABLE, "workspace_unavailable",
                        "mount a tmpfs on %s: %s", dir, strerror(errno));
        moat_status_add_detail(st, "why", "run_dir");
        moat_log(MOAT_LOG_WARN, "workspace_unavailable", "why=run_dir msg=\"%s\"", st->message);
        rmdir(dir);
        return st->code;
    }
    return MOAT_CODE_OK;
}

void moat__rundir_detach(const char *dir)
{
    if (is_mount_point(dir) && umount2(dir, UMOUNT_NOFOLLOW) != 0)
        moat_log(MOAT_LOG_WARN, "run_dir_umount_failed", "dir=%s error=\"%s\"", dir,
                 strerror(errno));
    rmdir(dir);
}
