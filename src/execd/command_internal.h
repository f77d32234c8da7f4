/* What command.c (/command and /code, status, logs, interrupt, the router) and session.c (bash
 * sessions: /session) share. Inside execd only; internal.h is the rest. */
#ifndef MOAT_EXECD_COMMAND_INTERNAL_H
#define MOAT_EXECD_COMMAND_INTERNAL_H

#include "stream.h"

#include <stdbool.h>
#include <stdint.h>

/* ---- command.c ---- */
/* Whether the request asks for binary-safe output (X-Moat-Output: binary). */
bool xd_want_binary(struct MHD_Connection *conn);
/* The value of an integer field that xd_field() accepted (0 when absent). */
int64_t xd_int_of(const cJSON *v);
/* Expands and checks a cwd: malloc'd (caller frees), or NULL with 400 answered in *ret. */
char *xd_check_cwd(struct MHD_Connection *conn, const char *cwd, enum MHD_Result *ret);
/* Events of a run: init with its id, error (CommandExecError), and the final event once it
 * ended (session: the traceback of a non-zero exit says so). */
void xd_emit_init(xd_stream *st, const char *id);
void xd_emit_error(xd_stream *st, const char *evalue, const char *traceback, const char *cause);
void xd_emit_outcome(xd_stream *st, xd_cmd *c, bool session);
/* The child's stdout and stderr pipes: read ends non-blocking, all close-on-exec. */
bool xd_make_pipes(int out[2], int err[2]);

/* ---- session.c ---- */
/* The session with this id, or NULL. Lock held. */
xd_session *xd_session_find(const char *id);
/* Unlinks a session and frees it, or leaves it to its running stream. Lock held. */
void xd_session_remove(xd_session *s);
/* POST /session, POST /session/{sid}/run, DELETE /session/{sid}. */
enum MHD_Result xd_post_session(struct MHD_Connection *conn, xd_req *r);
enum MHD_Result xd_session_run_post(struct MHD_Connection *conn, xd_req *r, const char *sid);
enum MHD_Result xd_session_delete(struct MHD_Connection *conn, const char *sid);

#endif
