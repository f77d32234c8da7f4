/* A dockerd of a test's own (private socket, data-root, exec-root and pidfile under dir, no
 * bridge, no iptables), for tests that stop, hang or kill the engine: the shared one is never
 * touched. Its log is dir/dockerd.log. The caller sets dir (made, e.g. by mkdtemp) and sock;
 * nothing here allocates. */
#ifndef MOAT_TEST_PRIVATE_DOCKERD_H
#define MOAT_TEST_PRIVATE_DOCKERD_H

#include <stdbool.h>
#include <sys/types.h>

typedef struct private_dockerd {
    char dir[96];
    char sock[160];
    pid_t pid;    /* 0 when not running */
    bool stopped; /* SIGSTOPped by the test: stop continues it first */
} private_dockerd;

/* Whether `docker version` answers on its socket. */
bool private_dockerd_answers(const private_dockerd *d);
/* Starts it and waits (bounded by wait_s) until it answers. 0, or -1 (see its log). */
int private_dockerd_start(private_dockerd *d, int wait_s);
/* SIGTERM, as an operator's restart does (the engine stops its containers on the way out);
 * SIGKILL after wait_s. A no-op when it is not running. */
void private_dockerd_stop(private_dockerd *d, int wait_s);
/* The containerd it started outlives a SIGKILLed dockerd: ends it by the pid it wrote, once its
 * command line shows it is this engine's. */
void private_dockerd_kill_containerd(const private_dockerd *d);

#endif
