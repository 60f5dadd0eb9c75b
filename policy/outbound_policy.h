/* outbound_policy.h — the outbound TLS policy table of SPEC §4.3 as pure
 * functions: what tlsfront does when the peer offers no STARTTLS, when the
 * handshake fails, and whether the certificate is checked.
 *
 * outbound_nego (proxy/smtp/) asks; this file answers. Never includes libuv,
 * GnuTLS, sockets or clocks; never logs.
 */
#ifndef TLSFRONT_POLICY_OUTBOUND_POLICY_H
#define TLSFRONT_POLICY_OUTBOUND_POLICY_H

#include <stdbool.h>

#include "policy/config.h"

enum outbound_verdict {
	OUT_PLAINTEXT = 0,    /* go on in plaintext, nothing to say */
	OUT_PLAINTEXT_LOGGED, /* go on in plaintext, with a log line */
	OUT_RETRY_PLAINTEXT,  /* a fresh plaintext connection, once, logged */
	OUT_REFUSE,	      /* 421 4.7.0 to the legacy server and close */
};

/* Whether STARTTLS is sent when the peer offers it. */
bool outbound_policy_wants_tls(enum tf_outbound_tls tls);

/* The peer offers no STARTTLS (or refuses EHLO, or STARTTLS itself). */
enum outbound_verdict outbound_policy_no_starttls(enum tf_outbound_tls tls);

/* The handshake failed or timed out (a certificate that does not verify
 * fails it under "verify"). */
enum outbound_verdict outbound_policy_handshake_failed(enum tf_outbound_tls tls);

/* Whether the chain and the name are checked against ca_file. */
bool outbound_policy_verifies(enum tf_outbound_tls tls);

#endif
