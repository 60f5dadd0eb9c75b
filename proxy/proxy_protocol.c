/* proxy_protocol.c — PROXY protocol v1/v2 parsing and building
 * (proxy_protocol.h). Never does I/O; never allocates. */
#include "proxy/proxy_protocol.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

static const unsigned char v2_sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
					 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};
static const char v1_sig[] = "PROXY ";

/* ---- v1 ---------------------------------------------------------------- */

/* Parses a decimal port 0..65535 without sign or leading zero. */
static bool parse_port(const char *s, unsigned short *port)
{
	size_t n = strlen(s);
	if (n == 0 || n > 5 || (n > 1 && s[0] == '0'))
		return false;
	unsigned v = 0;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return false;
		v = v * 10 + (unsigned)(s[i] - '0');
	}
	if (v > 65535)
		return false;
	*port = (unsigned short)v;
	return true;
}

static bool set_addr(int family, const char *ip, const char *port, struct sockaddr_storage *ss)
{
	unsigned short p;
	if (!parse_port(port, &p))
		return false;
	memset(ss, 0, sizeof(*ss));
	if (family == AF_INET) {
		struct sockaddr_in *in = (struct sockaddr_in *)ss;
		in->sin_family = AF_INET;
		in->sin_port = htons(p);
		return inet_pton(AF_INET, ip, &in->sin_addr) == 1;
	}
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
	in6->sin6_family = AF_INET6;
	in6->sin6_port = htons(p);
	return inet_pton(AF_INET6, ip, &in6->sin6_addr) == 1;
}

static enum pp_result parse_v1(const unsigned char *p, size_t len, struct pp_header *out,
			       size_t *consumed)
{
	const unsigned char *lf = memchr(p, '\n', len < PP_V1_MAX ? len : PP_V1_MAX);
	if (!lf)
		return len >= PP_V1_MAX ? PP_BAD : PP_MORE;
	size_t n = (size_t)(lf - p);
	if (n < 1 || p[n - 1] != '\r')
		return PP_BAD;
	char line[PP_V1_MAX + 1];
	memcpy(line, p, n - 1);
	line[n - 1] = '\0';
	/* Single spaces only, no NUL, nothing after the last field. */
	if (memchr(p, '\0', n) || strstr(line, "  ") || line[n - 2] == ' ')
		return PP_BAD;

	/* "PROXY TCP4 SRC DST SPORT DPORT" with single spaces. */
	char *fields[6];
	size_t nf = 0;
	char *save = NULL;
	for (char *tok = strtok_r(line, " ", &save); tok; tok = strtok_r(NULL, " ", &save)) {
		if (nf == 6)
			return PP_BAD;
		fields[nf++] = tok;
	}
	memset(out, 0, sizeof(*out));
	if (nf >= 2 && strcmp(fields[1], "UNKNOWN") == 0) {
		out->local = true; /* the PROXY spec: keep the real addresses */
		*consumed = n + 1;
		return PP_DONE;
	}
	if (nf != 6)
		return PP_BAD;
	int family;
	if (strcmp(fields[1], "TCP4") == 0)
		family = AF_INET;
	else if (strcmp(fields[1], "TCP6") == 0)
		family = AF_INET6;
	else
		return PP_BAD;
	if (!set_addr(family, fields[2], fields[4], &out->src) ||
	    !set_addr(family, fields[3], fields[5], &out->dst))
		return PP_BAD;
	*consumed = n + 1;
	return PP_DONE;
}

/* ---- v2 ---------------------------------------------------------------- */

static enum pp_result parse_v2(const unsigned char *p, size_t len, struct pp_header *out,
			       size_t *consumed)
{
	if (len < 16)
		return PP_MORE;
	unsigned ver = p[12] >> 4, cmd = p[12] & 0x0F;
	unsigned fam = p[13];
	size_t body = ((size_t)p[14] << 8) | p[15];
	if (ver != 2 || cmd > 1 || 16 + body > PP_V2_MAX)
		return PP_BAD;
	if (len < 16 + body)
		return PP_MORE;
	memset(out, 0, sizeof(*out));
	*consumed = 16 + body;
	if (cmd == 0) { /* LOCAL: a balancer's own connection (health check) */
		out->local = true;
		return PP_DONE;
	}
	const unsigned char *b = p + 16;
	if (fam == 0x11) { /* TCP over IPv4 */
		if (body < 12)
			return PP_BAD;
		struct sockaddr_in *s = (struct sockaddr_in *)&out->src;
		struct sockaddr_in *d = (struct sockaddr_in *)&out->dst;
		s->sin_family = d->sin_family = AF_INET;
		memcpy(&s->sin_addr, b, 4);
		memcpy(&d->sin_addr, b + 4, 4);
		memcpy(&s->sin_port, b + 8, 2);
		memcpy(&d->sin_port, b + 10, 2);
		return PP_DONE;
	}
	if (fam == 0x21) { /* TCP over IPv6 */
		if (body < 36)
			return PP_BAD;
		struct sockaddr_in6 *s = (struct sockaddr_in6 *)&out->src;
		struct sockaddr_in6 *d = (struct sockaddr_in6 *)&out->dst;
		s->sin6_family = d->sin6_family = AF_INET6;
		memcpy(&s->sin6_addr, b, 16);
		memcpy(&d->sin6_addr, b + 16, 16);
		memcpy(&s->sin6_port, b + 32, 2);
		memcpy(&d->sin6_port, b + 34, 2);
		return PP_DONE;
	}
	return PP_BAD; /* UNSPEC, UDP, UNIX with PROXY: no client address */
}

enum pp_result pp_parse(const unsigned char *p, size_t len, struct pp_header *out, size_t *consumed)
{
	size_t n = len < sizeof(v2_sig) ? len : sizeof(v2_sig);
	if (memcmp(p, v2_sig, n) == 0)
		return len < sizeof(v2_sig) ? PP_MORE : parse_v2(p, len, out, consumed);
	n = len < sizeof(v1_sig) - 1 ? len : sizeof(v1_sig) - 1;
	if (memcmp(p, v1_sig, n) == 0)
		return len < sizeof(v1_sig) - 1 ? PP_MORE : parse_v1(p, len, out, consumed);
	return PP_BAD;
}

/* ---- building ---------------------------------------------------------- */

int pp_build_v1(const struct sockaddr *src, const struct sockaddr *dst, char *out, size_t outlen)
{
	char s[INET6_ADDRSTRLEN], d[INET6_ADDRSTRLEN];
	unsigned sp, dp;
	const char *proto;
	if (src->sa_family == AF_INET && dst->sa_family == AF_INET) {
		const struct sockaddr_in *a = (const void *)src, *b = (const void *)dst;
		inet_ntop(AF_INET, &a->sin_addr, s, sizeof(s));
		inet_ntop(AF_INET, &b->sin_addr, d, sizeof(d));
		sp = ntohs(a->sin_port);
		dp = ntohs(b->sin_port);
		proto = "TCP4";
	} else if (src->sa_family == AF_INET6 && dst->sa_family == AF_INET6) {
		const struct sockaddr_in6 *a = (const void *)src, *b = (const void *)dst;
		inet_ntop(AF_INET6, &a->sin6_addr, s, sizeof(s));
		inet_ntop(AF_INET6, &b->sin6_addr, d, sizeof(d));
		sp = ntohs(a->sin6_port);
		dp = ntohs(b->sin6_port);
		proto = "TCP6";
	} else {
		return -1;
	}
	int n = snprintf(out, outlen, "PROXY %s %s %s %u %u\r\n", proto, s, d, sp, dp);
	return n > 0 && (size_t)n < outlen ? n : -1;
}

int pp_build_v2(const struct sockaddr *src, const struct sockaddr *dst, unsigned char *out,
		size_t outlen)
{
	size_t body;
	unsigned char fam;
	if (src->sa_family == AF_INET && dst->sa_family == AF_INET) {
		fam = 0x11;
		body = 12;
	} else if (src->sa_family == AF_INET6 && dst->sa_family == AF_INET6) {
		fam = 0x21;
		body = 36;
	} else {
		return -1;
	}
	if (outlen < 16 + body)
		return -1;
	memcpy(out, v2_sig, sizeof(v2_sig));
	out[12] = 0x21; /* version 2, PROXY */
	out[13] = fam;
	out[14] = 0;
	out[15] = (unsigned char)body;
	unsigned char *b = out + 16;
	if (fam == 0x11) {
		const struct sockaddr_in *a = (const void *)src, *d = (const void *)dst;
		memcpy(b, &a->sin_addr, 4);
		memcpy(b + 4, &d->sin_addr, 4);
		memcpy(b + 8, &a->sin_port, 2);
		memcpy(b + 10, &d->sin_port, 2);
	} else {
		const struct sockaddr_in6 *a = (const void *)src, *d = (const void *)dst;
		memcpy(b, &a->sin6_addr, 16);
		memcpy(b + 16, &d->sin6_addr, 16);
		memcpy(b + 32, &a->sin6_port, 2);
		memcpy(b + 34, &d->sin6_port, 2);
	}
	return (int)(16 + body);
}
