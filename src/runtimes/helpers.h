/*
 * Shared by kiln's small static helpers (kiln-launch.c, seccomp-exec.c,
 * kiln-relay.c); scripts/setup rebuilds each helper when this file changes.
 */
#ifndef KILN_HELPERS_H
#define KILN_HELPERS_H

#include <errno.h>
#include <stdlib.h>

/* A plain decimal number in [0, max], or -1 (no sign, no blanks, nothing after it). */
static long parse_decimal(const char *s, long max) {
  char *end;
  errno = 0;
  long n = strtol(s, &end, 10);
  if (*s == '\0' || *end != '\0' || errno != 0 || n < 0 || n > max) return -1;
  return n;
}

#endif
