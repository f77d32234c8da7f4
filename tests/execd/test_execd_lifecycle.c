/* Integration tests of the real moat-execd as a daemon: its limits (headers past a
 * connection's memory, the command table, retention), the access token, --run-as, memory held
 * flat under 100 MB of output and a stalled reader, metrics, orphan reaping and SIGTERM. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include "moat_test.h"

#include "xd_fixture.h"

#include <curl/curl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* Headers larger than a connection's memory (libmicrohttpd's pool, 256 KiB: src/execd/main.c)
 * are refused with 431 before they are all read, and execd goes on serving. */
static void test_headers_past_connection_memory(void **state)
{
    (void)state;
    size_t len = 2u << 20;
    char *req = malloc(len);
    assert_non_null(req);
    int head = snprintf(req, len, "GET /ping HTTP/1.1\r\nHost: x\r\nX-Big: ");
    memset(req + head, 'a', len - (size_t)head);
    int fd = connect_unix();
    /* execd answers and closes once its buffer is full: the rest of the send then fails */
    for (size_t sent = 0; sent < len;) {
        ssize_t n = send(fd, req + sent, len - sent, MSG_NOSIGNAL);
        if (n <= 0)
            break;
        sent += (size_t)n;
    }
    free(req);
    char resp[512];
    size_t got = 0;
    ssize_t n;
    while (got + 1 < sizeof(resp) && (n = read(fd, resp + got, sizeof(resp) - 1 - got)) > 0)
        got += (size_t)n;
    resp[got] = '\0';
    close(fd);
    long status = 0;
    sscanf(resp, "HTTP/1.1 %ld", &status);
    assert_int_equal(status, 431);
    xd_resp r = xd_http(&xp.unix_t, "GET", "/ping", NULL, NULL);
    assert_int_equal(r.status, 200);
    xd_resp_free(&r);
}

static void test_token(void **state)
{
    (void)state;
    xd_proc tp;
    const char *args[] = {"--access-token", "s3cret", NULL};
    assert_true(xd_start(&tp, args));
    xd_resp r = xd_http(&tp.unix_t, "GET", "/ping", NULL, NULL);
    assert_int_equal(r.status, 401);
    assert_string_equal(
        r.body, "{\"error\":\"Unauthorized: invalid or missing header X-EXECD-ACCESS-TOKEN\"}");
    xd_resp_free(&r);
    r = xd_http(&tp.tcp_t, "POST", "/command", "{\"command\":\"true\"}",
                "X-EXECD-ACCESS-TOKEN: wrong");
    assert_int_equal(r.status, 401);
    xd_resp_free(&r);
    /* a write is refused before any byte reaches the file system */
    char q[512], p[256];
    snprintf(p, sizeof(p), "%s/tokened.bin", tp.dir);
    snprintf(q, sizeof(q), "/files/write?path=%s", p);
    r = xd_http_body(&tp.unix_t, "POST", q, "nope", 4, NULL);
    assert_int_equal(r.status, 401);
    xd_resp_free(&r);
    assert_int_not_equal(access(p, F_OK), 0);
    r = xd_http_body(&tp.unix_t, "POST", q, "nope", 4, "X-EXECD-ACCESS-TOKEN: wrong");
    assert_int_equal(r.status, 401);
    xd_resp_free(&r);
    assert_int_not_equal(access(p, F_OK), 0);
    tp.unix_t.token = "s3cret";
    r = xd_http_body(&tp.unix_t, "POST", q, "yes", 3, NULL);
    assert_int_equal(r.status, 200);
    xd_resp_free(&r);
    assert_int_equal(access(p, F_OK), 0);
    tp.tcp_t.token = "s3cret";
    xd_run run;
    xd_stream(&tp.tcp_t, "/command", "{\"command\":\"echo ok\"}", false, &run);
    assert_true(run.complete);
    assert_string_equal(run.out, "ok");
    int st = xd_stop(&tp);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/* ---- memory bound ---- */

static size_t count_write(char *ptr, size_t size, size_t n, void *ud)
{
    (void)ptr;
    *(size_t *)ud += size * n;
    return size * n;
}

static size_t stream_bytes(const char *cmd, bool binary)
{
    CURL *c = curl_easy_init();
    struct curl_slist *h = NULL;
    if (binary)
        h = curl_slist_append(h, "X-Moat-Output: binary");
    h = curl_slist_append(h, "Content-Type: application/json");
    size_t total = 0;
    curl_easy_setopt(c, CURLOPT_URL, "http://localhost/command");
    curl_easy_setopt(c, CURLOPT_UNIX_SOCKET_PATH, xp.unix_t.unix_path);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, cmd);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, count_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &total);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 240L);
    assert_int_equal(curl_easy_perform(c), CURLE_OK);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    return total;
}

static void test_big_output_memory(void **state)
{
    (void)state;
    /* Under a wrapper (valgrind) VmRSS is the tool's, and 220 MB take minutes. */
    if (xd_wrapped())
        moat_skip("under valgrind VmRSS is valgrind's, and 220 MB take minutes");
    long before = xd_rss_kb(xp.pid);
    assert_true(before > 0);
    /* 100 MB in lines of 100 bytes (line mode), then 100 MB in binary mode */
    size_t n =
        stream_bytes("{\"command\":\"yes aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                     "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa | head -c 100000000\"}",
                     false);
    assert_true(n > 100000000);
    n = stream_bytes("{\"command\":\"head -c 100000000 /dev/zero\"}", true);
    assert_true(n > 100000000);
    /* one long line without any newline: split into bounded pieces */
    n = stream_bytes("{\"command\":\"head -c 20000000 /dev/zero | tr '\\\\0' x\"}", false);
    assert_true(n > 20000000);
    long after = xd_rss_kb(xp.pid);
    print_message("execd VmRSS before %ld kB, after %ld kB\n", before, after);
    assert_true(after - before < 64 * 1024);
}

/* A reader that stops reading: execd must not buffer, and closing ends the command. */
static void test_stalled_reader(void **state)
{
    (void)state;
    int fd = connect_unix();
    const char body[] = "{\"command\":\"yes\"}";
    char req[512];
    int n = snprintf(req, sizeof(req),
                     "POST /command HTTP/1.1\r\nHost: x\r\nX-Moat-Output: binary\r\n"
                     "Content-Length: %zu\r\n\r\n%s",
                     sizeof(body) - 1, body);
    assert_int_equal(write(fd, req, (size_t)n), n);
    /* headers and the first events may come in separate reads */
    char buf[8192];
    size_t got = 0;
    char *init = NULL;
    while (init == NULL && got + 1 < sizeof(buf)) {
        ssize_t r = read(fd, buf + got, sizeof(buf) - 1 - got);
        assert_true(r > 0);
        got += (size_t)r;
        buf[got] = '\0';
        init = strstr(buf, "\"init\",\"text\":\"");
        if (init != NULL && strlen(init) < 15 + 32)
            init = NULL;
    }
    assert_non_null(init);
    char id[33];
    snprintf(id, sizeof(id), "%.32s", init + 15);
    long before = xd_rss_kb(xp.pid);
    nap_ms(1500); /* yes writes as fast as it can while nobody reads */
    long after = xd_rss_kb(xp.pid);
    print_message("stalled reader: execd VmRSS %ld → %ld kB\n", before, after);
    /* Under a wrapper (valgrind) VmRSS is the tool's, which grows on its own. */
    if (!xd_wrapped())
        assert_true(after - before < 16 * 1024);
    else
        moat_skip_note(rss_unchecked);
    cJSON *st = status_of(id);
    assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(st, "running")));
    cJSON_Delete(st);
    close(fd);
    st = wait_done(id);
    assert_int_equal(xd_json_i64(st, "exit_code"), -1);
    cJSON_Delete(st);
}

static void test_metrics(void **state)
{
    (void)state;
    xd_resp r = xd_http(&xp.unix_t, "GET", "/metrics", NULL, NULL);
    assert_int_equal(r.status, 200);
    cJSON *j = xd_json(&r);
    assert_true(xd_json_num(j, "cpu_count") > 0);
    assert_true(xd_json_num(j, "mem_total_mib") > 0);
    assert_true(xd_json_num(j, "mem_used_mib") > 0);
    assert_true(cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(j, "cpu_used_pct")));
    assert_true(xd_json_i64(j, "timestamp") > 0);
    cJSON_Delete(j);
    xd_resp_free(&r);
}

typedef struct first_line {
    char buf[1024];
    size_t len;
} first_line;

static size_t until_newline(char *ptr, size_t size, size_t n, void *ud)
{
    first_line *f = ud;
    size_t add = size * n;
    if (f->len + add >= sizeof(f->buf))
        return 0;
    memcpy(f->buf + f->len, ptr, add);
    f->len += add;
    f->buf[f->len] = '\0';
    return strchr(f->buf, '\n') ? 0 : add; /* abort once a line is in */
}

static void test_metrics_watch(void **state)
{
    (void)state;
    CURL *c = curl_easy_init();
    first_line f = {.len = 0};
    curl_easy_setopt(c, CURLOPT_URL, "http://localhost/metrics/watch");
    curl_easy_setopt(c, CURLOPT_UNIX_SOCKET_PATH, xp.unix_t.unix_path);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, until_newline);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &f);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 20L);
    curl_easy_perform(c);
    curl_easy_cleanup(c);
    char *nl = strchr(f.buf, '\n');
    assert_non_null(nl);
    cJSON *j = moat_json_parse(f.buf, (size_t)(nl - f.buf), MOAT_JSON_NUL_REJECT);
    assert_non_null(j);
    assert_true(xd_json_num(j, "cpu_count") > 0);
    cJSON_Delete(j);
}

/* Orphans of commands are adopted (subreaper) and reaped: no zombies pile up. */
/* The parent of pid from /proc, or -1 once the pid is gone. */
static int parent_of(pid_t pid)
{
    char path[64], line[512];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    int ppid = -1;
    if (fgets(line, sizeof(line), f) != NULL) {
        char *rp = strrchr(line, ')');
        char st;
        if (rp == NULL || sscanf(rp + 2, "%c %d", &st, &ppid) != 2)
            ppid = -1;
    }
    fclose(f);
    return ppid;
}

/* A command's orphan (its shell gone) becomes execd's child, since execd is a subreaper, and
 * execd reaps it when it ends: the pid disappears instead of staying a zombie. */
static void test_reaping(void **state)
{
    (void)state;
    xd_run r;
    xd_stream(&xp.unix_t, "/command",
              "{\"command\":\"(sleep 300 </dev/null >/dev/null 2>&1 & echo $!)\"}", false, &r);
    assert_true(r.complete);
    pid_t orphan = atoi(r.out);
    assert_true(orphan > 0);
    int parent = parent_of(orphan);
    for (int i = 0; i < 3000 && parent != xp.pid; i++) {
        nap_ms(10);
        parent = parent_of(orphan);
    }
    assert_int_equal(parent, xp.pid);
    assert_int_equal(kill(orphan, SIGKILL), 0);
    for (int i = 0; i < 3000 && parent == xp.pid; i++) {
        nap_ms(10);
        parent = parent_of(orphan);
    }
    assert_int_not_equal(parent, xp.pid);
}

/* SIGTERM reaches running commands and execd exits 0, removing its socket. */
static void test_sigterm(void **state)
{
    (void)state;
    xd_proc tp;
    assert_true(xd_start(&tp, NULL));
    xd_run r;
    xd_stream(&tp.unix_t, "/command", "{\"command\":\"sleep 120\",\"background\":true}", false, &r);
    char sock[300];
    snprintf(sock, sizeof(sock), "%s", tp.unix_t.unix_path);
    int st = xd_stop(&tp);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    assert_int_not_equal(access(sock, F_OK), 0);
}

/* Finished commands go after the retention; the table is bounded. */
static void test_retention_and_bound(void **state)
{
    (void)state;
    xd_proc tp;
    const char *args[] = {"--retention-seconds", "1", "--max-commands", "3", NULL};
    /* this instance also reads an EXECD_ENVS file */
    char envs[] = "/tmp/moat-execd-envs-XXXXXX";
    int efd = mkstemp(envs);
    const char text[] = "# comment\n\nFROM_FILE=v-$MOAT_ENVS_BASE\n";
    assert_int_equal(write(efd, text, sizeof(text) - 1), (ssize_t)sizeof(text) - 1);
    close(efd);
    setenv("EXECD_ENVS", envs, 1);
    setenv("MOAT_ENVS_BASE", "base", 1);
    bool started = xd_start(&tp, args);
    unsetenv("EXECD_ENVS");
    unsetenv("MOAT_ENVS_BASE");
    assert_true(started);
    xd_run r;
    /* the file is read for every command, so edits apply without a restart */
    xd_stream(&tp.unix_t, "/command", "{\"command\":\"echo $FROM_FILE\"}", false, &r);
    unlink(envs);
    assert_string_equal(r.out, "v-base");
    xd_stream(&tp.unix_t, "/command", "{\"command\":\"echo kept\",\"background\":true}", false, &r);
    char path[128], logfile[300];
    snprintf(path, sizeof(path), "/command/status/%s", r.id);
    snprintf(logfile, sizeof(logfile), "%s/state/%s.output", tp.dir, r.id);
    assert_int_equal(access(logfile, F_OK), 0);
    long st = 200;
    for (int i = 0; i < 1200 && st == 200; i++) {
        nap_ms(50);
        xd_resp s = xd_http(&tp.unix_t, "GET", path, NULL, NULL);
        st = s.status;
        xd_resp_free(&s);
    }
    assert_int_equal(st, 404);
    assert_int_not_equal(access(logfile, F_OK), 0);
    /* three running commands fill the table; a fourth is refused, execd keeps serving */
    for (int i = 0; i < 3; i++) {
        xd_stream(&tp.unix_t, "/command", "{\"command\":\"sleep 30\",\"background\":true}", false,
                  &r);
        assert_true(r.complete);
    }
    xd_resp full = xd_http(&tp.unix_t, "POST", "/command", "{\"command\":\"true\"}", NULL);
    assert_int_equal(full.status, 500);
    assert_string_equal(xd_error_code(&full), "RUNTIME_ERROR");
    xd_resp_free(&full);
    int status = xd_stop(&tp);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

/* --run-as: commands, bash sessions and the file API act as that user; the access token from
 * the environment reaches no command; files land owned by the user, and what the user cannot
 * write, the file API cannot either. */
static void test_run_as(void **state)
{
    (void)state;
    moat_require(getuid() == 0, "needs root");
    char open_dir[] = "/tmp/moat-runas-XXXXXX";
    assert_non_null(mkdtemp(open_dir));
    assert_int_equal(chmod(open_dir, 0777), 0);
    setenv("EXECD_ACCESS_TOKEN", "runas-secret", 1);
    xd_proc tp;
    const char *args[] = {"--run-as", "65534:65533", NULL};
    bool started = xd_start(&tp, args);
    unsetenv("EXECD_ACCESS_TOKEN");
    assert_true(started);
    /* As inside a sandbox, where the state dir sits in /tmp: the user may pass through. */
    assert_int_equal(chmod(tp.dir, 0711), 0);
    tp.unix_t.token = "runas-secret";
    xd_run r;
    xd_stream(&tp.unix_t, "/command",
              "{\"command\":\"id -u; id -g; id -G; env | grep -c EXECD_ACCESS_TOKEN; "
              "grep -c runas-secret /proc/$$/environ; true\"}",
              false, &r);
    assert_true(r.complete);
    assert_int_equal(r.nlines, 5);
    assert_string_equal(r.out_lines[0], "65534");
    assert_string_equal(r.out_lines[1], "65533");
    assert_string_equal(r.out_lines[2], "65533");
    assert_string_equal(r.out_lines[3], "0");
    assert_string_equal(r.out_lines[4], "0");
    /* execd itself, root, cannot be signalled by its commands. */
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "{\"command\":\"kill -0 %d\"}", (int)tp.pid);
    xd_stream(&tp.unix_t, "/command", cmd, false, &r);
    assert_true(r.error);
    /* A bash session runs as the user too. */
    xd_resp resp = xd_http(&tp.unix_t, "POST", "/session", "{}", NULL);
    assert_int_equal(resp.status, 200);
    cJSON *j = xd_json(&resp);
    char path[128];
    snprintf(path, sizeof(path), "/session/%s/run",
             cJSON_GetStringValue(cJSON_GetObjectItem(j, "session_id")));
    cJSON_Delete(j);
    xd_resp_free(&resp);
    xd_stream(&tp.unix_t, path, "{\"command\":\"id -u\"}", false, &r);
    assert_true(r.complete);
    assert_string_equal(r.out, "65534");
    /* A background command's log (kept in execd's user/ directory) reads back. */
    xd_stream(&tp.unix_t, "/command", "{\"command\":\"echo bg\",\"background\":true}", false, &r);
    assert_true(r.complete);
    /* The file API writes as the user, and is refused where the user would be. */
    char q[512], target[256];
    snprintf(target, sizeof(target), "%s/owned.txt", open_dir);
    snprintf(q, sizeof(q), "/files/write?path=%s", target);
    resp = xd_http_body(&tp.unix_t, "POST", q, "mine", 4, NULL);
    assert_int_equal(resp.status, 200);
    xd_resp_free(&resp);
    struct stat sb;
    assert_int_equal(stat(target, &sb), 0);
    assert_int_equal(sb.st_uid, 65534);
    assert_int_equal(sb.st_gid, 65533);
    snprintf(target, sizeof(target), "%s/root-only.txt", tp.dir); /* root's, 0711 */
    snprintf(q, sizeof(q), "/files/write?path=%s", target);
    resp = xd_http_body(&tp.unix_t, "POST", q, "nope", 4, NULL);
    assert_int_not_equal(resp.status, 200);
    xd_resp_free(&resp);
    assert_int_not_equal(access(target, F_OK), 0);
    snprintf(q, sizeof(q), "/files/download?path=/proc/%d/environ", (int)tp.pid);
    resp = xd_http(&tp.unix_t, "GET", q, NULL, NULL);
    assert_int_not_equal(resp.status, 200);
    xd_resp_free(&resp);
    int st = xd_stop(&tp);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    char rm[128];
    snprintf(rm, sizeof(rm), "rm -rf %s", open_dir);
    assert_int_equal(system(rm), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_headers_past_connection_memory),
        cmocka_unit_test(test_token),
        cmocka_unit_test(test_big_output_memory),
        cmocka_unit_test(test_stalled_reader),
        cmocka_unit_test(test_metrics),
        cmocka_unit_test(test_metrics_watch),
        cmocka_unit_test(test_reaping),
        cmocka_unit_test(test_sigterm),
        cmocka_unit_test(test_retention_and_bound),
        cmocka_unit_test(test_run_as),
        cmocka_unit_test(test_execd_exits_0_on_sigterm),
    };
    return moat_run_group_tests("test_execd_lifecycle", tests, xd_fixture_setup,
                                xd_fixture_teardown);
}
