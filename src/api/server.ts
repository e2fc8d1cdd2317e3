/**
 * The HTTP API: Fastify routes over the services. Routes translate HTTP to
 * service calls and back; they hold no business logic.
 */
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import http from 'node:http';
import { PREFIX } from '../proxy/proxy.js';
import { streamSessionEvents } from './sse.js';
import { toStage } from '../runs/verdict.js';
import swagger from '@fastify/swagger';
import swaggerUi from '@fastify/swagger-ui';
import type { Kiln } from '../app.js';
import { KilnError, isKilnError } from '../errors.js';
import { storeReady } from '../store/db.js';
import { ErrorSchema, LanguageSchema, RunRequestSchema, RunSchema } from './schemas.js';
import { streamRunEvents } from './sse.js';
import { Authenticator, authRequired } from './auth.js';
import { installEdge } from './protect.js';
import { registerDeepLink } from './deeplink.js';
import { registerTokenRoutes } from './tokens.js';
import { trackMethods } from './methods.js';
import { JwtVerifier } from '../auth/jwt.js';
import https from 'node:https';
import { readFileSync } from 'node:fs';

export const VERSION = '0.1.0';

export interface ApiOptions {
  logger?: boolean | object;
}

export async function buildApi(kiln: Kiln, opts: ApiOptions = {}): Promise<FastifyInstance> {
  const cfg = kiln.config;
  const required = authRequired(cfg.auth, cfg.server.host);
  const authenticator = new Authenticator({ enabled: required, tokens: kiln.tokens, ...(cfg.auth.jwt ? { jwt: await JwtVerifier.fromConfig(cfg.auth.jwt) } : {}) });
  const tls = cfg.server.tls ? { cert: readPem(cfg.server.tls.cert, 'server.tls.cert'), key: readPem(cfg.server.tls.key, 'server.tls.key') } : undefined;
  const app = Fastify({
    trustProxy: cfg.server.trustProxy,
    // Session traffic (/s/<token>/..., and all of a session's own host) goes straight to the proxy: bodies stream, nothing is parsed.
    serverFactory: (handler) => {
      const onRequest = (req: http.IncomingMessage, res: http.ServerResponse) => {
        if (req.url?.startsWith(PREFIX) || kiln.proxy.isSessionHost(req.headers.host)) kiln.proxy.handle(req, res);
        else handler(req, res);
      };
      const server = tls ? https.createServer(tls, onRequest) : http.createServer(onRequest);
      kiln.proxy.install(server);
      server.on('upgrade', (req, socket, head) => {
        if (req.url?.startsWith(PREFIX) || kiln.proxy.isSessionHost(req.headers.host)) void kiln.proxy.upgrade(req, socket, head);
        else socket.end('HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
      });
      return server;
    },
    logger: opts.logger ?? false,
    bodyLimit: kiln.config.server.bodyLimitBytes,
    // A URL that does not decode (`%E0%A4%A`) is answered in our error shape too, not Fastify's.
    frameworkErrors: (err, _req, reply) => void sendError(reply as FastifyReply, err),
  });

  // Requests are validated by the services with messages that name the field; schemas here document.
  app.setValidatorCompiler(() => () => true);
  app.setSerializerCompiler(() => (data) => JSON.stringify(data));
  // `curl -d '{...}'` sends form encoding: take any body as JSON so the README's one-liners work.
  app.removeContentTypeParser('application/json');
  app.addContentTypeParser(['application/json', 'application/x-www-form-urlencoded', 'text/plain'], { parseAs: 'string' }, (_req, body, done) => {
    try {
      done(null, parseJsonBody(body as string));
    } catch (e) {
      done(toKilnError(e), undefined);
    }
  });

  installEdge(app, { corsOrigins: cfg.server.corsOrigins, rateLimitPerMinute: cfg.server.rateLimitPerMinute, tls: tls !== undefined, loopbackOnly: !required });
  authenticator.install(app);

  app.setErrorHandler((err: unknown, _req, reply) => sendError(reply, err, app));
  const methodsOf = trackMethods(app);
  app.setNotFoundHandler((req, reply) => {
    const path = req.url.split('?')[0]!;
    const allowed = methodsOf(path);
    if (allowed.length === 0) return sendError(reply, new KilnError('not_found', `no route ${req.method} ${path}`, 404), app);
    reply.header('Allow', allowed.join(', '));
    return sendError(reply, new KilnError('method_not_allowed', `${req.method} is not allowed on ${path}; use ${allowed.join(', ')}`, 405), app);
  });

  await app.register(swagger, {
    openapi: { info: { title: 'Kiln API', version: VERSION, description: 'Isolated, fast-to-start compute: runs, sessions, jobs.' } },
  });
  await app.register(swaggerUi, { routePrefix: '/docs' });
  app.addSchema(ErrorSchema);

  app.get('/healthz', { schema: { hide: true }, config: { access: 'none' } }, async () => ({ ok: true }));
  app.get('/readyz', { schema: { hide: true }, config: { access: 'none' } }, async (_req, reply) => {
    const ok = await storeReady(kiln.db);
    return reply.code(ok ? 200 : 503).send({ ok });
  });
  app.get('/metrics', { schema: { hide: true }, config: { access: 'admin' } }, async (_req, reply) => {
    return reply.type(kiln.metrics.registry.contentType).send(await kiln.metrics.registry.metrics());
  });
  app.get('/v1/info', async (req) => ({
    version: VERSION,
    instanceId: kiln.instanceId,
    auth: { required: authenticator.enabled, jwt: kiln.config.auth.jwt?.algorithm ?? null, you: { id: req.principal.id, scopes: [...req.principal.scopes], ...(req.principal.credential ? { credential: req.principal.credential } : {}) } },
    runtimes: await kiln.runtimes.checkAll(),
    budget: kiln.budget.snapshot(),
    queue: { depth: kiln.runs.queue.depth, running: kiln.runs.queue.running, max: kiln.config.runs.queueMax },
  }));
  app.get('/v1/languages', { schema: { response: { 200: { type: 'array', items: LanguageSchema } } } }, async () => kiln.runs.languages());
  app.get('/v1/templates', async () =>
    Object.entries(kiln.config.templates).map(([name, t]) => ({ name, runtime: t.runtime, image: t.image, public: t.public ?? false, limits: { ...kiln.config.sandboxDefaults, ...t.limits } })),
  );

  app.post(
    '/v1/runs',
    { config: { access: 'runs:write' }, schema: { body: RunRequestSchema, response: { 200: RunSchema, 202: RunSchema, 400: { $ref: 'Error#' }, 429: { $ref: 'Error#' } } } },
    async (req, reply) => {
      const { run, wait } = await kiln.runs.submit(req.body, req.principal);
      if (!wait) return reply.code(202).send({ id: run.id, status: run.status });
      return reply.send(await kiln.runs.waitDone(run.id));
    },
  );
  app.get<{ Params: { id: string } }>('/v1/runs/:id', { config: { access: 'runs:read' }, schema: { response: { 200: RunSchema, 404: { $ref: 'Error#' } } } }, async (req) =>
    kiln.runs.get(req.params.id, req.principal),
  );
  app.get<{ Params: { id: string } }>('/v1/runs/:id/events', { config: { access: 'runs:read' } }, async (req: FastifyRequest<{ Params: { id: string } }>, reply) => {
    await kiln.runs.get(req.params.id, req.principal); // 404 before the stream starts
    streamRunEvents(kiln, req.params.id, req, reply);
  });

  app.get('/v1/pools', { config: { access: 'sessions:read' } }, async () => kiln.sessions.poolViews());
  app.get('/v1/sessions', { config: { access: 'sessions:read' } }, async (req) => kiln.sessions.list(req.principal));
  app.post('/v1/sessions', { config: { access: 'sessions:write' } }, async (req, reply) => reply.code(201).send(await kiln.sessions.create(req.body, req.principal)));
  app.get<{ Params: { id: string } }>('/v1/sessions/:id', { config: { access: 'sessions:read' } }, async (req) => kiln.sessions.get(req.params.id, req.principal));
  // Acting in a session that is not the caller's own goes to the audit log: an admin in another
  // principal's, or a token acting for the owner (under its own name, so the log tells them apart).
  const auditForeign = async (req: FastifyRequest, action: string, id: string) => {
    const owner = (await kiln.sessions.get(id, req.principal)).owner;
    const actor = req.principal.credential ?? req.principal.id;
    if (owner !== actor) await kiln.tokens.audit({ actor, action, target: id, detail: { owner }, address: req.ip });
  };
  app.delete<{ Params: { id: string } }>('/v1/sessions/:id', { config: { access: 'sessions:write' } }, async (req) => {
    await auditForeign(req, 'session.delete', req.params.id);
    return kiln.sessions.remove(req.params.id, req.principal);
  });
  app.post<{ Params: { id: string } }>('/v1/sessions/:id/exec', { config: { access: 'sessions:write' } }, async (req) => {
    await auditForeign(req, 'session.exec', req.params.id);
    const r = await kiln.sessions.exec(req.params.id, req.body, req.principal);
    // A stage, and why kiln ended it (a run says that with its verdict).
    return { ...toStage(r), killedBy: r.killedBy, oomKilled: r.oomKilled };
  });
  app.get<{ Params: { id: string } }>('/v1/sessions/:id/events', { config: { access: 'sessions:read' } }, async (req, reply) => {
    await kiln.sessions.get(req.params.id, req.principal);
    streamSessionEvents(kiln, req.params.id, req, reply);
  });
  // Files: raw bytes both ways, any content type.
  app.register(async (files) => {
    files.removeAllContentTypeParsers();
    files.addContentTypeParser('*', { parseAs: 'buffer' }, (_req, body, done) => done(null, body));
    files.put<{ Params: { id: string; '*': string } }>('/v1/sessions/:id/files/*', { config: { access: 'sessions:write' } }, async (req, reply) => {
      const body = Buffer.isBuffer(req.body) ? req.body : Buffer.alloc(0);
      await auditForeign(req, 'session.file_put', req.params.id);
      await kiln.sessions.putFile(req.params.id, req.params['*'], body, req.principal);
      return reply.code(204).send();
    });
    files.get<{ Params: { id: string; '*': string } }>('/v1/sessions/:id/files/*', { config: { access: 'sessions:read' } }, async (req, reply) => {
      await auditForeign(req, 'session.file_get', req.params.id);
      const data = await kiln.sessions.getFile(req.params.id, req.params['*'], req.principal);
      return reply.type('application/octet-stream').send(data);
    });
  });
  registerDeepLink(app, kiln);
  registerTokenRoutes(app, kiln);
  return app;
}

function readPem(file: string, setting: string): Buffer {
  try {
    return readFileSync(file);
  } catch (e) {
    throw new KilnError('invalid_config', `${setting}: cannot read ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}

function sendError(reply: FastifyReply, err: unknown, app?: FastifyInstance): FastifyReply {
  const e = toKilnError(err);
  if (e.status >= 500) app?.log.error({ code: e.code, msg: e.message }, 'request failed');
  if (e.retryAfterS !== undefined) reply.header('Retry-After', String(e.retryAfterS));
  if (e.status === 401) reply.header('WWW-Authenticate', 'Bearer realm="kiln"');
  return reply.code(e.status).type('application/json').send(e.toJSON());
}

/**
 * A request body as JSON. A key that could reach a prototype when the value is
 * merged somewhere (`__proto__`, or `constructor` holding `prototype`) is
 * refused by name, so the caller learns which key, not that the JSON is bad.
 */
function parseJsonBody(text: string): unknown {
  if (text.trim() === '') throw new KilnError('invalid_json', 'body: empty, expected a JSON object', 400);
  let value: unknown;
  try {
    value = JSON.parse(text, (key, v: unknown) => {
      if (key === '__proto__' || (key === 'constructor' && v !== null && typeof v === 'object' && Object.hasOwn(v, 'prototype'))) {
        throw new KilnError('invalid_json', `body: the key ${JSON.stringify(key === '__proto__' ? key : 'constructor.prototype')} is not allowed`, 400);
      }
      return v;
    });
  } catch (e) {
    throw isKilnError(e) ? e : new KilnError('invalid_json', 'body: not valid JSON', 400);
  }
  return value;
}

/** Fastify's own errors (body too large, bad JSON …) mapped onto our codes. */
function toKilnError(err: unknown): KilnError {
  if (isKilnError(err)) return err;
  const f = err as { code?: string; statusCode?: number; message?: string };
  switch (f.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return new KilnError('body_too_large', `body: larger than the limit of the server (server.bodyLimitBytes)`, 413);
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return new KilnError('unsupported_media_type', 'body: send JSON (Content-Type: application/json)', 415);
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
      return new KilnError('invalid_json', 'body: not valid JSON', 400);
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return new KilnError('invalid_json', 'body: empty, expected a JSON object', 400);
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
      return new KilnError('invalid_request', 'Content-Length does not match the body', 400);
  }
  if (f.statusCode && f.statusCode >= 400 && f.statusCode < 500) return new KilnError('invalid_request', f.message ?? 'bad request', f.statusCode);
  return new KilnError('internal_error', 'internal error; see the server log', 500);
}
