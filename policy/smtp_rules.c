/* smtp_rules.c — the command table and the decisions of SPEC §3.2-§3.6.
 *
 * One row per verb with its policy flags; smtp_rules_check() walks the rules
 * in the order §3.2 gives. Pure functions of their arguments: never any I/O,
 * never libuv, GnuTLS, sockets or clocks.
 */
#include "policy/smtp_rules.h"

#include <string.h>
#include <strings.h>

enum {
	F_BEFORE_TLS = 1 << 0,	/* allowed outside TLS under require_tls (§3.5) */
	F_BEFORE_EHLO = 1 << 1, /* allowed after STARTTLS before the new EHLO (§3.5) */
	F_SPOOF = 1 << 2,	/* XCLIENT / XFORWARD: always refused (§3.2) */
};

struct verb_row {
	const char *name;
	enum smtp_verb verb;
	unsigned flags;
};

static const struct verb_row verb_table[] = {
    {"EHLO", VERB_EHLO, F_BEFORE_TLS | F_BEFORE_EHLO},
    {"HELO", VERB_HELO, F_BEFORE_TLS | F_BEFORE_EHLO},
    {"MAIL", VERB_MAIL, 0},
    {"RCPT", VERB_RCPT, 0},
    {"DATA", VERB_DATA, 0},
    {"BDAT", VERB_BDAT, 0},
    {"RSET", VERB_RSET, F_BEFORE_TLS | F_BEFORE_EHLO},
    {"NOOP", VERB_NOOP, F_BEFORE_TLS | F_BEFORE_EHLO},
    {"HELP", VERB_HELP, F_BEFORE_TLS | F_BEFORE_EHLO},
    {"QUIT", VERB_QUIT, F_BEFORE_TLS | F_BEFORE_EHLO},
    {"VRFY", VERB_VRFY, 0},
    {"EXPN", VERB_EXPN, 0},
    {"STARTTLS", VERB_STARTTLS, F_BEFORE_TLS},
    {"AUTH", VERB_AUTH, 0},
    {"XCLIENT", VERB_XCLIENT, F_SPOOF},
    {"XFORWARD", VERB_XFORWARD, F_SPOOF},
};

#define N_VERBS (sizeof(verb_table) / sizeof(verb_table[0]))

static const struct verb_row *row_of(enum smtp_verb verb)
{
	for (size_t i = 0; i < N_VERBS; i++)
		if (verb_table[i].verb == verb)
			return &verb_table[i];
	return NULL;
}

enum smtp_verb smtp_verb_parse(const char *line, size_t len, bool *has_args)
{
	size_t n = 0;
	while (n < len && line[n] != ' ' && line[n] != '\t')
		n++;
	size_t rest = n;
	while (rest < len && (line[rest] == ' ' || line[rest] == '\t'))
		rest++;
	*has_args = rest < len;
	for (size_t i = 0; i < N_VERBS; i++)
		if (strlen(verb_table[i].name) == n &&
		    strncasecmp(verb_table[i].name, line, n) == 0)
			return verb_table[i].verb;
	return VERB_UNKNOWN;
}

const char *smtp_verb_name(enum smtp_verb verb)
{
	const struct verb_row *row = row_of(verb);
	return row ? row->name : "UNKNOWN";
}

bool smtp_rules_auth_permitted(const struct smtp_rules_session *s)
{
	/* §3.6: decided by the session. Every TLS session follows the TLS
	 * port's setting, even while that port is disabled. */
	return s->tls_active ? s->tls_auth : s->tcp_auth;
}

const char *smtp_refusal_name(enum smtp_refusal rule)
{
	static const char *const names[REFUSAL_COUNT] = {
	    [REFUSAL_REQUIRE_TLS] = "require_tls",
	    [REFUSAL_AUTH] = "auth",
	    [REFUSAL_MAX_ERRORS] = "max_errors",
	    [REFUSAL_LINE_LENGTH] = "line_length",
	    [REFUSAL_HTTP] = "http",
	    [REFUSAL_BARE_NEWLINE] = "bare_newline",
	    [REFUSAL_LIMIT] = "limit",
	    [REFUSAL_XCLIENT] = "xclient",
	    [REFUSAL_STARTTLS] = "starttls",
	    [REFUSAL_SYNTAX] = "syntax",
	    [REFUSAL_BDAT] = "bdat",
	};
	return (unsigned)rule < REFUSAL_COUNT ? names[rule] : "unknown";
}

const char *smtp_rules_check_rule(const struct smtp_rules_session *s, enum smtp_verb verb,
				  bool has_args, enum smtp_refusal *rule)
{
	const struct verb_row *row = row_of(verb);
	unsigned flags = row ? row->flags : 0;

	if (flags & F_SPOOF) {
		*rule = REFUSAL_XCLIENT;
		return "502 5.5.1 Error: command not implemented";
	}

	/* §3.5 STARTTLS state rules. */
	*rule = REFUSAL_STARTTLS;
	if (verb == VERB_STARTTLS) {
		if (s->tls_active)
			return "503 5.5.1 Error: TLS already active";
		if (!s->starttls_offered)
			return "502 5.5.1 Error: command not implemented";
		if (has_args)
			return "501 5.5.4 Syntax: STARTTLS";
		return NULL;
	}
	if (s->needs_ehlo && !(flags & F_BEFORE_EHLO))
		return "503 5.5.1 Error: send EHLO or HELO first";

	/* §3.5 require_tls. */
	*rule = REFUSAL_REQUIRE_TLS;
	if (s->require_tls && !s->tls_active && !(flags & F_BEFORE_TLS))
		return "530 5.7.0 Must issue a STARTTLS command first";

	/* §3.6 AUTH table. */
	*rule = REFUSAL_AUTH;
	if (verb == VERB_AUTH && !smtp_rules_auth_permitted(s)) {
		if (!s->tls_active && s->starttls_offered && s->tls_auth)
			return "530 5.7.0 Must issue a STARTTLS command first";
		return "502 5.5.1 Error: authentication not enabled";
	}

	/* CHUNKING is never advertised (§3.4): a BDAT chunk's octets would
	 * otherwise be read as commands here and as data by the backend. */
	*rule = REFUSAL_BDAT;
	if (verb == VERB_BDAT)
		return "502 5.5.1 Error: BDAT not supported, use DATA";
	return NULL;
}

const char *smtp_rules_check(const struct smtp_rules_session *s, enum smtp_verb verb, bool has_args)
{
	enum smtp_refusal rule;
	return smtp_rules_check_rule(s, verb, has_args, &rule);
}

static bool starts_with_ci(const char *line, size_t len, const char *prefix)
{
	size_t n = strlen(prefix);
	return len >= n && strncasecmp(line, prefix, n) == 0;
}

bool smtp_rules_is_http(const char *line, size_t len)
{
	static const char *const prefixes[] = {"GET ",	   "POST ",    "HEAD ", "PUT ",
					       "CONNECT ", "OPTIONS ", "Host:", "User-Agent:"};
	for (size_t i = 0; i < sizeof(prefixes) / sizeof(prefixes[0]); i++)
		if (starts_with_ci(line, len, prefixes[i]))
			return true;
	return false;
}

/* Length of the keyword at the start of an EHLO line: up to a space or '='
 * (the old "AUTH=LOGIN" form). */
static size_t keyword_len(const char *kw, size_t len)
{
	size_t n = 0;
	while (n < len && kw[n] != ' ' && kw[n] != '=')
		n++;
	return n;
}

static bool keyword_is(const char *kw, size_t n, const char *name)
{
	return strlen(name) == n && strncasecmp(kw, name, n) == 0;
}

enum ehlo_keyword_action smtp_rules_ehlo_keyword(const struct smtp_rules_session *s, const char *kw,
						 size_t len)
{
	/* tlsfront owns TLS and client identity, and does not track BDAT
	 * chunks: those keywords never reach the client (§3.4). */
	static const char *const always_drop[] = {"STARTTLS", "XCLIENT", "XFORWARD", "CHUNKING",
						  "BINARYMIME"};
	size_t n = keyword_len(kw, len);
	for (size_t i = 0; i < sizeof(always_drop) / sizeof(always_drop[0]); i++)
		if (keyword_is(kw, n, always_drop[i]))
			return EHLO_DROP;
	if (keyword_is(kw, n, "AUTH") && !smtp_rules_auth_permitted(s))
		return EHLO_DROP;
	return EHLO_KEEP;
}

bool smtp_rules_ehlo_add_starttls(const struct smtp_rules_session *s)
{
	return s->starttls_offered && !s->tls_active;
}
