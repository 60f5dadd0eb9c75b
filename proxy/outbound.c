/* outbound.c — an outbound session (SPEC §4): the legacy server, the peer,
 * one timer, outbound_nego then the smtp_machine.
 *
 * Every event (a read, a write completion, a connect, the timer) feeds
 * outbound_nego (until it is done) or the smtp_machine, or the client-mode
 * TLS glue on the peer leg, and then calls outbound_step(), the one place
 * that carries out their actions and decides which side to read.
 * Backpressure as in session.c. How a session begins is outbound_start.c's,
 * its milters' callbacks are outbound_milters.c's (outbound_priv.h is what
 * the three share).
 *
 * Never makes an SMTP or TLS policy decision: replies, the retry and the
 * refusals come from outbound_nego and the machine. Never hands the peer's
 * plaintext after its 220 to STARTTLS to anyone. Never frees a session
 * outside the last close callback. The handles' lifecycle (the count, the
 * linger on close) is conn_life.c's.
 */
#include "proxy/outbound.h"
#include "proxy/outbound_priv.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>

#include "proxy/conn_limits.h"
#include "proxy/endpoint.h"
#include "policy/outbound_policy.h"
#include "proxy/log.h"
#include "proxy/metrics.h"

#define OUTBOUND_MAX_IN_FLIGHT (256 * 1024)

_Static_assert(offsetof(struct outbound, life) == 0, "conn_life.h: life comes first");

static void pump_tls(struct outbound *s);

/* ---- closing ----------------------------------------------------------- */

/* The release of conn_life.h: the last close callback. */
void outbound_free(struct conn_life *l)
{
	struct outbound *s = (struct outbound *)l;
	struct worker *w = s->life.worker;
	if (s->prev)
		s->prev->next = s->next;
	else
		w->outbounds = s->next;
	if (s->next)
		s->next->prev = s->prev;
	if (s->admitted)
		conn_limits_release((struct sockaddr *)&s->legacy_ss);
	outbound_nego_free(&s->nego);
	milter_session_free(s->milt);
	smtp_machine_free(&s->machine);
	endpoint_free_tls(&s->peer_ep);
	app_unref(s->app);
	free(s);
}

static void close_peers(struct outbound *s)
{
	for (unsigned i = 0; i < OUTBOUND_PEER_HANDLES; i++)
		if (s->peer_open[i])
			conn_life_close_handle((uv_handle_t *)&s->peer[i]);
}

static void log_summary(struct outbound *s)
{
	char sni_value[300];
	double duration = conn_life_seconds(&s->life);
	unsigned messages = s->spliced ? s->machine.messages : 0;
	/* The legacy server's SASL user name at the peer, as inbound. */
	const char *user = s->spliced ? smtp_machine_user(&s->machine) : NULL;
	char user_value[4 * SASL_USER_MAX + 3];
	log_msg(TF_LOG_INFO,
		"event=session id=%s listener=outbound client=%s peer=%s tls=%s cipher=%s sni=%s "
		"user=%s verified=%s fallback=%s messages=%u bytes_in=%llu bytes_out=%llu "
		"duration=%.3f reason=%s",
		s->id, s->legacy_addr, s->peer_addr, tls_io_version(s->peer_ep.tls),
		tls_io_cipher(s->peer_ep.tls), log_value(sni_value, sizeof(sni_value), s->sni),
		log_value(user_value, sizeof(user_value), user ? user : "none"),
		s->verified ? "yes" : "no", s->fallback ? "yes" : "no", messages,
		(unsigned long long)s->bytes_in, (unsigned long long)s->bytes_out, duration,
		smtp_close_reason_name(s->reason));
}

/* The worker's own counter block (metrics.h): no lock, no sharing. */
struct metrics_block *outbound_mblock(const struct outbound *s)
{
	return metrics_block(s->life.worker->index);
}

static void count_handshake_failure(struct outbound *s, enum metrics_hs_failure why)
{
	metrics_inc(&outbound_mblock(s)->hs_failed[ML_OUTBOUND][why]);
}

/* The session's outbound TLS outcome, or MO_COUNT when it ended before
 * one was reached (the peer unreachable, the legacy server gone). */
static enum metrics_out_tls outcome(const struct outbound *s)
{
	if (s->peer_ep.tls && s->peer_ep.tls->established)
		return s->verified ? MO_VERIFIED : MO_ENCRYPTED;
	if (s->spliced)
		return MO_PLAINTEXT;
	if (s->policy_refused)
		return MO_REFUSED;
	return MO_COUNT;
}

static void count_close(struct outbound *s, enum smtp_close_reason reason)
{
	struct metrics_block *b = outbound_mblock(s);
	metrics_inc(&b->ended[ML_OUTBOUND]
			     [reason > CLOSE_NONE && reason < MR_COUNT ? reason : CLOSE_ERROR]);
	metrics_add(&b->bytes_in[ML_OUTBOUND], s->bytes_in);
	metrics_add(&b->bytes_out[ML_OUTBOUND], s->bytes_out);
	enum metrics_out_tls o = outcome(s);
	if (o == MO_COUNT)
		return;
	metrics_inc(&b->out_sessions[o]);
	if (s->spliced)
		metrics_add(&b->out_messages[o], s->machine.messages);
	if (o == MO_PLAINTEXT && s->fallback)
		metrics_inc(&b->out_fallbacks);
}

void outbound_close(struct outbound *s, enum smtp_close_reason reason)
{
	if (s->closing)
		return;
	s->closing = true;
	s->reason = reason;
	log_summary(s);
	count_close(s, reason);
	if (s->resolving)
		uv_cancel((uv_req_t *)&s->gai);
	close_peers(s);
	if (conn_life_begin_close(&s->life))
		conn_life_linger(&s->life, reason == CLOSE_CLIENT_CLOSED);
}

void outbound_shutdown(struct outbound *s)
{
	if (s->closing)
		return;
	if (s->spliced)
		smtp_machine_shutdown(&s->machine);
	else
		outbound_nego_shutdown(&s->nego);
	outbound_step(s);
}

/* The peer leg is gone (closed, failed, a TLS error). */
void outbound_peer_lost(struct outbound *s)
{
	s->peer_gone = true;
	close_peers(s);
	if (s->spliced)
		smtp_machine_backend_closed(&s->machine);
	else
		outbound_nego_peer_closed(&s->nego);
}

/* ---- writing ----------------------------------------------------------- */

static void write_done(void *owner, uv_stream_t *st, int status)
{
	struct outbound *s = owner;
	bool to_legacy = st == legacy_stream(s);
	bool stale = !to_legacy && st != peer_stream(s);
	if (s->closing)
		return;
	if (status < 0 && to_legacy) {
		outbound_close(s, CLOSE_CLIENT_CLOSED);
		return;
	}
	if (status < 0 && !stale && !s->peer_gone && !s->handshaking)
		outbound_peer_lost(s);
	outbound_step(s);
}

/* A write to st could not start (rc from endpoint_write or endpoint_send). */
static void write_failed(struct outbound *s, uv_stream_t *st, int rc)
{
	bool to_legacy = st == legacy_stream(s);
	if (rc == UV_ENOMEM)
		outbound_close(s, CLOSE_ERROR);
	else if (rc != 0 && to_legacy)
		outbound_close(s, CLOSE_CLIENT_CLOSED);
	else if (rc != 0 && !s->peer_gone)
		outbound_peer_lost(s);
}

/* Takes ownership of data (malloc'd). */
static void write_to(struct outbound *s, struct endpoint *e, char *data, size_t len)
{
	write_failed(s, e->stream, endpoint_write(e, data, len, s, write_done));
}

static void send_legacy(struct outbound *s, char *data, size_t len)
{
	s->bytes_out += len;
	write_to(s, &s->legacy_ep, data, len);
}

static void flush_tls(struct outbound *s)
{
	if (s->peer_gone) {
		size_t len;
		free(buf_take(&s->peer_ep.tls->out, &len));
		return;
	}
	write_failed(s, peer_stream(s), endpoint_flush_tls(&s->peer_ep, s, write_done));
}

/* Plaintext for the peer: through TLS once it runs. */
void outbound_send_peer(struct outbound *s, char *data, size_t len)
{
	if (!len || !s->peer_connected || s->peer_gone) {
		free(data);
		return;
	}
	int rc = endpoint_send(&s->peer_ep, data, len, s, write_done);
	if (rc == ENDPOINT_TLS_FAILED) {
		log_msg(TF_LOG_WARN, "event=tls_error id=%s peer=%s error=\"%s\"", s->id,
			s->peer_addr, s->peer_ep.tls->error);
		outbound_peer_lost(s);
		return;
	}
	write_failed(s, peer_stream(s), rc);
}

/* ---- timer ------------------------------------------------------------- */

static void tls_failed(struct outbound *s, bool timed_out);

void outbound_timer_cb(uv_timer_t *t)
{
	struct outbound *s = t->data;
	if (s->closing)
		return;
	if (!s->peer_connected) {
		outbound_peer_connect_failed(s, "connection timed out");
		return;
	} else if (s->handshaking) {
		log_msg(TF_LOG_INFO, "event=tls_timeout id=%s peer=%s", s->id, s->peer_addr);
		count_handshake_failure(s, MH_TIMEOUT);
		tls_failed(s, true);
		return;
	} else if (s->spliced) {
		smtp_machine_timeout(&s->machine);
	} else {
		outbound_nego_timeout(&s->nego);
	}
	outbound_step(s);
}

/* ---- TLS on the peer leg ----------------------------------------------- */

static void tls_failed(struct outbound *s, bool timed_out)
{
	s->handshaking = false;
	if (s->spliced)
		outbound_peer_lost(s);
	else if (timed_out)
		outbound_nego_tls_timeout(&s->nego);
	else
		outbound_nego_tls_failed(&s->nego);
	outbound_step(s);
}

static void do_handshake(struct outbound *s)
{
	int rc = tls_io_handshake(s->peer_ep.tls);
	flush_tls(s);
	if (s->closing || rc == TLSIO_AGAIN)
		return;
	if (rc == TLSIO_ERROR) {
		log_msg(TF_LOG_INFO, "event=tls_error id=%s peer=%s error=\"%s\"", s->id,
			s->peer_addr, s->peer_ep.tls->error);
		enum tlsio_failure f = s->peer_ep.tls->failure;
		count_handshake_failure(s, f == TLSIO_FAIL_ALERT	 ? MH_ALERT
					   : f == TLSIO_FAIL_CERTIFICATE ? MH_CERTIFICATE
					   : f == TLSIO_FAIL_ALPN	 ? MH_ALPN
									 : MH_PROTOCOL);
		if (f == TLSIO_FAIL_CERTIFICATE)
			metrics_inc(&outbound_mblock(s)->out_verify[MVR_FAILED]);
		tls_failed(s, false);
		return;
	}
	s->handshaking = false;
	s->verified = outbound_policy_verifies(s->app->cfg.outbound.tls);
	struct metrics_block *b = outbound_mblock(s);
	metrics_inc(&b->out_verify[s->verified ? MVR_OK : MVR_NOT_CHECKED]);
	metrics_inc(&b->tls[ML_OUTBOUND][metrics_tls_version_of(tls_io_version(s->peer_ep.tls))]
			   [metrics_cipher_of(tls_io_cipher(s->peer_ep.tls))]);
	char sni_value[300];
	log_msg(TF_LOG_INFO, "event=tls id=%s peer=%s tls=%s cipher=%s sni=%s verified=%s", s->id,
		s->peer_addr, tls_io_version(s->peer_ep.tls), tls_io_cipher(s->peer_ep.tls),
		log_value(sni_value, sizeof(sni_value), s->sni), s->verified ? "yes" : "no");
	conn_life_arm(&s->life, s->app->cfg.limits.idle_timeout);
	outbound_nego_tls_established(&s->nego);
	outbound_step(s);
	pump_tls(s);
}

static void begin_tls(struct outbound *s)
{
	bool verify = outbound_policy_verifies(s->app->cfg.outbound.tls);
	const char *name = s->host[0] ? s->host : NULL;
	s->peer_ep.tls = calloc(1, sizeof(*s->peer_ep.tls));
	if (!s->peer_ep.tls ||
	    tls_io_init_client(s->peer_ep.tls, s->app->creds, name, verify) != TLSIO_OK) {
		log_msg(TF_LOG_ERROR, "event=tls_error id=%s error=\"cannot start TLS: %s\"", s->id,
			s->peer_ep.tls ? s->peer_ep.tls->error : "out of memory");
		endpoint_free_tls(&s->peer_ep);
		s->handshaking = true;
		tls_failed(s, false);
		return;
	}
	unsigned char ip[sizeof(struct in6_addr)];
	if (name && inet_pton(AF_INET, name, ip) != 1 && inet_pton(AF_INET6, name, ip) != 1)
		snprintf(s->sni, sizeof(s->sni), "%s", name); /* as creds_client_session */
	s->handshaking = true;
	conn_life_arm(&s->life, s->app->cfg.tls.handshake_timeout);
	do_handshake(s); /* the ClientHello */
}

/* ---- reading ----------------------------------------------------------- */

bool outbound_peer_backlogged(struct outbound *s)
{
	return s->peer_connected && !s->peer_gone && s->peer_ep.inflight > OUTBOUND_MAX_IN_FLIGHT;
}

static bool legacy_wanted(struct outbound *s)
{
	if (s->closing)
		return false;
	if (!s->spliced)
		return outbound_nego_wants_legacy_input(&s->nego);
	return smtp_machine_wants_client_input(&s->machine) && !outbound_peer_backlogged(s);
}

static bool peer_wanted(struct outbound *s)
{
	return !s->closing && s->peer_connected && !s->peer_gone &&
	       (s->handshaking || s->legacy_ep.inflight <= OUTBOUND_MAX_IN_FLIGHT);
}

/* Peer plaintext (from the socket, or decrypted): nego first, then the
 * machine gets what nego leaves once it is done. */
static void peer_plain(struct outbound *s, const char *p, size_t n)
{
	if (!s->spliced) {
		size_t used = outbound_nego_feed_peer(&s->nego, p, n);
		outbound_step(s);
		if (s->closing || !s->spliced || used == n)
			return;
		p += used;
		n -= used;
	}
	smtp_machine_feed_backend(&s->machine, p, n);
	outbound_step(s);
}

static bool pump_wanted(void *owner)
{
	return peer_wanted(owner);
}

static void pump_records(void *owner, const char *p, size_t n)
{
	peer_plain(owner, p, n);
}

static void pump_renegotiation_refused(void *owner)
{
	flush_tls(owner);
}

static void pump_ended(void *owner, int why)
{
	struct outbound *s = owner;
	if (why == TLSIO_ERROR)
		log_msg(TF_LOG_INFO, "event=tls_error id=%s peer=%s error=\"%s\"", s->id,
			s->peer_addr, s->peer_ep.tls->error);
	outbound_peer_lost(s);
	outbound_step(s);
}

static const struct endpoint_pump_ops peer_pump_ops = {
    .wanted = pump_wanted,
    .records = pump_records,
    .renegotiation_refused = pump_renegotiation_refused,
    .ended = pump_ended,
};

/* Decrypts what the peer sent, feeding nego or the machine, while wanted. */
static void pump_tls(struct outbound *s)
{
	endpoint_pump(&s->peer_ep, &peer_pump_ops, s);
}

static void legacy_read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *b)
{
	struct outbound *s = st->data;
	if (s->closing || nread == 0)
		return;
	if (nread < 0) {
		outbound_close(s, CLOSE_CLIENT_CLOSED);
		return;
	}
	s->bytes_in += (uint64_t)nread;
	if (!s->spliced) {
		outbound_nego_feed_legacy(&s->nego, b->base, (size_t)nread);
		outbound_step(s);
		return;
	}
	/* Reads take up to 256 KiB (worker.h); the machine gets them in
	 * 64 KiB pieces, each sent on at once, so the buffers for the peer
	 * stay the size they had with 64 KiB reads. */
	const char *p = b->base;
	size_t n = (size_t)nread;
	while (n && !s->closing) {
		size_t k = n < 64 * 1024 ? n : 64 * 1024;
		smtp_machine_feed_client(&s->machine, p, k);
		outbound_step(s);
		p += k;
		n -= k;
	}
}

static void peer_read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *b)
{
	struct outbound *s = st->data;
	if (s->closing || nread == 0 || st != peer_stream(s) || s->peer_gone)
		return;
	if (nread < 0) {
		if (s->handshaking) {
			log_msg(TF_LOG_INFO, "event=tls_error id=%s peer=%s error=\"%s\"", s->id,
				s->peer_addr, "connection closed during the handshake");
			count_handshake_failure(s, MH_CLOSED);
			tls_failed(s, false);
			return;
		}
		outbound_peer_lost(s);
		outbound_step(s);
		return;
	}
	if (!s->peer_ep.tls) {
		peer_plain(s, b->base, (size_t)nread);
		return;
	}
	if (!tls_io_feed(s->peer_ep.tls, b->base, (size_t)nread)) {
		outbound_close(s, CLOSE_ERROR);
		return;
	}
	if (s->handshaking)
		do_handshake(s);
	else
		pump_tls(s);
	outbound_step(s);
}

void outbound_update_reads(struct outbound *s)
{
	endpoint_set_reading(&s->legacy_ep, legacy_wanted(s), conn_life_alloc_cb, legacy_read_cb);
	if (s->peer_connected && !s->peer_gone)
		endpoint_set_reading(&s->peer_ep, peer_wanted(s), conn_life_alloc_cb, peer_read_cb);
}

/* ---- the strategy step ------------------------------------------------- */

/* §4.3 negotiated, handshake failed: one fresh plaintext connection. */
static void reconnect(struct outbound *s)
{
	if (s->peer_open[s->cur])
		conn_life_close_handle((uv_handle_t *)&s->peer[s->cur]);
	endpoint_free_tls(&s->peer_ep);
	snprintf(s->sni, sizeof(s->sni), "none");
	s->handshaking = false;
	s->peer_connected = false;
	s->peer_ep.reading = false;
	s->verified = false;
	s->fallback = true;
	s->retrying = true;
	s->cur++; /* a fresh handle, to the address that answered */
	conn_life_arm(&s->life, s->app->cfg.outbound.connect_timeout);
	outbound_connect_peer(s);
}

static void splice_machine(struct outbound *s)
{
	s->spliced = true;
	smtp_machine_skip_greeting(&s->machine);
	if (s->machine.cfg.milters)
		outbound_start_milters(s);
	size_t len;
	char *held = outbound_nego_take_held(&s->nego, &len);
	if (len)
		smtp_machine_feed_client(&s->machine, held, len);
	free(held);
	conn_life_arm(&s->life, s->app->cfg.limits.idle_timeout);
}

static void log_nego(struct outbound *s, const struct nego_actions *a)
{
	if (a->discarded)
		log_msg(TF_LOG_WARN,
			"event=response_injection id=%s peer=%s discarded=%zu "
			"note=\"plaintext after the peer's 220 to STARTTLS dropped\"",
			s->id, s->peer_addr, a->discarded);
	if (a->note)
		log_msg(TF_LOG_INFO, "event=%s id=%s peer=%s policy=%s note=\"%s\"",
			a->event ? a->event : "note", s->id, s->peer_addr,
			s->app->cfg.outbound.tls == TF_OUT_TLS_NONE	    ? "none"
			: s->app->cfg.outbound.tls == TF_OUT_TLS_NEGOTIATED ? "negotiated"
			: s->app->cfg.outbound.tls == TF_OUT_TLS_REQUIRED   ? "required"
									    : "verify",
			a->note);
}

/* Carries out outbound_nego's actions. Returns true when the machine now
 * runs the session. */
static bool step_nego(struct outbound *s)
{
	struct nego_actions *a = &s->nego.act;
	size_t len;
	char *data = buf_take(&a->to_peer, &len);
	outbound_send_peer(s, data, len);
	data = buf_take(&a->to_legacy, &len);
	if (len)
		send_legacy(s, data, len);
	else
		free(data);
	if (s->closing)
		return false;
	log_nego(s, a);
	for (unsigned r = 0; r < REFUSAL_COUNT; r++) {
		metrics_add(&outbound_mblock(s)->refused[ML_OUTBOUND][r], a->refused[r]);
		a->refused[r] = 0; /* counted once */
	}
	if (a->close && a->event && strcmp(a->event, "outbound_policy") == 0)
		s->policy_refused = true; /* §4.3: 421 4.7.0 */
	bool start_tls = a->start_tls, again = a->reconnect, done = a->done;
	bool close = a->close;
	enum smtp_close_reason reason = a->reason;
	outbound_nego_clear_actions(&s->nego);
	if (close) {
		outbound_close(s, reason);
		return false;
	}
	if (again)
		reconnect(s);
	if (start_tls)
		begin_tls(s);
	if (done && !s->closing && !s->spliced)
		splice_machine(s);
	return s->spliced && !s->closing;
}

void outbound_step(struct outbound *s)
{
	if (s->closing)
		return;
	if (!s->spliced && !step_nego(s)) {
		if (!s->closing)
			outbound_update_reads(s);
		return;
	}
	struct smtp_actions *a = &s->machine.act;
	size_t len;
	char *data;

	if (s->milt)
		milter_session_actions(s->milt);
	if (a->drop_backend && !s->peer_gone) {
		s->peer_gone = true;
		close_peers(s);
		log_msg(TF_LOG_INFO, "event=peer_dropped id=%s", s->id);
	}
	data = buf_take(&a->to_backend, &len);
	outbound_send_peer(s, data, len);
	data = buf_take(&a->to_client, &len);
	if (len)
		send_legacy(s, data, len);
	else
		free(data);
	if (s->closing)
		return;
	if (a->note)
		log_msg(TF_LOG_INFO, "event=note id=%s note=\"%s\"", s->id, a->note);
	struct metrics_block *b = outbound_mblock(s);
	for (unsigned r = 0; r < REFUSAL_COUNT; r++) {
		metrics_add(&b->refused[ML_OUTBOUND][r], a->refused[r]);
		a->refused[r] = 0; /* counted once */
	}
	if (s->machine.messages != s->logged_messages) {
		metrics_add(&b->messages[ML_OUTBOUND], s->machine.messages - s->logged_messages);
		s->logged_messages = s->machine.messages;
		log_msg(TF_LOG_INFO, "event=delivered id=%s peer=%s tls=%s message=%u", s->id,
			s->peer_addr, tls_io_version(s->peer_ep.tls), s->machine.messages);
	}
	if (a->progress && !s->handshaking)
		conn_life_arm(&s->life, s->app->cfg.limits.idle_timeout);
	bool close = a->close;
	enum smtp_close_reason reason = a->reason;
	smtp_machine_clear_actions(&s->machine);
	if (close) {
		outbound_close(s, reason);
		return;
	}
	outbound_update_reads(s);
	if (s->peer_ep.tls && s->peer_ep.tls->established && peer_wanted(s) &&
	    tls_io_pending(s->peer_ep.tls))
		pump_tls(s);
	if (s->milt && !s->closing)
		milter_session_pump(s->milt);
}
