/* Connecting to a Unix socket that sits in a directory someone else can write. */
#ifndef MOAT_COMMON_UNIX_SOCKET_H
#define MOAT_COMMON_UNIX_SOCKET_H

#include <stddef.h>

/* Connects fd, an AF_UNIX stream socket, to the socket file at path, refusing a symlink as the
 * last component and any file that is not a socket: the sandbox can write the directory that
 * holds execd's socket, and connect(2) alone would follow a link it planted (to another
 * sandbox's socket, or to the engine's). The check and the connect use one open file, so the
 * file cannot be swapped between them. The directories above path must not be writable by
 * whoever is distrusted. fd is made non-blocking; a socket whose backlog is full fails with
 * EAGAIN rather than blocking the caller.
 * Returns 0, or -1 with errno set and a one-line reason in why (may be NULL). */
int moat_unix_connect_nofollow(int fd, const char *path, char *why, size_t why_len);

#endif
