/* main.c — tlsfront's entry point: options, configuration, credentials,
 * listening sockets, worker threads and signals (SPEC §6).
 *
 * Everything that can fail for a bad configuration fails here, before any
 * socket is bound or any thread started. The main thread then only waits for
 * signals and replaces the TLS session ticket key every
 * tls.session_cache_timeout seconds (like Postfix's tlsmgr); the workers
 * serve. Never makes SMTP decisions.
 *
 * The ticket key is one for the whole process: every worker and every
 * configuration generation uses it, so a ticket from one worker resumes on
 * another and a reload (SIGHUP) does not end resumption. A reload that
 * changes tls.session_cache_timeout replaces the key at once and rearms the
 * timer with the new period (0 stops it: no tickets).
 */
#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <gnutls/gnutls.h>
#include <libconfig.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "certs/credentials.h"
#include "policy/config.h"
#include "proxy/address.h"
#include "proxy/app.h"
#include "proxy/conn_limits.h"
#include "proxy/listener.h"
#include "proxy/log.h"
#include "proxy/metrics.h"
#include "proxy/metrics_http.h"
#include "proxy/readiness.h"
#include "proxy/worker.h"

struct bound {
	struct tf_addr addr;
	enum listener_kind kind;
	int *fds; /* one per worker */
};

struct runtime {
	const char *path;
	struct app *app; /* the current generation; one reference */
	struct worker *workers;
	unsigned n_workers;
	struct bound *bound;
	size_t n_bound;
	uv_signal_t sig_term, sig_int, sig_hup;
	struct creds_tickets *tickets; /* the shared ticket key; one reference */
	uv_timer_t ticket_timer;       /* replaces it every ticket_period seconds */
	unsigned ticket_period;	       /* 0: no tickets, the timer is stopped */
	unsigned ticket_rotations;
	bool stopping;
	int metrics_fds[TF_MAX_LISTEN]; /* bound, not yet served; -1 */
	size_t n_metrics_fds;
	struct metrics_http *http; /* /metrics and /healthz, or NULL */
};

static void ticket_rotate(struct runtime *rt, const char *why)
{
	int rc = creds_tickets_rotate(rt->tickets);
	if (rc < 0) {
		log_msg(TF_LOG_ERROR,
			"event=ticket_key_rotation_failed error=\"%s\" note=\"the current key "
			"stays\"",
			gnutls_strerror(rc));
		return;
	}
	rt->ticket_rotations++;
	/* Never any key material, at any level. */
	log_msg(TF_LOG_DEBUG, "event=ticket_key_rotated rotation=%u period=%u reason=%s",
		rt->ticket_rotations, rt->ticket_period, why);
}

static void ticket_timer_cb(uv_timer_t *t)
{
	ticket_rotate(t->data, "timer");
}

/* (Re)starts the rotation timer with a period of seconds; 0 stops it. */
static void ticket_timer_arm(struct runtime *rt, unsigned seconds)
{
	rt->ticket_period = seconds;
	if (seconds == 0) {
		uv_timer_stop(&rt->ticket_timer);
		return;
	}
	uint64_t ms = (uint64_t)seconds * 1000;
	uv_timer_start(&rt->ticket_timer, ticket_timer_cb, ms, ms);
}

static void close_main_handles(struct runtime *rt)
{
	uv_close((uv_handle_t *)&rt->sig_term, NULL);
	uv_close((uv_handle_t *)&rt->sig_int, NULL);
	uv_close((uv_handle_t *)&rt->sig_hup, NULL);
	uv_close((uv_handle_t *)&rt->ticket_timer, NULL);
}

static void usage(FILE *f)
{
	fprintf(f, "usage: tlsfront [-c FILE] [-t] [-V] [-h]\n"
		   "  -c FILE  configuration file (default " TF_CONFIG_DEFAULT_PATH ")\n"
		   "  -t       check the configuration (certificates included) and exit\n"
		   "  -V       print the versions of tlsfront, GnuTLS, libuv and libconfig\n"
		   "  -h       this help\n");
}

static void print_versions(void)
{
	printf("tlsfront %s\n", TLSFRONT_VERSION);
	printf("gnutls %s\n", gnutls_check_version(NULL));
	printf("libuv %s\n", uv_version_string());
	printf("libconfig %d.%d.%d\n", LIBCONFIG_VER_MAJOR, LIBCONFIG_VER_MINOR,
	       LIBCONFIG_VER_REVISION);
}

static int add_listeners(struct runtime *rt, const struct tf_listener_config *lc,
			 enum listener_kind kind, char *err, size_t errlen)
{
	if (!lc->enabled)
		return 0;
	for (size_t i = 0; i < lc->n_listen; i++) {
		struct bound *b = &rt->bound[rt->n_bound];
		b->kind = kind;
		if (address_resolve(lc->listen[i], true, &b->addr, err, errlen) < 0)
			return -1;
		b->fds = calloc(rt->n_workers, sizeof(int));
		if (!b->fds) {
			snprintf(err, errlen, "out of memory");
			return -1;
		}
		rt->n_bound++;
		for (unsigned w = 0; w < rt->n_workers; w++)
			b->fds[w] = -1;
		for (unsigned w = 0; w < rt->n_workers; w++) {
			b->fds[w] = listener_bind(&b->addr, err, errlen);
			if (b->fds[w] < 0)
				return -1;
			if (w == 0 && address_port((struct sockaddr *)&b->addr.ss) == 0) {
				/* Port 0: every worker shares the port the
				 * kernel chose for the first socket. */
				socklen_t len = sizeof(b->addr.ss);
				getsockname(b->fds[0], (struct sockaddr *)&b->addr.ss, &len);
			}
		}
		char text[80];
		address_format((struct sockaddr *)&b->addr.ss, text, sizeof(text));
		log_msg(TF_LOG_INFO, "event=listening listener=%s address=%s workers=%u",
			kind == LISTENER_TLS	    ? "tls"
			: kind == LISTENER_OUTBOUND ? "outbound"
						    : "tcp",
			text, rt->n_workers);
		if (kind == LISTENER_TCP && lc->require_tls &&
		    address_port((struct sockaddr *)&b->addr.ss) == 25)
			log_msg(TF_LOG_WARN,
				"event=config_warning address=%s note=\"require_tls on port 25: "
				"RFC 3207 section 4 forbids a publicly referenced MX to require "
				"TLS; senders without TLS cannot deliver\"",
				text);
	}
	return 0;
}

/* -t: the RFC 3207 warning the running server logs when it binds, shown to
 * whoever checks the file too (it does not make the file invalid). */
static void warn_port_25(const struct tf_config *cfg, const char *path)
{
	const struct tf_listener_config *lc = &cfg->inbound.tcp;
	if (!lc->enabled || !lc->require_tls)
		return;
	for (size_t i = 0; i < lc->n_listen; i++) {
		struct tf_addr a;
		char err[256];
		if (address_resolve(lc->listen[i], true, &a, err, sizeof(err)) == 0 &&
		    address_port((struct sockaddr *)&a.ss) == 25)
			fprintf(stderr,
				"%s: warning: inbound.tcp.require_tls on port 25 (%s): RFC 3207 "
				"section 4 forbids a publicly referenced MX to require TLS\n",
				path, lc->listen[i]);
	}
}

/* SPEC §4: the outbound listener, bound like the inbound ones. */
static int add_outbound_listeners(struct runtime *rt, const struct tf_config *cfg, char *err,
				  size_t errlen)
{
	struct tf_listener_config lc = {.enabled = cfg->outbound.enabled,
					.n_listen = cfg->outbound.n_listen};
	memcpy(lc.listen, cfg->outbound.listen, sizeof(lc.listen));
	return add_listeners(rt, &lc, LISTENER_OUTBOUND, err, errlen);
}

static void close_bound(struct runtime *rt)
{
	for (size_t i = 0; i < rt->n_bound; i++) {
		for (unsigned w = 0; w < rt->n_workers && rt->bound[i].fds; w++)
			if (rt->bound[i].fds[w] >= 0)
				close(rt->bound[i].fds[w]);
		free(rt->bound[i].fds);
	}
	free(rt->bound);
	rt->bound = NULL;
	rt->n_bound = 0;
	for (size_t i = 0; i < rt->n_metrics_fds; i++)
		close(rt->metrics_fds[i]);
	rt->n_metrics_fds = 0;
}

/* What /healthz and the certificate expiry gauges show of a generation
 * (issue 13). */
static void publish(const struct app *a)
{
	metrics_set_backend(&a->backend.ss, (unsigned)a->backend.len, a->backend.text,
			    a->cfg.backend.connect_timeout);
	struct metrics_cert certs[TF_MAX_CERTS];
	unsigned n = a->cfg.tls.n_certs ? (unsigned)a->cfg.tls.n_certs : 1;
	for (unsigned i = 0; i < n; i++) {
		snprintf(certs[i].label, sizeof(certs[i].label), "%s",
			 a->cfg.tls.n_certs ? a->cfg.tls.certs[i].cert : "self-signed");
		certs[i].not_after = creds_expiry(a->creds, i);
	}
	metrics_set_certs(certs, n);
}

/* The metrics endpoint's sockets (issue 13): bound with the others, before
 * the privilege drop, served once the workers run. */
static int bind_metrics(struct runtime *rt, const struct tf_config *cfg, char *err, size_t errlen)
{
	for (size_t i = 0; i < cfg->metrics.n_listen; i++) {
		struct tf_addr addr;
		if (address_resolve(cfg->metrics.listen[i], true, &addr, err, errlen) < 0)
			return -1;
		int fd = listener_bind(&addr, err, errlen);
		if (fd < 0)
			return -1;
		rt->metrics_fds[rt->n_metrics_fds++] = fd;
		socklen_t len = sizeof(addr.ss);
		getsockname(fd, (struct sockaddr *)&addr.ss, &len); /* port 0: the one chosen */
		char text[80];
		address_format((struct sockaddr *)&addr.ss, text, sizeof(text));
		log_msg(TF_LOG_INFO, "event=listening listener=metrics address=%s", text);
	}
	return 0;
}

/* A failed reload: the running generation still serves, so the service
 * manager hears READY=1 again at once. */
static void reload_failed(const struct runtime *rt)
{
	char status[96];
	snprintf(status, sizeof(status), "reload failed (see the log): generation %u still serving",
		 rt->app->generation);
	readiness_ready(status);
}

/* SIGHUP (§5): a whole new generation, or nothing at all. The service
 * manager hears RELOADING=1 now and READY=1 when the reload has ended: from
 * the last worker to take the generation (worker.c), or here on failure. */
static void reload(struct runtime *rt)
{
	char err[1024];
	readiness_reloading();
	struct app *next = app_load(rt->path, rt->tickets, err, sizeof(err));
	if (!next) {
		log_msg(TF_LOG_ERROR,
			"event=reload status=failed error=\"%s\" note=\"the running "
			"configuration and certificates stay\"",
			err);
		metrics_reload(false);
		reload_failed(rt);
		return;
	}
	app_keep_restart_keys(next, rt->app);
	next->generation = rt->app->generation + 1;
	if (conn_limits_set(next->cfg.limits.max_connections,
			    next->cfg.limits.max_connections_per_ip) < 0) {
		log_msg(TF_LOG_ERROR, "event=reload status=failed error=\"out of memory\"");
		app_unref(next);
		metrics_reload(false);
		reload_failed(rt);
		return;
	}
	log_set_level(next->cfg.log_level);
	/* The same period keeps the key and the timer: tickets stay good
	 * across the reload. A new period starts afresh with a new key, before
	 * any worker has the new generation, so that no ticket outlives the
	 * period now configured. */
	if (next->cfg.tls.session_cache_timeout != rt->ticket_period) {
		ticket_timer_arm(rt, next->cfg.tls.session_cache_timeout);
		ticket_rotate(rt, "reload");
	}
	/* status=ok is logged by the last worker to take the generation: from
	 * that line on, every new session gets it. */
	atomic_store(&next->adopt_pending, rt->n_workers);
	for (unsigned i = 0; i < rt->n_workers; i++)
		worker_reload(&rt->workers[i], next);
	app_unref(rt->app);
	rt->app = next;
	publish(next);
	metrics_reload(true);
}

static void signal_cb(uv_signal_t *h, int signum)
{
	struct runtime *rt = h->data;
	if (signum == SIGHUP) {
		reload(rt);
		return;
	}
	if (rt->stopping)
		return;
	rt->stopping = true;
	metrics_set_ready(false); /* /healthz: 503 while sessions drain */
	log_msg(TF_LOG_INFO, "event=stopping signal=%s", signum == SIGTERM ? "TERM" : "INT");
	readiness_stopping();
	for (unsigned i = 0; i < rt->n_workers; i++)
		worker_stop(&rt->workers[i]);
	close_main_handles(rt);
	/* Closing a uv_signal restores the default action: a second TERM or
	 * INT would kill the process and the sessions still draining. */
	signal(SIGTERM, SIG_IGN);
	signal(SIGINT, SIG_IGN);
	signal(SIGHUP, SIG_IGN);
}

static unsigned worker_count(const struct tf_config *cfg)
{
	if (cfg->workers)
		return cfg->workers;
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	return n > 0 ? (unsigned)n : 1;
}

/* Started as root with `user` set (§6): drop to that user once every
 * socket is bound and every key read. Returns 0 or -1 with err set. */
static int drop_privileges(const char *user, char *err, size_t errlen)
{
	if (!*user)
		return 0;
	if (geteuid() != 0) {
		log_msg(TF_LOG_WARN,
			"event=privileges user=%s note=\"not started as root: "
			"running as uid %u\"",
			user, (unsigned)geteuid());
		return 0;
	}
	struct passwd *pw = getpwnam(user);
	if (!pw) {
		snprintf(err, errlen, "user %s: no such user", user);
		return -1;
	}
	if (initgroups(pw->pw_name, pw->pw_gid) < 0 || setgid(pw->pw_gid) < 0 ||
	    setuid(pw->pw_uid) < 0) {
		snprintf(err, errlen, "cannot become user %s: %s", user, strerror(errno));
		return -1;
	}
	if (setuid(0) == 0) {
		snprintf(err, errlen, "privileges of root could be regained after the drop");
		return -1;
	}
	log_msg(TF_LOG_INFO, "event=privileges user=%s uid=%u gid=%u", user, (unsigned)pw->pw_uid,
		(unsigned)pw->pw_gid);
	return 0;
}

static int run(struct runtime *rt)
{
	char err[512];
	const struct tf_config *cfg = &rt->app->cfg;

	if (rt->app->self_signed)
		log_msg(TF_LOG_WARN,
			"event=self_signed_certificate server_name=%s note=\"tls.certificates is "
			"not set: serving an in-memory self-signed certificate\"",
			cfg->server_name);
	if (conn_limits_init(cfg->limits.max_connections, cfg->limits.max_connections_per_ip) < 0) {
		log_msg(TF_LOG_ERROR, "event=error error=\"out of memory\"");
		return 1;
	}
	/* Signals are caught before the first event=listening line: a TERM
	 * sent by whoever waits for that line is handled (in uv_run, once
	 * the workers run), never the default action. */
	uv_loop_t *loop = uv_default_loop();
	uv_signal_init(loop, &rt->sig_term);
	uv_signal_init(loop, &rt->sig_int);
	uv_signal_init(loop, &rt->sig_hup);
	rt->sig_term.data = rt->sig_int.data = rt->sig_hup.data = rt;
	uv_signal_start(&rt->sig_term, signal_cb, SIGTERM);
	uv_signal_start(&rt->sig_int, signal_cb, SIGINT);
	uv_signal_start(&rt->sig_hup, signal_cb, SIGHUP);
	uv_timer_init(loop, &rt->ticket_timer);
	rt->ticket_timer.data = rt;
	ticket_timer_arm(rt, cfg->tls.session_cache_timeout);
	rt->n_workers = worker_count(cfg);
	if (metrics_init(rt->n_workers) < 0) {
		log_msg(TF_LOG_ERROR, "event=error error=\"out of memory\"");
		return 1;
	}
	publish(rt->app);
	rt->bound = calloc(3 * TF_MAX_LISTEN, sizeof(*rt->bound));
	if (!rt->bound)
		return 1;
	if (add_listeners(rt, &cfg->inbound.tcp, LISTENER_TCP, err, sizeof(err)) < 0 ||
	    add_listeners(rt, &cfg->inbound.tls, LISTENER_TLS, err, sizeof(err)) < 0 ||
	    add_outbound_listeners(rt, cfg, err, sizeof(err)) < 0 ||
	    bind_metrics(rt, cfg, err, sizeof(err)) < 0) {
		log_msg(TF_LOG_ERROR, "event=listen_error error=\"%s\"", err);
		return 1;
	}
	if (drop_privileges(cfg->user, err, sizeof(err)) < 0) {
		log_msg(TF_LOG_ERROR, "event=privileges error=\"%s\"", err);
		return 1;
	}

	rt->workers = calloc(rt->n_workers, sizeof(*rt->workers));
	int *fds = calloc(rt->n_bound ? rt->n_bound : 1, sizeof(int));
	enum listener_kind *kinds = calloc(rt->n_bound ? rt->n_bound : 1, sizeof(*kinds));
	if (!rt->workers || !fds || !kinds) {
		free(fds);
		free(kinds);
		return 1;
	}

	unsigned started = 0;
	for (unsigned w = 0; w < rt->n_workers; w++) {
		for (size_t i = 0; i < rt->n_bound; i++) {
			fds[i] = rt->bound[i].fds[w];
			kinds[i] = rt->bound[i].kind;
			rt->bound[i].fds[w] = -1; /* the worker owns it now */
		}
		int rc = worker_start(&rt->workers[w], w, rt->app, fds, kinds, rt->n_bound);
		if (rc < 0) {
			log_msg(TF_LOG_ERROR, "event=worker_error worker=%u error=\"%s\"", w,
				uv_strerror(rc));
			break;
		}
		started++;
	}
	free(fds);
	free(kinds);

	bool running = started == rt->n_workers;
	if (running && rt->n_metrics_fds) {
		rt->http = metrics_http_start(rt->metrics_fds, rt->n_metrics_fds, err, sizeof(err));
		rt->n_metrics_fds = 0; /* the HTTP side owns them now */
		if (!rt->http) {
			log_msg(TF_LOG_ERROR, "event=listen_error listener=metrics error=\"%s\"",
				err);
			running = false;
		}
	}
	if (running) {
		metrics_set_ready(true);
		char fp[128] = "";
		creds_fingerprint(rt->app->creds, fp, sizeof(fp));
		log_msg(TF_LOG_INFO,
			"event=started version=%s workers=%u backend=%s server_name=%s "
			"certificate_sha256=%s",
			TLSFRONT_VERSION, rt->n_workers, cfg->backend.address, cfg->server_name,
			fp);
		/* main bound and listen(2)ed every socket before any worker
		 * started, and every worker's loop now holds its own: a
		 * connection to any listener is accepted from here on. */
		char status[128];
		snprintf(status, sizeof(status),
			 "serving: %zu listeners, %u workers, generation %u", rt->n_bound,
			 rt->n_workers, rt->app->generation);
		readiness_ready(status);
	} else {
		rt->stopping = true;
		for (unsigned i = 0; i < started; i++)
			worker_stop(&rt->workers[i]);
		close_main_handles(rt);
	}
	uv_run(loop, UV_RUN_DEFAULT);
	metrics_set_ready(false);
	for (unsigned i = 0; i < started; i++)
		worker_join(&rt->workers[i]);
	metrics_http_stop(rt->http);
	rt->http = NULL;
	uv_loop_close(loop);
	conn_limits_free();
	if (running)
		log_msg(TF_LOG_INFO, "event=stopped");
	return running ? 0 : 1;
}

int main(int argc, char **argv)
{
	const char *path = TF_CONFIG_DEFAULT_PATH;
	bool check_only = false;
	int opt;
	while ((opt = getopt(argc, argv, "c:tVh")) != -1) {
		switch (opt) {
		case 'c':
			path = optarg;
			break;
		case 't':
			check_only = true;
			break;
		case 'V':
			print_versions();
			return 0;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 1;
		}
	}
	if (optind != argc) {
		usage(stderr);
		return 1;
	}
	signal(SIGPIPE, SIG_IGN);

	struct runtime rt;
	memset(&rt, 0, sizeof(rt));
	rt.path = path;
	char err[1024];
	/* Configuration, certificates, keys and the backend address: all of
	 * it is checked before anything is bound. */
	rt.tickets = creds_tickets_new(err, sizeof(err));
	if (!rt.tickets) {
		fprintf(stderr, "%s\n", err);
		return 1;
	}
	rt.app = app_load(path, rt.tickets, err, sizeof(err));
	if (!rt.app) {
		fprintf(stderr, "%s\n", err);
		creds_tickets_unref(rt.tickets);
		return 1;
	}
	rt.app->generation = 1;
	log_set_level(rt.app->cfg.log_level);

	int rc;
	if (check_only) {
		warn_port_25(&rt.app->cfg, path);
		printf("%s: configuration OK\n", path);
		rc = 0;
	} else {
		rc = run(&rt);
	}
	close_bound(&rt);
	metrics_free(); /* after every thread that counts has ended */
	free(rt.workers);
	app_unref(rt.app);
	creds_tickets_unref(rt.tickets);
	return rc;
}
