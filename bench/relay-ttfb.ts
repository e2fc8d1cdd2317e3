/**
 * Time to first byte through the proxy on a NEW backend connection, docker
 * (a port link made inside the container's netns) beside gvisor (one docker exec
 * of kiln-relay per backend connection), and on a REUSED keep-alive one.
 * Each sample drops the proxy's keep-alive agent first, so the request opens
 * a fresh backend connection. Not a test: it prints medians, nothing fails.
 *   node --import tsx bench/relay-ttfb.ts [samples]
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startKiln } from '../src/app.js';
import { buildApi } from '../src/api/server.js';
import { DEFAULT_CONFIG } from '../src/config/defaults.js';
import { dropBackend } from '../src/proxy/backends.js';
import { percentile } from './stats.js';

const samples = Number(process.argv[2] ?? 7);
const config = structuredClone(DEFAULT_CONFIG);
config.server.dataDir = mkdtempSync(join(tmpdir(), 'kiln-ttfb-'));
config.server.logLevel = 'silent';
// A one-thread server (HTTP/1.1 keep-alive), same on both runtimes: threads need not work under gVisor's seccomp.
const SERVER = "from http.server import HTTPServer, SimpleHTTPRequestHandler as H\nH.protocol_version = 'HTTP/1.1'\nHTTPServer(('127.0.0.1', 8080), H).serve_forever()";
for (const runtime of ['docker', 'gvisor'] as const) {
  config.templates[`ttfb-${runtime}`] = { runtime, image: 'kiln-python:local', command: ['python3', '-c', SERVER], port: 8080, ready: { http: '/' }, pool: { min: 0, max: 2 }, limits: { cpus: 0.5, memoryMb: 256, pids: 64 } };
}
const kiln = await startKiln(config);
const app = await buildApi(kiln);
const base = await app.listen({ port: 0, host: '127.0.0.1' });

/** ms until the response head arrives. */
async function ttfb(url: string): Promise<number> {
  const t = performance.now();
  const res = await fetch(url);
  const ms = performance.now() - t;
  await res.arrayBuffer();
  if (res.status !== 200) throw new Error(`${url}: ${res.status}`);
  return ms;
}

try {
  for (const template of ['ttfb-docker', 'ttfb-gvisor']) {
    const res = await fetch(`${base}/v1/sessions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ template }) });
    const s = (await res.json()) as { id: string; url: string };
    await ttfb(`${base}${s.url}`); // held until ready
    const link = kiln.sessions.byIdLookup(s.id)!.warm!.link;
    const fresh: number[] = [];
    const reused: number[] = [];
    for (let i = 0; i < samples; i++) {
      dropBackend(link);
      fresh.push(await ttfb(`${base}${s.url}`));
      reused.push(await ttfb(`${base}${s.url}`));
    }
    const f = (xs: number[]) => `p50 ${percentile(xs, 50).toFixed(1)} ms (${xs.map((x) => x.toFixed(0)).join(' ')})`;
    console.log(`${template}: new backend connection ${f(fresh)}; reused ${f(reused)}`);
    await fetch(`${base}/v1/sessions/${s.id}`, { method: 'DELETE' });
  }
} finally {
  await app.close();
  await kiln.close();
  rmSync(config.server.dataDir, { recursive: true, force: true });
}
