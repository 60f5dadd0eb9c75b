/* stream_write.h — one uv_write of a malloc'd buffer, counted in flight.
 *
 * Both session kinds (inbound session.c, outbound.c) write this way. The
 * bytes stay counted in *inflight until libuv calls back, also when the write
 * completed at once: libuv defers even those callbacks, so its write queue
 * size alone would let a burst of reads allocate without bound before any
 * buffer is freed. Backpressure reads *inflight. Never makes SMTP decisions.
 */
#ifndef TLSFRONT_PROXY_STREAM_WRITE_H
#define TLSFRONT_PROXY_STREAM_WRITE_H

#include <stddef.h>
#include <uv.h>

#include "proxy/chunk_pool.h"

/* Called when the write ended (status < 0: failed or cancelled), after the
 * buffer is freed and *inflight lowered. */
typedef void (*stream_write_done)(void *owner, uv_stream_t *stream, int status);

/* Takes ownership of data (malloc'd; freed whatever happens). Returns 0, or
 * a negative libuv error when the write could not even start (done is not
 * called then). len 0 frees data and returns 0. */
int stream_write(uv_stream_t *stream, char *data, size_t len, size_t *inflight, void *owner,
		 stream_write_done done);

/* The same for a buffer of cap bytes that goes back to pool when written
 * (chunk_pool_put; pool NULL: freed). With a pool the bytes are first
 * offered to the kernel at once (uv_try_write): when all are taken, done is
 * never called and nothing stays in flight; only a rest is queued. */
int stream_write_pooled(uv_stream_t *stream, char *data, size_t len, size_t cap,
			struct chunk_pool *pool, size_t *inflight, void *owner,
			stream_write_done done);

#endif
