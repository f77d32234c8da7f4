/* See host_mounts.h. */
#define _XOPEN_SOURCE 700
#include "host_mounts.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

typedef struct mounts {
    const char *prefix; /* under (or at) this path */
    size_t prefix_len;
    bool exact;
    char (*points)[MOAT_RUNTIME_PATH_MAX];
    size_t count;
} mounts;

static void on_entry(void *ctx, const moat__mount_entry *e)
{
    mounts *m = ctx;
    bool match = m->exact ? strcmp(e->mount_point, m->prefix) == 0
                          : strncmp(e->mount_point, m->prefix, m->prefix_len) == 0 &&
                                (e->mount_point[m->prefix_len] == '/' ||
                                 e->mount_point[m->prefix_len] == '\0');
    if (!match)
        return;
    void *grown = realloc(m->points, (m->count + 1) * sizeof(*m->points));
    if (grown == NULL)
        return;
    m->points = grown;
    snprintf(m->points[m->count++], MOAT_RUNTIME_PATH_MAX, "%s", e->mount_point);
}

static void collect(mounts *m)
{
    int fd = open("/proc/self/mountinfo", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    moat__mountinfo_reader *r = malloc(sizeof(*r));
    char buf[8192];
    ssize_t n;
    moat__mountinfo_init(r);
    while ((n = read(fd, buf, sizeof(buf))) > 0)
        moat__mountinfo_feed(r, buf, (size_t)n, on_entry, m);
    free(r);
    close(fd);
}

size_t host_mounts_at(const char *path)
{
    char real[MOAT_RUNTIME_PATH_MAX];
    mounts m = {realpath(path, real) ? real : path, 0, true, NULL, 0};
    collect(&m);
    free(m.points);
    return m.count;
}

size_t host_unmount_under(const char *dir)
{
    char real[MOAT_RUNTIME_PATH_MAX];
    if (realpath(dir, real) == NULL)
        return 0;
    mounts m = {real, strlen(real), false, NULL, 0};
    collect(&m);
    size_t done = 0;
    /* mountinfo lists parents before children and older before newer: undo from the end. */
    for (size_t i = m.count; i-- > 0;) {
        if (umount2(m.points[i], UMOUNT_NOFOLLOW) == 0 ||
            (errno == EBUSY && umount2(m.points[i], MNT_DETACH | UMOUNT_NOFOLLOW) == 0))
            done++;
    }
    free(m.points);
    return done;
}

size_t host_loops_under(const char *path)
{
    char real[MOAT_RUNTIME_PATH_MAX];
    if (realpath(path, real) == NULL)
        return 0;
    size_t len = strlen(real), count = 0;
    DIR *d = opendir("/sys/block");
    if (d == NULL)
        return 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strncmp(e->d_name, "loop", 4) != 0)
            continue;
        char path[512], backing[MOAT_RUNTIME_PATH_MAX] = "";
        snprintf(path, sizeof(path), "/sys/block/%s/loop/backing_file", e->d_name);
        FILE *f = fopen(path, "r");
        if (f == NULL)
            continue;
        if (fgets(backing, sizeof(backing), f) != NULL && strncmp(backing, real, len) == 0 &&
            (backing[len] == '/' || backing[len] == '\n'))
            count++;
        fclose(f);
    }
    closedir(d);
    return count;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

void host_remove_tree(const char *dir)
{
    host_unmount_under(dir);
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS | FTW_MOUNT);
}

int host_remove_tree_checked(const char *dir)
{
    host_remove_tree(dir);
    size_t loops = host_loops_under(dir);
    struct stat sb;
    bool gone = stat(dir, &sb) != 0;
    if (loops == 0 && gone)
        return 0;
    fprintf(stderr, "teardown: %zu loop devices left, dir %s\n", loops, gone ? "removed" : "left");
    return -1;
}
