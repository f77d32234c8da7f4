/* Docker's userns-remap (docs/SECURITY.md, "Isolation levels"). Such an engine runs every
 * container in a user namespace whose root is an unprivileged host id: the first id of the remap
 * user's range in /etc/subuid and /etc/subgid. Bind-mount sources keep their host owners, so the
 * directories moatd hands a sandbox (its workspace, its execd directory) must belong to the host
 * ids the sandbox's ids map to, or execd cannot make its socket and commands cannot write. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

/* Reads a decimal id of at most 10 digits that fits 32 bits; the end in *end. */
static bool parse_id(const char *s, const char **end, uint64_t *out)
{
    uint64_t v = 0;
    size_t n = 0;
    while (s[n] >= '0' && s[n] <= '9' && n < 11) {
        v = v * 10 + (uint64_t)(s[n] - '0');
        n++;
    }
    if (n == 0 || n > 10 || v > UINT32_MAX)
        return false;
    *end = s + n;
    *out = v;
    return true;
}

bool moat__userns_root_dir(const char *root_dir, uint32_t *uid, uint32_t *gid)
{
    const char *slash = root_dir != NULL ? strrchr(root_dir, '/') : NULL;
    const char *p = slash != NULL ? slash + 1 : root_dir;
    uint64_t u, g;
    if (p == NULL || !parse_id(p, &p, &u) || *p != '.' || !parse_id(p + 1, &p, &g) || *p != '\0')
        return false;
    *uid = (uint32_t)u;
    *gid = (uint32_t)g;
    return true;
}

bool moat__subid_count(const char *text, uint32_t start, uint64_t *count)
{
    for (const char *line = text; line != NULL && *line != '\0';) {
        const char *next = strchr(line, '\n');
        /* name:start:count; the name is whatever precedes the last two fields. */
        const char *eol = next != NULL ? next : line + strlen(line);
        const char *colon2 = NULL, *colon1 = NULL;
        for (const char *c = eol; c > line; c--) {
            if (c[-1] != ':')
                continue;
            if (colon2 == NULL) {
                colon2 = c - 1;
            } else {
                colon1 = c - 1;
                break;
            }
        }
        uint64_t s, n;
        const char *end;
        if (colon1 != NULL && colon1 > line && parse_id(colon1 + 1, &end, &s) && end == colon2 &&
            parse_id(colon2 + 1, &end, &n) && (end == eol || (*end == '\r' && end + 1 == eol)) &&
            s == start && n > 0) {
            *count = n;
            return true;
        }
        line = next != NULL ? next + 1 : NULL;
    }
    return false;
}

/* The length of the range that starts at base in path (/etc/subuid or /etc/subgid), or 0 with
 * why filled. */
static uint64_t range_at(const char *path, uint32_t base, char *why, size_t cap)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(why, cap, "cannot read %s: %s", path, strerror(errno));
        return 0;
    }
    /* Far more than any real file; the whole of it must be read to trust the answer. */
    size_t cap_text = 1 << 20, len = 0;
    char *text = malloc(cap_text + 1);
    ssize_t n = 1;
    while (text != NULL && len < cap_text &&
           ((n = read(fd, text + len, cap_text - len)) > 0 || (n < 0 && errno == EINTR)))
        if (n > 0)
            len += (size_t)n;
    int err = n < 0 ? errno : 0;
    close(fd);
    uint64_t count = 0;
    if (text == NULL)
        snprintf(why, cap, "out of memory reading %s", path);
    else if (err != 0)
        snprintf(why, cap, "cannot read %s: %s", path, strerror(err));
    else if (len == cap_text)
        snprintf(why, cap, "%s is larger than 1 MiB", path);
    else {
        text[len] = '\0';
        if (!moat__subid_count(text, base, &count))
            snprintf(why, cap, "%s has no range starting at %" PRIu32, path, base);
    }
    free(text);
    return count;
}

moat_code moat__userns_map(moat_runtime *rt, moat__idmap *out, moat_status *st)
{
    pthread_mutex_lock(&rt->version_mu);
    bool known = rt->idmap_known;
    *out = rt->idmap;
    pthread_mutex_unlock(&rt->version_mu);
    if (known)
        return MOAT_CODE_OK;

    moat_docker_response resp;
    if (moat_runtime_docker_call(rt, "info", "GET", "/info", NULL, &resp, st) != MOAT_CODE_OK) {
        moat_runtime_docker_response_free(&resp);
        return st->code;
    }
    moat__idmap map = {0};
    const cJSON *opts = moat__json_get(resp.json, "SecurityOptions");
    const cJSON *opt;
    if (cJSON_IsArray(opts)) {
        cJSON_ArrayForEach(opt, opts)
        {
            if (cJSON_IsString(opt) && strcmp(opt->valuestring, "name=userns") == 0)
                map.remapped = true;
        }
    }
    /* The engine keeps a remapped daemon's data in <data-root>/<uid>.<gid>, named after the
     * host ids of container root: the engine's own word for the base. */
    const char *root_dir = moat__json_str(resp.json, "DockerRootDir");
    char detail[MOAT_STATUS_MESSAGE_MAX - 64] = "";
    if (map.remapped && !moat__userns_root_dir(root_dir, &map.uid_base, &map.gid_base))
        snprintf(detail, sizeof(detail),
                 "its DockerRootDir '%.200s' does not end in <uid>.<gid> of the remapped root",
                 root_dir != NULL ? root_dir : "(none)");
    moat_runtime_docker_response_free(&resp);
    if (map.remapped && detail[0] == '\0') {
        char why[300] = "";
        uint64_t uids = range_at(MOAT__SUBUID, map.uid_base, why, sizeof(why));
        uint64_t gids = uids ? range_at(MOAT__SUBGID, map.gid_base, why, sizeof(why)) : 0;
        uint32_t uid = rt->cfg.sandbox_user_root ? 0 : rt->cfg.sandbox_uid;
        uint32_t gid = rt->cfg.sandbox_user_root ? 0 : rt->cfg.sandbox_gid;
        if (uids == 0 || gids == 0)
            snprintf(detail, sizeof(detail), "%s", why);
        else if (uid >= uids || gid >= gids)
            snprintf(detail, sizeof(detail),
                     "sandbox_user %" PRIu32 ":%" PRIu32 " is outside the first subordinate "
                     "ranges (%" PRIu64 " uids at %" PRIu32 ", %" PRIu64 " gids at %" PRIu32 ")",
                     uid, gid, uids, map.uid_base, gids, map.gid_base);
    }
    if (detail[0] != '\0') {
        moat_status_set(st, MOAT_CODE_FAILED_PRECONDITION, "userns_unmapped",
                        "the engine runs with userns-remap, but %s", detail);
        moat_log(MOAT_LOG_ERROR, "userns_unmapped", "msg=\"%s\"", st->message);
        return st->code;
    }
    pthread_mutex_lock(&rt->version_mu);
    if (!rt->idmap_known) {
        rt->idmap = map;
        rt->idmap_known = true;
        if (map.remapped)
            moat_log(MOAT_LOG_INFO, "engine_userns_remap",
                     "uid_base=%" PRIu32 " gid_base=%" PRIu32
                     " msg=\"sandbox directories are given to the remapped ids\"",
                     map.uid_base, map.gid_base);
    }
    pthread_mutex_unlock(&rt->version_mu);
    *out = map;
    return MOAT_CODE_OK;
}
