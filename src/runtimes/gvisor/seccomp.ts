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
import { DEFAULT_SECCOMP_HELPER } from '../process/driver.js';
import { buildSeccompFilter, filterDigest } from '../process/seccomp.js';

/** Where a gVisor sandbox sees the helper and the filter. */
export const HELPER_PATH = '/.kiln/seccomp-exec';
export const FILTER_PATH = '/.kiln/seccomp.bpf';

/** A read-only bind mount of a host file into a gVisor sandbox. */
export type BindMount = { Type: 'bind'; Source: string; Target: string; ReadOnly: boolean };

/**
 * `<dir>/<name>` holding `content`, written when absent: whole, then renamed
 * into place, so a sandbox starting meanwhile never binds half a file.
 * Name it after its content; it is readable by all (`mode`), secrets never go here.
 */
export function hostFile(dir: string, name: string, content: Buffer | string, mode: number): string {
  const path = join(dir, name);
  if (!existsSync(path)) {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const tmp = `${path}.${process.pid}.${randomBytes(4).toString('hex')}`;
    writeFileSync(tmp, content, { mode, flag: 'wx' });
    renameSync(tmp, path);
  }
  return path;
}

const filter = buildSeccompFilter();
const filterName = `seccomp-${filterDigest(filter)}.bpf`;

/**
 * The bind mounts of helper and filter (0644: the sandbox uid reads it).
 * Throws when setup has not built the helper: a gVisor sandbox never starts
 * without its filter.
 */
export function seccompMounts(dir: string): BindMount[] {
  if (!existsSync(DEFAULT_SECCOMP_HELPER)) {
    throw new KilnError('runtime_unavailable', `gvisor: the seccomp helper ${DEFAULT_SECCOMP_HELPER} is missing; run scripts/setup, which builds it`, 503);
  }
  return [
    { Type: 'bind', Source: DEFAULT_SECCOMP_HELPER, Target: HELPER_PATH, ReadOnly: true },
    { Type: 'bind', Source: hostFile(dir, filterName, filter, 0o644), Target: FILTER_PATH, ReadOnly: true },
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
