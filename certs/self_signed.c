/* self_signed.c — makes the self-signed ECDSA P-256 certificate that lets
 * tlsfront run out of the box when tls.certificates is empty (SPEC §5).
 *
 * Everything stays in memory. Never includes libuv or policy/, never reads or
 * writes files, never prints or logs: failures are GnuTLS error codes.
 */
#include "certs/self_signed.h"

#include <string.h>
#include <time.h>
#include <gnutls/crypto.h>

#define VALID_BEFORE_NOW (60 * 60)		       /* one hour: clock skew */
#define VALID_AFTER_NOW	 ((time_t)3653 * 24 * 60 * 60) /* about ten years */
#define SERIAL_BYTES	 16

int self_signed_make(const char *server_name, gnutls_x509_crt_t *crt_out,
		     gnutls_x509_privkey_t *key_out)
{
	gnutls_x509_crt_t crt = NULL;
	gnutls_x509_privkey_t key = NULL;
	unsigned char serial[SERIAL_BYTES];
	unsigned char key_id[64];
	size_t key_id_size = sizeof(key_id);
	int rc;

	*crt_out = NULL;
	*key_out = NULL;
	if (server_name == NULL || server_name[0] == '\0')
		return GNUTLS_E_INVALID_REQUEST;
	size_t name_len = strlen(server_name);
	time_t now = time(NULL);

	if ((rc = gnutls_x509_privkey_init(&key)) < 0)
		goto fail;
	rc = gnutls_x509_privkey_generate(key, GNUTLS_PK_ECDSA,
					  GNUTLS_CURVE_TO_BITS(GNUTLS_ECC_CURVE_SECP256R1), 0);
	if (rc < 0)
		goto fail;
	if ((rc = gnutls_x509_crt_init(&crt)) < 0)
		goto fail;
	if ((rc = gnutls_x509_crt_set_version(crt, 3)) < 0)
		goto fail;

	/* A positive serial of 16 random octets, never with a leading zero
	 * octet (RFC 5280 §4.1.2.2). */
	if ((rc = gnutls_rnd(GNUTLS_RND_NONCE, serial, sizeof(serial))) < 0)
		goto fail;
	serial[0] = (unsigned char)((serial[0] & 0x7f) | 0x40);
	if ((rc = gnutls_x509_crt_set_serial(crt, serial, sizeof(serial))) < 0)
		goto fail;

	if ((rc = gnutls_x509_crt_set_activation_time(crt, now - VALID_BEFORE_NOW)) < 0)
		goto fail;
	if ((rc = gnutls_x509_crt_set_expiration_time(crt, now + VALID_AFTER_NOW)) < 0)
		goto fail;
	rc = gnutls_x509_crt_set_dn_by_oid(crt, GNUTLS_OID_X520_COMMON_NAME, 0, server_name,
					   (unsigned)name_len);
	if (rc < 0)
		goto fail;
	rc = gnutls_x509_crt_set_subject_alt_name(crt, GNUTLS_SAN_DNSNAME, server_name,
						  (unsigned)name_len, GNUTLS_FSAN_SET);
	if (rc < 0)
		goto fail;
	if ((rc = gnutls_x509_crt_set_key(crt, key)) < 0)
		goto fail;
	if ((rc = gnutls_x509_crt_set_basic_constraints(crt, 0, -1)) < 0)
		goto fail;
	if ((rc = gnutls_x509_crt_set_key_usage(crt, GNUTLS_KEY_DIGITAL_SIGNATURE)) < 0)
		goto fail;
	if ((rc = gnutls_x509_crt_set_key_purpose_oid(crt, GNUTLS_KP_TLS_WWW_SERVER, 0)) < 0)
		goto fail;
	/* Also a client certificate: shown to outbound peers that ask (§4.2.6). */
	if ((rc = gnutls_x509_crt_set_key_purpose_oid(crt, GNUTLS_KP_TLS_WWW_CLIENT, 0)) < 0)
		goto fail;
	if ((rc = gnutls_x509_crt_get_key_id(crt, 0, key_id, &key_id_size)) < 0)
		goto fail;
	if ((rc = gnutls_x509_crt_set_subject_key_id(crt, key_id, key_id_size)) < 0)
		goto fail;
	if ((rc = gnutls_x509_crt_sign2(crt, crt, key, GNUTLS_DIG_SHA256, 0)) < 0)
		goto fail;

	*crt_out = crt;
	*key_out = key;
	return 0;

fail:
	if (crt)
		gnutls_x509_crt_deinit(crt);
	if (key)
		gnutls_x509_privkey_deinit(key);
	return rc;
}
