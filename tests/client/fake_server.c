#include "fake_server.h"

#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static void check(fake *s, bool ok)
{
    if (!ok)
        s->failed = true;
}

static void send_frame(fake *s, const moat_frame *f)
{
    static uint8_t out[2 * FAKE_WINDOW + 64];
    size_t n;
    moat_err err = moat_wire_encode(f, out, sizeof out, &n);
    check(s, err == MOAT_OK);
    /* The client may have hung up already (cancel, deadline): not an error here. */
    if (err == MOAT_OK)
        fake_send_raw(s, out, n);
}

void fake_send_raw(fake *s, const uint8_t *p, size_t len)
{
    (void)!send(s->fd, p, len, MSG_NOSIGNAL);
}

/* Next frame from the client; false at EOF or on a bad frame. */
static bool read_frame(fake *s, moat_frame *f)
{
    for (;;) {
        if (s->rpos < s->rlen) {
            size_t used;
            moat_slice body;
            moat_err err =
                moat_wire_decoder_feed(&s->dec, s->rbuf + s->rpos, s->rlen - s->rpos, &used, &body);
            s->rpos += used;
            if (err == MOAT_OK) {
                if (moat_wire_frame_decode(body, f) != MOAT_OK) {
                    s->failed = true;
                    return false;
                }
                if (f->kind == MOAT_FRAME_MESSAGE &&
                    moat_window_consume(&s->client_window[f->stream_id % 64],
                                        (uint32_t)f->u.message.payload.len) != MOAT_OK) {
                    s->window_violations++;
                    s->failed = true;
                }
                if (f->kind == MOAT_FRAME_WINDOW_UPDATE) {
                    s->updates_seen++;
                    check(s, moat_window_grant(&s->send_window[f->stream_id % 64],
                                               f->u.window_update.increment) == MOAT_OK);
                }
                return true;
            }
            if (err != MOAT_E_AGAIN) {
                s->failed = true;
                return false;
            }
        }
        ssize_t n = read(s->fd, s->rbuf, sizeof s->rbuf);
        if (n <= 0)
            return false;
        s->rpos = 0;
        s->rlen = (size_t)n;
    }
}

void fake_send_end(fake *s, uint32_t stream, moat_code code, const char *msg, const char *reason,
                   const char *chat)
{
    moat_frame f;
    memset(&f, 0, sizeof f);
    f.kind = MOAT_FRAME_END;
    f.stream_id = stream;
    f.u.end.code = code;
    f.u.end.message = moat_slice_str(msg);
    f.u.end.reason = moat_slice_str(reason);
    if (chat) {
        f.u.end.detail_count = 1;
        f.u.end.details[0].key = moat_slice_str("chat_id");
        f.u.end.details[0].value = moat_slice_str(chat);
    }
    send_frame(s, &f);
}

void fake_send_message(fake *s, uint32_t stream, const uint8_t *p, size_t len)
{
    moat_window *w = &s->send_window[stream % 64];
    while (w->available < len) {
        moat_frame f;
        if (!read_frame(s, &f))
            return;
    }
    check(s, moat_window_consume(w, (uint32_t)len) == MOAT_OK);
    moat_frame f;
    memset(&f, 0, sizeof f);
    f.kind = MOAT_FRAME_MESSAGE;
    f.stream_id = stream;
    f.u.message.payload = (moat_slice){p, len};
    send_frame(s, &f);
}

void fake_grant(fake *s, uint32_t stream, uint32_t increment)
{
    check(s, moat_window_grant(&s->client_window[stream % 64], increment) == MOAT_OK);
    moat_frame f;
    memset(&f, 0, sizeof f);
    f.kind = MOAT_FRAME_WINDOW_UPDATE;
    f.stream_id = stream;
    f.u.window_update.increment = increment;
    send_frame(s, &f);
}

static void serve_connection(fake *s)
{
    s->rpos = s->rlen = 0;
    s->drop = false;
    moat_wire_decoder_init(&s->dec, MOAT_WIRE_PREHELLO_MAX_FRAME);
    moat_frame f;
    if (!read_frame(s, &f) || f.kind != MOAT_FRAME_HELLO || f.u.hello.protocol_version != 1) {
        s->failed = true;
        goto out;
    }
    if (!moat_slice_eq_str(f.u.hello.token, "tok")) {
        fake_send_end(s, 0, MOAT_CODE_UNAUTHENTICATED, "bad token", "bad_token", NULL);
        goto out;
    }
    memset(&f, 0, sizeof f);
    f.kind = MOAT_FRAME_HELLO_ACK;
    f.u.hello_ack.protocol_version = 1;
    f.u.hello_ack.server_version = moat_slice_str("fake/1");
    f.u.hello_ack.max_frame_size = 2 * FAKE_WINDOW;
    f.u.hello_ack.initial_window = FAKE_WINDOW;
    f.u.hello_ack.max_concurrent_streams = 8;
    send_frame(s, &f);
    moat_wire_decoder_set_max(&s->dec, 2 * FAKE_WINDOW);
    while (!s->drop && read_frame(s, &f)) {
        uint32_t id = f.stream_id;
        switch (f.kind) {
        case MOAT_FRAME_PING: {
            moat_frame p = {.kind = MOAT_FRAME_PONG};
            p.u.pong.payload = f.u.ping.payload;
            send_frame(s, &p);
            break;
        }
        case MOAT_FRAME_PONG:
            if (f.u.pong.payload == 77)
                s->pongs_seen++;
            break;
        case MOAT_FRAME_CALL:
            check(s, f.u.call.method.len < sizeof s->method);
            snprintf(s->method, sizeof s->method, "%.*s", (int)f.u.call.method.len,
                     (const char *)f.u.call.method.data);
            s->call_stream = id;
            moat_window_init(&s->send_window[id % 64], FAKE_WINDOW);
            moat_window_init(&s->client_window[id % 64], FAKE_WINDOW);
            break;
        case MOAT_FRAME_MESSAGE:
            check(s, id == s->call_stream);
            s->handler(s, id, s->method, f.u.message.payload);
            break;
        case MOAT_FRAME_CANCEL:
            fake_send_end(s, id, MOAT_CODE_CANCELLED, "cancelled by the client", "", NULL);
            break;
        default:
            break;
        }
    }
out:
    moat_wire_decoder_free(&s->dec);
    close(s->fd);
}

static void *serve(void *arg)
{
    fake *s = arg;
    for (;;) {
        s->fd = accept(s->lfd, NULL, NULL);
        if (s->fd >= 0 && s->stopping)
            close(s->fd);
        if (s->fd < 0 || s->stopping)
            break;
        serve_connection(s);
    }
    return NULL;
}

void fake_start_unix(fake *s, fake_handler handler, void *user)
{
    memset(s, 0, sizeof *s);
    s->handler = handler;
    s->user = user;
    snprintf(s->path, sizeof s->path, "/tmp/moat-fake-%d.sock", (int)getpid());
    unlink(s->path);
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    memcpy(sun.sun_path, s->path, strlen(s->path) + 1);
    s->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    check(s, bind(s->lfd, (struct sockaddr *)&sun, sizeof sun) == 0 && listen(s->lfd, 8) == 0);
    check(s, pthread_create(&s->thread, NULL, serve, s) == 0);
}

void fake_start_tcp(fake *s, fake_handler handler, void *user)
{
    memset(s, 0, sizeof *s);
    s->handler = handler;
    s->user = user;
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    s->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    socklen_t len = sizeof sin;
    check(s, bind(s->lfd, (struct sockaddr *)&sin, sizeof sin) == 0 &&
                 getsockname(s->lfd, (struct sockaddr *)&sin, &len) == 0 && listen(s->lfd, 8) == 0);
    s->port = ntohs(sin.sin_port);
    check(s, pthread_create(&s->thread, NULL, serve, s) == 0);
}

bool fake_stop(fake *s)
{
    if (s->stopping)
        return !s->failed;
    s->stopping = true;
    /* A last connection wakes the thread if it waits in accept(). */
    int fd;
    if (s->path[0]) {
        struct sockaddr_un sun = {.sun_family = AF_UNIX};
        memcpy(sun.sun_path, s->path, strlen(s->path) + 1);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        (void)!connect(fd, (struct sockaddr *)&sun, sizeof sun);
    } else {
        struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        sin.sin_port = htons((uint16_t)s->port);
        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        (void)!connect(fd, (struct sockaddr *)&sin, sizeof sin);
    }
    pthread_join(s->thread, NULL);
    close(fd);
    close(s->lfd);
    if (s->path[0])
        unlink(s->path);
    return !s->failed;
}

void fake_reply(fake *s, uint32_t stream, const ProtobufCMessage *m)
{
    static uint8_t buf[8192];
    if (protobuf_c_message_get_packed_size(m) > sizeof buf) {
        s->failed = true;
        return;
    }
    fake_send_message(s, stream, buf, protobuf_c_message_pack(m, buf));
    fake_send_end(s, stream, MOAT_CODE_OK, "", "", NULL);
}
