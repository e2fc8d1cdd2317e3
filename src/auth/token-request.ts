/** What a new API token may be: validated the same way for the CLI and the HTTP API. */
import { invalid } from '../errors.js';
import { isScope, parseLimitCaps, SCOPES, type LimitCaps, type Scope } from './principal.js';

export interface TokenRequest {
  name: string;
  scopes: Scope[];
  ttlS?: number;
  limits?: LimitCaps;
  /** Id of the token whose runs and sessions this one sees and acts on (within its own scopes). */
  actsFor?: string;
}

const KEYS = new Set(['name', 'scopes', 'ttlS', 'limits', 'actsFor']);

export function parseTokenRequest(body: unknown): TokenRequest {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) throw invalid('body', 'must be a JSON object');
  const b = body as Record<string, unknown>;
  for (const k of Object.keys(b)) if (!KEYS.has(k)) throw invalid(k, 'unknown field');
  const name = b.name ?? 'token';
  if (typeof name !== 'string' || name.length === 0 || name.length > 100 || /[\0-\x1f]/.test(name)) throw invalid('name', 'must be a string of 1 to 100 printable characters');
  if (!Array.isArray(b.scopes) || b.scopes.length === 0) throw invalid('scopes', `must be a non-empty array of: ${SCOPES.join(', ')}`);
  for (const s of b.scopes) if (typeof s !== 'string' || !isScope(s)) throw invalid('scopes', `unknown scope ${JSON.stringify(s)} (one of ${SCOPES.join(', ')})`);
  const req: TokenRequest = { name, scopes: [...new Set(b.scopes as Scope[])] };
  if (b.ttlS !== undefined && b.ttlS !== null) {
    if (typeof b.ttlS !== 'number' || !Number.isInteger(b.ttlS) || b.ttlS < 60 || b.ttlS > 10 * 365 * 86400) throw invalid('ttlS', 'must be an integer from 60 (a minute) to 315360000 (ten years)');
    req.ttlS = b.ttlS;
  }
  const limits = parseLimitCaps(b.limits, 'limits');
  if (limits) req.limits = limits;
  if (b.actsFor !== undefined && b.actsFor !== null) {
    // A token id, or the principal id a token's view shows (token:tok_…).
    if (typeof b.actsFor !== 'string' || !/^(token:)?tok_[0-9a-f]{12}$/.test(b.actsFor)) throw invalid('actsFor', 'must be a token id like tok_1a2b3c4d5e6f');
    req.actsFor = b.actsFor.replace(/^token:/, '');
  }
  return req;
}

/** `30d`, `12h`, `90m`, `3600s` or `never` → seconds (undefined = never). */
export function parseTtl(text: string): number | undefined {
  if (text === 'never') return undefined;
  const m = /^(\d+)([smhd])$/.exec(text);
  if (!m) throw invalid('--ttl', `${JSON.stringify(text)} is not a duration like 30d, 12h, 90m, 3600s or never`);
  return Number(m[1]) * { s: 1, m: 60, h: 3600, d: 86400 }[m[2] as 's' | 'm' | 'h' | 'd'];
}
