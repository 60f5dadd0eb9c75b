/* tls_io.h — GnuTLS driven over memory for one connection: the server side
 * for inbound clients, the client side for the outbound peer.
 *
 * The proxy hands in ciphertext as libuv delivers it; GnuTLS pulls from that
 * buffer and pushes ciphertext into an output buffer that the proxy flushes
 * with one uv_write. Nothing here touches a socket or libuv, and no
 * GNUTLS_E_* code escapes: results are TLSIO_* values.
 *
 * Ownership: a tls_io owns its GnuTLS session and both buffers;
 * tls_io_free() releases them. The credentials stay owned by the caller and
 * must outlive the tls_io.
 */
#ifndef TLSFRONT_PROXY_TLS_IO_H
#define TLSFRONT_PROXY_TLS_IO_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>
#include <gnutls/gnutls.h>

#include "certs/credentials.h"
#include "proxy/smtp/buf.h"

enum { TLSIO_OK = 0, TLSIO_AGAIN = -1, TLSIO_EOF = -2, TLSIO_ERROR = -3 };

/* Why a handshake failed, for the metrics (issue 13). */
enum tlsio_failure {
	TLSIO_FAIL_NONE = 0,
	TLSIO_FAIL_ALERT,	/* the other side sent a fatal alert */
	TLSIO_FAIL_PROTOCOL,	/* any other error */
	TLSIO_FAIL_ALPN,	/* no common application protocol (SPEC §5) */
	TLSIO_FAIL_CERTIFICATE, /* the peer's certificate did not verify */
};

struct tls_io {
	gnutls_session_t session;
	struct buf in;		    /* ciphertext received, not yet pulled */
	size_t in_off;		    /* bytes of in already pulled */
	const char *lent;	    /* tls_io_lend(): the caller's bytes, not owned */
	size_t lent_len;	    /* of them, not yet pulled */
	struct buf out;		    /* ciphertext to write */
	bool established;	    /* handshake complete */
	bool renegotiation_refused; /* a client asked for renegotiation */
	char error[128];	    /* why the last TLSIO_ERROR happened */
	enum tlsio_failure failure; /* set when tls_io_handshake() fails */
};

int tls_io_init(struct tls_io *t, struct creds *creds);
/* The client side, for the outbound peer leg (creds_client_session()):
 * tls_io_handshake() then sends the ClientHello into t->out. */
int tls_io_init_client(struct tls_io *t, struct creds *creds, const char *server_name, bool verify);
void tls_io_free(struct tls_io *t);

/* Ciphertext from the client. Returns false when out of memory. */
bool tls_io_feed(struct tls_io *t, const char *p, size_t n);

/* As tls_io_feed(), without a copy when nothing older is waiting (issue
 * 12): GnuTLS reads p in place. p must stay valid until tls_io_unlend(),
 * which the caller must call before p goes away. */
bool tls_io_lend(struct tls_io *t, const char *p, size_t n);
/* Copies what GnuTLS has not read of the lent bytes into t's own buffer.
 * Returns false when out of memory. */
bool tls_io_unlend(struct tls_io *t);

/* Drives the handshake: TLSIO_OK when complete, TLSIO_AGAIN for more input,
 * TLSIO_ERROR (reason in t->error). */
int tls_io_handshake(struct tls_io *t);

/* Decrypts into p: bytes (>0), TLSIO_AGAIN, TLSIO_EOF (close_notify) or
 * TLSIO_ERROR. */
ssize_t tls_io_recv(struct tls_io *t, char *p, size_t n);

/* As tls_io_recv(), without a copy (issue 12): the record's plaintext stays
 * in GnuTLS's buffer, *data points into it for len bytes (the return value)
 * until the caller releases *pkt with gnutls_packet_deinit(). The packet
 * outlives t. *pkt is NULL unless the return value is > 0. */
ssize_t tls_io_recv_packet(struct tls_io *t, gnutls_packet_t *pkt, const char **data);

/* True when decrypted or undecrypted input is waiting. */
bool tls_io_pending(const struct tls_io *t);

/* Encrypts n plaintext bytes into t->out. TLSIO_OK or TLSIO_ERROR. */
int tls_io_send(struct tls_io *t, const char *p, size_t n);

/* Queues a close_notify alert into t->out. */
void tls_io_bye(struct tls_io *t);

/* For the summary line: "TLS1.3", the cipher name, the SNI (or "none"). */
const char *tls_io_version(const struct tls_io *t);
const char *tls_io_cipher(const struct tls_io *t);
/* The cipher's key size in bits ({cipher_bits} for milters); 0 without TLS. */
unsigned tls_io_cipher_bits(const struct tls_io *t);
void tls_io_sni(const struct tls_io *t, char *out, size_t outlen);
/* True when the handshake resumed an earlier session (a ticket). */
bool tls_io_resumed(const struct tls_io *t);

#endif
