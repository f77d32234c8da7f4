/* moat_wire: decoder splits, bad lengths, frame codec, windows, stream table. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "moat_test.h"

#include "../vectors/vectors.h"
#include "wire/wire.h"

static unsigned char *load(const char *name, size_t *len)
{
    unsigned char *v = moat_vector_load(name, len);
    assert_non_null(v);
    assert_true(*len > MOAT_WIRE_HEADER_SIZE);
    return v;
}

/* Feeds data in pieces of the given sizes (cycled) and checks exactly one
 * frame comes out whose body equals the vector's body. */
static void feed_split(const unsigned char *data, size_t len, size_t first, size_t step)
{
    moat_wire_decoder d;
    moat_wire_decoder_init(&d, MOAT_WIRE_DEFAULT_MAX_FRAME);
    size_t pos = 0, frames = 0;
    while (pos < len) {
        size_t piece = pos == 0 ? first : step;
        if (piece > len - pos)
            piece = len - pos;
        size_t off = 0;
        while (off < piece) {
            size_t used;
            moat_slice body;
            moat_err err = moat_wire_decoder_feed(&d, data + pos + off, piece - off, &used, &body);
            assert_true(used <= piece - off);
            off += used;
            if (err == MOAT_E_AGAIN) {
                assert_int_equal(off, piece);
                break;
            }
            assert_int_equal(err, MOAT_OK);
            assert_int_equal(body.len, len - MOAT_WIRE_HEADER_SIZE);
            assert_memory_equal(body.data, data + MOAT_WIRE_HEADER_SIZE, body.len);
            moat_frame f;
            assert_int_equal(moat_wire_frame_decode(body, &f), MOAT_OK);
            frames++;
        }
        pos += piece;
    }
    assert_int_equal(frames, 1);
    moat_wire_decoder_free(&d);
}

static void test_every_split_of_every_vector(void **state)
{
    (void)state;
    for (size_t v = 0; v < MOAT_VECTOR_COUNT; v++) {
        size_t len = 0;
        unsigned char *data = load(moat_vector_names[v], &len);
        for (size_t cut = 0; cut <= len; cut++)
            feed_split(data, len, cut ? cut : 1, len); /* two pieces, cut anywhere */
        feed_split(data, len, 1, 1);                   /* one byte at a time */
        for (size_t step = 2; step < 9; step++)
            feed_split(data, len, step, step);
        free(data);
    }
}

static void test_zero_copy_when_whole(void **state)
{
    (void)state;
    size_t len;
    unsigned char *data = load("exec_output", &len);
    moat_wire_decoder d;
    moat_wire_decoder_init(&d, MOAT_WIRE_DEFAULT_MAX_FRAME);
    size_t used;
    moat_slice body;
    assert_int_equal(moat_wire_decoder_feed(&d, data, len, &used, &body), MOAT_OK);
    assert_ptr_equal(body.data, data + MOAT_WIRE_HEADER_SIZE);
    assert_int_equal(used, len);
    moat_wire_decoder_free(&d);
    free(data);
}

static void test_back_to_back_frames(void **state)
{
    (void)state;
    unsigned char all[8192];
    size_t total = 0, counts[MOAT_VECTOR_COUNT];
    for (size_t v = 0; v < MOAT_VECTOR_COUNT; v++) {
        size_t len = 0;
        unsigned char *data = load(moat_vector_names[v], &len);
        assert_true(total + len <= sizeof all);
        memcpy(all + total, data, len);
        counts[v] = len;
        total += len;
        free(data);
    }
    for (size_t step = 1; step <= total; step = step * 3 + 1) {
        moat_wire_decoder d;
        moat_wire_decoder_init(&d, MOAT_WIRE_PREHELLO_MAX_FRAME);
        size_t pos = 0, n = 0;
        while (pos < total) {
            size_t piece = step < total - pos ? step : total - pos, off = 0;
            while (off < piece) {
                size_t used;
                moat_slice body;
                moat_err err =
                    moat_wire_decoder_feed(&d, all + pos + off, piece - off, &used, &body);
                off += used;
                if (err == MOAT_E_AGAIN)
                    break;
                assert_int_equal(err, MOAT_OK);
                assert_true(n < MOAT_VECTOR_COUNT);
                assert_int_equal(body.len + MOAT_WIRE_HEADER_SIZE, counts[n]);
                n++;
            }
            pos += piece;
        }
        assert_int_equal(n, MOAT_VECTOR_COUNT);
        moat_wire_decoder_free(&d);
    }
}

static void expect_sticky(const unsigned char *in, size_t len, uint32_t max, moat_err want)
{
    moat_wire_decoder d;
    moat_wire_decoder_init(&d, max);
    size_t used = 0, off = 0;
    moat_slice body;
    moat_err err = MOAT_E_AGAIN;
    while (err == MOAT_E_AGAIN && off < len) {
        err = moat_wire_decoder_feed(&d, in + off, 1, &used, &body);
        off += used;
    }
    assert_int_equal(err, want);
    assert_true(strlen(moat_wire_decoder_reason(&d)) > 0);
    /* The error sticks: more input changes nothing and nothing is buffered. */
    unsigned char ok[] = {0, 0, 0, 2, 0x4a, 0x00};
    assert_int_equal(moat_wire_decoder_feed(&d, ok, sizeof ok, &used, &body), want);
    assert_int_equal(used, 0);
    assert_null(d.body.data);
    moat_wire_decoder_free(&d);
}

static void test_bad_lengths(void **state)
{
    (void)state;
    unsigned char zero[] = {0, 0, 0, 0, 1, 2, 3};
    expect_sticky(zero, sizeof zero, MOAT_WIRE_DEFAULT_MAX_FRAME, MOAT_E_ZERO_LENGTH);
    unsigned char huge[] = {0xff, 0xff, 0xff, 0xff, 1};
    expect_sticky(huge, sizeof huge, MOAT_WIRE_DEFAULT_MAX_FRAME, MOAT_E_TOO_BIG);
    unsigned char over[] = {0, 0, 0x10, 0x01, 1}; /* 4097 before hello */
    expect_sticky(over, sizeof over, MOAT_WIRE_PREHELLO_MAX_FRAME, MOAT_E_TOO_BIG);
    /* Exactly at the limit is fine: it waits for the body. */
    unsigned char at[] = {0, 0, 0x10, 0x00, 1};
    moat_wire_decoder d;
    moat_wire_decoder_init(&d, MOAT_WIRE_PREHELLO_MAX_FRAME);
    size_t used;
    moat_slice body;
    assert_int_equal(moat_wire_decoder_feed(&d, at, sizeof at, &used, &body), MOAT_E_AGAIN);
    assert_int_equal(used, sizeof at);
    /* Raising the limit after the hello admits bigger frames. */
    moat_wire_decoder_free(&d);
    moat_wire_decoder_init(&d, MOAT_WIRE_PREHELLO_MAX_FRAME);
    moat_wire_decoder_set_max(&d, MOAT_WIRE_DEFAULT_MAX_FRAME);
    assert_int_equal(moat_wire_decoder_feed(&d, over, sizeof over, &used, &body), MOAT_E_AGAIN);
    moat_wire_decoder_set_max(&d, UINT32_MAX);
    assert_int_equal(d.max_frame, MOAT_WIRE_MAX_FRAME_LIMIT);
    moat_wire_decoder_free(&d);
}

static void test_truncated_frames(void **state)
{
    (void)state;
    for (size_t v = 0; v < MOAT_VECTOR_COUNT; v++) {
        size_t len = 0;
        unsigned char *data = load(moat_vector_names[v], &len);
        for (size_t cut = 0; cut < len; cut++) {
            moat_wire_decoder d;
            moat_wire_decoder_init(&d, MOAT_WIRE_DEFAULT_MAX_FRAME);
            size_t used;
            moat_slice body;
            assert_int_equal(moat_wire_decoder_feed(&d, data, cut, &used, &body), MOAT_E_AGAIN);
            assert_int_equal(used, cut);
            moat_wire_decoder_free(&d);
            /* A body cut short (length prefix adjusted) is malformed protobuf or
             * a shorter valid frame, never a crash or an over-read. */
            if (cut > MOAT_WIRE_HEADER_SIZE) {
                moat_frame f;
                moat_slice part = {data + MOAT_WIRE_HEADER_SIZE, cut - MOAT_WIRE_HEADER_SIZE};
                moat_err err = moat_wire_frame_decode(part, &f);
                assert_true(err == MOAT_OK || err == MOAT_E_PROTO || err == MOAT_E_UNKNOWN_KIND);
            }
        }
        free(data);
    }
}

static void test_garbage_and_unknown_kinds(void **state)
{
    (void)state;
    moat_frame f;
    unsigned char bad_varint[] = {0x08, 0xff, 0xff, 0xff, 0xff, 0xff,
                                  0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    assert_int_equal(moat_wire_frame_decode((moat_slice){bad_varint, sizeof bad_varint}, &f),
                     MOAT_E_PROTO);
    unsigned char overlong[] = {0x12, 0x40, 0x08, 0x01}; /* hello claims 64 bytes */
    assert_int_equal(moat_wire_frame_decode((moat_slice){overlong, sizeof overlong}, &f),
                     MOAT_E_PROTO);
    unsigned char wire_type7[] = {0x0f, 0x00};
    assert_int_equal(moat_wire_frame_decode((moat_slice){wire_type7, sizeof wire_type7}, &f),
                     MOAT_E_PROTO);
    unsigned char only_stream[] = {0x08, 0x05};
    assert_int_equal(moat_wire_frame_decode((moat_slice){only_stream, sizeof only_stream}, &f),
                     MOAT_E_UNKNOWN_KIND);
    unsigned char field12[] = {0x08, 0x01, 0x62, 0x00}; /* kind 12, unknown here */
    assert_int_equal(moat_wire_frame_decode((moat_slice){field12, sizeof field12}, &f),
                     MOAT_E_UNKNOWN_KIND);
    /* A bytes field sent with a varint wire type: nanopb hands the callback a
     * copy on its stack, which must never become a slice (found by fuzzing). */
    unsigned char payload_varint[] = {0x08, 0x03, 0x2a, 0x02, 0x08, 0x05};
    assert_int_equal(
        moat_wire_frame_decode((moat_slice){payload_varint, sizeof payload_varint}, &f),
        MOAT_E_PROTO);
    unsigned char method_varint[] = {0x08, 0x01, 0x22, 0x02, 0x08, 0x05};
    assert_int_equal(moat_wire_frame_decode((moat_slice){method_varint, sizeof method_varint}, &f),
                     MOAT_E_PROTO);
    unsigned char empty_ping[] = {0x4a, 0x00};
    assert_int_equal(moat_wire_frame_decode((moat_slice){empty_ping, sizeof empty_ping}, &f),
                     MOAT_OK);
    assert_int_equal(f.kind, MOAT_FRAME_PING);
    assert_string_equal(moat_frame_kind_name(f.kind), "ping");
    assert_string_equal(moat_frame_kind_name((moat_frame_kind)42), "unknown");
    /* Pseudo-random garbage never crashes and always gives a defined result. */
    uint32_t x = 12345;
    unsigned char buf[64];
    for (int i = 0; i < 20000; i++) {
        size_t n = 1 + (size_t)(i % 63);
        for (size_t j = 0; j < n; j++) {
            x = x * 1103515245u + 12345u;
            buf[j] = (unsigned char)(x >> 16);
        }
        moat_err err = moat_wire_frame_decode((moat_slice){buf, n}, &f);
        assert_true(err == MOAT_OK || err == MOAT_E_PROTO || err == MOAT_E_UNKNOWN_KIND ||
                    err == MOAT_E_TOO_BIG);
    }
}

static void test_encode_roundtrip(void **state)
{
    (void)state;
    uint8_t out[8192];
    for (size_t v = 0; v < MOAT_VECTOR_COUNT; v++) {
        size_t len = 0, written;
        unsigned char *data = load(moat_vector_names[v], &len);
        moat_frame f;
        assert_int_equal(moat_wire_frame_decode((moat_slice){data + 4, len - 4}, &f), MOAT_OK);
        assert_int_equal(moat_wire_encoded_size(&f), len);
        assert_int_equal(moat_wire_encode(&f, out, sizeof out, &written), MOAT_OK);
        assert_int_equal(written, len);
        assert_memory_equal(out, data, len);
        /* Every shorter buffer is refused without writing past it. */
        for (size_t cap = 0; cap < len; cap++)
            assert_int_equal(moat_wire_encode(&f, out, cap, &written), MOAT_E_TOO_BIG);
        free(data);
    }
}

static void test_kv_limits(void **state)
{
    (void)state;
    moat_frame f;
    memset(&f, 0, sizeof f);
    f.kind = MOAT_FRAME_CALL;
    f.stream_id = 1;
    f.u.call.method = moat_slice_str("/moat.v1.Health/Check");
    f.u.call.metadata_count = MOAT_WIRE_MAX_KV;
    char keys[MOAT_WIRE_MAX_KV][8];
    for (size_t i = 0; i < MOAT_WIRE_MAX_KV; i++) {
        snprintf(keys[i], sizeof keys[i], "k%zu", i);
        f.u.call.metadata[i].key = moat_slice_str(keys[i]);
        f.u.call.metadata[i].value = moat_slice_str("v");
    }
    uint8_t out[4096];
    size_t n;
    assert_int_equal(moat_wire_encode(&f, out, sizeof out, &n), MOAT_OK);
    moat_frame g;
    assert_int_equal(moat_wire_frame_decode((moat_slice){out + 4, n - 4}, &g), MOAT_OK);
    assert_int_equal(g.u.call.metadata_count, MOAT_WIRE_MAX_KV);
    assert_true(moat_slice_eq_str(g.u.call.metadata[15].key, "k15"));
    /* One entry more on the wire: MOAT_E_TOO_BIG. A Call of 17 entries of 8
     * bytes each: 136 = varint 0x88 0x01. */
    unsigned char raw[3 + 17 * 8] = {0x22, 0x88, 0x01};
    for (size_t i = 0; i < 17; i++)
        memcpy(raw + 3 + i * 8, (unsigned char[]){0x1a, 0x06, 0x0a, 0x01, 'k', 0x12, 0x01, 'v'}, 8);
    assert_int_equal(moat_wire_frame_decode((moat_slice){raw, sizeof raw}, &g), MOAT_E_TOO_BIG);
    assert_int_equal(moat_wire_frame_decode((moat_slice){raw, sizeof raw - 8}, &g), MOAT_E_PROTO);
    raw[1] = 0x80; /* 128 bytes: 16 entries */
    assert_int_equal(moat_wire_frame_decode((moat_slice){raw, sizeof raw - 8}, &g), MOAT_OK);
    assert_int_equal(g.u.call.metadata_count, 16);
    f.u.call.metadata_count = MOAT_WIRE_MAX_KV + 1;
    assert_int_equal(moat_wire_encoded_size(&f), 0);
    assert_int_equal(moat_wire_encode(&f, out, sizeof out, &n), MOAT_E_INVAL);
    f.kind = MOAT_FRAME_NONE;
    assert_int_equal(moat_wire_encode(&f, out, sizeof out, &n), MOAT_E_INVAL);
}

static void test_windows(void **state)
{
    (void)state;
    moat_window w;
    moat_window_init(&w, 1000);
    assert_int_equal(moat_window_consume(&w, 600), MOAT_OK);
    assert_int_equal(moat_window_consume(&w, 401), MOAT_E_WINDOW);
    assert_int_equal(w.available, 400);
    assert_int_equal(moat_window_consume(&w, 400), MOAT_OK);
    assert_int_equal(moat_window_consume(&w, 1), MOAT_E_WINDOW);
    assert_int_equal(w.available, 0);
    assert_int_equal(moat_window_grant(&w, 0), MOAT_E_WINDOW);
    assert_int_equal(moat_window_grant(&w, 500), MOAT_OK);
    assert_int_equal(moat_window_grant(&w, MOAT_WIRE_MAX_WINDOW - 500), MOAT_OK);
    assert_int_equal(w.available, MOAT_WIRE_MAX_WINDOW);
    assert_int_equal(moat_window_grant(&w, 1), MOAT_E_WINDOW);
    assert_int_equal(w.available, MOAT_WIRE_MAX_WINDOW);

    /* Receive side: grants are batched at half the initial window. */
    moat_window r;
    moat_window_init(&r, 1000);
    assert_int_equal(moat_window_consume(&r, 1000), MOAT_OK);
    assert_int_equal(moat_window_release(&r, 200), 0);
    assert_int_equal(moat_window_release(&r, 299), 0);
    assert_int_equal(moat_window_release(&r, 1), 500);
    assert_int_equal(r.available, 500);
    assert_int_equal(moat_window_release(&r, 500), 500);
    assert_int_equal(r.available, 1000);
    /* Releasing more than was ever consumed never pushes it past the ceiling. */
    moat_window big;
    moat_window_init(&big, UINT32_MAX);
    assert_int_equal(big.available, MOAT_WIRE_MAX_WINDOW);
    assert_int_equal(moat_window_release(&big, UINT32_MAX), 0);
    assert_true(big.available <= MOAT_WIRE_MAX_WINDOW);
    /* A long random walk keeps 0 <= available <= max. */
    uint32_t x = 7;
    for (int i = 0; i < 100000; i++) {
        x = x * 1664525u + 1013904223u;
        uint32_t n = x % 700;
        if (x & 0x10000) {
            if (moat_window_consume(&r, n) == MOAT_OK)
                moat_window_release(&r, n);
        } else {
            moat_window_grant(&r, n);
        }
        assert_true(r.available <= MOAT_WIRE_MAX_WINDOW);
    }
}

static void count_cb(uint32_t id, void *user, void *arg)
{
    (void)user;
    *(uint32_t *)arg += id;
}

static void test_stream_table(void **state)
{
    (void)state;
    moat_stream_table *t = moat_stream_table_new(4);
    assert_non_null(t);
    int a, b;
    assert_int_equal(moat_stream_table_open(t, 0, &a), MOAT_E_STREAM);
    assert_int_equal(moat_stream_table_open(t, 2, &a), MOAT_E_STREAM);
    assert_int_equal(moat_stream_table_open(t, 3, &a), MOAT_OK);
    assert_int_equal(moat_stream_table_open(t, 3, &b), MOAT_E_STREAM); /* reuse */
    assert_int_equal(moat_stream_table_open(t, 1, &b), MOAT_E_STREAM); /* decreasing */
    assert_int_equal(moat_stream_table_open(t, 5, &b), MOAT_OK);
    assert_ptr_equal(moat_stream_table_get(t, 3), &a);
    assert_ptr_equal(moat_stream_table_get(t, 5), &b);
    assert_null(moat_stream_table_get(t, 7));
    assert_null(moat_stream_table_get(t, 0));
    assert_int_equal(moat_stream_table_close(t, 3), MOAT_OK);
    assert_int_equal(moat_stream_table_close(t, 3), MOAT_E_NOT_FOUND);
    assert_int_equal(moat_stream_table_open(t, 3, &a), MOAT_E_STREAM); /* closed ids stay used */
    assert_int_equal(moat_stream_table_open(t, 7, &a), MOAT_OK);
    assert_int_equal(moat_stream_table_open(t, 9, &a), MOAT_OK);
    assert_int_equal(moat_stream_table_open(t, 11, &a), MOAT_OK);
    assert_int_equal(moat_stream_table_count(t), 4);
    assert_int_equal(moat_stream_table_open(t, 13, &a), MOAT_E_TOO_BIG);
    assert_int_equal(moat_stream_table_last_id(t), 11);
    uint32_t sum = 0;
    moat_stream_table_each(t, count_cb, &sum);
    assert_int_equal(sum, 5 + 7 + 9 + 11);
    moat_stream_table_free(t);

    /* Many opens and closes with collisions: lookups stay exact. */
    t = moat_stream_table_new(64);
    static int marks[4000];
    uint32_t open_ids[64];
    size_t nopen = 0;
    uint32_t id = 1;
    for (int i = 0; i < 2000; i++, id += 2) {
        if (nopen == 64 || (nopen > 0 && i % 3 == 0)) {
            size_t k = (size_t)i % nopen;
            assert_int_equal(moat_stream_table_close(t, open_ids[k]), MOAT_OK);
            open_ids[k] = open_ids[--nopen];
        }
        assert_int_equal(moat_stream_table_open(t, id, &marks[i]), MOAT_OK);
        open_ids[nopen++] = id;
        for (size_t k = 0; k < nopen; k++)
            assert_ptr_equal(moat_stream_table_get(t, open_ids[k]), &marks[(open_ids[k] - 1) / 2]);
        assert_int_equal(moat_stream_table_count(t), nopen);
    }
    moat_stream_table_free(t);
    assert_null(moat_stream_table_new(UINT32_MAX));
}

static void test_slices(void **state)
{
    (void)state;
    assert_true(moat_slice_eq_str(moat_slice_str("abc"), "abc"));
    assert_false(moat_slice_eq_str(moat_slice_str("abc"), "abd"));
    assert_false(moat_slice_eq_str(moat_slice_str("ab"), "abc"));
    assert_true(moat_slice_eq_str(moat_slice_str(NULL), ""));
}

/* The prefix plus the payload is byte for byte what moat_wire_encode writes. */
static void test_message_prefix(void **state)
{
    (void)state;
    static const size_t sizes[] = {0, 1, 127, 128, 16383, 16384, 65536, 2097151, 2097152};
    static const uint32_t ids[] = {0, 1, 127, 128, 0x7fffffffu};
    size_t max = sizes[sizeof(sizes) / sizeof(sizes[0]) - 1];
    uint8_t *payload = malloc(max);
    uint8_t *whole = malloc(max + 64);
    uint8_t *split = malloc(max + 64);
    assert_non_null(payload);
    assert_non_null(whole);
    assert_non_null(split);
    for (size_t i = 0; i < max; i++)
        payload[i] = (uint8_t)(i * 131u + 7u);
    for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
        for (size_t k = 0; k < sizeof(ids) / sizeof(ids[0]); k++) {
            moat_frame f = {0};
            f.stream_id = ids[k];
            f.kind = MOAT_FRAME_MESSAGE;
            f.u.message.payload = (moat_slice){payload, sizes[s]};
            size_t n = 0, head = 0;
            assert_int_equal(moat_wire_encode(&f, whole, max + 64, &n), MOAT_OK);
            assert_int_equal(moat_wire_encode_message_prefix(ids[k], sizes[s], split,
                                                             MOAT_WIRE_MESSAGE_PREFIX_MAX, &head),
                             MOAT_OK);
            assert_true(head <= MOAT_WIRE_MESSAGE_PREFIX_MAX);
            assert_int_equal(head + sizes[s], n);
            memcpy(split + head, payload, sizes[s]);
            assert_memory_equal(split, whole, n);
        }
    }
    size_t head = 0;
    assert_int_equal(moat_wire_encode_message_prefix(1, 100, split, 5, &head), MOAT_E_TOO_BIG);
    assert_int_equal(moat_wire_encode_message_prefix(1, (size_t)UINT32_MAX + 1, split,
                                                     MOAT_WIRE_MESSAGE_PREFIX_MAX, &head),
                     MOAT_E_TOO_BIG);
    free(payload);
    free(whole);
    free(split);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_split_of_every_vector),
        cmocka_unit_test(test_zero_copy_when_whole),
        cmocka_unit_test(test_back_to_back_frames),
        cmocka_unit_test(test_bad_lengths),
        cmocka_unit_test(test_truncated_frames),
        cmocka_unit_test(test_garbage_and_unknown_kinds),
        cmocka_unit_test(test_encode_roundtrip),
        cmocka_unit_test(test_kv_limits),
        cmocka_unit_test(test_windows),
        cmocka_unit_test(test_stream_table),
        cmocka_unit_test(test_slices),
        cmocka_unit_test(test_message_prefix),
    };
    return moat_run_group_tests("test_wire", tests, NULL, NULL);
}
