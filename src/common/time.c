#include "common/common.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

int64_t moat_time_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

uint64_t moat_time_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

size_t moat_time_format_iso8601(int64_t unix_ms, char out[MOAT_TIME_ISO_MAX])
{
    int64_t secs = unix_ms / 1000;
    int64_t ms = unix_ms % 1000;
    if (ms < 0) {
        ms += 1000;
        secs -= 1;
    }
    time_t t = (time_t)secs;
    struct tm tm;
    gmtime_r(&t, &tm);
    int n;
    if (ms != 0)
        n = snprintf(out, MOAT_TIME_ISO_MAX, "%04d-%02d-%02dT%02d:%02d:%02d.%03d000+00:00",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     (int)ms);
    else
        n = snprintf(out, MOAT_TIME_ISO_MAX, "%04d-%02d-%02dT%02d:%02d:%02d+00:00",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec);
    return n < 0 ? 0 : (size_t)n;
}

static int read_digits(const char **p, int count, int *value)
{
    int v = 0;
    for (int i = 0; i < count; i++) {
        if (!isdigit((unsigned char)(*p)[i]))
            return 0;
        v = v * 10 + ((*p)[i] - '0');
    }
    *p += count;
    *value = v;
    return 1;
}

/* Days from 1970-01-01 to the given civil date (proleptic Gregorian). */
static int64_t days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static int days_in_month(int y, int m)
{
    static const int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (m == 2 && ((y % 4 == 0 && y % 100 != 0) || y % 400 == 0))
        return 29;
    return days[m - 1];
}

moat_err moat_time_parse_iso8601(const char *text, int64_t *unix_ms)
{
    if (text == NULL)
        return MOAT_E_INVAL;
    const char *p = text;
    int year, mon, day, hour, min, sec;
    if (!read_digits(&p, 4, &year) || *p++ != '-' || !read_digits(&p, 2, &mon) || *p++ != '-' ||
        !read_digits(&p, 2, &day))
        return MOAT_E_INVAL;
    if (*p != 'T' && *p != 't' && *p != ' ')
        return MOAT_E_INVAL;
    p++;
    if (!read_digits(&p, 2, &hour) || *p++ != ':' || !read_digits(&p, 2, &min) || *p++ != ':' ||
        !read_digits(&p, 2, &sec))
        return MOAT_E_INVAL;
    if (mon < 1 || mon > 12 || day < 1 || day > days_in_month(year, mon) || hour > 23 || min > 59 ||
        sec > 60)
        return MOAT_E_INVAL;
    int ms = 0;
    if (*p == '.' || *p == ',') {
        p++;
        int digits = 0;
        while (isdigit((unsigned char)*p)) {
            if (digits < 3)
                ms = ms * 10 + (*p - '0');
            digits++;
            p++;
        }
        if (digits == 0)
            return MOAT_E_INVAL;
        for (int i = digits; i < 3; i++)
            ms *= 10;
    }
    int offset_min = 0;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int sign = *p++ == '-' ? -1 : 1;
        int oh, om = 0;
        if (!read_digits(&p, 2, &oh))
            return MOAT_E_INVAL;
        if (*p == ':')
            p++;
        if (!read_digits(&p, 2, &om) || oh > 23 || om > 59)
            return MOAT_E_INVAL;
        offset_min = sign * (oh * 60 + om);
    }
    if (*p != '\0')
        return MOAT_E_INVAL;
    int64_t secs = days_from_civil(year, mon, day) * 86400 + hour * 3600 + min * 60 + sec -
                   (int64_t)offset_min * 60;
    *unix_ms = secs * 1000 + ms;
    return MOAT_OK;
}
