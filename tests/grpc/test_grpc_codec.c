/* Unit tests of src/grpc's codec and metadata: messages fed one byte at a time, limits checked
 * before allocation, grpc-timeout, request header verdicts, the trailers' encodings. */
#include <stdlib.h>
#include <string.h>

#include "moat_test.h"

#include "grpc/grpc.h"
#include "grpc/reflection.h"
#include "grpc/reflection/v1alpha/reflection.pb-c.h"

/* Feeds in pieces of `step` bytes; collects every message's bytes into out. */
static moat_err feed_all(moat_grpc_decoder *d, const uint8_t *p, size_t len, size_t step,
                         uint8_t *out, size_t *out_len, int *messages)
{
    *out_len = 0;
    *messages = 0;
    size_t off = 0;
    while (off < len) {
        size_t piece = len - off < step ? len - off : step;
        size_t used = 0;
        moat_slice msg;
        moat_err err = moat_grpc_decoder_feed(d, p + off, piece, &used, &msg);
        off += used;
        if (err == MOAT_E_AGAIN)
            continue;
        if (err != MOAT_OK)
            return err;
        memcpy(out + *out_len, msg.data, msg.len);
        *out_len += msg.len;
        (*messages)++;
    }
    return MOAT_OK;
}

static size_t put_message(uint8_t *p, const char *body)
{
    size_t n = strlen(body);
    moat_grpc_message_prefix(p, (uint32_t)n);
    memcpy(p + MOAT_GRPC_PREFIX_SIZE, body, n);
    return MOAT_GRPC_PREFIX_SIZE + n;
}

static void test_messages_one_byte_at_a_time(void **state)
{
    (void)state;
    uint8_t in[256];
    size_t n = put_message(in, "hello");
    n += put_message(in + n, "");
    n += put_message(in + n, "world!");
    for (size_t step = 1; step <= n; step++) {
        moat_grpc_decoder d;
        moat_grpc_decoder_init(&d, 64);
        uint8_t out[64];
        size_t out_len;
        int messages;
        assert_int_equal(feed_all(&d, in, n, step, out, &out_len, &messages), MOAT_OK);
        assert_int_equal(messages, 3);
        assert_int_equal(out_len, 11);
        assert_memory_equal(out, "helloworld!", 11);
        assert_false(moat_grpc_decoder_partial(&d));
        moat_grpc_decoder_free(&d);
    }
}

static void test_partial_message_is_seen(void **state)
{
    (void)state;
    uint8_t in[32];
    size_t n = put_message(in, "abc");
    moat_grpc_decoder d;
    moat_grpc_decoder_init(&d, 64);
    size_t used;
    moat_slice msg;
    assert_int_equal(moat_grpc_decoder_feed(&d, in, n - 1, &used, &msg), MOAT_E_AGAIN);
    assert_int_equal(used, n - 1);
    assert_true(moat_grpc_decoder_partial(&d));
    assert_int_equal(moat_grpc_decoder_feed(&d, in + n - 1, 1, &used, &msg), MOAT_OK);
    assert_int_equal(msg.len, 3);
    assert_memory_equal(msg.data, "abc", 3);
    moat_grpc_decoder_free(&d);
}

/* A declared length past the limit is refused from its prefix, before any byte is stored: a
 * 4 GiB claim allocates nothing. */
static void test_oversized_refused_before_allocation(void **state)
{
    (void)state;
    uint8_t head[5] = {0, 0xff, 0xff, 0xff, 0xff};
    for (size_t step = 1; step <= 5; step++) {
        moat_grpc_decoder d;
        moat_grpc_decoder_init(&d, 1024);
        size_t off = 0;
        moat_err err = MOAT_E_AGAIN;
        while (off < 5 && err == MOAT_E_AGAIN) {
            size_t used;
            moat_slice msg;
            size_t piece = 5 - off < step ? 5 - off : step;
            err = moat_grpc_decoder_feed(&d, head + off, piece, &used, &msg);
            off += used;
        }
        assert_int_equal(err, MOAT_E_TOO_BIG);
        assert_null(d.body);
        assert_non_null(strstr(moat_grpc_decoder_reason(&d), "over the limit"));
        moat_grpc_decoder_free(&d);
    }
    /* Exactly the limit is fine. */
    moat_grpc_decoder d;
    moat_grpc_decoder_init(&d, 3);
    uint8_t in[16];
    size_t n = put_message(in, "xyz");
    size_t used;
    moat_slice msg;
    assert_int_equal(moat_grpc_decoder_feed(&d, in, n, &used, &msg), MOAT_OK);
    moat_grpc_decoder_free(&d);
}

static void test_compressed_flag(void **state)
{
    (void)state;
    uint8_t compressed[5] = {1, 0, 0, 0, 1};
    uint8_t bogus[5] = {2, 0, 0, 0, 1};
    moat_grpc_decoder d;
    size_t used;
    moat_slice msg;
    moat_grpc_decoder_init(&d, 64);
    assert_int_equal(moat_grpc_decoder_feed(&d, compressed, 5, &used, &msg), MOAT_E_UNSUPPORTED);
    moat_grpc_decoder_free(&d);
    moat_grpc_decoder_init(&d, 64);
    assert_int_equal(moat_grpc_decoder_feed(&d, bogus, 5, &used, &msg), MOAT_E_PROTO);
    moat_grpc_decoder_free(&d);
}

static void test_timeout(void **state)
{
    (void)state;
    struct {
        const char *in;
        moat_err err;
        uint64_t ms;
    } cases[] = {
        {"1H", MOAT_OK, 3600000},
        {"2M", MOAT_OK, 120000},
        {"3S", MOAT_OK, 3000},
        {"250m", MOAT_OK, 250},
        {"1500u", MOAT_OK, 2},
        {"1n", MOAT_OK, 1},
        {"0m", MOAT_OK, 0},
        {"99999999H", MOAT_OK, 99999999ull * 3600000ull},
        {"999999999m", MOAT_E_INVAL, 0}, /* 9 digits */
        {"m", MOAT_E_INVAL, 0},
        {"10", MOAT_E_INVAL, 0},
        {"10x", MOAT_E_INVAL, 0},
        {"-1S", MOAT_E_INVAL, 0},
        {"1 S", MOAT_E_INVAL, 0},
        {"", MOAT_E_INVAL, 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint64_t ms = 0;
        moat_err err = moat_grpc_timeout_parse(cases[i].in, strlen(cases[i].in), &ms);
        assert_int_equal(err, cases[i].err);
        if (err == MOAT_OK)
            assert_int_equal(ms, cases[i].ms);
    }
}

static void header(moat_grpc_request *r, const char *name, const char *value)
{
    moat_grpc_request_header(r, (const uint8_t *)name, strlen(name), (const uint8_t *)value,
                             strlen(value));
}

static bool token_is_secret(const uint8_t *token, size_t len, void *ud)
{
    (void)ud;
    return len == 6 && memcmp(token, "secret", 6) == 0;
}

static void good_request(moat_grpc_request *r)
{
    moat_grpc_request_init(r, 8192);
    header(r, ":method", "POST");
    header(r, ":scheme", "http");
    header(r, ":path", "/moat.v1.Health/Check");
    header(r, "content-type", "application/grpc");
    header(r, "te", "trailers");
    header(r, "authorization", "Bearer secret");
}

static moat_grpc_verdict finish(const moat_grpc_request *r, int *http, moat_status *st)
{
    return moat_grpc_request_finish(r, true, token_is_secret, NULL, http, st);
}

static void test_request_accepted(void **state)
{
    (void)state;
    moat_grpc_request r;
    good_request(&r);
    header(&r, "grpc-timeout", "5S");
    int http;
    moat_status st;
    assert_int_equal(finish(&r, &http, &st), MOAT_GRPC_ACCEPT);
    assert_int_equal(http, 200);
    assert_non_null(r.method);
    assert_string_equal(r.method->name, "/moat.v1.Health/Check");
    assert_true(r.has_timeout);
    assert_int_equal(r.timeout_ms, 5000);
    /* application/grpc+proto too, and no token needed when none is configured. */
    moat_grpc_request_init(&r, 8192);
    header(&r, ":method", "POST");
    header(&r, ":path", "/moat.v1.Health/Check");
    header(&r, "content-type", "application/grpc+proto");
    header(&r, "te", "trailers");
    assert_int_equal(moat_grpc_request_finish(&r, false, token_is_secret, NULL, &http, &st),
                     MOAT_GRPC_ACCEPT);
}

static void test_request_refusals(void **state)
{
    (void)state;
    struct {
        const char *name, *value;
        moat_grpc_verdict verdict;
        int http;
        moat_code code;
        const char *reason;
    } cases[] = {
        {":method", "GET", MOAT_GRPC_HTTP_ERROR, 405, MOAT_CODE_UNIMPLEMENTED, NULL},
        {"content-type", "application/json", MOAT_GRPC_HTTP_ERROR, 415, MOAT_CODE_UNKNOWN, NULL},
        {"content-type", "application/grpc+json", MOAT_GRPC_HTTP_ERROR, 415, MOAT_CODE_UNKNOWN,
         NULL},
        {"authorization", "Bearer wrong", MOAT_GRPC_GRPC_ERROR, 200, MOAT_CODE_UNAUTHENTICATED,
         "invalid_token"},
        {"authorization", "Basic c2VjcmV0", MOAT_GRPC_GRPC_ERROR, 200, MOAT_CODE_UNAUTHENTICATED,
         "invalid_token"},
        {":path", "/moat.v1.Nope/Nothing", MOAT_GRPC_GRPC_ERROR, 200, MOAT_CODE_UNIMPLEMENTED,
         "unknown_method"},
        {"grpc-encoding", "gzip", MOAT_GRPC_GRPC_ERROR, 200, MOAT_CODE_UNIMPLEMENTED,
         "unsupported_encoding"},
        {"te", "gzip", MOAT_GRPC_GRPC_ERROR, 200, MOAT_CODE_INTERNAL, "te_trailers_required"},
        {"grpc-timeout", "10x", MOAT_GRPC_GRPC_ERROR, 200, MOAT_CODE_INTERNAL, "bad_timeout"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        moat_grpc_request r;
        good_request(&r);
        /* A later header of the same name wins, as it would in a list of one. */
        header(&r, cases[i].name, cases[i].value);
        int http;
        moat_status st;
        assert_int_equal(finish(&r, &http, &st), cases[i].verdict);
        assert_int_equal(http, cases[i].http);
        assert_int_equal(st.code, cases[i].code);
        if (cases[i].reason != NULL)
            assert_string_equal(st.reason, cases[i].reason);
    }
    /* No token at all. */
    moat_grpc_request r;
    moat_grpc_request_init(&r, 8192);
    header(&r, ":method", "POST");
    header(&r, ":path", "/moat.v1.Health/Check");
    header(&r, "content-type", "application/grpc");
    header(&r, "te", "trailers");
    int http;
    moat_status st;
    assert_int_equal(finish(&r, &http, &st), MOAT_GRPC_GRPC_ERROR);
    assert_string_equal(st.reason, "missing_token");
    /* An unknown method is not revealed before the token is checked. */
    header(&r, ":path", "/moat.v1.Nope/Nothing");
    assert_int_equal(finish(&r, &http, &st), MOAT_GRPC_GRPC_ERROR);
    assert_int_equal(st.code, MOAT_CODE_UNAUTHENTICATED);
}

/* Probes call grpc.health.v1 without a token; nothing else goes without one. */
static void test_health_needs_no_token(void **state)
{
    (void)state;
    moat_grpc_request r;
    moat_grpc_request_init(&r, 8192);
    header(&r, ":method", "POST");
    header(&r, ":path", "/grpc.health.v1.Health/Watch");
    header(&r, "content-type", "application/grpc");
    header(&r, "te", "trailers");
    int http;
    moat_status st;
    assert_int_equal(finish(&r, &http, &st), MOAT_GRPC_ACCEPT);
    header(&r, ":path", MOAT_GRPC_REFLECTION_PATH);
    assert_int_equal(finish(&r, &http, &st), MOAT_GRPC_GRPC_ERROR);
    assert_string_equal(st.reason, "missing_token");
    header(&r, "authorization", "Bearer secret");
    assert_int_equal(finish(&r, &http, &st), MOAT_GRPC_ACCEPT);
    assert_true(r.reflection);
    assert_null(r.method);
}

typedef Grpc__Reflection__V1alpha__ServerReflectionResponse reflection_response;

/* Asks one reflection question; the answer is freed by the caller. */
static reflection_response *ask(Grpc__Reflection__V1alpha__ServerReflectionRequest *q)
{
    uint8_t in[256];
    size_t n = grpc__reflection__v1alpha__server_reflection_request__pack(q, in);
    uint8_t *out = NULL;
    size_t out_len = 0;
    assert_int_equal(moat_grpc_reflection_answer(in, n, &out, &out_len), MOAT_OK);
    reflection_response *r =
        grpc__reflection__v1alpha__server_reflection_response__unpack(NULL, out_len, out);
    free(out);
    assert_non_null(r);
    return r;
}

/* The first file of a FileDescriptorResponse is the one asked for: its name is field 1. */
static void assert_first_file(const reflection_response *r, const char *name)
{
    assert_int_equal(
        r->message_response_case,
        GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_FILE_DESCRIPTOR_RESPONSE);
    const ProtobufCBinaryData *f = &r->file_descriptor_response->file_descriptor_proto[0];
    assert_true(f->len > 2 + strlen(name));
    assert_int_equal(f->data[0], 0x0a);
    assert_int_equal(f->data[1], strlen(name));
    assert_memory_equal(f->data + 2, name, strlen(name));
}

static void test_reflection(void **state)
{
    (void)state;
    Grpc__Reflection__V1alpha__ServerReflectionRequest q =
        GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_REQUEST__INIT;
    q.message_request_case =
        GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_LIST_SERVICES;
    q.list_services = "";
    reflection_response *r = ask(&q);
    assert_int_equal(r->list_services_response->n_service, 6);
    assert_string_equal(r->list_services_response->service[0]->name, "grpc.health.v1.Health");
    assert_string_equal(r->list_services_response->service[5]->name, "moat.v1.Sandboxes");
    grpc__reflection__v1alpha__server_reflection_response__free_unpacked(r, NULL);

    q.message_request_case =
        GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_SYMBOL;
    const char *symbols[][2] = {{"moat.v1.Exec", "moat/v1/exec.proto"},
                                {"moat.v1.Exec.RunCommand", "moat/v1/exec.proto"},
                                {"moat.v1.ExecEvent.Output", "moat/v1/exec.proto"},
                                {"moat.v1.OutputStream", "moat/v1/exec.proto"},
                                {"grpc.health.v1.Health", "grpc/health/v1/health.proto"}};
    for (size_t i = 0; i < sizeof(symbols) / sizeof(symbols[0]); i++) {
        q.file_containing_symbol = (char *)symbols[i][0];
        r = ask(&q);
        assert_first_file(r, symbols[i][1]);
        grpc__reflection__v1alpha__server_reflection_response__free_unpacked(r, NULL);
    }
    /* A file comes with what it imports. */
    q.message_request_case =
        GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_BY_FILENAME;
    q.file_by_filename = "moat/v1/sandbox.proto";
    r = ask(&q);
    assert_first_file(r, "moat/v1/sandbox.proto");
    grpc__reflection__v1alpha__server_reflection_response__free_unpacked(r, NULL);

    q.file_by_filename = "nope.proto";
    r = ask(&q);
    assert_int_equal(
        r->message_response_case,
        GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_ERROR_RESPONSE);
    assert_int_equal(r->error_response->error_code, MOAT_CODE_NOT_FOUND);
    assert_string_equal(r->original_request->file_by_filename, "nope.proto");
    grpc__reflection__v1alpha__server_reflection_response__free_unpacked(r, NULL);

    q.message_request_case =
        GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_ALL_EXTENSION_NUMBERS_OF_TYPE;
    q.all_extension_numbers_of_type = "moat.v1.ExecEvent";
    r = ask(&q);
    assert_int_equal(r->error_response->error_code, MOAT_CODE_UNIMPLEMENTED);
    grpc__reflection__v1alpha__server_reflection_response__free_unpacked(r, NULL);

    /* Not a request at all. */
    static const uint8_t junk[] = {0xff, 0xff, 0xff};
    uint8_t *out = NULL;
    size_t out_len = 0;
    assert_int_equal(moat_grpc_reflection_answer(junk, sizeof(junk), &out, &out_len), MOAT_E_INVAL);
    assert_null(out);
}

static void test_header_list_limit(void **state)
{
    (void)state;
    moat_grpc_request r;
    good_request(&r);
    char big[9000];
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    header(&r, "x-filler", big);
    int http;
    moat_status st;
    assert_int_equal(finish(&r, &http, &st), MOAT_GRPC_GRPC_ERROR);
    assert_int_equal(st.code, MOAT_CODE_RESOURCE_EXHAUSTED);
    assert_string_equal(st.reason, "headers_too_large");
    /* A token too long to hold is refused, not cut. */
    good_request(&r);
    char longtok[MOAT_GRPC_TOKEN_MAX + 16] = "Bearer ";
    memset(longtok + 7, 's', sizeof(longtok) - 8);
    longtok[sizeof(longtok) - 1] = '\0';
    header(&r, "authorization", longtok);
    assert_int_equal(finish(&r, &http, &st), MOAT_GRPC_GRPC_ERROR);
    assert_string_equal(st.reason, "invalid_token");
}

static void test_percent_encoding(void **state)
{
    (void)state;
    char out[64];
    const char in[] = "50% done\n\xc3\xa9";
    assert_int_equal(moat_grpc_percent_encode(in, strlen(in), out, sizeof(out)), MOAT_OK);
    assert_string_equal(out, "50%25 done%0A%C3%A9");
    char back[64];
    size_t n = moat_grpc_percent_decode(out, strlen(out), back, sizeof(back));
    assert_int_equal(n, strlen(in));
    assert_string_equal(back, in);
    /* A '%' without two hex digits stays as it is. */
    n = moat_grpc_percent_decode("100%", 4, back, sizeof(back));
    assert_string_equal(back, "100%");
    n = moat_grpc_percent_decode("%zz%4", 5, back, sizeof(back));
    assert_string_equal(back, "%zz%4");
    /* Too small: refused, and what fit is still a string. */
    assert_int_equal(moat_grpc_percent_encode("\n\n\n", 3, out, 5), MOAT_E_TOO_BIG);
    assert_string_equal(out, "%0A");
}

static void test_base64(void **state)
{
    (void)state;
    const char *vectors[][2] = {
        {"", ""},           {"f", "Zg"},          {"fo", "Zm8"},         {"foo", "Zm9v"},
        {"foob", "Zm9vYg"}, {"fooba", "Zm9vYmE"}, {"foobar", "Zm9vYmFy"}};
    for (size_t i = 0; i < sizeof(vectors) / sizeof(vectors[0]); i++) {
        char enc[32];
        assert_int_equal(moat_grpc_base64_encode((const uint8_t *)vectors[i][0],
                                                 strlen(vectors[i][0]), enc, sizeof(enc)),
                         MOAT_OK);
        assert_string_equal(enc, vectors[i][1]);
        uint8_t dec[32];
        size_t n;
        assert_int_equal(moat_grpc_base64_decode(enc, strlen(enc), dec, sizeof(dec), &n), MOAT_OK);
        assert_int_equal(n, strlen(vectors[i][0]));
        assert_memory_equal(dec, vectors[i][0], n);
    }
    uint8_t dec[8];
    size_t n;
    assert_int_equal(moat_grpc_base64_decode("Zm8=", 4, dec, sizeof(dec), &n), MOAT_OK);
    assert_int_equal(n, 2);
    assert_int_equal(moat_grpc_base64_decode("Zg==", 4, dec, sizeof(dec), &n), MOAT_OK);
    assert_int_equal(n, 1);
    assert_int_equal(moat_grpc_base64_decode("Z", 1, dec, sizeof(dec), &n), MOAT_E_INVAL);
    assert_int_equal(moat_grpc_base64_decode("Zm9v!", 5, dec, sizeof(dec), &n), MOAT_E_INVAL);
    assert_int_equal(moat_grpc_base64_decode("Zm9vYmFy", 8, dec, 5, &n), MOAT_E_TOO_BIG);
    char enc[4];
    assert_int_equal(moat_grpc_base64_encode((const uint8_t *)"foo", 3, enc, 4), MOAT_E_TOO_BIG);
}

static void test_status_details_round_trip(void **state)
{
    (void)state;
    moat_status st;
    moat_status_set(&st, MOAT_CODE_NOT_FOUND, "session_not_found", "no session %s", "abc");
    moat_status_add_detail(&st, "session_id", "abc");
    char out[MOAT_GRPC_DETAILS_MAX];
    assert_int_equal(moat_grpc_status_details(&st, out, sizeof(out)), MOAT_OK);
    assert_true(strlen(out) > 0);
    assert_null(strchr(out, '='));
    moat_status back;
    assert_int_equal(moat_grpc_status_details_parse(out, strlen(out), &back), MOAT_OK);
    assert_int_equal(back.code, MOAT_CODE_NOT_FOUND);
    assert_string_equal(back.message, "no session abc");
    assert_string_equal(back.reason, "session_not_found");
    assert_int_equal(back.detail_count, 1);
    assert_string_equal(moat_status_detail_get(&back, "session_id"), "abc");
    /* The largest status there can be still fits. */
    memset(st.message, 'm', sizeof(st.message) - 1);
    memset(st.reason, 'r', sizeof(st.reason) - 1);
    for (size_t i = 0; i < MOAT_STATUS_DETAILS_MAX; i++) {
        memset(st.details[i].key, 'k', sizeof(st.details[i].key) - 1);
        memset(st.details[i].value, 'v', sizeof(st.details[i].value) - 1);
    }
    st.detail_count = MOAT_STATUS_DETAILS_MAX;
    assert_int_equal(moat_grpc_status_details(&st, out, sizeof(out)), MOAT_OK);
    assert_int_equal(moat_grpc_status_details_parse(out, strlen(out), &back), MOAT_OK);
    assert_int_equal(strlen(back.message), sizeof(st.message) - 1);
    /* OK says nothing; garbage does not parse. */
    moat_status_clear(&st);
    assert_int_equal(moat_grpc_status_details(&st, out, sizeof(out)), MOAT_OK);
    assert_string_equal(out, "");
    assert_int_equal(moat_grpc_status_details_parse("!!", 2, &back), MOAT_E_INVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_messages_one_byte_at_a_time),
        cmocka_unit_test(test_partial_message_is_seen),
        cmocka_unit_test(test_oversized_refused_before_allocation),
        cmocka_unit_test(test_compressed_flag),
        cmocka_unit_test(test_timeout),
        cmocka_unit_test(test_request_accepted),
        cmocka_unit_test(test_request_refusals),
        cmocka_unit_test(test_health_needs_no_token),
        cmocka_unit_test(test_reflection),
        cmocka_unit_test(test_header_list_limit),
        cmocka_unit_test(test_percent_encoding),
        cmocka_unit_test(test_base64),
        cmocka_unit_test(test_status_details_round_trip),
    };
    return moat_run_group_tests("grpc_codec", tests, NULL, NULL);
}
