/* moat common, the part libmoat's users see: error values, gRPC status codes,
 * call statuses, byte slices and the time format moatd's messages use. Only C
 * library headers: nothing of moat's dependencies. The rest of common (buffers,
 * logging, JSON) is moatd's, in src/common/. */
#ifndef MOAT_COMMON_H
#define MOAT_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Errors are values. Append only: never renumber. */
typedef enum moat_err {
    MOAT_OK = 0,
    MOAT_E_NOMEM = 1,     /* an allocation failed */
    MOAT_E_INVAL = 2,     /* an argument or input is malformed */
    MOAT_E_TOO_BIG = 3,   /* a size is over its configured maximum */
    MOAT_E_AGAIN = 4,     /* need more input; not an error for incremental parsers */
    MOAT_E_IO = 5,        /* a system call failed; see errno where relevant */
    MOAT_E_PROTO = 6,     /* the peer broke the protocol */
    MOAT_E_CLOSED = 7,    /* the peer or handle is closed */
    MOAT_E_NOT_FOUND = 8, /* no such item */
    MOAT_E_TIMEOUT = 9,   /* a deadline passed */
    MOAT_E_STATE = 10,    /* the call is not valid in the object's current state */
    MOAT_E_UNSUPPORTED = 11,
    MOAT_E_REMOTE = 12,       /* a remote service answered with an error status */
    MOAT_E_ZERO_LENGTH = 13,  /* a frame declared length 0 */
    MOAT_E_UNKNOWN_KIND = 14, /* a frame of a kind this build does not know */
    MOAT_E_WINDOW = 15,       /* flow-control credit exceeded or overflowed */
    MOAT_E_STREAM = 16,       /* a stream id is invalid, reused or unknown */
} moat_err;

/* Static, never NULL. */
const char *moat_strerror(moat_err err);

/* gRPC's 17 status codes, numbered as gRPC and proto/moat/v1/frame.proto number them. */
typedef enum moat_code {
    MOAT_CODE_OK = 0,
    MOAT_CODE_CANCELLED = 1,
    MOAT_CODE_UNKNOWN = 2,
    MOAT_CODE_INVALID_ARGUMENT = 3,
    MOAT_CODE_DEADLINE_EXCEEDED = 4,
    MOAT_CODE_NOT_FOUND = 5,
    MOAT_CODE_ALREADY_EXISTS = 6,
    MOAT_CODE_PERMISSION_DENIED = 7,
    MOAT_CODE_RESOURCE_EXHAUSTED = 8,
    MOAT_CODE_FAILED_PRECONDITION = 9,
    MOAT_CODE_ABORTED = 10,
    MOAT_CODE_OUT_OF_RANGE = 11,
    MOAT_CODE_UNIMPLEMENTED = 12,
    MOAT_CODE_INTERNAL = 13,
    MOAT_CODE_UNAVAILABLE = 14,
    MOAT_CODE_DATA_LOSS = 15,
    MOAT_CODE_UNAUTHENTICATED = 16,
} moat_code;

#define MOAT_CODE_COUNT 17

/* "OK", "CANCELLED", …; "UNKNOWN" for values out of range. Static. */
const char *moat_code_name(moat_code code);
/* Parses a name as moat_code_name prints it; MOAT_E_INVAL if it is none. */
moat_err moat_code_from_name(const char *name, moat_code *out);
/* A call's outcome: code, message and a machine-readable reason with a few
 * key/values (e.g. reason "sandbox_start_failed", chat_id=…). Fixed size, no
 * allocation: strings longer than their field are truncated. */
#define MOAT_STATUS_MESSAGE_MAX 512
#define MOAT_STATUS_REASON_MAX  64
#define MOAT_STATUS_KEY_MAX     32
#define MOAT_STATUS_VALUE_MAX   160
#define MOAT_STATUS_DETAILS_MAX 4

typedef struct moat_status_detail {
    char key[MOAT_STATUS_KEY_MAX];
    char value[MOAT_STATUS_VALUE_MAX];
} moat_status_detail;

typedef struct moat_status {
    moat_code code;
    char message[MOAT_STATUS_MESSAGE_MAX];
    char reason[MOAT_STATUS_REASON_MAX];
    size_t detail_count;
    moat_status_detail details[MOAT_STATUS_DETAILS_MAX];
} moat_status;

/* Resets to OK with everything empty. */
void moat_status_clear(moat_status *st);
/* Sets code, reason (may be NULL) and a printf-style message; clears details. */
void moat_status_set(moat_status *st, moat_code code, const char *reason, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Adds a key/value detail; ignored once MOAT_STATUS_DETAILS_MAX are set. */
void moat_status_add_detail(moat_status *st, const char *key, const char *value);
/* The value of a detail, or NULL. Valid as long as st is. */
const char *moat_status_detail_get(const moat_status *st, const char *key);

/* Canonical UUID text: 36 characters, lowercase, hyphenated, plus NUL. */
#define MOAT_UUID_STR_LEN 37

/* Bytes owned by someone else; not NUL-terminated. */
typedef struct moat_slice {
    const uint8_t *data;
    size_t len;
} moat_slice;

typedef struct moat_kv {
    moat_slice key;
    moat_slice value;
} moat_kv;

/* Slice helpers: a C string (not copied; NULL is empty), and comparison with one. */
moat_slice moat_slice_str(const char *s);
bool moat_slice_eq_str(moat_slice s, const char *str);
/* Copies s into out[0..cap) as a C string, cut to cap - 1 bytes (cap > 0).
 * Returns s.len, so a result >= cap means the copy was cut. */
size_t moat_slice_copy(moat_slice s, char *out, size_t cap);

/* Longest text moat_time_format_iso8601 writes, with NUL. */
#define MOAT_TIME_ISO_MAX 40
/* Formats Unix ms as UTC the way Python's datetime.isoformat() does for an
 * aware UTC datetime: "2026-04-02T12:05:00+00:00", with ".uuuuuu" when the
 * milliseconds are not zero. Returns the length written. */
size_t moat_time_format_iso8601(int64_t unix_ms, char out[MOAT_TIME_ISO_MAX]);
/* Parses ISO 8601 / RFC 3339 date-times with an offset ("Z" or ±HH:MM) and
 * optional fraction (any number of digits; kept to ms). Naive times are UTC.
 * MOAT_E_INVAL on anything else. */
moat_err moat_time_parse_iso8601(const char *text, int64_t *unix_ms);

#ifdef __cplusplus
}
#endif
#endif
