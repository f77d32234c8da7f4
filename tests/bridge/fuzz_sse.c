/* libFuzzer target for the execd SSE decoder. The first byte picks the
 * options (binary mode, oversize policy, a small or default line limit,
 * background) and the chunk size the rest is fed in; every event must carry
 * consecutive sequence numbers and the stream must end with exactly one EXIT. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bridge/bridge.h"

typedef struct fz {
    uint64_t last;
    int exits;
} fz;

static bool on_ev(void *ud, const moat_bridge_event *ev)
{
    fz *f = ud;
    if (ev->sequence != f->last + 1 || f->exits > 0)
        abort();
    f->last = ev->sequence;
    if (ev->kind == MOAT_BRIDGE_EV_EXIT)
        f->exits++;
    if (ev->kind == MOAT_BRIDGE_EV_OUTPUT &&
        (ev->u.output.len == 0 || ev->u.output.len > 65536 * 16))
        abort();
    /* touch every byte handed out */
    volatile uint8_t sink = 0;
    if (ev->kind == MOAT_BRIDGE_EV_OUTPUT)
        for (size_t i = 0; i < ev->u.output.len; i++)
            sink ^= ev->u.output.data[i];
    if (ev->kind == MOAT_BRIDGE_EV_ERROR)
        for (size_t i = 0; i < ev->u.error.traceback_count; i++)
            sink ^= (uint8_t)strlen(ev->u.error.traceback[i].data);
    (void)sink;
    return true;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    moat_log_set_level(MOAT_LOG_OFF);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t cfg = data[0];
    data++;
    size--;
    moat_bridge_decoder_opts o = {
        .binary = cfg & 1,
        .oversize = (cfg & 2) ? MOAT_BRIDGE_OVERSIZE_SKIP : MOAT_BRIDGE_OVERSIZE_FAIL,
        .max_line = (cfg & 4) ? 48 : 0,
        .background = (cfg & 8) != 0,
        .timeout_set = (cfg & 16) != 0,
    };
    size_t chunk = (size_t)((cfg >> 5) * 7 + 1);
    moat_bridge_decoder *d = NULL;
    if (moat_bridge_decoder_new(&o, &d) != MOAT_OK)
        return 0;
    fz f = {0};
    moat_status st;
    moat_err err = MOAT_OK;
    for (size_t off = 0; off < size && err == MOAT_OK; off += chunk) {
        size_t n = size - off < chunk ? size - off : chunk;
        err = moat_bridge_decoder_feed(d, data + off, n, on_ev, &f, &st);
    }
    if (err == MOAT_OK)
        moat_bridge_decoder_finish(d, on_ev, &f, &st);
    else
        moat_bridge_decoder_abort(d, "fuzz", on_ev, &f);
    if (f.exits != 1)
        abort();
    moat_bridge_decoder_free(d);
    return 0;
}
