/* config_values.c — the syntax of the configuration's values: "host:port"
 * and "[v6]:port" (config_split_hostport), listen addresses, and the string
 * checks that the key tree (config.c's leaves[]) and read_milter()
 * (config_read.c) name: each takes a text and returns NULL when it is
 * acceptable, else what was expected.
 *
 * Functions of their text alone: this file never reads the configuration
 * file, never touches a struct tf_config, never resolves a host name or
 * opens a socket (config_check_user asks getpwnam(3), nothing more), never
 * prints or logs, and must never include libuv, GnuTLS, socket or clock
 * headers.
 */
#include "policy/config_priv.h"

#include <pwd.h>
#include <string.h>

#define TF_UNIX_PATH_MAX 107  /* sizeof(sockaddr_un.sun_path) - 1 on Linux */
#define MILTER_NAME_MAX	 128u /* issue 14 */

/* ---- host:port --------------------------------------------------------- */

static bool is_host_char(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       c == '-' || c == '.' || c == '_';
}

static bool is_v6_char(char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') ||
	       c == ':' || c == '.';
}

/* Accepts "host:port" (host: letters, digits, '-', '.', '_') and
 * "[v6]:port" (v6: hex digits, ':' and '.', at least one ':'; no zone id).
 * An unbracketed IPv6 address is refused: its port would be ambiguous. */
int config_split_hostport(const char *text, char *host, size_t hostlen, unsigned *port)
{
	if (text == NULL)
		return -1;
	const char *h, *colon;
	size_t hlen;
	if (text[0] == '[') {
		h = text + 1;
		const char *close = strchr(h, ']');
		if (close == NULL || close[1] != ':')
			return -1;
		hlen = (size_t)(close - h);
		if (hlen == 0 || memchr(h, ':', hlen) == NULL)
			return -1;
		for (size_t i = 0; i < hlen; i++) {
			if (!is_v6_char(h[i]))
				return -1;
		}
		colon = close + 1;
	} else {
		h = text;
		colon = strchr(text, ':');
		if (colon == NULL)
			return -1;
		hlen = (size_t)(colon - h);
		if (hlen == 0)
			return -1;
		for (size_t i = 0; i < hlen; i++) {
			if (!is_host_char(h[i]))
				return -1;
		}
	}
	const char *p = colon + 1;
	size_t plen = strlen(p);
	if (plen == 0 || plen > 5)
		return -1;
	unsigned long value = 0;
	for (size_t i = 0; i < plen; i++) {
		if (p[i] < '0' || p[i] > '9')
			return -1;
		value = value * 10 + (unsigned long)(p[i] - '0');
	}
	if (value > 65535)
		return -1;
	if (host != NULL) {
		if (hlen + 1 > hostlen)
			return -1;
		memcpy(host, h, hlen);
		host[hlen] = '\0';
	}
	if (port != NULL)
		*port = (unsigned)value;
	return 0;
}

/* Port 0 means "any free port": only a listen address may ask for that. */
static bool is_hostport(const char *text, bool port_zero_ok)
{
	char host[HOST_MAX];
	unsigned port;
	return config_split_hostport(text, host, sizeof(host), &port) == 0 &&
	       (port != 0 || port_zero_ok);
}

/* An IPv4 literal: four numbers 0 to 255 with dots between. */
static bool is_ipv4_literal(const char *h)
{
	for (int part = 0; part < 4; part++) {
		unsigned v = 0, digits = 0;
		for (; *h >= '0' && *h <= '9'; h++, digits++)
			if (digits >= 3 || (v = v * 10 + (unsigned)(*h - '0')) > 255)
				return false;
		if (digits == 0 || *h != (part < 3 ? '.' : '\0'))
			return false;
		if (part < 3)
			h++;
	}
	return true;
}

/* A listen address binds a socket: its host must be an address, never a
 * name (bound numerically, so a name would fail only at start). "[v6]"
 * holds hex digits and colons (an embedded IPv4 tail too); bind(2) has the
 * last word on the details. */
bool config_is_listen_address(const char *text)
{
	char host[HOST_MAX];
	unsigned port;
	if (config_split_hostport(text, host, sizeof(host), &port) != 0)
		return false;
	if (text[0] != '[')
		return is_ipv4_literal(host);
	unsigned colons = 0;
	for (const char *p = host; *p; p++) {
		if (*p == ':')
			colons++;
		else if (!strchr("0123456789abcdefABCDEF.", *p))
			return false;
	}
	return colons >= 2;
}

/* ---- string checks ----------------------------------------------------- */

/* "" (no drop) or a user that exists (§6: an unknown user is an error). */
const char *config_check_user(const char *text)
{
	if (!*text || getpwnam(text))
		return NULL;
	return "an existing user name (see /etc/passwd)";
}

const char *config_check_non_empty(const char *text)
{
	return text[0] != '\0' ? NULL : "a non-empty string";
}

/* server_name is put into replies we make ourselves: no spaces, no CR/LF. */
const char *config_check_host_name(const char *text)
{
	size_t len = strlen(text);
	if (len == 0 || len > 253)
		goto bad;
	for (size_t i = 0; i < len; i++) {
		if (!is_host_char(text[i]))
			goto bad;
	}
	return NULL;
bad:
	return "a host name (letters, digits, '-', '.', '_'; 1 to 253 characters)";
}

const char *config_check_backend_address(const char *text)
{
	if (strncmp(text, "unix:", 5) == 0) {
		const char *path = text + 5;
		if (path[0] != '/' || strlen(path) > TF_UNIX_PATH_MAX)
			return "\"unix:/path\" with an absolute path of at most 107 bytes";
		return NULL;
	}
	if (!is_hostport(text, false))
		return "\"host:port\", \"[v6]:port\" or \"unix:/path\" (port 1 to 65535)";
	return NULL;
}

const char *config_check_next_hop(const char *text)
{
	if (strcmp(text, "original-destination") == 0 || is_hostport(text, false))
		return NULL;
	return "\"host:port\", \"[v6]:port\" (port 1 to 65535) or \"original-destination\"";
}

/* A milter's name, for the log: printable characters, no spaces. */
const char *config_check_milter_name(const char *text)
{
	size_t len = strlen(text);
	if (len == 0 || len > MILTER_NAME_MAX)
		goto bad;
	for (size_t i = 0; i < len; i++) {
		if (text[i] <= 0x20 || text[i] >= 0x7f)
			goto bad;
	}
	return NULL;
bad:
	return "a name of 1 to 128 printable characters without spaces";
}

/* A host of "inet:HOST:PORT" made only of digits and dots is meant as an
 * IPv4 literal: it must be one, not a name to look up. */
static bool is_numeric_host(const char *host)
{
	return host[strspn(host, "0123456789.")] == '\0';
}

/* Postfix's milter socket forms (Postfix MILTER_README): "inet:HOST:PORT",
 * "[v6]" for an IPv6 HOST, and "unix:/path". Sendmail's "inet6:PORT@HOST"
 * and "inet:PORT@HOST" are refused with a hint. */
const char *config_check_milter_socket(const char *text)
{
	static const char want[] =
	    "\"inet:host:port\", \"inet:[v6]:port\" (port 1 to 65535) or \"unix:/path\" (an "
	    "absolute path of at most 107 bytes)";
	if (strncmp(text, "unix:", 5) == 0) {
		const char *path = text + 5;
		if (path[0] != '/' || strlen(path) > TF_UNIX_PATH_MAX)
			return want;
		for (const char *p = path; *p; p++) {
			if ((unsigned char)*p < 0x20 || *p == 0x7f)
				return want;
		}
		return NULL;
	}
	if (strncmp(text, "inet6:", 6) == 0)
		return "\"inet:[v6]:port\" for an IPv6 milter (sendmail's \"inet6:\" is not "
		       "accepted)";
	if (strncmp(text, "inet:", 5) == 0) {
		char host[HOST_MAX];
		unsigned port;
		if (strchr(text, '@') != NULL)
			return "\"inet:host:port\" (sendmail's \"inet:port@host\" is not accepted)";
		if (config_split_hostport(text + 5, host, sizeof(host), &port) == 0 && port != 0 &&
		    (text[5] == '[' || !is_numeric_host(host) || is_ipv4_literal(host)))
			return NULL;
	}
	return want;
}
