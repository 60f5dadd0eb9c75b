/* fuzz_tls_session.c — libFuzzer harness for the inbound session end to end
 * through the TLS layer: a GnuTLS client over memory, tlsfront's server side
 * through proxy/tls_io.c, and the SMTP machine fed the decrypted bytes as
 * proxy/session.c feeds it (client_bytes, do_handshake, pump_tls,
 * session_step, send_client, session_close are mirrored here without libuv:
 * every write completes at once, the backend connects at once).
 *
 * The credentials are made once (LLVMFuzzerInitialize: creds_new() without
 * pairs, the self-signed default, with session tickets): one in-memory key
 * for the whole run. Each input runs one session with a fresh handshake.
 *
 * Input: three configuration bytes, then events separated by 0xFF.
 *   byte 0: bit 0 the STARTTLS flavour (plaintext listener; else the TLS port:
 *           handshake first); bit 1 inbound.tcp.starttls; bit 2 require_tls;
 *           bit 3 tcp name_and_password; bit 4 tls name_and_password; bit 5
 *           bare_newlines = reject; bit 6 client_info = xclient; bit 7 the
 *           client's address is IPv6.
 *   byte 1: bits 0-1 line_length (8, 32, 100, 2048); bits 2-5 max_errors;
 *           bit 6 over the connection limit; bit 7 the backend is unreachable.
 *   byte 2: bits 0-1 the client's ALPN offer (none, smtp, h2, h2 + smtp);
 *           bit 2 the client speaks TLS 1.2 only (else 1.3 is allowed); bit 3
 *           the client sends SNI; bits 4-5 handshake flights delivered whole,
 *           or in pieces of 1, 7 or 300 bytes; bit 6 under TLS 1.3 the
 *           client's first records come in the same read as its Finished.
 * Each event's first byte chooses what happens (low four bits) with a
 * parameter (high four bits, P); the rest is its payload:
 *   0, 12-15  client bytes: after the handshake encrypted by the client in
 *             records of RECORD[P] bytes, delivered in one read; before it
 *             (STARTTLS flavour) plaintext. A pending handshake is run first.
 *   1         as 0, but the ciphertext arrives in reads of 1 + payload[0]
 *             bytes (the first payload byte is not data).
 *   2         raw bytes on the client's socket (ciphertext garbage under TLS,
 *             plaintext otherwise); no handshake is run first.
 *   3         one record of payload[1..] (at most 4096 bytes), damaged by
 *             P & 3: 0 cut to payload[0] % len bytes (the rest dropped), 1 a
 *             byte flipped at payload[0] % len, 2 delivered twice (replay),
 *             3 cut and followed by the socket's EOF.
 *   4         backend bytes.                5  the backend closes.
 *   6         the session timer fires.       7  the client closes: P & 1
 *             close_notify, else the socket's EOF.
 *   8         the client renegotiates (TLS 1.2) or updates its keys (TLS 1.3,
 *             P & 1: and asks the server to update too).
 *   9         CVE-2011-0411: while STARTTLS is accepted but its 220 not yet
 *             released, the canary commands arrive as plaintext.
 *   10        shutdown.
 *   11        as 0 before TLS, with the canary commands appended in the same
 *             read.
 * The client's bytes never hold 0x01 (replaced by 0x02): the canary commands
 * carry it, so a 0x01 reaching the backend is canary plaintext.
 *
 * Invariants checked (a violation traps):
 * - no tls_io_* result outside TLSIO_* (no GNUTLS_E_* escapes), a
 *   tls_io_recv length within the buffer, an error always explained;
 * - the backend receives only CRLF-ended lines without a bare CR or LF (so
 *   none in DATA content in sanitize mode); the client likewise, before and
 *   after decryption;
 * - the backend never receives canary bytes fed after STARTTLS was accepted
 *   (CVE-2011-0411), nor anything after drop_backend or once it is gone;
 * - nothing comes out of the machine after close; the client reads nothing
 *   after the server's close_notify; start_tls at most once and never under
 *   TLS; plaintext never crosses the handshake.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <gnutls/gnutls.h>

#include "certs/credentials.h"
#include "proxy/smtp/smtp_machine.h"
#include "proxy/tls_io.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x)                                                                                   \
	do {                                                                                       \
		if (!(x))                                                                          \
			__builtin_trap();                                                          \
	} while (0)

/* -DFUZZ_TRACE: prints the conversation to stderr (to read a seed). */
#ifdef FUZZ_TRACE
#include <stdio.h>
#define TRACE(...) fprintf(stderr, __VA_ARGS__)
#else
#define TRACE(...) ((void)0)
#endif

#define PLAIN_BUF    (64 * 1024) /* worker.h: WORKER_READ_BUF */
#define CANARY	     '\x01'
#define MAX_ROUNDS   64 /* handshake ping-pong bound */
#define DAMAGE_LIMIT 4096

static const char canary_cmds[] = "\r\nRSET\r\nMAIL FROM:<\x01"
				  "canary@example.test>\r\nRCPT TO:<\x01@x>\r\n";

static struct creds *creds;
static gnutls_certificate_credentials_t client_cred;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	struct creds_params p = {
	    .server_name = "mx.fuzz.test",
	    .ticket_lifetime = 3600,
	};
	bool self_signed = false;
	char err[256];
	creds = creds_new(&p, &self_signed, err, sizeof(err));
	CHECK(creds && self_signed);
	CHECK(gnutls_certificate_allocate_credentials(&client_cred) == 0);
	return 0;
}

/* ---- the client: GnuTLS over memory ----------------------------------- */

struct client {
	gnutls_session_t s;
	struct buf in; /* ciphertext from the server, not yet pulled */
	size_t in_off;
	struct buf out; /* ciphertext for the server */
	bool started, established, dead;
	bool got_eof; /* the server's close_notify was read */
};

static ssize_t client_pull(gnutls_transport_ptr_t ptr, void *data, size_t len)
{
	struct client *c = ptr;
	size_t avail = c->in.len - c->in_off;
	if (avail == 0) {
		gnutls_transport_set_errno(c->s, EAGAIN);
		return -1;
	}
	if (len > avail)
		len = avail;
	memcpy(data, c->in.data + c->in_off, len);
	c->in_off += len;
	if (c->in_off == c->in.len)
		c->in.len = c->in_off = 0;
	return (ssize_t)len;
}

static int client_pull_timeout(gnutls_transport_ptr_t ptr, unsigned ms)
{
	struct client *c = ptr;
	(void)ms;
	return c->in.len > c->in_off ? 1 : 0;
}

static ssize_t client_push(gnutls_transport_ptr_t ptr, const void *data, size_t len)
{
	struct client *c = ptr;
	if (!buf_append(&c->out, data, len)) {
		gnutls_transport_set_errno(c->s, ENOMEM);
		return -1;
	}
	return (ssize_t)len;
}

static const gnutls_datum_t alpn_smtp = {(unsigned char *)"smtp", 4};
static const gnutls_datum_t alpn_h2 = {(unsigned char *)"h2", 2};

static bool client_start(struct client *c, unsigned flags)
{
	if (gnutls_init(&c->s, GNUTLS_CLIENT | GNUTLS_NONBLOCK | GNUTLS_NO_SIGNAL) < 0) {
		c->s = NULL;
		return false;
	}
	const char *prio = flags & 4 ? "NORMAL:-VERS-ALL:+VERS-TLS1.2" : "NORMAL";
	if (gnutls_priority_set_direct(c->s, prio, NULL) < 0 ||
	    gnutls_credentials_set(c->s, GNUTLS_CRD_CERTIFICATE, client_cred) < 0)
		return false;
	if (flags & 8)
		gnutls_server_name_set(c->s, GNUTLS_NAME_DNS, "mx.fuzz.test", 12);
	gnutls_datum_t offer[2];
	unsigned n = 0;
	if (flags & 2)
		offer[n++] = alpn_h2;
	if (flags & 1)
		offer[n++] = alpn_smtp;
	if (n)
		gnutls_alpn_set_protocols(c->s, offer, n, 0);
	gnutls_transport_set_ptr(c->s, c);
	gnutls_transport_set_pull_function(c->s, client_pull);
	gnutls_transport_set_pull_timeout_function(c->s, client_pull_timeout);
	gnutls_transport_set_push_function(c->s, client_push);
	c->started = true;
	return true;
}

static void client_free(struct client *c)
{
	if (c->s)
		gnutls_deinit(c->s);
	buf_free(&c->in);
	buf_free(&c->out);
}

/* ---- the session: proxy/session.c without libuv ----------------------- */

struct stream {
	bool pending_cr;
};

/* Bytes continue a stream of CRLF-ended lines without a bare CR or LF. */
static void check_canonical(struct stream *st, const char *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (st->pending_cr)
			CHECK(p[i] == '\n');
		else
			CHECK(p[i] != '\n');
		st->pending_cr = p[i] == '\r';
	}
}

struct session {
	struct smtp_machine m;
	struct tls_io *tls; /* client_ep.tls */
	bool tls_port;
	bool admitted, backend_fails;
	bool handshaking, closing, backend_connected, backend_gone;
	bool start_tls_seen;
	unsigned hs_chunk; /* 0: handshake flights whole */
	unsigned client_flags;
	struct client cl;
	struct stream to_backend, to_client_plain, to_client_tls;
	bool canary_used, canary_armed;
	bool dropped;	     /* drop_backend was asked for */
	bool machine_closed; /* the machine asked for the close */
	bool coalesce;	     /* byte 2, bit 6 */
	char plain_buf[PLAIN_BUF];
};

static void session_step(struct session *s);
static void pump_tls(struct session *s);

static void check_tls_error(const struct tls_io *t)
{
	size_t n = strnlen(t->error, sizeof(t->error));
	CHECK(n > 0 && n < sizeof(t->error));
}

/* endpoint_flush_tls: the ciphertext tls_io holds goes to the client. */
static void flush_tls(struct session *s)
{
	if (!s->tls || !s->tls->out.len)
		return;
	if (s->cl.started && !s->cl.dead)
		CHECK(buf_append(&s->cl.in, s->tls->out.data, s->tls->out.len));
	s->tls->out.len = 0;
}

static void session_close(struct session *s, enum smtp_close_reason reason)
{
	if (s->closing)
		return;
	TRACE("close: %s\n", smtp_close_reason_name(reason));
	s->closing = true;
	s->backend_gone = true; /* close_backend */
	if (s->tls && s->tls->established) {
		tls_io_bye(s->tls);
		flush_tls(s);
	}
}

/* endpoint_send through send_client. */
static void send_client(struct session *s, const char *data, size_t len)
{
	if (!s->tls) {
		TRACE("to client (plain): %.*s", (int)len, data);
		check_canonical(&s->to_client_plain, data, len);
		CHECK(!s->to_client_plain.pending_cr);
		return; /* the client reads it as is */
	}
	if (!s->tls->established)
		return; /* nothing plaintext may cross a TLS handshake */
	int rc = tls_io_send(s->tls, data, len);
	CHECK(rc == TLSIO_OK || rc == TLSIO_ERROR);
	if (rc != TLSIO_OK) {
		check_tls_error(s->tls);
		session_close(s, CLOSE_TLS_ERROR);
		return;
	}
	flush_tls(s);
}

static void backend_receives(struct session *s, const char *p, size_t n)
{
	CHECK(s->backend_connected && !s->backend_gone);
	TRACE("to backend%s: %.*s", s->canary_armed ? " (canary armed)" : "", (int)n, p);
	check_canonical(&s->to_backend, p, n);
	CHECK(!s->to_backend.pending_cr);
	if (s->canary_armed)
		for (size_t i = 0; i < n; i++)
			CHECK(p[i] != CANARY);
}

static void begin_tls(struct session *s)
{
	CHECK(!s->tls);
	s->tls = calloc(1, sizeof(*s->tls));
	CHECK(s->tls);
	int rc = tls_io_init(s->tls, creds);
	CHECK(rc == TLSIO_OK || rc == TLSIO_ERROR);
	if (rc != TLSIO_OK) {
		session_close(s, CLOSE_TLS_ERROR);
		return;
	}
	s->handshaking = true;
	if (!client_start(&s->cl, s->client_flags))
		s->cl.dead = true;
}

static void start_backend(struct session *s)
{
	if (s->backend_fails) {
		s->backend_gone = true;
		smtp_machine_backend_unavailable(&s->m);
		session_step(s);
		return;
	}
	s->backend_connected = true; /* connect_cb */
	session_step(s);
}

static void after_greeting_ready(struct session *s)
{
	if (!s->admitted) {
		smtp_machine_limit(&s->m);
		session_step(s);
		return;
	}
	start_backend(s);
}

static void do_handshake(struct session *s)
{
	int rc = tls_io_handshake(s->tls);
	CHECK(rc == TLSIO_OK || rc == TLSIO_AGAIN || rc == TLSIO_ERROR);
	flush_tls(s);
	if (s->closing || rc == TLSIO_AGAIN)
		return;
	if (rc == TLSIO_ERROR) {
		TRACE("tls_io_handshake: %s\n", s->tls->error);
		check_tls_error(s->tls);
		session_close(s, CLOSE_TLS_ERROR);
		return;
	}
	CHECK(s->tls->established);
	s->handshaking = false;
	TRACE("handshake done: %s %s\n", tls_io_version(s->tls), tls_io_cipher(s->tls));
	char sni[300];
	tls_io_sni(s->tls, sni, sizeof(sni));
	CHECK(tls_io_version(s->tls) && tls_io_cipher(s->tls));
	(void)tls_io_resumed(s->tls);
	if (s->tls_port) {
		after_greeting_ready(s);
		return;
	}
	smtp_machine_tls_established(&s->m);
	session_step(s);
	pump_tls(s);
}

static bool client_wanted(struct session *s)
{
	if (s->closing)
		return false;
	if (s->handshaking)
		return true;
	return smtp_machine_wants_client_input(&s->m);
}

/* endpoint_pump with session.c's pump ops. */
static void pump_tls(struct session *s)
{
	while (!s->closing && s->tls && s->tls->established && client_wanted(s)) {
		ssize_t n = tls_io_recv(s->tls, s->plain_buf, sizeof(s->plain_buf));
		CHECK(n > 0 || n == TLSIO_AGAIN || n == TLSIO_EOF || n == TLSIO_ERROR);
		CHECK(n <= (ssize_t)sizeof(s->plain_buf));
		if (n == TLSIO_AGAIN)
			break;
		if (s->tls->renegotiation_refused) {
			s->tls->renegotiation_refused = false;
			CHECK(n == TLSIO_ERROR);
			flush_tls(s);
		}
		if (n == TLSIO_EOF) {
			session_close(s, CLOSE_CLIENT_CLOSED);
			break;
		}
		if (n == TLSIO_ERROR) {
			TRACE("tls_io_recv: %s\n", s->tls->error);
			check_tls_error(s->tls);
			session_close(s, CLOSE_TLS_ERROR);
			break;
		}
		TRACE("decrypted %zd phase %s\n", n, smtp_phase_name(s->m.phase));
		smtp_machine_feed_client(&s->m, s->plain_buf, (size_t)n);
		session_step(s);
	}
}

/* Bytes from the client's socket. */
static void client_bytes(struct session *s, const char *p, size_t n)
{
	if (s->closing)
		return;
	if (!s->tls) {
		smtp_machine_feed_client(&s->m, p, n);
		session_step(s);
		return;
	}
	CHECK(tls_io_feed(s->tls, p, n));
	if (s->handshaking)
		do_handshake(s);
	else
		pump_tls(s);
	session_step(s);
}

/* The client's socket ends (read error or EOF). */
static void client_eof(struct session *s)
{
	if (!s->closing)
		session_close(s, s->handshaking ? CLOSE_TLS_ERROR : CLOSE_CLIENT_CLOSED);
}

static void session_step(struct session *s)
{
	if (s->closing)
		return;
	struct smtp_actions *a = &s->m.act;
	size_t len;
	char *data;
	if (s->dropped)
		CHECK(a->to_backend.len == 0);
	if (a->drop_backend) {
		s->dropped = true;
		s->backend_gone = true;
	}
	data = buf_take(&a->to_backend, &len);
	if (s->backend_connected && !s->backend_gone)
		backend_receives(s, data, len);
	free(data);
	data = buf_take(&a->to_client, &len);
	if (len)
		send_client(s, data, len);
	free(data);
	if (s->closing)
		return;
	bool start_tls = a->start_tls;
	bool close = a->close;
	enum smtp_close_reason reason = a->reason;
	if (close) {
		CHECK(reason != CLOSE_NONE);
		s->machine_closed = true;
	}
	smtp_machine_clear_actions(&s->m);
	if (close) {
		session_close(s, reason);
		return;
	}
	if (start_tls) {
		CHECK(!s->start_tls_seen && !s->tls_port && !s->tls);
		s->start_tls_seen = true;
		begin_tls(s);
	}
	if (s->tls && s->tls->established && client_wanted(s) && tls_io_pending(s->tls))
		pump_tls(s);
}

/* After the session closed, session.c calls the machine no more. When the
 * machine itself asked for the close it is still called here, and nothing
 * may come out of it. */
static void check_silent(struct session *s)
{
	struct smtp_actions *a = &s->m.act;
	if (!s->machine_closed) {
		smtp_machine_clear_actions(&s->m);
		buf_free(&a->to_client);
		buf_free(&a->to_backend);
		return;
	}
	CHECK(a->to_client.len == 0 && a->to_backend.len == 0);
	CHECK(!a->start_tls && !a->drop_backend);
	smtp_machine_clear_actions(&s->m);
}

/* ---- the client's side of the conversation ----------------------------- */

/* Moves what the client wrote to the server, in reads of chunk (0: one). */
static void deliver(struct session *s, size_t chunk)
{
	size_t len;
	char *data = buf_take(&s->cl.out, &len);
	for (size_t off = 0; off < len && !s->closing;) {
		size_t n = chunk && chunk < len - off ? chunk : len - off;
		client_bytes(s, data + off, n);
		off += n;
	}
	free(data);
}

/* The client reads what the server sent it. */
static void client_read(struct session *s)
{
	struct client *c = &s->cl;
	if (!c->established || c->dead)
		return;
	char buf[4096];
	for (int i = 0; i < 256; i++) {
		ssize_t n = gnutls_record_recv(c->s, buf, sizeof(buf));
		if (n > 0) {
			CHECK(!c->got_eof);
			TRACE("to client (tls): %.*s", (int)n, buf);
			check_canonical(&s->to_client_tls, buf, (size_t)n);
			continue;
		}
		if (n == 0) {
			c->got_eof = true;
			return;
		}
		if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED)
			return;
		if (!gnutls_error_is_fatal((int)n))
			continue;
		c->dead = true;
		return;
	}
}

/* Runs the handshake to its end (or failure) between the two sides. */
/* With coalesce, a client that finishes first (TLS 1.3) keeps its last
 * flight for the caller, whose records then arrive in the same read. */
static void run_handshake(struct session *s, bool coalesce)
{
	struct client *c = &s->cl;
	for (int i = 0; i < MAX_ROUNDS && s->handshaking && !s->closing && !c->dead; i++) {
		int rc = gnutls_handshake(c->s);
		if (rc == 0) {
			c->established = true;
			if (coalesce && s->handshaking)
				return; /* the Finished waits in c->out */
		} else if (rc != GNUTLS_E_AGAIN && rc != GNUTLS_E_INTERRUPTED &&
			   gnutls_error_is_fatal(rc)) {
			c->dead = true;
		}
		size_t before = c->out.len;
		deliver(s, s->hs_chunk);
		if (c->established && !s->handshaking)
			break;
		if (before == 0 && rc == GNUTLS_E_AGAIN && c->in.len == c->in_off)
			break; /* neither side can move */
	}
	if (c->started && !c->established && !c->dead && !s->handshaking) {
		/* The server finished; the client reads its last flight. */
		int rc = gnutls_handshake(c->s);
		if (rc == 0)
			c->established = true;
		else if (gnutls_error_is_fatal(rc))
			c->dead = true;
		deliver(s, s->hs_chunk);
	}
	client_read(s);
}

static const unsigned record_sizes[16] = {1,   2,   3,	 5,    8,    13,   21,	  64,
					  100, 255, 512, 1000, 4096, 8192, 16384, 20000};

/* The client's application bytes: plaintext, or records under TLS. */
/* The client's bytes never hold the canary byte. */
static char *client_copy(const uint8_t *p, size_t n, size_t room)
{
	char *copy = malloc(n + room + 1);
	CHECK(copy);
	for (size_t i = 0; i < n; i++)
		copy[i] = p[i] == CANARY ? '\x02' : (char)p[i];
	return copy;
}

/* Bytes on the client's socket (TLS or not), canary byte removed. */
static void plain_bytes(struct session *s, const uint8_t *p, size_t n)
{
	char *copy = client_copy(p, n, 0);
	client_bytes(s, copy, n);
	free(copy);
}

static void client_send(struct session *s, const uint8_t *p, size_t n, unsigned recsize,
			size_t chunk)
{
	if (!s->tls) {
		plain_bytes(s, p, n);
		return;
	}
	char *copy = client_copy(p, n, 0);
	if (s->handshaking)
		run_handshake(s, s->coalesce && n > 0);
	struct client *c = &s->cl;
	if (s->closing || !c->established || c->dead || c->got_eof) {
		free(copy);
		return;
	}
	int again = 0;
	for (size_t off = 0; off < n;) {
		size_t k = n - off < recsize ? n - off : recsize;
		ssize_t rc = gnutls_record_send(c->s, copy + off, k);
		if (rc > 0) {
			off += (size_t)rc;
		} else if ((rc != GNUTLS_E_AGAIN && rc != GNUTLS_E_INTERRUPTED) || ++again > 8) {
			c->dead = true; /* e.g. inside its own renegotiation */
			break;
		}
	}
	free(copy);
	deliver(s, chunk);
	client_read(s);
}

/* One record of payload, damaged on the way (mode: event 3). */
static void client_damaged(struct session *s, const uint8_t *p, size_t n, unsigned mode)
{
	if (n < 2)
		return;
	size_t where = p[0];
	p++;
	n--;
	if (n > DAMAGE_LIMIT)
		n = DAMAGE_LIMIT;
	if (!s->tls) {
		plain_bytes(s, p, n);
		return;
	}
	if (s->handshaking)
		run_handshake(s, false);
	struct client *c = &s->cl;
	if (s->closing || !c->established || c->dead)
		return;
	size_t before = c->out.len;
	if (gnutls_record_send(c->s, p, n) <= 0) {
		c->dead = true;
		return;
	}
	size_t len = c->out.len - before;
	char *rec = c->out.data + before;
	switch (mode & 3) {
	case 0:
	case 3:
		c->out.len = before + where % len;
		break;
	case 1:
		rec[where % len] ^= (char)(1u << (where % 8));
		break;
	case 2: {
		char *copy = malloc(len); /* rec moves when out grows */
		CHECK(copy);
		memcpy(copy, rec, len);
		CHECK(buf_append(&c->out, copy, len));
		free(copy);
		break;
	}
	}
	deliver(s, 0);
	if ((mode & 3) == 3)
		client_eof(s);
	client_read(s);
}

static void client_close(struct session *s, bool notify)
{
	struct client *c = &s->cl;
	if (notify && s->tls && c->established && !c->dead) {
		gnutls_bye(c->s, GNUTLS_SHUT_WR);
		deliver(s, 0);
		client_read(s);
	}
	client_eof(s);
}

static void client_renegotiate(struct session *s, bool both)
{
	struct client *c = &s->cl;
	if (!s->tls || s->handshaking || !c->established || c->dead || s->closing)
		return;
	if (gnutls_protocol_get_version(c->s) == GNUTLS_TLS1_3) {
		int rc = gnutls_session_key_update(c->s, both ? GNUTLS_KU_PEER : 0);
		if (rc < 0 && rc != GNUTLS_E_AGAIN)
			c->dead = true;
	} else {
		int rc = gnutls_handshake(c->s);
		if (rc < 0 && rc != GNUTLS_E_AGAIN && gnutls_error_is_fatal(rc))
			c->dead = true;
	}
	deliver(s, 0);
	client_read(s);
}

/* The canary commands as plaintext while STARTTLS is accepted (event 9). */
static void inject_canary(struct session *s)
{
	if (s->tls || s->closing || s->canary_used || s->m.phase != PHASE_STARTTLS)
		return;
	s->canary_used = true;
	s->canary_armed = true;
	client_bytes(s, canary_cmds + 2, sizeof(canary_cmds) - 3);
}

/* Client bytes then the canary commands in the same read (event 11): the
 * canary is armed when the read got STARTTLS accepted. */
static void send_with_canary(struct session *s, const uint8_t *p, size_t n, unsigned recsize)
{
	if (s->tls || s->canary_used || s->closing) {
		client_send(s, p, n, recsize, 0);
		return;
	}
	s->canary_used = true;
	/* Armed before the read when STARTTLS is already accepted; else it is
	 * decided by what the read did, and its output is checked after. */
	if (s->m.phase == PHASE_STARTTLS)
		s->canary_armed = true;
	/* session_step runs inside the read: hold the backend check until the
	 * phase after the read is known by checking the whole output then. */
	char *copy = client_copy(p, n, sizeof(canary_cmds));
	memcpy(copy + n, canary_cmds, sizeof(canary_cmds) - 1);
	smtp_machine_feed_client(&s->m, copy, n + sizeof(canary_cmds) - 1);
	free(copy);
	enum smtp_phase ph = s->m.phase;
	if (ph == PHASE_STARTTLS || ph == PHASE_HANDSHAKE || s->m.act.start_tls)
		s->canary_armed = true;
	session_step(s);
}

static void backend_bytes(struct session *s, const uint8_t *p, size_t n)
{
	if (s->closing) {
		smtp_machine_feed_backend(&s->m, (const char *)p, n);
		check_silent(s);
		return;
	}
	if (!s->backend_connected || s->backend_gone)
		return; /* not read */
	smtp_machine_feed_backend(&s->m, (const char *)p, n);
	session_step(s);
}

static void backend_closed(struct session *s)
{
	if (s->closing) {
		smtp_machine_backend_closed(&s->m);
		check_silent(s);
		return;
	}
	if (!s->backend_connected || s->backend_gone)
		return;
	s->backend_gone = true;
	smtp_machine_backend_closed(&s->m);
	session_step(s);
}

static void timer_fires(struct session *s)
{
	if (s->closing) {
		smtp_machine_timeout(&s->m);
		check_silent(s);
		return;
	}
	if (s->handshaking) {
		session_close(s, CLOSE_TIMEOUT);
		return;
	}
	if (!s->backend_connected)
		smtp_machine_backend_unavailable(&s->m);
	else
		smtp_machine_timeout(&s->m);
	session_step(s);
}

static void shutdown_now(struct session *s)
{
	if (s->closing) {
		smtp_machine_shutdown(&s->m);
		check_silent(s);
		return;
	}
	smtp_machine_shutdown(&s->m);
	session_step(s);
}

static void event(struct session *s, const uint8_t *p, size_t n)
{
	if (n == 0)
		return;
	unsigned type = p[0] & 15, param = p[0] >> 4;
	const uint8_t *pl = p + 1;
	size_t len = n - 1;
	switch (type) {
	case 1:
		if (len == 0)
			return;
		client_send(s, pl + 1, len - 1, record_sizes[param], 1u + pl[0]);
		break;
	case 2:
		if (!s->closing)
			plain_bytes(s, pl, len);
		break;
	case 3:
		client_damaged(s, pl, len, param);
		break;
	case 4:
		backend_bytes(s, pl, len);
		break;
	case 5:
		backend_closed(s);
		break;
	case 6:
		timer_fires(s);
		break;
	case 7:
		client_close(s, param & 1);
		break;
	case 8:
		client_renegotiate(s, param & 1);
		break;
	case 9:
		inject_canary(s);
		break;
	case 10:
		shutdown_now(s);
		break;
	case 11:
		send_with_canary(s, pl, len, record_sizes[param]);
		break;
	default:
		client_send(s, pl, len, record_sizes[param], 0);
		break;
	}
	if (s->tls && !s->closing)
		client_read(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const unsigned line_lengths[] = {8, 32, 100, 2048};
	static const unsigned hs_chunks[] = {0, 1, 7, 300};
	if (size < 3)
		return 0;
	struct session *s = calloc(1, sizeof(*s));
	CHECK(s);
	struct smtp_machine_config cfg = {
	    .tls_port = !(data[0] & 1),
	    .starttls = data[0] & 2,
	    .require_tls = data[0] & 4,
	    .tcp_auth = data[0] & 8,
	    .tls_auth = data[0] & 16,
	    .reject_bare = data[0] & 32,
	    .xclient = data[0] & 64,
	    .line_length = line_lengths[data[1] & 3],
	    .max_errors = (data[1] >> 2) & 15,
	    .server_name = "mx.fuzz.test",
	    .xclient_port = 4321,
	};
	if (cfg.require_tls && !cfg.starttls)
		cfg.require_tls = false; /* a configuration error (§2) */
	strcpy(cfg.xclient_addr, data[0] & 128 ? "IPV6:2001:db8::7" : "192.0.2.7");
	s->tls_port = cfg.tls_port;
	s->admitted = !(data[1] & 64);
	s->backend_fails = data[1] & 128;
	s->client_flags = data[2] & 15;
	s->hs_chunk = hs_chunks[(data[2] >> 4) & 3];
	s->coalesce = data[2] & 64;
	smtp_machine_init(&s->m, &cfg);

	/* session_begin */
	if (s->tls_port)
		begin_tls(s);
	else
		after_greeting_ready(s);

	data += 3;
	size -= 3;
	while (size) {
		const uint8_t *sep = memchr(data, 0xFF, size);
		size_t n = sep ? (size_t)(sep - data) : size;
		event(s, data, n);
		if (!sep)
			break;
		data += n + 1;
		size -= n + 1;
	}
	if (!s->closing)
		client_eof(s);
	client_read(s);

	smtp_machine_free(&s->m);
	if (s->tls) {
		tls_io_free(s->tls);
		free(s->tls);
	}
	client_free(&s->cl);
	free(s);
	return 0;
}
