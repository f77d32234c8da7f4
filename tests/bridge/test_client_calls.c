/* The bridge's non-streaming calls and file transfers against the fake execd
 * (client_harness.h): sessions, interrupt, status and logs, stat, list, remove, move, mkdir,
 * chmod, ranged and paused downloads, paused uploads and offset writes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "moat_test.h"

#include "client_harness.h"

/* ------------------------------------------------------------ calls */

typedef struct call_res {
    bool done;
    moat_status st;
    char text[256];
    uint64_t num;
    moat_bridge_cmd_status cs;
    moat_bridge_file_info fi[4];
    size_t count;
} call_res;

static void on_done(void *ud, const moat_status *st)
{
    call_res *r = ud;
    r->st = *st;
    r->done = true;
}

static void on_session(void *ud, const moat_status *st, const char *id)
{
    call_res *r = ud;
    snprintf(r->text, sizeof(r->text), "%s", id ? id : "(null)");
    on_done(ud, st);
}

static void on_status(void *ud, const moat_status *st, const moat_bridge_cmd_status *cs)
{
    call_res *r = ud;
    if (cs != NULL) {
        r->cs = *cs;
        snprintf(r->text, sizeof(r->text), "%s|%s|%s", cs->execution_id, cs->content, cs->error);
        r->cs.execution_id = r->cs.content = r->cs.error = NULL;
    }
    on_done(ud, st);
}

static void on_logs(void *ud, const moat_status *st, const uint8_t *d, size_t n, uint64_t next)
{
    call_res *r = ud;
    snprintf(r->text, sizeof(r->text), "%.*s", (int)n, d ? (const char *)d : "");
    r->num = next;
    on_done(ud, st);
}

static void on_stat(void *ud, const moat_status *st, const moat_bridge_file_info *fi)
{
    call_res *r = ud;
    if (fi != NULL) {
        r->fi[0] = *fi;
        snprintf(r->text, sizeof(r->text), "%s|%s|%s", fi->path, fi->owner, fi->group);
        r->fi[0].path = r->fi[0].owner = r->fi[0].group = NULL;
    }
    on_done(ud, st);
}

static void on_list(void *ud, const moat_status *st, const moat_bridge_file_info *fi, size_t n)
{
    call_res *r = ud;
    r->count = n;
    r->text[0] = '\0';
    for (size_t i = 0; i < n && i < 4; i++) {
        r->fi[i] = fi[i];
        strncat(r->text, fi[i].path, sizeof(r->text) - strlen(r->text) - 2);
        strcat(r->text, ",");
        r->fi[i].path = r->fi[i].owner = r->fi[i].group = NULL;
    }
    on_done(ud, st);
}

static void last_line(env *e, char *out, size_t cap)
{
    pthread_mutex_lock(&e->f.mu);
    snprintf(out, cap, "%s %s", e->f.last.method, e->f.last.path);
    pthread_mutex_unlock(&e->f.mu);
}

static void test_calls(void **state)
{
    (void)state;
    env e;
    env_up(&e, false, NULL);
    moat_status st;
    call_res r;
    char line[4096];

    memset(&r, 0, sizeof(r));
    assert_int_equal(moat_bridge_create_session(e.b, &e.ep, "/w", on_session, &r, &st), MOAT_OK);
    run_until(&e, &r.done);
    assert_int_equal(r.st.code, MOAT_CODE_OK);
    assert_string_equal(r.text, "s-123");
    assert_last_body(&e, "{\"cwd\":\"/w\"}");

    memset(&r, 0, sizeof(r));
    assert_int_equal(moat_bridge_delete_session(e.b, &e.ep, "s-123", on_done, &r, &st), MOAT_OK);
    run_until(&e, &r.done);
    assert_int_equal(r.st.code, MOAT_CODE_OK);
    last_line(&e, line, sizeof(line));
    assert_string_equal(line, "DELETE /session/s-123");

    memset(&r, 0, sizeof(r));
    assert_int_equal(moat_bridge_delete_session(e.b, &e.ep, "gone", on_done, &r, &st), MOAT_OK);
    run_until(&e, &r.done);
    assert_int_equal(r.st.code, MOAT_CODE_NOT_FOUND);
    assert_string_equal(moat_status_detail_get(&r.st, "execd_code"), "CONTEXT_NOT_FOUND");
    assert_non_null(strstr(r.st.message, "no such session"));

    memset(&r, 0, sizeof(r));
    assert_int_equal(moat_bridge_interrupt(e.b, &e.ep, "e 1", on_done, &r, &st), MOAT_OK);
    run_until(&e, &r.done);
    assert_int_equal(r.st.code, MOAT_CODE_OK);
    last_line(&e, line, sizeof(line));
    assert_string_equal(line, "DELETE /command?id=e%201");
    assert_int_equal(moat_bridge_interrupt(e.b, &e.ep, " ", on_done, &r, &st), MOAT_E_INVAL);

    memset(&r, 0, sizeof(r));
    assert_int_equal(moat_bridge_command_status(e.b, &e.ep, "e1", on_status, &r, &st), MOAT_OK);
    run_until(&e, &r.done);
    assert_int_equal(r.st.code, MOAT_CODE_OK);
    assert_string_equal(r.text, "e1|sleep 1|exit status 3");
    assert_false(r.cs.running);
    assert_true(r.cs.exit_known);
    assert_int_equal(r.cs.exit_code, 3);
    int64_t want;
    moat_time_parse_iso8601("2026-01-02T03:04:05.5+00:00", &want);
    assert_int_equal(r.cs.started_at_ms, want);
    assert_int_equal(r.cs.finished_at_ms, want + 500);

    /* answers other than line-mode output refuse an escaped NUL */
    memset(&r, 0, sizeof(r));
    assert_int_equal(moat_bridge_command_status(e.b, &e.ep, "nul", on_status, &r, &st), MOAT_OK);
    run_until(&e, &r.done);
    assert_int_equal(r.st.code, MOAT_CODE_INTERNAL);
    assert_string_equal(r.st.reason, "execd_bad_answer");

    memset(&r, 0, sizeof(r));
    assert_int_equal(moat_bridge_command_logs(e.b, &e.ep, "e1", 5, on_logs, &r, &st), MOAT_OK);
    run_until(&e, &r.done);
    assert_int_equal(r.st.code, MOAT_CODE_OK);
    assert_string_equal(r.text, "hello");
    assert_int_equal(r.num, 10);

    memset(&r, 0, sizeof(r));
    assert_int_equal(moat_bridge_stat(e.b, &e.ep, "/tmp/a b", on_stat, &r, &st), MOAT_OK);
    run_until(&e, &r.done);
    assert_int_equal(r.st.code, MOAT_CODE_OK);
    assert_string_equal(r.text, "/tmp/a b|root|root");
    assert_int_equal(r.fi[0].type, MOAT_BRIDGE_FILE_REGULAR);
    assert_int_equal(r.fi[0].size, 12);
    assert_int_equal(r.fi[0].mode, 0644);
    assert_true(r.fi[0].modified_at_ms > 0);

    memset(&r, 0, sizeof(r));
    assert_int_equal(moat_bridge_list(e.b, &e.ep, "/tmp", 0, on_list, &r, &st), MOAT_OK);
    run_until(&e, &r.done);
    assert_int_equal(r.st.code, MOAT_CODE_OK);
    assert_int_equal(r.count, 2);
    assert_string_equal(r.text, "/tmp/d,/tmp/l,");
    assert_int_equal(r.fi[0].type, MOAT_BRIDGE_FILE_DIRECTORY);
    assert_int_equal(r.fi[0].mode, 0755);
    assert_int_equal(r.fi[1].type, MOAT_BRIDGE_FILE_SYMLINK);

    memset(&r, 0, sizeof(r));
    assert_int_equal(moat_bridge_remove(e.b, &e.ep, "/tmp/x", false, on_done, &r, &st), MOAT_OK);
    run_until(&e, &r.done);
    assert_int_equal(r.st.code, MOAT_CODE_OK);
    last_line(&e, line, sizeof(line));
    assert_string_equal(line, "DELETE /files?path=%2Ftmp%2Fx");
    memset(&r, 0, sizeof(r));
    assert_int_equal(moat_bridge_remove(e.b, &e.ep, "/tmp/d", true, on_done, &r, &st), MOAT_OK);
    run_until(&e, &r.done);
    last_line(&e, line, sizeof(line));
    assert_string_equal(line, "DELETE /directories?path=%2Ftmp%2Fd");

    memset(&r, 0, sizeof(r));
    assert_int_equal(moat_bridge_move(e.b, &e.ep, "/a", "/b", on_done, &r, &st), MOAT_OK);
    run_until(&e, &r.done);
    assert_int_equal(r.st.code, MOAT_CODE_OK);
    assert_last_body(&e, "[{\"src\":\"/a\",\"dest\":\"/b\"}]");

    memset(&r, 0, sizeof(r));
    assert_int_equal(moat_bridge_mkdir(e.b, &e.ep, "/d/e", 0, on_done, &r, &st), MOAT_OK);
    run_until(&e, &r.done);
    assert_last_body(&e, "{\"/d/e\":{\"mode\":755}}");

    memset(&r, 0, sizeof(r));
    assert_int_equal(moat_bridge_chmod(e.b, &e.ep, "/f", 0600, "bob", NULL, on_done, &r, &st),
                     MOAT_OK);
    run_until(&e, &r.done);
    assert_last_body(&e, "{\"/f\":{\"mode\":600,\"owner\":\"bob\"}}");

    /* an answer that is not JSON, and an unknown route */
    memset(&r, 0, sizeof(r));
    assert_int_equal(moat_bridge_stat(e.b, &e.ep, "/nothing", on_stat, &r, &st), MOAT_OK);
    run_until(&e, &r.done);
    assert_int_equal(r.st.code, MOAT_CODE_NOT_FOUND);
    assert_string_equal(moat_status_detail_get(&r.st, "http_status"), "404");
    env_down(&e);
}

/* ------------------------------------------------------------ transfers */

typedef struct dl_res {
    bool done;
    moat_status st;
    uint8_t *data;
    size_t len;
    uint64_t first_offset;
    size_t max_chunk;
    int refuse_every; /* refuse (pause) every Nth chunk once */
    int chunks;
    bool refused;
    moat_bridge_xfer *paused;
} dl_res;

static bool on_chunk(void *ud, moat_bridge_xfer *x, uint64_t off, const uint8_t *d, size_t n)
{
    dl_res *r = ud;
    if (r->refuse_every && !r->refused && ++r->chunks % r->refuse_every == 0) {
        r->refused = true;
        r->paused = x;
        return false;
    }
    r->refused = false;
    if (r->len == 0)
        r->first_offset = off;
    assert_int_equal(off, r->first_offset + r->len);
    r->data = realloc(r->data, r->len + n);
    memcpy(r->data + r->len, d, n);
    r->len += n;
    if (n > r->max_chunk)
        r->max_chunk = n;
    return true;
}

static void on_dl_done(void *ud, moat_bridge_xfer *x, const moat_status *st)
{
    (void)x;
    dl_res *r = ud;
    r->st = *st;
    r->done = true;
}

/* Runs the loop until a transfer is done, resuming it whenever a callback paused it. */
static void run_xfer(env *e, const bool *done, moat_bridge_xfer **paused)
{
    while (!*done) {
        uv_run(&e->loop, UV_RUN_ONCE);
        if (*paused != NULL) {
            moat_bridge_xfer *p = *paused;
            *paused = NULL;
            moat_bridge_xfer_resume(p);
        }
    }
}

static void download(env *e, uint64_t off, uint64_t len, dl_res *r)
{
    moat_bridge_download_cbs cbs = {on_chunk, on_dl_done, r};
    moat_bridge_xfer *x = NULL;
    moat_status st;
    assert_int_equal(moat_bridge_download(e->b, &e->ep, "/f", off, len, &cbs, &x, &st), MOAT_OK);
    run_xfer(e, &r->done, &r->paused);
}

static void test_download(void **state)
{
    (void)state;
    env e;
    env_up(&e, false, NULL);
    dl_res r;
    memset(&r, 0, sizeof(r));
    r.refuse_every = 2;
    download(&e, 0, 0, &r);
    assert_int_equal(r.st.code, MOAT_CODE_OK);
    assert_int_equal(r.len, 300000);
    for (size_t i = 0; i < r.len; i++)
        assert_int_equal(r.data[i], (uint8_t)(i * 13 + 1));
    assert_true(r.max_chunk <= 65536);
    free(r.data);

    memset(&r, 0, sizeof(r));
    download(&e, 1000, 5000, &r);
    assert_int_equal(r.st.code, MOAT_CODE_OK);
    assert_int_equal(r.first_offset, 1000);
    assert_int_equal(r.len, 5000);
    for (size_t i = 0; i < r.len; i++)
        assert_int_equal(r.data[i], (uint8_t)((i + 1000) * 13 + 1));
    free(r.data);

    memset(&r, 0, sizeof(r));
    download(&e, 299990, 0, &r);
    assert_int_equal(r.len, 10);
    free(r.data);
    env_down(&e);
}

typedef struct ul_res {
    bool done;
    moat_status st;
    size_t total, sent;
    uint64_t written;
    bool pause_once;
    moat_bridge_xfer *paused;
} ul_res;

static size_t on_read(void *ud, moat_bridge_xfer *x, uint8_t *buf, size_t cap)
{
    ul_res *r = ud;
    if (r->pause_once && r->sent > 0) {
        r->pause_once = false;
        r->paused = x;
        return MOAT_BRIDGE_READ_PAUSE;
    }
    size_t n = r->total - r->sent < cap ? r->total - r->sent : cap;
    if (n > 1000)
        n = 1000;
    for (size_t i = 0; i < n; i++)
        buf[i] = (uint8_t)('a' + (r->sent + i) % 26);
    r->sent += n;
    return n;
}

static void on_ul_done(void *ud, moat_bridge_xfer *x, const moat_status *st, uint64_t written)
{
    (void)x;
    ul_res *r = ud;
    r->st = *st;
    r->written = written;
    r->done = true;
}

static void test_upload(void **state)
{
    (void)state;
    env e;
    env_up(&e, false, NULL);
    ul_res r = {.total = 100000, .pause_once = true};
    moat_bridge_upload_cbs cbs = {on_read, on_ul_done, &r};
    moat_bridge_xfer *x = NULL;
    moat_status st;
    assert_int_equal(moat_bridge_upload(e.b, &e.ep, "/w/up.txt", 0, NULL, NULL, &cbs, &x, &st),
                     MOAT_OK);
    while (!r.done) {
        uv_run(&e.loop, UV_RUN_ONCE);
        if (r.paused != NULL) {
            moat_bridge_xfer *p = r.paused;
            r.paused = NULL;
            moat_bridge_xfer_resume(p);
        }
    }
    assert_int_equal(r.st.code, MOAT_CODE_OK);
    assert_int_equal(r.written, 100000);
    pthread_mutex_lock(&e.f.mu);
    assert_string_equal(e.f.last.path, "/files/upload");
    assert_non_null(strstr(e.f.last.headers, "multipart/form-data"));
    const char *b = e.f.last.body;
    assert_non_null(strstr(b, "name=\"metadata\"; filename=\"metadata\""));
    assert_non_null(strstr(b, "{\"mode\":644,\"path\":\"/w/up.txt\"}"));
    const char *file = strstr(b, "name=\"file\"; filename=\"up.txt\"");
    assert_non_null(file);
    const char *content = strstr(file, "\r\n\r\n") + 4;
    for (size_t i = 0; i < 100000; i++)
        assert_int_equal((uint8_t)content[i], (uint8_t)('a' + i % 26));
    pthread_mutex_unlock(&e.f.mu);
    env_down(&e);
}

/* Runs one moat_bridge_write_at of r->total pattern bytes to the fake. */
static void write_at(env *e, const char *path, uint64_t offset, ul_res *r)
{
    moat_bridge_upload_cbs cbs = {on_read, on_ul_done, r};
    moat_bridge_xfer *x = NULL;
    moat_status st;
    assert_int_equal(moat_bridge_write_at(e->b, &e->ep, path, offset, &cbs, &x, &st), MOAT_OK);
    run_xfer(e, &r->done, &r->paused);
}

static void test_write_at(void **state)
{
    (void)state;
    env e;
    env_up(&e, false, NULL);
    ul_res r = {.total = 100000, .pause_once = true};
    write_at(&e, "/w/up.txt", 12345, &r);
    assert_int_equal(r.st.code, MOAT_CODE_OK);
    assert_int_equal(r.written, 100000);
    pthread_mutex_lock(&e.f.mu);
    assert_string_equal(e.f.last.method, "POST");
    assert_non_null(strstr(e.f.last.headers, "Transfer-Encoding: chunked"));
    assert_non_null(strstr(e.f.last.headers, "Content-Type: application/octet-stream"));
    /* the raw bytes, no multipart around them */
    assert_int_equal(e.f.last.body_len, 100000);
    for (size_t i = 0; i < 100000; i++)
        assert_int_equal((uint8_t)e.f.last.body[i], (uint8_t)('a' + i % 26));
    pthread_mutex_unlock(&e.f.mu);

    /* moat-execd's answer for a missing file stays NOT_FOUND */
    memset(&r, 0, sizeof(r));
    r.total = 10;
    write_at(&e, "/w/missing", 7, &r);
    assert_int_equal(r.st.code, MOAT_CODE_NOT_FOUND);
    assert_string_equal(moat_status_detail_get(&r.st, "execd_code"), "FILE_NOT_FOUND");

    /* an execd without the endpoint: UNIMPLEMENTED, not NOT_FOUND */
    memset(&r, 0, sizeof(r));
    r.total = 10;
    write_at(&e, "/w/foreign", 7, &r);
    assert_int_equal(r.st.code, MOAT_CODE_UNIMPLEMENTED);
    assert_string_equal(r.st.reason, "execd_no_offset_writes");
    assert_non_null(strstr(r.st.message, "execd has no offset writes"));

    /* a blank path is refused before any request */
    moat_bridge_upload_cbs cbs = {on_read, on_ul_done, &r};
    moat_bridge_xfer *x = NULL;
    moat_status st;
    int before = fake_request_count(&e.f);
    assert_int_equal(moat_bridge_write_at(e.b, &e.ep, " ", 1, &cbs, &x, &st), MOAT_E_INVAL);
    assert_int_equal(st.code, MOAT_CODE_INVALID_ARGUMENT);
    assert_int_equal(fake_request_count(&e.f), before);
    env_down(&e);
}

int main(void)
{
    moat_log_set_level(MOAT_LOG_ERROR);
    if (getenv("BRIDGE_TEST_FILTER") != NULL)
        cmocka_set_test_filter(getenv("BRIDGE_TEST_FILTER"));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_calls),
        cmocka_unit_test(test_download),
        cmocka_unit_test(test_upload),
        cmocka_unit_test(test_write_at),
    };
    return moat_run_group_tests("bridge_client_calls_test", tests, NULL, NULL);
}
