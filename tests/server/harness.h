/* Test harness: starts the real moatd binary and talks raw frames to it
 * through moat_wire over a real socket. Shared by tests/server and tests/e2e. */
#ifndef MOAT_TEST_HARNESS_H
#define MOAT_TEST_HARNESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <protobuf-c/protobuf-c.h>

#include "ports.h"
#include "wire/wire.h"

typedef struct moatd_proc {
    pid_t pid;
    int port;
    int metrics_port;
    int grpc_port;
    char state_dir[256];
    char log_path[300];
} moatd_proc;

/* Opt-in wrapper: with MOAT_DAEMON_WRAPPER set (e.g. "valgrind --error-exitcode=99
 * --leak-check=full --errors-for-leak-kinds=definite,indirect --quiet"), moatd is
 * started as `$MOAT_DAEMON_WRAPPER moatd args…` through /bin/sh, which word-splits the
 * prefix and execs it, so the pid is still the daemon's. The harness then waits longer
 * (moatd_slowdown()), and an exit status other than 0 (valgrind's --error-exitcode)
 * dumps the log, where the wrapper's report went. Returns the prefix or "". */
const char *moatd_wrapper(void);
/* 1 normally, 10 when wrapped: multiplies the harness's waits. */
int moatd_slowdown(void);

/* The build directory whose moatd the harness runs: $MOAT_BUILD_DIR (ctest sets it), else the
 * one this harness was built in, so that a test binary also runs by itself, from anywhere. */
const char *moatd_build_dir(void);
/* Starts moatd from moatd_build_dir()'s src/server/moatd with extra "--key=value"
 * arguments (NULL-terminated), on a free loopback port, and waits until it
 * accepts connections. With docker false it points at a dead Docker socket and
 * an empty bundle dir; with docker true its image is the minimal moat-sandbox:latest
 * unless extra says otherwise; "%PORT%" in an extra argument is replaced by the port it
 * listens on. Returns false (after printing its log) on failure. */
bool moatd_start(moatd_proc *p, bool docker, const char *const *extra);
/* moatd_start with another moatd binary (an installed one) instead of the build's. */
bool moatd_start_bin(moatd_proc *p, const char *bin, bool docker, const char *const *extra);
/* SIGTERM, wait (bounded), SIGKILL if needed. Returns its exit status (128 + signal when
 * killed) after dumping the log if that is not 0, or -1. MOAT_TEST_INJECT=daemon_exit sends
 * SIGKILL at once. */
int moatd_stop(moatd_proc *p);
/* A group's last test, cmocka_unit_test_prestate(test_moatd_exits_0_on_sigterm, &proc): stops
 * moatd, which must exit 0 (under valgrind, MOAT_DAEMON_WRAPPER: without a memory error or a
 * leak). */
void test_moatd_exits_0_on_sigterm(void **state);
/* Removes a state dir the harness made (only those under /tmp/moat-srvtest-). */
void moatd_remove_dir(const char *dir);
/* Waits (bounded, timeout_ms times moatd_slowdown()) for it to exit by itself;
 * its exit status, 128 + signal, or -1 on timeout. */
int moatd_wait(moatd_proc *p, int timeout_ms);
void moatd_dump_log(const moatd_proc *p);
/* Whether a line of its log contains needle. */
bool moatd_log_contains(const moatd_proc *p, const char *needle);

/* Removes (docker rm -f) every container whose name contains prefix, on the default engine. */
void docker_remove_prefixed(const char *prefix);

/* A raw client connection. */
typedef struct raw_conn {
    int fd;
    moat_wire_decoder dec;
    uint8_t *body; /* grows to the largest frame seen */
    size_t body_len, body_cap;
    uint8_t inbuf[16384];
    size_t in_len, in_off;
    uint32_t next_stream;
} raw_conn;

raw_conn *raw_connect(int port);
/* Same from another loopback address (127.0.0.2, …), as a second host would. */
raw_conn *raw_connect_from(int port, const char *source_ip);
/* Same over a Unix socket. */
raw_conn *raw_connect_unix(const char *path);
void raw_close(raw_conn *c);
bool raw_send_bytes(raw_conn *c, const void *data, size_t len);
bool raw_send(raw_conn *c, const moat_frame *f);
/* Next frame, decoded into *f (slices point into c->body, valid until the
 * next call). Returns 1 on a frame, 0 on EOF, -1 on timeout or error. */
int raw_recv(raw_conn *c, moat_frame *f, int timeout_ms);
/* Like raw_recv but skips frames of other streams (and Pongs) until one of
 * stream_id arrives. */
int raw_recv_stream(raw_conn *c, uint32_t stream_id, moat_frame *f, int timeout_ms);
/* Sends Hello with token (NULL = none) and reads the answer into *ack. */
int raw_hello(raw_conn *c, const char *token, moat_frame *ack);
/* raw_connect and a hello with token (NULL = none) that got its HelloAck; NULL otherwise. */
raw_conn *raw_connect_ready(int port, const char *token);
/* Opens a call on a new stream id and sends req (packed); returns the id. */
uint32_t raw_call(raw_conn *c, const char *method, uint64_t deadline_ms,
                  const ProtobufCMessage *req);
/* Runs a unary call to its End. The response (if any) is unpacked with
 * `resp_desc` into *resp (free with protobuf_c_message_free_unpacked).
 * Returns the End's code, or -1 on a transport failure; reason copied out. */
int raw_unary(raw_conn *c, const char *method, const ProtobufCMessage *req,
              const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **resp, char *reason,
              size_t reason_len);

/* What a CreateSession answered: its End's code (-1 for a transport failure) and reason, and
 * the session's id and owner_address. */
typedef struct raw_created {
    int code;
    char reason[64];
    char session_id[64];
    char owner[300];
} raw_created;
/* One CreateSession for chat on a new connection to port with token (NULL = none); *took_ns
 * (may be NULL) gets the call's time, connection excluded. */
raw_created raw_create(int port, const char *token, const char *chat, bool force_new,
                       uint64_t *took_ns);
/* The same with placed_by (NULL: none), as a forwarding node, or a client, sets it. */
raw_created raw_create_placed(int port, const char *token, const char *chat, bool force_new,
                              const char *placed_by, uint64_t *took_ns);

/* The first MiB of a file as a NUL-terminated string (free it); "" when it cannot be read. */
char *slurp_file(const char *path);

/* GET path from 127.0.0.1:port; body copied into out (NUL-terminated). */
bool http_get(int port, const char *path, char *out, size_t cap);

/* The value of the metric line `name value` on moatd's /metrics, or -1. */
long long metric_value(int metrics_port, const char *name);
/* moat_hellos_refused_total{reason="<reason>"} on its /metrics, or -1. */
long long moatd_hellos_refused(const moatd_proc *p, const char *reason);
/* VmRSS of pid in KiB, or -1. */
long proc_rss_kb(pid_t pid);
/* Starts RunCommand(cmd) in session sid on a new stream; returns its id (0 on failure). */
uint32_t raw_start_run(raw_conn *c, const char *sid, const char *cmd, uint64_t timeout_ms);
/* Runs cmd `total` times in sid, at most `parallel` calls open at once, reading every
 * stream to its End and granting window back for each message; tick(ud) (may be NULL)
 * runs after every frame. Returns how many ended OK, or -1 on a transport failure. */
int raw_run_many(raw_conn *c, const char *sid, const char *cmd, int total, int parallel,
                 void (*tick)(void *ud), void *ud);

#endif
