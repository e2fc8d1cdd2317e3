/**
 * Starting the launcher of a process-runtime exec without stopping kiln.
 *
 * node's child_process.spawn forks: the kernel copies kiln's page tables while
 * the event loop waits, 4 ms at 45 MB of RSS and 9 ms at 150 MB on a 2-core
 * VM, on every sandbox start and exec, with every proxied request in flight
 * held up behind it. The addon (./spawn.c) uses posix_spawn, which clones
 * without copying (0.4-0.8 ms whatever kiln's size, 1-2 ms with the pipes
 * wrapped), and reports the exit on the main thread. `Launched` gives the
 * parts of a ChildProcess the runtime uses: the pid, pipes for fds 0-3, kill,
 * and `exit` and `close` events.
 */
import { EventEmitter } from 'node:events';
import net from 'node:net';
import { isMainThread } from 'node:worker_threads';
import { KilnError } from '../../errors.js';
import { addonLoader } from '../addon.js';
import { signalName } from '../kernel.js';

/** Where scripts/setup builds the addon (./spawn.c). */
export const SPAWN_ADDON = '/usr/local/lib/kiln/kiln-spawn.node';

interface Addon {
  /** [pid, stdin (-1 when /dev/null), stdout, stderr, fd 3]; throws with code ENOENT, EACCES or ESPAWN. */
  spawn(file: string, argv: string[], env: string[], stdinPipe: boolean, onExit: (code: number | null, signal: number | null) => void): number[];
}

const addon = addonLoader<Addon>(SPAWN_ADDON, 'the spawn addon', ['spawn']);
const loadAddon = addon.load;

/** Why sandboxes cannot be started here, or undefined when they can (for `kiln doctor`). */
export const spawnProblem = addon.problem;

export interface Launched {
  on(event: 'exit' | 'close', listener: (code: number | null, signal: NodeJS.Signals | null) => void): this;
  once(event: 'exit' | 'close', listener: (code: number | null, signal: NodeJS.Signals | null) => void): this;
}

/** A started launcher: its pid, kiln's ends of its fds 0-3, and how it ended. */
export class Launched extends EventEmitter {
  /** Its stdin, or undefined when it reads /dev/null. */
  readonly stdin: net.Socket | undefined;
  readonly stdout: net.Socket;
  readonly stderr: net.Socket;
  /** Its fd 3 (bwrap's --info-fd, the launcher's status). */
  readonly status: net.Socket;
  readonly pid: number;
  exitCode: number | null = null;
  signalCode: NodeJS.Signals | null = null;
  private exited = false;
  /** The exit, stdout, stderr and fd 3: `close` comes when all four are done, as node's does. */
  private closesNeeded = 4;

  /** @internal Use launch(). */
  constructor(fds: number[]) {
    super();
    const [pid, stdin, stdout, stderr, status] = fds as [number, number, number, number, number];
    this.pid = pid;
    this.stdin = stdin >= 0 ? new net.Socket({ fd: stdin, readable: false, writable: true }) : undefined;
    const reader = (fd: number) => {
      const s = new net.Socket({ fd, readable: true, writable: false });
      s.on('error', () => undefined); // a failed read ends the stream; 'close' still comes
      s.once('close', () => this.maybeClose());
      return s;
    };
    this.stdout = reader(stdout);
    this.stderr = reader(stderr);
    this.status = reader(status);
  }

  /** @internal Called by the addon once the process has ended and been reaped. */
  exit(code: number | null, signal: number | null): void {
    this.exited = true;
    this.exitCode = code;
    this.signalCode = signal === null ? null : signalName(signal);
    this.stdin?.destroy();
    this.emit('exit', this.exitCode, this.signalCode);
    this.maybeClose();
  }

  /**
   * Stops reading fds 1-3 as if they had ended: `close` then comes with the
   * exit. For a process whose pipes something else keeps open (a sandbox can
   * hand an fd to a process that outlives the exec and any kill of it).
   */
  abandonPipes(): void {
    for (const s of [this.stdout, this.stderr, this.status]) s.destroy();
  }

  private maybeClose(): void {
    if (--this.closesNeeded === 0) this.emit('close', this.exitCode, this.signalCode);
  }

  /**
   * Signals the process if it has not been reaped. Safe by pid: the addon keeps
   * an ended child unreaped (a zombie, its pid not reusable) until `exit` runs.
   */
  kill(signal: NodeJS.Signals = 'SIGTERM'): boolean {
    if (this.exited) return false;
    try {
      process.kill(this.pid, signal);
      return true;
    } catch {
      return false;
    }
  }
}

/**
 * Starts `argv[0]` (an absolute path) with `argv` and exactly `env`, its fds
 * 1-3 pipes to kiln and fd 0 a pipe (`stdin: true`) or /dev/null.
 */
export function launch(argv: string[], env: Record<string, string>, opts: { stdin: boolean }): Launched {
  // The addon's waiter threads hold threadsafe functions that a worker's teardown would free under them.
  if (!isMainThread) throw new Error('launch() runs on the main thread only');
  const envList = Object.entries(env).map(([k, v]) => `${k}=${v}`);
  let child: Launched | undefined;
  let fds: number[];
  try {
    // The addon reports the exit from the event loop, never during spawn(): `child` is set by then.
    fds = loadAddon().spawn(argv[0]!, argv, envList, opts.stdin, (code, signal) => child?.exit(code, signal));
  } catch (e) {
    if (e instanceof KilnError) throw e;
    throw new KilnError('sandbox_failed', `process runtime: ${(e as Error).message}`, 500, { cause: e });
  }
  try {
    child = new Launched(fds);
  } catch (e) {
    // Not seen (net.Socket takes any pipe fd): the child is killed rather than left running unwatched; the addon still reaps it.
    process.kill(fds[0]!, 'SIGKILL');
    throw new KilnError('sandbox_failed', `process runtime: cannot take the pipes of ${argv[0]}: ${(e as Error).message}`, 500, { cause: e });
  }
  return child;
}
