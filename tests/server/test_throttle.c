/* Failed-hello buckets: the burst, the refill, and a table that stays bounded and keeps its
 * throttled addresses while a flood of other addresses passes through it. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <string.h>

#include "moat_test.h"

#include "throttle.h"

static moat_throttle_addr v4(uint32_t ip)
{
    moat_throttle_addr a = {{0}};
    a.b[10] = a.b[11] = 0xff;
    a.b[12] = (uint8_t)(ip >> 24);
    a.b[13] = (uint8_t)(ip >> 16);
    a.b[14] = (uint8_t)(ip >> 8);
    a.b[15] = (uint8_t)ip;
    return a;
}

static void test_burst_then_refill(void **state)
{
    (void)state;
    moat_throttle *t = moat_throttle_new(42);
    assert_non_null(t);
    moat_throttle_addr a = v4(0x7f000002), b = v4(0x7f000003);
    uint64_t now = 1000;
    for (int i = 0; i < MOAT_THROTTLE_BURST; i++) {
        assert_true(moat_throttle_allows(t, &a, now));
        moat_throttle_charge(t, &a, now);
    }
    assert_false(moat_throttle_allows(t, &a, now));
    assert_int_equal(moat_throttle_retry_ms(t, &a, now), MOAT_THROTTLE_REFILL_MS);
    /* Another address is not affected. */
    assert_true(moat_throttle_allows(t, &b, now));
    /* One more try per refill period. */
    now += MOAT_THROTTLE_REFILL_MS - 1;
    assert_false(moat_throttle_allows(t, &a, now));
    assert_int_equal(moat_throttle_retry_ms(t, &a, now), 1);
    now += 1;
    assert_true(moat_throttle_allows(t, &a, now));
    moat_throttle_charge(t, &a, now);
    assert_false(moat_throttle_allows(t, &a, now));
    /* A clock that goes backwards refills nothing and breaks nothing. */
    assert_false(moat_throttle_allows(t, &a, now - 500));
    /* A long quiet spell gives back the whole burst, and no more. */
    now += 3600u * 1000u;
    for (int i = 0; i < MOAT_THROTTLE_BURST; i++)
        moat_throttle_charge(t, &a, now);
    assert_false(moat_throttle_allows(t, &a, now));
    moat_throttle_free(t);
}

static void test_flood_of_addresses_keeps_throttled_one(void **state)
{
    (void)state;
    moat_throttle *t = moat_throttle_new(7);
    assert_non_null(t);
    moat_throttle_addr bad = v4(0x0a000001);
    uint64_t now = 5000;
    for (int i = 0; i < MOAT_THROTTLE_BURST; i++)
        moat_throttle_charge(t, &bad, now);
    assert_false(moat_throttle_allows(t, &bad, now));
    /* 100 times as many addresses as slots, each failing once: the table does not grow (its
     * size is fixed) and the fullest buckets make room, never the throttled one. */
    for (uint32_t i = 0; i < 100u * MOAT_THROTTLE_SLOTS; i++) {
        moat_throttle_addr other = v4(0x0b000000u + i);
        moat_throttle_charge(t, &other, now);
    }
    assert_false(moat_throttle_allows(t, &bad, now));
    /* An IPv6 address is its own /128. */
    moat_throttle_addr six = {{0x20, 0x01, 0x0d, 0xb8}};
    assert_true(moat_throttle_allows(t, &six, now));
    moat_throttle_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_burst_then_refill),
        cmocka_unit_test(test_flood_of_addresses_keeps_throttled_one),
    };
    return moat_run_group_tests("test_throttle", tests, NULL, NULL);
}
