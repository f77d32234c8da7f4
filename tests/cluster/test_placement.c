/* The power of two choices (src/cluster/directory.h) without etcd: which nodes fit, the home
 * first, two distinct draws and the better of them, and nothing when no node fits. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "moat_test.h"

#include "cluster/directory.h"

#define GiB (1024ll * 1024 * 1024)

static moat_node node(const char *id, int64_t slots_total, int64_t slots_used, int64_t mem_free)
{
    moat_node n;
    memset(&n, 0, sizeof(n));
    strcpy(n.id, id);
    strcpy(n.address, "127.0.0.1:1");
    n.load.slots_total = slots_total;
    n.load.slots_used = slots_used;
    n.load.memory_total_bytes = 64 * GiB;
    n.load.memory_used_bytes = 64 * GiB - mem_free;
    return n;
}

/* Draws from a fixed list, so each test knows which two nodes are sampled. */
typedef struct draws {
    uint64_t v[2];
    int next;
} draws;

static uint64_t from_list(void *ctx)
{
    draws *d = ctx;
    return d->v[d->next++ % 2];
}

static void test_fits(void **state)
{
    (void)state;
    moat_node full = node("full", 4, 4, 8 * GiB);
    moat_node over = node("over", 4, 9, 8 * GiB); /* capacity lowered under its load */
    moat_node tight = node("tight", 4, 0, GiB / 2);
    moat_node roomy = node("roomy", 4, 0, 8 * GiB);
    assert_false(moat_place_fits(&full, 0));
    assert_false(moat_place_fits(&over, 0));
    assert_false(moat_place_fits(&tight, GiB));
    assert_true(moat_place_fits(&tight, GiB / 2));
    assert_true(moat_place_fits(&roomy, GiB));
}

static void test_none_fits(void **state)
{
    (void)state;
    moat_node nodes[2] = {node("a", 1, 1, 8 * GiB), node("b", 4, 0, GiB / 4)};
    draws d = {{0, 0}, 0};
    assert_int_equal(moat_place_choose(nodes, 2, GiB, NULL, false, from_list, &d), -1);
    assert_int_equal(moat_place_choose(NULL, 0, GiB, NULL, false, from_list, &d), -1);
}

static void test_home_first(void **state)
{
    (void)state;
    moat_node nodes[3] = {node("a", 100, 0, 60 * GiB), node("home", 4, 3, GiB),
                          node("c", 100, 0, 60 * GiB)};
    draws d = {{0, 0}, 0};
    assert_int_equal(moat_place_choose(nodes, 3, GiB, "home", false, from_list, &d), 1);
    assert_int_equal(d.next, 0);
    /* A home without room is no better than any other node. */
    nodes[1].load.slots_used = 4;
    long i = moat_place_choose(nodes, 3, GiB, "home", false, from_list, &d);
    assert_true(i == 0 || i == 2);
}

static void test_better_of_two(void **state)
{
    (void)state;
    /* Fitting nodes in order: a, b, d (c does not fit). */
    moat_node nodes[4] = {node("a", 10, 8, 8 * GiB), node("b", 10, 2, 8 * GiB),
                          node("c", 10, 10, 8 * GiB), node("d", 10, 2, 9 * GiB)};
    draws d = {{0, 0}, 0}; /* a, then the first of the others: b */
    assert_int_equal(moat_place_choose(nodes, 4, GiB, NULL, false, from_list, &d), 1);
    d = (draws){{1, 1}, 0}; /* b, then the second of the others (a, d): d, more free memory */
    assert_int_equal(moat_place_choose(nodes, 4, GiB, NULL, false, from_list, &d), 3);
    d = (draws){{2, 0}, 0}; /* d, then a: d has more free slots */
    assert_int_equal(moat_place_choose(nodes, 4, GiB, NULL, false, from_list, &d), 3);
    /* One node that fits: it, after one draw. */
    moat_node one[2] = {node("x", 1, 1, 8 * GiB), node("y", 1, 0, 8 * GiB)};
    d = (draws){{7, 7}, 0};
    assert_int_equal(moat_place_choose(one, 2, GiB, NULL, false, from_list, &d), 1);
    assert_int_equal(d.next, 1);
}

/* For a request a warm pool can serve, of the two drawn the one with a ready pool sandbox wins
 * whatever their free slots; two with one (or none) compare as before; the home still comes
 * first; a request no pool serves ignores the pools. */
static void test_warm_first(void **state)
{
    (void)state;
    moat_node nodes[3] = {node("a", 10, 1, 8 * GiB), node("b", 10, 8, 8 * GiB),
                          node("c", 10, 5, 8 * GiB)};
    nodes[1].load.pool_ready = 2;
    draws d = {{0, 0}, 0}; /* a, then b */
    assert_int_equal(moat_place_choose(nodes, 3, GiB, NULL, true, from_list, &d), 1);
    d = (draws){{0, 0}, 0};
    assert_int_equal(moat_place_choose(nodes, 3, GiB, NULL, false, from_list, &d), 0);
    nodes[0].load.pool_ready = 1; /* both warm: more free slots */
    d = (draws){{0, 0}, 0};
    assert_int_equal(moat_place_choose(nodes, 3, GiB, NULL, true, from_list, &d), 0);
    nodes[0].load.pool_ready = 0;
    d = (draws){{0, 0}, 0};
    assert_int_equal(moat_place_choose(nodes, 3, GiB, "c", true, from_list, &d), 2);
    /* A warm node without a free slot does not fit at all. */
    nodes[1].load.slots_used = 10;
    d = (draws){{0, 0}, 0}; /* a, then c */
    assert_int_equal(moat_place_choose(nodes, 3, GiB, NULL, true, from_list, &d), 0);
}

/* Two draws are always two distinct nodes: over every pair of draws, never the same one. */
static void test_distinct(void **state)
{
    (void)state;
    moat_node nodes[3] = {node("a", 5, 0, 8 * GiB), node("b", 5, 0, 8 * GiB),
                          node("c", 5, 0, 8 * GiB)};
    int chosen[3] = {0, 0, 0};
    for (uint64_t x = 0; x < 3; x++) {
        for (uint64_t y = 0; y < 2; y++) {
            draws d = {{x, y}, 0};
            long i = moat_place_choose(nodes, 3, GiB, NULL, false, from_list, &d);
            assert_true(i >= 0 && i < 3);
            chosen[i]++;
            assert_int_equal(d.next, 2);
        }
    }
    /* Equal nodes: the first drawn wins a tie, so each is chosen as often as drawn first. */
    assert_int_equal(chosen[0], 2);
    assert_int_equal(chosen[1], 2);
    assert_int_equal(chosen[2], 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fits),       cmocka_unit_test(test_none_fits),
        cmocka_unit_test(test_home_first), cmocka_unit_test(test_better_of_two),
        cmocka_unit_test(test_distinct),   cmocka_unit_test(test_warm_first),
    };
    return moat_run_group_tests("test_placement", tests, NULL, NULL);
}
