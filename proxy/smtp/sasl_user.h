/* sasl_user.h — the SASL user name of an AUTH exchange, for the log only.
 *
 * SPEC §3.6: a 235 reply marks the session authenticated in the log, and the
 * SASL user name may be logged as Postfix logs its sasl_username. The backend
 * checks the credentials; these functions only read, from the bytes the
 * client sends, the name it claims: PLAIN's authcid (RFC 4616), LOGIN's user
 * name line, CRAM-MD5's "user SP digest" response (RFC 2195). The session
 * machine keeps that name as a candidate and commits it only on 235.
 *
 * Pure C, no I/O, no allocation. Must never log anything, and never keep or
 * return a password: PLAIN's message is decoded into a stack buffer that is
 * wiped (explicit_bzero) before returning, whatever the outcome, and only
 * the authcid field is copied out.
 *
 * Accepted names are 1..SASL_USER_MAX bytes of well-formed UTF-8 without
 * control characters (C0, DEL, C1). Anything else — invalid base64, a
 * message too long to be an honest one, no name, an unacceptable name —
 * gives no name at all (the log then says user=none). Printable characters
 * that a key=value log must quote (space, '"', '\\', '=') are kept: the
 * logger quotes and escapes them (log_value() in proxy/log.h).
 */
#ifndef TLSFRONT_SMTP_SASL_USER_H
#define TLSFRONT_SMTP_SASL_USER_H

#include <stdbool.h>
#include <stddef.h>

#define SASL_USER_MAX  255 /* bytes of a name we keep (RFC 4616's 255 octets) */
#define SASL_USER_SIZE (SASL_USER_MAX + 1)

enum sasl_mech {
	SASL_MECH_OTHER = 0, /* any other mechanism: no name is read */
	SASL_MECH_PLAIN,
	SASL_MECH_LOGIN,
	SASL_MECH_CRAM_MD5,
};

/* Parses an AUTH command line ("AUTH mechanism [initial-response]", no line
 * end). Returns the mechanism; *ir points into line at the initial response
 * (*ir_len bytes), or is NULL when there is none. A line with more
 * arguments than these gives SASL_MECH_OTHER. */
enum sasl_mech sasl_auth_line(const char *line, size_t len, const char **ir, size_t *ir_len);

/* Reads the user name from one client SASL message of mechanism mech, as it
 * came on the wire (base64, no line end; "=" is an empty message, RFC 4954):
 * PLAIN's initial response or response, LOGIN's first response (or initial
 * response), CRAM-MD5's response. Writes the NUL-terminated name into out
 * and returns true; else out is "" and returns false. */
bool sasl_user_extract(enum sasl_mech mech, const char *b64, size_t len, char out[SASL_USER_SIZE]);

/* True when name (len bytes) is an acceptable name as described above. */
bool sasl_user_acceptable(const char *name, size_t len);

#endif
