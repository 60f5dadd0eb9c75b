/* fuzz_milter_codec.c — libFuzzer harness for the milter protocol codec
 * (proxy/milter/milter_codec.[ch], issue 14).
 *
 * Input: one configuration byte, then a milter's byte stream.
 *   byte 0: bits 0-1 chunking (one byte, up to 8, up to 300, all at once);
 *           bit 2 a small reader bound (64 bytes) instead of the default;
 *           bits 3-7 seed of the chunk lengths.
 * Every packet read is parsed as a reply; the whole stream is also given
 * to milter_format_reply() and milter_put_args() as text.
 *
 * Invariants checked (a violation traps):
 * - the reader consumes at most what it is given, always makes progress
 *   until it reports a packet or an error, and a packet's length is the
 *   announced one, never 0, never above the bound;
 * - a parsed reply's strings lie inside the packet and end with its NUL;
 *   REPLBODY data is the whole payload;
 * - a replycode's SMTP reply (and milter_format_reply's) is a well-formed
 *   reply: lines "CODE-" then one "CODE ", CRLF-ended, no other CR or LF,
 *   no control character, shorter than its buffer, code 400-599;
 * - an added, inserted or changed header re-encoded as SMFIC_HEADER and
 *   read back gives the same name and value; a changed sender or recipient
 *   re-encoded as SMFIC_MAIL gives a packet the reader takes back;
 * - everything is freed.
 *
 * Never does I/O, never reads a clock, never keeps state across inputs.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/milter/milter_codec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x)                                                                                   \
	do {                                                                                       \
		if (!(x))                                                                          \
			__builtin_trap();                                                          \
	} while (0)

static bool inside(const struct milter_packet *pkt, const char *s)
{
	if (!s)
		return true;
	CHECK(s >= pkt->payload && s < pkt->payload + pkt->len);
	CHECK(memchr(s, '\0', (size_t)(pkt->payload + pkt->len - s)) != NULL);
	return true;
}

static void check_smtp(const char *out, size_t outlen, int code)
{
	CHECK(code >= 400 && code <= 599);
	size_t len = strlen(out);
	CHECK(len < outlen && len >= 6);
	char c[4] = {(char)('0' + code / 100), (char)('0' + code / 10 % 10),
		     (char)('0' + code % 10), 0};
	const char *p = out;
	for (;;) {
		const char *lf = strchr(p, '\n');
		CHECK(lf && lf - p >= 5 && lf[-1] == '\r');
		CHECK(memcmp(p, c, 3) == 0);
		bool last = lf[1] == '\0';
		CHECK(p[3] == (last ? ' ' : '-'));
		for (const char *q = p; q < lf - 1; q++)
			CHECK((unsigned char)*q >= 0x20 || *q == '\t');
		if (last)
			break;
		p = lf + 1;
	}
}

/* A packet of b read back whole: the one packet it holds. */
static void read_back(const struct buf *b, char cmd, const char *s1, const char *s2)
{
	struct milter_reader r = {0};
	struct milter_packet pkt;
	enum milter_read_status st;
	size_t used = milter_reader_feed(&r, b->data, b->len, &pkt, &st);
	CHECK(st == MILTER_READ_PACKET && used == b->len && pkt.cmd == cmd);
	if (s1) {
		size_t n1 = strlen(s1) + 1;
		CHECK(pkt.len >= n1 && memcmp(pkt.payload, s1, n1) == 0);
		if (s2) {
			size_t n2 = strlen(s2) + 1;
			CHECK(pkt.len == n1 + n2 && memcmp(pkt.payload + n1, s2, n2) == 0);
		}
	}
	milter_reader_free(&r);
}

static void check_reply(const struct milter_packet *pkt)
{
	struct milter_reply r;
	if (milter_parse_reply(pkt, &r) != 0)
		return;
	CHECK(r.cmd == pkt->cmd);
	inside(pkt, r.name);
	inside(pkt, r.value);
	inside(pkt, r.addr);
	inside(pkt, r.args);
	struct buf b = {0};
	switch (r.cmd) {
	case SMFIR_REPLYCODE:
		check_smtp(r.smtp, sizeof(r.smtp), r.code);
		break;
	case SMFIR_REPLBODY:
		CHECK(r.data == pkt->payload && r.data_len == pkt->len);
		break;
	case SMFIR_ADDHEADER:
	case SMFIR_INSHEADER:
	case SMFIR_CHGHEADER:
		CHECK(r.name && r.value);
		if (milter_put_header(&b, r.name, r.value))
			read_back(&b, SMFIC_HEADER, r.name, r.value);
		break;
	case SMFIR_CHGFROM:
	case SMFIR_ADDRCPT:
	case SMFIR_ADDRCPT_PAR:
	case SMFIR_DELRCPT:
		CHECK(r.addr);
		if (milter_put_args(&b, SMFIC_MAIL, r.addr))
			read_back(&b, SMFIC_MAIL, NULL, NULL);
		break;
	case SMFIR_OPTNEG: {
		uint32_t a = 0, p = 0;
		if (milter_negotiated(&r, MILTER_ACTIONS_ALL, MILTER_PROTOCOL_OFFER, &a, &p) == 0)
			CHECK((a & ~MILTER_ACTIONS_ALL) == 0 && (p & ~MILTER_PROTOCOL_OFFER) == 0);
		break;
	}
	default:
		break;
	}
	buf_free(&b);
}

static size_t next_chunk(uint32_t *rng, unsigned mode, size_t left)
{
	size_t n = left;
	*rng ^= *rng << 13;
	*rng ^= *rng >> 17;
	*rng ^= *rng << 5;
	if (mode == 0)
		n = 1;
	else if (mode == 1)
		n = 1 + *rng % 8;
	else if (mode == 2)
		n = 1 + *rng % 300;
	return n < left ? n : left;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	unsigned mode = data[0] & 3;
	uint32_t rng = 0x9e3779b9u ^ (uint32_t)(data[0] >> 3);
	const char *p = (const char *)data + 1;
	size_t left = size - 1;

	struct milter_reader r = {0};
	if (data[0] & 4)
		r.max = 64;
	uint32_t max = r.max ? r.max : MILTER_PACKET_MAX;
	bool bad = false;
	while (left && !bad) {
		size_t n = next_chunk(&rng, mode, left);
		const char *q = p;
		size_t qn = n;
		while (qn) {
			struct milter_packet pkt;
			enum milter_read_status st;
			uint32_t before = r.complete ? 0 : (uint32_t)r.pkt.len;
			size_t used = milter_reader_feed(&r, q, qn, &pkt, &st);
			CHECK(used <= qn);
			if (st == MILTER_READ_BAD) {
				bad = true;
				break;
			}
			if (st == MILTER_READ_PACKET) {
				CHECK(pkt.len + 1 == r.want && r.want >= 1 && r.want <= max);
				CHECK(pkt.len + 1 - before <= used);
				check_reply(&pkt);
			} else {
				CHECK(used == qn); /* MORE: all taken */
			}
			CHECK(used > 0);
			q += used;
			qn -= used;
		}
		p += n;
		left -= n;
	}
	milter_reader_free(&r);

	/* The stream as text. */
	char *text = malloc(size);
	if (!text)
		return 0;
	memcpy(text, data + 1, size - 1);
	text[size - 1] = '\0';
	char out[MILTER_SMTP_REPLY_MAX];
	size_t outlen = 16 + data[0] % (sizeof(out) - 16);
	int code = milter_format_reply(text, out, outlen);
	if (code >= 0)
		check_smtp(out, outlen, code);
	struct buf b = {0};
	if (milter_put_args(&b, SMFIC_RCPT, text))
		read_back(&b, SMFIC_RCPT, NULL, NULL);
	buf_free(&b);
	free(text);
	return 0;
}
