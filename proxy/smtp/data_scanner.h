/* data_scanner.h — message content after 354: the one true end of data and
 * the SMTP smuggling defence of SPEC §3.7.
 *
 * Reads content as RFC 5321 §4.5.2 says (lines end only at CRLF, one leading
 * dot removed), turns every bare CR and bare LF into CRLF, and writes the
 * result dot-stuffed again, so the backend can never see an end of data the
 * client did not send. In reject mode it stops writing at the first bare CR or
 * LF and reports it. Streaming: any split of the input gives the same output.
 * Never does I/O and never allocates but through the output buffer.
 */
#ifndef TLSFRONT_SMTP_DATA_SCANNER_H
#define TLSFRONT_SMTP_DATA_SCANNER_H

#include <stdbool.h>
#include <stddef.h>

#include "proxy/smtp/buf.h"

struct data_scanner {
	unsigned char state; /* private */
	bool out_bol;	     /* the output stands at the start of a line */
	bool reject;	     /* bare_newlines = "reject" */
	bool bare_seen;	     /* a bare CR or LF was seen */
};

void data_scanner_init(struct data_scanner *d, bool reject);

/* Scans n content bytes and appends the canonical content to out (in reject
 * mode, nothing after the first bare CR/LF). Stops right after the true end
 * of data: *end is then set, the final ".\r\n" has been appended (unless
 * bare_seen in reject mode) and the return value is the number of bytes
 * consumed; the rest belongs to the command phase. Returns (size_t)-1 when
 * out of memory. */
size_t data_scanner_feed(struct data_scanner *d, const char *p, size_t n, struct buf *out,
			 bool *end);

#endif
