/**
 * One error type for the whole service. Every failure a user can cause or see
 * carries a stable snake_case `code`, the HTTP status the API answers with, and
 * a message that names what to change. The API, the CLI and the UI render the
 * same object: `{"error":{"code","message"}}`.
 */
export class KilnError extends Error {
  readonly code: string;
  readonly status: number;
  /** Seconds a client should wait before retrying (429/503). */
  readonly retryAfterS: number | undefined;

  constructor(code: string, message: string, status = 400, opts: { retryAfterS?: number; cause?: unknown } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'KilnError';
    this.code = code;
    this.status = status;
    this.retryAfterS = opts.retryAfterS;
  }

  toJSON(): { error: { code: string; message: string } } {
    return { error: { code: this.code, message: this.message } };
  }
}

/** A request field is missing, of the wrong type or out of range. */
export function invalid(field: string, problem: string): KilnError {
  return new KilnError('invalid_request', `${field}: ${problem}`, 400);
}

export function notFound(what: string, id: string): KilnError {
  return new KilnError('not_found', `${what} ${JSON.stringify(id)} does not exist`, 404);
}

export function isKilnError(e: unknown): e is KilnError {
  return e instanceof KilnError;
}

/** Message of any thrown value, for logs; never includes a stack. */
export function messageOf(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
