/* smtp_rules.h — every SMTP decision tlsfront makes about a client command
 * or an EHLO keyword (SPEC §3.2, §3.4, §3.5, §3.6), as pure functions.
 *
 * The session machine (proxy/smtp/) asks; this file answers. It holds the
 * command table with its policy flags, so require-TLS, the STARTTLS state
 * rules and the AUTH table are decided in one place. Never includes libuv,
 * GnuTLS, sockets or clocks; never logs.
 */
#ifndef TLSFRONT_POLICY_SMTP_RULES_H
#define TLSFRONT_POLICY_SMTP_RULES_H

#include <stdbool.h>
#include <stddef.h>

enum smtp_verb {
	VERB_UNKNOWN = 0,
	VERB_EHLO,
	VERB_HELO,
	VERB_MAIL,
	VERB_RCPT,
	VERB_DATA,
	VERB_BDAT,
	VERB_RSET,
	VERB_NOOP,
	VERB_HELP,
	VERB_QUIT,
	VERB_VRFY,
	VERB_EXPN,
	VERB_STARTTLS,
	VERB_AUTH,
	VERB_XCLIENT,
	VERB_XFORWARD,
};

/* What a session looks like to the rules: the listener's settings and the
 * session's protection state. Filled by the session machine. */
struct smtp_rules_session {
	bool tls_port;	       /* accepted on the TLS port (implicit TLS) */
	bool starttls_offered; /* TCP port with starttls = true */
	bool require_tls;      /* inbound.tcp.require_tls */
	bool tcp_auth;	       /* inbound.tcp.name_and_password */
	bool tls_auth;	       /* inbound.tls.name_and_password */
	bool tls_active;       /* a TLS session (§1) */
	bool needs_ehlo;       /* after STARTTLS, before the next EHLO/HELO */
	/* Issue 14: the EHLO reply advertises SIZE at most this many bytes
	 * (limits.message_size_limit in sessions with milters); 0: SIZE is
	 * left as the backend sent it. */
	unsigned long size_limit;
};

/* Which rule made a refusal: the label of tlsfront_refusals_total (issue 13).
 * REFUSAL_LIMIT, REFUSAL_MAX_ERRORS, REFUSAL_LINE_LENGTH, REFUSAL_SYNTAX,
 * REFUSAL_HTTP and REFUSAL_BARE_NEWLINE are decided by the session machine;
 * the rest by smtp_rules_check_rule(). */
enum smtp_refusal {
	REFUSAL_REQUIRE_TLS = 0, /* §3.5 530 */
	REFUSAL_AUTH,		 /* §3.6 502/530 to AUTH */
	REFUSAL_MAX_ERRORS,	 /* §3.2 421 after the Nth error */
	REFUSAL_LINE_LENGTH,	 /* §3.2 500 line too long */
	REFUSAL_HTTP,		 /* §3.2 221 to an HTTP-looking line */
	REFUSAL_BARE_NEWLINE,	 /* §3.7 reject mode 550 */
	REFUSAL_LIMIT,		 /* §3.1 421 over a connection limit */
	REFUSAL_XCLIENT,	 /* §3.2 502 to XCLIENT/XFORWARD */
	REFUSAL_STARTTLS,	 /* §3.5 STARTTLS state rules, EHLO after STARTTLS */
	REFUSAL_SYNTAX,		 /* §3.2 500 NUL or bare CR in a command line */
	REFUSAL_BDAT,		 /* BDAT is not relayed (§3.4) */
	REFUSAL_COUNT
};

/* "require_tls", "auth", ...: the label value of each rule. */
const char *smtp_refusal_name(enum smtp_refusal rule);

/* Finds the verb at the start of a command line (without its line end).
 * *has_args is set when anything but spaces follows the verb. */
enum smtp_verb smtp_verb_parse(const char *line, size_t len, bool *has_args);

const char *smtp_verb_name(enum smtp_verb verb);

/* The refusal for a command, in the order of SPEC §3.2 (XCLIENT/XFORWARD,
 * STARTTLS state rules, require_tls, AUTH), as a reply line without CRLF; or
 * NULL when the command may go on (STARTTLS included: the caller performs it).
 * HTTP-looking lines are checked separately (smtp_rules_is_http). */
const char *smtp_rules_check(const struct smtp_rules_session *s, enum smtp_verb verb,
			     bool has_args);

/* smtp_rules_check(), also naming the rule that refused in *rule (left
 * alone when the command may go on). */
const char *smtp_rules_check_rule(const struct smtp_rules_session *s, enum smtp_verb verb,
				  bool has_args, enum smtp_refusal *rule);

/* True for a command line that looks like HTTP (SPEC §3.2, §7.2). */
bool smtp_rules_is_http(const char *line, size_t len);

/* Whether AUTH is permitted in the session's current state (SPEC §3.6). */
bool smtp_rules_auth_permitted(const struct smtp_rules_session *s);

enum ehlo_keyword_action { EHLO_KEEP = 0, EHLO_DROP };

/* Keep or drop one keyword line of the backend's EHLO reply (SPEC §3.4); kw
 * is the line's text after "250-" / "250 ". */
enum ehlo_keyword_action smtp_rules_ehlo_keyword(const struct smtp_rules_session *s, const char *kw,
						 size_t len);

/* Whether tlsfront adds STARTTLS to the EHLO reply. */
bool smtp_rules_ehlo_add_starttls(const struct smtp_rules_session *s);

#endif
