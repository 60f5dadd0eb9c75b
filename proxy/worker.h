/* worker.h — one event-loop thread: its listeners, its sessions, its stop.
 *
 * Each worker owns a libuv loop, its own listening sockets on the shared
 * addresses (SO_REUSEPORT, bound by main before any thread starts), and the
 * sessions accepted on them; sessions never move between workers, so the
 * data path takes no locks. Never makes SMTP decisions.
 */
#ifndef TLSFRONT_PROXY_WORKER_H
#define TLSFRONT_PROXY_WORKER_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "proxy/app.h"
#include "proxy/chunk_pool.h"

/* One read takes up to this much (issue 12: fewer, larger reads and writes
 * of message content). */
#define WORKER_READ_BUF (256 * 1024)

enum listener_kind { LISTENER_TCP = 0, LISTENER_TLS, LISTENER_OUTBOUND };

/* A listening socket of one worker. tlsfront accepts by itself (worker.c,
 * "Accepting") instead of with uv_listen: poll watches the socket, pause
 * holds accepting back for a moment when descriptors run out. */
struct listener {
	uv_poll_t poll;
	uv_timer_t pause;
	struct worker *worker;
	enum listener_kind kind;
	int fd; /* bound and listening, made by main; closed when the worker stops */
};

struct session;
struct outbound;

struct worker {
	unsigned index;
	struct app *app; /* the generation new sessions get; one reference */
	uv_loop_t loop;
	uv_async_t stop_async;
	uv_async_t reload_async;
	pthread_mutex_t pending_lock;
	struct app *pending; /* a reloaded generation not yet taken; one reference */
	uv_timer_t shutdown_timer;
	struct listener *listeners; /* owned array */
	size_t n_listeners;
	struct session *sessions;   /* intrusive list of live sessions */
	struct outbound *outbounds; /* intrusive list of live outbound sessions */
	unsigned n_sessions;
	bool stopping;
	int reserve_fd;	       /* held for the one accept that refuses at EMFILE; -1: lost */
	unsigned fd_refused;   /* connections refused at EMFILE since the last log line */
	unsigned fd_pauses;    /* pauses of accepting (no reserve) since then */
	uint64_t fd_logged_ms; /* loop time of that line */
	pthread_t thread;
	char read_buf[WORKER_READ_BUF]; /* libuv reads land here */
	struct chunk_pool pool;		/* write buffers of message content */
};

/* Takes ownership of the listening fds in fds (n of them, kinds alike).
 * Returns 0 or a negative errno. */
int worker_start(struct worker *w, unsigned index, struct app *app, const int *fds,
		 const enum listener_kind *kinds, size_t n);
/* Hands a new generation to the worker (thread-safe); new sessions get it,
 * sessions in flight keep theirs. */
void worker_reload(struct worker *w, struct app *app);
/* Asks the worker to stop accepting and finish its sessions (thread-safe). */
void worker_stop(struct worker *w);
/* Waits for the thread to end and releases the loop. */
void worker_join(struct worker *w);

/* Closes an accepted connection for which there is no memory for a
 * session. Nothing here may allocate. */
void worker_drop_connection(struct listener *l, int fd);

/* Called by a session when it is gone: the worker may now finish. */
void worker_session_ended(struct worker *w);

#endif
