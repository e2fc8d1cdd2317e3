import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { DockerRuntime } from '../../src/runtimes/docker/driver.js';
import { GvisorRuntime } from '../../src/runtimes/gvisor/driver.js';
import { runtimeContract } from './contract.js';

// Needs dockerd with runsc registered and the kiln-python:local image (scripts/setup makes all three); fails, never skips, without them.
const instanceId = `test-${randomBytes(4).toString('hex')}`;
const options = { image: 'kiln-python:local' };
runtimeContract(() => Object.assign(new GvisorRuntime({ instanceId, socketPath: '/var/run/docker.sock' }), { testOptions: options }), { python: 'python3' });

test('gvisor and docker share the engine but neither lists nor reaps the other\'s sandboxes', async () => {
  const shared = `test-${randomBytes(4).toString('hex')}`;
  const gvisor = new GvisorRuntime({ instanceId: shared, socketPath: '/var/run/docker.sock' });
  const docker = new DockerRuntime({ instanceId: shared, socketPath: '/var/run/docker.sock', ociRuntime: 'runc' });
  const limits = { cpus: 1, memoryMb: 256, pids: 64, diskMb: 16 };
  const g = await gvisor.create({ template: 'contract', limits, options });
  const d = await docker.create({ template: 'contract', limits, options });
  try {
    assert.deepEqual(await gvisor.listOwn(), [g.id]);
    assert.deepEqual(await docker.listOwn(), [d.id]);
    // A restarted docker driver reaps only docker's orphans.
    const restartedDocker = new DockerRuntime({ instanceId: shared, socketPath: '/var/run/docker.sock', ociRuntime: 'runc' });
    assert.equal(await restartedDocker.reapOrphans(), 1);
    assert.deepEqual(await gvisor.listOwn(), [g.id]);
    // gVisor's dmesg is its own boot log; kiln's filter denies the syslog call to sandbox code, so ask as the engine.
    const banner = execFileSync('docker', ['exec', g.id, 'dmesg'], { encoding: 'utf8' });
    assert.match(banner, /gVisor/, 'the sandbox runs on the gVisor kernel');
    assert.equal(g.runtime, 'gvisor');
    assert.equal(d.runtime, 'docker');
  } finally {
    await g.destroy();
    await d.destroy();
  }
  assert.deepEqual(await gvisor.listOwn(), []);
});
