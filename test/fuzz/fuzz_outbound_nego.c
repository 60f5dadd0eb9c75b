/* fuzz_outbound_nego.c — libFuzzer harness for the outbound negotiation
 * (proxy/smtp/outbound_nego.[ch], SPEC §4.2, §4.3).
 *
 * Input: three configuration bytes, then the peer's byte stream (every
 * connection's, plaintext and "decrypted" alike), fed in chunks.
 *   byte 0: bits 0-1 policy (none, negotiated, required, verify); bit 2 the
 *           legacy server says HELO, not EHLO; bits 3-4 the legacy script
 *           (commands before and after its EHLO/HELO); bit 5 the legacy
 *           server waits for the greeting before it writes (else it writes
 *           first); bits 6-7 the handshake: completes, fails, the peer
 *           closes during it, or it completes and the peer closes at once
 *           (TLS 1.3 refusing our certificate).
 *   byte 1: bits 0-1 chunking (one byte, up to 8, up to 64, one line at a
 *           time); bit 2 the plaintext retry cannot connect; bits 3-5 what
 *           ends the input (peer closed, timeout, shutdown, limit, peer
 *           unavailable); bit 6 one more plaintext chunk arrives during the
 *           handshake (response injection); bit 7 the legacy script comes in
 *           two writes.
 *   byte 2: seed of the chunk lengths.
 * The driver is the proxy layer: it takes the action buffers after every
 * call, runs the handshake only when asked, reconnects only when asked, and
 * stops at done (the rest belongs to the smtp_machine) or at close. Every
 * loop is bounded; everything is freed.
 *
 * Invariants checked (a violation traps):
 * - the legacy server receives only well-formed, CRLF-ended reply lines, each
 *   within REPLY_LINE_MAX, each reply within REPLY_MAX (+1: a bare final "250"
 *   gains the space of its mark), and a close always ends on a whole reply;
 * - no 250 reply to the legacy server lists STARTTLS as a keyword (§4.2.3),
 *   and a 250 answer to HELO is one line;
 * - the reply the legacy server reads for its EHLO/HELO (counting one reply
 *   per command, in order, after the greeting) comes with done, or is a 421;
 * - under required and verify, done only after a completed handshake, never
 *   a reconnect; a policy refusal is "421 4.7.0" and a close (§4.2.4, §4.3);
 *   under none, never STARTTLS; under negotiated, at most one reconnect;
 * - every close but the relayed non-220 greeting tells the legacy server 421;
 * - the peer receives only "EHLO name", "HELO name" (the legacy server's
 *   verb) and "STARTTLS", in the §4.2 order: STARTTLS only after the first
 *   EHLO of the first connection, EHLO first inside TLS, one command on the
 *   retry, none while the handshake runs;
 * - peer bytes fed during the handshake or the reconnect are all discarded
 *   and cause no output (response injection);
 * - nothing comes out after close; done and close exclude each other; the
 *   held legacy bytes handed over at done are exactly those after its
 *   EHLO/HELO line; the negotiation ends in done or close.
 *
 * Never does I/O, never reads a clock, never keeps state across inputs.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "policy/config.h"
#include "proxy/smtp/outbound_nego.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x)                                                                                   \
	do {                                                                                       \
		if (!(x))                                                                          \
			abort();                                                                   \
	} while (0)

#define NAME	     "legacy.test"
#define MAX_STEPS    100000 /* peer chunks and events per input */
#define FINISH_STEPS 8	    /* events to end a negotiation the input left open */

/* What the legacy server writes; the EHLO/HELO line is built from the verb. */
struct script {
	const char *before; /* commands before the EHLO/HELO, each answered */
	unsigned n_before;
	bool sloppy;	   /* "ehlo \t" NAME " \n": lower case, blanks, bare LF */
	const char *after; /* pipelined after it: held for the smtp_machine */
};

static const struct script scripts[] = {
    {"", 0, false, ""},
    {"NOOP\r\n", 1, false, ""},
    {"", 0, false, "MAIL FROM:<a@" NAME ">\r\nRCPT TO:<b@peer.example>\r\nDA"},
    {"RSET\r\nMAIL FROM:<a@" NAME ">\r\nXCLIENT ADDR=192.0.2.1\n", 3, true, "QUIT\r\n"},
};

/* The legacy server reading its replies: one per command, in order. */
struct legacy {
	char line[REPLY_LINE_MAX + 3];
	size_t line_len;
	bool pending_cr;
	bool in_reply; /* a reply's first line seen, its last not yet */
	int code;
	size_t reply_len;
	unsigned reply_lines;
	unsigned replies; /* complete replies, the greeting being 0 */
	int last_code;
	bool quitting; /* a 421 was read: nothing after it matters */
};

enum leg { LEG_PLAIN = 0, LEG_TLS, LEG_RETRY };

struct harness {
	struct outbound_nego n;
	enum tf_outbound_tls policy;
	bool helo;
	const struct script *script;
	char written[512]; /* the whole legacy script */
	size_t written_len;
	size_t hello_end; /* offset after the EHLO/HELO line in written */
	bool legacy_fed;
	struct legacy legacy;
	enum leg leg;
	unsigned leg_cmds; /* commands sent on the current leg */
	bool ehlo_first;   /* the first leg's first command was EHLO */
	bool tls_asked, tls_done, reconnected, fallback, done, closed;
};

static bool is_digit(char c)
{
	return c >= '0' && c <= '9';
}

/* A keyword line of an EHLO reply names STARTTLS: the text after the mark,
 * up to a space or '=' (as §3.4 matches keywords), without regard to case. */
static bool names_starttls(const char *line, size_t len)
{
	if (len < 4)
		return false;
	const char *kw = line + 4;
	size_t n = 0;
	while (n < len - 4 && kw[n] != ' ' && kw[n] != '=')
		n++;
	return n == 8 && strncasecmp(kw, "STARTTLS", 8) == 0;
}

/* A complete reply read by the legacy server. */
static void legacy_reply(struct harness *h, const struct nego_actions *a)
{
	struct legacy *l = &h->legacy;
	unsigned index = l->replies++;
	l->last_code = l->code;
	if (l->quitting)
		return;
	if (index == 1 + h->script->n_before) {
		/* The reply it takes for its EHLO/HELO (§4.2.3, §4.2.4). */
		CHECK(a->done || l->code == 421);
		if (h->helo && l->code == 250)
			CHECK(l->reply_lines == 1);
	}
	if (l->code == 421)
		l->quitting = true;
}

/* Bytes to the legacy server, read line by line as it would. */
static void legacy_read(struct harness *h, const struct nego_actions *a)
{
	struct legacy *l = &h->legacy;
	const char *p = a->to_legacy.data;
	for (size_t i = 0; i < a->to_legacy.len; i++) {
		char c = p[i];
		if (l->pending_cr)
			CHECK(c == '\n');
		else
			CHECK(c != '\n');
		l->pending_cr = c == '\r';
		l->reply_len++;
		CHECK(l->reply_len <= REPLY_MAX + 1);
		if (c != '\n') {
			CHECK(l->line_len < REPLY_LINE_MAX + 1); /* + the CR */
			l->line[l->line_len++] = c;
			continue;
		}
		size_t len = l->line_len - 1; /* without the CR */
		const char *line = l->line;
		l->line_len = 0;
		CHECK(len >= 3 && is_digit(line[0]) && is_digit(line[1]) && is_digit(line[2]));
		CHECK(len == 3 || line[3] == ' ' || line[3] == '-');
		int code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
		if (l->in_reply) {
			CHECK(code == l->code);
			/* After the greeting; a first line is a name, not a keyword. */
			if (code == 250 && l->replies > 0)
				CHECK(!names_starttls(line, len));
		}
		l->in_reply = true;
		l->code = code;
		l->reply_lines++;
		if (len == 3 || line[3] == ' ') {
			legacy_reply(h, a);
			l->in_reply = false;
			l->reply_len = 0;
			l->reply_lines = 0;
		}
	}
}

/* Bytes to the peer: commands in the order of §4.2. */
static void peer_read(struct harness *h, const struct nego_actions *a)
{
	const char *p = a->to_peer.data;
	size_t len = a->to_peer.len;
	while (len) {
		const char *lf = memchr(p, '\n', len);
		CHECK(lf && lf > p && lf[-1] == '\r');
		size_t n = (size_t)(lf - p) - 1;
		bool ehlo = n == 5 + strlen(NAME) && memcmp(p, "EHLO " NAME, n) == 0;
		bool helo = n == 5 + strlen(NAME) && memcmp(p, "HELO " NAME, n) == 0;
		bool starttls = n == 8 && memcmp(p, "STARTTLS", 8) == 0;
		CHECK(ehlo || helo || starttls);
		CHECK(!h->tls_asked || h->tls_done || h->fallback); /* none during the handshake */
		switch (h->leg) {
		case LEG_PLAIN:
			if (h->leg_cmds == 0) {
				CHECK(ehlo); /* §4.2.2: EHLO even for a HELO */
				h->ehlo_first = true;
			} else {
				CHECK(h->leg_cmds == 1 && h->ehlo_first);
				if (starttls)
					CHECK(h->policy != TF_OUT_TLS_NONE);
				else
					CHECK(helo && h->helo); /* an old peer */
			}
			break;
		case LEG_TLS:
			CHECK(h->leg_cmds == 0 && ehlo);
			break;
		case LEG_RETRY:
			/* §4.2.5: the legacy server's verb, no STARTTLS. */
			CHECK(h->leg_cmds == 0 && (h->helo ? helo : ehlo));
			break;
		}
		h->leg_cmds++;
		len -= (size_t)(lf + 1 - p);
		p = lf + 1;
	}
}

/* The last line of b starts with prefix. */
static bool last_line_is(const struct buf *b, const char *prefix)
{
	size_t start = b->len >= 2 ? b->len - 2 : 0;
	while (start > 0 && b->data[start - 1] != '\n')
		start--;
	size_t n = strlen(prefix);
	return b->len - start >= n && memcmp(b->data + start, prefix, n) == 0;
}

/* Takes the actions of the last call as the proxy layer would. */
static void take_actions(struct harness *h)
{
	struct nego_actions *a = &h->n.act;
	if (h->closed) {
		CHECK(a->to_legacy.len == 0 && a->to_peer.len == 0);
		CHECK(!a->start_tls && !a->reconnect && !a->done);
	}
	legacy_read(h, a);
	peer_read(h, a);
	if (a->event)
		CHECK(a->note);
	if (a->start_tls) {
		CHECK(h->policy != TF_OUT_TLS_NONE);
		CHECK(!h->tls_asked && h->leg == LEG_PLAIN);
		CHECK(h->n.state == NEGO_HANDSHAKE);
		h->tls_asked = true;
	}
	if (a->reconnect) {
		CHECK(h->policy == TF_OUT_TLS_NEGOTIATED); /* §4.3 */
		CHECK(h->tls_asked && !h->fallback);
		CHECK(h->n.state == NEGO_RECONNECT);
		h->fallback = true;
	}
	if (a->event && strcmp(a->event, "outbound_policy") == 0) {
		/* §4.2.4: the 421 4.7.0 answers the EHLO/HELO, then close. */
		CHECK(h->policy == TF_OUT_TLS_REQUIRED || h->policy == TF_OUT_TLS_VERIFY);
		CHECK(a->close && last_line_is(&a->to_legacy, "421 4.7.0 "));
	}
	if (a->done && !h->done) {
		CHECK(!a->close && h->n.state == NEGO_DONE);
		if (h->policy == TF_OUT_TLS_REQUIRED || h->policy == TF_OUT_TLS_VERIFY)
			CHECK(h->n.tls && h->tls_done && !h->fallback);
		h->done = true;
	}
	if (a->close && !h->closed) {
		CHECK(a->reason != CLOSE_NONE && !a->done && h->n.state == NEGO_CLOSED);
		CHECK(a->to_legacy.len > 0); /* the legacy server is told why */
		CHECK(!h->legacy.in_reply && h->legacy.line_len == 0);
		/* Only the relayed greeting (the first reply) may be another. */
		CHECK(h->legacy.last_code == 421 || h->legacy.replies == 1);
		h->closed = true;
	}
	a->to_legacy.len = 0;
	a->to_peer.len = 0;
	outbound_nego_clear_actions(&h->n);
}

static void feed_legacy(struct harness *h, bool split)
{
	size_t first = split ? h->written_len / 2 : h->written_len;
	h->legacy_fed = true;
	outbound_nego_feed_legacy(&h->n, h->written, first);
	take_actions(h);
	if (first < h->written_len && outbound_nego_wants_legacy_input(&h->n)) {
		outbound_nego_feed_legacy(&h->n, h->written + first, h->written_len - first);
		take_actions(h);
	}
}

static size_t next_chunk(uint32_t *rng, unsigned mode, const uint8_t *p, size_t left)
{
	size_t n = 1;
	*rng ^= *rng << 13;
	*rng ^= *rng >> 17;
	*rng ^= *rng << 5;
	if (mode == 1)
		n = 1 + *rng % 8;
	else if (mode == 2)
		n = 1 + *rng % 64;
	else if (mode == 3) {
		const uint8_t *lf = memchr(p, '\n', left);
		n = lf ? (size_t)(lf - p) + 1 : left;
	}
	return n < left ? n : left;
}

/* Peer bytes the negotiation must not believe: all discarded, no output. */
static void feed_discarded(struct harness *h, const char *p, size_t len)
{
	size_t used = outbound_nego_feed_peer(&h->n, p, len);
	CHECK(used == len && h->n.act.discarded == len);
	CHECK(h->n.act.to_legacy.len == 0 && h->n.act.to_peer.len == 0);
	CHECK(!h->n.act.start_tls && !h->n.act.reconnect && !h->n.act.done && !h->n.act.close);
	take_actions(h);
}

static void handshake(struct harness *h, unsigned outcome)
{
	switch (outcome) {
	case 0:
	case 3:
		h->tls_done = true;
		h->leg = LEG_TLS;
		h->leg_cmds = 0;
		outbound_nego_tls_established(&h->n);
		CHECK(h->n.state == NEGO_TLS_EHLO);
		take_actions(h);
		if (outcome == 3) {
			outbound_nego_peer_closed(&h->n);
			take_actions(h);
		}
		break;
	case 1:
		outbound_nego_tls_failed(&h->n);
		take_actions(h);
		break;
	case 2:
		outbound_nego_peer_closed(&h->n);
		take_actions(h);
		break;
	}
}

static void reconnect(struct harness *h, bool fails)
{
	if (fails) {
		outbound_nego_peer_unavailable(&h->n);
		take_actions(h);
		return;
	}
	h->leg = LEG_RETRY;
	h->leg_cmds = 0;
	h->reconnected = true;
	outbound_nego_reconnected(&h->n);
	CHECK(h->n.state == NEGO_RETRY_GREETING);
	take_actions(h);
}

static void end_event(struct harness *h, unsigned which)
{
	switch (which) {
	case 1:
		outbound_nego_timeout(&h->n);
		break;
	case 2:
		outbound_nego_shutdown(&h->n);
		break;
	case 3:
		outbound_nego_limit(&h->n);
		break;
	case 4:
		outbound_nego_peer_unavailable(&h->n);
		break;
	default:
		outbound_nego_peer_closed(&h->n);
		break;
	}
	take_actions(h);
}

/* After close every call is a no-op (take_actions checks for silence). */
static void after_close(struct harness *h, const char *p, size_t len)
{
	CHECK(outbound_nego_feed_peer(&h->n, p, len) == len);
	take_actions(h);
	outbound_nego_feed_legacy(&h->n, "EHLO " NAME "\r\n", 7 + strlen(NAME));
	CHECK(!outbound_nego_wants_legacy_input(&h->n));
	take_actions(h);
	outbound_nego_tls_established(&h->n);
	take_actions(h);
	outbound_nego_tls_failed(&h->n);
	take_actions(h);
	outbound_nego_reconnected(&h->n);
	take_actions(h);
	for (unsigned i = 0; i < 5; i++)
		end_event(h, i);
	CHECK(h->n.state == NEGO_CLOSED);
}

static bool over(const struct harness *h)
{
	return h->n.state == NEGO_DONE || h->n.state == NEGO_CLOSED;
}

static void setup(struct harness *h, uint8_t b0)
{
	static const enum tf_outbound_tls policies[] = {TF_OUT_TLS_NONE, TF_OUT_TLS_NEGOTIATED,
							TF_OUT_TLS_REQUIRED, TF_OUT_TLS_VERIFY};
	h->policy = policies[b0 & 3];
	h->helo = b0 & 4;
	h->script = &scripts[(b0 >> 3) & 3];
	const char *hello = h->script->sloppy
				? (h->helo ? "helo \t" NAME " \n" : "ehlo \t" NAME " \n")
				: (h->helo ? "HELO " NAME "\r\n" : "EHLO " NAME "\r\n");
	size_t len = strlen(h->script->before);
	memcpy(h->written, h->script->before, len);
	memcpy(h->written + len, hello, strlen(hello));
	len += strlen(hello);
	h->hello_end = len;
	memcpy(h->written + len, h->script->after, strlen(h->script->after));
	h->written_len = len + strlen(h->script->after);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 3)
		return 0;
	uint8_t b0 = data[0], b1 = data[1];
	uint32_t rng = 0x9e3779b9u ^ ((uint32_t)data[2] << 8) ^ data[2];
	unsigned outcome = b0 >> 6, mode = b1 & 3, end = (b1 >> 3) & 7;
	bool late = b0 & 32, retry_fails = b1 & 4, inject = b1 & 64, split = b1 & 128;
	const char *p = (const char *)data + 3;
	size_t left = size - 3;

	struct harness *h = calloc(1, sizeof(*h));
	if (!h)
		return 0;
	setup(h, b0);
	struct nego_config cfg = {
	    .policy = h->policy, .line_length = 1000, .server_name = "out.fuzz.test"};
	outbound_nego_init(&h->n, &cfg);
	if (!late)
		feed_legacy(h, split);

	for (unsigned steps = 0; steps < MAX_STEPS && !over(h); steps++) {
		if (h->n.state == NEGO_HANDSHAKE) {
			if (inject && left) {
				size_t n = next_chunk(&rng, mode, (const uint8_t *)p, left);
				feed_discarded(h, p, n);
				p += n;
				left -= n;
			}
			handshake(h, outcome);
			continue;
		}
		if (h->n.state == NEGO_RECONNECT) {
			if (inject && left) {
				size_t n = next_chunk(&rng, mode, (const uint8_t *)p, left);
				feed_discarded(h, p, n);
				p += n;
				left -= n;
			}
			reconnect(h, retry_fails);
			continue;
		}
		if (!left)
			break;
		size_t n = next_chunk(&rng, mode, (const uint8_t *)p, left);
		size_t used = outbound_nego_feed_peer(&h->n, p, n);
		CHECK(used <= n);
		if (used < n)
			CHECK(h->n.state == NEGO_DONE); /* the rest is the machine's */
		take_actions(h);
		p += n;
		left -= n;
		if (!h->legacy_fed && h->n.state == NEGO_HELLO)
			feed_legacy(h, split); /* it has read the greeting */
	}

	/* The input ended with the negotiation open: the peer goes away (or a
	 * timer fires); whatever the machine then asks for ends it. */
	if (!over(h)) {
		end_event(h, end);
		for (unsigned i = 0; i < FINISH_STEPS && !over(h); i++) {
			if (h->n.state == NEGO_RECONNECT)
				reconnect(h, retry_fails);
			else
				end_event(h, 0);
		}
	}
	CHECK(over(h));

	if (h->closed)
		after_close(h, p, left);
	if (h->done) {
		CHECK(h->legacy_fed);
		size_t len = 0;
		char *held = outbound_nego_take_held(&h->n, &len);
		CHECK(len == h->written_len - h->hello_end);
		CHECK(len == 0 || memcmp(held, h->written + h->hello_end, len) == 0);
		free(held);
	}
	outbound_nego_free(&h->n);
	free(h);
	return 0;
}
