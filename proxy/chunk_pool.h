/* chunk_pool.h — a worker's free list of equal-sized write buffers.
 *
 * Issue 12: DATA flowed through buffers malloc'd per record and freed in the
 * write callback; at these sizes every round trip to malloc cost page faults.
 * A session now takes a chunk when message content starts to flow, fills it
 * (struct buf with cap CHUNK_POOL_SIZE), writes it, and the write callback
 * hands it back here. Idle sessions hold no chunk.
 *
 * Per worker, one thread: no locks. Never holds more than CHUNK_POOL_KEEP
 * free chunks; anything that is not exactly a chunk (a buffer that grew past
 * it, a small reply) is simply freed. Never does I/O.
 */
#ifndef TLSFRONT_PROXY_CHUNK_POOL_H
#define TLSFRONT_PROXY_CHUNK_POOL_H

#include <stddef.h>

#include "proxy/smtp/buf.h"

/* A chunk is written when the next piece of content might not fit; it holds
 * a whole 256 KiB read with room for the worst case of a 16 KiB piece
 * (session.c checks), so a read makes one write. */
#define CHUNK_POOL_SIZE ((256 + 40) * 1024)
#define CHUNK_POOL_KEEP 8

struct chunk_pool {
	char *free[CHUNK_POOL_KEEP]; /* owned */
	unsigned n;
};

/* Points an empty b (data NULL) at a chunk; returns false when out of
 * memory (b stays empty and grows by malloc as before). */
bool chunk_pool_fill(struct chunk_pool *p, struct buf *b);

/* Takes back data (malloc'd, cap bytes): kept when it is a chunk and there
 * is room, freed otherwise. p may be NULL: then it is freed. */
void chunk_pool_put(struct chunk_pool *p, char *data, size_t cap);

/* Frees every chunk kept. */
void chunk_pool_free(struct chunk_pool *p);

#endif
