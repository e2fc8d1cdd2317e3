/**
 * The run service: accepts a prepared run, queues it, executes its stages in
 * a fresh sandbox, decides the verdict, stores every status change and emits
 * it on the event bus. The only place that knows the order of a run's steps.
 */
import { randomUUID } from 'node:crypto';
import { cpus } from 'node:os';
import type { KilnConfig } from '../config/schema.js';
import { KilnError, messageOf, notFound } from '../errors.js';
import { LOCAL, sees, type Principal } from '../auth/principal.js';
import type { KilnEventBus } from '../events.js';
import type { Budget } from '../pools/budget.js';
import type { Runtimes } from '../runtimes/index.js';
import type { Sandbox } from '../runtimes/types.js';
import type { RunStore } from '../store/runs.js';
import { WorkQueue } from './queue.js';
import type { LanguageInfo, Run } from './types.js';
import { prepareRun, type PreparedRun } from './validate.js';
import { compileFailed, runVerdict, toStage } from './verdict.js';

export interface RunServiceDeps {
  config: KilnConfig;
  runtimes: Runtimes;
  store: RunStore;
  budget: Budget;
  events: KilnEventBus;
  log?: { warn(obj: object, msg: string): void; error(obj: object, msg: string): void };
}

export class RunService {
  readonly queue: WorkQueue;
  private versions: Promise<Map<string, string>> | undefined;

  constructor(private readonly deps: RunServiceDeps) {
    const c = deps.config.runs;
    this.queue = new WorkQueue(c.concurrency ?? cpus().length, c.queueMax);
  }

  /** Validate and enqueue. Resolves with the queued run (use `waitDone` for the result). */
  async submit(body: unknown, principal: Principal): Promise<{ run: Run; wait: boolean }> {
    const prepared = prepareRun(body, this.deps.config);
    // A credential's caps bound what its holder may ask for: the smaller of request and cap holds.
    const caps = principal.limits;
    if (caps) for (const k of ['wallMs', 'cpuMs', 'memoryMb', 'pids', 'outputBytes'] as const) if (caps[k] !== undefined) prepared.runLimits[k] = Math.min(prepared.runLimits[k], Math.floor(caps[k]));
    const { runtime, spec } = this.sandboxFor(prepared);
    const reservation = { cpus: spec.limits.cpus, memoryMb: spec.limits.memoryMb };
    if (!this.deps.budget.fitsEver(reservation)) {
      throw new KilnError('over_budget', `the run needs ${reservation.memoryMb} MiB and ${reservation.cpus} CPUs, more than this node's budget`, 400);
    }
    const run: Run = {
      id: randomUUID(),
      language: prepared.languageName,
      template: prepared.templateName,
      status: 'queued',
      createdAt: new Date().toISOString(),
      owner: principal.id,
    };
    // Queue first (it may refuse with 429), then store: a refused run leaves no row.
    let settle!: (ok: boolean) => void;
    const stored = new Promise<boolean>((r) => (settle = r));
    this.queue.push(async () => {
      if (!(await stored)) return;
      await this.deps.budget.reserve(reservation);
      try {
        await this.execute(run, prepared, () => runtime.create(spec));
      } finally {
        this.deps.budget.release(reservation);
      }
    });
    try {
      await this.deps.store.insert(run, prepared.request, principal.id);
      settle(true);
    } catch (e) {
      settle(false);
      throw e;
    }
    this.deps.events.safeEmit('run:queued', { ...run });
    return { run, wait: prepared.wait };
  }

  private sandboxFor(p: PreparedRun) {
    const compiled = p.language.compile !== undefined;
    return this.deps.runtimes.specFor(p.templateName, {
      memoryMb: Math.max(p.runLimits.memoryMb, compiled ? p.compileLimits.memoryMb : 0),
      pids: Math.max(p.runLimits.pids, compiled ? p.compileLimits.pids : 0),
    });
  }

  private async execute(run: Run, p: PreparedRun, create: () => Promise<Sandbox>): Promise<void> {
    run.status = 'running';
    run.startedAt = new Date().toISOString();
    await this.deps.store.markRunning(run.id, run.startedAt);
    this.deps.events.safeEmit('run:running', { ...run });
    let sandbox: Sandbox | undefined;
    try {
      sandbox = await create();
      for (const f of p.files) await sandbox.putFile(f.name, f.data);
      const env = p.language.env;
      if (p.language.compile) {
        const c = await sandbox.exec({ command: p.language.compile, env, limits: p.compileLimits });
        run.compile = toStage(c);
        if (compileFailed(c)) run.verdict = 'compile_error';
      }
      if (!run.verdict) {
        const r = await sandbox.exec({ command: [...p.language.run, ...p.args], env, stdin: p.stdin, limits: p.runLimits });
        run.run = toStage(r);
        run.verdict = runVerdict(r);
      }
    } catch (e) {
      run.verdict = 'internal_error';
      run.error = messageOf(e);
      this.deps.log?.error({ runId: run.id, err: run.error }, 'run failed inside kiln');
    }
    run.status = 'done';
    run.finishedAt = new Date().toISOString();
    await this.deps.store.finish(run);
    this.deps.events.safeEmit('run:done', { ...run });
    // Clean-up after the answer: the client has its verdict; the queue slot (and budget) stay held until the sandbox is gone.
    // One macrotask first, so the answer's write (microtasks and ticks) goes out before destroy's synchronous cgroup work.
    await new Promise((r) => setImmediate(r));
    await sandbox?.destroy().catch((e: unknown) => this.deps.log?.warn({ err: messageOf(e) }, 'sandbox destroy failed'));
  }

  /** A run `principal` may see; another's is as unknown as a made-up id. */
  async get(id: string, principal: Principal): Promise<Run> {
    const run = await this.deps.store.get(id);
    if (!run || !sees(principal, run.owner ?? 'local')) throw notFound('run', id);
    return run;
  }

  /** Resolves with the run once it is done. */
  async waitDone(id: string): Promise<Run> {
    return new Promise<Run>((resolve, reject) => {
      const off = this.deps.events.on('run:done', (r) => {
        if (r.id !== id) return;
        off();
        resolve(r);
      });
      // It may have finished before we listened.
      this.get(id, LOCAL).then(
        (r) => {
          if (r.status === 'done') {
            off();
            resolve(r);
          }
        },
        (e: unknown) => {
          off();
          reject(e);
        },
      );
    });
  }

  /** Languages with the version their toolchain reports (probed once, in a sandbox). */
  async languages(): Promise<LanguageInfo[]> {
    this.versions ??= this.probeVersions();
    const versions = await this.versions;
    return Object.entries(this.deps.config.languages).map(([name, l]) => ({
      name,
      version: versions.get(name) ?? 'unknown',
      template: l.template,
      compiled: l.compile !== undefined,
    }));
  }

  private async probeVersions(): Promise<Map<string, string>> {
    const out = new Map<string, string>();
    await Promise.all(
      Object.entries(this.deps.config.languages).map(async ([name, l]) => {
        if (!l.version) return;
        try {
          const { runtime, spec } = this.deps.runtimes.specFor(l.template);
          const sb = await runtime.create(spec);
          try {
            const r = await sb.exec({ command: l.version, limits: { ...this.deps.config.runs.compileDefaults, outputBytes: 4096 } });
            const text = (r.stdout.toString() || r.stderr.toString()).trim().split('\n')[0] ?? '';
            if (r.exitCode === 0 && text) out.set(name, text);
          } finally {
            await sb.destroy();
          }
        } catch {
          /* runtime unavailable here: the version stays unknown */
        }
      }),
    );
    return out;
  }
}
