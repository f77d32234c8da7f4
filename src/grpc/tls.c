/* TLS for the gRPC listener on GnuTLS, over memory: see tls.h. */
#include "grpc/tls.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

/* TLS 1.2 and 1.3 only; for 1.2 only the AEAD ciphers with ephemeral key exchange that RFC 9113
 * 9.2.2 allows HTTP/2 (its other suites would oblige us to refuse with INADEQUATE_SECURITY after
 * the handshake), the server's order first. */
#define PRIORITIES                                                                                 \
    "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2:-CIPHER-ALL:+CHACHA20-POLY1305:+AES-256-GCM:"      \
    "+AES-128-GCM:-KX-ALL:+ECDHE-ECDSA:+ECDHE-RSA:%SERVER_PRECEDENCE"

struct moat_grpc_tls_creds {
    gnutls_certificate_credentials_t cert;
    gnutls_priority_t priorities;
};

struct moat_grpc_tls {
    gnutls_session_t session;
    moat_grpc_tls_out out;
    void *ud;
    /* What the current moat_grpc_tls_recv has not handed GnuTLS yet. */
    const uint8_t *in;
    size_t in_len;
    bool handshaken, failed;
};

static void errf(char *err, size_t errlen, const char *path, const char *what)
{
    snprintf(err, errlen, "%s: %s", path, what);
}

/* Reads a PEM file, naming the error when it cannot. */
static bool load(const char *path, gnutls_datum_t *d, char *err, size_t errlen)
{
    int rc = gnutls_load_file(path, d);
    if (rc == 0)
        return true;
    errf(err, errlen, path, rc == GNUTLS_E_FILE_ERROR ? strerror(errno) : gnutls_strerror(rc));
    return false;
}

moat_err moat_grpc_tls_creds_load(const char *cert_path, const char *key_path,
                                  moat_grpc_tls_creds **out, bool *key_at_fault, char *err,
                                  size_t errlen)
{
    *out = NULL;
    *key_at_fault = false;
    gnutls_datum_t cert = {NULL, 0}, key = {NULL, 0};
    moat_grpc_tls_creds *c = calloc(1, sizeof(*c));
    moat_err e = MOAT_E_INVAL;
    if (c == NULL || gnutls_certificate_allocate_credentials(&c->cert) != 0) {
        free(c);
        snprintf(err, errlen, "out of memory");
        return MOAT_E_NOMEM;
    }
    if (!load(cert_path, &cert, err, errlen)) {
        e = MOAT_E_IO;
        goto fail;
    }
    *key_at_fault = true;
    if (!load(key_path, &key, err, errlen)) {
        e = MOAT_E_IO;
        goto fail;
    }
    /* Each file parsed alone first, so the error names the one that is wrong. */
    gnutls_x509_crt_t *crts = NULL;
    unsigned ncrts = 0;
    int rc = gnutls_x509_crt_list_import2(&crts, &ncrts, &cert, GNUTLS_X509_FMT_PEM, 0);
    if (rc < 0) {
        *key_at_fault = false;
        errf(err, errlen, cert_path, "not a PEM certificate");
        goto fail;
    }
    for (unsigned i = 0; i < ncrts; i++)
        gnutls_x509_crt_deinit(crts[i]);
    gnutls_free(crts);
    gnutls_x509_privkey_t pk;
    if (gnutls_x509_privkey_init(&pk) != 0)
        goto fail;
    rc = gnutls_x509_privkey_import2(pk, &key, GNUTLS_X509_FMT_PEM, NULL, GNUTLS_PKCS_PLAIN);
    gnutls_x509_privkey_deinit(pk);
    if (rc < 0) {
        errf(err, errlen, key_path, "not an unencrypted PEM private key");
        goto fail;
    }
    rc = gnutls_certificate_set_x509_key_mem2(c->cert, &cert, &key, GNUTLS_X509_FMT_PEM, NULL, 0);
    if (rc < 0) {
        errf(err, errlen, key_path,
             rc == GNUTLS_E_CERTIFICATE_KEY_MISMATCH ? "does not match the certificate"
                                                     : gnutls_strerror(rc));
        goto fail;
    }
    const char *pos = NULL;
    if (gnutls_priority_init(&c->priorities, PRIORITIES, &pos) != 0) {
        *key_at_fault = false;
        snprintf(err, errlen, "GnuTLS refuses moat's priorities at \"%s\"", pos != NULL ? pos : "");
        goto fail;
    }
    gnutls_free(cert.data);
    gnutls_free(key.data);
    *out = c;
    return MOAT_OK;
fail:
    gnutls_free(cert.data);
    gnutls_free(key.data);
    gnutls_certificate_free_credentials(c->cert);
    free(c);
    return e;
}

void moat_grpc_tls_creds_free(moat_grpc_tls_creds *c)
{
    if (c == NULL)
        return;
    gnutls_priority_deinit(c->priorities);
    gnutls_certificate_free_credentials(c->cert);
    free(c);
}

/* GnuTLS's transport: reads come from what recv was given, writes go to out, neither blocks. */
static ssize_t pull(gnutls_transport_ptr_t ptr, void *buf, size_t len)
{
    moat_grpc_tls *t = ptr;
    if (t->in_len == 0) {
        gnutls_transport_set_errno(t->session, EAGAIN);
        return -1;
    }
    size_t n = len < t->in_len ? len : t->in_len;
    memcpy(buf, t->in, n);
    t->in += n;
    t->in_len -= n;
    return (ssize_t)n;
}

static int pull_timeout(gnutls_transport_ptr_t ptr, unsigned ms)
{
    (void)ms;
    return ((moat_grpc_tls *)ptr)->in_len > 0;
}

static ssize_t push(gnutls_transport_ptr_t ptr, const void *data, size_t len)
{
    moat_grpc_tls *t = ptr;
    if (!t->out(t->ud, data, len)) {
        gnutls_transport_set_errno(t->session, ENOMEM);
        return -1;
    }
    return (ssize_t)len;
}

moat_grpc_tls *moat_grpc_tls_new(const moat_grpc_tls_creds *creds, moat_grpc_tls_out out, void *ud)
{
    moat_grpc_tls *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return NULL;
    t->out = out;
    t->ud = ud;
    if (gnutls_init(&t->session, GNUTLS_SERVER | GNUTLS_NONBLOCK | GNUTLS_NO_TICKETS) != 0) {
        free(t);
        return NULL;
    }
    static const gnutls_datum_t h2 = {(unsigned char *)"h2", 2};
    if (gnutls_priority_set(t->session, creds->priorities) != 0 ||
        gnutls_credentials_set(t->session, GNUTLS_CRD_CERTIFICATE, creds->cert) != 0 ||
        gnutls_alpn_set_protocols(t->session, &h2, 1, GNUTLS_ALPN_MANDATORY) != 0) {
        moat_grpc_tls_free(t);
        return NULL;
    }
    /* The owner's pre-auth timer bounds the handshake. */
    gnutls_handshake_set_timeout(t->session, GNUTLS_INDEFINITE_TIMEOUT);
    gnutls_transport_set_ptr(t->session, t);
    gnutls_transport_set_pull_function(t->session, pull);
    gnutls_transport_set_pull_timeout_function(t->session, pull_timeout);
    gnutls_transport_set_push_function(t->session, push);
    return t;
}

void moat_grpc_tls_free(moat_grpc_tls *t)
{
    if (t == NULL)
        return;
    gnutls_deinit(t->session);
    free(t);
}

static moat_err failed(moat_grpc_tls *t, int rc, const char **why)
{
    t->failed = true;
    gnutls_alert_send_appropriate(t->session, rc);
    *why = gnutls_strerror(rc);
    return MOAT_E_PROTO;
}

static bool alpn_h2(moat_grpc_tls *t)
{
    gnutls_datum_t p;
    return gnutls_alpn_get_selected_protocol(t->session, &p) == 0 && p.size == 2 &&
           memcmp(p.data, "h2", 2) == 0;
}

moat_err moat_grpc_tls_recv(moat_grpc_tls *t, const uint8_t *data, size_t len,
                            moat_grpc_tls_plain plain, void *ud, const char **why)
{
    if (t->failed) {
        *why = "TLS session failed";
        return MOAT_E_PROTO;
    }
    t->in = data;
    t->in_len = len;
    moat_err e = MOAT_OK;
    if (!t->handshaken) {
        int rc;
        /* A warning alert is not the end of the handshake. */
        do
            rc = gnutls_handshake(t->session);
        while (rc < 0 && rc != GNUTLS_E_AGAIN && !gnutls_error_is_fatal(rc));
        if (rc == GNUTLS_E_AGAIN)
            goto out;
        if (rc < 0) {
            e = failed(t, rc, why);
            goto out;
        }
        if (!alpn_h2(t)) {
            /* A client that offered no ALPN at all gets through GnuTLS's handshake. */
            t->failed = true;
            gnutls_alert_send(t->session, GNUTLS_AL_FATAL, GNUTLS_A_NO_APPLICATION_PROTOCOL);
            *why = "client did not negotiate h2 (ALPN)";
            e = MOAT_E_PROTO;
            goto out;
        }
        t->handshaken = true;
    }
    uint8_t buf[16384];
    for (;;) {
        ssize_t n = gnutls_record_recv(t->session, buf, sizeof(buf));
        if (n > 0) {
            if (!plain(ud, buf, (size_t)n))
                break;
            continue;
        }
        if (n == 0) {
            *why = "client closed TLS";
            e = MOAT_E_CLOSED;
            break;
        }
        if (n == GNUTLS_E_AGAIN)
            break;
        if (gnutls_error_is_fatal((int)n)) {
            e = failed(t, (int)n, why);
            break;
        }
    }
out:
    t->in = NULL;
    t->in_len = 0;
    return e;
}

bool moat_grpc_tls_ready(const moat_grpc_tls *t)
{
    return t->handshaken && !t->failed;
}

bool moat_grpc_tls_send(moat_grpc_tls *t, const uint8_t *data, size_t len)
{
    while (len > 0 && !t->failed) {
        /* push never says EAGAIN: anything below 0 is the end of the session. */
        ssize_t n = gnutls_record_send(t->session, data, len);
        if (n < 0) {
            t->failed = true;
            break;
        }
        data += n;
        len -= (size_t)n;
    }
    return !t->failed;
}

void moat_grpc_tls_bye(moat_grpc_tls *t)
{
    if (moat_grpc_tls_ready(t))
        gnutls_bye(t->session, GNUTLS_SHUT_WR);
}
