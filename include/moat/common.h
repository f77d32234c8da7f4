/* moat common: error values, gRPC status codes, bounded buffers, UUID and time
 * helpers, and key=value logging. Used by every other module. */
#ifndef MOAT_COMMON_H
#define MOAT_COMMON_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <pthread.h>
#include <stdint.h>

#include <cjson/cJSON.h>

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
/* The status code for an HTTP answer from a service moat calls (Docker, execd):
 * 2xx OK, 400 INVALID_ARGUMENT, 401 UNAUTHENTICATED, 403 PERMISSION_DENIED,
 * 404 NOT_FOUND, 409 ALREADY_EXISTS, 416 OUT_OF_RANGE, 429 RESOURCE_EXHAUSTED,
 * 501 UNIMPLEMENTED, 502-504 UNAVAILABLE, other 5xx INTERNAL, else UNKNOWN. */
moat_code moat_code_from_http(long http_status);

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

/* A growable byte buffer with a hard maximum fixed when it is made. The buffer
 * owns data; moat_buf_free releases it. Reads happen at data[0..len). */
typedef struct moat_buf {
    uint8_t *data;
    size_t len;
    size_t cap;
    size_t max;
} moat_buf;

void moat_buf_init(moat_buf *buf, size_t max);
void moat_buf_free(moat_buf *buf);
/* Ensures room for `extra` more bytes; MOAT_E_TOO_BIG past max, MOAT_E_NOMEM. */
moat_err moat_buf_reserve(moat_buf *buf, size_t extra);
moat_err moat_buf_append(moat_buf *buf, const void *data, size_t len);
/* Drops the first n bytes (n <= len). */
void moat_buf_consume(moat_buf *buf, size_t n);
void moat_buf_reset(moat_buf *buf);

/* Canonical UUID text: 36 characters, lowercase, hyphenated, plus NUL. */
#define MOAT_UUID_STR_LEN 37

/* Accepts every spelling Python's uuid.UUID(str) accepts (hyphens anywhere or
 * none, any case, braces, "urn:uuid:" prefix, and the rest of int(x, 16)'s
 * leniency) and writes the canonical form. MOAT_E_INVAL otherwise. */
moat_err moat_uuid_canonicalize(const char *in, char out[MOAT_UUID_STR_LEN]);
/* A new random (version 4) UUID in canonical form. */
void moat_uuid_generate(char out[MOAT_UUID_STR_LEN]);

/* Wall clock, Unix milliseconds. */
int64_t moat_time_now_ms(void);
/* Monotonic clock, nanoseconds, for durations only. */
uint64_t moat_time_mono_ns(void);

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

typedef enum moat_log_level {
    MOAT_LOG_DEBUG = 0,
    MOAT_LOG_INFO = 1,
    MOAT_LOG_WARN = 2,
    MOAT_LOG_ERROR = 3,
    MOAT_LOG_OFF = 4,
} moat_log_level;

/* Process-wide threshold; default INFO. */
void moat_log_set_level(moat_log_level level);
moat_log_level moat_log_get_level(void);
/* "debug"/"info"/"warn"/"error"/"off"; MOAT_E_INVAL otherwise. */
moat_err moat_log_level_parse(const char *name, moat_log_level *out);
/* Writes one line to stderr: `ts=… level=… event=<event> <kv>`, where kv is a
 * printf-style list of key=value pairs (quote values that may hold spaces).
 * Control characters in the formatted line are replaced so a line stays a line. */
void moat_log(moat_log_level level, const char *event, const char *kv_fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* A budget of log lines for one kind of event that an attacker can repeat at will (a refused
 * Hello, a planted socket): at most MOAT_LOG_LIMIT_PER_SECOND lines a second, and the first
 * line let through after a drop says how many were dropped (suppressed=N). */
#define MOAT_LOG_LIMIT_PER_SECOND 10
typedef struct moat_log_limit {
    pthread_mutex_t mu;
    int64_t window_start_ms;
    uint32_t lines;      /* written in the current one-second window */
    uint64_t suppressed; /* dropped since the last line written */
} moat_log_limit;
#define MOAT_LOG_LIMIT_INIT                                                                        \
    {                                                                                              \
        PTHREAD_MUTEX_INITIALIZER, 0, 0, 0                                                         \
    }
/* moat_log within lim's budget. Thread-safe. */
void moat_log_limited(moat_log_limit *lim, moat_log_level level, const char *event,
                      const char *kv_fmt, ...) __attribute__((format(printf, 4, 5)));

/* Length (1..4) of the well-formed UTF-8 sequence at s (len > 0 bytes there),
 * or 0 when they are not one (overlong, surrogate, past U+10FFFF, cut short);
 * *cp (may be NULL) gets its code point. */
size_t moat_utf8_seq(const unsigned char *s, size_t len, uint32_t *cp);

/* JSON, on cJSON. cJSON strings end at their first NUL, so a text whose
 * strings hold U+0000 could not be represented exactly; moat_json_parse says
 * what to do with one instead of letting a string be cut short silently. */
typedef enum moat_json_nul {
    MOAT_JSON_NUL_REJECT,  /* such a text is refused (requests, engine answers) */
    MOAT_JSON_NUL_REPLACE, /* each \u0000 is read as U+FFFD (line-mode output text) */
} moat_json_nul;

/* Parses exactly len bytes (no NUL terminator needed) holding one JSON value
 * and nothing but whitespace after it, as strictly as RFC 8259 asks of text
 * (cJSON alone is laxer): NULL when the text is malformed, is not UTF-8, holds
 * a raw control character inside a string or one other than tab, LF and CR
 * between tokens, or holds \u0000 under MOAT_JSON_NUL_REJECT. The caller owns
 * the tree and frees it with cJSON_Delete. */
cJSON *moat_json_parse(const char *text, size_t len, moat_json_nul nul);
/* obj[key] (case-sensitive) when it is a string, else NULL; *len (may be
 * NULL) gets its length. The pointer lives as long as obj. obj may be NULL. */
const char *moat_json_str(const cJSON *obj, const char *key, size_t *len);
/* obj[key] when it is a number with an integral value that fits int64_t:
 * true and *out set; false otherwise (missing, another type, 1.5, 1e300). */
bool moat_json_int(const cJSON *obj, const char *key, int64_t *out);
/* The same test for a value that is already at hand. */
bool moat_json_int_value(const cJSON *item, int64_t *out);

#ifdef __cplusplus
}
#endif
#endif
