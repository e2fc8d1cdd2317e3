/**
 * The `process` runtime: sandboxes from bubblewrap namespaces and cgroups.
 *
 * A sandbox is a work dir (a size-capped tmpfs owned by the sandbox uid) plus
 * a cgroup holding the sandbox's limits. Each exec is a fresh bubblewrap in a
 * child cgroup with the exec's own limits, so usage and OOM kills are counted
 * per exec. The wall deadline kills bwrap, and with it the sandbox's pid
 * namespace (the kernel kills every process when its init dies); the cgroup is
 * then swept as a second line.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chownSync, existsSync, mkdirSync } from 'node:fs';
import { access, chmod, chown, constants as fsConstants, mkdir, readdir, readFile, rename, rm, rmdir, writeFile } from 'node:fs/promises';
import { totalmem } from 'node:os';
import { join, posix } from 'node:path';
import { promisify } from 'node:util';
import { KilnError } from '../../errors.js';
import { CappedBuffer, CappedTail } from '../../sandbox/output.js';
import { checkRelativePath } from '../../sandbox/paths.js';
import { FILE_CALL_MS, fileCallFailed, fileRead, readFileCommand, writeFileCommand } from '../../sandbox/files.js';
import type { ExecKill, ExecRequest, ExecResult, PortLink, Runtime, RuntimeCheck, Sandbox, SandboxSpec, SandboxStats } from '../types.js';
import { WORK_DIR } from '../types.js';
import { Cgroup, detectCgroupMode, listChildren, type CgroupMode } from './cgroups.js';
import { DEFAULT_LAUNCHER, enterArgv, launchArgv, LAUNCHER_ENV, LAUNCHER_ERROR_PREFIX } from './bwrap.js';
import { launch, spawnProblem, type Launched } from './launch.js';
import { buildSeccompFilter, filterDigest } from './seccomp.js';
import { NetnsPorts, netnsProblem } from '../netns.js';
import { decodeExit } from '../kernel.js';

const run = promisify(execFile);

export interface ProcessRuntimeOptions {
  /** This kiln instance; sandboxes and cgroups are named under it so orphans can be found. */
  instanceId: string;
  /**
   * Where sandboxes' work dirs live. Not under the data dir: that one is 0700
   * (it holds the store), while bwrap resolves work dirs as the sandbox uid.
   */
  sandboxRoot: string;
  uid: number;
  gid: number;
  systemDirs: string[];
  /**
   * The static helper that installs the seccomp filter for execs entering a
   * live sandbox (built from seccomp-exec.c by scripts/setup).
   * Default: /usr/local/lib/kiln/seccomp-exec.
   */
  seccompHelper?: string;
  /** The static launcher every exec starts with (kiln-launch.c). Default: /usr/local/lib/kiln/kiln-launch. */
  launcher?: string;
}

export const DEFAULT_SECCOMP_HELPER = '/usr/local/lib/kiln/seccomp-exec';

/** Options a process template may set (`templates.<name>` in kiln.yaml). */
export interface ProcessTemplate {
  rootfs?: string;
}

const BASE_ENV: Record<string, string> = {
  PATH: '/usr/local/bin:/usr/bin:/bin',
  HOME: '/tmp',
  TMPDIR: '/tmp',
  LANG: 'C.UTF-8',
};

/** How often the CPU deadline reads the cgroup's usage, ms. */
const CPU_POLL_MS = 20;
/** How long a killed exec's output may stay open (held by a process outside its cgroup) before kiln stops reading it, ms. */
const PIPE_GRACE_MS = 500;

export class ProcessRuntime implements Runtime {
  readonly name = 'process';
  private readonly mode: CgroupMode | undefined = detectCgroupMode();
  private readonly sandboxesDir: string;
  private readonly cgroupBase: string;
  private readonly live = new Set<ProcessSandbox>();
  /** Ids being created: not yet live, but no orphan either (the sweep runs while we create). */
  private readonly creating = new Set<string>();
  private rootReady: Promise<void> | undefined;
  /** The seccomp filter, written once per runtime under the sandbox root (see prepareRoot). */
  private readonly filter = buildSeccompFilter();
  private readonly seccompFile: string;
  private readonly helper: string;
  private readonly launcher: string;

  constructor(private readonly opts: ProcessRuntimeOptions) {
    this.sandboxesDir = join(opts.sandboxRoot, opts.instanceId);
    this.cgroupBase = `kiln/${opts.instanceId}`;
    this.seccompFile = join(opts.sandboxRoot, `seccomp-${filterDigest(this.filter)}.bpf`);
    this.helper = opts.seccompHelper ?? DEFAULT_SECCOMP_HELPER;
    this.launcher = opts.launcher ?? DEFAULT_LAUNCHER;
  }

  async check(): Promise<RuntimeCheck> {
    const fix: string[] = [];
    let version = '';
    try {
      version = (await run('bwrap', ['--version'])).stdout.trim();
    } catch {
      fix.push('install bubblewrap (apt-get install bubblewrap)');
    }
    if (!this.mode) fix.push('mount cgroups (v2 at /sys/fs/cgroup, or v1 memory/pids/cpu controllers)');
    if (process.getuid?.() !== 0) fix.push('run kiln as root: it makes cgroups, mounts size-capped work dirs and drops to an unprivileged uid');
    const noLauncher = await helperProblem(this.launcher, 'launcher');
    if (noLauncher) fix.push(noLauncher);
    const missing = await helperProblem(this.helper, 'seccomp helper');
    if (missing) fix.push(`${missing} (execs into session sandboxes need it)`);
    const noSpawn = spawnProblem();
    if (noSpawn) fix.push(noSpawn);
    const noLinks = netnsProblem();
    if (noLinks) fix.push(`${noLinks} (sessions need it to reach their server)`);
    if (fix.length === 0) {
      try {
        const sb = await this.create({ template: 'doctor', limits: { cpus: 1, memoryMb: 64, pids: 16, diskMb: 1 } });
        try {
          const r = await sb.exec({ command: ['/bin/sh', '-c', 'echo ok'], limits: { wallMs: 5000, cpuMs: 5000, memoryMb: 64, pids: 16, outputBytes: 100 } });
          if (r.stdout.toString().trim() !== 'ok') fix.push(`a test sandbox did not run: ${r.stderr.toString().trim().slice(0, 300)}`);
        } finally {
          await sb.destroy();
        }
      } catch (e) {
        fix.push(`a test sandbox failed: ${(e as Error).message}; are unprivileged user namespaces allowed (sysctl user.max_user_namespaces > 0)?`);
      }
    }
    return fix.length === 0
      ? { runtime: this.name, ok: true, detail: `${version}, cgroup ${this.mode}` }
      : { runtime: this.name, ok: false, detail: version || 'bubblewrap not found', fix: fix.join('; ') };
  }

  async create(spec: SandboxSpec): Promise<Sandbox> {
    if (!this.mode) throw new KilnError('runtime_unavailable', 'process runtime: no usable cgroup hierarchy on this machine (see kiln doctor)', 503);
    const options = (spec.options ?? {}) as ProcessTemplate;
    if (options.rootfs !== undefined && !existsSync(options.rootfs)) {
      throw new KilnError('invalid_template', `template ${spec.template}: rootfs ${options.rootfs} does not exist`, 500);
    }
    const noLauncher = await helperProblem(this.launcher, 'launcher');
    if (noLauncher) throw new KilnError('runtime_unavailable', `process runtime: ${noLauncher}`, 503);
    const id = `kp-${randomBytes(8).toString('hex')}`;
    this.creating.add(id);
    try {
      return await this.createSandbox(id, spec, this.mode);
    } finally {
      this.creating.delete(id);
    }
  }

  private async createSandbox(id: string, spec: SandboxSpec, mode: CgroupMode): Promise<Sandbox> {
    const dir = join(this.sandboxesDir, id);
    const work = join(dir, 'work');
    await (this.rootReady ??= this.prepareRoot());
    let cgroup: Cgroup | undefined;
    try {
      // bwrap resolves the work dir's path as the sandbox uid, so its parents are
      // traversable (0711: not listable); the work dir itself is the sandbox uid's alone.
      // Synchronous: on the sandbox root's tmpfs these answer in microseconds, less than
      // three hops through libuv's thread pool on a cold start's path (as in cgroups.ts).
      mkdirSync(dir, { mode: 0o711 });
      mkdirSync(work, { mode: 0o700 });
      try {
        chownSync(work, this.opts.uid, this.opts.gid);
      } catch {
        // not root (tests of the error paths): the work dir stays ours
      }
      cgroup = await Cgroup.create(mode, `${this.cgroupBase}/${id}`, spec.limits);
    } catch (e) {
      await rm(dir, { recursive: true, force: true });
      throw new KilnError('sandbox_failed', `process runtime: cannot create sandbox: ${(e as Error).message}`, 500, { cause: e });
    }
    const files = { seccompFile: this.seccompFile, helper: this.helper, launcher: this.launcher };
    const sb = new ProcessSandbox(id, dir, work, cgroup, spec, this.opts, files, mode, () => this.live.delete(sb));
    this.live.add(sb);
    if (spec.main) {
      try {
        await sb.startMain(spec.main);
      } catch (e) {
        await sb.destroy();
        throw e;
      }
    }
    return sb;
  }

  /**
   * Work dirs live on one tmpfs mounted at the sandbox root (as root, once): a
   * tmpfs page is charged to the memory cgroup of the process that wrote it, so
   * a sandbox can fill its work dir only up to its own memory limit, and the
   * whole root is capped at half the machine's memory. No mount per sandbox:
   * spawning mount and umount cost a third of a short run. (A sandbox with a
   * main process instead gets a /work tmpfs capped at `diskMb` from bwrap.)
   */
  private async prepareRoot(): Promise<void> {
    await mkdir(this.opts.sandboxRoot, { recursive: true, mode: 0o711 });
    if (process.getuid?.() === 0) {
      const mounts = await readFile('/proc/self/mounts', 'utf8');
      const mounted = mounts.split('\n').some((l) => l.split(' ')[1] === this.opts.sandboxRoot && l.split(' ')[2] === 'tmpfs');
      if (!mounted) {
        const sizeMb = Math.floor(totalmem() / 1024 / 1024 / 2);
        await run('mount', ['-t', 'tmpfs', '-o', `size=${sizeMb}m,mode=0711,nosuid,nodev`, 'kiln-sandboxes', this.opts.sandboxRoot]);
      }
    }
    await chmod(this.opts.sandboxRoot, 0o711);
    await mkdir(this.sandboxesDir, { recursive: true, mode: 0o711 });
    await chmod(this.sandboxesDir, 0o711);
    // The filter file is named by its content, so instances sharing the root share it; written
    // whole and renamed into place, readable by root only (the launcher opens it before dropping to the sandbox uid).
    const tmp = `${this.seccompFile}.${process.pid}.${randomBytes(4).toString('hex')}`;
    await writeFile(tmp, this.filter, { mode: 0o600, flag: 'wx' });
    await rename(tmp, this.seccompFile);
  }

  async listOwn(): Promise<string[]> {
    const dirs = await readdir(this.sandboxesDir).catch(() => [] as string[]);
    const cgroups = this.mode ? await listChildren(this.mode, this.cgroupBase) : [];
    return [...new Set([...dirs, ...cgroups])].filter((n) => n.startsWith('kp-'));
  }

  async reapOrphans(): Promise<number> {
    const liveIds = new Set([...this.live].map((s) => s.id).concat([...this.creating]));
    const orphans = (await this.listOwn()).filter((id) => !liveIds.has(id));
    for (const id of orphans) {
      if (this.mode) await Cgroup.attach(this.mode, `${this.cgroupBase}/${id}`).remove();
      await removeWorkDir(join(this.sandboxesDir, id));
    }
    return orphans.length;
  }

  /** Remove this instance's empty dirs and cgroups (left in place while sandboxes live). */
  async close(): Promise<void> {
    if (this.live.size > 0) return;
    await rmdir(this.sandboxesDir).catch(() => undefined);
    if (this.mode) await Cgroup.attach(this.mode, this.cgroupBase).removeIfEmpty();
  }
}

/** How often startMain looks whether bwrap has finished building the sandbox, ms. */
const SETUP_POLL_MS = 2;

/**
 * Wait until bwrap's pid 1 (`nsPid`) has forked the command. bwrap reports the
 * pid as soon as it exists, before it has built the root, mounted /proc and
 * entered the nested user namespace; it forks the command only after all of
 * that. An exec entering earlier would see a half-built sandbox (the host's
 * files, the outer user namespace). False when the sandbox died first.
 */
async function setupFinished(nsPid: number, exited: Promise<void>): Promise<boolean> {
  let gone = false;
  void exited.then(() => (gone = true));
  const children = `/proc/${nsPid}/task/${nsPid}/children`;
  while (!gone) {
    const text = await readFile(children, 'utf8').catch(() => undefined);
    if (text === undefined) return false;
    if (text.trim() !== '') return true;
    await new Promise((r) => setTimeout(r, SETUP_POLL_MS));
  }
  return false;
}

/** What the helper prints before exiting 125 when it could not install the filter. */
const HELPER_ERROR_PREFIX = 'kiln-seccomp-exec: ';

/** Helpers found executable once: every create and exec asks, and a thread-pool hop each time would be on the hot path. */
const helpersFound = new Set<string>();

/** Why a static helper scripts/setup builds (the launcher, the seccomp helper) cannot be used, or undefined when it can. */
async function helperProblem(path: string, what: string): Promise<string | undefined> {
  if (helpersFound.has(path)) return undefined;
  try {
    await access(path, fsConstants.X_OK);
    helpersFound.add(path);
    return undefined;
  } catch {
    return `the ${what} ${path} is missing or not executable: run scripts/setup, which builds it`;
  }
}

/** Delete a sandbox dir. Its processes are dead by now, so nothing can swap paths under us. */
async function removeWorkDir(dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true });
}

class ProcessSandbox implements Sandbox {
  readonly runtime = 'process';
  private execSeq = 0;
  /** Once code has run inside, the host stops writing into the work dir itself. */
  private codeHasRun = false;
  private destroyed = false;
  private readonly running = new Set<Promise<unknown>>();
  /** The cgroups of execs still running (children of this sandbox's). */
  private readonly execCgroups = new Set<Cgroup>();
  /** The main process (a session's server) and the host pid whose namespaces execs enter. */
  private main: { child: Launched; nsPid: number; log: CappedTail } | undefined;
  /** The main's cgroup while it runs with a start-up CPU cap above the sandbox's own. */
  private burst: Cgroup | undefined;
  mainExited: Promise<void> | undefined;
  /** The main's network namespace, where its server's port is reached. */
  private ports: NetnsPorts | undefined;

  constructor(
    readonly id: string,
    private readonly dir: string,
    private readonly work: string,
    private readonly cgroup: Cgroup,
    private readonly spec: SandboxSpec,
    private readonly opts: ProcessRuntimeOptions,
    private readonly files: { seccompFile: string; helper: string; launcher: string },
    private readonly mode: CgroupMode,
    private readonly onDestroy: () => void,
  ) {}

  /** Start the long-running main process in a fresh bwrap; execs will enter its namespaces. */
  async startMain(main: NonNullable<SandboxSpec['main']>): Promise<void> {
    this.codeHasRun = true;
    const cg = await Cgroup.create(this.mode, `${this.cgroup.rel}/main`, this.spec.limits);
    if (main.startCpus !== undefined && main.startCpus > this.spec.limits.cpus) {
      // The start-up burst: both caps (v1 applies the parent's too) until mainReady().
      this.cgroup.setCpuCap(main.startCpus);
      cg.setCpuCap(main.startCpus);
      this.burst = cg;
    }
    const argv = launchArgv({
      launcher: this.files.launcher,
      cgroupProcsFiles: cg.procsFiles(),
      cpuSeconds: 'unlimited',
      workDir: this.work,
      // Every later exec enters this sandbox's mount namespace, so they all share this capped /work.
      workTmpfsBytes: this.spec.limits.diskMb * 1024 * 1024,
      uid: this.opts.uid,
      gid: this.opts.gid,
      rootfs: (this.spec.options as ProcessTemplate | undefined)?.rootfs,
      systemDirs: this.opts.systemDirs,
      tmpBytes: this.spec.limits.diskMb * 1024 * 1024,
      seccompFile: this.files.seccompFile,
      env: { ...BASE_ENV, ...this.spec.env, ...main.env },
      cwd: WORK_DIR,
      command: main.command,
    });
    const child = launch(argv, LAUNCHER_ENV, { stdin: false });
    const log = new CappedTail(64 * 1024);
    child.stdout.on('data', (c: Buffer) => log.push(c));
    child.stderr.on('data', (c: Buffer) => log.push(c));
    this.mainExited = new Promise<void>((resolve) => child.once('close', () => resolve()));
    let status = '';
    const nsPid = await new Promise<number | undefined>((resolve) => {
      child.status.on('data', (c: Buffer) => {
        status += c.toString();
        const m = /"child-pid": (\d+)/.exec(status);
        if (m) resolve(Number(m[1]));
      });
      child.once('close', () => resolve(undefined));
    });
    if (nsPid === undefined || !(await setupFinished(nsPid, this.mainExited))) {
      // Gone before kiln saw the command forked: bwrap and the launcher say why first when
      // they fail; anything else is the server's own output (it started and exited that fast).
      const head = log.text().trimStart();
      const setupFailed = nsPid === undefined || head.startsWith('bwrap: ') || head.startsWith(LAUNCHER_ERROR_PREFIX);
      if (!setupFailed) throw await this.exitedAsItStarted(log);
      throw new KilnError('sandbox_failed', `process runtime: the sandbox did not start: ${log.text().trim().slice(-500)}`, 500);
    }
    this.main = { child, nsPid, log };
    // Taken while bwrap's pid 1 is known alive: the fd pins its namespace.
    try {
      this.ports = new NetnsPorts(this.id, nsPid);
    } catch (e) {
      // Alive a moment ago, gone now: the server exited as it started (its namespace went with it).
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT' && (e as NodeJS.ErrnoException).code !== 'ESRCH') throw e;
      throw await this.exitedAsItStarted(log);
    }
  }

  /** The error for a server that exited as it started, with its last words once all of them are in. */
  private async exitedAsItStarted(log: CappedTail): Promise<KilnError> {
    await Promise.race([this.mainExited, new Promise((r) => setTimeout(r, 1000))]);
    const tail = log.text().trim().split('\n').slice(-5).join(' | ');
    return new KilnError('session_start_failed', `the server exited as it started${tail ? `: ${tail}` : ''}`, 503, { retryAfterS: 5 });
  }

  async mainLog(): Promise<string> {
    return this.main?.log.text() ?? '';
  }

  async mainReady(): Promise<void> {
    if (!this.burst || this.destroyed) return;
    this.burst.setCpuCap(this.spec.limits.cpus);
    this.cgroup.setCpuCap(this.spec.limits.cpus);
    this.burst = undefined;
  }

  async portListening(port: number): Promise<boolean | undefined> {
    if (!this.ports) return false;
    try {
      return this.ports.listening(port);
    } catch {
      return undefined; // the kernel cannot say (no sock_diag): the caller probes through the link
    }
  }

  async portLink(port: number): Promise<PortLink> {
    if (!this.ports) throw new KilnError('no_server', `sandbox ${this.id} runs no server to connect to`, 409);
    return this.ports.link(port);
  }

  async exec(req: ExecRequest): Promise<ExecResult> {
    if (this.destroyed) throw new KilnError('sandbox_gone', `sandbox ${this.id} was destroyed`, 410);
    if (req.command.length === 0) throw new KilnError('invalid_request', 'command: must name a program', 400);
    this.codeHasRun = true;
    const p = this.execInner(req);
    this.running.add(p);
    try {
      return await p;
    } finally {
      this.running.delete(p);
    }
  }

  private async execInner(req: ExecRequest): Promise<ExecResult> {
    const lim = this.spec.limits;
    const limits = req.limits;
    const cg = await Cgroup.create(this.mode, `${this.cgroup.rel}/e${++this.execSeq}`, {
      memoryMb: Math.min(limits.memoryMb, lim.memoryMb),
      pids: Math.min(limits.pids, lim.pids),
      cpus: lim.cpus,
    });
    this.execCgroups.add(cg);
    const removeCgroup = () => {
      this.execCgroups.delete(cg);
      return cg.remove();
    };
    const cwd = req.cwd ? posix.resolve(WORK_DIR, req.cwd) : WORK_DIR;
    const env = { ...BASE_ENV, ...this.spec.env, ...req.env };
    const cpuSeconds = Math.ceil(limits.cpuMs / 1000) + 1;
    const { seccompFile, helper, launcher } = this.files;
    if (this.main) {
      // Fail closed: an exec beside a server never runs without the filter.
      const missing = await helperProblem(helper, 'seccomp helper');
      if (missing) {
        await removeCgroup();
        throw new KilnError('runtime_unavailable', `process runtime: ${missing}`, 503);
      }
    }
    const argv = this.main
      ? enterArgv({ launcher, cgroupProcsFiles: cg.procsFiles(), cpuSeconds, nsPid: this.main.nsPid, uid: this.opts.uid, gid: this.opts.gid, seccompFile, helper, env, cwd, command: req.command })
      : launchArgv({
      launcher,
      cgroupProcsFiles: cg.procsFiles(),
      cpuSeconds,
      workDir: this.work,
      uid: this.opts.uid,
      gid: this.opts.gid,
      rootfs: (this.spec.options as ProcessTemplate | undefined)?.rootfs,
      systemDirs: this.opts.systemDirs,
      tmpBytes: lim.diskMb * 1024 * 1024,
      seccompFile,
      env,
      cwd,
      command: req.command,
    });

    const started = performance.now();
    let child: Launched;
    try {
      child = launch(argv, LAUNCHER_ENV, { stdin: true });
    } catch (e) {
      await removeCgroup();
      throw e;
    }
    let killedBy: ExecKill = null;
    let abandon: NodeJS.Timeout | undefined;
    const kill = (why: ExecKill) => {
      if (killedBy === null) killedBy = why;
      child.kill('SIGKILL');
      void cg.killAll();
      // The exec's output may be held open by a process the kill does not reach (it can pass its fds to the
      // sandbox's server): the exec still ends, PIPE_GRACE_MS after its kill, with the output read by then.
      abandon ??= setTimeout(() => child.abandonPipes(), PIPE_GRACE_MS);
    };
    const stdout = new CappedBuffer(limits.outputBytes, () => kill('output_limit'), req.onStdout);
    const stderr = new CappedBuffer(limits.outputBytes, () => kill('output_limit'), req.onStderr);
    child.stdout.on('data', (c: Buffer) => stdout.push(c));
    child.stderr.on('data', (c: Buffer) => stderr.push(c));
    let status = '';
    child.status.on('data', (c: Buffer) => (status += c.toString()));

    const stdin = child.stdin!;
    stdin.on('error', () => undefined); // the program may exit without reading its stdin
    if (req.stdin !== undefined && req.stdin.length > 0) stdin.end(req.stdin);
    else stdin.end();

    const wallTimer = setTimeout(() => kill('wall_timeout'), limits.wallMs);
    let polling = false;
    const cpuTimer = setInterval(() => {
      if (polling) return;
      polling = true;
      void cg.cpuMs().then((ms) => {
        polling = false;
        if (ms > limits.cpuMs) kill('cpu_timeout');
      });
    }, CPU_POLL_MS);

    const exit = await new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
      child.once('close', (code, signal) => resolve({ code, signal }));
    });
    const wallMs = Math.round(performance.now() - started);
    clearTimeout(wallTimer);
    clearTimeout(abandon);
    clearInterval(cpuTimer);

    const usage = await cg.usage();
    await removeCgroup();
    const head = stderr.toBuffer().subarray(0, 32).toString();
    const setupFailed =
      (exit.code === 125 && (head.startsWith(LAUNCHER_ERROR_PREFIX) || head.startsWith(HELPER_ERROR_PREFIX))) ||
      (this.main ? exit.code === 1 && head.startsWith('nsenter: ') : !status.includes('child-pid') || (exit.code === 1 && head.startsWith('bwrap: ')));
    if (killedBy === null && setupFailed) {
      // Destroyed while the exec started: its launcher could not fork in the sealed cgroup.
      if (this.destroyed) throw new KilnError('sandbox_gone', `sandbox ${this.id} was destroyed`, 410);
      // bwrap (or the launcher) failed before the command existed: our fault, not the program's.
      // (A program printing "bwrap: " and exiting 1 only turns its own run into an internal error.)
      throw new KilnError('sandbox_failed', `process runtime: sandbox setup failed: ${stderr.toBuffer().toString().trim().slice(0, 500)}`, 500);
    }
    if (killedBy === null && usage.cpuMs > limits.cpuMs) killedBy = 'cpu_timeout';

    const { exitCode, signal } = decodeExit(exit.code, exit.signal, killedBy !== null);
    return {
      stdout: stdout.toBuffer(),
      stderr: stderr.toBuffer(),
      exitCode,
      signal,
      wallMs,
      cpuMs: Math.round(usage.cpuMs),
      memoryKb: usage.memoryKb,
      oomKilled: usage.oomKills > 0,
      pidsLimitHit: usage.pidsMaxHits > 0,
      killedBy,
      truncated: stdout.truncated || stderr.truncated,
    };
  }

  async putFile(path: string, data: Buffer): Promise<void> {
    const rel = checkRelativePath(path);
    if (!this.codeHasRun) {
      // Nothing has run inside yet, so no link can have been planted: write directly.
      // 'wx' (O_CREAT|O_EXCL) refuses to follow anything already at the path all the same.
      const target = join(this.work, rel);
      const parent = posix.dirname(rel);
      if (parent !== '.') {
        await mkdir(join(this.work, parent), { recursive: true });
        await chownTree(this.work, parent, this.opts.uid, this.opts.gid);
      }
      await writeFile(target, data, { flag: 'wx', mode: 0o644 });
      await chown(target, this.opts.uid, this.opts.gid);
      return;
    }
    const r = await this.exec({
      command: writeFileCommand(rel),
      stdin: data,
      limits: fileLimits(this.spec.limits.memoryMb),
    });
    if (r.exitCode !== 0) throw fileCallFailed('write', rel, r);
  }

  async getFile(path: string, maxBytes: number): Promise<Buffer | undefined> {
    const rel = checkRelativePath(path);
    const r = await this.exec({
      command: readFileCommand(rel, maxBytes),
      limits: { ...fileLimits(this.spec.limits.memoryMb), outputBytes: maxBytes + 1 },
    });
    return fileRead(rel, maxBytes, r);
  }

  async stats(): Promise<SandboxStats> {
    const u = await this.cgroup.usage();
    return { cpuMs: Math.round(u.cpuMs), memoryKb: u.memoryKb, pids: u.pids };
  }

  async destroy(): Promise<void> {
    if (this.destroyed) return;
    this.destroyed = true;
    this.ports?.close();
    // Each running exec's cgroup first: each then counts the forks its own program had refused before the kill.
    await Promise.all([...this.execCgroups].map((cg) => cg.killAll()));
    await this.cgroup.killAll();
    await Promise.allSettled([...this.running]);
    await this.cgroup.remove();
    await rm(this.dir, { recursive: true, force: true });
    this.onDestroy();
  }
}

function fileLimits(memoryMb: number) {
  return { wallMs: FILE_CALL_MS, cpuMs: FILE_CALL_MS, memoryMb: Math.min(64, memoryMb), pids: 8, outputBytes: 64 * 1024 };
}

async function chownTree(root: string, relDir: string, uid: number, gid: number): Promise<void> {
  let cur = root;
  for (const part of relDir.split('/')) {
    cur = join(cur, part);
    await chown(cur, uid, gid);
  }
}
