import { randomBytes } from 'node:crypto';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createConnection, createServer, type Socket } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Docker from 'dockerode';
import { DockerRuntime } from '../../src/runtimes/docker/driver.js';
import { runtimeContract } from './contract.js';

// Needs dockerd and the kiln-python:local image (scripts/setup makes both); fails, never skips, without them.
const instanceId = `test-${randomBytes(4).toString('hex')}`;
runtimeContract(
  () => Object.assign(new DockerRuntime({ instanceId, socketPath: '/var/run/docker.sock', ociRuntime: 'runc' }), { testOptions: { image: 'kiln-python:local' } }),
  { python: 'python3' },
);

/** A unix socket in front of dockerd whose connections the test can cut, and which can refuse for a while. */
async function engineInBetween() {
  const dir = mkdtempSync(join(tmpdir(), 'kiln-engine-'));
  const path = join(dir, 'docker.sock');
  const open = new Set<Socket>();
  let refusing = false;
  let accepted = 0;
  const server = createServer((client) => {
    if (refusing) return void client.destroy();
    accepted++;
    const engine = createConnection('/var/run/docker.sock');
    open.add(client);
    open.add(engine);
    client.pipe(engine).pipe(client);
    const end = () => (client.destroy(), engine.destroy(), open.delete(client), open.delete(engine));
    client.on('error', end).on('close', end);
    engine.on('error', end).on('close', end);
  });
  await new Promise<void>((r) => server.listen(path, r));
  return {
    path,
    accepted: () => accepted,
    cut: () => open.forEach((s) => s.destroy()),
    refuse: (on: boolean) => (refusing = on),
    close: () => (open.forEach((s) => s.destroy()), server.close(), rmSync(dir, { recursive: true, force: true })),
  };
}

test('docker: a dropped engine connection is not taken for the main process ending', async () => {
  const engine = await engineInBetween();
  const rt = new DockerRuntime({ instanceId: `test-${randomBytes(4).toString('hex')}`, socketPath: engine.path, ociRuntime: 'runc' });
  const sb = await rt.create({ template: 'wait', limits: { cpus: 1, memoryMb: 128, pids: 32, diskMb: 16 }, options: { image: 'kiln-python:local' }, main: { command: ['sleep', '600'] } });
  try {
    let exited = false;
    void sb.mainExited!.then(() => (exited = true));
    await new Promise((r) => setTimeout(r, 300));

    // The engine drops every connection, then is unreachable for a while (dockerd restarting).
    engine.refuse(true);
    engine.cut();
    await new Promise((r) => setTimeout(r, 1500));
    assert.equal(exited, false, 'mainExited resolved while the container still runs');
    engine.refuse(false);
    const before = engine.accepted();
    for (let i = 0; i < 100 && engine.accepted() === before; i++) await new Promise((r) => setTimeout(r, 100));
    assert.ok(engine.accepted() > before, 'kiln never waited on the container again');
    assert.equal(exited, false);

    // The main process really ends: that is seen, through the new wait.
    const id = (await rt.listOwn())[0];
    const [own] = await new Docker().listContainers({ all: true, filters: { label: [`kiln.sandbox=${id}`] } });
    await new Docker().getContainer(own!.Id).kill();
    await Promise.race([sb.mainExited, new Promise((_, no) => setTimeout(() => no(new Error('mainExited never resolved after the container was killed')), 20_000))]);
  } finally {
    await sb.destroy();
    assert.deepEqual(await rt.listOwn(), []);
    engine.close();
  }
});
