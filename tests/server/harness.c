#include "harness.h"
#include "host_mounts.h"
#include "moat_test.h"
#include "moat/v1/exec.pb-c.h"
#include "moat/v1/sandbox.pb-c.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

char *slurp_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return strdup("");
    static char buf[1 << 20];
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    return strdup(buf);
}

static int tcp_connect(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        close(fd);
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return fd;
}

const char *moatd_wrapper(void)
{
    const char *w = getenv("MOAT_DAEMON_WRAPPER");
    return w != NULL ? w : "";
}

int moatd_slowdown(void)
{
    return moatd_wrapper()[0] != '\0' ? 10 : 1;
}

void moatd_dump_log(const moatd_proc *p)
{
    FILE *f = fopen(p->log_path, "r");
    if (f == NULL)
        return;
    char line[1024];
    fprintf(stderr, "---- moatd log %s\n", p->log_path);
    while (fgets(line, sizeof(line), f) != NULL)
        fputs(line, stderr);
    fclose(f);
}

const char *moatd_build_dir(void)
{
    const char *build = getenv("MOAT_BUILD_DIR");
    return build != NULL && build[0] != '\0' ? build : MOAT_TEST_BUILD_DIR;
}

bool moatd_start(moatd_proc *p, bool docker, const char *const *extra)
{
    char bin[512];
    snprintf(bin, sizeof(bin), "%s/src/server/moatd", moatd_build_dir());
    return moatd_start_bin(p, bin, docker, extra);
}

bool moatd_log_contains(const moatd_proc *p, const char *needle)
{
    FILE *f = fopen(p->log_path, "r");
    if (f == NULL)
        return false;
    char line[4096];
    bool found = false;
    while (!found && fgets(line, sizeof(line), f) != NULL)
        found = strstr(line, needle) != NULL;
    fclose(f);
    return found;
}

typedef enum { STARTED, PORT_TAKEN, FAILED } start_result;

static start_result start_once(moatd_proc *p, const char *bin, bool docker,
                               const char *const *extra)
{
    p->port = free_port();
    p->metrics_port = free_port();
    p->grpc_port = free_port();
    char bundle[320];
    snprintf(bundle, sizeof(bundle), "%s/bundle", p->state_dir);
    mkdir(bundle, 0755);

    char a_listen[64], a_metrics[64], a_grpc[64], a_state[300], a_docker[320], a_bundle[340];
    snprintf(a_listen, sizeof(a_listen), "--listen=127.0.0.1:%d", p->port);
    snprintf(a_metrics, sizeof(a_metrics), "--metrics_listen=127.0.0.1:%d", p->metrics_port);
    snprintf(a_grpc, sizeof(a_grpc), "--grpc_listen=127.0.0.1:%d", p->grpc_port);
    snprintf(a_state, sizeof(a_state), "--state_dir=%s", p->state_dir);
    snprintf(a_docker, sizeof(a_docker), "--docker_host=%s/no-docker.sock", p->state_dir);
    snprintf(a_bundle, sizeof(a_bundle), "--execd_bundle=%s", bundle);
    /* The first four slots stay free for the wrapper's /bin/sh prefix. */
    const char *argv_buf[68];
    const char **argv = argv_buf + 4;
    int n = 0;
    argv[n++] = bin;
    argv[n++] = a_listen;
    argv[n++] = a_metrics;
    argv[n++] = a_grpc;
    argv[n++] = a_state;
    if (!docker) {
        argv[n++] = a_docker;
        argv[n++] = a_bundle;
    } else {
        /* The minimal image, which every Docker test builds; a test wanting another one
         * passes --image (or --allowed_images) in extra, which comes later and wins. */
        argv[n++] = "--image=moat-sandbox:latest";
    }
    /* "%PORT%" in an extra argument becomes the listener's port (a cluster node's advertised
     * address names it before it is chosen). */
    char subst[8][256];
    int nsubst = 0;
    for (int i = 0; extra != NULL && extra[i] != NULL && n < 62; i++) {
        const char *at = strstr(extra[i], "%PORT%");
        if (at != NULL && nsubst < 8) {
            snprintf(subst[nsubst], sizeof(subst[nsubst]), "%.*s%d%s", (int)(at - extra[i]),
                     extra[i], p->port, at + 6);
            argv[n++] = subst[nsubst++];
        } else {
            argv[n++] = extra[i];
        }
    }
    argv[n] = NULL;

    pid_t pid = fork();
    if (pid < 0)
        return FAILED;
    if (pid == 0) {
        /* A failed assertion must not leave moatd (or its wrapper) running. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int fd = open(p->log_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, 2);
            dup2(fd, 1);
        }
        if (moatd_wrapper()[0] != '\0') {
            argv_buf[0] = "/bin/sh";
            argv_buf[1] = "-c";
            argv_buf[2] = "exec $MOAT_DAEMON_WRAPPER \"$@\"";
            argv_buf[3] = "moatd";
            execv(argv_buf[0], (char *const *)argv_buf);
        } else {
            execv(bin, (char *const *)argv);
        }
        _exit(127);
    }
    p->pid = pid;
    for (int i = 0; i < 200 * moatd_slowdown(); i++) {
        /* moatd binds its listeners first and /metrics after them. */
        if (listens_on(pid, p->port) && listens_on(pid, p->grpc_port) &&
            listens_on(pid, p->metrics_port))
            return STARTED;
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            p->pid = 0;
            return moatd_log_contains(p, "address already in use") ? PORT_TAKEN : FAILED;
        }
        /* moatd carries on without /metrics, which the tests read. */
        if (moatd_log_contains(p, "metrics_unavailable")) {
            moatd_stop(p);
            return PORT_TAKEN;
        }
        sleep_ms(50);
    }
    moatd_stop(p);
    return FAILED;
}

bool moatd_start_bin(moatd_proc *p, const char *bin, bool docker, const char *const *extra)
{
    memset(p, 0, sizeof(*p));
    /* Said here, since a child whose exec fails leaves only an empty log behind. */
    if (access(bin, X_OK) != 0) {
        fprintf(stderr,
                "moatd_start: no moatd at %s (build the moatd target, or set "
                "MOAT_BUILD_DIR to the build directory that has it)\n",
                bin);
        return false;
    }
    snprintf(p->state_dir, sizeof(p->state_dir), "/tmp/moat-srvtest-XXXXXX");
    if (mkdtemp(p->state_dir) == NULL)
        return false;
    snprintf(p->log_path, sizeof(p->log_path), "%s/moatd.log", p->state_dir);
    /* free_port() only finds a port that was free: another process may take it before moatd
     * binds it. Then moatd runs again on other ports, a few times. */
    for (int attempt = 0; attempt < 5; attempt++) {
        start_result r = start_once(p, bin, docker, extra);
        if (r == STARTED)
            return true;
        if (r == FAILED)
            break;
        fprintf(stderr, "moatd_start: port %d, %d or %d was taken; trying others\n", p->port,
                p->grpc_port, p->metrics_port);
    }
    moatd_dump_log(p);
    return false;
}

/* Its exit status, 128 + signal, or -1 on timeout. */
static int wait_for_exit(moatd_proc *p, int timeout_ms)
{
    if (p->pid <= 0)
        return -1;
    for (int waited = 0; waited <= timeout_ms * moatd_slowdown(); waited += 20) {
        int st;
        pid_t r = waitpid(p->pid, &st, WNOHANG);
        if (r == p->pid) {
            p->pid = 0;
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        }
        sleep_ms(20);
    }
    return -1;
}

int moatd_wait(moatd_proc *p, int timeout_ms)
{
    int rc = wait_for_exit(p, timeout_ms);
    if (rc > 0 && moatd_wrapper()[0] != '\0')
        moatd_dump_log(p);
    return rc;
}

int moatd_stop(moatd_proc *p)
{
    if (p->pid <= 0)
        return -1;
    /* SIGKILL stands in for a moatd that crashes at shutdown. */
    kill(p->pid, moat_test_injected("daemon_exit") ? SIGKILL : SIGTERM);
    int rc = wait_for_exit(p, 20000);
    if (rc < 0) {
        kill(p->pid, SIGKILL);
        rc = wait_for_exit(p, 5000);
    }
    if (rc != 0)
        moatd_dump_log(p);
    return rc;
}

void test_moatd_exits_0_on_sigterm(void **state)
{
    assert_int_equal(moatd_stop(*state), 0);
}

void moatd_remove_dir(const char *dir)
{
    /* MOAT_KEEP_TEST_DIRS=1 keeps state dirs and moatd logs for debugging. */
    if (strncmp(dir, "/tmp/moat-srvtest-", 18) != 0 || getenv("MOAT_KEEP_TEST_DIRS") != NULL)
        return;
    /* moatd mounts chat workspaces and execd dirs there; a killed moatd leaves them. */
    host_unmount_under(dir);
    char cmd[400];
    snprintf(cmd, sizeof(cmd), "rm -rf --one-file-system '%s'", dir);
    int rc = system(cmd);
    (void)rc;
}

void docker_remove_prefixed(const char *prefix)
{
    char cmd[256];
    snprintf(cmd, sizeof(cmd),
             "ids=$(/usr/bin/docker ps -aq --filter name=%s); "
             "[ -z \"$ids\" ] || /usr/bin/docker rm -f $ids >/dev/null 2>&1",
             prefix);
    int rc = system(cmd);
    (void)rc;
}

raw_conn *raw_connect(int port)
{
    raw_conn *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->fd = tcp_connect(port);
    if (c->fd < 0) {
        free(c);
        return NULL;
    }
    moat_wire_decoder_init(&c->dec, MOAT_WIRE_MAX_FRAME_LIMIT);
    c->next_stream = 1;
    return c;
}

raw_conn *raw_connect_from(int port, const char *source_ip)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return NULL;
    struct sockaddr_in src = {0}, dst = {0};
    src.sin_family = dst.sin_family = AF_INET;
    dst.sin_port = htons((uint16_t)port);
    dst.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (inet_pton(AF_INET, source_ip, &src.sin_addr) != 1 ||
        bind(fd, (struct sockaddr *)&src, sizeof(src)) != 0 ||
        connect(fd, (struct sockaddr *)&dst, sizeof(dst)) != 0) {
        close(fd);
        return NULL;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    raw_conn *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        close(fd);
        return NULL;
    }
    c->fd = fd;
    moat_wire_decoder_init(&c->dec, MOAT_WIRE_MAX_FRAME_LIMIT);
    c->next_stream = 1;
    return c;
}

raw_conn *raw_connect_unix(const char *path)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un a = {0};
    a.sun_family = AF_UNIX;
    snprintf(a.sun_path, sizeof(a.sun_path), "%s", path);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    raw_conn *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        close(fd);
        return NULL;
    }
    c->fd = fd;
    moat_wire_decoder_init(&c->dec, MOAT_WIRE_MAX_FRAME_LIMIT);
    c->next_stream = 1;
    return c;
}

void raw_close(raw_conn *c)
{
    if (c == NULL)
        return;
    close(c->fd);
    moat_wire_decoder_free(&c->dec);
    free(c->body);
    free(c);
}

bool raw_send_bytes(raw_conn *c, const void *data, size_t len)
{
    const uint8_t *p = data;
    while (len > 0) {
        ssize_t w = send(c->fd, p, len, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return false;
        p += w;
        len -= (size_t)w;
    }
    return true;
}

bool raw_send(raw_conn *c, const moat_frame *f)
{
    size_t n = moat_wire_encoded_size(f);
    uint8_t *buf = malloc(n);
    size_t w = 0;
    bool ok =
        buf != NULL && moat_wire_encode(f, buf, n, &w) == MOAT_OK && raw_send_bytes(c, buf, w);
    free(buf);
    return ok;
}

int raw_recv(raw_conn *c, moat_frame *f, int timeout_ms)
{
    for (;;) {
        while (c->in_off < c->in_len) {
            size_t used = 0;
            moat_slice body;
            moat_err err = moat_wire_decoder_feed(&c->dec, c->inbuf + c->in_off,
                                                  c->in_len - c->in_off, &used, &body);
            c->in_off += used;
            if (err == MOAT_E_AGAIN)
                break;
            if (err != MOAT_OK)
                return -1;
            if (body.len > c->body_cap) {
                uint8_t *nb = realloc(c->body, body.len);
                if (nb == NULL)
                    return -1;
                c->body = nb;
                c->body_cap = body.len;
            }
            memcpy(c->body, body.data, body.len);
            c->body_len = body.len;
            if (moat_wire_frame_decode((moat_slice){c->body, c->body_len}, f) != MOAT_OK)
                return -1;
            return 1;
        }
        struct pollfd pfd = {c->fd, POLLIN, 0};
        int r = poll(&pfd, 1, timeout_ms);
        if (r <= 0)
            return -1;
        ssize_t n = recv(c->fd, c->inbuf, sizeof(c->inbuf), 0);
        if (n == 0)
            return 0;
        if (n < 0)
            return errno == ECONNRESET ? 0 : -1;
        c->in_len = (size_t)n;
        c->in_off = 0;
    }
}

int raw_recv_stream(raw_conn *c, uint32_t stream_id, moat_frame *f, int timeout_ms)
{
    for (;;) {
        int r = raw_recv(c, f, timeout_ms);
        if (r != 1)
            return r;
        if (f->stream_id == stream_id && f->kind != MOAT_FRAME_PONG)
            return 1;
    }
}

int raw_hello(raw_conn *c, const char *token, moat_frame *ack)
{
    moat_frame f = {0};
    f.kind = MOAT_FRAME_HELLO;
    f.u.hello.protocol_version = MOAT_WIRE_PROTOCOL_VERSION;
    f.u.hello.client_name = moat_slice_str("moat-test/1");
    if (token != NULL)
        f.u.hello.token = moat_slice_str(token);
    if (!raw_send(c, &f))
        return -1;
    return raw_recv(c, ack, 10000);
}

raw_conn *raw_connect_ready(int port, const char *token)
{
    raw_conn *c = raw_connect(port);
    if (c == NULL)
        return NULL;
    moat_frame ack;
    if (raw_hello(c, token, &ack) != 1 || ack.kind != MOAT_FRAME_HELLO_ACK) {
        raw_close(c);
        return NULL;
    }
    return c;
}

uint32_t raw_call(raw_conn *c, const char *method, uint64_t deadline_ms,
                  const ProtobufCMessage *req)
{
    uint32_t id = c->next_stream;
    c->next_stream += 2;
    moat_frame f = {0};
    f.stream_id = id;
    f.kind = MOAT_FRAME_CALL;
    f.u.call.method = moat_slice_str(method);
    f.u.call.deadline_ms = deadline_ms;
    if (!raw_send(c, &f))
        return 0;
    if (req != NULL) {
        size_t n = protobuf_c_message_get_packed_size(req);
        uint8_t *buf = malloc(n + 1);
        protobuf_c_message_pack(req, buf);
        moat_frame m = {0};
        m.stream_id = id;
        m.kind = MOAT_FRAME_MESSAGE;
        m.u.message.payload = (moat_slice){buf, n};
        bool ok = raw_send(c, &m);
        free(buf);
        if (!ok)
            return 0;
    }
    return id;
}

int raw_unary(raw_conn *c, const char *method, const ProtobufCMessage *req,
              const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **resp, char *reason,
              size_t reason_len)
{
    if (resp != NULL)
        *resp = NULL;
    uint32_t id = raw_call(c, method, 0, req);
    if (id == 0)
        return -1;
    for (;;) {
        moat_frame f;
        if (raw_recv_stream(c, id, &f, 60000) != 1)
            return -1;
        if (f.kind == MOAT_FRAME_MESSAGE && resp != NULL && resp_desc != NULL) {
            *resp = protobuf_c_message_unpack(resp_desc, NULL, f.u.message.payload.len,
                                              f.u.message.payload.data);
        } else if (f.kind == MOAT_FRAME_END) {
            if (reason != NULL && reason_len > 0) {
                size_t n =
                    f.u.end.reason.len < reason_len - 1 ? f.u.end.reason.len : reason_len - 1;
                if (n > 0)
                    memcpy(reason, f.u.end.reason.data, n);
                reason[n] = '\0';
            }
            return (int)f.u.end.code;
        }
    }
}

raw_created raw_create(int port, const char *token, const char *chat, bool force_new,
                       uint64_t *took_ns)
{
    return raw_create_placed(port, token, chat, force_new, NULL, took_ns);
}

raw_created raw_create_placed(int port, const char *token, const char *chat, bool force_new,
                              const char *placed_by, uint64_t *took_ns)
{
    raw_created out = {-1, "", "", ""};
    raw_conn *c = raw_connect_ready(port, token);
    if (c == NULL)
        return out;
    Moat__V1__CreateSessionRequest req = MOAT__V1__CREATE_SESSION_REQUEST__INIT;
    req.chat_id = (char *)chat;
    req.force_new = force_new;
    req.placed_by = (char *)placed_by;
    ProtobufCMessage *resp = NULL;
    uint64_t t0 = moat_time_mono_ns();
    out.code =
        raw_unary(c, "/moat.v1.Sandboxes/CreateSession", &req.base,
                  &moat__v1__sandbox_session__descriptor, &resp, out.reason, sizeof(out.reason));
    if (took_ns != NULL)
        *took_ns = moat_time_mono_ns() - t0;
    if (resp != NULL) {
        Moat__V1__SandboxSession *s = (Moat__V1__SandboxSession *)resp;
        snprintf(out.session_id, sizeof(out.session_id), "%s", s->session_id);
        snprintf(out.owner, sizeof(out.owner), "%s", s->owner_address);
        protobuf_c_message_free_unpacked(resp, NULL);
    }
    raw_close(c);
    return out;
}

bool http_get(int port, const char *path, char *out, size_t cap)
{
    int fd = tcp_connect(port);
    if (fd < 0)
        return false;
    char req[256];
    int n = snprintf(req, sizeof(req), "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", path);
    if (send(fd, req, (size_t)n, MSG_NOSIGNAL) != n) {
        close(fd);
        return false;
    }
    size_t used = 0;
    for (;;) {
        struct pollfd pfd = {fd, POLLIN, 0};
        if (poll(&pfd, 1, 10000) <= 0)
            break;
        ssize_t r = recv(fd, out + used, cap - 1 - used, 0);
        if (r <= 0)
            break;
        used += (size_t)r;
        if (used >= cap - 1)
            break;
    }
    out[used] = '\0';
    close(fd);
    return used > 0;
}

long long metric_value(int metrics_port, const char *name)
{
    static char page[65536];
    if (!http_get(metrics_port, "/metrics", page, sizeof(page)))
        return -1;
    size_t n = strlen(name);
    for (const char *p = page; (p = strstr(p, name)) != NULL; p += n) {
        bool line_start = p == page || p[-1] == '\n';
        if (line_start && p[n] == ' ')
            return atoll(p + n + 1);
    }
    return -1;
}

long long moatd_hellos_refused(const moatd_proc *p, const char *reason)
{
    char name[96];
    snprintf(name, sizeof(name), "moat_hellos_refused_total{reason=\"%s\"}", reason);
    return metric_value(p->metrics_port, name);
}

long proc_rss_kb(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    long kb = -1;
    while (f != NULL && fgets(line, sizeof(line), f) != NULL)
        if (strncmp(line, "VmRSS:", 6) == 0)
            kb = atol(line + 6);
    if (f != NULL)
        fclose(f);
    return kb;
}

uint32_t raw_start_run(raw_conn *c, const char *sid, const char *cmd, uint64_t timeout_ms)
{
    Moat__V1__RunCommandRequest req = MOAT__V1__RUN_COMMAND_REQUEST__INIT;
    req.session_id = (char *)sid;
    req.command = (char *)cmd;
    req.timeout_ms = timeout_ms;
    return raw_call(c, "/moat.v1.Exec/RunCommand", 0, &req.base);
}

int raw_run_many(raw_conn *c, const char *sid, const char *cmd, int total, int parallel,
                 void (*tick)(void *ud), void *ud)
{
    int started = 0, open = 0, ok = 0;
    while (started < total || open > 0) {
        while (started < total && open < parallel) {
            if (raw_start_run(c, sid, cmd, 0) == 0)
                return -1;
            started++;
            open++;
        }
        moat_frame f;
        if (raw_recv(c, &f, 120000) != 1)
            return -1;
        if (f.kind == MOAT_FRAME_MESSAGE) {
            moat_frame w = {0};
            w.stream_id = f.stream_id;
            w.kind = MOAT_FRAME_WINDOW_UPDATE;
            w.u.window_update.increment = (uint32_t)f.u.message.payload.len;
            if (w.u.window_update.increment > 0 && !raw_send(c, &w))
                return -1;
        } else if (f.kind == MOAT_FRAME_END) {
            open--;
            ok += f.u.end.code == MOAT_CODE_OK;
        }
        if (tick != NULL)
            tick(ud);
    }
    return ok;
}
