/* Issue #12's lockout, at a reduced scale, against the real moatd and Docker: while 300 silent
 * connections churn and wrong-token hellos run back to back from other addresses, a client with
 * the token still connects, creates sessions and runs `echo hi`; and the guesser's hellos are
 * refused with RESOURCE_EXHAUSTED too_many_failed_hellos. The silent connections come back as soon
 * as moatd closes them, harder than the attacker (every 10 s). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "moat_test.h"

#include "attack.h"
#include "chaos_client.h"

#define TOKEN "chaos-token"

static moatd_proc P;
static attack A;
static char prefix[64];

static int setup(void **state)
{
    (void)state;
    snprintf(prefix, sizeof(prefix), "moat-chaos-%d-", (int)getpid());
    char a_prefix[96], a_instance[64];
    snprintf(a_prefix, sizeof(a_prefix), "--container_name_prefix=%s", prefix);
    snprintf(a_instance, sizeof(a_instance), "--instance=chaos-%d", (int)getpid());
    const char *extra[] = {"--token=" TOKEN, a_prefix, a_instance, "--workspace_quota=false", NULL};
    return moatd_start(&P, true, extra) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    attack_stop(&A);
    int rc = moatd_stop(&P);
    docker_remove_prefixed(prefix);
    moatd_remove_dir(P.state_dir);
    return rc == 0 ? 0 : -1;
}

static long long metric(const char *name)
{
    char page[16384];
    if (!http_get(P.metrics_port, "/metrics", page, sizeof(page)))
        return -1;
    const char *at = strstr(page, name);
    return at != NULL ? strtoll(at + strlen(name), NULL, 10) : -1;
}

static void test_token_holder_gets_in_during_the_attack(void **state)
{
    (void)state;
    assert_int_equal(attack_start(&A, P.port, 300, 0, "127.0.0.2", "127.0.0.3"), 0);
    /* The attack is on once moatd has both evicted silent hellos and throttled the guesser. */
    bool on = false;
    for (int i = 0; i < 300 && !on; i++) { /* <= 30 s */
        on = metric("moat_hellos_refused_total{reason=\"evicted\"} ") > 0 &&
             metric("moat_hellos_refused_total{reason=\"throttled\"} ") > 0;
        if (!on)
            chaos_sleep_ms(100);
    }
    assert_true(on);
    for (int round = 0; round < 3; round++) {
        raw_conn *c = raw_connect(P.port);
        assert_non_null(c);
        moat_frame f;
        assert_int_equal(raw_hello(c, TOKEN, &f), 1);
        assert_int_equal(f.kind, MOAT_FRAME_HELLO_ACK);
        char chat[MOAT_UUID_STR_LEN], sid[MOAT_UUID_STR_LEN], reason[64] = "";
        moat_uuid_generate(chat);
        assert_int_equal(chaos_create(c, chat, sid, reason, sizeof(reason)), MOAT_CODE_OK);
        char out[256];
        int exit_code;
        assert_int_equal(chaos_run(c, sid, "echo hi", out, sizeof(out), &exit_code), MOAT_CODE_OK);
        assert_string_equal(out, "hi\n");
        assert_int_equal(exit_code, 0);
        assert_int_equal(chaos_stop(c, sid), MOAT_CODE_OK);
        raw_close(c);
    }
    /* The guesser's own address: refused with the throttling status. A token that came back
     * with time is spent on a wrong hello, and the next try is refused again. */
    bool throttled = false;
    for (int i = 0; i < 20 && !throttled; i++) {
        raw_conn *c = raw_connect_from(P.port, "127.0.0.3");
        assert_non_null(c);
        moat_frame f;
        int r = raw_recv(c, &f, 2000);
        if (r != 1)
            r = raw_hello(c, "wrong", &f);
        throttled = r == 1 && f.kind == MOAT_FRAME_GO_AWAY &&
                    f.u.go_away.code == MOAT_CODE_RESOURCE_EXHAUSTED &&
                    f.u.go_away.message.len > 22 &&
                    memcmp(f.u.go_away.message.data, "too_many_failed_hellos", 22) == 0;
        raw_close(c);
    }
    assert_true(throttled);
    assert_true(attack_hellos(&A) > 0);
    attack_stop(&A);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_token_holder_gets_in_during_the_attack),
    };
    return moat_run_group_tests("chaos_lockout", tests, setup, teardown);
}
