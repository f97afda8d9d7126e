/* loop.c - the one event loop: epoll over MHD's epoll fd, the worker
 * channels and a signalfd.  Handlers are kept in a table indexed by fd, not
 * behind epoll's data pointer, so an event still queued for an fd that a
 * handler closed earlier in the same turn finds no handler (or the harmless
 * new owner of that number) instead of freed memory. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "jobpool.h"

struct handler {
	loop_fn fn;
	void *ctx;
};

static int ep = -1;
static struct handler *handlers;
static int nhandlers;

int loop_init(void)
{
	ep = epoll_create1(EPOLL_CLOEXEC);
	return ep < 0 ? -1 : 0;
}

int loop_add(int fd, uint32_t events, loop_fn fn, void *ctx)
{
	struct epoll_event ev = { .events = events, .data.fd = fd };

	if (fd >= nhandlers) {
		int n = fd + 64;
		struct handler *h = realloc(handlers, (size_t)n * sizeof(*h));

		if (!h)
			return -1;
		memset(h + nhandlers, 0, (size_t)(n - nhandlers) * sizeof(*h));
		handlers = h;
		nhandlers = n;
	}
	handlers[fd].fn = fn;
	handlers[fd].ctx = ctx;
	return epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
}

void loop_del(int fd)
{
	epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
	if (fd >= 0 && fd < nhandlers)
		handlers[fd].fn = NULL;
}

/* loop_wait waits up to timeout_ms and runs the handlers of ready fds.
 * Returns the number of events, or -1 on a real error. */
int loop_wait(int timeout_ms)
{
	struct epoll_event evs[64];
	int i, n, fd;

	n = epoll_wait(ep, evs, 64, timeout_ms);
	if (n < 0)
		return errno == EINTR ? 0 : -1;
	for (i = 0; i < n; i++) {
		fd = evs[i].data.fd;
		if (fd < nhandlers && handlers[fd].fn)
			handlers[fd].fn(fd, evs[i].events, handlers[fd].ctx);
	}
	return n;
}

void loop_close(void)
{
	if (ep >= 0)
		close(ep);
	ep = -1;
	free(handlers);
	handlers = NULL;
	nhandlers = 0;
}
