/* message_store.c — the held message of message_store.h (issue 14).
 *
 * The first mem_limit bytes live in s->mem; the rest in an unlinked
 * temporary file (O_TMPFILE, else mkostemp + unlink), whose offset 0 is
 * message offset mem.len. Nothing past size_limit is ever held.
 *
 * append_wire's machine: W_BOL at the start of a line (after CRLF), W_DOT
 * after a leading dot (dropped), W_DOT_CR after ".\r" at a line start (the
 * CR held back: with a following LF it is the end of data), W_MID inside a
 * line, W_CR after a CR inside a line. Lines end only at CRLF (RFC 5321
 * §4.5.2), as the DATA scanner writes them. Bytes go to the store in runs,
 * cut only where a dot is dropped or a CR is held back, so any split of the
 * input gives the same text.
 *
 * Must never: hold more than size_limit bytes, keep more than mem_limit in
 * memory, leave a named file behind, do anything but blocking I/O on its
 * own temporary file (no socket, no libuv, no logging).
 */
#include "proxy/milter/message_store.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { W_BOL = 0, W_DOT, W_DOT_CR, W_MID, W_CR };

#define MEM_MIN_GROW 4096

void message_store_init(struct message_store *s, size_t mem_limit, uint64_t size_limit,
			const char *tmpdir)
{
	memset(s, 0, sizeof(*s));
	s->fd = -1;
	s->mem_limit = mem_limit;
	s->size_limit = size_limit;
	s->tmpdir = tmpdir;
	s->wire_state = W_BOL;
}

void message_store_reset(struct message_store *s)
{
	buf_free(&s->mem);
	if (s->fd >= 0)
		close(s->fd);
	s->fd = -1;
	s->size = 0;
	s->too_big = false;
	s->error = 0;
	s->wire_state = W_BOL;
	s->ended = false;
}

void message_store_free(struct message_store *s)
{
	message_store_reset(s);
}

/* The directory of the temporary file: the store's, $TMPDIR, /tmp. */
static const char *tmp_dir(const struct message_store *s)
{
	if (s->tmpdir && *s->tmpdir)
		return s->tmpdir;
	const char *env = secure_getenv("TMPDIR");
	if (env && *env)
		return env;
	return "/tmp";
}

/* An unlinked read-write file in dir, close-on-exec; -1 and errno. */
static int open_tmp(const char *dir)
{
#ifdef O_TMPFILE
	int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	if (fd >= 0)
		return fd;
		/* Not supported by this file system or kernel (EOPNOTSUPP,
		 * EISDIR, ...): a named file, unlinked at once. */
#endif
	char path[PATH_MAX];
	int len = snprintf(path, sizeof(path), "%s/tlsfront-msg-XXXXXX", dir);
	if (len < 0 || (size_t)len >= sizeof(path)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	int tfd = mkostemp(path, O_CLOEXEC);
	if (tfd < 0)
		return -1;
	if (unlink(path) < 0) {
		int e = errno;
		close(tfd);
		errno = e;
		return -1;
	}
	return tfd;
}

static int fail(struct message_store *s, int e)
{
	s->error = e ? e : EIO;
	return -1;
}

/* Writes all n bytes at the file's end (its position: only writes move it). */
static int write_file(struct message_store *s, const char *p, size_t n)
{
	if (s->fd < 0) {
		s->fd = open_tmp(tmp_dir(s));
		if (s->fd < 0)
			return fail(s, errno);
	}
	while (n > 0) {
		ssize_t w = write(s->fd, p, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return fail(s, errno);
		}
		if (w == 0)
			return fail(s, ENOSPC);
		p += w;
		n -= (size_t)w;
		s->size += (uint64_t)w;
	}
	return 0;
}

/* Appends n bytes to memory; the caller keeps mem.len + n <= mem_limit. */
static int write_mem(struct message_store *s, const char *p, size_t n)
{
	struct buf *b = &s->mem;
	size_t need = b->len + n;
	if (need > b->cap) {
		size_t cap = b->cap ? b->cap : MEM_MIN_GROW;
		while (cap < need && cap <= SIZE_MAX / 2)
			cap *= 2;
		if (cap > s->mem_limit)
			cap = s->mem_limit;
		if (cap < need)
			cap = need;
		char *d = realloc(b->data, cap);
		if (!d)
			return fail(s, ENOMEM);
		b->data = d;
		b->cap = cap;
	}
	memcpy(b->data + b->len, p, n);
	b->len += n;
	s->size += n;
	return 0;
}

int message_store_append(struct message_store *s, const char *p, size_t n)
{
	if (s->error)
		return -1;
	if (s->too_big || n == 0)
		return 0;
	if (s->size_limit && n > s->size_limit - s->size) {
		n = (size_t)(s->size_limit - s->size);
		s->too_big = true;
	}
	if (s->fd < 0 && s->mem.len < s->mem_limit) {
		size_t k = s->mem_limit - s->mem.len;
		if (k > n)
			k = n;
		if (write_mem(s, p, k) < 0)
			return -1;
		p += k;
		n -= k;
	}
	if (n > 0)
		return write_file(s, p, n);
	return 0;
}

int message_store_append_wire(struct message_store *s, const char *p, size_t n)
{
	if (s->ended)
		return 0;
	if (s->error)
		return -1;
	size_t start = 0, i = 0; /* [start, i): bytes taken, not yet stored */
	unsigned char st = s->wire_state;

	while (i < n) {
		char c = p[i];
		switch (st) {
		case W_MID: {
			const char *cr = memchr(p + i, '\r', n - i);
			if (!cr) {
				i = n;
				break;
			}
			i = (size_t)(cr - p) + 1;
			st = W_CR;
			break;
		}
		case W_CR:
			i++;
			st = c == '\n' ? W_BOL : c == '\r' ? W_CR : W_MID;
			break;
		case W_BOL:
			if (c == '.') {
				/* The stuffed dot: store what came before, drop it. */
				if (message_store_append(s, p + start, i - start) < 0)
					return -1;
				i++;
				start = i;
				st = W_DOT;
				break;
			}
			i++;
			st = c == '\r' ? W_CR : W_MID;
			break;
		case W_DOT:
			if (c == '\r') {
				/* Held back: ".\r\n" is the end of data. */
				if (message_store_append(s, p + start, i - start) < 0)
					return -1;
				i++;
				start = i;
				st = W_DOT_CR;
				break;
			}
			i++;
			st = W_MID;
			break;
		case W_DOT_CR:
			if (c == '\n') {
				s->wire_state = W_BOL;
				s->ended = true;
				return 0;
			}
			/* A CR inside the line after all: store it, and go on
			 * as after any CR (c not yet taken). */
			if (message_store_append(s, "\r", 1) < 0)
				return -1;
			st = W_CR;
			break;
		}
	}
	s->wire_state = st;
	return message_store_append(s, p + start, n - start);
}

ssize_t message_store_read(struct message_store *s, uint64_t offset, char *out, size_t len)
{
	if (offset >= s->size || len == 0)
		return 0;
	if (len > s->size - offset)
		len = (size_t)(s->size - offset);
	if (len > SSIZE_MAX)
		len = SSIZE_MAX;
	size_t done = 0;
	if (offset < s->mem.len) {
		done = s->mem.len - (size_t)offset;
		if (done > len)
			done = len;
		memcpy(out, s->mem.data + offset, done);
	}
	while (done < len) {
		uint64_t foff = offset + done - s->mem.len;
		if (s->fd < 0 || foff > (uint64_t)INT64_MAX) {
			fail(s, EIO);
			return -1;
		}
		ssize_t r = pread(s->fd, out + done, len - done, (off_t)foff);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			fail(s, errno);
			return -1;
		}
		if (r == 0) {
			fail(s, EIO); /* shorter than written: never expected */
			return -1;
		}
		done += (size_t)r;
	}
	return (ssize_t)done;
}
