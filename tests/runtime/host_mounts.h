/* Helpers for tests that mount on the host: they look at and undo only what lies under a
 * directory the test made. */
#ifndef MOAT_TEST_HOST_MOUNTS_H
#define MOAT_TEST_HOST_MOUNTS_H

#include <stdbool.h>
#include <stddef.h>

/* Mounts whose mount point is exactly path (stacked mounts count each). */
size_t host_mounts_at(const char *path);
/* Unmounts every mount at or under dir, deepest and latest first (detaching lazily only what
 * stays busy), so that dir can be removed. Returns how many it unmounted. */
size_t host_unmount_under(const char *dir);
/* Loop devices whose backing file is path, or lies under it. */
size_t host_loops_under(const char *path);
/* Unmounts what lies under dir, then removes dir and everything in it. */
void host_remove_tree(const char *dir);
/* host_remove_tree, then checks that it worked: 0, or -1 (saying on stderr what was left) when a
 * loop device still backs a file under dir or dir is still there. For a test's teardown. */
int host_remove_tree_checked(const char *dir);

#endif
