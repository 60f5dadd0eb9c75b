/* test_address.c — unit tests of proxy/address.c's formatting: the client=
 * and peer= values of the log (SPEC §6). Opens no socket. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

#include "proxy/address.h"

static void test_s6_address_format(void **state)
{
	char out[80];
	struct sockaddr_storage ss;

	memset(&ss, 0, sizeof(ss));
	struct sockaddr_in *in = (struct sockaddr_in *)&ss;
	in->sin_family = AF_INET;
	in->sin_port = htons(25);
	assert_int_equal(inet_pton(AF_INET, "192.0.2.7", &in->sin_addr), 1);
	address_format((struct sockaddr *)&ss, out, sizeof(out));
	assert_string_equal(out, "192.0.2.7:25");

	memset(&ss, 0, sizeof(ss));
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
	in6->sin6_family = AF_INET6;
	in6->sin6_port = htons(40123);
	assert_int_equal(inet_pton(AF_INET6, "2001:db8::7", &in6->sin6_addr), 1);
	address_format((struct sockaddr *)&ss, out, sizeof(out));
	assert_string_equal(out, "[2001:db8::7]:40123");

	memset(&ss, 0, sizeof(ss));
	ss.ss_family = AF_UNIX;
	address_format((struct sockaddr *)&ss, out, sizeof(out));
	assert_string_equal(out, "unix");

	/* A zeroed address (getpeername never filled it) and a family
	 * tlsfront does not handle: never "unix", never a made-up address. */
	memset(&ss, 0, sizeof(ss));
	address_format((struct sockaddr *)&ss, out, sizeof(out));
	assert_string_equal(out, "unknown");
	ss.ss_family = AF_PACKET;
	address_format((struct sockaddr *)&ss, out, sizeof(out));
	assert_string_equal(out, "unknown");
	assert_int_equal(address_port((struct sockaddr *)&ss), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_s6_address_format),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
