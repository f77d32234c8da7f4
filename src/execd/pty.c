/* OpenSandbox's /pty API: POST /pty, GET /pty/{id}, DELETE /pty/{id} and the WebSocket
 * GET /pty/{id}/ws (its handshake here; what follows it in pty_session.c). */
#include "pty.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

/* Each live session holds (once started) a 1 MiB ring and a thread. */
#define XD_PTY_SESSIONS_MAX 64
/* Released sessions keep a few hundred bytes each for GET /pty/{id} and a late attach; past
 * this many the oldest is dropped, so running commands to their end never fills memory. */
#define XD_PTY_FINISHED_MAX 256

static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;
static xd_pty *table;
static size_t table_count, finished_count; /* listed sessions, and the released ones of them */
/* Session threads are detached; shutdown waits for this count to reach 0. */
static pthread_cond_t threads_done = PTHREAD_COND_INITIALIZER;
static size_t threads_live;

void xd_pty_thread_exit(void)
{
    pthread_mutex_lock(&table_lock);
    threads_live--;
    pthread_cond_broadcast(&threads_done);
    pthread_mutex_unlock(&table_lock);
}

static bool thread_start(xd_pty *s)
{
    pthread_mutex_lock(&table_lock);
    threads_live++;
    pthread_mutex_unlock(&table_lock);
    pthread_t t;
    if (pthread_create(&t, NULL, xd_pty_session_main, s) == 0) {
        pthread_detach(t);
        return true;
    }
    xd_pty_thread_exit();
    return false;
}

/* Closes *fd if open and marks it closed. */
static void close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

static void session_free(xd_pty *s)
{
    close_fd(&s->wake_r);
    close_fd(&s->wake_w);
    close_fd(&s->gone_r);
    close_fd(&s->gone_w);
    if (s->stdin_fd >= 0)
        close(s->stdin_fd);
    pthread_cond_destroy(&s->stdin_cv);
    pthread_mutex_destroy(&s->mu);
    free(s->start_error);
    free(s->cwd);
    free(s->command);
    free(s);
}

void xd_pty_unref(xd_pty *s)
{
    pthread_mutex_lock(&s->mu);
    bool last = --s->refs == 0;
    pthread_mutex_unlock(&s->mu);
    if (last)
        session_free(s);
}

bool xd_pty_unlist(xd_pty *s)
{
    pthread_mutex_lock(&table_lock);
    bool was = false;
    for (xd_pty **pp = &table; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == s) {
            *pp = s->next;
            table_count--;
            pthread_mutex_lock(&s->mu);
            if (s->finished)
                finished_count--;
            /* under table_lock too, so that a release counts only sessions still listed */
            s->listed = false;
            pthread_mutex_unlock(&s->mu);
            was = true;
            break;
        }
    }
    pthread_mutex_unlock(&table_lock);
    if (!was)
        return false;
    pthread_mutex_lock(&s->mu);
    s->closing = true;
    close_fd(&s->gone_w);
    pthread_cond_broadcast(&s->stdin_cv);
    pthread_mutex_unlock(&s->mu);
    xd_pty_wake(s);
    xd_pty_unref(s);
    return true;
}

void xd_pty_wake(xd_pty *s)
{
    /* Under the lock: a release closes the pipe, an attach after it opens another. */
    pthread_mutex_lock(&s->mu);
    if (s->wake_w >= 0) {
        ssize_t w = write(s->wake_w, "x", 1);
        (void)w;
    }
    pthread_mutex_unlock(&s->mu);
}

/* Sessions never attached, and released ones no client is on, are dropped here once idle for
 * the timeout (no thread watches them). */
xd_pty *xd_pty_find(const char *id)
{
    uint64_t now = moat_time_mono_ns();
    xd_pty *found = NULL, *expired = NULL;
    pthread_mutex_lock(&table_lock);
    for (xd_pty *s = table; s != NULL; s = s->next) {
        pthread_mutex_lock(&s->mu);
        if (strcmp(s->id, id) == 0) {
            found = s;
            s->refs++;
        } else if (expired == NULL && (!s->started || (s->finished && !s->serving)) &&
                   s->claims == 0 && now - s->idle_since_ns >= xd.cfg.pty_idle_ns) {
            expired = s;
            s->refs++;
        }
        pthread_mutex_unlock(&s->mu);
    }
    pthread_mutex_unlock(&table_lock);
    if (expired != NULL) {
        xd_pty_unlist(expired);
        xd_pty_unref(expired);
    }
    return found;
}

/* The released session idle the longest, with a reference, or NULL. Under table_lock. */
static xd_pty *oldest_finished(void)
{
    xd_pty *oldest = NULL;
    for (xd_pty *s = table; s != NULL; s = s->next) {
        pthread_mutex_lock(&s->mu);
        if (s->finished && !s->serving && s->claims == 0 &&
            (oldest == NULL || s->idle_since_ns < oldest->idle_since_ns))
            oldest = s;
        pthread_mutex_unlock(&s->mu);
    }
    if (oldest != NULL) {
        pthread_mutex_lock(&oldest->mu);
        oldest->refs++;
        pthread_mutex_unlock(&oldest->mu);
    }
    return oldest;
}

bool xd_pty_release(xd_pty *s, int exit_code, const char *start_error)
{
    char *error = start_error != NULL ? strdup(start_error) : NULL;
    pthread_mutex_lock(&table_lock);
    pthread_mutex_lock(&s->mu);
    /* A lent pipe comes back to the thread first; a pending client is served first. */
    bool can =
        s->pending == NULL && (s->stdin_state == XD_STDIN_OWN || s->stdin_state == XD_STDIN_CLOSED);
    if (can) {
        if (!s->finished) {
            s->finished = true;
            s->exit_code = exit_code;
            s->start_error = error;
            error = NULL;
            if (s->listed)
                finished_count++;
        }
        s->serving = false;
        s->idle_since_ns = moat_time_mono_ns();
        s->stdin_state = XD_STDIN_CLOSED;
        pthread_cond_broadcast(&s->stdin_cv);
        /* What is kept holds no descriptor (256 released sessions would take a thousand) and
         * no request text; an upload needs none of it, as stdin is closed. */
        close_fd(&s->wake_r);
        close_fd(&s->wake_w);
        close_fd(&s->gone_r);
        close_fd(&s->gone_w);
        free(s->cwd);
        free(s->command);
        s->cwd = s->command = NULL;
    }
    pthread_mutex_unlock(&s->mu);
    xd_pty *evict = can && finished_count > XD_PTY_FINISHED_MAX ? oldest_finished() : NULL;
    pthread_mutex_unlock(&table_lock);
    free(error);
    if (evict != NULL) {
        xd_pty_unlist(evict);
        xd_pty_unref(evict);
    }
    return can;
}

static enum MHD_Result pty_create(struct MHD_Connection *conn, xd_req *r)
{
    enum MHD_Result ret = MHD_NO;
    cJSON *root = xd_parse_body(conn, r, true, &ret);
    if (root == NULL)
        return ret;
    const cJSON *jcwd, *jcommand;
    if (!xd_field(conn, root, "cwd", F_STRING, &jcwd, &ret) ||
        !xd_field(conn, root, "command", F_STRING, &jcommand, &ret)) {
        cJSON_Delete(root);
        return ret;
    }
    xd_pty *s = calloc(1, sizeof(*s));
    int wake[2] = {-1, -1}, gone[2] = {-1, -1};
    if (s == NULL || pipe2(wake, O_CLOEXEC | O_NONBLOCK) != 0 || pipe2(gone, O_CLOEXEC) != 0) {
        if (wake[0] >= 0) {
            close(wake[0]);
            close(wake[1]);
        }
        free(s);
        cJSON_Delete(root);
        return xd_respond_error(conn, 500, "RUNTIME_ERROR", "out of memory");
    }
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->stdin_cv, NULL);
    s->wake_r = wake[0];
    s->wake_w = wake[1];
    s->gone_r = gone[0];
    s->gone_w = gone[1];
    s->stdin_fd = -1;
    s->refs = 1;
    s->listed = true;
    s->idle_since_ns = moat_time_mono_ns();
    char err[256];
    bool ok = true;
    if (xd_nonempty(jcwd) != NULL) {
        s->cwd = xd_expand(xd_nonempty(jcwd), err, sizeof(err));
        ok = s->cwd != NULL;
        if (ok)
            xd_mkdir_p(s->cwd, 0755);
    }
    if (ok && xd_nonempty(jcommand) != NULL) {
        s->command = strdup(xd_nonempty(jcommand));
        ok = s->command != NULL;
        snprintf(err, sizeof(err), "out of memory");
    }
    cJSON_Delete(root);
    if (!ok) {
        bool no_memory = s->cwd != NULL || xd_nonempty(jcwd) == NULL;
        session_free(s);
        return no_memory
                   ? xd_respond_error(conn, 500, "RUNTIME_ERROR", "%s", err)
                   : xd_respond_error(conn, 400, "INVALID_REQUEST_BODY", "invalid cwd: %s", err);
    }
    moat_uuid_generate(s->id);
    pthread_mutex_lock(&table_lock);
    bool full = table_count - finished_count >= XD_PTY_SESSIONS_MAX;
    if (!full) {
        s->next = table;
        table = s;
        table_count++;
    }
    pthread_mutex_unlock(&table_lock);
    if (full) {
        session_free(s);
        /* A limit, not a fault: 429 tells a client to end or delete one first (moatd:
         * RESOURCE_EXHAUSTED). */
        return xd_respond_error(conn, 429, "TOO_MANY_SESSIONS",
                                "too many live pty sessions (%d): end or DELETE one first",
                                XD_PTY_SESSIONS_MAX);
    }
    cJSON *body = cJSON_CreateObject();
    if (body != NULL && cJSON_AddStringToObject(body, "session_id", s->id) == NULL) {
        cJSON_Delete(body);
        body = NULL;
    }
    return xd_respond_json(conn, 201, body);
}

static enum MHD_Result pty_status(struct MHD_Connection *conn, xd_pty *s)
{
    cJSON *body = cJSON_CreateObject();
    if (body != NULL && (cJSON_AddStringToObject(body, "session_id", s->id) == NULL ||
                         cJSON_AddBoolToObject(body, "running", atomic_load(&s->running)) == NULL ||
                         cJSON_AddNumberToObject(body, "output_offset",
                                                 (double)atomic_load(&s->output_offset)) == NULL)) {
        cJSON_Delete(body);
        body = NULL;
    }
    return xd_respond_json(conn, 200, body);
}

/* ---- the WebSocket handshake ---- */

/* Whether a comma-separated header value holds token (case-insensitive). */
static bool has_token(const char *value, const char *token)
{
    size_t tlen = strlen(token);
    for (const char *p = value; p != NULL && *p != '\0';) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        size_t n = strcspn(p, ",");
        size_t m = n;
        while (m > 0 && (p[m - 1] == ' ' || p[m - 1] == '\t'))
            m--;
        if (m == tlen && strncasecmp(p, token, tlen) == 0)
            return true;
        p += n;
    }
    return false;
}

/* The Sec-WebSocket-Accept of a valid upgrade request, else false. */
static bool upgrade_requested(struct MHD_Connection *conn, char accept[MOAT_EXECD_WS_ACCEPT_LEN])
{
    const char *upgrade = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Upgrade");
    const char *connection = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Connection");
    const char *version =
        MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Sec-WebSocket-Version");
    const char *key = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Sec-WebSocket-Key");
    return has_token(upgrade, "websocket") && has_token(connection, "upgrade") && version != NULL &&
           strcmp(version, "13") == 0 && key != NULL && moat_execd_ws_accept_key(key, accept);
}

/* A released session's wake pipe went with its thread: the next thread gets a new one. Under
 * s->mu. */
static bool wake_open(xd_pty *s)
{
    int wake[2];
    if (s->wake_w >= 0)
        return true;
    if (pipe2(wake, O_CLOEXEC | O_NONBLOCK) != 0)
        return false;
    s->wake_r = wake[0];
    s->wake_w = wake[1];
    return true;
}

static void on_upgraded(void *cls, struct MHD_Connection *conn, void *con_cls, const char *extra_in,
                        size_t extra_in_size, MHD_socket sock,
                        struct MHD_UpgradeResponseHandle *urh)
{
    (void)conn;
    (void)con_cls;
    xd_pty_attach *at = cls;
    xd_pty *s = at->session;
    xd_pty_client *c = calloc(1, sizeof(*c));
    if (c != NULL && extra_in_size > 0) {
        c->early = malloc(extra_in_size);
        if (c->early == NULL) {
            free(c);
            c = NULL;
        } else {
            memcpy(c->early, extra_in, extra_in_size);
            c->early_len = extra_in_size;
        }
    }
    at->upgraded = true;
    if (c == NULL) {
        MHD_upgrade_action(urh, MHD_UPGRADE_ACTION_CLOSE);
        pthread_mutex_lock(&s->mu);
        s->claims--;
        pthread_mutex_unlock(&s->mu);
        return;
    }
    c->fd = sock;
    c->urh = urh;
    c->session = s;
    c->has_since = at->has_since;
    c->since = at->since;
    fcntl(sock, F_SETFL, fcntl(sock, F_GETFL) | O_NONBLOCK);
    xd_pty_client *replaced = NULL;
    bool start = false;
    pthread_mutex_lock(&s->mu);
    if (s->closing || !wake_open(s)) {
        replaced = c;
    } else {
        replaced = s->pending;
        s->pending = c;
        if (!s->started) {
            s->started = true;
            s->pipe_mode = at->pipe_mode;
            memcpy(s->term, at->term, sizeof(s->term));
            s->rows = at->rows;
            s->cols = at->cols;
        }
        /* A released session's thread has ended: a new one tells this client the exit. */
        if (!s->serving) {
            s->serving = start = true;
            s->refs++;
        }
    }
    pthread_mutex_unlock(&s->mu);
    if (replaced != NULL)
        xd_pty_client_drop(replaced);
    if (start && !thread_start(s)) {
        pthread_mutex_lock(&s->mu);
        s->started = s->finished;
        s->serving = false;
        pthread_cond_broadcast(&s->stdin_cv);
        replaced = s->pending;
        s->pending = NULL;
        s->refs--;
        pthread_mutex_unlock(&s->mu);
        xd_pty_client_drop(replaced);
        return;
    }
    xd_pty_wake(s);
}

void xd_pty_client_drop(xd_pty_client *c)
{
    if (c == NULL)
        return;
    moat_execd_ws_free(c->ws);
    MHD_upgrade_action(c->urh, MHD_UPGRADE_ACTION_CLOSE);
    xd_pty *s = c->session;
    pthread_mutex_lock(&s->mu);
    s->claims--;
    pthread_mutex_unlock(&s->mu);
    free(c->early);
    free(c);
}

/* TERM for the shell: a terminfo name, not anything the environment could be abused with. */
static bool valid_term(const char *t)
{
    size_t n = strlen(t);
    if (n == 0 || n > XD_PTY_TERM_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)t[i]) && strchr("._+-", t[i]) == NULL)
            return false;
    return true;
}

/* Decimal digits below 2^63; anything else is not a number (since= is then ignored, as the
 * reference does). */
static bool parse_decimal(const char *v, uint64_t *out)
{
    if (v == NULL || v[0] == '\0' || strlen(v) > 18)
        return false;
    uint64_t x = 0;
    for (const char *p = v; *p; p++) {
        if (!isdigit((unsigned char)*p))
            return false;
        x = x * 10 + (uint64_t)(*p - '0');
    }
    *out = x;
    return true;
}

/* rows= and cols= (moat's extension: the size the terminal starts with, so a command sees it
 * from its first instruction): 1 to 65535, else the default. */
static uint16_t parse_dimension(const char *v, uint16_t fallback)
{
    uint64_t x = 0;
    return parse_decimal(v, &x) && x >= 1 && x <= UINT16_MAX ? (uint16_t)x : fallback;
}

static enum MHD_Result pty_attach(struct MHD_Connection *conn, xd_req *r, xd_pty *s)
{
    const char *mode = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "pty");
    const char *term = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "term");
    const char *takeover = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "takeover");
    char accept[MOAT_EXECD_WS_ACCEPT_LEN];
    bool upgrade = upgrade_requested(conn, accept);
    bool take = upgrade && takeover != NULL && strcmp(takeover, "1") == 0;
    if (term != NULL && !valid_term(term))
        return xd_respond_error(conn, 400, "INVALID_REQUEST_BODY",
                                "term must be 1 to 64 letters, digits or ._+-");
    pthread_mutex_lock(&s->mu);
    bool busy = s->claims > 0 && !take;
    if (!busy && upgrade) {
        s->claims++;
        s->refs++;
    }
    pthread_mutex_unlock(&s->mu);
    if (busy)
        return xd_respond_error(conn, 409, "ALREADY_CONNECTED", "%s", "");
    if (!upgrade)
        return xd_respond_error(conn, 400, "INVALID_REQUEST_BODY",
                                "a WebSocket upgrade (version 13) is required");
    xd_pty_attach *at = calloc(1, sizeof(*at));
    struct MHD_Response *resp =
        at != NULL ? MHD_create_response_for_upgrade(on_upgraded, at) : NULL;
    if (resp == NULL) {
        free(at);
        pthread_mutex_lock(&s->mu);
        s->claims--;
        s->refs--;
        pthread_mutex_unlock(&s->mu);
        return xd_respond_error(conn, 500, "RUNTIME_ERROR", "out of memory");
    }
    at->session = s;
    at->pipe_mode = mode != NULL && strcmp(mode, "0") == 0;
    snprintf(at->term, sizeof(at->term), "%s", term != NULL ? term : "xterm-256color");
    at->rows = parse_dimension(MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "rows"),
                               XD_PTY_DEFAULT_ROWS);
    at->cols = parse_dimension(MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "cols"),
                               XD_PTY_DEFAULT_COLS);
    at->has_since = parse_decimal(MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "since"),
                                  &at->since);
    r->pty_attach = at;
    MHD_add_response_header(resp, MHD_HTTP_HEADER_UPGRADE, "websocket");
    MHD_add_response_header(resp, "Sec-WebSocket-Accept", accept);
    enum MHD_Result ret = MHD_queue_response(conn, MHD_HTTP_SWITCHING_PROTOCOLS, resp);
    MHD_destroy_response(resp);
    return ret;
}

void xd_pty_request_done(xd_req *r)
{
    xd_pty_attach *at = r->pty_attach;
    if (at == NULL)
        return;
    r->pty_attach = NULL;
    if (!at->upgraded) {
        pthread_mutex_lock(&at->session->mu);
        at->session->claims--;
        pthread_mutex_unlock(&at->session->mu);
    }
    xd_pty_unref(at->session);
    free(at);
}

/* DELETE: SIGKILL to the process group (and the terminal's foreground group, where the
 * shell's jobs run) happens in the session's thread once it sees `closing`. */
static enum MHD_Result pty_delete(struct MHD_Connection *conn, xd_pty *s)
{
    if (!xd_pty_unlist(s))
        return xd_respond_error(conn, 404, "CONTEXT_NOT_FOUND", "pty session %s not found", s->id);
    return xd_respond_empty(conn, 200);
}

enum MHD_Result xd_pty_route(struct MHD_Connection *conn, xd_req *r, const char *url,
                             const char *method, bool *matched)
{
    *matched = strcmp(url, "/pty") == 0 || strncmp(url, "/pty/", 5) == 0;
    if (!*matched)
        return MHD_NO;
    bool get = strcmp(method, "GET") == 0;
    if (strcmp(url, "/pty") == 0)
        return strcmp(method, "POST") == 0
                   ? pty_create(conn, r)
                   : xd_respond_error(conn, 405, "METHOD_NOT_ALLOWED", "use POST /pty");
    char id[MOAT_UUID_STR_LEN];
    const char *rest = url + 5;
    size_t n = strcspn(rest, "/");
    if (n == 0 || n >= sizeof(id))
        return xd_respond_error(conn, 404, "CONTEXT_NOT_FOUND", "pty session not found");
    memcpy(id, rest, n);
    id[n] = '\0';
    rest += n;
    xd_pty *s = xd_pty_find(id);
    if (s == NULL)
        return xd_respond_error(conn, 404, "CONTEXT_NOT_FOUND", "pty session %s not found", id);
    enum MHD_Result ret;
    if (get && strcmp(rest, "") == 0)
        ret = pty_status(conn, s);
    else if (strcmp(method, "DELETE") == 0 && strcmp(rest, "") == 0)
        ret = pty_delete(conn, s);
    else if (get && strcmp(rest, "/ws") == 0)
        ret = pty_attach(conn, r, s);
    else if (xd_pty_is_stdin(url, method) && r->pty_stdin != NULL)
        ret = xd_pty_stdin_done(conn, r);
    else
        ret = xd_respond_not_found(conn);
    xd_pty_unref(s);
    return ret;
}

void xd_pty_shutdown(void)
{
    for (;;) {
        pthread_mutex_lock(&table_lock);
        xd_pty *s = table;
        if (s != NULL) {
            pthread_mutex_lock(&s->mu);
            s->refs++;
            pthread_mutex_unlock(&s->mu);
        }
        pthread_mutex_unlock(&table_lock);
        if (s == NULL)
            break;
        xd_pty_unlist(s);
        xd_pty_unref(s);
    }
    pthread_mutex_lock(&table_lock);
    while (threads_live > 0)
        pthread_cond_wait(&threads_done, &table_lock);
    pthread_mutex_unlock(&table_lock);
}
