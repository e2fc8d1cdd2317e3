/**
 * The session lifecycle where it goes wrong: a store that refuses writes,
 * servers that die on their own, stops that race starts and each other,
 * budgets given back by someone else, shutdown. Real sandboxes (process
 * runtime: the lifecycle is the same code on every runtime) and a real store,
 * made to refuse writes with SQLite TEMP triggers on kiln's own connection.
 */
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { sql } from 'kysely';
import { startTestKiln, testConfig, type TestKiln } from '../helpers.js';
import type { KilnConfig } from '../../src/config/schema.js';
import type { WarmSandbox } from '../../src/pools/warm.js';
import { followEvents } from '../../src/cli/client.js';
import { connect } from 'node:net';
import { startKiln } from '../../src/app.js';
import { buildApi } from '../../src/api/server.js';
import { LOCAL } from '../../src/auth/principal.js';

const LIMITS = { cpus: 0.25, memoryMb: 128, pids: 64 };

/** Only the templates a test names get a pool; the shipped ones start none. */
function config(templates: Record<string, Partial<KilnConfig['templates'][string]>>, over: Partial<KilnConfig['sessions']> = {}): KilnConfig {
  const c = testConfig({ budget: { cpuTotal: 64, memoryTotalMb: 64 * 1024 }, sessions: { expiryIntervalS: 0.2, holdRequestS: 20, ...over } });
  for (const name of Object.keys(c.templates)) if (c.templates[name]!.pool) c.templates[name] = { ...c.templates[name]!, pool: { min: 0, max: 4 } };
  for (const [name, t] of Object.entries(templates)) c.templates[name] = { ...c.templates['demo-web']!, pool: { min: 0, max: 4 }, limits: LIMITS, ...t };
  return c;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Wait up to `ms` for `check` to hold. */
async function eventually(check: () => boolean | Promise<boolean>, what: string, ms = 15000): Promise<void> {
  for (const end = Date.now() + ms; Date.now() < end; await sleep(50)) if (await check()) return;
  assert.fail(what);
}

async function withKiln(c: KilnConfig, fn: (k: TestKiln, api: Api, base: string) => Promise<void>): Promise<void> {
  const k = await startTestKiln(c);
  try {
    const base = await k.app.listen({ port: 0, host: '127.0.0.1' });
    const api: Api = async (method, path, body) => {
      const res = await fetch(base + path, { method, headers: body === undefined ? {} : { 'content-type': 'application/json' }, body: body === undefined ? undefined : JSON.stringify(body) });
      const text = await res.text();
      return { status: res.status, body: text ? JSON.parse(text) : undefined };
    };
    await fn(k, api, base);
  } finally {
    await k.close();
  }
}
type Api = (method: string, path: string, body?: unknown) => Promise<{ status: number; body: any }>;

const pool = (k: TestKiln, template: string) => k.kiln.sessions.poolViews().find((p) => p.template === template)!;
const cpuUsed = (k: TestKiln) => k.kiln.budget.snapshot().cpuUsed;
const ownSandboxes = async (k: TestKiln) => (await k.kiln.runtimes.get('process').listOwn()).length;
/** The sandboxes waiting in a pool (to end one's server from outside, as a crash would). */
const waiting = (k: TestKiln, template: string) => (k.kiln.sessions.pools.get(template) as unknown as { ready: WarmSandbox[] }).ready;
const killServer = (w: WarmSandbox) =>
  w.sandbox.exec({ command: ['sh', '-c', 'kill -9 $(pgrep -f demo_server)'], limits: { wallMs: 5000, cpuMs: 5000, memoryMb: 64, pids: 16, outputBytes: 1000 } });

describe('session lifecycle edges', () => {
  test('a stop whose status write the store refuses still ends the session and gives everything back; a second stop waits for it', async () => {
    await withKiln(config({ w: {} }), async (k, api) => {
      const s = await api('POST', '/v1/sessions', { template: 'w' });
      await eventually(async () => (await api('GET', `/v1/sessions/${s.body.id}`)).body.status === 'ready', 'never ready');
      assert.equal(cpuUsed(k), 0.25);
      await sql`CREATE TEMP TRIGGER refuse_status BEFORE UPDATE OF status ON sessions BEGIN SELECT RAISE(ABORT, 'refused by the test'); END`.execute(k.kiln.db);
      try {
        const [first, second] = await Promise.all([api('DELETE', `/v1/sessions/${s.body.id}`), api('DELETE', `/v1/sessions/${s.body.id}`)]);
        for (const r of [first, second]) {
          assert.equal(r.status, 200);
          assert.equal(r.body.status, 'stopped', 'both answer once the session has ended');
        }
        assert.equal(cpuUsed(k), 0, 'its budget is back');
        assert.equal(await ownSandboxes(k), 0, 'its sandbox is gone');
        assert.equal(pool(k, 'w').claimed, 0);
      } finally {
        await sql`DROP TRIGGER refuse_status`.execute(k.kiln.db);
      }
    });
  });

  test('a pooled claim whose row the store refuses gives the sandbox, its budget and its pool slot back', async () => {
    await withKiln(config({ w: { pool: { min: 1, max: 4 } } }), async (k, api) => {
      await eventually(() => pool(k, 'w').ready === 1, 'the pool never filled');
      const before = cpuUsed(k);
      await sql`CREATE TEMP TRIGGER refuse_insert BEFORE INSERT ON sessions BEGIN SELECT RAISE(ABORT, 'refused by the test'); END`.execute(k.kiln.db);
      try {
        const r = await api('POST', '/v1/sessions', { template: 'w' });
        assert.equal(r.status, 500);
      } finally {
        await sql`DROP TRIGGER refuse_insert`.execute(k.kiln.db);
      }
      assert.equal(pool(k, 'w').claimed, 0, 'no claim is left without a session');
      await eventually(() => pool(k, 'w').ready === 1 && pool(k, 'w').starting === 0, 'the pool never refilled');
      assert.equal(cpuUsed(k), before, 'one pooled sandbox reserved, as before');
      assert.equal(await ownSandboxes(k), 1, 'only the pool\'s sandbox runs');
    });
  });

  test('a pooled server that dies while it waits is never handed out, and its place is refilled', async () => {
    await withKiln(config({ w: { pool: { min: 1, max: 4 } } }), async (k, api) => {
      await eventually(() => pool(k, 'w').ready === 1, 'the pool never filled');
      const dead = waiting(k, 'w')[0]!;
      await killServer(dead);
      await eventually(() => waiting(k, 'w')[0] !== dead, 'the dead sandbox stayed in the pool');
      await eventually(() => pool(k, 'w').ready === 1, 'the pool never refilled after the death');
      const s = await api('POST', '/v1/sessions', { template: 'w' });
      assert.equal(s.body.fromPool, true);
      assert.notEqual(s.body.token, dead.token, 'the dead one was not handed out');
      const base = `http://127.0.0.1:${(k.app.server.address() as { port: number }).port}`;
      assert.equal((await fetch(`${base}${s.body.url}info`)).status, 200);
      await eventually(() => pool(k, 'w').ready === 1, 'the pool never refilled after the claim');
      assert.equal(cpuUsed(k), 0.5, 'the claimed sandbox and the refill reserve; the dead one does not');
    });
  });

  test('a pool at its max refills once a session of it ends', async () => {
    await withKiln(config({ one: { pool: { min: 1, max: 1 } } }), async (k, api) => {
      await eventually(() => pool(k, 'one').ready === 1, 'the pool never filled');
      const s = await api('POST', '/v1/sessions', { template: 'one' });
      assert.equal(s.body.fromPool, true);
      await sleep(1000); // past the refill the claim schedules (which finds the pool at its max)
      assert.equal((await api('DELETE', `/v1/sessions/${s.body.id}`)).status, 200);
      await eventually(() => pool(k, 'one').ready === 1, `the pool stayed short: ${JSON.stringify(pool(k, 'one'))}`);
    });
  });

  test('a template larger than the whole budget is refused as never fitting, without a Retry-After', async () => {
    await withKiln(config({ huge: { limits: { cpus: 128, memoryMb: 128, pids: 64 } } }), async (k, _api, base) => {
      const res = await fetch(`${base}/v1/sessions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ template: 'huge' }) });
      assert.equal(res.status, 503);
      assert.equal(res.headers.get('retry-after'), null, 'a retry can never help');
      assert.match(((await res.json()) as { error: { message: string } }).error.message, /budget\.cpuTotal 64.*can never start here/);
      assert.equal(cpuUsed(k), 0);
    });
  });

  test('a session whose server dies ends as failed, with its sandbox and budget given back', async () => {
    await withKiln(config({ w: {} }), async (k, api) => {
      const s = await api('POST', '/v1/sessions', { template: 'w' });
      await eventually(async () => (await api('GET', `/v1/sessions/${s.body.id}`)).body.status === 'ready', 'never ready');
      const ex = await api('POST', `/v1/sessions/${s.body.id}/exec`, { command: ['sh', '-c', 'kill -9 $(pgrep -f demo_server)'] });
      assert.ok(ex.status === 200 || ex.status === 409, JSON.stringify(ex));
      await eventually(async () => (await api('GET', `/v1/sessions/${s.body.id}`)).body.status === 'failed', 'the session never ended');
      const v = (await api('GET', `/v1/sessions/${s.body.id}`)).body;
      assert.equal(v.stopReason, 'failed');
      assert.equal(v.error, 'the server exited');
      assert.equal(v.url, undefined, 'an ended session shows no URL');
      assert.equal(cpuUsed(k), 0);
      assert.equal(await ownSandboxes(k), 0);
    });
  });

  test('a pool short of its target because the budget was full refills when another template gives budget back', async () => {
    const c = config({ x: { pool: { min: 2, max: 4 } }, y: {} });
    c.budget = { cpuTotal: 0.75, memoryTotalMb: 64 * 1024 };
    await withKiln(c, async (k, api) => {
      await eventually(() => pool(k, 'x').ready === 2, 'x never filled');
      const y = await api('POST', '/v1/sessions', { template: 'y' });
      assert.equal(y.status, 201);
      const x = await api('POST', '/v1/sessions', { template: 'x' });
      assert.equal(x.body.fromPool, true);
      await sleep(600); // the claim's refill (after 250 ms) finds no budget
      assert.equal(pool(k, 'x').ready, 1);
      assert.equal(cpuUsed(k), 0.75);
      await api('DELETE', `/v1/sessions/${y.body.id}`);
      await eventually(() => pool(k, 'x').ready === 2, 'x stayed short after y gave its budget back');
    });
  });

  test('the idle warning comes once per idle spell, never while a WebSocket is open, and at most halfway through a short timeout', async () => {
    // The template warns 60 s ahead; the session asks for a 2 s idle timeout.
    await withKiln(config({ w: { idleTimeoutS: 600, warnings: { idleS: 60, durationS: 0 } } }), async (k, api, base) => {
      const s = await api('POST', '/v1/sessions', { template: 'w', idleTimeoutS: 2 });
      await eventually(async () => (await api('GET', `/v1/sessions/${s.body.id}`)).body.status === 'ready', 'never ready');
      const warnings: { at: number; inS: number }[] = [];
      const started = Date.now();
      const events = followEvents(`/v1/sessions/${s.body.id}/events`, (event, data) => {
        if (event === 'warning') warnings.push({ at: Date.now() - started, inS: (data as { inS: number }).inS });
        return event === 'stopped';
      }, base);
      const ws = new WebSocket(`${base.replace('http', 'ws')}${s.body.url}ws`);
      try {
        await new Promise((ok, fail) => (ws.once('open', ok), ws.once('error', fail)));
        await sleep(3000); // 15 sweeps with the socket open
        assert.equal(warnings.length, 0, `warned while a WebSocket kept the session in use: ${JSON.stringify(warnings)}`);
      } finally {
        ws.close(); // an open socket or event stream would hold the server's close
      }
      await Promise.race([events, sleep(20000).then(() => assert.fail(`the idle session never stopped; warnings: ${JSON.stringify(warnings)}`))]);
      assert.equal(warnings.length, 1, JSON.stringify(warnings));
      assert.ok(warnings[0]!.inS <= 1, `warned ${warnings[0]!.inS} s ahead of a 2 s idle timeout`);
      assert.equal((await api('GET', `/v1/sessions/${s.body.id}`)).body.stopReason, 'idle');
    });
  });

  test('a stop during a cold start answers after the start is cancelled and its sandbox gone', async () => {
    // A server that never listens: without the stop, the start would wait for readiness for readyTimeoutS.
    await withKiln(config({ never: { command: ['sleep', '600'], ready: { tcp: true } } }, { readyTimeoutS: 60 }), async (k, api) => {
      const s = await api('POST', '/v1/sessions', { template: 'never' });
      assert.equal(s.body.status, 'starting');
      await eventually(async () => (await ownSandboxes(k)) === 1, 'the sandbox never started');
      const t0 = Date.now();
      const del = await api('DELETE', `/v1/sessions/${s.body.id}`);
      assert.ok(Date.now() - t0 < 30000, 'the stop waited for the readiness timeout (60 s)');
      assert.equal(del.body.status, 'stopped');
      assert.equal(del.body.stopReason, 'deleted');
      assert.equal(cpuUsed(k), 0, 'the budget is back when the answer comes');
      assert.equal(await ownSandboxes(k), 0, 'the sandbox is gone when the answer comes');
      assert.equal(pool(k, 'never').claimed, 0);
    });
  });

  test('an exec cut short because its session ended is a 409, not the program\'s SIGKILL', async () => {
    await withKiln(config({ w: {} }), async (k, api) => {
      const s = await api('POST', '/v1/sessions', { template: 'w' });
      await eventually(async () => (await api('GET', `/v1/sessions/${s.body.id}`)).body.status === 'ready', 'never ready');
      const ex = api('POST', `/v1/sessions/${s.body.id}/exec`, { command: ['sleep', '30'], timeoutMs: 30000 });
      await sleep(500);
      await api('DELETE', `/v1/sessions/${s.body.id}`);
      const r = await ex;
      assert.equal(r.status, 409, JSON.stringify(r.body));
      assert.match(r.body.error.message, /ended \(deleted\) while the command ran/);
    });
  });

  test('a server that exits at once ends its session failed, with its own last words, not an internal error', async () => {
    await withKiln(config({ dying: { command: ['sh', '-c', 'echo dying >&2; exit 3'] } }), async (k, api) => {
      for (let i = 0; i < 3; i++) {
        const s = await api('POST', '/v1/sessions', { template: 'dying' });
        await eventually(async () => (await api('GET', `/v1/sessions/${s.body.id}`)).body.status === 'failed', 'never failed');
        const v = (await api('GET', `/v1/sessions/${s.body.id}`)).body;
        assert.equal(v.stopReason, 'failed');
        assert.match(v.error, /^the server exited (as it started|before it was ready): dying$/, v.error);
      }
    });
  });

  test('a file call holds off idle reaping while it runs; one cut short because its session ended is a 409 that says so', async () => {
    await withKiln(config({ w: { idleTimeoutS: 2 } }), async (k, api, base) => {
      const s = await api('POST', '/v1/sessions', { template: 'w' });
      await eventually(async () => (await api('GET', `/v1/sessions/${s.body.id}`)).body.status === 'ready', 'never ready');
      assert.equal((await api('POST', `/v1/sessions/${s.body.id}/exec`, { command: ['mkfifo', 'pipe'] })).status, 200);
      // Blocks opening the FIFO until the session's end kills the writer.
      const put = fetch(`${base}/v1/sessions/${s.body.id}/files/pipe`, { method: 'PUT', body: 'never read' });
      await sleep(3500);
      assert.equal(k.kiln.sessions.byIdLookup(s.body.id)?.status, 'ready', 'reaped as idle (2 s) while a file call ran');
      await api('DELETE', `/v1/sessions/${s.body.id}`);
      const r = await put;
      assert.equal(r.status, 409);
      assert.match((await r.json()).error.message, /ended \(deleted\) while pipe was written/);
    });
  });

  test('an event stream whose client left while an async hook ran ends at once, holding no listeners', async () => {
    const c = config({ w: {} });
    const kiln = await startKiln(c);
    const app = await buildApi(kiln);
    // Stands for any slow async hook (a store under load): the client's 'close' comes before the stream opens.
    app.addHook('onRequest', async (req) => {
      if (req.url.endsWith('/events')) await sleep(300);
    });
    await app.listen({ port: 0, host: '127.0.0.1' });
    try {
      const s = await kiln.sessions.create({ template: 'w' }, LOCAL);
      const listeners = () => (kiln.events as unknown as { emitter: import('node:events').EventEmitter }).emitter.listenerCount('session:status');
      const before = listeners();
      const sock = connect((app.server.address() as import('node:net').AddressInfo).port, '127.0.0.1');
      sock.write(`GET /v1/sessions/${s.id}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`);
      await sleep(50);
      sock.destroy();
      await sleep(700);
      assert.equal(listeners(), before, 'the stream of a client already gone still listens (until the session ends)');
      assert.equal((await kiln.sessions.get(s.id, LOCAL)).status === 'stopped', false, 'the session lives on');
    } finally {
      await app.close();
      await kiln.close();
    }
  });

  test('shutdown starts no sandbox to refill a pool; a failing template\'s back-off holds no start that shutdown would wait for', async () => {
    const c = config({ w: { pool: { min: 2, max: 8 } }, broken: { command: ['false'], pool: { min: 1, max: 2 } } });
    const k = await startTestKiln(c);
    let failures = 0;
    k.kiln.events.on('pool:refill:failed', () => failures++);
    await eventually(() => pool(k, 'w').ready === 2, 'the pool never filled');
    for (let i = 0; i < 3; i++) await k.kiln.sessions.create({ template: 'w' }, { id: 'local', kind: 'local', scopes: new Set(['admin']) });
    await eventually(() => pool(k, 'w').ready === 2 && pool(k, 'w').starting === 0, 'the pool never refilled');
    // Between its failed starts `broken` waits out a back-off with nothing starting (a start that
    // sleeps its back-off counted as starting, and shutdown waited for it, up to 30 s).
    await eventually(() => failures >= 2 && pool(k, 'broken').starting === 0, 'a failed start stayed counted as starting');
    let created = 0;
    const rt = k.kiln.runtimes.get('process');
    const create = rt.create.bind(rt);
    rt.create = (spec) => (created++, create(spec));
    await k.close();
    assert.equal(created, 0, 'sandboxes were started during shutdown');
  });
});
