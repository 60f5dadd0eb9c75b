/* readiness.c — the service manager's notifications (readiness.h) through
 * libsystemd's sd_notify.
 *
 * libsystemd is an optional dependency (meson option `systemd`): a build
 * without it compiles the same calls with empty bodies, and tlsfront then
 * runs as before under any supervisor (its unit is then Type=simple). That
 * is a build choice, not a stub waiting for code. Never reports an error
 * to its caller (a lost notification must not stop mail), never writes
 * anything but to $NOTIFY_SOCKET, never unsets it (a reload notifies too).
 */
#include "proxy/readiness.h"

#ifdef HAVE_SYSTEMD

#include <stdint.h>
#include <stdio.h>
#include <systemd/sd-daemon.h>
#include <time.h>

void readiness_ready(const char *status)
{
	if (!status) {
		sd_notify(0, "READY=1");
		return;
	}
	/* One STATUS= line: a newline in it would start another assignment. */
	char line[256];
	size_t i = 0;
	for (; status[i] && i < sizeof(line) - 1; i++)
		line[i] = status[i] == '\n' || status[i] == '\r' ? ' ' : status[i];
	line[i] = '\0';
	sd_notifyf(0, "READY=1\nSTATUS=%s", line);
}

void readiness_reloading(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	uint64_t usec = (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
	sd_notifyf(0, "RELOADING=1\nMONOTONIC_USEC=%llu\nSTATUS=reloading the configuration",
		   (unsigned long long)usec);
}

void readiness_stopping(void)
{
	sd_notify(0, "STOPPING=1\nSTATUS=stopping: sessions are finishing");
}

#else /* built without libsystemd: nothing to tell, nobody to tell it to */

void readiness_ready(const char *status)
{
}

void readiness_reloading(void)
{
}

void readiness_stopping(void)
{
}

#endif
