/**
 * API tokens and the audit log in the store. A token is shown once, when it is
 * made; the store keeps only its SHA-256, so a copy of the database grants
 * nothing. Revocation is immediate: every request looks the hash up.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import type { Db } from './db.js';
import type { LimitCaps, Scope } from '../auth/principal.js';
import { invalid, notFound } from '../errors.js';

export const TOKEN_PREFIX = 'kiln_';

export interface TokenView {
  id: string;
  name: string;
  scopes: Scope[];
  limits?: LimitCaps;
  createdAt: string;
  createdBy: string;
  expiresAt?: string;
  revokedAt?: string;
  lastUsedAt?: string;
  /** The principal whose runs and sessions it sees and acts on (`token:<id>`), within its own scopes. */
  actsFor?: string;
}

export interface TokenRecord {
  id: string;
  scopes: Scope[];
  limits?: LimitCaps;
  actsFor?: string;
}

export interface AuditEntry {
  actor: string;
  action: string;
  target?: string;
  detail?: Record<string, unknown>;
  address?: string;
}

const sha256 = (s: string) => createHash('sha256').update(s).digest();

/** last_used_at is written at most this often per token: a read-mostly hot path stays read-only. */
const LAST_USED_WRITE_MS = 60_000;

export class TokenStore {
  private readonly lastUsedWritten = new Map<string, number>();

  constructor(private readonly db: Db) {}

  /** Make a token; the secret is in the answer and nowhere else. */
  async create(opts: { name: string; scopes: Scope[]; limits?: LimitCaps; ttlS?: number; actsFor?: string; actor: string; address?: string }): Promise<{ token: string; view: TokenView }> {
    const target = opts.actsFor === undefined ? undefined : await this.actingFor(opts.actsFor, opts.scopes);
    const actsFor = target?.principal ?? null;
    // Never more than the token it acts for may ask: the smaller of each cap.
    const limits = target ? lowerOf(opts.limits, target.limits) : opts.limits;
    const id = `tok_${randomBytes(6).toString('hex')}`;
    const token = TOKEN_PREFIX + randomBytes(32).toString('base64url');
    const now = new Date();
    const row = {
      id,
      name: opts.name,
      hash: sha256(token).toString('hex'),
      scopes: JSON.stringify(opts.scopes),
      limits: limits ? JSON.stringify(limits) : null,
      created_at: now.toISOString(),
      created_by: opts.actor,
      expires_at: opts.ttlS === undefined ? null : new Date(now.getTime() + opts.ttlS * 1000).toISOString(),
      revoked_at: null,
      last_used_at: null,
      acts_for: actsFor,
    };
    await this.db.insertInto('tokens').values(row).execute();
    await this.audit({ actor: opts.actor, action: 'token.create', target: id, detail: { name: opts.name, scopes: opts.scopes, expiresAt: row.expires_at, ...(actsFor ? { actsFor } : {}) }, address: opts.address });
    return { token, view: toView(row) };
  }

  /** The live token a secret names, or undefined (unknown, revoked or expired). */
  async verify(token: string): Promise<TokenRecord | undefined> {
    const digest = sha256(token);
    const row = await this.db.selectFrom('tokens').selectAll().where('hash', '=', digest.toString('hex')).executeTakeFirst();
    // The index found the row by hash; compare once more in constant time so no path depends on a secret's bytes.
    if (!row || !timingSafeEqual(Buffer.from(row.hash, 'hex'), digest)) return undefined;
    if (!live(row)) return undefined;
    // Acting for a token that is revoked or expired now is acting for no one.
    if (row.acts_for && !(await this.principalLive(row.acts_for))) return undefined;
    const now = Date.now();
    if (now - (this.lastUsedWritten.get(row.id) ?? 0) > LAST_USED_WRITE_MS) {
      this.lastUsedWritten.set(row.id, now);
      await this.db.updateTable('tokens').set({ last_used_at: new Date(now).toISOString() }).where('id', '=', row.id).execute();
    }
    return { id: row.id, scopes: JSON.parse(row.scopes) as Scope[], ...(row.limits ? { limits: JSON.parse(row.limits) as LimitCaps } : {}), ...(row.acts_for ? { actsFor: row.acts_for } : {}) };
  }

  /**
   * Whom a new token acting for token `id` stands for: that token's own
   * principal, or the one it acts for in turn (no chains to follow at request
   * time), and the caps it must stay under. Its scopes must be among that
   * token's: acting for another never widens what may be done in its name.
   */
  private async actingFor(id: string, scopes: Scope[]): Promise<{ principal: string; limits?: LimitCaps }> {
    // An admin sees everything already; one acting for another would be audited under the other's name.
    if (scopes.includes('admin')) throw invalid('actsFor', 'an admin token sees everything already; give a token acting for another narrower scopes');
    const row = await this.db.selectFrom('tokens').selectAll().where('id', '=', id).executeTakeFirst();
    if (!row) throw invalid('actsFor', `no token ${id}`);
    if (!live(row)) throw invalid('actsFor', `token ${id} is ${row.revoked_at ? 'revoked' : 'expired'}`);
    const theirs = JSON.parse(row.scopes) as Scope[];
    if (theirs.includes('admin')) throw invalid('actsFor', `${id} is an admin token; act for a principal with its own runs and sessions`);
    const wider = scopes.filter((s) => !theirs.includes(s));
    if (wider.length > 0) throw invalid('scopes', `${wider.join(', ')} not held by ${id}, which this token would act for (it holds ${theirs.join(', ')})`);
    const principal = row.acts_for ?? `token:${row.id}`;
    if (row.acts_for && !(await this.principalLive(row.acts_for))) {
      throw invalid('actsFor', `${id} acts for ${row.acts_for}, which is revoked or expired`);
    }
    return { principal, ...(row.limits ? { limits: JSON.parse(row.limits) as LimitCaps } : {}) };
  }

  /** Whether the token a principal id (`token:<id>`) names is live. */
  private async principalLive(principal: string): Promise<boolean> {
    return live(await this.db.selectFrom('tokens').select(['revoked_at', 'expires_at']).where('id', '=', principal.slice('token:'.length)).executeTakeFirst());
  }

  async list(): Promise<TokenView[]> {
    const rows = await this.db.selectFrom('tokens').selectAll().orderBy('created_at').execute();
    return rows.map(toView);
  }

  async revoke(id: string, actor: string, address?: string): Promise<TokenView> {
    const row = await this.db.selectFrom('tokens').selectAll().where('id', '=', id).executeTakeFirst();
    if (!row) throw notFound('token', id);
    if (!row.revoked_at) {
      row.revoked_at = new Date().toISOString();
      await this.db.updateTable('tokens').set({ revoked_at: row.revoked_at }).where('id', '=', id).execute();
      await this.audit({ actor, action: 'token.revoke', target: id, address });
    }
    return toView(row);
  }

  async count(): Promise<number> {
    const r = await this.db.selectFrom('tokens').select((eb) => eb.fn.countAll<number>().as('n')).where('revoked_at', 'is', null).executeTakeFirst();
    return Number(r?.n ?? 0);
  }

  async audit(e: AuditEntry): Promise<void> {
    await this.db
      .insertInto('audit')
      .values({ at: new Date().toISOString(), actor: e.actor, action: e.action, target: e.target ?? null, detail: e.detail ? JSON.stringify(e.detail) : null, address: e.address ?? null })
      .execute();
  }

  async auditLog(limit: number): Promise<Array<AuditEntry & { id: number; at: string }>> {
    const rows = await this.db.selectFrom('audit').selectAll().orderBy('id', 'desc').limit(limit).execute();
    return rows.map((r) => ({
      id: r.id,
      at: r.at,
      actor: r.actor,
      action: r.action,
      ...(r.target ? { target: r.target } : {}),
      ...(r.detail ? { detail: JSON.parse(r.detail) as Record<string, unknown> } : {}),
      ...(r.address ? { address: r.address } : {}),
    }));
  }
}

/** Not revoked and not expired (and present). */
function live(row: { revoked_at: string | null; expires_at: string | null } | undefined): boolean {
  return !!row && !row.revoked_at && !(row.expires_at && row.expires_at <= new Date().toISOString());
}

/** Each cap the smaller of the two (a cap only one side has holds as it is). */
function lowerOf(a: LimitCaps | undefined, b: LimitCaps | undefined): LimitCaps | undefined {
  if (!a || !b) return a ?? b;
  const out: LimitCaps = { ...b };
  for (const [k, v] of Object.entries(a) as [keyof LimitCaps, number][]) out[k] = Math.min(v, b[k] ?? Infinity);
  return out;
}

function toView(row: { id: string; name: string; scopes: string; limits: string | null; created_at: string; created_by: string; expires_at: string | null; revoked_at: string | null; last_used_at: string | null; acts_for: string | null }): TokenView {
  return {
    id: row.id,
    name: row.name,
    scopes: JSON.parse(row.scopes) as Scope[],
    ...(row.limits ? { limits: JSON.parse(row.limits) as LimitCaps } : {}),
    createdAt: row.created_at,
    createdBy: row.created_by,
    ...(row.expires_at ? { expiresAt: row.expires_at } : {}),
    ...(row.revoked_at ? { revokedAt: row.revoked_at } : {}),
    ...(row.last_used_at ? { lastUsedAt: row.last_used_at } : {}),
    ...(row.acts_for ? { actsFor: row.acts_for } : {}),
  };
}
