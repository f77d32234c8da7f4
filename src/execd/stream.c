/* The streaming response of a running command: pipes + poll, pushed to MHD as the child
 * writes. MHD (thread per connection) calls stream_read only when the socket can take
 * more, so a reader that stops reading stops the pipe reads and the child blocks. */
#include "stream.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#define LINE_READ 16384
#define BIN_READ  MOAT_EXECD_BINARY_CHUNK_MAX
#define QUEUE_MAX (8u << 20)
/* After the process ended, at most this much more is read from pipes kept open by its
 * children, so a background writer cannot hold the response open forever. */
#define DRAIN_BUDGET (4u << 20)
#define MAX_LINE     65536
/* Binary mode: a fill stops when less than this much payload room is left in MHD's buffer. */
#define FILL_MIN 4096
/* Bulk output (binary mode): once a read brings BULK_MIN bytes, the pipe is grown to
 * BULK_PIPE and, while reads stay that large, a read that would find less than a chunk waits
 * BULK_WAIT_NS first. A fast writer (about 1 GB/s) then fills whole 64 KiB events into the
 * bigger pipe instead of waking us for every few KiB it writes: fewer wakeups, reads and sends
 * for the child, execd and the reader alike. Output read in pieces under BULK_MIN never
 * waits; the pipe growth is best effort and counts against the user's pipe page limits, so it
 * happens only for streams that actually produce bulk output. */
#define BULK_MIN     (16u * 1024u)
#define BULK_PIPE    (256 * 1024)
#define BULK_WAIT_NS 50000L

enum { ST_RUN, ST_DRAIN, ST_END };

struct xd_stream {
    xd_cmd *cmd;
    int fds[2]; /* stdout, stderr read ends; -1 once closed */
    bool binary;
    moat_execd_lines lines[2];
    moat_buf q;
    size_t qoff;
    uint64_t next_ping;
    int state;
    uint64_t drained;
    unsigned char *rbuf;
    xd_stream_finish_cb finish;
    void *finish_ud;
    bool terminate_on_close;
    int first; /* binary mode: the pipe read first on the next fill (fill_binary) */
    bool tried_grow[2];
    bool grown[2]; /* the pipe holds BULK_PIPE */
    bool bulk[2];  /* the pipe is grown and the last read was at least BULK_MIN */
};

static const char *const stream_names[2] = {"stdout", "stderr"};

typedef struct line_ctx {
    xd_stream *st;
    const char *name;
} line_ctx;

static moat_err on_line(void *ud, const char *line, size_t len)
{
    line_ctx *lc = ud;
    moat_execd_event ev = {
        .type = lc->name, .text = line, .text_len = len, .timestamp = moat_time_now_ms()};
    return moat_execd_sse_event(&lc->st->q, &ev);
}

void xd_stream_emit(xd_stream *st, const moat_execd_event *ev)
{
    moat_execd_sse_event(&st->q, ev);
}

xd_stream *xd_stream_new(xd_cmd *cmd, int out_fd, int err_fd, bool binary,
                         moat_execd_line_mode mode)
{
    xd_stream *st = calloc(1, sizeof(*st));
    if (st == NULL)
        return NULL;
    st->rbuf = malloc(BIN_READ);
    if (st->rbuf == NULL) {
        free(st);
        return NULL;
    }
    st->cmd = cmd;
    st->fds[0] = out_fd;
    st->fds[1] = err_fd;
    st->binary = binary;
    st->terminate_on_close = true;
    for (int i = 0; i < 2; i++)
        moat_execd_lines_init(&st->lines[i], mode, MAX_LINE);
    moat_buf_init(&st->q, QUEUE_MAX);
    st->next_ping = moat_time_mono_ns();
    st->state = cmd != NULL ? ST_RUN : ST_END;
    return st;
}

void xd_stream_on_finish(xd_stream *st, xd_stream_finish_cb cb, void *ud)
{
    st->finish = cb;
    st->finish_ud = ud;
}

void xd_stream_set_terminate_on_close(xd_stream *st, bool on)
{
    st->terminate_on_close = on;
}

/* Encodes n bytes just read from stream i. */
static void consume_output(xd_stream *st, int i, size_t n)
{
    if (st->binary) {
        moat_execd_sse_binary(&st->q, stream_names[i], moat_time_now_ms(), st->rbuf, n);
    } else {
        line_ctx lc = {st, stream_names[i]};
        moat_execd_lines_feed(&st->lines[i], st->rbuf, n, on_line, &lc);
    }
}

/* Reads from fd i what is there, up to one chunk: reads again after a short read, so data
 * that piled up while the last event was being sent goes out as one event and one send
 * (never waits for more). Sets *closed on EOF or error. Returns the bytes read. */
static size_t read_avail(int fd, uint8_t *dst, size_t cap, bool *closed)
{
    size_t total = 0;
    *closed = false;
    while (total < cap) {
        ssize_t n = read(fd, dst + total, cap - total);
        if (n > 0) {
            total += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        *closed = n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK);
        break;
    }
    return total;
}

/* Binary mode with an empty queue: the bytes are read straight into the queue behind room
 * for the header, which is then written in front of them (no extra copy). */
static size_t read_binary_direct(xd_stream *st, int i, bool *closed)
{
    moat_buf *q = &st->q;
    const size_t room = MOAT_EXECD_BINARY_HEADER_MAX;
    if (moat_buf_reserve(q, room + BIN_READ + 2) != MOAT_OK) {
        *closed = false;
        return 0;
    }
    uint8_t *dst = q->data + room;
    size_t total = read_avail(st->fds[i], dst, BIN_READ, closed);
    if (total == 0)
        return 0;
    char head[MOAT_EXECD_BINARY_HEADER_MAX];
    size_t h = moat_execd_sse_binary_header(head, stream_names[i], moat_time_now_ms(), total);
    memcpy(q->data + room - h, head, h);
    memcpy(dst + total, "\n\n", 2);
    q->len = room + total + 2;
    st->qoff = room - h;
    return total;
}

/* Reads once from fd i. Returns bytes read, 0 on EOF (fd closed), -1 if nothing was there. */
static ssize_t read_one(xd_stream *st, int i)
{
    bool closed;
    size_t total;
    if (st->binary && st->q.len == 0) {
        total = read_binary_direct(st, i, &closed);
    } else {
        total = read_avail(st->fds[i], st->rbuf, st->binary ? BIN_READ : LINE_READ, &closed);
        if (total > 0)
            consume_output(st, i, total);
    }
    if (closed) {
        close(st->fds[i]);
        st->fds[i] = -1;
    }
    if (total > 0)
        return (ssize_t)total;
    return closed ? 0 : -1;
}

static void emit_final(xd_stream *st)
{
    if (!st->binary) {
        for (int i = 0; i < 2; i++) {
            line_ctx lc = {st, stream_names[i]};
            moat_execd_lines_finish(&st->lines[i], on_line, &lc);
        }
    }
    for (int i = 0; i < 2; i++) {
        if (st->fds[i] >= 0) {
            close(st->fds[i]);
            st->fds[i] = -1;
        }
    }
    if (st->finish != NULL)
        st->finish(st, st->cmd, st->finish_ud);
    st->state = ST_END;
}

/* Waits for output, the process's end or the next ping; unless poll_only, also reads (through
 * the queue) what is ready. */
static void produce(xd_stream *st, bool poll_only)
{
    if (st->state == ST_DRAIN) {
        bool any = false;
        for (int i = 0; i < 2 && st->q.len == 0; i++) {
            if (st->fds[i] < 0)
                continue;
            ssize_t n = read_one(st, i);
            if (n > 0) {
                any = true;
                st->drained += (uint64_t)n;
            }
        }
        if (!any || st->drained >= DRAIN_BUDGET)
            emit_final(st);
        return;
    }
    uint64_t now = moat_time_mono_ns();
    if (now >= st->next_ping) {
        moat_execd_event ev = {
            .type = "ping", .text = "pong", .text_len = 4, .timestamp = moat_time_now_ms()};
        moat_execd_sse_event(&st->q, &ev);
        st->next_ping = now + xd.cfg.ping_ns;
        return;
    }
    struct pollfd pfd[3];
    int map[3], n = 0;
    for (int i = 0; i < 2; i++) {
        if (st->fds[i] >= 0) {
            pfd[n].fd = st->fds[i];
            pfd[n].events = POLLIN;
            map[n++] = i;
        }
    }
    pfd[n].fd = st->cmd->notify_r;
    pfd[n].events = POLLIN;
    map[n++] = 2;
    int timeout_ms = (int)((st->next_ping - now) / 1000000ull) + 1;
    int r = poll(pfd, (nfds_t)n, timeout_ms);
    if (r <= 0)
        return;
    for (int k = 0; k < n; k++) {
        if (pfd[k].revents == 0)
            continue;
        if (map[k] == 2) {
            st->state = ST_DRAIN;
            continue;
        }
        if (!poll_only)
            read_one(st, map[k]);
    }
}

/* Updates pipe i's bulk state after a read of n bytes. */
static void note_bulk(xd_stream *st, int i, size_t n, bool closed)
{
    bool big = !closed && n >= BULK_MIN;
    if (big && !st->tried_grow[i]) {
        st->tried_grow[i] = true;
        /* Refused (pipe-max-size, the user's pipe page limits): never bulk, a wait would only
         * stall a writer blocked on a full 64 KiB pipe. */
        st->grown[i] = fcntl(st->fds[i], F_SETPIPE_SZ, BULK_PIPE) >= BULK_PIPE;
    }
    st->bulk[i] = big && st->grown[i];
}

/* Binary mode: reads what the pipes hold straight into MHD's send buffer, one event per read
 * of at most one chunk, as many events as fit (fewer sends, wakeups and copies than one event
 * per call through the queue). The payload is read behind room for a header whose length is
 * guessed for a full chunk and moved only when the real header is shorter.
 *
 * Two pipes keep no order between them: when both hold output, which was written first is
 * lost. stdout is read first (as line mode does), so `echo out; echo err >&2` keeps its order
 * and writes apart in time come out in write order. Only after a fill that ran out of room
 * does the other pipe go first, so a busy stdout cannot starve stderr. */
static size_t fill_binary(xd_stream *st, uint8_t *buf, size_t max)
{
    size_t used = 0;
    bool progress = true, waited = false, full = false;
    while (progress && !full) {
        progress = false;
        /* A pass reads only the pipes that held output (or their end) before the first read,
         * as line mode's poll does: output the second pipe got after the first was read waits
         * for the next pass, behind whatever the first got meanwhile. Without it, `echo out;
         * echo err >&2` landing between the two reads came out err first. */
        struct pollfd ready[2];
        for (int i = 0; i < 2; i++)
            ready[i] = (struct pollfd){.fd = st->fds[i], .events = POLLIN};
        if (poll(ready, 2, 0) < 0)
            break;
        for (int k = 0; k < 2; k++) {
            int i = (st->first + k) & 1;
            if (st->fds[i] < 0 || ready[i].revents == 0)
                continue;
            char head[MOAT_EXECD_BINARY_HEADER_MAX];
            int64_t ts = moat_time_now_ms();
            size_t guess = moat_execd_sse_binary_header(head, stream_names[i], ts, BIN_READ);
            if (used + guess + 2 + FILL_MIN > max) {
                full = true;
                break;
            }
            size_t cap = max - used - guess - 2;
            if (cap > BIN_READ)
                cap = BIN_READ;
            if (st->bulk[i] && !waited) {
                int avail = 0;
                if (ioctl(st->fds[i], FIONREAD, &avail) == 0 && (size_t)avail < cap) {
                    struct timespec w = {0, BULK_WAIT_NS};
                    nanosleep(&w, NULL);
                }
                waited = true;
            }
            bool closed;
            size_t n = read_avail(st->fds[i], buf + used + guess, cap, &closed);
            note_bulk(st, i, n, closed);
            if (closed) {
                close(st->fds[i]);
                st->fds[i] = -1;
            }
            if (n == 0)
                continue;
            size_t h = moat_execd_sse_binary_header(head, stream_names[i], ts, n);
            if (h != guess)
                memmove(buf + used + h, buf + used + guess, n);
            memcpy(buf + used, head, h);
            memcpy(buf + used + h + n, "\n\n", 2);
            used += h + n + 2;
            st->drained += st->state == ST_DRAIN ? n : 0;
            if (n == cap && !closed)
                progress = true; /* the pipe may hold more */
        }
    }
    st->first = full ? st->first ^ 1 : 0;
    return used;
}

/* Binary mode with nothing queued: waits (poll) for output, the process's end or the next
 * ping, then fills buf. Returns the bytes written to buf (0: look at the queue and state). */
static size_t produce_binary(xd_stream *st, uint8_t *buf, size_t max)
{
    if (max < FILL_MIN + 2 * MOAT_EXECD_BINARY_HEADER_MAX) {
        produce(st, false);
        return 0;
    }
    if (st->state == ST_DRAIN) {
        size_t n = st->drained < DRAIN_BUDGET ? fill_binary(st, buf, max) : 0;
        if (n == 0)
            emit_final(st);
        return n;
    }
    if (moat_time_mono_ns() < st->next_ping) {
        size_t n = fill_binary(st, buf, max);
        if (n > 0)
            return n;
    }
    produce(st, true);
    return 0;
}

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    xd_stream *st = cls;
    for (;;) {
        if (st->q.len > st->qoff) {
            size_t n = st->q.len - st->qoff;
            if (n > max)
                n = max;
            memcpy(buf, st->q.data + st->qoff, n);
            st->qoff += n;
            if (st->qoff == st->q.len) {
                moat_buf_reset(&st->q);
                st->qoff = 0;
            }
            return (ssize_t)n;
        }
        if (st->state == ST_END)
            return MHD_CONTENT_READER_END_OF_STREAM;
        if (st->binary) {
            size_t n = produce_binary(st, (uint8_t *)buf, max);
            if (n > 0)
                return (ssize_t)n;
            continue;
        }
        produce(st, false);
    }
}

static void stream_free(void *cls)
{
    xd_stream *st = cls;
    if (st == NULL)
        return;
    if (st->state != ST_END) {
        /* The reader went away before the end: stop the command rather than leave it
         * blocked on a pipe nobody reads. */
        if (st->cmd != NULL && st->terminate_on_close)
            xd_cmd_terminate(st->cmd, 3000);
        for (int i = 0; i < 2; i++) {
            if (st->fds[i] >= 0)
                close(st->fds[i]);
            st->fds[i] = -1;
        }
        if (st->finish != NULL)
            st->finish(st, NULL, st->finish_ud);
    }
    for (int i = 0; i < 2; i++)
        moat_execd_lines_free(&st->lines[i]);
    moat_buf_free(&st->q);
    free(st->rbuf);
    xd_cmd_unref(st->cmd);
    free(st);
}

void xd_stream_free(xd_stream *st)
{
    stream_free(st);
}

enum MHD_Result xd_stream_respond(struct MHD_Connection *conn, xd_stream *st)
{
    struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 128 * 1024,
                                                                  stream_read, st, stream_free);
    if (resp == NULL) {
        stream_free(st);
        return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type", "text/event-stream");
    MHD_add_response_header(resp, "Cache-Control", "no-cache");
    MHD_add_response_header(resp, "X-Accel-Buffering", "no");
    if (st->binary)
        MHD_add_response_header(resp, "X-Moat-Output", "binary");
    enum MHD_Result ret = MHD_queue_response(conn, MHD_HTTP_OK, resp);
    MHD_destroy_response(resp);
    return ret;
}

void xd_stream_end(xd_stream *st)
{
    st->state = ST_END;
}
