/* config_read.c — reading one leaf of the key tree (config.c's leaves[])
 * from its libconfig setting into the struct tf_config being loaded: its
 * type, its range or the syntax config_values.c checks, and the
 * tls.certificates and milters groups member by member; and the errors,
 * "FILE:LINE: KEY: what was expected" written into the caller's buffer.
 *
 * Never decides which leaf a setting is (config.c's walk does), never opens
 * a file a value names, never prints or logs, and must never include libuv,
 * GnuTLS, socket or clock headers.
 */
#include "policy/config_priv.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_MILTER_TIMEOUT 3600u /* issue 14 */

static const char *const milter_action_names[] = {"accept", "tempfail", "reject", NULL};
_Static_assert(TF_MILTER_ACCEPT == 0 && TF_MILTER_TEMPFAIL == 1 && TF_MILTER_REJECT == 2,
	       "milter_action_names[] is in enum order");

static void *field(struct tf_config *cfg, size_t off)
{
	return (char *)cfg + off;
}

/* ---- errors ------------------------------------------------------------ */

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
int config_fail_line(struct loader *ld, const char *file, unsigned line, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	set_error_v(ld, file, line, fmt, ap);
	va_end(ap);
	return -1;
}

/* Writes "FILE:LINE: message" for setting s (or "FILE: message" when s is
 * NULL or has no line) and returns -1. */
int config_fail_at(struct loader *ld, const config_setting_t *s, const char *fmt, ...)
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

const char *config_type_name(const config_setting_t *s)
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

/* ---- reading one leaf -------------------------------------------------- */

static int read_bool(struct loader *ld, const struct leaf *lf, const config_setting_t *s)
{
	if (config_setting_type(s) != CONFIG_TYPE_BOOL)
		return config_fail_at(ld, s, "%s: expected true or false, not %s", lf->path,
				      config_type_name(s));
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
		return config_fail_at(ld, s, "%s: expected %s, not %s", path, what,
				      config_type_name(s));
	long long v = config_setting_get_int64(s);
	if (v < (long long)min || v > (long long)max) {
		if (min <= 1)
			return config_fail_at(ld, s, "%s: expected %s (at most %u), got %lld", path,
					      what, max, v);
		return config_fail_at(ld, s, "%s: expected %s, got %lld", path, what, v);
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
		return config_fail_at(ld, s, "%s: expected one of %s, not %s", path, list,
				      config_type_name(s));
	const char *text = config_setting_get_string(s);
	for (int i = 0; names[i] != NULL; i++) {
		if (strcmp(text, names[i]) == 0) {
			*out = i;
			return 0;
		}
	}
	char buf[64];
	return config_fail_at(ld, s, "%s: expected one of %s, got \"%s\"", path, list,
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
		return config_fail_at(ld, s, "out of memory");
	free(*slot);
	*slot = copy;
	return 0;
}

/* Remembers where setting s stands in the file(s), for errors found when
 * the value is used (the line of a default is 0: nothing noted). */
int config_note_setting(struct loader *ld, const config_setting_t *s, struct tf_key_source *src)
{
	if (config_setting_source_line(s) == 0)
		return 0;
	const char *file = config_setting_source_file(s);
	char *copy = strdup(file != NULL ? file : ld->path);
	if (copy == NULL)
		return config_fail_at(ld, NULL, "out of memory");
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
	/* Every check refuses "" except config_check_user, so check("") is what the key
	 * expects, for the message of a type error. */
	const char *expected = check("");
	if (expected == NULL)
		expected = "a string";
	if (config_setting_type(s) != CONFIG_TYPE_STRING)
		return config_fail_at(ld, s, "%s: expected %s, not %s", path, expected,
				      config_type_name(s));
	const char *text = config_setting_get_string(s);
	const char *bad = check(text);
	if (bad != NULL) {
		char buf[64];
		return config_fail_at(ld, s, "%s: expected %s, got \"%s\"", path, bad,
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
		return config_fail_at(ld, s, "%s: expected an array of %s, not %s", lf->path, want,
				      config_type_name(s));
	int n = config_setting_length(s);
	if (n > TF_MAX_LISTEN)
		return config_fail_at(ld, s, "%s: expected at most %d addresses, got %d", lf->path,
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
			return config_fail_at(ld, e, "%s[%d]: expected %s, not %s", lf->path, i,
					      want, config_type_name(e));
		const char *text = config_setting_get_string(e);
		if (!config_is_listen_address(text)) {
			char buf[64];
			return config_fail_at(ld, e, "%s[%d]: expected %s, got \"%s\"", lf->path, i,
					      want, shown(text, buf, sizeof(buf)));
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
		return config_fail_at(
		    ld, g, "%s[%d]: expected a group { cert = \"...\"; key = \"...\"; }, not %s",
		    lf->path, index, config_type_name(g));
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
			return config_fail_at(ld, m,
					      "%s[%d].%s: unknown key (expected cert, key or ocsp)",
					      lf->path, index, name);
		if (config_setting_type(m) != CONFIG_TYPE_STRING)
			return config_fail_at(ld, m, "%s[%d].%s: expected a file name, not %s",
					      lf->path, index, name, config_type_name(m));
		const char *text = config_setting_get_string(m);
		if (text[0] == '\0')
			return config_fail_at(ld, m, "%s[%d].%s: expected a file name, got \"\"",
					      lf->path, index, name);
		if (store_string(ld, m, slot, text) < 0)
			return -1;
		if (slot == &pair->ocsp && config_note_setting(ld, m, &pair->ocsp_source) < 0)
			return -1;
	}
	if (pair->cert == NULL)
		return config_fail_at(ld, g, "%s[%d].cert: missing (each entry needs cert and key)",
				      lf->path, index);
	if (pair->key == NULL)
		return config_fail_at(ld, g, "%s[%d].key: missing (each entry needs cert and key)",
				      lf->path, index);
	return 0;
}

static int read_certs(struct loader *ld, const struct leaf *lf, const config_setting_t *s)
{
	if (config_setting_type(s) != CONFIG_TYPE_LIST)
		return config_fail_at(
		    ld, s,
		    "%s: expected a list ( { cert = \"...\"; key = \"...\"; }, ... ), not %s",
		    lf->path, config_type_name(s));
	int n = config_setting_length(s);
	if (n == 0)
		return config_fail_at(
		    ld, s,
		    "%s: expected at least one { cert; key; } entry (leave the key out for "
		    "a self-signed certificate)",
		    lf->path);
	if (n > TF_MAX_CERTS)
		return config_fail_at(ld, s, "%s: expected at most %d entries, got %d", lf->path,
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
		return config_fail_at(ld, g,
				      "%s[%d]: expected a group { socket = \"...\"; ... }, not %s",
				      lf->path, index, config_type_name(g));
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
			rc = read_string_at(ld, path, config_check_milter_name, s, &m->name);
		} else if (strcmp(name, "socket") == 0) {
			rc = read_string_at(ld, path, config_check_milter_socket, s, &m->socket);
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
			return config_fail_at(ld, s,
					      "%s[%d].%s: unknown key (expected name, socket, "
					      "default_action, timeout or connect_timeout)",
					      lf->path, index, name);
		}
		if (rc < 0)
			return -1;
	}
	if (m->socket == NULL)
		return config_fail_at(ld, g, "%s[%d].socket: missing (each milter needs a socket)",
				      lf->path, index);
	if (m->name == NULL)
		return store_string(ld, g, &m->name, m->socket);
	return 0;
}

static int read_milters(struct loader *ld, const struct leaf *lf, const config_setting_t *s)
{
	int type = config_setting_type(s);
	if (type != CONFIG_TYPE_LIST && type != CONFIG_TYPE_ARRAY)
		return config_fail_at(
		    ld, s, "%s: expected a list ( { socket = \"...\"; ... }, ... ), not %s",
		    lf->path, config_type_name(s));
	int n = config_setting_length(s);
	if (n > TF_MAX_MILTERS)
		return config_fail_at(ld, s, "%s: expected at most %d milters, got %d", lf->path,
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
			return config_fail_at(
			    ld, at,
			    "%s[%d].name: \"%s\" is already the name of %s[%d] (names "
			    "must be unique; the default name is the socket)",
			    lf->path, i, shown(milters[i].name, buf, sizeof(buf)), lf->path, j);
		}
	}
	return 0;
}

int config_read_leaf(struct loader *ld, const struct leaf *lf, const config_setting_t *s)
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
	return config_fail_at(ld, s, "%s: internal error: unknown leaf kind", lf->path);
}
