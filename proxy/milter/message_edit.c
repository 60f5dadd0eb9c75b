/* message_edit.c — the header section reader, the milters' changes and
 * their application, and the dot-stuffing for sending, of message_edit.h
 * (issue 14).
 *
 * The header section is read as Postfix's cleanup reads it: a field starts
 * with a name (printable ASCII but ':', optionally followed by spaces or
 * tabs) and a colon, a line that starts with a space or a tab continues
 * the field before it, an empty line ends the section, and any other line
 * (or the limits of message_edit.h) starts the body there.
 *
 * message_edit_apply() writes through a line-end normaliser: whatever the
 * input or the milters gave, every line of its output ends in CRLF (a bare
 * CR or LF becomes CRLF), so the dot-stuffing of message_wire_append()
 * alone keeps the backend from seeing an end of data tlsfront did not
 * write (the SMTP smuggling defence of SPEC §3.7).
 *
 * Must never: write a line end other than CRLF from message_edit_apply(),
 * let a milter's header value or name start a new header field or end the
 * header section, hold a string it does not own, do network I/O or log.
 */
#include "proxy/milter/message_edit.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define COPY_CHUNK (16 * 1024) /* bytes copied from a store at a time */

static bool is_wsp(char c)
{
	return c == ' ' || c == '\t';
}

/* ---- the header section --------------------------------------------- */

/* The length of the field name that p[0, n) starts with (without the
 * white space that may stand before the colon), 0 when the line is not a
 * header field (Postfix's is_header_buf()). */
static size_t header_name_len(const char *p, size_t n)
{
	size_t len = 0;
	bool space = false;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)p[i];
		if (c == ':')
			return len;
		if (c == ' ' || c == '\t') {
			if (len == 0)
				return 0;
			space = true;
			continue;
		}
		if (c <= 32 || c >= 127 || space)
			return 0;
		len++;
	}
	return 0;
}

/* A name a milter may give: printable ASCII without ':' or space. */
static bool valid_name(const char *name)
{
	if (!*name)
		return false;
	for (const unsigned char *p = (const unsigned char *)name; *p; p++)
		if (*p <= 32 || *p >= 127 || *p == ':')
			return false;
	return true;
}

/* Reads the store a chunk at a time, for the byte-wise header parser. */
struct reader {
	struct message_store *s;
	uint64_t off; /* store offset of buf[0] */
	size_t pos, len;
	char buf[8192];
};

/* The next byte (0..255), -1 at the end, -2 on a read error. */
static int reader_byte(struct reader *r)
{
	if (r->pos == r->len) {
		r->off += r->len;
		r->pos = r->len = 0;
		ssize_t got = message_store_read(r->s, r->off, r->buf, sizeof(r->buf));
		if (got < 0)
			return -2;
		if (got == 0)
			return -1;
		r->len = (size_t)got;
	}
	return (unsigned char)r->buf[r->pos++];
}

/* Adds the field whose lines (final line end included, if any) are raw,
 * starting at store offset off; its name is raw[0, name_len). */
static int add_field(struct message_headers *hs, const struct buf *raw, uint64_t off,
		     size_t name_len)
{
	if (hs->n == hs->cap) {
		size_t cap = hs->cap ? 2 * hs->cap : 32;
		if (cap > MESSAGE_HEADERS_MAX)
			cap = MESSAGE_HEADERS_MAX;
		struct message_header *h = realloc(hs->h, cap * sizeof(*h));
		if (!h)
			return -1;
		hs->h = h;
		hs->cap = cap;
	}
	const char *p = raw->data;
	size_t n = raw->len;
	/* Without the final line end. */
	if (n > 0 && p[n - 1] == '\n')
		n--;
	if (n > 0 && p[n - 1] == '\r')
		n--;
	const char *colon = memchr(p, ':', n);
	size_t v = (size_t)(colon - p) + 1;
	if (v < n && p[v] == ' ')
		v++;
	/* The value, its line ends made "\r\n": at most twice as long. */
	char *value = malloc(2 * (n - v) + 1);
	char *name = strndup(p, name_len);
	if (!value || !name) {
		free(value);
		free(name);
		return -1;
	}
	size_t k = 0;
	for (size_t i = v; i < n; i++) {
		if (p[i] == '\n' && (i == v || p[i - 1] != '\r'))
			value[k++] = '\r';
		value[k++] = p[i];
	}
	value[k] = '\0';
	hs->h[hs->n++] = (struct message_header){
	    .name = name, .value = value, .raw_offset = off, .raw_len = raw->len};
	return 0;
}

int message_headers_read(struct message_store *s, struct message_headers *out)
{
	memset(out, 0, sizeof(*out));
	struct reader *r = malloc(sizeof(*r));
	if (!r)
		return -1;
	r->s = s;
	r->off = 0;
	r->pos = r->len = 0;
	struct buf line = {0}, field = {0};
	uint64_t pos = 0, field_start = 0; /* offsets of the line and the field */
	size_t name_len = 0;
	bool have_field = false;
	int rc = -1;

	for (;;) {
		/* One line, at most what is left of the section's bound and
		 * the two bytes of an empty line (which it does not count). */
		uint64_t budget = MESSAGE_HEADER_SECTION_MAX + 2 - pos;
		bool eol = false, over = false;
		int c;
		line.len = 0;
		while ((c = reader_byte(r)) >= 0) {
			if (line.len == budget) {
				over = true;
				break;
			}
			char ch = (char)c;
			if (!buf_append(&line, &ch, 1))
				goto out;
			if (ch == '\n') {
				eol = true;
				break;
			}
		}
		if (c == -2)
			goto out;
		if (line.len == 0) {
			/* The end of the message: all of it is header. */
			if (have_field && add_field(out, &field, field_start, name_len) < 0)
				goto out;
			out->body_offset = s->size;
			break;
		}
		size_t content = line.len;
		if (eol) {
			content--;
			if (content > 0 && line.data[content - 1] == '\r')
				content--;
		}
		if ((over || pos + line.len > MESSAGE_HEADER_SECTION_MAX) &&
		    !(content == 0 && eol)) {
			/* Too long: the section ends before the field this
			 * line belongs to. */
			if (have_field && is_wsp(line.data[0])) {
				out->body_offset = field_start;
			} else {
				if (have_field && add_field(out, &field, field_start, name_len) < 0)
					goto out;
				out->body_offset = pos;
			}
			break;
		}
		if (content == 0 && eol) {
			/* The empty line: the body follows it. */
			if (have_field && add_field(out, &field, field_start, name_len) < 0)
				goto out;
			out->body_offset = pos + line.len;
			break;
		}
		if (have_field && is_wsp(line.data[0])) {
			if (!buf_append(&field, line.data, line.len))
				goto out;
			pos += line.len;
			continue;
		}
		size_t nl = header_name_len(line.data, content);
		if (have_field && add_field(out, &field, field_start, name_len) < 0)
			goto out;
		have_field = false;
		if (nl == 0 || out->n == MESSAGE_HEADERS_MAX) {
			/* Not a header field (or one too many): the body. */
			out->body_offset = pos;
			break;
		}
		field.len = 0;
		if (!buf_append(&field, line.data, line.len))
			goto out;
		field_start = pos;
		name_len = nl;
		have_field = true;
		pos += line.len;
	}
	rc = 0;
out:
	buf_free(&line);
	buf_free(&field);
	free(r);
	if (rc < 0)
		message_headers_free(out);
	return rc;
}

void message_headers_free(struct message_headers *hs)
{
	for (size_t i = 0; i < hs->n; i++) {
		free(hs->h[i].name);
		free(hs->h[i].value);
	}
	free(hs->h);
	memset(hs, 0, sizeof(*hs));
}

/* ---- the edits ------------------------------------------------------- */

void message_edits_init(struct message_edits *e, size_t mem_limit, uint64_t size_limit,
			const char *tmpdir)
{
	memset(e, 0, sizeof(*e));
	message_store_init(&e->body, mem_limit, size_limit, tmpdir);
}

void message_edits_free(struct message_edits *e)
{
	for (size_t i = 0; i < e->n_headers; i++) {
		free(e->headers[i].name);
		free(e->headers[i].value);
	}
	free(e->headers);
	for (size_t i = 0; i < e->n_add; i++) {
		free(e->add_rcpts[i].addr);
		free(e->add_rcpts[i].args);
	}
	free(e->add_rcpts);
	for (size_t i = 0; i < e->n_del; i++)
		free(e->del_rcpts[i]);
	free(e->del_rcpts);
	free(e->new_sender);
	free(e->new_sender_args);
	free(e->quarantine);
	size_t mem_limit = e->body.mem_limit;
	uint64_t size_limit = e->body.size_limit;
	const char *tmpdir = e->body.tmpdir;
	message_store_free(&e->body);
	message_edits_init(e, mem_limit, size_limit, tmpdir);
}

/* Room for one more element in *arr (n used of *cap, each size bytes);
 * -1 when out of memory or at MESSAGE_EDITS_MAX. */
static int grow(void *arr, size_t n, size_t *cap, size_t size)
{
	if (n < *cap)
		return 0;
	if (n >= MESSAGE_EDITS_MAX) {
		errno = E2BIG;
		return -1;
	}
	size_t c = *cap ? 2 * *cap : 8;
	if (c > MESSAGE_EDITS_MAX)
		c = MESSAGE_EDITS_MAX;
	void *p = realloc(*(void **)arr, c * size);
	if (!p)
		return -1;
	*(void **)arr = p;
	*cap = c;
	return 0;
}

/* strdup() that keeps NULL: 0, or -1 when out of memory. */
static int dup_or_null(char **dst, const char *src)
{
	*dst = NULL;
	if (!src)
		return 0;
	*dst = strdup(src);
	return *dst ? 0 : -1;
}

int message_edits_header(struct message_edits *e, enum header_edit_kind kind, unsigned index,
			 const char *name, const char *value)
{
	if (grow(&e->headers, e->n_headers, &e->cap_headers, sizeof(*e->headers)) < 0)
		return -1;
	char *n = strdup(name ? name : "");
	char *v = strdup(value ? value : "");
	if (!n || !v) {
		free(n);
		free(v);
		return -1;
	}
	e->headers[e->n_headers++] =
	    (struct header_edit){.kind = kind, .index = index, .name = n, .value = v};
	return 0;
}

int message_edits_body(struct message_edits *e, const char *p, size_t n, bool first)
{
	if (first || !e->replace_body) {
		message_store_reset(&e->body);
		e->replace_body = true;
		e->body_cr = false;
	}
	size_t start = 0;
	const char *nl;
	while (start < n && (nl = memchr(p + start, '\n', n - start))) {
		size_t i = (size_t)(nl - p);
		bool cr = i > 0 ? p[i - 1] == '\r' : e->body_cr;
		if (!cr) {
			/* A bare LF: written as CRLF. */
			if (message_store_append(&e->body, p + start, i - start) < 0 ||
			    message_store_append(&e->body, "\r\n", 2) < 0)
				return -1;
			start = i + 1;
			continue;
		}
		if (message_store_append(&e->body, p + start, i + 1 - start) < 0)
			return -1;
		start = i + 1;
	}
	if (message_store_append(&e->body, p + start, n - start) < 0)
		return -1;
	if (n > 0)
		e->body_cr = p[n - 1] == '\r';
	return 0;
}

int message_edits_add_rcpt(struct message_edits *e, const char *addr, const char *args)
{
	if (grow(&e->add_rcpts, e->n_add, &e->cap_add, sizeof(*e->add_rcpts)) < 0)
		return -1;
	struct rcpt_edit r;
	if (dup_or_null(&r.addr, addr ? addr : "") < 0)
		return -1;
	if (dup_or_null(&r.args, args) < 0) {
		free(r.addr);
		return -1;
	}
	e->add_rcpts[e->n_add++] = r;
	return 0;
}

int message_edits_del_rcpt(struct message_edits *e, const char *addr)
{
	if (grow(&e->del_rcpts, e->n_del, &e->cap_del, sizeof(*e->del_rcpts)) < 0)
		return -1;
	char *a = strdup(addr ? addr : "");
	if (!a)
		return -1;
	e->del_rcpts[e->n_del++] = a;
	return 0;
}

int message_edits_chgfrom(struct message_edits *e, const char *addr, const char *args)
{
	char *a, *g;
	if (dup_or_null(&a, addr ? addr : "") < 0)
		return -1;
	if (dup_or_null(&g, args) < 0) {
		free(a);
		return -1;
	}
	free(e->new_sender);
	free(e->new_sender_args);
	e->new_sender = a;
	e->new_sender_args = g;
	return 0;
}

int message_edits_quarantine(struct message_edits *e, const char *reason)
{
	if (e->quarantine)
		return 0; /* the first reason stands */
	return dup_or_null(&e->quarantine, reason ? reason : "");
}

bool message_edits_change_content(const struct message_edits *e)
{
	return e->n_headers > 0 || e->replace_body || e->quarantine;
}

/* ---- applying them --------------------------------------------------- */

/* Writes to a store with every bare CR or LF made CRLF; a CR at the end
 * of one write waits for the next byte. */
struct writer {
	struct message_store *out;
	bool cr;  /* a CR was taken and not yet written */
	bool bol; /* the output stands at the start of a line */
};

static int put(struct writer *w, const char *p, size_t n)
{
	return message_store_append(w->out, p, n);
}

static int writer_write(struct writer *w, const char *p, size_t n)
{
	size_t i = 0;
	if (w->cr && n > 0) {
		w->cr = false;
		if (put(w, "\r\n", 2) < 0)
			return -1;
		if (p[0] == '\n')
			i = 1;
	}
	size_t start = i; /* [start, i): bytes to write as they are */
	while (i < n) {
		size_t j = i;
		while (j < n && p[j] != '\r' && p[j] != '\n')
			j++;
		if (j == n) {
			i = n;
			break;
		}
		if (p[j] == '\r' && j + 1 < n && p[j + 1] == '\n') {
			i = j + 2; /* CRLF: as it is */
			continue;
		}
		if (put(w, p + start, j - start) < 0)
			return -1;
		i = j + 1;
		start = i;
		if (p[j] == '\r' && j + 1 == n) {
			w->cr = true; /* is an LF next? */
			break;
		}
		if (put(w, "\r\n", 2) < 0)
			return -1;
	}
	if (n > 0)
		w->bol = p[n - 1] == '\n'; /* a CR at the end is held */
	return put(w, p + start, n - start);
}

static int writer_end(struct writer *w)
{
	if (!w->cr)
		return 0;
	w->cr = false;
	w->bol = true;
	return put(w, "\r\n", 2);
}

/* Ends the line the output stands in, if any. */
static int writer_eol(struct writer *w)
{
	if (w->cr)
		return writer_end(w);
	if (w->bol)
		return 0;
	w->bol = true;
	return put(w, "\r\n", 2);
}

static int writer_str(struct writer *w, const char *s)
{
	return writer_write(w, s, strlen(s));
}

/* "name: value" and CRLF, the value's line breaks ("\r\n", "\n" or a lone
 * "\r") written as CRLF and each continuation line starting with white
 * space (a space added where it does not), empty lines and trailing
 * breaks left out: a milter's value never ends the header section or
 * starts another field. */
static int write_field(struct writer *w, const char *name, const char *value)
{
	if (writer_str(w, name) < 0 || writer_write(w, ":", 1) < 0)
		return -1;
	bool first = true;
	const char *p = value;
	for (;;) {
		size_t len = strcspn(p, "\r\n");
		if (first) {
			if (len > 0 && (writer_write(w, " ", 1) < 0 || writer_write(w, p, len) < 0))
				return -1;
			first = false;
		} else if (len > 0) {
			if (writer_write(w, "\r\n", 2) < 0 ||
			    (!is_wsp(p[0]) && writer_write(w, " ", 1) < 0) ||
			    writer_write(w, p, len) < 0)
				return -1;
		}
		p += len;
		if (!*p)
			break;
		p += (p[0] == '\r' && p[1] == '\n') ? 2 : 1;
	}
	return writer_write(w, "\r\n", 2);
}

/* Copies [off, off + len) of s through the writer; 1 when w->out became
 * too big (the rest is not copied). */
static int copy_range(struct writer *w, struct message_store *s, uint64_t off, uint64_t len)
{
	char chunk[COPY_CHUNK];
	while (len > 0) {
		size_t want = len < sizeof(chunk) ? (size_t)len : sizeof(chunk);
		ssize_t got = message_store_read(s, off, chunk, want);
		if (got <= 0)
			return -1; /* an error, or the store shorter than said */
		if (writer_write(w, chunk, (size_t)got) < 0)
			return -1;
		if (w->out->too_big)
			return 1;
		off += (uint64_t)got;
		len -= (uint64_t)got;
	}
	return 0;
}

/* One field of the header being built: an original one (orig < SIZE_MAX)
 * or one a milter gave (borrowed strings). */
struct field {
	const char *name;
	const char *value;
	size_t orig;
};

/* The header edits of e applied in order to the fields of hs: *n fields in
 * the array returned (freed by the caller), NULL when out of memory. */
static struct field *edit_fields(const struct message_headers *hs, const struct message_edits *e,
				 size_t *n_out)
{
	size_t cap = hs->n + e->n_headers, n = 0;
	struct field *f = malloc((cap ? cap : 1) * sizeof(*f));
	if (!f)
		return NULL;
	for (size_t i = 0; i < hs->n; i++)
		f[n++] = (struct field){hs->h[i].name, hs->h[i].value, i};
	for (size_t k = 0; k < e->n_headers; k++) {
		const struct header_edit *ed = &e->headers[k];
		if (!valid_name(ed->name))
			continue; /* it could only break the header */
		struct field nf = {ed->name, ed->value, SIZE_MAX};
		switch (ed->kind) {
		case HEADER_ADD:
			f[n++] = nf;
			break;
		case HEADER_INSERT: {
			size_t at = ed->index < n ? ed->index : n;
			memmove(f + at + 1, f + at, (n - at) * sizeof(*f));
			f[at] = nf;
			n++;
			break;
		}
		case HEADER_CHANGE: {
			/* Index 0 is taken as 1, as Postfix does for old
			 * libmilters. */
			unsigned want = ed->index ? ed->index : 1, seen = 0;
			size_t at = n;
			for (size_t i = 0; i < n; i++) {
				if (strcasecmp(f[i].name, ed->name) == 0 && ++seen == want) {
					at = i;
					break;
				}
			}
			if (at == n) {
				if (*ed->value)
					f[n++] = nf; /* none: added */
			} else if (!*ed->value) {
				memmove(f + at, f + at + 1, (n - at - 1) * sizeof(*f));
				n--;
			} else {
				f[at] = nf;
			}
			break;
		}
		}
	}
	*n_out = n;
	return f;
}

int message_edit_apply(struct message_store *in, const struct message_headers *hs,
		       const struct message_edits *e, struct message_store *out)
{
	/* The replacement body is only read; message_store_read() takes a
	 * store it may mark with an error, so the edits' own store is used
	 * without its const. */
	struct message_store *body = (struct message_store *)&e->body;
	if (in->too_big || (e->replace_body && body->too_big)) {
		out->too_big = true; /* part of it is missing */
		return 1;
	}
	size_t n;
	struct field *f = edit_fields(hs, e, &n);
	if (!f)
		return -1;
	struct writer w = {out, false, true};
	int rc = 0;
	for (size_t i = 0; i < n && rc == 0; i++) {
		if (f[i].orig == SIZE_MAX) {
			rc = write_field(&w, f[i].name, f[i].value);
			continue;
		}
		/* An original field: byte for byte (signatures cover it). */
		const struct message_header *h = &hs->h[f[i].orig];
		rc = copy_range(&w, in, h->raw_offset, h->raw_len);
		if (rc == 0)
			rc = writer_eol(&w); /* a last line without its line end */
	}
	free(f);
	if (rc == 0 && e->quarantine)
		rc = write_field(&w, MESSAGE_QUARANTINE_HEADER, e->quarantine);
	if (rc == 0)
		rc = writer_end(&w);
	if (rc == 0)
		rc = writer_write(&w, "\r\n", 2);
	if (rc == 0) {
		if (e->replace_body)
			rc = copy_range(&w, body, 0, body->size);
		else if (hs->body_offset < in->size)
			rc = copy_range(&w, in, hs->body_offset, in->size - hs->body_offset);
	}
	if (rc == 0)
		rc = writer_end(&w);
	if (rc < 0)
		return -1;
	return out->too_big ? 1 : 0;
}

/* ---- the wire form --------------------------------------------------- */

bool message_wire_append(struct buf *out, const char *p, size_t n, bool *bol)
{
	size_t len0 = out->len;
	bool b = *bol;
	size_t i = 0;
	while (i < n) {
		const char *nl = memchr(p + i, '\n', n - i);
		size_t j = nl ? (size_t)(nl - p) + 1 : n;
		if ((b && p[i] == '.' && !buf_append(out, ".", 1)) ||
		    !buf_append(out, p + i, j - i)) {
			out->len = len0; /* nothing appended */
			return false;
		}
		b = nl != NULL;
		i = j;
	}
	*bol = b;
	return true;
}

bool message_wire_end(struct buf *out, bool bol)
{
	return bol ? buf_append(out, ".\r\n", 3) : buf_append(out, "\r\n.\r\n", 5);
}
