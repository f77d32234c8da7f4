/* A new chat's workspace made ahead of time for each pool slot, so a claim for a new chat renames
 * an image and moves a mount instead of copying, fsyncing, loop-attaching and mounting one
 * (docs/runtime.md, "Warm pool"). The slot owns <images_dir>/<slot_id>.prepared.ext4 and its
 * mount on <state_dir>/pool-staging/<slot_id> until a claim hands both to a chat or
 * moat__prepared_discard deletes them. The staging directory is a private mount of its own: the
 * kernel refuses to move a mount whose parent is shared, as / is on most hosts. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

#define PREPARED_SUFFIX ".prepared.ext4"

static void staging_root(const moat_runtime *rt, char *out, size_t cap)
{
    snprintf(out, cap, "%s/pool-staging", rt->cfg.state_dir);
}

static bool paths(const moat_runtime *rt, const char *slot_id, char image[MOAT_RUNTIME_PATH_MAX],
                  char staging[MOAT_RUNTIME_PATH_MAX])
{
    char root[MOAT_RUNTIME_PATH_MAX];
    staging_root(rt, root, sizeof(root));
    return moat__workspace_path(rt->ws.images_dir, slot_id, PREPARED_SUFFIX, image,
                                MOAT_RUNTIME_PATH_MAX) &&
           moat__workspace_path(root, slot_id, "", staging, MOAT_RUNTIME_PATH_MAX);
}

static bool is_mount_point(const char *dir)
{
    char parent[MOAT_RUNTIME_PATH_MAX + 4];
    snprintf(parent, sizeof(parent), "%s/..", dir);
    struct statx own, up;
    return statx(AT_FDCWD, dir, AT_SYMLINK_NOFOLLOW, STATX_MNT_ID, &own) == 0 &&
           statx(AT_FDCWD, parent, 0, STATX_MNT_ID, &up) == 0 &&
           (own.stx_mask & up.stx_mask & STATX_MNT_ID) && own.stx_mnt_id != up.stx_mnt_id;
}

static moat_code staging_failed(moat_status *st, const char *slot_id, const char *what,
                                const char *dir)
{
    moat_status_set(st, MOAT_CODE_UNAVAILABLE, "workspace_unavailable", "%s %s: %s", what, dir,
                    strerror(errno));
    moat_status_add_detail(st, "why", "pool_staging");
    moat_log(MOAT_LOG_WARN, "workspace_unavailable", "slot=%s why=pool_staging msg=\"%s\"", slot_id,
             st->message);
    return st->code;
}

/* The staging directory as a private bind mount of itself, made once per state_dir. */
static moat_code staging_root_make(moat_runtime *rt, const char *slot_id, moat_status *st)
{
    char root[MOAT_RUNTIME_PATH_MAX];
    staging_root(rt, root, sizeof(root));
    if (moat__mkdir_p(root, 0700) != 0)
        return staging_failed(st, slot_id, "mkdir", root);
    if (is_mount_point(root))
        return MOAT_CODE_OK;
    if (mount(root, root, "none", MS_BIND, NULL) != 0)
        return staging_failed(st, slot_id, "bind", root);
    if (mount("none", root, "none", MS_PRIVATE, NULL) != 0) {
        staging_failed(st, slot_id, "make private", root);
        umount2(root, UMOUNT_NOFOLLOW);
        return st->code;
    }
    return MOAT_CODE_OK;
}

void moat__prepared_discard(moat_runtime *rt, const char *slot_id)
{
    char image[MOAT_RUNTIME_PATH_MAX], staging[MOAT_RUNTIME_PATH_MAX];
    if (!paths(rt, slot_id, image, staging))
        return;
    /* Its loop device clears itself with this last mount. */
    if (is_mount_point(staging) && umount2(staging, UMOUNT_NOFOLLOW) != 0)
        moat_log(MOAT_LOG_WARN, "prepared_workspace_umount_failed", "dir=%s error=\"%s\"", staging,
                 strerror(errno));
    rmdir(staging);
    unlink(image);
}

void moat__prepared_staging_release(moat_runtime *rt)
{
    char root[MOAT_RUNTIME_PATH_MAX];
    staging_root(rt, root, sizeof(root));
    if (is_mount_point(root) && umount2(root, UMOUNT_NOFOLLOW) == 0)
        rmdir(root);
}

moat_code moat__prepared_make(moat_runtime *rt, const char *slot_id, moat_status *st)
{
    moat_status_clear(st);
    char image[MOAT_RUNTIME_PATH_MAX], staging[MOAT_RUNTIME_PATH_MAX];
    moat__idmap map;
    if (!paths(rt, slot_id, image, staging)) {
        moat_status_set(st, MOAT_CODE_UNAVAILABLE, "workspace_unavailable",
                        "state_dir or images_dir is too long");
        return st->code;
    }
    if (moat__userns_map(rt, &map, st) != MOAT_CODE_OK ||
        staging_root_make(rt, slot_id, st) != MOAT_CODE_OK)
        return st->code;
    uint32_t uid = map.uid_base + (rt->cfg.sandbox_user_root ? 0 : rt->cfg.sandbox_uid);
    uint32_t gid = map.gid_base + (rt->cfg.sandbox_user_root ? 0 : rt->cfg.sandbox_gid);
    if (moat__mkdir_p(rt->ws.images_dir, 0700) != 0)
        return staging_failed(st, slot_id, "mkdir", rt->ws.images_dir);
    if (mkdir(staging, 0700) != 0 && errno != EEXIST)
        return staging_failed(st, slot_id, "mkdir", staging);
    /* Whole and fsynced here, off the claim's path: a chat's image is never partly written. */
    if (moat__workspace_make_image(&rt->ws, slot_id, uid, gid, image, st) != MOAT_CODE_OK ||
        moat__workspace_mount_image(&rt->ws, slot_id, image, staging, st) != MOAT_CODE_OK) {
        moat__prepared_discard(rt, slot_id);
        return st->code;
    }
    /* As a new chat's workspace is handed out: empty, the sandbox user's, 0700. */
    char lost[MOAT_RUNTIME_PATH_MAX + 16];
    snprintf(lost, sizeof(lost), "%s/lost+found", staging);
    rmdir(lost);
    moat__workspace_set_owner(slot_id, staging, uid, gid);
    if (chmod(staging, 0700) != 0) {
        staging_failed(st, slot_id, "chmod", staging);
        moat__prepared_discard(rt, slot_id);
        return st->code;
    }
    return MOAT_CODE_OK;
}

/* Under the chat's lock: whether the chat has no workspace yet, so the prepared one may be its. */
static bool chat_is_new(const char *image, const char *dir)
{
    struct stat sb;
    return lstat(image, &sb) != 0 && errno == ENOENT && !is_mount_point(dir) &&
           moat__is_empty_dir(dir);
}

moat_code moat__prepared_claim(moat_runtime *rt, const char *slot_id, const char *chat_id,
                               uint32_t owner_uid, uint32_t owner_gid, moat__workspace *ws,
                               moat_status *st)
{
    moat_status_clear(st);
    ws->lock_fd = -1;
    char prepared[MOAT_RUNTIME_PATH_MAX], staging[MOAT_RUNTIME_PATH_MAX];
    char image[MOAT_RUNTIME_PATH_MAX], lock_path[MOAT_RUNTIME_PATH_MAX], root[PATH_MAX];
    struct stat sb;
    if (!rt->ws.quota || !paths(rt, slot_id, prepared, staging) ||
        !moat__workspace_path(rt->ws.images_dir, chat_id, ".ext4", image, sizeof(image)) ||
        !moat__workspace_path(rt->ws.images_dir, chat_id, ".lock", lock_path, sizeof(lock_path)) ||
        realpath(rt->ws.chats_root, root) == NULL ||
        !moat__workspace_path(root, chat_id, "", ws->dir, sizeof(ws->dir)) ||
        (mkdir(ws->dir, 0755) != 0 && errno != EEXIST) || lstat(ws->dir, &sb) != 0 ||
        !S_ISDIR(sb.st_mode)) {
        moat_status_set(st, MOAT_CODE_NOT_FOUND, "not_prepared", "attach as usual");
        return st->code;
    }
    int lock_fd = moat__workspace_lock(lock_path, true);
    if (lock_fd < 0 || !chat_is_new(image, ws->dir)) {
        if (lock_fd >= 0)
            close(lock_fd);
        moat_status_set(st, MOAT_CODE_NOT_FOUND, "not_prepared", "attach as usual");
        return st->code;
    }
    /* The rename needs no fsync of its own: it changes the image's inode, so ext4 commits it with
     * the first flush of anything the sandbox writes there. */
    if (renameat2(AT_FDCWD, prepared, AT_FDCWD, image, RENAME_NOREPLACE) != 0) {
        close(lock_fd);
        moat_status_set(st, MOAT_CODE_UNAVAILABLE, "workspace_unavailable", "rename %s to %s: %s",
                        prepared, image, strerror(errno));
        moat_status_add_detail(st, "why", "io_error");
        return st->code;
    }
    if (mount(staging, ws->dir, "none", MS_MOVE, NULL) != 0) {
        int err = errno;
        rename(image, prepared);
        close(lock_fd);
        moat_status_set(st, MOAT_CODE_UNAVAILABLE, "workspace_unavailable", "move %s to %s: %s",
                        staging, ws->dir, strerror(err));
        moat_status_add_detail(st, "why", "mount_failed");
        return st->code;
    }
    rmdir(staging);
    moat__workspace_set_owner(chat_id, ws->dir, owner_uid, owner_gid);
    moat_log(MOAT_LOG_INFO, "workspace_created", "chat_id=%s image=%s prepared_by=%s", chat_id,
             image, slot_id);
    ws->lock_fd = lock_fd;
    return MOAT_CODE_OK;
}
