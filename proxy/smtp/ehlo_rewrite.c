/* ehlo_rewrite.c — keyword-mask rewriting of the EHLO reply (ehlo_rewrite.h).
 * Never does I/O; never decides policy itself. */
#include "proxy/smtp/ehlo_rewrite.h"

#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

/* Appends one reply line "250-text" or "250 text" with CRLF. */
static bool put_line(struct buf *out, bool last, const char *text, size_t len)
{
	return buf_append(out, last ? "250 " : "250-", 4) && buf_append(out, text, len) &&
	       buf_append(out, "\r\n", 2);
}

/* When kw (a keyword line's text after "250-") is "SIZE" or "SIZE n", sets
 * *limit to n, or to 0 (no limit) when the number is absent, 0 or not a
 * number, and returns true. A number too large for unsigned long is
 * ULONG_MAX. */
static bool size_keyword(const char *kw, size_t len, unsigned long *limit)
{
	if (len < 4 || strncasecmp(kw, "SIZE", 4) != 0 || (len > 4 && kw[4] != ' '))
		return false;
	size_t i = 4;
	while (i < len && kw[i] == ' ')
		i++;
	unsigned long v = 0;
	size_t digits = 0;
	for (; i < len && kw[i] >= '0' && kw[i] <= '9'; i++, digits++) {
		unsigned d = (unsigned)(kw[i] - '0');
		v = v > (ULONG_MAX - d) / 10 ? ULONG_MAX : v * 10 + d;
	}
	while (i < len && kw[i] == ' ')
		i++;
	*limit = digits > 0 && i == len ? v : 0;
	return true;
}

/* "SIZE n": the smaller of our limit and the backend's (0: none). */
static bool put_size(struct buf *out, bool last, unsigned long ours, unsigned long backend)
{
	char line[32];
	unsigned long n = backend != 0 && backend < ours ? backend : ours;
	int l = snprintf(line, sizeof(line), "SIZE %lu", n);
	return put_line(out, last, line, (size_t)l);
}

bool ehlo_rewrite(const struct smtp_rules_session *s, int code, const char *text, size_t len,
		  struct buf *out)
{
	if (code != 250)
		return buf_append(out, text, len);

	/* Collect the kept lines as (offset, length) pairs of the text after
	 * the four-character "250-" mark; the first line is always kept. An
	 * EHLO reply has few lines; more than fit here are dropped. */
	struct {
		size_t off, len;
		bool size; /* the SIZE line, rewritten from size_limit */
	} keep[64];
	size_t n_keep = 0;
	size_t pos = 0;
	/* With a size limit: the backend's SIZE (the smallest it lists; 0 =
	 * none) and whether a SIZE line is kept already. */
	unsigned long backend_size = 0;
	bool have_size = false;
	while (pos < len) {
		const char *eol = memchr(text + pos, '\r', len - pos);
		size_t end = eol ? (size_t)(eol - text) : len;
		size_t off = pos + 4 <= end ? pos + 4 : end;
		size_t l = end - off;
		bool first = pos == 0;
		bool is_size = false;
		unsigned long n;
		if (!first && s->size_limit != 0 && size_keyword(text + off, l, &n)) {
			is_size = true;
			if (n != 0 && (backend_size == 0 || n < backend_size))
				backend_size = n;
		}
		if ((first || smtp_rules_ehlo_keyword(s, text + off, l) == EHLO_KEEP) &&
		    !(is_size && have_size) && n_keep < sizeof(keep) / sizeof(keep[0])) {
			keep[n_keep].off = off;
			keep[n_keep].len = l;
			keep[n_keep].size = is_size;
			have_size = have_size || is_size;
			n_keep++;
		}
		pos = end + 2;
	}

	bool add_size = s->size_limit != 0 && !have_size;
	bool add_starttls = smtp_rules_ehlo_add_starttls(s);
	for (size_t i = 0; i < n_keep; i++) {
		bool last = i + 1 == n_keep && !add_size && !add_starttls;
		bool ok = keep[i].size ? put_size(out, last, s->size_limit, backend_size)
				       : put_line(out, last, text + keep[i].off, keep[i].len);
		if (!ok)
			return false;
	}
	if (add_size && !put_size(out, !add_starttls, s->size_limit, backend_size))
		return false;
	if (add_starttls && !put_line(out, true, "STARTTLS", 8))
		return false;
	return true;
}

bool ehlo_reply_has_keyword(const char *text, size_t len, const char *keyword)
{
	size_t kl = strlen(keyword);
	size_t pos = 0;
	bool first = true;
	while (pos < len) {
		const char *eol = memchr(text + pos, '\r', len - pos);
		size_t end = eol ? (size_t)(eol - text) : len;
		if (!first && end - pos >= 4 + kl &&
		    strncasecmp(text + pos + 4, keyword, kl) == 0 &&
		    (end - pos == 4 + kl || text[pos + 4 + kl] == ' '))
			return true;
		first = false;
		pos = end + 2;
	}
	return false;
}
