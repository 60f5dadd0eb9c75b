/* conn_life.h — the lifecycle both session kinds share: the accepted
 * connection, the one timer, the count of open handles, the graceful close.
 *
 * An inbound session (session.c) and an outbound session (outbound.c) live
 * the same way: a listener accepts a connection, one timer bounds every
 * wait, more handles open on the way (the backend, the peers, a pending
 * getaddrinfo), and the session dies by closing them all; the last close
 * callback frees it (STYLE.md point 3). This is that machinery and nothing
 * else. What an event means, which timeout to arm, when to close and for
 * what reason stays with the owner.
 *
 * Never makes an SMTP or policy decision, never logs, never reads or writes
 * a byte of the dialogue, never frees the owner other than through
 * release() from the last conn_life_unref (the last close callback, or the
 * callback of a request counted like a handle).
 *
 * The owner embeds a struct conn_life as its FIRST member, and every handle
 * and request it opens has data pointing at the owner (so at the conn_life
 * as well): the shared callbacks find the conn_life from h->data. Each owner
 * checks this with a static assertion.
 *
 * Ownership, member by member:
 *   worker        not owned: the worker whose loop runs the session; it
 *                 counts the session from conn_life_init() until release()
 *                 has returned (worker_session_ended).
 *   accepted      the accepted connection (inbound: the client; outbound:
 *                 the legacy server); a libuv handle counted in open_handles.
 *   timer         the one timer, counted in open_handles: the owner's
 *                 timeouts (conn_life_arm) until the close, then the linger.
 *   shutdown_req  the graceful shutdown of accepted (conn_life_linger).
 *   open_handles  handles whose close callback has not run, and requests
 *                 that must call back before the owner may go
 *                 (conn_life_ref/conn_life_unref); at 0 release() runs.
 *   release       frees the owner and all it owns; called exactly once, by
 *                 the last conn_life_unref.
 *   timeout       the owner's timer callback for conn_life_arm.
 *   start_ms      loop time when the connection was accepted.
 */
#ifndef TLSFRONT_PROXY_CONN_LIFE_H
#define TLSFRONT_PROXY_CONN_LIFE_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "proxy/worker.h"

struct conn_life {
	struct worker *worker;
	uv_tcp_t accepted;
	uv_timer_t timer;
	uv_shutdown_t shutdown_req;
	int open_handles;
	void (*release)(struct conn_life *l);
	uv_timer_cb timeout;
	uint64_t start_ms;
};

/* Initialises accepted and the timer (data pointing at the owner, which
 * starts with l), counts both in open_handles and the session in w. The
 * owner must end it by closing both (conn_life_close_now or the close
 * sequence below), whatever happens next. */
void conn_life_init(struct conn_life *l, struct worker *w, uv_timer_cb timeout,
		    void (*release)(struct conn_life *l));

/* Starts (or restarts) the timer: timeout after seconds. */
void conn_life_arm(struct conn_life *l, unsigned seconds);

/* Seconds since conn_life_init, for the summary line. */
double conn_life_seconds(const struct conn_life *l);

/* The libuv allocator for every read of the owner: the worker's buffer. */
void conn_life_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *b);

/* One more thing (a handle, a request) the owner must outlive. */
void conn_life_ref(struct conn_life *l);

/* That thing ended; the last one frees the owner (release) and tells the
 * worker. The owner must not be touched after a call that may be the last. */
void conn_life_unref(struct conn_life *l);

/* Closes a handle of the owner (data pointing at it, counted by
 * conn_life_ref) unless it is already closing; its close callback unrefs. */
void conn_life_close_handle(uv_handle_t *h);

/* Reads the addresses of accepted: the peer, and where it connected to
 * (local may be NULL). Returns 0, or the libuv error when the connection was
 * reset before they could be read (a balancer's health check does that); it
 * is then nobody to greet, log or count against the limits, and the caller
 * closes it at once. Logs the loss itself (debug, event=connect_lost). */
int conn_life_addresses(struct conn_life *l, const char *id, struct sockaddr_storage *peer,
			struct sockaddr_storage *local);

/* Closes accepted and the timer now. */
void conn_life_close_now(struct conn_life *l);

/* The first step of the close: stops reading accepted and returns true, or,
 * when accepted is already closing, closes the timer and returns false
 * (nothing more to do). */
bool conn_life_begin_close(struct conn_life *l);

/* The last step of the close (after conn_life_begin_close returned true):
 * lets what was written to accepted reach it, then closes accepted and the
 * timer; the timer bounds how long a peer that does not read can hold us.
 * at_once (the peer is gone) or a shutdown that cannot start closes both
 * now. */
void conn_life_linger(struct conn_life *l, bool at_once);

#endif
