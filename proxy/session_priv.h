/* session_priv.h — what the three files of an inbound session share:
 * session.c (reading, writing, TLS and the strategy step), session_start.c
 * (accept, the PROXY header, the backend's connect) and session_milters.c
 * (the session's side of its milters).
 *
 * Never included outside those three files: everything else sees
 * session.h only.
 */
#ifndef TLSFRONT_PROXY_SESSION_PRIV_H
#define TLSFRONT_PROXY_SESSION_PRIV_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

#include "proxy/metrics.h"
#include "proxy/session.h"

static inline uv_stream_t *client_stream(struct session *s)
{
	return (uv_stream_t *)&s->life.accepted;
}

static inline uv_stream_t *backend_stream(struct session *s)
{
	return (uv_stream_t *)&s->backend;
}

/* session.c */

/* Carries out the machine's actions and decides which side to read; every
 * event ends in it. */
void session_step(struct session *s);
void session_update_reads(struct session *s);
/* Takes ownership of data (malloc'd). */
void session_write_to(struct session *s, struct endpoint *e, char *data, size_t len);
void session_begin_tls(struct session *s);
/* Bytes from the client's socket: to TLS or, in plaintext, to the machine. */
void session_client_bytes(struct session *s, const char *p, size_t n);
void session_close_backend(struct session *s);
bool session_backend_backlogged(struct session *s);
void session_timer_cb(uv_timer_t *t);
/* The release of conn_life.h: the last close callback. */
void session_free(struct conn_life *l);
/* The worker's own counter block (metrics.h) and this session's listener. */
struct metrics_block *session_mblock(const struct session *s);
enum metrics_listener session_mlistener(const struct session *s);

/* session_start.c */

/* The client may now be greeted: over a limit it gets 421 4.7.0, else the
 * backend is connected and its greeting relayed. */
void session_after_greeting_ready(struct session *s);
/* Reads the PROXY header a load balancer sends first (§3.3, §7.10). */
void session_read_proxy_header(struct session *s, const char *p, size_t n);

/* session_milters.c */

/* The milters' view of the client (milter_session.h), then connect. */
void session_start_milters(struct session *s);

#endif
