/* The bridge's other calls against the real moat-execd binary (label integration): bash
 * sessions, background status and logs, the file calls, and a terminal's stdin EOF. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "moat_test.h"
#include <unistd.h>

#include "execd_harness.h"

typedef struct sres {
    bool done;
    moat_status st;
    char text[256];
    moat_bridge_cmd_status cs;
    uint64_t next;
    moat_bridge_file_info fi;
    size_t count;
} sres;

static void s_done(void *ud, const moat_status *st)
{
    sres *r = ud;
    r->st = *st;
    r->done = true;
}

static void s_session(void *ud, const moat_status *st, const char *id)
{
    snprintf(((sres *)ud)->text, 256, "%s", id ? id : "");
    s_done(ud, st);
}

static void s_status(void *ud, const moat_status *st, const moat_bridge_cmd_status *cs)
{
    sres *r = ud;
    if (cs != NULL)
        r->cs = *cs;
    r->cs.execution_id = r->cs.content = r->cs.error = NULL;
    s_done(ud, st);
}

static void s_logs(void *ud, const moat_status *st, const uint8_t *d, size_t n, uint64_t next)
{
    sres *r = ud;
    snprintf(r->text, sizeof(r->text), "%.*s", (int)n, d ? (const char *)d : "");
    r->next = next;
    s_done(ud, st);
}

static void s_stat(void *ud, const moat_status *st, const moat_bridge_file_info *fi)
{
    sres *r = ud;
    if (fi != NULL) {
        r->fi = *fi;
        snprintf(r->text, sizeof(r->text), "%s", fi->path);
        r->fi.path = r->fi.owner = r->fi.group = NULL;
    }
    s_done(ud, st);
}

static void s_list(void *ud, const moat_status *st, const moat_bridge_file_info *fi, size_t n)
{
    sres *r = ud;
    r->count = n;
    r->text[0] = '\0';
    for (size_t i = 0; i < n; i++)
        snprintf(r->text + strlen(r->text), sizeof(r->text) - strlen(r->text), "%s,",
                 strrchr(fi[i].path, '/') + 1);
    s_done(ud, st);
}

static void test_sessions_background(void **state)
{
    (void)state;
    env *e = env_up(NULL);
    moat_status st;
    sres r = {0};
    assert_int_equal(moat_bridge_create_session(e->b, &e->ep, "/tmp", s_session, &r, &st), MOAT_OK);
    run_until(e, &r.done);
    assert_status(&r.st, MOAT_CODE_OK);
    char sid[256];
    snprintf(sid, sizeof(sid), "%s", r.text);
    assert_true(strlen(sid) > 0);

    collect c;
    col_init(&c);
    moat_bridge_run_opts o = {.command = "export MOAT_A=42; cd /", .session_id = sid};
    start(e, &o, &c, UINT64_MAX);
    run_until(e, &c.ended);
    assert_int_equal(c.ev[c.n - 1].code, 0);
    col_free(&c);
    col_init(&c);
    o.command = "echo $MOAT_A; pwd; exit 2";
    start(e, &o, &c, UINT64_MAX);
    run_until(e, &c.ended);
    assert_non_null(c.out[1]);
    assert_true(c.out_len[1] >= 5);
    assert_memory_equal(c.out[1], "42\n/\n", 5);
    assert_true(c.ev[c.n - 1].known);
    assert_int_equal(c.ev[c.n - 1].code, 2);
    col_free(&c);

    memset(&r, 0, sizeof(r));
    assert_int_equal(moat_bridge_delete_session(e->b, &e->ep, sid, s_done, &r, &st), MOAT_OK);
    run_until(e, &r.done);
    assert_status(&r.st, MOAT_CODE_OK);

    /* background: the stream ends at once; status and logs tell the rest */
    col_init(&c);
    moat_bridge_run_opts bg = {.command = "echo bg-out; sleep 0.2; exit 4", .background = true};
    moat_bridge_exec *ex = start(e, &bg, &c, UINT64_MAX);
    run_until(e, &c.ended);
    assert_false(c.ev[c.n - 1].known);
    char id[128];
    snprintf(id, sizeof(id), "%s", moat_bridge_exec_id(ex));
    col_free(&c);
    for (int i = 0; i < 300; i++) {
        memset(&r, 0, sizeof(r));
        assert_int_equal(moat_bridge_command_status(e->b, &e->ep, id, s_status, &r, &st), MOAT_OK);
        run_until(e, &r.done);
        assert_status(&r.st, MOAT_CODE_OK);
        if (!r.cs.running)
            break;
        usleep(20000);
    }
    assert_false(r.cs.running);
    assert_true(r.cs.exit_known);
    assert_int_equal(r.cs.exit_code, 4);
    memset(&r, 0, sizeof(r));
    assert_int_equal(moat_bridge_command_logs(e->b, &e->ep, id, 0, s_logs, &r, &st), MOAT_OK);
    run_until(e, &r.done);
    assert_status(&r.st, MOAT_CODE_OK);
    assert_string_equal(r.text, "bg-out\n");
    assert_int_equal(r.next, 7);
    env_down(e);
}

typedef struct xfer_res {
    bool done;
    moat_status st;
    uint64_t written, sent, total;
    uint8_t *data;
    size_t len;
} xfer_res;

static size_t up_read(void *ud, moat_bridge_xfer *x, uint8_t *buf, size_t cap)
{
    (void)x;
    xfer_res *r = ud;
    size_t n = r->total - r->sent < cap ? (size_t)(r->total - r->sent) : cap;
    for (size_t i = 0; i < n; i++)
        buf[i] = (uint8_t)((r->sent + i) * 7);
    r->sent += n;
    return n;
}

static void up_done(void *ud, moat_bridge_xfer *x, const moat_status *st, uint64_t w)
{
    (void)x;
    xfer_res *r = ud;
    r->st = *st;
    r->written = w;
    r->done = true;
}

static bool dl_chunk(void *ud, moat_bridge_xfer *x, uint64_t off, const uint8_t *d, size_t n)
{
    (void)x;
    (void)off;
    xfer_res *r = ud;
    r->data = realloc(r->data, r->len + n);
    memcpy(r->data + r->len, d, n);
    r->len += n;
    return true;
}

static void dl_done(void *ud, moat_bridge_xfer *x, const moat_status *st)
{
    (void)x;
    xfer_res *r = ud;
    r->st = *st;
    r->done = true;
}

static void test_files(void **state)
{
    (void)state;
    env *e = env_up(NULL);
    char root[128], file[160], moved[160];
    snprintf(root, sizeof(root), "%s/files", e->dir);
    snprintf(file, sizeof(file), "%s/sub/f.bin", root);
    snprintf(moved, sizeof(moved), "%s/g.bin", root);
    moat_status st;
    sres r = {0};
    assert_int_equal(moat_bridge_mkdir(e->b, &e->ep, root, 0750, s_done, &r, &st), MOAT_OK);
    run_until(e, &r.done);
    assert_status(&r.st, MOAT_CODE_OK);

    xfer_res u = {.total = 300000};
    moat_bridge_upload_cbs ucb = {up_read, up_done, &u};
    moat_bridge_xfer *x = NULL;
    assert_int_equal(moat_bridge_upload(e->b, &e->ep, file, 0640, NULL, NULL, &ucb, &x, &st),
                     MOAT_OK);
    run_until(e, &u.done);
    assert_status(&u.st, MOAT_CODE_OK);
    assert_int_equal(u.written, 300000);

    memset(&r, 0, sizeof(r));
    assert_int_equal(moat_bridge_stat(e->b, &e->ep, file, s_stat, &r, &st), MOAT_OK);
    run_until(e, &r.done);
    assert_status(&r.st, MOAT_CODE_OK);
    assert_int_equal(r.fi.size, 300000);
    assert_int_equal(r.fi.type, MOAT_BRIDGE_FILE_REGULAR);
    assert_int_equal(r.fi.mode, 0640);

    xfer_res d = {0};
    moat_bridge_download_cbs dcb = {dl_chunk, dl_done, &d};
    assert_int_equal(moat_bridge_download(e->b, &e->ep, file, 1000, 70000, &dcb, &x, &st), MOAT_OK);
    run_until(e, &d.done);
    assert_status(&d.st, MOAT_CODE_OK);
    assert_int_equal(d.len, 70000);
    for (size_t i = 0; i < d.len; i++)
        assert_int_equal(d.data[i], (uint8_t)((i + 1000) * 7));
    free(d.data);

    /* offset writes: the file grows past a hole, keeps its mode and its other bytes */
    xfer_res w = {.total = 5000};
    moat_bridge_upload_cbs wcb = {up_read, up_done, &w};
    assert_int_equal(moat_bridge_write_at(e->b, &e->ep, file, 400000, &wcb, &x, &st), MOAT_OK);
    run_until(e, &w.done);
    assert_status(&w.st, MOAT_CODE_OK);
    assert_int_equal(w.written, 5000);
    struct stat fsb;
    assert_int_equal(stat(file, &fsb), 0);
    assert_int_equal(fsb.st_size, 405000);
    assert_int_equal(fsb.st_mode & 0777, 0640);
    memset(&d, 0, sizeof(d));
    assert_int_equal(moat_bridge_download(e->b, &e->ep, file, 299990, 0, &dcb, &x, &st), MOAT_OK);
    run_until(e, &d.done);
    assert_status(&d.st, MOAT_CODE_OK);
    assert_int_equal(d.len, 105010);
    for (size_t i = 0; i < d.len; i++) {
        uint64_t at = 299990 + i;
        uint8_t want = at < 300000   ? (uint8_t)(at * 7)
                       : at < 400000 ? 0
                                     : (uint8_t)((at - 400000) * 7);
        assert_int_equal(d.data[i], want);
    }
    free(d.data);
    /* a missing file at an offset is NOT_FOUND, and is not created */
    char missing[200];
    snprintf(missing, sizeof(missing), "%s/missing.bin", root);
    memset(&w, 0, sizeof(w));
    w.total = 10;
    assert_int_equal(moat_bridge_write_at(e->b, &e->ep, missing, 3, &wcb, &x, &st), MOAT_OK);
    run_until(e, &w.done);
    assert_status(&w.st, MOAT_CODE_NOT_FOUND);
    assert_string_equal(moat_status_detail_get(&w.st, "execd_code"), "FILE_NOT_FOUND");
    assert_int_not_equal(stat(missing, &fsb), 0);

    memset(&r, 0, sizeof(r));
    assert_int_equal(moat_bridge_move(e->b, &e->ep, file, moved, s_done, &r, &st), MOAT_OK);
    run_until(e, &r.done);
    assert_status(&r.st, MOAT_CODE_OK);
    memset(&r, 0, sizeof(r));
    assert_int_equal(moat_bridge_chmod(e->b, &e->ep, moved, 0600, NULL, NULL, s_done, &r, &st),
                     MOAT_OK);
    run_until(e, &r.done);
    assert_status(&r.st, MOAT_CODE_OK);
    struct stat sb;
    assert_int_equal(stat(moved, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0600);

    memset(&r, 0, sizeof(r));
    assert_int_equal(moat_bridge_list(e->b, &e->ep, root, 1, s_list, &r, &st), MOAT_OK);
    run_until(e, &r.done);
    assert_status(&r.st, MOAT_CODE_OK);
    assert_int_equal(r.count, 2);
    assert_non_null(strstr(r.text, "g.bin,"));
    assert_non_null(strstr(r.text, "sub,"));

    memset(&r, 0, sizeof(r));
    assert_int_equal(moat_bridge_remove(e->b, &e->ep, moved, false, s_done, &r, &st), MOAT_OK);
    run_until(e, &r.done);
    assert_status(&r.st, MOAT_CODE_OK);
    assert_int_not_equal(stat(moved, &sb), 0);
    memset(&r, 0, sizeof(r));
    assert_int_equal(moat_bridge_remove(e->b, &e->ep, root, true, s_done, &r, &st), MOAT_OK);
    run_until(e, &r.done);
    assert_status(&r.st, MOAT_CODE_OK);
    assert_int_not_equal(stat(root, &sb), 0);

    memset(&r, 0, sizeof(r));
    assert_int_equal(moat_bridge_stat(e->b, &e->ep, moved, s_stat, &r, &st), MOAT_OK);
    run_until(e, &r.done);
    assert_status(&r.st, MOAT_CODE_NOT_FOUND);
    env_down(e);
}

/* A terminal in pipe mode: stdin, then close_stdin, and wc reads EOF (execd's WebSocket, with
 * curl's upgrade on libmicrohttpd's). */
typedef struct term_out {
    char out[64];
    int code;
    bool ended;
    moat_status end;
} term_out;

static void t_ready(void *ud, moat_bridge_terminal *t, const char *id)
{
    (void)ud;
    assert_true(strlen(id) > 0);
    assert_int_equal(moat_bridge_terminal_stdin(t, (const uint8_t *)"a\nb\n", 4), MOAT_OK);
    assert_int_equal(moat_bridge_terminal_close_stdin(t), MOAT_OK);
}

static void t_output(void *ud, moat_bridge_terminal *t, moat_bridge_stream s, const uint8_t *d,
                     size_t n)
{
    (void)t;
    (void)s;
    term_out *o = ud;
    size_t used = strlen(o->out);
    snprintf(o->out + used, sizeof(o->out) - used, "%.*s", (int)n, (const char *)d);
}

static void t_exit(void *ud, moat_bridge_terminal *t, int code)
{
    (void)t;
    ((term_out *)ud)->code = code;
}

static void t_end(void *ud, moat_bridge_terminal *t, const moat_status *st)
{
    (void)t;
    term_out *o = ud;
    o->end = *st;
    o->ended = true;
}

static void test_terminal_stdin_eof(void **state)
{
    (void)state;
    env *e = env_up(NULL);
    term_out o = {.code = -1000};
    moat_bridge_terminal_consumer c = {t_ready, t_output, t_exit, NULL, t_end, &o};
    moat_bridge_terminal_opts opts = {.command = "wc -l"};
    moat_bridge_terminal *t;
    moat_status st;
    assert_int_equal(moat_bridge_terminal_open(e->b, &e->ep, &opts, &c, 1u << 20, &t, &st),
                     MOAT_OK);
    run_until(e, &o.ended);
    assert_int_equal(o.end.code, MOAT_CODE_OK);
    assert_string_equal(o.out, "2\n");
    assert_int_equal(o.code, 0);
    env_down(e);
}

int main(void)
{
    execd_harness_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_sessions_background, execd_harness_teardown),
        cmocka_unit_test_teardown(test_files, execd_harness_teardown),
        cmocka_unit_test_teardown(test_terminal_stdin_eof, execd_harness_teardown),
    };
    return moat_run_group_tests("bridge_execd_calls_test", tests, NULL, NULL);
}
