/* session_start.c — how an inbound session begins: the accepted socket,
 * the PROXY header a balancer sends first, the client's limits, the start
 * of TLS on the TLS port, and the connect to the backend (with the PROXY
 * header tlsfront itself sends); and the 421 for a connection refused for
 * want of descriptors.
 *
 * Never makes an SMTP decision: the machine words every reply.
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "proxy/address.h"
#include "proxy/conn_limits.h"
#include "proxy/log.h"
#include "proxy/metrics.h"
#include "proxy/proxy_protocol.h"
#include "proxy/session.h"
#include "proxy/session_priv.h"

#define PROXY_HEADER_TIMEOUT 10 /* seconds for a balancer's PROXY header */

static atomic_ulong session_counter;

static bool send_proxy_header(struct session *s);
static void start_backend(struct session *s);

/* The backend could not be reached: the client gets 421 4.3.2 (§3.2). */
static void backend_unavailable(struct session *s, int uv_error)
{
	log_msg(TF_LOG_WARN, "event=backend_unavailable id=%s backend=%s error=\"%s\"", s->id,
		s->app->backend.text, uv_strerror(uv_error));
	metrics_inc(&session_mblock(s)->backend_failed[session_mlistener(s)]);
	s->backend_gone = true;
	smtp_machine_backend_unavailable(&s->machine);
	session_step(s);
}

static void connect_cb(uv_connect_t *req, int status)
{
	struct session *s = req->data;
	if (status == UV_ECANCELED || s->closing)
		return;
	if (status < 0) {
		backend_unavailable(s, status);
		return;
	}
	s->backend_connected = true;
	uint64_t now = uv_hrtime();
	metrics_backend_connected(session_mblock(s), now - s->connect_started, now);
	if (!s->app->backend.is_unix)
		uv_tcp_nodelay(&s->backend.tcp, 1);
	if (!send_proxy_header(s))
		return;
	conn_life_arm(&s->life, s->app->cfg.limits.idle_timeout);
	session_step(s);
}

static int backend_connect(struct session *s)
{
	const struct tf_addr *a = &s->app->backend;
	s->connect_started = uv_hrtime();
	uv_loop_t *loop = &s->life.worker->loop;
	s->connect_req.data = s;
	if (a->is_unix) {
		uv_pipe_init(loop, &s->backend.pipe, 0);
		s->backend.pipe.data = s;
		conn_life_ref(&s->life);
		s->backend_open = true;
		uv_pipe_connect(&s->connect_req, &s->backend.pipe,
				((const struct sockaddr_un *)&a->ss)->sun_path, connect_cb);
		return 0;
	}
	uv_tcp_init(loop, &s->backend.tcp);
	s->backend.tcp.data = s;
	conn_life_ref(&s->life);
	s->backend_open = true;
	return uv_tcp_connect(&s->connect_req, &s->backend.tcp, (const struct sockaddr *)&a->ss,
			      connect_cb);
}

/* backend.client_info = "proxy-v1"/"proxy-v2" (§3.3): the header is the
 * first thing the backend receives; its destination is the address the
 * client connected to. Returns false when the session was closed. */
static bool send_proxy_header(struct session *s)
{
	enum tf_client_info ci = s->app->cfg.backend.client_info;
	if (ci != TF_CLIENT_INFO_PROXY_V1 && ci != TF_CLIENT_INFO_PROXY_V2)
		return true;
	char *hdr = malloc(PP_HEADER_MAX);
	int n = -1;
	if (hdr && ci == TF_CLIENT_INFO_PROXY_V1)
		n = pp_build_v1((struct sockaddr *)&s->peer, (struct sockaddr *)&s->local, hdr,
				PP_HEADER_MAX);
	else if (hdr)
		n = pp_build_v2((struct sockaddr *)&s->peer, (struct sockaddr *)&s->local,
				(unsigned char *)hdr, PP_HEADER_MAX);
	if (n < 0) {
		free(hdr);
		log_msg(TF_LOG_ERROR,
			"event=proxy_header_error id=%s note=\"cannot describe "
			"client %s in a PROXY header\"",
			s->id, s->client_addr);
		smtp_machine_backend_unavailable(&s->machine);
		session_step(s);
		return false;
	}
	session_write_to(s, &s->backend_ep, hdr, (size_t)n);
	return !s->closing;
}

/* The client may now be greeted: over a limit it gets 421 4.7.0, else the
 * backend is connected and its greeting relayed. */
void session_after_greeting_ready(struct session *s)
{
	if (!s->admitted) {
		smtp_machine_limit(&s->machine);
		session_step(s);
		return;
	}
	start_backend(s);
}

/* Connects to the backend; the greeting is relayed when it comes. */
static void start_backend(struct session *s)
{
	int rc = backend_connect(s);
	if (rc != 0) {
		backend_unavailable(s, rc);
		return;
	}
	conn_life_arm(&s->life, s->app->cfg.backend.connect_timeout);
	session_update_reads(s);
}

static void machine_config(const struct app *app, enum listener_kind kind,
			   struct smtp_machine_config *mc)
{
	const struct tf_config *cfg = &app->cfg;
	memset(mc, 0, sizeof(*mc));
	mc->tls_port = kind == LISTENER_TLS;
	mc->starttls = cfg->inbound.tcp.starttls;
	mc->require_tls = cfg->inbound.tcp.require_tls;
	mc->tcp_auth = cfg->inbound.tcp.name_and_password;
	mc->tls_auth = cfg->inbound.tls.name_and_password;
	mc->line_length = cfg->limits.line_length;
	mc->max_errors = cfg->limits.max_errors;
	mc->reject_bare = cfg->bare_newlines == TF_BARE_REJECT;
	mc->server_name = cfg->server_name;
	mc->xclient = cfg->backend.client_info == TF_CLIENT_INFO_XCLIENT;
	mc->milters = cfg->inbound.n_milters > 0;
}

/* The client's address as XCLIENT writes it: "192.0.2.7", "IPV6:2001:db8::7". */
static void xclient_address(const struct sockaddr_storage *ss, char *out, size_t outlen,
			    unsigned *port)
{
	char ip[INET6_ADDRSTRLEN] = "";
	if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)ss;
		inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof(ip));
		snprintf(out, outlen, "IPV6:%s", ip);
	} else {
		const struct sockaddr_in *in = (const struct sockaddr_in *)ss;
		inet_ntop(AF_INET, &in->sin_addr, ip, sizeof(ip));
		snprintf(out, outlen, "%s", ip);
	}
	*port = address_port((const struct sockaddr *)ss);
}

/* The client's address is final (from the socket, or from the PROXY header):
 * count it against the limits, start the machine, then TLS or the backend. */
static void session_begin(struct session *s)
{
	const struct app *app = s->app;
	address_format((struct sockaddr *)&s->peer, s->client_addr, sizeof(s->client_addr));
	log_msg(TF_LOG_DEBUG, "event=connect id=%s listener=%s client=%s", s->id,
		s->kind == LISTENER_TLS ? "tls" : "tcp", s->client_addr);
	struct smtp_machine_config mc;
	machine_config(app, s->kind, &mc);
	if (mc.xclient)
		xclient_address(&s->peer, mc.xclient_addr, sizeof(mc.xclient_addr),
				&mc.xclient_port);
	smtp_machine_init(&s->machine, &mc);
	if (mc.milters)
		session_start_milters(s);
	/* A connection that held a place while its PROXY header was awaited
	 * hands that place to the address the header named. */
	s->admitted = s->held ? conn_limits_admit_held((struct sockaddr *)&s->peer)
			      : conn_limits_admit((struct sockaddr *)&s->peer);
	s->held = false;
	if (!s->admitted)
		log_msg(TF_LOG_INFO, "event=limit id=%s client=%s", s->id, s->client_addr);

	if (s->kind == LISTENER_TLS) {
		/* §3.1: on the TLS port the handshake comes first (a 421 for
		 * a limit too is sent over TLS, where the client can read it). */
		session_begin_tls(s);
		if (!s->closing)
			session_update_reads(s);
		return;
	}
	session_after_greeting_ready(s);
}

/* Reads the PROXY header a load balancer sends first (§3.3, §7.10): strict,
 * short timeout, and no reply at all when it is missing or malformed. */
void session_read_proxy_header(struct session *s, const char *p, size_t n)
{
	size_t room = PP_HEADER_MAX - s->pp_len;
	size_t take = n < room ? n : room;
	memcpy(s->pp_buf + s->pp_len, p, take);
	s->pp_len += take;
	struct pp_header h;
	size_t used = 0;
	enum pp_result r = pp_parse(s->pp_buf, s->pp_len, &h, &used);
	if (r == PP_MORE && take == n)
		return;
	if (r != PP_DONE) {
		log_msg(TF_LOG_INFO, "event=proxy_header_error id=%s balancer=%s", s->id,
			s->client_addr);
		session_close(s, CLOSE_ERROR);
		return;
	}
	s->awaiting_proxy = false;
	if (!h.local) {
		s->peer = h.src;
		s->local = h.dst;
	}
	/* What followed the header in this read belongs to the session. */
	size_t rest_in_buf = s->pp_len - used;
	char rest[PP_HEADER_MAX];
	memcpy(rest, s->pp_buf + used, rest_in_buf);
	free(s->pp_buf);
	s->pp_buf = NULL;
	session_begin(s);
	if (s->closing)
		return;
	if (rest_in_buf)
		session_client_bytes(s, rest, rest_in_buf);
	if (!s->closing && take < n)
		session_client_bytes(s, p + take, n - take);
}

void session_refuse_fd(struct listener *l, int fd)
{
	const struct app *app = l->worker->app;
	/* On the TLS port the client could not read a plaintext reply; a
	 * balancer (PROXY protocol) gets none either (as for max_connections). */
	if (l->kind == LISTENER_TLS ||
	    (l->kind == LISTENER_TCP && app->cfg.inbound.tcp.proxy_protocol))
		return;
	struct smtp_machine_config mc;
	machine_config(app, l->kind, &mc);
	struct smtp_machine m;
	smtp_machine_init(&m, &mc);
	smtp_machine_limit(&m); /* the reply of max_connections: 421 4.7.0 */
	size_t len;
	char *reply = buf_take(&m.act.to_client, &len);
	/* A fresh socket takes a short reply at once; one that would not is
	 * closed without it. */
	if (reply && len)
		(void)!send(fd, reply, len, MSG_DONTWAIT | MSG_NOSIGNAL);
	free(reply);
	smtp_machine_free(&m);
}

void session_accept(struct listener *l, int fd)
{
	struct worker *w = l->worker;
	struct session *s = calloc(1, sizeof(*s));
	if (!s) {
		/* Accept and drop: the client retries. */
		worker_drop_connection(l, fd);
		return;
	}
	conn_life_init(&s->life, w, session_timer_cb, session_free);
	s->kind = l->kind;
	snprintf(s->id, sizeof(s->id), "%lx", atomic_fetch_add(&session_counter, 1) + 1);
	s->client_ep.stream = client_stream(s);
	s->backend_ep.stream = backend_stream(s);
	s->app = w->app; /* this session keeps this generation to its end */
	app_ref(s->app);
	s->next = w->sessions;
	if (w->sessions)
		w->sessions->prev = s;
	w->sessions = s;
	snprintf(s->client_addr, sizeof(s->client_addr), "unknown");

	if (uv_tcp_open(&s->life.accepted, fd) != 0) {
		close(fd);
		s->closing = true; /* nothing to log: no connection came */
		conn_life_close_now(&s->life);
		return;
	}
	uv_tcp_nodelay(&s->life.accepted, 1);
	if (conn_life_addresses(&s->life, s->id, &s->peer, &s->local) != 0) {
		s->closing = true;
		conn_life_close_now(&s->life);
		return;
	}
	/* A session from here on: it will end in session_close(). */
	metrics_inc(&session_mblock(s)->started[session_mlistener(s)]);

	const struct tf_listener_config *lc =
	    l->kind == LISTENER_TLS ? &s->app->cfg.inbound.tls : &s->app->cfg.inbound.tcp;
	if (lc->proxy_protocol) {
		address_format((struct sockaddr *)&s->peer, s->client_addr, sizeof(s->client_addr));
		/* It counts toward max_connections from now on. Over it,
		 * close without a word: the balancer has not even sent the
		 * header, and it can try another instance. */
		s->held = conn_limits_hold();
		if (!s->held) {
			metrics_inc(
			    &session_mblock(s)->refused[session_mlistener(s)][REFUSAL_LIMIT]);
			log_msg(TF_LOG_INFO, "event=limit id=%s balancer=%s", s->id,
				s->client_addr);
			session_close(s, CLOSE_LIMIT);
			return;
		}
		s->pp_buf = malloc(PP_HEADER_MAX);
		if (!s->pp_buf) {
			session_close(s, CLOSE_ERROR);
			return;
		}
		s->awaiting_proxy = true;
		conn_life_arm(&s->life, PROXY_HEADER_TIMEOUT);
		session_update_reads(s);
		return;
	}
	session_begin(s);
}
