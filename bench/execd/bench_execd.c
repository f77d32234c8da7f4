/* bench_execd: moat-execd against `docker exec`, both in one container of the local image
 * (moat-sandbox:latest with the bundle of <build-dir>), measured in the same run.
 *  1. `echo hi` round trip p50: execd over its Unix socket vs `docker exec` (target <= 0.05x);
 *     alternated with it, as uid 1000 and through moat-execd-fork (this execd built to start
 *     commands with fork + exec, as it did before posix_spawn) in a second container alike
 *  2. throughput of `yes | head -c SIZE`: execd binary-safe mode vs `docker exec` streaming
 *     the same bytes (target >= 4x), ROUNDS runs of each, interleaved, medians compared
 *     (the 2-core host is shared, so one run of each is at the mercy of its neighbours);
 *     each round also times the producer inside the sandbox alone and into `cat`, with no byte
 *     leaving the sandbox: what the producer costs on this host without any transport.
 *     Defaults: 3 rounds of 256 MiB (1 GiB through `docker exec` takes about a minute
 *     here); `bench_execd <build-dir> 1024 1` is the single 1 GiB run.
 * The image is built only when missing; the bundles are made from the build's binaries.
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

static char sock[128], sock_fork[128];

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

/* One POST /command to the execd at path (as uid:gid 1000 when as_user, as moatd's sandboxes run
 * commands); returns false unless the stream ended with execution_complete. */
static bool execd_run_at(CURL *c, const char *path, const char *cmd, bool binary, bool as_user,
                         sink *s)
{
    char body[512];
    snprintf(body, sizeof(body), "{\"command\":\"%s\"%s}", cmd,
             as_user ? ",\"uid\":1000,\"gid\":1000" : "");
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    if (binary)
        h = curl_slist_append(h, "X-Moat-Output: binary");
    curl_easy_setopt(c, CURLOPT_URL, "http://localhost/command");
    curl_easy_setopt(c, CURLOPT_UNIX_SOCKET_PATH, path);
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
    return execd_run_at(c, sock, cmd, binary, false, s);
}

/* The bench's sandbox: bundle at /opt/moat, run_dir at /run/moat, as moatd's are started;
 * sock_path gets the path of its execd's socket. */
static bool start_container(const char *name, const char *bundle, const char *run_dir,
                            char *sock_path, size_t cap)
{
    snprintf(sock_path, cap, "%s/execd.sock", run_dir);
    char cmd[2048];
    snprintf(cmd, sizeof(cmd),
             "/usr/bin/docker run -d --name %s --network none -v %s:/opt/moat:ro "
             "-v %s:/run/moat moat-sandbox:latest >/dev/null",
             name, bundle, run_dir);
    return system(cmd) == 0;
}

static bool wait_up(CURL *c, const char *path)
{
    for (int i = 0; i < 100; i++) {
        sink s = {0};
        if (execd_run_at(c, path, "true", false, false, &s))
            return true;
        usleep(100000);
    }
    return false;
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
    char name[64], name_fork[80], dir[] = "/tmp/moat-execd-bench-XXXXXX", cmd[4096];
    snprintf(name, sizeof(name), "moat-execd-bench-%d", (int)getpid());
    snprintf(name_fork, sizeof(name_fork), "%s-fork", name);
    if (mkdtemp(dir) == NULL)
        return 1;
    /* dir: run/ and run-fork/ (the containers' /run/moat), fork-bundle/ */
    snprintf(
        cmd, sizeof(cmd),
        "mkdir %s/run %s/run-fork && "
        "%s/scripts/build-execd-bundle.sh %s/src/execd/moat-execd %s/execd-bundle >/dev/null && "
        "%s/scripts/build-execd-bundle.sh %s/bench/execd/moat-execd-fork %s/fork-bundle "
        ">/dev/null && { /usr/bin/docker image inspect moat-sandbox:latest >/dev/null 2>&1 || "
        "%s/scripts/build-sandbox-image.sh %s >/dev/null; }",
        dir, dir, MOAT_BENCH_SOURCE_DIR, bdir, bdir, MOAT_BENCH_SOURCE_DIR, bdir, dir,
        MOAT_BENCH_SOURCE_DIR, bdir);
    curl_global_init(CURL_GLOBAL_ALL);
    CURL *c = curl_easy_init(), *cf = curl_easy_init();
    int rc = 1;
    char bundle[600], run_dir[64], fork_bundle[64], run_fork[64];
    snprintf(bundle, sizeof(bundle), "%s/execd-bundle", bdir);
    snprintf(run_dir, sizeof(run_dir), "%s/run", dir);
    snprintf(fork_bundle, sizeof(fork_bundle), "%s/fork-bundle", dir);
    snprintf(run_fork, sizeof(run_fork), "%s/run-fork", dir);
    if (system(cmd) != 0) {
        fprintf(stderr, "bench_execd: making the bundles or the sandbox image failed\n");
        goto out;
    }
    if (!start_container(name, bundle, run_dir, sock, sizeof(sock)) ||
        !start_container(name_fork, fork_bundle, run_fork, sock_fork, sizeof(sock_fork))) {
        fprintf(stderr, "bench_execd: docker run failed\n");
        goto out;
    }
    if (!wait_up(c, sock) || !wait_up(cf, sock_fork)) {
        fprintf(stderr, "bench_execd: execd did not answer in the containers\n");
        goto out;
    }
    printf("bench_execd: containers %s and %s (moat-sandbox:latest, --network none), 2-core "
           "host\n",
           name, name_fork);

    /* 1. round trip */
    /* execd's own user (posix_spawn), another user (clone + raw setresuid, as every command
     * of a sandbox with sandbox_user starts) and the fork + exec build, alternated so all three
     * see the same host. */
    double ex[ROUNDS], ex_user[ROUNDS], ex_fork[ROUNDS], ex_fresh[ROUNDS], dk[ROUNDS];
    for (int i = 0; i < ROUNDS; i++) {
        sink s = {0}, u = {0}, f = {0};
        double t0 = now_s();
        if (!execd_run(c, "echo hi", false, &s))
            goto out;
        double t1 = now_s();
        if (!execd_run_at(c, sock, "echo hi", false, true, &u))
            goto out;
        double t2 = now_s();
        if (!execd_run_at(cf, sock_fork, "echo hi", false, false, &f))
            goto out;
        ex[i] = t1 - t0;
        ex_user[i] = t2 - t1;
        ex_fork[i] = now_s() - t2;
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
           p_fork = median(ex_fork, ROUNDS) * 1e3, p_fresh = median(ex_fresh, ROUNDS) * 1e3,
           p_dk = median(dk, ROUNDS) * 1e3;
    printf("echo hi round trip, %d rounds each: execd p50 %.3f ms (keep-alive), %.3f ms (new "
           "connection each), %.3f ms (keep-alive, as uid 1000); docker exec p50 %.3f ms\n",
           ROUNDS, p_ex, p_fresh, p_user, p_dk);
    printf("fork mode, alternated with posix_spawn: moat-execd-fork p50 %.3f ms (%.4fx docker "
           "exec), %.2fx execd's posix_spawn (%.3f ms)\n",
           p_fork, p_fork / p_dk, p_fork / p_ex, p_ex);
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
    curl_easy_cleanup(cf);
    curl_global_cleanup();
    snprintf(cmd, sizeof(cmd), "/usr/bin/docker rm -f %s %s >/dev/null 2>&1; rm -rf %s", name,
             name_fork, dir);
    if (system(cmd) != 0)
        fprintf(stderr, "bench_execd: cleanup failed\n");
    return rc;
}
