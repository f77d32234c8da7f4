#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "moat_test.h"

#include "common/json.h"

#define CANON "123e4567-e89b-12d3-a456-426614174000"

static void assert_canonical(const char *in, const char *want)
{
    char out[MOAT_UUID_STR_LEN];
    assert_int_equal(moat_uuid_canonicalize(in, out), MOAT_OK);
    assert_string_equal(out, want);
}

static void assert_rejected(const char *in)
{
    char out[MOAT_UUID_STR_LEN];
    assert_int_equal(moat_uuid_canonicalize(in, out), MOAT_E_INVAL);
}

static void test_uuid_spellings(void **state)
{
    (void)state;
    assert_canonical(CANON, CANON);
    assert_canonical("123E4567E89B12D3A456426614174000", CANON);
    assert_canonical("{123e4567-e89b-12d3-a456-426614174000}", CANON);
    assert_canonical("urn:uuid:123e4567-e89b-12d3-a456-426614174000", CANON);
    assert_canonical("123E4567-E89B-12D3-A456-426614174000", CANON);
    assert_canonical("{{123e4567e89b12d3a456426614174000}}", CANON);
    assert_canonical("1-23e4567e89b12d3a456426614174000-", CANON);
    /* int(x, 16) leniency: 0x prefix, underscores between digits, spaces. */
    assert_canonical("0x3e4567e89b12d3a456426614174000", "003e4567-e89b-12d3-a456-426614174000");
    assert_canonical("123e_4567e89b12d3a45642661417400", "0123e456-7e89-b12d-3a45-642661417400");
    assert_canonical(" 23e4567e89b12d3a456426614174000", "023e4567-e89b-12d3-a456-426614174000");
    assert_canonical("+23e4567e89b12d3a456426614174000", "023e4567-e89b-12d3-a456-426614174000");
    assert_canonical("0x_3e4567e89b12d3a45642661417400", "0003e456-7e89-b12d-3a45-642661417400");
}

static void test_uuid_rejects(void **state)
{
    (void)state;
    assert_rejected("");
    assert_rejected("not-a-uuid");
    assert_rejected("123e4567-e89b-12d3-a456-42661417400");
    assert_rejected("123e4567-e89b-12d3-a456-4266141740000");
    assert_rejected("g23e4567-e89b-12d3-a456-426614174000");
    assert_rejected("123e__4567e89b12d3a4564266141740");
    assert_rejected("_123e4567e89b12d3a45642661417400");
    assert_rejected("123e4567e89b12d3a45642661417400_");
    assert_rejected("urn:uuid:");
    assert_rejected("123e4567-e89b-12d3-a456-42661417400\xc3\xa9");
    assert_rejected(NULL);
    char long_input[2048];
    memset(long_input, 'a', sizeof(long_input) - 1);
    long_input[sizeof(long_input) - 1] = '\0';
    assert_rejected(long_input);
}

static void test_uuid_generate(void **state)
{
    (void)state;
    char a[MOAT_UUID_STR_LEN], b[MOAT_UUID_STR_LEN], c[MOAT_UUID_STR_LEN];
    moat_uuid_generate(a);
    moat_uuid_generate(b);
    assert_string_not_equal(a, b);
    assert_int_equal(moat_uuid_canonicalize(a, c), MOAT_OK);
    assert_string_equal(a, c);
}

static void test_time_roundtrip(void **state)
{
    (void)state;
    char out[MOAT_TIME_ISO_MAX];
    int64_t ms = 0;
    /* 2026-04-02T12:05:00Z */
    assert_int_equal(moat_time_parse_iso8601("2026-04-02T12:05:00+00:00", &ms), MOAT_OK);
    assert_int_equal(ms, 1775131500000LL);
    moat_time_format_iso8601(ms, out);
    assert_string_equal(out, "2026-04-02T12:05:00+00:00");
    moat_time_format_iso8601(ms + 123, out);
    assert_string_equal(out, "2026-04-02T12:05:00.123000+00:00");
    assert_int_equal(moat_time_parse_iso8601(out, &ms), MOAT_OK);
    assert_int_equal(ms, 1775131500123LL);
    assert_int_equal(moat_time_parse_iso8601("2026-04-02T12:00:00Z", &ms), MOAT_OK);
    assert_int_equal(ms, 1775131200000LL);
    assert_int_equal(moat_time_parse_iso8601("2026-04-02T14:00:00.987654321+02:00", &ms), MOAT_OK);
    assert_int_equal(ms, 1775131200987LL);
    assert_int_equal(moat_time_parse_iso8601("2026-04-02T12:00:00", &ms), MOAT_OK);
    assert_int_equal(ms, 1775131200000LL);
}

static void test_time_rejects(void **state)
{
    (void)state;
    int64_t ms;
    const char *bad[] = {"",
                         "2026",
                         "2026-13-01T00:00:00Z",
                         "2026-02-30T00:00:00Z",
                         "2026-04-02T25:00:00Z",
                         "2026-04-02T12:00:00+0",
                         "2026-04-02T12:00:00Zx",
                         "2026-04-02T12:00:00.Z",
                         "garbage",
                         "2026-04-02X12:00:00Z"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(moat_time_parse_iso8601(bad[i], &ms), MOAT_E_INVAL);
    assert_int_equal(moat_time_parse_iso8601(NULL, &ms), MOAT_E_INVAL);
}

static void test_buf_limits(void **state)
{
    (void)state;
    moat_buf buf;
    moat_buf_init(&buf, 1000);
    uint8_t chunk[300] = {0};
    assert_int_equal(moat_buf_append(&buf, chunk, sizeof(chunk)), MOAT_OK);
    assert_int_equal(moat_buf_append(&buf, chunk, sizeof(chunk)), MOAT_OK);
    assert_int_equal(moat_buf_append(&buf, chunk, sizeof(chunk)), MOAT_OK);
    assert_int_equal(moat_buf_append(&buf, chunk, sizeof(chunk)), MOAT_E_TOO_BIG);
    assert_int_equal(buf.len, 900);
    assert_true(buf.cap <= 1000);
    moat_buf_consume(&buf, 850);
    assert_int_equal(buf.len, 50);
    assert_int_equal(moat_buf_reserve(&buf, SIZE_MAX), MOAT_E_TOO_BIG);
    moat_buf_free(&buf);
}

static void test_status(void **state)
{
    (void)state;
    moat_status st;
    moat_status_set(&st, MOAT_CODE_UNAVAILABLE, "sandbox_start_failed", "docker said %d", 500);
    moat_status_add_detail(&st, "chat_id", CANON);
    assert_int_equal(st.code, MOAT_CODE_UNAVAILABLE);
    assert_string_equal(st.message, "docker said 500");
    assert_string_equal(moat_status_detail_get(&st, "chat_id"), CANON);
    assert_null(moat_status_detail_get(&st, "missing"));
    for (int i = 0; i < 10; i++)
        moat_status_add_detail(&st, "k", "v");
    assert_int_equal(st.detail_count, MOAT_STATUS_DETAILS_MAX);
    moat_code code;
    for (int i = 0; i < MOAT_CODE_COUNT; i++) {
        assert_int_equal(moat_code_from_name(moat_code_name((moat_code)i), &code), MOAT_OK);
        assert_int_equal(code, i);
    }
    assert_int_equal(moat_code_from_name("NOPE", &code), MOAT_E_INVAL);
    assert_string_equal(moat_code_name((moat_code)99), "UNKNOWN");
    assert_string_equal(moat_strerror((moat_err)999), "unknown error");
    assert_int_equal(moat_code_from_http(200), MOAT_CODE_OK);
    assert_int_equal(moat_code_from_http(404), MOAT_CODE_NOT_FOUND);
    assert_int_equal(moat_code_from_http(409), MOAT_CODE_ALREADY_EXISTS);
    assert_int_equal(moat_code_from_http(503), MOAT_CODE_UNAVAILABLE);
    assert_int_equal(moat_code_from_http(500), MOAT_CODE_INTERNAL);
    assert_int_equal(moat_code_from_http(302), MOAT_CODE_UNKNOWN);
}

static cJSON *parse_lit(const char *text, moat_json_nul nul)
{
    return moat_json_parse(text, strlen(text), nul);
}

static void test_json_parse(void **state)
{
    (void)state;
    cJSON *j = parse_lit(" {\"a\":\"x\",\"n\":42} \r\n", MOAT_JSON_NUL_REJECT);
    assert_non_null(j);
    size_t len = 0;
    assert_string_equal(moat_json_str(j, "a", &len), "x");
    assert_int_equal(len, 1);
    assert_null(moat_json_str(j, "n", NULL));
    assert_null(moat_json_str(j, "A", NULL));
    assert_null(moat_json_str(NULL, "a", NULL));
    cJSON_Delete(j);
    /* the length bounds the parse: no terminator is read */
    j = moat_json_parse("[1]garbage", 3, MOAT_JSON_NUL_REJECT);
    assert_non_null(j);
    cJSON_Delete(j);
    assert_null(parse_lit("{\"a\":1} x", MOAT_JSON_NUL_REJECT));
    assert_null(parse_lit("{\"a\":", MOAT_JSON_NUL_REJECT));
    assert_null(parse_lit("", MOAT_JSON_NUL_REJECT));
    assert_null(moat_json_parse(NULL, 0, MOAT_JSON_NUL_REJECT));
    static const char raw_nul[] = "{\"a\":\"x\0y\"}";
    assert_null(moat_json_parse(raw_nul, sizeof(raw_nul) - 1, MOAT_JSON_NUL_REPLACE));
}

static void test_json_nul_escapes(void **state)
{
    (void)state;
    assert_null(parse_lit("{\"a\":\"x\\u0000y\"}", MOAT_JSON_NUL_REJECT));
    cJSON *j = parse_lit("{\"a\":\"x\\u0000y\\u0000\"}", MOAT_JSON_NUL_REPLACE);
    assert_non_null(j);
    assert_string_equal(moat_json_str(j, "a", NULL), "x\xef\xbf\xbdy\xef\xbf\xbd");
    cJSON_Delete(j);
    /* an escaped backslash followed by the text u0000 is not an escape */
    j = parse_lit("{\"a\":\"\\\\u0000\"}", MOAT_JSON_NUL_REJECT);
    assert_non_null(j);
    assert_string_equal(moat_json_str(j, "a", NULL), "\\u0000");
    cJSON_Delete(j);
    /* a backslash as the last byte, and a truncated escape, are malformed */
    assert_null(parse_lit("\"\\", MOAT_JSON_NUL_REPLACE));
    assert_null(parse_lit("\"\\u000", MOAT_JSON_NUL_REPLACE));
}

static void test_json_int(void **state)
{
    (void)state;
    cJSON *j = parse_lit("{\"i\":-7,\"big\":1718000000105,\"f\":1.5,\"huge\":1e300,"
                         "\"edge\":9223372036854775808,\"s\":\"1\",\"t\":true}",
                         MOAT_JSON_NUL_REJECT);
    assert_non_null(j);
    int64_t v = 0;
    assert_true(moat_json_int(j, "i", &v));
    assert_int_equal(v, -7);
    assert_true(moat_json_int(j, "big", &v));
    assert_int_equal(v, 1718000000105);
    assert_false(moat_json_int(j, "f", &v));
    assert_false(moat_json_int(j, "huge", &v));
    assert_false(moat_json_int(j, "edge", &v));
    assert_false(moat_json_int(j, "s", &v));
    assert_false(moat_json_int(j, "t", &v));
    assert_false(moat_json_int(j, "missing", &v));
    assert_false(moat_json_int_value(NULL, &v));
    cJSON_Delete(j);
}

static void test_json_strict_text(void **state)
{
    (void)state;
    /* RFC 8259 text cJSON alone would take */
    assert_null(parse_lit("{\"a\":\"x\x01y\"}", MOAT_JSON_NUL_REPLACE));
    assert_null(parse_lit("{\"a\":\"x\ty\"}", MOAT_JSON_NUL_REPLACE));
    assert_null(parse_lit("{\"a\":\"x\xffy\"}", MOAT_JSON_NUL_REPLACE));
    assert_null(parse_lit("{\"a\":\"\xc0\xaf\"}", MOAT_JSON_NUL_REPLACE));     /* overlong */
    assert_null(parse_lit("{\"a\":\"\xed\xa0\x80\"}", MOAT_JSON_NUL_REPLACE)); /* surrogate */
    assert_null(parse_lit("{\"a\":\"\xe2\x82\"}", MOAT_JSON_NUL_REPLACE));     /* cut short */
    assert_null(parse_lit("{\"a\":\x01 1}", MOAT_JSON_NUL_REPLACE));
    /* whitespace between tokens, escaped quotes and multi-byte text are fine */
    cJSON *j = parse_lit("{\t\"a\" :\r\n\"\\\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\\\\\"}",
                         MOAT_JSON_NUL_REJECT);
    assert_non_null(j);
    assert_string_equal(moat_json_str(j, "a", NULL), "\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\\");
    cJSON_Delete(j);
}

static void test_utf8_seq(void **state)
{
    (void)state;
    uint32_t cp = 0;
    assert_int_equal(moat_utf8_seq((const unsigned char *)"A", 1, &cp), 1);
    assert_int_equal(cp, 'A');
    assert_int_equal(moat_utf8_seq((const unsigned char *)"\xc3\xa9", 2, &cp), 2);
    assert_int_equal(cp, 0xe9);
    assert_int_equal(moat_utf8_seq((const unsigned char *)"\xf4\x8f\xbf\xbf", 4, &cp), 4);
    assert_int_equal(cp, 0x10ffff);
    assert_int_equal(moat_utf8_seq((const unsigned char *)"\xf4\x90\x80\x80", 4, NULL), 0);
    assert_int_equal(moat_utf8_seq((const unsigned char *)"\xe0\x80\x80", 3, NULL), 0);
    assert_int_equal(moat_utf8_seq((const unsigned char *)"\xc3\xa9", 1, NULL), 0);
    assert_int_equal(moat_utf8_seq((const unsigned char *)"\x80", 1, NULL), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_uuid_spellings),   cmocka_unit_test(test_uuid_rejects),
        cmocka_unit_test(test_uuid_generate),    cmocka_unit_test(test_time_roundtrip),
        cmocka_unit_test(test_time_rejects),     cmocka_unit_test(test_buf_limits),
        cmocka_unit_test(test_status),           cmocka_unit_test(test_json_parse),
        cmocka_unit_test(test_json_nul_escapes), cmocka_unit_test(test_json_int),
        cmocka_unit_test(test_json_strict_text), cmocka_unit_test(test_utf8_seq),
    };
    return moat_run_group_tests("test_common", tests, NULL, NULL);
}
