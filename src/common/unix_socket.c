/* Unix socket connect that neither follows a planted symlink nor talks to a non-socket. */
#include "unix_socket.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

static int refuse(char *why, size_t why_len, int err, const char *path, const char *what)
{
    if (why != NULL && why_len > 0)
        snprintf(why, why_len, "%.200s %s", path, what);
    errno = err;
    return -1;
}

int moat_unix_connect_nofollow(int fd, const char *path, char *why, size_t why_len)
{
    /* O_PATH | O_NOFOLLOW opens a symlink itself rather than failing, so fstat can name it. */
    int pin = open(path, O_PATH | O_NOFOLLOW | O_CLOEXEC);
    if (pin < 0) {
        int err = errno;
        return refuse(why, why_len, err, path, strerror(err));
    }
    struct stat st;
    if (fstat(pin, &st) != 0) {
        int err = errno;
        close(pin);
        return refuse(why, why_len, err, path, strerror(err));
    }
    if (S_ISLNK(st.st_mode)) {
        close(pin);
        return refuse(why, why_len, ELOOP, path, "is a symlink (refused)");
    }
    if (!S_ISSOCK(st.st_mode)) {
        close(pin);
        return refuse(why, why_len, ENOTSOCK, path, "is not a socket (refused)");
    }
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0) {
        int err = errno;
        close(pin);
        return refuse(why, why_len, err, path, strerror(err));
    }
    /* The magic link names the inode already checked, whatever the path now holds. */
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "/proc/self/fd/%d", pin);
    int rc = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
    int err = errno;
    close(pin);
    if (rc != 0)
        return refuse(why, why_len, err, path,
                      err == EAGAIN ? "has a full backlog" : strerror(err));
    return 0;
}
