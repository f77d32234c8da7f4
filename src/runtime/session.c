/* Sandbox sessions: the containers listed and owned, the busy set, get, list, renew, stop and
 * kill. Creating and restarting a sandbox is session_create.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <curl/curl.h>

#include "internal.h"

void moat__metric_session(moat_runtime *rt, const char *event, const char *session_id,
                          moat_code code, uint64_t started_ns)
{
    if (rt->cfg.metrics.session_event != NULL)
        rt->cfg.metrics.session_event(rt->cfg.metrics.ctx, event, session_id, code,
                                      moat_time_mono_ns() - started_ns);
}

void *moat__span_start(moat_runtime *rt, const char *name, const char *session_id)
{
    if (rt->cfg.tracer.span_start == NULL)
        return NULL;
    return rt->cfg.tracer.span_start(rt->cfg.tracer.ctx, name, session_id);
}

moat_code moat__span_end(moat_runtime *rt, void *span, moat_status *st)
{
    if (rt->cfg.tracer.span_end != NULL)
        rt->cfg.tracer.span_end(rt->cfg.tracer.ctx, span, st);
    return st->code;
}

moat_code moat__bad_uuid(moat_status *st, const char *field, const char *value)
{
    moat_status_set(st, MOAT_CODE_INVALID_ARGUMENT, "invalid_argument", "%s is not a UUID: '%.64s'",
                    field, value ? value : "(null)");
    moat_status_add_detail(st, "field", field);
    return st->code;
}

/* Appends item to arr; frees item when that fails (item NULL: an allocation already failed). */
bool moat__json_append(cJSON *arr, cJSON *item)
{
    if (cJSON_AddItemToArray(arr, item))
        return true;
    cJSON_Delete(item);
    return false;
}

/* ---- listing -------------------------------------------------------------------------------- */

/* Created: Unix seconds (list shape) or RFC 3339 text (inspect shape). Seconds must be an
 * integral number whose milliseconds fit int64_t; -1 otherwise. */
static int64_t created_ms(const cJSON *created)
{
    int64_t ms = 0;
    if (cJSON_IsNumber(created))
        return moat_json_int_value(created, &ms) && ms >= 0 && ms <= INT64_MAX / 1000 ? ms * 1000
                                                                                      : -1;
    if (cJSON_IsString(created) && moat_time_parse_iso8601(created->valuestring, &ms) == MOAT_OK)
        return ms;
    return -1;
}

/* The container's own name without the leading '/': inspect's Name, or the entry of the list's
 * Names with no other '/' (the others are legacy link aliases, "/other/alias"). "" when there is
 * none or it does not fit: no name moat makes comes near the size. */
static void own_name(const cJSON *entry, char *out, size_t cap)
{
    out[0] = '\0';
    const cJSON *names = moat__json_get(entry, "Names");
    const char *name = moat__json_str(entry, "Name");
    const cJSON *item;
    if (cJSON_IsArray(names)) {
        cJSON_ArrayForEach(item, names)
        {
            if (cJSON_IsString(item) && item->valuestring[0] == '/' &&
                strchr(item->valuestring + 1, '/') == NULL) {
                name = item->valuestring;
                break;
            }
        }
    }
    if (name != NULL && name[0] == '/' && strlen(name + 1) < cap)
        memcpy(out, name + 1, strlen(name + 1) + 1);
}

bool moat__parse_listed(const cJSON *entry, moat__listed *out)
{
    memset(out, 0, sizeof(*out));
    if (!cJSON_IsObject(entry))
        return false;
    const char *id = moat__json_str(entry, "Id");
    const cJSON *labels = moat__json_get(entry, "Labels");
    const cJSON *state = moat__json_get(entry, "State");
    if (labels == NULL) { /* inspect shape: Config.Labels */
        labels = moat__json_get(moat__json_get(entry, "Config"), "Labels");
    }
    if (id == NULL || id[0] == '\0' || strlen(id) >= sizeof(out->container_id) ||
        !cJSON_IsObject(labels))
        return false;
    const char *sid = moat__json_str(labels, LABEL_SESSION);
    const char *cid = moat__json_str(labels, LABEL_CHAT);
    const char *exp = moat__json_str(labels, LABEL_EXPIRES);
    if (sid == NULL || cid == NULL || exp == NULL)
        return false;
    if (moat_uuid_canonicalize(sid, out->session_id) != MOAT_OK ||
        moat_uuid_canonicalize(cid, out->chat_id) != MOAT_OK ||
        moat_time_parse_iso8601(exp, &out->label_expires_at_ms) != MOAT_OK)
        return false;
    out->created_at_ms = created_ms(moat__json_get(entry, "Created"));
    if (out->created_at_ms < 0)
        return false;
    snprintf(out->container_id, sizeof(out->container_id), "%s", id);
    const char *image = moat__json_str(entry, "Image");
    if (image == NULL)
        image = moat__json_str(moat__json_get(entry, "Config"), "Image");
    snprintf(out->image, sizeof(out->image), "%s", image ? image : "");
    const char *status = NULL;
    if (cJSON_IsString(state)) {
        status = state->valuestring;
        out->running = strcmp(status, "running") == 0;
    } else if (cJSON_IsObject(state)) { /* inspect shape */
        status = moat__json_str(state, "Status");
        out->running = cJSON_IsTrue(moat__json_get(state, "Running"));
    }
    out->never_started = status != NULL && strcmp(status, "created") == 0;
    const char *force_new = moat__json_str(labels, LABEL_FORCE_NEW);
    out->force_new = force_new != NULL && strcmp(force_new, "true") == 0;
    const char *pool = moat__json_str(labels, LABEL_POOL);
    out->pool = pool != NULL && strcmp(pool, "true") == 0;
    const char *managed = moat__json_str(labels, LABEL_MANAGED);
    out->managed = managed != NULL && strcmp(managed, "true") == 0;
    out->has_instance = moat__json_get(labels, LABEL_INSTANCE) != NULL;
    /* A value too long to copy whole stays "", which no valid instance equals. */
    const char *instance = moat__json_str(labels, LABEL_INSTANCE);
    if (instance != NULL && strlen(instance) < sizeof(out->instance))
        memcpy(out->instance, instance, strlen(instance) + 1);
    own_name(entry, out->name, sizeof(out->name));
    return true;
}

/* The ownership rule: why c is not this runtime's container, or NULL when it is. Labels alone
 * prove nothing (anyone with the engine can set them), so the name Docker keeps unique must
 * be the one this runtime gives its sessions as well. */
static const char *foreign_reason(const moat_runtime *rt, const moat__listed *c)
{
    if (!c->managed)
        return "not labelled moat.managed=true";
    if (rt->cfg.instance == NULL && c->has_instance)
        return "labelled moat.instance and this runtime has no instance";
    if (rt->cfg.instance != NULL &&
        (!c->has_instance || strcmp(c->instance, rt->cfg.instance) != 0))
        return "not labelled with this runtime's moat.instance";
    char want[MOAT__CONTAINER_NAME_MAX];
    snprintf(want, sizeof(want), "%s%s", rt->cfg.container_name_prefix, c->session_id);
    if (strcmp(c->name, want) != 0)
        return "name is not container_name_prefix + session_id";
    return NULL;
}

static uint64_t fnv1a(const char *text)
{
    uint64_t h = 14695981039346656037ull;
    for (const unsigned char *p = (const unsigned char *)text; *p != '\0'; p++)
        h = (h ^ *p) * 1099511628211ull;
    return h;
}

/* Logs a container left alone, once per container id: every sweep sees the same ones again. */
static void note_foreign(moat_runtime *rt, const moat__listed *c, const char *why)
{
    uint64_t h = fnv1a(c->container_id);
    pthread_mutex_lock(&rt->foreign_mu);
    bool logged = false;
    for (size_t i = 0; i < rt->foreign_logged_count && !logged; i++)
        logged = rt->foreign_logged[i] == h;
    bool first_overflow = false;
    if (!logged && rt->foreign_logged_count < MOAT__FOREIGN_LOGGED_MAX) {
        rt->foreign_logged[rt->foreign_logged_count++] = h;
    } else if (!logged) {
        first_overflow = !rt->foreign_log_full;
        rt->foreign_log_full = true;
        logged = true;
    }
    pthread_mutex_unlock(&rt->foreign_mu);
    if (first_overflow)
        moat_log(MOAT_LOG_WARN, "foreign_containers_not_logged",
                 "count=%d msg=\"more containers that are not this runtime's are left alone "
                 "without a line each\"",
                 MOAT__FOREIGN_LOGGED_MAX);
    if (!logged)
        moat_log(MOAT_LOG_WARN, "foreign_container_ignored",
                 "container_id=%.12s name=%s session_id=%s why=\"%s\"", c->container_id, c->name,
                 c->session_id, why);
}

/* The ownership check every path runs before it returns or touches a container. */
static bool owned(moat_runtime *rt, const moat__listed *c)
{
    const char *why = foreign_reason(rt, c);
    if (why != NULL)
        note_foreign(rt, c, why);
    return why == NULL;
}

/* A pool slot's labels say nothing of its chat: its store row, written by the claim, does. */
static void bind_slot_to_chat(moat_runtime *rt, moat__listed *c)
{
    moat__row row;
    if (moat__store_get(rt->store, c->session_id, &row) != MOAT_OK) {
        c->unclaimed_slot = true;
        return;
    }
    memcpy(c->chat_id, row.chat_id, sizeof(c->chat_id));
    c->created_at_ms = row.created_at_ms;
    c->label_expires_at_ms = row.label_expires_at_ms;
}

static moat_code list_containers(moat_runtime *rt, const char *const *labels, size_t label_count,
                                 bool all, bool with_slots, moat__listed **out, size_t *count,
                                 size_t *skipped, moat_status *st)
{
    *out = NULL;
    *count = 0;
    if (skipped)
        *skipped = 0;
    cJSON *filters = cJSON_CreateObject();
    cJSON *label_arr = cJSON_AddArrayToObject(filters, "label");
    bool ok = label_arr != NULL;
    for (size_t i = 0; ok && i < label_count; i++)
        ok = moat__json_append(label_arr, cJSON_CreateString(labels[i]));
    ok = ok && moat__json_append(label_arr, cJSON_CreateString(LABEL_MANAGED "=true"));
    if (ok && rt->instance_filter[0] != '\0')
        ok = moat__json_append(label_arr, cJSON_CreateString(rt->instance_filter));
    char *text = ok ? cJSON_PrintUnformatted(filters) : NULL;
    cJSON_Delete(filters);
    CURL *h = curl_easy_init();
    char *escaped = (h && text) ? curl_easy_escape(h, text, 0) : NULL;
    cJSON_free(text);
    if (h)
        curl_easy_cleanup(h);
    if (escaped == NULL) {
        moat_status_set(st, MOAT_CODE_RESOURCE_EXHAUSTED, "out_of_memory", "out of memory");
        return st->code;
    }
    size_t plen = strlen(escaped) + 64;
    char *path = malloc(plen);
    if (path == NULL) {
        curl_free(escaped);
        moat_status_set(st, MOAT_CODE_RESOURCE_EXHAUSTED, "out_of_memory", "out of memory");
        return st->code;
    }
    snprintf(path, plen, "/containers/json?%sfilters=%s", all ? "all=1&" : "", escaped);
    curl_free(escaped);
    moat_docker_response resp;
    moat_code code = moat_runtime_docker_call(rt, "list", "GET", path, NULL, &resp, st);
    free(path);
    if (code != MOAT_CODE_OK) {
        moat_runtime_docker_response_free(&resp);
        return code;
    }
    const cJSON *doc = resp.json;
    if (!cJSON_IsArray(doc)) {
        moat_runtime_docker_response_free(&resp);
        moat_status_set(st, MOAT_CODE_INTERNAL, "docker_protocol",
                        "docker container list: answer is not a JSON array");
        return st->code;
    }
    size_t n = (size_t)cJSON_GetArraySize(doc);
    moat__listed *items = n ? calloc(n, sizeof(*items)) : NULL;
    if (n && items == NULL) {
        moat_runtime_docker_response_free(&resp);
        moat_status_set(st, MOAT_CODE_RESOURCE_EXHAUSTED, "out_of_memory", "out of memory");
        return st->code;
    }
    size_t kept = 0;
    const cJSON *entry;
    cJSON_ArrayForEach(entry, doc)
    {
        if (!moat__parse_listed(entry, &items[kept]) || !owned(rt, &items[kept])) {
            if (skipped)
                (*skipped)++;
            continue;
        }
        if (items[kept].pool)
            bind_slot_to_chat(rt, &items[kept]);
        if (with_slots || !items[kept].unclaimed_slot)
            kept++;
    }
    moat_runtime_docker_response_free(&resp);
    if (kept == 0) {
        free(items);
        items = NULL;
    }
    *out = items;
    *count = kept;
    return MOAT_CODE_OK;
}

moat_code moat__list(moat_runtime *rt, const char *const *labels, size_t label_count, bool all,
                     moat__listed **out, size_t *count, size_t *skipped, moat_status *st)
{
    return list_containers(rt, labels, label_count, all, false, out, count, skipped, st);
}

moat_code moat__list_with_slots(moat_runtime *rt, const char *const *labels, size_t label_count,
                                bool all, moat__listed **out, size_t *count, size_t *skipped,
                                moat_status *st)
{
    return list_containers(rt, labels, label_count, all, true, out, count, skipped, st);
}

/* ---- helpers -------------------------------------------------------------------------------- */

void moat__session_socket(moat_runtime *rt, const char *session_id, char *out, size_t cap)
{
    snprintf(out, cap, "%s/sessions/%s/execd.sock", rt->cfg.state_dir, session_id);
}

void moat__session_dir_remove(moat_runtime *rt, const char *session_id)
{
    char path[MOAT_RUNTIME_PATH_MAX];
    moat__session_socket(rt, session_id, path, sizeof(path));
    unlink(path);
    snprintf(path, sizeof(path), "%s/sessions/%s", rt->cfg.state_dir, session_id);
    moat__rundir_detach(path);
    moat__pool_slot_unbind(rt, session_id);
}

void moat__session_from_row(moat_runtime *rt, const moat__row *row, moat_session *out)
{
    memset(out, 0, sizeof(*out));
    memcpy(out->session_id, row->session_id, sizeof(out->session_id));
    memcpy(out->chat_id, row->chat_id, sizeof(out->chat_id));
    memcpy(out->container_id, row->container_id, sizeof(out->container_id));
    memcpy(out->image, row->image, sizeof(out->image));
    out->state = row->state;
    out->created_at_ms = row->created_at_ms;
    out->expires_at_ms = row->expires_at_ms;
    out->renewed = row->renewed;
    memcpy(out->end_reason, row->reason, sizeof(out->end_reason));
    out->ended_at_ms = row->ended_at_ms;
    memcpy(out->execd_token, row->execd_token, sizeof(out->execd_token));
    moat__session_socket(rt, row->session_id, out->execd_socket, sizeof(out->execd_socket));
}

static void fill_from_listed(moat_runtime *rt, const moat__listed *c, const moat__row *row,
                             moat_session *out)
{
    memset(out, 0, sizeof(*out));
    memcpy(out->session_id, c->session_id, sizeof(out->session_id));
    memcpy(out->chat_id, c->chat_id, sizeof(out->chat_id));
    memcpy(out->container_id, c->container_id, sizeof(out->container_id));
    memcpy(out->image, c->image, sizeof(out->image));
    out->state = c->running ? MOAT_SESSION_RUNNING : MOAT_SESSION_STOPPED;
    out->created_at_ms = c->created_at_ms;
    out->expires_at_ms = c->label_expires_at_ms;
    if (row != NULL && row->renewed) {
        out->expires_at_ms = row->expires_at_ms;
        out->renewed = true;
    }
    if (row != NULL)
        memcpy(out->execd_token, row->execd_token, sizeof(out->execd_token));
    if (!c->running)
        snprintf(out->end_reason, sizeof(out->end_reason), "exited");
    out->force_new = c->force_new;
    moat__session_socket(rt, c->session_id, out->execd_socket, sizeof(out->execd_socket));
}

void moat__row_from_listed(const moat__listed *c, moat__row *row)
{
    memset(row, 0, sizeof(*row));
    memcpy(row->session_id, c->session_id, sizeof(row->session_id));
    memcpy(row->chat_id, c->chat_id, sizeof(row->chat_id));
    memcpy(row->container_id, c->container_id, sizeof(row->container_id));
    memcpy(row->image, c->image, sizeof(row->image));
    row->created_at_ms = c->created_at_ms;
    row->label_expires_at_ms = c->label_expires_at_ms;
    row->expires_at_ms = c->label_expires_at_ms;
    row->state = MOAT_SESSION_RUNNING;
}

bool moat__busy_enter(moat_runtime *rt, const char *session_id)
{
    pthread_mutex_lock(&rt->busy_mu);
    bool ok = true;
    if (rt->busy_count == rt->busy_cap) {
        size_t cap = rt->busy_cap ? rt->busy_cap * 2 : 16;
        char(*grown)[MOAT_UUID_STR_LEN] = realloc(rt->busy, cap * sizeof(*grown));
        ok = grown != NULL;
        if (ok) {
            rt->busy = grown;
            rt->busy_cap = cap;
        }
    }
    if (ok)
        snprintf(rt->busy[rt->busy_count++], MOAT_UUID_STR_LEN, "%s", session_id);
    pthread_mutex_unlock(&rt->busy_mu);
    return ok;
}

void moat__busy_leave(moat_runtime *rt, const char *session_id)
{
    pthread_mutex_lock(&rt->busy_mu);
    for (size_t i = 0; i < rt->busy_count; i++) {
        if (strcmp(rt->busy[i], session_id) == 0) {
            memcpy(rt->busy[i], rt->busy[--rt->busy_count], MOAT_UUID_STR_LEN);
            break;
        }
    }
    pthread_mutex_unlock(&rt->busy_mu);
}

bool moat__busy_has(moat_runtime *rt, const char *session_id)
{
    pthread_mutex_lock(&rt->busy_mu);
    bool found = false;
    for (size_t i = 0; i < rt->busy_count && !found; i++)
        found = strcmp(rt->busy[i], session_id) == 0;
    pthread_mutex_unlock(&rt->busy_mu);
    return found;
}

/* Runs a create or a stop with its session in the busy set, so no sweep takes its container for
 * an orphan or a duplicate meanwhile. A malformed id goes through unmarked: op refuses it. */
bool moat__mark_busy(moat_runtime *rt, const char *session_id_in, char *session_id, moat_status *st)
{
    if (session_id_in == NULL || moat_uuid_canonicalize(session_id_in, session_id) != MOAT_OK) {
        session_id[0] = '\0';
        return true;
    }
    if (moat__busy_enter(rt, session_id))
        return true;
    moat_status_set(st, MOAT_CODE_RESOURCE_EXHAUSTED, "out_of_memory", "out of memory");
    moat_log(MOAT_LOG_WARN, "session_refused", "session_id=%s reason=out_of_memory", session_id);
    return false;
}

/* The session's container (any state), or NOT_FOUND. */
static moat_code find_container(moat_runtime *rt, const char *session_id, moat__listed *out,
                                moat_status *st)
{
    char filter[64];
    snprintf(filter, sizeof(filter), LABEL_SESSION "=%s", session_id);
    const char *labels[] = {filter, LABEL_CHAT, LABEL_EXPIRES};
    moat__listed *items;
    size_t n;
    moat_code code = moat__list(rt, labels, 3, true, &items, &n, NULL, st);
    if (code != MOAT_CODE_OK)
        return code;
    if (n == 0) {
        moat_status_set(st, MOAT_CODE_NOT_FOUND, "session_not_found", "no sandbox for session %s",
                        session_id);
        moat_status_add_detail(st, "session_id", session_id);
        return st->code;
    }
    /* Prefer a running one if several carry the id. */
    size_t pick = 0;
    for (size_t i = 0; i < n; i++)
        if (items[i].running)
            pick = i;
    *out = items[pick];
    free(items);
    return MOAT_CODE_OK;
}

moat_code moat_runtime_get(moat_runtime *rt, const char *session_id_in, moat_session *out,
                           moat_status *st)
{
    moat_status_clear(st);
    char session_id[MOAT_UUID_STR_LEN];
    if (session_id_in == NULL || moat_uuid_canonicalize(session_id_in, session_id) != MOAT_OK)
        return moat__bad_uuid(st, "session_id", session_id_in);
    moat__listed c;
    moat__row row;
    bool have_row = moat__store_get(rt->store, session_id, &row) == MOAT_OK;
    moat_code code = find_container(rt, session_id, &c, st);
    if (code == MOAT_CODE_OK) {
        fill_from_listed(rt, &c, have_row ? &row : NULL, out);
        return MOAT_CODE_OK;
    }
    if (code != MOAT_CODE_NOT_FOUND)
        return code;
    if (!have_row)
        return code;
    moat_status_clear(st);
    moat__session_from_row(rt, &row, out);
    if (out->state == MOAT_SESSION_RUNNING) {
        /* The store says running but Docker has no container: it vanished. */
        out->state = MOAT_SESSION_GONE;
    }
    return MOAT_CODE_OK;
}

static int find_row(const moat__row *rows, size_t n, const char *session_id)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(rows[i].session_id, session_id) == 0)
            return (int)i;
    return -1;
}

/* The running sessions from Docker's list and the store's rows, taken at generation gen. */
static moat_code list_from_engine(moat_runtime *rt, uint64_t gen, moat_session **out, size_t *count,
                                  moat_status *st)
{
    const char *labels[] = {LABEL_SESSION, LABEL_CHAT, LABEL_EXPIRES};
    moat__listed *items;
    size_t n;
    moat_code code = moat__list(rt, labels, 3, false, &items, &n, NULL, st);
    if (code == MOAT_CODE_OK && n == 0)
        moat__cache_put(rt, gen, NULL, 0);
    if (code != MOAT_CODE_OK || n == 0)
        return code;
    moat__row *rows = NULL;
    size_t row_count = 0;
    /* One query for all renewed expiries instead of one per container. */
    if (moat__store_list_running(rt->store, &rows, &row_count) != MOAT_OK)
        row_count = 0;
    moat_session *sessions = calloc(n, sizeof(*sessions));
    if (sessions == NULL) {
        free(items);
        free(rows);
        moat_status_set(st, MOAT_CODE_RESOURCE_EXHAUSTED, "out_of_memory", "out of memory");
        return st->code;
    }
    for (size_t i = 0; i < n; i++) {
        int r = row_count ? find_row(rows, row_count, items[i].session_id) : -1;
        fill_from_listed(rt, &items[i], r >= 0 ? &rows[r] : NULL, &sessions[i]);
    }
    free(items);
    free(rows);
    moat__cache_put(rt, gen, sessions, n);
    *out = sessions;
    *count = n;
    return MOAT_CODE_OK;
}

moat_code moat_runtime_list_active(moat_runtime *rt, moat_session **out, size_t *count,
                                   moat_status *st)
{
    moat_status_clear(st);
    *out = NULL;
    *count = 0;
    uint64_t gen;
    if (moat__cache_get(rt, out, count, &gen))
        return MOAT_CODE_OK;
    /* A burst of creates after the snapshot was dropped asks Docker once, not once each. */
    uint64_t t0 = moat_time_mono_ns();
    moat__list_flight *lead;
    moat_code code;
    bool joined = moat__list_join(rt, &lead, &code, out, count, st);
    if (!joined) {
        code = list_from_engine(rt, gen, out, count, st);
        moat__list_end(rt, lead, code, st, *out, *count);
    }
    moat_log(MOAT_LOG_DEBUG, "session_list", "joined=%s count=%zu code=%s list_us=%llu",
             joined ? "true" : "false", *count, moat_code_name(code),
             (unsigned long long)(moat_time_mono_ns() - t0) / 1000);
    return code;
}

moat_code moat_runtime_renew(moat_runtime *rt, const char *session_id_in, int64_t new_expires_at_ms,
                             moat_session *out, moat_status *st)
{
    uint64_t t0 = moat_time_mono_ns();
    moat_status_clear(st);
    char session_id[MOAT_UUID_STR_LEN];
    if (session_id_in == NULL || moat_uuid_canonicalize(session_id_in, session_id) != MOAT_OK)
        return moat__bad_uuid(st, "session_id", session_id_in);
    void *span = moat__span_start(rt, "runtime.renew", session_id);
    if (new_expires_at_ms <= moat_time_now_ms()) {
        moat_status_set(st, MOAT_CODE_INVALID_ARGUMENT, "invalid_argument",
                        "expires_at must be in the future");
        moat_status_add_detail(st, "field", "expires_at");
        return moat__span_end(rt, span, st);
    }
    moat__listed c;
    if (find_container(rt, session_id, &c, st) != MOAT_CODE_OK)
        return moat__span_end(rt, span, st);
    if (!c.running) {
        moat_status_set(st, MOAT_CODE_NOT_FOUND, "session_not_found",
                        "session %s has no running sandbox", session_id);
        moat_status_add_detail(st, "session_id", session_id);
        return moat__span_end(rt, span, st);
    }
    /* A container created before this store existed (or by an older moatd) is adopted first. */
    moat__row row;
    bool inserted;
    moat__row_from_listed(&c, &row);
    moat__store_insert_new(rt->store, &row, &inserted);
    moat_err err = moat__store_renew(rt->store, session_id, new_expires_at_ms);
    moat__cache_invalidate(rt);
    if (err == MOAT_E_STATE) {
        moat_status_set(st, MOAT_CODE_FAILED_PRECONDITION, "session_ending",
                        "session %s is being stopped or has ended", session_id);
        moat_status_add_detail(st, "session_id", session_id);
        return moat__span_end(rt, span, st);
    }
    if (err != MOAT_OK) {
        moat_status_set(st, MOAT_CODE_INTERNAL, "store_error", "session store write failed: %s",
                        moat_strerror(err));
        return moat__span_end(rt, span, st);
    }
    if (out != NULL) {
        if (moat__store_get(rt->store, session_id, &row) == MOAT_OK)
            fill_from_listed(rt, &c, &row, out);
        else
            fill_from_listed(rt, &c, NULL, out);
        out->expires_at_ms = new_expires_at_ms;
        out->renewed = true;
    }
    moat__metric_session(rt, "renewed", session_id, MOAT_CODE_OK, t0);
    return moat__span_end(rt, span, st);
}

moat_code moat__stop_remove(moat_runtime *rt, const char *container_id, moat_status *st)
{
    char path[200];
    moat_docker_response resp;
    snprintf(path, sizeof(path), "/containers/%s/stop?t=%d", container_id,
             rt->cfg.stop_timeout_seconds);
    moat_code code = moat_runtime_docker_call(rt, "stop", "POST", path, NULL, &resp, st);
    long http = resp.http_status;
    moat_runtime_docker_response_free(&resp);
    if (code == MOAT_CODE_NOT_FOUND)
        goto gone;
    if (code != MOAT_CODE_OK)
        goto failed;
    snprintf(path, sizeof(path), "/containers/%s?force=1&v=1", container_id);
    code = moat_runtime_docker_call(rt, "remove", "DELETE", path, NULL, &resp, st);
    http = resp.http_status;
    moat_runtime_docker_response_free(&resp);
    /* 404: already gone; 409: Docker is already removing it. */
    if (code == MOAT_CODE_OK || code == MOAT_CODE_NOT_FOUND || http == 409)
        goto gone;
failed:
    snprintf(st->reason, sizeof(st->reason), "sandbox_stop_failed");
    moat_status_add_detail(st, "container_id", container_id);
    return st->code;
gone:
    moat__cache_forget(rt, NULL, container_id);
    moat_status_clear(st);
    return MOAT_CODE_OK;
}

/* Inspects a container and checks it the way moat__list checks a listed one. OK with *out
 * filled when it is this runtime's; NOT_FOUND (reason sandbox_not_found) when Docker has no
 * such container; PERMISSION_DENIED (reason container_not_owned) when it is someone else's or
 * has no well-formed session labels. Reason sandbox_stop_failed for any other failure. */
static moat_code inspect_owned(moat_runtime *rt, const char *container_id, moat__listed *out,
                               moat_status *st)
{
    char path[160];
    snprintf(path, sizeof(path), "/containers/%s/json", container_id);
    moat_docker_response resp;
    moat_code code = moat_runtime_docker_call(rt, "inspect", "GET", path, NULL, &resp, st);
    bool mine = code == MOAT_CODE_OK && moat__parse_listed(resp.json, out) && owned(rt, out);
    moat_runtime_docker_response_free(&resp);
    if (code == MOAT_CODE_NOT_FOUND) {
        moat_status_set(st, MOAT_CODE_NOT_FOUND, "sandbox_not_found", "no container %.72s",
                        container_id);
    } else if (code != MOAT_CODE_OK) {
        snprintf(st->reason, sizeof(st->reason), "sandbox_stop_failed");
    } else if (!mine) {
        moat_status_set(st, MOAT_CODE_PERMISSION_DENIED, "container_not_owned",
                        "container %.72s is not a sandbox of this runtime", container_id);
    } else {
        return MOAT_CODE_OK;
    }
    moat_status_add_detail(st, "container_id", container_id);
    return st->code;
}

moat_code moat_runtime_stop_container(moat_runtime *rt, const char *container_id, moat_status *st)
{
    moat_status_clear(st);
    if (container_id == NULL || container_id[0] == '\0' ||
        strlen(container_id) >= MOAT_CONTAINER_ID_MAX ||
        strspn(container_id, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-") !=
            strlen(container_id)) {
        moat_status_set(st, MOAT_CODE_INVALID_ARGUMENT, "invalid_argument",
                        "container_id is malformed");
        moat_status_add_detail(st, "field", "container_id");
        return st->code;
    }
    moat__listed c;
    moat_code code = inspect_owned(rt, container_id, &c, st);
    if (code == MOAT_CODE_NOT_FOUND) {
        moat_status_clear(st);
        return MOAT_CODE_OK;
    }
    /* By the id Docker resolved: the caller's text may be a name or an id prefix. */
    return code == MOAT_CODE_OK ? moat__stop_remove(rt, c.container_id, st) : code;
}

static moat_code stop_session(moat_runtime *rt, const char *session_id_in, moat_status *st)
{
    uint64_t t0 = moat_time_mono_ns();
    moat_status_clear(st);
    char session_id[MOAT_UUID_STR_LEN];
    if (session_id_in == NULL || moat_uuid_canonicalize(session_id_in, session_id) != MOAT_OK)
        return moat__bad_uuid(st, "session_id", session_id_in);
    void *span = moat__span_start(rt, "runtime.stop", session_id);
    moat__listed c;
    memset(&c, 0, sizeof(c));
    moat__row row;
    moat_code code = MOAT_CODE_NOT_FOUND;
    /* The store knows the container of a session this runtime created or adopted, which saves
     * a list call. It is inspected and checked again before it is stopped: the row may be
     * from a runtime configured otherwise (another instance or prefix) on the same store. */
    if (moat__store_get(rt->store, session_id, &row) == MOAT_OK &&
        row.state == MOAT_SESSION_RUNNING && row.container_id[0] != '\0') {
        code = inspect_owned(rt, row.container_id, &c, st);
        if (code == MOAT_CODE_OK && strcmp(c.session_id, session_id) != 0)
            code = MOAT_CODE_NOT_FOUND;
        if (code == MOAT_CODE_PERMISSION_DENIED)
            code = MOAT_CODE_NOT_FOUND;
    }
    if (code == MOAT_CODE_NOT_FOUND)
        code = find_container(rt, session_id, &c, st);
    if (code == MOAT_CODE_OK)
        code = moat__stop_remove(rt, c.container_id, st);
    else if (code == MOAT_CODE_NOT_FOUND) {
        moat_status_clear(st);
        code = MOAT_CODE_OK;
    } else
        snprintf(st->reason, sizeof(st->reason), "sandbox_stop_failed");
    if (code != MOAT_CODE_OK)
        return moat__span_end(rt, span, st);
    bool have_row = moat__store_get(rt->store, session_id, &row) == MOAT_OK;
    if (have_row && row.state == MOAT_SESSION_RUNNING)
        moat__store_finish(rt->store, session_id, MOAT_SESSION_STOPPED, "stopped",
                           moat_time_now_ms());
    moat__session_dir_remove(rt, session_id);
    const char *chat_id = have_row ? row.chat_id : c.chat_id; /* "" when neither knows it */
    if (chat_id[0] != '\0')
        moat__workspace_detach_idle(rt, chat_id);
    moat__cache_forget(rt, session_id, NULL);
    moat__metric_session(rt, "stopped", session_id, MOAT_CODE_OK, t0);
    return moat__span_end(rt, span, st);
}

moat_code moat_runtime_stop(moat_runtime *rt, const char *session_id_in, moat_status *st)
{
    char session_id[MOAT_UUID_STR_LEN];
    moat_status_clear(st);
    if (!moat__mark_busy(rt, session_id_in, session_id, st))
        return st->code;
    moat_code code = stop_session(rt, session_id_in, st);
    if (session_id[0] != '\0')
        moat__busy_leave(rt, session_id);
    return code;
}

moat_code moat_runtime_kill(moat_runtime *rt, const char *session_id_in, const char *signal_name,
                            moat_status *st)
{
    moat_status_clear(st);
    char session_id[MOAT_UUID_STR_LEN];
    if (session_id_in == NULL || moat_uuid_canonicalize(session_id_in, session_id) != MOAT_OK)
        return moat__bad_uuid(st, "session_id", session_id_in);
    const char *alnum = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    if (signal_name == NULL || signal_name[0] == '\0' || strlen(signal_name) > 16 ||
        strspn(signal_name, alnum) != strlen(signal_name)) {
        moat_status_set(st, MOAT_CODE_INVALID_ARGUMENT, "invalid_argument",
                        "signal must be a signal name or number");
        moat_status_add_detail(st, "field", "signal");
        return st->code;
    }
    moat__listed c;
    if (find_container(rt, session_id, &c, st) != MOAT_CODE_OK)
        return st->code;
    char path[200];
    snprintf(path, sizeof(path), "/containers/%s/kill?signal=%s", c.container_id, signal_name);
    if (moat_runtime_docker_call(rt, "kill", "POST", path, NULL, NULL, st) != MOAT_CODE_OK)
        moat_status_add_detail(st, "session_id", session_id);
    moat__cache_invalidate(rt);
    return st->code;
}
