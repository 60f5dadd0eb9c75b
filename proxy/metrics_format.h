/* metrics_format.h — a metrics snapshot (metrics.h) as Prometheus text
 * exposition format 0.0.4: one HELP and one TYPE line per family, then its
 * samples; label values escaped (backslash, double quote, newline).
 *
 * A pure function: a snapshot in, text out. Never reads a counter itself,
 * never does I/O, never includes libuv or GnuTLS.
 */
#ifndef TLSFRONT_PROXY_METRICS_FORMAT_H
#define TLSFRONT_PROXY_METRICS_FORMAT_H

#include <stdbool.h>

#include "proxy/metrics.h"
#include "proxy/smtp/buf.h"

#define METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

/* Appends the whole exposition to out. Returns false when out of memory
 * (out then holds a truncated text the caller must not serve). */
bool metrics_format(const struct metrics_snapshot *s, struct buf *out);

/* Appends value as a label value between its quotes: \ as \\, " as \",
 * a newline as \n. Returns false when out of memory. */
bool metrics_escape_label(struct buf *out, const char *value);

#endif
