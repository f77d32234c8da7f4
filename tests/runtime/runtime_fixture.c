/* The runtime's unit-test fixture (runtime_fixture.h). */
#define _XOPEN_SOURCE 700
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <ftw.h>

#include "moat_test.h"
#include <curl/curl.h>
#include <sqlite3.h>

#include "host_mounts.h"
#include "runtime_fixture.h"

int64_t iso(const char *text)
{
    int64_t ms = 0;
    assert_int_equal(moat_time_parse_iso8601(text, &ms), MOAT_OK);
    return ms;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

void open_runtime(fx *f)
{
    moat_status st;
    f->rt = moat_runtime_open(&f->cfg, &st);
    if (f->rt == NULL)
        fail_msg("open: %s", st.message);
}

int setup(void **state)
{
    fx *f = calloc(1, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "/tmp/moat-rt-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->deps, sizeof(f->deps), "%s/dependencies", f->dir);
    snprintf(f->lambda, sizeof(f->lambda), "%s/lambda-tools", f->dir);
    snprintf(f->bundle, sizeof(f->bundle), "%s/bundle", f->dir);
    snprintf(f->chats, sizeof(f->chats), "%s/chats", f->dir);
    snprintf(f->state, sizeof(f->state), "%s/state", f->dir);
    snprintf(f->store, sizeof(f->store), "%s/state/state.db", f->dir);
    snprintf(f->sock, sizeof(f->sock), "%s/docker.sock", f->dir);
    mkdir(f->deps, 0755);
    mkdir(f->lambda, 0755);
    mkdir(f->bundle, 0755);
    mkdir(f->state, 0755);
    assert_int_equal(fake_docker_start(&f->fd, f->sock), 0);
    moat_runtime_config_defaults(&f->cfg);
    f->cfg.image = "sandbox:latest";
    f->cfg.ttl_seconds = 300;
    f->cfg.cleanup_interval_seconds = 60;
    f->cfg.chats_root = f->chats;
    f->cfg.dependencies_host_path = f->deps;
    f->cfg.lambda_tools_host_path = f->lambda;
    f->cfg.execd_bundle_dir = f->bundle;
    f->cfg.state_dir = f->state;
    f->cfg.store_path = f->store;
    f->cfg.docker_host = f->sock;
    f->cfg.docker_timeout_ms = 2000;
    f->cfg.readiness_timeout_ms = 2000;
    f->cfg.container_name_prefix = PREFIX;
    /* A fake engine and no change to the host: no workspace images or mounts here
     * (test_workspace_root covers them). */
    f->cfg.workspace_quota = false;
    open_runtime(f);
    *state = f;
    return 0;
}

int teardown(void **state)
{
    fx *f = *state;
    moat_runtime_close(f->rt);
    fake_docker_stop(&f->fd);
    host_unmount_under(f->dir);
    nftw(f->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(f);
    return 0;
}

cJSON *body_of(const fake_request *rq)
{
    assert_non_null(rq);
    cJSON *j = moat_json_parse(rq->body, strlen(rq->body), MOAT_JSON_NUL_REJECT);
    assert_non_null(j);
    return j;
}

moat_code create_default(fx *f, const char *chat, moat_session *s, moat_status *st)
{
    int64_t created = iso("2026-04-02T12:00:00+00:00");
    return moat_runtime_create(f->rt, SESSION_ID, chat, created, created + 5 * 60 * 1000, NULL, s,
                               st);
}

char *described(bool inspect, const char *id, const char *sid, const char *name, const char *exp,
                const char *extra_labels)
{
    char labels[1024], text[2048];
    snprintf(labels, sizeof(labels),
             "{\"session_id\":\"%s\",\"chat_id\":\"" CHAT_ID "\",\"expires_at\":\"%s\"%s}", sid,
             exp, extra_labels);
    if (inspect)
        snprintf(text, sizeof(text),
                 "{\"Id\":\"%s\",\"Name\":\"/%s\",\"Created\":\"2026-04-02T12:00:00Z\","
                 "\"State\":{\"Running\":true},\"Config\":{\"Image\":\"sandbox:latest\","
                 "\"Labels\":%s}}",
                 id, name, labels);
    else
        snprintf(text, sizeof(text),
                 "{\"Id\":\"%s\",\"Names\":[\"/%s\"],\"Created\":1775131200,"
                 "\"State\":\"running\",\"Image\":\"sandbox:latest\",\"Labels\":%s}",
                 id, name, labels);
    char *copy = strdup(text);
    assert_non_null(copy);
    return copy;
}

void route_inspect(fx *f, const char *id, char *described_text)
{
    char url[128];
    snprintf(url, sizeof(url), "/containers/%s/json", id);
    fake_docker_route(&f->fd, "GET", url, 200, described_text, -1);
    free(described_text);
}

char *container_json(const char *id, const char *sid, const char *cid, const char *exp,
                     const char *created_iso, bool managed, const char *state)
{
    cJSON *c = cJSON_CreateObject();
    cJSON *labels = cJSON_CreateObject();
    assert_true(cJSON_AddItemToObject(c, "Id", cJSON_CreateString(id)));
    assert_true(cJSON_AddItemToObject(c, "Labels", labels));
    if (sid)
        assert_non_null(cJSON_AddStringToObject(labels, "session_id", sid));
    if (cid)
        assert_non_null(cJSON_AddStringToObject(labels, "chat_id", cid));
    if (exp)
        assert_non_null(cJSON_AddStringToObject(labels, "expires_at", exp));
    if (managed)
        assert_non_null(cJSON_AddStringToObject(labels, "moat.managed", "true"));
    if (sid) { /* the name this runtime gives its sessions */
        char name[128];
        snprintf(name, sizeof(name), "/" PREFIX "%s", sid);
        cJSON *names = cJSON_AddArrayToObject(c, "Names");
        assert_true(cJSON_AddItemToArray(names, cJSON_CreateString(name)));
    }
    assert_non_null(cJSON_AddStringToObject(c, "State", state));
    assert_non_null(cJSON_AddStringToObject(c, "Image", "sandbox:latest"));
    if (created_iso)
        assert_non_null(cJSON_AddStringToObject(c, "Created", created_iso));
    else /* 2026-04-02T12:00:00Z */
        assert_non_null(cJSON_AddNumberToObject(c, "Created", 1775131200));
    char *printed = cJSON_PrintUnformatted(c);
    cJSON_Delete(c);
    assert_non_null(printed);
    char *text = strdup(printed); /* route_list free()s it */
    cJSON_free(printed);
    return text;
}

void route_list(fx *f, const char *url_part, char **items, size_t n)
{
    size_t total = 3;
    for (size_t i = 0; i < n; i++)
        total += strlen(items[i]) + 1;
    char *body = calloc(1, total);
    strcat(body, "[");
    for (size_t i = 0; i < n; i++) {
        if (i)
            strcat(body, ",");
        strcat(body, items[i]);
        free(items[i]);
    }
    strcat(body, "]");
    fake_docker_route(&f->fd, "GET", url_part, 200, body, -1);
    free(body);
}

char *decoded_filters(const char *url)
{
    const char *q = strstr(url, "filters=");
    assert_non_null(q);
    q += strlen("filters=");
    size_t len = strcspn(q, "&");
    int outlen = 0;
    char *raw = curl_easy_unescape(NULL, q, (int)len, &outlen);
    char *copy = strdup(raw);
    curl_free(raw);
    return copy;
}

int64_t store_expiry(const char *store, const char *session_id, int *renewed, int *state)
{
    sqlite3 *db;
    assert_int_equal(sqlite3_open_v2(store, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_stmt *s;
    assert_int_equal(sqlite3_prepare_v2(db,
                                        "SELECT expires_at_ms, renewed, state FROM sessions "
                                        "WHERE session_id = ?",
                                        -1, &s, NULL),
                     SQLITE_OK);
    sqlite3_bind_text(s, 1, session_id, -1, SQLITE_STATIC);
    int64_t v = -1;
    if (sqlite3_step(s) == SQLITE_ROW) {
        v = sqlite3_column_int64(s, 0);
        if (renewed)
            *renewed = sqlite3_column_int(s, 1);
        if (state)
            *state = sqlite3_column_int(s, 2);
    }
    sqlite3_finalize(s);
    sqlite3_close(db);
    return v;
}
