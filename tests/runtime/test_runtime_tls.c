/* The runtime on a tcp:// engine address with TLS client certificates, against the fake engine
 * serving HTTPS on 127.0.0.1 and requiring a client certificate from the test CA (as dockerd
 * --tlsverify does). The CA and certificates are made at start by make_test_certs.sh with
 * openssl in a temp dir (test_pki_make) and deleted at the end. */
#define _XOPEN_SOURCE 700
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <ftw.h>
#include <unistd.h>

#include "moat_test.h"

#include "fake_docker.h"
#include "runtime/runtime.h"
#include "host_mounts.h"
#include "tls_files.h"

#define CHAT_ID    "123e4567-e89b-12d3-a456-426614174000"
#define SESSION_ID "00000000-0000-0000-0000-000000000010"
#define CLIENT_DN  "CN=moat-test-client"

/* The PKI, made once for the whole group. */
static struct pki {
    char dir[64];
    char ca[128], other_ca[128];
    char client_cert[128], client_key[128];
    char rogue_cert[128], rogue_key[128];
    char *server_cert_pem, *server_key_pem, *ca_pem;
} pki;

typedef struct fx {
    char dir[64];
    char deps[128], lambda[128], bundle[128], chats[128], state[128], store[160];
    char host[64];
    int port;
    fake_docker fd;
    moat_runtime_config cfg;
    moat_runtime *rt;
} fx;

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    char *text = NULL;
    long n = -1;
    if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) > 0 && fseek(f, 0, SEEK_SET) == 0 &&
        (text = malloc((size_t)n + 1)) != NULL) {
        if (fread(text, 1, (size_t)n, f) == (size_t)n) {
            text[n] = '\0';
        } else {
            free(text);
            text = NULL;
        }
    }
    fclose(f);
    return text;
}

static int group_setup(void **state)
{
    (void)state;
    if (!test_pki_make(pki.dir))
        return -1;
    snprintf(pki.ca, sizeof(pki.ca), "%s/ca.pem", pki.dir);
    snprintf(pki.other_ca, sizeof(pki.other_ca), "%s/other-ca.pem", pki.dir);
    snprintf(pki.client_cert, sizeof(pki.client_cert), "%s/client.pem", pki.dir);
    snprintf(pki.client_key, sizeof(pki.client_key), "%s/client.key", pki.dir);
    snprintf(pki.rogue_cert, sizeof(pki.rogue_cert), "%s/rogue-client.pem", pki.dir);
    snprintf(pki.rogue_key, sizeof(pki.rogue_key), "%s/rogue-client.key", pki.dir);
    char path[128];
    snprintf(path, sizeof(path), "%s/server.pem", pki.dir);
    pki.server_cert_pem = slurp(path);
    snprintf(path, sizeof(path), "%s/server.key", pki.dir);
    pki.server_key_pem = slurp(path);
    pki.ca_pem = slurp(pki.ca);
    if (pki.server_cert_pem == NULL || pki.server_key_pem == NULL || pki.ca_pem == NULL) {
        fprintf(stderr, "could not read the test certificates in %s\n", pki.dir);
        return -1;
    }
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    free(pki.server_cert_pem);
    free(pki.server_key_pem);
    free(pki.ca_pem);
    test_pki_remove(pki.dir);
    return 0;
}

static void open_runtime(fx *f)
{
    moat_status st;
    f->rt = moat_runtime_open(&f->cfg, &st);
    if (f->rt == NULL)
        fail_msg("open: %s", st.message);
}

/* Reopens the runtime with other TLS files (NULL: unset). */
static void reopen_with(fx *f, const char *cert, const char *key, const char *ca)
{
    moat_runtime_close(f->rt);
    f->cfg.docker_tls_cert = cert;
    f->cfg.docker_tls_key = key;
    f->cfg.docker_tls_ca = ca;
    open_runtime(f);
}

static int setup(void **state)
{
    fx *f = calloc(1, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "/tmp/moat-rt-tls-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->deps, sizeof(f->deps), "%s/dependencies", f->dir);
    snprintf(f->lambda, sizeof(f->lambda), "%s/lambda-tools", f->dir);
    snprintf(f->bundle, sizeof(f->bundle), "%s/bundle", f->dir);
    snprintf(f->chats, sizeof(f->chats), "%s/chats", f->dir);
    snprintf(f->state, sizeof(f->state), "%s/state", f->dir);
    snprintf(f->store, sizeof(f->store), "%s/state/state.db", f->dir);
    mkdir(f->deps, 0755);
    mkdir(f->lambda, 0755);
    mkdir(f->bundle, 0755);
    mkdir(f->state, 0755);
    int rc = fake_docker_start_tls(&f->fd, &f->port, pki.server_cert_pem, pki.server_key_pem,
                                   pki.ca_pem);
    if (rc == -2)
        fail_msg("libmicrohttpd was built without TLS (MHD_FEATURE_TLS)");
    assert_int_equal(rc, 0);
    snprintf(f->host, sizeof(f->host), "tcp://127.0.0.1:%d", f->port);
    moat_runtime_config_defaults(&f->cfg);
    f->cfg.image = "sandbox:latest";
    f->cfg.chats_root = f->chats;
    f->cfg.dependencies_host_path = f->deps;
    f->cfg.lambda_tools_host_path = f->lambda;
    f->cfg.execd_bundle_dir = f->bundle;
    f->cfg.state_dir = f->state;
    f->cfg.store_path = f->store;
    f->cfg.docker_host = f->host;
    f->cfg.docker_tls_cert = pki.client_cert;
    f->cfg.docker_tls_key = pki.client_key;
    f->cfg.docker_tls_ca = pki.ca;
    f->cfg.workspace_quota = false; /* a fake engine: nothing mounted on the host */
    /* Generous: under valgrind the first TLS handshakes take seconds. No test waits for it. */
    f->cfg.docker_timeout_ms = 30000;
    f->cfg.readiness_timeout_ms = 30000;
    f->cfg.container_name_prefix = "moat-unit-tls-";
    open_runtime(f);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx *f = *state;
    moat_runtime_close(f->rt);
    fake_docker_stop(&f->fd);
    host_unmount_under(f->dir);
    nftw(f->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(f);
    return 0;
}

static int64_t iso(const char *text)
{
    int64_t ms = 0;
    assert_int_equal(moat_time_parse_iso8601(text, &ms), MOAT_OK);
    return ms;
}

/* Every request the engine answered came over TLS from moat's client certificate. */
static void assert_all_from_client(fx *f)
{
    pthread_mutex_lock(&f->fd.mu);
    size_t count = f->fd.request_count, from_client = 0;
    for (size_t i = 0; i < count; i++)
        from_client += strcmp(f->fd.requests[i].tls_peer, CLIENT_DN) == 0;
    pthread_mutex_unlock(&f->fd.mu);
    assert_true(count > 0);
    assert_int_equal(from_client, count);
}

static size_t request_count(fx *f)
{
    pthread_mutex_lock(&f->fd.mu);
    size_t n = f->fd.request_count;
    pthread_mutex_unlock(&f->fd.mu);
    return n;
}

/* The engine refused at the TLS layer: UNAVAILABLE naming the endpoint, nothing reached HTTP. */
static void assert_refused(fx *f, moat_code code, const moat_status *st)
{
    assert_int_equal(code, MOAT_CODE_UNAVAILABLE);
    assert_string_equal(st->reason, "docker_unavailable");
    assert_non_null(strstr(st->message, f->cfg.docker_host));
    assert_non_null(strstr(st->message, "unreachable"));
    assert_int_equal(request_count(f), 0);
}

static void test_tls_version_negotiation(void **state)
{
    fx *f = *state;
    char v[16];
    moat_status st;
    snprintf(f->fd.api_version, sizeof(f->fd.api_version), "1.47");
    assert_int_equal(moat_runtime_docker_version(f->rt, v, &st), MOAT_CODE_OK);
    assert_string_equal(v, "1.44");
    assert_int_equal(moat_runtime_image_inspect(f->rt, "sandbox:latest", &st), MOAT_CODE_OK);
    assert_non_null(fake_docker_find(&f->fd, "GET", "/v1.44/images/sandbox%3Alatest/json"));
    assert_int_equal(fake_docker_count(&f->fd, "GET", "/version"), 1);
    /* Docker's errors come through TLS unchanged. */
    fake_docker_route(&f->fd, "GET", "/images/", 404, "{\"message\":\"No such image: nope\"}", 1);
    assert_int_equal(moat_runtime_image_inspect(f->rt, "nope", &st), MOAT_CODE_NOT_FOUND);
    assert_non_null(strstr(st.message, "No such image: nope"));
    assert_all_from_client(f);
}

static void test_tls_create_list_stop(void **state)
{
    fx *f = *state;
    moat_session s;
    moat_status st;
    int64_t created = iso("2026-04-02T12:00:00+00:00");
    assert_int_equal(moat_runtime_create(f->rt, SESSION_ID, CHAT_ID, created,
                                         created + 5 * 60 * 1000, NULL, &s, &st),
                     MOAT_CODE_OK);
    assert_string_equal(s.container_id, "container-123");
    assert_int_equal(s.state, MOAT_SESSION_RUNNING);
    assert_int_equal(fake_docker_count(&f->fd, "POST", "/v1.41/containers/create"), 1);
    assert_int_equal(fake_docker_count(&f->fd, "POST", "/v1.41/containers/container-123/start"), 1);
    const fake_request *rq = fake_docker_find(&f->fd, "POST", "/containers/create");
    cJSON *spec = moat_json_parse(rq->body, strlen(rq->body), MOAT_JSON_NUL_REJECT);
    assert_non_null(spec);
    const cJSON *labels = cJSON_GetObjectItemCaseSensitive(spec, "Labels");
    assert_string_equal(moat_json_str(labels, "session_id", NULL), SESSION_ID);
    assert_string_equal(moat_json_str(labels, "chat_id", NULL), CHAT_ID);
    cJSON_Delete(spec);

    fake_docker_route(&f->fd, "GET", "/containers/json", 200,
                      "[{\"Id\":\"container-123\",\"State\":\"running\","
                      "\"Image\":\"sandbox:latest\",\"Created\":1775131200,"
                      "\"Names\":[\"/moat-unit-tls-" SESSION_ID "\"],\"Labels\":{"
                      "\"session_id\":\"" SESSION_ID "\",\"chat_id\":\"" CHAT_ID "\","
                      "\"expires_at\":\"2026-04-02T12:05:00+00:00\",\"moat.managed\":\"true\"}}]",
                      -1);
    moat_session *sessions = NULL;
    size_t n = 0;
    assert_int_equal(moat_runtime_list_active(f->rt, &sessions, &n, &st), MOAT_CODE_OK);
    assert_int_equal(n, 1);
    assert_string_equal(sessions[0].session_id, SESSION_ID);
    assert_string_equal(sessions[0].container_id, "container-123");
    assert_int_equal(sessions[0].expires_at_ms, iso("2026-04-02T12:05:00+00:00"));
    free(sessions);

    assert_int_equal(moat_runtime_stop(f->rt, SESSION_ID, &st), MOAT_CODE_OK);
    assert_int_equal(fake_docker_count(&f->fd, "DELETE", "/containers/container-123"), 1);
    assert_all_from_client(f);
}

/* Only the CA set: HTTPS that verifies the engine but offers no client certificate. */
static void test_tls_no_client_cert_refused(void **state)
{
    fx *f = *state;
    reopen_with(f, NULL, NULL, pki.ca);
    char v[16];
    moat_status st;
    assert_refused(f, moat_runtime_docker_version(f->rt, v, &st), &st);
    moat_session s;
    int64_t now = moat_time_now_ms();
    assert_int_equal(
        moat_runtime_create(f->rt, SESSION_ID, CHAT_ID, now, now + 60000, NULL, &s, &st),
        MOAT_CODE_UNAVAILABLE);
    assert_string_equal(st.reason, "sandbox_start_failed");
    assert_int_equal(request_count(f), 0);
}

/* A client certificate from a CA the engine does not trust. */
static void test_tls_untrusted_client_cert_refused(void **state)
{
    fx *f = *state;
    reopen_with(f, pki.rogue_cert, pki.rogue_key, pki.ca);
    moat_session *sessions = NULL;
    size_t n = 0;
    moat_status st;
    assert_refused(f, moat_runtime_list_active(f->rt, &sessions, &n, &st), &st);
    assert_null(sessions);
}

/* The runtime trusts another CA: it refuses the engine's certificate. */
static void test_tls_wrong_ca_refuses_server(void **state)
{
    fx *f = *state;
    reopen_with(f, pki.client_cert, pki.client_key, pki.other_ca);
    char v[16];
    moat_status st;
    assert_refused(f, moat_runtime_docker_version(f->rt, v, &st), &st);
    assert_non_null(strstr(st.message, "certificate"));
}

/* The engine's certificate is for IP 127.0.0.1 only: the runtime checks the host name too. */
static void test_tls_host_name_checked(void **state)
{
    fx *f = *state;
    snprintf(f->host, sizeof(f->host), "tcp://localhost:%d", f->port);
    reopen_with(f, pki.client_cert, pki.client_key, pki.ca);
    char v[16];
    moat_status st;
    assert_refused(f, moat_runtime_docker_version(f->rt, v, &st), &st);
    assert_non_null(strstr(st.message, "certificate"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_tls_version_negotiation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tls_create_list_stop, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tls_no_client_cert_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tls_untrusted_client_cert_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tls_wrong_ca_refuses_server, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tls_host_name_checked, setup, teardown),
    };
    return moat_run_group_tests("test_runtime_tls", tests, group_setup, group_teardown);
}
