/* Sandbox sessions: create (host directories, mounts and the hardening policy, then readiness)
 * and the restart of a session's stopped container. The rest of a session's life is session.c. */
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

moat_code moat_runtime_check_image(const moat_runtime *rt, const char *image, moat_status *st)
{
    if (strcmp(image, rt->cfg.image) == 0)
        return MOAT_CODE_OK;
    for (size_t i = 0; i < rt->cfg.allowed_image_count; i++)
        if (strcmp(image, rt->cfg.allowed_images[i]) == 0)
            return MOAT_CODE_OK;
    moat_status_set(st, MOAT_CODE_INVALID_ARGUMENT, "image_not_allowed",
                    "image '%.200s' is not in the allow-list", image);
    moat_status_add_detail(st, "field", "image");
    return st->code;
}

static moat_code pick_limit(moat_status *st, const char *field, int64_t asked, int64_t dflt,
                            int64_t max, int64_t *out)
{
    if (asked < 0 || asked > max) {
        moat_status_set(st, MOAT_CODE_INVALID_ARGUMENT, "invalid_argument",
                        "%s %lld is outside 1..%lld", field, (long long)asked, (long long)max);
        moat_status_add_detail(st, "field", field);
        return st->code;
    }
    *out = asked ? asked : dflt;
    return MOAT_CODE_OK;
}

/* The chat workspace belongs to the user sandbox commands run as (uid:gid on the host, where
 * the engine's id mapping put it); files already inside keep their owners. */
static int give_workspace(const char *chat_dir, uid_t uid, gid_t gid)
{
    struct stat sb;
    if (lstat(chat_dir, &sb) != 0)
        return -1;
    if (!S_ISDIR(sb.st_mode)) {
        errno = ENOTDIR;
        return -1;
    }
    if ((sb.st_uid != uid || sb.st_gid != gid) && lchown(chat_dir, uid, gid) != 0)
        return -1;
    return (sb.st_mode & 07777) == 0700 ? 0 : chmod(chat_dir, 0700);
}

int moat__new_execd_token(char out[MOAT_EXECD_TOKEN_MAX])
{
    unsigned char bytes[32];
    size_t got = 0;
    while (got < sizeof(bytes)) {
        ssize_t n = getrandom(bytes + got, sizeof(bytes) - got, 0);
        if (n < 0 && errno != EINTR)
            return -1;
        if (n > 0)
            got += (size_t)n;
    }
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < sizeof(bytes); i++) {
        out[2 * i] = hex[bytes[i] >> 4];
        out[2 * i + 1] = hex[bytes[i] & 15];
    }
    out[2 * sizeof(bytes)] = '\0';
    return 0;
}

/* propagation NULL: Docker's default (rprivate). */
static bool add_bind_mount(cJSON *mounts, const char *source, const char *target, bool read_only,
                           const char *propagation)
{
    cJSON *m = cJSON_CreateObject();
    if (!moat__json_append(mounts, m))
        return false;
    cJSON *options = propagation != NULL ? cJSON_AddObjectToObject(m, "BindOptions") : NULL;
    return cJSON_AddStringToObject(m, "Target", target) &&
           cJSON_AddStringToObject(m, "Source", source) &&
           cJSON_AddStringToObject(m, "Type", "bind") &&
           cJSON_AddBoolToObject(m, "ReadOnly", read_only) &&
           (propagation == NULL || cJSON_AddStringToObject(options, "Propagation", propagation));
}

static bool add_string_array(cJSON *obj, const char *key, const char *const *items, size_t n)
{
    cJSON *arr = cJSON_AddArrayToObject(obj, key);
    bool ok = arr != NULL;
    for (size_t i = 0; ok && i < n; i++)
        ok = moat__json_append(arr, cJSON_CreateString(items[i]));
    return ok;
}

/* The container spec, or NULL when out of memory. Every host path comes from the config or
 * from canonical UUIDs, never from a request. */
static cJSON *container_spec(moat_runtime *rt, const moat__sandbox_request *req,
                             const char *paths[5])
{
    char expires[MOAT_TIME_ISO_MAX];
    moat_time_format_iso8601(req->expires_at_ms, expires);
    char run_as[32], idle[16], token_env[96], home_env[MOAT_RUNTIME_PATH_MAX + 8];
    snprintf(run_as, sizeof(run_as), "%u:%u", rt->cfg.sandbox_uid, rt->cfg.sandbox_gid);
    snprintf(idle, sizeof(idle), "%u",
             rt->cfg.terminal_idle_seconds > 0 ? rt->cfg.terminal_idle_seconds : 1800u);
    /* In the environment, not on the command line: /proc/1/cmdline is readable by every
     * process in the sandbox, /proc/1/environ only by execd's own user. */
    snprintf(token_env, sizeof(token_env), "EXECD_ACCESS_TOKEN=%s", req->execd_token);
    snprintf(home_env, sizeof(home_env), "HOME=%s", rt->cfg.chat_mount_path);
    const char *const entrypoint[] = {
        "/opt/moat/run", "--listen", "unix:/run/moat/execd.sock", "--pty-idle-timeout", idle,
        "--run-as",      run_as};
    const char *const env[] = {token_env, home_env};
    static const char *const cap_drop[] = {"ALL"};
    /* What execd, root in the container, needs to start commands as the sandbox user, signal
     * them and hand it its own directory; commands, started under that user, hold no
     * capability (no-new-privileges keeps it so). */
    static const char *const cap_add[] = {"SETUID", "SETGID", "KILL", "CHOWN"};
    static const char *const security[] = {"no-new-privileges"};
    bool unprivileged = !rt->cfg.sandbox_user_root;
    /* Every cJSON_Add* takes a NULL parent and then fails, so one check at the end covers
     * every allocation; whatever was attached goes with spec. */
    cJSON *spec = cJSON_CreateObject();
    bool ok = cJSON_AddStringToObject(spec, "Image", req->image) &&
              add_string_array(spec, "Entrypoint", entrypoint, unprivileged ? 7 : 5) &&
              add_string_array(spec, "Env", env, unprivileged ? 2 : 1);
    cJSON *labels = ok ? cJSON_AddObjectToObject(spec, "Labels") : NULL;
    cJSON *host = ok ? cJSON_AddObjectToObject(spec, "HostConfig") : NULL;
    ok = cJSON_AddTrueToObject(spec, "NetworkDisabled") &&
         cJSON_AddFalseToObject(spec, "AttachStdout") &&
         cJSON_AddFalseToObject(spec, "AttachStderr") &&
         cJSON_AddStringToObject(labels, LABEL_SESSION, req->session_id) &&
         cJSON_AddStringToObject(labels, LABEL_CHAT, req->chat_label) &&
         cJSON_AddStringToObject(labels, LABEL_EXPIRES, expires) &&
         cJSON_AddStringToObject(labels, LABEL_MANAGED, "true") &&
         cJSON_AddStringToObject(labels, LABEL_VERSION, MOAT_VERSION) &&
         (rt->cfg.instance == NULL ||
          cJSON_AddStringToObject(labels, "moat.instance", rt->cfg.instance)) &&
         (!req->force_new || cJSON_AddStringToObject(labels, LABEL_FORCE_NEW, "true")) &&
         (!req->pool_slot || cJSON_AddStringToObject(labels, LABEL_POOL, "true")) &&
         cJSON_AddStringToObject(host, "NetworkMode", "none");
    cJSON *mounts = ok ? cJSON_AddArrayToObject(host, "Mounts") : NULL;
    /* A pool slot's workspace is mounted into its directory after the sandbox started: only a
     * slave of that directory's mount sees it. */
    ok = mounts != NULL &&
         add_bind_mount(mounts, paths[0], rt->cfg.chat_mount_path, false,
                        req->pool_slot ? "rslave" : NULL) &&
         add_bind_mount(mounts, paths[1], rt->cfg.dependencies_mount_path, true, NULL) &&
         add_bind_mount(mounts, paths[2], rt->cfg.lambda_tools_mount_path, true, NULL) &&
         add_bind_mount(mounts, paths[3], "/opt/moat", true, NULL) &&
         add_bind_mount(mounts, paths[4], "/run/moat", false, NULL) &&
         add_string_array(host, "CapDrop", cap_drop, 1) &&
         (!unprivileged || add_string_array(host, "CapAdd", cap_add, 4)) &&
         add_string_array(host, "SecurityOpt", security, 1) &&
         moat__json_add_int(host, "PidsLimit", req->pids) &&
         moat__json_add_int(host, "Memory", req->memory) &&
         moat__json_add_int(host, "MemorySwap", req->memory) &&
         moat__json_add_int(host, "NanoCpus", req->nano_cpus) &&
         cJSON_AddBoolToObject(host, "ReadonlyRootfs", rt->cfg.read_only_rootfs) &&
         (rt->cfg.runtime == NULL || cJSON_AddStringToObject(host, "Runtime", rt->cfg.runtime));
    if (ok && rt->cfg.read_only_rootfs) {
        /* What a shell and its tools write outside the workspace; each bounded in bytes and
         * inodes, and charged to the container's memory limit. */
        static const struct {
            const char *path;
            const char *mode;
        } writable[] = {{"/tmp", "1777"}, {"/var/tmp", "1777"}, {"/root", "0700"}};
        cJSON *tmpfs = cJSON_AddObjectToObject(host, "Tmpfs");
        ok = tmpfs != NULL;
        for (size_t i = 0; ok && i < sizeof(writable) / sizeof(writable[0]); i++) {
            char opts[128];
            snprintf(opts, sizeof(opts), "rw,nosuid,nodev,size=%lld,nr_inodes=16384,mode=%s",
                     (long long)rt->cfg.tmpfs_size_bytes, writable[i].mode);
            ok = cJSON_AddStringToObject(tmpfs, writable[i].path, opts) != NULL;
        }
    }
    if (!ok) {
        cJSON_Delete(spec);
        return NULL;
    }
    return spec;
}

/* A create that failed: lets go of the chat's workspace, and unmounts it when no session uses it.
 */
static void release_workspace(moat_runtime *rt, moat__workspace *ws, const char *chat_id)
{
    moat__workspace_release(ws);
    moat__workspace_detach_idle(rt, chat_id);
}

/* Makes a session's host directories ready, owned as the engine maps the sandbox's root (execd)
 * and its user (map, from moat__userns_map): the chat's workspace (locked in *ws until
 * moat__workspace_release) and the session's socket dir. On failure nothing is left attached
 * or locked, and st says why. */
static moat_code workspace_prepare(moat_runtime *rt, const char *chat_id,
                                   const char *prepared_slot_id, const moat__idmap *map,
                                   moat__workspace *ws, moat_status *st)
{
    uint32_t user_uid = map->uid_base + (rt->cfg.sandbox_user_root ? 0 : rt->cfg.sandbox_uid);
    uint32_t user_gid = map->gid_base + (rt->cfg.sandbox_user_root ? 0 : rt->cfg.sandbox_gid);
    moat_code code = prepared_slot_id == NULL ? MOAT_CODE_NOT_FOUND
                                              : moat__prepared_claim(rt, prepared_slot_id, chat_id,
                                                                     user_uid, user_gid, ws, st);
    if (code == MOAT_CODE_NOT_FOUND)
        code = moat__workspace_attach(&rt->ws, chat_id, user_uid, user_gid, ws, st);
    if (code != MOAT_CODE_OK)
        return st->code;
    if (give_workspace(ws->dir, user_uid, user_gid) != 0) {
        moat_status_set(st, MOAT_CODE_INTERNAL, "workspace_unavailable",
                        "cannot give the workspace to the sandbox user: %s", strerror(errno));
        moat_status_add_detail(st, "why", "workspace_owner");
        release_workspace(rt, ws, chat_id);
        return st->code;
    }
    return MOAT_CODE_OK;
}

moat_code moat__chat_workspace_prepare(moat_runtime *rt, const char *chat_id,
                                       const char *prepared_slot_id, moat__workspace *ws,
                                       moat_status *st)
{
    moat__idmap map;
    if (moat__userns_map(rt, &map, st) != MOAT_CODE_OK) {
        if (strcmp(st->reason, "userns_unmapped") == 0)
            moat_status_add_detail(st, "why", "userns_unmapped");
        return st->code;
    }
    return workspace_prepare(rt, chat_id, prepared_slot_id, &map, ws, st);
}

static moat_code prepare_host_dirs(moat_runtime *rt, const char *chat_id, const char *session_dir,
                                   const moat__idmap *map, moat__workspace *ws, moat_status *st)
{
    if (workspace_prepare(rt, chat_id, NULL, map, ws, st) != MOAT_CODE_OK)
        return st->code;
    if (moat__rundir_attach(&rt->ws, session_dir, map->uid_base, map->gid_base, st) !=
        MOAT_CODE_OK) {
        release_workspace(rt, ws, chat_id);
        return st->code;
    }
    return MOAT_CODE_OK;
}

static void remove_quietly(moat_runtime *rt, const char *container_id)
{
    char path[160];
    moat_status ignored;
    snprintf(path, sizeof(path), "/containers/%s?force=1&v=1", container_id);
    moat_runtime_docker_call(rt, "remove", "DELETE", path, NULL, NULL, &ignored);
}

static void start_failed(moat_status *st, const char *chat_id)
{
    /* Keep Docker's code, message and status; name the outcome as the seed does. */
    snprintf(st->reason, sizeof(st->reason), "sandbox_start_failed");
    moat_status_add_detail(st, "chat_id", chat_id);
}

/* An inotify descriptor that wakes on anything made in the socket's directory, or -1 (then
 * wait_ready only polls). */
static int watch_socket_dir(const char *socket_path)
{
    char dir[MOAT_RUNTIME_PATH_MAX];
    snprintf(dir, sizeof(dir), "%s", socket_path);
    char *slash = strrchr(dir, '/');
    if (slash == NULL)
        return -1;
    *slash = '\0';
    int fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (fd >= 0 && inotify_add_watch(fd, dir, IN_CREATE | IN_MOVED_TO) < 0) {
        close(fd);
        fd = -1;
    }
    return fd;
}

/* Polls execd's /ping with backoff, woken early when its socket appears (the backoff grows to
 * 50 ms, which would otherwise be what a sandbox waits past its execd's start, on average half
 * of it); between polls checks (now and then) that the container still runs, so a crashed
 * entrypoint fails fast instead of waiting out the timeout. */
static moat_code wait_ready(moat_runtime *rt, const char *container_id, const char *socket_path,
                            const char *execd_token, moat_status *st)
{
    uint64_t start = moat_time_mono_ns();
    uint64_t deadline = start + (uint64_t)rt->cfg.readiness_timeout_ms * 1000000u;
    long sleep_us = 2000;
    uint64_t next_inspect = start + 200000000u;
    struct pollfd created = {watch_socket_dir(socket_path), POLLIN, 0};
    for (;;) {
        uint64_t now = moat_time_mono_ns();
        long left_ms = now < deadline ? (long)((deadline - now) / 1000000u) + 1 : 1;
        if (access(socket_path, F_OK) == 0 &&
            moat__execd_ping(socket_path, execd_token, left_ms < 1000 ? left_ms : 1000)) {
            if (created.fd >= 0)
                close(created.fd);
            return MOAT_CODE_OK;
        }
        now = moat_time_mono_ns();
        if (now >= deadline)
            break;
        if (now >= next_inspect) {
            next_inspect = now + 250000000u;
            char path[160];
            moat_docker_response resp;
            moat_status inspect_st;
            snprintf(path, sizeof(path), "/containers/%s/json", container_id);
            if (moat_runtime_docker_call(rt, "inspect", "GET", path, NULL, &resp, &inspect_st) ==
                MOAT_CODE_OK) {
                const cJSON *state = moat__json_get(resp.json, "State");
                if (cJSON_IsObject(state) && !cJSON_IsTrue(moat__json_get(state, "Running"))) {
                    int64_t exit_code = 0; /* stays 0 when ExitCode is missing or not integral */
                    moat_json_int(state, "ExitCode", &exit_code);
                    moat_runtime_docker_response_free(&resp);
                    if (created.fd >= 0)
                        close(created.fd);
                    moat_status_set(st, MOAT_CODE_UNAVAILABLE, "sandbox_start_failed",
                                    "sandbox container %.12s exited (code %lld) before execd "
                                    "answered /ping",
                                    container_id, (long long)exit_code);
                    return st->code;
                }
            }
            moat_runtime_docker_response_free(&resp);
        }
        if (poll(&created, 1, (int)(sleep_us / 1000)) > 0) {
            char events[4096];
            while (read(created.fd, events, sizeof(events)) > 0) {
            }
            /* The socket exists; execd listens on it a moment later. */
            sleep_us = 1000;
        } else if (sleep_us < 50000) {
            sleep_us *= 2;
        }
    }
    if (created.fd >= 0)
        close(created.fd);
    moat_status_set(st, MOAT_CODE_DEADLINE_EXCEEDED, "sandbox_start_failed",
                    "execd did not answer /ping on %s within %ld ms", socket_path,
                    rt->cfg.readiness_timeout_ms);
    return st->code;
}

static moat_code create_session(moat_runtime *rt, const char *session_id_in, const char *chat_id_in,
                                int64_t created_at_ms, int64_t expires_at_ms,
                                const moat_session_options *opts, moat_session *out,
                                moat_status *st)
{
    uint64_t t0 = moat_time_mono_ns();
    moat_status_clear(st);
    char session_id[MOAT_UUID_STR_LEN], chat_id[MOAT_UUID_STR_LEN];
    if (session_id_in == NULL || moat_uuid_canonicalize(session_id_in, session_id) != MOAT_OK)
        return moat__bad_uuid(st, "session_id", session_id_in);
    if (chat_id_in == NULL || moat_uuid_canonicalize(chat_id_in, chat_id) != MOAT_OK)
        return moat__bad_uuid(st, "chat_id", chat_id_in);
    void *span = moat__span_start(rt, "runtime.create", session_id);
    if (expires_at_ms <= created_at_ms) {
        moat_status_set(st, MOAT_CODE_INVALID_ARGUMENT, "invalid_argument",
                        "expires_at must be after created_at");
        moat_status_add_detail(st, "field", "expires_at");
        return moat__span_end(rt, span, st);
    }
    moat_session_options none = {0};
    if (opts == NULL)
        opts = &none;
    const char *image = opts->image && opts->image[0] ? opts->image : rt->cfg.image;
    if (moat_runtime_check_image(rt, image, st) != MOAT_CODE_OK)
        return moat__span_end(rt, span, st);
    int64_t memory = 0, cpus = 0, pids = 0;
    if (pick_limit(st, "memory_bytes", opts->memory_bytes, rt->cfg.default_memory_bytes,
                   rt->cfg.max_memory_bytes, &memory) ||
        pick_limit(st, "nano_cpus", opts->nano_cpus, rt->cfg.default_nano_cpus,
                   rt->cfg.max_nano_cpus, &cpus) ||
        pick_limit(st, "pids_limit", opts->pids_limit, rt->cfg.default_pids_limit,
                   rt->cfg.max_pids_limit, &pids))
        return moat__span_end(rt, span, st);
    /* Below this gVisor's own threads leave execd too few to run a command: the sandbox would
     * die at start or at its first command, with nothing but an exit code to say why. */
    if (moat_runtime_is_gvisor(rt->cfg.runtime) && pids < MOAT_GVISOR_PIDS_LIMIT_MIN) {
        moat_status_set(st, MOAT_CODE_INVALID_ARGUMENT, "invalid_argument",
                        "pids_limit %lld is below %d, the least a sandbox under gVisor (runtime "
                        "'%s') runs commands with",
                        (long long)pids, MOAT_GVISOR_PIDS_LIMIT_MIN, rt->cfg.runtime);
        moat_status_add_detail(st, "field", "pids_limit");
        return moat__span_end(rt, span, st);
    }

    /* A session id is used once: never disturb the socket dir of a live one. */
    moat__row existing;
    if (moat__store_get(rt->store, session_id, &existing) == MOAT_OK &&
        existing.state == MOAT_SESSION_RUNNING) {
        moat_status_set(st, MOAT_CODE_ALREADY_EXISTS, "sandbox_start_failed",
                        "session %s already has a sandbox", session_id);
        moat_status_add_detail(st, "chat_id", chat_id);
        moat_status_add_detail(st, "session_id", session_id);
        return moat__span_end(rt, span, st);
    }

    /* Host paths: chat workspace (workspace.c: an image mounted there, or a plain directory),
     * the two read-only trees, execd's bundle, and the per-session socket dir; all resolved to
     * absolute real paths. The workspace stays locked until the container holds it. */
    char session_dir[MOAT_RUNTIME_PATH_MAX];
    snprintf(session_dir, sizeof(session_dir), "%s/sessions/%s", rt->cfg.state_dir, session_id);
    /* Host owners: the sandbox's root (execd) and the sandbox user, as the engine maps them. */
    moat__idmap map;
    if (moat__userns_map(rt, &map, st) != MOAT_CODE_OK) {
        if (strcmp(st->reason, "userns_unmapped") == 0)
            moat_status_add_detail(st, "why", "userns_unmapped");
        start_failed(st, chat_id);
        return moat__span_end(rt, span, st);
    }
    moat__workspace ws;
    if (prepare_host_dirs(rt, chat_id, session_dir, &map, &ws, st) != MOAT_CODE_OK) {
        moat_status_add_detail(st, "chat_id", chat_id);
        return moat__span_end(rt, span, st);
    }
    char execd_token[MOAT_EXECD_TOKEN_MAX];
    if (moat__new_execd_token(execd_token) != 0) {
        moat_status_set(st, MOAT_CODE_INTERNAL, "sandbox_start_failed",
                        "no random bytes for the execd token: %s", strerror(errno));
        moat_status_add_detail(st, "chat_id", chat_id);
        moat__session_dir_remove(rt, session_id);
        release_workspace(rt, &ws, chat_id);
        return moat__span_end(rt, span, st);
    }
    moat__sandbox_request req = {
        .session_id = session_id,
        .chat_label = chat_id,
        .workspace_dir = ws.dir,
        .image = image,
        .expires_at_ms = expires_at_ms,
        .memory = memory,
        .nano_cpus = cpus,
        .pids = pids,
        .force_new = opts->force_new,
        .execd_token = execd_token,
    };
    char container_id[MOAT_CONTAINER_ID_MAX];
    if (moat__sandbox_start(rt, &req, &ws, container_id, st) != MOAT_CODE_OK)
        goto fail;

    moat__row row;
    memset(&row, 0, sizeof(row));
    memcpy(row.session_id, session_id, sizeof(row.session_id));
    memcpy(row.chat_id, chat_id, sizeof(row.chat_id));
    memcpy(row.container_id, container_id, sizeof(row.container_id));
    snprintf(row.image, sizeof(row.image), "%s", image);
    row.created_at_ms = created_at_ms;
    row.label_expires_at_ms = expires_at_ms;
    row.expires_at_ms = expires_at_ms;
    row.state = MOAT_SESSION_RUNNING;
    memcpy(row.execd_token, execd_token, sizeof(row.execd_token));
    if (moat__store_put(rt->store, &row) != MOAT_OK) {
        moat_status_set(st, MOAT_CODE_INTERNAL, "sandbox_start_failed",
                        "session store write failed");
        remove_quietly(rt, container_id);
        goto fail;
    }
    moat__session_from_row(rt, &row, out);
    out->force_new = opts->force_new;
    moat__cache_invalidate(rt);
    moat__metric_session(rt, "created", session_id, MOAT_CODE_OK, t0);
    return moat__span_end(rt, span, st);

fail:
    start_failed(st, chat_id);
    /* On a name conflict the container (and socket dir) belong to someone else's create. */
    if (st->code != MOAT_CODE_ALREADY_EXISTS)
        moat__session_dir_remove(rt, session_id);
    release_workspace(rt, &ws, chat_id);
    moat_log(MOAT_LOG_WARN, "sandbox_start_failed", "session_id=%s chat_id=%s code=%s msg=\"%s\"",
             session_id, chat_id, moat_code_name(st->code), st->message);
    moat__metric_session(rt, "create_failed", session_id, st->code, t0);
    return moat__span_end(rt, span, st);
}

moat_code moat__sandbox_start(moat_runtime *rt, const moat__sandbox_request *req,
                              moat__workspace *ws, char container_id[MOAT_CONTAINER_ID_MAX],
                              moat_status *st)
{
    uint64_t t0 = moat_time_mono_ns();
    container_id[0] = '\0';
    char session_dir[MOAT_RUNTIME_PATH_MAX];
    snprintf(session_dir, sizeof(session_dir), "%s/sessions/%s", rt->cfg.state_dir,
             req->session_id);
    char resolved[5][PATH_MAX];
    const char *sources[5] = {req->workspace_dir, rt->cfg.dependencies_host_path,
                              rt->cfg.lambda_tools_host_path, rt->cfg.execd_bundle_dir,
                              session_dir};
    const char *paths[5];
    for (int i = 0; i < 5; i++) {
        if (realpath(sources[i], resolved[i]) == NULL) {
            moat_status_set(st, MOAT_CODE_FAILED_PRECONDITION, "sandbox_start_failed",
                            "mount source '%.200s': %s", sources[i], strerror(errno));
            return st->code;
        }
        paths[i] = resolved[i];
    }
    char socket_path[MOAT_RUNTIME_PATH_MAX];
    moat__session_socket(rt, req->session_id, socket_path, sizeof(socket_path));
    unlink(socket_path); /* a stale socket would answer nothing and look like a live one */

    cJSON *spec = container_spec(rt, req, paths);
    char *body = spec ? cJSON_PrintUnformatted(spec) : NULL;
    cJSON_Delete(spec);
    if (body == NULL) {
        moat_status_set(st, MOAT_CODE_RESOURCE_EXHAUSTED, "out_of_memory", "out of memory");
        return st->code;
    }
    char path[256];
    snprintf(path, sizeof(path), "/containers/create?name=%s%s", rt->cfg.container_name_prefix,
             req->session_id);
    moat_docker_response resp;
    moat_code code = moat_runtime_docker_call(rt, "create", "POST", path, body, &resp, st);
    cJSON_free(body);
    if (code == MOAT_CODE_OK) {
        const char *id = moat__json_str(resp.json, "Id");
        if (id != NULL && strlen(id) < MOAT_CONTAINER_ID_MAX)
            snprintf(container_id, MOAT_CONTAINER_ID_MAX, "%s", id);
    } else if (resp.http_status == 409) {
        st->code = MOAT_CODE_ALREADY_EXISTS;
    }
    moat_runtime_docker_response_free(&resp);
    if (code == MOAT_CODE_OK && container_id[0] == '\0')
        moat_status_set(st, MOAT_CODE_INTERNAL, "sandbox_start_failed",
                        "docker created no container id for session %s", req->session_id);
    if (st->code != MOAT_CODE_OK)
        return st->code;
    uint64_t t_created = moat_time_mono_ns();
    /* A refill's start, the costliest step, waits for a user's create that began meanwhile. */
    if (req->pool_slot)
        moat__pool_give_way(rt);
    uint64_t t_start = moat_time_mono_ns();
    snprintf(path, sizeof(path), "/containers/%s/start", container_id);
    if (moat_runtime_docker_call(rt, "start", "POST", path, NULL, NULL, st) == MOAT_CODE_OK) {
        uint64_t t_started = moat_time_mono_ns();
        if (ws != NULL)
            moat__workspace_release(ws); /* the container's own mount of it holds it now */
        if (wait_ready(rt, container_id, socket_path, req->execd_token, st) == MOAT_CODE_OK) {
            /* Where a sandbox's start goes: the engine's create and start, then execd. */
            moat_log(MOAT_LOG_DEBUG, "sandbox_started",
                     "session_id=%s pool_slot=%s create_us=%llu start_us=%llu ready_us=%llu",
                     req->session_id, req->pool_slot ? "true" : "false",
                     (unsigned long long)(t_created - t0) / 1000,
                     (unsigned long long)(t_started - t_start) / 1000,
                     (unsigned long long)(moat_time_mono_ns() - t_started) / 1000);
            return MOAT_CODE_OK;
        }
    }
    remove_quietly(rt, container_id);
    return st->code;
}

moat_code moat__session_restart_begin(moat_runtime *rt, const moat__listed *c, moat_status *st)
{
    moat_status_clear(st);
    /* A host reboot (or an unmount while the engine was away) takes the workspace's loop mount
     * and the session's tmpfs with it; Docker binds whatever the paths hold when it starts the
     * container, so both are made ready again first, as a create does. */
    char session_dir[MOAT_RUNTIME_PATH_MAX];
    snprintf(session_dir, sizeof(session_dir), "%s/sessions/%s", rt->cfg.state_dir, c->session_id);
    moat__idmap map;
    if (moat__userns_map(rt, &map, st) != MOAT_CODE_OK) {
        if (strcmp(st->reason, "userns_unmapped") == 0)
            moat_status_add_detail(st, "why", "userns_unmapped");
        return st->code;
    }
    moat__workspace ws;
    if (prepare_host_dirs(rt, c->chat_id, session_dir, &map, &ws, st) != MOAT_CODE_OK)
        return st->code;
    /* A claimed pool slot sees its workspace through its slot directory's mount. */
    if (c->pool && moat__pool_slot_bind(rt, c->session_id, ws.dir, st) != MOAT_CODE_OK) {
        release_workspace(rt, &ws, c->chat_id);
        return st->code;
    }
    char socket_path[MOAT_RUNTIME_PATH_MAX];
    moat__session_socket(rt, c->session_id, socket_path, sizeof(socket_path));
    unlink(socket_path); /* the old execd's socket answers nothing */
    char path[160];
    snprintf(path, sizeof(path), "/containers/%s/start", c->container_id);
    if (moat_runtime_docker_call(rt, "start", "POST", path, NULL, NULL, st) != MOAT_CODE_OK)
        moat_status_add_detail(st, "why", "start_failed");
    moat__workspace_release(&ws); /* a started container holds its own mount of it */
    return st->code;
}

moat_code moat__session_restart_finish(moat_runtime *rt, const moat__listed *c,
                                       const moat__row *row, moat_status *st)
{
    moat_status_clear(st);
    char socket_path[MOAT_RUNTIME_PATH_MAX];
    moat__session_socket(rt, c->session_id, socket_path, sizeof(socket_path));
    /* The container keeps its environment, so execd comes back with the session's token. */
    if (wait_ready(rt, c->container_id, socket_path, row->execd_token, st) != MOAT_CODE_OK)
        moat_status_add_detail(
            st, "why", st->code == MOAT_CODE_DEADLINE_EXCEEDED ? "execd_not_ready" : "exited");
    return st->code;
}

moat_code moat_runtime_create(moat_runtime *rt, const char *session_id_in, const char *chat_id_in,
                              int64_t created_at_ms, int64_t expires_at_ms,
                              const moat_session_options *opts, moat_session *out, moat_status *st)
{
    char session_id[MOAT_UUID_STR_LEN];
    moat_status_clear(st);
    if (!moat__mark_busy(rt, session_id_in, session_id, st))
        return st->code;
    moat__pool_create_begin(rt);
    moat_code code =
        create_session(rt, session_id_in, chat_id_in, created_at_ms, expires_at_ms, opts, out, st);
    moat__pool_create_end(rt);
    if (session_id[0] != '\0')
        moat__busy_leave(rt, session_id);
    return code;
}
