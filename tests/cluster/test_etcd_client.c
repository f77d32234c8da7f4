/* The etcd client against fake members (real HTTP servers on loopback): what it sends, what it
 * makes of answers, errors and garbage, and which failures move a call to the next member. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include "moat_test.h"
#include "ports.h"

#include "cluster/etcd.h"
#include "fake_etcd.h"

#define HDR "\"header\":{\"revision\":\"7\"}"

typedef struct fixture {
    fake_etcd a, b;
    char dead[64]; /* a loopback URL nobody listens on */
} fixture;

static int setup(void **state)
{
    fixture *fx = calloc(1, sizeof(*fx));
    if (fx == NULL)
        return -1;
    /* cmocka runs no test's teardown after its setup failed: what started stops here (a
     * fake_etcd_start that failed is stopped too, which frees what it made). */
    bool a = fake_etcd_start(&fx->a) == 0;
    if (!a || fake_etcd_start(&fx->b) != 0) {
        fake_etcd_stop(&fx->a);
        if (a)
            fake_etcd_stop(&fx->b);
        free(fx);
        return -1;
    }
    snprintf(fx->dead, sizeof(fx->dead), "http://127.0.0.1:%d", free_port());
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    fixture *fx = *state;
    fake_etcd_stop(&fx->a);
    fake_etcd_stop(&fx->b);
    free(fx);
    return 0;
}

static moat_etcd *client(const char *const *urls, size_t n)
{
    moat_etcd_config cfg = {.endpoints = urls, .endpoint_count = n, .request_timeout_ms = 2000};
    moat_status st;
    moat_etcd *e = moat_etcd_open(&cfg, &st);
    assert_non_null(e);
    return e;
}

static void test_calls(void **state)
{
    fixture *fx = *state;
    const char *urls[] = {fx->a.url};
    moat_etcd *e = client(urls, 1);
    moat_etcd_result r;
    moat_status st;

    fake_etcd_set(&fx->a, FAKE_ETCD_ANSWER, 200, "{" HDR "}");
    assert_int_equal(moat_etcd_put(e, moat_slice_str("k"), moat_slice_str("v"), 5, &r, &st), 0);
    assert_string_equal(fx->a.last_path, "/v3/kv/put");
    assert_string_equal(fx->a.last_body, "{\"key\":\"aw==\",\"value\":\"dg==\",\"lease\":\"5\"}");
    assert_int_equal(r.revision, 7);

    fake_etcd_set(&fx->a, FAKE_ETCD_ANSWER, 200,
                  "{" HDR ",\"kvs\":[{\"key\":\"aw==\",\"value\":\"dg==\"}],\"count\":\"1\"}");
    assert_int_equal(moat_etcd_range(e, moat_slice_str("k"), true, 0, &r, &st), 0);
    assert_string_equal(fx->a.last_path, "/v3/kv/range");
    assert_string_equal(fx->a.last_body, "{\"key\":\"aw==\",\"range_end\":\"bA==\"}");
    assert_int_equal(r.kv_count, 1);
    assert_memory_equal(r.kvs[0].value, "v", 1);
    moat_etcd_result_free(&r);

    fake_etcd_set(&fx->a, FAKE_ETCD_ANSWER, 200, "{" HDR ",\"deleted\":\"3\"}");
    assert_int_equal(moat_etcd_delete(e, moat_slice_str("k"), false, &r, &st), 0);
    assert_string_equal(fx->a.last_path, "/v3/kv/deleterange");
    assert_int_equal(r.deleted, 3);

    moat_etcd_cmp cmp = {moat_slice_str("k"), MOAT_ETCD_CREATE_REVISION, MOAT_ETCD_EQUAL, 0};
    moat_etcd_op put = {MOAT_ETCD_OP_PUT, moat_slice_str("k"), moat_slice_str("v"), 0, false};
    moat_etcd_txn_spec txn = {&cmp, 1, &put, 1, NULL, 0};
    fake_etcd_set(&fx->a, FAKE_ETCD_ANSWER, 200, "{" HDR ",\"succeeded\":true}");
    assert_int_equal(moat_etcd_txn(e, &txn, &r, &st), 0);
    assert_string_equal(fx->a.last_path, "/v3/kv/txn");
    assert_true(r.succeeded);

    fake_etcd_set(&fx->a, FAKE_ETCD_ANSWER, 200, "{" HDR ",\"ID\":\"99\",\"TTL\":\"4\"}");
    assert_int_equal(moat_etcd_lease_grant(e, 4, &r, &st), 0);
    assert_string_equal(fx->a.last_path, "/v3/lease/grant");
    assert_int_equal(r.lease_id, 99);
    fake_etcd_set(&fx->a, FAKE_ETCD_ANSWER, 200,
                  "{\"result\":{" HDR ",\"ID\":\"99\",\"TTL\":\"4\"}}");
    assert_int_equal(moat_etcd_lease_keepalive(e, 99, &r, &st), 0);
    assert_string_equal(fx->a.last_path, "/v3/lease/keepalive");
    assert_string_equal(fx->a.last_body, "{\"ID\":\"99\"}");
    assert_int_equal(r.ttl, 4);
    fake_etcd_set(&fx->a, FAKE_ETCD_ANSWER, 200, "{\"result\":{" HDR ",\"ID\":\"99\"}}");
    assert_int_equal(moat_etcd_lease_keepalive(e, 99, &r, &st), MOAT_CODE_NOT_FOUND);
    assert_string_equal(st.reason, "etcd_lease_not_found");
    fake_etcd_set(&fx->a, FAKE_ETCD_ANSWER, 200, "{" HDR "}");
    assert_int_equal(moat_etcd_lease_revoke(e, 99, &r, &st), 0);
    assert_string_equal(fx->a.last_path, "/v3/lease/revoke");

    /* A request the codec refuses never leaves. */
    int before = fake_etcd_requests(&fx->a);
    assert_int_equal(moat_etcd_put(e, moat_slice_str(""), moat_slice_str("v"), 0, &r, &st),
                     MOAT_CODE_INVALID_ARGUMENT);
    assert_string_equal(st.reason, "etcd_bad_request");
    assert_int_equal(fake_etcd_requests(&fx->a), before);
    moat_etcd_close(e);
}

static void test_errors_and_garbage(void **state)
{
    fixture *fx = *state;
    const char *urls[] = {fx->a.url, fx->b.url};
    moat_etcd *e = client(urls, 2);
    moat_etcd_result r;
    moat_status st;

    /* etcd's own error: its code, and no other member is asked. */
    fake_etcd_set(&fx->a, FAKE_ETCD_ANSWER, 404,
                  "{\"error\":\"etcdserver: requested lease not found\",\"message\":\"etcdserver: "
                  "requested lease not found\",\"code\":5}");
    assert_int_equal(moat_etcd_put(e, moat_slice_str("k"), moat_slice_str("v"), 5, &r, &st),
                     MOAT_CODE_NOT_FOUND);
    assert_string_equal(st.reason, "etcd_error");
    assert_int_equal(fake_etcd_requests(&fx->b), 0);

    static const char *const garbage[] = {"",      "{",  "<html>oops</html>",
                                          "[1,2]", "{}", "{\"header\":{\"revision\":\"x\"}}"};
    for (size_t i = 0; i < sizeof(garbage) / sizeof(garbage[0]); i++) {
        fake_etcd_set(&fx->a, FAKE_ETCD_ANSWER, 200, garbage[i]);
        assert_int_equal(moat_etcd_range(e, moat_slice_str("k"), false, 0, &r, &st),
                         MOAT_CODE_INTERNAL);
        assert_string_equal(st.reason, "etcd_bad_answer");
        moat_etcd_result_free(&r);
    }
    assert_int_equal(fake_etcd_requests(&fx->b), 0);

    /* An answer past the size limit is cut off, not buffered. */
    fx->a.huge_bytes = MOAT_ETCD_ANSWER_MAX + 4096;
    fake_etcd_set(&fx->a, FAKE_ETCD_HUGE, 200, NULL);
    assert_int_equal(moat_etcd_range(e, moat_slice_str("k"), false, 0, &r, &st),
                     MOAT_CODE_INTERNAL);
    assert_string_equal(st.reason, "etcd_bad_answer");
    assert_int_equal(fake_etcd_requests(&fx->b), 0);
    moat_etcd_close(e);
}

static void test_failover(void **state)
{
    fixture *fx = *state;
    moat_etcd_result r;
    moat_status st;
    fake_etcd_set(&fx->b, FAKE_ETCD_ANSWER, 200, "{" HDR "}");

    /* Nobody listening on the first member: every call, writes too, goes on to the next. */
    const char *urls[] = {fx->dead, fx->b.url};
    moat_etcd *e = client(urls, 2);
    assert_int_equal(moat_etcd_put(e, moat_slice_str("k"), moat_slice_str("v"), 0, &r, &st), 0);
    assert_int_equal(fake_etcd_requests(&fx->b), 1);
    assert_int_equal(moat_etcd_put(e, moat_slice_str("k"), moat_slice_str("v"), 0, &r, &st), 0);
    assert_int_equal(fake_etcd_requests(&fx->b), 2);
    moat_etcd_close(e);

    /* A member without a leader (503, UNAVAILABLE): reads move on, writes do not, since it
     * may have applied them. */
    const char *urls2[] = {fx->a.url, fx->b.url};
    e = client(urls2, 2);
    fake_etcd_set(&fx->a, FAKE_ETCD_ANSWER, 503,
                  "{\"error\":\"etcdserver: request timed out\",\"message\":\"etcdserver: "
                  "request timed out\",\"code\":14}");
    int b0 = fake_etcd_requests(&fx->b);
    assert_int_equal(moat_etcd_txn(e, &(moat_etcd_txn_spec){0}, &r, &st), MOAT_CODE_UNAVAILABLE);
    assert_string_equal(st.reason, "etcd_error");
    assert_int_equal(fake_etcd_requests(&fx->b), b0);
    assert_int_equal(moat_etcd_range(e, moat_slice_str("k"), false, 0, &r, &st), 0);
    assert_int_equal(fake_etcd_requests(&fx->b), b0 + 1);
    /* The member that answered is asked first from now on. */
    int a0 = fake_etcd_requests(&fx->a);
    assert_int_equal(moat_etcd_range(e, moat_slice_str("k"), false, 0, &r, &st), 0);
    assert_int_equal(fake_etcd_requests(&fx->a), a0);
    moat_etcd_close(e);

    /* A member that takes the request and closes: the same rule. */
    fake_etcd_set(&fx->a, FAKE_ETCD_CLOSE, 0, NULL);
    e = client(urls2, 2);
    b0 = fake_etcd_requests(&fx->b);
    assert_int_equal(moat_etcd_delete(e, moat_slice_str("k"), false, &r, &st),
                     MOAT_CODE_UNAVAILABLE);
    assert_string_equal(st.reason, "etcd_unavailable");
    assert_int_equal(fake_etcd_requests(&fx->b), b0);
    fake_etcd_set(&fx->b, FAKE_ETCD_ANSWER, 200, "{" HDR ",\"ID\":\"1\",\"TTL\":\"3\"}");
    assert_int_equal(moat_etcd_lease_grant(e, 3, &r, &st), 0);
    moat_etcd_close(e);
}

/* A member that never answers: the call ends at the request timeout, UNAVAILABLE, and a
 * keepalive goes on to the next member. */
static void test_hung_member(void **state)
{
    fixture *fx = *state;
    moat_etcd_result r;
    moat_status st;
    fake_etcd_set(&fx->a, FAKE_ETCD_HANG, 0, NULL);
    fake_etcd_set(&fx->b, FAKE_ETCD_ANSWER, 200,
                  "{\"result\":{" HDR ",\"ID\":\"9\",\"TTL\":\"3\"}}");
    const char *urls[] = {fx->a.url, fx->b.url};
    moat_etcd_config cfg = {.endpoints = urls, .endpoint_count = 2, .request_timeout_ms = 300};
    moat_etcd *e = moat_etcd_open(&cfg, &st);
    assert_non_null(e);
    assert_int_equal(moat_etcd_put(e, moat_slice_str("k"), moat_slice_str("v"), 0, &r, &st),
                     MOAT_CODE_UNAVAILABLE);
    assert_string_equal(st.reason, "etcd_unavailable");
    assert_non_null(moat_status_detail_get(&st, "etcd_endpoint"));
    assert_int_equal(moat_etcd_lease_keepalive(e, 9, &r, &st), 0);
    assert_int_equal(r.ttl, 3);
    moat_etcd_close(e);
}

static void test_all_down(void **state)
{
    fixture *fx = *state;
    char dead2[64];
    snprintf(dead2, sizeof(dead2), "http://127.0.0.1:%d", free_port());
    const char *urls[] = {fx->dead, dead2};
    moat_etcd *e = client(urls, 2);
    moat_etcd_result r;
    moat_status st;
    assert_int_equal(moat_etcd_range(e, moat_slice_str("k"), false, 0, &r, &st),
                     MOAT_CODE_UNAVAILABLE);
    assert_string_equal(st.reason, "etcd_unavailable");
    moat_etcd_close(e);
}

static void test_config(void **state)
{
    (void)state;
    moat_status st;
    moat_etcd_config cfg = {.endpoints = NULL, .endpoint_count = 0};
    assert_null(moat_etcd_open(&cfg, &st));
    assert_string_equal(st.reason, "invalid_config");
    const char *bad[] = {"127.0.0.1:2379"};
    cfg = (moat_etcd_config){.endpoints = bad, .endpoint_count = 1};
    assert_null(moat_etcd_open(&cfg, &st));
    const char *nul[] = {NULL};
    cfg = (moat_etcd_config){.endpoints = nul, .endpoint_count = 1};
    assert_null(moat_etcd_open(&cfg, &st));
    const char *many[MOAT_ETCD_ENDPOINTS_MAX + 1];
    for (size_t i = 0; i < MOAT_ETCD_ENDPOINTS_MAX + 1; i++)
        many[i] = "http://127.0.0.1:1";
    cfg = (moat_etcd_config){.endpoints = many, .endpoint_count = MOAT_ETCD_ENDPOINTS_MAX + 1};
    assert_null(moat_etcd_open(&cfg, &st));
    cfg.endpoint_count = MOAT_ETCD_ENDPOINTS_MAX;
    moat_etcd *e = moat_etcd_open(&cfg, &st);
    assert_non_null(e);
    moat_etcd_close(e);

    /* TLS: certificate and key together, and only with https:// members (the files are read
     * when a connection is made, not here). */
    const char *https[] = {"https://127.0.0.1:1", "https://127.0.0.1:2"};
    cfg = (moat_etcd_config){.endpoints = https, .endpoint_count = 2};
    cfg.tls = (moat_etcd_tls){"/ca.pem", "/cert.pem", NULL};
    assert_null(moat_etcd_open(&cfg, &st));
    assert_string_equal(st.reason, "invalid_config");
    assert_string_equal(moat_status_detail_get(&st, "setting"), "tls_key");
    cfg.tls = (moat_etcd_tls){NULL, "", "/key.pem"};
    assert_null(moat_etcd_open(&cfg, &st));
    assert_string_equal(moat_status_detail_get(&st, "setting"), "tls_cert");
    const char *mixed[] = {"https://127.0.0.1:1", "http://127.0.0.1:2"};
    cfg.endpoints = mixed;
    cfg.tls = (moat_etcd_tls){"/ca.pem", NULL, NULL};
    assert_null(moat_etcd_open(&cfg, &st));
    assert_string_equal(moat_status_detail_get(&st, "setting"), "etcd_endpoints");
    cfg.endpoints = https;
    cfg.tls = (moat_etcd_tls){"/ca.pem", "/cert.pem", "/key.pem"};
    e = moat_etcd_open(&cfg, &st);
    assert_non_null(e);
    moat_etcd_close(e);
    /* Without files, https:// and http:// members may mix (the system's CAs verify). */
    cfg.endpoints = mixed;
    cfg.tls = (moat_etcd_tls){NULL, "", ""};
    e = moat_etcd_open(&cfg, &st);
    assert_non_null(e);
    moat_etcd_close(e);
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_ALL);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_calls, setup, teardown),
        cmocka_unit_test_setup_teardown(test_errors_and_garbage, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failover, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hung_member, setup, teardown),
        cmocka_unit_test_setup_teardown(test_all_down, setup, teardown),
        cmocka_unit_test(test_config),
    };
    int rc = moat_run_group_tests("test_etcd_client", tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
