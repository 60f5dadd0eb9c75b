/* proxy_protocol.h — the HAProxy PROXY protocol, versions 1 and 2.
 *
 * Parses the header a load balancer puts before the client's bytes
 * (inbound.*.proxy_protocol, SPEC §3.3, §7.10), and builds the header tlsfront
 * sends first to the backend (backend.client_info = "proxy-v1"/"proxy-v2").
 * Pure functions over memory: no I/O, no libuv, no allocation. Strict: a
 * header is taken only when every field is well formed.
 */
#ifndef TLSFRONT_PROXY_PROXY_PROTOCOL_H
#define TLSFRONT_PROXY_PROXY_PROTOCOL_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#define PP_V1_MAX     107  /* the longest v1 line, CRLF included */
#define PP_V2_MAX     2048 /* the longest v2 header accepted, TLVs included */
#define PP_HEADER_MAX PP_V2_MAX

enum pp_result { PP_MORE = 0, PP_DONE, PP_BAD };

struct pp_header {
	bool local; /* v2 LOCAL or v1 UNKNOWN: keep the connection's addresses */
	struct sockaddr_storage src, dst;
};

/* Looks for a complete header at the start of p. PP_DONE sets *out and
 * *consumed; PP_MORE asks for more bytes (never with len >= PP_HEADER_MAX);
 * PP_BAD means no valid header can start here (including a v2 header of
 * UNSPEC/UNIX/UDP family with the PROXY command, SPEC §7.10). */
enum pp_result pp_parse(const unsigned char *p, size_t len, struct pp_header *out,
			size_t *consumed);

/* Builds a header for a TCP connection from src to dst (both AF_INET or
 * both AF_INET6). Returns its length, or -1 when it does not fit or the
 * families are not TCP4/TCP6 pairs. */
int pp_build_v1(const struct sockaddr *src, const struct sockaddr *dst, char *out, size_t outlen);
int pp_build_v2(const struct sockaddr *src, const struct sockaddr *dst, unsigned char *out,
		size_t outlen);

#endif
