/* log.c — the stderr logger of log.h. Never logs credentials or content. */
#include "proxy/log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static atomic_int current_level = TF_LOG_INFO;

void log_set_level(enum tf_log_level level)
{
	atomic_store(&current_level, (int)level);
}

bool log_enabled(enum tf_log_level level)
{
	return (int)level <= atomic_load(&current_level);
}

void log_msg(enum tf_log_level level, const char *fmt, ...)
{
	if (!log_enabled(level))
		return;
	char line[2048];
	struct timespec ts;
	struct tm tm;
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	int n = snprintf(line, sizeof(line), "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s ",
			 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
			 tm.tm_sec, ts.tv_nsec / 1000000, config_log_level_name(level));
	if (n < 0)
		return;
	va_list ap;
	va_start(ap, fmt);
	int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
	va_end(ap);
	if (m < 0)
		return;
	size_t len = (size_t)n + (size_t)m;
	if (len > sizeof(line) - 2)
		len = sizeof(line) - 2;
	line[len++] = '\n';
	/* One write per line; a short write to stderr is not retried. */
	ssize_t w = write(STDERR_FILENO, line, len);
	(void)w;
}

static bool is_plain(unsigned char c)
{
	return c > 0x20 && c < 0x7f && c != '"' && c != '\\' && c != '=';
}

const char *log_value(char *out, size_t outlen, const char *value)
{
	size_t len = strlen(value);
	bool plain = len > 0;
	for (size_t i = 0; i < len && plain; i++)
		plain = is_plain((unsigned char)value[i]);
	if (plain) {
		snprintf(out, outlen, "%s", value);
		return out;
	}
	size_t o = 0;
	if (outlen < 3) {
		if (outlen)
			out[0] = '\0';
		return out;
	}
	out[o++] = '"';
	for (size_t i = 0; i < len && o + 5 < outlen; i++) {
		unsigned char c = (unsigned char)value[i];
		if (c == '"' || c == '\\') {
			out[o++] = '\\';
			out[o++] = (char)c;
		} else if (c < 0x20 || c >= 0x7f) {
			o += (size_t)snprintf(out + o, outlen - o, "\\x%02x", c);
		} else {
			out[o++] = (char)c;
		}
	}
	out[o++] = '"';
	out[o] = '\0';
	return out;
}
