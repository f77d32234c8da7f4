/* moat-execd's JSON helpers on cJSON (private to src/execd and its tests). */
#ifndef MOAT_EXECD_JSON_H
#define MOAT_EXECD_JSON_H

#include "common/json.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Parses a request body or upload metadata with moat_json_parse (MOAT_JSON_NUL_REJECT:
 * UTF-8, no raw control characters, no \u0000); of duplicate object keys the last one
 * wins, as in Go's encoding/json (or, with reject_duplicates, the text is refused).
 * Returns the tree (the caller frees it with cJSON_Delete), or NULL with *why pointing
 * at a static reason. */
cJSON *moat__execd_json_parse(const char *text, size_t len, bool reject_duplicates,
                              const char **why);

/* A cJSON string of s where every byte that is not part of valid UTF-8 becomes U+FFFD,
 * as Go's encoder writes it (cJSON would copy the bytes into its output as they are).
 * The caller owns the node; NULL when out of memory. */
cJSON *moat__execd_json_str(const char *s);

/* s with invalid UTF-8 replaced as above; malloc'd (the caller frees it), NULL when out
 * of memory. */
char *moat__execd_utf8_clean(const char *s);

/* Adds item under key and returns true; on failure (item NULL, out of memory) deletes
 * item and returns false. A key already present is replaced (JSON out never repeats a key). */
bool moat__execd_json_set(cJSON *obj, const char *key, cJSON *item);

#endif
