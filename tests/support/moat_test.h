/* What every cmocka test binary shares: a group runner whose exit status counts a failed group
 * setup or teardown (cmocka 1.1 leaves a failed group teardown out of it), skips that say why,
 * and the failures MOAT_TEST_INJECT injects so that tests/meta/meta_test.sh can show that each
 * kind turns ctest red. */
#ifndef MOAT_TEST_H
#define MOAT_TEST_H

#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

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

/* ASan's quarantine keeps freed memory resident, so an RSS bound says nothing in its builds. */
#if defined(__SANITIZE_ADDRESS__)
#define MOAT_TEST_RSS_MEANINGFUL 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MOAT_TEST_RSS_MEANINGFUL 0
#endif
#endif
#ifndef MOAT_TEST_RSS_MEANINGFUL
#define MOAT_TEST_RSS_MEANINGFUL 1
#endif

/* A line "SKIP: <test>: <reason>" on stdout, which scripts/test.sh lists at the end of a run. */
#define moat_skip_note(reason)                                                                     \
    do {                                                                                           \
        printf("SKIP: %s: %s\n", __func__, reason);                                                \
        fflush(stdout);                                                                            \
    } while (0)

/* Skips the running test, saying why. */
#define moat_skip(reason)                                                                          \
    do {                                                                                           \
        moat_skip_note(reason);                                                                    \
        skip();                                                                                    \
    } while (0)

/* Skips the running test when `present` is false, except under CI=true, where the machine has
 * everything the suite needs and a missing piece is a failure. */
#define moat_require(present, reason)                                                              \
    do {                                                                                           \
        if (!(present)) {                                                                          \
            if (moat_test_in_ci())                                                                 \
                fail_msg("CI can run this test, but: %s", reason);                                 \
            moat_skip(reason);                                                                     \
        }                                                                                          \
    } while (0)

/* CI=true in the environment. */
bool moat_test_in_ci(void);

/* For a main that cannot run here: prints "SKIP: <reason>" and returns 77, which its ctest
 * SKIP_RETURN_CODE counts as a skip; under CI=true, when CI's machine has what it needs
 * (ci_has_it), a failure (1) instead. */
int moat_skip_all(const char *reason, bool ci_has_it);

#endif
