/* milter_gate.c — the session machine's side of milters (issue 14).
 *
 * With cfg.milters, HELO/EHLO, MAIL and RCPT wait for the milters' verdict
 * before they reach the backend (a refused command never does), the
 * client's DATA is answered by tlsfront once the backend accepted a
 * recipient and the milters agree, and the content is held (act.to_hold)
 * until the milters have seen all of it. Then the envelope changes they
 * asked for, tlsfront's own DATA and the held message go to the backend,
 * and the backend's final reply is the client's.
 *
 * Part of the machine (smtp_machine_priv.h): never does I/O, never talks
 * to a milter itself (the proxy does, on act.milter_event), never logs.
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "proxy/smtp/smtp_machine_priv.h"

static const char R_354[] = "354 End data with <CR><LF>.<CR><LF>\r\n";
static const char R_NEED_MAIL[] = "503 5.5.1 Error: need MAIL command\r\n";
static const char R_NESTED_MAIL[] = "503 5.5.1 Error: nested MAIL command\r\n";
static const char R_REPLAY_FAILED[] =
    "451 4.3.0 Error: the backend refused the milters' changes, try again later\r\n";
static const char R_BAD_CHANGE[] =
    "451 4.3.0 Error: a milter's change cannot be sent, try again later\r\n";
static const char R_TOO_MANY[] = "452 4.5.3 Error: too many recipients\r\n";
/* An added recipient's replay slot (PEND_REPLAY with this reply). */
static const char ADDED[] = "added";
static const char R_NO_RCPT[] = "554 5.5.1 Error: no valid recipients\r\n";
/* A discarded message looks delivered to the sender, as in Postfix. */
static const char R_DISCARDED[] = "250 2.0.0 Ok: queued";

/* A milter's reply (complete, CRLF-terminated) in the client's turn. */
static void replay_end(struct smtp_machine *m);

static void queue_owned(struct smtp_machine *m, const char *reply)
{
	char *copy = strdup(reply);
	if (!copy) {
		sm_out_of_memory(m);
		return;
	}
	sm_fifo_push(m, (struct smtp_pending){.kind = PEND_MILTER_REPLY, .reply = copy});
	sm_release_local(m);
}

/* A command of tlsfront's own whose reply is not the client's. */
static void internal_line(struct smtp_machine *m, const char *line, size_t len)
{
	sm_forward_line(m, line, len);
	sm_fifo_push(m, (struct smtp_pending){.kind = PEND_INTERNAL});
}

static void forget_rcpts(struct smtp_machine *m)
{
	m->rcpt_ok.len = 0;
	m->rcpts_ok = 0;
}

/* The transaction is over at the milters' side. */
static void end_txn(struct smtp_machine *m)
{
	m->in_txn = false;
	m->discard = false;
	m->holding = false;
}

/* Ends the transaction at the backend too (it saw MAIL and RCPT but will
 * never see this message): the client starts again with MAIL, and a DATA
 * of its own could never reach the backend past the milters. */
static void end_txn_with_rset(struct smtp_machine *m)
{
	end_txn(m);
	forget_rcpts(m);
	internal_line(m, "RSET", 4);
}

/* The text the milters get: after the verb for HELO/EHLO, after the colon
 * for MAIL and RCPT. */
static const char *event_arg(enum smtp_verb verb, const char *line)
{
	const char *p = line + 4;
	if (verb == VERB_MAIL || verb == VERB_RCPT) {
		const char *colon = strchr(line, ':');
		if (colon)
			p = colon + 1;
	}
	while (*p == ' ' || *p == '\t')
		p++;
	return p;
}

/* A command the milters let through (or did not need to see). */
static void forward_command(struct smtp_machine *m, enum smtp_verb verb, const char *line,
			    size_t len)
{
	sm_forward_line(m, line, len);
	sm_fifo_push(m, (struct smtp_pending){.kind = PEND_COMMAND, .verb = (unsigned char)verb});
	if (verb == VERB_EHLO || verb == VERB_HELO)
		m->rules.needs_ehlo = false; /* §3.5 */
	if (verb == VERB_MAIL) {
		m->in_txn = true;
		m->mails_pending++;
		m->txn_mail.len = 0;
		if (!buf_append(&m->txn_mail, line, len))
			sm_out_of_memory(m);
	}
	if (verb == VERB_RCPT &&
	    (!buf_append(&m->rcpt_pending, line, len) || !buf_append(&m->rcpt_pending, "\r\n", 2)))
		sm_out_of_memory(m);
}

static void abort_txn(struct smtp_machine *m)
{
	if (m->in_txn)
		m->act.milter_abort = true;
	end_txn(m);
}

/* Ends an open transaction on both sides: the milters get abort, the
 * backend RSET, so the backend never keeps an envelope the milters no
 * longer judge. */
static void abort_txn_everywhere(struct smtp_machine *m)
{
	if (!m->in_txn)
		return;
	m->act.milter_abort = true;
	end_txn_with_rset(m);
}

bool sm_milter_command(struct smtp_machine *m, enum smtp_verb verb, const char *line, size_t len)
{
	enum smtp_milter_event ev;
	switch (verb) {
	case VERB_RSET:
		abort_txn(m);
		return false;
	case VERB_EHLO:
	case VERB_HELO:
		/* RFC 5321 §4.1.4: EHLO resets the transaction (at the
		 * backend too, even when a milter refuses this EHLO). */
		abort_txn_everywhere(m);
		ev = MEV_HELO;
		break;
	case VERB_MAIL:
		if (m->session_refusal) {
			queue_owned(m, m->session_refusal);
			return true;
		}
		if (m->in_txn) {
			queue_owned(m, R_NESTED_MAIL); /* as Postfix */
			return true;
		}
		ev = MEV_MAIL;
		break;
	case VERB_RCPT:
		if (!m->in_txn) {
			/* No MAIL the milters saw: the backend says 503. */
			forward_command(m, verb, line, len);
			return true;
		}
		ev = MEV_RCPT;
		break;
	case VERB_DATA:
		if (!m->in_txn) {
			/* Content reaches the backend only past the milters:
			 * never through a transaction they did not see. */
			queue_owned(m, R_NEED_MAIL);
			return true;
		}
		sm_fifo_push(m, (struct smtp_pending){.kind = PEND_MILTER_DATA});
		m->phase = PHASE_WAIT_DATA;
		sm_release_local(m);
		return true;
	default:
		return false;
	}
	m->milter_line.len = 0;
	if (!buf_append(&m->milter_line, line, len) || !buf_append(&m->milter_line, "", 1)) {
		sm_out_of_memory(m);
		return true;
	}
	m->milter_verb = (unsigned char)verb;
	m->milter_ev = (unsigned char)ev;
	m->milter_wait = true;
	m->act.milter_event = (unsigned char)ev;
	m->act.milter_arg = event_arg(verb, m->milter_line.data);
	return true;
}

/* The client's DATA refused before any content: input it pipelined after
 * DATA is dropped, as when the backend refuses DATA (§3.7, §7.4). */
static void refuse_data(struct smtp_machine *m, const char *reply)
{
	m->in.len = 0;
	m->discarding = false;
	m->phase = PHASE_COMMAND;
	sm_to_client(m, reply, strlen(reply));
}

bool sm_milter_release(struct smtp_machine *m, struct smtp_pending *p)
{
	if (p->kind == PEND_MILTER_REPLY) {
		char *reply = (char *)p->reply;
		sm_fifo_pop(m);
		sm_to_client(m, reply, strlen(reply));
		free(reply);
		return true;
	}
	if (p->kind == PEND_REPLAY_END) {
		sm_fifo_pop(m);
		replay_end(m);
		return m->phase != PHASE_CLOSED;
	}
	/* PEND_MILTER_DATA: every earlier reply is out. */
	if (m->milter_wait)
		return false;
	sm_fifo_pop(m);
	if (m->rcpts_ok == 0) {
		abort_txn_everywhere(m);
		refuse_data(m, R_NO_RCPT);
		return true;
	}
	m->milter_ev = MEV_DATA;
	m->milter_wait = true;
	m->act.milter_event = MEV_DATA;
	m->act.milter_arg = NULL;
	return false;
}

void sm_milter_reply(struct smtp_machine *m, enum smtp_verb verb, int code)
{
	if (verb == VERB_MAIL && m->mails_pending)
		m->mails_pending--;
	if (verb == VERB_MAIL && (code < 200 || code > 299) && !m->mails_pending) {
		/* The backend refused the transaction's MAIL: it is over for
		 * the milters too. */
		if (m->in_txn)
			m->act.milter_abort = true;
		end_txn(m);
	}
	if (verb == VERB_MAIL || verb == VERB_RSET || verb == VERB_EHLO || verb == VERB_HELO) {
		forget_rcpts(m);
		return;
	}
	if (verb != VERB_RCPT)
		return;
	char *lf =
	    m->rcpt_pending.len ? memchr(m->rcpt_pending.data, '\n', m->rcpt_pending.len) : NULL;
	if (!lf)
		return;
	size_t n = (size_t)(lf - m->rcpt_pending.data) + 1;
	if (code >= 200 && code < 300) {
		if (!buf_append(&m->rcpt_ok, m->rcpt_pending.data, n)) {
			sm_out_of_memory(m);
			return;
		}
		m->rcpts_ok++;
	}
	buf_consume(&m->rcpt_pending, n);
}

void sm_milter_data_end(struct smtp_machine *m)
{
	m->holding = false;
	m->phase = PHASE_COMMAND;
	if (m->discard) {
		/* A milter said discard earlier: no end of message for them. */
		m->act.milter_abort = true;
		sm_local_reply(m, R_DISCARDED);
		end_txn_with_rset(m);
		return;
	}
	m->milter_ev = MEV_EOM;
	m->milter_wait = true;
	m->act.milter_event = MEV_EOM;
	m->act.milter_arg = NULL;
}

void sm_milter_held_data_reply(struct smtp_machine *m, int code, const char *text, size_t len)
{
	if (code == 354) {
		m->act.send_held = true;
		sm_fifo_push(m, (struct smtp_pending){.kind = PEND_DATA_END});
		return;
	}
	/* The backend refused the message before its content (no recipient
	 * left after the milters' changes, say): its reply is the client's. */
	sm_to_client(m, text, len);
	m->milter_wait = false;
	m->act.milter_abort = true; /* the held message is over */
	end_txn_with_rset(m);
}

void sm_milter_free(struct smtp_machine *m)
{
	for (unsigned i = 0; i < m->fifo_len; i++) {
		struct smtp_pending *p = &m->fifo[(m->fifo_head + i) % SMTP_FIFO_MAX];
		if (p->kind == PEND_MILTER_REPLY)
			free((char *)p->reply);
	}
	m->fifo_len = 0;
	buf_free(&m->milter_line);
	buf_free(&m->txn_mail);
	buf_free(&m->rcpt_pending);
	buf_free(&m->rcpt_ok);
	buf_free(&m->act.to_hold);
	free(m->session_refusal);
	m->session_refusal = NULL;
}

/* ---- the proxy's calls ------------------------------------------------- */

void smtp_machine_milter_refuse_session(struct smtp_machine *m, const char *reply)
{
	free(m->session_refusal);
	m->session_refusal = strdup(reply);
	if (!m->session_refusal)
		sm_out_of_memory(m);
}

void smtp_machine_milter_verdict(struct smtp_machine *m, enum smtp_milter_verdict v,
				 const char *reply)
{
	if (!m->milter_wait || m->phase == PHASE_CLOSED || m->milter_ev == MEV_NONE)
		return;
	enum smtp_milter_event ev = (enum smtp_milter_event)m->milter_ev;
	m->milter_wait = false;
	m->milter_ev = MEV_NONE;
	if (v == SMV_REFUSE && (!reply || !reply[0]))
		reply = "451 4.7.1 Service unavailable - try again later\r\n";

	switch (ev) {
	case MEV_HELO:
	case MEV_MAIL:
	case MEV_RCPT:
		if (v != SMV_REFUSE && ev == MEV_MAIL && m->session_refusal)
			reply = m->session_refusal, v = SMV_REFUSE; /* came while asking */
		if (v == SMV_REFUSE) {
			queue_owned(m, reply);
			break;
		}
		forward_command(m, (enum smtp_verb)m->milter_verb, m->milter_line.data,
				m->milter_line.len - 1);
		if (v == SMV_DISCARD && ev != MEV_HELO)
			m->discard = true;
		break;
	case MEV_DATA:
		if (v == SMV_REFUSE) {
			refuse_data(m, reply);
			m->act.milter_abort = true;
			end_txn_with_rset(m);
			break;
		}
		if (v == SMV_DISCARD)
			m->discard = true;
		data_scanner_init(&m->data, m->cfg.reject_bare);
		m->phase = PHASE_DATA;
		m->holding = true;
		sm_to_client(m, R_354, sizeof(R_354) - 1);
		break;
	case MEV_EOM:
		if (v == SMV_REFUSE)
			sm_to_client(m, reply, strlen(reply));
		else
			sm_local_reply(m, R_DISCARDED); /* discard (continue: see deliver) */
		end_txn_with_rset(m);
		break;
	default:
		break;
	}
	m->milter_line.len = 0;
	if (m->phase != PHASE_CLOSED) {
		sm_release_local(m);
		sm_process_client(m);
	}
}

/* "<addr>" of a RCPT line or of a milter's argument, without brackets. */
static void bare_address(const char *p, size_t n, const char **a, size_t *alen)
{
	const char *lt = memchr(p, '<', n);
	if (lt) {
		const char *gt = memchr(lt, '>', n - (size_t)(lt - p));
		*a = lt + 1;
		*alen = gt ? (size_t)(gt - lt - 1) : n - (size_t)(lt - p) - 1;
		return;
	}
	*a = p;
	*alen = n;
}

static bool deleted(const struct smtp_envelope_change *c, const char *line, size_t len)
{
	const char *colon = memchr(line, ':', len);
	const char *p = colon ? colon + 1 : line;
	const char *a;
	size_t alen;
	bare_address(p, len - (size_t)(p - line), &a, &alen);
	for (size_t i = 0; i < c->n_del; i++) {
		const char *d;
		size_t dlen;
		bare_address(c->del[i], strlen(c->del[i]), &d, &dlen);
		if (dlen == alen && strncasecmp(a, d, alen) == 0)
			return true;
	}
	return false;
}

/* "VERB:<addr> args" into b (addr gets brackets when it has none). */
static bool envelope_line(struct buf *b, const char *verb, const char *addr, const char *args)
{
	b->len = 0;
	bool bracket = addr[0] != '<';
	return buf_append_str(b, verb) && (!bracket || buf_append(b, "<", 1)) &&
	       buf_append_str(b, addr) && (!bracket || buf_append(b, ">", 1)) &&
	       (!args || !args[0] || (buf_append(b, " ", 1) && buf_append_str(b, args)));
}

static bool has_line_break(const char *t)
{
	return t && strpbrk(t, "\r\n");
}

/* tlsfront's MAIL or RCPT after the milters' changes. */
static void replay_line(struct smtp_machine *m, enum smtp_verb verb, const char *line, size_t len,
			bool added)
{
	sm_forward_line(m, line, len);
	sm_fifo_push(m, (struct smtp_pending){.kind = PEND_REPLAY,
					      .verb = (unsigned char)verb,
					      .reply = added ? ADDED : NULL});
}

/* The milters' end of message can not go to the backend: the client gets
 * reply, the backend RSET, and the held message is forgotten. The caller
 * lets the client's next commands in (or returns to a loop that will). */
static void deliver_refused(struct smtp_machine *m, const char *reply, const char *note)
{
	m->milter_wait = false;
	m->act.milter_abort = true;
	if (note)
		m->act.note = note;
	sm_to_client(m, reply, strlen(reply));
	end_txn_with_rset(m);
}

void smtp_machine_milter_deliver(struct smtp_machine *m, const struct smtp_envelope_change *c)
{
	if (!m->milter_wait || m->milter_ev != MEV_EOM || m->phase == PHASE_CLOSED)
		return;
	m->milter_ev = MEV_NONE; /* still waiting: until held_sent */
	static const struct smtp_envelope_change none = {0};
	if (!c)
		c = &none;
	bool replay = c->sender || c->n_del;
	bool bad = has_line_break(c->sender) || has_line_break(c->sender_args);
	for (size_t i = 0; i < c->n_add; i++)
		bad = bad || has_line_break(c->add[i]) ||
		      (c->add_args && has_line_break(c->add_args[i]));
	if (bad) {
		deliver_refused(m, R_BAD_CHANGE,
				"a milter's address or argument holds a line break");
		sm_process_client(m);
		return;
	}
	/* RSET, MAIL, the recipients, the end marker, DATA: all in the FIFO
	 * at once, every one of them a slot. */
	size_t need = (replay ? 2 + m->rcpts_ok : 0) + c->n_add + 2;
	if (need > SMTP_FIFO_MAX - m->fifo_len) {
		deliver_refused(m, R_TOO_MANY, NULL);
		sm_process_client(m);
		return;
	}
	m->replay_ok = 0;
	m->replay_failed = 0;
	if (!replay && !c->n_add) {
		m->replay_ok = 1; /* the backend's recipients stand */
		sm_fifo_push(m, (struct smtp_pending){.kind = PEND_REPLAY_END});
		sm_release_local(m);
		return;
	}
	struct buf line = {0};
	bool ok = true;
	if (replay) {
		/* A new sender or fewer recipients: the transaction again. */
		internal_line(m, "RSET", 4);
		if (c->sender)
			ok = envelope_line(&line, "MAIL FROM:", c->sender, c->sender_args);
		else
			ok = buf_append(&line, m->txn_mail.data, m->txn_mail.len);
		if (ok)
			replay_line(m, VERB_MAIL, line.data, line.len, false);
		size_t off = 0;
		while (ok && off < m->rcpt_ok.len) {
			const char *p = m->rcpt_ok.data + off;
			const char *lf = memchr(p, '\n', m->rcpt_ok.len - off);
			size_t n = (size_t)(lf - p) + 1;
			off += n;
			if (!deleted(c, p, n - 2))
				replay_line(m, VERB_RCPT, p, n - 2, false);
		}
	} else {
		m->replay_ok = m->rcpts_ok; /* the backend's recipients stand */
	}
	for (size_t i = 0; ok && i < c->n_add; i++) {
		ok = envelope_line(&line, "RCPT TO:", c->add[i],
				   c->add_args ? c->add_args[i] : NULL);
		if (ok)
			replay_line(m, VERB_RCPT, line.data, line.len, true);
	}
	buf_free(&line);
	if (!ok) {
		sm_out_of_memory(m);
		return;
	}
	sm_fifo_push(m, (struct smtp_pending){.kind = PEND_REPLAY_END});
}

void sm_milter_replay_reply(struct smtp_machine *m, const struct smtp_pending *p, int code)
{
	bool ok = code >= 200 && code < 300;
	if (ok && p->verb == VERB_RCPT)
		m->replay_ok++;
	if (ok)
		return;
	if (p->reply == ADDED && code >= 500) {
		/* A recipient only a milter wanted, refused for good: the
		 * message goes to the others, as Postfix would bounce that one
		 * recipient alone. */
		m->act.note = "backend refused a recipient a milter added";
		return;
	}
	if (!m->replay_failed)
		m->replay_failed = code;
}

/* PEND_REPLAY_END at the head: every replay reply is in. */
static void replay_end(struct smtp_machine *m)
{
	if (m->replay_failed || !m->replay_ok) {
		deliver_refused(m, R_REPLAY_FAILED,
				"backend refused the milters' envelope changes");
		return;
	}
	sm_forward_line(m, "DATA", 4);
	sm_fifo_push(m, (struct smtp_pending){.kind = PEND_HELD_DATA});
}

void smtp_machine_held_sent(struct smtp_machine *m)
{
	if (m->phase == PHASE_CLOSED)
		return;
	m->milter_wait = false;
	end_txn(m);
	forget_rcpts(m);
	sm_release_local(m);
	sm_process_client(m);
}
