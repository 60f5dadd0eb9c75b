/* credentials.h — GnuTLS credentials as one refcounted generation.
 *
 * A generation holds the server certificate credentials (one or more
 * cert/key pairs, or the in-memory self-signed default of SPEC §5), the
 * priority cache (TLS 1.0 and 1.1 always removed), a reference on the
 * session ticket key and the ticket lifetime, and separate client
 * certificate credentials for the outbound peer leg: the trust anchors of
 * "verify" and copies of the same pairs, which the generation owns and lends
 * to client sessions. Sessions take a reference when they start and drop it
 * after gnutls_deinit(); a reload (SIGHUP) builds a whole new generation and
 * the old one dies with its last session.
 *
 * The session ticket key (struct creds_tickets) lives apart from the
 * generations: one key shared by every worker thread and every generation,
 * so a reload keeps tickets valid; the caller replaces it on a timer
 * (creds_tickets_rotate), and new sessions get the new key.
 *
 * Never includes libuv or policy/: the caller passes plain values. Never logs:
 * errors come back as text in a caller's buffer.
 */
#ifndef TLSFRONT_CERTS_CREDENTIALS_H
#define TLSFRONT_CERTS_CREDENTIALS_H

#include <stdbool.h>
#include <stddef.h>
#include <gnutls/gnutls.h>

struct creds_pair {
	const char *cert_file; /* PEM */
	const char *key_file;  /* PEM */
	const char *ocsp_file; /* DER OCSP response stapled for this chain; NULL:
				* none. Refused when it is not a successful
				* "good" answer for this certificate, or when its
				* nextUpdate has passed. */
};

struct creds_tickets; /* opaque */

struct creds_params {
	const struct creds_pair *pairs; /* may be NULL when n_pairs == 0 */
	size_t n_pairs;			/* 0: make a self-signed certificate */
	const char *server_name;	/* CN and DNS SAN of the self-signed one */
	const char *priority;		/* GnuTLS priority string; NULL: the
					 * built-in AEAD-only profile */
	struct creds_tickets *tickets;	/* the shared ticket key (the generation
					 * takes a reference); NULL: a key of
					 * the generation's own */
	unsigned ticket_lifetime;	/* seconds, at most CREDS_TICKET_LIFETIME_MAX:
					 * the lifetime hint sent with each
					 * ticket; 0: no session tickets */
	size_t *ocsp_failed;		/* out, may be NULL: when creds_new fails
					 * on an OCSP response, 1 + the index of
					 * its pair; otherwise 0 */
};

#define CREDS_TICKET_LIFETIME_MAX 604800u /* 7 days: GnuTLS's and RFC 8446's limit */

struct creds; /* opaque */

/* A new session ticket key (random, from gnutls_session_ticket_key_generate)
 * with a reference count of 1. NULL on error, with a message in err. */
struct creds_tickets *creds_tickets_new(char *err, size_t errlen);
void creds_tickets_ref(struct creds_tickets *t);   /* thread-safe */
void creds_tickets_unref(struct creds_tickets *t); /* thread-safe; NULL is a no-op */
/* Replaces the key with a fresh one (thread-safe) and wipes the old one.
 * Sessions prepared from then on issue and accept tickets of the new key
 * only; a ticket of the old key gets a full handshake. Returns 0, or a
 * negative GnuTLS error code and the old key stays. */
int creds_tickets_rotate(struct creds_tickets *t);

/* Checks a priority string as creds_new() would use it: GnuTLS must accept
 * it, and with TLS 1.0, TLS 1.1 and SSL 3.0 removed (always) it must still
 * enable TLS 1.2 or TLS 1.3. Returns 0, or -1 with a message in err. */
int creds_check_priority(const char *priority, char *err, size_t errlen);

/* Builds a generation with a reference count of 1 (the caller's). On error
 * returns NULL and writes a message naming the file or the GnuTLS error into
 * err. *self_signed is set when the default certificate was made. */
struct creds *creds_new(const struct creds_params *params, bool *self_signed, char *err,
			size_t errlen);

void creds_ref(struct creds *c);   /* thread-safe */
void creds_unref(struct creds *c); /* thread-safe; frees at zero; NULL is a no-op */

/* Prepares a new server session with these credentials: certificate
 * credentials, priorities, session tickets (the current key of the shared
 * ticket key, and the ticket lifetime), ALPN "smtp" (SPEC §5 ALPN rule),
 * renegotiation refused. Returns 0 or a negative GnuTLS error code. The
 * caller owns *session and sets its transport functions. GnuTLS sends no
 * alert on a failed handshake by itself: the caller calls
 * gnutls_alert_send_appropriate() with the error (for the ALPN refusal,
 * GNUTLS_E_NO_APPLICATION_PROTOCOL, that is no_application_protocol). */
int creds_server_session(struct creds *c, gnutls_session_t *session);

/* Loads the trust anchors of outbound "verify" (SPEC §4.3) into a generation
 * still being built (before it is shared): a PEM file, or "system". Returns
 * 0, or -1 with a message in err. */
int creds_load_trust(struct creds *c, const char *ca_file, char *err, size_t errlen);

/* Prepares a new client session for the outbound peer leg (SPEC §4.2):
 * the generation's priorities and client credentials, no ALPN (§7.7), SNI =
 * server_name unless it is an IP address (NULL: no name at all). With
 * verify, the handshake fails unless the chain leads to the generation's
 * ca_file and the certificate is for server_name (which must then not be
 * NULL). Returns 0 or a negative GnuTLS error code
 * (GNUTLS_E_NO_CERTIFICATE_FOUND: verify without trust anchors).
 *
 * A peer that asks for a client certificate gets the first listed pair
 * whose key one of its requested signature algorithms can use, whatever CAs
 * it names (§4.2.6, §7.9); none usable: an empty Certificate message. The
 * certificate and key stay the generation's, so the caller must hold a
 * reference on c until it has called gnutls_deinit(*session). The session's
 * user pointer (gnutls_session_set_ptr) is c, for that choice: the caller
 * must not change it. */
int creds_client_session(struct creds *c, const char *server_name, bool verify,
			 gnutls_session_t *session);

/* Writes the SHA-256 fingerprint of the first certificate, as hex with colons,
 * into out (for the start-up log line). Returns 0 or -1. */
int creds_fingerprint(struct creds *c, char *out, size_t outlen);

/* The notAfter time (Unix seconds) of the leaf certificate of pair idx, in
 * the listed order (0 for the self-signed default); -1 when there is no
 * such pair or it cannot be read. For tlsfront_certificate_expiry_seconds. */
long long creds_expiry(struct creds *c, unsigned idx);

#endif
