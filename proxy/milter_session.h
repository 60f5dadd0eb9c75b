/* milter_session.h — the milters of one SMTP session (issue 14): between
 * the session machine's milter actions (smtp_machine.h) and the milter
 * chain (milter/milter_chain.h), for inbound sessions and outbound ones
 * alike.
 *
 * It holds the message the machine hands over (act.to_hold) in a message
 * store, asks the chain about every event the machine raises, gives the
 * machine the chain's verdicts, builds the message the milters changed,
 * and streams it to the backend (or the peer) when the backend's 354 asks
 * for it, never faster than the backend reads.
 *
 * Never writes to a socket itself (the owner's send_backend does), never
 * makes an SMTP decision (the machine does), never frees the owner.
 *
 * Ownership: owned by its session (malloc'd only in sessions with
 * milters), freed with milter_session_free(), which closes the chain.
 */
#ifndef TLSFRONT_PROXY_MILTER_SESSION_H
#define TLSFRONT_PROXY_MILTER_SESSION_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "proxy/milter/message_edit.h"
#include "proxy/milter/milter_chain.h"
#include "proxy/smtp/smtp_machine.h"

struct milter_session_ops {
	/* Writes len bytes (malloc'd; ownership passes) to the backend. */
	void (*send_backend)(void *owner, char *data, size_t len);
	/* True while the backend leg holds enough unwritten bytes. */
	bool (*backend_backlogged)(void *owner);
	/* Refreshes what changes during a session (TLS, AUTH) in info. */
	void (*refresh)(void *owner, struct milter_session_info *info);
	/* The held message cannot be read back while it is being sent: the
	 * session must end (its client gets 421). */
	void (*failed)(void *owner, const char *why);
	/* The owner's strategy step, after a verdict changed the machine. */
	void (*step)(void *owner);
};

struct milter_session {
	struct milter_chain *chain;
	struct milter_session_info info;
	char client_name[80];
	char tls_version[16];	      /* {tls_version} in Postfix's spelling */
	struct smtp_machine *machine; /* borrowed: the session's */
	void *owner;
	const struct milter_session_ops *ops;
	const char *id; /* borrowed: the session's id */
	unsigned message_no;

	bool busy;		  /* an event awaits the chain's done */
	unsigned char current;	  /* its kind (MEV_*, or MS_CONNECT) */
	unsigned char deferred;	  /* a machine event raised while busy */
	const char *deferred_arg; /* borrowed from the machine */
	bool deferred_helo;	  /* an outbound HELO to send after connect */
	char helo[256];

	uint64_t size_limit;
	struct message_store msg; /* the held message */
	struct message_store out; /* the message the milters changed */
	struct message_edits edits;
	bool edits_live;
	struct message_store *sending; /* msg or out while streaming; else NULL */
	uint64_t send_off;
	bool send_bol;
	bool held_pending; /* act.send_held seen: stream when the backend reads */
};

/* Creates the milter side of a session with the n milters of conf
 * (borrowed from the session's configuration generation); NULL when out of
 * memory. Nothing is sent before milter_session_start(). */
struct milter_session *milter_session_new(uv_loop_t *loop, const struct tf_milter_config *conf,
					  size_t n, uint64_t size_limit,
					  struct smtp_machine *machine, void *owner,
					  const struct milter_session_ops *ops, const char *id);
/* Starts the conversation: the milters' view of the client (client, and
 * local when known, else NULL; server_name borrowed for the session),
 * the EHLO reply's SIZE, then SMFIC_CONNECT and, for an outbound session
 * whose greeting and EHLO went before the machine (helo not NULL),
 * SMFIC_HELO. */
void milter_session_start(struct milter_session *ms, const char *server_name,
			  const struct sockaddr *client, const struct sockaddr *local,
			  const char *helo);
/* From the owner's step, before it writes act.to_backend: holds act.to_hold
 * and carries out the machine's milter actions. */
void milter_session_actions(struct milter_session *ms);
/* From the owner's step, after its writes: streams more of the held
 * message while the backend keeps up. */
void milter_session_pump(struct milter_session *ms);
void milter_session_free(struct milter_session *ms);

#endif
