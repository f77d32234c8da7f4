/* The bridge against a fake execd that is a real HTTP server in the test:
 * every seed 001 case (served whole and in small writes), the real execd's
 * quirks, hostile streams, liveness, back-pressure, Attach, and every
 * non-streaming call and file transfer. Driven by a libuv loop. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "moat_test.h"
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "collect.h"
#include "common/json.h"
#include "fake_execd.h"
#include "seed_streams.h"

static size_t g_piece; /* 0: send each stream in one write */

/* ------------------------------------------------------------ fake execd */

static void send_stream(int fd, const char *extra, const void *data, size_t len)
{
    fake_chunked_head(fd, 200, extra);
    if (g_piece > 0)
        fake_chunks_slow(fd, data, len, g_piece);
    else
        fake_chunk(fd, data, len);
    fake_chunked_end(fd);
}

static size_t frame(char *out, const char *type, const void *data, size_t n)
{
    int k = sprintf(out, "{\"type\":\"%s\",\"timestamp\":5,\"len\":%zu}\n", type, n);
    memcpy(out + k, data, n);
    memcpy(out + k + n, "\n\n", 2);
    return (size_t)k + n + 2;
}

static void serve_run(fake_execd *f, int fd, const fake_req *req, const char *cmd)
{
    bool binary = strstr(req->headers, "X-Moat-Output: binary") != NULL;
    const char *p = req->path;
    if (strcmp(p, "/command") == 0 && strcmp(cmd, "echo hi") == 0) {
        send_stream(fd, NULL, SEED_ECHO_HI, sizeof(SEED_ECHO_HI) - 1);
    } else if (strcmp(p, "/session/sess-1/run") == 0 && strcmp(cmd, "pwd") == 0) {
        send_stream(fd, NULL, SEED_SESS1_PWD, sizeof(SEED_SESS1_PWD) - 1);
    } else if (strcmp(p, "/session/sess-2/run") == 0 && strcmp(cmd, "exit 7") == 0) {
        send_stream(fd, NULL, SEED_SESS2_EXIT7, sizeof(SEED_SESS2_EXIT7) - 1);
    } else if (strcmp(p, "/command") == 0 && strcmp(cmd, "exit null") == 0) {
        send_stream(fd, NULL, SEED_EXIT_NULL, sizeof(SEED_EXIT_NULL) - 1);
    } else if (strcmp(p, "/command") == 0 && strcmp(cmd, "exit 7") == 0) {
        send_stream(fd, NULL, SEED_EXIT7, sizeof(SEED_EXIT7) - 1);
    } else if (strcmp(cmd, "real ok") == 0) {
        send_stream(fd, NULL, REAL_EXECD_OK, sizeof(REAL_EXECD_OK) - 1);
    } else if (strcmp(cmd, "real appended") == 0) {
        send_stream(fd, NULL, REAL_EXECD_APPENDED, sizeof(REAL_EXECD_APPENDED) - 1);
    } else if (strcmp(cmd, "real bad end") == 0) {
        /* issue #1277: the chunked body ends badly after the final event */
        fake_chunked_head(fd, 200, NULL);
        fake_chunk(fd, REAL_EXECD_OK, sizeof(REAL_EXECD_OK) - 1);
        fake_write_all(fd, "5\r\nab", 5);
    } else if (strcmp(cmd, "cut") == 0) {
        fake_chunked_head(fd, 200, NULL);
        static const char s[] = "{\"type\":\"init\",\"text\":\"c1\"}\n\n{\"type\":\"stdout\",\"te";
        fake_chunk(fd, s, sizeof(s) - 1);
    } else if (strcmp(cmd, "cut mid chunk") == 0) {
        fake_chunked_head(fd, 200, NULL);
        fake_write_all(fd, "40\r\n{\"type\":\"init\",\"text\":\"c2\"}\n\n", 33);
    } else if (strcmp(cmd, "cut close delimited") == 0) {
        static const char s[] = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                                "Connection: close\r\n\r\n"
                                "{\"type\":\"init\",\"text\":\"c3\"}\n\n{\"type\":\"stdout\",\"te";
        fake_write_all(fd, s, sizeof(s) - 1);
    } else if (strcmp(cmd, "reset") == 0) {
        fake_chunked_head(fd, 200, NULL);
        fake_write_all(fd, "40\r\n{\"type\":\"init\",\"text\":\"r1\"}\n\n", 33);
        usleep(100000);
        fake_reset(fd);
    } else if (strcmp(cmd, "never") == 0) {
        fake_hang(f, fd);
    } else if (strcmp(cmd, "silent after init") == 0) {
        fake_chunked_head(fd, 200, NULL);
        fake_chunk(fd, "{\"type\":\"init\",\"text\":\"s1\"}\n\n", 30);
        fake_hang(f, fd);
    } else if (strcmp(cmd, "64mib") == 0) {
        fake_chunked_head(fd, 200, NULL);
        char *line = malloc(64 << 10);
        memset(line, 'a', 64 << 10);
        for (int i = 0; i < 1024 && !f->stop; i++)
            fake_chunk(fd, line, 64 << 10);
        free(line);
        static const char tail[] = "\n{\"type\":\"stdout\",\"text\":\"after\"}\n\n"
                                   "{\"type\":\"execution_complete\"}\n\n";
        fake_chunk(fd, tail, sizeof(tail) - 1);
        fake_chunked_end(fd);
    } else if (strcmp(cmd, "hostile bytes") == 0) {
        static const char s[] = "{\"type\":\"init\",\"text\":\"h1\"}\n\n"
                                "\0\0\0{\"type\":\"stdout\"}\n\n"
                                "\xff\xfe garbage \xc0\n\n"
                                "{\"type\":\"stdout\",\"text\":\"\xff\"}\n\n"
                                "{\"type\":\"stdout\",\"text\":\"n\\u0000l\"}\n\n"
                                "{\"type\":\"execution_complete\",\"execution_time\":1}\n\n";
        send_stream(fd, NULL, s, sizeof(s) - 1);
    } else if (strcmp(cmd, "binary") == 0) {
        char buf[4096];
        size_t n = (size_t)sprintf(buf, "{\"type\":\"init\",\"text\":\"bin1\"}\n\n");
        if (binary) {
            uint8_t bytes[256];
            for (int i = 0; i < 256; i++)
                bytes[i] = (uint8_t)i;
            n += frame(buf + n, "stdout", bytes, sizeof(bytes));
            n += frame(buf + n, "stderr", "\0e\n", 3);
        } else {
            n += (size_t)sprintf(buf + n, "{\"type\":\"stdout\",\"text\":\"lines\"}\n\n");
        }
        n += (size_t)sprintf(buf + n, "{\"type\":\"execution_complete\"}\n\n");
        send_stream(fd, binary ? "X-Moat-Output: binary\r\n" : NULL, buf, n);
    } else if (strcmp(cmd, "binary bad len") == 0) {
        static const char s[] = "{\"type\":\"init\",\"text\":\"bad\"}\n\n"
                                "{\"type\":\"stdout\",\"len\":70000}\nxxxx";
        send_stream(fd, "X-Moat-Output: binary\r\n", s, sizeof(s) - 1);
    } else if (strncmp(cmd, "big ", 4) == 0) {
        /* N bytes of a counter pattern in 64 KiB binary frames */
        size_t total = strtoul(cmd + 4, NULL, 10), off = 0;
        char *buf = malloc(70000);
        uint8_t *data = malloc(65536);
        fake_chunked_head(fd, 200, "X-Moat-Output: binary\r\n");
        fake_chunk(fd, "{\"type\":\"init\",\"text\":\"big1\"}\n\n", 31);
        while (off < total && !f->stop) {
            size_t n = total - off < 65536 ? total - off : 65536;
            for (size_t i = 0; i < n; i++)
                data[i] = (uint8_t)((off + i) * 31 >> 3);
            fake_chunk(fd, buf, frame(buf, "stdout", data, n));
            off += n;
        }
        fake_chunk(fd, "{\"type\":\"execution_complete\"}\n\n", 32);
        fake_chunked_end(fd);
        free(buf);
        free(data);
    } else if (strncmp(cmd, "count ", 6) == 0) {
        int n = atoi(cmd + 6);
        fake_chunked_head(fd, 200, NULL);
        char line[128];
        int k = sprintf(line, "{\"type\":\"init\",\"text\":\"%s\"}\n\n", cmd + 6);
        fake_chunk(fd, line, (size_t)k);
        for (int i = 0; i < n; i++) {
            k = sprintf(line, "{\"type\":\"stdout\",\"text\":\"line %d\",\"timestamp\":%d}\n\n", i,
                        i);
            fake_chunk(fd, line, (size_t)k);
        }
        fake_chunk(fd, "{\"type\":\"execution_complete\"}\n\n", 32);
        fake_chunked_end(fd);
    } else {
        fake_reply(fd, 500, NULL, "boom", 4);
    }
}

static void serve_files(fake_execd *f, int fd, const fake_req *req)
{
    (void)f;
    const char *p = req->path;
    if (strcmp(p, "/session") == 0 && strcmp(req->method, "POST") == 0) {
        fake_reply(fd, 200, "Content-Type: application/json\r\n", "{\"session_id\":\"s-123\"}", 22);
    } else if (strcmp(p, "/session/s-123") == 0) {
        fake_reply(fd, 200, NULL, "", 0);
    } else if (strncmp(p, "/session/", 9) == 0 && strcmp(req->method, "DELETE") == 0) {
        static const char b[] = "{\"code\":\"CONTEXT_NOT_FOUND\",\"message\":\"no such session\"}";
        fake_reply(fd, 404, "Content-Type: application/json\r\n", b, sizeof(b) - 1);
    } else if (strcmp(p, "/command?id=e%201") == 0) {
        fake_reply(fd, 200, NULL, "", 0);
    } else if (strcmp(p, "/command/status/e1") == 0) {
        static const char b[] =
            "{\"id\":\"e1\",\"content\":\"sleep 1\",\"running\":false,\"exit_code\":3,"
            "\"error\":\"exit status 3\",\"started_at\":\"2026-01-02T03:04:05.5+00:00\","
            "\"finished_at\":\"2026-01-02T03:04:06Z\"}";
        fake_reply(fd, 200, NULL, b, sizeof(b) - 1);
    } else if (strcmp(p, "/command/status/nul") == 0) {
        static const char b[] = "{\"id\":\"nul\",\"content\":\"rm -rf /tmp/x\\u0000/y\","
                                "\"running\":true}";
        fake_reply(fd, 200, NULL, b, sizeof(b) - 1);
    } else if (strcmp(p, "/command/e1/logs?cursor=5") == 0) {
        fake_reply(fd, 200, "EXECD-COMMANDS-TAIL-CURSOR: 10\r\n", "hello", 5);
    } else if (strcmp(p, "/files/info?path=%2Ftmp%2Fa%20b") == 0) {
        static const char b[] =
            "{\"/tmp/a b\":{\"path\":\"/tmp/a b\",\"type\":\"file\",\"size\":12,"
            "\"modified_at\":\"2026-01-02T03:04:05Z\",\"owner\":\"root\",\"group\":\"root\","
            "\"mode\":644}}";
        fake_reply(fd, 200, NULL, b, sizeof(b) - 1);
    } else if (strcmp(p, "/directories/list?path=%2Ftmp&depth=1") == 0) {
        static const char b[] = "[{\"path\":\"/tmp/d\",\"type\":\"directory\",\"mode\":755},"
                                "{\"path\":\"/tmp/l\",\"type\":\"symlink\",\"mode\":777}]";
        fake_reply(fd, 200, NULL, b, sizeof(b) - 1);
    } else if (strcmp(p, "/files?path=%2Ftmp%2Fx") == 0 ||
               strcmp(p, "/directories?path=%2Ftmp%2Fd") == 0 || strcmp(p, "/files/mv") == 0 ||
               strcmp(p, "/directories") == 0 || strcmp(p, "/files/permissions") == 0 ||
               strcmp(p, "/files/upload") == 0) {
        fake_reply(fd, 200, NULL, "", 0);
    } else if (strcmp(p, "/files/write?path=%2Fw%2Fup.txt&offset=12345") == 0) {
        char b[128];
        int n = snprintf(b, sizeof(b), "{\"path\":\"/w/up.txt\",\"written\":%zu}", req->body_len);
        fake_reply(fd, 200, "Content-Type: application/json\r\n", b, (size_t)n);
    } else if (strcmp(p, "/files/write?path=%2Fw%2Fmissing&offset=7") == 0) {
        static const char b[] = "{\"code\":\"FILE_NOT_FOUND\",\"message\":\"file not found: "
                                "/w/missing\"}";
        fake_reply(fd, 404, "Content-Type: application/json\r\n", b, sizeof(b) - 1);
    } else if (strncmp(p, "/files/write?", 13) == 0) {
        /* what OpenSandbox's execd (gin) answers for a path it does not know */
        fake_reply(fd, 404, "Content-Type: text/plain\r\n", "404 page not found", 18);
    } else if (strncmp(p, "/files/download?path=", 21) == 0) {
        /* 300000 bytes of a pattern; honours "Range: bytes=a-b" and "a-" */
        size_t size = 300000, a = 0, b = size - 1;
        const char *r = strstr(req->headers, "Range: bytes=");
        uint8_t *data = malloc(size);
        for (size_t i = 0; i < size; i++)
            data[i] = (uint8_t)(i * 13 + 1);
        if (r != NULL) {
            char *e;
            a = strtoul(r + 13, &e, 10);
            if (e[1] >= '0' && e[1] <= '9')
                b = strtoul(e + 1, NULL, 10);
            char h[128];
            snprintf(h, sizeof(h), "Content-Range: bytes %zu-%zu/%zu\r\n", a, b, size);
            fake_reply(fd, 206, h, data + a, b - a + 1);
        } else {
            fake_reply(fd, 200, NULL, data, size);
        }
        free(data);
    } else {
        fake_reply(fd, 404, NULL, "{\"code\":\"UNKNOWN\"}", 18);
    }
}

static void handler(fake_execd *f, int fd, const fake_req *req)
{
    cJSON *j = moat_json_parse(req->body, req->body_len, MOAT_JSON_NUL_REJECT);
    const char *cmd = moat_json_str(j, "command", NULL);
    if (cmd != NULL && strcmp(req->method, "POST") == 0)
        serve_run(f, fd, req, cmd);
    else
        serve_files(f, fd, req);
    cJSON_Delete(j);
}

/* ------------------------------------------------------------ harness */

typedef struct env {
    uv_loop_t loop;
    moat_bridge *b;
    fake_execd f;
    moat_bridge_endpoint ep;
    char url[64];
} env;

static void env_up(env *e, bool tcp, const moat_bridge_config *cfg)
{
    memset(e, 0, sizeof(*e));
    uv_loop_init(&e->loop);
    fake_start(&e->f, handler, NULL, tcp);
    assert_int_equal(moat_bridge_new(cfg, &e->b), MOAT_OK);
    assert_int_equal(moat_bridge_attach_uv(e->b, &e->loop), MOAT_OK);
    if (tcp) {
        snprintf(e->url, sizeof(e->url), "http://127.0.0.1:%d/", e->f.port);
        e->ep.base_url = e->url;
    } else {
        e->ep.unix_socket = e->f.sock_path;
    }
    e->ep.scope = "sandbox-1";
}

static void env_down(env *e)
{
    moat_bridge_free(e->b);
    uv_run(&e->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&e->loop), 0);
    fake_stop(&e->f);
}

/* Runs the loop until *flag; a generous guard turns a hang into a failure. */
static void run_until(env *e, const bool *flag)
{
    uint64_t until = moat_time_mono_ns() + 60ull * 1000000000ull;
    while (!*flag) {
        assert_true(moat_time_mono_ns() < until);
        if (uv_run(&e->loop, UV_RUN_ONCE) == 0)
            usleep(1000);
    }
}

/* Runs the loop until ex's transfer is paused, bounded as run_until is; its stats in *s. */
static void run_until_paused(env *e, moat_bridge_exec *ex, moat_bridge_exec_stats *s)
{
    uint64_t until = moat_time_mono_ns() + 60ull * 1000000000ull;
    for (moat_bridge_exec_get_stats(ex, s); !s->paused; moat_bridge_exec_get_stats(ex, s)) {
        assert_true(moat_time_mono_ns() < until);
        if (uv_run(&e->loop, UV_RUN_ONCE) == 0)
            usleep(1000);
    }
}

static void run_for_ms(env *e, int ms)
{
    uint64_t until = moat_time_mono_ns() + (uint64_t)ms * 1000000ull;
    while (moat_time_mono_ns() < until)
        if (uv_run(&e->loop, UV_RUN_NOWAIT) == 0)
            usleep(1000);
        else
            usleep(200);
}

static moat_bridge_exec *run_cmd(env *e, const moat_bridge_run_opts *o, collect *c, uint64_t credit)
{
    moat_bridge_consumer k = col_consumer(c);
    moat_bridge_exec *ex = NULL;
    moat_status st;
    assert_int_equal(moat_bridge_run(e->b, &e->ep, o, &k, credit, &ex, &st), MOAT_OK);
    c->ex = ex;
    return ex;
}

static void run_to_end(env *e, const char *cmd, collect *c)
{
    moat_bridge_run_opts o = {.command = cmd};
    col_init(c);
    run_cmd(e, &o, c, UINT64_MAX);
    run_until(e, &c->ended);
}

/* The last request's body is the same JSON as want (member order aside). */
static void assert_last_body(env *e, const char *want)
{
    pthread_mutex_lock(&e->f.mu);
    cJSON *got = moat_json_parse(e->f.last.body, e->f.last.body_len, MOAT_JSON_NUL_REJECT);
    pthread_mutex_unlock(&e->f.mu);
    cJSON *w = moat_json_parse(want, strlen(want), MOAT_JSON_NUL_REJECT);
    assert_non_null(got);
    assert_non_null(w);
    assert_true(cJSON_Compare(got, w, true));
    cJSON_Delete(got);
    cJSON_Delete(w);
}

/* ------------------------------------------------------------ seed 001 */

static void seed_cases(bool tcp)
{
    env e;
    env_up(&e, tcp, NULL);
    collect c;

    /* test_run_command_streaming_happy_path_updates_execution */
    run_to_end(&e, "echo hi", &c);
    assert_int_equal(c.end.code, MOAT_CODE_OK);
    assert_int_equal(c.n, 5);
    assert_string_equal(col_find(&c, MOAT_BRIDGE_EV_INIT)->text, "exec-1");
    assert_string_equal(col_find(&c, MOAT_BRIDGE_EV_OUTPUT)->text, "hi");
    assert_string_equal(col_find(&c, MOAT_BRIDGE_EV_RESULT)->text, "ok");
    assert_int_equal(col_find(&c, MOAT_BRIDGE_EV_COMPLETE)->exec_time, 5);
    assert_true(col_find(&c, MOAT_BRIDGE_EV_EXIT)->known);
    assert_int_equal(col_find(&c, MOAT_BRIDGE_EV_EXIT)->code, 0);
    assert_false(c.seq_gap);
    char h[256];
    fake_last_header(&e.f, "Accept", h, sizeof(h));
    assert_string_equal(h, "text/event-stream");
    fake_last_header(&e.f, "X-Moat-Output", h, sizeof(h));
    assert_string_equal(h, "binary");
    fake_last_header(&e.f, "X-EXECD-ACCESS-TOKEN", h, sizeof(h));
    assert_string_equal(h, "");
    col_free(&c);

    /* test_run_command_streaming_non_zero_exit_updates_exit_code */
    run_to_end(&e, "exit 7", &c);
    assert_string_equal(col_find(&c, MOAT_BRIDGE_EV_INIT)->text, "exec-2");
    assert_string_equal(col_find(&c, MOAT_BRIDGE_EV_ERROR)->text, "7");
    assert_null(col_find(&c, MOAT_BRIDGE_EV_COMPLETE));
    assert_int_equal(col_find(&c, MOAT_BRIDGE_EV_EXIT)->code, 7);
    assert_true(col_find(&c, MOAT_BRIDGE_EV_EXIT)->known);
    col_free(&c);

    /* test_run_command_streaming_tolerates_null_traceback */
    run_to_end(&e, "exit null", &c);
    assert_string_equal(col_find(&c, MOAT_BRIDGE_EV_INIT)->text, "exec-null");
    const col_event *er = col_find(&c, MOAT_BRIDGE_EV_ERROR);
    assert_string_equal(er->text, "fork/exec /usr/bin/bash: resource temporarily unavailable");
    assert_int_equal(er->tb_count, 0);
    assert_null(col_find(&c, MOAT_BRIDGE_EV_COMPLETE));
    assert_false(col_find(&c, MOAT_BRIDGE_EV_EXIT)->known);
    assert_int_equal(c.end.code, MOAT_CODE_OK);
    col_free(&c);

    /* test_run_command_rejects_blank_command: no request at all */
    int before = fake_request_count(&e.f);
    moat_bridge_run_opts blank = {.command = "   "};
    moat_bridge_exec *ex = NULL;
    moat_status st;
    col_init(&c);
    moat_bridge_consumer k = col_consumer(&c);
    assert_int_equal(moat_bridge_run(e.b, &e.ep, &blank, &k, 1000, &ex, &st), MOAT_E_INVAL);
    assert_int_equal(st.code, MOAT_CODE_INVALID_ARGUMENT);
    blank.command = "";
    assert_int_equal(moat_bridge_run(e.b, &e.ep, &blank, &k, 1000, &ex, &st), MOAT_E_INVAL);
    blank.command = NULL;
    assert_int_equal(moat_bridge_run(e.b, &e.ep, &blank, &k, 1000, &ex, &st), MOAT_E_INVAL);
    run_for_ms(&e, 50);
    assert_int_equal(fake_request_count(&e.f), before);
    assert_false(c.ended);
    col_free(&c);

    /* test_run_command_non_200_raises_api_exception */
    run_to_end(&e, "other", &c);
    assert_int_equal(c.n, 0);
    assert_int_equal(c.end.code, MOAT_CODE_INTERNAL);
    assert_string_equal(c.end.reason, "execd_api_error");
    assert_string_equal(moat_status_detail_get(&c.end, "http_status"), "500");
    assert_string_equal(moat_status_detail_get(&c.end, "body"), "boom");
    col_free(&c);

    /* test_run_in_session_streaming_uses_generated_fields_and_exit_code */
    moat_bridge_run_opts so = {
        .command = "pwd", .cwd = "/var", .timeout_ms = 5000, .session_id = "sess-1"};
    col_init(&c);
    run_cmd(&e, &so, &c, UINT64_MAX);
    run_until(&e, &c.ended);
    assert_string_equal(col_find(&c, MOAT_BRIDGE_EV_OUTPUT)->text, "/var");
    assert_int_equal(col_find(&c, MOAT_BRIDGE_EV_COMPLETE)->exec_time, 3);
    assert_int_equal(col_find(&c, MOAT_BRIDGE_EV_EXIT)->code, 0);
    assert_true(col_find(&c, MOAT_BRIDGE_EV_EXIT)->known);
    pthread_mutex_lock(&e.f.mu);
    assert_string_equal(e.f.last.path, "/session/sess-1/run");
    pthread_mutex_unlock(&e.f.mu);
    assert_last_body(&e, "{\"command\":\"pwd\",\"cwd\":\"/var\",\"timeout\":5000}");
    col_free(&c);

    /* test_run_in_session_non_zero_exit_updates_exit_code */
    moat_bridge_run_opts s2 = {.command = "exit 7", .session_id = "sess-2"};
    col_init(&c);
    run_cmd(&e, &s2, &c, UINT64_MAX);
    run_until(&e, &c.ended);
    assert_string_equal(col_find(&c, MOAT_BRIDGE_EV_INIT)->text, "sess-exec-2");
    assert_string_equal(col_find(&c, MOAT_BRIDGE_EV_ERROR)->text, "7");
    assert_null(col_find(&c, MOAT_BRIDGE_EV_COMPLETE));
    assert_int_equal(col_find(&c, MOAT_BRIDGE_EV_EXIT)->code, 7);
    col_free(&c);

    env_down(&e);
}

static void test_seed_cases_unix(void **state)
{
    (void)state;
    g_piece = 0;
    seed_cases(false);
}

static void test_seed_cases_small_writes(void **state)
{
    (void)state;
    size_t pieces[] = {1, 2, 3, 7, 13, 64};
    for (size_t i = 0; i < sizeof(pieces) / sizeof(pieces[0]); i++) {
        g_piece = pieces[i];
        seed_cases(false);
    }
    g_piece = 0;
}

static void test_seed_cases_tcp(void **state)
{
    (void)state;
    g_piece = 5;
    seed_cases(true);
    g_piece = 0;
}

static void test_access_token_and_text_mode(void **state)
{
    (void)state;
    moat_bridge_config cfg;
    moat_bridge_config_default(&cfg);
    cfg.binary_output = false;
    env e;
    env_up(&e, false, &cfg);
    e.ep.access_token = "tok-1";
    collect c;
    run_to_end(&e, "binary", &c);
    char h[64];
    fake_last_header(&e.f, "X-EXECD-ACCESS-TOKEN", h, sizeof(h));
    assert_string_equal(h, "tok-1");
    fake_last_header(&e.f, "X-Moat-Output", h, sizeof(h));
    assert_string_equal(h, "");
    assert_string_equal(col_find(&c, MOAT_BRIDGE_EV_OUTPUT)->text, "lines");
    col_free(&c);
    env_down(&e);
}

/* The run's JSON body: env (a repeated key keeps its last value), background,
 * and a timeout past 2^53 written as an exact integer. */
static void test_run_body(void **state)
{
    (void)state;
    env e;
    env_up(&e, false, NULL);
    const char *keys[] = {"A", "B", "A"}, *values[] = {"1", "x\"y", "3"};
    moat_bridge_run_opts o = {.command = "echo hi",
                              .cwd = "/w",
                              .timeout_ms = 9007199254740993u,
                              .env_keys = keys,
                              .env_values = values,
                              .env_count = 3,
                              .background = true};
    collect c;
    col_init(&c);
    run_cmd(&e, &o, &c, UINT64_MAX);
    run_until(&e, &c.ended);
    assert_int_equal(c.end.code, MOAT_CODE_OK);
    assert_last_body(&e, "{\"command\":\"echo hi\",\"cwd\":\"/w\",\"timeout\":9007199254740993,"
                         "\"background\":true,\"envs\":{\"A\":\"3\",\"B\":\"x\\\"y\"}}");
    pthread_mutex_lock(&e.f.mu);
    assert_non_null(strstr(e.f.last.body, "\"timeout\":9007199254740993,"));
    pthread_mutex_unlock(&e.f.mu);
    col_free(&c);
    env_down(&e);
}

/* ------------------------------------------------------------ real execd */

static void test_real_execd_quirks(void **state)
{
    (void)state;
    g_piece = 3;
    env e;
    env_up(&e, false, NULL);
    collect c;
    run_to_end(&e, "real ok", &c);
    assert_int_equal(c.end.code, MOAT_CODE_OK);
    assert_int_equal(c.n, 5);
    assert_string_equal(c.ev[2].text, "warn <x>");
    assert_int_equal(c.ev[2].stream, MOAT_BRIDGE_STDERR);
    assert_int_equal(c.ev[4].code, 0);
    col_free(&c);

    run_to_end(&e, "real appended", &c);
    assert_int_equal(c.end.code, MOAT_CODE_OK);
    assert_string_equal(col_find(&c, MOAT_BRIDGE_EV_ERROR)->name, "RUNTIME_ERROR");
    assert_false(col_find(&c, MOAT_BRIDGE_EV_EXIT)->known);
    assert_non_null(strstr(col_find(&c, MOAT_BRIDGE_EV_EXIT)->text, "timeout after 30s"));
    col_free(&c);

    /* a badly ended chunked body after the final event loses nothing */
    run_to_end(&e, "real bad end", &c);
    assert_int_equal(c.end.code, MOAT_CODE_OK);
    assert_int_equal(col_find(&c, MOAT_BRIDGE_EV_EXIT)->code, 0);
    assert_true(col_find(&c, MOAT_BRIDGE_EV_EXIT)->known);
    col_free(&c);
    env_down(&e);
    g_piece = 0;
}

/* ------------------------------------------------------------ hostile */

static void test_cut_and_reset(void **state)
{
    (void)state;
    env e;
    env_up(&e, false, NULL);
    collect c;
    const char *cuts[] = {"cut", "cut mid chunk", "cut close delimited"};
    for (size_t i = 0; i < 3; i++) {
        run_to_end(&e, cuts[i], &c);
        assert_int_equal(c.end.code, MOAT_CODE_UNAVAILABLE);
        assert_int_equal(col_find(&c, MOAT_BRIDGE_EV_INIT)->kind, MOAT_BRIDGE_EV_INIT);
        const col_event *x = col_find(&c, MOAT_BRIDGE_EV_EXIT);
        assert_non_null(x);
        assert_false(x->known);
        assert_true(c.ev[c.n - 1].kind == MOAT_BRIDGE_EV_EXIT);
        col_free(&c);
    }
    env_down(&e);

    env_up(&e, true, NULL);
    run_to_end(&e, "reset", &c);
    assert_int_equal(c.end.code, MOAT_CODE_UNAVAILABLE);
    assert_string_equal(col_find(&c, MOAT_BRIDGE_EV_INIT)->text, "r1");
    assert_false(col_find(&c, MOAT_BRIDGE_EV_EXIT)->known);
    col_free(&c);
    env_down(&e);
}

static void test_liveness(void **state)
{
    (void)state;
    moat_bridge_config cfg;
    moat_bridge_config_default(&cfg);
    cfg.idle_timeout_ms = 1000;
    env e;
    env_up(&e, false, &cfg);
    collect c;
    run_to_end(&e, "never", &c);
    assert_int_equal(c.end.code, MOAT_CODE_UNAVAILABLE);
    assert_string_equal(c.end.reason, "execd_silent");
    assert_int_equal(c.n, 0);
    col_free(&c);

    run_to_end(&e, "silent after init", &c);
    assert_int_equal(c.end.code, MOAT_CODE_UNAVAILABLE);
    assert_string_equal(c.end.reason, "execd_silent");
    assert_string_equal(c.ev[0].text, "s1");
    assert_false(col_find(&c, MOAT_BRIDGE_EV_EXIT)->known);
    col_free(&c);
    env_down(&e);

    /* nobody listening at all: beside this run's fake's socket, a path nothing makes */
    env_up(&e, false, &cfg);
    char nobody[sizeof(e.f.sock_path) + 8];
    snprintf(nobody, sizeof(nobody), "%s.nobody", e.f.sock_path);
    e.ep.unix_socket = nobody;
    run_to_end(&e, "echo hi", &c);
    assert_int_equal(c.end.code, MOAT_CODE_UNAVAILABLE);
    assert_string_equal(c.end.reason, "execd_unreachable");
    col_free(&c);
    env_down(&e);
}

static void test_64mib_line(void **state)
{
    (void)state;
    moat_bridge_config cfg;
    moat_bridge_config_default(&cfg);
    env e;
    env_up(&e, false, &cfg);
    collect c;
    run_to_end(&e, "64mib", &c);
    assert_int_equal(c.end.code, MOAT_CODE_RESOURCE_EXHAUSTED);
    assert_string_equal(c.end.reason, "sse_line_too_long");
    assert_false(col_find(&c, MOAT_BRIDGE_EV_EXIT)->known);
    col_free(&c);
    env_down(&e);

    cfg.oversize = MOAT_BRIDGE_OVERSIZE_SKIP;
    env_up(&e, false, &cfg);
    run_to_end(&e, "64mib", &c);
    assert_int_equal(c.end.code, MOAT_CODE_OK);
    assert_string_equal(col_find(&c, MOAT_BRIDGE_EV_OUTPUT)->text, "after");
    assert_int_equal(col_find(&c, MOAT_BRIDGE_EV_EXIT)->code, 0);
    col_free(&c);
    env_down(&e);
}

static void test_hostile_bytes(void **state)
{
    (void)state;
    g_piece = 4;
    env e;
    env_up(&e, false, NULL);
    collect c;
    run_to_end(&e, "hostile bytes", &c);
    assert_int_equal(c.end.code, MOAT_CODE_OK);
    assert_int_equal(c.n, 4);
    /* line mode is UTF-8 text: the escaped NUL arrives as U+FFFD */
    assert_int_equal(c.ev[1].len, 5);
    assert_memory_equal(c.ev[1].text, "n\xef\xbf\xbdl", 5);
    assert_int_equal(c.ev[3].code, 0);
    col_free(&c);
    env_down(&e);
    g_piece = 0;
}

static void test_binary_mode(void **state)
{
    (void)state;
    g_piece = 7;
    env e;
    env_up(&e, false, NULL);
    collect c;
    run_to_end(&e, "binary", &c);
    assert_int_equal(c.end.code, MOAT_CODE_OK);
    assert_int_equal(c.out_len[1], 256);
    for (int i = 0; i < 256; i++)
        assert_int_equal(c.out[1][i], i);
    assert_int_equal(c.out_len[2], 3);
    assert_memory_equal(c.out[2], "\0e\n", 3);
    col_free(&c);

    run_to_end(&e, "binary bad len", &c);
    assert_int_equal(c.end.code, MOAT_CODE_UNAVAILABLE);
    assert_string_equal(c.end.reason, "execd_protocol_error");
    assert_false(col_find(&c, MOAT_BRIDGE_EV_EXIT)->known);
    col_free(&c);
    env_down(&e);
    g_piece = 0;
}

/* ------------------------------------------------------------ flow control */

static void test_backpressure(void **state)
{
    (void)state;
    moat_bridge_config cfg;
    moat_bridge_config_default(&cfg);
    cfg.replay_bytes = 1u << 20;
    /* a paused transfer is not a silent execd */
    cfg.idle_timeout_ms = 1000;
    env e;
    env_up(&e, false, &cfg);
    collect c;
    col_init(&c);
    c.keep_events = false;
    c.out_max = 64u << 20;
    size_t total = 48u << 20;
    moat_bridge_run_opts o = {.command = "big 50331648"};
    moat_bridge_exec *ex = run_cmd(&e, &o, &c, 0);
    /* no credit: the transfer pauses and the ring stays bounded */
    moat_bridge_exec_stats s;
    for (int i = 0; i < 200; i++) {
        run_for_ms(&e, 5);
        moat_bridge_exec_get_stats(ex, &s);
        if (s.paused)
            break;
    }
    assert_true(s.paused);
    run_for_ms(&e, 2500);
    moat_bridge_exec_get_stats(ex, &s);
    assert_true(s.paused);
    assert_int_equal(c.events, 0);
    assert_true(s.ring_bytes <= cfg.replay_bytes + 2 * MOAT_BRIDGE_MAX_EVENT_COST);
    /* a trickle of credit: exactly what fits is delivered */
    moat_bridge_exec_credit(ex, 16 + 31);
    assert_int_equal(c.events, 1);
    moat_bridge_exec_credit(ex, 100);
    assert_int_equal(c.events, 1);
    /* then credit back per event: everything arrives, once, in order */
    c.regrant = MOAT_BRIDGE_MAX_EVENT_COST;
    moat_bridge_exec_credit(ex, 4 * MOAT_BRIDGE_MAX_EVENT_COST);
    size_t max_ring = 0;
    while (!c.ended) {
        uv_run(&e.loop, UV_RUN_ONCE);
        if (!c.ended) {
            moat_bridge_exec_get_stats(ex, &s);
            if (s.ring_bytes > max_ring)
                max_ring = s.ring_bytes;
        }
    }
    assert_int_equal(c.end.code, MOAT_CODE_OK);
    assert_false(c.seq_gap);
    assert_int_equal(c.out_total[1], total);
    for (size_t i = 0; i < total; i++)
        if (c.out[1][i] != (uint8_t)(i * 31 >> 3))
            fail_msg("byte %zu differs", i);
    assert_true(max_ring <= cfg.replay_bytes + 2 * MOAT_BRIDGE_MAX_EVENT_COST);
    col_free(&c);
    env_down(&e);
}

typedef struct cross {
    collect c;
    moat_bridge_exec *other;
    bool granted;
} cross;

static void cross_event(void *ud, moat_bridge_exec *ex, const moat_bridge_event *ev)
{
    cross *x = ud;
    col_on_event(&x->c, ex, ev);
    if (!x->granted) {
        /* credit for another, paused, transfer from inside this one's callback */
        x->granted = true;
        moat_bridge_exec_credit(x->other, 4 * MOAT_BRIDGE_MAX_EVENT_COST);
    }
}

static void cross_end(void *ud, moat_bridge_exec *ex, const moat_status *st)
{
    col_on_end(&((cross *)ud)->c, ex, st);
}

static void test_credit_from_other_callback(void **state)
{
    (void)state;
    moat_bridge_config cfg;
    moat_bridge_config_default(&cfg);
    cfg.replay_bytes = 256u << 10;
    env e;
    env_up(&e, false, &cfg);
    collect b;
    col_init(&b);
    b.keep_events = false;
    b.out_max = 8u << 20;
    b.regrant = MOAT_BRIDGE_MAX_EVENT_COST;
    moat_bridge_run_opts ob = {.command = "big 4194304"};
    moat_bridge_exec *exb = run_cmd(&e, &ob, &b, 0);
    moat_bridge_exec_stats s;
    do {
        uv_run(&e.loop, UV_RUN_ONCE);
        moat_bridge_exec_get_stats(exb, &s);
    } while (!s.paused);
    cross a;
    memset(&a, 0, sizeof(a));
    col_init(&a.c);
    a.other = exb;
    moat_bridge_consumer k = {cross_event, cross_end, &a, NULL};
    moat_bridge_run_opts oa = {.command = "count 10"};
    moat_bridge_exec *exa = NULL;
    moat_status st;
    assert_int_equal(moat_bridge_run(e.b, &e.ep, &oa, &k, UINT64_MAX, &exa, &st), MOAT_OK);
    run_until(&e, &a.c.ended);
    run_until(&e, &b.ended);
    assert_int_equal(b.end.code, MOAT_CODE_OK);
    assert_int_equal(b.out_total[1], 4194304);
    assert_false(b.seq_gap);
    for (size_t i = 0; i < b.out_len[1]; i++)
        if (b.out[1][i] != (uint8_t)(i * 31 >> 3))
            fail_msg("byte %zu differs", i);
    col_free(&a.c);
    col_free(&b);
    env_down(&e);
}

static void test_many_concurrent(void **state)
{
    (void)state;
    env e;
    env_up(&e, false, NULL);
    enum { N = 40 };
    collect c[N];
    char cmds[N][32];
    for (int i = 0; i < N; i++) {
        col_init(&c[i]);
        snprintf(cmds[i], sizeof(cmds[i]), "count %d", 50 + i);
        moat_bridge_run_opts o = {.command = cmds[i]};
        run_cmd(&e, &o, &c[i], UINT64_MAX);
    }
    for (int i = 0; i < N; i++) {
        run_until(&e, &c[i].ended);
        assert_int_equal(c[i].end.code, MOAT_CODE_OK);
        assert_int_equal(col_count(&c[i], MOAT_BRIDGE_EV_OUTPUT), (size_t)(50 + i));
        char want[32];
        snprintf(want, sizeof(want), "line %d", 49 + i);
        assert_string_equal(c[i].ev[c[i].n - 3].text, want);
        assert_false(c[i].seq_gap);
        col_free(&c[i]);
    }
    env_down(&e);
}

/* ------------------------------------------------------------ attach */

static void test_attach(void **state)
{
    (void)state;
    moat_bridge_config cfg;
    moat_bridge_config_default(&cfg);
    cfg.replay_bytes = 256u << 10; /* the minimum */
    env e;
    env_up(&e, false, &cfg);
    collect a;
    col_init(&a);
    moat_bridge_run_opts o = {.command = "count 100"};
    /* credit for a few events only, then the consumer goes away */
    moat_bridge_exec *ex = run_cmd(&e, &o, &a, 100);
    while (a.events < 4)
        uv_run(&e.loop, UV_RUN_ONCE);
    uint64_t seen = a.last_seq;
    assert_int_equal(seen, 4);
    moat_bridge_exec_detach(ex);
    moat_bridge_exec_stats s;
    do {
        uv_run(&e.loop, UV_RUN_ONCE);
        moat_bridge_exec_get_stats(ex, &s);
    } while (!s.finished);
    assert_int_equal(s.last_sequence, 103); /* init, 100 lines, complete, exit */

    collect b;
    col_init(&b);
    moat_bridge_consumer k = col_consumer(&b);
    moat_bridge_exec *ex2 = NULL;
    moat_status st;
    assert_int_equal(moat_bridge_attach(e.b, "sandbox-1", "100", seen, &k, UINT64_MAX, &ex2, &st),
                     MOAT_OK);
    assert_ptr_equal(ex, ex2);
    assert_true(b.ended); /* replayed to the end synchronously */
    assert_int_equal(b.end.code, MOAT_CODE_OK);
    assert_int_equal(b.ev[0].seq, seen + 1);
    assert_int_equal(b.last_seq, 103);
    assert_false(b.seq_gap);
    assert_int_equal(col_find(&b, MOAT_BRIDGE_EV_EXIT)->code, 0);
    col_free(&b);

    /* errors: beyond the end, unknown id, other scope */
    assert_int_equal(moat_bridge_attach(e.b, "sandbox-1", "100", 104, &k, 0, &ex2, &st),
                     MOAT_E_INVAL);
    assert_int_equal(st.code, MOAT_CODE_OUT_OF_RANGE);
    assert_int_equal(moat_bridge_attach(e.b, "sandbox-1", "nope", 0, &k, 0, &ex2, &st),
                     MOAT_E_NOT_FOUND);
    assert_int_equal(st.code, MOAT_CODE_NOT_FOUND);
    assert_int_equal(moat_bridge_attach(e.b, "sandbox-2", "100", 0, &k, 0, &ex2, &st),
                     MOAT_E_NOT_FOUND);
    col_free(&a);

    /* a stream bigger than the ring: what left it is DATA_LOSS */
    col_init(&a);
    o.command = "count 20000";
    ex = run_cmd(&e, &o, &a, 50);
    while (a.events < 2)
        uv_run(&e.loop, UV_RUN_ONCE);
    moat_bridge_exec_detach(ex);
    do {
        uv_run(&e.loop, UV_RUN_ONCE);
        moat_bridge_exec_get_stats(ex, &s);
    } while (!s.finished);
    assert_true(s.oldest_sequence > 3);
    assert_true(s.ring_bytes <= cfg.replay_bytes);
    col_init(&b);
    k = col_consumer(&b);
    assert_int_equal(moat_bridge_attach(e.b, "sandbox-1", "20000", 2, &k, 0, &ex2, &st),
                     MOAT_E_NOT_FOUND);
    assert_int_equal(st.code, MOAT_CODE_DATA_LOSS);
    /* from the oldest kept one it works, with credit handed out slowly */
    assert_int_equal(
        moat_bridge_attach(e.b, "sandbox-1", "20000", s.oldest_sequence - 1, &k, 0, &ex2, &st),
        MOAT_OK);
    assert_int_equal(b.events, 0);
    while (!b.ended)
        moat_bridge_exec_credit(ex2, 100);
    assert_int_equal(b.ev[0].seq, s.oldest_sequence);
    assert_int_equal(b.last_seq, 20003);
    assert_false(b.seq_gap);
    col_free(&b);
    col_free(&a);

    /* a second consumer supersedes the first while live */
    col_init(&a);
    o.command = "count 3";
    ex = run_cmd(&e, &o, &a, 0);
    do {
        uv_run(&e.loop, UV_RUN_ONCE);
        moat_bridge_exec_get_stats(ex, &s);
    } while (s.last_sequence < 1);
    col_init(&b);
    k = col_consumer(&b);
    assert_int_equal(moat_bridge_attach(e.b, "sandbox-1", "3", 0, &k, UINT64_MAX, &ex2, &st),
                     MOAT_OK);
    assert_true(a.ended);
    assert_int_equal(a.end.code, MOAT_CODE_ABORTED);
    assert_string_equal(a.end.reason, "superseded_by_attach");
    run_until(&e, &b.ended);
    assert_int_equal(b.ev[0].seq, 1);
    assert_int_equal(b.last_seq, 6);
    col_free(&a);
    col_free(&b);
    env_down(&e);
}

/* One budget over every ring: retained replay goes oldest first; undelivered
 * events are never dropped, they pause their transfer at the account's share
 * or the global cap, and new streams are refused while it holds. */
/* What one write callback can add past a check: what a pause makes curl keep (counted
 * as twice the 128 KiB receive buffer), and the event it completes. */
#define ONE_WRITE ((2u * 128u + 64u) << 10)

/* A share smaller than what a pause makes curl keep: once the consumer reads, the transfer
 * resumes and ends (its own held bytes never keep it waiting on itself). */
static void test_paused_transfer_resumes_past_small_share(void **state)
{
    (void)state;
    moat_bridge_budget bg = {.cap = 64u << 20};
    moat_bridge_config cfg;
    moat_bridge_config_default(&cfg);
    cfg.budget = &bg;
    env e;
    env_up(&e, false, &cfg);
    moat_bridge_account acct = {.limit = 64u << 10};
    collect c;
    col_init(&c);
    c.keep_events = false;
    moat_bridge_consumer k = col_consumer(&c);
    k.account = &acct;
    moat_bridge_run_opts o = {.command = "count 20000"};
    moat_bridge_exec *ex = NULL;
    moat_status st;
    assert_int_equal(moat_bridge_run(e.b, &e.ep, &o, &k, 0, &ex, &st), MOAT_OK);
    moat_bridge_exec_stats s;
    run_until_paused(&e, ex, &s);
    assert_true(acct.pinned >= acct.limit);
    moat_bridge_exec_credit(ex, UINT64_MAX);
    run_until(&e, &c.ended);
    assert_int_equal(c.end.code, MOAT_CODE_OK);
    assert_int_equal(acct.pinned, 0);
    col_free(&c);
    env_down(&e);
}

static void test_memory_budget(void **state)
{
    (void)state;
    moat_bridge_budget bg = {.cap = 1u << 20};
    moat_bridge_config cfg;
    moat_bridge_config_default(&cfg);
    cfg.replay_bytes = 1u << 20;
    cfg.idle_timeout_ms = 5000;
    cfg.budget = &bg;
    env e;
    env_up(&e, false, &cfg);
    /* three finished runs of about 1 MiB of ring each: the budget keeps 1 MiB */
    const char *cmds[] = {"count 20000", "count 20001", "count 20002"};
    for (int i = 0; i < 3; i++) {
        collect c;
        col_init(&c);
        c.keep_events = false;
        moat_bridge_run_opts o = {.command = cmds[i]};
        run_cmd(&e, &o, &c, UINT64_MAX);
        run_until(&e, &c.ended);
        assert_int_equal(c.end.code, MOAT_CODE_OK);
        col_free(&c);
        assert_true(bg.used <= bg.cap);
        assert_int_equal(bg.pinned, 0);
    }
    assert_true(bg.dropped_bytes > 0);
    assert_true(bg.peak <= bg.cap + MOAT_BRIDGE_MAX_EVENT_COST + 256);
    /* the oldest run lost its replay first: DATA_LOSS; the newest still has its tail */
    collect b;
    col_init(&b);
    moat_bridge_consumer k = col_consumer(&b);
    moat_bridge_exec *ex2 = NULL;
    moat_status st;
    assert_int_equal(moat_bridge_attach(e.b, "sandbox-1", "20000", 0, &k, 0, &ex2, &st),
                     MOAT_E_NOT_FOUND);
    assert_int_equal(st.code, MOAT_CODE_DATA_LOSS);
    assert_int_equal(
        moat_bridge_attach(e.b, "sandbox-1", "20002", 20003, &k, UINT64_MAX, &ex2, &st), MOAT_OK);
    assert_true(b.ended);
    col_free(&b);

    /* a consumer that grants nothing pins at most its account's share */
    moat_bridge_account acct = {.limit = 256u << 10};
    collect c;
    col_init(&c);
    c.keep_events = false;
    k = col_consumer(&c);
    k.account = &acct;
    moat_bridge_run_opts ob = {.command = "big 50331648"};
    moat_bridge_exec *big = NULL;
    assert_int_equal(moat_bridge_run(e.b, &e.ep, &ob, &k, 0, &big, &st), MOAT_OK);
    moat_bridge_exec_stats s;
    run_until_paused(&e, big, &s);
    /* curl's receive buffer as the writes so far filled it, and the decoder's buffers,
     * count as used until the transfer ends */
    assert_true(s.transfer_buffer_bytes > 0);
    assert_true(s.transfer_buffer_bytes <= (128u << 10) + (1u << 20) + 65536u);
    assert_true(bg.used >= s.ring_bytes + s.transfer_buffer_bytes);
    assert_true(acct.pinned >= acct.limit);
    assert_true(acct.pinned <= acct.limit + ONE_WRITE);
    assert_int_equal(bg.pinned, acct.pinned);
    assert_true(bg.used <= bg.cap + ONE_WRITE);
    /* the bridge does not refuse the party (its owner knows whether it reads) */
    assert_true(moat_bridge_budget_exhausted(e.b, &acct));
    assert_false(moat_bridge_budget_exhausted(e.b, NULL));
    /* its stream that is read is not held back by the share its unread one fills: it ends
     * while the share is still full, as other parties' streams do */
    collect r;
    col_init(&r);
    moat_bridge_consumer kr = col_consumer(&r);
    kr.account = &acct;
    moat_bridge_run_opts o1 = {.command = "count 1"};
    moat_bridge_exec *read = NULL;
    assert_int_equal(moat_bridge_run(e.b, &e.ep, &o1, &kr, UINT64_MAX, &read, &st), MOAT_OK);
    run_until(&e, &r.ended);
    assert_int_equal(r.end.code, MOAT_CODE_OK);
    assert_true(moat_bridge_budget_exhausted(e.b, &acct));
    col_free(&r);
    /* but by what the owner still queues for the party: with its charges at the share, that
     * stream waits until they drain */
    moat_bridge_budget_charge(e.b, &acct, (int64_t)acct.limit);
    col_init(&r);
    kr = col_consumer(&r);
    kr.account = &acct;
    assert_int_equal(moat_bridge_run(e.b, &e.ep, &o1, &kr, UINT64_MAX, &read, &st), MOAT_OK);
    run_until_paused(&e, read, &s);
    assert_false(r.ended);
    moat_bridge_budget_charge(e.b, &acct, -(int64_t)acct.limit);
    run_until(&e, &r.ended);
    assert_int_equal(r.end.code, MOAT_CODE_OK);
    col_free(&r);
    collect r2;
    col_init(&r2);
    run_cmd(&e, &o1, &r2, UINT64_MAX);
    run_until(&e, &r2.ended);
    assert_int_equal(r2.end.code, MOAT_CODE_OK);
    col_free(&r2);
    /* its new stream that is not read takes one write past the share, then waits */
    col_init(&r);
    kr = col_consumer(&r);
    kr.account = &acct;
    moat_bridge_run_opts o2 = {.command = "big 4194304"};
    moat_bridge_exec *waits = NULL;
    assert_int_equal(moat_bridge_run(e.b, &e.ep, &o2, &kr, 0, &waits, &st), MOAT_OK);
    run_until_paused(&e, waits, &s);
    assert_true(acct.pinned <= acct.limit + 2 * ONE_WRITE);
    assert_false(r.ended);
    /* the party's share frees up and the waiting stream is read: it resumes and ends */
    moat_bridge_exec_set_account(big, NULL);
    moat_bridge_exec_credit(waits, UINT64_MAX);
    run_until(&e, &r.ended);
    assert_int_equal(acct.pinned, 0);
    assert_int_equal(r.end.code, MOAT_CODE_OK);
    col_free(&r);

    /* bytes the owner charges are pinned: at the cap everyone is refused */
    moat_bridge_budget_charge(e.b, NULL, (int64_t)bg.cap);
    assert_true(moat_bridge_budget_exhausted(e.b, NULL));
    col_init(&r);
    kr = col_consumer(&r);
    moat_bridge_exec *refused = NULL;
    assert_int_equal(moat_bridge_run(e.b, &e.ep, &o1, &kr, UINT64_MAX, &refused, &st),
                     MOAT_E_TOO_BIG);
    assert_int_equal(st.code, MOAT_CODE_RESOURCE_EXHAUSTED);
    assert_string_equal(st.reason, "memory_budget_exhausted");
    assert_string_equal(st.details[0].value, "server");
    assert_false(r.ended);
    assert_int_equal(bg.refused, 1);
    moat_bridge_budget_charge(e.b, NULL, -(int64_t)bg.cap);
    assert_false(moat_bridge_budget_exhausted(e.b, NULL));
    col_free(&r);

    size_t used_before_cancel = bg.used;
    moat_bridge_exec_cancel(big);
    assert_int_equal(bg.pinned, 0);
    moat_bridge_exec_get_stats(big, &s);
    assert_int_equal(s.transfer_buffer_bytes, 0);
    assert_true(bg.used < used_before_cancel);
    col_free(&c);

    /* a sandbox gone: its retained executions go, and their memory */
    moat_bridge_drop_scope(e.b, "sandbox-1");
    assert_int_equal(bg.used, 0);
    col_init(&b);
    k = col_consumer(&b);
    assert_int_equal(moat_bridge_attach(e.b, "sandbox-1", "20002", 0, &k, 0, &ex2, &st),
                     MOAT_E_NOT_FOUND);
    col_free(&b);
    env_down(&e);
}

static void test_retention(void **state)
{
    (void)state;
    moat_bridge_config cfg;
    moat_bridge_config_default(&cfg);
    cfg.retention_ms = 1; /* swept at the adapter's next 1 s tick */
    env e;
    env_up(&e, false, &cfg);
    collect a;
    col_init(&a);
    moat_bridge_run_opts o = {.command = "count 2"};
    run_cmd(&e, &o, &a, UINT64_MAX);
    run_until(&e, &a.ended);
    moat_bridge_exec *ex2 = NULL;
    moat_status st;
    collect b;
    col_init(&b);
    moat_bridge_consumer k = col_consumer(&b);
    assert_int_equal(moat_bridge_attach(e.b, "sandbox-1", "2", 0, &k, 0, &ex2, &st), MOAT_OK);
    moat_bridge_exec_detach(ex2);
    /* the sweep runs from the adapter's timer or with the next activity */
    run_for_ms(&e, 1100);
    collect c;
    o.command = "count 1";
    col_init(&c);
    run_cmd(&e, &o, &c, UINT64_MAX);
    run_until(&e, &c.ended);
    col_free(&c);
    assert_int_equal(moat_bridge_attach(e.b, "sandbox-1", "2", 0, &k, 0, &ex2, &st),
                     MOAT_E_NOT_FOUND);
    col_free(&a);
    col_free(&b);
    env_down(&e);
}

static void test_cancel(void **state)
{
    (void)state;
    env e;
    env_up(&e, false, NULL);
    collect c;
    col_init(&c);
    moat_bridge_run_opts o = {.command = "silent after init"};
    moat_bridge_exec *ex = run_cmd(&e, &o, &c, UINT64_MAX);
    while (c.events < 1)
        uv_run(&e.loop, UV_RUN_ONCE);
    moat_bridge_exec_cancel(ex);
    assert_true(c.ended);
    assert_int_equal(c.end.code, MOAT_CODE_CANCELLED);
    col_free(&c);
    /* freeing the bridge with a live stream ends it with CANCELLED */
    col_init(&c);
    o.command = "never";
    run_cmd(&e, &o, &c, UINT64_MAX);
    run_for_ms(&e, 50);
    env_down(&e);
    assert_true(c.ended);
    assert_int_equal(c.end.code, MOAT_CODE_CANCELLED);
    col_free(&c);
}

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
        cmocka_unit_test(test_seed_cases_unix),
        cmocka_unit_test(test_seed_cases_small_writes),
        cmocka_unit_test(test_seed_cases_tcp),
        cmocka_unit_test(test_access_token_and_text_mode),
        cmocka_unit_test(test_run_body),
        cmocka_unit_test(test_real_execd_quirks),
        cmocka_unit_test(test_cut_and_reset),
        cmocka_unit_test(test_liveness),
        cmocka_unit_test(test_64mib_line),
        cmocka_unit_test(test_hostile_bytes),
        cmocka_unit_test(test_binary_mode),
        cmocka_unit_test(test_backpressure),
        cmocka_unit_test(test_credit_from_other_callback),
        cmocka_unit_test(test_many_concurrent),
        cmocka_unit_test(test_attach),
        cmocka_unit_test(test_memory_budget),
        cmocka_unit_test(test_paused_transfer_resumes_past_small_share),
        cmocka_unit_test(test_retention),
        cmocka_unit_test(test_cancel),
        cmocka_unit_test(test_calls),
        cmocka_unit_test(test_download),
        cmocka_unit_test(test_upload),
        cmocka_unit_test(test_write_at),
    };
    return moat_run_group_tests("test_client", tests, NULL, NULL);
}
