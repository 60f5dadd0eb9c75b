/* worker.c — one libuv loop per thread: listeners, sessions, stopping.
 *
 * Stopping (SPEC §6): the main thread sends stop_async; the worker closes
 * its listeners, and its loop ends when the last session is gone, or when
 * shutdown_timeout has passed and the remaining sessions got 421 4.3.2.
 * Never makes SMTP decisions; never touches another worker's state.
 */
#include "proxy/worker.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "proxy/log.h"
#include "proxy/outbound.h"
#include "proxy/readiness.h"
#include "proxy/session.h"

/* ---- accepting ---------------------------------------------------------
 *
 * tlsfront accepts by itself (a uv_poll on the listening socket) instead of
 * with uv_listen (issue 15, test_abuse.py's connection flood). libuv 1.44
 * meets EMFILE in its accept loop (uv__server_io) with one reserve
 * descriptor per loop; with two or more workers another thread may take
 * the descriptor it frees for a moment, and then that loop calls accept(2)
 * and the connection callback again and again without ever returning to
 * the loop: measured, 2.4 CPU seconds in 5 s of flood under `ulimit -n 256`
 * and 700,000 log lines, and the worker's own sessions could no longer
 * close, so it never served again. Here:
 * - at most ACCEPT_BATCH connections per readiness event, so the sessions
 *   of the worker get their turn between batches;
 * - at EMFILE/ENFILE the worker lets its reserve descriptor go for one
 *   accept, tells that client 421 4.7.0 where it can read it
 *   (session_refuse_fd) and closes it;
 * - when that fails (no reserve: another thread took the descriptor), the
 *   listener pauses for ACCEPT_PAUSE_MS: the connections wait in the
 *   kernel's queue and no CPU is spent until descriptors come back;
 * - such refusals are logged at most once a second (event=accept_error
 *   with refused=N), never once per connection.
 */

#define ACCEPT_BATCH	64
#define ACCEPT_PAUSE_MS 100

static void accept_cb(uv_poll_t *p, int status, int events);

static void reserve_open(struct worker *w)
{
	if (w->reserve_fd < 0)
		w->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
}

static void log_refused(struct worker *w, const char *error, bool force)
{
	uint64_t now = uv_now(&w->loop);
	if ((!w->fd_refused && !w->fd_pauses) || (!force && now - w->fd_logged_ms < 1000))
		return;
	log_msg(TF_LOG_WARN,
		"event=accept_error worker=%u error=\"%s\" refused=%u pauses=%u note=\"no "
		"descriptor left: connections refused with 421 4.7.0, or left waiting\"",
		w->index, error, w->fd_refused, w->fd_pauses);
	w->fd_refused = 0;
	w->fd_pauses = 0;
	w->fd_logged_ms = now;
}

static void resume_cb(uv_timer_t *t)
{
	struct listener *l = t->data;
	if (l->worker->stopping)
		return;
	reserve_open(l->worker);
	uv_poll_start(&l->poll, UV_READABLE, accept_cb);
}

static void pause_accepting(struct listener *l)
{
	uv_poll_stop(&l->poll);
	uv_timer_start(&l->pause, resume_cb, ACCEPT_PAUSE_MS, 0);
}

/* Out of descriptors: one connection is taken with the reserve descriptor,
 * refused and closed. Returns false when the listener must pause. */
static bool refuse_one(struct listener *l, int err)
{
	struct worker *w = l->worker;
	if (w->reserve_fd < 0)
		return false;
	close(w->reserve_fd);
	w->reserve_fd = -1;
	int fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
	int accept_errno = errno;
	if (fd >= 0) {
		session_refuse_fd(l, fd);
		close(fd);
		w->fd_refused++;
	}
	reserve_open(w);
	log_refused(w, strerror(err), false);
	if (fd < 0 && (accept_errno == EAGAIN || accept_errno == EWOULDBLOCK))
		return true; /* the queue is empty */
	return fd >= 0 && w->reserve_fd >= 0;
}

static void accept_cb(uv_poll_t *p, int status, int events)
{
	struct listener *l = p->data;
	struct worker *w = l->worker;
	if (status < 0) {
		log_msg(TF_LOG_WARN, "event=accept_error worker=%u error=\"%s\"", w->index,
			uv_strerror(status));
		pause_accepting(l);
		return;
	}
	for (int i = 0; i < ACCEPT_BATCH && !w->stopping; i++) {
		int fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd >= 0) {
			if (l->kind == LISTENER_OUTBOUND)
				outbound_accept(l, fd);
			else
				session_accept(l, fd);
			continue;
		}
		int err = errno;
		if (err == EAGAIN || err == EWOULDBLOCK)
			return;
		if (err == EINTR || err == ECONNABORTED)
			continue;
		if (err == EMFILE || err == ENFILE) {
			if (refuse_one(l, err))
				continue;
			w->fd_pauses++;
			log_refused(w, strerror(err), false);
			pause_accepting(l);
			return;
		}
		/* ENOBUFS, ENOMEM, ...: wait a moment rather than spin. */
		log_msg(TF_LOG_WARN, "event=accept_error worker=%u error=\"%s\"", w->index,
			strerror(err));
		pause_accepting(l);
		return;
	}
}

void worker_drop_connection(struct listener *l, int fd)
{
	/* No memory for a session: close the connection, so the listener
	 * keeps going and the client retries. Nothing here may allocate. */
	(void)l;
	close(fd);
	log_msg(TF_LOG_ERROR, "event=accept error=\"out of memory\" note=\"connection dropped\"");
}

/* Closes the loop's own handles once nothing else is left. */
static void finish(struct worker *w)
{
	if (!uv_is_closing((uv_handle_t *)&w->stop_async))
		uv_close((uv_handle_t *)&w->stop_async, NULL);
	if (!uv_is_closing((uv_handle_t *)&w->reload_async))
		uv_close((uv_handle_t *)&w->reload_async, NULL);
	if (!uv_is_closing((uv_handle_t *)&w->shutdown_timer))
		uv_close((uv_handle_t *)&w->shutdown_timer, NULL);
}

void worker_session_ended(struct worker *w)
{
	w->n_sessions--;
	if (w->stopping && w->n_sessions == 0)
		finish(w);
}

static void shutdown_timer_cb(uv_timer_t *t)
{
	struct worker *w = t->data;
	struct session *s = w->sessions;
	while (s) {
		struct session *next = s->next; /* s stays alive until its close callbacks */
		session_shutdown(s);
		s = next;
	}
	for (struct outbound *o = w->outbounds, *next; o; o = next) {
		next = o->next;
		outbound_shutdown(o);
	}
}

static void stop_cb(uv_async_t *a)
{
	struct worker *w = a->data;
	if (w->stopping)
		return;
	w->stopping = true;
	for (size_t i = 0; i < w->n_listeners; i++) {
		struct listener *l = &w->listeners[i];
		if (uv_is_closing((uv_handle_t *)&l->poll))
			continue;
		uv_close((uv_handle_t *)&l->poll, NULL);
		uv_close((uv_handle_t *)&l->pause, NULL);
		close(l->fd); /* no longer polled: new connections are refused */
		l->fd = -1;
	}
	log_refused(w, "too many open files", true);
	if (w->n_sessions == 0) {
		finish(w);
		return;
	}
	log_msg(TF_LOG_INFO, "event=draining worker=%u sessions=%u", w->index, w->n_sessions);
	uv_timer_start(&w->shutdown_timer, shutdown_timer_cb,
		       (uint64_t)w->app->cfg.limits.shutdown_timeout * 1000, 0);
}

static void reload_cb(uv_async_t *a)
{
	struct worker *w = a->data;
	pthread_mutex_lock(&w->pending_lock);
	struct app *next = w->pending;
	w->pending = NULL;
	pthread_mutex_unlock(&w->pending_lock);
	if (!next)
		return;
	app_unref(w->app);
	w->app = next;
	/* A generation superseded before every worker took it never gets here
	 * on all of them: the later one logs its own line. */
	if (atomic_fetch_sub(&next->adopt_pending, 1) == 1) {
		char fp[128] = "";
		creds_fingerprint(next->creds, fp, sizeof(fp));
		log_msg(TF_LOG_INFO, "event=reload status=ok generation=%u certificate_sha256=%s",
			next->generation, fp);
		/* The reload has ended (main sent RELOADING=1). */
		char status[64];
		snprintf(status, sizeof(status), "serving: generation %u", next->generation);
		readiness_ready(status);
	}
}

void worker_reload(struct worker *w, struct app *app)
{
	app_ref(app);
	pthread_mutex_lock(&w->pending_lock);
	struct app *old = w->pending;
	w->pending = app;
	pthread_mutex_unlock(&w->pending_lock);
	app_unref(old);
	uv_async_send(&w->reload_async);
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	uv_run(&w->loop, UV_RUN_DEFAULT);
	return NULL;
}

int worker_start(struct worker *w, unsigned index, struct app *app, const int *fds,
		 const enum listener_kind *kinds, size_t n)
{
	w->index = index;
	app_ref(app);
	w->app = app;
	pthread_mutex_init(&w->pending_lock, NULL);
	int rc = uv_loop_init(&w->loop);
	if (rc < 0)
		return rc;
	w->listeners = calloc(n ? n : 1, sizeof(*w->listeners));
	if (!w->listeners)
		return -ENOMEM;
	w->n_listeners = n;
	uv_async_init(&w->loop, &w->stop_async, stop_cb);
	w->stop_async.data = w;
	uv_async_init(&w->loop, &w->reload_async, reload_cb);
	w->reload_async.data = w;
	uv_timer_init(&w->loop, &w->shutdown_timer);
	w->shutdown_timer.data = w;
	w->reserve_fd = -1;
	reserve_open(w);
	for (size_t i = 0; i < n; i++) {
		struct listener *l = &w->listeners[i];
		l->worker = w;
		l->kind = kinds[i];
		l->fd = fds[i]; /* main made it listen(2) */
		uv_timer_init(&w->loop, &l->pause);
		l->pause.data = l;
		if ((rc = uv_poll_init(&w->loop, &l->poll, l->fd)) < 0)
			return rc;
		l->poll.data = l;
		if ((rc = uv_poll_start(&l->poll, UV_READABLE, accept_cb)) < 0)
			return rc;
	}
	rc = pthread_create(&w->thread, NULL, worker_main, w);
	return rc ? -rc : 0;
}

void worker_stop(struct worker *w)
{
	uv_async_send(&w->stop_async);
}

void worker_join(struct worker *w)
{
	pthread_join(w->thread, NULL);
	uv_loop_close(&w->loop);
	chunk_pool_free(&w->pool); /* every write has called back */
	app_unref(w->app);
	app_unref(w->pending);
	w->app = w->pending = NULL;
	pthread_mutex_destroy(&w->pending_lock);
	if (w->reserve_fd >= 0)
		close(w->reserve_fd);
	w->reserve_fd = -1;
	free(w->listeners);
	w->listeners = NULL;
}
