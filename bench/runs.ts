/**
 * The runs benchmark: a real kiln (SQLite store on a temp data dir, HTTP on a
 * random loopback port) against baselines measured in the same process —
 * a raw `bwrap` spawn for the process runtime and a raw Docker API
 * create+start+wait for the docker runtime (and the same with
 * `Runtime: runsc` for the gvisor runtime) — with runs/s, p50 and p99.
 */
import { lstatSync, mkdirSync, mkdtempSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import Docker from 'dockerode';
import { startKiln, type Kiln } from '../src/app.js';
import { buildApi } from '../src/api/server.js';
import { DEFAULT_CONFIG } from '../src/config/defaults.js';
import type { Run } from '../src/runs/types.js';
import { buildSeccompFilter } from '../src/runtimes/process/seccomp.js';
import { measure, measurePaired, percentile, summarize, table, type SeriesOptions, type Summary } from './stats.js';
import { spawnOk, spawnStall } from './spawn.js';
import { LOCAL } from '../src/auth/principal.js';

export interface RunsBenchOptions {
  quick: boolean;
  /** Only this part; both when absent. */
  only?: 'process' | 'docker';
}

const DOCKER_IMAGE = 'kiln-python:local';
const PY_HELLO = { language: 'python', files: [{ name: 'main.py', content: 'print("hi")\n' }] };
const C_SOURCE = '#include <stdio.h>\nint main(void) { puts("hi"); return 0; }\n';
const C_HELLO = { language: 'c', files: [{ name: 'main.c', content: C_SOURCE }] };
const PY_DOCKER_HELLO = { language: 'python-docker', files: [{ name: 'main.py', content: 'print("hi")\n' }] };
/** A syscall-heavy program: the filter runs on every syscall, so this is where it costs most. */
const PY_SYSCALLS = ['python3', '-c', 'import os\nfor _ in range(100000): os.stat("/")'];
const PY_GVISOR_HELLO = { language: 'python-gvisor', files: [{ name: 'main.py', content: 'print("hi")\n' }] };

interface Row {
  name: string;
  s: Summary;
  /** What the ratio is taken against; a baseline row has none. */
  baseline?: Summary;
}

export async function benchRuns(opts: RunsBenchOptions): Promise<void> {
  // Fixed counts, and an overall cap after which no series starts another call.
  const deadline = performance.now() + (opts.quick ? 3 : 15) * 60_000;
  const series = (concurrency: number): SeriesOptions => ({ count: opts.quick ? 10 : 60, warmup: opts.quick ? 2 : 3, concurrency, deadline });
  const rows: Row[] = [];
  const notes: string[] = [];
  let failed = false;
  const add = (name: string, s: Summary, baseline?: Summary): Summary => {
    rows.push({ name, s, baseline });
    const ratio = baseline ? `, ${(s.runsPerSec / baseline.runsPerSec).toFixed(2)}× baseline` : '';
    console.log(`  ${name}: ${s.runsPerSec.toFixed(1)} runs/s, p50 ${s.p50.toFixed(1)} ms${ratio}`);
    return s;
  };

  let py1: Summary | undefined;
  let py2: Summary | undefined;
  let bw1: Summary | undefined;
  let bw2: Summary | undefined;
  let overheadMs: number | undefined;
  const tmp = mkdtempSync(join(tmpdir(), 'kiln-bench-'));
  try {
    const config = structuredClone(DEFAULT_CONFIG);
    config.server.dataDir = join(tmp, 'data');
    config.server.logLevel = 'silent';
    config.runs.concurrency = 2; // the c=2 series must not queue behind one worker
    config.budget.cpuTotal = Math.max(2, cpus().length); // each run reserves 1 CPU
    const kiln = await startKiln(config);
    const app = await buildApi(kiln);
    await app.listen({ host: '127.0.0.1', port: 0 });
    const base = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
    console.log(`kiln on ${base}, data dir ${config.server.dataDir}, ${opts.quick ? 'quick' : 'full'} run`);
    try {
      if (opts.only !== 'docker') {
        console.log('process runtime');
        const pyWall: number[] = [];
        const http = (body: object, wall?: number[]) => async () => {
          const run = checkOk(await postRun(base, body));
          wall?.push((run.compile?.wallMs ?? 0) + (run.run?.wallMs ?? 0));
        };

        // What starting a process costs kiln's event loop at kiln's size, node's spawn beside kiln's (both raw, no sandbox).
        const stall = await spawnStall(opts.quick ? 20 : 60);
        notes.push(
          `event loop held per process start at ${stall.rssMb.toFixed(0)} MB of RSS: node's child_process.spawn p50 ${percentile(stall.node, 50).toFixed(2)} ms ` +
            `(p99 ${percentile(stall.node, 99).toFixed(2)}), kiln's posix_spawn p50 ${percentile(stall.kiln, 50).toFixed(2)} ms (p99 ${percentile(stall.kiln, 99).toFixed(2)}), ` +
            `${(percentile(stall.node, 50) / percentile(stall.kiln, 50)).toFixed(1)}× less (the raw baselines below start by kiln's spawn too)`,
        );
        bw1 = add('raw bwrap python -c pass c=1', summarize(await measure(series(1), () => rawBwrap(['python3', '-c', 'pass']))));
        // The seccomp filter's own cost: the same raw bwrap with and without kiln's filter, interleaved call by call.
        const filter = buildSeccompFilter();
        for (const [label, command] of [['python -c pass', ['python3', '-c', 'pass']], ['python 100k stat()', PY_SYSCALLS]] as const) {
          const [plain, filtered] = await measurePaired(series(1), () => rawBwrap([...command]), () => rawBwrapSeccomp(filter, [...command]));
          const base = add(`raw bwrap ${label} (paired) c=1`, summarize(plain));
          const withFilter = add(`raw bwrap ${label} + seccomp filter c=1`, summarize(filtered), base);
          notes.push(`seccomp filter, ${label}: p50 ${withFilter.p50.toFixed(1)} ms vs ${base.p50.toFixed(1)} ms without (${(withFilter.p50 / base.p50).toFixed(3)}× latency)`);
        }
        // HTTP and in-process calls interleaved, so drift in the machine's load falls on both alike. Runs vary by
        // ±10 ms, more than the API costs, so each HTTP call is also compared with its own time in the service.
        const service = timeService(kiln);
        const apiMs: number[] = [];
        const httpTraced = async () => {
          const t0 = performance.now();
          await http(PY_HELLO, pyWall)();
          apiMs.push(performance.now() - t0 - service.lastMs());
        };
        const [viaHttp, viaCall] = await measurePaired(series(1), httpTraced, () => inProcess(kiln, PY_HELLO)).finally(service.restore);
        py1 = add('kiln python HTTP c=1', summarize(viaHttp), bw1);
        const inproc = add('kiln python in-process c=1', summarize(viaCall), bw1);
        bw2 = add('raw bwrap python -c pass c=2', summarize(await measure(series(2), () => rawBwrap(['python3', '-c', 'pass']))));
        py2 = add('kiln python HTTP c=2', summarize(await measure(series(2), http(PY_HELLO))), bw2);

        const cBase = (c: number) => measure(series(c), () => rawBwrapC(tmp));
        const c1 = add('raw bwrap gcc + ./main c=1', summarize(await cBase(1)));
        add('kiln c HTTP c=1', summarize(await measure(series(1), http(C_HELLO))), c1);
        const c2 = add('raw bwrap gcc + ./main c=2', summarize(await cBase(2)));
        add('kiln c HTTP c=2', summarize(await measure(series(2), http(C_HELLO))), c2);

        overheadMs = percentile(apiMs.slice(-py1.n), 50);
        const execP50 = percentile(pyWall.slice(-py1.n), 50);
        notes.push(
          'python c=1 HTTP and in-process rows ran interleaved (their runs/s is 1000 ÷ mean latency)',
          `python c=1: HTTP p50 ${py1.p50.toFixed(1)} ms, in-process submit+waitDone p50 ${inproc.p50.toFixed(1)} ms ` +
            `(difference ${(py1.p50 - inproc.p50).toFixed(1)} ms, mostly run-to-run noise); ` +
            `per request, HTTP round trip − its submit+waitDone in the server: p50 ${overheadMs.toFixed(1)} ms`,
          `python c=1: sandbox exec wall p50 ${execP50.toFixed(1)} ms; kiln outside the exec p50 ≈ ${(inproc.p50 - execP50).toFixed(1)} ms`,
        );
      }

      if (opts.only !== 'process') {
        console.log('docker runtime');
        const docker = new Docker({ socketPath: config.runtimes.docker.socketPath });
        const missing = await dockerMissing(docker);
        if (missing) {
          console.log(`  docker: skipped — ${missing}`);
          notes.push(`docker: skipped — ${missing}`);
        } else {
          try {
            const http = async () => void checkOk(await postRun(base, PY_DOCKER_HELLO));
            const d1 = add('raw docker create+start+wait c=1', summarize(await measure(series(1), () => rawDocker(docker))));
            add('kiln python-docker HTTP c=1', summarize(await measure(series(1), http)), d1);
            const d2 = add('raw docker create+start+wait c=2', summarize(await measure(series(2), () => rawDocker(docker))));
            add('kiln python-docker HTTP c=2', summarize(await measure(series(2), http)), d2);
            // gvisor (c=1 only: each start boots a sentry, ~1 s on this kind of machine).
            const gHttp = async () => void checkOk(await postRun(base, PY_GVISOR_HELLO));
            const g1 = add('raw docker runsc create+start+wait c=1', summarize(await measure(series(1), () => rawDocker(docker, 'runsc'))));
            add('kiln python-gvisor HTTP c=1', summarize(await measure(series(1), gHttp)), g1);
          } catch (e) {
            failed = true;
            console.log(`  docker: FAILED — ${(e as Error).message}`);
            notes.push(`docker: FAILED — ${(e as Error).message}`);
          }
        }
      }
    } finally {
      await app.close();
      await kiln.close();
      for (const rt of kiln.runtimes.all()) {
        const left = await rt.listOwn().catch(() => []);
        if (left.length > 0) console.log(`warning: ${rt.name} runtime left ${left.length} sandboxes: ${left.join(' ')}`);
      }
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }

  console.log('\nruns benchmark (ratio = runs/s ÷ the baseline above it at the same concurrency)\n');
  console.log(
    table(
      ['name', 'n', 'runs/s', 'p50 ms', 'p99 ms', 'ratio'],
      rows.map((r) => [
        r.name,
        `${r.s.n}${r.s.capped ? '*' : ''}`,
        r.s.runsPerSec.toFixed(1),
        r.s.p50.toFixed(1),
        r.s.p99.toFixed(1),
        r.baseline ? `${(r.s.runsPerSec / r.baseline.runsPerSec).toFixed(2)}×` : 'baseline',
      ]),
    ),
  );
  if (rows.some((r) => r.s.capped)) console.log('* stopped early by the time cap');
  if (notes.length) console.log(`\n${notes.join('\n')}`);

  console.log('\ntargets');
  const target = (label: string, value: number | undefined, unit: string, ok: (v: number) => boolean, goal: string) =>
    console.log(`  ${label}: ${value === undefined ? 'not measured' : `${value.toFixed(2)}${unit} (${goal}) ${ok(value) ? 'PASS' : 'MISS'}`}`);
  const ratio = (a?: Summary, b?: Summary) => (a && b ? a.runsPerSec / b.runsPerSec : undefined);
  target('kiln python / raw bwrap throughput c=1', ratio(py1, bw1), '×', (v) => v >= 0.6, '≥ 0.6×');
  target('kiln python / raw bwrap throughput c=2', ratio(py2, bw2), '×', (v) => v >= 0.6, '≥ 0.6×');
  target('API overhead p50 (HTTP round trip − submit+waitDone)', overheadMs, ' ms', (v) => v < 5, '< 5 ms');
  if (failed) process.exitCode = 1;
}

/** POST /v1/runs over real HTTP (wait defaults to true). */
async function postRun(base: string, body: object): Promise<Run> {
  const res = await fetch(`${base}/v1/runs`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  const json = (await res.json()) as Run;
  if (res.status !== 200) throw new Error(`POST /v1/runs: HTTP ${res.status} ${JSON.stringify(json)}`);
  return json;
}

async function inProcess(kiln: Kiln, body: object): Promise<void> {
  const { run } = await kiln.runs.submit(body, LOCAL);
  checkOk(await kiln.runs.waitDone(run.id));
}

/**
 * Times kiln.runs.submit() to waitDone() as the HTTP route calls them, so each
 * request's round trip can be split into service time and API overhead. One
 * request at a time only (the c=1 series).
 */
function timeService(kiln: Kiln): { lastMs(): number; restore(): void } {
  const runs = kiln.runs;
  const { submit, waitDone } = runs;
  let started = 0;
  let last = NaN;
  runs.submit = (body, principal) => {
    started = performance.now();
    return submit.call(runs, body, principal);
  };
  runs.waitDone = (id) => waitDone.call(runs, id).finally(() => (last = performance.now() - started));
  return {
    lastMs: () => last,
    restore: () => {
      runs.submit = submit;
      runs.waitDone = waitDone;
    },
  };
}

/** A benchmark of runs that fail would measure the wrong thing: stop instead. */
function checkOk(run: Run): Run {
  if (run.verdict !== 'ok' || run.run?.stdout !== 'hi\n') {
    const why = run.error ?? run.compile?.stderr ?? run.run?.stderr ?? '';
    throw new Error(`${run.language} run ${run.id}: verdict ${run.verdict}, stdout ${JSON.stringify(run.run?.stdout)}: ${why.trim().slice(0, 300)}`);
  }
  return run;
}

/** bwrap with the namespaces kiln asks for and the host's /usr (and its /bin, /lib, /lib64 dirs or links). */
function bwrapArgv(extra: string[], command: string[]): string[] {
  const mounts: string[] = [];
  for (const dir of ['/usr', '/bin', '/lib', '/lib64']) {
    let st;
    try {
      st = lstatSync(dir);
    } catch {
      continue;
    }
    if (st.isSymbolicLink()) mounts.push('--symlink', readlinkSync(dir), dir);
    else mounts.push('--ro-bind', dir, dir);
  }
  return [
    'bwrap', '--unshare-all', '--die-with-parent', '--new-session', '--clearenv', '--setenv', 'PATH', '/usr/local/bin:/usr/bin:/bin',
    ...mounts, '--proc', '/proc', '--dev', '/dev', '--tmpfs', '/tmp', ...extra, '--', ...command,
  ];
}

const rawBwrap = (command: string[]) => spawnOk(bwrapArgv([], command));

/** rawBwrap with the filter handed over on stdin (bwrap reads it to the end, as it reads the launcher's fd 6 for kiln). */
const rawBwrapSeccomp = (filter: Buffer, command: string[]) => spawnOk(bwrapArgv(['--seccomp', '0'], command), filter);

let cDirSeq = 0;
/** What kiln does for C, by hand: a fresh work dir, main.c in it, gcc in one bwrap, ./main in another. */
async function rawBwrapC(tmp: string): Promise<void> {
  const dir = join(tmp, `c${++cDirSeq}`);
  mkdirSync(dir);
  try {
    writeFileSync(join(dir, 'main.c'), C_SOURCE);
    const work = ['--bind', dir, '/work', '--chdir', '/work'];
    await spawnOk(bwrapArgv(work, ['gcc', '-O2', '-o', 'main', 'main.c', '-lm']));
    await spawnOk(bwrapArgv(work, ['./main']));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Why the docker part cannot run here, or undefined when it can. */
async function dockerMissing(docker: Docker): Promise<string | undefined> {
  try {
    await Promise.race([docker.ping(), new Promise((_, reject) => setTimeout(() => reject(new Error('no answer in 3 s')), 3000).unref())]);
  } catch (e) {
    return `no Docker engine (${(e as Error).message})`;
  }
  try {
    await docker.getImage(DOCKER_IMAGE).inspect();
  } catch {
    return `image ${DOCKER_IMAGE} missing (run scripts/build-images)`;
  }
  return undefined;
}

/** The Docker baseline: create, start, wait for and remove one `python3 -c pass` container with no network, under `ociRuntime`. */
async function rawDocker(docker: Docker, ociRuntime = 'runc'): Promise<void> {
  const container = await docker.createContainer({
    Image: DOCKER_IMAGE,
    Cmd: ['python3', '-c', 'pass'],
    Labels: { 'kiln.bench': 'raw' },
    NetworkDisabled: true,
    HostConfig: { NetworkMode: 'none', Runtime: ociRuntime },
  });
  try {
    await container.start();
    const { StatusCode } = (await container.wait()) as { StatusCode: number };
    if (StatusCode !== 0) throw new Error(`raw docker (${ociRuntime}) python3 -c pass: exit ${StatusCode}`);
  } finally {
    await container.remove({ force: true });
  }
}
