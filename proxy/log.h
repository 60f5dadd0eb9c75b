/* log.h — key=value log lines to stderr, one write(2) per line (SPEC §6).
 *
 * Thread-safe: a line is formatted on the stack and written at once, so lines
 * from several workers never interleave. Never given credentials or message
 * content: callers pass only what may be shown.
 */
#ifndef TLSFRONT_PROXY_LOG_H
#define TLSFRONT_PROXY_LOG_H

#include <stdbool.h>
#include <stddef.h>

#include "policy/config.h"

void log_set_level(enum tf_log_level level);
bool log_enabled(enum tf_log_level level);

/* Writes "ts=... level=LEVEL " followed by the formatted text and a newline. */
void log_msg(enum tf_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Copies value into out as a log value: as it is when it holds only safe
 * characters, else in double quotes with '"', '\\' and control characters
 * escaped. Always NUL-terminates; truncates to fit. Returns out. */
const char *log_value(char *out, size_t outlen, const char *value);

#endif
