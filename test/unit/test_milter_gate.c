/* test_milter_gate.c — unit tests of the session machine with milters
 * (issue 14, proxy/smtp/milter_gate.c): what waits for a verdict, what the
 * backend sees (never a refused command, never content before the milters
 * agreed), what the client gets, and the envelope changes at end of
 * message. No sockets: the test plays client, backend and milters.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/smtp/smtp_machine.h"

struct t {
	struct smtp_machine m;
	struct buf client, backend, held;
	unsigned char event; /* the last milter event raised */
	char arg[512];
	bool aborted, send_held;
};

static void take(struct t *t)
{
	struct smtp_actions *a = &t->m.act;
	size_t n;
	char *p = buf_take(&a->to_client, &n);
	assert_true(buf_append(&t->client, p, n) || n == 0);
	free(p);
	p = buf_take(&a->to_backend, &n);
	assert_true(buf_append(&t->backend, p, n) || n == 0);
	free(p);
	p = buf_take(&a->to_hold, &n);
	assert_true(buf_append(&t->held, p, n) || n == 0);
	free(p);
	if (a->milter_abort)
		t->aborted = true;
	if (a->milter_event) {
		t->event = a->milter_event;
		snprintf(t->arg, sizeof(t->arg), "%s", a->milter_arg ? a->milter_arg : "");
	}
	if (a->send_held)
		t->send_held = true;
	smtp_machine_clear_actions(&t->m);
}

static void setup_t(struct t *t)
{
	memset(t, 0, sizeof(*t));
	struct smtp_machine_config cfg = {
	    .starttls = true,
	    .tcp_auth = true,
	    .tls_auth = true,
	    .line_length = 2048,
	    .max_errors = 20,
	    .server_name = "mx.test",
	    .milters = true,
	};
	smtp_machine_init(&t->m, &cfg);
}

static void teardown_t(struct t *t)
{
	smtp_machine_free(&t->m);
	buf_free(&t->client);
	buf_free(&t->backend);
	buf_free(&t->held);
}

static void client(struct t *t, const char *s)
{
	smtp_machine_feed_client(&t->m, s, strlen(s));
	take(t);
}

static void backend(struct t *t, const char *s)
{
	smtp_machine_feed_backend(&t->m, s, strlen(s));
	take(t);
}

static void verdict(struct t *t, enum smtp_milter_verdict v, const char *reply)
{
	t->event = MEV_NONE;
	smtp_machine_milter_verdict(&t->m, v, reply);
	take(t);
}

/* The stream so far equals s; then it is emptied. */
static void expect(struct buf *b, const char *s)
{
	char *got = strndup(b->data ? b->data : "", b->len);
	assert_string_equal(got, s);
	free(got);
	b->len = 0;
}

/* Greeting and EHLO through a continuing milter. */
static void start(struct t *t)
{
	backend(t, "220 legacy ESMTP\r\n");
	expect(&t->client, "220 legacy ESMTP\r\n");
	client(t, "EHLO client.test\r\n");
	assert_int_equal(t->event, MEV_HELO);
	assert_string_equal(t->arg, "client.test");
	expect(&t->backend, ""); /* not before the verdict */
	verdict(t, SMV_CONTINUE, NULL);
	expect(&t->backend, "EHLO client.test\r\n");
	backend(t, "250-legacy\r\n250 8BITMIME\r\n");
	t->client.len = 0;
}

static void envelope(struct t *t)
{
	client(t, "MAIL FROM:<a@x.test> SIZE=10\r\n");
	assert_int_equal(t->event, MEV_MAIL);
	assert_string_equal(t->arg, "<a@x.test> SIZE=10");
	verdict(t, SMV_CONTINUE, NULL);
	expect(&t->backend, "MAIL FROM:<a@x.test> SIZE=10\r\n");
	backend(t, "250 ok\r\n");
	client(t, "RCPT TO:<b@y.test>\r\n");
	assert_int_equal(t->event, MEV_RCPT);
	assert_string_equal(t->arg, "<b@y.test>");
	verdict(t, SMV_CONTINUE, NULL);
	expect(&t->backend, "RCPT TO:<b@y.test>\r\n");
	backend(t, "250 ok\r\n");
	expect(&t->client, "250 ok\r\n250 ok\r\n");
}

static void test_whole_message_is_held_then_sent(void **state)
{
	(void)state;
	struct t t;
	setup_t(&t);
	start(&t);
	envelope(&t);
	client(&t, "DATA\r\n");
	assert_int_equal(t.event, MEV_DATA);
	expect(&t.backend, "");
	verdict(&t, SMV_CONTINUE, NULL);
	assert_memory_equal(t.client.data, "354 ", 4);
	t.client.len = 0;
	client(&t, "Subject: x\r\n\r\n..dot\r\nbody\r\n.\r\nQUIT\r\n");
	assert_int_equal(t.event, MEV_EOM);
	expect(&t.held, "Subject: x\r\n\r\n..dot\r\nbody\r\n.\r\n");
	expect(&t.backend, ""); /* nothing before the milters agree; QUIT waits */
	expect(&t.client, "");
	smtp_machine_milter_deliver(&t.m, NULL);
	take(&t);
	expect(&t.backend, "DATA\r\n");
	backend(&t, "354 go\r\n");
	assert_true(t.send_held);
	expect(&t.client, "");
	expect(&t.backend, ""); /* QUIT still waits for the content */
	smtp_machine_held_sent(&t.m);
	take(&t);
	expect(&t.backend, "QUIT\r\n");
	backend(&t, "250 queued\r\n221 bye\r\n");
	expect(&t.client, "250 queued\r\n221 bye\r\n");
	assert_int_equal(t.m.messages, 1);
	teardown_t(&t);
}

static void test_refused_rcpt_never_reaches_backend(void **state)
{
	(void)state;
	struct t t;
	setup_t(&t);
	start(&t);
	client(&t, "MAIL FROM:<a@x.test>\r\nRCPT TO:<bad@y.test>\r\nRCPT TO:<b@y.test>\r\n");
	verdict(&t, SMV_CONTINUE, NULL);
	expect(&t.backend, "MAIL FROM:<a@x.test>\r\n");
	assert_int_equal(t.event, MEV_RCPT);
	assert_string_equal(t.arg, "<bad@y.test>");
	verdict(&t, SMV_REFUSE, "550 5.7.1 No such user\r\n");
	assert_int_equal(t.event, MEV_RCPT);
	verdict(&t, SMV_CONTINUE, NULL);
	expect(&t.backend, "RCPT TO:<b@y.test>\r\n");
	backend(&t, "250 ok\r\n250 ok\r\n");
	expect(&t.client, "250 ok\r\n550 5.7.1 No such user\r\n250 ok\r\n");
	teardown_t(&t);
}

static void test_data_without_valid_recipient(void **state)
{
	(void)state;
	struct t t;
	setup_t(&t);
	start(&t);
	client(&t, "MAIL FROM:<a@x.test>\r\n");
	verdict(&t, SMV_CONTINUE, NULL);
	client(&t, "RCPT TO:<b@y.test>\r\nDATA\r\n");
	verdict(&t, SMV_CONTINUE, NULL);
	expect(&t.backend, "MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n");
	backend(&t, "250 ok\r\n550 unknown\r\n");
	assert_int_equal(t.event, MEV_NONE); /* the milters never see this DATA */
	expect(&t.client, "250 ok\r\n550 unknown\r\n554 5.5.1 Error: no valid recipients\r\n");
	assert_true(t.aborted);
	expect(&t.backend, "RSET\r\n"); /* the backend's envelope ends too */
	teardown_t(&t);
}

static void test_data_before_mail(void **state)
{
	(void)state;
	struct t t;
	setup_t(&t);
	start(&t);
	client(&t, "DATA\r\n");
	expect(&t.client, "503 5.5.1 Error: need MAIL command\r\n");
	expect(&t.backend, "");
	teardown_t(&t);
}

static void test_envelope_changes_replay_the_transaction(void **state)
{
	(void)state;
	struct t t;
	setup_t(&t);
	start(&t);
	envelope(&t);
	client(&t, "RCPT TO:<c@y.test> NOTIFY=NEVER\r\n");
	verdict(&t, SMV_CONTINUE, NULL);
	backend(&t, "250 ok\r\n");
	t.backend.len = t.client.len = 0;
	client(&t, "DATA\r\n");
	verdict(&t, SMV_CONTINUE, NULL);
	t.client.len = 0;
	client(&t, "hello\r\n.\r\n");
	assert_int_equal(t.event, MEV_EOM);
	const char *add[] = {"d@z.test"}, *add_args[] = {NULL}, *del[] = {"<B@y.test>"};
	struct smtp_envelope_change c = {.sender = "<new@x.test>",
					 .add = add,
					 .add_args = add_args,
					 .n_add = 1,
					 .del = del,
					 .n_del = 1};
	smtp_machine_milter_deliver(&t.m, &c);
	take(&t);
	expect(&t.backend, "RSET\r\nMAIL FROM:<new@x.test>\r\nRCPT TO:<c@y.test> NOTIFY=NEVER\r\n"
			   "RCPT TO:<d@z.test>\r\n");
	backend(&t, "250 ok\r\n250 ok\r\n250 ok\r\n");
	expect(&t.backend, ""); /* DATA only once every replayed reply is in */
	backend(&t, "250 ok\r\n");
	expect(&t.backend, "DATA\r\n");
	backend(&t, "354 go\r\n");
	expect(&t.client, ""); /* tlsfront's own commands: not the client's replies */
	assert_true(t.send_held);
	smtp_machine_held_sent(&t.m);
	take(&t);
	backend(&t, "250 queued\r\n");
	expect(&t.client, "250 queued\r\n");
	teardown_t(&t);
}

static void test_refused_at_end_of_message(void **state)
{
	(void)state;
	struct t t;
	setup_t(&t);
	start(&t);
	envelope(&t);
	t.backend.len = 0;
	client(&t, "DATA\r\n");
	verdict(&t, SMV_CONTINUE, NULL);
	t.client.len = 0;
	client(&t, "spam\r\n.\r\n");
	verdict(&t, SMV_REFUSE, "451 4.7.1 Try later\r\n");
	expect(&t.client, "451 4.7.1 Try later\r\n");
	expect(&t.backend, "RSET\r\n"); /* never DATA, never the content */
	backend(&t, "250 reset\r\n");
	expect(&t.client, "");
	assert_int_equal(t.m.messages, 0);
	teardown_t(&t);
}

static void test_discard_looks_delivered(void **state)
{
	(void)state;
	struct t t;
	setup_t(&t);
	start(&t);
	client(&t, "MAIL FROM:<a@x.test>\r\n");
	verdict(&t, SMV_CONTINUE, NULL);
	client(&t, "RCPT TO:<b@y.test>\r\n");
	verdict(&t, SMV_DISCARD, NULL);
	backend(&t, "250 ok\r\n250 ok\r\n");
	t.backend.len = t.client.len = 0;
	client(&t, "DATA\r\n");
	verdict(&t, SMV_CONTINUE, NULL);
	t.client.len = 0;
	client(&t, "x\r\n.\r\n");
	assert_int_equal(t.event, MEV_NONE); /* no end of message for the milters */
	assert_true(t.aborted);
	expect(&t.client, "250 2.0.0 Ok: queued\r\n");
	expect(&t.backend, "RSET\r\n");
	teardown_t(&t);
}

static void test_rset_aborts_the_milters_transaction(void **state)
{
	(void)state;
	struct t t;
	setup_t(&t);
	start(&t);
	envelope(&t);
	client(&t, "RSET\r\n");
	assert_true(t.aborted);
	expect(&t.backend, "RSET\r\n");
	teardown_t(&t);
}

static void test_connect_refusal_answers_every_mail(void **state)
{
	(void)state;
	struct t t;
	setup_t(&t);
	start(&t);
	smtp_machine_milter_refuse_session(&t.m, "554 5.7.1 Go away\r\n");
	client(&t, "MAIL FROM:<a@x.test>\r\nMAIL FROM:<a@x.test>\r\n");
	expect(&t.client, "554 5.7.1 Go away\r\n554 5.7.1 Go away\r\n");
	expect(&t.backend, "");
	teardown_t(&t);
}

/* Up to the end of a held message, with the milters letting it through. */
static void held_message(struct t *t)
{
	start(t);
	envelope(t);
	t->backend.len = 0;
	client(t, "DATA\r\n");
	verdict(t, SMV_CONTINUE, NULL);
	t->client.len = 0;
	client(t, "hello\r\n.\r\n");
	assert_int_equal(t->event, MEV_EOM);
}

static void test_nested_mail_is_refused_locally(void **state)
{
	(void)state;
	struct t t;
	setup_t(&t);
	start(&t);
	envelope(&t);
	t.backend.len = 0;
	client(&t, "MAIL FROM:<other@x.test>\r\n");
	assert_int_equal(t.event, MEV_NONE);
	expect(&t.client, "503 5.5.1 Error: nested MAIL command\r\n");
	expect(&t.backend, "");
	teardown_t(&t);
}

static void test_backend_refusing_mail_ends_the_transaction(void **state)
{
	(void)state;
	struct t t;
	setup_t(&t);
	start(&t);
	client(&t, "MAIL FROM:<a@x.test>\r\n");
	verdict(&t, SMV_CONTINUE, NULL);
	backend(&t, "550 no\r\n");
	assert_true(t.aborted);
	t.client.len = t.backend.len = 0;
	client(&t, "DATA\r\n"); /* never past the milters */
	expect(&t.client, "503 5.5.1 Error: need MAIL command\r\n");
	expect(&t.backend, "");
	teardown_t(&t);
}

static void test_replay_refused_by_backend(void **state)
{
	(void)state;
	struct t t;
	setup_t(&t);
	held_message(&t);
	struct smtp_envelope_change c = {.sender = "<new@x.test>"};
	smtp_machine_milter_deliver(&t.m, &c);
	take(&t);
	expect(&t.backend, "RSET\r\nMAIL FROM:<new@x.test>\r\nRCPT TO:<b@y.test>\r\n");
	backend(&t, "250 ok\r\n250 ok\r\n450 4.2.0 greylisted\r\n");
	expect(&t.client, "451 4.3.0 Error: the backend refused the milters' changes, try again "
			  "later\r\n");
	expect(&t.backend, "RSET\r\n"); /* never DATA */
	assert_true(t.aborted);
	assert_false(t.send_held);
	teardown_t(&t);
}

static void test_added_recipient_refused_for_good(void **state)
{
	(void)state;
	struct t t;
	setup_t(&t);
	held_message(&t);
	const char *add[] = {"<nobody@z.test>"};
	struct smtp_envelope_change c = {.add = add, .n_add = 1};
	smtp_machine_milter_deliver(&t.m, &c);
	take(&t);
	expect(&t.backend, "RCPT TO:<nobody@z.test>\r\n");
	backend(&t, "550 unknown\r\n");
	expect(&t.backend, "DATA\r\n"); /* the original recipient still stands */
	backend(&t, "354 go\r\n");
	assert_true(t.send_held);
	teardown_t(&t);
}

static void test_line_break_in_a_milter_address(void **state)
{
	(void)state;
	struct t t;
	setup_t(&t);
	held_message(&t);
	const char *add[] = {"<x@z.test>\r\nRCPT TO:<evil@z.test>"};
	struct smtp_envelope_change c = {.add = add, .n_add = 1};
	smtp_machine_milter_deliver(&t.m, &c);
	take(&t);
	assert_memory_equal(t.client.data, "451 4.3.0", 9);
	expect(&t.backend, "RSET\r\n");
	teardown_t(&t);
}

static void test_backend_refusing_held_data_forgets_the_message(void **state)
{
	(void)state;
	struct t t;
	setup_t(&t);
	held_message(&t);
	t.aborted = false;
	smtp_machine_milter_deliver(&t.m, NULL);
	take(&t);
	expect(&t.backend, "DATA\r\n");
	backend(&t, "451 4.3.0 queue file write error\r\n");
	expect(&t.client, "451 4.3.0 queue file write error\r\n");
	assert_true(t.aborted); /* the proxy drops the held message */
	expect(&t.backend, "RSET\r\n");
	teardown_t(&t);
}

static void test_connect_refusal_arriving_during_mail(void **state)
{
	(void)state;
	struct t t;
	setup_t(&t);
	start(&t);
	client(&t, "MAIL FROM:<a@x.test>\r\n");
	assert_int_equal(t.event, MEV_MAIL);
	smtp_machine_milter_refuse_session(&t.m, "554 5.7.1 Go away\r\n");
	verdict(&t, SMV_CONTINUE, NULL);
	expect(&t.client, "554 5.7.1 Go away\r\n");
	expect(&t.backend, "");
	teardown_t(&t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_whole_message_is_held_then_sent),
	    cmocka_unit_test(test_refused_rcpt_never_reaches_backend),
	    cmocka_unit_test(test_data_without_valid_recipient),
	    cmocka_unit_test(test_data_before_mail),
	    cmocka_unit_test(test_envelope_changes_replay_the_transaction),
	    cmocka_unit_test(test_refused_at_end_of_message),
	    cmocka_unit_test(test_discard_looks_delivered),
	    cmocka_unit_test(test_rset_aborts_the_milters_transaction),
	    cmocka_unit_test(test_connect_refusal_answers_every_mail),
	    cmocka_unit_test(test_nested_mail_is_refused_locally),
	    cmocka_unit_test(test_backend_refusing_mail_ends_the_transaction),
	    cmocka_unit_test(test_replay_refused_by_backend),
	    cmocka_unit_test(test_added_recipient_refused_for_good),
	    cmocka_unit_test(test_line_break_in_a_milter_address),
	    cmocka_unit_test(test_backend_refusing_held_data_forgets_the_message),
	    cmocka_unit_test(test_connect_refusal_arriving_during_mail),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
