/* A fake cluster node for hostile cases (fake_peer.h). */
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "fake_peer.h"
#include "harness.h"

static bool send_end(raw_conn *c, uint32_t id)
{
    moat_frame f = {0};
    f.stream_id = id;
    f.kind = MOAT_FRAME_END;
    f.u.end.code = MOAT_CODE_NOT_FOUND;
    f.u.end.reason = moat_slice_str("fake_end");
    f.u.end.message = moat_slice_str("the fake node's own end");
    f.u.end.detail_count = 1;
    f.u.end.details[0].key = moat_slice_str("fake_key");
    f.u.end.details[0].value = moat_slice_str("fake_value");
    return raw_send(c, &f);
}

enum { CONNS = 8, HELD = 32 };

typedef struct fake_state {
    raw_conn *conns[CONNS];
    bool ready[CONNS];    /* its Hello was answered */
    uint32_t open[CONNS]; /* calls it has that were not ended */
    int held_conn[HELD];  /* calls whose End waits for hold_until calls */
    uint32_t held_id[HELD];
    int nheld;
} fake_state;

static void drop(fake_state *fs, int i)
{
    raw_close(fs->conns[i]);
    fs->conns[i] = NULL;
    for (int k = 0; k < fs->nheld; k++)
        if (fs->held_conn[k] == i)
            fs->held_conn[k] = -1;
}

static void end_held(fake_peer *f, fake_state *fs)
{
    if (atomic_load(&f->calls) < atomic_load(&f->hold_until))
        return;
    for (int k = 0; k < fs->nheld; k++) {
        int i = fs->held_conn[k];
        if (i >= 0 && fs->conns[i] != NULL) {
            send_end(fs->conns[i], fs->held_id[k]);
            fs->open[i]--;
        }
    }
    fs->nheld = 0;
}

/* The frames a connection has: false when it is to be closed. */
static bool serve(fake_peer *f, fake_state *fs, int i)
{
    raw_conn *c = fs->conns[i];
    moat_frame fr;
    int r;
    while ((r = raw_recv(c, &fr, 0)) == 1) {
        if (!fs->ready[i]) {
            if (fr.kind != MOAT_FRAME_HELLO)
                return false;
            moat_frame ack = {0};
            ack.kind = MOAT_FRAME_HELLO_ACK;
            ack.u.hello_ack.protocol_version = MOAT_WIRE_PROTOCOL_VERSION;
            ack.u.hello_ack.server_version = moat_slice_str("fake");
            ack.u.hello_ack.max_frame_size = 1u << 20;
            ack.u.hello_ack.initial_window = 1u << 16;
            ack.u.hello_ack.max_concurrent_streams = (uint32_t)atomic_load(&f->max_streams);
            fs->ready[i] = raw_send(c, &ack);
            if (!fs->ready[i])
                return false;
        } else if (fr.kind == MOAT_FRAME_CALL) {
            atomic_fetch_add(&f->calls, 1);
            if (atomic_load(&f->mute))
                continue;
            if (atomic_load(&f->close_mid_call))
                return false;
            /* As moatd refuses a call past the streams its HelloAck allowed. */
            if (fs->open[i] >= (uint32_t)atomic_load(&f->max_streams))
                atomic_fetch_add(&f->refused, 1);
            fs->open[i]++;
        } else if (atomic_load(&f->mute)) {
            continue;
        } else if (fr.kind == MOAT_FRAME_PING) {
            moat_frame pong = {0};
            pong.kind = MOAT_FRAME_PONG;
            pong.u.pong.payload = fr.u.ping.payload;
            if (!raw_send(c, &pong))
                return false;
        } else if (fr.kind == MOAT_FRAME_MESSAGE && fs->nheld < HELD) {
            fs->held_conn[fs->nheld] = i;
            fs->held_id[fs->nheld++] = fr.stream_id;
            end_held(f, fs);
        }
    }
    return r != 0;
}

static void *run(void *arg)
{
    fake_peer *f = arg;
    fake_state fs;
    memset(&fs, 0, sizeof(fs));
    while (!atomic_load(&f->stop)) {
        if (atomic_load(&f->restart)) {
            for (int i = 0; i < CONNS; i++)
                if (fs.conns[i] != NULL)
                    drop(&fs, i);
            atomic_store(&f->restart, false);
        }
        struct pollfd p[CONNS + 1];
        int idx[CONNS + 1], n = 0;
        p[n] = (struct pollfd){f->lfd, POLLIN, 0};
        idx[n++] = -1;
        for (int i = 0; i < CONNS; i++) {
            if (fs.conns[i] != NULL) {
                p[n] = (struct pollfd){fs.conns[i]->fd, POLLIN, 0};
                idx[n++] = i;
            }
        }
        if (poll(p, (nfds_t)n, 100) <= 0)
            continue;
        for (int k = 1; k < n; k++)
            if (p[k].revents != 0 && !serve(f, &fs, idx[k]))
                drop(&fs, idx[k]);
        if (p[0].revents == 0)
            continue;
        int fd = accept(f->lfd, NULL, NULL), i = 0;
        while (fd >= 0 && i < CONNS && fs.conns[i] != NULL)
            i++;
        raw_conn *c = fd >= 0 && i < CONNS ? calloc(1, sizeof(*c)) : NULL;
        if (c == NULL) {
            if (fd >= 0)
                close(fd);
            continue;
        }
        atomic_fetch_add(&f->accepted, 1);
        c->fd = fd;
        moat_wire_decoder_init(&c->dec, MOAT_WIRE_MAX_FRAME_LIMIT);
        fs.conns[i] = c;
        fs.ready[i] = false;
        fs.open[i] = 0;
    }
    for (int i = 0; i < CONNS; i++)
        if (fs.conns[i] != NULL)
            drop(&fs, i);
    return NULL;
}

int silent_peer_open(char address[32])
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(sa);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, len) != 0 || listen(fd, 8) != 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &len) != 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    snprintf(address, 32, "127.0.0.1:%d", ntohs(sa.sin_port));
    return fd;
}

bool fake_peer_start(fake_peer *f)
{
    memset(f, 0, sizeof(*f));
    atomic_store(&f->max_streams, 8);
    f->lfd = silent_peer_open(f->address);
    if (f->lfd >= 0 && pthread_create(&f->thread, NULL, run, f) != 0) {
        close(f->lfd);
        f->lfd = -1;
    }
    return f->lfd >= 0;
}

void fake_peer_restart(fake_peer *f)
{
    atomic_store(&f->restart, true);
    while (atomic_load(&f->restart))
        usleep(10000);
}

void fake_peer_stop(fake_peer *f)
{
    if (f->lfd < 0)
        return;
    atomic_store(&f->stop, true);
    pthread_join(f->thread, NULL);
    close(f->lfd);
    f->lfd = -1;
}
