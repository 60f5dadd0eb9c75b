/* sasl_user.c — the SASL user name reader of sasl_user.h.
 *
 * For the log only (SPEC §3.6). Never logs, never does I/O, never keeps a
 * password: every buffer that held decoded client bytes is wiped before
 * return, PLAIN's (authzid, authcid, password) above all.
 */
#include "proxy/smtp/sasl_user.h"

#include <stdint.h>
#include <string.h>
#include <strings.h>

/* PLAIN's message: authzid NUL authcid NUL passwd, each up to 255 octets
 * (RFC 4616 §2) — with room to spare. A longer one gives no name. */
#define PLAIN_MAX 1024
/* CRAM-MD5's response: the user name, a space, 32 hex digits (RFC 2195). */
#define CRAM_DIGEST 32
#define CRAM_MAX    (SASL_USER_MAX + 1 + CRAM_DIGEST)

static int b64_value(unsigned char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	return -1;
}

/* Decodes base64 (RFC 4648 §4; the final padding may be left out) into at
 * most cap bytes. False when the input is not base64 or decodes to more than
 * cap bytes; out may then hold part of the result: the caller wipes it. */
static bool b64_decode(const char *in, size_t len, unsigned char *out, size_t cap, size_t *outlen)
{
	size_t data = len;
	while (data > 0 && in[data - 1] == '=')
		data--;
	size_t pad = len - data;
	if (pad > 2 || (pad && len % 4 != 0) || data % 4 == 1)
		return false;
	uint32_t acc = 0;
	unsigned bits = 0;
	size_t o = 0;
	bool ok = true;
	for (size_t i = 0; i < data && ok; i++) {
		int v = b64_value((unsigned char)in[i]);
		if (v < 0) {
			ok = false;
			break;
		}
		acc = (acc << 6) | (uint32_t)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			if (o == cap)
				ok = false;
			else
				out[o++] = (unsigned char)(acc >> bits);
		}
	}
	explicit_bzero(&acc, sizeof(acc)); /* it held decoded bits */
	*outlen = o;
	return ok;
}

bool sasl_user_acceptable(const char *name, size_t len)
{
	if (len == 0 || len > SASL_USER_MAX)
		return false;
	const unsigned char *s = (const unsigned char *)name;
	for (size_t i = 0; i < len;) {
		unsigned c = s[i];
		if (c < 0x80) {
			if (c < 0x20 || c == 0x7f)
				return false; /* C0 controls and DEL */
			i++;
			continue;
		}
		size_t n;
		uint32_t cp, min;
		if ((c & 0xe0) == 0xc0) {
			n = 1, cp = c & 0x1f, min = 0x80;
		} else if ((c & 0xf0) == 0xe0) {
			n = 2, cp = c & 0x0f, min = 0x800;
		} else if ((c & 0xf8) == 0xf0) {
			n = 3, cp = c & 0x07, min = 0x10000;
		} else {
			return false; /* a continuation byte first, or 0xf8.. */
		}
		if (len - i - 1 < n)
			return false; /* truncated sequence */
		for (size_t k = 1; k <= n; k++) {
			unsigned cc = s[i + k];
			if ((cc & 0xc0) != 0x80)
				return false;
			cp = (cp << 6) | (cc & 0x3f);
		}
		/* Overlong forms, surrogates, beyond Unicode, C1 controls. */
		if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff) ||
		    (cp >= 0x80 && cp <= 0x9f))
			return false;
		i += n + 1;
	}
	return true;
}

static bool is_space(char c)
{
	return c == ' ' || c == '\t';
}

/* The next SP/TAB-separated token of line at *at; false at the line end. */
static bool next_token(const char *line, size_t len, size_t *at, const char **tok, size_t *tok_len)
{
	size_t i = *at;
	while (i < len && is_space(line[i]))
		i++;
	if (i == len) {
		*at = i;
		return false;
	}
	size_t start = i;
	while (i < len && !is_space(line[i]))
		i++;
	*tok = line + start;
	*tok_len = i - start;
	*at = i;
	return true;
}

enum sasl_mech sasl_auth_line(const char *line, size_t len, const char **ir, size_t *ir_len)
{
	static const struct {
		const char *name;
		enum sasl_mech mech;
	} mechs[] = {
	    {"PLAIN", SASL_MECH_PLAIN},
	    {"LOGIN", SASL_MECH_LOGIN},
	    {"CRAM-MD5", SASL_MECH_CRAM_MD5},
	};
	const char *verb, *name, *extra;
	size_t verb_len, name_len, extra_len, at = 0;
	*ir = NULL;
	*ir_len = 0;
	if (!next_token(line, len, &at, &verb, &verb_len) ||
	    !next_token(line, len, &at, &name, &name_len))
		return SASL_MECH_OTHER;
	if (next_token(line, len, &at, ir, ir_len) &&
	    next_token(line, len, &at, &extra, &extra_len)) {
		*ir = NULL; /* "AUTH mech ir more": not SASL as we know it */
		*ir_len = 0;
		return SASL_MECH_OTHER;
	}
	for (size_t i = 0; i < sizeof(mechs) / sizeof(mechs[0]); i++)
		if (strlen(mechs[i].name) == name_len &&
		    strncasecmp(mechs[i].name, name, name_len) == 0)
			return mechs[i].mech;
	return SASL_MECH_OTHER;
}

/* Copies name into out when acceptable. */
static bool take_name(const unsigned char *name, size_t len, char out[SASL_USER_SIZE])
{
	if (!sasl_user_acceptable((const char *)name, len))
		return false;
	memcpy(out, name, len);
	out[len] = '\0';
	return true;
}

/* PLAIN (RFC 4616): [authzid] NUL authcid NUL passwd. The authcid is the
 * name the credentials belong to: the one logged. */
static bool plain_user(const unsigned char *msg, size_t len, char out[SASL_USER_SIZE])
{
	const unsigned char *nul1 = memchr(msg, '\0', len);
	if (!nul1)
		return false;
	const unsigned char *authcid = nul1 + 1;
	size_t rest = len - (size_t)(authcid - msg);
	const unsigned char *nul2 = memchr(authcid, '\0', rest);
	if (!nul2)
		return false;
	return take_name(authcid, (size_t)(nul2 - authcid), out);
}

/* CRAM-MD5 (RFC 2195): the user name, a space, the digest in hex. The name
 * ends at the last space: it may hold spaces itself. */
static bool cram_user(const unsigned char *msg, size_t len, char out[SASL_USER_SIZE])
{
	if (len < CRAM_DIGEST + 2 || msg[len - CRAM_DIGEST - 1] != ' ')
		return false;
	for (size_t i = len - CRAM_DIGEST; i < len; i++) {
		unsigned char c = msg[i];
		if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')))
			return false;
	}
	return take_name(msg, len - CRAM_DIGEST - 1, out);
}

bool sasl_user_extract(enum sasl_mech mech, const char *b64, size_t len, char out[SASL_USER_SIZE])
{
	unsigned char msg[PLAIN_MAX];
	size_t cap, n = 0;
	bool ok = false;

	out[0] = '\0';
	switch (mech) {
	case SASL_MECH_PLAIN:
		cap = PLAIN_MAX;
		break;
	case SASL_MECH_LOGIN:
		cap = SASL_USER_MAX;
		break;
	case SASL_MECH_CRAM_MD5:
		cap = CRAM_MAX;
		break;
	default:
		return false;
	}
	if (len == 1 && b64[0] == '=')
		return false; /* an empty message (RFC 4954 §4) names no one */
	if (b64_decode(b64, len, msg, cap, &n)) {
		if (mech == SASL_MECH_PLAIN)
			ok = plain_user(msg, n, out);
		else if (mech == SASL_MECH_LOGIN)
			ok = take_name(msg, n, out);
		else
			ok = cram_user(msg, n, out);
	}
	/* PLAIN's message held the password: nothing of it may stay on the
	 * stack. The whole buffer, as a failed decode may have stopped
	 * anywhere. */
	explicit_bzero(msg, sizeof(msg));
	if (!ok)
		out[0] = '\0';
	return ok;
}
