/**
 * Credentials fuzz: with auth on, arbitrary Authorization headers on every
 * route never get in, never crash the server (no 5xx) and never hang.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import fc from 'fast-check';
import { SignJWT } from 'jose';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startTestKiln, testConfig, type TestKiln } from '../helpers.js';

const SECRET = 'fuzz-secret-fuzz-secret-fuzz-secret-42';
const ROUTES: Array<[string, string]> = [
  ['GET', '/v1/info'],
  ['POST', '/v1/runs'],
  ['GET', '/v1/runs/x'],
  ['GET', '/v1/sessions'],
  ['POST', '/v1/sessions'],
  ['DELETE', '/v1/sessions/x'],
  ['POST', '/v1/sessions/x/exec'],
  ['GET', '/v1/sessions/x/files/a'],
  ['GET', '/v1/tokens'],
  ['POST', '/v1/tokens'],
  ['GET', '/v1/audit'],
  ['GET', '/metrics'],
  ['GET', '/open/private'],
];

describe('credentials fuzz', () => {
  let t: TestKiln;
  let port: number;
  before(async () => {
    const dir = mkdtempSync(join(tmpdir(), 'kiln-authfuzz-'));
    writeFileSync(join(dir, 'secret'), SECRET);
    const c = testConfig({ auth: { enabled: true, jwt: { algorithm: 'HS256', secretFile: join(dir, 'secret') } }, server: { rateLimitPerMinute: 0 } });
    c.templates.private = { ...c.templates['demo-web']!, public: false, pool: { min: 0, max: 1 } };
    t = await startTestKiln(c);
    await t.app.listen({ port: 0, host: '127.0.0.1' });
    port = (t.app.server.address() as { port: number }).port;
  });
  after(async () => {
    await t.close();
  });

  const send = (method: string, path: string, authorization: string) =>
    new Promise<number>((resolve, reject) => {
      const req = http.request({ host: '127.0.0.1', port, method, path, headers: { authorization, 'content-type': 'application/json' }, signal: AbortSignal.timeout(30_000) }, (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode!));
      });
      req.on('error', reject);
      req.end(method === 'GET' || method === 'DELETE' ? undefined : '{}');
    });

  test('arbitrary Authorization headers: always 401 (or 429 when guessing too fast), never in, never 5xx', async () => {
    const b64 = fc.string({ unit: fc.constantFrom(...'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'.split('')), maxLength: 60 });
    const forgedJwt = fc.tuple(fc.jsonValue({ maxDepth: 2 }), fc.jsonValue({ maxDepth: 2 }), b64).map(([h, p, s]) => `${Buffer.from(JSON.stringify(h)).toString('base64url')}.${Buffer.from(JSON.stringify(p)).toString('base64url')}.${s}`);
    const header = fc.oneof(
      fc.string({ maxLength: 200 }).filter((s) => !/[\r\n\0]/.test(s) && /^[\x20-\x7e]*$/.test(s)),
      b64.map((s) => `Bearer kiln_${s}`),
      forgedJwt.map((s) => `Bearer ${s}`),
      fc.constantFrom('Bearer', 'Bearer ', 'bearer x.y.z', 'Basic YWRtaW46YWRtaW4=', `Bearer ${'a'.repeat(8000)}`),
    );
    let n = 0;
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...ROUTES), header, async ([method, path], auth) => {
        n++;
        const status = await send(method, path, auth);
        assert.ok(status === 401 || status === 429 || status === 400, `${method} ${path} with ${JSON.stringify(auth.slice(0, 80))}: ${status}`);
      }),
      { numRuns: 300 },
    );
    assert.equal(n, 300);
    // A JWT with a valid signature but every claim wrong in turn.
    const key = new TextEncoder().encode(SECRET);
    const noExp = await new SignJWT({ scope: 'admin' }).setProtectedHeader({ alg: 'HS256' }).setSubject('x').sign(key);
    const noSub = await new SignJWT({ scope: 'admin' }).setProtectedHeader({ alg: 'HS256' }).setExpirationTime('5m').sign(key);
    for (const token of [noExp, noSub]) assert.ok([401, 429].includes(await send('GET', '/v1/info', `Bearer ${token}`)));
    const good = await new SignJWT({ scope: 'admin' }).setProtectedHeader({ alg: 'HS256' }).setSubject('x').setExpirationTime('5m').sign(key);
    assert.equal(await send('GET', '/v1/info', `Bearer ${good}`), 200, 'the positive control gets in, even from an address that failed often');
    assert.equal(await send('GET', '/healthz', 'garbage'), 200);
  });
});
