/* The box around a sandbox, tried as an attacker would, against the real moatd, dockerd and
 * moat-execd: what a sandbox writes gives nobody on the host more access; commands run
 * unprivileged and cannot reach execd; a sandbox cannot redirect moatd to another sandbox or to
 * the engine. Each attack also checks that the sessions next to it kept answering. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <grp.h>
#include <unistd.h>

#include "moat_test.h"

#include "harness.h"
#include "local_user.h"
#include "moat/v1/exec.pb-c.h"
#include "moat/v1/sandbox.pb-c.h"

static char prefix_default[64], prefix_root[64];
static moatd_proc unprivileged_moatd; /* sandbox_user at its default */
static moatd_proc root_moatd;         /* sandbox_user=root: a sandbox that can rewrite /run/moat */
static char *extra_default[8], *extra_root[8];
static char arg_prefix_default[96], arg_prefix_root[96];

static int setup(void **state)
{
    (void)state;
    snprintf(prefix_default, sizeof(prefix_default), "moat-sec%d-u-", (int)getpid());
    snprintf(prefix_root, sizeof(prefix_root), "moat-sec%d-r-", (int)getpid());
    snprintf(arg_prefix_default, sizeof(arg_prefix_default), "--container_name_prefix=%s",
             prefix_default);
    snprintf(arg_prefix_root, sizeof(arg_prefix_root), "--container_name_prefix=%s", prefix_root);
    char *d[] = {arg_prefix_default, "--log_level=info", NULL};
    char *r[] = {arg_prefix_root, "--sandbox_user=root", "--log_level=info", NULL};
    memcpy(extra_default, d, sizeof(d));
    memcpy(extra_root, r, sizeof(r));
    if (!moatd_start(&unprivileged_moatd, true, (const char *const *)extra_default))
        return -1;
    if (!moatd_start(&root_moatd, true, (const char *const *)extra_root))
        return -1;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    int rc1 = moatd_stop(&unprivileged_moatd);
    int rc2 = moatd_stop(&root_moatd);
    docker_remove_prefixed(prefix_default);
    docker_remove_prefixed(prefix_root);
    moatd_remove_dir(unprivileged_moatd.state_dir);
    moatd_remove_dir(root_moatd.state_dir);
    return rc1 == 0 && rc2 == 0 ? 0 : -1;
}

static raw_conn *conn(const moatd_proc *p)
{
    raw_conn *c = raw_connect(p->port);
    assert_non_null(c);
    moat_frame ack;
    assert_int_equal(raw_hello(c, NULL, &ack), 1);
    return c;
}

/* A new session for a random chat; its ids are copied out. */
static void create(const moatd_proc *p, char session_id[MOAT_UUID_STR_LEN],
                   char chat_id[MOAT_UUID_STR_LEN], char container_id[80])
{
    raw_conn *c = conn(p);
    char chat[MOAT_UUID_STR_LEN];
    moat_uuid_generate(chat);
    Moat__V1__CreateSessionRequest req = MOAT__V1__CREATE_SESSION_REQUEST__INIT;
    req.chat_id = chat;
    req.ttl_seconds = 600;
    ProtobufCMessage *resp = NULL;
    char reason[64] = "";
    int code = raw_unary(c, "/moat.v1.Sandboxes/CreateSession", &req.base,
                         &moat__v1__sandbox_session__descriptor, &resp, reason, sizeof(reason));
    if (code != MOAT_CODE_OK) {
        moatd_dump_log(p);
        fail_msg("CreateSession: code %d reason %s", code, reason);
    }
    Moat__V1__SandboxSession *s = (Moat__V1__SandboxSession *)resp;
    snprintf(session_id, MOAT_UUID_STR_LEN, "%s", s->session_id);
    snprintf(chat_id, MOAT_UUID_STR_LEN, "%s", s->chat_id);
    snprintf(container_id, 80, "%s", s->container_id);
    protobuf_c_message_free_unpacked(resp, NULL);
    raw_close(c);
}

typedef struct run_out {
    int end_code; /* the call's status */
    char end_reason[96];
    bool has_exit;
    int exit_code;
    char out[8192]; /* stdout and stderr, in arrival order, cut at the size */
    size_t out_len;
} run_out;

static void grant(raw_conn *c, uint32_t id, uint32_t n)
{
    moat_frame w = {0};
    w.stream_id = id;
    w.kind = MOAT_FRAME_WINDOW_UPDATE;
    w.u.window_update.increment = n;
    raw_send(c, &w);
}

/* Runs cmd to the call's End on a connection of its own. */
static void run_on(const moatd_proc *p, const char *sid, const char *cmd, run_out *r)
{
    memset(r, 0, sizeof(*r));
    r->end_code = -1;
    raw_conn *c = conn(p);
    Moat__V1__RunCommandRequest req = MOAT__V1__RUN_COMMAND_REQUEST__INIT;
    req.session_id = (char *)sid;
    req.command = (char *)cmd;
    uint32_t id = raw_call(c, "/moat.v1.Exec/RunCommand", 0, &req.base);
    for (;;) {
        moat_frame f;
        if (raw_recv_stream(c, id, &f, 60000) != 1)
            break;
        if (f.kind == MOAT_FRAME_MESSAGE) {
            Moat__V1__ExecEvent *ev = moat__v1__exec_event__unpack(NULL, f.u.message.payload.len,
                                                                   f.u.message.payload.data);
            if (ev == NULL)
                break;
            grant(c, id, (uint32_t)f.u.message.payload.len);
            if (ev->kind_case == MOAT__V1__EXEC_EVENT__KIND_OUTPUT) {
                size_t n = ev->output->data.len;
                if (n > sizeof(r->out) - 1 - r->out_len)
                    n = sizeof(r->out) - 1 - r->out_len;
                memcpy(r->out + r->out_len, ev->output->data.data, n);
                r->out_len += n;
            } else if (ev->kind_case == MOAT__V1__EXEC_EVENT__KIND_EXIT &&
                       ev->exit->exit_code != NULL &&
                       ev->exit->exit_code->value_case == MOAT__V1__EXIT_CODE__VALUE_CODE) {
                r->has_exit = true;
                r->exit_code = ev->exit->exit_code->code;
            }
            moat__v1__exec_event__free_unpacked(ev, NULL);
        } else if (f.kind == MOAT_FRAME_END) {
            r->end_code = (int)f.u.end.code;
            size_t n = f.u.end.reason.len < sizeof(r->end_reason) - 1 ? f.u.end.reason.len
                                                                      : sizeof(r->end_reason) - 1;
            memcpy(r->end_reason, f.u.end.reason.data, n);
            break;
        }
    }
    r->out[r->out_len] = '\0';
    raw_close(c);
}

/* cmd must succeed (status OK, exit 0); its output is returned in r. */
static void run_ok(const moatd_proc *p, const char *sid, const char *cmd, run_out *r)
{
    run_on(p, sid, cmd, r);
    if (r->end_code != MOAT_CODE_OK || !r->has_exit || r->exit_code != 0)
        fail_msg("`%s` in %s: status %d (%s), exit %d, output: %s", cmd, sid, r->end_code,
                 r->end_reason, r->exit_code, r->out);
}

/* The session still answers, from its own container, with its workspace in place. */
static void assert_still_serving(const moatd_proc *p, const char *sid, const char *container_id)
{
    run_out r;
    run_ok(p, sid, "hostname; ls /workspace/chat >/dev/null && echo workspace-ok", &r);
    char want[32];
    snprintf(want, sizeof(want), "%.12s\nworkspace-ok\n", container_id);
    assert_string_equal(r.out, want);
}

static bool contains(const char *hay, const char *needle)
{
    return strstr(hay, needle) != NULL;
}

/* Sandbox commands run as the sandbox user, not root, and cannot touch execd: no signal, no
 * trace, no environment, no socket; the workspace is theirs. */
static void test_commands_are_unprivileged_and_cannot_reach_execd(void **state)
{
    (void)state;
    char sid[MOAT_UUID_STR_LEN], chat[MOAT_UUID_STR_LEN], cid[80];
    create(&unprivileged_moatd, sid, chat, cid);
    run_out r;
    run_ok(&unprivileged_moatd, sid, "id -u; id -g; echo HOME=$HOME", &r);
    assert_string_equal(r.out, "1000\n1000\nHOME=/workspace/chat\n");
    /* No capability survives into a command. */
    run_ok(&unprivileged_moatd, sid, "grep -E '^Cap(Prm|Eff|Bnd|Amb)' /proc/self/status", &r);
    assert_true(contains(r.out, "CapPrm:\t0000000000000000"));
    assert_true(contains(r.out, "CapEff:\t0000000000000000"));
    assert_true(contains(r.out, "CapAmb:\t0000000000000000"));
    /* Each of these must fail: execd is PID 1 and root (not killable, traceable or readable),
     * its socket directory is closed to commands, and there are no device nodes (no
     * CAP_MKNOD). */
    static const char *const refused[] = {
        "kill -9 1",
        "kill -STOP 1",
        "cat /proc/1/environ",
        "head -c 16 /proc/1/mem",
        "ls /run/moat",
        "rm -f /run/moat/execd.sock",
        "ln -sf /etc/passwd /run/moat/execd.sock",
        "mknod /workspace/chat/null c 1 3",
    };
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
        run_on(&unprivileged_moatd, sid, refused[i], &r);
        if (r.end_code != MOAT_CODE_OK || !r.has_exit || r.exit_code == 0)
            fail_msg("`%s` was not refused: status %d, exit %d", refused[i], r.end_code,
                     r.exit_code);
    }
    /* The token is in no command's environment and not on execd's command line. */
    run_ok(&unprivileged_moatd, sid,
           "env | grep -c EXECD_ACCESS_TOKEN; tr '\\0' ' ' </proc/1/cmdline | grep -c -i token; "
           "true",
           &r);
    assert_string_equal(r.out, "0\n0\n");
    /* The workspace is the sandbox user's. */
    run_ok(&unprivileged_moatd, sid,
           "echo data >/workspace/chat/mine && mkdir -p /workspace/chat/d && "
           "stat -c '%u:%g %a' /workspace/chat /workspace/chat/mine",
           &r);
    assert_string_equal(r.out, "1000:1000 700\n1000:1000 644\n");
    assert_still_serving(&unprivileged_moatd, sid, cid);
}

static void assert_private_dir(const char *path)
{
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    if ((sb.st_mode & 077) != 0)
        fail_msg("%s has mode %04o: other users can enter it", path,
                 (unsigned)(sb.st_mode & 07777));
}

/* The host side of a sandbox's files: a setuid copy of a shell gives nobody root, other local
 * users cannot read a workspace or reach an execd socket. Both modes of sandbox user. */
static void plant_setuid_shell(const moatd_proc *p)
{
    char sid[MOAT_UUID_STR_LEN], chat[MOAT_UUID_STR_LEN], cid[80];
    create(p, sid, chat, cid);
    run_out r;
    run_ok(p, sid,
           "cp /bin/bash /workspace/chat/sh && chmod 4755 /workspace/chat/sh && "
           "echo secret >/workspace/chat/notes && chmod 644 /workspace/chat/notes && "
           "stat -c %a /workspace/chat/sh",
           &r);
    assert_string_equal(r.out, "4755\n");
    char chats_root[320], path[400], sessions[320], sock[420];
    snprintf(chats_root, sizeof(chats_root), "%s/chats", p->state_dir);
    snprintf(sessions, sizeof(sessions), "%s/sessions", p->state_dir);
    snprintf(sock, sizeof(sock), "%s/%s/execd.sock", sessions, sid);
    assert_private_dir(p->state_dir);
    assert_private_dir(chats_root);
    assert_private_dir(sessions);
    /* The reproduction: nobody runs the planted file with -p. */
    snprintf(path, sizeof(path), "%s/%s/sh", chats_root, chat);
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    assert_true((sb.st_mode & S_ISUID) != 0); /* the bit is there, and must do nothing */
    assert_int_equal(nobody_open_errno(path), EACCES);
    /* nosuid: the bit is ignored, the file runs as whoever runs it. */
    long euid = euid_of_setuid_file_run_by_nobody(path);
    if (euid != NOBODY_UID)
        fail_msg("the sandbox's setuid file ran with euid %ld", euid);
    snprintf(path, sizeof(path), "%s/%s/notes", chats_root, chat);
    assert_int_equal(nobody_open_errno(path), EACCES);
    assert_int_equal(nobody_connect_errno(sock), EACCES);
    struct stat ss;
    assert_int_equal(lstat(sock, &ss), 0);
    assert_true(S_ISSOCK(ss.st_mode));
    assert_int_equal(ss.st_mode & 077, 0);
    assert_still_serving(p, sid, cid);
}

static void test_setuid_file_from_unprivileged_sandbox_is_inert(void **state)
{
    (void)state;
    plant_setuid_shell(&unprivileged_moatd);
}

static void test_setuid_file_from_root_sandbox_is_inert(void **state)
{
    (void)state;
    plant_setuid_shell(&root_moatd);
}

/* How one call on the attacking session ended. */
typedef enum outcome {
    OUTCOME_OWN = 0,      /* ran in the attacker's own sandbox */
    OUTCOME_REFUSED = 1,  /* failed with UNAVAILABLE and a reason */
    OUTCOME_ELSEWHERE = 2 /* reached another sandbox or the engine: the attack worked */
} outcome;

static outcome classify(const run_out *r, const char *own_container)
{
    char own[16];
    snprintf(own, sizeof(own), "%.12s\n", own_container);
    if (r->end_code == MOAT_CODE_OK)
        return strcmp(r->out, own) == 0 ? OUTCOME_OWN : OUTCOME_ELSEWHERE;
    if (r->end_code == MOAT_CODE_UNAVAILABLE &&
        (strcmp(r->end_reason, "execd_socket_refused") == 0 ||
         strcmp(r->end_reason, "execd_unreachable") == 0))
        return OUTCOME_REFUSED;
    return OUTCOME_ELSEWHERE;
}

typedef struct tally {
    int own, refused, elsewhere;
} tally;

/* n concurrent calls of command (which prints the hostname) on sid, each on a connection of
 * its own, so that moatd needs new connections to execd and cannot serve them all from the ones
 * it keeps open. */
static tally burst(const moatd_proc *p, const char *sid, const char *own_container, int n,
                   const char *command)
{
    pid_t kids[64];
    assert_true(n <= 64);
    for (int i = 0; i < n; i++) {
        kids[i] = fork();
        if (kids[i] == 0) {
            run_out r;
            run_on(p, sid, command, &r);
            _exit((int)classify(&r, own_container));
        }
    }
    tally t = {0, 0, 0};
    for (int i = 0; i < n; i++) {
        int status = 0;
        waitpid(kids[i], &status, 0);
        int code = WIFEXITED(status) ? WEXITSTATUS(status) : OUTCOME_ELSEWHERE;
        t.own += code == OUTCOME_OWN;
        t.refused += code == OUTCOME_REFUSED;
        t.elsewhere += code != OUTCOME_OWN && code != OUTCOME_REFUSED;
    }
    return t;
}

/* A root sandbox replaces /run/moat/execd.sock with a link to another session's socket, to the
 * engine's, with a regular file, and keeps swapping its own socket with a link while 50 calls
 * run: no call reaches anything but its own sandbox. */
static void test_planted_socket_never_redirects_moatd(void **state)
{
    (void)state;
    const moatd_proc *p = &root_moatd;
    char attacker[MOAT_UUID_STR_LEN], victim[MOAT_UUID_STR_LEN], chat[MOAT_UUID_STR_LEN];
    char attacker_cid[80], victim_cid[80];
    create(p, attacker, chat, attacker_cid);
    create(p, victim, chat, victim_cid);
    char neighbour[MOAT_UUID_STR_LEN], neighbour_cid[80];
    create(&unprivileged_moatd, neighbour, chat, neighbour_cid);
    run_out r;
    run_ok(p, victim, "echo victim-data >/workspace/chat/keep", &r);

    char victim_sock[1024], cmd[2400];
    snprintf(victim_sock, sizeof(victim_sock), "%s/sessions/%s/execd.sock", p->state_dir, victim);
    /* Keep the real socket under another name, so the attack can put it back. */
    run_ok(p, attacker, "ln /run/moat/execd.sock /run/moat/real.sock", &r);

    const char *targets[] = {victim_sock, "/var/run/docker.sock", NULL};
    for (size_t i = 0; i < 3; i++) {
        if (targets[i] != NULL)
            snprintf(cmd, sizeof(cmd), "ln -sfn %s /run/moat/execd.sock", targets[i]);
        else
            snprintf(cmd, sizeof(cmd),
                     "rm -f /run/moat/execd.sock && "
                     "echo 'GET / HTTP/1.0' >/run/moat/execd.sock");
        run_ok(p, attacker, cmd, &r);
        /* A connection moatd opened before the swap still leads to the attacker's own execd
         * and may serve a call; every new one meets the planted file and is refused. */
        /* Each call holds its connection for a second: quick ones, spaced out by a loaded
         * host, could all take turns on one kept connection and never open a new one. */
        tally t = burst(p, attacker, attacker_cid, 8, "hostname; sleep 1");
        printf("# planted %s: %d calls in its own sandbox, %d refused\n",
               targets[i] ? targets[i] : "regular file", t.own, t.refused);
        assert_int_equal(t.elsewhere, 0);
        assert_true(t.refused > 0);
        /* Put the real socket back so the next variant can start. */
        char real[1024], link_path[1024];
        snprintf(real, sizeof(real), "%s/sessions/%s/real.sock", p->state_dir, attacker);
        snprintf(link_path, sizeof(link_path), "%s/sessions/%s/execd.sock", p->state_dir, attacker);
        /* The test (root on the host) plays the sandbox's own next move. */
        assert_int_equal(unlink(link_path), 0);
        assert_int_equal(link(real, link_path), 0);
        run_on(p, attacker, "hostname", &r);
        assert_int_equal(classify(&r, attacker_cid), OUTCOME_OWN);
    }
    assert_true(moatd_log_contains(p, "execd_socket_refused"));

    /* Swapped continuously, between and during calls. */
    snprintf(cmd, sizeof(cmd),
             "cd /run/moat && (i=0; while [ $i -lt 4000 ]; do "
             "ln -sfn %s l.tmp && mv -f l.tmp execd.sock; "
             "ln -f real.sock r.tmp && mv -f r.tmp execd.sock; i=$((i+1)); done) "
             ">/dev/null 2>&1 </dev/null &",
             victim_sock);
    run_ok(p, attacker, cmd, &r);
    tally t = burst(p, attacker, attacker_cid, 50, "hostname");
    printf("# 50 calls during the swap: %d in its own sandbox, %d refused, %d elsewhere\n", t.own,
           t.refused, t.elsewhere);
    assert_int_equal(t.elsewhere, 0);
    assert_int_equal(t.own + t.refused, 50);

    /* The victim and the neighbour lost nothing and answer. */
    assert_still_serving(p, victim, victim_cid);
    run_ok(p, victim, "cat /workspace/chat/keep", &r);
    assert_string_equal(r.out, "victim-data\n");
    assert_still_serving(&unprivileged_moatd, neighbour, neighbour_cid);
}

int main(void)
{
    if (geteuid() != 0)
        return moat_skip_all("needs root (it runs files as nobody)", true);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_commands_are_unprivileged_and_cannot_reach_execd),
        cmocka_unit_test(test_setuid_file_from_unprivileged_sandbox_is_inert),
        cmocka_unit_test(test_setuid_file_from_root_sandbox_is_inert),
        cmocka_unit_test(test_planted_socket_never_redirects_moatd),
    };
    return moat_run_group_tests("test_boundary", tests, setup, teardown);
}
