/* Docker test: moat-execd as PID 1 of a real container of the local image
 * (moat-sandbox:latest, built by scripts/build-sandbox-image.sh), with no network, the
 * bundle bind-mounted read-only at /opt/moat and its socket in a host directory. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include "moat_test.h"

#include "xd_client.h"

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static char name[64];
static char sockdir[128];
static xd_target t;

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...)
{
    char cmd[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    return system(cmd);
}

static char *sh_out(const char *cmd)
{
    FILE *p = popen(cmd, "r");
    char *buf = calloc(1, 4096);
    size_t n = p ? fread(buf, 1, 4095, p) : 0;
    buf[n] = '\0';
    if (p)
        pclose(p);
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' '))
        buf[--n] = '\0';
    return buf;
}

static void test_commands(void **state)
{
    (void)state;
    xd_run r;
    xd_stream(&t, "/command",
              "{\"command\":\"echo $BASH_VERSION >/dev/null; echo hi; echo e >&2\"}", false, &r);
    assert_int_equal(r.status, 200);
    assert_true(r.complete);
    assert_string_equal(r.out, "hi");
    assert_string_equal(r.err, "e");
    xd_stream(&t, "/command", "{\"command\":\"exit 7\"}", false, &r);
    assert_int_equal(xd_exit_code(&r), 7);
    xd_stream(&t, "/command", "{\"command\":\"sleep 30\",\"timeout\":200}", false, &r);
    assert_int_equal(xd_exit_code(&r), -1);
    xd_stream(&t, "/command",
              "{\"command\":\"pwd; echo $V\",\"cwd\":\"/tmp\",\"envs\":{\"V\":\"1\"}}", false, &r);
    assert_int_equal(r.nlines, 2);
    assert_string_equal(r.out_lines[0], "/tmp");
    assert_string_equal(r.out_lines[1], "1");
    xd_stream(&t, "/command", "{\"command\":\"printf 'x\\\\000y'\"}", true, &r);
    assert_true(r.binary_confirmed);
    assert_int_equal(r.out_len, 3);
    assert_memory_equal(r.out, "x\0y", 3);
    /* the container has no network beyond loopback */
    xd_stream(&t, "/command", "{\"command\":\"ls /sys/class/net\"}", false, &r);
    assert_string_equal(r.out, "lo");
}

static void test_session(void **state)
{
    (void)state;
    xd_resp c = xd_http(&t, "POST", "/session", "{\"cwd\":\"/workspace/s\"}", NULL);
    assert_int_equal(c.status, 200);
    cJSON *j = xd_json(&c);
    char path[128];
    snprintf(path, sizeof(path), "/session/%s/run", moat_json_str(j, "session_id", NULL));
    cJSON_Delete(j);
    xd_resp_free(&c);
    xd_run r;
    xd_stream(&t, path, "{\"command\":\"export K=v; cd /opt\"}", false, &r);
    assert_true(r.complete);
    xd_stream(&t, path, "{\"command\":\"echo $K; pwd\"}", false, &r);
    assert_int_equal(r.nlines, 2);
    assert_string_equal(r.out_lines[0], "v");
    assert_string_equal(r.out_lines[1], "/opt");
}

static void test_files(void **state)
{
    (void)state;
    CURL *c = curl_easy_init();
    curl_mime *mime = curl_mime_init(c);
    curl_mimepart *m = curl_mime_addpart(mime);
    curl_mime_name(m, "metadata");
    curl_mime_filename(m, "metadata");
    curl_mime_data(m, "{\"path\":\"/workspace/f/data.txt\",\"mode\":644}", CURL_ZERO_TERMINATED);
    curl_mimepart *f = curl_mime_addpart(mime);
    curl_mime_name(f, "file");
    curl_mime_filename(f, "data.txt");
    curl_mime_data(f, "hello container", CURL_ZERO_TERMINATED);
    curl_easy_setopt(c, CURLOPT_URL, "http://localhost/files/upload");
    curl_easy_setopt(c, CURLOPT_UNIX_SOCKET_PATH, t.unix_path);
    curl_easy_setopt(c, CURLOPT_MIMEPOST, mime);
    assert_int_equal(curl_easy_perform(c), CURLE_OK);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    assert_int_equal(status, 200);
    curl_mime_free(mime);
    curl_easy_cleanup(c);
    xd_resp r =
        xd_http(&t, "GET", "/files/download?path=/workspace/f/data.txt", NULL, "Range: bytes=6-");
    assert_int_equal(r.status, 206);
    assert_string_equal(r.body, "container");
    xd_resp_free(&r);
    r = xd_http(&t, "GET", "/files/info?path=/workspace/f/data.txt", NULL, NULL);
    cJSON *j = xd_json(&r);
    cJSON *fi = cJSON_GetObjectItemCaseSensitive(j, "/workspace/f/data.txt");
    assert_int_equal(xd_json_i64(fi, "mode"), 644);
    assert_string_equal(moat_json_str(fi, "owner", NULL), "root");
    cJSON_Delete(j);
    xd_resp_free(&r);
}

/* The container's cgroup limit, not the host's memory. */
static void test_metrics(void **state)
{
    (void)state;
    xd_resp r = xd_http(&t, "GET", "/metrics", NULL, NULL);
    assert_int_equal(r.status, 200);
    cJSON *j = xd_json(&r);
    double total = xd_json_num(j, "mem_total_mib");
    double cpus = xd_json_num(j, "cpu_count");
    print_message("container metrics: %s\n", r.body);
    assert_true(total > 0 && total <= 256.0);
    assert_true(cpus > 0 && cpus <= 1.0);
    cJSON_Delete(j);
    xd_resp_free(&r);
}

/* execd is PID 1: orphans are reaped. */
/* Runs a shell command in the container; its stdout. */
static const char *in_container(const char *command, xd_run *r)
{
    char body[512];
    snprintf(body, sizeof(body), "{\"command\":\"%s\"}", command);
    xd_stream(&t, "/command", body, false, r);
    assert_true(r->complete);
    return r->out;
}

/* The parent of pid inside the container, or -1 once the pid is gone; polls are 50 ms apart. */
static int parent_in_container(int pid)
{
    struct timespec pause = {0, 50 * 1000000L};
    nanosleep(&pause, NULL);
    char command[160];
    /* Fields 3 and 4 of /proc/PID/stat: state and parent (sleep's name has no space). */
    snprintf(command, sizeof(command), "cut -d' ' -f4 /proc/%d/stat 2>/dev/null || echo -1", pid);
    xd_run r;
    return atoi(in_container(command, &r));
}

/* execd as PID 1 adopts a command's orphan (its shell gone) and reaps it when it ends: the pid
 * disappears instead of staying a zombie. */
static void test_pid1_reaps(void **state)
{
    (void)state;
    xd_run r;
    assert_string_equal(in_container("echo $PPID", &r), "1");
    int orphan = atoi(in_container("(sleep 300 </dev/null >/dev/null 2>&1 & echo $!)", &r));
    assert_true(orphan > 1);
    int parent = parent_in_container(orphan);
    for (int i = 0; i < 600 && parent != 1; i++)
        parent = parent_in_container(orphan);
    assert_int_equal(parent, 1);
    char kill_orphan[64];
    snprintf(kill_orphan, sizeof(kill_orphan), "kill -KILL %d", orphan);
    in_container(kill_orphan, &r);
    for (int i = 0; i < 600 && parent == 1; i++)
        parent = parent_in_container(orphan);
    assert_int_not_equal(parent, 1);
}

static int setup(void **state)
{
    (void)state;
    curl_global_init(CURL_GLOBAL_ALL);
    const char *src = getenv("MOAT_SOURCE_DIR"), *bld = getenv("MOAT_BUILD_DIR");
    if (src == NULL || bld == NULL)
        return -1;
    if (sh("%s/scripts/build-sandbox-image.sh %s >/dev/null", src, bld) != 0)
        return -1;
    snprintf(name, sizeof(name), "moat-execd-test-%d", (int)getpid());
    snprintf(sockdir, sizeof(sockdir), "/tmp/moat-execd-docker-XXXXXX");
    if (mkdtemp(sockdir) == NULL)
        return -1;
    if (sh("/usr/bin/docker run -d --name %s --network none --memory 256m --cpus 1 "
           "-v %s/execd-bundle:/opt/moat:ro -v %s:/run/moat moat-sandbox:latest "
           "/opt/moat/run --listen unix:/run/moat/execd.sock >/dev/null",
           name, bld, sockdir) != 0)
        return -1;
    snprintf(t.unix_path, sizeof(t.unix_path), "%s/execd.sock", sockdir);
    snprintf(t.base, sizeof(t.base), "http://localhost");
    for (int i = 0; i < 200; i++) {
        xd_resp r = xd_http(&t, "GET", "/ping", NULL, NULL);
        long st = r.status;
        xd_resp_free(&r);
        if (st == 200)
            return 0;
        struct timespec ts = {0, 100 * 1000000L};
        nanosleep(&ts, NULL);
    }
    return -1;
}

/* The last test: docker stop sends SIGTERM to PID 1 (execd), which must exit 0 by itself.
 * MOAT_TEST_INJECT=daemon_exit kills it instead. */
static void test_execd_as_pid1_exits_0_on_docker_stop(void **state)
{
    (void)state;
    const char *verb = moat_test_injected("daemon_exit") ? "kill" : "stop -t 10";
    assert_int_equal(sh("/usr/bin/docker %s %s >/dev/null", verb, name), 0);
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "/usr/bin/docker inspect -f '{{.State.ExitCode}}' %s", name);
    char *code = sh_out(cmd);
    print_message("container exit code after docker %s: %s\n", verb, code);
    bool exited_0 = strcmp(code, "0") == 0;
    free(code);
    assert_true(exited_0);
}

static int teardown(void **state)
{
    (void)state;
    sh("/usr/bin/docker rm -f %s >/dev/null 2>&1", name);
    sh("rm -rf %s", sockdir);
    curl_global_cleanup();
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_commands),
        cmocka_unit_test(test_session),
        cmocka_unit_test(test_files),
        cmocka_unit_test(test_metrics),
        cmocka_unit_test(test_pid1_reaps),
        cmocka_unit_test(test_execd_as_pid1_exits_0_on_docker_stop),
    };
    return moat_run_group_tests("test_execd_docker", tests, setup, teardown);
}
