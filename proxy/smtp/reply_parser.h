/* reply_parser.h — collects one backend reply (multi-line replies included)
 * from a byte stream split anywhere.
 *
 * Lines end in CRLF or a bare LF; the collected text always uses CRLF. Every
 * line must start with three digits followed by '-', ' ' or its end. Bounded:
 * a line longer than REPLY_LINE_MAX or a reply longer than REPLY_MAX is
 * malformed. Never does I/O.
 */
#ifndef TLSFRONT_SMTP_REPLY_PARSER_H
#define TLSFRONT_SMTP_REPLY_PARSER_H

#include <stddef.h>

#include "proxy/smtp/buf.h"

#define REPLY_LINE_MAX 4096
#define REPLY_MAX      (64 * 1024)

enum reply_status { REPLY_MORE = 0, REPLY_DONE, REPLY_BAD };

struct reply_parser {
	struct buf text;   /* the reply so far, CRLF line ends; owned */
	size_t line_start; /* offset of the line being collected in text */
	int code;	   /* the first line's code, once known */
	unsigned lines;	   /* complete lines in text */
};

/* Consumes bytes up to the end of one reply. Returns the number consumed and
 * sets *status: REPLY_DONE when text holds a complete reply (the caller reads
 * it, then calls reply_parser_reset), REPLY_BAD when the backend broke the
 * protocol or memory ran out. */
size_t reply_parser_feed(struct reply_parser *r, const char *p, size_t n,
			 enum reply_status *status);
void reply_parser_reset(struct reply_parser *r);
void reply_parser_free(struct reply_parser *r);

#endif
