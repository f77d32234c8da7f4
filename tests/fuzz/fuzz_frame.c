/* libFuzzer target: the incremental frame decoder fed in random-sized pieces,
 * every frame body through moat_wire_frame_decode, re-encoded when it decodes,
 * and Message payloads through the ExecEvent decoder. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "moat/client.h"
#include "wire/wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_frame(moat_slice body)
{
    static moat_frame f, g;
    static moat_exec_event ev;
    static uint8_t out[MOAT_WIRE_PREHELLO_MAX_FRAME * 4];
    moat_err err = moat_wire_frame_decode(body, &f);
    if (err != MOAT_OK) {
        if (err != MOAT_E_PROTO && err != MOAT_E_UNKNOWN_KIND && err != MOAT_E_TOO_BIG)
            abort();
        return;
    }
    size_t n;
    size_t want = moat_wire_encoded_size(&f);
    if (want == 0 || moat_wire_encode(&f, out, sizeof out, &n) != MOAT_OK || n != want)
        abort();
    /* What we encode decodes back to the same frame kind and stream. */
    if (moat_wire_frame_decode((moat_slice){out + MOAT_WIRE_HEADER_SIZE, n - MOAT_WIRE_HEADER_SIZE},
                               &g) != MOAT_OK ||
        g.kind != f.kind || g.stream_id != f.stream_id)
        abort();
    if (f.kind == MOAT_FRAME_MESSAGE &&
        moat_exec_event_decode(f.u.message.payload, &ev) == MOAT_OK &&
        ev.kind == MOAT_EXEC_OUTPUT && ev.data.len > 0) {
        /* The zero-copy slice lies inside the input. */
        if (ev.data.data < body.data || ev.data.data + ev.data.len > body.data + body.len)
            abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    /* The first byte picks the piece sizes; the rest is the byte stream. */
    uint32_t seed = data[0];
    data++;
    size--;
    moat_wire_decoder d;
    moat_wire_decoder_init(&d, MOAT_WIRE_PREHELLO_MAX_FRAME);
    size_t pos = 0;
    while (pos < size) {
        seed = seed * 1103515245u + 12345u;
        size_t piece = seed % 4 == 0 ? size - pos : 1 + (seed >> 8) % 64;
        if (piece > size - pos)
            piece = size - pos;
        size_t off = 0;
        while (off < piece) {
            size_t used;
            moat_slice body;
            moat_err err = moat_wire_decoder_feed(&d, data + pos + off, piece - off, &used, &body);
            if (used > piece - off)
                abort();
            off += used;
            if (err == MOAT_E_AGAIN)
                break;
            if (err != MOAT_OK) {
                /* Sticky: the stream is over. */
                if (moat_wire_decoder_feed(&d, data, size, &used, &body) != err || used != 0)
                    abort();
                moat_wire_decoder_free(&d);
                return 0;
            }
            if (body.len == 0 || body.len > MOAT_WIRE_PREHELLO_MAX_FRAME)
                abort();
            check_frame(body);
        }
        pos += piece;
    }
    moat_wire_decoder_free(&d);
    return 0;
}
