/* conn_life.c — the lifecycle both session kinds share (conn_life.h).
 *
 * Handles and requests carry the owner in data; the owner starts with its
 * struct conn_life, so h->data is the conn_life too. Never decides why a
 * session closes; never frees anything but through release().
 */
#include "proxy/conn_life.h"

#include "proxy/log.h"

#define CONN_LIFE_LINGER_MS 10000 /* how long a closing peer may take to drain */

void conn_life_init(struct conn_life *l, struct worker *w, uv_timer_cb timeout,
		    void (*release)(struct conn_life *l))
{
	l->worker = w;
	l->release = release;
	l->timeout = timeout;
	l->start_ms = uv_now(&w->loop);
	uv_tcp_init(&w->loop, &l->accepted);
	l->accepted.data = l;
	l->open_handles++;
	uv_timer_init(&w->loop, &l->timer);
	l->timer.data = l;
	l->open_handles++;
	w->n_sessions++;
}

void conn_life_arm(struct conn_life *l, unsigned seconds)
{
	uv_timer_start(&l->timer, l->timeout, (uint64_t)seconds * 1000, 0);
}

double conn_life_seconds(const struct conn_life *l)
{
	return (double)(uv_now(&l->worker->loop) - l->start_ms) / 1000.0;
}

void conn_life_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
	struct conn_life *l = h->data;
	*b = uv_buf_init(l->worker->read_buf, sizeof(l->worker->read_buf));
}

void conn_life_ref(struct conn_life *l)
{
	l->open_handles++;
}

void conn_life_unref(struct conn_life *l)
{
	if (--l->open_handles > 0)
		return;
	struct worker *w = l->worker;
	l->release(l);
	worker_session_ended(w);
}

static void handle_closed_cb(uv_handle_t *h)
{
	conn_life_unref(h->data);
}

void conn_life_close_handle(uv_handle_t *h)
{
	if (!uv_is_closing(h))
		uv_close(h, handle_closed_cb);
}

int conn_life_addresses(struct conn_life *l, const char *id, struct sockaddr_storage *peer,
			struct sockaddr_storage *local)
{
	int len = sizeof(*peer);
	int rc = uv_tcp_getpeername(&l->accepted, (struct sockaddr *)peer, &len);
	if (rc == 0 && local) {
		len = sizeof(*local);
		rc = uv_tcp_getsockname(&l->accepted, (struct sockaddr *)local, &len);
	}
	if (rc != 0)
		log_msg(TF_LOG_DEBUG, "event=connect_lost id=%s error=\"%s\"", id, uv_strerror(rc));
	return rc;
}

void conn_life_close_now(struct conn_life *l)
{
	conn_life_close_handle((uv_handle_t *)&l->accepted);
	conn_life_close_handle((uv_handle_t *)&l->timer);
}

bool conn_life_begin_close(struct conn_life *l)
{
	if (uv_is_closing((uv_handle_t *)&l->accepted)) {
		conn_life_close_handle((uv_handle_t *)&l->timer);
		return false;
	}
	uv_read_stop((uv_stream_t *)&l->accepted);
	return true;
}

static void shutdown_cb(uv_shutdown_t *req, int status)
{
	conn_life_close_now(req->data);
}

/* A closing peer that does not take what we wrote is closed anyway. */
static void linger_cb(uv_timer_t *t)
{
	conn_life_close_now(t->data);
}

void conn_life_linger(struct conn_life *l, bool at_once)
{
	l->shutdown_req.data = l;
	if (at_once ||
	    uv_shutdown(&l->shutdown_req, (uv_stream_t *)&l->accepted, shutdown_cb) != 0) {
		conn_life_close_now(l);
		return;
	}
	uv_timer_start(&l->timer, linger_cb, CONN_LIFE_LINGER_MS, 0);
}
