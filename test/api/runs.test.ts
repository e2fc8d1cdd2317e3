/** The runs API end to end: real bubblewrap sandboxes, real SQLite, the HTTP contract of DESIGN.md. */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { postRun, startTestKiln, testConfig, type TestKiln } from '../helpers.js';

let t: TestKiln;
before(async () => {
  t = await startTestKiln();
});
after(async () => {
  await t.close();
});

const HELLO: Record<string, [string, string]> = {
  python: ['main.py', 'print("hello from python")'],
  javascript: ['main.js', 'console.log("hello from javascript")'],
  typescript: ['main.ts', 'const who: string = "typescript";\nconsole.log(`hello from ${who}`);'],
  c: ['main.c', '#include <stdio.h>\nint main(void){puts("hello from c");return 0;}'],
  cpp: ['main.cpp', '#include <iostream>\nint main(){std::cout<<"hello from cpp"<<std::endl;}'],
  bash: ['main.sh', 'echo "hello from bash"'],
  rust: ['main.rs', 'fn main(){ println!("hello from rust"); }'],
  java: ['Main.java', 'public class Main { public static void main(String[] a){ System.out.println("hello from java"); } }'],
};

for (const [language, [name, content]] of Object.entries(HELLO)) {
  test(`hello world in ${language}`, async () => {
    const r = await postRun(t.app, { language, files: [{ name, content }] });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.equal(r.body.verdict, 'ok', JSON.stringify(r.body));
    assert.equal(r.body.status, 'done');
    assert.equal(r.body.run.stdout, `hello from ${language}\n`);
    assert.equal(r.body.run.exitCode, 0);
    assert.equal(typeof r.body.run.memoryKb, 'number');
    assert.equal(r.body.compile !== undefined, ['typescript', 'c', 'cpp', 'rust', 'java'].includes(language));
  });
}

test('verdicts: runtime_error, compile_error, timeout, memory_limit, output_limit', async () => {
  const cases: [unknown, string][] = [
    [{ language: 'python', files: [{ name: 'a.py', content: 'raise SystemExit(4)' }] }, 'runtime_error'],
    [{ language: 'c', files: [{ name: 'main.c', content: 'int main( {' }] }, 'compile_error'],
    [{ language: 'python', files: [{ name: 'a.py', content: 'while True: pass' }], limits: { wallMs: 500, cpuMs: 400 } }, 'timeout'],
    [{ language: 'bash', files: [{ name: 'a.sh', content: 'sleep 30' }], limits: { wallMs: 300 } }, 'timeout'],
    [{ language: 'python', files: [{ name: 'a.py', content: 'x = bytearray(1 << 30)' }], limits: { memoryMb: 64 } }, 'memory_limit'],
    [{ language: 'python', files: [{ name: 'a.py', content: 'import sys\nwhile True: sys.stdout.write("y" * 65536)' }], limits: { outputBytes: 100000 } }, 'output_limit'],
  ];
  for (const [body, verdict] of cases) {
    const r = await postRun(t.app, body);
    assert.equal(r.status, 200);
    assert.equal(r.body.verdict, verdict, JSON.stringify(body));
  }
});

test('stdin and args reach the program; exit code and signal are reported', async () => {
  const r = await postRun(t.app, {
    language: 'python',
    files: [{ name: 'main.py', content: 'import sys, os\nprint(sys.stdin.read().strip(), sys.argv[1:], flush=True)\nos.kill(os.getpid(), 11)' }],
    stdin: 'in',
    args: ['a', 'b c'],
  });
  assert.equal(r.body.run.stdout, "in ['a', 'b c']\n");
  assert.equal(r.body.run.signal, 'SIGSEGV');
  assert.equal(r.body.run.exitCode, null);
  assert.equal(r.body.verdict, 'runtime_error');
});

test('extra files and base64 content are written into the work dir', async () => {
  const r = await postRun(t.app, {
    language: 'python',
    files: [
      { name: 'main.py', content: 'import helper; print(helper.X, open("data.bin","rb").read())' },
      { name: 'helper.py', content: 'X = 7' },
      { name: 'data.bin', content: Buffer.from([0, 1, 2]).toString('base64'), encoding: 'base64' },
    ],
  });
  assert.equal(r.body.run.stdout, "7 b'\\x00\\x01\\x02'\n", JSON.stringify(r.body));
});

test('wait:false answers 202, then GET and the event stream show queued → running → done', async () => {
  const r = await postRun(t.app, { language: 'python', files: [{ name: 'main.py', content: 'import time; time.sleep(0.3); print(1)' }], wait: false });
  assert.equal(r.status, 202);
  assert.equal(r.body.status, 'queued');
  const address = await t.app.listen({ port: 0, host: '127.0.0.1' });
  const res = await fetch(`${address}/v1/runs/${r.body.id}/events`);
  assert.equal(res.headers.get('content-type'), 'text/event-stream');
  const text = await res.text();
  const statuses = [...text.matchAll(/^data: (.*)$/gm)].map((m) => JSON.parse(m[1]!).status);
  assert.deepEqual(statuses, ['queued', 'running', 'done']);
  const got = await t.app.inject({ url: `/v1/runs/${r.body.id}` });
  assert.equal(got.json().verdict, 'ok');
  assert.equal(got.json().run.stdout, '1\n');
});

test('bad input: each a 400 naming the field, nothing else affected', async () => {
  const bad: [unknown, RegExp][] = [
    [{ files: [{ name: 'a.py', content: '' }] }, /language/],
    [{ language: 'cobol', files: [{ name: 'a', content: '' }] }, /language/],
    [{ language: 'python' }, /files/],
    [{ language: 'python', files: [] }, /files/],
    [{ language: 'python', files: [{ name: '../x', content: '' }] }, /files\[0\]\.name/],
    [{ language: 'python', files: [{ name: '/etc/x', content: '' }] }, /files\[0\]\.name/],
    [{ language: 'python', files: [{ name: 'a.py', content: '' }, { name: 'a.py', content: '' }] }, /files\[1\]\.name.*duplicate/],
    [{ language: 'python', files: [{ name: 'a.py', content: '!!!', encoding: 'base64' }] }, /files\[0\]\.content.*base64/],
    [{ language: 'python', files: [{ name: 'a.py', content: 5 }] }, /files\[0\]\.content/],
    [{ language: 'python', files: [{ name: 'a.py', content: '' }], limits: { memoryMb: 999999 } }, /limits\.memoryMb.*at most/],
    [{ language: 'python', files: [{ name: 'a.py', content: '' }], limits: { wallMs: 'x' } }, /limits\.wallMs/],
    [{ language: 'python', files: [{ name: 'a.py', content: '' }], limits: { disk: 1 } }, /limits\.disk/],
    [{ language: 'python', files: [{ name: 'a.py', content: '' }], stdin: 3 }, /stdin/],
    [{ language: 'python', files: [{ name: 'a.py', content: '' }], args: [1] }, /args/],
    [{ language: 'python', files: [{ name: 'a.py', content: '' }], template: 'nope' }, /template/],
    [{ language: 'python', files: [{ name: 'a.py', content: '' }], colour: 'red' }, /colour/],
    [[1, 2], /body/],
  ];
  for (const [body, field] of bad) {
    const r = await postRun(t.app, body);
    assert.equal(r.status, 400, JSON.stringify(body));
    assert.match(r.body.error.message, field, JSON.stringify(body));
    assert.match(r.body.error.code, /^[a-z_]+$/);
  }
  const notJson = await t.app.inject({ method: 'POST', url: '/v1/runs', headers: { 'content-type': 'application/json' }, payload: '{"language":' });
  assert.equal(notJson.statusCode, 400);
  assert.equal(notJson.json().error.code, 'invalid_json');
  assert.equal(notJson.json().error.message, 'body: not valid JSON');
  // Keys that could reach a prototype are refused by name, in any content type we read as JSON, at any depth.
  const poisoned: [string, string][] = [
    ['{"__proto__":{"admin":true},"language":"python"}', '"__proto__"'],
    ['{"language":"python","files":[{"name":"a.py","content":"","x":{"__proto__":1}}]}', '"__proto__"'],
    ['{"constructor":{"prototype":{"admin":true}}}', '"constructor.prototype"'],
  ];
  for (const [payload, key] of poisoned) {
    for (const type of ['application/json', 'application/x-www-form-urlencoded']) {
      const r = await t.app.inject({ method: 'POST', url: '/v1/runs', headers: { 'content-type': type }, payload });
      assert.equal(r.statusCode, 400, payload);
      assert.equal(r.json().error.message, `body: the key ${key} is not allowed`, `${type} ${payload}`);
    }
  }
  for (const payload of ['', '  \n']) {
    const r = await t.app.inject({ method: 'POST', url: '/v1/runs', headers: { 'content-type': 'application/json' }, payload });
    assert.equal(r.statusCode, 400);
    assert.equal(r.json().error.message, 'body: empty, expected a JSON object');
  }
  // A key merely named like one is read, and judged as any other field.
  const named = await postRun(t.app, { language: 'bash', files: [{ name: 'a.sh', content: 'echo ok' }], constructor: 1 });
  assert.match(named.body.error.message, /^constructor: unknown field/);
  const big = await t.app.inject({ method: 'POST', url: '/v1/runs', headers: { 'content-type': 'application/json' }, payload: JSON.stringify({ language: 'python', files: [{ name: 'a.py', content: 'x'.repeat(11 << 20) }] }) });
  assert.equal(big.statusCode, 413);
  assert.equal(big.json().error.code, 'body_too_large');
  const missing = await t.app.inject({ url: '/v1/runs/00000000-0000-0000-0000-000000000000' });
  assert.equal(missing.statusCode, 404);
  // The service still works.
  assert.equal((await postRun(t.app, { language: 'bash', files: [{ name: 'a.sh', content: 'echo ok' }] })).body.verdict, 'ok');
});

test('a known path with the wrong method answers 405 naming the methods it has, in Allow too; an unknown path 404', async () => {
  const cases: [string, string, string][] = [
    ['DELETE', '/v1/runs', 'POST'],
    ['PUT', '/v1/runs/00000000-0000-0000-0000-000000000000', 'GET, HEAD'],
    ['POST', '/v1/sessions/x/files/a/b.txt', 'GET, HEAD, PUT'],
    ['PATCH', '/v1/tokens/tok_x', 'DELETE'],
  ];
  for (const [method, url, allow] of cases) {
    const r = await t.app.inject({ method: method as 'GET', url });
    assert.equal(r.statusCode, 405, `${method} ${url}`);
    assert.equal(r.headers.allow, allow);
    assert.equal(r.json().error.code, 'method_not_allowed');
    assert.match(r.json().error.message, new RegExp(`${method} is not allowed on ${url.replace(/[.]/g, '\\.')}; use ${allow}`));
  }
  const unknown = await t.app.inject({ method: 'GET', url: '/v1/runz?x=1' });
  assert.equal(unknown.statusCode, 404);
  assert.equal(unknown.headers.allow, undefined);
  assert.match(unknown.json().error.message, /no route GET \/v1\/runz$/);
});

test('a body sent as curl -d sends it (form content type) is read as JSON', async () => {
  const res = await t.app.inject({
    method: 'POST',
    url: '/v1/runs',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    payload: '{"language":"python","files":[{"name":"main.py","content":"print(42)"}]}',
  });
  assert.equal(res.statusCode, 200);
  assert.equal(res.json().run.stdout, '42\n');
});

test('languages, templates, info, health, metrics and docs answer', async () => {
  const langs = (await t.app.inject({ url: '/v1/languages' })).json();
  const py = langs.find((l: { name: string }) => l.name === 'python');
  assert.match(py.version, /Python 3/);
  assert.equal(py.compiled, false);
  assert.equal(langs.find((l: { name: string }) => l.name === 'rust').compiled, true);
  assert.ok((await t.app.inject({ url: '/v1/templates' })).json().some((x: { name: string }) => x.name === 'host'));
  const info = (await t.app.inject({ url: '/v1/info' })).json();
  assert.equal(info.runtimes.find((r: { runtime: string }) => r.runtime === 'process').ok, true);
  assert.ok(info.budget.cpuTotal > 0);
  assert.equal((await t.app.inject({ url: '/healthz' })).statusCode, 200);
  assert.equal((await t.app.inject({ url: '/readyz' })).statusCode, 200);
  const metrics = (await t.app.inject({ url: '/metrics' })).body;
  assert.match(metrics, /kiln_runs_total\{language="python",verdict="ok"\} \d+/);
  assert.match(metrics, /kiln_run_queue_depth 0/);
  assert.match(metrics, /kiln_run_duration_seconds_bucket/);
  // Node's own figures, the event-loop lag among them (sampled by a timer of kiln's choosing).
  assert.match(metrics, /kiln_process_nodejs_eventloop_lag_p99_seconds \d/);
  assert.equal((await t.app.inject({ url: '/docs/json' })).json().paths['/v1/runs'] !== undefined, true);
});

test('GET /v1/info reuses a recent round of runtime checks instead of starting sandboxes per request', async () => {
  const proc = t.kiln.runtimes.get('process');
  const check = proc.check;
  let calls = 0;
  proc.check = async () => {
    calls++;
    return check.call(proc);
  };
  try {
    const fresh = await t.kiln.runtimes.checkAll(0); // a new round, as kiln doctor asks
    assert.equal(calls, 1);
    const answers = await Promise.all(Array.from({ length: 5 }, () => t.app.inject({ url: '/v1/info' })));
    for (const a of answers) assert.deepEqual(a.json().runtimes, fresh);
    assert.equal(calls, 1, 'five info requests within the reuse window ran no new check');
  } finally {
    proc.check = check;
  }
});

test('the queue limit answers 429 with Retry-After', async () => {
  const q = await startTestKiln(testConfig({ runs: { concurrency: 1, queueMax: 1 } }));
  try {
    const slow = { language: 'bash', files: [{ name: 'a.sh', content: 'sleep 1' }], wait: false };
    const answers = [];
    for (let i = 0; i < 4; i++) answers.push(await postRun(q.app, slow));
    const codes = answers.map((a) => a.status);
    assert.deepEqual(codes, [202, 202, 429, 429]);
    assert.equal(answers[2]!.headers['retry-after'], '1');
    assert.equal(answers[2]!.body.error.code, 'queue_full');
    await q.kiln.runs.waitDone(answers[1]!.body.id);
  } finally {
    await q.close();
  }
});

test('a restart keeps finished runs and marks interrupted ones internal_error', async () => {
  const config = testConfig();
  const first = await startTestKiln(config);
  const done = await postRun(first.app, { language: 'python', files: [{ name: 'main.py', content: 'print("kept")' }] });
  // Play a crash: a run left "running" in the store by a server that died.
  await first.kiln.db.insertInto('runs').values({ id: 'interrupted-1', language: 'python', template: 'host', status: 'running', verdict: null, request: '{}', compile: null, run: null, error: null, created_at: new Date().toISOString(), started_at: new Date().toISOString(), finished_at: null, owner: 'local' }).execute();
  await first.close({ keepData: true });
  const second = await startTestKiln(config);
  try {
    assert.equal(second.kiln.recovered.interruptedRuns, 1);
    const kept = (await second.app.inject({ url: `/v1/runs/${done.body.id}` })).json();
    assert.equal(kept.run.stdout, 'kept\n');
    const lost = (await second.app.inject({ url: '/v1/runs/interrupted-1' })).json();
    assert.equal(lost.status, 'done');
    assert.equal(lost.verdict, 'internal_error');
  } finally {
    await second.close();
  }
});

for (const runtime of ['docker', 'gvisor']) {
  test(`python on the ${runtime} runtime: by language and by template, with verdicts from the kernel`, async () => {
    const hello = await postRun(t.app, { language: `python-${runtime}`, files: [{ name: 'main.py', content: `print("hello from ${runtime}")` }] });
    assert.equal(hello.body.verdict, 'ok', JSON.stringify(hello.body));
    assert.equal(hello.body.run.stdout, `hello from ${runtime}\n`);
    assert.equal(hello.body.template, `py-${runtime}`);
    const byTemplate = await postRun(t.app, { language: 'python', template: `py-${runtime}`, files: [{ name: 'main.py', content: 'import sys; print(sys.version_info[0])' }] });
    assert.equal(byTemplate.body.run.stdout, '3\n');
    const cases: [string, object, string][] = [
      ['while True: pass', { wallMs: 500, cpuMs: 400 }, 'timeout'],
      ['x = bytearray(1 << 30)', { memoryMb: 64 }, 'memory_limit'],
      ['import sys\nwhile True: sys.stdout.write("z" * 65536)', { outputBytes: 100000 }, 'output_limit'],
      ['import socket\ns = socket.socket(); s.settimeout(1); s.connect(("127.0.0.1", 7070))', {}, 'runtime_error'],
    ];
    for (const [content, limits, verdict] of cases) {
      const r = await postRun(t.app, { language: `python-${runtime}`, files: [{ name: 'main.py', content }], limits });
      assert.equal(r.body.verdict, verdict, `${runtime}: ${content}`);
    }
  });
}

test("from inside a run, the server's own port is unreachable, and a fork bomb leaves the server answering", async () => {
  const address = t.app.server.listening ? t.app.server.address() : (await t.app.listen({ port: 0, host: '127.0.0.1' }), t.app.server.address());
  const port = (address as { port: number }).port;
  const probe = `import socket\ns = socket.socket(); s.settimeout(1)\ntry:\n    s.connect(("127.0.0.1", ${port})); print("reached")\nexcept OSError:\n    print("blocked")`;
  for (const language of ['python', 'python-docker']) {
    const r = await postRun(t.app, { language, files: [{ name: 'main.py', content: probe }] });
    assert.equal(r.body.run.stdout, 'blocked\n', `${language}: ${JSON.stringify(r.body)}`);
  }
  const bomb = postRun(t.app, { language: 'bash', files: [{ name: 'a.sh', content: 'b() { b | b & }; b; sleep 2' }], limits: { pids: 32, wallMs: 2000 } });
  await new Promise((r) => setTimeout(r, 300));
  const health = await fetch(`http://127.0.0.1:${port}/healthz`);
  assert.equal(health.status, 200);
  assert.ok(['timeout', 'ok', 'runtime_error'].includes((await bomb).body.verdict));
});
