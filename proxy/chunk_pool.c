/* chunk_pool.c — the free list of chunk_pool.h. Never does I/O. */
#include "proxy/chunk_pool.h"

#include <stdlib.h>

bool chunk_pool_fill(struct chunk_pool *p, struct buf *b)
{
	if (b->data)
		return true;
	char *d = p->n ? p->free[--p->n] : malloc(CHUNK_POOL_SIZE);
	if (!d)
		return false;
	b->data = d;
	b->len = 0;
	b->cap = CHUNK_POOL_SIZE;
	return true;
}

void chunk_pool_put(struct chunk_pool *p, char *data, size_t cap)
{
	if (p && data && cap == CHUNK_POOL_SIZE && p->n < CHUNK_POOL_KEEP)
		p->free[p->n++] = data;
	else
		free(data);
}

void chunk_pool_free(struct chunk_pool *p)
{
	while (p->n)
		free(p->free[--p->n]);
}
