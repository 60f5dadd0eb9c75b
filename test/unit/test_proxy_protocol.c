/* test_proxy_protocol.c — PROXY protocol v1/v2 parsing and building
 * (SPEC §3.3, §7.10): good headers, every split, strict refusals, round
 * trips through the builders. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

#include "proxy/proxy_protocol.h"

static void addr4(struct sockaddr_in *a, const char *ip, unsigned short port)
{
	memset(a, 0, sizeof(*a));
	a->sin_family = AF_INET;
	a->sin_port = htons(port);
	inet_pton(AF_INET, ip, &a->sin_addr);
}

static void addr6(struct sockaddr_in6 *a, const char *ip, unsigned short port)
{
	memset(a, 0, sizeof(*a));
	a->sin6_family = AF_INET6;
	a->sin6_port = htons(port);
	inet_pton(AF_INET6, ip, &a->sin6_addr);
}

/* Every proper prefix asks for more; the whole header parses. */
static void expect_done(const unsigned char *p, size_t len, size_t header_len, struct pp_header *h)
{
	size_t used = 0;
	for (size_t k = 0; k < header_len; k++)
		assert_int_equal(pp_parse(p, k, h, &used), PP_MORE);
	assert_int_equal(pp_parse(p, len, h, &used), PP_DONE);
	assert_int_equal(used, header_len);
}

static void test_s3_3_v1_tcp4(void **state)
{
	(void)state;
	const char *hdr = "PROXY TCP4 192.0.2.7 198.51.100.1 51234 25\r\n";
	char buf[128];
	snprintf(buf, sizeof(buf), "%sEHLO x\r\n", hdr);
	struct pp_header h;
	expect_done((const unsigned char *)buf, strlen(buf), strlen(hdr), &h);
	assert_false(h.local);
	const struct sockaddr_in *s = (const void *)&h.src, *d = (const void *)&h.dst;
	assert_int_equal(s->sin_family, AF_INET);
	assert_int_equal(ntohs(s->sin_port), 51234);
	assert_int_equal(ntohs(d->sin_port), 25);
	char ip[64];
	inet_ntop(AF_INET, &s->sin_addr, ip, sizeof(ip));
	assert_string_equal(ip, "192.0.2.7");
}

static void test_s3_3_v1_tcp6_and_unknown(void **state)
{
	(void)state;
	const char *hdr = "PROXY TCP6 2001:db8::7 2001:db8::1 4000 465\r\n";
	struct pp_header h;
	expect_done((const unsigned char *)hdr, strlen(hdr), strlen(hdr), &h);
	assert_int_equal(h.src.ss_family, AF_INET6);
	const char *unk = "PROXY UNKNOWN\r\n";
	expect_done((const unsigned char *)unk, strlen(unk), strlen(unk), &h);
	assert_true(h.local);
}

static void test_s7_10_v1_malformed_is_bad(void **state)
{
	(void)state;
	static const char *const bad[] = {
	    "PROXY TCP4 192.0.2.7 198.51.100.1 51234 25\n",	/* no CR */
	    "PROXY TCP4 192.0.2.7  198.51.100.1 51234 25\r\n",	/* double space */
	    "PROXY TCP4 192.0.2.7 198.51.100.1 51234 25 \r\n",	/* trailing space */
	    "PROXY TCP4 192.0.2.777 198.51.100.1 51234 25\r\n", /* bad address */
	    "PROXY TCP4 2001:db8::1 198.51.100.1 51234 25\r\n", /* wrong family */
	    "PROXY TCP4 192.0.2.7 198.51.100.1 65536 25\r\n",	/* port range */
	    "PROXY TCP4 192.0.2.7 198.51.100.1 051 25\r\n",	/* leading zero */
	    "PROXY TCP4 192.0.2.7 198.51.100.1 -1 25\r\n",
	    "PROXY UDP4 192.0.2.7 198.51.100.1 1 25\r\n",
	    "PROXY TCP4 192.0.2.7 198.51.100.1 1\r\n", /* missing field */
	    "proxy TCP4 192.0.2.7 198.51.100.1 1 2\r\n",
	    "EHLO client.example\r\n", /* no header at all */
	    "GET / HTTP/1.1\r\n",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct pp_header h;
		size_t used;
		assert_int_equal(pp_parse((const unsigned char *)bad[i], strlen(bad[i]), &h, &used),
				 PP_BAD);
	}
	/* A v1 line that never ends is refused at its maximum length. */
	char longline[PP_V1_MAX + 10];
	memset(longline, 'A', sizeof(longline));
	memcpy(longline, "PROXY ", 6);
	struct pp_header h;
	size_t used;
	assert_int_equal(pp_parse((const unsigned char *)longline, sizeof(longline), &h, &used),
			 PP_BAD);
}

static void test_s3_3_v2_round_trip_tcp4_tcp6(void **state)
{
	(void)state;
	struct sockaddr_in s4, d4;
	addr4(&s4, "203.0.113.9", 40001);
	addr4(&d4, "192.0.2.1", 25);
	unsigned char buf[256];
	int n = pp_build_v2((struct sockaddr *)&s4, (struct sockaddr *)&d4, buf, sizeof(buf));
	assert_int_equal(n, 28);
	assert_int_equal(buf[12], 0x21);
	assert_int_equal(buf[13], 0x11);
	assert_int_equal(buf[15], 12);
	struct pp_header h;
	memcpy(buf + n, "EHLO", 4);
	expect_done(buf, (size_t)n + 4, (size_t)n, &h);
	assert_memory_equal(&((struct sockaddr_in *)&h.src)->sin_addr, &s4.sin_addr, 4);
	assert_int_equal(((struct sockaddr_in *)&h.src)->sin_port, s4.sin_port);
	assert_int_equal(((struct sockaddr_in *)&h.dst)->sin_port, d4.sin_port);

	struct sockaddr_in6 s6, d6;
	addr6(&s6, "2001:db8::9", 40002);
	addr6(&d6, "2001:db8::1", 465);
	n = pp_build_v2((struct sockaddr *)&s6, (struct sockaddr *)&d6, buf, sizeof(buf));
	assert_int_equal(n, 52);
	assert_int_equal(buf[13], 0x21);
	expect_done(buf, (size_t)n, (size_t)n, &h);
	assert_memory_equal(&((struct sockaddr_in6 *)&h.src)->sin6_addr, &s6.sin6_addr, 16);
	assert_int_equal(((struct sockaddr_in6 *)&h.dst)->sin6_port, d6.sin6_port);
}

/* The v2 headers byte for byte, written out from the HAProxy PROXY protocol
 * specification (section 2.2), not from the builder: a wrong length or
 * byte order would round-trip through our own parser unnoticed. */
static void test_s3_3_v2_build_exact_bytes(void **state)
{
	(void)state;
	static const unsigned char sig[12] = {0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d,
					      0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a};
	unsigned char buf[256];

	struct sockaddr_in s4, d4;
	addr4(&s4, "203.0.113.9", 40001); /* 40001 = 0x9c41 */
	addr4(&d4, "192.0.2.1", 25);
	static const unsigned char want4[16] = {
	    0x21, 0x11, 0x00, 0x0c,		  /* v2 PROXY, TCP over IPv4, 12 bytes */
	    203,  0,	113,  9,    192, 0, 2, 1, /* source, destination */
	    0x9c, 0x41, 0x00, 0x19};		  /* ports */
	assert_int_equal(
	    pp_build_v2((struct sockaddr *)&s4, (struct sockaddr *)&d4, buf, sizeof(buf)), 28);
	assert_memory_equal(buf, sig, 12);
	assert_memory_equal(buf + 12, want4, 16);

	struct sockaddr_in6 s6, d6;
	addr6(&s6, "2001:db8::9", 40002);			 /* 0x9c42 */
	addr6(&d6, "2001:db8::1", 465);				 /* 0x01d1 */
	unsigned char want6[52 - 12] = {0x21, 0x21, 0x00, 0x24}; /* TCP over IPv6, 36 */
	static const unsigned char a9[16] = {0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0,
					     0,	   0,	 0,    0,    0, 0, 0, 9};
	memcpy(want6 + 4, a9, 16);
	memcpy(want6 + 20, a9, 16);
	want6[35] = 1;
	want6[36] = 0x9c;
	want6[37] = 0x42;
	want6[38] = 0x01;
	want6[39] = 0xd1;
	assert_int_equal(
	    pp_build_v2((struct sockaddr *)&s6, (struct sockaddr *)&d6, buf, sizeof(buf)), 52);
	assert_memory_equal(buf, sig, 12);
	assert_memory_equal(buf + 12, want6, sizeof(want6));
	assert_int_equal(pp_build_v2((struct sockaddr *)&s6, (struct sockaddr *)&d6, buf, 51), -1);
}

static void test_s3_3_v1_build(void **state)
{
	(void)state;
	struct sockaddr_in s4, d4;
	addr4(&s4, "127.0.0.2", 5555);
	addr4(&d4, "127.0.0.1", 25);
	char buf[PP_V1_MAX + 1];
	int n = pp_build_v1((struct sockaddr *)&s4, (struct sockaddr *)&d4, buf, sizeof(buf));
	assert_true(n > 0);
	assert_string_equal(buf, "PROXY TCP4 127.0.0.2 127.0.0.1 5555 25\r\n");
	struct sockaddr_in6 d6;
	addr6(&d6, "::1", 25);
	assert_int_equal(
	    pp_build_v1((struct sockaddr *)&s4, (struct sockaddr *)&d6, buf, sizeof(buf)), -1);
}

static void test_s7_10_v2_local_unknown_and_bad(void **state)
{
	(void)state;
	unsigned char buf[64];
	struct sockaddr_in s4, d4;
	addr4(&s4, "203.0.113.9", 1);
	addr4(&d4, "192.0.2.1", 2);
	int n = pp_build_v2((struct sockaddr *)&s4, (struct sockaddr *)&d4, buf, sizeof(buf));
	struct pp_header h;
	size_t used;

	buf[12] = 0x20; /* LOCAL: a health check keeps the real addresses */
	assert_int_equal(pp_parse(buf, (size_t)n, &h, &used), PP_DONE);
	assert_true(h.local);

	buf[12] = 0x21;
	buf[13] = 0x00; /* UNSPEC with PROXY: closes (§7.10) */
	assert_int_equal(pp_parse(buf, (size_t)n, &h, &used), PP_BAD);
	buf[13] = 0x12; /* UDP4 */
	assert_int_equal(pp_parse(buf, (size_t)n, &h, &used), PP_BAD);
	buf[13] = 0x11;
	buf[12] = 0x11; /* version 1 in a v2 header */
	assert_int_equal(pp_parse(buf, (size_t)n, &h, &used), PP_BAD);
	buf[12] = 0x22; /* unknown command */
	assert_int_equal(pp_parse(buf, (size_t)n, &h, &used), PP_BAD);
	buf[12] = 0x21;
	buf[15] = 4; /* too short for TCP4 */
	assert_int_equal(pp_parse(buf, (size_t)n, &h, &used), PP_BAD);
	buf[14] = 0xFF; /* longer than accepted */
	assert_int_equal(pp_parse(buf, (size_t)n, &h, &used), PP_BAD);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_s3_3_v1_tcp4),
	    cmocka_unit_test(test_s3_3_v1_tcp6_and_unknown),
	    cmocka_unit_test(test_s7_10_v1_malformed_is_bad),
	    cmocka_unit_test(test_s3_3_v2_round_trip_tcp4_tcp6),
	    cmocka_unit_test(test_s3_3_v2_build_exact_bytes),
	    cmocka_unit_test(test_s3_3_v1_build),
	    cmocka_unit_test(test_s7_10_v2_local_unknown_and_bad),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
