/* metrics_http.c — /metrics and /healthz over GNU libmicrohttpd
 * (metrics_http.h). libmicrohttpd parses HTTP; this file only answers.
 *
 * /healthz is 200 when every listener is bound and accepting (main says so
 * once every worker runs, and unsays it on SIGTERM) and the
 * backend accepted a connection within the last 2 x backend.connect_timeout
 * seconds or a probe connection succeeds now; else 503 with a one-line
 * reason. The probe is a non-blocking connect bounded by
 * backend.connect_timeout, made on this thread (one thread per HTTP
 * connection, so a slow probe never delays a scrape).
 *
 * Must never touch a worker's loop or session, never take a lock a worker
 * takes, never hand-parse HTTP.
 */
#include "proxy/metrics_http.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <gnutls/gnutls.h>
#include <microhttpd.h>
#include <sys/socket.h>
#include <uv.h>

#include "proxy/metrics.h"
#include "proxy/metrics_format.h"

#define HTTP_CONNECTIONS 16 /* at once, per listening socket */
#define HTTP_TIMEOUT	 30 /* seconds an idle HTTP connection is kept */

struct metrics_http {
	struct MHD_Daemon **daemons;
	size_t n;
};

static uint64_t now_ns(void)
{
	/* The clock uv_hrtime() reads on Linux: the workers' timestamps and
	 * ours compare. */
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static enum MHD_Result respond(struct MHD_Connection *c, unsigned status, char *body, size_t len,
			       const char *type)
{
	struct MHD_Response *r = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
	if (!r) {
		free(body);
		return MHD_NO;
	}
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
	MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
	enum MHD_Result rc = MHD_queue_response(c, status, r);
	MHD_destroy_response(r);
	return rc;
}

static enum MHD_Result respond_text(struct MHD_Connection *c, unsigned status, const char *text)
{
	size_t len = strlen(text);
	char *body = malloc(len + 1);
	if (!body)
		return MHD_NO;
	memcpy(body, text, len + 1);
	return respond(c, status, body, len, "text/plain; charset=utf-8");
}

static enum MHD_Result serve_metrics(struct MHD_Connection *c)
{
	struct metrics_snapshot *s = malloc(sizeof(*s));
	if (!s)
		return MHD_NO;
	metrics_snapshot(s);
	s->gnutls_version = gnutls_check_version(NULL);
	s->libuv_version = uv_version_string();
	struct buf out = {0};
	bool ok = metrics_format(s, &out);
	free(s);
	if (!ok) {
		buf_free(&out);
		return respond_text(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
	}
	size_t len;
	char *body = buf_take(&out, &len);
	return respond(c, MHD_HTTP_OK, body, len, METRICS_CONTENT_TYPE);
}

/* A connection to the backend within timeout_s seconds: 0, or -1 with why. */
static int probe_backend(const struct sockaddr_storage *ss, unsigned len, unsigned timeout_s,
			 char *why, size_t whylen)
{
	int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		snprintf(why, whylen, "socket: %s", strerror(errno));
		return -1;
	}
	int rc = connect(fd, (const struct sockaddr *)ss, len);
	int err = rc == 0 ? 0 : errno;
	if (err == EINPROGRESS) {
		struct pollfd p = {.fd = fd, .events = POLLOUT};
		int n;
		do
			n = poll(&p, 1, (int)(timeout_s * 1000));
		while (n < 0 && errno == EINTR);
		if (n == 0) {
			err = ETIMEDOUT;
		} else if (n < 0) {
			err = errno;
		} else {
			socklen_t elen = sizeof(err);
			if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) < 0)
				err = errno;
		}
	}
	close(fd);
	if (err) {
		snprintf(why, whylen, "%s", strerror(err));
		return -1;
	}
	return 0;
}

static enum MHD_Result serve_healthz(struct MHD_Connection *c)
{
	char line[512];
	if (!metrics_ready())
		return respond_text(c, MHD_HTTP_SERVICE_UNAVAILABLE,
				    "unhealthy: not accepting sessions (starting or stopping)\n");
	struct sockaddr_storage ss;
	unsigned len, timeout;
	char text[300];
	if (!metrics_get_backend(&ss, &len, text, sizeof(text), &timeout))
		return respond_text(c, MHD_HTTP_SERVICE_UNAVAILABLE,
				    "unhealthy: backend not configured yet\n");
	uint64_t last = metrics_backend_last_ok(), now = now_ns();
	uint64_t window = 2ull * timeout * 1000000000u;
	if (last && now - last <= window) {
		snprintf(line, sizeof(line), "ok: backend %s accepted a connection %.1fs ago\n",
			 text, (double)(now - last) / 1e9);
		return respond_text(c, MHD_HTTP_OK, line);
	}
	char why[128];
	if (probe_backend(&ss, len, timeout, why, sizeof(why)) < 0) {
		snprintf(line, sizeof(line), "unhealthy: backend %s: %s\n", text, why);
		return respond_text(c, MHD_HTTP_SERVICE_UNAVAILABLE, line);
	}
	metrics_backend_ok_at(now_ns());
	snprintf(line, sizeof(line), "ok: backend %s accepted a probe connection\n", text);
	return respond_text(c, MHD_HTTP_OK, line);
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *c, const char *url,
			      const char *method, const char *version, const char *upload_data,
			      size_t *upload_data_size, void **con_cls)
{
	if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
		return respond_text(c, MHD_HTTP_METHOD_NOT_ALLOWED, "only GET and HEAD\n");
	if (strcmp(url, "/metrics") == 0)
		return serve_metrics(c);
	if (strcmp(url, "/healthz") == 0)
		return serve_healthz(c);
	return respond_text(c, MHD_HTTP_NOT_FOUND, "not found: try /metrics or /healthz\n");
}

struct metrics_http *metrics_http_start(const int *fds, size_t n, char *err, size_t errlen)
{
	struct metrics_http *h = calloc(1, sizeof(*h));
	if (h)
		h->daemons = calloc(n ? n : 1, sizeof(*h->daemons));
	if (!h || !h->daemons) {
		free(h);
		for (size_t i = 0; i < n; i++)
			close(fds[i]);
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	for (size_t i = 0; i < n; i++) {
		struct MHD_Daemon *d = MHD_start_daemon(
		    MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_POLL,
		    0, NULL, NULL, handle, NULL, MHD_OPTION_LISTEN_SOCKET, (MHD_socket)fds[i],
		    MHD_OPTION_CONNECTION_LIMIT, (unsigned)HTTP_CONNECTIONS,
		    MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)HTTP_TIMEOUT, MHD_OPTION_END);
		if (!d) {
			snprintf(err, errlen, "libmicrohttpd could not start on socket %d", fds[i]);
			for (size_t j = i; j < n; j++)
				close(fds[j]);
			metrics_http_stop(h);
			return NULL;
		}
		h->daemons[h->n++] = d;
	}
	return h;
}

void metrics_http_stop(struct metrics_http *h)
{
	if (!h)
		return;
	/* Each daemon closes the listening socket it was given. */
	for (size_t i = 0; i < h->n; i++)
		MHD_stop_daemon(h->daemons[i]);
	free(h->daemons);
	free(h);
}
