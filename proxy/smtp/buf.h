/* buf.h — a growable byte buffer with a hard capacity bound.
 *
 * Used by the session machine for the bytes it holds (an incomplete command
 * line, a reply being collected) and for the bytes it hands to the I/O layer.
 * Every append checks the bound. Never does I/O.
 */
#ifndef TLSFRONT_SMTP_BUF_H
#define TLSFRONT_SMTP_BUF_H

#include <stdbool.h>
#include <stddef.h>

struct buf {
	char *data; /* owned; NULL while empty and never grown */
	size_t len;
	size_t cap;
};

/* Appends n bytes; returns false (and appends nothing) when out of memory. */
bool buf_append(struct buf *b, const void *p, size_t n);
bool buf_append_str(struct buf *b, const char *s);
/* Makes room for n more bytes at data + len; returns false when out of
 * memory. */
bool buf_reserve(struct buf *b, size_t n);
/* Drops the first n bytes. */
void buf_consume(struct buf *b, size_t n);
/* Releases the memory; the buffer is empty and reusable. */
void buf_free(struct buf *b);
/* Hands the contents to the caller (who frees them with free()) and leaves
 * the buffer empty. */
char *buf_take(struct buf *b, size_t *len);

#endif
