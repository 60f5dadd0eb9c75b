/* metrics_http.h — the operator's HTTP endpoint (issue 13): GET /metrics
 * (the Prometheus text format of metrics_format.h) and GET /healthz, served
 * by GNU libmicrohttpd on its own threads from sockets main bound before the
 * privilege drop.
 *
 * Never runs on a worker loop and never blocks one: it reads the counters
 * with relaxed atomic loads, and the /healthz backend probe is a bounded,
 * non-blocking connect made on the HTTP thread.
 */
#ifndef TLSFRONT_PROXY_METRICS_HTTP_H
#define TLSFRONT_PROXY_METRICS_HTTP_H

#include <stddef.h>

struct metrics_http;

/* Starts serving on the n listening sockets in fds (it takes ownership of
 * them, also on error). Returns NULL with a message in err on error. */
struct metrics_http *metrics_http_start(const int *fds, size_t n, char *err, size_t errlen);

/* Stops every HTTP thread and closes the sockets. NULL is a no-op. */
void metrics_http_stop(struct metrics_http *h);

#endif
