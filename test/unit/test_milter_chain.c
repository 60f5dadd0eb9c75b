/* test_milter_chain.c — tests of proxy/milter/milter_chain.c over a real
 * libuv loop against fake milters written here: each fake is a thread with
 * blocking sockets on 127.0.0.1 (or a unix socket) that reads the chain's
 * packets and answers from a script. Every socket wait has a timeout
 * (SO_RCVTIMEO), every loop run a deadline, so a broken chain fails a test
 * instead of hanging it.
 * The message store and edits are the real ones (message_store.c,
 * message_edit.c).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <cmocka.h>

#include "proxy/milter/milter_chain.h"
#include "proxy/milter/milter_codec.h"

/* ==== The fake milter ====================================================== */

/* What the fake answers: for a command letter, the reply packets (raw,
 * concatenated) or NULL for 'c'; "" for no answer at all (a hang). */
struct answer {
	char cmd;
	const char *bytes;
	size_t len;
};

#define MAX_ANSWERS 8
#define SEEN_MAX    8192

struct fake {
	int lfd; /* listening socket */
	struct sockaddr_storage addr;
	char socket_text[128];
	uint32_t actions, protocol; /* its OPTNEG reply */
	struct answer answers[MAX_ANSWERS];
	size_t n_answers;
	unsigned skip_first; /* answers apply after this many packets of that cmd */
	char seen[SEEN_MAX]; /* command letters received, in order */
	size_t n_seen;
	struct buf macros;  /* every SMFIC_MACRO payload, '|'-separated */
	struct buf headers; /* "name: value|" of each SMFIC_HEADER */
	struct buf body;    /* the SMFIC_BODY bytes */
	struct buf args;    /* MAIL/RCPT strings, '|'-separated */
	pthread_t thread;
};

static bool read_full(int fd, void *p, size_t n)
{
	char *c = p;
	while (n) {
		ssize_t r = read(fd, c, n);
		if (r <= 0)
			return false;
		c += r;
		n -= (size_t)r;
	}
	return true;
}

static void write_packet(int fd, char cmd, const void *payload, size_t len)
{
	unsigned char head[5];
	uint32_t l = htonl((uint32_t)len + 1);
	memcpy(head, &l, 4);
	head[4] = (unsigned char)cmd;
	/* No cmocka asserts in this thread: a short write shows in the test. */
	if (write(fd, head, 5) == 5 && len)
		(void)!write(fd, payload, len);
}

static void append_strings(struct buf *b, const char *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		buf_append(b, p[i] ? &p[i] : "|", 1);
}

static void *fake_run(void *arg)
{
	struct fake *f = arg;
	int fd = accept(f->lfd, NULL, NULL);
	if (fd < 0)
		return NULL;
	struct timeval tv = {5, 0};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	static __thread char payload[70000];
	for (;;) {
		uint32_t l;
		if (!read_full(fd, &l, 4))
			break;
		l = ntohl(l);
		if (l == 0 || l > sizeof(payload) + 1)
			break;
		char cmd;
		if (!read_full(fd, &cmd, 1) || !read_full(fd, payload, l - 1))
			break;
		size_t n = l - 1;
		if (f->n_seen < SEEN_MAX - 1)
			f->seen[f->n_seen++] = cmd;
		if (cmd == SMFIC_QUIT)
			break;
		if (cmd == SMFIC_OPTNEG) {
			uint32_t v[3] = {htonl(6), htonl(f->actions), htonl(f->protocol)};
			write_packet(fd, SMFIR_OPTNEG, v, sizeof(v));
			continue;
		}
		if (cmd == SMFIC_MACRO) {
			append_strings(&f->macros, payload, n);
			continue;
		}
		if (cmd == SMFIC_ABORT)
			continue;
		if (cmd == SMFIC_HEADER) {
			buf_append(&f->headers, payload, strlen(payload));
			buf_append(&f->headers, ": ", 2);
			buf_append_str(&f->headers, payload + strlen(payload) + 1);
			buf_append(&f->headers, "|", 1);
		}
		if (cmd == SMFIC_BODY)
			buf_append(&f->body, payload, n);
		if (cmd == SMFIC_MAIL || cmd == SMFIC_RCPT)
			append_strings(&f->args, payload, n);
		/* No reply where the milter asked for none. */
		if ((cmd == SMFIC_CONNECT && (f->protocol & SMFIP_NR_CONN)) ||
		    (cmd == SMFIC_HELO && (f->protocol & SMFIP_NR_HELO)) ||
		    (cmd == SMFIC_MAIL && (f->protocol & SMFIP_NR_MAIL)) ||
		    (cmd == SMFIC_RCPT && (f->protocol & SMFIP_NR_RCPT)) ||
		    (cmd == SMFIC_HEADER && (f->protocol & SMFIP_NR_HDR)) ||
		    (cmd == SMFIC_BODY && (f->protocol & SMFIP_NR_BODY)))
			continue;
		const struct answer *a = NULL;
		for (size_t i = 0; i < f->n_answers; i++)
			if (f->answers[i].cmd == cmd)
				a = &f->answers[i];
		if (!a || !a->bytes) {
			write_packet(fd, SMFIR_CONTINUE, NULL, 0);
			continue;
		}
		if (a->len && write(fd, a->bytes, a->len) != (ssize_t)a->len)
			break;
	}
	close(fd);
	return NULL;
}

static void fake_start(struct fake *f)
{
	f->lfd = socket(AF_INET, SOCK_STREAM, 0);
	assert_true(f->lfd >= 0);
	struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	assert_int_equal(bind(f->lfd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	assert_int_equal(listen(f->lfd, 4), 0);
	socklen_t sl = sizeof(sin);
	getsockname(f->lfd, (struct sockaddr *)&sin, &sl);
	snprintf(f->socket_text, sizeof(f->socket_text), "inet:127.0.0.1:%u", ntohs(sin.sin_port));
	assert_int_equal(pthread_create(&f->thread, NULL, fake_run, f), 0);
}

static void fake_start_unix(struct fake *f, const char *path)
{
	f->lfd = socket(AF_UNIX, SOCK_STREAM, 0);
	assert_true(f->lfd >= 0);
	struct sockaddr_un sun = {.sun_family = AF_UNIX};
	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", path);
	unlink(path);
	assert_int_equal(bind(f->lfd, (struct sockaddr *)&sun, sizeof(sun)), 0);
	assert_int_equal(listen(f->lfd, 4), 0);
	snprintf(f->socket_text, sizeof(f->socket_text), "unix:%s", path);
	assert_int_equal(pthread_create(&f->thread, NULL, fake_run, f), 0);
}

static void fake_end(struct fake *f)
{
	pthread_join(f->thread, NULL);
	close(f->lfd);
	f->seen[f->n_seen] = '\0';
	buf_append(&f->macros, "", 1);
	buf_append(&f->headers, "", 1);
	buf_append(&f->args, "", 1);
}

static void fake_free(struct fake *f)
{
	buf_free(&f->macros);
	buf_free(&f->headers);
	buf_free(&f->body);
	buf_free(&f->args);
}

/* ==== The session side ====================================================== */

struct session {
	uv_loop_t loop;
	struct milter_chain *chain;
	struct milter_session_info info;
	struct tf_milter_config conf[3];
	bool in_call; /* inside an event function */
	bool got;
	struct milter_verdict v;
	char milter[64];
};

static void on_done(void *owner, const struct milter_verdict *v)
{
	struct session *s = owner;
	assert_false(s->in_call); /* never re-entrant */
	assert_false(s->got);
	s->got = true;
	s->v = *v;
	uv_stop(&s->loop); /* wait_done's uv_run returns */
	snprintf(s->milter, sizeof(s->milter), "%s", v->milter ? v->milter : "");
}

static void session_init(struct session *s, size_t n, const char *const *sockets,
			 enum tf_milter_action def, unsigned timeout)
{
	memset(s, 0, sizeof(*s));
	assert_int_equal(uv_loop_init(&s->loop), 0);
	for (size_t i = 0; i < n; i++) {
		s->conf[i].name = NULL;
		s->conf[i].socket = (char *)sockets[i];
		s->conf[i].default_action = def;
		s->conf[i].timeout = timeout;
		s->conf[i].connect_timeout = timeout;
	}
	s->info.server_name = "mx.test";
	s->info.daemon_name = "tlsfront";
	s->info.client_name = "[192.0.2.7]";
	snprintf(s->info.client_addr, sizeof(s->info.client_addr), "192.0.2.7");
	s->info.client_port = 4242;
	s->info.client_family = AF_INET;
	snprintf(s->info.if_addr, sizeof(s->info.if_addr), "198.51.100.1");
	snprintf(s->info.queue_id, sizeof(s->info.queue_id), "S1.1");
	s->info.tls_version = "TLS1.3";
	s->chain = milter_chain_new(&s->loop, s->conf, n, &s->info, "S1", on_done, s);
	assert_non_null(s->chain);
}

static void on_guard(uv_timer_t *t)
{
	bool *expired = t->data;
	*expired = true;
	uv_stop(t->loop);
}

/* Runs the loop until done is called (at most 10 s). */
static void wait_done(struct session *s)
{
	bool expired = false;
	uv_timer_t guard;
	uv_timer_init(&s->loop, &guard);
	guard.data = &expired;
	uv_timer_start(&guard, on_guard, 10000, 0);
	while (!s->got && !expired)
		uv_run(&s->loop, UV_RUN_DEFAULT);
	uv_close((uv_handle_t *)&guard, NULL);
	uv_run(&s->loop, UV_RUN_NOWAIT); /* the guard's close */
	assert_false(expired);
	s->got = false;
}

#define EVENT(s, call)                                                                             \
	do {                                                                                       \
		(s)->in_call = true;                                                               \
		call;                                                                              \
		(s)->in_call = false;                                                              \
		assert_false((s)->got);                                                            \
		wait_done(s);                                                                      \
	} while (0)

static void session_end(struct session *s)
{
	milter_chain_close(s->chain);
	uv_run(&s->loop, UV_RUN_DEFAULT);
	assert_int_equal(uv_loop_close(&s->loop), 0);
}

/* ==== Tests ================================================================= */

static void test_negotiation_and_continue(void **state)
{
	(void)state;
	struct fake f = {.actions = SMFIF_ADDHDRS, .protocol = 0};
	fake_start(&f);
	const char *sock[] = {f.socket_text};
	struct session s;
	session_init(&s, 1, sock, TF_MILTER_TEMPFAIL, 5);
	EVENT(&s, milter_chain_connect(s.chain));
	assert_int_equal(s.v.kind, MILTER_CONTINUE);
	assert_null(s.v.milter);
	EVENT(&s, milter_chain_helo(s.chain, "client.test"));
	assert_int_equal(s.v.kind, MILTER_CONTINUE);
	EVENT(&s, milter_chain_mail(s.chain, "<a@b.test> SIZE=100"));
	assert_int_equal(s.v.kind, MILTER_CONTINUE);
	EVENT(&s, milter_chain_rcpt(s.chain, "<c@d.test>"));
	EVENT(&s, milter_chain_data(s.chain));
	assert_int_equal(s.v.kind, MILTER_CONTINUE);
	milter_chain_abort(s.chain);
	session_end(&s);
	fake_end(&f);
	assert_string_equal(f.seen, "ODCDHDMDRTAQ");
	assert_non_null(strstr(f.macros.data, "Cj|mx.test|_|[192.0.2.7]|{daemon_name}|tlsfront|"
					      "{if_addr}|198.51.100.1|{client_addr}|192.0.2.7|"
					      "{client_port}|4242|"));
	assert_non_null(strstr(f.macros.data, "H{tls_version}|TLS1.3|"));
	assert_non_null(strstr(f.macros.data, "Mi|S1.1|{mail_addr}|a@b.test|"));
	assert_non_null(strstr(f.macros.data, "R{rcpt_addr}|c@d.test|"));
	assert_string_equal(f.args.data, "<a@b.test>|SIZE=100|<c@d.test>|");
	fake_free(&f);
}

static void test_reject_rcpt_replycode(void **state)
{
	(void)state;
	static const char y[] = "\0\0\0\x1dy550 5.1.1 No such user here\0";
	struct fake f = {.answers = {{SMFIC_RCPT, y, sizeof(y) - 1}}, .n_answers = 1};
	fake_start(&f);
	const char *sock[] = {f.socket_text};
	struct session s;
	session_init(&s, 1, sock, TF_MILTER_TEMPFAIL, 5);
	s.conf[0].name = "policy";
	EVENT(&s, milter_chain_connect(s.chain));
	EVENT(&s, milter_chain_helo(s.chain, "client.test"));
	EVENT(&s, milter_chain_mail(s.chain, "<a@b.test>"));
	EVENT(&s, milter_chain_rcpt(s.chain, "<nobody@d.test>"));
	assert_int_equal(s.v.kind, MILTER_REJECT);
	assert_string_equal(s.v.reply, "550 5.1.1 No such user here\r\n");
	assert_string_equal(s.milter, "policy");
	/* The milter stays in: the next recipient is asked again. */
	EVENT(&s, milter_chain_rcpt(s.chain, "<other@d.test>"));
	assert_int_equal(s.v.kind, MILTER_REJECT);
	session_end(&s);
	fake_end(&f);
	assert_string_equal(f.seen, "ODCDHDMDRDRQ");
	fake_free(&f);
}

static void test_plain_verdicts(void **state)
{
	(void)state;
	static const char r[] = "\0\0\0\x01r", t[] = "\0\0\0\x01t",
			  d[] = "\0\0\0\x01"
				"d";
	struct fake f = {.answers = {{SMFIC_HELO, t, 5}, {SMFIC_MAIL, r, 5}, {SMFIC_RCPT, d, 5}},
			 .n_answers = 3};
	fake_start(&f);
	const char *sock[] = {f.socket_text};
	struct session s;
	session_init(&s, 1, sock, TF_MILTER_ACCEPT, 5);
	EVENT(&s, milter_chain_connect(s.chain));
	EVENT(&s, milter_chain_helo(s.chain, "x"));
	assert_int_equal(s.v.kind, MILTER_TEMPFAIL);
	assert_string_equal(s.v.reply, "451 4.7.1 Service unavailable - try again later\r\n");
	EVENT(&s, milter_chain_mail(s.chain, "<a@b>"));
	assert_int_equal(s.v.kind, MILTER_REJECT);
	assert_string_equal(s.v.reply, "550 5.7.1 Command rejected\r\n");
	EVENT(&s, milter_chain_mail(s.chain, "<a@b>"));
	EVENT(&s, milter_chain_rcpt(s.chain, "<c@d>"));
	assert_int_equal(s.v.kind, MILTER_DISCARD);
	/* The discard holds for the rest of the message, without asking. */
	EVENT(&s, milter_chain_data(s.chain));
	assert_int_equal(s.v.kind, MILTER_DISCARD);
	milter_chain_abort(s.chain);
	session_end(&s);
	fake_end(&f);
	assert_string_equal(f.seen, "ODCDHDMDMDRAQ");
	fake_free(&f);
}

static void test_timeout_default_action(void **state)
{
	(void)state;
	struct fake f = {.answers = {{SMFIC_HELO, "", 0}}, .n_answers = 1}; /* never answers */
	f.answers[0].bytes = "";
	fake_start(&f);
	const char *sock[] = {f.socket_text};
	struct session s;
	session_init(&s, 1, sock, TF_MILTER_REJECT, 1);
	EVENT(&s, milter_chain_connect(s.chain));
	assert_int_equal(s.v.kind, MILTER_CONTINUE);
	uint64_t t0 = uv_now(&s.loop);
	EVENT(&s, milter_chain_helo(s.chain, "x"));
	assert_true(uv_now(&s.loop) - t0 >= 900);
	assert_int_equal(s.v.kind, MILTER_REJECT);
	assert_string_equal(s.v.reply, "550 5.7.1 Command rejected\r\n");
	/* A failed milter keeps answering its default action, without I/O. */
	EVENT(&s, milter_chain_mail(s.chain, "<a@b>"));
	assert_int_equal(s.v.kind, MILTER_REJECT);
	session_end(&s);
	fake_end(&f);
	assert_string_equal(f.seen, "ODCDH");
	fake_free(&f);
}

static void test_unreachable(void **state)
{
	(void)state;
	/* A port nobody listens on: bind one, close it. */
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	socklen_t sl = sizeof(sin);
	getsockname(fd, (struct sockaddr *)&sin, &sl);
	close(fd);
	char inet[64];
	snprintf(inet, sizeof(inet), "inet:127.0.0.1:%u", ntohs(sin.sin_port));

	const char *accept_sock[] = {inet, "unix:/nonexistent/milter.sock"};
	struct session s;
	session_init(&s, 2, accept_sock, TF_MILTER_ACCEPT, 2);
	EVENT(&s, milter_chain_connect(s.chain));
	assert_int_equal(s.v.kind, MILTER_CONTINUE);
	EVENT(&s, milter_chain_helo(s.chain, "x"));
	assert_int_equal(s.v.kind, MILTER_CONTINUE);
	session_end(&s);

	const char *temp_sock[] = {inet};
	session_init(&s, 1, temp_sock, TF_MILTER_TEMPFAIL, 2);
	EVENT(&s, milter_chain_connect(s.chain));
	assert_int_equal(s.v.kind, MILTER_TEMPFAIL);
	assert_string_equal(s.v.reply, "451 4.7.1 Service unavailable - try again later\r\n");
	assert_string_equal(s.milter, inet);
	session_end(&s);

	const char *bad_sock[] = {"tcp:nowhere"};
	session_init(&s, 1, bad_sock, TF_MILTER_REJECT, 2);
	EVENT(&s, milter_chain_connect(s.chain));
	assert_int_equal(s.v.kind, MILTER_REJECT);
	session_end(&s);
}

static const char message[] = "Subject: hello\r\n"
			      "From: a@b.test\r\n"
			      "\r\n"
			      "line 1\r\n"
			      "line 2\r\n";

static void test_eom_edits(void **state)
{
	(void)state;
	static const char eob[] = "\0\0\0\x11hX-Scanned\0clean\0"
				  "\0\0\0\x0b"
				  "bnew body\r\n"
				  "\0\0\0\x01p"
				  "\0\0\0\x07+<x@y>\0"
				  "\0\0\0\x01"
				  "a";
	struct fake f = {.actions = SMFIF_ADDHDRS | SMFIF_CHGBODY | SMFIF_ADDRCPT,
			 .answers = {{SMFIC_BODYEOB, eob, sizeof(eob) - 1}},
			 .n_answers = 1};
	fake_start(&f);
	const char *sock[] = {f.socket_text};
	struct session s;
	session_init(&s, 1, sock, TF_MILTER_TEMPFAIL, 5);
	EVENT(&s, milter_chain_connect(s.chain));
	EVENT(&s, milter_chain_helo(s.chain, "x"));
	EVENT(&s, milter_chain_mail(s.chain, "<a@b.test>"));
	EVENT(&s, milter_chain_rcpt(s.chain, "<c@d.test>"));
	EVENT(&s, milter_chain_data(s.chain));
	struct message_store msg;
	message_store_init(&msg, MESSAGE_STORE_MEM_DEFAULT, 0, NULL);
	message_store_append(&msg, message, sizeof(message) - 1);
	struct message_edits e;
	message_edits_init(&e, MESSAGE_STORE_MEM_DEFAULT, 0, NULL);
	EVENT(&s, milter_chain_eom(s.chain, &msg, &e));
	assert_int_equal(s.v.kind, MILTER_CONTINUE);
	assert_int_equal(e.n_headers, 1);
	assert_int_equal(e.headers[0].kind, HEADER_ADD);
	assert_string_equal(e.headers[0].name, "X-Scanned");
	assert_string_equal(e.headers[0].value, "clean");
	assert_true(e.replace_body);
	assert_int_equal(e.body.mem.len, 10);
	assert_memory_equal(e.body.mem.data, "new body\r\n", 10);
	assert_int_equal(e.n_add, 1);
	assert_string_equal(e.add_rcpts[0].addr, "<x@y>");
	session_end(&s);
	fake_end(&f);
	assert_string_equal(f.seen, "ODCDHDMDRTLLNBDEQ");
	assert_string_equal(f.headers.data, "Subject: hello|From: a@b.test|");
	assert_int_equal(f.body.len, 16);
	assert_memory_equal(f.body.data, "line 1\r\nline 2\r\n", 16);
	assert_non_null(strstr(f.macros.data, "Ei|S1.1|"));
	message_edits_free(&e);
	message_store_free(&msg);
	fake_free(&f);
}

/* Two milters: the second sees the first one's header; flags are honoured
 * (no HELO, no reply to headers or MAIL); an edit not negotiated is a
 * protocol error (default action). */
static void test_two_milters_flags(void **state)
{
	(void)state;
	static const char eob1[] = "\0\0\0\x09hX-One\0"
				   "1\0"
				   "\0\0\0\x01"
				   "c";
	static const char eob2[] = "\0\0\0\x08hX-Two\0\0"
				   "\0\0\0\x01"
				   "c";
	struct fake f1 = {.actions = SMFIF_ADDHDRS,
			  .protocol = SMFIP_NOHELO | SMFIP_NR_HDR | SMFIP_NR_MAIL | SMFIP_NOBODY,
			  .answers = {{SMFIC_BODYEOB, eob1, sizeof(eob1) - 1}},
			  .n_answers = 1};
	struct fake f2 = {
	    .actions = 0, .answers = {{SMFIC_BODYEOB, eob2, sizeof(eob2) - 1}}, .n_answers = 1};
	fake_start(&f1);
	char path[64];
	snprintf(path, sizeof(path), "/tmp/tf-milter-test-%d.sock", (int)getpid());
	fake_start_unix(&f2, path);
	const char *sock[] = {f1.socket_text, f2.socket_text};
	struct session s;
	session_init(&s, 2, sock, TF_MILTER_TEMPFAIL, 5);
	s.info.client_family = AF_INET6;
	snprintf(s.info.client_addr, sizeof(s.info.client_addr), "2001:db8::1");
	EVENT(&s, milter_chain_connect(s.chain));
	EVENT(&s, milter_chain_helo(s.chain, "x"));
	EVENT(&s, milter_chain_mail(s.chain, "<a@b.test>"));
	EVENT(&s, milter_chain_rcpt(s.chain, "<c@d.test>"));
	EVENT(&s, milter_chain_data(s.chain));
	struct message_store msg;
	message_store_init(&msg, MESSAGE_STORE_MEM_DEFAULT, 0, NULL);
	message_store_append(&msg, message, sizeof(message) - 1);
	struct message_edits e;
	message_edits_init(&e, MESSAGE_STORE_MEM_DEFAULT, 0, NULL);
	EVENT(&s, milter_chain_eom(s.chain, &msg, &e));
	/* The second milter may not add headers: its default, tempfail. */
	assert_int_equal(s.v.kind, MILTER_TEMPFAIL);
	assert_string_equal(s.milter, f2.socket_text);
	assert_int_equal(e.n_headers, 1);
	session_end(&s);
	fake_end(&f1);
	fake_end(&f2);
	unlink(path);
	assert_string_equal(f1.seen, "ODCDMDRTLLNDEQ");
	assert_string_equal(f2.seen, "ODCDHDMDRTLLLNBDE");
	assert_string_equal(f2.headers.data, "Subject: hello|From: a@b.test|X-One: 1|");
	message_edits_free(&e);
	message_store_free(&msg);
	fake_free(&f1);
	fake_free(&f2);
}

/* Accept at connect leaves the milter out for the session; a close in the
 * middle of an event calls nothing back. */
static void test_accept_and_close_midway(void **state)
{
	(void)state;
	static const char a[] = "\0\0\0\x01"
				"a";
	struct fake f = {.answers = {{SMFIC_CONNECT, a, 5}}, .n_answers = 1};
	fake_start(&f);
	struct fake g = {.answers = {{SMFIC_HELO, "", 0}}, .n_answers = 1};
	g.answers[0].bytes = "";
	fake_start(&g);
	const char *sock[] = {f.socket_text, g.socket_text};
	struct session s;
	session_init(&s, 2, sock, TF_MILTER_TEMPFAIL, 5);
	EVENT(&s, milter_chain_connect(s.chain));
	assert_int_equal(s.v.kind, MILTER_CONTINUE);
	milter_chain_helo(s.chain, "x");
	for (int i = 0; i < 20; i++)
		uv_run(&s.loop, UV_RUN_NOWAIT);
	assert_false(s.got);
	session_end(&s);
	assert_false(s.got);
	fake_end(&f);
	fake_end(&g);
	assert_string_equal(f.seen, "ODCQ");
	assert_string_equal(g.seen, "ODCDHQ");
	fake_free(&f);
	fake_free(&g);
}

/* A name resolved (inet:localhost:PORT), a body of two chunks cut short by
 * SMFIR_SKIP, HDR_LEADSPC, and a multi-line replycode at end of message. */
static void test_resolve_skip_multiline(void **state)
{
	(void)state;
	static const char skip[] = "\0\0\0\x01s";
	static const char y[] = "\0\0\0\x21y451-4.7.1 busy\r\n451 4.7.1 later\0";
	struct fake f = {.protocol = SMFIP_SKIP | SMFIP_HDR_LEADSPC,
			 .answers = {{SMFIC_BODY, skip, 5}, {SMFIC_BODYEOB, y, sizeof(y) - 1}},
			 .n_answers = 2};
	fake_start(&f);
	char sockname[64];
	snprintf(sockname, sizeof(sockname), "inet:localhost:%s", strrchr(f.socket_text, ':') + 1);
	const char *sock[] = {sockname};
	struct session s;
	session_init(&s, 1, sock, TF_MILTER_ACCEPT, 5);
	EVENT(&s, milter_chain_connect(s.chain));
	EVENT(&s, milter_chain_helo(s.chain, "x"));
	EVENT(&s, milter_chain_mail(s.chain, "<a@b.test>"));
	EVENT(&s, milter_chain_rcpt(s.chain, "<c@d.test>"));
	EVENT(&s, milter_chain_data(s.chain));
	struct message_store msg;
	message_store_init(&msg, MESSAGE_STORE_MEM_DEFAULT, 0, NULL);
	message_store_append(&msg, "Subject: x\r\n\r\n", 14);
	char *body = malloc(100000);
	assert_non_null(body);
	memset(body, 'b', 100000);
	message_store_append(&msg, body, 100000);
	free(body);
	struct message_edits e;
	message_edits_init(&e, MESSAGE_STORE_MEM_DEFAULT, 0, NULL);
	EVENT(&s, milter_chain_eom(s.chain, &msg, &e));
	assert_int_equal(s.v.kind, MILTER_TEMPFAIL);
	assert_string_equal(s.v.reply, "451-4.7.1 busy\r\n451 4.7.1 later\r\n");
	session_end(&s);
	fake_end(&f);
	assert_string_equal(f.seen, "ODCDHDMDRTLNBDEQ");
	assert_int_equal(f.body.len, MILTER_CHUNK_MAX);
	assert_string_equal(f.headers.data, "Subject:  x|");
	message_edits_free(&e);
	message_store_free(&msg);
	fake_free(&f);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_negotiation_and_continue),
	    cmocka_unit_test(test_reject_rcpt_replycode),
	    cmocka_unit_test(test_plain_verdicts),
	    cmocka_unit_test(test_timeout_default_action),
	    cmocka_unit_test(test_unreachable),
	    cmocka_unit_test(test_eom_edits),
	    cmocka_unit_test(test_two_milters_flags),
	    cmocka_unit_test(test_accept_and_close_midway),
	    cmocka_unit_test(test_resolve_skip_multiline),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
