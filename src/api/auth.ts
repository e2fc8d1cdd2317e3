/**
 * Authentication for the API: every request resolves to a principal or is
 * refused. Routes declare what they need in `config.access`:
 *   - a scope ('runs:write', …): a credential holding it (admin holds all);
 *   - 'authenticated': any valid credential (the default, so a new route is closed);
 *   - 'public': no credential needed, but one that is sent must be valid (deep links);
 *   - 'none': credentials are not even looked at (health checks: a probe with a stale header still works).
 * With auth off (loopback only) every caller is the local admin.
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { anonymous, LOCAL, requireScope, type Principal, type Scope } from '../auth/principal.js';
import { JwtVerifier, unauthorized } from '../auth/jwt.js';
import { TOKEN_PREFIX, type TokenStore } from '../store/tokens.js';
import { KilnError } from '../errors.js';
import { FixedWindow } from './protect.js';

export type Access = Scope | 'authenticated' | 'public' | 'none';

declare module 'fastify' {
  interface FastifyContextConfig {
    access?: Access;
  }
  interface FastifyRequest {
    principal: Principal;
  }
}

export interface AuthOptions {
  enabled: boolean;
  tokens: TokenStore;
  jwt?: JwtVerifier;
  /** Failed credential checks per client address per minute before 429 (guessing is slow). */
  failuresPerMinute?: number;
}

export class Authenticator {
  private readonly failures: FixedWindow;

  constructor(private readonly opts: AuthOptions) {
    this.failures = new FixedWindow(opts.failuresPerMinute ?? 30, 60_000);
  }

  get enabled(): boolean {
    return this.opts.enabled;
  }

  /** The principal of a request's credentials; undefined when it sent none. Bad credentials throw 401. */
  async credentials(req: FastifyRequest): Promise<Principal | undefined> {
    if (!this.opts.enabled) return LOCAL;
    const header = req.headers.authorization;
    if (header === undefined) return undefined;
    try {
      return await this.verify(header);
    } catch (e) {
      // Counted per address, and only failures: a valid credential behind the same NAT is never locked out.
      const wait = this.failures.take(req.ip);
      if (wait > 0) throw new KilnError('rate_limited', `too many failed credentials from this address; retry in ${wait} s`, 429, { retryAfterS: wait });
      throw e;
    }
  }

  private async verify(header: string): Promise<Principal> {
    const m = /^Bearer +(\S+)\s*$/i.exec(header);
    if (!m) throw unauthorized('Authorization header is not "Bearer <token>"');
    const secret = m[1]!;
    if (secret.startsWith(TOKEN_PREFIX)) {
      const t = await this.opts.tokens.verify(secret);
      if (!t) throw unauthorized('token unknown, revoked or expired');
      const own = `token:${t.id}`;
      return { id: t.actsFor ?? own, kind: 'token', scopes: new Set(t.scopes), ...(t.limits ? { limits: t.limits } : {}), ...(t.actsFor ? { credential: own } : {}) };
    }
    if (secret.split('.').length === 3) {
      if (!this.opts.jwt) throw unauthorized('JWTs are not accepted here (auth.jwt is not configured)');
      return this.opts.jwt.verify(secret);
    }
    throw unauthorized('token is malformed');
  }

  /** Install the check on every route of `app`. */
  install(app: FastifyInstance): void {
    app.decorateRequest('principal', null as unknown as Principal);
    app.addHook('onRequest', async (req) => {
      const access: Access = req.routeOptions.config?.access ?? 'authenticated';
      if (access === 'none') {
        req.principal = anonymous(req.ip);
        return;
      }
      const p = await this.credentials(req);
      if (access === 'public') {
        req.principal = p ?? anonymous(req.ip);
        return;
      }
      if (!p) throw unauthorized('credentials required');
      if (access !== 'authenticated') requireScope(p, access);
      req.principal = p;
    });
  }
}

const isLoopbackHost = (host: string) => host === 'localhost' || host === '::1' || /^127(\.\d{1,3}){3}$/.test(host);

/**
 * Whether the API requires credentials: as configured, else on unless the
 * server listens on loopback only. Auth off on any other address is refused:
 * anyone who reaches the port could run code.
 */
export function authRequired(auth: { enabled: boolean | null }, host: string): boolean {
  if (auth.enabled === false && !isLoopbackHost(host)) {
    throw new KilnError(
      'auth_required',
      `auth is off (auth.enabled: false) but server.host ${host} is not loopback; turn it on (remove auth.enabled: false or set KILN_AUTH_ENABLED=true), then make a token with: kiln token create --scope admin`,
    );
  }
  return auth.enabled ?? !isLoopbackHost(host);
}
