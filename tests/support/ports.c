/* Loopback TCP ports for the daemons the tests start, and whether a daemon really holds one. */
#include "ports.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(fd, (struct sockaddr *)&a, sizeof(a));
    socklen_t len = sizeof(a);
    getsockname(fd, (struct sockaddr *)&a, &len);
    close(fd);
    return ntohs(a.sin_port);
}

unsigned long listener_inode(int port)
{
    FILE *f = fopen("/proc/net/tcp", "r");
    if (f == NULL)
        return 0;
    char line[512];
    unsigned long found = 0;
    while (found == 0 && fgets(line, sizeof(line), f) != NULL) {
        unsigned lport, state;
        unsigned long inode;
        if (sscanf(line, " %*u: %*x:%x %*x:%*x %x %*x:%*x %*x:%*x %*x %*u %*u %lu", &lport, &state,
                   &inode) == 3 &&
            (int)lport == port && state == 0x0A /* TCP_LISTEN */)
            found = inode;
    }
    fclose(f);
    return found;
}

/* Whether pid holds the socket with this inode. */
static bool holds_socket(pid_t pid, unsigned long inode)
{
    char want[64], dir[64], path[400], target[64];
    snprintf(want, sizeof(want), "socket:[%lu]", inode);
    snprintf(dir, sizeof(dir), "/proc/%d/fd", (int)pid);
    DIR *d = opendir(dir);
    if (d == NULL)
        return false;
    bool held = false;
    struct dirent *de;
    while (!held && (de = readdir(d)) != NULL) {
        snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
        ssize_t n = readlink(path, target, sizeof(target) - 1);
        if (n > 0) {
            target[n] = '\0';
            held = strcmp(target, want) == 0;
        }
    }
    closedir(d);
    return held;
}

/* A connect alone could reach whoever took the port between free_port() and the daemon's bind. */
bool listens_on(pid_t pid, int port)
{
    unsigned long inode = listener_inode(port);
    return inode != 0 && holds_socket(pid, inode);
}
