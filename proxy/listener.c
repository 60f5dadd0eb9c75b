/* listener.c — binding the listening sockets (listener.h). */
#include "proxy/listener.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int listener_bind(const struct tf_addr *addr, char *err, size_t errlen)
{
	int family = addr->ss.ss_family;
	int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		snprintf(err, errlen, "%s: socket: %s", addr->text, strerror(errno));
		return -1;
	}
	int on = 1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof(on)) < 0) {
		snprintf(err, errlen, "%s: SO_REUSEPORT: %s", addr->text, strerror(errno));
		close(fd);
		return -1;
	}
	/* "[::]:25" and "0.0.0.0:25" side by side: each socket one family. */
	if (family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof(on));
	if (bind(fd, (const struct sockaddr *)&addr->ss, addr->len) < 0) {
		snprintf(err, errlen, "%s: bind: %s", addr->text, strerror(errno));
		close(fd);
		return -1;
	}
	if (listen(fd, 1024) < 0) {
		snprintf(err, errlen, "%s: listen: %s", addr->text, strerror(errno));
		close(fd);
		return -1;
	}
	return fd;
}
