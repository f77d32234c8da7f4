/* Reaching a Unix socket that sits in a directory someone else can write. */
#ifndef MOAT_COMMON_UNIX_SOCKET_H
#define MOAT_COMMON_UNIX_SOCKET_H

#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>

/* Pins the socket file at path for a connect(2) that cannot be redirected: the sandbox can
 * write the directory that holds execd's socket, and connect(2) on the path would follow a
 * link it planted there (to another sandbox's socket, or to the engine's). The last component
 * is opened without following a symlink and must be a socket; *sa (and *len) then name that
 * very file through /proc/self/fd, whatever the path holds by the time of the connect. The
 * directories above path must not be writable by whoever is distrusted.
 * Returns the pin, an O_PATH descriptor the caller closes once connect(2) has returned; or -1
 * with errno set (ELOOP: a symlink; ENOTSOCK: not a socket) and a one-line reason in why (may
 * be NULL). */
int moat_unix_pin(const char *path, struct sockaddr_un *sa, socklen_t *len, char *why,
                  size_t why_len);

#endif
