/* The fake execd the bridge_client_* tests talk to (what it answers for each command and
 * path) and their libuv harness: a bridge on a loop, pointed at a fake started per test. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "moat_test.h"
#include <unistd.h>
#include <uv.h>

#include "client_harness.h"
#include "common/json.h"
#include "seed_streams.h"

size_t g_piece; /* 0: send each stream in one write */

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

void env_up(env *e, bool tcp, const moat_bridge_config *cfg)
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

void env_down(env *e)
{
    moat_bridge_free(e->b);
    uv_run(&e->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&e->loop), 0);
    fake_stop(&e->f);
}

/* Runs the loop until *flag; a generous guard turns a hang into a failure. */
void run_until(env *e, const bool *flag)
{
    uint64_t until = moat_time_mono_ns() + 60ull * 1000000000ull;
    while (!*flag) {
        assert_true(moat_time_mono_ns() < until);
        if (uv_run(&e->loop, UV_RUN_ONCE) == 0)
            usleep(1000);
    }
}

/* Runs the loop until ex's transfer is paused, bounded as run_until is; its stats in *s. */
void run_until_paused(env *e, moat_bridge_exec *ex, moat_bridge_exec_stats *s)
{
    uint64_t until = moat_time_mono_ns() + 60ull * 1000000000ull;
    for (moat_bridge_exec_get_stats(ex, s); !s->paused; moat_bridge_exec_get_stats(ex, s)) {
        assert_true(moat_time_mono_ns() < until);
        if (uv_run(&e->loop, UV_RUN_ONCE) == 0)
            usleep(1000);
    }
}

void run_for_ms(env *e, int ms)
{
    uint64_t until = moat_time_mono_ns() + (uint64_t)ms * 1000000ull;
    while (moat_time_mono_ns() < until)
        if (uv_run(&e->loop, UV_RUN_NOWAIT) == 0)
            usleep(1000);
        else
            usleep(200);
}

moat_bridge_exec *run_cmd(env *e, const moat_bridge_run_opts *o, collect *c, uint64_t credit)
{
    moat_bridge_consumer k = col_consumer(c);
    moat_bridge_exec *ex = NULL;
    moat_status st;
    assert_int_equal(moat_bridge_run(e->b, &e->ep, o, &k, credit, &ex, &st), MOAT_OK);
    c->ex = ex;
    return ex;
}

void run_to_end(env *e, const char *cmd, collect *c)
{
    moat_bridge_run_opts o = {.command = cmd};
    col_init(c);
    run_cmd(e, &o, c, UINT64_MAX);
    run_until(e, &c->ended);
}

/* The last request's body is the same JSON as want (member order aside). */
void assert_last_body(env *e, const char *want)
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
