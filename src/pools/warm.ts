/**
 * Warm sandboxes: started with a template's server, linked and ready.
 * `startWarm` is how both the pool and a cold start make one.
 */
import { randomBytes } from 'node:crypto';
import type { KilnConfig, TemplateConfig } from '../config/schema.js';
import { KilnError } from '../errors.js';
import type { Runtimes } from '../runtimes/index.js';
import type { PortLink, Sandbox } from '../runtimes/types.js';
import type { Reservation } from './budget.js';
import { getStatus } from '../proxy/client.js';

export interface WarmSandbox {
  sandbox: Sandbox;
  template: string;
  /** The session URL secret, fixed at start so the server knows its base URL. */
  token: string;
  /** How kiln reaches the server's port. */
  link: PortLink;
  reservation: Reservation;
  startedAt: number;
  /** How long start + readiness took, ms. */
  startMs: number;
}

/** 128 bits from the OS CSPRNG, URL-safe: the only thing that opens a session. */
export function newToken(): string {
  return randomBytes(16).toString('base64url');
}

/** One readiness probe gives up after this long, ms. */
const PROBE_TIMEOUT_MS = 5000;
/**
 * How long to wait before the next readiness look, ms, `elapsedMs` after the
 * start began: a tenth of the time so far, from 2 ms up to 25 ms. Most of a
 * start is the server's own; looking in proportion to it keeps the time lost
 * between the server being ready and kiln noticing under ~10% without
 * looking hundreds of times at a slow one. (The benchmark's raw baseline polls
 * on the same schedule.)
 */
export function readyPollDelayMs(elapsedMs: number): number {
  return Math.min(25, Math.max(2, elapsedMs / 10));
}

export async function startWarm(
  config: KilnConfig,
  runtimes: Runtimes,
  templateName: string,
  reservation: Reservation,
  extraEnv: Record<string, string> = {},
  token = newToken(),
  /** Aborted: the start gives up at its next look (the sandbox destroyed) instead of waiting for readiness. */
  signal?: AbortSignal,
): Promise<WarmSandbox> {
  const t: TemplateConfig | undefined = config.templates[templateName];
  if (!t?.command || !t.port) throw new KilnError('not_a_session_template', `template ${templateName} has no command and port: it cannot serve sessions`, 400);
  const { runtime, spec } = runtimes.specFor(templateName);
  const started = performance.now();
  const startCpus = config.sessions.startCpus > spec.limits.cpus ? { startCpus: config.sessions.startCpus } : {};
  // The sandbox's env, not only the server's: an exec beside the server sees what it sees, on every runtime.
  const env = { ...spec.env, ...extraEnv, KILN_BASE_URL: config.sessions.origin ? '/' : `/s/${token}/`, KILN_PORT: String(t.port) };
  const sandbox = await runtime.create({ ...spec, env, main: { command: t.command, ...startCpus } });
  try {
    // The link is made now, beside the server's own start-up (a gVisor relay takes a while): only the first probe needs it.
    const pending = sandbox.portLink(t.port);
    pending.catch(() => undefined); // a failure is thrown where it is awaited
    const link = await waitReady(sandbox, pending, t, started, config.sessions.readyTimeoutS * 1000, signal);
    // Ready: the template's CPU quota holds from here on.
    await sandbox.mainReady?.();
    return { sandbox, template: templateName, token, link, reservation, startedAt: Date.now(), startMs: performance.now() - started };
  } catch (e) {
    await sandbox.destroy().catch(() => undefined);
    throw e;
  }
}

/**
 * Poll until the server is ready; returns the port link. Where the runtime
 * can see the sandbox's sockets, the polls are cheap looks for a listener and
 * the probe through the link comes only once one is there.
 */
async function waitReady(sandbox: Sandbox, pending: Promise<PortLink>, t: TemplateConfig, started: number, timeoutMs: number, signal?: AbortSignal): Promise<PortLink> {
  const port = t.port!;
  const deadline = started + timeoutMs;
  let exited = false;
  void sandbox.mainExited?.then(() => (exited = true));
  const httpPath = t.ready && 'http' in t.ready ? t.ready.http : undefined;
  while (performance.now() < deadline) {
    if (signal?.aborted) throw new KilnError('session_start_cancelled', 'the start was cancelled: the session ended first', 409);
    if (exited) break;
    const listening = sandbox.portListening ? await sandbox.portListening(port) : undefined;
    if (listening !== false) {
      const link = await pending;
      // A listener the link reaches is what a TCP readiness check asks for.
      if (httpPath === undefined && listening === true) return link;
      if (await (httpPath === undefined ? tcpProbe(link) : httpProbe(link, httpPath))) return link;
    }
    await new Promise((r) => setTimeout(r, readyPollDelayMs(performance.now() - started)));
  }
  const log = (await sandbox.mainLog()).trim().split('\n').slice(-5).join(' | ');
  throw new KilnError('session_start_failed', exited ? `the server exited before it was ready${log ? `: ${log}` : ''}` : `the server was not ready within ${timeoutMs / 1000} s${log ? `: ${log}` : ''}`, 503, { retryAfterS: 5 });
}

/** Ready when the server answers the path with any status below 500. */
async function httpProbe(link: PortLink, path: string): Promise<boolean> {
  // On the proxy's connections: the one that proved readiness serves the first request.
  // Generous: opening a backend connection may itself take hundreds of ms (gVisor's exec relay) on a busy host.
  const status = await getStatus(link, path, PROBE_TIMEOUT_MS);
  return status !== undefined && status < 500;
}

/**
 * The port is open when bytes flow or the connection is not refused or hung up
 * within 50 ms (a link into a namespace is refused at once; through a gVisor
 * relay the unix connect always succeeds and the relay hangs up instead).
 */
function tcpProbe(link: PortLink): Promise<boolean> {
  return new Promise((resolve) => {
    const s = link.connect();
    let done = false;
    const finish = (ok: boolean) => {
      if (done) return;
      done = true;
      s.destroy();
      resolve(ok);
    };
    s.on('error', () => finish(false));
    s.on('close', () => finish(false));
    s.on('data', () => finish(true));
    const settle = () => setTimeout(() => finish(true), 50);
    // A socket made from a link's fd is connected already: no connect event comes.
    if (s.connecting) s.once('connect', settle);
    else settle();
  });
}
