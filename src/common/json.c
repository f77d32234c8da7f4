/* JSON parsing on cJSON, with the U+0000 rule cJSON's C strings need. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/json.h"

/* Finds the next "\u0000" escape at or after from. Escapes are walked two
 * bytes at a time so that an escaped backslash followed by "u0000" is text,
 * not an escape. Returns len when there is none. */
static size_t next_nul_escape(const char *text, size_t len, size_t from)
{
    for (size_t i = from; i < len;) {
        const char *bs = memchr(text + i, '\\', len - i);
        if (bs == NULL)
            return len;
        i = (size_t)(bs - text);
        if (i + 5 < len && memcmp(text + i + 1, "u0000", 5) == 0)
            return i;
        i += 2;
    }
    return len;
}

size_t moat_utf8_seq(const unsigned char *s, size_t len, uint32_t *cp)
{
    unsigned char c = s[0];
    size_t n;
    uint32_t v;
    if (c < 0x80) {
        n = 1;
        v = c;
    } else if (c >= 0xC2 && c <= 0xDF) {
        n = 2;
        v = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        v = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        v = c & 0x07;
    } else {
        return 0;
    }
    if (len < n)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        v = (v << 6) | (s[i] & 0x3F);
    }
    if ((n == 3 && v < 0x800) || (n == 4 && (v < 0x10000 || v > 0x10FFFF)) ||
        (v >= 0xD800 && v <= 0xDFFF))
        return 0;
    if (cp != NULL)
        *cp = v;
    return n;
}

/* What cJSON lets through and RFC 8259 does not: bytes that are not UTF-8, raw
 * control characters inside strings, and control characters other than tab,
 * LF and CR between tokens (cJSON reads any byte up to 0x20 as whitespace).
 * Most texts are printable ASCII and pass 8 bytes at a time; the rest are
 * walked byte by byte. */
static bool text_ok(const unsigned char *p, size_t n)
{
    const uint64_t ones = 0x0101010101010101u, highs = 0x8080808080808080u;
    uint64_t any = 0;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        any |= w | ((w - ones * 0x20) & ~w); /* high bit set, or a byte below 0x20 */
    }
    for (; i < n; i++)
        any |= p[i] >= 0x80 || p[i] < 0x20 ? highs : 0;
    if ((any & highs) == 0)
        return true;
    bool in_str = false;
    for (i = 0; i < n;) {
        unsigned char c = p[i];
        if (c >= 0x80) {
            size_t len = moat_utf8_seq(p + i, n - i, NULL);
            if (len == 0)
                return false;
            i += len;
            continue;
        }
        if (c < 0x20 && (in_str || (c != '\t' && c != '\n' && c != '\r')))
            return false;
        if (in_str && c == '\\')
            i++; /* the escaped character is cJSON's to check */
        else if (c == '"')
            in_str = !in_str;
        i++;
    }
    return true;
}

static bool only_whitespace(const char *p, const char *end)
{
    for (; p < end; p++)
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r')
            return false;
    return true;
}

static cJSON *parse_exact(const char *text, size_t len)
{
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, false);
    if (root != NULL && !only_whitespace(end, text + len)) {
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}

cJSON *moat_json_parse(const char *text, size_t len, moat_json_nul nul)
{
    if (text == NULL || len == 0 || !text_ok((const unsigned char *)text, len))
        return NULL;
    size_t at = next_nul_escape(text, len, 0);
    if (at == len)
        return parse_exact(text, len);
    if (nul == MOAT_JSON_NUL_REJECT)
        return NULL;
    char *copy = malloc(len);
    if (copy == NULL)
        return NULL;
    memcpy(copy, text, len);
    for (; at < len; at = next_nul_escape(copy, len, at + 6))
        memcpy(copy + at + 2, "fffd", 4);
    cJSON *root = parse_exact(copy, len);
    free(copy);
    return root;
}

const char *moat_json_str(const cJSON *obj, const char *key, size_t *len)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!cJSON_IsString(v) || v->valuestring == NULL)
        return NULL;
    if (len != NULL)
        *len = strlen(v->valuestring);
    return v->valuestring;
}

bool moat_json_int_value(const cJSON *item, int64_t *out)
{
    if (!cJSON_IsNumber(item))
        return false;
    double d = item->valuedouble;
    /* 2^63 is exact as a double; anything at or past it does not fit. */
    if (!isfinite(d) || d != floor(d) || d < -9223372036854775808.0 || d >= 9223372036854775808.0)
        return false;
    *out = (int64_t)d;
    return true;
}

bool moat_json_int(const cJSON *obj, const char *key, int64_t *out)
{
    return moat_json_int_value(cJSON_GetObjectItemCaseSensitive(obj, key), out);
}
