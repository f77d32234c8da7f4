/* libFuzzer target over moat-execd's pure parsers: line splitter (both modes, fed in
 * input-chosen pieces), JSON escaper (output must parse and round-trip valid UTF-8), the
 * strict request JSON parser, path expansion, Range parsing, the download line window (fed
 * in pieces, against one whole feed), env-dump parsing and the upload assembler. */
#include "execd/execd.h"

#include "execd_json.h"

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

/* The line window over data, its first two bytes choosing the window and the piece size:
 * what it keeps must not depend on how the input is cut. */
static void check_line_window(const uint8_t *data, size_t size)
{
    if (size < 2)
        return;
    uint64_t first = 1 + data[0] % 8, count = 1 + data[1] % 8;
    size_t step = 1 + (data[0] >> 3) % 7;
    data += 2;
    size -= 2;
    moat_execd_line_window whole, cut;
    moat_execd_line_window_init(&whole, first, count);
    moat_execd_line_window_init(&cut, first, count);
    size_t off, len;
    moat_execd_line_window_feed(&whole, data, size, &off, &len);
    if (off + len > size)
        abort();
    size_t want_off = off, want_len = len, got = 0;
    for (size_t i = 0; i < size; i += step) {
        size_t n = size - i < step ? size - i : step, o, l;
        bool done = moat_execd_line_window_feed(&cut, data + i, n, &o, &l);
        if (o + l > n ||
            (l > 0 && (i + o != want_off + got || memcmp(data + i + o, data + want_off + got, l))))
            abort();
        got += l;
        if (done)
            break;
    }
    if (got != want_len)
        abort();
}

/* Well-formed UTF-8 per the Unicode standard's table of byte ranges, written apart from
 * execd's decoder so that the escaper is checked against an independent reading. */
static bool utf8_ok(const uint8_t *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        uint8_t c = s[i];
        size_t k;
        uint8_t lo = 0x80, hi = 0xBF;
        if (c <= 0x7F) {
            i++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            k = 1;
        } else if (c >= 0xE0 && c <= 0xEF) {
            k = 2;
            lo = c == 0xE0 ? 0xA0 : 0x80;
            hi = c == 0xED ? 0x9F : 0xBF;
        } else if (c >= 0xF0 && c <= 0xF4) {
            k = 3;
            lo = c == 0xF0 ? 0x90 : 0x80;
            hi = c == 0xF4 ? 0x8F : 0xBF;
        } else {
            return false;
        }
        if (i + k >= n)
            return false;
        if (s[i + 1] < lo || s[i + 1] > hi)
            return false;
        for (size_t j = 2; j <= k; j++)
            if (s[i + j] < 0x80 || s[i + j] > 0xBF)
                return false;
        i += k + 1;
    }
    return true;
}

/* The escaper's output for data must be one JSON string. cJSON strings end at NUL, so it
 * is read twice: with MOAT_JSON_NUL_REJECT it must parse exactly when data holds no NUL
 * (so a NUL is written as the escape \u0000, not dropped or replaced), and with
 * MOAT_JSON_NUL_REPLACE it must give back valid UTF-8 input byte for byte with each NUL
 * as U+FFFD, and valid UTF-8 in every case. */
static void check_escaper(const uint8_t *data, size_t size)
{
    moat_buf b;
    moat_buf_init(&b, 6 * size + 16);
    if (moat_execd_json_string(&b, (const char *)data, size) != MOAT_OK)
        abort();
    bool has_nul = memchr(data, 0, size) != NULL;
    cJSON *strict = moat_json_parse((const char *)b.data, b.len, MOAT_JSON_NUL_REJECT);
    if ((strict != NULL) == has_nul || (strict != NULL && !cJSON_IsString(strict)))
        abort();
    cJSON_Delete(strict);
    cJSON *j = moat_json_parse((const char *)b.data, b.len, MOAT_JSON_NUL_REPLACE);
    if (j == NULL || !cJSON_IsString(j))
        abort();
    const char *got = j->valuestring;
    size_t got_len = strlen(got);
    if (!utf8_ok((const uint8_t *)got, got_len))
        abort();
    if (utf8_ok(data, size)) {
        size_t at = 0;
        for (size_t i = 0; i < size; i++) {
            const char *want = data[i] == 0 ? "\xef\xbf\xbd" : (const char *)data + i;
            size_t wl = data[i] == 0 ? 3 : 1;
            if (at + wl > got_len || memcmp(got + at, want, wl) != 0)
                abort();
            at += wl;
        }
        if (at != got_len)
            abort();
    }
    cJSON_Delete(j);
    moat_buf_free(&b);
}

/* The strict parser accepts a subset of what moat_json_parse does, always says why it
 * refuses, and keeps one member per key. */
static void check_strict_parser(const uint8_t *data, size_t size)
{
    for (int reject = 0; reject < 2; reject++) {
        const char *why = NULL;
        cJSON *t = moat__execd_json_parse((const char *)data, size, reject, &why);
        cJSON *loose = moat_json_parse((const char *)data, size, MOAT_JSON_NUL_REJECT);
        if ((t == NULL && why == NULL) || (t != NULL && loose == NULL))
            abort();
        if (cJSON_IsObject(t))
            for (const cJSON *a = t->child; a != NULL; a = a->next)
                for (const cJSON *c = a->next; c != NULL; c = c->next)
                    if (strcmp(a->string, c->string) == 0)
                        abort();
        cJSON_Delete(t);
        cJSON_Delete(loose);
    }
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

    check_escaper(data, size);
    check_strict_parser(data, size);
    check_line_window(data, size);

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
