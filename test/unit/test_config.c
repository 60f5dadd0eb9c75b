/* test_config.c — unit tests of policy/config.c, the loader of SPEC §2.
 *
 * Each test writes its configuration from a string into a temporary file
 * under /tmp and loads it. An expected error names its line with the marker
 * "#<" (a libconfig comment) on that line, so the tests say where the error
 * must be without counting lines by hand; a few tests also give the number
 * outright. Run under ASan, so a leak fails the test.
 *
 * libconfig dates a setting by the token that ends it: a list element
 * followed by its closing bracket on the next line gets that next line.
 * The cases below keep the closing bracket on the element's line.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "policy/config.h"

#ifndef TEST_DATA_DIR
#define TEST_DATA_DIR "test/unit/data"
#endif

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* ---- helpers ----------------------------------------------------------- */

/* Writes text into a new file under /tmp; path receives its name. */
static void write_conf(const char *text, char path[64])
{
	snprintf(path, 64, "/tmp/tf_test_config_XXXXXX");
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	size_t len = strlen(text);
	assert_int_equal(write(fd, text, len), (ssize_t)len);
	assert_int_equal(close(fd), 0);
}

/* The 1-based line holding "#<", or 0. */
static unsigned marker_line(const char *text)
{
	const char *m = strstr(text, "#<");
	if (m == NULL)
		return 0;
	unsigned line = 1;
	for (const char *p = text; p < m; p++)
		line += *p == '\n';
	return line;
}

static bool is_zeroed(const struct tf_config *cfg)
{
	static const struct tf_config zero;
	return memcmp(cfg, &zero, sizeof(zero)) == 0;
}

static int load_text(const char *text, struct tf_config *cfg, char *err, size_t errlen,
		     char path[64])
{
	write_conf(text, path);
	int rc = config_load(path, cfg, err, errlen);
	unlink(path);
	return rc;
}

/* Loads text, which must succeed; the caller frees cfg. */
static void load_ok(const char *text, struct tf_config *cfg)
{
	char path[64], err[512] = "";
	int rc = load_text(text, cfg, err, sizeof(err), path);
	if (rc != 0)
		fail_msg("expected to load, got \"%s\" for:\n%s", err, text);
	assert_string_equal(cfg->path, path);
}

/* Loads text, which must fail with "FILE:LINE: " where LINE is that of the
 * "#<" marker (or "FILE: " when there is none), a message holding every
 * non-NULL needle, and cfg left zeroed. */
static void expect_error(const char *text, const char *needle, const char *needle2)
{
	struct tf_config cfg;
	char path[64], err[512] = "", prefix[128];
	memset(&cfg, 0xa5, sizeof(cfg)); /* config_load must not trust it */
	int rc = load_text(text, &cfg, err, sizeof(err), path);
	unsigned line = marker_line(text);
	if (line > 0)
		snprintf(prefix, sizeof(prefix), "%s:%u: ", path, line);
	else
		snprintf(prefix, sizeof(prefix), "%s: ", path);
	if (rc != -1)
		fail_msg("expected an error holding \"%s\", but it loaded:\n%s", needle, text);
	if (strncmp(err, prefix, strlen(prefix)) != 0)
		fail_msg("expected prefix \"%s\", got \"%s\" for:\n%s", prefix, err, text);
	if (needle != NULL && strstr(err + strlen(prefix), needle) == NULL)
		fail_msg("expected \"%s\" in \"%s\" for:\n%s", needle, err, text);
	if (needle2 != NULL && strstr(err + strlen(prefix), needle2) == NULL)
		fail_msg("expected \"%s\" in \"%s\" for:\n%s", needle2, err, text);
	if (!is_zeroed(&cfg))
		fail_msg("cfg not zeroed after the error \"%s\"", err);
	config_free(&cfg); /* harmless on a zeroed struct */
}

struct bad_case {
	const char *text; /* with "#<" on the line of the error */
	const char *needle;
	const char *needle2; /* may be NULL */
};

static void expect_errors(const struct bad_case *cases, size_t n)
{
	for (size_t i = 0; i < n; i++)
		expect_error(cases[i].text, cases[i].needle, cases[i].needle2);
}

static void expect_loads(const char *const *texts, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		struct tf_config cfg;
		load_ok(texts[i], &cfg);
		config_free(&cfg);
	}
}

static void assert_defaults(const struct tf_config *cfg)
{
	char host[256] = "";
	if (gethostname(host, sizeof(host) - 1) != 0 || host[0] == '\0')
		snprintf(host, sizeof(host), "localhost");
	assert_string_equal(cfg->server_name, host);
	assert_int_equal(cfg->workers, 0);

	assert_string_equal(cfg->backend.address, "127.0.0.1:2525");
	assert_int_equal(cfg->backend.connect_timeout, 10);
	assert_int_equal(cfg->backend.client_info, TF_CLIENT_INFO_NONE);

	assert_int_equal(cfg->tls.n_certs, 0);
	assert_null(cfg->tls.certs[0].cert);
	assert_null(cfg->tls.priority); /* the built-in profile of certs/ */
	assert_int_equal(cfg->tls.handshake_timeout, 30);
	assert_int_equal(cfg->tls.session_cache_timeout, 3600);

	assert_true(cfg->inbound.tcp.enabled);
	assert_int_equal(cfg->inbound.tcp.n_listen, 2);
	assert_string_equal(cfg->inbound.tcp.listen[0], "0.0.0.0:25");
	assert_string_equal(cfg->inbound.tcp.listen[1], "[::]:25");
	assert_true(cfg->inbound.tcp.starttls);
	assert_false(cfg->inbound.tcp.require_tls);
	assert_false(cfg->inbound.tcp.name_and_password);
	assert_false(cfg->inbound.tcp.proxy_protocol);

	assert_false(cfg->inbound.tls.enabled);
	assert_int_equal(cfg->inbound.tls.n_listen, 1);
	assert_string_equal(cfg->inbound.tls.listen[0], "0.0.0.0:465");
	assert_true(cfg->inbound.tls.name_and_password);
	assert_false(cfg->inbound.tls.proxy_protocol);

	assert_false(cfg->outbound.enabled);
	assert_int_equal(cfg->outbound.n_listen, 1);
	assert_string_equal(cfg->outbound.listen[0], "127.0.0.1:10025");
	assert_string_equal(cfg->outbound.next_hop, "smtp.example.net:25");
	assert_int_equal(cfg->outbound.tls, TF_OUT_TLS_NEGOTIATED);
	assert_string_equal(cfg->outbound.ca_file, "system");
	assert_int_equal(cfg->outbound.connect_timeout, 30);

	assert_int_equal(cfg->limits.max_connections, 10000);
	assert_int_equal(cfg->limits.max_connections_per_ip, 100);
	assert_int_equal(cfg->limits.idle_timeout, 300);
	assert_int_equal(cfg->limits.line_length, 2048);
	assert_int_equal(cfg->limits.max_errors, 10);
	assert_int_equal(cfg->limits.shutdown_timeout, 30);
	assert_int_equal(cfg->limits.message_size_limit, 52428800);
	assert_int_equal(cfg->inbound.n_milters, 0);
	assert_int_equal(cfg->outbound.n_milters, 0);

	assert_int_equal(cfg->bare_newlines, TF_BARE_SANITIZE);
	assert_int_equal(cfg->log_level, TF_LOG_INFO);
	assert_string_equal(cfg->user, "");
}

/* ---- §2: defaults and good files --------------------------------------- */

static void test_s2_defaults_are_the_spec_defaults(void **state)
{
	(void)state;
	struct tf_config cfg;
	assert_int_equal(config_defaults(&cfg), 0);
	assert_null(cfg.path);
	assert_defaults(&cfg);
	assert_int_equal(cfg.source.tls_priority.line, 0);
	assert_null(cfg.source.tls_priority.file);
	assert_int_equal(cfg.source.backend_address.line, 0);
	config_free(&cfg);
	assert_true(is_zeroed(&cfg));
}

static void test_s2_minimal_file_gives_all_defaults(void **state)
{
	(void)state;
	struct tf_config cfg;
	load_ok("backend = { address = \"127.0.0.1:2525\"; };\n", &cfg);
	assert_defaults(&cfg);
	config_free(&cfg);
}

static void test_s2_empty_file_gives_all_defaults(void **state)
{
	(void)state;
	struct tf_config cfg;
	load_ok("", &cfg);
	assert_defaults(&cfg);
	config_free(&cfg);
	load_ok("# nothing but a comment\n", &cfg);
	assert_defaults(&cfg);
	config_free(&cfg);
}

/* The block of SPEC §2, verbatim (certificate files are not opened). */
static void test_s2_spec_block_loads(void **state)
{
	(void)state;
	struct tf_config cfg;
	char err[512] = "";
	const char *path = TEST_DATA_DIR "/config/spec_s2.conf";
	if (config_load(path, &cfg, err, sizeof(err)) != 0)
		fail_msg("%s", err);
	assert_string_equal(cfg.path, path);
	assert_string_equal(cfg.server_name, "mx.example.com");
	assert_int_equal(cfg.tls.n_certs, 2);
	assert_string_equal(cfg.tls.certs[0].cert, "/etc/tlsfront/ecdsa.pem");
	assert_string_equal(cfg.tls.certs[0].key, "/etc/tlsfront/ecdsa.key");
	assert_string_equal(cfg.tls.certs[1].cert, "/etc/tlsfront/rsa.pem");
	assert_string_equal(cfg.tls.certs[1].key, "/etc/tlsfront/rsa.key");
	/* Everything else in the block is a default. */
	free(cfg.server_name);
	cfg.server_name = NULL;
	struct tf_config defaults;
	assert_int_equal(config_defaults(&defaults), 0);
	cfg.server_name = strdup(defaults.server_name);
	config_free(&defaults);
	for (size_t i = 0; i < cfg.tls.n_certs; i++) {
		free(cfg.tls.certs[i].cert);
		free(cfg.tls.certs[i].key);
		cfg.tls.certs[i].cert = cfg.tls.certs[i].key = NULL;
	}
	cfg.tls.n_certs = 0;
	/* SPEC §2 shows "NORMAL"; the default is now the built-in AEAD-only
	 * profile (issue 15), so the block's explicit value stays a value. */
	assert_string_equal(cfg.tls.priority, "NORMAL");
	free(cfg.tls.priority);
	cfg.tls.priority = NULL;
	assert_defaults(&cfg);
	config_free(&cfg);
}

static void test_s2_every_key_is_read(void **state)
{
	(void)state;
	struct tf_config cfg;
	load_ok("server_name = \"mail-1.example.org\";\n"
		"workers = 4;\n"
		"backend = { address = \"unix:/run/legacy.sock\"; connect_timeout = 5; };\n"
		"tls = {\n"
		"  certificates = ( { key = \"/k\"; cert = \"/c\"; } );\n"
		"  priority = \"SECURE256:-VERS-TLS1.0\";\n"
		"  handshake_timeout = 7;\n"
		"  session_cache_timeout = 600;\n"
		"};\n"
		"inbound = {\n"
		"  tcp = { enabled = true; listen = ( \"192.0.2.1:587\" ); starttls = true; };\n"
		"  tls = { enabled = false; listen = [ \"[2001:db8::1]:465\", "
		"\"[::ffff:192.0.2.9]:1\" ]; };\n"
		"};\n"
		"outbound = {\n"
		"  listen = [];\n"
		"  next_hop = \"original-destination\";\n"
		"  tls = \"required\";\n"
		"  ca_file = \"/etc/ssl/ca.pem\";\n"
		"  connect_timeout = 60;\n"
		"};\n"
		"limits = { max_connections = 10000L; max_connections_per_ip = 100; idle_timeout = "
		"60;\n"
		"  line_length = 4096; max_errors = 3; shutdown_timeout = 2; };\n"
		"bare_newlines = \"reject\";\n"
		"log = { level = \"debug\"; };\n",
		&cfg);
	assert_string_equal(cfg.server_name, "mail-1.example.org");
	assert_int_equal(cfg.workers, 4);
	assert_string_equal(cfg.backend.address, "unix:/run/legacy.sock");
	assert_int_equal(cfg.backend.connect_timeout, 5);
	assert_int_equal(cfg.tls.n_certs, 1);
	assert_string_equal(cfg.tls.certs[0].cert, "/c");
	assert_string_equal(cfg.tls.certs[0].key, "/k");
	assert_string_equal(cfg.tls.priority, "SECURE256:-VERS-TLS1.0");
	assert_int_equal(cfg.tls.handshake_timeout, 7);
	assert_int_equal(cfg.tls.session_cache_timeout, 600);
	/* Where the keys checked after loading were set (app.c's errors). */
	assert_int_equal(cfg.source.backend_address.line, 3);
	assert_string_equal(cfg.source.backend_address.file, cfg.path);
	assert_int_equal(cfg.source.tls_priority.line, 6);
	assert_string_equal(cfg.source.tls_priority.file, cfg.path);
	char where[128], want[128];
	config_where(&cfg, &cfg.source.tls_priority, where, sizeof(where));
	snprintf(want, sizeof(want), "%s:6", cfg.path);
	assert_string_equal(where, want);
	assert_int_equal(cfg.inbound.tcp.n_listen, 1);
	assert_string_equal(cfg.inbound.tcp.listen[0], "192.0.2.1:587");
	assert_null(cfg.inbound.tcp.listen[1]);
	assert_int_equal(cfg.inbound.tls.n_listen, 2);
	assert_string_equal(cfg.inbound.tls.listen[0], "[2001:db8::1]:465");
	assert_string_equal(cfg.inbound.tls.listen[1], "[::ffff:192.0.2.9]:1");
	assert_int_equal(cfg.outbound.n_listen, 0);
	assert_string_equal(cfg.outbound.next_hop, "original-destination");
	assert_int_equal(cfg.outbound.tls, TF_OUT_TLS_REQUIRED);
	assert_string_equal(cfg.outbound.ca_file, "/etc/ssl/ca.pem");
	assert_int_equal(cfg.outbound.connect_timeout, 60);
	assert_int_equal(cfg.limits.max_connections, 10000);
	assert_int_equal(cfg.limits.max_connections_per_ip, 100);
	assert_int_equal(cfg.limits.idle_timeout, 60);
	assert_int_equal(cfg.limits.line_length, 4096);
	assert_int_equal(cfg.limits.max_errors, 3);
	assert_int_equal(cfg.limits.shutdown_timeout, 2);
	assert_int_equal(cfg.bare_newlines, TF_BARE_REJECT);
	assert_int_equal(cfg.log_level, TF_LOG_DEBUG);
	config_free(&cfg);
}

static void test_s2_enum_values_are_read(void **state)
{
	(void)state;
	static const struct {
		const char *text;
		size_t off;
		int value;
	} cases[] = {
	    {"log = { level = \"error\"; };", offsetof(struct tf_config, log_level), TF_LOG_ERROR},
	    {"log = { level = \"warn\"; };", offsetof(struct tf_config, log_level), TF_LOG_WARN},
	    {"log = { level = \"info\"; };", offsetof(struct tf_config, log_level), TF_LOG_INFO},
	    {"bare_newlines = \"sanitize\";", offsetof(struct tf_config, bare_newlines),
	     TF_BARE_SANITIZE},
	    {"outbound = { tls = \"none\"; };", offsetof(struct tf_config, outbound.tls),
	     TF_OUT_TLS_NONE},
	    {"outbound = { tls = \"negotiated\"; };", offsetof(struct tf_config, outbound.tls),
	     TF_OUT_TLS_NEGOTIATED},
	    {"outbound = { tls = \"verify\"; };", offsetof(struct tf_config, outbound.tls),
	     TF_OUT_TLS_VERIFY},
	    {"backend = { client_info = \"none\"; };",
	     offsetof(struct tf_config, backend.client_info), TF_CLIENT_INFO_NONE},
	};
	for (size_t i = 0; i < COUNT(cases); i++) {
		struct tf_config cfg;
		load_ok(cases[i].text, &cfg);
		int got;
		memcpy(&got, (const char *)&cfg + cases[i].off, sizeof(got));
		assert_int_equal(got, cases[i].value);
		config_free(&cfg);
	}
}

static void test_s2_range_bounds_are_accepted(void **state)
{
	(void)state;
	static const char *const good[] = {
	    "workers = 1024;",
	    "workers = 0;",
	    "limits = { line_length = 512; };",
	    "limits = { line_length = 1048576; };",
	    "limits = { idle_timeout = 1; shutdown_timeout = 86400; };",
	    "limits = { max_errors = 1000; };",
	    "tls = { session_cache_timeout = 0; };",
	    "tls = { session_cache_timeout = 1; };",
	    "tls = { session_cache_timeout = 604800; };",
	    "backend = { address = \"h:1\"; connect_timeout = 86400; };",
	    "backend = { address = \"[::1]:65535\"; };",
	    "outbound = { next_hop = \"[2001:db8::25]:25\"; };",
	    "inbound = { tls = { listen = [ \"10.0.0.1:1\", \"10.0.0.1:2\", \"10.0.0.1:3\", "
	    "\"10.0.0.1:4\", \"10.0.0.1:5\", "
	    "\"10.0.0.1:6\", \"10.0.0.1:7\", \"10.0.0.1:8\", \"10.0.0.1:9\", \"10.0.0.1:10\", "
	    "\"10.0.0.1:11\", \"10.0.0.1:12\", \"10.0.0.1:13\", "
	    "\"10.0.0.1:14\", \"10.0.0.1:15\", \"10.0.0.1:16\" ]; }; };",
	    "inbound = { tls = { listen = []; }; };",
	    "tls = { certificates = ( {cert=\"c\";key=\"k\";}, {cert=\"c\";key=\"k\";}, "
	    "{cert=\"c\";key=\"k\";}, {cert=\"c\";key=\"k\";}, {cert=\"c\";key=\"k\";}, "
	    "{cert=\"c\";key=\"k\";}, {cert=\"c\";key=\"k\";}, {cert=\"c\";key=\"k\";}, "
	    "{cert=\"c\";key=\"k\";}, {cert=\"c\";key=\"k\";}, {cert=\"c\";key=\"k\";}, "
	    "{cert=\"c\";key=\"k\";}, {cert=\"c\";key=\"k\";}, {cert=\"c\";key=\"k\";}, "
	    "{cert=\"c\";key=\"k\";}, {cert=\"c\";key=\"k\";} ); };",
	};
	expect_loads(good, COUNT(good));
}

/* ---- §2: errors -------------------------------------------------------- */

static void test_s2_unknown_key_is_error(void **state)
{
	(void)state;
	static const struct bad_case cases[] = {
	    {"workers = 1;\nworkerz = 2; #<\n", "workerz: unknown key", NULL},
	    {"backend = {\n  address = \"h:25\";\n  adress = \"h:25\"; #<\n};\n",
	     "backend.adress: unknown key", NULL},
	    {"inbound = {\n tcp = {\n  enabled = true;\n  starttls_x = true; #<\n };\n};\n",
	     "inbound.tcp.starttls_x: unknown key", NULL},
	    {"inbound = {\n udp = { enabled = true; }; #<\n};\n", "inbound.udp: unknown key", NULL},
	    {"inbound = { tls = {\n starttls = true; #<\n}; };\n",
	     "inbound.tls.starttls: unknown key", NULL},
	    {"log = {\n level = \"info\";\n file = \"/x\"; #<\n};\n", "log.file: unknown key",
	     NULL},
	    {"tls = { certificates = (\n { cert = \"c\"; key = \"k\"; },\n"
	     " { cert = \"c\"; key = \"k\"; pass = \"p\"; } #<\n); };\n",
	     "tls.certificates[1].pass: unknown key", NULL},
	    {"limits = { line_length = 2048; };\nline_length = 2048; #<\n",
	     "line_length: unknown key", NULL},
	};
	expect_errors(cases, COUNT(cases));
}

static void test_s2_unknown_key_line_is_exact(void **state)
{
	(void)state;
	struct tf_config cfg;
	char path[64], err[512], want[128];
	assert_int_equal(load_text("\n\n\nbogus = 1;\n", &cfg, err, sizeof(err), path), -1);
	snprintf(want, sizeof(want), "%s:4: bogus: unknown key", path);
	assert_string_equal(err, want);
	assert_true(is_zeroed(&cfg));
}

static void test_s2_wrong_type_is_error(void **state)
{
	(void)state;
	static const struct bad_case cases[] = {
	    {"limits = {\n idle_timeout = \"300\"; #<\n};\n", "limits.idle_timeout",
	     "expected a positive integer, not a string"},
	    {"limits = { line_length = 2048.0; #<\n};\n", "limits.line_length", "not a float"},
	    {"workers = true; #<\n", "workers", "not a boolean"},
	    {"inbound = { tcp = {\n starttls = 1; #<\n}; };\n", "inbound.tcp.starttls",
	     "expected true or false, not an integer"},
	    {"inbound = { tcp = {\n starttls = \"yes\"; #<\n}; };\n", "inbound.tcp.starttls",
	     "not a string"},
	    {"server_name = 5; #<\n", "server_name", "not an integer"},
	    {"backend = { address = [ \"h:1\" ]; #<\n};\n", "backend.address", "not an array"},
	    {"tls = { priority = { x = 1; }; #<\n};\n", "tls.priority", "not a group"},
	    {"log = \"debug\"; #<\n", "log: expected a group", "not a string"},
	    {"inbound = { tcp = 1; #<\n};\n", "inbound.tcp: expected a group", NULL},
	    {"inbound = {\n tcp = {\n  listen = \"0.0.0.0:25\"; #<\n };\n};\n",
	     "inbound.tcp.listen: expected an array", "not a string"},
	    {"inbound = { tcp = { listen = [\n 25 #<\n]; }; };\n", "inbound.tcp.listen[0]",
	     "not an integer"},
	    {"inbound = { tcp = { listen = (\n \"10.0.0.1:1\",\n (\"b:2\") #<\n); }; };\n",
	     "inbound.tcp.listen[1]", "not a list"},
	    {"tls = { certificates = { cert = \"c\"; key = \"k\"; }; #<\n};\n", "tls.certificates",
	     "expected a list"},
	    {"tls = { certificates = (\n \"c\" ); }; #<\n", "tls.certificates[0]",
	     "expected a group"},
	    {"tls = { certificates = ( { cert = \"c\";\n key = 1; } #<\n); };\n",
	     "tls.certificates[0].key", "not an integer"},
	    {"bare_newlines = 1; #<\n", "bare_newlines", "\"sanitize\", \"reject\""},
	    {"user = false; #<\n", "user", "not a boolean"},
	    {"outbound = { next_hop = 25; #<\n};\n", "outbound.next_hop", "not an integer"},
	    {"tls = {\n session_cache_timeout = \"3600\"; #<\n};\n", "tls.session_cache_timeout",
	     "expected a non-negative integer, not a string"},
	    {"tls = { session_cache_timeout = 1.5; #<\n};\n", "tls.session_cache_timeout",
	     "not a float"},
	    {"tls = { session_cache_timeout = true; #<\n};\n", "tls.session_cache_timeout",
	     "not a boolean"},
	};
	expect_errors(cases, COUNT(cases));
}

static void test_s2_out_of_range_is_error(void **state)
{
	(void)state;
	static const struct bad_case cases[] = {
	    {"\n\nlimits = {\n idle_timeout = 0; #<\n};\n",
	     "limits.idle_timeout: expected a positive integer", "got 0"},
	    {"workers = -1; #<\n", "workers: expected a non-negative integer", "got -1"},
	    {"workers = 1025; #<\n", "workers", "at most 1024"},
	    {"backend = { connect_timeout = 0; #<\n};\n", "backend.connect_timeout", "positive"},
	    {"backend = { connect_timeout = 86401; #<\n};\n", "backend.connect_timeout",
	     "at most 86400"},
	    {"tls = { handshake_timeout = 0; #<\n};\n", "tls.handshake_timeout", "positive"},
	    {"tls = {\n session_cache_timeout = 604801; #<\n};\n", "tls.session_cache_timeout",
	     "at most 604800"},
	    {"tls = { session_cache_timeout = -1; #<\n};\n", "tls.session_cache_timeout", "got -1"},
	    {"outbound = { connect_timeout = -30; #<\n};\n", "outbound.connect_timeout", "got -30"},
	    {"limits = { shutdown_timeout = 0; #<\n};\n", "limits.shutdown_timeout", "positive"},
	    {"limits = { max_connections = 0; #<\n};\n", "limits.max_connections", "positive"},
	    {"limits = { max_connections_per_ip = -5; #<\n};\n", "limits.max_connections_per_ip",
	     "positive"},
	    {"limits = { max_errors = 0; #<\n};\n", "limits.max_errors", "positive"},
	    {"limits = { line_length = 511; #<\n};\n", "limits.line_length",
	     "expected an integer from 512 to 1048576, got 511"},
	    {"limits = { line_length = 1048577; #<\n};\n", "limits.line_length", "got 1048577"},
	    {"limits = { max_connections = 5000000000L; #<\n};\n", "limits.max_connections",
	     "got 5000000000"},
	    {"server_name = \"\"; #<\n", "server_name", "expected a host name"},
	    {"server_name = \"mx example\"; #<\n", "server_name", "expected a host name"},
	    {"server_name = \"mx\\r\\n250 x\"; #<\n", "server_name", "mx??250 x"},
	    {"tls = { priority = \"\"; #<\n};\n", "tls.priority", "non-empty"},
	    {"outbound = { ca_file = \"\"; #<\n};\n", "outbound.ca_file", "non-empty"},
	};
	expect_errors(cases, COUNT(cases));
}

static void test_s2_too_many_entries_is_error(void **state)
{
	(void)state;
	static const struct bad_case cases[] = {
	    {"inbound = { tcp = {\n listen = [ \"10.0.0.1:1\", \"10.0.0.1:2\", \"10.0.0.1:3\", "
	     "\"10.0.0.1:4\", \"10.0.0.1:5\", #<\n"
	     "\"10.0.0.1:6\", \"10.0.0.1:7\", \"10.0.0.1:8\", \"10.0.0.1:9\", \"10.0.0.1:10\", "
	     "\"10.0.0.1:11\", \"10.0.0.1:12\", \"10.0.0.1:13\",\n"
	     "\"10.0.0.1:14\", \"10.0.0.1:15\", \"10.0.0.1:16\", \"10.0.0.1:17\" ]; }; };\n",
	     "inbound.tcp.listen", "at most 16 addresses"},
	    {"tls = {\n certificates = ( {cert=\"c\";key=\"k\";}, {cert=\"c\";key=\"k\";}, #<\n"
	     "{cert=\"c\";key=\"k\";}, {cert=\"c\";key=\"k\";}, {cert=\"c\";key=\"k\";},\n"
	     "{cert=\"c\";key=\"k\";}, {cert=\"c\";key=\"k\";}, {cert=\"c\";key=\"k\";},\n"
	     "{cert=\"c\";key=\"k\";}, {cert=\"c\";key=\"k\";}, {cert=\"c\";key=\"k\";},\n"
	     "{cert=\"c\";key=\"k\";}, {cert=\"c\";key=\"k\";}, {cert=\"c\";key=\"k\";},\n"
	     "{cert=\"c\";key=\"k\";}, {cert=\"c\";key=\"k\";}, {cert=\"c\";key=\"k\";} ); };\n",
	     "tls.certificates", "at most 16 entries"},
	    {"tls = {\n certificates = (); #<\n};\n", "tls.certificates", "at least one"},
	};
	expect_errors(cases, COUNT(cases));
}

static void test_s2_certificate_entry_needs_cert_and_key(void **state)
{
	(void)state;
	static const struct bad_case cases[] = {
	    {"tls = { certificates = (\n { cert = \"c\"; key = \"k\"; },\n { key = \"k\"; } #<\n); "
	     "};\n",
	     "tls.certificates[1].cert: missing", NULL},
	    {"tls = { certificates = (\n { cert = \"c\"; } #<\n); };\n",
	     "tls.certificates[0].key: missing", NULL},
	    {"tls = { certificates = (\n { } #<\n); };\n", "tls.certificates[0].cert: missing",
	     NULL},
	    {"tls = { certificates = (\n { cert = \"\"; #<\n key = \"k\"; }); };\n",
	     "tls.certificates[0].cert", "expected a file name"},
	};
	expect_errors(cases, COUNT(cases));
}

/* Issue 15: an OCSP response per certificate, with the line it was set on
 * kept for errors found when the response is loaded. */
static void test_ocsp_per_certificate_and_its_line(void **state)
{
	(void)state;
	struct tf_config cfg;
	load_ok("tls = { certificates = (\n"
		" { cert = \"a.pem\"; key = \"a.key\"; },\n"
		" { cert = \"b.pem\"; key = \"b.key\";\n"
		"   ocsp = \"b.der\"; }\n"
		"); };\n",
		&cfg);
	assert_null(cfg.tls.certs[0].ocsp);
	assert_int_equal(cfg.tls.certs[0].ocsp_source.line, 0);
	assert_string_equal(cfg.tls.certs[1].ocsp, "b.der");
	assert_int_equal(cfg.tls.certs[1].ocsp_source.line, 4);
	assert_string_equal(cfg.tls.certs[1].ocsp_source.file, cfg.path);
	config_free(&cfg);

	static const struct bad_case cases[] = {
	    {"tls = { certificates = (\n { cert = \"c\"; key = \"k\"; ocsp = \"\"; } #<\n); };\n",
	     "tls.certificates[0].ocsp", "expected a file name"},
	    {"tls = { certificates = (\n { cert = \"c\"; key = \"k\"; ocsp = 1; } #<\n); };\n",
	     "tls.certificates[0].ocsp", "expected a file name, not an integer"},
	    {"tls = { certificates = (\n { cert = \"c\"; key = \"k\"; crl = \"x\"; } #<\n); };\n",
	     "tls.certificates[0].crl", "unknown key (expected cert, key or ocsp)"},
	};
	expect_errors(cases, COUNT(cases));
}

static void test_s2_bad_enum_is_error(void **state)
{
	(void)state;
	static const struct bad_case cases[] = {
	    {"backend = {\n client_info = \"xclient2\"; #<\n};\n", "backend.client_info",
	     "expected one of \"none\", \"xclient\", \"proxy-v1\", \"proxy-v2\", got \"xclient2\""},
	    {"outbound = { tls = \"maybe\"; #<\n};\n", "outbound.tls", "got \"maybe\""},
	    {"outbound = { tls = \"VERIFY\"; #<\n};\n", "outbound.tls", "\"verify\""},
	    {"bare_newlines = \"keep\"; #<\n", "bare_newlines", "got \"keep\""},
	    {"log = { level = \"trace\"; #<\n};\n", "log.level",
	     "\"error\", \"warn\", \"info\", \"debug\""},
	};
	expect_errors(cases, COUNT(cases));
}

static void test_s2_listen_port_zero_is_any_free_port(void **state)
{
	(void)state;
	struct tf_config cfg;
	load_ok("inbound = { tcp = { listen = [ \"127.0.0.1:0\" ]; }; };\n", &cfg);
	assert_string_equal(cfg.inbound.tcp.listen[0], "127.0.0.1:0");
	config_free(&cfg);
	expect_error("outbound = { next_hop = \"h:0\"; #<\n};\n", "outbound.next_hop", NULL);
}

/* Issue 13: metrics = { listen = [...]; }; absent or empty: no endpoint. */
static void test_i13_metrics_listen(void **state)
{
	(void)state;
	struct tf_config cfg;
	load_ok("backend = { address = \"127.0.0.1:2525\"; };\n", &cfg);
	assert_int_equal(cfg.metrics.n_listen, 0);
	assert_null(cfg.metrics.listen[0]);
	config_free(&cfg);
	load_ok("metrics = { listen = [ \"127.0.0.1:9465\", \"[::1]:0\" ]; };\n", &cfg);
	assert_int_equal(cfg.metrics.n_listen, 2);
	assert_string_equal(cfg.metrics.listen[0], "127.0.0.1:9465");
	assert_string_equal(cfg.metrics.listen[1], "[::1]:0");
	config_free(&cfg);
	load_ok("metrics = { listen = [ ]; };\n", &cfg);
	assert_int_equal(cfg.metrics.n_listen, 0);
	config_free(&cfg);
	static const struct bad_case cases[] = {
	    {"metrics = { listen = [ \"127.0.0.1\" ]; #<\n};\n", "metrics.listen[0]", "IPv4:port"},
	    {"metrics = { listen = \"127.0.0.1:9465\"; #<\n};\n", "metrics.listen",
	     "expected an array"},
	    {"metrics = { port = 9465; #<\n};\n", "metrics.port", NULL},
	    {"workers = 1;\nmetrics = 9465; #<\n", "metrics", NULL},
	};
	expect_errors(cases, COUNT(cases));
}

static void test_s2_malformed_address_is_error(void **state)
{
	(void)state;
	static const struct bad_case cases[] = {
	    {"backend = { address = \"localhost\"; #<\n};\n", "backend.address",
	     "expected \"host:port\""},
	    {"backend = { address = \"localhost:0\"; #<\n};\n", "backend.address",
	     "port 1 to 65535"},
	    {"backend = { address = \"localhost:65536\"; #<\n};\n", "backend.address", NULL},
	    {"backend = { address = \"::1:25\"; #<\n};\n", "backend.address", NULL},
	    {"backend = { address = \"unix:\"; #<\n};\n", "backend.address", "unix:/path"},
	    {"backend = { address = \"unix:relative.sock\"; #<\n};\n", "backend.address",
	     "absolute"},
	    {"inbound = { tcp = { listen = [\n \"0.0.0.0:25\",\n \"[::]:smtp\" ]; }; }; #<\n",
	     "inbound.tcp.listen[1]", "got \"[::]:smtp\""},
	    {"inbound = { tls = { listen = [ \"[::1:465\" ]; #<\n}; };\n", "inbound.tls.listen[0]",
	     NULL},
	    {"outbound = { listen = [ \":10025\" ]; #<\n};\n", "outbound.listen[0]", NULL},
	    {"outbound = { listen = [ \"unix:/x\" ]; #<\n};\n", "outbound.listen[0]", NULL},
	    /* A name would be bound numerically and fail only at start. */
	    {"inbound = { tcp = { listen = [ \"localhost:25\" ]; #<\n}; };\n",
	     "inbound.tcp.listen[0]", "an address, not a name"},
	    {"inbound = { tcp = { listen = [ \"[mx.example]:25\" ]; #<\n}; };\n",
	     "inbound.tcp.listen[0]", "got \"[mx.example]:25\""},
	    {"outbound = { listen = [ \"127.0.0.256:25\" ]; #<\n};\n", "outbound.listen[0]", NULL},
	    {"outbound = { listen = [ \"127.0.0:25\" ]; #<\n};\n", "outbound.listen[0]", NULL},
	    {"outbound = { next_hop = \"smtp.example.net\"; #<\n};\n", "outbound.next_hop",
	     "original-destination"},
	};
	expect_errors(cases, COUNT(cases));
}

static void test_s2_parse_error_has_file_and_line(void **state)
{
	(void)state;
	static const struct bad_case cases[] = {
	    {"backend = {};\nworkers = ; #<\n", "syntax error", NULL},
	    {"workers = 1;\nworkers = 2; #<\n", "duplicate setting", NULL},
	    {"workers = 1;\n@include \"/nonexistent/x.conf\" #<\n", "include", NULL},
	    {"limits = { idle_timeout = 300 };\nlimits = {}; #<\n", "duplicate setting", NULL},
	};
	expect_errors(cases, COUNT(cases));

	/* An unterminated string: libconfig reports the end of the file. */
	struct tf_config cfg;
	char path[64], err[512], want[128];
	assert_int_equal(
	    load_text("backend = {\n address = \"h:1;\n\n", &cfg, err, sizeof(err), path), -1);
	snprintf(want, sizeof(want), "%s:4: ", path);
	assert_memory_equal(err, want, strlen(want));
	assert_true(is_zeroed(&cfg));
}

static void test_s2_unreadable_file_is_error(void **state)
{
	(void)state;
	struct tf_config cfg;
	char err[512];
	memset(&cfg, 0x5a, sizeof(cfg));
	assert_int_equal(config_load("/nonexistent/tlsfront.conf", &cfg, err, sizeof(err)), -1);
	assert_string_equal(err,
			    "/nonexistent/tlsfront.conf: cannot read: No such file or directory");
	assert_true(is_zeroed(&cfg));

	assert_int_equal(config_load("/tmp", &cfg, err, sizeof(err)), -1);
	assert_string_equal(err, "/tmp: cannot read: Is a directory");
	assert_true(is_zeroed(&cfg));
}

/* ---- §2: impossible combinations, at the later key ---------------------- */

static void test_s2_require_tls_without_starttls_is_error_at_later_key(void **state)
{
	(void)state;
	static const struct bad_case cases[] = {
	    {"inbound = { tcp = {\n starttls = false;\n require_tls = true; #<\n}; };\n",
	     "inbound.tcp.require_tls", "inbound.tcp.starttls"},
	    {"inbound = { tcp = {\n require_tls = true;\n\n starttls = false; #<\n}; };\n",
	     "inbound.tcp.require_tls", "inbound.tcp.starttls"},
	};
	expect_errors(cases, COUNT(cases));
}

static void test_s7_11_no_listener_enabled_is_error_at_last_enabled_false(void **state)
{
	(void)state;
	static const struct bad_case cases[] = {
	    /* Only the TCP port's enabled is in the file. */
	    {"inbound = {\n tcp = {\n  enabled = false; #<\n };\n};\n", "no listener enabled",
	     NULL},
	    /* All three present: the last one in the file. */
	    {"outbound = { enabled = false; };\n"
	     "inbound = {\n"
	     " tls = { enabled = false; };\n"
	     " tcp = { enabled = false; }; #<\n"
	     "};\n",
	     "no listener enabled", NULL},
	    {"inbound = {\n"
	     " tcp = { enabled = false; };\n"
	     " tls = { enabled = false; };\n"
	     "};\n"
	     "outbound = {\n"
	     " next_hop = \"h:25\";\n"
	     " enabled = false; #<\n"
	     " tls = \"none\";\n"
	     "};\n",
	     "no listener enabled", NULL},
	    {"inbound = {\n"
	     " tls = { enabled = false; };\n"
	     " tcp = {\n"
	     "  enabled = false; #<\n"
	     "  listen = [];\n"
	     " };\n"
	     "};\n",
	     "no listener enabled", NULL},
	};
	expect_errors(cases, COUNT(cases));

	/* The same as the last case, with the line given outright. */

	struct tf_config cfg;
	char path[64], err[512], want[256];
	assert_int_equal(load_text(cases[3].text, &cfg, err, sizeof(err), path), -1);
	snprintf(want, sizeof(want), "%s:4: no listener enabled", path);
	assert_memory_equal(err, want, strlen(want));
}

static void test_s2_verify_with_original_destination_is_error_at_later_key(void **state)
{
	(void)state;
	static const struct bad_case cases[] = {
	    {"outbound = {\n tls = \"verify\";\n next_hop = \"original-destination\"; #<\n};\n",
	     "outbound.tls", "outbound.next_hop"},
	    {"outbound = {\n next_hop = \"original-destination\";\n tls = \"verify\"; #<\n};\n",
	     "no name to verify", NULL},
	};
	expect_errors(cases, COUNT(cases));
	static const char *const good[] = {
	    "outbound = { tls = \"verify\"; next_hop = \"smtp.example.net:25\"; };",
	    "outbound = { tls = \"required\"; next_hop = \"original-destination\"; };",
	};
	expect_loads(good, COUNT(good));
}

static void test_s2_empty_listen_when_enabled_is_error(void **state)
{
	(void)state;
	static const struct bad_case cases[] = {
	    {"inbound = { tcp = {\n listen = []; #<\n}; };\n", "inbound.tcp.listen",
	     "at least one address"},
	    {"inbound = { tcp = {\n listen = [];\n enabled = true; #<\n}; };\n",
	     "inbound.tcp.listen", "inbound.tcp.enabled"},
	    {"inbound = { tcp = {\n enabled = true;\n listen = (); #<\n}; };\n",
	     "inbound.tcp.listen", NULL},
	};
	expect_errors(cases, COUNT(cases));
}

/* Combinations are found before "not supported yet": outbound alone is not
 * supported, but "verify" with "original-destination" is impossible. */
static void test_s2_combination_is_reported_before_not_supported_yet(void **state)
{
	(void)state;
	static const struct bad_case cases[] = {
	    {"inbound = { tcp = {\n require_tls = true;\n starttls = false; #<\n}; };\n",
	     "needs inbound.tcp.starttls = true", NULL},
	    /* The TLS port's listen is empty while enabled. */
	    {"inbound = { tls = {\n enabled = true;\n listen = []; #<\n}; };\n",
	     "inbound.tls.listen: expected at least one address", NULL},
	    {"outbound = {\n enabled = true;\n tls = \"verify\";\n"
	     " next_hop = \"original-destination\"; #<\n};\n",
	     "no name to verify", NULL},
	};
	expect_errors(cases, COUNT(cases));
	for (size_t i = 0; i < COUNT(cases); i++) {
		struct tf_config cfg;
		char path[64], err[512];
		assert_int_equal(load_text(cases[i].text, &cfg, err, sizeof(err), path), -1);
		assert_null(strstr(err, "not supported yet"));
	}
}

/* ---- §2: not supported yet --------------------------------------------- */

static void test_s2_not_supported_yet_default_value_is_accepted(void **state)
{
	(void)state;
	static const char *const good[] = {
	    "backend = { client_info = \"none\"; };",
	    "inbound = { tcp = { proxy_protocol = false; }; };",
	    "inbound = { tls = { proxy_protocol = false; }; };",
	    "outbound = { enabled = false; };",
	    "user = \"\";",
	};
	expect_loads(good, COUNT(good));
}

/* §3.5, §3.6 and the TLS port are built: their keys take any valid value. */
static void test_s3_6_policy_keys_load(void **state)
{
	(void)state;
	struct tf_config cfg;
	load_ok("inbound = {\n"
		"  tcp = { require_tls = true; name_and_password = true; };\n"
		"  tls = { enabled = true; listen = [ \"127.0.0.1:465\" ];\n"
		"          name_and_password = false; };\n"
		"};\n",
		&cfg);
	assert_true(cfg.inbound.tcp.require_tls);
	assert_true(cfg.inbound.tcp.name_and_password);
	assert_true(cfg.inbound.tls.enabled);
	assert_false(cfg.inbound.tls.name_and_password);
	config_free(&cfg);
	/* §3.1, §3.3: client information and limits are built too. */
	load_ok(
	    "backend = { client_info = \"xclient\"; };\n"
	    "inbound = { tcp = { proxy_protocol = true; }; tls = { proxy_protocol = true; }; };\n"
	    "limits = { max_connections = 50; max_connections_per_ip = 5; };\n",
	    &cfg);
	assert_int_equal(cfg.backend.client_info, TF_CLIENT_INFO_XCLIENT);
	assert_true(cfg.inbound.tcp.proxy_protocol);
	assert_true(cfg.inbound.tls.proxy_protocol);
	assert_int_equal(cfg.limits.max_connections, 50);
	assert_int_equal(cfg.limits.max_connections_per_ip, 5);
	config_free(&cfg);
}

/* §4 is built (issue 5): outbound.enabled = true is no longer refused. */
static void test_s2_not_supported_yet_value_is_error(void **state)
{
	(void)state;
	struct tf_config cfg;
	load_ok("workers = 2;\n\noutbound = { enabled = true; next_hop = \"localhost:25\";\n"
		" tls = \"verify\"; ca_file = \"/etc/ssl/certs/ca-certificates.crt\"; };\n",
		&cfg);
	assert_true(cfg.outbound.enabled);
	assert_int_equal(cfg.outbound.tls, TF_OUT_TLS_VERIFY);
	assert_string_equal(cfg.outbound.next_hop, "localhost:25");
	config_free(&cfg);
}

/* §6: user names an existing account; an unknown one is an error at its line. */
static void test_s6_user_must_exist(void **state)
{
	(void)state;
	struct tf_config cfg;
	load_ok("user = \"nobody\";\n", &cfg);
	assert_string_equal(cfg.user, "nobody");
	config_free(&cfg);
	expect_error("workers = 1;\nuser = \"no-such-user-tlsfront\"; #<\n",
		     "user: expected an existing user name", NULL);
}

/* ---- config_split_hostport --------------------------------------------- */

static void test_s2_split_hostport_accepts_host_port_and_v6(void **state)
{
	(void)state;
	static const struct {
		const char *text, *host;
		unsigned port;
	} good[] = {
	    {"127.0.0.1:2525", "127.0.0.1", 2525},
	    {"[::]:25", "::", 25},
	    {"[2001:db8::1]:465", "2001:db8::1", 465},
	    {"[::ffff:192.0.2.1]:1", "::ffff:192.0.2.1", 1},
	    {"smtp.example.net:25", "smtp.example.net", 25},
	    {"mx-1_a.example:65535", "mx-1_a.example", 65535},
	    {"h:00025", "h", 25},
	    {"127.0.0.1:0", "127.0.0.1", 0}, /* a listen address may ask for any port */
	};
	for (size_t i = 0; i < COUNT(good); i++) {
		char host[64] = "unset";
		unsigned port = 0;
		if (config_split_hostport(good[i].text, host, sizeof(host), &port) != 0)
			fail_msg("refused \"%s\"", good[i].text);
		assert_string_equal(host, good[i].host);
		assert_int_equal(port, good[i].port);
	}
}

static void test_s2_split_hostport_refuses_malformed(void **state)
{
	(void)state;
	static const char *const bad[] = {
	    "",		  "host",	 "host:",      ":25",	    "host:",	"host:65536",
	    "host:99999", "host:123456", "host:-1",    "host:+25",  "host:2 5", "host:25 ",
	    "host:0x19",  "host:smtp",	 "[::1]",      "[::1]:",    "[::1:25",	"::1]:25",
	    "::1:25",	  "[]:25",	 "[::1]25",    "[::1]:25]", "[a]:25",	"[::1%eth0]:25",
	    "ho st:25",	  "host:25:26",	 "[[::1]]:25", "unix:/x",   "a]:25",	"a[:25",
	};
	for (size_t i = 0; i < COUNT(bad); i++) {
		char host[64] = "unset";
		unsigned port = 7;
		if (config_split_hostport(bad[i], host, sizeof(host), &port) != -1)
			fail_msg("accepted \"%s\"", bad[i]);
		assert_string_equal(host, "unset");
		assert_int_equal(port, 7);
	}
	assert_int_equal(config_split_hostport(NULL, NULL, 0, NULL), -1);

	/* A host that does not fit the caller's buffer is refused. */
	char small[4];
	unsigned port;
	assert_int_equal(config_split_hostport("abc:25", small, sizeof(small), &port), 0);
	assert_string_equal(small, "abc");
	assert_int_equal(config_split_hostport("abcd:25", small, sizeof(small), &port), -1);
}

/* ---- issue 14: milters and limits.message_size_limit -------------------- */

/* "inbound = { milters = ( ... ); };" with n milters named m0, m1, ... on
 * lines 2 to n + 1; the list is on line 1. */
static void milters_text(char *out, size_t outlen, int n)
{
	size_t used = (size_t)snprintf(out, outlen, "inbound = { milters = (");
	for (int i = 0; i < n; i++)
		used += (size_t)snprintf(out + used, outlen - used,
					 "%s\n { name = \"m%d\"; socket = \"unix:/m\"; }",
					 i ? "," : "", i);
	snprintf(out + used, outlen - used, " ); };\n");
}

static void test_i14_milters_default_to_none(void **state)
{
	(void)state;
	struct tf_config cfg;
	load_ok("backend = { address = \"127.0.0.1:2525\"; };\n", &cfg);
	assert_int_equal(cfg.inbound.n_milters, 0);
	assert_int_equal(cfg.outbound.n_milters, 0);
	assert_null(cfg.inbound.milters[0].socket);
	assert_null(cfg.outbound.milters[0].name);
	assert_int_equal(cfg.limits.message_size_limit, 52428800);
	config_free(&cfg);
}

static void test_i14_milters_are_read(void **state)
{
	(void)state;
	struct tf_config cfg;
	load_ok("inbound = {\n"
		"  milters = (\n"
		"    { name = \"opendkim\"; socket = \"inet:127.0.0.1:8891\";\n"
		"      default_action = \"accept\"; timeout = 10; connect_timeout = 5; },\n"
		"    { socket = \"unix:/run/rspamd/milter.sock\"; default_action = \"reject\"; }\n"
		"  );\n"
		"};\n"
		"outbound = {\n"
		"  milters = (\n"
		"    { socket = \"inet:[::1]:8891\"; default_action = \"tempfail\"; },\n"
		"    { name = \"sign\"; socket = \"inet:milter.example.org:1\"; timeout = 3600;\n"
		"      connect_timeout = 3600; }\n"
		"  );\n"
		"};\n"
		"limits = { message_size_limit = 10485760; };\n",
		&cfg);
	assert_int_equal(cfg.inbound.n_milters, 2);
	const struct tf_milter_config *m = cfg.inbound.milters;
	assert_string_equal(m[0].name, "opendkim");
	assert_string_equal(m[0].socket, "inet:127.0.0.1:8891");
	assert_int_equal(m[0].default_action, TF_MILTER_ACCEPT);
	assert_int_equal(m[0].timeout, 10);
	assert_int_equal(m[0].connect_timeout, 5);
	/* Defaults: the socket as the name, 30 seconds. */
	assert_string_equal(m[1].name, "unix:/run/rspamd/milter.sock");
	assert_string_equal(m[1].socket, "unix:/run/rspamd/milter.sock");
	assert_int_equal(m[1].default_action, TF_MILTER_REJECT);
	assert_int_equal(m[1].timeout, 30);
	assert_int_equal(m[1].connect_timeout, 30);
	assert_null(m[2].socket);

	assert_int_equal(cfg.outbound.n_milters, 2);
	m = cfg.outbound.milters;
	assert_string_equal(m[0].name, "inet:[::1]:8891");
	assert_string_equal(m[0].socket, "inet:[::1]:8891");
	assert_int_equal(m[0].default_action, TF_MILTER_TEMPFAIL);
	assert_string_equal(m[1].name, "sign");
	assert_string_equal(m[1].socket, "inet:milter.example.org:1");
	assert_int_equal(m[1].default_action, TF_MILTER_TEMPFAIL); /* Postfix's default */
	assert_int_equal(m[1].timeout, 3600);
	assert_int_equal(m[1].connect_timeout, 3600);
	assert_int_equal(cfg.limits.message_size_limit, 10485760);
	config_free(&cfg);

	/* The 64-bit form, up to 2 GiB. */
	load_ok("limits = { message_size_limit = 2147483648L; };\n", &cfg);
	assert_int_equal(cfg.limits.message_size_limit, 2147483648UL);
	config_free(&cfg);
	load_ok("limits = { message_size_limit = 1024; };\n", &cfg);
	assert_int_equal(cfg.limits.message_size_limit, 1024);
	config_free(&cfg);

	/* An empty list is no milters. */
	load_ok("inbound = { milters = ( ); };\noutbound = { milters = [ ]; };\n", &cfg);
	assert_int_equal(cfg.inbound.n_milters, 0);
	assert_int_equal(cfg.outbound.n_milters, 0);
	config_free(&cfg);
}

static void test_i14_milter_good_values_load(void **state)
{
	(void)state;
	static char path107[256], eight[2048];
	snprintf(path107, sizeof(path107),
		 "inbound = { milters = ( { socket = \"unix:/%0106d\"; } ); };", 0);
	milters_text(eight, sizeof(eight), TF_MAX_MILTERS);
	const char *const good[] = {
	    "inbound = { milters = ( { socket = \"inet:127.0.0.1:8891\"; } ); };",
	    "inbound = { milters = ( { socket = \"inet:10.1.2.3:65535\"; } ); };",
	    "inbound = { milters = ( { socket = \"inet:[2001:db8::1]:8891\"; } ); };",
	    "inbound = { milters = ( { socket = \"inet:[::ffff:192.0.2.1]:1\"; } ); };",
	    "inbound = { milters = ( { socket = \"inet:localhost:8891\"; } ); };",
	    "inbound = { milters = ( { socket = \"inet:milter-1.example.org:8891\"; } ); };",
	    "inbound = { milters = ( { socket = \"unix:/run/m.sock\"; } ); };",
	    "inbound = { milters = ( { socket = "
	    "\"unix:/var/spool/postfix/opendkim/opendkim.sock\"; "
	    "} ); };",
	    path107,
	    eight,
	    "inbound = { milters = ( { socket = \"unix:/m\"; default_action = \"accept\"; } ); };",
	    "inbound = { milters = ( { socket = \"unix:/m\"; default_action = \"tempfail\"; } ); "
	    "};",
	    "inbound = { milters = ( { socket = \"unix:/m\"; default_action = \"reject\"; } ); };",
	    "inbound = { milters = ( { socket = \"unix:/m\"; timeout = 1; connect_timeout = 1; } "
	    "); "
	    "};",
	    "inbound = { milters = ( { socket = \"unix:/m\"; timeout = 3600L; } ); };",
	    "inbound = { milters = ( { name = \"a\"; socket = \"unix:/m\"; },\n"
	    " { name = \"b\"; socket = \"unix:/m\"; } ); };",
	    "inbound = { milters = ( { name = \"x!#$%&'()*+,-./:;<=>?@[]^_`{|}~\"; socket = "
	    "\"unix:/m\"; } ); };",
	    /* The same name in both lists: names are unique per list. */
	    "inbound = { milters = ( { socket = \"unix:/m\"; } ); };\n"
	    "outbound = { milters = ( { socket = \"unix:/m\"; } ); };",
	    "limits = { message_size_limit = 2147483647; };",
	    "limits = { message_size_limit = 1024L; };",
	};
	expect_loads(good, COUNT(good));
}

static void test_i14_milter_socket_is_checked(void **state)
{
	(void)state;
	static char path108[256];
	snprintf(path108, sizeof(path108),
		 "inbound = { milters = ( { socket = \"unix:/%0107d\"; #<\n} ); };\n", 0);
	const struct bad_case cases[] = {
	    {"inbound = { milters = (\n { name = \"m\"; } #<\n); };\n",
	     "inbound.milters[0].socket: missing", NULL},
	    /* A group is dated by its "{". */
	    {"outbound = { milters = (\n {\n  socket = \"unix:/a\"; },\n { #<\n  timeout = 5;\n "
	     "}\n); };\n",
	     "outbound.milters[1].socket: missing (each milter needs a socket)", NULL},
	    {"inbound = { milters = ( { socket = \"inet:127.0.0.1\"; #<\n} ); };\n",
	     "inbound.milters[0].socket", "expected \"inet:host:port\""},
	    {"inbound = { milters = ( { socket = \"inet:127.0.0.1:0\"; #<\n} ); };\n",
	     "inbound.milters[0].socket", "port 1 to 65535"},
	    {"inbound = { milters = ( { socket = \"inet:127.0.0.1:65536\"; #<\n} ); };\n",
	     "inbound.milters[0].socket", "got \"inet:127.0.0.1:65536\""},
	    {"inbound = { milters = ( { socket = \"inet:::1:8891\"; #<\n} ); };\n",
	     "inbound.milters[0].socket", "inet:[v6]:port"},
	    {"inbound = { milters = ( { socket = \"inet:[]:8891\"; #<\n} ); };\n",
	     "inbound.milters[0].socket", NULL},
	    {"inbound = { milters = ( { socket = \"inet:300.1.1.1:8891\"; #<\n} ); };\n",
	     "inbound.milters[0].socket", NULL},
	    {"inbound = { milters = ( { socket = \"inet:1.2.3:8891\"; #<\n} ); };\n",
	     "inbound.milters[0].socket", NULL},
	    {"inbound = { milters = ( { socket = \"inet:mx example:8891\"; #<\n} ); };\n",
	     "inbound.milters[0].socket", NULL},
	    {"inbound = { milters = ( { socket = \"inet::8891\"; #<\n} ); };\n",
	     "inbound.milters[0].socket", NULL},
	    {"inbound = { milters = ( { socket = \"inet:8891@localhost\"; #<\n} ); };\n",
	     "inbound.milters[0].socket", "sendmail's \"inet:port@host\" is not accepted"},
	    {"inbound = { milters = ( { socket = \"inet6:8891@::1\"; #<\n} ); };\n",
	     "inbound.milters[0].socket", "\"inet:[v6]:port\" for an IPv6 milter"},
	    {"inbound = { milters = ( { socket = \"127.0.0.1:8891\"; #<\n} ); };\n",
	     "inbound.milters[0].socket", "expected \"inet:host:port\""},
	    {"inbound = { milters = ( { socket = \"INET:127.0.0.1:8891\"; #<\n} ); };\n",
	     "inbound.milters[0].socket", NULL},
	    {"inbound = { milters = ( { socket = \"local:/run/m.sock\"; #<\n} ); };\n",
	     "inbound.milters[0].socket", "unix:/path"},
	    {"inbound = { milters = ( { socket = \"unix:run/m.sock\"; #<\n} ); };\n",
	     "inbound.milters[0].socket", "absolute path"},
	    {"inbound = { milters = ( { socket = \"unix:\"; #<\n} ); };\n",
	     "inbound.milters[0].socket", NULL},
	    {"inbound = { milters = ( { socket = \"unix:/a\\nb\"; #<\n} ); };\n",
	     "inbound.milters[0].socket", "unix:/a?b"},
	    {path108, "inbound.milters[0].socket", "at most 107 bytes"},
	    {"inbound = { milters = ( { socket = \"\"; #<\n} ); };\n", "inbound.milters[0].socket",
	     "got \"\""},
	    {"inbound = { milters = ( { socket = 8891; #<\n} ); };\n", "inbound.milters[0].socket",
	     "not an integer"},
	};
	expect_errors(cases, COUNT(cases));
}

static void test_i14_milter_keys_are_checked(void **state)
{
	(void)state;
	static const struct bad_case cases[] = {
	    {"inbound = { milters = ( { socket = \"unix:/m\";\n flags = 1; #<\n} ); };\n",
	     "inbound.milters[0].flags: unknown key",
	     "(expected name, socket, default_action, timeout or connect_timeout)"},
	    {"outbound = { milters = ( { socket = \"unix:/m\"; },\n { socket = \"unix:/n\"; "
	     "Socket = \"x\"; } #<\n); };\n",
	     "outbound.milters[1].Socket: unknown key", NULL},
	    {"inbound = { milters = ( { socket = \"unix:/m\";\n name = \"\"; #<\n} ); };\n",
	     "inbound.milters[0].name", "expected a name of 1 to 128 printable characters"},
	    {"inbound = { milters = ( { socket = \"unix:/m\";\n name = \"open dkim\"; #<\n} ); "
	     "};\n",
	     "inbound.milters[0].name", "got \"open dkim\""},
	    {"inbound = { milters = ( { socket = \"unix:/m\";\n name = \"a\\tb\"; #<\n} ); };\n",
	     "inbound.milters[0].name", "got \"a?b\""},
	    {"inbound = { milters = ( { socket = \"unix:/m\";\n name = 1; #<\n} ); };\n",
	     "inbound.milters[0].name", "not an integer"},
	    {"inbound = { milters = ( { socket = \"unix:/m\";\n default_action = \"discard\"; "
	     "#<\n} "
	     "); };\n",
	     "inbound.milters[0].default_action",
	     "expected one of \"accept\", \"tempfail\", \"reject\", got \"discard\""},
	    {"inbound = { milters = ( { socket = \"unix:/m\";\n default_action = \"Reject\"; #<\n} "
	     "); };\n",
	     "inbound.milters[0].default_action", "got \"Reject\""},
	    {"inbound = { milters = ( { socket = \"unix:/m\";\n default_action = true; #<\n} ); "
	     "};\n",
	     "inbound.milters[0].default_action", "not a boolean"},
	    {"inbound = { milters = ( { socket = \"unix:/m\";\n timeout = 0; #<\n} ); };\n",
	     "inbound.milters[0].timeout: expected a positive integer (at most 3600), got 0", NULL},
	    {"inbound = { milters = ( { socket = \"unix:/m\";\n timeout = 3601; #<\n} ); };\n",
	     "inbound.milters[0].timeout", "got 3601"},
	    {"inbound = { milters = ( { socket = \"unix:/m\";\n timeout = \"30\"; #<\n} ); };\n",
	     "inbound.milters[0].timeout", "not a string"},
	    {"inbound = { milters = ( { socket = \"unix:/m\";\n timeout = 1.5; #<\n} ); };\n",
	     "inbound.milters[0].timeout", "not a float"},
	    {"inbound = { milters = ( { socket = \"unix:/m\";\n connect_timeout = -1; #<\n} ); "
	     "};\n",
	     "inbound.milters[0].connect_timeout", "got -1"},
	    {"inbound = { milters = ( { socket = \"unix:/m\";\n connect_timeout = 3601; #<\n} ); "
	     "};\n",
	     "inbound.milters[0].connect_timeout", "at most 3600"},
	    /* The list itself. */
	    {"inbound = {\n milters = { socket = \"unix:/m\"; }; #<\n};\n", "inbound.milters",
	     "expected a list ( { socket = \"...\"; ... }, ... ), not a group"},
	    {"inbound = {\n milters = \"unix:/m\"; #<\n};\n", "inbound.milters: expected a list",
	     "not a string"},
	    {"inbound = { milters = (\n \"unix:/m\" ); }; #<\n", "inbound.milters[0]",
	     "expected a group { socket = \"...\"; ... }, not a string"},
	    {"inbound = { milters = [\n \"unix:/m\" ]; }; #<\n", "inbound.milters[0]",
	     "expected a group"},
	    {"inbound = { milters = ( { socket = \"unix:/m\"; },\n ( 1 ) ); }; #<\n",
	     "inbound.milters[1]", "not a list"},
	    /* Only inbound and outbound have milters. */
	    {"milters = ( ); #<\n", "milters: unknown key", NULL},
	    {"inbound = { tcp = {\n milters = ( ); #<\n}; };\n", "inbound.tcp.milters: unknown key",
	     NULL},
	    {"limits = {\n milters = ( ); #<\n};\n", "limits.milters: unknown key", NULL},
	};
	expect_errors(cases, COUNT(cases));
}

static void test_i14_milter_names_are_unique(void **state)
{
	(void)state;
	static const struct bad_case cases[] = {
	    {"inbound = { milters = (\n { name = \"dkim\"; socket = \"unix:/a\"; },\n"
	     " { socket = \"unix:/b\";\n   name = \"dkim\"; } #<\n); };\n",
	     "inbound.milters[1].name: \"dkim\" is already the name of inbound.milters[0]",
	     "names must be unique"},
	    /* Two unnamed milters on one socket: the default names clash, at the
	     * second one's socket. */
	    {"outbound = { milters = (\n { socket = \"inet:127.0.0.1:8891\"; },\n"
	     " { timeout = 5;\n   socket = \"inet:127.0.0.1:8891\"; #<\n } ); };\n",
	     "outbound.milters[1].name: \"inet:127.0.0.1:8891\" is already the name of "
	     "outbound.milters[0]",
	     NULL},
	    /* A name equal to an earlier milter's default name. */
	    {"inbound = { milters = (\n { socket = \"unix:/a\"; },\n { socket = \"unix:/b\"; },\n"
	     " { socket = \"unix:/c\";\n   name = \"unix:/a\"; } #<\n); };\n",
	     "inbound.milters[2].name", "already the name of inbound.milters[0]"},
	};
	expect_errors(cases, COUNT(cases));
}

static void test_i14_too_many_milters_is_error(void **state)
{
	(void)state;
	static char text[2048];
	milters_text(text, sizeof(text), TF_MAX_MILTERS + 1);
	/* At the list, which libconfig dates by its "(" on line 1. */
	char want[64];
	snprintf(want, sizeof(want), "at most %d milters, got %d", TF_MAX_MILTERS,
		 TF_MAX_MILTERS + 1);
	struct tf_config cfg;
	char path[64], err[512], prefix[96];
	assert_int_equal(load_text(text, &cfg, err, sizeof(err), path), -1);
	snprintf(prefix, sizeof(prefix), "%s:1: inbound.milters: expected ", path);
	assert_memory_equal(err, prefix, strlen(prefix));
	assert_non_null(strstr(err, want));
	assert_true(is_zeroed(&cfg));
}

static void test_i14_message_size_limit_is_checked(void **state)
{
	(void)state;
	static const struct bad_case cases[] = {
	    {"limits = {\n message_size_limit = 1023; #<\n};\n", "limits.message_size_limit",
	     "expected an integer from 1024 to 2147483648, got 1023"},
	    {"limits = { message_size_limit = 0; #<\n};\n", "limits.message_size_limit", "got 0"},
	    {"limits = { message_size_limit = -1; #<\n};\n", "limits.message_size_limit", "got -1"},
	    {"limits = { message_size_limit = 2147483649L; #<\n};\n", "limits.message_size_limit",
	     "got 2147483649"},
	    {"limits = { message_size_limit = 10000000000L; #<\n};\n", "limits.message_size_limit",
	     "got 10000000000"},
	    /* libconfig 1.5 wraps a plain integer above 2^31 - 1 (the known
	     * limitation of config.c): the wrapped value is refused. */
	    {"limits = { message_size_limit = 2147483648; #<\n};\n", "limits.message_size_limit",
	     "got -2147483648"},
	    {"limits = { message_size_limit = \"50M\"; #<\n};\n", "limits.message_size_limit",
	     "not a string"},
	    {"limits = { message_size_limit = 5.0e7; #<\n};\n", "limits.message_size_limit",
	     "not a float"},
	};
	expect_errors(cases, COUNT(cases));
}

/* Errors after allocating: config_free must release every string of a
 * half-read list (ASan reports a leak otherwise). */
static void test_i14_milter_error_frees_everything(void **state)
{
	(void)state;
	expect_error("inbound = { milters = (\n { name = \"a\"; socket = \"unix:/a\"; },\n"
		     " { name = \"b\"; socket = \"unix:/b\"; timeout = 0; } #<\n); };\n",
		     "inbound.milters[1].timeout", NULL);
	expect_error("inbound = { milters = ( { socket = \"unix:/a\"; } ); };\n"
		     "outbound = { milters = ( { socket = \"unix:/b\"; name = \"x\"; } ); };\n"
		     "workers = 2000; #<\n",
		     "workers", NULL);
	expect_error("outbound = { milters = ( { socket = \"unix:/a\"; } ); };\n"
		     "inbound = { tcp = { require_tls = true; starttls = false; }; }; #<\n",
		     "needs inbound.tcp.starttls", NULL);
}

/* ---- lifetimes ---------------------------------------------------------- */

static void test_s2_load_twice_and_free_leaks_nothing(void **state)
{
	(void)state;
	const char *path = TEST_DATA_DIR "/config/spec_s2.conf";
	struct tf_config cfg;
	char err[512];
	for (int i = 0; i < 2; i++) {
		assert_int_equal(config_load(path, &cfg, err, sizeof(err)), 0);
		config_free(&cfg);
		assert_true(is_zeroed(&cfg));
	}
	config_free(&cfg); /* idempotent */
	assert_true(is_zeroed(&cfg));

	/* Errors after allocating: in the middle of a listen list and of the
	 * certificates, and in the late checks. */
	expect_error(
	    "inbound = { tcp = { listen = [ \"10.0.0.1:1\", \"10.0.0.1:2\", \"bad\" ]; #<\n}; };\n",
	    "inbound.tcp.listen[2]", NULL);
	expect_error("tls = { certificates = ( { cert = \"c\"; key = \"k\"; },\n"
		     " { cert = \"c\"; } ); #<\n};\n",
		     "tls.certificates[1].key: missing", NULL);
	expect_error("server_name = \"x\";\noutbound = { enabled = true; tls = \"verify\";\n"
		     " next_hop = \"original-destination\"; }; #<\n",
		     "no name to verify", NULL);
}

static void test_s2_free_is_safe_on_zeroed_struct(void **state)
{
	(void)state;
	struct tf_config cfg;
	memset(&cfg, 0, sizeof(cfg));
	config_free(&cfg);
	config_free(&cfg);
	assert_true(is_zeroed(&cfg));
	config_free(NULL);
}

static void test_s2_error_buffer_may_be_small_or_absent(void **state)
{
	(void)state;
	struct tf_config cfg;
	char path[64], err[8];
	memset(err, 'x', sizeof(err));
	assert_int_equal(load_text("bogus = 1;\n", &cfg, err, sizeof(err), path), -1);
	assert_int_equal(strlen(err), sizeof(err) - 1);
	assert_memory_equal(err, path, sizeof(err) - 1);
	assert_int_equal(load_text("bogus = 1;\n", &cfg, NULL, 0, path), -1);
	assert_true(is_zeroed(&cfg));
	assert_int_equal(load_text("workers = ;\n", &cfg, NULL, 0, path), -1);
	assert_int_equal(config_load("/nonexistent", &cfg, NULL, 0), -1);
	assert_true(is_zeroed(&cfg));
}

/* A key left at its default has no line: app.c's errors then name the
 * file alone. */
static void test_s2_key_source_absent_names_file(void **state)
{
	(void)state;
	struct tf_config cfg;
	char where[128];
	load_ok("log = { level = \"info\"; };\n", &cfg);
	assert_int_equal(cfg.source.tls_priority.line, 0);
	assert_int_equal(cfg.source.backend_address.line, 0);
	config_where(&cfg, &cfg.source.backend_address, where, sizeof(where));
	assert_string_equal(where, cfg.path);
	config_free(&cfg);
	assert_true(is_zeroed(&cfg));
}

static void test_s2_log_level_names(void **state)
{
	(void)state;
	assert_string_equal(config_log_level_name(TF_LOG_ERROR), "error");
	assert_string_equal(config_log_level_name(TF_LOG_WARN), "warn");
	assert_string_equal(config_log_level_name(TF_LOG_INFO), "info");
	assert_string_equal(config_log_level_name(TF_LOG_DEBUG), "debug");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_s2_defaults_are_the_spec_defaults),
	    cmocka_unit_test(test_s2_minimal_file_gives_all_defaults),
	    cmocka_unit_test(test_s2_empty_file_gives_all_defaults),
	    cmocka_unit_test(test_s2_spec_block_loads),
	    cmocka_unit_test(test_s2_every_key_is_read),
	    cmocka_unit_test(test_s2_enum_values_are_read),
	    cmocka_unit_test(test_s2_range_bounds_are_accepted),
	    cmocka_unit_test(test_s2_unknown_key_is_error),
	    cmocka_unit_test(test_s2_unknown_key_line_is_exact),
	    cmocka_unit_test(test_s2_wrong_type_is_error),
	    cmocka_unit_test(test_s2_out_of_range_is_error),
	    cmocka_unit_test(test_s2_too_many_entries_is_error),
	    cmocka_unit_test(test_s2_certificate_entry_needs_cert_and_key),
	    cmocka_unit_test(test_ocsp_per_certificate_and_its_line),
	    cmocka_unit_test(test_s2_bad_enum_is_error),
	    cmocka_unit_test(test_s2_malformed_address_is_error),
	    cmocka_unit_test(test_i13_metrics_listen),
	    cmocka_unit_test(test_s2_parse_error_has_file_and_line),
	    cmocka_unit_test(test_s2_unreadable_file_is_error),
	    cmocka_unit_test(test_s2_require_tls_without_starttls_is_error_at_later_key),
	    cmocka_unit_test(test_s3_6_policy_keys_load),
	    cmocka_unit_test(test_s2_listen_port_zero_is_any_free_port),
	    cmocka_unit_test(test_s6_user_must_exist),
	    cmocka_unit_test(test_s7_11_no_listener_enabled_is_error_at_last_enabled_false),
	    cmocka_unit_test(test_s2_verify_with_original_destination_is_error_at_later_key),
	    cmocka_unit_test(test_s2_empty_listen_when_enabled_is_error),
	    cmocka_unit_test(test_s2_combination_is_reported_before_not_supported_yet),
	    cmocka_unit_test(test_s2_not_supported_yet_default_value_is_accepted),
	    cmocka_unit_test(test_s2_not_supported_yet_value_is_error),
	    cmocka_unit_test(test_s2_split_hostport_accepts_host_port_and_v6),
	    cmocka_unit_test(test_s2_split_hostport_refuses_malformed),
	    cmocka_unit_test(test_i14_milters_default_to_none),
	    cmocka_unit_test(test_i14_milters_are_read),
	    cmocka_unit_test(test_i14_milter_good_values_load),
	    cmocka_unit_test(test_i14_milter_socket_is_checked),
	    cmocka_unit_test(test_i14_milter_keys_are_checked),
	    cmocka_unit_test(test_i14_milter_names_are_unique),
	    cmocka_unit_test(test_i14_too_many_milters_is_error),
	    cmocka_unit_test(test_i14_message_size_limit_is_checked),
	    cmocka_unit_test(test_i14_milter_error_frees_everything),
	    cmocka_unit_test(test_s2_load_twice_and_free_leaks_nothing),
	    cmocka_unit_test(test_s2_free_is_safe_on_zeroed_struct),
	    cmocka_unit_test(test_s2_error_buffer_may_be_small_or_absent),
	    cmocka_unit_test(test_s2_key_source_absent_names_file),
	    cmocka_unit_test(test_s2_log_level_names),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
