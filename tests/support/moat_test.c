#include "moat_test.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

bool moat_test_injected(const char *kind)
{
    const char *inject = getenv("MOAT_TEST_INJECT");
    return inject != NULL && strcmp(inject, kind) == 0;
}

bool moat_test_in_ci(void)
{
    const char *ci = getenv("CI");
    return ci != NULL && strcmp(ci, "true") == 0;
}

int moat_skip_all(const char *reason, bool ci_has_it)
{
    if (ci_has_it && moat_test_in_ci()) {
        printf("CI can run this test, but: %s\n", reason);
        return 1;
    }
    printf("SKIP: %s\n", reason);
    return 77;
}

/* A group runs once per call, so its fixtures and whether they failed can live here. */
static CMFixtureFunction wrapped_setup, wrapped_teardown;
static bool group_fixture_failed;

/* Runs a group fixture (setup or teardown, its name in kind), which also fails when injected. */
static int checked_fixture(CMFixtureFunction fixture, void **state, const char *kind)
{
    int rc = fixture != NULL ? fixture(state) : 0;
    if (moat_test_injected(kind)) {
        printf("MOAT_TEST_INJECT=%s: the group %s fails\n", kind, kind);
        rc = -1;
    }
    group_fixture_failed |= rc != 0;
    return rc;
}

static int checked_group_setup(void **state)
{
    return checked_fixture(wrapped_setup, state, "setup");
}

static int checked_group_teardown(void **state)
{
    return checked_fixture(wrapped_teardown, state, "teardown");
}

static void injected_failure(void **state)
{
    (void)state;
    fail_msg("MOAT_TEST_INJECT=body: this test fails");
}

int moat__run_group_tests(const char *name, const struct CMUnitTest *tests, size_t count,
                          CMFixtureFunction group_setup, CMFixtureFunction group_teardown)
{
    struct CMUnitTest *all = calloc(count + 1, sizeof(*all));
    if (all == NULL)
        return 1;
    memcpy(all, tests, count * sizeof(*all));
    if (moat_test_injected("body"))
        all[count++] = (struct CMUnitTest)cmocka_unit_test(injected_failure);
    const char *filter = getenv("MOAT_TEST_FILTER");
    if (filter != NULL)
        cmocka_set_test_filter(filter);
    wrapped_setup = group_setup;
    wrapped_teardown = group_teardown;
    group_fixture_failed = false;
    int failed =
        _cmocka_run_group_tests(name, all, count, checked_group_setup, checked_group_teardown);
    free(all);
    return failed != 0 || group_fixture_failed;
}
