/**
 * Sessions end to end on both runtimes: real sandboxes running the demo
 * server, the real proxy on loopback, real timeouts with small values.
 */
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import WebSocket from 'ws';
import { sql } from 'kysely';
import { startTestKiln, testConfig, type TestKiln } from '../helpers.js';

let t: TestKiln;
let base: string;
import type { KilnConfig } from '../../src/config/schema.js';
import { followEvents } from '../../src/cli/client.js';

/** The demo server on each runtime: process, docker (runc), gvisor (runsc, reached through exec relays). */
const SESSION_TEMPLATES = ['demo-web', 'demo-docker', 'demo-gvisor'];

function sessionConfig(): KilnConfig {
  const c = testConfig({
    budget: { cpuTotal: 64, memoryTotalMb: 64 * 1024 },
    sessions: { expiryIntervalS: 0.2, holdRequestS: 20 },
  });
  for (const name of SESSION_TEMPLATES) {
    c.templates[name] = { ...c.templates[name]!, pool: { min: 2, max: 8 }, limits: { cpus: 0.25, memoryMb: 128, pids: 64 } };
    // The same template, cold-started, idle after 2 s.
    c.templates[`${name}-short`] = { ...c.templates[name]!, pool: { min: 0, max: 2 }, idleTimeoutS: 2, maxDurationS: 60, warnings: { idleS: 1, durationS: 0 } };
  }
  c.templates['short-web'] = { ...c.templates['demo-web']!, pool: { min: 0, max: 4 }, idleTimeoutS: 2, maxDurationS: 60, warnings: { idleS: 1, durationS: 0 } };
  c.templates['brief-web'] = { ...c.templates['demo-web']!, pool: { min: 0, max: 4 }, idleTimeoutS: 60, maxDurationS: 2, warnings: { idleS: 0, durationS: 1 } };
  return c;
}

async function api(method: string, path: string, body?: unknown): Promise<{ status: number; body: any; headers: Headers }> {
  const res = await fetch(base + path, { method, headers: body === undefined ? {} : { 'content-type': 'application/json' }, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : undefined, headers: res.headers };
}

async function poolReady(template: string, n: number): Promise<void> {
  for (let i = 0; i < 600; i++) {
    const p = t.kiln.sessions.poolViews().find((v) => v.template === template)!;
    if (p.ready >= n) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.fail(`pool ${template} never had ${n} ready: ${JSON.stringify(t.kiln.sessions.poolViews())}`);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A new session of `template`, once it is ready. */
async function readySession(template: string): Promise<{ id: string; url: string }> {
  const s = await api('POST', '/v1/sessions', { template });
  assert.equal(s.status, 201, JSON.stringify(s.body));
  for (let i = 0; i < 200 && (await api('GET', `/v1/sessions/${s.body.id}`)).body.status !== 'ready'; i++) await sleep(50);
  return s.body;
}

/** Wait up to 5 s for `check` to hold. */
async function eventually(check: () => Promise<boolean>, what: string): Promise<void> {
  for (let i = 0; i < 100; i++) {
    if (await check()) return;
    await sleep(50);
  }
  assert.fail(what);
}

/** Read server-sent events until `stop` says so (with the CLI's own reader). */
async function readEvents(path: string, stop: (event: string) => boolean): Promise<{ event: string; data: any }[]> {
  const out: { event: string; data: any }[] = [];
  await followEvents(path, (event, data) => {
    out.push({ event, data });
    return stop(event);
  }, base);
  return out;
}

// Hooks live in a describe: top-level after() hooks wait for the event loop to drain,
// which warm pools (live sandboxes) never let happen.
describe('sessions', () => {
  
  before(async () => {
    t = await startTestKiln(sessionConfig());
    base = await t.app.listen({ port: 0, host: '127.0.0.1' });
  });
  after(async () => {
    await t.close();
  });

  for (const template of SESSION_TEMPLATES) {
    describe(`sessions on ${template}`, () => {
      test('a warm claim answers at once; HTTP GET and POST reach the server through the proxy', async () => {
        await poolReady(template, 2);
        const s = await api('POST', '/v1/sessions', { template, metadata: { course: 'cs101' } });
        assert.equal(s.status, 201, JSON.stringify(s.body));
        assert.equal(s.body.status, 'ready');
        assert.equal(s.body.fromPool, true);
        assert.match(s.body.url, /^\/s\/[A-Za-z0-9_-]{22}\/$/);
        assert.equal(s.body.url, `/s/${s.body.token}/`);
        const page = await fetch(base + s.body.url);
        assert.equal(page.status, 200);
        assert.match(await page.text(), /Kiln demo session/);
        const post = await fetch(`${base}${s.body.url}echo`, { method: 'POST', body: 'x'.repeat(100000) });
        assert.equal((await post.text()).length, 100000);
        const info = await (await fetch(`${base}${s.body.url}info?a=1`)).json();
        assert.equal(info.path, '/info?a=1', 'the server sees paths without the /s/<token> prefix');
        const del = await api('DELETE', `/v1/sessions/${s.body.id}`);
        assert.equal(del.body.status, 'stopped');
        assert.equal(del.body.stopReason, 'deleted');
        assert.equal((await fetch(base + s.body.url)).status, 410);
      });

      test('WebSocket echo and a chunked streaming response pass through', async () => {
        const s = await api('POST', '/v1/sessions', { template });
        const ws = new WebSocket(`${base.replace('http', 'ws')}${s.body.url}ws`);
        await new Promise((ok, fail) => {
          ws.once('open', ok);
          ws.once('error', fail);
        });
        const echoes: string[] = [];
        for (const msg of ['one', 'two', 'x'.repeat(70000)]) {
          ws.send(msg);
          echoes.push(String(await new Promise((r) => ws.once('message', r))));
        }
        assert.deepEqual(echoes.map((e) => e.length), [3, 3, 70000]);
        assert.equal(t.kiln.proxy.stats.openSockets >= 1, true, 'an open WebSocket counts as activity');
        ws.close();
        const chunks: string[] = [];
        await new Promise<void>((resolve, reject) => {
          http.get(`${base}${s.body.url}stream`, (res) => {
            assert.equal(res.headers['transfer-encoding'], 'chunked');
            res.on('data', (c: Buffer) => chunks.push(c.toString()));
            res.on('end', resolve);
          }).on('error', reject);
        });
        assert.equal(chunks.join(''), 'chunk 0\nchunk 1\nchunk 2\nchunk 3\nchunk 4\n');
        assert.ok(chunks.length > 1, 'the response arrived in pieces, as it was written');
        await api('DELETE', `/v1/sessions/${s.body.id}`);
      });

      test('exec and files work in the session sandbox; bad input is a 400 naming the field; a file call that cannot finish is a 504', async () => {
        const s = await api('POST', '/v1/sessions', { template });
        // A writer opening a FIFO no one reads blocks until the file call's deadline (10 s) ends it.
        assert.equal((await api('POST', `/v1/sessions/${s.body.id}/exec`, { command: ['mkfifo', 'pipe'] })).status, 200);
        const blocked = fetch(`${base}/v1/sessions/${s.body.id}/files/pipe`, { method: 'PUT', body: 'never read' });
        const put = await fetch(`${base}/v1/sessions/${s.body.id}/files/data/in.txt`, { method: 'PUT', body: 'hello file' });
        assert.equal(put.status, 204);
        const ex = await api('POST', `/v1/sessions/${s.body.id}/exec`, { command: ['sh', '-c', 'cat data/in.txt; echo; id -u; python3 -c "import urllib.request as u; print(u.urlopen(\'http://127.0.0.1:8080/info\').status)"'], stdin: '' });
        assert.equal(ex.status, 200, JSON.stringify(ex.body));
        assert.equal(ex.body.stdout, 'hello file\n65534\n200\n', 'exec runs beside the server, as the sandbox user');
        const got = await fetch(`${base}/v1/sessions/${s.body.id}/files/data/in.txt`);
        assert.equal(await got.text(), 'hello file');
        assert.equal((await fetch(`${base}/v1/sessions/${s.body.id}/files/nope.txt`)).status, 404);
        // Something there that is not a file is named for what it is, not called missing.
        for (const [path, what] of [['data', /cannot read data: it is a directory/], ['pipe', /cannot read pipe: not a regular file/]] as const) {
          const r = await fetch(`${base}/v1/sessions/${s.body.id}/files/${path}`);
          assert.equal(r.status, 400, path);
          assert.match((await r.json()).error.message, what);
        }
        assert.equal((await fetch(`${base}/v1/sessions/${s.body.id}/files/..%2F..%2Fetc%2Fpasswd`)).status, 400);
        const slow = await api('POST', `/v1/sessions/${s.body.id}/exec`, { command: ['sleep', '10'], timeoutMs: 300 });
        assert.equal(slow.body.signal, 'SIGKILL');
        assert.equal((await fetch(`${base}${s.body.url}info`)).status, 200, 'an exec timeout leaves the server running');
        for (const [body, field] of [
          [{ command: 'ls' }, /command/],
          [{ command: ['ls'], timeoutMs: -1 }, /timeoutMs/],
          [{ command: ['ls'], extra: 1 }, /extra/],
        ] as const) {
          const r = await api('POST', `/v1/sessions/${s.body.id}/exec`, body);
          assert.equal(r.status, 400);
          assert.match(r.body.error.message, field);
        }
        const timedOut = await blocked;
        assert.equal(timedOut.status, 504);
        assert.match((await timedOut.json()).error.message, /cannot write pipe: not done within 10 s/);
        assert.equal((await fetch(`${base}${s.body.url}info`)).status, 200, 'the session lives on');
        await api('DELETE', `/v1/sessions/${s.body.id}`);
      });

      test('an idle session ends after a warning, and its backend connections go with it', async () => {
        const s = await api('POST', '/v1/sessions', { template: `${template}-short` });
        assert.equal(s.status, 201, JSON.stringify(s.body));
        const events = readEvents(`/v1/sessions/${s.body.id}/events`, (e) => e === 'stopped');
        // Held by the proxy through the cold start; it opens a backend connection the reaper must close.
        assert.equal((await fetch(`${base}${s.body.url}info`)).status, 200);
        const got = await events;
        assert.ok(got.some((e) => e.event === 'warning' && e.data.kind === 'idle'), JSON.stringify(got.map((e) => e.event)));
        assert.equal(got.at(-1)!.data.stopReason, 'idle');
        assert.equal((await fetch(`${base}${s.body.url}`)).status, 410);
      });
    });
  }

  test('bad session requests: 400s naming the field, 404 for unknown ids and tokens', async () => {
    for (const [body, field] of [
      [{}, /template/],
      [{ template: 'nope' }, /template/],
      [{ template: 'host' }, /template.*cannot serve sessions/],
      [{ template: 'demo-web', idleTimeoutS: 0 }, /idleTimeoutS/],
      [{ template: 'demo-web', maxDurationS: 999999 }, /maxDurationS.*at most/],
      [{ template: 'demo-web', env: { A: 1 } }, /env/],
      [{ template: 'demo-web', env: { KILN_BASE_URL: 'x' } }, /env\.KILN_BASE_URL/],
      [{ template: 'demo-web', colour: 1 }, /colour/],
      // Metadata is stored and repeated in every listing and event: each value is capped.
      [{ template: 'demo-web', metadata: { notes: 'x'.repeat(1025) } }, /metadata\.notes: at most 1024 characters/],
      [{ template: 'demo-web', metadata: { ['k'.repeat(129)]: 'v' } }, /metadata: key .* longer than 128/],
      [{ template: 'demo-web', metadata: { '': 'v' } }, /metadata: a key is empty/],
    ] as const) {
      const r = await api('POST', '/v1/sessions', body);
      assert.equal(r.status, 400, JSON.stringify(body));
      assert.match(r.body.error.message, field);
    }
    assert.equal((await api('GET', '/v1/sessions/00000000-0000-0000-0000-000000000000')).status, 404);
    assert.equal((await api('DELETE', '/v1/sessions/x')).status, 404);
    assert.equal((await fetch(`${base}/s/AAAAAAAAAAAAAAAAAAAAAA/`)).status, 404);
    assert.equal((await fetch(`${base}/s/`)).status, 404);
  });

  test('deep links: each click a fresh running instance, never the same one', async () => {
    await poolReady('demo-web', 2);
    const a = await fetch(`${base}/open/demo-web`, { redirect: 'manual' });
    const b = await fetch(`${base}/open/demo-web`, { redirect: 'manual' });
    assert.equal(a.status, 302);
    assert.equal(b.status, 302);
    const [la, lb] = [a.headers.get('location')!, b.headers.get('location')!];
    assert.match(la, /^\/s\/[A-Za-z0-9_-]{22}\/$/);
    assert.notEqual(la, lb);
    const unknown = await fetch(`${base}/open/no-such-<template>`, { redirect: 'manual' });
    assert.equal(unknown.status, 404);
    assert.match(unknown.headers.get('content-type') ?? '', /text\/html/);
    assert.match(await unknown.text(), /no template named no-such-&#60;template&#62;/);
    const pa = await (await fetch(`${base}${la}info`)).json();
    const pb = await (await fetch(`${base}${lb}info`)).json();
    assert.notEqual(`${pa.started}${pa.pid}`, 'x');
    assert.ok(pa && pb);
    assert.equal((await fetch(`${base}/open/nope`, { redirect: 'manual' })).status, 404, 'an unknown template is a 404 page');
    for (const s of t.kiln.sessions.list()) if (s.status === 'ready') await api('DELETE', `/v1/sessions/${s.id}`);
  });

  test('pools refill after claims, a claimed sandbox is never handed out again, and cold starts when empty', async () => {
    await poolReady('demo-web', 2);
    const tokens = new Set<string>();
    const ids: string[] = [];
    for (let i = 0; i < 4; i++) {
      const s = await api('POST', '/v1/sessions', { template: 'demo-web' });
      assert.equal(s.status, 201);
      tokens.add(s.body.token);
      ids.push(s.body.id);
    }
    assert.equal(tokens.size, 4);
    await poolReady('demo-web', 2);
    const view = (await api('GET', '/v1/pools')).body.find((p: { template: string }) => p.template === 'demo-web');
    assert.equal(view.ready, 2);
    assert.ok(view.claimed >= 4);
    const cold = await api('POST', '/v1/sessions', { template: 'demo-web', env: { GREETING: 'hi' } });
    assert.equal(cold.body.fromPool, false);
    assert.equal(cold.body.status, 'starting');
    // A browser arriving while it starts waits instead of getting an error.
    assert.equal((await fetch(`${base}${cold.body.url}`)).status, 200);
    // The request's env reaches the server and every exec beside it.
    const { pid } = await (await fetch(`${base}${cold.body.url}info`)).json();
    const e = await api('POST', `/v1/sessions/${cold.body.id}/exec`, { command: ['sh', '-c', 'tr "\\0" "\\n" < /proc/$0/environ | grep ^GREETING=; printenv GREETING KILN_PORT', String(pid)] });
    assert.equal(e.body.stdout, 'GREETING=hi\nhi\n8080\n', JSON.stringify(e.body));
    for (const id of [...ids, cold.body.id]) await api('DELETE', `/v1/sessions/${id}`);
    const metrics = await (await fetch(`${base}/metrics`)).text();
    // Every status has a series, 0 when it has no sessions (an alert on ready == 0 must be able to fire).
    for (const status of ['starting', 'ready', 'stopping', 'stopped', 'failed']) assert.match(metrics, new RegExp(`kiln_sessions\\{status="${status}"\\} \\d+`), status);
    assert.match(metrics, /kiln_pool_sandboxes\{template="demo-web",state="ready"\} \d+/);
    assert.match(metrics, /kiln_session_claim_seconds_count\{template="demo-web",from_pool="true"\} [1-9]/);
    assert.match(metrics, /kiln_session_claim_seconds_count\{template="demo-web",from_pool="false"\} [1-9]/);
    assert.match(metrics, /kiln_proxy_requests_total [1-9]/);
    assert.match(metrics, /kiln_budget_cpu_used [\d.]+/);
  });

  test('idle sessions end after a warning; open WebSockets keep them alive; none outlives its max duration', async () => {
    const s = await api('POST', '/v1/sessions', { template: 'short-web' });
    const events = readEvents(`/v1/sessions/${s.body.id}/events`, (e) => e === 'stopped');
    const got = await events;
    const kinds = got.map((e) => e.event);
    assert.ok(kinds.includes('warning'), JSON.stringify(kinds));
    assert.equal(got.find((e) => e.event === 'warning')!.data.kind, 'idle');
    assert.equal(got.at(-1)!.data.stopReason, 'idle');
    assert.equal((await api('GET', `/v1/sessions/${s.body.id}`)).body.status, 'stopped');

    // An open WebSocket is activity: the session outlives idleTimeoutS while it is open.
    const kept = await readySession('short-web');
    const ws = new WebSocket(`${base.replace('http', 'ws')}${kept.url}ws`);
    await new Promise((ok) => ws.once('open', ok));
    await sleep(3500);
    assert.equal((await api('GET', `/v1/sessions/${kept.id}`)).body.status, 'ready');
    ws.close();
    await api('DELETE', `/v1/sessions/${kept.id}`);

    const brief = await api('POST', '/v1/sessions', { template: 'brief-web' });
    const briefEvents = await readEvents(`/v1/sessions/${brief.body.id}/events`, (e) => e === 'stopped');
    assert.ok(briefEvents.some((e) => e.event === 'warning' && e.data.kind === 'max_duration'), JSON.stringify(briefEvents.map((e) => e.event)));
    assert.equal(briefEvents.at(-1)!.data.stopReason, 'max_duration');
  });

  test('the store gets a session\'s last activity at the sweep after it moved, and no write while it is idle', async () => {
    const s = await readySession('demo-web');
    const db = t.kiln.db;
    // A trigger on kiln's own (single) SQLite connection counts the writes of the column.
    await sql`CREATE TEMP TABLE IF NOT EXISTS activity_writes (id TEXT)`.execute(db);
    await sql`CREATE TEMP TRIGGER IF NOT EXISTS count_activity_writes AFTER UPDATE OF last_activity_at ON sessions BEGIN INSERT INTO activity_writes VALUES (new.id); END`.execute(db);
    const writes = async () => (await sql<{ n: number }>`SELECT count(*) AS n FROM activity_writes WHERE id = ${s.id}`.execute(db)).rows[0]!.n;
    await sleep(600); // a sweep (every 0.2 s here) stores the claim's activity
    const settled = await writes();
    await sleep(1200); // six sweeps, no request
    assert.equal(await writes(), settled, 'an idle session was written again');

    assert.equal((await fetch(`${base}${s.url}info`)).status, 200);
    await eventually(async () => (await writes()) > settled, 'a proxied request never reached the store');
    const row = await db.selectFrom('sessions').select('last_activity_at').where('id', '=', s.id).executeTakeFirstOrThrow();
    assert.equal(row.last_activity_at, (await api('GET', `/v1/sessions/${s.id}`)).body.lastActivityAt);
    await api('DELETE', `/v1/sessions/${s.id}`);
  });

  test('a sweep whose write the store refuses does not end kiln; the next one stores the activity', async () => {
    const s = await readySession('demo-web');
    const db = t.kiln.db;
    const stored = async () => (await db.selectFrom('sessions').select('last_activity_at').where('id', '=', s.id).executeTakeFirstOrThrow()).last_activity_at;
    await sql`CREATE TEMP TRIGGER refuse_activity BEFORE UPDATE OF last_activity_at ON sessions WHEN new.id = ${sql.lit(s.id)} BEGIN SELECT RAISE(ABORT, 'refused by the test'); END`.execute(db);
    try {
      assert.equal((await fetch(`${base}${s.url}info`)).status, 200);
      await sleep(600); // three sweeps fail to write it
      assert.notEqual(await stored(), (await api('GET', `/v1/sessions/${s.id}`)).body.lastActivityAt);
    } finally {
      await sql`DROP TRIGGER refuse_activity`.execute(db);
    }
    const view = (await api('GET', `/v1/sessions/${s.id}`)).body;
    assert.equal(view.status, 'ready');
    await eventually(async () => (await stored()) === view.lastActivityAt, 'the activity never reached the store after the refusals');
    await api('DELETE', `/v1/sessions/${s.id}`);
  });

  test('50 concurrent creates against a pool of 5: each succeeds or gets 503, none hangs', async () => {
    const c = sessionConfig();
    c.templates['demo-web'] = { ...c.templates['demo-web']!, pool: { min: 5, max: 10 } };
    c.templates['demo-docker'] = { ...c.templates['demo-docker']!, pool: { min: 0, max: 10 } };
    c.templates['demo-gvisor'] = { ...c.templates['demo-gvisor']!, pool: { min: 0, max: 10 } };
    c.budget = { cpuTotal: 64, memoryTotalMb: 64 * 1024 };
    const k = await startTestKiln(c);
    try {
      const url = await k.app.listen({ port: 0, host: '127.0.0.1' });
      for (let i = 0; i < 600 && k.kiln.sessions.poolViews().find((p) => p.template === 'demo-web')!.ready < 5; i++) await new Promise((r) => setTimeout(r, 50));
      const answers = await Promise.all(
        Array.from({ length: 50 }, () =>
          fetch(`${url}/v1/sessions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"template":"demo-web"}', signal: AbortSignal.timeout(60000) }).then(async (r) => ({ status: r.status, body: await r.json(), retry: r.headers.get('retry-after') })),
        ),
      );
      const ok = answers.filter((a) => a.status === 201);
      const busy = answers.filter((a) => a.status === 503);
      assert.equal(ok.length + busy.length, 50, JSON.stringify(answers.filter((a) => a.status !== 201 && a.status !== 503)));
      assert.ok(ok.length >= 5 && ok.length <= 10, `${ok.length} created`);
      assert.ok(busy.every((b) => b.retry && b.body.error.code === 'no_capacity'));
      assert.equal(new Set(ok.map((a) => a.body.token)).size, ok.length);
      // Every session handed out is really served.
      const statuses = await Promise.all(ok.map((a) => fetch(`${url}${a.body.url}info`).then((r) => r.status)));
      assert.ok(statuses.every((s) => s === 200), JSON.stringify(statuses));
    } finally {
      await k.close();
    }
  });

  test('budget exhaustion answers 503 with Retry-After, never an overcommitted machine', async () => {
    const c = sessionConfig();
    c.budget = { cpuTotal: 0.5, memoryTotalMb: 64 * 1024 };
    c.templates['demo-web'] = { ...c.templates['demo-web']!, pool: { min: 0, max: 10 } };
    c.templates['demo-docker'] = { ...c.templates['demo-docker']!, pool: { min: 0, max: 10 } };
    c.templates['demo-gvisor'] = { ...c.templates['demo-gvisor']!, pool: { min: 0, max: 10 } };
    const k = await startTestKiln(c);
    try {
      const url = await k.app.listen({ port: 0, host: '127.0.0.1' });
      const post = () => fetch(`${url}/v1/sessions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"template":"demo-web"}' });
      assert.equal((await post()).status, 201);
      assert.equal((await post()).status, 201);
      const third = await post();
      assert.equal(third.status, 503);
      assert.ok(third.headers.get('retry-after'));
      assert.match((await third.json()).error.message, /no room on this node/);
      assert.equal(k.kiln.budget.snapshot().cpuUsed, 0.5);
      const busy = await fetch(`${url}/open/demo-web`, { redirect: 'manual' });
      assert.equal(busy.status, 503);
      assert.match(await busy.text(), /All instances are busy/);
      const head = await fetch(`${url}/open/demo-web`, { method: 'HEAD', redirect: 'manual' });
      assert.deepEqual([head.status, head.headers.get('retry-after')], [503, '10'], 'a link checker hears what a click would get');
    } finally {
      await k.close();
    }
  });
});
