/* The bridge's command streams against the real moat-execd binary (label integration): output
 * order, stderr apart, exit codes, binary bytes, interrupt, a timeout's cause and leftovers, a
 * paused consumer holding a 1 GB stream with flat memory, Attach after a dropped consumer. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "moat_test.h"
#include <signal.h>
#include <unistd.h>

#include "execd_harness.h"

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

int main(void)
{
    execd_harness_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_order_streams_and_exit, execd_harness_teardown),
        cmocka_unit_test_teardown(test_interrupt, execd_harness_teardown),
        cmocka_unit_test_teardown(test_timeout_cause_and_leftovers, execd_harness_teardown),
        cmocka_unit_test_teardown(test_paused_1gb_stream, execd_harness_teardown),
        cmocka_unit_test_teardown(test_attach_after_drop, execd_harness_teardown),
    };
    return moat_run_group_tests("bridge_execd_stream_test", tests, NULL, NULL);
}
