/* Certificates for the TLS tests, made by the openssl command in a new directory under /tmp:
 * - a self-signed one for the gRPC listener: P-256, CN and subjectAltName localhost and
 *   127.0.0.1, valid a day;
 * - a throwaway PKI (a CA, servers' and clients' certificates, another CA) by
 *   make_test_certs.sh beside this file, which lists what it writes. */
#ifndef MOAT_TEST_TLS_FILES_H
#define MOAT_TEST_TLS_FILES_H

#include <stdbool.h>

typedef struct tls_files {
    char dir[64];
    char cert[96]; /* dir/cert.pem */
    char key[96];  /* dir/key.pem (unencrypted) */
} tls_files;

/* Makes the directory and both files; false (nothing left behind) when it could not. */
bool tls_files_make(tls_files *f);
/* Removes both files and the directory (what tls_files_make left; nothing when it failed). */
void tls_files_remove(tls_files *f);

/* Makes a new directory, its path into dir, and the PKI in it; false (nothing left behind)
 * when it could not. */
bool test_pki_make(char dir[64]);
/* Removes the directory and everything in it; nothing when dir is "". dir becomes "". */
void test_pki_remove(char dir[64]);

#endif
