/* A Unix socket address that neither follows a planted symlink nor names a non-socket. */
#include "unix_socket.h"

#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int refuse(char *why, size_t why_len, int err, const char *path, const char *what)
{
    if (why != NULL && why_len > 0)
        snprintf(why, why_len, "%.200s %s", path, what);
    errno = err;
    return -1;
}

int moat_unix_pin(const char *path, struct sockaddr_un *sa, socklen_t *len, char *why,
                  size_t why_len)
{
    /* O_PATH | O_NOFOLLOW opens a symlink itself rather than failing, so fstat can name it. */
    int pin = open(path, O_PATH | O_NOFOLLOW | O_CLOEXEC);
    if (pin < 0) {
        int err = errno;
        return refuse(why, why_len, err, path, strerror(err));
    }
    struct stat st;
    const char *wrong = NULL;
    int err = 0;
    if (fstat(pin, &st) != 0) {
        err = errno;
        wrong = strerror(err);
    } else if (S_ISLNK(st.st_mode)) {
        err = ELOOP;
        wrong = "is a symlink (refused)";
    } else if (!S_ISSOCK(st.st_mode)) {
        err = ENOTSOCK;
        wrong = "is not a socket (refused)";
    }
    if (wrong != NULL) {
        close(pin);
        return refuse(why, why_len, err, path, wrong);
    }
    memset(sa, 0, sizeof(*sa));
    sa->sun_family = AF_UNIX;
    int n = snprintf(sa->sun_path, sizeof(sa->sun_path), "/proc/self/fd/%d", pin);
    *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + (size_t)n + 1);
    return pin;
}
