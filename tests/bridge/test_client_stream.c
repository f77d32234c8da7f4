/* The bridge's command streams against the fake execd (client_harness.h): every seed 001
 * case, served whole, in small writes and over TCP, the run's request, the real execd's
 * quirks, and hostile streams: cut bodies, a reset, silence, a 64 MiB line, bad bytes and
 * binary frames. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "moat_test.h"

#include "client_harness.h"

/* ------------------------------------------------------------ seed 001 */

static void seed_cases(bool tcp)
{
    env e;
    env_up(&e, tcp, NULL);
    collect c;

    /* test_run_command_streaming_happy_path_updates_execution */
    run_to_end(&e, "echo hi", &c);
    assert_int_equal(c.end.code, MOAT_CODE_OK);
    assert_int_equal(c.n, 5);
    assert_string_equal(col_find(&c, MOAT_BRIDGE_EV_INIT)->text, "exec-1");
    assert_string_equal(col_find(&c, MOAT_BRIDGE_EV_OUTPUT)->text, "hi");
    assert_string_equal(col_find(&c, MOAT_BRIDGE_EV_RESULT)->text, "ok");
    assert_int_equal(col_find(&c, MOAT_BRIDGE_EV_COMPLETE)->exec_time, 5);
    assert_true(col_find(&c, MOAT_BRIDGE_EV_EXIT)->known);
    assert_int_equal(col_find(&c, MOAT_BRIDGE_EV_EXIT)->code, 0);
    assert_false(c.seq_gap);
    char h[256];
    fake_last_header(&e.f, "Accept", h, sizeof(h));
    assert_string_equal(h, "text/event-stream");
    fake_last_header(&e.f, "X-Moat-Output", h, sizeof(h));
    assert_string_equal(h, "binary");
    fake_last_header(&e.f, "X-EXECD-ACCESS-TOKEN", h, sizeof(h));
    assert_string_equal(h, "");
    col_free(&c);

    /* test_run_command_streaming_non_zero_exit_updates_exit_code */
    run_to_end(&e, "exit 7", &c);
    assert_string_equal(col_find(&c, MOAT_BRIDGE_EV_INIT)->text, "exec-2");
    assert_string_equal(col_find(&c, MOAT_BRIDGE_EV_ERROR)->text, "7");
    assert_null(col_find(&c, MOAT_BRIDGE_EV_COMPLETE));
    assert_int_equal(col_find(&c, MOAT_BRIDGE_EV_EXIT)->code, 7);
    assert_true(col_find(&c, MOAT_BRIDGE_EV_EXIT)->known);
    col_free(&c);

    /* test_run_command_streaming_tolerates_null_traceback */
    run_to_end(&e, "exit null", &c);
    assert_string_equal(col_find(&c, MOAT_BRIDGE_EV_INIT)->text, "exec-null");
    const col_event *er = col_find(&c, MOAT_BRIDGE_EV_ERROR);
    assert_string_equal(er->text, "fork/exec /usr/bin/bash: resource temporarily unavailable");
    assert_int_equal(er->tb_count, 0);
    assert_null(col_find(&c, MOAT_BRIDGE_EV_COMPLETE));
    assert_false(col_find(&c, MOAT_BRIDGE_EV_EXIT)->known);
    assert_int_equal(c.end.code, MOAT_CODE_OK);
    col_free(&c);

    /* test_run_command_rejects_blank_command: no request at all */
    int before = fake_request_count(&e.f);
    moat_bridge_run_opts blank = {.command = "   "};
    moat_bridge_exec *ex = NULL;
    moat_status st;
    col_init(&c);
    moat_bridge_consumer k = col_consumer(&c);
    assert_int_equal(moat_bridge_run(e.b, &e.ep, &blank, &k, 1000, &ex, &st), MOAT_E_INVAL);
    assert_int_equal(st.code, MOAT_CODE_INVALID_ARGUMENT);
    blank.command = "";
    assert_int_equal(moat_bridge_run(e.b, &e.ep, &blank, &k, 1000, &ex, &st), MOAT_E_INVAL);
    blank.command = NULL;
    assert_int_equal(moat_bridge_run(e.b, &e.ep, &blank, &k, 1000, &ex, &st), MOAT_E_INVAL);
    run_for_ms(&e, 50);
    assert_int_equal(fake_request_count(&e.f), before);
    assert_false(c.ended);
    col_free(&c);

    /* test_run_command_non_200_raises_api_exception */
    run_to_end(&e, "other", &c);
    assert_int_equal(c.n, 0);
    assert_int_equal(c.end.code, MOAT_CODE_INTERNAL);
    assert_string_equal(c.end.reason, "execd_api_error");
    assert_string_equal(moat_status_detail_get(&c.end, "http_status"), "500");
    assert_string_equal(moat_status_detail_get(&c.end, "body"), "boom");
    col_free(&c);

    /* test_run_in_session_streaming_uses_generated_fields_and_exit_code */
    moat_bridge_run_opts so = {
        .command = "pwd", .cwd = "/var", .timeout_ms = 5000, .session_id = "sess-1"};
    col_init(&c);
    run_cmd(&e, &so, &c, UINT64_MAX);
    run_until(&e, &c.ended);
    assert_string_equal(col_find(&c, MOAT_BRIDGE_EV_OUTPUT)->text, "/var");
    assert_int_equal(col_find(&c, MOAT_BRIDGE_EV_COMPLETE)->exec_time, 3);
    assert_int_equal(col_find(&c, MOAT_BRIDGE_EV_EXIT)->code, 0);
    assert_true(col_find(&c, MOAT_BRIDGE_EV_EXIT)->known);
    pthread_mutex_lock(&e.f.mu);
    assert_string_equal(e.f.last.path, "/session/sess-1/run");
    pthread_mutex_unlock(&e.f.mu);
    assert_last_body(&e, "{\"command\":\"pwd\",\"cwd\":\"/var\",\"timeout\":5000}");
    col_free(&c);

    /* test_run_in_session_non_zero_exit_updates_exit_code */
    moat_bridge_run_opts s2 = {.command = "exit 7", .session_id = "sess-2"};
    col_init(&c);
    run_cmd(&e, &s2, &c, UINT64_MAX);
    run_until(&e, &c.ended);
    assert_string_equal(col_find(&c, MOAT_BRIDGE_EV_INIT)->text, "sess-exec-2");
    assert_string_equal(col_find(&c, MOAT_BRIDGE_EV_ERROR)->text, "7");
    assert_null(col_find(&c, MOAT_BRIDGE_EV_COMPLETE));
    assert_int_equal(col_find(&c, MOAT_BRIDGE_EV_EXIT)->code, 7);
    col_free(&c);

    env_down(&e);
}

static void test_seed_cases_unix(void **state)
{
    (void)state;
    g_piece = 0;
    seed_cases(false);
}

static void test_seed_cases_small_writes(void **state)
{
    (void)state;
    size_t pieces[] = {1, 2, 3, 7, 13, 64};
    for (size_t i = 0; i < sizeof(pieces) / sizeof(pieces[0]); i++) {
        g_piece = pieces[i];
        seed_cases(false);
    }
    g_piece = 0;
}

static void test_seed_cases_tcp(void **state)
{
    (void)state;
    g_piece = 5;
    seed_cases(true);
    g_piece = 0;
}

static void test_access_token_and_text_mode(void **state)
{
    (void)state;
    moat_bridge_config cfg;
    moat_bridge_config_default(&cfg);
    cfg.binary_output = false;
    env e;
    env_up(&e, false, &cfg);
    e.ep.access_token = "tok-1";
    collect c;
    run_to_end(&e, "binary", &c);
    char h[64];
    fake_last_header(&e.f, "X-EXECD-ACCESS-TOKEN", h, sizeof(h));
    assert_string_equal(h, "tok-1");
    fake_last_header(&e.f, "X-Moat-Output", h, sizeof(h));
    assert_string_equal(h, "");
    assert_string_equal(col_find(&c, MOAT_BRIDGE_EV_OUTPUT)->text, "lines");
    col_free(&c);
    env_down(&e);
}

/* The run's JSON body: env (a repeated key keeps its last value), background,
 * and a timeout past 2^53 written as an exact integer. */
static void test_run_body(void **state)
{
    (void)state;
    env e;
    env_up(&e, false, NULL);
    const char *keys[] = {"A", "B", "A"}, *values[] = {"1", "x\"y", "3"};
    moat_bridge_run_opts o = {.command = "echo hi",
                              .cwd = "/w",
                              .timeout_ms = 9007199254740993u,
                              .env_keys = keys,
                              .env_values = values,
                              .env_count = 3,
                              .background = true};
    collect c;
    col_init(&c);
    run_cmd(&e, &o, &c, UINT64_MAX);
    run_until(&e, &c.ended);
    assert_int_equal(c.end.code, MOAT_CODE_OK);
    assert_last_body(&e, "{\"command\":\"echo hi\",\"cwd\":\"/w\",\"timeout\":9007199254740993,"
                         "\"background\":true,\"envs\":{\"A\":\"3\",\"B\":\"x\\\"y\"}}");
    pthread_mutex_lock(&e.f.mu);
    assert_non_null(strstr(e.f.last.body, "\"timeout\":9007199254740993,"));
    pthread_mutex_unlock(&e.f.mu);
    col_free(&c);
    env_down(&e);
}

/* ------------------------------------------------------------ real execd */

static void test_real_execd_quirks(void **state)
{
    (void)state;
    g_piece = 3;
    env e;
    env_up(&e, false, NULL);
    collect c;
    run_to_end(&e, "real ok", &c);
    assert_int_equal(c.end.code, MOAT_CODE_OK);
    assert_int_equal(c.n, 5);
    assert_string_equal(c.ev[2].text, "warn <x>");
    assert_int_equal(c.ev[2].stream, MOAT_BRIDGE_STDERR);
    assert_int_equal(c.ev[4].code, 0);
    col_free(&c);

    run_to_end(&e, "real appended", &c);
    assert_int_equal(c.end.code, MOAT_CODE_OK);
    assert_string_equal(col_find(&c, MOAT_BRIDGE_EV_ERROR)->name, "RUNTIME_ERROR");
    assert_false(col_find(&c, MOAT_BRIDGE_EV_EXIT)->known);
    assert_non_null(strstr(col_find(&c, MOAT_BRIDGE_EV_EXIT)->text, "timeout after 30s"));
    col_free(&c);

    /* a badly ended chunked body after the final event loses nothing */
    run_to_end(&e, "real bad end", &c);
    assert_int_equal(c.end.code, MOAT_CODE_OK);
    assert_int_equal(col_find(&c, MOAT_BRIDGE_EV_EXIT)->code, 0);
    assert_true(col_find(&c, MOAT_BRIDGE_EV_EXIT)->known);
    col_free(&c);
    env_down(&e);
    g_piece = 0;
}

/* ------------------------------------------------------------ hostile */

static void test_cut_and_reset(void **state)
{
    (void)state;
    env e;
    env_up(&e, false, NULL);
    collect c;
    const char *cuts[] = {"cut", "cut mid chunk", "cut close delimited"};
    for (size_t i = 0; i < 3; i++) {
        run_to_end(&e, cuts[i], &c);
        assert_int_equal(c.end.code, MOAT_CODE_UNAVAILABLE);
        assert_int_equal(col_find(&c, MOAT_BRIDGE_EV_INIT)->kind, MOAT_BRIDGE_EV_INIT);
        const col_event *x = col_find(&c, MOAT_BRIDGE_EV_EXIT);
        assert_non_null(x);
        assert_false(x->known);
        assert_true(c.ev[c.n - 1].kind == MOAT_BRIDGE_EV_EXIT);
        col_free(&c);
    }
    env_down(&e);

    env_up(&e, true, NULL);
    run_to_end(&e, "reset", &c);
    assert_int_equal(c.end.code, MOAT_CODE_UNAVAILABLE);
    assert_string_equal(col_find(&c, MOAT_BRIDGE_EV_INIT)->text, "r1");
    assert_false(col_find(&c, MOAT_BRIDGE_EV_EXIT)->known);
    col_free(&c);
    env_down(&e);
}

static void test_liveness(void **state)
{
    (void)state;
    moat_bridge_config cfg;
    moat_bridge_config_default(&cfg);
    cfg.idle_timeout_ms = 1000;
    env e;
    env_up(&e, false, &cfg);
    collect c;
    run_to_end(&e, "never", &c);
    assert_int_equal(c.end.code, MOAT_CODE_UNAVAILABLE);
    assert_string_equal(c.end.reason, "execd_silent");
    assert_int_equal(c.n, 0);
    col_free(&c);

    run_to_end(&e, "silent after init", &c);
    assert_int_equal(c.end.code, MOAT_CODE_UNAVAILABLE);
    assert_string_equal(c.end.reason, "execd_silent");
    assert_string_equal(c.ev[0].text, "s1");
    assert_false(col_find(&c, MOAT_BRIDGE_EV_EXIT)->known);
    col_free(&c);
    env_down(&e);

    /* nobody listening at all: beside this run's fake's socket, a path nothing makes */
    env_up(&e, false, &cfg);
    char nobody[sizeof(e.f.sock_path) + 8];
    snprintf(nobody, sizeof(nobody), "%s.nobody", e.f.sock_path);
    e.ep.unix_socket = nobody;
    run_to_end(&e, "echo hi", &c);
    assert_int_equal(c.end.code, MOAT_CODE_UNAVAILABLE);
    assert_string_equal(c.end.reason, "execd_unreachable");
    col_free(&c);
    env_down(&e);
}

static void test_64mib_line(void **state)
{
    (void)state;
    moat_bridge_config cfg;
    moat_bridge_config_default(&cfg);
    env e;
    env_up(&e, false, &cfg);
    collect c;
    run_to_end(&e, "64mib", &c);
    assert_int_equal(c.end.code, MOAT_CODE_RESOURCE_EXHAUSTED);
    assert_string_equal(c.end.reason, "sse_line_too_long");
    assert_false(col_find(&c, MOAT_BRIDGE_EV_EXIT)->known);
    col_free(&c);
    env_down(&e);

    cfg.oversize = MOAT_BRIDGE_OVERSIZE_SKIP;
    env_up(&e, false, &cfg);
    run_to_end(&e, "64mib", &c);
    assert_int_equal(c.end.code, MOAT_CODE_OK);
    assert_string_equal(col_find(&c, MOAT_BRIDGE_EV_OUTPUT)->text, "after");
    assert_int_equal(col_find(&c, MOAT_BRIDGE_EV_EXIT)->code, 0);
    col_free(&c);
    env_down(&e);
}

static void test_hostile_bytes(void **state)
{
    (void)state;
    g_piece = 4;
    env e;
    env_up(&e, false, NULL);
    collect c;
    run_to_end(&e, "hostile bytes", &c);
    assert_int_equal(c.end.code, MOAT_CODE_OK);
    assert_int_equal(c.n, 4);
    /* line mode is UTF-8 text: the escaped NUL arrives as U+FFFD */
    assert_int_equal(c.ev[1].len, 5);
    assert_memory_equal(c.ev[1].text, "n\xef\xbf\xbdl", 5);
    assert_int_equal(c.ev[3].code, 0);
    col_free(&c);
    env_down(&e);
    g_piece = 0;
}

static void test_binary_mode(void **state)
{
    (void)state;
    g_piece = 7;
    env e;
    env_up(&e, false, NULL);
    collect c;
    run_to_end(&e, "binary", &c);
    assert_int_equal(c.end.code, MOAT_CODE_OK);
    assert_int_equal(c.out_len[1], 256);
    for (int i = 0; i < 256; i++)
        assert_int_equal(c.out[1][i], i);
    assert_int_equal(c.out_len[2], 3);
    assert_memory_equal(c.out[2], "\0e\n", 3);
    col_free(&c);

    run_to_end(&e, "binary bad len", &c);
    assert_int_equal(c.end.code, MOAT_CODE_UNAVAILABLE);
    assert_string_equal(c.end.reason, "execd_protocol_error");
    assert_false(col_find(&c, MOAT_BRIDGE_EV_EXIT)->known);
    col_free(&c);
    env_down(&e);
    g_piece = 0;
}

int main(void)
{
    moat_log_set_level(MOAT_LOG_ERROR);
    if (getenv("BRIDGE_TEST_FILTER") != NULL)
        cmocka_set_test_filter(getenv("BRIDGE_TEST_FILTER"));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_seed_cases_unix), cmocka_unit_test(test_seed_cases_small_writes),
        cmocka_unit_test(test_seed_cases_tcp),  cmocka_unit_test(test_access_token_and_text_mode),
        cmocka_unit_test(test_run_body),        cmocka_unit_test(test_real_execd_quirks),
        cmocka_unit_test(test_cut_and_reset),   cmocka_unit_test(test_liveness),
        cmocka_unit_test(test_64mib_line),      cmocka_unit_test(test_hostile_bytes),
        cmocka_unit_test(test_binary_mode),
    };
    return moat_run_group_tests("bridge_client_stream_test", tests, NULL, NULL);
}
