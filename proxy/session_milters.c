/* session_milters.c — an inbound session's side of its milters (issue 14):
 * the callbacks milter_session.h calls (write to the backend, is it
 * backlogged, the client's TLS and AUTH for the macros, a failed milter)
 * and the start of the conversation.
 *
 * Never decides what a verdict means: the machine's milter gate does.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/log.h"
#include "proxy/session.h"
#include "proxy/session_priv.h"

static void milt_send_backend(void *owner, char *data, size_t len)
{
	struct session *s = owner;
	if (s->closing || !s->backend_connected || s->backend_gone) {
		free(data);
		return;
	}
	session_write_to(s, &s->backend_ep, data, len);
}

static bool milt_backlogged(void *owner)
{
	struct session *s = owner;
	return s->closing || !s->backend_connected || s->backend_gone ||
	       session_backend_backlogged(s);
}

static void milt_refresh(void *owner, struct milter_session_info *info)
{
	struct session *s = owner;
	const struct tls_io *t = s->client_ep.tls;
	bool tls = t && t->established;
	/* {tls_version} as Postfix writes it ("TLSv1.3"): GnuTLS says "TLS1.3". */
	const char *v = tls ? tls_io_version(t) : NULL;
	if (v && strncmp(v, "TLS", 3) == 0 && v[3] != 'v') {
		snprintf(s->milt->tls_version, sizeof(s->milt->tls_version), "TLSv%s", v + 3);
		v = s->milt->tls_version;
	}
	info->tls_version = v;
	info->cipher = tls ? tls_io_cipher(t) : NULL;
	info->cipher_bits = tls ? tls_io_cipher_bits(t) : 0;
	info->auth_authen = smtp_machine_user(&s->machine);
	info->auth_type = smtp_machine_auth_type(&s->machine);
}

static void milt_failed(void *owner, const char *why)
{
	struct session *s = owner;
	log_msg(TF_LOG_ERROR, "event=milter_error id=%s error=\"%s\"", s->id, why);
	if (!s->backend_gone) {
		s->backend_gone = true;
		session_close_backend(s);
	}
	smtp_machine_backend_closed(&s->machine);
	session_step(s);
}

static void milt_step(void *owner)
{
	session_step(owner);
}

static const struct milter_session_ops milt_ops = {
    .send_backend = milt_send_backend,
    .backend_backlogged = milt_backlogged,
    .refresh = milt_refresh,
    .failed = milt_failed,
    .step = milt_step,
};

/* The milters' view of the client (milter_session.h), then connect. */
void session_start_milters(struct session *s)
{
	const struct tf_config *cfg = &s->app->cfg;
	s->milt =
	    milter_session_new(s->life.accepted.loop, cfg->inbound.milters, cfg->inbound.n_milters,
			       cfg->limits.message_size_limit, &s->machine, s, &milt_ops, s->id);
	if (!s->milt) {
		smtp_machine_backend_unavailable(&s->machine);
		return;
	}
	milter_session_start(s->milt, cfg->server_name, (struct sockaddr *)&s->peer,
			     (struct sockaddr *)&s->local, NULL);
}
