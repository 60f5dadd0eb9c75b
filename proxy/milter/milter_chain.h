/* milter_chain.h — one SMTP session's conversation with its milters
 * (issue 14), over libuv: the milters of inbound.milters or
 * outbound.milters, asked in the order configured, one event at a time.
 *
 * The session calls one milter_chain_* event function and waits for its
 * done callback before it calls the next. The chain connects each milter
 * (inet:HOST:PORT or unix:/path) on the first event, negotiates protocol
 * version 6 (SMFIC_OPTNEG), sends the macros Postfix sends with each event
 * and the event itself, and reads the reply within the milter's timeout. A
 * milter that cannot be reached, times out, breaks the protocol or closes
 * gets its default_action (accept: it is left out for the rest of the
 * session; tempfail; reject), as Postfix's milter_default_action.
 *
 * The verdict of an event is the first milter's that is not continue: a
 * reject, tempfail, replycode or discard stops the event there (later
 * milters are not asked); accept leaves that milter out for the rest of the
 * message (for the rest of the session when given at connect or HELO).
 * At end of message every milter still in the message gets the header
 * section, end of headers, the body in chunks of at most 65535 bytes, and
 * end of body; its modifications go to the caller's message_edits before
 * the next milter is asked (the next milter sees the message as the
 * earlier ones left it, as in Postfix).
 *
 * Never makes an SMTP decision of its own beyond the verdicts above, never
 * writes to the client or the backend. Logs one line per milter failure
 * (event=milter_error, with the milter's name and what failed).
 *
 * Ownership: the chain owns its connections, timers and buffers; it borrows
 * the configuration entries (which live in the session's configuration
 * generation) and the message store and edits given to milter_chain_eom
 * until the done callback. milter_chain_close() sends QUIT (to each
 * negotiated milter whose connection can take it at once: it never waits),
 * closes every handle and frees the chain once the last handle is closed;
 * the done callback is never called after milter_chain_close().
 *
 * Sockets: "inet:HOST:PORT" with HOST an IPv4 or IPv6 literal ("[v6]"
 * allowed) or a name resolved with uv_getaddrinfo (its first IPv4 address
 * if it has one, else its first address; no other address is tried), and
 * "unix:/path" (or "local:/path"). A milter that failed is not reconnected
 * in the same session: its default_action answers every later event
 * (accept: it is skipped), as Postfix does.
 */
#ifndef TLSFRONT_MILTER_CHAIN_H
#define TLSFRONT_MILTER_CHAIN_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>
#include <uv.h>

#include "policy/config.h"
#include "proxy/milter/message_edit.h"

enum milter_verdict_kind {
	MILTER_CONTINUE = 0, /* go on (accept and continue alike) */
	MILTER_REJECT,	     /* reply is set: 5xx */
	MILTER_TEMPFAIL,     /* reply is set: 4xx */
	MILTER_DISCARD,	     /* accept the message, deliver it nowhere */
};

#define MILTER_REPLY_MAX 1024

struct milter_verdict {
	enum milter_verdict_kind kind;
	/* For REJECT and TEMPFAIL: the complete reply line(s) for the client,
	 * CRLF-terminated, multi-line replies with "-" continuation:
	 * SMFIR_REPLYCODE's text, or "550 5.7.1 Command rejected" /
	 * "451 4.7.1 Service unavailable - try again later" as Postfix says for
	 * plain reject and tempfail (at end of message "554 5.7.1 Message
	 * rejected" is not used: Postfix says "550 5.7.1 Command rejected"
	 * there too). */
	char reply[MILTER_REPLY_MAX];
	const char *milter; /* name of the milter that decided; NULL for continue */
};

/* Called once per event, from the loop (never from inside the event
 * function itself). */
typedef void (*milter_done_cb)(void *owner, const struct milter_verdict *v);

/* What the milters learn about the session: the macros of Postfix
 * (j, _, {daemon_name}, {if_addr}, {client_addr}, {client_port}, i,
 * {auth_authen}, {auth_type}, {tls_version}, {cipher}, {cipher_bits},
 * {cert_subject}, {mail_addr}, {rcpt_addr}). The strings are borrowed
 * from the session and must stay valid while the chain lives; a NULL or
 * "" value is not sent. The session updates them (TLS after the
 * handshake, auth after 235) before the next event. */
struct milter_session_info {
	const char *server_name;  /* j and {daemon_name}'s host part */
	const char *daemon_name;  /* {daemon_name}: "tlsfront" */
	const char *client_name;  /* _ : "[ADDR]" or "unknown [ADDR]" */
	char client_addr[64];	  /* {client_addr}, SMFIC_CONNECT's address */
	unsigned client_port;	  /* {client_port} and SMFIC_CONNECT's port */
	int client_family;	  /* AF_INET, AF_INET6, AF_UNIX (0: unknown) */
	char if_addr[64];	  /* {if_addr} */
	char queue_id[24];	  /* i: the session id and message number */
	const char *auth_type;	  /* {auth_type} */
	const char *auth_authen;  /* {auth_authen} */
	const char *tls_version;  /* {tls_version} */
	const char *cipher;	  /* {cipher} */
	unsigned cipher_bits;	  /* {cipher_bits}; 0: not sent */
	const char *cert_subject; /* {cert_subject} */
};

struct milter_chain;

/* A chain for the n milters (n >= 1) of conf; NULL when out of memory.
 * Nothing is connected yet. */
struct milter_chain *milter_chain_new(uv_loop_t *loop, const struct tf_milter_config *conf,
				      size_t n, const struct milter_session_info *info,
				      const char *session_id, milter_done_cb done, void *owner);

/* The events, each answered by one call of done; milter_chain_connect
 * first. helo, mail and rcpt are
 * the command's argument as the client sent it ("client.example", the
 * address with its angle brackets, then the ESMTP arguments separated by
 * spaces, as SMFIC_MAIL/SMFIC_RCPT carry them: the path first, then each
 * argument as its own string). */
void milter_chain_connect(struct milter_chain *c);
void milter_chain_helo(struct milter_chain *c, const char *helo);
void milter_chain_mail(struct milter_chain *c, const char *line_args);
void milter_chain_rcpt(struct milter_chain *c, const char *line_args);
void milter_chain_data(struct milter_chain *c);
/* End of message: msg holds the message (raw text). Modifications of every
 * milter go to edits (its replacement body store included). A discard sets
 * edits->discard and returns MILTER_DISCARD. */
void milter_chain_eom(struct milter_chain *c, struct message_store *msg,
		      struct message_edits *edits);
/* The transaction ended without end of message (RSET, a refused DATA, a
 * new MAIL after a refusal): SMFIC_ABORT to every milter in the message,
 * no reply expected, no done call. Also ends a discard. Only between
 * events (while an event waits for done it does nothing). A discard
 * answered at MAIL or RCPT holds for the rest of the message: later RCPT,
 * DATA and end of message are answered MILTER_DISCARD without asking. */
void milter_chain_abort(struct milter_chain *c);
/* QUIT to every connected milter, then closes and frees (see above). */
void milter_chain_close(struct milter_chain *c);

#endif
