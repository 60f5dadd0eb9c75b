/* endpoint.c — one side of a session (endpoint.h).
 *
 * The mechanics both session kinds share, and nothing else: what a failure
 * means is returned to the owner or handed to its callbacks. Never closes a
 * handle, never frees the owner.
 */
#include "proxy/endpoint.h"

#include <stdlib.h>

int endpoint_write(struct endpoint *e, char *data, size_t len, void *owner, stream_write_done done)
{
	return stream_write(e->stream, data, len, &e->inflight, owner, done);
}

int endpoint_write_pooled(struct endpoint *e, char *data, size_t len, size_t cap,
			  struct chunk_pool *pool, void *owner, stream_write_done done)
{
	return stream_write_pooled(e->stream, data, len, cap, pool, &e->inflight, owner, done);
}

int endpoint_flush_tls(struct endpoint *e, void *owner, stream_write_done done)
{
	size_t len;
	char *data = buf_take(&e->tls->out, &len);
	return endpoint_write(e, data, len, owner, done);
}

int endpoint_send(struct endpoint *e, char *data, size_t len, void *owner, stream_write_done done)
{
	if (!e->tls)
		return endpoint_write(e, data, len, owner, done);
	if (!e->tls->established) {
		free(data); /* nothing plaintext may cross a TLS handshake */
		return 0;
	}
	int rc = tls_io_send(e->tls, data, len);
	free(data);
	if (rc != TLSIO_OK)
		return ENDPOINT_TLS_FAILED;
	return endpoint_flush_tls(e, owner, done);
}

void endpoint_free_tls(struct endpoint *e)
{
	if (!e->tls)
		return;
	tls_io_free(e->tls);
	free(e->tls);
	e->tls = NULL;
}

void endpoint_set_reading(struct endpoint *e, bool want, uv_alloc_cb alloc, uv_read_cb cb)
{
	if (want == e->reading)
		return;
	if (want)
		uv_read_start(e->stream, alloc, cb);
	else
		uv_read_stop(e->stream);
	e->reading = want;
}

void endpoint_pump(struct endpoint *e, const struct endpoint_pump_ops *ops, void *owner)
{
	if (e->pumping)
		return;
	e->pumping = true;
	/* The callbacks may close the session or, on outbound's plaintext
	 * retry, free e->tls: the condition is checked again each round. */
	while (e->tls && e->tls->established && ops->wanted(owner)) {
		/* Each record is read where GnuTLS decrypted it (issue 12);
		 * the packet outlives e->tls should a callback free it. */
		gnutls_packet_t pkt;
		const char *data = NULL;
		ssize_t n = tls_io_recv_packet(e->tls, &pkt, &data);
		if (n == TLSIO_AGAIN)
			break;
		if (e->tls->renegotiation_refused) {
			e->tls->renegotiation_refused = false;
			ops->renegotiation_refused(owner);
		}
		if (n == TLSIO_EOF || n == TLSIO_ERROR) {
			ops->ended(owner, (int)n);
			break;
		}
		if (n > 0)
			ops->records(owner, data, (size_t)n);
		if (pkt)
			gnutls_packet_deinit(pkt);
	}
	e->pumping = false;
}
