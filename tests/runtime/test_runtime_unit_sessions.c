/* A session's life after its create, against the fake engine: list, get, kill and stop
 * (by session and by container), and what each leaves behind. */
#define _XOPEN_SOURCE 700
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "moat_test.h"

#include "json_readers.h"
#include "runtime_fixture.h"

/* seed: test_runtime_stop_ignores_missing_container */
static void test_stop_ignores_missing_container(void **state)
{
    fx *f = *state;
    route_inspect(f, "container-123",
                  described(true, "container-123", SESSION_ID, PREFIX SESSION_ID,
                            "2026-04-02T12:05:00+00:00", MANAGED));
    route_inspect(f, "container-456",
                  described(true, "container-456", SESSION_ID2, PREFIX SESSION_ID2,
                            "2026-04-02T12:05:00+00:00", MANAGED));
    fake_docker_route(&f->fd, "POST", "/containers/container-123/stop", 404,
                      "{\"message\":\"No such container: container-123\"}", -1);
    moat_status st;
    assert_int_equal(moat_runtime_stop_container(f->rt, "container-123", &st), MOAT_CODE_OK);
    assert_int_equal(fake_docker_count(&f->fd, "POST", "/containers/container-123/stop"), 1);
    /* A container gone between stop and remove is also fine. */
    fake_docker_route(&f->fd, "DELETE", "/containers/container-456", 404,
                      "{\"message\":\"No such container\"}", -1);
    assert_int_equal(moat_runtime_stop_container(f->rt, "container-456", &st), MOAT_CODE_OK);
    assert_int_equal(fake_docker_count(&f->fd, "DELETE", "/containers/container-456?force=1"), 1);
}

/* seed: test_runtime_stop_wraps_docker_errors */
static void test_stop_wraps_docker_errors(void **state)
{
    fx *f = *state;
    route_inspect(f, "container-123",
                  described(true, "container-123", SESSION_ID, PREFIX SESSION_ID,
                            "2026-04-02T12:05:00+00:00", MANAGED));
    fake_docker_route(&f->fd, "POST", "/stop", 500, "{\"message\":\"boom\"}", -1);
    moat_status st;
    assert_int_equal(moat_runtime_stop_container(f->rt, "container-123", &st), MOAT_CODE_INTERNAL);
    assert_string_equal(st.reason, "sandbox_stop_failed");
    assert_non_null(strstr(st.message, "boom"));
    assert_string_equal(moat_status_detail_get(&st, "docker_status"), "500");
    assert_string_equal(moat_status_detail_get(&st, "container_id"), "container-123");
    assert_int_equal(fake_docker_count(&f->fd, "DELETE", "/containers/"), 0);
}

/* seed: test_runtime_list_active_sessions_reads_valid_labeled_containers */
static void test_list_active_skips_bad_labels(void **state)
{
    fx *f = *state;
    char *items[] = {
        container_json("container-123", SESSION_ID, CHAT_ID, "2026-04-02T12:05:00+00:00",
                       "2026-04-02T12:00:00Z", true, "running"),
        container_json("container-bad", NULL, CHAT_ID, "2026-04-02T12:05:00+00:00",
                       "2026-04-02T12:01:00Z", false, "running"),
        container_json("container-bad-uuid", "not-a-uuid", CHAT_ID, "2026-04-02T12:05:00+00:00",
                       "2026-04-02T12:01:00Z", false, "running"),
        container_json("container-bad-time", SESSION_ID2, CHAT_ID, "tomorrow",
                       "2026-04-02T12:01:00Z", false, "running"),
        container_json("container-int-created", SESSION_ID3, NON_CANONICAL_CHAT_ID,
                       "2026-04-02T12:06:00.250000+00:00", NULL, true, "running"),
    };
    route_list(f, "/containers/json", items, 5);
    moat_session *sessions = NULL;
    size_t n = 0;
    moat_status st;
    assert_int_equal(moat_runtime_list_active(f->rt, &sessions, &n, &st), MOAT_CODE_OK);
    assert_int_equal(n, 2);
    assert_string_equal(sessions[0].session_id, SESSION_ID);
    assert_string_equal(sessions[0].chat_id, CHAT_ID);
    assert_string_equal(sessions[0].container_id, "container-123");
    assert_int_equal(sessions[0].state, MOAT_SESSION_RUNNING);
    assert_int_equal(sessions[0].created_at_ms, iso("2026-04-02T12:00:00Z"));
    assert_int_equal(sessions[0].expires_at_ms, iso("2026-04-02T12:05:00+00:00"));
    assert_string_equal(sessions[1].chat_id, CHAT_ID);
    assert_int_equal(sessions[1].created_at_ms, iso("2026-04-02T12:00:00Z"));
    assert_int_equal(sessions[1].expires_at_ms, iso("2026-04-02T12:06:00.25Z"));
    free(sessions);

    /* Exactly one list call, filtered on the three labels and moat.managed=true, running
     * containers only. */
    assert_int_equal(fake_docker_count(&f->fd, "GET", "/containers/json"), 1);
    const fake_request *rq = fake_docker_find(&f->fd, "GET", "/containers/json");
    assert_null(strstr(rq->url, "all=1"));
    char *filters = decoded_filters(rq->url);
    assert_string_equal(filters, "{\"label\":[\"session_id\",\"chat_id\",\"expires_at\","
                                 "\"moat.managed=true\"]}");
    free(filters);
}

static void test_list_empty(void **state)
{
    fx *f = *state;
    moat_session *sessions = (moat_session *)1;
    size_t n = 9;
    moat_status st;
    assert_int_equal(moat_runtime_list_active(f->rt, &sessions, &n, &st), MOAT_CODE_OK);
    assert_int_equal(n, 0);
    assert_null(sessions);
}

static void test_stop_session_keeps_workspace(void **state)
{
    fx *f = *state;
    moat_session s;
    moat_status st;
    assert_int_equal(create_default(f, CHAT_ID, &s, &st), MOAT_CODE_OK);
    char file[256];
    snprintf(file, sizeof(file), "%s/%s/notes.txt", f->chats, CHAT_ID);
    FILE *fp = fopen(file, "w");
    assert_non_null(fp);
    fputs("keep me", fp);
    fclose(fp);
    /* The store's container id, inspected and found to be this runtime's: no list call. */
    assert_int_equal(moat_runtime_stop(f->rt, SESSION_ID, &st), MOAT_CODE_OK);
    assert_int_equal(fake_docker_count(&f->fd, "GET", "/containers/container-123/json"), 1);
    assert_int_equal(fake_docker_count(&f->fd, "GET", "/containers/json"), 0);
    assert_int_equal(fake_docker_count(&f->fd, "POST", "/containers/container-123/stop?t=2"), 1);
    assert_int_equal(fake_docker_count(&f->fd, "DELETE", "/containers/container-123?force=1"), 1);
    assert_int_equal(access(file, F_OK), 0);
    int st_state = -1;
    store_expiry(f->store, SESSION_ID, NULL, &st_state);
    assert_int_equal(st_state, MOAT_SESSION_STOPPED);
    /* Stop is idempotent: the container is gone now. */
    fake_docker_route(&f->fd, "GET", "session_id%3D" SESSION_ID2, 200, "[]", -1);
    assert_int_equal(moat_runtime_stop(f->rt, SESSION_ID2, &st), MOAT_CODE_OK);
}

static void test_get_not_found(void **state)
{
    fx *f = *state;
    moat_session s;
    moat_status st;
    assert_int_equal(moat_runtime_get(f->rt, SESSION_ID, &s, &st), MOAT_CODE_NOT_FOUND);
    assert_string_equal(moat_status_detail_get(&st, "session_id"), SESSION_ID);
}

static void test_kill(void **state)
{
    fx *f = *state;
    moat_status st;
    char *items[] = {container_json("container-123", SESSION_ID, CHAT_ID,
                                    "2026-04-02T12:05:00+00:00", NULL, true, "running")};
    route_list(f, "session_id%3D" SESSION_ID, items, 1);
    assert_int_equal(moat_runtime_kill(f->rt, SESSION_ID, "KILL", &st), MOAT_CODE_OK);
    assert_int_equal(
        fake_docker_count(&f->fd, "POST", "/v1.41/containers/container-123/kill?signal=KILL"), 1);
    assert_int_equal(fake_docker_count(&f->fd, "DELETE", "/containers/"), 0);
    fake_docker_route(&f->fd, "POST", "/kill", 409,
                      "{\"message\":\"Container container-123 is not running\"}", -1);
    assert_int_equal(moat_runtime_kill(f->rt, SESSION_ID, "TERM", &st),
                     MOAT_CODE_FAILED_PRECONDITION);
    assert_non_null(strstr(st.message, "is not running"));
    assert_int_equal(moat_runtime_kill(f->rt, SESSION_ID, "KILL&x=1", &st),
                     MOAT_CODE_INVALID_ARGUMENT);
    fake_docker_route(&f->fd, "GET", "session_id%3D" SESSION_ID2, 200, "[]", -1);
    assert_int_equal(moat_runtime_kill(f->rt, SESSION_ID2, "KILL", &st), MOAT_CODE_NOT_FOUND);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_stop_ignores_missing_container, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stop_wraps_docker_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_list_active_skips_bad_labels, setup, teardown),
        cmocka_unit_test_setup_teardown(test_list_empty, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stop_session_keeps_workspace, setup, teardown),
        cmocka_unit_test_setup_teardown(test_get_not_found, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kill, setup, teardown),
    };
    return moat_run_group_tests("test_runtime_unit_sessions", tests, NULL, NULL);
}
