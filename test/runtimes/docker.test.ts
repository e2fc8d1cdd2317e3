import { randomBytes } from 'node:crypto';
import { DockerRuntime } from '../../src/runtimes/docker/driver.js';
import { runtimeContract } from './contract.js';

// Needs dockerd and the kiln-python:local image (scripts/setup makes both); fails, never skips, without them.
const instanceId = `test-${randomBytes(4).toString('hex')}`;
runtimeContract(
  () => Object.assign(new DockerRuntime({ instanceId, socketPath: '/var/run/docker.sock', ociRuntime: 'runc' }), { testOptions: { image: 'kiln-python:local' } }),
  { python: 'python3' },
);

import { test } from 'node:test';
import assert from 'node:assert/strict';

test('docker: /dev leaves only null, zero, random, urandom and tty working (no /dev/full, no pseudo-terminals)', async () => {
  const rt = new DockerRuntime({ instanceId, socketPath: '/var/run/docker.sock', ociRuntime: 'runc' });
  const sb = await rt.create({ template: 'dev-check', limits: { cpus: 1, memoryMb: 128, pids: 32, diskMb: 8 }, options: { image: 'kiln-python:local' } });
  try {
    const code = [
      'import os, pty, json',
      'def attempt(f):',
      '    try: return f()',
      '    except OSError as e: return e.strerror',
      'print(json.dumps({"full": attempt(lambda: open("/dev/full", "rb").read(4).hex()), "zero": open("/dev/zero", "rb").read(2).hex(),',
      '  "urandom": len(open("/dev/urandom", "rb").read(8)), "pts": os.listdir("/dev/pts"), "pty": attempt(lambda: pty.openpty() and "opened")}))',
    ].join('\n');
    const r = await sb.exec({ command: ['python3', '-c', code], limits: { wallMs: 20000, cpuMs: 20000, memoryMb: 128, pids: 32, outputBytes: 10000 } });
    assert.equal(r.exitCode, 0, r.stderr.toString());
    const got = JSON.parse(r.stdout.toString());
    assert.equal(got.full, '', '/dev/full is masked (reads nothing, as /dev/null)');
    assert.equal(got.zero, '0000');
    assert.equal(got.urandom, 8);
    assert.deepEqual(got.pts, []);
    assert.notEqual(got.pty, 'opened');
  } finally {
    await sb.destroy();
  }
});
