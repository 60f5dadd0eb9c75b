/* metrics.c — the counter registry of metrics.h: per-worker blocks of
 * relaxed atomics, the label tables, and the few values main publishes for
 * the HTTP thread (behind a mutex no worker ever takes).
 *
 * Must never take a lock on a path a worker runs, never log, never do I/O.
 */
#include "proxy/metrics.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const double metrics_bucket_bounds[METRICS_BUCKETS] = {
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5,
};

static struct metrics_block *blocks;
static unsigned n_blocks;

static atomic_ullong reloads_ok, reloads_failed;
static atomic_ullong backend_last_ok;
static atomic_bool ready;

static pthread_mutex_t published_lock = PTHREAD_MUTEX_INITIALIZER;
static struct metrics_cert published_certs[TF_MAX_CERTS]; /* published_lock */
static unsigned published_n_certs;			  /* published_lock */
static struct {
	bool set;
	struct sockaddr_storage ss;
	unsigned len;
	char text[300];
	unsigned connect_timeout;
} published_backend; /* published_lock */

int metrics_init(unsigned n_workers)
{
	/* One more for main's own counting, never shared with a worker. Each
	 * block starts on its own cache line (its size is a multiple of 64,
	 * metrics.h), so no two workers ever write to the same line. */
	size_t size = (n_workers + 1) * sizeof(*blocks);
	blocks = aligned_alloc(64, size);
	if (!blocks)
		return -1;
	memset(blocks, 0, size);
	n_blocks = n_workers + 1;
	return 0;
}

void metrics_free(void)
{
	free(blocks);
	blocks = NULL;
	n_blocks = 0;
}

struct metrics_block *metrics_block(unsigned worker)
{
	return &blocks[worker < n_blocks ? worker : n_blocks - 1];
}

static const char *const version_names[MV_COUNT] = {"TLS1.2", "TLS1.3", "other"};
static const char *const cipher_names[MC_COUNT] = {
    "AES-128-GCM", "AES-256-GCM", "CHACHA20-POLY1305", "AES-128-CCM",
    "AES-256-CCM", "AES-128-CBC", "AES-256-CBC",       "other",
};

enum metrics_tls_version metrics_tls_version_of(const char *name)
{
	for (int v = 0; v < MV_OTHER; v++)
		if (name && strcmp(name, version_names[v]) == 0)
			return (enum metrics_tls_version)v;
	return MV_OTHER;
}

enum metrics_cipher metrics_cipher_of(const char *name)
{
	for (int c = 0; c < MC_OTHER; c++)
		if (name && strcmp(name, cipher_names[c]) == 0)
			return (enum metrics_cipher)c;
	return MC_OTHER;
}

const char *metrics_tls_version_name(enum metrics_tls_version v)
{
	return (unsigned)v < MV_COUNT ? version_names[v] : "other";
}

const char *metrics_cipher_name(enum metrics_cipher c)
{
	return (unsigned)c < MC_COUNT ? cipher_names[c] : "other";
}

const char *metrics_listener_name(enum metrics_listener l)
{
	static const char *const names[ML_COUNT] = {"tcp", "tls", "outbound"};
	return (unsigned)l < ML_COUNT ? names[l] : "unknown";
}

const char *metrics_hs_failure_name(enum metrics_hs_failure f)
{
	static const char *const names[MH_COUNT] = {"timeout", "alert",	      "protocol_error",
						    "alpn",    "certificate", "closed"};
	return (unsigned)f < MH_COUNT ? names[f] : "unknown";
}

const char *metrics_out_tls_name(enum metrics_out_tls o)
{
	static const char *const names[MO_COUNT] = {"verified", "encrypted", "plaintext",
						    "refused"};
	return (unsigned)o < MO_COUNT ? names[o] : "unknown";
}

const char *metrics_verify_name(enum metrics_verify v)
{
	static const char *const names[MVR_COUNT] = {"ok", "failed", "not_checked"};
	return (unsigned)v < MVR_COUNT ? names[v] : "unknown";
}

void metrics_backend_connected(struct metrics_block *b, uint64_t ns, uint64_t now_ns)
{
	double s = (double)ns / 1e9;
	unsigned i = 0;
	while (i < METRICS_BUCKETS && s > metrics_bucket_bounds[i])
		i++;
	metrics_inc(&b->backend_bucket[i]);
	metrics_add(&b->backend_ns, ns);
	metrics_backend_ok_at(now_ns);
}

void metrics_backend_ok_at(uint64_t now_ns)
{
	atomic_store_explicit(&backend_last_ok, now_ns, memory_order_relaxed);
}

uint64_t metrics_backend_last_ok(void)
{
	return atomic_load_explicit(&backend_last_ok, memory_order_relaxed);
}

void metrics_reload(bool ok)
{
	metrics_inc(ok ? &reloads_ok : &reloads_failed);
}

void metrics_set_ready(bool r)
{
	atomic_store(&ready, r);
}

bool metrics_ready(void)
{
	return atomic_load(&ready);
}

void metrics_set_certs(const struct metrics_cert *certs, unsigned n)
{
	if (n > TF_MAX_CERTS)
		n = TF_MAX_CERTS;
	pthread_mutex_lock(&published_lock);
	memcpy(published_certs, certs, n * sizeof(*certs));
	published_n_certs = n;
	pthread_mutex_unlock(&published_lock);
}

void metrics_set_backend(const struct sockaddr_storage *ss, unsigned len, const char *text,
			 unsigned connect_timeout)
{
	pthread_mutex_lock(&published_lock);
	published_backend.set = true;
	published_backend.ss = *ss;
	published_backend.len = len;
	snprintf(published_backend.text, sizeof(published_backend.text), "%s", text);
	published_backend.connect_timeout = connect_timeout;
	pthread_mutex_unlock(&published_lock);
}

bool metrics_get_backend(struct sockaddr_storage *ss, unsigned *len, char *text, size_t textlen,
			 unsigned *connect_timeout)
{
	pthread_mutex_lock(&published_lock);
	bool set = published_backend.set;
	*ss = published_backend.ss;
	*len = published_backend.len;
	snprintf(text, textlen, "%s", published_backend.text);
	*connect_timeout = published_backend.connect_timeout;
	pthread_mutex_unlock(&published_lock);
	return set;
}

static uint64_t get(const atomic_ullong *c)
{
	return atomic_load_explicit(c, memory_order_relaxed);
}

/* Adds n counters starting at src into dst: the blocks and the snapshot
 * have the same layout, member by member. */
static void sum(uint64_t *dst, const atomic_ullong *src, size_t n)
{
	for (size_t i = 0; i < n; i++)
		dst[i] += get(&src[i]);
}

#define SUM(member)                                                                                \
	sum((uint64_t *)&s->member, (const atomic_ullong *)&b->member,                             \
	    sizeof(b->member) / sizeof(atomic_ullong))

void metrics_snapshot(struct metrics_snapshot *s)
{
	memset(s, 0, sizeof(*s));
	for (unsigned i = 0; i < n_blocks; i++) {
		const struct metrics_block *b = &blocks[i];
		SUM(started);
		SUM(ended);
		SUM(tls);
		SUM(hs_failed);
		SUM(resumed);
		SUM(starttls);
		SUM(refused);
		SUM(messages);
		SUM(bytes_in);
		SUM(bytes_out);
		SUM(backend_failed);
		SUM(backend_bucket);
		SUM(backend_ns);
		SUM(out_sessions);
		SUM(out_messages);
		SUM(out_verify);
		SUM(out_fallbacks);
	}
	s->reloads_ok = get(&reloads_ok);
	s->reloads_failed = get(&reloads_failed);
	pthread_mutex_lock(&published_lock);
	memcpy(s->certs, published_certs, published_n_certs * sizeof(*s->certs));
	s->n_certs = published_n_certs;
	pthread_mutex_unlock(&published_lock);
	s->version = TLSFRONT_VERSION;
}
