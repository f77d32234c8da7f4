/* What bench_e2e's phases share (bench_e2e.c owns it): the failure count, the clock, percentiles
 * and CreateSession over a raw connection. One thread at a time for failures; the rest may be
 * called from any thread. */
#ifndef MOAT_BENCH_E2E_H
#define MOAT_BENCH_E2E_H

#include <stdbool.h>

#include "harness.h"
#include "moat/v1/sandbox.pb-c.h"

/* Missed targets and failed phases so far; main's exit status. */
extern int failures;

/* Monotonic seconds. */
double now_s(void);
/* The q-quantile (0.5 = p50) of n values; sorts v. */
double percentile(double *v, int n, double q);
/* CreateSession for chat with res (NULL: the server's defaults); sid and cid (may be NULL) get
 * the session's ids. */
bool create_session(raw_conn *c, const char *chat, Moat__V1__Resources *res, char sid[64],
                    char cid[80]);

/* Runs a shell command, output discarded; returns its wall time or -1 on failure. */
double timed_system(const char *cmd);
/* Prints one figure against its baseline and counts a miss in failures. */
void verdict(const char *what, double value, double baseline, const char *unit, double ratio,
             bool pass, const char *target);
/* Keystroke round trip through moat exec -it, docker exec -it and a local pty, keystrokes
 * samples each, and stdin_bytes piped through moat exec -i and docker exec -i, into session sid
 * (container cid) of p (bench_interactive.c). */
void bench_interactive(const moatd_proc *p, const char *moat_bin, const char *sid, const char *cid,
                       int keystrokes, long long stdin_bytes);
/* N sequential `exec -i` calls in one sandbox against docker exec -i (bench_interactive.c). */
void bench_interactive_sequential(const moatd_proc *p, const char *moat_bin, const char *sid,
                                  const char *cid, int n);

/* ListSessions of nsessions live sessions through its own moatd, p50 and p95 over runs calls,
 * against Docker's own filtered list of the same containers in the same run (bench_list.c). */
void bench_list(int nsessions, int runs);

/* What n idle terminal sessions (Exec/Interactive, bash in a tty) cost moatd's RSS, through its
 * own moatd (bench_terminals.c). */
void bench_terminals(int n);

#endif
