/* outbound_nego.c — the negotiation of outbound_nego.h (SPEC §4.2, §4.3).
 *
 * One state per step; peer replies go through the reply parser, legacy
 * lines are read only while waiting for its first EHLO/HELO and held
 * afterwards for the smtp_machine. Never does I/O, never logs, and never
 * lets a plaintext peer byte that followed the 220 to STARTTLS count.
 */
#include "proxy/smtp/outbound_nego.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "policy/outbound_policy.h"
#include "policy/smtp_rules.h"
#include "proxy/smtp/ehlo_rewrite.h"

static const char R_LINE_BAD[] = "500 5.5.2 Error: bad syntax (NUL or bare CR in command line)";
static const char R_NO_NAME[] = "501 5.5.4 Error: EHLO/HELO needs a domain name";
static const char R_NOT_YET[] = "503 5.5.1 Error: send EHLO or HELO first";
static const char R_OK[] = "250 2.0.0 Ok";
static const char R_XCLIENT[] = "502 5.5.1 Error: command not permitted";
static const char R_HTTP[] = "221 2.7.0 Error: I can break rules, too. Goodbye.";

void outbound_nego_init(struct outbound_nego *n, const struct nego_config *cfg)
{
	memset(n, 0, sizeof(*n));
	n->cfg = *cfg;
	n->state = NEGO_GREETING;
}

void outbound_nego_free(struct outbound_nego *n)
{
	buf_free(&n->act.to_legacy);
	buf_free(&n->act.to_peer);
	buf_free(&n->held);
	buf_free(&n->plain_reply);
	reply_parser_free(&n->reply);
}

void outbound_nego_clear_actions(struct outbound_nego *n)
{
	n->act.start_tls = false;
	n->act.reconnect = false;
	n->act.discarded = 0;
	n->act.note = NULL;
	n->act.event = NULL;
	memset(n->act.refused, 0, sizeof(n->act.refused));
	/* done, close and reason stay. */
}

bool outbound_nego_wants_legacy_input(const struct outbound_nego *n)
{
	return n->state != NEGO_CLOSED && n->held.len < SMTP_HOLD_MAX;
}

char *outbound_nego_take_held(struct outbound_nego *n, size_t *len)
{
	return buf_take(&n->held, len);
}

/* ---- output ------------------------------------------------------------ */

static void close_nego(struct outbound_nego *n, enum smtp_close_reason reason)
{
	if (n->state == NEGO_CLOSED)
		return;
	n->state = NEGO_CLOSED;
	n->act.close = true;
	n->act.reason = reason;
	n->act.done = false;
	buf_free(&n->held);
}

static void out_of_memory(struct outbound_nego *n)
{
	buf_free(&n->act.to_legacy);
	buf_free(&n->act.to_peer);
	static const char msg[] = "421 4.3.0 Error: out of memory, try again later\r\n";
	(void)buf_append(&n->act.to_legacy, msg, sizeof(msg) - 1);
	n->act.note = "out of memory";
	close_nego(n, CLOSE_ERROR);
}

static void to_legacy(struct outbound_nego *n, const char *p, size_t len)
{
	if (!buf_append(&n->act.to_legacy, p, len))
		out_of_memory(n);
}

static void reply_line(struct outbound_nego *n, const char *line)
{
	to_legacy(n, line, strlen(line));
	to_legacy(n, "\r\n", 2);
}

static void to_peer_cmd(struct outbound_nego *n, const char *verb, const char *arg)
{
	if (!buf_append_str(&n->act.to_peer, verb) ||
	    (arg &&
	     (!buf_append(&n->act.to_peer, " ", 1) || !buf_append_str(&n->act.to_peer, arg))) ||
	    !buf_append(&n->act.to_peer, "\r\n", 2))
		out_of_memory(n);
}

/* "CODE X.Y.Z name text" (RFC 2034 order), then close. */
static void say_and_close(struct outbound_nego *n, const char *code_status, const char *text,
			  enum smtp_close_reason reason)
{
	if (n->state == NEGO_CLOSED)
		return;
	char line[512];
	int len =
	    snprintf(line, sizeof(line), "%s %s %s\r\n", code_status, n->cfg.server_name, text);
	if (len > 0)
		to_legacy(n, line, (size_t)len < sizeof(line) ? (size_t)len : sizeof(line) - 1);
	close_nego(n, reason);
}

/* §4.2.4: the policy refuses the peer; the 421 answers the EHLO/HELO. */
static void refuse(struct outbound_nego *n, const char *note, enum smtp_close_reason reason)
{
	n->act.note = note;
	n->act.event = "outbound_policy";
	say_and_close(n, "421 4.7.0", "Error: next hop does not meet the outbound TLS policy",
		      reason);
}

static bool tls_wanted(const struct outbound_nego *n)
{
	return outbound_policy_wants_tls(n->cfg.policy);
}

/* No STARTTLS (not offered, EHLO or STARTTLS refused): true when the
 * policy refuses the peer; else the session goes on in plaintext. */
static bool refuses_plaintext(const struct outbound_nego *n)
{
	return outbound_policy_no_starttls(n->cfg.policy) == OUT_REFUSE;
}

static bool logs_plaintext(const struct outbound_nego *n)
{
	return outbound_policy_no_starttls(n->cfg.policy) == OUT_PLAINTEXT_LOGGED;
}

/* ---- the legacy server's first command --------------------------------- */

/* The legacy server's EHLO/HELO line: remember its name, ask the peer. */
static void legacy_hello(struct outbound_nego *n, bool helo, const char *line, size_t len)
{
	size_t i = 4;
	while (i < len && (line[i] == ' ' || line[i] == '\t'))
		i++;
	size_t end = len;
	while (end > i && (line[end - 1] == ' ' || line[end - 1] == '\t'))
		end--;
	if (end == i || end - i >= sizeof(n->name)) {
		reply_line(n, R_NO_NAME);
		return;
	}
	memcpy(n->name, line + i, end - i);
	n->name[end - i] = '\0';
	n->helo = helo;
	/* §4.2.2, §7.9: EHLO with the legacy server's own name, even for a
	 * HELO, so that STARTTLS can be seen. */
	to_peer_cmd(n, "EHLO", n->name);
	n->state = NEGO_EHLO;
}

static void legacy_line(struct outbound_nego *n, const char *line, size_t len)
{
	if (memchr(line, '\0', len) || memchr(line, '\r', len)) {
		n->act.refused[REFUSAL_SYNTAX]++;
		reply_line(n, R_LINE_BAD);
		return;
	}
	bool has_args;
	enum smtp_verb verb = smtp_verb_parse(line, len, &has_args);
	if (verb != VERB_XCLIENT && verb != VERB_XFORWARD && smtp_rules_is_http(line, len)) {
		n->act.refused[REFUSAL_HTTP]++;
		reply_line(n, R_HTTP);
		n->act.note = "HTTP request line from legacy server";
		close_nego(n, CLOSE_POLICY);
		return;
	}
	switch (verb) {
	case VERB_EHLO:
	case VERB_HELO:
		legacy_hello(n, verb == VERB_HELO, line, len);
		break;
	case VERB_QUIT:
		say_and_close(n, "221 2.0.0", "Bye", CLOSE_QUIT);
		break;
	case VERB_NOOP:
	case VERB_RSET:
		reply_line(n, R_OK);
		break;
	case VERB_XCLIENT:
	case VERB_XFORWARD:
		n->act.refused[REFUSAL_XCLIENT]++;
		reply_line(n, R_XCLIENT);
		break;
	default:
		reply_line(n, R_NOT_YET);
		break;
	}
}

/* Reads legacy lines while its EHLO/HELO is awaited; the rest stays held. */
static void process_legacy(struct outbound_nego *n)
{
	while (n->state == NEGO_HELLO) {
		char *lf = n->held.len ? memchr(n->held.data, '\n', n->held.len) : NULL;
		if (!lf) {
			if (n->held.len >= n->cfg.line_length) {
				n->act.refused[REFUSAL_LINE_LENGTH]++;
				say_and_close(n, "500 5.5.2", "Error: line too long", CLOSE_POLICY);
			}
			return;
		}
		size_t len = (size_t)(lf - n->held.data);
		size_t consumed = len + 1;
		if (len && n->held.data[len - 1] == '\r')
			len--;
		if (len + 2 > n->cfg.line_length) {
			n->act.refused[REFUSAL_LINE_LENGTH]++;
			reply_line(n, "500 5.5.2 Error: line too long");
		} else {
			legacy_line(n, n->held.data, len);
		}
		if (n->state == NEGO_CLOSED)
			return;
		buf_consume(&n->held, consumed);
	}
}

void outbound_nego_feed_legacy(struct outbound_nego *n, const char *p, size_t len)
{
	if (n->state == NEGO_CLOSED)
		return;
	if (!buf_append(&n->held, p, len)) {
		out_of_memory(n);
		return;
	}
	process_legacy(n);
}

/* ---- peer replies ------------------------------------------------------ */

/* §4.2.3: the legacy server gets the last EHLO reply without STARTTLS, or
 * for a HELO "250 " and the text of that reply's first line; then the
 * session is spliced. */
static void finish(struct outbound_nego *n, int code, const char *text, size_t len)
{
	if (code == 250 && n->helo) {
		const char *eol = memchr(text, '\r', len);
		size_t end = eol ? (size_t)(eol - text) : len;
		size_t off = end >= 4 ? 4 : end;
		to_legacy(n, "250 ", 4);
		to_legacy(n, text + off, end - off);
		to_legacy(n, "\r\n", 2);
	} else {
		/* Keyword mask of §3.4: STARTTLS (tlsfront owns TLS), XCLIENT,
		 * XFORWARD, CHUNKING and BINARYMIME go; AUTH stays. */
		struct smtp_rules_session rules = {.tcp_auth = true, .tls_auth = true};
		if (!ehlo_rewrite(&rules, code, text, len, &n->act.to_legacy)) {
			out_of_memory(n);
			return;
		}
	}
	if (n->state == NEGO_CLOSED)
		return;
	n->state = NEGO_DONE;
	n->act.done = true;
}

static void on_ehlo(struct outbound_nego *n, int code, const char *text, size_t len)
{
	if (code != 250) {
		if (refuses_plaintext(n)) {
			refuse(n, "peer refused EHLO: no STARTTLS", CLOSE_POLICY);
			return;
		}
		if (n->helo && code >= 500) {
			/* An old peer: the legacy server's own HELO. */
			to_peer_cmd(n, "HELO", n->name);
			n->state = NEGO_HELO;
			return;
		}
		finish(n, code, text, len);
		return;
	}
	if (tls_wanted(n) && ehlo_reply_has_keyword(text, len, "STARTTLS")) {
		buf_free(&n->plain_reply);
		if (!buf_append(&n->plain_reply, text, len)) {
			out_of_memory(n);
			return;
		}
		to_peer_cmd(n, "STARTTLS", NULL);
		n->state = NEGO_STARTTLS;
		return;
	}
	if (refuses_plaintext(n)) {
		refuse(n, "peer offers no STARTTLS", CLOSE_POLICY);
		return;
	}
	if (logs_plaintext(n)) {
		n->act.event = "outbound_no_starttls";
		n->act.note = "peer offers no STARTTLS: plaintext";
	}
	finish(n, code, text, len);
}

static void on_starttls(struct outbound_nego *n, int code)
{
	if (code == 220) {
		n->state = NEGO_HANDSHAKE;
		n->act.start_tls = true;
		return;
	}
	if (refuses_plaintext(n)) {
		refuse(n, "peer refused STARTTLS", CLOSE_POLICY);
		return;
	}
	/* negotiated: the peer took back its offer; go on in plaintext with
	 * the capabilities it announced. */
	n->act.event = "outbound_no_starttls";
	n->act.note = "peer refused STARTTLS: plaintext";
	struct buf saved = n->plain_reply;
	memset(&n->plain_reply, 0, sizeof(n->plain_reply));
	finish(n, 250, saved.data, saved.len);
	buf_free(&saved);
}

static void on_reply(struct outbound_nego *n, int code, const char *text, size_t len)
{
	switch (n->state) {
	case NEGO_GREETING:
		to_legacy(n, text, len); /* §4.2.1: relayed unchanged */
		if (code != 220) {
			n->act.note = "peer greeting is not 220";
			close_nego(n, CLOSE_BACKEND_CLOSED);
			return;
		}
		n->state = NEGO_HELLO;
		process_legacy(n);
		break;
	case NEGO_EHLO:
		on_ehlo(n, code, text, len);
		break;
	case NEGO_HELO:
	case NEGO_TLS_EHLO:
	case NEGO_RETRY_HELLO:
		finish(n, code, text, len);
		break;
	case NEGO_STARTTLS:
		on_starttls(n, code);
		break;
	case NEGO_RETRY_GREETING:
		if (code != 220) {
			say_and_close(n, "421 4.4.1", "Error: next hop refused the retry",
				      CLOSE_BACKEND_CLOSED);
			return;
		}
		/* §4.2.5: EHLO (or the legacy server's HELO), no STARTTLS. */
		to_peer_cmd(n, n->helo ? "HELO" : "EHLO", n->name);
		n->state = NEGO_RETRY_HELLO;
		break;
	default:
		/* Unsolicited while the legacy server has nothing pending
		 * (NEGO_HELLO). A peer's 421 before it closes is passed on;
		 * anything else would be taken by the legacy server as the
		 * reply to its next command (a fake EHLO reply, replies out of
		 * step), so it is never relayed. */
		if (code == 421) {
			to_legacy(n, text, len);
			close_nego(n, CLOSE_BACKEND_CLOSED);
			return;
		}
		n->act.note = "unsolicited reply from peer";
		say_and_close(n, "421 4.4.1", "Error: next hop failure", CLOSE_ERROR);
		break;
	}
}

size_t outbound_nego_feed_peer(struct outbound_nego *n, const char *p, size_t len)
{
	size_t i = 0;
	while (i < len) {
		if (n->state == NEGO_DONE)
			return i;
		if (n->state == NEGO_CLOSED)
			return len;
		if (n->state == NEGO_HANDSHAKE || n->state == NEGO_RECONNECT) {
			/* Response injection: plaintext after the 220 to
			 * STARTTLS is never believed. */
			n->act.discarded += len - i;
			return len;
		}
		enum reply_status st;
		i += reply_parser_feed(&n->reply, p + i, len - i, &st);
		if (st == REPLY_BAD) {
			n->act.note = "malformed reply from peer";
			say_and_close(n, "421 4.4.1", "Error: next hop failure", CLOSE_ERROR);
			return len;
		}
		if (st != REPLY_DONE)
			return i;
		on_reply(n, n->reply.code, n->reply.text.data, n->reply.text.len);
		reply_parser_reset(&n->reply);
	}
	return i;
}

/* ---- events ------------------------------------------------------------ */

void outbound_nego_tls_established(struct outbound_nego *n)
{
	if (n->state != NEGO_HANDSHAKE)
		return;
	n->tls = true;
	buf_free(&n->plain_reply); /* §4.2.2: the pre-TLS capabilities are forgotten */
	reply_parser_reset(&n->reply);
	to_peer_cmd(n, "EHLO", n->name);
	n->state = NEGO_TLS_EHLO;
}

/* §4.3's "handshake fails" column; reason is what the summary line says
 * when policy refuses (§7.5: a handshake timeout is "timeout"). */
static void tls_failed(struct outbound_nego *n, const char *why, int reason)
{
	if (n->state != NEGO_HANDSHAKE && n->state != NEGO_TLS_EHLO)
		return;
	if (outbound_policy_handshake_failed(n->cfg.policy) != OUT_RETRY_PLAINTEXT) {
		refuse(n, why, reason);
		return;
	}
	/* §4.3 negotiated: reconnect once in plaintext, logged. */
	n->act.event = "outbound_tls_fallback";
	n->act.note = "TLS handshake with peer failed: retrying once in plaintext";
	n->act.reconnect = true;
	n->fallback = true;
	buf_free(&n->plain_reply);
	n->state = NEGO_RECONNECT;
}

void outbound_nego_tls_failed(struct outbound_nego *n)
{
	tls_failed(n, "TLS handshake with peer failed", CLOSE_TLS_ERROR);
}

void outbound_nego_tls_timeout(struct outbound_nego *n)
{
	tls_failed(n, "TLS handshake with peer timed out", CLOSE_TIMEOUT);
}

void outbound_nego_reconnected(struct outbound_nego *n)
{
	if (n->state != NEGO_RECONNECT)
		return;
	reply_parser_reset(&n->reply);
	n->state = NEGO_RETRY_GREETING;
}

void outbound_nego_peer_unavailable(struct outbound_nego *n)
{
	say_and_close(n, "421 4.4.1", "Error: next hop unavailable, try again later", CLOSE_ERROR);
}

void outbound_nego_peer_closed(struct outbound_nego *n)
{
	/* With TLS 1.3 a peer that refuses our certificate (or none) says so
	 * only after our side of the handshake is complete: a close before
	 * the first reply inside TLS is a failed handshake too. */
	if (n->state == NEGO_HANDSHAKE || n->state == NEGO_TLS_EHLO) {
		outbound_nego_tls_failed(n);
		return;
	}
	say_and_close(n, "421 4.4.1", "Error: next hop closed the connection",
		      CLOSE_BACKEND_CLOSED);
}

void outbound_nego_limit(struct outbound_nego *n)
{
	say_and_close(n, "421 4.7.0", "Error: too many connections, try again later", CLOSE_LIMIT);
}

void outbound_nego_timeout(struct outbound_nego *n)
{
	say_and_close(n, "421 4.4.2", "Error: timeout exceeded", CLOSE_TIMEOUT);
}

void outbound_nego_shutdown(struct outbound_nego *n)
{
	say_and_close(n, "421 4.3.2", "Service shutting down", CLOSE_SHUTDOWN);
}

const char *outbound_nego_state_name(enum nego_state state)
{
	static const char *const names[] = {
	    "greeting", "hello",     "ehlo",	       "helo",	      "starttls", "handshake",
	    "tls_ehlo", "reconnect", "retry_greeting", "retry_hello", "done",	  "closed"};
	return (unsigned)state < sizeof(names) / sizeof(names[0]) ? names[state] : "?";
}
