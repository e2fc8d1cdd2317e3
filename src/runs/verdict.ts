/** Verdicts from the kernel's facts about a stage, never from the program's word. */
import type { ExecResult } from '../runtimes/types.js';
import type { Stage, Verdict } from './types.js';

export function toStage(r: ExecResult): Stage {
  return {
    stdout: r.stdout.toString('utf8'),
    stderr: r.stderr.toString('utf8'),
    exitCode: r.exitCode,
    signal: r.signal,
    wallMs: r.wallMs,
    cpuMs: r.cpuMs,
    memoryKb: r.memoryKb,
    truncated: r.truncated,
  };
}

/** Verdict of the run stage. Order matters: what the kernel did outranks the exit status it caused. */
export function runVerdict(r: ExecResult): Verdict {
  if (r.killedBy === 'output_limit') return 'output_limit';
  if (r.killedBy === 'wall_timeout' || r.killedBy === 'cpu_timeout') return 'timeout';
  if (r.oomKilled) return 'memory_limit';
  if (r.exitCode !== 0) return 'runtime_error';
  return 'ok';
}

/** A compile stage that did not exit 0 for any reason (errors, timeout, OOM) means the program was not built. */
export function compileFailed(r: ExecResult): boolean {
  return r.exitCode !== 0 || r.killedBy !== null || r.oomKilled;
}
