/* worker.c — one libuv loop per thread: listeners, sessions, stopping.
 *
 * Stopping (SPEC §6): the main thread sends stop_async; the worker closes
 * its listeners, and its loop ends when the last session is gone, or when
 * shutdown_timeout has passed and the remaining sessions got 421 4.3.2.
 * Never makes SMTP decisions; never touches another worker's state.
 */
#include "proxy/worker.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "proxy/log.h"
#include "proxy/outbound.h"
#include "proxy/readiness.h"
#include "proxy/session.h"

static void connection_cb(uv_stream_t *server, int status)
{
	struct listener *l = server->data;
	if (status < 0) {
		log_msg(TF_LOG_WARN, "event=accept_error worker=%u error=\"%s\"", l->worker->index,
			uv_strerror(status));
		return;
	}
	if (l->worker->stopping)
		return;
	if (l->kind == LISTENER_OUTBOUND)
		outbound_accept(l);
	else
		session_accept(l);
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

void worker_drop_connection(struct listener *l)
{
	/* No memory for a session: take the connection off the queue with a
	 * plain accept(2) and close it, so the listener keeps going and the
	 * client retries. Nothing here may allocate. */
	int fd = accept4(l->fd, NULL, NULL, SOCK_CLOEXEC);
	if (fd >= 0)
		close(fd);
	log_msg(TF_LOG_ERROR, "event=accept error=\"out of memory\" note=\"connection dropped\"");
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
	for (size_t i = 0; i < w->n_listeners; i++)
		if (!uv_is_closing((uv_handle_t *)&w->listeners[i].handle))
			uv_close((uv_handle_t *)&w->listeners[i].handle, NULL);
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
	for (size_t i = 0; i < n; i++) {
		struct listener *l = &w->listeners[i];
		l->worker = w;
		l->kind = kinds[i];
		l->fd = fds[i];
		uv_tcp_init(&w->loop, &l->handle);
		l->handle.data = l;
		if ((rc = uv_tcp_open(&l->handle, l->fd)) < 0 ||
		    (rc = uv_listen((uv_stream_t *)&l->handle, 1024, connection_cb)) < 0)
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
	free(w->listeners);
	w->listeners = NULL;
}
