#include "common/common.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <uuid/uuid.h>

/* Longest input considered; longer text is refused before any work. */
#define UUID_INPUT_MAX 1024

static void remove_all(char *s, const char *needle)
{
    size_t n = strlen(needle);
    char *hit;
    while ((hit = strstr(s, needle)) != NULL)
        memmove(hit, hit + n, strlen(hit + n) + 1);
}

static int is_py_space(char c)
{
    return c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f);
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = (char)tolower((unsigned char)c);
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* int(text, 16) as Python parses it, for at most 32 digits: whitespace around,
 * a '+' sign, a 0x prefix, and single underscores between digits. */
static moat_err parse_python_hex(const char *text, uint8_t digits[32])
{
    const char *p = text;
    const char *end = text + strlen(text);
    while (p < end && is_py_space(*p))
        p++;
    while (end > p && is_py_space(end[-1]))
        end--;
    /* A '-' never gets here: hyphens were removed before. */
    if (p < end && *p == '+')
        p++;
    int after_prefix = 0;
    if (end - p >= 2 && p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) {
        p += 2;
        after_prefix = 1;
    }
    uint8_t seen[32];
    size_t count = 0;
    int last_was_digit = 0;
    for (; p < end; p++) {
        if (*p == '_') {
            if (!last_was_digit && !(after_prefix && count == 0))
                return MOAT_E_INVAL;
            if (p + 1 >= end || p[1] == '_')
                return MOAT_E_INVAL;
            last_was_digit = 0;
            continue;
        }
        int v = hex_value(*p);
        if (v < 0 || count >= 32)
            return MOAT_E_INVAL;
        seen[count++] = (uint8_t)v;
        last_was_digit = 1;
    }
    if (count == 0)
        return MOAT_E_INVAL;
    memset(digits, 0, 32);
    memcpy(digits + (32 - count), seen, count);
    return MOAT_OK;
}

moat_err moat_uuid_canonicalize(const char *in, char out[MOAT_UUID_STR_LEN])
{
    if (in == NULL)
        return MOAT_E_INVAL;
    size_t len = strnlen(in, UUID_INPUT_MAX + 1);
    if (len > UUID_INPUT_MAX)
        return MOAT_E_INVAL;
    char work[UUID_INPUT_MAX + 1];
    for (size_t i = 0; i < len; i++) {
        if ((unsigned char)in[i] >= 0x80)
            return MOAT_E_INVAL;
    }
    memcpy(work, in, len + 1);
    remove_all(work, "urn:");
    remove_all(work, "uuid:");
    char *start = work;
    char *end = work + strlen(work);
    while (start < end && (*start == '{' || *start == '}'))
        start++;
    while (end > start && (end[-1] == '{' || end[-1] == '}'))
        end--;
    *end = '\0';
    remove_all(start, "-");
    if (strlen(start) != 32)
        return MOAT_E_INVAL;
    uint8_t digits[32];
    moat_err err = parse_python_hex(start, digits);
    if (err != MOAT_OK)
        return err;
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    for (size_t i = 0; i < 32; i++) {
        if (i == 8 || i == 12 || i == 16 || i == 20)
            out[o++] = '-';
        out[o++] = hex[digits[i]];
    }
    out[o] = '\0';
    return MOAT_OK;
}

void moat_uuid_generate(char out[MOAT_UUID_STR_LEN])
{
    uuid_t id;
    uuid_generate_random(id);
    uuid_unparse_lower(id, out);
}
