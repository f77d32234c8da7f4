/* bench_e2e terminals: what idle terminal sessions (Exec/Interactive with a tty, bash at its
 * prompt) cost moatd. Its own moatd, instance and name prefix; the baseline is the same moatd's
 * RSS with the session created and one terminal opened and closed, so that libraries, curl's
 * connection cache and the loop's first allocations are in both. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench_e2e.h"
#include "moat/v1/exec.pb-c.h"

/* Terminals per connection: below moatd's default max_concurrent_streams. */
#define PER_CONN 50

/* Opens a bash terminal on c; returns its stream id (0 on failure). */
static uint32_t open_terminal(raw_conn *c, const char *sid)
{
    Moat__V1__InteractiveStart start = MOAT__V1__INTERACTIVE_START__INIT;
    Moat__V1__TerminalSize size = MOAT__V1__TERMINAL_SIZE__INIT;
    size.rows = 24;
    size.cols = 80;
    start.session_id = (char *)sid;
    start.tty = true;
    start.size = &size;
    Moat__V1__InteractiveRequest req = MOAT__V1__INTERACTIVE_REQUEST__INIT;
    req.input_case = MOAT__V1__INTERACTIVE_REQUEST__INPUT_START;
    req.start = &start;
    return raw_call(c, "/moat.v1.Exec/Interactive", 0, &req.base);
}

/* Reads until every one of the n streams has sent its init and some output (bash's prompt). */
static bool wait_prompts(raw_conn *c, const uint32_t *ids, int n)
{
    bool ready[PER_CONN] = {false};
    if (n < 1 || n > PER_CONN)
        return false;
    int left = n;
    while (left > 0) {
        moat_frame f;
        if (raw_recv(c, &f, 30000) != 1)
            break;
        if (f.kind == MOAT_FRAME_END) {
            fprintf(stderr, "bench terminals: stream %u ended: %.*s\n", f.stream_id,
                    (int)f.u.end.message.len, (const char *)f.u.end.message.data);
            break;
        }
        if (f.kind != MOAT_FRAME_MESSAGE)
            continue;
        for (int i = 0; i < n; i++) {
            if (ids[i] != f.stream_id || ready[i])
                continue;
            Moat__V1__ExecEvent *ev = moat__v1__exec_event__unpack(NULL, f.u.message.payload.len,
                                                                   f.u.message.payload.data);
            if (ev != NULL && ev->kind_case == MOAT__V1__EXEC_EVENT__KIND_OUTPUT) {
                ready[i] = true;
                left--;
            }
            moat__v1__exec_event__free_unpacked(ev, NULL);
        }
    }
    return left == 0;
}

void bench_terminals(int n)
{
    char prefix[64], a_instance[96], a_prefix[96];
    snprintf(prefix, sizeof(prefix), "moat-bench-term-%d-", (int)getpid());
    snprintf(a_instance, sizeof(a_instance), "--instance=bench-term-%d", (int)getpid());
    snprintf(a_prefix, sizeof(a_prefix), "--container_name_prefix=%s", prefix);
    const char *extra[] = {a_instance, a_prefix, "--log_level=warn", "--max_calls_per_session=1024",
                           NULL};
    moatd_proc p;
    if (!moatd_start(&p, true, extra)) {
        failures++;
        return;
    }
    int nconns = (n + PER_CONN - 1) / PER_CONN;
    raw_conn **cs = calloc((size_t)nconns, sizeof(*cs));
    uint32_t *ids = calloc((size_t)n, sizeof(*ids));
    char(*sids)[64] = calloc((size_t)nconns, sizeof(*sids));
    bool ok = cs != NULL && ids != NULL && sids != NULL;
    /* A sandbox's execd keeps at most 64 terminals: PER_CONN of them in each of its sessions. */
    for (int k = 0; ok && k < nconns; k++) {
        char chat[40];
        snprintf(chat, sizeof(chat), "7e3a1b2c-4d5e-4f60-8a7b-%012x", (unsigned)k);
        ok = (cs[k] = raw_connect_ready(p.port, NULL)) != NULL &&
             create_session(cs[k], chat, NULL, sids[k], NULL);
    }
    /* The baseline: one terminal opened, prompted and closed. */
    if (ok) {
        raw_conn *warm = raw_connect_ready(p.port, NULL);
        uint32_t id = warm != NULL ? open_terminal(warm, sids[0]) : 0;
        ok = id != 0 && wait_prompts(warm, &id, 1);
        if (warm != NULL)
            raw_close(warm);
        usleep(500000);
    }
    long before = proc_rss_kb(p.pid);
    double t0 = now_s();
    for (int k = 0; ok && k < nconns; k++) {
        int first = k * PER_CONN, count = n - first < PER_CONN ? n - first : PER_CONN;
        for (int i = 0; i < count; i++)
            ids[first + i] = open_terminal(cs[k], sids[k]);
        ok = wait_prompts(cs[k], ids + first, count);
    }
    double opened = now_s() - t0;
    usleep(2000000); /* idle */
    long after = proc_rss_kb(p.pid);
    if (ok) {
        double grew_mb = (double)(after - before) / 1024.0;
        printf("(%d terminals open and at their prompt in %.2f s; moatd RSS %ld KiB before, %ld "
               "KiB after)\n",
               n, opened, before, after);
        char what[64];
        snprintf(what, sizeof(what), "moatd RSS for %d idle terminals (MB)", n);
        printf("%-44s value %10.3f MB   baseline %10.3f MB   per terminal %.1f KiB  %s (target "
               "<= 10 MB)\n",
               what, grew_mb, (double)before / 1024.0, (double)(after - before) / n,
               grew_mb <= 10.0 ? "PASS" : "FAIL");
        if (grew_mb > 10.0)
            failures++;
    } else {
        printf("%-44s FAIL (could not open them)\n", "moatd RSS for idle terminals");
        moatd_dump_log(&p);
        failures++;
    }
    for (int k = 0; cs != NULL && k < nconns; k++)
        if (cs[k] != NULL)
            raw_close(cs[k]);
    free(cs);
    free(ids);
    free(sids);
    moatd_stop(&p);
    docker_remove_prefixed(prefix);
    moatd_remove_dir(p.state_dir);
}
