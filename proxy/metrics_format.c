/* metrics_format.c — the Prometheus text format of metrics_format.h.
 *
 * Every family is written in one place, HELP and TYPE first, so that no
 * family can appear twice. Must never read the live counters (it gets a
 * snapshot), never do I/O, never allocate but through the output buffer.
 */
#include "proxy/metrics_format.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

struct writer {
	struct buf *out;
	bool ok;
	const char *family; /* the family being written */
	unsigned n_labels;  /* labels written in the current sample */
};

static void put(struct writer *w, const char *s)
{
	if (w->ok && !buf_append_str(w->out, s))
		w->ok = false;
}

bool metrics_escape_label(struct buf *out, const char *value)
{
	for (const char *p = value; *p; p++) {
		const char *rep = NULL;
		if (*p == '\\')
			rep = "\\\\";
		else if (*p == '"')
			rep = "\\\"";
		else if (*p == '\n')
			rep = "\\n";
		if (!(rep ? buf_append_str(out, rep) : buf_append(out, p, 1)))
			return false;
	}
	return true;
}

static void family(struct writer *w, const char *name, const char *type, const char *help)
{
	w->family = name;
	put(w, "# HELP ");
	put(w, name);
	put(w, " ");
	put(w, help);
	put(w, "\n# TYPE ");
	put(w, name);
	put(w, " ");
	put(w, type);
	put(w, "\n");
}

/* A sample of the current family; suffix is "" or "_bucket", "_sum"... */
static void sample(struct writer *w, const char *suffix)
{
	put(w, w->family);
	put(w, suffix);
	w->n_labels = 0;
}

static void label(struct writer *w, const char *key, const char *value)
{
	put(w, w->n_labels++ ? "," : "{");
	put(w, key);
	put(w, "=\"");
	if (w->ok && !metrics_escape_label(w->out, value))
		w->ok = false;
	put(w, "\"");
}

static void value_u(struct writer *w, uint64_t v)
{
	char num[32];
	snprintf(num, sizeof(num), " %" PRIu64 "\n", v);
	put(w, w->n_labels ? "}" : "");
	put(w, num);
}

static void value_d(struct writer *w, double v)
{
	char num[48];
	snprintf(num, sizeof(num), " %.9g\n", v);
	put(w, w->n_labels ? "}" : "");
	put(w, num);
}

/* One sample per listener of a family labelled by listener only. */
static void per_listener(struct writer *w, const char *name, const char *type, const char *help,
			 const uint64_t *v, unsigned first, unsigned last)
{
	family(w, name, type, help);
	for (unsigned l = first; l <= last; l++) {
		sample(w, "");
		label(w, "listener", metrics_listener_name((enum metrics_listener)l));
		value_u(w, v[l]);
	}
}

static void sessions(struct writer *w, const struct metrics_snapshot *s)
{
	per_listener(w, "tlsfront_sessions_started_total", "counter",
		     "Sessions accepted (every one ends with a summary log line).", s->started,
		     ML_TCP, ML_OUTBOUND);
	family(w, "tlsfront_sessions_ended_total", "counter",
	       "Sessions ended, by the reason of their summary log line.");
	for (unsigned l = 0; l < ML_COUNT; l++)
		for (unsigned r = CLOSE_QUIT; r < MR_COUNT; r++) {
			sample(w, "");
			label(w, "listener", metrics_listener_name((enum metrics_listener)l));
			label(w, "reason", smtp_close_reason_name((enum smtp_close_reason)r));
			value_u(w, s->ended[l][r]);
		}
	family(w, "tlsfront_sessions_active", "gauge", "Sessions in progress.");
	for (unsigned l = 0; l < ML_COUNT; l++) {
		uint64_t ended = 0;
		for (unsigned r = 0; r < MR_COUNT; r++)
			ended += s->ended[l][r];
		sample(w, "");
		label(w, "listener", metrics_listener_name((enum metrics_listener)l));
		/* Read one counter after another while workers run: an end
		 * may be seen before its start. */
		value_u(w, s->started[l] > ended ? s->started[l] - ended : 0);
	}
}

static void tls(struct writer *w, const struct metrics_snapshot *s)
{
	family(w, "tlsfront_tls_sessions_total", "counter",
	       "Completed TLS handshakes (inbound: with the client; outbound: with the peer), by "
	       "version and cipher; a series appears at its first handshake.");
	for (unsigned l = 0; l < ML_COUNT; l++)
		for (unsigned v = 0; v < MV_COUNT; v++)
			for (unsigned c = 0; c < MC_COUNT; c++) {
				if (!s->tls[l][v][c])
					continue;
				sample(w, "");
				label(w, "listener",
				      metrics_listener_name((enum metrics_listener)l));
				label(w, "version",
				      metrics_tls_version_name((enum metrics_tls_version)v));
				label(w, "cipher", metrics_cipher_name((enum metrics_cipher)c));
				value_u(w, s->tls[l][v][c]);
			}
	family(w, "tlsfront_tls_handshake_failures_total", "counter",
	       "TLS handshakes that did not complete, by cause.");
	for (unsigned l = 0; l < ML_COUNT; l++)
		for (unsigned f = 0; f < MH_COUNT; f++) {
			sample(w, "");
			label(w, "listener", metrics_listener_name((enum metrics_listener)l));
			label(w, "cause", metrics_hs_failure_name((enum metrics_hs_failure)f));
			value_u(w, s->hs_failed[l][f]);
		}
	per_listener(w, "tlsfront_tls_resumed_total", "counter",
		     "TLS handshakes that resumed an earlier session (a ticket).", s->resumed,
		     ML_TCP, ML_TLS);
	per_listener(w, "tlsfront_starttls_total", "counter",
		     "STARTTLS commands accepted (220 sent, handshake started).", s->starttls,
		     ML_TCP, ML_TCP);
}

static void refusals(struct writer *w, const struct metrics_snapshot *s)
{
	family(w, "tlsfront_refusals_total", "counter",
	       "Replies and closes tlsfront made itself to refuse a client, by rule.");
	for (unsigned l = 0; l < ML_COUNT; l++)
		for (unsigned r = 0; r < REFUSAL_COUNT; r++) {
			sample(w, "");
			label(w, "listener", metrics_listener_name((enum metrics_listener)l));
			label(w, "rule", smtp_refusal_name((enum smtp_refusal)r));
			value_u(w, s->refused[l][r]);
		}
}

static void traffic(struct writer *w, const struct metrics_snapshot *s)
{
	per_listener(w, "tlsfront_messages_total", "counter",
		     "Messages accepted by the backend (outbound: by the peer).", s->messages,
		     ML_TCP, ML_OUTBOUND);
	per_listener(w, "tlsfront_received_bytes_total", "counter",
		     "Application bytes received from clients (outbound: from the legacy server), "
		     "added when a session ends.",
		     s->bytes_in, ML_TCP, ML_OUTBOUND);
	per_listener(w, "tlsfront_sent_bytes_total", "counter",
		     "Application bytes sent to clients (outbound: to the legacy server), added "
		     "when a session ends.",
		     s->bytes_out, ML_TCP, ML_OUTBOUND);
}

static void backend(struct writer *w, const struct metrics_snapshot *s)
{
	per_listener(w, "tlsfront_backend_connect_failures_total", "counter",
		     "Backend connections that failed or timed out (the client got 421 4.3.2).",
		     s->backend_failed, ML_TCP, ML_TLS);
	family(w, "tlsfront_backend_connect_seconds", "histogram",
	       "Time from starting a backend connection to its completion.");
	uint64_t cumulative = 0;
	char le[32];
	for (unsigned i = 0; i <= METRICS_BUCKETS; i++) {
		cumulative += s->backend_bucket[i];
		if (i < METRICS_BUCKETS)
			snprintf(le, sizeof(le), "%g", metrics_bucket_bounds[i]);
		else
			snprintf(le, sizeof(le), "+Inf");
		sample(w, "_bucket");
		label(w, "le", le);
		value_u(w, cumulative);
	}
	sample(w, "_sum");
	value_d(w, (double)s->backend_ns / 1e9);
	sample(w, "_count");
	value_u(w, cumulative);
}

static void outbound(struct writer *w, const struct metrics_snapshot *s)
{
	family(w, "tlsfront_outbound_sessions_total", "counter",
	       "Outbound sessions by what became of TLS to the peer (sessions that ended "
	       "before a decision are not counted).");
	for (unsigned o = 0; o < MO_COUNT; o++) {
		sample(w, "");
		label(w, "tls", metrics_out_tls_name((enum metrics_out_tls)o));
		value_u(w, s->out_sessions[o]);
	}
	family(w, "tlsfront_outbound_messages_total", "counter",
	       "Outbound messages accepted by the peer, by the session's TLS outcome.");
	for (unsigned o = 0; o < MO_PLAINTEXT + 1; o++) {
		sample(w, "");
		label(w, "tls", metrics_out_tls_name((enum metrics_out_tls)o));
		value_u(w, s->out_messages[o]);
	}
	family(w, "tlsfront_outbound_peer_verifications_total", "counter",
	       "Outbound TLS handshakes by peer certificate verification result.");
	for (unsigned v = 0; v < MVR_COUNT; v++) {
		sample(w, "");
		label(w, "result", metrics_verify_name((enum metrics_verify)v));
		value_u(w, s->out_verify[v]);
	}
	family(w, "tlsfront_outbound_plaintext_fallbacks_total", "counter",
	       "Outbound sessions retried in plaintext after a failed STARTTLS handshake "
	       "(tls = \"negotiated\").");
	sample(w, "");
	value_u(w, s->out_fallbacks);
}

static void process(struct writer *w, const struct metrics_snapshot *s)
{
	family(w, "tlsfront_reloads_total", "counter", "Configuration reloads (SIGHUP) by result.");
	sample(w, "");
	label(w, "result", "success");
	value_u(w, s->reloads_ok);
	sample(w, "");
	label(w, "result", "failure");
	value_u(w, s->reloads_failed);
	family(w, "tlsfront_certificate_expiry_seconds", "gauge",
	       "Expiry time (notAfter, Unix seconds) of each configured certificate.");
	for (unsigned i = 0; i < s->n_certs; i++) {
		if (s->certs[i].not_after < 0)
			continue;
		sample(w, "");
		label(w, "certificate", s->certs[i].label);
		value_u(w, (uint64_t)s->certs[i].not_after);
	}
	family(w, "tlsfront_build_info", "gauge",
	       "Always 1; the versions of tlsfront and of the GnuTLS and libuv it runs with.");
	sample(w, "");
	label(w, "version", s->version ? s->version : "unknown");
	label(w, "gnutls", s->gnutls_version ? s->gnutls_version : "unknown");
	label(w, "libuv", s->libuv_version ? s->libuv_version : "unknown");
	value_u(w, 1);
}

bool metrics_format(const struct metrics_snapshot *s, struct buf *out)
{
	struct writer w = {.out = out, .ok = true};
	sessions(&w, s);
	tls(&w, s);
	refusals(&w, s);
	traffic(&w, s);
	backend(&w, s);
	outbound(&w, s);
	process(&w, s);
	return w.ok;
}
