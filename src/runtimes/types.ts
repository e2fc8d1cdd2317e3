/**
 * Runtimes: drivers that make sandboxes.
 *
 * - runtime  — a driver (`process`: bubblewrap + cgroups, `docker`: Docker Engine).
 * - sandbox  — one isolated instance made by a runtime. It has a work dir
 *              (`/work` inside), no network, and kernel-enforced limits.
 * - exec     — one command run inside a sandbox, with its own deadline, limits
 *              and output cap; the result reports what the kernel saw.
 *
 * Nothing outside `runtimes/` knows which driver is in use: callers see only
 * the interfaces below.
 */
import type { Socket } from 'node:net';

/** Limits of a sandbox as a whole; an exec may narrow them. */
export interface SandboxLimits {
  /** Memory including tmpfs pages, in MiB. */
  memoryMb: number;
  /** Maximum number of processes/threads alive at once. */
  pids: number;
  /** CPU bandwidth, in cores (0.5 = half a core). */
  cpus: number;
  /** Size cap of the writable work dir, /tmp and (process runtime) /dev/shm, in MiB each. */
  diskMb: number;
}

export interface SandboxSpec {
  /** Template name; recorded in labels so orphans can be traced. */
  template: string;
  limits: SandboxLimits;
  /** Environment for every exec (exec env is merged on top). */
  env?: Record<string, string>;
  /** Driver-specific template settings (image, rootfs …), validated by the driver. */
  options?: Record<string, unknown>;
  /**
   * A long-running process started with the sandbox and living as long as it
   * (a session's server). Execs then run beside it, in the same namespaces.
   */
  main?: {
    command: string[];
    env?: Record<string, string>;
    /**
     * CPU cap (cores) while the server starts, until `mainReady()`; at least
     * `limits.cpus`, which holds from then on. Default: `limits.cpus` throughout.
     * A runtime that cannot change a live sandbox's cap cheaply ignores it
     * (and has no `mainReady`).
     */
    startCpus?: number;
  };
}

export interface ExecLimits {
  /** Wall-clock deadline; the whole process tree is killed when it passes. */
  wallMs: number;
  /** CPU time of the whole exec (all processes); killed when exceeded. */
  cpuMs: number;
  /** Memory of the exec, in MiB (at most the sandbox's). */
  memoryMb: number;
  /** Processes of the exec (at most the sandbox's). */
  pids: number;
  /** Bytes kept per stream; reading stops and the exec is killed past it. */
  outputBytes: number;
}

export interface ExecRequest {
  command: string[];
  stdin?: Buffer | string;
  env?: Record<string, string>;
  /** Working directory inside the sandbox; default the work dir. */
  cwd?: string;
  limits: ExecLimits;
  /** Live output, for streaming. Called with chunks already counted against the cap. */
  onStdout?: (chunk: Buffer) => void;
  onStderr?: (chunk: Buffer) => void;
}

/** What ended an exec other than its own exit. */
export type ExecKill = 'wall_timeout' | 'cpu_timeout' | 'output_limit' | null;

export interface ExecResult {
  stdout: Buffer;
  stderr: Buffer;
  /** Exit status, or null when ended by a signal. */
  exitCode: number | null;
  /** Signal name (e.g. `SIGKILL`) when ended by a signal. */
  signal: string | null;
  wallMs: number;
  cpuMs: number;
  /** Peak memory of the exec's processes, in KiB. */
  memoryKb: number;
  /** True when the kernel's OOM killer acted inside this exec. */
  oomKilled: boolean;
  /** True when the process limit refused a fork. */
  pidsLimitHit: boolean;
  killedBy: ExecKill;
  /** True when some output was dropped because of `outputBytes`. */
  truncated: boolean;
}

export interface SandboxStats {
  cpuMs: number;
  memoryKb: number;
  pids: number;
}

/** Kiln's way into a server port inside a sandbox (see ./netns.ts, ./gvisor/relay.ts). */
export interface PortLink {
  /** Names the link: keep-alive connections are pooled per key. */
  readonly key: string;
  /** A new connection to the port; failures arrive as its `error` event. */
  connect(): Socket;
  /** A new connection's fd (connected or connecting), the caller's to close; throws when none can be made. Links that can give one. */
  connectFd?(): number;
  /** Links into a network namespace: a host pid inside it, for tools that reach the port themselves (the benchmark's baselines). */
  readonly netnsPid?: number;
}

export interface Sandbox {
  readonly id: string;
  readonly runtime: string;
  exec(req: ExecRequest): Promise<ExecResult>;
  /**
   * Write a file under the work dir. The write happens with the sandbox's own
   * rights (never by following a link the sandbox could have planted).
   */
  putFile(path: string, data: Buffer): Promise<void>;
  /** Read a file under the work dir, at most `maxBytes`; undefined when absent. */
  getFile(path: string, maxBytes: number): Promise<Buffer | undefined>;
  stats(): Promise<SandboxStats>;
  /**
   * How kiln opens connections to `port` on the sandbox's own loopback. Only
   * kiln can; the sandbox still has no network.
   */
  portLink(port: number): Promise<PortLink>;
  /** With a `main`: resolves when it exits (the sandbox is then useless). */
  readonly mainExited: Promise<void> | undefined;
  /** With a `main`: the last lines it printed, to explain a failed start. */
  mainLog(): Promise<string>;
  /** With a `main`: it passed its readiness check; ends the start-up CPU burst (`main.startCpus`). */
  mainReady?(): Promise<void>;
  /**
   * With a `main`: whether something inside listens on TCP `port` where the
   * port link reaches it (127.0.0.1 or a wildcard address). A cheap look
   * (no connection), for polling a starting server often. Absent, or
   * resolving undefined, where the runtime cannot see the sandbox's sockets
   * (then probe through the link).
   */
  portListening?(port: number): Promise<boolean | undefined>;
  /** Kill everything inside and remove all traces. Idempotent. */
  destroy(): Promise<void>;
}

export interface RuntimeCheck {
  runtime: string;
  ok: boolean;
  /** What was found (versions, cgroup mode …) or what failed. */
  detail: string;
  /** How to fix it, when not ok. */
  fix?: string;
}

export interface Runtime {
  readonly name: string;
  /** Probe whether this runtime works on this machine (used by `kiln doctor`, /v1/info). */
  check(): Promise<RuntimeCheck>;
  create(spec: SandboxSpec): Promise<Sandbox>;
  /** Ids of sandboxes this kiln instance made that still exist. */
  listOwn(): Promise<string[]>;
  /** Remove sandboxes this instance left behind (after a crash). Returns how many. */
  reapOrphans(): Promise<number>;
  /** Release driver resources (connections); does not destroy sandboxes. */
  close(): Promise<void>;
}

/** Where the sandbox's work dir is, inside. */
export const WORK_DIR = '/work';
