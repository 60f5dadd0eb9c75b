/* sink.c — the benchmark's SMTP backend: speaks just enough SMTP for a
 * proxy in front of it and throws message content away as fast as it can.
 *
 * One thread, epoll, non-blocking sockets on loopback. Greeting, EHLO/HELO
 * (PIPELINING, 8BITMIME), MAIL/RCPT/RSET/NOOP get 250, DATA gets 354 and
 * the content is skipped with memmem() up to CRLF.CRLF, then 250; QUIT gets
 * 221 and a close. Prints "port=N" on stdout once listening (port 0 picks
 * one).
 *
 * A benchmark tool, never installed and never a test: it must never become
 * the bottleneck it measures (no per-byte work but memmem), and never store
 * what it receives.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define READ_SIZE (256 * 1024)
#define LINE_MAX_ 4096

struct conn {
	int fd;
	bool data;	      /* inside message content */
	char tail[4];	      /* last bytes of content, for a split CRLF.CRLF */
	size_t tail_len;      /* content bytes seen so far, up to 4 */
	char line[LINE_MAX_]; /* an incomplete command line */
	size_t line_len;
};

static char rbuf[READ_SIZE + 8];

static void say(struct conn *c, const char *s)
{
	size_t n = strlen(s);
	/* Replies are tiny and the client waits for each: a short write on
	 * loopback does not happen in practice; if it does, the session dies
	 * and the load generator counts an error. */
	if (write(c->fd, s, n) != (ssize_t)n) {
		shutdown(c->fd, SHUT_RDWR);
	}
}

static void command(struct conn *c, const char *l, size_t n)
{
	char v[5] = {0};
	for (size_t i = 0; i < 4 && i < n; i++)
		v[i] = (char)(l[i] & ~0x20);
	if (!strcmp(v, "EHLO"))
		say(c, "250-sink.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 0\r\n");
	else if (!strcmp(v, "DATA")) {
		say(c, "354 go ahead\r\n");
		c->data = true;
		/* The content starts at a line start: a first line "." ends it. */
		memcpy(c->tail, "\r\n", 2);
		c->tail_len = 2;
	} else if (!strcmp(v, "QUIT")) {
		say(c, "221 bye\r\n");
		shutdown(c->fd, SHUT_WR);
	} else
		say(c, "250 ok\r\n");
}

/* Skips content in p; returns the bytes used up to and including the end of
 * data, or n when it is not in p. */
static size_t content(struct conn *c, const char *p, size_t n)
{
	/* The end may straddle the previous read: look at tail + start. */
	char win[8];
	size_t head = n < 4 ? n : 4;
	memcpy(win, c->tail, c->tail_len);
	memcpy(win + c->tail_len, p, head);
	const char *e = memmem(win, c->tail_len + head, "\r\n.\r\n", 5);
	if (e) {
		size_t end = (size_t)(e - win) + 5 - c->tail_len;
		c->data = false;
		say(c, "250 accepted\r\n");
		return end;
	}
	e = memmem(p, n, "\r\n.\r\n", 5);
	if (e) {
		c->data = false;
		say(c, "250 accepted\r\n");
		return (size_t)(e - p) + 5;
	}
	/* Keep the last four bytes (with what came before when n < 4). */
	char all[8];
	memcpy(all, c->tail, c->tail_len);
	memcpy(all + c->tail_len, p + n - head, head);
	size_t total = c->tail_len + head;
	size_t keep = total < 4 ? total : 4;
	memmove(c->tail, all + total - keep, keep);
	c->tail_len = keep;
	return n;
}

static bool handle(struct conn *c, char *p, size_t n)
{
	while (n) {
		if (c->data) {
			size_t used = content(c, p, n);
			p += used;
			n -= used;
			continue;
		}
		char *lf = memchr(p, '\n', n);
		size_t take = lf ? (size_t)(lf - p) + 1 : n;
		if (c->line_len + take > sizeof(c->line))
			return false;
		memcpy(c->line + c->line_len, p, take);
		c->line_len += take;
		p += take;
		n -= take;
		if (lf) {
			command(c, c->line, c->line_len);
			c->line_len = 0;
		}
	}
	return true;
}

int main(int argc, char **argv)
{
	int port = argc > 1 ? atoi(argv[1]) : 0;
	signal(SIGPIPE, SIG_IGN);
	int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
	int one = 1;
	setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(ls, (struct sockaddr *)&a, sizeof(a)) || listen(ls, 4096)) {
		perror("sink: bind");
		return 1;
	}
	socklen_t al = sizeof(a);
	getsockname(ls, (struct sockaddr *)&a, &al);
	printf("port=%d\n", ntohs(a.sin_port));
	fflush(stdout);

	int ep = epoll_create1(0);
	struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
	epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
	struct epoll_event evs[64];
	for (;;) {
		int k = epoll_wait(ep, evs, 64, -1);
		if (k < 0 && errno == EINTR)
			continue;
		for (int i = 0; i < k; i++) {
			struct conn *c = evs[i].data.ptr;
			if (!c) {
				int fd;
				while ((fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
					setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
					c = calloc(1, sizeof(*c));
					if (!c) {
						close(fd);
						continue;
					}
					c->fd = fd;
					struct epoll_event ce = {.events = EPOLLIN, .data.ptr = c};
					epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ce);
					say(c, "220 sink.test ESMTP\r\n");
				}
				continue;
			}
			for (;;) {
				ssize_t n = read(c->fd, rbuf, READ_SIZE);
				if (n < 0 && errno == EAGAIN)
					break;
				if (n <= 0 || !handle(c, rbuf, (size_t)n)) {
					close(c->fd);
					free(c);
					break;
				}
				if (n < READ_SIZE)
					break;
			}
		}
	}
}
