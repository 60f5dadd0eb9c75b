/* test_credentials.c — cmocka tests of certs/ (SPEC §4.2.6, §5, §7.7, §7.8,
 * §7.9).
 *
 * Handshakes run in memory: a GnuTLS client session and a server session
 * from creds_server_session() talk through two byte queues whose push and
 * pull functions return EAGAIN and short counts at random points (seeded
 * rand), both sessions nonblocking, driven by a bounded loop. The outbound
 * tests turn it around: a client session from creds_client_session() and a
 * plain GnuTLS server playing the peer. Key and certificate files are
 * generated at test time in a mkdtemp directory; no key is committed.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

#include "certs/credentials.h"

#define SERVER_NAME	"mx.example.org"
#define RSA_NAME	"rsa.example.org"
#define EC_NAME		"ec.example.org"
#define CA_NAME		"ca.example.net"
#define PRIO_TLS12	"NORMAL:-VERS-ALL:+VERS-TLS1.2"
#define PRIO_TLS13	"NORMAL:-VERS-ALL:+VERS-TLS1.3"
#define MAX_STEPS	20000 /* handshake loop bound */
#define MAX_IO_STEPS	5000  /* record send/recv loop bound */
#define FP_LEN		(32 * 3 - 1)
#define TICKET_LIFETIME 3600 /* tls.session_cache_timeout's default */

/* ---- in-memory transport with random EAGAIN ---- */

struct queue {
	unsigned char *data;
	size_t len, cap;
};

struct endpoint {
	gnutls_session_t s;
	struct queue *in, *out;
};

struct link {
	struct queue c2s, s2c;
	struct endpoint client, server;
	gnutls_datum_t alpn_seen; /* server side, after the handshake */
};

/* Every test seeds rand() with fixed numbers, shifted by $TEST_SEED when set
 * (to shake the EAGAIN points: for i in $(seq 100); do TEST_SEED=$i ...). */
static void seed(unsigned n)
{
	const char *env = getenv("TEST_SEED");

	srand(n + (env ? (unsigned)strtoul(env, NULL, 10) * 1000u : 0u));
}

static bool coin(int one_in)
{
	return rand() % one_in == 0;
}

static ssize_t mem_push(gnutls_transport_ptr_t p, const void *data, size_t len)
{
	struct endpoint *e = p;

	if (len == 0)
		return 0;
	if (coin(3)) {
		gnutls_transport_set_errno(e->s, EAGAIN);
		return -1;
	}
	size_t n = coin(2) ? len : 1 + (size_t)rand() % len;
	struct queue *q = e->out;
	if (q->len + n > q->cap) {
		size_t cap = q->cap ? q->cap : 4096;
		while (cap < q->len + n)
			cap *= 2;
		unsigned char *d = realloc(q->data, cap);
		assert_non_null(d);
		q->data = d;
		q->cap = cap;
	}
	memcpy(q->data + q->len, data, n);
	q->len += n;
	return (ssize_t)n;
}

static ssize_t mem_pull(gnutls_transport_ptr_t p, void *data, size_t len)
{
	struct endpoint *e = p;
	struct queue *q = e->in;

	if (q->len == 0 || len == 0 || coin(3)) {
		gnutls_transport_set_errno(e->s, EAGAIN);
		return -1;
	}
	size_t n = q->len < len ? q->len : len;
	if (coin(2))
		n = 1 + (size_t)rand() % n;
	memcpy(data, q->data, n);
	memmove(q->data, q->data + n, q->len - n);
	q->len -= n;
	return (ssize_t)n;
}

static int mem_pull_timeout(gnutls_transport_ptr_t p, unsigned int ms)
{
	struct endpoint *e = p;

	(void)ms;
	return e->in->len > 0 ? 1 : 0;
}

static void endpoint_attach(struct endpoint *e, gnutls_session_t s, struct queue *in,
			    struct queue *out)
{
	e->s = s;
	e->in = in;
	e->out = out;
	gnutls_transport_set_ptr(s, e);
	gnutls_transport_set_push_function(s, mem_push);
	gnutls_transport_set_pull_function(s, mem_pull);
	gnutls_transport_set_pull_timeout_function(s, mem_pull_timeout);
}

/* ---- shared fixtures ---- */

static gnutls_certificate_credentials_t client_cred;
/* The outbound peer's: the RSA and ECDSA pairs as its own certificates, and
 * ca_cert (which issued none of them) as the CA it names when it asks for a
 * client certificate. */
static gnutls_certificate_credentials_t peer_cred;
static char tmpdir[64];
static char rsa_cert[128], rsa_key[128], other_key[128], ec_cert[128], ec_key[128],
    garbage_cert[128], missing[128], ca_cert[128];

static void path_in_tmp(char *out, size_t len, const char *name)
{
	int n = snprintf(out, len, "%s/%s", tmpdir, name);
	assert_true(n > 0 && (size_t)n < len);
}

static void write_datum(const char *path, const gnutls_datum_t *d)
{
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	assert_int_equal(fwrite(d->data, 1, d->size, f), d->size);
	assert_int_equal(fclose(f), 0);
}

static gnutls_x509_privkey_t make_key(gnutls_pk_algorithm_t pk, unsigned bits)
{
	gnutls_x509_privkey_t key;

	assert_int_equal(gnutls_x509_privkey_init(&key), 0);
	assert_int_equal(gnutls_x509_privkey_generate(key, pk, bits, 0), 0);
	return key;
}

static void write_key(gnutls_x509_privkey_t key, const char *path)
{
	gnutls_datum_t d;

	assert_int_equal(gnutls_x509_privkey_export2(key, GNUTLS_X509_FMT_PEM, &d), 0);
	write_datum(path, &d);
	gnutls_free(d.data);
}

/* A self-signed server certificate for name, written as PEM to path. */
static void write_cert(gnutls_x509_privkey_t key, const char *name, const char *path)
{
	gnutls_x509_crt_t crt;
	gnutls_datum_t d;
	unsigned char serial[8] = {0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0};
	time_t now = time(NULL);

	assert_int_equal(gnutls_x509_crt_init(&crt), 0);
	assert_int_equal(gnutls_x509_crt_set_version(crt, 3), 0);
	assert_int_equal(gnutls_x509_crt_set_serial(crt, serial, sizeof(serial)), 0);
	assert_int_equal(gnutls_x509_crt_set_activation_time(crt, now - 3600), 0);
	assert_int_equal(gnutls_x509_crt_set_expiration_time(crt, now + 86400), 0);
	assert_int_equal(gnutls_x509_crt_set_dn_by_oid(crt, GNUTLS_OID_X520_COMMON_NAME, 0, name,
						       (unsigned)strlen(name)),
			 0);
	assert_int_equal(gnutls_x509_crt_set_subject_alt_name(crt, GNUTLS_SAN_DNSNAME, name,
							      (unsigned)strlen(name),
							      GNUTLS_FSAN_SET),
			 0);
	assert_int_equal(gnutls_x509_crt_set_key(crt, key), 0);
	assert_int_equal(gnutls_x509_crt_set_key_usage(crt, GNUTLS_KEY_DIGITAL_SIGNATURE |
								GNUTLS_KEY_KEY_ENCIPHERMENT),
			 0);
	assert_int_equal(gnutls_x509_crt_sign2(crt, crt, key, GNUTLS_DIG_SHA256, 0), 0);
	assert_int_equal(gnutls_x509_crt_export2(crt, GNUTLS_X509_FMT_PEM, &d), 0);
	write_datum(path, &d);
	gnutls_free(d.data);
	gnutls_x509_crt_deinit(crt);
}

static int group_setup(void **state)
{
	(void)state;
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/tlsfront-creds-XXXXXX");
	if (mkdtemp(tmpdir) == NULL)
		return -1;
	path_in_tmp(rsa_cert, sizeof(rsa_cert), "rsa.pem");
	path_in_tmp(rsa_key, sizeof(rsa_key), "rsa.key");
	path_in_tmp(other_key, sizeof(other_key), "other.key");
	path_in_tmp(ec_cert, sizeof(ec_cert), "ec.pem");
	path_in_tmp(ec_key, sizeof(ec_key), "ec.key");
	path_in_tmp(garbage_cert, sizeof(garbage_cert), "garbage.pem");
	path_in_tmp(missing, sizeof(missing), "missing.pem");
	path_in_tmp(ca_cert, sizeof(ca_cert), "ca.pem");

	gnutls_x509_privkey_t key = make_key(GNUTLS_PK_RSA, 2048);
	write_key(key, rsa_key);
	write_cert(key, RSA_NAME, rsa_cert);
	gnutls_x509_privkey_deinit(key);

	key = make_key(GNUTLS_PK_RSA, 2048);
	write_key(key, other_key);
	gnutls_x509_privkey_deinit(key);

	key = make_key(GNUTLS_PK_ECDSA, GNUTLS_CURVE_TO_BITS(GNUTLS_ECC_CURVE_SECP256R1));
	write_key(key, ec_key);
	write_cert(key, EC_NAME, ec_cert);
	gnutls_x509_privkey_deinit(key);

	key = make_key(GNUTLS_PK_ECDSA, GNUTLS_CURVE_TO_BITS(GNUTLS_ECC_CURVE_SECP256R1));
	write_cert(key, CA_NAME, ca_cert);
	gnutls_x509_privkey_deinit(key);

	const char junk[] = "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n"
			    "-----END CERTIFICATE-----\n";
	gnutls_datum_t d = {(unsigned char *)junk, sizeof(junk) - 1};
	write_datum(garbage_cert, &d);

	if (gnutls_certificate_allocate_credentials(&peer_cred) != 0 ||
	    gnutls_certificate_set_x509_key_file2(peer_cred, rsa_cert, rsa_key, GNUTLS_X509_FMT_PEM,
						  NULL, 0) < 0 ||
	    gnutls_certificate_set_x509_key_file2(peer_cred, ec_cert, ec_key, GNUTLS_X509_FMT_PEM,
						  NULL, 0) < 0 ||
	    gnutls_certificate_set_x509_trust_file(peer_cred, ca_cert, GNUTLS_X509_FMT_PEM) != 1)
		return -1;
	return gnutls_certificate_allocate_credentials(&client_cred) == 0 ? 0 : -1;
}

static int group_teardown(void **state)
{
	const char *files[] = {rsa_cert, rsa_key, other_key, ec_cert, ec_key, garbage_cert};

	(void)state;
	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++)
		unlink(files[i]);
	unlink(ca_cert);
	rmdir(tmpdir);
	gnutls_certificate_free_credentials(client_cred);
	gnutls_certificate_free_credentials(peer_cred);
	return 0;
}

/* ---- helpers ---- */

static struct creds *new_creds(const struct creds_pair *pairs, size_t n, const char *priority,
			       bool *self_signed)
{
	char err[512] = "";
	struct creds_params p = {.pairs = pairs,
				 .n_pairs = n,
				 .server_name = SERVER_NAME,
				 .priority = priority,
				 .ticket_lifetime = TICKET_LIFETIME};
	bool ss = false;
	struct creds *c = creds_new(&p, &ss, err, sizeof(err));

	if (c == NULL)
		fail_msg("creds_new: %s", err);
	if (self_signed)
		*self_signed = ss;
	return c;
}

/* Expects creds_new to fail with a message holding every one of the given
 * strings (NULL-terminated list). */
static void expect_creds_error(const struct creds_pair *pairs, size_t n, const char *priority, ...)
{
	char err[512] = "";
	struct creds_params p = {
	    .pairs = pairs, .n_pairs = n, .server_name = SERVER_NAME, .priority = priority};
	bool ss = true;
	va_list ap;

	struct creds *c = creds_new(&p, &ss, err, sizeof(err));
	if (c != NULL) {
		creds_unref(c);
		fail_msg("creds_new succeeded, an error was expected");
	}
	assert_false(ss);
	va_start(ap, priority);
	for (const char *want = va_arg(ap, const char *); want; want = va_arg(ap, const char *))
		if (strstr(err, want) == NULL)
			fail_msg("error \"%s\" lacks \"%s\"", err, want);
	va_end(ap);
}

static void link_open(struct link *l, struct creds *c, const char *client_priority, const char *sni,
		      const gnutls_datum_t *alpn, unsigned n_alpn)
{
	gnutls_session_t cs, ss;

	memset(l, 0, sizeof(*l));
	assert_int_equal(creds_server_session(c, &ss), 0);
	assert_non_null(ss);
	assert_int_equal(gnutls_init(&cs, GNUTLS_CLIENT | GNUTLS_NONBLOCK | GNUTLS_NO_SIGNAL), 0);
	assert_int_equal(gnutls_priority_set_direct(cs, client_priority, NULL), 0);
	assert_int_equal(gnutls_credentials_set(cs, GNUTLS_CRD_CERTIFICATE, client_cred), 0);
	if (sni)
		assert_int_equal(gnutls_server_name_set(cs, GNUTLS_NAME_DNS, sni, strlen(sni)), 0);
	if (n_alpn)
		assert_int_equal(gnutls_alpn_set_protocols(cs, alpn, n_alpn, 0), 0);
	endpoint_attach(&l->client, cs, &l->s2c, &l->c2s);
	endpoint_attach(&l->server, ss, &l->c2s, &l->s2c);
}

static void peer_link_open(struct link *l, struct creds *c, const char *server_name, bool verify,
			   const char *peer_priority, gnutls_certificate_request_t request);

static void link_close(struct link *l)
{
	gnutls_deinit(l->client.s);
	gnutls_deinit(l->server.s);
	free(l->c2s.data);
	free(l->s2c.data);
}

static bool finished(int rc)
{
	return rc == 0 || gnutls_error_is_fatal(rc);
}

/* Drives both handshakes until each has succeeded or failed. A server that
 * fails sends the alert its error calls for, as proxy/ does. */
static void handshake(struct link *l, int *client_rc, int *server_rc)
{
	int crc = GNUTLS_E_AGAIN, src = GNUTLS_E_AGAIN;
	int alert_rc = 0;
	int after_fail = 0;

	for (int i = 0; i < MAX_STEPS; i++) {
		if (!finished(crc))
			crc = gnutls_handshake(l->client.s);
		if (!finished(src)) {
			src = gnutls_handshake(l->server.s);
			if (gnutls_error_is_fatal(src))
				alert_rc = GNUTLS_E_AGAIN;
		}
		if (alert_rc == GNUTLS_E_AGAIN || alert_rc == GNUTLS_E_INTERRUPTED)
			alert_rc = gnutls_alert_send_appropriate(l->server.s, src);
		if (finished(crc) && finished(src))
			break;
		/* One side failed: the other gets a bounded chance to see it. */
		if ((gnutls_error_is_fatal(crc) || gnutls_error_is_fatal(src)) &&
		    ++after_fail > 1000)
			break;
	}
	*client_rc = crc;
	*server_rc = src;
}

static void handshake_ok(struct link *l)
{
	int crc, src;

	handshake(l, &crc, &src);
	if (crc != 0 || src != 0)
		fail_msg("handshake: client %s, server %s", gnutls_strerror(crc),
			 gnutls_strerror(src));
}

static void send_all(struct endpoint *e, const char *msg)
{
	size_t len = strlen(msg);

	for (int i = 0; i < MAX_IO_STEPS; i++) {
		ssize_t n = gnutls_record_send(e->s, msg, len);
		/* 0: a record left over from the handshake (a TLS 1.3 ticket
		 * that met EAGAIN) went out, ours did not; send it again. */
		if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED || n == 0)
			continue;
		if (n < 0)
			fail_msg("record_send: %s", gnutls_strerror((int)n));
		assert_int_equal((size_t)n, len);
		return;
	}
	fail_msg("record_send never completed");
}

static void recv_expect(struct endpoint *e, const char *msg)
{
	char buf[256];
	size_t got = 0, len = strlen(msg);

	assert_true(len < sizeof(buf));
	for (int i = 0; i < MAX_IO_STEPS && got < len; i++) {
		ssize_t n = gnutls_record_recv(e->s, buf + got, sizeof(buf) - got);
		if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED)
			continue;
		if (n <= 0)
			fail_msg("record_recv: %s", n ? gnutls_strerror((int)n) : "EOF");
		got += (size_t)n;
	}
	assert_int_equal(got, len);
	assert_memory_equal(buf, msg, len);
}

static void exchange_records(struct link *l)
{
	send_all(&l->client, "EHLO client.example\r\n");
	recv_expect(&l->server, "EHLO client.example\r\n");
	send_all(&l->server, "250 mx.example.org\r\n");
	recv_expect(&l->client, "250 mx.example.org\r\n");
	/* Nothing sent twice, nothing left over. */
	assert_int_equal(l->c2s.len, 0);
	assert_int_equal(gnutls_record_check_pending(l->server.s), 0);
}

/* The server's certificate as the client saw it. */
static gnutls_x509_crt_t peer_cert(struct link *l)
{
	unsigned n = 0;
	const gnutls_datum_t *der = gnutls_certificate_get_peers(l->client.s, &n);
	gnutls_x509_crt_t crt;

	assert_non_null(der);
	assert_true(n >= 1);
	assert_int_equal(gnutls_x509_crt_init(&crt), 0);
	assert_int_equal(gnutls_x509_crt_import(crt, &der[0], GNUTLS_X509_FMT_DER), 0);
	return crt;
}

static void expect_peer_name(struct link *l, const char *name)
{
	gnutls_x509_crt_t crt = peer_cert(l);
	char cn[256];
	size_t cn_size = sizeof(cn);

	assert_int_equal(
	    gnutls_x509_crt_get_dn_by_oid(crt, GNUTLS_OID_X520_COMMON_NAME, 0, 0, cn, &cn_size), 0);
	assert_string_equal(cn, name);
	gnutls_x509_crt_deinit(crt);
}

static void fingerprint_of(const gnutls_datum_t *der, char *out)
{
	unsigned char md[32];
	size_t md_size = sizeof(md);

	assert_int_equal(gnutls_fingerprint(GNUTLS_DIG_SHA256, der, md, &md_size), 0);
	assert_int_equal(md_size, 32);
	for (size_t i = 0; i < md_size; i++)
		sprintf(out + i * 3, i + 1 < md_size ? "%02X:" : "%02X", md[i]);
}

/* ---- §5: the self-signed default and the handshake ---- */

static void handshake_and_exchange(const char *client_priority, gnutls_protocol_t want,
				   unsigned run)
{
	bool self_signed = false;
	struct creds *c = new_creds(NULL, 0, "NORMAL", &self_signed);
	struct link l;

	assert_true(self_signed);
	seed(run);
	link_open(&l, c, client_priority, SERVER_NAME, NULL, 0);
	handshake_ok(&l);
	assert_int_equal(gnutls_protocol_get_version(l.client.s), want);
	assert_int_equal(gnutls_protocol_get_version(l.server.s), want);
	exchange_records(&l);
	link_close(&l);
	creds_unref(c);
}

static void test_s5_self_signed_default_handshake(void **state)
{
	(void)state;
	for (unsigned run = 1; run <= 8; run++)
		handshake_and_exchange("NORMAL", GNUTLS_TLS1_3, run);
}

static void test_s5_tls12_handshake(void **state)
{
	(void)state;
	for (unsigned run = 1; run <= 8; run++)
		handshake_and_exchange(PRIO_TLS12, GNUTLS_TLS1_2, run);
}

static void test_s5_self_signed_certificate(void **state)
{
	struct creds *c = new_creds(NULL, 0, NULL, NULL);
	struct link l;
	char buf[256];
	size_t size;
	unsigned critical;

	(void)state;
	seed(11);
	link_open(&l, c, "NORMAL", NULL, NULL, 0);
	handshake_ok(&l);
	gnutls_x509_crt_t crt = peer_cert(&l);

	assert_int_equal(gnutls_x509_crt_get_version(crt), 3);
	size = sizeof(buf);
	assert_int_equal(
	    gnutls_x509_crt_get_dn_by_oid(crt, GNUTLS_OID_X520_COMMON_NAME, 0, 0, buf, &size), 0);
	assert_string_equal(buf, SERVER_NAME);
	size = sizeof(buf);
	assert_int_equal(gnutls_x509_crt_get_subject_alt_name(crt, 0, buf, &size, &critical),
			 GNUTLS_SAN_DNSNAME);
	assert_string_equal(buf, SERVER_NAME);
	assert_true(gnutls_x509_crt_check_hostname(crt, SERVER_NAME));

	gnutls_ecc_curve_t curve;
	gnutls_datum_t x, y;
	assert_int_equal(gnutls_x509_crt_get_pk_algorithm(crt, NULL), GNUTLS_PK_ECDSA);
	assert_int_equal(gnutls_x509_crt_get_pk_ecc_raw(crt, &curve, &x, &y), 0);
	assert_int_equal(curve, GNUTLS_ECC_CURVE_SECP256R1);
	gnutls_free(x.data);
	gnutls_free(y.data);
	assert_int_equal(gnutls_x509_crt_get_signature_algorithm(crt), GNUTLS_SIGN_ECDSA_SHA256);

	unsigned usage = 0;
	assert_true(gnutls_x509_crt_get_key_usage(crt, &usage, &critical) >= 0);
	assert_true(usage & GNUTLS_KEY_DIGITAL_SIGNATURE);
	size = sizeof(buf);
	assert_int_equal(gnutls_x509_crt_get_key_purpose_oid(crt, 0, buf, &size, &critical), 0);
	assert_string_equal(buf, GNUTLS_KP_TLS_WWW_SERVER);

	time_t now = time(NULL);
	time_t from = gnutls_x509_crt_get_activation_time(crt);
	time_t until = gnutls_x509_crt_get_expiration_time(crt);
	assert_true(from <= now - 3000 && from >= now - 4000);
	assert_true(until >= now + (time_t)9 * 365 * 86400);

	/* Signed by its own key. */
	unsigned status = 1;
	assert_int_equal(gnutls_x509_crt_verify(crt, &crt, 1, 0, &status), 0);
	assert_int_equal(status, 0);

	/* The start-up fingerprint is the one of the certificate served. */
	char want[FP_LEN + 1], got[FP_LEN + 1];
	gnutls_datum_t der;
	assert_int_equal(gnutls_x509_crt_export2(crt, GNUTLS_X509_FMT_DER, &der), 0);
	fingerprint_of(&der, want);
	gnutls_free(der.data);
	assert_int_equal(creds_fingerprint(c, got, sizeof(got)), 0);
	assert_string_equal(got, want);
	assert_int_equal(strlen(got), FP_LEN);
	assert_int_equal(creds_fingerprint(c, got, FP_LEN), -1);

	gnutls_x509_crt_deinit(crt);
	link_close(&l);
	creds_unref(c);
}

/* Each generation makes its own key. */
static void test_s5_self_signed_fresh_each_time(void **state)
{
	struct creds *a = new_creds(NULL, 0, NULL, NULL);
	struct creds *b = new_creds(NULL, 0, NULL, NULL);
	char fa[FP_LEN + 1], fb[FP_LEN + 1];

	(void)state;
	assert_int_equal(creds_fingerprint(a, fa, sizeof(fa)), 0);
	assert_int_equal(creds_fingerprint(b, fb, sizeof(fb)), 0);
	assert_string_not_equal(fa, fb);
	creds_unref(a);
	creds_unref(b);
}

static void test_s5_self_signed_needs_server_name(void **state)
{
	char err[256] = "";
	struct creds_params p = {.server_name = "", .priority = "NORMAL"};
	bool ss = true;

	(void)state;
	assert_null(creds_new(&p, &ss, err, sizeof(err)));
	assert_false(ss);
	assert_non_null(strstr(err, "self-signed"));
}

/* ---- §5: certificate files ---- */

static void test_s5_rsa_pair_loads(void **state)
{
	struct creds_pair pair = {rsa_cert, rsa_key, NULL};
	bool self_signed = true;
	struct creds *c = new_creds(&pair, 1, "NORMAL", &self_signed);
	struct link l;

	(void)state;
	assert_false(self_signed);
	for (unsigned run = 21; run <= 22; run++) {
		const char *prio = run == 21 ? "NORMAL" : PRIO_TLS12;
		seed(run);
		link_open(&l, c, prio, RSA_NAME, NULL, 0);
		handshake_ok(&l);
		expect_peer_name(&l, RSA_NAME);
		exchange_records(&l);
		link_close(&l);
	}

	/* The fingerprint is the one of the file's certificate. */
	gnutls_datum_t pem, der;
	gnutls_x509_crt_t crt;
	char want[FP_LEN + 1], got[FP_LEN + 1];
	assert_int_equal(gnutls_load_file(rsa_cert, &pem), 0);
	assert_int_equal(gnutls_x509_crt_init(&crt), 0);
	assert_int_equal(gnutls_x509_crt_import(crt, &pem, GNUTLS_X509_FMT_PEM), 0);
	assert_int_equal(gnutls_x509_crt_export2(crt, GNUTLS_X509_FMT_DER, &der), 0);
	fingerprint_of(&der, want);
	assert_int_equal(creds_fingerprint(c, got, sizeof(got)), 0);
	assert_string_equal(got, want);
	gnutls_free(der.data);
	gnutls_free(pem.data);
	gnutls_x509_crt_deinit(crt);
	creds_unref(c);
}

/* §5 several pairs, §7.8: GnuTLS picks by SNI and by what the client can
 * use; an SNI that matches nothing gets the first listed pair. */
static void test_s7_8_several_pairs_by_sni_and_key_type(void **state)
{
	struct creds_pair pairs[] = {{rsa_cert, rsa_key, NULL}, {ec_cert, ec_key, NULL}};
	struct creds *c = new_creds(pairs, 2, "NORMAL", NULL);
	struct link l;
	static const struct {
		const char *priority, *sni, *want;
	} cases[] = {
	    {"NORMAL", RSA_NAME, RSA_NAME},
	    {"NORMAL", EC_NAME, EC_NAME},
	    {"NORMAL", "unknown.example.net", RSA_NAME},
	    {"NORMAL", NULL, RSA_NAME},
	    {PRIO_TLS12 ":-SIGN-ALL:+SIGN-ECDSA-SHA256", "unknown.example.net", EC_NAME},
	    {PRIO_TLS13 ":-SIGN-ALL:+SIGN-ECDSA-SECP256R1-SHA256", NULL, EC_NAME},
	};

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		seed(30 + (unsigned)i);
		link_open(&l, c, cases[i].priority, cases[i].sni, NULL, 0);
		handshake_ok(&l);
		expect_peer_name(&l, cases[i].want);
		link_close(&l);
	}
	creds_unref(c);
}

static void test_s5_key_mismatch_names_file(void **state)
{
	struct creds_pair pair = {rsa_cert, other_key, NULL};
	struct creds_pair pairs[] = {{ec_cert, ec_key, NULL}, {rsa_cert, ec_key, NULL}};

	(void)state;
	expect_creds_error(&pair, 1, "NORMAL", other_key, rsa_cert, "does not match", NULL);
	expect_creds_error(pairs, 2, "NORMAL", ec_key, rsa_cert, "does not match", NULL);
}

static void test_s5_missing_file_named(void **state)
{
	struct creds_pair no_cert = {missing, rsa_key, NULL};
	struct creds_pair no_key = {rsa_cert, missing, NULL};

	(void)state;
	expect_creds_error(&no_cert, 1, "NORMAL", missing, "cannot read", NULL);
	expect_creds_error(&no_key, 1, "NORMAL", missing, "cannot read", NULL);
}

static void test_s5_bad_files_named(void **state)
{
	struct creds_pair bad_cert = {garbage_cert, rsa_key, NULL};
	struct creds_pair key_as_cert = {rsa_key, rsa_key, NULL};
	struct creds_pair cert_as_key = {rsa_cert, rsa_cert, NULL};
	struct creds_pair dir_as_cert = {tmpdir, rsa_key, NULL};

	(void)state;
	expect_creds_error(&bad_cert, 1, "NORMAL", garbage_cert, NULL);
	expect_creds_error(&key_as_cert, 1, "NORMAL", rsa_key, NULL);
	expect_creds_error(&cert_as_key, 1, "NORMAL", rsa_cert, NULL);
	expect_creds_error(&dir_as_cert, 1, "NORMAL", tmpdir, NULL);
}

/* ---- §2 tls.priority ---- */

static void test_s2_bad_priority_string(void **state)
{
	(void)state;
	expect_creds_error(NULL, 0, "NORMAL:+NO-SUCH-THING", "NORMAL:+NO-SUCH-THING", "position",
			   NULL);
	expect_creds_error(NULL, 0, "NOTHING-LIKE-A-PRIORITY", "NOTHING-LIKE-A-PRIORITY", NULL);
}

static void test_s2_priority_is_applied(void **state)
{
	struct creds *c = new_creds(NULL, 0, PRIO_TLS12, NULL);
	struct link l;
	int crc, src;

	(void)state;
	seed(41);
	link_open(&l, c, "NORMAL", NULL, NULL, 0);
	handshake_ok(&l);
	assert_int_equal(gnutls_protocol_get_version(l.client.s), GNUTLS_TLS1_2);
	link_close(&l);

	/* A TLS 1.3-only client cannot talk to a TLS 1.2-only server. */
	seed(42);
	link_open(&l, c, PRIO_TLS13, NULL, NULL, 0);
	handshake(&l, &crc, &src);
	assert_true(gnutls_error_is_fatal(crc));
	assert_true(gnutls_error_is_fatal(src));
	link_close(&l);
	creds_unref(c);
}

/* Issue 15: without tls.priority the server offers AEAD suites only, in
 * its own order; a TLS 1.2 client offering only CBC suites is refused. */
static void test_default_profile_aead_only_in_server_order(void **state)
{
	struct creds *c = new_creds(NULL, 0, NULL, NULL);
	struct link l;
	int crc, src;

	(void)state;
	seed(51);
	link_open(&l, c, PRIO_TLS12 ":-CIPHER-ALL:+AES-128-CBC:+AES-256-CBC:-MAC-ALL:+SHA1:+SHA256",
		  NULL, NULL, 0);
	handshake(&l, &crc, &src);
	assert_true(gnutls_error_is_fatal(crc));
	assert_true(gnutls_error_is_fatal(src));
	link_close(&l);

	/* The client prefers AES-128-GCM; the server's AES-256-GCM wins. */
	seed(52);
	link_open(&l, c, PRIO_TLS12 ":-CIPHER-ALL:+AES-128-GCM:+AES-256-GCM", NULL, NULL, 0);
	handshake_ok(&l);
	assert_int_equal(gnutls_cipher_get(l.server.s), GNUTLS_CIPHER_AES_256_GCM);
	link_close(&l);
	creds_unref(c);
}

/* ... while the outbound (client) side, opportunistic by default, still
 * takes a CBC suite from a peer that offers nothing better: better than
 * the plaintext a failed handshake falls back to. */
static void test_default_profile_client_side_accepts_cbc(void **state)
{
	struct creds *c = new_creds(NULL, 0, NULL, NULL);
	struct link l;

	(void)state;
	seed(53);
	peer_link_open(&l, c, NULL, false,
		       PRIO_TLS12 ":-CIPHER-ALL:+AES-128-CBC:-MAC-ALL:+SHA256:+SHA1",
		       GNUTLS_CERT_IGNORE);
	handshake_ok(&l);
	assert_int_equal(gnutls_cipher_get(l.client.s), GNUTLS_CIPHER_AES_128_CBC);
	link_close(&l);
	creds_unref(c);
}

/* TLS 1.0 and 1.1 are never negotiated, whatever the priority string. */
static void test_s2_old_tls_never_negotiated(void **state)
{
	const char *server_prios[] = {"NORMAL", "NORMAL:%COMPAT", "SECURE256", "PFS",
				      "NORMAL:+VERS-TLS1.1:+VERS-TLS1.0"};
	const char *old[] = {"NORMAL:-VERS-ALL:+VERS-TLS1.1", "NORMAL:-VERS-ALL:+VERS-TLS1.0"};
	struct link l;
	int crc, src;

	(void)state;
	for (unsigned i = 0; i < sizeof(server_prios) / sizeof(server_prios[0]); i++) {
		struct creds *c = new_creds(NULL, 0, server_prios[i], NULL);
		assert_int_equal(creds_check_priority(server_prios[i], NULL, 0), 0);
		for (unsigned j = 0; j < 2; j++) {
			seed(100 + 10 * i + j);
			link_open(&l, c, old[j], NULL, NULL, 0);
			handshake(&l, &crc, &src);
			if (!gnutls_error_is_fatal(src))
				fail_msg("server \"%s\" completed a handshake with \"%s\"",
					 server_prios[i], old[j]);
			link_close(&l);
		}
		seed(100 + 10 * i + 9);
		link_open(&l, c, PRIO_TLS12, NULL, NULL, 0);
		handshake_ok(&l);
		assert_int_equal(gnutls_protocol_get_version(l.server.s), GNUTLS_TLS1_2);
		link_close(&l);
		creds_unref(c);
	}
}

/* A priority string left without TLS 1.2 and 1.3 is refused, by name. */
static void test_s2_priority_without_tls12_or_13_refused(void **state)
{
	const char *bad[] = {"NORMAL:-VERS-ALL:+VERS-TLS1.1", "NORMAL:-VERS-ALL:+VERS-TLS1.0",
			     "NORMAL:-VERS-TLS-ALL:+VERS-DTLS1.2",
			     "NORMAL:-VERS-TLS1.2:-VERS-TLS1.3"};
	char err[512];

	(void)state;
	for (unsigned i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		expect_creds_error(NULL, 0, bad[i], bad[i], "neither TLS 1.2 nor TLS 1.3", NULL);
		assert_int_equal(creds_check_priority(bad[i], err, sizeof(err)), -1);
		assert_non_null(strstr(err, "neither TLS 1.2 nor TLS 1.3"));
	}
	/* A string GnuTLS refuses is reported at its own position, not at
	 * the part tlsfront appends. */
	assert_int_equal(creds_check_priority("NORMAL:+NO-SUCH-THING", err, sizeof(err)), -1);
	assert_non_null(strstr(err, "position 7"));
	assert_int_equal(creds_check_priority(PRIO_TLS13, err, sizeof(err)), 0);
}

/* ---- §5 / §7.7 ALPN ---- */

static const gnutls_datum_t alpn_h2 = {(unsigned char *)"h2", 2};
static const gnutls_datum_t alpn_http11 = {(unsigned char *)"http/1.1", 8};
static const gnutls_datum_t alpn_smtp = {(unsigned char *)"smtp", 4};

static void test_s7_7_alpn_without_smtp_fails(void **state)
{
	struct creds *c = new_creds(NULL, 0, NULL, NULL);
	const gnutls_datum_t offer[] = {alpn_h2, alpn_http11};
	const char *prios[] = {"NORMAL", PRIO_TLS12};
	struct link l;
	int crc, src;

	(void)state;
	for (unsigned i = 0; i < 2; i++) {
		seed(50 + i);
		link_open(&l, c, prios[i], SERVER_NAME, offer, 2);
		handshake(&l, &crc, &src);
		assert_int_equal(src, GNUTLS_E_NO_APPLICATION_PROTOCOL);
		if (crc == GNUTLS_E_FATAL_ALERT_RECEIVED)
			assert_int_equal(gnutls_alert_get(l.client.s),
					 GNUTLS_A_NO_APPLICATION_PROTOCOL);
		else
			assert_int_equal(crc, GNUTLS_E_NO_APPLICATION_PROTOCOL);
		link_close(&l);
	}
	creds_unref(c);
}

static void test_s7_7_alpn_smtp_selected(void **state)
{
	struct creds *c = new_creds(NULL, 0, NULL, NULL);
	const gnutls_datum_t offer[] = {alpn_h2, alpn_smtp};
	const char *prios[] = {"NORMAL", PRIO_TLS12};
	struct link l;
	gnutls_datum_t sel;

	(void)state;
	for (unsigned i = 0; i < 2; i++) {
		seed(60 + i);
		link_open(&l, c, prios[i], SERVER_NAME, offer, 2);
		handshake_ok(&l);
		assert_int_equal(gnutls_alpn_get_selected_protocol(l.client.s, &sel), 0);
		assert_int_equal(sel.size, 4);
		assert_memory_equal(sel.data, "smtp", 4);
		assert_int_equal(gnutls_alpn_get_selected_protocol(l.server.s, &sel), 0);
		assert_int_equal(sel.size, 4);
		assert_memory_equal(sel.data, "smtp", 4);
		exchange_records(&l);
		link_close(&l);
	}
	creds_unref(c);
}

static void test_s5_alpn_none_served(void **state)
{
	struct creds *c = new_creds(NULL, 0, NULL, NULL);
	const char *prios[] = {"NORMAL", PRIO_TLS12};
	struct link l;
	gnutls_datum_t sel;

	(void)state;
	for (unsigned i = 0; i < 2; i++) {
		seed(70 + i);
		link_open(&l, c, prios[i], SERVER_NAME, NULL, 0);
		handshake_ok(&l);
		assert_true(gnutls_alpn_get_selected_protocol(l.server.s, &sel) < 0);
		assert_true(gnutls_alpn_get_selected_protocol(l.client.s, &sel) < 0);
		exchange_records(&l);
		link_close(&l);
	}
	creds_unref(c);
}

/* ---- §5 session tickets ---- */

static gnutls_datum_t first_session(struct creds *c, const char *prio)
{
	struct link l;
	gnutls_datum_t data;

	link_open(&l, c, prio, SERVER_NAME, NULL, 0);
	handshake_ok(&l);
	assert_false(gnutls_session_is_resumed(l.client.s));
	exchange_records(&l); /* the client reads the TLS 1.3 ticket here */
	assert_int_equal(gnutls_session_get_data2(l.client.s, &data), 0);
	link_close(&l);
	return data;
}

static bool second_session_resumed(struct creds *c, const char *prio, const gnutls_datum_t *data)
{
	struct link l;

	link_open(&l, c, prio, SERVER_NAME, NULL, 0);
	assert_int_equal(gnutls_session_set_data(l.client.s, data->data, data->size), 0);
	handshake_ok(&l);
	bool resumed = gnutls_session_is_resumed(l.client.s);
	assert_int_equal(gnutls_session_is_resumed(l.server.s), resumed);
	exchange_records(&l);
	link_close(&l);
	return resumed;
}

static void test_s5_ticket_resumption(void **state)
{
	struct creds *c = new_creds(NULL, 0, NULL, NULL);
	struct creds *other = new_creds(NULL, 0, NULL, NULL);
	const char *prios[] = {"NORMAL", PRIO_TLS12};

	(void)state;
	for (unsigned i = 0; i < 2; i++) {
		seed(80 + i);
		gnutls_datum_t data = first_session(c, prios[i]);
		assert_true(second_session_resumed(c, prios[i], &data));
		/* Another generation has another ticket key: a full handshake. */
		assert_false(second_session_resumed(other, prios[i], &data));
		gnutls_free(data.data);
	}
	creds_unref(other);
	creds_unref(c);
}

static struct creds *creds_with_tickets(struct creds_tickets *t, unsigned lifetime)
{
	char err[512] = "";
	struct creds_params p = {.server_name = SERVER_NAME,
				 .priority = "NORMAL",
				 .tickets = t,
				 .ticket_lifetime = lifetime};
	struct creds *c = creds_new(&p, NULL, err, sizeof(err));

	if (c == NULL)
		fail_msg("creds_new: %s", err);
	return c;
}

/* One ticket key shared by two generations (a reload keeps it); a
 * rotation ends the old tickets and the new ones resume. */
static void test_s5_shared_ticket_key_rotation(void **state)
{
	const char *prios[] = {"NORMAL", PRIO_TLS12};
	struct creds_tickets *t = creds_tickets_new(NULL, 0);

	(void)state;
	assert_non_null(t);
	struct creds *gen1 = creds_with_tickets(t, 60);
	struct creds *gen2 = creds_with_tickets(t, 60);
	creds_tickets_unref(t); /* the generations hold it now */
	for (unsigned i = 0; i < 2; i++) {
		seed(110 + i);
		gnutls_datum_t old = first_session(gen1, prios[i]);
		assert_true(second_session_resumed(gen2, prios[i], &old));
		assert_int_equal(creds_tickets_rotate(t), 0);
		assert_false(second_session_resumed(gen1, prios[i], &old));
		assert_false(second_session_resumed(gen2, prios[i], &old));
		gnutls_datum_t fresh = first_session(gen2, prios[i]);
		assert_true(second_session_resumed(gen1, prios[i], &fresh));
		gnutls_free(old.data);
		gnutls_free(fresh.data);
	}
	creds_unref(gen1);
	creds_unref(gen2); /* the last reference: the key is wiped and freed */
}

/* Lifetime 0 (tls.session_cache_timeout = 0): no tickets, no resumption. */
static void test_s5_no_tickets_with_lifetime_zero(void **state)
{
	const char *prios[] = {"NORMAL", PRIO_TLS12};
	struct creds *c = creds_with_tickets(NULL, 0);

	(void)state;
	for (unsigned i = 0; i < 2; i++) {
		seed(120 + i);
		gnutls_datum_t data = first_session(c, prios[i]);
		assert_false(second_session_resumed(c, prios[i], &data));
		gnutls_free(data.data);
	}
	creds_unref(c);
}

/* ---- §4.2.6 / §7.9: the client certificate outbound ---- */

/* Sig algs for the peer's priorities: TLS 1.2 names, then TLS 1.3 ones. */
#define PEER_EC_ONLY  "NORMAL:-SIGN-ALL:+SIGN-ECDSA-SHA256:+SIGN-ECDSA-SECP256R1-SHA256"
#define PEER_RSA_ONLY "NORMAL:-SIGN-ALL:+SIGN-RSA-SHA256:+SIGN-RSA-PSS-RSAE-SHA256"

/* tlsfront's client session (creds_client_session) against a peer that asks
 * for a client certificate (request: GNUTLS_CERT_REQUEST or _REQUIRE),
 * naming only CA_NAME; the peer verifies nothing, the tests compare. */
static void peer_link_open(struct link *l, struct creds *c, const char *server_name, bool verify,
			   const char *peer_priority, gnutls_certificate_request_t request)
{
	gnutls_session_t cs, ss;

	memset(l, 0, sizeof(*l));
	assert_int_equal(creds_client_session(c, server_name, verify, &cs), 0);
	assert_non_null(cs);
	assert_int_equal(gnutls_init(&ss, GNUTLS_SERVER | GNUTLS_NONBLOCK | GNUTLS_NO_SIGNAL), 0);
	assert_int_equal(gnutls_priority_set_direct(ss, peer_priority, NULL), 0);
	assert_int_equal(gnutls_credentials_set(ss, GNUTLS_CRD_CERTIFICATE, peer_cred), 0);
	gnutls_certificate_server_set_request(ss, request);
	endpoint_attach(&l->client, cs, &l->s2c, &l->c2s);
	endpoint_attach(&l->server, ss, &l->c2s, &l->s2c);
}

/* The fingerprint of the client certificate the peer received, or "" for
 * none. */
static void peer_saw(struct link *l, char *out)
{
	unsigned n = 0;
	const gnutls_datum_t *der = gnutls_certificate_get_peers(l->server.s, &n);

	out[0] = '\0';
	if (der != NULL && n > 0)
		fingerprint_of(&der[0], out);
}

static void file_fingerprint(const char *path, char *out)
{
	gnutls_datum_t pem, der;
	gnutls_x509_crt_t crt;

	assert_int_equal(gnutls_load_file(path, &pem), 0);
	assert_int_equal(gnutls_x509_crt_init(&crt), 0);
	assert_int_equal(gnutls_x509_crt_import(crt, &pem, GNUTLS_X509_FMT_PEM), 0);
	assert_int_equal(gnutls_x509_crt_export2(crt, GNUTLS_X509_FMT_DER, &der), 0);
	fingerprint_of(&der, out);
	gnutls_free(der.data);
	gnutls_free(pem.data);
	gnutls_x509_crt_deinit(crt);
}

/* The self-signed default is shown to a peer that insists on a client
 * certificate and names another CA; the generation's reference outlives
 * its owner's, as when a reload happens mid-session. */
static void test_s4_2_6_self_signed_shown_whatever_ca_is_named(void **state)
{
	const char *prios[] = {PRIO_TLS13, PRIO_TLS12};
	char want[FP_LEN + 1], got[FP_LEN + 1];
	struct link l;

	(void)state;
	for (unsigned i = 0; i < 2; i++) {
		struct creds *c = new_creds(NULL, 0, "NORMAL", NULL);
		assert_int_equal(creds_fingerprint(c, want, sizeof(want)), 0);
		seed(100 + i);
		creds_ref(c); /* the session's */
		peer_link_open(&l, c, NULL, false, prios[i], GNUTLS_CERT_REQUIRE);
		creds_unref(c); /* the reload drops the generation */
		handshake_ok(&l);
		peer_saw(&l, got);
		assert_string_equal(got, want);
		exchange_records(&l);
		link_close(&l);
		creds_unref(c); /* the session ends: freed (ASan: no leak) */
	}
}

/* §7.9: the first listed pair the peer can use, by its signature
 * algorithms; never by the CA it names. */
static void test_s7_9_first_listed_pair_the_peer_can_use(void **state)
{
	struct creds_pair rsa_first[] = {{rsa_cert, rsa_key, NULL}, {ec_cert, ec_key, NULL}};
	struct creds_pair ec_first[] = {{ec_cert, ec_key, NULL}, {rsa_cert, rsa_key, NULL}};
	char rsa_fp[FP_LEN + 1], ec_fp[FP_LEN + 1], got[FP_LEN + 1];
	static const struct {
		const char *what;
		bool ec_first;
		const char *versions, *peer_sigs;
		bool want_ec;
	} cases[] = {
	    {"RSA, ECDSA listed; TLS 1.3 peer takes both", false, PRIO_TLS13, "NORMAL", false},
	    {"RSA, ECDSA listed; TLS 1.2 peer takes both", false, PRIO_TLS12, "NORMAL", false},
	    {"ECDSA, RSA listed; TLS 1.3 peer takes both", true, PRIO_TLS13, "NORMAL", true},
	    {"ECDSA, RSA listed; TLS 1.2 peer takes both", true, PRIO_TLS12, "NORMAL", true},
	    {"RSA, ECDSA listed; TLS 1.3 peer takes ECDSA", false, PRIO_TLS13, PEER_EC_ONLY, true},
	    {"RSA, ECDSA listed; TLS 1.2 peer takes ECDSA", false, PRIO_TLS12, PEER_EC_ONLY, true},
	    {"ECDSA, RSA listed; TLS 1.3 peer takes RSA", true, PRIO_TLS13, PEER_RSA_ONLY, false},
	    {"ECDSA, RSA listed; TLS 1.2 peer takes RSA", true, PRIO_TLS12, PEER_RSA_ONLY, false},
	};
	struct link l;

	(void)state;
	file_fingerprint(rsa_cert, rsa_fp);
	file_fingerprint(ec_cert, ec_fp);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char prio[256];
		/* The versions from one string, the signature algorithms from
		 * the other: "NORMAL:-VERS-ALL:+VERS-TLS1.x" + ":-SIGN-ALL:..." */
		snprintf(prio, sizeof(prio), "%s%s", cases[i].versions,
			 cases[i].peer_sigs + strlen("NORMAL"));
		const struct creds_pair *pairs = cases[i].ec_first ? ec_first : rsa_first;
		struct creds *c = new_creds(pairs, 2, "NORMAL", NULL);
		seed(110 + (unsigned)i);
		peer_link_open(&l, c, NULL, false, prio, GNUTLS_CERT_REQUIRE);
		handshake_ok(&l);
		peer_saw(&l, got);
		if (strcmp(got, cases[i].want_ec ? ec_fp : rsa_fp) != 0)
			fail_msg("%s: the peer saw %s", cases[i].what,
				 strcmp(got, rsa_fp) == 0  ? "the RSA certificate"
				 : strcmp(got, ec_fp) == 0 ? "the ECDSA certificate"
							   : "no certificate");
		exchange_records(&l);
		link_close(&l);
		creds_unref(c);
	}
}

/* A peer that can use none of the pairs gets an empty Certificate message:
 * one that merely asks goes on without; one that insists fails. */
static void test_s4_2_6_no_usable_pair_sends_none(void **state)
{
	struct creds_pair rsa_only = {rsa_cert, rsa_key, NULL};
	struct creds *c = new_creds(&rsa_only, 1, "NORMAL", NULL);
	const char *prios[] = {PRIO_TLS13 ":-SIGN-ALL:+SIGN-ECDSA-SECP256R1-SHA256",
			       PRIO_TLS12 ":-SIGN-ALL:+SIGN-ECDSA-SHA256"};
	char got[FP_LEN + 1];
	struct link l;
	int crc, src;

	(void)state;
	for (unsigned i = 0; i < 2; i++) {
		seed(130 + i);
		peer_link_open(&l, c, NULL, false, prios[i], GNUTLS_CERT_REQUEST);
		handshake_ok(&l);
		peer_saw(&l, got);
		assert_string_equal(got, "");
		exchange_records(&l);
		link_close(&l);

		seed(132 + i);
		peer_link_open(&l, c, NULL, false, prios[i], GNUTLS_CERT_REQUIRE);
		handshake(&l, &crc, &src);
		assert_true(gnutls_error_is_fatal(src));
		link_close(&l);
	}
	creds_unref(c);
}

/* §4.3 verify still works through the client credentials: the chain leads
 * to ca_file and the certificate is for the name, else the handshake fails;
 * the client certificate goes along. */
static void test_s4_3_verify_with_the_client_credentials(void **state)
{
	struct creds_pair pair = {ec_cert, ec_key, NULL};
	struct creds *c = new_creds(&pair, 1, "NORMAL", NULL);
	struct creds *untrusting = new_creds(&pair, 1, "NORMAL", NULL);
	char err[256] = "", want[FP_LEN + 1], got[FP_LEN + 1];
	gnutls_session_t s = NULL;
	struct link l;
	int crc, src;

	(void)state;
	/* Without trust anchors, or without a name, verify cannot start. */
	assert_int_equal(creds_client_session(untrusting, RSA_NAME, true, &s),
			 GNUTLS_E_NO_CERTIFICATE_FOUND);
	assert_null(s);
	assert_int_equal(creds_load_trust(c, rsa_cert, err, sizeof(err)), 0);
	assert_int_equal(creds_client_session(c, NULL, true, &s), GNUTLS_E_NO_CERTIFICATE_FOUND);
	assert_null(s);

	file_fingerprint(ec_cert, want);
	seed(140);
	peer_link_open(&l, c, RSA_NAME, true, "NORMAL", GNUTLS_CERT_REQUIRE);
	handshake_ok(&l);
	expect_peer_name(&l, RSA_NAME);
	peer_saw(&l, got);
	assert_string_equal(got, want);
	link_close(&l);

	/* The right chain for the wrong name. */
	seed(141);
	peer_link_open(&l, c, "wrong.example.org", true, "NORMAL", GNUTLS_CERT_REQUIRE);
	handshake(&l, &crc, &src);
	assert_int_equal(crc, GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR);
	link_close(&l);

	/* A name whose certificate does not lead to ca_file. */
	seed(142);
	peer_link_open(&l, c, EC_NAME, true, "NORMAL", GNUTLS_CERT_REQUIRE);
	handshake(&l, &crc, &src);
	assert_int_equal(crc, GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR);
	link_close(&l);

	creds_unref(untrusting);
	creds_unref(c);
}

/* ---- refcount and threads ---- */

static void test_s5_refcount(void **state)
{
	struct creds *c = new_creds(NULL, 0, NULL, NULL);

	(void)state;
	creds_ref(c);	/* 2 */
	creds_unref(c); /* 1 */
	char fp[FP_LEN + 1];
	assert_int_equal(creds_fingerprint(c, fp, sizeof(fp)), 0); /* still alive */
	creds_unref(c);						   /* 0: freed (ASan: no leak) */
	creds_unref(NULL);
}

/* A session's reference keeps the generation alive after the owner drops
 * its own (a reload while sessions are in flight). */
static void test_s5_generation_outlives_reload(void **state)
{
	struct creds *c = new_creds(NULL, 0, NULL, NULL);
	struct link l;

	(void)state;
	seed(90);
	creds_ref(c); /* the session's */
	link_open(&l, c, "NORMAL", NULL, NULL, 0);
	creds_unref(c); /* the reload drops the old generation */
	handshake_ok(&l);
	exchange_records(&l);
	link_close(&l);
	creds_unref(c); /* the session ends */
}

#define N_THREADS 4
#define N_ROUNDS  200

static void *worker(void *arg)
{
	struct creds *c = arg;

	for (int i = 0; i < N_ROUNDS; i++) {
		gnutls_session_t s;
		creds_ref(c);
		if (creds_server_session(c, &s) != 0)
			return (void *)1;
		gnutls_deinit(s);
		creds_unref(c);
	}
	return NULL;
}

static void *rotator(void *arg)
{
	for (int i = 0; i < N_ROUNDS; i++)
		if (creds_tickets_rotate(arg) != 0)
			return (void *)1;
	return NULL;
}

/* Sessions set up on several threads while another rotates the key. */
static void test_s6_shared_by_worker_threads(void **state)
{
	struct creds_tickets *tickets = creds_tickets_new(NULL, 0);
	struct creds *c = creds_with_tickets(tickets, TICKET_LIFETIME);
	pthread_t t[N_THREADS], r;

	(void)state;
	assert_int_equal(pthread_create(&r, NULL, rotator, tickets), 0);
	for (int i = 0; i < N_THREADS; i++)
		assert_int_equal(pthread_create(&t[i], NULL, worker, c), 0);
	void *rrv = (void *)1;
	assert_int_equal(pthread_join(r, &rrv), 0);
	assert_null(rrv);
	creds_tickets_unref(tickets);
	for (int i = 0; i < N_THREADS; i++) {
		void *rv = (void *)1;
		assert_int_equal(pthread_join(t[i], &rv), 0);
		assert_null(rv);
	}
	creds_unref(c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_s5_self_signed_default_handshake),
	    cmocka_unit_test(test_s5_tls12_handshake),
	    cmocka_unit_test(test_s5_self_signed_certificate),
	    cmocka_unit_test(test_s5_self_signed_fresh_each_time),
	    cmocka_unit_test(test_s5_self_signed_needs_server_name),
	    cmocka_unit_test(test_s5_rsa_pair_loads),
	    cmocka_unit_test(test_s7_8_several_pairs_by_sni_and_key_type),
	    cmocka_unit_test(test_s5_key_mismatch_names_file),
	    cmocka_unit_test(test_s5_missing_file_named),
	    cmocka_unit_test(test_s5_bad_files_named),
	    cmocka_unit_test(test_s2_bad_priority_string),
	    cmocka_unit_test(test_s2_priority_is_applied),
	    cmocka_unit_test(test_default_profile_aead_only_in_server_order),
	    cmocka_unit_test(test_default_profile_client_side_accepts_cbc),
	    cmocka_unit_test(test_s2_old_tls_never_negotiated),
	    cmocka_unit_test(test_s2_priority_without_tls12_or_13_refused),
	    cmocka_unit_test(test_s7_7_alpn_without_smtp_fails),
	    cmocka_unit_test(test_s7_7_alpn_smtp_selected),
	    cmocka_unit_test(test_s5_alpn_none_served),
	    cmocka_unit_test(test_s5_ticket_resumption),
	    cmocka_unit_test(test_s5_shared_ticket_key_rotation),
	    cmocka_unit_test(test_s5_no_tickets_with_lifetime_zero),
	    cmocka_unit_test(test_s4_2_6_self_signed_shown_whatever_ca_is_named),
	    cmocka_unit_test(test_s7_9_first_listed_pair_the_peer_can_use),
	    cmocka_unit_test(test_s4_2_6_no_usable_pair_sends_none),
	    cmocka_unit_test(test_s4_3_verify_with_the_client_credentials),
	    cmocka_unit_test(test_s5_refcount),
	    cmocka_unit_test(test_s5_generation_outlives_reload),
	    cmocka_unit_test(test_s6_shared_by_worker_threads),
	};

	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
