/* Pure pieces of moat-execd: SSE event writer, line splitter, path expansion, Range
 * parsing, mode conversion, session environment dump parsing. */
#include "execd/execd.h"

#include "execd_json.h"

#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* cJSON writes U+2028/U+2029 and '<' raw, copies invalid UTF-8 and cuts strings at NUL;
 * Go's encoder escapes the first, replaces bad bytes and writes NUL as \u0000, and the
 * Python SDK's line reader splits on U+2028, so the stream's strings are escaped here. */
moat_err moat_execd_json_string(moat_buf *out, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)s;
    moat_err err = moat_buf_append(out, "\"", 1);
    size_t i = 0;
    while (err == MOAT_OK && i < len) {
        size_t run = i;
        while (run < len && p[run] >= 0x20 && p[run] < 0x80 && p[run] != '"' && p[run] != '\\' &&
               p[run] != '<' && p[run] != '>' && p[run] != '&')
            run++;
        if (run > i) {
            err = moat_buf_append(out, p + i, run - i);
            i = run;
            continue;
        }
        unsigned char c = p[i];
        char esc[8];
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            err = moat_buf_append(out, esc, 2);
            i++;
        } else if (c == '\n' || c == '\r' || c == '\t') {
            esc[0] = '\\';
            esc[1] = c == '\n' ? 'n' : c == '\r' ? 'r' : 't';
            err = moat_buf_append(out, esc, 2);
            i++;
        } else if (c < 0x20 || c == '<' || c == '>' || c == '&') {
            memcpy(esc, "\\u00", 4);
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            err = moat_buf_append(out, esc, 6);
            i++;
        } else {
            uint32_t cp = 0;
            size_t n = moat_utf8_seq(p + i, len - i, &cp);
            if (n == 0) {
                err = moat_buf_append(out, "\\ufffd", 6);
                i++;
            } else if (cp == 0x2028 || cp == 0x2029) {
                err = moat_buf_append(out, cp == 0x2028 ? "\\u2028" : "\\u2029", 6);
                i += n;
            } else {
                err = moat_buf_append(out, p + i, n);
                i += n;
            }
        }
    }
    if (err == MOAT_OK)
        err = moat_buf_append(out, "\"", 1);
    return err;
}

static moat_err append_str(moat_buf *out, const char *s)
{
    return moat_buf_append(out, s, strlen(s));
}

static moat_err append_i64(moat_buf *out, const char *key, int64_t v)
{
    char tmp[64];
    int n = snprintf(tmp, sizeof(tmp), ",\"%s\":%" PRId64, key, v);
    return moat_buf_append(out, tmp, (size_t)n);
}

moat_err moat_execd_sse_event(moat_buf *out, const moat_execd_event *ev)
{
    if (ev == NULL || ev->type == NULL)
        return MOAT_E_INVAL;
    size_t mark = out->len;
    moat_err err = append_str(out, "{\"type\":");
    if (err == MOAT_OK)
        err = moat_execd_json_string(out, ev->type, strlen(ev->type));
    if (err == MOAT_OK && ev->text != NULL && ev->text_len > 0) {
        err = append_str(out, ",\"text\":");
        if (err == MOAT_OK)
            err = moat_execd_json_string(out, ev->text, ev->text_len);
    }
    if (err == MOAT_OK && ev->execution_count != 0)
        err = append_i64(out, "execution_count", ev->execution_count);
    if (err == MOAT_OK && ev->execution_time != 0)
        err = append_i64(out, "execution_time", ev->execution_time);
    if (err == MOAT_OK && ev->error_ename != NULL) {
        const char *evalue = ev->error_evalue ? ev->error_evalue : "";
        err = append_str(out, ",\"error\":{\"ename\":");
        if (err == MOAT_OK)
            err = moat_execd_json_string(out, ev->error_ename, strlen(ev->error_ename));
        if (err == MOAT_OK)
            err = append_str(out, ",\"evalue\":");
        if (err == MOAT_OK)
            err = moat_execd_json_string(out, evalue, strlen(evalue));
        if (err == MOAT_OK)
            err = append_str(out, ",\"traceback\":");
        if (err == MOAT_OK && ev->error_traceback == NULL)
            err = append_str(out, "null");
        else if (err == MOAT_OK) {
            err = append_str(out, "[");
            if (err == MOAT_OK)
                err = moat_execd_json_string(out, ev->error_traceback, strlen(ev->error_traceback));
            if (err == MOAT_OK)
                err = append_str(out, "]");
        }
        if (err == MOAT_OK && ev->error_cause != NULL) {
            err = append_str(out, ",\"cause\":");
            if (err == MOAT_OK)
                err = moat_execd_json_string(out, ev->error_cause, strlen(ev->error_cause));
        }
        if (err == MOAT_OK)
            err = append_str(out, "}");
    }
    if (err == MOAT_OK)
        err = append_i64(out, "timestamp", ev->timestamp);
    if (err == MOAT_OK)
        err = append_str(out, "}\n\n");
    if (err != MOAT_OK)
        out->len = mark;
    return err;
}

size_t moat_execd_sse_binary_header(char out[MOAT_EXECD_BINARY_HEADER_MAX], const char *stream,
                                    int64_t timestamp, size_t len)
{
    if (len < 1 || len > MOAT_EXECD_BINARY_CHUNK_MAX || stream == NULL || strlen(stream) > 16)
        return 0;
    int n = snprintf(out, MOAT_EXECD_BINARY_HEADER_MAX,
                     "{\"type\":\"%s\",\"timestamp\":%" PRId64 ",\"len\":%zu}\n", stream, timestamp,
                     len);
    return n > 0 && n < MOAT_EXECD_BINARY_HEADER_MAX ? (size_t)n : 0;
}

moat_err moat_execd_sse_binary(moat_buf *out, const char *stream, int64_t timestamp,
                               const void *data, size_t len)
{
    char head[MOAT_EXECD_BINARY_HEADER_MAX];
    size_t n = moat_execd_sse_binary_header(head, stream, timestamp, len);
    if (n == 0)
        return MOAT_E_INVAL;
    moat_err err = moat_buf_reserve(out, n + len + 2);
    if (err != MOAT_OK)
        return err;
    moat_buf_append(out, head, n);
    moat_buf_append(out, data, len);
    moat_buf_append(out, "\n\n", 2);
    return MOAT_OK;
}

/* ---- line splitter ---- */

void moat_execd_lines_init(moat_execd_lines *ls, moat_execd_line_mode mode, size_t max_line)
{
    ls->mode = mode;
    ls->prev_cr = false;
    ls->max_line = max_line < 4 ? 4 : max_line;
    moat_buf_init(&ls->partial, ls->max_line);
}

void moat_execd_lines_free(moat_execd_lines *ls)
{
    moat_buf_free(&ls->partial);
}

/* How many bytes of s[0..len) end on a UTF-8 boundary (drops an incomplete tail). */
static size_t utf8_cut(const unsigned char *s, size_t len)
{
    size_t back = 0;
    while (back < 3 && back < len && (s[len - 1 - back] & 0xC0) == 0x80)
        back++;
    if (back < len) {
        unsigned char lead = s[len - 1 - back];
        size_t need = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1;
        if (need > back + 1 && len - 1 - back > 0)
            return len - 1 - back;
    }
    return len;
}

static moat_err emit_partial(moat_execd_lines *ls, moat_execd_line_cb cb, void *ud)
{
    moat_buf *b = &ls->partial;
    size_t len = b->len;
    if (ls->mode == MOAT_EXECD_LINES_SESSION && len > 0 && b->data[len - 1] == '\r')
        len--;
    moat_err err = MOAT_OK;
    if (len > 0)
        err = cb(ud, (const char *)b->data, len);
    else if (ls->mode == MOAT_EXECD_LINES_COMMAND)
        err = cb(ud, "\n", 1);
    moat_buf_reset(b);
    return err;
}

/* A line at its size limit goes out in a piece cut on a character boundary; the rest
 * stays for the next piece. */
static moat_err flush_full(moat_execd_lines *ls, moat_execd_line_cb cb, void *ud)
{
    moat_buf *b = &ls->partial;
    size_t cut = utf8_cut(b->data, b->len);
    moat_err err = cb(ud, (const char *)b->data, cut);
    moat_buf_consume(b, cut);
    return err;
}

moat_err moat_execd_lines_feed(moat_execd_lines *ls, const void *data, size_t len,
                               moat_execd_line_cb cb, void *ud)
{
    const unsigned char *p = data;
    size_t i = 0;
    while (i < len) {
        unsigned char c = p[i];
        bool was_cr = ls->prev_cr;
        ls->prev_cr = false;
        if (ls->mode == MOAT_EXECD_LINES_COMMAND && (c == '\n' || c == '\r')) {
            i++;
            if (c == '\n' && was_cr)
                continue;
            ls->prev_cr = c == '\r';
            moat_err err = emit_partial(ls, cb, ud);
            if (err != MOAT_OK)
                return err;
            continue;
        }
        if (ls->mode == MOAT_EXECD_LINES_SESSION && c == '\n') {
            i++;
            moat_err err = emit_partial(ls, cb, ud);
            if (err != MOAT_OK)
                return err;
            continue;
        }
        /* Copy the run of ordinary bytes in one go. */
        size_t run = i;
        while (run < len && p[run] != '\n' &&
               !(ls->mode == MOAT_EXECD_LINES_COMMAND && p[run] == '\r'))
            run++;
        while (i < run) {
            size_t room = ls->max_line - ls->partial.len;
            size_t take = run - i < room ? run - i : room;
            moat_err err = moat_buf_append(&ls->partial, p + i, take);
            if (err != MOAT_OK)
                return err;
            i += take;
            if (ls->partial.len == ls->max_line) {
                err = flush_full(ls, cb, ud);
                if (err != MOAT_OK)
                    return err;
            }
        }
    }
    return MOAT_OK;
}

moat_err moat_execd_lines_finish(moat_execd_lines *ls, moat_execd_line_cb cb, void *ud)
{
    ls->prev_cr = false;
    if (ls->partial.len == 0)
        return MOAT_OK;
    size_t len = ls->partial.len;
    if (ls->mode == MOAT_EXECD_LINES_SESSION && ls->partial.data[len - 1] == '\r')
        len--;
    moat_err err = len > 0 ? cb(ud, (const char *)ls->partial.data, len) : MOAT_OK;
    moat_buf_reset(&ls->partial);
    return err;
}

/* ---- path expansion ---- */

#define EXPAND_MAX 4096

static bool name_start(char c)
{
    return c == '_' || isalpha((unsigned char)c);
}

static bool name_char(char c)
{
    return c == '_' || isalnum((unsigned char)c);
}

moat_err moat_execd_expand_path(const char *in, const char *home, moat_execd_env_lookup lookup,
                                void *ud, char **out, char *errbuf, size_t errlen)
{
    moat_buf b;
    moat_buf_init(&b, EXPAND_MAX + 1);
    moat_err err = MOAT_OK;
    const char *p = in;
    *out = NULL;
    if (errlen > 0)
        errbuf[0] = '\0';
    if (p[0] == '~' && (p[1] == '\0' || p[1] == '/')) {
        if (home == NULL || home[0] == '\0') {
            snprintf(errbuf, errlen, "cannot expand ~: home directory unknown");
            return MOAT_E_NOT_FOUND;
        }
        err = moat_buf_append(&b, home, strlen(home));
        p++;
    }
    while (err == MOAT_OK && *p) {
        if (*p != '$') {
            const char *q = strchr(p, '$');
            size_t n = q ? (size_t)(q - p) : strlen(p);
            err = moat_buf_append(&b, p, n);
            p += n;
            continue;
        }
        char name[256];
        size_t nlen = 0;
        if (p[1] == '{') {
            const char *close = strchr(p + 2, '}');
            if (close == NULL) {
                snprintf(errbuf, errlen, "unterminated ${ in path");
                err = MOAT_E_INVAL;
                break;
            }
            nlen = (size_t)(close - (p + 2));
            bool ok = nlen > 0 && nlen < sizeof(name) && name_start(p[2]);
            for (size_t k = 1; ok && k < nlen; k++)
                ok = name_char(p[2 + k]);
            if (!ok) {
                snprintf(errbuf, errlen, "bad variable name in path");
                err = MOAT_E_INVAL;
                break;
            }
            memcpy(name, p + 2, nlen);
            p = close + 1;
        } else if (name_start(p[1])) {
            const char *q = p + 1;
            while (name_char(*q))
                q++;
            nlen = (size_t)(q - (p + 1));
            if (nlen >= sizeof(name)) {
                snprintf(errbuf, errlen, "variable name too long in path");
                err = MOAT_E_INVAL;
                break;
            }
            memcpy(name, p + 1, nlen);
            p = q;
        } else {
            err = moat_buf_append(&b, "$", 1);
            p++;
            continue;
        }
        name[nlen] = '\0';
        const char *val = lookup ? lookup(ud, name) : NULL;
        if (val == NULL) {
            snprintf(errbuf, errlen, "undefined environment variable: %s", name);
            err = MOAT_E_NOT_FOUND;
            break;
        }
        err = moat_buf_append(&b, val, strlen(val));
    }
    if (err == MOAT_OK)
        err = moat_buf_append(&b, "", 1);
    if (err == MOAT_E_TOO_BIG)
        snprintf(errbuf, errlen, "expanded path too long");
    if (err != MOAT_OK) {
        moat_buf_free(&b);
        return err;
    }
    *out = (char *)b.data;
    return MOAT_OK;
}

/* ---- Range ---- */

static bool parse_u64(const char *s, const char *end, uint64_t *v)
{
    if (s == end)
        return false;
    uint64_t x = 0;
    for (; s < end; s++) {
        if (!isdigit((unsigned char)*s))
            return false;
        if (x > (UINT64_MAX - 9) / 10)
            return false;
        x = x * 10 + (uint64_t)(*s - '0');
    }
    *v = x;
    return true;
}

moat_err moat_execd_parse_range(const char *header, uint64_t size, uint64_t *start, uint64_t *end)
{
    while (*header == ' ')
        header++;
    if (strncmp(header, "bytes=", 6) != 0)
        return MOAT_E_INVAL;
    const char *s = header + 6;
    const char *comma = strchr(s, ',');
    const char *e = comma ? comma : s + strlen(s);
    while (s < e && *s == ' ')
        s++;
    while (e > s && e[-1] == ' ')
        e--;
    const char *dash = memchr(s, '-', (size_t)(e - s));
    if (dash == NULL)
        return MOAT_E_INVAL;
    uint64_t a, b;
    if (dash == s) {
        /* suffix range: the last b bytes */
        if (!parse_u64(dash + 1, e, &b) || b == 0 || size == 0)
            return MOAT_E_INVAL;
        *start = b >= size ? 0 : size - b;
        *end = size - 1;
        return MOAT_OK;
    }
    if (!parse_u64(s, dash, &a) || a >= size)
        return MOAT_E_INVAL;
    if (dash + 1 == e) {
        b = size - 1;
    } else {
        if (!parse_u64(dash + 1, e, &b) || b < a)
            return MOAT_E_INVAL;
        if (b >= size)
            b = size - 1;
    }
    *start = a;
    *end = b;
    return MOAT_OK;
}

/* A query value that must be a positive decimal integer (at most 18 digits, so sums of
 * two stay far from overflow). */
static bool parse_positive(const char *v, uint64_t *out)
{
    size_t n = strlen(v);
    return n <= 18 && parse_u64(v, v + n, out) && *out > 0;
}

moat_err moat_execd_parse_line_window(const char *offset, const char *limit, uint64_t *first,
                                      uint64_t *count, char *errbuf, size_t errlen)
{
    bool has_offset = offset != NULL && offset[0] != '\0';
    bool has_limit = limit != NULL && limit[0] != '\0';
    if (!has_offset && !has_limit)
        return MOAT_E_NOT_FOUND;
    if (!has_offset || !has_limit) {
        snprintf(errbuf, errlen,
                 "both offset and limit must be provided together for "
                 "line-based reading");
        return MOAT_E_INVAL;
    }
    if (!parse_positive(offset, first)) {
        snprintf(errbuf, errlen, "offset must be a positive integer (1-based)");
        return MOAT_E_INVAL;
    }
    if (!parse_positive(limit, count)) {
        snprintf(errbuf, errlen, "limit must be a positive integer");
        return MOAT_E_INVAL;
    }
    return MOAT_OK;
}

void moat_execd_line_window_init(moat_execd_line_window *w, uint64_t first, uint64_t count)
{
    w->first = first;
    w->end = count > UINT64_MAX - first ? UINT64_MAX : first + count;
    w->line = 1;
}

/* Moves past whole lines of in[i..len) until the window's line count reaches `until` or the
 * input ends; returns the new position. */
static size_t pass_lines(moat_execd_line_window *w, const uint8_t *in, size_t len, size_t i,
                         uint64_t until)
{
    while (i < len && w->line < until) {
        const uint8_t *nl = memchr(in + i, '\n', len - i);
        if (nl == NULL)
            return len;
        i = (size_t)(nl - in) + 1;
        w->line++;
    }
    return i;
}

bool moat_execd_line_window_feed(moat_execd_line_window *w, const uint8_t *in, size_t len,
                                 size_t *keep_off, size_t *keep_len)
{
    *keep_off = pass_lines(w, in, len, 0, w->first);
    *keep_len = pass_lines(w, in, len, *keep_off, w->end) - *keep_off;
    return w->line >= w->end;
}

moat_err moat_execd_mode_from_decimal(int64_t dec, uint32_t *mode)
{
    if (dec < 0 || dec > 7777)
        return MOAT_E_INVAL;
    uint32_t m = 0, shift = 0;
    while (dec > 0) {
        int64_t d = dec % 10;
        if (d > 7)
            return MOAT_E_INVAL;
        m |= (uint32_t)d << shift;
        shift += 3;
        dec /= 10;
    }
    *mode = m;
    return MOAT_OK;
}

int64_t moat_execd_mode_to_decimal(uint32_t mode)
{
    mode &= 07777;
    int64_t dec = 0, mul = 1;
    while (mode > 0) {
        dec += (int64_t)(mode & 7) * mul;
        mul *= 10;
        mode >>= 3;
    }
    return dec;
}

void moat_execd_parse_env_dump(const char *data, size_t len, moat_execd_env_cb cb,
                               moat_execd_env_cb pwd_cb, void *ud)
{
    size_t i = 0;
    while (i < len) {
        const char *rec = data + i;
        const char *nul = memchr(rec, '\0', len - i);
        size_t rlen = nul ? (size_t)(nul - rec) : len - i;
        i += rlen + 1;
        const char *eq = memchr(rec, '=', rlen);
        if (eq == NULL || eq == rec)
            continue;
        size_t nlen = (size_t)(eq - rec);
        const char *val = eq + 1;
        size_t vlen = rlen - nlen - 1;
        if (rec[0] == '\1') {
            if (nlen == 4 && memcmp(rec + 1, "PWD", 3) == 0 && pwd_cb)
                pwd_cb(ud, "PWD", 3, val, vlen);
            continue;
        }
        bool ok = name_start(rec[0]);
        for (size_t k = 1; ok && k < nlen; k++)
            ok = name_char(rec[k]);
        if (ok && cb)
            cb(ud, rec, nlen, val, vlen);
    }
}
