/**
 * How the benchmarks start their raw baselines: with kiln's own spawn
 * (src/runtimes/process/launch.ts: posix_spawn, fds 0-3 piped), the way kiln
 * starts its launcher. With node's child_process.spawn a baseline would pay
 * for forking the bench process (kiln and all: 9 ms at 150 MB of RSS) and kiln
 * would not, which would flatter kiln; `spawnStall` measures that cost.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { launch, type Launched } from '../src/runtimes/process/launch.js';

const ENV = { PATH: '/usr/local/bin:/usr/bin:/bin' };

/** The absolute path of a program on ENV's PATH (posix_spawn does not search). */
function which(name: string): string {
  if (name.startsWith('/')) return name;
  for (const dir of ENV.PATH.split(':')) if (existsSync(`${dir}/${name}`)) return `${dir}/${name}`;
  throw new Error(`${name} not found on ${ENV.PATH}`);
}

export interface RawChild {
  child: Launched;
  /** The last 2,000 characters of its stderr so far. */
  stderr(): string;
  /** Its exit, once its pipes are closed too. */
  closed: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** Starts argv (a name on PATH or a path) with stdin `input` (then closed) or /dev/null; its stdout and fd 3 are read and dropped. */
export function startRaw(argv: string[], input?: Buffer): RawChild {
  const child = launch([which(argv[0]!), ...argv.slice(1)], ENV, { stdin: input !== undefined });
  let stderr = '';
  child.stdout.resume();
  child.status.resume();
  child.stderr.on('data', (c: Buffer) => (stderr = (stderr + c.toString()).slice(-2000)));
  if (child.stdin) {
    child.stdin.on('error', () => undefined);
    child.stdin.end(input ?? Buffer.alloc(0));
  }
  const closed = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) => child.once('close', (code, signal) => r({ code, signal })));
  return { child, stderr: () => stderr, closed };
}

/** startRaw and require exit 0. */
export async function spawnOk(argv: string[], input?: Buffer): Promise<void> {
  const raw = startRaw(argv, input);
  const { code, signal } = await raw.closed;
  if (code !== 0) throw new Error(`${argv.slice(argv.indexOf('--') + 1).join(' ')}: exit ${code ?? signal}: ${raw.stderr().trim().slice(0, 300)}`);
}

/**
 * How long starting one process holds this process's event loop: node's
 * child_process.spawn against kiln's launch, `/bin/true` each, alternated,
 * `n` each, at this process's current size. ms.
 */
export async function spawnStall(n: number): Promise<{ rssMb: number; node: number[]; kiln: number[] }> {
  const node: number[] = [];
  const kiln: number[] = [];
  for (let i = 0; i < n; i++) {
    let t0 = performance.now();
    const c = spawn('/bin/true', [], { stdio: ['pipe', 'pipe', 'pipe', 'pipe'] });
    node.push(performance.now() - t0);
    await new Promise((r) => c.once('close', r));
    t0 = performance.now();
    const raw = startRaw(['/bin/true'], Buffer.alloc(0));
    kiln.push(performance.now() - t0);
    await raw.closed;
  }
  return { rssMb: process.memoryUsage().rss / 2 ** 20, node, kiln };
}
