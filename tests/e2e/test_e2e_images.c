/* End to end on both sandbox images, through the `moat` CLI: the real dockerd, moatd and
 * moat-execd, one session in the Debian image (moatd's default) and one in the minimal busybox
 * image (asked for with --image), the same commands and files in each, python3 where Debian
 * has it and busybox has not, and the image refusals. Builds the images it lacks with
 * scripts/build-sandbox-image.sh (the Debian root file system is cached between runs).
 * env: MOAT_SANDBOX_DEBIAN_IMAGE, MOAT_SANDBOX_IMAGE (the tags, as the script takes them). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "moat_test.h"

#include "common/json.h"
#include "common/common.h"
#include "harness.h"

#define TOKEN "e2e-images-token"

typedef struct box {
    const char *image;
    bool debian;
    char chat[MOAT_UUID_STR_LEN];
    char session[64];
} box;

static moatd_proc P;
static char moat_bin[512], out_path[300], err_path[300];
/* This run's own, so that runs at the same time never remove each other's sandboxes. */
static char prefix[48];
static char debian_image[256], minimal_image[256];
static box boxes[2];

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...)
{
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    int rc = system(cmd);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

static void cleanup_containers(void)
{
    sh("/usr/bin/docker ps -aq --filter name=%s | xargs -r /usr/bin/docker rm -f >/dev/null 2>&1",
       prefix);
}

static const char *env_or(const char *name, const char *dflt)
{
    const char *v = getenv(name);
    return v != NULL && v[0] != '\0' ? v : dflt;
}

static int setup(void **state)
{
    (void)state;
    snprintf(prefix, sizeof(prefix), "moat-e2eimg%d-", (int)getpid());
    snprintf(debian_image, sizeof(debian_image), "%s",
             env_or("MOAT_SANDBOX_DEBIAN_IMAGE", "moat-sandbox-debian:latest"));
    snprintf(minimal_image, sizeof(minimal_image), "%s",
             env_or("MOAT_SANDBOX_IMAGE", "moat-sandbox:latest"));
    const char *build = env_or("MOAT_BUILD_DIR", "."), *src = env_or("MOAT_SOURCE_DIR", ".");
    /* The script reads the same variables, so it builds the tags this test uses. */
    const char *which[2][2] = {{debian_image, "debian"}, {minimal_image, "minimal"}};
    for (int i = 0; i < 2; i++) {
        if (sh("/usr/bin/docker image inspect %s >/dev/null 2>&1 && test -x %s/execd-bundle/run",
               which[i][0], build) != 0 &&
            sh("%s/scripts/build-sandbox-image.sh %s %s >&2", src, build, which[i][1]) != 0) {
            fprintf(stderr, "cannot build %s with scripts/build-sandbox-image.sh\n", which[i][0]);
            return -1;
        }
    }
    cleanup_containers();
    snprintf(moat_bin, sizeof(moat_bin), "%s/src/client/moat", build);
    static char a_prefix[80], a_image[300], a_allowed[300];
    snprintf(a_prefix, sizeof(a_prefix), "--container_name_prefix=%s", prefix);
    snprintf(a_image, sizeof(a_image), "--image=%s", debian_image);
    snprintf(a_allowed, sizeof(a_allowed), "--allowed_images=%s", minimal_image);
    const char *extra[] = {a_prefix, a_image, a_allowed, "--token=" TOKEN, NULL};
    if (!moatd_start(&P, true, extra))
        return -1;
    snprintf(out_path, sizeof(out_path), "%s/cli.out", P.state_dir);
    snprintf(err_path, sizeof(err_path), "%s/cli.err", P.state_dir);
    boxes[0] = (box){.image = debian_image, .debian = true};
    boxes[1] = (box){.image = minimal_image, .debian = false};
    for (int i = 0; i < 2; i++)
        moat_uuid_generate(boxes[i].chat);
    return 0;
}

/* The last test stops moatd and checks how it exited; here it runs only when a failure came
 * first. */
static int teardown(void **state)
{
    (void)state;
    moatd_stop(&P);
    cleanup_containers();
    moatd_remove_dir(P.state_dir);
    return 0;
}

/* Runs `moat ARGS`; stdout and stderr go to files. Returns the exit status. */
static int cli(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int cli(const char *fmt, ...)
{
    char args[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof(args), fmt, ap);
    va_end(ap);
    return sh("MOAT_ADDR=127.0.0.1:%d MOAT_TOKEN=" TOKEN " %s %s >%s 2>%s", P.port, moat_bin, args,
              out_path, err_path);
}

static void assert_out(const char *want)
{
    char *out = slurp_file(out_path);
    assert_string_equal(out, want);
    free(out);
}

static void assert_err_has(const char *want)
{
    char *err = slurp_file(err_path);
    if (strstr(err, want) == NULL)
        fail_msg("stderr lacks \"%s\": %s", want, err);
    free(err);
}

/* A `create --json` or `get --json` answer: its session id into sid (when not NULL), and its
 * image, which must be `image`. */
static void check_session_json(char *sid, size_t cap, const char *image)
{
    char *text = slurp_file(out_path);
    cJSON *j = moat_json_parse(text, strlen(text), MOAT_JSON_NUL_REJECT);
    if (j == NULL)
        fail_msg("not JSON: %s", text);
    const char *id = moat_json_str(j, "session_id", NULL);
    assert_non_null(id);
    if (sid != NULL)
        snprintf(sid, cap, "%s", id);
    const char *img = moat_json_str(j, "image", NULL);
    assert_non_null(img);
    assert_string_equal(img, image);
    cJSON_Delete(j);
    free(text);
}

static void test_create_one_session_per_image(void **state)
{
    (void)state;
    /* No --image: moatd's default, the Debian one. */
    assert_int_equal(cli("create --chat %s --ttl 600 --json", boxes[0].chat), 0);
    check_session_json(boxes[0].session, sizeof(boxes[0].session), debian_image);
    assert_int_equal(
        cli("create --chat %s --ttl 600 --image %s --json", boxes[1].chat, minimal_image), 0);
    check_session_json(boxes[1].session, sizeof(boxes[1].session), minimal_image);
    /* GetSession and ListSessions show each session's image; so does Docker. */
    for (int i = 0; i < 2; i++) {
        assert_int_equal(cli("get %s --json", boxes[i].session), 0);
        check_session_json(NULL, 0, boxes[i].image);
        assert_int_equal(cli("ls --chat %s --json", boxes[i].chat), 0);
        check_session_json(NULL, 0, boxes[i].image);
        assert_int_equal(sh("test \"$(/usr/bin/docker inspect -f '{{.Config.Image}}' %s%s)\" = %s",
                            prefix, boxes[i].session, boxes[i].image),
                         0);
    }
}

static void test_python3(void **state)
{
    (void)state;
    assert_int_equal(cli("exec %s -- \"python3 -c 'print(6*7)'\"", boxes[0].session), 0);
    assert_out("42\n");
    /* Debian's pip and git run too (no network, so nothing is fetched). */
    assert_int_equal(cli("exec %s -- 'python3 -m pip --version >/dev/null && git --version | cut "
                         "-d\" \" -f1-2 && curl --version | head -c 4'",
                         boxes[0].session),
                     0);
    assert_out("git version\ncurl");
    /* busybox has no python3: bash says so, with the shell's "command not found" status. */
    assert_int_equal(cli("exec %s -- \"python3 -c 'print(6*7)'\"", boxes[1].session), 127);
    assert_out("");
    assert_err_has("python3");
}

/* The basic cases of the other e2e suites, on each image. */
static void test_basic_cases_on_both(void **state)
{
    (void)state;
    char local[300], back[300];
    snprintf(local, sizeof(local), "%s/upload.bin", P.state_dir);
    snprintf(back, sizeof(back), "%s/download.bin", P.state_dir);
    assert_int_equal(sh("head -c 200000 /dev/urandom >%s", local), 0);
    for (int i = 0; i < 2; i++) {
        const char *sid = boxes[i].session;
        assert_int_equal(cli("exec %s -- 'echo hello from $(id -u)'", sid), 0);
        assert_out("hello from 1000\n");
        assert_int_equal(cli("exec %s -- 'echo out; echo err >&2; exit 7'", sid), 7);
        assert_out("out\n");
        char *err = slurp_file(err_path);
        assert_string_equal(err, "err\n");
        free(err);
        /* Files: up through the Files API into the chat workspace, read in the sandbox, back. */
        assert_int_equal(cli("cp %s %s:/workspace/chat/f.bin", local, sid), 0);
        assert_int_equal(cli("exec %s -- 'wc -c </workspace/chat/f.bin'", sid), 0);
        char *out = slurp_file(out_path);
        assert_int_equal(atoi(out), 200000);
        free(out);
        assert_int_equal(
            cli("exec %s -- 'printf written-in-%%s %d >/workspace/chat/w.txt'", sid, i), 0);
        assert_int_equal(cli("cp %s:/workspace/chat/f.bin %s", sid, back), 0);
        assert_int_equal(sh("cmp -s %s %s", local, back), 0);
        assert_int_equal(cli("cp %s:/workspace/chat/w.txt %s", sid, back), 0);
        out = slurp_file(back);
        char want[32];
        snprintf(want, sizeof(want), "written-in-%d", i);
        assert_string_equal(out, want);
        free(out);
        /* The root is read-only on both, even to root. */
        assert_int_not_equal(
            sh("/usr/bin/docker exec -u 0 %s%s touch /usr/x 2>/dev/null", prefix, sid), 0);
    }
    unlink(local);
    unlink(back);
}

static void test_image_refusals(void **state)
{
    (void)state;
    /* Not in allowed_images: refused, also for a chat that has a live session. */
    assert_int_not_equal(cli("create --chat %s --image evil:latest", boxes[0].chat), 0);
    assert_err_has("INVALID_ARGUMENT");
    assert_err_has("reason=image_not_allowed");
    /* Another tag of an allowed image is another image. */
    assert_int_not_equal(cli("create --chat %s --image %s-other", boxes[1].chat, minimal_image), 0);
    assert_err_has("reason=image_not_allowed");
    /* The chat's live session runs Debian: asking for busybox is refused, naming it... */
    assert_int_not_equal(cli("create --chat %s --image %s", boxes[0].chat, minimal_image), 0);
    assert_err_has("FAILED_PRECONDITION");
    assert_err_has("reason=session_image_differs");
    assert_err_has(boxes[0].session);
    /* ...asking for its own image or for none gets it... */
    assert_int_equal(cli("create --chat %s --image %s --json", boxes[0].chat, debian_image), 0);
    char sid[64];
    check_session_json(sid, sizeof(sid), debian_image);
    assert_string_equal(sid, boxes[0].session);
    assert_int_equal(cli("create --chat %s --json", boxes[1].chat), 0);
    check_session_json(sid, sizeof(sid), minimal_image);
    assert_string_equal(sid, boxes[1].session);
    /* ...and --new makes a second one beside it in the image asked for. */
    assert_int_equal(cli("create --chat %s --image %s --new --json", boxes[0].chat, minimal_image),
                     0);
    check_session_json(sid, sizeof(sid), minimal_image);
    assert_string_not_equal(sid, boxes[0].session);
    assert_int_equal(cli("stop %s", sid), 0);
}

static void test_stop(void **state)
{
    (void)state;
    for (int i = 0; i < 2; i++)
        assert_int_equal(cli("stop %s", boxes[i].session), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_create_one_session_per_image),
        cmocka_unit_test(test_python3),
        cmocka_unit_test(test_basic_cases_on_both),
        cmocka_unit_test(test_image_refusals),
        cmocka_unit_test(test_stop),
        cmocka_unit_test_prestate(test_moatd_exits_0_on_sigterm, &P),
    };
    return moat_run_group_tests("moat_e2e_images", tests, setup, teardown);
}
