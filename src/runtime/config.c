#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <curl/curl.h>

#include "internal.h"

void moat_runtime_config_defaults(moat_runtime_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->image = "moat-sandbox-debian:latest";
    cfg->ttl_seconds = 300;
    cfg->cleanup_interval_seconds = 60;
    cfg->chats_root = "/var/lib/moat/chats";
    cfg->dependencies_host_path = "/var/lib/moat/dependencies";
    cfg->lambda_tools_host_path = "/var/lib/moat/lambda-tools";
    cfg->chat_mount_path = "/workspace/chat";
    cfg->dependencies_mount_path = "/workspace/dependencies";
    cfg->lambda_tools_mount_path = "/workspace/lambda-tools";
    cfg->docker_host = "/var/run/docker.sock";
    cfg->docker_timeout_ms = 30000;
    cfg->state_dir = "/var/lib/moat";
    cfg->execd_bundle_dir = "/var/lib/moat/execd-bundle";
    cfg->store_path = "/var/lib/moat/state.db";
    cfg->container_name_prefix = "moat-";
    cfg->default_memory_bytes = 512ll * 1024 * 1024;
    cfg->max_memory_bytes = 4096ll * 1024 * 1024;
    cfg->default_nano_cpus = 1000000000ll;
    cfg->max_nano_cpus = 2000000000ll;
    cfg->default_pids_limit = 0;
    cfg->max_pids_limit = 0;
    cfg->sandbox_user_root = false;
    cfg->sandbox_uid = 1000;
    cfg->sandbox_gid = 1000;
    cfg->read_only_rootfs = true;
    cfg->tmpfs_size_bytes = 64ll * 1024 * 1024;
    cfg->workspace_quota = true;
    cfg->workspace_size_bytes = 1024ll * 1024 * 1024;
    cfg->workspace_inodes = 65536;
    cfg->readiness_timeout_ms = 10000;
    cfg->stop_timeout_seconds = 2;
    cfg->pool_size = 0;
    cfg->pool_fill_concurrency = 2;
    cfg->pool_max_sandboxes = 0;
}

const char *moat_session_state_name(moat_session_state state)
{
    switch (state) {
    case MOAT_SESSION_RUNNING:
        return "running";
    case MOAT_SESSION_STOPPED:
        return "stopped";
    case MOAT_SESSION_EXPIRED:
        return "expired";
    case MOAT_SESSION_GONE:
        return "gone";
    case MOAT_SESSION_FAILED:
        return "failed";
    }
    return "unknown";
}

static moat_code bad(moat_status *st, const char *setting, const char *fmt, const char *value)
{
    char msg[MOAT_STATUS_MESSAGE_MAX];
    snprintf(msg, sizeof(msg), fmt, value ? value : "(unset)");
    moat_status_set(st, MOAT_CODE_INVALID_ARGUMENT, "invalid_config", "config %s: %s", setting,
                    msg);
    moat_status_add_detail(st, "setting", setting);
    return st->code;
}

static bool is_abs(const char *p)
{
    return p != NULL && p[0] == '/';
}

static moat_code need_dir(moat_status *st, const char *setting, const char *path)
{
    struct stat sb;
    if (!is_abs(path))
        return bad(st, setting, "must be an absolute path, got '%s'", path);
    if (stat(path, &sb) != 0)
        return bad(st, setting, "directory '%s' does not exist", path);
    if (!S_ISDIR(sb.st_mode))
        return bad(st, setting, "'%s' is not a directory", path);
    return MOAT_CODE_OK;
}

/* A directory that moat creates when missing: absolute, and either a directory or absent
 * with an existing ancestor chain we can create. */
static moat_code creatable_dir(moat_status *st, const char *setting, const char *path)
{
    struct stat sb;
    if (!is_abs(path))
        return bad(st, setting, "must be an absolute path, got '%s'", path);
    if (stat(path, &sb) == 0 && !S_ISDIR(sb.st_mode))
        return bad(st, setting, "'%s' exists and is not a directory", path);
    return MOAT_CODE_OK;
}

static moat_code mount_target(moat_status *st, const char *setting, const char *path)
{
    if (!is_abs(path))
        return bad(st, setting, "must be an absolute path in the container, got '%s'", path);
    if (strcmp(path, "/opt/moat") == 0 || strcmp(path, "/run/moat") == 0 || strcmp(path, "/") == 0)
        return bad(st, setting, "'%s' is reserved", path);
    return MOAT_CODE_OK;
}

/* ext4 needs a few MiB of its own; 16 TiB is its limit with 4 KiB blocks. */
#define WORKSPACE_SIZE_MIN (16ll * 1024 * 1024)
#define WORKSPACE_SIZE_MAX (16ll * 1024 * 1024 * 1024 * 1024)

static moat_code validate_quota(const moat_runtime_config *cfg, moat_status *st)
{
    if (cfg->workspace_size_bytes < WORKSPACE_SIZE_MIN ||
        cfg->workspace_size_bytes > WORKSPACE_SIZE_MAX)
        return bad(st, "workspace_size_bytes", "must be from 16 MiB to 16 TiB%s", "");
    /* mkfs.ext4 allows at most one inode per KiB. */
    if (cfg->workspace_inodes < 64 || cfg->workspace_inodes > UINT32_MAX ||
        cfg->workspace_inodes > cfg->workspace_size_bytes / 1024)
        return bad(st, "workspace_inodes",
                   "must be from 64 to 2^32-1 and at most one per KiB of workspace_size_bytes%s",
                   "");
    if (cfg->workspace_images_dir != NULL && !is_abs(cfg->workspace_images_dir))
        return bad(st, "workspace_images_dir", "must be an absolute path, got '%s'",
                   cfg->workspace_images_dir);
    if (!moat__can_mount())
        return bad(st, "workspace_quota",
                   "mounting workspace images needs CAP_SYS_ADMIN (run moatd as root)%s; or set "
                   "workspace_quota = false for plain, unbounded directories",
                   "");
    if (access(MOAT__LOOP_CONTROL, R_OK | W_OK) != 0)
        return bad(st, "workspace_quota",
                   "%s is missing (modprobe loop); or set workspace_quota = false for plain, "
                   "unbounded directories",
                   MOAT__LOOP_CONTROL);
    if (access(MOAT__MKFS_EXT4, X_OK) != 0)
        return bad(st, "workspace_quota",
                   "%s is missing (apt-get install e2fsprogs); or set workspace_quota = false "
                   "for plain, unbounded directories",
                   MOAT__MKFS_EXT4);
    return MOAT_CODE_OK;
}

/* A slot is part of the session budget, and a claim mounts a workspace into it. */
static moat_code validate_pool(const moat_runtime_config *cfg, moat_status *st)
{
    if (cfg->pool_size < 0 || cfg->pool_size > 1024)
        return bad(st, "pool_size", "must be 0 (no pool) to 1024%s", "");
    if (cfg->pool_size == 0)
        return MOAT_CODE_OK;
    if (cfg->pool_max_sandboxes > 0 && cfg->pool_size > cfg->pool_max_sandboxes) {
        char why[160];
        snprintf(why, sizeof(why),
                 "is %lld, more than the %lld sessions allowed at once (max_sessions), which "
                 "pool slots count against",
                 (long long)cfg->pool_size, (long long)cfg->pool_max_sandboxes);
        return bad(st, "pool_size", "%s", why);
    }
    if (cfg->pool_fill_concurrency < 1 || cfg->pool_fill_concurrency > 16)
        return bad(st, "pool_fill_concurrency", "must be 1 to 16%s", "");
    if (!moat__can_mount())
        return bad(st, "pool_size",
                   "needs CAP_SYS_ADMIN to mount a chat's workspace into a pool sandbox (or set "
                   "pool_size = 0)%s",
                   "");
    return MOAT_CODE_OK;
}

bool moat_runtime_is_gvisor(const char *runtime)
{
    return runtime != NULL && (strcmp(runtime, "runsc") == 0 || strncmp(runtime, "runsc-", 6) == 0);
}

/* The pids limits in force: the configured ones, or the runtime's own where they are 0. */
static void pids_limits(const moat_runtime_config *cfg, int64_t *dflt, int64_t *max)
{
    bool gvisor = moat_runtime_is_gvisor(cfg->runtime);
    *dflt = cfg->default_pids_limit != 0 ? cfg->default_pids_limit
            : gvisor                     ? MOAT_GVISOR_PIDS_LIMIT_DEFAULT
                                         : MOAT_RUNC_PIDS_LIMIT_DEFAULT;
    *max = cfg->max_pids_limit != 0 ? cfg->max_pids_limit
           : gvisor                 ? MOAT_GVISOR_PIDS_LIMIT_MAX
                                    : MOAT_RUNC_PIDS_LIMIT_MAX;
}

/* The name of a runtime registered with dockerd, as moat accepts it. */
static bool runtime_name_ok(const char *name)
{
    size_t n = strlen(name);
    return n <= 63 && isalnum((unsigned char)name[0]) &&
           strspn(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-") == n;
}

/* An image reference as Docker spells one (name, :tag, @digest), short enough for the session
 * records; a stray comma or space in a list shows here rather than as a missing image. */
static bool image_name_ok(const char *name)
{
    size_t n = strlen(name);
    return n > 0 && n < MOAT_IMAGE_NAME_MAX && isalnum((unsigned char)name[0]) &&
           strspn(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-:/@") ==
               n;
}

moat_code moat_runtime_config_validate(const moat_runtime_config *cfg, moat_status *st)
{
    moat_status_clear(st);
    if (cfg->image == NULL || !image_name_ok(cfg->image))
        return bad(st, "image", "must be an image reference, got '%s'", cfg->image);
    if (cfg->ttl_seconds <= 0)
        return bad(st, "ttl_seconds", "must be positive%s", "");
    if (cfg->cleanup_interval_seconds <= 0)
        return bad(st, "cleanup_interval_seconds", "must be positive%s", "");
    if (creatable_dir(st, "chats_root", cfg->chats_root) ||
        need_dir(st, "dependencies_host_path", cfg->dependencies_host_path) ||
        need_dir(st, "lambda_tools_host_path", cfg->lambda_tools_host_path) ||
        mount_target(st, "chat_mount_path", cfg->chat_mount_path) ||
        mount_target(st, "dependencies_mount_path", cfg->dependencies_mount_path) ||
        mount_target(st, "lambda_tools_mount_path", cfg->lambda_tools_mount_path) ||
        creatable_dir(st, "state_dir", cfg->state_dir) ||
        need_dir(st, "execd_bundle_dir", cfg->execd_bundle_dir))
        return st->code;
    if (!is_abs(cfg->store_path))
        return bad(st, "store_path", "must be an absolute path, got '%s'", cfg->store_path);
    if (cfg->docker_host == NULL || cfg->docker_host[0] == '\0')
        return bad(st, "docker_host", "must be set%s", "");
    if (strncmp(cfg->docker_host, "tcp://", 6) != 0) {
        const char *sock = cfg->docker_host;
        if (strncmp(sock, "unix://", 7) == 0)
            sock += 7;
        if (!is_abs(sock))
            return bad(st, "docker_host",
                       "must be an absolute socket path, unix:///path or tcp://host:port, got '%s'",
                       cfg->docker_host);
    } else {
        const char *files[] = {cfg->docker_tls_cert, cfg->docker_tls_key, cfg->docker_tls_ca};
        const char *names[] = {"docker_tls_cert", "docker_tls_key", "docker_tls_ca"};
        for (int i = 0; i < 3; i++) {
            struct stat sb;
            if (files[i] == NULL)
                continue;
            if (!is_abs(files[i]))
                return bad(st, names[i], "must be an absolute path, got '%s'", files[i]);
            if (stat(files[i], &sb) != 0 || !S_ISREG(sb.st_mode))
                return bad(st, names[i], "file '%s' does not exist", files[i]);
        }
        if ((cfg->docker_tls_cert == NULL) != (cfg->docker_tls_key == NULL))
            return bad(st, "docker_tls_key", "client certificate and key go together%s", "");
    }
    if (cfg->docker_timeout_ms <= 0)
        return bad(st, "docker_timeout_ms", "must be positive%s", "");
    if (cfg->readiness_timeout_ms <= 0)
        return bad(st, "readiness_timeout_ms", "must be positive%s", "");
    if (cfg->stop_timeout_seconds < 0)
        return bad(st, "stop_timeout_seconds", "must not be negative%s", "");
    /* Characters Docker allows in a container name: with no '/', the prefix cannot make a
     * name that Docker shows as a link alias, so the ownership check compares names exactly. */
    const char *name_chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-";
    if (cfg->container_name_prefix == NULL || strlen(cfg->container_name_prefix) > 64 ||
        strspn(cfg->container_name_prefix, name_chars) != strlen(cfg->container_name_prefix))
        return bad(st, "container_name_prefix",
                   "must be at most 64 characters of [A-Za-z0-9_.-], got '%s'",
                   cfg->container_name_prefix);
    if (cfg->instance != NULL && (cfg->instance[0] == '\0' || strlen(cfg->instance) > 63 ||
                                  strspn(cfg->instance, name_chars) != strlen(cfg->instance)))
        return bad(st, "instance", "must be 1..63 characters of [A-Za-z0-9_.-], got '%s'",
                   cfg->instance);
    if (cfg->runtime != NULL && cfg->runtime[0] != '\0' && !runtime_name_ok(cfg->runtime))
        return bad(st, "runtime",
                   "must be at most 63 characters of [A-Za-z0-9_.-], starting with a letter or "
                   "a digit (a runtime registered with dockerd, such as runsc), got '%s'",
                   cfg->runtime);
    if (cfg->max_memory_bytes <= 0 || cfg->default_memory_bytes <= 0 ||
        cfg->default_memory_bytes > cfg->max_memory_bytes)
        return bad(st, "default_memory_bytes", "must be positive and <= max_memory_bytes%s", "");
    if (cfg->max_nano_cpus <= 0 || cfg->default_nano_cpus <= 0 ||
        cfg->default_nano_cpus > cfg->max_nano_cpus)
        return bad(st, "default_nano_cpus", "must be positive and <= max_nano_cpus%s", "");
    if (!cfg->sandbox_user_root && (cfg->sandbox_uid == 0 || cfg->sandbox_gid == 0))
        return bad(st, "sandbox_user", "uid and gid must not be 0 (ask for root explicitly)%s", "");
    int64_t pids_default, pids_max;
    pids_limits(cfg, &pids_default, &pids_max);
    if (cfg->max_pids_limit < 0 || cfg->default_pids_limit < 0 || pids_default > pids_max)
        return bad(st, "default_pids_limit",
                   "must be positive (0: the runtime's default) and <= max_pids_limit%s", "");
    if (moat_runtime_is_gvisor(cfg->runtime) && pids_default < MOAT_GVISOR_PIDS_LIMIT_MIN) {
        char why[200];
        snprintf(why, sizeof(why),
                 "must be at least %d under gVisor (runtime '%s'), whose own threads count "
                 "against it",
                 MOAT_GVISOR_PIDS_LIMIT_MIN, cfg->runtime);
        return bad(st, "default_pids_limit", "%s", why);
    }
    if (cfg->read_only_rootfs && cfg->tmpfs_size_bytes <= 0)
        return bad(st, "tmpfs_size_bytes", "must be positive with read_only_rootfs%s", "");
    for (size_t i = 0; i < cfg->allowed_image_count; i++)
        if (cfg->allowed_images[i] == NULL || !image_name_ok(cfg->allowed_images[i]))
            return bad(st, "allowed_images", "entries must be image references, got '%s'",
                       cfg->allowed_images[i]);
    if (validate_pool(cfg, st) != MOAT_CODE_OK)
        return st->code;
    return cfg->workspace_quota ? validate_quota(cfg, st) : MOAT_CODE_OK;
}

/* The directories that hold workspaces, execd's sockets and the store: other local users must
 * not traverse them (a sandbox can leave setuid files and sockets inside). */
static int make_private(const char *path)
{
    struct stat sb;
    if (stat(path, &sb) != 0)
        return -1;
    if ((sb.st_mode & 07777) == 0700)
        return 0;
    moat_log(MOAT_LOG_INFO, "runtime_dir_made_private", "path=\"%s\" mode_was=%04o", path,
             (unsigned)(sb.st_mode & 07777));
    return chmod(path, 0700);
}

/* Files a sandbox leaves in its workspace or socket directory must be inert on the host: a
 * setuid copy of a shell made by a root sandbox would be setuid root there. The directory
 * becomes a bind mount of itself with nosuid and nodev, which every bind mount Docker makes of
 * what is inside inherits. It stays after moatd exits, so the files stay inert while moatd is
 * down; nothing is done when the directory already sits on such a mount. */
static int make_inert(const char *path)
{
    struct statvfs vfs;
    if (statvfs(path, &vfs) != 0)
        return -1;
    if ((vfs.f_flag & ST_NOSUID) && (vfs.f_flag & ST_NODEV))
        return 0;
    /* The type is ignored for a bind mount; valgrind insists on a readable string. */
    if (mount(path, path, "none", MS_BIND, NULL) != 0)
        return -1;
    if (mount("none", path, "none", MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV, NULL) != 0) {
        int err = errno;
        umount2(path, MNT_DETACH);
        errno = err;
        return -1;
    }
    moat_log(MOAT_LOG_INFO, "runtime_dir_made_inert", "path=\"%s\" mount=\"bind,nosuid,nodev\"",
             path);
    return 0;
}

/* Copies s into rt's owned strings; a failed copy is remembered in own_failed. */
static const char *own(moat_runtime *rt, const char *s, bool *own_failed)
{
    if (s == NULL)
        return NULL;
    char *copy = strdup(s);
    if (copy == NULL) {
        *own_failed = true;
        return NULL;
    }
    rt->owned[rt->owned_count++] = copy;
    return copy;
}

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static void curl_init_once(void)
{
    curl_global_init(CURL_GLOBAL_ALL);
}

moat_runtime *moat_runtime_open(const moat_runtime_config *cfg, moat_status *st)
{
    if (moat_runtime_config_validate(cfg, st) != MOAT_CODE_OK)
        return NULL;
    pthread_once(&curl_once, curl_init_once);
    moat_runtime *rt = calloc(1, sizeof(*rt));
    size_t slots = 24 + cfg->allowed_image_count;
    if (rt != NULL)
        rt->owned = calloc(slots, sizeof(char *));
    if (rt == NULL || rt->owned == NULL) {
        free(rt);
        moat_status_set(st, MOAT_CODE_RESOURCE_EXHAUSTED, "out_of_memory", "out of memory");
        return NULL;
    }
    /* Initialised first: moat_runtime_close relies on them on every failure path. */
    pthread_mutex_init(&rt->version_mu, NULL);
    pthread_mutex_init(&rt->foreign_mu, NULL);
    pthread_mutex_init(&rt->reaper_mu, NULL);
    pthread_cond_init(&rt->reaper_cv, NULL);
    pthread_mutex_init(&rt->busy_mu, NULL);
    moat__pool_init(rt);
    moat__cache_init(rt);
    rt->cfg = *cfg;
    moat_runtime_config *c = &rt->cfg;
    bool own_failed = false;
    c->image = own(rt, cfg->image, &own_failed);
    c->chats_root = own(rt, cfg->chats_root, &own_failed);
    c->dependencies_host_path = own(rt, cfg->dependencies_host_path, &own_failed);
    c->lambda_tools_host_path = own(rt, cfg->lambda_tools_host_path, &own_failed);
    c->chat_mount_path = own(rt, cfg->chat_mount_path, &own_failed);
    c->dependencies_mount_path = own(rt, cfg->dependencies_mount_path, &own_failed);
    c->lambda_tools_mount_path = own(rt, cfg->lambda_tools_mount_path, &own_failed);
    c->docker_host = own(rt, cfg->docker_host, &own_failed);
    c->docker_tls_cert = own(rt, cfg->docker_tls_cert, &own_failed);
    c->docker_tls_key = own(rt, cfg->docker_tls_key, &own_failed);
    c->docker_tls_ca = own(rt, cfg->docker_tls_ca, &own_failed);
    c->state_dir = own(rt, cfg->state_dir, &own_failed);
    c->execd_bundle_dir = own(rt, cfg->execd_bundle_dir, &own_failed);
    c->store_path = own(rt, cfg->store_path, &own_failed);
    c->container_name_prefix = own(rt, cfg->container_name_prefix, &own_failed);
    c->instance = own(rt, cfg->instance, &own_failed);
    c->workspace_images_dir = own(rt, cfg->workspace_images_dir, &own_failed);
    /* "" and NULL both mean the engine's default runtime; keep one spelling of it. */
    c->runtime =
        cfg->runtime != NULL && cfg->runtime[0] != '\0' ? own(rt, cfg->runtime, &own_failed) : NULL;
    pids_limits(cfg, &c->default_pids_limit, &c->max_pids_limit);
    if (c->instance != NULL)
        snprintf(rt->instance_filter, sizeof(rt->instance_filter), "moat.instance=%s", c->instance);
    const char **images = NULL;
    if (cfg->allowed_image_count > 0) {
        images = calloc(cfg->allowed_image_count, sizeof(char *));
        if (images != NULL) {
            rt->owned[rt->owned_count++] = (char *)images;
            for (size_t i = 0; i < cfg->allowed_image_count; i++)
                images[i] = own(rt, cfg->allowed_images[i], &own_failed);
        }
    }
    c->allowed_images = images;
    if (own_failed || (cfg->allowed_image_count > 0 && images == NULL)) {
        moat_status_set(st, MOAT_CODE_RESOURCE_EXHAUSTED, "out_of_memory", "out of memory");
        moat_runtime_close(rt);
        return NULL;
    }

    char images_dir[MOAT_RUNTIME_PATH_MAX];
    snprintf(images_dir, sizeof(images_dir), "%s/.images", c->chats_root);
    rt->ws = (moat__workspace_config){
        .quota = c->workspace_quota,
        .chats_root = c->chats_root,
        .images_dir =
            c->workspace_images_dir ? c->workspace_images_dir : own(rt, images_dir, &own_failed),
        .mkfs_path = MOAT__MKFS_EXT4,
        .loop_control = MOAT__LOOP_CONTROL,
        .size_bytes = c->workspace_size_bytes,
        .inodes = c->workspace_inodes,
    };
    if (own_failed) {
        moat_status_set(st, MOAT_CODE_RESOURCE_EXHAUSTED, "out_of_memory", "out of memory");
        moat_runtime_close(rt);
        return NULL;
    }

    char sessions[MOAT_RUNTIME_PATH_MAX];
    snprintf(sessions, sizeof(sessions), "%s/sessions", c->state_dir);
    if (moat__mkdir_p(c->chats_root, 0755) != 0 || moat__mkdir_p(sessions, 0755) != 0 ||
        make_private(c->chats_root) != 0 || make_private(c->state_dir) != 0 ||
        make_private(sessions) != 0) {
        moat_status_set(st, MOAT_CODE_FAILED_PRECONDITION, "invalid_config",
                        "cannot create chats_root '%s' or state_dir '%s': %s", c->chats_root,
                        c->state_dir, strerror(errno));
        moat_runtime_close(rt);
        return NULL;
    }
    if (make_inert(c->chats_root) != 0 || make_inert(sessions) != 0) {
        moat_status_set(st, MOAT_CODE_FAILED_PRECONDITION, "invalid_config",
                        "cannot make chats_root '%s' and '%s' nosuid,nodev mounts: %s (run moatd "
                        "as root, or mount them nosuid,nodev yourself)",
                        c->chats_root, sessions, strerror(errno));
        moat_runtime_close(rt);
        return NULL;
    }
    char err[256] = "";
    if (moat__store_open(c->store_path, &rt->store, err, sizeof(err)) != MOAT_OK) {
        moat_status_set(st, MOAT_CODE_FAILED_PRECONDITION, "store_open_failed",
                        "config store_path '%s': %s", c->store_path, err);
        moat_status_add_detail(st, "setting", "store_path");
        moat_runtime_close(rt);
        return NULL;
    }
    if (moat__docker_init(rt, st) != MOAT_OK) {
        moat_runtime_close(rt);
        return NULL;
    }
    moat_status_clear(st);
    return rt;
}

void moat_runtime_close(moat_runtime *rt)
{
    if (rt == NULL)
        return;
    moat_runtime_stop_pool(rt);
    moat_runtime_stop_reaper(rt);
    moat_runtime_stop_watcher(rt);
    moat__store_close(rt->store);
    moat__cache_destroy(rt);
    pthread_mutex_destroy(&rt->version_mu);
    pthread_mutex_destroy(&rt->foreign_mu);
    pthread_mutex_destroy(&rt->reaper_mu);
    pthread_cond_destroy(&rt->reaper_cv);
    moat__pool_destroy(rt);
    pthread_mutex_destroy(&rt->busy_mu);
    free(rt->busy);
    for (size_t i = 0; i < rt->owned_count; i++)
        free(rt->owned[i]);
    free(rt->owned);
    free(rt->docker_socket);
    free(rt->docker_base_url);
    free(rt);
}
