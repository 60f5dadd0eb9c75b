/* config.h — the configuration model of SPEC §2 and its loader.
 *
 * Pure data plus the libconfig reader. Never includes libuv, GnuTLS or socket
 * headers, and never logs: errors are returned as "FILE:LINE: message" in a
 * caller's buffer, and the caller decides what to do with them.
 *
 * Ownership: every string in a struct tf_config is owned by that struct and
 * released by config_free(); a struct from config_defaults() owns nothing
 * but its fixed arrays until config_load() fills it.
 */
#ifndef TLSFRONT_POLICY_CONFIG_H
#define TLSFRONT_POLICY_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

#define TF_CONFIG_DEFAULT_PATH "/etc/tlsfront/tlsfront.conf"
#define TF_MAX_LISTEN	       16 /* addresses per listener */
#define TF_MAX_CERTS	       16 /* cert/key pairs in tls.certificates */

enum tf_log_level { TF_LOG_ERROR = 0, TF_LOG_WARN, TF_LOG_INFO, TF_LOG_DEBUG };

enum tf_bare_newlines { TF_BARE_SANITIZE = 0, TF_BARE_REJECT };

enum tf_client_info {
	TF_CLIENT_INFO_NONE = 0,
	TF_CLIENT_INFO_XCLIENT,
	TF_CLIENT_INFO_PROXY_V1,
	TF_CLIENT_INFO_PROXY_V2
};

enum tf_outbound_tls {
	TF_OUT_TLS_NONE = 0,
	TF_OUT_TLS_NEGOTIATED,
	TF_OUT_TLS_REQUIRED,
	TF_OUT_TLS_VERIFY
};

/* Where a key was set, for errors found only after loading (a priority
 * string GnuTLS refuses, a backend host that does not resolve). */
struct tf_key_source {
	char *file;    /* owned; the file holding the key (an @include'd one
			* names itself); NULL when line is 0 */
	unsigned line; /* 0: the key is not in the file (its default) */
};

struct tf_cert_pair {
	char *cert;			  /* PEM file path, owned */
	char *key;			  /* PEM file path, owned */
	char *ocsp;			  /* DER OCSP response to staple, owned; NULL: none */
	struct tf_key_source ocsp_source; /* where ocsp was set */
};

/* Issue 14: a milter of inbound.milters or outbound.milters. */
#define TF_MAX_MILTERS 8
enum tf_milter_action { TF_MILTER_ACCEPT = 0, TF_MILTER_TEMPFAIL, TF_MILTER_REJECT };
struct tf_milter_config {
	char *name;   /* owned; for the log; default: the socket text */
	char *socket; /* owned; "inet:HOST:PORT" (HOST an IP literal or a name,
		       * "[v6]" allowed) or "unix:/path", as written */
	enum tf_milter_action default_action; /* default tempfail (Postfix) */
	unsigned timeout;		      /* seconds per reply; default 30 */
	unsigned connect_timeout;	      /* seconds; default 30 */
};

struct tf_listener_config {
	bool enabled;
	char *listen[TF_MAX_LISTEN]; /* "host:port" / "[v6]:port", owned */
	size_t n_listen;
	bool starttls;		/* tcp only */
	bool require_tls;	/* tcp only */
	bool name_and_password; /* AUTH rule, SPEC §3.6 */
	bool proxy_protocol;
};

struct tf_config {
	char *path;	   /* the file this came from, owned; NULL for defaults */
	char *server_name; /* owned; default gethostname() */
	unsigned workers;  /* 0 = one per CPU */

	struct {
		char *address; /* "host:port", "[v6]:port" or "unix:/path", owned */
		unsigned connect_timeout;
		enum tf_client_info client_info;
	} backend;

	struct {
		struct tf_cert_pair certs[TF_MAX_CERTS];
		size_t n_certs; /* 0: self-signed default (SPEC §5) */
		char *priority; /* GnuTLS priority string, owned; NULL (the default):
				 * the built-in AEAD-only profile of certs/ */
		unsigned handshake_timeout;
		/* Seconds: the TLS session ticket key is replaced this often
		 * and tickets live this long; 0 = no session tickets. */
		unsigned session_cache_timeout;
	} tls;

	struct {
		struct tf_listener_config tcp;
		struct tf_listener_config tls;
		struct tf_milter_config milters[TF_MAX_MILTERS];
		size_t n_milters;
	} inbound;

	struct {
		bool enabled;
		char *listen[TF_MAX_LISTEN];
		size_t n_listen;
		char *next_hop; /* owned */
		enum tf_outbound_tls tls;
		char *ca_file; /* owned */
		unsigned connect_timeout;
		struct tf_milter_config milters[TF_MAX_MILTERS];
		size_t n_milters;
	} outbound;

	struct {
		unsigned max_connections;
		unsigned max_connections_per_ip;
		unsigned idle_timeout;
		unsigned line_length;
		unsigned max_errors;
		unsigned shutdown_timeout;
		/* Issue 14: the largest message held for milters, in bytes;
		 * advertised as SIZE in sessions with milters. Default
		 * 52428800 (50 MiB). Sessions without milters stream
		 * content and leave SIZE to the backend. */
		unsigned long message_size_limit;
	} limits;

	/* Issue 13: the Prometheus /metrics and /healthz endpoint; no
	 * address (the default): no endpoint. Needs a restart, like every
	 * listen key. */
	struct {
		char *listen[TF_MAX_LISTEN]; /* owned */
		size_t n_listen;
	} metrics;

	enum tf_bare_newlines bare_newlines;
	enum tf_log_level log_level;
	char *user; /* owned; "" = do not drop privileges */

	struct {
		struct tf_key_source tls_priority;
		struct tf_key_source backend_address;
	} source;
};

/* Fills cfg with the defaults of SPEC §2 (strings allocated; free with
 * config_free). Returns 0, or -1 when out of memory. */
int config_defaults(struct tf_config *cfg);

/* Reads FILE into cfg (which it initialises itself). On error returns -1,
 * leaves cfg holding nothing to free, and writes "FILE:LINE: message" (or
 * "FILE: message" when there is no line) into err. */
int config_load(const char *path, struct tf_config *cfg, char *err, size_t errlen);

/* Releases every string cfg owns; cfg may then be reused. Safe on a zeroed
 * struct. */
void config_free(struct tf_config *cfg);

/* Splits "host:port", "[v6]:port" into host (brackets removed) and port.
 * Returns 0, or -1 when the text is not of that form or port is above 65535. */
int config_split_hostport(const char *text, char *host, size_t hostlen, unsigned *port);

const char *config_log_level_name(enum tf_log_level level);

/* Writes "FILE:LINE" for a key of cfg (src: one of cfg->source), or "FILE"
 * when the key is not in the file, into out. */
void config_where(const struct tf_config *cfg, const struct tf_key_source *src, char *out,
		  size_t outlen);

#endif
