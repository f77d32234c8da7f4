/* moat common, moatd's side: what include/moat/common.h (the part libmoat's
 * users see) leaves out: HTTP status mapping, bounded buffers, UUIDs, clocks and
 * key=value logging. JSON is common/json.h, apart, because it brings cJSON. */
#ifndef MOAT_COMMON_INTERNAL_H
#define MOAT_COMMON_INTERNAL_H

#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "moat/common.h"

/* The status code for an HTTP answer from a service moat calls (Docker, execd):
 * 2xx OK, 400 INVALID_ARGUMENT, 401 UNAUTHENTICATED, 403 PERMISSION_DENIED,
 * 404 NOT_FOUND, 409 ALREADY_EXISTS, 416 OUT_OF_RANGE, 429 RESOURCE_EXHAUSTED,
 * 501 UNIMPLEMENTED, 502-504 UNAVAILABLE, other 5xx INTERNAL, else UNKNOWN. */
moat_code moat_code_from_http(long http_status);

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

#endif
