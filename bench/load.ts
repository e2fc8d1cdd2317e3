/**
 * A load generator in its own process, so the proxy under test does not share
 * an event loop with its client (nginx does not either). Reads a JSON target
 * from argv (a TCP host and port, a unix socket, or a port in a sandbox's
 * network namespace): `connections` keep-alive loops of GET for `warmupS` (not counted)
 * then `seconds`, each as fast as answers come or, with `rate`, paced: request k
 * is due at k / rate s (spread over the connections) and its latency counts
 * from when it was due, so a stall is not hidden by the requests it delays; prints `{count, seconds, lat, total, clientCpuMs}` as JSON
 * (`total` counts warm-up requests too, as the CPU readings do). Any
 * answer but a 200 with a Content-Length, and a connection closed while a
 * response is due, fails the run (exit 1).
 *
 * Given an array of targets, it loads them all at once from one start and
 * prints an array of results. Paced, their requests interleave evenly (one to
 * each target in turn): a stall of the machine then falls on every target
 * alike, so the difference of their tails is what each path adds, not which
 * few seconds of the machine's life each path happened to be measured in.
 *
 * It speaks HTTP/1.1 on raw sockets (one fixed request, a response read up to
 * its Content-Length) rather than through node:http: the client shares the
 * machine's two cores with the proxy and the server it measures, and
 * node:http's client cost ~2× the CPU per request and, while V8 compiled it in
 * the first seconds of each run, bursts of several ms on its helper threads
 * that every path's tail paid for.
 */
import net from 'node:net';
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

interface Result {
  count: number;
  seconds: number;
  lat: number[];
  total: number;
  clientCpuMs: number;
}

const HEAD_END = Buffer.from('\r\n\r\n');
const start = performance.now();
const cpu0 = process.cpuUsage();

/** Load one target; it is the `slot`-th of `slots` loaded at once, which places its paced requests between theirs. */
function measure(t: Target, slot: number, slots: number): Promise<Omit<Result, 'clientCpuMs'>> {
  const link = t.netns ? new NetnsPorts(`load${slot}`, t.netns.pid).link(t.netns.port) : undefined;
  const connect = (): net.Socket => (link ? link.connect() : t.socketPath ? net.connect(t.socketPath) : net.connect(t.port!, t.host ?? '127.0.0.1'));
  const REQUEST = Buffer.from(`GET ${t.path} HTTP/1.1\r\nHost: ${t.host ?? 'localhost'}\r\n\r\n`, 'latin1');
  const lat: number[] = [];
  const measureFrom = start + (t.warmupS ?? 0) * 1000;
  const end = measureFrom + t.seconds * 1000;
  /** Each connection's requests are this many ms apart when paced (0: back to back). */
  const every = t.rate ? (t.connections * 1000) / t.rate : 0;
  let total = 0;
  let running = t.connections;
  let finish!: () => void;
  const finished = new Promise<void>((resolve) => (finish = resolve));
  function fail(why: string): never {
    process.stderr.write(`load: GET ${t.path}: ${why}\n`);
    process.exit(1);
  }
  for (let i = 0; i < t.connections; i++) loop(i);
  return finished.then(() => ({ count: lat.length, seconds: t.seconds, lat, total }));

  function loop(conn: number): void {
    let k = 0;
    /** When the request in flight was due (or sent, if later). */
    let t0 = 0;
    /** The response so far, while it arrives in more than one read. */
    let pending: Buffer | undefined;
    /** The whole response's length in bytes, once its head is read. */
    let length = -1;
    /** A request was sent and its response is not complete. */
    let inFlight = false;
    /** The response in flight ends its connection (`Connection: close`). */
    let last = false;
    let done = false;
    let socket: net.Socket | undefined;

    const next = (): void => {
      if (!every) return send(performance.now());
      const due = start + ((conn * slots + slot) * 1000) / (t.rate! * slots) + k++ * every;
      const now = performance.now();
      if (due > now) setTimeout(send, due - now, due);
      else send(due);
    };
    const send = (due: number): void => {
      // From when it was due, or from when it started if the timer fired early (node's timers keep whole ms).
      t0 = Math.min(due, performance.now());
      if (t0 >= end) {
        done = true;
        socket?.destroy();
        if (--running === 0) finish();
        return;
      }
      // A connection the server ended between responses is replaced, as node's agent does (nginx
      // ends one after keepalive_requests); the new connection's set-up counts in this request.
      socket ??= open();
      inFlight = true;
      socket.write(REQUEST);
    };
    const open = (): net.Socket => {
      const s = connect();
      s.setNoDelay(true);
      s.on('data', (chunk: Buffer) => received(chunk));
      s.on('error', (e) => fail(e.message));
      s.on('close', () => {
        if (done || socket !== s) return;
        if (inFlight) fail('the server closed the connection before its response was complete');
        socket = undefined;
      });
      return s;
    };
    const received = (chunk: Buffer): void => {
      const bytes = pending ? Buffer.concat([pending, chunk]) : chunk;
      if (length < 0) {
        const headEnd = bytes.indexOf(HEAD_END);
        if (headEnd < 0) return void (pending = bytes);
        const head = bytes.toString('latin1', 0, headEnd);
        if (!head.startsWith('HTTP/1.1 200 ')) fail(head.slice(0, head.indexOf('\r')));
        const m = /\r\ncontent-length:[ \t]*(\d+)/i.exec(head);
        if (!m) fail('a response without Content-Length');
        length = headEnd + HEAD_END.length + Number(m[1]);
        last = /\r\nconnection:[ \t]*close/i.test(head);
      }
      if (bytes.length < length) return void (pending = bytes);
      if (bytes.length > length) fail('bytes after the response');
      pending = undefined;
      length = -1;
      inFlight = false;
      if (last) (socket?.destroy(), (socket = undefined));
      total++;
      // Only requests started and finished inside the window count, so none straddles its edges.
      const t1 = performance.now();
      if (t0 >= measureFrom && t1 <= end) lat.push(t1 - t0);
      next();
    };
    next();
  }
}

const arg = JSON.parse(process.argv[2]!) as Target | Target[];
const targets = Array.isArray(arg) ? arg : [arg];
const results = await Promise.all(targets.map((t, i) => measure(t, i, targets.length)));
const cpu = process.cpuUsage(cpu0);
// One process served them all: its CPU is shared out by requests.
const all = results.reduce((n, r) => n + r.total, 0);
const out: Result[] = results.map((r) => ({ ...r, clientCpuMs: ((cpu.user + cpu.system) / 1000) * (r.total / all) }));
process.stdout.write(JSON.stringify(Array.isArray(arg) ? out : out[0]));
