/* Creates at once, against the fake engine: a burst shares one session list, and the warm pool's
 * refills give way to creates (issue #15). */
#define _XOPEN_SOURCE 700
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "moat_test.h"

#include "json_readers.h"
#include "runtime_fixture.h"
#include "internal.h"

typedef struct cold_create {
    fx *f;
    moat_code code;
} cold_create;

static void *cold_create_main(void *arg)
{
    cold_create *c = arg;
    moat_session s;
    moat_status st;
    c->code = create_default(c->f, CHAT_ID, &s, &st);
    return NULL;
}

/* A create's session list, on a thread of its own as a burst's creates are. */
typedef struct lister {
    fx *f;
    pthread_t th;
    moat_code code;
    size_t count;
    char reason[MOAT_STATUS_REASON_MAX];
} lister;

static void *lister_main(void *arg)
{
    lister *l = arg;
    moat_session *all = NULL;
    moat_status st;
    l->code = moat_runtime_list_active(l->f->rt, &all, &l->count, &st);
    snprintf(l->reason, sizeof(l->reason), "%s", st.reason);
    free(all);
    return NULL;
}

static size_t lists_joined(fx *f)
{
    pthread_mutex_lock(&f->rt->cache_mu);
    size_t n = f->rt->list_joined;
    pthread_mutex_unlock(&f->rt->cache_mu);
    return n;
}

/* Waits (at most 60 s, a bound for a stalled machine, not a measure) until Docker's list calls
 * and the callers that joined one add up to n: every caller has either listed or joined. */
static void wait_listed_or_joined(fx *f, size_t n)
{
    for (int i = 0;
         i < 10000 && fake_docker_count(&f->fd, "GET", "/containers/json") + lists_joined(f) < n;
         i++)
        usleep(1000);
}

/* The held list answers when the test releases it: no client timeout may end it first, however
 * slowly the callers start (valgrind, a loaded host). */
static void reopen_patient(fx *f)
{
    moat_runtime_close(f->rt);
    f->cfg.docker_timeout_ms = 120000;
    open_runtime(f);
}

#define BURST 20

/* Twenty creates that miss the snapshot at once (no event stream here, so every list misses)
 * ask Docker once between them, and all get its answer: a session, or its failure. */
static void burst_lists_once(fx *f, int status, const char *body, moat_code want, size_t want_count)
{
    reopen_patient(f);
    fake_docker_route_held(&f->fd, "GET", "/containers/json", status, body);
    lister l[BURST];
    for (size_t i = 0; i < BURST; i++) {
        l[i] = (lister){.f = f};
        assert_int_equal(pthread_create(&l[i].th, NULL, lister_main, &l[i]), 0);
    }
    wait_listed_or_joined(f, BURST);
    fake_docker_release(&f->fd);
    for (size_t i = 0; i < BURST; i++)
        pthread_join(l[i].th, NULL);
    assert_int_equal(fake_docker_count(&f->fd, "GET", "/containers/json"), 1);
    assert_int_equal(lists_joined(f), BURST - 1);
    for (size_t i = 0; i < BURST; i++) {
        assert_int_equal(l[i].code, want);
        assert_int_equal(l[i].count, want_count);
        assert_string_equal(l[i].reason, l[0].reason);
    }
}

static void test_list_shared_by_a_burst(void **state)
{
    fx *f = *state;
    char *item = container_json("container-123", SESSION_ID, CHAT_ID, "2026-04-02T12:05:00+00:00",
                                "2026-04-02T12:00:00Z", true, "running");
    char body[4096];
    snprintf(body, sizeof(body), "[%s]", item);
    free(item);
    burst_lists_once(f, 200, body, MOAT_CODE_OK, 1);
}

static void test_list_failure_shared_by_a_burst(void **state)
{
    fx *f = *state;
    burst_lists_once(f, 500, "{\"message\":\"engine broke\"}", MOAT_CODE_INTERNAL, 0);
}

/* A change while a list is under way: a create that begins after it does not take that list's
 * answer, it asks Docker again. */
static void test_list_after_invalidation_lists_again(void **state)
{
    fx *f = *state;
    reopen_patient(f);
    fake_docker_route_held(&f->fd, "GET", "/containers/json", 200, "[]");
    lister first = {.f = f}, second = {.f = f};
    assert_int_equal(pthread_create(&first.th, NULL, lister_main, &first), 0);
    wait_listed_or_joined(f, 1);
    moat__cache_invalidate(f->rt);
    assert_int_equal(pthread_create(&second.th, NULL, lister_main, &second), 0);
    wait_listed_or_joined(f, 2);
    fake_docker_release(&f->fd);
    pthread_join(first.th, NULL);
    pthread_join(second.th, NULL);
    assert_int_equal(fake_docker_count(&f->fd, "GET", "/containers/json"), 2);
    assert_int_equal(lists_joined(f), 0);
    assert_int_equal(first.code, MOAT_CODE_OK);
    assert_int_equal(second.code, MOAT_CODE_OK);
}

/* An inspect answer: the container has exited. */
#define EXITED(id) "{\"Id\":\"" id "\",\"State\":{\"Running\":false,\"ExitCode\":1}}"

/* Waits (at most 10 s, a bound for a stalled machine, not a measure) until the pool reports
 * a refill giving way; false if it never does. */
static bool pool_gives_way(fx *f)
{
    for (int i = 0; i < 60000; i++) {
        moat_pool_stats ps;
        moat_runtime_pool_stats(f->rt, &ps);
        if (ps.giving_way == 1)
            return true;
        usleep(1000);
    }
    return false;
}

/* The index of the first recorded request matching method and url_contains, or -1. */
static long request_index(fx *f, const char *method, const char *url_contains)
{
    long at = -1;
    pthread_mutex_lock(&f->fd.mu);
    for (size_t i = 0; i < f->fd.request_count && at < 0; i++)
        if (strcmp(f->fd.requests[i].method, method) == 0 &&
            strstr(f->fd.requests[i].url, url_contains) != NULL)
            at = (long)i;
    pthread_mutex_unlock(&f->fd.mu);
    return at;
}

/* A refill under way when a user's create begins does not start its container until that
 * create has ended: the user's create has the engine and the CPU to itself. */
static void test_pool_refill_gives_way_to_create(void **state)
{
    fx *f = *state;
    moat_require(geteuid() == 0, "a pool slot's directory is a bind mount: needs root");
    moat_runtime_close(f->rt);
    f->cfg.pool_size = 1;
    f->cfg.pool_fill_concurrency = 1;
    /* The cold create ends when the test says its container exited, not on a timer. */
    f->cfg.readiness_timeout_ms = 60000;
    open_runtime(f);
    /* The refill's engine create is held, so the refill is under way when the create begins;
     * the cold create's own is answered at once (the newer route wins) and its execd never
     * answers. */
    fake_docker_route_hold(&f->fd, "POST", "/containers/create");
    fake_docker_route(&f->fd, "POST", "name=" PREFIX SESSION_ID, 201, "{\"Id\":\"cold-container\"}",
                      1);
    f->fd.start_execd = false; /* no request yet: the engine's threads do not read it */
    moat_status st;
    assert_int_equal(moat_runtime_start_pool(f->rt, &st), MOAT_CODE_OK);
    for (int i = 0; i < 10000 && fake_docker_count(&f->fd, "POST", "/containers/create") == 0; i++)
        usleep(1000);
    assert_int_equal(fake_docker_count(&f->fd, "POST", "/containers/create"), 1);

    cold_create c = {f, MOAT_CODE_OK};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, cold_create_main, &c), 0);
    for (int i = 0; i < 10000 && fake_docker_count(&f->fd, "POST", "cold-container/start") == 0;
         i++)
        usleep(1000);
    bool cold_started = fake_docker_count(&f->fd, "POST", "cold-container/start") == 1;
    /* The refill's create answers now, while the cold create waits for its execd. */
    fake_docker_release(&f->fd);
    bool gave_way = cold_started && pool_gives_way(f);
    size_t early_starts = fake_docker_count(&f->fd, "POST", "container-123/start");
    /* The cold container exits: the create fails and ends. */
    fake_docker_route(&f->fd, "GET", "/containers/cold-container/json", 200,
                      EXITED("cold-container"), -1);
    pthread_join(th, NULL);
    /* No execd answers for the slot either: its container exits too once started, and the
     * engine answers the next refill's create at once, so the pool stops (or a failed test
     * ends) without waiting out a timeout. */
    fake_docker_route(&f->fd, "GET", "/containers/container-123/json", 200, EXITED("container-123"),
                      -1);
    fake_docker_route(&f->fd, "POST", "/containers/create", 201, "{\"Id\":\"container-123\"}", -1);
    assert_true(cold_started);
    assert_true(gave_way);
    assert_int_equal(early_starts, 0);
    assert_int_not_equal(c.code, MOAT_CODE_OK);

    /* Then the refill goes on, its start after everything the cold create asked of the engine. */
    for (int i = 0; i < 10000 && fake_docker_count(&f->fd, "POST", "container-123/start") == 0; i++)
        usleep(1000);
    long cold_removed = request_index(f, "DELETE", "/containers/cold-container");
    long refill_start = request_index(f, "POST", "container-123/start");
    moat_runtime_stop_pool(f->rt);
    assert_true(cold_removed >= 0);
    assert_true(refill_start > cold_removed);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_pool_refill_gives_way_to_create, setup, teardown),
        cmocka_unit_test_setup_teardown(test_list_shared_by_a_burst, setup, teardown),
        cmocka_unit_test_setup_teardown(test_list_failure_shared_by_a_burst, setup, teardown),
        cmocka_unit_test_setup_teardown(test_list_after_invalidation_lists_again, setup, teardown),
    };
    return moat_run_group_tests("test_runtime_unit_burst", tests, NULL, NULL);
}
