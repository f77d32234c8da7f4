/* What bridge_execd_stream_test and bridge_execd_calls_test share: per test, the real
 * moat-execd (from MOAT_BUILD_DIR) in its own directory and a bridge on a libuv loop talking to
 * it over its Unix socket. Each test ends with env_down; execd_harness_teardown takes down what
 * a failed test left. Include after moat_test.h. */
#ifndef MOAT_TEST_BRIDGE_EXECD_HARNESS_H
#define MOAT_TEST_BRIDGE_EXECD_HARNESS_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

#include "bridge/bridge.h"
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

/* Starts execd and a bridge with cfg (NULL: the defaults) on a new loop; the env is the
 * harness's own (one at a time). */
env *env_up(const moat_bridge_config *cfg);
/* Frees the bridge, stops execd and removes its directory; fails unless all went cleanly. */
void env_down(env *e);

/* A status that is not the one wanted fails with its code, reason and message, which say why
 * (execd_unreachable, execd_silent, ...), at the caller's line. */
#define assert_status(st, want) assert_status_at((st), (want), __FILE__, __LINE__)
void assert_status_at(const moat_status *st, moat_code want, const char *file, int line);
/* Runs the loop until *flag; a generous guard turns a hang into a failure. */
void run_until(env *e, const bool *flag);
/* Starts o with c as its consumer and credit; the exec is the bridge's. */
moat_bridge_exec *start(env *e, const moat_bridge_run_opts *o, collect *c, uint64_t credit);

/* What each program's main does first: execd's and the bridge's logs at error only, SIGPIPE
 * ignored, and BRIDGE_TEST_FILTER (a cmocka test filter) applied. */
void execd_harness_init(void);
/* Each test's teardown, after a failed assertion too: no execd, command or directory outlives
 * the test. */
int execd_harness_teardown(void **state);

#endif
