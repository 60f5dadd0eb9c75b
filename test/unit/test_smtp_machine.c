/* test_smtp_machine.c — unit tests of the sans-I/O SMTP session machine
 * (proxy/smtp/), each named after the SPEC section it proves.
 *
 * A test is a script: a list of steps (client bytes, backend bytes, TLS
 * established, backend closed, timeout, ...). play() runs the machine over it
 * and collects everything sent to the client and to the backend, step by
 * step. It then runs the script again with each client step and each backend
 * step split at every byte boundary (the first k bytes, then the rest), and
 * once more with every step fed one byte at a time, and asserts that every
 * run gives identical outputs. On every run it asserts the invariants that
 * hold for any conversation: nothing at all comes out after close, and
 * neither side ever receives a bare CR or a bare LF.
 *
 * Expected client output is written as lines; a line ending in '*' matches
 * any line with that prefix, as only the codes are part of the contract.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/smtp/ehlo_rewrite.h"
#include "proxy/smtp/smtp_machine.h"

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* ---- the driver ---------------------------------------------------------- */

enum step_kind {
	ST_END = 0,
	ST_CLIENT,
	ST_BACKEND,
	ST_TLS,
	ST_BACKEND_CLOSED,
	ST_TIMEOUT,
	ST_SHUTDOWN,
	ST_UNAVAILABLE,
	ST_LIMIT,
};

struct step {
	enum step_kind kind;
	const char *p;
	size_t n;
};

/* clang-format off */
#define C(s)		{ST_CLIENT, (s), sizeof(s) - 1}
#define B(s)		{ST_BACKEND, (s), sizeof(s) - 1}
#define CN(p, n)	{ST_CLIENT, (p), (n)}
#define BN(p, n)	{ST_BACKEND, (p), (n)}
#define TLS		{ST_TLS, NULL, 0}
#define BACKEND_CLOSED	{ST_BACKEND_CLOSED, NULL, 0}
#define TIMEOUT		{ST_TIMEOUT, NULL, 0}
#define SHUTDOWN	{ST_SHUTDOWN, NULL, 0}
#define UNAVAILABLE	{ST_UNAVAILABLE, NULL, 0}
#define END		{ST_END, NULL, 0}
/* clang-format on */

#define MAX_STEPS 64

enum { F_START_TLS = 1, F_DROP = 2, F_CLOSE = 4, F_PROGRESS = 8 };

struct run {
	struct buf client, backend;
	size_t client_at[MAX_STEPS + 1]; /* stream lengths before step i */
	size_t backend_at[MAX_STEPS + 1];
	unsigned flags[MAX_STEPS]; /* F_* seen during step i */
	size_t discarded[MAX_STEPS];
	size_t nsteps;
	int close_step; /* the step that closed, or -1 */
	enum smtp_close_reason reason;
	bool authenticated;
	unsigned errors, messages;
	enum smtp_phase phase;
	bool has_user;			      /* smtp_machine_user() was not NULL */
	char user[SASL_USER_SIZE];	      /* its value */
	const char *note;		      /* the last note of the run, or NULL */
	bool config_error;		      /* a note was a configuration error */
	char note_reply[SMTP_NOTE_REPLY_MAX]; /* the note_reply of that one */
};

/* Strings no run may show anywhere but in the bytes to the backend (a
 * password, an AUTH payload): not in the client output, not in the machine
 * struct, not in its held input. NULL-terminated; NULL when none. */
static const char *const *run_secrets;

static void assert_no_secret(const char *where, const void *p, size_t n)
{
	for (size_t i = 0; run_secrets && run_secrets[i]; i++)
		if (p && n && memmem(p, n, run_secrets[i], strlen(run_secrets[i])))
			fail_msg("secret \"%s\" found in %s", run_secrets[i], where);
}

static void run_free(struct run *r)
{
	buf_free(&r->client);
	buf_free(&r->backend);
}

/* Every LF preceded by CR and every CR followed by LF. */
static bool canonical(const char *p, size_t n, size_t *at)
{
	for (size_t i = 0; i < n; i++) {
		if ((p[i] == '\n' && (i == 0 || p[i - 1] != '\r')) ||
		    (p[i] == '\r' && (i + 1 == n || p[i + 1] != '\n'))) {
			*at = i;
			return false;
		}
	}
	return true;
}

/* Collects the actions of the last call into r for step i. */
static void collect(struct smtp_machine *m, struct run *r, size_t i, bool was_closed)
{
	if (was_closed) {
		if (m->act.to_client.len || m->act.to_backend.len || m->act.start_tls ||
		    m->act.drop_backend)
			fail_msg("step %zu: output after close (client %zu, backend %zu bytes)", i,
				 m->act.to_client.len, m->act.to_backend.len);
	}
	assert_true(buf_append(&r->client, m->act.to_client.data, m->act.to_client.len));
	assert_true(buf_append(&r->backend, m->act.to_backend.data, m->act.to_backend.len));
	m->act.to_client.len = 0;
	m->act.to_backend.len = 0;
	if (m->act.start_tls)
		r->flags[i] |= F_START_TLS;
	if (m->act.drop_backend)
		r->flags[i] |= F_DROP;
	if (m->act.progress)
		r->flags[i] |= F_PROGRESS;
	if (m->act.close) {
		r->flags[i] |= F_CLOSE;
		if (r->close_step < 0) {
			r->close_step = (int)i;
			r->reason = m->act.reason;
		}
	}
	r->discarded[i] += m->act.discarded;
	if (m->act.note)
		r->note = m->act.note;
	if (m->act.config_error) {
		assert_non_null(m->act.note);
		r->config_error = true;
		memcpy(r->note_reply, m->act.note_reply, sizeof(r->note_reply));
	}
	smtp_machine_clear_actions(m);
	assert_null(m->act.note);
	assert_false(m->act.config_error);
	assert_int_equal(m->act.note_reply[0], '\0');
}

/* Feeds bytes in pieces: at split (when split <= n) or every piece bytes. */
static void feed(struct smtp_machine *m, struct run *r, size_t i, const struct step *s,
		 size_t split, size_t piece)
{
	size_t cuts[3] = {0, s->n, s->n};
	size_t ncuts = 2;
	if (split <= s->n) {
		cuts[1] = split;
		ncuts = 3;
	}
	if (piece) {
		for (size_t off = 0; off < s->n || off == 0; off += piece) {
			size_t len = s->n - off < piece ? s->n - off : piece;
			bool closed = m->act.close;
			if (s->kind == ST_CLIENT)
				smtp_machine_feed_client(m, s->p + off, len);
			else
				smtp_machine_feed_backend(m, s->p + off, len);
			collect(m, r, i, closed);
			if (s->n == 0)
				break;
		}
		return;
	}
	for (size_t c = 0; c + 1 < ncuts; c++) {
		bool closed = m->act.close;
		if (s->kind == ST_CLIENT)
			smtp_machine_feed_client(m, s->p + cuts[c], cuts[c + 1] - cuts[c]);
		else
			smtp_machine_feed_backend(m, s->p + cuts[c], cuts[c + 1] - cuts[c]);
		collect(m, r, i, closed);
	}
}

/* Runs one script; step split_step (if any) is split at split_k; piece > 0
 * feeds every step in pieces of that size. */
static void run_script(const struct smtp_machine_config *cfg, const struct step *steps,
		       size_t split_step, size_t split_k, size_t piece, struct run *r)
{
	struct smtp_machine m;
	memset(r, 0, sizeof(*r));
	r->close_step = -1;
	smtp_machine_init(&m, cfg);
	size_t i;
	for (i = 0; steps[i].kind != ST_END; i++) {
		assert_true(i < MAX_STEPS);
		const struct step *s = &steps[i];
		r->client_at[i] = r->client.len;
		r->backend_at[i] = r->backend.len;
		bool closed = m.act.close;
		switch (s->kind) {
		case ST_CLIENT:
		case ST_BACKEND:
			feed(&m, r, i, s, i == split_step ? split_k : (size_t)-1, piece);
			continue;
		case ST_TLS:
			smtp_machine_tls_established(&m);
			break;
		case ST_BACKEND_CLOSED:
			smtp_machine_backend_closed(&m);
			break;
		case ST_TIMEOUT:
			smtp_machine_timeout(&m);
			break;
		case ST_SHUTDOWN:
			smtp_machine_shutdown(&m);
			break;
		case ST_UNAVAILABLE:
			smtp_machine_backend_unavailable(&m);
			break;
		case ST_LIMIT:
			smtp_machine_limit(&m);
			break;
		case ST_END:
			break;
		}
		collect(&m, r, i, closed);
	}
	r->nsteps = i;
	r->client_at[i] = r->client.len;
	r->backend_at[i] = r->backend.len;
	r->authenticated = m.authenticated;
	r->errors = m.errors;
	r->messages = m.messages;
	r->phase = m.phase;
	const char *user = smtp_machine_user(&m);
	r->has_user = user != NULL;
	snprintf(r->user, sizeof(r->user), "%s", user ? user : "");
	assert_no_secret("the client output", r->client.data, r->client.len);
	assert_no_secret("the machine struct", &m, sizeof(m));
	assert_no_secret("the held client input", m.in.data, m.in.len);
	smtp_machine_free(&m);

	size_t at;
	if (!canonical(r->client.data, r->client.len, &at))
		fail_msg("bare CR or LF to the client at %zu", at);
	if (!canonical(r->backend.data, r->backend.len, &at))
		fail_msg("bare CR or LF to the backend at %zu", at);
}

static void print_escaped(const char *what, const char *p, size_t n)
{
	fprintf(stderr, "%s (%zu): \"", what, n);
	for (size_t i = 0; i < n && i < 2000; i++) {
		unsigned char c = (unsigned char)p[i];
		if (c == '\r')
			fputs("\\r", stderr);
		else if (c == '\n')
			fputs("\\n\"\n    \"", stderr);
		else if (c < 32 || c > 126)
			fprintf(stderr, "\\x%02x", c);
		else
			fputc(c, stderr);
	}
	fputs("\"\n", stderr);
}

static bool same_buf(const struct buf *a, const struct buf *b)
{
	return a->len == b->len && (a->len == 0 || memcmp(a->data, b->data, a->len) == 0);
}

static void assert_same_run(const struct run *a, const struct run *b, const char *how, size_t step,
			    size_t k)
{
	bool same = same_buf(&a->client, &b->client) && same_buf(&a->backend, &b->backend) &&
		    a->nsteps == b->nsteps && a->close_step == b->close_step &&
		    a->reason == b->reason && a->authenticated == b->authenticated &&
		    a->errors == b->errors && a->phase == b->phase && a->has_user == b->has_user &&
		    strcmp(a->user, b->user) == 0 && (a->note == NULL) == (b->note == NULL) &&
		    (!a->note || strcmp(a->note, b->note) == 0) &&
		    a->config_error == b->config_error && strcmp(a->note_reply, b->note_reply) == 0;
	for (size_t i = 0; same && i <= a->nsteps; i++)
		same = a->client_at[i] == b->client_at[i] && a->backend_at[i] == b->backend_at[i];
	for (size_t i = 0; same && i < a->nsteps; i++)
		same = a->flags[i] == b->flags[i] && a->discarded[i] == b->discarded[i];
	if (same)
		return;
	fprintf(stderr, "run %s (step %zu, k %zu) differs from the whole run\n", how, step, k);
	print_escaped("whole client", a->client.data, a->client.len);
	print_escaped("split client", b->client.data, b->client.len);
	print_escaped("whole backend", a->backend.data, a->backend.len);
	print_escaped("split backend", b->backend.data, b->backend.len);
	for (size_t i = 0; i < a->nsteps; i++)
		fprintf(stderr,
			"step %zu: client_at %zu/%zu backend_at %zu/%zu flags %x/%x disc %zu/%zu\n",
			i, a->client_at[i + 1], b->client_at[i + 1], a->backend_at[i + 1],
			b->backend_at[i + 1], a->flags[i], b->flags[i], a->discarded[i],
			b->discarded[i]);
	fail_msg("split run differs");
}

/* Runs the script whole, then split at every byte boundary of every client
 * and backend step, then byte by byte; all runs must agree. r gets the whole
 * run (run_free it). */
static void play(const struct smtp_machine_config *cfg, const struct step *steps, struct run *r)
{
	run_script(cfg, steps, (size_t)-1, 0, 0, r);
	struct run s;
	for (size_t i = 0; i < r->nsteps; i++) {
		if (steps[i].kind != ST_CLIENT && steps[i].kind != ST_BACKEND)
			continue;
		for (size_t k = 0; k <= steps[i].n; k++) {
			run_script(cfg, steps, i, k, 0, &s);
			assert_same_run(r, &s, "split", i, k);
			run_free(&s);
		}
	}
	run_script(cfg, steps, (size_t)-1, 0, 1, &s);
	assert_same_run(r, &s, "byte by byte", 0, 1);
	run_free(&s);
}

/* Matches text against a pattern of CRLF-ended lines; a pattern line ending
 * in '*' matches any line with that prefix. */
static bool lines_match(const char *text, size_t len, const char *pattern)
{
	size_t t = 0;
	const char *p = pattern;
	while (*p) {
		const char *pe = strstr(p, "\r\n");
		if (!pe)
			return false; /* every pattern line ends in CRLF */
		size_t plen = (size_t)(pe - p);
		const char *te = t < len ? memmem(text + t, len - t, "\r\n", 2) : NULL;
		if (!te)
			return false;
		size_t tlen = (size_t)(te - (text + t));
		if (plen && p[plen - 1] == '*') {
			if (tlen < plen - 1 || memcmp(text + t, p, plen - 1) != 0)
				return false;
		} else if (tlen != plen || memcmp(text + t, p, plen) != 0) {
			return false;
		}
		t += tlen + 2;
		p = pe + 2;
	}
	return t == len;
}

#define expect_client_step(r, i, pattern)                                                          \
	expect_part("client", &(r)->client, (r)->client_at, i, pattern, true)
#define expect_backend_step(r, i, text)                                                            \
	expect_part("backend", &(r)->backend, (r)->backend_at, i, text, false)

static void expect_part(const char *side, const struct buf *b, const size_t *at, size_t i,
			const char *expected, bool pattern)
{
	const char *p = b->data + at[i];
	size_t n = at[i + 1] - at[i];
	bool ok = pattern ? lines_match(p, n, expected)
			  : (n == strlen(expected) && (n == 0 || memcmp(p, expected, n) == 0));
	if (ok)
		return;
	fprintf(stderr, "step %zu, %s:\n", i, side);
	print_escaped("  got", p, n);
	print_escaped("  want", expected, strlen(expected));
	fail_msg("unexpected %s output at step %zu", side, i);
}

static void expect_client(const struct run *r, const char *pattern)
{
	if (lines_match(r->client.data, r->client.len, pattern))
		return;
	print_escaped("client got", r->client.data, r->client.len);
	print_escaped("client want", pattern, strlen(pattern));
	fail_msg("unexpected client output");
}

static void expect_backend(const struct run *r, const char *text)
{
	if (r->backend.len == strlen(text) &&
	    (r->backend.len == 0 || memcmp(r->backend.data, text, r->backend.len) == 0))
		return;
	print_escaped("backend got", r->backend.data, r->backend.len);
	print_escaped("backend want", text, strlen(text));
	fail_msg("unexpected backend output");
}

static void expect_close(const struct run *r, int step, enum smtp_close_reason reason)
{
	if (r->close_step != step || (step >= 0 && r->reason != reason))
		fail_msg("closed at step %d reason %s, want step %d reason %s", r->close_step,
			 smtp_close_reason_name(r->reason), step, smtp_close_reason_name(reason));
}

/* The run ended on a configuration-error note naming what, quoting reply. */
static void expect_config_error(const struct run *r, const char *what, const char *reply)
{
	if (!r->config_error || !r->note || !strstr(r->note, what) ||
	    !strstr(r->note, "backend.client_info = xclient") || strcmp(r->note_reply, reply) != 0)
		fail_msg("want a configuration error \"%s\" quoting \"%s\"; got %s \"%s\" "
			 "quoting \"%s\"",
			 what, reply, r->config_error ? "error" : "note",
			 r->note ? r->note : "(none)", r->note_reply);
}

static struct smtp_machine_config cfg_tcp(void)
{
	return (struct smtp_machine_config){
	    .starttls = true,
	    .tcp_auth = false,
	    .tls_auth = true,
	    .line_length = 2048,
	    .max_errors = 10,
	    .server_name = "mx.test",
	};
}

#define GREET	   "220 backend.test ESMTP\r\n"
#define EHLO_REPLY "250-backend.test\r\n250-PIPELINING\r\n250 SIZE 1000\r\n"
#define ENVELOPE   "MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n"

/* ---- §3.1 ---------------------------------------------------------------- */

static void test_s3_1_greeting_220_relayed(void **state)
{
	struct smtp_machine_config cfg = cfg_tcp();
	const struct step s[] = {B("220 backend.test ESMTP Postfix\r\n"), C("QUIT\r\n"),
				 B("221 2.0.0 Bye\r\n"), END};
	struct run r;
	play(&cfg, s, &r);
	expect_client_step(&r, 0, "220 backend.test ESMTP Postfix\r\n");
	expect_client_step(&r, 1, "");
	expect_client_step(&r, 2, "221 2.0.0 Bye\r\n");
	expect_backend(&r, "QUIT\r\n");
	expect_close(&r, 2, CLOSE_QUIT);
	run_free(&r);
}

static void test_s3_1_greeting_554_relayed(void **state)
{
	struct smtp_machine_config cfg = cfg_tcp();
	cfg.max_errors = 1;
	const struct step s[] = {B("554-backend.test no service\r\n554 5.3.2 go away\r\n"),
				 C("QUIT\r\n"), B("221 2.0.0 Bye\r\n"), END};
	struct run r;
	play(&cfg, s, &r);
	/* Unchanged, and 554 is not one of the counted 500-504. */
	expect_client(&r, "554-backend.test no service\r\n554 5.3.2 go away\r\n221 2.0.0 Bye\r\n");
	expect_backend(&r, "QUIT\r\n");
	expect_close(&r, 2, CLOSE_QUIT);
	run_free(&r);
}

static void test_s3_1_commands_before_greeting_held(void **state)
{
	struct smtp_machine_config cfg = cfg_tcp();
	const struct step s[] = {C("NOOP\r\n"), B(GREET), B("250 2.0.0 Ok\r\n"), END};
	struct run r;
	play(&cfg, s, &r);
	expect_backend_step(&r, 0, "");
	expect_backend_step(&r, 1, "NOOP\r\n");
	expect_client(&r, GREET "250 2.0.0 Ok\r\n");
	run_free(&r);
}

static void test_s3_1_backend_unavailable_421_4_3_2(void **state)
{
	struct smtp_machine_config cfg = cfg_tcp();
	const struct step s[] = {C("EHLO x\r\n"), UNAVAILABLE, B(GREET), END};
	struct run r;
	play(&cfg, s, &r);
	expect_client(&r, "421 4.3.2 *\r\n");
	expect_backend(&r, "");
	expect_close(&r, 1, CLOSE_ERROR);
	run_free(&r);
}

static void test_s3_1_limit_421_4_7_0(void **state)
{
	struct smtp_machine_config cfg = cfg_tcp();
	const struct step s[] = {C("EHLO x\r\n"), {ST_LIMIT, NULL, 0}, B(GREET), END};
	struct run r;
	play(&cfg, s, &r);
	expect_client(&r, "421 4.7.0 *\r\n");
	expect_backend(&r, "");
	expect_close(&r, 1, CLOSE_LIMIT);
	run_free(&r);
}

/* ---- §3.3 ---------------------------------------------------------------- */

static struct smtp_machine_config cfg_xclient(void)
{
	struct smtp_machine_config cfg = cfg_tcp();
	cfg.xclient = true;
	strcpy(cfg.xclient_addr, "IPV6:2001:db8::7");
	cfg.xclient_port = 40123;
	return cfg;
}

static void test_s3_3_xclient_handshake(void **state)
{
	struct smtp_machine_config cfg = cfg_xclient();
	const struct step s[] = {
	    B("220 backend.test ESMTP\r\n"),
	    C("EHLO client.test\r\n"),
	    B("250-backend.test\r\n250-XCLIENT ADDR PORT NAME\r\n250 SIZE 1\r\n"),
	    B("220 backend.test ESMTP again\r\n"),
	    B(EHLO_REPLY),
	    END};
	struct run r;
	play(&cfg, s, &r);
	/* The first greeting and tlsfront's own EHLO reply are not the
	 * client's; the greeting after XCLIENT is. The client's EHLO waits. */
	expect_backend_step(&r, 0, "EHLO mx.test\r\n");
	expect_backend_step(&r, 1, "");
	expect_backend_step(&r, 2,
			    "XCLIENT ADDR=IPV6:2001:db8::7 PORT=40123 NAME=[UNAVAILABLE]\r\n");
	expect_client_step(&r, 2, "");
	expect_client_step(&r, 3, "220 backend.test ESMTP again\r\n");
	expect_backend_step(&r, 3, "EHLO client.test\r\n");
	expect_client_step(&r, 4,
			   "250-backend.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n"
			   "250 STARTTLS\r\n");
	run_free(&r);
}

static void test_s3_3_xclient_not_offered_421_4_3_5(void **state)
{
	struct smtp_machine_config cfg = cfg_xclient();
	const struct step s[] = {B(GREET), B("250-backend.test\r\n250-XCLIENTX\r\n250 SIZE 1\r\n"),
				 C("EHLO c\r\n"), END};
	struct run r;
	play(&cfg, s, &r);
	expect_client(&r, "421 4.3.5 *\r\n");
	expect_backend(&r, "EHLO mx.test\r\n");
	expect_close(&r, 1, CLOSE_ERROR);
	expect_config_error(&r, "does not offer XCLIENT", "250-backend.test");
	run_free(&r);

	/* EHLO refused by the backend: the same. */
	const struct step t[] = {B(GREET), B("502 5.5.1 no EHLO\r\n"), END};
	play(&cfg, t, &r);
	expect_client(&r, "421 4.3.5 *\r\n");
	expect_config_error(&r, "refused EHLO", "502 5.5.1 no EHLO");
	run_free(&r);
}

/* A 421 to tlsfront's own EHLO is not the general 421 rule (§3.2): the
 * backend answered tlsfront, not the client, and its closing says nothing
 * the client could act on. §3.3: 421 4.3.5, and the log says why. */
static void test_s3_3_xclient_ehlo_421_gives_421_4_3_5(void **state)
{
	struct smtp_machine_config cfg = cfg_xclient();
	const struct step s[] = {B(GREET),
				 C("EHLO c\r\nMAIL FROM:<a@b.test>\r\n"),
				 B("421-backend.test busy\r\n421 4.7.0 try later\r\n"),
				 C("RCPT TO:<c@d.test>\r\n"),
				 B("250 late\r\n"),
				 END};
	struct run r;
	play(&cfg, s, &r);
	/* Only 421 4.3.5: neither the backend's 421 nor anything after. */
	expect_client(&r, "421 4.3.5 *\r\n");
	expect_client_step(&r, 2, "421 4.3.5 *\r\n");
	/* The held client commands never reached the backend. */
	expect_backend(&r, "EHLO mx.test\r\n");
	expect_close(&r, 2, CLOSE_ERROR);
	expect_config_error(&r, "EHLO before XCLIENT", "421-backend.test busy");
	run_free(&r);
}

static void test_s3_3_xclient_reply_421_gives_421_4_3_5(void **state)
{
	struct smtp_machine_config cfg = cfg_xclient();
	const struct step s[] = {B(GREET),
				 C("EHLO c\r\n"),
				 B("250-backend.test\r\n250 XCLIENT ADDR PORT NAME\r\n"),
				 B("421 4.7.0 backend.test Error: too many connections\r\n"),
				 BACKEND_CLOSED,
				 END};
	struct run r;
	play(&cfg, s, &r);
	expect_client(&r, "421 4.3.5 *\r\n");
	expect_client_step(&r, 3, "421 4.3.5 *\r\n");
	expect_backend(&r, "EHLO mx.test\r\nXCLIENT ADDR=IPV6:2001:db8::7 PORT=40123 "
			   "NAME=[UNAVAILABLE]\r\n");
	/* reason=error, not backend_closed: the session did not end because
	 * the backend went away but because it is configured wrong. */
	expect_close(&r, 3, CLOSE_ERROR);
	expect_config_error(&r, "closed on XCLIENT",
			    "421 4.7.0 backend.test Error: too many connections");
	run_free(&r);
}

/* Once XCLIENT succeeded, the backend's 421 is the general rule again. */
static void test_s3_3_xclient_done_backend_421_passed_on(void **state)
{
	struct smtp_machine_config cfg = cfg_xclient();
	const struct step s[] = {B(GREET),
				 B("250-backend.test\r\n250 XCLIENT ADDR\r\n"),
				 B("220 backend.test again\r\n"),
				 C("NOOP\r\n"),
				 B("421 4.4.2 backend timeout\r\n"),
				 END};
	struct run r;
	play(&cfg, s, &r);
	expect_client(&r, "220 backend.test again\r\n421 4.4.2 backend timeout\r\n");
	expect_close(&r, 4, CLOSE_BACKEND_CLOSED);
	assert_false(r.config_error);
	run_free(&r);

	/* A 421 greeting is the greeting (§3.1): passed on, no XCLIENT. */
	const struct step t[] = {B("421 4.3.2 backend.test not now\r\n"), END};
	play(&cfg, t, &r);
	expect_client(&r, "421 4.3.2 backend.test not now\r\n");
	expect_backend(&r, "");
	expect_close(&r, 0, CLOSE_BACKEND_CLOSED);
	assert_false(r.config_error);
	run_free(&r);
}

static void test_s3_3_xclient_refused_421_4_3_5(void **state)
{
	struct smtp_machine_config cfg = cfg_xclient();
	const struct step s[] = {B(GREET), B("250-backend.test\r\n250 xclient ADDR\r\n"),
				 B("550 5.7.0 not authorized\r\n"), END};
	struct run r;
	play(&cfg, s, &r);
	expect_client(&r, "421 4.3.5 *\r\n");
	expect_close(&r, 2, CLOSE_ERROR);
	expect_config_error(&r, "refused XCLIENT", "550 5.7.0 not authorized");
	run_free(&r);

	/* The reply quoted in the log is its first line, bounded. */
	char long_reply[2 * SMTP_NOTE_REPLY_MAX + 16];
	memset(long_reply, 'x', sizeof(long_reply));
	memcpy(long_reply, "550-", 4);
	memcpy(long_reply + sizeof(long_reply) - 16, "\r\n550 5.7.0 no\r\n", 16);
	const struct step t[] = {B(GREET), B("250-b\r\n250 XCLIENT\r\n"),
				 BN(long_reply, sizeof(long_reply)), END};
	play(&cfg, t, &r);
	expect_client(&r, "421 4.3.5 *\r\n");
	assert_true(r.config_error);
	assert_int_equal(strlen(r.note_reply), SMTP_NOTE_REPLY_MAX - 1);
	assert_memory_equal(r.note_reply, "550-xxx", 7);
	run_free(&r);
}

static void test_s3_3_xclient_greeting_554_relayed(void **state)
{
	/* A backend refusing service in its greeting: relayed as it is. */
	struct smtp_machine_config cfg = cfg_xclient();
	const struct step s[] = {B("554 5.3.2 no service\r\n"), C("QUIT\r\n"), B("221 bye\r\n"),
				 END};
	struct run r;
	play(&cfg, s, &r);
	expect_client(&r, "554 5.3.2 no service\r\n221 bye\r\n");
	expect_backend(&r, "QUIT\r\n");
	run_free(&r);
}

/* ---- §3.2 ---------------------------------------------------------------- */

static void test_s3_2_pipelining_replies_in_order(void **state)
{
	struct smtp_machine_config cfg = cfg_tcp();
	const struct step s[] = {B(GREET),
				 C("EHLO client.test\r\nMAIL FROM:<a@b.test>\r\nRCPT "
				   "TO:<c@d.test>\r\nRCPT TO:<e@f.test>\r\n"),
				 B(EHLO_REPLY "250 2.1.0 Ok\r\n"),
				 B("250 2.1.5 Ok\r\n550 5.1.1 unknown\r\n"), END};
	struct run r;
	play(&cfg, s, &r);
	expect_backend_step(&r, 1,
			    "EHLO client.test\r\nMAIL FROM:<a@b.test>\r\n"
			    "RCPT TO:<c@d.test>\r\nRCPT TO:<e@f.test>\r\n");
	expect_client_step(&r, 1, "");
	expect_client_step(&r, 2,
			   "250-backend.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n"
			   "250 STARTTLS\r\n250 2.1.0 Ok\r\n");
	expect_client_step(&r, 3, "250 2.1.5 Ok\r\n550 5.1.1 unknown\r\n");
	assert_int_equal(r.errors, 0); /* refused recipients do not count */
	expect_close(&r, -1, CLOSE_NONE);
	run_free(&r);
}

static void test_s3_2_pipelining_local_refusal_in_turn(void **state)
{
	struct smtp_machine_config cfg = cfg_tcp();
	const struct step s[] = {
	    B(GREET), C("MAIL FROM:<a@b.test>\r\nXCLIENT ADDR=192.0.2.1\r\nRCPT TO:<c@d.test>\r\n"),
	    B("250 2.1.0 Ok\r\n"), B("250 2.1.5 Ok\r\n"), END};
	struct run r;
	play(&cfg, s, &r);
	/* XCLIENT never reaches the backend; its 502 waits for MAIL's 250. */
	expect_backend_step(&r, 1, "MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\n");
	expect_client_step(&r, 1, "");
	expect_client_step(&r, 2, "250 2.1.0 Ok\r\n502 5.5.1*\r\n");
	expect_client_step(&r, 3, "250 2.1.5 Ok\r\n");
	assert_int_equal(r.errors, 1);
	run_free(&r);
}

static void test_s3_2_pipelining_fifo_bound(void **state)
{
	/* More pipelined commands than the FIFO holds: the rest waits, and
	 * every reply still comes in order. */
	struct smtp_machine_config cfg = cfg_tcp();
	enum { N = SMTP_FIFO_MAX + 40 };
	static char cmds[N * 16], replies[N * 16], want_be[N * 16], want_cl[N * 16];
	size_t nc = 0, nr = 0;
	for (int i = 0; i < N; i++) {
		nc += (size_t)sprintf(cmds + nc, "NOOP %d\r\n", i);
		nr += (size_t)sprintf(replies + nr, "250 %d\r\n", i);
	}
	memcpy(want_be, cmds, nc + 1);
	memcpy(want_cl, GREET, sizeof(GREET));
	strcat(want_cl, replies);
	const struct step s[] = {B(GREET), CN(cmds, nc), BN(replies, nr), END};
	struct run r;
	play(&cfg, s, &r);
	expect_backend(&r, want_be);
	expect_client(&r, want_cl);
	size_t first = r.backend_at[2] - r.backend_at[1];
	assert_true(first < nc); /* bounded by the FIFO */
	run_free(&r);
}

static void test_s3_2_multiline_replies(void **state)
{
	struct smtp_machine_config cfg = cfg_tcp();
	const struct step s[] = {B("220-backend.test ESMTP\r\n220-second line\r\n220 third\r\n"),
				 C("HELP\r\n"),
				 /* A backend using bare LF: the client gets CRLF. */
				 B("214-help line one\n214-two\r\n214 2.0.0 end\n"), END};
	struct run r;
	play(&cfg, s, &r);
	expect_client(&r, "220-backend.test ESMTP\r\n220-second line\r\n220 third\r\n"
			  "214-help line one\r\n214-two\r\n214 2.0.0 end\r\n");
	run_free(&r);
}

static void test_s3_2_lf_only_command_forwarded_crlf(void **state)
{
	struct smtp_machine_config cfg = cfg_tcp();
	const struct step s[] = {B(GREET), C("NOOP\nMAIL FROM:<a@b.test>\nRSET\r\n"),
				 B("250 a\r\n250 b\r\n250 c\r\n"), END};
	struct run r;
	play(&cfg, s, &r);
	expect_backend(&r, "NOOP\r\nMAIL FROM:<a@b.test>\r\nRSET\r\n");
	expect_client(&r, GREET "250 a\r\n250 b\r\n250 c\r\n");
	run_free(&r);
}

static void test_s3_2_nul_in_command_500_5_5_2(void **state)
{
	struct smtp_machine_config cfg = cfg_tcp();
	const struct step s[] = {B(GREET), C("MAIL FROM:<a\0@b>\r\nNOOP\r\n"), B("250 ok\r\n"),
				 END};
	struct run r;
	play(&cfg, s, &r);
	expect_backend(&r, "NOOP\r\n");
	expect_client(&r, GREET "500 5.5.2*\r\n250 ok\r\n");
	assert_int_equal(r.errors, 1);
	run_free(&r);
}

static void test_s3_2_bare_cr_in_command_500_5_5_2(void **state)
{
	struct smtp_machine_config cfg = cfg_tcp();
	const struct step s[] = {B(GREET), C("NOOP\rMAIL FROM:<a@b>\r\nRSET\r\r\nNOOP\r\n"),
				 B("250 ok\r\n"), END};
	struct run r;
	play(&cfg, s, &r);
	expect_backend(&r, "NOOP\r\n");
	expect_client(&r, GREET "500 5.5.2*\r\n500 5.5.2*\r\n250 ok\r\n");
	assert_int_equal(r.errors, 2);
	run_free(&r);
}

static char *make_line(const char *prefix, size_t total, const char *end)
{
	/* prefix, then 'x' up to total bytes including end. */
	char *l = malloc(total + 1);
	assert_non_null(l);
	size_t pl = strlen(prefix), el = strlen(end);
	memcpy(l, prefix, pl);
	memset(l + pl, 'x', total - pl - el);
	memcpy(l + total - el, end, el);
	l[total] = '\0';
	return l;
}

static void test_s3_2_long_line_500_session_goes_on(void **state)
{
	struct smtp_machine_config cfg = cfg_tcp();
	cfg.line_length = 64;
	char *ok = make_line("NOOP ", 64, "\r\n");	   /* exactly line_length */
	char *ok_lf = make_line("NOOP ", 63, "\n");	   /* 64 once forwarded with CRLF */
	char *lng = make_line("NOOP ", 65, "\r\n");	   /* one octet too long */
	char *lng_lf = make_line("NOOP ", 64, "\n");	   /* 65 with CRLF */
	char *huge = make_line("MAIL FROM:", 500, "\r\n"); /* far too long */
	const struct step s[] = {B(GREET),
				 CN(ok, 64),
				 CN(ok_lf, 63),
				 CN(lng, 65),
				 CN(lng_lf, 64),
				 CN(huge, 500),
				 C("RSET\r\n"),
				 B("250 1\r\n250 2\r\n250 3\r\n"),
				 END};
	struct run r;
	play(&cfg, s, &r);
	char want[256];
	snprintf(want, sizeof(want), "%.62s\r\n%.62s\r\nRSET\r\n", ok, ok_lf);
	expect_backend(&r, want);
	expect_client_step(&r, 3, "");
	expect_client(&r, GREET "250 1\r\n250 2\r\n500 5.5.2*\r\n500 5.5.2*\r\n500 5.5.2*\r\n"
				"250 3\r\n");
	assert_int_equal(r.errors, 3);
	expect_close(&r, -1, CLOSE_NONE);
	run_free(&r);
	free(ok);
	free(ok_lf);
	free(lng);
	free(lng_lf);
	free(huge);
}

static void test_s3_2_long_line_in_many_small_pieces(void **state)
{
	struct smtp_machine_config cfg = cfg_tcp();
	cfg.line_length = 32;
	struct step s[40] = {B(GREET)};
	size_t n = 1;
	for (int i = 0; i < 20; i++)
		s[n++] = (struct step)C("abcd"); /* 80 octets, no line end */
	s[n++] = (struct step)C("ef\r\nNOOP\r\n");
	s[n++] = (struct step)B("250 ok\r\n");
	s[n] = (struct step)END;
	struct run r;
	play(&cfg, s, &r);
	expect_backend(&r, "NOOP\r\n");
	expect_client(&r, GREET "500 5.5.2*\r\n250 ok\r\n");
	/* Trickling bytes are no progress; the line end is. */
	for (size_t i = 1; i <= 20; i++)
		assert_false(r.flags[i] & F_PROGRESS);
	assert_true(r.flags[21] & F_PROGRESS);
	run_free(&r);
}

static void test_s3_2_idle_progress_only_on_complete_line(void **state)
{
	struct smtp_machine_config cfg = cfg_tcp();
	const struct step s[] = {B(GREET), C("NO"), C("OP"), C("\r\n"), B("250 ok\r\n"), END};
	struct run r;
	play(&cfg, s, &r);
	assert_false(r.flags[1] & F_PROGRESS);
	assert_false(r.flags[2] & F_PROGRESS);
	assert_true(r.flags[3] & F_PROGRESS);
	run_free(&r);
}

static void test_s7_1_max_errors_local_refusals(void **state)
{
	struct smtp_machine_config cfg = cfg_tcp();
	cfg.max_errors = 3;
	const struct step s[] = {B(GREET),
				 C("XCLIENT A=1\r\nXCLIENT A=2\r\nXCLIENT A=3\r\nNOOP\r\n"),
				 B("250 late\r\n"), C("NOOP\r\n"), END};
	struct run r;
	play(&cfg, s, &r);
	/* The Nth error reply is sent, then 421 4.7.0. */
	expect_client(&r, GREET "502 5.5.1*\r\n502 5.5.1*\r\n502 5.5.1*\r\n421 4.7.0 *\r\n");
	expect_backend(&r, "");
	expect_close(&r, 1, CLOSE_POLICY);
	run_free(&r);
}

static void test_s7_1_max_errors_backend_500_504(void **state)
{
	struct smtp_machine_config cfg = cfg_tcp();
	cfg.max_errors = 5;
	const struct step s[] = {B(GREET),
				 C("FOO\r\n"),
				 B("500 5.5.2 unknown\r\n"),
				 C("MAIL FROM:<x>\r\n"),
				 B("501 5.1.7 bad\r\n"),
				 C("BAR\r\n"),
				 B("502 5.5.1 no\r\n"),
				 C("DATA\r\n"),
				 B("503 5.5.1 need RCPT\r\n"),
				 C("RCPT TO:<x>\r\n"),
				 B("550 5.1.1 unknown user\r\n"), /* not counted */
				 C("VRFY x\r\n"),
				 B("504 5.5.2 no\r\n"),
				 C("NOOP\r\n"),
				 END};
	struct run r;
	play(&cfg, s, &r);
	expect_client(&r, GREET "500 5.5.2 unknown\r\n501 5.1.7 bad\r\n502 5.5.1 no\r\n"
				"503 5.5.1 need RCPT\r\n550 5.1.1 unknown user\r\n504 5.5.2 no\r\n"
				"421 4.7.0 *\r\n");
	expect_close(&r, 12, CLOSE_POLICY);
	expect_backend(&r, "FOO\r\nMAIL FROM:<x>\r\nBAR\r\nDATA\r\nRCPT TO:<x>\r\nVRFY x\r\n");
	run_free(&r);
}

static void test_s7_1_failed_auth_535_not_counted(void **state)
{
	struct smtp_machine_config cfg = cfg_tcp();
	cfg.tcp_auth = true;
	cfg.max_errors = 2;
	const struct step s[] = {B(GREET),
				 C("AUTH PLAIN AGEAYg==\r\n"),
				 B("535 5.7.8 bad credentials\r\n"),
				 C("AUTH PLAIN AGEAYw==\r\n"),
				 B("535 5.7.8 bad credentials\r\n"),
				 C("AUTH PLAIN AGEAZA==\r\n"),
				 B("535 5.7.8 bad credentials\r\n"),
				 C("NOOP\r\n"),
				 B("250 ok\r\n"),
				 END};
	struct run r;
	play(&cfg, s, &r);
	expect_close(&r, -1, CLOSE_NONE);
	assert_int_equal(r.errors, 0);
	assert_false(r.authenticated);
	run_free(&r);
}

static void test_s7_1_accepted_message_resets_count(void **state)
{
	struct smtp_machine_config cfg = cfg_tcp();
	cfg.max_errors = 3;
	const struct step s[] = {B(GREET),
				 C("FOO\r\nBAR\r\n"),
				 B("500 5.5.2 no\r\n500 5.5.2 no\r\n"),
				 C(ENVELOPE),
				 B("250 ok\r\n250 ok\r\n354 go\r\n"),
				 C("hello\r\n.\r\n"),
				 B("250 2.0.0 queued\r\n"),
				 C("FOO\r\nBAR\r\n"),
				 B("500 5.5.2 no\r\n500 5.5.2 no\r\n"),
				 C("BAZ\r\n"),
				 B("500 5.5.2 no\r\n"),
				 END};
	struct run r;
	play(&cfg, s, &r);
	expect_close(&r, 10, CLOSE_POLICY);
	assert_int_equal(r.messages, 1);
	run_free(&r);
}

static void test_s3_2_http_lines_221_2_7_0_close(void **state)
{
	static const char *const lines[] = {
	    "GET / HTTP/1.1\r\n",
	    "POST /x HTTP/1.1\r\n",
	    "HEAD / HTTP/1.0\r\n",
	    "PUT /a HTTP/1.1\r\n",
	    "CONNECT a:25 HTTP/1.1\r\n",
	    "OPTIONS * HTTP/1.1\r\n",
	    "Host: mx.test\r\n",
	    "User-Agent: curl\r\n",
	    /* §7.2: case-insensitive */
	    "get / HTTP/1.1\r\n",
	    "host: x\r\n",
	    "user-agent: y\r\n",
	    "HOST:x\n",
	};
	struct smtp_machine_config cfg = cfg_tcp();
	for (size_t i = 0; i < COUNT(lines); i++) {
		const struct step s[] = {B(GREET),	  C("NOOP\r\n"),
					 B("250 ok\r\n"), CN(lines[i], strlen(lines[i])),
					 C("NOOP\r\n"),	  END};
		struct run r;
		play(&cfg, s, &r);
		expect_client_step(&r, 3, "221 2.7.0*\r\n");
		expect_backend(&r, "NOOP\r\n");
		expect_close(&r, 3, CLOSE_POLICY);
		run_free(&r);
	}
	/* Pipelined behind a pending command: closed at once. */
	const struct step s[] = {B(GREET), C("NOOP\r\nGET / HTTP/1.1\r\nHost: x\r\n"),
				 B("250 ok\r\n"), END};
	struct run r;
	play(&cfg, s, &r);
	expect_client(&r, GREET "221 2.7.0*\r\n");
	expect_close(&r, 1, CLOSE_POLICY);
	run_free(&r);
}

static void test_s3_2_xclient_xforward_502_never_forwarded(void **state)
{
	struct smtp_machine_config cfg = cfg_tcp();
	const struct step s[] = {B(GREET),
				 C("XCLIENT ADDR=192.0.2.1 NAME=spoof\r\nXFORWARD ADDR=1.2.3.4\r\n"
				   "xclient addr=1\r\nXforward\r\n"),
				 /* XCLIENT with an HTTP-looking argument is still XCLIENT. */
				 C("XCLIENT Host: x\r\n"), END};
	struct run r;
	play(&cfg, s, &r);
	expect_backend(&r, "");
	expect_client(&r, GREET "502 5.5.1*\r\n502 5.5.1*\r\n502 5.5.1*\r\n502 5.5.1*\r\n"
				"502 5.5.1*\r\n");
	expect_close(&r, -1, CLOSE_NONE);
	run_free(&r);
}

static void test_s3_2_verbs_case_insensitive(void **state)
{
	struct smtp_machine_config cfg = cfg_tcp();
	const struct step s[] = {B(GREET),
				 C("ehlo client.test\r\n"),
				 B(EHLO_REPLY),
				 C("xClient A=1\r\nqUiT\r\n"),
				 B("221 2.0.0 bye\r\n"),
				 END};
	struct run r;
	play(&cfg, s, &r);
	expect_client(&r, GREET "250-backend.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n"
				"250 STARTTLS\r\n502 5.5.1*\r\n221 2.0.0 bye\r\n");
	expect_backend(&r, "ehlo client.test\r\nqUiT\r\n");
	expect_close(&r, 4, CLOSE_QUIT);
	run_free(&r);
}

static void test_s3_2_unknown_commands_passed_unchanged(void **state)
{
	struct smtp_machine_config cfg = cfg_tcp();
	const struct step s[] = {B(GREET), C("ETRN example.test\r\nFOO  bar\tbaz\r\n"),
				 B("250 ok\r\n500 5.5.2 unknown\r\n"), END};
	struct run r;
	play(&cfg, s, &r);
	expect_backend(&r, "ETRN example.test\r\nFOO  bar\tbaz\r\n");
	expect_client(&r, GREET "250 ok\r\n500 5.5.2 unknown\r\n");
	run_free(&r);
}

static void test_s3_2_quit_221_relayed_close_quit(void **state)
{
	struct smtp_machine_config cfg = cfg_tcp();
	/* Nothing the client sends after QUIT's 221 is processed. */
	const struct step s[] = {B(GREET),
				 C("QUIT\r\nNOOP\r\n"),
				 B("221 2.0.0 Bye\r\n"),
				 C("NOOP\r\n"),
				 B("250 late\r\n"),
				 BACKEND_CLOSED,
				 TIMEOUT,
				 END};
	struct run r;
	play(&cfg, s, &r);
	expect_client(&r, GREET "221 2.0.0 Bye\r\n");
	expect_close(&r, 2, CLOSE_QUIT);
	run_free(&r);
}

static void test_s3_2_backend_closed_421_4_3_0(void **state)
{
	struct smtp_machine_config cfg = cfg_tcp();
	const struct step s[] = {B(GREET), C("NOOP\r\n"), BACKEND_CLOSED, C("NOOP\r\n"), END};
	struct run r;
	play(&cfg, s, &r);
	expect_client(&r, GREET "421 4.3.0 *\r\n");
	expect_backend(&r, "NOOP\r\n");
	expect_close(&r, 2, CLOSE_BACKEND_CLOSED);
	run_free(&r);

	/* Mid-DATA too: no end of data is ever answered by tlsfront. */
	const struct step d[] = {
	    B(GREET),		C(ENVELOPE),	B("250 ok\r\n250 ok\r\n354 go\r\n"),
	    C("body\r\n.\r\n"), BACKEND_CLOSED, END};
	play(&cfg, d, &r);
	expect_client(&r, GREET "250 ok\r\n250 ok\r\n354 go\r\n421 4.3.0 *\r\n");
	expect_close(&r, 4, CLOSE_BACKEND_CLOSED);
	run_free(&r);
}

/* A backend's own 421 is passed on and the session closes at once, so the
 * client never sees a second 421 of tlsfront's after it. */
static void test_s3_2_backend_421_passed_on_once(void **state)
{
	struct smtp_machine_config cfg = cfg_tcp();
	const struct step s[] = {
	    B(GREET),	    C("NOOP\r\nNOOP\r\n"), B("421 4.4.2 backend timeout\r\n"),
	    BACKEND_CLOSED, C("NOOP\r\n"),	   END};
	struct run r;
	play(&cfg, s, &r);
	expect_client(&r, GREET "421 4.4.2 backend timeout\r\n");
	expect_backend(&r, "NOOP\r\nNOOP\r\n");
	expect_close(&r, 2, CLOSE_BACKEND_CLOSED);
	run_free(&r);
}

static void test_s3_2_timeout_421_4_4_2(void **state)
{
	struct smtp_machine_config cfg = cfg_tcp();
	const struct step s[] = {B(GREET), C("NOO"), TIMEOUT, C("P\r\n"), END};
	struct run r;
	play(&cfg, s, &r);
	expect_client(&r, GREET "421 4.4.2 *\r\n");
	expect_backend(&r, "");
	expect_close(&r, 2, CLOSE_TIMEOUT);
	run_free(&r);
}

static void test_s3_2_shutdown_421(void **state)
{
	struct smtp_machine_config cfg = cfg_tcp();
	const struct step s[] = {B(GREET), SHUTDOWN, C("NOOP\r\n"), END};
	struct run r;
	play(&cfg, s, &r);
	expect_client(&r, GREET "421 4.3.2 *\r\n");
	expect_close(&r, 1, CLOSE_SHUTDOWN);
	run_free(&r);
}

static void test_s3_2_malformed_backend_reply_421(void **state)
{
	static const char *const bad[] = {
	    "hello\r\n", "25\r\n",	 "250x ok\r\n", "250-a\r\n251 b\r\n",
	    "2a0 x\r\n", "250 a\rb\r\n", "\r\n",	"\n",
	};
	struct smtp_machine_config cfg = cfg_tcp();
	for (size_t i = 0; i < COUNT(bad); i++) {
		const struct step s[] = {B(GREET), C("NOOP\r\nNOOP\r\n"),
					 BN(bad[i], strlen(bad[i])), B("250 ok\r\n"), END};
		struct run r;
		play(&cfg, s, &r);
		expect_client(&r, GREET "421 4.3.0 *\r\n");
		expect_close(&r, 2, CLOSE_ERROR);
		run_free(&r);
	}
	/* A malformed greeting too. */
	const struct step g[] = {B("SSH-2.0-OpenSSH\r\n"), END};
	struct run r;
	play(&cfg, g, &r);
	expect_client(&r, "421 4.3.0 *\r\n");
	expect_close(&r, 0, CLOSE_ERROR);
	run_free(&r);
}

/* A reply that answers no command is never relayed: the client would take
 * it for the reply to its next command, and every later one would be out of
 * step (outbound, a hostile peer could steer the legacy server so). */
static void test_s3_2_unsolicited_backend_reply_421(void **state)
{
	struct smtp_machine_config cfg = cfg_tcp();
	const struct step s[] = {B(GREET "250-fake\r\n250 STARTTLS\r\n"), C("EHLO c.test\r\n"),
				 B("250 real\r\n"), END};
	struct run r;
	play(&cfg, s, &r);
	expect_client(&r, GREET "421 4.3.0 *\r\n");
	expect_backend(&r, "");
	expect_close(&r, 0, CLOSE_ERROR);
	run_free(&r);
	/* After every reply has come: one more is just as unsolicited. */
	const struct step t[] = {B(GREET), C("NOOP\r\n"), B("250 ok\r\n250 extra\r\n"),
				 C("NOOP\r\n"), END};
	play(&cfg, t, &r);
	expect_client(&r, GREET "250 ok\r\n421 4.3.0 *\r\n");
	expect_backend(&r, "NOOP\r\n");
	expect_close(&r, 2, CLOSE_ERROR);
	run_free(&r);
}

static void test_s7_1_closing_reply_has_enhanced_code_first(void **state)
{
	/* RFC 2034: the enhanced status code comes right after the reply
	 * code; the contract names "421 4.7.0" etc. */
	struct smtp_machine_config cfg = cfg_tcp();
	cfg.max_errors = 1;
	const struct step s[] = {B(GREET), C("XCLIENT\r\n"), END};
	struct run r;
	play(&cfg, s, &r);
	expect_client(&r, GREET "502 5.5.1*\r\n421 4.7.0 *\r\n");
	run_free(&r);
}

static void test_s7_1_max_errors_on_data_refusal_closes(void **state)
{
	/* The reply that is the Nth error closes the session, also when it
	 * answers DATA: nothing may come out or go in afterwards. */
	struct smtp_machine_config cfg = cfg_tcp();
	cfg.max_errors = 2;
	const struct step s[] = {B(GREET),
				 C("FOO\r\n"),
				 B("500 5.5.2 unknown\r\n"),
				 C(ENVELOPE),
				 B("250 ok\r\n250 ok\r\n503 5.5.1 no\r\n250 extra\r\n"),
				 C("NOOP\r\n"),
				 END};
	struct run r;
	play(&cfg, s, &r);
	expect_client(&r, GREET "500 5.5.2 unknown\r\n250 ok\r\n250 ok\r\n503 5.5.1 no\r\n"
				"421 4.7.0 *\r\n");
	expect_backend(&r, "FOO\r\n" ENVELOPE);
	expect_close(&r, 4, CLOSE_POLICY);
	assert_int_equal(r.phase, PHASE_CLOSED);
	run_free(&r);
}

static void test_s7_1_max_errors_on_greeting_closes(void **state)
{
	struct smtp_machine_config cfg = cfg_tcp();
	cfg.max_errors = 1;
	const struct step s[] = {B("502 5.5.1 odd greeting\r\n"), C("NOOP\r\n"), END};
	struct run r;
	play(&cfg, s, &r);
	expect_client(&r, "502 5.5.1 odd greeting\r\n421 4.7.0 *\r\n");
	expect_backend(&r, "");
	expect_close(&r, 0, CLOSE_POLICY);
	run_free(&r);
}

/* ---- §3.4 ---------------------------------------------------------------- */

#define BIG_EHLO                                                                                   \
	"250-backend.test Hello\r\n250-PIPELINING\r\n250-STARTTLS\r\n250-SIZE 10240000\r\n"        \
	"250-AUTH PLAIN LOGIN\r\n250-AUTH=PLAIN LOGIN\r\n250-XCLIENT NAME ADDR\r\n"                \
	"250-XFORWARD NAME ADDR\r\n250-CHUNKING\r\n250-BINARYMIME\r\n250-8BITMIME\r\n"             \
	"250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n250 DSN\r\n"

#define KEPT_EHLO                                                                                  \
	"250-backend.test Hello\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-8BITMIME\r\n"        \
	"250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n"

static void test_s3_4_ehlo_rewrite_tcp_port(void **state)
{
	struct smtp_machine_config cfg = cfg_tcp();
	const struct step s[] = {B(GREET), C("EHLO c\r\n"), B(BIG_EHLO), END};
	struct run r;
	play(&cfg, s, &r);
	/* Backend STARTTLS removed, ours added; AUTH dropped (tcp_auth off). */
	expect_client_step(&r, 2, KEPT_EHLO "250-DSN\r\n250 STARTTLS\r\n");
	run_free(&r);
}

static void test_s3_4_ehlo_auth_kept_when_permitted(void **state)
{
	struct smtp_machine_config cfg = cfg_tcp();
	cfg.tcp_auth = true;
	const struct step s[] = {B(GREET), C("EHLO c\r\n"), B(BIG_EHLO), END};
	struct run r;
	play(&cfg, s, &r);
	expect_client_step(
	    &r, 2,
	    "250-backend.test Hello\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n"
	    "250-AUTH PLAIN LOGIN\r\n250-AUTH=PLAIN LOGIN\r\n250-8BITMIME\r\n"
	    "250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n250-DSN\r\n250 STARTTLS\r\n");
	run_free(&r);
}

static void test_s3_4_ehlo_no_starttls_when_disabled(void **state)
{
	struct smtp_machine_config cfg = cfg_tcp();
	cfg.starttls = false;
	const struct step s[] = {B(GREET), C("EHLO c\r\n"), B(BIG_EHLO), END};
	struct run r;
	play(&cfg, s, &r);
	expect_client_step(&r, 2, KEPT_EHLO "250 DSN\r\n");
	run_free(&r);
}

static void test_s3_4_ehlo_tls_port(void **state)
{
	struct smtp_machine_config cfg = cfg_tcp();
	cfg.tls_port = true;
	const struct step s[] = {B(GREET), C("EHLO c\r\n"), B(BIG_EHLO), END};
	struct run r;
	play(&cfg, s, &r);
	/* A TLS session: no STARTTLS, AUTH per tls_auth (on). */
	expect_client_step(&r, 2,
			   "250-backend.test Hello\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n"
			   "250-AUTH PLAIN LOGIN\r\n250-AUTH=PLAIN LOGIN\r\n250-8BITMIME\r\n"
			   "250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n250 DSN\r\n");
	run_free(&r);
}

static void test_s3_4_ehlo_after_starttls(void **state)
{
	struct smtp_machine_config cfg = cfg_tcp();
	cfg.tls_auth = false;
	cfg.tcp_auth = true;
	const struct step s[] = {
	    B(GREET), C("EHLO c\r\n"),	     B(BIG_EHLO),     C("STARTTLS\r\n"),
	    TLS,      B("250 2.0.0 Ok\r\n"), C("EHLO c\r\n"), B(BIG_EHLO),
	    END};
	struct run r;
	play(&cfg, s, &r);
	/* Before TLS: AUTH (tcp_auth) and STARTTLS. After: neither. */
	expect_client_step(
	    &r, 2,
	    "250-backend.test Hello\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n"
	    "250-AUTH PLAIN LOGIN\r\n250-AUTH=PLAIN LOGIN\r\n250-8BITMIME\r\n"
	    "250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n250-DSN\r\n250 STARTTLS\r\n");
	expect_client_step(&r, 7, KEPT_EHLO "250 DSN\r\n");
	run_free(&r);
}

static void test_s3_4_ehlo_single_line_gains_starttls(void **state)
{
	struct smtp_machine_config cfg = cfg_tcp();
	const struct step s[] = {B(GREET), C("EHLO c\r\n"), B("250 backend.test\r\n"), END};
	struct run r;
	play(&cfg, s, &r);
	expect_client_step(&r, 2, "250-backend.test\r\n250 STARTTLS\r\n");
	run_free(&r);
}

static void test_s3_4_ehlo_continuation_marks(void **state)
{
	struct smtp_machine_config cfg = cfg_tcp();
	cfg.tls_port = true;
	const struct step s[] = {B(GREET),
				 C("EHLO c\r\n"),
				 B("250-backend.test\r\n250-SIZE 1\r\n250 CHUNKING\r\n"),
				 C("EHLO c\r\n"),
				 B("250-backend.test\r\n250-STARTTLS\r\n250-XCLIENT ADDR\r\n"
				   "250 BINARYMIME\r\n"),
				 C("EHLO c\r\n"),
				 B("250 backend.test\r\n"),
				 END};
	struct run r;
	play(&cfg, s, &r);
	expect_client_step(&r, 2, "250-backend.test\r\n250 SIZE 1\r\n");
	expect_client_step(&r, 4, "250 backend.test\r\n");
	expect_client_step(&r, 6, "250 backend.test\r\n");
	run_free(&r);
}

static void test_s3_4_ehlo_keywords_case_insensitive(void **state)
{
	struct smtp_machine_config cfg = cfg_tcp();
	const struct step s[] = {
	    B(GREET), C("EHLO c\r\n"),
	    B("250-backend.test\r\n250-starttls\r\n250-auth plain\r\n"
	      "250-Auth=login\r\n250-Xclient ADDR\r\n250-xforward NAME\r\n"
	      "250-chunking\r\n250-BinaryMime\r\n250-pipelining\r\n250 size 5\r\n"),
	    END};
	struct run r;
	play(&cfg, s, &r);
	expect_client_step(&r, 2,
			   "250-backend.test\r\n250-pipelining\r\n250-size 5\r\n250 STARTTLS\r\n");
	run_free(&r);
}

static void test_s3_4_non_250_ehlo_unchanged(void **state)
{
	struct smtp_machine_config cfg = cfg_tcp();
	const struct step s[] = {B(GREET),
				 C("EHLO c\r\n"),
				 B("502 5.5.1 EHLO not supported\r\n"),
				 C("EHLO c\r\n"),
				 B("554-backend.test\r\n554-STARTTLS\r\n554 AUTH PLAIN\r\n"),
				 END};
	struct run r;
	play(&cfg, s, &r);
	expect_client_step(&r, 2, "502 5.5.1 EHLO not supported\r\n");
	expect_client_step(&r, 4, "554-backend.test\r\n554-STARTTLS\r\n554 AUTH PLAIN\r\n");
	run_free(&r);
}

static void test_s3_4_helo_reply_unchanged(void **state)
{
	struct smtp_machine_config cfg = cfg_tcp();
	const struct step s[] = {B(GREET), C("HELO c\r\n"), B("250 backend.test\r\n"), END};
	struct run r;
	play(&cfg, s, &r);
	expect_client_step(&r, 2, "250 backend.test\r\n");
	expect_backend(&r, "HELO c\r\n");
	run_free(&r);
}

/* Issue 14: SIZE in sessions with milters (ehlo_rewrite's size_limit). */

/* ehlo_rewrite() of in (a 250 reply) must give want. */
static void expect_rewrite(const struct smtp_rules_session *rs, const char *in, const char *want)
{
	struct buf out = {0};
	assert_true(ehlo_rewrite(rs, 250, in, strlen(in), &out));
	if (out.len != strlen(want) || memcmp(out.data, want, out.len) != 0)
		fail_msg("for:\n%s\nexpected:\n%s\ngot:\n%.*s", in, want, (int)out.len,
			 out.data ? out.data : "");
	buf_free(&out);
}

static void test_i14_ehlo_size_left_alone_without_limit(void **state)
{
	struct smtp_rules_session rs = {.size_limit = 0};
	expect_rewrite(&rs, BIG_EHLO, KEPT_EHLO "250 DSN\r\n");
	expect_rewrite(&rs, "250-b\r\n250-SIZE\r\n250 8BITMIME\r\n",
		       "250-b\r\n250-SIZE\r\n250 8BITMIME\r\n");
	expect_rewrite(&rs, "250-b\r\n250 8BITMIME\r\n", "250-b\r\n250 8BITMIME\r\n");
}

static void test_i14_ehlo_size_is_the_smaller(void **state)
{
	struct smtp_rules_session rs = {.size_limit = 52428800};
	/* The backend's is smaller: kept, in place. */
	expect_rewrite(&rs, BIG_EHLO, KEPT_EHLO "250 DSN\r\n");
	/* Ours is smaller. */
	rs.size_limit = 1000000;
	expect_rewrite(&rs, BIG_EHLO,
		       "250-backend.test Hello\r\n250-PIPELINING\r\n250-SIZE 1000000\r\n"
		       "250-8BITMIME\r\n250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n250 DSN\r\n");
	/* Equal. */
	rs.size_limit = 10240000;
	expect_rewrite(&rs, BIG_EHLO, KEPT_EHLO "250 DSN\r\n");
	/* The last line, case-insensitive, extra spaces. */
	rs.size_limit = 4096;
	expect_rewrite(&rs, "250-b\r\n250-PIPELINING\r\n250 size  2048\r\n",
		       "250-b\r\n250-PIPELINING\r\n250 SIZE 2048\r\n");
	expect_rewrite(&rs, "250-b\r\n250 SIZE 1000000000000000000000000000\r\n",
		       "250-b\r\n250 SIZE 4096\r\n");
}

static void test_i14_ehlo_size_without_backend_limit(void **state)
{
	struct smtp_rules_session rs = {.size_limit = 52428800};
	/* RFC 1870: no number, or 0, is no fixed limit. */
	expect_rewrite(&rs, "250-b\r\n250-SIZE\r\n250 8BITMIME\r\n",
		       "250-b\r\n250-SIZE 52428800\r\n250 8BITMIME\r\n");
	expect_rewrite(&rs, "250-b\r\n250-SIZE 0\r\n250 8BITMIME\r\n",
		       "250-b\r\n250-SIZE 52428800\r\n250 8BITMIME\r\n");
	expect_rewrite(&rs, "250-b\r\n250-SIZE 12ab\r\n250 8BITMIME\r\n",
		       "250-b\r\n250-SIZE 52428800\r\n250 8BITMIME\r\n");
	/* No SIZE line: one is added after the kept lines. */
	expect_rewrite(&rs, "250-b\r\n250-PIPELINING\r\n250 8BITMIME\r\n",
		       "250-b\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 52428800\r\n");
	expect_rewrite(&rs, "250 b\r\n", "250-b\r\n250 SIZE 52428800\r\n");
	/* SIZEX is another keyword. */
	expect_rewrite(&rs, "250-b\r\n250 SIZEX 10\r\n",
		       "250-b\r\n250-SIZEX 10\r\n250 SIZE 52428800\r\n");
}

static void test_i14_ehlo_size_before_starttls(void **state)
{
	struct smtp_rules_session rs = {.starttls_offered = true, .size_limit = 1024};
	expect_rewrite(&rs, "250 backend.test\r\n",
		       "250-backend.test\r\n250-SIZE 1024\r\n250 STARTTLS\r\n");
	expect_rewrite(&rs, "250-b\r\n250-STARTTLS\r\n250 SIZE 2048\r\n",
		       "250-b\r\n250-SIZE 1024\r\n250 STARTTLS\r\n");
	/* After STARTTLS: no STARTTLS, SIZE still. */
	rs.tls_active = true;
	expect_rewrite(&rs, "250 backend.test\r\n", "250-backend.test\r\n250 SIZE 1024\r\n");
}

static void test_i14_ehlo_size_lines_become_one(void **state)
{
	struct smtp_rules_session rs = {.size_limit = 52428800};
	/* The smallest of the backend's, at the first one's place. */
	expect_rewrite(&rs, "250-b\r\n250-SIZE 5000\r\n250-PIPELINING\r\n250 SIZE 3000\r\n",
		       "250-b\r\n250-SIZE 3000\r\n250 PIPELINING\r\n");
	expect_rewrite(&rs, "250-b\r\n250-SIZE\r\n250-PIPELINING\r\n250 SIZE 3000\r\n",
		       "250-b\r\n250-SIZE 3000\r\n250 PIPELINING\r\n");
}

static void test_i14_ehlo_size_not_in_other_replies(void **state)
{
	struct smtp_rules_session rs = {.size_limit = 1024};
	const char *in = "554 5.7.1 no\r\n";
	struct buf out = {0};
	assert_true(ehlo_rewrite(&rs, 554, in, strlen(in), &out));
	assert_int_equal(out.len, strlen(in));
	assert_memory_equal(out.data, in, out.len);
	buf_free(&out);
}

/* ---- §3.5 ---------------------------------------------------------------- */

static void test_s3_5_starttls_never_forwarded_220(void **state)
{
	struct smtp_machine_config cfg = cfg_tcp();
	const struct step s[] = {B(GREET),
				 C("EHLO c\r\n"),
				 B(EHLO_REPLY),
				 C("STARTTLS\r\n"),
				 TLS,
				 B("250 2.0.0 Ok\r\n"),
				 C("EHLO c\r\n"),
				 B(EHLO_REPLY),
				 C("QUIT\r\n"),
				 B("221 bye\r\n"),
				 END};
	struct run r;
	play(&cfg, s, &r);
	expect_client_step(&r, 3, "220 2.0.0*\r\n");
	assert_true(r.flags[3] & F_START_TLS);
	expect_backend_step(&r, 3, "");
	/* RSET after the handshake; its reply is not relayed. */
	expect_backend_step(&r, 4, "RSET\r\n");
	expect_client_step(&r, 4, "");
	expect_client_step(&r, 5, "");
	/* The second EHLO reply has no STARTTLS. */
	expect_client_step(&r, 7, "250-backend.test\r\n250-PIPELINING\r\n250 SIZE 1000\r\n");
	expect_backend(&r, "EHLO c\r\nRSET\r\nEHLO c\r\nQUIT\r\n");
	expect_close(&r, 9, CLOSE_QUIT);
	for (size_t i = 0; i < r.nsteps; i++)
		if (i != 3)
			assert_false(r.flags[i] & F_START_TLS);
	run_free(&r);
}

static void test_s3_5_starttls_220_after_earlier_replies(void **state)
{
	struct smtp_machine_config cfg = cfg_tcp();
	const struct step s[] = {B(GREET), C("EHLO c\r\nNOOP\r\nSTARTTLS\r\n"), B(EHLO_REPLY),
				 B("250 2.0.0 noop\r\n"), END};
	struct run r;
	play(&cfg, s, &r);
	expect_backend(&r, "EHLO c\r\nNOOP\r\n");
	expect_client_step(&r, 1, "");
	expect_client_step(&r, 2,
			   "250-backend.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n"
			   "250 STARTTLS\r\n");
	assert_false(r.flags[2] & F_START_TLS);
	expect_client_step(&r, 3, "250 2.0.0 noop\r\n220 2.0.0*\r\n");
	assert_true(r.flags[3] & F_START_TLS);
	run_free(&r);
}

static void test_s3_5_starttls_injection_discarded(void **state)
{
	struct smtp_machine_config cfg = cfg_tcp();
	const struct step s[] = {B(GREET),
				 C("EHLO c\r\n"),
				 B(EHLO_REPLY),
				 C("STARTTLS\r\nMAIL FROM:<x@y>\r\n"),
				 TLS,
				 B("250 2.0.0 Ok\r\n"),
				 C("MAIL FROM:<x@y>\r\n"),
				 END};
	struct run r;
	play(&cfg, s, &r);
	assert_int_equal(r.discarded[3], strlen("MAIL FROM:<x@y>\r\n"));
	expect_backend(&r, "EHLO c\r\nRSET\r\n");
	/* And in the TLS session, MAIL needs a new EHLO first. */
	expect_client_step(&r, 6, "503 5.5.1*\r\n");
	run_free(&r);

	/* Pipelined behind a pending command: discarded all the same, also
	 * what arrives while the 220 waits for that reply. */
	const struct step p[] = {B(GREET),	C("NOOP\r\nSTARTTLS\r\nRCPT TO:<a@b>\r\n"),
				 C("DATA\r\n"), B("250 ok\r\n"),
				 TLS,		END};
	play(&cfg, p, &r);
	expect_backend(&r, "NOOP\r\nRSET\r\n");
	assert_int_equal(r.discarded[1], strlen("RCPT TO:<a@b>\r\n"));
	assert_int_equal(r.discarded[2], strlen("DATA\r\n"));
	expect_client(&r, GREET "250 ok\r\n220 2.0.0*\r\n");
	run_free(&r);
}

static void test_s3_5_starttls_with_args_501_5_5_4(void **state)
{
	struct smtp_machine_config cfg = cfg_tcp();
	const struct step s[] = {B(GREET), C("STARTTLS now\r\nNOOP\r\n"), B("250 ok\r\n"), END};
	struct run r;
	play(&cfg, s, &r);
	expect_client(&r, GREET "501 5.5.4*\r\n250 ok\r\n");
	expect_backend(&r, "NOOP\r\n");
	for (size_t i = 0; i < r.nsteps; i++)
		assert_false(r.flags[i] & F_START_TLS);
	run_free(&r);
}

static void test_s3_5_starttls_in_tls_session_503_5_5_1(void **state)
{
	struct smtp_machine_config cfg = cfg_tcp();
	cfg.tls_port = true;
	const struct step s[] = {B(GREET), C("STARTTLS\r\n"), END};
	struct run r;
	play(&cfg, s, &r);
	expect_client(&r, GREET "503 5.5.1*\r\n");
	expect_backend(&r, "");
	run_free(&r);

	struct smtp_machine_config tcp = cfg_tcp();
	const struct step t[] = {B(GREET),	  C("STARTTLS\r\n"), TLS,
				 B("250 ok\r\n"), C("STARTTLS\r\n"), C("EHLO c\r\n"),
				 B(EHLO_REPLY),	  C("STARTTLS\r\n"), END};
	play(&tcp, t, &r);
	expect_client_step(&r, 4, "503 5.5.1*\r\n");
	expect_client_step(&r, 7, "503 5.5.1*\r\n");
	expect_backend(&r, "RSET\r\nEHLO c\r\n");
	run_free(&r);
}

static void test_s3_5_starttls_not_offered_502_5_5_1(void **state)
{
	struct smtp_machine_config cfg = cfg_tcp();
	cfg.starttls = false;
	const struct step s[] = {B(GREET), C("STARTTLS\r\nNOOP\r\n"), B("250 ok\r\n"), END};
	struct run r;
	play(&cfg, s, &r);
	expect_client(&r, GREET "502 5.5.1*\r\n250 ok\r\n");
	expect_backend(&r, "NOOP\r\n");
	run_free(&r);
}

static void test_s3_5_after_tls_ehlo_required(void **state)
{
	struct smtp_machine_config cfg = cfg_tcp();
	const struct step s[] = {
	    B(GREET),
	    C("EHLO c\r\n"),
	    B(EHLO_REPLY),
	    C("STARTTLS\r\n"),
	    TLS,
	    C("MAIL FROM:<a@b>\r\nNOOP\r\nRSET\r\nHELP\r\nRCPT TO:<c@d>\r\nDATA\r\nVRFY "
	      "x\r\nFOO\r\n"),
	    B("250 2.0.0 rset-internal\r\n250 noop\r\n250 rset\r\n214 help\r\n"),
	    C("HELO c\r\nMAIL FROM:<a@b>\r\n"),
	    B("250 backend.test\r\n250 2.1.0 ok\r\n"),
	    C("QUIT\r\n"),
	    B("221 bye\r\n"),
	    END};
	struct run r;
	play(&cfg, s, &r);
	expect_client_step(&r, 5, ""); /* behind the internal RSET */
	expect_client_step(&r, 6,
			   "503 5.5.1*\r\n250 noop\r\n250 rset\r\n214 help\r\n"
			   "503 5.5.1*\r\n503 5.5.1*\r\n503 5.5.1*\r\n503 5.5.1*\r\n");
	expect_client_step(&r, 8, "250 backend.test\r\n250 2.1.0 ok\r\n");
	expect_backend(&r, "EHLO c\r\nRSET\r\nNOOP\r\nRSET\r\nHELP\r\nHELO c\r\nMAIL FROM:<a@b>\r\n"
			   "QUIT\r\n");
	expect_close(&r, 10, CLOSE_QUIT);
	run_free(&r);
}

static void test_s3_5_require_tls_530_5_7_0(void **state)
{
	struct smtp_machine_config cfg = cfg_tcp();
	cfg.require_tls = true;
	cfg.tcp_auth = true;
	cfg.max_errors = 0; /* unlimited: count the refusals freely */
	const struct step s[] = {B(GREET),
				 C("EHLO c\r\nHELO c\r\nNOOP\r\nRSET\r\nHELP\r\n"),
				 B(EHLO_REPLY "250 helo\r\n250 noop\r\n250 rset\r\n214 help\r\n"),
				 C("MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nVRFY x\r\nEXPN "
				   "x\r\nFOO\r\nAUTH PLAIN\r\n"),
				 C("STARTTLS\r\n"),
				 TLS,
				 B("250 rset\r\n"),
				 C("EHLO c\r\n"),
				 B(EHLO_REPLY),
				 C(ENVELOPE),
				 B("250 ok\r\n250 ok\r\n354 go\r\n"),
				 END};
	struct run r;
	play(&cfg, s, &r);
	expect_client_step(&r, 3,
			   "530 5.7.0*\r\n530 5.7.0*\r\n530 5.7.0*\r\n530 5.7.0*\r\n"
			   "530 5.7.0*\r\n530 5.7.0*\r\n530 5.7.0*\r\n");
	expect_client_step(&r, 4, "220 2.0.0*\r\n");
	expect_backend(&r,
		       "EHLO c\r\nHELO c\r\nNOOP\r\nRSET\r\nHELP\r\nRSET\r\nEHLO c\r\n" ENVELOPE);
	run_free(&r);
}

static void test_s3_5_require_tls_on_tls_port_passes(void **state)
{
	struct smtp_machine_config cfg = cfg_tcp();
	cfg.require_tls = true;
	cfg.tls_port = true;
	const struct step s[] = {B(GREET), C("MAIL FROM:<a@b>\r\n"), B("250 ok\r\n"), END};
	struct run r;
	play(&cfg, s, &r);
	expect_client(&r, GREET "250 ok\r\n");
	run_free(&r);
}

/* ---- §3.6 ---------------------------------------------------------------- */

static void test_s3_6_auth_table_in_session(void **state)
{
	/* Every listener setting, before and after STARTTLS: the refusal or
	 * the AUTH reaching the backend, and AUTH in EHLO exactly when
	 * permitted. */
	for (unsigned bits = 0; bits < 16; bits++) {
		struct smtp_machine_config cfg = cfg_tcp();
		cfg.tcp_auth = bits & 1;
		cfg.tls_auth = bits & 2;
		cfg.starttls = bits & 4;
		cfg.tls_port = bits & 8;
		cfg.max_errors = 0;
		for (int after_starttls = 0; after_starttls < 2; after_starttls++) {
			if (after_starttls && (cfg.tls_port || !cfg.starttls))
				continue;
			bool tls = cfg.tls_port || after_starttls;
			bool permitted = tls ? cfg.tls_auth : cfg.tcp_auth;
			const char *refusal = NULL;
			if (!permitted)
				refusal = !tls && cfg.starttls && cfg.tls_auth ? "530 5.7.0*\r\n"
									       : "502 5.5.1*\r\n";
			struct step s[12];
			size_t n = 0;
			s[n++] = (struct step)B(GREET);
			if (after_starttls) {
				s[n++] = (struct step)C("STARTTLS\r\n");
				s[n++] = (struct step)TLS;
				s[n++] = (struct step)B("250 rset\r\n");
			}
			size_t ehlo = n;
			s[n++] = (struct step)C("EHLO c\r\n");
			s[n++] =
			    (struct step)B("250-backend.test\r\n250-AUTH PLAIN\r\n250 SIZE 1\r\n");
			size_t auth = n;
			s[n++] = (struct step)C("AUTH PLAIN AGEAYg==\r\n");
			s[n++] = (struct step)B("235 2.7.0 ok\r\n");
			s[n] = (struct step)END;
			struct run r;
			play(&cfg, s, &r);
			const char *adv = permitted ? "250-AUTH PLAIN\r\n" : "";
			char want[256];
			snprintf(want, sizeof(want), "250-backend.test\r\n%s250%sSIZE 1\r\n%s", adv,
				 !tls && cfg.starttls ? "-" : " ",
				 !tls && cfg.starttls ? "250 STARTTLS\r\n" : "");
			expect_client_step(&r, ehlo + 1, want);
			if (permitted) {
				expect_backend_step(&r, auth, "AUTH PLAIN AGEAYg==\r\n");
				expect_client_step(&r, auth + 1, "235 2.7.0 ok\r\n");
				assert_true(r.authenticated);
			} else {
				expect_backend_step(&r, auth, "");
				expect_client_step(&r, auth, refusal);
				assert_false(r.authenticated);
				assert_int_equal(r.errors, 1); /* AUTH refusals count */
			}
			run_free(&r);
		}
	}
}

static void test_s3_6_auth_continuation_quit_is_sasl(void **state)
{
	struct smtp_machine_config cfg = cfg_tcp();
	cfg.tcp_auth = true;
	const struct step s[] = {B(GREET), C("AUTH LOGIN\r\n"), B("334 VXNlcm5hbWU6\r\n"),
				 C("QUIT\r\n"), B("334 UGFzc3dvcmQ6\r\n"),
				 /* An HTTP-looking or XCLIENT SASL line: data too. */
				 C("XCLIENT\n"), B("235 2.7.0 Authentication successful\r\n"),
				 C("QUIT\r\n"), B("221 bye\r\n"), END};
	struct run r;
	play(&cfg, s, &r);
	expect_backend(&r, "AUTH LOGIN\r\nQUIT\r\nXCLIENT\r\nQUIT\r\n");
	expect_client(&r, GREET "334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n"
				"235 2.7.0 Authentication successful\r\n221 bye\r\n");
	assert_true(r.authenticated);
	expect_close(&r, 8, CLOSE_QUIT);
	run_free(&r);
}

static void test_s3_6_auth_input_held_until_334(void **state)
{
	struct smtp_machine_config cfg = cfg_tcp();
	cfg.tcp_auth = true;
	const struct step s[] = {B(GREET),
				 C("AUTH LOGIN\r\ndXNlcg==\r\n"),
				 B("334 VXNlcm5hbWU6\r\n"),
				 B("334 UGFzc3dvcmQ6\r\n"),
				 C("cGFzcw==\r\n"),
				 B("235 2.7.0 ok\r\n"),
				 END};
	struct run r;
	play(&cfg, s, &r);
	expect_backend_step(&r, 1, "AUTH LOGIN\r\n");
	expect_backend_step(&r, 2, "dXNlcg==\r\n");
	expect_backend_step(&r, 4, "cGFzcw==\r\n");
	assert_true(r.authenticated);
	run_free(&r);
}

static void test_s3_2_auth_lines_up_to_12288(void **state)
{
	struct smtp_machine_config cfg = cfg_tcp();
	cfg.tcp_auth = true;
	char *cmd = make_line("AUTH PLAIN ", 12288, "\r\n");
	char *cont = make_line("", 12288, "\r\n");
	char *cmd_long = make_line("AUTH PLAIN ", 12289, "\r\n");
	char *plain_long = make_line("NOOP ", 2049, "\r\n");
	char *authx_long = make_line("AUTHX ", 2049, "\r\n"); /* not AUTH */
	const struct step s[] = {B(GREET),
				 CN(cmd, 12288),
				 B("535 5.7.8 no\r\n"),
				 C("AUTH LOGIN\r\n"),
				 B("334 VXNlcm5hbWU6\r\n"),
				 CN(cont, 12288),
				 B("535 5.7.8 no\r\n"),
				 CN(cmd_long, 12289),
				 CN(plain_long, 2049),
				 CN(authx_long, 2049),
				 C("NOOP\r\n"),
				 B("250 ok\r\n"),
				 END};
	struct run r;
	play(&cfg, s, &r);
	expect_backend_step(&r, 1, cmd);
	expect_backend_step(&r, 5, cont);
	expect_backend_step(&r, 7, "");
	expect_backend_step(&r, 8, "");
	expect_backend_step(&r, 9, "");
	expect_client(&r, GREET "535 5.7.8 no\r\n334 VXNlcm5hbWU6\r\n535 5.7.8 no\r\n500 5.5.2*\r\n"
				"500 5.5.2*\r\n500 5.5.2*\r\n250 ok\r\n");
	run_free(&r);
	free(cmd);
	free(cont);
	free(cmd_long);
	free(plain_long);
	free(authx_long);
}

static void test_s7_3_auth_continuation_nul_cancels(void **state)
{
	struct smtp_machine_config cfg = cfg_tcp();
	cfg.tcp_auth = true;
	cfg.max_errors = 2;
	const struct step s[] = {B(GREET),
				 C("AUTH LOGIN\r\n"),
				 B("334 VXNlcm5hbWU6\r\n"),
				 C("dXNl\0cg==\r\n"),
				 B("501 5.7.0 Authentication cancelled\r\n"),
				 C("NOOP\r\n"),
				 B("250 ok\r\n"),
				 END};
	struct run r;
	play(&cfg, s, &r);
	expect_backend(&r, "AUTH LOGIN\r\n*\r\nNOOP\r\n");
	expect_client_step(&r, 3, "");
	/* The backend's reply to "*" is not relayed, and not counted. */
	expect_client_step(&r, 4, "500 5.5.2*\r\n");
	expect_client_step(&r, 6, "250 ok\r\n");
	assert_int_equal(r.errors, 1);
	expect_close(&r, -1, CLOSE_NONE);
	run_free(&r);

	/* A bare CR likewise; an LF-only SASL line is forwarded with CRLF. */
	const struct step t[] = {B(GREET),
				 C("AUTH LOGIN\r\n"),
				 B("334 VXNlcm5hbWU6\r\n"),
				 C("dXNlcg==\n"),
				 B("334 UGFzc3dvcmQ6\r\n"),
				 C("cGF\rzcw==\r\n"),
				 B("501 5.7.0 cancelled\r\n"),
				 END};
	play(&cfg, t, &r);
	expect_backend(&r, "AUTH LOGIN\r\ndXNlcg==\r\n*\r\n");
	expect_client(&r, GREET "334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n500 5.5.2*\r\n");
	run_free(&r);
}

static void test_s7_3_auth_continuation_too_long_cancels(void **state)
{
	/* An over-long SASL line gets 500 5.5.2 like a command line; the
	 * exchange must then end at the backend too, or the client's next
	 * command would be taken as SASL data. */
	struct smtp_machine_config cfg = cfg_tcp();
	cfg.tcp_auth = true;
	char *cont = make_line("", 12289, "\r\n");
	const struct step s[] = {B(GREET),
				 C("AUTH LOGIN\r\n"),
				 B("334 VXNlcm5hbWU6\r\n"),
				 CN(cont, 12289),
				 B("501 5.7.0 cancelled\r\n"),
				 C("XCLIENT ADDR=1.2.3.4\r\n"),
				 END};
	struct run r;
	play(&cfg, s, &r);
	expect_backend(&r, "AUTH LOGIN\r\n*\r\n");
	expect_client(&r, GREET "334 VXNlcm5hbWU6\r\n500 5.5.2*\r\n502 5.5.1*\r\n");
	run_free(&r);
	free(cont);
}

/* ---- §3.6 the SASL user name in the log ---------------------------------- */

#define PLAIN_ALICE "AGFsaWNlAHMzY3JldA=="			       /* "\0alice\0s3cret" */
#define B64_ALICE   "YWxpY2U="					       /* "alice" */
#define B64_SECRET  "czNjcmV0"					       /* "s3cret" */
#define CRAM_TIM    "dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw" /* RFC 2195 */

static const char *const password_secrets[] = {"s3cret", B64_SECRET, PLAIN_ALICE, NULL};

static struct smtp_machine_config cfg_auth(void)
{
	struct smtp_machine_config cfg = cfg_tcp();
	cfg.tcp_auth = true;
	return cfg;
}

/* Plays s with the password as a secret; r gets the whole run. */
static void play_secret(const struct smtp_machine_config *cfg, const struct step *s, struct run *r)
{
	run_secrets = password_secrets;
	play(cfg, s, r);
	run_secrets = NULL;
}

static void expect_user(const struct run *r, const char *user)
{
	if (!user) {
		if (r->has_user)
			fail_msg("user \"%s\", want none", r->user);
		return;
	}
	if (!r->has_user || strcmp(r->user, user) != 0)
		fail_msg("user %s\"%s\", want \"%s\"", r->has_user ? "" : "(none) ", r->user, user);
}

/* Standard base64 with padding, for the test's own payloads. */
static char *b64(const void *p, size_t n)
{
	static const char abc[] =
	    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	const unsigned char *s = p;
	char *out = malloc(4 * ((n + 2) / 3) + 1);
	assert_non_null(out);
	size_t o = 0;
	for (size_t i = 0; i < n; i += 3) {
		unsigned v = (unsigned)s[i] << 16;
		if (i + 1 < n)
			v |= (unsigned)s[i + 1] << 8;
		if (i + 2 < n)
			v |= s[i + 2];
		out[o++] = abc[(v >> 18) & 63];
		out[o++] = abc[(v >> 12) & 63];
		out[o++] = i + 1 < n ? abc[(v >> 6) & 63] : '=';
		out[o++] = i + 2 < n ? abc[v & 63] : '=';
	}
	out[o] = '\0';
	return out;
}

static void test_s3_6_user_plain_initial_response(void **state)
{
	struct smtp_machine_config cfg = cfg_auth();
	const struct step s[] = {B(GREET),
				 C("EHLO c\r\n"),
				 B(EHLO_REPLY),
				 C("AUTH PLAIN " PLAIN_ALICE "\r\n"),
				 B("235 2.7.0 ok\r\n"),
				 END};
	struct run r;
	play_secret(&cfg, s, &r);
	expect_backend_step(&r, 3, "AUTH PLAIN " PLAIN_ALICE "\r\n");
	assert_true(r.authenticated);
	expect_user(&r, "alice");
	run_free(&r);

	/* With an authzid: the authcid is the name, as ever. Lower case. */
	const struct step t[] = {B(GREET), C("auth plain YWRtaW4AYWxpY2UAczNjcmV0\r\n"),
				 B("235 2.7.0 ok\r\n"), END};
	play_secret(&cfg, t, &r);
	expect_user(&r, "alice");
	run_free(&r);
}

static void test_s3_6_user_plain_after_334(void **state)
{
	struct smtp_machine_config cfg = cfg_auth();
	const struct step s[] = {B(GREET),
				 C("AUTH PLAIN\r\n"),
				 B("334 \r\n"),
				 C(PLAIN_ALICE "\n"),
				 B("235 2.7.0 ok\r\n"),
				 END};
	struct run r;
	play_secret(&cfg, s, &r);
	expect_backend(&r, "AUTH PLAIN\r\n" PLAIN_ALICE "\r\n");
	expect_user(&r, "alice");
	run_free(&r);

	/* Nothing is named before the 235. */
	const struct step t[] = {B(GREET), C("AUTH PLAIN\r\n"), B("334 \r\n"),
				 C(PLAIN_ALICE "\r\n"), END};
	play_secret(&cfg, t, &r);
	assert_false(r.authenticated);
	expect_user(&r, NULL);
	run_free(&r);
}

static void test_s3_6_user_login(void **state)
{
	struct smtp_machine_config cfg = cfg_auth();
	const struct step s[] = {B(GREET),
				 C("AUTH LOGIN\r\n"),
				 B("334 VXNlcm5hbWU6\r\n"),
				 C(B64_ALICE "\r\n"),
				 B("334 UGFzc3dvcmQ6\r\n"),
				 C(B64_SECRET "\r\n"),
				 B("235 2.7.0 ok\r\n"),
				 END};
	struct run r;
	play_secret(&cfg, s, &r);
	expect_backend(&r, "AUTH LOGIN\r\n" B64_ALICE "\r\n" B64_SECRET "\r\n");
	expect_user(&r, "alice");
	run_free(&r);

	/* LOGIN's initial response is the user name; the next line is the
	 * password, never read as one. */
	const struct step t[] = {B(GREET),
				 C("AUTH LOGIN " B64_ALICE "\r\n"),
				 B("334 UGFzc3dvcmQ6\r\n"),
				 C(B64_SECRET "\r\n"),
				 B("235 2.7.0 ok\r\n"),
				 END};
	play_secret(&cfg, t, &r);
	expect_user(&r, "alice");
	run_free(&r);

	/* A password line that decodes to a fine name is still not the name:
	 * only the first line after AUTH LOGIN is read. */
	const struct step u[] = {B(GREET),
				 C("AUTH LOGIN\r\n"),
				 B("334 VXNlcm5hbWU6\r\n"),
				 C("!notbase64\r\n"),
				 B("334 UGFzc3dvcmQ6\r\n"),
				 C(B64_SECRET "\r\n"),
				 B("235 2.7.0 ok\r\n"),
				 END};
	play_secret(&cfg, u, &r);
	assert_true(r.authenticated);
	expect_user(&r, NULL);
	run_free(&r);
}

static void test_s3_6_user_cram_md5(void **state)
{
	struct smtp_machine_config cfg = cfg_auth();
	const struct step s[] = {
	    B(GREET),
	    C("AUTH CRAM-MD5\r\n"),
	    B("334 PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2UucmVzdG9uLm1jaS5uZXQ+\r\n"),
	    C(CRAM_TIM "\r\n"),
	    B("235 2.7.0 ok\r\n"),
	    END};
	struct run r;
	play(&cfg, s, &r);
	expect_user(&r, "tim");
	run_free(&r);

	/* A response without a digest names no one. */
	const struct step t[] = {B(GREET),
				 C("AUTH CRAM-MD5\r\n"),
				 B("334 PDE+\r\n"),
				 C("dGltIGI5MTM=\r\n"),
				 B("235 2.7.0 ok\r\n"),
				 END};
	play(&cfg, t, &r);
	assert_true(r.authenticated);
	expect_user(&r, NULL);
	run_free(&r);
}

static void test_s3_6_user_other_mechanisms_none(void **state)
{
	/* Authenticated, but no name read: XOAUTH2, EXTERNAL, and PLAIN with
	 * extra arguments. */
	struct smtp_machine_config cfg = cfg_auth();
	const struct step s[] = {B(GREET), C("AUTH XOAUTH2 dG9rZW4=\r\n"), B("235 2.7.0 ok\r\n"),
				 END};
	struct run r;
	play(&cfg, s, &r);
	assert_true(r.authenticated);
	expect_user(&r, NULL);
	run_free(&r);

	const struct step t[] = {B(GREET), C("AUTH EXTERNAL =\r\n"), B("235 2.7.0 ok\r\n"), END};
	play(&cfg, t, &r);
	assert_true(r.authenticated);
	expect_user(&r, NULL);
	run_free(&r);

	const struct step u[] = {B(GREET), C("AUTH PLAIN " PLAIN_ALICE " x\r\n"),
				 B("235 2.7.0 ok\r\n"), END};
	play_secret(&cfg, u, &r);
	assert_true(r.authenticated);
	expect_user(&r, NULL);
	run_free(&r);
}

static void test_s3_6_user_failed_535_forgotten(void **state)
{
	/* alice fails; a later exchange that names no one succeeds: the log
	 * must not name alice. */
	struct smtp_machine_config cfg = cfg_auth();
	const struct step s[] = {B(GREET),
				 C("AUTH LOGIN\r\n"),
				 B("334 VXNlcm5hbWU6\r\n"),
				 C(B64_ALICE "\r\n"),
				 B("334 UGFzc3dvcmQ6\r\n"),
				 C(B64_SECRET "\r\n"),
				 B("535 5.7.8 bad credentials\r\n"),
				 C("AUTH EXTERNAL\r\n"),
				 B("235 2.7.0 ok\r\n"),
				 END};
	struct run r;
	play_secret(&cfg, s, &r);
	assert_true(r.authenticated);
	expect_user(&r, NULL);
	run_free(&r);

	/* A 535 alone: not authenticated, no name. */
	const struct step t[] = {B(GREET), C("AUTH PLAIN " PLAIN_ALICE "\r\n"),
				 B("535 5.7.8 bad credentials\r\n"), END};
	play_secret(&cfg, t, &r);
	assert_false(r.authenticated);
	expect_user(&r, NULL);
	run_free(&r);

	/* A second AUTH after success is refused (RFC 4954 §4: 503): the
	 * first name stays. */
	const struct step u[] = {B(GREET),
				 C("AUTH PLAIN " PLAIN_ALICE "\r\n"),
				 B("235 2.7.0 ok\r\n"),
				 C("AUTH PLAIN AGJvYgBzM2NyZXQ=\r\n"),
				 B("503 5.5.1 already authenticated\r\n"),
				 END};
	play_secret(&cfg, u, &r);
	expect_user(&r, "alice");
	run_free(&r);
}

static void test_s3_6_user_cancel_forgotten(void **state)
{
	struct smtp_machine_config cfg = cfg_auth();
	/* The client cancels with "*" (the backend's 501 ends it). */
	const struct step s[] = {B(GREET),
				 C("AUTH LOGIN\r\n"),
				 B("334 VXNlcm5hbWU6\r\n"),
				 C(B64_ALICE "\r\n"),
				 B("334 UGFzc3dvcmQ6\r\n"),
				 C("*\r\n"),
				 B("501 5.7.0 cancelled\r\n"),
				 C("AUTH EXTERNAL\r\n"),
				 B("235 2.7.0 ok\r\n"),
				 END};
	struct run r;
	play(&cfg, s, &r);
	/* "*" reaches the backend as it is, in its own step, and the backend's
	 * 501 is relayed to the client in the step it arrives. */
	expect_backend_step(&r, 5, "*\r\n");
	expect_client_step(&r, 6, "501 5.7.0 cancelled\r\n");
	expect_backend(&r, "AUTH LOGIN\r\n" B64_ALICE "\r\n*\r\nAUTH EXTERNAL\r\n");
	expect_client(&r, GREET "334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n"
				"501 5.7.0 cancelled\r\n235 2.7.0 ok\r\n");
	assert_true(r.authenticated);
	expect_user(&r, NULL);
	run_free(&r);

	/* tlsfront cancels (§7.3, a NUL in the password line); the backend's
	 * answer to "*" is its own, and a later 235 names no one. */
	const struct step t[] = {B(GREET),
				 C("AUTH LOGIN " B64_ALICE "\r\n"),
				 B("334 UGFzc3dvcmQ6\r\n"),
				 C("czNj\0cmV0\r\n"),
				 B("501 5.7.0 cancelled\r\n"),
				 C("AUTH EXTERNAL\r\n"),
				 B("235 2.7.0 ok\r\n"),
				 END};
	play(&cfg, t, &r);
	expect_backend(&r, "AUTH LOGIN " B64_ALICE "\r\n*\r\nAUTH EXTERNAL\r\n");
	assert_true(r.authenticated);
	expect_user(&r, NULL);
	run_free(&r);

	/* "*" as LOGIN's first line is a cancel, not a name. */
	const struct step u[] = {
	    B(GREET),	C("AUTH LOGIN\r\n"),	       B("334 VXNlcm5hbWU6\r\n"),
	    C("*\r\n"), B("235 2.7.0 odd but ok\r\n"), END};
	play(&cfg, u, &r);
	expect_user(&r, NULL);
	run_free(&r);
}

static void test_s3_6_user_forgotten_after_starttls(void **state)
{
	/* RFC 3207 §4.2: nothing of the plaintext phase survives STARTTLS. */
	struct smtp_machine_config cfg = cfg_auth();
	const struct step s[] = {B(GREET),
				 C("AUTH PLAIN " PLAIN_ALICE "\r\n"),
				 B("235 2.7.0 ok\r\n"),
				 C("STARTTLS\r\n"),
				 TLS,
				 B("250 rset\r\n"),
				 END};
	struct run r;
	play_secret(&cfg, s, &r);
	assert_false(r.authenticated);
	expect_user(&r, NULL);
	run_free(&r);

	/* A candidate of an exchange still running before the STARTTLS is
	 * gone too. */
	const struct step t[] = {B(GREET),
				 C("AUTH PLAIN " PLAIN_ALICE "\r\n"),
				 B("535 5.7.8 no\r\n"),
				 C("STARTTLS\r\n"),
				 TLS,
				 B("250 rset\r\n"),
				 C("EHLO c\r\n"),
				 B(EHLO_REPLY),
				 C("AUTH EXTERNAL\r\n"),
				 B("235 2.7.0 ok\r\n"),
				 END};
	play_secret(&cfg, t, &r);
	assert_true(r.authenticated);
	expect_user(&r, NULL);
	run_free(&r);
}

static void test_s3_6_user_invalid_or_too_long_none(void **state)
{
	struct smtp_machine_config cfg = cfg_auth();
	struct run r;
	/* Not base64, bad padding, base64 of no name, of names a log line
	 * must not hold (a control byte, invalid UTF-8): authenticated, no
	 * name. */
	static const char *const bad[] = {
	    "AUTH PLAIN !!!!\r\n",
	    "AUTH PLAIN AGFsaWNlAHMzY3JldA=\r\n",   /* padding cut short */
	    "AUTH PLAIN AGFsaWNlAHMzY3JldA===\r\n", /* too much padding */
	    "AUTH PLAIN AGFsa WNlAHMzY3JldA==\r\n", /* more arguments */
	    "AUTH PLAIN YWxpY2UAczNjcmV0\r\n",	    /* one NUL only */
	    "AUTH PLAIN AABzM2NyZXQ=\r\n",	    /* empty authcid */
	    "AUTH PLAIN =\r\n",			    /* empty message */
	    "AUTH PLAIN AGFsAWljZQBzM2NyZXQ=\r\n",  /* "al\x01ice" */
	    "AUTH PLAIN AGFs/2ljZQBzM2NyZXQ=\r\n",  /* "al\xffice" */
	};
	for (size_t i = 0; i < COUNT(bad); i++) {
		const struct step s[] = {B(GREET), CN(bad[i], strlen(bad[i])),
					 B("235 2.7.0 ok\r\n"), END};
		play_secret(&cfg, s, &r);
		assert_true(r.authenticated);
		if (r.has_user)
			fail_msg("%s gave user \"%s\"", bad[i], r.user);
		run_free(&r);
	}

	/* LOGIN: 255 bytes are kept, 256 are too long. */
	char name[300];
	memset(name, 'a', sizeof(name));
	for (size_t len = 255; len <= 256; len++) {
		char *enc = b64(name, len);
		char line[512];
		int n = snprintf(line, sizeof(line), "%s\r\n", enc);
		const struct step s[] = {B(GREET),
					 C("AUTH LOGIN\r\n"),
					 B("334 VXNlcm5hbWU6\r\n"),
					 CN(line, (size_t)n),
					 B("334 UGFzc3dvcmQ6\r\n"),
					 C(B64_SECRET "\r\n"),
					 B("235 2.7.0 ok\r\n"),
					 END};
		run_secrets = password_secrets;
		run_script(&cfg, s, (size_t)-1, 0, 0, &r);
		run_secrets = NULL;
		assert_true(r.authenticated);
		if (len == 255) {
			assert_true(r.has_user);
			assert_int_equal(strlen(r.user), 255);
		} else {
			expect_user(&r, NULL);
		}
		run_free(&r);
		free(enc);
	}

	/* PLAIN: a message longer than any honest one names no one, though
	 * its authcid is short. */
	unsigned char msg[1100];
	memset(msg, 'p', sizeof(msg));
	memcpy(msg, "\0bob\0", 5);
	char *enc = b64(msg, sizeof(msg));
	size_t len = strlen("AUTH PLAIN ") + strlen(enc) + 2;
	char *line = malloc(len + 1);
	assert_non_null(line);
	snprintf(line, len + 1, "AUTH PLAIN %s\r\n", enc);
	const struct step s[] = {B(GREET), CN(line, len), B("235 2.7.0 ok\r\n"), END};
	run_script(&cfg, s, (size_t)-1, 0, 0, &r);
	assert_true(r.authenticated);
	expect_user(&r, NULL);
	run_free(&r);
	free(line);
	free(enc);
}

static void test_s3_6_user_quoting_left_to_the_log(void **state)
{
	/* Printable names a key=value log must quote (space, '"', '\\') and
	 * UTF-8 are kept as they are; log_value() quotes them. */
	struct smtp_machine_config cfg = cfg_auth();
	const struct step s[] = {B(GREET), C("AUTH PLAIN AGrDvHJnZW4gInEiIGJccwBzM2NyZXQ=\r\n"),
				 B("235 2.7.0 ok\r\n"), END};
	struct run r;
	play_secret(&cfg, s, &r);
	expect_user(&r, "j\xc3\xbcrgen \"q\" b\\s");
	run_free(&r);
}

static void test_s3_6_sasl_line_wiped_from_held_input(void **state)
{
	/* The SASL line is wiped before the held input moves on: the bytes
	 * it filled hold no copy once the next (incomplete) line moves down.
	 * Only the bytes this feed wrote are looked at. */
	struct smtp_machine_config cfg = cfg_auth();
	struct smtp_machine m;
	smtp_machine_init(&m, &cfg);
	smtp_machine_feed_backend(&m, GREET, strlen(GREET));
	smtp_machine_feed_client(&m, "AUTH PLAIN\r\n", 12);
	smtp_machine_feed_backend(&m, "334 \r\n", 6);
	static const char more[] = PLAIN_ALICE "\r\nNOOP";
	smtp_machine_feed_client(&m, more, sizeof(more) - 1);
	assert_int_equal(m.in.len, 4);
	assert_memory_equal(m.in.data, "NOOP", 4);
	assert_true(m.in.cap >= sizeof(more) - 1);
	assert_null(memmem(m.in.data, sizeof(more) - 1, "AGFs", 4));
	assert_null(memmem(m.in.data, sizeof(more) - 1, "JldA", 4));
	assert_non_null(memmem(m.act.to_backend.data, m.act.to_backend.len, PLAIN_ALICE, 20));
	smtp_machine_free(&m);
}

static void test_s3_6_sasl_user_functions(void **state)
{
	const char *ir;
	size_t ir_len;
	assert_int_equal(sasl_auth_line("AUTH PLAIN", 10, &ir, &ir_len), SASL_MECH_PLAIN);
	assert_null(ir);
	assert_int_equal(sasl_auth_line("auth\tlogin  YWxpY2U= ", 21, &ir, &ir_len),
			 SASL_MECH_LOGIN);
	assert_non_null(ir);
	assert_int_equal(ir_len, 8);
	assert_memory_equal(ir, "YWxpY2U=", 8);
	assert_int_equal(sasl_auth_line("AUTH cram-md5", 13, &ir, &ir_len), SASL_MECH_CRAM_MD5);
	assert_int_equal(sasl_auth_line("AUTH", 4, &ir, &ir_len), SASL_MECH_OTHER);
	assert_int_equal(sasl_auth_line("AUTH PLAINX", 11, &ir, &ir_len), SASL_MECH_OTHER);
	assert_int_equal(sasl_auth_line("AUTH PLAIN a b", 14, &ir, &ir_len), SASL_MECH_OTHER);
	assert_null(ir);

	/* The output buffer holds the name and nothing of the password. */
	char out[SASL_USER_SIZE];
	memset(out, 'X', sizeof(out));
	assert_true(sasl_user_extract(SASL_MECH_PLAIN, PLAIN_ALICE, strlen(PLAIN_ALICE), out));
	assert_string_equal(out, "alice");
	assert_null(memmem(out, sizeof(out), "s3cret", 6));
	assert_null(memmem(out, sizeof(out), "s3c", 3));
	/* Unpadded base64 is read too. */
	assert_true(sasl_user_extract(SASL_MECH_LOGIN, "YWxpY2U", 7, out));
	assert_string_equal(out, "alice");
	assert_false(sasl_user_extract(SASL_MECH_OTHER, "YWxpY2U=", 8, out));
	assert_string_equal(out, "");
	assert_false(sasl_user_extract(SASL_MECH_LOGIN, "Y", 1, out));
	assert_string_equal(out, "");

	assert_true(sasl_user_acceptable("alice@example.org", 17));
	assert_true(sasl_user_acceptable("\xe2\x82\xac", 3));	  /* U+20AC */
	assert_true(sasl_user_acceptable("\xf0\x9f\x98\x80", 4)); /* U+1F600 */
	assert_false(sasl_user_acceptable("", 0));
	assert_false(sasl_user_acceptable("a\nb", 3));
	assert_false(sasl_user_acceptable("a\x7f", 2));
	assert_false(sasl_user_acceptable("\xc2\x85", 2));	   /* C1 NEL */
	assert_false(sasl_user_acceptable("\xc0\xaf", 2));	   /* overlong '/' */
	assert_false(sasl_user_acceptable("\xed\xa0\x80", 3));	   /* surrogate */
	assert_false(sasl_user_acceptable("\xf4\x90\x80\x80", 4)); /* > U+10FFFF */
	assert_false(sasl_user_acceptable("\xe2\x82", 2));	   /* truncated */
}

/* ---- §3.7 ---------------------------------------------------------------- */

#define TO_DATA B(GREET), C(ENVELOPE), B("250 ok\r\n250 ok\r\n354 go ahead\r\n")

static void test_s3_7_held_before_354_then_sent(void **state)
{
	struct smtp_machine_config cfg = cfg_tcp();
	const struct step s[] = {B(GREET),
				 C(ENVELOPE "Subject: x\r\n\r\nbody\r\n"),
				 B("250 ok\r\n250 ok\r\n"),
				 C(".\r\nQUIT\r\n"),
				 B("354 go ahead\r\n"),
				 B("250 2.0.0 queued\r\n221 bye\r\n"),
				 END};
	struct run r;
	play(&cfg, s, &r);
	expect_backend_step(&r, 1, ENVELOPE);
	expect_backend_step(&r, 2, "");
	expect_backend_step(&r, 3, "");
	expect_backend_step(&r, 4, "Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n");
	expect_client(&r,
		      GREET "250 ok\r\n250 ok\r\n354 go ahead\r\n250 2.0.0 queued\r\n221 bye\r\n");
	expect_close(&r, 5, CLOSE_QUIT);
	assert_int_equal(r.messages, 1);
	run_free(&r);
}

static void test_s3_7_held_discarded_when_data_refused(void **state)
{
	struct smtp_machine_config cfg = cfg_tcp();
	const struct step s[] = {B(GREET),
				 C(ENVELOPE "Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n"),
				 B("250 ok\r\n550 5.1.1 no\r\n554 5.5.1 no valid recipients\r\n"),
				 C("NOOP\r\n"),
				 B("250 ok\r\n"),
				 END};
	struct run r;
	play(&cfg, s, &r);
	expect_backend(&r, ENVELOPE "NOOP\r\n");
	expect_client(&r, GREET "250 ok\r\n550 5.1.1 no\r\n554 5.5.1 no valid recipients\r\n"
				"250 ok\r\n");
	assert_int_equal(r.errors, 1); /* the held bytes: one error */
	expect_close(&r, -1, CLOSE_NONE);
	run_free(&r);

	/* Nothing held: no error. */
	const struct step t[] = {B(GREET), C(ENVELOPE), B("250 ok\r\n250 ok\r\n554 5.5.1 no\r\n"),
				 END};
	play(&cfg, t, &r);
	assert_int_equal(r.errors, 0);
	run_free(&r);

	/* The discarded bytes as the Nth error. */
	cfg.max_errors = 1;
	const struct step u[] = {B(GREET), C(ENVELOPE "body\r\n"),
				 B("250 ok\r\n250 ok\r\n554 5.5.1 no\r\n"), C("NOOP\r\n"), END};
	play(&cfg, u, &r);
	expect_client(&r, GREET "250 ok\r\n250 ok\r\n554 5.5.1 no\r\n421 4.7.0 *\r\n");
	expect_backend(&r, ENVELOPE);
	expect_close(&r, 2, CLOSE_POLICY);
	run_free(&r);
}

static void test_s3_7_true_end_of_data_only(void **state)
{
	struct smtp_machine_config cfg = cfg_tcp();
	/* None of these is an end of data; QUIT stays content. */
	const struct step s[] = {TO_DATA,
				 C("a\n.\nQUIT\r\nb\r.\rQUIT\r\nc\n.\r\nQUIT\r\n"),
				 C("d\r\n.\nQUIT\r\n"),
				 C("e\r\n.x\r\n..\r\n"),
				 C(".\r\n"),
				 B("250 2.0.0 queued\r\n"),
				 END};
	struct run r;
	play(&cfg, s, &r);
	expect_backend_step(&r, 3, "a\r\n..\r\nQUIT\r\nb\r\n..\r\nQUIT\r\nc\r\n..\r\nQUIT\r\n");
	expect_backend_step(&r, 4, "d\r\n\r\nQUIT\r\n");
	expect_backend_step(&r, 5, "e\r\nx\r\n..\r\n");
	expect_backend_step(&r, 6, ".\r\n");
	expect_client_step(&r, 6, ""); /* only the backend answers end of data */
	expect_client_step(&r, 7, "250 2.0.0 queued\r\n");
	run_free(&r);
}

static void test_s3_7_dot_stuffing_preserved(void **state)
{
	struct smtp_machine_config cfg = cfg_tcp();
	const struct step s[] = {TO_DATA, C("..line\r\n...\r\n..\r\nx.y\r\n .\r\n.\r\n"),
				 B("250 ok\r\n"), END};
	struct run r;
	play(&cfg, s, &r);
	expect_backend_step(&r, 3, "..line\r\n...\r\n..\r\nx.y\r\n .\r\n.\r\n");
	run_free(&r);
}

static void test_s3_7_sanitize_bare_newlines(void **state)
{
	static const struct {
		const char *in, *out;
	} cases[] = {
	    {"a\n.\nb\r\n.\r\n", "a\r\n..\r\nb\r\n.\r\n"},
	    {"a\r.\rb\r\n.\r\n", "a\r\n..\r\nb\r\n.\r\n"},
	    {"a\n.\r\nb\r\n.\r\n", "a\r\n..\r\nb\r\n.\r\n"},
	    {".\nb\r\n.\r\n", "\r\nb\r\n.\r\n"},
	    {".\r.\r\n.\r\n", "\r\n..\r\n.\r\n"},
	    {"\r.\r\n.\r\n", "\r\n..\r\n.\r\n"},
	    {"a\rb\r\n.\r\n", "a\r\nb\r\n.\r\n"},
	    {"a\r\r\n.\r\n", "a\r\n\r\n.\r\n"},
	    {"a\n\n.\r\n.\r\n", "a\r\n\r\n..\r\n.\r\n"},
	    {"x\n..\n.\r\n.\r\n", "x\r\n...\r\n..\r\n.\r\n"},
	    {".x\r\n.\r\n", "x\r\n.\r\n"},
	    {"\r\n.\r\n", "\r\n.\r\n"},
	    {".\r\n", ".\r\n"},
	    {"\n.\n.\r\n.\r\n", "\r\n..\r\n..\r\n.\r\n"},
	};
	struct smtp_machine_config cfg = cfg_tcp();
	for (size_t i = 0; i < COUNT(cases); i++) {
		const struct step s[] = {TO_DATA, CN(cases[i].in, strlen(cases[i].in)),
					 B("250 ok\r\n"), END};
		struct run r;
		play(&cfg, s, &r);
		const char *p = r.backend.data + r.backend_at[3];
		size_t n = r.backend_at[4] - r.backend_at[3];
		if (n != strlen(cases[i].out) || memcmp(p, cases[i].out, n) != 0) {
			print_escaped("in", cases[i].in, strlen(cases[i].in));
			print_escaped("got", p, n);
			print_escaped("want", cases[i].out, strlen(cases[i].out));
			fail_msg("sanitize case %zu", i);
		}
		expect_client_step(&r, 4, "250 ok\r\n");
		run_free(&r);
	}
}

static void test_s3_7_reject_mode(void **state)
{
	struct smtp_machine_config cfg = cfg_tcp();
	cfg.reject_bare = true;
	const struct step s[] = {TO_DATA,
				 C("Subject: x\r\n\r\nline1\r\n"),
				 C("\nrest\r\n.\n"),
				 C("more\r\n"),
				 BACKEND_CLOSED,
				 C(".\r\nNOOP\r\n"),
				 END};
	struct run r;
	play(&cfg, s, &r);
	expect_backend_step(&r, 3, "Subject: x\r\n\r\nline1\r\n");
	assert_true(r.flags[4] & F_DROP);
	expect_backend_step(&r, 4, "");
	expect_backend_step(&r, 5, "");
	expect_client_step(&r, 6, "");
	expect_client_step(&r, 7, "550 5.5.2*\r\n421 4.7.0 *\r\n");
	expect_close(&r, 7, CLOSE_POLICY);
	run_free(&r);

	/* A bare CR, in held bytes before 354; everything in one go. */
	const struct step t[] = {B(GREET), C(ENVELOPE "a\rb\r\n.\r\nNOOP\r\n"),
				 B("250 ok\r\n250 ok\r\n354 go\r\n"), END};
	play(&cfg, t, &r);
	assert_true(r.flags[2] & F_DROP);
	expect_backend(&r, ENVELOPE);
	expect_client(&r, GREET "250 ok\r\n250 ok\r\n354 go\r\n550 5.5.2*\r\n421 4.7.0 *\r\n");
	expect_close(&r, 2, CLOSE_POLICY);
	run_free(&r);
}

static void test_s3_7_reject_mode_nothing_sent_with_bare_lf(void **state)
{
	/* Content before the bare LF in the same feed is not handed out: the
	 * backend is dropped unflushed. */
	struct smtp_machine_config cfg = cfg_tcp();
	cfg.reject_bare = true;
	const struct step s[] = {TO_DATA, C("clean\r\nbad\nline\r\n.\r\n"), END};
	struct run r;
	run_script(&cfg, s, (size_t)-1, 0, 0, &r);
	assert_true(r.flags[3] & F_DROP);
	expect_backend_step(&r, 3, "");
	expect_client_step(&r, 3, "550 5.5.2*\r\n421 4.7.0 *\r\n");
	run_free(&r);
}

static void test_s3_7_reject_mode_max_errors(void **state)
{
	/* The 550 as the Nth error: one 421, not two. */
	struct smtp_machine_config cfg = cfg_tcp();
	cfg.reject_bare = true;
	cfg.max_errors = 2;
	const struct step s[] = {B(GREET),
				 C("FOO\r\n"),
				 B("500 5.5.2 unknown\r\n"),
				 C(ENVELOPE),
				 B("250 ok\r\n250 ok\r\n354 go\r\n"),
				 C("\nb\r\n.\r\n"),
				 END};
	struct run r;
	play(&cfg, s, &r);
	expect_client_step(&r, 5, "550 5.5.2*\r\n421 4.7.0 *\r\n");
	expect_close(&r, 5, CLOSE_POLICY);
	run_free(&r);
}

static void test_s3_7_commands_after_end_of_data(void **state)
{
	struct smtp_machine_config cfg = cfg_tcp();
	const struct step s[] = {TO_DATA,
				 C("body\r\n.\r\nMAIL FROM:<e@f>\r\nXCLIENT A=1\r\nRCPT "
				   "TO:<g@h>\r\nDATA\r\nnext\r\n.\r\n"),
				 B("250 2.0.0 queued 1\r\n250 ok\r\n250 ok\r\n354 go\r\n"),
				 B("250 2.0.0 queued 2\r\n"), END};
	struct run r;
	play(&cfg, s, &r);
	expect_backend_step(&r, 3, "body\r\n.\r\nMAIL FROM:<e@f>\r\nRCPT TO:<g@h>\r\nDATA\r\n");
	expect_client_step(&r, 3, "");
	expect_backend_step(&r, 4, "next\r\n.\r\n");
	expect_client_step(&r, 4,
			   "250 2.0.0 queued 1\r\n250 ok\r\n502 5.5.1*\r\n250 ok\r\n354 go\r\n");
	expect_client_step(&r, 5, "250 2.0.0 queued 2\r\n");
	assert_int_equal(r.messages, 2);
	run_free(&r);
}

static void test_s3_7_data_progress_on_every_byte(void **state)
{
	struct smtp_machine_config cfg = cfg_tcp();
	const struct step s[] = {TO_DATA, C("x"), C("y"), C("\r\n.\r\n"), END};
	struct run r;
	play(&cfg, s, &r);
	assert_true(r.flags[3] & F_PROGRESS);
	assert_true(r.flags[4] & F_PROGRESS);
	run_free(&r);
}

static uint64_t rng_state;

static uint64_t rng(void)
{
	/* xorshift64*: a fixed seed keeps the test repeatable. */
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 2685821657736338717ULL;
}

static void test_s3_7_large_message_byte_identical(void **state)
{
	struct smtp_machine_config cfg = cfg_tcp();
	size_t size = 1 << 20;
	char *msg = malloc(size + 16);
	assert_non_null(msg);
	rng_state = 42;
	size_t n = 0;
	while (n < size) {
		/* Canonical lines of varied length, some dot-stuffed. */
		size_t len = rng() % 200;
		if (rng() % 10 == 0 && n + 2 < size)
			msg[n++] = '.', msg[n++] = '.';
		for (size_t i = 0; i < len && n < size; i++) {
			char c = (char)(' ' + rng() % 95);
			/* An unstuffed leading dot is not canonical. */
			msg[n++] = i == 0 && c == '.' ? 'x' : c;
		}
		msg[n++] = '\r';
		msg[n++] = '\n';
	}
	memcpy(msg + n, ".\r\n", 3);
	size_t total = n + 3;

	struct smtp_machine m;
	smtp_machine_init(&m, &cfg);
	smtp_machine_feed_backend(&m, GREET, sizeof(GREET) - 1);
	smtp_machine_feed_client(&m, ENVELOPE, sizeof(ENVELOPE) - 1);
	const char r354[] = "250 ok\r\n250 ok\r\n354 go\r\n";
	smtp_machine_feed_backend(&m, r354, sizeof(r354) - 1);
	assert_int_equal(m.phase, PHASE_DATA);
	smtp_machine_clear_actions(&m);
	m.act.to_client.len = m.act.to_backend.len = 0;
	struct buf out = {0};
	for (size_t off = 0; off < total; off += 4096) {
		size_t len = total - off < 4096 ? total - off : 4096;
		smtp_machine_feed_client(&m, msg + off, len);
		assert_true(buf_append(&out, m.act.to_backend.data, m.act.to_backend.len));
		assert_int_equal(m.act.to_client.len, 0);
		m.act.to_backend.len = 0;
		assert_int_equal(m.in.len, 0); /* never buffers the message */
		smtp_machine_clear_actions(&m);
	}
	assert_int_equal(out.len, total);
	assert_memory_equal(out.data, msg, total);
	smtp_machine_feed_backend(&m, "250 ok\r\n", 8);
	assert_int_equal(m.act.to_client.len, 8);
	assert_int_equal(m.messages, 1);
	buf_free(&out);
	smtp_machine_free(&m);
	free(msg);
}

/* RFC 5321 reading of content (without the final ".\r\n"): lines end only at
 * CRLF, one leading dot is removed, bare CR and bare LF become CRLF. */
static void model_content(const char *in, size_t n, struct buf *out)
{
	size_t i = 0;
	while (i < n) {
		const char *crlf = memmem(in + i, n - i, "\r\n", 2);
		size_t end = crlf ? (size_t)(crlf - in) : n;
		size_t j = i;
		if (j < end && in[j] == '.')
			j++;
		for (; j < end; j++) {
			if (in[j] == '\r' || in[j] == '\n')
				assert_true(buf_append(out, "\r\n", 2));
			else
				assert_true(buf_append(out, in + j, 1));
		}
		if (crlf)
			assert_true(buf_append(out, "\r\n", 2));
		i = crlf ? end + 2 : n;
	}
}

static void test_s3_7_property_sanitize_random(void **state)
{
	static const char alphabet[] = {'a', '.', '\r', '\n'};
	struct smtp_machine_config cfg = cfg_tcp();
	rng_state = 0x5eed5eed;
	unsigned tested = 0;
	for (unsigned iter = 0; iter < 20000 && tested < 3000; iter++) {
		char in[128];
		size_t n = rng() % 64;
		for (size_t i = 0; i < n; i++)
			in[i] = alphabet[rng() % 4];
		memcpy(in + n, "\r\n.\r\n", 5);
		/* The one true end must be the one we append: no "CRLF.CRLF"
		 * (or a leading ".CRLF") earlier. */
		char framed[160] = "\r\n";
		memcpy(framed + 2, in, n + 5);
		const char *first = memmem(framed, n + 7, "\r\n.\r\n", 5);
		if ((size_t)(first - framed) != n + 2)
			continue;
		tested++;

		struct smtp_machine m;
		smtp_machine_init(&m, &cfg);
		smtp_machine_feed_backend(&m, GREET, sizeof(GREET) - 1);
		smtp_machine_feed_client(&m, ENVELOPE, sizeof(ENVELOPE) - 1);
		const char r354[] = "250 ok\r\n250 ok\r\n354 go\r\n";
		smtp_machine_feed_backend(&m, r354, sizeof(r354) - 1);
		m.act.to_backend.len = 0;
		/* Split at a random point too. */
		size_t k = rng() % (n + 6);
		smtp_machine_feed_client(&m, in, k);
		smtp_machine_feed_client(&m, in + k, n + 5 - k);
		assert_int_equal(m.phase, PHASE_COMMAND);
		const char *o = m.act.to_backend.data;
		size_t on = m.act.to_backend.len;

		size_t at;
		if (!canonical(o, on, &at)) {
			print_escaped("in", in, n + 5);
			print_escaped("out", o, on);
			fail_msg("bare CR or LF at %zu", at);
		}
		/* Ends with the end of data, and only there. */
		assert_true(on >= 3 && memcmp(o + on - 3, ".\r\n", 3) == 0);
		struct buf ob = {0};
		assert_true(buf_append(&ob, "\r\n", 2));
		assert_true(buf_append(&ob, o, on));
		const char *e = memmem(ob.data, ob.len, "\r\n.\r\n", 5);
		if (!e || (size_t)(e - ob.data) != ob.len - 5) {
			print_escaped("in", in, n + 5);
			print_escaped("out", o, on);
			fail_msg("early end of data in the output");
		}
		/* Un-stuffing the output gives the RFC 5321 reading. */
		struct buf want = {0}, got = {0};
		model_content(in, n + 2, &want);
		size_t i = 0, body = on - 3;
		while (i < body) {
			const char *crlf = memmem(o + i, body - i, "\r\n", 2);
			assert_non_null(crlf);
			size_t end = (size_t)(crlf - o);
			size_t j = i + (o[i] == '.' ? 1 : 0);
			/* Every line starting with '.' was stuffed. */
			if (o[i] == '.')
				assert_true(end > i + 1 && o[i + 1] == '.');
			assert_true(buf_append(&got, o + j, end - j));
			assert_true(buf_append(&got, "\r\n", 2));
			i = end + 2;
		}
		if (!same_buf(&want, &got)) {
			print_escaped("in", in, n + 5);
			print_escaped("out", o, on);
			print_escaped("model", want.data, want.len);
			fail_msg("content changed");
		}
		buf_free(&ob);
		buf_free(&want);
		buf_free(&got);
		smtp_machine_free(&m);
	}
	assert_true(tested >= 1000);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_s3_1_greeting_220_relayed),
	    cmocka_unit_test(test_s3_1_greeting_554_relayed),
	    cmocka_unit_test(test_s3_1_commands_before_greeting_held),
	    cmocka_unit_test(test_s3_1_backend_unavailable_421_4_3_2),
	    cmocka_unit_test(test_s3_1_limit_421_4_7_0),
	    cmocka_unit_test(test_s3_3_xclient_handshake),
	    cmocka_unit_test(test_s3_3_xclient_not_offered_421_4_3_5),
	    cmocka_unit_test(test_s3_3_xclient_refused_421_4_3_5),
	    cmocka_unit_test(test_s3_3_xclient_ehlo_421_gives_421_4_3_5),
	    cmocka_unit_test(test_s3_3_xclient_reply_421_gives_421_4_3_5),
	    cmocka_unit_test(test_s3_3_xclient_done_backend_421_passed_on),
	    cmocka_unit_test(test_s3_3_xclient_greeting_554_relayed),
	    cmocka_unit_test(test_s3_2_pipelining_replies_in_order),
	    cmocka_unit_test(test_s3_2_pipelining_local_refusal_in_turn),
	    cmocka_unit_test(test_s3_2_pipelining_fifo_bound),
	    cmocka_unit_test(test_s3_2_multiline_replies),
	    cmocka_unit_test(test_s3_2_lf_only_command_forwarded_crlf),
	    cmocka_unit_test(test_s3_2_nul_in_command_500_5_5_2),
	    cmocka_unit_test(test_s3_2_bare_cr_in_command_500_5_5_2),
	    cmocka_unit_test(test_s3_2_long_line_500_session_goes_on),
	    cmocka_unit_test(test_s3_2_long_line_in_many_small_pieces),
	    cmocka_unit_test(test_s3_2_idle_progress_only_on_complete_line),
	    cmocka_unit_test(test_s7_1_max_errors_local_refusals),
	    cmocka_unit_test(test_s7_1_max_errors_backend_500_504),
	    cmocka_unit_test(test_s7_1_failed_auth_535_not_counted),
	    cmocka_unit_test(test_s7_1_accepted_message_resets_count),
	    cmocka_unit_test(test_s7_1_closing_reply_has_enhanced_code_first),
	    cmocka_unit_test(test_s7_1_max_errors_on_data_refusal_closes),
	    cmocka_unit_test(test_s7_1_max_errors_on_greeting_closes),
	    cmocka_unit_test(test_s3_2_http_lines_221_2_7_0_close),
	    cmocka_unit_test(test_s3_2_xclient_xforward_502_never_forwarded),
	    cmocka_unit_test(test_s3_2_verbs_case_insensitive),
	    cmocka_unit_test(test_s3_2_unknown_commands_passed_unchanged),
	    cmocka_unit_test(test_s3_2_quit_221_relayed_close_quit),
	    cmocka_unit_test(test_s3_2_backend_closed_421_4_3_0),
	    cmocka_unit_test(test_s3_2_backend_421_passed_on_once),
	    cmocka_unit_test(test_s3_2_unsolicited_backend_reply_421),
	    cmocka_unit_test(test_s3_2_timeout_421_4_4_2),
	    cmocka_unit_test(test_s3_2_shutdown_421),
	    cmocka_unit_test(test_s3_2_malformed_backend_reply_421),
	    cmocka_unit_test(test_s3_4_ehlo_rewrite_tcp_port),
	    cmocka_unit_test(test_s3_4_ehlo_auth_kept_when_permitted),
	    cmocka_unit_test(test_s3_4_ehlo_no_starttls_when_disabled),
	    cmocka_unit_test(test_s3_4_ehlo_tls_port),
	    cmocka_unit_test(test_s3_4_ehlo_after_starttls),
	    cmocka_unit_test(test_s3_4_ehlo_single_line_gains_starttls),
	    cmocka_unit_test(test_s3_4_ehlo_continuation_marks),
	    cmocka_unit_test(test_s3_4_ehlo_keywords_case_insensitive),
	    cmocka_unit_test(test_s3_4_non_250_ehlo_unchanged),
	    cmocka_unit_test(test_s3_4_helo_reply_unchanged),
	    cmocka_unit_test(test_i14_ehlo_size_left_alone_without_limit),
	    cmocka_unit_test(test_i14_ehlo_size_is_the_smaller),
	    cmocka_unit_test(test_i14_ehlo_size_without_backend_limit),
	    cmocka_unit_test(test_i14_ehlo_size_before_starttls),
	    cmocka_unit_test(test_i14_ehlo_size_lines_become_one),
	    cmocka_unit_test(test_i14_ehlo_size_not_in_other_replies),
	    cmocka_unit_test(test_s3_5_starttls_never_forwarded_220),
	    cmocka_unit_test(test_s3_5_starttls_220_after_earlier_replies),
	    cmocka_unit_test(test_s3_5_starttls_injection_discarded),
	    cmocka_unit_test(test_s3_5_starttls_with_args_501_5_5_4),
	    cmocka_unit_test(test_s3_5_starttls_in_tls_session_503_5_5_1),
	    cmocka_unit_test(test_s3_5_starttls_not_offered_502_5_5_1),
	    cmocka_unit_test(test_s3_5_after_tls_ehlo_required),
	    cmocka_unit_test(test_s3_5_require_tls_530_5_7_0),
	    cmocka_unit_test(test_s3_5_require_tls_on_tls_port_passes),
	    cmocka_unit_test(test_s3_6_auth_table_in_session),
	    cmocka_unit_test(test_s3_6_auth_continuation_quit_is_sasl),
	    cmocka_unit_test(test_s3_6_auth_input_held_until_334),
	    cmocka_unit_test(test_s3_2_auth_lines_up_to_12288),
	    cmocka_unit_test(test_s7_3_auth_continuation_nul_cancels),
	    cmocka_unit_test(test_s7_3_auth_continuation_too_long_cancels),
	    cmocka_unit_test(test_s3_6_user_plain_initial_response),
	    cmocka_unit_test(test_s3_6_user_plain_after_334),
	    cmocka_unit_test(test_s3_6_user_login),
	    cmocka_unit_test(test_s3_6_user_cram_md5),
	    cmocka_unit_test(test_s3_6_user_other_mechanisms_none),
	    cmocka_unit_test(test_s3_6_user_failed_535_forgotten),
	    cmocka_unit_test(test_s3_6_user_cancel_forgotten),
	    cmocka_unit_test(test_s3_6_user_forgotten_after_starttls),
	    cmocka_unit_test(test_s3_6_user_invalid_or_too_long_none),
	    cmocka_unit_test(test_s3_6_user_quoting_left_to_the_log),
	    cmocka_unit_test(test_s3_6_sasl_line_wiped_from_held_input),
	    cmocka_unit_test(test_s3_6_sasl_user_functions),
	    cmocka_unit_test(test_s3_7_held_before_354_then_sent),
	    cmocka_unit_test(test_s3_7_held_discarded_when_data_refused),
	    cmocka_unit_test(test_s3_7_true_end_of_data_only),
	    cmocka_unit_test(test_s3_7_dot_stuffing_preserved),
	    cmocka_unit_test(test_s3_7_sanitize_bare_newlines),
	    cmocka_unit_test(test_s3_7_reject_mode),
	    cmocka_unit_test(test_s3_7_reject_mode_nothing_sent_with_bare_lf),
	    cmocka_unit_test(test_s3_7_reject_mode_max_errors),
	    cmocka_unit_test(test_s3_7_commands_after_end_of_data),
	    cmocka_unit_test(test_s3_7_data_progress_on_every_byte),
	    cmocka_unit_test(test_s3_7_large_message_byte_identical),
	    cmocka_unit_test(test_s3_7_property_sanitize_random),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
