/** The `kiln` command as a user runs it: real processes, real sandboxes, a real server on loopback. */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, readFileSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const CLI = ['--import', import.meta.resolve('tsx'), join(import.meta.dirname, '..', 'src', 'cli', 'dev.ts')];
const dir = mkdtempSync(join(tmpdir(), 'kiln-cli-'));
after(() => rmSync(dir, { recursive: true, force: true }));

function kiln(args: string[], env: Record<string, string> = {}) {
  return spawnSync(process.execPath, [...CLI, ...args], { cwd: dir, encoding: 'utf8', env: { ...process.env, ...env }, timeout: 120_000 });
}

test('kiln run hello.c compiles, runs, prints output and the verdict, exits with the program code', () => {
  writeFileSync(join(dir, 'hello.c'), '#include <stdio.h>\nint main(void){ printf("hi from c\\n"); return 3; }\n');
  const r = kiln(['run', 'hello.c']);
  assert.equal(r.stdout, 'hi from c\n', r.stderr);
  assert.match(r.stderr, /kiln: verdict runtime_error · exit 3 · \d+ ms wall · \d+ ms cpu · [\d.]+ MiB/);
  assert.equal(r.status, 3);
});

test('kiln run picks the language by extension, passes stdin, and reports a timeout', () => {
  writeFileSync(join(dir, 'echo.py'), 'import sys; print(sys.stdin.read()[::-1])\n');
  const r = kiln(['run', 'echo.py', '--stdin', 'abc']);
  assert.equal(r.stdout, 'cba\n');
  writeFileSync(join(dir, 'reverse-me.txt'), 'xyz');
  assert.equal(kiln(['run', 'echo.py', '--stdin-file', 'reverse-me.txt']).stdout, 'zyx\n');
  assert.match(r.stderr, /verdict ok · exit 0/);
  assert.equal(r.status, 0);
  writeFileSync(join(dir, 'loop.sh'), 'while :; do :; done\n');
  const config = join(dir, 'fast.yaml');
  writeFileSync(config, 'runs: { defaults: { wallMs: 300, cpuMs: 300, memoryMb: 64, pids: 16, outputBytes: 1000 } }\n');
  const slow = kiln(['run', 'loop.sh', '--config', config]);
  assert.match(slow.stderr, /verdict timeout/);
  assert.notEqual(slow.status, 0);
});

test('bad input on the CLI: one line, non-zero exit', () => {
  const unknownExt = kiln(['run', 'nothing.xyz']);
  assert.notEqual(unknownExt.status, 0);
  assert.equal(unknownExt.stderr.trim().split('\n').length, 1, unknownExt.stderr);
  const missing = kiln(['run', 'missing.py']);
  assert.match(missing.stderr, /^kiln: cannot read missing.py: ENOENT\n$/);
  assert.equal(missing.status, 2);
  // Usage errors: one line, exit 2, not the whole help text.
  for (const args of [['session', 'create'], ['session', 'create', 'demo-web', '--bogus'], ['nosuch']]) {
    const usage = kiln(args);
    assert.equal(usage.status, 2, args.join(' '));
    assert.match(usage.stderr, /^kiln: [^\n]+\n$/, usage.stderr);
  }
  assert.equal(kiln(['--version']).status, 0);
  const badPort = kiln(['serve', '--port', 'http']);
  assert.match(badPort.stderr, /^kiln: --port/);
  const badConfig = join(dir, 'bad.yaml');
  writeFileSync(badConfig, 'runs: { concurency: 2 }\n');
  const r = kiln(['config', '--config', badConfig]);
  assert.match(r.stderr, /bad\.yaml: unknown key "runs\.concurency"/);
  assert.equal(r.status, 2);
});

test('kiln doctor and kiln config', () => {
  const d = kiln(['doctor']);
  assert.match(d.stdout, /^ok +process/m, d.stdout + d.stderr);
  assert.match(d.stdout, /^ok +proxy +plain TCP read and written natively/m, d.stdout);
  // scripts/setup (run before the tests) sets favordynmods where the host lets it.
  assert.match(d.stdout, /^ok +cgroups +favordynmods/m, d.stdout);
  assert.equal(d.status, 0);
  const c = kiln(['config', '--port', '7171']);
  assert.match(c.stdout, /port: 7171/);
  assert.doesNotMatch(c.stdout, /[&*]a\d/, 'every template spelled out, no YAML anchors or aliases');
  assert.match(c.stdout, /\n  demo-docker:\n(    .*\n)*    command:\n      - python3\n/, 'a shared default is written where it applies');
  // Secret env reaches the sandbox, never the printed config.
  const file = join(dir, 'secret.yaml');
  writeFileSync(file, 'templates:\n  host: { runtime: process, env: { PLAIN: visible }, secretEnv: { API_KEY: s3cr3t-value } }\n');
  const shown = kiln(['config', '--config', file]);
  assert.match(shown.stdout, /API_KEY: "\*\*\*"/);
  assert.match(shown.stdout, /PLAIN: visible/);
  assert.ok(!shown.stdout.includes('s3cr3t-value'));
  writeFileSync(join(dir, 'env.py'), 'import os; print(os.environ["API_KEY"])\n');
  assert.equal(kiln(['run', 'env.py', '--config', file]).stdout, 's3cr3t-value\n');
});

test('kiln serve answers over HTTP and kiln runs create talks to it', async () => {
  const port = String(17000 + Math.floor(Math.random() * 1000));
  const server = spawn(process.execPath, [...CLI, 'serve', '--port', port, '--data-dir', join(dir, 'data')], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  server.stdout.on('data', (c) => (log += c));
  server.stderr.on('data', (c) => (log += c));
  try {
    const url = `http://127.0.0.1:${port}`;
    for (let i = 0; i < 200; i++) {
      if (await fetch(`${url}/healthz`).then((r) => r.ok, () => false)) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    const res = await fetch(`${url}/v1/runs`, { method: 'POST', body: '{"language":"python","files":[{"name":"main.py","content":"print(42)"}]}' });
    const posted = await res.json();
    assert.equal(posted.run.stdout, '42\n', log);
    writeFileSync(join(dir, 'r.py'), 'print("remote")\n');
    const remote = await new Promise<{ code: number | null; out: string; err: string }>((resolve) => {
      const c = spawn(process.execPath, [...CLI, 'runs', 'create', 'r.py', '-l', 'python'], { cwd: dir, env: { ...process.env, KILN_URL: url } });
      let out = '';
      let err = '';
      c.stdout.on('data', (x) => (out += x));
      c.stderr.on('data', (x) => (err += x));
      c.on('close', (code) => resolve({ code, out, err }));
    });
    assert.equal(remote.out, 'remote\n', remote.err);
    assert.equal(remote.code, 0);
    // Sessions from the CLI.
    const cli = (args: string[], input?: string) =>
      new Promise<{ code: number | null; out: string; err: string }>((resolve) => {
        const c = spawn(process.execPath, [...CLI, ...args], { cwd: dir, env: { ...process.env, KILN_URL: url } });
        if (input !== undefined) c.stdin.end(input);
        let out = '';
        let err = '';
        c.stdout.on('data', (x) => (out += x));
        c.stderr.on('data', (x) => (err += x));
        c.on('close', (code) => resolve({ code, out, err }));
      });
    const created = await cli(['session', 'create', 'demo-web', '--env', 'GREETING=hi', '--metadata', 'course=cs101', 'seat=12']);
    assert.equal(created.code, 0, created.err);
    const [id, , link] = created.out.trim().split(' ');
    assert.match(link!, new RegExp(`^${url}/s/[A-Za-z0-9_-]{22}/$`));
    assert.equal((await fetch(link!)).status, 200, 'the printed URL serves the app (waiting for a cold start)');
    const ls = await cli(['session', 'ls']);
    assert.match(ls.out, /^ID\s+TEMPLATE\s+STATUS\s+REASON\s+CREATED\s+URL\n/, 'a header line first');
    assert.match(ls.out, new RegExp(`\n${id}\\s+demo-web\\s+ready\\s+\\S+\\s+${link}\n`), 'a live session shows its URL');
    const lsJson = JSON.parse((await cli(['session', 'ls', '--json'])).out) as { id: string; url: string }[];
    assert.equal(lsJson.find((s) => s.id === id)?.url, new URL(link!).pathname);
    const ex = await cli(['session', 'exec', id!, '--', 'sh', '-c', 'echo from-session; exit 4']);
    assert.equal(ex.out, 'from-session\n');
    assert.equal(ex.code, 4);
    assert.deepEqual(JSON.parse((await cli(['session', 'get', id!])).out).metadata, { course: 'cs101', seat: '12' });
    // Standard input from a pipe or a file, as a judge or a script would pass it.
    const piped = await cli(['session', 'exec', id!, '--stdin-file', '-', '--', 'sh', '-c', 'tr a-z A-Z; echo "$GREETING"'], 'from a pipe\n');
    assert.deepEqual([piped.code, piped.out], [0, 'FROM A PIPE\nhi\n']);
    writeFileSync(join(dir, 'input.txt'), 'from a file\n');
    assert.equal((await cli(['session', 'exec', id!, '--stdin-file', 'input.txt', '--', 'cat'])).out, 'from a file\n');
    for (const [args, message] of [
      [['--stdin', 'x', '--stdin-file', 'input.txt'], 'kiln: give --stdin or --stdin-file, not both\n'],
      [['--stdin-file', 'no-such.txt'], 'kiln: --stdin-file: cannot read no-such.txt: ENOENT\n'],
      [['--timeout', '1e3'], 'kiln: --timeout: "1e3" is not a whole number of milliseconds\n'],
    ] as const) {
      assert.deepEqual(await cli(['session', 'exec', id!, ...args, '--', 'true']), { code: 2, out: '', err: message }, args.join(' '));
    }
    const slow = await cli(['session', 'exec', id!, '--timeout', '200', '--', 'sleep', '5']);
    assert.deepEqual([slow.code, slow.err], [137, 'kiln: killed: time limit (wall_timeout)\n']);
    assert.deepEqual(await cli(['session', 'open', 'nope']), { code: 2, out: '', err: 'kiln: no template named nope here\n' });
    const hex = await cli(['session', 'create', 'demo-web', '--idle', '0x10']);
    assert.deepEqual([hex.code, hex.err], [2, 'kiln: --idle: "0x10" is not a whole number of seconds\n']);
    // Files both ways: in from a file, out to stdout and into a directory under the file's name.
    writeFileSync(join(dir, 'in.txt'), 'to the session\n');
    assert.deepEqual(await cli(['session', 'cp', 'in.txt', `${id}:data/in.txt`]), { code: 0, out: '', err: '' });
    assert.equal((await cli(['session', 'exec', id!, '--', 'cat', 'data/in.txt'])).out, 'to the session\n');
    assert.equal((await cli(['session', 'cp', `${id}:data/in.txt`, '-'])).out, 'to the session\n');
    mkdirSync(join(dir, 'out'), { recursive: true });
    assert.equal((await cli(['session', 'cp', `${id}:data/in.txt`, 'out'])).code, 0);
    assert.equal(readFileSync(join(dir, 'out', 'in.txt'), 'utf8'), 'to the session\n');
    for (const [args, message] of [
      [['in.txt', 'out/x'], /^kiln: cp: exactly one of <from> and <to> must be in a session/],
      [[`${id}:nope.txt`, '-'], /^kiln: file "nope.txt" does not exist\n$/],
      [['no-such-file', `${id}:x`], /^kiln: cp: cannot read no-such-file: ENOENT\n$/],
      [['in.txt', `${id}:../x`], /^kiln: cp: \S+:\.\.\/x: the path must not contain empty, "\." or "\.\." segments/],
    ] as const) {
      const r = await cli(['session', 'cp', ...args]);
      assert.equal(r.code, 2, r.err);
      assert.match(r.err, message);
    }
    const opened = await cli(['session', 'open', 'demo-web']);
    assert.match(opened.out, new RegExp(`^${url}/s/[A-Za-z0-9_-]{22}/\n$`));
    // Watch, and end the session once watch has printed its first line (the current status).
    const watcher = spawn(process.execPath, [...CLI, 'session', 'watch', id!], { cwd: dir, env: { ...process.env, KILN_URL: url } });
    let watchedOut = '';
    const firstLine = new Promise<void>((resolve) => watcher.stdout.on('data', (c) => ((watchedOut += c), watchedOut.includes('\n') && resolve())));
    const watchEnded = new Promise<number | null>((resolve) => watcher.on('close', resolve));
    await Promise.race([firstLine, watchEnded]);
    const rm = await cli(['session', 'rm', id!]);
    assert.match(rm.out, /stopped \(deleted\)/);
    assert.equal(await watchEnded, 0);
    assert.match(watchedOut, /^\S+Z ready\n(.*\n)*\S+Z stopped \(deleted\)\n$/, 'the current status, then each change until the end');
    assert.deepEqual(JSON.parse((await cli(['session', 'get', id!])).out).stopReason, 'deleted');
    assert.match((await cli(['session', 'watch', id!, '--json'])).out, /^\{"event":"stopped","data":\{"id":/, 'an ended session: its end, at once');
    const after = await cli(['session', 'ls']);
    assert.match(after.out, new RegExp(`\n${id}\\s+demo-web\\s+stopped\\s+deleted\\s+\\S+\n`), 'an ended session shows its reason and no URL');
    const bad = await cli(['session', 'create', 'nope']);
    assert.equal(bad.code, 2);
    assert.match(bad.err, /^kiln: template: unknown template "nope"/);
    const unreachable = kiln(['runs', 'get', 'x'], { KILN_URL: 'http://127.0.0.1:1' });
    assert.match(unreachable.stderr, /^kiln: cannot reach the kiln server at http:\/\/127\.0\.0\.1:1/);
  } finally {
    server.kill('SIGTERM');
    await new Promise((r) => server.once('close', r));
  }
});

test('kiln token create|ls|revoke on the local store; the server takes the token; auth off on a public address is refused', async () => {
  const data = join(dir, 'auth-data');
  const refused = kiln(['serve', '--host', '0.0.0.0', '--port', '0', '--data-dir', data], { KILN_AUTH_ENABLED: 'false' });
  assert.equal(refused.status, 2);
  assert.match(refused.stderr, /^kiln: auth is off .* not loopback; turn it on .*kiln token create --scope admin\n$/);
  assert.equal(kiln(['token', 'ls', '--data-dir', data]).status, 2, 'no store yet: a clear error');

  const port = 17000 + Math.floor(Math.random() * 2000);
  const server = spawn(process.execPath, [...CLI, 'serve', '--port', String(port), '--data-dir', data], { cwd: dir, env: { ...process.env, KILN_AUTH_ENABLED: 'true', KILN_LOG_LEVEL: 'warn' }, stdio: ['ignore', 'pipe', 'pipe'] });
  try {
    const base = `http://127.0.0.1:${port}`;
    for (let i = 0; i < 200 && !(await fetch(`${base}/healthz`).then((r) => r.ok, () => false)); i++) await new Promise((r) => setTimeout(r, 100));
    const made = kiln(['token', 'create', '--data-dir', data, '--scope', 'runs:write', '--scope', 'runs:read', '--ttl', '30d', '--name', 'judge']);
    assert.equal(made.status, 0, made.stderr);
    const token = made.stdout.trim();
    assert.match(token, /^kiln_[A-Za-z0-9_-]{43}$/);
    assert.match(made.stderr, /token tok_[0-9a-f]{12} \(runs:write, runs:read\), expires 20\d\d-/);
    const ls = kiln(['token', 'ls', '--data-dir', data]);
    assert.match(ls.stdout, /tok_[0-9a-f]{12}\s+judge\s+runs:write,runs:read\s+active/);
    assert.ok(!ls.stdout.includes(token));
    writeFileSync(join(dir, 'six.py'), 'print(6)\n');
    const denied = kiln(['runs', 'create', 'six.py', '-l', 'python'], { KILN_URL: base, KILN_TOKEN: '' });
    assert.equal(denied.status, 2);
    assert.match(denied.stderr, /^kiln: credentials required/);
    const ok = kiln(['runs', 'create', 'six.py', '-l', 'python'], { KILN_URL: base, KILN_TOKEN: token });
    assert.equal(ok.stdout, '6\n', ok.stderr);
    const id = /tok_[0-9a-f]{12}/.exec(ls.stdout)![0];
    // A read-only view of the judge's runs: a token acting for it.
    const view = kiln(['token', 'create', '--data-dir', data, '--scope', 'runs:read', '--acts-for', id, '--name', 'judge-view']);
    assert.match(view.stderr, new RegExp(`\\(runs:read, acting for token:${id}\\)`), view.stderr);
    assert.match(kiln(['token', 'ls', '--data-dir', data]).stdout, new RegExp(`judge-view\\s+runs:read for token:${id}\\s+active`));
    const run = (await (await fetch(`${base}/v1/runs`, { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: JSON.stringify({ language: 'python', files: [{ name: 'a.py', content: 'print(7)' }] }) })).json()) as { id: string };
    const seen = kiln(['runs', 'get', run.id], { KILN_URL: base, KILN_TOKEN: view.stdout.trim() });
    assert.equal(seen.status, 0, seen.stderr);
    assert.match(seen.stdout, /"stdout": "7\\n"/);
    const unknown = kiln(['token', 'create', '--data-dir', data, '--scope', 'runs:read', '--acts-for', 'tok_000000000000']);
    assert.equal(unknown.status, 2);
    assert.equal(unknown.stderr, 'kiln: actsFor: no token tok_000000000000\n');
    assert.equal(kiln(['token', 'revoke', '--data-dir', data, id]).stdout, `${id} revoked\n`);
    const after = kiln(['runs', 'create', 'six.py', '-l', 'python'], { KILN_URL: base, KILN_TOKEN: token });
    assert.match(after.stderr, /^kiln: token unknown, revoked or expired/);
    assert.equal(kiln(['token', 'create', '--data-dir', data, '--scope', 'root']).status, 2);
  } finally {
    server.kill('SIGTERM');
    await new Promise((r) => server.on('close', r));
  }
});

test("kiln serve logs kiln's own warnings and counts pool refill failures", async () => {
  const port = 17000 + Math.floor(Math.random() * 1000);
  const file = join(dir, 'broken-pool.yaml');
  // A server that exits at once: its pool can never fill.
  writeFileSync(file, 'templates:\n  broken: { runtime: process, command: [sh, -c, "echo boom >&2; exit 1"], port: 8080, pool: { min: 1, max: 1 }, limits: { cpus: 0.1, memoryMb: 64, pids: 16 } }\n');
  const server = spawn(process.execPath, [...CLI, 'serve', '--port', String(port), '--config', file, '--data-dir', join(dir, 'data-broken')], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  server.stdout.on('data', (c) => (log += c));
  server.stderr.on('data', (c) => (log += c));
  try {
    let metrics = '';
    for (let i = 0; i < 150 && !/kiln_pool_refill_failures_total\{template="broken"\} [1-9]/.test(metrics); i++) {
      await new Promise((r) => setTimeout(r, 200));
      metrics = await fetch(`http://127.0.0.1:${port}/metrics`).then((r) => r.text(), () => '');
    }
    assert.match(metrics, /kiln_pool_refill_failures_total\{template="broken"\} [1-9]/);
    for (let i = 0; i < 50 && !log.includes('pool refill failed'); i++) await new Promise((r) => setTimeout(r, 100));
    assert.match(log, /pool refill failed/, log);
  } finally {
    server.kill('SIGTERM');
    await new Promise((r) => server.once('close', r));
  }
});
