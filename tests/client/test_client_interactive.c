/* libmoat's interactive exec against a fake moatd (client_fixture.h): every input kind, stdin
 * waiting for the server's window, stdin from a file descriptor, a server that never grants and
 * a connection that drops mid-stdin. */
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

static moat_call *interactive_call(moat_client *c, const moat_interactive_req *r)
{
    moat_call *call = NULL;
    moat_status st;
    assert_int_equal(moat_exec_interactive(c, r, 0, &call, &st), MOAT_OK);
    static moat_exec_event ev;
    assert_int_equal(moat_exec_next(call, 10000, &ev), MOAT_OK);
    assert_int_equal(ev.kind, MOAT_EXEC_INIT);
    assert_true(moat_slice_eq_str(ev.execution_id, "term-1"));
    return call;
}

static void expect_output(moat_call *call, int timeout_ms, const char *text)
{
    static moat_exec_event ev;
    assert_int_equal(moat_exec_next(call, timeout_ms, &ev), MOAT_OK);
    assert_int_equal(ev.kind, MOAT_EXEC_OUTPUT);
    assert_int_equal(ev.stream, MOAT_EXEC_STDOUT);
    assert_int_equal(ev.data.len, strlen(text));
    assert_memory_equal(ev.data.data, text, ev.data.len);
}

/* The start carries every field; stdin, resize and signal each go as one
 * request Message; the connection's fd polls readable for the answers once
 * libmoat has nothing read ahead; close_stdin ends it. */
static void test_interactive_inputs(void **state)
{
    (void)state;
    fake s;
    start_unix(&s);
    moat_client *c = connect_unix(&s);
    moat_status st;
    moat_call *call = NULL;
    moat_interactive_req bad = {.session_id = "sess-1", .tty = true, .rows = 70000, .cols = 80};
    assert_int_equal(moat_exec_interactive(c, &bad, 0, &call, &st), MOAT_E_INVAL);
    assert_int_equal(st.code, MOAT_CODE_INVALID_ARGUMENT);
    assert_string_equal(st.reason, "bad_terminal_size");
    bad.rows = 24;
    bad.cols = 0;
    assert_int_equal(moat_exec_interactive(c, &bad, 0, &call, &st), MOAT_E_INVAL);
    assert_null(call);
    /* a start larger than a frame, and one within a frame but past the window */
    static char command[3 * WINDOW];
    memset(command, 'x', sizeof command - 1);
    moat_interactive_req huge = {.session_id = "sess-1", .command = command};
    assert_int_equal(moat_exec_interactive(c, &huge, 0, &call, &st), MOAT_E_TOO_BIG);
    assert_string_equal(st.reason, "request_too_big");
    command[WINDOW + 10] = '\0';
    assert_int_equal(moat_exec_interactive(c, &huge, 0, &call, &st), MOAT_E_TOO_BIG);
    assert_int_equal(st.code, MOAT_CODE_INVALID_ARGUMENT);
    assert_null(call);
    moat_interactive_req r = {.session_id = "sess-1",
                              .command = "echo",
                              .cwd = "/w",
                              .tty = true,
                              .rows = 24,
                              .cols = 80,
                              .term = "xterm-256color",
                              .attach_id = "term-0",
                              .after_offset = 5};
    call = interactive_call(c, &r);
    assert_string_equal(iseen.session, "sess-1");
    assert_string_equal(iseen.cwd, "/w");
    assert_true(iseen.tty);
    assert_true(iseen.has_size);
    assert_int_equal(iseen.rows, 24);
    assert_int_equal(iseen.cols, 80);
    assert_string_equal(iseen.term, "xterm-256color");
    assert_string_equal(iseen.attach, "term-0");
    assert_int_equal(iseen.after_offset, 5);

    static moat_exec_event ev;
    assert_int_equal(moat_exec_next(call, 0, &ev), MOAT_E_TIMEOUT);
    assert_int_equal(moat_exec_stdin(call, moat_slice_str("hello"), 0), MOAT_OK);
    struct pollfd pfd = {moat_client_fd(c), POLLIN, 0};
    assert_int_equal(poll(&pfd, 1, 10000), 1);
    expect_output(call, 0, "hello");
    assert_int_equal(moat_exec_resize(call, 50, 132, 0), MOAT_OK);
    expect_output(call, 10000, "resize 50x132");
    assert_int_equal(moat_exec_resize(call, 0, 80, 0), MOAT_E_INVAL);
    assert_int_equal(moat_exec_resize(call, 24, 65536, 0), MOAT_E_INVAL);
    assert_int_equal(moat_exec_signal(call, "SIGINT", 0), MOAT_OK);
    expect_output(call, 10000, "signal SIGINT");
    /* More than one message may carry: refused before anything is sent. */
    size_t max = moat_exec_stdin_max(c);
    assert_int_equal(max, WINDOW - 6);
    uint8_t *big = calloc(1, max + 1);
    assert_non_null(big);
    assert_int_equal(moat_exec_stdin(call, (moat_slice){big, max + 1}, 0), MOAT_E_TOO_BIG);
    assert_int_equal(moat_call_send(call, (moat_slice){big, WINDOW + 1}, 0), MOAT_E_TOO_BIG);
    free(big);
    assert_int_equal(moat_exec_close_stdin(call, 0), MOAT_OK);
    assert_int_equal(moat_exec_next(call, 10000, &ev), MOAT_OK);
    assert_int_equal(ev.kind, MOAT_EXEC_EXIT);
    assert_true(ev.exit_known);
    assert_int_equal(ev.exit_code, 0);
    assert_int_equal(moat_exec_next(call, 10000, &ev), MOAT_E_CLOSED);
    assert_int_equal(moat_call_status(call)->code, MOAT_CODE_OK);
    /* An ended call takes no more input. */
    assert_int_equal(moat_exec_stdin(call, moat_slice_str("late"), 0), MOAT_E_CLOSED);
    moat_call_free(call);
    moat_client_close(c);
    stop(&s);
    assert_int_equal(s.window_violations, 0);
}

static void fill_stdin(uint8_t *chunk, size_t len, uint64_t from)
{
    for (size_t i = 0; i < len; i++)
        chunk[i] = stdin_byte(from + i);
}

/* Ends the test: the fake got exactly the sent bytes, in order, each within
 * the credit it had granted. */
static void close_and_check_stdin(fake *s, moat_client *c, moat_call *call, uint64_t sent)
{
    moat_call_free(call);
    moat_client_close(c);
    stop(s);
    assert_int_equal(iseen.stdin_bytes, sent);
    assert_true(iseen.stdin_pattern_ok);
    assert_int_equal(s->window_violations, 0);
}

/* A stdin request of CHUNK bytes: its field's tag and a 3-byte length. */
#define CHUNK_MESSAGE (CHUNK + 4u)

/* 1 MiB of stdin through a 64 KiB window that the server refills only once the
 * client has no room left: each send that finds the window short waits for
 * the grant, keeping the output that arrives meanwhile for moat_exec_next. */
static void test_interactive_send_waits_for_window(void **state)
{
    (void)state;
    fake s;
    start_unix(&s);
    moat_client *c = connect_unix(&s);
    moat_interactive_req r = {.session_id = "sess-1", .command = "slow"};
    moat_call *call = interactive_call(c, &r);
    static uint8_t chunk[CHUNK];
    uint64_t sent = 0;
    size_t waits = 0;
    while (sent < (1u << 20)) {
        if (moat_call_send_window(call) < CHUNK_MESSAGE)
            waits++; /* the credit left cannot take it: this send must wait */
        fill_stdin(chunk, CHUNK, sent);
        assert_int_equal(moat_exec_stdin(call, (moat_slice){chunk, CHUNK}, -1), MOAT_OK);
        sent += CHUNK;
    }
    assert_true(waits >= 15);
    assert_int_equal(moat_exec_close_stdin(call, -1), MOAT_OK);
    static moat_exec_event ev;
    size_t fulls = 0;
    moat_err err;
    while ((err = moat_exec_next(call, 10000, &ev)) == MOAT_OK) {
        if (ev.kind == MOAT_EXEC_OUTPUT) {
            assert_true(ev.data.len == 4 && memcmp(ev.data.data, "full", 4) == 0);
            fulls++;
        }
    }
    assert_int_equal(err, MOAT_E_CLOSED);
    assert_int_equal(moat_call_status(call)->code, MOAT_CODE_OK);
    /* one grant, announced by one "full", for every send that had to wait */
    assert_int_equal(fulls, waits);
    close_and_check_stdin(&s, c, call, sent);
}

/* moat_exec_stdin_from_fd from a file and a pipe (spliced once the routed call stops keeping
 * what it sends) and from a terminal (read): the server gets every byte in order within its
 * credit; an empty non-blocking pipe is MOAT_E_AGAIN and its end 0 bytes. */
static void test_interactive_stdin_from_fd(void **state)
{
    (void)state;
    fake s;
    start_unix(&s);
    moat_client *c = connect_unix(&s);
    moat_interactive_req r = {.session_id = "sess-1", .command = "slow"};
    moat_call *call = interactive_call(c, &r);
    static uint8_t chunk[CHUNK];
    uint64_t sent = 0;
    size_t moved;
    moat_err err;

    char path[] = "/tmp/moat-stdin-XXXXXX";
    int f = mkstemp(path);
    assert_true(f >= 0);
    unlink(path);
    const uint64_t file_bytes = 64u * CHUNK;
    for (uint64_t at = 0; at < file_bytes; at += CHUNK) {
        fill_stdin(chunk, CHUNK, at);
        assert_int_equal(write(f, chunk, CHUNK), CHUNK);
    }
    assert_int_equal(lseek(f, 0, SEEK_SET), 0);
    while ((err = moat_exec_stdin_from_fd(call, f, CHUNK + 100, &moved, -1)) == MOAT_OK &&
           moved > 0)
        sent += moved;
    assert_int_equal(err, MOAT_OK);
    assert_int_equal(sent, file_bytes);
    close(f);
    /* past a window's worth, the routed call keeps nothing and the bytes went by splice */
    assert_false(moat__call_records(call));

    int p[2];
    assert_int_equal(pipe2(p, O_NONBLOCK), 0);
    fill_stdin(chunk, CHUNK, sent);
    assert_int_equal(write(p[1], chunk, CHUNK), CHUNK);
    assert_int_equal(moat_exec_stdin_from_fd(call, p[0], 2 * CHUNK, &moved, -1), MOAT_OK);
    assert_int_equal(moved, CHUNK);
    sent += moved;
    assert_int_equal(moat_exec_stdin_from_fd(call, p[0], CHUNK, &moved, -1), MOAT_E_AGAIN);
    assert_int_equal(moved, 0);
    close(p[1]);
    assert_int_equal(moat_exec_stdin_from_fd(call, p[0], CHUNK, &moved, -1), MOAT_OK);
    assert_int_equal(moved, 0);
    close(p[0]);

    int master = posix_openpt(O_RDWR | O_NOCTTY);
    assert_true(master >= 0);
    assert_int_equal(grantpt(master), 0);
    assert_int_equal(unlockpt(master), 0);
    int tty = open(ptsname(master), O_RDWR | O_NOCTTY);
    assert_true(tty >= 0);
    struct termios raw;
    assert_int_equal(tcgetattr(tty, &raw), 0);
    cfmakeraw(&raw);
    assert_int_equal(tcsetattr(tty, TCSANOW, &raw), 0);
    fill_stdin(chunk, 1000, sent);
    assert_int_equal(write(master, chunk, 1000), 1000);
    for (uint64_t got = 0; got < 1000; got += moved) {
        assert_int_equal(moat_exec_stdin_from_fd(call, tty, CHUNK, &moved, -1), MOAT_OK);
        assert_true(moved > 0);
    }
    sent += 1000;
    close(tty);
    close(master);

    assert_int_equal(moat_exec_close_stdin(call, -1), MOAT_OK);
    static moat_exec_event ev;
    while ((err = moat_exec_next(call, 10000, &ev)) == MOAT_OK)
        ;
    assert_int_equal(err, MOAT_E_CLOSED);
    assert_int_equal(moat_call_status(call)->code, MOAT_CODE_OK);
    close_and_check_stdin(&s, c, call, sent);
}

/* A server that never grants: sends go while the first window lasts, then a
 * send times out with nothing sent, and the server never got more than its
 * window. */
static void test_interactive_never_granted(void **state)
{
    (void)state;
    fake s;
    start_unix(&s);
    moat_client *c = connect_unix(&s);
    moat_interactive_req r = {.session_id = "sess-1", .command = "hold"};
    moat_call *call = interactive_call(c, &r);
    static uint8_t chunk[CHUNK];
    uint64_t sent = 0;
    moat_err err;
    for (;;) {
        fill_stdin(chunk, CHUNK, sent);
        if ((err = moat_exec_stdin(call, (moat_slice){chunk, CHUNK}, 0)) != MOAT_OK)
            break;
        sent += CHUNK;
    }
    assert_int_equal(err, MOAT_E_TIMEOUT);
    assert_true(moat_call_send_window(call) < CHUNK_MESSAGE);
    assert_int_equal(sent, (WINDOW / CHUNK_MESSAGE) * CHUNK);
    assert_int_equal(moat_exec_stdin(call, (moat_slice){chunk, CHUNK}, 50), MOAT_E_TIMEOUT);
    /* Small messages still go while they fit. */
    uint32_t left = moat_call_send_window(call);
    assert_int_equal(moat_exec_stdin(call, (moat_slice){chunk, 1}, 0), MOAT_OK);
    assert_int_equal(moat_call_send_window(call), left - 3);
    sent += 1;
    close_and_check_stdin(&s, c, call, sent);
}

/* The connection drops while stdin is going out: the send fails CLOSED, the
 * call ends UNAVAILABLE, and later sends and calls are refused. */
static void test_interactive_connection_drops(void **state)
{
    (void)state;
    fake s;
    start_unix(&s);
    moat_client *c = connect_unix(&s);
    moat_interactive_req r = {.session_id = "sess-1", .command = "drop"};
    moat_call *call = interactive_call(c, &r);
    static uint8_t chunk[CHUNK];
    moat_err err;
    int sends = 0;
    while ((err = moat_exec_stdin(call, (moat_slice){chunk, CHUNK}, -1)) == MOAT_OK)
        assert_true(++sends < 100000);
    assert_int_equal(err, MOAT_E_CLOSED);
    static moat_exec_event ev;
    assert_int_equal(moat_exec_next(call, 10000, &ev), MOAT_E_CLOSED);
    assert_int_equal(moat_call_status(call)->code, MOAT_CODE_UNAVAILABLE);
    assert_int_equal(moat_exec_close_stdin(call, -1), MOAT_E_CLOSED);
    moat_call *other;
    moat_status st;
    assert_int_equal(moat_exec_interactive(c, &r, 0, &other, &st), MOAT_E_CLOSED);
    assert_int_equal(st.code, MOAT_CODE_UNAVAILABLE);
    moat_call_free(call);
    moat_client_close(c);
    stop(&s);

    /* A grant past the window's limit breaks the protocol: the connection ends. */
    start_unix(&s);
    c = connect_unix(&s);
    moat_interactive_req over = {.session_id = "sess-1", .command = "overgrant"};
    call = interactive_call(c, &over);
    assert_int_equal(moat_exec_next(call, 10000, &ev), MOAT_E_CLOSED);
    assert_int_equal(moat_call_status(call)->code, MOAT_CODE_INTERNAL);
    assert_string_equal(moat_call_status(call)->reason, "flow_control_error");
    assert_int_equal(moat_exec_stdin(call, moat_slice_str("x"), 0), MOAT_E_CLOSED);
    moat_call_free(call);
    moat_client_close(c);
    stop(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_interactive_inputs),
        cmocka_unit_test(test_interactive_send_waits_for_window),
        cmocka_unit_test(test_interactive_stdin_from_fd),
        cmocka_unit_test(test_interactive_never_granted),
        cmocka_unit_test(test_interactive_connection_drops),
    };
    return moat_run_group_tests("test_client_interactive", tests, NULL, NULL);
}
