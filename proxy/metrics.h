/* metrics.h — the counters behind /metrics (issue 13): what the workers
 * count, and the plain snapshot the text formatter (metrics_format.h) turns
 * into the Prometheus exposition format.
 *
 * Each worker thread counts into its own block of C11 atomics (relaxed: a
 * scrape needs no ordering between counters), so the session path takes no
 * lock and shares no cache line with another worker. A scrape sums the
 * blocks. Label sets are fixed at compile time: listeners, close reasons,
 * refusal rules and handshake failure causes are enums; TLS versions and
 * ciphers are a small table with an "other" row. What main publishes for
 * /healthz and the certificate expiry gauges (the backend address, the
 * certificate list) sits behind one mutex that only main and the HTTP thread
 * take — never a worker.
 *
 * Never includes libuv or GnuTLS (the formatter's unit test links without
 * them), never logs, never does I/O.
 */
#ifndef TLSFRONT_PROXY_METRICS_H
#define TLSFRONT_PROXY_METRICS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "policy/config.h"
#include "policy/smtp_rules.h"
#include "proxy/smtp/smtp_machine.h"

enum metrics_listener { ML_TCP = 0, ML_TLS, ML_OUTBOUND, ML_COUNT };

/* Close reasons: enum smtp_close_reason, CLOSE_NONE .. CLOSE_ERROR. */
#define MR_COUNT (CLOSE_ERROR + 1)

enum metrics_tls_version { MV_TLS12 = 0, MV_TLS13, MV_OTHER, MV_COUNT };

enum metrics_cipher {
	MC_AES_128_GCM = 0,
	MC_AES_256_GCM,
	MC_CHACHA20_POLY1305,
	MC_AES_128_CCM,
	MC_AES_256_CCM,
	MC_AES_128_CBC,
	MC_AES_256_CBC,
	MC_OTHER,
	MC_COUNT
};

enum metrics_hs_failure {
	MH_TIMEOUT = 0, /* tls.handshake_timeout expired */
	MH_ALERT,	/* the other side sent a fatal alert */
	MH_PROTOCOL,	/* anything else GnuTLS refused */
	MH_ALPN,	/* §5: ALPN offered without "smtp" */
	MH_CERTIFICATE, /* outbound "verify": the peer's chain or name */
	MH_CLOSED,	/* the connection closed during the handshake */
	MH_COUNT
};

/* Outbound sessions by what became of TLS on the peer leg. */
enum metrics_out_tls {
	MO_VERIFIED = 0, /* TLS, certificate checked (tls = "verify") */
	MO_ENCRYPTED,	 /* TLS, certificate not checked */
	MO_PLAINTEXT,	 /* spliced without TLS (tls = "none", no STARTTLS, retry) */
	MO_REFUSED,	 /* §4.3: 421 4.7.0, the peer did not meet the policy */
	MO_COUNT
};

enum metrics_verify { MVR_OK = 0, MVR_FAILED, MVR_NOT_CHECKED, MVR_COUNT };

/* Upper bounds (seconds) of the backend connect time histogram; +Inf is
 * implied after the last. */
#define METRICS_BUCKETS 12
extern const double metrics_bucket_bounds[METRICS_BUCKETS];

/* One worker's counters, on cache lines of its own. */
struct metrics_block {
	_Alignas(64) atomic_ullong started[ML_COUNT];
	atomic_ullong ended[ML_COUNT][MR_COUNT];
	atomic_ullong tls[ML_COUNT][MV_COUNT][MC_COUNT];
	atomic_ullong hs_failed[ML_COUNT][MH_COUNT];
	atomic_ullong resumed[ML_COUNT];
	atomic_ullong starttls[ML_COUNT];
	atomic_ullong refused[ML_COUNT][REFUSAL_COUNT];
	atomic_ullong messages[ML_COUNT];
	atomic_ullong bytes_in[ML_COUNT], bytes_out[ML_COUNT];
	atomic_ullong backend_failed[ML_COUNT];
	atomic_ullong backend_bucket[METRICS_BUCKETS + 1]; /* not cumulative */
	atomic_ullong backend_ns;			   /* sum of connect times */
	atomic_ullong out_sessions[MO_COUNT];
	atomic_ullong out_messages[MO_COUNT];
	atomic_ullong out_verify[MVR_COUNT];
	atomic_ullong out_fallbacks;
};

/* The plain sum of every block, and the rest of what a scrape shows. */
#define METRICS_CERT_LABEL 256
struct metrics_cert {
	char label[METRICS_CERT_LABEL]; /* the cert file, or "self-signed" */
	int64_t not_after;		/* Unix time; -1 when unknown */
};

struct metrics_snapshot {
	uint64_t started[ML_COUNT];
	uint64_t ended[ML_COUNT][MR_COUNT];
	uint64_t tls[ML_COUNT][MV_COUNT][MC_COUNT];
	uint64_t hs_failed[ML_COUNT][MH_COUNT];
	uint64_t resumed[ML_COUNT];
	uint64_t starttls[ML_COUNT];
	uint64_t refused[ML_COUNT][REFUSAL_COUNT];
	uint64_t messages[ML_COUNT];
	uint64_t bytes_in[ML_COUNT], bytes_out[ML_COUNT];
	uint64_t backend_failed[ML_COUNT];
	uint64_t backend_bucket[METRICS_BUCKETS + 1];
	uint64_t backend_ns;
	uint64_t out_sessions[MO_COUNT];
	uint64_t out_messages[MO_COUNT];
	uint64_t out_verify[MVR_COUNT];
	uint64_t out_fallbacks;
	uint64_t reloads_ok, reloads_failed;
	struct metrics_cert certs[TF_MAX_CERTS];
	unsigned n_certs;
	const char *version, *gnutls_version, *libuv_version; /* static strings */
};

/* Allocates one block per worker (and one for main). Returns 0 or -1. */
int metrics_init(unsigned n_workers);
void metrics_free(void);

/* The block of worker index (the worker's own thread only counts into
 * it). */
struct metrics_block *metrics_block(unsigned worker);

static inline void metrics_add(atomic_ullong *c, uint64_t n)
{
	atomic_fetch_add_explicit(c, n, memory_order_relaxed);
}

static inline void metrics_inc(atomic_ullong *c)
{
	atomic_fetch_add_explicit(c, 1, memory_order_relaxed);
}

/* The table rows of a negotiated version and cipher ("TLS1.3",
 * "AES-256-GCM"); unknown names fall into the "other" row. */
enum metrics_tls_version metrics_tls_version_of(const char *name);
enum metrics_cipher metrics_cipher_of(const char *name);
const char *metrics_tls_version_name(enum metrics_tls_version v);
const char *metrics_cipher_name(enum metrics_cipher c);
const char *metrics_listener_name(enum metrics_listener l);
const char *metrics_hs_failure_name(enum metrics_hs_failure f);
const char *metrics_out_tls_name(enum metrics_out_tls o);
const char *metrics_verify_name(enum metrics_verify v);

/* A backend connect that took ns nanoseconds (worker's block). */
void metrics_backend_connected(struct metrics_block *b, uint64_t ns, uint64_t now_ns);

/* Main: a reload succeeded or failed. */
void metrics_reload(bool ok);

/* Main: the certificates of the current generation (labels and expiry
 * times), replaced as a whole at start and on each successful reload. */
void metrics_set_certs(const struct metrics_cert *certs, unsigned n);

/* Main: what /healthz probes, replaced at start and on each reload. */
void metrics_set_backend(const struct sockaddr_storage *ss, unsigned len, const char *text,
			 unsigned connect_timeout);
/* Copies it out (the HTTP thread). Returns false before it was set. */
bool metrics_get_backend(struct sockaddr_storage *ss, unsigned *len, char *text, size_t textlen,
			 unsigned *connect_timeout);

/* The monotonic time (ns) of the last backend connect that succeeded, from
 * any worker or from the /healthz probe; 0 when none yet. */
uint64_t metrics_backend_last_ok(void);
void metrics_backend_ok_at(uint64_t now_ns);

/* Main: every listener is bound and every worker runs (true), or tlsfront
 * is stopping (false). */
void metrics_set_ready(bool ready);
bool metrics_ready(void);

/* Sums every block and the main-thread values into s. */
void metrics_snapshot(struct metrics_snapshot *s);

#endif
