/**
 * Deep links: `GET /open/<template>` hands whoever clicks a fresh instance that
 * was already running. Public templates need no credentials (a class gets one
 * link); anonymous visitors are limited per address, in sessions held (the
 * session service) and in creates per minute (here). A browser lands on the
 * token URL and the proxy moves it to the session-id URL with an HttpOnly
 * cookie, so the secret leaves the address bar and the history.
 */
import type { FastifyInstance, FastifyReply } from 'fastify';
import type { Kiln } from '../app.js';
import { requireScope } from '../auth/principal.js';
import { unauthorized } from '../auth/jwt.js';
import { isKilnError, type KilnError } from '../errors.js';
import { pageHtml } from '../proxy/pages.js';
import { FixedWindow, SECURE_PAGE_HEADERS } from './protect.js';

export function registerDeepLink(app: FastifyInstance, kiln: Kiln): void {
  const creates = new FixedWindow(kiln.config.auth.public.createsPerMinute, 60_000);
  app.get<{ Params: { template: string } }>('/open/:template', { config: { access: 'public' } }, async (req, reply) => {
    const name = req.params.template;
    const templates = kiln.config.templates;
    const t = Object.hasOwn(templates, name) ? templates[name] : undefined;
    if (req.principal.kind === 'anonymous') {
      // Unknown and private templates look alike to a stranger.
      if (!t?.public) throw unauthorized(`template ${name} needs credentials (it is not public)`);
      const wait = creates.take(req.ip);
      if (wait > 0) return busy(reply, 429, 'Too many new sessions', `This address opened too many sessions in the last minute. This page tries again in ${wait} seconds.`, wait);
    } else {
      requireScope(req.principal, 'sessions:write');
    }
    try {
      const session = await kiln.sessions.create({ template: name }, req.principal);
      // To the token URL; a browser arriving there is handed the session's cookie and moved off it by the proxy.
      return reply.header('cache-control', 'no-store').header('referrer-policy', 'no-referrer').redirect(`/s/${session.token!}${t?.openPath ?? '/'}`, 302);
    } catch (e) {
      const err = e as KilnError;
      if (!isKilnError(err) || (err.status !== 503 && err.status !== 429)) throw e;
      const retry = err.retryAfterS ?? 10;
      const text = err.status === 503 ? `Every instance of ${name} is in use. This page tries again in ${retry} seconds.` : `${err.message}. This page tries again in ${retry} seconds.`;
      return busy(reply, err.status, err.status === 503 ? 'All instances are busy' : 'Too many sessions', text, retry);
    }
  });
}

function busy(reply: FastifyReply, status: number, title: string, text: string, retryS: number): FastifyReply {
  return reply
    .code(status)
    .headers(SECURE_PAGE_HEADERS)
    .header('retry-after', String(retryS))
    .type('text/html; charset=utf-8')
    .send(pageHtml(title, text, true, retryS));
}
