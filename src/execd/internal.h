/* moat-execd internals shared by the daemon's files (not a public API). */
#ifndef MOAT_EXECD_INTERNAL_H
#define MOAT_EXECD_INTERNAL_H

#include "execd/execd.h"

#include "execd_json.h"

#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <sys/types.h>

#define XD_ID_MAX 40

typedef struct xd_session xd_session;

/* A command (foreground, background or a session run). Lives in the table; streams and
 * handlers hold references. Fields below `lock` are guarded by xd.lock. */
typedef struct xd_cmd {
    char id[XD_ID_MAX];
    char *command;
    bool background;
    pid_t pid;
    bool running;
    bool start_failed;
    int exit_code;   /* valid once !running */
    int term_sig;    /* non-zero when killed by a signal */
    char error[256]; /* Go-style error text: "exit status 3", "signal: killed", … */
    int64_t started_ms, finished_ms;
    uint64_t start_ns;
    uint64_t deadline_ns;   /* timeout (monotonic); 0 = none or already acted on */
    bool timed_out;         /* the timeout killed it (reported as the error's cause) */
    uint64_t kill_at_ns;    /* SIGTERM escalation to SIGKILL; 0 = none */
    uint64_t expire_ns;     /* removal from the table after retention */
    int notify_r, notify_w; /* a byte is written to notify_w when the process ends */
    char *log_path;         /* background: merged output file */
    int refs;
    xd_session *session;
    struct xd_cmd *next;
} xd_cmd;

struct xd_session {
    char id[MOAT_UUID_STR_LEN];
    char **env; /* NULL-terminated "K=V" strings */
    char *cwd;
    bool busy;
    bool deleted; /* removed from the list while a run was streaming; the run frees it */
    xd_cmd *current;
    xd_session *next;
};

typedef struct xd_config {
    const char *token;
    char state_dir[512];
    /* Where command logs, session scripts and upload temporaries go: state_dir, or with
     * run_as its user/ subdirectory, owned by that user. */
    char work_dir[600];
    bool run_as; /* commands, sessions and file operations run as run_uid:run_gid */
    uid_t run_uid;
    gid_t run_gid;
    const char *shell; /* "bash" path or "sh" */
    bool shell_is_bash;
    uint64_t retention_ns;
    size_t max_commands;
    uint64_t ping_ns;
    uint64_t pty_idle_ns; /* a PTY session without a client is closed after this */
} xd_config;

typedef struct xd_globals {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    xd_cmd *cmds;
    size_t ncmds;
    xd_session *sessions;
    xd_config cfg;
    atomic_bool shutting_down; /* set by the signal thread, read by request threads */
} xd_globals;

extern xd_globals xd;

/* ---- proc.c ---- */
typedef struct xd_spawn {
    char *const *argv;
    char *const *envp;
    const char *cwd; /* NULL: inherit */
    bool with_stdin; /* in_fd is the child's stdin (else /dev/null) */
    int in_fd;
    int out_fd, err_fd; /* child's stdout/stderr; -1 → /dev/null */
    /* in_fd is a terminal: the child leads a new session with it as controlling terminal. */
    bool controlling_tty;
    bool set_ids;
    uid_t uid;
    gid_t gid;
    gid_t *groups;
    int ngroups;
} xd_spawn;

void xd_proc_init(void);
/* Makes the calling thread act as the run-as user for the file system: its effective ids (and so
 * its file system ids) become the user's, its effective capabilities go (a no-op without
 * run_as). Real and saved ids stay root's. */
void xd_become_run_as_fs(void);
/* Makes a command with a fresh id, in the table with refs = 2 (table + caller). NULL when
 * the table is full of running commands. */
xd_cmd *xd_cmd_new(const char *command, bool background, const char *id_or_null);
/* Starts the process in its own group. On failure returns -1 with err filled and the
 * command marked as finished with a failed start (exit code 255). */
int xd_cmd_start(xd_cmd *c, const xd_spawn *sp, uint64_t timeout_ms, char *err, size_t errlen);
/* Marks a command that could not be started (exit code 255, error text err). */
void xd_cmd_fail(xd_cmd *c, const char *err);
void xd_cmd_unref(xd_cmd *c);
xd_cmd *xd_cmd_find(const char *id); /* with a reference, or NULL */
/* SIGTERM to the group, SIGKILL after grace_ms if it still runs (asynchronously). */
void xd_cmd_terminate(xd_cmd *c, uint64_t grace_ms);
/* Interrupt as the reference: SIGTERM, wait up to 3 s, SIGKILL. Blocks. */
void xd_cmd_interrupt(xd_cmd *c);
void xd_signal_thread_start(int shutdown_fd);
void xd_housekeeping_start(void);
/* Ends and joins the two threads above; the last step of shutdown. */
void xd_threads_stop(void);
/* SIGTERM to every running group, then SIGKILL to what is left after grace_ms. */
void xd_terminate_all(uint64_t grace_ms);
/* Builds the command environment: execd's, EXECD_ENVS file, then overrides (may be NULL).
 * NULL-terminated malloc'd array of malloc'd strings; free with xd_env_free. */
char **xd_env_build(char *const *base, const cJSON *overrides);
void xd_env_free(char **env);
const char *xd_env_get(char *const *env, const char *name);
char **xd_env_set(char **env, const char *name, size_t nlen, const char *value, size_t vlen);
char **xd_env_dup(char *const *env);

/* ---- http.c ---- */
/* POST /files/write: the target is opened at the first piece of the body (or at its end
 * when it is empty); an error is kept and answered once the whole body has been read. */
typedef struct xd_write {
    bool started;
    int fd; /* -1 when closed or never opened */
    char *path;
    uint64_t offset, written;
    unsigned status; /* non-zero: the error to answer */
    char code[32];
    char message[1024];
} xd_write;

typedef struct xd_req {
    moat_buf body;
    bool body_too_big;
    struct MHD_PostProcessor *pp;
    moat_execd_upload *upload;
    bool upload_bad; /* not multipart/form-data, or MHD's parser rejected the body */
    xd_write write;
    struct xd_pty_attach *pty_attach; /* GET /pty/{id}/ws until the upgrade (pty.c) */
    struct xd_pty_upload *pty_stdin;  /* POST /pty/{id}/stdin holding the pipe (pty_stdin.c) */
    bool handled;
} xd_req;

enum MHD_Result xd_respond_error(struct MHD_Connection *conn, unsigned status, const char *code,
                                 const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/* Sends body (taken over and freed) compact; a NULL body (a failed build) is a 500. */
enum MHD_Result xd_respond_json(struct MHD_Connection *conn, unsigned status, cJSON *body);
enum MHD_Result xd_respond_empty(struct MHD_Connection *conn, unsigned status);
/* The router's answer to a path it does not know (the reference's text 404). */
enum MHD_Result xd_respond_not_found(struct MHD_Connection *conn);
/* Expands a path with execd's environment; on failure answers 400/404 and returns NULL. */
char *xd_expand(const char *in, char *err, size_t errlen);

/* ---- command.c (what it shares with session.c, the bash sessions: command_internal.h) ---- */
/* Parses the request body as a JSON object; answers 400 and returns NULL otherwise. */
cJSON *xd_parse_body(struct MHD_Connection *conn, xd_req *r, bool allow_empty,
                     enum MHD_Result *ret);
typedef enum xd_field_type { F_OBJECT, F_STRING, F_INTEGER, F_BOOLEAN } xd_field_type;
/* Optional field of a given JSON type; null counts as absent. Answers 400 on a type
 * mismatch. */
bool xd_field(struct MHD_Connection *conn, const cJSON *obj, const char *key, xd_field_type type,
              const cJSON **out, enum MHD_Result *ret);
/* A string field that xd_field() accepted, or NULL when absent or empty. */
const char *xd_nonempty(const cJSON *v);
enum MHD_Result xd_command_route(struct MHD_Connection *conn, xd_req *r, const char *url,
                                 const char *method, bool *matched);
/* RFC 3339 with nanoseconds, trailing zeros trimmed, local offset ("Z" for UTC). */
void xd_format_time(int64_t sec, long nsec, char out[64]);

/* ---- files.c and files_transfer.c (what they share with each other: files_internal.h) ---- */
enum MHD_Result xd_files_route(struct MHD_Connection *conn, xd_req *r, const char *url,
                               const char *method, bool *matched);
bool xd_files_is_upload(const char *url, const char *method);
enum MHD_Result xd_files_upload_data(struct MHD_Connection *conn, xd_req *r, const char *data,
                                     size_t len);
/* POST /files/write (moat extension): the raw body written at an offset as it arrives. */
bool xd_files_is_write(const char *url, const char *method);
enum MHD_Result xd_files_write_data(struct MHD_Connection *conn, xd_req *r, const char *data,
                                    size_t len);
/* Closes what a /files/write request left open (a body cut short). */
void xd_files_write_end(xd_req *r);

/* ---- metrics.c ---- */
enum MHD_Result xd_metrics(struct MHD_Connection *conn, bool watch);

/* ---- pty.c: OpenSandbox's /pty API (PTY and pipe sessions over a WebSocket) ---- */
enum MHD_Result xd_pty_route(struct MHD_Connection *conn, xd_req *r, const char *url,
                             const char *method, bool *matched);
/* The end of a GET /pty/{id}/ws request, upgraded or not. */
void xd_pty_request_done(xd_req *r);
/* Closes every session and joins their threads (shutdown, after xd_terminate_all). */
void xd_pty_shutdown(void);
/* POST /pty/{id}/stdin (moat extension, pty_stdin.c): a pipe-mode session's stdin as a
 * streamed body. begin runs once the headers are in and may answer at once (unknown session,
 * not pipe mode, another uploader, stdin closed); data writes each piece into the pipe,
 * waiting while it is full; done answers at the body's end; end gives the pipe back to the
 * session when the body was cut short. */
bool xd_pty_is_stdin(const char *url, const char *method);
enum MHD_Result xd_pty_stdin_begin(struct MHD_Connection *conn, xd_req *r, const char *url);
enum MHD_Result xd_pty_stdin_data(struct MHD_Connection *conn, xd_req *r, const char *data,
                                  size_t len);
enum MHD_Result xd_pty_stdin_done(struct MHD_Connection *conn, xd_req *r);
void xd_pty_stdin_end(xd_req *r);

/* ---- pty_stdin_sock.c: the stdin socket (moat extension, docs/execd.md "Stdin as a
 * descriptor"), beside the HTTP socket at http_path: "<http_path>.stdin". ---- */
/* Listens and starts the thread that accepts; false (said on stderr) when it cannot. */
bool xd_stdin_sock_start(const char *http_path);
/* Stops accepting and removes the socket; loans under way end with their sessions. */
void xd_stdin_sock_stop(void);

/* ---- main.c ---- */
/* got (NULL: none) is the access token execd was given, or execd was given none. */
bool xd_token_ok(const char *got);
/* mkdir -p; errors are left for the caller's later use of the path to report. */
void xd_mkdir_p(char *path, mode_t mode);
enum MHD_Result xd_handle(void *cls, struct MHD_Connection *conn, const char *url,
                          const char *method, const char *version, const char *upload_data,
                          size_t *upload_data_size, void **con_cls);
void xd_request_done(void *cls, struct MHD_Connection *conn, void **con_cls,
                     enum MHD_RequestTerminationCode toe);

#endif
