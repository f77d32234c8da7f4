/* The fixture the PTY integration programs share (test_execd_pty_session, _stdin, _limits):
 * one moat-execd behind a token for the group, and the REST and WebSocket helpers more than
 * one program uses. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include "moat_test.h"

#include "pty_fixture.h"

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

xd_proc xp;
xd_target unix_t, tcp_t;
const char token[] = "pty-test-token";

void nap_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* POST /pty; returns the session id (static). */
const char *create(const xd_target *t, const char *body)
{
    static char id[64];
    xd_resp r = xd_http(t, "POST", "/pty", body, "Content-Type: application/json");
    assert_int_equal(r.status, 201);
    cJSON *j = xd_json(&r);
    assert_non_null(j);
    const char *sid = moat_json_str(j, "session_id", NULL);
    assert_non_null(sid);
    assert_int_equal(strlen(sid), 36);
    snprintf(id, sizeof(id), "%s", sid);
    cJSON_Delete(j);
    xd_resp_free(&r);
    return id;
}

/* A client that just left may still count as attached (409) until execd has seen it go. */
xd_ws *attach(const xd_target *t, const char *id, const char *query)
{
    char path[256];
    snprintf(path, sizeof(path), "/pty/%s/ws%s", id, query);
    long status = 409;
    xd_ws *ws = NULL;
    for (int i = 0; i < WAIT_MS / 20 && status == 409; i++)
        if ((ws = xd_ws_open(t, path, &status, NULL)) == NULL && status == 409)
            nap_ms(20);
    assert_int_equal(status, 101);
    assert_non_null(ws);
    return ws;
}

/* The next text message, parsed; binary output before it is skipped. */
cJSON *next_json(xd_ws *ws)
{
    for (;;) {
        xd_ws_msg m;
        assert_true(xd_ws_next(ws, &m, WAIT_MS));
        if (m.opcode == 1) {
            cJSON *j = moat_json_parse((const char *)m.data, m.len, MOAT_JSON_NUL_REJECT);
            xd_ws_msg_free(&m);
            assert_non_null(j);
            return j;
        }
        assert_int_equal(m.opcode, 2);
        xd_ws_msg_free(&m);
    }
}

void expect_type(xd_ws *ws, const char *type, const char *code)
{
    cJSON *j = next_json(ws);
    assert_string_equal(moat_json_str(j, "type", NULL), type);
    if (code != NULL)
        assert_string_equal(moat_json_str(j, "code", NULL), code);
    cJSON_Delete(j);
}

void expect_connected(xd_ws *ws, const char *id, const char *mode)
{
    cJSON *j = next_json(ws);
    assert_string_equal(moat_json_str(j, "type", NULL), "connected");
    assert_string_equal(moat_json_str(j, "session_id", NULL), id);
    assert_string_equal(moat_json_str(j, "mode", NULL), mode);
    cJSON_Delete(j);
}

/* The close frame that ends the connection, skipping messages before it. */
uint16_t expect_close(xd_ws *ws, char *reason, size_t reason_len)
{
    for (;;) {
        xd_ws_msg m;
        assert_true(xd_ws_next(ws, &m, WAIT_MS));
        if (m.opcode == 8) {
            if (reason != NULL)
                snprintf(reason, reason_len, "%.*s", (int)(m.len > 2 ? m.len - 2 : 0),
                         (const char *)m.data + 2);
            uint16_t code = m.close_code;
            xd_ws_msg_free(&m);
            return code;
        }
        xd_ws_msg_free(&m);
    }
}

void type_line(xd_ws *ws, const char *line)
{
    size_t n = strlen(line);
    char *frame = malloc(n + 1);
    frame[0] = 0x00;
    memcpy(frame + 1, line, n);
    assert_true(xd_ws_send(ws, 2, frame, n + 1));
    free(frame);
}

void send_json(xd_ws *ws, const char *json)
{
    assert_true(xd_ws_send(ws, 1, json, strlen(json)));
}

cJSON *status_of(const char *id, long want)
{
    char path[128];
    snprintf(path, sizeof(path), "/pty/%s", id);
    xd_resp r = xd_http(&unix_t, "GET", path, NULL, NULL);
    assert_int_equal(r.status, want);
    cJSON *j = want == 200 ? xd_json(&r) : NULL;
    xd_resp_free(&r);
    return j;
}

void delete_session(const char *id, long want)
{
    char path[128];
    snprintf(path, sizeof(path), "/pty/%.64s", id);
    xd_resp r = xd_http(&unix_t, "DELETE", path, NULL, NULL);
    assert_int_equal(r.status, want);
    if (want == 404)
        assert_string_equal(xd_error_code(&r), "CONTEXT_NOT_FOUND");
    xd_resp_free(&r);
}

int pty_fixture_setup(void **state)
{
    (void)state;
    curl_global_init(CURL_GLOBAL_ALL);
    if (!xd_start(&xp, (const char *const[]){"--access-token", token, NULL}))
        return -1;
    unix_t = xp.unix_t;
    tcp_t = xp.tcp_t;
    unix_t.token = tcp_t.token = token;
    return 0;
}

int pty_fixture_teardown(void **state)
{
    (void)state;
    xd_stop(&xp);
    curl_global_cleanup();
    return 0;
}
