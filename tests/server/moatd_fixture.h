/* The fixture the moatd integration programs share (test_moatd_hello, _frames, _ops): each
 * starts one moatd without Docker for its shared group with setup_server and ends that group
 * with cmocka_unit_test_prestate(test_moatd_exits_0_on_sigterm, &P) (harness.h), which stops
 * it and checks that it exits 0 (under valgrind, MOAT_DAEMON_WRAPPER: without a memory error
 * or a leak). Tests with their own moatd start it themselves. Include after moat_test.h. */
#ifndef MOAT_TEST_MOATD_FIXTURE_H
#define MOAT_TEST_MOATD_FIXTURE_H

#include <stdbool.h>

#include "harness.h"

/* The shared group's moatd: token "sesame", at most 3 streams per connection, debug log. */
extern moatd_proc P;

/* The shared group's setup and teardown: start P, and stop it when a failure came before the
 * last test (the teardown is idempotent, as cmocka runs it after a failed setup too). */
int setup_server(void **state);
int teardown_server(void **state);

/* A connection to P that has said hello with the right token; the caller closes it. */
raw_conn *authed(void);
int frame_is_go_away(const moat_frame *f, moat_code code);
/* Reads until EOF (bounded), skipping anything; true if EOF came. */
bool drains_to_eof(raw_conn *c);
void sleep_ms(int ms);

#endif
