/** Pure parts: config layering, request validation, paths, output capping, the queue. */
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
    ['[1, 2]', /top level must be a mapping/],
    ['a: [', /not valid YAML/],
  ];
  for (const [text, re] of cases) {
    assert.throws(() => loadConfig({ file: file('b.yaml', text), env: {} }), (e: unknown) => e instanceof KilnError && re.test(e.message), text);
  }
  const g = loadConfig({ file: file('g.yaml', 'templates: { g: { runtime: gvisor, image: i, command: [x], port: 80 } }'), env: {} }).config;
  assert.equal(g.templates.g!.port, 80, 'gvisor templates may serve sessions');
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
