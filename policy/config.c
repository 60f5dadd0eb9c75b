/* config.c — the libconfig loader for the configuration of SPEC §2.
 *
 * Reads one file into a struct tf_config: every key has a default
 * (config_defaults), the file overlays them, and anything wrong — an unknown
 * key, a wrong type, a value out of range, an impossible combination, a
 * feature not built yet — is returned as "FILE:LINE: KEY: what was expected"
 * in the caller's buffer.
 *
 * This file must never include libuv, GnuTLS, socket or clock headers, and
 * must never print or log anything: the caller decides what to do with an
 * error (DESIGN.md, policy/ row). It never opens the certificate files
 * either; `tlsfront -t` does that in certs/.
 *
 * How a file is checked, in this order:
 *   1. libconfig parses it (syntax errors, duplicate keys).
 *   2. walk_group() walks the tree in file order. A setting's dotted path
 *      must be a row of `groups` (then it must be a group) or of `leaves`
 *      (then its type and value are checked and stored). Anything else is an
 *      unknown key.
 *   3. check_combinations(): the impossible combinations of §2, reported at
 *      the line of the later key (§7 item 11 for "no listener enabled").
 *   4. check_not_supported_yet(): keys whose non-default values name a
 *      feature this version does not have. They are checked last so that a
 *      combination error is reported as what it is. The keys are, one row
 *      each in `not_supported_yet[]` (delete a row when its feature lands):
 *        (none at present; outbound.enabled landed with issue 5)
 *
 * Ranges (the upper bounds keep a timeout in milliseconds, as libuv timers
 * take it, within 32 bits, and keep typing mistakes out):
 *   workers                 0 .. 1024
 *   every *_timeout         1 .. 86400 seconds (0 would mean "fire at once")
 *   limits.max_connections, max_connections_per_ip  1 .. 1000000
 *   limits.line_length      512 .. 1048576: RFC 5321 §4.5.3.1.4 lets a
 *                           command line be 512 octets with CRLF, so less
 *                           would refuse valid commands; 1 MiB bounds the
 *                           memory one session may hold for one line.
 *   limits.max_errors       1 .. 1000
 *   tls.session_cache_timeout  0 .. 604800 seconds: 0 turns session tickets
 *                           off (Postfix: 0 disables the cache); 604800 (7
 *                           days) is the longest ticket lifetime GnuTLS
 *                           accepts (gnutls_db_set_cache_expiration) and RFC
 *                           8446 §4.6.1 allows.
 *   limits.message_size_limit  1024 .. 2147483648 bytes (2 GiB): a message is
 *                           held whole while milters look at it; values above
 *                           2147483647 need libconfig's L suffix.
 *   {inbound,outbound}.milters  at most TF_MAX_MILTERS groups each, read by
 *                           read_milters(): socket "inet:HOST:PORT" or
 *                           "unix:/path" (required; sendmail's "inet6:" and
 *                           "inet:PORT@HOST" forms are refused with a hint),
 *                           name (1 .. 128 printable characters, no spaces;
 *                           default the socket text; unique in its list),
 *                           default_action, timeout and connect_timeout
 *                           (1 .. 3600 seconds, default 30).
 *
 * Known limitation: libconfig 1.5 wraps a decimal integer that does not fit
 * 32 bits (4294967297 reads as 1) without an error; only the wrapped value
 * can be checked. An integer with an L suffix is read as 64 bits and checked.
 */
#include "policy/config.h"

#include <errno.h>
#include <pwd.h>
#include <libconfig.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_TIMEOUT	 86400u
#define MAX_WORKERS	 1024u
#define MAX_CONNECTIONS	 1000000u
#define MIN_LINE_LENGTH	 512u
#define MAX_LINE_LENGTH	 (1024u * 1024u)
#define MAX_ERRORS	 1000u
#define MAX_TICKET_LIFE	 604800u /* 7 days */
#define HOST_MAX	 256	 /* a DNS name is at most 253 characters */
#define TF_UNIX_PATH_MAX 107	 /* sizeof(sockaddr_un.sun_path) - 1 on Linux */

/* Issue 14. */
#define MAX_MILTER_TIMEOUT 3600u
#define MIN_MESSAGE_SIZE   1024u
#define MAX_MESSAGE_SIZE   2147483648u /* 2 GiB */
#define MILTER_NAME_MAX	   128u

/* Enum values are stored through their offset as an int. */
_Static_assert(sizeof(enum tf_log_level) == sizeof(int), "enum size");
_Static_assert(sizeof(enum tf_bare_newlines) == sizeof(int), "enum size");
_Static_assert(sizeof(enum tf_client_info) == sizeof(int), "enum size");
_Static_assert(sizeof(enum tf_outbound_tls) == sizeof(int), "enum size");
_Static_assert(sizeof(enum tf_milter_action) == sizeof(int), "enum size");

/* ---- the key tree ------------------------------------------------------ */

/* Groups: a setting whose dotted path is listed here must be a group. */
static const char *const groups[] = {
    "backend",	"tls",	  "inbound", "inbound.tcp", "inbound.tls",
    "outbound", "limits", "log",     "metrics",
};

enum leaf_kind {
	LEAF_BOOL,   /* bool */
	LEAF_UINT,   /* unsigned, min .. max */
	LEAF_ENUM,   /* int-sized enum, names[value] */
	LEAF_STRING, /* char *, checked by check() */
	LEAF_LISTEN, /* char *[TF_MAX_LISTEN] at off, size_t count at off_n */
	LEAF_CERTS,  /* struct tf_cert_pair[TF_MAX_CERTS] at off, count at off_n */
	LEAF_ULONG,  /* unsigned long, min .. max */
	LEAF_MILTER, /* struct tf_milter_config[TF_MAX_MILTERS] at off, count at off_n */
};

/* Returns NULL when text is acceptable, else what was expected. */
typedef const char *string_check(const char *text);

struct leaf {
	const char *path; /* dotted, e.g. "limits.idle_timeout" */
	enum leaf_kind kind;
	size_t off;   /* offsetof(struct tf_config, ...) of the value */
	size_t off_n; /* LEAF_LISTEN, LEAF_CERTS, LEAF_MILTER: offset of the count */
	unsigned min, max;
	const char *const *names; /* LEAF_ENUM: NULL-terminated, in enum order */
	string_check *check;	  /* LEAF_STRING */
};

static const char *const client_info_names[] = {"none", "xclient", "proxy-v1", "proxy-v2", NULL};
static const char *const outbound_tls_names[] = {"none", "negotiated", "required", "verify", NULL};
static const char *const bare_newlines_names[] = {"sanitize", "reject", NULL};
static const char *const log_level_names[] = {"error", "warn", "info", "debug", NULL};
static const char *const milter_action_names[] = {"accept", "tempfail", "reject", NULL};
_Static_assert(TF_MILTER_ACCEPT == 0 && TF_MILTER_TEMPFAIL == 1 && TF_MILTER_REJECT == 2,
	       "milter_action_names[] is in enum order");

static string_check check_host_name, check_backend_address, check_non_empty, check_user,
    check_next_hop, check_milter_name, check_milter_socket;

/* One row per key; the macros keep each row on one line. */
// clang-format off
#define OFF(field) offsetof(struct tf_config, field)
#define L_BOOL(p, f)         {.path = (p), .kind = LEAF_BOOL, .off = OFF(f)}
#define L_UINT(p, f, lo, hi) {.path = (p), .kind = LEAF_UINT, .off = OFF(f), .min = (lo), .max = (hi)}
#define L_ENUM(p, f, n)      {.path = (p), .kind = LEAF_ENUM, .off = OFF(f), .names = (n)}
#define L_STRING(p, f, c)    {.path = (p), .kind = LEAF_STRING, .off = OFF(f), .check = (c)}
#define L_LISTEN(p, f)       {.path = (p), .kind = LEAF_LISTEN, .off = OFF(f.listen), .off_n = OFF(f.n_listen)}
#define L_CERTS(p, f)        {.path = (p), .kind = LEAF_CERTS, .off = OFF(f.certs), .off_n = OFF(f.n_certs)}
#define L_ULONG(p, f, lo, hi) {.path = (p), .kind = LEAF_ULONG, .off = OFF(f), .min = (lo), .max = (hi)}
#define L_MILTERS(p, f)      {.path = (p), .kind = LEAF_MILTER, .off = OFF(f.milters), .off_n = OFF(f.n_milters)}

static const struct leaf leaves[] = {
	L_STRING("server_name", server_name, check_host_name),
	L_UINT("workers", workers, 0, MAX_WORKERS),

	L_STRING("backend.address", backend.address, check_backend_address),
	L_UINT("backend.connect_timeout", backend.connect_timeout, 1, MAX_TIMEOUT),
	L_ENUM("backend.client_info", backend.client_info, client_info_names),

	L_CERTS("tls.certificates", tls),
	L_STRING("tls.priority", tls.priority, check_non_empty),
	L_UINT("tls.handshake_timeout", tls.handshake_timeout, 1, MAX_TIMEOUT),
	L_UINT("tls.session_cache_timeout", tls.session_cache_timeout, 0, MAX_TICKET_LIFE),

	L_BOOL("inbound.tcp.enabled", inbound.tcp.enabled),
	L_LISTEN("inbound.tcp.listen", inbound.tcp),
	L_BOOL("inbound.tcp.starttls", inbound.tcp.starttls),
	L_BOOL("inbound.tcp.require_tls", inbound.tcp.require_tls),
	L_BOOL("inbound.tcp.name_and_password", inbound.tcp.name_and_password),
	L_BOOL("inbound.tcp.proxy_protocol", inbound.tcp.proxy_protocol),

	L_BOOL("inbound.tls.enabled", inbound.tls.enabled),
	L_LISTEN("inbound.tls.listen", inbound.tls),
	L_BOOL("inbound.tls.name_and_password", inbound.tls.name_and_password),
	L_BOOL("inbound.tls.proxy_protocol", inbound.tls.proxy_protocol),
	L_MILTERS("inbound.milters", inbound),

	L_BOOL("outbound.enabled", outbound.enabled),
	L_LISTEN("outbound.listen", outbound),
	L_STRING("outbound.next_hop", outbound.next_hop, check_next_hop),
	L_ENUM("outbound.tls", outbound.tls, outbound_tls_names),
	L_STRING("outbound.ca_file", outbound.ca_file, check_non_empty),
	L_UINT("outbound.connect_timeout", outbound.connect_timeout, 1, MAX_TIMEOUT),
	L_MILTERS("outbound.milters", outbound),
	L_LISTEN("metrics.listen", metrics),

	L_UINT("limits.max_connections", limits.max_connections, 1, MAX_CONNECTIONS),
	L_UINT("limits.max_connections_per_ip", limits.max_connections_per_ip, 1, MAX_CONNECTIONS),
	L_UINT("limits.idle_timeout", limits.idle_timeout, 1, MAX_TIMEOUT),
	L_UINT("limits.line_length", limits.line_length, MIN_LINE_LENGTH, MAX_LINE_LENGTH),
	L_UINT("limits.max_errors", limits.max_errors, 1, MAX_ERRORS),
	L_UINT("limits.shutdown_timeout", limits.shutdown_timeout, 1, MAX_TIMEOUT),
	L_ULONG("limits.message_size_limit", limits.message_size_limit, MIN_MESSAGE_SIZE, MAX_MESSAGE_SIZE),

	L_ENUM("bare_newlines", bare_newlines, bare_newlines_names),
	L_ENUM("log.level", log_level, log_level_names),
	L_STRING("user", user, check_user),
};

/* Keys accepted only at their default value in this version (the list at
 * the top of this file). Delete a row when its feature lands. */
static const char *const not_supported_yet[] = {
	NULL, /* none at present */
};
// clang-format on

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

static const struct leaf *find_leaf(const char *path)
{
	for (size_t i = 0; i < COUNT(leaves); i++) {
		if (strcmp(leaves[i].path, path) == 0)
			return &leaves[i];
	}
	return NULL;
}

static bool is_group(const char *path)
{
	for (size_t i = 0; i < COUNT(groups); i++) {
		if (strcmp(groups[i], path) == 0)
			return true;
	}
	return false;
}

static void *field(struct tf_config *cfg, size_t off)
{
	return (char *)cfg + off;
}

static const void *cfield(const struct tf_config *cfg, size_t off)
{
	return (const char *)cfg + off;
}

/* ---- errors ------------------------------------------------------------ */

struct loader {
	const char *path; /* the file, for messages */
	struct tf_config *cfg;
	char *err;
	size_t errlen;
};

static void set_error_v(struct loader *ld, const char *file, unsigned line, const char *fmt,
			va_list ap) __attribute__((format(printf, 4, 0)));

static void set_error_v(struct loader *ld, const char *file, unsigned line, const char *fmt,
			va_list ap)
{
	if (ld->err == NULL || ld->errlen == 0)
		return;
	int n;
	if (line > 0)
		n = snprintf(ld->err, ld->errlen, "%s:%u: ", file, line);
	else
		n = snprintf(ld->err, ld->errlen, "%s: ", file);
	if (n < 0 || (size_t)n >= ld->errlen)
		return;
	vsnprintf(ld->err + n, ld->errlen - (size_t)n, fmt, ap);
}

/* Writes "FILE:LINE: message" (or "FILE: message" when line is 0) and
 * returns -1. */
static int fail_line(struct loader *ld, const char *file, unsigned line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int fail_line(struct loader *ld, const char *file, unsigned line, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	set_error_v(ld, file, line, fmt, ap);
	va_end(ap);
	return -1;
}

/* Writes "FILE:LINE: message" for setting s (or "FILE: message" when s is
 * NULL or has no line) and returns -1. */
static int fail_at(struct loader *ld, const config_setting_t *s, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail_at(struct loader *ld, const config_setting_t *s, const char *fmt, ...)
{
	const char *file = ld->path;
	unsigned line = 0;
	if (s != NULL) {
		line = config_setting_source_line(s);
		/* An @include'd file names itself. */
		if (config_setting_source_file(s) != NULL)
			file = config_setting_source_file(s);
	}
	va_list ap;
	va_start(ap, fmt);
	set_error_v(ld, file, line, fmt, ap);
	va_end(ap);
	return -1;
}

static const char *type_name(const config_setting_t *s)
{
	switch (config_setting_type(s)) {
	case CONFIG_TYPE_GROUP:
		return "a group";
	case CONFIG_TYPE_INT:
	case CONFIG_TYPE_INT64:
		return "an integer";
	case CONFIG_TYPE_FLOAT:
		return "a float";
	case CONFIG_TYPE_STRING:
		return "a string";
	case CONFIG_TYPE_BOOL:
		return "a boolean";
	case CONFIG_TYPE_ARRAY:
		return "an array";
	case CONFIG_TYPE_LIST:
		return "a list";
	default:
		return "nothing";
	}
}

/* A printable, bounded copy of a value for an error message. */
static const char *shown(const char *text, char *buf, size_t len)
{
	size_t i = 0;
	for (; text[i] != '\0' && i + 4 < len; i++)
		buf[i] = (text[i] >= 0x20 && text[i] < 0x7f) ? text[i] : '?';
	if (text[i] != '\0') {
		memcpy(buf + i, "...", 3);
		i += 3;
	}
	buf[i] = '\0';
	return buf;
}

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
static bool is_listen_address(const char *text)
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
static const char *check_user(const char *text)
{
	if (!*text || getpwnam(text))
		return NULL;
	return "an existing user name (see /etc/passwd)";
}

static const char *check_non_empty(const char *text)
{
	return text[0] != '\0' ? NULL : "a non-empty string";
}

/* server_name is put into replies we make ourselves: no spaces, no CR/LF. */
static const char *check_host_name(const char *text)
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

static const char *check_backend_address(const char *text)
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

static const char *check_next_hop(const char *text)
{
	if (strcmp(text, "original-destination") == 0 || is_hostport(text, false))
		return NULL;
	return "\"host:port\", \"[v6]:port\" (port 1 to 65535) or \"original-destination\"";
}

/* A milter's name, for the log: printable characters, no spaces. */
static const char *check_milter_name(const char *text)
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
static const char *check_milter_socket(const char *text)
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

/* ---- reading one leaf -------------------------------------------------- */

static int read_bool(struct loader *ld, const struct leaf *lf, const config_setting_t *s)
{
	if (config_setting_type(s) != CONFIG_TYPE_BOOL)
		return fail_at(ld, s, "%s: expected true or false, not %s", lf->path, type_name(s));
	*(bool *)field(ld->cfg, lf->off) = config_setting_get_bool(s) != 0;
	return 0;
}

/* Reads the integer setting s, named path, into *out: min .. max. */
static int read_integer(struct loader *ld, const char *path, unsigned min, unsigned max,
			const config_setting_t *s, unsigned long *out)
{
	char what[64];
	if (min == 0)
		snprintf(what, sizeof(what), "a non-negative integer");
	else if (min == 1)
		snprintf(what, sizeof(what), "a positive integer");
	else
		snprintf(what, sizeof(what), "an integer from %u to %u", min, max);

	int type = config_setting_type(s);
	if (type != CONFIG_TYPE_INT && type != CONFIG_TYPE_INT64)
		return fail_at(ld, s, "%s: expected %s, not %s", path, what, type_name(s));
	long long v = config_setting_get_int64(s);
	if (v < (long long)min || v > (long long)max) {
		if (min <= 1)
			return fail_at(ld, s, "%s: expected %s (at most %u), got %lld", path, what,
				       max, v);
		return fail_at(ld, s, "%s: expected %s, got %lld", path, what, v);
	}
	*out = (unsigned long)v;
	return 0;
}

static int read_uint(struct loader *ld, const struct leaf *lf, const config_setting_t *s)
{
	unsigned long v;
	if (read_integer(ld, lf->path, lf->min, lf->max, s, &v) < 0)
		return -1;
	*(unsigned *)field(ld->cfg, lf->off) = (unsigned)v;
	return 0;
}

static int read_ulong(struct loader *ld, const struct leaf *lf, const config_setting_t *s)
{
	return read_integer(ld, lf->path, lf->min, lf->max, s,
			    (unsigned long *)field(ld->cfg, lf->off));
}

/* Reads the string setting s, named path, as one of names (NULL-terminated)
 * into *out, its index. */
static int read_enum_at(struct loader *ld, const char *path, const char *const *names,
			const config_setting_t *s, int *out)
{
	char list[128] = "";
	size_t used = 0;
	for (size_t i = 0; names[i] != NULL; i++) {
		int n =
		    snprintf(list + used, sizeof(list) - used, "%s\"%s\"", i ? ", " : "", names[i]);
		if (n < 0 || (size_t)n >= sizeof(list) - used)
			break;
		used += (size_t)n;
	}
	if (config_setting_type(s) != CONFIG_TYPE_STRING)
		return fail_at(ld, s, "%s: expected one of %s, not %s", path, list, type_name(s));
	const char *text = config_setting_get_string(s);
	for (int i = 0; names[i] != NULL; i++) {
		if (strcmp(text, names[i]) == 0) {
			*out = i;
			return 0;
		}
	}
	char buf[64];
	return fail_at(ld, s, "%s: expected one of %s, got \"%s\"", path, list,
		       shown(text, buf, sizeof(buf)));
}

static int read_enum(struct loader *ld, const struct leaf *lf, const config_setting_t *s)
{
	int v;
	if (read_enum_at(ld, lf->path, lf->names, s, &v) < 0)
		return -1;
	memcpy(field(ld->cfg, lf->off), &v, sizeof(v));
	return 0;
}

/* Replaces *slot with a copy of text. */
static int store_string(struct loader *ld, const config_setting_t *s, char **slot, const char *text)
{
	char *copy = strdup(text);
	if (copy == NULL)
		return fail_at(ld, s, "out of memory");
	free(*slot);
	*slot = copy;
	return 0;
}

/* Remembers where setting s stands in the file(s), for errors found when
 * the value is used (the line of a default is 0: nothing noted). */
static int note_setting(struct loader *ld, const config_setting_t *s, struct tf_key_source *src)
{
	if (config_setting_source_line(s) == 0)
		return 0;
	const char *file = config_setting_source_file(s);
	char *copy = strdup(file != NULL ? file : ld->path);
	if (copy == NULL)
		return fail_at(ld, NULL, "out of memory");
	free(src->file);
	src->file = copy;
	src->line = config_setting_source_line(s);
	return 0;
}

/* Reads the string setting s, named path, into *slot when check accepts
 * it. */
static int read_string_at(struct loader *ld, const char *path, string_check *check,
			  const config_setting_t *s, char **slot)
{
	/* Every check refuses "" except check_user, so check("") is what the key
	 * expects, for the message of a type error. */
	const char *expected = check("");
	if (expected == NULL)
		expected = "a string";
	if (config_setting_type(s) != CONFIG_TYPE_STRING)
		return fail_at(ld, s, "%s: expected %s, not %s", path, expected, type_name(s));
	const char *text = config_setting_get_string(s);
	const char *bad = check(text);
	if (bad != NULL) {
		char buf[64];
		return fail_at(ld, s, "%s: expected %s, got \"%s\"", path, bad,
			       shown(text, buf, sizeof(buf)));
	}
	return store_string(ld, s, slot, text);
}

static int read_string(struct loader *ld, const struct leaf *lf, const config_setting_t *s)
{
	return read_string_at(ld, lf->path, lf->check, s, (char **)field(ld->cfg, lf->off));
}

static int read_listen(struct loader *ld, const struct leaf *lf, const config_setting_t *s)
{
	static const char want[] =
	    "\"IPv4:port\" or \"[IPv6]:port\", an address, not a name (port 0 to 65535, 0 "
	    "= any free port)";
	int type = config_setting_type(s);
	if (type != CONFIG_TYPE_ARRAY && type != CONFIG_TYPE_LIST)
		return fail_at(ld, s, "%s: expected an array of %s, not %s", lf->path, want,
			       type_name(s));
	int n = config_setting_length(s);
	if (n > TF_MAX_LISTEN)
		return fail_at(ld, s, "%s: expected at most %d addresses, got %d", lf->path,
			       TF_MAX_LISTEN, n);
	char **list = field(ld->cfg, lf->off);
	size_t *count = field(ld->cfg, lf->off_n);
	/* The file's list replaces the default one. */
	for (size_t i = 0; i < *count; i++) {
		free(list[i]);
		list[i] = NULL;
	}
	*count = 0;
	for (int i = 0; i < n; i++) {
		const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
		if (config_setting_type(e) != CONFIG_TYPE_STRING)
			return fail_at(ld, e, "%s[%d]: expected %s, not %s", lf->path, i, want,
				       type_name(e));
		const char *text = config_setting_get_string(e);
		if (!is_listen_address(text)) {
			char buf[64];
			return fail_at(ld, e, "%s[%d]: expected %s, got \"%s\"", lf->path, i, want,
				       shown(text, buf, sizeof(buf)));
		}
		if (store_string(ld, e, &list[i], text) < 0)
			return -1;
		*count = (size_t)i + 1;
	}
	return 0;
}

/* One tls.certificates entry: a group holding cert and key, and optionally
 * the OCSP response to staple. */
static int read_cert_pair(struct loader *ld, const struct leaf *lf, int index,
			  const config_setting_t *g, struct tf_cert_pair *pair)
{
	if (config_setting_type(g) != CONFIG_TYPE_GROUP)
		return fail_at(
		    ld, g, "%s[%d]: expected a group { cert = \"...\"; key = \"...\"; }, not %s",
		    lf->path, index, type_name(g));
	for (int i = 0; i < config_setting_length(g); i++) {
		const config_setting_t *m = config_setting_get_elem(g, (unsigned)i);
		const char *name = config_setting_name(m);
		char **slot;
		if (strcmp(name, "cert") == 0)
			slot = &pair->cert;
		else if (strcmp(name, "key") == 0)
			slot = &pair->key;
		else if (strcmp(name, "ocsp") == 0)
			slot = &pair->ocsp;
		else
			return fail_at(ld, m, "%s[%d].%s: unknown key (expected cert, key or ocsp)",
				       lf->path, index, name);
		if (config_setting_type(m) != CONFIG_TYPE_STRING)
			return fail_at(ld, m, "%s[%d].%s: expected a file name, not %s", lf->path,
				       index, name, type_name(m));
		const char *text = config_setting_get_string(m);
		if (text[0] == '\0')
			return fail_at(ld, m, "%s[%d].%s: expected a file name, got \"\"", lf->path,
				       index, name);
		if (store_string(ld, m, slot, text) < 0)
			return -1;
		if (slot == &pair->ocsp && note_setting(ld, m, &pair->ocsp_source) < 0)
			return -1;
	}
	if (pair->cert == NULL)
		return fail_at(ld, g, "%s[%d].cert: missing (each entry needs cert and key)",
			       lf->path, index);
	if (pair->key == NULL)
		return fail_at(ld, g, "%s[%d].key: missing (each entry needs cert and key)",
			       lf->path, index);
	return 0;
}

static int read_certs(struct loader *ld, const struct leaf *lf, const config_setting_t *s)
{
	if (config_setting_type(s) != CONFIG_TYPE_LIST)
		return fail_at(
		    ld, s,
		    "%s: expected a list ( { cert = \"...\"; key = \"...\"; }, ... ), not %s",
		    lf->path, type_name(s));
	int n = config_setting_length(s);
	if (n == 0)
		return fail_at(
		    ld, s,
		    "%s: expected at least one { cert; key; } entry (leave the key out for "
		    "a self-signed certificate)",
		    lf->path);
	if (n > TF_MAX_CERTS)
		return fail_at(ld, s, "%s: expected at most %d entries, got %d", lf->path,
			       TF_MAX_CERTS, n);
	struct tf_cert_pair *pairs = field(ld->cfg, lf->off);
	size_t *count = field(ld->cfg, lf->off_n);
	for (int i = 0; i < n; i++) {
		/* Counted first so that config_free releases a half-read pair. */
		*count = (size_t)i + 1;
		if (read_cert_pair(ld, lf, i, config_setting_get_elem(s, (unsigned)i), &pairs[i]) <
		    0)
			return -1;
	}
	return 0;
}

/* One milters entry: a group holding socket, and optionally name,
 * default_action, timeout and connect_timeout. */
static int read_milter(struct loader *ld, const struct leaf *lf, int index,
		       const config_setting_t *g, struct tf_milter_config *m)
{
	if (config_setting_type(g) != CONFIG_TYPE_GROUP)
		return fail_at(ld, g, "%s[%d]: expected a group { socket = \"...\"; ... }, not %s",
			       lf->path, index, type_name(g));
	m->default_action = TF_MILTER_TEMPFAIL; /* Postfix's milter_default_action */
	m->timeout = 30;
	m->connect_timeout = 30;
	for (int i = 0; i < config_setting_length(g); i++) {
		const config_setting_t *s = config_setting_get_elem(g, (unsigned)i);
		const char *name = config_setting_name(s);
		char path[64];
		snprintf(path, sizeof(path), "%s[%d].%.16s", lf->path, index, name);
		unsigned long v;
		int action;
		int rc;
		if (strcmp(name, "name") == 0) {
			rc = read_string_at(ld, path, check_milter_name, s, &m->name);
		} else if (strcmp(name, "socket") == 0) {
			rc = read_string_at(ld, path, check_milter_socket, s, &m->socket);
		} else if (strcmp(name, "default_action") == 0) {
			rc = read_enum_at(ld, path, milter_action_names, s, &action);
			if (rc == 0)
				m->default_action = (enum tf_milter_action)action;
		} else if (strcmp(name, "timeout") == 0) {
			rc = read_integer(ld, path, 1, MAX_MILTER_TIMEOUT, s, &v);
			if (rc == 0)
				m->timeout = (unsigned)v;
		} else if (strcmp(name, "connect_timeout") == 0) {
			rc = read_integer(ld, path, 1, MAX_MILTER_TIMEOUT, s, &v);
			if (rc == 0)
				m->connect_timeout = (unsigned)v;
		} else {
			return fail_at(ld, s,
				       "%s[%d].%s: unknown key (expected name, socket, "
				       "default_action, timeout or connect_timeout)",
				       lf->path, index, name);
		}
		if (rc < 0)
			return -1;
	}
	if (m->socket == NULL)
		return fail_at(ld, g, "%s[%d].socket: missing (each milter needs a socket)",
			       lf->path, index);
	if (m->name == NULL)
		return store_string(ld, g, &m->name, m->socket);
	return 0;
}

static int read_milters(struct loader *ld, const struct leaf *lf, const config_setting_t *s)
{
	int type = config_setting_type(s);
	if (type != CONFIG_TYPE_LIST && type != CONFIG_TYPE_ARRAY)
		return fail_at(ld, s,
			       "%s: expected a list ( { socket = \"...\"; ... }, ... ), not %s",
			       lf->path, type_name(s));
	int n = config_setting_length(s);
	if (n > TF_MAX_MILTERS)
		return fail_at(ld, s, "%s: expected at most %d milters, got %d", lf->path,
			       TF_MAX_MILTERS, n);
	struct tf_milter_config *milters = field(ld->cfg, lf->off);
	size_t *count = field(ld->cfg, lf->off_n);
	for (int i = 0; i < n; i++) {
		const config_setting_t *g = config_setting_get_elem(s, (unsigned)i);
		/* Counted first so that config_free releases a half-read entry. */
		*count = (size_t)i + 1;
		if (read_milter(ld, lf, i, g, &milters[i]) < 0)
			return -1;
		for (int j = 0; j < i; j++) {
			if (strcmp(milters[j].name, milters[i].name) != 0)
				continue;
			/* At the name, or at the socket that gave the default. */
			const config_setting_t *at = config_setting_get_member(g, "name");
			if (at == NULL)
				at = config_setting_get_member(g, "socket");
			char buf[64];
			return fail_at(ld, at,
				       "%s[%d].name: \"%s\" is already the name of %s[%d] (names "
				       "must be unique; the default name is the socket)",
				       lf->path, i, shown(milters[i].name, buf, sizeof(buf)),
				       lf->path, j);
		}
	}
	return 0;
}

static int read_leaf(struct loader *ld, const struct leaf *lf, const config_setting_t *s)
{
	switch (lf->kind) {
	case LEAF_BOOL:
		return read_bool(ld, lf, s);
	case LEAF_UINT:
		return read_uint(ld, lf, s);
	case LEAF_ENUM:
		return read_enum(ld, lf, s);
	case LEAF_STRING:
		return read_string(ld, lf, s);
	case LEAF_LISTEN:
		return read_listen(ld, lf, s);
	case LEAF_CERTS:
		return read_certs(ld, lf, s);
	case LEAF_ULONG:
		return read_ulong(ld, lf, s);
	case LEAF_MILTER:
		return read_milters(ld, lf, s);
	}
	return fail_at(ld, s, "%s: internal error: unknown leaf kind", lf->path);
}

/* ---- the walk ---------------------------------------------------------- */

/* Checks and stores every member of group g, whose dotted path is prefix
 * ("" for the root), in file order. */
static int walk_group(struct loader *ld, const config_setting_t *g, const char *prefix)
{
	for (int i = 0; i < config_setting_length(g); i++) {
		const config_setting_t *s = config_setting_get_elem(g, (unsigned)i);
		char path[128];
		int n = snprintf(path, sizeof(path), "%s%s%s", prefix, prefix[0] ? "." : "",
				 config_setting_name(s));
		if (n < 0 || (size_t)n >= sizeof(path))
			return fail_at(ld, s, "%s%s%.64s...: unknown key", prefix,
				       prefix[0] ? "." : "", config_setting_name(s));
		if (is_group(path)) {
			if (config_setting_type(s) != CONFIG_TYPE_GROUP)
				return fail_at(ld, s, "%s: expected a group { ... }, not %s", path,
					       type_name(s));
			if (walk_group(ld, s, path) < 0)
				return -1;
			continue;
		}
		const struct leaf *lf = find_leaf(path);
		if (lf == NULL)
			return fail_at(ld, s, "%s: unknown key", path);
		if (read_leaf(ld, lf, s) < 0)
			return -1;
	}
	return 0;
}

/* ---- combinations ------------------------------------------------------ */

static unsigned line_of(const config_setting_t *s)
{
	return s != NULL ? config_setting_source_line(s) : 0;
}

/* The later of two settings in the file (either may be NULL). */
static const config_setting_t *later(const config_setting_t *a, const config_setting_t *b)
{
	return line_of(b) > line_of(a) ? b : a;
}

static int check_empty_listen(struct loader *ld, const config_t *lc, const char *name, bool enabled,
			      size_t n_listen)
{
	if (!enabled || n_listen > 0)
		return 0;
	char enabled_path[64], listen_path[64];
	snprintf(enabled_path, sizeof(enabled_path), "%s.enabled", name);
	snprintf(listen_path, sizeof(listen_path), "%s.listen", name);
	/* Listen is in the file (the default is not empty); enabled may be. */
	const config_setting_t *s =
	    later(config_lookup(lc, listen_path), config_lookup(lc, enabled_path));
	return fail_at(ld, s, "%s: expected at least one address while %s is true", listen_path,
		       enabled_path);
}

static int check_combinations(struct loader *ld, const config_t *lc)
{
	const struct tf_config *cfg = ld->cfg;

	if (cfg->inbound.tcp.require_tls && !cfg->inbound.tcp.starttls) {
		const config_setting_t *s = later(config_lookup(lc, "inbound.tcp.require_tls"),
						  config_lookup(lc, "inbound.tcp.starttls"));
		return fail_at(ld, s,
			       "inbound.tcp.require_tls = true needs inbound.tcp.starttls = true "
			       "(no client could ever send mail)");
	}

	if (check_empty_listen(ld, lc, "inbound.tcp", cfg->inbound.tcp.enabled,
			       cfg->inbound.tcp.n_listen) < 0 ||
	    check_empty_listen(ld, lc, "inbound.tls", cfg->inbound.tls.enabled,
			       cfg->inbound.tls.n_listen) < 0 ||
	    check_empty_listen(ld, lc, "outbound", cfg->outbound.enabled, cfg->outbound.n_listen) <
		0)
		return -1;

	if (!cfg->inbound.tcp.enabled && !cfg->inbound.tls.enabled && !cfg->outbound.enabled) {
		/* SPEC §7 item 11: at the last "enabled = false" in the file. */
		const config_setting_t *s = later(later(config_lookup(lc, "inbound.tcp.enabled"),
							config_lookup(lc, "inbound.tls.enabled")),
						  config_lookup(lc, "outbound.enabled"));
		return fail_at(ld, s,
			       "no listener enabled: inbound.tcp.enabled, inbound.tls.enabled and "
			       "outbound.enabled are all false");
	}

	if (cfg->outbound.tls == TF_OUT_TLS_VERIFY &&
	    strcmp(cfg->outbound.next_hop, "original-destination") == 0) {
		const config_setting_t *s = later(config_lookup(lc, "outbound.tls"),
						  config_lookup(lc, "outbound.next_hop"));
		return fail_at(ld, s,
			       "outbound.tls = \"verify\" cannot be used with outbound.next_hop = "
			       "\"original-destination\" (there is no name to verify)");
	}
	return 0;
}

/* ---- not supported yet ------------------------------------------------- */

static bool same_value(const struct leaf *lf, const struct tf_config *a, const struct tf_config *b)
{
	switch (lf->kind) {
	case LEAF_BOOL:
		return *(const bool *)cfield(a, lf->off) == *(const bool *)cfield(b, lf->off);
	case LEAF_UINT:
		return *(const unsigned *)cfield(a, lf->off) ==
		       *(const unsigned *)cfield(b, lf->off);
	case LEAF_ENUM:
		return memcmp(cfield(a, lf->off), cfield(b, lf->off), sizeof(int)) == 0;
	case LEAF_STRING:
		return strcmp(*(char *const *)cfield(a, lf->off),
			      *(char *const *)cfield(b, lf->off)) == 0;
	case LEAF_ULONG:
		return *(const unsigned long *)cfield(a, lf->off) ==
		       *(const unsigned long *)cfield(b, lf->off);
	case LEAF_LISTEN:
	case LEAF_CERTS:
	case LEAF_MILTER:
		break;
	}
	return false; /* no row names such a key */
}

/* Reports the first key (in file order) of not_supported_yet[] that holds a
 * value other than its default. */
static int check_not_supported_yet(struct loader *ld, const config_t *lc)
{
	struct tf_config defaults;
	if (config_defaults(&defaults) < 0)
		return fail_at(ld, NULL, "out of memory");
	const config_setting_t *first = NULL;
	const char *first_path = NULL;
	for (size_t i = 0; i < COUNT(not_supported_yet); i++) {
		if (not_supported_yet[i] == NULL)
			continue;
		const struct leaf *lf = find_leaf(not_supported_yet[i]);
		const config_setting_t *s = config_lookup(lc, not_supported_yet[i]);
		if (lf == NULL || s == NULL || same_value(lf, ld->cfg, &defaults))
			continue;
		if (first == NULL || line_of(s) < line_of(first)) {
			first = s;
			first_path = lf->path;
		}
	}
	config_free(&defaults);
	if (first != NULL)
		return fail_at(ld, first, "%s: not supported yet", first_path);
	return 0;
}

/* ---- the interface ----------------------------------------------------- */

int config_defaults(struct tf_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));

	char host[HOST_MAX] = "";
	if (gethostname(host, sizeof(host) - 1) != 0 || host[0] == '\0')
		snprintf(host, sizeof(host), "localhost");
	host[sizeof(host) - 1] = '\0';

	struct tf_listener_config *tcp = &cfg->inbound.tcp, *tls = &cfg->inbound.tls;
	cfg->server_name = strdup(host);
	cfg->workers = 0;
	cfg->backend.address = strdup("127.0.0.1:2525");
	cfg->backend.connect_timeout = 10;
	cfg->backend.client_info = TF_CLIENT_INFO_NONE;
	cfg->tls.n_certs = 0;
	cfg->tls.priority = NULL; /* not set: the built-in profile of certs/ */
	cfg->tls.handshake_timeout = 30;
	cfg->tls.session_cache_timeout = 3600; /* Postfix's smtpd_tls_session_cache_timeout */

	tcp->enabled = true;
	tcp->listen[0] = strdup("0.0.0.0:25");
	tcp->listen[1] = strdup("[::]:25");
	tcp->n_listen = 2;
	tcp->starttls = true;
	tcp->require_tls = false;
	tcp->name_and_password = false;
	tcp->proxy_protocol = false;

	tls->enabled = false;
	tls->listen[0] = strdup("0.0.0.0:465");
	tls->n_listen = 1;
	tls->starttls = false; /* tcp only */
	tls->require_tls = false;
	tls->name_and_password = true;
	tls->proxy_protocol = false;

	cfg->outbound.enabled = false;
	cfg->outbound.listen[0] = strdup("127.0.0.1:10025");
	cfg->outbound.n_listen = 1;
	cfg->outbound.next_hop = strdup("smtp.example.net:25");
	cfg->outbound.tls = TF_OUT_TLS_NEGOTIATED;
	cfg->outbound.ca_file = strdup("system");
	cfg->outbound.connect_timeout = 30;

	cfg->limits.max_connections = 10000;
	cfg->limits.max_connections_per_ip = 100;
	cfg->limits.idle_timeout = 300;
	cfg->limits.line_length = 2048;
	cfg->limits.max_errors = 10;
	cfg->limits.shutdown_timeout = 30;
	cfg->limits.message_size_limit = 52428800; /* 50 MiB */

	cfg->bare_newlines = TF_BARE_SANITIZE;
	cfg->log_level = TF_LOG_INFO;
	cfg->user = strdup("");

	if (cfg->server_name == NULL || cfg->backend.address == NULL || tcp->listen[0] == NULL ||
	    tcp->listen[1] == NULL || tls->listen[0] == NULL || cfg->outbound.listen[0] == NULL ||
	    cfg->outbound.next_hop == NULL || cfg->outbound.ca_file == NULL || cfg->user == NULL) {
		config_free(cfg);
		return -1;
	}
	return 0;
}

static void free_listen(char **list)
{
	/* Every slot, not just n_listen: a failed read may leave one past it. */
	for (size_t i = 0; i < TF_MAX_LISTEN; i++)
		free(list[i]);
}

static void free_milters(struct tf_milter_config *milters)
{
	for (size_t i = 0; i < TF_MAX_MILTERS; i++) {
		free(milters[i].name);
		free(milters[i].socket);
	}
}

void config_free(struct tf_config *cfg)
{
	if (cfg == NULL)
		return;
	free(cfg->path);
	free(cfg->server_name);
	free(cfg->backend.address);
	for (size_t i = 0; i < TF_MAX_CERTS; i++) {
		free(cfg->tls.certs[i].cert);
		free(cfg->tls.certs[i].key);
		free(cfg->tls.certs[i].ocsp);
		free(cfg->tls.certs[i].ocsp_source.file);
	}
	free(cfg->tls.priority);
	free_listen(cfg->inbound.tcp.listen);
	free_listen(cfg->inbound.tls.listen);
	free_listen(cfg->outbound.listen);
	free_listen(cfg->metrics.listen);
	free_milters(cfg->inbound.milters);
	free_milters(cfg->outbound.milters);
	free(cfg->outbound.next_hop);
	free(cfg->outbound.ca_file);
	free(cfg->user);
	free(cfg->source.tls_priority.file);
	free(cfg->source.backend_address.file);
	memset(cfg, 0, sizeof(*cfg));
}

/* Fails with "FILE: cannot read: ..." when path cannot be read as a file;
 * libconfig itself only says "file I/O error". */
static int check_readable(struct loader *ld)
{
	FILE *f = fopen(ld->path, "r");
	if (f == NULL)
		return fail_at(ld, NULL, "cannot read: %s", strerror(errno));
	struct stat st;
	int rc = 0;
	if (fstat(fileno(f), &st) != 0)
		rc = fail_at(ld, NULL, "cannot read: %s", strerror(errno));
	else if (S_ISDIR(st.st_mode))
		rc = fail_at(ld, NULL, "cannot read: %s", strerror(EISDIR));
	fclose(f);
	return rc;
}

/* Remembers where key was set (nothing when it was not). */
static int note_source(struct loader *ld, const config_t *lc, const char *key,
		       struct tf_key_source *src)
{
	const config_setting_t *s = config_lookup(lc, key);
	if (s == NULL)
		return 0;
	return note_setting(ld, s, src);
}

void config_where(const struct tf_config *cfg, const struct tf_key_source *src, char *out,
		  size_t outlen)
{
	const char *path = cfg->path != NULL ? cfg->path : "(defaults)";
	if (src != NULL && src->line > 0 && src->file != NULL)
		snprintf(out, outlen, "%s:%u", src->file, src->line);
	else
		snprintf(out, outlen, "%s", path);
}

int config_load(const char *path, struct tf_config *cfg, char *err, size_t errlen)
{
	struct loader ld = {.path = path, .cfg = cfg, .err = err, .errlen = errlen};
	if (err != NULL && errlen > 0)
		err[0] = '\0';
	memset(cfg, 0, sizeof(*cfg));
	if (path == NULL) {
		ld.path = "(null)";
		return fail_at(&ld, NULL, "no configuration file given");
	}
	if (check_readable(&ld) < 0)
		return -1;
	if (config_defaults(cfg) < 0 || (cfg->path = strdup(path)) == NULL) {
		config_free(cfg);
		return fail_at(&ld, NULL, "out of memory");
	}

	config_t lc;
	config_init(&lc);
	config_set_auto_convert(&lc, 0);
	int rc = 0;
	if (!config_read_file(&lc, path)) {
		/* Syntax errors, duplicate keys, a missing @include file. */
		const char *file = config_error_file(&lc) ? config_error_file(&lc) : path;
		const char *text = config_error_text(&lc) ? config_error_text(&lc) : "parse error";
		int line = config_error_line(&lc);
		if (config_error_type(&lc) == CONFIG_ERR_FILE_IO && line <= 0)
			rc = fail_line(&ld, file, 0, "cannot read: %s", text);
		else
			rc = fail_line(&ld, file, line > 0 ? (unsigned)line : 0, "%s", text);
	} else if (walk_group(&ld, config_root_setting(&lc), "") < 0 ||
		   check_combinations(&ld, &lc) < 0 || check_not_supported_yet(&ld, &lc) < 0 ||
		   note_source(&ld, &lc, "tls.priority", &cfg->source.tls_priority) < 0 ||
		   note_source(&ld, &lc, "backend.address", &cfg->source.backend_address) < 0) {
		rc = -1;
	}
	config_destroy(&lc);
	if (rc < 0)
		config_free(cfg);
	return rc;
}

const char *config_log_level_name(enum tf_log_level level)
{
	switch (level) {
	case TF_LOG_ERROR:
	case TF_LOG_WARN:
	case TF_LOG_INFO:
	case TF_LOG_DEBUG:
		return log_level_names[level];
	}
	return "unknown";
}
