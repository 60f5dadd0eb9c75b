/* reply_parser.c — the incremental reply collector of reply_parser.h.
 * Never does I/O; allocates only through its bounded buffer. */
#include "proxy/smtp/reply_parser.h"

#include <string.h>

static int digit(char c)
{
	return c >= '0' && c <= '9';
}

/* Checks the complete line at text[line_start..len) (without its line end).
 * Returns -1 when malformed, 1 when it is the last line of the reply, else 0. */
static int check_line(struct reply_parser *r)
{
	size_t len = r->text.len - r->line_start;
	if (len < 3)
		return -1; /* also an empty first line: text.data may be NULL */
	const char *l = r->text.data + r->line_start;
	if (!digit(l[0]) || !digit(l[1]) || !digit(l[2]))
		return -1;
	if (len > 3 && l[3] != ' ' && l[3] != '-')
		return -1;
	int code = (l[0] - '0') * 100 + (l[1] - '0') * 10 + (l[2] - '0');
	if (r->lines == 0)
		r->code = code;
	else if (code != r->code)
		return -1;
	return len == 3 || l[3] == ' ';
}

size_t reply_parser_feed(struct reply_parser *r, const char *p, size_t n, enum reply_status *status)
{
	size_t i = 0;
	*status = REPLY_MORE;
	while (i < n) {
		const char *lf = memchr(p + i, '\n', n - i);
		size_t take = lf ? (size_t)(lf - (p + i)) : n - i;
		if (r->text.len - r->line_start + take > REPLY_LINE_MAX ||
		    r->text.len + take + 2 > REPLY_MAX || !buf_append(&r->text, p + i, take)) {
			*status = REPLY_BAD;
			return i;
		}
		i += take;
		if (!lf)
			break;
		i++; /* the LF */
		/* A CR before the LF belongs to the line end, not the line. */
		if (r->text.len > r->line_start && r->text.data[r->text.len - 1] == '\r')
			r->text.len--;
		int last = check_line(r);
		if (last < 0 ||
		    memchr(r->text.data + r->line_start, '\r', r->text.len - r->line_start) ||
		    !buf_append(&r->text, "\r\n", 2)) {
			*status = REPLY_BAD;
			return i;
		}
		r->lines++;
		r->line_start = r->text.len;
		if (last) {
			*status = REPLY_DONE;
			return i;
		}
	}
	return i;
}

void reply_parser_reset(struct reply_parser *r)
{
	r->text.len = 0;
	r->line_start = 0;
	r->code = 0;
	r->lines = 0;
}

void reply_parser_free(struct reply_parser *r)
{
	buf_free(&r->text);
	reply_parser_reset(r);
}
