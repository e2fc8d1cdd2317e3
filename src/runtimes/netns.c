/*
 * kiln-netns.node: connect(nsFd, port) -> fd
 *
 * A Node addon (plain N-API, no dependency) that opens a TCP connection to
 * 127.0.0.1:<port> inside another network namespace: the calling thread joins
 * the namespace open at nsFd (setns), makes a non-blocking socket and starts
 * the connect, then returns to its own namespace. A socket belongs to the
 * namespace it was made in, so the connection stays there; kiln wraps the fd
 * in a net.Socket. This is how kiln reaches a session's server inside a
 * sandbox with no network, with no bridge process in the data path.
 *
 * Only the network namespace of one thread changes, and only for three
 * system calls; if the thread cannot return to its own namespace the process
 * aborts rather than go on inside the sandbox's.
 * scripts/setup builds it (gcc -shared against Node's headers).
 */
#define _GNU_SOURCE
#define NAPI_VERSION 8
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <node_api.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static napi_value throw_errno(napi_env env, const char *what, int err) {
  char msg[160];
  snprintf(msg, sizeof msg, "%s: %s", what, strerror(err));
  const char *code = err == ECONNREFUSED ? "ECONNREFUSED" : err == EBADF ? "EBADF" : err == EINVAL ? "EINVAL" : err == EPERM ? "EPERM" : "ENETNS";
  napi_throw_error(env, code, msg);
  return NULL;
}

static napi_value connect_in(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 2) {
    napi_throw_type_error(env, NULL, "connect(nsFd, port): two arguments");
    return NULL;
  }
  int32_t ns_fd = -1, port = -1;
  if (napi_get_value_int32(env, argv[0], &ns_fd) != napi_ok || napi_get_value_int32(env, argv[1], &port) != napi_ok || ns_fd < 0 || port < 1 || port > 65535) {
    napi_throw_type_error(env, NULL, "connect(nsFd, port): an fd and a TCP port");
    return NULL;
  }
  /* kiln's own namespace, the same for all its threads: opened once, from the first caller. */
  static int self = -1;
  if (self < 0 && (self = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC)) < 0) return throw_errno(env, "open /proc/thread-self/ns/net", errno);
  if (setns(ns_fd, CLONE_NEWNET) != 0) return throw_errno(env, "setns into the sandbox", errno);
  int s = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int err = s < 0 ? errno : 0;
  if (s >= 0) {
    struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr = { htonl(INADDR_LOOPBACK) } };
    if (connect(s, (struct sockaddr *)&addr, sizeof addr) != 0 && errno != EINPROGRESS) err = errno;
  }
  if (setns(self, CLONE_NEWNET) != 0) {
    fprintf(stderr, "kiln-netns: cannot return to kiln's own network namespace: %s\n", strerror(errno));
    abort();
  }
  if (err != 0) {
    if (s >= 0) close(s);
    return throw_errno(env, "connect", err);
  }
  int one = 1;
  setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  napi_value out;
  napi_create_int32(env, s, &out);
  return out;
}

NAPI_MODULE_INIT() {
  napi_value fn;
  napi_create_function(env, "connect", NAPI_AUTO_LENGTH, connect_in, NULL, &fn);
  napi_set_named_property(env, exports, "connect", fn);
  return exports;
}
