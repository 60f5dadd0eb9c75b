/* session.c — an inbound session: two endpoints, one timer, one machine.
 * This file reads, writes, runs TLS and takes the strategy step; how a
 * session begins is session_start.c's, its milters' callbacks are
 * session_milters.c's (session_priv.h is what the three share).
 *
 * Every event (a read, a write completion, a connect, the timer) feeds the
 * SMTP machine or the TLS glue and then calls session_step(), the one place
 * that carries out the machine's actions and decides which side to read
 * (STYLE.md point 4). Backpressure: a side is not read while more than
 * SESSION_MAX_IN_FLIGHT bytes wait to be written to the other side.
 *
 * Never makes an SMTP decision: replies and their wording come from the
 * machine. Never frees a session outside the last close callback. The
 * handles' lifecycle (the count, the linger on close) is conn_life.c's.
 */
#include "proxy/session.h"
#include "proxy/session_priv.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include "proxy/conn_limits.h"
#include "proxy/endpoint.h"
#include "proxy/log.h"
#include "proxy/metrics.h"

#define SESSION_MAX_IN_FLIGHT (256 * 1024)

_Static_assert(offsetof(struct session, life) == 0, "conn_life.h: life comes first");

static void pump_tls(struct session *s);

/* ---- metrics ----------------------------------------------------------- */

/* The worker's own counter block (metrics.h): no lock, no sharing. */
struct metrics_block *session_mblock(const struct session *s)
{
	return metrics_block(s->life.worker->index);
}

enum metrics_listener session_mlistener(const struct session *s)
{
	return s->kind == LISTENER_TLS ? ML_TLS : ML_TCP;
}

static void count_handshake_failure(struct session *s, enum metrics_hs_failure why)
{
	metrics_inc(&session_mblock(s)->hs_failed[session_mlistener(s)][why]);
}

static enum metrics_hs_failure failure_of(const struct tls_io *t)
{
	switch (t->failure) {
	case TLSIO_FAIL_ALERT:
		return MH_ALERT;
	case TLSIO_FAIL_ALPN:
		return MH_ALPN;
	case TLSIO_FAIL_CERTIFICATE:
		return MH_CERTIFICATE;
	default:
		return MH_PROTOCOL;
	}
}

/* ---- closing ----------------------------------------------------------- */

/* The release of conn_life.h: the last close callback. */
void session_free(struct conn_life *l)
{
	struct session *s = (struct session *)l;
	struct worker *w = s->life.worker;
	if (s->prev)
		s->prev->next = s->next;
	else
		w->sessions = s->next;
	if (s->next)
		s->next->prev = s->prev;
	if (s->admitted)
		conn_limits_release((struct sockaddr *)&s->peer);
	if (s->held)
		conn_limits_unhold();
	milter_session_free(s->milt);
	smtp_machine_free(&s->machine);
	free(s->pp_buf);
	endpoint_free_tls(&s->client_ep);
	app_unref(s->app);
	free(s);
}

void session_close_backend(struct session *s)
{
	if (s->backend_open)
		conn_life_close_handle((uv_handle_t *)&s->backend);
}

/* The backend closed or failed (§3.2: the client gets 421 4.3.0 at once).
 * During the client's STARTTLS handshake that reply could not reach it:
 * nothing plaintext may cross the handshake, so the client would only see
 * its connection drop mid-handshake. The machine then hears of it when the
 * handshake is done, and the 421 goes out over TLS (a handshake failure or
 * timeout closes the session anyway). Found by test_soak.py. */
static void backend_lost(struct session *s)
{
	s->backend_gone = true;
	session_close_backend(s);
	if (s->handshaking) {
		s->backend_lost_in_handshake = true;
		return;
	}
	smtp_machine_backend_closed(&s->machine);
}

static void log_summary(struct session *s)
{
	char sni[300] = "none", sni_value[310];
	if (s->client_ep.tls)
		tls_io_sni(s->client_ep.tls, sni, sizeof(sni));
	/* The SASL user name of a 235 (§3.6), quoted and escaped when it holds
	 * a space, '"', '\\', '=' or non-ASCII bytes (each such byte takes up
	 * to four characters). */
	const char *user = smtp_machine_user(&s->machine);
	char user_value[4 * SASL_USER_MAX + 3];
	double duration = conn_life_seconds(&s->life);
	log_msg(TF_LOG_INFO,
		"event=session id=%s listener=%s client=%s tls=%s cipher=%s sni=%s user=%s "
		"auth=%s messages=%u bytes_in=%llu bytes_out=%llu duration=%.3f reason=%s",
		s->id, s->kind == LISTENER_TLS ? "tls" : "tcp", s->client_addr,
		tls_io_version(s->client_ep.tls), tls_io_cipher(s->client_ep.tls),
		log_value(sni_value, sizeof(sni_value), sni),
		log_value(user_value, sizeof(user_value), user ? user : "none"),
		s->machine.authenticated ? "yes" : "no", s->machine.messages,
		(unsigned long long)s->bytes_in, (unsigned long long)s->bytes_out, duration,
		smtp_close_reason_name(s->reason));
}

static void flush_tls(struct session *s);

void session_close(struct session *s, enum smtp_close_reason reason)
{
	if (s->closing)
		return;
	s->closing = true;
	s->reason = reason;
	log_summary(s);
	struct metrics_block *b = session_mblock(s);
	enum metrics_listener l = session_mlistener(s);
	metrics_inc(&b->ended[l][reason > CLOSE_NONE && reason < MR_COUNT ? reason : CLOSE_ERROR]);
	metrics_add(&b->bytes_in[l], s->bytes_in);
	metrics_add(&b->bytes_out[l], s->bytes_out);

	session_close_backend(s);
	if (!conn_life_begin_close(&s->life))
		return;
	if (s->client_ep.tls && s->client_ep.tls->established) {
		tls_io_bye(s->client_ep.tls);
		flush_tls(s);
	}
	/* Let what was written (a 421, a 221) reach the client, then close. */
	conn_life_linger(&s->life, reason == CLOSE_CLIENT_CLOSED);
}

void session_shutdown(struct session *s)
{
	if (s->closing)
		return;
	smtp_machine_shutdown(&s->machine);
	session_step(s);
}

/* ---- writing ----------------------------------------------------------- */

static void write_done(void *owner, uv_stream_t *st, int status)
{
	struct session *s = owner;
	if (s->closing)
		return;
	if (status < 0) {
		if (st == client_stream(s))
			session_close(s, CLOSE_CLIENT_CLOSED);
		else
			backend_lost(s);
	}
	session_step(s);
}

/* A write to st could not start (rc from endpoint_write or endpoint_send). */
static void write_failed(struct session *s, uv_stream_t *st, int rc)
{
	if (rc == UV_ENOMEM) {
		session_close(s, CLOSE_ERROR);
	} else if (rc != 0) {
		if (st == client_stream(s))
			session_close(s, CLOSE_CLIENT_CLOSED);
		else
			backend_lost(s);
	}
}

/* Takes ownership of data (malloc'd). */
void session_write_to(struct session *s, struct endpoint *e, char *data, size_t len)
{
	write_failed(s, e->stream, endpoint_write(e, data, len, s, write_done));
}

/* Plaintext for the client: through TLS when the session has it. */
static void send_client(struct session *s, char *data, size_t len)
{
	/* §7.5: application bytes the client gets; none cross a handshake. */
	if (!s->client_ep.tls || s->client_ep.tls->established)
		s->bytes_out += len;
	int rc = endpoint_send(&s->client_ep, data, len, s, write_done);
	if (rc == ENDPOINT_TLS_FAILED) {
		log_msg(TF_LOG_WARN, "event=tls_error id=%s error=\"%s\"", s->id,
			s->client_ep.tls->error);
		session_close(s, CLOSE_TLS_ERROR);
		return;
	}
	write_failed(s, client_stream(s), rc);
}

/* ---- timer ------------------------------------------------------------- */

void session_timer_cb(uv_timer_t *t)
{
	struct session *s = t->data;
	if (s->closing)
		return;
	if (s->awaiting_proxy) {
		log_msg(TF_LOG_INFO, "event=proxy_header_timeout id=%s balancer=%s", s->id,
			s->client_addr);
		session_close(s, CLOSE_ERROR);
		return;
	}
	if (s->handshaking) {
		log_msg(TF_LOG_INFO, "event=tls_timeout id=%s client=%s", s->id, s->client_addr);
		count_handshake_failure(s, MH_TIMEOUT);
		session_close(s, CLOSE_TIMEOUT);
		return;
	}
	if (!s->backend_connected) {
		log_msg(TF_LOG_WARN, "event=backend_timeout id=%s backend=%s", s->id,
			s->app->backend.text);
		metrics_inc(&session_mblock(s)->backend_failed[session_mlistener(s)]);
		smtp_machine_backend_unavailable(&s->machine);
	} else {
		smtp_machine_timeout(&s->machine);
	}
	session_step(s);
}

/* ---- TLS --------------------------------------------------------------- */

static void flush_tls(struct session *s)
{
	write_failed(s, client_stream(s), endpoint_flush_tls(&s->client_ep, s, write_done));
}

void session_begin_tls(struct session *s)
{
	s->client_ep.tls = calloc(1, sizeof(*s->client_ep.tls));
	if (!s->client_ep.tls || tls_io_init(s->client_ep.tls, s->app->creds) != TLSIO_OK) {
		log_msg(TF_LOG_ERROR, "event=tls_error id=%s error=\"cannot start TLS: %s\"", s->id,
			s->client_ep.tls ? s->client_ep.tls->error : "out of memory");
		session_close(s, CLOSE_TLS_ERROR);
		return;
	}
	s->handshaking = true;
	conn_life_arm(&s->life, s->app->cfg.tls.handshake_timeout);
}

/* What the client sends during the handshake is acknowledged at once.
 * After its flight the server has nothing to send back (a GnuTLS client's
 * ChangeCipherSpec, then its Finished, whose tickets wait for the first
 * reply), so the ACK would wait for the kernel's delayed-ACK timer, and a
 * client with Nagle's algorithm on (most are) holds its next write until
 * then: ~40 ms per STARTTLS session. TCP_QUICKACK does not stick: it is set
 * after each handshake read, one system call each. */
static void quick_ack(struct session *s)
{
	uv_os_fd_t fd;
	int one = 1;
	if (uv_fileno((uv_handle_t *)client_stream(s), &fd) == 0)
		(void)setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof(one));
}

static void do_handshake(struct session *s)
{
	int rc = tls_io_handshake(s->client_ep.tls);
	flush_tls(s);
	if (s->closing)
		return;
	if (rc == TLSIO_AGAIN)
		return;
	if (rc == TLSIO_ERROR) {
		log_msg(TF_LOG_INFO, "event=tls_error id=%s client=%s error=\"%s\"", s->id,
			s->client_addr, s->client_ep.tls->error);
		count_handshake_failure(s, failure_of(s->client_ep.tls));
		session_close(s, CLOSE_TLS_ERROR);
		return;
	}
	s->handshaking = false;
	struct metrics_block *b = session_mblock(s);
	metrics_inc(&b->tls[session_mlistener(s)][metrics_tls_version_of(
	    tls_io_version(s->client_ep.tls))][metrics_cipher_of(tls_io_cipher(s->client_ep.tls))]);
	if (tls_io_resumed(s->client_ep.tls))
		metrics_inc(&b->resumed[session_mlistener(s)]);
	char sni[300] = "none", sni_value[310];
	tls_io_sni(s->client_ep.tls, sni, sizeof(sni));
	log_msg(TF_LOG_INFO, "event=tls id=%s tls=%s cipher=%s sni=%s resumed=%s", s->id,
		tls_io_version(s->client_ep.tls), tls_io_cipher(s->client_ep.tls),
		log_value(sni_value, sizeof(sni_value), sni),
		tls_io_resumed(s->client_ep.tls) ? "yes" : "no");
	if (s->kind == LISTENER_TLS) {
		/* §3.1: on the TLS port the handshake comes first, then the
		 * backend. */
		session_after_greeting_ready(s);
		return;
	}
	conn_life_arm(&s->life, s->app->cfg.limits.idle_timeout);
	smtp_machine_tls_established(&s->machine);
	if (s->backend_lost_in_handshake)
		smtp_machine_backend_closed(&s->machine);
	session_step(s);
	pump_tls(s);
}

bool session_backend_backlogged(struct session *s)
{
	return s->backend_connected && !s->backend_gone &&
	       s->backend_ep.inflight > SESSION_MAX_IN_FLIGHT;
}

static bool client_wanted(struct session *s)
{
	if (s->closing)
		return false;
	if (s->handshaking || s->awaiting_proxy)
		return true;
	return smtp_machine_wants_client_input(&s->machine) && !session_backend_backlogged(s);
}

static bool pump_wanted(void *owner)
{
	return client_wanted(owner);
}

static struct chunk_pool *pool(struct session *s)
{
	return &s->life.worker->pool;
}

/* Message content for the backend collects in a pooled chunk (issue 12):
 * one taken when the content starts, written whole. */
static void content_chunk(struct session *s)
{
	if (s->machine.phase == PHASE_DATA)
		(void)chunk_pool_fill(pool(s), &s->machine.act.to_backend);
}

/* True when the machine, in the middle of message content, has nothing for
 * the session to do now but the bytes for the backend: those may wait for
 * the next record, to go out in one write. */
static bool only_content_pending(struct session *s)
{
	const struct smtp_actions *a = &s->machine.act;
	return s->machine.phase == PHASE_DATA && !a->to_client.len && !a->close &&
	       !a->drop_backend && !a->start_tls;
}

/* Client plaintext (a record, or a piece of a plaintext read) to the
 * machine. At most CONTENT_PIECE bytes, so that the worst case of the
 * scanner (two bytes out per byte in) fits a fresh chunk. */
#define CONTENT_PIECE (16 * 1024)
_Static_assert(WORKER_READ_BUF + 2 * CONTENT_PIECE + 8 <= CHUNK_POOL_SIZE, "a read fits a chunk");

static void feed_client(struct session *s, const char *p, size_t n)
{
	struct buf *tb = &s->machine.act.to_backend;
	/* Write what is collected when this record might not fit (the
	 * scanner reserves two bytes per byte). */
	if (tb->len && tb->len + 2 * n + 8 > tb->cap) {
		session_step(s);
		if (s->closing)
			return;
	}
	s->bytes_in += (uint64_t)n;
	content_chunk(s);
	smtp_machine_feed_client(&s->machine, p, n);
	if (!only_content_pending(s))
		session_step(s);
}

static void pump_records(void *owner, const char *p, size_t n)
{
	struct session *s = owner;
	/* A record is at most 16 KiB (GnuTLS's default maximum); the pieces
	 * are for a peer that negotiated more. */
	while (n && !s->closing) {
		size_t k = n < CONTENT_PIECE ? n : CONTENT_PIECE;
		feed_client(s, p, k);
		p += k;
		n -= k;
	}
}

static void pump_renegotiation_refused(void *owner)
{
	struct session *s = owner;
	log_msg(TF_LOG_INFO, "event=tls_renegotiation_refused id=%s", s->id);
	flush_tls(s);
}

static void pump_ended(void *owner, int why)
{
	struct session *s = owner;
	if (why == TLSIO_EOF) {
		session_close(s, CLOSE_CLIENT_CLOSED);
		return;
	}
	log_msg(TF_LOG_INFO, "event=tls_error id=%s error=\"%s\"", s->id, s->client_ep.tls->error);
	session_close(s, CLOSE_TLS_ERROR);
}

static const struct endpoint_pump_ops client_pump_ops = {
    .wanted = pump_wanted,
    .records = pump_records,
    .renegotiation_refused = pump_renegotiation_refused,
    .ended = pump_ended,
};

/* Decrypts what is waiting, feeding the machine, while it wants input;
 * then writes the content collected from those records at once. */
static void pump_tls(struct session *s)
{
	endpoint_pump(&s->client_ep, &client_pump_ops, s);
	if (!s->closing && !s->client_ep.pumping && s->machine.act.to_backend.len)
		session_step(s);
}

/* ---- reading ----------------------------------------------------------- */

/* Bytes from the client's socket: to TLS or, in plaintext, to the machine. */
void session_client_bytes(struct session *s, const char *p, size_t n)
{
	if (!s->client_ep.tls) {
		pump_records(s, p, n);
		session_step(s);
		return;
	}
	/* GnuTLS reads the libuv buffer in place; what it leaves is copied
	 * before the buffer is read into again (issue 12). */
	struct tls_io *t = s->client_ep.tls;
	if (!tls_io_lend(t, p, n)) {
		session_close(s, CLOSE_ERROR);
		return;
	}
	if (s->handshaking) {
		do_handshake(s);
		if (!s->closing)
			quick_ack(s);
	} else {
		pump_tls(s);
	}
	session_step(s);
	if (s->client_ep.tls == t && !tls_io_unlend(t))
		session_close(s, CLOSE_ERROR);
}

static void client_read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *b)
{
	struct session *s = st->data;
	if (s->closing || nread == 0)
		return;
	if (nread < 0) {
		if (s->handshaking)
			count_handshake_failure(s, MH_CLOSED);
		session_close(s, s->handshaking	     ? CLOSE_TLS_ERROR
				 : s->awaiting_proxy ? CLOSE_ERROR
						     : CLOSE_CLIENT_CLOSED);
		return;
	}
	if (s->awaiting_proxy)
		session_read_proxy_header(s, b->base, (size_t)nread);
	else
		session_client_bytes(s, b->base, (size_t)nread);
}

static void backend_read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *b)
{
	struct session *s = st->data;
	if (s->closing || nread == 0)
		return;
	if (nread < 0) {
		backend_lost(s);
	} else {
		smtp_machine_feed_backend(&s->machine, b->base, (size_t)nread);
	}
	session_step(s);
}

void session_update_reads(struct session *s)
{
	bool want_client = client_wanted(s);
	bool want_backend = !s->closing && s->backend_connected && !s->backend_gone &&
			    s->client_ep.inflight <= SESSION_MAX_IN_FLIGHT;
	endpoint_set_reading(&s->client_ep, want_client, conn_life_alloc_cb, client_read_cb);
	endpoint_set_reading(&s->backend_ep, want_backend, conn_life_alloc_cb, backend_read_cb);
}

/* ---- the strategy step ------------------------------------------------- */

void session_step(struct session *s)
{
	if (s->closing)
		return;
	struct smtp_actions *a = &s->machine.act;
	size_t len;
	char *data;

	struct metrics_block *b = session_mblock(s);
	for (unsigned r = 0; r < REFUSAL_COUNT; r++) {
		metrics_add(&b->refused[session_mlistener(s)][r], a->refused[r]);
		a->refused[r] = 0; /* counted once, whatever happens next */
	}

	if (s->milt)
		milter_session_actions(s->milt);
	if (a->drop_backend && !s->backend_gone) {
		s->backend_gone = true;
		session_close_backend(s);
		log_msg(TF_LOG_INFO, "event=backend_dropped id=%s", s->id);
	}
	size_t cap = a->to_backend.cap;
	data = buf_take(&a->to_backend, &len);
	if (s->backend_connected && !s->backend_gone)
		write_failed(
		    s, backend_stream(s),
		    endpoint_write_pooled(&s->backend_ep, data, len, cap, pool(s), s, write_done));
	else
		chunk_pool_put(pool(s), data, cap);
	data = buf_take(&a->to_client, &len);
	if (len)
		send_client(s, data, len);
	else
		free(data);
	if (s->closing)
		return;

	if (a->discarded)
		log_msg(TF_LOG_WARN,
			"event=starttls_injection id=%s client=%s discarded=%zu "
			"note=\"plaintext after STARTTLS dropped\"",
			s->id, s->client_addr, a->discarded);
	if (a->note && a->config_error) {
		/* Every session will fail alike until the operator acts:
		 * shown at log.level = "error" too (§3.3, §6). */
		char reply[4 * SMTP_NOTE_REPLY_MAX + 3],
		    backend[4 * sizeof(s->app->backend.text) + 3];
		log_msg(TF_LOG_ERROR, "event=note id=%s backend=%s note=\"%s\" reply=%s", s->id,
			log_value(backend, sizeof(backend), s->app->backend.text), a->note,
			log_value(reply, sizeof(reply), a->note_reply));
	} else if (a->note) {
		log_msg(TF_LOG_INFO, "event=note id=%s note=\"%s\"", s->id, a->note);
	}
	if (s->machine.messages != s->logged_messages) {
		metrics_add(&b->messages[session_mlistener(s)],
			    s->machine.messages - s->logged_messages);
		s->logged_messages = s->machine.messages;
		log_msg(TF_LOG_INFO, "event=delivered id=%s client=%s tls=%s message=%u", s->id,
			s->client_addr, tls_io_version(s->client_ep.tls), s->machine.messages);
	}
	if (a->progress && !s->handshaking && s->backend_connected)
		conn_life_arm(&s->life, s->app->cfg.limits.idle_timeout);
	bool start_tls = a->start_tls;
	bool close = a->close;
	enum smtp_close_reason reason = a->reason;
	smtp_machine_clear_actions(&s->machine);

	if (close) {
		session_close(s, reason);
		return;
	}
	if (start_tls) {
		metrics_inc(&b->starttls[session_mlistener(s)]);
		session_begin_tls(s);
	}
	session_update_reads(s);
	/* Records GnuTLS already holds get no socket event: drain them. */
	if (s->client_ep.tls && s->client_ep.tls->established && client_wanted(s) &&
	    tls_io_pending(s->client_ep.tls))
		pump_tls(s);
	if (s->milt && !s->closing)
		milter_session_pump(s->milt);
}
