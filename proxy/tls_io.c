/* tls_io.c — GnuTLS over memory buffers (tls_io.h).
 *
 * The pull function copies from t->in or reports EAGAIN; the push function
 * appends to t->out, so a send never blocks. Never touches a socket; never
 * lets a GNUTLS_E_* code out.
 */
#include "proxy/tls_io.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

static ssize_t pull_cb(gnutls_transport_ptr_t ptr, void *data, size_t len)
{
	struct tls_io *t = ptr;
	if (t->lent_len) {
		/* tls_io_lend(): t->in is empty, read the caller's bytes. */
		if (len > t->lent_len)
			len = t->lent_len;
		memcpy(data, t->lent, len);
		t->lent += len;
		t->lent_len -= len;
		return (ssize_t)len;
	}
	size_t avail = t->in.len - t->in_off;
	if (avail == 0) {
		gnutls_transport_set_errno(t->session, EAGAIN);
		return -1;
	}
	if (len > avail)
		len = avail;
	memcpy(data, t->in.data + t->in_off, len);
	t->in_off += len;
	if (t->in_off == t->in.len) {
		t->in.len = 0;
		t->in_off = 0;
	}
	return (ssize_t)len;
}

static int pull_timeout_cb(gnutls_transport_ptr_t ptr, unsigned int ms)
{
	struct tls_io *t = ptr;
	return t->in.len > t->in_off || t->lent_len ? 1 : 0;
}

static ssize_t push_cb(gnutls_transport_ptr_t ptr, const void *data, size_t len)
{
	struct tls_io *t = ptr;
	if (!buf_append(&t->out, data, len)) {
		gnutls_transport_set_errno(t->session, ENOMEM);
		return -1;
	}
	return (ssize_t)len;
}

static int setup(struct tls_io *t, int rc)
{
	if (rc < 0) {
		snprintf(t->error, sizeof(t->error), "%s", gnutls_strerror(rc));
		t->session = NULL;
		return TLSIO_ERROR;
	}
	gnutls_transport_set_ptr(t->session, t);
	gnutls_transport_set_pull_function(t->session, pull_cb);
	gnutls_transport_set_pull_timeout_function(t->session, pull_timeout_cb);
	gnutls_transport_set_push_function(t->session, push_cb);
	return TLSIO_OK;
}

int tls_io_init(struct tls_io *t, struct creds *creds)
{
	memset(t, 0, sizeof(*t));
	return setup(t, creds_server_session(creds, &t->session));
}

int tls_io_init_client(struct tls_io *t, struct creds *creds, const char *server_name, bool verify)
{
	memset(t, 0, sizeof(*t));
	return setup(t, creds_client_session(creds, server_name, verify, &t->session));
}

void tls_io_free(struct tls_io *t)
{
	if (t->session)
		gnutls_deinit(t->session);
	t->session = NULL;
	buf_free(&t->in);
	buf_free(&t->out);
}

bool tls_io_feed(struct tls_io *t, const char *p, size_t n)
{
	if (t->in_off && t->in_off == t->in.len) {
		t->in.len = 0;
		t->in_off = 0;
	}
	return buf_append(&t->in, p, n);
}

bool tls_io_lend(struct tls_io *t, const char *p, size_t n)
{
	if (t->in_off == t->in.len) {
		t->in.len = 0;
		t->in_off = 0;
		t->lent = p;
		t->lent_len = n;
		return true;
	}
	return tls_io_feed(t, p, n);
}

bool tls_io_unlend(struct tls_io *t)
{
	size_t n = t->lent_len;
	const char *p = t->lent;
	t->lent = NULL;
	t->lent_len = 0;
	return tls_io_feed(t, p, n);
}

static int fail(struct tls_io *t, int rc)
{
	snprintf(t->error, sizeof(t->error), "%s", gnutls_strerror(rc));
	return TLSIO_ERROR;
}

int tls_io_handshake(struct tls_io *t)
{
	int rc;
	do {
		rc = gnutls_handshake(t->session);
	} while (rc < 0 && !gnutls_error_is_fatal(rc) && rc != GNUTLS_E_AGAIN &&
		 rc != GNUTLS_E_INTERRUPTED);
	if (rc == GNUTLS_E_SUCCESS) {
		t->established = true;
		return TLSIO_OK;
	}
	if (rc == GNUTLS_E_AGAIN || rc == GNUTLS_E_INTERRUPTED)
		return TLSIO_AGAIN;
	/* Tell the client why (no_application_protocol for the ALPN rule of
	 * SPEC §5, handshake_failure, ...): GnuTLS does not send it itself. */
	gnutls_alert_send_appropriate(t->session, rc);
	if (rc == GNUTLS_E_FATAL_ALERT_RECEIVED)
		t->failure = TLSIO_FAIL_ALERT;
	else if (rc == GNUTLS_E_NO_APPLICATION_PROTOCOL)
		t->failure = TLSIO_FAIL_ALPN;
	else if (rc == GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR || rc == GNUTLS_E_CERTIFICATE_ERROR)
		t->failure = TLSIO_FAIL_CERTIFICATE;
	else
		t->failure = TLSIO_FAIL_PROTOCOL;
	return fail(t, rc);
}

/* gnutls_record_recv() into p, or with p NULL gnutls_record_recv_packet()
 * into *pkt, with the retries and the renegotiation refusal of both. */
static ssize_t recv_either(struct tls_io *t, char *p, size_t n, gnutls_packet_t *pkt)
{
	for (;;) {
		size_t before = t->in.len - t->in_off;
		ssize_t rc = p ? gnutls_record_recv(t->session, p, n)
			       : gnutls_record_recv_packet(t->session, pkt);
		if (rc > 0)
			return rc;
		if (pkt && *pkt) {
			gnutls_packet_deinit(*pkt);
			*pkt = NULL;
		}
		if (rc == 0)
			return TLSIO_EOF;
		if (rc == GNUTLS_E_AGAIN || rc == GNUTLS_E_INTERRUPTED) {
			/* A record that carried no data (a TLS 1.3 session
			 * ticket, a key update) also ends in AGAIN, with more
			 * records waiting behind it: they get no socket event,
			 * so go on while the input shrinks. */
			size_t after = t->in.len - t->in_off;
			if (after && after < before)
				continue;
			return TLSIO_AGAIN;
		}
		if (rc == GNUTLS_E_REHANDSHAKE) {
			/* SPEC §5: renegotiation is refused. A GnuTLS server
			 * can only renegotiate or end the session here (the
			 * ClientHello stays queued), so the client is told
			 * why with no_renegotiation and the session ends. */
			t->renegotiation_refused = true;
			gnutls_alert_send(t->session, GNUTLS_AL_WARNING, GNUTLS_A_NO_RENEGOTIATION);
			snprintf(t->error, sizeof(t->error),
				 "client asked for renegotiation: refused");
			return TLSIO_ERROR;
		}
		if (!gnutls_error_is_fatal((int)rc))
			continue; /* e.g. a warning alert or a TLS 1.3 key update */
		return fail(t, (int)rc);
	}
}

ssize_t tls_io_recv(struct tls_io *t, char *p, size_t n)
{
	return recv_either(t, p, n, NULL);
}

ssize_t tls_io_recv_packet(struct tls_io *t, gnutls_packet_t *pkt, const char **data)
{
	*pkt = NULL;
	ssize_t rc = recv_either(t, NULL, 0, pkt);
	if (rc > 0) {
		gnutls_datum_t d;
		gnutls_packet_get(*pkt, &d, NULL);
		*data = (const char *)d.data;
		rc = (ssize_t)d.size;
	}
	return rc;
}

bool tls_io_pending(const struct tls_io *t)
{
	return t->in.len > t->in_off || t->lent_len || gnutls_record_check_pending(t->session) > 0;
}

int tls_io_send(struct tls_io *t, const char *p, size_t n)
{
	while (n) {
		ssize_t rc = gnutls_record_send(t->session, p, n);
		if (rc > 0) {
			p += rc;
			n -= (size_t)rc;
			continue;
		}
		/* 0: GnuTLS flushed data of its own (a session ticket);
		 * the push never blocks, so a retry makes progress. */
		if (rc == 0 || rc == GNUTLS_E_AGAIN || rc == GNUTLS_E_INTERRUPTED)
			continue;
		return fail(t, (int)rc);
	}
	return TLSIO_OK;
}

void tls_io_bye(struct tls_io *t)
{
	if (t->established)
		gnutls_bye(t->session, GNUTLS_SHUT_WR);
}

const char *tls_io_version(const struct tls_io *t)
{
	if (!t || !t->established)
		return "none";
	const char *v = gnutls_protocol_get_name(gnutls_protocol_get_version(t->session));
	return v ? v : "none";
}

const char *tls_io_cipher(const struct tls_io *t)
{
	if (!t || !t->established)
		return "none";
	const char *c = gnutls_cipher_get_name(gnutls_cipher_get(t->session));
	return c ? c : "none";
}

unsigned tls_io_cipher_bits(const struct tls_io *t)
{
	if (!t || !t->established)
		return 0;
	return (unsigned)gnutls_cipher_get_key_size(gnutls_cipher_get(t->session)) * 8;
}

void tls_io_sni(const struct tls_io *t, char *out, size_t outlen)
{
	snprintf(out, outlen, "none");
	if (!t || !t->session)
		return;
	char name[256];
	size_t len = sizeof(name);
	unsigned type;
	if (gnutls_server_name_get(t->session, name, &len, &type, 0) == 0 &&
	    type == GNUTLS_NAME_DNS && len < sizeof(name)) {
		name[len] = '\0';
		snprintf(out, outlen, "%s", name);
	}
}

bool tls_io_resumed(const struct tls_io *t)
{
	return t && t->established && gnutls_session_is_resumed(t->session);
}
