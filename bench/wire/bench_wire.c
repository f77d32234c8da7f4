/* bench/wire: (a) decoding Message frames that carry a 64 KiB stdout
 * ExecEvent (wire decoder + frame decode + nanopb ExecEvent decode reaching the
 * data slice) against plain memcpy of the same bytes, in the same run; target
 * >= 50% of memcpy throughput. (b) encode + decode of small control frames
 * (window update, ping) on one core; target >= 2 million a second. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moat/client.h"
#include "moat/wire.h"

#define PAYLOAD  (64u * 1024u)
#define FRAMES   64u /* 4 MiB per pass: larger than most L2 caches */
#define PASSES   200u
#define CONTROLS 4000000u

static volatile uint64_t sink;

static double now_s(void)
{
    return (double)moat_time_mono_ns() / 1e9;
}

static size_t build_stream(uint8_t *out, size_t cap)
{
    static uint8_t data[PAYLOAD], event[PAYLOAD + 64];
    for (size_t i = 0; i < PAYLOAD; i++)
        data[i] = (uint8_t)(i * 31 + 7);
    moat_exec_event ev;
    memset(&ev, 0, sizeof ev);
    ev.sequence = 2;
    ev.timestamp_ms = 1718000000105;
    ev.kind = MOAT_EXEC_OUTPUT;
    ev.stream = MOAT_EXEC_STDOUT;
    ev.data = (moat_slice){data, PAYLOAD};
    size_t elen, total = 0;
    if (moat_exec_event_encode(&ev, event, sizeof event, &elen) != MOAT_OK)
        abort();
    moat_frame f;
    memset(&f, 0, sizeof f);
    f.kind = MOAT_FRAME_MESSAGE;
    f.stream_id = 3;
    f.u.message.payload = (moat_slice){event, elen};
    for (unsigned i = 0; i < FRAMES; i++) {
        size_t n;
        if (moat_wire_encode(&f, out + total, cap - total, &n) != MOAT_OK)
            abort();
        total += n;
    }
    return total;
}

/* Decodes the whole stream, fed in pieces of `chunk` bytes (0: all at once). */
static uint64_t decode_stream(moat_wire_decoder *d, const uint8_t *in, size_t len, size_t chunk)
{
    static moat_exec_event ev;
    uint64_t got = 0;
    size_t pos = 0;
    while (pos < len) {
        size_t piece = chunk && chunk < len - pos ? chunk : len - pos, off = 0;
        while (off < piece) {
            size_t used;
            moat_slice body;
            moat_err err = moat_wire_decoder_feed(d, in + pos + off, piece - off, &used, &body);
            off += used;
            if (err == MOAT_E_AGAIN)
                break;
            moat_frame f;
            if (err != MOAT_OK || moat_wire_frame_decode(body, &f) != MOAT_OK ||
                moat_exec_event_decode(f.u.message.payload, &ev) != MOAT_OK ||
                ev.data.len != PAYLOAD)
                abort();
            got += ev.data.len + ev.data.data[ev.data.len - 1];
        }
        pos += piece;
    }
    return got;
}

static int report(const char *what, double value, double baseline, double target, const char *unit)
{
    double ratio = value / baseline;
    bool pass = target > 1.0 ? value >= target : ratio >= target;
    printf("%-44s value=%.3g %s baseline=%.3g %s ratio=%.2f target=%s%.3g %s\n", what, value, unit,
           baseline, unit, ratio, target > 1.0 ? "" : "ratio>=", target, pass ? "PASS" : "FAIL");
    return pass ? 0 : 1;
}

int main(void)
{
    size_t cap = FRAMES * (PAYLOAD + 64);
    uint8_t *stream = malloc(cap), *dst = malloc(cap);
    if (!stream || !dst)
        return 1;
    size_t len = build_stream(stream, cap);
    moat_wire_decoder d;
    moat_wire_decoder_init(&d, MOAT_WIRE_DEFAULT_MAX_FRAME);

    /* Warm up caches and the decoder's buffer. */
    memcpy(dst, stream, len);
    sink += decode_stream(&d, stream, len, 16384);

    double t0 = now_s();
    for (unsigned p = 0; p < PASSES; p++) {
        memcpy(dst, stream, len);
        sink += dst[p % len];
    }
    double memcpy_bps = (double)len * PASSES / (now_s() - t0);

    t0 = now_s();
    for (unsigned p = 0; p < PASSES; p++)
        sink += decode_stream(&d, stream, len, 0);
    double whole_bps = (double)len * PASSES / (now_s() - t0);

    /* Reads of 16 KiB, as from a socket: frames straddle reads and the
     * decoder gathers each body in its buffer (one copy). */
    t0 = now_s();
    for (unsigned p = 0; p < PASSES; p++)
        sink += decode_stream(&d, stream, len, 16384);
    double split_bps = (double)len * PASSES / (now_s() - t0);

    int failed = 0;
    printf("bench/wire: %u frames of %u KiB stdout per pass, %u passes\n", FRAMES, PAYLOAD / 1024,
           PASSES);
    failed |= report("64KiB stdout decode, whole input (zero copy)", whole_bps / 1e9,
                     memcpy_bps / 1e9, 0.5, "GB/s");
    failed |= report("64KiB stdout decode, 16 KiB reads (buffered)", split_bps / 1e9,
                     memcpy_bps / 1e9, 0.5, "GB/s");

    /* (b) control frames: encode + incremental decode + frame decode. */
    uint8_t buf[64];
    moat_frame f, g;
    memset(&f, 0, sizeof f);
    t0 = now_s();
    for (uint32_t i = 0; i < CONTROLS; i++) {
        size_t n, used;
        moat_slice body;
        if (i & 1) {
            f.kind = MOAT_FRAME_PING;
            f.stream_id = 0;
            f.u.ping.payload = i;
        } else {
            f.kind = MOAT_FRAME_WINDOW_UPDATE;
            f.stream_id = 2 * (i & 1023) + 1;
            f.u.window_update.increment = 65536 + i;
        }
        if (moat_wire_encode(&f, buf, sizeof buf, &n) != MOAT_OK ||
            moat_wire_decoder_feed(&d, buf, n, &used, &body) != MOAT_OK ||
            moat_wire_frame_decode(body, &g) != MOAT_OK || g.kind != f.kind)
            abort();
        sink += g.u.ping.payload;
    }
    double per_s = CONTROLS / (now_s() - t0);
    failed |= report("control frames encode+decode", per_s / 1e6, 2.0, 2.0, "M/s");
    moat_wire_decoder_free(&d);
    free(stream);
    free(dst);
    return failed;
}
