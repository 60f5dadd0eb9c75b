/* test_message_edit.c — the header section reader, the milters' changes and
 * their application, and the dot-stuffing for sending
 * (proxy/milter/message_edit.c, issue 14).
 *
 * Checks folded fields and the Postfix-like end of the header section,
 * every header edit kind and its index edge cases, the replacement body
 * and quarantine header, apply over a file-backed 3 MiB body, and that
 * wire -> store -> wire gives back the DATA scanner's bytes exactly. Makes
 * temporary files only through the store; never opens a socket.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/milter/message_edit.h"
#include "proxy/smtp/data_scanner.h"

static char *read_all(struct message_store *s)
{
	char *p = malloc(s->size + 1);
	assert_non_null(p);
	uint64_t off = 0;
	while (off < s->size) {
		ssize_t got = message_store_read(s, off, p + off, (size_t)(s->size - off));
		assert_true(got > 0);
		off += (uint64_t)got;
	}
	p[s->size] = '\0';
	return p;
}

static void store_text(struct message_store *s, size_t mem_limit, const char *text)
{
	message_store_init(s, mem_limit, 0, NULL);
	assert_int_equal(message_store_append(s, text, strlen(text)), 0);
}

/* ---- reading the header section ------------------------------------- */

static void test_headers_plain_and_folded(void **state)
{
	(void)state;
	const char *msg = "From: a@b\r\n"
			  "Subject: one\r\n two\r\n\tthree\r\n"
			  "X-Empty:\r\n"
			  "X-No-Space:v\r\n"
			  "Old-Style :  two spaces\r\n"
			  "\r\n"
			  "Body: not a header\r\n";
	/* From memory, and from a file from the 3rd byte on. */
	size_t limits[] = {4096, 3};
	for (size_t t = 0; t < 2; t++) {
		struct message_store s;
		store_text(&s, limits[t], msg);
		struct message_headers hs;
		assert_int_equal(message_headers_read(&s, &hs), 0);
		assert_int_equal(hs.n, 5);
		assert_string_equal(hs.h[0].name, "From");
		assert_string_equal(hs.h[0].value, "a@b");
		assert_int_equal(hs.h[0].raw_offset, 0);
		assert_int_equal(hs.h[0].raw_len, 11);
		assert_string_equal(hs.h[1].name, "Subject");
		assert_string_equal(hs.h[1].value, "one\r\n two\r\n\tthree");
		assert_int_equal(hs.h[1].raw_offset, 11);
		assert_int_equal(hs.h[1].raw_len, strlen("Subject: one\r\n two\r\n\tthree\r\n"));
		assert_string_equal(hs.h[2].name, "X-Empty");
		assert_string_equal(hs.h[2].value, "");
		assert_string_equal(hs.h[3].name, "X-No-Space");
		assert_string_equal(hs.h[3].value, "v");
		assert_string_equal(hs.h[4].name, "Old-Style");
		assert_string_equal(hs.h[4].value, " two spaces");
		assert_int_equal(hs.body_offset, strstr(msg, "Body:") - msg);
		message_headers_free(&hs);
		message_headers_free(&hs); /* twice is harmless */
		message_store_free(&s);
	}
}

static void test_headers_section_ends(void **state)
{
	(void)state;
	static const struct {
		const char *msg;
		size_t n;
		const char *body; /* what follows body_offset */
	} cases[] = {
	    /* No empty line: a non-header line starts the body. */
	    {"From: a\r\nhello world\r\nmore\r\n", 1, "hello world\r\nmore\r\n"},
	    {"From: a\r\n: no name\r\n", 1, ": no name\r\n"},
	    {"From: a\r\nBad Name: x\r\n", 1, "Bad Name: x\r\n"},
	    {"From: a\r\nNo-Colon\r\n\r\n", 1, "No-Colon\r\n\r\n"},
	    /* All header. */
	    {"From: a\r\nTo: b\r\n", 2, ""},
	    {"Subject: x", 1, ""},
	    {"", 0, ""},
	    /* No header at all. */
	    {"\r\nbody\r\n", 0, "body\r\n"},
	    {" indented\r\nFrom: a\r\n\r\n", 0, " indented\r\nFrom: a\r\n\r\n"},
	    {"plain text\r\n", 0, "plain text\r\n"},
	    /* Bare LF line ends (not from the scanner, but read alike). */
	    {"A: 1\nB: 2\n folded\n\nbody\n", 2, "body\n"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct message_store s;
		store_text(&s, 4096, cases[i].msg);
		struct message_headers hs;
		assert_int_equal(message_headers_read(&s, &hs), 0);
		assert_int_equal(hs.n, cases[i].n);
		assert_int_equal(s.size - hs.body_offset, strlen(cases[i].body));
		assert_string_equal(cases[i].msg + hs.body_offset, cases[i].body);
		message_headers_free(&hs);
		message_store_free(&s);
	}

	struct message_store s;
	store_text(&s, 4096, "A: 1\nB: 2\n folded\n\nbody\n");
	struct message_headers hs;
	assert_int_equal(message_headers_read(&s, &hs), 0);
	assert_string_equal(hs.h[1].value, "2\r\n folded");
	message_headers_free(&hs);
	message_store_free(&s);

	store_text(&s, 4096, "Subject: x");
	assert_int_equal(message_headers_read(&s, &hs), 0);
	assert_string_equal(hs.h[0].value, "x");
	assert_int_equal(hs.h[0].raw_len, 10);
	message_headers_free(&hs);
	message_store_free(&s);
}

static void test_headers_limits(void **state)
{
	(void)state;
	/* One field more than MESSAGE_HEADERS_MAX: it starts the body. */
	struct message_store s;
	message_store_init(&s, 1000, 0, NULL);
	char line[64];
	size_t at = 0;
	for (int i = 0; i <= MESSAGE_HEADERS_MAX; i++) {
		int len = snprintf(line, sizeof(line), "X-N: %d\r\n", i);
		if (i == MESSAGE_HEADERS_MAX)
			at = s.size;
		assert_int_equal(message_store_append(&s, line, (size_t)len), 0);
	}
	assert_int_equal(message_store_append(&s, "\r\nbody\r\n", 8), 0);
	struct message_headers hs;
	assert_int_equal(message_headers_read(&s, &hs), 0);
	assert_int_equal(hs.n, MESSAGE_HEADERS_MAX);
	assert_string_equal(hs.h[MESSAGE_HEADERS_MAX - 1].value, "999");
	assert_int_equal(hs.body_offset, at);
	message_headers_free(&hs);
	message_store_free(&s);

	/* A field whose continuation passes MESSAGE_HEADER_SECTION_MAX: the
	 * section ends before it. */
	message_store_init(&s, 4096, 0, NULL);
	assert_int_equal(message_store_append(&s, "A: 1\r\nB: 2\r\n", 12), 0);
	char *big = malloc(MESSAGE_HEADER_SECTION_MAX);
	assert_non_null(big);
	memset(big, 'x', MESSAGE_HEADER_SECTION_MAX);
	big[0] = ' ';
	assert_int_equal(message_store_append(&s, big, MESSAGE_HEADER_SECTION_MAX), 0);
	assert_int_equal(message_store_append(&s, "\r\n\r\nbody\r\n", 10), 0);
	assert_int_equal(message_headers_read(&s, &hs), 0);
	assert_int_equal(hs.n, 1);
	assert_int_equal(hs.body_offset, 6);
	message_headers_free(&hs);
	message_store_free(&s);

	/* A field line that passes it: the section ends at that line. */
	message_store_init(&s, 4096, 0, NULL);
	assert_int_equal(message_store_append(&s, "A: 1\r\n", 6), 0);
	memcpy(big, "C: ", 3);
	assert_int_equal(message_store_append(&s, big, MESSAGE_HEADER_SECTION_MAX), 0);
	assert_int_equal(message_headers_read(&s, &hs), 0);
	assert_int_equal(hs.n, 1);
	assert_int_equal(hs.body_offset, 6);
	message_headers_free(&hs);
	message_store_free(&s);

	/* A section of exactly MESSAGE_HEADER_SECTION_MAX bytes, then an
	 * empty line (not counted), a continuation or another field. */
	static const struct {
		const char *after;
		size_t n;
		uint64_t body_offset; /* 0: MESSAGE_HEADER_SECTION_MAX */
	} ends[] = {
	    {"\r\nbody\r\n", 2, MESSAGE_HEADER_SECTION_MAX + 2},
	    {"\r\n", 2, MESSAGE_HEADER_SECTION_MAX + 2},
	    {"", 2, MESSAGE_HEADER_SECTION_MAX},
	    {" c\r\n\r\n", 1, 6},
	    {"\tc", 1, 6},
	    {"C: 3\r\n\r\n", 2, MESSAGE_HEADER_SECTION_MAX},
	    {"Cc", 2, MESSAGE_HEADER_SECTION_MAX},
	};
	for (size_t i = 0; i < sizeof(ends) / sizeof(ends[0]); i++) {
		message_store_init(&s, 4096, 0, NULL);
		assert_int_equal(message_store_append(&s, "A: 1\r\n", 6), 0);
		memset(big, 'x', MESSAGE_HEADER_SECTION_MAX);
		memcpy(big, "B: ", 3);
		memcpy(big + MESSAGE_HEADER_SECTION_MAX - 6 - 2, "\r\n", 2);
		assert_int_equal(message_store_append(&s, big, MESSAGE_HEADER_SECTION_MAX - 6), 0);
		assert_int_equal(s.size, MESSAGE_HEADER_SECTION_MAX);
		assert_int_equal(message_store_append(&s, ends[i].after, strlen(ends[i].after)), 0);
		assert_int_equal(message_headers_read(&s, &hs), 0);
		assert_int_equal(hs.n, ends[i].n);
		assert_int_equal(hs.body_offset, ends[i].body_offset);
		message_headers_free(&hs);
		message_store_free(&s);
	}
	free(big);

	/* A read error: -1 and nothing held. */
	message_store_init(&s, 2, 0, NULL);
	assert_int_equal(message_store_append(&s, "A: 1\r\nB: 2\r\n", 12), 0);
	s.size += 10; /* the file is shorter than the store says */
	assert_int_equal(message_headers_read(&s, &hs), -1);
	assert_int_equal(hs.n, 0);
	assert_null(hs.h);
	message_store_free(&s);
}

/* ---- the edits -------------------------------------------------------- */

/* Applies the header edits es to msg and checks the result. */
struct hedit {
	enum header_edit_kind kind;
	unsigned index;
	const char *name, *value;
};

static void check_apply(const char *msg, const struct hedit *es, size_t n, const char *want)
{
	struct message_store in, out;
	store_text(&in, 7, msg); /* mostly in the file */
	struct message_headers hs;
	assert_int_equal(message_headers_read(&in, &hs), 0);
	struct message_edits e;
	message_edits_init(&e, 4096, 0, NULL);
	for (size_t i = 0; i < n; i++)
		assert_int_equal(
		    message_edits_header(&e, es[i].kind, es[i].index, es[i].name, es[i].value), 0);
	assert_int_equal(message_edits_change_content(&e), n > 0);
	message_store_init(&out, 5, 0, NULL);
	assert_int_equal(message_edit_apply(&in, &hs, &e, &out), 0);
	char *got = read_all(&out);
	assert_string_equal(got, want);
	free(got);
	message_store_free(&out);
	message_edits_free(&e);
	message_headers_free(&hs);
	message_store_free(&in);
}

#define MSG "From: a\r\nSubject: s1\r\nTo: t\r\nsubject: s2\r\n\r\nbody\r\n"

static void test_edit_add_insert(void **state)
{
	(void)state;
	check_apply(MSG, NULL, 0, MSG);
	const struct hedit add[] = {{HEADER_ADD, 0, "X-A", "1"}, {HEADER_ADD, 7, "X-B", "2"}};
	check_apply(MSG, add, 2,
		    "From: a\r\nSubject: s1\r\nTo: t\r\nsubject: s2\r\nX-A: 1\r\nX-B: 2\r\n\r\n"
		    "body\r\n");
	const struct hedit ins0[] = {{HEADER_INSERT, 0, "X-A", "1"}};
	check_apply(MSG, ins0, 1,
		    "X-A: 1\r\nFrom: a\r\nSubject: s1\r\nTo: t\r\nsubject: s2\r\n\r\nbody\r\n");
	const struct hedit ins1[] = {{HEADER_INSERT, 1, "X-A", "1"}};
	check_apply(MSG, ins1, 1,
		    "From: a\r\nX-A: 1\r\nSubject: s1\r\nTo: t\r\nsubject: s2\r\n\r\nbody\r\n");
	const struct hedit ins4[] = {{HEADER_INSERT, 4, "X-A", "1"}};
	check_apply(MSG, ins4, 1,
		    "From: a\r\nSubject: s1\r\nTo: t\r\nsubject: s2\r\nX-A: 1\r\n\r\nbody\r\n");
	const struct hedit ins_past[] = {{HEADER_INSERT, 99, "X-A", "1"}};
	check_apply(MSG, ins_past, 1,
		    "From: a\r\nSubject: s1\r\nTo: t\r\nsubject: s2\r\nX-A: 1\r\n\r\nbody\r\n");
	/* Edits apply in order: the second insert counts the first. */
	const struct hedit ins_twice[] = {{HEADER_INSERT, 0, "X-A", "1"},
					  {HEADER_INSERT, 1, "X-B", "2"}};
	check_apply("From: a\r\n\r\n", ins_twice, 2, "X-A: 1\r\nX-B: 2\r\nFrom: a\r\n\r\n");
	/* An empty value, and a header with no field at all. */
	const struct hedit empty[] = {{HEADER_ADD, 0, "X-E", ""}};
	check_apply("From: a\r\n\r\nb\r\n", empty, 1, "From: a\r\nX-E:\r\n\r\nb\r\n");
	check_apply("", empty, 1, "X-E:\r\n\r\n");
	check_apply("\r\nb\r\n", ins_past, 1, "X-A: 1\r\n\r\nb\r\n");
}

static void test_edit_change(void **state)
{
	(void)state;
	const struct hedit c1[] = {{HEADER_CHANGE, 1, "Subject", "new"}};
	check_apply(MSG, c1, 1, "From: a\r\nSubject: new\r\nTo: t\r\nsubject: s2\r\n\r\nbody\r\n");
	/* The second field of that name, whatever its case. */
	const struct hedit c2[] = {{HEADER_CHANGE, 2, "SUBJECT", "new"}};
	check_apply(MSG, c2, 1, "From: a\r\nSubject: s1\r\nTo: t\r\nSUBJECT: new\r\n\r\nbody\r\n");
	/* Index 0 is taken as 1. */
	const struct hedit c0[] = {{HEADER_CHANGE, 0, "subject", "new"}};
	check_apply(MSG, c0, 1, "From: a\r\nsubject: new\r\nTo: t\r\nsubject: s2\r\n\r\nbody\r\n");
	/* No such occurrence: added at the end. */
	const struct hedit c3[] = {{HEADER_CHANGE, 3, "Subject", "new"}};
	check_apply(MSG, c3, 1,
		    "From: a\r\nSubject: s1\r\nTo: t\r\nsubject: s2\r\nSubject: new\r\n\r\n"
		    "body\r\n");
	const struct hedit cx[] = {{HEADER_CHANGE, 1, "X-New", "v"}};
	check_apply(MSG, cx, 1,
		    "From: a\r\nSubject: s1\r\nTo: t\r\nsubject: s2\r\nX-New: v\r\n\r\nbody\r\n");
	/* An empty value deletes; missing, it does nothing. */
	const struct hedit d1[] = {{HEADER_CHANGE, 1, "subject", ""}};
	check_apply(MSG, d1, 1, "From: a\r\nTo: t\r\nsubject: s2\r\n\r\nbody\r\n");
	const struct hedit d2[] = {{HEADER_CHANGE, 1, "subject", ""},
				   {HEADER_CHANGE, 1, "subject", ""}};
	check_apply(MSG, d2, 2, "From: a\r\nTo: t\r\n\r\nbody\r\n");
	const struct hedit dx[] = {{HEADER_CHANGE, 3, "Subject", ""}, {HEADER_CHANGE, 1, "X", ""}};
	check_apply(MSG, dx, 2, MSG);
	/* After a delete, later indexes count the fields left. */
	const struct hedit di[] = {{HEADER_CHANGE, 1, "From", ""}, {HEADER_INSERT, 1, "X-A", "1"}};
	check_apply(MSG, di, 2, "Subject: s1\r\nX-A: 1\r\nTo: t\r\nsubject: s2\r\n\r\nbody\r\n");
	/* A changed field may be changed again, and an added one too. */
	const struct hedit cc[] = {{HEADER_ADD, 0, "X-A", "1"},
				   {HEADER_CHANGE, 1, "x-a", "2"},
				   {HEADER_CHANGE, 1, "To", "u"},
				   {HEADER_CHANGE, 1, "To", "v"}};
	check_apply(MSG, cc, 4,
		    "From: a\r\nSubject: s1\r\nTo: v\r\nsubject: s2\r\nx-a: 2\r\n\r\nbody\r\n");
	/* A folded original field is copied as it was; so is odd spacing. */
	const struct hedit c4[] = {{HEADER_CHANGE, 1, "To", "x"}};
	check_apply("Subject:a\r\n\tb\r\nTo : t\r\nCc :c\r\n\r\n", c4, 1,
		    "Subject:a\r\n\tb\r\nTo: x\r\nCc :c\r\n\r\n");
}

static void test_edit_values_and_names(void **state)
{
	(void)state;
	const struct hedit fold[] = {
	    {HEADER_ADD, 0, "X-F", "a\n\tb\r\n c"},
	    {HEADER_ADD, 0, "X-G", "x\nBcc: evil@example\n\nbody-ish\n"},
	    {HEADER_ADD, 0, "X-H", "\n\tstarts folded"},
	    {HEADER_ADD, 0, "X-I", "lone\rcr"},
	};
	check_apply("From: a\r\n\r\nb\r\n", fold, 4,
		    "From: a\r\n"
		    "X-F: a\r\n\tb\r\n c\r\n"
		    "X-G: x\r\n Bcc: evil@example\r\n body-ish\r\n"
		    "X-H:\r\n\tstarts folded\r\n"
		    "X-I: lone\r\n cr\r\n"
		    "\r\nb\r\n");
	/* Names that could only break the header are skipped. */
	const struct hedit bad[] = {
	    {HEADER_ADD, 0, "", "v"},	      {HEADER_ADD, 0, "A:B", "v"},
	    {HEADER_ADD, 0, "A B", "v"},      {HEADER_ADD, 0, "A\r\nB", "v"},
	    {HEADER_INSERT, 0, "\x80x", "v"}, {HEADER_CHANGE, 1, "From\n", ""},
	    {HEADER_ADD, 0, "Good", "v"},
	};
	check_apply("From: a\r\n\r\nb\r\n", bad, 7, "From: a\r\nGood: v\r\n\r\nb\r\n");
}

static void test_edits_container(void **state)
{
	(void)state;
	struct message_edits e;
	message_edits_init(&e, 16, 1000, NULL);
	assert_false(message_edits_change_content(&e));
	assert_int_equal(message_edits_add_rcpt(&e, "<a@b>", NULL), 0);
	assert_int_equal(message_edits_add_rcpt(&e, "c@d", "NOTIFY=NEVER"), 0);
	assert_int_equal(message_edits_del_rcpt(&e, "<x@y>"), 0);
	assert_int_equal(message_edits_chgfrom(&e, "<s@t>", NULL), 0);
	assert_int_equal(message_edits_chgfrom(&e, "<u@v>", "SIZE=10"), 0);
	assert_false(message_edits_change_content(&e)); /* envelope only */
	assert_int_equal(e.n_add, 2);
	assert_string_equal(e.add_rcpts[0].addr, "<a@b>");
	assert_null(e.add_rcpts[0].args);
	assert_string_equal(e.add_rcpts[1].args, "NOTIFY=NEVER");
	assert_int_equal(e.n_del, 1);
	assert_string_equal(e.del_rcpts[0], "<x@y>");
	assert_string_equal(e.new_sender, "<u@v>");
	assert_string_equal(e.new_sender_args, "SIZE=10");
	assert_int_equal(message_edits_quarantine(&e, "first"), 0);
	assert_int_equal(message_edits_quarantine(&e, "second"), 0);
	assert_string_equal(e.quarantine, "first");
	assert_true(message_edits_change_content(&e));
	assert_int_equal(message_edits_header(&e, HEADER_ADD, 0, NULL, NULL), 0);
	assert_string_equal(e.headers[0].name, "");

	/* Free leaves it ready for the next message, same limits. */
	message_edits_free(&e);
	assert_int_equal(e.n_add + e.n_del + e.n_headers, 0);
	assert_null(e.quarantine);
	assert_null(e.new_sender);
	assert_int_equal(e.body.size_limit, 1000);
	assert_int_equal(e.body.mem_limit, 16);
	assert_false(message_edits_change_content(&e));

	/* Each list is bounded. */
	for (int i = 0; i < MESSAGE_EDITS_MAX; i++)
		assert_int_equal(message_edits_del_rcpt(&e, "<a@b>"), 0);
	errno = 0;
	assert_int_equal(message_edits_del_rcpt(&e, "<a@b>"), -1);
	assert_int_equal(errno, E2BIG);
	assert_int_equal(e.n_del, MESSAGE_EDITS_MAX);
	message_edits_free(&e);
}

static void test_replacement_body_and_quarantine(void **state)
{
	(void)state;
	struct message_store in, out;
	store_text(&in, 4096, "From: a\r\nSubject: s\r\n\r\nold body\r\n");
	struct message_headers hs;
	assert_int_equal(message_headers_read(&in, &hs), 0);
	struct message_edits e;
	message_edits_init(&e, 8, 0, NULL);
	/* A first replacement, dropped by the next milter's. */
	assert_int_equal(message_edits_body(&e, "dropped\n", 8, true), 0);
	assert_int_equal(message_edits_body(&e, "line 1\nline 2\r", 14, true), 0);
	assert_int_equal(message_edits_body(&e, "\nline 3\r", 8, false), 0);
	assert_int_equal(message_edits_body(&e, "", 0, false), 0);
	assert_int_equal(message_edits_body(&e, "x\n\n.\n", 5, false), 0);
	char *body = read_all(&e.body);
	assert_string_equal(body, "line 1\r\nline 2\r\nline 3\rx\r\n\r\n.\r\n");
	free(body);
	assert_true(message_edits_change_content(&e));
	assert_int_equal(message_edits_quarantine(&e, "spam\nscore 99"), 0);
	assert_int_equal(message_edits_header(&e, HEADER_CHANGE, 1, "Subject", "[SPAM] s"), 0);
	message_store_init(&out, 4096, 0, NULL);
	assert_int_equal(message_edit_apply(&in, &hs, &e, &out), 0);
	char *got = read_all(&out);
	/* The lone CR of the body becomes CRLF too. */
	assert_string_equal(got, "From: a\r\nSubject: [SPAM] s\r\n"
				 "X-Tlsfront-Quarantine: spam\r\n score 99\r\n"
				 "\r\n"
				 "line 1\r\nline 2\r\nline 3\r\nx\r\n\r\n.\r\n");
	free(got);
	message_store_free(&out);

	/* A replacement body that was too big: apply says too big. */
	message_edits_free(&e);
	message_edits_init(&e, 8, 10, NULL);
	assert_int_equal(message_edits_body(&e, "0123456789abc", 13, true), 0);
	assert_true(e.body.too_big);
	message_store_init(&out, 4096, 0, NULL);
	assert_int_equal(message_edit_apply(&in, &hs, &e, &out), 1);
	assert_true(out.too_big);
	message_store_free(&out);
	message_edits_free(&e);

	/* An output store too small for the message. */
	message_edits_init(&e, 8, 0, NULL);
	assert_int_equal(message_edits_header(&e, HEADER_ADD, 0, "X", "y"), 0);
	message_store_init(&out, 4, 20, NULL);
	assert_int_equal(message_edit_apply(&in, &hs, &e, &out), 1);
	assert_true(out.too_big);
	assert_int_equal(out.size, 20);
	message_store_free(&out);
	message_edits_free(&e);
	message_headers_free(&hs);
	message_store_free(&in);
}

static void test_apply_makes_crlf(void **state)
{
	(void)state;
	/* Stored text with bare line ends (not the DATA scanner's): out
	 * has CRLF only, original fields included. */
	struct message_store in, out;
	store_text(&in, 3, "A: 1\nB: 2\r\n\nbody\nmore\rend");
	struct message_headers hs;
	assert_int_equal(message_headers_read(&in, &hs), 0);
	struct message_edits e;
	message_edits_init(&e, 8, 0, NULL);
	assert_int_equal(message_edits_header(&e, HEADER_ADD, 0, "C", "3"), 0);
	message_store_init(&out, 4, 0, NULL);
	assert_int_equal(message_edit_apply(&in, &hs, &e, &out), 0);
	char *got = read_all(&out);
	assert_string_equal(got, "A: 1\r\nB: 2\r\nC: 3\r\n\r\nbody\r\nmore\r\nend");
	free(got);
	message_store_free(&out);
	message_edits_free(&e);
	message_headers_free(&hs);
	message_store_free(&in);
}

/* A message with a 3 MiB body, file-backed, some headers changed. */
static void test_apply_file_backed_3mib(void **state)
{
	(void)state;
	const char *head = "Received: from x\r\n\tby y\r\nFrom: a@b\r\nSubject: big\r\n\r\n";
	size_t body_len = 3 * 1024 * 1024;
	char *body = malloc(body_len);
	assert_non_null(body);
	srand(3);
	size_t i = 0;
	for (;;) {
		size_t ll = 1 + (size_t)rand() % 120;
		if (i + ll + 2 > body_len - 2)
			break;
		for (size_t k = 0; k < ll; k++)
			body[i++] = (char)(' ' + rand() % 95);
		body[i++] = '\r';
		body[i++] = '\n';
	}
	while (i < body_len - 2)
		body[i++] = 'y';
	body[body_len - 2] = '\r';
	body[body_len - 1] = '\n';

	struct message_store in, out;
	message_store_init(&in, MESSAGE_STORE_MEM_DEFAULT, 0, NULL);
	assert_int_equal(message_store_append(&in, head, strlen(head)), 0);
	assert_int_equal(message_store_append(&in, body, body_len), 0);
	assert_true(in.fd >= 0);
	struct message_headers hs;
	assert_int_equal(message_headers_read(&in, &hs), 0);
	assert_int_equal(hs.n, 3);
	assert_int_equal(hs.body_offset, strlen(head));

	struct message_edits e;
	message_edits_init(&e, MESSAGE_STORE_MEM_DEFAULT, 0, NULL);
	assert_int_equal(message_edits_header(&e, HEADER_INSERT, 0, "DKIM-Signature",
					      "v=1; a=rsa-sha256;\n\tb=abc"),
			 0);
	assert_int_equal(message_edits_header(&e, HEADER_CHANGE, 1, "Subject", "bigger"), 0);
	message_store_init(&out, MESSAGE_STORE_MEM_DEFAULT, 4 * 1024 * 1024, NULL);
	assert_int_equal(message_edit_apply(&in, &hs, &e, &out), 0);
	assert_true(out.fd >= 0);
	const char *new_head = "DKIM-Signature: v=1; a=rsa-sha256;\r\n\tb=abc\r\n"
			       "Received: from x\r\n\tby y\r\nFrom: a@b\r\nSubject: bigger\r\n\r\n";
	size_t hl = strlen(new_head);
	assert_int_equal(out.size, hl + body_len);
	char *got = read_all(&out);
	assert_memory_equal(got, new_head, hl);
	assert_memory_equal(got + hl, body, body_len);
	free(got);
	message_store_free(&out);

	/* The same with the body replaced by a file-backed one. */
	assert_int_equal(message_edits_body(&e, body, body_len / 2, true), 0);
	assert_int_equal(
	    message_edits_body(&e, body + body_len / 2, body_len - body_len / 2, false), 0);
	assert_true(e.body.fd >= 0);
	message_store_init(&out, MESSAGE_STORE_MEM_DEFAULT, 0, NULL);
	assert_int_equal(message_edit_apply(&in, &hs, &e, &out), 0);
	assert_int_equal(out.size, hl + body_len);
	got = read_all(&out);
	assert_memory_equal(got + hl, body, body_len);
	free(got);
	message_store_free(&out);

	message_edits_free(&e);
	message_headers_free(&hs);
	message_store_free(&in);
	free(body);
}

/* ---- the wire form ---------------------------------------------------- */

static void test_wire_append(void **state)
{
	(void)state;
	struct buf out = {0};
	bool bol = true;
	assert_true(message_wire_end(&out, bol));
	assert_int_equal(out.len, 3);
	assert_memory_equal(out.data, ".\r\n", 3);
	buf_free(&out);

	const char *text = ".a\r\nb.\r\n..\r\n.\r\nend";
	assert_true(message_wire_append(&out, text, strlen(text), &bol));
	assert_false(bol);
	assert_true(message_wire_end(&out, bol));
	const char *want = "..a\r\nb.\r\n...\r\n..\r\nend\r\n.\r\n";
	assert_int_equal(out.len, strlen(want));
	assert_memory_equal(out.data, want, out.len);
	buf_free(&out);

	/* Split between CR and LF, and before the dot. */
	bol = true;
	assert_true(message_wire_append(&out, "x\r", 2, &bol));
	assert_false(bol);
	assert_true(message_wire_append(&out, "\n", 1, &bol));
	assert_true(bol);
	assert_true(message_wire_append(&out, ".", 1, &bol));
	assert_true(message_wire_append(&out, "", 0, &bol));
	assert_true(message_wire_append(&out, ".\r\n", 3, &bol));
	assert_true(bol);
	assert_true(message_wire_end(&out, bol));
	want = "x\r\n...\r\n.\r\n";
	assert_int_equal(out.len, strlen(want));
	assert_memory_equal(out.data, want, out.len);
	buf_free(&out);

	/* A bare LF still starts a line for stuffing. */
	bol = true;
	assert_true(message_wire_append(&out, "a\n.\r\n", 5, &bol));
	assert_memory_equal(out.data, "a\n..\r\n", 6);
	buf_free(&out);
}

/* Reads s and writes its wire form in random pieces. */
static void store_to_wire(struct message_store *s, struct buf *wire)
{
	bool bol = true;
	char chunk[97];
	uint64_t off = 0;
	while (off < s->size) {
		size_t want = 1 + (size_t)rand() % sizeof(chunk);
		ssize_t got = message_store_read(s, off, chunk, want);
		assert_true(got > 0);
		assert_true(message_wire_append(wire, chunk, (size_t)got, &bol));
		off += (uint64_t)got;
	}
	assert_true(message_wire_end(wire, bol));
}

static void test_wire_round_trip(void **state)
{
	(void)state;
	static const char alphabet[] = "...\r\n\r\nab: ";
	srand(5);
	for (int round = 0; round < 2000; round++) {
		/* A raw message, made wire by the DATA scanner. */
		size_t len = (size_t)rand() % (round < 1500 ? 40 : 2000);
		char raw[2000 + 5];
		for (size_t i = 0; i < len; i++)
			raw[i] = alphabet[rand() % (int)(sizeof(alphabet) - 1)];
		memcpy(raw + len, "\r\n.\r\n", 5);
		struct data_scanner d;
		data_scanner_init(&d, false);
		struct buf wire = {0};
		bool end;
		size_t used = data_scanner_feed(&d, raw, len + 5, &wire, &end);
		assert_true(end);
		assert_true(used <= len + 5);

		/* wire -> store, in random pieces. */
		struct message_store s;
		message_store_init(&s, (size_t)rand() % 64, 0, NULL);
		for (size_t i = 0; i < wire.len;) {
			size_t k = 1 + (size_t)rand() % 13;
			if (k > wire.len - i)
				k = wire.len - i;
			assert_int_equal(message_store_append_wire(&s, wire.data + i, k), 0);
			i += k;
		}
		assert_true(s.ended);

		/* store -> wire: the same bytes. */
		struct buf back = {0};
		store_to_wire(&s, &back);
		assert_int_equal(back.len, wire.len);
		assert_memory_equal(back.data, wire.data, wire.len);
		buf_free(&back);

		/* Through apply without edits: the header section gets its
		 * empty line, and the result is still canonical wire. */
		struct message_headers hs;
		assert_int_equal(message_headers_read(&s, &hs), 0);
		struct message_edits e;
		message_edits_init(&e, 64, 0, NULL);
		struct message_store out;
		message_store_init(&out, 16, 0, NULL);
		assert_int_equal(message_edit_apply(&s, &hs, &e, &out), 0);
		store_to_wire(&out, &back);
		struct message_store again;
		message_store_init(&again, 16, 0, NULL);
		assert_int_equal(message_store_append_wire(&again, back.data, back.len), 0);
		assert_true(again.ended);
		assert_int_equal(again.size, out.size);
		char *a = read_all(&again), *o = read_all(&out);
		assert_memory_equal(a, o, out.size);
		for (size_t i = 0; i < out.size; i++)
			if (o[i] == '\n')
				assert_true(i > 0 && o[i - 1] == '\r');
			else if (o[i] == '\r')
				assert_true(i + 1 < out.size && o[i + 1] == '\n');
		free(a);
		free(o);
		message_store_free(&again);
		buf_free(&back);
		message_store_free(&out);
		message_edits_free(&e);
		message_headers_free(&hs);

		message_store_free(&s);
		buf_free(&wire);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_headers_plain_and_folded),
	    cmocka_unit_test(test_headers_section_ends),
	    cmocka_unit_test(test_headers_limits),
	    cmocka_unit_test(test_edit_add_insert),
	    cmocka_unit_test(test_edit_change),
	    cmocka_unit_test(test_edit_values_and_names),
	    cmocka_unit_test(test_edits_container),
	    cmocka_unit_test(test_replacement_body_and_quarantine),
	    cmocka_unit_test(test_apply_makes_crlf),
	    cmocka_unit_test(test_apply_file_backed_3mib),
	    cmocka_unit_test(test_wire_append),
	    cmocka_unit_test(test_wire_round_trip),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
