/* JSON parsing on cJSON, with the U+0000 rule cJSON's C strings need. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "moat/common.h"

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
    if (text == NULL || len == 0 || memchr(text, '\0', len) != NULL)
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
