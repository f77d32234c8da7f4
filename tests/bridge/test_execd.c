/* The bridge against the real moat-execd binary (label integration): output
 * order, stderr apart, exit codes, binary bytes, interrupt, a paused consumer
 * holding a 1 GB stream with flat memory, Attach after a dropped consumer,
 * bash sessions, background status and logs, the file calls, and a terminal's stdin EOF. */
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
#include <uv.h>

#include "bridge/terminal.h"
#include "collect.h"

/* One test's moat-execd, its directory and the bridge talking to it. It lives outside the
 * test's stack frame so that the teardown can take it down after an assertion failed. */
typedef struct env {
    bool loop_ready;
    uv_loop_t loop;
    moat_bridge *b;
    moat_bridge_endpoint ep;
    pid_t pid;
    char dir[64];
    char sock[128];
} env;

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

static env *env_up(const moat_bridge_config *cfg)
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

static void env_down(env *e)
{
    assert_true(env_release(e));
}

/* A status that is not the one wanted fails with its code, reason and message, which say why
 * (execd_unreachable, execd_silent, ...), at the caller's line. */
#define assert_status(st, want) assert_status_at((st), (want), __FILE__, __LINE__)
static void assert_status_at(const moat_status *st, moat_code want, const char *file, int line)
{
    if (st->code == want)
        return;
    print_error("ERROR: status %s, reason \"%s\": %s (wanted %s)\n", moat_code_name(st->code),
                st->reason, st->message, moat_code_name(want));
    _fail(file, line);
}

static void run_until(env *e, const bool *flag)
{
    uint64_t until = moat_time_mono_ns() + 300ull * 1000000000ull;
    while (!*flag) {
        assert_true(moat_time_mono_ns() < until);
        if (uv_run(&e->loop, UV_RUN_ONCE) == 0)
            usleep(1000);
    }
}

static moat_bridge_exec *start(env *e, const moat_bridge_run_opts *o, collect *c, uint64_t credit)
{
    moat_bridge_consumer k = col_consumer(c);
    moat_bridge_exec *ex = NULL;
    moat_status st;
    assert_int_equal(moat_bridge_run(e->b, &e->ep, o, &k, credit, &ex, &st), MOAT_OK);
    return ex;
}

static void run_cmd(env *e, const char *cmd, collect *c)
{
    col_init(c);
    moat_bridge_run_opts o = {.command = cmd};
    start(e, &o, c, UINT64_MAX);
    run_until(e, &c->ended);
    assert_status(&c->end, MOAT_CODE_OK);
}

static long rss_kib(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kib = -1;
    while (f != NULL && fgets(line, sizeof(line), f))
        if (sscanf(line, "VmRSS: %ld", &kib) == 1)
            break;
    if (f != NULL)
        fclose(f);
    return kib;
}

static void test_order_streams_and_exit(void **state)
{
    (void)state;
    env *e = env_up(NULL);
    collect c;
    run_cmd(e, "for i in $(seq 1 3000); do echo o$i; echo e$i >&2; done", &c);
    assert_false(c.seq_gap);
    assert_int_equal(c.ev[0].kind, MOAT_BRIDGE_EV_INIT);
    assert_true(c.ev[0].len > 0);
    const col_event *x = &c.ev[c.n - 1];
    assert_int_equal(x->kind, MOAT_BRIDGE_EV_EXIT);
    assert_true(x->known);
    assert_int_equal(x->code, 0);
    /* each stream in order and apart */
    char want[32];
    size_t o = 0, r = 0;
    for (int i = 1; i <= 3000; i++) {
        int n = snprintf(want, sizeof(want), "o%d\n", i);
        assert_memory_equal(c.out[1] + o, want, (size_t)n);
        o += (size_t)n;
        n = snprintf(want, sizeof(want), "e%d\n", i);
        assert_memory_equal(c.out[2] + r, want, (size_t)n);
        r += (size_t)n;
    }
    assert_int_equal(c.out_len[1], o);
    assert_int_equal(c.out_len[2], r);
    col_free(&c);

    run_cmd(e, "echo bye; exit 3", &c);
    assert_true(c.ev[c.n - 1].known);
    assert_int_equal(c.ev[c.n - 1].code, 3);
    assert_string_equal(col_find(&c, MOAT_BRIDGE_EV_ERROR)->text, "3");
    col_free(&c);

    run_cmd(e, "kill -9 $$", &c);
    assert_true(c.ev[c.n - 1].known);
    assert_int_equal(c.ev[c.n - 1].code, -1);
    col_free(&c);

    /* binary-safe: NUL, invalid UTF-8, no trailing newline */
    run_cmd(e, "printf 'a\\000b\\377\\n\\n'; printf z", &c);
    assert_int_equal(c.out_len[1], 7);
    assert_memory_equal(c.out[1], "a\0b\377\n\nz", 7);
    col_free(&c);
    env_down(e);
}

typedef struct intr {
    bool done;
    moat_status st;
} intr;

static void on_intr(void *ud, const moat_status *st)
{
    intr *i = ud;
    i->st = *st;
    i->done = true;
}

static void test_interrupt(void **state)
{
    (void)state;
    env *e = env_up(NULL);
    collect c;
    col_init(&c);
    moat_bridge_run_opts o = {.command = "echo started; sleep 60"};
    moat_bridge_exec *ex = start(e, &o, &c, UINT64_MAX);
    while (c.out_len[1] == 0)
        uv_run(&e->loop, UV_RUN_ONCE);
    intr i = {0};
    moat_status st;
    assert_int_equal(moat_bridge_interrupt(e->b, &e->ep, moat_bridge_exec_id(ex), on_intr, &i, &st),
                     MOAT_OK);
    run_until(e, &i.done);
    assert_status(&i.st, MOAT_CODE_OK);
    run_until(e, &c.ended);
    assert_status(&c.end, MOAT_CODE_OK);
    const col_event *x = &c.ev[c.n - 1];
    assert_int_equal(x->kind, MOAT_BRIDGE_EV_EXIT);
    assert_true(x->known);
    assert_int_not_equal(x->code, 0);
    assert_false(x->timed_out);
    col_free(&c);
    env_down(e);
}

/* The exit event of a run with a timeout. */
static const col_event *run_timed(env *e, const char *cmd, uint64_t timeout_ms, collect *c)
{
    col_init(c);
    moat_bridge_run_opts o = {.command = cmd, .timeout_ms = timeout_ms};
    start(e, &o, c, UINT64_MAX);
    run_until(e, &c->ended);
    assert_status(&c->end, MOAT_CODE_OK);
    const col_event *x = &c->ev[c->n - 1];
    assert_int_equal(x->kind, MOAT_BRIDGE_EV_EXIT);
    return x;
}

/* timed_out says what execd saw: its timeout, not any signal under a timeout.
 * The timeout bounds the whole process group, also what the command left
 * behind when it ended first. */
static void test_timeout_cause_and_leftovers(void **state)
{
    (void)state;
    env *e = env_up(NULL);
    collect c;
    const col_event *x = run_timed(e, "sleep 20", 300, &c);
    assert_true(x->known);
    assert_int_equal(x->code, -1);
    assert_true(x->timed_out);
    col_free(&c);

    x = run_timed(e, "kill -KILL $$", 60000, &c);
    assert_true(x->known);
    assert_int_equal(x->code, -1);
    assert_false(x->timed_out);
    col_free(&c);

    /* The leader ends at once (exit 0); its background child stays in its group. */
    x = run_timed(e, "sleep 1000 & echo $!", 500, &c);
    assert_true(x->known);
    assert_int_equal(x->code, 0);
    assert_false(x->timed_out);
    char pid[32];
    assert_true(c.out_len[1] > 0 && c.out_len[1] < sizeof(pid));
    memcpy(pid, c.out[1], c.out_len[1]);
    pid[c.out_len[1]] = '\0';
    col_free(&c);
    int left = atoi(pid);
    assert_true(left > 0);
    /* Killed at the deadline and reaped by execd (its subreaper). */
    bool gone = false;
    for (int i = 0; i < 3000 && !gone; i++) {
        gone = kill(left, 0) != 0;
        if (!gone)
            usleep(10000);
    }
    assert_true(gone);
    env_down(e);
}

/* Checks `yes` output incrementally: "y\n" repeated. */
typedef struct yes_check {
    collect c;
    uint64_t bytes;
    bool bad;
} yes_check;

static void yes_event(void *ud, moat_bridge_exec *ex, const moat_bridge_event *ev)
{
    yes_check *y = ud;
    if (ev->kind == MOAT_BRIDGE_EV_OUTPUT) {
        for (size_t i = 0; i < ev->u.output.len; i++)
            if (ev->u.output.data[i] != ((y->bytes + i) % 2 ? '\n' : 'y'))
                y->bad = true;
        y->bytes += ev->u.output.len;
        if (ev->u.output.stream != MOAT_BRIDGE_STDOUT)
            y->bad = true;
    }
    col_add(&y->c, ev);
    moat_bridge_exec_credit(ex, moat_bridge_event_cost(ev));
}

static void yes_end(void *ud, moat_bridge_exec *ex, const moat_status *st)
{
    col_on_end(&((yes_check *)ud)->c, ex, st);
}

static void test_paused_1gb_stream(void **state)
{
    (void)state;
    const uint64_t total = 1000000000ull;
    env *e = env_up(NULL);
    yes_check y;
    memset(&y, 0, sizeof(y));
    col_init(&y.c);
    y.c.keep_events = false;
    y.c.out_max = 0;
    moat_bridge_consumer k = {yes_event, yes_end, &y, NULL};
    moat_bridge_run_opts o = {.command = "yes | head -c 1000000000"};
    moat_bridge_exec *ex = NULL;
    moat_status st;
    assert_int_equal(moat_bridge_run(e->b, &e->ep, &o, &k, 0, &ex, &st), MOAT_OK);
    moat_bridge_exec_stats s;
    do {
        uv_run(&e->loop, UV_RUN_ONCE);
        moat_bridge_exec_get_stats(ex, &s);
    } while (!s.paused);
    long rss0 = rss_kib();
    /* paused well past the point where 1 GB could have streamed: the
     * transfer stays paused and memory flat */
    uint64_t until = moat_time_mono_ns() + 3000000000ull;
    while (moat_time_mono_ns() < until) {
        uv_run(&e->loop, UV_RUN_NOWAIT);
        usleep(20000);
    }
    moat_bridge_exec_get_stats(ex, &s);
    long rss1 = rss_kib();
    assert_true(s.paused);
    assert_false(s.finished);
    assert_int_equal(y.c.events, 0);
    assert_true(s.ring_bytes <= (4u << 20) + 2 * MOAT_BRIDGE_MAX_EVENT_COST);
    if (MOAT_TEST_RSS_MEANINGFUL)
        assert_true(rss1 - rss0 < 16 * 1024);
    else
        moat_skip_note("RSS bounds not checked under ASan (its quarantine keeps freed memory)");
    /* credit flows back per event from here on */
    long rss_max = rss1;
    moat_bridge_exec_credit(ex, 4 * MOAT_BRIDGE_MAX_EVENT_COST);
    uint64_t next_probe = 0;
    while (!y.c.ended) {
        uv_run(&e->loop, UV_RUN_ONCE);
        if (y.bytes >= next_probe) {
            long r = rss_kib();
            if (r > rss_max)
                rss_max = r;
            next_probe = y.bytes + (64u << 20);
        }
    }
    assert_status(&y.c.end, MOAT_CODE_OK);
    assert_int_equal(y.bytes, total);
    assert_false(y.bad);
    assert_false(y.c.seq_gap);
    const col_event *x = &y.c.ev[y.c.n - 1];
    assert_int_equal(x->kind, MOAT_BRIDGE_EV_EXIT);
    assert_true(x->known);
    assert_int_equal(x->code, 0);
    if (MOAT_TEST_RSS_MEANINGFUL)
        assert_true(rss_max - rss0 < 32 * 1024);
    print_message("1 GB stream: rss before %ld KiB, paused %ld KiB, max while draining %ld KiB\n",
                  rss0, rss1, rss_max);
    col_free(&y.c);
    env_down(e);
}

static void test_attach_after_drop(void **state)
{
    (void)state;
    env *e = env_up(NULL);
    collect a;
    col_init(&a);
    moat_bridge_run_opts o = {
        .command = "for i in $(seq 1 60); do echo l$i; sleep 0.01; done; echo err >&2; exit 5"};
    moat_bridge_exec *ex = start(e, &o, &a, UINT64_MAX);
    while (a.out_len[1] < 12)
        uv_run(&e->loop, UV_RUN_ONCE);
    uint64_t seen = a.last_seq;
    char id[128];
    snprintf(id, sizeof(id), "%s", moat_bridge_exec_id(ex));
    moat_bridge_exec_detach(ex);
    moat_bridge_exec_stats s;
    do {
        uv_run(&e->loop, UV_RUN_ONCE);
        moat_bridge_exec_get_stats(ex, &s);
    } while (!s.finished);
    collect b;
    col_init(&b);
    moat_bridge_consumer k = col_consumer(&b);
    moat_bridge_exec *ex2 = NULL;
    moat_status st;
    assert_int_equal(moat_bridge_attach(e->b, "it", id, seen, &k, UINT64_MAX, &ex2, &st), MOAT_OK);
    run_until(e, &b.ended);
    assert_int_equal(b.ev[0].seq, seen + 1);
    assert_false(b.seq_gap);
    /* the two consumers together saw every byte exactly once */
    size_t n = a.out_len[1] + b.out_len[1];
    char *all = malloc(n + 1);
    memcpy(all, a.out[1], a.out_len[1]);
    memcpy(all + a.out_len[1], b.out[1], b.out_len[1]);
    all[n] = '\0';
    char want[1024] = "";
    for (int i = 1; i <= 60; i++)
        snprintf(want + strlen(want), sizeof(want) - strlen(want), "l%d\n", i);
    assert_string_equal(all, want);
    free(all);
    assert_int_equal(b.out_len[2], 4);
    assert_int_equal(b.ev[b.n - 1].code, 5);
    col_free(&a);
    col_free(&b);
    env_down(e);
}

typedef struct sres {
    bool done;
    moat_status st;
    char text[256];
    moat_bridge_cmd_status cs;
    uint64_t next;
    moat_bridge_file_info fi;
    size_t count;
} sres;

static void s_done(void *ud, const moat_status *st)
{
    sres *r = ud;
    r->st = *st;
    r->done = true;
}

static void s_session(void *ud, const moat_status *st, const char *id)
{
    snprintf(((sres *)ud)->text, 256, "%s", id ? id : "");
    s_done(ud, st);
}

static void s_status(void *ud, const moat_status *st, const moat_bridge_cmd_status *cs)
{
    sres *r = ud;
    if (cs != NULL)
        r->cs = *cs;
    r->cs.execution_id = r->cs.content = r->cs.error = NULL;
    s_done(ud, st);
}

static void s_logs(void *ud, const moat_status *st, const uint8_t *d, size_t n, uint64_t next)
{
    sres *r = ud;
    snprintf(r->text, sizeof(r->text), "%.*s", (int)n, d ? (const char *)d : "");
    r->next = next;
    s_done(ud, st);
}

static void s_stat(void *ud, const moat_status *st, const moat_bridge_file_info *fi)
{
    sres *r = ud;
    if (fi != NULL) {
        r->fi = *fi;
        snprintf(r->text, sizeof(r->text), "%s", fi->path);
        r->fi.path = r->fi.owner = r->fi.group = NULL;
    }
    s_done(ud, st);
}

static void s_list(void *ud, const moat_status *st, const moat_bridge_file_info *fi, size_t n)
{
    sres *r = ud;
    r->count = n;
    r->text[0] = '\0';
    for (size_t i = 0; i < n; i++)
        snprintf(r->text + strlen(r->text), sizeof(r->text) - strlen(r->text), "%s,",
                 strrchr(fi[i].path, '/') + 1);
    s_done(ud, st);
}

static void test_sessions_background(void **state)
{
    (void)state;
    env *e = env_up(NULL);
    moat_status st;
    sres r = {0};
    assert_int_equal(moat_bridge_create_session(e->b, &e->ep, "/tmp", s_session, &r, &st), MOAT_OK);
    run_until(e, &r.done);
    assert_status(&r.st, MOAT_CODE_OK);
    char sid[256];
    snprintf(sid, sizeof(sid), "%s", r.text);
    assert_true(strlen(sid) > 0);

    collect c;
    col_init(&c);
    moat_bridge_run_opts o = {.command = "export MOAT_A=42; cd /", .session_id = sid};
    start(e, &o, &c, UINT64_MAX);
    run_until(e, &c.ended);
    assert_int_equal(c.ev[c.n - 1].code, 0);
    col_free(&c);
    col_init(&c);
    o.command = "echo $MOAT_A; pwd; exit 2";
    start(e, &o, &c, UINT64_MAX);
    run_until(e, &c.ended);
    assert_non_null(c.out[1]);
    assert_true(c.out_len[1] >= 5);
    assert_memory_equal(c.out[1], "42\n/\n", 5);
    assert_true(c.ev[c.n - 1].known);
    assert_int_equal(c.ev[c.n - 1].code, 2);
    col_free(&c);

    memset(&r, 0, sizeof(r));
    assert_int_equal(moat_bridge_delete_session(e->b, &e->ep, sid, s_done, &r, &st), MOAT_OK);
    run_until(e, &r.done);
    assert_status(&r.st, MOAT_CODE_OK);

    /* background: the stream ends at once; status and logs tell the rest */
    col_init(&c);
    moat_bridge_run_opts bg = {.command = "echo bg-out; sleep 0.2; exit 4", .background = true};
    moat_bridge_exec *ex = start(e, &bg, &c, UINT64_MAX);
    run_until(e, &c.ended);
    assert_false(c.ev[c.n - 1].known);
    char id[128];
    snprintf(id, sizeof(id), "%s", moat_bridge_exec_id(ex));
    col_free(&c);
    for (int i = 0; i < 300; i++) {
        memset(&r, 0, sizeof(r));
        assert_int_equal(moat_bridge_command_status(e->b, &e->ep, id, s_status, &r, &st), MOAT_OK);
        run_until(e, &r.done);
        assert_status(&r.st, MOAT_CODE_OK);
        if (!r.cs.running)
            break;
        usleep(20000);
    }
    assert_false(r.cs.running);
    assert_true(r.cs.exit_known);
    assert_int_equal(r.cs.exit_code, 4);
    memset(&r, 0, sizeof(r));
    assert_int_equal(moat_bridge_command_logs(e->b, &e->ep, id, 0, s_logs, &r, &st), MOAT_OK);
    run_until(e, &r.done);
    assert_status(&r.st, MOAT_CODE_OK);
    assert_string_equal(r.text, "bg-out\n");
    assert_int_equal(r.next, 7);
    env_down(e);
}

typedef struct xfer_res {
    bool done;
    moat_status st;
    uint64_t written, sent, total;
    uint8_t *data;
    size_t len;
} xfer_res;

static size_t up_read(void *ud, moat_bridge_xfer *x, uint8_t *buf, size_t cap)
{
    (void)x;
    xfer_res *r = ud;
    size_t n = r->total - r->sent < cap ? (size_t)(r->total - r->sent) : cap;
    for (size_t i = 0; i < n; i++)
        buf[i] = (uint8_t)((r->sent + i) * 7);
    r->sent += n;
    return n;
}

static void up_done(void *ud, moat_bridge_xfer *x, const moat_status *st, uint64_t w)
{
    (void)x;
    xfer_res *r = ud;
    r->st = *st;
    r->written = w;
    r->done = true;
}

static bool dl_chunk(void *ud, moat_bridge_xfer *x, uint64_t off, const uint8_t *d, size_t n)
{
    (void)x;
    (void)off;
    xfer_res *r = ud;
    r->data = realloc(r->data, r->len + n);
    memcpy(r->data + r->len, d, n);
    r->len += n;
    return true;
}

static void dl_done(void *ud, moat_bridge_xfer *x, const moat_status *st)
{
    (void)x;
    xfer_res *r = ud;
    r->st = *st;
    r->done = true;
}

static void test_files(void **state)
{
    (void)state;
    env *e = env_up(NULL);
    char root[128], file[160], moved[160];
    snprintf(root, sizeof(root), "%s/files", e->dir);
    snprintf(file, sizeof(file), "%s/sub/f.bin", root);
    snprintf(moved, sizeof(moved), "%s/g.bin", root);
    moat_status st;
    sres r = {0};
    assert_int_equal(moat_bridge_mkdir(e->b, &e->ep, root, 0750, s_done, &r, &st), MOAT_OK);
    run_until(e, &r.done);
    assert_status(&r.st, MOAT_CODE_OK);

    xfer_res u = {.total = 300000};
    moat_bridge_upload_cbs ucb = {up_read, up_done, &u};
    moat_bridge_xfer *x = NULL;
    assert_int_equal(moat_bridge_upload(e->b, &e->ep, file, 0640, NULL, NULL, &ucb, &x, &st),
                     MOAT_OK);
    run_until(e, &u.done);
    assert_status(&u.st, MOAT_CODE_OK);
    assert_int_equal(u.written, 300000);

    memset(&r, 0, sizeof(r));
    assert_int_equal(moat_bridge_stat(e->b, &e->ep, file, s_stat, &r, &st), MOAT_OK);
    run_until(e, &r.done);
    assert_status(&r.st, MOAT_CODE_OK);
    assert_int_equal(r.fi.size, 300000);
    assert_int_equal(r.fi.type, MOAT_BRIDGE_FILE_REGULAR);
    assert_int_equal(r.fi.mode, 0640);

    xfer_res d = {0};
    moat_bridge_download_cbs dcb = {dl_chunk, dl_done, &d};
    assert_int_equal(moat_bridge_download(e->b, &e->ep, file, 1000, 70000, &dcb, &x, &st), MOAT_OK);
    run_until(e, &d.done);
    assert_status(&d.st, MOAT_CODE_OK);
    assert_int_equal(d.len, 70000);
    for (size_t i = 0; i < d.len; i++)
        assert_int_equal(d.data[i], (uint8_t)((i + 1000) * 7));
    free(d.data);

    /* offset writes: the file grows past a hole, keeps its mode and its other bytes */
    xfer_res w = {.total = 5000};
    moat_bridge_upload_cbs wcb = {up_read, up_done, &w};
    assert_int_equal(moat_bridge_write_at(e->b, &e->ep, file, 400000, &wcb, &x, &st), MOAT_OK);
    run_until(e, &w.done);
    assert_status(&w.st, MOAT_CODE_OK);
    assert_int_equal(w.written, 5000);
    struct stat fsb;
    assert_int_equal(stat(file, &fsb), 0);
    assert_int_equal(fsb.st_size, 405000);
    assert_int_equal(fsb.st_mode & 0777, 0640);
    memset(&d, 0, sizeof(d));
    assert_int_equal(moat_bridge_download(e->b, &e->ep, file, 299990, 0, &dcb, &x, &st), MOAT_OK);
    run_until(e, &d.done);
    assert_status(&d.st, MOAT_CODE_OK);
    assert_int_equal(d.len, 105010);
    for (size_t i = 0; i < d.len; i++) {
        uint64_t at = 299990 + i;
        uint8_t want = at < 300000   ? (uint8_t)(at * 7)
                       : at < 400000 ? 0
                                     : (uint8_t)((at - 400000) * 7);
        assert_int_equal(d.data[i], want);
    }
    free(d.data);
    /* a missing file at an offset is NOT_FOUND, and is not created */
    char missing[200];
    snprintf(missing, sizeof(missing), "%s/missing.bin", root);
    memset(&w, 0, sizeof(w));
    w.total = 10;
    assert_int_equal(moat_bridge_write_at(e->b, &e->ep, missing, 3, &wcb, &x, &st), MOAT_OK);
    run_until(e, &w.done);
    assert_status(&w.st, MOAT_CODE_NOT_FOUND);
    assert_string_equal(moat_status_detail_get(&w.st, "execd_code"), "FILE_NOT_FOUND");
    assert_int_not_equal(stat(missing, &fsb), 0);

    memset(&r, 0, sizeof(r));
    assert_int_equal(moat_bridge_move(e->b, &e->ep, file, moved, s_done, &r, &st), MOAT_OK);
    run_until(e, &r.done);
    assert_status(&r.st, MOAT_CODE_OK);
    memset(&r, 0, sizeof(r));
    assert_int_equal(moat_bridge_chmod(e->b, &e->ep, moved, 0600, NULL, NULL, s_done, &r, &st),
                     MOAT_OK);
    run_until(e, &r.done);
    assert_status(&r.st, MOAT_CODE_OK);
    struct stat sb;
    assert_int_equal(stat(moved, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0600);

    memset(&r, 0, sizeof(r));
    assert_int_equal(moat_bridge_list(e->b, &e->ep, root, 1, s_list, &r, &st), MOAT_OK);
    run_until(e, &r.done);
    assert_status(&r.st, MOAT_CODE_OK);
    assert_int_equal(r.count, 2);
    assert_non_null(strstr(r.text, "g.bin,"));
    assert_non_null(strstr(r.text, "sub,"));

    memset(&r, 0, sizeof(r));
    assert_int_equal(moat_bridge_remove(e->b, &e->ep, moved, false, s_done, &r, &st), MOAT_OK);
    run_until(e, &r.done);
    assert_status(&r.st, MOAT_CODE_OK);
    assert_int_not_equal(stat(moved, &sb), 0);
    memset(&r, 0, sizeof(r));
    assert_int_equal(moat_bridge_remove(e->b, &e->ep, root, true, s_done, &r, &st), MOAT_OK);
    run_until(e, &r.done);
    assert_status(&r.st, MOAT_CODE_OK);
    assert_int_not_equal(stat(root, &sb), 0);

    memset(&r, 0, sizeof(r));
    assert_int_equal(moat_bridge_stat(e->b, &e->ep, moved, s_stat, &r, &st), MOAT_OK);
    run_until(e, &r.done);
    assert_status(&r.st, MOAT_CODE_NOT_FOUND);
    env_down(e);
}

/* A terminal in pipe mode: stdin, then close_stdin, and wc reads EOF (execd's WebSocket, with
 * curl's upgrade on libmicrohttpd's). */
typedef struct term_out {
    char out[64];
    int code;
    bool ended;
    moat_status end;
} term_out;

static void t_ready(void *ud, moat_bridge_terminal *t, const char *id)
{
    (void)ud;
    assert_true(strlen(id) > 0);
    assert_int_equal(moat_bridge_terminal_stdin(t, (const uint8_t *)"a\nb\n", 4), MOAT_OK);
    assert_int_equal(moat_bridge_terminal_close_stdin(t), MOAT_OK);
}

static void t_output(void *ud, moat_bridge_terminal *t, moat_bridge_stream s, const uint8_t *d,
                     size_t n)
{
    (void)t;
    (void)s;
    term_out *o = ud;
    size_t used = strlen(o->out);
    snprintf(o->out + used, sizeof(o->out) - used, "%.*s", (int)n, (const char *)d);
}

static void t_exit(void *ud, moat_bridge_terminal *t, int code)
{
    (void)t;
    ((term_out *)ud)->code = code;
}

static void t_end(void *ud, moat_bridge_terminal *t, const moat_status *st)
{
    (void)t;
    term_out *o = ud;
    o->end = *st;
    o->ended = true;
}

static void test_terminal_stdin_eof(void **state)
{
    (void)state;
    env *e = env_up(NULL);
    term_out o = {.code = -1000};
    moat_bridge_terminal_consumer c = {t_ready, t_output, t_exit, NULL, t_end, &o};
    moat_bridge_terminal_opts opts = {.command = "wc -l"};
    moat_bridge_terminal *t;
    moat_status st;
    assert_int_equal(moat_bridge_terminal_open(e->b, &e->ep, &opts, &c, 1u << 20, &t, &st),
                     MOAT_OK);
    run_until(e, &o.ended);
    assert_int_equal(o.end.code, MOAT_CODE_OK);
    assert_string_equal(o.out, "2\n");
    assert_int_equal(o.code, 0);
    env_down(e);
}

/* After a failed assertion too: no execd, command or directory outlives the test. */
static int teardown(void **state)
{
    (void)state;
    return env_release(&g_env) ? 0 : -1;
}

int main(void)
{
    moat_log_set_level(MOAT_LOG_ERROR);
    signal(SIGPIPE, SIG_IGN);
    if (getenv("BRIDGE_TEST_FILTER") != NULL)
        cmocka_set_test_filter(getenv("BRIDGE_TEST_FILTER"));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_order_streams_and_exit, teardown),
        cmocka_unit_test_teardown(test_interrupt, teardown),
        cmocka_unit_test_teardown(test_timeout_cause_and_leftovers, teardown),
        cmocka_unit_test_teardown(test_paused_1gb_stream, teardown),
        cmocka_unit_test_teardown(test_attach_after_drop, teardown),
        cmocka_unit_test_teardown(test_sessions_background, teardown),
        cmocka_unit_test_teardown(test_files, teardown),
        cmocka_unit_test_teardown(test_terminal_stdin_eof, teardown),
    };
    return moat_run_group_tests("test_execd", tests, NULL, NULL);
}
