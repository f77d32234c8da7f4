/* moatd's gRPC listener with TLS (grpc_tls_cert, grpc_tls_key) against clients that do not
 * speak it right: plaintext HTTP/2, no ALPN or another protocol, garbage before and inside the
 * handshake, a TCP connection that never starts one. Each is refused or closed, and a good TLS
 * call beside it completes. No Docker: Health answers without it. */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <gnutls/gnutls.h>

#include "moat_test.h"

#include "h2_client.h"
#include "harness.h"
#include "tls_files.h"

#define TOKEN "grpc-tls-token"
#define CHECK "/moat.v1.Health/Check"

static moatd_proc moatd;
static tls_files files;
static const uint8_t empty_message[5] = {0, 0, 0, 0, 0};

static int setup(void **state)
{
    (void)state;
    if (!tls_files_make(&files))
        return -1;
    char cert[128], key[128];
    snprintf(cert, sizeof(cert), "--grpc_tls_cert=%s", files.cert);
    snprintf(key, sizeof(key), "--grpc_tls_key=%s", files.key);
    const char *const extra[] = {
        "--token=" TOKEN, "--max_pending_hellos=4", "--hello_timeout_seconds=2", cert, key, NULL};
    return moatd_start(&moatd, false, extra) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    int rc = moatd.pid <= 0 || moatd_stop(&moatd) == 0 ? 0 : -1;
    moatd_remove_dir(moatd.state_dir);
    tls_files_remove(&files);
    return rc;
}

static h2c *connect_good(void)
{
    h2c *c = h2c_connect_tls(moatd.grpc_port, files.cert);
    assert_non_null(c);
    return c;
}

/* A Health check with the token that must succeed over TLS. */
static void check_serves(h2c *c)
{
    h2c_stream *st = h2c_request(c, CHECK, TOKEN, NULL, empty_message, sizeof(empty_message));
    assert_non_null(st);
    assert_true(h2c_wait(c, st, 10000));
    assert_int_equal(st->http_status, 200);
    assert_int_equal(st->grpc_status, 0);
    assert_int_equal(st->messages, 1);
}

/* A good TLS connection with a call open and waiting for its request, which completes after
 * whatever the test did beside it. */
typedef struct beside {
    h2c *c;
    h2c_stream *open;
} beside;

static beside beside_start(void)
{
    beside b = {connect_good(), NULL};
    check_serves(b.c);
    b.open = h2c_request(b.c, CHECK, TOKEN, NULL, NULL, 0);
    assert_non_null(b.open);
    /* Its headers go out with this call's. */
    check_serves(b.c);
    return b;
}

static void beside_finish(beside *b)
{
    assert_false(b->open->closed);
    assert_true(h2c_send_body(b->c, b->open, empty_message, sizeof(empty_message)));
    assert_true(h2c_wait(b->c, b->open, 10000));
    assert_int_equal(b->open->grpc_status, 0);
    h2c_close(b->c);
    /* And the listener takes new connections. */
    h2c *c = connect_good();
    check_serves(c);
    h2c_close(c);
}

/* Every call of a generated stub over TLS works as on h2c; the handshake and ALPN h2 are the
 * only difference. */
static void test_calls_over_tls(void **state)
{
    (void)state;
    h2c *c = connect_good();
    check_serves(c);
    /* A wrong token is still refused inside TLS. */
    h2c_stream *st = h2c_request(c, CHECK, "wrong", NULL, empty_message, sizeof(empty_message));
    assert_true(h2c_wait(c, st, 10000));
    assert_int_equal(st->grpc_status, MOAT_CODE_UNAUTHENTICATED);
    check_serves(c);
    h2c_close(c);
}

/* HTTP/2 in the clear on the TLS port: not a TLS record, closed at once, without a GOAWAY
 * (which the client could not have read in the clear anyway). */
static void test_plaintext_http2_refused(void **state)
{
    (void)state;
    beside b = beside_start();
    h2c *plain = h2c_connect(moatd.grpc_port, 0);
    assert_non_null(plain);
    h2c_stream *st = h2c_request(plain, CHECK, TOKEN, NULL, empty_message, 5);
    assert_non_null(st);
    assert_true(h2c_run(plain, h2c_until_dead, NULL, 10000));
    assert_false(st->closed && st->grpc_status == 0);
    assert_int_equal(h2c_goaway_code(plain), -1);
    h2c_close(plain);
    beside_finish(&b);
}

/* The fatal alert a TLS client offering alpn (NULL: no ALPN) gets, in the handshake or right
 * after it (TLS 1.3: the client's side ends before the server has read its Finished); -1 when
 * none came. The client writes nothing past its handshake, so no reset can overtake the alert. */
static int alpn_verdict(const char *alpn)
{
    int fd = h2c_raw_connect(moatd.grpc_port);
    assert_true(fd >= 0);
    gnutls_certificate_credentials_t cred;
    gnutls_session_t s = h2c_tls_session(fd, files.cert, alpn, &cred);
    int rc;
    do
        rc = gnutls_handshake(s);
    while (rc < 0 && !gnutls_error_is_fatal(rc));
    uint8_t buf[64];
    while (rc >= 0 || !gnutls_error_is_fatal(rc))
        rc = (int)gnutls_record_recv(s, buf, sizeof(buf));
    int alert = rc == GNUTLS_E_FATAL_ALERT_RECEIVED ? (int)gnutls_alert_get(s) : -1;
    gnutls_deinit(s);
    gnutls_certificate_free_credentials(cred);
    close(fd);
    return alert;
}

/* ALPN must say h2 (RFC 9113 3.2): another protocol, or none at all, gets the fatal alert
 * no_application_protocol. */
static void test_alpn_other_than_h2_refused(void **state)
{
    (void)state;
    beside b = beside_start();
    assert_int_equal(alpn_verdict("http/1.1"), GNUTLS_A_NO_APPLICATION_PROTOCOL);
    assert_int_equal(alpn_verdict(NULL), GNUTLS_A_NO_APPLICATION_PROTOCOL);
    beside_finish(&b);
}

/* Bytes through the socket that corrupts every write after the first (the ClientHello). */
static int corrupt_fd;
static int corrupt_writes;

static ssize_t corrupting_push(gnutls_transport_ptr_t ptr, const void *data, size_t len)
{
    (void)ptr;
    uint8_t *copy = malloc(len);
    if (copy == NULL)
        return -1;
    memcpy(copy, data, len);
    if (corrupt_writes++ > 0)
        for (size_t i = 0; i < len; i++)
            copy[i] ^= 0x5a;
    ssize_t n = write(corrupt_fd, copy, len);
    free(copy);
    return n;
}

/* Garbage where the handshake should start, and garbage in its middle: closed, the rest goes
 * on. */
static void test_garbage_before_and_inside_handshake(void **state)
{
    (void)state;
    beside b = beside_start();
    int fd = h2c_raw_connect(moatd.grpc_port);
    assert_true(fd >= 0);
    uint8_t junk[512];
    for (size_t i = 0; i < sizeof(junk); i++)
        junk[i] = (uint8_t)(i * 131 + 7);
    assert_int_equal(write(fd, junk, sizeof(junk)), (ssize_t)sizeof(junk));
    assert_true(h2c_raw_wait_eof(fd, 10000));
    close(fd);

    /* A real ClientHello, then the client's second flight XORed into nonsense. */
    corrupt_fd = h2c_raw_connect(moatd.grpc_port);
    assert_true(corrupt_fd >= 0);
    corrupt_writes = 0;
    gnutls_certificate_credentials_t cred;
    gnutls_session_t s = h2c_tls_session(corrupt_fd, files.cert, "h2", &cred);
    gnutls_transport_set_push_function(s, corrupting_push);
    int rc;
    do
        rc = gnutls_handshake(s);
    while (rc < 0 && !gnutls_error_is_fatal(rc));
    if (rc == 0) {
        /* TLS 1.3: the client is done before the server has read its Finished. */
        uint8_t buf[64];
        do
            rc = (int)gnutls_record_recv(s, buf, sizeof(buf));
        while (rc < 0 && !gnutls_error_is_fatal(rc));
    }
    assert_true(rc <= 0);
    assert_true(corrupt_writes > 1);
    gnutls_deinit(s);
    gnutls_certificate_free_credentials(cred);
    assert_true(h2c_raw_wait_eof(corrupt_fd, 10000));
    close(corrupt_fd);
    beside_finish(&b);
}

/* A connection that never handshakes is pending as one before its first call with the token:
 * closed after hello_timeout_seconds, and one past max_pending_hellos closes the oldest; one
 * that handshakes but makes no call is closed at the same timeout. */
static void test_silent_tcp_is_bounded(void **state)
{
    (void)state;
    beside b = beside_start();
    long long timeouts = moatd_hellos_refused(&moatd, "timeout"),
              evicted = moatd_hellos_refused(&moatd, "evicted");
    int fds[5];
    for (int i = 0; i < 5; i++) {
        fds[i] = h2c_raw_connect(moatd.grpc_port);
        assert_true(fds[i] >= 0);
    }
    /* The fifth made the first go; the others stay until the timeout. */
    assert_true(h2c_raw_wait_eof(fds[0], 10000));
    for (int i = 1; i < 5; i++)
        assert_true(h2c_raw_wait_eof(fds[i], 10000));
    for (int i = 0; i < 5; i++)
        close(fds[i]);
    assert_int_equal(moatd_hellos_refused(&moatd, "evicted"), evicted + 1);
    assert_int_equal(moatd_hellos_refused(&moatd, "timeout"), timeouts + 4);
    /* Handshaken, its preface sent, no call: the same timeout, its GOAWAY inside TLS. */
    h2c *idle = connect_good();
    assert_true(h2c_run(idle, h2c_until_dead, NULL, 10000));
    assert_int_equal(h2c_goaway_code(idle), 0 /* NO_ERROR */);
    h2c_close(idle);
    assert_int_equal(moatd_hellos_refused(&moatd, "timeout"), timeouts + 5);
    beside_finish(&b);
}

/* Whether a line of moatd's log contains needle within about timeout_ms. */
static bool log_shows(const char *needle, int timeout_ms)
{
    struct timespec tick = {0, 50 * 1000 * 1000};
    for (int waited = 0; waited < timeout_ms; waited += 50) {
        if (moatd_log_contains(&moatd, needle))
            return true;
        nanosleep(&tick, NULL);
    }
    return moatd_log_contains(&moatd, needle);
}

/* A SIGHUP checks the files again: with the certificate gone the reload fails, naming the key,
 * and the listener goes on with what it loaded at start (restart to rotate). */
static void test_reload_checks_files_keeps_listener(void **state)
{
    (void)state;
    beside b = beside_start();
    char moved[128];
    snprintf(moved, sizeof(moved), "%s.moved", files.cert);
    assert_int_equal(rename(files.cert, moved), 0);
    assert_int_equal(kill(moatd.pid, SIGHUP), 0);
    bool failed = log_shows("reload_failed", 10000);
    bool named = moatd_log_contains(&moatd, "grpc_tls_cert: ");
    assert_int_equal(rename(moved, files.cert), 0);
    assert_true(failed);
    assert_true(named);
    beside_finish(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_calls_over_tls),
        cmocka_unit_test(test_plaintext_http2_refused),
        cmocka_unit_test(test_alpn_other_than_h2_refused),
        cmocka_unit_test(test_garbage_before_and_inside_handshake),
        cmocka_unit_test(test_silent_tcp_is_bounded),
        cmocka_unit_test(test_reload_checks_files_keeps_listener),
        cmocka_unit_test_prestate(test_moatd_exits_0_on_sigterm, &moatd),
    };
    return moat_run_group_tests("grpc_tls", tests, setup, teardown);
}
