/* What every cmocka test binary shares: a group runner whose exit status counts a failed group
 * setup or teardown (cmocka 1.1 leaves a failed group teardown out of it), and the failures
 * MOAT_TEST_INJECT injects so that tests/meta/meta_test.sh can show that each kind turns ctest red.
 */
#ifndef MOAT_TEST_H
#define MOAT_TEST_H

#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

/* True when MOAT_TEST_INJECT names this kind of failure: "body" (one more test, which fails),
 * "setup" and "teardown" (the group's) or "daemon_exit" (the harnesses kill their daemon
 * instead of stopping it). A leak is injected by preloading libmoat_test_leak.so. */
bool moat_test_injected(const char *kind);

/* Runs the group like cmocka_run_group_tests_name with the injected failures, only the tests
 * whose names match MOAT_TEST_FILTER (cmocka's pattern) when it is set; 1 when a test, the group
 * setup or the group teardown failed, else 0. */
int moat__run_group_tests(const char *name, const struct CMUnitTest *tests, size_t count,
                          CMFixtureFunction group_setup, CMFixtureFunction group_teardown);
#define moat_run_group_tests(name, tests, group_setup, group_teardown)                             \
    moat__run_group_tests(name, tests, sizeof(tests) / sizeof((tests)[0]), group_setup,            \
                          group_teardown)

#endif
