/* outbound_priv.h — what the three files of an outbound session share:
 * outbound.c (reading, writing, TLS on the peer leg and the strategy step),
 * outbound_start.c (accept, the next hop's addresses, the peer's connect)
 * and outbound_milters.c (the session's side of its milters).
 *
 * Never included outside those three files: everything else sees
 * outbound.h only.
 */
#ifndef TLSFRONT_PROXY_OUTBOUND_PRIV_H
#define TLSFRONT_PROXY_OUTBOUND_PRIV_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

#include "proxy/metrics.h"
#include "proxy/outbound.h"

static inline uv_stream_t *legacy_stream(struct outbound *s)
{
	return (uv_stream_t *)&s->life.accepted;
}

static inline uv_stream_t *peer_stream(struct outbound *s)
{
	return (uv_stream_t *)&s->peer[s->cur];
}

/* outbound.c */

/* Carries out outbound_nego's and the machine's actions and decides which
 * side to read; every event ends in it. */
void outbound_step(struct outbound *s);
void outbound_update_reads(struct outbound *s);
void outbound_close(struct outbound *s, enum smtp_close_reason reason);
/* The peer closed or failed. */
void outbound_peer_lost(struct outbound *s);
bool outbound_peer_backlogged(struct outbound *s);
/* Plaintext for the peer, through TLS when the leg has it; takes data. */
void outbound_send_peer(struct outbound *s, char *data, size_t len);
void outbound_timer_cb(uv_timer_t *t);
/* The release of conn_life.h: the last close callback. */
void outbound_free(struct conn_life *l);
/* The worker's own counter block (metrics.h). */
struct metrics_block *outbound_mblock(const struct outbound *s);

/* outbound_start.c */

/* Connects to the current address of the next hop. */
void outbound_connect_peer(struct outbound *s);
/* That address did not take the connection: the next one, or 421 4.4.1. */
void outbound_peer_connect_failed(struct outbound *s, const char *error);

/* outbound_milters.c */

/* The milters' view of the legacy server (milter_session.h), then connect. */
void outbound_start_milters(struct outbound *s);

#endif
