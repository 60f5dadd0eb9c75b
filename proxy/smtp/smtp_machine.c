/* smtp_machine.c — the SMTP session machine of smtp_machine.h.
 *
 * Client bytes collect in m->in and are processed line by line (every
 * complete line per call, STYLE.md point 8); backend bytes go through the
 * reply parser. Each forwarded command and each local reply takes a FIFO slot
 * so replies reach the client in the order of its commands (SPEC §3.2).
 *
 * Never does I/O, never reads a clock, never logs, never makes a policy
 * decision of its own: it asks policy/smtp_rules.
 */
#include "proxy/smtp/smtp_machine.h"
#include "proxy/smtp/smtp_machine_priv.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "proxy/smtp/ehlo_rewrite.h"

static const char R_LINE_BAD[] = "500 5.5.2 Error: bad syntax (NUL or bare CR in command line)";
static const char R_LINE_LONG[] = "500 5.5.2 Error: line too long";
static const char R_HTTP[] = "221 2.7.0 Error: I can break rules, too. Goodbye.";
static const char R_STARTTLS[] = "220 2.0.0 Ready to start TLS";
static const char R_BARE_REJECT[] =
    "550 5.5.2 Error: bare CR or LF in message content (SMTP smuggling defence)";

void smtp_machine_init(struct smtp_machine *m, const struct smtp_machine_config *cfg)
{
	memset(m, 0, sizeof(*m));
	m->cfg = *cfg;
	m->rules.tls_port = cfg->tls_port;
	m->rules.starttls_offered = cfg->starttls && !cfg->tls_port;
	m->rules.require_tls = cfg->require_tls && !cfg->tls_port;
	m->rules.tcp_auth = cfg->tcp_auth;
	m->rules.tls_auth = cfg->tls_auth;
	m->rules.tls_active = cfg->tls_port;
	m->phase = PHASE_GREETING;
	m->fifo[0].kind = PEND_GREETING;
	m->fifo_len = 1;
}

void smtp_machine_skip_greeting(struct smtp_machine *m)
{
	if (m->phase != PHASE_GREETING || m->fifo_len != 1)
		return;
	m->fifo_len = 0; /* the PEND_GREETING slot */
	m->phase = PHASE_COMMAND;
}

void smtp_machine_free(struct smtp_machine *m)
{
	sm_milter_free(m);
	buf_free(&m->in);
	buf_free(&m->act.to_client);
	buf_free(&m->act.to_backend);
	reply_parser_free(&m->reply);
}

void smtp_machine_clear_actions(struct smtp_machine *m)
{
	m->act.start_tls = false;
	m->act.drop_backend = false;
	m->act.progress = false;
	m->act.discarded = 0;
	m->act.note = NULL;
	m->act.config_error = false;
	m->act.note_reply[0] = '\0';
	memset(m->act.refused, 0, sizeof(m->act.refused));
	m->act.milter_abort = false;
	m->act.milter_event = MEV_NONE;
	m->act.milter_arg = NULL;
	m->act.send_held = false;
	/* close and reason stay: a closed machine stays closed. */
}

bool smtp_machine_wants_client_input(const struct smtp_machine *m)
{
	return m->phase != PHASE_CLOSED && m->in.len < SMTP_HOLD_MAX;
}

const char *smtp_machine_user(const struct smtp_machine *m)
{
	return m->authenticated && m->user[0] ? m->user : NULL;
}

const char *smtp_machine_auth_type(const struct smtp_machine *m)
{
	return m->authenticated && m->mech[0] ? m->mech : NULL;
}

/* ---- the SASL user name (§3.6) ------------------------------------------ */

/* Ends the reading of an exchange: no candidate, no line left to read. */
static void auth_forget(struct smtp_machine *m)
{
	m->auth_next = SASL_MECH_OTHER;
	memset(m->user_candidate, 0, sizeof(m->user_candidate));
}

/* A forwarded AUTH line: which client line names the user. PLAIN and LOGIN
 * may name it in the initial response; then LOGIN's next line is the
 * password and is never read. CRAM-MD5 has no initial response. */
static void auth_begin(struct smtp_machine *m, const char *line, size_t len)
{
	const char *ir;
	size_t ir_len;
	enum sasl_mech mech = sasl_auth_line(line, len, &ir, &ir_len);
	auth_forget(m);
	/* The mechanism's name: the word after AUTH, for {auth_type}. */
	size_t i = 4, k = 0;
	while (i < len && (line[i] == ' ' || line[i] == '\t'))
		i++;
	while (i < len && line[i] != ' ' && line[i] != '\t' && k + 1 < sizeof(m->mech_candidate))
		m->mech_candidate[k++] = (char)toupper((unsigned char)line[i++]);
	m->mech_candidate[k] = '\0';
	if (!ir)
		m->auth_next = (unsigned char)mech;
	else if (mech == SASL_MECH_PLAIN || mech == SASL_MECH_LOGIN)
		(void)sasl_user_extract(mech, ir, ir_len, m->user_candidate);
}

/* A forwarded SASL line: the one that names the user, if it is this one.
 * "*" is the client cancelling (RFC 4954), not a name. */
static void auth_read_line(struct smtp_machine *m, const char *line, size_t len)
{
	enum sasl_mech mech = (enum sasl_mech)m->auth_next;
	m->auth_next = SASL_MECH_OTHER;
	if (mech == SASL_MECH_OTHER || (len == 1 && line[0] == '*'))
		return;
	(void)sasl_user_extract(mech, line, len, m->user_candidate);
}

/* The backend's final reply to an exchange: 235 commits the candidate (none
 * for a mechanism whose name we do not read), anything else forgets it. */
static void auth_final(struct smtp_machine *m, int code)
{
	if (code == 235) {
		m->authenticated = true;
		memcpy(m->user, m->user_candidate, sizeof(m->user));
		memcpy(m->mech, m->mech_candidate, sizeof(m->mech));
	}
	auth_forget(m);
}

/* ---- the FIFO ---------------------------------------------------------- */

static bool fifo_full(const struct smtp_machine *m)
{
	return m->fifo_len == SMTP_FIFO_MAX;
}

static void say_and_close(struct smtp_machine *m, const char *code_status, const char *text,
			  enum smtp_close_reason reason);

void sm_fifo_push(struct smtp_machine *m, struct smtp_pending p)
{
	if (m->fifo_len == SMTP_FIFO_MAX) {
		/* Client lines wait for a free slot (process_client), and
		 * tlsfront's own lines after milters are counted before they
		 * go; were it ever full, every later reply would be out of
		 * step: nothing more goes to the backend, and the session
		 * ends. */
		if (p.kind == PEND_MILTER_REPLY)
			free((char *)p.reply);
		buf_free(&m->act.to_backend);
		m->act.note = "command queue full";
		say_and_close(m, "421 4.3.0", "Error: internal error, try again later",
			      CLOSE_ERROR);
		return;
	}
	m->fifo[(m->fifo_head + m->fifo_len) % SMTP_FIFO_MAX] = p;
	m->fifo_len++;
}

struct smtp_pending *sm_fifo_peek(struct smtp_machine *m)
{
	return m->fifo_len ? &m->fifo[m->fifo_head] : NULL;
}

void sm_fifo_pop(struct smtp_machine *m)
{
	m->fifo_head = (m->fifo_head + 1) % SMTP_FIFO_MAX;
	m->fifo_len--;
}

/* ---- output ------------------------------------------------------------ */

void sm_to_client(struct smtp_machine *m, const char *p, size_t n)
{
	if (!buf_append(&m->act.to_client, p, n))
		sm_out_of_memory(m);
}

void sm_to_backend(struct smtp_machine *m, const char *p, size_t n)
{
	if (!buf_append(&m->act.to_backend, p, n))
		sm_out_of_memory(m);
}

static void close_session(struct smtp_machine *m, enum smtp_close_reason reason)
{
	if (m->phase == PHASE_CLOSED)
		return;
	m->phase = PHASE_CLOSED;
	m->act.close = true;
	m->act.reason = reason;
	buf_free(&m->in);
}

/* A reply tlsfront makes about the session itself: "CODE X.Y.Z name text".
 * The enhanced status code must follow the reply code (RFC 2034). Nothing is
 * said once the session is closed: the first close has had its last word. */
static void say_and_close(struct smtp_machine *m, const char *code_status, const char *text,
			  enum smtp_close_reason reason)
{
	if (m->phase == PHASE_CLOSED)
		return;
	char line[512];
	int n = snprintf(line, sizeof(line), "%s %s %s\r\n", code_status, m->cfg.server_name, text);
	if (n > 0)
		sm_to_client(m, line, (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1);
	close_session(m, reason);
}

void sm_out_of_memory(struct smtp_machine *m)
{
	/* Nothing more can be promised: tell the client to retry later. */
	m->act.note = "out of memory";
	buf_free(&m->act.to_client);
	buf_free(&m->act.to_backend);
	static const char msg[] = "421 4.3.0 Error: out of memory, try again later\r\n";
	(void)buf_append(&m->act.to_client, msg, sizeof(msg) - 1);
	close_session(m, CLOSE_ERROR);
}

/* Counts a protocol error (§3.2, §7.1): after the Nth, 421 and close. */
static void count_error(struct smtp_machine *m)
{
	m->errors++;
	if (m->cfg.max_errors && m->errors >= m->cfg.max_errors && m->phase != PHASE_CLOSED)
		m->act.refused[REFUSAL_MAX_ERRORS]++;
	if (m->cfg.max_errors && m->errors >= m->cfg.max_errors)
		say_and_close(m, "421 4.7.0", "Error: too many errors", CLOSE_POLICY);
}

static bool is_error_code(int code)
{
	return code >= 500 && code <= 504;
}

/* Sends a local reply line (static text, no CRLF) to the client. */
void sm_local_reply(struct smtp_machine *m, const char *reply)
{
	sm_to_client(m, reply, strlen(reply));
	sm_to_client(m, "\r\n", 2);
	if (reply[0] == '5' || reply[0] == '4')
		count_error(m);
}

/* Releases the local replies (and the STARTTLS 220) now at the FIFO head. */
void sm_release_local(struct smtp_machine *m)
{
	struct smtp_pending *p;
	while (m->phase != PHASE_CLOSED && (p = sm_fifo_peek(m))) {
		if (p->kind == PEND_LOCAL) {
			const char *reply = p->reply;
			sm_fifo_pop(m);
			sm_local_reply(m, reply);
		} else if (p->kind == PEND_STARTTLS) {
			sm_fifo_pop(m);
			sm_to_client(m, R_STARTTLS, sizeof(R_STARTTLS) - 1);
			sm_to_client(m, "\r\n", 2);
			m->act.start_tls = true;
			m->phase = PHASE_HANDSHAKE;
			/* Nothing may be pending behind STARTTLS: input
			 * after it was discarded. */
			m->fifo_len = 0;
			return;
		} else if (p->kind == PEND_MILTER_REPLY || p->kind == PEND_MILTER_DATA ||
			   p->kind == PEND_REPLAY_END) {
			if (!sm_milter_release(m, p))
				return;
		} else {
			return;
		}
	}
}

void sm_queue_local(struct smtp_machine *m, const char *reply)
{
	sm_fifo_push(m, (struct smtp_pending){.kind = PEND_LOCAL, .reply = reply});
	sm_release_local(m);
}

/* ---- client lines ------------------------------------------------------ */

static bool line_is_clean(const char *line, size_t len)
{
	/* NUL anywhere, or a CR (the line end's CR was already removed). */
	return !memchr(line, '\0', len) && !memchr(line, '\r', len);
}

void sm_forward_line(struct smtp_machine *m, const char *line, size_t len)
{
	sm_to_backend(m, line, len);
	sm_to_backend(m, "\r\n", 2);
}

/* §7.3: refuses a SASL line and cancels the exchange at the backend; the
 * backend's answer to "*" is not the client's. */
static void cancel_auth(struct smtp_machine *m, const char *reply)
{
	auth_forget(m);
	sm_forward_line(m, "*", 1);
	sm_fifo_push(m, (struct smtp_pending){.kind = PEND_INTERNAL});
	m->phase = PHASE_COMMAND;
	sm_queue_local(m, reply);
}

/* A line over the limit: 500 5.5.2. Inside an AUTH exchange the backend
 * still waits for SASL data, so the exchange is cancelled there too, or the
 * client's next command would be taken as SASL data. */
static void line_too_long(struct smtp_machine *m)
{
	m->act.refused[REFUSAL_LINE_LENGTH]++;
	if (m->phase == PHASE_AUTH)
		cancel_auth(m, R_LINE_LONG);
	else
		sm_queue_local(m, R_LINE_LONG);
}

static void handle_auth_line(struct smtp_machine *m, const char *line, size_t len)
{
	if (!line_is_clean(line, len)) {
		m->act.refused[REFUSAL_SYNTAX]++;
		cancel_auth(m, R_LINE_BAD);
		return;
	}
	/* SASL data: passed on as it is, never parsed as a command, never
	 * logged; only the line that names the user is read (§3.6). */
	auth_read_line(m, line, len);
	sm_forward_line(m, line, len);
	sm_fifo_push(m, (struct smtp_pending){.kind = PEND_AUTH_DATA});
	m->phase = PHASE_WAIT_AUTH;
}

static void handle_command(struct smtp_machine *m, const char *line, size_t len)
{
	if (!line_is_clean(line, len)) {
		m->act.refused[REFUSAL_SYNTAX]++;
		sm_queue_local(m, R_LINE_BAD);
		return;
	}
	bool has_args;
	enum smtp_verb verb = smtp_verb_parse(line, len, &has_args);

	/* §3.2 order: XCLIENT/XFORWARD first, then HTTP, then the rest. */
	if (verb != VERB_XCLIENT && verb != VERB_XFORWARD && smtp_rules_is_http(line, len)) {
		/* Cross-protocol attack (ALPACA): answer at once and go. */
		m->act.refused[REFUSAL_HTTP]++;
		sm_to_client(m, R_HTTP, sizeof(R_HTTP) - 1);
		sm_to_client(m, "\r\n", 2);
		m->act.note = "HTTP request line from client";
		close_session(m, CLOSE_POLICY);
		return;
	}
	enum smtp_refusal rule;
	const char *refusal = smtp_rules_check_rule(&m->rules, verb, has_args, &rule);
	if (refusal) {
		m->act.refused[rule]++;
		sm_queue_local(m, refusal);
		return;
	}
	if (verb == VERB_STARTTLS) {
		m->phase = PHASE_STARTTLS;
		sm_fifo_push(m, (struct smtp_pending){.kind = PEND_STARTTLS});
		return; /* process_client discards what follows; then release */
	}
	if (m->cfg.milters && sm_milter_command(m, verb, line, len))
		return;
	sm_forward_line(m, line, len);
	sm_fifo_push(m, (struct smtp_pending){.kind = PEND_COMMAND, .verb = (unsigned char)verb});
	if (verb == VERB_EHLO || verb == VERB_HELO)
		m->rules.needs_ehlo = false; /* §3.5: "until the client sends EHLO" */
	if (verb == VERB_DATA)
		m->phase = PHASE_WAIT_DATA;
	else if (verb == VERB_AUTH) {
		m->phase = PHASE_WAIT_AUTH;
		auth_begin(m, line, len);
	}
}

/* The held input starts with an AUTH command (the verb, then a space or
 * the line end), or is SASL data: a line that may be long and may hold a
 * password. */
static bool in_auth_line(const struct smtp_machine *m)
{
	if (m->phase == PHASE_AUTH)
		return true;
	return m->in.len >= 5 && strncasecmp(m->in.data, "AUTH", 4) == 0 &&
	       (m->in.data[4] == ' ' || m->in.data[4] == '\t' || m->in.data[4] == '\r' ||
		m->in.data[4] == '\n');
}

/* The longest line accepted in the current phase, CRLF included. */
static size_t line_limit(const struct smtp_machine *m)
{
	size_t limit = m->cfg.line_length;
	bool auth = in_auth_line(m);
	if (auth && limit < SMTP_AUTH_LINE_MIN)
		limit = SMTP_AUTH_LINE_MIN;
	return limit;
}

/* Takes one line from m->in. Returns false when no complete line is there. */
static bool next_line(struct smtp_machine *m)
{
	char *lf = m->in.len ? memchr(m->in.data, '\n', m->in.len) : NULL;
	size_t limit = line_limit(m);

	if (m->discarding) {
		if (!lf) {
			m->in.len = 0;
			return false;
		}
		buf_consume(&m->in, (size_t)(lf - m->in.data) + 1);
		m->discarding = false;
		m->act.progress = true;
		line_too_long(m);
		return true;
	}
	if (!lf) {
		if (m->in.len >= limit) {
			/* Too long already: drop it up to its end. */
			m->in.len = 0;
			m->discarding = true;
		}
		return false;
	}
	size_t len = (size_t)(lf - m->in.data);
	size_t consumed = len + 1;
	if (len && m->in.data[len - 1] == '\r')
		len--; /* CRLF; a lone LF is taken as a line end too (§3.2) */
	m->act.progress = true;
	if (len + 2 > limit) {
		buf_consume(&m->in, consumed);
		line_too_long(m);
		return true;
	}
	bool secret = in_auth_line(m);
	if (m->phase == PHASE_AUTH)
		handle_auth_line(m, m->in.data, len);
	else
		handle_command(m, m->in.data, len);
	if (m->phase != PHASE_CLOSED) {
		/* SASL data may hold a password: no copy of it stays behind
		 * in the held input once it is forwarded. */
		if (secret)
			explicit_bzero(m->in.data, consumed);
		buf_consume(&m->in, consumed);
	}
	return true;
}

/* Feeds content to the DATA scanner (or drains it in reject mode); returns
 * the bytes used (all of them but what follows the end of data), 0 when out
 * of memory. */
static size_t scan_data(struct smtp_machine *m, const char *p, size_t n)
{
	bool draining = m->phase == PHASE_REJECT_DRAIN;
	struct buf scratch = {0};
	struct buf *out = draining ? &scratch : m->holding ? &m->act.to_hold : &m->act.to_backend;
	bool end;
	size_t used = data_scanner_feed(&m->data, p, n, out, &end);
	buf_free(&scratch);
	if (used == (size_t)-1) {
		sm_out_of_memory(m);
		return 0;
	}
	if (used)
		m->act.progress = true;

	if (!draining && m->data.bare_seen && m->cfg.reject_bare) {
		/* §3.7 reject: the backend must never see an end of data. */
		buf_free(&m->act.to_backend);
		buf_free(&m->act.to_hold);
		m->holding = false;
		m->act.drop_backend = true;
		m->act.refused[REFUSAL_BARE_NEWLINE]++;
		m->act.note = "bare CR or LF in message content: backend dropped";
		m->phase = PHASE_REJECT_DRAIN;
		draining = true;
	}
	if (!end)
		return used;
	if (draining) {
		sm_local_reply(m, R_BARE_REJECT);
		say_and_close(m, "421 4.7.0", "Error: closing after bare newline", CLOSE_POLICY);
		return used;
	}
	if (m->holding) {
		sm_milter_data_end(m);
		return used;
	}
	sm_fifo_push(m, (struct smtp_pending){.kind = PEND_DATA_END});
	m->phase = PHASE_COMMAND;
	return used;
}

/* Feeds held input to the DATA scanner. */
static void process_data(struct smtp_machine *m)
{
	size_t used = scan_data(m, m->in.data, m->in.len);
	if (m->phase != PHASE_CLOSED)
		buf_consume(&m->in, used);
}

void sm_process_client(struct smtp_machine *m)
{
	for (;;) {
		if (m->milter_wait)
			return; /* input waits for the milters' verdict */
		switch (m->phase) {
		case PHASE_COMMAND:
		case PHASE_AUTH:
			if (fifo_full(m) || !next_line(m))
				return;
			break;
		case PHASE_DATA:
		case PHASE_REJECT_DRAIN:
			if (!m->in.len)
				return;
			process_data(m);
			if (m->phase == PHASE_DATA || m->phase == PHASE_REJECT_DRAIN)
				return; /* all consumed, no end yet */
			break;
		case PHASE_STARTTLS:
			/* CVE-2011-0411: plaintext after STARTTLS is never
			 * executed. */
			if (m->in.len) {
				m->act.discarded += m->in.len;
				m->in.len = 0;
			}
			sm_release_local(m);
			return;
		default: /* greeting, waiting for a reply, handshake, closed */
			return;
		}
	}
}

void smtp_machine_feed_client(struct smtp_machine *m, const char *p, size_t n)
{
	if (m->phase == PHASE_CLOSED)
		return;
	if (m->phase == PHASE_STARTTLS || m->phase == PHASE_HANDSHAKE) {
		m->act.discarded += n;
		return;
	}
	if (m->discarding && !memchr(p, '\n', n))
		return; /* still inside an over-long line */
	if ((m->phase == PHASE_DATA || m->phase == PHASE_REJECT_DRAIN) && !m->in.len) {
		/* Content straight from the caller's buffer, without a copy
		 * into the held input (issue 12); only what follows the end
		 * of data is held, as below. */
		size_t used = scan_data(m, p, n);
		if (m->phase == PHASE_CLOSED || used == n)
			return;
		p += used;
		n -= used;
	}
	if (!buf_append(&m->in, p, n)) {
		sm_out_of_memory(m);
		return;
	}
	sm_process_client(m);
	/* An idle session keeps no input buffer either. */
	if (!m->in.len)
		buf_free(&m->in);
}

/* ---- backend replies --------------------------------------------------- */

static void relay(struct smtp_machine *m, int code, const char *text, size_t len)
{
	sm_to_client(m, text, len);
	if (is_error_code(code))
		count_error(m);
}

/* ---- XCLIENT (§3.3) ---------------------------------------------------- */

static void start_xclient(struct smtp_machine *m)
{
	sm_to_backend(m, "EHLO ", 5);
	sm_to_backend(m, m->cfg.server_name, strlen(m->cfg.server_name));
	sm_to_backend(m, "\r\n", 2);
	sm_fifo_push(m, (struct smtp_pending){.kind = PEND_XCLIENT_EHLO});
}

/* xtext (RFC 3461 §4): '+', '=' and octets outside 33..126 as "+HH". */
static void put_xtext(struct smtp_machine *m, const char *v)
{
	for (; *v; v++) {
		unsigned char c = (unsigned char)*v;
		if (c < 33 || c > 126 || c == '+' || c == '=') {
			char hex[4];
			snprintf(hex, sizeof(hex), "+%02X", c);
			sm_to_backend(m, hex, 3);
		} else {
			sm_to_backend(m, v, 1);
		}
	}
}

static void send_xclient(struct smtp_machine *m)
{
	char port[16];
	snprintf(port, sizeof(port), "%u", m->cfg.xclient_port);
	sm_to_backend(m, "XCLIENT ADDR=", 13);
	put_xtext(m, m->cfg.xclient_addr);
	sm_to_backend(m, " PORT=", 6);
	put_xtext(m, port);
	static const char name[] = " NAME=[UNAVAILABLE]\r\n";
	sm_to_backend(m, name, sizeof(name) - 1);
	sm_fifo_push(m, (struct smtp_pending){.kind = PEND_XCLIENT});
}

/* §3.3: the backend's EHLO or XCLIENT reply was not the expected one. The
 * client gets 421 4.3.5 (never the backend's reply: it answered tlsfront,
 * not the client), the log the reason and the backend's first reply line. */
/* The setting every XCLIENT failure note names. */
#define XCLIENT_KEY " (backend.client_info = xclient)"

static void xclient_failed(struct smtp_machine *m, const char *note, const char *text, size_t len)
{
	size_t n = 0;
	while (n < len && n < sizeof(m->act.note_reply) - 1 && text[n] != '\r' && text[n] != '\n')
		n++;
	memcpy(m->act.note_reply, text, n);
	m->act.note_reply[n] = '\0';
	m->act.note = note;
	m->act.config_error = true;
	say_and_close(m, "421 4.3.5", "Error: backend configuration error", CLOSE_ERROR);
}

static void handle_reply(struct smtp_machine *m, int code, const char *text, size_t len)
{
	struct smtp_pending *head = sm_fifo_peek(m);
	bool xclient_step = head && (head->kind == PEND_XCLIENT_EHLO || head->kind == PEND_XCLIENT);
	if (code == 421 && !xclient_step) {
		/* The backend is closing (RFC 5321 §3.8), whatever the reply
		 * answered: pass its 421 on, and close without one of ours.
		 * Not so for the replies to tlsfront's own EHLO and XCLIENT
		 * (§3.3): the client gets 421 4.3.5, and the log says why. */
		sm_to_client(m, text, len);
		close_session(m, CLOSE_BACKEND_CLOSED);
		return;
	}
	if (!head) {
		/* Unsolicited (its 421 was handled above): relayed, it would be
		 * taken as the reply to the client's next command and put every
		 * later reply out of step. A peer that does it outbound may be
		 * hostile; never relay it. */
		m->act.note = "unsolicited reply from backend";
		say_and_close(m, "421 4.3.0", "Error: backend failure", CLOSE_ERROR);
		return;
	}
	struct smtp_pending p = *head;
	sm_fifo_pop(m);

	switch (p.kind) {
	case PEND_GREETING:
		if (m->cfg.xclient && code == 220) {
			start_xclient(m);
			break;
		}
		m->phase = PHASE_COMMAND; /* before relay(): it may close */
		relay(m, code, text, len);
		break;
	case PEND_XCLIENT_EHLO:
		if (code == 421)
			xclient_failed(m, "backend closed on EHLO before XCLIENT" XCLIENT_KEY, text,
				       len);
		else if (code != 250)
			xclient_failed(m, "backend refused EHLO before XCLIENT" XCLIENT_KEY, text,
				       len);
		else if (!ehlo_reply_has_keyword(text, len, "XCLIENT"))
			xclient_failed(m, "backend does not offer XCLIENT" XCLIENT_KEY, text, len);
		else
			send_xclient(m);
		break;
	case PEND_XCLIENT:
		if (code != 220) {
			xclient_failed(m,
				       code == 421 ? "backend closed on XCLIENT" XCLIENT_KEY
						   : "backend refused XCLIENT" XCLIENT_KEY,
				       text, len);
			break;
		}
		m->phase = PHASE_COMMAND;
		relay(m, code, text, len); /* the greeting, now for the real client */
		break;
	case PEND_INTERNAL:
		break; /* tlsfront's own RSET or "*": not the client's */
	case PEND_HELD_DATA:
		sm_milter_held_data_reply(m, code, text, len);
		break;
	case PEND_REPLAY:
		sm_milter_replay_reply(m, &p, code);
		break;
	case PEND_DATA_END:
		relay(m, code, text, len);
		if (code >= 200 && code < 300) {
			m->messages++;
			m->errors = 0; /* an accepted message resets the count */
		}
		break;
	case PEND_AUTH_DATA:
	case PEND_COMMAND:
		if (p.kind == PEND_AUTH_DATA || p.verb == VERB_AUTH) {
			m->phase = code == 334 ? PHASE_AUTH : PHASE_COMMAND;
			if (code != 334)
				auth_final(m, code);
			/* 535 (bad credentials) is not a protocol error. */
			sm_to_client(m, text, len);
			if (code != 535 && is_error_code(code))
				count_error(m);
			break;
		}
		if (p.verb == VERB_EHLO) {
			if (!ehlo_rewrite(&m->rules, code, text, len, &m->act.to_client))
				sm_out_of_memory(m);
			if (is_error_code(code))
				count_error(m);
			break;
		}
		if (p.verb == VERB_DATA) {
			/* The phase changes before relay(), which may close the
			 * session when the reply is the Nth error. */
			bool held = false;
			if (code == 354) {
				data_scanner_init(&m->data, m->cfg.reject_bare);
				m->phase = PHASE_DATA;
			} else {
				m->phase = PHASE_COMMAND;
				/* §3.7, §7.4: held bytes are dropped and count
				 * as one error. */
				held = m->in.len > 0;
				m->in.len = 0;
				m->discarding = false;
			}
			relay(m, code, text, len);
			if (held && m->phase != PHASE_CLOSED)
				count_error(m);
			break;
		}
		if (m->cfg.milters)
			sm_milter_reply(m, (enum smtp_verb)p.verb, code);
		relay(m, code, text, len);
		if (p.verb == VERB_QUIT && code == 221) {
			m->quit_acked = true;
			close_session(m, CLOSE_QUIT);
		}
		break;
	default:
		break;
	}
}

void smtp_machine_feed_backend(struct smtp_machine *m, const char *p, size_t n)
{
	size_t i = 0;
	while (i < n && m->phase != PHASE_CLOSED) {
		enum reply_status st;
		i += reply_parser_feed(&m->reply, p + i, n - i, &st);
		if (st == REPLY_BAD) {
			m->act.note = "malformed reply from backend";
			say_and_close(m, "421 4.3.0", "Error: backend failure", CLOSE_ERROR);
			return;
		}
		if (st != REPLY_DONE)
			return;
		handle_reply(m, m->reply.code, m->reply.text.data, m->reply.text.len);
		reply_parser_reset(&m->reply);
		/* An idle session keeps no reply buffer (issue 12). */
		if (i == n)
			buf_free(&m->reply.text);
		sm_release_local(m);
		sm_process_client(m);
	}
}

/* ---- events ------------------------------------------------------------ */

void smtp_machine_tls_established(struct smtp_machine *m)
{
	if (m->phase != PHASE_HANDSHAKE)
		return;
	m->rules.tls_active = true;
	m->rules.needs_ehlo = true;
	m->authenticated = false;
	auth_forget(m);
	memset(m->user, 0, sizeof(m->user));
	memset(m->mech, 0, sizeof(m->mech));
	/* RFC 3207 §4.2: forget everything of the plaintext phase. */
	buf_free(&m->in);
	if (m->cfg.milters && m->in_txn) {
		m->act.milter_abort = true;
		m->in_txn = false;
		m->discard = false;
	}
	sm_forward_line(m, "RSET", 4);
	sm_fifo_push(m, (struct smtp_pending){.kind = PEND_INTERNAL});
	m->phase = PHASE_COMMAND;
}

void smtp_machine_backend_closed(struct smtp_machine *m)
{
	if (m->phase == PHASE_CLOSED || m->phase == PHASE_REJECT_DRAIN)
		return;
	say_and_close(m, "421 4.3.0", "Error: backend connection lost", CLOSE_BACKEND_CLOSED);
}

void smtp_machine_timeout(struct smtp_machine *m)
{
	if (m->phase == PHASE_CLOSED)
		return;
	say_and_close(m, "421 4.4.2", "Error: timeout exceeded", CLOSE_TIMEOUT);
}

void smtp_machine_shutdown(struct smtp_machine *m)
{
	if (m->phase == PHASE_CLOSED)
		return;
	say_and_close(m, "421 4.3.2", "Service shutting down", CLOSE_SHUTDOWN);
}

const char *smtp_phase_name(enum smtp_phase phase)
{
	static const char *const names[] = {"greeting",	    "command", "wait_data", "data",
					    "wait_auth",    "auth",    "starttls",  "handshake",
					    "reject_drain", "closed"};
	return (unsigned)phase < sizeof(names) / sizeof(names[0]) ? names[phase] : "?";
}

const char *smtp_close_reason_name(enum smtp_close_reason reason)
{
	static const char *const names[] = {"none",	"quit",	 "client_closed", "backend_closed",
					    "timeout",	"limit", "policy",	  "tls_error",
					    "shutdown", "error"};
	return (unsigned)reason < sizeof(names) / sizeof(names[0]) ? names[reason] : "?";
}

void smtp_machine_limit(struct smtp_machine *m)
{
	if (m->phase == PHASE_CLOSED)
		return;
	m->act.refused[REFUSAL_LIMIT]++;
	say_and_close(m, "421 4.7.0", "Error: too many connections, try again later", CLOSE_LIMIT);
}

void smtp_machine_backend_unavailable(struct smtp_machine *m)
{
	if (m->phase == PHASE_CLOSED)
		return;
	say_and_close(m, "421 4.3.2", "Error: backend unavailable, try again later", CLOSE_ERROR);
}
