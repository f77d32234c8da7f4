/* Test clean-up: moatd's runtime leaves nosuid,nodev bind mounts of chats_root and
 * <state_dir>/sessions in place on purpose (docs/SECURITY.md), so a test that removes its
 * state dir unmounts what lies under it first. */
#ifndef MOAT_TEST_UNMOUNT_UNDER_H
#define MOAT_TEST_UNMOUNT_UNDER_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>

/* Detaches every mount whose mount point is dir or below it, deepest first. */
static inline void moat_test_unmount_under(const char *dir)
{
    for (int pass = 0; pass < 4096; pass++) {
        FILE *f = fopen("/proc/self/mountinfo", "r");
        if (f == NULL)
            return;
        char line[4096], deepest[4096] = "";
        size_t n = strlen(dir);
        while (fgets(line, sizeof(line), f) != NULL) {
            char point[4096];
            /* id parent major:minor root mount-point ... */
            if (sscanf(line, "%*s %*s %*s %*s %4095s", point) != 1)
                continue;
            if (strncmp(point, dir, n) == 0 && (point[n] == '\0' || point[n] == '/') &&
                strlen(point) > strlen(deepest))
                snprintf(deepest, sizeof(deepest), "%s", point);
        }
        fclose(f);
        if (deepest[0] == '\0' || umount2(deepest, MNT_DETACH) != 0)
            return;
    }
}

#endif
