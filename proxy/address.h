/* address.h — socket addresses for listeners and the backend.
 *
 * Resolves the address strings the configuration validated ("host:port",
 * "[v6]:port", "unix:/path") into sockaddrs once, at start, and formats
 * peers as "ADDR:PORT" for the log. Never decides SMTP policy.
 */
#ifndef TLSFRONT_PROXY_ADDRESS_H
#define TLSFRONT_PROXY_ADDRESS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

struct tf_addr {
	struct sockaddr_storage ss;
	socklen_t len;
	bool is_unix;
	char text[300]; /* as configured, for messages */
};

/* Resolves text (getaddrinfo; numeric_only for listen addresses). Returns 0,
 * or -1 with a message in err. */
int address_resolve(const char *text, bool numeric_only, struct tf_addr *out, char *err,
		    size_t errlen);

/* Formats a socket address as "1.2.3.4:25" or "[::1]:25"; "unix" for a
 * unix socket, "unknown" for any other family (AF_UNSPEC included). */
void address_format(const struct sockaddr *sa, char *out, size_t outlen);

/* The IP of an inet address alone ("1.2.3.4", "::1"); "" for others. */
void address_ip(const struct sockaddr *sa, char *out, size_t outlen);

/* The port of an inet address, 0 for others. */
unsigned address_port(const struct sockaddr *sa);

#endif
