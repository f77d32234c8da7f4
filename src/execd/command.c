/* /command and /code: running commands and streaming their output; their status, logs and
 * interrupt; and the router of /command, /code and /session, whose bash sessions are
 * session.c's. */
#include "command_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <inttypes.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

void xd_format_time(int64_t sec, long nsec, char out[64])
{
    time_t t = (time_t)sec;
    struct tm tm;
    localtime_r(&t, &tm);
    size_t n = strftime(out, 64, "%Y-%m-%dT%H:%M:%S", &tm);
    if (nsec > 0) {
        char frac[24];
        snprintf(frac, sizeof(frac), ".%09ld", nsec);
        size_t fl = strlen(frac);
        while (fl > 1 && frac[fl - 1] == '0')
            frac[--fl] = '\0';
        n += (size_t)snprintf(out + n, 64 - n, "%s", frac);
    }
    long off = tm.tm_gmtoff;
    if (off == 0)
        snprintf(out + n, 64 - n, "Z");
    else
        snprintf(out + n, 64 - n, "%c%02ld:%02ld", off < 0 ? '-' : '+', labs(off) / 3600,
                 (labs(off) % 3600) / 60);
}

static void format_ms(int64_t ms, char out[64])
{
    xd_format_time(ms / 1000, (long)(ms % 1000) * 1000000L, out);
}

bool xd_want_binary(struct MHD_Connection *conn)
{
    const char *v = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Moat-Output");
    return v != NULL && strcasecmp(v, "binary") == 0;
}

cJSON *xd_parse_body(struct MHD_Connection *conn, xd_req *r, bool allow_empty, enum MHD_Result *ret)
{
    if (r->body_too_big) {
        *ret = xd_respond_error(conn, 413, "INVALID_REQUEST_BODY", "request body too large");
        return NULL;
    }
    if (r->body.len == 0 && allow_empty) {
        cJSON *empty = cJSON_CreateObject();
        if (empty == NULL)
            *ret = xd_respond_error(conn, 500, "RUNTIME_ERROR", "out of memory");
        return empty;
    }
    const char *why = "empty body";
    cJSON *root = r->body.len == 0 ? NULL
                                   : moat__execd_json_parse((const char *)r->body.data, r->body.len,
                                                            false, &why);
    if (root == NULL) {
        *ret = xd_respond_error(conn, 400, "INVALID_REQUEST_BODY", "invalid JSON: %s", why);
        return NULL;
    }
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        *ret = xd_respond_error(conn, 400, "INVALID_REQUEST_BODY",
                                "request body must be a JSON object");
        return NULL;
    }
    return root;
}

bool xd_field(struct MHD_Connection *conn, const cJSON *obj, const char *key, xd_field_type type,
              const cJSON **out, enum MHD_Result *ret)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    int64_t i;
    *out = NULL;
    if (v == NULL || cJSON_IsNull(v))
        return true;
    bool ok = type == F_OBJECT    ? cJSON_IsObject(v)
              : type == F_STRING  ? cJSON_IsString(v)
              : type == F_INTEGER ? moat_json_int_value(v, &i)
                                  : cJSON_IsBool(v);
    if (!ok) {
        static const char *const names[] = {"object", "string", "integer", "boolean"};
        *ret = xd_respond_error(conn, 400, "INVALID_REQUEST_BODY", "field %s must be a JSON %s",
                                key, names[type]);
        return false;
    }
    *out = v;
    return true;
}

/* The value of an integer field that xd_field() accepted (0 when absent). */
int64_t xd_int_of(const cJSON *v)
{
    int64_t i = 0;
    if (v != NULL)
        moat_json_int_value(v, &i);
    return i;
}

const char *xd_nonempty(const cJSON *v)
{
    return v != NULL && v->valuestring[0] != '\0' ? v->valuestring : NULL;
}

/* Expands and checks a cwd; answers 400 when it is not an existing directory. */
char *xd_check_cwd(struct MHD_Connection *conn, const char *cwd, enum MHD_Result *ret)
{
    char err[256];
    char *path = xd_expand(cwd, err, sizeof(err));
    if (path == NULL) {
        *ret = xd_respond_error(conn, 400, "INVALID_REQUEST_BODY", "invalid cwd: %s", err);
        return NULL;
    }
    struct stat sb;
    if (stat(path, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
        *ret = xd_respond_error(conn, 400, "INVALID_REQUEST_BODY",
                                "cwd %s does not exist or is not a directory", path);
        free(path);
        return NULL;
    }
    return path;
}

void xd_emit_init(xd_stream *st, const char *id)
{
    moat_execd_event ev = {
        .type = "init", .text = id, .text_len = strlen(id), .timestamp = moat_time_now_ms()};
    xd_stream_emit(st, &ev);
}

void xd_emit_error(xd_stream *st, const char *evalue, const char *traceback, const char *cause)
{
    moat_execd_event ev = {.type = "error",
                           .error_ename = "CommandExecError",
                           .error_evalue = evalue,
                           .error_traceback = traceback,
                           .error_cause = cause,
                           .timestamp = moat_time_now_ms()};
    xd_stream_emit(st, &ev);
}

/* The final event of a run: execution_complete on exit 0, else error with the code. */
void xd_emit_outcome(xd_stream *st, xd_cmd *c, bool session)
{
    pthread_mutex_lock(&xd.lock);
    int code = c->exit_code, sig = c->term_sig;
    bool failed = c->start_failed, timed_out = c->timed_out;
    char error[256];
    snprintf(error, sizeof(error), "%s", c->error);
    uint64_t elapsed_ms = (moat_time_mono_ns() - c->start_ns) / 1000000ull;
    pthread_mutex_unlock(&xd.lock);
    if (failed) {
        xd_emit_error(st, error, error, NULL);
    } else if (code == 0 && sig == 0) {
        moat_execd_event ev = {.type = "execution_complete",
                               .execution_time = (int64_t)elapsed_ms,
                               .timestamp = moat_time_now_ms()};
        xd_stream_emit(st, &ev);
    } else {
        char evalue[32], tb[300];
        snprintf(evalue, sizeof(evalue), "%d", sig ? -1 : code);
        if (session && sig == 0)
            snprintf(tb, sizeof(tb), "command exited with code %d", code);
        else
            snprintf(tb, sizeof(tb), "%s", error);
        xd_emit_error(st, evalue, tb, sig != 0 && timed_out ? "timeout" : NULL);
    }
}

static void command_finish(xd_stream *st, xd_cmd *c, void *ud)
{
    (void)ud;
    if (c != NULL)
        xd_emit_outcome(st, c, false);
}

/* uid/gid → the ids and groups the child takes. Answers 400 on bad input. */
static bool resolve_ids(struct MHD_Connection *conn, const cJSON *juid, const cJSON *jgid,
                        xd_spawn *sp, enum MHD_Result *ret)
{
    if (jgid != NULL && juid == NULL) {
        *ret = xd_respond_error(conn, 400, "INVALID_REQUEST_BODY",
                                "uid is required when gid is provided");
        return false;
    }
    if (juid == NULL)
        return true;
    int64_t uid = xd_int_of(juid);
    int64_t gid = jgid ? xd_int_of(jgid) : -1;
    if (uid < 0 || uid > UINT32_MAX || (jgid && (gid < 0 || gid > UINT32_MAX))) {
        *ret = xd_respond_error(conn, 400, "INVALID_REQUEST_BODY", "uid/gid out of range");
        return false;
    }
    sp->set_ids = true;
    sp->uid = (uid_t)uid;
    sp->gid = (gid_t)uid;
    struct passwd pw, *pwp = NULL;
    char buf[4096];
    if (getpwuid_r((uid_t)uid, &pw, buf, sizeof(buf), &pwp) == 0 && pwp != NULL) {
        sp->gid = pw.pw_gid;
        int ng = 64;
        sp->groups = calloc((size_t)ng, sizeof(gid_t));
        if (sp->groups != NULL && getgrouplist(pw.pw_name, pw.pw_gid, sp->groups, &ng) >= 0)
            sp->ngroups = ng;
    }
    if (jgid != NULL)
        sp->gid = (gid_t)gid;
    if (sp->ngroups == 0) {
        free(sp->groups);
        sp->groups = calloc(1, sizeof(gid_t));
        if (sp->groups != NULL) {
            sp->groups[0] = sp->gid;
            sp->ngroups = 1;
        }
    }
    return true;
}

bool xd_make_pipes(int out[2], int err[2])
{
    if (pipe2(out, O_CLOEXEC) != 0)
        return false;
    if (pipe2(err, O_CLOEXEC) != 0) {
        close(out[0]);
        close(out[1]);
        return false;
    }
    fcntl(out[0], F_SETFL, O_NONBLOCK);
    fcntl(err[0], F_SETFL, O_NONBLOCK);
    /* A deeper pipe lets the child run ahead while an event is being sent (fewer context
     * switches on a busy host); it is kernel memory, bounded per command. */
    fcntl(out[1], F_SETPIPE_SZ, 1 << 20);
    fcntl(err[1], F_SETPIPE_SZ, 1 << 20);
    return true;
}

static enum MHD_Result run_command(struct MHD_Connection *conn, const cJSON *root,
                                   const char *command)
{
    enum MHD_Result ret = MHD_NO;
    const cJSON *jcwd, *jbg, *jtimeout, *juid, *jgid, *jenvs;
    if (!xd_field(conn, root, "cwd", F_STRING, &jcwd, &ret) ||
        !xd_field(conn, root, "background", F_BOOLEAN, &jbg, &ret) ||
        !xd_field(conn, root, "timeout", F_INTEGER, &jtimeout, &ret) ||
        !xd_field(conn, root, "uid", F_INTEGER, &juid, &ret) ||
        !xd_field(conn, root, "gid", F_INTEGER, &jgid, &ret) ||
        !xd_field(conn, root, "envs", F_OBJECT, &jenvs, &ret))
        return ret;
    const cJSON *v;
    cJSON_ArrayForEach(v, jenvs)
    {
        if (!cJSON_IsString(v))
            return xd_respond_error(conn, 400, "INVALID_REQUEST_BODY", "envs.%s must be a string",
                                    v->string);
    }
    int64_t timeout = xd_int_of(jtimeout);
    if (timeout < 0)
        return xd_respond_error(conn, 400, "INVALID_REQUEST_BODY",
                                "timeout must be at least 1 (milliseconds)");
    xd_spawn sp = {.out_fd = -1, .err_fd = -1};
    if (!resolve_ids(conn, juid, jgid, &sp, &ret))
        return ret;
    char *cwd = NULL;
    if (xd_nonempty(jcwd) != NULL) {
        cwd = xd_check_cwd(conn, xd_nonempty(jcwd), &ret);
        if (cwd == NULL) {
            free(sp.groups);
            return ret;
        }
    }
    bool background = cJSON_IsTrue(jbg);
    bool binary = xd_want_binary(conn);
    char **env = xd_env_build(NULL, jenvs);
    char *argv[] = {(char *)xd.cfg.shell, "-c", (char *)command, NULL};
    sp.argv = argv;
    sp.envp = env;
    sp.cwd = cwd;
    char err[512];
    xd_cmd *c = xd_cmd_new(command, background, NULL);
    if (c == NULL) {
        ret = xd_respond_error(conn, 500, "RUNTIME_ERROR",
                               "too many commands are running or retained");
        goto out;
    }
    if (background) {
        size_t plen = strlen(xd.cfg.work_dir) + 64;
        c->log_path = malloc(plen);
        xd_stream *st = xd_stream_new(NULL, -1, -1, binary, MOAT_EXECD_LINES_COMMAND);
        if (c->log_path == NULL || st == NULL) {
            xd_cmd_fail(c, "out of memory");
            xd_cmd_unref(c);
            xd_stream_free(st);
            ret = xd_respond_error(conn, 500, "RUNTIME_ERROR", "out of memory");
            goto out;
        }
        snprintf(c->log_path, plen, "%s/%s.output", xd.cfg.work_dir, c->id);
        int fd = open(c->log_path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0600);
        xd_emit_init(st, c->id);
        if (fd < 0) {
            snprintf(err, sizeof(err), "open %s: %s", c->log_path, strerror(errno));
            xd_cmd_fail(c, err);
            xd_emit_error(st, err, err, NULL);
        } else {
            sp.out_fd = sp.err_fd = fd;
            if (xd_cmd_start(c, &sp, (uint64_t)timeout, err, sizeof(err)) != 0)
                xd_emit_error(st, err, err, NULL);
            else {
                moat_execd_event ev = {.type = "execution_complete",
                                       .timestamp = moat_time_now_ms()};
                xd_stream_emit(st, &ev);
            }
            close(fd);
        }
        xd_cmd_unref(c);
        ret = xd_stream_respond(conn, st);
        goto out;
    }
    int po[2], pe[2];
    if (!xd_make_pipes(po, pe)) {
        xd_cmd_unref(c);
        ret = xd_respond_error(conn, 500, "RUNTIME_ERROR", "pipe: %s", strerror(errno));
        goto out;
    }
    sp.out_fd = po[1];
    sp.err_fd = pe[1];
    int rc = xd_cmd_start(c, &sp, (uint64_t)timeout, err, sizeof(err));
    close(po[1]);
    close(pe[1]);
    xd_stream *st = xd_stream_new(c, po[0], pe[0], binary, MOAT_EXECD_LINES_COMMAND);
    if (st == NULL) {
        xd_cmd_terminate(c, 0);
        xd_cmd_unref(c);
        close(po[0]);
        close(pe[0]);
        ret = xd_respond_error(conn, 500, "RUNTIME_ERROR", "out of memory");
        goto out;
    }
    xd_emit_init(st, c->id);
    if (rc != 0) {
        xd_emit_error(st, err, err, NULL);
        xd_stream_end(st);
    } else {
        xd_stream_on_finish(st, command_finish, NULL);
    }
    ret = xd_stream_respond(conn, st);
out:
    xd_env_free(env);
    free(cwd);
    free(sp.groups);
    return ret;
}

static enum MHD_Result post_command(struct MHD_Connection *conn, xd_req *r)
{
    enum MHD_Result ret = MHD_NO;
    cJSON *root = xd_parse_body(conn, r, false, &ret);
    if (root == NULL)
        return ret;
    const cJSON *jcmd;
    if (!xd_field(conn, root, "command", F_STRING, &jcmd, &ret)) {
        cJSON_Delete(root);
        return ret;
    }
    if (xd_nonempty(jcmd) == NULL) {
        cJSON_Delete(root);
        return xd_respond_error(conn, 400, "INVALID_REQUEST_BODY",
                                "field command is required and must not be empty");
    }
    ret = run_command(conn, root, xd_nonempty(jcmd));
    cJSON_Delete(root);
    return ret;
}

static enum MHD_Result post_code(struct MHD_Connection *conn, xd_req *r)
{
    enum MHD_Result ret = MHD_NO;
    cJSON *root = xd_parse_body(conn, r, false, &ret);
    if (root == NULL)
        return ret;
    const cJSON *jcode, *jctx, *jlang = NULL;
    if (!xd_field(conn, root, "code", F_STRING, &jcode, &ret) ||
        !xd_field(conn, root, "context", F_OBJECT, &jctx, &ret) ||
        (jctx != NULL && !xd_field(conn, jctx, "language", F_STRING, &jlang, &ret))) {
        cJSON_Delete(root);
        return ret;
    }
    if (xd_nonempty(jlang) != NULL) {
        ret = xd_respond_error(conn, 501, "NOT_SUPPORTED",
                               "language %s is not supported: moat-execd has no code "
                               "interpreter; omit context.language to run code as a shell command",
                               xd_nonempty(jlang));
    } else if (xd_nonempty(jcode) == NULL) {
        ret = xd_respond_error(conn, 400, "INVALID_REQUEST_BODY",
                               "field code is required and must not be empty");
    } else {
        ret = run_command(conn, root, xd_nonempty(jcode));
    }
    cJSON_Delete(root);
    return ret;
}

/* ---- status, logs, interrupt ---- */

static enum MHD_Result command_status(struct MHD_Connection *conn, const char *id)
{
    xd_cmd *c = xd_cmd_find(id);
    if (c == NULL)
        return xd_respond_error(conn, 404, "INVALID_REQUEST_BODY", "command not found: %s", id);
    cJSON *o = cJSON_CreateObject();
    char ts[64];
    pthread_mutex_lock(&xd.lock);
    bool ok =
        o != NULL && cJSON_AddStringToObject(o, "id", c->id) != NULL &&
        moat__execd_json_set(o, "content", moat__execd_json_str(c->command)) &&
        cJSON_AddBoolToObject(o, "running", c->running) != NULL &&
        (c->running || cJSON_AddNumberToObject(o, "exit_code", c->exit_code) != NULL) &&
        (c->error[0] == '\0' || moat__execd_json_set(o, "error", moat__execd_json_str(c->error)));
    format_ms(c->started_ms, ts);
    ok = ok && cJSON_AddStringToObject(o, "started_at", ts) != NULL;
    if (!c->running && c->finished_ms != 0) {
        format_ms(c->finished_ms, ts);
        ok = ok && cJSON_AddStringToObject(o, "finished_at", ts) != NULL;
    }
    pthread_mutex_unlock(&xd.lock);
    xd_cmd_unref(c);
    if (!ok) {
        cJSON_Delete(o);
        o = NULL;
    }
    return xd_respond_json(conn, 200, o);
}

static enum MHD_Result command_logs(struct MHD_Connection *conn, const char *id)
{
    xd_cmd *c = xd_cmd_find(id);
    if (c == NULL || !c->background || c->log_path == NULL) {
        xd_cmd_unref(c);
        return xd_respond_error(conn, 400, "INVALID_REQUEST_BODY",
                                "command %s not found or not a background command", id);
    }
    int fd = open(c->log_path, O_RDONLY | O_CLOEXEC);
    xd_cmd_unref(c);
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) != 0) {
        if (fd >= 0)
            close(fd);
        return xd_respond_error(conn, 500, "RUNTIME_ERROR", "cannot read logs of %s", id);
    }
    uint64_t size = (uint64_t)sb.st_size, cursor = 0;
    const char *cs = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "cursor");
    if (cs != NULL) {
        char *end;
        errno = 0;
        unsigned long long v = strtoull(cs, &end, 10);
        if (errno == 0 && *end == '\0' && cs[0] != '-' && cs[0] != '\0')
            cursor = v;
    }
    if (cursor > size)
        cursor = size;
    struct MHD_Response *resp =
        MHD_create_response_from_fd_at_offset64(size - cursor, fd, (int64_t)cursor);
    if (resp == NULL) {
        close(fd);
        return MHD_NO;
    }
    char cur[32];
    snprintf(cur, sizeof(cur), "%" PRIu64, size);
    MHD_add_response_header(resp, "Content-Type", "text/plain; charset=utf-8");
    MHD_add_response_header(resp, "EXECD-COMMANDS-TAIL-CURSOR", cur);
    enum MHD_Result ret = MHD_queue_response(conn, 200, resp);
    MHD_destroy_response(resp);
    return ret;
}

static enum MHD_Result command_delete(struct MHD_Connection *conn)
{
    const char *id = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "id");
    if (id == NULL || id[0] == '\0')
        return xd_respond_error(conn, 400, "MISSING_QUERY", "missing query parameter id");
    xd_cmd *c = xd_cmd_find(id);
    if (c != NULL) {
        pthread_mutex_lock(&xd.lock);
        bool running = c->running;
        pthread_mutex_unlock(&xd.lock);
        if (!running) {
            xd_cmd_unref(c);
            return xd_respond_error(conn, 500, "RUNTIME_ERROR",
                                    "error interruptting code context. command session %s is "
                                    "not running",
                                    id);
        }
        xd_cmd_interrupt(c);
        xd_cmd_unref(c);
        return xd_respond_empty(conn, 200);
    }
    pthread_mutex_lock(&xd.lock);
    xd_session *s = xd_session_find(id);
    if (s != NULL)
        xd_session_remove(s);
    pthread_mutex_unlock(&xd.lock);
    if (s != NULL)
        return xd_respond_empty(conn, 200);
    return xd_respond_error(conn, 500, "RUNTIME_ERROR",
                            "error interruptting code context. no such session %s", id);
}

/* Copies the path segment after prefix up to the next '/' into out. */
static bool segment(const char *url, const char *prefix, char *out, size_t outlen,
                    const char **rest)
{
    size_t pl = strlen(prefix);
    if (strncmp(url, prefix, pl) != 0)
        return false;
    const char *s = url + pl;
    size_t n = strcspn(s, "/");
    if (n == 0 || n >= outlen)
        return false;
    memcpy(out, s, n);
    out[n] = '\0';
    *rest = s + n;
    return true;
}

enum MHD_Result xd_command_route(struct MHD_Connection *conn, xd_req *r, const char *url,
                                 const char *method, bool *matched)
{
    bool post = strcmp(method, "POST") == 0, get = strcmp(method, "GET") == 0,
         del = strcmp(method, "DELETE") == 0;
    char id[256];
    const char *rest;
    *matched = true;
    if (strcmp(url, "/command") == 0 && post)
        return post_command(conn, r);
    if ((strcmp(url, "/command") == 0 || strcmp(url, "/code") == 0) && del)
        return command_delete(conn);
    if (strcmp(url, "/code") == 0 && post)
        return post_code(conn, r);
    if (strncmp(url, "/code/context", 13) == 0)
        return xd_respond_error(conn, 501, "NOT_SUPPORTED",
                                "code contexts need a code interpreter, which moat-execd does "
                                "not have; POST /code without context.language runs a command");
    if (get && segment(url, "/command/status/", id, sizeof(id), &rest) && *rest == '\0')
        return command_status(conn, id);
    if (get && segment(url, "/command/", id, sizeof(id), &rest) && strcmp(rest, "/logs") == 0)
        return command_logs(conn, id);
    if (strcmp(url, "/session") == 0 && post)
        return xd_post_session(conn, r);
    if (segment(url, "/session/", id, sizeof(id), &rest)) {
        if (post && strcmp(rest, "/run") == 0)
            return xd_session_run_post(conn, r, id);
        if (del && *rest == '\0')
            return xd_session_delete(conn, id);
    }
    *matched = false;
    return MHD_NO;
}
