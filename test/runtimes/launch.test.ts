/**
 * The process runtime's spawn (src/runtimes/process/launch.ts and spawn.c):
 * pipes on fds 0-3, exact environment, exit codes and signals, defaults for
 * signals node ignores, no kiln fd reaching a child, and clean failures.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { test } from 'node:test';
import { KilnError } from '../../src/errors.js';
import { addonLoader } from '../../src/runtimes/addon.js';
import { decodeExit } from '../../src/runtimes/kernel.js';
import { launch, SPAWN_ADDON, spawnProblem, type Launched } from '../../src/runtimes/process/launch.js';
import { netnsProblem } from '../../src/runtimes/netns.js';

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
  const missing = addonLoader<object>('/nonexistent/kiln-x.node', 'the test addon', []);
  assert.throws(
    () => missing.load(),
    (e: unknown) => e instanceof KilnError && e.status === 503 && e.code === 'runtime_unavailable' && e.message === 'the test addon /nonexistent/kiln-x.node is missing: run scripts/setup, which builds it',
  );
  assert.equal(missing.problem(), 'the test addon /nonexistent/kiln-x.node is missing: run scripts/setup, which builds it');
  // Both of kiln's are built by scripts/setup: CI fails here if it did not build them.
  assert.equal(spawnProblem(), undefined);
  assert.equal(addonLoader<{ spawn: unknown }>(SPAWN_ADDON, 'the spawn addon', ['spawn']).load().spawn instanceof Function, true);
  assert.equal(netnsProblem(), undefined);
});

test('launch: a signal is named as node names it (SIGABRT, not its alias SIGIOT), and so is a bwrap status of 128 + N', async () => {
  for (const sig of ['ABRT', 'IO', 'TERM'] as const) {
    const r = await collect(launch(['/bin/sh', '-c', `kill -${sig} $$`], ENV, { stdin: false }));
    assert.deepEqual([r.code, r.signal], [null, `SIG${sig}`]);
  }
  assert.deepEqual(decodeExit(128 + 6, null, false), { exitCode: null, signal: 'SIGABRT' });
});

test('launch: if the spawn cannot be set up whole, it fails and starts nothing (no closefrom, no waiter thread)', () => {
  // Shims standing in for an out-of-memory file action and a thread limit, preloaded into a kiln of their own.
  const dir = mkdtempSync(join(tmpdir(), 'kiln-shim-'));
  const shim = join(dir, 'shim.c');
  writeFileSync(
    shim,
    `#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <spawn.h>
#include <stdlib.h>
int posix_spawn_file_actions_addclosefrom_np(posix_spawn_file_actions_t *a, int from) {
  static int (*real)(posix_spawn_file_actions_t *, int);
  if (!real) real = (int (*)(posix_spawn_file_actions_t *, int))dlsym(RTLD_NEXT, "posix_spawn_file_actions_addclosefrom_np");
  return getenv("SHIM_CLOSEFROM") ? ENOMEM : real(a, from);
}
int pthread_create(pthread_t *t, const pthread_attr_t *a, void *(*f)(void *), void *arg) {
  static int (*real)(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *);
  if (!real) real = (int (*)(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *))dlsym(RTLD_NEXT, "pthread_create");
  size_t size = 0;
  if (getenv("SHIM_THREAD") && a && pthread_attr_getstacksize(a, &size) == 0 && size == 64 * 1024) return EAGAIN;
  return real(t, a, f, arg);
}
`,
  );
  const so = join(dir, 'shim.so');
  const cc = spawnSync('gcc', ['-shared', '-fPIC', '-o', so, shim, '-ldl'], { encoding: 'utf8' });
  assert.equal(cc.status, 0, cc.stderr);
  const script = `
    import { launch } from ${JSON.stringify(new URL('../../src/runtimes/process/launch.ts', import.meta.url).href)};
    import { readdirSync } from 'node:fs';
    const before = readdirSync('/proc/self/fd').length;
    let out;
    try { launch(['/bin/touch', '${dir}/ran'], { PATH: '/bin' }, { stdin: true }); out = 'started'; } catch (e) { out = e.code + ': ' + e.message; }
    setTimeout(() => process.stdout.write(JSON.stringify({ out, fdsLeft: readdirSync('/proc/self/fd').length - before })), 200);
  `;
  for (const [flag, message] of [['SHIM_CLOSEFROM', /sandbox_failed: process runtime: posix_spawn \/bin\/touch: Cannot allocate memory/], ['SHIM_THREAD', /sandbox_failed: process runtime: spawn: cannot start a thread to wait for the child: /]] as const) {
    const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { encoding: 'utf8', env: { ...process.env, LD_PRELOAD: so, [flag]: '1' } });
    assert.equal(r.status, 0, r.stderr);
    const { out, fdsLeft } = JSON.parse(r.stdout) as { out: string; fdsLeft: number };
    assert.match(out, message, flag);
    assert.equal(fdsLeft, 0, `${flag}: fds left open`);
    // The thread case started the child before it failed: it must have been killed before it could run.
    if (flag === 'SHIM_CLOSEFROM') assert.equal(existsSync(join(dir, 'ran')), false, 'the program ran');
  }
  rmSync(dir, { recursive: true, force: true });
});

test('launch: only on the main thread (a worker\'s teardown would free what the exit threads hold)', async () => {
  const url = new URL('../../src/runtimes/process/launch.ts', import.meta.url).href;
  const code = `
    const { parentPort } = require('node:worker_threads');
    import(${JSON.stringify(import.meta.resolve('tsx/esm/api'))})
      .then(({ register }) => (register(), import(${JSON.stringify(url)})))
      .then(({ launch }) => {
      try { launch(['/bin/true'], {}, { stdin: false }); parentPort.postMessage('started'); }
      catch (e) { parentPort.postMessage(e.message); }
    }, (e) => parentPort.postMessage('import failed: ' + e.message));
  `;
  const worker = new Worker(code, { eval: true });
  const said = await new Promise((resolve) => worker.once('message', resolve));
  await worker.terminate();
  assert.equal(said, 'launch() runs on the main thread only');
});

test('addons: one that cannot be loaded (not an addon, or built for another node) is a 503 that says to rebuild it', () => {
  const notAddon = addonLoader<object>('/etc/hostname', 'the test addon', []);
  assert.throws(
    () => notAddon.load(),
    (e: unknown) => e instanceof KilnError && e.status === 503 && /^the test addon \/etc\/hostname cannot be loaded \(.+\): run scripts\/setup, which rebuilds it$/.test(e.message),
  );
});

test('addons: one built from an older source, without a function kiln needs, is a 503 that says to rebuild it', () => {
  const old = addonLoader<{ spawn: unknown; fly: unknown }>(SPAWN_ADDON, 'the spawn addon', ['spawn', 'fly']);
  const message = `the spawn addon ${SPAWN_ADDON} is out of date (no fly): run scripts/setup, which rebuilds it`;
  assert.throws(() => old.load(), (e: unknown) => e instanceof KilnError && e.status === 503 && e.message === message);
  assert.equal(old.problem(), message);
});
