/**
 * Kernel-enforced limits for the process runtime, on cgroup v2 and on v1.
 *
 * v2: one unified tree; kiln's cgroups live under /sys/fs/cgroup/kiln.
 * v1: one tree per controller (memory, pids, cpu, cpuacct, freezer); kiln
 *     makes the same relative path in each. Hybrid machines (v1 controllers
 *     beside an empty v2 mount at /sys/fs/cgroup/unified) are treated as v1.
 *
 * A `Cgroup` is created with limits, joined by writing a pid to the files
 * `procsFiles()` lists (done by the sandbox's launcher before the user's code
 * starts), read for usage, killed as a whole and removed.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

// cgroupfs files live in kernel memory and answer in microseconds: synchronous
// calls here cost less than a hop through libuv's thread pool for each of the
// dozen files an exec touches (measured: bench/runs).
const mkdir = (p: string, o: { recursive: boolean }) => mkdirSync(p, o);
const writeFile = (p: string, v: string) => writeFileSync(p, v);
const readFile = (p: string, _enc: 'utf8') => readFileSync(p, 'utf8');
const readdir = (p: string, o: { withFileTypes: true }) => readdirSync(p, o);
const rmdir = (p: string) => rmdirSync(p);

function readNumber(path: string): number {
  try {
    const n = Number(readFileSync(path, 'utf8').trim().split(/\s+/)[0]);
    return Number.isFinite(n) ? n : 0;
  } catch {
    return 0;
  }
}

function readKey(path: string, key: string): number {
  try {
    const m = new RegExp(`^${key} (\\d+)$`, 'm').exec(readFileSync(path, 'utf8'));
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}

const ROOT = '/sys/fs/cgroup';
const V1_CONTROLLERS = ['memory', 'pids', 'cpu', 'cpuacct', 'freezer'] as const;

export type CgroupMode = 'v2' | 'v1';

const CPU_PERIOD_US = 100000;

/** CFS quota per period for a CPU cap in cores (the kernel refuses less than 1 ms). */
function cpuQuotaUs(cpus: number): number {
  return Math.max(1000, Math.round(cpus * CPU_PERIOD_US));
}

/**
 * Why a process joining a new cgroup may wait for the kernel, or undefined
 * when it does not: without `favordynmods` on the cgroup2 mount, the first
 * move after a quiet spell waits for an RCU grace period (~10 ms measured on
 * a 2-core VM), on every sandbox start and exec. `scripts/setup` sets it.
 */
export function favordynmodsProblem(mounts = readFileSync('/proc/self/mounts', 'utf8')): string | undefined {
  const cgroup2 = mounts.split('\n').map((line) => line.split(' ')).find((f) => f[2] === 'cgroup2');
  if (!cgroup2) return 'no cgroup2 mount: each sandbox start waits for the kernel to join its cgroups (boot with cgroup_favordynmods=true)';
  if (cgroup2[3]!.split(',').includes('favordynmods')) return undefined;
  return `favordynmods is off: each sandbox start and exec may wait ~10 ms for the kernel to join its cgroups; fix: scripts/setup, or mount -o remount,favordynmods ${cgroup2[1]}`;
}

export function detectCgroupMode(): CgroupMode | undefined {
  if (existsSync(join(ROOT, 'cgroup.controllers'))) return 'v2';
  if (existsSync(join(ROOT, 'memory', 'memory.limit_in_bytes'))) return 'v1';
  return undefined;
}

export interface CgroupLimits {
  memoryMb: number;
  pids: number;
  cpus: number;
}

export interface CgroupUsage {
  cpuMs: number;
  /** Peak memory since creation, KiB (current usage where no peak is kept). */
  memoryKb: number;
  /** Times the OOM killer acted. */
  oomKills: number;
  /** Times a fork was refused by pids.max. */
  pidsMaxHits: number;
  pids: number;
}

async function tryWrite(path: string, value: string): Promise<boolean> {
  try {
    writeFile(path, value);
    return true;
  } catch {
    return false;
  }
}

export class Cgroup {
  /** pids.events' `max` count when killAll sealed the cgroup. */
  private hitsBeforeSeal: number | undefined;

  private constructor(
    readonly mode: CgroupMode,
    /** Path relative to the controller root(s), e.g. `kiln/<instance>/<sandbox>`. */
    readonly rel: string,
  ) {}

  /** Directory of this cgroup for a controller (v1) or the unified tree (v2). */
  private dir(controller: (typeof V1_CONTROLLERS)[number]): string {
    return this.mode === 'v2' ? join(ROOT, this.rel) : join(ROOT, controller, this.rel);
  }

  /** A handle on an existing cgroup (to kill and remove an orphan). */
  static attach(mode: CgroupMode, rel: string): Cgroup {
    return new Cgroup(mode, rel);
  }

  /**
   * Make the cgroup (parents included) and set its limits. Its CPU weight is
   * proportional to its CPUs (what the budget reserved): under contention,
   * sandboxes share the CPU in proportion to their reservations, so CPU a
   * sandbox may use above its reservation (a start-up burst) comes out of
   * idle time, not out of another sandbox's share.
   */
  static async create(mode: CgroupMode, rel: string, limits: CgroupLimits): Promise<Cgroup> {
    const cg = new Cgroup(mode, rel);
    if (mode === 'v2') {
      await enableV2Controllers(rel);
      const d = join(ROOT, rel);
      mkdir(d, { recursive: true });
      writeFile(join(d, 'memory.max'), String(limits.memoryMb * 1024 * 1024));
      await tryWrite(join(d, 'memory.swap.max'), '0');
      writeFile(join(d, 'pids.max'), String(limits.pids));
      writeFile(join(d, 'cpu.max'), `${cpuQuotaUs(limits.cpus)} ${CPU_PERIOD_US}`);
      await tryWrite(join(d, 'cpu.weight'), String(Math.min(10000, Math.max(1, Math.round(limits.cpus * 100)))));
    } else {
      for (const c of V1_CONTROLLERS) {
        if (existsSync(join(ROOT, c))) mkdir(cg.dir(c), { recursive: true });
      }
      const mem = cg.dir('memory');
      writeFile(join(mem, 'memory.limit_in_bytes'), String(limits.memoryMb * 1024 * 1024));
      // Without swap accounting this file is absent; the memory limit alone then holds.
      await tryWrite(join(mem, 'memory.memsw.limit_in_bytes'), String(limits.memoryMb * 1024 * 1024));
      writeFile(join(cg.dir('pids'), 'pids.max'), String(limits.pids));
      writeFile(join(cg.dir('cpu'), 'cpu.cfs_period_us'), String(CPU_PERIOD_US));
      writeFile(join(cg.dir('cpu'), 'cpu.cfs_quota_us'), String(cpuQuotaUs(limits.cpus)));
      await tryWrite(join(cg.dir('cpu'), 'cpu.shares'), String(Math.max(2, Math.round(limits.cpus * 1024))));
    }
    return cg;
  }

  /**
   * Change the CPU cap (cores) of a live cgroup, keeping its weight: how a
   * session's server gets a start-up burst and then its template's quota.
   */
  setCpuCap(cpus: number): void {
    if (this.mode === 'v2') writeFile(join(ROOT, this.rel, 'cpu.max'), `${cpuQuotaUs(cpus)} ${CPU_PERIOD_US}`);
    else writeFile(join(this.dir('cpu'), 'cpu.cfs_quota_us'), String(cpuQuotaUs(cpus)));
  }

  /** Files a launcher writes its own pid into to join every controller. */
  procsFiles(): string[] {
    if (this.mode === 'v2') return [join(ROOT, this.rel, 'cgroup.procs')];
    return V1_CONTROLLERS.filter((c) => existsSync(join(ROOT, c))).map((c) => join(this.dir(c), 'cgroup.procs'));
  }

  async usage(): Promise<CgroupUsage> {
    if (this.mode === 'v2') {
      const d = join(ROOT, this.rel);
      const peak = readNumber(join(d, 'memory.peak'));
      return {
        cpuMs: (readKey(join(d, 'cpu.stat'), 'usage_usec')) / 1000,
        memoryKb: Math.round((peak || (readNumber(join(d, 'memory.current')))) / 1024),
        oomKills: readKey(join(d, 'memory.events'), 'oom_kill'),
        pidsMaxHits: this.hitsBeforeSeal ?? readKey(join(d, 'pids.events'), 'max'),
        pids: readNumber(join(d, 'pids.current')),
      };
    }
    const mem = this.dir('memory');
    return {
      cpuMs: (readNumber(join(this.dir('cpuacct'), 'cpuacct.usage'))) / 1e6,
      memoryKb: Math.round((readNumber(join(mem, 'memory.max_usage_in_bytes'))) / 1024),
      oomKills: readKey(join(mem, 'memory.oom_control'), 'oom_kill'),
      pidsMaxHits: this.hitsBeforeSeal ?? readKey(join(this.dir('pids'), 'pids.events'), 'max'),
      pids: readNumber(join(this.dir('pids'), 'pids.current')),
    };
  }

  /** CPU time used so far, ms; the cheap read the CPU deadline polls. */
  async cpuMs(): Promise<number> {
    if (this.mode === 'v2') return (readKey(join(ROOT, this.rel, 'cpu.stat'), 'usage_usec')) / 1000;
    return (readNumber(join(this.dir('cpuacct'), 'cpuacct.usage'))) / 1e6;
  }

  /** Pids of every process in the cgroup and its child cgroups. */
  async pids(): Promise<number[]> {
    const base = this.mode === 'v2' ? join(ROOT, this.rel) : join(ROOT, 'pids', this.rel);
    const out: number[] = [];
    const walk = async (dir: string): Promise<void> => {
      let text = '';
      try {
        text = readFile(join(dir, 'cgroup.procs'), 'utf8');
      } catch {
        return;
      }
      out.push(...text.split('\n').filter(Boolean).map(Number));
      for (const e of readdir(dir, { withFileTypes: true })) if (e.isDirectory()) await walk(join(dir, e.name));
    };
    await walk(base);
    return out;
  }

  /**
   * Kill every process inside. v2 has cgroup.kill. Elsewhere the cgroup is
   * sealed first (pids.max 0: no fork succeeds from then on, so a fork bomb
   * cannot outrun the loop), then every pid gets SIGKILL until none is left.
   * The seal is one cheap write; v1's freezer, the fallback should the seal
   * fail, costs ~1 ms of kiln's loop per freeze or thaw on a VM (the kernel
   * patches a static key each time the first cgroup freezes). A killed
   * cgroup is only ever removed, never used again.
   */
  async killAll(): Promise<void> {
    if (this.mode === 'v2' && (await tryWrite(join(ROOT, this.rel, 'cgroup.kill'), '1'))) return;
    const pidsDir = this.mode === 'v2' ? join(ROOT, this.rel) : this.dir('pids');
    const hits = readKey(join(pidsDir, 'pids.events'), 'max');
    const sealed = await tryWrite(join(pidsDir, 'pids.max'), '0');
    // Forks the seal refuses are not the program's: usage() reports the count from before it.
    if (sealed) this.hitsBeforeSeal ??= hits;
    const freezer = !sealed && this.mode === 'v1' && existsSync(this.dir('freezer')) ? join(this.dir('freezer'), 'freezer.state') : undefined;
    for (let round = 0; round < 50; round++) {
      const pids = await this.pids();
      if (pids.length === 0) break;
      if (freezer) await tryWrite(freezer, 'FROZEN');
      for (const pid of pids) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          /* already gone */
        }
      }
      if (freezer) await tryWrite(freezer, 'THAWED');
      await new Promise((r) => setTimeout(r, round < 5 ? 1 : 10));
    }
  }

  /** Remove the cgroup only if it has no child cgroups (rmdir refuses otherwise). */
  async removeIfEmpty(): Promise<void> {
    const dirs = this.mode === 'v2' ? [join(ROOT, this.rel)] : V1_CONTROLLERS.map((c) => this.dir(c));
    for (const d of dirs) {
      try {
        rmdir(d);
      } catch {
        /* not empty, or gone */
      }
    }
  }

  /** Kill what is left and remove the cgroup (children first). */
  async remove(): Promise<void> {
    await this.killAll();
    const dirs = this.mode === 'v2' ? [join(ROOT, this.rel)] : V1_CONTROLLERS.map((c) => this.dir(c));
    for (const d of dirs) await removeTree(d);
  }
}

/** rmdir a cgroup and its child cgroups, deepest first; retries while the kernel finishes exits. */
async function removeTree(dir: string): Promise<void> {
  if (!existsSync(dir)) return;
  let entries: import('node:fs').Dirent[] = [];
  try {
    entries = readdir(dir, { withFileTypes: true });
  } catch {
    return;
  }
  for (const entry of entries) {
    if (entry.isDirectory()) await removeTree(join(dir, entry.name));
  }
  for (let i = 0; i < 100; i++) {
    try {
      rmdir(dir);
      return;
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') return;
      if (code !== 'EBUSY') throw e;
      await new Promise((r) => setTimeout(r, 5));
    }
  }
}

/** v2 only delegates controllers a parent enabled in cgroup.subtree_control. */
async function enableV2Controllers(rel: string): Promise<void> {
  const parts = rel.split('/');
  let dir = ROOT;
  for (const p of parts.slice(0, -1)) {
    await tryWrite(join(dir, 'cgroup.subtree_control'), '+memory +pids +cpu');
    dir = join(dir, p);
    mkdir(dir, { recursive: true });
  }
  await tryWrite(join(dir, 'cgroup.subtree_control'), '+memory +pids +cpu');
}

/** Child cgroup names directly under `rel` (for finding orphans). */
export async function listChildren(mode: CgroupMode, rel: string): Promise<string[]> {
  const dir = mode === 'v2' ? join(ROOT, rel) : join(ROOT, 'pids', rel);
  try {
    return readdir(dir, { withFileTypes: true }).filter((e) => e.isDirectory()).map((e) => e.name);
  } catch {
    return [];
  }
}
