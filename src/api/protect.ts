/**
 * What every mature HTTP service does at its edge: rate limits, CORS for an
 * allow-list of origins, secure response headers, and — when auth is off and
 * the server is on loopback — refusal of requests a browser could be tricked
 * into sending (DNS rebinding, cross-site POSTs).
 */
import type { FastifyInstance } from 'fastify';
import { KilnError } from '../errors.js';

/** A counter per key that resets every `windowMs`; memory is bounded by the keys seen in one window. */
export class FixedWindow {
  private counts = new Map<string, number>();
  private windowStart = Date.now();

  constructor(
    private readonly limit: number,
    private readonly windowMs: number,
  ) {}

  private roll(): void {
    const now = Date.now();
    if (now - this.windowStart >= this.windowMs) {
      this.counts = new Map();
      this.windowStart = now;
    }
  }

  /** Count one for `key`; returns 0 when allowed, else seconds to wait. */
  take(key: string): number {
    this.roll();
    const n = (this.counts.get(key) ?? 0) + 1;
    if (n > this.limit) return this.retryAfterS();
    this.counts.set(key, n);
    return 0;
  }

  /** Undo a take() whose action did not happen (a deep link that found every instance busy). */
  giveBack(key: string): void {
    const n = this.counts.get(key) ?? 0;
    if (n > 0) this.counts.set(key, n - 1);
  }

  private retryAfterS(): number {
    return Math.max(1, Math.ceil((this.windowStart + this.windowMs - Date.now()) / 1000));
  }
}

export interface EdgeOptions {
  corsOrigins: string[];
  /** Requests per minute per principal (0 = none). */
  rateLimitPerMinute: number;
  tls: boolean;
  /** Auth off: only loopback Host names and no foreign Origin. */
  loopbackOnly: boolean;
}

const LOOPBACK_HOST = /^(localhost|127(?:\.\d{1,3}){3}|\[::1\])(?::\d+)?$/i;

export function installEdge(app: FastifyInstance, opts: EdgeOptions): void {
  const allowed = new Set(opts.corsOrigins);
  const limiter = opts.rateLimitPerMinute > 0 ? new FixedWindow(opts.rateLimitPerMinute, 60_000) : undefined;

  // Before authentication: a preflight carries no credentials, and a forged Host must not reach a route.
  app.addHook('onRequest', async (req, reply) => {
    const origin = req.headers.origin;
    if (opts.loopbackOnly) {
      if (!LOOPBACK_HOST.test(req.headers.host ?? '')) throw new KilnError('forbidden_host', 'auth is off, so this server answers only requests addressed to localhost', 403);
      if (origin !== undefined && !allowed.has(origin) && !isSameOrigin(origin, req.headers.host)) {
        throw new KilnError('forbidden_origin', `origin ${origin} is not in server.corsOrigins`, 403);
      }
    }
    if (origin !== undefined && allowed.has(origin)) {
      reply.header('access-control-allow-origin', origin).header('vary', 'Origin');
      if (req.method === 'OPTIONS' && req.headers['access-control-request-method']) {
        return reply
          .code(204)
          .header('access-control-allow-methods', 'GET, POST, PUT, DELETE')
          .header('access-control-allow-headers', 'authorization, content-type')
          .header('access-control-max-age', '600')
          .send();
      }
    }
  });

  // After authentication: the limit is per principal (an address when anonymous).
  if (limiter) {
    app.addHook('preHandler', async (req) => {
      // Probes, and the one local user of a loopback server without auth, are never throttled.
      if (req.url === '/healthz' || req.url === '/readyz' || req.principal?.kind === 'local') return;
      const wait = limiter.take(req.principal?.credential ?? req.principal?.id ?? req.ip);
      if (wait > 0) throw new KilnError('rate_limited', `more than ${opts.rateLimitPerMinute} requests a minute; retry in ${wait} s`, 429, { retryAfterS: wait });
    });
  }

  app.addHook('onSend', async (req, reply) => {
    reply.header('x-content-type-options', 'nosniff');
    reply.header('referrer-policy', 'no-referrer');
    reply.header('x-frame-options', 'DENY');
    if (!reply.hasHeader('cache-control')) reply.header('cache-control', 'no-store');
    // The OpenAPI UI loads its own scripts and styles; everything else kiln serves needs none.
    if (!req.url.startsWith('/docs')) reply.header('content-security-policy', "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'");
    if (opts.tls) reply.header('strict-transport-security', 'max-age=31536000');
  });
}

function isSameOrigin(origin: string, host: string | undefined): boolean {
  try {
    return new URL(origin).host === host;
  } catch {
    return false;
  }
}

export const SECURE_PAGE_HEADERS: Record<string, string> = {
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'x-frame-options': 'DENY',
  'content-security-policy': "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
};
