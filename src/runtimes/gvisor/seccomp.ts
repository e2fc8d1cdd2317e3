/**
 * Kiln's seccomp filter inside a gVisor sandbox.
 *
 * gVisor's sentry takes a sandbox's system calls, so the host kernel's filter
 * (Docker's profile) never sees them, and runsc's own `--oci-seccomp` cannot
 * help on this runsc (under Docker's profile no thread can start). But the
 * sentry implements seccomp(2) for the programs it runs. So every program kiln
 * starts in a gVisor sandbox (the main, the keeper, each exec) is started by
 * the static seccomp helper, which installs the same filter as the process
 * runtime's (../process/seccomp.ts) and then execs the program: no new
 * namespaces (gVisor's own or not), no bpf, io_uring, keyrings, mounts.
 *
 * Helper and filter are bind-mounted read-only; `docker exec` cannot pass an
 * fd, so the helper opens the filter by path.
 */
import { existsSync, mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { KilnError } from '../../errors.js';
import { buildSeccompFilter, filterDigest } from '../process/seccomp.js';

/** Where scripts/setup builds the helper on the host (shared with the process runtime). */
export const HELPER_HOST_PATH = '/usr/local/lib/kiln/seccomp-exec';
/** Where a gVisor sandbox sees the helper and the filter. */
export const HELPER_PATH = '/.kiln/seccomp-exec';
export const FILTER_PATH = '/.kiln/seccomp.bpf';

const filter = buildSeccompFilter();
let written: string | undefined;

/**
 * The bind mounts of helper and filter. Writes the filter file under `dir`
 * once per process (named by its content, written whole and renamed into
 * place, 0644: the sandbox uid reads it, and it holds nothing secret).
 * Throws when setup has not built the helper: a gVisor sandbox never starts
 * without its filter.
 */
export function seccompMounts(dir: string): { Type: 'bind'; Source: string; Target: string; ReadOnly: boolean }[] {
  if (!existsSync(HELPER_HOST_PATH)) {
    throw new KilnError('runtime_unavailable', `gvisor: the seccomp helper ${HELPER_HOST_PATH} is missing; run scripts/setup, which builds it`, 503);
  }
  if (written === undefined || !existsSync(written)) {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const path = join(dir, `seccomp-${filterDigest(filter)}.bpf`);
    const tmp = `${path}.${process.pid}.${randomBytes(4).toString('hex')}`;
    writeFileSync(tmp, filter, { mode: 0o644, flag: 'wx' });
    renameSync(tmp, path);
    written = path;
  }
  return [
    { Type: 'bind', Source: HELPER_HOST_PATH, Target: HELPER_PATH, ReadOnly: true },
    { Type: 'bind', Source: written, Target: FILTER_PATH, ReadOnly: true },
  ];
}

/**
 * `command` started under the filter; with `nproc`, also under that
 * RLIMIT_NPROC (soft and hard), the exec's own process limit: the sentry
 * counts the sandbox uid's processes against it, as a pids cgroup would.
 */
export function underFilter(command: string[], nproc?: number): string[] {
  return [HELPER_PATH, ...(nproc === undefined ? [] : ['--nproc', String(nproc)]), FILTER_PATH, ...command];
}
