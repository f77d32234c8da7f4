/* libmoat following session_moved (docs/CLUSTER.md, "Routing") against fake
 * cluster nodes: real loopback listeners served by a thread of this process. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "moat_test.h"

#include "fake_cluster.h"
#include "moat/client.h"

#define SESSION "9f1c2d3e-4b5a-4c6d-8e7f-0a1b2c3d4e5f"

typedef struct fixture {
    char dir[64]; /* the CLI's output files; removed by teardown */
    fake_cluster *f;
    moat_client *c;
    int redirects; /* seen by the redirect callback */
    char last_to[64];
} fixture;

static fake_node *node(fixture *x, int i)
{
    return fake_cluster_node(x->f, i);
}

/* Node i's counters, read under the lock. */
static int calls(fixture *x, int i)
{
    fake_cluster_lock(x->f);
    int n = node(x, i)->calls;
    fake_cluster_unlock(x->f);
    return n;
}

static int conns(fixture *x, int i)
{
    fake_cluster_lock(x->f);
    int n = node(x, i)->connections;
    fake_cluster_unlock(x->f);
    return n;
}

static void moved(fixture *x, int i, const char *to)
{
    fake_cluster_lock(x->f);
    snprintf(node(x, i)->moved_to, sizeof node(x, i)->moved_to, "%s", to);
    fake_cluster_unlock(x->f);
}

static void on_redirect(const char *session, const char *from, const char *to, void *arg)
{
    fixture *x = arg;
    (void)from;
    if (strcmp(session, SESSION) == 0)
        x->redirects++;
    snprintf(x->last_to, sizeof x->last_to, "%s", to);
}

static int setup(void **state)
{
    static fixture x;
    memset(&x, 0, sizeof x);
    snprintf(x.dir, sizeof x.dir, "/tmp/moat-route-XXXXXX");
    if (mkdtemp(x.dir) == NULL)
        return -1;
    x.f = fake_cluster_start(4);
    if (x.f == NULL)
        return -1;
    moat_client_options o = {.token = "tok", .client_name = "test-route"};
    moat_status st;
    if (moat_client_connect(node(&x, 0)->addr, &o, &x.c, &st) != MOAT_OK)
        return -1;
    moat_client_on_redirect(x.c, on_redirect, &x);
    *state = &x;
    return 0;
}

static int teardown(void **state)
{
    fixture *x = *state;
    moat_client_close(x->c);
    char cmd[160];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", x->dir);
    bool removed = system(cmd) == 0;
    return fake_cluster_stop(x->f) && removed ? 0 : -1;
}

/* Stat answers with the answering node's address as the path. */
static moat_err stat(fixture *x, char *who, size_t cap, moat_status *st)
{
    moat_file_info fi;
    moat_err err = moat_file_stat(x->c, SESSION, "/f", 5000, &fi, st);
    if (err == MOAT_OK)
        moat_slice_copy(fi.path, who, cap);
    return err;
}

/* A Stat for SESSION, answered by node i. */
static void answered_by(fixture *x, int i)
{
    char who[64];
    moat_status st;
    assert_int_equal(stat(x, who, sizeof who, &st), MOAT_OK);
    assert_string_equal(who, node(x, i)->addr);
}

/* The calls nodes 0, 1 and 2 have had. */
static void calls_were(fixture *x, int n0, int n1, int n2)
{
    assert_int_equal(calls(x, 0), n0);
    assert_int_equal(calls(x, 1), n1);
    assert_int_equal(calls(x, 2), n2);
}

/* A Stat for SESSION that fails with reason. */
static void fails(fixture *x, moat_code code, const char *reason)
{
    char who[64];
    moat_status st;
    assert_int_equal(stat(x, who, sizeof who, &st), MOAT_E_REMOTE);
    assert_int_equal(st.code, code);
    assert_string_equal(st.reason, reason);
}

static void test_one_redirect_followed_and_cached(void **state)
{
    fixture *x = *state;
    moved(x, 0, node(x, 1)->addr);
    answered_by(x, 1);
    assert_int_equal(x->redirects, 1);
    /* The second call goes straight to the owner, on the same connection. */
    answered_by(x, 1);
    calls_were(x, 1, 2, 0);
    assert_int_equal(conns(x, 0), 1);
    assert_int_equal(conns(x, 1), 1);
    assert_int_equal(x->redirects, 1);
    /* Calls that name no session stay on the seed. */
    moat_health h;
    moat_status st;
    assert_int_equal(moat_health_check(x->c, 5000, &h, &st), MOAT_E_REMOTE);
    calls_were(x, 2, 2, 0);
}

static void test_two_redirects_followed(void **state)
{
    fixture *x = *state;
    moved(x, 0, node(x, 1)->addr);
    moved(x, 1, node(x, 2)->addr);
    answered_by(x, 2);
    assert_int_equal(x->redirects, 2);
    answered_by(x, 2);
    calls_were(x, 1, 1, 2);
}

static void test_stale_cache_meets_a_move(void **state)
{
    fixture *x = *state;
    moved(x, 0, node(x, 1)->addr);
    answered_by(x, 1);
    /* The session moves on: the cached owner redirects, and that is followed. */
    moved(x, 1, node(x, 2)->addr);
    answered_by(x, 2);
    answered_by(x, 2);
    calls_were(x, 1, 2, 2);
}

static void test_third_redirect_is_a_loop(void **state)
{
    fixture *x = *state;
    moved(x, 0, node(x, 1)->addr);
    moved(x, 1, node(x, 0)->addr);
    fails(x, MOAT_CODE_UNAVAILABLE, "redirect_loop");
    calls_were(x, 2, 1, 0);
    /* Three distinct nodes, a fourth never asked. */
    moved(x, 1, node(x, 2)->addr);
    moved(x, 2, node(x, 3)->addr);
    fails(x, MOAT_CODE_UNAVAILABLE, "redirect_loop");
    assert_int_equal(calls(x, 3), 0);
}

static void test_owner_refusing_is_dropped(void **state)
{
    fixture *x = *state;
    moved(x, 0, node(x, 1)->addr);
    answered_by(x, 1);
    fake_cluster_down(x->f, 1);
    moved(x, 0, ""); /* the seed holds it now */
    answered_by(x, 0);
    calls_were(x, 2, 1, 0);
    /* Dropped from the cache: the next call goes to the seed without trying the owner. */
    answered_by(x, 0);
    calls_were(x, 3, 1, 0);
    assert_int_equal(conns(x, 0), 1);
    /* A redirect to an owner that refuses: the call fails with why, nothing is cached. */
    moved(x, 0, node(x, 1)->addr);
    fails(x, MOAT_CODE_UNAVAILABLE, "connect_failed");
    moved(x, 0, "");
    answered_by(x, 0);
}

static void test_garbage_owner_address(void **state)
{
    fixture *x = *state;
    /* The last one too long: 300 bytes of a host name. */
    static char longer[320];
    memset(longer, 'a', 300);
    memcpy(longer + 300, ":7070", 6);
    const char *bad[] = {
        "no-port",   "127.0.0.1:", "127.0.0.1:0",    "127.0.0.1:65536",
        ":7070",     "host:70x",   "a b:7070",       "unix:/tmp/sock",
        "[::1:7070", "h\x01:1",    "1.2.3.4:123456", longer,
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        moved(x, 0, bad[i]);
        fails(x, MOAT_CODE_INTERNAL, "bad_redirect");
    }
    assert_int_equal(x->redirects, 0);
    /* The client is whole: the next call works. */
    moved(x, 0, "");
    answered_by(x, 0);
}

/* Reads an Exec stream to its End, which must be OK: its output (the last
 * output event's) into out; returns the number of events. */
static int read_to_end(moat_call *call, char *out, size_t cap)
{
    moat_exec_event ev;
    moat_err err;
    int events = 0;
    out[0] = '\0';
    while ((err = moat_exec_next(call, 5000, &ev)) == MOAT_OK) {
        events++;
        if (ev.kind == MOAT_EXEC_OUTPUT)
            moat_slice_copy(ev.data, out, cap);
    }
    assert_int_equal(err, MOAT_E_CLOSED);
    assert_int_equal(moat_call_status(call)->code, MOAT_CODE_OK);
    return events;
}

static void test_exec_stream_redirected(void **state)
{
    fixture *x = *state;
    moved(x, 0, node(x, 1)->addr);
    moat_run_command_req r = {.session_id = SESSION, .command = "hostname"};
    moat_call *call;
    moat_status st;
    assert_int_equal(moat_exec_run(x->c, &r, 5000, &call, &st), MOAT_OK);
    /* Another typed call between start and read (redirected too): the stream's
     * request, which that call's encoding overwrote, was copied. */
    assert_int_equal(moat_file_stat(x->c, "other-session", "/f", 5000, &(moat_file_info){0}, &st),
                     MOAT_OK);
    char out[64];
    assert_int_equal(read_to_end(call, out, sizeof out), 3);
    assert_string_equal(out, node(x, 1)->addr);
    assert_int_not_equal(moat_call_fd(call), moat_client_fd(x->c));
    moat_call_free(call);
    answered_by(x, 1);
}

static void test_interactive_input_follows(void **state)
{
    fixture *x = *state;
    moved(x, 0, node(x, 1)->addr);
    moat_interactive_req r = {.session_id = SESSION, .command = "cat"};
    moat_call *call;
    moat_status st;
    assert_int_equal(moat_exec_interactive(x->c, &r, 5000, &call, &st), MOAT_OK);
    /* Sent before the redirect is read: it goes to the owner with the start. */
    assert_int_equal(moat_exec_stdin(call, moat_slice_str("typed early"), 5000), MOAT_OK);
    char out[64];
    assert_int_equal(read_to_end(call, out, sizeof out), 3);
    assert_string_equal(out, "typed early");
    moat_call_free(call);
    fake_cluster_lock(x->f);
    assert_int_equal(node(x, 1)->messages, 2);
    assert_string_equal(node(x, 1)->last_stdin, "typed early");
    fake_cluster_unlock(x->f);
}

static void test_create_names_the_owner(void **state)
{
    fixture *x = *state;
    fake_cluster_lock(x->f);
    snprintf(node(x, 0)->create_owner, sizeof node(x, 0)->create_owner, "%s", node(x, 2)->addr);
    fake_cluster_unlock(x->f);
    moat_session_create_req r = {.chat_id = "123e4567-e89b-12d3-a456-426614174000"};
    moat_session s;
    moat_status st;
    assert_int_equal(moat_session_create(x->c, &r, 5000, &s, &st), MOAT_OK);
    char who[64];
    assert_int_equal(stat(x, who, sizeof who, &st), MOAT_OK);
    assert_string_equal(who, node(x, 2)->addr);
    assert_int_equal(calls(x, 0), 1);
    assert_int_equal(calls(x, 2), 1);
    assert_int_equal(x->redirects, 0);
}

static void test_deadline_covers_the_hops(void **state)
{
    fixture *x = *state;
    moved(x, 0, node(x, 1)->addr);
    fake_cluster_lock(x->f);
    node(x, 1)->hang = true;
    fake_cluster_unlock(x->f);
    moat_file_info fi;
    moat_status st;
    assert_int_equal(moat_file_stat(x->c, SESSION, "/f", 300, &fi, &st), MOAT_E_REMOTE);
    assert_int_equal(st.code, MOAT_CODE_DEADLINE_EXCEEDED);
    fake_cluster_lock(x->f);
    uint64_t second = node(x, 1)->last_deadline_ms;
    uint64_t first = node(x, 0)->last_deadline_ms;
    fake_cluster_unlock(x->f);
    /* The owner got what was left of the call's one deadline, not a new one. */
    assert_int_equal(first, 300);
    assert_true(second > 0 && second <= first);
}

static void test_cache_is_bounded(void **state)
{
    fixture *x = *state;
    moved(x, 0, node(x, 1)->addr);
    moat_file_info fi;
    moat_status st;
    char id[32];
    /* 1,100 sessions followed: more than the 1,024 owners a client keeps. */
    for (int i = 0; i < 1100; i++) {
        snprintf(id, sizeof id, "sess-%04d", i);
        assert_int_equal(moat_file_stat(x->c, id, "/f", 5000, &fi, &st), MOAT_OK);
    }
    assert_int_equal(calls(x, 0), 1100);
    /* The newest is still known; the oldest was evicted, and asks the seed again. */
    assert_int_equal(moat_file_stat(x->c, "sess-1099", "/f", 5000, &fi, &st), MOAT_OK);
    assert_int_equal(calls(x, 0), 1100);
    assert_int_equal(moat_file_stat(x->c, "sess-0000", "/f", 5000, &fi, &st), MOAT_OK);
    assert_int_equal(calls(x, 0), 1101);
    assert_int_equal(conns(x, 1), 1);
}

/* Nine owners (three nodes, each by three spellings of 127.0.0.1), more than the cache's first
 * four slots and its next eight: each session's owner is kept as the cache grows, and the
 * session's next call goes straight to it. */
static void test_cache_grows(void **state)
{
    fixture *x = *state;
    const char *hosts[] = {"127.0.0.1", "127.1", "127.0.1"};
    enum { OWNERS = 9 };
    char id[OWNERS][32];
    moat_file_info fi;
    moat_status st;
    for (int k = 0; k < OWNERS; k++) {
        snprintf(id[k], sizeof id[k], "grow-%d", k);
        char to[64];
        snprintf(to, sizeof to, "%s:%d", hosts[k / 3], node(x, 1 + k % 3)->port);
        moved(x, 0, to);
        assert_int_equal(moat_file_stat(x->c, id[k], "/f", 5000, &fi, &st), MOAT_OK);
        assert_string_equal(x->last_to, to);
    }
    moved(x, 0, "");
    int seed = calls(x, 0), owners = calls(x, 1) + calls(x, 2) + calls(x, 3);
    for (int k = 0; k < OWNERS; k++)
        assert_int_equal(moat_file_stat(x->c, id[k], "/f", 5000, &fi, &st), MOAT_OK);
    assert_int_equal(calls(x, 0), seed);
    assert_int_equal(calls(x, 1) + calls(x, 2) + calls(x, 3), owners + OWNERS);
}

/* Runs the CLI through sh, input on its stdin; its stdout and stderr in out and err. */
static int cli(fixture *x, const char *input, const char *args, char *out, char *err, size_t cap)
{
    char cmd[1024], path[2][128];
    snprintf(path[0], sizeof path[0], "%s/out", x->dir);
    snprintf(path[1], sizeof path[1], "%s/err", x->dir);
    snprintf(cmd, sizeof cmd, "printf '%s' | MOAT_TOKEN=tok %s %s >'%s' 2>'%s'", input,
             MOAT_CLI_PATH, args, path[0], path[1]);
    int rc = system(cmd);
    char *bufs[2] = {out, err};
    for (int i = 0; i < 2; i++) {
        FILE *fp = fopen(path[i], "r");
        size_t n = fp ? fread(bufs[i], 1, cap - 1, fp) : 0;
        bufs[i][n] = '\0';
        if (fp)
            fclose(fp);
    }
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

static void test_cli_follows(void **state)
{
    fixture *x = *state;
    moved(x, 0, node(x, 1)->addr);
    char args[256], out[512], err[512];
    snprintf(args, sizeof args, "--addr %s exec " SESSION " -- hostname", node(x, 0)->addr);
    assert_int_equal(cli(x, "", args, out, err, sizeof out), 0);
    assert_string_equal(out, node(x, 1)->addr);
    assert_string_equal(err, ""); /* nothing extra without --verbose */
    snprintf(args, sizeof args, "--addr %s --verbose exec " SESSION " -- hostname",
             node(x, 0)->addr);
    assert_int_equal(cli(x, "", args, out, err, sizeof out), 0);
    assert_string_equal(out, node(x, 1)->addr);
    assert_non_null(strstr(err, "is at"));
    assert_non_null(strstr(err, node(x, 1)->addr));
    /* -i: input read before the redirect goes to the owner, and its output comes back. */
    snprintf(args, sizeof args, "--addr %s exec -i " SESSION " -- cat", node(x, 0)->addr);
    assert_int_equal(cli(x, "typed\n", args, out, err, sizeof out), 0);
    assert_string_equal(out, "typed\n");
    fake_cluster_lock(x->f);
    int owner_calls = node(x, 1)->calls;
    fake_cluster_unlock(x->f);
    assert_int_equal(owner_calls, 3);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_one_redirect_followed_and_cached, setup, teardown),
        cmocka_unit_test_setup_teardown(test_two_redirects_followed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stale_cache_meets_a_move, setup, teardown),
        cmocka_unit_test_setup_teardown(test_third_redirect_is_a_loop, setup, teardown),
        cmocka_unit_test_setup_teardown(test_owner_refusing_is_dropped, setup, teardown),
        cmocka_unit_test_setup_teardown(test_garbage_owner_address, setup, teardown),
        cmocka_unit_test_setup_teardown(test_exec_stream_redirected, setup, teardown),
        cmocka_unit_test_setup_teardown(test_interactive_input_follows, setup, teardown),
        cmocka_unit_test_setup_teardown(test_create_names_the_owner, setup, teardown),
        cmocka_unit_test_setup_teardown(test_deadline_covers_the_hops, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cache_grows, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cache_is_bounded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cli_follows, setup, teardown),
    };
    return moat_run_group_tests("route", tests, NULL, NULL);
}
