/* message_store.h — one held message (issue 14): in memory up to a bound,
 * then in an unlinked temporary file; never more than a size limit.
 *
 * Holds the message as RFC 5322 text (lines end in CRLF), not as SMTP wire
 * data: message_store_append_wire() removes the dot-stuffing the DATA
 * scanner wrote and the final ".\r\n". Blocking file I/O on a local
 * temporary file only; never libuv, never a socket, never logs.
 *
 * Ownership: the store owns its memory buffer and its file descriptor;
 * message_store_free() releases both (and the file vanishes, being
 * unlinked from the start).
 */
#ifndef TLSFRONT_MILTER_MESSAGE_STORE_H
#define TLSFRONT_MILTER_MESSAGE_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "proxy/smtp/buf.h"

#define MESSAGE_STORE_MEM_DEFAULT (256 * 1024) /* held in memory up to this */

struct message_store {
	struct buf mem;	     /* the first bytes, up to mem_limit */
	int fd;		     /* -1 until the message outgrows mem_limit */
	uint64_t size;	     /* bytes held (memory and file) */
	size_t mem_limit;    /* past this, the rest goes to the file */
	uint64_t size_limit; /* 0: none; past it, too_big and nothing more held */
	bool too_big;	     /* more than size_limit bytes were offered */
	int error;	     /* errno of a failed file operation, 0 if none */
	const char *tmpdir;  /* borrowed; NULL: $TMPDIR or /tmp */
	/* message_store_append_wire() state (private) */
	unsigned char wire_state;
	bool ended; /* the wire form's final ".\r\n" was seen */
};

/* mem_limit 0 holds everything in the file. The temporary file is made
 * with O_TMPFILE (mode 0600, O_CLOEXEC) in tmpdir, else $TMPDIR, else /tmp;
 * where O_TMPFILE is not supported, with mkostemp() and an unlink() at
 * once. */
void message_store_init(struct message_store *s, size_t mem_limit, uint64_t size_limit,
			const char *tmpdir);
/* Releases memory and file; the store is empty and reusable (init not
 * needed again). */
void message_store_reset(struct message_store *s);
/* As message_store_reset(): safe to call twice. */
void message_store_free(struct message_store *s);

/* Appends message text. Returns 0; -1 when the file cannot be made or
 * written (s->error holds errno) or memory runs out (ENOMEM). Past
 * size_limit it holds nothing more, sets too_big and still returns 0 (the
 * caller reads too_big at the end of the message and refuses it then): the
 * first size_limit bytes are held, never more. An error sticks: every
 * later append returns -1 until message_store_reset(). */
int message_store_append(struct message_store *s, const char *p, size_t n);

/* Appends SMTP wire data as the DATA scanner writes it (dot-stuffed, CRLF
 * lines, ending with ".\r\n"): removes one leading dot of each line and the
 * final ".\r\n" line (then sets s->ended; bytes after it are ignored).
 * Any split of the input gives the same result. Returns as
 * message_store_append(). */
int message_store_append_wire(struct message_store *s, const char *p, size_t n);

/* Copies up to len bytes from offset into out. Returns the bytes copied (0
 * at the end), or -1 on a read error (s->error). */
ssize_t message_store_read(struct message_store *s, uint64_t offset, char *out, size_t len);

#endif
