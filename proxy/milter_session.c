/* milter_session.c — the milters of one SMTP session (milter_session.h).
 *
 * One event at a time goes to the chain: the machine raises at most one
 * and waits for its verdict, but the connect event (and an outbound HELO)
 * may still be out when the machine raises its first; that one waits here
 * (deferred) until the chain is free.
 *
 * Never writes to a socket, never decides SMTP: the owner writes, the
 * machine decides.
 */
#include "proxy/milter_session.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/address.h"
#include "proxy/log.h"

#define MS_CONNECT 0x40 /* beside the MEV_* kinds of smtp_machine.h */
#define MS_HELO	   0x41 /* the outbound HELO of milter_session_start */
#define SEND_PIECE (32 * 1024)

static const char R_TOO_BIG[] = "552 5.3.4 Error: message file too big\r\n";
static const char R_HOLD_FAILED[] =
    "451 4.3.0 Error: cannot hold the message for the milters, try again later\r\n";

static void done_cb(void *owner, const struct milter_verdict *v);

struct milter_session *milter_session_new(uv_loop_t *loop, const struct tf_milter_config *conf,
					  size_t n, uint64_t size_limit,
					  struct smtp_machine *machine, void *owner,
					  const struct milter_session_ops *ops, const char *id)
{
	struct milter_session *ms = calloc(1, sizeof(*ms));
	if (!ms)
		return NULL;
	ms->machine = machine;
	ms->owner = owner;
	ms->ops = ops;
	ms->id = id;
	ms->size_limit = size_limit;
	ms->info.daemon_name = "tlsfront";
	ms->info.client_name = ms->client_name;
	message_store_init(&ms->msg, MESSAGE_STORE_MEM_DEFAULT, size_limit, NULL);
	message_store_init(&ms->out, MESSAGE_STORE_MEM_DEFAULT, size_limit, NULL);
	ms->chain = milter_chain_new(loop, conf, n, &ms->info, id, done_cb, ms);
	if (!ms->chain) {
		message_store_free(&ms->msg);
		message_store_free(&ms->out);
		free(ms);
		return NULL;
	}
	return ms;
}

void milter_session_free(struct milter_session *ms)
{
	if (!ms)
		return;
	milter_chain_close(ms->chain); /* no done call after this */
	if (ms->edits_live)
		message_edits_free(&ms->edits);
	message_store_free(&ms->msg);
	message_store_free(&ms->out);
	free(ms);
}

static void refresh(struct milter_session *ms)
{
	snprintf(ms->info.queue_id, sizeof(ms->info.queue_id), "%s.%u", ms->id, ms->message_no);
	if (ms->ops->refresh)
		ms->ops->refresh(ms->owner, &ms->info);
}

static void ask(struct milter_session *ms, unsigned char ev, const char *arg)
{
	ms->busy = true;
	ms->current = ev;
	refresh(ms);
	switch (ev) {
	case MS_CONNECT:
		milter_chain_connect(ms->chain);
		break;
	case MS_HELO:
		milter_chain_helo(ms->chain, ms->helo);
		break;
	case MEV_HELO:
		milter_chain_helo(ms->chain, arg);
		break;
	case MEV_MAIL:
		ms->message_no++;
		refresh(ms);
		milter_chain_mail(ms->chain, arg);
		break;
	case MEV_RCPT:
		milter_chain_rcpt(ms->chain, arg);
		break;
	case MEV_DATA:
		milter_chain_data(ms->chain);
		break;
	case MEV_EOM:
		if (ms->edits_live)
			message_edits_free(&ms->edits);
		message_edits_init(&ms->edits, MESSAGE_STORE_MEM_DEFAULT, ms->size_limit, NULL);
		ms->edits_live = true;
		milter_chain_eom(ms->chain, &ms->msg, &ms->edits);
		break;
	default:
		ms->busy = false;
		break;
	}
}

void milter_session_start(struct milter_session *ms, const char *server_name,
			  const struct sockaddr *client, const struct sockaddr *local,
			  const char *helo)
{
	struct milter_session_info *info = &ms->info;
	info->server_name = server_name;
	info->client_family = client->sa_family;
	address_ip(client, info->client_addr, sizeof(info->client_addr));
	info->client_port = address_port(client);
	if (local)
		address_ip(local, info->if_addr, sizeof(info->if_addr));
	snprintf(ms->client_name, sizeof(ms->client_name), "[%s]", info->client_addr);
	/* Held messages have a bound: the EHLO reply says it (SIZE). */
	ms->machine->rules.size_limit = (unsigned long)ms->size_limit;
	if (helo && helo[0]) {
		snprintf(ms->helo, sizeof(ms->helo), "%s", helo);
		ms->deferred_helo = true;
	}
	ask(ms, MS_CONNECT, NULL);
}

/* Forgets the held message (and what the milters made of it). */
static void forget_message(struct milter_session *ms)
{
	message_store_reset(&ms->msg);
	message_store_reset(&ms->out);
	if (ms->edits_live) {
		message_edits_free(&ms->edits);
		ms->edits_live = false;
	}
	ms->sending = NULL;
	ms->held_pending = false;
}

static enum smtp_milter_verdict verdict_of(const struct milter_verdict *v)
{
	switch (v->kind) {
	case MILTER_REJECT:
	case MILTER_TEMPFAIL:
		return SMV_REFUSE;
	case MILTER_DISCARD:
		return SMV_DISCARD;
	default:
		return SMV_CONTINUE;
	}
}

/* The machine's end of message, before the milters are asked: a message
 * that could not be held is refused here. */
static bool eom_refused(struct milter_session *ms)
{
	const char *reply = NULL;
	if (ms->msg.too_big)
		reply = R_TOO_BIG;
	else if (ms->msg.error)
		reply = R_HOLD_FAILED;
	if (!reply)
		return false;
	if (ms->msg.error)
		log_msg(TF_LOG_ERROR, "event=milter_error id=%s error=\"holding the message: %s\"",
			ms->id, strerror(ms->msg.error));
	forget_message(ms);
	smtp_machine_milter_verdict(ms->machine, SMV_REFUSE, reply);
	return true;
}

/* The milters accepted the message: the envelope changes to the machine,
 * and the message to send made ready. */
static void eom_continue(struct milter_session *ms)
{
	struct message_edits *e = &ms->edits;
	ms->sending = &ms->msg;
	if (message_edits_change_content(e)) {
		struct message_headers hs = {0};
		int rc = message_headers_read(&ms->msg, &hs);
		if (rc == 0)
			rc = message_edit_apply(&ms->msg, &hs, e, &ms->out);
		message_headers_free(&hs);
		if (rc != 0) {
			const char *reply = rc == 1 ? R_TOO_BIG : R_HOLD_FAILED;
			forget_message(ms);
			smtp_machine_milter_verdict(ms->machine, SMV_REFUSE, reply);
			return;
		}
		ms->sending = &ms->out;
	}
	const char **add = NULL, **add_args = NULL;
	if (e->n_add) {
		add = calloc(e->n_add, sizeof(*add));
		add_args = calloc(e->n_add, sizeof(*add_args));
		if (!add || !add_args) {
			free(add);
			free(add_args);
			forget_message(ms);
			smtp_machine_milter_verdict(ms->machine, SMV_REFUSE, R_HOLD_FAILED);
			return;
		}
		for (size_t i = 0; i < e->n_add; i++) {
			add[i] = e->add_rcpts[i].addr;
			add_args[i] = e->add_rcpts[i].args;
		}
	}
	struct smtp_envelope_change c = {
	    .sender = e->new_sender,
	    .sender_args = e->new_sender_args,
	    .add = add,
	    .add_args = add_args,
	    .n_add = e->n_add,
	    .del = (const char *const *)e->del_rcpts,
	    .n_del = e->n_del,
	};
	smtp_machine_milter_deliver(ms->machine, &c);
	free(add);
	free(add_args);
	ms->send_off = 0;
	ms->send_bol = true;
}

static void done_cb(void *owner, const struct milter_verdict *v)
{
	struct milter_session *ms = owner;
	unsigned char ev = ms->current;
	ms->busy = false;
	ms->current = 0;
	switch (ev) {
	case MS_CONNECT:
	case MS_HELO:
		/* The connection refused (Postfix: every MAIL gets it). */
		if (v->kind == MILTER_REJECT || v->kind == MILTER_TEMPFAIL)
			smtp_machine_milter_refuse_session(ms->machine, v->reply);
		if (ev == MS_CONNECT && ms->deferred_helo) {
			ms->deferred_helo = false;
			ask(ms, MS_HELO, NULL);
			return;
		}
		break;
	case MEV_EOM:
		if (v->kind == MILTER_CONTINUE)
			eom_continue(ms);
		else {
			forget_message(ms);
			smtp_machine_milter_verdict(ms->machine, verdict_of(v), v->reply);
		}
		break;
	default:
		smtp_machine_milter_verdict(ms->machine, verdict_of(v), v->reply);
		break;
	}
	if (!ms->busy && ms->deferred) {
		unsigned char d = ms->deferred;
		ms->deferred = 0;
		if (!(d == MEV_EOM && eom_refused(ms)))
			ask(ms, d, ms->deferred_arg);
	}
	ms->ops->step(ms->owner);
}

void milter_session_actions(struct milter_session *ms)
{
	struct smtp_actions *a = &ms->machine->act;
	if (a->to_hold.len) {
		size_t len;
		char *data = buf_take(&a->to_hold, &len);
		(void)message_store_append_wire(&ms->msg, data, len); /* errors: at EOM */
		free(data);
	}
	/* A refusal decided here (eom_refused) lets the machine read the
	 * client's next command, which may raise the next event at once. */
	for (unsigned round = 0; round < 4 && (a->milter_abort || a->milter_event); round++) {
		if (a->milter_abort) {
			a->milter_abort = false;
			milter_chain_abort(ms->chain);
			forget_message(ms);
		}
		if (a->milter_event) {
			unsigned char ev = a->milter_event;
			const char *arg = a->milter_arg;
			a->milter_event = MEV_NONE;
			if (ms->busy) {
				ms->deferred = ev;
				ms->deferred_arg = arg;
			} else if (!(ev == MEV_EOM && eom_refused(ms))) {
				ask(ms, ev, arg);
			}
		}
	}
	if (a->send_held) {
		a->send_held = false;
		ms->held_pending = true;
	}
}

void milter_session_pump(struct milter_session *ms)
{
	if (!ms->held_pending || !ms->sending)
		return;
	char piece[SEND_PIECE];
	while (!ms->ops->backend_backlogged(ms->owner)) {
		ssize_t n = message_store_read(ms->sending, ms->send_off, piece, sizeof(piece));
		if (n < 0) {
			forget_message(ms);
			ms->ops->failed(ms->owner, "reading the held message back");
			return;
		}
		struct buf b = {0};
		bool ok = n > 0 ? message_wire_append(&b, piece, (size_t)n, &ms->send_bol)
				: message_wire_end(&b, ms->send_bol);
		if (!ok) {
			buf_free(&b);
			forget_message(ms);
			ms->ops->failed(ms->owner, "out of memory");
			return;
		}
		size_t len;
		char *data = buf_take(&b, &len);
		ms->ops->send_backend(ms->owner, data, len);
		if (ms->machine->act.close) {
			/* The write failed at once: the machine closes. */
			ms->ops->step(ms->owner);
			return;
		}
		if (n == 0) {
			forget_message(ms);
			smtp_machine_held_sent(ms->machine);
			ms->ops->step(ms->owner);
			return;
		}
		ms->send_off += (uint64_t)n;
	}
}
