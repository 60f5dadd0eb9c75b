/* test_outbound_nego.c — the outbound negotiation (SPEC §4.2, §4.3, §7.9) fed
 * with byte strings: every cell of the §4.3 table, response injection, HELO
 * against EHLO, the plaintext retry, and every scenario again with its inputs
 * split at every byte boundary (and one byte at a time).
 *
 * Never opens a socket: scenarios are lists of steps, and a run collects
 * everything the negotiation asked for into one transcript.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "policy/outbound_policy.h"
#include "proxy/smtp/outbound_nego.h"

enum step_kind {
	END = 0,
	LEGACY,	     /* bytes from the legacy server */
	PEER,	     /* plaintext bytes from the peer */
	TLS_OK,	     /* the handshake completed */
	TLS_FAIL,    /* the handshake failed */
	TLS_TIMEOUT, /* the handshake timed out */
	RECONNECTED, /* the plaintext retry's connection is up */
	PEER_CLOSED,
	TIMEOUT,
};

struct step {
	enum step_kind kind;
	const char *data;
};

struct transcript {
	struct buf legacy;	 /* everything sent to the legacy server */
	struct buf peer;	 /* everything sent to the peer */
	struct buf events;	 /* T start_tls, R reconnect, D done, C<reason>, N<note> */
	struct buf machine_peer; /* peer bytes left for the machine after done */
	size_t discarded;
	struct buf held; /* legacy bytes handed to the machine */
};

static void transcript_free(struct transcript *t)
{
	buf_free(&t->legacy);
	buf_free(&t->peer);
	buf_free(&t->events);
	buf_free(&t->machine_peer);
	buf_free(&t->held);
}

static void collect(struct outbound_nego *n, struct transcript *t)
{
	struct nego_actions *a = &n->act;
	assert_true(buf_append(&t->legacy, a->to_legacy.data, a->to_legacy.len));
	assert_true(buf_append(&t->peer, a->to_peer.data, a->to_peer.len));
	buf_free(&a->to_legacy);
	buf_free(&a->to_peer);
	if (a->start_tls)
		buf_append_str(&t->events, "T");
	if (a->reconnect)
		buf_append_str(&t->events, "R");
	if (a->event) {
		buf_append_str(&t->events, "N:");
		buf_append_str(&t->events, a->event);
		buf_append_str(&t->events, ";");
	}
	t->discarded += a->discarded;
	outbound_nego_clear_actions(n);
}

static void feed(struct outbound_nego *n, struct transcript *t, enum step_kind kind, const char *p,
		 size_t len)
{
	if (kind == LEGACY) {
		outbound_nego_feed_legacy(n, p, len);
		collect(n, t);
		return;
	}
	size_t used = outbound_nego_feed_peer(n, p, len);
	collect(n, t);
	if (used < len) {
		assert_int_equal(n->state, NEGO_DONE);
		buf_append(&t->machine_peer, p + used, len - used);
	}
}

/* Runs a scenario; each data step is fed split at split (0: whole; SIZE_MAX:
 * one byte at a time). */
static void run(const struct step *steps, enum tf_outbound_tls policy, size_t split,
		struct transcript *t)
{
	struct outbound_nego n;
	struct nego_config cfg = {.policy = policy, .line_length = 2048, .server_name = "out.test"};
	memset(t, 0, sizeof(*t));
	outbound_nego_init(&n, &cfg);
	for (const struct step *s = steps; s->kind != END; s++) {
		if (n.state == NEGO_DONE || n.state == NEGO_CLOSED) {
			if (s->kind == LEGACY && n.state == NEGO_DONE)
				buf_append_str(&t->held, s->data); /* the machine's */
			continue;
		}
		switch (s->kind) {
		case LEGACY:
		case PEER: {
			size_t len = strlen(s->data);
			if (split == SIZE_MAX) {
				for (size_t i = 0; i < len; i++)
					feed(&n, t, s->kind, s->data + i, 1);
			} else if (split && split < len) {
				feed(&n, t, s->kind, s->data, split);
				feed(&n, t, s->kind, s->data + split, len - split);
			} else {
				feed(&n, t, s->kind, s->data, len);
			}
			break;
		}
		case TLS_OK:
			outbound_nego_tls_established(&n);
			collect(&n, t);
			break;
		case TLS_FAIL:
			outbound_nego_tls_failed(&n);
			collect(&n, t);
			break;
		case TLS_TIMEOUT:
			outbound_nego_tls_timeout(&n);
			collect(&n, t);
			break;
		case RECONNECTED:
			outbound_nego_reconnected(&n);
			collect(&n, t);
			break;
		case PEER_CLOSED:
			outbound_nego_peer_closed(&n);
			collect(&n, t);
			break;
		case TIMEOUT:
			outbound_nego_timeout(&n);
			collect(&n, t);
			break;
		default:
			break;
		}
	}
	if (n.act.done) {
		buf_append_str(&t->events, "D");
		size_t len;
		char *held = outbound_nego_take_held(&n, &len);
		struct buf before = t->held;
		memset(&t->held, 0, sizeof(t->held));
		buf_append(&t->held, held, len);
		buf_append(&t->held, before.data, before.len);
		buf_free(&before);
		free(held);
	}
	if (n.act.close) {
		char c[32];
		snprintf(c, sizeof(c), "C%d", (int)n.act.reason);
		buf_append_str(&t->events, c);
	}
	outbound_nego_free(&n);
}

static void assert_buf(const struct buf *b, const char *want)
{
	char *got = strndup(b->data ? b->data : "", b->len);
	assert_string_equal(got, want);
	free(got);
}

static bool buf_has(const struct buf *b, const char *needle)
{
	char *text = strndup(b->data ? b->data : "", b->len);
	bool found = strstr(text, needle) != NULL;
	free(text);
	return found;
}

static bool same_buf(const struct buf *a, const struct buf *b)
{
	return a->len == b->len && (!a->len || memcmp(a->data, b->data, a->len) == 0);
}

/* The scenario gives the same transcript however its inputs are split. */
static void assert_split_invariant(const struct step *steps, enum tf_outbound_tls policy)
{
	struct transcript ref, t;
	run(steps, policy, 0, &ref);
	size_t longest = 0;
	for (const struct step *s = steps; s->kind != END; s++)
		if (s->data && strlen(s->data) > longest)
			longest = strlen(s->data);
	for (size_t split = 1; split <= longest + 1; split++) {
		run(steps, policy, split, &t);
		assert_true(same_buf(&ref.legacy, &t.legacy));
		assert_true(same_buf(&ref.peer, &t.peer));
		assert_true(same_buf(&ref.events, &t.events));
		assert_true(same_buf(&ref.held, &t.held));
		assert_int_equal(ref.discarded, t.discarded);
		/* What is left for the machine may come in pieces, in order. */
		assert_true(same_buf(&ref.machine_peer, &t.machine_peer));
		transcript_free(&t);
	}
	run(steps, policy, SIZE_MAX, &t);
	assert_true(same_buf(&ref.legacy, &t.legacy));
	assert_true(same_buf(&ref.peer, &t.peer));
	assert_true(same_buf(&ref.events, &t.events));
	assert_int_equal(ref.discarded, t.discarded);
	transcript_free(&t);
	transcript_free(&ref);
}

/* ---- peers ----------------------------------------------------------------- */

#define GREETING   "220 peer.example ESMTP\r\n"
#define EHLO_TLS   "250-peer.example hi\r\n250-SIZE 1000\r\n250-STARTTLS\r\n250 8BITMIME\r\n"
#define EHLO_PLAIN "250-peer.example hi\r\n250-SIZE 1000\r\n250 8BITMIME\r\n"
#define EHLO_AFTER "250-peer.example tls\r\n250-SIZE 2000\r\n250-AUTH PLAIN\r\n250 CHUNKING\r\n"

static const struct step starttls_ok[] = {
    {PEER, GREETING}, {LEGACY, "EHLO legacy.test\r\n"},
    {PEER, EHLO_TLS}, {PEER, "220 2.0.0 go ahead\r\n"},
    {TLS_OK, NULL},   {PEER, EHLO_AFTER},
    {END, NULL},
};

static const struct step no_starttls[] = {
    {PEER, GREETING},
    {LEGACY, "EHLO legacy.test\r\n"},
    {PEER, EHLO_PLAIN},
    {END, NULL},
};

static const struct step handshake_fails[] = {
    {PEER, GREETING}, {LEGACY, "EHLO legacy.test\r\n"},
    {PEER, EHLO_TLS}, {PEER, "220 2.0.0 go ahead\r\n"},
    {TLS_FAIL, NULL}, {RECONNECTED, NULL},
    {PEER, GREETING}, {PEER, EHLO_TLS},
    {END, NULL},
};

static const struct step handshake_times_out[] = {
    {PEER, GREETING},	 {LEGACY, "EHLO legacy.test\r\n"},
    {PEER, EHLO_TLS},	 {PEER, "220 2.0.0 go ahead\r\n"},
    {TLS_TIMEOUT, NULL}, {RECONNECTED, NULL},
    {PEER, GREETING},	 {PEER, EHLO_TLS},
    {END, NULL},
};

/* ---- §4.3, tls = none --------------------------------------------------------- */

static void test_s4_3_none_with_starttls_offered(void **state)
{
	(void)state;
	struct transcript t;
	run(no_starttls, TF_OUT_TLS_NONE, 0, &t);
	transcript_free(&t);
	static const struct step steps[] = {
	    {PEER, GREETING}, {LEGACY, "EHLO legacy.test\r\n"}, {PEER, EHLO_TLS}, {END, NULL}};
	run(steps, TF_OUT_TLS_NONE, 0, &t);
	assert_buf(&t.peer, "EHLO legacy.test\r\n");
	assert_buf(&t.legacy, GREETING "250-peer.example hi\r\n250-SIZE 1000\r\n250 8BITMIME\r\n");
	assert_buf(&t.events, "D");
	transcript_free(&t);
	assert_split_invariant(steps, TF_OUT_TLS_NONE);
}

static void test_s4_3_none_without_starttls(void **state)
{
	(void)state;
	struct transcript t;
	run(no_starttls, TF_OUT_TLS_NONE, 0, &t);
	assert_buf(&t.legacy, GREETING EHLO_PLAIN);
	assert_buf(&t.events, "D"); /* not logged: none asks for nothing */
	transcript_free(&t);
}

/* ---- §4.3, negotiated ---------------------------------------------------------- */

static void test_s4_3_negotiated_starttls(void **state)
{
	(void)state;
	struct transcript t;
	run(starttls_ok, TF_OUT_TLS_NEGOTIATED, 0, &t);
	assert_buf(&t.peer, "EHLO legacy.test\r\nSTARTTLS\r\nEHLO legacy.test\r\n");
	/* The last EHLO reply, CHUNKING dropped (§3.4), AUTH kept. */
	assert_buf(&t.legacy,
		   GREETING "250-peer.example tls\r\n250-SIZE 2000\r\n250 AUTH PLAIN\r\n");
	assert_buf(&t.events, "TD");
	assert_int_equal(t.discarded, 0);
	transcript_free(&t);
	assert_split_invariant(starttls_ok, TF_OUT_TLS_NEGOTIATED);
}

static void test_s4_3_negotiated_no_starttls_is_plaintext_and_logged(void **state)
{
	(void)state;
	struct transcript t;
	run(no_starttls, TF_OUT_TLS_NEGOTIATED, 0, &t);
	assert_buf(&t.peer, "EHLO legacy.test\r\n");
	assert_buf(&t.legacy, GREETING EHLO_PLAIN);
	assert_buf(&t.events, "N:outbound_no_starttls;D");
	transcript_free(&t);
	assert_split_invariant(no_starttls, TF_OUT_TLS_NEGOTIATED);
}

static void test_s4_3_negotiated_handshake_failure_retries_in_plaintext(void **state)
{
	(void)state;
	struct transcript t;
	run(handshake_fails, TF_OUT_TLS_NEGOTIATED, 0, &t);
	/* §4.2.5: the retry's greeting is consumed; EHLO without STARTTLS. */
	assert_buf(&t.peer, "EHLO legacy.test\r\nSTARTTLS\r\nEHLO legacy.test\r\n");
	assert_buf(&t.legacy, GREETING "250-peer.example hi\r\n250-SIZE 1000\r\n250 8BITMIME\r\n");
	assert_buf(&t.events, "TRN:outbound_tls_fallback;D");
	transcript_free(&t);
	assert_split_invariant(handshake_fails, TF_OUT_TLS_NEGOTIATED);
}

static void test_s4_3_negotiated_refused_starttls_goes_on_in_plaintext(void **state)
{
	(void)state;
	static const struct step steps[] = {
	    {PEER, GREETING}, {LEGACY, "EHLO legacy.test\r\n"},
	    {PEER, EHLO_TLS}, {PEER, "454 4.7.0 TLS not available\r\n"},
	    {END, NULL},
	};
	struct transcript t;
	run(steps, TF_OUT_TLS_NEGOTIATED, 0, &t);
	assert_buf(&t.legacy, GREETING "250-peer.example hi\r\n250-SIZE 1000\r\n250 8BITMIME\r\n");
	assert_buf(&t.events, "N:outbound_no_starttls;D");
	transcript_free(&t);
	run(steps, TF_OUT_TLS_REQUIRED, 0, &t);
	assert_buf(&t.events, "N:outbound_policy;C6");
	transcript_free(&t);
	assert_split_invariant(steps, TF_OUT_TLS_NEGOTIATED);
}

static void test_s4_5_retry_only_once(void **state)
{
	(void)state;
	struct outbound_nego n;
	struct nego_config cfg = {TF_OUT_TLS_NEGOTIATED, 2048, "out.test"};
	outbound_nego_init(&n, &cfg);
	outbound_nego_feed_peer(&n, GREETING, strlen(GREETING));
	outbound_nego_feed_legacy(&n, "EHLO l\r\n", 8);
	outbound_nego_feed_peer(&n, EHLO_TLS, strlen(EHLO_TLS));
	outbound_nego_feed_peer(&n, "220 go\r\n", 8);
	outbound_nego_tls_failed(&n);
	assert_true(n.act.reconnect);
	outbound_nego_clear_actions(&n);
	/* A second failure cannot ask for another connection. */
	outbound_nego_tls_failed(&n);
	assert_false(n.act.reconnect);
	outbound_nego_reconnected(&n);
	/* The retry's peer closing: 421 4.4.1, no third connection. */
	outbound_nego_peer_closed(&n);
	assert_true(n.act.close);
	assert_true(buf_has(&n.act.to_legacy, "421 4.4.1"));
	outbound_nego_free(&n);
}

/* ---- §4.3, required and verify ------------------------------------------------- */

static void expect_refusal(const struct step *steps, enum tf_outbound_tls policy, int reason)
{
	struct transcript t;
	run(steps, policy, 0, &t);
	/* §4.2.4: the 421 4.7.0 answers the EHLO, then close; no retry. */
	char want[256];
	snprintf(want, sizeof(want), "%s421 4.7.0 out.test ", GREETING);
	assert_true(t.legacy.len > strlen(want));
	assert_memory_equal(t.legacy.data, want, strlen(want));
	assert_null(memchr(t.events.data, 'R', t.events.len));
	assert_null(memchr(t.events.data, 'D', t.events.len));
	char c[16];
	snprintf(c, sizeof(c), "C%d", reason);
	char *events = strndup(t.events.data, t.events.len);
	assert_non_null(strstr(events, c));
	free(events);
	transcript_free(&t);
	assert_split_invariant(steps, policy);
}

/* §4.3 and §7.5: a handshake that times out is a failed handshake (the
 * same retry, the same 421) whose refusal is logged reason=timeout. */
static void test_s7_5_handshake_timeout_is_a_failure_with_reason_timeout(void **state)
{
	(void)state;
	struct transcript t;
	run(handshake_times_out, TF_OUT_TLS_NEGOTIATED, 0, &t);
	assert_buf(&t.legacy, GREETING "250-peer.example hi\r\n250-SIZE 1000\r\n250 8BITMIME\r\n");
	assert_buf(&t.events, "TRN:outbound_tls_fallback;D");
	transcript_free(&t);
	expect_refusal(handshake_times_out, TF_OUT_TLS_REQUIRED, CLOSE_TIMEOUT);
	expect_refusal(handshake_times_out, TF_OUT_TLS_VERIFY, CLOSE_TIMEOUT);
}

static void test_s4_3_required(void **state)
{
	(void)state;
	struct transcript t;
	run(starttls_ok, TF_OUT_TLS_REQUIRED, 0, &t);
	assert_buf(&t.events, "TD");
	transcript_free(&t);
	expect_refusal(no_starttls, TF_OUT_TLS_REQUIRED, CLOSE_POLICY);
	expect_refusal(handshake_fails, TF_OUT_TLS_REQUIRED, CLOSE_TLS_ERROR);
}

static void test_s4_3_verify(void **state)
{
	(void)state;
	struct transcript t;
	run(starttls_ok, TF_OUT_TLS_VERIFY, 0, &t);
	assert_buf(&t.events, "TD");
	transcript_free(&t);
	expect_refusal(no_starttls, TF_OUT_TLS_VERIFY, CLOSE_POLICY);
	/* A certificate that does not verify fails the handshake (GnuTLS
	 * checks it during the handshake): the same cell. */
	expect_refusal(handshake_fails, TF_OUT_TLS_VERIFY, CLOSE_TLS_ERROR);
}

static void test_s4_3_mandatory_peer_refusing_ehlo(void **state)
{
	(void)state;
	static const struct step steps[] = {
	    {PEER, GREETING},
	    {LEGACY, "EHLO legacy.test\r\n"},
	    {PEER, "502 5.5.1 what\r\n"},
	    {END, NULL},
	};
	expect_refusal(steps, TF_OUT_TLS_REQUIRED, CLOSE_POLICY);
	struct transcript t;
	run(steps, TF_OUT_TLS_NEGOTIATED, 0, &t);
	assert_buf(&t.legacy, GREETING "502 5.5.1 what\r\n");
	assert_buf(&t.events, "D");
	transcript_free(&t);
}

/* ---- response injection ------------------------------------------------------- */

static void test_s4_2_response_injection_is_discarded(void **state)
{
	(void)state;
	static const struct step steps[] = {
	    {PEER, GREETING}, {LEGACY, "EHLO legacy.test\r\n"},
	    {PEER, EHLO_TLS}, {PEER, "220 2.0.0 go ahead\r\n250-fake\r\n250 STARTTLS\r\n"},
	    {TLS_OK, NULL},   {PEER, EHLO_AFTER},
	    {END, NULL},
	};
	struct transcript t;
	run(steps, TF_OUT_TLS_NEGOTIATED, 0, &t);
	assert_int_equal(t.discarded, strlen("250-fake\r\n250 STARTTLS\r\n"));
	assert_buf(&t.legacy,
		   GREETING "250-peer.example tls\r\n250-SIZE 2000\r\n250 AUTH PLAIN\r\n");
	assert_buf(&t.peer, "EHLO legacy.test\r\nSTARTTLS\r\nEHLO legacy.test\r\n");
	transcript_free(&t);
	/* Whatever the split, nothing after the 220 counts (the total may
	 * arrive in pieces, but it is the same). */
	assert_split_invariant(steps, TF_OUT_TLS_NEGOTIATED);
}

/* ---- HELO ------------------------------------------------------------------------ */

static void test_s4_2_helo_gets_one_line(void **state)
{
	(void)state;
	static const struct step steps[] = {
	    {PEER, GREETING}, {LEGACY, "HELO legacy.test\r\n"},
	    {PEER, EHLO_TLS}, {PEER, "220 go\r\n"},
	    {TLS_OK, NULL},   {PEER, EHLO_AFTER},
	    {END, NULL},
	};
	struct transcript t;
	run(steps, TF_OUT_TLS_NEGOTIATED, 0, &t);
	/* §7.9: EHLO with the HELO's name goes to the peer. */
	assert_buf(&t.peer, "EHLO legacy.test\r\nSTARTTLS\r\nEHLO legacy.test\r\n");
	assert_buf(&t.legacy, GREETING "250 peer.example tls\r\n");
	transcript_free(&t);
	assert_split_invariant(steps, TF_OUT_TLS_NEGOTIATED);
}

static void test_s4_5_retry_sends_helo(void **state)
{
	(void)state;
	static const struct step steps[] = {
	    {PEER, GREETING}, {LEGACY, "HELO legacy.test\r\n"},
	    {PEER, EHLO_TLS}, {PEER, "220 go\r\n"},
	    {TLS_FAIL, NULL}, {RECONNECTED, NULL},
	    {PEER, GREETING}, {PEER, "250 peer.example\r\n"},
	    {END, NULL},
	};
	struct transcript t;
	run(steps, TF_OUT_TLS_NEGOTIATED, 0, &t);
	assert_buf(&t.peer, "EHLO legacy.test\r\nSTARTTLS\r\nHELO legacy.test\r\n");
	assert_buf(&t.legacy, GREETING "250 peer.example\r\n");
	transcript_free(&t);
	assert_split_invariant(steps, TF_OUT_TLS_NEGOTIATED);
}

static void test_s4_2_helo_to_an_old_peer_without_ehlo(void **state)
{
	(void)state;
	static const struct step steps[] = {
	    {PEER, GREETING},
	    {LEGACY, "HELO legacy.test\r\n"},
	    {PEER, "500 5.5.1 EHLO? never heard of it\r\n"},
	    {PEER, "250 old.peer\r\n"},
	    {END, NULL},
	};
	struct transcript t;
	run(steps, TF_OUT_TLS_NEGOTIATED, 0, &t);
	assert_buf(&t.peer, "EHLO legacy.test\r\nHELO legacy.test\r\n");
	assert_buf(&t.legacy, GREETING "250 old.peer\r\n");
	transcript_free(&t);
	expect_refusal(steps, TF_OUT_TLS_VERIFY, CLOSE_POLICY);
}

/* ---- pipelining and the hand-over ----------------------------------------------- */

static void test_s4_2_pipelined_commands_are_held_for_the_machine(void **state)
{
	(void)state;
	static const struct step steps[] = {
	    {PEER, GREETING},
	    {LEGACY, "EHLO legacy.test\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDA"},
	    {PEER, EHLO_TLS},
	    {PEER, "220 go\r\n"},
	    {TLS_OK, NULL},
	    {PEER, EHLO_AFTER "250 unsolicited\r\n"},
	    {END, NULL},
	};
	struct transcript t;
	run(steps, TF_OUT_TLS_NEGOTIATED, 0, &t);
	assert_buf(&t.held, "MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDA");
	assert_buf(&t.peer, "EHLO legacy.test\r\nSTARTTLS\r\nEHLO legacy.test\r\n");
	assert_buf(&t.machine_peer, "250 unsolicited\r\n");
	transcript_free(&t);
	assert_split_invariant(steps, TF_OUT_TLS_NEGOTIATED);
}

/* A reply before the legacy server asked for one is never relayed: it would
 * be read as the reply to its EHLO (here a fake one offering STARTTLS). A
 * 421 is the peer closing and is passed on. */
static void test_s4_2_unsolicited_peer_reply_is_not_relayed(void **state)
{
	(void)state;
	static const struct step steps[] = {
	    {PEER, GREETING "250-peer.example\r\n250 STARTTLS\r\n"},
	    {LEGACY, "EHLO legacy.test\r\n"},
	    {END, NULL},
	};
	struct transcript t;
	run(steps, TF_OUT_TLS_REQUIRED, 0, &t);
	const char want[] = GREETING "421 4.4.1 ";
	assert_true(t.legacy.len > strlen(want));
	assert_memory_equal(t.legacy.data, want, strlen(want));
	assert_null(memmem(t.legacy.data, t.legacy.len, "STARTTLS", 8));
	assert_buf(&t.peer, "");
	assert_null(memchr(t.events.data, 'D', t.events.len));
	transcript_free(&t);
	assert_split_invariant(steps, TF_OUT_TLS_REQUIRED);

	static const struct step closing[] = {
	    {PEER, GREETING "421 4.3.2 going down\r\n"},
	    {LEGACY, "EHLO legacy.test\r\n"},
	    {END, NULL},
	};
	run(closing, TF_OUT_TLS_NEGOTIATED, 0, &t);
	assert_buf(&t.legacy, GREETING "421 4.3.2 going down\r\n");
	assert_buf(&t.peer, "");
	transcript_free(&t);
	assert_split_invariant(closing, TF_OUT_TLS_NEGOTIATED);
}

static void test_s4_2_commands_before_ehlo(void **state)
{
	(void)state;
	static const struct step steps[] = {
	    {LEGACY, "NOOP\r\n"}, /* before the greeting: held */
	    {PEER, GREETING},
	    {LEGACY, "MAIL FROM:<a@b>\r\nXCLIENT ADDR=1.2.3.4\r\nEHLO\r\nEHLO legacy.test\r\n"},
	    {PEER, EHLO_PLAIN},
	    {END, NULL},
	};
	struct transcript t;
	run(steps, TF_OUT_TLS_NONE, 0, &t);
	assert_buf(&t.peer, "EHLO legacy.test\r\n");
	assert_buf(&t.legacy,
		   GREETING "250 2.0.0 Ok\r\n"
			    "503 5.5.1 Error: send EHLO or HELO first\r\n"
			    "502 5.5.1 Error: command not permitted\r\n"
			    "501 5.5.4 Error: EHLO/HELO needs a domain name\r\n" EHLO_PLAIN);
	transcript_free(&t);
	assert_split_invariant(steps, TF_OUT_TLS_NONE);
}

static void test_s4_2_quit_and_http_before_ehlo(void **state)
{
	(void)state;
	static const struct step quit[] = {{PEER, GREETING}, {LEGACY, "QUIT\r\n"}, {END, NULL}};
	struct transcript t;
	run(quit, TF_OUT_TLS_VERIFY, 0, &t);
	assert_buf(&t.legacy, GREETING "221 2.0.0 out.test Bye\r\n");
	assert_buf(&t.events, "C1");
	assert_buf(&t.peer, "");
	transcript_free(&t);
	static const struct step http[] = {
	    {PEER, GREETING}, {LEGACY, "GET / HTTP/1.1\r\n"}, {END, NULL}};
	run(http, TF_OUT_TLS_NEGOTIATED, 0, &t);
	assert_buf(&t.events, "C6");
	transcript_free(&t);
}

/* ---- failures ------------------------------------------------------------------- */

static void test_s4_2_1_bad_greeting_and_failures(void **state)
{
	(void)state;
	static const struct step busy[] = {{PEER, "554 5.3.2 busy\r\n"}, {END, NULL}};
	struct transcript t;
	run(busy, TF_OUT_TLS_NEGOTIATED, 0, &t);
	assert_buf(&t.legacy, "554 5.3.2 busy\r\n");
	assert_buf(&t.events, "C3");
	transcript_free(&t);

	static const struct step closed[] = {
	    {PEER, GREETING}, {LEGACY, "EHLO l\r\n"}, {PEER_CLOSED, NULL}, {END, NULL}};
	run(closed, TF_OUT_TLS_NEGOTIATED, 0, &t);
	assert_buf(&t.legacy,
		   GREETING "421 4.4.1 out.test Error: next hop closed the connection\r\n");
	transcript_free(&t);

	static const struct step idle[] = {{PEER, GREETING}, {TIMEOUT, NULL}, {END, NULL}};
	run(idle, TF_OUT_TLS_NEGOTIATED, 0, &t);
	assert_buf(&t.legacy, GREETING "421 4.4.2 out.test Error: timeout exceeded\r\n");
	assert_buf(&t.events, "C4");
	transcript_free(&t);

	static const struct step garbage[] = {{PEER, "hello there\r\n"}, {END, NULL}};
	run(garbage, TF_OUT_TLS_NEGOTIATED, 0, &t);
	assert_buf(&t.legacy, "421 4.4.1 out.test Error: next hop failure\r\n");
	transcript_free(&t);

	struct outbound_nego n;
	struct nego_config cfg = {TF_OUT_TLS_NEGOTIATED, 2048, "out.test"};
	outbound_nego_init(&n, &cfg);
	outbound_nego_peer_unavailable(&n);
	assert_true(n.act.close);
	assert_buf(&n.act.to_legacy,
		   "421 4.4.1 out.test Error: next hop unavailable, try again later\r\n");
	outbound_nego_free(&n);
}

static void test_s4_2_handshake_peer_close_is_a_failure(void **state)
{
	(void)state;
	static const struct step steps[] = {
	    {PEER, GREETING},	  {LEGACY, "EHLO l\r\n"}, {PEER, EHLO_TLS},
	    {PEER, "220 go\r\n"}, {PEER_CLOSED, NULL},	  {END, NULL},
	};
	struct transcript t;
	run(steps, TF_OUT_TLS_NEGOTIATED, 0, &t);
	assert_buf(&t.events, "TRN:outbound_tls_fallback;");
	transcript_free(&t);
	/* TLS 1.3: a peer refusing our certificate closes after our side of
	 * the handshake completed, before its first reply inside TLS. */
	static const struct step late[] = {
	    {PEER, GREETING}, {LEGACY, "EHLO l\r\n"}, {PEER, EHLO_TLS}, {PEER, "220 go\r\n"},
	    {TLS_OK, NULL},   {PEER_CLOSED, NULL},    {END, NULL},
	};
	run(late, TF_OUT_TLS_NEGOTIATED, 0, &t);
	assert_buf(&t.events, "TRN:outbound_tls_fallback;");
	transcript_free(&t);
	expect_refusal(late, TF_OUT_TLS_VERIFY, CLOSE_TLS_ERROR);
}

static void test_s3_2_long_line_before_ehlo(void **state)
{
	(void)state;
	struct outbound_nego n;
	struct nego_config cfg = {TF_OUT_TLS_NEGOTIATED, 64, "out.test"};
	outbound_nego_init(&n, &cfg);
	outbound_nego_feed_peer(&n, GREETING, strlen(GREETING));
	char line[100];
	memset(line, 'a', sizeof(line));
	outbound_nego_feed_legacy(&n, line, sizeof(line));
	assert_true(n.act.close);
	assert_true(buf_has(&n.act.to_legacy, "500 5.5.2"));
	outbound_nego_free(&n);
}

/* The §4.3 table itself, cell by cell. */
static void test_s4_3_policy_table(void **state)
{
	(void)state;
	assert_false(outbound_policy_wants_tls(TF_OUT_TLS_NONE));
	assert_int_equal(outbound_policy_no_starttls(TF_OUT_TLS_NONE), OUT_PLAINTEXT);
	assert_false(outbound_policy_verifies(TF_OUT_TLS_NONE));

	assert_true(outbound_policy_wants_tls(TF_OUT_TLS_NEGOTIATED));
	assert_int_equal(outbound_policy_no_starttls(TF_OUT_TLS_NEGOTIATED), OUT_PLAINTEXT_LOGGED);
	assert_int_equal(outbound_policy_handshake_failed(TF_OUT_TLS_NEGOTIATED),
			 OUT_RETRY_PLAINTEXT);
	assert_false(outbound_policy_verifies(TF_OUT_TLS_NEGOTIATED));

	assert_true(outbound_policy_wants_tls(TF_OUT_TLS_REQUIRED));
	assert_int_equal(outbound_policy_no_starttls(TF_OUT_TLS_REQUIRED), OUT_REFUSE);
	assert_int_equal(outbound_policy_handshake_failed(TF_OUT_TLS_REQUIRED), OUT_REFUSE);
	assert_false(outbound_policy_verifies(TF_OUT_TLS_REQUIRED));

	assert_true(outbound_policy_wants_tls(TF_OUT_TLS_VERIFY));
	assert_int_equal(outbound_policy_no_starttls(TF_OUT_TLS_VERIFY), OUT_REFUSE);
	assert_int_equal(outbound_policy_handshake_failed(TF_OUT_TLS_VERIFY), OUT_REFUSE);
	assert_true(outbound_policy_verifies(TF_OUT_TLS_VERIFY));

	/* An unknown value gets the strictest row. */
	assert_int_equal(outbound_policy_no_starttls((enum tf_outbound_tls)42), OUT_REFUSE);
	assert_true(outbound_policy_verifies((enum tf_outbound_tls)42));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_s4_3_policy_table),
	    cmocka_unit_test(test_s4_3_none_with_starttls_offered),
	    cmocka_unit_test(test_s4_3_none_without_starttls),
	    cmocka_unit_test(test_s4_3_negotiated_starttls),
	    cmocka_unit_test(test_s4_3_negotiated_no_starttls_is_plaintext_and_logged),
	    cmocka_unit_test(test_s4_3_negotiated_handshake_failure_retries_in_plaintext),
	    cmocka_unit_test(test_s7_5_handshake_timeout_is_a_failure_with_reason_timeout),
	    cmocka_unit_test(test_s4_3_negotiated_refused_starttls_goes_on_in_plaintext),
	    cmocka_unit_test(test_s4_5_retry_only_once),
	    cmocka_unit_test(test_s4_3_required),
	    cmocka_unit_test(test_s4_3_verify),
	    cmocka_unit_test(test_s4_3_mandatory_peer_refusing_ehlo),
	    cmocka_unit_test(test_s4_2_response_injection_is_discarded),
	    cmocka_unit_test(test_s4_2_helo_gets_one_line),
	    cmocka_unit_test(test_s4_5_retry_sends_helo),
	    cmocka_unit_test(test_s4_2_helo_to_an_old_peer_without_ehlo),
	    cmocka_unit_test(test_s4_2_pipelined_commands_are_held_for_the_machine),
	    cmocka_unit_test(test_s4_2_unsolicited_peer_reply_is_not_relayed),
	    cmocka_unit_test(test_s4_2_commands_before_ehlo),
	    cmocka_unit_test(test_s4_2_quit_and_http_before_ehlo),
	    cmocka_unit_test(test_s4_2_1_bad_greeting_and_failures),
	    cmocka_unit_test(test_s4_2_handshake_peer_close_is_a_failure),
	    cmocka_unit_test(test_s3_2_long_line_before_ehlo),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
