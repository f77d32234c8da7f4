/* Acting as another local user of the host (nobody). */
#include "local_user.h"

#include <errno.h>
#include <stdbool.h>
#include <fcntl.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

static bool become_nobody(void)
{
    return setgroups(0, NULL) == 0 && setgid(NOBODY_GID) == 0 && setuid(NOBODY_UID) == 0;
}

long euid_of_setuid_file_run_by_nobody(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    int out[2];
    if (fd < 0 || pipe(out) != 0)
        return -1;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(out[1], 1);
        if (!become_nobody())
            _exit(120);
        char *argv[] = {"sh", "-p", "-c", "id -u", NULL};
        char *envp[] = {"PATH=/usr/bin:/bin", NULL};
        fexecve(fd, argv, envp);
        _exit(121);
    }
    close(out[1]);
    close(fd);
    char buf[64] = "";
    ssize_t n = read(out[0], buf, sizeof(buf) - 1);
    close(out[0]);
    waitpid(pid, NULL, 0);
    return n > 0 ? strtol(buf, NULL, 10) : -1;
}

static int try_open(const char *path)
{
    return open(path, O_RDONLY) >= 0 ? 0 : errno;
}

static int try_connect(const char *path)
{
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(sa.sun_path))
        return ENAMETOOLONG;
    memcpy(sa.sun_path, path, strlen(path) + 1);
    return connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 ? 0 : errno;
}

/* What attempt(path) gives when nobody makes it: 0 or an errno. */
static int as_nobody(int (*attempt)(const char *), const char *path)
{
    pid_t pid = fork();
    if (pid == 0)
        _exit(become_nobody() ? attempt(path) : 120);
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

int nobody_open_errno(const char *path)
{
    return as_nobody(try_open, path);
}

int nobody_connect_errno(const char *path)
{
    return as_nobody(try_connect, path);
}
