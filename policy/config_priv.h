/* config_priv.h — the loader's internals shared by its three files:
 * config.c (the key tree, the walk, the combinations, the keys not supported
 * yet, the interface), config_read.c (the errors and reading one leaf) and
 * config_values.c (the syntax of values: host:port, listen addresses, the
 * string checks). Not for anyone else: callers use policy/config.h only.
 *
 * Like the three files, it never includes libuv, GnuTLS, socket or clock
 * headers.
 */
#ifndef TLSFRONT_POLICY_CONFIG_PRIV_H
#define TLSFRONT_POLICY_CONFIG_PRIV_H

#include <libconfig.h>
#include <stdbool.h>
#include <stddef.h>

#include "policy/config.h"

#define HOST_MAX 256 /* a DNS name is at most 253 characters */

/* ---- the key tree (its rows, leaves[], are in config.c) ---------------- */

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

/* ---- errors (config_read.c) -------------------------------------------- */

struct loader {
	const char *path; /* the file, for messages */
	struct tf_config *cfg;
	char *err;
	size_t errlen;
};

/* Writes "FILE:LINE: message" (or "FILE: message" when line is 0) and
 * returns -1. */
int config_fail_line(struct loader *ld, const char *file, unsigned line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Writes "FILE:LINE: message" for setting s (or "FILE: message" when s is
 * NULL or has no line) and returns -1. */
int config_fail_at(struct loader *ld, const config_setting_t *s, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

const char *config_type_name(const config_setting_t *s);

/* ---- reading one leaf (config_read.c) ---------------------------------- */

/* Remembers where setting s stands in the file(s), for errors found when
 * the value is used (the line of a default is 0: nothing noted). */
int config_note_setting(struct loader *ld, const config_setting_t *s, struct tf_key_source *src);

/* Checks setting s as leaf lf and stores it into ld->cfg. */
int config_read_leaf(struct loader *ld, const struct leaf *lf, const config_setting_t *s);

/* ---- the syntax of values (config_values.c) ---------------------------- */

/* A listen address: "IPv4:port" or "[IPv6]:port", never a name. */
bool config_is_listen_address(const char *text);

string_check config_check_user, config_check_non_empty, config_check_host_name,
    config_check_backend_address, config_check_next_hop, config_check_milter_name,
    config_check_milter_socket;

#endif
