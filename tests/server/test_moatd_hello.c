/* Integration tests of the real moatd binary without Docker (its Docker socket is dead), over
 * raw frames on a real socket: the hello and its token, and who gets a connection — hello and
 * idle timeouts, the connection limit, the budget of pending hellos, throttled failed hellos
 * and an accept burst. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <netinet/in.h>
#include <poll.h>

#include "moat_test.h"

#include "moat/v1/health.pb-c.h"
#include "moat/v1/sandbox.pb-c.h"
#include "moatd_fixture.h"

static void test_hello_ack_limits(void **state)
{
    (void)state;
    raw_conn *c = raw_connect(P.port);
    moat_frame ack;
    assert_int_equal(raw_hello(c, "sesame", &ack), 1);
    assert_int_equal(ack.kind, MOAT_FRAME_HELLO_ACK);
    assert_int_equal(ack.u.hello_ack.protocol_version, 1);
    assert_int_equal(ack.u.hello_ack.max_frame_size, 1048576);
    assert_int_equal(ack.u.hello_ack.initial_window, 1048576);
    assert_int_equal(ack.u.hello_ack.max_concurrent_streams, 3);
    assert_true(ack.u.hello_ack.server_version.len > 6);
    assert_memory_equal(ack.u.hello_ack.server_version.data, "moatd/", 6);
    raw_close(c);
}

static void test_wrong_and_missing_token(void **state)
{
    (void)state;
    const char *tokens[] = {"sesamE", "sesame-and-more", "", NULL};
    for (int i = 0; i < 4; i++) {
        raw_conn *c = raw_connect(P.port);
        moat_frame f;
        assert_int_equal(raw_hello(c, tokens[i], &f), 1);
        assert_true(frame_is_go_away(&f, MOAT_CODE_UNAUTHENTICATED));
        assert_true(drains_to_eof(c));
        raw_close(c);
    }
}

static void test_call_before_hello_is_refused(void **state)
{
    (void)state;
    raw_conn *c = raw_connect(P.port);
    Moat__V1__HealthCheckRequest req = MOAT__V1__HEALTH_CHECK_REQUEST__INIT;
    raw_call(c, "/moat.v1.Health/Check", 0, &req.base);
    moat_frame f;
    assert_int_equal(raw_recv(c, &f, 10000), 1);
    assert_true(frame_is_go_away(&f, MOAT_CODE_INVALID_ARGUMENT));
    assert_true(drains_to_eof(c));
    raw_close(c);
}

static bool message_starts(const moat_frame *f, const char *prefix)
{
    size_t n = strlen(prefix);
    return f->u.go_away.message.len >= n && memcmp(f->u.go_away.message.data, prefix, n) == 0;
}

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* --- tests with their own server ------------------------------------------------ */

/* Each check has its own server, with only the timeout it is about short: a 1 s timeout
 * elsewhere would race the check, most of all under valgrind. */
static void test_hello_timeout(void **state)
{
    (void)state;
    moatd_proc p;
    const char *extra[] = {"--hello_timeout_seconds=1", NULL};
    assert_true(moatd_start(&p, false, extra));
    /* No hello: closed after hello_timeout_seconds. */
    raw_conn *silent = raw_connect(p.port);
    moat_frame f;
    assert_int_equal(raw_recv(silent, &f, 15000), 1);
    assert_true(frame_is_go_away(&f, MOAT_CODE_DEADLINE_EXCEEDED));
    assert_true(drains_to_eof(silent));
    raw_close(silent);
    assert_int_equal(moatd_stop(&p), 0);
    moatd_remove_dir(p.state_dir);
}

static void test_idle_timeout(void **state)
{
    (void)state;
    moatd_proc p;
    const char *extra[] = {"--hello_timeout_seconds=60", "--idle_timeout_seconds=1", NULL};
    assert_true(moatd_start(&p, false, extra));
    /* Hello, then silence: closed as idle. */
    raw_conn *idle = raw_connect(p.port);
    moat_frame f;
    assert_int_equal(raw_hello(idle, NULL, &f), 1);
    assert_int_equal(f.kind, MOAT_FRAME_HELLO_ACK);
    assert_int_equal(raw_recv(idle, &f, 15000), 1);
    assert_true(frame_is_go_away(&f, MOAT_CODE_UNAVAILABLE));
    assert_true(drains_to_eof(idle));
    raw_close(idle);
    assert_int_equal(moatd_stop(&p), 0);
    moatd_remove_dir(p.state_dir);
}

static void test_connection_limit(void **state)
{
    (void)state;
    moatd_proc p;
    const char *extra[] = {"--hello_timeout_seconds=60", "--idle_timeout_seconds=600",
                           "--max_connections=3", NULL};
    assert_true(moatd_start(&p, false, extra));
    moat_frame f;
    /* It counts authenticated connections, and refuses the hello past it. */
    raw_conn *cs[3];
    for (int i = 0; i < 3; i++) {
        cs[i] = raw_connect(p.port);
        assert_non_null(cs[i]);
        assert_int_equal(raw_hello(cs[i], NULL, &f), 1);
        assert_int_equal(f.kind, MOAT_FRAME_HELLO_ACK);
    }
    raw_conn *extra_conn = raw_connect(p.port);
    assert_int_equal(raw_hello(extra_conn, NULL, &f), 1);
    assert_true(frame_is_go_away(&f, MOAT_CODE_RESOURCE_EXHAUSTED));
    raw_close(extra_conn);
    for (int i = 0; i < 3; i++)
        raw_close(cs[i]);
    assert_int_equal(moatd_stop(&p), 0);
    moatd_remove_dir(p.state_dir);
}

/* Connections still in their hello have a budget of their own: past it the oldest goes, and
 * silent connections never keep an authenticated client out. */
static void test_pending_hello_budget(void **state)
{
    (void)state;
    moatd_proc p;
    const char *extra[] = {"--token=sesame", "--max_pending_hellos=4", "--max_connections=2",
                           "--hello_timeout_seconds=60", NULL};
    assert_true(moatd_start(&p, false, extra));
    raw_conn *silent[10];
    for (int i = 0; i < 10; i++) {
        silent[i] = raw_connect(p.port);
        assert_non_null(silent[i]);
    }
    moat_frame f;
    for (int i = 0; i < 6; i++) {
        assert_int_equal(raw_recv(silent[i], &f, 10000), 1);
        assert_true(frame_is_go_away(&f, MOAT_CODE_RESOURCE_EXHAUSTED));
        assert_true(message_starts(&f, "too_many_pending_hellos"));
        assert_true(drains_to_eof(silent[i]));
    }
    /* The newest four are still waiting for their hello. */
    assert_int_equal(raw_hello(silent[9], "sesame", &f), 1);
    assert_int_equal(f.kind, MOAT_FRAME_HELLO_ACK);
    /* A client that says hello at once gets in while the silent ones sit there. */
    raw_conn *c = raw_connect(p.port);
    assert_int_equal(raw_hello(c, "sesame", &f), 1);
    assert_int_equal(f.kind, MOAT_FRAME_HELLO_ACK);
    Moat__V1__HealthCheckRequest req = MOAT__V1__HEALTH_CHECK_REQUEST__INIT;
    assert_int_equal(raw_unary(c, "/moat.v1.Health/Check", &req.base, NULL, NULL, NULL, 0),
                     MOAT_CODE_OK);
    /* max_connections counts only these two authenticated ones. */
    assert_int_equal(raw_hello(silent[8], "sesame", &f), 1);
    assert_true(frame_is_go_away(&f, MOAT_CODE_RESOURCE_EXHAUSTED));
    char page[16384];
    assert_true(http_get(p.metrics_port, "/metrics", page, sizeof(page)));
    assert_non_null(strstr(page, "moat_hellos_refused_total{reason=\"evicted\"} 6\n"));
    assert_non_null(strstr(page, "moat_pending_hellos 2\n"));
    for (int i = 0; i < 10; i++)
        raw_close(silent[i]);
    raw_close(c);
    assert_int_equal(moatd_stop(&p), 0);
    moatd_remove_dir(p.state_dir);
}

static int count_lines_with(const char *path, const char *needle)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    char line[4096];
    int n = 0;
    while (fgets(line, sizeof(line), f) != NULL)
        n += strstr(line, needle) != NULL;
    fclose(f);
    return n;
}

/* Wrong tokens cost their address: past the burst its connections are refused with
 * RESOURCE_EXHAUSTED too_many_failed_hellos, other addresses are untouched, the address gets
 * a try back as time passes, and the log keeps to its budget. */
static void test_failed_hellos_throttled(void **state)
{
    (void)state;
    moatd_proc p;
    const char *extra[] = {"--token=sesame", NULL};
    assert_true(moatd_start(&p, false, extra));
    moat_frame f;
    uint64_t t0 = mono_ms();
    for (int i = 0; i < 10; i++) {
        raw_conn *c = raw_connect_from(p.port, "127.0.0.2");
        assert_non_null(c);
        assert_int_equal(raw_hello(c, "guess", &f), 1);
        assert_true(frame_is_go_away(&f, MOAT_CODE_UNAUTHENTICATED));
        raw_close(c);
    }
    /* Refused before the hello is even read: guessing from here is over for now. */
    int throttled = 0;
    for (int i = 0; i < 50; i++) {
        raw_conn *c = raw_connect_from(p.port, "127.0.0.2");
        assert_non_null(c);
        /* No answer yet: a token came back with time (a slow machine), so spend it. */
        if (raw_recv(c, &f, 2000) != 1)
            assert_int_equal(raw_hello(c, "guess", &f), 1);
        if (frame_is_go_away(&f, MOAT_CODE_RESOURCE_EXHAUSTED)) {
            assert_true(message_starts(&f, "too_many_failed_hellos"));
            throttled++;
        } else {
            assert_true(frame_is_go_away(&f, MOAT_CODE_UNAUTHENTICATED));
        }
        raw_close(c);
    }
    assert_true(throttled >= 40);
    uint64_t elapsed_s = (mono_ms() - t0) / 1000u;
    /* The right token from another address is untouched. */
    raw_conn *ok = raw_connect(p.port);
    assert_int_equal(raw_hello(ok, "sesame", &f), 1);
    assert_int_equal(f.kind, MOAT_FRAME_HELLO_ACK);
    raw_close(ok);
    /* Time gives the address a try back (bounded poll: the refill is one a second). */
    bool again = false;
    for (int i = 0; i < 100 && !again; i++) { /* <= 10 s */
        raw_conn *c = raw_connect_from(p.port, "127.0.0.2");
        assert_non_null(c);
        if (raw_hello(c, "sesame", &f) == 1 && f.kind == MOAT_FRAME_HELLO_ACK)
            again = true;
        raw_close(c);
        if (!again)
            sleep_ms(100);
    }
    assert_true(again);
    /* One more refusal, a second or more after the flood: its line counts what was dropped. */
    raw_conn *late = raw_connect_from(p.port, "127.0.0.3");
    assert_int_equal(raw_hello(late, "guess", &f), 1);
    assert_true(frame_is_go_away(&f, MOAT_CODE_UNAUTHENTICATED));
    raw_close(late);
    /* 60 refusals, but the log stays within 10 lines a second for them. */
    int lines = count_lines_with(p.log_path, "authenticated=0");
    assert_true(lines > 0);
    assert_true((uint64_t)lines <= 10u * (elapsed_s + 2u));
    assert_true(count_lines_with(p.log_path, "suppressed=") > 0);
    char page[16384];
    assert_true(http_get(p.metrics_port, "/metrics", page, sizeof(page)));
    assert_non_null(strstr(page, "moat_hellos_refused_total{reason=\"throttled\"}"));
    assert_int_equal(moatd_stop(&p), 0);
    moatd_remove_dir(p.state_dir);
}

/* A burst far past what moatd accepts in one loop turn: the listener pauses between turns and
 * always resumes, so every connection gets its HelloAck. */
static void test_accept_burst(void **state)
{
    (void)state;
    enum { N = 300 };
    moatd_proc p;
    const char *extra[] = {"--max_pending_hellos=1000", NULL};
    assert_true(moatd_start(&p, false, extra));
    moat_frame hello = {0};
    hello.kind = MOAT_FRAME_HELLO;
    hello.u.hello.protocol_version = MOAT_WIRE_PROTOCOL_VERSION;
    uint8_t bytes[64];
    size_t len = 0;
    assert_int_equal(moat_wire_encode(&hello, bytes, sizeof(bytes), &len), MOAT_OK);
    static int fds[N];
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)p.port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    for (int i = 0; i < N; i++) {
        fds[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        assert_true(fds[i] >= 0);
        assert_int_equal(connect(fds[i], (struct sockaddr *)&a, sizeof(a)), 0);
        assert_int_equal(write(fds[i], bytes, len), (ssize_t)len);
    }
    for (int i = 0; i < N; i++) {
        struct pollfd pfd = {fds[i], POLLIN, 0};
        assert_int_equal(poll(&pfd, 1, 10000), 1);
        uint8_t ack[256];
        ssize_t n = read(fds[i], ack, sizeof(ack));
        assert_true(n > 5);
        assert_int_equal(ack[4], 0x1a); /* field 3, hello_ack */
        close(fds[i]);
    }
    assert_int_equal(moatd_stop(&p), 0);
    moatd_remove_dir(p.state_dir);
}

int main(void)
{
    const struct CMUnitTest shared[] = {
        cmocka_unit_test(test_hello_ack_limits),
        cmocka_unit_test(test_wrong_and_missing_token),
        cmocka_unit_test(test_call_before_hello_is_refused),
        cmocka_unit_test_prestate(test_moatd_exits_0_on_sigterm, &P),
    };
    const struct CMUnitTest own[] = {
        cmocka_unit_test(test_hello_timeout),           cmocka_unit_test(test_idle_timeout),
        cmocka_unit_test(test_connection_limit),        cmocka_unit_test(test_pending_hello_budget),
        cmocka_unit_test(test_failed_hellos_throttled), cmocka_unit_test(test_accept_burst),
    };
    int failed = moat_run_group_tests("moatd_hello_shared", shared, setup_server, teardown_server);
    failed += moat_run_group_tests("moatd_hello_own", own, NULL, NULL);
    return failed;
}
