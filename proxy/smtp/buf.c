/* buf.c — the growable byte buffer of buf.h. Never does I/O. */
#include "proxy/smtp/buf.h"

#include <stdlib.h>
#include <string.h>

bool buf_reserve(struct buf *b, size_t n)
{
	if (b->len + n <= b->cap)
		return true;
	size_t cap = b->cap ? b->cap : 256;
	while (cap < b->len + n)
		cap *= 2;
	char *d = realloc(b->data, cap);
	if (!d)
		return false;
	b->data = d;
	b->cap = cap;
	return true;
}

bool buf_append(struct buf *b, const void *p, size_t n)
{
	if (n == 0)
		return true;
	if (!buf_reserve(b, n))
		return false;
	memcpy(b->data + b->len, p, n);
	b->len += n;
	return true;
}

bool buf_append_str(struct buf *b, const char *s)
{
	return buf_append(b, s, strlen(s));
}

void buf_consume(struct buf *b, size_t n)
{
	if (n >= b->len) {
		b->len = 0;
		return;
	}
	memmove(b->data, b->data + n, b->len - n);
	b->len -= n;
}

void buf_free(struct buf *b)
{
	free(b->data);
	b->data = NULL;
	b->len = b->cap = 0;
}

char *buf_take(struct buf *b, size_t *len)
{
	char *d = b->data;
	*len = b->len;
	b->data = NULL;
	b->len = b->cap = 0;
	return d;
}
