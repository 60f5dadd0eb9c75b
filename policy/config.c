/* config.c — the libconfig loader for the configuration of SPEC §2.
 *
 * Reads one file into a struct tf_config: every key has a default
 * (config_defaults), the file overlays them, and anything wrong — an unknown
 * key, a wrong type, a value out of range, an impossible combination, a
 * feature not built yet — is returned as "FILE:LINE: KEY: what was expected"
 * in the caller's buffer.
 *
 * The loader is three files; config_priv.h declares what they share. This
 * one holds the key tree (groups[] and leaves[], whose rows
 * test/check_manpages.sh reads), the walk, the combinations, the keys not
 * supported yet and the interface; config_read.c reads one leaf (and writes
 * the errors); config_values.c checks the syntax of values (host:port,
 * listen addresses, the string checks leaves[] names).
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
 *                           read_milters() in config_read.c: socket
 *                           "inet:HOST:PORT" or "unix:/path" (required;
 *                           sendmail's "inet6:" and "inet:PORT@HOST" forms
 *                           are refused with a hint), name (1 .. 128
 *                           printable characters, no spaces; default the
 *                           socket text; unique in its list), default_action,
 *                           timeout and connect_timeout (1 .. 3600 seconds,
 *                           default 30).
 *
 * Known limitation: libconfig 1.5 wraps a decimal integer that does not fit
 * 32 bits (4294967297 reads as 1) without an error; only the wrapped value
 * can be checked. An integer with an L suffix is read as 64 bits and checked.
 */
#include "policy/config_priv.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_TIMEOUT	86400u
#define MAX_WORKERS	1024u
#define MAX_CONNECTIONS 1000000u
#define MIN_LINE_LENGTH 512u
#define MAX_LINE_LENGTH (1024u * 1024u)
#define MAX_ERRORS	1000u
#define MAX_TICKET_LIFE 604800u /* 7 days */

/* Issue 14. */
#define MIN_MESSAGE_SIZE 1024u
#define MAX_MESSAGE_SIZE 2147483648u /* 2 GiB */

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

static const char *const client_info_names[] = {"none", "xclient", "proxy-v1", "proxy-v2", NULL};
static const char *const outbound_tls_names[] = {"none", "negotiated", "required", "verify", NULL};
static const char *const bare_newlines_names[] = {"sanitize", "reject", NULL};
static const char *const log_level_names[] = {"error", "warn", "info", "debug", NULL};

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
	L_STRING("server_name", server_name, config_check_host_name),
	L_UINT("workers", workers, 0, MAX_WORKERS),

	L_STRING("backend.address", backend.address, config_check_backend_address),
	L_UINT("backend.connect_timeout", backend.connect_timeout, 1, MAX_TIMEOUT),
	L_ENUM("backend.client_info", backend.client_info, client_info_names),

	L_CERTS("tls.certificates", tls),
	L_STRING("tls.priority", tls.priority, config_check_non_empty),
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
	L_STRING("outbound.next_hop", outbound.next_hop, config_check_next_hop),
	L_ENUM("outbound.tls", outbound.tls, outbound_tls_names),
	L_STRING("outbound.ca_file", outbound.ca_file, config_check_non_empty),
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
	L_STRING("user", user, config_check_user),
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

static const void *cfield(const struct tf_config *cfg, size_t off)
{
	return (const char *)cfg + off;
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
			return config_fail_at(ld, s, "%s%s%.64s...: unknown key", prefix,
					      prefix[0] ? "." : "", config_setting_name(s));
		if (is_group(path)) {
			if (config_setting_type(s) != CONFIG_TYPE_GROUP)
				return config_fail_at(ld, s, "%s: expected a group { ... }, not %s",
						      path, config_type_name(s));
			if (walk_group(ld, s, path) < 0)
				return -1;
			continue;
		}
		const struct leaf *lf = find_leaf(path);
		if (lf == NULL)
			return config_fail_at(ld, s, "%s: unknown key", path);
		if (config_read_leaf(ld, lf, s) < 0)
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
	return config_fail_at(ld, s, "%s: expected at least one address while %s is true",
			      listen_path, enabled_path);
}

static int check_combinations(struct loader *ld, const config_t *lc)
{
	const struct tf_config *cfg = ld->cfg;

	if (cfg->inbound.tcp.require_tls && !cfg->inbound.tcp.starttls) {
		const config_setting_t *s = later(config_lookup(lc, "inbound.tcp.require_tls"),
						  config_lookup(lc, "inbound.tcp.starttls"));
		return config_fail_at(
		    ld, s,
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
		return config_fail_at(
		    ld, s,
		    "no listener enabled: inbound.tcp.enabled, inbound.tls.enabled and "
		    "outbound.enabled are all false");
	}

	if (cfg->outbound.tls == TF_OUT_TLS_VERIFY &&
	    strcmp(cfg->outbound.next_hop, "original-destination") == 0) {
		const config_setting_t *s = later(config_lookup(lc, "outbound.tls"),
						  config_lookup(lc, "outbound.next_hop"));
		return config_fail_at(
		    ld, s,
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
		return config_fail_at(ld, NULL, "out of memory");
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
		return config_fail_at(ld, first, "%s: not supported yet", first_path);
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
		return config_fail_at(ld, NULL, "cannot read: %s", strerror(errno));
	struct stat st;
	int rc = 0;
	if (fstat(fileno(f), &st) != 0)
		rc = config_fail_at(ld, NULL, "cannot read: %s", strerror(errno));
	else if (S_ISDIR(st.st_mode))
		rc = config_fail_at(ld, NULL, "cannot read: %s", strerror(EISDIR));
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
	return config_note_setting(ld, s, src);
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
		return config_fail_at(&ld, NULL, "no configuration file given");
	}
	if (check_readable(&ld) < 0)
		return -1;
	if (config_defaults(cfg) < 0 || (cfg->path = strdup(path)) == NULL) {
		config_free(cfg);
		return config_fail_at(&ld, NULL, "out of memory");
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
			rc = config_fail_line(&ld, file, 0, "cannot read: %s", text);
		else
			rc = config_fail_line(&ld, file, line > 0 ? (unsigned)line : 0, "%s", text);
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
