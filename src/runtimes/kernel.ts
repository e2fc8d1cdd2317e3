/** Small readers of kernel facts shared by the drivers: cgroup files and exit statuses. */
import { readFile } from 'node:fs/promises';
import { constants as osConstants } from 'node:os';

/** First number in a cgroup file; 0 when absent (a controller this kernel lacks). */
export async function readNumber(path: string): Promise<number> {
  const n = Number((await readFile(path, 'utf8').catch(() => '0')).trim().split(/\s+/)[0]);
  return Number.isFinite(n) ? n : 0;
}

/** Value of `key` in a flat-keyed file (memory.events, pids.events, memory.oom_control, cpu.stat). */
export async function readKey(path: string, key: string): Promise<number> {
  const m = new RegExp(`^${key} (\\d+)$`, 'm').exec(await readFile(path, 'utf8').catch(() => ''));
  return m ? Number(m[1]) : 0;
}

/** Signal numbers to names; where two names share a number (SIGABRT and SIGIOT, SIGIO and SIGPOLL) the first, as node names them. */
const SIGNAL_NAMES = new Map<number, NodeJS.Signals>();
for (const [name, n] of Object.entries(osConstants.signals)) if (!SIGNAL_NAMES.has(n)) SIGNAL_NAMES.set(n, name as NodeJS.Signals);

/** The name of signal `n` (SIGABRT for 6), or null for a number node has no name for (real-time signals). */
export function signalName(n: number): NodeJS.Signals | null {
  return SIGNAL_NAMES.get(n) ?? null;
}

/**
 * bwrap and Docker report a child killed by signal N as status 128+N. Such a
 * status is read as the signal (as shells do): a program that exits 137 on
 * purpose is reported as SIGKILL. What kiln killed is always SIGKILL.
 */
export function decodeExit(code: number | null, signal: string | null, killedByUs: boolean): { exitCode: number | null; signal: string | null } {
  if (killedByUs) return { exitCode: null, signal: 'SIGKILL' };
  if (signal) return { exitCode: null, signal };
  if (code !== null && code > 128 && SIGNAL_NAMES.has(code - 128)) return { exitCode: null, signal: SIGNAL_NAMES.get(code - 128)! };
  return { exitCode: code, signal: null };
}
