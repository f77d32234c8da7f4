/* The bridge core: configuration, the curl multi handle driven by an external
 * loop (multi_socket), and the request plumbing every call shares. */
#include "internal.h"

#include <unistd.h>

#include "common/unix_socket.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

void moat_bridge_config_default(moat_bridge_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->max_line = MOAT_BRIDGE_DEFAULT_MAX_LINE;
    cfg->oversize = MOAT_BRIDGE_OVERSIZE_FAIL;
    cfg->replay_bytes = 4u << 20;
    cfg->idle_timeout_ms = 30000;
    cfg->connect_timeout_ms = 10000;
    cfg->call_timeout_ms = 60000;
    cfg->retention_ms = 300000;
    cfg->max_body = 16u << 20;
    cfg->binary_output = true;
}

static int on_socket(CURL *easy, curl_socket_t s, int what, void *ud, void *socketp)
{
    (void)easy;
    (void)socketp;
    moat_bridge *b = ud;
    if (b->sock_fn == NULL)
        return 0;
    int mask = 0;
    if (what == CURL_POLL_REMOVE)
        mask = MOAT_BRIDGE_POLL_REMOVE;
    if (what == CURL_POLL_IN || what == CURL_POLL_INOUT)
        mask |= MOAT_BRIDGE_POLL_IN;
    if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT)
        mask |= MOAT_BRIDGE_POLL_OUT;
    b->sock_fn(b->loop_ud, (int)s, mask);
    return 0;
}

static int on_timer(CURLM *multi, long timeout_ms, void *ud)
{
    (void)multi;
    moat_bridge *b = ud;
    if (b->timer_fn != NULL)
        b->timer_fn(b->loop_ud, timeout_ms);
    return 0;
}

moat_err moat_bridge_new(const moat_bridge_config *cfg, moat_bridge **out)
{
    static int curl_ready;
    if (!curl_ready) {
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
            return MOAT_E_IO;
        curl_ready = 1;
    }
    moat_bridge *b = calloc(1, sizeof(*b));
    if (b == NULL)
        return MOAT_E_NOMEM;
    if (cfg != NULL)
        b->cfg = *cfg;
    else
        moat_bridge_config_default(&b->cfg);
    moat_bridge_config def;
    moat_bridge_config_default(&def);
    if (b->cfg.max_line == 0)
        b->cfg.max_line = def.max_line;
    if (b->cfg.replay_bytes < (256u << 10))
        b->cfg.replay_bytes = 256u << 10;
    if (b->cfg.idle_timeout_ms == 0)
        b->cfg.idle_timeout_ms = def.idle_timeout_ms;
    if (b->cfg.connect_timeout_ms == 0)
        b->cfg.connect_timeout_ms = def.connect_timeout_ms;
    if (b->cfg.call_timeout_ms == 0)
        b->cfg.call_timeout_ms = def.call_timeout_ms;
    if (b->cfg.max_body == 0)
        b->cfg.max_body = def.max_body;
    b->multi = curl_multi_init();
    if (b->multi == NULL) {
        free(b);
        return MOAT_E_NOMEM;
    }
    curl_multi_setopt(b->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(b->multi, CURLMOPT_SOCKETDATA, b);
    curl_multi_setopt(b->multi, CURLMOPT_TIMERFUNCTION, on_timer);
    curl_multi_setopt(b->multi, CURLMOPT_TIMERDATA, b);
    *out = b;
    return MOAT_OK;
}

void moat_bridge_set_loop(moat_bridge *b, moat_bridge_socket_fn sock, moat_bridge_timer_fn timer,
                          void *ud)
{
    b->sock_fn = sock;
    b->timer_fn = timer;
    b->loop_ud = ud;
}

moat_err moat_bridge_attach_uv(moat_bridge *b, struct uv_loop_s *loop)
{
    return moat__uv_set(b, loop);
}

static void finish_req(bridge_req *r, CURLcode rc)
{
    moat_bridge *b = r->b;
    if (r->in_multi) {
        curl_multi_remove_handle(b->multi, r->easy);
        r->in_multi = false;
    }
    if (r->prev != NULL)
        r->prev->next = r->next;
    else if (b->reqs == r)
        b->reqs = r->next;
    if (r->next != NULL)
        r->next->prev = r->prev;
    r->next = r->prev = NULL;
    if (moat_log_get_level() <= MOAT_LOG_DEBUG) {
        /* Where a slow call's time went: connecting to execd, its first byte, the rest. */
        curl_off_t conn_us = 0, start_us = 0, total_us = 0;
        long connects = 0;
        char *url = NULL;
        curl_easy_getinfo(r->easy, CURLINFO_CONNECT_TIME_T, &conn_us);
        curl_easy_getinfo(r->easy, CURLINFO_STARTTRANSFER_TIME_T, &start_us);
        curl_easy_getinfo(r->easy, CURLINFO_TOTAL_TIME_T, &total_us);
        curl_easy_getinfo(r->easy, CURLINFO_NUM_CONNECTS, &connects);
        curl_easy_getinfo(r->easy, CURLINFO_EFFECTIVE_URL, &url);
        moat_log(MOAT_LOG_DEBUG, "execd_call_done",
                 "url=\"%s\" curl_code=%d new_connections=%ld connect_us=%lld first_byte_us=%lld "
                 "total_us=%lld",
                 url != NULL ? url : "", (int)rc, connects, (long long)conn_us, (long long)start_us,
                 (long long)total_us);
    }
    if (r->done != NULL)
        r->done(r, r->cancelled ? CURLE_ABORTED_BY_CALLBACK : rc);
    moat__req_discard(r);
}

static void process_reap(moat_bridge *b)
{
    while (b->in_curl == 0 && b->reap != NULL) {
        bridge_req *r = b->reap;
        b->reap = r->reap_next;
        finish_req(r, CURLE_ABORTED_BY_CALLBACK);
    }
    if (b->in_curl == 0 && b->unpause_pending) {
        b->unpause_pending = false;
        moat__exec_unpause_all(b);
    }
    if (b->in_curl == 0 && b->uploads_pending) {
        b->uploads_pending = false;
        moat__terminal_start_uploads(b);
    }
}

static void check_done(moat_bridge *b)
{
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(b->multi, &left)) != NULL) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        bridge_req *r = NULL;
        CURL *easy = msg->easy_handle;
        CURLcode rc = msg->data.result;
        curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&r);
        if (r == NULL || r->reap_pending)
            continue;
        finish_req(r, rc);
    }
    process_reap(b);
}

void moat_bridge_socket_action(moat_bridge *b, int fd, int events)
{
    int mask = 0, running = 0;
    if (moat__terminal_socket_action(b, fd))
        return;
    if (events & MOAT_BRIDGE_POLL_IN)
        mask |= CURL_CSELECT_IN;
    if (events & MOAT_BRIDGE_POLL_OUT)
        mask |= CURL_CSELECT_OUT;
    b->in_curl++;
    curl_multi_socket_action(b->multi, (curl_socket_t)fd, mask, &running);
    b->in_curl--;
    check_done(b);
    moat__exec_sweep(b, false);
}

void moat_bridge_timeout(moat_bridge *b)
{
    int running = 0;
    b->in_curl++;
    curl_multi_socket_action(b->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    b->in_curl--;
    check_done(b);
    moat__exec_sweep(b, false);
    moat__terminal_sweep(b);
}

void moat_bridge_free(moat_bridge *b)
{
    if (b == NULL)
        return;
    b->freeing = true;
    while (b->reqs != NULL) {
        b->reqs->cancelled = true;
        finish_req(b->reqs, CURLE_ABORTED_BY_CALLBACK);
    }
    moat__exec_free_all(b);
    curl_multi_cleanup(b->multi);
    moat__uv_release(b);
    free(b);
}

/* ------------------------------------------------------------ requests */

char *moat__escape(const char *s)
{
    return curl_easy_escape(NULL, s, 0);
}

static size_t header_cb(char *p, size_t sz, size_t nm, void *ud)
{
    bridge_req *r = ud;
    size_t n = sz * nm;
    if (n >= 5 && memcmp(p, "HTTP/", 5) == 0) {
        /* a new response (after a 100 Continue, say): forget the previous one */
        r->moat_binary = false;
        r->has_tail_cursor = false;
        return n;
    }
    const char *colon = memchr(p, ':', n);
    if (colon == NULL)
        return n;
    size_t klen = (size_t)(colon - p);
    const char *v = colon + 1;
    size_t vlen = n - klen - 1;
    while (vlen > 0 && (*v == ' ' || *v == '\t')) {
        v++;
        vlen--;
    }
    while (vlen > 0 && (v[vlen - 1] == '\r' || v[vlen - 1] == '\n' || v[vlen - 1] == ' '))
        vlen--;
    if (klen == 13 && strncasecmp(p, "X-Moat-Output", 13) == 0) {
        r->moat_binary = vlen == 6 && strncasecmp(v, "binary", 6) == 0;
    } else if (klen == 26 && strncasecmp(p, "EXECD-COMMANDS-TAIL-CURSOR", 26) == 0) {
        uint64_t c = 0;
        bool ok = vlen > 0 && vlen <= 19;
        for (size_t i = 0; ok && i < vlen; i++) {
            if (!isdigit((unsigned char)v[i]))
                ok = false;
            else
                c = c * 10 + (uint64_t)(v[i] - '0');
        }
        r->has_tail_cursor = ok;
        r->tail_cursor = c;
    }
    return n;
}

static size_t write_cb(char *p, size_t sz, size_t nm, void *ud)
{
    bridge_req *r = ud;
    size_t n = sz * nm;
    if (r->cancelled)
        return 0;
    if (r->http_status == 0)
        curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &r->http_status);
    /* 101: a WebSocket's frames (terminal.c) */
    bool ok = (r->http_status >= 200 && r->http_status < 300) || r->http_status == 101;
    if (ok && r->write != NULL)
        return r->write(r, p, n);
    size_t room = r->body.max - r->body.len;
    if (n > room) {
        moat_buf_append(&r->body, p, room);
        r->body_full = true;
        /* an error body only needs its start; a JSON answer is refused */
        if (!ok)
            return n;
        return 0;
    }
    if (moat_buf_append(&r->body, p, n) != MOAT_OK)
        return 0;
    return n;
}

static moat_log_limit refused_socket_log = MOAT_LOG_LIMIT_INIT;

static void unpin_socket(bridge_req *r)
{
    if (r->socket_pin >= 0)
        close(r->socket_pin);
    r->socket_pin = -1;
}

/* curl connects to the address this leaves: the socket file itself, pinned, so neither a link
 * nor a non-socket that the sandbox planted in its socket directory is ever connected to
 * (docs/SECURITY.md). curl's own connection cache stays keyed on the real path. */
static curl_socket_t open_unix_socket(void *ud, curlsocktype purpose, struct curl_sockaddr *address)
{
    bridge_req *r = ud;
    if (purpose != CURLSOCKTYPE_IPCXN || address->family != AF_UNIX)
        return CURL_SOCKET_BAD;
    unpin_socket(r);
    struct sockaddr_un sa;
    socklen_t len;
    r->socket_pin =
        moat_unix_pin(r->unix_socket, &sa, &len, r->connect_why, sizeof(r->connect_why));
    if (r->socket_pin < 0) {
        r->connect_errno = errno;
        if (errno == ELOOP || errno == ENOTSOCK)
            moat_log_limited(&refused_socket_log, MOAT_LOG_WARN, "execd_socket_refused",
                             "why=\"%s\"", r->connect_why);
        return CURL_SOCKET_BAD;
    }
    memcpy(&address->addr, &sa, len);
    address->addrlen = len;
    curl_socket_t fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        r->connect_errno = errno;
        snprintf(r->connect_why, sizeof(r->connect_why), "socket: %s", strerror(errno));
        unpin_socket(r);
    }
    return fd;
}

/* The connection is up (and the request not yet sent): the pin has done its work. */
static int connected(void *ud, char *conn_primary_ip, char *conn_local_ip, int conn_primary_port,
                     int conn_local_port)
{
    (void)conn_primary_ip;
    (void)conn_local_ip;
    (void)conn_primary_port;
    (void)conn_local_port;
    unpin_socket(ud);
    return CURL_PREREQFUNC_OK;
}

bridge_req *moat__req_new(moat_bridge *b, const moat_bridge_endpoint *ep, const char *method,
                          const char *path, const char *json_body, moat_status *st)
{
    if (ep == NULL || (ep->unix_socket == NULL && (ep->base_url == NULL || !*ep->base_url))) {
        moat_status_set(st, MOAT_CODE_INVALID_ARGUMENT, "bad_endpoint",
                        "an execd endpoint needs a unix socket or a base URL");
        return NULL;
    }
    bridge_req *r = calloc(1, sizeof(*r));
    if (r == NULL) {
        moat_status_set(st, MOAT_CODE_RESOURCE_EXHAUSTED, "no_memory", "out of memory");
        return NULL;
    }
    r->b = b;
    r->socket_pin = -1;
    moat_buf_init(&r->body, b->cfg.max_body);
    r->easy = curl_easy_init();
    const char *base = ep->unix_socket != NULL ? "http://localhost" : ep->base_url;
    size_t blen = strlen(base);
    while (blen > 0 && base[blen - 1] == '/')
        blen--;
    size_t ulen = blen + strlen(path) + 1;
    char *url = malloc(ulen);
    if (r->easy == NULL || url == NULL) {
        free(url);
        moat__req_discard(r);
        moat_status_set(st, MOAT_CODE_RESOURCE_EXHAUSTED, "no_memory", "out of memory");
        return NULL;
    }
    snprintf(url, ulen, "%.*s%s", (int)blen, base, path);
    CURL *e = r->easy;
    curl_easy_setopt(e, CURLOPT_URL, url);
    free(url);
    if (ep->unix_socket != NULL) {
        r->unix_socket = strdup(ep->unix_socket);
        if (r->unix_socket == NULL) {
            moat__req_discard(r);
            moat_status_set(st, MOAT_CODE_RESOURCE_EXHAUSTED, "no_memory", "out of memory");
            return NULL;
        }
        curl_easy_setopt(e, CURLOPT_UNIX_SOCKET_PATH, ep->unix_socket);
        curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, open_unix_socket);
        curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, r);
        curl_easy_setopt(e, CURLOPT_PREREQFUNCTION, connected);
        curl_easy_setopt(e, CURLOPT_PREREQDATA, r);
    }
    curl_easy_setopt(e, CURLOPT_PRIVATE, (char *)r);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->errbuf);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)b->cfg.connect_timeout_ms);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)b->cfg.call_timeout_ms);
    curl_easy_setopt(e, CURLOPT_BUFFERSIZE, (long)MOAT_BRIDGE_CHUNK);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, header_cb);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "moat-bridge/" MOAT_VERSION);
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
    if (strcmp(method, "GET") == 0)
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, NULL);
    r->hdrs = curl_slist_append(r->hdrs, "Expect:");
    if (ep->access_token != NULL && *ep->access_token) {
        size_t n = strlen(ep->access_token) + 32;
        char *h = malloc(n);
        if (h != NULL) {
            snprintf(h, n, "X-EXECD-ACCESS-TOKEN: %s", ep->access_token);
            r->hdrs = curl_slist_append(r->hdrs, h);
            free(h);
        }
    }
    if (json_body != NULL) {
        r->post = strdup(json_body);
        if (r->post == NULL) {
            moat__req_discard(r);
            moat_status_set(st, MOAT_CODE_RESOURCE_EXHAUSTED, "no_memory", "out of memory");
            return NULL;
        }
        r->hdrs = curl_slist_append(r->hdrs, "Content-Type: application/json");
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, r->post);
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)strlen(r->post));
    } else if (strcmp(method, "POST") == 0) {
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, "");
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, 0L);
    }
    return r;
}

void moat__req_chunked_body(bridge_req *r, curl_read_callback read, void *ud)
{
    r->hdrs = curl_slist_append(r->hdrs, "Content-Type: application/octet-stream");
    r->hdrs = curl_slist_append(r->hdrs, "Transfer-Encoding: chunked");
    curl_easy_setopt(r->easy, CURLOPT_POSTFIELDS, NULL);
    curl_easy_setopt(r->easy, CURLOPT_CUSTOMREQUEST, NULL);
    curl_easy_setopt(r->easy, CURLOPT_POST, 1L);
    curl_easy_setopt(r->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)-1);
    curl_easy_setopt(r->easy, CURLOPT_READFUNCTION, read);
    curl_easy_setopt(r->easy, CURLOPT_READDATA, ud);
}

moat_err moat__req_start(bridge_req *r, moat_status *st)
{
    moat_bridge *b = r->b;
    curl_easy_setopt(r->easy, CURLOPT_HTTPHEADER, r->hdrs);
    if (curl_multi_add_handle(b->multi, r->easy) != CURLM_OK) {
        moat__req_discard(r);
        moat_status_set(st, MOAT_CODE_INTERNAL, "curl_failed", "curl_multi_add_handle failed");
        return MOAT_E_IO;
    }
    r->in_multi = true;
    r->next = b->reqs;
    if (b->reqs != NULL)
        b->reqs->prev = r;
    b->reqs = r;
    return MOAT_OK;
}

void moat__req_discard(bridge_req *r)
{
    if (r->easy != NULL)
        curl_easy_cleanup(r->easy);
    if (r->mime != NULL)
        curl_mime_free(r->mime);
    curl_slist_free_all(r->hdrs);
    free(r->post);
    unpin_socket(r);
    free(r->unix_socket);
    moat_buf_free(&r->body);
    free(r);
}

void moat__req_cancel(bridge_req *r)
{
    if (r->cancelled)
        return;
    r->cancelled = true;
    moat_bridge *b = r->b;
    if (b->in_curl > 0) {
        r->reap_pending = true;
        r->reap_next = b->reap;
        b->reap = r;
        return;
    }
    finish_req(r, CURLE_ABORTED_BY_CALLBACK);
}

void moat__req_unpause(bridge_req *r)
{
    moat_bridge *b = r->b;
    b->in_curl++;
    curl_easy_pause(r->easy, CURLPAUSE_CONT);
    b->in_curl--;
    if (b->in_curl == 0)
        process_reap(b);
}

/* Copies the body as printable text, bounded. */
static void body_text(const moat_buf *body, char *out, size_t cap)
{
    size_t k = 0;
    for (size_t i = 0; i < body->len && k + 1 < cap; i++) {
        unsigned char c = body->data[i];
        out[k++] = (c < 0x20 || c == 0x7f) ? ' ' : (char)c;
    }
    out[k] = '\0';
}

/* execd's error body is {"code","message"}; 401 has {"error"}. */
static void execd_error_fields(const moat_buf *body, char *code, size_t ccap, char *msg,
                               size_t mcap)
{
    code[0] = msg[0] = '\0';
    const char *keys[] = {"\"code\"", "\"message\"", "\"error\""};
    for (int k = 0; k < 3; k++) {
        const char *hit = NULL;
        size_t klen = strlen(keys[k]);
        for (size_t i = 0; i + klen <= body->len; i++) {
            if (memcmp(body->data + i, keys[k], klen) == 0) {
                hit = (const char *)body->data + i + klen;
                break;
            }
        }
        if (hit == NULL)
            continue;
        const char *end = (const char *)body->data + body->len;
        while (hit < end && (*hit == ' ' || *hit == ':'))
            hit++;
        if (hit >= end || *hit != '"')
            continue;
        hit++;
        char *dst = k == 0 ? code : msg;
        size_t cap = k == 0 ? ccap : mcap;
        if (k == 2 && msg[0] != '\0')
            continue;
        size_t j = 0;
        while (hit < end && *hit != '"' && j + 1 < cap) {
            if (*hit == '\\' && hit + 1 < end)
                hit++;
            unsigned char c = (unsigned char)*hit++;
            dst[j++] = c < 0x20 ? ' ' : (char)c;
        }
        dst[j] = '\0';
    }
}

void moat__req_fail_status(bridge_req *r, CURLcode rc, moat_status *st)
{
    if (r->connect_errno != 0) {
        bool planted = r->connect_errno == ELOOP || r->connect_errno == ENOTSOCK;
        moat_status_set(st, MOAT_CODE_UNAVAILABLE,
                        planted ? "execd_socket_refused" : "execd_unreachable", "execd: %s",
                        r->connect_why);
        return;
    }
    if (r->cancelled || rc == CURLE_ABORTED_BY_CALLBACK) {
        moat_status_set(st, MOAT_CODE_CANCELLED, "cancelled", "the call was cancelled");
        return;
    }
    if (r->http_status == 0)
        curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &r->http_status);
    if (rc == CURLE_OK || (r->http_status >= 300 && rc == CURLE_WRITE_ERROR)) {
        if (r->http_status >= 200 && r->http_status < 300) {
            moat_status_set(st, MOAT_CODE_OK, NULL, NULL);
            return;
        }
        char code[64], msg[256], text[MOAT_BRIDGE_ERROR_BODY_MAX], num[16];
        execd_error_fields(&r->body, code, sizeof(code), msg, sizeof(msg));
        body_text(&r->body, text, sizeof(text));
        moat_status_set(st, moat_code_from_http(r->http_status), "execd_api_error",
                        "execd answered HTTP %ld%s%s%s%s", r->http_status, code[0] ? " " : "", code,
                        msg[0] ? ": " : "", msg[0] ? msg : text);
        snprintf(num, sizeof(num), "%ld", r->http_status);
        moat_status_add_detail(st, "http_status", num);
        if (code[0])
            moat_status_add_detail(st, "execd_code", code);
        moat_status_add_detail(st, "body", text);
        return;
    }
    const char *why = r->errbuf[0] ? r->errbuf : curl_easy_strerror(rc);
    switch (rc) {
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
        moat_status_set(st, MOAT_CODE_UNAVAILABLE, "execd_unreachable", "execd: %s", why);
        break;
    case CURLE_OPERATION_TIMEDOUT:
        if (r->http_status == 0 && r->body.len == 0)
            moat_status_set(st, MOAT_CODE_UNAVAILABLE, "execd_silent",
                            "execd did not answer in time: %s", why);
        else
            moat_status_set(st, MOAT_CODE_UNAVAILABLE, "execd_silent", "execd went silent: %s",
                            why);
        break;
    case CURLE_PARTIAL_FILE:
        moat_status_set(st, MOAT_CODE_UNAVAILABLE, "execd_stream_truncated",
                        "execd's response was cut short: %s", why);
        break;
    case CURLE_WRITE_ERROR:
        if (r->body_full) {
            moat_status_set(st, MOAT_CODE_RESOURCE_EXHAUSTED, "execd_body_too_big",
                            "execd's answer is over %zu bytes", r->b->cfg.max_body);
            break;
        }
        moat_status_set(st, MOAT_CODE_INTERNAL, "bridge_write_failed", "%s", why);
        break;
    default:
        moat_status_set(st, MOAT_CODE_UNAVAILABLE, "execd_reset", "execd connection failed: %s",
                        why);
        break;
    }
}
