/* Internal to the bridge module. */
#ifndef MOAT_BRIDGE_INTERNAL_H
#define MOAT_BRIDGE_INTERNAL_H

#include "bridge/bridge.h"
#include "common/json.h"

#include <curl/curl.h>

#define MOAT_BRIDGE_DEFAULT_MAX_LINE (1u << 20)
#define MOAT_BRIDGE_MAX_BINARY       65536u
/* Receive buffer per transfer: download chunks and write callbacks are at most this. */
#define MOAT_BRIDGE_CHUNK (64u * 1024u)
/* Receive buffer of a run's stream: two 64 KiB binary events per recv and write callback,
 * most arriving whole (handed out without the decoder's gathering copy). 512 KiB streamed
 * no faster in bench/e2e and cost a paused transfer four times the memory. */
#define MOAT_BRIDGE_EXEC_CHUNK (128u * 1024u)
/* Longest body text kept in an API error status. */
#define MOAT_BRIDGE_ERROR_BODY_MAX 1024u

typedef struct bridge_req bridge_req;

/* Called with the bytes of a 2xx body; returns n, 0 to fail, or CURL_WRITEFUNC_PAUSE. */
typedef size_t (*bridge_write_fn)(bridge_req *r, const char *p, size_t n);
/* The transfer ended (rc from curl, or CURLE_ABORTED_BY_CALLBACK when cancelled).
 * The request is freed right after. */
typedef void (*bridge_done_fn)(bridge_req *r, CURLcode rc);

struct bridge_req {
    moat_bridge *b;
    CURL *easy;
    struct curl_slist *hdrs;
    char *post;
    curl_mime *mime;
    char errbuf[CURL_ERROR_SIZE];
    char *unix_socket;     /* execd's socket path, or NULL for TCP */
    int socket_pin;        /* O_PATH descriptor of the socket file while connecting, or -1 */
    int connect_errno;     /* why open_unix_socket refused to connect, or 0 */
    char connect_why[256]; /* ... in words */
    long http_status;
    bool moat_binary;     /* response header X-Moat-Output: binary */
    bool has_tail_cursor; /* response header EXECD-COMMANDS-TAIL-CURSOR */
    uint64_t tail_cursor;
    moat_buf body;  /* collected body: JSON answers and error bodies */
    bool body_full; /* stopped collecting at the maximum */
    bool stop_ok;   /* the write callback stopped the transfer on purpose */
    bool cancelled;
    bool reap_pending;
    bool in_multi;
    bridge_write_fn write; /* NULL: collect the body */
    bridge_done_fn done;
    void *owner;
    bridge_req *next, *prev;
    bridge_req *reap_next;
};

struct moat_bridge {
    moat_bridge_config cfg;
    CURLM *multi;
    moat_bridge_socket_fn sock_fn;
    moat_bridge_timer_fn timer_fn;
    void *loop_ud;
    void *uv; /* libuv adapter state, or NULL */
    int in_curl;
    bridge_req *reqs;
    bridge_req *reap;
    struct moat_bridge_exec *execs;
    struct moat_bridge_terminal *terminals;
    uint64_t last_sweep_ns;
    bool freeing;
    bool unpause_pending;  /* a credit came while inside curl: resume after it */
    bool budget_waiters;   /* some transfer waits for the budget to have room */
    bool uploads_pending;  /* a terminal wants its stdin upload started (outside curl) */
    uint64_t rec_stamp;    /* next replay record's arrival number */
    size_t released_bytes; /* replay freed since the last malloc_trim */
};

/* A request to endpoint ep for `method` and `path` (already escaped, with its
 * query). json_body is copied. Returns NULL with *st set. */
bridge_req *moat__req_new(moat_bridge *b, const moat_bridge_endpoint *ep, const char *method,
                          const char *path, const char *json_body, moat_status *st);
/* Makes r a POST of raw bytes (application/octet-stream), chunked: its body is what read
 * gives (with ud) until it returns 0. */
void moat__req_chunked_body(bridge_req *r, curl_read_callback read, void *ud);
/* Adds it to the multi handle. On failure frees it and sets *st. */
moat_err moat__req_start(bridge_req *r, moat_status *st);
/* Frees a request that was never started. */
void moat__req_discard(bridge_req *r);
/* Stops it; its done callback runs (now, or right after the current curl call). */
void moat__req_cancel(bridge_req *r);
/* curl_easy_pause(CONT) guarded against re-entrancy. */
void moat__req_unpause(bridge_req *r);
/* The status for a finished request that did not succeed: transport error
 * or a non-2xx answer. */
void moat__req_fail_status(bridge_req *r, CURLcode rc, moat_status *st);
/* Escapes s for a URL path segment or query value; free with curl_free. */
char *moat__escape(const char *s);

/* Replay freed past which the sweep returns free heap pages to the system. */
#define MOAT_BRIDGE_TRIM_BYTES (8u << 20)

void moat__exec_free_all(moat_bridge *b);
/* malloc_trim once MOAT_BRIDGE_TRIM_BYTES of replay were freed since the last one. */
void moat__exec_trim(moat_bridge *b);
void moat__exec_sweep(moat_bridge *b, bool force);
/* Resumes the paused executions that may go on now. */
void moat__exec_unpause_all(moat_bridge *b);

/* Terminals (terminal.c): the bridge's list, and a socket event for one's write side, stdin
 * socket or lent pipe (true when fd was one). */
void moat__terminal_link(moat_bridge *b, struct moat_bridge_terminal *t);
void moat__terminal_unlink(moat_bridge *b, struct moat_bridge_terminal *t);
bool moat__terminal_socket_action(moat_bridge *b, int fd);
/* Stdin (terminal_stdin.c): gives up on a stdin socket that has not answered in time (the
 * upload is asked instead). */
void moat__terminal_sweep(moat_bridge *b);
/* Starts the stdin uploads terminals asked for from inside curl's callbacks. */
void moat__terminal_start_uploads(moat_bridge *b);
/* POST /pty {"command"?, "cwd"?}: session_id is the new terminal session's. */
moat_err moat_bridge_create_pty(moat_bridge *b, const moat_bridge_endpoint *ep, const char *command,
                                const char *cwd, moat_bridge_session_fn cb, void *ud,
                                moat_status *st);

moat_err moat__uv_set(moat_bridge *b, struct uv_loop_s *loop);
void moat__uv_release(moat_bridge *b);

#endif
