/* ehlo_rewrite.h — the EHLO reply as a keyword mask (SPEC §3.4).
 *
 * Parses the backend's 250 reply into its first line and keyword lines, asks
 * policy/ which keywords to keep, adds STARTTLS where offered, and formats the
 * reply again with correct "250-" / "250 " marks. Never does I/O.
 */
#ifndef TLSFRONT_SMTP_EHLO_REWRITE_H
#define TLSFRONT_SMTP_EHLO_REWRITE_H

#include <stdbool.h>
#include <stddef.h>

#include "policy/smtp_rules.h"
#include "proxy/smtp/buf.h"

/* Appends the rewritten reply to out. text holds a complete reply with CRLF
 * line ends; a reply that is not 250 is appended unchanged. Returns false
 * when out of memory.
 *
 * When s->size_limit is not 0, the reply says "SIZE n" (RFC 1870) with n the
 * smaller of s->size_limit and the backend's SIZE ("SIZE", "SIZE 0" or a
 * SIZE without a number meaning no limit): in place of the backend's first
 * SIZE line (later ones are dropped), or after the kept lines, before
 * STARTTLS, when the backend sent none. */
bool ehlo_rewrite(const struct smtp_rules_session *s, int code, const char *text, size_t len,
		  struct buf *out);

/* True when a reply (complete, CRLF line ends) lists keyword, matched without
 * regard to case, on one of its lines after the first: "250-XCLIENT ...". */
bool ehlo_reply_has_keyword(const char *text, size_t len, const char *keyword);

#endif
