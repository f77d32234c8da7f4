/* Strict JSON for moatd and moat-execd, on cJSON. */
#ifndef MOAT_COMMON_JSON_H
#define MOAT_COMMON_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "common/common.h"

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

#endif
