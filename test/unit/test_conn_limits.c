/* test_conn_limits.c — limits.max_connections and max_connections_per_ip
 * counters (SPEC §3.1): admit up to each bound, release frees the place,
 * IPv4 and IPv6 kept apart, churn over many addresses stays correct. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

#include "proxy/conn_limits.h"

static struct sockaddr_in v4(unsigned last)
{
	struct sockaddr_in a;
	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(0x7f000000u | last);
	a.sin_port = htons((unsigned short)(1000 + last)); /* the port never matters */
	return a;
}

static void test_s3_1_per_ip_limit(void **state)
{
	(void)state;
	assert_int_equal(conn_limits_init(10, 2), 0);
	struct sockaddr_in a = v4(2), b = v4(3);
	assert_true(conn_limits_admit((struct sockaddr *)&a));
	a.sin_port = htons(9);
	assert_true(conn_limits_admit((struct sockaddr *)&a));
	assert_false(conn_limits_admit((struct sockaddr *)&a)); /* third from 127.0.0.2 */
	assert_true(conn_limits_admit((struct sockaddr *)&b));	/* another address */
	conn_limits_release((struct sockaddr *)&a);
	assert_true(conn_limits_admit((struct sockaddr *)&a));
	conn_limits_release((struct sockaddr *)&a);
	conn_limits_release((struct sockaddr *)&a);
	conn_limits_release((struct sockaddr *)&b);
	conn_limits_free();
}

/* A connection awaiting its PROXY header holds a place in the total only;
 * the header's address then takes it over, or the hold is given back. */
static void test_s3_1_hold_until_proxy_header(void **state)
{
	(void)state;
	assert_int_equal(conn_limits_init(3, 1), 0);
	struct sockaddr_in a = v4(4), b = v4(5);
	assert_true(conn_limits_hold());
	assert_true(conn_limits_hold()); /* per-IP does not apply to holds */
	assert_true(conn_limits_admit((struct sockaddr *)&a));
	assert_false(conn_limits_hold()); /* total 3 reached */
	assert_false(conn_limits_admit((struct sockaddr *)&b));
	/* The header names a (already at its limit): the hold is dropped. */
	assert_false(conn_limits_admit_held((struct sockaddr *)&a));
	/* The other names b: admitted in the place of the hold. */
	assert_true(conn_limits_admit_held((struct sockaddr *)&b));
	assert_true(conn_limits_hold()); /* one place was left free */
	assert_false(conn_limits_hold());
	conn_limits_unhold();
	conn_limits_release((struct sockaddr *)&a);
	conn_limits_release((struct sockaddr *)&b);
	/* Everything given back: three holds fit again. */
	for (int i = 0; i < 3; i++)
		assert_true(conn_limits_hold());
	assert_false(conn_limits_hold());
	for (int i = 0; i < 3; i++)
		conn_limits_unhold();
	conn_limits_free();
}

static void test_s3_1_total_limit_and_v6(void **state)
{
	(void)state;
	assert_int_equal(conn_limits_init(3, 3), 0);
	struct sockaddr_in6 six;
	memset(&six, 0, sizeof(six));
	six.sin6_family = AF_INET6;
	inet_pton(AF_INET6, "::1", &six.sin6_addr);
	struct sockaddr_in a = v4(1);
	assert_true(conn_limits_admit((struct sockaddr *)&six));
	assert_true(conn_limits_admit((struct sockaddr *)&a));
	assert_true(conn_limits_admit((struct sockaddr *)&a));
	assert_false(conn_limits_admit((struct sockaddr *)&six)); /* total reached */
	conn_limits_release((struct sockaddr *)&a);
	assert_true(conn_limits_admit((struct sockaddr *)&six));
	conn_limits_free();
}

static void test_s3_1_churn_over_many_addresses(void **state)
{
	(void)state;
	assert_int_equal(conn_limits_init(50, 1), 0);
	for (unsigned round = 0; round < 200; round++) {
		for (unsigned i = 0; i < 50; i++) {
			struct sockaddr_in a = v4(round * 50 + i);
			assert_true(conn_limits_admit((struct sockaddr *)&a));
		}
		struct sockaddr_in extra = v4(99999);
		assert_false(conn_limits_admit((struct sockaddr *)&extra));
		for (unsigned i = 0; i < 50; i++) {
			struct sockaddr_in a = v4(round * 50 + i);
			conn_limits_release((struct sockaddr *)&a);
		}
		/* Addresses gone leave no tombstones behind to lengthen the
		 * probe paths of the next ones. */
		assert_int_equal(conn_limits_slots_in_use(), 0);
	}
	conn_limits_free();
}

static void test_s3_1_released_slots_freed_in_any_order(void **state)
{
	(void)state;
	assert_int_equal(conn_limits_init(64, 2), 0);
	for (unsigned round = 0; round < 50; round++) {
		/* Twice each, released in an order unlike the admission one. */
		for (unsigned i = 0; i < 32; i++) {
			struct sockaddr_in a = v4(round * 1000 + i);
			assert_true(conn_limits_admit((struct sockaddr *)&a));
			assert_true(conn_limits_admit((struct sockaddr *)&a));
		}
		assert_true(conn_limits_slots_in_use() >= 32);
		for (unsigned k = 0; k < 64; k++) {
			unsigned i = (k * 7 + round) % 32;
			struct sockaddr_in a = v4(round * 1000 + i);
			conn_limits_release((struct sockaddr *)&a);
		}
		assert_int_equal(conn_limits_slots_in_use(), 0);
		struct sockaddr_in b = v4(round * 1000 + 1);
		assert_true(conn_limits_admit((struct sockaddr *)&b)); /* counts are right */
		conn_limits_release((struct sockaddr *)&b);
	}
	conn_limits_free();
}

static void test_s5_reload_changes_limits_keeping_counts(void **state)
{
	(void)state;
	assert_int_equal(conn_limits_init(2, 2), 0);
	struct sockaddr_in a = v4(1), b = v4(2), c = v4(3);
	assert_true(conn_limits_admit((struct sockaddr *)&a));
	assert_true(conn_limits_admit((struct sockaddr *)&b));
	assert_false(conn_limits_admit((struct sockaddr *)&c));
	assert_int_equal(conn_limits_set(100, 1), 0); /* grows the table */
	assert_true(conn_limits_admit((struct sockaddr *)&c));
	assert_false(conn_limits_admit((struct sockaddr *)&a)); /* a still counted once */
	conn_limits_release((struct sockaddr *)&a);
	assert_true(conn_limits_admit((struct sockaddr *)&a));
	conn_limits_free();
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_s3_1_per_ip_limit),
	    cmocka_unit_test(test_s3_1_total_limit_and_v6),
	    cmocka_unit_test(test_s3_1_hold_until_proxy_header),
	    cmocka_unit_test(test_s3_1_churn_over_many_addresses),
	    cmocka_unit_test(test_s3_1_released_slots_freed_in_any_order),
	    cmocka_unit_test(test_s5_reload_changes_limits_keeping_counts),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
