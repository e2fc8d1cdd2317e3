/**
 * Picks the driver for a template. The only place that knows which runtimes
 * exist; everything above asks for a sandbox by template.
 */
import type { KilnConfig, TemplateConfig } from '../config/schema.js';
import { KilnError } from '../errors.js';
import { ProcessRuntime } from './process/driver.js';
import { DockerRuntime } from './docker/driver.js';
import { GvisorRuntime } from './gvisor/driver.js';
import type { Runtime, RuntimeCheck, SandboxLimits, SandboxSpec } from './types.js';

/** How long a round of runtime checks answers `checkAll` (ms). */
const CHECK_MAX_AGE_MS = 30_000;

export class Runtimes {
  private readonly drivers = new Map<string, Runtime>();
  /** The last round of checks: its answers, and when they came (unset while it runs). */
  private checks: { result: Promise<RuntimeCheck[]>; at?: number } | undefined;

  constructor(
    private readonly config: KilnConfig,
    instanceId: string,
    sandboxRoot: string,
  ) {
    const p = config.runtimes.process;
    this.drivers.set('process', new ProcessRuntime({ instanceId, sandboxRoot, uid: p.uid, gid: p.gid, systemDirs: p.systemDirs }));
    const d = config.runtimes.docker;
    this.drivers.set('docker', new DockerRuntime({ instanceId, socketPath: d.socketPath, ociRuntime: d.ociRuntime }));
    // Same engine as docker, with runsc: containers carry kiln.runtime so neither driver reaps the other's.
    this.drivers.set('gvisor', new GvisorRuntime({ instanceId, socketPath: d.socketPath }));
  }

  get(name: string): Runtime {
    const rt = this.drivers.get(name);
    if (!rt) throw new KilnError('runtime_unavailable', `runtime ${JSON.stringify(name)} is not known`, 500);
    return rt;
  }

  all(): Runtime[] {
    return [...this.drivers.values()];
  }

  /**
   * Every runtime's check. A check starts real sandboxes (a runsc container
   * takes about a second), so answers up to `maxAgeMs` old are reused and
   * callers arriving meanwhile share one round: `GET /v1/info` cannot be
   * used to make kiln start sandboxes in a loop. `kiln doctor` asks with 0.
   */
  async checkAll(maxAgeMs = CHECK_MAX_AGE_MS): Promise<RuntimeCheck[]> {
    const cached = this.checks;
    if (cached && (cached.at === undefined || performance.now() - cached.at <= maxAgeMs)) return cached.result;
    const round: { result: Promise<RuntimeCheck[]>; at?: number } = {
      result: Promise.all(this.all().map((r) => r.check().catch((e: Error) => ({ runtime: r.name, ok: false, detail: e.message })))),
    };
    this.checks = round;
    void round.result.then(() => (round.at = performance.now()));
    return round.result;
  }

  /** The sandbox spec for a template, its limits raised to at least `atLeast`. */
  specFor(templateName: string, atLeast: Partial<SandboxLimits> = {}): { runtime: Runtime; spec: SandboxSpec } {
    const t: TemplateConfig | undefined = this.config.templates[templateName];
    if (!t) throw new KilnError('unknown_template', `template ${JSON.stringify(templateName)} is not configured`, 400);
    const base = { ...this.config.sandboxDefaults, ...t.limits };
    const limits: SandboxLimits = {
      cpus: Math.max(base.cpus, atLeast.cpus ?? 0),
      memoryMb: Math.max(base.memoryMb, atLeast.memoryMb ?? 0),
      pids: Math.max(base.pids, atLeast.pids ?? 0),
      diskMb: Math.max(base.diskMb, atLeast.diskMb ?? 0),
    };
    const options: Record<string, unknown> = {};
    if (t.image) options.image = t.image;
    if (t.rootfs) options.rootfs = t.rootfs;
    return { runtime: this.get(t.runtime), spec: { template: templateName, limits, env: t.secretEnv ? { ...t.env, ...t.secretEnv } : t.env, options } };
  }

  async reapOrphans(): Promise<number> {
    let n = 0;
    for (const r of this.all()) n += await r.reapOrphans().catch(() => 0);
    return n;
  }

  async close(): Promise<void> {
    await Promise.allSettled(this.all().map((r) => r.close()));
  }
}
