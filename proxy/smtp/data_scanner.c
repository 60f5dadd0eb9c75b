/* data_scanner.c — the DATA content state machine of data_scanner.h.
 *
 * Input states follow RFC 5321 §4.5.2: S_BOL at the start of a line (after a
 * true CRLF), S_BOL_DOT after a leading dot (removed), S_DOT_CR after ".\r"
 * at the start of a line, S_MID inside a line, S_CR after a CR inside a line.
 * Output goes straight into the reserved tail of the output buffer: at most
 * two output bytes per input byte plus the final ".\r\n". Never does I/O.
 *
 * Speed (issue 12): ordinary content is copied without the byte-at-a-time
 * machine. Whole 64-byte blocks whose CR and LF all sit in canonical line
 * breaks "CRLF x" (x neither '.', CR nor LF) are checked with bit masks and
 * stored as they were loaded, one pass; elsewhere runs of such bytes are
 * found 16 bytes at a time and copied. Only CR, LF and a dot at the start of
 * a line go through the machine, so the output is exactly what the machine
 * alone would write, at any split of the input (test_data_scanner.c checks
 * both against each other).
 */
#include "proxy/smtp/data_scanner.h"

#include <stdint.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

enum { S_BOL = 0, S_BOL_DOT, S_DOT_CR, S_MID, S_CR };

void data_scanner_init(struct data_scanner *d, bool reject)
{
	d->state = S_BOL;
	d->out_bol = true;
	d->reject = reject;
	d->bare_seen = false;
}

struct out {
	char *p;
	bool *bol;
	bool mute; /* reject mode after a bare CR/LF: write nothing more */
};

static inline void put_byte(struct out *o, char c)
{
	if (o->mute)
		return;
	if (*o->bol && c == '.')
		*o->p++ = '.'; /* dot-stuff every output line that starts with '.' */
	*o->p++ = c;
	*o->bol = false;
}

static inline void put_eol(struct out *o)
{
	if (o->mute)
		return;
	*o->p++ = '\r';
	*o->p++ = '\n';
	*o->bol = true;
}

/* A bare CR or LF: canonical CRLF in sanitize mode; in reject mode, the
 * first one silences the output for good. */
static inline void bare_eol(struct data_scanner *d, struct out *o)
{
	d->bare_seen = true;
	if (d->reject)
		o->mute = true;
	put_eol(o);
}

/* The first CR or LF in [p, end), or end. */
static inline const char *find_eol(const char *p, const char *end)
{
#ifdef __SSE2__
	const __m128i cr = _mm_set1_epi8('\r'), lf = _mm_set1_epi8('\n');
	while (end - p >= 16) {
		__m128i v = _mm_loadu_si128((const __m128i *)(const void *)p);
		unsigned m = (unsigned)_mm_movemask_epi8(
		    _mm_or_si128(_mm_cmpeq_epi8(v, cr), _mm_cmpeq_epi8(v, lf)));
		if (m)
			return p + __builtin_ctz(m);
		p += 16;
	}
#endif
	while (p < end && *p != '\r' && *p != '\n')
		p++;
	return p;
}

static inline bool ordinary(char c)
{
	return c != '.' && c != '\r' && c != '\n';
}

/* The end of the run that starts at p (an ordinary byte in S_MID, or a
 * byte other than '.', CR, LF in S_BOL): it stops at a CR or LF that is not
 * part of a "CRLF x" with x ordinary, or at end. The last byte of a run is
 * always an ordinary one, so the machine stands in S_MID after it. */
static inline const char *run_end(const char *p, const char *end)
{
	for (;;) {
		const char *q = find_eol(p, end);
		if (end - q >= 3 && q[0] == '\r' && q[1] == '\n' && ordinary(q[2])) {
			p = q + 3;
			continue;
		}
		return q;
	}
}

#ifdef __SSE2__
/* Bit i set where p[i] == c, for 64 bytes in v. */
static inline uint64_t bits64(const __m128i v[4], __m128i c)
{
	/* Written out: -O2 does not unroll a loop. */
	uint64_t m0 = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(v[0], c));
	uint64_t m1 = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(v[1], c));
	uint64_t m2 = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(v[2], c));
	uint64_t m3 = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(v[3], c));
	return m0 | m1 << 16 | m2 << 32 | m3 << 48;
}
#endif

/* Copies whole 64-byte blocks to out while the machine, standing in S_MID
 * with the output inside a line, would copy them unchanged; returns the
 * bytes copied. A block qualifies when every CR in it is followed by an LF,
 * every LF follows a CR, every CRLF is followed by an ordinary byte, and
 * neither of its last two bytes is a CR or an LF (so that byte is inside
 * the block too). The machine then stands in S_MID again after it. */
static size_t copy_blocks(const char *p, size_t n, char *out)
{
	size_t i = 0;
#ifdef __SSE2__
	const __m128i cr = _mm_set1_epi8('\r'), lf = _mm_set1_epi8('\n'), dot = _mm_set1_epi8('.');
	while (n - i >= 64) {
		const __m128i *src = (const __m128i *)(const void *)(p + i);
		__m128i v[4] = {_mm_loadu_si128(src), _mm_loadu_si128(src + 1),
				_mm_loadu_si128(src + 2), _mm_loadu_si128(src + 3)};
		uint64_t c = bits64(v, cr), l = bits64(v, lf), d = bits64(v, dot);
		if (l != c << 1 || (c | l) >> 62 || ((l << 1) & (c | l | d)))
			break;
		__m128i *dst = (__m128i *)(void *)(out + i);
		_mm_storeu_si128(dst, v[0]);
		_mm_storeu_si128(dst + 1, v[1]);
		_mm_storeu_si128(dst + 2, v[2]);
		_mm_storeu_si128(dst + 3, v[3]);
		i += 64;
	}
#else
	(void)p;
	(void)n;
	(void)out;
#endif
	return i;
}

size_t data_scanner_feed(struct data_scanner *d, const char *p, size_t n, struct buf *out,
			 bool *end)
{
	*end = false;
	if (!buf_reserve(out, 2 * n + 8))
		return (size_t)-1;
	struct out o = {out->data + out->len, &d->out_bol, d->reject && d->bare_seen};
	size_t i = 0;

	while (i < n) {
		if (d->state == S_MID && !*o.bol && !o.mute) {
			size_t k = copy_blocks(p + i, n - i, o.p);
			o.p += k;
			i += k;
			if (i == n)
				break;
		}
		if (d->state == S_MID || (d->state == S_BOL && ordinary(p[i]))) {
			/* A run of bytes the machine would copy as they are,
			 * short, so that whole blocks are tried again soon. */
			size_t lim = n - i > 64 ? i + 64 : n;
			size_t j = (size_t)(run_end(p + i, p + lim) - p);
			if (j > i) {
				if (!o.mute) {
					if (*o.bol && p[i] == '.')
						*o.p++ = '.'; /* as put_byte() */
					memcpy(o.p, p + i, j - i);
					o.p += j - i;
					*o.bol = false;
				}
				d->state = S_MID;
				i = j;
				if (i == n)
					break;
			}
		}
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
				bare_eol(d, &o);
				d->state = S_MID;
			} else {
				put_byte(&o, c);
				d->state = S_MID;
			}
			break;
		case S_BOL_DOT:
			if (c == '\r') {
				d->state = S_DOT_CR;
			} else if (c == '\n') {
				bare_eol(d, &o);
				d->state = S_MID;
			} else {
				put_byte(&o, c);
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
				put_eol(&o);
				d->state = S_BOL;
				break;
			}
			bare_eol(d, &o);
			if (c == '\r') {
				d->state = S_CR;
			} else {
				put_byte(&o, c);
				d->state = S_MID;
			}
			break;
		}
	}
	out->len = (size_t)(o.p - out->data);
	return i;
}
