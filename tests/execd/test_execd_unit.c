/* Unit tests of moat-execd's pure pieces: SSE writer, line splitter, path expansion, Range
 * parsing, mode conversion, session env dump, upload assembler, request JSON. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include "moat_test.h"

#include "execd/execd.h"

#include "execd_json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char *sse(const moat_execd_event *ev)
{
    moat_buf b;
    moat_buf_init(&b, 1 << 20);
    assert_int_equal(moat_execd_sse_event(&b, ev), MOAT_OK);
    moat_buf_append(&b, "", 1);
    return (char *)b.data;
}

static void test_sse_events(void **state)
{
    (void)state;
    moat_execd_event init = {.type = "init", .text = "abc", .text_len = 3, .timestamp = 17};
    char *s = sse(&init);
    assert_string_equal(s, "{\"type\":\"init\",\"text\":\"abc\",\"timestamp\":17}\n\n");
    free(s);
    moat_execd_event done = {
        .type = "execution_complete", .execution_time = 152, .timestamp = 1718000000300};
    s = sse(&done);
    assert_string_equal(
        s,
        "{\"type\":\"execution_complete\",\"execution_time\":152,\"timestamp\":1718000000300}\n\n");
    free(s);
    /* zero execution time is omitted, as Go's omitempty does */
    moat_execd_event zero = {.type = "execution_complete", .timestamp = 5};
    s = sse(&zero);
    assert_string_equal(s, "{\"type\":\"execution_complete\",\"timestamp\":5}\n\n");
    free(s);
    moat_execd_event err = {.type = "error",
                            .error_ename = "CommandExecError",
                            .error_evalue = "7",
                            .error_traceback = "exit status 7",
                            .timestamp = 9};
    s = sse(&err);
    assert_string_equal(s,
                        "{\"type\":\"error\",\"error\":{\"ename\":\"CommandExecError\",\"evalue\":"
                        "\"7\",\"traceback\":[\"exit status 7\"]},\"timestamp\":9}\n\n");
    free(s);
    moat_execd_event nulltb = {
        .type = "error", .error_ename = "X", .error_evalue = "y", .timestamp = 1};
    s = sse(&nulltb);
    assert_non_null(strstr(s, "\"traceback\":null"));
    free(s);
    /* empty text is left out */
    moat_execd_event empty = {.type = "stdout", .text = "", .text_len = 0, .timestamp = 1};
    s = sse(&empty);
    assert_string_equal(s, "{\"type\":\"stdout\",\"timestamp\":1}\n\n");
    free(s);
}

static void test_sse_escaping(void **state)
{
    (void)state;
    moat_buf b;
    moat_buf_init(&b, 4096);
    /* quotes, backslash, control, HTML, U+2028, invalid UTF-8, valid multibyte */
    const char in[] = "a\"\\\n\r\t\x01<>&\xe2\x80\xa8\xff\xc3\xa9";
    assert_int_equal(moat_execd_json_string(&b, in, sizeof(in) - 1), MOAT_OK);
    moat_buf_append(&b, "", 1);
    assert_string_equal((char *)b.data, "\"a\\\"\\\\\\n\\r\\t\\u0001\\u003c\\u003e\\u0026\\u2028"
                                        "\\ufffd\xc3\xa9\"");
    moat_buf_reset(&b);
    /* a NUL inside text and a truncated sequence at the end */
    const char in2[] = {'x', 0, (char)0xe2, (char)0x82};
    assert_int_equal(moat_execd_json_string(&b, in2, sizeof(in2)), MOAT_OK);
    moat_buf_append(&b, "", 1);
    assert_string_equal((char *)b.data, "\"x\\u0000\\ufffd\\ufffd\"");
    /* overlong encodings and surrogates are invalid */
    moat_buf_reset(&b);
    const char in3[] = "\xc0\xaf\xed\xa0\x80";
    assert_int_equal(moat_execd_json_string(&b, in3, sizeof(in3) - 1), MOAT_OK);
    moat_buf_append(&b, "", 1);
    assert_null(strstr((char *)b.data, "\xed"));
    /* the buffer maximum is honoured */
    moat_buf small;
    moat_buf_init(&small, 4);
    assert_int_equal(moat_execd_json_string(&small, "abcdef", 6), MOAT_E_TOO_BIG);
    moat_buf_free(&small);
    moat_buf_free(&b);
}

static void test_sse_binary(void **state)
{
    (void)state;
    moat_buf b;
    moat_buf_init(&b, 1 << 20);
    const char data[] = {'a', 0, '\n', (char)0xff};
    assert_int_equal(moat_execd_sse_binary(&b, "stdout", 42, data, 4), MOAT_OK);
    const char want[] = "{\"type\":\"stdout\",\"timestamp\":42,\"len\":4}\n";
    assert_int_equal(b.len, strlen(want) + 4 + 2);
    assert_memory_equal(b.data, want, strlen(want));
    assert_memory_equal(b.data + strlen(want), data, 4);
    assert_memory_equal(b.data + strlen(want) + 4, "\n\n", 2);
    char head[MOAT_EXECD_BINARY_HEADER_MAX];
    assert_int_equal(moat_execd_sse_binary_header(head, "stdout", 42, 4), strlen(want));
    assert_memory_equal(head, want, strlen(want));
    assert_int_equal(moat_execd_sse_binary_header(head, "stdout", 42, 0), 0);
    assert_int_equal(moat_execd_sse_binary_header(head, "stdout", 42, 65537), 0);
    assert_int_equal(moat_execd_sse_binary(&b, "stdout", 1, data, 0), MOAT_E_INVAL);
    char *big = calloc(1, MOAT_EXECD_BINARY_CHUNK_MAX + 1);
    assert_int_equal(moat_execd_sse_binary(&b, "stderr", 1, big, MOAT_EXECD_BINARY_CHUNK_MAX),
                     MOAT_OK);
    assert_int_equal(moat_execd_sse_binary(&b, "stderr", 1, big, MOAT_EXECD_BINARY_CHUNK_MAX + 1),
                     MOAT_E_INVAL);
    free(big);
    moat_buf_free(&b);
}

/* ---- line splitter ---- */

typedef struct lines_out {
    char items[64][128];
    size_t n;
} lines_out;

static moat_err collect_line(void *ud, const char *line, size_t len)
{
    lines_out *o = ud;
    assert_true(o->n < 64);
    assert_true(len < 128);
    memcpy(o->items[o->n], line, len);
    o->items[o->n][len] = '\0';
    o->n++;
    return MOAT_OK;
}

/* Feeds input whole and one byte at a time; both must give the same lines. */
static void check_lines(moat_execd_line_mode mode, const char *input, size_t len,
                        const char *const *want, size_t nwant)
{
    for (int pass = 0; pass < 2; pass++) {
        moat_execd_lines ls;
        moat_execd_lines_init(&ls, mode, 100);
        lines_out out = {.n = 0};
        if (pass == 0) {
            assert_int_equal(moat_execd_lines_feed(&ls, input, len, collect_line, &out), MOAT_OK);
        } else {
            for (size_t i = 0; i < len; i++)
                assert_int_equal(moat_execd_lines_feed(&ls, input + i, 1, collect_line, &out),
                                 MOAT_OK);
        }
        assert_int_equal(moat_execd_lines_finish(&ls, collect_line, &out), MOAT_OK);
        assert_int_equal(out.n, nwant);
        for (size_t i = 0; i < nwant; i++)
            assert_string_equal(out.items[i], want[i]);
        moat_execd_lines_free(&ls);
    }
}

static void test_lines_command(void **state)
{
    (void)state;
    /* the reference's example: printf 'a\n\nb\n' gives "a", "\n", "b" */
    const char *const w1[] = {"a", "\n", "b"};
    check_lines(MOAT_EXECD_LINES_COMMAND, "a\n\nb\n", 5, w1, 3);
    /* \r\n is one terminator; a lone \r ends a line too */
    const char *const w2[] = {"x", "y", "z"};
    check_lines(MOAT_EXECD_LINES_COMMAND, "x\r\ny\rz\n", 7, w2, 3);
    /* a final line without newline is delivered at the end */
    const char *const w3[] = {"one", "tail"};
    check_lines(MOAT_EXECD_LINES_COMMAND, "one\ntail", 8, w3, 2);
    /* \r\r gives an empty line; \r\n\n gives one more empty line */
    const char *const w4[] = {"a", "\n", "b", "\n"};
    check_lines(MOAT_EXECD_LINES_COMMAND, "a\r\rb\r\n\n", 7, w4, 4);
    /* nothing at all */
    check_lines(MOAT_EXECD_LINES_COMMAND, "", 0, NULL, 0);
    /* a leading empty line */
    const char *const w5[] = {"\n", "q"};
    check_lines(MOAT_EXECD_LINES_COMMAND, "\nq", 2, w5, 2);
}

static void test_lines_session(void **state)
{
    (void)state;
    /* blank lines are suppressed, \r before \n dropped, \r alone kept inside the line */
    const char *const w1[] = {"a", "b", "c\rd", "end"};
    check_lines(MOAT_EXECD_LINES_SESSION, "a\n\nb\r\nc\rd\nend", 14, w1, 4);
}

static void test_lines_long(void **state)
{
    (void)state;
    /* lines longer than the maximum come out in pieces, cut on a UTF-8 boundary */
    moat_execd_lines ls;
    moat_execd_lines_init(&ls, MOAT_EXECD_LINES_COMMAND, 8);
    lines_out out = {.n = 0};
    const char in[] = "abcdefg\xc3\xa9xyz\n";
    for (size_t i = 0; i < sizeof(in) - 1; i++)
        assert_int_equal(moat_execd_lines_feed(&ls, in + i, 1, collect_line, &out), MOAT_OK);
    assert_int_equal(moat_execd_lines_finish(&ls, collect_line, &out), MOAT_OK);
    assert_int_equal(out.n, 2);
    assert_string_equal(out.items[0], "abcdefg");
    assert_string_equal(out.items[1], "\xc3\xa9xyz");
    moat_execd_lines_free(&ls);
}

/* ---- path expansion ---- */

static const char *fake_env(void *ud, const char *name)
{
    (void)ud;
    if (strcmp(name, "HOME") == 0)
        return "/home/u";
    if (strcmp(name, "WS") == 0)
        return "/workspace";
    if (strcmp(name, "EMPTY") == 0)
        return "";
    return NULL;
}

static void expect_expand(const char *in, const char *want)
{
    char *out = NULL, err[128];
    assert_int_equal(moat_execd_expand_path(in, "/root", fake_env, NULL, &out, err, sizeof(err)),
                     MOAT_OK);
    assert_string_equal(out, want);
    free(out);
}

static void test_expand(void **state)
{
    (void)state;
    expect_expand("/plain/path", "/plain/path");
    expect_expand("$WS/a", "/workspace/a");
    expect_expand("${WS}b", "/workspaceb");
    expect_expand("~", "/root");
    expect_expand("~/x", "/root/x");
    expect_expand("/a~b", "/a~b");
    expect_expand("~user", "~user");
    expect_expand("a$", "a$");
    expect_expand("$1x", "$1x");
    expect_expand("x${EMPTY}y", "xy");
    char *out = (char *)1, err[128];
    assert_int_equal(
        moat_execd_expand_path("$NOPE/x", "/root", fake_env, NULL, &out, err, sizeof(err)),
        MOAT_E_NOT_FOUND);
    assert_null(out);
    assert_non_null(strstr(err, "NOPE"));
    assert_int_equal(
        moat_execd_expand_path("${NOPE}", "/root", fake_env, NULL, &out, err, sizeof(err)),
        MOAT_E_NOT_FOUND);
    assert_int_equal(
        moat_execd_expand_path("${WS", "/root", fake_env, NULL, &out, err, sizeof(err)),
        MOAT_E_INVAL);
    assert_int_equal(moat_execd_expand_path("${}", "/root", fake_env, NULL, &out, err, sizeof(err)),
                     MOAT_E_INVAL);
    assert_int_equal(moat_execd_expand_path("~/x", NULL, fake_env, NULL, &out, err, sizeof(err)),
                     MOAT_E_NOT_FOUND);
    char *longp = malloc(5000);
    memset(longp, 'a', 4999);
    longp[4999] = '\0';
    assert_int_equal(moat_execd_expand_path(longp, "/root", fake_env, NULL, &out, err, sizeof(err)),
                     MOAT_E_TOO_BIG);
    free(longp);
}

static void test_range(void **state)
{
    (void)state;
    uint64_t s, e;
    assert_int_equal(moat_execd_parse_range("bytes=0-9", 100, &s, &e), MOAT_OK);
    assert_true(s == 0 && e == 9);
    assert_int_equal(moat_execd_parse_range("bytes=90-", 100, &s, &e), MOAT_OK);
    assert_true(s == 90 && e == 99);
    assert_int_equal(moat_execd_parse_range("bytes=-10", 100, &s, &e), MOAT_OK);
    assert_true(s == 90 && e == 99);
    assert_int_equal(moat_execd_parse_range("bytes=95-200", 100, &s, &e), MOAT_OK);
    assert_true(s == 95 && e == 99);
    assert_int_equal(moat_execd_parse_range("bytes=0-1,5-6", 100, &s, &e), MOAT_OK);
    assert_true(s == 0 && e == 1);
    assert_int_equal(moat_execd_parse_range("bytes=100-", 100, &s, &e), MOAT_E_INVAL);
    assert_int_equal(moat_execd_parse_range("bytes=5-2", 100, &s, &e), MOAT_E_INVAL);
    assert_int_equal(moat_execd_parse_range("items=0-1", 100, &s, &e), MOAT_E_INVAL);
    assert_int_equal(moat_execd_parse_range("bytes=abc", 100, &s, &e), MOAT_E_INVAL);
    assert_int_equal(moat_execd_parse_range("bytes=-0", 100, &s, &e), MOAT_E_INVAL);
    assert_int_equal(moat_execd_parse_range("bytes=99999999999999999999-", 100, &s, &e),
                     MOAT_E_INVAL);
}

static void test_line_window_params(void **state)
{
    (void)state;
    uint64_t first = 0, count = 0;
    char why[128];
    assert_int_equal(moat_execd_parse_line_window(NULL, NULL, &first, &count, why, sizeof(why)),
                     MOAT_E_NOT_FOUND);
    assert_int_equal(moat_execd_parse_line_window("", "", &first, &count, why, sizeof(why)),
                     MOAT_E_NOT_FOUND);
    assert_int_equal(moat_execd_parse_line_window("3", "20", &first, &count, why, sizeof(why)),
                     MOAT_OK);
    assert_true(first == 3 && count == 20);
    assert_int_equal(moat_execd_parse_line_window("2", NULL, &first, &count, why, sizeof(why)),
                     MOAT_E_INVAL);
    assert_non_null(strstr(why, "together"));
    assert_int_equal(moat_execd_parse_line_window("", "5", &first, &count, why, sizeof(why)),
                     MOAT_E_INVAL);
    assert_non_null(strstr(why, "together"));
    static const char *const bad[] = {"0", "-1", "+1", "1x", " 1", "1.0", "1000000000000000000"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(
            moat_execd_parse_line_window(bad[i], "1", &first, &count, why, sizeof(why)),
            MOAT_E_INVAL);
        assert_non_null(strstr(why, "offset"));
        assert_int_equal(
            moat_execd_parse_line_window("1", bad[i], &first, &count, why, sizeof(why)),
            MOAT_E_INVAL);
        assert_non_null(strstr(why, "limit"));
    }
    assert_int_equal(moat_execd_parse_line_window("999999999999999999", "999999999999999999",
                                                  &first, &count, why, sizeof(why)),
                     MOAT_OK);
}

/* The window's bytes of text, fed in pieces of `step` bytes (0: all at once). */
static size_t window_of(const char *text, uint64_t first, uint64_t count, size_t step, char *out)
{
    moat_execd_line_window w;
    moat_execd_line_window_init(&w, first, count);
    size_t len = strlen(text), at = 0, n = 0;
    while (at < len) {
        size_t piece = step == 0 || len - at < step ? len - at : step, off, keep;
        bool done = moat_execd_line_window_feed(&w, (const uint8_t *)text + at, piece, &off, &keep);
        assert_true(off + keep <= piece);
        memcpy(out + n, text + at + off, keep);
        n += keep;
        at += piece;
        if (done)
            break;
    }
    out[n] = '\0';
    return n;
}

/* The same selection made the obvious way: line by line. */
static void window_naive(const char *text, uint64_t first, uint64_t count, char *out)
{
    size_t n = 0;
    uint64_t line = 1;
    for (const char *p = text; *p; p++) {
        if (line >= first && line - first < count)
            out[n++] = *p;
        if (*p == '\n')
            line++;
    }
    out[n] = '\0';
}

static void test_line_window(void **state)
{
    (void)state;
    char got[256], want[256];
    window_of("a\nbb\nccc\nd", 2, 2, 0, got);
    assert_string_equal(got, "bb\nccc\n");
    window_of("a\nbb\nccc\nd", 4, 1, 0, got);
    assert_string_equal(got, "d");
    window_of("a\nbb\n", 3, 5, 0, got);
    assert_string_equal(got, "");
    window_of("\n\n\nx\n", 2, 2, 0, got);
    assert_string_equal(got, "\n\n");
    window_of("a\r\nb\r\n", 2, 1, 0, got);
    assert_string_equal(got, "b\r\n");
    window_of("one\ntwo\n", 1, UINT64_MAX, 0, got);
    assert_string_equal(got, "one\ntwo\n");
    window_of("one\ntwo\n", UINT64_MAX, UINT64_MAX, 0, got);
    assert_string_equal(got, "");

    /* Every split size against the naive selection, on texts with blank lines, a missing
     * last newline and NUL-free binary bytes. */
    static const char *const texts[] = {"",
                                        "x",
                                        "\n",
                                        "a\nb",
                                        "a\nb\n",
                                        "\n\nmid\n\n",
                                        "l1\nl2\nl3\nl4\nl5\nl6\nl7",
                                        "\xff\xfe\n\x01\x02\n\x80"};
    for (size_t t = 0; t < sizeof(texts) / sizeof(texts[0]); t++)
        for (uint64_t first = 1; first <= 9; first++)
            for (uint64_t count = 1; count <= 9; count++) {
                window_naive(texts[t], first, count, want);
                for (size_t step = 0; step <= 4; step++) {
                    window_of(texts[t], first, count, step, got);
                    assert_string_equal(got, want);
                }
            }
}

static void test_mode(void **state)
{
    (void)state;
    uint32_t m;
    assert_int_equal(moat_execd_mode_from_decimal(755, &m), MOAT_OK);
    assert_int_equal(m, 0755);
    assert_int_equal(moat_execd_mode_from_decimal(644, &m), MOAT_OK);
    assert_int_equal(m, 0644);
    assert_int_equal(moat_execd_mode_from_decimal(0, &m), MOAT_OK);
    assert_int_equal(m, 0);
    assert_int_equal(moat_execd_mode_from_decimal(789, &m), MOAT_E_INVAL);
    assert_int_equal(moat_execd_mode_from_decimal(-1, &m), MOAT_E_INVAL);
    assert_int_equal(moat_execd_mode_from_decimal(77777, &m), MOAT_E_INVAL);
    assert_int_equal(moat_execd_mode_to_decimal(0755), 755);
    assert_int_equal(moat_execd_mode_to_decimal(0600), 600);
}

typedef struct env_seen {
    char names[16][32];
    char values[16][64];
    size_t n;
    char pwd[64];
} env_seen;

static void seen_env(void *ud, const char *name, size_t nlen, const char *value, size_t vlen)
{
    env_seen *e = ud;
    assert_true(e->n < 16 && nlen < 32 && vlen < 64);
    memcpy(e->names[e->n], name, nlen);
    e->names[e->n][nlen] = '\0';
    memcpy(e->values[e->n], value, vlen);
    e->values[e->n][vlen] = '\0';
    e->n++;
}

static void seen_pwd(void *ud, const char *name, size_t nlen, const char *value, size_t vlen)
{
    (void)name;
    (void)nlen;
    env_seen *e = ud;
    memcpy(e->pwd, value, vlen);
    e->pwd[vlen] = '\0';
}

static void test_env_dump(void **state)
{
    (void)state;
    const char dump[] = "\001PWD=/tmp/x\0A=1\0MULTI=line1\nline2\0bad-name=3\0noequals\0=x\0B=";
    env_seen e = {.n = 0};
    moat_execd_parse_env_dump(dump, sizeof(dump) - 1, seen_env, seen_pwd, &e);
    assert_string_equal(e.pwd, "/tmp/x");
    assert_int_equal(e.n, 3);
    assert_string_equal(e.names[0], "A");
    assert_string_equal(e.values[0], "1");
    assert_string_equal(e.names[1], "MULTI");
    assert_string_equal(e.values[1], "line1\nline2");
    assert_string_equal(e.names[2], "B");
    assert_string_equal(e.values[2], "");
}

/* ---- upload assembler ---- */

static char tmpdir[] = "/tmp/moat-execd-unit-XXXXXX";

static size_t count_tmp_files(void)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "ls -A %s | wc -l", tmpdir);
    FILE *p = popen(cmd, "r");
    size_t n = 0;
    assert_int_equal(fscanf(p, "%zu", &n), 1);
    pclose(p);
    return n;
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    char *buf = calloc(1, 65536);
    size_t n = fread(buf, 1, 65535, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

static void test_upload_pairs(void **state)
{
    (void)state;
    moat_execd_upload *u = moat_execd_upload_new(tmpdir, 1024, 8);
    assert_non_null(u);
    const char *meta = "{\"path\":\"/w/a.txt\",\"mode\":640,\"owner\":null}";
    /* metadata split in one-byte pieces with increasing offsets */
    for (size_t i = 0; i < strlen(meta); i++)
        assert_int_equal(moat_execd_upload_part(u, "metadata", "metadata", i, meta + i, 1), 0);
    /* MHD announces each part with an empty piece at offset 0 before its data */
    assert_int_equal(moat_execd_upload_part(u, "file", "a.txt", 0, "", 0), 0);
    assert_int_equal(moat_execd_upload_part(u, "file", "a.txt", 0, "hel", 3), 0);
    assert_int_equal(moat_execd_upload_part(u, "file", "a.txt", 3, "lo", 2), 0);
    /* a second pair; the same part name again at offset 0 starts a new part */
    assert_int_equal(moat_execd_upload_part(u, "metadata", "metadata", 0, "{\"path\":\"b\"}", 12),
                     0);
    assert_int_equal(moat_execd_upload_part(u, "file", "b", 0, "", 0), 0);
    /* unknown parts are ignored */
    assert_int_equal(moat_execd_upload_part(u, "other", NULL, 0, "zzz", 3), 0);
    const char *msg;
    assert_int_equal(moat_execd_upload_finish(u, &msg), MOAT_EXECD_UPLOAD_OK);
    assert_int_equal(moat_execd_upload_count(u), 2);
    moat_execd_upload_pair *p0 = moat_execd_upload_get(u, 0);
    assert_string_equal(p0->path, "/w/a.txt");
    assert_int_equal(p0->mode, 0640);
    assert_null(p0->owner);
    assert_int_equal(p0->size, 5);
    char *body = slurp(p0->tmp_path);
    assert_string_equal(body, "hello");
    free(body);
    moat_execd_upload_pair *p1 = moat_execd_upload_get(u, 1);
    assert_string_equal(p1->path, "b");
    assert_int_equal(p1->size, 0);
    assert_null(moat_execd_upload_get(u, 2));
    assert_int_equal(count_tmp_files(), 2);
    moat_execd_upload_free(u);
    assert_int_equal(count_tmp_files(), 0);
}

static void test_upload_hostile(void **state)
{
    (void)state;
    const char *msg;
    /* metadata without a file part */
    moat_execd_upload *u = moat_execd_upload_new(tmpdir, 1024, 8);
    moat_execd_upload_part(u, "metadata", "m", 0, "{\"path\":\"/x\"}", 13);
    moat_execd_upload_part(u, "metadata", "m", 0, "{\"path\":\"/y\"}", 13);
    moat_execd_upload_part(u, "file", "f", 0, "1", 1);
    assert_int_equal(moat_execd_upload_finish(u, &msg), MOAT_EXECD_UPLOAD_INVALID_FILE);
    assert_non_null(strstr(msg, "2 metadata"));
    assert_int_equal(moat_execd_upload_count(u), 0);
    moat_execd_upload_free(u);
    /* no parts at all */
    u = moat_execd_upload_new(tmpdir, 1024, 8);
    assert_int_equal(moat_execd_upload_finish(u, &msg), MOAT_EXECD_UPLOAD_INVALID_FILE_CONTENT);
    moat_execd_upload_free(u);
    /* metadata larger than its bound */
    u = moat_execd_upload_new(tmpdir, 16, 8);
    assert_int_equal(
        moat_execd_upload_part(u, "metadata", "m", 0, "{\"path\":\"/aaaaaaaaaaaa\"}", 24),
        MOAT_EXECD_UPLOAD_INVALID_FILE_METADATA);
    /* once failed, everything after reports the same error */
    assert_int_equal(moat_execd_upload_part(u, "file", "f", 0, "1", 1),
                     MOAT_EXECD_UPLOAD_INVALID_FILE_METADATA);
    assert_int_equal(moat_execd_upload_finish(u, &msg), MOAT_EXECD_UPLOAD_INVALID_FILE_METADATA);
    moat_execd_upload_free(u);
    /* pieces that lie about their offset */
    u = moat_execd_upload_new(tmpdir, 1024, 8);
    moat_execd_upload_part(u, "file", "f", 0, "abc", 3);
    assert_int_equal(moat_execd_upload_part(u, "file", "f", 10, "def", 3),
                     MOAT_EXECD_UPLOAD_INVALID_FILE);
    moat_execd_upload_free(u);
    /* metadata that is not JSON, not an object, lacks path or has a bad mode */
    const char *bad[] = {"not json",
                         "[1]",
                         "{\"mode\":755}",
                         "{\"path\":\"/a\",\"mode\":999}",
                         "{\"path\":5}",
                         "{\"path\":\"/a\",\"owner\":7}",
                         "{\"path\":\"/a\\u0000b\"}",
                         "{\"path\":\"/a\",\"path\":\"/b\"}",
                         "{\"path\":\"/a\",\"mode\":644.5}",
                         "{\"path\":\"/a\tb\"}",
                         "{\"path\":\"/a\xff\x62\"}"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        u = moat_execd_upload_new(tmpdir, 1024, 8);
        moat_execd_upload_part(u, "metadata", "m", 0, bad[i], strlen(bad[i]));
        moat_execd_upload_part(u, "file", "f", 0, "x", 1);
        assert_int_equal(moat_execd_upload_finish(u, &msg),
                         MOAT_EXECD_UPLOAD_INVALID_FILE_METADATA);
        moat_execd_upload_free(u);
    }
    /* too many parts */
    u = moat_execd_upload_new(tmpdir, 1024, 2);
    moat_execd_upload_part(u, "file", "f", 0, "x", 1);
    moat_execd_upload_part(u, "file", "f", 0, "x", 1);
    assert_int_equal(moat_execd_upload_part(u, "file", "f", 0, "x", 1),
                     MOAT_EXECD_UPLOAD_INVALID_FILE);
    moat_execd_upload_free(u);
    assert_int_equal(count_tmp_files(), 0);
}

/* Request JSON stays as strict as Go's encoding/json after the move to cJSON: what cJSON
 * alone would take is refused; duplicate keys keep the last value; reals are not
 * integers. */
static void test_request_json(void **state)
{
    (void)state;
    const char *why = NULL;
    static const char *const refused[] = {
        "{\"command\":\"rm -rf /tmp/x\\u0000/y\"}", /* cJSON would cut the string */
        "{\"command\":\"a\nb\"}",                   /* raw control character in a string */
        "{\"command\":\"a\x01\"}",
        "{\x01\"command\":\"a\"}", /* cJSON takes any byte up to 0x20 as whitespace */
        "{\"command\":\"\xc3\"}",  /* not UTF-8 */
        "{\"command\":\"\xed\xa0\x80\"}",
        "{\"command\":\"a\"} x",
        "{\"command\":",
        "",
        "[-]",
        "[1e]",
        "[1e+]",
    };
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
        why = NULL;
        assert_null(moat__execd_json_parse(refused[i], strlen(refused[i]), false, &why));
        assert_non_null(why);
    }
    const char *nul = "{\"command\":\"x\\u0000\"}";
    assert_null(moat__execd_json_parse(nul, strlen(nul), false, &why));
    assert_string_equal(why, "\\u0000 is not allowed in strings");
    /* an escaped backslash before u0000 is text, and \n, \t, UTF-8 are fine */
    const char *ok =
        " {\"a\":\"\\\\u0000\",\"b\":\"\\n\\t\xc3\xa9\",\r\n\"c\":[1,2.5,-3e2,{\"d\":4}]}\t";
    cJSON *t = moat__execd_json_parse(ok, strlen(ok), true, &why);
    assert_non_null(t);
    assert_string_equal(moat_json_str(t, "a", NULL), "\\u0000");
    assert_string_equal(moat_json_str(t, "b", NULL), "\n\t\xc3\xa9");
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(t, "c");
    int64_t v = 0;
    assert_true(moat_json_int_value(cJSON_GetArrayItem(c, 0), &v));
    assert_int_equal(v, 1);
    assert_false(moat_json_int_value(cJSON_GetArrayItem(c, 1), &v)); /* 2.5 */
    assert_true(moat_json_int_value(cJSON_GetArrayItem(c, 2), &v));  /* -3e2 */
    assert_int_equal(v, -300);
    assert_true(
        moat_json_int_value(cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(c, 3), "d"), &v));
    assert_int_equal(v, 4);
    cJSON_Delete(t);
    const char *good = "[0,-0,0.5,-1.5e-3,1E+5,10e2,\"01\",9007199254740993]";
    t = moat__execd_json_parse(good, strlen(good), false, &why);
    assert_non_null(t);
    assert_int_equal(cJSON_GetArraySize(t), 8);
    cJSON_Delete(t);
    /* strings, fractions and numbers past int64 are not integers; integral reals are */
    const char *nums = "[\"30000\",30000.5,1e300,9223372036854775807000,30000.0,3e4,-0,30000]";
    t = moat__execd_json_parse(nums, strlen(nums), false, &why);
    assert_non_null(t);
    for (int i = 0; i < 4; i++)
        assert_false(moat_json_int_value(cJSON_GetArrayItem(t, i), &v));
    for (int i = 4; i < 8; i++) {
        assert_true(moat_json_int_value(cJSON_GetArrayItem(t, i), &v));
        assert_int_equal(v, i == 6 ? 0 : 30000);
    }
    cJSON_Delete(t);
    /* duplicate keys: the last one wins (as in Go), at any depth; or refused */
    const char *dup = "{\"command\":\"echo first\",\"x\":{\"k\":1,\"k\":2,\"k\":3},"
                      "\"command\":\"echo last\",\"n\":5.5,\"m\":7}";
    t = moat__execd_json_parse(dup, strlen(dup), false, &why);
    assert_non_null(t);
    assert_string_equal(moat_json_str(t, "command", NULL), "echo last");
    assert_int_equal(cJSON_GetArraySize(t), 4);
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(t, "x");
    assert_int_equal(cJSON_GetArraySize(x), 1);
    assert_true(moat_json_int(x, "k", &v));
    assert_int_equal(v, 3);
    assert_false(moat_json_int_value(cJSON_GetObjectItemCaseSensitive(t, "n"), &v)); /* 5.5 */
    assert_true(moat_json_int_value(cJSON_GetObjectItemCaseSensitive(t, "m"), &v));
    assert_int_equal(v, 7);
    cJSON_Delete(t);
    assert_null(moat__execd_json_parse(dup, strlen(dup), true, &why));
    assert_string_equal(why, "duplicate object key");
}

/* Strings written by execd are valid UTF-8 whatever the bytes were. */
static void test_json_out(void **state)
{
    (void)state;
    char *clean = moat__execd_utf8_clean("a\xff\xc3\xa9\xe2\x82");
    assert_string_equal(clean, "a\xef\xbf\xbd\xc3\xa9\xef\xbf\xbd\xef\xbf\xbd");
    free(clean);
    cJSON *o = cJSON_CreateObject();
    assert_non_null(o);
    assert_true(moat__execd_json_set(o, "p", moat__execd_json_str("/tmp/\xfe<x>")));
    assert_true(moat__execd_json_set(o, "p", moat__execd_json_str("/tmp/y")));
    assert_false(moat__execd_json_set(o, "q", NULL));
    char *text = cJSON_PrintUnformatted(o);
    assert_string_equal(text, "{\"p\":\"/tmp/y\"}");
    cJSON_free(text);
    cJSON_Delete(o);
    cJSON *s = moat__execd_json_str("/tmp/\xfe<x>");
    text = cJSON_PrintUnformatted(s);
    assert_string_equal(text, "\"/tmp/\xef\xbf\xbd<x>\"");
    cJSON_free(text);
    cJSON_Delete(s);
}

int main(void)
{
    assert_non_null(mkdtemp(tmpdir));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sse_events),
        cmocka_unit_test(test_sse_escaping),
        cmocka_unit_test(test_sse_binary),
        cmocka_unit_test(test_lines_command),
        cmocka_unit_test(test_lines_session),
        cmocka_unit_test(test_lines_long),
        cmocka_unit_test(test_expand),
        cmocka_unit_test(test_range),
        cmocka_unit_test(test_line_window_params),
        cmocka_unit_test(test_line_window),
        cmocka_unit_test(test_mode),
        cmocka_unit_test(test_env_dump),
        cmocka_unit_test(test_upload_pairs),
        cmocka_unit_test(test_upload_hostile),
        cmocka_unit_test(test_request_json),
        cmocka_unit_test(test_json_out),
    };
    int rc = moat_run_group_tests("test_execd_unit", tests, NULL, NULL);
    rmdir(tmpdir);
    return rc;
}
