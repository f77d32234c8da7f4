/* Readers over engine JSON for the runtime tests: NULL when a value is absent or of
 * another type; a number that is not an integer fails the test. Include after cmocka.h. */
#ifndef MOAT_TESTS_RUNTIME_JSON_READERS_H
#define MOAT_TESTS_RUNTIME_JSON_READERS_H

#include "common/json.h"

static inline cJSON *jget(const cJSON *obj, const char *key)
{
    return cJSON_IsObject(obj) ? cJSON_GetObjectItemCaseSensitive(obj, key) : NULL;
}

static inline const char *jsv(const cJSON *v)
{
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static inline int64_t jiv(const cJSON *v)
{
    int64_t out = 0;
    assert_true(moat_json_int_value(v, &out));
    return out;
}

#endif
