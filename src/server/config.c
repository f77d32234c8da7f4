/* moatd configuration: one table of keys drives defaults, file parsing,
 * environment overrides, flags and --help. What the values must be together, and the paths
 * and the node id derived from them, are config_finish.c's. */
#include "config_internal.h"

#include "grpc/tls.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

typedef enum key_type { K_STR, K_U32, K_U64, K_BOOL, K_LEVEL } key_type;

typedef struct key_def {
    const char *name;
    key_type type;
    size_t offset;
    const char *def;
    uint64_t min, max; /* K_U32 and K_U64 range */
    const char *doc;
} key_def;

#define OFF(f) offsetof(moat_server_config, f)

static const key_def keys[] = {
    {"listen", K_STR, OFF(listen), "127.0.0.1:7070", 0, 0,
     "TCP listener host:port; empty disables"},
    {"unix_socket", K_STR, OFF(unix_socket), "", 0, 0, "Unix socket listener path; empty disables"},
    {"grpc_listen", K_STR, OFF(grpc_listen), "127.0.0.1:7072", 0, 0,
     "gRPC listener host:port (HTTP/2, the same services and token); empty disables"},
    {"grpc_tls_cert", K_STR, OFF(grpc_tls_cert), "", 0, 0,
     "certificate chain (PEM) of the gRPC listener's TLS; empty, with grpc_tls_key: cleartext "
     "(h2c)"},
    {"grpc_tls_key", K_STR, OFF(grpc_tls_key), "", 0, 0, "its private key (PEM, unencrypted)"},
    {"token", K_STR, OFF(token), "", 0, 0,
     "shared secret every client must present; required unless listening on loopback only"},
    {"metrics_listen", K_STR, OFF(metrics_listen), "127.0.0.1:7071", 0, 0,
     "loopback host:port serving Prometheus /metrics; empty disables"},
    {"log_level", K_LEVEL, OFF(log_level), "info", 0, 0, "debug, info, warn, error or off"},
    {"max_connections", K_U32, OFF(max_connections), "1024", 1, 1000000,
     "authenticated connections; one more is refused at its hello with RESOURCE_EXHAUSTED"},
    {"max_pending_hellos", K_U32, OFF(max_pending_hellos), "64", 1, 65536,
     "connections not yet past their hello; one more closes the oldest of them"},
    {"max_streams_per_connection", K_U32, OFF(max_streams_per_connection), "100", 1, 100000,
     "concurrent calls per connection; more end RESOURCE_EXHAUSTED"},
    {"max_frame_size", K_U32, OFF(max_frame_size), "1048576", 4096, 16777216,
     "largest frame after the hello, in bytes"},
    {"initial_window", K_U32, OFF(initial_window), "1048576", 65536, 0x7fffffff,
     "per-stream flow-control window, in bytes"},
    {"idle_timeout_seconds", K_U32, OFF(idle_timeout_seconds), "300", 0, 86400,
     "close a connection silent this long with no open call; 0 = never"},
    {"hello_timeout_seconds", K_U32, OFF(hello_timeout_seconds), "5", 1, 3600,
     "time a new connection has to complete its hello"},
    {"drain_grace_seconds", K_U32, OFF(drain_grace_seconds), "30", 0, 86400,
     "after SIGTERM, running calls get this long before they are cancelled"},
    {"max_pending_bytes", K_U32, OFF(max_pending_bytes), "8388608", 65536, 0x7fffffff,
     "unsent bytes per connection above which moatd stops reading from it"},
    {"memory_budget_bytes", K_U64, OFF(memory_budget_bytes), "268435456", 4194304, 1099511627776ull,
     "output bytes moatd holds over all calls (replay rings, stream and connection queues); "
     "past it retained replay is dropped and new streams are refused"},
    {"max_calls_per_session", K_U32, OFF(max_calls_per_session), "64", 1, 4096,
     "concurrent Exec and Files calls to one session; more end RESOURCE_EXHAUSTED"},
    {"max_sessions", K_U32, OFF(max_sessions), "256", 1, 100000,
     "sessions this moatd keeps at once; more creates end RESOURCE_EXHAUSTED"},
    {"max_sessions_per_chat", K_U32, OFF(max_sessions_per_chat), "4", 1, 100000,
     "sessions of one chat at once (force_new creates); more end RESOURCE_EXHAUSTED"},
    {"docker_host", K_STR, OFF(docker_host), "/var/run/docker.sock", 0, 0,
     "Docker engine: socket path, unix:///path or tcp://host:port"},
    {"docker_tls_cert", K_STR, OFF(docker_tls_cert), "", 0, 0,
     "client certificate (PEM) for a tcp:// engine with TLS; empty = plain HTTP"},
    {"docker_tls_key", K_STR, OFF(docker_tls_key), "", 0, 0, "its private key (PEM)"},
    {"docker_tls_ca", K_STR, OFF(docker_tls_ca), "", 0, 0,
     "CA bundle (PEM) that verifies the engine; empty = the system's"},
    {"image", K_STR, OFF(image), "moat-sandbox-debian:latest", 0, 0,
     "default sandbox image (scripts/build-sandbox-image.sh makes it)"},
    {"allowed_images", K_STR, OFF(allowed_images), "moat-sandbox-debian:latest,moat-sandbox:latest",
     0, 0, "comma-separated images a CreateSession may ask for (image is always allowed)"},
    {"ttl_seconds", K_U32, OFF(ttl_seconds), "300", 1, 31536000, "default session lifetime"},
    {"max_ttl_seconds", K_U32, OFF(max_ttl_seconds), "86400", 1, 31536000,
     "longest ttl_seconds a create or renewal may ask for; longer is INVALID_ARGUMENT"},
    {"cleanup_interval_seconds", K_U32, OFF(cleanup_interval_seconds), "60", 1, 86400,
     "TTL reaper period"},
    {"state_dir", K_STR, OFF(state_dir), "/var/lib/moat", 0, 0,
     "state directory: state.db, sessions/, chats/, dependencies/, lambda-tools/"},
    {"chats_root", K_STR, OFF(chats_root), "", 0, 0, "chat workspaces; default <state_dir>/chats"},
    {"dependencies_host_path", K_STR, OFF(dependencies_host_path), "", 0, 0,
     "read-only dependencies dir; default <state_dir>/dependencies"},
    {"lambda_tools_host_path", K_STR, OFF(lambda_tools_host_path), "", 0, 0,
     "read-only lambda tools dir; default <state_dir>/lambda-tools"},
    {"chat_mount_path", K_STR, OFF(chat_mount_path), "/workspace/chat", 0, 0,
     "where the chat workspace appears in the sandbox"},
    {"dependencies_mount_path", K_STR, OFF(dependencies_mount_path), "/workspace/dependencies", 0,
     0, "where dependencies appear in the sandbox"},
    {"lambda_tools_mount_path", K_STR, OFF(lambda_tools_mount_path), "/workspace/lambda-tools", 0,
     0, "where lambda tools appear in the sandbox"},
    {"execd_bundle", K_STR, OFF(execd_bundle), "", 0, 0,
     "moat-execd bundle dir; default <bindir>/execd-bundle or the nearest parent's"},
    {"store_path", K_STR, OFF(store_path), "", 0, 0, "SQLite store; default <state_dir>/state.db"},
    {"container_name_prefix", K_STR, OFF(container_name_prefix), "moat-", 0, 0,
     "container name = prefix + session id"},
    {"instance", K_STR, OFF(instance), "", 0, 0,
     "scope on a shared engine: label moat.instance=<instance>; empty = containers without one"},
    {"runtime", K_STR, OFF(runtime), "", 0, 0,
     "OCI runtime of the sandboxes, as registered with dockerd (runsc: gVisor); empty = the "
     "engine's default (runc)"},
    {"terminal_idle_timeout_seconds", K_U32, OFF(terminal_idle_timeout_seconds), "1800", 1, 604800,
     "a terminal session (Exec/Interactive) with no client attached is closed after this"},
    {"readiness_timeout_ms", K_U32, OFF(readiness_timeout_ms), "10000", 100, 600000,
     "CreateSession waits this long for execd to answer"},
    {"docker_timeout_ms", K_U32, OFF(docker_timeout_ms), "30000", 100, 600000,
     "timeout of one Docker API call"},
    {"health_probe_interval_ms", K_U32, OFF(health_probe_interval_ms), "1000", 100, 60000,
     "period of the background Docker probe that Health and engine calls answer from"},
    {"threadpool_size", K_U32, OFF(threadpool_size), "16", 1, 128,
     "worker threads for Docker calls (UV_THREADPOOL_SIZE)"},
    {"sandbox_user", K_STR, OFF(sandbox_user), "1000:1000", 0, 0,
     "UID:GID that sandbox commands and the file API run as; \"root\" only when you must"},
    {"read_only_rootfs", K_BOOL, OFF(read_only_rootfs), "true", 0, 0,
     "sandbox root file system read-only, with tmpfs /tmp, /var/tmp and /root"},
    {"tmpfs_size_bytes", K_U64, OFF(tmpfs_size_bytes), "67108864", 1048576, 17179869184ull,
     "size of each of those tmpfs mounts"},
    {"workspace_quota", K_BOOL, OFF(workspace_quota), "true", 0, 0,
     "chat workspaces are loop-mounted ext4 images (nosuid,nodev) of a bounded size; false: "
     "plain, unbounded directories"},
    {"workspace_images_dir", K_STR, OFF(workspace_images_dir), "", 0, 0,
     "where the workspace images live; default <chats_root>/.images"},
    {"workspace_size_bytes", K_U64, OFF(workspace_size_bytes), "1073741824", 16777216,
     17592186044416ull, "size of a new chat's workspace image"},
    {"workspace_inodes", K_U32, OFF(workspace_inodes), "65536", 64, 4294967295u,
     "files and directories a new chat's workspace can hold (about; at most one per KiB)"},
    {"pool_size", K_U32, OFF(pool_size), "0", 0, 1024,
     "warm sandboxes of the default image kept ready for new chats' sessions (counted in "
     "max_sessions); 0: none"},
    {"pool_fill_concurrency", K_U32, OFF(pool_fill_concurrency), "2", 1, 16,
     "pool sandboxes started at once while the pool refills"},
    {"cluster_etcd_endpoints", K_STR, OFF(cluster_etcd_endpoints), "", 0, 0,
     "comma-separated http(s)://host:port of the etcd members; empty: no cluster"},
    {"cluster_node_id", K_STR, OFF(cluster_node_id), "", 0, 0,
     "this node's id in the cluster ([A-Za-z0-9_.-]); empty: the host name"},
    {"cluster_advertise", K_STR, OFF(cluster_advertise), "", 0, 0,
     "host:port clients and other nodes dial for this node; required in a cluster"},
    {"cluster_lease_ttl_seconds", K_U32, OFF(cluster_lease_ttl_seconds), "5", 2, 60,
     "the node's etcd lease; a node gone this long is out of the cluster"},
    {"cluster_janitor_grace_seconds", K_U32, OFF(cluster_janitor_grace_seconds), "3600", 1, 604800,
     "how long a node is gone before the janitor removes its session records"},
    {"cluster_sweep_interval_seconds", K_U32, OFF(cluster_sweep_interval_seconds), "30", 1, 3600,
     "how often the node ends its records that say running for sessions it no longer has"},
    {"cluster_route", K_STR, OFF(cluster_route), "redirect", 0, 0,
     "a call for another node's session: redirect (session_moved) or proxy (relayed there)"},
    {"cluster_etcd_tls_ca", K_STR, OFF(cluster_etcd_tls_ca), "", 0, 0,
     "CA bundle (PEM) that verifies the etcd members (https:// endpoints); empty: the system's"},
    {"cluster_etcd_tls_cert", K_STR, OFF(cluster_etcd_tls_cert), "", 0, 0,
     "client certificate (PEM) for etcd's --client-cert-auth; empty, with cluster_etcd_tls_key: "
     "none"},
    {"cluster_etcd_tls_key", K_STR, OFF(cluster_etcd_tls_key), "", 0, 0,
     "its private key (PEM, unencrypted)"},
};

#define NKEYS (sizeof(keys) / sizeof(keys[0]))

void moat__config_errf(char *err, size_t errlen, const char *fmt, ...)
{
    if (err == NULL || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static const key_def *find_key(const char *name, size_t len)
{
    char norm[64];
    if (len >= sizeof(norm))
        return NULL;
    for (size_t i = 0; i < len; i++)
        norm[i] = name[i] == '-' ? '_' : (char)tolower((unsigned char)name[i]);
    norm[len] = '\0';
    for (size_t i = 0; i < NKEYS; i++) {
        if (strcmp(keys[i].name, norm) == 0)
            return &keys[i];
    }
    return NULL;
}

static moat_err apply(moat_server_config *cfg, const key_def *k, const char *value, char *err,
                      size_t errlen)
{
    char *base = (char *)cfg;
    switch (k->type) {
    case K_STR: {
        char *copy = strdup(value);
        if (copy == NULL)
            return MOAT_E_NOMEM;
        char **slot = (char **)(base + k->offset);
        free(*slot);
        *slot = copy;
        return MOAT_OK;
    }
    case K_U32:
    case K_U64: {
        if (value[0] == '\0' || value[0] == '-' || value[0] == '+') {
            moat__config_errf(err, errlen, "%s: expected a number, got \"%s\"", k->name, value);
            return MOAT_E_INVAL;
        }
        errno = 0;
        char *end = NULL;
        unsigned long long v = strtoull(value, &end, 10);
        if (errno != 0 || end == value || *end != '\0' || v < k->min || v > k->max) {
            moat__config_errf(err, errlen, "%s: expected a number from %llu to %llu, got \"%s\"",
                              k->name, (unsigned long long)k->min, (unsigned long long)k->max,
                              value);
            return MOAT_E_INVAL;
        }
        if (k->type == K_U32)
            *(uint32_t *)(base + k->offset) = (uint32_t)v;
        else
            *(uint64_t *)(base + k->offset) = (uint64_t)v;
        return MOAT_OK;
    }
    case K_BOOL: {
        static const char *const yes[] = {"true", "yes", "on", "1"};
        static const char *const no[] = {"false", "no", "off", "0"};
        for (size_t i = 0; i < 4; i++) {
            if (strcasecmp(value, yes[i]) == 0 || strcasecmp(value, no[i]) == 0) {
                *(bool *)(base + k->offset) = strcasecmp(value, yes[i]) == 0;
                return MOAT_OK;
            }
        }
        moat__config_errf(err, errlen, "%s: expected true or false, got \"%s\"", k->name, value);
        return MOAT_E_INVAL;
    }
    case K_LEVEL: {
        moat_log_level lvl;
        if (moat_log_level_parse(value, &lvl) != MOAT_OK) {
            moat__config_errf(err, errlen,
                              "%s: expected debug, info, warn, error or off, got \"%s\"", k->name,
                              value);
            return MOAT_E_INVAL;
        }
        *(moat_log_level *)(base + k->offset) = lvl;
        return MOAT_OK;
    }
    }
    return MOAT_E_INVAL;
}

void moat_server_config_defaults(moat_server_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    for (size_t i = 0; i < NKEYS; i++)
        apply(cfg, &keys[i], keys[i].def, NULL, 0);
    cfg->config_file = strdup("");
}

void moat_server_config_free(moat_server_config *cfg)
{
    char *base = (char *)cfg;
    for (size_t i = 0; i < NKEYS; i++) {
        if (keys[i].type == K_STR) {
            char **slot = (char **)(base + keys[i].offset);
            free(*slot);
            *slot = NULL;
        }
    }
    free(cfg->config_file);
    cfg->config_file = NULL;
    moat_grpc_tls_creds_free(cfg->grpc_tls);
    cfg->grpc_tls = NULL;
}

moat_err moat_server_config_set(moat_server_config *cfg, const char *key, const char *value,
                                char *err, size_t errlen)
{
    const key_def *k = find_key(key, strlen(key));
    if (k == NULL) {
        moat__config_errf(err, errlen, "unknown key \"%s\"", key);
        return MOAT_E_NOT_FOUND;
    }
    return apply(cfg, k, value, err, errlen);
}

/* Config text is small; a line longer than this is a mistake, not a value. */
#define LINE_MAX_LEN 4096

moat_err moat_server_config_parse(moat_server_config *cfg, const char *text, char *err,
                                  size_t errlen)
{
    size_t lineno = 0;
    const char *p = text;
    while (*p != '\0') {
        lineno++;
        const char *eol = strchr(p, '\n');
        size_t len = eol != NULL ? (size_t)(eol - p) : strlen(p);
        if (len >= LINE_MAX_LEN) {
            moat__config_errf(err, errlen, "line %zu: longer than %d bytes", lineno, LINE_MAX_LEN);
            return MOAT_E_INVAL;
        }
        char line[LINE_MAX_LEN];
        memcpy(line, p, len);
        line[len] = '\0';
        p = eol != NULL ? eol + 1 : p + len;

        char *s = line;
        while (isspace((unsigned char)*s))
            s++;
        if (*s == '\0' || *s == '#')
            continue;
        char *eq = strchr(s, '=');
        if (eq == NULL) {
            moat__config_errf(err, errlen, "line %zu: expected key = value", lineno);
            return MOAT_E_INVAL;
        }
        char *kend = eq;
        while (kend > s && isspace((unsigned char)kend[-1]))
            kend--;
        if (kend == s) {
            moat__config_errf(err, errlen, "line %zu: missing key before '='", lineno);
            return MOAT_E_INVAL;
        }
        char *v = eq + 1;
        while (isspace((unsigned char)*v))
            v++;
        char *vend = v + strlen(v);
        if (*v == '"') {
            char *close = strchr(v + 1, '"');
            if (close == NULL) {
                moat__config_errf(err, errlen, "line %zu: unterminated quoted value", lineno);
                return MOAT_E_INVAL;
            }
            char *rest = close + 1;
            while (isspace((unsigned char)*rest))
                rest++;
            if (*rest != '\0' && *rest != '#') {
                moat__config_errf(err, errlen, "line %zu: text after the quoted value", lineno);
                return MOAT_E_INVAL;
            }
            v++;
            vend = close;
        } else {
            char *hash = strchr(v, '#');
            if (hash != NULL)
                vend = hash;
            while (vend > v && isspace((unsigned char)vend[-1]))
                vend--;
        }
        *vend = '\0';
        const key_def *k = find_key(s, (size_t)(kend - s));
        if (k == NULL) {
            *kend = '\0';
            moat__config_errf(err, errlen, "line %zu: unknown key \"%s\"", lineno, s);
            return MOAT_E_INVAL;
        }
        char why[256];
        moat_err e = apply(cfg, k, v, why, sizeof(why));
        if (e != MOAT_OK) {
            moat__config_errf(err, errlen, "line %zu: %s", lineno, why);
            return e;
        }
    }
    return MOAT_OK;
}

/* Config files are small; refuse anything that is not. */
#define CONFIG_FILE_MAX (1u << 20)

moat_err moat_server_config_load_file(moat_server_config *cfg, const char *path, char *err,
                                      size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        moat__config_errf(err, errlen, "%s: %s", path, strerror(errno));
        return MOAT_E_IO;
    }
    char *text = malloc(CONFIG_FILE_MAX + 1);
    if (text == NULL) {
        fclose(f);
        return MOAT_E_NOMEM;
    }
    size_t n = fread(text, 1, CONFIG_FILE_MAX + 1, f);
    bool bad = ferror(f) != 0;
    fclose(f);
    if (bad || n > CONFIG_FILE_MAX) {
        moat__config_errf(err, errlen, "%s: %s", path, bad ? "read error" : "larger than 1 MiB");
        free(text);
        return bad ? MOAT_E_IO : MOAT_E_TOO_BIG;
    }
    text[n] = '\0';
    if (strlen(text) != n) {
        moat__config_errf(err, errlen, "%s: contains a NUL byte", path);
        free(text);
        return MOAT_E_INVAL;
    }
    char why[512];
    moat_err e = moat_server_config_parse(cfg, text, why, sizeof(why));
    free(text);
    if (e != MOAT_OK) {
        moat__config_errf(err, errlen, "%s: %s", path, why);
        return e;
    }
    free(cfg->config_file);
    cfg->config_file = strdup(path);
    return cfg->config_file != NULL ? MOAT_OK : MOAT_E_NOMEM;
}

moat_err moat_server_config_apply_env(moat_server_config *cfg, char *err, size_t errlen)
{
    for (size_t i = 0; i < NKEYS; i++) {
        char name[80] = "MOAT_";
        size_t n = strlen(keys[i].name);
        for (size_t j = 0; j < n; j++)
            name[5 + j] = (char)toupper((unsigned char)keys[i].name[j]);
        name[5 + n] = '\0';
        const char *v = getenv(name);
        if (v == NULL)
            continue;
        char why[256];
        moat_err e = apply(cfg, &keys[i], v, why, sizeof(why));
        if (e != MOAT_OK) {
            moat__config_errf(err, errlen, "%s: %s", name, why);
            return e;
        }
    }
    return MOAT_OK;
}

void moat_server_config_print_keys(void *file)
{
    FILE *f = file;
    for (size_t i = 0; i < NKEYS; i++) {
        char env[80] = "MOAT_";
        size_t n = strlen(keys[i].name);
        for (size_t j = 0; j < n; j++)
            env[5 + j] = (char)toupper((unsigned char)keys[i].name[j]);
        env[5 + n] = '\0';
        fprintf(f, "  --%-28s %s\n  %-30s env %s, default \"%s\"\n", keys[i].name, keys[i].doc, "",
                env, keys[i].def);
    }
}
