#include "userns_engine.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "host_mounts.h"

#define DOCKER   "/usr/bin/docker"
#define RANGE    65536u
#define BASE_MIN (1u << 30) /* far above the ranges useradd hands out (100000 upwards) */

static int run(const char *cmd)
{
    int rc = system(cmd);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

const char *userns_engine_unsupported(void)
{
    if (access("/usr/sbin/dockerd", X_OK) != 0 && access("/usr/bin/dockerd", X_OK) != 0)
        return "dockerd is not installed";
    if (access("/usr/sbin/useradd", X_OK) != 0)
        return "useradd is not installed (passwd)";
    pid_t pid = fork();
    if (pid == 0)
        _exit(unshare(CLONE_NEWUSER) == 0 ? 0 : 1);
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) ||
        WEXITSTATUS(status) != 0)
        return "this kernel gives no user namespaces (unshare(CLONE_NEWUSER) failed; see "
               "user.max_user_namespaces)";
    return NULL;
}

/* Whether [base, base+RANGE) meets any range in path. */
static int overlaps(const char *path, uint32_t base)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return 0;
    char line[512];
    int hit = 0;
    while (!hit && fgets(line, sizeof(line), f) != NULL) {
        char *c2 = strrchr(line, ':');
        if (c2 == NULL)
            continue;
        *c2 = '\0';
        char *c1 = strrchr(line, ':');
        if (c1 == NULL)
            continue;
        uint64_t start = strtoull(c1 + 1, NULL, 10), count = strtoull(c2 + 1, NULL, 10);
        hit = start < (uint64_t)base + RANGE && (uint64_t)base < start + count;
    }
    fclose(f);
    return hit;
}

static void remove_user(userns_engine *e)
{
    char cmd[256];
    snprintf(cmd, sizeof(cmd),
             "sed -i '/^%s:/d' /etc/subuid /etc/subgid; userdel %s >/dev/null 2>&1; "
             "groupdel %s >/dev/null 2>&1; true",
             e->user, e->user, e->user);
    run(cmd);
    e->user_added = 0;
}

static int add_user(userns_engine *e)
{
    snprintf(e->user, sizeof(e->user), "moatns%d", (int)getpid());
    remove_user(e); /* a run with the same pid that was killed before it cleaned up */
    uint32_t slot = (uint32_t)getpid() % 4096;
    e->base = 0;
    for (uint32_t i = 0; i < 4096 && e->base == 0; i++) {
        uint32_t base = BASE_MIN + ((slot + i) % 4096) * RANGE;
        if (!overlaps("/etc/subuid", base) && !overlaps("/etc/subgid", base))
            e->base = base;
    }
    if (e->base == 0) {
        fprintf(stderr, "userns_engine: no free subordinate range above %u\n", BASE_MIN);
        return -1;
    }
    char cmd[512];
    snprintf(cmd, sizeof(cmd),
             "useradd --system --no-create-home --user-group --shell /usr/sbin/nologin %s && "
             "echo %s:%" PRIu32 ":%u >>/etc/subuid && echo %s:%" PRIu32 ":%u >>/etc/subgid",
             e->user, e->user, e->base, RANGE, e->user, e->base, RANGE);
    e->user_added = 1; /* whatever of it was made is removed by name */
    if (run(cmd) != 0) {
        fprintf(stderr, "userns_engine: could not add user %s and its ranges\n", e->user);
        return -1;
    }
    return 0;
}

static int engine_answers(const userns_engine *e)
{
    char cmd[300];
    snprintf(cmd, sizeof(cmd), DOCKER " -H unix://%s version >/dev/null 2>&1", e->sock);
    return run(cmd) == 0;
}

static int start_dockerd(userns_engine *e, int remap)
{
    char log[160], data[128], exec_root[128], pidfile[128], host[160], remap_flag[96];
    snprintf(log, sizeof(log), "%s/dockerd.log", e->dir);
    snprintf(data, sizeof(data), "--data-root=%s/data", e->dir);
    snprintf(exec_root, sizeof(exec_root), "--exec-root=%s/exec", e->dir);
    snprintf(pidfile, sizeof(pidfile), "--pidfile=%s/dockerd.pid", e->dir);
    snprintf(host, sizeof(host), "unix://%s", e->sock);
    snprintf(remap_flag, sizeof(remap_flag), "--userns-remap=%s:%s", e->user, e->user);
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        /* A test killed by its timeout must not leave the engine running. */
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        /* Its own (empty) config file, so /etc/docker/daemon.json plays no part. */
        char config[160];
        snprintf(config, sizeof(config), "--config-file=%s/daemon.json", e->dir);
        execlp("dockerd", "dockerd", config, data, exec_root, pidfile, "-H", host, "--bridge=none",
               "--iptables=false", "--ip6tables=false", remap ? remap_flag : (char *)NULL,
               (char *)NULL);
        _exit(127);
    }
    e->pid = pid;
    for (int i = 0; i < 300; i++) { /* bounded: 30 s */
        if (engine_answers(e))
            return 0;
        if (waitpid(pid, NULL, WNOHANG) == pid) {
            e->pid = 0;
            break;
        }
        usleep(100000);
    }
    fprintf(stderr, "userns_engine: the private dockerd did not answer; its log:\n");
    snprintf(log, sizeof(log), "tail -n 20 %s/dockerd.log >&2", e->dir);
    run(log);
    return -1;
}

int userns_engine_start(userns_engine *e, const char *image, int remap)
{
    memset(e, 0, sizeof(*e));
    snprintf(e->dir, sizeof(e->dir), "/tmp/moat-uns-%d-XXXXXX", (int)getpid());
    if (mkdtemp(e->dir) == NULL) {
        e->dir[0] = '\0';
        return -1;
    }
    snprintf(e->sock, sizeof(e->sock), "%s/docker.sock", e->dir);
    /* The remapped root reaches its data-root through this directory. */
    chmod(e->dir, 0711);
    char cmd[2048];
    snprintf(cmd, sizeof(cmd), "echo '{}' >%s/daemon.json", e->dir);
    if (run(cmd) != 0 || (remap && add_user(e) != 0) || start_dockerd(e, remap) != 0)
        goto fail;
    const char *build = getenv("MOAT_BUILD_DIR"), *src = getenv("MOAT_SOURCE_DIR");
    snprintf(cmd, sizeof(cmd),
             "(" DOCKER " image inspect %s >/dev/null 2>&1 || %s/scripts/build-sandbox-image.sh "
             "%s >/dev/null) && " DOCKER " save %s | " DOCKER " -H unix://%s load >/dev/null",
             image, src ? src : ".", build ? build : "build", image, e->sock);
    if (run(cmd) != 0) {
        fprintf(stderr, "userns_engine: could not load %s into the private engine\n", image);
        goto fail;
    }
    return 0;
fail:
    userns_engine_stop(e);
    return -1;
}

/* dockerd's own containerd, found by the config path under our exec-root: after a SIGKILL of
 * dockerd it would stay. */
static void kill_containerd(const userns_engine *e)
{
    DIR *d = opendir("/proc");
    if (d == NULL)
        return;
    char want[128];
    snprintf(want, sizeof(want), "%s/exec/containerd/", e->dir);
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        char path[300], args[4096];
        if (strspn(de->d_name, "0123456789") != strlen(de->d_name))
            continue;
        snprintf(path, sizeof(path), "/proc/%s/cmdline", de->d_name);
        int fd = open(path, O_RDONLY);
        if (fd < 0)
            continue;
        ssize_t n = read(fd, args, sizeof(args) - 1);
        close(fd);
        if (n <= 0)
            continue;
        for (ssize_t i = 0; i < n; i++)
            if (args[i] == '\0')
                args[i] = ' ';
        args[n] = '\0';
        if (strncmp(args, "containerd ", 11) == 0 && strstr(args, want) != NULL)
            kill((pid_t)atoi(de->d_name), SIGKILL);
    }
    closedir(d);
}

void userns_engine_stop(userns_engine *e)
{
    char cmd[512];
    if (e->pid > 0) {
        snprintf(cmd, sizeof(cmd),
                 DOCKER " -H unix://%s ps -aq | xargs -r " DOCKER " -H unix://%s rm -f "
                        ">/dev/null 2>&1",
                 e->sock, e->sock);
        run(cmd);
        kill(e->pid, SIGTERM);
        int i = 0;
        while (waitpid(e->pid, NULL, WNOHANG) != e->pid && i++ < 600) /* bounded: 60 s */
            usleep(100000);
        if (i > 600) {
            kill(e->pid, SIGKILL);
            waitpid(e->pid, NULL, 0);
        }
        e->pid = 0;
    }
    if (e->dir[0] != '\0') {
        kill_containerd(e);
        host_unmount_under(e->dir);
        snprintf(cmd, sizeof(cmd), "rm -rf --one-file-system %s", e->dir);
        run(cmd);
        e->dir[0] = '\0';
    }
    if (e->user_added)
        remove_user(e);
}

int proc_uids(pid_t pid, uint32_t ids[4])
{
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    int got = -1;
    while (got < 0 && fgets(line, sizeof(line), f) != NULL)
        if (sscanf(line, "Uid:\t%" SCNu32 "\t%" SCNu32 "\t%" SCNu32 "\t%" SCNu32, &ids[0], &ids[1],
                   &ids[2], &ids[3]) == 4)
            got = 0;
    fclose(f);
    return got;
}
