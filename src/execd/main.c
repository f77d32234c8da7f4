/* moat-execd: the in-sandbox daemon (OpenSandbox execd API on libmicrohttpd). */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <grp.h>
#include <netdb.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define BODY_MAX      (1u << 20)
#define MAX_LISTENERS 8
/* Room for a burst of connects from moatd (max_calls_per_session per session, default 64,
 * plus file calls) before any is refused; the kernel caps it at net.core.somaxconn. */
#define XD_LISTEN_BACKLOG 4096

static const char unauthorized_body[] =
    "{\"error\":\"Unauthorized: invalid or missing header X-EXECD-ACCESS-TOKEN\"}";

static enum MHD_Result respond_bytes(struct MHD_Connection *conn, unsigned status,
                                     const char *ctype, const char *data, size_t len)
{
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, (void *)data, MHD_RESPMEM_MUST_COPY);
    if (resp == NULL)
        return MHD_NO;
    if (ctype != NULL)
        MHD_add_response_header(resp, "Content-Type", ctype);
    enum MHD_Result ret = MHD_queue_response(conn, status, resp);
    MHD_destroy_response(resp);
    return ret;
}

enum MHD_Result xd_respond_json(struct MHD_Connection *conn, unsigned status, cJSON *body)
{
    char *text = body ? cJSON_PrintUnformatted(body) : NULL;
    cJSON_Delete(body);
    if (text == NULL)
        return respond_bytes(conn, 500, "application/json; charset=utf-8",
                             "{\"code\":\"RUNTIME_ERROR\",\"message\":\"encoding failed\"}", 51);
    enum MHD_Result ret =
        respond_bytes(conn, status, "application/json; charset=utf-8", text, strlen(text));
    cJSON_free(text);
    return ret;
}

enum MHD_Result xd_respond_error(struct MHD_Connection *conn, unsigned status, const char *code,
                                 const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    cJSON *o = cJSON_CreateObject();
    if (o != NULL &&
        (cJSON_AddStringToObject(o, "code", code) == NULL ||
         (msg[0] != '\0' && !moat__execd_json_set(o, "message", moat__execd_json_str(msg))))) {
        cJSON_Delete(o);
        o = NULL;
    }
    return xd_respond_json(conn, status, o);
}

enum MHD_Result xd_respond_not_found(struct MHD_Connection *conn)
{
    return respond_bytes(conn, 404, "text/plain", "404 page not found", 18);
}

enum MHD_Result xd_respond_empty(struct MHD_Connection *conn, unsigned status)
{
    return respond_bytes(conn, status, NULL, "", 0);
}

static const char *env_lookup(void *ud, const char *name)
{
    (void)ud;
    return getenv(name);
}

char *xd_expand(const char *in, char *err, size_t errlen)
{
    const char *home = getenv("HOME");
    struct passwd pw, *pwp = NULL;
    char buf[4096];
    if ((home == NULL || home[0] == '\0') &&
        getpwuid_r(getuid(), &pw, buf, sizeof(buf), &pwp) == 0 && pwp != NULL)
        home = pw.pw_dir;
    char *out = NULL;
    if (moat_execd_expand_path(in, home, env_lookup, NULL, &out, err, errlen) != MOAT_OK)
        return NULL;
    return out;
}

bool xd_token_ok(const char *got)
{
    if (xd.cfg.token == NULL || xd.cfg.token[0] == '\0')
        return true;
    if (got == NULL)
        return false;
    size_t a = strlen(got), b = strlen(xd.cfg.token);
    unsigned char diff = a != b;
    for (size_t i = 0; i < a && i < b; i++)
        diff |= (unsigned char)(got[i] ^ xd.cfg.token[i]);
    return diff == 0;
}

enum MHD_Result xd_handle(void *cls, struct MHD_Connection *conn, const char *url,
                          const char *method, const char *version, const char *upload_data,
                          size_t *upload_data_size, void **con_cls)
{
    (void)cls;
    (void)version;
    /* Every request thread acts as the commands' user (its effective ids, set per thread),
     * so the file API can read and write no more than a command could. */
    if (xd.cfg.run_as)
        xd_become_run_as_fs();
    xd_req *r = *con_cls;
    if (r == NULL) {
        r = calloc(1, sizeof(*r));
        if (r == NULL)
            return MHD_NO;
        moat_buf_init(&r->body, BODY_MAX);
        *con_cls = r;
        if (!xd_token_ok(
                MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-EXECD-ACCESS-TOKEN"))) {
            r->handled = true;
            return respond_bytes(conn, 401, "application/json; charset=utf-8", unauthorized_body,
                                 sizeof(unauthorized_body) - 1);
        }
        /* Its refusals go before the body, which is then never read. */
        if (xd_pty_is_stdin(url, method))
            return xd_pty_stdin_begin(conn, r, url);
        return MHD_YES;
    }
    if (r->handled) {
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        size_t len = *upload_data_size;
        *upload_data_size = 0;
        if (xd_files_is_upload(url, method))
            return xd_files_upload_data(conn, r, upload_data, len);
        if (xd_files_is_write(url, method))
            return xd_files_write_data(conn, r, upload_data, len);
        if (xd_pty_is_stdin(url, method))
            return xd_pty_stdin_data(conn, r, upload_data, len);
        if (moat_buf_append(&r->body, upload_data, len) != MOAT_OK)
            r->body_too_big = true;
        return MHD_YES;
    }
    r->handled = true;
    if (strcmp(url, "/ping") == 0)
        return xd_respond_empty(conn, 200);
    if (strcmp(url, "/metrics") == 0 && strcmp(method, "GET") == 0)
        return xd_metrics(conn, false);
    if (strcmp(url, "/metrics/watch") == 0 && strcmp(method, "GET") == 0)
        return xd_metrics(conn, true);
    bool matched = false;
    enum MHD_Result ret = xd_command_route(conn, r, url, method, &matched);
    if (matched)
        return ret;
    ret = xd_pty_route(conn, r, url, method, &matched);
    if (matched)
        return ret;
    ret = xd_files_route(conn, r, url, method, &matched);
    if (matched)
        return ret;
    return xd_respond_not_found(conn);
}

void xd_request_done(void *cls, struct MHD_Connection *conn, void **con_cls,
                     enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)conn;
    (void)toe;
    xd_req *r = *con_cls;
    if (r == NULL)
        return;
    if (r->pp != NULL)
        MHD_destroy_post_processor(r->pp);
    moat_execd_upload_free(r->upload);
    xd_files_write_end(r);
    xd_pty_request_done(r);
    xd_pty_stdin_end(r);
    moat_buf_free(&r->body);
    free(r);
    *con_cls = NULL;
}

/* ---- listeners ---- */

typedef struct listener {
    char spec[600];
    int fd;
    char unix_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    struct MHD_Daemon *daemon;
} listener;

static int listen_unix(listener *l, const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(sa.sun_path)) {
        fprintf(stderr, "moat-execd: unix socket path too long: %s\n", path);
        return -1;
    }
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    unlink(path);
    /* Owner only from the moment it exists: whoever reaches this socket runs commands as
     * execd's own user (with a uid in the request, as any user). moatd connects as root. */
    mode_t old_umask = umask(0177);
    int rc = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
    umask(old_umask);
    if (rc != 0 || listen(fd, XD_LISTEN_BACKLOG) != 0) {
        fprintf(stderr, "moat-execd: cannot listen on %s: %s\n", path, strerror(errno));
        close(fd);
        return -1;
    }
    snprintf(l->unix_path, sizeof(l->unix_path), "%s", path);
    return fd;
}

static int listen_tcp(const char *spec)
{
    char host[256];
    const char *colon = strrchr(spec, ':');
    if (colon == NULL || (size_t)(colon - spec) >= sizeof(host)) {
        fprintf(stderr, "moat-execd: --listen wants unix:/path or host:port, got %s\n", spec);
        return -1;
    }
    memcpy(host, spec, (size_t)(colon - spec));
    host[colon - spec] = '\0';
    const char *h = host;
    if (host[0] == '[') {
        size_t n = strlen(host);
        if (n >= 2 && host[n - 1] == ']') {
            host[n - 1] = '\0';
            h = host + 1;
        }
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *ai = NULL;
    int rc = getaddrinfo(h[0] ? h : NULL, colon + 1, &hints, &ai);
    if (rc != 0) {
        fprintf(stderr, "moat-execd: cannot resolve %s: %s\n", spec, gai_strerror(rc));
        return -1;
    }
    int fd = -1;
    for (struct addrinfo *p = ai; p != NULL; p = p->ai_next) {
        fd = socket(p->ai_family, p->ai_socktype | SOCK_CLOEXEC, p->ai_protocol);
        if (fd < 0)
            continue;
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(fd, p->ai_addr, p->ai_addrlen) == 0 && listen(fd, XD_LISTEN_BACKLOG) == 0)
            break;
        close(fd);
        fd = -1;
    }
    if (fd < 0)
        fprintf(stderr, "moat-execd: cannot listen on %s: %s\n", spec, strerror(errno));
    freeaddrinfo(ai);
    return fd;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: moat-execd [options]\n"
            "  --listen unix:/path | host:port  listen address (repeatable; default "
            "0.0.0.0:44772)\n"
            "  --access-token T                 require X-EXECD-ACCESS-TOKEN: T (or env "
            "EXECD_ACCESS_TOKEN,\n"
            "                                   which stays out of /proc/PID/cmdline and "
            "commands' environment)\n"
            "  --run-as UID:GID                 run commands, sessions and file operations as "
            "this user\n"
            "  --log-level L                    debug|info|warn|error|off or 0-7 (default info)\n"
            "  --state-dir DIR                  logs and temporary files (default "
            "$TMPDIR/moat-execd)\n"
            "  --retention-seconds N            keep finished commands N s (default 600)\n"
            "  --max-commands N                 command table bound (default 1024)\n"
            "  --pty-idle-timeout N             close a PTY session N s after its client left "
            "(default 1800)\n"
            "  --help, --version\n");
}

void xd_mkdir_p(char *path, mode_t mode)
{
    for (char *p = path + 1;; p++) {
        if (*p == '/' || *p == '\0') {
            char c = *p;
            *p = '\0';
            mkdir(path, mode);
            *p = c;
            if (c == '\0')
                break;
        }
    }
}

static bool parse_run_as(const char *spec)
{
    char *end;
    errno = 0;
    unsigned long uid = strtoul(spec, &end, 10);
    if (end == spec || *end != ':' || errno != 0 || uid >= UINT32_MAX || spec[0] == '-')
        return false;
    const char *g = end + 1;
    unsigned long gid = strtoul(g, &end, 10);
    if (end == g || *end != '\0' || errno != 0 || gid >= UINT32_MAX || g[0] == '-')
        return false;
    if (uid == 0 && gid == 0)
        return false;
    xd.cfg.run_as = true;
    xd.cfg.run_uid = (uid_t)uid;
    xd.cfg.run_gid = (gid_t)gid;
    return true;
}

/* The state dir may sit in a directory commands can write (/tmp): it must be a real
 * directory of execd's own, or anything execd keeps there could be redirected. */
static bool own_private_dir(const char *path, uid_t owner, gid_t group)
{
    struct stat st;
    if (mkdir(path, 0700) != 0 && errno != EEXIST) {
        fprintf(stderr, "moat-execd: cannot create %s: %s\n", path, strerror(errno));
        return false;
    }
    if (lstat(path, &st) != 0 || !S_ISDIR(st.st_mode) || st.st_uid != geteuid()) {
        fprintf(stderr, "moat-execd: %s is not a directory owned by execd's user\n", path);
        return false;
    }
    if (chmod(path, 0700) != 0 || (owner != geteuid() && chown(path, owner, group) != 0)) {
        fprintf(stderr, "moat-execd: cannot secure %s: %s\n", path, strerror(errno));
        return false;
    }
    return true;
}

/* state_dir, private to execd; with --run-as, its user/ subdirectory belongs to that user and
 * holds what commands read or write (logs, session scripts, uploads): execd's request threads
 * work there as that user, and the user cannot rename user/ itself away. */
static bool prepare_state_dirs(void)
{
    char parent[sizeof(xd.cfg.state_dir)];
    snprintf(parent, sizeof(parent), "%s", xd.cfg.state_dir);
    char *slash = strrchr(parent, '/');
    if (slash != NULL && slash != parent) {
        *slash = '\0';
        xd_mkdir_p(parent, 0700);
    }
    if (!own_private_dir(xd.cfg.state_dir, geteuid(), getegid()))
        return false;
    if (!xd.cfg.run_as) {
        snprintf(xd.cfg.work_dir, sizeof(xd.cfg.work_dir), "%s", xd.cfg.state_dir);
        return true;
    }
    if (chmod(xd.cfg.state_dir, 0711) != 0)
        return false;
    snprintf(xd.cfg.work_dir, sizeof(xd.cfg.work_dir), "%s/user", xd.cfg.state_dir);
    struct stat st;
    if (mkdir(xd.cfg.work_dir, 0700) != 0 && errno != EEXIST)
        return false;
    /* chmod first: once the directory is the user's, root without CAP_FOWNER cannot. */
    if (lstat(xd.cfg.work_dir, &st) != 0 || !S_ISDIR(st.st_mode) ||
        (st.st_uid != xd.cfg.run_uid && chmod(xd.cfg.work_dir, 0700) != 0) ||
        lchown(xd.cfg.work_dir, xd.cfg.run_uid, xd.cfg.run_gid) != 0) {
        fprintf(stderr, "moat-execd: cannot give %s to uid %u: %s\n", xd.cfg.work_dir,
                (unsigned)xd.cfg.run_uid, strerror(errno));
        return false;
    }
    return true;
}

static const char *find_shell(bool *is_bash)
{
    static char found[4096];
    const char *path = getenv("PATH");
    if (path == NULL || path[0] == '\0')
        path = "/usr/local/bin:/usr/bin:/bin";
    const char *p = path;
    while (*p) {
        size_t n = strcspn(p, ":");
        if (n > 0 && n + 6 < sizeof(found)) {
            snprintf(found, sizeof(found), "%.*s/bash", (int)n, p);
            if (access(found, X_OK) == 0) {
                *is_bash = true;
                return found;
            }
        }
        p += n;
        if (*p == ':')
            p++;
    }
    *is_bash = false;
    return access("/bin/sh", X_OK) == 0 ? "/bin/sh" : "sh";
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"listen", required_argument, NULL, 'l'},
        {"access-token", required_argument, NULL, 't'},
        {"run-as", required_argument, NULL, 'u'},
        {"log-level", required_argument, NULL, 'v'},
        {"state-dir", required_argument, NULL, 's'},
        {"retention-seconds", required_argument, NULL, 'r'},
        {"max-commands", required_argument, NULL, 'm'},
        {"pty-idle-timeout", required_argument, NULL, 'p'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    const char *listens[MAX_LISTENERS];
    int nlisten = 0;
    /* Commands inherit execd's environment: the token must not be in it. */
    const char *env_token = getenv("EXECD_ACCESS_TOKEN");
    if (env_token != NULL) {
        xd.cfg.token = strdup(env_token);
        unsetenv("EXECD_ACCESS_TOKEN");
        if (xd.cfg.token == NULL)
            return 1;
    }
    xd.cfg.retention_ns = 600ull * 1000000000ull;
    xd.cfg.max_commands = 1024;
    xd.cfg.ping_ns = 3000000000ull;
    xd.cfg.pty_idle_ns = 1800ull * 1000000000ull;
    const char *tmp = getenv("TMPDIR");
    snprintf(xd.cfg.state_dir, sizeof(xd.cfg.state_dir), "%s/moat-execd",
             tmp && tmp[0] ? tmp : "/tmp");
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'l':
            if (nlisten == MAX_LISTENERS) {
                fprintf(stderr, "moat-execd: at most %d --listen\n", MAX_LISTENERS);
                return 2;
            }
            listens[nlisten++] = optarg;
            break;
        case 't':
            xd.cfg.token = optarg;
            break;
        case 'u':
            if (!parse_run_as(optarg)) {
                fprintf(stderr, "moat-execd: --run-as wants UID:GID (decimal, not 0:0), got %s\n",
                        optarg);
                return 2;
            }
            break;
        case 'v': {
            moat_log_level lvl;
            if (moat_log_level_parse(optarg, &lvl) == MOAT_OK) {
                moat_log_set_level(lvl);
            } else if (optarg[0] >= '0' && optarg[0] <= '7' && optarg[1] == '\0') {
                /* OpenSandbox's 0-7 syslog-style levels. */
                int n = optarg[0] - '0';
                moat_log_set_level(n >= 7   ? MOAT_LOG_DEBUG
                                   : n >= 6 ? MOAT_LOG_INFO
                                   : n >= 4 ? MOAT_LOG_WARN
                                            : MOAT_LOG_ERROR);
            } else {
                fprintf(stderr, "moat-execd: bad --log-level %s\n", optarg);
                return 2;
            }
            break;
        }
        case 's':
            snprintf(xd.cfg.state_dir, sizeof(xd.cfg.state_dir), "%s", optarg);
            break;
        case 'r':
            xd.cfg.retention_ns = strtoull(optarg, NULL, 10) * 1000000000ull;
            break;
        case 'm':
            xd.cfg.max_commands = strtoul(optarg, NULL, 10);
            if (xd.cfg.max_commands < 1)
                xd.cfg.max_commands = 1;
            break;
        case 'p':
            xd.cfg.pty_idle_ns = strtoull(optarg, NULL, 10) * 1000000000ull;
            break;
        case 'h':
            usage(stdout);
            return 0;
        case 'V':
            printf("moat-execd %s\n", MOAT_VERSION);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        usage(stderr);
        return 2;
    }
    if (nlisten == 0)
        listens[nlisten++] = "0.0.0.0:44772";
    xd.cfg.shell = find_shell(&xd.cfg.shell_is_bash);
    if (!prepare_state_dirs())
        return 1;
    /* Root's supplementary groups would still count in the file checks of request threads. */
    if (xd.cfg.run_as && setgroups(0, NULL) != 0) {
        fprintf(stderr, "moat-execd: setgroups: %s\n", strerror(errno));
        return 1;
    }

    /* Every thread inherits this mask; the signal thread takes them with sigtimedwait. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGQUIT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    /* Not PID 1: still adopt orphaned grandchildren so they are reaped here. */
    if (getpid() != 1)
        prctl(PR_SET_CHILD_SUBREAPER, 1);

    xd_proc_init();
    int sp[2];
    if (pipe2(sp, O_CLOEXEC) != 0)
        return 1;
    xd_signal_thread_start(sp[1]);
    xd_housekeeping_start();

    listener ls[MAX_LISTENERS];
    memset(ls, 0, sizeof(ls));
    for (int i = 0; i < nlisten; i++) {
        snprintf(ls[i].spec, sizeof(ls[i].spec), "%s", listens[i]);
        if (strncmp(listens[i], "unix:", 5) == 0)
            ls[i].fd = listen_unix(&ls[i], listens[i] + 5);
        else
            ls[i].fd = listen_tcp(listens[i]);
        if (ls[i].fd < 0)
            return 1;
        ls[i].daemon = MHD_start_daemon(
            MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL |
                MHD_USE_ITC | MHD_ALLOW_UPGRADE,
            0, NULL, NULL, xd_handle, NULL, MHD_OPTION_LISTEN_SOCKET, ls[i].fd,
            MHD_OPTION_NOTIFY_COMPLETED, xd_request_done, NULL, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
            (size_t)(256 * 1024), MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)0, MHD_OPTION_END);
        if (ls[i].daemon == NULL) {
            fprintf(stderr, "moat-execd: cannot start HTTP server on %s\n", listens[i]);
            return 1;
        }
        moat_log(MOAT_LOG_INFO, "listening", "addr=%s shell=%s", listens[i], xd.cfg.shell);
    }
    /* Beside the first Unix socket only: the client that reaches it there can take a
     * descriptor, which a TCP client could not. */
    for (int i = 0; i < nlisten; i++) {
        if (ls[i].unix_path[0] != '\0') {
            if (!xd_stdin_sock_start(ls[i].unix_path))
                return 1;
            break;
        }
    }

    struct pollfd pfd = {.fd = sp[0], .events = POLLIN};
    while (poll(&pfd, 1, -1) < 0 && errno == EINTR)
        ;
    moat_log(MOAT_LOG_INFO, "shutdown", "reason=signal");
    /* Stop accepting; the listening sockets come back to us. */
    MHD_socket returned[MAX_LISTENERS];
    for (int i = 0; i < nlisten; i++)
        returned[i] = MHD_quiesce_daemon(ls[i].daemon);
    xd_stdin_sock_stop();
    /* Commands get SIGTERM and 3 s, then SIGKILL; their streams then end normally. */
    xd_terminate_all(3000);
    /* Upgraded connections are execd's, not libmicrohttpd's: closed before it stops. */
    xd_pty_shutdown();
    for (int i = 0; i < nlisten; i++) {
        MHD_stop_daemon(ls[i].daemon);
        if (returned[i] != MHD_INVALID_SOCKET)
            close(returned[i]);
        if (ls[i].unix_path[0] != '\0')
            unlink(ls[i].unix_path);
    }
    xd_threads_stop();
    return 0;
}
