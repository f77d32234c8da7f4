/* bench_e2e's interactive phase (#14), each figure against docker exec in the same run:
 *  - keystroke round trip p50: one byte written to the local terminal (the master of a pty this
 *    program opens, the client running on its slave) until its echo comes back, the remote side
 *    running `cat` in a pty of its own (`stty raw -echo`, so the echo is cat's), through
 *    `moat exec -it` and `docker exec -it` into the same container, and a local pty running the
 *    same command as the floor, six rounds alternated, the p50 over all their keystrokes
 *    (target: moat <= 0.75x docker);
 *  - stdin throughput: N MiB of /dev/zero piped into `cat >/dev/null` through `moat exec -i` and
 *    `docker exec -i`, whole client processes timed, rounds alternated (target: moat >= 2x
 *    docker), with the bound of any transport beside them: the same bytes piped into the same
 *    cat inside the sandbox, no transport at all; and the sandbox's CPU per round (its cgroup:
 *    with moat, execd's work on stdin counts there; docker's copy is the shim's, outside);
 *  - sequential (issue 14): N `moat exec -i` calls one after another in one sandbox, each a
 *    short stdin into `wc -l`, alternated with `docker exec -i`: every one must succeed (execd
 *    used to refuse the 65th within its idle timeout), and the p50 of each. */
#include <errno.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include "bench_e2e.h"

/* What runs on the far side: a pty whose echo is cat's, ISIG kept so that Ctrl-C ends it, and
 * a marker once that is so. */
#define REMOTE_CAT "stty raw -echo isig; printf READY; exec cat"
/* A bound on each wait, so that a stuck client fails the phase instead of hanging it. */
#define WAIT_MS 30000

/* Reads the master until needle has come (earlier bytes are dropped). */
static bool await_bytes(int master, const char *needle, size_t len)
{
    char window[64] = {0};
    size_t have = 0;
    for (;;) {
        struct pollfd pfd = {master, POLLIN, 0};
        if (poll(&pfd, 1, WAIT_MS) != 1)
            return false;
        char buf[256];
        ssize_t n = read(master, buf, sizeof(buf));
        if (n <= 0)
            return false;
        for (ssize_t i = 0; i < n; i++) {
            if (have == len)
                memmove(window, window + 1, --have);
            window[have++] = buf[i];
            if (have == len && memcmp(window, needle, len) == 0)
                return true;
        }
    }
}

/* Runs argv on the slave of a new 24 x 80 pty; *master gets its master. */
static pid_t spawn_on_pty(char *const argv[], int *master)
{
    struct winsize ws = {.ws_row = 24, .ws_col = 80};
    pid_t pid = forkpty(master, NULL, NULL, &ws);
    if (pid == 0) {
        execvp(argv[0], argv);
        _exit(127);
    }
    return pid;
}

/* n single-byte round trips (ms) into v through the client argv runs, after 20 unmeasured;
 * false when the client failed. */
static bool keystroke_times(char *const argv[], int n, double *v)
{
    int master;
    pid_t pid = spawn_on_pty(argv, &master);
    if (pid < 0)
        return false;
    bool ok = await_bytes(master, "READY", 5);
    for (int i = -20; ok && i < n; i++) {
        char b = (char)('a' + (i + 20) % 26);
        double t0 = now_s();
        ok = write(master, &b, 1) == 1 && await_bytes(master, &b, 1);
        if (i >= 0)
            v[i] = (now_s() - t0) * 1000;
    }
    /* Ctrl-C: the far pty's line discipline ends cat, and the client exits with it, which
     * the master sees as the end of its output. */
    if (write(master, "\x03", 1) == 1) {
        char sink[256];
        struct pollfd pfd = {master, POLLIN, 0};
        while (poll(&pfd, 1, WAIT_MS) == 1 && read(master, sink, sizeof(sink)) > 0)
            ;
    }
    close(master);
    kill(pid, SIGTERM);
    waitpid(pid, NULL, 0);
    return ok;
}

/* Wall time of `head -c bytes /dev/zero` piped through moat exec -i (or docker exec -i) into
 * cat >/dev/null, the whole client process; -1 when it failed. */
static double stdin_run(const char *addr, const char *moat_bin, const char *sid, const char *cid,
                        long long bytes, bool moat)
{
    char cmd[1400];
    if (moat)
        snprintf(cmd, sizeof(cmd),
                 "head -c %lld /dev/zero | %s %s exec -i %s -- 'cat >/dev/null' >/dev/null", bytes,
                 addr, moat_bin, sid);
    else
        snprintf(cmd, sizeof(cmd),
                 "head -c %lld /dev/zero | /usr/bin/docker exec -i %s sh -c 'cat >/dev/null'",
                 bytes, cid);
    return timed_system(cmd);
}

/* The sandbox container's CPU so far in ns, from its cgroup (v1 cpuacct, or v2 cpu.stat); -1
 * when neither is found. */
static long long sandbox_cpu_ns(const char *cid)
{
    char path[256];
    long long v = -1;
    snprintf(path, sizeof(path), "/sys/fs/cgroup/cpuacct/docker/%.80s/cpuacct.usage", cid);
    FILE *f = fopen(path, "r");
    if (f != NULL) {
        if (fscanf(f, "%lld", &v) != 1)
            v = -1;
        fclose(f);
        return v;
    }
    snprintf(path, sizeof(path), "/sys/fs/cgroup/system.slice/docker-%.80s.scope/cpu.stat", cid);
    f = fopen(path, "r");
    if (f == NULL)
        return -1;
    char key[64];
    long long n;
    while (v < 0 && fscanf(f, "%63s %lld", key, &n) == 2)
        if (strcmp(key, "usage_usec") == 0)
            v = n * 1000;
    fclose(f);
    return v;
}

/* stdin_run with the sandbox's CPU meanwhile (ms) in *cpu_ms (-1 when unknown). */
static double stdin_run_cpu(const char *addr, const char *moat_bin, const char *sid,
                            const char *cid, long long bytes, bool moat, double *cpu_ms)
{
    long long before = sandbox_cpu_ns(cid);
    double t = stdin_run(addr, moat_bin, sid, cid, bytes, moat);
    long long after = sandbox_cpu_ns(cid);
    *cpu_ms = before >= 0 && after >= before ? (double)(after - before) / 1e6 : -1;
    return t;
}

void bench_interactive(const moatd_proc *p, const char *moat_bin, const char *sid, const char *cid,
                       int keystrokes, long long stdin_bytes)
{
    char addr[64];
    snprintf(addr, sizeof(addr), "MOAT_ADDR=127.0.0.1:%d", p->port);
    char moat_path[600];
    snprintf(moat_path, sizeof(moat_path), "%s", moat_bin);
    char *moat_argv[] = {"env",       addr, moat_path,  "exec", "-it",
                         (char *)sid, "--", REMOTE_CAT, NULL};
    char *docker_argv[] = {"/usr/bin/docker", "exec", "-it", (char *)cid, "sh", "-c",
                           REMOTE_CAT,        NULL};
    char *local_argv[] = {"sh", "-c", REMOTE_CAT, NULL};
    /* Rounds alternated, so that the host's load weighs on each alike, each a new client on a
     * new terminal (which CPUs its threads share moves a round's p50 by tens of %): the p50 is
     * taken over every round's keystrokes together. */
    enum { KEY_ROUNDS = 6 };
    int per = keystrokes / 2 > 0 ? keystrokes / 2 : 1;
    char *const *argvs[3] = {moat_argv, docker_argv, local_argv};
    double *all[3], p50s[3][KEY_ROUNDS];
    bool keys_ok = true;
    for (int k = 0; k < 3; k++) {
        all[k] = calloc((size_t)per * KEY_ROUNDS, sizeof(double));
        keys_ok = keys_ok && all[k] != NULL;
    }
    double *copy = malloc((size_t)per * sizeof(double));
    keys_ok = keys_ok && copy != NULL;
    for (int round = 0; keys_ok && round < KEY_ROUNDS; round++) {
        for (int k = 0; keys_ok && k < 3; k++) {
            double *v = all[k] + (size_t)round * (size_t)per;
            keys_ok = keystroke_times(argvs[k], per, v);
            if (keys_ok) {
                memcpy(copy, v, (size_t)per * sizeof(double));
                p50s[k][round] = percentile(copy, per, 0.5);
            }
        }
    }
    free(copy);
    if (!keys_ok) {
        printf("%-44s a client failed  FAIL\n", "keystroke round trip p50");
        failures++;
    } else {
        printf("keystroke p50 per round (ms), moat / docker / local pty:");
        for (int round = 0; round < KEY_ROUNDS; round++)
            printf(" %.3f/%.3f/%.3f", p50s[0][round], p50s[1][round], p50s[2][round]);
        printf("\n");
        double mm = percentile(all[0], per * KEY_ROUNDS, 0.5);
        double dd = percentile(all[1], per * KEY_ROUNDS, 0.5);
        double ll = percentile(all[2], per * KEY_ROUNDS, 0.5);
        verdict("keystroke round trip p50, moat -it vs docker", mm, dd, "ms", mm / dd,
                mm / dd <= 0.75, "<= 0.75x");
        printf("local pty (the floor) %.3f ms: moat adds %.3f ms, docker %.3f ms\n", ll, mm - ll,
               dd - ll);
    }
    for (int k = 0; k < 3; k++)
        free(all[k]);

    /* rounds alternated, so that the host's load weighs on each alike; medians compared */
    enum { ROUNDS = 3 };
    double tm[ROUNDS], td[ROUNDS], tp[ROUNDS], rm[ROUNDS], rd[ROUNDS], rp[ROUNDS], ratio[ROUNDS];
    double cm[ROUNDS], cd[ROUNDS];
    char pipe_cmd[600];
    snprintf(pipe_cmd, sizeof(pipe_cmd),
             "/usr/bin/docker exec %s bash -c 'head -c %lld /dev/zero | cat >/dev/null'", cid,
             stdin_bytes);
    bool ok = true;
    for (int i = 0; i < ROUNDS; i++) {
        tm[i] = stdin_run_cpu(addr, moat_bin, sid, cid, stdin_bytes, true, &cm[i]);
        td[i] = stdin_run_cpu(addr, moat_bin, sid, cid, stdin_bytes, false, &cd[i]);
        tp[i] = timed_system(pipe_cmd);
        ok = ok && tm[i] > 0 && td[i] > 0 && tp[i] > 0;
        rm[i] = (double)stdin_bytes / tm[i] / 1048576.0;
        rd[i] = (double)stdin_bytes / td[i] / 1048576.0;
        rp[i] = (double)stdin_bytes / tp[i] / 1048576.0;
        ratio[i] = rm[i] / rd[i];
        printf("stdin round %d: moat exec -i %.0f MiB/s, docker exec -i %.0f MiB/s (%.2fx), "
               "in-sandbox pipe %.0f MiB/s; the sandbox's CPU: moat %.0f ms, docker %.0f ms\n",
               i + 1, rm[i], rd[i], ratio[i], rp[i], cm[i], cd[i]);
    }
    double mr = percentile(rm, ROUNDS, 0.5), dr = percentile(rd, ROUNDS, 0.5);
    double tpm = percentile(tp, ROUNDS, 0.5), med = percentile(ratio, ROUNDS, 0.5);
    printf("the sandbox's CPU per round, median: moat %.0f ms, docker %.0f ms\n",
           percentile(cm, ROUNDS, 0.5), percentile(cd, ROUNDS, 0.5));
    char what[80];
    snprintf(what, sizeof(what), "stdin %lld MiB into cat (MiB/s)", stdin_bytes >> 20);
    verdict(what, mr, dr, "MiB/s", med, ok && med >= 2.0, ">= 2x");
    double tmm = percentile(tm, ROUNDS, 0.5), tdm = percentile(td, ROUNDS, 0.5);
    /* What each client costs with no input at all (start, EOF, exit): the rate net of it says
     * how fast the bytes themselves go. */
    double m0 = stdin_run(addr, moat_bin, sid, cid, 0, true);
    double d0 = stdin_run(addr, moat_bin, sid, cid, 0, false);
    printf("with no input: moat exec -i %.3f s, docker exec -i %.3f s; net of that, moat %.0f "
           "MiB/s, docker %.0f MiB/s (%.2fx)\n",
           m0, d0, (double)stdin_bytes / (tmm - m0) / 1048576.0,
           (double)stdin_bytes / (tdm - d0) / 1048576.0, (tdm - d0) / (tmm - m0));
    /* No transport can beat the sandbox's own pipe into the same cat: net of docker exec's
     * start, it is the bound, and 2x docker needs that share of it. */
    if (tpm <= d0) {
        printf("bound: not measured (the in-sandbox pipe's median %.3f s is within docker exec's "
               "start, %.3f s, this run)\n",
               tpm, d0);
        return;
    }
    double pr = (double)stdin_bytes / (tpm - d0) / 1048576.0;
    printf("bound: in-sandbox pipe into the same cat %.0f MiB/s (median, net of docker exec's "
           "start) = %.2fx docker exec -i; 2x docker is %.0f%% of it, moat reaches %.0f%%\n",
           pr, pr / dr, 200.0 * dr / pr, 100.0 * mr / pr);
}

/* One `printf 'a\nb\n' | ... wc -l` through moat exec -i (or docker exec -i); its wall time, -1
 * when it failed or printed anything but 2. */
static double sequential_run(const char *addr, const char *moat_bin, const char *sid,
                             const char *cid, bool moat)
{
    char cmd[1400];
    if (moat)
        snprintf(cmd, sizeof(cmd), "test \"$(printf 'a\\nb\\n' | %s %s exec -i %s -- wc -l)\" = 2",
                 addr, moat_bin, sid);
    else
        snprintf(cmd, sizeof(cmd),
                 "test \"$(printf 'a\\nb\\n' | /usr/bin/docker exec -i %s wc -l)\" = 2", cid);
    return timed_system(cmd);
}

void bench_interactive_sequential(const moatd_proc *p, const char *moat_bin, const char *sid,
                                  const char *cid, int n)
{
    char addr[64];
    snprintf(addr, sizeof(addr), "MOAT_ADDR=127.0.0.1:%d", p->port);
    double *tm = calloc((size_t)n, sizeof(double)), *td = calloc((size_t)n, sizeof(double));
    if (tm == NULL || td == NULL) {
        free(tm);
        free(td);
        failures++;
        return;
    }
    int mfail = 0, dfail = 0, first_fail = -1;
    /* alternated, so that the host's load weighs on each alike */
    for (int i = 0; i < n; i++) {
        tm[i] = sequential_run(addr, moat_bin, sid, cid, true);
        td[i] = sequential_run(addr, moat_bin, sid, cid, false);
        if (tm[i] < 0 && first_fail < 0)
            first_fail = i + 1;
        mfail += tm[i] < 0;
        dfail += td[i] < 0;
    }
    double mp = percentile(tm, n, 0.5) * 1000, dp = percentile(td, n, 0.5) * 1000;
    printf("sequential exec -i: moat %d of %d ok (first failure: call %d), docker %d of %d ok\n",
           n - mfail, n, first_fail, n - dfail, n);
    char what[80];
    snprintf(what, sizeof(what), "%d sequential exec -i, p50 per call (ms)", n);
    verdict(what, mp, dp, "ms", mp / dp, mfail == 0, "all succeed");
    free(tm);
    free(td);
}
