/* libFuzzer target: metadata parsing. The input is lines taken in pairs (name, value): each pair
 * goes to the request-header checks, then the verdict is asked for; every value also goes
 * through grpc-timeout, percent-decoding and the grpc-status-details-bin parser, and what
 * percent-encoding makes of it must decode back to it. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "grpc/grpc.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool token_check(const uint8_t *token, size_t len, void *ud)
{
    (void)ud;
    return len == 6 && memcmp(token, "secret", 6) == 0;
}

static void check_value(const uint8_t *v, size_t len)
{
    uint64_t ms;
    moat_grpc_timeout_parse((const char *)v, len, &ms);
    static char dec[MOAT_GRPC_MESSAGE_MAX];
    moat_grpc_percent_decode((const char *)v, len, dec, sizeof(dec));
    moat_status st;
    moat_grpc_status_details_parse((const char *)v, len, &st);
    if (len < MOAT_STATUS_MESSAGE_MAX) {
        static char enc[MOAT_GRPC_MESSAGE_MAX];
        if (moat_grpc_percent_encode((const char *)v, len, enc, sizeof(enc)) != MOAT_OK)
            abort();
        size_t n = moat_grpc_percent_decode(enc, strlen(enc), dec, sizeof(dec));
        if (n != len || memcmp(dec, v, len) != 0)
            abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    moat_grpc_request r;
    moat_grpc_request_init(&r, 1024);
    const uint8_t *end = data + size;
    const uint8_t *p = data;
    while (p < end) {
        const uint8_t *nl = memchr(p, '\n', (size_t)(end - p));
        const uint8_t *name = p;
        size_t nlen = nl != NULL ? (size_t)(nl - p) : (size_t)(end - p);
        p = nl != NULL ? nl + 1 : end;
        nl = p < end ? memchr(p, '\n', (size_t)(end - p)) : NULL;
        const uint8_t *value = p;
        size_t vlen = nl != NULL ? (size_t)(nl - p) : (size_t)(end - p);
        p = nl != NULL ? nl + 1 : end;
        moat_grpc_request_header(&r, name, nlen, value, vlen);
        check_value(value, vlen);
    }
    int http;
    moat_status st;
    moat_grpc_verdict v = moat_grpc_request_finish(&r, true, token_check, NULL, &http, &st);
    if (v == MOAT_GRPC_ACCEPT && (r.method == NULL || http != 200))
        abort();
    if (r.header_bytes > r.max_header_bytes)
        abort();
    return 0;
}
