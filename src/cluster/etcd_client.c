/* etcd client: a curl easy handle per call at a time, taken from a pool of idle ones that keep
 * their connections open between calls, failover across members. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include "cluster/etcd.h"

/* Idle handles kept; more callers at once get handles of their own, cleaned up after. */
#define MOAT_ETCD_IDLE_HANDLES 16

struct moat_etcd {
    char *urls[MOAT_ETCD_ENDPOINTS_MAX];
    size_t url_count;
    long connect_timeout_ms;
    long request_timeout_ms;
    char *tls_ca, *tls_cert, *tls_key; /* NULL: none */
    /* Shares resolved names between the handles. Not connections: curl's connection cache is not
     * safe to share between threads (libcurl's known bug 11.11; a heap corruption was seen with
     * 64 threads calling at once), so each handle keeps its own, and a call takes a whole idle
     * handle instead. */
    CURLSH *share;
    pthread_mutex_t share_mu[CURL_LOCK_DATA_LAST];
    pthread_mutex_t idle_mu;
    CURL *idle[MOAT_ETCD_IDLE_HANDLES]; /* under idle_mu */
    size_t idle_count;
    atomic_size_t preferred; /* the member that answered last */
};

static void share_lock(CURL *h, curl_lock_data data, curl_lock_access access, void *user)
{
    (void)h;
    (void)access;
    moat_etcd *e = user;
    pthread_mutex_lock(&e->share_mu[data]);
}

static void share_unlock(CURL *h, curl_lock_data data, void *user)
{
    (void)h;
    moat_etcd *e = user;
    pthread_mutex_unlock(&e->share_mu[data]);
}

static bool is_set(const char *path)
{
    return path != NULL && path[0] != '\0';
}

/* A copy of an optional path (NULL for none); false when out of memory. */
static bool copy_path(const char *path, char **out)
{
    *out = is_set(path) ? strdup(path) : NULL;
    return *out != NULL || !is_set(path);
}

moat_etcd *moat_etcd_open(const moat_etcd_config *cfg, moat_status *st)
{
    const moat_etcd_tls *tls = &cfg->tls;
    if (is_set(tls->cert) != is_set(tls->key)) {
        moat_status_set(st, MOAT_CODE_INVALID_ARGUMENT, "invalid_config",
                        "etcd TLS: a client certificate and its key go together");
        moat_status_add_detail(st, "setting", is_set(tls->cert) ? "tls_key" : "tls_cert");
        return NULL;
    }
    bool any_tls = is_set(tls->ca) || is_set(tls->cert);
    if (cfg->endpoint_count == 0 || cfg->endpoint_count > MOAT_ETCD_ENDPOINTS_MAX) {
        moat_status_set(st, MOAT_CODE_INVALID_ARGUMENT, "invalid_config",
                        "etcd endpoints: between 1 and %d, not %zu", MOAT_ETCD_ENDPOINTS_MAX,
                        cfg->endpoint_count);
        moat_status_add_detail(st, "setting", "etcd_endpoints");
        return NULL;
    }
    for (size_t i = 0; i < cfg->endpoint_count; i++) {
        const char *u = cfg->endpoints[i];
        if (u == NULL || (strncmp(u, "http://", 7) != 0 && strncmp(u, "https://", 8) != 0) ||
            strlen(u) > 256) {
            moat_status_set(st, MOAT_CODE_INVALID_ARGUMENT, "invalid_config",
                            "etcd endpoint %zu is not an http:// or https:// URL", i);
            moat_status_add_detail(st, "setting", "etcd_endpoints");
            return NULL;
        }
        /* TLS files would go unused with a plain member: a mistake, not a choice. */
        if (any_tls && strncmp(u, "https://", 8) != 0) {
            moat_status_set(st, MOAT_CODE_INVALID_ARGUMENT, "invalid_config",
                            "etcd endpoint %zu is http://, but TLS files are set", i);
            moat_status_add_detail(st, "setting", "etcd_endpoints");
            return NULL;
        }
    }
    moat_etcd *e = calloc(1, sizeof(*e));
    if (e == NULL)
        goto nomem;
    for (int i = 0; i < CURL_LOCK_DATA_LAST; i++)
        pthread_mutex_init(&e->share_mu[i], NULL);
    pthread_mutex_init(&e->idle_mu, NULL);
    e->connect_timeout_ms = cfg->connect_timeout_ms > 0 ? cfg->connect_timeout_ms : 1000;
    e->request_timeout_ms = cfg->request_timeout_ms > 0 ? cfg->request_timeout_ms : 3000;
    if (!copy_path(tls->ca, &e->tls_ca) || !copy_path(tls->cert, &e->tls_cert) ||
        !copy_path(tls->key, &e->tls_key))
        goto nomem;
    for (size_t i = 0; i < cfg->endpoint_count; i++) {
        size_t len = strlen(cfg->endpoints[i]);
        e->urls[i] = strdup(cfg->endpoints[i]);
        if (e->urls[i] == NULL)
            goto nomem;
        e->url_count++;
        if (len > 0 && e->urls[i][len - 1] == '/')
            e->urls[i][len - 1] = '\0';
    }
    e->share = curl_share_init();
    if (e->share == NULL)
        goto nomem;
    curl_share_setopt(e->share, CURLSHOPT_LOCKFUNC, share_lock);
    curl_share_setopt(e->share, CURLSHOPT_UNLOCKFUNC, share_unlock);
    curl_share_setopt(e->share, CURLSHOPT_USERDATA, e);
    curl_share_setopt(e->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
    return e;
nomem:
    moat_etcd_close(e);
    moat_status_set(st, MOAT_CODE_RESOURCE_EXHAUSTED, "out_of_memory", "out of memory");
    return NULL;
}

void moat_etcd_close(moat_etcd *e)
{
    if (e == NULL)
        return;
    for (size_t i = 0; i < e->idle_count; i++)
        curl_easy_cleanup(e->idle[i]);
    if (e->share != NULL)
        curl_share_cleanup(e->share);
    for (size_t i = 0; i < e->url_count; i++)
        free(e->urls[i]);
    free(e->tls_ca);
    free(e->tls_cert);
    free(e->tls_key);
    for (int i = 0; i < CURL_LOCK_DATA_LAST; i++)
        pthread_mutex_destroy(&e->share_mu[i]);
    pthread_mutex_destroy(&e->idle_mu);
    free(e);
}

static size_t on_body(char *data, size_t size, size_t nmemb, void *user)
{
    size_t n = size * nmemb;
    return moat_buf_append(user, data, n) == MOAT_OK ? n : 0;
}

/* Whether a call may go to the next member after one that may have received it. */
static bool repeatable(moat_etcd_call call)
{
    return call == MOAT_ETCD_CALL_RANGE || call == MOAT_ETCD_CALL_LEASE_GRANT ||
           call == MOAT_ETCD_CALL_LEASE_KEEPALIVE || call == MOAT_ETCD_CALL_LEASE_REVOKE;
}

/* An idle handle (its options reset, its connections kept) or a new one; NULL when out of
 * memory. */
static CURL *take_handle(moat_etcd *e)
{
    CURL *h = NULL;
    pthread_mutex_lock(&e->idle_mu);
    if (e->idle_count > 0)
        h = e->idle[--e->idle_count];
    pthread_mutex_unlock(&e->idle_mu);
    return h != NULL ? h : curl_easy_init();
}

/* A call's handle back to the idle ones, or cleaned up when enough are idle. NULL is fine. Its
 * options are reset at once: they point into the call's buffers. */
static void give_back(moat_etcd *e, CURL *h)
{
    if (h == NULL)
        return;
    curl_easy_reset(h);
    pthread_mutex_lock(&e->idle_mu);
    bool kept = e->idle_count < MOAT_ETCD_IDLE_HANDLES;
    if (kept)
        e->idle[e->idle_count++] = h;
    pthread_mutex_unlock(&e->idle_mu);
    if (!kept)
        curl_easy_cleanup(h);
}

/* A POST of body (JSON) to url with what every call to a member sets, the watch's stream too:
 * the shared name cache, the connect timeout, the error text into errbuf, the TLS settings
 * (verification, the CA bundle, the client certificate), on an idle handle's connections when
 * one is idle. NULL (st set) when out of memory; the caller gives the handle back (give_back)
 * before it frees *headers. */
static CURL *easy_post(moat_etcd *e, const char *url, const char *body, struct curl_slist **headers,
                       char *errbuf, moat_status *st)
{
    CURL *h = take_handle(e);
    *headers = curl_slist_append(NULL, "Content-Type: application/json");
    if (h == NULL || *headers == NULL) {
        curl_slist_free_all(*headers);
        *headers = NULL;
        give_back(e, h);
        moat_status_set(st, MOAT_CODE_RESOURCE_EXHAUSTED, "out_of_memory", "curl_easy_init");
        return NULL;
    }
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_SHARE, e->share);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, *headers);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, e->connect_timeout_ms);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
    /* curl's defaults, set so that no build or later change can turn them off. */
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 2L);
    if (e->tls_ca != NULL)
        curl_easy_setopt(h, CURLOPT_CAINFO, e->tls_ca);
    if (e->tls_cert != NULL) {
        curl_easy_setopt(h, CURLOPT_SSLCERT, e->tls_cert);
        curl_easy_setopt(h, CURLOPT_SSLKEY, e->tls_key);
    }
    return h;
}

/* curl's codes for a TLS handshake that failed, which ends before the request is sent. */
static bool tls_failed(CURLcode rc)
{
    switch (rc) {
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
        return true;
    default:
        return false;
    }
}

/* Under TLS 1.3 a member refuses our client certificate (or its absence) once our side of the
 * handshake is done, with an alert and a close. On the connection the call has just made, curl
 * then fails sending the request, or meets the alert in place of the answer, or fails reading
 * one after a send that failed (its first error, in errbuf, says which). Either way the member
 * acted on no request. h: the call's handle, before its cleanup. */
static bool refused_after_handshake(CURL *h, CURLcode rc, const char *errbuf)
{
    long made = 0;
    curl_off_t handshake_us = 0;
    if (rc != CURLE_SEND_ERROR && rc != CURLE_RECV_ERROR)
        return false;
    if (curl_easy_getinfo(h, CURLINFO_NUM_CONNECTS, &made) != CURLE_OK || made == 0 ||
        curl_easy_getinfo(h, CURLINFO_APPCONNECT_TIME_T, &handshake_us) != CURLE_OK ||
        handshake_us == 0)
        return false;
    return rc == CURLE_SEND_ERROR || strstr(errbuf, "alert") != NULL ||
           strstr(errbuf, "Failed sending") != NULL;
}

/* What a refusal of our client certificate looks like, for a status's message: curl's own words
 * may be about the socket. "" for any other failure. */
static const char *refusal_hint(const moat_etcd *e, CURLcode rc, bool refused)
{
    if (e->tls_cert == NULL && (refused || rc == CURLE_SSL_CONNECT_ERROR))
        return " (no client certificate given, which a member with --client-cert-auth refuses)";
    return refused ? " (the member ended the connection after the TLS handshake: it refuses our "
                     "client certificate)"
                   : "";
}

typedef enum attempt_outcome {
    ATTEMPT_ANSWERED,  /* *code holds the parsed answer's */
    ATTEMPT_NOT_SENT,  /* no connection or no TLS session: the next member may have it */
    ATTEMPT_NO_ANSWER, /* sent, but no full answer in time */
} attempt_outcome;

static attempt_outcome attempt(moat_etcd *e, const char *url, moat_etcd_call call, const char *body,
                               moat_etcd_result *res, moat_code *code, moat_status *st)
{
    char full[300];
    snprintf(full, sizeof(full), "%s%s", url, moat_etcd_call_path(call));
    moat_buf buf;
    moat_buf_init(&buf, MOAT_ETCD_ANSWER_MAX);
    char errbuf[CURL_ERROR_SIZE] = "";
    struct curl_slist *headers = NULL;
    CURL *h = easy_post(e, full, body, &headers, errbuf, st);
    if (h == NULL) {
        *code = st->code;
        return ATTEMPT_ANSWERED;
    }
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, e->request_timeout_ms);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &buf);
    CURLcode rc = curl_easy_perform(h);
    long http_status = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &http_status);
    bool refused = refused_after_handshake(h, rc, errbuf);
    give_back(e, h);
    curl_slist_free_all(headers);
    attempt_outcome out = ATTEMPT_ANSWERED;
    if (rc == CURLE_WRITE_ERROR) {
        moat_status_set(st, MOAT_CODE_INTERNAL, "etcd_bad_answer",
                        "etcd member %s answered %s with over %u bytes", url,
                        moat_etcd_call_path(call), MOAT_ETCD_ANSWER_MAX);
        *code = st->code;
    } else if (rc != CURLE_OK) {
        bool tls = tls_failed(rc) || refused;
        /* What a member serving TLS answers a plain request with: say so. */
        const char *hint = rc == CURLE_GOT_NOTHING && strncmp(url, "http://", 7) == 0
                               ? " (a member that serves https:// answers http:// so)"
                               : refusal_hint(e, rc, refused);
        moat_status_set(st, MOAT_CODE_UNAVAILABLE, tls ? "etcd_tls_failed" : "etcd_unavailable",
                        "etcd member %s, %s: %s%s", url, moat_etcd_call_path(call),
                        errbuf[0] != '\0' ? errbuf : curl_easy_strerror(rc), hint);
        moat_status_add_detail(st, "etcd_endpoint", url);
        *code = st->code;
        out = tls || rc == CURLE_COULDNT_CONNECT || rc == CURLE_COULDNT_RESOLVE_HOST
                  ? ATTEMPT_NOT_SENT
                  : ATTEMPT_NO_ANSWER;
    } else {
        *code = moat_etcd_parse(call, http_status, (const char *)buf.data, buf.len, res, st);
    }
    moat_buf_free(&buf);
    return out;
}

static moat_code perform(moat_etcd *e, moat_etcd_call call, char *body, moat_err build_err,
                         moat_etcd_result *res, moat_status *st)
{
    memset(res, 0, sizeof(*res));
    if (body == NULL) {
        if (build_err == MOAT_E_NOMEM)
            moat_status_set(st, MOAT_CODE_RESOURCE_EXHAUSTED, "out_of_memory", "out of memory");
        else
            moat_status_set(st, MOAT_CODE_INVALID_ARGUMENT, "etcd_bad_request",
                            "etcd %s: a key, value or operation count out of bounds",
                            moat_etcd_call_path(call));
        return st->code;
    }
    size_t first = atomic_load(&e->preferred) % e->url_count;
    moat_code code = MOAT_CODE_UNAVAILABLE;
    for (size_t k = 0; k < e->url_count; k++) {
        size_t i = (first + k) % e->url_count;
        moat_etcd_result_free(res);
        attempt_outcome out = attempt(e, e->urls[i], call, body, res, &code, st);
        bool next =
            out == ATTEMPT_NOT_SENT ||
            (repeatable(call) && (out == ATTEMPT_NO_ANSWER || code == MOAT_CODE_UNAVAILABLE));
        if (out == ATTEMPT_ANSWERED && code != MOAT_CODE_UNAVAILABLE)
            atomic_store(&e->preferred, i);
        if (!next)
            break;
    }
    free(body);
    return code;
}

moat_code moat_etcd_put(moat_etcd *e, moat_slice key, moat_slice value, int64_t lease,
                        moat_etcd_result *res, moat_status *st)
{
    moat_err err;
    char *body = moat_etcd_req_put(key, value, lease, &err);
    return perform(e, MOAT_ETCD_CALL_PUT, body, err, res, st);
}

moat_code moat_etcd_range(moat_etcd *e, moat_slice key, bool prefix, int64_t limit,
                          moat_etcd_result *res, moat_status *st)
{
    moat_err err;
    char *body = moat_etcd_req_range(key, prefix, limit, &err);
    return perform(e, MOAT_ETCD_CALL_RANGE, body, err, res, st);
}

moat_code moat_etcd_range_to(moat_etcd *e, moat_slice key, moat_slice end, int64_t limit,
                             moat_etcd_result *res, moat_status *st)
{
    moat_err err;
    char *body = moat_etcd_req_range_to(key, end, limit, &err);
    return perform(e, MOAT_ETCD_CALL_RANGE, body, err, res, st);
}

moat_code moat_etcd_delete(moat_etcd *e, moat_slice key, bool prefix, moat_etcd_result *res,
                           moat_status *st)
{
    moat_err err;
    char *body = moat_etcd_req_delete(key, prefix, &err);
    return perform(e, MOAT_ETCD_CALL_DELETE, body, err, res, st);
}

moat_code moat_etcd_txn(moat_etcd *e, const moat_etcd_txn_spec *txn, moat_etcd_result *res,
                        moat_status *st)
{
    moat_err err;
    char *body = moat_etcd_req_txn(txn, &err);
    return perform(e, MOAT_ETCD_CALL_TXN, body, err, res, st);
}

moat_code moat_etcd_lease_grant(moat_etcd *e, int64_t ttl_seconds, moat_etcd_result *res,
                                moat_status *st)
{
    moat_err err;
    char *body = moat_etcd_req_lease_grant(ttl_seconds, &err);
    return perform(e, MOAT_ETCD_CALL_LEASE_GRANT, body, err, res, st);
}

static moat_code lease_call(moat_etcd *e, moat_etcd_call call, int64_t lease, moat_etcd_result *res,
                            moat_status *st)
{
    moat_err err;
    char *body = moat_etcd_req_lease_id(lease, &err);
    return perform(e, call, body, err, res, st);
}

moat_code moat_etcd_lease_keepalive(moat_etcd *e, int64_t lease, moat_etcd_result *res,
                                    moat_status *st)
{
    return lease_call(e, MOAT_ETCD_CALL_LEASE_KEEPALIVE, lease, res, st);
}

moat_code moat_etcd_lease_revoke(moat_etcd *e, int64_t lease, moat_etcd_result *res,
                                 moat_status *st)
{
    return lease_call(e, MOAT_ETCD_CALL_LEASE_REVOKE, lease, res, st);
}

/* A watch stream as it arrives: whole lines go to fn. */
typedef struct watch_ctx {
    moat_buf buf;
    moat_etcd_watch_fn fn;
    void *ud;
    const atomic_bool *stop;
    bool ended;      /* fn said so, or a message could not be read */
    moat_code code;  /* of that message */
    moat_status *st; /* its status */
} watch_ctx;

static size_t on_watch_body(char *data, size_t size, size_t nmemb, void *user)
{
    watch_ctx *w = user;
    size_t n = size * nmemb;
    if (moat_buf_append(&w->buf, data, n) != MOAT_OK) {
        moat_status_set(w->st, MOAT_CODE_INTERNAL, "etcd_bad_answer",
                        "etcd's watch stream sent a message over %u bytes", MOAT_ETCD_ANSWER_MAX);
        w->code = w->st->code;
        w->ended = true;
        return 0;
    }
    for (;;) {
        uint8_t *nl = memchr(w->buf.data, '\n', w->buf.len);
        if (nl == NULL)
            return n;
        size_t line = (size_t)(nl - w->buf.data);
        moat_etcd_watch_msg m;
        memset(&m, 0, sizeof(m));
        w->code = moat_etcd_parse_watch((const char *)w->buf.data, line, &m, w->st);
        bool go_on = w->code == MOAT_CODE_OK && w->fn(w->ud, &m);
        moat_etcd_watch_msg_free(&m);
        moat_buf_consume(&w->buf, line + 1);
        if (!go_on) {
            w->ended = true;
            return 0;
        }
    }
}

static int on_watch_progress(void *user, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                             curl_off_t ulnow)
{
    (void)dltotal;
    (void)dlnow;
    (void)ultotal;
    (void)ulnow;
    watch_ctx *w = user;
    return atomic_load(w->stop) ? 1 : 0;
}

moat_code moat_etcd_watch(moat_etcd *e, moat_slice key, moat_slice end, int64_t start_revision,
                          moat_etcd_watch_fn fn, void *ud, const atomic_bool *stop, moat_status *st)
{
    moat_err err;
    char *body = moat_etcd_req_watch(key, end, start_revision, &err);
    if (body == NULL) {
        moat_status_set(st, MOAT_CODE_INVALID_ARGUMENT, "etcd_bad_request",
                        "etcd /v3/watch: a key out of bounds");
        return st->code;
    }
    watch_ctx w = {{0}, fn, ud, stop, false, MOAT_CODE_OK, st};
    moat_code code = MOAT_CODE_UNAVAILABLE;
    size_t first = atomic_load(&e->preferred) % e->url_count;
    for (size_t k = 0; k < e->url_count && !atomic_load(stop); k++) {
        const char *url = e->urls[(first + k) % e->url_count];
        char full[300], errbuf[CURL_ERROR_SIZE] = "";
        snprintf(full, sizeof(full), "%s/v3/watch", url);
        struct curl_slist *headers = NULL;
        CURL *h = easy_post(e, full, body, &headers, errbuf, st);
        if (h == NULL) {
            code = st->code;
            break;
        }
        /* A member cut off from its peers keeps a watch open and silent; asked to (etcd's own
         * client's WithRequireLeader, as gRPC metadata the gateway passes on from this header),
         * etcd ends the watch once the member has lost its leader. */
        struct curl_slist *more = curl_slist_append(headers, "Grpc-Metadata-hasleader: true");
        if (more != NULL) {
            headers = more;
            curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
        }
        moat_buf_init(&w.buf, MOAT_ETCD_ANSWER_MAX);
        /* A member whose host vanished sends no FIN: keepalives find out within seconds. */
        curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
        curl_easy_setopt(h, CURLOPT_TCP_KEEPIDLE, 2L);
        curl_easy_setopt(h, CURLOPT_TCP_KEEPINTVL, 1L);
        curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_watch_body);
        curl_easy_setopt(h, CURLOPT_WRITEDATA, &w);
        curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
        curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, on_watch_progress);
        curl_easy_setopt(h, CURLOPT_XFERINFODATA, &w);
        CURLcode rc = curl_easy_perform(h);
        bool refused = refused_after_handshake(h, rc, errbuf);
        give_back(e, h);
        curl_slist_free_all(headers);
        moat_buf_free(&w.buf);
        if (w.ended || rc == CURLE_ABORTED_BY_CALLBACK) {
            code = w.ended ? w.code : MOAT_CODE_OK;
            if (code == MOAT_CODE_OK)
                moat_status_clear(st);
            break;
        }
        bool tls = tls_failed(rc) || refused;
        moat_status_set(st, MOAT_CODE_UNAVAILABLE, tls ? "etcd_tls_failed" : "etcd_unavailable",
                        "etcd member %s, /v3/watch: %s%s", url,
                        rc != CURLE_OK ? (errbuf[0] != '\0' ? errbuf : curl_easy_strerror(rc))
                                       : "the stream ended",
                        refusal_hint(e, rc, refused));
        moat_status_add_detail(st, "etcd_endpoint", url);
        code = st->code;
        /* Only a member that never took the request is worth skipping for the next. */
        if (!tls && rc != CURLE_COULDNT_CONNECT && rc != CURLE_COULDNT_RESOLVE_HOST)
            break;
    }
    free(body);
    return code;
}
