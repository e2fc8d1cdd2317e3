/**
 * The proxy's fast path (src/proxy/fast.ts) byte by byte: raw client sockets
 * against kiln, and a scripted server in a real process-runtime sandbox that
 * answers each path with a chosen framing and echoes the exact bytes it got.
 */
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import fc from 'fast-check';
import { startTestKiln, testConfig, type TestKiln } from '../helpers.js';
import { readHead, BodyFrame, FramingError } from '../../src/proxy/http1.js';
import { nativeWires } from '../../src/proxy/wire.js';

/** A raw HTTP/1.1 server (stdlib Python): each path is one way of framing a response. */
const BACKEND = String.raw`
import socket, threading, time
def read_until(c, buf, sep):
    while sep not in buf:
        d = c.recv(65536)
        if not d: return None, buf
        buf += d
    i = buf.index(sep) + len(sep)
    return buf[:i], buf[i:]
def read_n(c, buf, n):
    while len(buf) < n:
        d = c.recv(65536)
        if not d: return None, buf
        buf += d
    return buf[:n], buf[n:]
def read_chunked(c, buf):
    raw = b''
    while True:
        line, buf = read_until(c, buf, b'\r\n')
        raw += line
        size = int(line.split(b';')[0], 16)
        if size == 0:
            while True:
                t, buf = read_until(c, buf, b'\r\n')
                raw += t
                if t == b'\r\n': return raw, buf
        data, buf = read_n(c, buf, size + 2)
        raw += data
IN_PARTS = {
    '/head-then-body': [b'HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n', 0.3, b'hello'],
    '/stream': [b'HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n', 0.3, b'5\r\nhello\r\n0\r\n\r\n'],
    '/split-head': [b'HTTP/1.1 200 OK\r\nX-Split: y', 0.1, b'es\r\nContent-Length: 2\r\n\r\nok'],
}
# Fixed answers, whatever the request.
CANNED = {
    '/chunked': b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 11\r\n\r\n',
    '/both-framings': b'HTTP/1.1 200 OK\r\nContent-Length: 99\r\nX-A: 1\r\nTransfer-Encoding: chunked\r\ncontent-length: 99\r\n\r\n5\r\nhello\r\n0\r\n\r\n',
    '/no-content': b'HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n',
    '/hop': b'HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Private\r\nX-Private: secret\r\nKeep-Alive: timeout=9\r\nReferrer-Policy: no-referrer\r\nContent-Length: 2\r\n\r\nok',
    '/sw': b'HTTP/1.1 200 OK\r\nService-Worker-Allowed: /\r\nContent-Length: 2\r\n\r\nok',
    '/bad': b'HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok',
}
served = {'big': 0}
def serve(c):
    buf = b''
    while True:
        head, buf = read_until(c, buf, b'\r\n\r\n')
        if head is None: return c.close()
        lines = head.decode('latin1').split('\r\n')
        method, path, _ = lines[0].split(' ')
        fields = {l.split(':', 1)[0].lower(): l.split(':', 1)[1].strip() for l in lines[1:] if ':' in l}
        if path == '/continue':
            c.sendall(b'HTTP/1.1 100 Continue\r\n\r\n')
        body = b''
        if fields.get('transfer-encoding') == 'chunked': body, buf = read_chunked(c, buf)
        elif 'content-length' in fields: body, buf = read_n(c, buf, int(fields['content-length']))
        got = head + body
        if path == '/close-delimited':
            c.sendall(b'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end')
            return c.close()
        if path in CANNED:
            c.sendall(CANNED[path])
            continue
        if method == 'HEAD':
            c.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n')
            continue
        if path in IN_PARTS:
            # A response sent in parts, with pauses between them (a number is seconds to wait).
            for part in IN_PARTS[path]:
                if isinstance(part, float): time.sleep(part)
                else: c.sendall(part)
            continue
        if path == '/head-then-close':
            c.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n')
            time.sleep(0.1)
            return c.close()
        if path == '/http10':
            # As python3 -m http.server answers: HTTP/1.0, then the connection ends.
            c.sendall(b'HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok')
            return c.close()
        if path == '/big':
            served['big'] += 1
            c.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: 61440\r\n\r\n' + b'x' * 61440)
            continue
        if path == '/huge':
            # 64 MiB: more than every socket buffer on the way holds.
            try:
                c.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: 67108864\r\n\r\n')
                for _ in range(1024): c.sendall(b'x' * 65536)
            except OSError:
                return c.close()
            continue
        if path == '/served':
            n = str(served['big']).encode()
            c.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n' % len(n) + n)
            continue
        if path == '/upgrade-refused':
            # Refuses to switch and keeps the connection, as many servers do.
            c.sendall(b'HTTP/1.1 403 Forbidden\r\nContent-Length: 4\r\n\r\nnope')
            continue
        if path == '/upgrade-echo':
            # Switches, then sends back the head it got, byte for byte.
            c.sendall(b'HTTP/1.1 101 Switching Protocols\r\nUpgrade: test\r\nConnection: Upgrade\r\n\r\n' + head)
            time.sleep(0.2)
            return c.close()
        if path == '/hang':
            time.sleep(60)
            continue
        c.sendall(b'HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n' % len(got) + got)
        if path == '/then-close':
            return c.close()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('127.0.0.1', 8080))
s.listen(64)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
`;

let t: TestKiln;
let port: number;

/** Send `bytes` on a new connection and read until the server closes it (or `until` matches). */
function exchange(bytes: string | Buffer[], until?: RegExp, timeoutMs = 10_000): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1');
    let got = '';
    const timer = setTimeout(() => (s.destroy(), reject(new Error(`no close within ${timeoutMs} ms; got ${JSON.stringify(got)}`))), timeoutMs);
    s.on('data', (d) => {
      got += d.toString('latin1');
      if (until?.test(got)) (clearTimeout(timer), s.destroy(), resolve(got));
    });
    s.on('close', () => (clearTimeout(timer), resolve(got)));
    s.on('error', reject);
    if (typeof bytes === 'string') s.write(bytes, 'latin1');
    else
      void (async () => {
        for (const b of bytes) {
          s.write(b);
          await new Promise((r) => setTimeout(r, 20));
        }
      })();
  });
}

async function until(what: string, ok: () => boolean, ms = 5000): Promise<void> {
  for (const t0 = Date.now(); !ok(); await new Promise((r) => setTimeout(r, 20))) {
    if (Date.now() - t0 > ms) throw new Error(`timed out waiting for ${what}`);
  }
}

/** The pieces a client reads, as they come, from one request on a new connection (until the server closes it). */
function pieces(request: string): Promise<string[]> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1');
    const got: string[] = [];
    const timer = setTimeout(() => (s.destroy(), reject(new Error(`no close within 10 s; got ${JSON.stringify(got)}`))), 10_000);
    s.on('data', (d) => got.push(d.toString('latin1')));
    s.on('close', () => (clearTimeout(timer), resolve(got)));
    s.on('error', reject);
    s.write(request, 'latin1');
  });
}

/** Bodies of the responses in `raw`, in order (Content-Length framed only). */
function bodies(raw: string): string[] {
  const out: string[] = [];
  let rest = Buffer.from(raw, 'latin1');
  while (rest.length) {
    const head = readHead(rest);
    if (typeof head !== 'object') break;
    const i = head.fields.findIndex((f, k) => k % 2 === 0 && f.toLowerCase() === 'content-length');
    const len = i < 0 ? 0 : Number(head.fields[i + 1]);
    out.push(rest.subarray(head.length, head.length + len).toString('latin1'));
    rest = rest.subarray(head.length + len);
  }
  return out;
}

/** A kiln serving on a free port (set in `port`) with one `raw` session, waited for until it is ready (or 10 s). */
async function startRawSession(poolMax: number): Promise<{ k: TestKiln; session: { id: string; token: string } }> {
  const c = testConfig({ budget: { cpuTotal: 64, memoryTotalMb: 64 * 1024 } });
  c.templates['raw'] = { runtime: 'process', command: ['python3', '-c', BACKEND], port: 8080, ready: { tcp: true }, idleTimeoutS: 600, maxDurationS: 3600, pool: { min: 0, max: poolMax }, limits: { cpus: 0.5, memoryMb: 128, pids: 64 } };
  const k = await startTestKiln(c);
  port = Number(new URL(await k.app.listen({ port: 0, host: '127.0.0.1' })).port);
  const res = await fetch(`http://127.0.0.1:${port}/v1/sessions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ template: 'raw' }) });
  const session = (await res.json()) as { id: string; token: string };
  for (let i = 0; i < 200 && k.kiln.sessions.byIdLookup(session.id)?.status !== 'ready'; i++) await new Promise((r) => setTimeout(r, 50));
  return { k, session };
}

// Native wires unless turned off (./fast-proxy-node-sockets.test.ts runs these tests again without them).
test(`the fast path's connections are ${process.env.KILN_NATIVE_WIRES === '0' ? "node's sockets" : 'native wires'}`, () => {
  assert.equal(nativeWires(), process.env.KILN_NATIVE_WIRES !== '0', 'scripts/setup builds the kiln-wire addon');
});

describe('proxy fast path', () => {
  let token = '';
  let prefix = '';
  let id = '';
  before(async () => {
    const { k, session: s } = await startRawSession(4);
    t = k;
    token = s.token;
    id = s.id;
    prefix = `/s/${token}`;
    assert.equal(t.kiln.sessions.byIdLookup(s.id)?.status, 'ready');
  });
  after(async () => {
    await t.close();
  });

  test('the server gets a rewritten head: its own path, the fields it keeps as they came, X-Forwarded-*, no hop-by-hop fields; the body as sent', async () => {
    const raw = await exchange(
      `POST ${prefix}/echo?q=1 HTTP/1.1\r\nHost: example.test:8080\r\nConnection: keep-alive, X-Private\r\nX-Private: 1\r\nKeep-Alive: timeout=5\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Host: evil\r\nProxy-Authorization: Basic x\r\nX-Value:  spaced  \r\nContent-Length: 5\r\n\r\nhello` +
        `GET ${prefix}/second HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n`,
    );
    const [first, second] = bodies(raw);
    assert.ok(first, raw);
    const lines = first.split('\r\n');
    assert.equal(lines[0], 'POST /echo?q=1 HTTP/1.1');
    assert.ok(lines.includes('Host: example.test:8080'));
    assert.ok(lines.includes('X-Forwarded-For: 10.0.0.1, 127.0.0.1'), first);
    assert.ok(lines.includes('X-Forwarded-Host: example.test:8080'));
    assert.ok(lines.includes('X-Forwarded-Proto: http'));
    assert.ok(lines.includes(`X-Forwarded-Prefix: ${prefix}`));
    assert.ok(lines.includes('X-Value:  spaced  '), 'a kept field line passes byte for byte');
    assert.ok(first.endsWith('\r\n\r\nhello'));
    for (const hop of [/^connection:/im, /^keep-alive:/im, /^proxy-authorization:/im, /^x-private:/im, /evil/]) assert.doesNotMatch(first, hop);
    assert.match(second!, /^GET \/second HTTP\/1\.1\r\n/, 'a pipelined request follows the first, in order');
    assert.match(raw, /Referrer-Policy: same-origin/);
    assert.equal((raw.match(/HTTP\/1\.1 200 OK\r\n/g) ?? []).length, 2, raw);
  });

  test('any head the fast path takes reaches the server with its kept lines as they came and in order, then X-Forwarded-*', async () => {
    const name = fc.constantFrom('Accept', 'accept', 'X-A', 'x-b', 'User-Agent', 'Connection', 'KEEP-ALIVE', 'Te', 'Trailer', 'Proxy-Authorization', 'Proxy-Connection', 'X-Forwarded-For', 'x-forwarded-host', 'X-Forwarded-Proto', 'X-Forwarded-Prefix');
    // Values that never list `close` or `upgrade` (those change where the request goes); some name other fields.
    const value = fc.oneof(fc.stringMatching(/^[a-z0-9=;,.]{0,10}$/), fc.constantFrom('x-a', 'accept, x-b', 'X-A,user-agent')).filter((v) => !/(^|,)\s*(close|upgrade)\s*(,|$)/i.test(v));
    const ows = fc.stringMatching(/^[ \t]{0,2}$/);
    const field = fc.tuple(name, ows, value, ows);
    const dropped = new Set(['connection', 'keep-alive', 'te', 'trailer', 'proxy-authorization', 'proxy-connection', 'x-forwarded-for', 'x-forwarded-host', 'x-forwarded-proto', 'x-forwarded-prefix']);
    await fc.assert(
      fc.asyncProperty(fc.array(field, { maxLength: 8 }), fc.nat(), fc.stringMatching(/^[a-z0-9.:-]{1,20}$/), async (fields, at, host) => {
        const lines = fields.map(([n, a, v, b]) => `${n}:${a}${v}${b}\r\n`);
        lines.splice(at % (lines.length + 1), 0, `Host: ${host}\r\n`);
        const raw = await exchange(`GET ${prefix}/echo?k=1 HTTP/1.1\r\n${lines.join('')}\r\n`, /\r\n\r\n[^]*\r\n\r\n$/);
        const prior = fields.filter(([n]) => n.toLowerCase() === 'x-forwarded-for').map(([, , v]) => v);
        // Fields a Connection value names are hop-by-hop too.
        const named = new Set(fields.filter(([n]) => n.toLowerCase() === 'connection').flatMap(([, , v]) => v.split(',').map((x) => x.trim().toLowerCase())));
        named.delete('host');
        const kept = lines.filter((l) => !dropped.has(l.slice(0, l.indexOf(':')).toLowerCase()) && !named.has(l.slice(0, l.indexOf(':')).toLowerCase()));
        const expected = `GET /echo?k=1 HTTP/1.1\r\n${kept.join('')}X-Forwarded-For: ${[...prior, '127.0.0.1'].join(', ')}\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: ${host}\r\nX-Forwarded-Prefix: ${prefix}\r\n\r\n`;
        assert.equal(bodies(raw)[0], expected);
      }),
      { numRuns: 60 },
    );
  });

  test('a chunked request body passes as sent; a body split over many writes arrives whole', async () => {
    const raw = await exchange([
      Buffer.from(`POST ${prefix}/echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n4\r\nab`),
      Buffer.from('cd\r\n3;x=y\r\nefg\r\n0\r\nX-T: 1\r\n\r\n'),
    ]);
    assert.ok(bodies(raw)[0]!.endsWith('\r\n\r\n4\r\nabcd\r\n3;x=y\r\nefg\r\n0\r\nX-T: 1\r\n\r\n'), raw);
  });

  test('response framings: chunked with trailers, close-delimited, 204, HEAD, 100-continue; hop-by-hop fields dropped', async () => {
    const chunked = await exchange(`GET ${prefix}/chunked HTTP/1.1\r\nHost: h\r\n\r\n`, /X-Sum: 11\r\n\r\n$/);
    assert.match(chunked, /Transfer-Encoding: chunked\r\n/);
    assert.ok(chunked.endsWith('\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 11\r\n\r\n'), chunked);
    const both = await exchange(`GET ${prefix}/both-framings HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n`);
    assert.match(both, /^HTTP\/1\.1 200 OK\r\nX-A: 1\r\nTransfer-Encoding: chunked\r\n[^]*\r\n\r\n5\r\nhello\r\n0\r\n\r\n$/, 'Transfer-Encoding frames the body');
    assert.doesNotMatch(both, /content-length/i, 'a Content-Length beside Transfer-Encoding is not passed on');
    const closeDelimited = await exchange(`GET ${prefix}/close-delimited HTTP/1.1\r\nHost: h\r\n\r\n`);
    assert.match(closeDelimited, /^HTTP\/1\.1 200 OK\r\n[^]*Connection: close\r\n\r\nuntil the end$/, 'the body ends with the connection, which kiln then closes');
    const twoThings = await exchange(`GET ${prefix}/no-content HTTP/1.1\r\nHost: h\r\n\r\nHEAD ${prefix}/x HTTP/1.1\r\nHost: h\r\n\r\nGET ${prefix}/third HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n`);
    assert.match(twoThings, /^HTTP\/1\.1 204 No Content\r\nX-A: 1\r\n/);
    assert.match(twoThings, /HTTP\/1\.1 200 OK\r\nContent-Length: 5\r\nReferrer-Policy: same-origin\r\n\r\nHTTP\/1\.1 200 OK/, 'HEAD: no body after the head');
    assert.match(twoThings, /GET \/third HTTP\/1\.1/);
    const cont = await exchange(`POST ${prefix}/continue HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc`);
    assert.match(cont, /^HTTP\/1\.1 100 Continue\r\n\r\nHTTP\/1\.1 200 OK\r\n/);
    assert.ok(cont.endsWith('abc'));
    for (const version of ['1.1', '1.0']) {
      // HTTP/1.0 requests go through node's server: both paths drop the fields Connection names.
      const hop = await exchange(`GET ${prefix}/hop HTTP/${version}\r\nHost: h\r\nConnection: close, X-Mine\r\nX-Mine: 1\r\n\r\n`);
      assert.doesNotMatch(hop, /keep-alive|Keep-Alive: timeout=9|X-Private|secret/, hop);
      assert.match(hop, /Referrer-Policy: no-referrer\r\n/, "the app's own policy stands");
      assert.doesNotMatch(hop, /same-origin/);
    }
    const mine = await exchange(`GET ${prefix}/echo HTTP/1.0\r\nHost: h\r\nConnection: X-Mine, Content-Length\r\nX-Mine: 1\r\nX-Kept: 2\r\n\r\n`);
    assert.doesNotMatch(mine, /X-Mine/, "node's path: a field the request's Connection names is not passed on");
    assert.match(mine, /X-Kept: 2/);
  });

  test('a head that comes before its body of known length waits for it: one piece; a stream\'s head goes at once', async () => {
    const held = await pieces(`GET ${prefix}/head-then-body HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n`);
    assert.equal(held.length, 1, `head and body in one write: ${JSON.stringify(held)}`);
    assert.match(held[0]!, /^HTTP\/1\.1 200 OK\r\n[^]*\r\n\r\nhello$/);
    // Nothing reached the client when the server broke off: it gets a 502, not a head without a body.
    const bad = Buffer.from((await pieces(`GET ${prefix}/head-then-close HTTP/1.1\r\nHost: h\r\n\r\n`)).join(''), 'latin1');
    assert.match(bad.toString('latin1'), /^HTTP\/1\.1 502 /);
    const head = readHead(bad);
    assert.ok(typeof head === 'object');
    const length = Number(head.fields[head.fields.findIndex((f) => f.toLowerCase() === 'content-length') + 1]);
    assert.equal(bad.subarray(head.length).toString(), 'The session’s server did not answer.\n', 'the page as UTF-8');
    assert.equal(bad.length - head.length, length, 'as long as its Content-Length');
    const stream = await pieces(`GET ${prefix}/stream HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n`);
    assert.ok(stream.length >= 2, JSON.stringify(stream));
    assert.match(stream[0]!, /^HTTP\/1\.1 200 OK\r\n[^]*Transfer-Encoding: chunked\r\n[^]*\r\n\r\n$/, 'the head alone, before the first chunk');
    assert.ok(stream.join('').endsWith('\r\n\r\n5\r\nhello\r\n0\r\n\r\n'));
  });

  test('a server that closes a kept connection: the next request goes on a new one', async () => {
    const raw = await exchange(`GET ${prefix}/then-close HTTP/1.1\r\nHost: h\r\n\r\n`, /then-close HTTP\/1\.1[^]*\r\n\r\n$/);
    assert.match(raw, /^HTTP\/1\.1 200/);
    const s = net.connect(port, '127.0.0.1');
    const got: string[] = [];
    s.on('data', (d) => got.push(d.toString('latin1')));
    s.write(`GET ${prefix}/then-close HTTP/1.1\r\nHost: h\r\n\r\n`);
    await new Promise((r) => setTimeout(r, 300)); // the server closes its side after answering
    s.write(`GET ${prefix}/again HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n`);
    await new Promise((r) => s.on('close', r));
    const all = got.join('');
    assert.equal((all.match(/^HTTP\/1\.1 200/gm) ?? []).length, 2, all);
    assert.match(all, /GET \/again HTTP\/1\.1/);
  });

  test("what the fast path does not take goes to node's server on the same connection", async () => {
    // The API after a proxied request, then a proxied request again (node keeps the connection).
    const raw = await exchange(`GET ${prefix}/one HTTP/1.1\r\nHost: h\r\n\r\nGET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nGET ${prefix}/three HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n`);
    assert.match(raw, /GET \/one HTTP\/1\.1/);
    assert.match(raw, /\{"ok":true\}/);
    assert.match(raw, /GET \/three HTTP\/1\.1/);
    // HTTP/1.0, an unknown token, a bad request line, smuggling-shaped framing: node answers.
    assert.match(await exchange(`GET ${prefix}/old HTTP/1.0\r\nHost: h\r\n\r\n`), /^HTTP\/1\.1 200[^]*GET \/old HTTP\/1\.1/);
    assert.match(await exchange(`GET /s/${'A'.repeat(22)}/ HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n`), /^HTTP\/1\.1 404/);
    assert.match(await exchange(`POST ${prefix}/echo HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n`), /^HTTP\/1\.1 400/);
    assert.match(await exchange(`GET ${prefix}/x HTTP/1.1\r\nHost: h\r\nBad Name: x\r\n\r\n`), /^HTTP\/1\.1 400/);
    assert.match(await exchange(`GET ${prefix}/x HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n`), /^HTTP\/1\.1 400/);
    assert.match(await exchange(`GET ${prefix}/x HTTP/1.1\r\nHost: h\r\nX: ${'a'.repeat(20000)}\r\n\r\n`), /^HTTP\/1\.1 431/);
  });

  test('heads that come in pieces: the pieces read first are kept whole while the rest comes', async () => {
    const raw = await exchange([Buffer.from(`GET ${prefix}/split-`), Buffer.from(`request HTTP/1.1\r\nHo`), Buffer.from(`st: h\r\nConnection: close\r\n\r\n`)]);
    assert.match(raw, /^HTTP\/1\.1 200 OK\r\n[^]*\r\n\r\nGET \/split-request HTTP\/1\.1\r\nHost: h\r\n/, raw);
    const response = await exchange(`GET ${prefix}/split-head HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n`);
    assert.match(response, /^HTTP\/1\.1 200 OK\r\nX-Split: yes\r\nContent-Length: 2\r\n[^]*\r\n\r\nok$/, response);
  });

  test('bad chunked framing from the client is a 400; a server breaking its framing is a 502', async () => {
    assert.match(await exchange(`POST ${prefix}/echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n`), /^HTTP\/1\.1 400/);
    assert.match(await exchange(`POST ${prefix}/echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcd\r\n`), /^HTTP\/1\.1 400/);
    assert.match(await exchange(`GET ${prefix}/bad HTTP/1.1\r\nHost: h\r\n\r\n`), /^HTTP\/1\.1 502/);
    // The session keeps working.
    assert.match(await exchange(`GET ${prefix}/fine HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n`), /^HTTP\/1\.1 200/);
  });

  test('requests in flight count as activity and end with their exchange', async () => {
    const before = t.kiln.proxy.stats.requests;
    await exchange(`GET ${prefix}/a HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n`);
    assert.equal(t.kiln.proxy.stats.requests, before + 1);
    assert.equal(t.kiln.proxy.stats.openSockets, 0);
  });

  test('an HTTP/1.0 response ends its backend connection: the next request, with a body, goes on a new one', async () => {
    const raw = await exchange(`GET ${prefix}/http10 HTTP/1.1\r\nHost: h\r\n\r\nPOST ${prefix}/echo HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc`);
    assert.match(raw, /^HTTP\/1\.1 200 OK\r\n[^]*\r\n\r\nokHTTP\/1\.1 200 OK\r\n/, raw);
    assert.ok(raw.endsWith('\r\n\r\nabc'), raw);
  });

  test('a session cannot widen a service worker\'s reach over kiln\'s origin', async () => {
    for (const http10 of [false, true]) {
      // HTTP/1.0 requests go through node's server: both paths drop the field.
      const raw = await exchange(`GET ${prefix}/sw HTTP/1.${http10 ? 0 : 1}\r\nHost: h\r\nConnection: close\r\n\r\n`);
      assert.match(raw, /^HTTP\/1\.1 200 OK\r\n/);
      assert.doesNotMatch(raw, /service-worker-allowed/i, raw);
    }
  });

  test('a client that pipelines requests and reads nothing holds a few responses in kiln, not all of them', async () => {
    const s = net.connect(port, '127.0.0.1');
    await new Promise((r) => s.once('connect', r));
    s.pause(); // reads nothing
    s.write(`GET ${prefix}/big HTTP/1.1\r\nHost: h\r\n\r\n`.repeat(1000));
    await new Promise((r) => setTimeout(r, 3000));
    const served = Number(bodies(await exchange(`GET ${prefix}/served HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n`))[0]);
    s.destroy();
    // 60 KiB each: what the sockets' buffers hold, then kiln waits for the client.
    assert.ok(served > 0 && served < 300, `${served} of 1000 pipelined requests were sent on while the client read nothing`);
  });

  test('a refused upgrade is answered and the connection ends: no tunnel past the proxy', async () => {
    const raw = await exchange(
      `GET ${prefix}/upgrade-refused HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n` + `GET ${prefix}/echo HTTP/1.1\r\nHost: evil\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n`,
    );
    assert.match(raw, /^HTTP\/1\.1 403 Forbidden\r\n[^]*\r\n\r\nnope$/, raw);
    assert.doesNotMatch(raw, /6\.6\.6\.6|evil/, 'the bytes after it never reached the server raw');
  });

  test('an upgrade request reaches the server byte for byte (latin1 bytes stay single bytes)', async () => {
    const got = Buffer.from(await exchange(`GET ${prefix}/upgrade-echo HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: test\r\nX-Name: caf\xe9\r\n\r\n`), 'latin1');
    assert.match(got.toString('latin1'), /^HTTP\/1\.1 101 Switching Protocols\r\n[^]*\r\n\r\nGET \/upgrade-echo HTTP\/1\.1\r\n/);
    assert.ok(got.includes(Buffer.from('X-Name: caf\xe9\r\n', 'latin1')), got.toString('latin1'));
  });

  test("on node's server's path, a server that breaks off mid-response cuts the client's response", async () => {
    // HTTP/1.0: node's server takes it. The server sends Content-Length 5, no body, and closes.
    const raw = await exchange(`GET ${prefix}/head-then-close HTTP/1.0\r\nHost: h\r\n\r\n`); // rejects if the connection stays open
    assert.doesNotMatch(raw, /\r\n\r\n[^]{5}$/, 'no whole response was made up');
    for (let i = 0; i < 40 && t.kiln.proxy.stats.openSockets > 0; i++) await new Promise((r) => setTimeout(r, 50));
    assert.equal(t.kiln.proxy.stats.openSockets, 0, 'the exchange ended with it');
  });

  test("a request body that stalls past the server's requestTimeout gets a 408 and its exchange ends", async () => {
    const server = t.app.server;
    const before = server.requestTimeout;
    server.requestTimeout = 1500;
    try {
      const raw = await exchange(`POST ${prefix}/echo HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\n0123456789`, undefined, 8000);
      assert.match(raw, /^HTTP\/1\.1 408 Request Timeout\r\n/, raw);
      for (let i = 0; i < 40 && t.kiln.proxy.stats.openSockets > 0; i++) await new Promise((r) => setTimeout(r, 50));
      assert.equal(t.kiln.proxy.stats.openSockets, 0, 'no longer counted as in use');
    } finally {
      server.requestTimeout = before;
    }
  });

  for (const [path, version] of [
    ['the fast path', '1.1'],
    ["node's server's path", '1.0'],
  ] as const) {
    test(`on ${path}, a client that stops reading a response is cut off after the send timeout, and no longer counts as in use`, async () => {
      const before = t.kiln.proxy.sendTimeoutMs;
      t.kiln.proxy.sendTimeoutMs = 1000;
      const s = net.connect(port, '127.0.0.1');
      try {
        s.pause(); // reads nothing: node stops at its buffer's high-water mark
        s.write(`GET ${prefix}/huge HTTP/${version}\r\nHost: h\r\n\r\n`);
        await until('the exchange to start', () => t.kiln.proxy.stats.openSockets === 1);
        await until('the exchange to end', () => t.kiln.proxy.stats.openSockets === 0, 15_000);
        let got = 0;
        s.on('data', (c: Buffer) => (got += c.length));
        s.on('error', () => undefined); // a reset is one way to be cut off
        const closed = new Promise((r) => (s.once('end', r), s.once('close', r)));
        s.resume();
        await closed;
        assert.ok(got < 64 << 20, `the whole ${got} bytes arrived: the client was never cut off`);
      } finally {
        s.destroy();
        t.kiln.proxy.sendTimeoutMs = before;
      }
    });
  }

  // Last: it ends the session.
  test('a request waiting on a session that ends gets a 502, not a wait without end', async () => {
    const waiting = exchange(`GET ${prefix}/hang HTTP/1.1\r\nHost: h\r\n\r\n`);
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(t.kiln.proxy.stats.openSockets, 1);
    const res = await fetch(`http://127.0.0.1:${port}/v1/sessions/${id}`, { method: 'DELETE' });
    assert.ok(res.ok, `DELETE: ${res.status}`);
    assert.match(await waiting, /^HTTP\/1\.1 502 /);
    assert.equal(t.kiln.proxy.stats.openSockets, 0);
  });
});

test('closing the server waits for the exchanges in flight and closes idle connections, native ones included', async () => {
  const { k, session: s } = await startRawSession(1);
  // An idle keep-alive connection that node's server has (the fast path handed it over after an API call) ...
  const idle = net.connect(port, '127.0.0.1');
  const idleClosed = new Promise((ok) => idle.on('close', ok));
  idle.on('error', () => undefined);
  const answered = new Promise((ok) => idle.once('data', ok));
  idle.write('GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n');
  await answered;
  // ... and a proxied exchange whose answer takes 0.3 s.
  const inFlight = exchange(`GET /s/${s.token}/head-then-body HTTP/1.1\r\nHost: h\r\n\r\n`, /\r\n\r\nhello$/);
  await new Promise((r) => setTimeout(r, 100));
  const closed = k.close();
  assert.match(await inFlight, /^HTTP\/1\.1 200 OK\r\n[^]*\r\n\r\nhello$/, 'the exchange finished before the session was stopped');
  await idleClosed;
  await closed;
});

test('chunked framing is checked strictly as it passes', () => {
  const take = (s: string) => {
    const f = BodyFrame.chunked();
    const n = f.take(Buffer.from(s), 0);
    return { n, done: f.done };
  };
  assert.deepEqual(take('3\r\nabc\r\n0\r\n\r\nNEXT'), { n: 13, done: true });
  assert.deepEqual(take('A\r\n0123456789\r\n0\r\nT: 1\r\n\r\n'), { n: 26, done: true });
  assert.deepEqual(take('3\r\nab'), { n: 5, done: false });
  for (const bad of ['\r\n', 'g\r\n', '3\nabc', '3\r\nabcd\r\n', '0\r\nT\n\r\n', `${'f'.repeat(13)}\r\n`, '3 ;x\r\n']) assert.throws(() => take(bad), FramingError, JSON.stringify(bad));
  const byLength = BodyFrame.length(4);
  assert.equal(byLength.take(Buffer.from('abcdef'), 1), 4);
  assert.equal(byLength.done, true);
});
