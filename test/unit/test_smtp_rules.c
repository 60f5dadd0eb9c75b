/* test_smtp_rules.c — unit tests of policy/smtp_rules.c, the command table
 * and the decisions of SPEC §3.2-§3.6.
 *
 * Each test is named after the SPEC section it proves. The AUTH table of
 * §3.6 is checked for every combination of its inputs, against an oracle
 * written straight from the SPEC's table.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "policy/smtp_rules.h"

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* True when reply starts with "CODE X.Y.Z" (the contract part of a reply). */
static bool reply_is(const char *reply, const char *code_and_status)
{
	return reply && strncmp(reply, code_and_status, strlen(code_and_status)) == 0 &&
	       (reply[strlen(code_and_status)] == ' ' || reply[strlen(code_and_status)] == '\0');
}

static const char *check(const struct smtp_rules_session *s, const char *line)
{
	bool has_args;
	enum smtp_verb verb = smtp_verb_parse(line, strlen(line), &has_args);
	return smtp_rules_check(s, verb, has_args);
}

static enum ehlo_keyword_action kw(const struct smtp_rules_session *s, const char *line)
{
	return smtp_rules_ehlo_keyword(s, line, strlen(line));
}

/* ---- §3.2 ---------------------------------------------------------------- */

static void test_s3_2_verbs_case_insensitive(void **state)
{
	static const struct {
		const char *line;
		enum smtp_verb verb;
		bool args;
	} cases[] = {
	    {"EHLO a.example", VERB_EHLO, true},
	    {"ehlo a.example", VERB_EHLO, true},
	    {"HeLo a", VERB_HELO, true},
	    {"mail FROM:<a@b>", VERB_MAIL, true},
	    {"Rcpt TO:<a@b>", VERB_RCPT, true},
	    {"data", VERB_DATA, false},
	    {"DATA   ", VERB_DATA, false},
	    {"bdat 10 LAST", VERB_BDAT, true},
	    {"rset", VERB_RSET, false},
	    {"noop", VERB_NOOP, false},
	    {"help me", VERB_HELP, true},
	    {"quit", VERB_QUIT, false},
	    {"vrfy x", VERB_VRFY, true},
	    {"expn x", VERB_EXPN, true},
	    {"starttls", VERB_STARTTLS, false},
	    {"StartTLS now", VERB_STARTTLS, true},
	    {"auth plain", VERB_AUTH, true},
	    {"xclient ADDR=1.2.3.4", VERB_XCLIENT, true},
	    {"XForward NAME=x", VERB_XFORWARD, true},
	    {"MAILX FROM:<a@b>", VERB_UNKNOWN, true},
	    {"STARTTLSX", VERB_UNKNOWN, false},
	    {"", VERB_UNKNOWN, false},
	    {"FOO", VERB_UNKNOWN, false},
	};
	for (size_t i = 0; i < COUNT(cases); i++) {
		bool has_args = !cases[i].args;
		enum smtp_verb v = smtp_verb_parse(cases[i].line, strlen(cases[i].line), &has_args);
		if (v != cases[i].verb || has_args != cases[i].args)
			fail_msg("\"%s\": verb %d args %d, want %d %d", cases[i].line, v, has_args,
				 cases[i].verb, cases[i].args);
	}
	assert_string_equal(smtp_verb_name(VERB_STARTTLS), "STARTTLS");
	assert_string_equal(smtp_verb_name(VERB_UNKNOWN), "UNKNOWN");
}

static void test_s3_2_xclient_xforward_refused_502(void **state)
{
	/* In every session state, before anything else (§3.2 order). */
	for (unsigned bits = 0; bits < 128; bits++) {
		struct smtp_rules_session s = {
		    .tls_port = bits & 1,
		    .starttls_offered = bits & 2,
		    .require_tls = bits & 4,
		    .tcp_auth = bits & 8,
		    .tls_auth = bits & 16,
		    .tls_active = bits & 32,
		    .needs_ehlo = bits & 64,
		};
		assert_true(reply_is(check(&s, "XCLIENT ADDR=1.2.3.4"), "502 5.5.1"));
		assert_true(reply_is(check(&s, "xforward NAME=spoof"), "502 5.5.1"));
		assert_true(reply_is(check(&s, "XCLIENT"), "502 5.5.1"));
	}
}

static void test_s3_2_unknown_commands_pass(void **state)
{
	struct smtp_rules_session s = {.starttls_offered = true};
	assert_null(check(&s, "FOO bar"));
	assert_null(check(&s, "ETRN example.com"));
	assert_null(check(&s, "MAIL FROM:<a@b>"));
	assert_null(check(&s, "EHLO x"));
}

static void test_s3_2_http_lines(void **state)
{
	static const char *const http[] = {
	    "GET / HTTP/1.1",
	    "POST /x HTTP/1.1",
	    "HEAD / HTTP/1.0",
	    "PUT /a HTTP/1.1",
	    "CONNECT mx:25 HTTP/1.1",
	    "OPTIONS * HTTP/1.1",
	    "Host: mx.example.com",
	    "User-Agent: curl/8",
	    "get / HTTP/1.1",
	    "post /",
	    "host: x",
	    "HOST:x",
	    "user-agent: y",
	    "USER-AGENT:y",
	    "cOnNeCt x",
	};
	static const char *const smtp[] = {
	    "GETX / HTTP/1.1",	 "GET",	 "POSTMASTER", "HELP GET / HTTP",
	    "Hostname: x",	 "Host", "User-Agent", "EHLO host:",
	    "MAIL FROM:<get@x>", "",	 "PUTS x",
	};
	for (size_t i = 0; i < COUNT(http); i++)
		if (!smtp_rules_is_http(http[i], strlen(http[i])))
			fail_msg("not taken as HTTP: \"%s\"", http[i]);
	for (size_t i = 0; i < COUNT(smtp); i++)
		if (smtp_rules_is_http(smtp[i], strlen(smtp[i])))
			fail_msg("taken as HTTP: \"%s\"", smtp[i]);
}

/* ---- §3.4 ---------------------------------------------------------------- */

static void test_s3_4_ehlo_keywords(void **state)
{
	struct smtp_rules_session s = {.starttls_offered = true, .tcp_auth = true};
	static const char *const drop[] = {"STARTTLS",		"starttls",  "StartTls ",
					   "XCLIENT NAME ADDR", "xclient",   "XFORWARD NAME ADDR",
					   "xforward",		"CHUNKING",  "chunking",
					   "BINARYMIME",	"binarymime"};
	static const char *const keep[] = {"SIZE 10240000",
					   "size",
					   "PIPELINING",
					   "pipelining",
					   "8BITMIME",
					   "SMTPUTF8",
					   "DSN",
					   "ENHANCEDSTATUSCODES",
					   "ETRN",
					   "AUTH PLAIN LOGIN",
					   "auth=login",
					   "STARTTLSX",
					   "XCLIENTS",
					   "VRFY",
					   ""};
	for (size_t i = 0; i < COUNT(drop); i++)
		if (kw(&s, drop[i]) != EHLO_DROP)
			fail_msg("kept: \"%s\"", drop[i]);
	for (size_t i = 0; i < COUNT(keep); i++)
		if (kw(&s, keep[i]) != EHLO_KEEP)
			fail_msg("dropped: \"%s\"", keep[i]);
}

static void test_s3_4_ehlo_add_starttls(void **state)
{
	for (unsigned bits = 0; bits < 4; bits++) {
		struct smtp_rules_session s = {.starttls_offered = bits & 1,
					       .tls_active = bits & 2};
		assert_int_equal(smtp_rules_ehlo_add_starttls(&s),
				 s.starttls_offered && !s.tls_active);
	}
}

/* ---- §3.5 ---------------------------------------------------------------- */

static void test_s3_5_starttls_rules(void **state)
{
	struct smtp_rules_session s = {.starttls_offered = true};
	assert_null(check(&s, "STARTTLS"));
	assert_null(check(&s, "starttls"));
	assert_true(reply_is(check(&s, "STARTTLS now"), "501 5.5.4"));
	s.tls_active = true;
	assert_true(reply_is(check(&s, "STARTTLS"), "503 5.5.1"));
	s.needs_ehlo = true;
	assert_true(reply_is(check(&s, "STARTTLS"), "503 5.5.1"));

	struct smtp_rules_session off = {.starttls_offered = false};
	assert_true(reply_is(check(&off, "STARTTLS"), "502 5.5.1"));
	struct smtp_rules_session tls_port = {.tls_port = true, .tls_active = true};
	assert_true(reply_is(check(&tls_port, "STARTTLS"), "503 5.5.1"));
	/* require_tls does not refuse STARTTLS itself. */
	struct smtp_rules_session req = {.starttls_offered = true, .require_tls = true};
	assert_null(check(&req, "STARTTLS"));
}

static const char *const all_lines[] = {
    "EHLO x", "HELO x", "MAIL FROM:<a@b>", "RCPT TO:<a@b>", "DATA",	  "RSET", "NOOP",
    "HELP",   "QUIT",	"VRFY x",	   "EXPN x",	    "AUTH PLAIN", "FOO",  "ETRN x",
};

static bool line_in(const char *line, const char *const *set, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(line, set[i]) == 0)
			return true;
	return false;
}

static void test_s3_5_require_tls_table(void **state)
{
	static const char *const pass[] = {"EHLO x", "HELO x", "RSET", "NOOP", "HELP", "QUIT"};
	/* Outside a TLS session: only the listed commands (and STARTTLS). */
	struct smtp_rules_session s = {
	    .starttls_offered = true, .require_tls = true, .tcp_auth = true, .tls_auth = true};
	for (size_t i = 0; i < COUNT(all_lines); i++) {
		const char *r = check(&s, all_lines[i]);
		if (line_in(all_lines[i], pass, COUNT(pass)))
			assert_null(r);
		else if (!reply_is(r, "530 5.7.0"))
			fail_msg("\"%s\" -> %s", all_lines[i], r ? r : "(pass)");
	}
	/* In a TLS session everything passes. */
	s.tls_active = true;
	for (size_t i = 0; i < COUNT(all_lines); i++)
		if (check(&s, all_lines[i]))
			fail_msg("\"%s\" refused in TLS", all_lines[i]);
}

static void test_s3_5_ehlo_required_after_starttls(void **state)
{
	static const char *const pass[] = {"EHLO x", "HELO x", "RSET", "NOOP", "HELP", "QUIT"};
	struct smtp_rules_session s = {
	    .starttls_offered = true, .tls_active = true, .needs_ehlo = true, .tls_auth = true};
	for (size_t i = 0; i < COUNT(all_lines); i++) {
		const char *r = check(&s, all_lines[i]);
		if (line_in(all_lines[i], pass, COUNT(pass)))
			assert_null(r);
		else if (!reply_is(r, "503 5.5.1"))
			fail_msg("\"%s\" -> %s", all_lines[i], r ? r : "(pass)");
	}
}

/* ---- §3.6 ---------------------------------------------------------------- */

/* The SPEC's table, written out: NULL when permitted, else the refusal. */
static const char *auth_oracle(const struct smtp_rules_session *s)
{
	if (s->tls_active)
		return s->tls_auth ? NULL : "502 5.5.1";
	if (s->tcp_auth)
		return NULL;
	/* Would AUTH be permitted after STARTTLS? */
	if (s->starttls_offered && s->tls_auth)
		return "530 5.7.0";
	return "502 5.5.1";
}

static void test_s3_6_auth_table(void **state)
{
	unsigned permitted = 0;
	for (unsigned bits = 0; bits < 32; bits++) {
		struct smtp_rules_session s = {
		    .tcp_auth = bits & 1,
		    .tls_auth = bits & 2,
		    .starttls_offered = bits & 4,
		    .tls_active = bits & 8,
		    .tls_port = bits & 16,
		};
		if (s.tls_port && !s.tls_active)
			continue; /* the TLS port is a TLS session from the start */
		if (s.tls_port && s.starttls_offered)
			continue; /* STARTTLS is never offered on the TLS port */
		const char *want = auth_oracle(&s);
		const char *got = check(&s, "AUTH PLAIN dGVzdAB0ZXN0AHRlc3Q=");
		const char *got2 = check(&s, "auth login");
		char what[160];
		snprintf(what, sizeof(what), "tcp_auth=%d tls_auth=%d starttls=%d tls=%d port=%d",
			 s.tcp_auth, s.tls_auth, s.starttls_offered, s.tls_active, s.tls_port);
		if (want == NULL) {
			if (got || got2)
				fail_msg("%s: refused (%s), want permitted", what,
					 got ? got : got2);
		} else if (!reply_is(got, want) || !reply_is(got2, want)) {
			fail_msg("%s: got %s, want %s", what, got ? got : "(permitted)", want);
		}
		/* AUTH advertised in EHLO exactly when permitted. */
		bool p = smtp_rules_auth_permitted(&s);
		assert_int_equal(p, want == NULL);
		enum ehlo_keyword_action a = p ? EHLO_KEEP : EHLO_DROP;
		if (kw(&s, "AUTH PLAIN LOGIN") != a || kw(&s, "AUTH=PLAIN LOGIN") != a ||
		    kw(&s, "auth cram-md5") != a || kw(&s, "AUTH") != a)
			fail_msg("%s: AUTH keyword not %s", what, p ? "kept" : "dropped");
		permitted += p;
	}
	assert_true(permitted > 0);
}

/* The §3.6 table transcribed cell by cell, as literal expected values, with
 * no rule computed here (the oracle above mirrors the code's rule, so a
 * misreading of the SPEC would pass both). SPEC.md §3.6:
 *
 * | session | governed by | when not permitted |
 * | TLS session (STARTTLS on the TCP port, or the TLS port) |
 *   `inbound.tls.name_and_password` — even when the TLS port is disabled;
 *   the TCP port's setting is ignored | AUTH not advertised; `AUTH` gets
 *   `502 5.5.1` |
 * | not a TLS session | `inbound.tcp.name_and_password` | AUTH not
 *   advertised; `AUTH` gets `530 5.7.0` when STARTTLS is offered and AUTH
 *   would be permitted after it, else `502 5.5.1` |
 *
 * "STARTTLS is offered" is §3.5's: the TCP port with starttls = true, outside
 * a TLS session. */
enum auth_session_kind {
	PLAIN_STARTTLS_OFFERED, /* TCP port, starttls = true, before STARTTLS */
	PLAIN_NO_STARTTLS,	/* TCP port, starttls = false */
	AFTER_STARTTLS,		/* TCP port, after STARTTLS and the new EHLO */
	TLS_PORT,		/* the TLS port (implicit TLS) */
};

static void test_s3_6_auth_table_literal(void **state)
{
	static const struct {
		enum auth_session_kind kind;
		bool tcp_name_and_password;
		bool tls_name_and_password;
		bool advertised;
		const char *refusal; /* NULL: permitted, goes to the backend */
	} cells[] = {
	    /* not a TLS session, STARTTLS offered */
	    {PLAIN_STARTTLS_OFFERED, false, false, false, "502 5.5.1"},
	    {PLAIN_STARTTLS_OFFERED, false, true, false, "530 5.7.0"},
	    {PLAIN_STARTTLS_OFFERED, true, false, true, NULL},
	    {PLAIN_STARTTLS_OFFERED, true, true, true, NULL},
	    /* not a TLS session, STARTTLS not offered */
	    {PLAIN_NO_STARTTLS, false, false, false, "502 5.5.1"},
	    {PLAIN_NO_STARTTLS, false, true, false, "502 5.5.1"},
	    {PLAIN_NO_STARTTLS, true, false, true, NULL},
	    {PLAIN_NO_STARTTLS, true, true, true, NULL},
	    /* TLS session by STARTTLS: tcp's setting ignored */
	    {AFTER_STARTTLS, false, false, false, "502 5.5.1"},
	    {AFTER_STARTTLS, false, true, true, NULL},
	    {AFTER_STARTTLS, true, false, false, "502 5.5.1"},
	    {AFTER_STARTTLS, true, true, true, NULL},
	    /* TLS session on the TLS port: tcp's setting ignored */
	    {TLS_PORT, false, false, false, "502 5.5.1"},
	    {TLS_PORT, false, true, true, NULL},
	    {TLS_PORT, true, false, false, "502 5.5.1"},
	    {TLS_PORT, true, true, true, NULL},
	};
	static const char *const kind_name[] = {
	    "plaintext+STARTTLS offered", "plaintext, no STARTTLS", "after STARTTLS", "TLS port"};
	static const char *const auth_lines[] = {"AUTH PLAIN dGVzdAB0ZXN0AHRlc3Q=", "auth login",
						 "AUTH CRAM-MD5", "AUTH"};
	static const char *const auth_keywords[] = {"AUTH PLAIN LOGIN", "AUTH=PLAIN LOGIN",
						    "auth cram-md5", "AUTH"};
	for (size_t i = 0; i < COUNT(cells); i++) {
		struct smtp_rules_session s = {
		    .tcp_auth = cells[i].tcp_name_and_password,
		    .tls_auth = cells[i].tls_name_and_password,
		};
		switch (cells[i].kind) {
		case PLAIN_STARTTLS_OFFERED:
			s.starttls_offered = true;
			break;
		case PLAIN_NO_STARTTLS:
			break;
		case AFTER_STARTTLS:
			s.starttls_offered = true;
			s.tls_active = true;
			break;
		case TLS_PORT:
			s.tls_port = true;
			s.tls_active = true;
			break;
		}
		char what[128];
		snprintf(what, sizeof(what),
			 "%s, tcp.name_and_password=%d tls.name_and_password=%d",
			 kind_name[cells[i].kind], cells[i].tcp_name_and_password,
			 cells[i].tls_name_and_password);

		if (smtp_rules_auth_permitted(&s) != cells[i].advertised)
			fail_msg("%s: auth_permitted=%d, SPEC says %d", what,
				 smtp_rules_auth_permitted(&s), cells[i].advertised);
		for (size_t k = 0; k < COUNT(auth_keywords); k++) {
			enum ehlo_keyword_action a = kw(&s, auth_keywords[k]);
			if (a != (cells[i].advertised ? EHLO_KEEP : EHLO_DROP))
				fail_msg("%s: EHLO keyword \"%s\" %s, SPEC says %s", what,
					 auth_keywords[k], a == EHLO_KEEP ? "kept" : "dropped",
					 cells[i].advertised ? "advertised" : "not advertised");
		}
		for (size_t k = 0; k < COUNT(auth_lines); k++) {
			const char *got = check(&s, auth_lines[k]);
			if (cells[i].refusal == NULL) {
				if (got)
					fail_msg("%s: \"%s\" refused with %s, SPEC says permitted",
						 what, auth_lines[k], got);
			} else if (!reply_is(got, cells[i].refusal)) {
				fail_msg("%s: \"%s\" got %s, SPEC says %s", what, auth_lines[k],
					 got ? got : "(permitted)", cells[i].refusal);
			}
		}
	}
}

static void test_s3_6_auth_refusals_are_counted_replies(void **state)
{
	/* require_tls comes before the AUTH table (§3.2 order). */
	struct smtp_rules_session s = {
	    .starttls_offered = true, .require_tls = true, .tcp_auth = true};
	assert_true(reply_is(check(&s, "AUTH PLAIN"), "530 5.7.0"));
	/* The STARTTLS state rule comes before the AUTH table. */
	struct smtp_rules_session t = {
	    .starttls_offered = true, .tls_active = true, .needs_ehlo = true, .tls_auth = true};
	assert_true(reply_is(check(&t, "AUTH PLAIN"), "503 5.5.1"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_s3_2_verbs_case_insensitive),
	    cmocka_unit_test(test_s3_2_xclient_xforward_refused_502),
	    cmocka_unit_test(test_s3_2_unknown_commands_pass),
	    cmocka_unit_test(test_s3_2_http_lines),
	    cmocka_unit_test(test_s3_4_ehlo_keywords),
	    cmocka_unit_test(test_s3_4_ehlo_add_starttls),
	    cmocka_unit_test(test_s3_5_starttls_rules),
	    cmocka_unit_test(test_s3_5_require_tls_table),
	    cmocka_unit_test(test_s3_5_ehlo_required_after_starttls),
	    cmocka_unit_test(test_s3_6_auth_table),
	    cmocka_unit_test(test_s3_6_auth_table_literal),
	    cmocka_unit_test(test_s3_6_auth_refusals_are_counted_replies),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
