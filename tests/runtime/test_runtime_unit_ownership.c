/* Containers that are not this runtime's, against the fake engine: instance scoping, spoofed
 * labels and names, store rows checked before a stop, and a bounded log of foreign containers. */
#define _XOPEN_SOURCE 700
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "moat_test.h"

#include "json_readers.h"
#include "runtime_fixture.h"

static void test_instance_scoping(void **state)
{
    fx *f = *state;
    moat_runtime_close(f->rt);
    f->cfg.instance = "blue";
    open_runtime(f);
    moat_session s;
    moat_status st;
    assert_int_equal(create_default(f, CHAT_ID, &s, &st), MOAT_CODE_OK);
    cJSON *spec = body_of(fake_docker_find(&f->fd, "POST", "/containers/create"));
    assert_string_equal(jsv(jget(jget(spec, "Labels"), "moat.instance")), "blue");
    cJSON_Delete(spec);

    /* A container of another instance that Docker returns anyway is never reaped. */
    char *green = container_json("c-green", SESSION_ID2, CHAT_ID, "2026-04-02T12:05:00+00:00", NULL,
                                 true, "running");
    route_list(f, "/containers/json", &green, 1);
    size_t reaped = 9;
    assert_int_equal(moat_runtime_reap(f->rt, iso("2026-04-02T13:00:00Z"), &reaped, &st),
                     MOAT_CODE_OK);
    assert_int_equal(reaped, 0);
    assert_int_equal(fake_docker_count(&f->fd, "POST", "/stop"), 0);
    char *filters = decoded_filters(fake_docker_find(&f->fd, "GET", "/containers/json")->url);
    assert_string_equal(filters, "{\"label\":[\"session_id\",\"chat_id\",\"expires_at\","
                                 "\"moat.managed=true\",\"moat.instance=blue\"]}");
    free(filters);

    moat_runtime_config c = f->cfg;
    c.instance = "bad instance!";
    assert_int_equal(moat_runtime_config_validate(&c, &st), MOAT_CODE_INVALID_ARGUMENT);
    assert_string_equal(moat_status_detail_get(&st, "setting"), "instance");
}

/* stderr, where moat_log writes, goes to a file between these two calls. No assertion may run in
 * between: a failing one would leave stderr redirected. */
static int stderr_to_file(char *path)
{
    fflush(stderr);
    int saved = dup(2);
    int fd = mkstemp(path);
    assert_true(saved >= 0 && fd >= 0);
    dup2(fd, 2);
    close(fd);
    return saved;
}

/* Restores stderr and returns what was written meanwhile (malloc'd). */
static char *stderr_back(int saved, const char *path)
{
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    FILE *fp = fopen(path, "r");
    assert_non_null(fp);
    size_t cap = 1 << 20, len = 0, n;
    char *text = calloc(1, cap);
    while ((n = fread(text + len, 1, cap - 1 - len, fp)) > 0)
        len += n;
    fclose(fp);
    unlink(path);
    return text;
}

static size_t occurrences(const char *text, const char *needle)
{
    size_t n = 0;
    for (const char *p = strstr(text, needle); p != NULL; p = strstr(p + 1, needle))
        n++;
    return n;
}

typedef struct spoof {
    const char *what;
    const char *name;   /* Docker's name, without the leading '/' */
    const char *labels; /* label members after the three session labels */
} spoof;

/* A legitimate session (SESSION_ID in c-legit, labelled legit_labels, expiring at 14:00) and a
 * spoof (SESSION_ID2 in spoof_id, its session labels expired at 12:05) on a fresh fake engine.
 * Every entry point is aimed at the spoof, and then the time is 13:00: the spoof is never
 * listed, found, adopted, renewed, killed, stopped or removed, and is logged exactly once;
 * the legitimate session is listed, adopted and left running. */
static void assert_spoof_left_alone(fx *f, const char *legit_labels, const spoof *sp,
                                    const char *spoof_id)
{
    fake_docker_stop(&f->fd);
    assert_int_equal(fake_docker_start(&f->fd, f->sock), 0);
    const char *live = "2026-04-02T14:00:00+00:00", *expired = "2026-04-02T12:05:00+00:00";
    char *all[] = {described(false, "c-legit", SESSION_ID, PREFIX SESSION_ID, live, legit_labels),
                   described(false, spoof_id, SESSION_ID2, sp->name, expired, sp->labels)};
    char *legit[] = {
        described(false, "c-legit", SESSION_ID, PREFIX SESSION_ID, live, legit_labels)};
    char *spoofed[] = {described(false, spoof_id, SESSION_ID2, sp->name, expired, sp->labels)};
    route_list(f, "/containers/json", all, 2);
    route_list(f, "session_id%3D" SESSION_ID "%22", legit, 1);
    route_list(f, "session_id%3D" SESSION_ID2 "%22", spoofed, 1);
    route_inspect(f, spoof_id,
                  described(true, spoof_id, SESSION_ID2, sp->name, expired, sp->labels));
    int64_t now = iso("2026-04-02T13:00:00Z");

    char log_path[] = "/tmp/moat-rt-log-XXXXXX";
    int saved = stderr_to_file(log_path);
    moat_session *list = NULL, s;
    size_t n = 0, reaped[3] = {9, 9, 9};
    moat_status list_st, get_st, renew_st, kill_st, stop_st, stop_id_st, rec_st, reap_st[3];
    moat_code list_code = moat_runtime_list_active(f->rt, &list, &n, &list_st);
    moat_code get_code = moat_runtime_get(f->rt, SESSION_ID2, &s, &get_st);
    moat_code renew_code =
        moat_runtime_renew(f->rt, SESSION_ID2, moat_time_now_ms() + 60000, NULL, &renew_st);
    moat_code kill_code = moat_runtime_kill(f->rt, SESSION_ID2, "KILL", &kill_st);
    moat_code stop_code = moat_runtime_stop(f->rt, SESSION_ID2, &stop_st);
    moat_code stop_id_code = moat_runtime_stop_container(f->rt, spoof_id, &stop_id_st);
    moat_reconcile_report rep;
    moat_code rec_code = moat_runtime_reconcile(f->rt, now, &rep, &rec_st);
    moat_code reap_code[3];
    for (int i = 0; i < 3; i++)
        reap_code[i] = moat_runtime_reap(f->rt, now, &reaped[i], &reap_st[i]);
    char *log = stderr_back(saved, log_path);

    print_message("spoof: %s\n", sp->what);
    assert_int_equal(list_code, MOAT_CODE_OK);
    assert_int_equal(n, 1);
    assert_string_equal(list[0].session_id, SESSION_ID);
    free(list);
    assert_int_equal(get_code, MOAT_CODE_NOT_FOUND);
    assert_string_equal(get_st.reason, "session_not_found");
    assert_int_equal(renew_code, MOAT_CODE_NOT_FOUND);
    assert_string_equal(renew_st.reason, "session_not_found");
    assert_int_equal(kill_code, MOAT_CODE_NOT_FOUND);
    /* Nothing of this runtime's to stop: success, as for a container already gone. */
    assert_int_equal(stop_code, MOAT_CODE_OK);
    assert_int_equal(stop_id_code, MOAT_CODE_PERMISSION_DENIED);
    assert_string_equal(stop_id_st.reason, "container_not_owned");
    assert_string_equal(moat_status_detail_get(&stop_id_st, "container_id"), spoof_id);
    assert_int_equal(rec_code, MOAT_CODE_OK);
    assert_int_equal(rep.adopted, 1);
    assert_int_equal(rep.reaped, 0);
    assert_int_equal(rep.skipped, 1);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(reap_code[i], MOAT_CODE_OK);
        assert_int_equal(reaped[i], 0);
    }
    /* Docker was only ever asked to read it. */
    assert_int_equal(fake_docker_count(&f->fd, "POST", spoof_id), 0);
    assert_int_equal(fake_docker_count(&f->fd, "DELETE", spoof_id), 0);
    assert_int_equal(fake_docker_count(&f->fd, "POST", "/containers/c-legit/"), 0);
    assert_int_equal(fake_docker_count(&f->fd, "DELETE", "/containers/c-legit"), 0);
    char line[96];
    snprintf(line, sizeof(line), "event=foreign_container_ignored container_id=%.12s ", spoof_id);
    if (occurrences(log, line) != 1)
        fail_msg("%s: want one \"%s\" line in:\n%s", sp->what, line, log);
    free(log);
    assert_int_equal(moat_runtime_get(f->rt, SESSION_ID, &s, &get_st), MOAT_CODE_OK);
    assert_int_equal(s.state, MOAT_SESSION_RUNNING);
    assert_string_equal(s.container_id, "c-legit");
}

/* A runtime without an instance owns only managed containers with no moat.instance label, named
 * prefix + session id. Labels alone, however complete, prove nothing. */
static void test_spoofs_left_alone_without_instance(void **state)
{
    fx *f = *state;
    const spoof spoofs[] = {
        {"the three seed labels only", PREFIX SESSION_ID2, ""},
        {"moat.managed=false", PREFIX SESSION_ID2, ",\"moat.managed\":\"false\""},
        {"managed, name without the prefix", "evil-" SESSION_ID2, MANAGED},
        {"managed, the prefix with another session id", PREFIX SESSION_ID3, MANAGED},
        {"managed, the right name only as a link alias", "other/" PREFIX SESSION_ID2, MANAGED},
        {"managed, another instance's label", PREFIX SESSION_ID2,
         MANAGED ",\"moat.instance\":\"blue\""},
        {"managed, an empty moat.instance label", PREFIX SESSION_ID2,
         MANAGED ",\"moat.instance\":\"\""},
    };
    for (size_t i = 0; i < sizeof(spoofs) / sizeof(spoofs[0]); i++) {
        char id[32];
        snprintf(id, sizeof(id), "c-spoof-%zu", i);
        assert_spoof_left_alone(f, MANAGED, &spoofs[i], id);
    }
}

#define LONG_INSTANCE "i23456789012345678901234567890123456789012345678901234567890123"

/* A runtime with an instance owns only containers labelled with it. The instance here has the
 * longest length allowed, so a longer label that starts with it is seen whole. */
static void test_spoofs_left_alone_with_instance(void **state)
{
    fx *f = *state;
    moat_runtime_close(f->rt);
    f->cfg.instance = LONG_INSTANCE;
    open_runtime(f);
    const char *mine = MANAGED ",\"moat.instance\":\"" LONG_INSTANCE "\"";
    const spoof spoofs[] = {
        {"the three seed labels and the instance, not managed", PREFIX SESSION_ID2,
         ",\"moat.instance\":\"" LONG_INSTANCE "\""},
        {"managed, another instance's label", PREFIX SESSION_ID2,
         MANAGED ",\"moat.instance\":\"green\""},
        {"managed, no moat.instance label", PREFIX SESSION_ID2, MANAGED},
        {"managed, a longer label that starts with this instance", PREFIX SESSION_ID2,
         MANAGED ",\"moat.instance\":\"" LONG_INSTANCE "4\""},
        {"managed, this instance, name without the prefix", "evil-" SESSION_ID2, mine},
    };
    for (size_t i = 0; i < sizeof(spoofs) / sizeof(spoofs[0]); i++) {
        char id[32];
        snprintf(id, sizeof(id), "c-spoof-%zu", i);
        assert_spoof_left_alone(f, mine, &spoofs[i], id);
    }
    char *filters = decoded_filters(fake_docker_find(&f->fd, "GET", "/containers/json")->url);
    assert_string_equal(filters, "{\"label\":[\"session_id\",\"chat_id\",\"expires_at\","
                                 "\"moat.managed=true\",\"moat.instance=" LONG_INSTANCE "\"]}");
    free(filters);
}

/* A spoof carrying a live session's id next to the real container: every path picks the real
 * one and never touches the spoof. */
static void test_spoof_with_a_live_session_id(void **state)
{
    fx *f = *state;
    moat_session s;
    moat_status st;
    assert_int_equal(create_default(f, CHAT_ID, &s, &st), MOAT_CODE_OK);
    const char *exp = "2026-04-02T12:05:00+00:00";
    /* The spoof comes last and runs, so a pick of "the running one" without the check is it. */
    char *both[] = {described(false, "container-123", SESSION_ID, PREFIX SESSION_ID, exp, MANAGED),
                    described(false, "c-twin", SESSION_ID, "evil-" SESSION_ID, exp, MANAGED)};
    char *both2[] = {described(false, "container-123", SESSION_ID, PREFIX SESSION_ID, exp, MANAGED),
                     described(false, "c-twin", SESSION_ID, "evil-" SESSION_ID, exp, MANAGED)};
    route_list(f, "/containers/json", both, 2);
    route_list(f, "session_id%3D" SESSION_ID, both2, 2);
    moat_session *list = NULL;
    size_t n = 0;
    assert_int_equal(moat_runtime_list_active(f->rt, &list, &n, &st), MOAT_CODE_OK);
    assert_int_equal(n, 1);
    assert_string_equal(list[0].container_id, "container-123");
    free(list);
    assert_int_equal(moat_runtime_get(f->rt, SESSION_ID, &s, &st), MOAT_CODE_OK);
    assert_string_equal(s.container_id, "container-123");
    assert_int_equal(moat_runtime_renew(f->rt, SESSION_ID, moat_time_now_ms() + 60000, &s, &st),
                     MOAT_CODE_OK);
    assert_string_equal(s.container_id, "container-123");
    assert_int_equal(moat_runtime_kill(f->rt, SESSION_ID, "KILL", &st), MOAT_CODE_OK);
    assert_int_equal(fake_docker_count(&f->fd, "POST", "/containers/container-123/kill"), 1);
    assert_int_equal(moat_runtime_stop(f->rt, SESSION_ID, &st), MOAT_CODE_OK);
    assert_int_equal(fake_docker_count(&f->fd, "DELETE", "/containers/container-123?"), 1);
    assert_int_equal(moat_runtime_reap(f->rt, iso("2026-04-02T13:00:00Z"), NULL, &st),
                     MOAT_CODE_OK);
    assert_int_equal(fake_docker_count(&f->fd, "POST", "c-twin"), 0);
    assert_int_equal(fake_docker_count(&f->fd, "DELETE", "c-twin"), 0);
}

/* A store row is only a hint: the container it names is inspected and checked again before a
 * stop, so a row left by a runtime configured otherwise (here another instance, on the same
 * store) cannot make this one stop that runtime's container. */
static void test_store_row_checked_before_stop(void **state)
{
    fx *f = *state;
    moat_runtime_close(f->rt);
    f->cfg.instance = "blue";
    open_runtime(f);
    moat_session s;
    moat_status st;
    assert_int_equal(create_default(f, CHAT_ID, &s, &st), MOAT_CODE_OK);
    moat_runtime_close(f->rt);
    f->cfg.instance = "green";
    open_runtime(f);
    /* The fake's inspect of container-123 still shows moat.instance=blue. */
    assert_int_equal(moat_runtime_renew(f->rt, SESSION_ID, moat_time_now_ms() + 60000, NULL, &st),
                     MOAT_CODE_NOT_FOUND);
    assert_int_equal(moat_runtime_kill(f->rt, SESSION_ID, "KILL", &st), MOAT_CODE_NOT_FOUND);
    assert_int_equal(moat_runtime_stop(f->rt, SESSION_ID, &st), MOAT_CODE_OK);
    assert_int_equal(fake_docker_count(&f->fd, "GET", "/containers/container-123/json"), 1);
    assert_int_equal(moat_runtime_stop_container(f->rt, "container-123", &st),
                     MOAT_CODE_PERMISSION_DENIED);
    assert_int_equal(fake_docker_count(&f->fd, "POST", "/containers/container-123/stop"), 0);
    assert_int_equal(fake_docker_count(&f->fd, "POST", "/containers/container-123/kill"), 0);
    assert_int_equal(fake_docker_count(&f->fd, "DELETE", "/containers/container-123"), 0);

    /* A row whose container now carries another session's labels is not stopped either. */
    moat_runtime_close(f->rt);
    f->cfg.instance = "blue";
    open_runtime(f);
    assert_int_equal(moat_runtime_create(f->rt, SESSION_ID3, CHAT_ID, 1000, 2000, NULL, &s, &st),
                     MOAT_CODE_OK);
    route_inspect(f, "container-123",
                  described(true, "container-123", SESSION_ID2, PREFIX SESSION_ID2,
                            "2026-04-02T12:05:00+00:00", MANAGED ",\"moat.instance\":\"blue\""));
    assert_int_equal(moat_runtime_stop(f->rt, SESSION_ID3, &st), MOAT_CODE_OK);
    assert_int_equal(fake_docker_count(&f->fd, "POST", "/containers/container-123/stop"), 0);

    /* Docker failing the inspect fails the stop, as any Docker failure does. */
    assert_int_equal(moat_runtime_create(f->rt, SESSION_ID2, CHAT_ID, 1000, 2000, NULL, &s, &st),
                     MOAT_CODE_OK);
    fake_docker_route(&f->fd, "GET", "/containers/container-123/json", 500,
                      "{\"message\":\"boom\"}", -1);
    assert_int_equal(moat_runtime_stop(f->rt, SESSION_ID2, &st), MOAT_CODE_INTERNAL);
    assert_string_equal(st.reason, "sandbox_stop_failed");
    assert_int_equal(moat_runtime_stop_container(f->rt, "container-123", &st), MOAT_CODE_INTERNAL);
    assert_string_equal(st.reason, "sandbox_stop_failed");
    assert_string_equal(moat_status_detail_get(&st, "container_id"), "container-123");
    assert_int_equal(fake_docker_count(&f->fd, "POST", "/containers/container-123/stop"), 0);
}

/* The reaper sees the same foreign containers every sweep: one line each, ever, and a bounded
 * memory of what was logged. Past that bound one line says so and the rest stay quiet. */
static void test_foreign_log_is_bounded(void **state)
{
    fx *f = *state;
    enum { N = 1025 };
    char **items = calloc(N, sizeof(char *));
    for (size_t i = 0; i < N; i++) {
        char id[32];
        snprintf(id, sizeof(id), "f-%08zu", i);
        items[i] =
            described(false, id, SESSION_ID2, PREFIX SESSION_ID2, "2026-04-02T12:05:00+00:00", "");
    }
    route_list(f, "/containers/json", items, N);
    free(items);
    char log_path[] = "/tmp/moat-rt-log-XXXXXX";
    int saved = stderr_to_file(log_path);
    moat_status st[2];
    size_t reaped[2] = {9, 9};
    moat_code code[2];
    for (int i = 0; i < 2; i++)
        code[i] = moat_runtime_reap(f->rt, iso("2026-04-02T13:00:00Z"), &reaped[i], &st[i]);
    char *log = stderr_back(saved, log_path);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(code[i], MOAT_CODE_OK);
        assert_int_equal(reaped[i], 0);
    }
    assert_int_equal(occurrences(log, "event=foreign_container_ignored "), N - 1);
    assert_int_equal(occurrences(log, "event=foreign_containers_not_logged "), 1);
    assert_non_null(strstr(log, "container_id=f-00000000 name=" PREFIX SESSION_ID2
                                " session_id=" SESSION_ID2 " why=\"not labelled"));
    free(log);
    assert_int_equal(fake_docker_count(&f->fd, "POST", "/stop"), 0);
    assert_int_equal(fake_docker_count(&f->fd, "DELETE", "/containers/"), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_instance_scoping, setup, teardown),
        cmocka_unit_test_setup_teardown(test_spoofs_left_alone_without_instance, setup, teardown),
        cmocka_unit_test_setup_teardown(test_spoofs_left_alone_with_instance, setup, teardown),
        cmocka_unit_test_setup_teardown(test_spoof_with_a_live_session_id, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_row_checked_before_stop, setup, teardown),
        cmocka_unit_test_setup_teardown(test_foreign_log_is_bounded, setup, teardown),
    };
    return moat_run_group_tests("test_runtime_unit_ownership", tests, NULL, NULL);
}
