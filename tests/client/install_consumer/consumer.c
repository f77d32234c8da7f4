/* A program built only against an installed libmoat (tests/client/test_install.c builds
 * it with pkg-config and with find_package(moat)): creates a session for a chat, runs
 * `echo hi` streamed, checks its output and exit code, and stops the session.
 * usage: consumer ADDR CHAT_UUID; exits 0 when all of it worked. */
#include <stdio.h>
#include <string.h>

#include <moat/client.h>

#define DEADLINE_MS 120000u

static int failed(const char *what, moat_err err, const moat_status *st)
{
    fprintf(stderr, "consumer: %s: %s: %s %s (%s)\n", what, moat_strerror(err),
            moat_code_name(st->code), st->message, st->reason);
    return 1;
}

/* Runs `echo hi` and checks that the stream says "hi\n" on stdout and exit 0. */
static int echo_hi(moat_client *c, const char *session_id)
{
    moat_run_command_req req = {.session_id = session_id, .command = "echo hi"};
    moat_call *call;
    moat_status st;
    moat_err err = moat_exec_run(c, &req, DEADLINE_MS, &call, &st);
    if (err != MOAT_OK)
        return failed("exec", err, &st);
    char out[64] = "";
    size_t out_len = 0;
    bool exited = false;
    int32_t code = -1;
    moat_exec_event ev;
    while ((err = moat_exec_next(call, -1, &ev)) != MOAT_E_CLOSED) {
        if (err != MOAT_OK)
            continue;
        if (ev.kind == MOAT_EXEC_OUTPUT && ev.stream == MOAT_EXEC_STDOUT &&
            out_len + ev.data.len < sizeof out) {
            memcpy(out + out_len, ev.data.data, ev.data.len);
            out_len += ev.data.len;
        } else if (ev.kind == MOAT_EXEC_EXIT) {
            exited = ev.exit_known;
            code = ev.exit_code;
        }
    }
    st = *moat_call_status(call);
    moat_call_free(call);
    if (st.code != MOAT_CODE_OK)
        return failed("exec stream", MOAT_E_REMOTE, &st);
    out[out_len] = '\0';
    if (strcmp(out, "hi\n") != 0 || !exited || code != 0) {
        fprintf(stderr, "consumer: echo hi gave \"%s\", exit %d\n", out, code);
        return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: consumer ADDR CHAT_UUID\n");
        return 2;
    }
    moat_client *c;
    moat_status st;
    moat_client_options opts = {.client_name = "install-consumer"};
    moat_err err = moat_client_connect(argv[1], &opts, &c, &st);
    if (err != MOAT_OK)
        return failed("connect", err, &st);
    moat_session_create_req create = {.chat_id = argv[2], .ttl_seconds = 300};
    moat_session session;
    err = moat_session_create(c, &create, DEADLINE_MS, &session, &st);
    if (err != MOAT_OK) {
        moat_client_close(c);
        return failed("create", err, &st);
    }
    char session_id[MOAT_UUID_STR_LEN];
    moat_slice_copy(session.session_id, session_id, sizeof session_id);
    int rc = echo_hi(c, session_id);
    bool stopped = false;
    err = moat_session_stop(c, session_id, DEADLINE_MS, &stopped, &st);
    if (err != MOAT_OK || !stopped)
        rc = err != MOAT_OK ? failed("stop", err, &st) : 1;
    moat_client_close(c);
    if (rc == 0)
        printf("consumer: session %s ran echo hi and stopped\n", session_id);
    return rc;
}
