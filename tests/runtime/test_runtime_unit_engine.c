/* The engine's side of the conversation, against the fake engine: strict parsing of its answers,
 * timeouts, cut connections, a dead or restarted engine, API version negotiation and the
 * tcp:// endpoint. */
#define _XOPEN_SOURCE 700
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moat_test.h"

#include "json_readers.h"
#include "runtime_fixture.h"

static void test_docker_timeout(void **state)
{
    fx *f = *state;
    moat_runtime_close(f->rt);
    f->cfg.docker_timeout_ms = 200;
    open_runtime(f);
    fake_docker_route_hold(&f->fd, "GET", "/containers/json");
    moat_session *sessions = NULL;
    size_t n = 0;
    moat_status st;
    assert_int_equal(moat_runtime_list_active(f->rt, &sessions, &n, &st), MOAT_CODE_UNAVAILABLE);
    assert_string_equal(st.reason, "docker_timeout");
    assert_null(sessions);
}

static void test_malformed_json(void **state)
{
    fx *f = *state;
    fake_docker_route(&f->fd, "GET", "/containers/json", 200, "[{\"Id\": \"abc\", ", -1);
    moat_session *sessions = NULL;
    size_t n = 0;
    moat_status st;
    assert_int_equal(moat_runtime_list_active(f->rt, &sessions, &n, &st), MOAT_CODE_INTERNAL);
    assert_string_equal(st.reason, "docker_protocol");
    /* Valid JSON of the wrong shape is also a protocol error, not a crash. */
    fake_docker_route(&f->fd, "POST", "/containers/create", 201, "[1,2,3]", -1);
    moat_session s;
    assert_int_not_equal(create_default(f, CHAT_ID, &s, &st), MOAT_CODE_OK);
    assert_string_equal(st.reason, "sandbox_start_failed");
}

/* Engine answers are parsed strictly: \u0000, a raw control character or bytes that are not
 * UTF-8 make a body "not JSON" (INTERNAL docker_protocol), as with any malformed answer. */
static void test_answer_not_strict_json_is_protocol_error(void **state)
{
    fx *f = *state;
    const char *bad[] = {
        "[{\"Id\":\"abc\\u0000def\",\"Labels\":{}}]", /* would cut the id short */
        "[{\"Id\":\"ab\x01"
        "c\",\"Labels\":{}}]",                  /* raw control character in a string */
        "[\x01{\"Id\":\"abc\",\"Labels\":{}}]", /* and between tokens */
        "[{\"Id\":\"ab\xff"
        "c\",\"Labels\":{}}]", /* not UTF-8 */
        "[{\"Id\":\"ab\xc0\xaf"
        "c\"}]", /* overlong encoding of '/' */
        "[{\"Id\":\"ab\xed\xa0\x80"
        "c\"}]", /* a UTF-16 surrogate */
        "[{\"Id\":\"ab\xe2\x82"
        "\"}]", /* cut short */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        fake_docker_route(&f->fd, "GET", "/containers/json", 200, bad[i], 1);
        moat_session *sessions = NULL;
        size_t n = 0;
        moat_status st;
        assert_int_equal(moat_runtime_list_active(f->rt, &sessions, &n, &st), MOAT_CODE_INTERNAL);
        assert_string_equal(st.reason, "docker_protocol");
        assert_null(sessions);
    }

    /* Well-formed UTF-8 (2-, 3- and 4-byte sequences) and escapes other than \u0000 pass. */
    fake_docker_route(&f->fd, "GET", "/containers/json", 200,
                      "[{\"Id\":\"container-123\",\"State\":\"running\",\"Created\":1775131200,"
                      "\"Image\":\"s\xc3\xa4nd\xe2\x82\xac\xf0\x9f\x90\xb3\\u00e9\\t\","
                      "\"Names\":[\"/" PREFIX SESSION_ID "\"],"
                      "\"Labels\":{\"session_id\":\"" SESSION_ID "\",\"chat_id\":\"" CHAT_ID "\","
                      "\"expires_at\":\"2026-04-02T12:05:00+00:00\"" MANAGED "}}]",
                      -1);
    moat_session *sessions = NULL;
    size_t n = 0;
    moat_status st;
    assert_int_equal(moat_runtime_list_active(f->rt, &sessions, &n, &st), MOAT_CODE_OK);
    assert_int_equal(n, 1);
    assert_string_equal(sessions[0].image, "s\xc3\xa4nd\xe2\x82\xac\xf0\x9f\x90\xb3\xc3\xa9\t");
    free(sessions);

    /* A create answer whose id holds \u0000 starts nothing. */
    fake_docker_route(&f->fd, "POST", "/containers/create", 201,
                      "{\"Id\":\"container-123\\u0000; rm -rf /\"}", -1);
    moat_session s;
    assert_int_equal(create_default(f, CHAT_ID, &s, &st), MOAT_CODE_INTERNAL);
    assert_string_equal(st.reason, "sandbox_start_failed");
    assert_non_null(strstr(st.message, "not JSON"));
    assert_int_equal(fake_docker_count(&f->fd, "POST", "/start"), 0);

    /* An HTTP error whose body is not strict JSON keeps its code; the raw body is the message. */
    fake_docker_route(&f->fd, "GET", "/images/", 404, "{\"message\":\"no such image\\u0000x\"}",
                      -1);
    assert_int_equal(moat_runtime_image_inspect(f->rt, "sandbox:latest", &st), MOAT_CODE_NOT_FOUND);
    assert_string_equal(st.reason, "docker_error");
    assert_non_null(strstr(st.message, "no such image\\u0000x"));
    assert_string_equal(moat_status_detail_get(&st, "docker_status"), "404");
}

/* cJSON numbers are doubles: Created must still be whole seconds whose milliseconds fit
 * int64_t, else the entry is skipped like any malformed one. */
static void test_created_must_be_whole_seconds(void **state)
{
    fx *f = *state;
    /* 9300000000000000 fits int64_t, its milliseconds do not. */
    const char *created[] = {
        "1775131200.5",   "-5",   "1e300",     "9223372036854775807", "9300000000000000",
        "\"1775131200\"", "true", "1775131200"};
    for (size_t i = 0; i < sizeof(created) / sizeof(created[0]); i++) {
        char body[512];
        snprintf(body, sizeof(body),
                 "[{\"Id\":\"container-123\",\"State\":\"running\",\"Created\":%s,"
                 "\"Names\":[\"/" PREFIX SESSION_ID "\"],"
                 "\"Labels\":{\"session_id\":\"" SESSION_ID "\",\"chat_id\":\"" CHAT_ID "\","
                 "\"expires_at\":\"2026-04-02T12:05:00+00:00\"" MANAGED "}}]",
                 created[i]);
        fake_docker_route(&f->fd, "GET", "/containers/json", 200, body, 1);
        moat_session *sessions = NULL;
        size_t n = 9;
        moat_status st;
        assert_int_equal(moat_runtime_list_active(f->rt, &sessions, &n, &st), MOAT_CODE_OK);
        bool last = i + 1 == sizeof(created) / sizeof(created[0]);
        assert_int_equal(n, last ? 1 : 0);
        if (last)
            assert_int_equal(sessions[0].created_at_ms, iso("2026-04-02T12:00:00Z"));
        free(sessions);
    }
}

static void test_list_not_array(void **state)
{
    fx *f = *state;
    fake_docker_route(&f->fd, "GET", "/containers/json", 200, "{\"oops\":true}", -1);
    moat_session *sessions = NULL;
    size_t n = 0;
    moat_status st;
    assert_int_equal(moat_runtime_list_active(f->rt, &sessions, &n, &st), MOAT_CODE_INTERNAL);
    assert_string_equal(st.reason, "docker_protocol");
}

static void test_connection_cut_mid_response(void **state)
{
    fx *f = *state;
    fake_docker_route_cut(&f->fd, "GET", "/containers/json");
    moat_session *sessions = NULL;
    size_t n = 0;
    moat_status st;
    assert_int_equal(moat_runtime_list_active(f->rt, &sessions, &n, &st), MOAT_CODE_UNAVAILABLE);
    assert_string_equal(st.reason, "docker_unavailable");
}

static void test_dead_socket_unavailable(void **state)
{
    fx *f = *state;
    moat_runtime_close(f->rt);
    char dead[160];
    snprintf(dead, sizeof(dead), "%s/nobody-here.sock", f->dir);
    f->cfg.docker_host = dead;
    open_runtime(f);
    moat_session s;
    moat_status st;
    assert_int_equal(create_default(f, CHAT_ID, &s, &st), MOAT_CODE_UNAVAILABLE);
    assert_string_equal(st.reason, "sandbox_start_failed");
    assert_non_null(strstr(st.message, "nobody-here.sock"));
    assert_int_equal(moat_runtime_stop_container(f->rt, "container-123", &st),
                     MOAT_CODE_UNAVAILABLE);
    assert_string_equal(st.reason, "sandbox_stop_failed");
    size_t reaped = 7;
    assert_int_equal(moat_runtime_reap(f->rt, moat_time_now_ms(), &reaped, &st),
                     MOAT_CODE_UNAVAILABLE);
    assert_int_equal(reaped, 0);
}

static void test_version_negotiation(void **state)
{
    fx *f = *state;
    char v[16];
    moat_status st;
    snprintf(f->fd.api_version, sizeof(f->fd.api_version), "1.47");
    assert_int_equal(moat_runtime_docker_version(f->rt, v, &st), MOAT_CODE_OK);
    assert_string_equal(v, "1.44");
    assert_int_equal(moat_runtime_image_inspect(f->rt, "sandbox:latest", &st), MOAT_CODE_OK);
    assert_non_null(fake_docker_find(&f->fd, "GET", "/v1.44/images/sandbox%3Alatest/json"));
    /* Negotiated once. */
    assert_int_equal(fake_docker_count(&f->fd, "GET", "/version"), 1);

    moat_runtime_close(f->rt);
    open_runtime(f);
    snprintf(f->fd.api_version, sizeof(f->fd.api_version), "1.12");
    assert_int_equal(moat_runtime_docker_version(f->rt, v, &st), MOAT_CODE_FAILED_PRECONDITION);
    assert_string_equal(st.reason, "docker_too_old");
}

static void test_image_inspect_not_found(void **state)
{
    fx *f = *state;
    fake_docker_route(&f->fd, "GET", "/images/", 404, "{\"message\":\"No such image: nope\"}", -1);
    moat_status st;
    assert_int_equal(moat_runtime_image_inspect(f->rt, "nope", &st), MOAT_CODE_NOT_FOUND);
    assert_non_null(strstr(st.message, "No such image"));
}

static void test_tcp_endpoint(void **state)
{
    fx *f = *state;
    fake_docker tcp;
    int port = 0;
    assert_int_equal(fake_docker_start_tcp(&tcp, &port), 0);
    moat_runtime_close(f->rt);
    char host[64];
    snprintf(host, sizeof(host), "tcp://127.0.0.1:%d", port);
    f->cfg.docker_host = host;
    open_runtime(f);
    moat_session s;
    moat_status st;
    assert_int_equal(create_default(f, CHAT_ID, &s, &st), MOAT_CODE_OK);
    assert_int_equal(fake_docker_count(&tcp, "POST", "/v1.41/containers/create"), 1);
    assert_int_equal(fake_docker_count(&f->fd, "POST", "/containers/create"), 0);
    moat_runtime_close(f->rt);
    f->rt = NULL;
    fake_docker_stop(&tcp);
    open_runtime(f);
    /* The engine went away: UNAVAILABLE, not a hang or a crash. */
    assert_int_equal(moat_runtime_image_inspect(f->rt, "sandbox:latest", &st),
                     MOAT_CODE_UNAVAILABLE);
}

/* The engine goes away and comes back on the same socket: UNAVAILABLE meanwhile, and the same
 * runtime object works again afterwards without being reopened. */
static void test_engine_restart_recovers(void **state)
{
    fx *f = *state;
    moat_session s;
    moat_status st;
    assert_int_equal(create_default(f, CHAT_ID, &s, &st), MOAT_CODE_OK);
    fake_docker_stop(&f->fd);
    moat_session *list = NULL;
    size_t n = 0;
    assert_int_equal(moat_runtime_list_active(f->rt, &list, &n, &st), MOAT_CODE_UNAVAILABLE);
    assert_int_equal(moat_runtime_stop(f->rt, SESSION_ID, &st), MOAT_CODE_UNAVAILABLE);
    assert_string_equal(st.reason, "sandbox_stop_failed");
    assert_int_equal(fake_docker_start(&f->fd, f->sock), 0);
    char *items[] = {container_json("container-123", SESSION_ID, CHAT_ID,
                                    "2026-04-02T12:05:00+00:00", NULL, true, "running")};
    route_list(f, "/containers/json", items, 1);
    assert_int_equal(moat_runtime_list_active(f->rt, &list, &n, &st), MOAT_CODE_OK);
    assert_int_equal(n, 1);
    free(list);
    assert_int_equal(moat_runtime_stop(f->rt, SESSION_ID, &st), MOAT_CODE_OK);
    assert_int_equal(fake_docker_count(&f->fd, "DELETE", "/containers/container-123"), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_docker_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_malformed_json, setup, teardown),
        cmocka_unit_test_setup_teardown(test_list_not_array, setup, teardown),
        cmocka_unit_test_setup_teardown(test_answer_not_strict_json_is_protocol_error, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_created_must_be_whole_seconds, setup, teardown),
        cmocka_unit_test_setup_teardown(test_connection_cut_mid_response, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dead_socket_unavailable, setup, teardown),
        cmocka_unit_test_setup_teardown(test_version_negotiation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_image_inspect_not_found, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tcp_endpoint, setup, teardown),
        cmocka_unit_test_setup_teardown(test_engine_restart_recovers, setup, teardown),
    };
    return moat_run_group_tests("test_runtime_unit_engine", tests, NULL, NULL);
}
