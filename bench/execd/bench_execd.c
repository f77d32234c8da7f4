/* bench_execd: moat-execd against `docker exec`, both in one container of the local image
 * (moat-sandbox:latest with the bundle of <build-dir>), measured in the same run.
 *  1. `echo hi` round trip p50: execd over its Unix socket vs `docker exec` (target <= 0.05x)
 *  2. throughput of `yes | head -c SIZE`: execd binary-safe mode vs `docker exec` streaming
 *     the same bytes (target >= 4x), ROUNDS runs of each, interleaved, medians compared
 *     (the 2-core host is shared, so one run of each is at the mercy of its neighbours);
 *     each round also times the producer inside the sandbox alone and into `cat`, with no byte
 *     leaving the sandbox: what the producer costs on this host without any transport.
 *     Defaults: 3 rounds of 256 MiB (1 GiB through `docker exec` takes about a minute
 *     here); `bench_execd <build-dir> 1024 1` is the single 1 GiB run.
 * usage: bench_execd [build-dir] [size-MiB] [rounds] */
#include <curl/curl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define ROUNDS 50

static char sock[256];

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof(double), cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

typedef struct sink {
    uint64_t bytes;
    char tail[256];
} sink;

static size_t sink_write(char *p, size_t size, size_t n, void *ud)
{
    sink *s = ud;
    size_t len = size * n;
    s->bytes += len;
    size_t keep = len < sizeof(s->tail) - 1 ? len : sizeof(s->tail) - 1;
    memcpy(s->tail, p + len - keep, keep);
    s->tail[keep] = '\0';
    return len;
}

/* One POST /command (as uid:gid 1000 when as_user, as moatd's sandboxes run commands); returns
 * false unless the stream ended with execution_complete. */
static bool execd_run_as(CURL *c, const char *cmd, bool binary, bool as_user, sink *s)
{
    char body[512];
    snprintf(body, sizeof(body), "{\"command\":\"%s\"%s}", cmd,
             as_user ? ",\"uid\":1000,\"gid\":1000" : "");
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    if (binary)
        h = curl_slist_append(h, "X-Moat-Output: binary");
    curl_easy_setopt(c, CURLOPT_URL, "http://localhost/command");
    curl_easy_setopt(c, CURLOPT_UNIX_SOCKET_PATH, sock);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, sink_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, s);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 300L);
    curl_easy_setopt(c, CURLOPT_BUFFERSIZE, 512L * 1024);
    CURLcode rc = curl_easy_perform(c);
    curl_slist_free_all(h);
    return rc == CURLE_OK && strstr(s->tail, "execution_complete") != NULL;
}

static bool execd_run(CURL *c, const char *cmd, bool binary, sink *s)
{
    return execd_run_as(c, cmd, binary, false, s);
}

/* `docker exec name bash -c cmd`, reading and counting its stdout. */
static bool docker_exec(const char *name, const char *cmd, uint64_t *bytes)
{
    int p[2];
    if (pipe(p) != 0)
        return false;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(p[1], 1);
        close(p[0]);
        close(p[1]);
        execl("/usr/bin/docker", "docker", "exec", name, "bash", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    close(p[1]);
    static char buf[1 << 16];
    ssize_t n;
    uint64_t total = 0;
    while ((n = read(p[0], buf, sizeof(buf))) > 0)
        total += (uint64_t)n;
    close(p[0]);
    int st;
    waitpid(pid, &st, 0);
    if (bytes)
        *bytes = total;
    return WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

static void verdict(const char *what, double value, double baseline, const char *unit, double ratio,
                    const char *target, bool pass)
{
    printf("%-34s value %10.3f %-5s baseline %10.3f %-5s ratio %7.4fx  target %s  %s\n", what,
           value, unit, baseline, unit, ratio, target, pass ? "PASS" : "FAIL");
}

int main(int argc, char **argv)
{
    const char *bdir = argc > 1 ? argv[1] : MOAT_BENCH_BUILD_DIR;
    long mib = argc > 2 ? strtol(argv[2], NULL, 10) : 256;
    int rounds = argc > 3 ? atoi(argv[3]) : 3;
    if (mib <= 0)
        mib = 256;
    if (rounds <= 0 || rounds > 9)
        rounds = 3;
    char name[64], dir[] = "/tmp/moat-execd-bench-XXXXXX", cmd[2048];
    snprintf(name, sizeof(name), "moat-execd-bench-%d", (int)getpid());
    if (mkdtemp(dir) == NULL)
        return 1;
    snprintf(cmd, sizeof(cmd), "%s/scripts/build-sandbox-image.sh %s >/dev/null",
             MOAT_BENCH_SOURCE_DIR, bdir);
    if (system(cmd) != 0) {
        fprintf(stderr, "bench_execd: building the sandbox image failed\n");
        rmdir(dir);
        return 1;
    }
    snprintf(cmd, sizeof(cmd),
             "/usr/bin/docker run -d --name %s --network none -v %s/execd-bundle:/opt/moat:ro "
             "-v %s:/run/moat moat-sandbox:latest >/dev/null",
             name, bdir, dir);
    if (system(cmd) != 0) {
        fprintf(stderr, "bench_execd: docker run failed\n");
        rmdir(dir);
        return 1;
    }
    snprintf(sock, sizeof(sock), "%s/execd.sock", dir);
    curl_global_init(CURL_GLOBAL_ALL);
    CURL *c = curl_easy_init();
    int rc = 1;
    bool up = false;
    for (int i = 0; i < 100 && !up; i++) {
        sink s = {0};
        up = execd_run(c, "true", false, &s);
        if (!up)
            usleep(100000);
    }
    if (!up) {
        fprintf(stderr, "bench_execd: execd did not answer in the container\n");
        goto out;
    }
    printf("bench_execd: container %s (moat-sandbox:latest, --network none), 2-core host\n", name);

    /* 1. round trip */
    /* execd's own user (posix_spawn) and another user (clone + raw setresuid, as every command
     * of a sandbox with sandbox_user starts), alternated so both see the same host. */
    double ex[ROUNDS], ex_user[ROUNDS], ex_fresh[ROUNDS], dk[ROUNDS];
    for (int i = 0; i < ROUNDS; i++) {
        sink s = {0}, u = {0};
        double t0 = now_s();
        if (!execd_run(c, "echo hi", false, &s))
            goto out;
        double t1 = now_s();
        if (!execd_run_as(c, "echo hi", false, true, &u))
            goto out;
        ex[i] = t1 - t0;
        ex_user[i] = now_s() - t1;
    }
    for (int i = 0; i < ROUNDS; i++) {
        CURL *f = curl_easy_init();
        sink s = {0};
        double t0 = now_s();
        bool ok = execd_run(f, "echo hi", false, &s);
        ex_fresh[i] = now_s() - t0;
        curl_easy_cleanup(f);
        if (!ok)
            goto out;
    }
    for (int i = 0; i < ROUNDS; i++) {
        double t0 = now_s();
        if (!docker_exec(name, "echo hi", NULL))
            goto out;
        dk[i] = now_s() - t0;
    }
    double p_ex = median(ex, ROUNDS) * 1e3, p_user = median(ex_user, ROUNDS) * 1e3,
           p_fresh = median(ex_fresh, ROUNDS) * 1e3, p_dk = median(dk, ROUNDS) * 1e3;
    printf("echo hi round trip, %d rounds each: execd p50 %.3f ms (keep-alive), %.3f ms (new "
           "connection each), %.3f ms (keep-alive, as uid 1000); docker exec p50 %.3f ms\n",
           ROUNDS, p_ex, p_fresh, p_user, p_dk);
    verdict("echo hi p50 (as uid 1000)", p_user, p_dk, "ms", p_user / p_dk, "<= 0.05x",
            p_user / p_dk <= 0.05);
    verdict("echo hi p50 (new connection)", p_fresh, p_dk, "ms", p_fresh / p_dk, "<= 0.05x",
            p_fresh / p_dk <= 0.05);
    verdict("echo hi p50 (keep-alive)", p_ex, p_dk, "ms", p_ex / p_dk, "<= 0.05x",
            p_ex / p_dk <= 0.05);

    /* 2. throughput */
    char ycmd[128];
    snprintf(ycmd, sizeof(ycmd), "yes | head -c %ld", mib * 1024 * 1024);
    /* The producer's own rate here: alone, and into the simplest consumer one pipe away (`cat`
     * into /dev/null), both inside the sandbox with nothing leaving it. A transport also has to
     * move the bytes out, but may read in bigger pieces than `cat` does. */
    char alone_cmd[160], cat_cmd[160];
    snprintf(alone_cmd, sizeof(alone_cmd), "%s >/dev/null", ycmd);
    snprintf(cat_cmd, sizeof(cat_cmd), "%s | cat >/dev/null", ycmd);
    double payload = (double)mib * 1024 * 1024, t_ex[9], t_dk[9], t_alone[9], t_cat[9];
    for (int r = 0; r < rounds; r++) {
        sink s = {0};
        double t0 = now_s();
        if (!execd_run(c, ycmd, true, &s))
            goto out;
        t_ex[r] = now_s() - t0;
        sink quiet = {0};
        t0 = now_s();
        if (!execd_run(c, alone_cmd, true, &quiet))
            goto out;
        t_alone[r] = now_s() - t0;
        t0 = now_s();
        if (!execd_run(c, cat_cmd, true, &quiet))
            goto out;
        t_cat[r] = now_s() - t0;
        uint64_t dbytes = 0;
        t0 = now_s();
        if (!docker_exec(name, ycmd, &dbytes))
            goto out;
        t_dk[r] = now_s() - t0;
        if (dbytes != (uint64_t)payload) {
            fprintf(stderr, "bench_execd: docker exec delivered %llu bytes\n",
                    (unsigned long long)dbytes);
            goto out;
        }
        printf("yes | head -c %ld MiB, round %d: execd binary mode %.2f s (%llu bytes on the "
               "wire incl. framing), docker exec %.2f s; in the sandbox alone %.2f s, into "
               "cat %.2f s\n",
               mib, r + 1, t_ex[r], (unsigned long long)s.bytes, t_dk[r], t_alone[r], t_cat[r]);
    }
    double mb_ex = payload / median(t_ex, rounds) / 1e6,
           mb_dk = payload / median(t_dk, rounds) / 1e6,
           mb_alone = payload / median(t_alone, rounds) / 1e6,
           mb_cat = payload / median(t_cat, rounds) / 1e6;
    char what[64];
    snprintf(what, sizeof(what), "throughput %ld MiB (median of %d)", mib, rounds);
    verdict(what, mb_ex, mb_dk, "MB/s", mb_ex / mb_dk, ">= 4x", mb_ex / mb_dk >= 4);
    printf("producer rate in the sandbox: alone %.1f MB/s (%.2fx docker exec), into cat %.1f MB/s "
           "(%.2fx); execd reaches %.0f%% of the rate into cat\n",
           mb_alone, mb_alone / mb_dk, mb_cat, mb_cat / mb_dk, 100 * mb_ex / mb_cat);

    /* Supplementary: `dd` of /dev/zero in 64 KiB blocks costs its producer far less than
     * `yes | head` (8 KiB pipe writes twice over), so it shows what each transport carries. */
    snprintf(ycmd, sizeof(ycmd), "dd if=/dev/zero bs=65536 count=%ld 2>/dev/null", mib * 16);
    sink z = {0};
    double t0 = now_s();
    if (!execd_run(c, ycmd, true, &z))
        goto out;
    double z_ex = now_s() - t0;
    uint64_t zbytes = 0;
    t0 = now_s();
    if (!docker_exec(name, ycmd, &zbytes) || zbytes != (uint64_t)payload)
        goto out;
    double z_dk = now_s() - t0;
    printf("dd if=/dev/zero bs=64k, %ld MiB: execd binary mode %.2f s, docker exec %.2f s\n", mib,
           z_ex, z_dk);
    snprintf(what, sizeof(what), "supplementary: dd %ld MiB", mib);
    verdict(what, payload / z_ex / 1e6, payload / z_dk / 1e6, "MB/s", z_dk / z_ex, ">= 4x",
            z_dk / z_ex >= 4);
    rc = 0;
out:
    if (rc != 0)
        fprintf(stderr, "bench_execd: a run failed\n");
    curl_easy_cleanup(c);
    curl_global_cleanup();
    snprintf(cmd, sizeof(cmd), "/usr/bin/docker rm -f %s >/dev/null 2>&1; rm -rf %s", name, dir);
    if (system(cmd) != 0)
        fprintf(stderr, "bench_execd: cleanup failed\n");
    return rc;
}
