/* The fixture the moatd integration programs share: the moatd each program's shared group
 * starts (with a dead Docker socket), and the helpers more than one program uses. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "moat_test.h"

#include "moatd_fixture.h"

int frame_is_go_away(const moat_frame *f, moat_code code)
{
    return f->kind == MOAT_FRAME_GO_AWAY && f->u.go_away.code == code;
}

/* Reads until EOF (bounded), skipping anything; true if EOF came. */
bool drains_to_eof(raw_conn *c)
{
    moat_frame f;
    for (int i = 0; i < 100; i++) {
        int r = raw_recv(c, &f, 10000);
        if (r == 0)
            return true;
        if (r < 0)
            return false;
    }
    return false;
}

moatd_proc P;

int setup_server(void **state)
{
    (void)state;
    const char *extra[] = {"--token=sesame", "--max_streams_per_connection=3", "--log_level=debug",
                           NULL};
    return moatd_start(&P, false, extra) ? 0 : -1;
}

/* The group's last test stops moatd and checks how it exited; here it runs only when a failure
 * came first. */
int teardown_server(void **state)
{
    (void)state;
    moatd_stop(&P);
    moatd_remove_dir(P.state_dir);
    return 0;
}

raw_conn *authed(void)
{
    raw_conn *c = raw_connect(P.port);
    assert_non_null(c);
    moat_frame ack;
    assert_int_equal(raw_hello(c, "sesame", &ack), 1);
    assert_int_equal(ack.kind, MOAT_FRAME_HELLO_ACK);
    return c;
}

void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}
