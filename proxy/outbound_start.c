/* outbound_start.c — how an outbound session begins: the accepted socket
 * of the legacy server, the next hop (configured, or the original
 * destination of a REDIRECT rule), its addresses tried in turn, and the
 * connect to the peer.
 *
 * Never makes an SMTP or TLS policy decision: outbound_nego and the machine
 * word every reply.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>

#include "proxy/address.h"
#include "proxy/conn_limits.h"
#include "proxy/log.h"
#include "proxy/metrics.h"
#include "proxy/outbound.h"
#include "proxy/outbound_priv.h"

#ifndef SO_ORIGINAL_DST
#define SO_ORIGINAL_DST 80 /* linux/netfilter_ipv4.h */
#endif
#ifndef IP6T_SO_ORIGINAL_DST
#define IP6T_SO_ORIGINAL_DST 80 /* linux/netfilter_ipv6/ip6_tables.h */
#endif

static atomic_ulong outbound_counter;

/* The peer address being tried did not take the connection (refused,
 * unreachable, timed out): the next address of the next hop is tried, as
 * Postfix does; after the last one (and on the plaintext retry, which goes
 * to the address that answered) the legacy server gets 421 4.4.1. */
void outbound_peer_connect_failed(struct outbound *s, const char *error)
{
	bool next = !s->retrying && s->dest_i + 1 < s->n_dests;
	log_msg(TF_LOG_WARN, "event=peer_unavailable id=%s peer=%s error=\"%s\"%s", s->id,
		s->peer_addr, error, next ? " next=address" : "");
	if (next) {
		conn_life_close_handle((uv_handle_t *)&s->peer[s->cur]);
		s->cur++;
		s->dest_i++;
		conn_life_arm(&s->life, s->app->cfg.outbound.connect_timeout);
		outbound_connect_peer(s);
		return;
	}
	s->peer_gone = true;
	outbound_nego_peer_unavailable(&s->nego);
	outbound_step(s);
}

static void connect_cb(uv_connect_t *req, int status)
{
	struct outbound *s = req->data;
	if (status == UV_ECANCELED || s->closing || req != &s->connect_req[s->cur])
		return;
	if (status < 0) {
		outbound_peer_connect_failed(s, uv_strerror(status));
		return;
	}
	s->peer_connected = true;
	s->peer_gone = false;
	uv_tcp_nodelay(&s->peer[s->cur], 1);
	if (s->retrying)
		outbound_nego_reconnected(&s->nego);
	conn_life_arm(&s->life, s->app->cfg.limits.idle_timeout);
	outbound_step(s);
}

void outbound_connect_peer(struct outbound *s)
{
	unsigned i = s->cur;
	struct sockaddr *dest = (struct sockaddr *)&s->dests[s->dest_i];
	uv_tcp_init(&s->life.worker->loop, &s->peer[i]);
	s->peer[i].data = s;
	s->peer_ep.stream = (uv_stream_t *)&s->peer[i];
	s->peer_open[i] = true;
	conn_life_ref(&s->life);
	s->connect_req[i].data = s;
	address_format(dest, s->peer_addr, sizeof(s->peer_addr));
	int rc = uv_tcp_connect(&s->connect_req[i], &s->peer[i], dest, connect_cb);
	if (rc != 0)
		outbound_peer_connect_failed(s, uv_strerror(rc));
}

static void gai_cb(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
	struct outbound *s = req->data;
	s->resolving = false;
	s->n_dests = 0;
	for (struct addrinfo *ai = status == 0 ? res : NULL;
	     ai && s->n_dests < OUTBOUND_MAX_ADDRESSES; ai = ai->ai_next)
		if (ai->ai_addrlen <= sizeof(s->dests[0]))
			memcpy(&s->dests[s->n_dests++], ai->ai_addr, ai->ai_addrlen);
	bool ok = s->n_dests > 0;
	uv_freeaddrinfo(res);
	if (!s->closing && !ok) {
		log_msg(TF_LOG_WARN, "event=peer_unavailable id=%s next_hop=%s error=\"%s\"", s->id,
			s->app->cfg.outbound.next_hop, status ? uv_strerror(status) : "no address");
		outbound_nego_peer_unavailable(&s->nego);
		outbound_step(s);
	} else if (!s->closing) {
		outbound_connect_peer(s);
	}
	/* Counted like a handle so that the session outlives the request. */
	conn_life_unref(&s->life);
}

static bool same_address(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
	if (a->ss_family != b->ss_family)
		return false;
	if (a->ss_family == AF_INET) {
		const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
		return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
	}
	const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
	return x->sin6_port == y->sin6_port &&
	       memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0;
}

/* SPEC §4.1 original-destination: where the legacy server meant to go
 * before the REDIRECT rule. */
static bool original_destination(struct outbound *s)
{
	uv_os_fd_t fd;
	if (uv_fileno((uv_handle_t *)&s->life.accepted, &fd) != 0)
		return false;
	struct sockaddr_storage *dest = &s->dests[0];
	socklen_t len = sizeof(*dest);
	struct sockaddr_storage local;
	socklen_t llen = sizeof(local);
	if (getsockname(fd, (struct sockaddr *)&local, &llen) != 0)
		return false;
	int rc = local.ss_family == AF_INET6
		     ? getsockopt(fd, SOL_IPV6, IP6T_SO_ORIGINAL_DST, dest, &len)
		     : getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, dest, &len);
	if (rc != 0) {
		log_msg(TF_LOG_WARN,
			"event=peer_unavailable id=%s error=\"no original destination: %s\"", s->id,
			uv_strerror(uv_translate_sys_error(errno)));
		return false;
	}
	/* Without a REDIRECT, conntrack reports our own listener: connecting
	 * there would loop. */
	if (same_address(dest, &local)) {
		log_msg(TF_LOG_WARN,
			"event=peer_unavailable id=%s error=\"no original destination: the "
			"connection was not redirected\"",
			s->id);
		return false;
	}
	s->n_dests = 1;
	return true;
}

/* Finds the next hop and connects; the greeting is relayed when it comes. */
static void start_peer(struct outbound *s)
{
	const char *hop = s->app->cfg.outbound.next_hop;
	conn_life_arm(&s->life, s->app->cfg.outbound.connect_timeout);
	if (strcmp(hop, "original-destination") == 0) {
		if (!original_destination(s)) {
			outbound_nego_peer_unavailable(&s->nego);
			outbound_step(s);
			return;
		}
		outbound_connect_peer(s);
		return;
	}
	unsigned port;
	if (config_split_hostport(hop, s->host, sizeof(s->host), &port) < 0) {
		outbound_nego_peer_unavailable(&s->nego);
		outbound_step(s);
		return;
	}
	struct sockaddr_in *in = (struct sockaddr_in *)&s->dests[0];
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&s->dests[0];
	s->n_dests = 1;
	if (inet_pton(AF_INET, s->host, &in->sin_addr) == 1) {
		in->sin_family = AF_INET;
		in->sin_port = htons((uint16_t)port);
		outbound_connect_peer(s);
		return;
	}
	if (inet_pton(AF_INET6, s->host, &in6->sin6_addr) == 1) {
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons((uint16_t)port);
		outbound_connect_peer(s);
		return;
	}
	char service[8];
	snprintf(service, sizeof(service), "%u", port);
	struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
	s->gai.data = s;
	snprintf(s->peer_addr, sizeof(s->peer_addr), "%s", hop);
	int rc = uv_getaddrinfo(&s->life.worker->loop, &s->gai, gai_cb, s->host, service, &hints);
	if (rc != 0) {
		log_msg(TF_LOG_WARN, "event=peer_unavailable id=%s next_hop=%s error=\"%s\"", s->id,
			hop, uv_strerror(rc));
		outbound_nego_peer_unavailable(&s->nego);
		outbound_step(s);
		return;
	}
	s->resolving = true;
	conn_life_ref(&s->life);
}

static void machine_config(const struct app *app, struct smtp_machine_config *mc)
{
	const struct tf_config *cfg = &app->cfg;
	memset(mc, 0, sizeof(*mc));
	/* Outbound (§4.2.3): tlsfront owns TLS towards the peer, so the legacy
	 * server is offered no STARTTLS; AUTH passes to the peer. */
	mc->tcp_auth = true;
	mc->tls_auth = true;
	mc->line_length = cfg->limits.line_length;
	mc->max_errors = cfg->limits.max_errors;
	mc->reject_bare = cfg->bare_newlines == TF_BARE_REJECT;
	mc->server_name = cfg->server_name;
	mc->milters = cfg->outbound.n_milters > 0;
}

void outbound_accept(struct listener *l, int fd)
{
	struct worker *w = l->worker;
	struct outbound *s = calloc(1, sizeof(*s));
	if (!s) {
		worker_drop_connection(l, fd);
		return;
	}
	conn_life_init(&s->life, w, outbound_timer_cb, outbound_free);
	snprintf(s->id, sizeof(s->id), "o%lx", atomic_fetch_add(&outbound_counter, 1) + 1);
	s->legacy_ep.stream = legacy_stream(s);
	s->app = w->app;
	app_ref(s->app);
	s->next = w->outbounds;
	if (w->outbounds)
		w->outbounds->prev = s;
	w->outbounds = s;
	snprintf(s->legacy_addr, sizeof(s->legacy_addr), "unknown");
	snprintf(s->peer_addr, sizeof(s->peer_addr), "none");
	snprintf(s->sni, sizeof(s->sni), "none");

	struct nego_config nc = {.policy = s->app->cfg.outbound.tls,
				 .line_length = s->app->cfg.limits.line_length,
				 .server_name = s->app->cfg.server_name};
	outbound_nego_init(&s->nego, &nc);
	struct smtp_machine_config mc;
	machine_config(s->app, &mc);
	smtp_machine_init(&s->machine, &mc);

	if (uv_tcp_open(&s->life.accepted, fd) != 0) {
		close(fd);
		s->closing = true;
		conn_life_close_now(&s->life);
		return;
	}
	uv_tcp_nodelay(&s->life.accepted, 1);
	if (conn_life_addresses(&s->life, s->id, &s->legacy_ss, NULL) != 0) {
		s->closing = true;
		conn_life_close_now(&s->life);
		return;
	}
	address_format((struct sockaddr *)&s->legacy_ss, s->legacy_addr, sizeof(s->legacy_addr));
	log_msg(TF_LOG_DEBUG, "event=connect id=%s listener=outbound client=%s", s->id,
		s->legacy_addr);
	/* A session from here on: it will end in outbound_close(). */
	metrics_inc(&outbound_mblock(s)->started[ML_OUTBOUND]);
	s->admitted = conn_limits_admit((struct sockaddr *)&s->legacy_ss);
	if (!s->admitted) {
		metrics_inc(&outbound_mblock(s)->refused[ML_OUTBOUND][REFUSAL_LIMIT]);
		log_msg(TF_LOG_INFO, "event=limit id=%s client=%s", s->id, s->legacy_addr);
		outbound_nego_limit(&s->nego);
		outbound_step(s);
		return;
	}
	start_peer(s);
	if (!s->closing)
		outbound_update_reads(s);
}
