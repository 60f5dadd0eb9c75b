/* test_message_store.c — the held message (proxy/milter/message_store.c,
 * issue 14): memory up to the bound then an unlinked temporary file, the
 * size limit, reads across the boundary, and the un-stuffing of the DATA
 * scanner's wire form at every split of the input.
 *
 * Makes temporary files and directories only under $TMPDIR or /tmp and
 * removes them; never opens a socket.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "proxy/milter/message_store.h"
#include "proxy/smtp/data_scanner.h"

/* The whole store, NUL-terminated, in a buffer the caller frees. */
static char *read_all(struct message_store *s)
{
	char *p = malloc(s->size + 1);
	assert_non_null(p);
	uint64_t off = 0;
	while (off < s->size) {
		/* Odd pieces, so that reads cross the memory/file boundary. */
		size_t want = (size_t)(s->size - off) < 7777 ? (size_t)(s->size - off) : 7777;
		ssize_t got = message_store_read(s, off, p + off, want);
		assert_true(got > 0);
		off += (uint64_t)got;
	}
	p[s->size] = '\0';
	return p;
}

static void assert_store(struct message_store *s, const char *want, size_t len)
{
	assert_int_equal(s->size, len);
	char *got = read_all(s);
	assert_memory_equal(got, want, len);
	free(got);
}

static void test_memory_then_file_at_the_bound(void **state)
{
	(void)state;
	struct message_store s;
	message_store_init(&s, 16, 0, NULL);
	assert_int_equal(message_store_append(&s, "0123456789", 10), 0);
	assert_int_equal(s.fd, -1);
	assert_int_equal(message_store_append(&s, "abcdef", 6), 0);
	assert_int_equal(s.fd, -1); /* exactly mem_limit: still memory */
	assert_int_equal(s.mem.len, 16);
	assert_true(s.mem.cap <= 16);
	assert_int_equal(message_store_append(&s, "X", 1), 0);
	assert_true(s.fd >= 0);
	assert_int_equal(s.mem.len, 16);
	assert_int_equal(s.size, 17);
	assert_int_equal(message_store_append(&s, "yz", 2), 0);
	assert_store(&s, "0123456789abcdefXyz", 19);

	/* Reads across the boundary, at it, and past the end. */
	char out[32];
	assert_int_equal(message_store_read(&s, 14, out, 4), 4);
	assert_memory_equal(out, "efXy", 4);
	assert_int_equal(message_store_read(&s, 16, out, 1), 1);
	assert_memory_equal(out, "X", 1);
	assert_int_equal(message_store_read(&s, 15, out, 32), 4);
	assert_memory_equal(out, "fXyz", 4);
	assert_int_equal(message_store_read(&s, 19, out, 32), 0);
	assert_int_equal(message_store_read(&s, 1000, out, 32), 0);
	assert_int_equal(message_store_read(&s, 3, out, 0), 0);

	/* Unlinked from the start, close-on-exec, private. */
	struct stat st;
	assert_int_equal(fstat(s.fd, &st), 0);
	assert_int_equal(st.st_nlink, 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	assert_true(fcntl(s.fd, F_GETFD) & FD_CLOEXEC);

	/* Reset: empty and reusable, in memory again. */
	message_store_reset(&s);
	assert_int_equal(s.fd, -1);
	assert_int_equal(s.size, 0);
	assert_int_equal(message_store_append(&s, "again", 5), 0);
	assert_int_equal(s.fd, -1);
	assert_store(&s, "again", 5);
	message_store_free(&s);
	message_store_free(&s); /* twice is harmless */
}

static void test_one_append_across_the_bound(void **state)
{
	(void)state;
	struct message_store s;
	message_store_init(&s, 8, 0, NULL);
	assert_int_equal(message_store_append(&s, "abc", 3), 0);
	assert_int_equal(message_store_append(&s, "defghijklmnop", 13), 0);
	assert_int_equal(s.mem.len, 8);
	assert_true(s.fd >= 0);
	assert_store(&s, "abcdefghijklmnop", 16);
	message_store_free(&s);

	/* mem_limit 0: the file from the first byte. */
	message_store_init(&s, 0, 0, NULL);
	assert_int_equal(message_store_append(&s, "x", 1), 0);
	assert_true(s.fd >= 0);
	assert_int_equal(s.mem.len, 0);
	assert_store(&s, "x", 1);
	message_store_free(&s);
}

static void test_too_big(void **state)
{
	(void)state;
	struct message_store s;
	message_store_init(&s, 4, 10, NULL);
	assert_int_equal(message_store_append(&s, "0123456", 7), 0);
	assert_false(s.too_big);
	assert_int_equal(message_store_append(&s, "789", 3), 0);
	assert_false(s.too_big); /* exactly size_limit */
	assert_int_equal(message_store_append(&s, "", 0), 0);
	assert_false(s.too_big);
	assert_int_equal(message_store_append(&s, "a", 1), 0);
	assert_true(s.too_big);
	assert_int_equal(s.size, 10);
	assert_int_equal(message_store_append(&s, "more", 4), 0);
	assert_int_equal(s.size, 10);
	assert_store(&s, "0123456789", 10);

	/* One append past the limit holds its first bytes only. */
	message_store_reset(&s);
	assert_false(s.too_big);
	assert_int_equal(message_store_append(&s, "abcdefghijklmnop", 16), 0);
	assert_true(s.too_big);
	assert_store(&s, "abcdefghij", 10);

	/* The wire form too, and its end is still found. */
	message_store_reset(&s);
	const char *wire = "0123456789abcdef\r\n..x\r\n.\r\n";
	assert_int_equal(message_store_append_wire(&s, wire, strlen(wire)), 0);
	assert_true(s.too_big);
	assert_true(s.ended);
	assert_int_equal(s.size, 10);
	message_store_free(&s);
}

static void test_large_file_backed(void **state)
{
	(void)state;
	size_t n = 3 * 1024 * 1024 + 17;
	char *data = malloc(n);
	assert_non_null(data);
	srand(7);
	for (size_t i = 0; i < n; i++)
		data[i] = (char)(rand() & 0xff);
	struct message_store s;
	message_store_init(&s, MESSAGE_STORE_MEM_DEFAULT, 0, NULL);
	for (size_t i = 0; i < n;) {
		size_t k = 1 + (size_t)rand() % 50000;
		if (k > n - i)
			k = n - i;
		assert_int_equal(message_store_append(&s, data + i, k), 0);
		i += k;
	}
	assert_int_equal(s.mem.len, MESSAGE_STORE_MEM_DEFAULT);
	assert_int_equal(s.mem.cap, MESSAGE_STORE_MEM_DEFAULT);
	assert_store(&s, data, n);
	char out[100];
	uint64_t off = MESSAGE_STORE_MEM_DEFAULT - 50;
	assert_int_equal(message_store_read(&s, off, out, 100), 100);
	assert_memory_equal(out, data + off, 100);
	message_store_free(&s);
	free(data);
}

/* The directory the store's file is in, from /proc/self/fd. */
static void assert_fd_in(int fd, const char *dir)
{
	char link[64], target[PATH_MAX];
	snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	ssize_t len = readlink(link, target, sizeof(target) - 1);
	assert_true(len > 0);
	target[len] = '\0';
	assert_memory_equal(target, dir, strlen(dir));
	assert_int_equal(target[strlen(dir)], '/');
}

static void test_tmpdir(void **state)
{
	(void)state;
	char dir[] = "/tmp/tf-store-XXXXXX";
	assert_non_null(mkdtemp(dir));

	struct message_store s;
	message_store_init(&s, 2, 0, dir);
	assert_int_equal(message_store_append(&s, "abcd", 4), 0);
	assert_fd_in(s.fd, dir);
	assert_int_equal(rmdir(dir), 0); /* nothing was left in it */
	assert_store(&s, "abcd", 4);
	message_store_free(&s);

	/* $TMPDIR when the store names none. */
	assert_non_null(mkdtemp(strcpy(dir, "/tmp/tf-store-XXXXXX")));
	const char *old = getenv("TMPDIR");
	char *saved = old ? strdup(old) : NULL;
	assert_int_equal(setenv("TMPDIR", dir, 1), 0);
	message_store_init(&s, 0, 0, NULL);
	assert_int_equal(message_store_append(&s, "e", 1), 0);
	assert_fd_in(s.fd, dir);
	message_store_free(&s);
	if (saved)
		setenv("TMPDIR", saved, 1);
	else
		unsetenv("TMPDIR");
	free(saved);
	assert_int_equal(rmdir(dir), 0);

	/* A directory that is not there: -1, errno kept, and it sticks. */
	message_store_init(&s, 2, 0, "/nonexistent/tlsfront-test");
	assert_int_equal(message_store_append(&s, "ab", 2), 0);
	assert_int_equal(message_store_append(&s, "c", 1), -1);
	assert_int_equal(s.error, ENOENT);
	assert_int_equal(message_store_append(&s, "d", 1), -1);
	assert_int_equal(message_store_append_wire(&s, "d", 1), -1);
	message_store_reset(&s);
	assert_int_equal(s.error, 0);
	assert_int_equal(message_store_append(&s, "ab", 2), 0);
	message_store_free(&s);
}

/* ---- the wire form ---------------------------------------------------- */

/* The reference un-stuffing, a line at a time over the whole input: lines
 * end only at CRLF; "." alone ends the data; one leading dot goes. */
static size_t ref_unstuff(const char *p, size_t n, char *out, bool *ended)
{
	size_t pos = 0, k = 0;
	*ended = false;
	while (pos < n) {
		size_t e = pos;
		while (e + 1 < n && !(p[e] == '\r' && p[e + 1] == '\n'))
			e++;
		bool eol = e + 1 < n;
		size_t end = eol ? e : n;
		if (eol && end - pos == 1 && p[pos] == '.') {
			*ended = true;
			break;
		}
		size_t from = p[pos] == '.' ? pos + 1 : pos;
		memcpy(out + k, p + from, end - from);
		k += end - from;
		if (eol) {
			memcpy(out + k, "\r\n", 2);
			k += 2;
		}
		pos = eol ? e + 2 : n;
	}
	return k;
}

/* Feeds p in the pieces cut at cuts[0..ncuts) and checks the result. */
static void check_pieces(const char *p, size_t n, const size_t *cuts, size_t ncuts,
			 const char *want, size_t want_len, bool want_end, size_t mem_limit)
{
	struct message_store s;
	message_store_init(&s, mem_limit, 0, NULL);
	size_t from = 0;
	for (size_t c = 0; c <= ncuts; c++) {
		size_t to = c < ncuts ? cuts[c] : n;
		assert_int_equal(message_store_append_wire(&s, p + from, to - from), 0);
		from = to;
	}
	assert_int_equal(s.ended, want_end);
	assert_store(&s, want, want_len);
	message_store_free(&s);
}

/* p must be complete (ending in the end of data, or in CRLF), as a held
 * back ".\r" is not text yet. The store's memory holds mem_limit bytes. */
static void check_every_split(const char *p, size_t n, size_t mem_limit)
{
	char *want = malloc(n + 1);
	assert_non_null(want);
	bool ended;
	size_t wl = ref_unstuff(p, n, want, &ended);
	check_pieces(p, n, NULL, 0, want, wl, ended, mem_limit);
	for (size_t i = 0; i <= n; i++) {
		size_t cut[1] = {i};
		check_pieces(p, n, cut, 1, want, wl, ended, mem_limit);
	}
	if (n <= 40) {
		for (size_t i = 0; i <= n; i++)
			for (size_t j = i; j <= n; j++) {
				size_t cut[2] = {i, j};
				check_pieces(p, n, cut, 2, want, wl, ended, mem_limit);
			}
	}
	/* One byte at a time. */
	size_t *cuts = malloc((n + 1) * sizeof(*cuts));
	assert_non_null(cuts);
	for (size_t i = 0; i < n; i++)
		cuts[i] = i + 1;
	check_pieces(p, n, cuts, n ? n - 1 : 0, want, wl, ended, mem_limit);
	free(cuts);
	free(want);
}

static void test_wire_known_cases(void **state)
{
	(void)state;
	static const struct {
		const char *wire, *text;
	} cases[] = {
	    {".\r\n", ""},
	    {"a\r\n.\r\n", "a\r\n"},
	    {"..\r\n.\r\n", ".\r\n"},
	    {"..x\r\n...y\r\n.\r\n", ".x\r\n..y\r\n"},
	    {".x\r\n.\r\n", "x\r\n"}, /* not stuffed by the scanner, still one dot */
	    {"a.\r\n.b\r\n.\r\n", "a.\r\nb\r\n"},
	    {"Subject: x\r\n\r\nbody\r\n.\r\nMAIL FROM:<a@b>\r\n", "Subject: x\r\n\r\nbody\r\n"},
	    {".\r\r\n.\r\n", "\r\r\n"}, /* ".\r" then CRLF: not the end */
	    {"..\r\r\n.\r\n", ".\r\r\n"},
	    {".\rx\r\n.\r\n", "\rx\r\n"},
	    {"a\r.\r\n.\r\n", "a\r.\r\n"}, /* a dot after a bare CR is mid-line */
	    {"a\n.\r\n.\r\n", "a\n.\r\n"}, /* nor is an LF a line end */
	    {"x\r\n. \r\n.\r\n", "x\r\n \r\n"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		size_t n = strlen(cases[i].wire);
		check_pieces(cases[i].wire, n, NULL, 0, cases[i].text, strlen(cases[i].text), true,
			     4);
		check_every_split(cases[i].wire, n, 4096);
		check_every_split(cases[i].wire, n, 5); /* the file from byte 6 */
	}

	/* Bytes after the end are ignored, in this and later calls. */
	struct message_store s;
	message_store_init(&s, 64, 0, NULL);
	assert_int_equal(message_store_append_wire(&s, "a\r\n.\r\nb", 7), 0);
	assert_true(s.ended);
	assert_int_equal(message_store_append_wire(&s, "c\r\n", 3), 0);
	assert_store(&s, "a\r\n", 3);
	/* Reset starts a new message. */
	message_store_reset(&s);
	assert_false(s.ended);
	assert_int_equal(message_store_append_wire(&s, "..\r\n.\r\n", 7), 0);
	assert_store(&s, ".\r\n", 3);
	message_store_free(&s);
}

/* Random raw messages, dense in dots, CR and LF, made wire by the real DATA
 * scanner (sanitize mode) and followed by command bytes. */
static void test_wire_from_data_scanner_every_split(void **state)
{
	(void)state;
	static const char alphabet[] = "..\r\n\r\nab";
	srand(14);
	for (int round = 0; round < 300; round++) {
		size_t len = (size_t)rand() % (round < 200 ? 30 : 300);
		char raw[300 + 11];
		for (size_t i = 0; i < len; i++)
			raw[i] = alphabet[rand() % (int)(sizeof(alphabet) - 1)];
		memcpy(raw + len, "\r\n.\r\nQUIT\r\n", 11);
		struct data_scanner d;
		data_scanner_init(&d, false);
		struct buf wire = {0};
		bool end;
		size_t used = data_scanner_feed(&d, raw, len + 11, &wire, &end);
		assert_true(end);
		assert_true(used <= len + 11);
		assert_true(buf_append(&wire, "QUIT\r\n", 6));
		/* Now and then with most of the text in the file. */
		check_every_split(wire.data, wire.len, round % 25 ? 1 << 16 : 7);
		buf_free(&wire);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_memory_then_file_at_the_bound),
	    cmocka_unit_test(test_one_append_across_the_bound),
	    cmocka_unit_test(test_too_big),
	    cmocka_unit_test(test_large_file_backed),
	    cmocka_unit_test(test_tmpdir),
	    cmocka_unit_test(test_wire_known_cases),
	    cmocka_unit_test(test_wire_from_data_scanner_every_split),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
