/* test_milter_codec.c — unit tests of proxy/milter/milter_codec.[ch]: every
 * encoder byte for byte, every reply parsed (whole and split at every byte
 * boundary), malformed packets refused. Never opens a socket.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "proxy/milter/milter_codec.h"

/* Literal packets: the string's bytes without its final NUL. */
#define LIT(s) s, sizeof(s) - 1

static void expect_bytes(const struct buf *b, const char *want, size_t n)
{
	assert_int_equal(b->len, n);
	assert_memory_equal(b->data, want, n);
}

static void test_optneg(void **state)
{
	(void)state;
	struct buf b = {0};
	assert_true(milter_put_optneg(&b, 6, MILTER_ACTIONS_ALL, SMFIP_NOHELO | SMFIP_NR_HDR));
	expect_bytes(&b, LIT("\0\0\0\x0dO\0\0\0\x06\0\0\x01\xff\0\0\0\x82"));
	buf_free(&b);
	assert_int_equal(MILTER_ACTIONS_ALL, SMFIF_ADDHDRS | SMFIF_CHGBODY | SMFIF_ADDRCPT |
						 SMFIF_DELRCPT | SMFIF_CHGHDRS | SMFIF_QUARANTINE |
						 SMFIF_CHGFROM | SMFIF_ADDRCPT_PAR |
						 SMFIF_SETSYMLIST);
}

static void test_macros(void **state)
{
	(void)state;
	struct buf b = {0};
	const char *pairs[] = {"j", "mx.test", "_", "", "{client_port}", "25", "i", NULL};
	assert_true(milter_put_macros(&b, SMFIC_CONNECT, pairs, 4));
	expect_bytes(&b, LIT("\0\0\0\x1d"
			     "DCj\0mx.test\0{client_port}\0"
			     "25\0"));
	b.len = 0;
	const char *none[] = {"i", ""};
	assert_true(milter_put_macros(&b, SMFIC_BODYEOB, none, 1));
	assert_int_equal(b.len, 0);
	buf_free(&b);
}

static void test_connect(void **state)
{
	(void)state;
	struct buf b = {0};
	assert_true(milter_put_connect(&b, "[192.0.2.1]", SMFIA_INET, 2525, "192.0.2.1"));
	expect_bytes(&b, LIT("\0\0\0\x1a"
			     "C[192.0.2.1]\0"
			     "4\x09\xdd"
			     "192.0.2.1\0"));
	b.len = 0;
	assert_true(milter_put_connect(&b, "h", SMFIA_INET6, 1, "::1"));
	expect_bytes(&b, LIT("\0\0\0\x0a"
			     "Ch\0"
			     "6\0\x01::1\0"));
	b.len = 0;
	assert_true(milter_put_connect(&b, "localhost", SMFIA_UNIX, 0, "/run/s"));
	expect_bytes(&b, LIT("\0\0\0\x15"
			     "Clocalhost\0L\0\0/run/s\0"));
	b.len = 0;
	assert_true(milter_put_connect(&b, "unknown", SMFIA_UNKNOWN, 0, NULL));
	expect_bytes(&b, LIT("\0\0\0\x0a"
			     "Cunknown\0U"));
	buf_free(&b);
}

static void test_helo_mail_rcpt(void **state)
{
	(void)state;
	struct buf b = {0};
	assert_true(milter_put_helo(&b, "client.test"));
	expect_bytes(&b, LIT("\0\0\0\x0d"
			     "Hclient.test\0"));
	b.len = 0;
	assert_true(milter_put_args(&b, SMFIC_MAIL, "<a@b.test> SIZE=10  BODY=8BITMIME"));
	expect_bytes(&b, LIT("\0\0\0\x22"
			     "M<a@b.test>\0SIZE=10\0BODY=8BITMIME\0"));
	b.len = 0;
	assert_true(milter_put_args(&b, SMFIC_RCPT, "<\"x >y\"@b.test>"));
	expect_bytes(&b, LIT("\0\0\0\x11"
			     "R<\"x >y\"@b.test>\0"));
	b.len = 0;
	assert_true(milter_put_args(&b, SMFIC_MAIL, "<>"));
	expect_bytes(&b, LIT("\0\0\0\x04M<>\0"));
	buf_free(&b);
}

static void test_header_body_simple(void **state)
{
	(void)state;
	struct buf b = {0};
	assert_true(milter_put_header(&b, "Subject", "hi\r\n there"));
	expect_bytes(&b, LIT("\0\0\0\x14LSubject\0hi\r\n there\0"));
	b.len = 0;
	assert_true(milter_put_body(&b, "abc", 3));
	expect_bytes(&b, LIT("\0\0\0\x04"
			     "Babc"));
	b.len = 0;
	assert_true(milter_put_body(&b, "", 0));
	assert_int_equal(b.len, 0);
	size_t n = 70000;
	char *big = malloc(n);
	assert_non_null(big);
	memset(big, 'x', n);
	assert_true(milter_put_body(&b, big, n));
	assert_int_equal(b.len, 5 + 65535 + 5 + (n - 65535));
	assert_memory_equal(b.data,
			    "\0\x01\0\0"
			    "B",
			    5);
	assert_memory_equal(b.data + 5 + 65535,
			    "\0\0\x11\x72"
			    "B",
			    5);
	free(big);
	b.len = 0;
	const char cmds[] = {SMFIC_DATA, SMFIC_EOH, SMFIC_BODYEOB, SMFIC_ABORT, SMFIC_QUIT};
	for (size_t i = 0; i < sizeof(cmds); i++)
		assert_true(milter_put_simple(&b, cmds[i]));
	expect_bytes(&b, LIT("\0\0\0\x01T\0\0\0\x01N\0\0\0\x01"
			     "E\0\0\0\x01"
			     "A\0\0\0\x01Q"));
	buf_free(&b);
}

static void test_encode_bound(void **state)
{
	(void)state;
	struct buf b = {0};
	size_t n = MILTER_PACKET_MAX + 10;
	char *big = malloc(n + 1);
	assert_non_null(big);
	memset(big, 'v', n);
	big[n] = '\0';
	assert_true(milter_put_simple(&b, SMFIC_DATA));
	assert_false(milter_put_header(&b, "X", big));
	assert_int_equal(b.len, 5); /* rolled back */
	free(big);
	buf_free(&b);
}

/* Feeds s (n bytes) to a fresh reader cut at split (n: whole) and expects
 * exactly one packet, parsed into out. */
static int read_one(const char *s, size_t n, size_t split, struct milter_reply *out)
{
	struct milter_reader r = {0};
	struct milter_packet pkt;
	enum milter_read_status st = MILTER_READ_MORE;
	size_t at = 0;
	int got = 0, rc = -2;
	size_t cuts[2] = {split < n ? split : n, n};
	for (int c = 0; c < 2; c++) {
		while (at < cuts[c]) {
			size_t used = milter_reader_feed(&r, s + at, cuts[c] - at, &pkt, &st);
			at += used;
			if (st == MILTER_READ_BAD) {
				milter_reader_free(&r);
				return -3;
			}
			if (st == MILTER_READ_PACKET) {
				/* The reply points into the packet: keep a copy that
				 * outlives the reader. */
				static char keep[4096];
				assert_true(pkt.len <= sizeof(keep));
				memcpy(keep, pkt.payload, pkt.len);
				pkt.payload = keep;
				got++;
				rc = milter_parse_reply(&pkt, out);
			} else {
				assert_int_equal(at, cuts[c]);
			}
		}
	}
	milter_reader_free(&r);
	assert_int_equal(got, 1);
	return rc;
}

/* Each reply parsed whole and at every cut. */
static int read_all_splits(const char *s, size_t n, struct milter_reply *out)
{
	int rc = read_one(s, n, n, out);
	for (size_t i = 0; i < n; i++) {
		struct milter_reply again;
		int rc2 = read_one(s, n, i, &again);
		assert_int_equal(rc, rc2);
		assert_int_equal(again.cmd, out->cmd);
		assert_string_equal(again.smtp, out->smtp);
	}
	return rc;
}

static void test_replies_simple(void **state)
{
	(void)state;
	struct milter_reply r;
	const char cmds[] = "acrtdps4f";
	for (size_t i = 0; cmds[i]; i++) {
		char pkt[5] = {0, 0, 0, 1, cmds[i]};
		assert_int_equal(read_all_splits(pkt, 5, &r), 0);
		assert_int_equal(r.cmd, cmds[i]);
		/* With a payload they are malformed. */
		char bad[6] = {0, 0, 0, 2, cmds[i], 'x'};
		assert_int_equal(read_one(bad, 6, 6, &r), -1);
	}
}

static void test_reply_optneg(void **state)
{
	(void)state;
	struct milter_reply r;
	assert_int_equal(read_all_splits(LIT("\0\0\0\x0dO\0\0\0\x06\0\0\0\x03\0\x08\0\x81"), &r),
			 0);
	assert_int_equal(r.version, 6);
	assert_int_equal(r.actions, 3);
	assert_int_equal(r.protocol, 0x80081);
	uint32_t a, p;
	assert_int_equal(milter_negotiated(&r, SMFIF_ADDHDRS, MILTER_PROTOCOL_OFFER, &a, &p), 0);
	assert_int_equal(a, SMFIF_ADDHDRS);
	assert_int_equal(p, 0x80081);
	/* With the macro lists libmilter appends. */
	assert_int_equal(read_all_splits(LIT("\0\0\0\x1dO\0\0\0\x06\0\0\0\x01\0\0\0\0"
					     "\0\0\0\x02{mail_addr}\0"),
					 &r),
			 0);
	/* Short, or a list without its NUL. */
	assert_int_equal(read_one(LIT("\0\0\0\x09O\0\0\0\x06\0\0\0\x01"), SIZE_MAX, &r), -1);
	assert_int_equal(
	    read_one(LIT("\0\0\0\x12O\0\0\0\x06\0\0\0\x01\0\0\0\0\0\0\0\x02x"), SIZE_MAX, &r), -1);
	/* Versions outside 2..6. */
	r.version = 1;
	assert_int_equal(milter_negotiated(&r, 0, 0, &a, &p), -1);
	r.version = 7;
	assert_int_equal(milter_negotiated(&r, 0, 0, &a, &p), -1);
	r.version = 2;
	assert_int_equal(milter_negotiated(&r, 0, 0, &a, &p), 0);
}

static void test_reply_modifications(void **state)
{
	(void)state;
	struct milter_reply r;
	assert_int_equal(read_all_splits(LIT("\0\0\0\x09hX-A\0v 1\0"), &r), 0);
	assert_int_equal(r.cmd, 'h');
	assert_string_equal(r.name, "X-A");
	assert_string_equal(r.value, "v 1");

	assert_int_equal(read_all_splits(LIT("\0\0\0\x0di\0\0\0\x02X-B\0val\0"), &r), 0);
	assert_int_equal(r.index, 2);
	assert_string_equal(r.name, "X-B");
	assert_string_equal(r.value, "val");

	assert_int_equal(read_all_splits(LIT("\0\0\0\x0bm\0\0\0\x01Subj\0\0"), &r), 0);
	assert_int_equal(r.cmd, 'm');
	assert_int_equal(r.index, 1);
	assert_string_equal(r.name, "Subj");
	assert_string_equal(r.value, "");

	assert_int_equal(read_all_splits(LIT("\0\0\0\x06"
					     "bA\0\r\nB"),
					 &r),
			 0);
	assert_int_equal(r.data_len, 5);
	assert_memory_equal(r.data, "A\0\r\nB", 5);

	assert_int_equal(read_all_splits(LIT("\0\0\0\x07+<a@b>\0"), &r), 0);
	assert_string_equal(r.addr, "<a@b>");
	assert_int_equal(read_all_splits(LIT("\0\0\0\x07-<a@b>\0"), &r), 0);
	assert_string_equal(r.addr, "<a@b>");
	assert_int_equal(read_all_splits(LIT("\0\0\0\x0e"
					     "2<a@b>\0NOTIFY\0"),
					 &r),
			 0);
	assert_string_equal(r.addr, "<a@b>");
	assert_string_equal(r.args, "NOTIFY");
	assert_int_equal(read_all_splits(LIT("\0\0\0\x07"
					     "e<c@d>\0"),
					 &r),
			 0);
	assert_string_equal(r.addr, "<c@d>");
	assert_null(r.args);
	assert_int_equal(read_all_splits(LIT("\0\0\0\x0f"
					     "e<c@d>\0SIZE=10\0"),
					 &r),
			 0);
	assert_string_equal(r.args, "SIZE=10");
	assert_int_equal(read_all_splits(LIT("\0\0\0\x06qspam\0"), &r), 0);
	assert_string_equal(r.addr, "spam");
	assert_int_equal(read_all_splits(LIT("\0\0\0\x07l\0\0\0\x03i\0"), &r), 0);
	assert_int_equal(r.index, 3);
	assert_string_equal(r.addr, "i");

	/* Malformed: missing NULs, trailing bytes, short index, unknown. */
	assert_int_equal(read_one(LIT("\0\0\0\x05hX-A\0"), SIZE_MAX, &r), -1);
	assert_int_equal(read_one(LIT("\0\0\0\x04hX-A"), SIZE_MAX, &r), -1);
	assert_int_equal(read_one(LIT("\0\0\0\x08hX\0v\0zz\0"), SIZE_MAX, &r), -1);
	assert_int_equal(read_one(LIT("\0\0\0\x03i\0\0"), SIZE_MAX, &r), -1);
	assert_int_equal(read_one(LIT("\0\0\0\x02+a"), SIZE_MAX, &r), -1);
	assert_int_equal(read_one(LIT("\0\0\0\x03+a\0"), SIZE_MAX, &r), 0);
	assert_int_equal(read_one(LIT("\0\0\0\x04+a\0b"), SIZE_MAX, &r), -1);
	assert_int_equal(read_one(LIT("\0\0\0\x01Z"), SIZE_MAX, &r), -1);
	assert_int_equal(read_one(LIT("\0\0\0\x01y"), SIZE_MAX, &r), -1);
}

static void test_replycode(void **state)
{
	(void)state;
	struct milter_reply r;
	assert_int_equal(read_all_splits(LIT("\0\0\0\x17y550 5.7.1 Go away now\0"), &r), 0);
	assert_int_equal(r.code, 550);
	assert_string_equal(r.smtp, "550 5.7.1 Go away now\r\n");

	/* smfi_setmlreply's form: continuation lines with the code. */
	assert_int_equal(
	    read_all_splits(LIT("\0\0\0\x23y451-4.7.1 first\r\n451 4.7.1 second\0"), &r), 0);
	assert_int_equal(r.code, 451);
	assert_string_equal(r.smtp, "451-4.7.1 first\r\n451 4.7.1 second\r\n");

	char out[64];
	/* Lines without the code get it; bare LF; a final CRLF. */
	assert_int_equal(milter_format_reply("554 a\nb\r\n554-c\r\n", out, sizeof(out)), 554);
	assert_string_equal(out, "554-a\r\n554-b\r\n554 c\r\n");
	assert_int_equal(milter_format_reply("421", out, sizeof(out)), 421);
	assert_string_equal(out, "421 \r\n");
	/* Control characters become spaces. */
	assert_int_equal(milter_format_reply("550 a\rb\x01", out, sizeof(out)), 550);
	assert_string_equal(out, "550 a b \r\n");
	/* Too long: whole lines that fit, the first one cut. */
	assert_int_equal(
	    milter_format_reply("550 x123456789\r\n550 x123456789\r\n550 abc", out, 40), 550);
	assert_string_equal(out, "550-x123456789\r\n550 x123456789\r\n");
	assert_int_equal(milter_format_reply("550 x123456789012345678901234567890", out, 20), 550);
	assert_string_equal(out, "550 x123456789012\r\n");
	/* Refused: not 4xx/5xx, no digits, no separator, class mismatch. */
	assert_int_equal(milter_format_reply("250 ok", out, sizeof(out)), -1);
	assert_int_equal(milter_format_reply("55x ok", out, sizeof(out)), -1);
	assert_int_equal(milter_format_reply("550ok", out, sizeof(out)), -1);
	assert_int_equal(milter_format_reply("550 4.7.1 no", out, sizeof(out)), -1);
	assert_int_equal(milter_format_reply("", out, sizeof(out)), -1);
	assert_int_equal(read_one(LIT("\0\0\0\x08y250 ok\0"), SIZE_MAX, &r), -1);
	assert_int_equal(read_one(LIT("\0\0\0\x07y550 ok"), SIZE_MAX, &r), -1);
}

static void test_reader_stream(void **state)
{
	(void)state;
	/* Three packets in one stream, fed one byte at a time and at once. */
	const char s[] = "\0\0\0\x01p\0\0\0\x06hA\0b\0\0\0\0\0\x01"
			 "c";
	size_t n = sizeof(s) - 1;
	for (int mode = 0; mode < 2; mode++) {
		struct milter_reader r = {0};
		struct milter_packet pkt;
		enum milter_read_status st;
		char got[4] = {0};
		int k = 0;
		size_t at = 0;
		while (at < n) {
			size_t len = mode ? 1 : n - at;
			at += milter_reader_feed(&r, s + at, len, &pkt, &st);
			assert_int_not_equal(st, MILTER_READ_BAD);
			if (st == MILTER_READ_PACKET) {
				assert_true(k < 3);
				got[k++] = pkt.cmd;
			}
		}
		assert_string_equal(got, "phc");
		milter_reader_free(&r);
	}
}

static void test_reader_bad(void **state)
{
	(void)state;
	struct milter_reader r = {0};
	struct milter_packet pkt;
	enum milter_read_status st;
	assert_int_equal(milter_reader_feed(&r, "\0\0\0\0c", 5, &pkt, &st), 4);
	assert_int_equal(st, MILTER_READ_BAD);
	milter_reader_reset(&r);
	char big[4] = {0, 0x11, 0, 1}; /* 1 MiB + 64 KiB + 1 */
	milter_reader_feed(&r, big, 4, &pkt, &st);
	assert_int_equal(st, MILTER_READ_BAD);
	milter_reader_reset(&r);
	char ok[4] = {0, 0x11, 0, 0};
	milter_reader_feed(&r, ok, 4, &pkt, &st);
	assert_int_equal(st, MILTER_READ_MORE);
	milter_reader_reset(&r);
	r.max = 16;
	milter_reader_feed(&r, "\0\0\0\x11", 4, &pkt, &st);
	assert_int_equal(st, MILTER_READ_BAD);
	milter_reader_free(&r);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_optneg),
	    cmocka_unit_test(test_macros),
	    cmocka_unit_test(test_connect),
	    cmocka_unit_test(test_helo_mail_rcpt),
	    cmocka_unit_test(test_header_body_simple),
	    cmocka_unit_test(test_encode_bound),
	    cmocka_unit_test(test_replies_simple),
	    cmocka_unit_test(test_reply_optneg),
	    cmocka_unit_test(test_reply_modifications),
	    cmocka_unit_test(test_replycode),
	    cmocka_unit_test(test_reader_stream),
	    cmocka_unit_test(test_reader_bad),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
