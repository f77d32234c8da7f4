/* What the chaos tests ask of moatd as a real client would, over raw frames. */
#ifndef MOAT_CHAOS_CLIENT_H
#define MOAT_CHAOS_CLIENT_H

#include <stdbool.h>
#include <stddef.h>

#include "harness.h"
#include "common/common.h"

/* CreateSession for chat; the End's code (-1 on a transport failure). On OK the session id is
 * copied to sid; reason (may be NULL) gets the End's reason. */
int chaos_create(raw_conn *c, const char *chat, char sid[MOAT_UUID_STR_LEN], char *reason,
                 size_t reason_len);
/* RunCommand to its End: the End's code; stdout and stderr (cut at cap - 1 bytes) in out, and
 * the exit code in *exit_code (-1 when none came). */
int chaos_run(raw_conn *c, const char *sid, const char *cmd, char *out, size_t cap, int *exit_code);
/* Health/Check: the End's code; *serving and *reachable from the answer. */
int chaos_health(raw_conn *c, bool *serving, bool *reachable);
/* StopSession: the End's code. */
int chaos_stop(raw_conn *c, const char *sid);
/* Monotonic milliseconds. */
long long chaos_now_ms(void);
void chaos_sleep_ms(int ms);

#endif
