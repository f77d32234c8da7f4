/* Docker Engine API client: one libcurl easy handle per call (thread-safe), cJSON bodies. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <curl/curl.h>

#include "internal.h"

#include "common/unix_socket.h"

moat_err moat__docker_init(moat_runtime *rt, moat_status *st)
{
    const char *host = rt->cfg.docker_host;
    if (strncmp(host, "tcp://", 6) == 0) {
        const char *scheme = rt->cfg.docker_tls_cert || rt->cfg.docker_tls_ca ? "https" : "http";
        size_t n = strlen(host) + 16;
        rt->docker_base_url = malloc(n);
        if (rt->docker_base_url == NULL)
            goto nomem;
        snprintf(rt->docker_base_url, n, "%s://%s", scheme, host + 6);
        size_t len = strlen(rt->docker_base_url);
        if (len > 0 && rt->docker_base_url[len - 1] == '/')
            rt->docker_base_url[len - 1] = '\0';
        return MOAT_OK;
    }
    if (strncmp(host, "unix://", 7) == 0)
        host += 7;
    rt->docker_socket = strdup(host);
    /* The host part is ignored by Docker over a Unix socket. */
    rt->docker_base_url = strdup("http://docker");
    if (rt->docker_socket == NULL || rt->docker_base_url == NULL)
        goto nomem;
    return MOAT_OK;
nomem:
    moat_status_set(st, MOAT_CODE_RESOURCE_EXHAUSTED, "out_of_memory", "out of memory");
    return MOAT_E_NOMEM;
}

static size_t on_body(char *data, size_t size, size_t nmemb, void *user)
{
    moat_buf *buf = user;
    size_t n = size * nmemb;
    if (moat_buf_append(buf, data, n) != MOAT_OK)
        return 0; /* over the limit: curl fails with CURLE_WRITE_ERROR */
    return n;
}

void moat__docker_setup_endpoint(moat_runtime *rt, CURL *h)
{
    if (rt->docker_socket != NULL)
        curl_easy_setopt(h, CURLOPT_UNIX_SOCKET_PATH, rt->docker_socket);
    if (rt->cfg.docker_tls_cert != NULL)
        curl_easy_setopt(h, CURLOPT_SSLCERT, rt->cfg.docker_tls_cert);
    if (rt->cfg.docker_tls_key != NULL)
        curl_easy_setopt(h, CURLOPT_SSLKEY, rt->cfg.docker_tls_key);
    if (rt->cfg.docker_tls_ca != NULL)
        curl_easy_setopt(h, CURLOPT_CAINFO, rt->cfg.docker_tls_ca);
}

void moat__engine_lost(moat_runtime *rt)
{
    pthread_mutex_lock(&rt->reaper_mu);
    rt->reconcile_pending = true;
    pthread_mutex_unlock(&rt->reaper_mu);
}

static moat_code transport_error(moat_runtime *rt, CURLcode rc, const char *errbuf, moat_status *st)
{
    /* libcurl's error buffer keeps the FIRST message of a transfer, which can be a non-fatal
     * step (a TLS engine that drops a client without a certificate leaves "getpeername()
     * failed"), so the result that failed the call always comes first. */
    const char *result = curl_easy_strerror(rc);
    char what[CURL_ERROR_SIZE + 128];
    if (errbuf[0] == '\0' || strcmp(errbuf, result) == 0)
        snprintf(what, sizeof(what), "%s", result);
    else
        snprintf(what, sizeof(what), "%s (%s)", result, errbuf);
    const char *where = rt->docker_socket ? rt->docker_socket : rt->cfg.docker_host;
    if (rc == CURLE_OPERATION_TIMEDOUT) {
        /* UNAVAILABLE, not DEADLINE_EXCEEDED: that one says the CALLER's deadline passed, and
         * a client should retry an engine that hung, as it would one that was down. */
        moat_status_set(st, MOAT_CODE_UNAVAILABLE, "docker_timeout",
                        "docker engine at %s did not answer within %ld ms: %s", where,
                        rt->cfg.docker_timeout_ms, what);
    } else if (rc == CURLE_WRITE_ERROR) {
        moat_status_set(st, MOAT_CODE_INTERNAL, "docker_protocol",
                        "docker engine answer over %u bytes", MOAT__DOCKER_BODY_MAX);
    } else {
        moat_status_set(st, MOAT_CODE_UNAVAILABLE, "docker_unavailable",
                        "docker engine at %s unreachable: %s", where, what);
        /* A restarted engine has stopped every sandbox: once it answers, reconcile. */
        moat__engine_lost(rt);
    }
    return st->code;
}

const cJSON *moat__json_get(const cJSON *obj, const char *key)
{
    return cJSON_IsObject(obj) ? cJSON_GetObjectItemCaseSensitive(obj, key) : NULL;
}

const char *moat__json_str(const cJSON *obj, const char *key)
{
    return cJSON_IsObject(obj) ? moat_json_str(obj, key, NULL) : NULL;
}

bool moat__json_add_int(cJSON *obj, const char *key, int64_t value)
{
    char text[24];
    snprintf(text, sizeof(text), "%" PRId64, value);
    return cJSON_AddRawToObject(obj, key, text) != NULL;
}

/* One HTTP exchange with the engine at a full path (already versioned). */
static moat_code perform(moat_runtime *rt, const char *op, const char *method, const char *path,
                         const char *body, moat_docker_response *resp, moat_status *st)
{
    uint64_t t0 = moat_time_mono_ns();
    resp->http_status = 0;
    resp->json = NULL;
    CURL *h = curl_easy_init();
    if (h == NULL) {
        moat_status_set(st, MOAT_CODE_RESOURCE_EXHAUSTED, "out_of_memory", "curl_easy_init");
        return st->code;
    }
    size_t url_len = strlen(rt->docker_base_url) + strlen(path) + 1;
    char *url = malloc(url_len);
    moat_buf buf;
    moat_buf_init(&buf, MOAT__DOCKER_BODY_MAX);
    char errbuf[CURL_ERROR_SIZE] = "";
    struct curl_slist *headers = NULL;
    moat_code code = MOAT_CODE_OK;
    if (url == NULL) {
        moat_status_set(st, MOAT_CODE_RESOURCE_EXHAUSTED, "out_of_memory", "out of memory");
        code = st->code;
        goto out;
    }
    snprintf(url, url_len, "%s%s", rt->docker_base_url, path);
    moat__docker_setup_endpoint(rt, h);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, rt->cfg.docker_timeout_ms);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &buf);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
    if (body != NULL) {
        headers = curl_slist_append(headers, "Content-Type: application/json");
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
    } else if (strcmp(method, "POST") == 0) {
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, "");
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, 0L);
    }
    headers = curl_slist_append(headers, "Expect:");
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);

    CURLcode rc = curl_easy_perform(h);
    if (rc != CURLE_OK) {
        code = transport_error(rt, rc, errbuf, st);
        goto out;
    }
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &resp->http_status);
    if (buf.len > 0)
        resp->json = moat_json_parse((const char *)buf.data, buf.len, MOAT_JSON_NUL_REJECT);
    if (resp->http_status >= 400) {
        const char *msg = moat__json_str(resp->json, "message");
        char fallback[256] = "";
        if (msg == NULL) {
            size_t n = buf.len < sizeof(fallback) - 1 ? buf.len : sizeof(fallback) - 1;
            memcpy(fallback, buf.data, n);
            fallback[n] = '\0';
            msg = fallback;
        }
        /* Docker's 409 is a conflict with the container's state. */
        code = resp->http_status == 409 ? MOAT_CODE_FAILED_PRECONDITION
                                        : moat_code_from_http(resp->http_status);
        moat_status_set(st, code, "docker_error", "docker %s %s: HTTP %ld: %s", method, path,
                        resp->http_status, msg);
        char status_text[16];
        snprintf(status_text, sizeof(status_text), "%ld", resp->http_status);
        moat_status_add_detail(st, "docker_status", status_text);
        goto out;
    }
    if (buf.len > 0 && resp->json == NULL) {
        moat_status_set(st, MOAT_CODE_INTERNAL, "docker_protocol",
                        "docker %s %s: HTTP %ld with a body that is not JSON", method, path,
                        resp->http_status);
        code = st->code;
        goto out;
    }
out:
    if (rt->cfg.metrics.docker_call != NULL)
        rt->cfg.metrics.docker_call(rt->cfg.metrics.ctx, op, resp->http_status, code,
                                    moat_time_mono_ns() - t0);
    curl_slist_free_all(headers);
    curl_easy_cleanup(h);
    moat_buf_free(&buf);
    free(url);
    return code;
}

static size_t discard_body(char *data, size_t size, size_t nmemb, void *user)
{
    (void)data;
    (void)user;
    return size * nmemb;
}

moat_code moat_runtime_docker_ping(moat_runtime *rt, long timeout_ms, moat_status *st)
{
    CURL *h = curl_easy_init();
    if (h == NULL) {
        moat_status_set(st, MOAT_CODE_RESOURCE_EXHAUSTED, "out_of_memory", "curl_easy_init");
        return st->code;
    }
    char url[512];
    snprintf(url, sizeof(url), "%s/_ping", rt->docker_base_url);
    char errbuf[CURL_ERROR_SIZE] = "";
    moat__docker_setup_endpoint(rt, h);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, discard_body);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
    CURLcode rc = curl_easy_perform(h);
    long status = 0;
    moat_code code = MOAT_CODE_OK;
    if (rc != CURLE_OK) {
        code = transport_error(rt, rc, errbuf, st);
        if (rc == CURLE_OPERATION_TIMEDOUT)
            moat_status_set(st, MOAT_CODE_UNAVAILABLE, "docker_timeout",
                            "docker engine did not answer GET /_ping within %ld ms", timeout_ms);
    } else if (curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status), status != 200) {
        moat_status_set(st, MOAT_CODE_UNAVAILABLE, "docker_unavailable",
                        "docker GET /_ping: HTTP %ld", status);
        code = st->code;
    }
    curl_easy_cleanup(h);
    return code;
}

/* "1.41" < "1.44"? Compares major.minor numerically. */
static int version_cmp(const char *a, const char *b)
{
    unsigned amaj = 0, amin = 0, bmaj = 0, bmin = 0;
    sscanf(a, "%u.%u", &amaj, &amin);
    sscanf(b, "%u.%u", &bmaj, &bmin);
    if (amaj != bmaj)
        return amaj < bmaj ? -1 : 1;
    if (amin != bmin)
        return amin < bmin ? -1 : 1;
    return 0;
}

moat_code moat_runtime_docker_version(moat_runtime *rt, char out[16], moat_status *st)
{
    pthread_mutex_lock(&rt->version_mu);
    if (rt->api_version[0] != '\0') {
        memcpy(out, rt->api_version, 16);
        pthread_mutex_unlock(&rt->version_mu);
        return MOAT_CODE_OK;
    }
    pthread_mutex_unlock(&rt->version_mu);

    moat_docker_response resp;
    moat_code code = perform(rt, "version", "GET", "/version", NULL, &resp, st);
    if (code != MOAT_CODE_OK) {
        moat_runtime_docker_response_free(&resp);
        return code;
    }
    const char *api = moat__json_str(resp.json, "ApiVersion");
    unsigned maj, min;
    if (api == NULL || sscanf(api, "%u.%u", &maj, &min) != 2 || strlen(api) >= 16) {
        moat_status_set(st, MOAT_CODE_INTERNAL, "docker_protocol",
                        "docker GET /version: no usable ApiVersion");
        moat_runtime_docker_response_free(&resp);
        return st->code;
    }
    char chosen[16];
    if (version_cmp(api, MOAT__DOCKER_API_MAX) > 0)
        snprintf(chosen, sizeof(chosen), "%s", MOAT__DOCKER_API_MAX);
    else
        snprintf(chosen, sizeof(chosen), "%u.%u", maj, min);
    moat_runtime_docker_response_free(&resp);
    if (version_cmp(chosen, MOAT__DOCKER_API_MIN) < 0) {
        moat_status_set(st, MOAT_CODE_FAILED_PRECONDITION, "docker_too_old",
                        "docker engine API %s is older than the %s moat needs", chosen,
                        MOAT__DOCKER_API_MIN);
        return st->code;
    }
    pthread_mutex_lock(&rt->version_mu);
    memcpy(rt->api_version, chosen, sizeof(chosen));
    pthread_mutex_unlock(&rt->version_mu);
    memcpy(out, chosen, 16);
    return MOAT_CODE_OK;
}

moat_code moat_runtime_docker_call(moat_runtime *rt, const char *op, const char *method,
                                   const char *path, const char *body, moat_docker_response *resp,
                                   moat_status *st)
{
    moat_docker_response local;
    if (resp == NULL)
        resp = &local;
    resp->http_status = 0;
    resp->json = NULL;
    moat_status_clear(st);
    char version[16];
    moat_code code = moat_runtime_docker_version(rt, version, st);
    if (code != MOAT_CODE_OK)
        return code;
    size_t n = strlen(path) + 24;
    char *full = malloc(n);
    if (full == NULL) {
        moat_status_set(st, MOAT_CODE_RESOURCE_EXHAUSTED, "out_of_memory", "out of memory");
        return st->code;
    }
    snprintf(full, n, "/v%s%s", version, path);
    code = perform(rt, op, method, full, body, resp, st);
    free(full);
    if (resp == &local)
        moat_runtime_docker_response_free(&local);
    return code;
}

void moat_runtime_docker_response_free(moat_docker_response *resp)
{
    if (resp == NULL)
        return;
    cJSON_Delete(resp->json);
    resp->json = NULL;
}

moat_code moat_runtime_image_inspect(moat_runtime *rt, const char *image, moat_status *st)
{
    CURL *h = curl_easy_init();
    char *escaped = h ? curl_easy_escape(h, image, 0) : NULL;
    if (escaped == NULL) {
        if (h)
            curl_easy_cleanup(h);
        moat_status_set(st, MOAT_CODE_RESOURCE_EXHAUSTED, "out_of_memory", "out of memory");
        return st->code;
    }
    char path[1024];
    snprintf(path, sizeof(path), "/images/%s/json", escaped);
    curl_free(escaped);
    curl_easy_cleanup(h);
    return moat_runtime_docker_call(rt, "image_inspect", "GET", path, NULL, NULL, st);
}

static size_t discard(char *data, size_t size, size_t nmemb, void *user)
{
    (void)data;
    (void)user;
    return size * nmemb;
}

typedef struct pinned_socket {
    const char *path;
    int pin; /* O_PATH descriptor of the socket file, or -1 */
} pinned_socket;

/* The address curl connects to names the socket file itself: never a link the sandbox planted
 * in its socket directory, nor a non-socket. */
static curl_socket_t open_execd_socket(void *ud, curlsocktype purpose,
                                       struct curl_sockaddr *address)
{
    pinned_socket *ps = ud;
    if (purpose != CURLSOCKTYPE_IPCXN || address->family != AF_UNIX || ps->pin >= 0)
        return CURL_SOCKET_BAD;
    struct sockaddr_un sa;
    socklen_t len;
    ps->pin = moat_unix_pin(ps->path, &sa, &len, NULL, 0);
    if (ps->pin < 0)
        return CURL_SOCKET_BAD;
    memcpy(&address->addr, &sa, len);
    address->addrlen = len;
    return socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
}

bool moat__execd_ping(const char *socket_path, const char *token, long timeout_ms)
{
    CURL *h = curl_easy_init();
    if (h == NULL)
        return false;
    struct curl_slist *hdrs = NULL;
    char header[MOAT_EXECD_TOKEN_MAX + 32];
    if (token != NULL && token[0] != '\0') {
        snprintf(header, sizeof(header), "X-EXECD-ACCESS-TOKEN: %s", token);
        hdrs = curl_slist_append(NULL, header);
        if (hdrs == NULL) {
            curl_easy_cleanup(h);
            return false;
        }
        curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
    }
    pinned_socket ps = {socket_path, -1};
    curl_easy_setopt(h, CURLOPT_UNIX_SOCKET_PATH, socket_path);
    curl_easy_setopt(h, CURLOPT_OPENSOCKETFUNCTION, open_execd_socket);
    curl_easy_setopt(h, CURLOPT_OPENSOCKETDATA, &ps);
    curl_easy_setopt(h, CURLOPT_URL, "http://localhost/ping");
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, discard);
    long status = 0;
    bool ok = curl_easy_perform(h) == CURLE_OK &&
              curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status) == CURLE_OK && status == 200;
    curl_easy_cleanup(h);
    curl_slist_free_all(hdrs);
    if (ps.pin >= 0)
        close(ps.pin);
    return ok;
}
