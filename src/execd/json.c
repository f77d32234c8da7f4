/* Request JSON with Go's rule for repeated keys, and UTF-8-safe strings out. */
#include "execd_json.h"

#include <stdlib.h>
#include <string.h>

typedef struct keyed {
    cJSON *item;
    size_t index;
} keyed;

static int by_key_then_index(const void *a, const void *b)
{
    const keyed *x = a, *y = b;
    int c = strcmp(x->item->string, y->item->string);
    if (c != 0)
        return c;
    return x->index < y->index ? -1 : 1;
}

/* Keeps the last of each run of equal keys (as Go's decoder does), or refuses the object.
 * Returns NULL or why it failed. */
static const char *dedupe(cJSON *obj, bool reject)
{
    size_t n = 0;
    for (cJSON *c = obj->child; c != NULL; c = c->next)
        n++;
    if (n < 2)
        return NULL;
    keyed *k = malloc(n * sizeof(*k));
    if (k == NULL)
        return "out of memory";
    n = 0;
    for (cJSON *c = obj->child; c != NULL; c = c->next, n++)
        k[n] = (keyed){c, n};
    qsort(k, n, sizeof(*k), by_key_then_index);
    const char *why = NULL;
    for (size_t i = 0; why == NULL && i + 1 < n; i++) {
        if (strcmp(k[i].item->string, k[i + 1].item->string) != 0)
            continue;
        if (reject)
            why = "duplicate object key";
        else
            cJSON_Delete(cJSON_DetachItemViaPointer(obj, k[i].item));
    }
    free(k);
    return why;
}

/* Depth-first; cJSON's nesting limit bounds the recursion. Returns NULL or why
 * the tree is refused. */
static const char *dedupe_all(cJSON *node, bool reject)
{
    for (cJSON *c = node->child; c != NULL; c = c->next) {
        const char *why = dedupe_all(c, reject);
        if (why != NULL)
            return why;
    }
    return cJSON_IsObject(node) ? dedupe(node, reject) : NULL;
}

cJSON *moat__execd_json_parse(const char *text, size_t len, bool reject_duplicates,
                              const char **why)
{
    cJSON *root = moat_json_parse(text, len, MOAT_JSON_NUL_REJECT);
    if (root == NULL) {
        /* Only to say why: the same text with U+FFFD for \u0000 would have been valid. */
        cJSON *again = moat_json_parse(text, len, MOAT_JSON_NUL_REPLACE);
        *why =
            again != NULL ? "\\u0000 is not allowed in strings" : "not one well-formed JSON value";
        cJSON_Delete(again);
        return NULL;
    }
    const char *bad = dedupe_all(root, reject_duplicates);
    if (bad != NULL) {
        cJSON_Delete(root);
        *why = bad;
        return NULL;
    }
    return root;
}

char *moat__execd_utf8_clean(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t len = strlen(s), bad = 0;
    uint32_t cp;
    for (size_t i = 0; i < len;) {
        size_t n = moat_utf8_seq(p + i, len - i, &cp);
        bad += n == 0;
        i += n == 0 ? 1 : n;
    }
    char *out = malloc(len + 2 * bad + 1);
    if (out == NULL || bad == 0)
        return out != NULL ? memcpy(out, s, len + 1) : NULL;
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        size_t n = moat_utf8_seq(p + i, len - i, &cp);
        if (n == 0) {
            memcpy(out + o, "\xef\xbf\xbd", 3);
            o += 3;
            i++;
        } else {
            memcpy(out + o, s + i, n);
            o += n;
            i += n;
        }
    }
    out[o] = '\0';
    return out;
}

cJSON *moat__execd_json_str(const char *s)
{
    char *clean = moat__execd_utf8_clean(s);
    cJSON *j = clean != NULL ? cJSON_CreateString(clean) : NULL;
    free(clean);
    return j;
}

bool moat__execd_json_set(cJSON *obj, const char *key, cJSON *item)
{
    if (item == NULL)
        return false;
    bool ok = cJSON_GetObjectItemCaseSensitive(obj, key) != NULL
                  ? cJSON_ReplaceItemInObjectCaseSensitive(obj, key, item)
                  : cJSON_AddItemToObject(obj, key, item);
    if (!ok)
        cJSON_Delete(item);
    return ok;
}
