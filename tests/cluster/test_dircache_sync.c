/* When the directory's copy is in step with etcd (src/cluster/dircache.h), without etcd: a watch
 * that begins past the load's revision leaves the copy out of step until the changes between
 * them have arrived, so a listing never goes back in time across a reload. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "moat_test.h"

#include "cluster/dircache.h"

/* Nothing written between the load and the watch: in step at the watch's first message. */
static void test_quiet_reload(void **state)
{
    (void)state;
    moat_dircache_sync s;
    moat_dircache_sync_loaded(&s, 40);
    assert_false(s.synced);
    assert_true(moat_dircache_sync_message(&s, true, 40));
    assert_true(moat_dircache_sync_message(&s, false, 41));
}

/* Written meanwhile: the first message says the watch is in place at 45, but the changes of
 * 41..45 come after it; in step once a message at or past 45 has arrived. */
static void test_changes_since_the_load_arrive_first(void **state)
{
    (void)state;
    moat_dircache_sync s;
    moat_dircache_sync_loaded(&s, 40);
    assert_false(moat_dircache_sync_message(&s, true, 45));
    assert_true(moat_dircache_sync_message(&s, false, 46));
    moat_dircache_sync_loaded(&s, 50);
    assert_false(moat_dircache_sync_message(&s, true, 52));
    assert_true(moat_dircache_sync_message(&s, false, 52));
}

/* Only changes outside the watched range meanwhile: nothing is replayed, and the copy stays out
 * of step (listings and lookups go to etcd) until the next change in it. */
static void test_no_replay_waits_for_the_next_change(void **state)
{
    (void)state;
    moat_dircache_sync s;
    moat_dircache_sync_loaded(&s, 7);
    assert_false(moat_dircache_sync_message(&s, true, 9));
    assert_false(s.synced);
    assert_true(moat_dircache_sync_message(&s, false, 12));
}

/* A message before the watch's first (none is sent so; a garbled stream might) decides nothing,
 * and a new load starts over. */
static void test_out_of_order_and_reload(void **state)
{
    (void)state;
    moat_dircache_sync s;
    moat_dircache_sync_loaded(&s, 3);
    assert_false(moat_dircache_sync_message(&s, false, 100));
    assert_true(moat_dircache_sync_message(&s, true, 3));
    moat_dircache_sync_loaded(&s, 4);
    assert_false(s.synced);
    assert_false(moat_dircache_sync_message(&s, false, 100));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_quiet_reload),
        cmocka_unit_test(test_changes_since_the_load_arrive_first),
        cmocka_unit_test(test_no_replay_waits_for_the_next_change),
        cmocka_unit_test(test_out_of_order_and_reload),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
