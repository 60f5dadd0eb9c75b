/* milter_chain.c — one SMTP session's milters over libuv (milter_chain.h):
 * connects, negotiates, sends each event with its macros, waits for the
 * replies and turns them into a verdict and message edits. This file holds
 * the chain's lifetime, a milter's failure, the end of an event, writing,
 * connecting and the interface; what is sent for each event and the loop
 * that runs it are milter_chain_send.c, the replies and their modifications
 * milter_chain_reply.c, what the three share milter_chain_priv.h.
 *
 * How it runs: an event function only records the event and starts a zero
 * timer (kick); all progress happens in callbacks (kick, write done, read,
 * connect, getaddrinfo, timer), so done is never called from inside an
 * event function. chain_run() advances the event, milter by milter, until
 * it must wait (a write, a reply, a connection) or the event ends
 * (chain_finish(), which calls done last and never touches the chain after
 * it unless the same event generation is still current).
 *
 * Every wait has a timeout: connect_timeout for resolving, connecting; the
 * milter's timeout for a reply or a write to drain. Reads go to one 16 KiB
 * buffer of the chain.
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
#include "proxy/milter/milter_chain_priv.h"

#include <netdb.h>
#include <sys/un.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/log.h"

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

void chain_close_stream(struct milter *m)
{
	if (m->stream && !m->stream_closing) {
		m->stream_closing = true;
		uv_close((uv_handle_t *)m->stream, on_closed);
	}
}

/* The milter's name for the log and the verdict: read from the borrowed
 * configuration each time. */
const char *milter_name(const struct milter *m)
{
	if (m->conf->name && *m->conf->name)
		return m->conf->name;
	return m->conf->socket ? m->conf->socket : "milter";
}

/* ---- Logging and failure --------------------------------------------------- */

void chain_log_error(struct milter *m, const char *what)
{
	char name[128], err[256];
	log_msg(TF_LOG_WARN, "event=milter_error id=%s milter=%s error=%s", m->c->session_id,
		log_value(name, sizeof(name), milter_name(m)), log_value(err, sizeof(err), what));
}

/* The milter is out of the conversation: its default_action answers from
 * now on. The caller runs the chain again when m was being asked. */
void milter_fail(struct milter *m, const char *what)
{
	if (m->state == MS_FAILED)
		return;
	chain_log_error(m, what);
	m->state = MS_FAILED;
	m->await = AW_NONE;
	uv_timer_stop(&m->timer);
	if (m->gai_pending)
		uv_cancel((uv_req_t *)&m->gai);
	chain_close_stream(m);
	struct milter_chain *c = m->c;
	if (c->ev != EV_NONE && &c->m[c->cur] == m)
		c->phase = PH_BEGIN;
}

void chain_fail_and_run(struct milter *m, const char *what)
{
	struct milter_chain *c = m->c;
	bool current = c->ev != EV_NONE && &c->m[c->cur] == m;
	milter_fail(m, what);
	if (current && !c->closing)
		chain_run(c);
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
void chain_finish(struct milter_chain *c, enum milter_verdict_kind kind, const char *reply,
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

void chain_finish_default(struct milter_chain *c, struct milter *m)
{
	if (m->conf->default_action == TF_MILTER_REJECT)
		chain_finish(c, MILTER_REJECT, REPLY_REJECT, milter_name(m));
	else
		chain_finish(c, MILTER_TEMPFAIL, REPLY_TEMPFAIL, milter_name(m));
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
		chain_fail_and_run(m, what);
		return;
	}
	if (m->await == AW_WRITE && m->inflight == 0) {
		m->await = AW_NONE;
		uv_timer_stop(&m->timer);
		chain_run(c);
	}
}

/* Writes c->out to m and empties it; then waits for the write (AW_WRITE)
 * or the reply (AW_REPLY), within the milter's timeout. Returns false when
 * m failed. */
bool chain_send_out(struct milter *m, enum await aw)
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
	uv_timer_start(&m->timer, chain_on_timeout, (uint64_t)m->conf->timeout * 1000, 0);
	return true;
}

/* ---- Connecting ------------------------------------------------------------- */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
	struct milter_chain *c = h->data;
	*b = uv_buf_init(c->rbuf, sizeof(c->rbuf));
}

void chain_on_timeout(uv_timer_t *t)
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
	chain_fail_and_run(m, what);
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
		chain_fail_and_run(m, what);
		return;
	}
	int rc = uv_read_start(m->stream, on_alloc, chain_on_read);
	if (rc < 0) {
		chain_fail_and_run(m, "read start");
		return;
	}
	m->state = MS_NEGOTIATING;
	if (!milter_put_optneg(&c->out, MILTER_VERSION, MILTER_ACTIONS_ALL,
			       MILTER_PROTOCOL_OFFER)) {
		chain_fail_and_run(m, "out of memory");
		return;
	}
	if (!chain_send_out(m, AW_REPLY))
		chain_run(c);
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
		chain_fail_and_run(m, what);
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
		chain_run(c);
}

/* Starts connecting m (its socket text as milter_chain.h says). */
void chain_start_connect(struct milter *m)
{
	struct milter_chain *c = m->c;
	const char *s = m->conf->socket ? m->conf->socket : "";
	m->state = MS_CONNECTING;
	uv_timer_start(&m->timer, chain_on_timeout, (uint64_t)m->conf->connect_timeout * 1000, 0);
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

/* ---- The interface ------------------------------------------------------------ */

static void on_kick(uv_timer_t *t)
{
	chain_run(t->data);
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
		chain_close_stream(m);
		uv_timer_stop(&m->timer);
		m->timer.data = c; /* on_closed finds the chain */
		uv_close((uv_handle_t *)&m->timer, on_closed);
	}
	uv_close((uv_handle_t *)&c->kick, on_closed);
}
