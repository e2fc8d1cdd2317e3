/**
 * Test fixtures: a kiln on a fresh data dir, with real runtimes and a real
 * SQLite store, torn down in `finally` and checked for leftover sandboxes.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import assert from 'node:assert/strict';
import net from 'node:net';
import type { FastifyInstance } from 'fastify';
import { DEFAULT_CONFIG } from '../src/config/defaults.js';
import type { KilnConfig } from '../src/config/schema.js';
import { startKiln, type Kiln } from '../src/app.js';
import { buildApi } from '../src/api/server.js';

type DeepPartial<T> = { [K in keyof T]?: T[K] extends object ? (T[K] extends unknown[] ? T[K] : DeepPartial<T[K]>) : T[K] };

export function testConfig(overrides: DeepPartial<KilnConfig> = {}, dataDir = mkdtempSync(join(tmpdir(), 'kiln-test-'))): KilnConfig {
  const base = structuredClone(DEFAULT_CONFIG);
  base.server.dataDir = dataDir;
  base.server.logLevel = 'silent';
  return merge(base, overrides) as KilnConfig;
}

function merge(a: unknown, b: unknown): unknown {
  if (b === undefined) return a;
  if (a === null || typeof a !== 'object' || Array.isArray(a) || b === null || typeof b !== 'object' || Array.isArray(b)) return b;
  const out: Record<string, unknown> = { ...(a as Record<string, unknown>) };
  for (const [k, v] of Object.entries(b)) out[k] = merge(out[k], v);
  return out;
}

export interface TestKiln {
  kiln: Kiln;
  app: FastifyInstance;
  /** Close the server and check nothing of this instance is left running. */
  close(opts?: { keepData?: boolean }): Promise<void>;
}

export async function startTestKiln(config: KilnConfig = testConfig()): Promise<TestKiln> {
  const kiln = await startKiln(config);
  const app = await buildApi(kiln);
  await app.ready();
  return {
    kiln,
    app,
    async close({ keepData = false } = {}) {
      await app.close();
      await kiln.close();
      for (const rt of kiln.runtimes.all()) {
        const left = await rt.listOwn().catch(() => []);
        assert.deepEqual(left, [], `${rt.name}: sandboxes left running`);
      }
      if (!keepData) rmSync(config.server.dataDir, { recursive: true, force: true });
    },
  };
}

/** POST /v1/runs through app.inject; returns status and parsed body. */
export async function postRun(app: FastifyInstance, body: unknown): Promise<{ status: number; body: any; headers: Record<string, unknown> }> {
  const res = await app.inject({ method: 'POST', url: '/v1/runs', payload: body as object });
  return { status: res.statusCode, body: res.json(), headers: res.headers };
}

/** A loopback port free a moment ago (for a server whose own URLs must name its port before it listens). */
export async function freePort(): Promise<number> {
  const s = net.createServer().listen(0, '127.0.0.1');
  await new Promise((ok) => s.once('listening', ok));
  const p = (s.address() as net.AddressInfo).port;
  await new Promise((ok) => s.close(ok));
  return p;
}
