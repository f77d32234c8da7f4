/* The fake moatd the libmoat client programs share (test_client_conn, _calls, _interactive):
 * a real Unix or TCP socket served by a thread in this process (fake_server.h), whose handler
 * answers what these tests call. Each test starts its own fake. Include after moat_test.h. */
#ifndef MOAT_TEST_CLIENT_FIXTURE_H
#define MOAT_TEST_CLIENT_FIXTURE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "client/client.h"
#include "fake_server.h"

#define WINDOW     FAKE_WINDOW
#define OUT_CHUNKS 12u /* 12 × 16 KiB = 3 windows: the server needs updates */
#define CHUNK      (16u * 1024u)

/* What the fake's Files/Write saw, and the file it keeps (one, whatever the path). */
#define WRITES_MAX 64
typedef struct write_seen {
    uint64_t offset;
    size_t len;
    uint32_t mode;
    char path[64];
    char session[64];
} write_seen;
#define WFILE_MAX (1u << 20)
extern write_seen writes[WRITES_MAX];
extern size_t nwrites;
extern uint8_t wfile[WFILE_MAX];
extern size_t wfile_len;
extern bool wfile_exists;

/* What the fake's Exec/Interactive saw. It answers by the start's command:
 * "echo" echoes stdin, reports resizes and signals as output and exits 0 at
 * close_stdin, granting credit back for each message; "slow" grants only once
 * the client has no room for another message like its last, after an output
 * "full"; "hold" never grants; "drop" closes the connection at the first stdin;
 * "overgrant" grants past the window's limit at once. */
typedef struct interactive_seen {
    char command[32], session[64], cwd[64], term[32], attach[32];
    bool tty, has_size;
    uint32_t rows, cols;
    uint64_t after_offset;
    uint64_t stdin_bytes; /* "slow" and "hold" check them against stdin_byte() */
    bool stdin_pattern_ok;
    uint64_t sequence;
} interactive_seen;
extern interactive_seen iseen;

/* The i-th byte of the stdin pattern the "slow" and "hold" commands check. */
uint8_t stdin_byte(uint64_t i);

/* Start the fake with the shared handler on a Unix socket or on 127.0.0.1. */
void start_unix(fake *s);
void start_tcp(fake *s);
/* Stops the fake, which must have seen nothing wrong. */
void stop(fake *s);
/* A client connected to s's Unix socket with token "tok"; the caller closes it. */
moat_client *connect_unix(fake *s);

#endif
