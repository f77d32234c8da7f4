/* The bridge's flow control against the fake execd (client_harness.h): back-pressure over a
 * 48 MiB stream, credit from another stream's callback, 40 concurrent streams, Attach with
 * DATA_LOSS and supersede, the memory budget and its accounts, retention and cancel. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "moat_test.h"

#include "client_harness.h"

static void test_backpressure(void **state)
{
    (void)state;
    moat_bridge_config cfg;
    moat_bridge_config_default(&cfg);
    cfg.replay_bytes = 1u << 20;
    /* a paused transfer is not a silent execd */
    cfg.idle_timeout_ms = 1000;
    env e;
    env_up(&e, false, &cfg);
    collect c;
    col_init(&c);
    c.keep_events = false;
    c.out_max = 64u << 20;
    size_t total = 48u << 20;
    moat_bridge_run_opts o = {.command = "big 50331648"};
    moat_bridge_exec *ex = run_cmd(&e, &o, &c, 0);
    /* no credit: the transfer pauses and the ring stays bounded */
    moat_bridge_exec_stats s;
    for (int i = 0; i < 200; i++) {
        run_for_ms(&e, 5);
        moat_bridge_exec_get_stats(ex, &s);
        if (s.paused)
            break;
    }
    assert_true(s.paused);
    run_for_ms(&e, 2500);
    moat_bridge_exec_get_stats(ex, &s);
    assert_true(s.paused);
    assert_int_equal(c.events, 0);
    assert_true(s.ring_bytes <= cfg.replay_bytes + 2 * MOAT_BRIDGE_MAX_EVENT_COST);
    /* a trickle of credit: exactly what fits is delivered */
    moat_bridge_exec_credit(ex, 16 + 31);
    assert_int_equal(c.events, 1);
    moat_bridge_exec_credit(ex, 100);
    assert_int_equal(c.events, 1);
    /* then credit back per event: everything arrives, once, in order */
    c.regrant = MOAT_BRIDGE_MAX_EVENT_COST;
    moat_bridge_exec_credit(ex, 4 * MOAT_BRIDGE_MAX_EVENT_COST);
    size_t max_ring = 0;
    while (!c.ended) {
        uv_run(&e.loop, UV_RUN_ONCE);
        if (!c.ended) {
            moat_bridge_exec_get_stats(ex, &s);
            if (s.ring_bytes > max_ring)
                max_ring = s.ring_bytes;
        }
    }
    assert_int_equal(c.end.code, MOAT_CODE_OK);
    assert_false(c.seq_gap);
    assert_int_equal(c.out_total[1], total);
    for (size_t i = 0; i < total; i++)
        if (c.out[1][i] != (uint8_t)(i * 31 >> 3))
            fail_msg("byte %zu differs", i);
    assert_true(max_ring <= cfg.replay_bytes + 2 * MOAT_BRIDGE_MAX_EVENT_COST);
    col_free(&c);
    env_down(&e);
}

typedef struct cross {
    collect c;
    moat_bridge_exec *other;
    bool granted;
} cross;

static void cross_event(void *ud, moat_bridge_exec *ex, const moat_bridge_event *ev)
{
    cross *x = ud;
    col_on_event(&x->c, ex, ev);
    if (!x->granted) {
        /* credit for another, paused, transfer from inside this one's callback */
        x->granted = true;
        moat_bridge_exec_credit(x->other, 4 * MOAT_BRIDGE_MAX_EVENT_COST);
    }
}

static void cross_end(void *ud, moat_bridge_exec *ex, const moat_status *st)
{
    col_on_end(&((cross *)ud)->c, ex, st);
}

static void test_credit_from_other_callback(void **state)
{
    (void)state;
    moat_bridge_config cfg;
    moat_bridge_config_default(&cfg);
    cfg.replay_bytes = 256u << 10;
    env e;
    env_up(&e, false, &cfg);
    collect b;
    col_init(&b);
    b.keep_events = false;
    b.out_max = 8u << 20;
    b.regrant = MOAT_BRIDGE_MAX_EVENT_COST;
    moat_bridge_run_opts ob = {.command = "big 4194304"};
    moat_bridge_exec *exb = run_cmd(&e, &ob, &b, 0);
    moat_bridge_exec_stats s;
    do {
        uv_run(&e.loop, UV_RUN_ONCE);
        moat_bridge_exec_get_stats(exb, &s);
    } while (!s.paused);
    cross a;
    memset(&a, 0, sizeof(a));
    col_init(&a.c);
    a.other = exb;
    moat_bridge_consumer k = {cross_event, cross_end, &a, NULL};
    moat_bridge_run_opts oa = {.command = "count 10"};
    moat_bridge_exec *exa = NULL;
    moat_status st;
    assert_int_equal(moat_bridge_run(e.b, &e.ep, &oa, &k, UINT64_MAX, &exa, &st), MOAT_OK);
    run_until(&e, &a.c.ended);
    run_until(&e, &b.ended);
    assert_int_equal(b.end.code, MOAT_CODE_OK);
    assert_int_equal(b.out_total[1], 4194304);
    assert_false(b.seq_gap);
    for (size_t i = 0; i < b.out_len[1]; i++)
        if (b.out[1][i] != (uint8_t)(i * 31 >> 3))
            fail_msg("byte %zu differs", i);
    col_free(&a.c);
    col_free(&b);
    env_down(&e);
}

static void test_many_concurrent(void **state)
{
    (void)state;
    env e;
    env_up(&e, false, NULL);
    enum { N = 40 };
    collect c[N];
    char cmds[N][32];
    for (int i = 0; i < N; i++) {
        col_init(&c[i]);
        snprintf(cmds[i], sizeof(cmds[i]), "count %d", 50 + i);
        moat_bridge_run_opts o = {.command = cmds[i]};
        run_cmd(&e, &o, &c[i], UINT64_MAX);
    }
    for (int i = 0; i < N; i++) {
        run_until(&e, &c[i].ended);
        assert_int_equal(c[i].end.code, MOAT_CODE_OK);
        assert_int_equal(col_count(&c[i], MOAT_BRIDGE_EV_OUTPUT), (size_t)(50 + i));
        char want[32];
        snprintf(want, sizeof(want), "line %d", 49 + i);
        assert_string_equal(c[i].ev[c[i].n - 3].text, want);
        assert_false(c[i].seq_gap);
        col_free(&c[i]);
    }
    env_down(&e);
}

/* ------------------------------------------------------------ attach */

static void test_attach(void **state)
{
    (void)state;
    moat_bridge_config cfg;
    moat_bridge_config_default(&cfg);
    cfg.replay_bytes = 256u << 10; /* the minimum */
    env e;
    env_up(&e, false, &cfg);
    collect a;
    col_init(&a);
    moat_bridge_run_opts o = {.command = "count 100"};
    /* credit for a few events only, then the consumer goes away */
    moat_bridge_exec *ex = run_cmd(&e, &o, &a, 100);
    while (a.events < 4)
        uv_run(&e.loop, UV_RUN_ONCE);
    uint64_t seen = a.last_seq;
    assert_int_equal(seen, 4);
    moat_bridge_exec_detach(ex);
    moat_bridge_exec_stats s;
    do {
        uv_run(&e.loop, UV_RUN_ONCE);
        moat_bridge_exec_get_stats(ex, &s);
    } while (!s.finished);
    assert_int_equal(s.last_sequence, 103); /* init, 100 lines, complete, exit */

    collect b;
    col_init(&b);
    moat_bridge_consumer k = col_consumer(&b);
    moat_bridge_exec *ex2 = NULL;
    moat_status st;
    assert_int_equal(moat_bridge_attach(e.b, "sandbox-1", "100", seen, &k, UINT64_MAX, &ex2, &st),
                     MOAT_OK);
    assert_ptr_equal(ex, ex2);
    assert_true(b.ended); /* replayed to the end synchronously */
    assert_int_equal(b.end.code, MOAT_CODE_OK);
    assert_int_equal(b.ev[0].seq, seen + 1);
    assert_int_equal(b.last_seq, 103);
    assert_false(b.seq_gap);
    assert_int_equal(col_find(&b, MOAT_BRIDGE_EV_EXIT)->code, 0);
    col_free(&b);

    /* errors: beyond the end, unknown id, other scope */
    assert_int_equal(moat_bridge_attach(e.b, "sandbox-1", "100", 104, &k, 0, &ex2, &st),
                     MOAT_E_INVAL);
    assert_int_equal(st.code, MOAT_CODE_OUT_OF_RANGE);
    assert_int_equal(moat_bridge_attach(e.b, "sandbox-1", "nope", 0, &k, 0, &ex2, &st),
                     MOAT_E_NOT_FOUND);
    assert_int_equal(st.code, MOAT_CODE_NOT_FOUND);
    assert_int_equal(moat_bridge_attach(e.b, "sandbox-2", "100", 0, &k, 0, &ex2, &st),
                     MOAT_E_NOT_FOUND);
    col_free(&a);

    /* a stream bigger than the ring: what left it is DATA_LOSS */
    col_init(&a);
    o.command = "count 20000";
    ex = run_cmd(&e, &o, &a, 50);
    while (a.events < 2)
        uv_run(&e.loop, UV_RUN_ONCE);
    moat_bridge_exec_detach(ex);
    do {
        uv_run(&e.loop, UV_RUN_ONCE);
        moat_bridge_exec_get_stats(ex, &s);
    } while (!s.finished);
    assert_true(s.oldest_sequence > 3);
    assert_true(s.ring_bytes <= cfg.replay_bytes);
    col_init(&b);
    k = col_consumer(&b);
    assert_int_equal(moat_bridge_attach(e.b, "sandbox-1", "20000", 2, &k, 0, &ex2, &st),
                     MOAT_E_NOT_FOUND);
    assert_int_equal(st.code, MOAT_CODE_DATA_LOSS);
    /* from the oldest kept one it works, with credit handed out slowly */
    assert_int_equal(
        moat_bridge_attach(e.b, "sandbox-1", "20000", s.oldest_sequence - 1, &k, 0, &ex2, &st),
        MOAT_OK);
    assert_int_equal(b.events, 0);
    while (!b.ended)
        moat_bridge_exec_credit(ex2, 100);
    assert_int_equal(b.ev[0].seq, s.oldest_sequence);
    assert_int_equal(b.last_seq, 20003);
    assert_false(b.seq_gap);
    col_free(&b);
    col_free(&a);

    /* a second consumer supersedes the first while live */
    col_init(&a);
    o.command = "count 3";
    ex = run_cmd(&e, &o, &a, 0);
    do {
        uv_run(&e.loop, UV_RUN_ONCE);
        moat_bridge_exec_get_stats(ex, &s);
    } while (s.last_sequence < 1);
    col_init(&b);
    k = col_consumer(&b);
    assert_int_equal(moat_bridge_attach(e.b, "sandbox-1", "3", 0, &k, UINT64_MAX, &ex2, &st),
                     MOAT_OK);
    assert_true(a.ended);
    assert_int_equal(a.end.code, MOAT_CODE_ABORTED);
    assert_string_equal(a.end.reason, "superseded_by_attach");
    run_until(&e, &b.ended);
    assert_int_equal(b.ev[0].seq, 1);
    assert_int_equal(b.last_seq, 6);
    col_free(&a);
    col_free(&b);
    env_down(&e);
}

/* One budget over every ring: retained replay goes oldest first; undelivered
 * events are never dropped, they pause their transfer at the account's share
 * or the global cap, and new streams are refused while it holds. */

/* What one write callback can add past a check: what a pause makes curl keep (counted
 * as twice the 128 KiB receive buffer), and the event it completes. */
#define ONE_WRITE ((2u * 128u + 64u) << 10)

/* A share smaller than what a pause makes curl keep: once the consumer reads, the transfer
 * resumes and ends (its own held bytes never keep it waiting on itself). */
static void test_paused_transfer_resumes_past_small_share(void **state)
{
    (void)state;
    moat_bridge_budget bg = {.cap = 64u << 20};
    moat_bridge_config cfg;
    moat_bridge_config_default(&cfg);
    cfg.budget = &bg;
    env e;
    env_up(&e, false, &cfg);
    moat_bridge_account acct = {.limit = 64u << 10};
    collect c;
    col_init(&c);
    c.keep_events = false;
    moat_bridge_consumer k = col_consumer(&c);
    k.account = &acct;
    moat_bridge_run_opts o = {.command = "count 20000"};
    moat_bridge_exec *ex = NULL;
    moat_status st;
    assert_int_equal(moat_bridge_run(e.b, &e.ep, &o, &k, 0, &ex, &st), MOAT_OK);
    moat_bridge_exec_stats s;
    run_until_paused(&e, ex, &s);
    assert_true(acct.pinned >= acct.limit);
    moat_bridge_exec_credit(ex, UINT64_MAX);
    run_until(&e, &c.ended);
    assert_int_equal(c.end.code, MOAT_CODE_OK);
    assert_int_equal(acct.pinned, 0);
    col_free(&c);
    env_down(&e);
}

static void test_memory_budget(void **state)
{
    (void)state;
    moat_bridge_budget bg = {.cap = 1u << 20};
    moat_bridge_config cfg;
    moat_bridge_config_default(&cfg);
    cfg.replay_bytes = 1u << 20;
    cfg.idle_timeout_ms = 5000;
    cfg.budget = &bg;
    env e;
    env_up(&e, false, &cfg);
    /* three finished runs of about 1 MiB of ring each: the budget keeps 1 MiB */
    const char *cmds[] = {"count 20000", "count 20001", "count 20002"};
    for (int i = 0; i < 3; i++) {
        collect c;
        col_init(&c);
        c.keep_events = false;
        moat_bridge_run_opts o = {.command = cmds[i]};
        run_cmd(&e, &o, &c, UINT64_MAX);
        run_until(&e, &c.ended);
        assert_int_equal(c.end.code, MOAT_CODE_OK);
        col_free(&c);
        assert_true(bg.used <= bg.cap);
        assert_int_equal(bg.pinned, 0);
    }
    assert_true(bg.dropped_bytes > 0);
    assert_true(bg.peak <= bg.cap + MOAT_BRIDGE_MAX_EVENT_COST + 256);
    /* the oldest run lost its replay first: DATA_LOSS; the newest still has its tail */
    collect b;
    col_init(&b);
    moat_bridge_consumer k = col_consumer(&b);
    moat_bridge_exec *ex2 = NULL;
    moat_status st;
    assert_int_equal(moat_bridge_attach(e.b, "sandbox-1", "20000", 0, &k, 0, &ex2, &st),
                     MOAT_E_NOT_FOUND);
    assert_int_equal(st.code, MOAT_CODE_DATA_LOSS);
    assert_int_equal(
        moat_bridge_attach(e.b, "sandbox-1", "20002", 20003, &k, UINT64_MAX, &ex2, &st), MOAT_OK);
    assert_true(b.ended);
    col_free(&b);

    /* a consumer that grants nothing pins at most its account's share */
    moat_bridge_account acct = {.limit = 256u << 10};
    collect c;
    col_init(&c);
    c.keep_events = false;
    k = col_consumer(&c);
    k.account = &acct;
    moat_bridge_run_opts ob = {.command = "big 50331648"};
    moat_bridge_exec *big = NULL;
    assert_int_equal(moat_bridge_run(e.b, &e.ep, &ob, &k, 0, &big, &st), MOAT_OK);
    moat_bridge_exec_stats s;
    run_until_paused(&e, big, &s);
    /* curl's receive buffer as the writes so far filled it, and the decoder's buffers,
     * count as used until the transfer ends */
    assert_true(s.transfer_buffer_bytes > 0);
    assert_true(s.transfer_buffer_bytes <= (128u << 10) + (1u << 20) + 65536u);
    assert_true(bg.used >= s.ring_bytes + s.transfer_buffer_bytes);
    assert_true(acct.pinned >= acct.limit);
    assert_true(acct.pinned <= acct.limit + ONE_WRITE);
    assert_int_equal(bg.pinned, acct.pinned);
    assert_true(bg.used <= bg.cap + ONE_WRITE);
    /* the bridge does not refuse the party (its owner knows whether it reads) */
    assert_true(moat_bridge_budget_exhausted(e.b, &acct));
    assert_false(moat_bridge_budget_exhausted(e.b, NULL));
    /* its stream that is read is not held back by the share its unread one fills: it ends
     * while the share is still full, as other parties' streams do */
    collect r;
    col_init(&r);
    moat_bridge_consumer kr = col_consumer(&r);
    kr.account = &acct;
    moat_bridge_run_opts o1 = {.command = "count 1"};
    moat_bridge_exec *read = NULL;
    assert_int_equal(moat_bridge_run(e.b, &e.ep, &o1, &kr, UINT64_MAX, &read, &st), MOAT_OK);
    run_until(&e, &r.ended);
    assert_int_equal(r.end.code, MOAT_CODE_OK);
    assert_true(moat_bridge_budget_exhausted(e.b, &acct));
    col_free(&r);
    /* but by what the owner still queues for the party: with its charges at the share, that
     * stream waits until they drain */
    moat_bridge_budget_charge(e.b, &acct, (int64_t)acct.limit);
    col_init(&r);
    kr = col_consumer(&r);
    kr.account = &acct;
    assert_int_equal(moat_bridge_run(e.b, &e.ep, &o1, &kr, UINT64_MAX, &read, &st), MOAT_OK);
    run_until_paused(&e, read, &s);
    assert_false(r.ended);
    moat_bridge_budget_charge(e.b, &acct, -(int64_t)acct.limit);
    run_until(&e, &r.ended);
    assert_int_equal(r.end.code, MOAT_CODE_OK);
    col_free(&r);
    collect r2;
    col_init(&r2);
    run_cmd(&e, &o1, &r2, UINT64_MAX);
    run_until(&e, &r2.ended);
    assert_int_equal(r2.end.code, MOAT_CODE_OK);
    col_free(&r2);
    /* its new stream that is not read takes one write past the share, then waits */
    col_init(&r);
    kr = col_consumer(&r);
    kr.account = &acct;
    moat_bridge_run_opts o2 = {.command = "big 4194304"};
    moat_bridge_exec *waits = NULL;
    assert_int_equal(moat_bridge_run(e.b, &e.ep, &o2, &kr, 0, &waits, &st), MOAT_OK);
    run_until_paused(&e, waits, &s);
    assert_true(acct.pinned <= acct.limit + 2 * ONE_WRITE);
    assert_false(r.ended);
    /* the party's share frees up and the waiting stream is read: it resumes and ends */
    moat_bridge_exec_set_account(big, NULL);
    moat_bridge_exec_credit(waits, UINT64_MAX);
    run_until(&e, &r.ended);
    assert_int_equal(acct.pinned, 0);
    assert_int_equal(r.end.code, MOAT_CODE_OK);
    col_free(&r);

    /* bytes the owner charges are pinned: at the cap everyone is refused */
    moat_bridge_budget_charge(e.b, NULL, (int64_t)bg.cap);
    assert_true(moat_bridge_budget_exhausted(e.b, NULL));
    col_init(&r);
    kr = col_consumer(&r);
    moat_bridge_exec *refused = NULL;
    assert_int_equal(moat_bridge_run(e.b, &e.ep, &o1, &kr, UINT64_MAX, &refused, &st),
                     MOAT_E_TOO_BIG);
    assert_int_equal(st.code, MOAT_CODE_RESOURCE_EXHAUSTED);
    assert_string_equal(st.reason, "memory_budget_exhausted");
    assert_string_equal(st.details[0].value, "server");
    assert_false(r.ended);
    assert_int_equal(bg.refused, 1);
    moat_bridge_budget_charge(e.b, NULL, -(int64_t)bg.cap);
    assert_false(moat_bridge_budget_exhausted(e.b, NULL));
    col_free(&r);

    size_t used_before_cancel = bg.used;
    moat_bridge_exec_cancel(big);
    assert_int_equal(bg.pinned, 0);
    moat_bridge_exec_get_stats(big, &s);
    assert_int_equal(s.transfer_buffer_bytes, 0);
    assert_true(bg.used < used_before_cancel);
    col_free(&c);

    /* a sandbox gone: its retained executions go, and their memory */
    moat_bridge_drop_scope(e.b, "sandbox-1");
    assert_int_equal(bg.used, 0);
    col_init(&b);
    k = col_consumer(&b);
    assert_int_equal(moat_bridge_attach(e.b, "sandbox-1", "20002", 0, &k, 0, &ex2, &st),
                     MOAT_E_NOT_FOUND);
    col_free(&b);
    env_down(&e);
}

static void test_retention(void **state)
{
    (void)state;
    moat_bridge_config cfg;
    moat_bridge_config_default(&cfg);
    cfg.retention_ms = 1; /* swept at the adapter's next 1 s tick */
    env e;
    env_up(&e, false, &cfg);
    collect a;
    col_init(&a);
    moat_bridge_run_opts o = {.command = "count 2"};
    run_cmd(&e, &o, &a, UINT64_MAX);
    run_until(&e, &a.ended);
    moat_bridge_exec *ex2 = NULL;
    moat_status st;
    collect b;
    col_init(&b);
    moat_bridge_consumer k = col_consumer(&b);
    assert_int_equal(moat_bridge_attach(e.b, "sandbox-1", "2", 0, &k, 0, &ex2, &st), MOAT_OK);
    moat_bridge_exec_detach(ex2);
    /* the sweep runs from the adapter's timer or with the next activity */
    run_for_ms(&e, 1100);
    collect c;
    o.command = "count 1";
    col_init(&c);
    run_cmd(&e, &o, &c, UINT64_MAX);
    run_until(&e, &c.ended);
    col_free(&c);
    assert_int_equal(moat_bridge_attach(e.b, "sandbox-1", "2", 0, &k, 0, &ex2, &st),
                     MOAT_E_NOT_FOUND);
    col_free(&a);
    col_free(&b);
    env_down(&e);
}

static void test_cancel(void **state)
{
    (void)state;
    env e;
    env_up(&e, false, NULL);
    collect c;
    col_init(&c);
    moat_bridge_run_opts o = {.command = "silent after init"};
    moat_bridge_exec *ex = run_cmd(&e, &o, &c, UINT64_MAX);
    while (c.events < 1)
        uv_run(&e.loop, UV_RUN_ONCE);
    moat_bridge_exec_cancel(ex);
    assert_true(c.ended);
    assert_int_equal(c.end.code, MOAT_CODE_CANCELLED);
    col_free(&c);
    /* freeing the bridge with a live stream ends it with CANCELLED */
    col_init(&c);
    o.command = "never";
    run_cmd(&e, &o, &c, UINT64_MAX);
    run_for_ms(&e, 50);
    env_down(&e);
    assert_true(c.ended);
    assert_int_equal(c.end.code, MOAT_CODE_CANCELLED);
    col_free(&c);
}

int main(void)
{
    moat_log_set_level(MOAT_LOG_ERROR);
    if (getenv("BRIDGE_TEST_FILTER") != NULL)
        cmocka_set_test_filter(getenv("BRIDGE_TEST_FILTER"));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_backpressure),
        cmocka_unit_test(test_credit_from_other_callback),
        cmocka_unit_test(test_many_concurrent),
        cmocka_unit_test(test_attach),
        cmocka_unit_test(test_memory_budget),
        cmocka_unit_test(test_paused_transfer_resumes_past_small_share),
        cmocka_unit_test(test_retention),
        cmocka_unit_test(test_cancel),
    };
    return moat_run_group_tests("bridge_client_flow_test", tests, NULL, NULL);
}
