/* Test helpers: start moat-execd, talk to it with libcurl, decode its event streams. */
#ifndef MOAT_TEST_XD_CLIENT_H
#define MOAT_TEST_XD_CLIENT_H

#include "common/json.h"

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

typedef struct xd_target {
    char unix_path[256]; /* non-empty: talk over this socket */
    char base[128];      /* "http://127.0.0.1:port" or "http://localhost" */
    const char *token;   /* sent as X-EXECD-ACCESS-TOKEN when non-NULL */
} xd_target;

typedef struct xd_resp {
    long status;
    char *body;
    size_t len;
    char *headers;
} xd_resp;

/* One request. body may be NULL; extra_header may be NULL ("Name: value"). */
xd_resp xd_http(const xd_target *t, const char *method, const char *path, const char *body,
                const char *extra_header);
/* One request with a body of len bytes (any bytes; sent as is, no Content-Type unless
 * extra_header gives one). body may be NULL. */
xd_resp xd_http_body(const xd_target *t, const char *method, const char *path, const void *body,
                     size_t len, const char *extra_header);
void xd_resp_free(xd_resp *r);
/* Value of a response header (case-insensitive), malloc'd, or NULL. */
char *xd_header(const xd_resp *r, const char *name);
/* The "code" of a JSON error body, static buffer. */
const char *xd_error_code(const xd_resp *r);
/* The "message" of a JSON error body, static buffer. */
const char *xd_error_message(const xd_resp *r);
/* The body parsed as JSON (MOAT_JSON_NUL_REJECT), NULL if it is not; free with cJSON_Delete. */
cJSON *xd_json(const xd_resp *r);
/* Integer member key of obj, or -1000000 when missing or not an integer. */
int64_t xd_json_i64(const cJSON *obj, const char *key);
/* Number member key of obj, or -1 when missing or not a number. */
double xd_json_num(const cJSON *obj, const char *key);

/* A decoded command stream. */
typedef struct xd_run {
    long status;
    char id[64];
    char out[1 << 16];
    size_t out_len;
    char err[1 << 16];
    size_t err_len;
    char out_lines[64][256]; /* line-mode stdout texts, in order */
    size_t nlines;
    bool complete;
    bool error;
    char evalue[256];
    char traceback[256];
    int pings;
    bool binary_confirmed;
    char types[2048]; /* event types joined with ',' */
} xd_run;

/* POST path with a JSON body and decode the stream (line or binary mode). */
void xd_stream(const xd_target *t, const char *path, const char *json, bool binary, xd_run *out);
/* Exit code per the SDK rule: evalue if error, 0 if complete, else -1000. */
int xd_exit_code(const xd_run *r);

/* Opt-in wrapper: with MOAT_DAEMON_WRAPPER set (e.g. "valgrind --error-exitcode=99
 * --leak-check=full --errors-for-leak-kinds=definite,indirect --quiet"), moat-execd is
 * started as `$MOAT_DAEMON_WRAPPER moat-execd args…` through /bin/sh, which word-splits
 * the prefix and execs it, so the pid is still the daemon's and the wrapper's report
 * goes to the test's stderr. xd_start and xd_stop then wait xd_slowdown() times longer.
 * Returns true when wrapped. */
bool xd_wrapped(void);
/* 1 normally, 10 when wrapped. */
int xd_slowdown(void);

/* Starts moat-execd with the given extra args (NULL-terminated), listening on
 * unix:<dir>/execd.sock and 127.0.0.1:<free port>; waits until /ping answers. */
typedef struct xd_proc {
    pid_t pid;
    char dir[128];
    xd_target unix_t, tcp_t;
} xd_proc;
bool xd_start(xd_proc *p, const char *const *extra_args);
/* SIGTERM and wait; returns the exit status (waitpid form) or -1. MOAT_TEST_INJECT=daemon_exit
 * sends SIGKILL instead. */
int xd_stop(xd_proc *p);
long xd_rss_kb(pid_t pid);

#endif
