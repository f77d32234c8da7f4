/* moat grpc tls: the TLS server side of a gRPC connection on GnuTLS, with no I/O, as h2.h is for
 * HTTP/2: the owner feeds the bytes it read to moat_grpc_tls_recv, which hands out what they
 * decrypt to, and writes the bytes the session gives its out callback. ALPN offers only "h2"
 * (RFC 9113 3.2): a client that negotiates nothing else is refused with a fatal alert, as one
 * that offers no ALPN at all. TLS 1.2 and 1.3 with AEAD ciphers and ephemeral key exchange (RFC
 * 9113 9.2). Single-threaded. */
#ifndef MOAT_GRPC_TLS_H
#define MOAT_GRPC_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A certificate chain, its private key and the priorities: loaded once, shared by sessions. */
typedef struct moat_grpc_tls_creds moat_grpc_tls_creds;

/* Loads PEM files. On failure err says why and *key_at_fault whether the key file (rather than
 * the certificate's) is the one to blame. */
moat_err moat_grpc_tls_creds_load(const char *cert_path, const char *key_path,
                                  moat_grpc_tls_creds **out, bool *key_at_fault, char *err,
                                  size_t errlen);
void moat_grpc_tls_creds_free(moat_grpc_tls_creds *c);

typedef struct moat_grpc_tls moat_grpc_tls;

/* Takes bytes to write to the client; false when they cannot be (the session then fails). */
typedef bool (*moat_grpc_tls_out)(void *ud, const uint8_t *data, size_t len);
/* Takes decrypted bytes; false to drop the rest of what was read. */
typedef bool (*moat_grpc_tls_plain)(void *ud, const uint8_t *data, size_t len);

/* A server session on creds (which must outlive it); out gets every byte to write. NULL when
 * out of memory. */
moat_grpc_tls *moat_grpc_tls_new(const moat_grpc_tls_creds *creds, moat_grpc_tls_out out, void *ud);
void moat_grpc_tls_free(moat_grpc_tls *t);

/* Feeds bytes read from the client: the handshake while it lasts, then records, whose plaintext
 * goes to plain. Takes every byte (a partial record waits inside GnuTLS). MOAT_E_PROTO when the
 * session failed (a handshake error, ALPN other than h2, a bad record; the alert saying so went
 * to out) or MOAT_E_CLOSED on the client's close_notify; *why says what. */
moat_err moat_grpc_tls_recv(moat_grpc_tls *t, const uint8_t *data, size_t len,
                            moat_grpc_tls_plain plain, void *ud, const char **why);
/* Whether the handshake is done (h2 negotiated) and the session has not failed: only then may
 * moat_grpc_tls_send be used. */
bool moat_grpc_tls_ready(const moat_grpc_tls *t);
/* Encrypts len bytes for the client, through out. False when the session failed. */
bool moat_grpc_tls_send(moat_grpc_tls *t, const uint8_t *data, size_t len);
/* A close_notify, through out, when the session is ready. */
void moat_grpc_tls_bye(moat_grpc_tls *t);

#ifdef __cplusplus
}
#endif
#endif
