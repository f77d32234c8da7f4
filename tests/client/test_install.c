/* `cmake --install` into a scratch prefix, then what a user of the installed tree would
 * do: build tests/client/install_consumer against it once with pkg-config and once with
 * find_package(moat) (shared and static), and run each against the installed moatd
 * (with the installed execd bundle) on the real Docker engine: create a session, run
 * `echo hi` streamed, stop it. The prefix, moatd's state and the sessions' containers are
 * removed in the teardown, which runs after a failed assertion too. */
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/common.h"
#include "harness.h"

static moatd_proc P;
static char dir[64];           /* the scratch dir: prefix/, builds, logs */
static char prefix[128];       /* the install prefix */
static char name_prefix[64];   /* moatd's container name prefix, unique to this run */
static char consumer_src[512]; /* tests/client/install_consumer */

static void cleanup_containers(void)
{
    char cmd[256];
    snprintf(cmd, sizeof cmd,
             "ids=$(/usr/bin/docker ps -aq --filter name=%s); "
             "[ -z \"$ids\" ] || /usr/bin/docker rm -f $ids >/dev/null 2>&1",
             name_prefix);
    int rc = system(cmd);
    (void)rc;
}

/* Runs a shell command line, its output to log (under dir), which is printed when it
 * fails. Returns its exit status. */
static int run(const char *log, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int run(const char *log, const char *fmt, ...)
{
    char cmd[4096], full[4400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    snprintf(full, sizeof full, "(%s) >%s/%s 2>&1", cmd, dir, log);
    int rc = system(full);
    int status = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
    if (status != 0) {
        fprintf(stderr, "test_install: `%s` exited %d:\n", cmd, status);
        snprintf(full, sizeof full, "cat %s/%s >&2", dir, log);
        rc = system(full);
    }
    return status;
}

static int setup(void **state)
{
    (void)state;
    const char *source = getenv("MOAT_SOURCE_DIR"), *build = getenv("MOAT_BUILD_DIR");
    if (source == NULL || build == NULL)
        return -1;
    snprintf(consumer_src, sizeof consumer_src, "%s/tests/client/install_consumer", source);
    snprintf(name_prefix, sizeof name_prefix, "moat-install-%d-", (int)getpid());
    snprintf(dir, sizeof dir, "/tmp/moat-install-XXXXXX");
    if (mkdtemp(dir) == NULL)
        return -1;
    snprintf(prefix, sizeof prefix, "%s/prefix", dir);
    if (run("install.log", "%s --install %s --prefix %s", MOAT_CMAKE, build, prefix) != 0)
        return -1;
    char moatd[256], bundle[256], image[300];
    snprintf(moatd, sizeof moatd, "%s/%s/moatd", prefix, MOAT_INSTALL_BINDIR);
    snprintf(bundle, sizeof bundle, "--execd_bundle=%s/%s/moat/execd-bundle", prefix,
             MOAT_INSTALL_LIBDIR);
    char names[128];
    snprintf(names, sizeof names, "--container_name_prefix=%s", name_prefix);
    /* MOAT_SANDBOX_IMAGE: the image scripts/build-sandbox-image.sh built (default: moatd's) */
    const char *img = getenv("MOAT_SANDBOX_IMAGE");
    snprintf(image, sizeof image, "--image=%s", img != NULL ? img : "");
    const char *extra[] = {names, bundle, img != NULL && img[0] ? image : NULL, NULL};
    return moatd_start_bin(&P, moatd, true, extra) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    int rc = P.pid > 0 ? moatd_stop(&P) : 0;
    if (rc != 0)
        moatd_dump_log(&P);
    cleanup_containers();
    if (P.state_dir[0] != '\0')
        moatd_remove_dir(P.state_dir);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf --one-file-system '%s'", dir);
    int removed = system(cmd);
    return rc == 0 && removed == 0 ? 0 : -1;
}

/* Runs a consumer binary against moatd with a new chat. */
static void consume(const char *binary)
{
    char chat[MOAT_UUID_STR_LEN];
    moat_uuid_generate(chat);
    assert_int_equal(run("consumer.log", "%s 127.0.0.1:%d %s", binary, P.port, chat), 0);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "cat %s/consumer.log", dir);
    assert_int_equal(system(cmd), 0);
}

/* Only the client's headers, which include nothing but the C library and each other;
 * a versioned soname; libmoat.so exports moat_* alone (nanopb's runtime stays inside). */
static void test_installed_tree(void **state)
{
    (void)state;
    char path[256];
    snprintf(path, sizeof path, "%s/%s/moat", prefix, MOAT_INSTALL_INCLUDEDIR);
    DIR *d = opendir(path);
    assert_non_null(d);
    int headers = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        if (e->d_name[0] == '.')
            continue;
        assert_true(strcmp(e->d_name, "client.h") == 0 || strcmp(e->d_name, "common.h") == 0);
        headers++;
    }
    closedir(d);
    assert_int_equal(headers, 2);
    assert_int_equal(run("includes.log",
                         "! grep -h '#include' %s/*.h | grep -v "
                         "'<stdbool.h>\\|<stddef.h>\\|<stdint.h>\\|\"moat/common.h\"'",
                         path),
                     0);
    char lib[256];
    snprintf(lib, sizeof lib, "%s/%s", prefix, MOAT_INSTALL_LIBDIR);
    assert_int_equal(run("soname.log",
                         "test \"$(readlink %s/libmoat.so.0)\" = libmoat.so.%s && "
                         "objdump -p %s/libmoat.so.0 | grep -q 'SONAME *libmoat.so.0$' && "
                         "test -f %s/libmoat.a",
                         lib, MOAT_VERSION, lib, lib),
                     0);
    assert_int_equal(run("exports.log",
                         "nm -D --defined-only --without-symbol-versions %s/libmoat.so.0 "
                         ">%s/exports && grep -q ' T moat_client_connect$' %s/exports && "
                         "! awk '$2 == \"T\" && $3 !~ /^moat_/' %s/exports | grep .",
                         lib, dir, dir, dir),
                     0);
    assert_int_equal(run("daemon.log",
                         "test -x %s/%s/moat/execd-bundle/moat-execd && "
                         "grep -q 'ExecStart=%s/%s/moatd' %s/%s/moatd.service && "
                         "test -f %s/%s/moat/moatd.conf.sample",
                         prefix, MOAT_INSTALL_LIBDIR, prefix, MOAT_INSTALL_BINDIR, prefix,
                         MOAT_SYSTEMD_UNIT_DIR, prefix, MOAT_INSTALL_SYSCONFDIR),
                     0);
}

static void test_pkg_config(void **state)
{
    (void)state;
    assert_int_equal(
        run("pkg-config.log",
            "export PKG_CONFIG_PATH=%s/%s/pkgconfig && "
            "%s -std=c11 -Wall -Wextra -Wpedantic -Werror -o %s/consumer-pc %s/consumer.c "
            "$(pkg-config --cflags --libs moat) -Wl,-rpath,$(pkg-config --variable=libdir moat)",
            prefix, MOAT_INSTALL_LIBDIR, MOAT_CC, dir, consumer_src),
        0);
    char binary[128];
    snprintf(binary, sizeof binary, "%s/consumer-pc", dir);
    consume(binary);
}

static void test_find_package(void **state)
{
    (void)state;
    assert_int_equal(run("find-package.log",
                         "%s -S %s -B %s/consumer-cmake -DCMAKE_PREFIX_PATH=%s "
                         "-DCMAKE_C_COMPILER=%s && %s --build %s/consumer-cmake",
                         MOAT_CMAKE, consumer_src, dir, prefix, MOAT_CC, MOAT_CMAKE, dir),
                     0);
    char binary[128];
    snprintf(binary, sizeof binary, "%s/consumer-cmake/consumer", dir);
    consume(binary);
    snprintf(binary, sizeof binary, "%s/consumer-cmake/consumer_static", dir);
    consume(binary);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_installed_tree),
        cmocka_unit_test(test_pkg_config),
        cmocka_unit_test(test_find_package),
    };
    return cmocka_run_group_tests_name("moat_install", tests, setup, teardown);
}
