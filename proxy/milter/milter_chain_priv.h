/* milter_chain_priv.h — the chain's internals shared by its three files:
 * milter_chain.c (lifetime, failure, the end of an event, writing,
 * connecting, the interface), milter_chain_send.c (what is sent for each
 * event, and the loop that runs it) and milter_chain_reply.c (the milters'
 * replies and their modifications). Not for anyone else: the session
 * drives the chain through milter_chain.h only.
 */
#ifndef TLSFRONT_MILTER_CHAIN_PRIV_H
#define TLSFRONT_MILTER_CHAIN_PRIV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

#include "proxy/milter/milter_chain.h"
#include "proxy/milter/milter_codec.h"

#define READ_BUF_SIZE 16384 /* the reader gathers larger packets */

#define REPLY_REJECT   "550 5.7.1 Command rejected\r\n"
#define REPLY_TEMPFAIL "451 4.7.1 Service unavailable - try again later\r\n"

enum event { EV_NONE = 0, EV_CONNECT, EV_HELO, EV_MAIL, EV_RCPT, EV_DATA, EV_EOM };

enum mstate {
	MS_NEW = 0,	/* not connected yet */
	MS_CONNECTING,	/* resolving or connecting */
	MS_NEGOTIATING, /* OPTNEG sent */
	MS_READY,	/* negotiated */
	MS_FAILED,	/* unreachable, timed out, broke the protocol: default_action */
};

/* Where the current milter stands in the current event. */
enum phase {
	PH_BEGIN = 0, /* decide: skip, default action, connect, send */
	PH_CONNECT,   /* connecting and negotiating */
	PH_COMMAND,   /* the event's command sent (not at end of message) */
	PH_HEADERS,   /* end of message: header number hdr_i sent */
	PH_EOH,	      /* end of message: end of headers next */
	PH_EOH_SENT,  /* end of headers sent */
	PH_BODY,      /* body chunks: the next one at body_off */
	PH_EOB,	      /* end of body next */
	PH_EOB_SENT,  /* end of body sent: modifications, then the verdict */
};

enum await { AW_NONE = 0, AW_WRITE, AW_REPLY };

struct milter {
	struct milter_chain *c;
	const struct tf_milter_config *conf;
	union {
		uv_tcp_t tcp;
		uv_pipe_t pipe;
	} u;
	uv_stream_t *stream; /* &u once initialised (counted in refs) */
	bool stream_closing;
	uv_timer_t timer; /* counted in refs */
	uv_connect_t creq;
	uv_getaddrinfo_t gai;
	bool gai_pending; /* counted in refs */
	struct milter_reader rd;
	enum mstate state;
	uint32_t actions, protocol;
	bool out_session; /* accepted at connect or HELO */
	bool out_message; /* accepted in this message */
	enum await await;
	unsigned inflight; /* writes not yet called back */
};

struct milter_chain {
	uv_loop_t *loop;
	struct milter m[TF_MAX_MILTERS];
	size_t n;
	const struct milter_session_info *info;
	char session_id[64];
	milter_done_cb done;
	void *owner;
	uv_timer_t kick; /* counted in refs */
	int refs;	 /* handles and requests whose callback is due */
	bool closing;

	/* The current event. */
	enum event ev;
	unsigned gen; /* bumped by finish() */
	size_t cur;   /* the milter being asked */
	enum phase phase;
	char *arg;		     /* the event's argument (HELO name, MAIL/RCPT text); owned */
	bool failed_alloc;	     /* recording the event failed: tempfail */
	bool discarding;	     /* a milter discarded this message */
	struct message_store *msg;   /* borrowed for EOM */
	struct message_edits *edits; /* borrowed for EOM */
	struct message_headers hs;   /* msg's header section (EOM) */
	bool hs_read;
	struct message_store view; /* the message as earlier milters left it */
	struct message_headers view_hs;
	bool view_init, view_hs_read;
	struct message_store *shown; /* what the current milter is shown */
	struct message_headers *shown_hs;
	size_t hdr_i;
	uint64_t body_off;
	bool body_replaced; /* the current milter sent SMFIR_REPLBODY */

	struct buf out;		  /* packets being built */
	char rbuf[READ_BUF_SIZE]; /* every milter's reads */
	char *chunk; /* the body chunk being sent (MILTER_CHUNK_MAX); owned, EOM only */
};

/* milter_chain.c */
/* The milter's name for the log and the verdict. */
const char *milter_name(const struct milter *m);
/* Closes m's connection, once. */
void chain_close_stream(struct milter *m);
/* Logs one event=milter_error line for m. */
void chain_log_error(struct milter *m, const char *what);
/* m is out of the conversation: its default_action answers from now on. */
void milter_fail(struct milter *m, const char *what);
/* milter_fail(), then runs the chain again when m was being asked. */
void chain_fail_and_run(struct milter *m, const char *what);
/* Ends the event with this verdict and calls done, last. */
void chain_finish(struct milter_chain *c, enum milter_verdict_kind kind, const char *reply,
		  const char *milter);
/* Ends the event with m's default_action (reject or tempfail). */
void chain_finish_default(struct milter_chain *c, struct milter *m);
/* Writes c->out to m and waits as aw says; false when m failed. */
bool chain_send_out(struct milter *m, enum await aw);
/* Starts connecting m; m is MS_FAILED when it could not start. */
void chain_start_connect(struct milter *m);
/* A milter's timer: the wait it was set for is over. */
void chain_on_timeout(uv_timer_t *t);

/* milter_chain_send.c */
/* Advances the current event until it must wait or it ends. */
void chain_run(struct milter_chain *c);
/* The next milter is asked next. */
void chain_next_milter(struct milter_chain *c);

/* milter_chain_reply.c */
/* A milter's connection read n bytes (libuv's read callback). */
void chain_on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b);

#endif
