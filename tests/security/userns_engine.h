/* A private dockerd with userns-remap, for tests and benchmarks: it never touches the shared
 * engine or /etc/docker. It remaps to a user of its own (moatns<pid>) with a subordinate range of
 * its own in /etc/subuid and /etc/subgid, runs on its own socket, data-root and exec-root under
 * /tmp/moat-uns-<pid>-*, with no bridge and no iptables, and holds the sandbox image copied from
 * the shared engine. userns_engine_stop undoes all of it (containers, dockerd and its containerd,
 * mounts, the directory, the user, the ranges), also after a failed start. */
#ifndef MOAT_TEST_USERNS_ENGINE_H
#define MOAT_TEST_USERNS_ENGINE_H

#include <stdint.h>
#include <sys/types.h>

typedef struct userns_engine {
    char dir[64];   /* /tmp/moat-uns-<pid>-XXXXXX */
    char sock[128]; /* <dir>/docker.sock */
    char user[32];  /* moatns<pid> */
    uint32_t base;  /* host uid and gid of container root */
    pid_t pid;      /* dockerd */
    int user_added; /* the user and its ranges exist and are ours to remove */
} userns_engine;

/* Why this host cannot run a userns-remapped engine at all (no user namespaces, no dockerd), or
 * NULL when it can. A reason here is a skip, not a failure. */
const char *userns_engine_unsupported(void);
/* Starts it (with remap 0: the same private engine without userns-remap, no user, no ranges,
 * the baseline of a comparison) and loads image (building it first with
 * scripts/build-sandbox-image.sh when the shared engine lacks it; env MOAT_BUILD_DIR,
 * MOAT_SOURCE_DIR). 0, or -1 after printing why and cleaning up. */
int userns_engine_start(userns_engine *e, const char *image, int remap);
/* Removes its containers, stops it and undoes everything start did; safe to call twice. */
void userns_engine_stop(userns_engine *e);
/* The Uid: line of /proc/<pid>/status, its four ids; -1 when unreadable. */
int proc_uids(pid_t pid, uint32_t ids[4]);

#endif
