/**
 * Sessions on hosts of their own (`sessions.origin`): real sandboxes running
 * the demo server (process runtime; one test on docker and gvisor too), the
 * real proxy on loopback. Each
 * request goes to 127.0.0.1 with the Host a browser would send for
 * `<session id>.localhost` (browsers resolve *.localhost to loopback).
 */
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import WebSocket from 'ws';
import { freePort, startTestKiln, testConfig, type TestKiln } from '../helpers.js';

let t: TestKiln;
let port: number;

interface Answer {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/** One request to kiln on loopback, as if to `host`. */
function request(host: string, path: string, opts: { method?: string; headers?: Record<string, string>; body?: string } = {}): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path, method: opts.method ?? 'GET', headers: { host, ...opts.headers }, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body }));
    });
    req.on('error', reject);
    req.end(opts.body);
  });
}

const main = () => `127.0.0.1:${port}`;
const hostOf = (id: string) => `${id}.localhost:${port}`;

/** A new session, once it is ready. */
async function createSession(template = 'demo-web'): Promise<{ id: string; url: string; token: string }> {
  const res = await request(main(), '/v1/sessions', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ template }) });
  assert.equal(res.status, 201, res.body);
  const s = JSON.parse(res.body) as { id: string; url: string; token: string; status: string };
  let status = s.status;
  for (let i = 0; i < 200 && status !== 'ready'; i++) {
    await new Promise((r) => setTimeout(r, 50));
    status = JSON.parse((await request(main(), `/v1/sessions/${s.id}`)).body).status;
  }
  assert.equal(status, 'ready', `session ${s.id} of ${template}`);
  return s;
}

/** The cookie a browser is handed on its session's host (the token URL, navigated to). */
async function enter(s: { id: string; token: string }, path = '/'): Promise<{ cookie: string; answer: Answer }> {
  const answer = await request(hostOf(s.id), `/s/${s.token}${path}`, { headers: { 'sec-fetch-mode': 'navigate' } });
  assert.equal(answer.status, 302, answer.body);
  const set = answer.headers['set-cookie']![0]!;
  return { cookie: set.split(';')[0]!, answer };
}

/** A request written as is (`head`), and all the connection answers until kiln closes it. */
function rawExchange(head: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const c = net.connect(port, '127.0.0.1', () => c.write(head));
    let text = '';
    c.setEncoding('latin1');
    c.on('data', (d: string) => (text += d));
    c.on('end', () => resolve(text));
    c.on('error', reject);
  });
}

/** What comes back over `ws` for `text` (then closed). */
async function echoed(ws: WebSocket, text: string): Promise<string> {
  const echo = await new Promise<string>((resolve, reject) => {
    ws.once('open', () => ws.send(text));
    ws.once('message', (m) => resolve(String(m)));
    ws.once('error', reject);
  });
  ws.close();
  return echo;
}

describe('sessions on origins of their own', () => {
  before(async () => {
    port = await freePort();
    const c = testConfig({ budget: { cpuTotal: 64, memoryTotalMb: 64 * 1024 }, sessions: { origin: `http://*.localhost:${port}` } });
    c.templates['demo-web'] = { ...c.templates['demo-web']!, public: true, pool: { min: 2, max: 30 }, limits: { cpus: 0.25, memoryMb: 128, pids: 64 } };
    // A server that answers with the request's fields, as JSON.
    const echoHeaders = 'import http.server,json,os\nclass H(http.server.BaseHTTPRequestHandler):\n  def do_GET(self):\n    b=json.dumps({k.lower():v for k,v in self.headers.items()}).encode()\n    self.send_response(200);self.send_header("Content-Length",str(len(b)));self.end_headers();self.wfile.write(b)\n  def log_message(self,*a):pass\nhttp.server.HTTPServer(("127.0.0.1",int(os.environ["KILN_PORT"])),H).serve_forever()';
    c.templates['headers-web'] = { ...c.templates['demo-web']!, command: ['python3', '-c', echoHeaders], pool: { min: 0, max: 2 } };
    c.templates['base-web'] = { ...c.templates['demo-web']!, command: ['sh', '-c', 'printf %s "$KILN_BASE_URL" > base.txt; exec python3 /usr/share/kiln/demo_server.py'], pool: { min: 0, max: 2 } };
    t = await startTestKiln(c);
    await t.app.listen({ port, host: '127.0.0.1' });
    for (let i = 0; i < 600 && t.kiln.sessions.poolViews().find((p) => p.template === 'demo-web')!.ready < 2; i++) await new Promise((r) => setTimeout(r, 50));
  });
  after(async () => {
    await t.close();
  });

  test('a session URL is on its own host; the token there works for any client, the server sees paths from /', async () => {
    const s = await createSession();
    assert.equal(s.url, `http://${s.id}.localhost:${port}/s/${s.token}/`);
    // Fast path (plain GET), and node's path (HTTP/1.0 is left to it): the prefix is taken off either way.
    const fast = await request(hostOf(s.id), `/s/${s.token}/info?x=1`);
    assert.equal(fast.status, 200, fast.body);
    assert.equal(JSON.parse(fast.body).path, '/info?x=1');
    const post = await request(hostOf(s.id), `/s/${s.token}/echo`, { method: 'POST', body: 'hello body' });
    assert.equal(post.body, 'hello body');
    // A server is started with its base URL at the root (this one writes down what it got).
    const b = await createSession('base-web');
    const base = await request(main(), `/v1/sessions/${b.id}/files/base.txt`);
    assert.equal(base.status, 200, base.body);
    assert.equal(base.body, '/');
    // Without the slash after the token: moved to it, on the same host.
    const bare = await request(hostOf(s.id), `/s/${s.token}?q`);
    assert.equal(bare.status, 308);
    assert.equal(bare.headers.location, `/s/${s.token}/?q`);
  });

  // On each runtime: the proxy is the same, the links into sandboxes are not (gVisor's go through exec relays).
  for (const template of ['demo-web', 'demo-docker', 'demo-gvisor']) test(`${template}: a browser is moved off the token URL with a cookie of that host alone, and then uses plain paths`, async () => {
    const s = await createSession(template);
    const { cookie, answer } = await enter(s, '/info?y=2');
    assert.equal(answer.headers.location, '/info?y=2');
    const set = answer.headers['set-cookie']![0]!;
    assert.match(set, new RegExp(`^kiln_s=${s.token}; Path=/; HttpOnly; SameSite=Lax$`), 'host-only: no Domain, so no other host gets it');
    assert.equal(answer.headers['referrer-policy'], 'no-referrer');
    const page = await request(hostOf(s.id), '/info?y=2', { headers: { cookie } });
    assert.equal(page.status, 200, page.body);
    assert.equal(JSON.parse(page.body).path, '/info?y=2');
    // Every path of the host is the session's: /v1/... is the app's page, not kiln's API.
    const api = await request(hostOf(s.id), '/v1/sessions', { headers: { cookie } });
    assert.equal(api.status, 200);
    assert.match(api.headers['content-type'] ?? '', /text\/html/);
    assert.match(api.body, /Kiln demo session/);
    // A WebSocket on the host, with the cookie.
    assert.equal(await echoed(new WebSocket(`ws://127.0.0.1:${port}/ws`, { headers: { host: hostOf(s.id), cookie } }), 'over its own origin'), 'over its own origin');
  });

  test('nothing of a session is reached without its token: no cookie, a wrong one, another session’s token or host', async () => {
    const a = await createSession();
    const b = await createSession();
    const { cookie: cookieA } = await enter(a);
    for (const [host, path, headers] of [
      [hostOf(a.id), '/info', {}],
      [hostOf(a.id), '/info', { cookie: `kiln_s=${b.token}` }],
      [hostOf(a.id), `/s/${b.token}/info`, {}],
      [hostOf(b.id), '/info', { cookie: cookieA }],
      [hostOf('00000000-0000-4000-8000-000000000000'), `/s/${a.token}/info`, {}],
    ] as const) {
      const res = await request(host, path, { headers });
      assert.equal(res.status, 404, `${host} ${path} ${JSON.stringify(headers)}`);
      assert.match(res.body, /No such session/);
    }
    // A WebSocket without the cookie gets nothing either.
    const ws = new WebSocket(`ws://127.0.0.1:${port}/ws`, { headers: { host: hostOf(a.id) } });
    const refused = await new Promise<number>((resolve) => ws.once('unexpected-response', (_req, res) => resolve(res.statusCode!)));
    assert.equal(refused, 404);
  });

  test('the cookie alone is refused to other sessions’ pages (same site), never to the session’s own pages or a link followed', async () => {
    const a = await createSession();
    const b = await createSession();
    const { cookie } = await enter(a);
    const own = `http://${hostOf(a.id)}`;
    const other = `http://${hostOf(b.id)}`;
    const cases: [string, string, Record<string, string>, number][] = [
      ['GET', '/info', { origin: own, 'sec-fetch-site': 'same-origin', 'sec-fetch-mode': 'cors' }, 200],
      ['POST', '/echo', { origin: own, 'sec-fetch-site': 'same-origin', 'sec-fetch-mode': 'cors' }, 200],
      ['GET', '/info', { 'sec-fetch-site': 'same-site', 'sec-fetch-mode': 'navigate' }, 200],
      ['GET', '/info', { 'sec-fetch-site': 'none', 'sec-fetch-mode': 'navigate' }, 200],
      ['GET', '/info', { origin: other, 'sec-fetch-site': 'same-site', 'sec-fetch-mode': 'cors' }, 403],
      ['POST', '/echo', { origin: other, 'sec-fetch-site': 'same-site', 'sec-fetch-mode': 'navigate' }, 403],
      ['POST', '/echo', { origin: other }, 403],
      ['GET', '/info', { origin: 'null' }, 403],
      ['GET', '/info', { 'sec-fetch-site': 'cross-site', 'sec-fetch-mode': 'no-cors' }, 403],
    ];
    for (const [method, path, headers, status] of cases) {
      const res = await request(hostOf(a.id), path, { method, headers: { cookie, ...headers }, body: method === 'POST' ? 'x' : undefined });
      assert.equal(res.status, status, `${method} ${path} ${JSON.stringify(headers)}: ${res.body.slice(0, 200)}`);
      if (status === 403) assert.match(res.body, /only from its own pages/);
    }
    // A WebSocket (which CORS does not cover) from another session's page: refused; from its own: echoes.
    const refused = new WebSocket(`ws://127.0.0.1:${port}/ws`, { headers: { host: hostOf(a.id), cookie }, origin: other });
    assert.equal(await new Promise<number>((resolve) => refused.once('unexpected-response', (_req, res) => resolve(res.statusCode!))), 403);
    assert.equal(await echoed(new WebSocket(`ws://127.0.0.1:${port}/ws`, { headers: { host: hostOf(a.id), cookie }, origin: own }), 'from its own page'), 'from its own page');
    // A cookie of the same name set for the parent domain by another session's server, sent first, shuts nobody out.
    const shadowed = await request(hostOf(a.id), '/info', { headers: { cookie: `kiln_s=${b.token}; kiln_s=junk; ${cookie}` } });
    assert.equal(shadowed.status, 200);
  });

  test('the move off the token URL stays on the session’s host, whatever the path', async () => {
    const s = await createSession();
    for (const [path, location] of [['//evil.example/x', '/evil.example/x'], ['/\\evil.example/x', '/evil.example/x'], ['/a//b', '/a//b']]) {
      const { answer } = await enter(s, path);
      assert.equal(answer.headers.location, location, path);
    }
  });

  test('node’s path (HTTP/1.0) on a session host: the cookie works, the prefix is taken off the token URL', async () => {
    const s = await createSession();
    const { cookie } = await enter(s);
    const raw = (path: string, headers: string) => rawExchange(`GET ${path} HTTP/1.0\r\nHost: ${hostOf(s.id)}\r\n${headers}\r\n`);
    const byCookie = await raw('/info?n=1', `Cookie: ${cookie}\r\n`);
    assert.match(byCookie, /^HTTP\/1\.[01] 200 /);
    assert.match(byCookie, /"path": "\/info\?n=1"/);
    const byToken = await raw(`/s/${s.token}/info?n=2`, '');
    assert.match(byToken, /"path": "\/info\?n=2"/);
    assert.match(await raw('/info', ''), /^HTTP\/1\.[01] 404 /);
  });

  test('X-Forwarded-Prefix on a session host: none for plain paths, the token prefix taken off, never the client’s; on either path', async () => {
    const s = await createSession('headers-web');
    const { cookie } = await enter(s);
    for (const [version, path, prefix] of [['1.1', '/h', undefined], ['1.0', '/h', undefined], ['1.1', `/s/${s.token}/h`, `/s/${s.token}`], ['1.0', `/s/${s.token}/h`, `/s/${s.token}`]] as const) {
      const text = await rawExchange(`GET ${path} HTTP/${version}\r\nHost: ${hostOf(s.id)}\r\nCookie: ${cookie}\r\nX-Forwarded-Prefix: /evil\r\nConnection: close\r\n\r\n`);
      const headers = JSON.parse(text.slice(text.indexOf('\r\n\r\n') + 4)) as Record<string, string>;
      assert.equal(headers['x-forwarded-prefix'], prefix, `HTTP/${version} ${path}: ${JSON.stringify(headers)}`);
      assert.equal(headers['x-forwarded-host'], hostOf(s.id));
    }
  });

  test('no session page is served on kiln’s origin: token URLs there move to the session’s host; the API stays', async () => {
    const s = await createSession();
    for (const method of ['GET', 'POST']) {
      const res = await request(main(), `/s/${s.token}/info`, { method });
      assert.equal(res.status, 307, `${method}: ${res.body}`);
      assert.equal(res.headers.location, `http://${s.id}.localhost:${port}/s/${s.token}/info`);
    }
    const ws = new WebSocket(`ws://${main()}/s/${s.token}/ws`);
    const moved = await new Promise<http.IncomingMessage>((resolve) => ws.once('unexpected-response', (_req, res) => resolve(res)));
    assert.equal(moved.statusCode, 307);
    assert.equal(moved.headers.location, `http://${s.id}.localhost:${port}/s/${s.token}/ws`);
    // By session id and cookie (the shared-origin form): nothing.
    assert.equal((await request(main(), `/s/${s.id}/info`, { headers: { cookie: `kiln_s=${s.token}` } })).status, 404);
    // Hosts under the suffix that are no session id are kiln's own (whose loopback check, auth being off, wants plain localhost).
    const www = await request(`www.localhost:${port}`, '/healthz');
    assert.equal(www.status, 403);
    assert.equal(JSON.parse(www.body).error.code, 'forbidden_host');
    assert.equal((await request(main(), '/healthz')).status, 200);
  });

  test('a deep link lands on the session’s own host', async () => {
    const res = await request(main(), '/open/demo-web');
    assert.equal(res.status, 302, res.body);
    const m = new RegExp(`^http://([0-9a-f-]{36})\\.localhost:${port}/s/([A-Za-z0-9_-]+)/$`).exec(res.headers.location ?? '');
    assert.ok(m, res.headers.location);
    const { answer } = await enter({ id: m[1]!, token: m[2]! });
    assert.equal(answer.headers.location, '/');
  });

  test('the CLI prints the session host URL as the server gave it', async () => {
    const CLI = ['--import', import.meta.resolve('tsx'), join(import.meta.dirname, '..', '..', 'src', 'cli', 'dev.ts')];
    // Spawned, not spawnSync: the server answering it runs in this process.
    const cli = spawn(process.execPath, [...CLI, 'session', 'create', 'demo-web'], { env: { ...process.env, KILN_URL: `http://127.0.0.1:${port}` } });
    let stdout = '';
    let stderr = '';
    cli.stdout.on('data', (c: Buffer) => (stdout += c));
    cli.stderr.on('data', (c: Buffer) => (stderr += c));
    const code = await new Promise((ok) => cli.once('close', ok));
    assert.equal(code, 0, stderr);
    assert.match(stdout, new RegExp(`^[0-9a-f-]{36} ready http://[0-9a-f-]{36}\\.localhost:${port}/s/[A-Za-z0-9_-]+/\\n$`));
  });
});
