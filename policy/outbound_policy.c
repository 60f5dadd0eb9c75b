/* outbound_policy.c — the §4.3 table (outbound_policy.h), one row per
 * policy. Pure functions: never any I/O, never libuv, GnuTLS, sockets or
 * clocks.
 */
#include "policy/outbound_policy.h"

struct policy_row {
	bool wants_tls;
	enum outbound_verdict no_starttls;
	enum outbound_verdict handshake_failed;
	bool verifies;
};

// clang-format off
/* SPEC §4.3, row by row. */
static const struct policy_row table[] = {
	[TF_OUT_TLS_NONE]       = {false, OUT_PLAINTEXT,        OUT_PLAINTEXT,       false},
	[TF_OUT_TLS_NEGOTIATED] = {true,  OUT_PLAINTEXT_LOGGED, OUT_RETRY_PLAINTEXT, false},
	[TF_OUT_TLS_REQUIRED]   = {true,  OUT_REFUSE,           OUT_REFUSE,          false},
	[TF_OUT_TLS_VERIFY]     = {true,  OUT_REFUSE,           OUT_REFUSE,          true},
};
// clang-format on

static const struct policy_row *row(enum tf_outbound_tls tls)
{
	/* An unknown value is treated as the strictest row. */
	if ((unsigned)tls >= sizeof(table) / sizeof(table[0]))
		return &table[TF_OUT_TLS_VERIFY];
	return &table[tls];
}

bool outbound_policy_wants_tls(enum tf_outbound_tls tls)
{
	return row(tls)->wants_tls;
}

enum outbound_verdict outbound_policy_no_starttls(enum tf_outbound_tls tls)
{
	return row(tls)->no_starttls;
}

enum outbound_verdict outbound_policy_handshake_failed(enum tf_outbound_tls tls)
{
	return row(tls)->handshake_failed;
}

bool outbound_policy_verifies(enum tf_outbound_tls tls)
{
	return row(tls)->verifies;
}
