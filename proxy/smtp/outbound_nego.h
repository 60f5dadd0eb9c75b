/* outbound_nego.h — the sans-I/O start of an outbound session (SPEC §4.2
 * steps 1-5, the §4.3 policy table).
 *
 * Fed with bytes from the legacy server and from the peer (plaintext; after
 * TLS decryption once TLS runs), it relays the peer's greeting, answers the
 * legacy server's first EHLO/HELO by negotiating with the peer (EHLO,
 * STARTTLS, EHLO again, or the plaintext retry of "negotiated"), and ends
 * either with a refusal (421 and close) or with `done`: the legacy server has
 * its EHLO/HELO reply, and the session is handed to the smtp_machine with the
 * legacy bytes still held (take them with outbound_nego_take_held()).
 *
 * Never does I/O, never reads a clock, never logs: the proxy layer carries
 * out the actions (connect again, start the client TLS handshake, close) and
 * times the timeouts. Never believes a peer byte that arrived in plaintext
 * after the 220 to STARTTLS (response injection).
 *
 * Ownership: the struct owns its buffers; outbound_nego_free() releases them.
 */
#ifndef TLSFRONT_SMTP_OUTBOUND_NEGO_H
#define TLSFRONT_SMTP_OUTBOUND_NEGO_H

#include <stdbool.h>
#include <stddef.h>

#include "policy/config.h"
#include "proxy/smtp/buf.h"
#include "proxy/smtp/reply_parser.h"
#include "proxy/smtp/smtp_machine.h"

enum nego_state {
	NEGO_GREETING = 0, /* waiting for the peer's greeting */
	NEGO_HELLO,	   /* waiting for the legacy server's EHLO/HELO */
	NEGO_EHLO,	   /* our EHLO sent to the peer */
	NEGO_HELO,	   /* the legacy server's HELO sent after EHLO was refused */
	NEGO_STARTTLS,	   /* STARTTLS sent */
	NEGO_HANDSHAKE,	   /* 220 received: the I/O layer runs the handshake */
	NEGO_TLS_EHLO,	   /* EHLO sent again inside TLS */
	NEGO_RECONNECT,	   /* the I/O layer makes a fresh plaintext connection */
	NEGO_RETRY_GREETING,
	NEGO_RETRY_HELLO, /* EHLO/HELO sent on the plaintext retry */
	NEGO_DONE,	  /* handed to the smtp_machine */
	NEGO_CLOSED,
};

struct nego_actions {
	struct buf to_legacy; /* plaintext for the legacy server */
	struct buf to_peer;   /* plaintext for the peer (through TLS once it runs) */
	bool start_tls;	      /* start the client TLS handshake on the peer leg now */
	bool reconnect;	      /* close the peer leg and connect again, in plaintext */
	bool done;	      /* negotiation over: splice with the smtp_machine */
	bool close;	      /* write to_legacy, then close both sides */
	enum smtp_close_reason reason;
	size_t discarded;  /* peer bytes after the 220 to STARTTLS, dropped */
	const char *note;  /* a static text worth a log line, or NULL */
	const char *event; /* a log event name for note ("no_starttls", ...), or NULL */
	/* Refusals of the legacy server's lines since the last clear, by rule
	 * (smtp_rules.h), for the proxy's metrics. */
	unsigned refused[REFUSAL_COUNT];
};

struct nego_config {
	enum tf_outbound_tls policy;
	unsigned line_length;
	const char *server_name; /* borrowed; must outlive the struct */
};

struct outbound_nego {
	struct nego_config cfg;
	enum nego_state state;
	struct nego_actions act;
	struct reply_parser reply;
	struct buf held;	/* legacy bytes not yet processed or handed on */
	bool helo;		/* the legacy server said HELO, not EHLO */
	char name[512];		/* the legacy server's EHLO/HELO argument */
	struct buf plain_reply; /* the plaintext EHLO reply (STARTTLS refused) */
	bool tls;		/* the handshake completed */
	bool fallback;		/* the plaintext retry happened */
};

void outbound_nego_init(struct outbound_nego *n, const struct nego_config *cfg);
void outbound_nego_free(struct outbound_nego *n);
void outbound_nego_clear_actions(struct outbound_nego *n);

/* Legacy bytes: always takes every byte (held when they cannot be processed
 * yet); check outbound_nego_wants_legacy_input() before reading more. */
void outbound_nego_feed_legacy(struct outbound_nego *n, const char *p, size_t n_bytes);
bool outbound_nego_wants_legacy_input(const struct outbound_nego *n);

/* Peer plaintext. Returns how many bytes were used; once act.done is set
 * the rest belong to the smtp_machine (feed them to its backend side). */
size_t outbound_nego_feed_peer(struct outbound_nego *n, const char *p, size_t n_bytes);

/* The client TLS handshake on the peer leg completed or failed (a timeout,
 * and a peer closing during it or before its first reply inside TLS, count
 * as a failure). */
void outbound_nego_tls_established(struct outbound_nego *n);
void outbound_nego_tls_failed(struct outbound_nego *n);
/* The same when the handshake timed out: the same replies and retry, but a
 * refusal closes with CLOSE_TIMEOUT (§7.5). */
void outbound_nego_tls_timeout(struct outbound_nego *n);
/* The fresh plaintext connection of a retry is up. */
void outbound_nego_reconnected(struct outbound_nego *n);
/* The next hop cannot be reached (or the retry failed): 421 4.4.1. */
void outbound_nego_peer_unavailable(struct outbound_nego *n);
/* The peer closed during negotiation. */
void outbound_nego_peer_closed(struct outbound_nego *n);
/* Over a connection limit: 421 4.7.0. */
void outbound_nego_limit(struct outbound_nego *n);
void outbound_nego_timeout(struct outbound_nego *n);
void outbound_nego_shutdown(struct outbound_nego *n);

/* After done: the held legacy bytes, for smtp_machine_feed_client(). */
char *outbound_nego_take_held(struct outbound_nego *n, size_t *len);

const char *outbound_nego_state_name(enum nego_state state);

#endif
