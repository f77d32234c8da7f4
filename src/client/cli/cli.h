/* What main.c (arguments, dispatch, the one-call commands: sessions, cp, health) and exec.c
 * (running commands: exec streamed, exec -i/-t and shell, with the local terminal) share.
 * Inside the CLI only; it uses libmoat's public API alone. */
#ifndef MOAT_CLI_CLI_H
#define MOAT_CLI_CLI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "moat/client.h"

typedef struct cli {
    moat_client *client; /* owned: main closes it */
    bool json;
    size_t max_frame; /* the server's max_frame_size */
} cli;

/* main.c. Prints st on stderr as the CLI's error line; returns the exit status 1. */
int cli_report(const moat_status *st);
/* cli_report of a status made from code, reason and msg. */
int cli_fail(moat_code code, const char *reason, const char *msg);

/* exec.c. The command line for bash -c, in a buffer of max_frame bytes the caller
 * frees: one word is a shell command as written ('ls | wc'); several are an
 * argument vector, quoted so bash -c sees the same words; none is "". NULL
 * (reported, *rc set) when it does not fit or memory is short. */
char *cli_command_line(cli *c, int argc, char **argv, int *rc);
/* `exec` without -i or -t: output streamed, the exit code the remote's (130 when SIGINT or
 * SIGTERM cancelled it). env (env_count entries) and argv are borrowed for the call. */
int cmd_exec(cli *c, const char *session, const char *cwd, uint64_t timeout_ms, const moat_kv *env,
             size_t env_count, int argc, char **argv);
/* `exec -i`/`-t` and `shell`: stdin and the terminal go to the remote process
 * while its output comes back; the exit code is the remote's. Every way out
 * passes the terminal's restore. */
int cmd_interactive(cli *c, const char *session, const char *cwd, bool forward_stdin, bool tty,
                    const char *command);

#endif
