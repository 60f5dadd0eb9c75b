/* app.h — one generation of what sessions run with: the configuration, the
 * TLS credentials and the resolved backend address (SPEC §5 reload).
 *
 * Refcounted: main holds the current generation, each worker holds the one
 * it hands to new sessions, and each session holds the one it started with,
 * so a reload (SIGHUP) never changes a session in flight. The last reference
 * frees the configuration and drops the credentials. Never makes SMTP
 * decisions.
 */
#ifndef TLSFRONT_PROXY_APP_H
#define TLSFRONT_PROXY_APP_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

#include "certs/credentials.h"
#include "policy/config.h"
#include "proxy/address.h"

struct app {
	atomic_uint refs;
	unsigned generation;  /* 1 at start, +1 per successful reload */
	struct tf_config cfg; /* owned */
	struct creds *creds;  /* one reference, owned */
	struct tf_addr backend;
	bool self_signed;
	/* Workers yet to take this generation after a reload: the last one
	 * to take it logs event=reload status=ok (worker.c). */
	atomic_uint adopt_pending;
};

/* Loads FILE, its certificates and the backend address into a new
 * generation with one reference; its credentials use the shared session
 * ticket key tickets (they take a reference). On error returns NULL and
 * writes the reason (FILE:LINE: ... for the configuration, tls.priority and
 * backend.address included) into err. */
struct app *app_load(const char *path, struct creds_tickets *tickets, char *err, size_t errlen);

void app_ref(struct app *a);
void app_unref(struct app *a); /* NULL is a no-op */

/* Keeps the keys that need a restart (listen addresses, enabled, workers,
 * user, proxy_protocol) at their values in old, logging a warning for each
 * one the new file changes. */
void app_keep_restart_keys(struct app *next, const struct app *old);

#endif
