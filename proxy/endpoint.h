/* endpoint.h — one side of a session: its stream, its optional TLS, the
 * bytes written to it and not yet called back, whether it is being read.
 *
 * Both session kinds hold two endpoints (inbound session.c: the client and
 * the backend; outbound.c: the legacy server and the peer) and do the same
 * mechanical things with them: write a malloc'd buffer, send plaintext
 * through TLS once it is established, flush TLS output, drain decrypted
 * records while the owner wants input, start and stop reads. What a failure
 * means (close the session, lose the peer, fall back) is the owner's
 * decision: every function here reports and never decides.
 *
 * Never makes an SMTP or TLS policy decision, never closes a handle, never
 * frees its owner.
 *
 * Ownership, member by member:
 *   stream    not owned: the libuv handle lives in the owner, which closes
 *             it. The owner may point it at another handle (outbound's
 *             plaintext retry).
 *   tls       owned once set (NULL in plaintext): endpoint_free_tls()
 *             releases it; the owner calls it before it frees itself.
 *   inflight  bytes handed to libuv on stream and not yet called back
 *             (stream_write.h); the owner's backpressure reads it.
 *   reading   uv_read_start is in force on stream (endpoint_set_reading).
 *   pumping   inside endpoint_pump: no re-entry.
 */
#ifndef TLSFRONT_PROXY_ENDPOINT_H
#define TLSFRONT_PROXY_ENDPOINT_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

#include "proxy/stream_write.h"
#include "proxy/tls_io.h"

struct endpoint {
	uv_stream_t *stream;
	struct tls_io *tls;
	size_t inflight;
	bool reading;
	bool pumping;
};

/* endpoint_send() found TLS failing; the reason is in e->tls->error. Not a
 * libuv error code. */
#define ENDPOINT_TLS_FAILED 1

/* One stream_write() of data (malloc'd, owned from here on) to e->stream,
 * counted in e->inflight. Returns 0 or a negative libuv error (done is not
 * called then). */
int endpoint_write(struct endpoint *e, char *data, size_t len, void *owner, stream_write_done done);

/* endpoint_write() of a buffer that goes back to pool when written
 * (stream_write_pooled()). */
int endpoint_write_pooled(struct endpoint *e, char *data, size_t len, size_t cap,
			  struct chunk_pool *pool, void *owner, stream_write_done done);

/* Writes out the ciphertext e->tls holds (endpoint_write's return). */
int endpoint_flush_tls(struct endpoint *e, void *owner, stream_write_done done);

/* Plaintext for this side (data malloc'd, owned from here on): written as is
 * without TLS, dropped while the handshake runs (nothing plaintext may cross
 * it), else encrypted and flushed. Returns 0, ENDPOINT_TLS_FAILED, or a
 * negative libuv error from the write. */
int endpoint_send(struct endpoint *e, char *data, size_t len, void *owner, stream_write_done done);

/* Releases e->tls (if any) and sets it to NULL. */
void endpoint_free_tls(struct endpoint *e);

/* Starts or stops reading e->stream when want differs from e->reading. */
void endpoint_set_reading(struct endpoint *e, bool want, uv_alloc_cb alloc, uv_read_cb cb);

/* What endpoint_pump() asks of the owner. Each callback may close the
 * session or free e->tls; the pump checks e->tls again after each. */
struct endpoint_pump_ops {
	/* Does the owner want this side's input now? Checked before each record. */
	bool (*wanted)(void *owner);
	/* Decrypted bytes of one record (valid until the callback returns). */
	void (*records)(void *owner, const char *p, size_t n);
	/* The peer asked for renegotiation and GnuTLS queued the refusal in
	 * e->tls->out: the owner flushes it. */
	void (*renegotiation_refused)(void *owner);
	/* close_notify (TLSIO_EOF) or an error (TLSIO_ERROR, reason in
	 * e->tls->error): the pump stops after this. */
	void (*ended)(void *owner, int why);
};

/* Decrypts what is waiting, record by record, and hands each to
 * ops->records while TLS is established and ops->wanted says yes. Does
 * nothing when already pumping. */
void endpoint_pump(struct endpoint *e, const struct endpoint_pump_ops *ops, void *owner);

#endif
