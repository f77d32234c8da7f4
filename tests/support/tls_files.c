/* Test certificates from the openssl command (see tls_files.h). */
#define _XOPEN_SOURCE 700
#include "tls_files.h"

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

bool tls_files_make(tls_files *f)
{
    snprintf(f->dir, sizeof(f->dir), "/tmp/moat-tls-XXXXXX");
    if (mkdtemp(f->dir) == NULL) {
        f->dir[0] = '\0';
        return false;
    }
    snprintf(f->cert, sizeof(f->cert), "%s/cert.pem", f->dir);
    snprintf(f->key, sizeof(f->key), "%s/key.pem", f->dir);
    char cmd[512];
    snprintf(cmd, sizeof(cmd),
             "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 "
             "-subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 "
             "-keyout %s -out %s 2>/dev/null",
             f->key, f->cert);
    if (system(cmd) == 0)
        return true;
    fprintf(stderr, "tls_files: openssl failed: %s\n", cmd);
    tls_files_remove(f);
    return false;
}

void tls_files_remove(tls_files *f)
{
    if (f->dir[0] == '\0')
        return;
    unlink(f->cert);
    unlink(f->key);
    rmdir(f->dir);
    f->dir[0] = '\0';
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

bool test_pki_make(char dir[64])
{
    snprintf(dir, 64, "/tmp/moat-pki-XXXXXX");
    if (mkdtemp(dir) == NULL) {
        dir[0] = '\0';
        return false;
    }
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "OPENSSL='%s' sh '%s' '%s'", MOAT_TEST_OPENSSL,
             MOAT_TEST_CERT_SCRIPT, dir);
    if (system(cmd) == 0)
        return true;
    fprintf(stderr, "could not make the test certificates: %s\n", cmd);
    test_pki_remove(dir);
    return false;
}

void test_pki_remove(char dir[64])
{
    if (dir[0] == '\0')
        return;
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    dir[0] = '\0';
}
