/* listener.h — listening sockets, made before any worker starts.
 *
 * Each worker gets its own socket on every listen address; SO_REUSEPORT lets
 * the kernel spread connections across them (Debian's libuv predates
 * UV_TCP_REUSEPORT, so the option is set here, before uv_tcp_open). Binding
 * happens in main, so a bad address stops tlsfront before it serves anyone.
 */
#ifndef TLSFRONT_PROXY_LISTENER_H
#define TLSFRONT_PROXY_LISTENER_H

#include <stddef.h>

#include "proxy/address.h"

/* Returns a bound, listening, non-blocking socket, or -1 with err set. */
int listener_bind(const struct tf_addr *addr, char *err, size_t errlen);

#endif
