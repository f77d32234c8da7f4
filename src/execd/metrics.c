/* /metrics and /metrics/watch from the container's own cgroup (v1 or v2), not the host. */
#include "internal.h"

#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef struct sample {
    double cpu_count;
    uint64_t cpu_ns;
    double mem_total, mem_used; /* bytes */
} sample;

static bool read_u64(const char *path, uint64_t *v)
{
    FILE *f = fopen(path, "re");
    if (f == NULL)
        return false;
    char buf[64];
    bool ok = fgets(buf, sizeof(buf), f) != NULL;
    fclose(f);
    if (!ok || strncmp(buf, "max", 3) == 0)
        return false;
    char *end;
    unsigned long long x = strtoull(buf, &end, 10);
    if (end == buf)
        return false;
    *v = x;
    return true;
}

/* Value of `key` in a "key value" file such as memory.stat or cpu.stat. */
static bool read_kv(const char *path, const char *key, uint64_t *v)
{
    FILE *f = fopen(path, "re");
    if (f == NULL)
        return false;
    char line[256];
    size_t klen = strlen(key);
    bool ok = false;
    while (!ok && fgets(line, sizeof(line), f) != NULL) {
        if (strncmp(line, key, klen) == 0 && line[klen] == ' ') {
            *v = strtoull(line + klen + 1, NULL, 10);
            ok = true;
        }
    }
    fclose(f);
    return ok;
}

/* The cgroup directory of this process for a v1 controller (or "" for v2), checked to
 * exist; falls back to the mount root, which inside a container is the container's. */
static void cgroup_dir(const char *mount, const char *controller, const char *probe, char *out,
                       size_t outlen)
{
    FILE *f = fopen("/proc/self/cgroup", "re");
    char line[1024];
    while (f != NULL && fgets(line, sizeof(line), f) != NULL) {
        line[strcspn(line, "\n")] = '\0';
        char *c1 = strchr(line, ':');
        char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (c2 == NULL)
            continue;
        *c2 = '\0';
        const char *ctrls = c1 + 1;
        bool match = controller[0] == '\0' ? ctrls[0] == '\0' : strstr(ctrls, controller) != NULL;
        if (!match)
            continue;
        char probe_path[2048];
        snprintf(probe_path, sizeof(probe_path), "%s%s/%s", mount, c2 + 1, probe);
        if (access(probe_path, R_OK) == 0) {
            snprintf(out, outlen, "%s%s", mount, strcmp(c2 + 1, "/") ? c2 + 1 : "");
            fclose(f);
            return;
        }
    }
    if (f != NULL)
        fclose(f);
    snprintf(out, outlen, "%s", mount);
}

static double online_cpus(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0)
        return CPU_COUNT(&set);
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (double)n : 1;
}

static uint64_t host_mem_total(void)
{
    uint64_t kb = 0;
    FILE *f = fopen("/proc/meminfo", "re");
    char line[256];
    while (f != NULL && fgets(line, sizeof(line), f) != NULL)
        if (sscanf(line, "MemTotal: %lu kB", &kb) == 1)
            break;
    if (f != NULL)
        fclose(f);
    return kb * 1024;
}

static void take_sample(sample *s)
{
    char dir[1024], p[1200];
    uint64_t v = 0, inactive = 0, quota = 0, period = 0;
    double cpus = online_cpus();
    uint64_t total = host_mem_total();
    memset(s, 0, sizeof(*s));
    if (access("/sys/fs/cgroup/memory/memory.usage_in_bytes", R_OK) == 0 ||
        access("/sys/fs/cgroup/cpuacct", R_OK) == 0) {
        /* cgroup v1 */
        cgroup_dir("/sys/fs/cgroup/memory", "memory", "memory.usage_in_bytes", dir, sizeof(dir));
        snprintf(p, sizeof(p), "%s/memory.usage_in_bytes", dir);
        if (read_u64(p, &v)) {
            snprintf(p, sizeof(p), "%s/memory.stat", dir);
            if (read_kv(p, "total_inactive_file", &inactive) && inactive < v)
                v -= inactive;
            s->mem_used = (double)v;
        }
        snprintf(p, sizeof(p), "%s/memory.limit_in_bytes", dir);
        if (read_u64(p, &v) && v < total)
            total = v;
        const char *cpu_mount = access("/sys/fs/cgroup/cpuacct/cpuacct.usage", R_OK) == 0
                                    ? "/sys/fs/cgroup/cpuacct"
                                    : "/sys/fs/cgroup/cpu,cpuacct";
        cgroup_dir(cpu_mount, "cpuacct", "cpuacct.usage", dir, sizeof(dir));
        snprintf(p, sizeof(p), "%s/cpuacct.usage", dir);
        if (read_u64(p, &v))
            s->cpu_ns = v;
        const char *q_mount = access("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", R_OK) == 0
                                  ? "/sys/fs/cgroup/cpu"
                                  : "/sys/fs/cgroup/cpu,cpuacct";
        cgroup_dir(q_mount, "cpu", "cpu.cfs_quota_us", dir, sizeof(dir));
        snprintf(p, sizeof(p), "%s/cpu.cfs_quota_us", dir);
        char pp[1200];
        snprintf(pp, sizeof(pp), "%s/cpu.cfs_period_us", dir);
        FILE *f = fopen(p, "re");
        long long q = -1;
        if (f != NULL) {
            if (fscanf(f, "%lld", &q) != 1)
                q = -1;
            fclose(f);
        }
        if (q > 0 && read_u64(pp, &period) && period > 0)
            quota = (uint64_t)q;
    } else {
        /* cgroup v2 */
        cgroup_dir("/sys/fs/cgroup", "", "memory.current", dir, sizeof(dir));
        snprintf(p, sizeof(p), "%s/memory.current", dir);
        if (read_u64(p, &v)) {
            snprintf(p, sizeof(p), "%s/memory.stat", dir);
            if (read_kv(p, "inactive_file", &inactive) && inactive < v)
                v -= inactive;
            s->mem_used = (double)v;
        }
        snprintf(p, sizeof(p), "%s/memory.max", dir);
        if (read_u64(p, &v) && v < total)
            total = v;
        snprintf(p, sizeof(p), "%s/cpu.stat", dir);
        if (read_kv(p, "usage_usec", &v))
            s->cpu_ns = v * 1000;
        snprintf(p, sizeof(p), "%s/cpu.max", dir);
        FILE *f = fopen(p, "re");
        char qs[32];
        unsigned long long per = 0;
        if (f != NULL) {
            if (fscanf(f, "%31s %llu", qs, &per) == 2 && strcmp(qs, "max") != 0 && per > 0) {
                quota = strtoull(qs, NULL, 10);
                period = per;
            }
            fclose(f);
        }
    }
    if (quota > 0 && period > 0) {
        double q = (double)quota / (double)period;
        if (q < cpus)
            cpus = q;
    }
    s->cpu_count = cpus;
    s->mem_total = (double)total;
}

/* One sample as JSON; NULL when out of memory. */
static cJSON *measure(void)
{
    sample a, b;
    take_sample(&a);
    uint64_t t0 = moat_time_mono_ns();
    struct timespec ts = {1, 0};
    nanosleep(&ts, NULL);
    take_sample(&b);
    double wall = (double)(moat_time_mono_ns() - t0);
    double pct = 0;
    if (b.cpu_ns >= a.cpu_ns && wall > 0 && b.cpu_count > 0)
        pct = (double)(b.cpu_ns - a.cpu_ns) / wall / b.cpu_count * 100.0;
    cJSON *o = cJSON_CreateObject();
    if (o == NULL || cJSON_AddNumberToObject(o, "cpu_count", b.cpu_count) == NULL ||
        cJSON_AddNumberToObject(o, "cpu_used_pct", pct) == NULL ||
        cJSON_AddNumberToObject(o, "mem_total_mib", b.mem_total / 1048576.0) == NULL ||
        cJSON_AddNumberToObject(o, "mem_used_mib", b.mem_used / 1048576.0) == NULL ||
        cJSON_AddNumberToObject(o, "timestamp", (double)moat_time_now_ms()) == NULL) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

static ssize_t watch_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)cls;
    (void)pos;
    if (atomic_load(&xd.shutting_down))
        return MHD_CONTENT_READER_END_OF_STREAM;
    cJSON *m = measure();
    char *text = m ? cJSON_PrintUnformatted(m) : NULL;
    cJSON_Delete(m);
    static const char unavailable[] = "{\"error\":\"metrics unavailable\"}";
    const char *line = text != NULL ? text : unavailable;
    size_t n = strlen(line);
    ssize_t ret = MHD_CONTENT_READER_END_WITH_ERROR;
    if (n + 1 <= max) {
        memcpy(buf, line, n);
        buf[n] = '\n';
        ret = (ssize_t)(n + 1);
    }
    cJSON_free(text);
    return ret;
}

enum MHD_Result xd_metrics(struct MHD_Connection *conn, bool watch)
{
    if (!watch)
        return xd_respond_json(conn, 200, measure());
    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, watch_read, NULL, NULL);
    if (resp == NULL)
        return MHD_NO;
    MHD_add_response_header(resp, "Content-Type", "text/event-stream");
    MHD_add_response_header(resp, "Cache-Control", "no-cache");
    MHD_add_response_header(resp, "X-Accel-Buffering", "no");
    enum MHD_Result ret = MHD_queue_response(conn, 200, resp);
    MHD_destroy_response(resp);
    return ret;
}
