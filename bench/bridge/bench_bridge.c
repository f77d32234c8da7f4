/* bench_bridge: parse + convert throughput of the execd SSE decoder on one core.
 *  1. binary-safe mode, 64 KiB output events, against memcpy of the same bytes
 *     (target: >= 50% of memcpy's rate), also with the copy into the replay
 *     ring that a live stream adds;
 *  2. line mode, 80-byte output events (target: >= 1 000 000 events/s),
 *     against moat_json_parse alone on the same line (a bound: the
 *     decoder parses each line once with it).
 * The input is fed in 64 KiB pieces, as curl's write callback hands it over.
 * The machine may be shared: each figure and its baseline are measured in
 * alternating short rounds and the best round of each is kept.
 * Usage: bench_bridge [seconds per figure, default 2]. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bridge/bridge.h"
#include "common/json.h"

#define PIECE 65536u

typedef struct sink {
    uint64_t events;
    uint64_t bytes;
    uint8_t *copy; /* when set, output is copied here (as the ring does) */
} sink;

static bool on_ev(void *ud, const moat_bridge_event *ev)
{
    sink *s = ud;
    s->events++;
    if (ev->kind == MOAT_BRIDGE_EV_OUTPUT) {
        s->bytes += ev->u.output.len;
        if (s->copy != NULL)
            memcpy(s->copy, ev->u.output.data, ev->u.output.len);
    }
    return true;
}

static double now_s(void)
{
    return (double)moat_time_mono_ns() / 1e9;
}

/* Decodes buf (len bytes) over and over for `secs`; returns output bytes/s
 * and events/s. */
static void run_decoder(const uint8_t *buf, size_t len, bool binary, uint8_t *copy, double secs,
                        double *bytes_per_s, double *events_per_s)
{
    moat_bridge_decoder_opts o = {.binary = binary};
    sink s = {.copy = copy};
    moat_status st;
    double t0 = now_s(), t = t0;
    while (t - t0 < secs) {
        moat_bridge_decoder *d = NULL;
        if (moat_bridge_decoder_new(&o, &d) != MOAT_OK)
            exit(1);
        for (size_t off = 0; off < len; off += PIECE) {
            size_t n = len - off < PIECE ? len - off : PIECE;
            if (moat_bridge_decoder_feed(d, buf + off, n, on_ev, &s, &st) != MOAT_OK) {
                fprintf(stderr, "decode failed: %s\n", st.message);
                exit(1);
            }
        }
        moat_bridge_decoder_free(d);
        t = now_s();
    }
    *bytes_per_s = (double)s.bytes / (t - t0);
    *events_per_s = (double)s.events / (t - t0);
}

static double run_memcpy(const uint8_t *src, size_t len, uint8_t *dst, double secs)
{
    uint64_t bytes = 0;
    double t0 = now_s(), t = t0;
    while (t - t0 < secs) {
        for (size_t off = 0; off < len; off += 65536) {
            memcpy(dst, src + off, 65536);
            __asm__ volatile("" ::"r"(dst) : "memory");
            bytes += 65536;
        }
        t = now_s();
    }
    return (double)bytes / (t - t0);
}

int main(int argc, char **argv)
{
    double secs = argc > 1 ? atof(argv[1]) : 2.0;
    if (secs <= 0)
        secs = 2.0;
    enum { ROUNDS = 10 };
    double round = secs / ROUNDS;
    int fails = 0;

    /* 1. binary-safe mode: 256 events of 64 KiB (16 MiB of output) */
    enum { NBIN = 256, EV = 65536 };
    size_t cap = (size_t)NBIN * (EV + 128);
    uint8_t *bin = malloc(cap);
    uint8_t *raw = malloc((size_t)NBIN * EV);
    uint8_t *dst = malloc(EV);
    size_t len = 0;
    for (size_t i = 0; i < (size_t)NBIN * EV; i++)
        raw[i] = (uint8_t)(i * 131 + (i >> 9));
    for (int i = 0; i < NBIN; i++) {
        len +=
            (size_t)sprintf((char *)bin + len,
                            "{\"type\":\"stdout\",\"timestamp\":1718000000105,\"len\":%d}\n", EV);
        memcpy(bin + len, raw + (size_t)i * EV, EV);
        len += EV;
        bin[len++] = '\n';
        bin[len++] = '\n';
    }
    double base = 0, bps = 0, eps = 0, cps = 0, b, e;
    for (int r = 0; r < ROUNDS; r++) {
        b = run_memcpy(raw, (size_t)NBIN * EV, dst, round);
        base = b > base ? b : base;
        run_decoder(bin, len, true, NULL, round, &b, &e);
        bps = b > bps ? b : bps;
        run_decoder(bin, len, true, dst, round, &b, &e);
        cps = b > cps ? b : cps;
    }
    double ratio = bps / base;
    printf("binary 64KiB events, parse+convert: %.0f MiB/s; memcpy baseline: %.0f MiB/s; "
           "ratio %.2f (target >= 0.50) %s\n",
           bps / 1048576.0, base / 1048576.0, ratio, ratio >= 0.5 ? "PASS" : "FAIL");
    fails += ratio < 0.5;
    printf("binary 64KiB events, parse+convert+copy (as into the replay ring): %.0f MiB/s; "
           "ratio %.2f (informational)\n",
           cps / 1048576.0, cps / base);

    /* 2. line mode: 80-byte events as a real execd writes them */
    enum { NLINE = 200000 };
    char line[128];
    int ll = snprintf(line, sizeof(line),
                      "{\"type\":\"stdout\",\"text\":\"%-25s\",\"timestamp\":1718000000105}\n\n",
                      "hello from the sandbox");
    uint8_t *lines = malloc((size_t)NLINE * (size_t)ll);
    for (int i = 0; i < NLINE; i++)
        memcpy(lines + (size_t)i * (size_t)ll, line, (size_t)ll);
    double jps = 0;
    eps = 0;
    for (int r = 0; r < ROUNDS; r++) {
        run_decoder(lines, (size_t)NLINE * (size_t)ll, false, NULL, round, &b, &e);
        eps = e > eps ? e : eps;
        /* moat_json_parse alone on the same line: a bound on this design's rate */
        uint64_t loads = 0;
        double t0 = now_s(), t = t0;
        while (t - t0 < round) {
            for (int i = 0; i < 10000; i++) {
                cJSON *j = moat_json_parse(line, (size_t)ll - 2, MOAT_JSON_NUL_REPLACE);
                if (j == NULL)
                    exit(1);
                cJSON_Delete(j);
            }
            loads += 10000;
            t = now_s();
        }
        double jr = (double)loads / (t - t0);
        jps = jr > jps ? jr : jps;
    }
    printf("line mode %d-byte events: %.0f events/s; target 1000000; ratio %.2f %s\n", ll, eps,
           eps / 1e6, eps >= 1e6 ? "PASS" : "FAIL");
    printf("baseline: moat_json_parse alone on the same line: %.0f parses/s; "
           "decoder/parse ratio %.2f\n",
           jps, eps / jps);
    fails += eps < 1e6;

    free(bin);
    free(raw);
    free(dst);
    free(lines);
    return fails ? 1 : 0;
}
