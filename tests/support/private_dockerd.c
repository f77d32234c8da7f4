#include "private_dockerd.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

bool private_dockerd_answers(const private_dockerd *d)
{
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "/usr/bin/docker -H unix://%s version >/dev/null 2>&1", d->sock);
    int rc = system(cmd);
    return WIFEXITED(rc) && WEXITSTATUS(rc) == 0;
}

int private_dockerd_start(private_dockerd *d, int wait_s)
{
    char log[192], data[160], exec_root[160], pidfile[160], host[192];
    snprintf(log, sizeof(log), "%s/dockerd.log", d->dir);
    snprintf(data, sizeof(data), "--data-root=%s/data", d->dir);
    snprintf(exec_root, sizeof(exec_root), "--exec-root=%s/exec", d->dir);
    snprintf(pidfile, sizeof(pidfile), "--pidfile=%s/dockerd.pid", d->dir);
    snprintf(host, sizeof(host), "unix://%s", d->sock);
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        if (freopen(log, "a", stdout) == NULL || freopen(log, "a", stderr) == NULL)
            _exit(127);
        execlp("dockerd", "dockerd", data, exec_root, pidfile, "-H", host, "--bridge=none",
               "--iptables=false", "--ip6tables=false", (char *)NULL);
        _exit(127);
    }
    d->pid = pid;
    d->stopped = false;
    for (int i = 0; i < wait_s * 10; i++) {
        if (private_dockerd_answers(d))
            return 0;
        usleep(100000);
    }
    return -1;
}

void private_dockerd_stop(private_dockerd *d, int wait_s)
{
    if (d->pid <= 0)
        return;
    if (d->stopped)
        kill(d->pid, SIGCONT);
    d->stopped = false;
    kill(d->pid, SIGTERM);
    for (int i = 0; i < wait_s * 10; i++) {
        if (waitpid(d->pid, NULL, WNOHANG) == d->pid) {
            d->pid = 0;
            return;
        }
        usleep(100000);
    }
    kill(d->pid, SIGKILL);
    waitpid(d->pid, NULL, 0);
    d->pid = 0;
}

void private_dockerd_kill_containerd(const private_dockerd *d)
{
    char path[192], cmdline[1024] = "";
    snprintf(path, sizeof(path), "%s/exec/containerd/containerd.pid", d->dir);
    FILE *f = fopen(path, "r");
    int pid = 0;
    if (f == NULL)
        return;
    if (fscanf(f, "%d", &pid) != 1)
        pid = 0;
    fclose(f);
    if (pid <= 1)
        return;
    snprintf(path, sizeof(path), "/proc/%d/cmdline", pid);
    f = fopen(path, "r");
    if (f == NULL)
        return;
    size_t n = fread(cmdline, 1, sizeof(cmdline) - 1, f);
    fclose(f);
    for (size_t i = 0; i < n; i++)
        cmdline[i] = cmdline[i] == '\0' ? ' ' : cmdline[i];
    if (strstr(cmdline, d->dir) == NULL)
        return;
    kill(pid, SIGTERM);
    for (int i = 0; i < 100 && kill(pid, 0) == 0; i++) /* bounded: 10 s */
        usleep(100000);
    kill(pid, SIGKILL);
}
