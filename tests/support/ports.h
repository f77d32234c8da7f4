/* Loopback TCP ports for the daemons the tests start (ports.c). A port free_port() finds may be
 * taken by another process before the daemon binds it: a daemon's start checks listens_on and,
 * when someone else took the port, starts again on another. No state; any thread. */
#ifndef MOAT_TEST_PORTS_H
#define MOAT_TEST_PORTS_H

#include <stdbool.h>
#include <sys/types.h>

/* A loopback TCP port that was free a moment ago. */
int free_port(void);
/* The inode of the TCP socket listening on port (any address), from /proc/net/tcp, or 0. */
unsigned long listener_inode(int port);
/* Whether pid itself listens on port. */
bool listens_on(pid_t pid, int port);

#endif
