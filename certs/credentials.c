/* credentials.c — one refcounted generation of GnuTLS credentials: the
 * cert/key pairs (or the self-signed default of SPEC §5), the priority
 * cache, a reference on the shared TLS session ticket key, and the
 * per-session set-up that applies them (tickets, ALPN "smtp" of SPEC §5 /
 * §7.7); for the outbound client
 * side, the trust anchors and the client-certificate choice of SPEC §4.2.6 /
 * §7.9.
 *
 * TLS 1.0 and 1.1 are never negotiated, whatever tls.priority says:
 * PRIORITY_APPENDED is appended to every priority string, and one that is
 * then left without TLS 1.2 and 1.3 is refused. It also makes the server's
 * cipher order win over the client's (%SERVER_PRECEDENCE).
 *
 * A generation is immutable once built and shared read-only by all worker
 * threads; only its reference count changes. The ticket key is the one
 * mutable part, behind a mutex in struct creds_tickets: GnuTLS copies the
 * key into the session in gnutls_session_ticket_enable_server() (lib/stek.c,
 * memcpy into initial_stek), so the key only has to stay put during that
 * call, and a rotation may wipe and free the old one at once. Never includes libuv or
 * policy/, never prints or logs: errors go to the caller's buffer.
 */
#include "certs/credentials.h"
#include "certs/self_signed.h"

#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <gnutls/abstract.h>
#include <gnutls/ocsp.h>
#include <gnutls/x509.h>

/* The default profile: GnuTLS's NORMAL with only AEAD ciphers (no CBC, so
 * no Lucky13-style padding oracles) and only forward-secret key exchange
 * (no static RSA), AES-GCM first, then ChaCha20 for CPUs without AES
 * instructions. Every client of the last decade offers one of these; the
 * README says how to add CBC back for older ones. */
#define DEFAULT_PRIORITY                                                                           \
	"NORMAL:-CIPHER-ALL:+AES-256-GCM:+AES-128-GCM:+CHACHA20-POLY1305:+AES-256-CCM:"            \
	"+AES-128-CCM:-MAC-ALL:+AEAD:-RSA"
/* Without tls.priority, the outbound (client) side: see creds_new(). */
#define CLIENT_DEFAULT_PRIORITY "NORMAL"
/* SPEC §6 logs tls=TLS1.3|TLS1.2|none: nothing older is ever negotiated,
 * inbound or outbound. The server's order of ciphers, not the client's,
 * decides (a client must not talk us down to its first choice). */
#define PRIORITY_APPENDED ":-VERS-TLS1.0:-VERS-TLS1.1:-VERS-SSL3.0:%SERVER_PRECEDENCE"

/* The shared session ticket key. */
struct creds_tickets {
	atomic_uint refs;
	pthread_mutex_t lock; /* guards key */
	gnutls_datum_t key;   /* secret: wiped before it is freed */
};

/* One cert/key pair as the outbound client side presents it: copies of a
 * pair of the server credentials, made when the generation is built. */
struct client_pair {
	gnutls_pcert_st *chain; /* chain_len entries, leaf first; owned */
	unsigned chain_len;
	gnutls_privkey_t key;	  /* owned (it owns its x509 key in turn) */
	gnutls_pk_algorithm_t pk; /* the leaf's public-key algorithm */
	gnutls_ecc_curve_t curve; /* ECDSA: the leaf's curve; else INVALID */
};

struct creds {
	atomic_uint refs;
	gnutls_certificate_credentials_t cert; /* server sessions only */
	gnutls_priority_t priority;	       /* server sessions */
	gnutls_priority_t client_priority;     /* client sessions */
	struct creds_tickets *tickets;	       /* one reference */
	unsigned ticket_lifetime;	       /* seconds; 0: no session tickets */
	/* Client sessions (the outbound peer leg) use their own certificate
	 * credentials: the trust anchors of "verify" and a retrieve function
	 * that hands out the pairs below, so that GnuTLS's built-in client
	 * choice (only a certificate from a CA the peer names) never applies. */
	gnutls_certificate_credentials_t client;
	struct client_pair *pairs; /* n_pairs entries, in the listed order */
	size_t n_pairs;
	bool has_trust; /* ca_file loaded: client sessions may verify */
};

static const gnutls_datum_t alpn_smtp = {(unsigned char *)"smtp", 4};

__attribute__((format(printf, 3, 4))) static void set_err(char *err, size_t errlen, const char *fmt,
							  ...)
{
	va_list ap;

	if (err == NULL || errlen == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

/* strerror() is not thread-safe and a reload may run beside the workers. */
static const char *errno_text(int e, char *buf, size_t len)
{
#if defined(__GLIBC__) && defined(_GNU_SOURCE)
	return strerror_r(e, buf, len);
#else
	if (strerror_r(e, buf, len) != 0)
		snprintf(buf, len, "error %d", e);
	return buf;
#endif
}

static bool check_readable(const char *path, char *err, size_t errlen)
{
	char ebuf[128];
	FILE *f = fopen(path, "r");

	if (f == NULL) {
		set_err(err, errlen, "%s: cannot read: %s", path,
			errno_text(errno, ebuf, sizeof(ebuf)));
		return false;
	}
	fclose(f);
	return true;
}

/* Parses each file on its own before GnuTLS loads the pair, so that an error
 * names the file at fault (and because GnuTLS 3.7.9 leaks memory when
 * gnutls_certificate_set_x509_key_file2() meets a malformed certificate). */
static bool check_pair_files(const struct creds_pair *p, char *err, size_t errlen)
{
	gnutls_datum_t data = {NULL, 0};
	gnutls_x509_crt_t *crts = NULL;
	unsigned n_crts = 0;
	gnutls_x509_privkey_t key = NULL;
	int r;

	if ((r = gnutls_load_file(p->cert_file, &data)) < 0) {
		set_err(err, errlen, "%s: cannot read: %s", p->cert_file, gnutls_strerror(r));
		return false;
	}
	r = gnutls_x509_crt_list_import2(&crts, &n_crts, &data, GNUTLS_X509_FMT_PEM, 0);
	gnutls_free(data.data);
	if (r < 0) {
		set_err(err, errlen, "%s: not a PEM certificate: %s", p->cert_file,
			gnutls_strerror(r));
		return false;
	}
	for (unsigned i = 0; i < n_crts; i++)
		gnutls_x509_crt_deinit(crts[i]);
	gnutls_free(crts);

	if ((r = gnutls_load_file(p->key_file, &data)) < 0) {
		set_err(err, errlen, "%s: cannot read: %s", p->key_file, gnutls_strerror(r));
		return false;
	}
	if ((r = gnutls_x509_privkey_init(&key)) == 0) {
		r = gnutls_x509_privkey_import2(key, &data, GNUTLS_X509_FMT_PEM, NULL, 0);
		gnutls_x509_privkey_deinit(key);
	}
	gnutls_memset(data.data, 0, data.size);
	gnutls_free(data.data);
	if (r < 0) {
		set_err(err, errlen, "%s: not a PEM private key: %s", p->key_file,
			gnutls_strerror(r));
		return false;
	}
	return true;
}

/* A response worth stapling says "successful" and "good"; GnuTLS itself
 * checks, when it loads the file, that it answers for this chain and that
 * its nextUpdate has not passed. */
static bool check_ocsp_status(const char *file, char *err, size_t errlen)
{
	gnutls_datum_t data = {NULL, 0};
	gnutls_ocsp_resp_t resp = NULL;
	unsigned cert_status = 0;
	int r;

	if ((r = gnutls_load_file(file, &data)) < 0) {
		set_err(err, errlen, "%s: cannot read: %s", file, gnutls_strerror(r));
		return false;
	}
	if ((r = gnutls_ocsp_resp_init(&resp)) == 0)
		r = gnutls_ocsp_resp_import2(resp, &data, GNUTLS_X509_FMT_DER);
	gnutls_free(data.data);
	if (r < 0) {
		set_err(err, errlen, "%s: not a DER OCSP response: %s", file, gnutls_strerror(r));
	} else if ((r = gnutls_ocsp_resp_get_status(resp)) != GNUTLS_OCSP_RESP_SUCCESSFUL) {
		set_err(err, errlen, "%s: the responder answered with error status %d", file, r);
		r = -1;
	} else if ((r = gnutls_ocsp_resp_get_single(resp, 0, NULL, NULL, NULL, NULL, &cert_status,
						    NULL, NULL, NULL, NULL)) < 0) {
		set_err(err, errlen, "%s: holds no certificate status: %s", file,
			gnutls_strerror(r));
	} else if (cert_status != GNUTLS_OCSP_CERT_GOOD) {
		set_err(err, errlen, "%s: the certificate's status is %s, not good", file,
			cert_status == GNUTLS_OCSP_CERT_REVOKED ? "revoked" : "unknown");
		r = -1;
	}
	gnutls_ocsp_resp_deinit(resp);
	return r >= 0;
}

/* Staples p->ocsp_file to the chain at index idx. */
static bool load_ocsp(gnutls_certificate_credentials_t cert, const struct creds_pair *p,
		      unsigned idx, char *err, size_t errlen)
{
	if (!check_readable(p->ocsp_file, err, errlen) ||
	    !check_ocsp_status(p->ocsp_file, err, errlen))
		return false;
	int rc = gnutls_certificate_set_ocsp_status_request_file2(cert, p->ocsp_file, idx,
								  GNUTLS_X509_FMT_DER);
	if (rc >= 0)
		return true;
	if (rc == GNUTLS_E_OCSP_MISMATCH_WITH_CERTS)
		set_err(err, errlen, "%s: does not answer for %s", p->ocsp_file, p->cert_file);
	else if (rc == GNUTLS_E_EXPIRED)
		set_err(err, errlen, "%s: stale: its nextUpdate has passed", p->ocsp_file);
	else
		set_err(err, errlen, "%s: %s", p->ocsp_file, gnutls_strerror(rc));
	return false;
}

static bool load_pair(gnutls_certificate_credentials_t cert, const struct creds_pair *p, char *err,
		      size_t errlen)
{
	if (p->cert_file == NULL || p->key_file == NULL) {
		set_err(err, errlen, "certificate pair without a cert or key file");
		return false;
	}
	if (!check_readable(p->cert_file, err, errlen) ||
	    !check_readable(p->key_file, err, errlen) || !check_pair_files(p, err, errlen))
		return false;
	/* With GNUTLS_CERTIFICATE_API_V2, rc is the new chain's index. */
	int rc = gnutls_certificate_set_x509_key_file2(cert, p->cert_file, p->key_file,
						       GNUTLS_X509_FMT_PEM, NULL, 0);
	if (rc >= 0)
		return true;
	if (rc == GNUTLS_E_CERTIFICATE_KEY_MISMATCH)
		set_err(err, errlen, "%s does not match %s: %s", p->key_file, p->cert_file,
			gnutls_strerror(rc));
	else
		set_err(err, errlen, "%s, %s: %s", p->cert_file, p->key_file, gnutls_strerror(rc));
	return false;
}

static bool load_self_signed(gnutls_certificate_credentials_t cert, const char *server_name,
			     char *err, size_t errlen)
{
	gnutls_x509_crt_t crt;
	gnutls_x509_privkey_t key;
	const char *name = server_name ? server_name : "";

	int rc = self_signed_make(name, &crt, &key);
	if (rc < 0) {
		set_err(err, errlen, "cannot make a self-signed certificate for \"%s\": %s", name,
			gnutls_strerror(rc));
		return false;
	}
	/* GnuTLS keeps its own copies of both. */
	rc = gnutls_certificate_set_x509_key(cert, &crt, 1, key);
	gnutls_x509_crt_deinit(crt);
	gnutls_x509_privkey_deinit(key);
	if (rc < 0) {
		set_err(err, errlen, "cannot use the self-signed certificate for \"%s\": %s", name,
			gnutls_strerror(rc));
		return false;
	}
	return true;
}

static void priority_error(const char *prio, int rc, const char *pos, char *err, size_t errlen)
{
	if (rc == GNUTLS_E_INVALID_REQUEST && pos != NULL && pos >= prio &&
	    pos <= prio + strlen(prio))
		set_err(err, errlen, "invalid priority string \"%s\" at position %zu (\"%s\"): %s",
			prio, (size_t)(pos - prio), pos, gnutls_strerror(rc));
	else
		set_err(err, errlen, "invalid priority string \"%s\": %s", prio,
			gnutls_strerror(rc));
}

static bool has_tls12_or_13(gnutls_priority_t p)
{
	const unsigned *list = NULL;
	int n = gnutls_priority_protocol_list(p, &list);
	for (int i = 0; i < n; i++)
		if (list[i] == GNUTLS_TLS1_2 || list[i] == GNUTLS_TLS1_3)
			return true;
	return false;
}

/* The operator's string as GnuTLS reads it (so that an error points into
 * that string), then with PRIORITY_APPENDED appended: *out is the latter.
 * Returns 0 or -1 with a message in err. */
static int make_priority(const char *priority, gnutls_priority_t *out, char *err, size_t errlen)
{
	const char *prio = priority ? priority : DEFAULT_PRIORITY;
	const char *pos = NULL;
	gnutls_priority_t p = NULL;

	*out = NULL;
	int rc = gnutls_priority_init2(&p, prio, &pos, 0);
	if (rc < 0) {
		priority_error(prio, rc, pos, err, errlen);
		return -1;
	}
	gnutls_priority_deinit(p);
	p = NULL;

	size_t len = strlen(prio) + sizeof(PRIORITY_APPENDED);
	char *full = malloc(len);
	if (full == NULL) {
		set_err(err, errlen, "out of memory");
		return -1;
	}
	snprintf(full, len, "%s%s", prio, PRIORITY_APPENDED);
	rc = gnutls_priority_init2(&p, full, &pos, 0);
	free(full);
	if (rc == 0 && has_tls12_or_13(p)) {
		*out = p;
		return 0;
	}
	if (rc == 0)
		gnutls_priority_deinit(p);
	if (rc == 0 || rc == GNUTLS_E_NO_PRIORITIES_WERE_SET)
		set_err(err, errlen,
			"priority string \"%s\" enables neither TLS 1.2 nor TLS 1.3 (TLS 1.0 "
			"and 1.1 are always disabled)",
			prio);
	else
		set_err(err, errlen, "priority string \"%s\" with \"%s\" appended: %s", prio,
			PRIORITY_APPENDED, gnutls_strerror(rc));
	return -1;
}

int creds_check_priority(const char *priority, char *err, size_t errlen)
{
	gnutls_priority_t p;

	set_err(err, errlen, "%s", "");
	if (make_priority(priority, &p, err, errlen) < 0)
		return -1;
	gnutls_priority_deinit(p);
	return 0;
}

/* ---- the shared session ticket key ---- */

struct creds_tickets *creds_tickets_new(char *err, size_t errlen)
{
	struct creds_tickets *t = calloc(1, sizeof(*t));
	int rc;

	if (t == NULL) {
		set_err(err, errlen, "out of memory");
		return NULL;
	}
	if ((rc = gnutls_session_ticket_key_generate(&t->key)) < 0) {
		set_err(err, errlen, "cannot make a session ticket key: %s", gnutls_strerror(rc));
		free(t);
		return NULL;
	}
	atomic_init(&t->refs, 1);
	pthread_mutex_init(&t->lock, NULL);
	return t;
}

void creds_tickets_ref(struct creds_tickets *t)
{
	if (t)
		atomic_fetch_add_explicit(&t->refs, 1, memory_order_relaxed);
}

static void wipe_key(gnutls_datum_t *key)
{
	if (key->data) {
		gnutls_memset(key->data, 0, key->size);
		gnutls_free(key->data);
	}
	key->data = NULL;
	key->size = 0;
}

void creds_tickets_unref(struct creds_tickets *t)
{
	if (t == NULL || atomic_fetch_sub_explicit(&t->refs, 1, memory_order_acq_rel) != 1)
		return;
	wipe_key(&t->key);
	pthread_mutex_destroy(&t->lock);
	free(t);
}

int creds_tickets_rotate(struct creds_tickets *t)
{
	gnutls_datum_t fresh = {NULL, 0};
	int rc = gnutls_session_ticket_key_generate(&fresh);
	if (rc < 0)
		return rc;
	pthread_mutex_lock(&t->lock);
	gnutls_datum_t old = t->key;
	t->key = fresh;
	pthread_mutex_unlock(&t->lock);
	wipe_key(&old);
	return 0;
}

/* GnuTLS copies the key into the session during the call. */
static int tickets_enable(struct creds_tickets *t, gnutls_session_t s)
{
	pthread_mutex_lock(&t->lock);
	int rc = gnutls_session_ticket_enable_server(s, &t->key);
	pthread_mutex_unlock(&t->lock);
	return rc;
}

/* Trust anchors for outbound "verify" (SPEC §4.3). They live in the client
 * credentials only: a server session never requests a client certificate. */
int creds_load_trust(struct creds *c, const char *ca_file, char *err, size_t errlen)
{
	gnutls_certificate_credentials_t cred = c->client;
	int rc;
	if (strcmp(ca_file, "system") == 0)
		rc = gnutls_certificate_set_x509_system_trust(cred);
	else
		rc = gnutls_certificate_set_x509_trust_file(cred, ca_file, GNUTLS_X509_FMT_PEM);
	if (rc <= 0) {
		set_err(err, errlen, "outbound.ca_file %s: no trust anchors loaded: %s", ca_file,
			rc < 0 ? gnutls_strerror(rc) : "no certificate found");
		return -1;
	}
	c->has_trust = true;
	return 0;
}

static void client_pair_free(struct client_pair *p)
{
	for (unsigned i = 0; i < p->chain_len; i++)
		gnutls_pcert_deinit(&p->chain[i]);
	free(p->chain);
	if (p->key)
		gnutls_privkey_deinit(p->key);
}

static void creds_free(struct creds *c)
{
	if (c->priority)
		gnutls_priority_deinit(c->priority);
	if (c->client_priority)
		gnutls_priority_deinit(c->client_priority);
	if (c->cert)
		gnutls_certificate_free_credentials(c->cert);
	if (c->client)
		gnutls_certificate_free_credentials(c->client);
	for (size_t i = 0; i < c->n_pairs; i++)
		client_pair_free(&c->pairs[i]);
	free(c->pairs);
	creds_tickets_unref(c->tickets);
	free(c);
}

/* Copies pair idx of the server credentials (chain and key) into p. */
static int client_pair_copy(gnutls_certificate_credentials_t cert, unsigned idx,
			    struct client_pair *p)
{
	gnutls_x509_crt_t *crts = NULL;
	unsigned n_crts = 0;
	gnutls_x509_privkey_t xkey = NULL;
	int rc;

	p->curve = GNUTLS_ECC_CURVE_INVALID;
	if ((rc = gnutls_certificate_get_x509_crt(cert, idx, &crts, &n_crts)) < 0)
		return rc;
	if (n_crts == 0)
		rc = GNUTLS_E_NO_CERTIFICATE_FOUND;
	else if ((p->chain = calloc(n_crts, sizeof(*p->chain))) == NULL)
		rc = GNUTLS_E_MEMORY_ERROR;
	for (unsigned i = 0; rc >= 0 && i < n_crts; i++)
		if ((rc = gnutls_pcert_import_x509(&p->chain[i], crts[i], 0)) >= 0)
			p->chain_len++;
	for (unsigned i = 0; i < n_crts; i++)
		gnutls_x509_crt_deinit(crts[i]);
	gnutls_free(crts);
	if (rc < 0)
		return rc;

	if ((rc = gnutls_certificate_get_x509_key(cert, idx, &xkey)) < 0)
		return rc;
	if ((rc = gnutls_privkey_init(&p->key)) < 0) {
		p->key = NULL;
		gnutls_x509_privkey_deinit(xkey);
		return rc;
	}
	/* On success p->key owns xkey and frees it with itself. */
	rc = gnutls_privkey_import_x509(p->key, xkey, GNUTLS_PRIVKEY_IMPORT_AUTO_RELEASE);
	if (rc < 0) {
		gnutls_x509_privkey_deinit(xkey);
		return rc;
	}

	p->pk = gnutls_pubkey_get_pk_algorithm(p->chain[0].pubkey, NULL);
	if (p->pk == GNUTLS_PK_ECDSA &&
	    (rc = gnutls_pubkey_export_ecc_raw2(p->chain[0].pubkey, &p->curve, NULL, NULL, 0)) < 0)
		return rc;
	return 0;
}

/* TLS 1.3 ties each ECDSA signature algorithm to one curve (RFC 8446
 * §4.2.3); the TLS 1.2 ones name none. */
static gnutls_ecc_curve_t sign_curve(gnutls_sign_algorithm_t sign)
{
	switch (sign) {
	case GNUTLS_SIGN_ECDSA_SECP256R1_SHA256:
		return GNUTLS_ECC_CURVE_SECP256R1;
	case GNUTLS_SIGN_ECDSA_SECP384R1_SHA384:
		return GNUTLS_ECC_CURVE_SECP384R1;
	case GNUTLS_SIGN_ECDSA_SECP521R1_SHA512:
		return GNUTLS_ECC_CURVE_SECP521R1;
	default:
		return GNUTLS_ECC_CURVE_INVALID;
	}
}

static bool sign_in_list(unsigned sign, const unsigned *list, int n)
{
	for (int i = 0; i < n; i++)
		if (list[i] == sign)
			return true;
	return false;
}

/* Whether the peer can take p: one of the signature algorithms of its
 * CertificateRequest, also allowed by our priorities, signs with p's key.
 * Without that list (before TLS 1.2), the key types it named decide. */
static bool peer_can_use(const struct creds *c, gnutls_session_t s,
			 const struct gnutls_cert_retr_st *info, const struct client_pair *p)
{
	const unsigned *ours = NULL;
	int n_ours = gnutls_priority_sign_list(c->client_priority, &ours);
	gnutls_sign_algorithm_t sign;
	bool listed = false;

	for (unsigned i = 0; gnutls_sign_algorithm_get_requested(s, i, &sign) == 0; i++) {
		listed = true;
		if (!gnutls_sign_supports_pk_algorithm(sign, p->pk))
			continue;
		if (n_ours > 0 && !sign_in_list(sign, ours, n_ours))
			continue;
		gnutls_ecc_curve_t curve = sign_curve(sign);
		if (curve != GNUTLS_ECC_CURVE_INVALID && curve != p->curve)
			continue;
		return true;
	}
	if (listed)
		return false;
	if (info->pk_algos_length == 0)
		return true;
	for (unsigned i = 0; i < info->pk_algos_length; i++)
		if (info->pk_algos[i] == p->pk)
			return true;
	return false;
}

/* The client certificate (SPEC §4.2.6, §7.9): the first listed pair the
 * peer can use, whatever CAs it names (the CA list is a hint, and a
 * Postfix/OpenSSL client ignores it too). None usable: an empty Certificate
 * message, and the peer decides. The pair stays the generation's: flags 0
 * tells GnuTLS not to free it, and the session's reference on the
 * generation (creds_client_session) keeps it alive until gnutls_deinit(). */
static int client_cert_cb(gnutls_session_t s, const struct gnutls_cert_retr_st *info,
			  gnutls_pcert_st **certs, unsigned *certs_length,
			  gnutls_ocsp_data_st **ocsp, unsigned *ocsp_length,
			  gnutls_privkey_t *privkey, unsigned *flags)
{
	const struct creds *c = gnutls_session_get_ptr(s);

	*certs = NULL;
	*certs_length = 0;
	*ocsp = NULL;
	*ocsp_length = 0;
	*privkey = NULL;
	*flags = 0;
	if (c == NULL)
		return 0;
	for (size_t i = 0; i < c->n_pairs; i++) {
		struct client_pair *p = &c->pairs[i];
		if (!peer_can_use(c, s, info, p))
			continue;
		*certs = p->chain;
		*certs_length = p->chain_len;
		*privkey = p->key;
		return 0;
	}
	return 0;
}

/* The client credentials: the same pairs as the server's, handed out by
 * client_cert_cb; trust anchors come later (creds_load_trust). */
static bool load_client(struct creds *c, size_t n_pairs, char *err, size_t errlen)
{
	int rc;

	if ((rc = gnutls_certificate_allocate_credentials(&c->client)) < 0) {
		c->client = NULL;
		set_err(err, errlen, "cannot allocate client credentials: %s", gnutls_strerror(rc));
		return false;
	}
	gnutls_certificate_set_retrieve_function3(c->client, client_cert_cb);
	if ((c->pairs = calloc(n_pairs, sizeof(*c->pairs))) == NULL) {
		set_err(err, errlen, "out of memory");
		return false;
	}
	for (size_t i = 0; i < n_pairs; i++) {
		c->n_pairs++; /* creds_free frees what a failed copy left */
		if ((rc = client_pair_copy(c->cert, (unsigned)i, &c->pairs[i])) < 0) {
			set_err(err, errlen, "cannot copy certificate %zu for client use: %s",
				i + 1, gnutls_strerror(rc));
			return false;
		}
	}
	return true;
}

struct creds *creds_new(const struct creds_params *params, bool *self_signed, char *err,
			size_t errlen)
{
	bool made_self_signed = false;
	int rc;

	set_err(err, errlen, "%s", "");
	if (self_signed)
		*self_signed = false;
	if (params != NULL && params->ocsp_failed)
		*params->ocsp_failed = 0;
	if (params == NULL || (params->n_pairs > 0 && params->pairs == NULL)) {
		set_err(err, errlen, "no credentials parameters");
		return NULL;
	}
	struct creds *c = calloc(1, sizeof(*c));
	if (c == NULL) {
		set_err(err, errlen, "out of memory");
		return NULL;
	}
	atomic_init(&c->refs, 1);

	if ((rc = gnutls_certificate_allocate_credentials(&c->cert)) < 0) {
		c->cert = NULL;
		set_err(err, errlen, "cannot allocate credentials: %s", gnutls_strerror(rc));
		goto fail;
	}
	if (params->n_pairs == 0) {
		if (!load_self_signed(c->cert, params->server_name, err, errlen))
			goto fail;
		made_self_signed = true;
	}
	gnutls_certificate_set_flags(c->cert, GNUTLS_CERTIFICATE_API_V2);
	for (size_t i = 0; i < params->n_pairs; i++) {
		const struct creds_pair *p = &params->pairs[i];
		if (!load_pair(c->cert, p, err, errlen))
			goto fail;
		if (p->ocsp_file != NULL && !load_ocsp(c->cert, p, (unsigned)i, err, errlen)) {
			if (params->ocsp_failed)
				*params->ocsp_failed = i + 1;
			goto fail;
		}
	}
	if (!load_client(c, made_self_signed ? 1 : params->n_pairs, err, errlen))
		goto fail;
	/* RFC 7919 groups for DHE-RSA with TLS 1.2 clients that want it; the
	 * priority string decides whether DHE is offered at all. */
	if ((rc = gnutls_certificate_set_known_dh_params(c->cert, GNUTLS_SEC_PARAM_MEDIUM)) < 0) {
		set_err(err, errlen, "cannot set DH parameters: %s", gnutls_strerror(rc));
		goto fail;
	}
	if (make_priority(params->priority, &c->priority, err, errlen) < 0)
		goto fail;
	/* Outbound TLS is opportunistic by default: a CBC suite beats the
	 * plaintext a failed handshake falls back to, so without tls.priority
	 * the client side offers GnuTLS's NORMAL (old TLS still removed). */
	if (make_priority(params->priority ? params->priority : CLIENT_DEFAULT_PRIORITY,
			  &c->client_priority, err, errlen) < 0)
		goto fail;
	if (params->ticket_lifetime > CREDS_TICKET_LIFETIME_MAX) {
		set_err(err, errlen, "session ticket lifetime %u is above %u seconds",
			params->ticket_lifetime, CREDS_TICKET_LIFETIME_MAX);
		goto fail;
	}
	c->ticket_lifetime = params->ticket_lifetime;
	if (params->tickets) {
		creds_tickets_ref(params->tickets);
		c->tickets = params->tickets;
	} else if ((c->tickets = creds_tickets_new(err, errlen)) == NULL) {
		goto fail;
	}
	if (self_signed)
		*self_signed = made_self_signed;
	return c;

fail:
	creds_free(c);
	return NULL;
}

void creds_ref(struct creds *c)
{
	if (c)
		atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
}

void creds_unref(struct creds *c)
{
	if (c == NULL)
		return;
	unsigned n = atomic_load_explicit(&c->refs, memory_order_relaxed);
	do {
		assert(n > 0 && "creds_unref on a dead generation");
		if (n == 0)
			return; /* never below zero */
	} while (!atomic_compare_exchange_weak_explicit(&c->refs, &n, n - 1, memory_order_acq_rel,
							memory_order_relaxed));
	if (n == 1)
		creds_free(c);
}

int creds_server_session(struct creds *c, gnutls_session_t *session)
{
	gnutls_session_t s = NULL;
	int rc;

	*session = NULL;
	if ((rc = gnutls_init(&s, GNUTLS_SERVER | GNUTLS_NONBLOCK | GNUTLS_NO_SIGNAL)) < 0)
		return rc;
	if ((rc = gnutls_priority_set(s, c->priority)) < 0)
		goto fail;
	if ((rc = gnutls_credentials_set(s, GNUTLS_CRD_CERTIFICATE, c->cert)) < 0)
		goto fail;
	/* The lifetime hint of each ticket, and how long GnuTLS accepts one
	 * (RFC 8446 §4.6.1). Set before the key: GnuTLS times the sub-keys it
	 * derives from the key by it (lib/stek.c). No key at all, no tickets:
	 * a GnuTLS server sends none until gnutls_session_ticket_enable_server,
	 * and without a session cache there is no other resumption. */
	if (c->ticket_lifetime > 0) {
		gnutls_db_set_cache_expiration(s, (int)c->ticket_lifetime);
		if ((rc = tickets_enable(c->tickets, s)) < 0)
			goto fail;
	}
	gnutls_certificate_server_set_request(s, GNUTLS_CERT_IGNORE);
	/* SPEC §5 / §7.7: "smtp" is selected when offered; GNUTLS_ALPN_MANDATORY
	 * fails the handshake with GNUTLS_E_NO_APPLICATION_PROTOCOL when the
	 * client's ALPN list lacks it, and leaves alone a client that sends no
	 * ALPN extension at all (checked by test_credentials.c, GnuTLS 3.7.9).
	 * GnuTLS sends no alert by itself: the caller answers a fatal
	 * handshake error with gnutls_alert_send_appropriate(), which turns
	 * this one into the no_application_protocol alert. */
	if ((rc = gnutls_alpn_set_protocols(s, &alpn_smtp, 1, GNUTLS_ALPN_MANDATORY)) < 0)
		goto fail;
	/* TLS 1.2 renegotiation: the caller treats GNUTLS_E_REHANDSHAKE from
	 * gnutls_record_recv() as a refusal (SPEC §5); nothing to set here. */
	*session = s;
	return 0;

fail:
	gnutls_deinit(s);
	return rc;
}

/* An IP address is no name for SNI (RFC 6066 §3). */
static bool is_address(const char *host)
{
	unsigned char a[sizeof(struct in6_addr)];
	return inet_pton(AF_INET, host, a) == 1 || inet_pton(AF_INET6, host, a) == 1;
}

int creds_client_session(struct creds *c, const char *server_name, bool verify,
			 gnutls_session_t *session)
{
	gnutls_session_t s = NULL;
	int rc;

	*session = NULL;
	if (verify && (!c->has_trust || server_name == NULL))
		return GNUTLS_E_NO_CERTIFICATE_FOUND;
	if ((rc = gnutls_init(&s, GNUTLS_CLIENT | GNUTLS_NONBLOCK | GNUTLS_NO_SIGNAL)) < 0)
		return rc;
	if ((rc = gnutls_priority_set(s, c->client_priority)) < 0)
		goto fail;
	if ((rc = gnutls_credentials_set(s, GNUTLS_CRD_CERTIFICATE, c->client)) < 0)
		goto fail;
	/* For client_cert_cb; the caller's reference keeps c alive. */
	gnutls_session_set_ptr(s, c);
	if (server_name && !is_address(server_name) &&
	    (rc = gnutls_server_name_set(s, GNUTLS_NAME_DNS, server_name, strlen(server_name))) < 0)
		goto fail;
	/* The handshake fails unless the chain and the name check out. */
	if (verify)
		gnutls_session_set_verify_cert(s, server_name, 0);
	*session = s;
	return 0;

fail:
	gnutls_deinit(s);
	return rc;
}

int creds_fingerprint(struct creds *c, char *out, size_t outlen)
{
	static const char hex[] = "0123456789ABCDEF";
	gnutls_datum_t der;
	unsigned char md[32];
	size_t md_size = sizeof(md);

	if (c == NULL || out == NULL || outlen == 0)
		return -1;
	out[0] = '\0';
	if (gnutls_certificate_get_crt_raw(c->cert, 0, 0, &der) < 0)
		return -1;
	if (gnutls_fingerprint(GNUTLS_DIG_SHA256, &der, md, &md_size) < 0)
		return -1;
	if (outlen < md_size * 3)
		return -1;
	for (size_t i = 0; i < md_size; i++) {
		out[i * 3] = hex[md[i] >> 4];
		out[i * 3 + 1] = hex[md[i] & 0xf];
		out[i * 3 + 2] = i + 1 < md_size ? ':' : '\0';
	}
	return 0;
}

long long creds_expiry(struct creds *c, unsigned idx)
{
	gnutls_datum_t der;
	gnutls_x509_crt_t crt;
	if (c == NULL || gnutls_certificate_get_crt_raw(c->cert, idx, 0, &der) < 0)
		return -1;
	if (gnutls_x509_crt_init(&crt) < 0)
		return -1;
	long long t = -1;
	if (gnutls_x509_crt_import(crt, &der, GNUTLS_X509_FMT_DER) >= 0)
		t = (long long)gnutls_x509_crt_get_expiration_time(crt);
	gnutls_x509_crt_deinit(crt);
	return t;
}
