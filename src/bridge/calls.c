/* execd's one-answer calls (sessions, interrupt, status, logs, file metadata)
 * and the streamed file transfers. */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum call_kind { CALL_DONE, CALL_SESSION, CALL_STATUS, CALL_LOGS, CALL_STAT, CALL_LIST };

typedef void (*any_fn)(void);

typedef struct call {
    enum call_kind kind;
    any_fn cb;
    void *ud;
    uint64_t cursor;
} call;

static bool blank(const char *s)
{
    if (s == NULL)
        return true;
    for (; *s; s++)
        if (*s != ' ' && *s != '\t' && *s != '\r' && *s != '\n')
            return false;
    return true;
}

static moat_err need(const char *what, const char *v, moat_status *st)
{
    if (!blank(v))
        return MOAT_OK;
    moat_status_set(st, MOAT_CODE_INVALID_ARGUMENT, "missing_argument", "%s must not be blank",
                    what);
    return MOAT_E_INVAL;
}

/* "/prefix" + escaped a + mid + escaped b + suffix; any of them may be NULL. */
static char *build_path(const char *prefix, const char *a, const char *mid, const char *b,
                        const char *suffix)
{
    char *ea = a != NULL ? moat__escape(a) : NULL;
    char *eb = b != NULL ? moat__escape(b) : NULL;
    size_t n = strlen(prefix) + (ea ? strlen(ea) : 0) + (mid ? strlen(mid) : 0) +
               (eb ? strlen(eb) : 0) + (suffix ? strlen(suffix) : 0) + 1;
    char *p = malloc(n);
    if (p != NULL)
        snprintf(p, n, "%s%s%s%s%s", prefix, ea ? ea : "", mid ? mid : "", eb ? eb : "",
                 suffix ? suffix : "");
    curl_free(ea);
    curl_free(eb);
    return p;
}

/* These answers carry no output text: a \u0000 in them is refused. */
static cJSON *parse_body(bridge_req *r)
{
    return moat_json_parse((const char *)r->body.data, r->body.len, MOAT_JSON_NUL_REJECT);
}

static void bad_answer(moat_status *st, const char *what)
{
    moat_status_set(st, MOAT_CODE_INTERNAL, "execd_bad_answer", "execd's answer to %s is not %s",
                    "the call", what);
}

static const char *sget(const cJSON *o, const char *k)
{
    const char *v = moat_json_str(o, k, NULL);
    return v != NULL ? v : "";
}

static int64_t time_ms(const cJSON *o, const char *k)
{
    int64_t ms = 0;
    const char *s = sget(o, k);
    if (*s && moat_time_parse_iso8601(s, &ms) == MOAT_OK)
        return ms;
    return 0;
}

/* execd writes permission bits as octal digits read as decimal: 755 → 0755. */
static uint32_t octal_digits(int64_t v)
{
    uint32_t out = 0, shift = 0;
    if (v < 0)
        return 0;
    while (v > 0 && shift < 12) {
        int d = (int)(v % 10);
        if (d > 7)
            return 0;
        out |= (uint32_t)d << shift;
        shift += 3;
        v /= 10;
    }
    return out;
}

static bool file_info(const cJSON *o, moat_bridge_file_info *fi)
{
    if (!cJSON_IsObject(o))
        return false;
    memset(fi, 0, sizeof(*fi));
    fi->path = sget(o, "path");
    const char *t = sget(o, "type");
    fi->type = strcmp(t, "file") == 0        ? MOAT_BRIDGE_FILE_REGULAR
               : strcmp(t, "directory") == 0 ? MOAT_BRIDGE_FILE_DIRECTORY
               : strcmp(t, "symlink") == 0   ? MOAT_BRIDGE_FILE_SYMLINK
               : *t                          ? MOAT_BRIDGE_FILE_OTHER
                                             : MOAT_BRIDGE_FILE_UNSPECIFIED;
    /* cJSON numbers are doubles: sizes are exact up to 2^53 bytes (8 PiB). */
    int64_t size = 0, mode = 0;
    fi->size = moat_json_int(o, "size", &size) && size > 0 ? (uint64_t)size : 0;
    fi->mode = moat_json_int(o, "mode", &mode) ? octal_digits(mode) : 0;
    fi->owner = sget(o, "owner");
    fi->group = sget(o, "group");
    fi->modified_at_ms = time_ms(o, "modified_at");
    return true;
}

static void call_done(bridge_req *r, CURLcode rc)
{
    call *c = r->owner;
    moat_status st;
    moat__req_fail_status(r, rc, &st);
    if (c->kind == CALL_LOGS && rc == CURLE_WRITE_ERROR && r->body_full && r->http_status == 200) {
        moat_status_clear(&st); /* capped read: the caller continues from next_cursor */
    }
    cJSON *j = NULL;
    bool ok = st.code == MOAT_CODE_OK;
    if (ok && (c->kind == CALL_SESSION || c->kind == CALL_STATUS || c->kind == CALL_STAT ||
               c->kind == CALL_LIST)) {
        j = parse_body(r);
        if (j == NULL) {
            bad_answer(&st, "JSON");
            ok = false;
        }
    }
    switch (c->kind) {
    case CALL_DONE:
        ((moat_bridge_done_fn)c->cb)(c->ud, &st);
        break;
    case CALL_SESSION: {
        const char *id = ok ? sget(j, "session_id") : "";
        if (ok && !*id) {
            bad_answer(&st, "a session id");
            ok = false;
        }
        ((moat_bridge_session_fn)c->cb)(c->ud, &st, ok ? id : NULL);
        break;
    }
    case CALL_STATUS: {
        moat_bridge_cmd_status cs = {0};
        if (ok) {
            cs.execution_id = sget(j, "id");
            cs.content = sget(j, "content");
            cs.running = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "running"));
            int64_t code = 0;
            cs.exit_known = moat_json_int(j, "exit_code", &code);
            cs.exit_code = (int32_t)code;
            cs.error = sget(j, "error");
            cs.started_at_ms = time_ms(j, "started_at");
            cs.finished_at_ms = time_ms(j, "finished_at");
        }
        ((moat_bridge_status_fn)c->cb)(c->ud, &st, ok ? &cs : NULL);
        break;
    }
    case CALL_LOGS: {
        uint64_t next = c->cursor + r->body.len;
        if (r->has_tail_cursor && !r->body_full)
            next = r->tail_cursor;
        ((moat_bridge_logs_fn)c->cb)(c->ud, &st, ok ? r->body.data : NULL, ok ? r->body.len : 0,
                                     ok ? next : c->cursor);
        break;
    }
    case CALL_STAT: {
        /* {"<path>": FileInfo} */
        moat_bridge_file_info fi;
        const cJSON *v = cJSON_IsObject(j) ? j->child : NULL;
        if (ok && !file_info(v, &fi)) {
            bad_answer(&st, "file info");
            ok = false;
        }
        ((moat_bridge_stat_fn)c->cb)(c->ud, &st, ok ? &fi : NULL);
        break;
    }
    case CALL_LIST: {
        size_t n = ok && cJSON_IsArray(j) ? (size_t)cJSON_GetArraySize(j) : 0;
        moat_bridge_file_info *fis = n ? calloc(n, sizeof(*fis)) : NULL;
        size_t k = 0;
        if (ok && !cJSON_IsArray(j)) {
            bad_answer(&st, "a list");
            ok = false;
        } else if (n > 0 && fis == NULL) {
            moat_status_set(&st, MOAT_CODE_RESOURCE_EXHAUSTED, "no_memory", "out of memory");
            ok = false;
        }
        const cJSON *it = ok ? j->child : NULL;
        for (; it != NULL && k < n; it = it->next)
            if (file_info(it, &fis[k]))
                k++;
        ((moat_bridge_list_fn)c->cb)(c->ud, &st, ok ? fis : NULL, ok ? k : 0);
        free(fis);
        break;
    }
    }
    cJSON_Delete(j);
    free(c);
}

static moat_err start_call(moat_bridge *b, const moat_bridge_endpoint *ep, const char *method,
                           char *path, const char *body, enum call_kind kind, any_fn cb, void *ud,
                           uint64_t cursor, moat_status *st)
{
    if (cb == NULL) {
        free(path);
        moat_status_set(st, MOAT_CODE_INVALID_ARGUMENT, "no_callback", "a callback is required");
        return MOAT_E_INVAL;
    }
    call *c = calloc(1, sizeof(*c));
    if (path == NULL || c == NULL) {
        free(path);
        free(c);
        moat_status_set(st, MOAT_CODE_RESOURCE_EXHAUSTED, "no_memory", "out of memory");
        return MOAT_E_NOMEM;
    }
    c->kind = kind;
    c->cb = cb;
    c->ud = ud;
    c->cursor = cursor;
    bridge_req *r = moat__req_new(b, ep, method, path, body, st);
    free(path);
    if (r == NULL) {
        free(c);
        return MOAT_E_INVAL;
    }
    r->hdrs = curl_slist_append(r->hdrs, "Accept: application/json");
    r->owner = c;
    r->done = call_done;
    if (moat__req_start(r, st) != MOAT_OK) {
        free(c);
        return MOAT_E_IO;
    }
    return MOAT_OK;
}

/* Prints and deletes j: the body text, or NULL when j is NULL or memory ran
 * out. Free with cJSON_free. */
static char *dump(cJSON *j)
{
    char *s = j != NULL ? cJSON_PrintUnformatted(j) : NULL;
    cJSON_Delete(j);
    return s;
}

/* Adds a string member; on failure deletes obj and returns NULL, so that
 * calls chain to a NULL that dump() turns into "out of memory". */
static cJSON *with_string(cJSON *obj, const char *key, const char *value)
{
    if (obj != NULL && cJSON_AddStringToObject(obj, key, value) == NULL) {
        cJSON_Delete(obj);
        return NULL;
    }
    return obj;
}

/* Adds item under key (taking it); on failure deletes both and returns NULL. */
static cJSON *with_item(cJSON *obj, const char *key, cJSON *item)
{
    if (obj == NULL || item == NULL || !cJSON_AddItemToObject(obj, key, item)) {
        cJSON_Delete(obj);
        cJSON_Delete(item);
        return NULL;
    }
    return obj;
}

static moat_err start_json_call(moat_bridge *b, const moat_bridge_endpoint *ep, const char *method,
                                char *path, cJSON *body, moat_bridge_done_fn cb, void *ud,
                                moat_status *st)
{
    char *s = dump(body);
    if (s == NULL) {
        free(path);
        moat_status_set(st, MOAT_CODE_RESOURCE_EXHAUSTED, "no_memory", "out of memory");
        return MOAT_E_NOMEM;
    }
    moat_err err = start_call(b, ep, method, path, s, CALL_DONE, (any_fn)cb, ud, 0, st);
    cJSON_free(s);
    return err;
}

moat_err moat_bridge_create_session(moat_bridge *b, const moat_bridge_endpoint *ep, const char *cwd,
                                    moat_bridge_session_fn cb, void *ud, moat_status *st)
{
    char *body = NULL;
    if (cwd != NULL && *cwd) {
        body = dump(with_string(cJSON_CreateObject(), "cwd", cwd));
        if (body == NULL) {
            moat_status_set(st, MOAT_CODE_RESOURCE_EXHAUSTED, "no_memory", "out of memory");
            return MOAT_E_NOMEM;
        }
    }
    moat_err err =
        start_call(b, ep, "POST", strdup("/session"), body, CALL_SESSION, (any_fn)cb, ud, 0, st);
    cJSON_free(body);
    return err;
}

moat_err moat_bridge_create_pty(moat_bridge *b, const moat_bridge_endpoint *ep, const char *command,
                                const char *cwd, moat_bridge_session_fn cb, void *ud,
                                moat_status *st)
{
    cJSON *o = cJSON_CreateObject();
    if (command != NULL && *command)
        o = with_string(o, "command", command);
    if (cwd != NULL && *cwd)
        o = with_string(o, "cwd", cwd);
    char *body = dump(o);
    if (body == NULL) {
        moat_status_set(st, MOAT_CODE_RESOURCE_EXHAUSTED, "no_memory", "out of memory");
        return MOAT_E_NOMEM;
    }
    moat_err err =
        start_call(b, ep, "POST", strdup("/pty"), body, CALL_SESSION, (any_fn)cb, ud, 0, st);
    cJSON_free(body);
    return err;
}

/* DELETE <prefix><id>, id named what in a refusal. */
static moat_err delete_by_id(moat_bridge *b, const moat_bridge_endpoint *ep, const char *what,
                             const char *prefix, const char *id, moat_bridge_done_fn cb, void *ud,
                             moat_status *st)
{
    if (need(what, id, st) != MOAT_OK)
        return MOAT_E_INVAL;
    return start_call(b, ep, "DELETE", build_path(prefix, id, NULL, NULL, NULL), NULL, CALL_DONE,
                      (any_fn)cb, ud, 0, st);
}

moat_err moat_bridge_delete_session(moat_bridge *b, const moat_bridge_endpoint *ep,
                                    const char *session_id, moat_bridge_done_fn cb, void *ud,
                                    moat_status *st)
{
    return delete_by_id(b, ep, "session_id", "/session/", session_id, cb, ud, st);
}

moat_err moat_bridge_delete_pty(moat_bridge *b, const moat_bridge_endpoint *ep,
                                const char *session_id, moat_bridge_done_fn cb, void *ud,
                                moat_status *st)
{
    return delete_by_id(b, ep, "session_id", "/pty/", session_id, cb, ud, st);
}

moat_err moat_bridge_interrupt(moat_bridge *b, const moat_bridge_endpoint *ep,
                               const char *execution_id, moat_bridge_done_fn cb, void *ud,
                               moat_status *st)
{
    return delete_by_id(b, ep, "execution_id", "/command?id=", execution_id, cb, ud, st);
}

moat_err moat_bridge_command_status(moat_bridge *b, const moat_bridge_endpoint *ep,
                                    const char *execution_id, moat_bridge_status_fn cb, void *ud,
                                    moat_status *st)
{
    if (need("execution_id", execution_id, st) != MOAT_OK)
        return MOAT_E_INVAL;
    return start_call(b, ep, "GET", build_path("/command/status/", execution_id, NULL, NULL, NULL),
                      NULL, CALL_STATUS, (any_fn)cb, ud, 0, st);
}

moat_err moat_bridge_command_logs(moat_bridge *b, const moat_bridge_endpoint *ep,
                                  const char *execution_id, uint64_t cursor, moat_bridge_logs_fn cb,
                                  void *ud, moat_status *st)
{
    if (need("execution_id", execution_id, st) != MOAT_OK)
        return MOAT_E_INVAL;
    char num[32];
    snprintf(num, sizeof(num), "/logs?cursor=%llu", (unsigned long long)cursor);
    return start_call(b, ep, "GET", build_path("/command/", execution_id, num, NULL, NULL), NULL,
                      CALL_LOGS, (any_fn)cb, ud, cursor, st);
}

moat_err moat_bridge_stat(moat_bridge *b, const moat_bridge_endpoint *ep, const char *path,
                          moat_bridge_stat_fn cb, void *ud, moat_status *st)
{
    if (need("path", path, st) != MOAT_OK)
        return MOAT_E_INVAL;
    return start_call(b, ep, "GET", build_path("/files/info?path=", path, NULL, NULL, NULL), NULL,
                      CALL_STAT, (any_fn)cb, ud, 0, st);
}

moat_err moat_bridge_list(moat_bridge *b, const moat_bridge_endpoint *ep, const char *path,
                          uint32_t depth, moat_bridge_list_fn cb, void *ud, moat_status *st)
{
    if (need("path", path, st) != MOAT_OK)
        return MOAT_E_INVAL;
    char num[32];
    snprintf(num, sizeof(num), "&depth=%u", depth ? depth : 1u);
    return start_call(b, ep, "GET", build_path("/directories/list?path=", path, num, NULL, NULL),
                      NULL, CALL_LIST, (any_fn)cb, ud, 0, st);
}

moat_err moat_bridge_remove(moat_bridge *b, const moat_bridge_endpoint *ep, const char *path,
                            bool recursive, moat_bridge_done_fn cb, void *ud, moat_status *st)
{
    if (need("path", path, st) != MOAT_OK)
        return MOAT_E_INVAL;
    return start_call(
        b, ep, "DELETE",
        build_path(recursive ? "/directories?path=" : "/files?path=", path, NULL, NULL, NULL), NULL,
        CALL_DONE, (any_fn)cb, ud, 0, st);
}

moat_err moat_bridge_move(moat_bridge *b, const moat_bridge_endpoint *ep, const char *src,
                          const char *dest, moat_bridge_done_fn cb, void *ud, moat_status *st)
{
    if (need("src", src, st) != MOAT_OK || need("dest", dest, st) != MOAT_OK)
        return MOAT_E_INVAL;
    cJSON *pair = with_string(with_string(cJSON_CreateObject(), "src", src), "dest", dest);
    cJSON *list = cJSON_CreateArray();
    if (list == NULL || pair == NULL || !cJSON_AddItemToArray(list, pair)) {
        cJSON_Delete(list);
        cJSON_Delete(pair);
        list = NULL;
    }
    return start_json_call(b, ep, "POST", strdup("/files/mv"), list, cb, ud, st);
}

/* {"mode", "owner"?, "group"?}, or NULL when out of memory. */
static cJSON *perm(uint32_t mode, const char *owner, const char *group)
{
    /* execd takes permission bits as octal digits read as decimal: 0755 → 755 */
    double digits = ((mode >> 6) & 7) * 100 + ((mode >> 3) & 7) * 10 + (mode & 7);
    cJSON *p = cJSON_CreateObject();
    if (p != NULL && cJSON_AddNumberToObject(p, "mode", digits) == NULL) {
        cJSON_Delete(p);
        return NULL;
    }
    if (owner != NULL && *owner)
        p = with_string(p, "owner", owner);
    if (group != NULL && *group)
        p = with_string(p, "group", group);
    return p;
}

moat_err moat_bridge_mkdir(moat_bridge *b, const moat_bridge_endpoint *ep, const char *path,
                           uint32_t mode, moat_bridge_done_fn cb, void *ud, moat_status *st)
{
    if (need("path", path, st) != MOAT_OK)
        return MOAT_E_INVAL;
    cJSON *j = with_item(cJSON_CreateObject(), path, perm(mode ? mode : 0755, NULL, NULL));
    return start_json_call(b, ep, "POST", strdup("/directories"), j, cb, ud, st);
}

moat_err moat_bridge_chmod(moat_bridge *b, const moat_bridge_endpoint *ep, const char *path,
                           uint32_t mode, const char *owner, const char *group,
                           moat_bridge_done_fn cb, void *ud, moat_status *st)
{
    if (need("path", path, st) != MOAT_OK)
        return MOAT_E_INVAL;
    cJSON *j = with_item(cJSON_CreateObject(), path, perm(mode, owner, group));
    return start_json_call(b, ep, "POST", strdup("/files/permissions"), j, cb, ud, st);
}

/* ------------------------------------------------------------ transfers */

struct moat_bridge_xfer {
    bridge_req *r;
    bool upload;
    bool write_at; /* POST /files/write: a 404 from a foreign execd is UNIMPLEMENTED */
    moat_bridge_download_cbs dl;
    moat_bridge_upload_cbs ul;
    uint64_t offset; /* file offset of the next byte delivered */
    uint64_t skip;   /* bytes to drop first (a 200 answer to a Range request) */
    uint64_t left;   /* bytes still wanted; UINT64_MAX = to the end */
    bool paused;
    bool done;
    uint64_t written;
};

static size_t dl_write(bridge_req *r, const char *p, size_t n)
{
    moat_bridge_xfer *x = r->owner;
    if (x == NULL)
        return 0;
    size_t s = 0;
    if (r->http_status == 200 && x->skip > 0) {
        s = x->skip < n ? (size_t)x->skip : n;
        if (s == n) {
            x->skip -= s;
            return n;
        }
    }
    size_t give = n - s;
    if (x->left != UINT64_MAX && give > x->left)
        give = (size_t)x->left;
    if (give > 0 && !x->dl.on_chunk(x->dl.ud, x, x->offset, (const uint8_t *)p + s, give)) {
        x->paused = true; /* curl hands the same bytes again, skipped part included */
        return CURL_WRITEFUNC_PAUSE;
    }
    x->skip -= s;
    if (r->cancelled)
        return 0;
    x->offset += give;
    if (x->left != UINT64_MAX) {
        x->left -= give;
        if (x->left == 0) {
            r->stop_ok = true; /* all that was asked for: stop reading */
            return 0;
        }
    }
    return n;
}

static void xfer_done(bridge_req *r, CURLcode rc)
{
    moat_bridge_xfer *x = r->owner;
    if (x == NULL)
        return;
    moat_status st;
    if (r->stop_ok && rc == CURLE_WRITE_ERROR)
        moat_status_clear(&st);
    else
        moat__req_fail_status(r, rc, &st);
    /* moat-execd answers a missing file with FILE_NOT_FOUND; any other 404 (OpenSandbox's
     * execd: "404 page not found") means the endpoint itself is unknown there. */
    const char *code = moat_status_detail_get(&st, "execd_code");
    if (x->write_at && r->http_status == 404 && !r->cancelled &&
        (code == NULL || strcmp(code, "FILE_NOT_FOUND") != 0))
        moat_status_set(&st, MOAT_CODE_UNIMPLEMENTED, "execd_no_offset_writes",
                        "execd has no offset writes (POST /files/write answered 404)");
    x->done = true;
    if (x->upload)
        x->ul.on_done(x->ul.ud, x, &st, x->written);
    else
        x->dl.on_done(x->dl.ud, x, &st);
    free(x);
}

/* The common start of a transfer: checks, then the request to target (a path
 * the caller built; NULL means it could not be built) with its xfer. */
static moat_bridge_xfer *xfer_open(moat_bridge *b, const moat_bridge_endpoint *ep,
                                   const char *method, const char *target, moat_status *st)
{
    moat_bridge_xfer *x = target != NULL ? calloc(1, sizeof(*x)) : NULL;
    if (x == NULL) {
        moat_status_set(st, MOAT_CODE_RESOURCE_EXHAUSTED, "no_memory", "out of memory");
        return NULL;
    }
    x->r = moat__req_new(b, ep, method, target, NULL, st);
    if (x->r == NULL) {
        free(x);
        return NULL;
    }
    return x;
}

/* A transfer may take as long as it keeps moving: no overall timeout, but the
 * bridge's idle time with no byte either way ends it. */
static moat_err xfer_start(moat_bridge *b, moat_bridge_xfer *x, moat_bridge_xfer **out,
                           moat_status *st)
{
    bridge_req *r = x->r;
    long idle_s = (long)((b->cfg.idle_timeout_ms + 999) / 1000);
    curl_easy_setopt(r->easy, CURLOPT_TIMEOUT_MS, 0L);
    curl_easy_setopt(r->easy, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(r->easy, CURLOPT_LOW_SPEED_TIME, idle_s);
    r->owner = x;
    r->done = xfer_done;
    if (moat__req_start(r, st) != MOAT_OK) {
        free(x);
        return MOAT_E_IO;
    }
    *out = x;
    return MOAT_OK;
}

static bool xfer_args_ok(const char *path, bool have_cbs, moat_status *st)
{
    if (need("path", path, st) != MOAT_OK)
        return false;
    if (!have_cbs) {
        moat_status_set(st, MOAT_CODE_INVALID_ARGUMENT, "no_callback", "callbacks are required");
        return false;
    }
    return true;
}

moat_err moat_bridge_download(moat_bridge *b, const moat_bridge_endpoint *ep, const char *path,
                              uint64_t offset, uint64_t length, const moat_bridge_download_cbs *cbs,
                              moat_bridge_xfer **out, moat_status *st)
{
    if (!xfer_args_ok(path, cbs != NULL && cbs->on_chunk != NULL && cbs->on_done != NULL, st))
        return MOAT_E_INVAL;
    char *p = build_path("/files/download?path=", path, NULL, NULL, NULL);
    moat_bridge_xfer *x = xfer_open(b, ep, "GET", p, st);
    free(p);
    if (x == NULL)
        return st->code == MOAT_CODE_RESOURCE_EXHAUSTED ? MOAT_E_NOMEM : MOAT_E_INVAL;
    bridge_req *r = x->r;
    x->dl = *cbs;
    x->offset = offset;
    x->skip = offset;
    x->left = length ? length : UINT64_MAX;
    if (offset > 0 || length > 0) {
        char range[80];
        if (length > 0)
            snprintf(range, sizeof(range), "Range: bytes=%llu-%llu", (unsigned long long)offset,
                     (unsigned long long)(offset + length - 1));
        else
            snprintf(range, sizeof(range), "Range: bytes=%llu-", (unsigned long long)offset);
        r->hdrs = curl_slist_append(r->hdrs, range);
    }
    r->write = dl_write;
    return xfer_start(b, x, out, st);
}

static size_t ul_read(char *buf, size_t size, size_t nitems, void *arg)
{
    moat_bridge_xfer *x = arg;
    size_t n = x->ul.on_read(x->ul.ud, x, (uint8_t *)buf, size * nitems);
    if (n == MOAT_BRIDGE_READ_PAUSE) {
        x->paused = true;
        return CURL_READFUNC_PAUSE;
    }
    if (n == MOAT_BRIDGE_READ_ABORT || n > size * nitems) {
        x->r->cancelled = true;
        return CURL_READFUNC_ABORT;
    }
    x->written += n;
    return n;
}

moat_err moat_bridge_upload(moat_bridge *b, const moat_bridge_endpoint *ep, const char *path,
                            uint32_t mode, const char *owner, const char *group,
                            const moat_bridge_upload_cbs *cbs, moat_bridge_xfer **out,
                            moat_status *st)
{
    if (!xfer_args_ok(path, cbs != NULL && cbs->on_read != NULL && cbs->on_done != NULL, st))
        return MOAT_E_INVAL;
    char *meta_s = dump(with_string(perm(mode ? mode : 0644, owner, group), "path", path));
    if (meta_s == NULL) {
        moat_status_set(st, MOAT_CODE_RESOURCE_EXHAUSTED, "no_memory", "out of memory");
        return MOAT_E_NOMEM;
    }
    moat_bridge_xfer *x = xfer_open(b, ep, "POST", "/files/upload", st);
    if (x == NULL) {
        cJSON_free(meta_s);
        return st->code == MOAT_CODE_RESOURCE_EXHAUSTED ? MOAT_E_NOMEM : MOAT_E_INVAL;
    }
    bridge_req *r = x->r;
    x->upload = true;
    x->ul = *cbs;
    r->mime = curl_mime_init(r->easy);
    curl_mimepart *m = curl_mime_addpart(r->mime);
    curl_mime_name(m, "metadata");
    curl_mime_filename(m, "metadata");
    curl_mime_type(m, "application/json");
    curl_mime_data(m, meta_s, CURL_ZERO_TERMINATED);
    cJSON_free(meta_s);
    curl_mimepart *f = curl_mime_addpart(r->mime);
    const char *base = strrchr(path, '/');
    curl_mime_name(f, "file");
    curl_mime_filename(f, base != NULL && base[1] ? base + 1 : path);
    curl_mime_type(f, "application/octet-stream");
    curl_mime_data_cb(f, -1, ul_read, NULL, NULL, x);
    curl_easy_setopt(r->easy, CURLOPT_POSTFIELDS, NULL);
    curl_easy_setopt(r->easy, CURLOPT_CUSTOMREQUEST, NULL);
    curl_easy_setopt(r->easy, CURLOPT_MIMEPOST, r->mime);
    return xfer_start(b, x, out, st);
}

moat_err moat_bridge_write_at(moat_bridge *b, const moat_bridge_endpoint *ep, const char *path,
                              uint64_t offset, const moat_bridge_upload_cbs *cbs,
                              moat_bridge_xfer **out, moat_status *st)
{
    if (!xfer_args_ok(path, cbs != NULL && cbs->on_read != NULL && cbs->on_done != NULL, st))
        return MOAT_E_INVAL;
    char off[32];
    snprintf(off, sizeof(off), "&offset=%llu", (unsigned long long)offset);
    char *p = build_path("/files/write?path=", path, off, NULL, NULL);
    moat_bridge_xfer *x = xfer_open(b, ep, "POST", p, st);
    free(p);
    if (x == NULL)
        return st->code == MOAT_CODE_RESOURCE_EXHAUSTED ? MOAT_E_NOMEM : MOAT_E_INVAL;
    bridge_req *r = x->r;
    x->upload = true;
    x->write_at = true;
    x->ul = *cbs;
    /* The raw bytes, chunked: the length is whatever on_read gives until it returns 0. */
    moat__req_chunked_body(r, ul_read, x);
    return xfer_start(b, x, out, st);
}

void moat_bridge_xfer_resume(moat_bridge_xfer *x)
{
    if (!x->paused || x->done)
        return;
    x->paused = false;
    moat__req_unpause(x->r);
}

void moat_bridge_xfer_cancel(moat_bridge_xfer *x)
{
    if (x->done)
        return;
    moat__req_cancel(x->r);
}
