/**
 * What differs when a Docker sandbox runs under gVisor (runsc): the sandbox's
 * processes live inside the sentry, a user-space kernel, not on the host.
 *
 * - sentry      — the runsc-sandbox host process that implements Linux for the
 *                 sandbox. With the ptrace platform it forks one host "stub"
 *                 per address space and keeps a pool of Go threads.
 * - host tasks  — the sentry's threads and stubs: what the host's pids cgroup
 *                 counts. They are not the sandbox's processes (a fork bomb of
 *                 64 processes left ~2,600 host tasks behind in a measurement).
 *
 * Facts this module is built on (runsc 20221219, measured on this machine):
 * - `docker update` is refused by runsc, so limits are fixed at create.
 * - If the host's memory cgroup OOM-kills anything in the container, it kills
 *   the sentry or a stub, and the whole sandbox dies. The host limit is only a
 *   backstop with headroom; an exec's memory limit is kept by kiln watching
 *   the container's unreclaimable memory and killing the exec inside.
 * - If the host's pids cgroup refuses the sentry a thread, the sandbox dies.
 *   Processes are limited inside by RLIMIT_NPROC (the sentry enforces it),
 *   and the host pids limit is a generous backstop.
 * - rlimits are per process, as in Linux: the container's (set at create)
 *   bound the main, and each exec lowers RLIMIT_NPROC to its own pids limit
 *   through the seccomp helper (./seccomp.ts). The sentry counts every
 *   process of the sandbox uid against it.
 * - Host pids mean nothing inside: an exec is killed from inside the sentry,
 *   by its process group and session.
 */
import type Docker from 'dockerode';
import type { SandboxLimits } from '../types.js';

/** Host tasks the sentry may have (threads + ptrace stubs). A backstop, far above what a contained fork bomb leaves. */
export const SENTRY_HOST_TASKS = 8192;
/**
 * Host memory beyond the sandbox's limit: the sentry's mapped files (~30 MB,
 * which count toward the host limit but not toward unreclaimable memory) and
 * what an exec still gains while kiln kills it (a fork bomb inside gVisor
 * grows ~50 MB/s), so kiln's watchdog acts before the host OOM killer does.
 * At 96 MB, a bomb reached the host limit before its kill took hold.
 */
export const SENTRY_MEMORY_HEADROOM_MB = 160;
/** Unreclaimable memory past the sandbox's limit that the watchdog allows: the sentry's own (~25 MB measured idle). */
const SENTRY_OWN_MB = 32;
const MiB = 1024 * 1024;

/**
 * The container's unreclaimable memory (anon + shmem, bytes) at which kiln
 * kills an exec: what the sandbox held when the exec started plus the exec's
 * own limit, but never past the sandbox's limit (plus the sentry's own), so
 * the headroom below the host limit is always there for the kill to land in.
 */
export function execMemoryCap(heldBytes: number, execMb: number, sandboxMb: number): number {
  return Math.min(heldBytes + execMb * MiB, sandboxMemoryCap(sandboxMb));
}

/** The unreclaimable memory a gVisor sandbox may hold in all, bytes: its `memoryMb` and the sentry's own. */
export function sandboxMemoryCap(sandboxMb: number): number {
  return (sandboxMb + SENTRY_OWN_MB) * MiB;
}

/** HostConfig limits of a gVisor sandbox: the sandbox's limits, enforced once, at create. */
export function sentryHostLimits(limits: SandboxLimits) {
  const memory = (limits.memoryMb + SENTRY_MEMORY_HEADROOM_MB) * MiB;
  return {
    Memory: memory,
    MemorySwap: memory,
    PidsLimit: SENTRY_HOST_TASKS,
    // Counts every process of the sandbox uid, docker-init and the keeper included (as pids.max does under runc).
    Ulimits: [
      { Name: 'core', Soft: 0, Hard: 0 },
      { Name: 'nproc', Soft: limits.pids, Hard: limits.pids },
    ],
  };
}

/** Marks the first stderr line of a wrapped exec: its pid inside the sentry. */
const PID_TAG = 'kiln-exec-pid ';

/**
 * Runs `command` so that its first stderr line names its pid inside the
 * sentry. An exec is a session and process-group leader there, so that pid is
 * also the group and session of everything it forks. The line is written
 * before the program starts, so the program cannot forge it.
 */
export function wrapWithPidLine(command: string[]): string[] {
  return ['/bin/sh', '-c', `printf '${PID_TAG}%s\\n' "$$" >&2; exec "$@"`, 'kiln-exec', ...command];
}

/** Splits the pid line off the front of a wrapped exec's stderr; everything after it goes to `rest`. */
export class PidLineReader {
  private head = Buffer.alloc(0);
  private done = false;
  private settle!: (pid: number | undefined) => void;
  /** The exec's pid inside the sentry; undefined when its stderr ended without the line. */
  readonly pid = new Promise<number | undefined>((resolve) => (this.settle = resolve));

  constructor(private readonly rest: (chunk: Buffer) => void) {}

  push(chunk: Buffer): void {
    if (this.done) return this.rest(chunk);
    this.head = Buffer.concat([this.head, chunk]);
    const nl = this.head.indexOf(0x0a);
    if (nl < 0 && this.head.length < 64) return;
    this.done = true;
    const m = nl < 0 ? null : new RegExp(`^${PID_TAG}(\\d+)$`).exec(this.head.subarray(0, nl).toString());
    this.settle(m ? Number(m[1]) : undefined);
    // Without the line (the wrapper itself failed), everything is the program's stderr.
    const after = m ? this.head.subarray(nl + 1) : this.head;
    if (after.length > 0) this.rest(after);
  }

  /** The stream ended: whatever is held is stderr. */
  end(): void {
    if (this.done) return;
    this.done = true;
    this.settle(undefined);
    if (this.head.length > 0) this.rest(this.head);
  }
}

/**
 * Kills an exec inside the sentry: SIGKILL to its process group until none is
 * left (each round also takes children forked meanwhile), then to anything
 * still in its session (a child that moved to another group). Run as root with
 * CAP_KILL, since the sandbox uid may have used up its process limit.
 */
export function killScript(pid: number): string[] {
  const script = [
    'g=$1',
    'while kill -9 -$g 2>/dev/null; do :; done',
    'left=1 rounds=0',
    // Bounded: a process that cannot be killed (none should exist) must not hang the caller.
    'while [ $left -gt 0 ] && [ $rounds -lt 100 ]; do',
    '  left=0 rounds=$((rounds+1))',
    '  for s in /proc/[0-9]*/stat; do',
    '    read -r l 2>/dev/null < $s || continue',
    // Fields after "(comm) ": state ppid pgrp session; comm may hold spaces or ")".
    '    set -- ${l##*) }',
    '    [ "$4" = "$g" ] && [ "$1" != Z ] || continue',
    '    p=${s#/proc/}; kill -9 ${p%/stat} 2>/dev/null && left=$((left+1))',
    '  done',
    'done',
  ].join('\n');
  return ['/bin/sh', '-c', script, 'kiln-kill', String(pid)];
}

/** Runs one `docker exec` to its end, its output read and dropped (the kill helpers'). */
export async function execToEnd(container: Docker.Container, opts: Docker.ExecCreateOptions): Promise<void> {
  const exec = await container.exec({ ...opts, AttachStdout: true, AttachStderr: true });
  const out = await exec.start({ hijack: true, stdin: false });
  out.resume();
  await new Promise<void>((resolve) => {
    out.on('end', resolve);
    out.on('close', resolve);
    out.on('error', () => resolve());
  });
}
