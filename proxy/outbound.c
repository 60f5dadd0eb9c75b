/* outbound.c — an outbound session (SPEC §4): the legacy server, the peer,
 * one timer, outbound_nego then the smtp_machine.
 *
 * Every event (a read, a write completion, a connect, the timer) feeds
 * outbound_nego (until it is done) or the smtp_machine, or the client-mode
 * TLS glue on the peer leg, and then calls outbound_step(), the one place
 * that carries out their actions and decides which side to read.
 * Backpressure as in session.c.
 *
 * Never makes an SMTP or TLS policy decision: replies, the retry and the
 * refusals come from outbound_nego and the machine. Never hands the peer's
 * plaintext after its 220 to STARTTLS to anyone. Never frees a session
 * outside the last close callback. The handles' lifecycle (the count, the
 * linger on close) is conn_life.c's.
 */
#include "proxy/outbound.h"

#include <errno.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>

#include "proxy/address.h"
#include "proxy/conn_limits.h"
#include "proxy/endpoint.h"
#include "policy/outbound_policy.h"
#include "proxy/log.h"
#include "proxy/metrics.h"

#ifndef SO_ORIGINAL_DST
#define SO_ORIGINAL_DST 80 /* linux/netfilter_ipv4.h */
#endif
#ifndef IP6T_SO_ORIGINAL_DST
#define IP6T_SO_ORIGINAL_DST 80 /* linux/netfilter_ipv6/ip6_tables.h */
#endif

#define OUTBOUND_MAX_IN_FLIGHT (256 * 1024)

_Static_assert(offsetof(struct outbound, life) == 0, "conn_life.h: life comes first");

static atomic_ulong outbound_counter;

static void outbound_step(struct outbound *s);
static void pump_tls(struct outbound *s);
static void connect_peer(struct outbound *s);

static uv_stream_t *legacy_stream(struct outbound *s)
{
	return (uv_stream_t *)&s->life.accepted;
}

static uv_stream_t *peer_stream(struct outbound *s)
{
	return (uv_stream_t *)&s->peer[s->cur];
}

/* ---- closing ----------------------------------------------------------- */

/* The release of conn_life.h: the last close callback. */
static void free_outbound(struct conn_life *l)
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
static struct metrics_block *mblock(const struct outbound *s)
{
	return metrics_block(s->life.worker->index);
}

static void count_handshake_failure(struct outbound *s, enum metrics_hs_failure why)
{
	metrics_inc(&mblock(s)->hs_failed[ML_OUTBOUND][why]);
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
	struct metrics_block *b = mblock(s);
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

static void outbound_close(struct outbound *s, enum smtp_close_reason reason)
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
static void peer_lost(struct outbound *s)
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
		peer_lost(s);
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
		peer_lost(s);
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
static void send_peer(struct outbound *s, char *data, size_t len)
{
	if (!len || !s->peer_connected || s->peer_gone) {
		free(data);
		return;
	}
	int rc = endpoint_send(&s->peer_ep, data, len, s, write_done);
	if (rc == ENDPOINT_TLS_FAILED) {
		log_msg(TF_LOG_WARN, "event=tls_error id=%s peer=%s error=\"%s\"", s->id,
			s->peer_addr, s->peer_ep.tls->error);
		peer_lost(s);
		return;
	}
	write_failed(s, peer_stream(s), rc);
}

/* ---- timer ------------------------------------------------------------- */

static void tls_failed(struct outbound *s, bool timed_out);
static void peer_connect_failed(struct outbound *s, const char *error);

static void timer_cb(uv_timer_t *t)
{
	struct outbound *s = t->data;
	if (s->closing)
		return;
	if (!s->peer_connected) {
		peer_connect_failed(s, "connection timed out");
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
		peer_lost(s);
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
			metrics_inc(&mblock(s)->out_verify[MVR_FAILED]);
		tls_failed(s, false);
		return;
	}
	s->handshaking = false;
	s->verified = outbound_policy_verifies(s->app->cfg.outbound.tls);
	struct metrics_block *b = mblock(s);
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

static bool peer_backlogged(struct outbound *s)
{
	return s->peer_connected && !s->peer_gone && s->peer_ep.inflight > OUTBOUND_MAX_IN_FLIGHT;
}

static bool legacy_wanted(struct outbound *s)
{
	if (s->closing)
		return false;
	if (!s->spliced)
		return outbound_nego_wants_legacy_input(&s->nego);
	return smtp_machine_wants_client_input(&s->machine) && !peer_backlogged(s);
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
	peer_lost(s);
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
		peer_lost(s);
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

static void update_reads(struct outbound *s)
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
	connect_peer(s);
}

static void start_milters(struct outbound *s);

static void splice_machine(struct outbound *s)
{
	s->spliced = true;
	smtp_machine_skip_greeting(&s->machine);
	if (s->machine.cfg.milters)
		start_milters(s);
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
	send_peer(s, data, len);
	data = buf_take(&a->to_legacy, &len);
	if (len)
		send_legacy(s, data, len);
	else
		free(data);
	if (s->closing)
		return false;
	log_nego(s, a);
	for (unsigned r = 0; r < REFUSAL_COUNT; r++) {
		metrics_add(&mblock(s)->refused[ML_OUTBOUND][r], a->refused[r]);
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

static void outbound_step(struct outbound *s)
{
	if (s->closing)
		return;
	if (!s->spliced && !step_nego(s)) {
		if (!s->closing)
			update_reads(s);
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
	send_peer(s, data, len);
	data = buf_take(&a->to_client, &len);
	if (len)
		send_legacy(s, data, len);
	else
		free(data);
	if (s->closing)
		return;
	if (a->note)
		log_msg(TF_LOG_INFO, "event=note id=%s note=\"%s\"", s->id, a->note);
	struct metrics_block *b = mblock(s);
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
	update_reads(s);
	if (s->peer_ep.tls && s->peer_ep.tls->established && peer_wanted(s) &&
	    tls_io_pending(s->peer_ep.tls))
		pump_tls(s);
	if (s->milt && !s->closing)
		milter_session_pump(s->milt);
}

/* ---- milters (issue 14) ------------------------------------------------ */

static void milt_send_peer(void *owner, char *data, size_t len)
{
	send_peer(owner, data, len);
}

static bool milt_backlogged(void *owner)
{
	struct outbound *s = owner;
	return s->closing || !s->peer_connected || s->peer_gone || peer_backlogged(s);
}

static void milt_refresh(void *owner, struct milter_session_info *info)
{
	struct outbound *s = owner;
	(void)s;
	/* The legacy server's leg is plaintext: no TLS macros, no AUTH. */
	info->tls_version = NULL;
	info->cipher = NULL;
}

static void milt_failed(void *owner, const char *why)
{
	struct outbound *s = owner;
	log_msg(TF_LOG_ERROR, "event=milter_error id=%s error=\"%s\"", s->id, why);
	peer_lost(s);
}

static void milt_step(void *owner)
{
	outbound_step(owner);
}

static const struct milter_session_ops milt_ops = {
    .send_backend = milt_send_peer,
    .backend_backlogged = milt_backlogged,
    .refresh = milt_refresh,
    .failed = milt_failed,
    .step = milt_step,
};

/* The milters' view of the legacy server, then connect and its HELO (the
 * greeting and first EHLO went through outbound_nego). */
static void start_milters(struct outbound *s)
{
	const struct tf_config *cfg = &s->app->cfg;
	s->milt = milter_session_new(s->life.accepted.loop, cfg->outbound.milters,
				     cfg->outbound.n_milters, cfg->limits.message_size_limit,
				     &s->machine, s, &milt_ops, s->id);
	if (!s->milt) {
		smtp_machine_backend_unavailable(&s->machine);
		return;
	}
	milter_session_start(s->milt, cfg->server_name, (struct sockaddr *)&s->legacy_ss, NULL,
			     s->nego.name);
}

/* ---- start ------------------------------------------------------------- */

/* The peer address being tried did not take the connection (refused,
 * unreachable, timed out): the next address of the next hop is tried, as
 * Postfix does; after the last one (and on the plaintext retry, which goes
 * to the address that answered) the legacy server gets 421 4.4.1. */
static void peer_connect_failed(struct outbound *s, const char *error)
{
	bool next = !s->retrying && s->dest_i + 1 < s->n_dests;
	log_msg(TF_LOG_WARN, "event=peer_unavailable id=%s peer=%s error=\"%s\"%s", s->id,
		s->peer_addr, error, next ? " next=address" : "");
	if (next) {
		conn_life_close_handle((uv_handle_t *)&s->peer[s->cur]);
		s->cur++;
		s->dest_i++;
		conn_life_arm(&s->life, s->app->cfg.outbound.connect_timeout);
		connect_peer(s);
		return;
	}
	s->peer_gone = true;
	outbound_nego_peer_unavailable(&s->nego);
	outbound_step(s);
}

static void connect_cb(uv_connect_t *req, int status)
{
	struct outbound *s = req->data;
	if (status == UV_ECANCELED || s->closing || req != &s->connect_req[s->cur])
		return;
	if (status < 0) {
		peer_connect_failed(s, uv_strerror(status));
		return;
	}
	s->peer_connected = true;
	s->peer_gone = false;
	uv_tcp_nodelay(&s->peer[s->cur], 1);
	if (s->retrying)
		outbound_nego_reconnected(&s->nego);
	conn_life_arm(&s->life, s->app->cfg.limits.idle_timeout);
	outbound_step(s);
}

static void connect_peer(struct outbound *s)
{
	unsigned i = s->cur;
	struct sockaddr *dest = (struct sockaddr *)&s->dests[s->dest_i];
	uv_tcp_init(&s->life.worker->loop, &s->peer[i]);
	s->peer[i].data = s;
	s->peer_ep.stream = (uv_stream_t *)&s->peer[i];
	s->peer_open[i] = true;
	conn_life_ref(&s->life);
	s->connect_req[i].data = s;
	address_format(dest, s->peer_addr, sizeof(s->peer_addr));
	int rc = uv_tcp_connect(&s->connect_req[i], &s->peer[i], dest, connect_cb);
	if (rc != 0)
		peer_connect_failed(s, uv_strerror(rc));
}

static void gai_cb(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
	struct outbound *s = req->data;
	s->resolving = false;
	s->n_dests = 0;
	for (struct addrinfo *ai = status == 0 ? res : NULL;
	     ai && s->n_dests < OUTBOUND_MAX_ADDRESSES; ai = ai->ai_next)
		if (ai->ai_addrlen <= sizeof(s->dests[0]))
			memcpy(&s->dests[s->n_dests++], ai->ai_addr, ai->ai_addrlen);
	bool ok = s->n_dests > 0;
	uv_freeaddrinfo(res);
	if (!s->closing && !ok) {
		log_msg(TF_LOG_WARN, "event=peer_unavailable id=%s next_hop=%s error=\"%s\"", s->id,
			s->app->cfg.outbound.next_hop, status ? uv_strerror(status) : "no address");
		outbound_nego_peer_unavailable(&s->nego);
		outbound_step(s);
	} else if (!s->closing) {
		connect_peer(s);
	}
	/* Counted like a handle so that the session outlives the request. */
	conn_life_unref(&s->life);
}

static bool same_address(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
	if (a->ss_family != b->ss_family)
		return false;
	if (a->ss_family == AF_INET) {
		const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
		return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
	}
	const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
	return x->sin6_port == y->sin6_port &&
	       memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0;
}

/* SPEC §4.1 original-destination: where the legacy server meant to go
 * before the REDIRECT rule. */
static bool original_destination(struct outbound *s)
{
	uv_os_fd_t fd;
	if (uv_fileno((uv_handle_t *)&s->life.accepted, &fd) != 0)
		return false;
	struct sockaddr_storage *dest = &s->dests[0];
	socklen_t len = sizeof(*dest);
	struct sockaddr_storage local;
	socklen_t llen = sizeof(local);
	if (getsockname(fd, (struct sockaddr *)&local, &llen) != 0)
		return false;
	int rc = local.ss_family == AF_INET6
		     ? getsockopt(fd, SOL_IPV6, IP6T_SO_ORIGINAL_DST, dest, &len)
		     : getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, dest, &len);
	if (rc != 0) {
		log_msg(TF_LOG_WARN,
			"event=peer_unavailable id=%s error=\"no original destination: %s\"", s->id,
			uv_strerror(uv_translate_sys_error(errno)));
		return false;
	}
	/* Without a REDIRECT, conntrack reports our own listener: connecting
	 * there would loop. */
	if (same_address(dest, &local)) {
		log_msg(TF_LOG_WARN,
			"event=peer_unavailable id=%s error=\"no original destination: the "
			"connection was not redirected\"",
			s->id);
		return false;
	}
	s->n_dests = 1;
	return true;
}

/* Finds the next hop and connects; the greeting is relayed when it comes. */
static void start_peer(struct outbound *s)
{
	const char *hop = s->app->cfg.outbound.next_hop;
	conn_life_arm(&s->life, s->app->cfg.outbound.connect_timeout);
	if (strcmp(hop, "original-destination") == 0) {
		if (!original_destination(s)) {
			outbound_nego_peer_unavailable(&s->nego);
			outbound_step(s);
			return;
		}
		connect_peer(s);
		return;
	}
	unsigned port;
	if (config_split_hostport(hop, s->host, sizeof(s->host), &port) < 0) {
		outbound_nego_peer_unavailable(&s->nego);
		outbound_step(s);
		return;
	}
	struct sockaddr_in *in = (struct sockaddr_in *)&s->dests[0];
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&s->dests[0];
	s->n_dests = 1;
	if (inet_pton(AF_INET, s->host, &in->sin_addr) == 1) {
		in->sin_family = AF_INET;
		in->sin_port = htons((uint16_t)port);
		connect_peer(s);
		return;
	}
	if (inet_pton(AF_INET6, s->host, &in6->sin6_addr) == 1) {
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons((uint16_t)port);
		connect_peer(s);
		return;
	}
	char service[8];
	snprintf(service, sizeof(service), "%u", port);
	struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
	s->gai.data = s;
	snprintf(s->peer_addr, sizeof(s->peer_addr), "%s", hop);
	int rc = uv_getaddrinfo(&s->life.worker->loop, &s->gai, gai_cb, s->host, service, &hints);
	if (rc != 0) {
		log_msg(TF_LOG_WARN, "event=peer_unavailable id=%s next_hop=%s error=\"%s\"", s->id,
			hop, uv_strerror(rc));
		outbound_nego_peer_unavailable(&s->nego);
		outbound_step(s);
		return;
	}
	s->resolving = true;
	conn_life_ref(&s->life);
}

static void machine_config(const struct app *app, struct smtp_machine_config *mc)
{
	const struct tf_config *cfg = &app->cfg;
	memset(mc, 0, sizeof(*mc));
	/* Outbound (§4.2.3): tlsfront owns TLS towards the peer, so the legacy
	 * server is offered no STARTTLS; AUTH passes to the peer. */
	mc->tcp_auth = true;
	mc->tls_auth = true;
	mc->line_length = cfg->limits.line_length;
	mc->max_errors = cfg->limits.max_errors;
	mc->reject_bare = cfg->bare_newlines == TF_BARE_REJECT;
	mc->server_name = cfg->server_name;
	mc->milters = cfg->outbound.n_milters > 0;
}

void outbound_accept(struct listener *l, int fd)
{
	struct worker *w = l->worker;
	struct outbound *s = calloc(1, sizeof(*s));
	if (!s) {
		worker_drop_connection(l, fd);
		return;
	}
	conn_life_init(&s->life, w, timer_cb, free_outbound);
	snprintf(s->id, sizeof(s->id), "o%lx", atomic_fetch_add(&outbound_counter, 1) + 1);
	s->legacy_ep.stream = legacy_stream(s);
	s->app = w->app;
	app_ref(s->app);
	s->next = w->outbounds;
	if (w->outbounds)
		w->outbounds->prev = s;
	w->outbounds = s;
	snprintf(s->legacy_addr, sizeof(s->legacy_addr), "unknown");
	snprintf(s->peer_addr, sizeof(s->peer_addr), "none");
	snprintf(s->sni, sizeof(s->sni), "none");

	struct nego_config nc = {.policy = s->app->cfg.outbound.tls,
				 .line_length = s->app->cfg.limits.line_length,
				 .server_name = s->app->cfg.server_name};
	outbound_nego_init(&s->nego, &nc);
	struct smtp_machine_config mc;
	machine_config(s->app, &mc);
	smtp_machine_init(&s->machine, &mc);

	if (uv_tcp_open(&s->life.accepted, fd) != 0) {
		close(fd);
		s->closing = true;
		conn_life_close_now(&s->life);
		return;
	}
	uv_tcp_nodelay(&s->life.accepted, 1);
	if (conn_life_addresses(&s->life, s->id, &s->legacy_ss, NULL) != 0) {
		s->closing = true;
		conn_life_close_now(&s->life);
		return;
	}
	address_format((struct sockaddr *)&s->legacy_ss, s->legacy_addr, sizeof(s->legacy_addr));
	log_msg(TF_LOG_DEBUG, "event=connect id=%s listener=outbound client=%s", s->id,
		s->legacy_addr);
	/* A session from here on: it will end in outbound_close(). */
	metrics_inc(&mblock(s)->started[ML_OUTBOUND]);
	s->admitted = conn_limits_admit((struct sockaddr *)&s->legacy_ss);
	if (!s->admitted) {
		metrics_inc(&mblock(s)->refused[ML_OUTBOUND][REFUSAL_LIMIT]);
		log_msg(TF_LOG_INFO, "event=limit id=%s client=%s", s->id, s->legacy_addr);
		outbound_nego_limit(&s->nego);
		outbound_step(s);
		return;
	}
	start_peer(s);
	if (!s->closing)
		update_reads(s);
}
