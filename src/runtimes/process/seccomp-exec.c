/*
 * kiln-seccomp-exec [--nproc N] FD|PATH PROGRAM [ARG...]
 *
 * The last step of an exec entering a live sandbox: run by nsenter as the
 * sandbox uid, after every setns, it sets no_new_privs, installs the classic
 * BPF seccomp program it reads from FD, or from the file at the absolute
 * PATH (struct sock_filter[], as src/runtimes/process/seccomp.ts writes it),
 * closes every fd above 2 and execs PROGRAM (found on PATH).
 *
 * Why it exists: nsenter cannot install a seccomp filter; bwrap does it for
 * the sandbox's first process. Running after the setns calls lets the filter
 * deny setns. scripts/setup builds it statically, so it runs inside any
 * template rootfs, and the launcher hands it over as an open fd, so it need
 * not exist inside the sandbox.
 * gVisor sandboxes use the PATH form: `docker exec` cannot pass an fd, so the
 * helper and the filter are bind-mounted read-only (src/runtimes/gvisor/seccomp.ts).
 * They also use --nproc: RLIMIT_NPROC (soft and hard) is how an exec's
 * process limit is kept inside gVisor, where no per-exec cgroup exists.
 * Every failure before the exec prints "kiln-seccomp-exec: ..." and exits 125.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "../helpers.h"

#define ME "kiln-seccomp-exec"
/* The kernel's limit is 4096 instructions of 8 bytes. */
#define MAX_BYTES (4096 * 8)

static int fail(const char *what) {
  fprintf(stderr, ME ": %s: %s\n", what, strerror(errno));
  return 125;
}


static int install_filter(int fd) {
  static unsigned char buf[MAX_BYTES + 1];
  size_t len = 0;
  for (;;) {
    ssize_t n = read(fd, buf + len, sizeof buf - len);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return fail("reading the filter");
    if (n == 0) break;
    len += (size_t)n;
    if (len > MAX_BYTES) {
      fprintf(stderr, ME ": the filter is larger than %d bytes\n", MAX_BYTES);
      return 125;
    }
  }
  if (len == 0 || len % sizeof(struct sock_filter) != 0) {
    fprintf(stderr, ME ": the filter is %zu bytes, not a whole number of instructions\n", len);
    return 125;
  }
  struct sock_fprog prog = { .len = (unsigned short)(len / sizeof(struct sock_filter)), .filter = (struct sock_filter *)buf };
  /* Required for a filter without CAP_SYS_ADMIN, and wanted anyway. */
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return fail("PR_SET_NO_NEW_PRIVS");
  if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) != 0) return fail("installing the filter");
  return 0;
}

int main(int argc, char **argv) {
  if (argc >= 3 && strcmp(argv[1], "--nproc") == 0) {
    long n = parse_decimal(argv[2], 1L << 22);
    if (n < 1) {
      fprintf(stderr, ME ": --nproc: expected a process count, got \"%s\"\n", argv[2]);
      return 125;
    }
    struct rlimit lim = { .rlim_cur = (rlim_t)n, .rlim_max = (rlim_t)n };
    if (setrlimit(RLIMIT_NPROC, &lim) != 0) return fail("RLIMIT_NPROC");
    argc -= 2;
    argv += 2;
  }
  if (argc < 3) {
    fprintf(stderr, "usage: " ME " [--nproc N] FD|PATH PROGRAM [ARG...]\n");
    return 125;
  }
  long fd;
  if (argv[1][0] == '/') {
    fd = open(argv[1], O_RDONLY | O_CLOEXEC);
    if (fd < 0) return fail(argv[1]);
  } else if ((fd = parse_decimal(argv[1], 1024)) < 0) {
    fprintf(stderr, ME ": expected a file descriptor number or an absolute path, got \"%s\"\n", argv[1]);
    return 125;
  }
  int rc = install_filter((int)fd);
  if (rc != 0) return rc;

  /* The filter's fd, the fd this helper was exec'd from, kiln's status pipe: none is the program's. */
  if (syscall(SYS_close_range, 3U, ~0U, 0U) != 0) {
    for (int i = 3; i < 1024; i++) close(i);
  }
  execvp(argv[2], argv + 2);
  fprintf(stderr, ME ": cannot run %s: %s\n", argv[2], strerror(errno));
  return errno == ENOENT ? 127 : 126;
}
