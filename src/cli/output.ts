/** How the CLI shows a finished run: program output on stdout/stderr, the verdict line on stderr. */
import type { Run } from '../runs/types.js';
import { constants } from 'node:os';

export function printRun(run: Run): number {
  if (run.compile && run.verdict === 'compile_error') {
    process.stdout.write(run.compile.stdout);
    process.stderr.write(run.compile.stderr);
  }
  if (run.run) {
    process.stdout.write(run.run.stdout);
    process.stderr.write(run.run.stderr);
  }
  const s = run.run ?? run.compile;
  const parts = [`verdict ${run.verdict ?? run.status}`];
  if (s) {
    parts.push(s.signal ? `signal ${s.signal}` : `exit ${s.exitCode}`, `${s.wallMs} ms wall`, `${s.cpuMs} ms cpu`, `${(s.memoryKb / 1024).toFixed(1)} MiB`);
    if (s.truncated) parts.push('output truncated');
  }
  if (run.error) parts.push(run.error);
  process.stderr.write(`kiln: ${parts.join(' · ')}\n`);
  return exitCodeOf(run);
}

/** The program's own exit code; 128+N for a signal (as shells do); 1 for a failed compile; 70 when kiln failed. */
export function exitCodeOf(run: Run): number {
  if (run.verdict === 'internal_error') return 70;
  if (run.verdict === 'compile_error') return 1;
  const s = run.run;
  if (!s) return 1;
  if (s.exitCode !== null) return s.exitCode;
  const n = s.signal ? (constants.signals as Record<string, number>)[s.signal] : undefined;
  return n ? 128 + n : 1;
}
