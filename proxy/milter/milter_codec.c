/* milter_codec.c — the milter protocol v6 codec of milter_codec.h: encodes
 * commands, cuts the milter's byte stream into packets, parses replies.
 *
 * Never does I/O, never uses libuv, never logs, never reads a clock; every
 * packet it reads or writes is bounded by MILTER_PACKET_MAX.
 */
#include "proxy/milter/milter_codec.h"

#include <string.h>

/* ---- Encoders ---------------------------------------------------------- */

static void put_u32(unsigned char *p, uint32_t v)
{
	p[0] = (unsigned char)(v >> 24);
	p[1] = (unsigned char)(v >> 16);
	p[2] = (unsigned char)(v >> 8);
	p[3] = (unsigned char)v;
}

static uint32_t get_u32(const char *p)
{
	const unsigned char *u = (const unsigned char *)p;
	return (uint32_t)u[0] << 24 | (uint32_t)u[1] << 16 | (uint32_t)u[2] << 8 | u[3];
}

/* A packet under construction: its start in b, so a failure rolls back. */
struct pk {
	struct buf *b;
	size_t start;
	bool ok;
};

static struct pk pk_begin(struct buf *b, char cmd)
{
	struct pk k = {b, b->len, true};
	unsigned char head[5] = {0, 0, 0, 0, (unsigned char)cmd};
	k.ok = buf_append(b, head, sizeof(head));
	return k;
}

static void pk_bytes(struct pk *k, const void *p, size_t n)
{
	if (!k->ok)
		return;
	if (k->b->len - k->start - 4 + n > MILTER_PACKET_MAX || !buf_append(k->b, p, n))
		k->ok = false;
}

static void pk_str(struct pk *k, const char *s)
{
	if (!s)
		s = "";
	pk_bytes(k, s, strlen(s) + 1);
}

static void pk_u32(struct pk *k, uint32_t v)
{
	unsigned char u[4];
	put_u32(u, v);
	pk_bytes(k, u, 4);
}

static bool pk_end(struct pk *k)
{
	if (!k->ok) {
		if (k->b->len > k->start)
			k->b->len = k->start;
		return false;
	}
	put_u32((unsigned char *)k->b->data + k->start, (uint32_t)(k->b->len - k->start - 4));
	return true;
}

bool milter_put_optneg(struct buf *b, uint32_t version, uint32_t actions, uint32_t protocol)
{
	struct pk k = pk_begin(b, SMFIC_OPTNEG);
	pk_u32(&k, version);
	pk_u32(&k, actions);
	pk_u32(&k, protocol);
	return pk_end(&k);
}

bool milter_put_macros(struct buf *b, char stage, const char *const *pairs, size_t n)
{
	size_t used = 0;
	for (size_t i = 0; i < n; i++)
		if (pairs[2 * i + 1] && *pairs[2 * i + 1])
			used++;
	if (!used)
		return true;
	struct pk k = pk_begin(b, SMFIC_MACRO);
	pk_bytes(&k, &stage, 1);
	for (size_t i = 0; i < n; i++) {
		if (!pairs[2 * i + 1] || !*pairs[2 * i + 1])
			continue;
		pk_str(&k, pairs[2 * i]);
		pk_str(&k, pairs[2 * i + 1]);
	}
	return pk_end(&k);
}

bool milter_put_connect(struct buf *b, const char *host, char family, uint16_t port,
			const char *addr)
{
	struct pk k = pk_begin(b, SMFIC_CONNECT);
	pk_str(&k, host);
	pk_bytes(&k, &family, 1);
	if (family != SMFIA_UNKNOWN) {
		unsigned char u[2] = {(unsigned char)(port >> 8), (unsigned char)port};
		pk_bytes(&k, u, 2);
		pk_str(&k, addr);
	}
	return pk_end(&k);
}

bool milter_put_helo(struct buf *b, const char *helo)
{
	struct pk k = pk_begin(b, SMFIC_HELO);
	pk_str(&k, helo);
	return pk_end(&k);
}

bool milter_put_args(struct buf *b, char cmd, const char *line)
{
	struct pk k = pk_begin(b, cmd);
	const char *p = line ? line : "";
	while (*p == ' ')
		p++;
	/* The path: up to its closing '>' (a quoted local part may hold spaces
	 * and '>'), else up to the first space. */
	const char *e = p;
	if (*e == '<') {
		bool quoted = false;
		for (e++; *e; e++) {
			if (quoted && *e == '\\' && e[1]) {
				e++;
				continue;
			}
			if (*e == '"')
				quoted = !quoted;
			else if (*e == '>' && !quoted) {
				e++;
				break;
			}
		}
	}
	while (*e && *e != ' ')
		e++;
	pk_bytes(&k, p, (size_t)(e - p));
	pk_bytes(&k, "", 1);
	for (p = e;;) {
		while (*p == ' ')
			p++;
		if (!*p)
			break;
		e = p;
		while (*e && *e != ' ')
			e++;
		pk_bytes(&k, p, (size_t)(e - p));
		pk_bytes(&k, "", 1);
		p = e;
	}
	return pk_end(&k);
}

bool milter_put_header(struct buf *b, const char *name, const char *value)
{
	struct pk k = pk_begin(b, SMFIC_HEADER);
	pk_str(&k, name);
	pk_str(&k, value);
	return pk_end(&k);
}

bool milter_put_body(struct buf *b, const char *p, size_t n)
{
	size_t start = b->len;
	while (n) {
		size_t c = n < MILTER_CHUNK_MAX ? n : MILTER_CHUNK_MAX;
		struct pk k = pk_begin(b, SMFIC_BODY);
		pk_bytes(&k, p, c);
		if (!pk_end(&k)) {
			b->len = start;
			return false;
		}
		p += c;
		n -= c;
	}
	return true;
}

bool milter_put_simple(struct buf *b, char cmd)
{
	struct pk k = pk_begin(b, cmd);
	return pk_end(&k);
}

/* ---- Reader ------------------------------------------------------------ */

size_t milter_reader_feed(struct milter_reader *r, const char *p, size_t n,
			  struct milter_packet *pkt, enum milter_read_status *st)
{
	size_t used = 0;
	uint32_t max = r->max ? r->max : MILTER_PACKET_MAX;
	*st = MILTER_READ_MORE;
	if (r->complete) {
		r->complete = false;
		r->head_len = 0;
		r->pkt.len = 0;
	}
	while (r->head_len < 4 && used < n)
		r->head[r->head_len++] = (unsigned char)p[used++];
	if (r->head_len < 4)
		return used;
	if (r->pkt.len == 0) {
		r->want = get_u32((const char *)r->head);
		if (r->want == 0 || r->want > max) {
			*st = MILTER_READ_BAD;
			return used;
		}
	}
	size_t take = r->want - r->pkt.len;
	if (take > n - used)
		take = n - used;
	/* Grow as bytes arrive, never more than the announced length. */
	if (!buf_append(&r->pkt, p + used, take)) {
		*st = MILTER_READ_BAD;
		return used;
	}
	used += take;
	if (r->pkt.len == r->want) {
		r->complete = true;
		pkt->cmd = r->pkt.data[0];
		pkt->payload = r->pkt.data + 1;
		pkt->len = r->pkt.len - 1;
		*st = MILTER_READ_PACKET;
	}
	return used;
}

void milter_reader_reset(struct milter_reader *r)
{
	r->head_len = 0;
	r->want = 0;
	r->pkt.len = 0;
	r->complete = false;
}

void milter_reader_free(struct milter_reader *r)
{
	buf_free(&r->pkt);
	milter_reader_reset(r);
}

/* ---- Replies ----------------------------------------------------------- */

/* Reads one NUL-terminated string at *off; NULL when there is none. */
static const char *take_str(const struct milter_packet *pkt, size_t *off)
{
	if (*off >= pkt->len)
		return NULL;
	const char *s = pkt->payload + *off;
	const char *z = memchr(s, '\0', pkt->len - *off);
	if (!z)
		return NULL;
	*off += (size_t)(z - s) + 1;
	return s;
}

static bool take_u32(const struct milter_packet *pkt, size_t *off, uint32_t *v)
{
	if (pkt->len - *off < 4)
		return false;
	*v = get_u32(pkt->payload + *off);
	*off += 4;
	return true;
}

static bool is_digit(char c)
{
	return c >= '0' && c <= '9';
}

/* Appends one reply line (code, mark, text of len bytes with control
 * characters made spaces, CRLF) when it fits; cut reports it was cut. */
static bool put_line(char *out, size_t outlen, size_t *at, const char *code, char mark,
		     const char *text, size_t len, bool may_cut)
{
	size_t room = outlen - *at; /* the NUL included */
	if (room < 4 + 2 + 1 + 1)
		return false;
	if (4 + len + 2 + 1 > room) {
		if (!may_cut)
			return false;
		len = room - 4 - 2 - 1;
	}
	char *o = out + *at;
	memcpy(o, code, 3);
	o[3] = mark;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)text[i];
		o[4 + i] = (c < 0x20 && c != '\t') || c == 0x7f ? ' ' : (char)c;
	}
	o[4 + len] = '\r';
	o[5 + len] = '\n';
	*at += 6 + len;
	out[*at] = '\0';
	return true;
}

int milter_format_reply(const char *text, char *out, size_t outlen)
{
	if (outlen < 16)
		return -1;
	out[0] = '\0';
	if (!(text[0] == '4' || text[0] == '5') || !is_digit(text[1]) || !is_digit(text[2]) ||
	    !(text[3] == ' ' || text[3] == '-' || text[3] == '\0' || text[3] == '\r' ||
	      text[3] == '\n'))
		return -1;
	/* An enhanced status code must be of the same class (as Postfix). */
	if (text[3] != '\0' && is_digit(text[4]) && text[4] != text[0])
		return -1;
	char code[3] = {text[0], text[1], text[2]};
	int value = (text[0] - '0') * 100 + (text[1] - '0') * 10 + (text[2] - '0');

	/* Cut into lines; each loses a leading "CODE" plus mark of its own. */
	size_t at = 0;
	bool first = true;
	const char *p = text;
	while (*p) {
		const char *e = p;
		while (*e && *e != '\n')
			e++;
		const char *next = *e ? e + 1 : e;
		if (e > p && e[-1] == '\r')
			e--;
		const char *t = p;
		if (e - p >= 3 && memcmp(p, code, 3) == 0 &&
		    (e - p == 3 || p[3] == ' ' || p[3] == '-'))
			t = e - p == 3 ? e : p + 4;
		bool last = !*next;
		if (!put_line(out, outlen, &at, code, last ? ' ' : '-', t, (size_t)(e - t),
			      first)) {
			/* No room for this line: the previous one becomes the last. */
			size_t ls = at - 2;
			while (ls > 0 && out[ls - 1] != '\n')
				ls--;
			out[ls + 3] = ' ';
			return value;
		}
		first = false;
		p = next;
	}
	if (at == 0) {
		/* Only a code (or empty lines): one line with it. */
		put_line(out, outlen, &at, code, ' ', "", 0, true);
	}
	return value;
}

int milter_parse_reply(const struct milter_packet *pkt, struct milter_reply *out)
{
	size_t off = 0;
	memset(out, 0, offsetof(struct milter_reply, smtp));
	out->smtp[0] = '\0';
	out->cmd = pkt->cmd;
	switch (pkt->cmd) {
	case SMFIR_OPTNEG:
		if (!take_u32(pkt, &off, &out->version) || !take_u32(pkt, &off, &out->actions) ||
		    !take_u32(pkt, &off, &out->protocol))
			return -1;
		/* Then, optionally, the macro lists the milter wants: (stage,
		 * list) pairs. Checked, not kept. */
		while (off < pkt->len) {
			uint32_t stage;
			if (!take_u32(pkt, &off, &stage) || !take_str(pkt, &off))
				return -1;
		}
		return 0;
	case SMFIR_ACCEPT:
	case SMFIR_CONTINUE:
	case SMFIR_REJECT:
	case SMFIR_TEMPFAIL:
	case SMFIR_DISCARD:
	case SMFIR_PROGRESS:
	case SMFIR_SKIP:
	case SMFIR_SHUTDOWN:
	case SMFIR_CONN_FAIL:
		return pkt->len == 0 ? 0 : -1;
	case SMFIR_REPLYCODE: {
		const char *text = take_str(pkt, &off);
		if (!text || off != pkt->len)
			return -1;
		out->code = milter_format_reply(text, out->smtp, sizeof(out->smtp));
		return out->code < 0 ? -1 : 0;
	}
	case SMFIR_QUARANTINE:
	case SMFIR_ADDRCPT:
	case SMFIR_DELRCPT:
		out->addr = take_str(pkt, &off);
		return out->addr && off == pkt->len ? 0 : -1;
	case SMFIR_ADDRCPT_PAR:
	case SMFIR_CHGFROM:
		out->addr = take_str(pkt, &off);
		if (!out->addr)
			return -1;
		if (off < pkt->len) {
			out->args = take_str(pkt, &off);
			if (!out->args)
				return -1;
			if (!*out->args)
				out->args = NULL;
		}
		return off == pkt->len ? 0 : -1;
	case SMFIR_INSHEADER:
	case SMFIR_CHGHEADER:
		if (!take_u32(pkt, &off, &out->index))
			return -1;
		/* fall through */
	case SMFIR_ADDHEADER:
		out->name = take_str(pkt, &off);
		out->value = out->name ? take_str(pkt, &off) : NULL;
		return out->value && off == pkt->len ? 0 : -1;
	case SMFIR_REPLBODY:
		out->data = pkt->payload;
		out->data_len = pkt->len;
		return 0;
	case SMFIR_SETSYMLIST:
		if (!take_u32(pkt, &off, &out->index))
			return -1;
		out->addr = take_str(pkt, &off);
		return out->addr && off == pkt->len ? 0 : -1;
	default:
		return -1;
	}
}

int milter_negotiated(const struct milter_reply *r, uint32_t offered_actions,
		      uint32_t offered_protocol, uint32_t *actions, uint32_t *protocol)
{
	if (r->cmd != SMFIR_OPTNEG || r->version < 2 || r->version > MILTER_VERSION)
		return -1;
	*actions = r->actions & offered_actions;
	*protocol = r->protocol & offered_protocol;
	return 0;
}
