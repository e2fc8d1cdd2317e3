/**
 * The sessions benchmark: a real kiln (SQLite store on a temp data dir, HTTP on
 * a random loopback port, process runtime) serving the `demo-web` template
 * (stdlib Python server), each figure beside a baseline measured in the same run:
 *
 *  (a) warm claim — `POST /v1/sessions` until the first proxied `GET <url>info`
 *      answers 200 — beside a cold start of the same template;
 *  (b) that cold start beside the same server started by bare bubblewrap and
 *      polled on loopback on kiln's readiness schedule (readyPollDelayMs); and
 *      a class arriving at an empty pool: several cold starts at once beside as
 *      many bare bubblewrap starts at once, until the last one answers;
 *  (c) requests/s and latency of `GET /info` through `/s/<token>/`, directly
 *      inside the backend's network namespace, and through Debian's nginx
 *      `proxy_pass`: requests/s at saturation, path after path in rounds;
 *      latency paced, path after path and then interleaved (all three at
 *      once, their requests taking turns), which the added-p99 target reads.
 *
 * Bounded in count and time; traffic only to loopback and to the sandboxes this
 * script makes. Missed targets are reported, never fatal.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, lstatSync, mkdtempSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { startKiln, type Kiln } from '../src/app.js';
import { buildApi } from '../src/api/server.js';
import { DEFAULT_CONFIG } from '../src/config/defaults.js';
import type { KilnConfig } from '../src/config/schema.js';
import type { Sandbox, SandboxSpec } from '../src/runtimes/types.js';
import { NetnsPorts } from '../src/runtimes/netns.js';
import { readyPollDelayMs } from '../src/pools/warm.js';
import { percentile, table } from './stats.js';
import { startRaw } from './spawn.js';
import { LOCAL } from '../src/auth/principal.js';

export interface SessionsBenchOptions {
  quick: boolean;
  /** Only part (c), the proxy: no warm claims or cold starts. */
  proxyOnly?: boolean;
}

/** The template as shipped (its own limits), with a pool for the warm claims. */
const TEMPLATE = 'demo-web';
/** The same template with a whole CPU, pool empty: cold starts like for like with the raw baseline (no CPU quota). */
const TEMPLATE_1CPU = 'bench-demo-web-1cpu';
const POOL = { min: 5, max: 30 };
const DEMO_COMMAND = ['python3', '/usr/share/kiln/demo_server.py'];
/** A request with its own env cannot take a pooled server: this forces a cold start. */
const COLD_ENV = { X: '1' };
/** A claim refills its pool after 250 ms (src/pools/pool.ts): claims are spaced past it. */
const REFILL_DELAY_MS = 250;
const CONNECTIONS = 16;
/** Requests/s of the paced latency pass: a fifth or less of what each path serves here. */
const PACED_RATE = 1000;
/** Untimed seconds at the start of each interleaved round (see there). */
const INTERLEAVED_WARMUP_S = 2;

interface Latencies {
  name: string;
  ms: number[];
  capped: boolean;
  /** The series its ratios are taken against, and what to call it (default: the raw bwrap start; none for a baseline). */
  against?: { series: Latencies; name: string };
}

interface LoadResult {
  /** Requests timed: started and done inside the measured window. */
  count: number;
  seconds: number;
  lat: number[];
  /** All requests the load process completed, warm-up included: what the CPU readings cover. */
  total: number;
  /** CPU the proxy process spent (user + system), ms; undefined for the direct path. */
  proxyCpuMs?: number;
  /** The kernel's part of proxyCpuMs (system time: sockets, TCP over loopback, epoll). */
  proxySysMs?: number;
  /** CPU the load generator spent, ms. */
  clientCpuMs: number;
}

export async function benchSessions(opts: SessionsBenchOptions): Promise<void> {
  // Proxy load in `rounds` (direct, nginx, kiln, then the reverse), `loadS` per path in all: more, shorter rounds put the
  // machine's drift on all three paths alike (a p99 over a few seconds moves by a millisecond with the neighbours here).
  const n = opts.quick
    ? { warm: 20, cold: 5, burst: 5, bursts: 2, warmup: 1, loadS: 2, rounds: 2, warmLoadS: 1 }
    : { warm: 100, cold: 20, burst: 10, bursts: 5, warmup: 2, loadS: 10, rounds: 5, warmLoadS: 2 };
  // Fixed counts, and an overall cap after which no series starts another call.
  const deadline = performance.now() + (opts.quick ? 3 : 10) * 60_000;
  const load0 = loadavg();
  const tmp = mkdtempSync(join(tmpdir(), 'kiln-bench-sessions-'));
  const config = benchConfig(join(tmp, 'data'), opts.proxyOnly ? { min: 0, max: POOL.max } : POOL);
  const shipped = DEFAULT_CONFIG.templates[TEMPLATE]!.limits!;

  const starts: Latencies[] = [];
  const notes: string[] = [];
  const targets: [label: string, value: number | undefined, unit: string, ok: (v: number) => boolean, goal: string][] = [];
  let loads: { name: string; r: LoadResult }[] = [];
  const single: { name: string; r: LoadResult }[] = [];
  const paced: { name: string; r: LoadResult }[] = [];
  const interleaved: { name: string; r: LoadResult }[] = [];

  const kiln = await startKiln(config);
  const app = await buildApi(kiln);
  const base = await app.listen({ host: '127.0.0.1', port: 0 });
  const agent = new http.Agent({ keepAlive: true });
  const api = new Api(base, agent);
  const open = new Set<string>(); // sessions to delete should anything throw
  console.log(`kiln on ${base}, data dir ${config.server.dataDir}, ${opts.quick ? 'quick' : 'full'} run, ${cpus().length} CPUs, load average ${fmtLoad(load0)}`);
  try {
    const claim = async (template: string, env?: Record<string, string>) => {
      const t0 = performance.now();
      const s = await api.createSession({ template, ...(env ? { env } : {}) });
      open.add(s.id);
      const tPost = performance.now() - t0;
      const status = await api.getStatus(`${s.url}info`);
      const ms = performance.now() - t0;
      if (status !== 200) throw new Error(`${template}: first proxied GET ${s.url}info answered ${status}`);
      return { id: s.id, ms, postMs: tPost, getMs: ms - tPost };
    };
    const end = async (id: string) => {
      await api.deleteSession(id);
      open.delete(id);
    };
    const settled = () => waitPoolSettled(kiln, TEMPLATE, POOL.min);

    if (!opts.proxyOnly) {
      console.log('warming the pool');
      await settled();

      // (a) warm claims: each on a settled pool (untimed wait), so no refill shares the CPU with it.
      console.log(`warm claims of ${TEMPLATE}`);
      const warm: Latencies = { name: `kiln warm claim ${TEMPLATE} → first proxied 200`, ms: [], capped: false };
      const warmPost: number[] = [];
      const warmGet: number[] = [];
      for (let i = 0; i < n.warmup + n.warm; i++) {
        if (performance.now() > deadline) {
          warm.capped = true;
          break;
        }
        await settled();
        const c = await claim(TEMPLATE);
        await end(c.id);
        if (i < n.warmup) continue;
        warm.ms.push(c.ms);
        warmPost.push(c.postMs);
        warmGet.push(c.getMs);
      }
      console.log(`  p50 ${fmt(percentile(warm.ms, 50))} ms, p99 ${fmt(percentile(warm.ms, 99))} ms (n ${warm.ms.length})`);

      // (a, b) cold starts of the template as shipped and with 1 CPU, and raw bwrap starts, interleaved
      // (a rotating order per round) so drift in the machine's load falls on all three alike.
      console.log('cold starts and raw bwrap starts, interleaved');
      const raw: Latencies = { name: 'raw bwrap start of the same server → first 200', ms: [], capped: false };
      const cold1: Latencies = { name: `kiln cold start, ${TEMPLATE} with 1 CPU → first proxied 200`, ms: [], capped: false };
      const coldShipped: Latencies = { name: `kiln cold start, ${TEMPLATE} as shipped (${shipped.cpus} CPU) → first proxied 200`, ms: [], capped: false };
      const trace = traceColdStarts(kiln);
      const phases: Record<'total' | 'create' | 'listening' | 'ready' | 'outside', number[]> = { total: [], create: [], listening: [], ready: [], outside: [] };
      const rawSysDirs = config.runtimes.process.systemDirs;
      type Trace = ReturnType<typeof trace.last>;
      const kinds: { into: Latencies; run: () => Promise<{ ms: number; t?: Trace }> }[] = [
        { into: raw, run: async () => ({ ms: await rawStart(rawSysDirs) }) },
        {
          into: cold1,
          run: async () => {
            trace.reset();
            const c = await claim(TEMPLATE_1CPU, COLD_ENV);
            const t = trace.last();
            await end(c.id);
            return { ms: c.ms, t };
          },
        },
        {
          into: coldShipped,
          run: async () => {
            const c = await claim(TEMPLATE, COLD_ENV);
            await end(c.id);
            return { ms: c.ms };
          },
        },
      ];
      try {
        for (let i = 0; i < n.warmup + n.cold; i++) {
          if (performance.now() > deadline) {
            raw.capped = cold1.capped = coldShipped.capped = true;
            break;
          }
          for (let k = 0; k < kinds.length; k++) {
            const kind = kinds[(i + k) % kinds.length]!;
            await settled(); // cold starts leave the pool alone; this only makes sure, and spaces the starts alike
            const { ms, t } = await kind.run();
            if (i < n.warmup) continue;
            kind.into.ms.push(ms);
            if (t) {
              phases.total.push(ms);
              phases.create.push(t.createMs);
              phases.listening.push(t.listeningMs);
              phases.ready.push(t.readyMs - t.createMs);
              phases.outside.push(ms - t.readyMs);
            }
          }
        }
      } finally {
        trace.restore();
      }
      const printSeries = (s: Latencies) => console.log(`  ${s.name}: p50 ${fmt(percentile(s.ms, 50))} ms, p99 ${fmt(percentile(s.ms, 99))} ms (n ${s.ms.length})`);
      for (const s of [raw, cold1, coldShipped]) printSeries(s);

      // (b, a class arriving at an empty pool) `burst` cold starts at once against as many raw starts at once; each
      // round is timed until the last of them answered. Rounds alternate which goes first.
      console.log(`${n.burst} cold starts at once and ${n.burst} raw bwrap starts at once, alternating`);
      const rawBurst: Latencies = { name: `${n.burst} raw bwrap starts at once → the last one's first 200`, ms: [], capped: false };
      const coldBurst: Latencies = {
        name: `${n.burst} kiln cold starts at once, ${TEMPLATE} with 1 CPU → the last one's first proxied 200`,
        ms: [],
        capped: false,
        against: { series: rawBurst, name: `${n.burst} raw bwrap at once` },
      };
      const bursts: [Latencies, () => Promise<number>][] = [
        [rawBurst, async () => Math.max(...(await Promise.all(Array.from({ length: n.burst }, () => rawStart(rawSysDirs)))))],
        [
          coldBurst,
          async () => {
            const claims = await Promise.all(Array.from({ length: n.burst }, () => claim(TEMPLATE_1CPU, COLD_ENV)));
            await Promise.all(claims.map((c) => end(c.id)));
            return Math.max(...claims.map((c) => c.ms));
          },
        ],
      ];
      for (let i = 0; i < n.warmup + n.bursts; i++) {
        if (performance.now() > deadline) {
          rawBurst.capped = coldBurst.capped = true;
          break;
        }
        for (const [into, run] of i % 2 === 0 ? bursts : [...bursts].reverse()) {
          await settled();
          const ms = await run();
          if (i >= n.warmup) into.ms.push(ms);
        }
      }

      warm.against = { series: coldShipped, name: 'cold start as shipped' };
      starts.push(raw, cold1, coldShipped, warm, rawBurst, coldBurst);
      for (const s of [rawBurst, coldBurst]) printSeries(s);

      notes.push(
        `warm claim: POST /v1/sessions p50 ${fmt(percentile(warmPost, 50))} ms, then the first proxied GET p50 ${fmt(percentile(warmGet, 50))} ms ` +
          `(each claim on a settled pool: ${POOL.min} ready, none starting, ≥ ${REFILL_DELAY_MS} ms after the last claim; the waiting is not timed)`,
        `cold start (1 CPU) p50 by phase: sandbox create (dirs, cgroup, launcher, bwrap until its child pid) ${fmt(percentile(phases.create, 50))} ms; ` +
          `then the server until kiln saw it listen ${fmt(percentile(phases.listening, 50))} ms; ` +
          `from create until ready (listen, GET / probe, store writes) ${fmt(percentile(phases.ready, 50))} ms; ` +
          `outside startWarm (API, store, proxy hold and the first GET) ${fmt(percentile(phases.outside, 50))} ms; total ${fmt(percentile(phases.total, 50))} ms`,
        `raw baseline: bwrap with user, pid, ipc, uts and cgroup namespaces, --disable-userns, --new-session, --clearenv and kiln's read-only system dirs, ` +
          `but no network namespace (so it can be polled on 127.0.0.1), no cgroup limits, no launcher, no seccomp filter; ` +
          `it polls GET / on kiln's readiness schedule (a tenth of the time since the start, 2 to 25 ms apart), then GET /info on the same connection`,
        `cold starts, raw starts interleaved round by round (order rotating), ${n.warmup} warm-up round(s) not counted`,
        `${n.burst} at once (a class arriving at an empty pool): each round timed until the last start answered; kiln's and the raw rounds alternate, ${n.warmup} warm-up round(s) not counted`,
      );
      const ratioP50 = (a: Latencies, b: Latencies) => percentile(a.ms, 50) / percentile(b.ms, 50);
      targets.push(['warm claim p50', percentile(warm.ms, 50), ' ms', (v) => v < 10, '< 10 ms']);
      targets.push([`cold start / raw start p50, ${TEMPLATE} with 1 CPU (like for like)`, ratioP50(cold1, raw), '×', (v) => v <= 1.2, '≤ 1.2×']);
      targets.push([`cold start / raw start p50, ${TEMPLATE} as shipped (${shipped.cpus} CPU quota)`, ratioP50(coldShipped, raw), '×', (v) => v <= 1.2, '≤ 1.2×']);
    }

    // (c) the same backend three ways, in rounds (direct, nginx, kiln, then the reverse) so drift falls on all alike.
    console.log('proxy load');
    const s = await api.createSession({ template: TEMPLATE_1CPU, env: COLD_ENV });
    open.add(s.id);
    if ((await api.getStatus(`${s.url}info`)) !== 200) throw new Error('proxy load: the session did not answer');
    const link = kiln.sessions.live(s.id, LOCAL).warm!.link;
    if (link.netnsPid === undefined) throw new Error('proxy load: the process runtime\'s link names no network namespace');
    const backend = { pid: link.netnsPid, port: config.templates[TEMPLATE_1CPU]!.port! };
    const port = new URL(base).port;
    const perRound = n.loadS / n.rounds;
    const acc = new Map<string, LoadResult>();
    const merge = (name: string, r: LoadResult) => {
      const a = acc.get(name);
      if (!a) acc.set(name, r);
      else {
        a.count += r.count;
        a.seconds += r.seconds;
        a.lat.push(...r.lat);
        a.total += r.total;
        a.clientCpuMs += r.clientCpuMs;
        if (r.proxyCpuMs !== undefined) a.proxyCpuMs = (a.proxyCpuMs ?? 0) + r.proxyCpuMs;
        if (r.proxySysMs !== undefined) a.proxySysMs = (a.proxySysMs ?? 0) + r.proxySysMs;
      }
    };
    let loadCapped = false;
    /** kiln's requests/s ÷ nginx's in each round (the two ran back to back): how far this machine's drift moves the ratio. */
    const roundRatios: number[] = [];
    await withNginx(tmp, backend, async (nginxAt, nginxCpuMs) => {
      const targets3: LoadTarget[] = [
        { netns: backend, path: '/info' },
        { netns: nginxAt, path: '/info' },
        { host: '127.0.0.1', port: Number(port), path: `${s.url}info` },
      ];
      const paths = [
        { name: 'direct', run: (secs = perRound, conns = CONNECTIONS, rate?: number) => runLoad(targets3[0]!, secs, conns, rate) },
        {
          name: 'nginx proxy_pass',
          run: async (secs = perRound, conns = CONNECTIONS, rate?: number) => {
            const c0 = nginxCpuMs();
            const r = await runLoad(targets3[1]!, secs, conns, rate);
            const c1 = nginxCpuMs();
            return { ...r, proxyCpuMs: c1.user + c1.sys - c0.user - c0.sys, proxySysMs: c1.sys - c0.sys };
          },
        },
        {
          name: 'kiln /s/<token>/',
          run: async (secs = perRound, conns = CONNECTIONS, rate?: number) => {
            const c0 = process.cpuUsage();
            const r = await runLoad(targets3[2]!, secs, conns, rate);
            const c = process.cpuUsage(c0);
            return { ...r, proxyCpuMs: (c.user + c.system) / 1000, proxySysMs: c.system / 1000 };
          },
        },
      ];
      // Untimed first: V8 compiles kiln's proxy path over its first second or two under load (a cold
      // path costs ~2× the CPU per request); a serving kiln is warm, as nginx's C is from the start.
      for (const p of paths) await p.run(n.warmLoadS);
      for (let round = 0; round < n.rounds; round++) {
        if (performance.now() > deadline) {
          loadCapped = true;
          break;
        }
        const rps: Record<string, number> = {};
        for (const p of round % 2 === 0 ? paths : [...paths].reverse()) {
          const r = await p.run();
          merge(p.name, r);
          rps[p.name] = r.count / r.seconds;
          const cpu = r.proxyCpuMs === undefined ? '' : `, proxy CPU ${perRequest(r)} µs/req (user + system)`;
          console.log(`  ${p.name}: ${(r.count / r.seconds).toFixed(0)} req/s, p99 ${fmt(percentile(r.lat, 99), 2)} ms${cpu}`);
        }
        roundRatios.push(rps['kiln /s/<token>/']! / rps['nginx proxy_pass']!);
      }
      // One connection, one request at a time: what each hop adds when nothing queues.
      if (performance.now() < deadline) for (const p of paths) single.push({ name: p.name, r: await p.run(n.loadS / n.rounds, 1) });
      // Paced: the same connections at a fixed PACED_RATE, well below what any path can serve, so
      // latency shows what each hop adds rather than how long the queue is (at saturation a closed
      // loop's latency is its connections ÷ its throughput, the throughput target over again).
      for (let round = 0; round < n.rounds && performance.now() < deadline; round++) {
        const p99s: string[] = [];
        for (const p of round % 2 === 0 ? paths : [...paths].reverse()) {
          const r = await p.run(perRound, CONNECTIONS, PACED_RATE);
          p99s.push(`${p.name} ${fmt(percentile(r.lat, 99), 2)}`);
          const a = paced.find((x) => x.name === p.name);
          if (a) (a.r.lat.push(...r.lat), (a.r.count += r.count), (a.r.seconds += r.seconds));
          else paced.push({ name: p.name, r });
        }
        // Round by round, so a tail that one stall made can be told from one every round has.
        console.log(`  paced round ${round + 1}, p99 ms: ${p99s.join(', ')}`);
      }
      // Paced and interleaved: the three paths at once, their requests taking turns, so a stall of
      // this shared machine lands on all three alike; the paths measured one after another above
      // each get their own few seconds of the machine, and their tails differ by those seconds too.
      // The machine sees what it saw above: PACED_RATE requests/s in all, for as long. The passes
      // above left kiln idle for seconds at a time, and V8's memory reducer answers that with two
      // full collections as traffic returns (README): a 2 s warm-up lets them pass untimed, as they
      // would in a server with steady traffic. The passes above keep them in.
      for (let round = 0; round < n.rounds && performance.now() < deadline; round++) {
        const rs = await runLoads(targets3, perRound * targets3.length, CONNECTIONS, PACED_RATE / targets3.length, INTERLEAVED_WARMUP_S);
        rs.forEach((r, i) => {
          const a = interleaved.find((x) => x.name === paths[i]!.name);
          if (a) (a.r.lat.push(...r.lat), (a.r.count += r.count), (a.r.seconds += r.seconds));
          else interleaved.push({ name: paths[i]!.name, r });
        });
        console.log(`  interleaved round ${round + 1}, p99 ms: ${rs.map((r, i) => `${paths[i]!.name} ${fmt(percentile(r.lat, 99), 2)}`).join(', ')}`);
      }
    });
    await end(s.id);
    loads = paths3(acc);
    if (loadCapped) notes.push('proxy load: stopped early by the time cap (fewer rounds than planned)');
    notes.push(`kiln ÷ nginx requests/s round by round: ${roundRatios.map((x) => `${x.toFixed(2)}×`).join(', ')}`);

    const direct = acc.get('direct');
    const nginx = acc.get('nginx proxy_pass');
    const kilnLoad = acc.get('kiln /s/<token>/');
    const rps = (r?: LoadResult) => (r ? r.count / r.seconds : undefined);
    const p99 = (r?: LoadResult) => (r ? percentile(r.lat, 99) : undefined);
    targets.push(['kiln proxy / nginx requests/s', div(rps(kilnLoad), rps(nginx)), '×', (v) => v >= 0.8, '≥ 0.8×']);
    const pacedOf = (name: string) => paced.find((x) => x.name === name)?.r;
    const interleavedOf = (name: string) => interleaved.find((x) => x.name === name)?.r;
    // The target is read from the interleaved pass: an added latency is a difference of two tails,
    // and only there were both taken in the same seconds of this shared machine.
    targets.push([`kiln proxy added p99 over direct, ${PACED_RATE} req/s in all, paced and interleaved`, sub(p99(interleavedOf('kiln /s/<token>/')), p99(interleavedOf('direct'))), ' ms', (v) => v <= 2, '≤ 2 ms']);
    const added = (r?: LoadResult, base?: LoadResult) => fmt(sub(p99(r), p99(base)) ?? NaN, 2);
    notes.push(
      `added p99 over direct: interleaved kiln ${added(interleavedOf('kiln /s/<token>/'), interleavedOf('direct'))} ms, nginx ${added(interleavedOf('nginx proxy_pass'), interleavedOf('direct'))} ms; ` +
        `paced one path after another kiln ${added(pacedOf('kiln /s/<token>/'), pacedOf('direct'))} ms, nginx ${added(pacedOf('nginx proxy_pass'), pacedOf('direct'))} ms; ` +
        `at saturation kiln ${added(kilnLoad, direct)} ms, nginx ${added(nginx, direct)} ms`,
    );
  } finally {
    for (const id of open) await api.deleteSession(id).catch(() => undefined);
    agent.destroy();
    await app.close();
    await kiln.close();
    for (const rt of kiln.runtimes.all()) {
      const left = await rt.listOwn().catch(() => []);
      if (left.length > 0) console.log(`warning: ${rt.name} runtime left ${left.length} sandboxes: ${left.join(' ')}`);
    }
    rmSync(tmp, { recursive: true, force: true });
  }

  if (starts.length) {
    console.log(`\nsessions benchmark (process runtime; ratio = p50 and p99 ÷ those of the baseline named)\n`);
    const raw = starts[0]!;
    const rawBurst = starts[4];
    const baselineOf = (s: Latencies) => s.against?.series ?? (s === raw || s === rawBurst ? undefined : raw);
    console.log(
      table(
        ['series', 'n', 'p50 ms', 'p99 ms', 'p50 ratio', 'p99 ratio', 'against'],
        starts.map((s) => {
          const b = baselineOf(s);
          return [
            s.name,
            `${s.ms.length}${s.capped ? '*' : ''}`,
            fmt(percentile(s.ms, 50)),
            fmt(percentile(s.ms, 99)),
            b ? `${(percentile(s.ms, 50) / percentile(b.ms, 50)).toFixed(2)}×` : 'baseline',
            b ? `${(percentile(s.ms, 99) / percentile(b.ms, 99)).toFixed(2)}×` : '',
            b === raw ? 'raw bwrap' : (s.against?.name ?? ''),
          ];
        }),
      ),
    );
    if (starts.some((s) => s.capped)) console.log('* stopped early by the time cap');
  }

  if (loads.length) {
    const direct = loads[0]!.r;
    const nginx = loads[1]!.r;
    console.log(
      `\nproxy: GET /info to one ${TEMPLATE} backend (1 CPU), ${CONNECTIONS} keep-alive connections from a separate Node process, ` +
        `${n.loadS} s per path in ${n.rounds} rounds (direct, nginx, kiln; then the reverse), 0.5 s warm-up per round and a first ${n.warmLoadS} s pass per path not counted.\n` +
        `The backend is one Python process (ThreadingHTTPServer) in the sandbox's network namespace: all three paths share that ceiling.\n` +
        `direct: the load generator makes its connections inside that namespace (kiln's addon, as kiln's links do); nginx runs inside it\n` +
        `(nsenter) on another port, reached the same way; kiln listens on 127.0.0.1: every client talks TCP over a loopback.\n` +
        `On this ${cpus().length}-CPU machine the client, the proxy and Python share the cores.\n`,
    );
    console.log(
      table(
        ['path', 'requests', 'req/s', 'p50 ms', 'p99 ms', 'req/s ÷ direct', 'req/s ÷ nginx', 'added p99 ms', 'proxy CPU µs/req (user + sys)', 'client CPU µs/req'],
        loads.map(({ name, r }) => [
          name,
          String(r.count),
          (r.count / r.seconds).toFixed(0),
          fmt(percentile(r.lat, 50), 2),
          fmt(percentile(r.lat, 99), 2),
          r === direct ? 'baseline' : `${(r.count / r.seconds / (direct.count / direct.seconds)).toFixed(2)}×`,
          r === direct ? '' : r === nginx ? 'baseline' : `${(r.count / r.seconds / (nginx.count / nginx.seconds)).toFixed(2)}×`,
          r === direct ? 'baseline' : fmt(percentile(r.lat, 99) - percentile(direct.lat, 99), 2),
          perRequest(r),
          ((r.clientCpuMs * 1000) / r.total).toFixed(0),
        ]),
      ),
    );
  }

  if (paced.length) {
    console.log(`\nproxy latency paced: the same GET /info at ${PACED_RATE} req/s over ${CONNECTIONS} keep-alive connections, each request timed from when it was due, ${n.loadS} s per path in ${n.rounds} rounds\n`);
    console.log(latencyTable(paced));
  }

  if (interleaved.length) {
    console.log(`\nproxy latency paced and interleaved: the three paths at once, ${PACED_RATE} req/s in all (${(PACED_RATE / 3).toFixed(0)} each, over ${CONNECTIONS} keep-alive connections each) from one load process, their requests taking turns, ${n.loadS * 3} s in ${n.rounds} rounds, each after ${INTERLEAVED_WARMUP_S} s untimed\n`);
    console.log(latencyTable(interleaved));
  }

  if (single.length) {
    console.log(`\nproxy latency unloaded: the same GET /info over 1 keep-alive connection, one request at a time, ${n.loadS / n.rounds} s per path (after the rounds above)\n`);
    console.log(latencyTable(single));
  }

  if (loads.length) {
    notes.push(
      'CPU per request counts warm-up requests too (the readings span them); kiln\'s is the whole bench process (idle but for kiln), nginx\'s its master and worker; ' +
        'the proxy hop also costs the client less or more, hence the client column',
    );
  }
  notes.push(`load average before ${fmtLoad(load0)}, after ${fmtLoad(loadavg())} (other work on this machine shows up as noise)`);
  console.log(`\n${notes.join('\n')}`);
  console.log('\ntargets');
  for (const [label, value, unit, ok, goal] of targets) {
    const shown = value === undefined || Number.isNaN(value) ? 'not measured' : `${value.toFixed(2)}${unit} (${goal}) ${ok(value) ? 'PASS' : 'MISS'}`;
    console.log(`  ${label}: ${shown}`);
  }
}

function benchConfig(dataDir: string, pool: { min: number; max: number }): KilnConfig {
  const config = structuredClone(DEFAULT_CONFIG);
  config.server.dataDir = dataDir;
  config.server.logLevel = 'silent';
  config.budget = { cpuTotal: 64, memoryTotalMb: 64 * 1024 };
  const t = config.templates[TEMPLATE];
  if (!t?.command || t.runtime !== 'process') throw new Error(`template ${TEMPLATE}: expected a process-runtime server template`);
  if (t.command.join(' ') !== DEMO_COMMAND.join(' ')) throw new Error(`template ${TEMPLATE} runs ${t.command.join(' ')}, the raw baseline ${DEMO_COMMAND.join(' ')}`);
  config.templates[TEMPLATE] = { ...t, pool };
  config.templates[TEMPLATE_1CPU] = { ...t, pool: { min: 0, max: POOL.max }, limits: { ...t.limits, cpus: 1 } };
  return config;
}

/** Wait (untimed) until the pool has `min` ready, none starting, and no delayed refill is pending. */
async function waitPoolSettled(kiln: Kiln, template: string, min: number): Promise<void> {
  await sleep(REFILL_DELAY_MS + 50);
  for (let i = 0; i < 1200; i++) {
    const p = kiln.sessions.poolViews().find((v) => v.template === template)!;
    if (p.ready >= min && p.starting === 0) return;
    await sleep(25);
  }
  throw new Error(`pool ${template} did not refill to ${min} within 30 s: ${JSON.stringify(kiln.sessions.poolViews())}`);
}

/**
 * Times the process runtime's phases of a cold start (the ones marked by
 * COLD_ENV): create (until the sandbox's first process exists), the server's
 * start (until kiln first sees the port listening, from the end of create),
 * and start-to-ready as the service reports it.
 */
type ColdTrace = { createMs: number; listeningMs: number; readyMs: number };
function traceColdStarts(kiln: Kiln): { reset(): void; last(): ColdTrace | undefined; restore(): void } {
  const { runtime } = kiln.runtimes.specFor(TEMPLATE);
  const create = runtime.create;
  let cur: Partial<ColdTrace> = {};
  runtime.create = async (spec: SandboxSpec): Promise<Sandbox> => {
    const t0 = performance.now();
    const sb = await create.call(runtime, spec);
    if (spec.env?.X !== COLD_ENV.X) return sb;
    const t1 = performance.now();
    cur.createMs = t1 - t0;
    const portListening = sb.portListening;
    if (portListening) {
      sb.portListening = async (p: number) => {
        const yes = await portListening.call(sb, p);
        if (yes && cur.listeningMs === undefined) cur.listeningMs = performance.now() - t1;
        return yes;
      };
    }
    return sb;
  };
  const off = kiln.events.on('session:claimed', (e) => {
    if (!e.fromPool) cur.readyMs = e.ms;
  });
  return {
    reset: () => (cur = {}),
    last: () => {
      const { createMs, listeningMs, readyMs } = cur;
      return createMs !== undefined && listeningMs !== undefined && readyMs !== undefined ? { createMs, listeningMs, readyMs } : undefined;
    },
    restore: () => {
      runtime.create = create;
      off();
    },
  };
}

/** kiln's API over node:http with one keep-alive agent (fetch would add its own costs to a 6 ms figure). */
class Api {
  constructor(
    private readonly base: string,
    private readonly agent: http.Agent,
  ) {}

  createSession(body: object): Promise<{ id: string; url: string }> {
    return this.call('POST', '/v1/sessions', body, 201) as Promise<{ id: string; url: string }>;
  }

  async deleteSession(id: string): Promise<void> {
    await this.call('DELETE', `/v1/sessions/${id}`, undefined, 200);
  }

  /** GET a path on kiln (the proxy included); resolves with the status once the body is read. */
  getStatus(path: string): Promise<number> {
    const u = new URL(path, this.base);
    return new Promise((resolve, reject) => {
      http
        .get({ host: u.hostname, port: u.port, path: u.pathname, agent: this.agent }, (res) => {
          res.resume();
          res.on('end', () => resolve(res.statusCode ?? 0));
        })
        .on('error', reject);
    });
  }

  private call(method: string, path: string, body: object | undefined, expect: number): Promise<unknown> {
    const u = new URL(path, this.base);
    const payload = body === undefined ? undefined : JSON.stringify(body);
    const headers: Record<string, string | number> = payload ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) } : {};
    return new Promise((resolve, reject) => {
      const req = http.request({ host: u.hostname, port: u.port, path: u.pathname, method, agent: this.agent, headers }, (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (text += c));
        res.on('end', () => (res.statusCode === expect ? resolve(text ? JSON.parse(text) : undefined) : reject(new Error(`${method} ${path}: HTTP ${res.statusCode} ${text.slice(0, 300)}`))));
      });
      req.on('error', reject);
      req.end(payload);
    });
  }
}

/** A free loopback port (closed again before use: a small race, fine for a bench). */
async function freePort(): Promise<number> {
  const srv = net.createServer().listen(0, '127.0.0.1');
  await new Promise((r) => srv.once('listening', r));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise((r) => srv.close(r));
  return port;
}

/** The host's system dirs read-only, links kept as links: what the process runtime binds (bwrap.ts rootArgs). */
function systemMounts(dirs: string[]): string[] {
  const out: string[] = [];
  for (const dir of dirs) {
    let st;
    try {
      st = lstatSync(dir);
    } catch {
      continue;
    }
    if (st.isSymbolicLink()) out.push('--symlink', readlinkSync(dir), dir);
    else out.push('--ro-bind', dir, dir);
  }
  return out;
}

/**
 * The baseline: the demo server in bare bubblewrap (no network namespace, so
 * it listens on a free 127.0.0.1 port), polled with GET / on kiln's readiness
 * schedule (the same delays between looks as kiln's, from the spawn) until it
 * answers, then GET /info on that connection. Returns ms from spawn to /info's 200.
 */
async function rawStart(systemDirs: string[]): Promise<number> {
  const port = await freePort();
  const argv = [
    '--unshare-user', '--unshare-pid', '--unshare-ipc', '--unshare-uts', '--unshare-cgroup', '--disable-userns',
    '--die-with-parent', '--new-session', '--hostname', 'kiln', '--clearenv',
    ...systemMounts(systemDirs), '--proc', '/proc', '--dev', '/dev', '--tmpfs', '/tmp', '--remount-ro', '/', '--chdir', '/',
    '--setenv', 'PATH', '/usr/local/bin:/usr/bin:/bin', '--setenv', 'HOME', '/tmp', '--setenv', 'KILN_PORT', String(port),
    '--', ...DEMO_COMMAND,
  ];
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const t0 = performance.now();
  // Started as kiln starts its launcher (bench/spawn.ts), so neither pays for forking this process.
  const { child, stderr, closed } = startRaw(['bwrap', ...argv]);
  try {
    const get = (path: string) =>
      new Promise<number>((resolve) => {
        http
          .get({ host: '127.0.0.1', port, path, agent }, (res) => {
            res.resume();
            res.on('end', () => resolve(res.statusCode ?? 0));
          })
          .on('error', () => resolve(0));
      });
    for (let i = 0; i < 1200; i++) {
      if (child.exitCode !== null) throw new Error(`raw bwrap demo server exited ${child.exitCode}: ${stderr().trim().slice(0, 300)}`);
      const status = await get('/');
      if (status > 0 && status < 500) {
        if ((await get('/info')) !== 200) throw new Error('raw demo server: GET /info did not answer 200');
        return performance.now() - t0;
      }
      await sleep(readyPollDelayMs(performance.now() - t0));
    }
    throw new Error('raw demo server never answered within 30 s');
  } finally {
    agent.destroy();
    child.kill('SIGKILL');
    await closed;
  }
}

/** Where bench/load.ts sends its GETs. */
interface LoadTarget {
  netns?: { pid: number; port: number };
  socketPath?: string;
  host?: string;
  port?: number;
  path: string;
}

/** `connections` keep-alive loops of GET from a separate process (bench/load.ts), so no proxy shares the client's event loop. */
async function runLoad(target: LoadTarget, seconds: number, connections: number, rate?: number): Promise<LoadResult> {
  return (await runLoads([target], seconds, connections, rate))[0]!;
}

/** The same for several targets at once from one load process, paced requests interleaved among them. */
async function runLoads(targets: LoadTarget[], seconds: number, connections: number, rate?: number, warmupS = 0.5): Promise<LoadResult[]> {
  const arg = JSON.stringify(targets.map((target) => ({ ...target, seconds, warmupS, connections, rate })));
  const child = spawn(process.execPath, ['--import', 'tsx', join(import.meta.dirname, 'load.ts'), arg], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout!.on('data', (c: Buffer) => (out += c.toString()));
  child.stderr!.on('data', (c: Buffer) => (err = (err + c.toString()).slice(-2000)));
  const killer = setTimeout(() => child.kill('SIGKILL'), (seconds + warmupS + 30) * 1000);
  const code = await new Promise<number | null>((r) => child.once('close', r));
  clearTimeout(killer);
  if (code !== 0) throw new Error(`load generator failed (exit ${code}): ${err.trim().slice(0, 500)}`);
  return JSON.parse(out) as LoadResult[];
}

/**
 * Debian's nginx as a reverse proxy in front of the same backend (upstream
 * keep-alive, HTTP/1.1), one worker, everything in `tmp`. nginx runs inside
 * the sandbox's network namespace (nsenter), so it reaches the port straight
 * over TCP, as kiln's link does, and listens on another TCP port there, which
 * the load generator reaches the way `direct` does: clients of nginx and of
 * kiln both talk TCP over a loopback. `fn` gets nginx's address and a reader
 * of the CPU nginx has used (ms).
 */
async function withNginx<T>(tmp: string, backend: { pid: number; port: number }, fn: (at: { pid: number; port: number }, cpuMs: () => { user: number; sys: number }) => Promise<T>): Promise<T> {
  const nginxBin = '/usr/sbin/nginx';
  if (!existsSync(nginxBin)) throw new Error(`${nginxBin} not found (scripts/setup installs nginx-light)`);
  // The namespace is the sandbox's own: only its server listens there.
  const at = { pid: backend.pid, port: backend.port === 8181 ? 8182 : 8181 };
  const dir = join(tmp, 'nginx');
  const conf = join(tmp, 'nginx.conf');
  rmSync(dir, { recursive: true, force: true });
  writeFileSync(
    conf,
    `daemon off;
master_process on;
worker_processes 1;
pid ${join(tmp, 'nginx.pid')};
error_log ${join(tmp, 'nginx-error.log')} warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path ${tmp}/nginx-body; proxy_temp_path ${tmp}/nginx-proxy; fastcgi_temp_path ${tmp}/nginx-fastcgi;
  uwsgi_temp_path ${tmp}/nginx-uwsgi; scgi_temp_path ${tmp}/nginx-scgi;
  upstream backend { server 127.0.0.1:${backend.port}; keepalive 32; }
  server {
    listen 127.0.0.1:${at.port};
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
`,
  );
  // nsenter execs nginx in place: the child's pid is nginx's master.
  const child: ChildProcess = spawn('nsenter', [`--target=${backend.pid}`, '--net', '--', nginxBin, '-c', conf, '-p', tmp], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (c: Buffer) => (stderr = (stderr + c.toString()).slice(-2000)));
  const exited = new Promise<void>((r) => child.once('close', () => r()));
  const cpuMs = () => procTreeCpuMs(child.pid!);
  const ports = new NetnsPorts('bench-nginx', backend.pid);
  try {
    let up = false;
    for (let i = 0; i < 200 && !up && child.exitCode === null; i++) {
      up = await new Promise<boolean>((resolve) => {
        const s = ports.link(at.port).connect();
        s.on('error', () => resolve(false));
        s.on('data', () => undefined);
        s.write('GET /nginx-probe HTTP/1.0\r\n\r\n', () => undefined);
        s.on('end', () => {
          s.destroy();
          resolve(true);
        });
      });
      if (!up) await sleep(25);
    }
    if (!up) throw new Error(`nginx did not start: ${stderr.trim() || readLog(join(tmp, 'nginx-error.log'))}`);
    return await fn(at, cpuMs);
  } finally {
    ports.close();
    child.kill('SIGQUIT'); // graceful: the master waits for its worker
    const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(timer);
  }
}

/** User and system CPU of a process and its children (nginx: the master and its worker), ms each, from /proc. */
function procTreeCpuMs(pid: number): { user: number; sys: number } {
  const tick = 1000 / 100; // USER_HZ is 100 on Linux
  const total = { user: 0, sys: 0 };
  const pids = [pid];
  try {
    pids.push(...readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number));
  } catch {
    // no children file: the master only
  }
  for (const p of pids) {
    try {
      const stat = readFileSync(`/proc/${p}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      total.user += Number(fields[11]) * tick; // utime (field 14)
      total.sys += Number(fields[12]) * tick; // stime (field 15)
    } catch {
      // gone
    }
  }
  return total;
}

/** A proxy's CPU per request, µs, as `total (user + system)`; empty for the direct path. */
function perRequest(r: LoadResult): string {
  if (r.proxyCpuMs === undefined) return '';
  const us = (ms: number) => ((ms * 1000) / r.total).toFixed(0);
  const sys = r.proxySysMs ?? 0;
  return `${us(r.proxyCpuMs)} (${us(r.proxyCpuMs - sys)} + ${us(sys)})`;
}

function readLog(path: string): string {
  try {
    return readFileSync(path, 'utf8').trim().slice(-500);
  } catch {
    return 'no error log';
  }
}

/** p50, p90 and p99 per path, and what each adds to the first (the direct path). */
function latencyTable(rows: { name: string; r: LoadResult }[]): string {
  const d = rows[0]!.r;
  const ps = [50, 90, 99];
  return table(
    ['path', 'requests', ...ps.map((p) => `p${p} ms`), ...ps.map((p) => `added p${p} ms`)],
    rows.map(({ name, r }) => [
      name,
      String(r.count),
      ...ps.map((p) => fmt(percentile(r.lat, p), 3)),
      ...ps.map((p) => (r === d ? 'baseline' : fmt(percentile(r.lat, p) - percentile(d.lat, p), 3))),
    ]),
  );
}

function paths3(acc: Map<string, LoadResult>): { name: string; r: LoadResult }[] {
  return ['direct', 'nginx proxy_pass', 'kiln /s/<token>/'].flatMap((name) => (acc.has(name) ? [{ name, r: acc.get(name)! }] : []));
}

function div(a?: number, b?: number): number | undefined {
  return a === undefined || b === undefined ? undefined : a / b;
}

function sub(a?: number, b?: number): number | undefined {
  return a === undefined || b === undefined ? undefined : a - b;
}

function fmt(v: number, digits = 1): string {
  return Number.isFinite(v) ? v.toFixed(digits) : '—';
}

function fmtLoad(l: number[]): string {
  return l.map((x) => x.toFixed(2)).join(' ');
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
