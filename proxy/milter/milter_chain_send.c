/* milter_chain_send.c — what the chain sends for each event, and the loop
 * that runs the event (chain_run(), milter by milter, one step at a time):
 * connecting a milter on its first event, the macros and command of each
 * event, and at end of message the header section, end of headers, the
 * body and end of body, each milter shown the message as the earlier
 * milters left it (a view the chain owns, built with message_edit_apply()).
 * Body chunks are read from the store one at a time (MILTER_CHUNK_MAX) and
 * sent one at a time.
 *
 * Never reads a reply (milter_chain_reply.c does), never writes but through
 * chain_send_out(), never ends an event but through chain_finish(), and
 * never changes the held message or the caller's edits: it only reads them.
 */
#include "proxy/milter/milter_chain_priv.h"

#include <sys/socket.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
void chain_next_milter(struct milter_chain *c)
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
				chain_log_error(m, "cannot read the held message");
				chain_finish(c, MILTER_TEMPFAIL, REPLY_TEMPFAIL, milter_name(m));
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
			if (!chain_send_out(m, (m->protocol & SMFIP_NR_HDR) ? AW_WRITE : AW_REPLY))
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
			if (!chain_send_out(m, (m->protocol & SMFIP_NR_EOH) ? AW_WRITE : AW_REPLY))
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
				chain_log_error(m, "cannot read the held message");
				chain_finish(c, MILTER_TEMPFAIL, REPLY_TEMPFAIL, milter_name(m));
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
			if (!chain_send_out(m, (m->protocol & SMFIP_NR_BODY) ? AW_WRITE : AW_REPLY))
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
			if (!chain_send_out(m, AW_REPLY))
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
		chain_finish(c, MILTER_TEMPFAIL, REPLY_TEMPFAIL, NULL);
		return ADV_DONE;
	}
	if (c->discarding && (c->ev == EV_RCPT || c->ev == EV_DATA || c->ev == EV_EOM)) {
		chain_finish(c, MILTER_DISCARD, NULL, NULL);
		return ADV_DONE;
	}
	if (c->cur >= c->n) {
		chain_finish(c, MILTER_CONTINUE, NULL, NULL);
		return ADV_DONE;
	}
	struct milter *m = &c->m[c->cur];
	if (m->state == MS_FAILED) {
		if (m->conf->default_action == TF_MILTER_ACCEPT) {
			chain_next_milter(c);
			return ADV_AGAIN;
		}
		chain_finish_default(c, m);
		return ADV_DONE;
	}
	if (m->await != AW_NONE)
		return ADV_WAIT;
	switch (c->phase) {
	case PH_BEGIN:
		if (m->out_session || (m->out_message && c->ev >= EV_RCPT)) {
			chain_next_milter(c);
			return ADV_AGAIN;
		}
		if (m->state == MS_NEW) {
			c->phase = PH_CONNECT;
			chain_start_connect(m);
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
			chain_next_milter(c);
			return ADV_AGAIN;
		}
		if (!build_event(c, c->ev)) {
			c->out.len = 0;
			milter_fail(m, "out of memory");
			return ADV_AGAIN;
		}
		if (!chain_send_out(m, (m->protocol & noreply_flag(c->ev)) ? AW_WRITE : AW_REPLY))
			return ADV_AGAIN;
		return ADV_WAIT;
	case PH_COMMAND:
		/* A command without reply was written: next milter. */
		if (c->ev != EV_EOM) {
			chain_next_milter(c);
			return ADV_AGAIN;
		}
		return eom_step(c, m);
	default:
		/* End of message: a step without reply was written. */
		return eom_step(c, m);
	}
}

void chain_run(struct milter_chain *c)
{
	unsigned gen = c->gen;
	while (!c->closing && c->ev != EV_NONE && c->gen == gen) {
		if (step(c) != ADV_AGAIN)
			return;
	}
}
