#include "common/common.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static moat_log_level current_level = MOAT_LOG_INFO;
static const char *const level_names[] = {"debug", "info", "warn", "error", "off"};

void moat_log_set_level(moat_log_level level)
{
    current_level = level;
}

moat_log_level moat_log_get_level(void)
{
    return current_level;
}

moat_err moat_log_level_parse(const char *name, moat_log_level *out)
{
    for (int i = MOAT_LOG_DEBUG; i <= MOAT_LOG_OFF; i++) {
        if (strcmp(name, level_names[i]) == 0) {
            *out = (moat_log_level)i;
            return MOAT_OK;
        }
    }
    return MOAT_E_INVAL;
}

void moat_log(moat_log_level level, const char *event, const char *kv_fmt, ...)
{
    if (level < current_level || level >= MOAT_LOG_OFF)
        return;
    char ts[MOAT_TIME_ISO_MAX];
    moat_time_format_iso8601(moat_time_now_ms(), ts);
    char line[2048];
    int n = snprintf(line, sizeof(line), "ts=%s level=%s event=%s", ts, level_names[level], event);
    if (n < 0)
        return;
    size_t used = (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1;
    if (kv_fmt != NULL && kv_fmt[0] != '\0' && used + 1 < sizeof(line)) {
        line[used++] = ' ';
        va_list ap;
        va_start(ap, kv_fmt);
        int m = vsnprintf(line + used, sizeof(line) - used, kv_fmt, ap);
        va_end(ap);
        if (m > 0)
            used += (size_t)m < sizeof(line) - used ? (size_t)m : sizeof(line) - used - 1;
    }
    for (size_t i = 0; i < used; i++) {
        if ((unsigned char)line[i] < 0x20)
            line[i] = ' ';
    }
    line[used] = '\n';
    fwrite(line, 1, used + 1, stderr);
}

void moat_log_limited(moat_log_limit *lim, moat_log_level level, const char *event,
                      const char *kv_fmt, ...)
{
    if (level < current_level || level >= MOAT_LOG_OFF)
        return;
    int64_t now = moat_time_now_ms();
    pthread_mutex_lock(&lim->mu);
    if (now - lim->window_start_ms >= 1000) {
        lim->window_start_ms = now;
        lim->lines = 0;
    }
    bool write = lim->lines < MOAT_LOG_LIMIT_PER_SECOND;
    uint64_t dropped = 0;
    if (write) {
        lim->lines++;
        dropped = lim->suppressed;
        lim->suppressed = 0;
    } else {
        lim->suppressed++;
    }
    pthread_mutex_unlock(&lim->mu);
    if (!write)
        return;
    char kv[1536];
    va_list ap;
    va_start(ap, kv_fmt);
    vsnprintf(kv, sizeof(kv), kv_fmt, ap);
    va_end(ap);
    if (dropped > 0)
        moat_log(level, event, "%s suppressed=%llu", kv, (unsigned long long)dropped);
    else
        moat_log(level, event, "%s", kv);
}
