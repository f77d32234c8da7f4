/* The harness of the bridge_execd_* tests: per test, a real moat-execd in its own directory
 * and a bridge on a libuv loop talking to it over its Unix socket. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "moat_test.h"
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "execd_harness.h"

static env g_env;

/* Whether execd accepts on its socket: the file exists from bind(), connections are taken
 * only from listen() on. */
static bool execd_accepts(const char *sock)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t len = strlen(sock);
    assert_true(len < sizeof(sa.sun_path));
    memcpy(sa.sun_path, sock, len + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    bool ok = fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
    if (fd >= 0)
        close(fd);
    return ok;
}

env *env_up(const moat_bridge_config *cfg)
{
    env *e = &g_env;
    memset(e, 0, sizeof(*e));
    const char *bd = getenv("MOAT_BUILD_DIR");
    assert_non_null(bd);
    char bin[512];
    snprintf(bin, sizeof(bin), "%s/src/execd/moat-execd", bd);
    assert_int_equal(access(bin, X_OK), 0);
    char dir[] = "/tmp/moat-bridge-it-XXXXXX";
    assert_non_null(mkdtemp(dir));
    snprintf(e->dir, sizeof(e->dir), "%s", dir);
    snprintf(e->sock, sizeof(e->sock), "%s/execd.sock", dir);
    char listen[160], state[96];
    snprintf(listen, sizeof(listen), "unix:%s/execd.sock", dir);
    snprintf(state, sizeof(state), "%s/state", dir);
    assert_int_equal(mkdir(state, 0700), 0);
    e->pid = fork();
    assert_true(e->pid >= 0);
    if (e->pid == 0) {
        /* never outlive a test that failed half-way */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        setenv("TMPDIR", state, 1);
        execl(bin, bin, "--listen", listen, "--log-level", "error", (char *)NULL);
        _exit(127);
    }
    /* Ready when it accepts, as moatd waits for it (a generous bound: ASan on a busy host) */
    uint64_t until = moat_time_mono_ns() + 120ull * 1000000000ull;
    while (!execd_accepts(e->sock)) {
        if (waitpid(e->pid, NULL, WNOHANG) == e->pid) {
            e->pid = 0;
            fail_msg("moat-execd exited before it accepted on %s", e->sock);
        }
        if (moat_time_mono_ns() >= until)
            fail_msg("moat-execd does not accept on %s", e->sock);
        usleep(10000);
    }
    uv_loop_init(&e->loop);
    e->loop_ready = true;
    assert_int_equal(moat_bridge_new(cfg, &e->b), MOAT_OK);
    assert_int_equal(moat_bridge_attach_uv(e->b, &e->loop), MOAT_OK);
    e->ep.unix_socket = e->sock;
    e->ep.scope = "it";
    return e;
}

/* Takes down what env_up made, as far as it got: the bridge, execd (SIGTERM ends its commands
 * too, SIGKILL if it does not exit) and the directory. Whether all of it went cleanly. */
static bool env_release(env *e)
{
    bool ok = true;
    if (e->b != NULL)
        moat_bridge_free(e->b);
    e->b = NULL;
    if (e->loop_ready) {
        uv_run(&e->loop, UV_RUN_DEFAULT);
        ok = uv_loop_close(&e->loop) == 0;
        e->loop_ready = false;
    }
    if (e->pid > 0) {
        kill(e->pid, SIGTERM);
        pid_t got = 0;
        for (int i = 0; i < 3000 && got == 0; i++) {
            got = waitpid(e->pid, NULL, WNOHANG);
            if (got == 0)
                usleep(10000);
        }
        if (got == 0) {
            ok = false;
            kill(e->pid, SIGKILL);
            waitpid(e->pid, NULL, 0);
        }
        e->pid = 0;
    }
    if (e->dir[0] != '\0') {
        char cmd[128];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", e->dir);
        ok = system(cmd) == 0 && ok;
        e->dir[0] = '\0';
    }
    return ok;
}

void env_down(env *e)
{
    assert_true(env_release(e));
}

void assert_status_at(const moat_status *st, moat_code want, const char *file, int line)
{
    if (st->code == want)
        return;
    print_error("ERROR: status %s, reason \"%s\": %s (wanted %s)\n", moat_code_name(st->code),
                st->reason, st->message, moat_code_name(want));
    _fail(file, line);
}

void run_until(env *e, const bool *flag)
{
    uint64_t until = moat_time_mono_ns() + 300ull * 1000000000ull;
    while (!*flag) {
        assert_true(moat_time_mono_ns() < until);
        if (uv_run(&e->loop, UV_RUN_ONCE) == 0)
            usleep(1000);
    }
}

moat_bridge_exec *start(env *e, const moat_bridge_run_opts *o, collect *c, uint64_t credit)
{
    moat_bridge_consumer k = col_consumer(c);
    moat_bridge_exec *ex = NULL;
    moat_status st;
    assert_int_equal(moat_bridge_run(e->b, &e->ep, o, &k, credit, &ex, &st), MOAT_OK);
    return ex;
}

void execd_harness_init(void)
{
    moat_log_set_level(MOAT_LOG_ERROR);
    signal(SIGPIPE, SIG_IGN);
    if (getenv("BRIDGE_TEST_FILTER") != NULL)
        cmocka_set_test_filter(getenv("BRIDGE_TEST_FILTER"));
}

/* After a failed assertion too: no execd, command or directory outlives the test. */
int execd_harness_teardown(void **state)
{
    (void)state;
    return env_release(&g_env) ? 0 : -1;
}
