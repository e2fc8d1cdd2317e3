/**
 * File calls into a sandbox run as small programs inside it, with the
 * sandbox's own rights. What their failures mean to the caller is the same on
 * every runtime, so it is decided here.
 */
import { KilnError } from '../errors.js';
import type { ExecResult } from '../runtimes/types.js';

/** How long one file call may take: a writer blocked on a FIFO the sandbox made must not hold the request for ever. */
export const FILE_CALL_MS = 10_000;

/** The error for a file call's program that did not exit 0. */
export function fileCallFailed(op: 'read' | 'write', rel: string, r: ExecResult): KilnError {
  const code = op === 'read' ? 'file_read_failed' : 'file_write_failed';
  if (r.killedBy === 'wall_timeout' || r.killedBy === 'cpu_timeout') {
    return new KilnError('file_timeout', `cannot ${op} ${rel}: not done within ${FILE_CALL_MS / 1000} s (is it a FIFO or a device?)`, 504);
  }
  // Killed from inside the sandbox or by its limits: the sandbox's state, not the request, is at fault.
  if (r.exitCode === null) return new KilnError(code, `cannot ${op} ${rel}: the program doing it was killed (${r.signal ?? 'signal'}${r.oomKilled ? ', out of memory' : ''})`, 409);
  return new KilnError(code, `cannot ${op} ${rel}: ${r.stderr.toString().trim().slice(0, 500) || `exit ${r.exitCode}`}`, 400);
}
