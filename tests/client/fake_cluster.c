#include "fake_cluster.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "client/client.h"
#include "moat/v1/exec.pb-c.h"
#include "moat/v1/files.pb-c.h"
#include "moat/v1/sandbox.pb-c.h"
#include "wire/wire.h"

#define FAKE_FRAME (64u * 1024u)

typedef struct fconn {
    int fd; /* -1: a free slot */
    fake_node *node;
    moat_wire_decoder dec;
    bool hello_done;
    uint32_t stream; /* the call being read */
    char method[96];
    bool answered; /* the call's answer went (later messages only counted) */
    int nth;       /* request messages of the call so far */
    uint8_t rbuf[16384];
} fconn;

struct fake_cluster {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cond;
    int wake[2];
    bool stopping;
    int down_pending; /* node index to take down, or -1 */
    bool failed;
    int nodes_count;
    fake_node nodes[FAKE_NODES_MAX];
    fconn conns[FAKE_CONNS_MAX];
    uint8_t out[FAKE_FRAME + 64];
};

static void send_frame(fake_cluster *f, fconn *c, const moat_frame *fr)
{
    size_t n;
    if (moat_wire_encode(fr, f->out, sizeof f->out, &n) != MOAT_OK) {
        f->failed = true;
        return;
    }
    (void)!send(c->fd, f->out, n, MSG_NOSIGNAL);
}

static void send_message(fake_cluster *f, fconn *c, const uint8_t *p, size_t len)
{
    moat_frame fr = {.stream_id = c->stream, .kind = MOAT_FRAME_MESSAGE};
    fr.u.message.payload = (moat_slice){p, len};
    send_frame(f, c, &fr);
}

static void send_end(fake_cluster *f, fconn *c, moat_code code, const char *reason,
                     const char *owner)
{
    moat_frame fr = {.stream_id = c->stream, .kind = MOAT_FRAME_END};
    fr.u.end.code = code;
    fr.u.end.message = moat_slice_str(code ? "fake says no" : "");
    fr.u.end.reason = moat_slice_str(reason);
    if (owner != NULL) {
        fr.u.end.detail_count = 2;
        fr.u.end.details[0].key = moat_slice_str("owner_address");
        fr.u.end.details[0].value = moat_slice_str(owner);
        fr.u.end.details[1].key = moat_slice_str("owner_node");
        fr.u.end.details[1].value = moat_slice_str("n-other");
    }
    send_frame(f, c, &fr);
    c->answered = true;
}

static void send_packed(fake_cluster *f, fconn *c, const ProtobufCMessage *m)
{
    uint8_t buf[4096];
    if (protobuf_c_message_get_packed_size(m) > sizeof buf) {
        f->failed = true;
        return;
    }
    send_message(f, c, buf, protobuf_c_message_pack(m, buf));
}

static void send_event(fake_cluster *f, fconn *c, moat_exec_event *ev)
{
    uint8_t buf[1024];
    size_t n;
    if (moat_exec_event_encode(ev, buf, sizeof buf, &n) != MOAT_OK)
        f->failed = true;
    else
        send_message(f, c, buf, n);
}

/* A command's whole run: init, the output given, exit 0. */
static void run(fake_cluster *f, fconn *c, const char *output)
{
    moat_exec_event ev;
    memset(&ev, 0, sizeof ev);
    ev.sequence = 1;
    ev.kind = MOAT_EXEC_INIT;
    ev.execution_id = moat_slice_str("exec-1");
    send_event(f, c, &ev);
    memset(&ev, 0, sizeof ev);
    ev.sequence = 2;
    ev.kind = MOAT_EXEC_OUTPUT;
    ev.stream = MOAT_EXEC_STDOUT;
    ev.data = moat_slice_str(output);
    send_event(f, c, &ev);
    memset(&ev, 0, sizeof ev);
    ev.sequence = 3;
    ev.kind = MOAT_EXEC_EXIT;
    ev.exit_known = true;
    send_event(f, c, &ev);
    send_end(f, c, MOAT_CODE_OK, "", NULL);
}

/* The call's answer, from its first request message (and, for Interactive, its second). */
static void answer(fake_cluster *f, fconn *c, moat_slice payload, int nth)
{
    fake_node *n = c->node;
    bool interactive = strcmp(c->method, "/moat.v1.Exec/Interactive") == 0;
    if (nth == 2 && interactive) {
        Moat__V1__InteractiveRequest *r =
            moat__v1__interactive_request__unpack(NULL, payload.len, payload.data);
        if (r != NULL && r->input_case == MOAT__V1__INTERACTIVE_REQUEST__INPUT_STDIN) {
            snprintf(n->last_stdin, sizeof n->last_stdin, "%.*s", (int)r->stdin.len,
                     (const char *)r->stdin.data);
            run(f, c, n->last_stdin);
        }
        moat__v1__interactive_request__free_unpacked(r, NULL);
        return;
    }
    if (nth != 1 || n->hang)
        return;
    bool create = strcmp(c->method, "/moat.v1.Sandboxes/CreateSession") == 0;
    if (n->moved_to[0] && !create) {
        send_end(f, c, MOAT_CODE_FAILED_PRECONDITION, "session_moved", n->moved_to);
        return;
    }
    if (interactive)
        return; /* its output is its stdin, which comes next */
    if (create || strcmp(c->method, "/moat.v1.Sandboxes/GetSession") == 0) {
        Moat__V1__SandboxSession s = MOAT__V1__SANDBOX_SESSION__INIT;
        s.session_id = "9f1c2d3e-4b5a-4c6d-8e7f-0a1b2c3d4e5f";
        s.chat_id = "123e4567-e89b-12d3-a456-426614174000";
        s.status = MOAT__V1__SESSION_STATUS__RUNNING;
        s.owner_address = create ? n->create_owner : "";
        send_packed(f, c, &s.base);
        send_end(f, c, MOAT_CODE_OK, "", NULL);
    } else if (strcmp(c->method, "/moat.v1.Files/Stat") == 0) {
        Moat__V1__FileInfo fi = MOAT__V1__FILE_INFO__INIT;
        fi.path = n->addr; /* which node answered */
        fi.size = 42;
        send_packed(f, c, &fi.base);
        send_end(f, c, MOAT_CODE_OK, "", NULL);
    } else if (strcmp(c->method, "/moat.v1.Exec/RunCommand") == 0) {
        run(f, c, n->addr);
    } else {
        send_end(f, c, MOAT_CODE_UNIMPLEMENTED, "unknown_method", NULL);
    }
}

static void frame_in(fake_cluster *f, fconn *c, const moat_frame *fr)
{
    fake_node *n = c->node;
    if (!c->hello_done) {
        if (fr->kind != MOAT_FRAME_HELLO || !moat_slice_eq_str(fr->u.hello.token, "tok")) {
            f->failed = true;
            return;
        }
        moat_frame ack = {.kind = MOAT_FRAME_HELLO_ACK};
        ack.u.hello_ack.protocol_version = 1;
        ack.u.hello_ack.server_version = moat_slice_str("fake-node/1");
        ack.u.hello_ack.max_frame_size = FAKE_FRAME;
        ack.u.hello_ack.initial_window = FAKE_FRAME;
        ack.u.hello_ack.max_concurrent_streams = 16;
        send_frame(f, c, &ack);
        moat_wire_decoder_set_max(&c->dec, FAKE_FRAME);
        c->hello_done = true;
        return;
    }
    switch (fr->kind) {
    case MOAT_FRAME_CALL:
        c->stream = fr->stream_id;
        c->answered = false;
        snprintf(c->method, sizeof c->method, "%.*s", (int)fr->u.call.method.len,
                 (const char *)fr->u.call.method.data);
        n->calls++;
        n->last_deadline_ms = fr->u.call.deadline_ms;
        c->nth = 0;
        break;
    case MOAT_FRAME_MESSAGE:
        if (fr->stream_id != c->stream)
            break; /* a late message for a call already ended */
        n->messages++;
        if (!c->answered)
            answer(f, c, fr->u.message.payload, ++c->nth);
        break;
    case MOAT_FRAME_CANCEL:
        if (fr->stream_id == c->stream && !c->answered)
            send_end(f, c, MOAT_CODE_CANCELLED, "cancelled", NULL);
        break;
    case MOAT_FRAME_PING: {
        moat_frame p = {.kind = MOAT_FRAME_PONG};
        p.u.pong.payload = fr->u.ping.payload;
        send_frame(f, c, &p);
        break;
    }
    default:
        break;
    }
}

static void conn_close(fconn *c)
{
    close(c->fd);
    c->fd = -1;
    moat_wire_decoder_free(&c->dec);
}

static void conn_read(fake_cluster *f, fconn *c)
{
    ssize_t got = read(c->fd, c->rbuf, sizeof c->rbuf);
    if (got <= 0) {
        conn_close(c);
        return;
    }
    size_t pos = 0;
    while (pos < (size_t)got && c->fd >= 0) {
        size_t used;
        moat_slice body;
        moat_err err =
            moat_wire_decoder_feed(&c->dec, c->rbuf + pos, (size_t)got - pos, &used, &body);
        pos += used;
        if (err == MOAT_E_AGAIN)
            break;
        moat_frame fr;
        if (err != MOAT_OK || moat_wire_frame_decode(body, &fr) != MOAT_OK) {
            f->failed = true;
            conn_close(c);
            return;
        }
        frame_in(f, c, &fr);
    }
}

static void node_down(fake_cluster *f, int i)
{
    fake_node *n = &f->nodes[i];
    close(n->lfd);
    n->lfd = -1;
    for (size_t k = 0; k < FAKE_CONNS_MAX; k++)
        if (f->conns[k].fd >= 0 && f->conns[k].node == n)
            conn_close(&f->conns[k]);
}

static void *serve(void *arg)
{
    fake_cluster *f = arg;
    struct pollfd pfd[1 + FAKE_NODES_MAX + FAKE_CONNS_MAX];
    void *who[1 + FAKE_NODES_MAX + FAKE_CONNS_MAX];
    pthread_mutex_lock(&f->mu);
    while (!f->stopping) {
        if (f->down_pending >= 0) {
            node_down(f, f->down_pending);
            f->down_pending = -1;
            pthread_cond_broadcast(&f->cond);
        }
        int np = 0;
        pfd[np] = (struct pollfd){f->wake[0], POLLIN, 0};
        who[np++] = NULL;
        for (int i = 0; i < f->nodes_count; i++)
            if (f->nodes[i].lfd >= 0) {
                pfd[np] = (struct pollfd){f->nodes[i].lfd, POLLIN, 0};
                who[np++] = &f->nodes[i];
            }
        int first_conn = np;
        for (size_t k = 0; k < FAKE_CONNS_MAX; k++)
            if (f->conns[k].fd >= 0) {
                pfd[np] = (struct pollfd){f->conns[k].fd, POLLIN, 0};
                who[np++] = &f->conns[k];
            }
        pthread_mutex_unlock(&f->mu);
        int r = poll(pfd, (nfds_t)np, -1);
        pthread_mutex_lock(&f->mu);
        if (r <= 0)
            continue;
        if (pfd[0].revents) {
            char b[16];
            (void)!read(f->wake[0], b, sizeof b);
        }
        for (int i = 1; i < np; i++) {
            if (!pfd[i].revents)
                continue;
            if (i < first_conn) {
                fake_node *n = who[i];
                int fd = accept(n->lfd, NULL, NULL);
                fconn *slot = NULL;
                for (size_t k = 0; k < FAKE_CONNS_MAX && slot == NULL; k++)
                    if (f->conns[k].fd < 0)
                        slot = &f->conns[k];
                if (fd < 0 || slot == NULL) {
                    if (fd >= 0)
                        close(fd);
                    f->failed = true;
                    continue;
                }
                /* As moatd does: a Message and its End go out at once, not after an ACK. */
                int one = 1;
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                memset(slot, 0, offsetof(fconn, rbuf));
                slot->fd = fd;
                slot->node = n;
                moat_wire_decoder_init(&slot->dec, MOAT_WIRE_PREHELLO_MAX_FRAME);
                n->connections++;
            } else {
                fconn *c = who[i];
                if (c->fd >= 0)
                    conn_read(f, c);
            }
        }
    }
    pthread_mutex_unlock(&f->mu);
    return NULL;
}

fake_cluster *fake_cluster_start(int n)
{
    if (n < 1 || n > FAKE_NODES_MAX)
        return NULL;
    fake_cluster *f = calloc(1, sizeof *f);
    if (f == NULL)
        return NULL;
    pthread_mutex_init(&f->mu, NULL);
    pthread_cond_init(&f->cond, NULL);
    f->down_pending = -1;
    f->nodes_count = n;
    for (size_t k = 0; k < FAKE_CONNS_MAX; k++)
        f->conns[k].fd = -1;
    bool ok = pipe(f->wake) == 0;
    for (int i = 0; i < n; i++) {
        fake_node *node = &f->nodes[i];
        struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t len = sizeof sin;
        node->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        ok = ok && node->lfd >= 0 && bind(node->lfd, (struct sockaddr *)&sin, sizeof sin) == 0 &&
             getsockname(node->lfd, (struct sockaddr *)&sin, &len) == 0 &&
             listen(node->lfd, 16) == 0;
        node->port = ntohs(sin.sin_port);
        snprintf(node->addr, sizeof node->addr, "127.0.0.1:%d", node->port);
    }
    if (!ok || pthread_create(&f->thread, NULL, serve, f) != 0) {
        for (int i = 0; i < n; i++)
            if (f->nodes[i].lfd >= 0)
                close(f->nodes[i].lfd);
        free(f);
        return NULL;
    }
    return f;
}

bool fake_cluster_stop(fake_cluster *f)
{
    if (f == NULL)
        return true;
    pthread_mutex_lock(&f->mu);
    f->stopping = true;
    pthread_mutex_unlock(&f->mu);
    (void)!write(f->wake[1], "x", 1);
    pthread_join(f->thread, NULL);
    for (int i = 0; i < f->nodes_count; i++)
        if (f->nodes[i].lfd >= 0)
            close(f->nodes[i].lfd);
    for (size_t k = 0; k < FAKE_CONNS_MAX; k++)
        if (f->conns[k].fd >= 0)
            conn_close(&f->conns[k]);
    close(f->wake[0]);
    close(f->wake[1]);
    bool ok = !f->failed;
    pthread_mutex_destroy(&f->mu);
    pthread_cond_destroy(&f->cond);
    free(f);
    return ok;
}

fake_node *fake_cluster_node(fake_cluster *f, int i)
{
    return &f->nodes[i];
}

void fake_cluster_lock(fake_cluster *f)
{
    pthread_mutex_lock(&f->mu);
}

void fake_cluster_unlock(fake_cluster *f)
{
    pthread_mutex_unlock(&f->mu);
}

void fake_cluster_down(fake_cluster *f, int i)
{
    pthread_mutex_lock(&f->mu);
    f->down_pending = i;
    (void)!write(f->wake[1], "x", 1);
    while (f->down_pending >= 0)
        pthread_cond_wait(&f->cond, &f->mu);
    pthread_mutex_unlock(&f->mu);
}
