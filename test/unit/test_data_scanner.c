/* test_data_scanner.c — the DATA scanner (proxy/smtp/data_scanner.c) against
 * the byte-at-a-time state machine it replaced (kept here as the reference,
 * SPEC §3.7).
 *
 * The fast scanner copies runs of ordinary content at once; it must give
 * exactly the reference's output, consumption, end flag and bare_seen, in
 * both modes, for any input and any split of it. Random inputs are drawn
 * from an alphabet dense in CR, LF and dots, long enough to cross the
 * 16-byte scan blocks, and fed whole, at every split point and in random
 * pieces. Never does I/O.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "proxy/smtp/data_scanner.h"

/* ---- the reference: the scanner as it was before issue 12 ---------------- */

enum { S_BOL = 0, S_BOL_DOT, S_DOT_CR, S_MID, S_CR };

static void ref_init(struct data_scanner *d, bool reject)
{
	d->state = S_BOL;
	d->out_bol = true;
	d->reject = reject;
	d->bare_seen = false;
}

struct ref_out {
	char *p;
	bool *bol;
	bool mute; /* reject mode after a bare CR/LF: write nothing more */
};

static inline void ref_put_byte(struct ref_out *o, char c)
{
	if (o->mute)
		return;
	if (*o->bol && c == '.')
		*o->p++ = '.'; /* dot-stuff every output line that starts with '.' */
	*o->p++ = c;
	*o->bol = false;
}

static inline void ref_put_eol(struct ref_out *o)
{
	if (o->mute)
		return;
	*o->p++ = '\r';
	*o->p++ = '\n';
	*o->bol = true;
}

/* A bare CR or LF: canonical CRLF in sanitize mode; in reject mode, the
 * first one silences the output for good. */
static inline void ref_bare_eol(struct data_scanner *d, struct ref_out *o)
{
	d->bare_seen = true;
	if (d->reject)
		o->mute = true;
	ref_put_eol(o);
}

static size_t ref_feed(struct data_scanner *d, const char *p, size_t n, struct buf *out, bool *end)
{
	*end = false;
	if (!buf_reserve(out, 2 * n + 8))
		return (size_t)-1;
	struct ref_out o = {out->data + out->len, &d->out_bol, d->reject && d->bare_seen};
	size_t i = 0;

	while (i < n) {
		char c = p[i++];
		switch (d->state) {
		case S_BOL:
			if (c == '.') {
				d->state = S_BOL_DOT;
				break;
			}
			/* Any other byte starts the line like S_MID. */
			__attribute__((fallthrough));
		case S_MID:
			if (c == '\r') {
				d->state = S_CR;
			} else if (c == '\n') {
				ref_bare_eol(d, &o);
				d->state = S_MID;
			} else {
				ref_put_byte(&o, c);
				d->state = S_MID;
			}
			break;
		case S_BOL_DOT:
			if (c == '\r') {
				d->state = S_DOT_CR;
			} else if (c == '\n') {
				ref_bare_eol(d, &o);
				d->state = S_MID;
			} else {
				ref_put_byte(&o, c);
				d->state = S_MID;
			}
			break;
		case S_DOT_CR:
			if (c == '\n') {
				/* CRLF . CRLF: the one true end of data. The
				 * output stands at a line start here. */
				if (!o.mute) {
					*o.p++ = '.';
					*o.p++ = '\r';
					*o.p++ = '\n';
				}
				d->state = S_BOL;
				d->out_bol = true;
				*end = true;
				out->len = (size_t)(o.p - out->data);
				return i;
			}
			/* The CR after the dot was bare: as in S_CR. */
			__attribute__((fallthrough));
		case S_CR:
			if (c == '\n') {
				ref_put_eol(&o);
				d->state = S_BOL;
				break;
			}
			ref_bare_eol(d, &o);
			if (c == '\r') {
				d->state = S_CR;
			} else {
				ref_put_byte(&o, c);
				d->state = S_MID;
			}
			break;
		}
	}
	out->len = (size_t)(o.p - out->data);
	return i;
}

/* ---- the comparison ----------------------------------------------------- */

struct result {
	struct buf out;
	size_t used;
	bool end;
	bool bare_seen;
};

typedef size_t (*feed_fn)(struct data_scanner *, const char *, size_t, struct buf *, bool *);

/* Feeds in pieces (cuts: ascending split points) until the end of data. */
static void run(feed_fn feed, bool reject, const char *p, size_t n, const size_t *cuts,
		size_t ncuts, struct result *r)
{
	struct data_scanner d;
	if (feed == data_scanner_feed)
		data_scanner_init(&d, reject);
	else
		ref_init(&d, reject);
	memset(r, 0, sizeof(*r));
	size_t at = 0;
	for (size_t k = 0; k <= ncuts && !r->end; k++) {
		size_t to = k < ncuts ? cuts[k] : n;
		if (to < at)
			continue;
		size_t got = feed(&d, p + at, to - at, &r->out, &r->end);
		assert_true(got != (size_t)-1);
		r->used += got;
		if (r->end)
			break;
		assert_int_equal(got, to - at);
		at = to;
	}
	r->bare_seen = d.bare_seen;
}

static void same(bool reject, const char *p, size_t n, const size_t *cuts, size_t ncuts)
{
	struct result a, b;
	run(data_scanner_feed, reject, p, n, cuts, ncuts, &a);
	run(ref_feed, reject, p, n, cuts, ncuts, &b);
	assert_int_equal(a.used, b.used);
	assert_int_equal(a.end, b.end);
	assert_int_equal(a.bare_seen, b.bare_seen);
	assert_int_equal(a.out.len, b.out.len);
	if (a.out.len)
		assert_memory_equal(a.out.data, b.out.data, a.out.len);
	buf_free(&a.out);
	buf_free(&b.out);
}

static const char ALPHABET[] = "\r\n..ab\r\nxyz \r\n";

static void fill(char *p, size_t n, unsigned *seed)
{
	/* Mostly ordinary lines, with CR, LF and dots often enough. */
	for (size_t i = 0; i < n; i++) {
		unsigned r = (unsigned)rand_r(seed);
		p[i] = (r % 4) ? "abcdefghij"[r % 10] : ALPHABET[(r / 4) % (sizeof(ALPHABET) - 1)];
	}
}

static void test_s3_7_fast_scanner_matches_reference_every_split(void **state)
{
	(void)state;
	unsigned seed = 12;
	char p[96];
	for (int round = 0; round < 3000; round++) {
		size_t n = (size_t)(rand_r(&seed) % sizeof(p)) + 1;
		fill(p, n, &seed);
		for (int reject = 0; reject < 2; reject++) {
			same(reject, p, n, NULL, 0);
			for (size_t k = 0; k <= n; k++)
				same(reject, p, n, &k, 1);
		}
	}
}

static void test_s3_7_fast_scanner_matches_reference_random_pieces(void **state)
{
	(void)state;
	unsigned seed = 7;
	static char p[4096];
	size_t cuts[64];
	for (int round = 0; round < 2000; round++) {
		size_t n = (size_t)(rand_r(&seed) % sizeof(p)) + 1;
		fill(p, n, &seed);
		/* Sometimes long ordinary runs with canonical lines only. */
		if (round % 3 == 0)
			for (size_t i = 0; i < n; i++)
				if (p[i] == '\r' || p[i] == '\n')
					p[i] = 'q';
		if (round % 3 == 0)
			for (size_t i = 40; i + 1 < n; i += 41)
				memcpy(p + i, "\r\n", 2);
		size_t nc = (size_t)(rand_r(&seed) % 64), at = 0;
		for (size_t k = 0; k < nc; k++) {
			at += (size_t)(rand_r(&seed) % 200);
			cuts[k] = at < n ? at : n;
		}
		for (int reject = 0; reject < 2; reject++) {
			same(reject, p, n, NULL, 0);
			same(reject, p, n, cuts, nc);
		}
	}
}

static void test_s3_7_fast_scanner_known_cases(void **state)
{
	(void)state;
	static const char *const cases[] = {
	    "hello\r\n.\r\n",
	    "..x\r\n.x\r\n.\r\n",
	    "a\nb\rc\r\r\n.\n.\r\n",
	    ".\r.\r\n.\r\n",
	    "line\r\n\r\n.\r\n",
	    "x\n.y\r\n.\r\n",
	    "0123456789abcdef0123456789\r\nabc\r\n..\r\n.\r\nQUIT\r\n",
	    "\r\n\r\n\r\n.\r\n",
	    ".\n\r\n.\r\n",
	    "abc\r\n.\r",
	};
	for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
		size_t n = strlen(cases[c]);
		for (int reject = 0; reject < 2; reject++)
			for (size_t k = 0; k <= n; k++)
				same(reject, cases[c], n, &k, 1);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_s3_7_fast_scanner_known_cases),
	    cmocka_unit_test(test_s3_7_fast_scanner_matches_reference_every_split),
	    cmocka_unit_test(test_s3_7_fast_scanner_matches_reference_random_pieces),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
