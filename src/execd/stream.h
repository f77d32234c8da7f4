/* Streaming SSE response of a command (internal). */
#ifndef MOAT_EXECD_STREAM_H
#define MOAT_EXECD_STREAM_H

#include "internal.h"

typedef struct xd_stream xd_stream;

/* Called once when the process has ended and its output is drained (cmd non-NULL: emit
 * the final events with xd_stream_emit), or when the reader went away first (cmd NULL). */
typedef void (*xd_stream_finish_cb)(xd_stream *st, xd_cmd *cmd, void *ud);

/* On success takes over cmd's reference and the two read ends (non-blocking; -1 allowed);
 * on failure (NULL) the caller keeps them. With cmd
 * NULL the stream only sends what was emitted before xd_stream_respond. */
xd_stream *xd_stream_new(xd_cmd *cmd, int out_fd, int err_fd, bool binary,
                         moat_execd_line_mode mode);
void xd_stream_on_finish(xd_stream *st, xd_stream_finish_cb cb, void *ud);
/* Whether a reader leaving early terminates the command (default true). */
void xd_stream_set_terminate_on_close(xd_stream *st, bool on);
/* Queues an event (init, error, …) to be sent in order. */
void xd_stream_emit(xd_stream *st, const moat_execd_event *ev);
/* Marks the stream as complete after what is queued. */
void xd_stream_end(xd_stream *st);
/* Frees a stream that was never handed to xd_stream_respond (NULL is fine). */
void xd_stream_free(xd_stream *st);
/* Queues the 200 text/event-stream response; the response owns st from here. */
enum MHD_Result xd_stream_respond(struct MHD_Connection *conn, xd_stream *st);

#endif
