/* moatd configuration once every source has been read (config.c reads them):
 * moat_server_config_finish derives the paths left empty and finds the execd bundle, then checks
 * what no key's own range can: listeners and their token, the gRPC and etcd TLS files, images,
 * pool and TTL limits, the sandbox user and the cluster settings. With it, the value helpers it
 * shares with the server: host:port, loopback, image lists, UID:GID, and the token comparison. */
#include "config_internal.h"

#include "cluster/membership.h"
#include "grpc/tls.h"

#include <gnutls/gnutls.h>

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

moat_err moat_server_split_hostport(const char *hostport, char *host, size_t hostlen,
                                    uint16_t *port)
{
    const char *colon;
    const char *hstart = hostport;
    size_t hlen;
    if (hostport[0] == '[') {
        const char *close = strchr(hostport, ']');
        if (close == NULL || close[1] != ':')
            return MOAT_E_INVAL;
        hstart = hostport + 1;
        hlen = (size_t)(close - hstart);
        colon = close + 1;
    } else {
        colon = strrchr(hostport, ':');
        if (colon == NULL || strchr(hostport, ':') != colon)
            return MOAT_E_INVAL;
        hlen = (size_t)(colon - hostport);
    }
    if (hlen == 0 || hlen >= hostlen)
        return MOAT_E_INVAL;
    const char *ps = colon + 1;
    if (*ps == '\0' || strlen(ps) > 5)
        return MOAT_E_INVAL;
    unsigned long p = 0;
    for (const char *c = ps; *c; c++) {
        if (!isdigit((unsigned char)*c))
            return MOAT_E_INVAL;
        p = p * 10 + (unsigned long)(*c - '0');
    }
    if (p > 65535)
        return MOAT_E_INVAL;
    memcpy(host, hstart, hlen);
    host[hlen] = '\0';
    *port = (uint16_t)p;
    return MOAT_OK;
}

bool moat_server_is_loopback(const char *hostport)
{
    char host[256];
    uint16_t port;
    const char *h = hostport;
    if (moat_server_split_hostport(hostport, host, sizeof(host), &port) == MOAT_OK)
        h = host;
    if (strcmp(h, "localhost") == 0)
        return true;
    struct in_addr a4;
    struct in6_addr a6;
    if (inet_pton(AF_INET, h, &a4) == 1)
        return (ntohl(a4.s_addr) >> 24) == 127;
    if (inet_pton(AF_INET6, h, &a6) == 1)
        return memcmp(&a6, &in6addr_loopback, sizeof(a6)) == 0;
    return false;
}

bool moat_server_token_equal(const uint8_t *given, size_t given_len, const char *want)
{
    size_t want_len = strlen(want);
    /* Walk the configured token's length whatever was given, so timing tells
     * nothing about where the first difference is. */
    unsigned diff = (unsigned)(given_len != want_len);
    for (size_t i = 0; i < want_len; i++) {
        uint8_t g = i < given_len ? given[i] : 0;
        diff |= (unsigned)(g ^ (uint8_t)want[i]);
    }
    return diff == 0 && want_len > 0;
}

static moat_err set_derived(char **slot, const char *dir, const char *leaf)
{
    if ((*slot)[0] != '\0')
        return MOAT_OK;
    size_t n = strlen(dir) + strlen(leaf) + 2;
    char *v = malloc(n);
    if (v == NULL)
        return MOAT_E_NOMEM;
    snprintf(v, n, "%s/%s", dir, leaf);
    free(*slot);
    *slot = v;
    return MOAT_OK;
}

static bool is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* The bundle next to the binary, or in the nearest parent that has one (a
 * build tree keeps moatd in <build>/src/server and the bundle in <build>). */
static moat_err find_bundle(moat_server_config *cfg, const char *bindir)
{
    if (cfg->execd_bundle[0] != '\0' || bindir == NULL)
        return MOAT_OK;
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s", bindir);
    for (int depth = 0; depth < 4; depth++) {
        char cand[4200];
        snprintf(cand, sizeof(cand), "%s/execd-bundle", dir);
        if (is_dir(cand)) {
            char *v = realpath(cand, NULL);
            if (v == NULL)
                return MOAT_E_NOMEM;
            free(cfg->execd_bundle);
            cfg->execd_bundle = v;
            return MOAT_OK;
        }
        char *slash = strrchr(dir, '/');
        if (slash == NULL || slash == dir)
            break;
        *slash = '\0';
    }
    return set_derived(&cfg->execd_bundle, bindir, "execd-bundle");
}

/* Cluster settings, when there are etcd endpoints: each an http(s) URL, at most
 * MOAT_ETCD_ENDPOINTS_MAX; an advertised address; a node id (the host name by default). */
static moat_err finish_cluster(moat_server_config *cfg, char *err, size_t errlen)
{
    const char *eps[MOAT_SERVER_MAX_IMAGES];
    size_t n;
    char *buf;
    moat_err e = moat_server_split_images(cfg->cluster_etcd_endpoints, eps, &n, &buf);
    bool ok = e == MOAT_OK && n > 0 && n <= MOAT_ETCD_ENDPOINTS_MAX;
    for (size_t i = 0; ok && i < n; i++)
        ok = strncmp(eps[i], "http://", 7) == 0 || strncmp(eps[i], "https://", 8) == 0;
    free(buf);
    if (e == MOAT_E_NOMEM)
        return e;
    if (!ok) {
        moat__config_errf(err, errlen,
                          "cluster_etcd_endpoints: 1 to %d http:// or https:// URLs, got \"%s\"",
                          MOAT_ETCD_ENDPOINTS_MAX, cfg->cluster_etcd_endpoints);
        return MOAT_E_INVAL;
    }
    if (!moat_node_address_valid(cfg->cluster_advertise)) {
        moat__config_errf(err, errlen,
                          "cluster_advertise: expected the host:port clients dial, got \"%s\"",
                          cfg->cluster_advertise);
        return MOAT_E_INVAL;
    }
    if (cfg->cluster_node_id[0] == '\0') {
        char host[256] = "";
        gethostname(host, sizeof(host) - 1);
        char *id = strdup(host);
        if (id == NULL)
            return MOAT_E_NOMEM;
        free(cfg->cluster_node_id);
        cfg->cluster_node_id = id;
    }
    if (!moat_node_id_valid(cfg->cluster_node_id)) {
        moat__config_errf(err, errlen, "cluster_node_id: 1-63 of [A-Za-z0-9_.-], got \"%s\"",
                          cfg->cluster_node_id);
        return MOAT_E_INVAL;
    }
    if (strcmp(cfg->cluster_route, "redirect") != 0 && strcmp(cfg->cluster_route, "proxy") != 0) {
        moat__config_errf(err, errlen, "cluster_route: redirect or proxy, got \"%s\"",
                          cfg->cluster_route);
        return MOAT_E_INVAL;
    }
    return MOAT_OK;
}

/* A CA bundle as curl will load it: a readable file with at least one PEM certificate. */
static bool ca_bundle_ok(const char *path, char *why, size_t cap)
{
    gnutls_datum_t pem = {NULL, 0};
    int rc = gnutls_load_file(path, &pem);
    if (rc < 0) {
        snprintf(why, cap, "%s: %s", path,
                 rc == GNUTLS_E_FILE_ERROR ? strerror(errno) : gnutls_strerror(rc));
        return false;
    }
    gnutls_certificate_credentials_t creds;
    rc = gnutls_certificate_allocate_credentials(&creds);
    if (rc == 0) {
        rc = gnutls_certificate_set_x509_trust_mem(creds, &pem, GNUTLS_X509_FMT_PEM);
        gnutls_certificate_free_credentials(creds);
    }
    gnutls_free(pem.data);
    if (rc <= 0)
        snprintf(why, cap, "%s: %s", path,
                 rc == 0 ? "holds no PEM certificate" : gnutls_strerror(rc));
    return rc > 0;
}

/* TLS to etcd: checked here, as the gRPC listener's files are, so that a file missing,
 * unreadable or not what it should be stops moatd at start (and a reload) with the key named,
 * rather than fencing the node with a TLS error on every call. */
static moat_err finish_cluster_tls(moat_server_config *cfg, char *err, size_t errlen)
{
    const char *ca = cfg->cluster_etcd_tls_ca, *cert = cfg->cluster_etcd_tls_cert,
               *key = cfg->cluster_etcd_tls_key;
    if (ca[0] == '\0' && cert[0] == '\0' && key[0] == '\0')
        return MOAT_OK;
    const char *set = ca[0] != '\0'     ? "cluster_etcd_tls_ca"
                      : cert[0] != '\0' ? "cluster_etcd_tls_cert"
                                        : "cluster_etcd_tls_key";
    const char *eps[MOAT_SERVER_MAX_IMAGES];
    size_t n;
    char *buf;
    moat_err e = moat_server_split_images(cfg->cluster_etcd_endpoints, eps, &n, &buf);
    bool https = e == MOAT_OK && n > 0;
    for (size_t i = 0; https && i < n; i++)
        https = strncmp(eps[i], "https://", 8) == 0;
    free(buf);
    if (e == MOAT_E_NOMEM)
        return e;
    if (!https) {
        moat__config_errf(err, errlen,
                          "%s: needs cluster_etcd_endpoints, every one https://, got \"%s\"", set,
                          cfg->cluster_etcd_endpoints);
        return MOAT_E_INVAL;
    }
    if ((cert[0] != '\0') != (key[0] != '\0')) {
        moat__config_errf(err, errlen,
                          "%s: must be set with %s (both empty: no client certificate)",
                          cert[0] != '\0' ? "cluster_etcd_tls_key" : "cluster_etcd_tls_cert",
                          cert[0] != '\0' ? "cluster_etcd_tls_cert" : "cluster_etcd_tls_key");
        return MOAT_E_INVAL;
    }
    char why[512];
    if (ca[0] != '\0' && !ca_bundle_ok(ca, why, sizeof(why))) {
        moat__config_errf(err, errlen, "cluster_etcd_tls_ca: %s", why);
        return MOAT_E_INVAL;
    }
    if (cert[0] == '\0')
        return MOAT_OK;
    /* What the gRPC listener's pair must be, this pair must be too: a PEM chain and its
     * unencrypted key, matching. */
    struct moat_grpc_tls_creds *pair;
    bool key_at_fault = false;
    e = moat_grpc_tls_creds_load(cert, key, &pair, &key_at_fault, why, sizeof(why));
    if (e == MOAT_E_NOMEM)
        return e;
    if (e != MOAT_OK) {
        moat__config_errf(err, errlen, "%s: %s",
                          key_at_fault ? "cluster_etcd_tls_key" : "cluster_etcd_tls_cert", why);
        return MOAT_E_INVAL;
    }
    moat_grpc_tls_creds_free(pair);
    return MOAT_OK;
}

/* The gRPC listener's TLS: certificate and key together, loaded here so that a file that is
 * missing, unreadable or not what it should be stops moatd at start (and a reload) with the key
 * named. */
static moat_err finish_grpc_tls(moat_server_config *cfg, char *err, size_t errlen)
{
    moat_grpc_tls_creds_free(cfg->grpc_tls);
    cfg->grpc_tls = NULL;
    bool cert = cfg->grpc_tls_cert[0] != '\0', key = cfg->grpc_tls_key[0] != '\0';
    if (!cert && !key)
        return MOAT_OK;
    if (cert != key) {
        moat__config_errf(err, errlen, "%s: must be set with %s (both empty: cleartext h2c)",
                          cert ? "grpc_tls_key" : "grpc_tls_cert",
                          cert ? "grpc_tls_cert" : "grpc_tls_key");
        return MOAT_E_INVAL;
    }
    char why[512];
    bool key_at_fault = false;
    moat_err e = moat_grpc_tls_creds_load(cfg->grpc_tls_cert, cfg->grpc_tls_key, &cfg->grpc_tls,
                                          &key_at_fault, why, sizeof(why));
    if (e == MOAT_E_NOMEM)
        return e;
    if (e != MOAT_OK) {
        moat__config_errf(err, errlen, "%s: %s", key_at_fault ? "grpc_tls_key" : "grpc_tls_cert",
                          why);
        return MOAT_E_INVAL;
    }
    return MOAT_OK;
}

moat_err moat_server_config_finish(moat_server_config *cfg, const char *bindir, char *err,
                                   size_t errlen)
{
    if (cfg->state_dir[0] != '/') {
        moat__config_errf(err, errlen, "state_dir: must be an absolute path, got \"%s\"",
                          cfg->state_dir);
        return MOAT_E_INVAL;
    }
    if (set_derived(&cfg->chats_root, cfg->state_dir, "chats") != MOAT_OK ||
        set_derived(&cfg->dependencies_host_path, cfg->state_dir, "dependencies") != MOAT_OK ||
        set_derived(&cfg->lambda_tools_host_path, cfg->state_dir, "lambda-tools") != MOAT_OK ||
        set_derived(&cfg->store_path, cfg->state_dir, "state.db") != MOAT_OK ||
        find_bundle(cfg, bindir) != MOAT_OK)
        return MOAT_E_NOMEM;
    if (cfg->listen[0] == '\0' && cfg->unix_socket[0] == '\0') {
        moat__config_errf(err, errlen,
                          "listen and unix_socket are both empty: nothing to listen on");
        return MOAT_E_INVAL;
    }
    char host[256];
    uint16_t port;
    if (cfg->listen[0] != '\0' &&
        moat_server_split_hostport(cfg->listen, host, sizeof(host), &port) != MOAT_OK) {
        moat__config_errf(err, errlen, "listen: expected host:port, got \"%s\"", cfg->listen);
        return MOAT_E_INVAL;
    }
    if (cfg->listen[0] != '\0' && !moat_server_is_loopback(cfg->listen) && cfg->token[0] == '\0') {
        moat__config_errf(
            err, errlen, "listen: %s is not loopback and no token is set (set token or MOAT_TOKEN)",
            cfg->listen);
        return MOAT_E_INVAL;
    }
    if (cfg->grpc_listen[0] != '\0' &&
        moat_server_split_hostport(cfg->grpc_listen, host, sizeof(host), &port) != MOAT_OK) {
        moat__config_errf(err, errlen, "grpc_listen: expected host:port, got \"%s\"",
                          cfg->grpc_listen);
        return MOAT_E_INVAL;
    }
    if (cfg->grpc_listen[0] != '\0' && !moat_server_is_loopback(cfg->grpc_listen) &&
        cfg->token[0] == '\0') {
        moat__config_errf(
            err, errlen,
            "grpc_listen: %s is not loopback and no token is set (set token or MOAT_TOKEN)",
            cfg->grpc_listen);
        return MOAT_E_INVAL;
    }
    moat_err e = finish_grpc_tls(cfg, err, errlen);
    if (e != MOAT_OK)
        return e;
    if (cfg->metrics_listen[0] != '\0') {
        if (moat_server_split_hostport(cfg->metrics_listen, host, sizeof(host), &port) != MOAT_OK) {
            moat__config_errf(err, errlen, "metrics_listen: expected host:port, got \"%s\"",
                              cfg->metrics_listen);
            return MOAT_E_INVAL;
        }
        if (!moat_server_is_loopback(cfg->metrics_listen)) {
            moat__config_errf(err, errlen, "metrics_listen: must be a loopback address, got \"%s\"",
                              cfg->metrics_listen);
            return MOAT_E_INVAL;
        }
    }
    if (cfg->unix_socket[0] != '\0' && strlen(cfg->unix_socket) >= 104) {
        moat__config_errf(err, errlen, "unix_socket: path longer than 103 bytes");
        return MOAT_E_INVAL;
    }
    if (cfg->image[0] == '\0') {
        moat__config_errf(err, errlen, "image: must not be empty");
        return MOAT_E_INVAL;
    }
    const char *images[MOAT_SERVER_MAX_IMAGES];
    size_t nimages;
    char *buf;
    e = moat_server_split_images(cfg->allowed_images, images, &nimages, &buf);
    free(buf);
    if (e == MOAT_E_TOO_BIG) {
        moat__config_errf(err, errlen, "allowed_images: more than %d images",
                          MOAT_SERVER_MAX_IMAGES);
        return MOAT_E_INVAL;
    }
    if (e != MOAT_OK)
        return e;
    if (cfg->pool_size > cfg->max_sessions) {
        moat__config_errf(
            err, errlen,
            "pool_size: %u is more than max_sessions (%u), which pool sandboxes count against",
            cfg->pool_size, cfg->max_sessions);
        return MOAT_E_INVAL;
    }
    if (cfg->ttl_seconds > cfg->max_ttl_seconds) {
        moat__config_errf(err, errlen, "ttl_seconds: %u is longer than max_ttl_seconds (%u)",
                          cfg->ttl_seconds, cfg->max_ttl_seconds);
        return MOAT_E_INVAL;
    }
    moat_sandbox_user user;
    if (moat_server_parse_sandbox_user(cfg->sandbox_user, &user) != MOAT_OK) {
        moat__config_errf(err, errlen,
                          "sandbox_user: expected UID:GID (decimal, neither 0) or root, got \"%s\"",
                          cfg->sandbox_user);
        return MOAT_E_INVAL;
    }
    if (cfg->cluster_etcd_endpoints[0] != '\0') {
        e = finish_cluster(cfg, err, errlen);
        if (e != MOAT_OK)
            return e;
    }
    return finish_cluster_tls(cfg, err, errlen);
}

moat_err moat_server_split_images(const char *text, const char *list[MOAT_SERVER_MAX_IMAGES],
                                  size_t *n, char **buf)
{
    *n = 0;
    *buf = strdup(text);
    if (*buf == NULL)
        return MOAT_E_NOMEM;
    char *save = NULL;
    for (char *t = strtok_r(*buf, ", \t", &save); t != NULL; t = strtok_r(NULL, ", \t", &save)) {
        if (*n == MOAT_SERVER_MAX_IMAGES)
            return MOAT_E_TOO_BIG;
        list[(*n)++] = t;
    }
    return MOAT_OK;
}

static bool parse_id(const char *text, size_t len, uint32_t *out)
{
    if (len == 0 || len > 10)
        return false;
    uint64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        if (text[i] < '0' || text[i] > '9')
            return false;
        v = v * 10 + (uint64_t)(text[i] - '0');
    }
    /* (uid_t)-1 means "unchanged" to the kernel's set*id calls. */
    if (v == 0 || v >= UINT32_MAX)
        return false;
    *out = (uint32_t)v;
    return true;
}

moat_err moat_server_parse_sandbox_user(const char *text, moat_sandbox_user *out)
{
    memset(out, 0, sizeof(*out));
    if (strcmp(text, "root") == 0) {
        out->root = true;
        return MOAT_OK;
    }
    const char *colon = strchr(text, ':');
    if (colon == NULL || !parse_id(text, (size_t)(colon - text), &out->uid) ||
        !parse_id(colon + 1, strlen(colon + 1), &out->gid))
        return MOAT_E_INVAL;
    return MOAT_OK;
}
