/**
 * File names that cross into a sandbox. Only plain relative paths below the
 * work dir are accepted: no absolute paths, no `..`, no empty or dot segments,
 * no NUL, and a bounded length, so a name can never point outside.
 */
import { KilnError } from '../errors.js';

export const MAX_PATH_BYTES = 1024;
export const MAX_SEGMENT_BYTES = 255;

/** The reason a relative path is refused, or undefined when it is fine. */
export function relativePathProblem(path: string): string | undefined {
  if (typeof path !== 'string' || path.length === 0) return 'must be a non-empty relative path';
  if (Buffer.byteLength(path) > MAX_PATH_BYTES) return `must be at most ${MAX_PATH_BYTES} bytes`;
  if (path.includes('\0')) return 'must not contain NUL';
  if (path.includes('\\')) return 'must not contain a backslash';
  if (path.startsWith('/')) return 'must be relative to the work dir, not absolute';
  for (const seg of path.split('/')) {
    if (seg === '' || seg === '.' || seg === '..') return `must not contain empty, "." or ".." segments (got ${JSON.stringify(path)})`;
    if (Buffer.byteLength(seg) > MAX_SEGMENT_BYTES) return `each segment must be at most ${MAX_SEGMENT_BYTES} bytes`;
  }
  return undefined;
}

/** The path itself when safe; otherwise a 400 naming the problem. */
export function checkRelativePath(path: string, field = 'path'): string {
  const problem = relativePathProblem(path);
  if (problem) throw new KilnError('invalid_path', `${field}: ${problem}`, 400);
  return path;
}
