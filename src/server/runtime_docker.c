/* The Docker runtime behind moatd's operations table: moatd's configuration translated into the
 * runtime's, and the runtime's functions as operations. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "server/server.h"

static int mkdir_p(const char *path)
{
    char tmp[4096];
    snprintf(tmp, sizeof(tmp), "%s", path);
    for (char *p = tmp + 1; *p; p++) {
        if (*p == '/') {
            *p = '\0';
            if (mkdir(tmp, 0755) != 0 && errno != EEXIST)
                return -1;
            *p = '/';
        }
    }
    return mkdir(tmp, 0755) != 0 && errno != EEXIST ? -1 : 0;
}

/* The runtime's view of moatd's configuration. Strings point into c and into
 * the returned buffer (free it), which holds the split allowed_images. */
static char *runtime_config(const moat_server_config *c, const moat_runtime_metrics *hooks,
                            moat_runtime_config *out, const char *list[MOAT_SERVER_MAX_IMAGES])
{
    moat_runtime_config rc;
    moat_runtime_config_defaults(&rc);
    rc.image = c->image;
    rc.ttl_seconds = c->ttl_seconds;
    rc.cleanup_interval_seconds = c->cleanup_interval_seconds;
    rc.chats_root = c->chats_root;
    rc.dependencies_host_path = c->dependencies_host_path;
    rc.lambda_tools_host_path = c->lambda_tools_host_path;
    rc.chat_mount_path = c->chat_mount_path;
    rc.dependencies_mount_path = c->dependencies_mount_path;
    rc.lambda_tools_mount_path = c->lambda_tools_mount_path;
    rc.docker_host = c->docker_host;
    rc.docker_tls_cert = c->docker_tls_cert[0] ? c->docker_tls_cert : NULL;
    rc.docker_tls_key = c->docker_tls_key[0] ? c->docker_tls_key : NULL;
    rc.docker_tls_ca = c->docker_tls_ca[0] ? c->docker_tls_ca : NULL;
    rc.docker_timeout_ms = (long)c->docker_timeout_ms;
    rc.state_dir = c->state_dir;
    rc.execd_bundle_dir = c->execd_bundle;
    rc.store_path = c->store_path;
    rc.container_name_prefix = c->container_name_prefix;
    rc.instance = c->instance[0] != '\0' ? c->instance : NULL;
    rc.runtime = c->runtime;
    rc.readiness_timeout_ms = (long)c->readiness_timeout_ms;
    rc.terminal_idle_seconds = c->terminal_idle_timeout_seconds;
    moat_sandbox_user user;
    if (moat_server_parse_sandbox_user(c->sandbox_user, &user) == MOAT_OK) {
        rc.sandbox_user_root = user.root;
        rc.sandbox_uid = user.uid;
        rc.sandbox_gid = user.gid;
    }
    rc.read_only_rootfs = c->read_only_rootfs;
    rc.tmpfs_size_bytes = (int64_t)c->tmpfs_size_bytes;
    rc.workspace_quota = c->workspace_quota;
    rc.workspace_images_dir = c->workspace_images_dir[0] ? c->workspace_images_dir : NULL;
    rc.workspace_size_bytes = (int64_t)c->workspace_size_bytes;
    rc.workspace_inodes = c->workspace_inodes;
    rc.pool_size = c->pool_size;
    rc.pool_fill_concurrency = c->pool_fill_concurrency;
    rc.pool_max_sandboxes = c->max_sessions;
    if (hooks != NULL)
        rc.metrics = *hooks;
    /* Its count was checked at config time; without memory, only image is allowed. */
    char *imgs;
    size_t n;
    if (moat_server_split_images(c->allowed_images, list, &n, &imgs) != MOAT_OK)
        n = 0;
    rc.allowed_images = list;
    rc.allowed_image_count = n;
    *out = rc;
    return imgs;
}

moat_code moat_server_check_runtime(const moat_server_config *c, moat_status *st)
{
    moat_runtime_config rc;
    const char *list[MOAT_SERVER_MAX_IMAGES];
    char *imgs = runtime_config(c, NULL, &rc, list);
    /* moatd creates these at start; their absence is not an error yet. */
    struct stat sb;
    if (stat(rc.dependencies_host_path, &sb) != 0)
        rc.dependencies_host_path = "/";
    if (stat(rc.lambda_tools_host_path, &sb) != 0)
        rc.lambda_tools_host_path = "/";
    moat_status_clear(st);
    moat_code code = moat_runtime_config_validate(&rc, st);
    free(imgs);
    return code;
}

static void *docker_open(const moat_server_config *c, const moat_runtime_metrics *hooks,
                         moat_status *st)
{
    /* The default layout under state_dir is ours to create; the runtime
     * insists the read-only mount sources exist. */
    const char *dirs[] = {c->state_dir, c->chats_root, c->dependencies_host_path,
                          c->lambda_tools_host_path};
    for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++) {
        if (mkdir_p(dirs[i]) != 0)
            moat_log(MOAT_LOG_WARN, "mkdir_failed", "path=%s error=\"%s\"", dirs[i],
                     strerror(errno));
    }
    moat_runtime_config rc;
    const char *list[MOAT_SERVER_MAX_IMAGES];
    char *imgs = runtime_config(c, hooks, &rc, list);
    moat_runtime *rt = moat_runtime_open(&rc, st);
    free(imgs);
    return rt;
}

static void docker_close(void *rt)
{
    moat_runtime_close(rt);
}

static moat_code docker_create(void *rt, const char *session_id, const char *chat_id,
                               int64_t created_at_ms, int64_t expires_at_ms,
                               const moat_session_options *opts, moat_session *out, moat_status *st)
{
    return moat_runtime_create(rt, session_id, chat_id, created_at_ms, expires_at_ms, opts, out,
                               st);
}

static moat_code docker_get(void *rt, const char *session_id, moat_session *out, moat_status *st)
{
    return moat_runtime_get(rt, session_id, out, st);
}

static moat_code docker_list_active(void *rt, moat_session **out, size_t *count, moat_status *st)
{
    return moat_runtime_list_active(rt, out, count, st);
}

static moat_code docker_renew(void *rt, const char *session_id, int64_t new_expires_at_ms,
                              moat_session *out, moat_status *st)
{
    return moat_runtime_renew(rt, session_id, new_expires_at_ms, out, st);
}

static moat_code docker_stop(void *rt, const char *session_id, moat_status *st)
{
    return moat_runtime_stop(rt, session_id, st);
}

static moat_code docker_reconcile(void *rt, int64_t now_ms, moat_reconcile_report *report,
                                  moat_status *st)
{
    return moat_runtime_reconcile(rt, now_ms, report, st);
}

static moat_code docker_start_reaper(void *rt, moat_status *st)
{
    return moat_runtime_start_reaper(rt, st);
}

static moat_code docker_start_watcher(void *rt, moat_status *st)
{
    return moat_runtime_start_watcher(rt, st);
}

static moat_code docker_ping(void *rt, long timeout_ms, moat_status *st)
{
    return moat_runtime_docker_ping(rt, timeout_ms, st);
}

static moat_code docker_check_image(void *rt, const char *image, moat_status *st)
{
    return moat_runtime_check_image(rt, image, st);
}

static moat_code docker_claim(void *rt, const char *chat_id, int64_t created_at_ms,
                              int64_t expires_at_ms, const moat_session_options *opts,
                              moat_session *out, moat_status *st)
{
    return moat_runtime_claim(rt, chat_id, created_at_ms, expires_at_ms, opts, out, st);
}

static moat_code docker_start_pool(void *rt, moat_status *st)
{
    return moat_runtime_start_pool(rt, st);
}

static void docker_pool_stats(void *rt, moat_pool_stats *out)
{
    moat_runtime_pool_stats(rt, out);
}

static moat_code docker_pool_reserve(void *rt, const moat_session_options *opts,
                                     char session_id[MOAT_UUID_STR_LEN], moat_status *st)
{
    return moat_runtime_pool_reserve(rt, opts, session_id, st);
}

static moat_code docker_pool_bind(void *rt, const char *session_id, const char *chat_id,
                                  int64_t created_at_ms, int64_t expires_at_ms, moat_session *out,
                                  moat_status *st)
{
    return moat_runtime_pool_bind(rt, session_id, chat_id, created_at_ms, expires_at_ms, out, st);
}

static void docker_pool_unreserve(void *rt, const char *session_id, bool reuse)
{
    moat_runtime_pool_unreserve(rt, session_id, reuse);
}

const moat_server_runtime_ops moat_server_docker_runtime = {
    .open = docker_open,
    .close = docker_close,
    .create = docker_create,
    .get = docker_get,
    .list_active = docker_list_active,
    .renew = docker_renew,
    .stop = docker_stop,
    .reconcile = docker_reconcile,
    .start_reaper = docker_start_reaper,
    .start_watcher = docker_start_watcher,
    .claim = docker_claim,
    .start_pool = docker_start_pool,
    .pool_stats = docker_pool_stats,
    .pool_reserve = docker_pool_reserve,
    .pool_bind = docker_pool_bind,
    .pool_unreserve = docker_pool_unreserve,
    .ping = docker_ping,
    .check_image = docker_check_image,
};
