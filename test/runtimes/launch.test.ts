/**
 * The process runtime's spawn (src/runtimes/process/launch.ts and spawn.c):
 * pipes on fds 0-3, exact environment, exit codes and signals, defaults for
 * signals node ignores, no kiln fd reaching a child, and clean failures.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { test } from 'node:test';
import { KilnError } from '../../src/errors.js';
import { addonLoader } from '../../src/runtimes/addon.js';
import { launch, SPAWN_ADDON, spawnProblem, type Launched } from '../../src/runtimes/process/launch.js';

const ENV = { PATH: '/usr/bin:/bin' };

/** Everything the child wrote to fds 1, 2 and 3, and how it ended, once `close` came. */
function collect(child: Launched): Promise<{ stdout: string; stderr: string; status: string; code: number | null; signal: NodeJS.Signals | null }> {
  let stdout = '';
  let stderr = '';
  let status = '';
  child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  child.status.on('data', (c: Buffer) => (status += c.toString()));
  return new Promise((resolve) => child.once('close', (code, signal) => resolve({ stdout, stderr, status, code, signal })));
}

const openFds = () => readdirSync('/proc/self/fd').length;

test('launch: stdin, stdout, stderr and fd 3 are pipes to kiln; the exit code comes with close', async () => {
  const child = launch(['/bin/sh', '-c', 'cat; echo to-stderr >&2; echo to-status >&3; exit 7'], ENV, { stdin: true });
  assert.ok(child.pid > 0);
  const done = collect(child);
  child.stdin!.end('hello\n');
  assert.deepEqual(await done, { stdout: 'hello\n', stderr: 'to-stderr\n', status: 'to-status\n', code: 7, signal: null });
  assert.equal(child.exitCode, 7);
});

test('launch: without a stdin pipe the child reads /dev/null', async () => {
  const child = launch(['/bin/sh', '-c', 'cat; readlink /proc/self/fd/0'], ENV, { stdin: false });
  assert.equal(child.stdin, undefined);
  const r = await collect(child);
  assert.equal(r.stdout, '/dev/null\n');
  assert.equal(r.code, 0);
});

test('launch: the child gets exactly the environment given', async () => {
  const r = await collect(launch(['/usr/bin/env'], { PATH: '/bin', ONE: 'a=b c' }, { stdin: false }));
  assert.deepEqual(r.stdout.trim().split('\n').sort(), ['ONE=a=b c', 'PATH=/bin']);
});

test('launch: kill ends the child and its signal is reported; after that kill does nothing', async () => {
  const child = launch(['/bin/sleep', '30'], ENV, { stdin: false });
  const done = collect(child);
  assert.equal(child.kill('SIGKILL'), true);
  const r = await done;
  assert.equal(r.code, null);
  assert.equal(r.signal, 'SIGKILL');
  assert.equal(child.kill('SIGKILL'), false);
});

test('launch: signals start at their defaults and unblocked (node ignores SIGPIPE; a child must not)', async () => {
  const r = await collect(launch(['/bin/cat', '/proc/self/status'], ENV, { stdin: false }));
  const field = (name: string) => new RegExp(`^${name}:\\s*([0-9a-f]+)$`, 'm').exec(r.stdout)?.[1];
  assert.equal(field('SigIgn'), '0000000000000000');
  assert.equal(field('SigBlk'), '0000000000000000');
});

test('launch: a child has fds 0-3 only: not another child\'s pipes, nor an fd kiln inherited without close-on-exec', async () => {
  // A kiln whose fd 100 came from its parent without close-on-exec (as a shell or supervisor may leave one).
  const script = `
    import { readFileSync } from 'node:fs';
    import { launch } from ${JSON.stringify(new URL('../../src/runtimes/process/launch.ts', import.meta.url).href)};
    const flags = /flags:\\s*(\\d+)/.exec(readFileSync('/proc/self/fdinfo/100', 'utf8'))[1];
    const other = launch(['/bin/sleep', '30'], { PATH: '/bin' }, { stdin: true });
    const child = launch(['/bin/ls', '-l', '/proc/self/fd'], { PATH: '/bin' }, { stdin: true });
    let out = '';
    child.stdout.on('data', (c) => (out += c));
    child.once('close', () => { other.kill('SIGKILL'); process.stdout.write(JSON.stringify({ flags, out })); });
  `;
  const r = spawnSync('/bin/bash', ['-c', 'exec "$0" --import tsx --input-type=module -e "$1" 100</dev/null', process.execPath, script], { stdio: ['ignore', 'pipe', 'inherit'], encoding: 'utf8' });
  const { flags, out } = JSON.parse(r.stdout) as { flags: string; out: string };
  assert.equal(parseInt(flags, 8) & 0o2000000, 0, 'the test\'s own fd 100 should lack close-on-exec');
  const lines = out.trim().split('\n').filter((l) => l.includes(' -> '));
  const fds = lines.map((l) => Number(/ (\d+) -> /.exec(l)![1])).sort((a, b) => a - b);
  // ls opens the directory it lists: one fd more than the four it was given.
  assert.equal(fds.length, 5, `the child's fds:\n${lines.join('\n')}`);
  assert.deepEqual(fds.slice(0, 4), [0, 1, 2, 3]);
  assert.ok(lines.some((l) => l.includes(` ${fds[4]} -> /proc/`) && l.endsWith('/fd')), `the fifth fd is not ls's own:\n${lines.join('\n')}`);
});

test('launch: a program that cannot start is a clear error, and leaves no fd behind', () => {
  const before = openFds();
  assert.throws(
    () => launch(['/nonexistent/kiln-launch', '--x'], ENV, { stdin: true }),
    (e: unknown) => e instanceof KilnError && e.code === 'sandbox_failed' && /\/nonexistent\/kiln-launch.*No such file/.test(e.message),
  );
  assert.equal(openFds(), before);
});

test('launch: 50 children at once all end, reaped, with every fd closed', async () => {
  const before = openFds();
  const children = Array.from({ length: 50 }, (_, i) => launch(['/bin/sh', '-c', `echo ${i}; exit ${i % 3}`], ENV, { stdin: i % 2 === 0 }));
  const results = await Promise.all(children.map(collect));
  results.forEach((r, i) => {
    assert.equal(r.stdout, `${i}\n`);
    assert.equal(r.code, i % 3);
  });
  // The sockets close their fds as they end; give the last closes a turn of the loop.
  await new Promise((r) => setImmediate(r));
  assert.equal(openFds(), before, `fds now: ${readdirSync('/proc/self/fd').join(' ')}`);
  // Reaped: none of them is still this process's child (a zombie would be).
  const left = children.filter((c) => {
    try {
      const stat = readFileSync(`/proc/${c.pid}/stat`, 'utf8');
      return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === process.pid;
    } catch {
      return false;
    }
  });
  assert.deepEqual(left.map((c) => c.pid), [], 'children not reaped');
});

test('addons: a missing one is a 503 naming its path and scripts/setup, and doctor reads the same reason', () => {
  const missing = addonLoader<object>('/nonexistent/kiln-x.node', 'the test addon');
  assert.throws(
    () => missing.load(),
    (e: unknown) => e instanceof KilnError && e.status === 503 && e.code === 'runtime_unavailable' && e.message === 'the test addon /nonexistent/kiln-x.node is missing: run scripts/setup, which builds it',
  );
  assert.equal(missing.problem(), 'the test addon /nonexistent/kiln-x.node is missing: run scripts/setup, which builds it');
  // Both of kiln's are built by scripts/setup: CI fails here if it did not build them.
  assert.equal(spawnProblem(), undefined);
  assert.equal(addonLoader<{ spawn: unknown }>(SPAWN_ADDON, 'the spawn addon').load().spawn instanceof Function, true);
});
