/**
 * Who is calling, and what they may do. Every API request carries a principal:
 * an API token, a JWT from the operator's own app, an anonymous visitor of a
 * public template's deep link, or (auth off, loopback only) the local user.
 *
 * Scopes are coarse on purpose: read/write per kind of work, and `admin`,
 * which implies every other scope and sees every principal's runs and sessions.
 */
import { KilnError } from '../errors.js';

export const SCOPES = ['runs:read', 'runs:write', 'sessions:read', 'sessions:write', 'jobs:read', 'jobs:write', 'admin'] as const;
export type Scope = (typeof SCOPES)[number];

export const isScope = (s: string): s is Scope => (SCOPES as readonly string[]).includes(s);

/** Caps a credential puts on what its holder may ask for; the effective limit is the smaller of request and cap. */
export interface LimitCaps {
  wallMs?: number;
  cpuMs?: number;
  memoryMb?: number;
  pids?: number;
  outputBytes?: number;
  cpus?: number;
  idleTimeoutS?: number;
  maxDurationS?: number;
}
export const LIMIT_CAP_KEYS = ['wallMs', 'cpuMs', 'memoryMb', 'pids', 'outputBytes', 'cpus', 'idleTimeoutS', 'maxDurationS'] as const;

export interface Principal {
  /** Stable owner key stored with runs and sessions: `token:<id>`, `jwt:<iss>:<sub>`, `anon:<address>`, `local`. */
  id: string;
  kind: 'token' | 'jwt' | 'anonymous' | 'local';
  scopes: ReadonlySet<Scope>;
  limits?: LimitCaps;
  /** The credential itself (`token:<id>`) when it acts for `id`, another principal: rate limits count it on its own. */
  credential?: string;
}

export const LOCAL: Principal = { id: 'local', kind: 'local', scopes: new Set(['admin']) };

export function anonymous(address: string): Principal {
  return { id: `anon:${address}`, kind: 'anonymous', scopes: new Set() };
}

export function can(p: Principal, scope: Scope): boolean {
  return p.scopes.has('admin') || p.scopes.has(scope);
}

/** 403 unless `p` holds `scope`. */
export function requireScope(p: Principal, scope: Scope): void {
  if (!can(p, scope)) throw new KilnError('forbidden', `this credential lacks the scope ${scope}`, 403);
}

/** Whether `p` may see a run or session owned by `owner`. Others' things are not found, not forbidden: ids leak nothing. */
export function sees(p: Principal, owner: string): boolean {
  return p.scopes.has('admin') || p.id === owner;
}

/** Validate a `limits` cap object from a token or a JWT claim; names the bad key. */
export function parseLimitCaps(v: unknown, where: string): LimitCaps | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'object' || Array.isArray(v)) throw new KilnError('invalid_request', `${where}: must be an object`, 400);
  const out: LimitCaps = {};
  for (const [k, x] of Object.entries(v as Record<string, unknown>)) {
    if (!(LIMIT_CAP_KEYS as readonly string[]).includes(k)) throw new KilnError('invalid_request', `${where}.${k}: unknown limit (one of ${LIMIT_CAP_KEYS.join(', ')})`, 400);
    if (typeof x !== 'number' || !Number.isFinite(x) || x <= 0) throw new KilnError('invalid_request', `${where}.${k}: must be a positive number`, 400);
    out[k as keyof LimitCaps] = x;
  }
  return out;
}
