/* libFuzzer target over moat-execd's pure parsers: line splitter (both modes, fed in
 * input-chosen pieces), JSON escaper (output must parse and round-trip valid UTF-8), path
 * expansion, Range parsing, env-dump parsing and the upload assembler. */
#include "moat/execd.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_LINE 64

static moat_err check_line(void *ud, const char *line, size_t len)
{
    (void)ud;
    (void)line;
    if (len == 0 || len > MAX_LINE)
        abort();
    return MOAT_OK;
}

static const char *lookup(void *ud, const char *name)
{
    (void)ud;
    return name[0] == 'A' ? "/a" : NULL;
}

static void env_cb(void *ud, const char *name, size_t nlen, const char *value, size_t vlen)
{
    (void)ud;
    (void)value;
    (void)vlen;
    if (nlen == 0 || memchr(name, '=', nlen) != NULL)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    for (int mode = 0; mode < 2; mode++) {
        moat_execd_lines ls;
        moat_execd_lines_init(&ls, (moat_execd_line_mode)mode, MAX_LINE);
        size_t i = 0, step = size ? (size_t)data[0] % 7 + 1 : 1;
        while (i < size) {
            size_t n = size - i < step ? size - i : step;
            moat_execd_lines_feed(&ls, data + i, n, check_line, NULL);
            i += n;
        }
        moat_execd_lines_finish(&ls, check_line, NULL);
        moat_execd_lines_free(&ls);
    }

    moat_buf b;
    moat_buf_init(&b, 6 * size + 16);
    if (moat_execd_json_string(&b, (const char *)data, size) != MOAT_OK)
        abort();
    json_error_t err;
    json_t *j = json_loadb((const char *)b.data, b.len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &err);
    if (j == NULL || !json_is_string(j))
        abort();
    /* valid UTF-8 comes back byte for byte */
    json_t *direct = json_stringn((const char *)data, size);
    if (direct != NULL &&
        (json_string_length(j) != size || memcmp(json_string_value(j), data, size) != 0))
        abort();
    json_decref(direct);
    json_decref(j);
    moat_buf_free(&b);

    char *text = malloc(size + 1);
    memcpy(text, data, size);
    text[size] = '\0';
    char *out = NULL, errbuf[128];
    if (moat_execd_expand_path(text, "/root", lookup, NULL, &out, errbuf, sizeof(errbuf)) ==
        MOAT_OK)
        free(out);
    uint64_t s = 0, e = 0;
    if (moat_execd_parse_range(text, 1000, &s, &e) == MOAT_OK && (s > e || e >= 1000))
        abort();
    free(text);
    moat_execd_parse_env_dump((const char *)data, size, env_cb, env_cb, NULL);

    /* the upload assembler, parts carved out of the input */
    char dir[] = "/tmp/moat-fuzz-upload-XXXXXX";
    if (mkdtemp(dir) == NULL)
        return 0;
    moat_execd_upload *u = moat_execd_upload_new(dir, 256, 4);
    static const char *const names[] = {"metadata", "file", "x", NULL};
    uint64_t off = 0;
    for (size_t i = 0; i + 2 <= size && i < 4096;) {
        size_t n = data[i + 1] % 16;
        if (i + 2 + n > size)
            n = size - i - 2;
        const char *name = names[data[i] & 3];
        if (data[i] & 4)
            off = 0;
        moat_execd_upload_part(u, name, "f", off, data + i + 2, n);
        off += n;
        i += 2 + n;
    }
    const char *msg;
    if (moat_execd_upload_finish(u, &msg) == MOAT_EXECD_UPLOAD_OK) {
        for (size_t k = 0; k < moat_execd_upload_count(u); k++)
            if (moat_execd_upload_get(u, k)->path == NULL)
                abort();
    }
    moat_execd_upload_free(u);
    rmdir(dir);
    return 0;
}
