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
import { requireScope, type Principal } from '../auth/principal.js';
import { unauthorized } from '../auth/jwt.js';
import { isKilnError, type KilnError } from '../errors.js';
import { pageHtml } from '../proxy/pages.js';
import { FixedWindow, SECURE_PAGE_HEADERS } from './protect.js';

export function registerDeepLink(app: FastifyInstance, kiln: Kiln): void {
  const creates = new FixedWindow(kiln.config.auth.public.createsPerMinute, 60_000);
  /** The template a caller may open by link; throws as GET would answer otherwise. */
  const openable = (name: string, principal: Principal) => {
    const templates = kiln.config.templates;
    const t = Object.hasOwn(templates, name) ? templates[name] : undefined;
    // Unknown and private templates look alike to a stranger.
    if (principal.kind === 'anonymous' && !t?.public) throw unauthorized(`template ${name} needs credentials (it is not public)`);
    if (principal.kind !== 'anonymous') requireScope(principal, 'sessions:write');
    return t;
  };
  // HEAD (link checkers, chat unfurlers) claims nothing: it says whether the link would work.
  app.head<{ Params: { template: string } }>('/open/:template', { config: { access: 'public' } }, async (req, reply) => {
    const t = openable(req.params.template, req.principal);
    const status = !t ? 404 : kiln.sessions.couldOpen(req.params.template) ? 200 : 503;
    if (status === 503) reply.header('retry-after', '10');
    return reply.code(status).header('cache-control', 'no-store').type('text/html; charset=utf-8').send();
  });
  app.get<{ Params: { template: string } }>('/open/:template', { config: { access: 'public' }, exposeHeadRoute: false }, async (req, reply) => {
    const name = req.params.template;
    const t = openable(name, req.principal);
    if (!t) return page(reply, 404, 'No such link', `There is no template named ${name} here.`);
    const anonymous = req.principal.kind === 'anonymous';
    if (anonymous) {
      const wait = creates.take(req.ip);
      if (wait > 0) return busy(reply, 429, 'Too many new sessions', `This address opened too many sessions in the last minute. This page tries again in ${wait} seconds.`, wait);
    }
    try {
      const session = await kiln.sessions.create({ template: name }, req.principal);
      // To the token URL (on kiln's origin or the session's own); a browser arriving there is handed the session's cookie and moved off it by the proxy.
      return reply.header('cache-control', 'no-store').header('referrer-policy', 'no-referrer').redirect(`${session.url!.slice(0, -1)}${t?.openPath ?? '/'}`, 302);
    } catch (e) {
      // Nothing was opened: the try does not count against the address (a busy page reloads itself).
      if (anonymous) creates.giveBack(req.ip);
      const err = e as KilnError;
      if (!isKilnError(err) || (err.status !== 503 && err.status !== 429)) throw e;
      const retry = err.retryAfterS ?? 10;
      const full = err.code === 'no_capacity' || err.code === 'over_budget';
      const text = full ? `Every instance of ${name} is in use. This page tries again in ${retry} seconds.` : `${err.message.replace(/\.$/, '')}. This page tries again in ${retry} seconds.`;
      return busy(reply, err.status, full ? 'All instances are busy' : err.status === 503 ? 'Not available now' : 'Too many sessions', text, retry);
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

/** A page for a browser that followed a link (no reload). */
function page(reply: FastifyReply, status: number, title: string, text: string): FastifyReply {
  return reply.code(status).headers(SECURE_PAGE_HEADERS).type('text/html; charset=utf-8').send(pageHtml(title, text));
}
