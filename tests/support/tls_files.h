/* A self-signed certificate for the gRPC listener's TLS in tests: P-256, CN and subjectAltName
 * localhost and 127.0.0.1, valid a day, made by the openssl command in a new directory. */
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

#endif
