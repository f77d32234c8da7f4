#include "xd_client.h"
#include "moat_test.h"
#include "ports.h"

#include <curl/curl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

typedef struct grow {
    char *data;
    size_t len;
} grow;

static size_t grow_write(char *ptr, size_t size, size_t n, void *ud)
{
    grow *g = ud;
    size_t add = size * n;
    char *d = realloc(g->data, g->len + add + 1);
    if (d == NULL)
        return 0;
    memcpy(d + g->len, ptr, add);
    g->len += add;
    d[g->len] = '\0';
    g->data = d;
    return add;
}

static CURL *easy_for(const xd_target *t, const char *path, struct curl_slist **hdrs,
                      const char *extra_header)
{
    CURL *c = curl_easy_init();
    char url[1024];
    snprintf(url, sizeof(url), "%s%s", t->base, path);
    curl_easy_setopt(c, CURLOPT_URL, url);
    if (t->unix_path[0] != '\0')
        curl_easy_setopt(c, CURLOPT_UNIX_SOCKET_PATH, t->unix_path);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 120L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    if (t->token != NULL) {
        char h[512];
        snprintf(h, sizeof(h), "X-EXECD-ACCESS-TOKEN: %s", t->token);
        *hdrs = curl_slist_append(*hdrs, h);
    }
    if (extra_header != NULL)
        *hdrs = curl_slist_append(*hdrs, extra_header);
    *hdrs = curl_slist_append(*hdrs, "Expect:");
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, *hdrs);
    return c;
}

xd_resp xd_http(const xd_target *t, const char *method, const char *path, const char *body,
                const char *extra_header)
{
    if (body != NULL && extra_header == NULL)
        extra_header = "Content-Type: application/json";
    return xd_http_body(t, method, path, body, body != NULL ? strlen(body) : 0, extra_header);
}

xd_resp xd_http_body(const xd_target *t, const char *method, const char *path, const void *body,
                     size_t len, const char *extra_header)
{
    xd_resp r = {0};
    struct curl_slist *hdrs = NULL;
    CURL *c = easy_for(t, path, &hdrs, extra_header);
    grow b = {0}, h = {0};
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    if (body != NULL) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)len);
    } else if (strcmp(method, "POST") == 0) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, "");
    }
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, grow_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, grow_write);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &h);
    if (curl_easy_perform(c) == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r.status);
    curl_easy_cleanup(c);
    curl_slist_free_all(hdrs);
    r.body = b.data ? b.data : calloc(1, 1);
    r.len = b.len;
    r.headers = h.data ? h.data : calloc(1, 1);
    return r;
}

void xd_resp_free(xd_resp *r)
{
    free(r->body);
    free(r->headers);
    r->body = r->headers = NULL;
}

char *xd_header(const xd_resp *r, const char *name)
{
    size_t nl = strlen(name);
    for (const char *p = r->headers; p && *p;) {
        const char *eol = strstr(p, "\r\n");
        size_t ll = eol ? (size_t)(eol - p) : strlen(p);
        if (ll > nl && strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
            const char *v = p + nl + 1;
            while (*v == ' ')
                v++;
            return strndup(v, ll - (size_t)(v - p));
        }
        p = eol ? eol + 2 : p + ll;
    }
    return NULL;
}

cJSON *xd_json(const xd_resp *r)
{
    return moat_json_parse(r->body, r->len, MOAT_JSON_NUL_REJECT);
}

int64_t xd_json_i64(const cJSON *obj, const char *key)
{
    int64_t v;
    return moat_json_int(obj, key, &v) ? v : -1000000;
}

double xd_json_num(const cJSON *obj, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsNumber(v) ? v->valuedouble : -1;
}

static const char *error_field(const xd_resp *r, const char *key, char *out, size_t outlen)
{
    out[0] = '\0';
    cJSON *j = xd_json(r);
    const char *c = moat_json_str(j, key, NULL);
    if (c != NULL)
        snprintf(out, outlen, "%s", c);
    cJSON_Delete(j);
    return out;
}

const char *xd_error_code(const xd_resp *r)
{
    static char code[64];
    return error_field(r, "code", code, sizeof(code));
}

const char *xd_error_message(const xd_resp *r)
{
    static char message[1024];
    return error_field(r, "message", message, sizeof(message));
}

static void append(char *dst, size_t *len, size_t cap, const char *src, size_t n)
{
    if (*len + n >= cap)
        n = cap - 1 - *len;
    memcpy(dst + *len, src, n);
    *len += n;
    dst[*len] = '\0';
}

static const char *or_empty(const char *s)
{
    return s != NULL ? s : "";
}

static void on_event(xd_run *out, const cJSON *ev, const char *raw, size_t rawlen)
{
    const char *type = moat_json_str(ev, "type", NULL);
    if (type == NULL)
        return;
    if (strlen(out->types) + strlen(type) + 2 < sizeof(out->types)) {
        if (out->types[0])
            strcat(out->types, ",");
        strcat(out->types, type);
    }
    bool is_out = strcmp(type, "stdout") == 0, is_err = strcmp(type, "stderr") == 0;
    if (strcmp(type, "init") == 0)
        snprintf(out->id, sizeof(out->id), "%s", or_empty(moat_json_str(ev, "text", NULL)));
    else if (strcmp(type, "ping") == 0)
        out->pings++;
    else if (strcmp(type, "execution_complete") == 0)
        out->complete = true;
    else if (strcmp(type, "error") == 0) {
        const cJSON *e = cJSON_GetObjectItemCaseSensitive(ev, "error");
        out->error = true;
        snprintf(out->evalue, sizeof(out->evalue), "%s",
                 or_empty(moat_json_str(e, "evalue", NULL)));
        const cJSON *tb = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(e, "traceback"), 0);
        snprintf(out->traceback, sizeof(out->traceback), "%s",
                 cJSON_IsString(tb) ? tb->valuestring : "(null)");
    } else if (is_out || is_err) {
        const char *text = raw;
        size_t tl = rawlen;
        if (raw == NULL) {
            tl = 0;
            text = or_empty(moat_json_str(ev, "text", &tl));
            if (is_out && out->nlines < 64)
                snprintf(out->out_lines[out->nlines++], 256, "%s", text);
        }
        if (is_out)
            append(out->out, &out->out_len, sizeof(out->out), text, tl);
        else
            append(out->err, &out->err_len, sizeof(out->err), text, tl);
    }
}

/* Decodes `{json}\n\n` events; in binary mode output events carry "len" raw bytes. Line-mode
 * output text is read as moat's bridge reads it: \u0000 becomes U+FFFD. */
static void decode(xd_run *out, const char *data, size_t len, bool binary)
{
    size_t i = 0;
    while (i < len) {
        while (i < len && data[i] == '\n')
            i++;
        if (i >= len)
            break;
        const char *nl = memchr(data + i, '\n', len - i);
        size_t hl = nl ? (size_t)(nl - (data + i)) : len - i;
        cJSON *ev = moat_json_parse(data + i, hl, MOAT_JSON_NUL_REPLACE);
        i += hl + 1;
        if (ev == NULL)
            continue;
        int64_t n;
        if (binary && moat_json_int(ev, "len", &n) && n >= 0) {
            if (i + (size_t)n <= len)
                on_event(out, ev, data + i, (size_t)n);
            i += (size_t)n;
        } else {
            on_event(out, ev, NULL, 0);
        }
        cJSON_Delete(ev);
    }
}

void xd_stream(const xd_target *t, const char *path, const char *json, bool binary, xd_run *out)
{
    memset(out, 0, sizeof(*out));
    char hdr[] = "X-Moat-Output: binary";
    xd_resp r = xd_http(t, "POST", path, json, binary ? hdr : "Content-Type: application/json");
    out->status = r.status;
    char *conf = xd_header(&r, "X-Moat-Output");
    out->binary_confirmed = conf != NULL && strcmp(conf, "binary") == 0;
    free(conf);
    if (r.status == 200)
        decode(out, r.body, r.len, out->binary_confirmed);
    xd_resp_free(&r);
}

int xd_exit_code(const xd_run *r)
{
    if (r->error)
        return atoi(r->evalue);
    if (r->complete)
        return 0;
    return -1000;
}

bool xd_wrapped(void)
{
    const char *w = getenv("MOAT_DAEMON_WRAPPER");
    return w != NULL && w[0] != '\0';
}

int xd_slowdown(void)
{
    return xd_wrapped() ? 10 : 1;
}

typedef enum { XD_STARTED, XD_PORT_TAKEN, XD_FAILED } xd_start_result;

static xd_start_result start_once(xd_proc *p, const char *const *extra_args)
{
    const char *bdir = getenv("MOAT_BUILD_DIR");
    char bin[512], lsock[300], ltcp[64], state[200];
    snprintf(bin, sizeof(bin), "%s/src/execd/moat-execd", bdir ? bdir : ".");
    int port = free_port();
    snprintf(lsock, sizeof(lsock), "unix:%s/execd.sock", p->dir);
    snprintf(ltcp, sizeof(ltcp), "127.0.0.1:%d", port);
    snprintf(state, sizeof(state), "%s/state", p->dir);
    /* The first four slots are for the wrapper's /bin/sh prefix. */
    const char *argv_buf[36] = {"/bin/sh",     "-c",       "exec $MOAT_DAEMON_WRAPPER \"$@\"",
                                "moat-execd",  bin,        "--listen",
                                lsock,         "--listen", ltcp,
                                "--state-dir", state,      "--log-level",
                                "warn"};
    const char **argv = argv_buf + 4;
    int n = 9;
    for (size_t i = 0; extra_args != NULL && extra_args[i] != NULL && n < 30; i++)
        argv[n++] = extra_args[i];
    argv[n] = NULL;
    p->pid = fork();
    if (p->pid == 0) {
        /* a failed assertion must not leave execd running (and holding ctest's pipes) */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        setenv("MOAT_XD_DIR", p->dir, 1);
        if (xd_wrapped())
            execv(argv_buf[0], (char *const *)argv_buf);
        else
            execv(bin, (char *const *)argv);
        _exit(127);
    }
    snprintf(p->unix_t.unix_path, sizeof(p->unix_t.unix_path), "%s/execd.sock", p->dir);
    snprintf(p->unix_t.base, sizeof(p->unix_t.base), "http://localhost");
    snprintf(p->tcp_t.base, sizeof(p->tcp_t.base), "http://127.0.0.1:%d", port);
    for (int i = 0; i < 600 * xd_slowdown(); i++) {
        xd_resp r = xd_http(&p->unix_t, "GET", "/ping", NULL, NULL);
        long st = r.status;
        xd_resp_free(&r);
        /* The Unix socket answers before the TCP listener exists, or fails to. */
        if ((st == 200 || st == 401) && listens_on(p->pid, port))
            return XD_STARTED;
        int status;
        if (waitpid(p->pid, &status, WNOHANG) == p->pid) {
            p->pid = 0;
            return listener_inode(port) != 0 ? XD_PORT_TAKEN : XD_FAILED;
        }
        struct timespec ts = {0, 50 * 1000000L};
        nanosleep(&ts, NULL);
    }
    return XD_FAILED;
}

bool xd_start(xd_proc *p, const char *const *extra_args)
{
    memset(p, 0, sizeof(*p));
    snprintf(p->dir, sizeof(p->dir), "/tmp/moat-execd-test-XXXXXX");
    if (mkdtemp(p->dir) == NULL)
        return false;
    /* free_port() only finds a port that was free: another process may take it before execd
     * binds it, and execd then exits. It runs again on another port, a few times. */
    for (int attempt = 0; attempt < 5; attempt++) {
        xd_start_result r = start_once(p, extra_args);
        if (r != XD_PORT_TAKEN)
            return r == XD_STARTED;
        fprintf(stderr, "xd_start: port %s was taken; trying another\n", p->tcp_t.base);
    }
    return false;
}

int xd_stop(xd_proc *p)
{
    if (p->pid <= 0)
        return -1;
    /* SIGKILL stands in for an execd that crashes at shutdown. */
    kill(p->pid, moat_test_injected("daemon_exit") ? SIGKILL : SIGTERM);
    int status = -1;
    for (int i = 0; i < 400 * xd_slowdown(); i++) {
        if (waitpid(p->pid, &status, WNOHANG) == p->pid) {
            p->pid = 0;
            char cmd[300];
            snprintf(cmd, sizeof(cmd), "rm -rf %s", p->dir);
            if (system(cmd) != 0)
                fprintf(stderr, "cleanup of %s failed\n", p->dir);
            return status;
        }
        struct timespec ts = {0, 25 * 1000000L};
        nanosleep(&ts, NULL);
    }
    kill(p->pid, SIGKILL);
    waitpid(p->pid, &status, 0);
    p->pid = 0;
    return -1;
}

long xd_rss_kb(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    long kb = -1;
    while (f != NULL && fgets(line, sizeof(line), f) != NULL)
        if (sscanf(line, "VmRSS: %ld kB", &kb) == 1)
            break;
    if (f != NULL)
        fclose(f);
    return kb;
}
