/**
 * A load generator in its own process, so the proxy under test does not share
 * an event loop with its client (nginx does not either). Reads a JSON target
 * from argv (a TCP host and port, a unix socket, or a port in a sandbox's
 * network namespace): `connections` keep-alive loops of GET for `warmupS` (not counted)
 * then `seconds`, each as fast as answers come or, with `rate`, paced: request k
 * is due at k / rate s (spread over the connections) and its latency counts
 * from when it was due, so a stall is not hidden by the requests it delays; prints `{count, seconds, lat, total, clientCpuMs}` as JSON
 * (`total` counts warm-up requests too, as the CPU readings do). Any
 * answer but 200 fails the run (exit 1).
 */
import http from 'node:http';
import { NetnsPorts } from '../src/runtimes/netns.js';

interface Target {
  /** Straight into a sandbox's network namespace (as kiln's port links do): a host pid inside it and the port. */
  netns?: { pid: number; port: number };
  socketPath?: string;
  host?: string;
  port?: number;
  path: string;
  seconds: number;
  warmupS?: number;
  connections: number;
  /** Requests per second over all connections (paced); omitted: closed loop. */
  rate?: number;
}

const t = JSON.parse(process.argv[2]!) as Target;
const agent = new http.Agent({ keepAlive: true, maxSockets: t.connections });
if (t.netns) {
  const link = new NetnsPorts('load', t.netns.pid).link(t.netns.port);
  agent.createConnection = () => link.connect();
}
const lat: number[] = [];
const measureFrom = performance.now() + (t.warmupS ?? 0) * 1000;
const end = measureFrom + t.seconds * 1000;
let total = 0;

const get = () =>
  new Promise<void>((resolve, reject) => {
    http
      .get({ socketPath: t.socketPath, host: t.host, port: t.port, path: t.path, agent }, (res) => {
        res.resume();
        res.on('end', () => (res.statusCode === 200 ? resolve() : reject(new Error(`GET ${t.path}: status ${res.statusCode}`))));
      })
      .on('error', reject);
  });

const start = performance.now();
const loop = async (conn: number) => {
  const every = t.rate ? (t.connections * 1000) / t.rate : 0;
  for (let k = 0; ; k++) {
    let t0 = performance.now();
    if (every) {
      const due = start + (conn * 1000) / t.rate! + k * every;
      if (due > t0) await new Promise((r) => setTimeout(r, due - t0));
      // From when it was due, or from when it started if the timer fired early (node's timers keep whole ms).
      t0 = Math.min(due, performance.now());
    }
    if (t0 >= end) return;
    await get();
    total++;
    // Only requests started and finished inside the window count, so none straddles its edges.
    const t1 = performance.now();
    if (t0 >= measureFrom && t1 <= end) lat.push(t1 - t0);
  }
};

const cpu0 = process.cpuUsage();
try {
  await Promise.all(Array.from({ length: t.connections }, (_, i) => loop(i)));
} catch (e) {
  process.stderr.write(`load: ${(e as Error).message}\n`);
  process.exit(1);
}
const cpu = process.cpuUsage(cpu0);
agent.destroy();
process.stdout.write(JSON.stringify({ count: lat.length, seconds: t.seconds, lat, total, clientCpuMs: (cpu.user + cpu.system) / 1000 }));
