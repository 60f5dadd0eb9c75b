/* stream_write.c — counted writes (stream_write.h). */
#include "proxy/stream_write.h"

#include <errno.h>
#include <stdlib.h>

struct write_req {
	uv_write_t req;
	char *data;
	size_t len;
	size_t cap;		 /* of data, for the pool */
	struct chunk_pool *pool; /* where data goes back; NULL: free() */
	size_t *inflight;
	void *owner;
	stream_write_done done;
};

static void write_cb(uv_write_t *req, int status)
{
	struct write_req *wr = (struct write_req *)req;
	*wr->inflight -= wr->len;
	void *owner = wr->owner;
	stream_write_done done = wr->done;
	uv_stream_t *stream = req->handle;
	chunk_pool_put(wr->pool, wr->data, wr->cap);
	free(wr);
	done(owner, stream, status);
}

int stream_write(uv_stream_t *stream, char *data, size_t len, size_t *inflight, void *owner,
		 stream_write_done done)
{
	return stream_write_pooled(stream, data, len, 0, NULL, inflight, owner, done);
}

int stream_write_pooled(uv_stream_t *stream, char *data, size_t len, size_t cap,
			struct chunk_pool *pool, size_t *inflight, void *owner,
			stream_write_done done)
{
	if (!len) {
		chunk_pool_put(pool, data, cap);
		return 0;
	}
	size_t done_now = 0;
	if (pool) {
		/* A chunk is usually taken by the kernel at once (issue 12):
		 * then it goes straight back to the pool, still in the cache,
		 * with no request, no callback and nothing counted in flight.
		 * uv_try_write() refuses while earlier writes are queued, so
		 * the order holds. */
		uv_buf_t b = uv_buf_init(data, (unsigned)len);
		int n = uv_try_write(stream, &b, 1);
		if (n == (int)len || (n < 0 && n != UV_EAGAIN)) {
			chunk_pool_put(pool, data, cap);
			return n < 0 ? n : 0;
		}
		if (n > 0)
			done_now = (size_t)n;
	}
	struct write_req *wr = malloc(sizeof(*wr));
	if (!wr) {
		chunk_pool_put(pool, data, cap);
		return UV_ENOMEM;
	}
	wr->data = data;
	wr->len = len - done_now;
	wr->cap = cap;
	wr->pool = pool;
	wr->inflight = inflight;
	wr->owner = owner;
	wr->done = done;
	uv_buf_t b = uv_buf_init(data + done_now, (unsigned)(len - done_now));
	int rc = uv_write(&wr->req, stream, &b, 1, write_cb);
	if (rc != 0) {
		chunk_pool_put(pool, data, cap);
		free(wr);
		return rc;
	}
	*inflight += wr->len;
	return 0;
}
