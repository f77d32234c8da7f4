/* Docker's userns-remap as an isolation level (docs/SECURITY.md, "Isolation levels"), against a
 * private dockerd started with --userns-remap (userns_engine.c) and real moatds (workspace
 * quotas on, and plain directories): ids inside are the usual ones, ids on the host are the
 * remapped ones (execd is base, not root; commands and their files are base+1000), the session
 * dir and workspace stay 0700 inside 0700 root-owned parents, a setuid file a sandbox plants is
 * inert on the host, and the session runs commands, round-trips files and stops.
 * Exit 77 (skip) only when the host has no user namespaces or no dockerd. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "moat_test.h"

#include "harness.h"
#include "local_user.h"
#include "moat/v1/exec.pb-c.h"
#include "moat/v1/files.pb-c.h"
#include "moat/v1/sandbox.pb-c.h"
#include "userns_engine.h"

#define IMAGE "moat-sandbox:latest"

static userns_engine eng;
static moatd_proc quota_moatd, plain_moatd;
static char arg_docker[160], arg_prefix_q[96], arg_prefix_p[96];

static int setup(void **state)
{
    (void)state;
    if (userns_engine_start(&eng, IMAGE, 1) != 0)
        return -1;
    snprintf(arg_docker, sizeof(arg_docker), "--docker_host=%s", eng.sock);
    snprintf(arg_prefix_q, sizeof(arg_prefix_q), "--container_name_prefix=moat-uns%d-q-",
             (int)getpid());
    snprintf(arg_prefix_p, sizeof(arg_prefix_p), "--container_name_prefix=moat-uns%d-p-",
             (int)getpid());
    const char *q[] = {arg_docker, arg_prefix_q, "--log_level=info", NULL};
    const char *p[] = {arg_docker, arg_prefix_p, "--workspace_quota=false", "--log_level=info",
                       NULL};
    if (!moatd_start(&quota_moatd, true, q) || !moatd_start(&plain_moatd, true, p)) {
        moatd_stop(&quota_moatd);
        moatd_remove_dir(quota_moatd.state_dir);
        userns_engine_stop(&eng);
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    int rc1 = moatd_stop(&quota_moatd), rc2 = moatd_stop(&plain_moatd);
    userns_engine_stop(&eng); /* its containers first: they hold the moatds' mounts */
    moatd_remove_dir(quota_moatd.state_dir);
    moatd_remove_dir(plain_moatd.state_dir);
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

static void create(const moatd_proc *p, char sid[MOAT_UUID_STR_LEN], char chat[MOAT_UUID_STR_LEN],
                   char cid[80])
{
    raw_conn *c = conn(p);
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
    snprintf(sid, MOAT_UUID_STR_LEN, "%s", s->session_id);
    snprintf(cid, 80, "%s", s->container_id);
    protobuf_c_message_free_unpacked(resp, NULL);
    raw_close(c);
}

static void stop(const moatd_proc *p, const char *sid)
{
    raw_conn *c = conn(p);
    Moat__V1__StopSessionRequest req = MOAT__V1__STOP_SESSION_REQUEST__INIT;
    req.session_id = (char *)sid;
    assert_int_equal(raw_unary(c, "/moat.v1.Sandboxes/StopSession", &req.base, NULL, NULL, NULL, 0),
                     MOAT_CODE_OK);
    raw_close(c);
}

static void grant(raw_conn *c, uint32_t id, uint32_t n)
{
    moat_frame w = {0};
    w.stream_id = id;
    w.kind = MOAT_FRAME_WINDOW_UPDATE;
    w.u.window_update.increment = n;
    raw_send(c, &w);
}

/* Runs cmd, which must exit 0; its output (stdout and stderr) in out. */
static void run_ok(const moatd_proc *p, const char *sid, const char *cmd, char *out, size_t cap)
{
    raw_conn *c = conn(p);
    Moat__V1__RunCommandRequest req = MOAT__V1__RUN_COMMAND_REQUEST__INIT;
    req.session_id = (char *)sid;
    req.command = (char *)cmd;
    uint32_t id = raw_call(c, "/moat.v1.Exec/RunCommand", 0, &req.base);
    size_t len = 0;
    int end = -1, exit_code = -1;
    for (;;) {
        moat_frame f;
        if (raw_recv_stream(c, id, &f, 60000) != 1)
            break;
        if (f.kind == MOAT_FRAME_END) {
            end = (int)f.u.end.code;
            break;
        }
        if (f.kind != MOAT_FRAME_MESSAGE)
            continue;
        Moat__V1__ExecEvent *ev =
            moat__v1__exec_event__unpack(NULL, f.u.message.payload.len, f.u.message.payload.data);
        if (ev == NULL)
            break;
        grant(c, id, (uint32_t)f.u.message.payload.len);
        if (ev->kind_case == MOAT__V1__EXEC_EVENT__KIND_OUTPUT) {
            size_t n = ev->output->data.len < cap - 1 - len ? ev->output->data.len : cap - 1 - len;
            memcpy(out + len, ev->output->data.data, n);
            len += n;
        } else if (ev->kind_case == MOAT__V1__EXEC_EVENT__KIND_EXIT &&
                   ev->exit->exit_code != NULL &&
                   ev->exit->exit_code->value_case == MOAT__V1__EXIT_CODE__VALUE_CODE) {
            exit_code = ev->exit->exit_code->code;
        }
        moat__v1__exec_event__free_unpacked(ev, NULL);
    }
    out[len] = '\0';
    raw_close(c);
    if (end != MOAT_CODE_OK || exit_code != 0)
        fail_msg("`%s`: status %d, exit %d, output: %s", cmd, end, exit_code, out);
}

/* The host pid of the process whose command line is exactly argv0 and arg, or 0. */
static pid_t find_process(const char *argv0, const char *arg)
{
    DIR *d = opendir("/proc");
    assert_non_null(d);
    pid_t found = 0;
    struct dirent *de;
    while (found == 0 && (de = readdir(d)) != NULL) {
        char path[300], args[256];
        if (strspn(de->d_name, "0123456789") != strlen(de->d_name))
            continue;
        snprintf(path, sizeof(path), "/proc/%s/cmdline", de->d_name);
        int fd = open(path, O_RDONLY);
        if (fd < 0)
            continue;
        ssize_t n = read(fd, args, sizeof(args));
        close(fd);
        size_t a0 = strlen(argv0) + 1;
        if (n == (ssize_t)(a0 + strlen(arg) + 1) && memcmp(args, argv0, a0) == 0 &&
            memcmp(args + a0, arg, strlen(arg) + 1) == 0)
            found = (pid_t)atoi(de->d_name);
    }
    closedir(d);
    return found;
}

static void assert_uids(pid_t pid, uint32_t want)
{
    uint32_t ids[4];
    assert_int_equal(proc_uids(pid, ids), 0);
    for (int i = 0; i < 4; i++)
        if (ids[i] != want)
            fail_msg("pid %d: host uid %" PRIu32 " (real, effective, saved, fs: %" PRIu32
                     " %" PRIu32 " %" PRIu32 " %" PRIu32 "), want %" PRIu32,
                     (int)pid, ids[i], ids[0], ids[1], ids[2], ids[3], want);
}

static void assert_owner_mode(const char *path, uint32_t uid, unsigned mode)
{
    struct stat sb;
    if (lstat(path, &sb) != 0)
        fail_msg("%s: %s", path, strerror(errno));
    if (sb.st_uid != uid || sb.st_gid != uid || (sb.st_mode & 07777) != mode)
        fail_msg("%s: %u:%u %04o, want %u:%u %04o", path, (unsigned)sb.st_uid, (unsigned)sb.st_gid,
                 (unsigned)(sb.st_mode & 07777), uid, uid, mode);
}

static void write_file(const moatd_proc *p, const char *sid, const char *path, const char *data)
{
    raw_conn *c = conn(p);
    Moat__V1__WriteRequest wr = MOAT__V1__WRITE_REQUEST__INIT;
    wr.session_id = (char *)sid;
    wr.path = (char *)path;
    wr.data.data = (uint8_t *)data;
    wr.data.len = strlen(data);
    ProtobufCMessage *resp = NULL;
    assert_int_equal(raw_unary(c, "/moat.v1.Files/Write", &wr.base,
                               &moat__v1__write_response__descriptor, &resp, NULL, 0),
                     MOAT_CODE_OK);
    protobuf_c_message_free_unpacked(resp, NULL);
    raw_close(c);
}

static void read_file(const moatd_proc *p, const char *sid, const char *path, char *out, size_t cap)
{
    raw_conn *c = conn(p);
    Moat__V1__ReadRequest rr = MOAT__V1__READ_REQUEST__INIT;
    rr.session_id = (char *)sid;
    rr.path = (char *)path;
    uint32_t id = raw_call(c, "/moat.v1.Files/Read", 0, &rr.base);
    size_t len = 0;
    for (;;) {
        moat_frame f;
        assert_int_equal(raw_recv_stream(c, id, &f, 30000), 1);
        if (f.kind == MOAT_FRAME_END) {
            assert_int_equal(f.u.end.code, MOAT_CODE_OK);
            break;
        }
        Moat__V1__FileChunk *ch =
            moat__v1__file_chunk__unpack(NULL, f.u.message.payload.len, f.u.message.payload.data);
        assert_non_null(ch);
        grant(c, id, (uint32_t)f.u.message.payload.len);
        size_t n = ch->data.len < cap - 1 - len ? ch->data.len : cap - 1 - len;
        memcpy(out + len, ch->data.data, n);
        len += n;
        moat__v1__file_chunk__free_unpacked(ch, NULL);
    }
    out[len] = '\0';
    raw_close(c);
}

/* One session on p: ids inside and on the host, directory owners and modes, a planted setuid
 * file, files both ways, stop. */
static void remapped_session(const moatd_proc *p)
{
    char sid[MOAT_UUID_STR_LEN], chat[MOAT_UUID_STR_LEN], cid[80], out[4096], path[600];
    create(p, sid, chat, cid);
    const uint32_t root = eng.base, user = eng.base + 1000;

    /* Inside: the usual ids. */
    run_ok(p, sid, "id -u; id -g", out, sizeof(out));
    assert_string_equal(out, "1000\n1000\n");

    /* On the host: execd (container root) is the base, not 0; a command is base+1000. */
    char inspect[400];
    snprintf(inspect, sizeof(inspect),
             "/usr/bin/docker -H unix://%s inspect --format '{{.State.Pid}}' %s", eng.sock, cid);
    FILE *f = popen(inspect, "r");
    assert_non_null(f);
    int execd_pid = 0;
    assert_int_equal(fscanf(f, "%d", &execd_pid), 1);
    pclose(f);
    assert_true(execd_pid > 0);
    assert_uids(execd_pid, root);
    char marker[32], cmd[160];
    snprintf(marker, sizeof(marker), "%d%d", 7000 + (int)(getpid() % 1000),
             (int)time(NULL) % 100000);
    snprintf(cmd, sizeof(cmd), "sleep %s >/dev/null 2>&1 </dev/null & echo started", marker);
    run_ok(p, sid, cmd, out, sizeof(out));
    pid_t sleeper = 0;
    for (int i = 0; i < 100 && sleeper == 0; i++) { /* bounded: 5 s */
        sleeper = find_process("sleep", marker);
        if (sleeper == 0)
            usleep(50000);
    }
    if (sleeper == 0)
        fail_msg("the sandbox's `sleep %s` is not visible on the host", marker);
    assert_uids(sleeper, user);
    snprintf(cmd, sizeof(cmd), "pkill -f 'sleep %s' || kill $(pidof sleep); true", marker);
    run_ok(p, sid, cmd, out, sizeof(out));

    /* The session dir is the remapped root's, 0700, in sessions/ (0700, root's). */
    snprintf(path, sizeof(path), "%s/sessions/%s", p->state_dir, sid);
    assert_owner_mode(path, root, 0700);
    snprintf(path, sizeof(path), "%s/sessions", p->state_dir);
    assert_owner_mode(path, 0, 0700);
    snprintf(path, sizeof(path), "%s/sessions/%s/execd.sock", p->state_dir, sid);
    struct stat sb;
    assert_int_equal(lstat(path, &sb), 0);
    assert_true(S_ISSOCK(sb.st_mode));
    assert_int_equal(sb.st_uid, root);

    /* The workspace is the remapped sandbox user's, 0700, in chats/ (0700, root's); what a
     * command writes there is base+1000's on the host. */
    run_ok(p, sid,
           "echo data >/workspace/chat/mine && cp /bin/bash /workspace/chat/sh && "
           "chmod 4755 /workspace/chat/sh && stat -c '%u:%g %a' /workspace/chat",
           out, sizeof(out));
    assert_string_equal(out, "1000:1000 700\n");
    snprintf(path, sizeof(path), "%s/chats/%s", p->state_dir, chat);
    assert_owner_mode(path, user, 0700);
    snprintf(path, sizeof(path), "%s/chats", p->state_dir);
    assert_owner_mode(path, 0, 0700);
    snprintf(path, sizeof(path), "%s/chats/%s/mine", p->state_dir, chat);
    assert_owner_mode(path, user, 0644);

    /* The planted setuid shell: base+1000's, and inert (nosuid) for another host user. */
    snprintf(path, sizeof(path), "%s/chats/%s/sh", p->state_dir, chat);
    assert_owner_mode(path, user, 04755);
    assert_int_equal(euid_of_setuid_file_run_by_nobody(path), NOBODY_UID);

    /* Files both ways through the file API (execd writes as the sandbox user). */
    write_file(p, sid, "/workspace/chat/up.txt", "round trip\n");
    snprintf(path, sizeof(path), "%s/chats/%s/up.txt", p->state_dir, chat);
    assert_owner_mode(path, user, 0644);
    read_file(p, sid, "/workspace/chat/up.txt", out, sizeof(out));
    assert_string_equal(out, "round trip\n");
    run_ok(p, sid, "cat /workspace/chat/up.txt", out, sizeof(out));
    assert_string_equal(out, "round trip\n");

    stop(p, sid);
    snprintf(path, sizeof(path), "%s/sessions/%s", p->state_dir, sid);
    assert_int_equal(access(path, F_OK), -1);
    snprintf(inspect, sizeof(inspect), "/usr/bin/docker -H unix://%s inspect %s >/dev/null 2>&1",
             eng.sock, cid);
    assert_int_not_equal(system(inspect), 0);
}

static void test_userns_quota_workspace(void **state)
{
    (void)state;
    remapped_session(&quota_moatd);
}

static void test_userns_plain_workspace(void **state)
{
    (void)state;
    remapped_session(&plain_moatd);
}

int main(void)
{
    if (geteuid() != 0)
        return moat_skip_all("needs root (users, ranges and a dockerd of its own)", true);
    const char *why = userns_engine_unsupported();
    if (why != NULL)
        return moat_skip_all(why, false);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_userns_quota_workspace),
        cmocka_unit_test(test_userns_plain_workspace),
    };
    return moat_run_group_tests("test_userns", tests, setup, teardown);
}
