/* milter_chain_reply.c — the milters' replies: each packet read from a
 * milter (gathered by the codec's reader, bounded by MILTER_PACKET_MAX) is
 * parsed and checked against the negotiation and the current event, then
 * becomes the milter's next step, a verdict (chain_finish()), the milter's
 * failure (its default_action), or at end of message a modification
 * recorded in the caller's message_edits.
 *
 * Never writes to a milter itself (what is sent next is
 * milter_chain_send.c's), never accepts a modification outside end of
 * message or one the milter did not negotiate, never ends an event but
 * through chain_finish().
 */
#include "proxy/milter/milter_chain_priv.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A replycode's reply fits the verdict whole. */
_Static_assert(MILTER_SMTP_REPLY_MAX <= MILTER_REPLY_MAX, "verdict reply too small");

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
		chain_fail_and_run(m, "out of memory");
		return;
	}
	char what[64];
	if (milter_parse_reply(pkt, r) != 0) {
		snprintf(what, sizeof(what), "malformed reply '%c'",
			 pkt->cmd >= 0x21 && pkt->cmd < 0x7f ? pkt->cmd : '?');
		free(r);
		chain_fail_and_run(m, what);
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
			chain_fail_and_run(m, "negotiation refused");
			return;
		}
		m->state = MS_READY;
		m->await = AW_NONE;
		uv_timer_stop(&m->timer);
		if (current)
			chain_run(c);
		return;
	}
	if (!current || m->await != AW_REPLY) {
		free(r);
		chain_fail_and_run(m, "unexpected reply");
		return;
	}
	if (r->cmd == SMFIR_PROGRESS) {
		free(r);
		uv_timer_start(&m->timer, chain_on_timeout, (uint64_t)m->conf->timeout * 1000, 0);
		return;
	}
	if (is_edit(r->cmd)) {
		const char *why = NULL;
		bool ok = c->ev == EV_EOM && c->phase == PH_EOB_SENT && apply_edit(c, m, r, &why);
		free(r);
		if (!ok)
			chain_fail_and_run(m, why ? why : "modification before end of message");
		else /* more replies to come for this end of message */
			uv_timer_start(&m->timer, chain_on_timeout,
				       (uint64_t)m->conf->timeout * 1000, 0);
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
			chain_next_milter(c);
		}
		chain_run(c);
		return;
	case SMFIR_ACCEPT:
		free(r);
		if (c->ev <= EV_HELO)
			m->out_session = true;
		else
			m->out_message = true;
		chain_next_milter(c);
		chain_run(c);
		return;
	case SMFIR_REJECT:
		free(r);
		chain_finish(c, MILTER_REJECT, REPLY_REJECT, milter_name(m));
		return;
	case SMFIR_TEMPFAIL:
		free(r);
		chain_finish(c, MILTER_TEMPFAIL, REPLY_TEMPFAIL, milter_name(m));
		return;
	case SMFIR_SHUTDOWN:
	case SMFIR_CONN_FAIL:
		free(r);
		/* The milter is going away: tempfail now, its default later. */
		chain_log_error(m, cmd == SMFIR_SHUTDOWN ? "shutdown" : "connection fail");
		m->state = MS_FAILED;
		chain_close_stream(m);
		chain_finish(c, MILTER_TEMPFAIL, REPLY_TEMPFAIL, milter_name(m));
		return;
	case SMFIR_REPLYCODE: {
		struct milter_verdict v;
		snprintf(v.reply, sizeof(v.reply), "%s", r->smtp);
		int code = r->code;
		free(r);
		chain_finish(c, code >= 500 ? MILTER_REJECT : MILTER_TEMPFAIL, v.reply,
			     milter_name(m));
		return;
	}
	case SMFIR_DISCARD:
		free(r);
		if (c->ev < EV_MAIL) {
			chain_fail_and_run(m, "discard outside a message");
			return;
		}
		chain_finish(c, MILTER_DISCARD, NULL, milter_name(m));
		return;
	default:
		free(r);
		chain_fail_and_run(m, "unexpected reply");
		return;
	}
}

void chain_on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
	struct milter_chain *c = s->data;
	struct milter *m = NULL;
	for (size_t i = 0; i < c->n; i++)
		if (c->m[i].stream == s)
			m = &c->m[i];
	if (!m || c->closing || m->state == MS_FAILED || n == 0)
		return;
	if (n < 0) {
		chain_fail_and_run(m, n == UV_EOF ? "closed by the milter" : uv_strerror((int)n));
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
			chain_fail_and_run(m, "bad packet length");
			return;
		}
		if (st == MILTER_READ_PACKET)
			handle_reply(m, &pkt);
	}
}
