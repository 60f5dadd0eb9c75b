/* smtp_machine.h — the sans-I/O SMTP session machine (DESIGN.md).
 *
 * A plain struct fed with bytes from the client (plaintext, after TLS
 * decryption) and from the backend, answering with actions: bytes for either
 * side, start TLS now, drop the backend, close. It parses every command line
 * and every reply, keeps the FIFO of commands awaiting replies (PIPELINING),
 * asks policy/ for every decision, rewrites EHLO replies, scans DATA for the
 * one true end of data, and holds the STARTTLS boundary.
 *
 * Never does I/O, never reads a clock, never logs: the proxy layer carries
 * out the actions and times the timeouts.
 *
 * Ownership: the machine owns its buffers (held client input, the reply being
 * collected, the FIFO) and the action buffers until the caller takes them
 * with buf_take(); smtp_machine_free() releases all of it.
 */
#ifndef TLSFRONT_SMTP_MACHINE_H
#define TLSFRONT_SMTP_MACHINE_H

#include <stdbool.h>
#include <stddef.h>

#include "policy/smtp_rules.h"
#include "proxy/smtp/buf.h"
#include "proxy/smtp/data_scanner.h"
#include "proxy/smtp/reply_parser.h"
#include "proxy/smtp/sasl_user.h"

#define SMTP_FIFO_MAX	    128		/* pipelined commands awaiting replies */
#define SMTP_HOLD_MAX	    (64 * 1024) /* held client input before reads pause */
#define SMTP_AUTH_LINE_MIN  12288	/* AUTH lines may be this long (§3.2) */
#define SMTP_NOTE_REPLY_MAX 256		/* a backend reply quoted in a note */

enum smtp_phase {
	PHASE_GREETING = 0, /* waiting for the backend's greeting */
	PHASE_COMMAND,	    /* reading command lines */
	PHASE_WAIT_DATA,    /* DATA sent, waiting for 354; client input held */
	PHASE_DATA,	    /* message content until the true end of data */
	PHASE_WAIT_AUTH,    /* AUTH line sent, waiting for 334/235/...; held */
	PHASE_AUTH,	    /* a 334 was relayed: the next line is SASL data */
	PHASE_STARTTLS,	    /* STARTTLS accepted, earlier replies pending */
	PHASE_HANDSHAKE,    /* 220 sent: the client side speaks TLS now */
	PHASE_REJECT_DRAIN, /* bare newline in reject mode: read to end of data */
	PHASE_CLOSED,	    /* close requested: every input is ignored */
};

enum smtp_close_reason {
	CLOSE_NONE = 0,
	CLOSE_QUIT,
	CLOSE_CLIENT_CLOSED,
	CLOSE_BACKEND_CLOSED,
	CLOSE_TIMEOUT,
	CLOSE_LIMIT,
	CLOSE_POLICY,
	CLOSE_TLS_ERROR,
	CLOSE_SHUTDOWN,
	CLOSE_ERROR,
};

/* What the caller must do after each call. The caller takes the buffers
 * (buf_take) and clears the flags with smtp_machine_clear_actions(). */
struct smtp_actions {
	struct buf to_client;  /* plaintext for the client */
	struct buf to_backend; /* plaintext for the backend */
	bool start_tls;	       /* after writing to_client: TLS handshake on the client side */
	bool drop_backend;     /* close the backend now, unflushed (reject mode) */
	bool close;	       /* write to_client, then close both sides */
	enum smtp_close_reason reason;
	bool progress;	  /* a complete command line or DATA bytes: re-arm idle timer */
	size_t discarded; /* plaintext bytes dropped after STARTTLS (CVE-2011-0411) */
	const char *note; /* a static text worth a log line, or NULL */
	/* The note names a configuration error (§3.3: a backend without
	 * XCLIENT): every session will fail alike, so it is logged as an
	 * error, with the backend's reply (first line, CRLF removed, "" when
	 * none) for the operator. */
	bool config_error;
	char note_reply[SMTP_NOTE_REPLY_MAX];
	/* Refusals decided since the last clear, by rule (smtp_rules.h), for
	 * the proxy's metrics: counted when the machine decides to refuse. */
	unsigned refused[REFUSAL_COUNT];

	/* Milters (issue 14, cfg.milters only). */
	struct buf to_hold;	    /* message content (wire form, dot-stuffed,
				     * ending ".\r\n") to hold, not to send */
	bool milter_abort;	    /* first: the transaction ended (SMFIC_ABORT) */
	unsigned char milter_event; /* enum smtp_milter_event: ask the milters,
				     * then smtp_machine_milter_verdict() */
	const char *milter_arg;	    /* HELO/EHLO domain, or MAIL/RCPT text after
				     * the colon; borrowed until the verdict */
	bool send_held;		    /* the backend said 354: send the held
				     * message, then smtp_machine_held_sent() */
};

enum smtp_milter_event {
	MEV_NONE = 0,
	MEV_HELO, /* HELO or EHLO */
	MEV_MAIL,
	MEV_RCPT,
	MEV_DATA,
	MEV_EOM, /* the end of the held message: answer with
		  * smtp_machine_milter_verdict() (refusal, discard) or
		  * smtp_machine_milter_deliver() */
};

enum smtp_milter_verdict { SMV_CONTINUE = 0, SMV_REFUSE, SMV_DISCARD };

/* What the milters changed in the envelope at end of message. */
struct smtp_envelope_change {
	const char *sender;	     /* new MAIL FROM address, or NULL */
	const char *sender_args;     /* its ESMTP arguments, or NULL */
	const char *const *add;	     /* recipients to add */
	const char *const *add_args; /* their ESMTP arguments (entries may be NULL) */
	size_t n_add;
	const char *const *del; /* recipients to remove */
	size_t n_del;
};

struct smtp_machine_config {
	bool tls_port;	  /* accepted on the TLS port: a TLS session from the start */
	bool starttls;	  /* inbound.tcp.starttls */
	bool require_tls; /* inbound.tcp.require_tls */
	bool tcp_auth;	  /* inbound.tcp.name_and_password */
	bool tls_auth;	  /* inbound.tls.name_and_password */
	unsigned line_length;
	unsigned max_errors;
	bool reject_bare;	 /* bare_newlines = "reject" */
	const char *server_name; /* borrowed; must outlive the machine */
	/* backend.client_info = "xclient" (§3.3): announce the client with
	 * XCLIENT after the backend's greeting. xclient_addr is the client's
	 * IP as XCLIENT writes it ("192.0.2.7", "IPV6:2001:db8::7"). */
	bool xclient;
	char xclient_addr[64];
	unsigned xclient_port;
	/* Issue 14: milters are configured for this session: HELO, MAIL,
	 * RCPT and DATA wait for their verdict, and message content is held
	 * (act.to_hold) until they have seen all of it. */
	bool milters;
};

enum smtp_pending_kind {
	PEND_GREETING = 0, /* the backend's greeting */
	PEND_COMMAND,	   /* a forwarded command; verb says which */
	PEND_AUTH_DATA,	   /* a forwarded SASL line */
	PEND_DATA_END,	   /* the end of data */
	PEND_INTERNAL,	   /* tlsfront's own command: consume the reply */
	PEND_LOCAL,	   /* a reply tlsfront makes; released in its turn */
	PEND_STARTTLS,	   /* the 220 to STARTTLS; released in its turn */
	PEND_XCLIENT_EHLO, /* tlsfront's EHLO before XCLIENT (§3.3) */
	PEND_XCLIENT,	   /* XCLIENT: its 220 is the client's greeting */
	PEND_MILTER_REPLY, /* a milter's refusal; reply is owned (malloc'd) */
	PEND_MILTER_DATA,  /* the client's DATA, answered once the milters agree */
	PEND_HELD_DATA,	   /* tlsfront's DATA for a held message */
	PEND_REPLAY,	   /* tlsfront's MAIL/RCPT after the milters' changes;
			    * verb says which, reply != NULL for an added RCPT */
	PEND_REPLAY_END,   /* all replay replies are in: DATA, or refuse */
};

struct smtp_pending {
	unsigned char kind; /* enum smtp_pending_kind */
	unsigned char verb; /* enum smtp_verb for PEND_COMMAND */
	const char *reply;  /* PEND_LOCAL: static reply line without CRLF */
};

struct smtp_machine {
	struct smtp_machine_config cfg;
	struct smtp_rules_session rules;
	enum smtp_phase phase;
	struct smtp_actions act;

	struct buf in;	 /* client bytes not yet processed (bounded) */
	bool discarding; /* dropping an over-long line up to its LF */
	struct reply_parser reply;
	struct data_scanner data;

	struct smtp_pending fifo[SMTP_FIFO_MAX];
	unsigned fifo_head, fifo_len;

	unsigned errors;    /* protocol errors (§3.2, §7.1) */
	unsigned messages;  /* messages accepted by the backend */
	bool authenticated; /* a 235 was relayed */
	bool quit_acked;    /* the backend's 221 to QUIT was relayed */

	/* The SASL user name, for the log only (§3.6, sasl_user.h): read from
	 * the client's SASL data while an exchange runs, kept as a candidate,
	 * committed to user on 235 and forgotten on any other final reply, on
	 * a cancel and at the STARTTLS boundary. Never a password. */
	unsigned char auth_next;	     /* enum sasl_mech of the next SASL line */
	char user_candidate[SASL_USER_SIZE]; /* the exchange in progress; "" */
	char user[SASL_USER_SIZE];	     /* of the 235; "" when none */
	char mech_candidate[24];	     /* the exchange's mechanism, uppercase */
	char mech[24];			     /* of the 235 ({auth_type}); "" */

	/* Milters (issue 14; milter_gate.c). */
	bool milter_wait;	   /* a verdict is awaited: client input is held */
	unsigned char milter_ev;   /* the event awaiting its verdict */
	unsigned char milter_verb; /* the verb of milter_line */
	struct buf milter_line;	   /* the command awaiting its verdict */
	bool holding;		   /* message content goes to act.to_hold */
	bool in_txn;		   /* the milters saw MAIL; no end of message yet */
	bool discard;		   /* a milter said discard in this transaction */
	struct buf txn_mail;	   /* the MAIL line forwarded in this transaction */
	struct buf rcpt_pending;   /* forwarded RCPT lines awaiting their reply */
	struct buf rcpt_ok;	   /* RCPT lines the backend accepted */
	unsigned rcpts_ok;
	char *session_refusal;	/* a milter refused the connection: MAIL gets this */
	unsigned mails_pending; /* forwarded MAILs awaiting their reply */
	unsigned replay_ok;	/* recipients the backend took in the replay */
	int replay_failed;	/* the first failing reply code of the replay; 0 */
};

void smtp_machine_init(struct smtp_machine *m, const struct smtp_machine_config *cfg);
void smtp_machine_free(struct smtp_machine *m);

/* Outbound (SPEC §4.2.3): the greeting and the first EHLO/HELO were
 * already handled by outbound_nego; start in the command phase. */
void smtp_machine_skip_greeting(struct smtp_machine *m);

/* Client plaintext. Always takes every byte (held when it cannot be
 * processed yet); check smtp_machine_wants_client_input() before reading
 * more. */
void smtp_machine_feed_client(struct smtp_machine *m, const char *p, size_t n);
/* Backend bytes. Always takes every byte. */
void smtp_machine_feed_backend(struct smtp_machine *m, const char *p, size_t n);
/* The client's TLS handshake completed (after start_tls). */
void smtp_machine_tls_established(struct smtp_machine *m);
/* The backend closed its connection or failed. */
void smtp_machine_backend_closed(struct smtp_machine *m);
/* The backend could not be reached (§3.1): 421 4.3.2 and close. */
void smtp_machine_backend_unavailable(struct smtp_machine *m);
/* Over max_connections or max_connections_per_ip (§3.1): 421 4.7.0. */
void smtp_machine_limit(struct smtp_machine *m);
/* The idle timer expired. */
void smtp_machine_timeout(struct smtp_machine *m);
/* The process is shutting down and the grace period is over. */
void smtp_machine_shutdown(struct smtp_machine *m);

/* The SASL user name of the exchange that got 235 (sasl_user.h), or NULL
 * when the session is not authenticated or its mechanism names no user we
 * read. Borrowed from the machine; valid until the next call into it. May
 * hold characters a key=value log must quote (log_value()). */
const char *smtp_machine_user(const struct smtp_machine *m);
/* The SASL mechanism of the exchange that got 235 ("PLAIN"), or NULL. */
const char *smtp_machine_auth_type(const struct smtp_machine *m);

/* False while the held client input is at its bound: stop reading. */
bool smtp_machine_wants_client_input(const struct smtp_machine *m);

void smtp_machine_clear_actions(struct smtp_machine *m);

/* Milters (issue 14). The verdict on act.milter_event; reply (for
 * SMV_REFUSE) is the complete reply, CRLF-terminated. For MEV_EOM,
 * SMV_CONTINUE is given by smtp_machine_milter_deliver() instead. */
void smtp_machine_milter_verdict(struct smtp_machine *m, enum smtp_milter_verdict v,
				 const char *reply);
/* The milters refused the connection (their verdict at connect): every
 * MAIL gets reply. */
void smtp_machine_milter_refuse_session(struct smtp_machine *m, const char *reply);
/* End of message accepted by the milters: the envelope changes go to the
 * backend, then DATA; its 354 sets act.send_held. */
void smtp_machine_milter_deliver(struct smtp_machine *m, const struct smtp_envelope_change *c);
/* The held message and its end of data were written to the backend. */
void smtp_machine_held_sent(struct smtp_machine *m);

const char *smtp_phase_name(enum smtp_phase phase);
const char *smtp_close_reason_name(enum smtp_close_reason reason);

#endif
