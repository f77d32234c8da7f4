/* libmoat's calls against a fake moatd (client_fixture.h): streamed output through flow-control
 * windows, multiplexed calls and cancel, file writes in pieces, and the typed calls. */
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

#include "moat_test.h"

#include "client_fixture.h"

static void test_streaming_with_windows(void **state)
{
    (void)state;
    fake s;
    start_unix(&s);
    moat_client *c = connect_unix(&s);
    uint8_t req[256];
    size_t n;
    moat_run_command_req r = {.session_id = "s1", .command = "yes"};
    assert_int_equal(moat_run_command_req_encode(&r, req, sizeof req, &n), MOAT_OK);
    moat_call *call;
    assert_int_equal(
        moat_call_start(c, "/moat.v1.Exec/RunCommand", 10000, NULL, 0, (moat_slice){req, n}, &call),
        MOAT_OK);
    moat_slice msg;
    static moat_exec_event ev;
    uint64_t seq = 0;
    size_t out_bytes = 0;
    bool exited = false;
    moat_err err;
    while ((err = moat_call_recv(call, 10000, &msg)) == MOAT_OK) {
        assert_int_equal(moat_exec_event_decode(msg, &ev), MOAT_OK);
        assert_int_equal(ev.sequence, ++seq);
        if (ev.kind == MOAT_EXEC_OUTPUT) {
            uint32_t i = (uint32_t)ev.sequence - 2;
            assert_int_equal(ev.stream, i % 2 ? MOAT_EXEC_STDERR : MOAT_EXEC_STDOUT);
            assert_int_equal(ev.data.len, CHUNK);
            for (size_t j = 0; j < CHUNK; j++)
                assert_int_equal(ev.data.data[j], (uint8_t)(i * 7 + j));
            out_bytes += ev.data.len;
        } else if (ev.kind == MOAT_EXEC_EXIT) {
            exited = true;
            assert_true(ev.exit_known);
            assert_int_equal(ev.exit_code, 3);
        }
    }
    assert_int_equal(err, MOAT_E_CLOSED);
    assert_true(exited);
    assert_int_equal(out_bytes, OUT_CHUNKS * CHUNK);
    assert_int_equal(moat_call_status(call)->code, MOAT_CODE_OK);
    moat_call_free(call);
    moat_client_close(c);
    stop(&s);
    /* Three windows of data could only flow because updates were sent. */
    assert_true(s.updates_seen >= 2);
}

static void test_multiplexed_and_cancel(void **state)
{
    (void)state;
    fake s;
    start_unix(&s);
    moat_client *c = connect_unix(&s);
    moat_call *a, *b, *h;
    assert_int_equal(moat_call_start(c, "/test/Echo", 0, NULL, 0, moat_slice_str("first"), &a),
                     MOAT_OK);
    assert_int_equal(moat_call_start(c, "/test/Echo", 0, NULL, 0, moat_slice_str("second"), &b),
                     MOAT_OK);
    moat_slice msg;
    /* Read b first: a's message and End arrive meanwhile and are kept. */
    assert_int_equal(moat_call_recv(b, 5000, &msg), MOAT_OK);
    assert_int_equal(msg.len, 6);
    assert_memory_equal(msg.data, "second", 6);
    assert_int_equal(moat_call_recv(b, 5000, &msg), MOAT_E_CLOSED);
    assert_int_equal(moat_call_recv(a, 5000, &msg), MOAT_OK);
    assert_int_equal(msg.len, 5);
    assert_memory_equal(msg.data, "first", 5);
    assert_int_equal(moat_call_recv(a, 5000, &msg), MOAT_E_CLOSED);
    assert_int_equal(moat_call_status(a)->code, MOAT_CODE_OK);
    moat_call_free(a);
    moat_call_free(b);

    moat_kv md[] = {{moat_slice_str("request_id"), moat_slice_str("r1")}};
    assert_int_equal(moat_call_start(c, "/test/Hang", 0, md, 1, moat_slice_str("x"), &h), MOAT_OK);
    assert_int_equal(moat_call_recv(h, 50, &msg), MOAT_E_TIMEOUT);
    assert_int_equal(moat_call_cancel(h, "bored"), MOAT_OK);
    assert_int_equal(moat_call_recv(h, 5000, &msg), MOAT_E_CLOSED);
    assert_int_equal(moat_call_status(h)->code, MOAT_CODE_CANCELLED);
    moat_call_free(h);
    moat_client_close(c);
    stop(&s);
}

/* A file larger than a request goes in pieces at increasing offsets, each
 * within moat_file_write_max, which is a bound that really fits. */
static void test_write_pieces(void **state)
{
    (void)state;
    fake s;
    start_unix(&s);
    moat_client *c = connect_unix(&s);
    nwrites = 0;
    wfile_exists = false;
    const char *sess = "sess-1", *path = "/workspace/big.bin";
    size_t max = moat_file_write_max(c, sess, path);
    /* the fake's window (64 KiB) is below its frame size less 4 KiB */
    assert_int_equal(max, WINDOW - strlen(sess) - strlen(path) - 40);
    static uint8_t data[200000];
    for (size_t i = 0; i < sizeof data; i++)
        data[i] = (uint8_t)(i * 31 + 7);
    moat_status st;
    uint64_t written = 0;
    /* offset > 0 before the file exists: the server's NOT_FOUND comes back */
    moat_write_req early = {sess, path, {data, 10}, 0, 5};
    assert_int_equal(moat_file_write(c, &early, 5000, &written, &st), MOAT_E_REMOTE);
    assert_int_equal(st.code, MOAT_CODE_NOT_FOUND);
    nwrites = 0;
    size_t off = 0, pieces = 0;
    do {
        size_t n = sizeof data - off < max ? sizeof data - off : max;
        moat_write_req r = {sess, path, {data + off, n}, off == 0 ? 0640 : 0, off};
        assert_int_equal(moat_file_write(c, &r, 5000, &written, &st), MOAT_OK);
        assert_int_equal(written, n);
        off += n;
        pieces++;
    } while (off < sizeof data);
    assert_int_equal(pieces, (sizeof data + max - 1) / max);
    assert_int_equal(nwrites, pieces);
    for (size_t i = 0; i < nwrites; i++) {
        assert_int_equal(writes[i].offset, i * max);
        assert_int_equal(writes[i].len, i + 1 < nwrites ? max : sizeof data - i * max);
        assert_int_equal(writes[i].mode, i == 0 ? 0640 : 0);
        assert_string_equal(writes[i].path, path);
        assert_string_equal(writes[i].session, sess);
    }
    assert_int_equal(wfile_len, sizeof data);
    assert_memory_equal(wfile, data, sizeof data);
    /* an empty write at offset 0 truncates (creates) the file */
    moat_write_req empty = {sess, path, {NULL, 0}, 0, 0};
    assert_int_equal(moat_file_write(c, &empty, 5000, &written, &st), MOAT_OK);
    assert_int_equal(written, 0);
    assert_int_equal(wfile_len, 0);
    /* a request larger than a frame: refused locally */
    uint64_t before = nwrites;
    size_t frame = moat_client_get_limits(c)->max_frame_size;
    uint8_t *big = calloc(1, frame);
    assert_non_null(big);
    moat_write_req r = {sess, path, {big, frame}, 0, 0};
    moat_err err = moat_file_write(c, &r, 5000, &written, &st);
    free(big);
    assert_int_equal(err, MOAT_E_TOO_BIG);
    assert_int_equal(st.code, MOAT_CODE_INVALID_ARGUMENT);
    assert_int_equal(nwrites, before);
    moat_client_close(c);
    stop(&s);
}

/* Sessions seen by a listing's callback, which stops after `stop_after`. */
typedef struct seen {
    size_t count, stop_after;
    char last[8];
} seen;

static bool count_session(const moat_session *session, void *arg)
{
    seen *v = arg;
    v->count++;
    moat_slice_copy(session->session_id, v->last, sizeof v->last);
    return v->count < v->stop_after;
}

/* Typed calls decode into moat's structs; a listing stops when its callback says so and
 * still succeeds; a server's error comes back with its reason. */
static void test_typed_calls(void **state)
{
    (void)state;
    fake s;
    start_unix(&s);
    moat_client *c = connect_unix(&s);
    moat_status st;
    moat_command_status cs;
    assert_int_equal(moat_exec_status(c, "sess-1", "ex-1", 5000, &cs, &st), MOAT_OK);
    assert_true(moat_slice_eq_str(cs.execution_id, "ex-1"));
    assert_true(moat_slice_eq_str(cs.command, "sleep 9"));
    assert_false(cs.running);
    assert_true(cs.exited);
    assert_false(cs.exit_known);
    assert_true(moat_slice_eq_str(cs.exit_unknown_reason, "killed by a signal"));
    assert_true(moat_slice_eq_str(cs.error, "signal: killed"));
    assert_int_equal(cs.started_at_ms, 1718000000000);
    assert_int_equal(cs.finished_at_ms, 1718000001000);

    seen all = {0, 100, ""}, two = {0, 2, ""};
    assert_int_equal(moat_session_list(c, NULL, 5000, count_session, &all, &st), MOAT_OK);
    assert_int_equal(all.count, 3);
    assert_string_equal(all.last, "s-3");
    assert_int_equal(moat_session_list(c, NULL, 5000, count_session, &two, &st), MOAT_OK);
    assert_int_equal(st.code, MOAT_CODE_OK);
    assert_int_equal(two.count, 2);
    assert_string_equal(two.last, "s-2");

    assert_int_equal(moat_exec_interrupt(c, "sess-1", "ex-9", 5000, &st), MOAT_E_REMOTE);
    assert_int_equal(st.code, MOAT_CODE_NOT_FOUND);
    assert_string_equal(st.reason, "execution_not_found");
    moat_client_close(c);
    stop(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_streaming_with_windows),
        cmocka_unit_test(test_multiplexed_and_cancel),
        cmocka_unit_test(test_write_pieces),
        cmocka_unit_test(test_typed_calls),
    };
    return moat_run_group_tests("test_client_calls", tests, NULL, NULL);
}
