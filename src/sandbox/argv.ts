/**
 * Command lines and environments that cross into a sandbox. The kernel refuses
 * an argument or variable over 128 KiB and an exec whose arguments and
 * environment together pass ARG_MAX; kiln's own launcher adds its arguments on
 * top. So sizes are checked at the door: too large is a 400 naming the field,
 * never a failed spawn deep inside a runtime.
 */

/** Bytes of one argument or one `NAME=value` pair. */
export const MAX_ARG_BYTES = 64 * 1024;
/** Bytes of all arguments together, and separately of all variables together. */
export const MAX_ARGV_BYTES = 256 * 1024;

/** What is wrong and where: `at` is appended to the field name (`[3]`, `.NAME`, or empty for the whole). */
export interface ArgvProblem {
  at: string;
  problem: string;
}

/** Why a list of arguments cannot be passed to a program, or undefined when it can. */
export function argvProblem(args: readonly string[]): ArgvProblem | undefined {
  let total = 0;
  for (const [i, a] of args.entries()) {
    if (a.includes('\0')) return { at: `[${i}]`, problem: 'must not contain NUL' };
    const bytes = Buffer.byteLength(a) + 1;
    if (bytes > MAX_ARG_BYTES) return { at: `[${i}]`, problem: `must be at most ${MAX_ARG_BYTES} bytes` };
    total += bytes;
  }
  if (total > MAX_ARGV_BYTES) return { at: '', problem: `must be at most ${MAX_ARGV_BYTES} bytes all together` };
  return undefined;
}

/** Why an environment cannot be given to a program, or undefined when it can. */
export function envProblem(env: Readonly<Record<string, string>>): ArgvProblem | undefined {
  let total = 0;
  for (const [name, value] of Object.entries(env)) {
    if (value.includes('\0')) return { at: `.${name}`, problem: 'must not contain NUL' };
    const bytes = Buffer.byteLength(name) + Buffer.byteLength(value) + 2;
    if (bytes > MAX_ARG_BYTES) return { at: `.${name}`, problem: `must be at most ${MAX_ARG_BYTES} bytes` };
    total += bytes;
  }
  if (total > MAX_ARGV_BYTES) return { at: '', problem: `must be at most ${MAX_ARGV_BYTES} bytes all together` };
  return undefined;
}
