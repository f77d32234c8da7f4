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

/* ListSessions of nsessions live sessions through its own moatd, p50 and p95 over runs calls,
 * against Docker's own filtered list of the same containers in the same run (bench_list.c). */
void bench_list(int nsessions, int runs);

/* What n idle terminal sessions (Exec/Interactive, bash in a tty) cost moatd's RSS, through its
 * own moatd (bench_terminals.c). */
void bench_terminals(int n);

#endif
