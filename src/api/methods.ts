/**
 * Which methods a path has routes for. A request with the wrong method on a
 * known path gets `405` and an `Allow` header (RFC 9110 §15.5.6), not a
 * "no route" that sends the caller looking for a typo in the path.
 */
import type { FastifyInstance } from 'fastify';

/** Start recording routes (call before any is added); returns the look-up. */
export function trackMethods(app: FastifyInstance): (path: string) => string[] {
  const routes: { pattern: RegExp; methods: string[] }[] = [];
  app.addHook('onRoute', (route) => {
    routes.push({ pattern: patternOf(route.url), methods: [route.method].flat() });
  });
  return (path) => [...new Set(routes.filter((r) => r.pattern.test(path)).flatMap((r) => r.methods))].sort();
}

/** A Fastify route URL (`/v1/sessions/:id/files/*`) as a regular expression over request paths. */
function patternOf(url: string): RegExp {
  const parts = url.split(/(:[A-Za-z_][A-Za-z0-9_]*|\*)/).map((p) => (p === '*' ? '.*' : p.startsWith(':') ? '[^/]+' : p.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')));
  return new RegExp(`^${parts.join('')}$`);
}
