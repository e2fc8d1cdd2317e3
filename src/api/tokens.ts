/** Admin routes: API tokens and the audit log. */
import type { FastifyInstance } from 'fastify';
import type { Kiln } from '../app.js';
import { parseTokenRequest } from '../auth/token-request.js';
import { invalid } from '../errors.js';

export function registerTokenRoutes(app: FastifyInstance, kiln: Kiln): void {
  app.post('/v1/tokens', { config: { access: 'admin' } }, async (req, reply) => {
    const r = parseTokenRequest(req.body);
    const { token, view } = await kiln.tokens.create({ ...r, actor: req.principal.id, address: req.ip });
    return reply.code(201).send({ ...view, token });
  });
  app.get('/v1/tokens', { config: { access: 'admin' } }, async () => kiln.tokens.list());
  app.delete<{ Params: { id: string } }>('/v1/tokens/:id', { config: { access: 'admin' } }, async (req) => kiln.tokens.revoke(req.params.id, req.principal.id, req.ip));
  app.get<{ Querystring: { limit?: string } }>('/v1/audit', { config: { access: 'admin' } }, async (req) => {
    const limit = req.query.limit === undefined ? 100 : Number(req.query.limit);
    if (!Number.isInteger(limit) || limit < 1 || limit > 1000) throw invalid('limit', 'must be an integer from 1 to 1000');
    return kiln.tokens.auditLog(limit);
  });
}
