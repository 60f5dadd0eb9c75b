/* readiness.h — tells the service manager (systemd, Type=notify) where
 * tlsfront stands: ready to serve, reloading, stopping.
 *
 * Every call is a single datagram to $NOTIFY_SOCKET (sd_notify), made from
 * any thread; without $NOTIFY_SOCKET, or in a build without libsystemd,
 * every call does nothing. Never fails the caller (a lost notification must
 * not stop mail), never decides anything: the callers say when.
 */
#ifndef TLSFRONT_PROXY_READINESS_H
#define TLSFRONT_PROXY_READINESS_H

/* READY=1: every listener of every worker is bound and listening (at
 * start), or a reload has finished (taken by every worker, or failed and
 * the previous configuration still serves). status is a short line for
 * `systemctl status` (STATUS=); NULL sends none. */
void readiness_ready(const char *status);

/* RELOADING=1: SIGHUP has started a reload (with MONOTONIC_USEC, which
 * Type=notify-reload of later systemd versions asks for). */
void readiness_reloading(void);

/* STOPPING=1: SIGTERM or SIGINT; sessions are draining. */
void readiness_stopping(void);

#endif
