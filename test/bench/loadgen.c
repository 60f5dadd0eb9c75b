/* loadgen.c — the benchmark's SMTP client: N threads, each a STARTTLS
 * client (GnuTLS, TLS 1.3), driving a proxy on loopback.
 *
 * Modes:
 *   throughput  one session per client; MAIL, RCPT, DATA of --size bytes,
 *               again and again for --secs; prints the MB/s moved.
 *   sessions    whole sessions (EHLO, STARTTLS, EHLO, MAIL, RCPT, DATA of
 *               --size bytes, QUIT) again and again for --secs; prints
 *               sessions/s and the median and p90 session time.
 *   idle        opens --count sessions up to EHLO over TLS, prints "ready",
 *               holds them until stdin closes or says anything.
 * --quickack: TCP_NODELAY and TCP_QUICKACK on the client socket; without it
 * the client is an ordinary one (Nagle on, the kernel's delayed ACKs).
 * Output: one line of key=value pairs for compare.py.
 *
 * A benchmark tool, never installed and never a test: it checks replies only
 * as far as needed to count an error, and it must never verify certificates
 * or be used against anything but a local test setup.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <gnutls/gnutls.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum mode { M_THROUGHPUT, M_SESSIONS, M_IDLE };

static enum mode mode = M_THROUGHPUT;
static int port, clients = 1, count = 100;
static double secs = 5;
static size_t size = 10 * 1024 * 1024;
static bool quickack;
static char *body; /* the message (no line starts with a dot), then ".\r\n" */
static gnutls_certificate_credentials_t xcred;
static gnutls_priority_t prio;
static double t_end;

static atomic_ullong total_bytes, total_sessions, total_errors, total_messages;
static double *lat; /* session times, ms */
static atomic_size_t lat_len;
#define LAT_MAX 1000000

struct conn {
	int fd;
	gnutls_session_t tls; /* NULL before STARTTLS */
	char buf[8192];
	size_t len;
};

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void ack(struct conn *c)
{
	if (quickack) {
		int one = 1;
		setsockopt(c->fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof(one));
	}
}

/* Large sends over TLS: records of 16 KiB, corked 256 KiB at a time so
 * that the load generator makes one system call per 256 KiB, not per
 * record (it must not be the bottleneck it measures). */
static bool send_all(struct conn *c, const char *p, size_t n);

static bool send_corked(struct conn *c, const char *p, size_t n)
{
	while (n) {
		size_t slice = n < 256 * 1024 ? n : 256 * 1024;
		gnutls_record_cork(c->tls);
		for (size_t off = 0; off < slice;) {
			size_t k = slice - off < 16384 ? slice - off : 16384;
			ssize_t r = gnutls_record_send(c->tls, p + off, k);
			if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED)
				continue;
			if (r <= 0)
				return false;
			off += (size_t)r;
		}
		int rc;
		do {
			rc = gnutls_record_uncork(c->tls, GNUTLS_RECORD_WAIT);
		} while (rc == GNUTLS_E_AGAIN || rc == GNUTLS_E_INTERRUPTED);
		if (rc < 0)
			return false;
		p += slice;
		n -= slice;
	}
	return true;
}

static bool send_all(struct conn *c, const char *p, size_t n)
{
	if (c->tls && n > 16384)
		return send_corked(c, p, n);
	while (n) {
		ssize_t k;
		if (c->tls) {
			k = gnutls_record_send(c->tls, p, n < 16384 ? n : 16384);
			if (k == GNUTLS_E_AGAIN || k == GNUTLS_E_INTERRUPTED)
				continue;
		} else {
			k = send(c->fd, p, n, MSG_NOSIGNAL);
			if (k < 0 && errno == EINTR)
				continue;
		}
		if (k <= 0)
			return false;
		p += k;
		n -= (size_t)k;
	}
	return true;
}

/* Reads one reply (every line of a multi-line one); returns its code, or
 * -1 on a closed or failed connection. */
static int reply(struct conn *c)
{
	for (;;) {
		char *lf;
		while ((lf = memchr(c->buf, '\n', c->len))) {
			size_t l = (size_t)(lf - c->buf) + 1;
			int code = l >= 4 ? atoi(c->buf) : -1;
			bool last = l >= 4 && c->buf[3] != '-';
			memmove(c->buf, c->buf + l, c->len - l);
			c->len -= l;
			if (last)
				return code;
		}
		if (c->len == sizeof(c->buf))
			return -1;
		ssize_t k;
		if (c->tls) {
			k = gnutls_record_recv(c->tls, c->buf + c->len, sizeof(c->buf) - c->len);
			if (k == GNUTLS_E_AGAIN || k == GNUTLS_E_INTERRUPTED)
				continue;
		} else {
			k = recv(c->fd, c->buf + c->len, sizeof(c->buf) - c->len, 0);
			if (k < 0 && errno == EINTR)
				continue;
		}
		if (k <= 0)
			return -1;
		c->len += (size_t)k;
		ack(c);
	}
}

static bool cmd(struct conn *c, const char *line, int want)
{
	return send_all(c, line, strlen(line)) && reply(c) == want;
}

static void conn_close(struct conn *c)
{
	if (c->tls)
		gnutls_deinit(c->tls);
	if (c->fd >= 0)
		close(c->fd);
	c->tls = NULL;
	c->fd = -1;
}

/* Connects and goes as far as EHLO over TLS. */
static bool open_session(struct conn *c)
{
	c->len = 0;
	c->tls = NULL;
	c->fd = socket(AF_INET, SOCK_STREAM, 0);
	if (c->fd < 0)
		return false;
	int one = 1;
	if (quickack)
		setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (connect(c->fd, (struct sockaddr *)&a, sizeof(a)))
		return false;
	if (reply(c) != 220 || !cmd(c, "EHLO loadgen.test\r\n", 250) ||
	    !cmd(c, "STARTTLS\r\n", 220))
		return false;
	if (gnutls_init(&c->tls, GNUTLS_CLIENT) < 0)
		return false;
	gnutls_priority_set(c->tls, prio);
	gnutls_credentials_set(c->tls, GNUTLS_CRD_CERTIFICATE, xcred);
	gnutls_transport_set_int(c->tls, c->fd);
	gnutls_handshake_set_timeout(c->tls, GNUTLS_DEFAULT_HANDSHAKE_TIMEOUT);
	int rc;
	do {
		rc = gnutls_handshake(c->tls);
	} while (rc < 0 && !gnutls_error_is_fatal(rc));
	if (rc < 0)
		return false;
	ack(c);
	c->len = 0;
	return cmd(c, "EHLO loadgen.test\r\n", 250);
}

static bool message(struct conn *c)
{
	if (!cmd(c, "MAIL FROM:<a@loadgen.test>\r\n", 250) ||
	    !cmd(c, "RCPT TO:<b@sink.test>\r\n", 250) || !cmd(c, "DATA\r\n", 354))
		return false;
	/* Content and end of data in one go, as smtplib and most clients
	 * write them: a separate small write would stall on Nagle. */
	if (!send_all(c, body, size + 3) || reply(c) != 250)
		return false;
	atomic_fetch_add(&total_bytes, size);
	atomic_fetch_add(&total_messages, 1);
	return true;
}

static void *client(void *arg)
{
	(void)arg;
	struct conn *c = calloc(1, sizeof(*c));
	c->fd = -1;
	if (mode == M_THROUGHPUT) {
		if (!open_session(c)) {
			atomic_fetch_add(&total_errors, 1);
		} else {
			while (now() < t_end) {
				if (!message(c)) {
					atomic_fetch_add(&total_errors, 1);
					break;
				}
			}
			cmd(c, "QUIT\r\n", 221);
		}
		conn_close(c);
	} else {
		while (now() < t_end) {
			double t0 = now();
			bool ok = open_session(c) && message(c) && cmd(c, "QUIT\r\n", 221);
			conn_close(c);
			if (!ok) {
				atomic_fetch_add(&total_errors, 1);
				continue;
			}
			atomic_fetch_add(&total_sessions, 1);
			size_t i = atomic_fetch_add(&lat_len, 1);
			if (i < LAT_MAX)
				lat[i] = (now() - t0) * 1000;
		}
	}
	free(c);
	return NULL;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static void make_body(void)
{
	body = malloc(size + 3);
	memcpy(body + size, ".\r\n", 3);
	static const char text[] = "The quick brown fox jumps over the lazy dog; "
				   "a line of an ordinary message body 0123";
	size_t i = 0;
	while (i < size) {
		size_t left = size - i;
		if (left <= 2) {
			memcpy(body + i, "\r\n", left); /* size >= 2 assumed */
			body[size - 2] = '\r';
			body[size - 1] = '\n';
			break;
		}
		size_t l = sizeof(text) - 1;
		if (l > left - 2)
			l = left - 2;
		memcpy(body + i, text, l);
		memcpy(body + i + l, "\r\n", 2);
		i += l + 2;
	}
}

int main(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : "0";
		if (!strcmp(a, "--mode")) {
			mode = !strcmp(v, "sessions") ? M_SESSIONS
			       : !strcmp(v, "idle")   ? M_IDLE
						      : M_THROUGHPUT;
			i++;
		} else if (!strcmp(a, "--port")) {
			port = atoi(v);
			i++;
		} else if (!strcmp(a, "--clients")) {
			clients = atoi(v);
			i++;
		} else if (!strcmp(a, "--count")) {
			count = atoi(v);
			i++;
		} else if (!strcmp(a, "--secs")) {
			secs = atof(v);
			i++;
		} else if (!strcmp(a, "--size")) {
			size = (size_t)atoll(v);
			i++;
		} else if (!strcmp(a, "--quickack")) {
			quickack = true;
		} else {
			fprintf(stderr, "usage: loadgen --port N [--mode throughput|sessions|idle] "
					"[--clients N] [--secs S] [--size BYTES] [--count N] "
					"[--quickack]\n");
			return 2;
		}
	}
	if (size < 2)
		size = 2;
	signal(SIGPIPE, SIG_IGN);
	gnutls_global_init();
	gnutls_certificate_allocate_credentials(&xcred);
	gnutls_priority_init(&prio, "NORMAL:-VERS-ALL:+VERS-TLS1.3", NULL);
	make_body();
	lat = calloc(LAT_MAX, sizeof(*lat));

	if (mode == M_IDLE) {
		struct conn *cs = calloc((size_t)count, sizeof(*cs));
		int ok = 0;
		for (int i = 0; i < count; i++)
			ok += open_session(&cs[i]);
		printf("ready=%d errors=%d\n", ok, count - ok);
		fflush(stdout);
		char x;
		while (read(0, &x, 1) < 0 && errno == EINTR)
			;
		for (int i = 0; i < count; i++)
			conn_close(&cs[i]);
		return 0;
	}

	double t0 = now();
	t_end = t0 + secs;
	pthread_t *th = calloc((size_t)clients, sizeof(*th));
	for (int i = 0; i < clients; i++)
		pthread_create(&th[i], NULL, client, NULL);
	for (int i = 0; i < clients; i++)
		pthread_join(th[i], NULL);
	double el = now() - t0;
	size_t n = lat_len < LAT_MAX ? lat_len : LAT_MAX;
	qsort(lat, n, sizeof(*lat), cmp_double);
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	double cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
		     (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
	printf("cpu=%.3f secs=%.3f bytes=%llu mbps=%.1f messages=%llu sessions=%llu "
	       "sessions_per_s=%.1f "
	       "p50_ms=%.3f p90_ms=%.3f errors=%llu\n",
	       cpu, el, total_bytes, (double)total_bytes / el / 1e6, total_messages, total_sessions,
	       (double)total_sessions / el, n ? lat[n / 2] : 0.0, n ? lat[n * 9 / 10] : 0.0,
	       total_errors);
	return 0;
}
