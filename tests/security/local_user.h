/* Acting as another local user of the host (nobody), for the tests that show what such a user
 * can and cannot do with what a sandbox leaves on the host. Each runs in a child process. */
#ifndef MOAT_TEST_LOCAL_USER_H
#define MOAT_TEST_LOCAL_USER_H

#define NOBODY_UID 65534
#define NOBODY_GID 65534

/* Runs `path -p -c 'id -u'` as nobody from a descriptor root opened, so the directories above
 * path (closed to nobody) do not stop it and only the file's own bits and its mount count.
 * The euid it printed, or -1. */
long euid_of_setuid_file_run_by_nobody(const char *path);
/* 0 when nobody can open path for reading, else the errno. */
int nobody_open_errno(const char *path);
/* 0 when nobody can connect to the Unix socket at path, else the errno. */
int nobody_connect_errno(const char *path);

#endif
