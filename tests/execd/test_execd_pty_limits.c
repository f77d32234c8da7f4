/* What execd's /pty refuses and how many sessions it keeps (integration, the real
 * moat-execd): bad requests, the token, 64 live sessions, released ones and their cap. Waits
 * are generous bounds against a hang, never a measure. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include "moat_test.h"

#include "pty_fixture.h"

#include <stdio.h>
#include <string.h>

static void test_bad_requests(void **state)
{
    (void)state;
    xd_resp r = xd_http(&unix_t, "POST", "/pty", "{\"cwd\":5}", NULL);
    assert_int_equal(r.status, 400);
    xd_resp_free(&r);
    r = xd_http(&unix_t, "POST", "/pty", "{\"command\":\"x\\u0000y\"}", NULL);
    assert_int_equal(r.status, 400);
    xd_resp_free(&r);
    const char *id = create(&unix_t, NULL);
    char path[128];
    snprintf(path, sizeof(path), "/pty/%s/ws", id);
    r = xd_http(&unix_t, "GET", path, NULL, NULL); /* not an upgrade */
    assert_int_equal(r.status, 400);
    xd_resp_free(&r);
    long status;
    snprintf(path, sizeof(path), "/pty/%s/ws?term=a%%3Bb", id);
    assert_null(xd_ws_open(&unix_t, path, &status, NULL));
    assert_int_equal(status, 400);
    assert_null(xd_ws_open(&unix_t, "/pty/00000000-0000-0000-0000-000000000000/ws", &status, NULL));
    assert_int_equal(status, 404);
    /* The token guards the WebSocket like every endpoint. */
    xd_target no_token = unix_t;
    no_token.token = NULL;
    snprintf(path, sizeof(path), "/pty/%s/ws", id);
    assert_null(xd_ws_open(&no_token, path, &status, NULL));
    assert_int_equal(status, 401);
    r = xd_http(&no_token, "POST", "/pty", NULL, NULL);
    assert_int_equal(r.status, 401);
    xd_resp_free(&r);
    delete_session(id, 200);

    /* Sessions are bounded (64): one more is 429, a limit the client can act on. */
    char ids[64][40];
    for (int i = 0; i < 64; i++)
        snprintf(ids[i], sizeof(ids[i]), "%s", create(&unix_t, NULL));
    r = xd_http(&unix_t, "POST", "/pty", NULL, NULL);
    assert_int_equal(r.status, 429);
    xd_resp_free(&r);
    for (int i = 0; i < 64; i++)
        delete_session(ids[i], 200);
}

/* Runs a session to its end as a client does: attaches in the mode asked, sends stdin and
 * close_stdin, reads to the close 1000; returns the exit code, the output in out. */
static int run_to_exit(const char *id, bool pipe_mode, const char *in, char *out, size_t out_len)
{
    xd_ws *ws = attach(&unix_t, id, pipe_mode ? "?pty=0" : "?pty=1");
    expect_connected(ws, id, pipe_mode ? "pipe" : "pty");
    if (in != NULL) {
        type_line(ws, in);
        send_json(ws, "{\"type\":\"close_stdin\"}");
    }
    out[0] = '\0';
    int exit_code = -1000;
    for (;;) {
        xd_ws_msg m;
        assert_true(xd_ws_next(ws, &m, WAIT_MS));
        if (m.opcode == 2 && m.len > 0 && m.data[0] == 1) {
            size_t have = strlen(out);
            snprintf(out + have, out_len - have, "%.*s", (int)(m.len - 1),
                     (const char *)m.data + 1);
        } else if (m.opcode == 1) {
            cJSON *j = moat_json_parse((const char *)m.data, m.len, MOAT_JSON_NUL_REJECT);
            assert_string_equal(moat_json_str(j, "type", NULL), "exit");
            exit_code = (int)xd_json_i64(j, "exit_code");
            cJSON_Delete(j);
        } else if (m.opcode == 8) {
            assert_int_equal(m.close_code, 1000);
            xd_ws_msg_free(&m);
            break;
        }
        xd_ws_msg_free(&m);
    }
    xd_ws_close(ws);
    return exit_code;
}

/* Issue 14: a session whose process has ended and whose exit a client has taken no longer
 * counts against the 64 live sessions, so commands run one after another never hit the limit
 * (they did at the 65th, for the idle timeout's 30 minutes). Released sessions still answer
 * GET and a late attach (connected, exit, close) and DELETE; past 256 of them the oldest goes. */
static void test_sequential_sessions_never_fill_the_table(void **state)
{
    (void)state;
    char first[64] = "", id[64] = "", out[256];
    for (int i = 0; i < 200; i++) {
        snprintf(id, sizeof(id), "%s", create(&unix_t, "{\"command\":\"wc -l; exit 4\"}"));
        if (i == 0)
            snprintf(first, sizeof(first), "%s", id);
        assert_int_equal(run_to_exit(id, true, "a\nb\n", out, sizeof(out)), 4);
        assert_string_equal(out, "2\n");
    }
    for (int i = 0; i < 200; i++) {
        snprintf(id, sizeof(id), "%s", create(&unix_t, "{\"command\":\"printf pty-ok; exit 3\"}"));
        assert_int_equal(run_to_exit(id, false, NULL, out, sizeof(out)), 3);
        assert_string_equal(out, "pty-ok");
    }
    cJSON *j = status_of(id, 200);
    assert_false(cJSON_IsTrue(cJSON_GetObjectItem(j, "running")));
    assert_int_equal(xd_json_i64(j, "output_offset"), 6);
    cJSON_Delete(j);
    /* attached again: the exit once more (the ring went with the release), and still no slot */
    assert_int_equal(run_to_exit(id, false, NULL, out, sizeof(out)), 3);
    assert_string_equal(out, "");
    assert_null(status_of(first, 404)); /* the oldest of more than 256 released ones went */
    delete_session(id, 200);
    delete_session(id, 404);
}

/* POST /pty until it is not 429: the slot a client freed comes back once execd's session
 * thread has seen that client go (a bound against a hang, not a measure). */
static const char *create_once_freed(void)
{
    static char id[64];
    for (int i = 0; i < WAIT_MS / 20; i++) {
        xd_resp r = xd_http(&unix_t, "POST", "/pty", NULL, NULL);
        cJSON *j = r.status == 201 ? xd_json(&r) : NULL;
        const char *sid = j != NULL ? moat_json_str(j, "session_id", NULL) : NULL;
        snprintf(id, sizeof(id), "%s", sid != NULL ? sid : "");
        cJSON_Delete(j);
        long status = r.status;
        xd_resp_free(&r);
        if (status != 429) {
            assert_int_equal(status, 201);
            assert_int_equal(strlen(id), 36);
            return id;
        }
        nap_ms(20);
    }
    fail_msg("the freed slot never came back");
    return NULL;
}

/* The limit still holds against a client that keeps sessions open: 64 live ones (running and
 * attached, running with their client gone, or never attached) and the 65th is 429
 * TOO_MANY_SESSIONS; one that ends, or one deleted, lets exactly one more in. */
static void test_held_sessions_keep_the_limit(void **state)
{
    (void)state;
    char ids[64][64];
    xd_ws *held[64] = {NULL};
    for (int i = 0; i < 64; i++) {
        snprintf(ids[i], sizeof(ids[i]), "%s", create(&unix_t, "{\"command\":\"cat\"}"));
        if (i % 3 == 2)
            continue; /* never attached */
        held[i] = attach(&unix_t, ids[i], i % 2 == 0 ? "?pty=0" : "?pty=1");
        expect_connected(held[i], ids[i], i % 2 == 0 ? "pipe" : "pty");
        if (i % 3 == 1) { /* running, its client gone: kept for a reattach */
            xd_ws_close(held[i]);
            held[i] = NULL;
        }
    }
    xd_resp r = xd_http(&unix_t, "POST", "/pty", NULL, NULL);
    assert_int_equal(r.status, 429);
    assert_string_equal(xd_error_code(&r), "TOO_MANY_SESSIONS");
    xd_resp_free(&r);

    /* cat in pipe mode ends with its stdin: its client takes the exit and goes */
    send_json(held[0], "{\"type\":\"close_stdin\"}");
    assert_int_equal(expect_close(held[0], NULL, 0), 1000);
    xd_ws_close(held[0]);
    held[0] = NULL;
    char extra[2][64];
    snprintf(extra[0], sizeof(extra[0]), "%s", create_once_freed());
    r = xd_http(&unix_t, "POST", "/pty", NULL, NULL);
    assert_int_equal(r.status, 429);
    xd_resp_free(&r);
    /* DELETE frees its slot at once */
    delete_session(ids[1], 200);
    snprintf(extra[1], sizeof(extra[1]), "%s", create(&unix_t, NULL));
    r = xd_http(&unix_t, "POST", "/pty", NULL, NULL);
    assert_int_equal(r.status, 429);
    xd_resp_free(&r);

    for (int i = 0; i < 64; i++)
        if (held[i] != NULL)
            xd_ws_close(held[i]);
    for (int i = 0; i < 64; i++)
        if (i != 1)
            delete_session(ids[i], 200);
    delete_session(extra[0], 200);
    delete_session(extra[1], 200);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_requests),
        cmocka_unit_test(test_sequential_sessions_never_fill_the_table),
        cmocka_unit_test(test_held_sessions_keep_the_limit),
    };
    return moat_run_group_tests("test_execd_pty_limits", tests, pty_fixture_setup,
                                pty_fixture_teardown);
}
