/*
 * kiln-netns.node: connect(nsFd, port) -> fd; listening(nsFd, port) -> boolean
 *
 * A Node addon (plain N-API, no dependency) that opens a TCP connection to
 * 127.0.0.1:<port> inside another network namespace: the calling thread joins
 * the namespace open at nsFd (setns), makes a non-blocking socket, returns to
 * its own namespace and starts the connect. A socket belongs to the namespace
 * it was made in, so the connection stays there; kiln wraps the fd
 * in a net.Socket. This is how kiln reaches a session's server inside a
 * sandbox with no network, with no bridge process in the data path.
 *
 * listening() asks the namespace's kernel whether a TCP socket listens on
 * the port, at an address a link reaches (0.0.0.0, 127.0.0.1, :: unless
 * IPV6_V6ONLY, or ::ffff:127.0.0.1), over a sock_diag netlink socket made
 * inside it. The kernel answers from its table of listening sockets alone;
 * /proc/<pid>/net/tcp walks the whole established-connections hash, shared
 * by every namespace (262,144 buckets on a 24 GiB machine: about 1 ms per
 * read, on kiln's loop).
 *
 * Only the network namespace of one thread changes, and only for one
 * socket() call; if the thread cannot return to its own namespace the process
 * aborts rather than go on inside the sandbox's.
 * scripts/setup builds it (gcc -shared against Node's headers).
 */
#define _GNU_SOURCE
#define NAPI_VERSION 8
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <node_api.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static napi_value throw_errno(napi_env env, const char *what, int err) {
  char msg[160];
  snprintf(msg, sizeof msg, "%s: %s", what, strerror(err));
  const char *code = err == ECONNREFUSED ? "ECONNREFUSED" : err == EBADF ? "EBADF" : err == EINVAL ? "EINVAL" : err == EPERM ? "EPERM" : "ENETNS";
  napi_throw_error(env, code, msg);
  return NULL;
}

/* The two arguments every call takes: an fd of a network namespace and a TCP port. False after throwing. */
static int ns_and_port(napi_env env, napi_callback_info info, const char *usage, int32_t *ns_fd, int32_t *port) {
  size_t argc = 2;
  napi_value argv[2];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 2 || napi_get_value_int32(env, argv[0], ns_fd) != napi_ok ||
      napi_get_value_int32(env, argv[1], port) != napi_ok || *ns_fd < 0 || *port < 1 || *port > 65535) {
    napi_throw_type_error(env, NULL, usage);
    return 0;
  }
  return 1;
}

/* kiln's own namespace, the same for all its threads: opened once, from the first caller. */
static int self_ns(void) {
  static int self = -1;
  if (self < 0) self = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
  return self;
}

static void return_home(int self) {
  if (setns(self, CLONE_NEWNET) != 0) {
    fprintf(stderr, "kiln-netns: cannot return to kiln's own network namespace: %s\n", strerror(errno));
    abort();
  }
}

/*
 * A socket made inside the network namespace at ns_fd: the calling thread
 * joins it for the socket() call alone. A socket belongs to the namespace it
 * was made in for good, so everything after (connect, send) happens from
 * kiln's own. -1 after throwing.
 */
static int socket_in(napi_env env, int ns_fd, int domain, int type, int protocol) {
  int self = self_ns();
  if (self < 0) {
    throw_errno(env, "open /proc/thread-self/ns/net", errno);
    return -1;
  }
  if (setns(ns_fd, CLONE_NEWNET) != 0) {
    throw_errno(env, "setns into the sandbox", errno);
    return -1;
  }
  int s = socket(domain, type, protocol);
  int err = errno;
  return_home(self);
  if (s < 0) throw_errno(env, "socket", err);
  return s;
}

static napi_value connect_in(napi_env env, napi_callback_info info) {
  int32_t ns_fd, port;
  if (!ns_and_port(env, info, "connect(nsFd, port): an fd and a TCP port", &ns_fd, &port)) return NULL;
  int s = socket_in(env, ns_fd, AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (s < 0) return NULL;
  struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr = { htonl(INADDR_LOOPBACK) } };
  if (connect(s, (struct sockaddr *)&addr, sizeof addr) != 0 && errno != EINPROGRESS) {
    int err = errno;
    close(s);
    return throw_errno(env, "connect", err);
  }
  int one = 1;
  setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  napi_value out;
  napi_create_int32(env, s, &out);
  return out;
}

/* How many sockets one look reads at most before it gives up (the caller then probes through a link). */
#define MAX_LISTENERS 1024

/* Whether an IPv6 listener was made IPV6_V6ONLY (the kernel sends INET_DIAG_SKV6ONLY for every AF_INET6 socket). */
static int v6only(const struct nlmsghdr *h) {
  const struct inet_diag_msg *m = NLMSG_DATA(h);
  int len = (int)(h->nlmsg_len - NLMSG_LENGTH(sizeof *m));
  for (const struct rtattr *a = (const struct rtattr *)(m + 1); RTA_OK(a, len); a = RTA_NEXT(a, len)) {
    if (a->rta_type == INET_DIAG_SKV6ONLY && RTA_PAYLOAD(a) >= 1) return *(const uint8_t *)RTA_DATA(a) != 0;
  }
  return 0;
}

/* Whether a listening socket's local address is one a link (which dials 127.0.0.1) reaches. */
static int reachable(const struct nlmsghdr *h) {
  const struct inet_diag_msg *m = NLMSG_DATA(h);
  const uint32_t *a = m->id.idiag_src;
  if (m->idiag_family == AF_INET) return a[0] == htonl(INADDR_ANY) || a[0] == htonl(INADDR_LOOPBACK);
  /* :: unless IPV6_V6ONLY, and ::ffff:127.0.0.1; not ::1, which 127.0.0.1 does not reach */
  if (a[0] != 0 || a[1] != 0) return 0;
  if (a[2] == 0 && a[3] == 0) return !v6only(h);
  return a[2] == htonl(0xffff) && a[3] == htonl(INADDR_LOOPBACK);
}

/* Whether a whole message starts at h with `left` bytes read (NLMSG_OK, without its signed/unsigned mix). */
static int message_ok(const struct nlmsghdr *h, size_t left) {
  return left >= sizeof *h && h->nlmsg_len >= sizeof *h && h->nlmsg_len <= left;
}

/* The message after h; `left` becomes 0 when h was the last one read. */
static struct nlmsghdr *next_message(struct nlmsghdr *h, size_t *left) {
  size_t step = NLMSG_ALIGN(h->nlmsg_len);
  if (step >= *left) {
    *left = 0;
    return h;
  }
  *left -= step;
  return (struct nlmsghdr *)((char *)h + step);
}

/*
 * 1 if the namespace of sock_diag socket `nl` has a reachable TCP listener on
 * `port` in `family`, 0 if not, -errno on failure (-ENOENT: no such family here,
 * as on a kernel without IPv6; -E2BIG: more than MAX_LISTENERS sockets on the port).
 */
static int listens(int nl, int family, int port) {
  struct {
    struct nlmsghdr nlh;
    struct inet_diag_req_v2 req;
  } q = {
    .nlh = { .nlmsg_len = sizeof q, .nlmsg_type = SOCK_DIAG_BY_FAMILY, .nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP },
    /* The kernel filters by source port, and walks only its listening sockets for a LISTEN-only request. */
    .req = { .sdiag_family = (uint8_t)family, .sdiag_protocol = IPPROTO_TCP, .idiag_states = 1 << TCP_LISTEN, .id = { .idiag_sport = htons((uint16_t)port) } },
  };
  ssize_t sent = send(nl, &q, sizeof q, 0);
  if (sent != (ssize_t)sizeof q) return sent < 0 ? -errno : -EPROTO;
  long buf[2048]; /* 16 KiB (no less than the kernel's dump buffers), aligned for nlmsghdr */
  int seen = 0;
  for (;;) {
    ssize_t n = recv(nl, buf, sizeof buf, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno; /* EAGAIN: the receive timeout passed */
    }
    if (n == 0) return -EPROTO;
    size_t left = (size_t)n;
    for (struct nlmsghdr *h = (struct nlmsghdr *)buf; message_ok(h, left); h = next_message(h, &left)) {
      if (h->nlmsg_type == NLMSG_DONE) {
        /* A dump that failed part-way says so here. */
        int err = h->nlmsg_len >= NLMSG_LENGTH(sizeof(int)) ? *(const int *)NLMSG_DATA(h) : 0;
        return err < 0 ? err : 0;
      }
      if (h->nlmsg_type == NLMSG_ERROR) {
        const struct nlmsgerr *e = NLMSG_DATA(h);
        return h->nlmsg_len < NLMSG_LENGTH(sizeof *e) ? -EPROTO : e->error < 0 ? e->error : -EPROTO;
      }
      if (h->nlmsg_type != SOCK_DIAG_BY_FAMILY || h->nlmsg_len < NLMSG_LENGTH(sizeof(struct inet_diag_msg))) continue;
      const struct inet_diag_msg *m = NLMSG_DATA(h);
      /* Closing the socket mid-dump is fine: the first reachable listener settles it. */
      if (m->idiag_state == TCP_LISTEN && ntohs(m->id.idiag_sport) == port && reachable(h)) return 1;
      if (++seen > MAX_LISTENERS) return -E2BIG;
    }
  }
}

static napi_value listening_in(napi_env env, napi_callback_info info) {
  int32_t ns_fd, port;
  if (!ns_and_port(env, info, "listening(nsFd, port): an fd and a TCP port", &ns_fd, &port)) return NULL;
  /* A netlink socket answers for the namespace it was made in. */
  int nl = socket_in(env, ns_fd, AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
  if (nl < 0) return NULL;
  /* Only the kernel may answer, and never after more than a second (kiln's loop waits on this). */
  struct sockaddr_nl kernel = { .nl_family = AF_NETLINK };
  struct timeval second = { .tv_sec = 1 };
  if (connect(nl, (struct sockaddr *)&kernel, sizeof kernel) != 0 || setsockopt(nl, SOL_SOCKET, SO_RCVTIMEO, &second, sizeof second) != 0) {
    int err = errno;
    close(nl);
    return throw_errno(env, "sock_diag socket", err);
  }
  int r = listens(nl, AF_INET, port);
  if (r == 0) {
    r = listens(nl, AF_INET6, port);
    if (r == -ENOENT) r = 0; /* no IPv6 in this kernel: no IPv6 listener */
  }
  close(nl);
  if (r < 0) return throw_errno(env, "sock_diag", -r);
  napi_value out;
  napi_get_boolean(env, r == 1, &out);
  return out;
}

NAPI_MODULE_INIT() {
  napi_value fn;
  napi_create_function(env, "connect", NAPI_AUTO_LENGTH, connect_in, NULL, &fn);
  napi_set_named_property(env, exports, "connect", fn);
  napi_create_function(env, "listening", NAPI_AUTO_LENGTH, listening_in, NULL, &fn);
  napi_set_named_property(env, exports, "listening", fn);
  return exports;
}
