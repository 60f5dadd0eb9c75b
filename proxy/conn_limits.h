/* conn_limits.h — limits.max_connections and max_connections_per_ip across
 * every worker (SPEC §3.1).
 *
 * One table shared by all workers, behind one mutex: it is touched twice per
 * connection (admit, release), never on the data path. Addresses are keyed
 * by their IP only (no port). Never decides what to reply: the caller asks
 * and the session machine answers 421 4.7.0.
 */
#ifndef TLSFRONT_PROXY_CONN_LIMITS_H
#define TLSFRONT_PROXY_CONN_LIMITS_H

#include <stdbool.h>
#include <sys/socket.h>

/* Sets the limits (at start, before any worker runs). Returns 0 or -1. */
int conn_limits_init(unsigned max_total, unsigned max_per_ip);
/* Changes the limits (reload); live connections stay counted. Returns 0, or
 * -1 when out of memory (the old limits stay). */
int conn_limits_set(unsigned max_total, unsigned max_per_ip);
void conn_limits_free(void);

/* Counts a connection from addr if both limits allow it. Returns true when
 * admitted; the caller must then call conn_limits_release once. */
bool conn_limits_admit(const struct sockaddr *addr);
void conn_limits_release(const struct sockaddr *addr);

/* How many slots of the per-IP table are in use (live or tombstone): the
 * length of the probe paths, for tests and diagnostics. */
size_t conn_limits_slots_in_use(void);

/* A connection whose client address is not known yet (a balancer's PROXY
 * header is awaited) counts toward max_connections only: conn_limits_hold
 * returns true when there was room. The hold then ends exactly once, by
 * conn_limits_admit_held (the header named the client: the hold becomes an
 * admission of addr when both limits allow it, else it is dropped; returns
 * whether addr was admitted) or by conn_limits_unhold. */
bool conn_limits_hold(void);
bool conn_limits_admit_held(const struct sockaddr *addr);
void conn_limits_unhold(void);

#endif
