/* Expiry against the fake engine: renewals (durable, across a restart), the reaper and its
 * thread, and reconciliation of the store with the engine when a runtime opens again. */
#define _XOPEN_SOURCE 700
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include "moat_test.h"

#include "json_readers.h"
#include "runtime_fixture.h"

static void test_renew_is_durable(void **state)
{
    fx *f = *state;
    int64_t now = moat_time_now_ms();
    int64_t label_exp = now + 60000;
    moat_session s;
    moat_status st;
    assert_int_equal(moat_runtime_create(f->rt, SESSION_ID, CHAT_ID, now, label_exp, NULL, &s, &st),
                     MOAT_CODE_OK);
    char exp_text[MOAT_TIME_ISO_MAX];
    moat_time_format_iso8601(label_exp, exp_text);
    char *items[] = {
        container_json("container-123", SESSION_ID, CHAT_ID, exp_text, NULL, true, "running")};
    route_list(f, "/containers/json", items, 1);

    int64_t renewed_exp = now + 3600000;
    assert_int_equal(moat_runtime_renew(f->rt, SESSION_ID, renewed_exp, &s, &st), MOAT_CODE_OK);
    assert_int_equal(s.expires_at_ms, renewed_exp);
    assert_true(s.renewed);
    /* On disk (another connection sees it) as soon as renew returned. */
    int renewed = 0;
    assert_int_equal(store_expiry(f->store, SESSION_ID, &renewed, NULL), renewed_exp);
    assert_int_equal(renewed, 1);

    /* A restarted runtime still uses the renewed expiry over the label. */
    moat_runtime_close(f->rt);
    open_runtime(f);
    assert_int_equal(moat_runtime_get(f->rt, SESSION_ID, &s, &st), MOAT_CODE_OK);
    assert_int_equal(s.expires_at_ms, renewed_exp);
    moat_session *list = NULL;
    size_t n = 0;
    assert_int_equal(moat_runtime_list_active(f->rt, &list, &n, &st), MOAT_CODE_OK);
    assert_int_equal(n, 1);
    assert_int_equal(list[0].expires_at_ms, renewed_exp);
    free(list);
    /* Past the label's expiry but before the renewed one: the reaper leaves it alone. */
    size_t reaped = 9;
    assert_int_equal(moat_runtime_reap(f->rt, label_exp + 1000, &reaped, &st), MOAT_CODE_OK);
    assert_int_equal(reaped, 0);
    assert_int_equal(fake_docker_count(&f->fd, "POST", "/stop"), 0);
    assert_int_equal(moat_runtime_reap(f->rt, renewed_exp + 1, &reaped, &st), MOAT_CODE_OK);
    assert_int_equal(reaped, 1);

    /* Bad renewals. */
    assert_int_equal(moat_runtime_renew(f->rt, SESSION_ID, now - 1, NULL, &st),
                     MOAT_CODE_INVALID_ARGUMENT);
    assert_int_equal(moat_runtime_renew(f->rt, "zzz", now + 1000, NULL, &st),
                     MOAT_CODE_INVALID_ARGUMENT);
}

static void test_renew_unknown_session(void **state)
{
    fx *f = *state;
    moat_status st;
    assert_int_equal(moat_runtime_renew(f->rt, SESSION_ID, moat_time_now_ms() + 10000, NULL, &st),
                     MOAT_CODE_NOT_FOUND);
    const fake_request *rq = fake_docker_find(&f->fd, "GET", "/containers/json");
    char *filters = decoded_filters(rq->url);
    assert_string_equal(filters, "{\"label\":[\"session_id=" SESSION_ID
                                 "\",\"chat_id\",\"expires_at\",\"moat.managed=true\"]}");
    free(filters);
}

static void test_reaper_removes_only_expired_managed(void **state)
{
    fx *f = *state;
    int64_t now = iso("2026-04-02T13:00:00Z");
    char *items[] = {
        container_json("c-expired", SESSION_ID, CHAT_ID, "2026-04-02T12:05:00+00:00", NULL, true,
                       "running"),
        container_json("c-live", SESSION_ID2, CHAT_ID, "2026-04-02T14:00:00+00:00", NULL, true,
                       "running"),
        container_json("c-badlabels", "nope", CHAT_ID, "2026-04-02T12:05:00+00:00", NULL, true,
                       "running"),
        container_json("c-notmoat", SESSION_ID3, CHAT_ID, "2026-04-02T12:05:00+00:00", NULL, false,
                       "running"),
        /* Another (scoped) runtime's sandbox: an unscoped runtime owns only unscoped ones. */
        "{\"Id\":\"c-other-instance\",\"Created\":1775131200,\"State\":\"running\","
        "\"Labels\":{\"session_id\":\"" SESSION_ID3 "\",\"chat_id\":\"" CHAT_ID "\","
        "\"expires_at\":\"2026-04-02T12:05:00+00:00\",\"moat.managed\":\"true\","
        "\"moat.instance\":\"blue\"}}",
    };
    items[4] = strdup(items[4]);
    route_list(f, "/containers/json", items, 5);
    /* The expired session's chat workspace, with a file in it, which the reap must leave. */
    char chat_file[256];
    snprintf(chat_file, sizeof(chat_file), "%s/%s", f->chats, CHAT_ID);
    assert_int_equal(mkdir(chat_file, 0755), 0);
    strcat(chat_file, "/kept");
    FILE *kept = fopen(chat_file, "w");
    assert_non_null(kept);
    assert_int_equal(fclose(kept), 0);
    size_t reaped = 0;
    moat_status st;
    assert_int_equal(moat_runtime_reap(f->rt, now, &reaped, &st), MOAT_CODE_OK);
    assert_int_equal(reaped, 1);
    assert_int_equal(fake_docker_count(&f->fd, "POST", "/containers/c-expired/stop"), 1);
    assert_int_equal(fake_docker_count(&f->fd, "DELETE", "/containers/c-expired"), 1);
    assert_int_equal(fake_docker_count(&f->fd, "POST", "/stop"), 1);
    assert_int_equal(fake_docker_count(&f->fd, "DELETE", "/containers/"), 1);

    const fake_request *rq = fake_docker_find(&f->fd, "GET", "/containers/json");
    assert_non_null(strstr(rq->url, "all=1"));
    char *filters = decoded_filters(rq->url);
    assert_string_equal(filters, "{\"label\":[\"session_id\",\"chat_id\",\"expires_at\","
                                 "\"moat.managed=true\"]}");
    free(filters);

    moat_session s;
    fake_docker_route(&f->fd, "GET", "session_id%3D" SESSION_ID, 200, "[]", -1);
    assert_int_equal(moat_runtime_get(f->rt, SESSION_ID, &s, &st), MOAT_CODE_OK);
    assert_int_equal(s.state, MOAT_SESSION_EXPIRED);
    assert_string_equal(s.end_reason, "ttl");
    assert_true(s.ended_at_ms > 0);
    /* The chat workspace is never removed by expiry. */
    assert_int_equal(access(chat_file, F_OK), 0);
}

static void test_reaper_failure_retries(void **state)
{
    fx *f = *state;
    char *items[] = {container_json("c-expired", SESSION_ID, CHAT_ID, "2026-04-02T12:05:00+00:00",
                                    NULL, true, "running")};
    route_list(f, "/containers/json", items, 1);
    fake_docker_route(&f->fd, "POST", "/stop", 500, "{\"message\":\"device busy\"}", 1);
    size_t reaped = 0;
    moat_status st;
    int64_t now = iso("2026-04-02T13:00:00Z");
    assert_int_equal(moat_runtime_reap(f->rt, now, &reaped, &st), MOAT_CODE_INTERNAL);
    assert_string_equal(st.reason, "sandbox_stop_failed");
    assert_int_equal(reaped, 0);
    /* The claim was released, so the next sweep retries and succeeds. */
    assert_int_equal(moat_runtime_reap(f->rt, now, &reaped, &st), MOAT_CODE_OK);
    assert_int_equal(reaped, 1);
}

static void test_reconcile(void **state)
{
    fx *f = *state;
    int64_t now = iso("2026-04-02T13:00:00Z");
    /* Session 1 renewed in a previous life: label expired, store expiry in the future. */
    moat_session s;
    moat_status st;
    int64_t created = iso("2026-04-02T12:00:00Z");
    char *adopt_items[] = {container_json("container-123", SESSION_ID, CHAT_ID,
                                          "2026-04-02T12:05:00+00:00", NULL, true, "running")};
    assert_int_equal(moat_runtime_create(f->rt, SESSION_ID, CHAT_ID, created,
                                         iso("2026-04-02T12:05:00Z"), NULL, &s, &st),
                     MOAT_CODE_OK);
    route_list(f, "session_id%3D" SESSION_ID, adopt_items, 1);
    assert_int_equal(moat_runtime_renew(f->rt, SESSION_ID, moat_time_now_ms() + 3600000, NULL, &st),
                     MOAT_CODE_OK);
    int64_t renewed_exp = store_expiry(f->store, SESSION_ID, NULL, NULL);
    /* Session 2: in the store, but its container vanished. */
    fake_docker_route(&f->fd, "POST", "/containers/create", 201, "{\"Id\":\"container-222\"}", 1);
    assert_int_equal(moat_runtime_create(f->rt, SESSION_ID2, CHAT_ID, created,
                                         iso("2026-04-02T14:00:00Z"), NULL, &s, &st),
                     MOAT_CODE_OK);
    moat_runtime_close(f->rt);
    open_runtime(f);

    char *items[] = {
        container_json("container-123", SESSION_ID, CHAT_ID, "2026-04-02T12:05:00+00:00", NULL,
                       true, "running"),
        container_json("container-333", SESSION_ID3, CHAT_ID, "2026-04-02T12:30:00+00:00", NULL,
                       true, "running"),
        container_json("container-bad", "x", CHAT_ID, "2026-04-02T12:30:00+00:00", NULL, true,
                       "running"),
    };
    route_list(f, "all=1&filters", items, 3);
    moat_reconcile_report rep;
    assert_int_equal(moat_runtime_reconcile(f->rt, now, &rep, &st), MOAT_CODE_OK);
    assert_int_equal(rep.adopted, 1);
    assert_int_equal(rep.reaped, 1);
    assert_int_equal(rep.gone, 1);
    assert_int_equal(rep.skipped, 1);
    assert_int_equal(fake_docker_count(&f->fd, "POST", "/containers/container-333/stop"), 1);
    assert_int_equal(fake_docker_count(&f->fd, "POST", "/containers/container-123/stop"), 0);
    assert_int_equal(fake_docker_count(&f->fd, "POST", "/containers/container-bad"), 0);
    assert_int_equal(fake_docker_count(&f->fd, "DELETE", "/containers/container-bad"), 0);
    int state2 = -1, state3 = -1;
    store_expiry(f->store, SESSION_ID2, NULL, &state2);
    assert_int_equal(state2, MOAT_SESSION_GONE);
    assert_int_equal(store_expiry(f->store, SESSION_ID3, NULL, &state3),
                     iso("2026-04-02T12:30:00Z"));
    assert_int_equal(state3, MOAT_SESSION_EXPIRED);
    int renewed = 0, state1 = -1;
    assert_int_equal(store_expiry(f->store, SESSION_ID, &renewed, &state1), renewed_exp);
    assert_int_equal(renewed, 1);
    assert_int_equal(state1, MOAT_SESSION_RUNNING);
}

static void test_reaper_thread_runs(void **state)
{
    fx *f = *state;
    moat_runtime_close(f->rt);
    f->cfg.cleanup_interval_seconds = 1;
    open_runtime(f);
    char *items[] = {container_json("c-expired", SESSION_ID, CHAT_ID, "2026-04-02T12:05:00+00:00",
                                    NULL, true, "running")};
    route_list(f, "/containers/json", items, 1);
    moat_status st;
    assert_int_equal(moat_runtime_start_reaper(f->rt, &st), MOAT_CODE_OK);
    assert_int_equal(moat_runtime_start_reaper(f->rt, &st), MOAT_CODE_FAILED_PRECONDITION);
    /* Wait (bounded) for one sweep to have removed the container. */
    for (int i = 0; i < 50 && fake_docker_count(&f->fd, "DELETE", "/containers/c-expired") == 0;
         i++)
        usleep(100000);
    moat_runtime_stop_reaper(f->rt);
    assert_int_equal(fake_docker_count(&f->fd, "DELETE", "/containers/c-expired"), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_renew_is_durable, setup, teardown),
        cmocka_unit_test_setup_teardown(test_renew_unknown_session, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reaper_removes_only_expired_managed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reaper_failure_retries, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reconcile, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reaper_thread_runs, setup, teardown),
    };
    return moat_run_group_tests("test_runtime_unit_reaper", tests, NULL, NULL);
}
