/* A minimal HTTP/1.1 server for benchmarks: one thread, epoll, keep-alive,
 * every request answered "200 OK" with a 2-byte body. It reads a request up
 * to its blank line (bodies are not supported: the benchmarks send GETs) and
 * honours "Connection: close". Fast enough that a client and a proxy in front
 * of it are what gets measured.
 *   httpd PORT        (listens on [::]:PORT, dual-stack) */
#define _GNU_SOURCE
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF 8192

struct conn {
	int fd;
	size_t len;
	char buf[BUF];
};

static const char OK[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok";
static const char OK_CLOSE[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";

static void drop(int ep, struct conn *c)
{
	epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	free(c);
}

/* Answer every complete request in the buffer; 0 = keep the connection. */
static int serve(struct conn *c)
{
	char *end;

	while ((end = memmem(c->buf, c->len, "\r\n\r\n", 4))) {
		size_t used = end + 4 - c->buf;
		int close_it = memmem(c->buf, used, "Connection: close", 17) != NULL ||
			       memmem(c->buf, used, "connection: close", 17) != NULL;

		if (close_it) {
			(void)!write(c->fd, OK_CLOSE, sizeof(OK_CLOSE) - 1);
			return 1;
		}
		if (write(c->fd, OK, sizeof(OK) - 1) < 0)
			return 1;
		memmove(c->buf, c->buf + used, c->len - used);
		c->len -= used;
	}
	return c->len == BUF;	/* a request larger than the buffer */
}

int main(int argc, char **argv)
{
	struct sockaddr_in6 a = { .sin6_family = AF_INET6 };
	struct epoll_event ev, evs[256];
	int ls, ep, one = 1, zero = 0;

	if (argc != 2)
		return 2;
	a.sin6_port = htons(atoi(argv[1]));
	ls = socket(AF_INET6, SOCK_STREAM | SOCK_NONBLOCK, 0);
	setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	setsockopt(ls, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
	if (bind(ls, (struct sockaddr *)&a, sizeof(a)) || listen(ls, 4096)) {
		perror("listen");
		return 1;
	}
	ep = epoll_create1(0);
	ev.events = EPOLLIN;
	ev.data.ptr = NULL;
	epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
	printf("ready\n");
	fflush(stdout);
	for (;;) {
		int n = epoll_wait(ep, evs, 256, -1);

		for (int i = 0; i < n; i++) {
			struct conn *c = evs[i].data.ptr;

			if (!c) {
				int fd;

				while ((fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
					c = calloc(1, sizeof(*c));
					c->fd = fd;
					ev.events = EPOLLIN;
					ev.data.ptr = c;
					epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
				}
				continue;
			}
			ssize_t r = read(c->fd, c->buf + c->len, BUF - c->len);

			if (r <= 0) {
				drop(ep, c);
				continue;
			}
			c->len += r;
			if (serve(c))
				drop(ep, c);
		}
	}
}
