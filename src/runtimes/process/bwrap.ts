/**
 * The command line that starts one exec of the process runtime.
 *
 * The launcher (kiln-launch.c, static, run as root) (1) joins the exec's
 * cgroups, so the limits hold before any user code exists, (2) sets rlimits as
 * a backstop, (3) opens the work dir as fd 5 (bwrap binds the fd, so no path
 * is followed as the sandbox user) and the seccomp filter (a root-only file)
 * as fd 6, then (4) drops to the unprivileged uid with no new privileges and
 * execs bubblewrap, which makes new user, pid, net, ipc, uts and cgroup
 * namespaces, drops every capability, installs the filter just before it
 * execs the command (its own unshare and mount calls come first) and runs the
 * command.
 */
import { lstatSync, readlinkSync } from 'node:fs';
import { WORK_DIR } from '../types.js';

/** fd numbers shared by the launcher (kiln-launch.c) and the spawn call. */
export const STATUS_FD = 3;
const WORK_FD = 5;
const SECCOMP_FD = 6;
/** The enter helper's own executable, run as /proc/self/fd/7 so it need not exist inside the sandbox. */
const HELPER_FD = 7;

/** Where scripts/setup builds the launcher (kiln-launch.c). */
export const DEFAULT_LAUNCHER = '/usr/local/lib/kiln/kiln-launch';

/** What the launcher prints before exiting 125 when it could not set an exec up. */
export const LAUNCHER_ERROR_PREFIX = 'kiln-launcher: ';

/** The launcher's own environment: nothing of kiln's, nothing of the user's (it runs as root). */
export const LAUNCHER_ENV = { PATH: '/usr/sbin:/usr/bin:/sbin:/bin' };

/** The launcher's options up to `--`, shared by launchArgv and enterArgv. */
function launcherArgs(s: { launcher: string; cgroupProcsFiles: string[]; cpuSeconds: number | 'unlimited'; seccompFile: string }): string[] {
  return [s.launcher, ...s.cgroupProcsFiles.flatMap((f) => ['--cgroup', f]), '--cpu-seconds', String(s.cpuSeconds), '--seccomp', s.seccompFile];
}

export interface LaunchSpec {
  /** Host path of the static launcher (kiln-launch.c). */
  launcher: string;
  cgroupProcsFiles: string[];
  /** RLIMIT_CPU seconds per process: a backstop under the cgroup CPU deadline ('unlimited' for a session's server). */
  cpuSeconds: number | 'unlimited';
  workDir: string;
  /**
   * When set, /work is a fresh tmpfs of this many bytes instead of `workDir`
   * (a session's sandbox: its files go through execs only, so the host needs
   * no view of them, and the size cap turns a full disk into ENOSPC).
   */
  workTmpfsBytes?: number;
  uid: number;
  gid: number;
  /** Template rootfs dir; when absent, `systemDirs` of the host are bound read-only. */
  rootfs?: string;
  systemDirs: string[];
  /** Size cap of /tmp and of /dev/shm, bytes each. */
  tmpBytes: number;
  /** Root-only file holding the seccomp filter (see seccomp.ts). */
  seccompFile: string;
  env: Record<string, string>;
  cwd: string;
  command: string[];
}

/**
 * Host device nodes bound into /dev: nothing else (no full, ptmx/pts, kmsg,
 * core link). bwrap's own --dev would add full, ptmx and a devpts.
 */
const DEVICES = ['null', 'zero', 'random', 'urandom', 'tty'];
/** /dev itself holds only nodes and links: a small cap, then read-only. */
const DEV_TMPFS_BYTES = 64 * 1024;

function devArgs(shmBytes: number): string[] {
  const out = ['--size', String(DEV_TMPFS_BYTES), '--tmpfs', '/dev'];
  for (const d of DEVICES) out.push('--dev-bind', `/dev/${d}`, `/dev/${d}`);
  out.push('--symlink', '/proc/self/fd', '/dev/fd');
  ['stdin', 'stdout', 'stderr'].forEach((name, fd) => out.push('--symlink', `/proc/self/fd/${fd}`, `/dev/${name}`));
  // POSIX shared memory and semaphores (Python's multiprocessing) live in /dev/shm.
  out.push('--size', String(shmBytes), '--tmpfs', '/dev/shm', '--remount-ro', '/dev');
  return out;
}

/** argv for `spawn(argv[0], argv.slice(1), {stdio: [.., .., .., 'pipe']})`. */
export function launchArgv(s: LaunchSpec): string[] {
  const bwrap = [
    'bwrap',
    '--unshare-user',
    '--unshare-pid',
    '--unshare-net',
    '--unshare-ipc',
    '--unshare-uts',
    '--unshare-cgroup',
    '--disable-userns',
    '--die-with-parent',
    '--new-session',
    '--hostname',
    'kiln',
    '--clearenv',
    ...rootArgs(s),
    '--proc',
    '/proc',
    ...devArgs(s.tmpBytes),
    '--size',
    String(s.tmpBytes),
    '--tmpfs',
    '/tmp',
    ...(s.workTmpfsBytes === undefined
      ? ['--bind-fd', String(WORK_FD), WORK_DIR]
      : ['--size', String(s.workTmpfsBytes), '--perms', '0700', '--tmpfs', WORK_DIR]),
    // Everything outside /work, /tmp and /dev is read-only, the root tmpfs bwrap made included.
    '--remount-ro',
    '/',
    '--chdir',
    s.cwd,
    '--json-status-fd',
    String(STATUS_FD),
    '--seccomp',
    String(SECCOMP_FD),
  ];
  for (const [k, v] of Object.entries(s.env)) bwrap.push('--setenv', k, v);
  bwrap.push('--', ...s.command);
  const work = s.workTmpfsBytes === undefined ? ['--work-dir', s.workDir] : [];
  return [...launcherArgs(s), ...work, '--uid', String(s.uid), '--gid', String(s.gid), '--', ...bwrap];
}

/** Mounts that make `/`: a template rootfs, or the host's system dirs read-only (links kept as links). */
function rootArgs(s: LaunchSpec): string[] {
  if (s.rootfs) return ['--ro-bind', s.rootfs, '/'];
  const out: string[] = [];
  for (const dir of s.systemDirs) {
    let st;
    try {
      st = lstatSync(dir);
    } catch {
      continue; // a dir this host lacks (e.g. /lib64 on arm64)
    }
    if (st.isSymbolicLink()) out.push('--symlink', readlinkSync(dir), dir);
    else out.push('--ro-bind', dir, dir);
  }
  return out;
}

export interface EnterSpec {
  /** Host path of the static launcher (kiln-launch.c). */
  launcher: string;
  cgroupProcsFiles: string[];
  cpuSeconds: number;
  /** Host pid of the sandbox's first process: its namespaces are entered. */
  nsPid: number;
  uid: number;
  gid: number;
  /** The same filter file as the sandbox's first process got. */
  seccompFile: string;
  /** Host path of the static seccomp-exec helper (seccomp-exec.c). */
  helper: string;
  env: Record<string, string>;
  cwd: string;
  command: string[];
}

/**
 * argv for an exec inside a live sandbox (one with a main process): the same
 * launcher joins the exec's cgroup and opens the filter and the helper, then
 * nsenter enters every namespace of the sandbox and becomes the sandbox uid
 * (which drops all capabilities), and the helper (seccomp-exec.c) sets
 * no-new-privileges, installs the filter and closes the launcher's fds. The
 * user's environment is set only inside, by env -i, never on a root process.
 *
 * Unlike bwrap's first process, such an exec keeps a full capability bounding
 * set: entering a user namespace resets it and nsenter cannot drop it. It is
 * inert: no-new-privileges makes exec ignore file capabilities and set-id bits,
 * so no capability can be regained from it.
 */
export function enterArgv(s: EnterSpec): string[] {
  const nsenter = ['nsenter', `--target=${s.nsPid}`, '--user', '--mount', '--net', '--pid', '--ipc', '--uts', `--setuid=${s.uid}`, `--setgid=${s.gid}`, '--'];
  const inside = [
    // After the setns calls, so the filter may deny setns; /proc/self is the sandbox's own /proc by then.
    `/proc/self/fd/${HELPER_FD}`,
    String(SECCOMP_FD),
    '/usr/bin/env',
    '-i',
    ...Object.entries(s.env).map(([k, v]) => `${k}=${v}`),
    '/bin/sh',
    '-c',
    'cd "$0" && exec "$@"',
    s.cwd,
    ...s.command,
  ];
  return [...launcherArgs(s), '--helper', s.helper, '--', ...nsenter, ...inside];
}
