/**
 * A load generator in its own process, so the proxy under test does not share
 * an event loop with its client (nginx does not either). Reads a JSON target
 * from argv, prints `{count, seconds, lat}` as JSON.
 */
import http from 'node:http';

interface Target {
  socketPath?: string;
  host?: string;
  port?: number;
  path: string;
  seconds: number;
  connections: number;
}

const t = JSON.parse(process.argv[2]!) as Target;
const agent = new http.Agent({ keepAlive: true, maxSockets: t.connections });
const lat: number[] = [];
const end = performance.now() + t.seconds * 1000;
const started = performance.now();
const loop = async () => {
  while (performance.now() < end) {
    const t0 = performance.now();
    await new Promise<void>((resolve, reject) => {
      http.get({ socketPath: t.socketPath, host: t.host, port: t.port, path: t.path, agent }, (res) => {
        res.resume();
        res.on('end', () => (res.statusCode === 200 ? resolve() : reject(new Error(`status ${res.statusCode}`))));
      }).on('error', reject);
    });
    lat.push(performance.now() - t0);
  }
};
await Promise.all(Array.from({ length: t.connections }, loop));
agent.destroy();
process.stdout.write(JSON.stringify({ count: lat.length, seconds: (performance.now() - started) / 1000, lat }));
