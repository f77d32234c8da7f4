/* The fixture the PTY integration programs share (test_execd_pty_session, _stdin, _limits):
 * each starts one moat-execd for its group, behind token, with pty_fixture_setup. Include
 * after moat_test.h. */
#ifndef MOAT_TEST_PTY_FIXTURE_H
#define MOAT_TEST_PTY_FIXTURE_H

#include "xd_ws_client.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The bound on every wait, against a hang (never a measure). */
#define WAIT_MS 30000

/* The group's execd and its two listeners, whose requests carry token. */
extern xd_proc xp;
extern xd_target unix_t, tcp_t;
extern const char token[];

void nap_ms(long ms);
/* POST /pty on t with body (may be NULL), which must answer 201; the session id (static). */
const char *create(const xd_target *t, const char *body);
/* /pty/<id>/ws<query> on t, retried while it is 409; the open connection (close it). */
xd_ws *attach(const xd_target *t, const char *id, const char *query);
/* The next text message, parsed (the caller frees it); binary output before it is skipped. */
cJSON *next_json(xd_ws *ws);
/* The next text message has this type (and this code unless code is NULL). */
void expect_type(xd_ws *ws, const char *type, const char *code);
/* The next text message is "connected" for id in mode. */
void expect_connected(xd_ws *ws, const char *id, const char *mode);
/* The close code of the frame that ends the connection; its reason in reason (may be NULL). */
uint16_t expect_close(xd_ws *ws, char *reason, size_t reason_len);
/* line as one stdin frame. */
void type_line(xd_ws *ws, const char *line);
/* json as one text frame. */
void send_json(xd_ws *ws, const char *json);
/* GET /pty/<id>, which must answer want; its JSON when 200 (the caller frees it), else NULL. */
cJSON *status_of(const char *id, long want);
/* DELETE /pty/<id>, which must answer want. */
void delete_session(const char *id, long want);

/* The group setup and teardown: start xp with the token, stop it (idempotent, as cmocka runs
 * the teardown after a failed setup too). */
int pty_fixture_setup(void **state);
int pty_fixture_teardown(void **state);

#endif
