/* test_metrics_format.c — unit tests of proxy/metrics_format.c and of the
 * label tables of proxy/metrics.c (issue 13): label values escaped as the
 * Prometheus text format wants, one HELP and one TYPE line per family and
 * every sample under its own family, counters ending in _total, histogram
 * buckets cumulative, values as the snapshot holds them.
 *
 * No sockets, no threads: a snapshot is filled by hand and formatted.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/metrics.h"
#include "proxy/metrics_format.h"

static char *format(const struct metrics_snapshot *s)
{
	struct buf out = {0};
	assert_true(metrics_format(s, &out));
	assert_true(buf_append(&out, "", 1)); /* NUL-terminated */
	size_t len;
	return buf_take(&out, &len);
}

static void snapshot_init(struct metrics_snapshot *s)
{
	memset(s, 0, sizeof(*s));
	s->version = "0.1.0";
	s->gnutls_version = "3.7.9";
	s->libuv_version = "1.44.2";
}

/* The line of text that starts with prefix, as a new string; NULL when
 * none. */
static char *line_of(const char *text, const char *prefix)
{
	size_t n = strlen(prefix);
	for (const char *p = text; *p;) {
		const char *end = strchr(p, '\n');
		size_t len = end ? (size_t)(end - p) : strlen(p);
		if (len >= n && strncmp(p, prefix, n) == 0) {
			char *line = malloc(len + 1);
			memcpy(line, p, len);
			line[len] = '\0';
			return line;
		}
		p += len + (end ? 1 : 0);
	}
	return NULL;
}

static void assert_line(const char *text, const char *line)
{
	char *found = line_of(text, line);
	if (!found || strcmp(found, line) != 0)
		fail_msg("expected the line \"%s\", got \"%s\" in:\n%s", line,
			 found ? found : "(none)", text);
	free(found);
}

static void test_escape_label(void **state)
{
	(void)state;
	static const struct {
		const char *in, *out;
	} cases[] = {
	    {"plain", "plain"},
	    {"a\\b", "a\\\\b"},
	    {"say \"hi\"", "say \\\"hi\\\""},
	    {"two\nlines", "two\\nlines"},
	    {"\\\"\n", "\\\\\\\"\\n"},
	    {"", ""},
	    {"caf\xc3\xa9", "caf\xc3\xa9"}, /* UTF-8 passes as it is */
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct buf out = {0};
		assert_true(metrics_escape_label(&out, cases[i].in));
		assert_true(buf_append(&out, "", 1));
		assert_string_equal(out.data, cases[i].out);
		buf_free(&out);
	}
}

static void test_certificate_label_is_escaped(void **state)
{
	(void)state;
	struct metrics_snapshot s;
	snapshot_init(&s);
	snprintf(s.certs[0].label, sizeof(s.certs[0].label), "/etc/t\"f\\x\ny.pem");
	s.certs[0].not_after = 1900000000;
	snprintf(s.certs[1].label, sizeof(s.certs[1].label), "/unreadable.pem");
	s.certs[1].not_after = -1; /* unknown: no sample */
	s.n_certs = 2;
	char *text = format(&s);
	assert_line(text,
		    "tlsfront_certificate_expiry_seconds{certificate=\"/etc/t\\\"f\\\\x\\ny.pem\"} "
		    "1900000000");
	assert_null(strstr(text, "/unreadable.pem"));
	free(text);
}

/* Every sample line belongs to the family whose HELP/TYPE came last; each
 * family has one HELP and one TYPE; counters end in _total. */
static void test_one_help_and_type_per_family(void **state)
{
	(void)state;
	struct metrics_snapshot s;
	snapshot_init(&s);
	s.tls[ML_TLS][MV_TLS13][MC_AES_256_GCM] = 3;
	s.certs[0] = (struct metrics_cert){.label = "self-signed", .not_after = 5};
	s.n_certs = 1;
	char *text = format(&s);

	char families[64][96];
	unsigned n_families = 0;
	char current[96] = "", type[32] = "";
	unsigned samples = 0;
	char *save = NULL;
	for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		char name[96], rest[512];
		if (sscanf(line, "# HELP %95s %511[^\n]", name, rest) == 2) {
			for (unsigned i = 0; i < n_families; i++)
				if (strcmp(families[i], name) == 0)
					fail_msg("family %s has a second HELP", name);
			assert_true(n_families < 64);
			snprintf(families[n_families++], sizeof(families[0]), "%s", name);
			snprintf(current, sizeof(current), "%s", name);
			type[0] = '\0';
			assert_true(strncmp(name, "tlsfront_", 9) == 0);
			continue;
		}
		if (sscanf(line, "# TYPE %95s %31s", name, type) == 2) {
			assert_string_equal(name, current);
			if (strcmp(type, "counter") == 0) {
				size_t n = strlen(name);
				assert_true(n > 6 && strcmp(name + n - 6, "_total") == 0);
			} else {
				assert_true(strcmp(type, "gauge") == 0 ||
					    strcmp(type, "histogram") == 0);
			}
			continue;
		}
		assert_true(line[0] != '#');
		/* A sample: its name is the family, or the family plus a
		 * histogram suffix. */
		assert_true(type[0] != '\0');
		size_t n = strlen(current);
		assert_true(strncmp(line, current, n) == 0);
		const char *after = line + n;
		if (strcmp(type, "histogram") == 0 &&
		    (strncmp(after, "_bucket{", 8) == 0 || strncmp(after, "_sum ", 5) == 0 ||
		     strncmp(after, "_count ", 7) == 0))
			after = strchr(after, after[1] == 'b' ? '{' : ' ');
		assert_true(*after == '{' || *after == ' ');
		samples++;
	}
	assert_true(n_families >= 20);
	assert_true(samples > 100);
	free(text);
}

static void test_values_and_labels(void **state)
{
	(void)state;
	struct metrics_snapshot s;
	snapshot_init(&s);
	s.started[ML_TCP] = 7;
	s.ended[ML_TCP][CLOSE_QUIT] = 4;
	s.ended[ML_TCP][CLOSE_TLS_ERROR] = 1;
	s.tls[ML_TCP][MV_TLS12][MC_CHACHA20_POLY1305] = 2;
	s.hs_failed[ML_TLS][MH_ALPN] = 1;
	s.refused[ML_OUTBOUND][REFUSAL_BARE_NEWLINE] = 9;
	s.refused[ML_TCP][REFUSAL_REQUIRE_TLS] = 5;
	s.out_sessions[MO_REFUSED] = 6;
	s.out_verify[MVR_FAILED] = 2;
	s.reloads_ok = 3;
	s.reloads_failed = 1;
	s.bytes_in[ML_TLS] = 12345678901234ull;
	char *text = format(&s);
	assert_line(text, "tlsfront_sessions_started_total{listener=\"tcp\"} 7");
	assert_line(text, "tlsfront_sessions_ended_total{listener=\"tcp\",reason=\"quit\"} 4");
	assert_line(text, "tlsfront_sessions_ended_total{listener=\"tcp\",reason=\"tls_error\"} 1");
	assert_line(text, "tlsfront_sessions_active{listener=\"tcp\"} 2");
	assert_line(text, "tlsfront_tls_sessions_total{listener=\"tcp\",version=\"TLS1.2\","
			  "cipher=\"CHACHA20-POLY1305\"} 2");
	/* A TLS series appears at its first handshake: zero rows are left out. */
	assert_null(strstr(text, "version=\"TLS1.3\""));
	assert_line(text,
		    "tlsfront_tls_handshake_failures_total{listener=\"tls\",cause=\"alpn\"} 1");
	assert_line(text, "tlsfront_refusals_total{listener=\"outbound\",rule=\"bare_newline\"} 9");
	assert_line(text, "tlsfront_refusals_total{listener=\"tcp\",rule=\"require_tls\"} 5");
	assert_line(text, "tlsfront_refusals_total{listener=\"tcp\",rule=\"max_errors\"} 0");
	assert_line(text, "tlsfront_outbound_sessions_total{tls=\"refused\"} 6");
	assert_line(text, "tlsfront_outbound_peer_verifications_total{result=\"failed\"} 2");
	assert_line(text, "tlsfront_reloads_total{result=\"success\"} 3");
	assert_line(text, "tlsfront_reloads_total{result=\"failure\"} 1");
	assert_line(text, "tlsfront_received_bytes_total{listener=\"tls\"} 12345678901234");
	assert_line(text, "tlsfront_build_info{version=\"0.1.0\",gnutls=\"3.7.9\","
			  "libuv=\"1.44.2\"} 1");
	free(text);
}

/* An end seen before its start (counters are read one after another while
 * workers run) never shows a negative or wrapped gauge. */
static void test_active_never_negative(void **state)
{
	(void)state;
	struct metrics_snapshot s;
	snapshot_init(&s);
	s.started[ML_TLS] = 1;
	s.ended[ML_TLS][CLOSE_QUIT] = 2;
	char *text = format(&s);
	assert_line(text, "tlsfront_sessions_active{listener=\"tls\"} 0");
	free(text);
}

static void test_histogram_is_cumulative(void **state)
{
	(void)state;
	struct metrics_snapshot s;
	snapshot_init(&s);
	s.backend_bucket[0] = 2;	       /* <= 0.0005 s */
	s.backend_bucket[4] = 3;	       /* <= 0.01 s */
	s.backend_bucket[METRICS_BUCKETS] = 1; /* above the last bound */
	s.backend_ns = 2500000000ull;
	char *text = format(&s);
	assert_line(text, "tlsfront_backend_connect_seconds_bucket{le=\"0.0005\"} 2");
	assert_line(text, "tlsfront_backend_connect_seconds_bucket{le=\"0.005\"} 2");
	assert_line(text, "tlsfront_backend_connect_seconds_bucket{le=\"0.01\"} 5");
	assert_line(text, "tlsfront_backend_connect_seconds_bucket{le=\"5\"} 5");
	assert_line(text, "tlsfront_backend_connect_seconds_bucket{le=\"+Inf\"} 6");
	assert_line(text, "tlsfront_backend_connect_seconds_count 6");
	assert_line(text, "tlsfront_backend_connect_seconds_sum 2.5");
	free(text);
}

static void test_tables(void **state)
{
	(void)state;
	assert_int_equal(metrics_tls_version_of("TLS1.3"), MV_TLS13);
	assert_int_equal(metrics_tls_version_of("TLS1.2"), MV_TLS12);
	assert_int_equal(metrics_tls_version_of("none"), MV_OTHER);
	assert_int_equal(metrics_tls_version_of(NULL), MV_OTHER);
	assert_int_equal(metrics_cipher_of("AES-256-GCM"), MC_AES_256_GCM);
	assert_int_equal(metrics_cipher_of("CHACHA20-POLY1305"), MC_CHACHA20_POLY1305);
	assert_int_equal(metrics_cipher_of("GOST28147-TC26Z-CNT"), MC_OTHER);
	assert_string_equal(metrics_cipher_name(MC_OTHER), "other");
	for (unsigned r = 0; r < REFUSAL_COUNT; r++)
		assert_string_not_equal(smtp_refusal_name((enum smtp_refusal)r), "unknown");
	assert_string_equal(smtp_refusal_name(REFUSAL_XCLIENT), "xclient");
	assert_string_equal(metrics_hs_failure_name(MH_PROTOCOL), "protocol_error");
}

/* The registry: blocks are summed, and the backend histogram takes each
 * connect time into the first bucket whose bound holds it. */
static void test_registry_sums_blocks(void **state)
{
	(void)state;
	assert_int_equal(metrics_init(2), 0);
	metrics_inc(&metrics_block(0)->started[ML_TCP]);
	metrics_add(&metrics_block(1)->started[ML_TCP], 4);
	metrics_inc(&metrics_block(99)->started[ML_OUTBOUND]);		  /* main's own block */
	metrics_backend_connected(metrics_block(0), 400000, 1000);	  /* 0.4 ms */
	metrics_backend_connected(metrics_block(1), 7000000000ull, 2000); /* 7 s */
	metrics_reload(true);
	struct metrics_snapshot s;
	metrics_snapshot(&s);
	assert_int_equal(s.started[ML_TCP], 5);
	assert_int_equal(s.started[ML_OUTBOUND], 1);
	assert_int_equal(s.backend_bucket[0], 1);
	assert_int_equal(s.backend_bucket[METRICS_BUCKETS], 1);
	assert_int_equal(s.backend_ns, 7000400000ull);
	assert_int_equal(s.reloads_ok, 1);
	assert_int_equal(metrics_backend_last_ok(), 2000);
	metrics_free();
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_escape_label),
	    cmocka_unit_test(test_certificate_label_is_escaped),
	    cmocka_unit_test(test_one_help_and_type_per_family),
	    cmocka_unit_test(test_values_and_labels),
	    cmocka_unit_test(test_active_never_negative),
	    cmocka_unit_test(test_histogram_is_cumulative),
	    cmocka_unit_test(test_tables),
	    cmocka_unit_test(test_registry_sums_blocks),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
