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

/**
 * The program that reads `rel` inside the sandbox, with its rights (a planted
 * link leads only where the sandbox could already read), and at most one byte
 * past `maxBytes` so a larger file is seen as such. Its exit tells what is there.
 */
export function readFileCommand(rel: string, maxBytes: number): string[] {
  const script = '[ -e "$1" ] || exit 3; [ -d "$1" ] && exit 4; [ -f "$1" ] || exit 5; exec head -c "$2" -- "$1"';
  return ['/bin/sh', '-c', script, 'get', rel, String(maxBytes + 1)];
}

/** The file `readFileCommand` read, undefined when there is none, or the error that says why not. */
export function fileRead(rel: string, maxBytes: number, r: ExecResult): Buffer | undefined {
  if (r.stdout.length > maxBytes) throw new KilnError('file_too_large', `${rel} is larger than ${maxBytes} bytes`, 413);
  if (r.exitCode === 3) return undefined;
  if (r.exitCode === 4) throw new KilnError('not_a_file', `cannot read ${rel}: it is a directory`, 400);
  if (r.exitCode === 5) throw new KilnError('not_a_file', `cannot read ${rel}: not a regular file (a FIFO, socket or device)`, 400);
  if (r.exitCode !== 0) throw fileCallFailed('read', rel, r);
  return r.stdout;
}

/** The program that writes its standard input to `rel` inside the sandbox, as the sandbox user, making the folders on the way. */
export function writeFileCommand(rel: string): string[] {
  return ['/bin/sh', '-c', 'mkdir -p -- "$(dirname -- "$1")" && cat > "$1"', 'put', rel];
}
