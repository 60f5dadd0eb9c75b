/* self_signed.h — the in-memory self-signed default certificate of SPEC §5
 * (private to certs/).
 *
 * Used only by credentials.c when no cert/key pair is configured. Never
 * includes libuv or policy/, never touches the file system, never logs.
 */
#ifndef TLSFRONT_CERTS_SELF_SIGNED_H
#define TLSFRONT_CERTS_SELF_SIGNED_H

#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

/* Makes a fresh ECDSA P-256 key and an X.509 v3 certificate for server_name
 * (CN and DNS subjectAltName), valid from an hour ago for about ten years,
 * digitalSignature / serverAuth, self-signed with SHA-256. On success returns
 * 0 and the caller owns *crt and *key (gnutls_x509_crt_deinit,
 * gnutls_x509_privkey_deinit); on error returns a negative GnuTLS error code
 * and sets both to NULL. */
int self_signed_make(const char *server_name, gnutls_x509_crt_t *crt, gnutls_x509_privkey_t *key);

#endif
