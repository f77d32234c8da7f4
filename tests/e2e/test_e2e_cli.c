/* End to end through the `moat` CLI and libmoat: real dockerd, moatd (with a
 * token) and moat-execd. */
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "moat_test.h"

#include "common/json.h"
#include "harness.h"
#include "moat/client.h"

#define TOKEN "e2e-secret-token"

static moatd_proc P;
/* This run's own ("moat-e2ecli<pid>-"), so that runs at the same time on one engine never
 * remove each other's sandboxes. */
static char prefix[48];
static char moat_bin[512];
static char session[64];
static char out_path[300], err_path[300];

static int setup(void **state)
{
    (void)state;
    snprintf(prefix, sizeof(prefix), "moat-e2ecli%d-", (int)getpid());
    docker_remove_prefixed(prefix);
    const char *build = getenv("MOAT_BUILD_DIR");
    snprintf(moat_bin, sizeof(moat_bin), "%s/src/client/moat", build != NULL ? build : ".");
    /* MOAT_SANDBOX_IMAGE: the image scripts/build-sandbox-image.sh built (default: moatd's) */
    static char image[300];
    const char *img = getenv("MOAT_SANDBOX_IMAGE");
    snprintf(image, sizeof(image), "--image=%s", img != NULL ? img : "");
    char prefix_arg[96];
    snprintf(prefix_arg, sizeof(prefix_arg), "--container_name_prefix=%s", prefix);
    const char *extra[] = {prefix_arg, "--token=" TOKEN, img != NULL && img[0] ? image : NULL,
                           NULL};
    if (!moatd_start(&P, true, extra))
        return -1;
    snprintf(out_path, sizeof(out_path), "%s/cli.out", P.state_dir);
    snprintf(err_path, sizeof(err_path), "%s/cli.err", P.state_dir);
    return 0;
}

/* The last test stops moatd and checks how it exited; here it runs only when a failure came
 * first. */
static int teardown(void **state)
{
    (void)state;
    moatd_stop(&P);
    docker_remove_prefixed(prefix);
    moatd_remove_dir(P.state_dir);
    return 0;
}

/* Runs `moat ARGS` with MOAT_ADDR and the given token (NULL: unset); stdout
 * and stderr go to files. Returns the exit status. */
static int cli(const char *token, const char *args)
{
    char cmd[4096];
    snprintf(cmd, sizeof(cmd), "MOAT_ADDR=127.0.0.1:%d %s%s%s %s %s >%s 2>%s", P.port,
             token != NULL ? "MOAT_TOKEN='" : "env -u MOAT_TOKEN", token != NULL ? token : "",
             token != NULL ? "'" : "", moat_bin, args, out_path, err_path);
    int rc = system(cmd);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

/* The output: exactly one JSON document on one line. */
static cJSON *json_out(void)
{
    char *text = slurp_file(out_path);
    char *nl = strchr(text, '\n');
    if (nl == NULL || nl[1] != '\0')
        fail_msg("not one line: %s", text);
    cJSON *j = moat_json_parse(text, strlen(text), MOAT_JSON_NUL_REJECT);
    if (j == NULL)
        fail_msg("not JSON: %s", text);
    free(text);
    return j;
}

static void test_health(void **state)
{
    (void)state;
    assert_int_equal(cli(TOKEN, "health --json"), 0);
    cJSON *j = json_out();
    assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "docker_reachable")));
    cJSON_Delete(j);
}

static void test_tokens_refused(void **state)
{
    (void)state;
    assert_int_not_equal(cli("wrong-token", "health"), 0);
    char *err = slurp_file(err_path);
    assert_non_null(strstr(err, "UNAUTHENTICATED"));
    free(err);
    assert_int_not_equal(cli(NULL, "health"), 0);
    err = slurp_file(err_path);
    assert_non_null(strstr(err, "UNAUTHENTICATED"));
    free(err);
}

static void test_create_reuse_and_new(void **state)
{
    (void)state;
    const char *chat = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d";
    char args[256];
    snprintf(args, sizeof(args), "create --chat %s --ttl 600 --json", chat);
    assert_int_equal(cli(TOKEN, args), 0);
    cJSON *j = json_out();
    assert_non_null(moat_json_str(j, "session_id", NULL));
    snprintf(session, sizeof(session), "%s", moat_json_str(j, "session_id", NULL));
    assert_int_equal(strlen(session), 36);
    cJSON_Delete(j);
    assert_int_equal(cli(TOKEN, args), 0);
    j = json_out();
    assert_string_equal(moat_json_str(j, "session_id", NULL), session);
    cJSON_Delete(j);
    snprintf(args, sizeof(args), "create --chat %s --new --json", chat);
    assert_int_equal(cli(TOKEN, args), 0);
    j = json_out();
    char other[64];
    assert_non_null(moat_json_str(j, "session_id", NULL));
    snprintf(other, sizeof(other), "%s", moat_json_str(j, "session_id", NULL));
    assert_string_not_equal(other, session);
    cJSON_Delete(j);
    snprintf(args, sizeof(args), "ls --chat %s --json", chat);
    assert_int_equal(cli(TOKEN, args), 0);
    char *text = slurp_file(out_path);
    /* one JSON document per line, one line per session */
    int found = 0, lines = 0;
    for (char *line = text, *nl; (nl = strchr(line, '\n')) != NULL; line = nl + 1) {
        cJSON *row = moat_json_parse(line, (size_t)(nl - line), MOAT_JSON_NUL_REJECT);
        assert_non_null(row);
        const char *id = moat_json_str(row, "session_id", NULL);
        assert_non_null(id);
        found += strcmp(id, session) == 0 || strcmp(id, other) == 0;
        lines++;
        cJSON_Delete(row);
    }
    assert_int_equal(found, 2);
    assert_int_equal(lines, 2);
    free(text);
    snprintf(args, sizeof(args), "stop %s", other);
    assert_int_equal(cli(TOKEN, args), 0);
}

static void test_exec_streams_and_exit_codes(void **state)
{
    (void)state;
    char args[512];
    snprintf(args, sizeof(args),
             "exec %s -- 'echo out1; echo err1 >&2; echo out2; echo err2 >&2; exit 7'", session);
    assert_int_equal(cli(TOKEN, args), 7);
    char *out = slurp_file(out_path), *err = slurp_file(err_path);
    assert_string_equal(out, "out1\nout2\n");
    assert_string_equal(err, "err1\nerr2\n");
    free(out);
    free(err);
    snprintf(args, sizeof(args), "exec %s --env GREETING=hello -- 'echo $GREETING'", session);
    assert_int_equal(cli(TOKEN, args), 0);
    out = slurp_file(out_path);
    assert_string_equal(out, "hello\n");
    free(out);
    snprintf(args, sizeof(args), "exec %s --timeout 300 -- sleep 10", session);
    assert_int_equal(cli(TOKEN, args), 124);
    /* Unknown session: an error with its status name. */
    assert_int_not_equal(cli(TOKEN, "exec 00000000-0000-4000-8000-000000000000 -- true"), 0);
    err = slurp_file(err_path);
    assert_true(strstr(err, "NOT_FOUND") != NULL || strstr(err, "FAILED_PRECONDITION") != NULL);
    free(err);
}

static void test_renew_get_cp(void **state)
{
    (void)state;
    char args[1024];
    snprintf(args, sizeof(args), "renew %s --ttl 900", session);
    int64_t before_renew = moat_time_now_ms();
    assert_int_equal(cli(TOKEN, args), 0);
    int64_t after_renew = moat_time_now_ms();
    snprintf(args, sizeof(args), "get %s --json", session);
    assert_int_equal(cli(TOKEN, args), 0);
    cJSON *j = json_out();
    int64_t expires_at_ms = 0;
    assert_true(moat_json_int(j, "expires_at_ms", &expires_at_ms));
    cJSON_Delete(j);
    /* 900 s from the moment moatd renewed it, which lies between the two readings. */
    assert_in_range(expires_at_ms, before_renew + 900000, after_renew + 900000);
    char local[300], back[300];
    snprintf(local, sizeof(local), "%s/cp-src.bin", P.state_dir);
    snprintf(back, sizeof(back), "%s/cp-back.bin", P.state_dir);
    FILE *f = fopen(local, "wb");
    for (int i = 0; i < 300000; i++)
        fputc((i * 31) & 0xff, f);
    fclose(f);
    snprintf(args, sizeof(args), "cp %s %s:/tmp/cp.bin", local, session);
    assert_int_equal(cli(TOKEN, args), 0);
    snprintf(args, sizeof(args), "cp %s:/tmp/cp.bin %s", session, back);
    assert_int_equal(cli(TOKEN, args), 0);
    char cmp[700];
    snprintf(cmp, sizeof(cmp), "cmp -s %s %s", local, back);
    assert_int_equal(system(cmp), 0);
}

/* Files larger than a frame go up in pieces (Write at offsets) and come back in
 * chunks: 5 MiB of random bytes is more than four of moatd's default 1 MiB frames. */
static void test_cp_large_and_empty(void **state)
{
    (void)state;
    char local[300], back[300], args[1024], cmp[700];
    snprintf(local, sizeof(local), "%s/cp-big.bin", P.state_dir);
    snprintf(back, sizeof(back), "%s/cp-big.back", P.state_dir);
    snprintf(cmp, sizeof(cmp), "head -c %d /dev/urandom >%s && chmod 0640 %s", 5 << 20, local,
             local);
    assert_int_equal(system(cmp), 0);
    snprintf(args, sizeof(args), "cp %s %s:/tmp/big/cp-big.bin", local, session);
    assert_int_equal(cli(TOKEN, args), 0);
    snprintf(args, sizeof(args), "exec %s -- 'stat -c \"%%s %%a\" /tmp/big/cp-big.bin'", session);
    assert_int_equal(cli(TOKEN, args), 0);
    char *out = slurp_file(out_path);
    assert_string_equal(out, "5242880 640\n");
    free(out);
    snprintf(args, sizeof(args), "cp %s:/tmp/big/cp-big.bin %s", session, back);
    assert_int_equal(cli(TOKEN, args), 0);
    snprintf(cmp, sizeof(cmp), "cmp -s %s %s", local, back);
    assert_int_equal(system(cmp), 0);
    /* a second upload over it, shorter: the file is truncated first */
    snprintf(cmp, sizeof(cmp), "head -c 1500000 %s >%s", local, back);
    assert_int_equal(system(cmp), 0);
    snprintf(args, sizeof(args), "cp %s %s:/tmp/big/cp-big.bin", back, session);
    assert_int_equal(cli(TOKEN, args), 0);
    snprintf(args, sizeof(args), "exec %s -- 'wc -c </tmp/big/cp-big.bin'", session);
    assert_int_equal(cli(TOKEN, args), 0);
    out = slurp_file(out_path);
    assert_int_equal(atoi(out), 1500000);
    free(out);

    /* an empty file is created, and comes back empty */
    char empty[300], empty_back[300];
    snprintf(empty, sizeof(empty), "%s/cp-empty", P.state_dir);
    snprintf(empty_back, sizeof(empty_back), "%s/cp-empty.back", P.state_dir);
    FILE *f = fopen(empty, "wb");
    assert_non_null(f);
    fclose(f);
    snprintf(args, sizeof(args), "cp %s %s:/tmp/cp-empty", empty, session);
    assert_int_equal(cli(TOKEN, args), 0);
    snprintf(args, sizeof(args), "exec %s -- 'test -f /tmp/cp-empty && wc -c </tmp/cp-empty'",
             session);
    assert_int_equal(cli(TOKEN, args), 0);
    out = slurp_file(out_path);
    assert_int_equal(atoi(out), 0);
    assert_true(out[0] >= '0' && out[0] <= '9');
    free(out);
    snprintf(args, sizeof(args), "cp %s:/tmp/cp-empty %s", session, empty_back);
    assert_int_equal(cli(TOKEN, args), 0);
    struct stat sb;
    assert_int_equal(stat(empty_back, &sb), 0);
    assert_int_equal(sb.st_size, 0);
    unlink(local);
    unlink(back);
    unlink(empty);
    unlink(empty_back);
}

/* A libmoat connection to this run's moatd, with its token. */
static moat_client *connect_lib(void)
{
    char addr[64];
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", P.port);
    moat_client_options o = {.token = TOKEN};
    moat_client *c = NULL;
    moat_status st;
    assert_int_equal(moat_client_connect(addr, &o, &c, &st), MOAT_OK);
    return c;
}

static void test_libmoat_run_command(void **state)
{
    (void)state;
    moat_client *c = connect_lib();
    for (int round = 0; round < 3; round++) {
        moat_run_command_req req = {.session_id = session, .command = "echo lib; exit 5"};
        uint8_t buf[512];
        size_t len = 0;
        assert_int_equal(moat_run_command_req_encode(&req, buf, sizeof(buf), &len), MOAT_OK);
        moat_call *call = NULL;
        assert_int_equal(moat_call_start(c, "/moat.v1.Exec/RunCommand", 0, NULL, 0,
                                         (moat_slice){buf, len}, &call),
                         MOAT_OK);
        moat_slice msg;
        char out[64] = "";
        size_t outn = 0;
        int code = -1;
        uint64_t seq = 0;
        while (moat_call_recv(call, 30000, &msg) == MOAT_OK) {
            moat_exec_event ev;
            assert_int_equal(moat_exec_event_decode(msg, &ev), MOAT_OK);
            assert_true(ev.sequence == seq + 1);
            seq = ev.sequence;
            if (ev.kind == MOAT_EXEC_OUTPUT && outn + ev.data.len < sizeof(out)) {
                memcpy(out + outn, ev.data.data, ev.data.len);
                outn += ev.data.len;
            }
            if (ev.kind == MOAT_EXEC_EXIT && ev.exit_known)
                code = ev.exit_code;
        }
        assert_int_equal(moat_call_status(call)->code, MOAT_CODE_OK);
        assert_int_equal(code, 5);
        assert_string_equal(out, "lib\n");
        moat_call_free(call);
    }
    moat_client_close(c);
}

/* Output of an interactive call gathered into out (cut at cap); its exit code. */
typedef struct gathered {
    char out[256];
    size_t len;
    int code;
} gathered;

static void gather(const moat_exec_event *ev, gathered *g)
{
    if (ev->kind == MOAT_EXEC_OUTPUT) {
        size_t n =
            ev->data.len < sizeof(g->out) - 1 - g->len ? ev->data.len : sizeof(g->out) - 1 - g->len;
        memcpy(g->out + g->len, ev->data.data, n);
        g->len += n;
        g->out[g->len] = '\0';
    } else if (ev->kind == MOAT_EXEC_EXIT && ev->exit_known) {
        g->code = ev->exit_code;
    }
}

/* libmoat's interactive calls against moatd: 4 MiB of stdin (four of moatd's windows) sent
 * without waiting, only as the credit moatd returns allows, while the output is read; then a
 * terminal whose size follows a resize. */
static void test_libmoat_interactive(void **state)
{
    (void)state;
    moat_client *c = connect_lib();
    moat_status st;
    moat_interactive_req req = {.session_id = session, .command = "wc -c"};
    moat_call *call = NULL;
    assert_int_equal(moat_exec_interactive(c, &req, 0, &call, &st), MOAT_OK);
    static uint8_t chunk[100000];
    memset(chunk, 'z', sizeof(chunk));
    const size_t total = 4u << 20;
    size_t sent = 0;
    bool closed = false;
    gathered g = {.code = -1};
    static moat_exec_event ev;
    moat_err err = MOAT_OK;
    while (err != MOAT_E_CLOSED) {
        if (sent < total) {
            size_t n = total - sent < sizeof(chunk) ? total - sent : sizeof(chunk);
            moat_err sent_err = moat_exec_stdin(call, (moat_slice){chunk, n}, 0);
            assert_true(sent_err == MOAT_OK || sent_err == MOAT_E_TIMEOUT);
            sent += sent_err == MOAT_OK ? n : 0;
        } else if (!closed) {
            assert_int_equal(moat_exec_close_stdin(call, -1), MOAT_OK);
            closed = true;
        }
        /* read what has come; then, without credit, wait on the connection's fd for the
         * server's next frames (a WindowUpdate, which moat_exec_next does not return) */
        while ((err = moat_exec_next(call, 0, &ev)) != MOAT_E_TIMEOUT && err != MOAT_E_CLOSED)
            if (err == MOAT_OK)
                gather(&ev, &g);
        if (err == MOAT_E_TIMEOUT && (closed || moat_call_send_window(call) < sizeof(chunk))) {
            struct pollfd pfd = {moat_client_fd(c), POLLIN, 0};
            assert_int_equal(poll(&pfd, 1, 30000), 1);
        }
    }
    assert_int_equal(moat_call_status(call)->code, MOAT_CODE_OK);
    assert_string_equal(g.out, "4194304\n");
    assert_int_equal(g.code, 0);
    moat_call_free(call);

    moat_interactive_req tty = {.session_id = session,
                                .command = "read line; stty size; exit 6",
                                .tty = true,
                                .rows = 30,
                                .cols = 90};
    assert_int_equal(moat_exec_interactive(c, &tty, 0, &call, &st), MOAT_OK);
    assert_int_equal(moat_exec_resize(call, 41, 123, -1), MOAT_OK);
    assert_int_equal(moat_exec_stdin(call, moat_slice_str("go\r"), -1), MOAT_OK);
    g = (gathered){.code = -1};
    while ((err = moat_exec_next(call, 30000, &ev)) != MOAT_E_CLOSED)
        if (err == MOAT_OK)
            gather(&ev, &g);
    assert_int_equal(moat_call_status(call)->code, MOAT_CODE_OK);
    assert_non_null(strstr(g.out, "41 123\r\n"));
    assert_int_equal(g.code, 6);
    moat_call_free(call);
    moat_client_close(c);
}

static void test_stop(void **state)
{
    (void)state;
    char args[128];
    snprintf(args, sizeof(args), "stop %s", session);
    assert_int_equal(cli(TOKEN, args), 0);
    snprintf(args, sizeof(args), "exec %s -- true", session);
    assert_int_not_equal(cli(TOKEN, args), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_health),
        cmocka_unit_test(test_tokens_refused),
        cmocka_unit_test(test_create_reuse_and_new),
        cmocka_unit_test(test_exec_streams_and_exit_codes),
        cmocka_unit_test(test_renew_get_cp),
        cmocka_unit_test(test_cp_large_and_empty),
        cmocka_unit_test(test_libmoat_run_command),
        cmocka_unit_test(test_libmoat_interactive),
        cmocka_unit_test(test_stop),
        cmocka_unit_test_prestate(test_moatd_exits_0_on_sigterm, &P),
    };
    return moat_run_group_tests("moat_cli_e2e", tests, setup, teardown);
}
