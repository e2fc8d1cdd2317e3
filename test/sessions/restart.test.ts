/** SIGKILL the server, start it again: nothing is left running that kiln does not know about, and listings tell the truth. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, writeFileSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Docker from 'dockerode';
import Database from 'better-sqlite3';

const CLI = ['--import', import.meta.resolve('tsx'), join(import.meta.dirname, '..', '..', 'src', 'cli', 'dev.ts')];

async function startServer(dir: string, port: number): Promise<{ child: ChildProcess; url: string }> {
  const child = spawn(process.execPath, [...CLI, 'serve', '--config', join(dir, 'kiln.yaml'), '--port', String(port), '--data-dir', join(dir, 'data')], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  child.stderr!.on('data', (c) => (err += c));
  const url = `http://127.0.0.1:${port}`;
  for (let i = 0; i < 300; i++) {
    if (await fetch(`${url}/healthz`).then((r) => r.ok, () => false)) return { child, url };
    await new Promise((r) => setTimeout(r, 100));
  }
  child.kill('SIGKILL');
  throw new Error(`server did not start: ${err}`);
}

async function poolsReady(url: string, want: Record<string, number>): Promise<void> {
  for (let i = 0; i < 600; i++) {
    const pools = (await (await fetch(`${url}/v1/pools`)).json()) as { template: string; ready: number }[];
    if (Object.entries(want).every(([t, n]) => (pools.find((p) => p.template === t)?.ready ?? 0) >= n)) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.fail('pools never filled');
}

test('SIGKILL then restart: orphans are reaped on both runtimes and sessions read stopped', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'kiln-restart-'));
  writeFileSync(
    join(dir, 'kiln.yaml'),
    [
      'budget: { cpuTotal: 16 }',
      'server: { logLevel: warn, orphanSweepS: 0.5 }',
      'templates:',
      '  demo-web: { pool: { min: 2, max: 4 }, limits: { cpus: 0.25, memoryMb: 128 } }',
      '  demo-docker: { pool: { min: 1, max: 4 }, limits: { cpus: 0.25, memoryMb: 128 } }',
    ].join('\n'),
  );
  const port = 18000 + Math.floor(Math.random() * 1000);
  const docker = new Docker();
  let server = await startServer(dir, port);
  try {
    await poolsReady(server.url, { 'demo-web': 2, 'demo-docker': 1 });
    const create = async () => (await (await fetch(`${server.url}/v1/sessions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"template":"demo-web","metadata":{"course":"cs101"}}' })).json()) as { id: string; url: string; readyAt: string };
    const created = await create();
    const beingDeleted = await create();
    assert.equal((await fetch(`${server.url}${created.url}info`)).status, 200);
    const instanceId = readFileSync(join(dir, 'data', 'instance-id'), 'utf8').trim();
    const containers = () => docker.listContainers({ all: true, filters: { label: [`kiln.instance=${instanceId}`] } });
    assert.ok((await containers()).length >= 1);

    server.child.kill('SIGKILL');
    await new Promise((r) => server.child.once('close', r));
    // Docker containers outlive the server: they are the orphans a restart must find.
    assert.ok((await containers()).length >= 1, 'containers survived the crash');
    // The crash came in the middle of a DELETE of the second session (its row as the stop's first write leaves it).
    const store = new Database(join(dir, 'data', 'kiln.db'));
    store.prepare(`UPDATE sessions SET status = 'stopping', stop_reason = 'deleted' WHERE id = ?`).run(beingDeleted.id);
    store.close();

    server = await startServer(dir, port);
    await poolsReady(server.url, { 'demo-web': 2, 'demo-docker': 1 });
    // What the engine finishes for the dead server is swept within orphanSweepS.
    await new Promise((r) => setTimeout(r, 1500));
    const after = await containers();
    const pools = (await (await fetch(`${server.url}/v1/pools`)).json()) as { template: string; ready: number; starting: number; claimed: number }[];
    const dockerPool = pools.find((p) => p.template === 'demo-docker')!;
    assert.ok(after.length <= dockerPool.ready + dockerPool.starting, `only the new pool's containers exist: ${JSON.stringify(after.map((c) => [c.Names, c.State]))} ${JSON.stringify(dockerPool)}`);
    type Ended = { status: string; stopReason: string; error?: string; url?: string; metadata?: Record<string, string>; readyAt?: string };
    const session = (await (await fetch(`${server.url}/v1/sessions/${created.id}`)).json()) as Ended;
    assert.equal(session.status, 'stopped');
    assert.deepEqual([session.metadata, session.readyAt], [{ course: 'cs101' }, created.readyAt], 'read from the store, it keeps what it was created with');
    assert.equal(session.stopReason, 'shutdown');
    assert.match(session.error ?? '', /kiln stopped without ending this session/);
    assert.equal(session.url, undefined);
    const deleted = (await (await fetch(`${server.url}/v1/sessions/${beingDeleted.id}`)).json()) as Ended;
    assert.deepEqual([deleted.status, deleted.stopReason], ['stopped', 'deleted'], 'a stop that had begun keeps its reason');
    assert.equal((await fetch(`${server.url}${created.url}info`)).status, 404, 'the old URL leads nowhere');
    // Ended before the restart: an exec is a 409 that says so, and a DELETE is done already (as before the crash).
    const exec = await fetch(`${server.url}/v1/sessions/${created.id}/exec`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"command":["true"]}' });
    assert.equal(exec.status, 409);
    assert.match(((await exec.json()) as { error: { message: string } }).error.message, /is stopped/);
    const again = await fetch(`${server.url}/v1/sessions/${created.id}`, { method: 'DELETE' });
    assert.equal(again.status, 200);
    assert.equal(((await again.json()) as Ended).stopReason, 'shutdown');
    assert.equal((await fetch(`${server.url}/v1/sessions/00000000-0000-4000-8000-000000000000`, { method: 'DELETE' })).status, 404);
    // No process of the old server's sandboxes or bridges survives.
    const ps = spawn('ps', ['-eo', 'args']);
    let out = '';
    ps.stdout.on('data', (c) => (out += c));
    await new Promise((r) => ps.once('close', r));
    // Listed as ended (for stalePeriodS, as if this server had ended them), none as live.
    const listed = (await (await fetch(`${server.url}/v1/sessions`)).json()) as { id: string; status: string; stopReason: string }[];
    assert.deepEqual(listed.filter((v) => v.status !== 'stopped'), [], 'the listing holds no live session of the dead server');
    assert.deepEqual(listed.find((v) => v.id === created.id)?.stopReason, 'shutdown', 'a session the crash ended is listed, ended');
    assert.ok(listed.some((v) => v.id === beingDeleted.id));
    // Every bridge still running belongs to a sandbox the new server knows (its dir exists).
    const { existsSync } = await import('node:fs');
    const bridged = [...out.matchAll(/UNIX-LISTEN:(\/run\/kiln\/[0-9a-f]+\/kp-[0-9a-f]+)\//g)].map((m) => m[1]!).filter((d) => d.includes(instanceId));
    assert.deepEqual(bridged.filter((d) => !existsSync(d)), [], 'bridges of dead sandboxes');
  } finally {
    server.child.kill('SIGTERM');
    await new Promise((r) => server.child.once('close', r));
    rmSync(dir, { recursive: true, force: true });
  }
});
