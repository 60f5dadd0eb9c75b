/* app.c — configuration generations (app.h): the configuration file, the
 * credentials built from it (with the shared session ticket key) and the
 * resolved backend address. Errors found after the file was read (a
 * priority string GnuTLS refuses, a backend host that does not resolve)
 * name the key's FILE:LINE too (SPEC §2). */
#include "proxy/app.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/log.h"

struct app *app_load(const char *path, struct creds_tickets *tickets, char *err, size_t errlen)
{
	struct app *a = calloc(1, sizeof(*a));
	if (!a) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	atomic_init(&a->refs, 1);
	if (config_load(path, &a->cfg, err, errlen) < 0) {
		free(a);
		return NULL;
	}
	char where[300];
	char cerr[512];
	if (creds_check_priority(a->cfg.tls.priority, cerr, sizeof(cerr)) < 0) {
		config_where(&a->cfg, &a->cfg.source.tls_priority, where, sizeof(where));
		snprintf(err, errlen, "%s: tls.priority: %s", where, cerr);
		app_unref(a);
		return NULL;
	}
	struct creds_pair pairs[TF_MAX_CERTS];
	for (size_t i = 0; i < a->cfg.tls.n_certs; i++) {
		pairs[i].cert_file = a->cfg.tls.certs[i].cert;
		pairs[i].key_file = a->cfg.tls.certs[i].key;
		pairs[i].ocsp_file = a->cfg.tls.certs[i].ocsp;
	}
	size_t ocsp_failed = 0;
	struct creds_params p = {
	    .pairs = pairs,
	    .n_pairs = a->cfg.tls.n_certs,
	    .server_name = a->cfg.server_name,
	    .priority = a->cfg.tls.priority,
	    .tickets = tickets,
	    .ticket_lifetime = a->cfg.tls.session_cache_timeout,
	    .ocsp_failed = &ocsp_failed,
	};
	a->creds = creds_new(&p, &a->self_signed, cerr, sizeof(cerr));
	if (a->creds && a->cfg.outbound.enabled && a->cfg.outbound.tls == TF_OUT_TLS_VERIFY &&
	    creds_load_trust(a->creds, a->cfg.outbound.ca_file, cerr, sizeof(cerr)) < 0) {
		creds_unref(a->creds);
		a->creds = NULL;
	}
	if (!a->creds && ocsp_failed > 0) {
		config_where(&a->cfg, &a->cfg.tls.certs[ocsp_failed - 1].ocsp_source, where,
			     sizeof(where));
		snprintf(err, errlen, "%s: tls.certificates[%zu].ocsp: %s", where, ocsp_failed - 1,
			 cerr);
		app_unref(a);
		return NULL;
	}
	if (!a->creds) {
		snprintf(err, errlen, "%s: %s", path, cerr);
		app_unref(a);
		return NULL;
	}
	if (address_resolve(a->cfg.backend.address, false, &a->backend, cerr, sizeof(cerr)) < 0) {
		config_where(&a->cfg, &a->cfg.source.backend_address, where, sizeof(where));
		snprintf(err, errlen, "%s: backend.address: %s", where, cerr);
		app_unref(a);
		return NULL;
	}
	return a;
}

void app_ref(struct app *a)
{
	atomic_fetch_add(&a->refs, 1);
}

void app_unref(struct app *a)
{
	if (!a || atomic_fetch_sub(&a->refs, 1) != 1)
		return;
	creds_unref(a->creds);
	config_free(&a->cfg);
	free(a);
}

static bool same_list(char *const *a, size_t na, char *const *b, size_t nb)
{
	if (na != nb)
		return false;
	for (size_t i = 0; i < na; i++)
		if (strcmp(a[i], b[i]) != 0)
			return false;
	return true;
}

static void keep_bool(bool *next, bool old, const char *key)
{
	if (*next == old)
		return;
	log_msg(TF_LOG_WARN, "event=reload key=%s note=\"needs a restart; the old value stays\"",
		key);
	*next = old;
}

static void warn_list(char *const *a, size_t na, char *const *b, size_t nb, const char *key)
{
	if (!same_list(a, na, b, nb))
		log_msg(TF_LOG_WARN,
			"event=reload key=%s note=\"needs a restart; the old value stays\"", key);
}

void app_keep_restart_keys(struct app *next, const struct app *old)
{
	struct tf_config *n = &next->cfg;
	const struct tf_config *o = &old->cfg;
	/* Listen addresses, workers and user are used only at start: the new
	 * values are simply not used, with a warning. The rest is copied back. */
	warn_list(n->inbound.tcp.listen, n->inbound.tcp.n_listen, o->inbound.tcp.listen,
		  o->inbound.tcp.n_listen, "inbound.tcp.listen");
	warn_list(n->inbound.tls.listen, n->inbound.tls.n_listen, o->inbound.tls.listen,
		  o->inbound.tls.n_listen, "inbound.tls.listen");
	warn_list(n->outbound.listen, n->outbound.n_listen, o->outbound.listen,
		  o->outbound.n_listen, "outbound.listen");
	warn_list(n->metrics.listen, n->metrics.n_listen, o->metrics.listen, o->metrics.n_listen,
		  "metrics.listen");
	if (n->workers != o->workers)
		log_msg(TF_LOG_WARN,
			"event=reload key=workers note=\"needs a restart; the old value stays\"");
	if (strcmp(n->user, o->user) != 0)
		log_msg(TF_LOG_WARN,
			"event=reload key=user note=\"needs a restart; the old value stays\"");
	keep_bool(&n->inbound.tcp.enabled, o->inbound.tcp.enabled, "inbound.tcp.enabled");
	keep_bool(&n->inbound.tls.enabled, o->inbound.tls.enabled, "inbound.tls.enabled");
	keep_bool(&n->outbound.enabled, o->outbound.enabled, "outbound.enabled");
	keep_bool(&n->inbound.tcp.proxy_protocol, o->inbound.tcp.proxy_protocol,
		  "inbound.tcp.proxy_protocol");
	keep_bool(&n->inbound.tls.proxy_protocol, o->inbound.tls.proxy_protocol,
		  "inbound.tls.proxy_protocol");
}
