/* milter_chain.c — one SMTP session's milters over libuv (milter_chain.h):
 * connects, negotiates, sends each event with its macros, waits for the
 * replies and turns them into a verdict and message edits.
 *
 * How it runs: an event function only records the event and starts a zero
 * timer (kick); all progress happens in callbacks (kick, write done, read,
 * connect, getaddrinfo, timer), so done is never called from inside an
 * event function. run() advances the event, milter by milter, until it must
 * wait (a write, a reply, a connection) or the event ends (finish(), which
 * calls done last and never touches the chain after it unless the same
 * event generation is still current).
 *
 * Every wait has a timeout: connect_timeout for resolving, connecting; the
 * milter's timeout for a reply or a write to drain. Reads go to one 16 KiB
 * buffer of the chain, packets are bounded by the codec (MILTER_PACKET_MAX),
 * body chunks are read from the store one at a time and sent one at a time.
 *
 * Never makes an SMTP decision beyond the verdicts of milter_chain.h, never
 * writes to the client or the backend, never calls done after
 * milter_chain_close(). Logs one event=milter_error line per failure.
 *
 * Ownership: the chain owns its milters' handles (stream, timer), requests,
 * readers, the copies of event arguments and the view of the message shown
 * to later milters at end of message; it is freed by the last close or
 * getaddrinfo callback after milter_chain_close().
 */
#include "proxy/milter/milter_chain.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <sys/un.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/log.h"
#include "proxy/milter/milter_codec.h"

#define READ_BUF_SIZE 16384 /* the reader gathers larger packets */

/* A replycode's reply fits the verdict whole. */
_Static_assert(MILTER_SMTP_REPLY_MAX <= MILTER_REPLY_MAX, "verdict reply too small");

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

static void run(struct milter_chain *c);

/* ---- Lifetime ------------------------------------------------------------ */

static void chain_free(struct milter_chain *c)
{
	for (size_t i = 0; i < c->n; i++)
		milter_reader_free(&c->m[i].rd);
	if (c->hs_read)
		message_headers_free(&c->hs);
	if (c->view_hs_read)
		message_headers_free(&c->view_hs);
	if (c->view_init)
		message_store_free(&c->view);
	buf_free(&c->out);
	free(c->chunk);
	free(c->arg);
	free(c);
}

static void unref(struct milter_chain *c)
{
	if (--c->refs == 0 && c->closing)
		chain_free(c);
}

static void on_closed(uv_handle_t *h)
{
	struct milter_chain *c = h->data;
	unref(c);
}

static void close_stream(struct milter *m)
{
	if (m->stream && !m->stream_closing) {
		m->stream_closing = true;
		uv_close((uv_handle_t *)m->stream, on_closed);
	}
}

/* The milter's name for the log and the verdict: read from the borrowed
 * configuration each time. */
static const char *milter_name(const struct milter *m)
{
	if (m->conf->name && *m->conf->name)
		return m->conf->name;
	return m->conf->socket ? m->conf->socket : "milter";
}

/* ---- Logging and failure --------------------------------------------------- */

static void log_error(struct milter *m, const char *what)
{
	char name[128], err[256];
	log_msg(TF_LOG_WARN, "event=milter_error id=%s milter=%s error=%s", m->c->session_id,
		log_value(name, sizeof(name), milter_name(m)), log_value(err, sizeof(err), what));
}

/* The milter is out of the conversation: its default_action answers from
 * now on. The caller runs the chain again when m was being asked. */
static void milter_fail(struct milter *m, const char *what)
{
	if (m->state == MS_FAILED)
		return;
	log_error(m, what);
	m->state = MS_FAILED;
	m->await = AW_NONE;
	uv_timer_stop(&m->timer);
	if (m->gai_pending)
		uv_cancel((uv_req_t *)&m->gai);
	close_stream(m);
	struct milter_chain *c = m->c;
	if (c->ev != EV_NONE && &c->m[c->cur] == m)
		c->phase = PH_BEGIN;
}

static void fail_and_run(struct milter *m, const char *what)
{
	struct milter_chain *c = m->c;
	bool current = c->ev != EV_NONE && &c->m[c->cur] == m;
	milter_fail(m, what);
	if (current && !c->closing)
		run(c);
}

/* ---- Ending an event --------------------------------------------------------- */

static void release_eom(struct milter_chain *c)
{
	if (c->hs_read)
		message_headers_free(&c->hs);
	if (c->view_hs_read)
		message_headers_free(&c->view_hs);
	if (c->view_init)
		message_store_free(&c->view);
	c->hs_read = c->view_hs_read = c->view_init = false;
	c->msg = NULL;
	c->edits = NULL;
	c->shown = NULL;
	c->shown_hs = NULL;
	free(c->chunk);
	c->chunk = NULL;
}

/* Ends the event with this verdict and calls done, last. */
static void finish(struct milter_chain *c, enum milter_verdict_kind kind, const char *reply,
		   const char *milter)
{
	struct milter_verdict v = {.kind = kind, .milter = milter};
	if (reply)
		snprintf(v.reply, sizeof(v.reply), "%s", reply);
	enum event ev = c->ev;
	if (kind == MILTER_DISCARD) {
		c->discarding = true;
		if (ev == EV_EOM && c->edits)
			c->edits->discard = true;
	}
	if (ev == EV_EOM) {
		release_eom(c);
		/* The message is over: every milter is back in for the next. */
		for (size_t i = 0; i < c->n; i++)
			c->m[i].out_message = false;
		c->discarding = false;
	}
	c->ev = EV_NONE;
	c->gen++;
	c->done(c->owner, &v);
}

static void finish_default(struct milter_chain *c, struct milter *m)
{
	if (m->conf->default_action == TF_MILTER_REJECT)
		finish(c, MILTER_REJECT, REPLY_REJECT, milter_name(m));
	else
		finish(c, MILTER_TEMPFAIL, REPLY_TEMPFAIL, milter_name(m));
}

/* ---- Writing ------------------------------------------------------------------ */

struct wreq {
	uv_write_t req;
	struct milter *m;
	char data[];
};

static void on_written(uv_write_t *req, int status)
{
	struct wreq *w = (struct wreq *)req;
	struct milter *m = w->m;
	struct milter_chain *c = m->c;
	free(w);
	m->inflight--;
	if (c->closing || m->state == MS_FAILED)
		return;
	if (status < 0) {
		char what[96];
		snprintf(what, sizeof(what), "write: %s", uv_strerror(status));
		fail_and_run(m, what);
		return;
	}
	if (m->await == AW_WRITE && m->inflight == 0) {
		m->await = AW_NONE;
		uv_timer_stop(&m->timer);
		run(c);
	}
}

static void on_timeout(uv_timer_t *t);

/* Writes c->out to m and empties it; then waits for the write (AW_WRITE)
 * or the reply (AW_REPLY), within the milter's timeout. Returns false when
 * m failed. */
static bool send_out(struct milter *m, enum await aw)
{
	struct milter_chain *c = m->c;
	struct wreq *w = malloc(sizeof(*w) + c->out.len);
	if (!w) {
		c->out.len = 0;
		milter_fail(m, "out of memory");
		return false;
	}
	w->m = m;
	memcpy(w->data, c->out.data, c->out.len);
	uv_buf_t b = uv_buf_init(w->data, (unsigned)c->out.len);
	c->out.len = 0;
	int rc = uv_write(&w->req, m->stream, &b, 1, on_written);
	if (rc < 0) {
		free(w);
		char what[96];
		snprintf(what, sizeof(what), "write: %s", uv_strerror(rc));
		milter_fail(m, what);
		return false;
	}
	m->inflight++;
	m->await = aw;
	uv_timer_start(&m->timer, on_timeout, (uint64_t)m->conf->timeout * 1000, 0);
	return true;
}

/* ---- Connecting ------------------------------------------------------------- */

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b);

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
	struct milter_chain *c = h->data;
	*b = uv_buf_init(c->rbuf, sizeof(c->rbuf));
}

static void on_timeout(uv_timer_t *t)
{
	struct milter *m = t->data;
	const char *what = "timeout";
	switch (m->state) {
	case MS_CONNECTING:
		what = "connect timeout";
		break;
	case MS_NEGOTIATING:
		what = "negotiation timeout";
		break;
	default:
		what = m->await == AW_WRITE ? "write timeout" : "reply timeout";
		break;
	}
	fail_and_run(m, what);
}

static void on_connected(uv_connect_t *req, int status)
{
	struct milter *m = req->data;
	struct milter_chain *c = m->c;
	if (c->closing || m->state != MS_CONNECTING)
		return;
	if (status < 0) {
		char what[96];
		snprintf(what, sizeof(what), "connect: %s", uv_strerror(status));
		fail_and_run(m, what);
		return;
	}
	int rc = uv_read_start(m->stream, on_alloc, on_read);
	if (rc < 0) {
		fail_and_run(m, "read start");
		return;
	}
	m->state = MS_NEGOTIATING;
	if (!milter_put_optneg(&c->out, MILTER_VERSION, MILTER_ACTIONS_ALL,
			       MILTER_PROTOCOL_OFFER)) {
		fail_and_run(m, "out of memory");
		return;
	}
	if (!send_out(m, AW_REPLY))
		run(c);
}

static void connect_tcp(struct milter *m, const struct sockaddr *sa)
{
	struct milter_chain *c = m->c;
	int rc = uv_tcp_init(c->loop, &m->u.tcp);
	if (rc < 0) {
		milter_fail(m, "tcp init");
		return;
	}
	m->u.tcp.data = c;
	m->stream = (uv_stream_t *)&m->u.tcp;
	c->refs++;
	m->creq.data = m;
	rc = uv_tcp_connect(&m->creq, &m->u.tcp, sa, on_connected);
	if (rc < 0) {
		char what[96];
		snprintf(what, sizeof(what), "connect: %s", uv_strerror(rc));
		milter_fail(m, what);
	}
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
	struct milter *m = req->data;
	struct milter_chain *c = m->c;
	m->gai_pending = false;
	if (c->closing || m->state != MS_CONNECTING) {
		uv_freeaddrinfo(res);
		unref(c);
		return;
	}
	c->refs--; /* not the last: the kick timer is open while not closing */
	if (status < 0 || !res) {
		uv_freeaddrinfo(res);
		char what[128];
		snprintf(what, sizeof(what), "resolve: %s", uv_strerror(status));
		fail_and_run(m, what);
		return;
	}
	/* IPv4 first (inet:localhost:PORT is most often a milter on
	 * 127.0.0.1), else the first address. */
	struct addrinfo *pick = res;
	for (struct addrinfo *a = res; a; a = a->ai_next)
		if (a->ai_family == AF_INET) {
			pick = a;
			break;
		}
	connect_tcp(m, pick->ai_addr);
	uv_freeaddrinfo(res);
	if (m->state == MS_FAILED)
		run(c);
}

/* Starts connecting m (its socket text as milter_chain.h says). */
static void start_connect(struct milter *m)
{
	struct milter_chain *c = m->c;
	const char *s = m->conf->socket ? m->conf->socket : "";
	m->state = MS_CONNECTING;
	uv_timer_start(&m->timer, on_timeout, (uint64_t)m->conf->connect_timeout * 1000, 0);
	if (strncmp(s, "unix:", 5) == 0 || strncmp(s, "local:", 6) == 0) {
		const char *path = strchr(s, ':') + 1;
		if (!*path || strlen(path) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
			milter_fail(m, "bad socket (unix path empty or too long)");
			return;
		}
		int rc = uv_pipe_init(c->loop, &m->u.pipe, 0);
		if (rc < 0) {
			milter_fail(m, "pipe init");
			return;
		}
		m->u.pipe.data = c;
		m->stream = (uv_stream_t *)&m->u.pipe;
		c->refs++;
		m->creq.data = m;
		uv_pipe_connect(&m->creq, &m->u.pipe, path, on_connected);
		return;
	}
	char host[256];
	unsigned port = 0;
	if (strncmp(s, "inet:", 5) != 0 ||
	    config_split_hostport(s + 5, host, sizeof(host), &port) != 0 || port == 0 || !*host) {
		milter_fail(m, "bad socket (inet:HOST:PORT or unix:/path)");
		return;
	}
	struct sockaddr_storage ss;
	memset(&ss, 0, sizeof(ss));
	if (uv_ip4_addr(host, (int)port, (struct sockaddr_in *)&ss) == 0 ||
	    uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)&ss) == 0) {
		connect_tcp(m, (const struct sockaddr *)&ss);
		return;
	}
	char portstr[8];
	snprintf(portstr, sizeof(portstr), "%u", port);
	struct addrinfo hints;
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_ADDRCONFIG;
	m->gai.data = m;
	int rc = uv_getaddrinfo(c->loop, &m->gai, on_resolved, host, portstr, &hints);
	if (rc < 0) {
		milter_fail(m, "resolve");
		return;
	}
	m->gai_pending = true;
	c->refs++;
}

/* ---- The events: what is sent ------------------------------------------------ */

/* The address of a MAIL/RCPT argument, without angle brackets, into out. */
static void path_addr(const char *arg, char *out, size_t outlen)
{
	const char *p = arg ? arg : "";
	while (*p == ' ')
		p++;
	const char *e;
	if (*p == '<') {
		p++;
		e = strchr(p, '>');
		if (!e)
			e = p + strlen(p);
	} else {
		e = p;
		while (*e && *e != ' ')
			e++;
	}
	size_t n = (size_t)(e - p);
	if (n >= outlen)
		n = outlen - 1;
	memcpy(out, p, n);
	out[n] = '\0';
}

/* The macros (SMFIC_MACRO) and the command of event ev into c->out. */
static bool build_event(struct milter_chain *c, enum event ev)
{
	const struct milter_session_info *in = c->info;
	char num[16], bits[16], addr[512];
	switch (ev) {
	case EV_CONNECT: {
		snprintf(num, sizeof(num), "%u", in->client_port);
		const char *pairs[] = {"j",
				       in->server_name,
				       "_",
				       in->client_name,
				       "{daemon_name}",
				       in->daemon_name,
				       "{if_addr}",
				       in->if_addr,
				       "{client_addr}",
				       in->client_addr,
				       "{client_port}",
				       in->client_port ? num : NULL};
		char family = SMFIA_UNKNOWN;
		char host[80];
		snprintf(host, sizeof(host), "[%s]", in->client_addr);
		if (in->client_family == AF_INET)
			family = SMFIA_INET;
		else if (in->client_family == AF_INET6)
			family = SMFIA_INET6;
		else if (in->client_family == AF_UNIX) {
			family = SMFIA_UNIX;
			snprintf(host, sizeof(host), "localhost");
		}
		if (family == SMFIA_UNKNOWN)
			snprintf(host, sizeof(host), "unknown");
		return milter_put_macros(&c->out, SMFIC_CONNECT, pairs, 6) &&
		       milter_put_connect(&c->out, host, family, (uint16_t)in->client_port,
					  in->client_addr);
	}
	case EV_HELO: {
		snprintf(bits, sizeof(bits), "%u", in->cipher_bits);
		const char *pairs[] = {"{tls_version}",	 in->tls_version,
				       "{cipher}",	 in->cipher,
				       "{cipher_bits}",	 in->cipher_bits ? bits : NULL,
				       "{cert_subject}", in->cert_subject};
		return milter_put_macros(&c->out, SMFIC_HELO, pairs, 4) &&
		       milter_put_helo(&c->out, c->arg);
	}
	case EV_MAIL: {
		path_addr(c->arg, addr, sizeof(addr));
		const char *pairs[] = {"i",
				       in->queue_id,
				       "{auth_type}",
				       in->auth_type,
				       "{auth_authen}",
				       in->auth_authen,
				       "{mail_addr}",
				       addr};
		return milter_put_macros(&c->out, SMFIC_MAIL, pairs, 4) &&
		       milter_put_args(&c->out, SMFIC_MAIL, c->arg);
	}
	case EV_RCPT: {
		path_addr(c->arg, addr, sizeof(addr));
		const char *pairs[] = {"{rcpt_addr}", addr};
		return milter_put_macros(&c->out, SMFIC_RCPT, pairs, 1) &&
		       milter_put_args(&c->out, SMFIC_RCPT, c->arg);
	}
	case EV_DATA:
		return milter_put_simple(&c->out, SMFIC_DATA);
	default:
		return false;
	}
}

/* The protocol flags that skip event ev, and that say no reply comes. */
static uint32_t skip_flag(enum event ev)
{
	static const uint32_t f[] = {
	    0, SMFIP_NOCONNECT, SMFIP_NOHELO, SMFIP_NOMAIL, SMFIP_NORCPT, SMFIP_NODATA, 0};
	return f[ev];
}

static uint32_t noreply_flag(enum event ev)
{
	static const uint32_t f[] = {
	    0, SMFIP_NR_CONN, SMFIP_NR_HELO, SMFIP_NR_MAIL, SMFIP_NR_RCPT, SMFIP_NR_DATA, 0};
	return f[ev];
}

/* Next milter, or the end of the event when none is left. */
static void next_milter(struct milter_chain *c)
{
	c->cur++;
	c->phase = PH_BEGIN;
}

/* End of message for the current milter: choose what it is shown (the
 * message as the earlier milters left it). Returns false on failure. */
static bool eom_prepare(struct milter_chain *c)
{
	if (!c->chunk && !(c->chunk = malloc(MILTER_CHUNK_MAX)))
		return false;
	if (!c->hs_read) {
		if (message_headers_read(c->msg, &c->hs) != 0)
			return false;
		c->hs_read = true;
	}
	c->shown = c->msg;
	c->shown_hs = &c->hs;
	if (message_edits_change_content(c->edits)) {
		if (c->view_hs_read) {
			message_headers_free(&c->view_hs);
			c->view_hs_read = false;
		}
		if (!c->view_init) {
			uint64_t lim = c->msg->size_limit;
			message_store_init(&c->view, c->msg->mem_limit,
					   lim ? lim + 2 * MESSAGE_HEADER_SECTION_MAX : 0,
					   c->msg->tmpdir);
			c->view_init = true;
		} else {
			message_store_reset(&c->view);
		}
		if (message_edit_apply(c->msg, &c->hs, c->edits, &c->view) != 0)
			return false;
		if (message_headers_read(&c->view, &c->view_hs) != 0)
			return false;
		c->view_hs_read = true;
		c->shown = &c->view;
		c->shown_hs = &c->view_hs;
	}
	c->hdr_i = 0;
	c->body_off = 0;
	c->body_replaced = false;
	return true;
}

/* One header as Postfix sends it: folding as "\n", a leading space when
 * the milter asked for HDR_LEADSPC. */
static bool build_header(struct milter_chain *c, struct milter *m, const struct message_header *h)
{
	struct buf v = {0};
	bool ok = true;
	if (m->protocol & SMFIP_HDR_LEADSPC)
		ok = buf_append(&v, " ", 1);
	for (const char *p = h->value; ok && *p; p++)
		if (!(p[0] == '\r' && p[1] == '\n'))
			ok = buf_append(&v, p, 1);
	ok = ok && buf_append(&v, "", 1);
	ok = ok && milter_put_header(&c->out, h->name, v.data);
	buf_free(&v);
	return ok;
}

enum adv { ADV_AGAIN, ADV_WAIT, ADV_DONE };

/* One step of the end of message for milter m (connected, in the message). */
static enum adv eom_step(struct milter_chain *c, struct milter *m)
{
	for (;;) {
		switch (c->phase) {
		case PH_COMMAND: /* first visit: prepare */
			if (!eom_prepare(c)) {
				log_error(m, "cannot read the held message");
				finish(c, MILTER_TEMPFAIL, REPLY_TEMPFAIL, milter_name(m));
				return ADV_DONE;
			}
			c->phase = (m->protocol & SMFIP_NOHDRS) ? PH_EOH : PH_HEADERS;
			continue;
		case PH_HEADERS:
			if (c->hdr_i >= c->shown_hs->n) {
				c->phase = PH_EOH;
				continue;
			}
			if (!build_header(c, m, &c->shown_hs->h[c->hdr_i++])) {
				milter_fail(m, "out of memory");
				return ADV_AGAIN;
			}
			if (!send_out(m, (m->protocol & SMFIP_NR_HDR) ? AW_WRITE : AW_REPLY))
				return ADV_AGAIN;
			return ADV_WAIT;
		case PH_EOH:
			if (m->protocol & SMFIP_NOEOH) {
				c->phase = PH_EOH_SENT;
				continue;
			}
			if (!milter_put_simple(&c->out, SMFIC_EOH)) {
				milter_fail(m, "out of memory");
				return ADV_AGAIN;
			}
			c->phase = PH_EOH_SENT;
			if (!send_out(m, (m->protocol & SMFIP_NR_EOH) ? AW_WRITE : AW_REPLY))
				return ADV_AGAIN;
			return ADV_WAIT;
		case PH_EOH_SENT:
			c->phase = (m->protocol & SMFIP_NOBODY) ? PH_EOB : PH_BODY;
			continue;
		case PH_BODY: {
			ssize_t got =
			    message_store_read(c->shown, c->shown_hs->body_offset + c->body_off,
					       c->chunk, MILTER_CHUNK_MAX);
			if (got < 0) {
				log_error(m, "cannot read the held message");
				finish(c, MILTER_TEMPFAIL, REPLY_TEMPFAIL, milter_name(m));
				return ADV_DONE;
			}
			if (got == 0) {
				c->phase = PH_EOB;
				continue;
			}
			c->body_off += (uint64_t)got;
			if (!milter_put_body(&c->out, c->chunk, (size_t)got)) {
				milter_fail(m, "out of memory");
				return ADV_AGAIN;
			}
			if (!send_out(m, (m->protocol & SMFIP_NR_BODY) ? AW_WRITE : AW_REPLY))
				return ADV_AGAIN;
			return ADV_WAIT;
		}
		case PH_EOB: {
			const char *pairs[] = {"i", c->info->queue_id};
			if (!milter_put_macros(&c->out, SMFIC_BODYEOB, pairs, 1) ||
			    !milter_put_simple(&c->out, SMFIC_BODYEOB)) {
				c->out.len = 0;
				milter_fail(m, "out of memory");
				return ADV_AGAIN;
			}
			c->phase = PH_EOB_SENT;
			if (!send_out(m, AW_REPLY))
				return ADV_AGAIN;
			return ADV_WAIT;
		}
		default: /* PH_EOB_SENT: the reply decides */
			return ADV_WAIT;
		}
	}
}

/* One step of the current event. */
static enum adv step(struct milter_chain *c)
{
	if (c->failed_alloc) {
		c->failed_alloc = false;
		finish(c, MILTER_TEMPFAIL, REPLY_TEMPFAIL, NULL);
		return ADV_DONE;
	}
	if (c->discarding && (c->ev == EV_RCPT || c->ev == EV_DATA || c->ev == EV_EOM)) {
		finish(c, MILTER_DISCARD, NULL, NULL);
		return ADV_DONE;
	}
	if (c->cur >= c->n) {
		finish(c, MILTER_CONTINUE, NULL, NULL);
		return ADV_DONE;
	}
	struct milter *m = &c->m[c->cur];
	if (m->state == MS_FAILED) {
		if (m->conf->default_action == TF_MILTER_ACCEPT) {
			next_milter(c);
			return ADV_AGAIN;
		}
		finish_default(c, m);
		return ADV_DONE;
	}
	if (m->await != AW_NONE)
		return ADV_WAIT;
	switch (c->phase) {
	case PH_BEGIN:
		if (m->out_session || (m->out_message && c->ev >= EV_RCPT)) {
			next_milter(c);
			return ADV_AGAIN;
		}
		if (m->state == MS_NEW) {
			c->phase = PH_CONNECT;
			start_connect(m);
			return m->state == MS_FAILED ? ADV_AGAIN : ADV_WAIT;
		}
		/* fall through */
	case PH_CONNECT:
		if (m->state != MS_READY)
			return ADV_WAIT;
		c->phase = PH_COMMAND;
		if (c->ev == EV_EOM)
			return eom_step(c, m);
		if (m->protocol & skip_flag(c->ev)) {
			next_milter(c);
			return ADV_AGAIN;
		}
		if (!build_event(c, c->ev)) {
			c->out.len = 0;
			milter_fail(m, "out of memory");
			return ADV_AGAIN;
		}
		if (!send_out(m, (m->protocol & noreply_flag(c->ev)) ? AW_WRITE : AW_REPLY))
			return ADV_AGAIN;
		return ADV_WAIT;
	case PH_COMMAND:
		/* A command without reply was written: next milter. */
		if (c->ev != EV_EOM) {
			next_milter(c);
			return ADV_AGAIN;
		}
		return eom_step(c, m);
	default:
		/* End of message: a step without reply was written. */
		return eom_step(c, m);
	}
}

static void run(struct milter_chain *c)
{
	unsigned gen = c->gen;
	while (!c->closing && c->ev != EV_NONE && c->gen == gen) {
		if (step(c) != ADV_AGAIN)
			return;
	}
}

/* ---- Replies ------------------------------------------------------------------- */

static bool may(const struct milter *m, uint32_t action)
{
	return (m->actions & action) != 0;
}

/* A modification at end of message; false when m broke the protocol. */
static bool apply_edit(struct milter_chain *c, struct milter *m, const struct milter_reply *r,
		       const char **what)
{
	struct message_edits *e = c->edits;
	int rc = 0;
	*what = "modification not negotiated";
	/* Under HDR_LEADSPC values come with the space after the colon; the
	 * edits hold them without it (message_edit.h). */
	const char *value = r->value;
	if (value && (m->protocol & SMFIP_HDR_LEADSPC) && *value == ' ')
		value++;
	switch (r->cmd) {
	case SMFIR_ADDHEADER:
		if (!may(m, SMFIF_ADDHDRS))
			return false;
		rc = message_edits_header(e, HEADER_ADD, 0, r->name, value);
		break;
	case SMFIR_INSHEADER:
		if (!may(m, SMFIF_ADDHDRS))
			return false;
		rc = message_edits_header(e, HEADER_INSERT, r->index, r->name, value);
		break;
	case SMFIR_CHGHEADER:
		if (!may(m, SMFIF_CHGHDRS))
			return false;
		rc = message_edits_header(e, HEADER_CHANGE, r->index, r->name, value);
		break;
	case SMFIR_REPLBODY:
		if (!may(m, SMFIF_CHGBODY))
			return false;
		rc = message_edits_body(e, r->data, r->data_len, !c->body_replaced);
		c->body_replaced = true;
		break;
	case SMFIR_ADDRCPT:
		if (!may(m, SMFIF_ADDRCPT))
			return false;
		rc = message_edits_add_rcpt(e, r->addr, NULL);
		break;
	case SMFIR_ADDRCPT_PAR:
		if (!may(m, SMFIF_ADDRCPT_PAR))
			return false;
		rc = message_edits_add_rcpt(e, r->addr, r->args);
		break;
	case SMFIR_DELRCPT:
		if (!may(m, SMFIF_DELRCPT))
			return false;
		rc = message_edits_del_rcpt(e, r->addr);
		break;
	case SMFIR_CHGFROM:
		if (!may(m, SMFIF_CHGFROM))
			return false;
		rc = message_edits_chgfrom(e, r->addr, r->args);
		break;
	case SMFIR_QUARANTINE:
		if (!may(m, SMFIF_QUARANTINE))
			return false;
		rc = message_edits_quarantine(e, r->addr);
		break;
	default:
		return false;
	}
	*what = "out of memory";
	return rc == 0;
}

static bool is_edit(char cmd)
{
	return cmd && strchr("hmib+2-eq", cmd) != NULL;
}

static void handle_reply(struct milter *m, const struct milter_packet *pkt)
{
	struct milter_chain *c = m->c;
	struct milter_reply *r = malloc(sizeof(*r));
	if (!r) {
		fail_and_run(m, "out of memory");
		return;
	}
	char what[64];
	if (milter_parse_reply(pkt, r) != 0) {
		snprintf(what, sizeof(what), "malformed reply '%c'",
			 pkt->cmd >= 0x21 && pkt->cmd < 0x7f ? pkt->cmd : '?');
		free(r);
		fail_and_run(m, what);
		return;
	}
	bool current = c->ev != EV_NONE && &c->m[c->cur] == m;
	if (r->cmd == SMFIR_SETSYMLIST) { /* parsed, not used */
		free(r);
		return;
	}
	if (m->state == MS_NEGOTIATING) {
		bool ok = r->cmd == SMFIR_OPTNEG &&
			  milter_negotiated(r, MILTER_ACTIONS_ALL, MILTER_PROTOCOL_OFFER,
					    &m->actions, &m->protocol) == 0;
		free(r);
		if (!ok) {
			fail_and_run(m, "negotiation refused");
			return;
		}
		m->state = MS_READY;
		m->await = AW_NONE;
		uv_timer_stop(&m->timer);
		if (current)
			run(c);
		return;
	}
	if (!current || m->await != AW_REPLY) {
		free(r);
		fail_and_run(m, "unexpected reply");
		return;
	}
	if (r->cmd == SMFIR_PROGRESS) {
		free(r);
		uv_timer_start(&m->timer, on_timeout, (uint64_t)m->conf->timeout * 1000, 0);
		return;
	}
	if (is_edit(r->cmd)) {
		const char *why = NULL;
		bool ok = c->ev == EV_EOM && c->phase == PH_EOB_SENT && apply_edit(c, m, r, &why);
		free(r);
		if (!ok)
			fail_and_run(m, why ? why : "modification before end of message");
		else /* more replies to come for this end of message */
			uv_timer_start(&m->timer, on_timeout, (uint64_t)m->conf->timeout * 1000, 0);
		return;
	}
	m->await = AW_NONE;
	uv_timer_stop(&m->timer);
	char cmd = r->cmd;
	switch (cmd) {
	case SMFIR_CONTINUE:
	case SMFIR_SKIP:
		free(r);
		if (c->ev == EV_EOM && c->phase != PH_EOB_SENT) {
			/* Next header, end of headers, body chunk; skip ends the body. */
			if (cmd == SMFIR_SKIP && c->phase == PH_BODY)
				c->phase = PH_EOB;
		} else {
			next_milter(c);
		}
		run(c);
		return;
	case SMFIR_ACCEPT:
		free(r);
		if (c->ev <= EV_HELO)
			m->out_session = true;
		else
			m->out_message = true;
		next_milter(c);
		run(c);
		return;
	case SMFIR_REJECT:
		free(r);
		finish(c, MILTER_REJECT, REPLY_REJECT, milter_name(m));
		return;
	case SMFIR_TEMPFAIL:
		free(r);
		finish(c, MILTER_TEMPFAIL, REPLY_TEMPFAIL, milter_name(m));
		return;
	case SMFIR_SHUTDOWN:
	case SMFIR_CONN_FAIL:
		free(r);
		/* The milter is going away: tempfail now, its default later. */
		log_error(m, cmd == SMFIR_SHUTDOWN ? "shutdown" : "connection fail");
		m->state = MS_FAILED;
		close_stream(m);
		finish(c, MILTER_TEMPFAIL, REPLY_TEMPFAIL, milter_name(m));
		return;
	case SMFIR_REPLYCODE: {
		struct milter_verdict v;
		snprintf(v.reply, sizeof(v.reply), "%s", r->smtp);
		int code = r->code;
		free(r);
		finish(c, code >= 500 ? MILTER_REJECT : MILTER_TEMPFAIL, v.reply, milter_name(m));
		return;
	}
	case SMFIR_DISCARD:
		free(r);
		if (c->ev < EV_MAIL) {
			fail_and_run(m, "discard outside a message");
			return;
		}
		finish(c, MILTER_DISCARD, NULL, milter_name(m));
		return;
	default:
		free(r);
		fail_and_run(m, "unexpected reply");
		return;
	}
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
	struct milter_chain *c = s->data;
	struct milter *m = NULL;
	for (size_t i = 0; i < c->n; i++)
		if (c->m[i].stream == s)
			m = &c->m[i];
	if (!m || c->closing || m->state == MS_FAILED || n == 0)
		return;
	if (n < 0) {
		fail_and_run(m, n == UV_EOF ? "closed by the milter" : uv_strerror((int)n));
		return;
	}
	const char *p = b->base;
	size_t left = (size_t)n;
	while (left && !c->closing && m->state != MS_FAILED) {
		struct milter_packet pkt;
		enum milter_read_status st;
		size_t used = milter_reader_feed(&m->rd, p, left, &pkt, &st);
		p += used;
		left -= used;
		if (st == MILTER_READ_BAD) {
			fail_and_run(m, "bad packet length");
			return;
		}
		if (st == MILTER_READ_PACKET)
			handle_reply(m, &pkt);
	}
}

/* ---- The interface ------------------------------------------------------------ */

static void on_kick(uv_timer_t *t)
{
	run(t->data);
}

struct milter_chain *milter_chain_new(uv_loop_t *loop, const struct tf_milter_config *conf,
				      size_t n, const struct milter_session_info *info,
				      const char *session_id, milter_done_cb done, void *owner)
{
	if (n == 0 || n > TF_MAX_MILTERS)
		return NULL;
	struct milter_chain *c = calloc(1, sizeof(*c));
	if (!c)
		return NULL;
	c->loop = loop;
	c->n = n;
	c->info = info;
	snprintf(c->session_id, sizeof(c->session_id), "%s", session_id ? session_id : "-");
	c->done = done;
	c->owner = owner;
	uv_timer_init(loop, &c->kick);
	c->kick.data = c;
	c->refs++;
	for (size_t i = 0; i < n; i++) {
		struct milter *m = &c->m[i];
		m->c = c;
		m->conf = &conf[i];
		uv_timer_init(loop, &m->timer);
		m->timer.data = m;
		c->refs++;
	}
	return c;
}

/* Records an event; the loop runs it (never done from in here). */
static void begin(struct milter_chain *c, enum event ev, const char *arg)
{
	if (c->closing)
		return;
	free(c->arg);
	c->arg = NULL;
	if (arg) {
		c->arg = strdup(arg);
		if (!c->arg)
			c->failed_alloc = true;
	}
	c->ev = ev;
	c->cur = 0;
	c->phase = PH_BEGIN;
	uv_timer_start(&c->kick, on_kick, 0, 0);
}

void milter_chain_connect(struct milter_chain *c)
{
	begin(c, EV_CONNECT, NULL);
}

void milter_chain_helo(struct milter_chain *c, const char *helo)
{
	begin(c, EV_HELO, helo ? helo : "");
}

void milter_chain_mail(struct milter_chain *c, const char *line_args)
{
	/* A new transaction: every milter is back in, no discard holds. */
	for (size_t i = 0; i < c->n; i++)
		c->m[i].out_message = false;
	c->discarding = false;
	begin(c, EV_MAIL, line_args ? line_args : "");
}

void milter_chain_rcpt(struct milter_chain *c, const char *line_args)
{
	begin(c, EV_RCPT, line_args ? line_args : "");
}

void milter_chain_data(struct milter_chain *c)
{
	begin(c, EV_DATA, NULL);
}

void milter_chain_eom(struct milter_chain *c, struct message_store *msg,
		      struct message_edits *edits)
{
	c->msg = msg;
	c->edits = edits;
	begin(c, EV_EOM, NULL);
}

/* A command without reply sent as it is now, without waiting; the close or
 * the next event bounds it. */
static void send_now(struct milter *m, char cmd)
{
	struct milter_chain *c = m->c;
	if (m->state != MS_READY || !milter_put_simple(&c->out, cmd))
		return;
	struct wreq *w = malloc(sizeof(*w) + c->out.len);
	if (!w) {
		c->out.len = 0;
		return;
	}
	w->m = m;
	memcpy(w->data, c->out.data, c->out.len);
	uv_buf_t b = uv_buf_init(w->data, (unsigned)c->out.len);
	c->out.len = 0;
	if (uv_write(&w->req, m->stream, &b, 1, on_written) < 0) {
		free(w);
		return;
	}
	m->inflight++;
}

void milter_chain_abort(struct milter_chain *c)
{
	if (c->closing || c->ev != EV_NONE)
		return; /* never during an event (the session waits for done) */
	for (size_t i = 0; i < c->n; i++) {
		struct milter *m = &c->m[i];
		if (!m->out_session)
			send_now(m, SMFIC_ABORT);
		m->out_message = false;
	}
	c->discarding = false;
}

void milter_chain_close(struct milter_chain *c)
{
	if (!c || c->closing)
		return;
	c->closing = true;
	c->ev = EV_NONE;
	release_eom(c);
	for (size_t i = 0; i < c->n; i++) {
		struct milter *m = &c->m[i];
		if (m->state == MS_READY && m->stream && !m->stream_closing) {
			/* QUIT if it can go at once; the close cancels the rest. */
			char q[5] = {0, 0, 0, 1, SMFIC_QUIT};
			uv_buf_t b = uv_buf_init(q, sizeof(q));
			(void)uv_try_write(m->stream, &b, 1);
		}
		if (m->gai_pending)
			uv_cancel((uv_req_t *)&m->gai);
		close_stream(m);
		uv_timer_stop(&m->timer);
		m->timer.data = c; /* on_closed finds the chain */
		uv_close((uv_handle_t *)&m->timer, on_closed);
	}
	uv_close((uv_handle_t *)&c->kick, on_closed);
}
