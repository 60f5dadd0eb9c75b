/* message_edit.h — a held message's header section, and the changes milters
 * ask for at end of message (issue 14), applied to make the message the
 * backend receives.
 *
 * Pure functions over message_store.h: never a socket, never libuv, never
 * logs. Header names compare case-insensitively (RFC 5322); a header value
 * is kept as it is in the message, folding included (continuation lines
 * joined with "\r\n"), without the colon and without the one space after
 * it.
 *
 * Ownership: struct message_headers and struct message_edits own every
 * string they hold; their _free() releases them.
 */
#ifndef TLSFRONT_MILTER_MESSAGE_EDIT_H
#define TLSFRONT_MILTER_MESSAGE_EDIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proxy/milter/message_store.h"

#define MESSAGE_HEADERS_MAX	   1000	     /* header fields read from one message */
#define MESSAGE_HEADER_SECTION_MAX (1 << 20) /* bytes of header section read */

struct message_header {
	char *name;  /* owned */
	char *value; /* owned; folding kept as "\r\n" + whitespace */
	/* Where the field's lines are in the store (final line end
	 * included): message_edit_apply() copies an unchanged field byte for
	 * byte, so a signature over it (DKIM simple) still holds. */
	uint64_t raw_offset;
	size_t raw_len;
};

struct message_headers {
	struct message_header *h; /* owned array */
	size_t n, cap;
	uint64_t body_offset; /* where the body starts in the store (after the
			       * empty line; the store's size when none) */
};

/* Reads the header section of s (up to the first empty line, at most
 * MESSAGE_HEADERS_MAX fields and MESSAGE_HEADER_SECTION_MAX bytes; a line
 * that is not a header field and not a continuation ends the section as
 * Postfix does: it starts the body). A field name is printable ASCII but
 * ':', and may be followed by spaces or tabs before the colon (RFC 5322
 * obsolete syntax; the name is kept without them). Past either bound the
 * section ends before the field that does not fit, which starts the body
 * as a non-header line does. out need not be initialised; it is empty
 * after an error. Returns 0, -1 on a read error or out of memory. */
int message_headers_read(struct message_store *s, struct message_headers *out);
void message_headers_free(struct message_headers *hs);

enum header_edit_kind {
	HEADER_ADD = 0, /* SMFIR_ADDHEADER: append at the end of the header */
	HEADER_INSERT,	/* SMFIR_INSHEADER: insert before field number index (0: first) */
	HEADER_CHANGE,	/* SMFIR_CHGHEADER: the index-th (1-based) field of that name;
			 * an empty value deletes it; no such field: added (as
			 * libmilter documents for Postfix) */
};

struct header_edit {
	enum header_edit_kind kind;
	unsigned index;
	char *name;  /* owned */
	char *value; /* owned; "\n" inside it is written as "\r\n" */
};

struct rcpt_edit {
	char *addr; /* owned; as the milter sent it, angle brackets or not */
	char *args; /* owned; ESMTP arguments (SMFIR_ADDRCPT_PAR) or NULL */
};

struct message_edits {
	struct header_edit *headers; /* owned array, in the order received */
	size_t n_headers, cap_headers;
	bool replace_body;	     /* SMFIR_REPLBODY seen: body is the new body */
	struct message_store body;   /* the replacement body (raw text, CRLF) */
	char *new_sender;	     /* SMFIR_CHGFROM, owned; NULL: unchanged */
	char *new_sender_args;	     /* its ESMTP arguments, owned; NULL: none */
	struct rcpt_edit *add_rcpts; /* owned array */
	size_t n_add, cap_add;
	char **del_rcpts; /* owned array of owned addresses */
	size_t n_del, cap_del;
	char *quarantine; /* SMFIR_QUARANTINE reason, owned; NULL: none */
	bool discard;	  /* a milter answered discard */
	bool body_cr;	  /* private: the last body byte given was a CR */
};

/* Each list (header edits, added and deleted recipients) holds at most
 * this many: a milter cannot make tlsfront grow without bound. */
#define MESSAGE_EDITS_MAX 10000

/* Initialises edits (the replacement body store with these limits). */
void message_edits_init(struct message_edits *e, size_t mem_limit, uint64_t size_limit,
			const char *tmpdir);
/* Releases everything; e is then as message_edits_init() left it (same
 * limits), ready for the next message. */
void message_edits_free(struct message_edits *e);
/* Each returns 0, or -1 when out of memory or a list is full
 * (MESSAGE_EDITS_MAX; errno E2BIG); message_edits_body() also when the
 * body's temporary file fails (e->body.error). A NULL name, value or
 * address is taken as "". message_edits_chgfrom() replaces an earlier
 * change; message_edits_quarantine() keeps the first reason. */
int message_edits_header(struct message_edits *e, enum header_edit_kind kind, unsigned index,
			 const char *name, const char *value);
/* SMFIR_REPLBODY: may come in several pieces; the first one starts a new
 * body (earlier replacements by another milter are dropped). Body bytes
 * use "\r\n" or bare "\n" line ends (libmilter's smfi_replacebody passes
 * what the filter gives): bare "\n" are written as "\r\n". */
int message_edits_body(struct message_edits *e, const char *p, size_t n, bool first);
int message_edits_add_rcpt(struct message_edits *e, const char *addr, const char *args);
int message_edits_del_rcpt(struct message_edits *e, const char *addr);
int message_edits_chgfrom(struct message_edits *e, const char *addr, const char *args);
int message_edits_quarantine(struct message_edits *e, const char *reason);
/* True when the message itself changes (headers, body, quarantine). */
bool message_edits_change_content(const struct message_edits *e);

/* The header tlsfront adds for a quarantined message, so the backend (or
 * its operator) can act on it: "X-Tlsfront-Quarantine: REASON". */
#define MESSAGE_QUARANTINE_HEADER "X-Tlsfront-Quarantine"

/* Writes the message the backend receives into out (raw text): in's
 * header section with the header edits applied in order (then the
 * quarantine header, if any), an empty line, and in's body or the
 * replacement body. out must be initialised; returns 0, -1 on a read or
 * write error or out of memory, 1 when out became too_big (also when in
 * or the replacement body is too_big: part of it is missing).
 *
 * Unchanged fields are copied byte for byte; a milter's field is written
 * "name: value" ("name:" for an empty value), its line breaks ("\n",
 * "\r\n" or a lone "\r") as CRLF, a space put before a continuation line
 * that does not start with white space, empty lines and trailing breaks
 * left out. An edit whose name is empty or holds ':', white space, a
 * control or a non-ASCII byte is skipped (it could only break the header).
 * Index edge cases: INSERT past the last field appends; CHANGE with index
 * 0 is taken as 1 (Postfix); deleting a missing field does nothing.
 * Every line of out ends in CRLF: a bare CR or LF anywhere becomes CRLF. */
int message_edit_apply(struct message_store *in, const struct message_headers *hs,
		       const struct message_edits *e, struct message_store *out);

/* Dot-stuffing for sending: appends to out the SMTP wire form of n raw
 * bytes, continuing from *bol (the output stands at the start of a line:
 * initially true). message_wire_end() appends the end of data (a CRLF
 * first when the text did not end with one, then ".\r\n"). Return false
 * when out of memory (then nothing was appended).
 *
 * Only dots are added: the text must already have CRLF line ends, as the
 * store filled by message_store_append_wire() from the DATA scanner and
 * the output of message_edit_apply() have. A line start is any byte after
 * an LF, so a bare LF could never hide an unstuffed dot. */
bool message_wire_append(struct buf *out, const char *p, size_t n, bool *bol);
bool message_wire_end(struct buf *out, bool bol);

#endif
