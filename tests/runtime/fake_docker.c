#include "fake_docker.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <microhttpd.h>

#include "common/json.h"

static int listen_unix(const char *path)
{
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof(addr));
    addr.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof(addr.sun_path))
        return -1;
    strcpy(addr.sun_path, path);
    unlink(path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0 || listen(fd, 64) != 0) {
        close(fd);
        return -1;
    }
    chmod(path, 0666);
    return fd;
}

static struct MHD_Daemon *serve_unix(const char *path, MHD_AccessHandlerCallback cb, void *ctx)
{
    int fd = listen_unix(path);
    if (fd < 0)
        return NULL;
    struct MHD_Daemon *d =
        MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION, 0, NULL,
                         NULL, cb, ctx, MHD_OPTION_LISTEN_SOCKET, fd, MHD_OPTION_END);
    if (d == NULL)
        close(fd);
    return d;
}

/* ---- fake execd: GET /ping → 200 ------------------------------------------------------------ */

static enum MHD_Result execd_handler(void *cls, struct MHD_Connection *conn, const char *url,
                                     const char *method, const char *version,
                                     const char *upload_data, size_t *upload_size, void **con_cls)
{
    (void)cls;
    (void)method;
    (void)version;
    (void)upload_data;
    (void)con_cls;
    *upload_size = 0;
    int status = strcmp(url, "/ping") == 0 ? 200 : 404;
    struct MHD_Response *r = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    enum MHD_Result ret = MHD_queue_response(conn, (unsigned)status, r);
    MHD_destroy_response(r);
    return ret;
}

/* The host source of the /run/moat mount in the last create body. */
static bool socket_dir_of(const char *create_body, char *out, size_t cap)
{
    cJSON *spec = moat_json_parse(create_body, strlen(create_body), MOAT_JSON_NUL_REJECT);
    const cJSON *host = cJSON_GetObjectItemCaseSensitive(spec, "HostConfig");
    const cJSON *mounts = cJSON_GetObjectItemCaseSensitive(host, "Mounts");
    bool found = false;
    const cJSON *m;
    cJSON_ArrayForEach(m, mounts)
    {
        const char *target = moat_json_str(m, "Target", NULL);
        const char *source = moat_json_str(m, "Source", NULL);
        if (target && source && strcmp(target, "/run/moat") == 0) {
            snprintf(out, cap, "%s", source);
            found = true;
        }
    }
    cJSON_Delete(spec);
    return found;
}

/* ---- fake engine ------------------------------------------------------------------------------
 */

typedef struct upload {
    char uri[2048]; /* raw request target, query included */
    bool headers_seen;
    char *data;
    size_t len;
} upload;

static void *uri_logger(void *cls, const char *uri, struct MHD_Connection *conn)
{
    (void)cls;
    (void)conn;
    upload *up = calloc(1, sizeof(*up));
    if (up != NULL)
        snprintf(up->uri, sizeof(up->uri), "%s", uri);
    return up;
}

static void request_done(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)conn;
    (void)toe;
    upload *up = *con_cls;
    if (up != NULL) {
        free(up->data);
        free(up);
        *con_cls = NULL;
    }
}

typedef struct cut_state {
    char *body;
    size_t len;
} cut_state;

static ssize_t cut_reader(void *cls, uint64_t pos, char *buf, size_t max)
{
    cut_state *c = cls;
    size_t half = c->len / 2;
    if (pos >= half)
        return MHD_CONTENT_READER_END_WITH_ERROR;
    size_t n = half - (size_t)pos;
    if (n > max)
        n = max;
    memcpy(buf, c->body + pos, n);
    return (ssize_t)n;
}

static void cut_free(void *cls)
{
    cut_state *c = cls;
    free(c->body);
    free(c);
}

/* GET /containers/{id}/json: running, named and labelled as the last create asked. */
static const char *inspect_answer(fake_docker *fd, const char *url, char *scratch, size_t cap)
{
    const char *id = url + strlen("/containers/");
    size_t id_len = strcspn(id, "/?");
    cJSON *spec =
        moat_json_parse(fd->last_create_body, strlen(fd->last_create_body), MOAT_JSON_NUL_REJECT);
    const cJSON *labels = cJSON_GetObjectItemCaseSensitive(spec, "Labels");
    char *labels_text = cJSON_IsObject(labels) ? cJSON_PrintUnformatted(labels) : NULL;
    if (labels_text != NULL)
        snprintf(scratch, cap,
                 "{\"Id\":\"%.*s\",\"Name\":\"/%s\",\"Created\":\"2026-04-02T12:00:00Z\","
                 "\"State\":{\"Running\":true,\"ExitCode\":0},"
                 "\"Config\":{\"Image\":\"sandbox:latest\",\"Labels\":%s}}",
                 (int)id_len, id, fd->last_create_name, labels_text);
    else
        snprintf(scratch, cap, "{\"Id\":\"%.*s\",\"State\":{\"Running\":true,\"ExitCode\":0}}",
                 (int)id_len, id);
    cJSON_free(labels_text);
    cJSON_Delete(spec);
    return scratch;
}

static const char *default_answer(fake_docker *fd, const char *method, const char *url, int *status,
                                  char *scratch, size_t cap)
{
    *status = 200;
    if (strcmp(method, "GET") == 0 && strcmp(url, "/version") == 0) {
        snprintf(scratch, cap, "{\"ApiVersion\":\"%s\",\"Version\":\"fake\"}", fd->api_version);
        return scratch;
    }
    if (strcmp(method, "GET") == 0 &&
        strcmp(url, "/info") == 0) /* an engine without userns-remap */
        return "{\"SecurityOptions\":[\"name=seccomp,profile=default\"],"
               "\"DockerRootDir\":\"/var/lib/docker\"}";
    if (strcmp(method, "POST") == 0 && strstr(url, "/containers/create")) {
        *status = 201;
        return "{\"Id\":\"container-123\",\"Warnings\":[]}";
    }
    if (strcmp(method, "POST") == 0 &&
        (strstr(url, "/start") || strstr(url, "/stop") || strstr(url, "/kill"))) {
        *status = 204;
        return "";
    }
    if (strcmp(method, "DELETE") == 0) {
        *status = 204;
        return "";
    }
    if (strcmp(method, "GET") == 0 && strstr(url, "/containers/json"))
        return "[]";
    if (strcmp(method, "GET") == 0 && strstr(url, "/containers/"))
        return inspect_answer(fd, url, scratch, cap);
    if (strcmp(method, "GET") == 0 && strstr(url, "/images/"))
        return "{\"Id\":\"sha256:abc\"}";
    *status = 404;
    return "{\"message\":\"page not found\"}";
}

static void launch_execd(fake_docker *fd)
{
    char dir[1024];
    if (!socket_dir_of(fd->last_create_body, dir, sizeof(dir)))
        return;
    char path[1100];
    snprintf(path, sizeof(path), "%s/execd.sock", dir);
    struct MHD_Daemon *d = serve_unix(path, execd_handler, NULL);
    if (d != NULL && fd->execd_count < sizeof(fd->execds) / sizeof(fd->execds[0]))
        fd->execds[fd->execd_count++] = d;
    else if (d != NULL)
        MHD_stop_daemon(d);
}

/* The subject DN of the client certificate the TLS handshake verified, or "". */
static void peer_dn(struct MHD_Connection *conn, char *out, size_t cap)
{
    out[0] = '\0';
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_GNUTLS_SESSION);
    if (ci == NULL || ci->tls_session == NULL)
        return;
    unsigned n = 0;
    const gnutls_datum_t *certs = gnutls_certificate_get_peers(ci->tls_session, &n);
    gnutls_x509_crt_t crt;
    if (certs == NULL || n == 0 || gnutls_x509_crt_init(&crt) < 0)
        return;
    size_t len = cap;
    if (gnutls_x509_crt_import(crt, &certs[0], GNUTLS_X509_FMT_DER) < 0 ||
        gnutls_x509_crt_get_dn(crt, out, &len) < 0)
        out[0] = '\0';
    gnutls_x509_crt_deinit(crt);
}

/* libmicrohttpd only asks for a client certificate (GNUTLS_CERT_REQUEST) and never checks it.
 * Before the handshake starts, make this session require one and verify its chain against the
 * trusted CA during the handshake, so a bad or missing certificate fails the handshake as it
 * does with dockerd --tlsverify. */
static void require_client_cert(void *cls, struct MHD_Connection *conn, void **socket_context,
                                enum MHD_ConnectionNotificationCode code)
{
    (void)cls;
    (void)socket_context;
    if (code != MHD_CONNECTION_NOTIFY_STARTED)
        return;
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_GNUTLS_SESSION);
    if (ci == NULL || ci->tls_session == NULL)
        return;
    gnutls_certificate_server_set_request(ci->tls_session, GNUTLS_CERT_REQUIRE);
    gnutls_session_set_verify_cert(ci->tls_session, NULL, 0);
}

static enum MHD_Result engine_handler(void *cls, struct MHD_Connection *conn, const char *url,
                                      const char *method, const char *version,
                                      const char *upload_data, size_t *upload_size, void **con_cls)
{
    (void)version;
    (void)url;
    fake_docker *fd = cls;
    upload *up = *con_cls;
    if (up == NULL)
        return MHD_NO;
    if (!up->headers_seen) { /* MHD's first call carries headers only */
        up->headers_seen = true;
        return MHD_YES;
    }
    if (*upload_size > 0) {
        char *n = realloc(up->data, up->len + *upload_size + 1);
        if (n == NULL)
            return MHD_NO;
        up->data = n;
        memcpy(up->data + up->len, upload_data, *upload_size);
        up->len += *upload_size;
        up->data[up->len] = '\0';
        *upload_size = 0;
        return MHD_YES;
    }
    const char *body_in = up->data ? up->data : "";
    char tls_peer[128] = "";
    if (fd->tls)
        peer_dn(conn, tls_peer, sizeof(tls_peer));
    /* Strip the /vX.Y prefix so routes and defaults see engine paths. */
    const char *path = up->uri;
    if (strncmp(path, "/v1.", 4) == 0) {
        const char *slash = strchr(path + 1, '/');
        if (slash != NULL)
            path = slash;
    }

    pthread_mutex_lock(&fd->mu);
    if (fd->request_count < FAKE_MAX_REQUESTS) {
        fake_request *rq = &fd->requests[fd->request_count++];
        snprintf(rq->method, sizeof(rq->method), "%s", method);
        snprintf(rq->url, sizeof(rq->url), "%s", up->uri);
        rq->body = strdup(body_in);
        snprintf(rq->tls_peer, sizeof(rq->tls_peer), "%s", tls_peer);
    }
    if (strcmp(method, "POST") == 0 && strstr(path, "/containers/create")) {
        snprintf(fd->last_create_body, sizeof(fd->last_create_body), "%s", body_in);
        const char *name = strstr(path, "name=");
        snprintf(fd->last_create_name, sizeof(fd->last_create_name), "%.*s",
                 name != NULL ? (int)strcspn(name + 5, "&") : 0, name != NULL ? name + 5 : "");
    }
    fake_route route = {0};
    bool routed = false;
    /* The newest route wins, so a test can override an earlier one. */
    for (size_t i = fd->route_count; i > 0 && !routed; i--) {
        fake_route *r = &fd->routes[i - 1];
        if (r->remaining == 0 || strcmp(r->method, method) != 0 ||
            strstr(up->uri, r->url_contains) == NULL)
            continue;
        if (r->remaining > 0)
            r->remaining--;
        route = *r;
        route.body = strdup(r->body ? r->body : "");
        routed = true;
    }
    char scratch[4096];
    int status = 0;
    const char *answer;
    if (routed && route.status > 0) {
        status = route.status;
        answer = route.body;
    } else {
        answer = default_answer(fd, method, path, &status, scratch, sizeof(scratch));
    }
    unsigned gen = fd->release_gen;
    bool is_start = strcmp(method, "POST") == 0 && strstr(path, "/start") && status < 300;
    if (is_start && fd->start_execd)
        launch_execd(fd);
    pthread_mutex_unlock(&fd->mu);

    if (routed && route.held) {
        pthread_mutex_lock(&fd->mu);
        while (!fd->released_all && fd->release_gen == gen)
            pthread_cond_wait(&fd->released, &fd->mu);
        pthread_mutex_unlock(&fd->mu);
    }
    struct MHD_Response *resp;
    if (routed && route.cut_short) {
        cut_state *c = calloc(1, sizeof(*c));
        c->body = strdup("[{\"Id\":\"abcdef\",\"Labels\":{\"session_id\":\"x\"}}]");
        c->len = strlen(c->body);
        resp = MHD_create_response_from_callback(c->len, 64, cut_reader, c, cut_free);
    } else {
        resp =
            MHD_create_response_from_buffer(strlen(answer), (void *)answer, MHD_RESPMEM_MUST_COPY);
        if (answer[0] != '\0')
            MHD_add_response_header(resp, "Content-Type", "application/json");
    }
    enum MHD_Result ret = MHD_queue_response(conn, (unsigned)(status ? status : 200), resp);
    MHD_destroy_response(resp);
    free(route.body);
    return ret;
}

static int listen_tcp(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof(addr));
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0 || listen(fd, 64) != 0 ||
        getsockname(fd, (struct sockaddr *)&addr, &len) != 0) {
        close(fd);
        return -1;
    }
    *port = ntohs(addr.sin_port);
    return fd;
}

static int start_engine(fake_docker *fd, int sock);

static void init_state(fake_docker *fd)
{
    memset(fd, 0, sizeof(*fd));
    pthread_mutex_init(&fd->mu, NULL);
    pthread_cond_init(&fd->released, NULL);
    snprintf(fd->api_version, sizeof(fd->api_version), "1.41");
    fd->start_execd = true;
}

int fake_docker_start(fake_docker *fd, const char *socket_path)
{
    init_state(fd);
    snprintf(fd->socket_path, sizeof(fd->socket_path), "%s", socket_path);
    return start_engine(fd, listen_unix(socket_path));
}

int fake_docker_start_tcp(fake_docker *fd, int *port)
{
    init_state(fd);
    return start_engine(fd, listen_tcp(port));
}

int fake_docker_start_tls(fake_docker *fd, int *port, const char *cert_pem, const char *key_pem,
                          const char *client_ca_pem)
{
    init_state(fd);
    if (MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES)
        return -2;
    fd->tls = true;
    fd->tls_pem[0] = strdup(cert_pem);
    fd->tls_pem[1] = strdup(key_pem);
    fd->tls_pem[2] = strdup(client_ca_pem);
    if (fd->tls_pem[0] == NULL || fd->tls_pem[1] == NULL || fd->tls_pem[2] == NULL)
        return -1;
    return start_engine(fd, listen_tcp(port));
}

static int start_engine(fake_docker *fd, int sock)
{
    if (sock < 0)
        return -1;
    const unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION;
    if (fd->tls)
        fd->daemon = MHD_start_daemon(
            flags | MHD_USE_TLS, 0, NULL, NULL, engine_handler, fd, MHD_OPTION_LISTEN_SOCKET, sock,
            MHD_OPTION_URI_LOG_CALLBACK, uri_logger, NULL, MHD_OPTION_NOTIFY_COMPLETED,
            request_done, NULL, MHD_OPTION_HTTPS_MEM_CERT, fd->tls_pem[0], MHD_OPTION_HTTPS_MEM_KEY,
            fd->tls_pem[1], MHD_OPTION_HTTPS_MEM_TRUST, fd->tls_pem[2],
            MHD_OPTION_NOTIFY_CONNECTION, require_client_cert, NULL, MHD_OPTION_END);
    else
        fd->daemon =
            MHD_start_daemon(flags, 0, NULL, NULL, engine_handler, fd, MHD_OPTION_LISTEN_SOCKET,
                             sock, MHD_OPTION_URI_LOG_CALLBACK, uri_logger, NULL,
                             MHD_OPTION_NOTIFY_COMPLETED, request_done, NULL, MHD_OPTION_END);
    if (fd->daemon == NULL) {
        close(sock);
        return -1;
    }
    return 0;
}

void fake_docker_stop(fake_docker *fd)
{
    pthread_mutex_lock(&fd->mu);
    fd->released_all = true;
    pthread_cond_broadcast(&fd->released);
    pthread_mutex_unlock(&fd->mu);
    if (fd->daemon != NULL)
        MHD_stop_daemon(fd->daemon);
    fd->daemon = NULL;
    for (size_t i = 0; i < fd->execd_count; i++)
        MHD_stop_daemon(fd->execds[i]);
    fd->execd_count = 0;
    for (size_t i = 0; i < fd->request_count; i++)
        free(fd->requests[i].body);
    fd->request_count = 0;
    for (size_t i = 0; i < fd->route_count; i++)
        free(fd->routes[i].body);
    fd->route_count = 0;
    if (fd->socket_path[0] != '\0')
        unlink(fd->socket_path);
    for (size_t i = 0; i < 3; i++) {
        free(fd->tls_pem[i]);
        fd->tls_pem[i] = NULL;
    }
    pthread_cond_destroy(&fd->released);
    pthread_mutex_destroy(&fd->mu);
}

static fake_route *add_route(fake_docker *fd, const char *method, const char *url_contains)
{
    pthread_mutex_lock(&fd->mu);
    fake_route *r = NULL;
    if (fd->route_count < FAKE_MAX_ROUTES) {
        r = &fd->routes[fd->route_count++];
        memset(r, 0, sizeof(*r));
        snprintf(r->method, sizeof(r->method), "%s", method);
        snprintf(r->url_contains, sizeof(r->url_contains), "%s", url_contains);
        r->remaining = -1;
    }
    pthread_mutex_unlock(&fd->mu);
    return r;
}

void fake_docker_route(fake_docker *fd, const char *method, const char *url_contains, int status,
                       const char *body, int times)
{
    fake_route *r = add_route(fd, method, url_contains);
    if (r == NULL)
        return;
    r->status = status;
    r->body = strdup(body ? body : "");
    r->remaining = times;
}

void fake_docker_route_hold(fake_docker *fd, const char *method, const char *url_contains)
{
    fake_route *r = add_route(fd, method, url_contains);
    if (r != NULL)
        r->held = true;
}

void fake_docker_route_held(fake_docker *fd, const char *method, const char *url_contains,
                            int status, const char *body)
{
    fake_route *r = add_route(fd, method, url_contains);
    if (r == NULL)
        return;
    r->status = status;
    r->body = strdup(body);
    r->held = true;
}

void fake_docker_release(fake_docker *fd)
{
    pthread_mutex_lock(&fd->mu);
    fd->release_gen++;
    pthread_cond_broadcast(&fd->released);
    pthread_mutex_unlock(&fd->mu);
}

void fake_docker_route_cut(fake_docker *fd, const char *method, const char *url_contains)
{
    fake_route *r = add_route(fd, method, url_contains);
    if (r != NULL) {
        r->status = 200;
        r->cut_short = true;
    }
}

size_t fake_docker_count(fake_docker *fd, const char *method, const char *url_contains)
{
    size_t n = 0;
    pthread_mutex_lock(&fd->mu);
    for (size_t i = 0; i < fd->request_count; i++)
        if (strcmp(fd->requests[i].method, method) == 0 &&
            strstr(fd->requests[i].url, url_contains) != NULL)
            n++;
    pthread_mutex_unlock(&fd->mu);
    return n;
}

const fake_request *fake_docker_find(fake_docker *fd, const char *method, const char *url_contains)
{
    const fake_request *found = NULL;
    pthread_mutex_lock(&fd->mu);
    for (size_t i = 0; i < fd->request_count && found == NULL; i++)
        if (strcmp(fd->requests[i].method, method) == 0 &&
            strstr(fd->requests[i].url, url_contains) != NULL)
            found = &fd->requests[i];
    pthread_mutex_unlock(&fd->mu);
    return found;
}
