/* libFuzzer target: gRPC's length-prefixed messages fed in pieces whose sizes come from the
 * input, against a small limit; every message handed out must lie within its declared size and
 * a refused prefix must leave nothing allocated. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "grpc/grpc.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    /* The first byte picks the piece size, so splits land everywhere. */
    size_t step = (size_t)data[0] % 17 + 1;
    data++;
    size--;
    moat_grpc_decoder d;
    moat_grpc_decoder_init(&d, 4096);
    size_t off = 0;
    while (off < size) {
        size_t piece = size - off < step ? size - off : step;
        size_t used = 0;
        moat_slice msg;
        moat_err err = moat_grpc_decoder_feed(&d, data + off, piece, &used, &msg);
        if (used > piece)
            abort();
        off += used;
        if (err == MOAT_E_AGAIN)
            continue;
        if (err != MOAT_OK) {
            if (err != MOAT_E_TOO_BIG && err != MOAT_E_UNSUPPORTED && err != MOAT_E_PROTO)
                abort();
            if (d.body != NULL)
                abort();
            break;
        }
        if (msg.len > 4096)
            abort();
        /* Touch every byte, so ASan sees a message reaching past its buffer. */
        volatile uint8_t sum = 0;
        for (size_t i = 0; i < msg.len; i++)
            sum ^= msg.data[i];
        (void)sum;
    }
    moat_grpc_decoder_free(&d);
    return 0;
}
