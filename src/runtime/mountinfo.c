/* An incremental reader of /proc/<pid>/mountinfo (proc(5)): bytes in, one entry per complete
 * line out. No I/O. Lines too long for the buffer or malformed are skipped and counted, so a
 * huge overlay line elsewhere on the host never hides the entries we look for. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

void moat__mountinfo_init(moat__mountinfo_reader *r)
{
    r->len = 0;
    r->overlong = false;
    r->skipped = 0;
}

/* The next space-separated field of [*p, end): sets *field and *field_len and moves *p past it.
 * false when there is none. */
static bool next_field(const char **p, const char *end, const char **field, size_t *field_len)
{
    while (*p < end && **p == ' ')
        (*p)++;
    if (*p == end)
        return false;
    *field = *p;
    while (*p < end && **p != ' ')
        (*p)++;
    *field_len = (size_t)(*p - *field);
    return true;
}

/* Copies a field into out, turning the kernel's octal escapes (\040 for a space, \011, \012,
 * \134) back into bytes. false when it does not fit or an escape is malformed. */
static bool unescape(const char *in, size_t len, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        char c = in[i];
        if (c == '\\') {
            if (len - i < 4)
                return false;
            unsigned v = 0;
            for (size_t k = 1; k <= 3; k++) {
                char d = in[i + k];
                if (d < '0' || d > '7')
                    return false;
                v = v * 8 + (unsigned)(d - '0');
            }
            if (v == 0 || v > 255)
                return false;
            c = (char)v;
            i += 3;
        }
        if (o + 1 >= cap)
            return false;
        out[o++] = c;
    }
    out[o] = '\0';
    return true;
}

static bool parse_uint(const char *s, size_t len, unsigned *out)
{
    if (len == 0 || len > 9)
        return false;
    unsigned v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    *out = v;
    return true;
}

/* True when the comma-separated list [opts, opts+len) holds the option word exactly. */
static bool has_option(const char *opts, size_t len, const char *word)
{
    size_t wlen = strlen(word);
    const char *p = opts, *end = opts + len;
    while (p < end) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        size_t n = comma ? (size_t)(comma - p) : (size_t)(end - p);
        if (n == wlen && memcmp(p, word, n) == 0)
            return true;
        p += n + 1;
    }
    return false;
}

bool moat__mountinfo_parse_line(const char *line, size_t len, moat__mount_entry *out)
{
    memset(out, 0, sizeof(*out));
    const char *p = line, *end = line + len;
    const char *f;
    size_t flen;
    unsigned ignored;
    /* mount id, parent id */
    if (!next_field(&p, end, &f, &flen) || !parse_uint(f, flen, &ignored) ||
        !next_field(&p, end, &f, &flen) || !parse_uint(f, flen, &ignored))
        return false;
    /* major:minor */
    if (!next_field(&p, end, &f, &flen))
        return false;
    const char *colon = memchr(f, ':', flen);
    if (colon == NULL || !parse_uint(f, (size_t)(colon - f), &out->major) ||
        !parse_uint(colon + 1, flen - (size_t)(colon - f) - 1, &out->minor))
        return false;
    /* root, mount point, per-mount options */
    const char *opts;
    size_t opts_len;
    if (!next_field(&p, end, &f, &flen) || !next_field(&p, end, &f, &flen) ||
        !unescape(f, flen, out->mount_point, sizeof(out->mount_point)) ||
        !next_field(&p, end, &opts, &opts_len))
        return false;
    out->read_only = has_option(opts, opts_len, "ro");
    out->nosuid = has_option(opts, opts_len, "nosuid");
    out->nodev = has_option(opts, opts_len, "nodev");
    out->noexec = has_option(opts, opts_len, "noexec");
    out->noatime = has_option(opts, opts_len, "noatime");
    /* optional fields up to the lone "-" */
    for (;;) {
        if (!next_field(&p, end, &f, &flen))
            return false;
        if (flen == 1 && f[0] == '-')
            break;
    }
    /* file system type, source, super options */
    if (!next_field(&p, end, &f, &flen) || flen >= sizeof(out->fstype))
        return false;
    memcpy(out->fstype, f, flen);
    out->fstype[flen] = '\0';
    if (!next_field(&p, end, &f, &flen) || !unescape(f, flen, out->source, sizeof(out->source)))
        return false;
    return next_field(&p, end, &f, &flen);
}

void moat__mountinfo_feed(moat__mountinfo_reader *r, const char *data, size_t len,
                          void (*on_entry)(void *ctx, const moat__mount_entry *entry), void *ctx)
{
    moat__mount_entry entry;
    while (len > 0) {
        const char *nl = memchr(data, '\n', len);
        size_t take = nl ? (size_t)(nl - data) : len;
        if (!r->overlong) {
            if (take > sizeof(r->line) - r->len) {
                r->overlong = true;
            } else {
                memcpy(r->line + r->len, data, take);
                r->len += take;
            }
        }
        data += take;
        len -= take;
        if (nl == NULL)
            return;
        data++; /* the newline */
        len--;
        if (!r->overlong && moat__mountinfo_parse_line(r->line, r->len, &entry))
            on_entry(ctx, &entry);
        else
            r->skipped++;
        r->len = 0;
        r->overlong = false;
    }
}
