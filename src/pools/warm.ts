/**
 * Warm sandboxes: started with a template's server, bridged and ready.
 * `startWarm` is how both the pool and a cold start make one.
 */
import { randomBytes } from 'node:crypto';
import http from 'node:http';
import net from 'node:net';
import type { KilnConfig, TemplateConfig } from '../config/schema.js';
import { KilnError } from '../errors.js';
import type { Runtimes } from '../runtimes/index.js';
import type { Sandbox } from '../runtimes/types.js';
import type { Reservation } from './budget.js';
import { backendAgent } from '../proxy/agents.js';

export interface WarmSandbox {
  sandbox: Sandbox;
  template: string;
  /** The session URL secret, fixed at start so the server knows its base URL. */
  token: string;
  /** Unix socket reaching the server's port. */
  socketPath: string;
  reservation: Reservation;
  startedAt: number;
  /** How long start + readiness took, ms. */
  startMs: number;
}

/** 128 bits from the OS CSPRNG, URL-safe: the only thing that opens a session. */
export function newToken(): string {
  return randomBytes(16).toString('base64url');
}

const READY_POLL_MS = 25;
/** One readiness probe gives up after this long, ms. */
const PROBE_TIMEOUT_MS = 5000;

export async function startWarm(
  config: KilnConfig,
  runtimes: Runtimes,
  templateName: string,
  reservation: Reservation,
  extraEnv: Record<string, string> = {},
  token = newToken(),
): Promise<WarmSandbox> {
  const t: TemplateConfig | undefined = config.templates[templateName];
  if (!t?.command || !t.port) throw new KilnError('not_a_session_template', `template ${templateName} has no command and port: it cannot serve sessions`, 400);
  const { runtime, spec } = runtimes.specFor(templateName);
  const started = performance.now();
  const sandbox = await runtime.create({
    ...spec,
    main: { command: t.command, env: { ...extraEnv, KILN_BASE_URL: `/s/${token}/`, KILN_PORT: String(t.port) } },
  });
  try {
    const socketPath = await sandbox.portSocket(t.port);
    await waitReady(sandbox, socketPath, t, config.sessions.readyTimeoutS * 1000);
    return { sandbox, template: templateName, token, socketPath, reservation, startedAt: Date.now(), startMs: performance.now() - started };
  } catch (e) {
    await sandbox.destroy().catch(() => undefined);
    throw e;
  }
}

async function waitReady(sandbox: Sandbox, socketPath: string, t: TemplateConfig, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let exited = false;
  void sandbox.mainExited?.then(() => (exited = true));
  const probe = t.ready && 'http' in t.ready ? () => httpProbe(socketPath, t.ready && 'http' in t.ready ? t.ready.http : '/') : () => tcpProbe(socketPath);
  while (Date.now() < deadline) {
    if (exited) break;
    if (await probe()) return;
    await new Promise((r) => setTimeout(r, READY_POLL_MS));
  }
  const log = (await sandbox.mainLog()).trim().split('\n').slice(-5).join(' | ');
  throw new KilnError('session_start_failed', exited ? `the server exited before it was ready${log ? `: ${log}` : ''}` : `the server was not ready within ${timeoutMs / 1000} s${log ? `: ${log}` : ''}`, 503, { retryAfterS: 5 });
}

/** Ready when the server answers the path with any status below 500. */
function httpProbe(socketPath: string, path: string): Promise<boolean> {
  return new Promise((resolve) => {
    // Through the proxy's keep-alive agent: the connection that proved readiness serves the first request.
    // (No socket timeout option: it would stay on the pooled socket and close it when idle.)
    const req = http.get({ socketPath, path, agent: backendAgent(socketPath), headers: { host: 'localhost' } }, (res) => {
      clearTimeout(timer);
      res.resume();
      resolve((res.statusCode ?? 500) < 500);
    });
    // Generous: opening a backend connection may itself take hundreds of ms (gVisor's exec relay) on a busy host.
    const timer = setTimeout(() => req.destroy(), PROBE_TIMEOUT_MS);
    req.on('error', () => {
      clearTimeout(timer);
      resolve(false);
    });
  });
}

/** Through the bridge, a connect succeeds at once; the port is open when bytes can flow or the peer does not hang up. */
function tcpProbe(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(socketPath);
    let done = false;
    const finish = (ok: boolean) => {
      if (done) return;
      done = true;
      s.destroy();
      resolve(ok);
    };
    s.on('error', () => finish(false));
    s.on('close', () => finish(false)); // socat closes at once when nothing listens inside
    s.on('data', () => finish(true));
    s.on('connect', () => setTimeout(() => finish(true), 50));
  });
}
