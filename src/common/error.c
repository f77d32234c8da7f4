#include "common/common.h"

#include <stdio.h>
#include <string.h>

const char *moat_strerror(moat_err err)
{
    switch (err) {
    case MOAT_OK:
        return "ok";
    case MOAT_E_NOMEM:
        return "out of memory";
    case MOAT_E_INVAL:
        return "invalid argument or input";
    case MOAT_E_TOO_BIG:
        return "size over its maximum";
    case MOAT_E_AGAIN:
        return "need more input";
    case MOAT_E_IO:
        return "i/o error";
    case MOAT_E_PROTO:
        return "protocol violation";
    case MOAT_E_CLOSED:
        return "closed";
    case MOAT_E_NOT_FOUND:
        return "not found";
    case MOAT_E_TIMEOUT:
        return "timed out";
    case MOAT_E_STATE:
        return "invalid in the current state";
    case MOAT_E_UNSUPPORTED:
        return "unsupported";
    case MOAT_E_REMOTE:
        return "remote error";
    case MOAT_E_ZERO_LENGTH:
        return "zero frame length";
    case MOAT_E_UNKNOWN_KIND:
        return "unknown frame kind";
    case MOAT_E_WINDOW:
        return "flow-control window violated";
    case MOAT_E_STREAM:
        return "invalid stream id";
    }
    return "unknown error";
}

static const char *const code_names[MOAT_CODE_COUNT] = {
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
};

const char *moat_code_name(moat_code code)
{
    if ((unsigned)code >= MOAT_CODE_COUNT)
        return "UNKNOWN";
    return code_names[code];
}

moat_err moat_code_from_name(const char *name, moat_code *out)
{
    for (unsigned i = 0; i < MOAT_CODE_COUNT; i++) {
        if (strcmp(name, code_names[i]) == 0) {
            *out = (moat_code)i;
            return MOAT_OK;
        }
    }
    return MOAT_E_INVAL;
}

moat_code moat_code_from_http(long http_status)
{
    if (http_status >= 200 && http_status < 300)
        return MOAT_CODE_OK;
    switch (http_status) {
    case 400:
        return MOAT_CODE_INVALID_ARGUMENT;
    case 401:
        return MOAT_CODE_UNAUTHENTICATED;
    case 403:
        return MOAT_CODE_PERMISSION_DENIED;
    case 404:
        return MOAT_CODE_NOT_FOUND;
    case 409:
        return MOAT_CODE_ALREADY_EXISTS;
    case 416:
        return MOAT_CODE_OUT_OF_RANGE;
    case 429:
        return MOAT_CODE_RESOURCE_EXHAUSTED;
    case 501:
        return MOAT_CODE_UNIMPLEMENTED;
    case 502:
    case 503:
    case 504:
        return MOAT_CODE_UNAVAILABLE;
    default:
        return http_status >= 500 ? MOAT_CODE_INTERNAL : MOAT_CODE_UNKNOWN;
    }
}

static void copy_truncated(char *dst, size_t cap, const char *src)
{
    if (src == NULL)
        src = "";
    size_t n = strnlen(src, cap - 1);
    memcpy(dst, src, n);
    dst[n] = '\0';
}

void moat_status_clear(moat_status *st)
{
    memset(st, 0, sizeof(*st));
}

void moat_status_set(moat_status *st, moat_code code, const char *reason, const char *fmt, ...)
{
    moat_status_clear(st);
    st->code = code;
    copy_truncated(st->reason, sizeof(st->reason), reason);
    if (fmt != NULL) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(st->message, sizeof(st->message), fmt, ap);
        va_end(ap);
    }
}

void moat_status_add_detail(moat_status *st, const char *key, const char *value)
{
    if (st->detail_count >= MOAT_STATUS_DETAILS_MAX)
        return;
    moat_status_detail *d = &st->details[st->detail_count++];
    copy_truncated(d->key, sizeof(d->key), key);
    copy_truncated(d->value, sizeof(d->value), value);
}

const char *moat_status_detail_get(const moat_status *st, const char *key)
{
    for (size_t i = 0; i < st->detail_count; i++) {
        if (strcmp(st->details[i].key, key) == 0)
            return st->details[i].value;
    }
    return NULL;
}
