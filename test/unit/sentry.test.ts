import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PidLineReader, execMemoryCap, sentryHostLimits, wrapWithPidLine } from '../../src/runtimes/gvisor/sentry.js';

function read(chunks: string[], end = true) {
  const rest: Buffer[] = [];
  const r = new PidLineReader((c) => rest.push(c));
  for (const c of chunks) r.push(Buffer.from(c));
  if (end) r.end();
  return { reader: r, rest: Buffer.concat(rest).toString() };
}

test('gvisor pid line: split off the front of stderr, even across chunks', async () => {
  const { reader, rest } = read(['kiln-exec-p', 'id 42\nboom', '\nmore']);
  assert.equal(await reader.pid, 42);
  assert.equal(rest, 'boom\nmore');
});

test('gvisor pid line: a program cannot forge it after the first line', async () => {
  const { reader, rest } = read(['kiln-exec-pid 7\n', 'kiln-exec-pid 1\n']);
  assert.equal(await reader.pid, 7);
  assert.equal(rest, 'kiln-exec-pid 1\n');
});

test('gvisor pid line: without it, all of stderr is kept and the pid is unknown', async () => {
  const failed = read(['/bin/sh: not found\n']);
  assert.equal(await failed.reader.pid, undefined);
  assert.equal(failed.rest, '/bin/sh: not found\n');
  const short = read(['partial']);
  assert.equal(await short.reader.pid, undefined);
  assert.equal(short.rest, 'partial');
  const long = read(['x'.repeat(100)], false);
  assert.equal(await long.reader.pid, undefined, 'a long first line without a newline is not waited on forever');
  assert.equal(long.rest.length, 100);
});

test('gvisor: the command runs unchanged after the wrapper, and limits go where the sentry keeps them', () => {
  const cmd = wrapWithPidLine(['python3', '-c', 'print("$$")']);
  assert.deepEqual(cmd.slice(0, 2), ['/bin/sh', '-c']);
  assert.deepEqual(cmd.slice(-3), ['python3', '-c', 'print("$$")'], 'arguments are passed as "$@", never re-parsed by the shell');
  const h = sentryHostLimits({ cpus: 1, memoryMb: 256, pids: 50, diskMb: 10 });
  assert.ok(h.Memory > 256 * 1024 * 1024, 'host memory leaves headroom for the sentry');
  assert.deepEqual(h.Ulimits.find((u) => u.Name === 'nproc'), { Name: 'nproc', Soft: 50, Hard: 50 });
  assert.ok(h.PidsLimit > 50, 'host pids count the sentry threads, not the sandbox processes');
});

test('gvisor: an exec is killed well below the host memory limit, however much the sandbox held when it started', () => {
  const MiB = 1024 * 1024;
  const host = sentryHostLimits({ cpus: 1, memoryMb: 192, pids: 64, diskMb: 10 }).Memory;
  // A fresh sandbox: the exec may grow by its own limit.
  assert.equal(execMemoryCap(40 * MiB, 64, 192), 104 * MiB);
  // A sandbox already holding much (files in its tmpfs, the server): the cap stops at the sandbox's limit, not
  // held + limit, leaving the headroom (the sentry's mapped files, the growth while the kill lands) below the host limit.
  for (const held of [0, 60, 150, 300]) {
    const cap = execMemoryCap(held * MiB, 192, 192);
    assert.ok(cap <= held * MiB + 192 * MiB, `held ${held} MB: never more than the exec's own limit`);
    assert.ok(host - cap >= 96 * MiB, `held ${held} MB: the cap is ${(host - cap) / MiB} MB below the host limit`);
  }
});
