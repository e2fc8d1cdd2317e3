/**
 * Property tests of the HTTP API: arbitrary bodies, parameters, paths and
 * content types for every route, against a real kiln (process runtime, real
 * SQLite, a live session). No answer may be a 5xx, every error is our JSON
 * error shape, and no request may hang (an AbortSignal guards each one: a
 * hang detector, not a speed assertion). Then oversized and malformed JSON.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import fc from 'fast-check';
import { startTestKiln, testConfig, type TestKiln } from '../helpers.js';
import { LOCAL } from '../../src/auth/principal.js';

/** A request taking this long is a hang, whatever the machine's load. */
const HANG_MS = 30_000;
const BODY_LIMIT = 1 << 20;

interface Reply {
  status: number;
  type: string;
  text: string;
}

let t: TestKiln;
let port: number;
let session: string;
let requests = 0;

/** Send exactly this method, path and body (the path is not normalised, as fetch would). */
function send(method: string, path: string, body?: string | Buffer, contentType?: string): Promise<Reply> {
  requests++;
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = {};
    if (contentType !== undefined) headers['content-type'] = contentType;
    // Framed explicitly: node sends a DELETE or OPTIONS body unframed, and the server would read it as the next request.
    if (body !== undefined) headers['content-length'] = String(Buffer.byteLength(body));
    const req = http.request({ host: '127.0.0.1', port, method, path, headers, signal: AbortSignal.timeout(HANG_MS) }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type'] ?? ''), text: Buffer.concat(chunks).toString() }));
      res.on('error', reject);
    });
    req.on('error', (e) => reject(new Error(`${method} ${path.slice(0, 200)}: ${e.name === 'AbortError' ? `no answer in ${HANG_MS} ms (hang)` : e.message}`)));
    req.end(body);
  });
}

/** No 5xx; every JSON error names a snake_case code. */
function sane(r: Reply, what: string): void {
  assert.ok(r.status < 500, `${what}: ${r.status} ${r.text.slice(0, 300)}`);
  if (r.status >= 400 && r.type.startsWith('application/json')) {
    const body = JSON.parse(r.text) as { error?: { code?: unknown; message?: unknown } };
    assert.match(String(body.error?.code), /^[a-z_]+$/, `${what}: not our error shape: ${r.text.slice(0, 300)}`);
    assert.equal(typeof body.error?.message, 'string');
  }
}

/** Any string as one URL path segment: bytes outside printable ASCII (and ?, #, %) percent-encoded, / kept. */
function urlSegment(s: string): string {
  let out = '';
  for (const ch of s) {
    if (/^[\x21-\x7e]$/.test(ch) && !'?#%'.includes(ch)) out += ch;
    else out += [...Buffer.from(ch)].map((b) => `%${b.toString(16).padStart(2, '0').toUpperCase()}`).join('');
  }
  return out;
}

const nasty = fc.oneof(
  fc.string({ unit: 'binary', maxLength: 40 }),
  fc.constantFrom('', '..', '.', '%2e%2e', '%00', '\0', '/', '\\', '~', '$(id)', "'; DROP TABLE runs;--", '__proto__', 'constructor', 'x'.repeat(2000)),
);
const anyJson = fc.jsonValue({ maxDepth: 3 });
const maybe = <T>(arb: fc.Arbitrary<T>) => fc.oneof(arb, anyJson);

const runBody = fc.oneof(
  anyJson,
  fc.record(
    {
      language: maybe(fc.oneof(fc.constantFrom('python', 'bash', 'c', 'nope'), nasty)),
      files: maybe(
        fc.array(
          fc.record(
            {
              name: maybe(fc.oneof(fc.constantFrom('main.py', 'a.sh', '../x', '/etc/passwd', 'a/b', 'a', 'a/../b'), nasty)),
              content: maybe(fc.string({ maxLength: 60 })),
              encoding: maybe(fc.constantFrom('utf8', 'base64', 'hex')),
            },
            { requiredKeys: [] },
          ),
          { maxLength: 3 },
        ),
      ),
      stdin: maybe(fc.string({ maxLength: 40 })),
      args: maybe(fc.array(nasty, { maxLength: 4 })),
      limits: maybe(
        fc.record(
          {
            wallMs: fc.integer({ min: -5, max: 5000 }),
            cpuMs: fc.integer({ min: -5, max: 5000 }),
            memoryMb: fc.integer({ min: -5, max: 8192 }),
            pids: fc.integer({ min: -5, max: 1000 }),
            outputBytes: fc.integer({ min: -5, max: 1e9 }),
          },
          { requiredKeys: [] },
        ),
      ),
      template: maybe(fc.oneof(fc.constantFrom('host', 'fz-web', 'py-docker'), nasty)),
      wait: maybe(fc.boolean()),
      extra: anyJson,
    },
    { requiredKeys: [] },
  ),
);

const sessionBody = fc.oneof(
  anyJson,
  fc.record(
    {
      template: maybe(fc.oneof(fc.constantFrom('fz-web', 'host', 'nope'), nasty)),
      env: maybe(fc.dictionary(nasty, fc.string({ maxLength: 20 }), { maxKeys: 3 })),
      idleTimeoutS: maybe(fc.integer({ min: -5, max: 100000 })),
      maxDurationS: maybe(fc.integer({ min: -5, max: 100000 })),
      metadata: maybe(fc.dictionary(nasty, nasty, { maxKeys: 3 })),
      extra: anyJson,
    },
    { requiredKeys: [] },
  ),
);

const execBody = fc.oneof(
  anyJson,
  fc.record(
    {
      command: maybe(fc.array(fc.oneof(fc.constantFrom('echo', 'true', 'ls', 'cat', 'id', '-c', '/'), nasty), { maxLength: 4 })),
      stdin: maybe(fc.string({ maxLength: 40 })),
      timeoutMs: maybe(fc.integer({ min: -5, max: 5000 })),
      env: anyJson,
    },
    { requiredKeys: [] },
  ),
);

const contentType = fc.constantFrom('application/json', 'text/plain', 'application/x-www-form-urlencoded', 'application/octet-stream', 'multipart/form-data; boundary=x', 'application/json; charset=utf-16', 'garbage/<>');
const bodyText = fc.oneof(anyJson.map((v) => JSON.stringify(v)), fc.string({ unit: 'binary', maxLength: 200 }));
const RUNS = { numRuns: 150, endOnFailure: true } as const;

/** End every session a property created, so the pool has room for the next. */
async function endOtherSessions(): Promise<void> {
  for (const s of t.kiln.sessions.list()) if (s.id !== session && (s.status === 'ready' || s.status === 'starting')) await t.kiln.sessions.remove(s.id, LOCAL);
}

describe('HTTP fuzz: no 5xx, no hang, every error in our shape', () => {
  before(async () => {
    const c = testConfig({ budget: { cpuTotal: 16, memoryTotalMb: 16384 }, server: { bodyLimitBytes: BODY_LIMIT } });
    c.templates['fz-web'] = { ...c.templates['demo-web']!, pool: { min: 1, max: 4 }, limits: { cpus: 0.25, memoryMb: 128, pids: 64, diskMb: 16 } };
    t = await startTestKiln(c);
    await t.app.listen({ port: 0, host: '127.0.0.1' });
    port = (t.app.server.address() as { port: number }).port;
    const s = JSON.parse((await send('POST', '/v1/sessions', '{"template":"fz-web"}', 'application/json')).text);
    session = s.id;
    for (let i = 0; i < 600 && t.kiln.sessions.list().find((x) => x.id === session)?.status !== 'ready'; i++) await new Promise((r) => setTimeout(r, 50));
  });
  after(async () => {
    await t.close();
  });

  test('POST /v1/runs with arbitrary bodies', async () => {
    await fc.assert(
      fc.asyncProperty(runBody, async (body) => sane(await send('POST', '/v1/runs', JSON.stringify(body), 'application/json'), `POST /v1/runs ${JSON.stringify(body).slice(0, 200)}`)),
      RUNS,
    );
  });

  test('POST /v1/sessions with arbitrary bodies', async () => {
    await fc.assert(
      fc.asyncProperty(sessionBody, async (body) => {
        sane(await send('POST', '/v1/sessions', JSON.stringify(body), 'application/json'), `POST /v1/sessions ${JSON.stringify(body).slice(0, 200)}`);
        await endOtherSessions();
      }),
      { ...RUNS, numRuns: 80 },
    );
  });

  test('POST /v1/sessions/:id/exec with arbitrary bodies, on a live session and on random ids', async () => {
    await fc.assert(
      fc.asyncProperty(execBody, fc.oneof(fc.constant(session), nasty), async (body, id) => {
        sane(await send('POST', `/v1/sessions/${urlSegment(id)}/exec`, JSON.stringify(body), 'application/json'), `exec ${JSON.stringify(body).slice(0, 200)}`);
      }),
      RUNS,
    );
  });

  test('PUT and GET /v1/sessions/:id/files/* with arbitrary paths and bytes', async () => {
    const path = fc.oneof(nasty, fc.array(fc.oneof(nasty, fc.constantFrom('..', '.', 'a', '%2e%2e', '%2F', '%00', '')), { maxLength: 6 }).map((p) => p.join('/')));
    await fc.assert(
      fc.asyncProperty(fc.constantFrom('PUT', 'GET'), path, fc.uint8Array({ maxLength: 300 }), fc.oneof(fc.constant(session), nasty), async (method, p, bytes, id) => {
        const url = `/v1/sessions/${urlSegment(id)}/files/${urlSegment(p)}`;
        sane(await send(method, url, method === 'PUT' ? Buffer.from(bytes) : undefined), `${method} ${url.slice(0, 200)}`);
      }),
      RUNS,
    );
  });

  test('GET and DELETE by random id, and deep links to random templates', async () => {
    const route = fc.constantFrom('GET /v1/runs/', 'GET /v1/sessions/', 'DELETE /v1/sessions/', 'GET /v1/runs/$/events', 'GET /v1/sessions/$/events', 'GET /open/');
    await fc.assert(
      fc.asyncProperty(route, nasty, async (r, id) => {
        const [method, pattern] = r.split(' ') as [string, string];
        const url = pattern.includes('$') ? pattern.replace('$', urlSegment(id)) : pattern + urlSegment(id);
        sane(await send(method, url), `${method} ${url.slice(0, 200)}`);
      }),
      RUNS,
    );
  });

  test('read-only routes with random query strings', async () => {
    const route = fc.constantFrom('/v1/pools', '/v1/templates', '/v1/languages', '/v1/info', '/v1/sessions', '/healthz', '/readyz', '/metrics');
    await fc.assert(
      fc.asyncProperty(route, nasty, async (r, q) => sane(await send('GET', `${r}?${urlSegment(q)}`), `GET ${r}?${q.slice(0, 100)}`)),
      RUNS,
    );
  });

  test('any method on any path, with any content type and body', async () => {
    const method = fc.constantFrom('GET', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS');
    const prefix = fc.constantFrom('/v1/', '/v1/runs', '/v1/sessions/', `/v1/sessions/${session}/`, '/open/', '/s/', '/docs/', '/');
    await fc.assert(
      fc.asyncProperty(method, prefix, nasty, contentType, bodyText, async (m, pre, rest, type, body) => {
        const url = pre + urlSegment(rest);
        sane(await send(m, url, m === 'GET' ? undefined : body, type), `${m} ${url.slice(0, 200)} (${type})`);
        await endOtherSessions();
      }),
      { ...RUNS, numRuns: 200 },
    );
  });

  test('oversized bodies are 413 and malformed JSON is 400, on every JSON route', async () => {
    const big = JSON.stringify({ pad: 'x'.repeat(BODY_LIMIT + 10) });
    const malformed = ['{', '{"template":', '[1,2', '{"a":1}}', 'nul', '{"language":"python",}', '\u0000', '{"__proto__":'];
    // Too large goes in-process: over a socket the server answers 413 before reading, and the client's write fails.
    const inject = (url: string, payload: string | Buffer, method: 'POST' | 'PUT' = 'POST') =>
      t.app.inject({ method, url, payload, headers: { 'content-type': method === 'PUT' ? 'application/octet-stream' : 'application/json' } });
    for (const url of ['/v1/runs', '/v1/sessions', `/v1/sessions/${session}/exec`]) {
      const tooBig = await inject(url, big);
      assert.equal(tooBig.statusCode, 413, `${url}: ${tooBig.body.slice(0, 200)}`);
      assert.equal(tooBig.json().error.code, 'body_too_large');
      for (const text of malformed) {
        const r = await send('POST', url, text, 'application/json');
        assert.equal(r.status, 400, `${url} ${JSON.stringify(text)}: ${r.text.slice(0, 200)}`);
        assert.equal(JSON.parse(r.text).error.code, 'invalid_json');
      }
    }
    assert.equal((await inject(`/v1/sessions/${session}/files/big.bin`, Buffer.alloc(BODY_LIMIT + 10), 'PUT')).statusCode, 413);
    const badUrl = await send('GET', '/v1/sessions/x/files/%E0%A4%A');
    assert.equal(badUrl.status, 400);
    assert.match(JSON.parse(badUrl.text).error.code, /^[a-z_]+$/);
  });

  test('after the fuzz: healthy, and the session still serves exec and files', async (ctx) => {
    ctx.diagnostic(`http fuzz: ${requests} requests, none answered 5xx or hung`);
    assert.equal((await send('GET', '/healthz')).status, 200);
    assert.equal((await send('PUT', `/v1/sessions/${session}/files/after.txt`, 'after')).status, 204);
    assert.equal((await send('GET', `/v1/sessions/${session}/files/after.txt`)).text, 'after');
    const r = await send('POST', `/v1/sessions/${session}/exec`, JSON.stringify({ command: ['cat', 'after.txt'] }), 'application/json');
    assert.equal(JSON.parse(r.text).stdout, 'after');
  });
});
