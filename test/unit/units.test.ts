/** Pure parts: config layering, request validation, paths, output capping, the queue, proxy headers, readiness polling. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { loadConfig } from '../../src/config/load.js';
import { DEFAULT_CONFIG } from '../../src/config/defaults.js';
import { prepareRun } from '../../src/runs/validate.js';
import { relativePathProblem } from '../../src/sandbox/paths.js';
import { CappedBuffer } from '../../src/sandbox/output.js';
import { WorkQueue } from '../../src/runs/queue.js';
import { KilnError } from '../../src/errors.js';
import { forwardHeaders, hasBody, responseHeaders } from '../../src/proxy/proxy.js';
import { Field, HeadIndex, HeadWriter, copyLines, fieldCodes, readHead } from '../../src/proxy/http1.js';
import { readyPollDelayMs } from '../../src/pools/warm.js';
import { favordynmodsProblem } from '../../src/runtimes/process/cgroups.js';
import { SessionOrigins, sessionUrl } from '../../src/proxy/origin.js';

const dir = mkdtempSync(join(tmpdir(), 'kiln-unit-'));
const file = (name: string, text: string) => {
  const p = join(dir, name);
  writeFileSync(p, text);
  return p;
};

test('config: flags > env > file > defaults', () => {
  const f = file('a.yaml', 'server: { port: 1000, host: 0.0.0.0 }\nruns: { queueMax: 5 }\n');
  const env = { KILN_PORT: '2000' };
  assert.equal(loadConfig({ file: f, env: {} }).config.server.port, 1000);
  assert.equal(loadConfig({ file: f, env }).config.server.port, 2000);
  assert.equal(loadConfig({ file: f, env, flags: { 'server.port': 3000 } }).config.server.port, 3000);
  const c = loadConfig({ file: f, env: {} }).config;
  assert.equal(c.server.host, '0.0.0.0');
  assert.equal(c.runs.queueMax, 5);
  assert.equal(c.runs.defaults.wallMs, DEFAULT_CONFIG.runs.defaults.wallMs, 'untouched keys keep defaults');
  assert.ok(c.languages.python, 'default languages stay when the file adds none');
});

test('config: unknown and mistyped keys name the key and the file', () => {
  const cases: [string, RegExp][] = [
    ['runs: { concurency: 2 }', /b\.yaml: unknown key "runs\.concurency"/],
    ['server: { port: "x" }', /b\.yaml: "server\.port" expected integer/],
    ['languages: { go: { template: nope, file: main.go, run: [go] } }', /"languages\.go\.template" names unknown template "nope"/],
    ['templates: { d: { runtime: docker } }', /"templates\.d\.image" is required/],
    ['templates: { g: { runtime: gvisor } }', /"templates\.g\.image" is required for runtime gvisor/],
    ['templates: { d: { runtime: vm } }', /templates\.d\.runtime/],
    ['templates: { s: { runtime: process, command: [x], port: 80, ready: { tcp: true, htp: / } } }', /unknown key "templates\.s\.ready\.htp"/],
    ['templates: { "Odd Name/x": { runtime: process } }', /"templates\.Odd Name\/x": template names are lowercase letters/],
    ['templates: { __proto__: { runtime: process } }', /"templates\.__proto__": template names are/],
    ['sessions: { origin: "https://sessions.example.org" }', /"sessions\.origin" must be like https:\/\/\*\.sessions\.example\.org/],
    ['sessions: { origin: "https://*.example.org/s" }', /"sessions\.origin" must be like/],
    ['auth: { enabled: 3 }', /"auth\.enabled" expected boolean \(got 3\)/],
    ['[1, 2]', /top level must be a mapping/],
    ['a: [', /not valid YAML/],
  ];
  for (const [text, re] of cases) {
    assert.throws(() => loadConfig({ file: file('b.yaml', text), env: {} }), (e: unknown) => e instanceof KilnError && re.test(e.message), text);
  }
  const g = loadConfig({ file: file('g.yaml', 'templates: { g: { runtime: gvisor, image: i, command: [x], port: 80 } }'), env: {} }).config;
  assert.equal(g.templates.g!.port, 80, 'gvisor templates may serve sessions');
  for (const [name, t] of Object.entries(DEFAULT_CONFIG.templates)) assert.notEqual(t.public, true, `the embedded ${name} is public: anyone could start sandboxes on a server with auth on`);
  // A built-in template's readiness is replaced, not merged into a shape that is neither form.
  const over = loadConfig({ file: file('o.yaml', 'templates: { demo-web: { ready: { tcp: true } } }'), env: {} }).config;
  assert.deepEqual(over.templates['demo-web']!.ready, { tcp: true });
  // Both readiness forms the README shows: a key of either branch is known.
  for (const ready of ['{ http: /health }', '{ tcp: true }']) {
    const t = loadConfig({ file: file('r.yaml', `templates: { s: { runtime: process, command: [x], port: 80, ready: ${ready} } }`), env: {} }).config;
    assert.deepEqual(t.templates.s!.ready, ready.includes('tcp') ? { tcp: true } : { http: '/health' });
  }
  assert.throws(() => loadConfig({ env: { KILN_PORT: 'abc' } }), /KILN_PORT="abc" is not an integer/);
  assert.throws(() => loadConfig({ file: join(dir, 'missing.yaml'), env: {} }), /missing\.yaml: cannot read/);
});

test('config: a language is config only', () => {
  const f = file('c.yaml', 'languages: { lua: { template: host, file: main.lua, run: [lua5.4, main.lua] } }\n');
  const c = loadConfig({ file: f, env: {} }).config;
  const p = prepareRun({ language: 'lua', files: [{ name: 'x.lua', content: 'print(1)' }] }, c);
  assert.equal(p.files[0]!.name, 'main.lua', 'the first file becomes the language file');
  assert.deepEqual(p.language.run, ['lua5.4', 'main.lua']);
});

test('validate: limits default, narrow, and never pass the maxima', () => {
  const p = prepareRun({ language: 'python', files: [{ name: 'a.py', content: '' }], limits: { wallMs: 100 } }, DEFAULT_CONFIG);
  assert.equal(p.runLimits.wallMs, 100);
  assert.equal(p.runLimits.memoryMb, DEFAULT_CONFIG.runs.defaults.memoryMb);
  assert.equal(p.wait, true);
  assert.throws(() => prepareRun({ language: 'python', files: [{ name: 'a.py', content: '' }], limits: { pids: 0 } }, DEFAULT_CONFIG), /limits\.pids: must be at least 1/);
});

test('validate (property): any JSON body is accepted or refused with a 4xx KilnError, never anything else', () => {
  fc.assert(
    fc.property(
      fc.oneof(
        fc.jsonValue(),
        fc.record({
          language: fc.oneof(fc.constantFrom('python', 'c', 'nope'), fc.jsonValue()),
          files: fc.oneof(fc.array(fc.record({ name: fc.string(), content: fc.string(), encoding: fc.constantFrom('utf8', 'base64', 'hex') }, { requiredKeys: ['name'] })), fc.jsonValue()),
          limits: fc.oneof(fc.dictionary(fc.constantFrom('wallMs', 'memoryMb', 'x'), fc.oneof(fc.integer(), fc.double(), fc.string())), fc.jsonValue()),
          stdin: fc.oneof(fc.string(), fc.jsonValue()),
        }, { requiredKeys: [] }),
      ),
      (body) => {
        try {
          prepareRun(body, DEFAULT_CONFIG);
        } catch (e) {
          assert.ok(e instanceof KilnError && e.status >= 400 && e.status < 500, String(e));
        }
      },
    ),
    { numRuns: 2000 },
  );
});

test('paths: only plain relative names below the work dir', () => {
  for (const ok of ['a', 'a.py', 'dir/a.txt', 'x..y']) assert.equal(relativePathProblem(ok), undefined, ok);
  for (const bad of ['', '/etc/passwd', '../x', 'a/../../x', 'a//b', './a', 'a/', 'a\0b', 'a\\b', 'x'.repeat(300)]) assert.ok(relativePathProblem(bad), bad);
  fc.assert(
    fc.property(fc.string(), (s) => {
      if (relativePathProblem(s) === undefined) {
        assert.ok(!s.startsWith('/') && !s.split('/').includes('..'));
      }
    }),
  );
});

test('output: CappedBuffer keeps exactly the cap and tells once', () => {
  let overflows = 0;
  const seen: Buffer[] = [];
  const b = new CappedBuffer(10, () => overflows++, (c) => seen.push(c));
  b.push(Buffer.from('12345'));
  b.push(Buffer.from('67890abc'));
  b.push(Buffer.from('def'));
  assert.equal(b.toBuffer().toString(), '1234567890');
  assert.equal(Buffer.concat(seen).toString(), '1234567890');
  assert.equal(b.truncated, true);
  assert.equal(b.seen, 16);
  assert.equal(overflows, 1);
  const exact = new CappedBuffer(3, () => overflows++);
  exact.push(Buffer.from('abc'));
  assert.equal(exact.truncated, false);
});

test('queue: runs at most `concurrency` at once and refuses past `queueMax`', async () => {
  const q = new WorkQueue(2, 1);
  let active = 0;
  let peak = 0;
  const release: (() => void)[] = [];
  const job = () => async () => {
    active++;
    peak = Math.max(peak, active);
    await new Promise<void>((r) => release.push(r));
    active--;
  };
  q.push(job());
  q.push(job());
  q.push(job());
  assert.throws(() => q.push(job()), (e: unknown) => e instanceof KilnError && e.status === 429 && e.retryAfterS === 1);
  assert.equal(q.depth, 1);
  while (release.length || q.running) {
    release.shift()?.();
    await new Promise((r) => setImmediate(r));
  }
  await q.idle();
  assert.equal(peak, 2);
});

test('proxy: request headers lose hop-by-hop ones, keep one Host, and carry X-Forwarded-*', () => {
  const raw = [
    'Host', 'kiln.example:7070',
    'Connection', 'keep-alive, X-Secret',
    'Keep-Alive', 'timeout=5',
    'Transfer-Encoding', 'chunked',
    'Upgrade', 'h2c',
    'Proxy-Authorization', 'Basic eA==',
    'X-Forwarded-For', '10.0.0.1',
    'x-forwarded-for', '10.0.0.2',
    'X-Forwarded-Proto', 'https',
    'X-Forwarded-Host', 'evil',
    'X-Forwarded-Prefix', '/evil',
    'Host', 'second.example',
    'Cookie', 'a=1',
    'Cookie', 'b=2',
    'Accept', '*/*',
  ];
  assert.deepEqual(forwardHeaders(raw, '127.0.0.1', false, '/s/tok'), [
    'Host', 'kiln.example:7070',
    'Cookie', 'a=1',
    'Cookie', 'b=2',
    'Accept', '*/*',
    'X-Forwarded-For', '10.0.0.1, 10.0.0.2, 127.0.0.1',
    'X-Forwarded-Proto', 'http',
    'X-Forwarded-Host', 'kiln.example:7070',
    'X-Forwarded-Prefix', '/s/tok',
  ]);
  // HTTP/1.0 without Host: the backend still gets one, and no X-Forwarded-Host is made up.
  assert.deepEqual(forwardHeaders(['Accept', '*/*'], '::1', true, '/s/t'), [
    'Accept', '*/*',
    'Host', 'localhost',
    'X-Forwarded-For', '::1',
    'X-Forwarded-Proto', 'https',
    'X-Forwarded-Prefix', '/s/t',
  ]);
  // On a session's own host nothing is taken off the path: no prefix, and the client's is not passed on.
  assert.deepEqual(forwardHeaders(['Host', 'h', 'X-Forwarded-Prefix', '/evil'], '::1', false, ''), ['Host', 'h', 'X-Forwarded-For', '::1', 'X-Forwarded-Proto', 'http', 'X-Forwarded-Host', 'h']);
});

test('session origins: a Host names a session only as <session id> + the configured suffix; URLs are built on it', () => {
  const config = structuredClone(DEFAULT_CONFIG);
  assert.equal(SessionOrigins.of(config), undefined);
  config.sessions.origin = 'https://*.s.example.org:8443';
  const o = SessionOrigins.of(config)!;
  const id = '0b4f6d2e-1c3a-4e5f-8a9b-0c1d2e3f4a5b';
  for (const host of [`${id}.s.example.org`, `${id}.s.example.org:8443`, `${id}.S.Example.ORG:1`, `${id.toUpperCase()}.s.example.org`, `${id}.s.example.org.`]) {
    assert.equal(o.idOf(host), id, host);
  }
  for (const host of [undefined, '', 's.example.org', `x${id}.s.example.org`, `${id}.s.example.org.evil`, `${id}.evil.org`, `a.${id}.s.example.org`, `${id}s.example.org`, `[::1]:8443`, `www.s.example.org`]) {
    assert.equal(o.idOf(host), undefined, String(host));
  }
  assert.equal(o.url(id, '/s/tok/'), `https://${id}.s.example.org:8443/s/tok/`);
  assert.equal(o.secure, true);
  assert.equal(sessionUrl(o, id, 'tok'), `https://${id}.s.example.org:8443/s/tok/`);
  assert.equal(sessionUrl(undefined, id, 'tok'), '/s/tok/');
});

test('proxy: response headers keep order and duplicates, less hop-by-hop ones; bodies are announced by length or encoding', () => {
  const raw = ['Content-Type', 'text/html', 'Set-Cookie', 'a=1', 'Connection', 'close', 'Set-Cookie', 'b=2', 'Transfer-Encoding', 'chunked', 'Keep-Alive', 'timeout=5'];
  assert.deepEqual(responseHeaders(raw), ['Content-Type', 'text/html', 'Set-Cookie', 'a=1', 'Set-Cookie', 'b=2', 'Referrer-Policy', 'same-origin']);
  assert.deepEqual(responseHeaders(['referrer-policy', 'origin']), ['referrer-policy', 'origin'], "the app's own policy stands");
  assert.equal(hasBody(['Host', 'x', 'Content-Length', '0']), true);
  assert.equal(hasBody(['host', 'x', 'transfer-encoding', 'chunked']), true);
  assert.equal(hasBody(['Host', 'x', 'Content-Type', 'text/plain', 'X-Content-Length', '5']), false);
});

test('proxy: a message head reads back as built; one control byte, a bad name or a bare CR or LF anywhere is refused', () => {
  const name = fc.stringMatching(/^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,12}$/);
  // Values: visible ASCII, obs-text (over 0x7f) and inner spaces or tabs; surrounding ones are not part of the value.
  const value = fc.stringMatching(/^([\x21-\x7e\x80-\xff]([\x20-\x7e\x80-\xff\t]{0,10}[\x21-\x7e\x80-\xff])?)?$/);
  const ows = fc.stringMatching(/^[ \t]{0,2}$/);
  const field = fc.tuple(name, ows, value, ows);
  const build = (line: string, fields: [string, string, string, string][]) => `${line}\r\n${fields.map(([n, a, v, b]) => `${n}:${a}${v}${b}\r\n`).join('')}\r\n`;
  fc.assert(
    fc.property(fc.array(field, { maxLength: 10 }), fc.stringMatching(/^[\x21-\x7e]{0,8}$/), (fields, after) => {
      const text = build('GET /x HTTP/1.1', fields);
      const head = readHead(Buffer.from(text + after, 'latin1'));
      assert.deepEqual(head, { line: 'GET /x HTTP/1.1', fields: fields.flatMap(([n, , v]) => [n, v]), length: text.length });
      // Cut anywhere before the blank line: not all there yet.
      assert.equal(readHead(Buffer.from(text.slice(0, text.length - 1 - (after.length % 4)), 'latin1')), 'more');
    }),
  );
  const bad = fc.constantFrom('\x00', '\x01', '\x1f', '\x7f', '\r', '\n');
  fc.assert(
    fc.property(fc.array(field, { minLength: 1, maxLength: 6 }), fc.nat(), bad, (fields, at, byte) => {
      const text = build('GET /x HTTP/1.1', fields);
      const end = text.length - 4; // the head's last CRLF and the blank line stay as they are
      const i = at % end;
      // Replacing a line's own CR or LF with another control byte breaks it too; replacing one with itself does not.
      if (text[i] === byte) return;
      assert.equal(readHead(Buffer.from(text.slice(0, i) + byte + text.slice(i + 1), 'latin1')), 'invalid', JSON.stringify(text.slice(0, i) + byte + text.slice(i + 1)));
    }),
  );
  for (const head of ['\r\n\r\n', 'GET / HTTP/1.1\r\n folded: x\r\n\r\n', 'GET / HTTP/1.1\r\nName : x\r\n\r\n', 'GET / HTTP/1.1\r\n: x\r\n\r\n', 'GET / HTTP/1.1\r\nNo-colon\r\n\r\n', 'GET / HTTP/1.1\r\nNa\xe9me: x\r\n\r\n'])
    assert.equal(readHead(Buffer.from(head, 'latin1')), 'invalid', JSON.stringify(head));
  assert.equal(readHead(Buffer.from(`GET / HTTP/1.1\r\nX: ${'a'.repeat(17000)}\r\n\r\n`)), 'invalid', 'longer than node allows');
});

test('proxy: a head read in place: field names in any case, comma lists, Content-Length, start lines, a cap on fields', () => {
  const h = new HeadIndex();
  const read = (text: string) => (assert.equal(h.read(Buffer.from(text, 'latin1')), 'ok', JSON.stringify(text)), h);
  // A known name in any case has its code; a name one byte off does not.
  const anyCase = (s: string) => fc.array(fc.boolean(), { minLength: s.length, maxLength: s.length }).map((up) => [...s].map((c, i) => (up[i] ? c.toUpperCase() : c)).join(''));
  const known: [string, Field][] = [['content-length', Field.ContentLength], ['transfer-encoding', Field.TransferEncoding], ['connection', Field.Connection], ['host', Field.Host], ['x-forwarded-for', Field.XForwardedFor], ['sec-fetch-mode', Field.SecFetchMode], ['te', Field.TE]];
  for (const [name, code] of known) {
    fc.assert(fc.property(anyCase(name), (n) => assert.equal(read(`GET / HTTP/1.1\r\n${n}: x\r\n\r\n`).code(0), code, n)));
    for (const near of [name.slice(1), `${name}s`, name.replace(/.$/, '_'), `q${name.slice(1)}`]) assert.equal(read(`GET / HTTP/1.1\r\n${near}: x\r\n\r\n`).code(0), Field.Other, near);
  }
  // Comma lists: each item without spaces and tabs, case-insensitive; the last item for a coding.
  const item = fc.constantFrom('close', 'Close', 'keep-alive', 'chunked', 'gzip', 'CHUNKED', '', 'x-close');
  const list = fc.tuple(fc.array(fc.tuple(fc.stringMatching(/^[ \t]{0,2}$/), item, fc.stringMatching(/^[ \t]{0,2}$/)), { minLength: 1, maxLength: 4 }));
  fc.assert(
    fc.property(list, ([items]) => {
      const value = items.map(([a, v, b]) => a + v + b).join(',');
      const k = read(`HTTP/1.1 200 OK\r\nConnection: ${value}\r\n\r\n`);
      const names = items.map(([, v]) => v.toLowerCase());
      assert.equal(k.valueLists(0, 'close'), names.includes('close'), value);
      assert.equal(k.lastItemIs(0, 'chunked'), names[names.length - 1] === 'chunked', value);
      assert.equal(k.valueIs(0, 'close'), value.trim() !== '' && names.length === 1 && names[0] === 'close', value);
    }),
  );
  fc.assert(
    fc.property(fc.stringMatching(/^[0-9a-z+-]{0,17}$/), (v) => {
      const k = read(`HTTP/1.1 200 OK\r\nContent-Length: ${v}\r\n\r\n`);
      assert.equal(k.contentLength(0), /^\d{1,15}$/.test(v) ? Number(v) : undefined, v);
    }),
  );
  // Start lines: HTTP/1.1 requests with an origin-form target; 1.0 and 1.1 statuses 100 to 599.
  assert.deepEqual(read('GET /a?b=c HTTP/1.1\r\n\r\n').requestLine(), { method: 'GET', target: '/a?b=c' });
  for (const line of ['GET /a HTTP/1.0', 'GET  /a HTTP/1.1', 'GET /a b HTTP/1.1', 'GET http://x/ HTTP/1.1', 'G(T /a HTTP/1.1', 'GET /a HTTP/1.1 ', '/a HTTP/1.1', 'GET /a HTTP/1.10'])
    assert.equal(read(`${line}\r\n\r\n`).requestLine(), undefined, line);
  for (const [line, status] of [['HTTP/1.1 200 OK', 200], ['HTTP/1.0 404 Not Found', 404], ['HTTP/1.1 204', 204], ['HTTP/1.1 599 x', 599], ['HTTP/1.1 100 Continue', 100]] as const) assert.equal(read(`${line}\r\n\r\n`).status(), status, line);
  for (const line of ['HTTP/1.1 600 x', 'HTTP/1.1 099 x', 'HTTP/2.0 200 OK', 'HTTP/1.1 20 OK', 'HTTP/1.1 2000 OK', 'HTTP/1.2 200 OK', 'http/1.1 200 OK', 'HTTP/1.1 2x0 OK'])
    assert.equal(read(`${line}\r\n\r\n`).status(), 0, line);
  // More fields than node keeps: not read here.
  assert.equal(h.read(Buffer.from(`GET / HTTP/1.1\r\n${'A: b\r\n'.repeat(2000)}\r\n`)), 'ok');
  assert.equal(h.read(Buffer.from(`GET / HTTP/1.1\r\n${'A: b\r\n'.repeat(2001)}\r\n`)), 'invalid');
});

test('proxy: a head rewritten by copying keeps exactly the lines not dropped, byte for byte and in order', () => {
  const names = ['Host', 'Connection', 'keep-alive', 'X-Forwarded-For', 'Content-Length', 'Transfer-Encoding', 'Accept', 'X-A', 'Cookie', 'te'];
  const line = fc.tuple(fc.constantFrom(...names), fc.stringMatching(/^[ \t]{0,2}$/), fc.stringMatching(/^[\x21-\x7e]{0,12}$/), fc.stringMatching(/^[ \t]{0,2}$/)).map(([n, a, v, b]) => `${n}:${a}${v}${b}\r\n`);
  const droppable = ['connection', 'keep-alive', 'x-forwarded-for', 'content-length', 'transfer-encoding', 'cookie', 'te', 'host'];
  fc.assert(
    fc.property(fc.array(line, { maxLength: 12 }), fc.subarray(droppable), fc.option(fc.constantFrom(Field.ContentLength, Field.Host), { nil: undefined }), fc.nat({ max: 64 }), (lines, dropped, also, capacity) => {
      const h = new HeadIndex();
      assert.equal(h.read(Buffer.from(`GET / HTTP/1.1\r\n${lines.join('')}\r\n`, 'latin1')), 'ok');
      // Any capacity: the writer grows when it must.
      const out = new HeadWriter(capacity);
      out.text('<');
      copyLines(h, out, fieldCodes(dropped), also ?? -1);
      out.text('>');
      const gone = (l: string) => {
        const name = l.slice(0, l.indexOf(':')).toLowerCase();
        return dropped.includes(name) || (also === Field.ContentLength && name === 'content-length') || (also === Field.Host && name === 'host');
      };
      assert.equal(out.done().toString('latin1'), `<${lines.filter((l) => !gone(l)).join('')}>`);
    }),
  );
});

test('readiness polls: a tenth of the time so far, never under 2 ms nor over 25 ms', () => {
  fc.assert(
    fc.property(fc.double({ min: 0, max: 1e7, noNaN: true }), (elapsed) => {
      const d = readyPollDelayMs(elapsed);
      assert.ok(d >= 2 && d <= 25);
      assert.ok(d <= Math.max(2, elapsed / 10) + 1e-9);
      assert.ok(d >= Math.min(25, elapsed / 10) - 1e-9);
    }),
  );
});

test('favordynmods is read off the cgroup2 mount, whichever it is; its absence names the fix', () => {
  const hybrid = 'cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime,favordynmods 0 0\n';
  assert.equal(favordynmodsProblem(hybrid), undefined);
  assert.equal(favordynmodsProblem('cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nsdelegate,favordynmods,memory_recursiveprot 0 0\n'), undefined);
  assert.match(favordynmodsProblem('cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nsdelegate 0 0\n')!, /favordynmods is off.*mount -o remount,favordynmods \/sys\/fs\/cgroup$/);
  // A mount point or device named like the option does not count.
  assert.match(favordynmodsProblem('favordynmods /favordynmods cgroup2 rw 0 0\n')!, /favordynmods is off/);
  assert.match(favordynmodsProblem('cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n')!, /no cgroup2 mount/);
});
