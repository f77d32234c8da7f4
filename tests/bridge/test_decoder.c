/* The SSE decoder (parser + mapping), with no I/O: every seed stream, split
 * at every byte boundary and fed one byte at a time; skip rules, both
 * framings, binary frames, oversize lines, hostile bytes, exit rules. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

#include "moat_test.h"

#include "collect.h"
#include "seed_streams.h"

typedef struct run_result {
    moat_err feed_err;
    moat_err finish_err;
    moat_status st;
    moat_bridge_decoder_stats stats;
} run_result;

/* Feeds `data` cut at `cut` (the two parts) or, with cut == SIZE_MAX, one
 * byte at a time; then finishes. */
static run_result decode(const void *data, size_t len, const moat_bridge_decoder_opts *o,
                         size_t cut, collect *c)
{
    run_result rr = {0};
    moat_bridge_decoder *d = NULL;
    assert_int_equal(moat_bridge_decoder_new(o, &d), MOAT_OK);
    const uint8_t *p = data;
    if (cut == SIZE_MAX) {
        for (size_t i = 0; i < len && rr.feed_err == MOAT_OK; i++)
            rr.feed_err = moat_bridge_decoder_feed(d, p + i, 1, col_emit, c, &rr.st);
    } else {
        rr.feed_err = moat_bridge_decoder_feed(d, p, cut, col_emit, c, &rr.st);
        if (rr.feed_err == MOAT_OK)
            rr.feed_err = moat_bridge_decoder_feed(d, p + cut, len - cut, col_emit, c, &rr.st);
    }
    if (rr.feed_err == MOAT_OK)
        rr.finish_err = moat_bridge_decoder_finish(d, col_emit, c, &rr.st);
    else
        moat_bridge_decoder_abort(d, "failed", col_emit, c);
    moat_bridge_decoder_get_stats(d, &rr.stats);
    moat_bridge_decoder_free(d);
    return rr;
}

typedef void (*check_fn)(const collect *c, const run_result *rr);

/* Every split point plus one byte at a time must give the same result. */
static void every_split(const char *stream, size_t len, const moat_bridge_decoder_opts *o,
                        check_fn check)
{
    for (size_t cut = 0; cut <= len + 1; cut++) {
        collect c;
        col_init(&c);
        run_result rr = decode(stream, len, o, cut == len + 1 ? SIZE_MAX : cut, &c);
        check(&c, &rr);
        assert_false(c.seq_gap);
        assert_int_equal(c.ev[0].seq, 1);
        assert_int_equal(c.ev[c.n - 1].kind, MOAT_BRIDGE_EV_EXIT);
        col_free(&c);
    }
}

static void check_echo_hi(const collect *c, const run_result *rr)
{
    assert_int_equal(rr->feed_err, MOAT_OK);
    assert_int_equal(rr->finish_err, MOAT_OK);
    assert_int_equal(c->n, 5);
    assert_int_equal(c->ev[0].kind, MOAT_BRIDGE_EV_INIT);
    assert_string_equal(c->ev[0].text, "exec-1");
    assert_int_equal(c->ev[0].ts, 1);
    assert_int_equal(c->ev[1].kind, MOAT_BRIDGE_EV_OUTPUT);
    assert_int_equal(c->ev[1].stream, MOAT_BRIDGE_STDOUT);
    assert_string_equal(c->ev[1].text, "hi");
    assert_int_equal(c->ev[2].kind, MOAT_BRIDGE_EV_RESULT);
    assert_string_equal(c->ev[2].text, "ok");
    assert_int_equal(c->ev[3].kind, MOAT_BRIDGE_EV_COMPLETE);
    assert_int_equal(c->ev[3].exec_time, 5);
    assert_true(c->ev[4].known);
    assert_int_equal(c->ev[4].code, 0);
    assert_int_equal(c->ev[4].seq, 5);
    assert_int_equal(rr->stats.skipped_lines, 1); /* not-json */
}

static void check_sess1(const collect *c, const run_result *rr)
{
    assert_int_equal(rr->finish_err, MOAT_OK);
    assert_int_equal(c->n, 3);
    assert_string_equal(c->ev[0].text, "/var");
    assert_int_equal(c->ev[1].exec_time, 3);
    assert_true(c->ev[2].known);
    assert_int_equal(c->ev[2].code, 0);
    assert_int_equal(rr->stats.skipped_lines, 2); /* the event: lines */
}

static void check_exit7(const collect *c, const run_result *rr)
{
    assert_int_equal(rr->finish_err, MOAT_OK);
    assert_int_equal(c->n, 3);
    assert_true(strcmp(c->ev[0].text, "exec-2") == 0 || strcmp(c->ev[0].text, "sess-exec-2") == 0);
    assert_int_equal(c->ev[1].kind, MOAT_BRIDGE_EV_ERROR);
    assert_string_equal(c->ev[1].name, "CommandExecError");
    assert_string_equal(c->ev[1].text, "7");
    assert_int_equal(c->ev[1].tb_count, 1);
    assert_string_equal(c->ev[1].tb0, "exit status 7");
    assert_null(col_find(c, MOAT_BRIDGE_EV_COMPLETE));
    assert_true(c->ev[2].known);
    assert_int_equal(c->ev[2].code, 7);
    assert_false(c->ev[2].timed_out);
}

static void check_exit_null(const collect *c, const run_result *rr)
{
    assert_int_equal(rr->finish_err, MOAT_OK);
    assert_int_equal(c->n, 3);
    assert_string_equal(c->ev[0].text, "exec-null");
    assert_string_equal(c->ev[1].text, "fork/exec /usr/bin/bash: resource temporarily unavailable");
    assert_int_equal(c->ev[1].tb_count, 0);
    assert_null(col_find(c, MOAT_BRIDGE_EV_COMPLETE));
    assert_false(c->ev[2].known);
    assert_non_null(strstr(c->ev[2].text, "resource temporarily unavailable"));
}

static void check_real_ok(const collect *c, const run_result *rr)
{
    assert_int_equal(rr->finish_err, MOAT_OK);
    assert_int_equal(c->n, 5);
    assert_string_equal(c->ev[0].text, "3f2b9c0d6a4e4f0c9a1b2c3d4e5f6a7b");
    assert_string_equal(c->ev[1].text, "hello");
    assert_int_equal(c->ev[1].ts, 1718000000105);
    assert_int_equal(c->ev[2].stream, MOAT_BRIDGE_STDERR);
    assert_string_equal(c->ev[2].text, "warn <x>");
    assert_int_equal(c->ev[3].exec_time, 0); /* left out when 0 */
    assert_true(c->ev[4].known);
    assert_int_equal(c->ev[4].code, 0);
}

static void check_appended(const collect *c, const run_result *rr)
{
    assert_int_equal(rr->finish_err, MOAT_OK);
    assert_int_equal(c->n, 4);
    assert_int_equal(c->ev[2].kind, MOAT_BRIDGE_EV_ERROR);
    assert_string_equal(c->ev[2].name, "RUNTIME_ERROR");
    assert_string_equal(c->ev[2].text, "error running in session. timeout after 30s");
    assert_false(c->ev[3].known);
    assert_non_null(strstr(c->ev[3].text, "RUNTIME_ERROR"));
    assert_int_equal(rr->stats.api_errors, 1);
}

static void test_seed_streams_every_split(void **state)
{
    (void)state;
    moat_bridge_decoder_opts o = {0};
    every_split(SEED_ECHO_HI, sizeof(SEED_ECHO_HI) - 1, &o, check_echo_hi);
    every_split(SEED_SESS1_PWD, sizeof(SEED_SESS1_PWD) - 1, &o, check_sess1);
    every_split(SEED_SESS2_EXIT7, sizeof(SEED_SESS2_EXIT7) - 1, &o, check_exit7);
    every_split(SEED_EXIT7, sizeof(SEED_EXIT7) - 1, &o, check_exit7);
    every_split(SEED_EXIT_NULL, sizeof(SEED_EXIT_NULL) - 1, &o, check_exit_null);
    /* binary mode changes nothing for line-mode events */
    o.binary = true;
    every_split(SEED_ECHO_HI, sizeof(SEED_ECHO_HI) - 1, &o, check_echo_hi);
}

static void test_real_execd_framing_every_split(void **state)
{
    (void)state;
    moat_bridge_decoder_opts o = {0};
    every_split(REAL_EXECD_OK, sizeof(REAL_EXECD_OK) - 1, &o, check_real_ok);
    every_split(REAL_EXECD_APPENDED, sizeof(REAL_EXECD_APPENDED) - 1, &o, check_appended);
}

static void test_skip_rules(void **state)
{
    (void)state;
    static const char s[] = ": a comment\n"
                            "id: 7\n"
                            "retry: 100\n"
                            "event: x\n"
                            "   \t \n"
                            "data:\n"
                            "data:    \n"
                            "data: not json\n"
                            "data: [1,2]\n"
                            "data: {\"no\":\"type\"}\n"
                            "{\"type\":42}\n"
                            "{\"type\":\"status\",\"text\":\"busy\",\"timestamp\":1}\n"
                            "{\"type\":\"execution_count\",\"execution_count\":3}\n"
                            "{\"type\":\"future_thing\",\"timestamp\":1}\n"
                            "{\"type\":\"stdout\",\"timestamp\":1}\n"
                            "{\"type\":\"stdout\",\"text\":\"a\"} trailing\n"
                            "data:{\"type\":\"stdout\",\"text\":\"ok\"}\r\n"
                            "\r\n"
                            "{\"type\":\"execution_complete\",\"execution_time\":2}";
    collect c;
    col_init(&c);
    run_result rr = decode(s, sizeof(s) - 1, NULL, SIZE_MAX, &c);
    assert_int_equal(rr.finish_err, MOAT_OK);
    assert_int_equal(c.n, 3);
    assert_string_equal(c.ev[0].text, "ok");
    assert_int_equal(c.ev[0].ts, 0); /* no timestamp: accepted, 0 */
    assert_int_equal(c.ev[1].exec_time, 2);
    assert_true(c.ev[2].known);
    assert_int_equal(rr.stats.skipped_lines, 13);
    col_free(&c);
}

static void test_traceback_shapes(void **state)
{
    (void)state;
    static const char s[] =
        "{\"type\":\"error\",\"error\":{\"ename\":\"E\",\"evalue\":\" -1 "
        "\",\"traceback\":\"one\"}}\n"
        "{\"type\":\"error\",\"error\":{\"ename\":\"E\",\"evalue\":\"3\",\"traceback\":[1,\"b\"]}}"
        "\n"
        "{\"type\":\"error\",\"error\":{\"ename\":\"E\",\"evalue\":\"99999999999\"}}\n"
        "{\"type\":\"error\"}\n"
        "{\"type\":\"error\",\"error\":{\"ename\":\"E\",\"evalue\":\"-1\",\"traceback\":[]}}\n";
    collect c;
    col_init(&c);
    moat_bridge_decoder_opts o = {.timeout_set = true};
    run_result rr = decode(s, sizeof(s) - 1, &o, 10, &c);
    assert_int_equal(rr.finish_err, MOAT_OK);
    assert_int_equal(c.n, 6);
    assert_int_equal(c.ev[0].tb_count, 1);
    assert_string_equal(c.ev[0].tb0, "one");
    assert_int_equal(c.ev[1].tb_count, 2);
    assert_string_equal(c.ev[1].tb0, "1");
    assert_string_equal(c.ev[3].name, "");
    /* the last error wins: -1 with a timeout set, but execd did not say the
     * timeout killed it (a self-inflicted or OOM kill) */
    assert_true(c.ev[5].known);
    assert_int_equal(c.ev[5].code, -1);
    assert_false(c.ev[5].timed_out);
    col_free(&c);

    /* timed out only when execd names the timeout as the cause, and the run had one */
    static const char killed[] = "{\"type\":\"error\",\"error\":{\"ename\":\"E\",\"evalue\":\"-1\","
                                 "\"traceback\":[],\"cause\":\"timeout\"}}\n";
    for (int with_timeout = 0; with_timeout < 2; with_timeout++) {
        col_init(&c);
        moat_bridge_decoder_opts ot = {.timeout_set = with_timeout == 1};
        rr = decode(killed, sizeof(killed) - 1, &ot, 10, &c);
        assert_int_equal(rr.finish_err, MOAT_OK);
        assert_int_equal(c.n, 2);
        assert_int_equal(c.ev[1].code, -1);
        assert_int_equal(c.ev[1].timed_out, with_timeout == 1);
        col_free(&c);
    }

    /* an out-of-range evalue is not a number */
    static const char big[] =
        "{\"type\":\"error\",\"error\":{\"ename\":\"E\",\"evalue\":\"99999999999\"}}\n\n";
    col_init(&c);
    decode(big, sizeof(big) - 1, NULL, 0, &c);
    assert_false(c.ev[1].known);
    col_free(&c);
}

static void test_error_beats_complete_and_neither(void **state)
{
    (void)state;
    static const char both[] =
        "{\"type\":\"error\",\"error\":{\"ename\":\"E\",\"evalue\":\"2\",\"traceback\":null}}\n\n"
        "{\"type\":\"execution_complete\",\"execution_time\":9}\n\n";
    collect c;
    col_init(&c);
    decode(both, sizeof(both) - 1, NULL, SIZE_MAX, &c);
    assert_true(c.ev[2].known);
    assert_int_equal(c.ev[2].code, 2);
    col_free(&c);

    static const char neither[] = "{\"type\":\"init\",\"text\":\"x\"}\n\n";
    col_init(&c);
    run_result rr = decode(neither, sizeof(neither) - 1, NULL, SIZE_MAX, &c);
    assert_int_equal(rr.finish_err, MOAT_OK);
    assert_false(c.ev[1].known);
    assert_non_null(strstr(c.ev[1].text, "without a completion or error"));
    col_free(&c);

    /* background: init + complete, the exit code is not known yet */
    static const char bg[] = "{\"type\":\"init\",\"text\":\"b\"}\n\n"
                             "{\"type\":\"execution_complete\"}\n\n";
    moat_bridge_decoder_opts o = {.background = true};
    col_init(&c);
    decode(bg, sizeof(bg) - 1, &o, SIZE_MAX, &c);
    assert_false(c.ev[2].known);
    assert_non_null(strstr(c.ev[2].text, "background"));
    col_free(&c);
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The exit event is stamped with execd's time of the final event (completion or error), or,
 * when execd gave none, with the decoder's clock: never 0. */
static void test_exit_timestamp(void **state)
{
    (void)state;
    static const char *finals[] = {
        "{\"type\":\"execution_complete\",\"execution_time\":3,\"timestamp\":1718000000110}\n\n",
        "{\"type\":\"error\",\"error\":{\"ename\":\"E\",\"evalue\":\"3\"},"
        "\"timestamp\":1718000000110}\n\n"};
    for (size_t i = 0; i < 2; i++) {
        collect c;
        col_init(&c);
        decode(finals[i], strlen(finals[i]), NULL, SIZE_MAX, &c);
        assert_int_equal(c.ev[c.n - 1].kind, MOAT_BRIDGE_EV_EXIT);
        assert_int_equal(c.ev[c.n - 1].ts, 1718000000110);
        col_free(&c);
    }
    static const char *unstamped[] = {"{\"type\":\"execution_complete\"}\n\n",
                                      "{\"type\":\"init\",\"text\":\"x\",\"timestamp\":5}\n\n"};
    for (size_t i = 0; i < 2; i++) {
        int64_t before = now_ms();
        collect c;
        col_init(&c);
        decode(unstamped[i], strlen(unstamped[i]), NULL, SIZE_MAX, &c);
        assert_int_equal(c.ev[c.n - 1].kind, MOAT_BRIDGE_EV_EXIT);
        assert_true(c.ev[c.n - 1].ts >= before);
        assert_true(c.ev[c.n - 1].ts <= now_ms());
        col_free(&c);
    }
}

static void test_truncated_inside_event(void **state)
{
    (void)state;
    static const char s[] = "{\"type\":\"init\",\"text\":\"x\"}\n\n{\"type\":\"stdo";
    collect c;
    col_init(&c);
    run_result rr = decode(s, sizeof(s) - 1, NULL, SIZE_MAX, &c);
    assert_int_equal(rr.finish_err, MOAT_E_PROTO);
    assert_int_equal(rr.st.code, MOAT_CODE_UNAVAILABLE);
    assert_string_equal(rr.st.reason, "execd_stream_truncated");
    assert_int_equal(c.n, 2);
    assert_false(c.ev[1].known);
    col_free(&c);
}

static void test_nul_and_invalid_utf8(void **state)
{
    (void)state;
    /* raw NUL and invalid UTF-8 inside lines: not JSON, skipped; an escaped
     * NUL inside a JSON string is line-mode text, so it arrives as U+FFFD
     * (exact bytes are binary-safe mode's job) */
    static const char s[] = "{\"type\":\"stdout\",\"text\":\"a\0b\"}\n\n"
                            "{\"type\":\"stdout\",\"text\":\"\xff\xfe\xc0\x80\"}\n\n"
                            "\xff\xff\xff\n"
                            "\0\0\0\n"
                            "{\"type\":\"stdout\",\"text\":\"x\\u0000y\\u0000\"}\n\n"
                            "{\"type\":\"execution_complete\"}\n\n";
    for (size_t cut = 0; cut < sizeof(s); cut++) {
        collect c;
        col_init(&c);
        run_result rr = decode(s, sizeof(s) - 1, NULL, cut, &c);
        assert_int_equal(rr.finish_err, MOAT_OK);
        assert_int_equal(c.n, 3);
        assert_int_equal(c.ev[0].len, 8);
        assert_memory_equal(c.ev[0].text, "x\xef\xbf\xbdy\xef\xbf\xbd", 8);
        assert_true(c.ev[2].known);
        assert_int_equal(rr.stats.skipped_lines, 4);
        col_free(&c);
    }
}

/* What cJSON would take but the decoder refuses (as "not JSON", skipped),
 * and what it reads the way the decoder always did. */
static void test_text_rules(void **state)
{
    (void)state;
    static const char s[] =
        /* skipped: raw control characters inside a string or between tokens */
        "{\"type\":\"stdout\",\"text\":\"tab\there\"}\n"
        "{\"type\":\"stdout\",\"text\":\"x\x01\"}\n"
        "{\"type\":\"stdout\",\x01\"text\":\"x\"}\n"
        /* skipped: overlong, surrogate, past U+10FFFF, cut sequence */
        "{\"type\":\"stdout\",\"text\":\"\xe0\x80\xaf\"}\n"
        "{\"type\":\"stdout\",\"text\":\"\xed\xa0\x80\"}\n"
        "{\"type\":\"stdout\",\"text\":\"\xf4\x90\x80\x80\"}\n"
        "{\"type\":\"stdout\",\"text\":\"\xe2\x82\"}\n"
        /* kept: a tab between tokens, 2-, 3- and 4-byte UTF-8, an escaped
         * backslash before u0000 (text, not an escape) */
        "{\t\"type\":\"stdout\",\"text\":\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"}\n"
        "{\"type\":\"stdout\",\"text\":\"a\\\\u0000\"}\n"
        /* a repeated key keeps its last value; numbers past int64 read as 0 */
        "{\"type\":\"stderr\",\"text\":\"first\",\"text\":\"last\",\"timestamp\":1e30}\n"
        "{\"type\":\"error\",\"error\":{\"ename\":\"E\\u0000\",\"evalue\":\"x\","
        "\"traceback\":[{\"a\":[true,null]},\"s\\u0000\"]}}\n";
    for (size_t cut = 0; cut < sizeof(s); cut++) {
        collect c;
        col_init(&c);
        run_result rr = decode(s, sizeof(s) - 1, NULL, cut, &c);
        assert_int_equal(rr.finish_err, MOAT_OK);
        assert_int_equal(rr.stats.skipped_lines, 7);
        assert_int_equal(c.n, 5);
        assert_string_equal(c.ev[0].text, "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80");
        assert_string_equal(c.ev[1].text, "a\\u0000");
        assert_int_equal(c.ev[2].stream, MOAT_BRIDGE_STDERR);
        assert_string_equal(c.ev[2].text, "last");
        assert_int_equal(c.ev[2].ts, 0);
        assert_string_equal(c.ev[3].name, "E\xef\xbf\xbd");
        assert_int_equal(c.ev[3].tb_count, 2);
        assert_string_equal(c.ev[3].tb0, "{\"a\":[true,null]}");
        col_free(&c);
    }
}

static void test_oversize_fail_and_skip(void **state)
{
    (void)state;
    moat_bridge_decoder_opts o = {.max_line = 64};
    char s[512];
    int n = snprintf(s, sizeof(s),
                     "{\"type\":\"stdout\",\"text\":\"short\"}\n\n"
                     "{\"type\":\"stdout\",\"text\":\"%0100d\"}\n\n"
                     "{\"type\":\"execution_complete\"}\n\n",
                     0);
    for (size_t cut = 0; cut <= (size_t)n + 1; cut++) {
        collect c;
        col_init(&c);
        o.oversize = MOAT_BRIDGE_OVERSIZE_FAIL;
        run_result rr = decode(s, (size_t)n, &o, cut == (size_t)n + 1 ? SIZE_MAX : cut, &c);
        assert_int_equal(rr.feed_err, MOAT_E_TOO_BIG);
        assert_int_equal(rr.st.code, MOAT_CODE_RESOURCE_EXHAUSTED);
        assert_string_equal(rr.st.reason, "sse_line_too_long");
        assert_int_equal(c.n, 2);
        assert_false(c.ev[1].known);
        col_free(&c);

        col_init(&c);
        o.oversize = MOAT_BRIDGE_OVERSIZE_SKIP;
        rr = decode(s, (size_t)n, &o, cut == (size_t)n + 1 ? SIZE_MAX : cut, &c);
        assert_int_equal(rr.finish_err, MOAT_OK);
        assert_int_equal(rr.stats.oversize_lines, 1);
        assert_int_equal(c.n, 3);
        assert_string_equal(c.ev[0].text, "short");
        assert_true(c.ev[2].known);
        col_free(&c);
    }
}

static void test_64mib_line(void **state)
{
    (void)state;
    /* fed in 64 KiB pieces as a socket would: ends at max_line, never grows */
    size_t total = 64u << 20, piece = 64u << 10;
    uint8_t *buf = malloc(piece);
    memset(buf, 'a', piece);
    moat_bridge_decoder_opts o = {.max_line = 1u << 20};
    moat_bridge_decoder *d = NULL;
    assert_int_equal(moat_bridge_decoder_new(&o, &d), MOAT_OK);
    collect c;
    col_init(&c);
    moat_status st;
    moat_err err = MOAT_OK;
    size_t fed = 0;
    while (fed < total && err == MOAT_OK) {
        err = moat_bridge_decoder_feed(d, buf, piece, col_emit, &c, &st);
        fed += piece;
    }
    assert_int_equal(err, MOAT_E_TOO_BIG);
    assert_true(fed <= o.max_line + piece);
    /* what it holds for the line is what a budget must count, never past max_line */
    assert_true(moat_bridge_decoder_buffer_bytes(d) > 0);
    assert_true(moat_bridge_decoder_buffer_bytes(d) <= o.max_line);
    moat_bridge_decoder_free(d);
    col_free(&c);

    /* SKIP: the whole 64 MiB line goes by, then the stream carries on */
    o.oversize = MOAT_BRIDGE_OVERSIZE_SKIP;
    assert_int_equal(moat_bridge_decoder_new(&o, &d), MOAT_OK);
    col_init(&c);
    for (fed = 0; fed < total; fed += piece)
        assert_int_equal(moat_bridge_decoder_feed(d, buf, piece, col_emit, &c, &st), MOAT_OK);
    static const char tail[] = "\n{\"type\":\"execution_complete\"}\n\n";
    assert_int_equal(
        moat_bridge_decoder_feed(d, (const uint8_t *)tail, sizeof(tail) - 1, col_emit, &c, &st),
        MOAT_OK);
    assert_int_equal(moat_bridge_decoder_finish(d, col_emit, &c, &st), MOAT_OK);
    assert_int_equal(c.n, 2);
    assert_true(c.ev[1].known);
    moat_bridge_decoder_free(d);
    col_free(&c);
    free(buf);
}

static size_t bin_frame(uint8_t *out, const char *type, const uint8_t *data, size_t n)
{
    int k = sprintf((char *)out, "{\"type\":\"%s\",\"timestamp\":7,\"len\":%zu}\n", type, n);
    memcpy(out + k, data, n);
    out[k + n] = '\n';
    out[k + n + 1] = '\n';
    return (size_t)k + n + 2;
}

static void test_binary_frames(void **state)
{
    (void)state;
    uint8_t payload[300];
    for (size_t i = 0; i < sizeof(payload); i++)
        payload[i] = (uint8_t)(i * 7); /* NULs, LFs, invalid UTF-8 */
    uint8_t s[1024];
    size_t n = 0;
    n += (size_t)sprintf((char *)s, "{\"type\":\"init\",\"text\":\"b1\"}\n\n");
    n += bin_frame(s + n, "stdout", payload, sizeof(payload));
    n += bin_frame(s + n, "stderr", (const uint8_t *)"\n\n", 2);
    n += (size_t)sprintf((char *)s + n,
                         "{\"type\":\"execution_complete\",\"execution_time\":1}\n\n");
    moat_bridge_decoder_opts o = {.binary = true};
    /* a binary event cut short holds the binary buffer until it completes */
    moat_bridge_decoder *d = NULL;
    assert_int_equal(moat_bridge_decoder_new(&o, &d), MOAT_OK);
    assert_int_equal(moat_bridge_decoder_buffer_bytes(d), 0);
    collect part;
    col_init(&part);
    moat_status st;
    size_t upto = (size_t)(strstr((char *)s, "\"len\":300}\n") - (char *)s) + 20;
    assert_int_equal(moat_bridge_decoder_feed(d, s, upto, col_emit, &part, &st), MOAT_OK);
    assert_true(moat_bridge_decoder_buffer_bytes(d) >= 65536);
    moat_bridge_decoder_free(d);
    col_free(&part);
    for (size_t cut = 0; cut <= n + 1; cut++) {
        collect c;
        col_init(&c);
        run_result rr = decode(s, n, &o, cut == n + 1 ? SIZE_MAX : cut, &c);
        assert_int_equal(rr.finish_err, MOAT_OK);
        assert_int_equal(c.n, 5);
        assert_int_equal(c.ev[1].len, sizeof(payload));
        assert_memory_equal(c.ev[1].text, payload, sizeof(payload));
        assert_int_equal(c.ev[1].ts, 7);
        assert_int_equal(c.ev[2].stream, MOAT_BRIDGE_STDERR);
        assert_memory_equal(c.ev[2].text, "\n\n", 2);
        assert_true(c.ev[4].known);
        col_free(&c);
    }
}

static void test_binary_bad_frames(void **state)
{
    (void)state;
    moat_bridge_decoder_opts o = {.binary = true};
    const char *bad[] = {
        "{\"type\":\"stdout\",\"len\":0}\n\n",
        "{\"type\":\"stdout\",\"len\":65537}\nxxxx",
        "{\"type\":\"stdout\",\"len\":-1}\n",
        "{\"type\":\"stdout\",\"len\":\"4\"}\nabcd\n\n",
        "{\"type\":\"stdout\",\"len\":1.5}\n",
        "{\"type\":\"stdout\",\"len\":99999999999999999999}\n",
        "{\"type\":\"stdout\",\"len\":2}\nabX\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        collect c;
        col_init(&c);
        run_result rr = decode(bad[i], strlen(bad[i]), &o, SIZE_MAX, &c);
        assert_int_equal(rr.feed_err, MOAT_E_PROTO);
        assert_int_equal(rr.st.code, MOAT_CODE_UNAVAILABLE);
        assert_int_equal(c.ev[c.n - 1].kind, MOAT_BRIDGE_EV_EXIT);
        col_free(&c);
    }
    /* cut inside the payload: truncated */
    static const char cut[] = "{\"type\":\"stdout\",\"len\":10}\nabc";
    collect c;
    col_init(&c);
    run_result rr = decode(cut, sizeof(cut) - 1, &o, SIZE_MAX, &c);
    assert_int_equal(rr.finish_err, MOAT_E_PROTO);
    assert_string_equal(rr.st.reason, "execd_stream_truncated");
    col_free(&c);
    /* without binary mode, len is ignored and text is used */
    static const char line[] = "{\"type\":\"stdout\",\"len\":3,\"text\":\"abc\"}\n\n";
    col_init(&c);
    rr = decode(line, sizeof(line) - 1, NULL, SIZE_MAX, &c);
    assert_int_equal(rr.finish_err, MOAT_OK);
    assert_string_equal(c.ev[0].text, "abc");
    col_free(&c);
}

static bool stop_after_one(void *ud, const moat_bridge_event *ev)
{
    (void)ev;
    int *n = ud;
    return ++*n < 1;
}

/* Found by the fuzzer: a bad binary header as the last, unterminated line
 * fails at finish, and the execution must still end with exactly one EXIT. */
static void test_binary_bad_header_at_finish(void **state)
{
    (void)state;
    moat_bridge_decoder_opts o = {.binary = true};
    static const char body[] = "{\"t1111111\n{\"type\":\"stderr\",\"len\":11179999.00}";
    collect c;
    col_init(&c);
    run_result rr = decode(body, sizeof(body) - 1, &o, SIZE_MAX, &c);
    assert_int_equal(rr.feed_err, MOAT_OK);
    assert_int_equal(rr.finish_err, MOAT_E_PROTO);
    assert_int_equal(rr.st.code, MOAT_CODE_UNAVAILABLE);
    size_t exits = 0;
    for (size_t i = 0; i < c.n; i++)
        exits += c.ev[i].kind == MOAT_BRIDGE_EV_EXIT;
    assert_int_equal(exits, 1);
    assert_int_equal(c.ev[c.n - 1].kind, MOAT_BRIDGE_EV_EXIT);
    assert_false(c.ev[c.n - 1].known);
    col_free(&c);
}

static void test_emit_stop_and_state(void **state)
{
    (void)state;
    moat_bridge_decoder *d = NULL;
    assert_int_equal(moat_bridge_decoder_new(NULL, &d), MOAT_OK);
    int n = 0;
    moat_status st;
    assert_int_equal(moat_bridge_decoder_feed(d, (const uint8_t *)SEED_ECHO_HI,
                                              sizeof(SEED_ECHO_HI) - 1, stop_after_one, &n, &st),
                     MOAT_E_CLOSED);
    assert_int_equal(n, 1);
    moat_bridge_decoder_free(d);

    assert_int_equal(moat_bridge_decoder_new(NULL, &d), MOAT_OK);
    collect c;
    col_init(&c);
    assert_int_equal(moat_bridge_decoder_finish(d, col_emit, &c, &st), MOAT_OK);
    assert_int_equal(moat_bridge_decoder_finish(d, col_emit, &c, &st), MOAT_E_STATE);
    assert_int_equal(moat_bridge_decoder_feed(d, (const uint8_t *)"x", 1, col_emit, &c, &st),
                     MOAT_E_STATE);
    /* abort after finish emits nothing more */
    moat_bridge_decoder_abort(d, "x", col_emit, &c);
    assert_int_equal(c.n, 1);
    col_free(&c);
    moat_bridge_decoder_free(d);
}

static void test_event_cost(void **state)
{
    (void)state;
    moat_bridge_event ev = {.kind = MOAT_BRIDGE_EV_OUTPUT};
    ev.u.output.len = 100;
    assert_int_equal(moat_bridge_event_cost(&ev), 116);
    ev.u.output.len = 1u << 20;
    assert_int_equal(moat_bridge_event_cost(&ev), MOAT_BRIDGE_MAX_EVENT_COST);
}

int main(void)
{
    moat_log_set_level(MOAT_LOG_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_seed_streams_every_split),
        cmocka_unit_test(test_real_execd_framing_every_split),
        cmocka_unit_test(test_skip_rules),
        cmocka_unit_test(test_exit_timestamp),
        cmocka_unit_test(test_traceback_shapes),
        cmocka_unit_test(test_error_beats_complete_and_neither),
        cmocka_unit_test(test_truncated_inside_event),
        cmocka_unit_test(test_nul_and_invalid_utf8),
        cmocka_unit_test(test_text_rules),
        cmocka_unit_test(test_oversize_fail_and_skip),
        cmocka_unit_test(test_64mib_line),
        cmocka_unit_test(test_binary_frames),
        cmocka_unit_test(test_binary_bad_frames),
        cmocka_unit_test(test_binary_bad_header_at_finish),
        cmocka_unit_test(test_emit_stop_and_state),
        cmocka_unit_test(test_event_cost),
    };
    return moat_run_group_tests("test_decoder", tests, NULL, NULL);
}
