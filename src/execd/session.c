/* Bash sessions (/session, /session/{id}/run): each run is a script whose EXIT trap dumps the
 * exported environment and cwd, which the session takes for its next run. command.c has
 * /command and /code, and routes /session here. */
#include "command_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DUMP_MAX (8u << 20)

xd_session *xd_session_find(const char *id)
{
    for (xd_session *s = xd.sessions; s != NULL; s = s->next)
        if (strcmp(s->id, id) == 0)
            return s;
    return NULL;
}

static void session_free(xd_session *s)
{
    xd_env_free(s->env);
    free(s->cwd);
    free(s);
}

/* Unlinks a session; frees it now, or marks it for the running stream to free. Lock held. */
void xd_session_remove(xd_session *s)
{
    for (xd_session **pp = &xd.sessions; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == s) {
            *pp = s->next;
            break;
        }
    }
    if (s->busy) {
        /* A run is starting or streaming; it frees the session when it ends. */
        s->deleted = true;
        if (s->current != NULL && s->current->running && s->current->pid > 0)
            kill(-s->current->pid, SIGKILL);
    } else {
        session_free(s);
    }
}

enum MHD_Result xd_post_session(struct MHD_Connection *conn, xd_req *r)
{
    enum MHD_Result ret = MHD_NO;
    cJSON *root = xd_parse_body(conn, r, true, &ret);
    if (root == NULL)
        return ret;
    const cJSON *jcwd;
    if (!xd_field(conn, root, "cwd", F_STRING, &jcwd, &ret)) {
        cJSON_Delete(root);
        return ret;
    }
    char *cwd = NULL;
    char err[256];
    if (xd_nonempty(jcwd) != NULL) {
        cwd = xd_expand(xd_nonempty(jcwd), err, sizeof(err));
        if (cwd == NULL) {
            cJSON_Delete(root);
            return xd_respond_error(conn, 400, "INVALID_REQUEST_BODY", "invalid cwd: %s", err);
        }
        xd_mkdir_p(cwd, 0755);
    } else {
        cwd = getcwd(NULL, 0);
    }
    cJSON_Delete(root);
    xd_session *s = calloc(1, sizeof(*s));
    if (s == NULL || cwd == NULL) {
        free(s);
        free(cwd);
        return xd_respond_error(conn, 500, "RUNTIME_ERROR", "out of memory");
    }
    moat_uuid_generate(s->id);
    s->cwd = cwd;
    s->env = xd_env_build(NULL, NULL);
    pthread_mutex_lock(&xd.lock);
    s->next = xd.sessions;
    xd.sessions = s;
    pthread_mutex_unlock(&xd.lock);
    cJSON *body = cJSON_CreateObject();
    if (body != NULL && cJSON_AddStringToObject(body, "session_id", s->id) == NULL) {
        cJSON_Delete(body);
        body = NULL;
    }
    return xd_respond_json(conn, 200, body);
}

typedef struct session_run {
    xd_session *session;
    char *script_path, *dump_path;
    bool keep_cwd; /* the run had a cwd override: it holds for this run only */
} session_run;

typedef struct dump_ctx {
    char **env;
    char *cwd;
} dump_ctx;

static void dump_env(void *ud, const char *name, size_t nlen, const char *value, size_t vlen)
{
    dump_ctx *d = ud;
    d->env = xd_env_set(d->env, name, nlen, value, vlen);
}

static void dump_pwd(void *ud, const char *name, size_t nlen, const char *value, size_t vlen)
{
    (void)name;
    (void)nlen;
    dump_ctx *d = ud;
    free(d->cwd);
    d->cwd = strndup(value, vlen);
}

/* Reads the env/pwd dump the run's exit trap wrote; on success replaces the session's
 * exported environment and cwd. Lock held. */
static void session_absorb(xd_session *s, const char *dump_path, bool keep_cwd)
{
    int fd = open(dump_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    moat_buf b;
    moat_buf_init(&b, DUMP_MAX);
    char tmp[16384];
    ssize_t n;
    while ((n = read(fd, tmp, sizeof(tmp))) > 0)
        if (moat_buf_append(&b, tmp, (size_t)n) != MOAT_OK)
            break;
    close(fd);
    dump_ctx d = {calloc(1, sizeof(char *)), NULL};
    if (b.len > 0 && d.env != NULL) {
        moat_execd_parse_env_dump((const char *)b.data, b.len, dump_env, dump_pwd, &d);
        xd_env_free(s->env);
        s->env = d.env;
        d.env = NULL;
        if (d.cwd != NULL && !keep_cwd) {
            free(s->cwd);
            s->cwd = d.cwd;
            d.cwd = NULL;
        }
    }
    xd_env_free(d.env);
    free(d.cwd);
    moat_buf_free(&b);
}

static void session_finish(xd_stream *st, xd_cmd *c, void *ud)
{
    session_run *run = ud;
    pthread_mutex_lock(&xd.lock);
    xd_session *s = run->session;
    if (c != NULL && !s->deleted)
        session_absorb(s, run->dump_path, run->keep_cwd);
    s->busy = false;
    s->current = NULL;
    if (s->deleted)
        session_free(s);
    pthread_mutex_unlock(&xd.lock);
    if (c != NULL)
        xd_emit_outcome(st, c, true);
    unlink(run->script_path);
    unlink(run->dump_path);
    free(run->script_path);
    free(run->dump_path);
    free(run);
}

/* Single-quotes s for the shell. */
static void sh_quote(FILE *f, const char *s)
{
    fputc('\'', f);
    for (; *s; s++) {
        if (*s == '\'')
            fputs("'\\''", f);
        else
            fputc(*s, f);
    }
    fputc('\'', f);
}

static bool write_script(const char *path, const char *dump, const char *command)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return false;
    FILE *f = fdopen(fd, "w");
    if (f == NULL) {
        close(fd);
        return false;
    }
    fputs("__moat_dump=", f);
    sh_quote(f, dump);
    fputc('\n', f);
    /* The EXIT trap saves the exported environment and cwd even after `exit N`. */
    if (xd.cfg.shell_is_bash)
        fputs("__moat_save() { __moat_ec=$?; { printf '\\001PWD=%s\\0' \"$PWD\"; "
              "for __moat_n in $(compgen -e); do printf '%s=%s\\0' \"$__moat_n\" "
              "\"${!__moat_n}\"; done; } >\"$__moat_dump\" 2>/dev/null; exit $__moat_ec; }\n",
              f);
    else
        fputs("__moat_save() { __moat_ec=$?; printf '\\001PWD=%s\\0' \"$PWD\" "
              ">\"$__moat_dump\" 2>/dev/null; exit $__moat_ec; }\n",
              f);
    fputs("trap __moat_save EXIT\n", f);
    fputs(command, f);
    fputc('\n', f);
    return fclose(f) == 0;
}

enum MHD_Result xd_session_run_post(struct MHD_Connection *conn, xd_req *r, const char *sid)
{
    enum MHD_Result ret = MHD_NO;
    cJSON *root = xd_parse_body(conn, r, false, &ret);
    if (root == NULL)
        return ret;
    const cJSON *jcmd, *jcwd, *jtimeout;
    if (!xd_field(conn, root, "command", F_STRING, &jcmd, &ret) ||
        !xd_field(conn, root, "cwd", F_STRING, &jcwd, &ret) ||
        !xd_field(conn, root, "timeout", F_INTEGER, &jtimeout, &ret)) {
        cJSON_Delete(root);
        return ret;
    }
    if (xd_nonempty(jcmd) == NULL) {
        cJSON_Delete(root);
        return xd_respond_error(conn, 400, "INVALID_REQUEST_BODY",
                                "field command is required and must not be empty");
    }
    int64_t timeout = xd_int_of(jtimeout);
    if (timeout < 0) {
        cJSON_Delete(root);
        return xd_respond_error(conn, 400, "INVALID_REQUEST_BODY", "timeout must be >= 0");
    }
    if (timeout == 0)
        timeout = 24LL * 3600 * 1000;
    char *cwd_override = NULL;
    if (xd_nonempty(jcwd) != NULL) {
        cwd_override = xd_check_cwd(conn, xd_nonempty(jcwd), &ret);
        if (cwd_override == NULL) {
            cJSON_Delete(root);
            return ret;
        }
    }
    pthread_mutex_lock(&xd.lock);
    xd_session *s = xd_session_find(sid);
    if (s == NULL || s->busy) {
        pthread_mutex_unlock(&xd.lock);
        cJSON_Delete(root);
        free(cwd_override);
        if (s == NULL)
            return xd_respond_error(conn, 500, "RUNTIME_ERROR", "session %s not found", sid);
        return xd_respond_error(conn, 500, "RUNTIME_ERROR", "session %s is busy", sid);
    }
    s->busy = true;
    char **env = xd_env_dup(s->env);
    char *cwd = cwd_override ? cwd_override : strdup(s->cwd);
    pthread_mutex_unlock(&xd.lock);

    const char *command = xd_nonempty(jcmd);
    session_run *run = calloc(1, sizeof(*run));
    xd_cmd *c = xd_cmd_new(command, false, NULL);
    int po[2], pe[2];
    bool pipes = c != NULL && run != NULL && xd_make_pipes(po, pe);
    if (!pipes) {
        pthread_mutex_lock(&xd.lock);
        s->busy = false;
        pthread_mutex_unlock(&xd.lock);
        xd_cmd_unref(c);
        free(run);
        ret = xd_respond_error(conn, 500, "RUNTIME_ERROR", "cannot start a run");
        goto out;
    }
    run->session = s;
    run->keep_cwd = cwd_override != NULL;
    size_t plen = strlen(xd.cfg.work_dir) + 64;
    run->script_path = malloc(plen);
    run->dump_path = malloc(plen);
    snprintf(run->script_path, plen, "%s/%s.sh", xd.cfg.work_dir, c->id);
    snprintf(run->dump_path, plen, "%s/%s.env", xd.cfg.work_dir, c->id);
    pthread_mutex_lock(&xd.lock);
    s->current = c;
    c->session = s;
    pthread_mutex_unlock(&xd.lock);
    char err[512] = "";
    int rc = -1;
    if (!write_script(run->script_path, run->dump_path, command)) {
        snprintf(err, sizeof(err), "cannot write run script: %s", strerror(errno));
        xd_cmd_fail(c, err);
    } else {
        char *argv_bash[] = {(char *)xd.cfg.shell, "--noprofile", "--norc", run->script_path, NULL};
        char *argv_sh[] = {(char *)xd.cfg.shell, run->script_path, NULL};
        xd_spawn sp = {.argv = xd.cfg.shell_is_bash ? argv_bash : argv_sh,
                       .envp = env,
                       .cwd = cwd,
                       .out_fd = po[1],
                       .err_fd = pe[1]};
        rc = xd_cmd_start(c, &sp, (uint64_t)timeout, err, sizeof(err));
    }
    close(po[1]);
    close(pe[1]);
    xd_stream *st = xd_stream_new(c, po[0], pe[0], xd_want_binary(conn), MOAT_EXECD_LINES_SESSION);
    if (st == NULL) {
        xd_cmd_terminate(c, 0);
        xd_cmd_unref(c);
        close(po[0]);
        close(pe[0]);
        session_finish(NULL, NULL, run);
        ret = xd_respond_error(conn, 500, "RUNTIME_ERROR", "out of memory");
        goto out;
    }
    /* The reference's init carries the session id, not a per-run id. */
    xd_emit_init(st, sid);
    xd_stream_on_finish(st, session_finish, run);
    if (rc != 0) {
        xd_emit_error(st, err, err, NULL);
        session_finish(st, NULL, run);
        xd_stream_on_finish(st, NULL, NULL);
        xd_stream_end(st);
    }
    ret = xd_stream_respond(conn, st);
out:
    cJSON_Delete(root);
    xd_env_free(env);
    free(cwd);
    return ret;
}

enum MHD_Result xd_session_delete(struct MHD_Connection *conn, const char *sid)
{
    pthread_mutex_lock(&xd.lock);
    xd_session *s = xd_session_find(sid);
    if (s != NULL)
        xd_session_remove(s);
    pthread_mutex_unlock(&xd.lock);
    if (s == NULL)
        return xd_respond_error(conn, 404, "CONTEXT_NOT_FOUND", "session %s not found", sid);
    return xd_respond_empty(conn, 200);
}
