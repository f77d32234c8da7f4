/* Unit tests of moatd's configuration, address helpers and token comparison. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "moat_test.h"

#include "server/server.h"
#include "tls_files.h"

static void test_defaults(void **state)
{
    (void)state;
    moat_server_config c;
    moat_server_config_defaults(&c);
    assert_string_equal(c.listen, "127.0.0.1:7070");
    assert_string_equal(c.docker_host, "/var/run/docker.sock");
    assert_string_equal(c.image, "moat-sandbox-debian:latest");
    assert_string_equal(c.allowed_images, "moat-sandbox-debian:latest,moat-sandbox:latest");
    assert_string_equal(c.state_dir, "/var/lib/moat");
    assert_string_equal(c.metrics_listen, "127.0.0.1:7071");
    assert_string_equal(c.token, "");
    assert_string_equal(c.runtime, "");
    assert_int_equal(c.max_frame_size, 1048576);
    assert_int_equal(c.initial_window, 1048576);
    assert_int_equal(c.log_level, MOAT_LOG_INFO);
    assert_string_equal(c.instance, "");
    assert_int_equal(c.memory_budget_bytes, 256ull << 20);
    assert_int_equal(c.max_ttl_seconds, 86400);
    assert_int_equal(c.max_sessions, 256);
    assert_int_equal(c.max_sessions_per_chat, 4);
    assert_int_equal(c.max_calls_per_session, 64);
    char err[256] = "";
    assert_int_equal(moat_server_config_finish(&c, "/nonexistent/bin", err, sizeof(err)), MOAT_OK);
    assert_string_equal(c.chats_root, "/var/lib/moat/chats");
    assert_string_equal(c.store_path, "/var/lib/moat/state.db");
    assert_string_equal(c.dependencies_host_path, "/var/lib/moat/dependencies");
    assert_string_equal(c.lambda_tools_host_path, "/var/lib/moat/lambda-tools");
    assert_string_equal(c.execd_bundle, "/nonexistent/bin/execd-bundle");
    moat_server_config_free(&c);
}

static void test_parse_file_text(void **state)
{
    (void)state;
    moat_server_config c;
    moat_server_config_defaults(&c);
    const char *text = "# a comment\n"
                       "\n"
                       "  listen = 127.0.0.1:9000   # trailing comment\n"
                       "token = \"s3cret # not a comment\"\n"
                       "max-streams-per-connection=7\n"
                       "LOG_LEVEL = debug\n"
                       "state_dir=/tmp/moat-test-state";
    char err[256] = "";
    assert_int_equal(moat_server_config_parse(&c, text, err, sizeof(err)), MOAT_OK);
    assert_string_equal(c.listen, "127.0.0.1:9000");
    assert_string_equal(c.token, "s3cret # not a comment");
    assert_int_equal(c.max_streams_per_connection, 7);
    assert_int_equal(c.log_level, MOAT_LOG_DEBUG);
    assert_string_equal(c.state_dir, "/tmp/moat-test-state");
    assert_int_equal(moat_server_config_finish(&c, NULL, err, sizeof(err)), MOAT_OK);
    assert_string_equal(c.chats_root, "/tmp/moat-test-state/chats");
    moat_server_config_free(&c);
}

static void expect_bad(const char *text, const char *want_in_err)
{
    moat_server_config c;
    moat_server_config_defaults(&c);
    char err[512] = "";
    assert_int_equal(moat_server_config_parse(&c, text, err, sizeof(err)), MOAT_E_INVAL);
    if (strstr(err, want_in_err) == NULL)
        fail_msg("error \"%s\" does not mention \"%s\"", err, want_in_err);
    moat_server_config_free(&c);
}

static void test_parse_bad_input(void **state)
{
    (void)state;
    expect_bad("listen = 1.2.3.4:1\nbogus = 1\n", "line 2: unknown key \"bogus\"");
    expect_bad("just words\n", "line 1: expected key = value");
    expect_bad("= 5\n", "missing key");
    expect_bad("max_connections = many\n", "max_connections: expected a number");
    expect_bad("max_connections = -1\n", "expected a number");
    expect_bad("max_connections = 0\n", "from 1 to");
    expect_bad("max_frame_size = 99999999999999999999\n", "max_frame_size");
    expect_bad("max_frame_size = 100\n", "from 4096");
    expect_bad("max_connections = 12abc\n", "expected a number");
    expect_bad("token = \"unterminated\n", "unterminated");
    expect_bad("token = \"a\" b\n", "after the quoted value");
    expect_bad("log_level = loud\n", "log_level");
    expect_bad("max_connections =\n", "expected a number");
    char *longline = malloc(10000);
    memset(longline, 'a', 9999);
    longline[9999] = '\0';
    expect_bad(longline, "longer than");
    free(longline);
}

static void test_set_and_env(void **state)
{
    (void)state;
    moat_server_config c;
    moat_server_config_defaults(&c);
    char err[256] = "";
    assert_int_equal(moat_server_config_set(&c, "idle-timeout-seconds", "5", err, sizeof(err)),
                     MOAT_OK);
    assert_int_equal(c.idle_timeout_seconds, 5);
    assert_int_equal(moat_server_config_set(&c, "nope", "5", err, sizeof(err)), MOAT_E_NOT_FOUND);
    assert_int_equal(moat_server_config_set(&c, "ttl_seconds", "0", err, sizeof(err)),
                     MOAT_E_INVAL);
    setenv("MOAT_TOKEN", "from-env", 1);
    setenv("MOAT_MAX_CONNECTIONS", "33", 1);
    assert_int_equal(moat_server_config_apply_env(&c, err, sizeof(err)), MOAT_OK);
    assert_string_equal(c.token, "from-env");
    assert_int_equal(c.max_connections, 33);
    setenv("MOAT_MAX_CONNECTIONS", "x", 1);
    assert_int_equal(moat_server_config_apply_env(&c, err, sizeof(err)), MOAT_E_INVAL);
    assert_non_null(strstr(err, "MOAT_MAX_CONNECTIONS"));
    unsetenv("MOAT_TOKEN");
    unsetenv("MOAT_MAX_CONNECTIONS");
    /* The runtime from each source; its value is checked by the runtime library
     * (tests/runtime) and by moatd --check-config (tests/server/test_moatd_ops.c). */
    assert_int_equal(moat_server_config_parse(&c, "runtime = runsc\n", err, sizeof(err)), MOAT_OK);
    assert_string_equal(c.runtime, "runsc");
    setenv("MOAT_RUNTIME", "runsc-kvm", 1);
    assert_int_equal(moat_server_config_apply_env(&c, err, sizeof(err)), MOAT_OK);
    unsetenv("MOAT_RUNTIME");
    assert_string_equal(c.runtime, "runsc-kvm");
    assert_int_equal(moat_server_config_set(&c, "runtime", "", err, sizeof(err)), MOAT_OK);
    assert_string_equal(c.runtime, "");
    moat_server_config_free(&c);
}

/* instance, like every key, comes from the file, MOAT_INSTANCE and --instance. */
static void test_instance_from_file_env_and_flag(void **state)
{
    (void)state;
    moat_server_config c;
    moat_server_config_defaults(&c);
    char err[256] = "";
    assert_int_equal(moat_server_config_parse(&c, "instance = blue\n", err, sizeof(err)), MOAT_OK);
    assert_string_equal(c.instance, "blue");
    setenv("MOAT_INSTANCE", "green", 1);
    assert_int_equal(moat_server_config_apply_env(&c, err, sizeof(err)), MOAT_OK);
    unsetenv("MOAT_INSTANCE");
    assert_string_equal(c.instance, "green");
    assert_int_equal(moat_server_config_set(&c, "instance", "red", err, sizeof(err)), MOAT_OK);
    assert_string_equal(c.instance, "red");
    moat_server_config_free(&c);
}

/* The sandbox-bounding keys: booleans in the usual spellings, 64-bit sizes with their range. */
static void test_quota_keys(void **state)
{
    (void)state;
    moat_server_config c;
    moat_server_config_defaults(&c);
    assert_true(c.workspace_quota);
    assert_true(c.read_only_rootfs);
    assert_int_equal(c.workspace_size_bytes, 1073741824ull);
    assert_int_equal(c.workspace_inodes, 65536);
    assert_int_equal(c.tmpfs_size_bytes, 67108864ull);
    assert_string_equal(c.workspace_images_dir, "");
    const char *text = "workspace_quota = off\n"
                       "read_only_rootfs = False\n"
                       "workspace_size_bytes = 17592186044416\n"
                       "workspace_inodes = 4294967295\n"
                       "workspace_images_dir = /srv/moat-images\n";
    char err[256] = "";
    assert_int_equal(moat_server_config_parse(&c, text, err, sizeof(err)), MOAT_OK);
    assert_false(c.workspace_quota);
    assert_false(c.read_only_rootfs);
    assert_int_equal(c.workspace_size_bytes, 17592186044416ull);
    assert_int_equal(c.workspace_inodes, 4294967295u);
    assert_string_equal(c.workspace_images_dir, "/srv/moat-images");
    assert_int_equal(moat_server_config_set(&c, "workspace-quota", "yes", err, sizeof(err)),
                     MOAT_OK);
    assert_true(c.workspace_quota);
    assert_int_equal(moat_server_config_set(&c, "read_only_rootfs", "1", err, sizeof(err)),
                     MOAT_OK);
    assert_true(c.read_only_rootfs);
    moat_server_config_free(&c);
    expect_bad("workspace_quota = maybe\n", "workspace_quota: expected true or false");
    expect_bad("workspace_quota =\n", "expected true or false");
    expect_bad("workspace_size_bytes = 16777215\n", "from 16777216 to 17592186044416");
    expect_bad("workspace_size_bytes = 17592186044417\n", "workspace_size_bytes");
    expect_bad("workspace_inodes = 63\n", "from 64 to 4294967295");
    expect_bad("tmpfs_size_bytes = 0\n", "tmpfs_size_bytes");
}

/* sandbox_user: UID:GID with neither 0, or root by name; anything else is refused. */
static void test_sandbox_user(void **state)
{
    (void)state;
    moat_sandbox_user u;
    assert_int_equal(moat_server_parse_sandbox_user("1000:1000", &u), MOAT_OK);
    assert_false(u.root);
    assert_int_equal(u.uid, 1000);
    assert_int_equal(u.gid, 1000);
    assert_int_equal(moat_server_parse_sandbox_user("65534:100", &u), MOAT_OK);
    assert_int_equal(u.gid, 100);
    assert_int_equal(moat_server_parse_sandbox_user("root", &u), MOAT_OK);
    assert_true(u.root);
    const char *bad[] = {"0:0",   "0:1000", "1000:0",       "1000",          ":1000",
                         "1000:", "a:b",    "-1:1000",      "1000:1x",       "Root",
                         "",      "1:2:3",  "4294967295:1", "99999999999:1", " 1000:1000"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (moat_server_parse_sandbox_user(bad[i], &u) != MOAT_E_INVAL)
            fail_msg("sandbox_user \"%s\" was accepted", bad[i]);
    moat_server_config c;
    moat_server_config_defaults(&c);
    assert_string_equal(c.sandbox_user, "1000:1000");
    char err[256] = "";
    assert_int_equal(moat_server_config_set(&c, "sandbox_user", "0:0", err, sizeof(err)), MOAT_OK);
    assert_int_equal(moat_server_config_finish(&c, "/nonexistent", err, sizeof(err)), MOAT_E_INVAL);
    assert_non_null(strstr(err, "sandbox_user"));
    moat_server_config_free(&c);
}

static void test_load_file(void **state)
{
    (void)state;
    char path[] = "/tmp/moat-config-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char *text = "listen = 127.0.0.1:7171\nimage = other:1\n";
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    moat_server_config c;
    moat_server_config_defaults(&c);
    char err[256] = "";
    assert_int_equal(moat_server_config_load_file(&c, path, err, sizeof(err)), MOAT_OK);
    assert_string_equal(c.image, "other:1");
    assert_string_equal(c.config_file, path);
    unlink(path);
    assert_int_equal(moat_server_config_load_file(&c, path, err, sizeof(err)), MOAT_E_IO);
    moat_server_config_free(&c);
}

static moat_err finish_with(const char *key, const char *value, const char *key2,
                            const char *value2, char *err, size_t errlen)
{
    moat_server_config c;
    moat_server_config_defaults(&c);
    moat_server_config_set(&c, key, value, err, errlen);
    if (key2 != NULL)
        moat_server_config_set(&c, key2, value2, err, errlen);
    moat_err e = moat_server_config_finish(&c, NULL, err, errlen);
    moat_server_config_free(&c);
    return e;
}

static void test_finish_rules(void **state)
{
    (void)state;
    char err[512];
    /* Not loopback without a token: refused. */
    assert_int_equal(finish_with("listen", "0.0.0.0:7070", NULL, NULL, err, sizeof(err)),
                     MOAT_E_INVAL);
    assert_non_null(strstr(err, "token"));
    assert_int_equal(finish_with("listen", "0.0.0.0:7070", "token", "t", err, sizeof(err)),
                     MOAT_OK);
    assert_int_equal(finish_with("listen", "[::]:7070", NULL, NULL, err, sizeof(err)),
                     MOAT_E_INVAL);
    assert_int_equal(finish_with("listen", "[::1]:7070", NULL, NULL, err, sizeof(err)), MOAT_OK);
    assert_int_equal(finish_with("listen", "localhost:7070", NULL, NULL, err, sizeof(err)),
                     MOAT_OK);
    assert_int_equal(finish_with("listen", "127.0.0.1", NULL, NULL, err, sizeof(err)),
                     MOAT_E_INVAL);
    assert_int_equal(finish_with("listen", "127.0.0.1:70000", NULL, NULL, err, sizeof(err)),
                     MOAT_E_INVAL);
    assert_int_equal(finish_with("metrics_listen", "0.0.0.0:7071", NULL, NULL, err, sizeof(err)),
                     MOAT_E_INVAL);
    assert_non_null(strstr(err, "loopback"));
    assert_int_equal(finish_with("metrics_listen", "", NULL, NULL, err, sizeof(err)), MOAT_OK);
    /* the default lifetime may not exceed the longest one a client may ask for */
    assert_int_equal(finish_with("max_ttl_seconds", "60", NULL, NULL, err, sizeof(err)),
                     MOAT_E_INVAL);
    assert_non_null(strstr(err, "max_ttl_seconds"));
    assert_int_equal(finish_with("max_ttl_seconds", "60", "ttl_seconds", "60", err, sizeof(err)),
                     MOAT_OK);
    moat_server_config r;
    moat_server_config_defaults(&r);
    assert_int_equal(moat_server_config_set(&r, "memory_budget_bytes", "1048576", err, sizeof(err)),
                     MOAT_E_INVAL);
    assert_int_equal(moat_server_config_set(&r, "max_calls_per_session", "0", err, sizeof(err)),
                     MOAT_E_INVAL);
    moat_server_config_free(&r);
    assert_int_equal(finish_with("state_dir", "relative/dir", NULL, NULL, err, sizeof(err)),
                     MOAT_E_INVAL);
    assert_int_equal(finish_with("listen", "", "unix_socket", "", err, sizeof(err)), MOAT_E_INVAL);
    assert_int_equal(finish_with("listen", "", "unix_socket", "/tmp/m.sock", err, sizeof(err)),
                     MOAT_OK);
    assert_int_equal(finish_with("image", "", NULL, NULL, err, sizeof(err)), MOAT_E_INVAL);
}

/* Cluster mode: nothing without endpoints; with them, URLs, an advertised address and a node id
 * (the host name by default). */
static void test_cluster_keys(void **state)
{
    (void)state;
    char err[512];
    moat_server_config c;
    moat_server_config_defaults(&c);
    assert_string_equal(c.cluster_etcd_endpoints, "");
    assert_int_equal(c.cluster_lease_ttl_seconds, 5);
    assert_int_equal(moat_server_config_finish(&c, NULL, err, sizeof(err)), MOAT_OK);
    assert_string_equal(c.cluster_node_id, "");
    assert_int_equal(moat_server_config_set(&c, "cluster_etcd_endpoints",
                                            "http://10.0.0.1:2379, https://10.0.0.2:2379", err,
                                            sizeof(err)),
                     MOAT_OK);
    assert_int_equal(moat_server_config_finish(&c, NULL, err, sizeof(err)), MOAT_E_INVAL);
    assert_non_null(strstr(err, "cluster_advertise"));
    assert_int_equal(
        moat_server_config_set(&c, "cluster_advertise", "10.0.0.9:7070", err, sizeof(err)),
        MOAT_OK);
    assert_int_equal(moat_server_config_finish(&c, NULL, err, sizeof(err)), MOAT_OK);
    char host[256] = "";
    gethostname(host, sizeof(host) - 1);
    assert_string_equal(c.cluster_node_id, host);
    moat_server_config_free(&c);

    const char *eps = "cluster_etcd_endpoints";
    assert_int_equal(
        finish_with(eps, "10.0.0.1:2379", "cluster_advertise", "h:1", err, sizeof(err)),
        MOAT_E_INVAL);
    assert_non_null(strstr(err, "cluster_etcd_endpoints"));
    assert_int_equal(finish_with(eps, " , ", "cluster_advertise", "h:1", err, sizeof(err)),
                     MOAT_E_INVAL);
    char many[1024] = "";
    for (int i = 0; i < 17; i++)
        strcat(many, "http://h:1,");
    assert_int_equal(finish_with(eps, many, "cluster_advertise", "h:1", err, sizeof(err)),
                     MOAT_E_INVAL);
    assert_int_equal(
        finish_with(eps, "http://h:1", "cluster_advertise", "no-port", err, sizeof(err)),
        MOAT_E_INVAL);
    moat_server_config_defaults(&c);
    moat_server_config_set(&c, eps, "http://h:1", err, sizeof(err));
    moat_server_config_set(&c, "cluster_advertise", "h:1", err, sizeof(err));
    moat_server_config_set(&c, "cluster_node_id", "a/b", err, sizeof(err));
    assert_int_equal(moat_server_config_finish(&c, NULL, err, sizeof(err)), MOAT_E_INVAL);
    assert_non_null(strstr(err, "cluster_node_id"));
    assert_int_equal(moat_server_config_set(&c, "cluster_lease_ttl_seconds", "1", err, sizeof(err)),
                     MOAT_E_INVAL);
    moat_server_config_free(&c);
}

static void test_allowed_images(void **state)
{
    (void)state;
    const char *list[MOAT_SERVER_MAX_IMAGES];
    size_t n = 99;
    char *buf = NULL;
    /* The default: both images scripts/build-sandbox-image.sh makes. */
    moat_server_config c;
    moat_server_config_defaults(&c);
    assert_int_equal(moat_server_split_images(c.allowed_images, list, &n, &buf), MOAT_OK);
    assert_int_equal(n, 2);
    assert_string_equal(list[0], "moat-sandbox-debian:latest");
    assert_string_equal(list[1], "moat-sandbox:latest");
    free(buf);
    /* From a file: commas, spaces and tabs separate; empty entries are none. */
    char err[256] = "";
    assert_int_equal(moat_server_config_parse(&c, "allowed_images = a:1, b:2\t,,c@sha256:00 ,\n",
                                              err, sizeof(err)),
                     MOAT_OK);
    assert_int_equal(moat_server_split_images(c.allowed_images, list, &n, &buf), MOAT_OK);
    assert_int_equal(n, 3);
    assert_string_equal(list[0], "a:1");
    assert_string_equal(list[1], "b:2");
    assert_string_equal(list[2], "c@sha256:00");
    free(buf);
    /* Empty: only image. */
    assert_int_equal(moat_server_config_set(&c, "allowed_images", "", err, sizeof(err)), MOAT_OK);
    assert_int_equal(moat_server_split_images(c.allowed_images, list, &n, &buf), MOAT_OK);
    assert_int_equal(n, 0);
    free(buf);
    moat_server_config_free(&c);
    /* More than the list holds is refused at config, not cut short. */
    char many[MOAT_SERVER_MAX_IMAGES * 8 + 16] = "";
    for (int i = 0; i <= MOAT_SERVER_MAX_IMAGES; i++)
        snprintf(many + strlen(many), sizeof(many) - strlen(many), "i%d:1,", i);
    assert_int_equal(moat_server_split_images(many, list, &n, &buf), MOAT_E_TOO_BIG);
    free(buf);
    assert_int_equal(finish_with("allowed_images", many, NULL, NULL, err, sizeof(err)),
                     MOAT_E_INVAL);
    assert_non_null(strstr(err, "allowed_images"));
    many[strlen(many) - strlen("i64:1,")] = '\0';
    assert_int_equal(finish_with("allowed_images", many, NULL, NULL, err, sizeof(err)), MOAT_OK);
}

static void test_loopback_and_hostport(void **state)
{
    (void)state;
    assert_true(moat_server_is_loopback("127.0.0.1:1"));
    assert_true(moat_server_is_loopback("127.9.8.7:1"));
    assert_true(moat_server_is_loopback("[::1]:1"));
    assert_true(moat_server_is_loopback("localhost:80"));
    assert_false(moat_server_is_loopback("0.0.0.0:1"));
    assert_false(moat_server_is_loopback("10.0.0.1:1"));
    assert_false(moat_server_is_loopback("[::]:1"));
    assert_false(moat_server_is_loopback("example.com:1"));
    assert_false(moat_server_is_loopback("128.0.0.1:1"));
    char host[64];
    uint16_t port = 0;
    assert_int_equal(moat_server_split_hostport("1.2.3.4:80", host, sizeof(host), &port), MOAT_OK);
    assert_string_equal(host, "1.2.3.4");
    assert_int_equal(port, 80);
    assert_int_equal(moat_server_split_hostport("[fe80::1]:443", host, sizeof(host), &port),
                     MOAT_OK);
    assert_string_equal(host, "fe80::1");
    assert_int_equal(port, 443);
    const char *bad[] = {"", ":80", "host:", "host:x", "a:b:c", "[::1]", "[::1]80", "h:123456"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(moat_server_split_hostport(bad[i], host, sizeof(host), &port),
                         MOAT_E_INVAL);
    assert_int_equal(moat_server_split_hostport("averylonghostname:1", host, 4, &port),
                     MOAT_E_INVAL);
}

static void test_token_equal(void **state)
{
    (void)state;
    const char *want = "correct horse";
    assert_true(moat_server_token_equal((const uint8_t *)"correct horse", 13, want));
    assert_false(moat_server_token_equal((const uint8_t *)"correct hors", 12, want));
    assert_false(moat_server_token_equal((const uint8_t *)"correct horse!", 14, want));
    assert_false(moat_server_token_equal((const uint8_t *)"Correct horse", 13, want));
    assert_false(moat_server_token_equal((const uint8_t *)"", 0, want));
    assert_false(moat_server_token_equal((const uint8_t *)"", 0, ""));
    /* Bytes after an embedded NUL count. */
    assert_false(moat_server_token_equal((const uint8_t *)"correct horse\0x", 15, want));
}

static tls_files tls_a, tls_b;

static int make_tls_files(void **state)
{
    (void)state;
    return tls_files_make(&tls_a) && tls_files_make(&tls_b) ? 0 : -1;
}

static int remove_tls_files(void **state)
{
    (void)state;
    tls_files_remove(&tls_a);
    tls_files_remove(&tls_b);
    return 0;
}

/* finish with grpc_tls_cert and grpc_tls_key: the error must start with the key to blame
 * (NULL: no error) and contain what. */
static void expect_tls(const char *cert, const char *key, const char *blame, const char *what)
{
    moat_server_config c;
    moat_server_config_defaults(&c);
    char err[512] = "";
    assert_int_equal(moat_server_config_set(&c, "grpc_tls_cert", cert, err, sizeof(err)), MOAT_OK);
    assert_int_equal(moat_server_config_set(&c, "grpc_tls_key", key, err, sizeof(err)), MOAT_OK);
    moat_err e = moat_server_config_finish(&c, NULL, err, sizeof(err));
    if (blame == NULL) {
        assert_int_equal(e, MOAT_OK);
        assert_int_equal(c.grpc_tls != NULL, cert[0] != '\0');
    } else {
        assert_int_equal(e, MOAT_E_INVAL);
        assert_null(c.grpc_tls);
        assert_int_equal(strncmp(err, blame, strlen(blame)), 0);
        assert_non_null(strstr(err, what));
    }
    moat_server_config_free(&c);
}

/* The gRPC listener's TLS: both files or neither; each file readable and what it should be. */
static void test_grpc_tls_keys(void **state)
{
    (void)state;
    expect_tls("", "", NULL, NULL);
    expect_tls(tls_a.cert, tls_a.key, NULL, NULL);
    expect_tls(tls_a.cert, "", "grpc_tls_key: must be set with grpc_tls_cert", "");
    expect_tls("", tls_a.key, "grpc_tls_cert: must be set with grpc_tls_key", "");
    expect_tls("/nonexistent/cert.pem", tls_a.key, "grpc_tls_cert: /nonexistent/cert.pem",
               "No such file");
    expect_tls(tls_a.cert, "/nonexistent/key.pem", "grpc_tls_key: /nonexistent/key.pem",
               "No such file");
    expect_tls(tls_a.key, tls_a.key, "grpc_tls_cert:", "not a PEM certificate");
    expect_tls(tls_a.cert, tls_a.cert, "grpc_tls_key:", "not an unencrypted PEM private key");
    expect_tls(tls_a.cert, tls_b.key, "grpc_tls_key:", "does not match the certificate");
    /* Through the environment as well, as every key. */
    moat_server_config c;
    moat_server_config_defaults(&c);
    char err[512] = "";
    setenv("MOAT_GRPC_TLS_CERT", tls_b.cert, 1);
    setenv("MOAT_GRPC_TLS_KEY", tls_b.key, 1);
    assert_int_equal(moat_server_config_apply_env(&c, err, sizeof(err)), MOAT_OK);
    unsetenv("MOAT_GRPC_TLS_CERT");
    unsetenv("MOAT_GRPC_TLS_KEY");
    assert_int_equal(moat_server_config_finish(&c, NULL, err, sizeof(err)), MOAT_OK);
    assert_non_null(c.grpc_tls);
    moat_server_config_free(&c);
}

/* finish in a cluster of endpoints eps with the etcd TLS files ca, cert and key: the error must
 * start with the key to blame (NULL: no error) and contain what. */
static void expect_etcd_tls(const char *eps, const char *ca, const char *cert, const char *key,
                            const char *blame, const char *what)
{
    moat_server_config c;
    moat_server_config_defaults(&c);
    char err[512] = "";
    const char *set[][2] = {{"cluster_etcd_endpoints", eps},
                            {"cluster_advertise", "10.0.0.9:7070"},
                            {"cluster_etcd_tls_ca", ca},
                            {"cluster_etcd_tls_cert", cert},
                            {"cluster_etcd_tls_key", key}};
    for (size_t i = 0; i < sizeof(set) / sizeof(set[0]); i++)
        assert_int_equal(moat_server_config_set(&c, set[i][0], set[i][1], err, sizeof(err)),
                         MOAT_OK);
    moat_err e = moat_server_config_finish(&c, NULL, err, sizeof(err));
    if (blame == NULL) {
        assert_int_equal(e, MOAT_OK);
    } else {
        assert_int_equal(e, MOAT_E_INVAL);
        assert_int_equal(strncmp(err, blame, strlen(blame)), 0);
        assert_non_null(strstr(err, what));
    }
    moat_server_config_free(&c);
}

/* TLS to etcd: https:// endpoints only, certificate and key together, each file readable and
 * what it should be (a self-signed certificate is a CA bundle of one). */
static void test_cluster_etcd_tls_keys(void **state)
{
    (void)state;
    const char *https = "https://10.0.0.1:2379,https://10.0.0.2:2379";
    expect_etcd_tls(https, "", "", "", NULL, NULL);
    expect_etcd_tls(https, tls_a.cert, "", "", NULL, NULL);
    expect_etcd_tls(https, "", tls_a.cert, tls_a.key, NULL, NULL);
    expect_etcd_tls(https, tls_b.cert, tls_a.cert, tls_a.key, NULL, NULL);
    expect_etcd_tls("", tls_a.cert, "", "", "cluster_etcd_tls_ca: needs cluster_etcd_endpoints",
                    "");
    expect_etcd_tls("https://10.0.0.1:2379,http://10.0.0.2:2379", "", tls_a.cert, tls_a.key,
                    "cluster_etcd_tls_cert: needs cluster_etcd_endpoints, every one https://",
                    "http://10.0.0.2:2379");
    expect_etcd_tls(https, "", tls_a.cert, "",
                    "cluster_etcd_tls_key: must be set with cluster_etcd_tls_cert", "");
    expect_etcd_tls(https, tls_a.cert, "", tls_a.key,
                    "cluster_etcd_tls_cert: must be set with cluster_etcd_tls_key", "");
    expect_etcd_tls(https, "/nonexistent/ca.pem", "", "",
                    "cluster_etcd_tls_ca: /nonexistent/ca.pem", "No such file");
    expect_etcd_tls(https, tls_a.dir, "", "", "cluster_etcd_tls_ca:", tls_a.dir);
    expect_etcd_tls(https, tls_a.key, "", "", "cluster_etcd_tls_ca:", "holds no PEM certificate");
    expect_etcd_tls(https, "", "/nonexistent/cert.pem", tls_a.key,
                    "cluster_etcd_tls_cert: /nonexistent/cert.pem", "No such file");
    expect_etcd_tls(https, "", tls_a.cert, "/nonexistent/key.pem",
                    "cluster_etcd_tls_key: /nonexistent/key.pem", "No such file");
    expect_etcd_tls(https, "", tls_a.key, tls_a.key,
                    "cluster_etcd_tls_cert:", "not a PEM certificate");
    expect_etcd_tls(https, "", tls_a.cert, tls_b.key,
                    "cluster_etcd_tls_key:", "does not match the certificate");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_quota_keys),
        cmocka_unit_test(test_sandbox_user),
        cmocka_unit_test(test_parse_file_text),
        cmocka_unit_test(test_parse_bad_input),
        cmocka_unit_test(test_set_and_env),
        cmocka_unit_test(test_instance_from_file_env_and_flag),
        cmocka_unit_test(test_load_file),
        cmocka_unit_test(test_finish_rules),
        cmocka_unit_test(test_cluster_keys),
        cmocka_unit_test(test_allowed_images),
        cmocka_unit_test(test_loopback_and_hostport),
        cmocka_unit_test(test_token_equal),
        cmocka_unit_test_setup_teardown(test_grpc_tls_keys, make_tls_files, remove_tls_files),
        cmocka_unit_test_setup_teardown(test_cluster_etcd_tls_keys, make_tls_files,
                                        remove_tls_files),
    };
    return moat_run_group_tests("test_config", tests, NULL, NULL);
}
