/*
 * kiln-launch [--cgroup FILE]... --cpu-seconds N|unlimited [--work-dir DIR]
 *             --seccomp FILE [--helper FILE] [--uid UID --gid GID]
 *             -- PROGRAM [ARG...]
 *
 * The first step of every process-runtime exec, run as root by kiln (see
 * bwrap.ts). In order:
 *   1. joins each cgroup (writes its pid to FILE), so limits hold before any
 *      code of the sandbox exists;
 *   2. sets RLIMIT_CORE 0 and RLIMIT_CPU (a backstop under kiln's CPU deadline);
 *   3. opens DIR as fd 5 (bwrap binds the fd, so no path is followed as the
 *      sandbox user), the seccomp filter (a root-only file) as fd 6 and the
 *      enter helper as fd 7;
 *   4. with --uid/--gid: drops supplementary groups, gid and uid (real,
 *      effective, saved) and sets no_new_privs;
 *   5. execs PROGRAM (bwrap, or nsenter for an exec into a live sandbox).
 *
 * It replaces a /bin/sh script and setpriv: two dynamic executables fewer on
 * every start (~10 ms on a loaded 2-core host). scripts/setup builds it static.
 * Every failure before the exec prints "kiln-launcher: ..." and exits 125.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <unistd.h>
#include "../helpers.h"

#define ME "kiln-launcher"
#define WORK_FD 5
#define SECCOMP_FD 6
#define HELPER_FD 7
#define MAX_CGROUPS 16

static int fail(const char *what, const char *arg) {
  fprintf(stderr, ME ": %s%s%s: %s\n", what, arg ? " " : "", arg ? arg : "", strerror(errno));
  return 125;
}

static int usage(const char *why) {
  fprintf(stderr, ME ": %s\n", why);
  return 125;
}


/* Opens path as exactly fd `at`, inherited across exec. */
static int open_as(const char *path, int flags, int at, const char *what) {
  int fd = open(path, flags | O_CLOEXEC);
  if (fd < 0) return fail(what, path);
  if (fd == at) {
    if (fcntl(fd, F_SETFD, 0) != 0) return fail(what, path);
    return 0;
  }
  if (dup2(fd, at) < 0) return fail(what, path); /* dup2's copy has no FD_CLOEXEC */
  close(fd);
  return 0;
}

static int join_cgroup(const char *procs) {
  int fd = open(procs, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return fail("cannot join cgroup", procs);
  char pid[24];
  int len = snprintf(pid, sizeof pid, "%d\n", (int)getpid());
  ssize_t n = write(fd, pid, (size_t)len);
  int saved = errno;
  close(fd);
  errno = saved;
  if (n != len) return fail("cannot join cgroup", procs);
  return 0;
}

int main(int argc, char **argv) {
  const char *cgroups[MAX_CGROUPS];
  int ncgroups = 0;
  const char *cpu = NULL, *work = NULL, *seccomp = NULL, *helper = NULL;
  long uid = -1, gid = -1;
  int i = 1;
  for (; i < argc && strcmp(argv[i], "--") != 0; i += 2) {
    const char *opt = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
    if (val == NULL) return usage("an option without a value");
    if (strcmp(opt, "--cgroup") == 0) {
      if (ncgroups == MAX_CGROUPS) return usage("too many --cgroup");
      cgroups[ncgroups++] = val;
    } else if (strcmp(opt, "--cpu-seconds") == 0) cpu = val;
    else if (strcmp(opt, "--work-dir") == 0) work = val;
    else if (strcmp(opt, "--seccomp") == 0) seccomp = val;
    else if (strcmp(opt, "--helper") == 0) helper = val;
    else if (strcmp(opt, "--uid") == 0) uid = parse_decimal(val, 0x7fffffff);
    else if (strcmp(opt, "--gid") == 0) gid = parse_decimal(val, 0x7fffffff);
    else {
      fprintf(stderr, ME ": unknown option %s\n", opt);
      return 125;
    }
  }
  if (i + 1 >= argc) return usage("no program after --");
  if (cpu == NULL || seccomp == NULL) return usage("--cpu-seconds and --seccomp are required");
  if ((uid < 0) != (gid < 0)) return usage("--uid and --gid go together, as numbers");
  char **program = argv + i + 1;

  for (int c = 0; c < ncgroups; c++)
    if (join_cgroup(cgroups[c]) != 0) return 125;

  struct rlimit none = { 0, 0 };
  if (setrlimit(RLIMIT_CORE, &none) != 0) return fail("RLIMIT_CORE", NULL);
  if (strcmp(cpu, "unlimited") != 0) {
    long s = parse_decimal(cpu, 1L << 30);
    if (s < 0) return usage("--cpu-seconds: expected a number of seconds or unlimited");
    struct rlimit lim = { (rlim_t)s, (rlim_t)s };
    if (setrlimit(RLIMIT_CPU, &lim) != 0) return fail("RLIMIT_CPU", NULL);
  }

  if (work != NULL && open_as(work, O_RDONLY | O_DIRECTORY, WORK_FD, "cannot open work dir") != 0) return 125;
  if (open_as(seccomp, O_RDONLY, SECCOMP_FD, "cannot open seccomp filter") != 0) return 125;
  if (helper != NULL && open_as(helper, O_RDONLY, HELPER_FD, "cannot open") != 0) return 125;

  if (uid >= 0) {
    if (setgroups(0, NULL) != 0) return fail("setgroups", NULL);
    if (setresgid((gid_t)gid, (gid_t)gid, (gid_t)gid) != 0) return fail("setresgid", NULL);
    if (setresuid((uid_t)uid, (uid_t)uid, (uid_t)uid) != 0) return fail("setresuid", NULL);
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return fail("PR_SET_NO_NEW_PRIVS", NULL);
  }

  execvp(program[0], program);
  return fail("cannot run", program[0]);
}
