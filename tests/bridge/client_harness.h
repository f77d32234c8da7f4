/* What bridge_client_stream_test, _flow_test and _calls_test share: a fake execd that is a
 * real HTTP server in a thread (fake_execd.h), answering each command and path the way the
 * tests expect (client_harness.c says what it serves), and a bridge on a libuv loop pointed at
 * it. Include after moat_test.h. */
#ifndef MOAT_TEST_BRIDGE_CLIENT_HARNESS_H
#define MOAT_TEST_BRIDGE_CLIENT_HARNESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "bridge/bridge.h"
#include "collect.h"
#include "fake_execd.h"

/* The size of the writes the fake sends each stream in; 0: the whole stream in one write. */
extern size_t g_piece;

/* One test's world: the loop, the bridge on it (owned, freed by env_down), the fake execd and
 * the endpoint that reaches it (its strings point into the env). */
typedef struct env {
    uv_loop_t loop;
    moat_bridge *b;
    fake_execd f;
    moat_bridge_endpoint ep;
    char url[64];
} env;

/* Starts the fake (on TCP or a Unix socket) and a bridge with cfg (NULL: the defaults). */
void env_up(env *e, bool tcp, const moat_bridge_config *cfg);
/* Frees the bridge, runs the loop dry and closes it, stops the fake. */
void env_down(env *e);
/* Runs the loop until *flag; a generous guard turns a hang into a failure. */
void run_until(env *e, const bool *flag);
/* Runs the loop until ex's transfer is paused, bounded as run_until is; its stats in *s. */
void run_until_paused(env *e, moat_bridge_exec *ex, moat_bridge_exec_stats *s);
void run_for_ms(env *e, int ms);
/* Starts o with c as its consumer and credit; the exec is the bridge's (also in c->ex). */
moat_bridge_exec *run_cmd(env *e, const moat_bridge_run_opts *o, collect *c, uint64_t credit);
/* Runs cmd to its end with unlimited credit into c, which it initialises (the caller frees). */
void run_to_end(env *e, const char *cmd, collect *c);
/* The last request's body is the same JSON as want (member order aside). */
void assert_last_body(env *e, const char *want);

#endif
