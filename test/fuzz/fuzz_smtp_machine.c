/* fuzz_smtp_machine.c — libFuzzer harness for the SMTP session machine
 * (proxy/smtp/, SPEC §3).
 *
 * Input: two configuration bytes, then events separated by the control byte
 * 0xFF. Each event's first byte chooses what happens (low three bits); the
 * rest of the event is its payload:
 *   0, 1  client bytes          4  backend closed
 *         (with milters, bit 6 of the second configuration byte, event 1
 *         is the milters' answer: a verdict, the end-of-message delivery
 *         with envelope changes, or the held message sent, chosen by its
 *         first payload byte)
 *   2     backend bytes         5  idle timeout
 *   3     TLS established       6  shutdown
 *                               7  connection limit
 * The driver acts as the proxy layer would: it takes the action buffers after
 * every call, calls tls_established only after start_tls, stops reading the
 * client while the machine wants no input, and stops feeding the backend once
 * told to drop it.
 *
 * Invariants checked (a violation traps):
 * - nothing comes out after close: no bytes for either side, no start_tls,
 *   no drop_backend;
 * - the backend never receives a bare CR or bare LF (so no bare LF in DATA
 *   content in sanitize mode, and no command the backend could split
 *   differently), nor anything at all after drop_backend;
 * - the client never receives a bare CR or bare LF;
 * - start_tls is asked for at most once per session;
 * - with milters: held content is canonical too, and nothing at all goes
 *   to the backend between the 354 to tlsfront's DATA and the held
 *   message being sent.
 */
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "proxy/smtp/smtp_machine.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x)                                                                                   \
	do {                                                                                       \
		if (!(x))                                                                          \
			__builtin_trap();                                                          \
	} while (0)

struct stream {
	bool pending_cr; /* the last byte was a CR: an LF must follow */
};

/* Checks that bytes continue a stream of CRLF-ended lines without a bare
 * CR or LF. A CR must be followed by its LF in the same output. */
static void check_canonical(struct stream *s, const char *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (s->pending_cr)
			CHECK(p[i] == '\n');
		else
			CHECK(p[i] != '\n');
		s->pending_cr = p[i] == '\r';
	}
	CHECK(!s->pending_cr);
}

struct harness {
	struct smtp_machine m;
	struct stream client, backend, held;
	bool closed, dropped, tls_asked, tls_done;
	bool milters, sending;
};

/* Takes the actions of the last call as the proxy layer would. */
static void take_actions(struct harness *h)
{
	struct smtp_actions *a = &h->m.act;
	if (h->closed) {
		CHECK(a->to_client.len == 0);
		CHECK(a->to_backend.len == 0);
		CHECK(!a->start_tls);
		CHECK(!a->drop_backend);
	}
	if (h->dropped)
		CHECK(a->to_backend.len == 0);
	check_canonical(&h->client, a->to_client.data, a->to_client.len);
	check_canonical(&h->backend, a->to_backend.data, a->to_backend.len);
	check_canonical(&h->held, a->to_hold.data, a->to_hold.len);
	if (h->sending)
		CHECK(a->to_backend.len == 0);
	if (a->send_held) {
		CHECK(!h->sending);
		h->sending = true;
	}
	if (a->start_tls) {
		CHECK(!h->tls_asked);
		h->tls_asked = true;
	}
	if (a->drop_backend)
		h->dropped = true;
	if (a->close) {
		CHECK(a->reason != CLOSE_NONE);
		h->closed = true;
	}
	a->to_client.len = 0;
	a->to_backend.len = 0;
	a->to_hold.len = 0;
	smtp_machine_clear_actions(&h->m);
}

/* The milters' answer (event 1 with milters). */
static void milter_answer(struct harness *h, const char *p, size_t n)
{
	unsigned char c = n ? (unsigned char)p[0] : 0;
	static const char *const add[] = {"<added@fuzz.test>", "plain@fuzz.test"};
	static const char *const add_args[] = {"NOTIFY=NEVER", NULL};
	static const char *const del[] = {"<b@y.test>", "B@Y.TEST"};
	if (h->sending) {
		h->sending = false;
		smtp_machine_held_sent(&h->m);
		return;
	}
	switch (c & 3) {
	case 0:
		smtp_machine_milter_verdict(&h->m, SMV_CONTINUE, NULL);
		break;
	case 1:
		smtp_machine_milter_verdict(&h->m, SMV_REFUSE,
					    c & 4 ? "550 5.7.1 Rejected\r\n"
						  : "451-4.7.1 Later\r\n451 4.7.1 please\r\n");
		break;
	case 2:
		smtp_machine_milter_verdict(&h->m, SMV_DISCARD, NULL);
		break;
	default: {
		struct smtp_envelope_change ch = {
		    .sender = c & 4 ? "<new@fuzz.test>" : NULL,
		    .sender_args = c & 8 ? "BODY=8BITMIME" : NULL,
		    .add = add,
		    .add_args = add_args,
		    .n_add = (c >> 4) & 1 ? 2 : 0,
		    .del = del,
		    .n_del = (c >> 5) & 1 ? 2 : 0,
		};
		smtp_machine_milter_deliver(&h->m, c & 64 ? NULL : &ch);
		break;
	}
	}
}

static void event(struct harness *h, const uint8_t *p, size_t n)
{
	if (n == 0)
		return;
	const char *payload = (const char *)p + 1;
	size_t len = n - 1;
	switch (p[0] & 7) {
	case 1:
		if (h->milters) {
			milter_answer(h, payload, len);
			break;
		}
		/* fall through */
	case 0:
		if (!smtp_machine_wants_client_input(&h->m))
			return; /* the proxy pauses reading the client */
		smtp_machine_feed_client(&h->m, payload, len);
		break;
	case 2:
		if (h->dropped)
			return; /* the backend connection is gone */
		smtp_machine_feed_backend(&h->m, payload, len);
		break;
	case 3:
		if (!h->tls_asked || h->tls_done)
			return; /* the proxy starts TLS only when asked */
		h->tls_done = true;
		smtp_machine_tls_established(&h->m);
		break;
	case 4:
		smtp_machine_backend_closed(&h->m);
		break;
	case 5:
		smtp_machine_timeout(&h->m);
		break;
	case 6:
		smtp_machine_shutdown(&h->m);
		break;
	case 7:
		smtp_machine_limit(&h->m);
		break;
	}
	take_actions(h);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const unsigned line_lengths[] = {8, 32, 100, 2048};
	if (size < 2)
		return 0;
	struct smtp_machine_config cfg = {
	    .starttls = data[0] & 1,
	    .require_tls = data[0] & 2,
	    .tcp_auth = data[0] & 4,
	    .tls_auth = data[0] & 8,
	    .tls_port = data[0] & 16,
	    .reject_bare = data[0] & 32,
	    .xclient = data[0] & 64,
	    .line_length = line_lengths[data[1] & 3],
	    .max_errors = (data[1] >> 2) & 15,
	    .server_name = "mx.fuzz.test",
	    .xclient_port = 4321,
	    .milters = data[1] & 64,
	};
	if (cfg.require_tls && !cfg.starttls)
		cfg.require_tls = false; /* a configuration error (§2) */
	strcpy(cfg.xclient_addr, data[0] & 128 ? "IPV6:2001:db8::7" : "192.0.2.7");

	struct harness h = {.milters = cfg.milters};
	smtp_machine_init(&h.m, &cfg);
	data += 2;
	size -= 2;
	while (size) {
		const uint8_t *sep = memchr(data, 0xFF, size);
		size_t n = sep ? (size_t)(sep - data) : size;
		event(&h, data, n);
		if (!sep)
			break;
		data += n + 1;
		size -= n + 1;
	}
	smtp_machine_free(&h.m);
	return 0;
}
