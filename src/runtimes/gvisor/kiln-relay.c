/*
 * kiln-relay: carries one backend connection of a gVisor session across a
 * `docker exec`. Under runsc --network=none the server's port exists only on
 * gVisor's own loopback, which nothing on the host can enter; an exec can.
 *
 *   kiln-relay PORT       connect to 127.0.0.1:PORT inside the sandbox, then
 *                         copy stdin -> socket and socket -> stdout.
 *   kiln-relay -t PORT    exit 0 if 127.0.0.1:PORT accepts a connection, else
 *                         3: kiln's TCP readiness check (a relay's own client
 *                         cannot tell a refused connect from a slow exec)
 *   kiln-relay -k PID     SIGKILL relay PID (kiln's client went away while the
 *                         relay still runs; docker does not end an exec whose
 *                         attach connection closed). Refuses any other process.
 *
 * Before relaying, the first stderr line is "kiln-exec-pid <pid>", the pid
 * inside the sentry that -k takes. Exit codes: 0 done, 2 usage, 3 connect
 * failed (nothing listens yet), 4 I/O error, 5 kill refused.
 *
 * Stdin EOF (the client half-closed) becomes shutdown(SHUT_WR) on the socket
 * and replies still flow; socket EOF ends the relay, since kiln only learns
 * of it when the exec exits. Both directions are non-blocking with one buffer
 * each, so a peer that writes while it reads cannot deadlock the relay.
 *
 * Static (gcc -static) and bind-mounted read-only: works in any image.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include "../helpers.h"

#define BUF_SIZE 65536

/* One direction: bytes read from `from`, not yet written to `to`. */
struct pipe_dir {
  int from, to;
  char buf[BUF_SIZE];
  size_t len, off;
  int eof; /* `from` ended; nothing more to read */
};


static void set_nonblock(int fd) {
  int fl = fcntl(fd, F_GETFL);
  if (fl >= 0) fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

/* Kill `pid` only when it is a kiln-relay: its argv[0] names this program. */
static int kill_relay(long pid, const char *self) {
  char path[64], cmd[4096];
  snprintf(path, sizeof path, "/proc/%ld/cmdline", pid);
  int fd = open(path, O_RDONLY);
  if (fd < 0) return 0; /* already gone */
  ssize_t n = read(fd, cmd, sizeof cmd - 1);
  close(fd);
  if (n <= 0) return 0;
  cmd[n] = '\0';
  /* A relay's argv is [self, PORT]; a killer's is [self, -k, PID]. */
  if (strcmp(cmd, self) != 0 || (size_t)n <= strlen(self) + 1 || strcmp(cmd + strlen(self) + 1, "-k") == 0) {
    fprintf(stderr, "kiln-relay: pid %ld is not a relay\n", pid);
    return 5;
  }
  if (kill((pid_t)pid, SIGKILL) != 0 && errno != ESRCH) {
    perror("kiln-relay: kill");
    return 5;
  }
  return 0;
}

/* Read into an empty buffer. Returns -1 on a hard error. */
static int fill(struct pipe_dir *d) {
  ssize_t n = read(d->from, d->buf, sizeof d->buf);
  if (n > 0) {
    d->len = (size_t)n;
    d->off = 0;
  } else if (n == 0) {
    d->eof = 1;
  } else if (errno != EAGAIN && errno != EINTR) {
    if (errno == ECONNRESET) d->eof = 1;
    else return -1;
  }
  return 0;
}

/* Write what the buffer holds. Returns -1 when the reader is gone. */
static int drain(struct pipe_dir *d) {
  while (d->off < d->len) {
    ssize_t n = write(d->to, d->buf + d->off, d->len - d->off);
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) return 0;
      return -1;
    }
    d->off += (size_t)n;
  }
  d->len = d->off = 0;
  return 0;
}

int main(int argc, char **argv) {
  signal(SIGPIPE, SIG_IGN); /* a gone reader shows as EPIPE, handled below */
  if (argc == 3 && strcmp(argv[1], "-k") == 0) {
    long pid = parse_decimal(argv[2], 0x7fffffff);
    if (pid < 1) {
      fprintf(stderr, "kiln-relay: -k needs a pid, got %s\n", argv[2]);
      return 2;
    }
    return kill_relay(pid, argv[0]);
  }
  int test = argc == 3 && strcmp(argv[1], "-t") == 0;
  long port = argc == 2 ? parse_decimal(argv[1], 65535) : test ? parse_decimal(argv[2], 65535) : -1;
  if (port < 1) {
    fprintf(stderr, "usage: kiln-relay PORT | kiln-relay -t PORT | kiln-relay -k PID\n");
    return 2;
  }
  if (!test) {
    fprintf(stderr, "kiln-exec-pid %ld\n", (long)getpid());
    fflush(stderr);
  }

  int sock = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  if (sock < 0 || connect(sock, (struct sockaddr *)&addr, sizeof addr) != 0) {
    if (!test) fprintf(stderr, "kiln-relay: connect 127.0.0.1:%ld: %s\n", port, strerror(errno));
    return 3;
  }
  if (test) return close(sock), 0;
  int one = 1;
  setsockopt(sock, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  set_nonblock(0);
  set_nonblock(1);
  set_nonblock(sock);

  static struct pipe_dir up, down; /* up: client -> server; down: server -> client */
  up.from = 0, up.to = sock;
  down.from = sock, down.to = 1;
  int up_shut = 0;
  for (;;) {
    struct pollfd p[4] = {
        {.fd = (!up.eof && up.len == 0) ? 0 : -1, .events = POLLIN},
        {.fd = up.len > 0 ? sock : -1, .events = POLLOUT},
        {.fd = (!down.eof && down.len == 0) ? sock : -1, .events = POLLIN},
        {.fd = down.len > 0 ? 1 : -1, .events = POLLOUT},
    };
    if (poll(p, 4, -1) < 0) {
      if (errno == EINTR) continue;
      return 4;
    }
    if (p[0].revents && fill(&up) < 0) return 4;
    if ((p[1].revents || up.len > 0) && drain(&up) < 0) return 0; /* server stopped reading: it is closing */
    if (up.eof && up.len == 0 && !up_shut) {
      shutdown(sock, SHUT_WR);
      up_shut = 1;
    }
    if (p[2].revents && fill(&down) < 0) return 4;
    if ((p[3].revents || down.len > 0) && drain(&down) < 0) return 0; /* kiln's end is gone */
    if (down.eof && down.len == 0) return 0;
  }
}
