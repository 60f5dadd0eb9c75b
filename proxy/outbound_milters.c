/* outbound_milters.c — an outbound session's side of its milters (issue
 * 14): the callbacks milter_session.h calls (write to the peer, is it
 * backlogged, the peer leg's TLS for the macros, a failed milter) and the
 * start of the conversation, once the peer has been reached.
 *
 * Never decides what a verdict means: the machine's milter gate does.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/log.h"
#include "proxy/outbound.h"
#include "proxy/outbound_priv.h"

static void milt_send_peer(void *owner, char *data, size_t len)
{
	outbound_send_peer(owner, data, len);
}

static bool milt_backlogged(void *owner)
{
	struct outbound *s = owner;
	return s->closing || !s->peer_connected || s->peer_gone || outbound_peer_backlogged(s);
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
	outbound_peer_lost(s);
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
void outbound_start_milters(struct outbound *s)
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
