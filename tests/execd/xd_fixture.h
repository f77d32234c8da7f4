/* The fixture the execd integration programs share (test_execd_command, _files, _session,
 * _lifecycle): each starts one moat-execd for its group with xd_fixture_setup and ends with
 * test_execd_exits_0_on_sigterm, which stops it and checks that it exits 0 (under valgrind,
 * MOAT_DAEMON_WRAPPER: without a memory error or a leak). Include after moat_test.h. */
#ifndef MOAT_TEST_XD_FIXTURE_H
#define MOAT_TEST_XD_FIXTURE_H

#include "xd_client.h"

/* The group's execd, started by xd_fixture_setup with --retention-seconds 60. */
extern xd_proc xp;
/* Its two listeners: &xp.unix_t and &xp.tcp_t. */
extern const xd_target *both[2];
/* The note a test prints when it leaves an RSS bound unchecked under a wrapper. */
extern const char rss_unchecked[];

void nap_ms(long ms);
/* echo, a failing command and a killed one on t, with their events and exit codes. */
void check_command_basics(const xd_target *t);
/* GET /command/status/<id> on xp, which must answer 200; the caller frees it (cJSON_Delete). */
cJSON *status_of(const char *id);
/* status_of(id) once the command has finished (polled, bounded); the caller frees it. */
cJSON *wait_done(const char *id);
/* POST /session with body (may be NULL) on xp; the new session's id, which the caller frees. */
char *new_session(const char *body);
/* A socket connected to xp's Unix socket; the caller closes it. */
int connect_unix(void);

/* The group setup and teardown: start xp, and stop it when a failure came before the last
 * test (the teardown is idempotent, as cmocka runs it after a failed setup too). */
int xd_fixture_setup(void **state);
int xd_fixture_teardown(void **state);
/* Each program's last test. */
void test_execd_exits_0_on_sigterm(void **state);

#endif
