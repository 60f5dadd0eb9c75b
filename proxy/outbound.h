/* outbound.h — one outbound connection (SPEC §4): the legacy server, the
 * peer (the next hop), one timer.
 *
 * The session owns both endpoints and carries out what outbound_nego (the
 * start: greeting, EHLO, STARTTLS, the plaintext retry) and then the
 * smtp_machine (the spliced dialogue) decide; it makes no SMTP or policy
 * decision itself. One way to die: outbound_close() closes every handle, and
 * the memory is freed in the last close callback (conn_life.h: release()).
 *
 * Ownership, member by member:
 *   life                    first member (conn_life.h): the worker, the
 *                           legacy server (life.accepted), the timer
 *                           (life.timer), and open_handles, which counts
 *                           every libuv handle until its close callback runs
 *                           (a pending getaddrinfo counts too); the last one
 *                           frees the session.
 *   peer[]                  libuv handles, each counted in life
 *                           (conn_life_ref) once peer_open[i]; peer[cur] is
 *                           live; an address that refuses the connection
 *                           moves cur to the next handle and the next of
 *                           dests[], and so does the plaintext retry of
 *                           "negotiated" (to the address that answered).
 *   legacy_ep, peer_ep      the two sides (endpoint.h): legacy_ep.stream
 *                           points at life.accepted, peer_ep.stream at the
 *                           live peer[cur] once it is connecting; peer_ep.tls is
 *                           owned (NULL until the peer's 220 to STARTTLS,
 *                           freed again by the plaintext retry) and freed
 *                           with the session; legacy_ep.tls stays NULL.
 *                           peer_ep.inflight counts writes to both peer
 *                           handles.
 *   nego, machine           owned; freed with the session.
 *   app                     one reference to the generation the session
 *                           started with, dropped when it is freed.
 */
#ifndef TLSFRONT_PROXY_OUTBOUND_H
#define TLSFRONT_PROXY_OUTBOUND_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "proxy/conn_life.h"
#include "proxy/endpoint.h"
#include "proxy/milter_session.h"
#include "proxy/smtp/outbound_nego.h"
#include "proxy/smtp/smtp_machine.h"
#include "proxy/worker.h"

/* The addresses of a next hop tried in turn, as Postfix tries them. */
#define OUTBOUND_MAX_ADDRESSES 4
/* One handle per address, and one for the plaintext retry. */
#define OUTBOUND_PEER_HANDLES (OUTBOUND_MAX_ADDRESSES + 1)

struct outbound {
	struct conn_life life;	      /* first: the handles' data is the session */
	struct outbound *prev, *next; /* the worker's list */
	char id[20];

	uv_tcp_t peer[OUTBOUND_PEER_HANDLES];
	unsigned cur; /* the live peer handle */
	uv_connect_t connect_req[OUTBOUND_PEER_HANDLES];
	uv_getaddrinfo_t gai;

	struct outbound_nego nego;
	struct smtp_machine machine;
	struct milter_session *milt; /* owned; NULL without outbound.milters */
	struct endpoint legacy_ep, peer_ep;
	struct app *app;

	bool spliced; /* nego done: the smtp_machine runs the dialogue */
	bool peer_open[OUTBOUND_PEER_HANDLES];
	bool peer_connected;
	bool peer_gone;
	bool handshaking;
	bool closing;
	bool fallback;
	bool retrying; /* the plaintext retry of "negotiated" is under way */
	bool verified;
	bool policy_refused; /* §4.3: the peer did not meet outbound.tls */
	bool admitted;
	bool resolving; /* gai pending */
	enum smtp_close_reason reason;

	char legacy_addr[64];
	char peer_addr[64];
	char host[256]; /* the next hop's host ("" for original-destination) */
	char sni[256];	/* the name sent, "none" */
	struct sockaddr_storage legacy_ss;
	struct sockaddr_storage dests[OUTBOUND_MAX_ADDRESSES];
	unsigned n_dests, dest_i;     /* dests[dest_i] is being tried or answered */
	uint64_t bytes_in, bytes_out; /* to and from the legacy server (§7.5) */
	unsigned logged_messages;
};

/* Starts an outbound session on fd, a connection accepted on the outbound
 * listener (the session owns fd from here on). */
void outbound_accept(struct listener *l, int fd);

/* Shutdown grace period over: 421 4.3.2 and close (SPEC §6). */
void outbound_shutdown(struct outbound *s);

#endif
