/**
 * Exec relays (src/runtimes/gvisor/relay.ts) against a real gVisor sandbox:
 * a small TCP server inside, reached only through the port link (the relay's
 * unix socket). Needs dockerd with runsc and /usr/local/lib/kiln/kiln-relay
 * (scripts/setup); fails, never skips, without them.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { GvisorRuntime } from '../../src/runtimes/gvisor/driver.js';
import { RELAY_PATH } from '../../src/runtimes/gvisor/relay.js';
import { SENTRY_HOST_DIR } from '../../src/runtimes/docker/driver.js';
import { existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { PortLink, Sandbox } from '../../src/runtimes/types.js';
import { LIMITS } from './contract.js';
import { startTestKiln, testConfig, type TestKiln } from '../helpers.js';

const PORT = 9000;
// An echo server; a connection starting with "h" is held open and never read, so only a kill ends its relay.
// asyncio: one thread, since threads count against the sandbox's process limit.
const SERVER = `
import asyncio
async def serve(r, w):
    data = await r.read(1)
    if data == b'h':
        await asyncio.Event().wait()
    while data:
        w.write(data); await w.drain()
        data = await r.read(65536)
    w.close()
async def main():
    server = await asyncio.start_server(serve, '127.0.0.1', ${PORT})
    await server.serve_forever()
asyncio.run(main())
`;

// Relays now running in the sandbox (the killer, argv "-k", excluded), with their uids.
const RELAYS = `
import os
for p in filter(str.isdigit, os.listdir('/proc')):
    try:
        argv = open(f'/proc/{p}/cmdline', 'rb').read().split(b'\\0')
        uid = [l for l in open(f'/proc/{p}/status') if l.startswith('Uid:')][0].split()[1]
    except OSError:
        continue
    if argv[0] == b'${RELAY_PATH}' and argv[1] != b'-k': print(uid)
`;

async function withServer(fn: (sb: Sandbox, link: PortLink) => Promise<void>): Promise<void> {
  const rt = new GvisorRuntime({ instanceId: `test-${randomBytes(4).toString('hex')}`, socketPath: '/var/run/docker.sock' });
  const sb = await rt.create({ template: 'relay', limits: { cpus: 1, memoryMb: 256, pids: 64, diskMb: 16 }, options: { image: 'kiln-python:local' }, main: { command: ['python3', '-c', SERVER] } });
  try {
    const link = await sb.portLink(PORT);
    // Until the server listens, a relay connects to nothing and the connection ends without a byte.
    for (let i = 0; i < 200 && (await exchange(link, 'x')) !== 'x'; i++) await new Promise((r) => setTimeout(r, 100));
    await fn(sb, link);
  } finally {
    await sb.destroy();
  }
  assert.deepEqual(await rt.listOwn(), []);
}

/** Send `data` and read until as many bytes came back or the other side closed; then close. */
function exchange(link: PortLink, data: string | Buffer): Promise<string> {
  const want = Buffer.byteLength(data);
  return new Promise((resolve, reject) => {
    const s = link.connect();
    const got: Buffer[] = [];
    let n = 0;
    s.on('data', (c: Buffer) => {
      got.push(c);
      if ((n += c.length) >= want) s.end();
    });
    s.on('error', reject);
    s.on('close', () => resolve(Buffer.concat(got).toString()));
    s.write(data);
  });
}

async function relays(sb: Sandbox): Promise<string[]> {
  const r = await sb.exec({ command: ['python3', '-c', RELAYS], limits: LIMITS });
  assert.equal(r.exitCode, 0, r.stderr.toString());
  return r.stdout.toString().split('\n').filter(Boolean);
}

test('gvisor relay: bytes pass both ways, big bodies and several connections at once', async () => {
  await withServer(async (_sb, link) => {
    assert.equal(await exchange(link, 'ping'), 'ping');
    const big = randomBytes(3 << 20).toString('hex');
    assert.equal(await exchange(link, big), big);
    const many = await Promise.all(Array.from({ length: 8 }, (_, i) => exchange(link, 'y'.repeat(i + 1))));
    assert.deepEqual(many, Array.from({ length: 8 }, (_, i) => 'y'.repeat(i + 1)));
  });
});

test('gvisor relay: a port nothing listens on ends the connection without a byte; a client that leaves kills its relay', async () => {
  await withServer(async (sb, link) => {
    const nothing = await sb.portLink(PORT + 1);
    assert.equal(await exchange(nothing, 'anyone?'), '');
    assert.deepEqual(await relays(sb), [], 'a relay that could not connect exits');

    // The server holds this connection open forever: only kiln can end the relay once the client is gone.
    const held = link.connect();
    held.write('h');
    let running: string[] = [];
    for (let i = 0; i < 300 && running.length === 0; i++) running = await relays(sb);
    assert.deepEqual(running, ['65534'], 'the relay runs as the sandbox user');
    held.destroy();
    for (let i = 0; i < 300 && running.length > 0; i++) running = await relays(sb);
    assert.deepEqual(running, [], 'the relay is killed when its client leaves');

    const refused = await sb.exec({ command: [RELAY_PATH, '-k', '1'], limits: LIMITS });
    assert.equal(refused.exitCode, 5, 'the killer refuses a pid that is not a relay');
    assert.match(refused.stderr.toString(), /not a relay/);
  });
});

test("the orphan sweep drops relay dirs whose container is gone, and keeps a live sandbox's", async () => {
  const rt = new GvisorRuntime({ instanceId: `test-${randomBytes(4).toString('hex')}`, socketPath: '/var/run/docker.sock' });
  // As a kiln killed with its gVisor sandboxes up leaves it, once the next start reaped the containers.
  const stale = join(SENTRY_HOST_DIR, `kd-${randomBytes(8).toString('hex')}`);
  mkdirSync(stale, { recursive: true });
  writeFileSync(join(stale, '8080.sock'), '');
  const sb = await rt.create({ template: 'relay', limits: { cpus: 1, memoryMb: 256, pids: 64, diskMb: 16 }, options: { image: 'kiln-python:local' }, main: { command: ['python3', '-c', SERVER] } });
  try {
    await sb.portLink(PORT);
    await rt.reapOrphans();
    assert.equal(existsSync(stale), false, 'the stale relay dir is still there');
    assert.equal(existsSync(join(SENTRY_HOST_DIR, sb.id)), true, "a live sandbox's relay dir was dropped");
  } finally {
    rmSync(stale, { recursive: true, force: true });
    await sb.destroy();
  }
  assert.deepEqual(await rt.listOwn(), []);
});

/**
 * A kiln with one gVisor session template (a server on 8080 with TCP readiness), one session of it created
 * and waited for until it settles; `fn` gets the kiln, the session's view and its URL.
 */
async function settledSession(command: string[], memoryMb: number, fn: (t: TestKiln, view: { status: string; error?: string }, url: string, id: string) => Promise<void>): Promise<void> {
  const c = testConfig();
  c.templates['g'] = { runtime: 'gvisor', image: 'kiln-python:local', command, port: 8080, ready: { tcp: true }, pool: { min: 0, max: 1 }, limits: { cpus: 1, memoryMb, pids: 64 } };
  const t = await startTestKiln(c);
  try {
    const created = await t.app.inject({ method: 'POST', url: '/v1/sessions', payload: { template: 'g' } });
    assert.equal(created.statusCode, 201, created.body);
    const { id, url } = created.json() as { id: string; url: string };
    let view = { status: 'starting' } as { status: string; error?: string };
    for (let i = 0; i < 600 && (view.status === 'starting' || view.status === 'stopping'); i++) {
      await new Promise((r) => setTimeout(r, 50));
      view = (await t.app.inject({ url: `/v1/sessions/${id}` })).json();
    }
    await fn(t, view, url, id);
  } finally {
    await t.close();
  }
}

test('a gVisor session with TCP readiness is ready only once its server accepts: the first request through the proxy is served', { timeout: 120_000 }, async () => {
  // The server takes three seconds to listen; a relay to nothing still accepts its unix connect.
  await settledSession(['sh', '-c', 'sleep 3; exec python3 -m http.server 8080 --bind 127.0.0.1'], 256, async (t, view, url) => {
    assert.equal(view.status, 'ready');
    const base = await t.app.listen({ port: 0, host: '127.0.0.1' }); // the proxy is on the server, not behind inject
    const first = await fetch(`${base}${url}`);
    assert.equal(first.status, 200, `ready, but the server did not answer: ${first.status}`);
  });
});

test("a gVisor session's server is held to the template's memoryMb, not the host limit's headroom", { timeout: 120_000 }, async () => {
  // 160 MiB touched, then a server: past a 64 MiB limit (the host limit is 64 + 160 MiB, for the sentry).
  const hog = 'import http.server\nhog = bytearray(160 << 20)\nfor i in range(0, len(hog), 4096): hog[i] = 1\nhttp.server.HTTPServer(("127.0.0.1", 8080), http.server.SimpleHTTPRequestHandler).serve_forever()';
  await settledSession(['python3', '-c', hog], 64, async (t, first, _url, id) => {
    // The watch looks every 250 ms and stands aside while an exec (a readiness probe) runs, so a
    // fast server can be ready for a moment first; within a few looks it must be gone.
    let view = first;
    for (let i = 0; i < 100 && (view.status === 'ready' || view.status === 'stopping'); i++) {
      await new Promise((r) => setTimeout(r, 50));
      view = (await t.app.inject({ url: `/v1/sessions/${id}` })).json();
    }
    assert.equal(view.status, 'failed', `a server over its memory limit ran on: ${JSON.stringify(view)}`);
    assert.equal(t.kiln.budget.snapshot().memoryUsedMb, 0);
  });
});
