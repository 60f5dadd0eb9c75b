/* session.h — one inbound connection: the client, the backend, one timer.
 *
 * The session owns both endpoints and carries out what the SMTP machine
 * decides (it makes no SMTP decision itself). One strategy step
 * (session_step) decides after every event what to write, read, pause or
 * close. One way to die: session_close() closes every handle, and the memory
 * is freed in the last close callback (conn_life.h: release()).
 *
 * Ownership, member by member:
 *   life                    first member (conn_life.h): the worker, the
 *                           client (life.accepted), the timer (life.timer),
 *                           and open_handles, which counts every libuv
 *                           handle until its close callback runs; the last
 *                           one frees the session.
 *   backend                 a libuv handle counted in life (conn_life_ref)
 *                           once backend_open is set (on the TLS port, after
 *                           the handshake).
 *   client_ep, backend_ep   the two sides (endpoint.h): their streams point
 *                           at client and backend; client_ep.tls is owned
 *                           (NULL until STARTTLS or the TLS port) and freed
 *                           with the session; backend_ep.tls stays NULL.
 *   machine                 owned; freed with the session.
 *   milt                    owned (milter_session.h), only with
 *                           inbound.milters; freed with the session.
 *   app                     one reference to the configuration and credentials
 *                           generation, dropped when the session is freed.
 */
#ifndef TLSFRONT_PROXY_SESSION_H
#define TLSFRONT_PROXY_SESSION_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "proxy/conn_life.h"
#include "proxy/endpoint.h"
#include "proxy/milter_session.h"
#include "proxy/proxy_protocol.h"
#include "proxy/smtp/smtp_machine.h"
#include "proxy/worker.h"

struct session {
	struct conn_life life;	     /* first: the handles' data is the session */
	struct session *prev, *next; /* the worker's list */
	char id[20];
	enum listener_kind kind;

	union {
		uv_tcp_t tcp;
		uv_pipe_t pipe;
	} backend;
	uv_connect_t connect_req;

	struct endpoint client_ep, backend_ep;

	struct smtp_machine machine;
	struct milter_session *milt; /* owned; NULL without inbound.milters */
	struct app *app; /* the generation this session started with */

	bool backend_open; /* the backend handle was initialised */
	bool backend_connected;
	bool backend_gone;		/* closed, failed, or dropped */
	bool handshaking;		/* client TLS handshake in progress */
	bool backend_lost_in_handshake; /* told to the machine after the handshake */
	bool closing;
	enum smtp_close_reason reason;

	char client_addr[64];	       /* peer as "ADDR:PORT", for the log */
	struct sockaddr_storage peer;  /* the client (from a PROXY header if any) */
	struct sockaddr_storage local; /* where it connected to */
	bool admitted;		       /* counted by conn_limits */
	bool held;		       /* holds a place in conn_limits' total */
	bool awaiting_proxy;	       /* reading a balancer's PROXY header */
	/* The PROXY header so far: PP_HEADER_MAX bytes, owned, malloc'd only
	 * while awaiting_proxy (2 KiB less in every other session, issue 12);
	 * freed once the header is read, else by the last close callback. */
	unsigned char *pp_buf;
	size_t pp_len;
	uint64_t bytes_in, bytes_out;
	uint64_t connect_started; /* uv_hrtime() of the backend connect */
	unsigned logged_messages; /* messages already logged as delivered */
};

/* Starts a session on fd, a connection accepted on the listener (the
 * session owns fd from here on). */
void session_accept(struct listener *l, int fd);

/* fd, accepted on the listener when the process has no descriptor left for
 * a session: tells the client 421 4.7.0 where it can read it (a plaintext
 * listener without PROXY protocol, the outbound listener), without waiting
 * and without a session. The caller closes fd. */
void session_refuse_fd(struct listener *l, int fd);

/* Ends a session for a reason the proxy sees (client gone, TLS error). */
void session_close(struct session *s, enum smtp_close_reason reason);

/* Shutdown grace period over: 421 4.3.2 and close (SPEC §6). */
void session_shutdown(struct session *s);

#endif
