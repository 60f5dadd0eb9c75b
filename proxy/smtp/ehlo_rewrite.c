/* ehlo_rewrite.c — keyword-mask rewriting of the EHLO reply (ehlo_rewrite.h).
 * Never does I/O; never decides policy itself. */
#include "proxy/smtp/ehlo_rewrite.h"

#include <string.h>
#include <strings.h>

/* Appends one reply line "250-text" or "250 text" with CRLF. */
static bool put_line(struct buf *out, bool last, const char *text, size_t len)
{
	return buf_append(out, last ? "250 " : "250-", 4) && buf_append(out, text, len) &&
	       buf_append(out, "\r\n", 2);
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
	} keep[64];
	size_t n_keep = 0;
	size_t pos = 0;
	while (pos < len) {
		const char *eol = memchr(text + pos, '\r', len - pos);
		size_t end = eol ? (size_t)(eol - text) : len;
		size_t off = pos + 4 <= end ? pos + 4 : end;
		size_t l = end - off;
		bool first = pos == 0;
		if ((first || smtp_rules_ehlo_keyword(s, text + off, l) == EHLO_KEEP) &&
		    n_keep < sizeof(keep) / sizeof(keep[0])) {
			keep[n_keep].off = off;
			keep[n_keep].len = l;
			n_keep++;
		}
		pos = end + 2;
	}

	bool add_starttls = smtp_rules_ehlo_add_starttls(s);
	for (size_t i = 0; i < n_keep; i++) {
		bool last = i + 1 == n_keep && !add_starttls;
		if (!put_line(out, last, text + keep[i].off, keep[i].len))
			return false;
	}
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
