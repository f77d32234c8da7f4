/* The runtime's configuration against the fake engine: validation of each setting, the OCI
 * runtime (runsc) and gVisor's pids limits, and the metrics and tracing hooks. */
#define _XOPEN_SOURCE 700
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moat_test.h"

#include "json_readers.h"
#include "runtime_fixture.h"

static void test_config_validation(void **state)
{
    fx *f = *state;
    moat_runtime_config c = f->cfg;
    moat_status st;
    assert_int_equal(moat_runtime_config_validate(&c, &st), MOAT_CODE_OK);
    c.sandbox_uid = 0; /* root only when asked for by name */
    assert_int_equal(moat_runtime_config_validate(&c, &st), MOAT_CODE_INVALID_ARGUMENT);
    assert_string_equal(moat_status_detail_get(&st, "setting"), "sandbox_user");
    c.sandbox_user_root = true;
    assert_int_equal(moat_runtime_config_validate(&c, &st), MOAT_CODE_OK);
    c = f->cfg;
    c.chats_root = "relative/chats";
    assert_int_equal(moat_runtime_config_validate(&c, &st), MOAT_CODE_INVALID_ARGUMENT);
    assert_string_equal(moat_status_detail_get(&st, "setting"), "chats_root");
    assert_non_null(strstr(st.message, "chats_root"));
    c = f->cfg;
    c.dependencies_host_path = "/nonexistent/moat/deps";
    assert_int_equal(moat_runtime_config_validate(&c, &st), MOAT_CODE_INVALID_ARGUMENT);
    assert_string_equal(moat_status_detail_get(&st, "setting"), "dependencies_host_path");
    assert_null(moat_runtime_open(&c, &st));
    assert_string_equal(moat_status_detail_get(&st, "setting"), "dependencies_host_path");
    c = f->cfg;
    c.execd_bundle_dir = "bundle";
    assert_int_equal(moat_runtime_config_validate(&c, &st), MOAT_CODE_INVALID_ARGUMENT);
    assert_string_equal(moat_status_detail_get(&st, "setting"), "execd_bundle_dir");
    c = f->cfg;
    c.docker_host = "docker.sock";
    assert_int_equal(moat_runtime_config_validate(&c, &st), MOAT_CODE_INVALID_ARGUMENT);
    assert_string_equal(moat_status_detail_get(&st, "setting"), "docker_host");
    c = f->cfg;
    c.docker_host = "tcp://127.0.0.1:2376";
    c.docker_tls_cert = "/nonexistent/cert.pem";
    c.docker_tls_key = "/nonexistent/key.pem";
    assert_int_equal(moat_runtime_config_validate(&c, &st), MOAT_CODE_INVALID_ARGUMENT);
    assert_string_equal(moat_status_detail_get(&st, "setting"), "docker_tls_cert");
    c = f->cfg;
    c.default_memory_bytes = c.max_memory_bytes + 1;
    assert_int_equal(moat_runtime_config_validate(&c, &st), MOAT_CODE_INVALID_ARGUMENT);
    c = f->cfg;
    c.chat_mount_path = "/run/moat";
    assert_int_equal(moat_runtime_config_validate(&c, &st), MOAT_CODE_INVALID_ARGUMENT);
    assert_string_equal(moat_status_detail_get(&st, "setting"), "chat_mount_path");
    c = f->cfg;
    c.store_path = "state.db";
    assert_int_equal(moat_runtime_config_validate(&c, &st), MOAT_CODE_INVALID_ARGUMENT);
    assert_string_equal(moat_status_detail_get(&st, "setting"), "store_path");
    /* A '/' would make names Docker lists as link aliases; only Docker's name characters. */
    const char *bad_prefixes[] = {"moat/", "moat x-", NULL};
    for (size_t i = 0; i < 3; i++) {
        c = f->cfg;
        c.container_name_prefix = bad_prefixes[i];
        assert_int_equal(moat_runtime_config_validate(&c, &st), MOAT_CODE_INVALID_ARGUMENT);
        assert_string_equal(moat_status_detail_get(&st, "setting"), "container_name_prefix");
    }
    /* Images must be references Docker could name: a typo in the list is refused at start. */
    const char *long_image = "a234567890123456789012345678901234567890123456789012345678901234"
                             "a234567890123456789012345678901234567890123456789012345678901234"
                             "a234567890123456789012345678901234567890123456789012345678901234"
                             "a234567890123456789012345678901234567890123456789012345678901234";
    const char *bad_images[] = {"", "moat sandbox", "a;b", "-x", long_image};
    for (size_t i = 0; i < sizeof(bad_images) / sizeof(bad_images[0]); i++) {
        c = f->cfg;
        c.image = bad_images[i];
        assert_int_equal(moat_runtime_config_validate(&c, &st), MOAT_CODE_INVALID_ARGUMENT);
        assert_string_equal(moat_status_detail_get(&st, "setting"), "image");
        c = f->cfg;
        const char *list[] = {"moat-sandbox:latest", bad_images[i]};
        c.allowed_images = list;
        c.allowed_image_count = 2;
        assert_int_equal(moat_runtime_config_validate(&c, &st), MOAT_CODE_INVALID_ARGUMENT);
        assert_string_equal(moat_status_detail_get(&st, "setting"), "allowed_images");
    }
    c = f->cfg;
    const char *good[] = {"moat-sandbox:latest", "registry.local:5000/team/py:3.12",
                          "debian@sha256:0123abcd"};
    c.allowed_images = good;
    c.allowed_image_count = 3;
    assert_int_equal(moat_runtime_config_validate(&c, &st), MOAT_CODE_OK);
}

typedef struct hook_counts {
    int docker_calls;
    int created;
    int spans_started;
    int spans_ended;
} hook_counts;

static void on_docker(void *ctx, const char *op, long http, moat_code code, uint64_t ns)
{
    (void)op;
    (void)http;
    (void)code;
    (void)ns;
    ((hook_counts *)ctx)->docker_calls++;
}

static void on_session(void *ctx, const char *event, const char *sid, moat_code code, uint64_t ns)
{
    (void)sid;
    (void)ns;
    if (strcmp(event, "created") == 0 && code == MOAT_CODE_OK)
        ((hook_counts *)ctx)->created++;
}

static void *on_span_start(void *ctx, const char *name, const char *sid)
{
    (void)name;
    (void)sid;
    ((hook_counts *)ctx)->spans_started++;
    return ctx;
}

static void on_span_end(void *ctx, void *span, const moat_status *st)
{
    (void)st;
    assert_ptr_equal(ctx, span);
    ((hook_counts *)ctx)->spans_ended++;
}

static void test_hooks(void **state)
{
    fx *f = *state;
    hook_counts h = {0};
    moat_runtime_close(f->rt);
    f->cfg.metrics =
        (moat_runtime_metrics){.ctx = &h, .docker_call = on_docker, .session_event = on_session};
    f->cfg.tracer =
        (moat_runtime_tracer){.ctx = &h, .span_start = on_span_start, .span_end = on_span_end};
    open_runtime(f);
    moat_session s;
    moat_status st;
    assert_int_equal(create_default(f, CHAT_ID, &s, &st), MOAT_CODE_OK);
    assert_int_equal(h.created, 1);
    assert_true(h.docker_calls >= 3);
    assert_int_equal(h.spans_started, 1);
    assert_int_equal(h.spans_ended, 1);
}

static void test_runtime_setting(void **state)
{
    fx *f = *state;
    moat_runtime_close(f->rt);
    f->cfg.runtime = "runsc";
    open_runtime(f);
    moat_session s;
    moat_status st;
    assert_int_equal(create_default(f, CHAT_ID, &s, &st), MOAT_CODE_OK);
    cJSON *spec = body_of(fake_docker_find(&f->fd, "POST", "/containers/create"));
    assert_string_equal(jsv(jget(jget(spec, "HostConfig"), "Runtime")), "runsc");
    cJSON_Delete(spec);

    /* "" is the engine's default, as NULL is: no Runtime key. */
    moat_runtime_close(f->rt);
    f->cfg.runtime = "";
    open_runtime(f);
    assert_int_equal(moat_runtime_create(f->rt, SESSION_ID2, CHAT_ID, iso("2026-04-02T12:00:00Z"),
                                         iso("2026-04-02T12:05:00Z"), NULL, &s, &st),
                     MOAT_CODE_OK);
    spec = moat_json_parse(f->fd.last_create_body, strlen(f->fd.last_create_body),
                           MOAT_JSON_NUL_REJECT);
    assert_string_equal(jsv(jget(jget(spec, "Labels"), "session_id")), SESSION_ID2);
    assert_null(jget(jget(spec, "HostConfig"), "Runtime"));
    cJSON_Delete(spec);

    moat_runtime_config c = f->cfg;
    c.runtime = "runsc-kvm_2.x";
    assert_int_equal(moat_runtime_config_validate(&c, &st), MOAT_CODE_OK);
    char too_long[65];
    memset(too_long, 'r', 64);
    too_long[64] = '\0';
    const char *refused[] = {"run sc",     "runsc;rm", "-runsc", ".runsc",
                             "runsc/../x", "rünsc",    too_long};
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
        c.runtime = refused[i];
        assert_int_equal(moat_runtime_config_validate(&c, &st), MOAT_CODE_INVALID_ARGUMENT);
        assert_string_equal(st.reason, "invalid_config");
        assert_string_equal(moat_status_detail_get(&st, "setting"), "runtime");
        assert_non_null(strstr(st.message, "config runtime:"));
        assert_null(moat_runtime_open(&c, &st));
        assert_string_equal(moat_status_detail_get(&st, "setting"), "runtime");
    }
}

static int64_t last_pids_limit(fx *f)
{
    cJSON *spec = moat_json_parse(f->fd.last_create_body, strlen(f->fd.last_create_body),
                                  MOAT_JSON_NUL_REJECT);
    assert_non_null(spec);
    int64_t pids = jiv(jget(jget(spec, "HostConfig"), "PidsLimit"));
    cJSON_Delete(spec);
    return pids;
}

/* Under gVisor the pids limit counts gVisor's own threads: a larger default and maximum, and
 * a floor, for requests and for the config. */
static void test_gvisor_pids_limits(void **state)
{
    fx *f = *state;
    assert_true(moat_runtime_is_gvisor("runsc"));
    assert_true(moat_runtime_is_gvisor("runsc-kvm"));
    assert_false(moat_runtime_is_gvisor("runsc2"));
    assert_false(moat_runtime_is_gvisor("runc"));
    assert_false(moat_runtime_is_gvisor(""));
    assert_false(moat_runtime_is_gvisor(NULL));

    moat_runtime_close(f->rt);
    f->cfg.runtime = "runsc";
    open_runtime(f);
    moat_session s;
    moat_status st;
    int64_t now = iso("2026-04-02T12:00:00Z");
    assert_int_equal(
        moat_runtime_create(f->rt, SESSION_ID, CHAT_ID, now, now + 1000, NULL, &s, &st),
        MOAT_CODE_OK);
    assert_int_equal(last_pids_limit(f), MOAT_GVISOR_PIDS_LIMIT_DEFAULT);
    moat_session_options o = {.pids_limit = MOAT_GVISOR_PIDS_LIMIT_MIN - 1};
    assert_int_equal(moat_runtime_create(f->rt, SESSION_ID2, CHAT_ID, now, now + 1000, &o, &s, &st),
                     MOAT_CODE_INVALID_ARGUMENT);
    assert_string_equal(moat_status_detail_get(&st, "field"), "pids_limit");
    assert_non_null(strstr(st.message, "gVisor"));
    o.pids_limit = MOAT_GVISOR_PIDS_LIMIT_MAX + 1;
    assert_int_equal(moat_runtime_create(f->rt, SESSION_ID2, CHAT_ID, now, now + 1000, &o, &s, &st),
                     MOAT_CODE_INVALID_ARGUMENT);
    assert_string_equal(moat_status_detail_get(&st, "field"), "pids_limit");
    o.pids_limit = MOAT_GVISOR_PIDS_LIMIT_MIN;
    assert_int_equal(moat_runtime_create(f->rt, SESSION_ID2, CHAT_ID, now, now + 1000, &o, &s, &st),
                     MOAT_CODE_OK);
    assert_int_equal(last_pids_limit(f), MOAT_GVISOR_PIDS_LIMIT_MIN);
    o.pids_limit = MOAT_GVISOR_PIDS_LIMIT_MAX;
    assert_int_equal(moat_runtime_create(f->rt, SESSION_ID3, CHAT_ID, now, now + 1000, &o, &s, &st),
                     MOAT_CODE_OK);
    assert_int_equal(last_pids_limit(f), MOAT_GVISOR_PIDS_LIMIT_MAX);

    /* A configured default below the floor is refused at start, naming the setting. */
    moat_runtime_config c = f->cfg;
    c.default_pids_limit = 64;
    assert_int_equal(moat_runtime_config_validate(&c, &st), MOAT_CODE_INVALID_ARGUMENT);
    assert_string_equal(st.reason, "invalid_config");
    assert_string_equal(moat_status_detail_get(&st, "setting"), "default_pids_limit");
    assert_non_null(strstr(st.message, "gVisor"));
    c.default_pids_limit = 256;
    assert_int_equal(moat_runtime_config_validate(&c, &st), MOAT_CODE_OK);
    /* The same 64 is fine under runc, and runc's own maximum still applies there. */
    c.runtime = NULL;
    c.default_pids_limit = 64;
    assert_int_equal(moat_runtime_config_validate(&c, &st), MOAT_CODE_OK);
    c.default_pids_limit = MOAT_RUNC_PIDS_LIMIT_MAX + 1;
    assert_int_equal(moat_runtime_config_validate(&c, &st), MOAT_CODE_INVALID_ARGUMENT);
    assert_string_equal(moat_status_detail_get(&st, "setting"), "default_pids_limit");
    c.default_pids_limit = -1;
    assert_int_equal(moat_runtime_config_validate(&c, &st), MOAT_CODE_INVALID_ARGUMENT);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_runtime_setting, setup, teardown),
        cmocka_unit_test_setup_teardown(test_gvisor_pids_limits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_config_validation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hooks, setup, teardown),
    };
    return moat_run_group_tests("test_runtime_unit_config", tests, NULL, NULL);
}
