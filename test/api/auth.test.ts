/**
 * Authentication and scopes end to end: a real server on loopback with auth
 * on, API tokens from the real store, JWTs signed here with jose, real
 * sandboxes behind the sessions and runs.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFileSync, spawn } from 'node:child_process';
import https from 'node:https';
import http from 'node:http';
import { Writable } from 'node:stream';
import { SignJWT, generateKeyPair } from 'jose';
import { startTestKiln, testConfig, type TestKiln } from '../helpers.js';
import { startKiln } from '../../src/app.js';
import { buildApi } from '../../src/api/server.js';
import { authRequired } from '../../src/api/auth.js';
import type { KilnConfig } from '../../src/config/schema.js';
import type { Scope } from '../../src/auth/principal.js';

const SECRET = 'a-test-secret-that-is-long-enough-for-hs256!';
const dir = mkdtempSync(join(tmpdir(), 'kiln-auth-'));
writeFileSync(join(dir, 'jwt.secret'), SECRET, { mode: 0o600 });
const hs = new TextEncoder().encode(SECRET);

function authConfig(over: (c: KilnConfig) => void = () => undefined): KilnConfig {
  const c = testConfig({
    auth: { enabled: true, jwt: { algorithm: 'HS256', secretFile: join(dir, 'jwt.secret'), issuer: 'school' }, public: { sessionsPerClient: 2, createsPerMinute: 3 } },
    budget: { cpuTotal: 64, memoryTotalMb: 64 * 1024 },
  });
  c.templates['demo-web'] = { ...c.templates['demo-web']!, public: true, pool: { min: 1, max: 8 }, limits: { cpus: 0.25, memoryMb: 128, pids: 64 } };
  c.templates['private-web'] = { ...c.templates['demo-web']!, public: false, pool: { min: 0, max: 4 } };
  over(c);
  return c;
}

type Res = { status: number; body: any; headers: Headers };

describe('auth', () => {
  let t: TestKiln;
  let base: string;
  const tok: Record<string, string> = {};

  const call = async (method: string, path: string, opts: { token?: string; body?: unknown; headers?: Record<string, string> } = {}): Promise<Res> => {
    const headers: Record<string, string> = { ...opts.headers };
    if (opts.token) headers.authorization = `Bearer ${opts.token}`;
    if (opts.body !== undefined) headers['content-type'] = 'application/json';
    const res = await fetch(base + path, { method, headers, redirect: 'manual', body: opts.body === undefined ? undefined : JSON.stringify(opts.body) });
    const text = await res.text();
    let body: unknown = text;
    try {
      body = text ? JSON.parse(text) : undefined;
    } catch {
      /* html */
    }
    return { status: res.status, body, headers: res.headers };
  };
  const make = async (name: string, scopes: Scope[], extra: { ttlS?: number; limits?: Record<string, number> } = {}) =>
    (tok[name] = (await t.kiln.tokens.create({ name, scopes, actor: 'test', ...extra })).token);
  const jwt = (claims: Record<string, unknown>, exp: string | number | null = '5m', key: Uint8Array = hs) => {
    let j = new SignJWT(claims).setProtectedHeader({ alg: 'HS256' }).setIssuer('school').setSubject(String(claims.sub ?? 'student-1')).setIssuedAt();
    if (exp !== null) j = j.setExpirationTime(exp);
    return j.sign(key);
  };

  before(async () => {
    t = await startTestKiln(authConfig());
    base = await t.app.listen({ port: 0, host: '127.0.0.1' });
    await make('admin', ['admin']);
    await make('runner', ['runs:write', 'runs:read']);
    await make('reader', ['runs:read', 'sessions:read']);
    await make('alice', ['sessions:write', 'sessions:read']);
    await make('bob', ['sessions:write', 'sessions:read']);
  });
  after(async () => {
    await t.close();
  });

  test('without credentials only health checks and public deep links answer', async () => {
    for (const [m, p] of [['GET', '/v1/info'], ['POST', '/v1/runs'], ['GET', '/v1/sessions'], ['GET', '/v1/pools'], ['GET', '/metrics'], ['GET', '/docs'], ['GET', '/v1/templates'], ['GET', '/v1/tokens'], ['GET', '/nope']] as const) {
      const r = await call(m, p);
      assert.equal(r.status, 401, `${m} ${p}`);
      assert.equal(r.body.error.code, 'unauthorized');
      assert.match(r.headers.get('www-authenticate') ?? '', /^Bearer/);
    }
    assert.equal((await call('GET', '/healthz')).status, 200);
    assert.equal((await call('GET', '/readyz')).status, 200);
    assert.equal((await call('GET', '/open/demo-web')).status, 302);
    assert.equal((await call('GET', '/open/private-web')).status, 401);
    assert.equal((await call('GET', '/open/no-such-template')).status, 401, 'unknown and private templates look alike to strangers');
  });

  test('malformed, unknown, revoked, expired and wrongly signed credentials get 401; a missing scope 403', async () => {
    for (const h of ['Basic abc', 'Bearer', 'Bearer kiln_nothing', 'Bearer x.y.z', 'Bearer ' + 'a'.repeat(5000)]) {
      const r = await fetch(`${base}/v1/info`, { headers: { authorization: h } });
      assert.equal(r.status, 401, h.slice(0, 20));
    }
    const gone = await make('gone', ['admin']);
    const id = (await t.kiln.tokens.list()).find((x) => x.name === 'gone')!.id;
    assert.equal((await call('GET', '/v1/info', { token: gone })).status, 200);
    assert.equal((await call('DELETE', `/v1/tokens/${id}`, { token: tok.admin })).status, 200);
    assert.equal((await call('GET', '/v1/info', { token: gone })).status, 401, 'revocation is immediate');
    const old = await make('old', ['admin'], { ttlS: 60 });
    await t.kiln.db.updateTable('tokens').set({ expires_at: new Date(Date.now() - 1000).toISOString() }).where('name', '=', 'old').execute();
    assert.equal((await call('GET', '/v1/info', { token: old })).status, 401);

    // JWTs: expiry required, one algorithm, right key, right issuer.
    assert.equal((await call('GET', '/v1/sessions', { token: await jwt({ scope: 'sessions:read' }) })).status, 200);
    assert.equal((await call('GET', '/v1/sessions', { token: await jwt({ scope: 'sessions:read' }, null) })).status, 401, 'no exp');
    assert.equal((await call('GET', '/v1/sessions', { token: await jwt({ scope: 'sessions:read' }, Math.floor(Date.now() / 1000) - 3600) })).status, 401, 'expired');
    assert.equal((await call('GET', '/v1/sessions', { token: await jwt({ scope: 'sessions:read' }, '5m', new TextEncoder().encode('x'.repeat(40))) })).status, 401, 'wrong key');
    const b64 = (o: object) => Buffer.from(JSON.stringify(o)).toString('base64url');
    const none = `${b64({ alg: 'none', typ: 'JWT' })}.${b64({ sub: 'x', iss: 'school', scope: 'admin', exp: Math.floor(Date.now() / 1000) + 600 })}.`;
    assert.equal((await call('GET', '/v1/sessions', { token: none })).status, 401, 'alg none');
    const { privateKey } = await generateKeyPair('RS256');
    const rs = await new SignJWT({ scope: 'admin' }).setProtectedHeader({ alg: 'RS256' }).setIssuer('school').setSubject('x').setExpirationTime('5m').sign(privateKey);
    assert.equal((await call('GET', '/v1/sessions', { token: rs })).status, 401, 'other algorithm');
    const otherIss = await new SignJWT({ scope: 'admin' }).setProtectedHeader({ alg: 'HS256' }).setIssuer('elsewhere').setSubject('x').setExpirationTime('5m').sign(hs);
    assert.equal((await call('GET', '/v1/sessions', { token: otherIss })).status, 401, 'wrong issuer');

    const forbidden = await call('POST', '/v1/runs', { token: tok.reader, body: { language: 'python', files: [{ name: 'a.py', content: 'print(1)' }] } });
    assert.equal(forbidden.status, 403);
    assert.match(forbidden.body.error.message, /runs:write/);
    assert.equal((await call('GET', '/v1/tokens', { token: tok.runner })).status, 403);
    assert.equal((await call('GET', '/metrics', { token: tok.admin })).status, 200);
  });

  test('runs and sessions of one principal are invisible to another unless admin', async () => {
    const run = await call('POST', '/v1/runs', { token: tok.runner, body: { language: 'python', files: [{ name: 'a.py', content: 'print(6*7)' }] } });
    assert.equal(run.status, 200);
    assert.equal(run.body.run.stdout, '42\n');
    assert.equal((await call('GET', `/v1/runs/${run.body.id}`, { token: tok.runner })).status, 200);
    assert.equal((await call('GET', `/v1/runs/${run.body.id}`, { token: tok.reader })).status, 404);
    assert.equal((await call('GET', `/v1/runs/${run.body.id}`, { token: tok.admin })).status, 200);

    const s = await call('POST', '/v1/sessions', { token: tok.alice, body: { template: 'demo-web' } });
    assert.equal(s.status, 201);
    const id = s.body.id;
    for (const [m, p, body] of [
      ['GET', `/v1/sessions/${id}`],
      ['DELETE', `/v1/sessions/${id}`],
      ['POST', `/v1/sessions/${id}/exec`, { command: ['id'] }],
      ['GET', `/v1/sessions/${id}/files/x`],
      ['GET', `/v1/sessions/${id}/events`],
    ] as const) {
      assert.equal((await call(m, p, { token: tok.bob, body })).status, 404, `bob: ${m} ${p}`);
    }
    assert.deepEqual((await call('GET', '/v1/sessions', { token: tok.bob })).body, []);
    assert.equal((await call('GET', '/v1/sessions', { token: tok.alice })).body.length, 1);
    const ex = await call('POST', `/v1/sessions/${id}/exec`, { token: tok.alice, body: { command: ['sh', '-c', 'echo mine'] } });
    assert.equal(ex.body.stdout, 'mine\n');
    assert.ok((await call('GET', '/v1/sessions', { token: tok.admin })).body.some((v: { id: string }) => v.id === id));
    assert.equal((await call('GET', `/v1/sessions/${id}`, { token: tok.alice })).body.owner, `token:${(await t.kiln.tokens.list()).find((x) => x.name === 'alice')!.id}`);
    assert.equal((await call('DELETE', `/v1/sessions/${id}`, { token: tok.admin })).status, 200);
    const audit = (await call('GET', '/v1/audit', { token: tok.admin })).body as Array<{ action: string; target: string }>;
    assert.ok(audit.some((e) => e.action === 'session.delete' && e.target === id), 'an admin ending another principal\'s session is audited');
    assert.ok(!audit.some((e) => e.action === 'session.exec' && e.target === id), 'the owner\'s own exec is not an admin action');
  });

  test('a read-only credential lists its sessions without their URL secrets', async () => {
    const writer = await jwt({ sub: 'viewer', scope: 'sessions:write sessions:read' });
    const reader = await jwt({ sub: 'viewer', scope: 'sessions:read' });
    const s = await call('POST', '/v1/sessions', { token: writer, body: { template: 'demo-web' } });
    assert.equal(s.status, 201);
    assert.match(s.body.url, /^\/s\/[A-Za-z0-9_-]{22}\/$/);
    const secret = s.body.url.split('/')[2];
    const listed = await call('GET', '/v1/sessions', { token: reader });
    assert.deepEqual(listed.body.map((v: { id: string }) => v.id), [s.body.id], 'the same principal, so it sees the session');
    const one = await call('GET', `/v1/sessions/${s.body.id}`, { token: reader });
    assert.equal(one.status, 200);
    const events = await fetch(`${base}/v1/sessions/${s.body.id}/events`, { headers: { authorization: `Bearer ${reader}` } });
    assert.equal(events.headers.get('x-content-type-options'), 'nosniff', 'the reply headers set before the stream opened go out with it');
    const reading = events.body!.getReader();
    const first = new TextDecoder().decode((await reading.read()).value);
    await reading.cancel();
    assert.match(first, /^event: status\n/);
    for (const [what, text] of [['list', JSON.stringify(listed.body)], ['get', JSON.stringify(one.body)], ['events', first]] as const) {
      assert.ok(!text.includes(secret), `${what} gave a read-only credential the URL secret: ${text}`);
    }
    assert.equal((await call('GET', `/v1/sessions/${s.body.id}`, { token: writer })).body.url, s.body.url, 'a credential that may use it still sees it');
    // The CLI's listing: the URL column is empty for the reader (it printed `…undefined`), whole for the writer.
    const ls = async (token: string) => {
      const cli = spawn(process.execPath, ['--import', import.meta.resolve('tsx'), join(import.meta.dirname, '..', '..', 'src', 'cli', 'dev.ts'), 'session', 'ls'], { env: { ...process.env, KILN_URL: base, KILN_TOKEN: token } });
      let out = '';
      cli.stdout.on('data', (c: Buffer) => (out += c));
      assert.equal(await new Promise((ok) => cli.once('close', ok)), 0);
      return out.split('\n').find((l) => l.startsWith(s.body.id)) ?? '';
    };
    const readerRow = await ls(reader);
    assert.match(readerRow, /ready\s+\S+Z$/, readerRow);
    assert.ok(!readerRow.includes('undefined') && !readerRow.includes(secret), readerRow);
    assert.ok((await ls(writer)).endsWith(`${base}${s.body.url}`));
    assert.equal((await call('DELETE', `/v1/sessions/${s.body.id}`, { token: writer })).status, 200);
  });

  test('a token acting for another sees and acts on its runs and sessions, within its own scopes', async () => {
    const ids = Object.fromEntries((await t.kiln.tokens.list()).map((x) => [x.name, x.id]));
    const made = await call('POST', '/v1/tokens', { token: tok.admin, body: { name: 'alice-view', scopes: ['sessions:read'], actsFor: ids.alice } });
    assert.equal(made.status, 201, JSON.stringify(made.body));
    assert.equal(made.body.actsFor, `token:${ids.alice}`);
    const view = made.body.token as string;
    const info = await call('GET', '/v1/info', { token: view });
    assert.deepEqual([info.body.auth.you.id, info.body.auth.you.credential], [`token:${ids.alice}`, `token:${made.body.id}`]);
    const mine = await call('POST', '/v1/sessions', { token: tok.alice, body: { template: 'demo-web' } });
    const bobs = await call('POST', '/v1/sessions', { token: tok.bob, body: { template: 'demo-web' } });
    const listed = await call('GET', '/v1/sessions', { token: view });
    // Alice's sessions (one ended by an earlier test is still listed), none of bob's, none with its URL secret.
    assert.ok(listed.body.some((v: { id: string }) => v.id === mine.body.id), "alice's session is listed");
    for (const v of listed.body) assert.deepEqual([v.owner, v.url], [`token:${ids.alice}`, undefined], JSON.stringify(v));
    assert.equal((await call('GET', `/v1/sessions/${mine.body.id}`, { token: view })).status, 200);
    assert.equal((await call('GET', `/v1/sessions/${bobs.body.id}`, { token: view })).status, 404);
    assert.equal((await call('POST', `/v1/sessions/${mine.body.id}/exec`, { token: view, body: { command: ['id'] } })).status, 403, 'its own scopes hold');
    // It reads files, but a dashboard polling them does not keep the session alive.
    assert.equal((await fetch(`${base}/v1/sessions/${mine.body.id}/files/notes.txt`, { method: 'PUT', body: 'alice wrote', headers: { authorization: `Bearer ${tok.alice}` } })).status, 204);
    const active = (await call('GET', `/v1/sessions/${mine.body.id}`, { token: tok.alice })).body.lastActivityAt;
    await new Promise((r) => setTimeout(r, 20));
    const read = await fetch(`${base}/v1/sessions/${mine.body.id}/files/notes.txt`, { headers: { authorization: `Bearer ${view}` } });
    assert.equal(await read.text(), 'alice wrote');
    assert.equal((await call('GET', `/v1/sessions/${mine.body.id}`, { token: tok.alice })).body.lastActivityAt, active, "a read-only credential's read is not activity");
    assert.equal((await call('DELETE', `/v1/sessions/${mine.body.id}`, { token: view })).status, 403);
    // Acting for a token that acts for alice is acting for alice.
    const chained = await call('POST', '/v1/tokens', { token: tok.admin, body: { scopes: ['sessions:read'], actsFor: made.body.id } });
    assert.equal(chained.body.actsFor, `token:${ids.alice}`);
    for (const [body, message] of [
      [{ scopes: ['sessions:read'], actsFor: 'tok_000000000000' }, /actsFor: no token tok_000000000000/],
      [{ scopes: ['sessions:read', 'runs:write'], actsFor: ids.alice }, /scopes: runs:write not held by tok_[0-9a-f]{12}, which this token would act for/],
      [{ scopes: ['sessions:read'], actsFor: 'alice' }, /actsFor: must be a token id/],
      [{ scopes: ['admin'], actsFor: ids.alice }, /actsFor: an admin token sees everything already/],
      [{ scopes: ['sessions:read'], actsFor: ids.admin }, /actsFor: tok_[0-9a-f]{12} is an admin token/],
    ] as const) {
      const r = await call('POST', '/v1/tokens', { token: tok.admin, body });
      assert.equal(r.status, 400, JSON.stringify(body));
      assert.match(r.body.error.message, message);
    }
    // What it does in alice's sessions is audited under its own name, not hers.
    const audit = (await call('GET', '/v1/audit', { token: tok.admin })).body as Array<{ actor: string; action: string; target: string }>;
    assert.ok(audit.some((e) => e.actor === `token:${made.body.id}` && e.action === 'session.file_get' && e.target === mine.body.id), JSON.stringify(audit.slice(0, 3)));
    for (const s of [mine, bobs]) await call('DELETE', `/v1/sessions/${s.body.id}`, { token: tok.admin });
    // It never gets more than the token it acts for: that token's caps hold, and its revocation ends it.
    const small = await t.kiln.tokens.create({ name: 'small', scopes: ['sessions:write', 'sessions:read'], limits: { memoryMb: 64 }, actor: 'test' });
    const helper = await call('POST', '/v1/tokens', { token: tok.admin, body: { scopes: ['sessions:write'], limits: { cpus: 2 }, actsFor: `token:${small.view.id}` } });
    assert.deepEqual(helper.body.limits, { memoryMb: 64, cpus: 2 });
    const refused = await call('POST', '/v1/sessions', { token: helper.body.token, body: { template: 'demo-web' } });
    assert.equal(refused.status, 403);
    assert.match(refused.body.error.message, /memoryMb 128.*at most 64/);
    assert.equal((await call('DELETE', `/v1/tokens/${small.view.id}`, { token: tok.admin })).status, 200);
    assert.equal((await call('GET', '/v1/info', { token: helper.body.token })).status, 401, 'acting for a revoked token is acting for no one');
    const late = await call('POST', '/v1/tokens', { token: tok.admin, body: { scopes: ['sessions:write'], actsFor: helper.body.id } });
    assert.match(late.body.error.message, /acts for token:tok_[0-9a-f]{12}, which is revoked or expired/);
  });

  test('a JWT limits claim caps what its holder may ask for', async () => {
    const token = await jwt({ sub: 'capped', scope: 'runs:write runs:read sessions:write', limits: { wallMs: 300, cpuMs: 300 } });
    const r = await call('POST', '/v1/runs', { token, body: { language: 'python', files: [{ name: 'a.py', content: 'while True: pass' }], limits: { wallMs: 20000, cpuMs: 20000 } } });
    assert.equal(r.status, 200);
    assert.equal(r.body.verdict, 'timeout');
    assert.ok(r.body.run.cpuMs < 5000, `the cap of 300 ms held, not the 20 s asked for (cpu ${r.body.run.cpuMs} ms)`);
    const small = await jwt({ sub: 'small', scope: 'sessions:write', limits: { memoryMb: 64 } });
    const refused = await call('POST', '/v1/sessions', { token: small, body: { template: 'demo-web' } });
    assert.equal(refused.status, 403);
    assert.match(refused.body.error.message, /memoryMb 128.*at most 64/);
    // A lifetime cap lowers what is asked for, as for runs; more than the template allows is still a 400.
    const brief = await jwt({ sub: 'brief', scope: 'sessions:write sessions:read', limits: { idleTimeoutS: 20 } });
    const capped = await call('POST', '/v1/sessions', { token: brief, body: { template: 'demo-web', idleTimeoutS: 100 } });
    assert.equal(capped.status, 201, JSON.stringify(capped.body));
    assert.equal(capped.body.idleTimeoutS, 20);
    const tooLong = await call('POST', '/v1/sessions', { token: brief, body: { template: 'demo-web', idleTimeoutS: 100000 } });
    assert.equal(tooLong.status, 400);
    assert.match(tooLong.body.error.message, /idleTimeoutS: must be at most 600 \(template demo-web\)/);
    // Its exec limits hold in sessions too.
    const quick = await jwt({ sub: 'brief', scope: 'sessions:write sessions:read', limits: { wallMs: 300, cpuMs: 300 } });
    const slept = await call('POST', `/v1/sessions/${capped.body.id}/exec`, { token: quick, body: { command: ['sleep', '3'], timeoutMs: 5000 } });
    assert.equal(slept.body.signal, 'SIGKILL', JSON.stringify(slept.body));
    assert.ok(slept.body.wallMs < 2000, `the cap of 300 ms held (wall ${slept.body.wallMs} ms)`);
    await call('DELETE', `/v1/sessions/${capped.body.id}`, { token: brief });
    const bad = await jwt({ sub: 'bad', scope: 'runs:write', limits: { memoryMb: 'lots' } });
    assert.equal((await call('POST', '/v1/runs', { token: bad, body: {} })).status, 401);
  });

  test('public deep links: anonymous visitors are limited per address; the browser gets an HttpOnly cookie and leaves the token URL', async () => {
    // HEAD (a link checker) says the link works and opens nothing.
    const claimed = () => t.kiln.sessions.poolViews().find((p) => p.template === 'demo-web')!.claimed;
    const before = claimed();
    const head = await call('HEAD', '/open/demo-web');
    assert.equal(head.status, 200);
    assert.equal(claimed(), before, 'HEAD claimed a sandbox');
    assert.equal((await call('HEAD', '/open/private-web')).status, 401);
    // Two sessions at once per address (the first test opened one already).
    const second = await call('GET', '/open/demo-web');
    assert.equal(second.status, 302);
    const third = await call('GET', '/open/demo-web');
    assert.equal(third.status, 429);
    assert.ok(Number(third.headers.get('retry-after')) > 0);
    assert.match(third.headers.get('content-type') ?? '', /text\/html/);

    const location = second.headers.get('location')!;
    const token = /^\/s\/([A-Za-z0-9_-]{22})\/$/.exec(location)![1]!;
    assert.ok(Buffer.from(token, 'base64url').length >= 16, 'the URL secret has at least 128 bits');
    // A browser's navigation (fetch() may not send sec-fetch-mode: navigate itself).
    const nav = await new Promise<http.IncomingMessage>((resolve, reject) =>
      http.get(base + location, { headers: { 'sec-fetch-mode': 'navigate', accept: 'text/html' } }, (res) => (res.resume(), resolve(res))).on('error', reject),
    );
    assert.equal(nav.statusCode, 302);
    const moved = nav.headers.location!;
    assert.doesNotMatch(moved, new RegExp(token));
    const cookie = nav.headers['set-cookie']![0]!;
    const sessionPath = moved.replace(/[^/]*$/, '');
    assert.match(cookie, new RegExp(`^kiln_s=${token}; Path=${sessionPath}; HttpOnly; SameSite=Lax`));
    const withCookie = await fetch(base + moved, { headers: { cookie: `kiln_s=${token}` } });
    assert.equal(withCookie.status, 200);
    assert.equal(withCookie.headers.get('referrer-policy'), 'same-origin');
    assert.equal((await fetch(base + moved)).status, 404, 'the id URL without the cookie leads nowhere');
    assert.equal((await fetch(base + moved, { headers: { cookie: `kiln_s=${'A'.repeat(22)}` } })).status, 404);
    assert.equal((await fetch(base + location)).status, 200, 'API clients keep using the token URL');
    // Creates per minute: the limit is 3. This address opened 2; the refused third opened nothing and does not count.
    for (const s of t.kiln.sessions.list()) if (s.status === 'ready') await call('DELETE', `/v1/sessions/${s.id}`, { token: tok.admin });
    assert.equal((await call('GET', '/open/demo-web')).status, 302, 'a refused open counted against the address');
    const again = await call('GET', '/open/demo-web');
    assert.equal(again.status, 429, 'creates per minute per address');
    assert.match(again.body, /too many sessions/i);
  });

  test('tokens over HTTP: admin makes and revokes them; the audit log records it without the secret', async () => {
    const made = await call('POST', '/v1/tokens', { token: tok.admin, body: { name: 'ci', scopes: ['runs:write'], ttlS: 3600 } });
    assert.equal(made.status, 201);
    assert.match(made.body.token, /^kiln_[A-Za-z0-9_-]{43}$/);
    assert.equal((await call('POST', '/v1/tokens', { token: tok.admin, body: { name: 'x', scopes: ['root'] } })).status, 400);
    assert.equal((await call('POST', '/v1/tokens', { token: tok.admin, body: { scopes: ['admin'], ttlS: 1 } })).status, 400);
    assert.equal((await call('DELETE', `/v1/tokens/${made.body.id}`, { token: tok.admin })).status, 200);
    const audit = await call('GET', '/v1/audit', { token: tok.admin });
    const actions = audit.body.map((e: { action: string; target?: string }) => `${e.action} ${e.target}`);
    assert.ok(actions.includes(`token.create ${made.body.id}`) && actions.includes(`token.revoke ${made.body.id}`));
    assert.ok(!JSON.stringify(audit.body).includes(made.body.token));
    const tokens = await call('GET', '/v1/tokens', { token: tok.admin });
    assert.ok(!JSON.stringify(tokens.body).includes('kiln_'), 'listings never show secrets');
  });

  test('secure headers on what kiln serves; CORS only for allowed origins', async () => {
    const r = await call('GET', '/v1/info', { token: tok.admin, headers: { origin: 'https://evil.example' } });
    assert.equal(r.headers.get('x-content-type-options'), 'nosniff');
    assert.equal(r.headers.get('x-frame-options'), 'DENY');
    assert.equal(r.headers.get('referrer-policy'), 'no-referrer');
    assert.match(r.headers.get('content-security-policy') ?? '', /frame-ancestors 'none'/);
    assert.equal(r.headers.get('access-control-allow-origin'), null);
    const page = await fetch(`${base}/s/${'A'.repeat(22)}/`);
    assert.equal(page.status, 404);
    assert.equal(page.headers.get('x-content-type-options'), 'nosniff');
  });
});

describe('auth edges', () => {
  test('auth off is refused on a non-loopback address, with how to turn it on', () => {
    assert.throws(() => authRequired({ enabled: false }, '0.0.0.0'), /auth is off.*KILN_AUTH_ENABLED=true.*kiln token create/);
    assert.equal(authRequired({ enabled: null }, '0.0.0.0'), true);
    assert.equal(authRequired({ enabled: null }, '127.0.0.1'), false);
    assert.equal(authRequired({ enabled: null }, '::1'), false);
    assert.equal(authRequired({ enabled: true }, '127.0.0.1'), true);
  });

  test('auth off on loopback: foreign Host names (DNS rebinding) and foreign origins (cross-site posts) are refused', async () => {
    const t = await startTestKiln(testConfig());
    try {
      const base = await t.app.listen({ port: 0, host: '127.0.0.1' });
      assert.equal((await fetch(`${base}/v1/info`)).status, 200);
      const rebound = await t.app.inject({ method: 'GET', url: '/v1/info', headers: { host: 'attacker.example:7070' } });
      assert.equal(rebound.statusCode, 403);
      const crossSite = await fetch(`${base}/v1/runs`, { method: 'POST', headers: { origin: 'https://attacker.example', 'content-type': 'text/plain' }, body: '{}' });
      assert.equal(crossSite.status, 403);
      assert.match((await crossSite.json()).error.message, /origin https:\/\/attacker.example/);
    } finally {
      await t.close();
    }
  });

  test('CORS preflight for an allowed origin; rate limits answer 429 with Retry-After', async () => {
    const t = await startTestKiln(authConfig((c) => {
      c.server.corsOrigins = ['https://app.example'];
      c.server.rateLimitPerMinute = 5;
      c.templates['demo-web']!.pool = { min: 0, max: 2 };
    }));
    try {
      const token = (await t.kiln.tokens.create({ name: 'x', scopes: ['runs:read'], actor: 'test' })).token;
      const pre = await t.app.inject({ method: 'OPTIONS', url: '/v1/runs', headers: { origin: 'https://app.example', 'access-control-request-method': 'POST' } });
      assert.equal(pre.statusCode, 204);
      assert.equal(pre.headers['access-control-allow-origin'], 'https://app.example');
      assert.match(String(pre.headers['access-control-allow-headers']), /authorization/);
      // An event stream (the response is taken over from Fastify) keeps the CORS header: a browser app can read it.
      const admin = (await t.kiln.tokens.create({ name: 'a', scopes: ['admin'], actor: 'test' })).token;
      const base = await t.app.listen({ port: 0, host: '127.0.0.1' });
      const made = await fetch(`${base}/v1/sessions`, { method: 'POST', headers: { authorization: `Bearer ${admin}`, 'content-type': 'application/json' }, body: JSON.stringify({ template: 'demo-web' }) });
      const { id } = (await made.json()) as { id: string };
      const events = await fetch(`${base}/v1/sessions/${id}/events`, { headers: { authorization: `Bearer ${admin}`, origin: 'https://app.example' } });
      assert.equal(events.headers.get('access-control-allow-origin'), 'https://app.example');
      await events.body!.cancel();
      await fetch(`${base}/v1/sessions/${id}`, { method: 'DELETE', headers: { authorization: `Bearer ${admin}` } });
      const statuses: number[] = [];
      for (let i = 0; i < 7; i++) statuses.push((await t.app.inject({ method: 'GET', url: '/v1/languages', headers: { authorization: `Bearer ${token}` } })).statusCode);
      assert.deepEqual(statuses.slice(0, 5), [200, 200, 200, 200, 200]);
      const limited = await t.app.inject({ method: 'GET', url: '/v1/languages', headers: { authorization: `Bearer ${token}` } });
      assert.equal(limited.statusCode, 429);
      assert.ok(Number(limited.headers['retry-after']) >= 1);
      assert.equal((await t.app.inject({ method: 'GET', url: '/healthz' })).statusCode, 200, 'probes are never limited');
    } finally {
      await t.close();
    }
  });

  test('TLS serves the API and the session proxy over HTTPS with HSTS; credentials never reach the log', async () => {
    const certDir = mkdtempSync(join(tmpdir(), 'kiln-tls-'));
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '1', '-subj', '/CN=localhost', '-addext', 'subjectAltName=IP:127.0.0.1', '-keyout', join(certDir, 'key.pem'), '-out', join(certDir, 'cert.pem')], { stdio: 'ignore' });
    const config = authConfig((c) => {
      c.server.tls = { cert: join(certDir, 'cert.pem'), key: join(certDir, 'key.pem') };
      c.templates['demo-web']!.pool = { min: 0, max: 2 };
    });
    let log = '';
    const sink = new Writable({ write: (chunk, _enc, done) => ((log += String(chunk)), done()) });
    const kiln = await startKiln(config);
    const app = await buildApi(kiln, { logger: { level: 'trace', stream: sink } });
    try {
      const { token } = await kiln.tokens.create({ name: 'x', scopes: ['admin'], actor: 'test' });
      await app.listen({ port: 0, host: '127.0.0.1' });
      const port = (app.server.address() as { port: number }).port;
      const ca = execFileSync('cat', [join(certDir, 'cert.pem')]);
      const get = (path: string, auth: string) =>
        new Promise<{ status: number; hsts: string | undefined }>((resolve, reject) => {
          https.get({ host: '127.0.0.1', port, path, ca, headers: { authorization: `Bearer ${auth}` } }, (res) => {
            res.resume();
            res.on('end', () => resolve({ status: res.statusCode!, hsts: res.headers['strict-transport-security'] as string | undefined }));
          }).on('error', reject);
        });
      const ok = await get('/v1/info', token);
      assert.equal(ok.status, 200);
      assert.match(ok.hsts ?? '', /max-age=/);
      assert.equal((await get('/v1/info', 'kiln_wrong-secret-value')).status, 401);
      const session = await kiln.sessions.create({ template: 'demo-web' }, { id: 'local', kind: 'local', scopes: new Set(['admin']) });
      // Through the proxy over TLS: node's TLS socket on the client's side, a native wire on the server's.
      for (let i = 0; i < 3; i++) {
        const proxied = await new Promise<string>((resolve, reject) => {
          https.get({ host: '127.0.0.1', port, path: `${session.url}info?i=${i}`, ca }, (res) => {
            let body = '';
            res.on('data', (d) => (body += d));
            res.on('end', () => resolve(`${res.statusCode} ${body}`));
          }).on('error', reject);
        });
        assert.match(proxied, new RegExp(`^200 .*"path": "/info\\?i=${i}"`), proxied);
      }
      assert.ok(log.includes('/v1/info'), 'requests are logged');
      for (const secret of [token, 'kiln_wrong-secret-value', SECRET, session.token!]) assert.ok(!log.includes(secret), 'a secret reached the log');
    } finally {
      await app.close();
      await kiln.close();
    }
  });
});
