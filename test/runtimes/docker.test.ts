import { randomBytes } from 'node:crypto';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createConnection, createServer, type Socket } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Docker from 'dockerode';
import { DockerRuntime } from '../../src/runtimes/docker/driver.js';
import type { Sandbox } from '../../src/runtimes/types.js';
import { runtimeContract } from './contract.js';
import { startTestKiln, testConfig } from '../helpers.js';

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

test('docker: a removal the engine cannot do now is tried again, and the orphan sweep takes it', async () => {
  const engine = await engineInBetween();
  const rt = new DockerRuntime({ instanceId: `test-${randomBytes(4).toString('hex')}`, socketPath: engine.path, ociRuntime: 'runc' });
  const spec = { template: 'gone', limits: { cpus: 1, memoryMb: 128, pids: 32, diskMb: 16 }, options: { image: 'kiln-python:local' } };
  const made: Sandbox[] = [];
  try {
    const [a, b] = [await rt.create(spec), await rt.create(spec)];
    made.push(a, b);
    engine.refuse(true);
    engine.cut(); // kept connections too
    await assert.rejects(a.destroy());
    await assert.rejects(b.destroy());
    engine.refuse(false);
    assert.equal((await rt.listOwn()).length, 2, 'both containers still run');
    await a.destroy(); // tried again
    assert.deepEqual(await rt.listOwn(), [b.id]);
    assert.equal(await rt.reapOrphans(), 1, 'a sandbox whose removal failed is no longer counted live');
    assert.deepEqual(await rt.listOwn(), []);
    await b.destroy(); // already gone: done
  } finally {
    engine.refuse(false);
    await Promise.allSettled(made.map((sb) => sb.destroy()));
    await rt.reapOrphans();
    engine.close();
  }
});

test('docker: a session whose sandbox the engine cannot remove now ends at once, and its budget is held until the sandbox is gone', async () => {
  const engine = await engineInBetween();
  const c = testConfig({ runtimes: { docker: { socketPath: engine.path } } });
  c.templates['demo-docker'] = { ...c.templates['demo-docker']!, pool: { min: 0, max: 2 } };
  const t = await startTestKiln(c);
  try {
    const created = await t.app.inject({ method: 'POST', url: '/v1/sessions', payload: { template: 'demo-docker' } });
    assert.equal(created.statusCode, 201, created.body);
    const id = created.json().id as string;
    for (let i = 0; i < 200 && (await t.app.inject({ url: `/v1/sessions/${id}` })).json().status !== 'ready'; i++) await new Promise((r) => setTimeout(r, 100));
    const held = t.kiln.budget.snapshot().cpuUsed;
    assert.ok(held > 0);

    engine.refuse(true);
    engine.cut();
    const removed = await t.app.inject({ method: 'DELETE', url: `/v1/sessions/${id}` });
    assert.equal(removed.statusCode, 200, removed.body);
    assert.equal(removed.json().status, 'stopped');
    assert.equal(t.kiln.budget.snapshot().cpuUsed, held, 'the budget went back while the container still runs');

    engine.refuse(false);
    for (let i = 0; i < 100 && t.kiln.budget.snapshot().cpuUsed > 0; i++) await new Promise((r) => setTimeout(r, 100));
    assert.equal(t.kiln.budget.snapshot().cpuUsed, 0, 'the budget never came back');
    assert.deepEqual(await t.kiln.runtimes.get('docker')!.listOwn(), [], 'the container was not removed');
  } finally {
    engine.refuse(false);
    await t.close();
    engine.close();
  }
});

test("docker: a session exec's CPU limit and cpuMs are its own, not its busy server's", { timeout: 60_000 }, async () => {
  const rt = new DockerRuntime({ instanceId: `test-${randomBytes(4).toString('hex')}`, socketPath: '/var/run/docker.sock', ociRuntime: 'runc' });
  // A server that keeps two CPUs busy.
  const sb = await rt.create({ template: 'busy', limits: { cpus: 2, memoryMb: 256, pids: 64, diskMb: 16 }, options: { image: 'kiln-python:local' }, main: { command: ['sh', '-c', 'yes >/dev/null & yes >/dev/null & exec sleep 600'] } });
  const limits = { wallMs: 10_000, cpuMs: 1000, memoryMb: 128, pids: 32, outputBytes: 1 << 16 };
  try {
    await new Promise((r) => setTimeout(r, 300));
    const idle = await sb.exec({ command: ['sleep', '2'], limits });
    assert.equal(idle.killedBy, null, `sleep 2 was killed: ${JSON.stringify({ ...idle, stdout: undefined, stderr: undefined })}`);
    assert.equal(idle.exitCode, 0);
    assert.ok(idle.cpuMs < 300, `sleep 2 used ${idle.cpuMs} ms of CPU`);
    const spin = await sb.exec({ command: ['python3', '-c', 'while True: pass'], limits });
    assert.equal(spin.killedBy, 'cpu_timeout', 'the exec\'s own CPU is still limited');
    // The server's share is read in 10 ms ticks per process, so the exec's figure may read a little under the limit it passed.
    assert.ok(spin.cpuMs >= 900 && spin.cpuMs < 4000, `cpuMs ${spin.cpuMs}`);
  } finally {
    await sb.destroy();
  }
  assert.deepEqual(await rt.listOwn(), []);
});
