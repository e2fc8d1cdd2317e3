/**
 * The `docker` runtime: sandboxes as Docker containers, through the Engine API.
 *
 * A sandbox is one container kept alive by a root-owned `sleep` under
 * docker-init, with no network, a read-only root, size-capped tmpfs at /work
 * and /tmp, every capability dropped and no new privileges. Each exec runs as
 * the unprivileged uid. Usage, peak memory and OOM kills are read from the
 * container's cgroup, as the process runtime does, so verdicts mean the same.
 * A deadline freezes the container, kills the exec's process tree from the
 * host, and thaws it: forks cannot outrun the kill.
 *
 * With `sentry` (the gvisor runtime, OCI runtime runsc) the sandbox's
 * processes live in gVisor's user-space kernel: limits are fixed at create, an
 * exec is killed from inside, and its memory limit is watched from the host
 * (see ../gvisor/sentry.ts for why each differs).
 */
import Docker from 'dockerode';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { join, posix } from 'node:path';
import { Writable } from 'node:stream';
import { KilnError } from '../../errors.js';
import { CappedBuffer } from '../../sandbox/output.js';
import { checkRelativePath } from '../../sandbox/paths.js';
import { FILE_CALL_MS, fileCallFailed, fileRead, readFileCommand, writeFileCommand } from '../../sandbox/files.js';
import type { ExecKill, ExecRequest, ExecResult, PortLink, Runtime, RuntimeCheck, Sandbox, SandboxSpec, SandboxStats } from '../types.js';
import { WORK_DIR } from '../types.js';
import { decodeExit, readKey, readNumber as readNum } from '../kernel.js';
import { NetnsPorts, netnsProblem } from '../netns.js';
import { PidLineReader, execMemoryCap, execToEnd, sandboxMemoryCap, killScript, sentryHostLimits, wrapWithPidLine } from '../gvisor/sentry.js';
import { seccompMounts, underFilter } from '../gvisor/seccomp.js';
import { deviceMasks } from '../gvisor/dev.js';
import { ExecRelays, relayMounts } from '../gvisor/relay.js';

export interface DockerRuntimeOptions {
  instanceId: string;
  socketPath: string;
  /** OCI runtime: `runc`, or `runsc` for gVisor. */
  ociRuntime: string;
  /** Driver name as templates and /v1/info show it. Default `docker`. */
  name?: string;
  /** True when `ociRuntime` runs the sandbox in gVisor's sentry (runsc). Default false. */
  sentry?: boolean;
}

/** Options a docker template may set (`templates.<name>` in kiln.yaml). */
export interface DockerTemplate {
  image: string;
}

const SANDBOX_USER = '65534:65534';
/** gVisor's host files (relay sockets, the seccomp filter, the empty /dev mask): a root-owned dir no container mounts whole. */
export const SENTRY_HOST_DIR = '/run/kiln-docker';
const CPU_POLL_MS = 20;
/** How long killing an exec may take before kiln stops waiting for it and ends the exec's streams, ms. */
const KILL_TIMEOUT_MS = 15_000;
/** Looks, 10 ms apart, for a killed exec's processes to be reaped before the exec returns. */
const REAP_WAIT_LOOKS = 300;
/** Pauses between waits on a container whose engine connection failed, ms: doubling from min to max. */
const EXIT_RETRY_MS = { min: 100, max: 5000 };
/** How often a gVisor sandbox with a server has its memory looked at, ms. */
const SENTRY_MEMORY_POLL_MS = 250;
/** /proc/<pid>/stat counts CPU in clock ticks: 100 a second on Linux (USER_HZ). */
const MS_PER_TICK = 10;
const BASE_ENV = ['PATH=/usr/local/bin:/usr/bin:/bin', 'HOME=/tmp', 'TMPDIR=/tmp', 'LANG=C.UTF-8'];

/**
 * Paths masked in runc containers: Docker's defaults (the list replaces them) and
 * the /dev entries beyond null, zero, random, urandom and tty. A masked file
 * becomes /dev/null and a masked dir an empty read-only tmpfs, so /dev/full
 * reads nothing and no pseudo-terminal can be opened.
 */
const MASKED_PATHS = [
  '/proc/asound',
  '/proc/acpi',
  '/proc/kcore',
  '/proc/keys',
  '/proc/latency_stats',
  '/proc/timer_list',
  '/proc/timer_stats',
  '/proc/sched_debug',
  '/proc/scsi',
  '/sys/firmware',
  '/dev/full',
  '/dev/ptmx',
  '/dev/pts',
  '/dev/mqueue',
  '/dev/console',
];

export class DockerRuntime implements Runtime {
  readonly name: string;
  protected readonly docker: Docker;
  /** Sandboxes this driver made (or is making): everything else with our label is an orphan. */
  private readonly live = new Set<string>();

  constructor(protected readonly opts: DockerRuntimeOptions) {
    this.name = opts.name ?? 'docker';
    this.docker = new Docker({ socketPath: opts.socketPath });
  }

  async check(): Promise<RuntimeCheck> {
    try {
      const v = await withTimeout(this.docker.version(), 3000);
      const images = await this.docker.listImages({ filters: { reference: ['kiln-python:local'] } });
      const info = (await this.docker.info()) as { Runtimes?: Record<string, unknown> };
      if (!info.Runtimes?.[this.opts.ociRuntime]) {
        return { runtime: this.name, ok: false, detail: `Docker ${v.Version}, no OCI runtime ${this.opts.ociRuntime}`, fix: 'run scripts/setup (it registers runsc with dockerd)' };
      }
      if (images.length === 0) return { runtime: this.name, ok: false, detail: `Docker ${v.Version}, image kiln-python:local missing`, fix: 'run scripts/build-images' };
      const noLinks = this.opts.sentry ? undefined : netnsProblem();
      if (noLinks) return { runtime: this.name, ok: false, detail: `Docker ${v.Version}; ${noLinks}`, fix: 'run scripts/setup as root (sessions need it to reach their server)' };
      return { runtime: this.name, ok: true, detail: `Docker ${v.Version}, runtime ${this.opts.ociRuntime}, kiln-python:local present` };
    } catch (e) {
      return { runtime: this.name, ok: false, detail: `no Docker engine at ${this.opts.socketPath}: ${(e as Error).message}`, fix: 'apt-get install docker.io and start dockerd (scripts/setup does both)' };
    }
  }

  async create(spec: SandboxSpec): Promise<Sandbox> {
    const image = (spec.options as Partial<DockerTemplate> | undefined)?.image;
    if (typeof image !== 'string' || image === '') throw new KilnError('invalid_template', `template ${spec.template}: runtime docker needs an image`, 500);
    const id = `kd-${randomBytes(8).toString('hex')}`;
    this.live.add(id);
    try {
      return await this.createContainer(id, image, spec);
    } catch (e) {
      this.live.delete(id);
      throw e;
    }
  }

  private async createContainer(id: string, image: string, spec: SandboxSpec): Promise<Sandbox> {
    const memory = spec.limits.memoryMb * 1024 * 1024;
    const sentry = this.opts.sentry ?? false;
    const main = spec.main?.command ?? ['sleep', 'infinity'];
    // Throws, before anything is created, when the seccomp helper is missing.
    const masks = sentry ? deviceMasks(SENTRY_HOST_DIR) : { mounts: [], tmpfs: {} };
    const sentryMounts = sentry ? [...relayMounts(), ...seccompMounts(SENTRY_HOST_DIR), ...masks.mounts] : [];
    let container: Docker.Container;
    try {
      container = await this.docker.createContainer({
        name: id,
        Image: image,
        // Without a main, a keeper holds the container open. Main or keeper is pid 1's only child under docker-init.
        // gVisor: every program starts under kiln's seccomp filter (see ../gvisor/seccomp.ts).
        Cmd: sentry ? underFilter(main) : main,
        // gVisor: a keeper of the sandbox uid dies of a run's `kill -1`, and the container with it, before
        // kiln has read the run's end. As root (no capabilities), the sandbox uid cannot signal it.
        User: sentry && !spec.main ? '0:0' : SANDBOX_USER,
        WorkingDir: WORK_DIR,
        Env: [...BASE_ENV, ...Object.entries({ ...spec.env, ...spec.main?.env }).map(([k, v]) => `${k}=${v}`)],
        // kiln.runtime: docker and gvisor share the engine; each lists and reaps only its own.
        Labels: { 'kiln.instance': this.opts.instanceId, 'kiln.runtime': this.name, 'kiln.sandbox': id, 'kiln.template': spec.template },
        NetworkDisabled: true,
        HostConfig: {
          Init: true,
          NetworkMode: 'none',
          Runtime: this.opts.ociRuntime,
          NanoCpus: Math.round(spec.limits.cpus * 1e9),
          ReadonlyRootfs: true,
          CapDrop: ['ALL'],
          SecurityOpt: ['no-new-privileges'],
          Tmpfs: {
            [WORK_DIR]: `rw,exec,nosuid,nodev,size=${spec.limits.diskMb}m,mode=0700,uid=65534,gid=65534`,
            '/tmp': `rw,nosuid,nodev,size=${spec.limits.diskMb}m,mode=1777`,
            ...masks.tmpfs,
          },
          // gVisor: the exec relay that carries session connections (see ../gvisor/relay.ts), the seccomp helper and
          // filter, and covers over its extra /dev entries (../gvisor/dev.ts).
          // runc: /dev keeps only null, zero, random, urandom and tty working.
          ...(sentry ? { Mounts: sentryMounts } : { MaskedPaths: MASKED_PATHS }),
          ...(sentry
            ? sentryHostLimits(spec.limits)
            : { Memory: memory, MemorySwap: memory, PidsLimit: spec.limits.pids, Ulimits: [{ Name: 'core', Soft: 0, Hard: 0 }] }),
        },
      });
    } catch (e) {
      const status = (e as { statusCode?: number }).statusCode;
      if (status === 404) throw new KilnError('image_missing', `image ${image} is not built; run scripts/build-images`, 503);
      throw new KilnError('runtime_unavailable', `docker: cannot create a sandbox: ${(e as Error).message}`, 503);
    }
    try {
      await container.start();
      const info = await container.inspect();
      if (!info.State.Running) throw new Error(`the container exited at once (status ${info.State.ExitCode})`);
      return new DockerSandbox(id, this.name, sentry, container, this.docker, this.opts.socketPath, info.Id, info.State.Pid, spec, () =>
        this.live.delete(id),
      );
    } catch (e) {
      await container.remove({ force: true }).catch(() => undefined);
      throw new KilnError('sandbox_failed', `docker: cannot start a sandbox: ${(e as Error).message}`, 500);
    }
  }

  private async ownContainers(): Promise<Docker.ContainerInfo[]> {
    try {
      return await this.docker.listContainers({ all: true, filters: { label: [`kiln.instance=${this.opts.instanceId}`, `kiln.runtime=${this.name}`] } });
    } catch {
      return []; // no engine: nothing of ours can be running in it
    }
  }

  async listOwn(): Promise<string[]> {
    return (await this.ownContainers()).map((c) => c.Labels['kiln.sandbox'] ?? c.Id);
  }

  async reapOrphans(): Promise<number> {
    const own = (await this.ownContainers()).filter((c) => !this.live.has(c.Labels['kiln.sandbox'] ?? ''));
    await Promise.all(own.map((c) => this.docker.getContainer(c.Id).remove({ force: true }).catch(() => undefined)));
    if (this.opts.sentry) await this.dropRelayDirs();
    return own.length;
  }

  /** gVisor's relay dirs whose sandbox is gone (a crash left them): any kiln's container that exists keeps its own. */
  private async dropRelayDirs(): Promise<void> {
    const names = await readdir(SENTRY_HOST_DIR).catch(() => [] as string[]);
    const containers = await this.docker.listContainers({ all: true, filters: { label: ['kiln.sandbox'] } }).catch(() => undefined);
    if (!containers) return; // no engine: nothing can be told apart
    const exist = new Set(containers.map((c) => c.Labels['kiln.sandbox']));
    const gone = names.filter((n) => n.startsWith('kd-') && !this.live.has(n) && !exist.has(n));
    await Promise.all(gone.map((n) => rm(join(SENTRY_HOST_DIR, n), { recursive: true, force: true })));
  }

  async close(): Promise<void> {
    /* dockerode keeps no connection open between calls */
  }
}

class DockerSandbox implements Sandbox {
  /** destroy() was called: execs are refused, the main process is no longer waited on. */
  private destroyed = false;
  /** The engine removed the container. */
  private removed = false;
  private readonly cgroup: ContainerCgroup;
  /** How ports are reached: links into the container's network namespace (runc), or an exec relay (gVisor's netstack). */
  private readonly ports: NetnsPorts | ExecRelays;
  readonly mainExited: Promise<void> | undefined;
  /** Execs under way (gVisor: while any runs, its own memory watch is the one that acts). */
  private execsRunning = 0;
  /** gVisor with a server: the timer that holds the sandbox to its memoryMb. */
  private memoryWatch: NodeJS.Timeout | undefined;
  /** Memory and pids limits the container has now; an exec narrower than these updates them first. */
  private current: { memoryMb: number; pids: number };

  constructor(
    readonly id: string,
    readonly runtime: string,
    /** Processes live in gVisor's sentry: no docker update, kills from inside, memory watched. */
    private readonly sentry: boolean,
    private readonly container: Docker.Container,
    private readonly docker: Docker,
    /** The engine's socket: the main process is waited on over a connection of its own. */
    socketPath: string,
    fullId: string,
    /** Host pid of the container's init, alive now: its network namespace is where ports are reached. */
    nsPid: number,
    private readonly spec: SandboxSpec,
    private readonly onDestroy: () => void,
  ) {
    this.cgroup = new ContainerCgroup(fullId);
    this.current = { memoryMb: spec.limits.memoryMb, pids: spec.limits.pids };
    // Under runsc the sandbox's loopback lives in gVisor's netstack, not in a host network namespace.
    this.ports = sentry ? new ExecRelays(join(SENTRY_HOST_DIR, id), container, SANDBOX_USER, relayMounts().length > 0) : new NetnsPorts(id, nsPid);
    this.mainExited = spec.main ? containerExit(container, socketPath, () => this.destroyed) : undefined;
    // The host limit leaves the sentry headroom above memoryMb: a server is held to memoryMb by watching.
    if (sentry && spec.main) this.memoryWatch = setInterval(() => void this.checkServerMemory(), SENTRY_MEMORY_POLL_MS).unref();
  }

  /** gVisor: past its memoryMb (plus the sentry's own), the sandbox's server is killed, as the OOM killer would under runc. */
  private async checkServerMemory(): Promise<void> {
    if (this.destroyed) return clearInterval(this.memoryWatch);
    if (this.execsRunning > 0) return; // each exec's own watch holds the sandbox to the same cap, and kills only the exec
    const held = await this.cgroup.unreclaimableBytes().catch(() => 0);
    if (held <= sandboxMemoryCap(this.spec.limits.memoryMb)) return;
    clearInterval(this.memoryWatch);
    await this.container.kill().catch(() => undefined); // the main process ends: its session fails
  }

  async portLink(port: number): Promise<PortLink> {
    return this.ports.link(port);
  }

  /** Under gVisor, asked inside (an exec); under runc, the link's refusal answers as fast, so the caller probes. */
  async portListening(port: number): Promise<boolean | undefined> {
    if (!(this.ports instanceof ExecRelays) || this.destroyed) return undefined;
    return this.ports.listening(port).catch(() => false); // not undefined: a probe through a relay cannot tell
  }

  async mainLog(): Promise<string> {
    const buf = (await this.container.logs({ stdout: true, stderr: true, tail: 50 }).catch(() => Buffer.alloc(0))) as Buffer;
    // Docker frames each line with an 8-byte header when there is no TTY.
    return buf.toString('latin1').replace(/[\x00-\x02]\x00\x00\x00[\s\S]{4}/g, '');
  }

  async exec(req: ExecRequest): Promise<ExecResult> {
    if (this.destroyed) throw new KilnError('sandbox_gone', `sandbox ${this.id} was destroyed`, 410);
    if (req.command.length === 0) throw new KilnError('invalid_request', 'command: must name a program', 400);
    this.execsRunning++;
    try {
      return await this.runExec(req);
    } finally {
      this.execsRunning--;
    }
  }

  private async runExec(req: ExecRequest): Promise<ExecResult> {
    const limits = req.limits;
    if (!this.sentry) await this.narrowLimits(limits);
    const before = await this.cgroup.read(true);
    // runc: a session's server shares the container's cgroup, so its CPU while the exec runs is taken out of the
    // exec's. (Under gVisor the host sees only the sentry: there, both count.)
    const server = !this.sentry && this.spec.main ? await this.processCpu() : undefined;
    const execCpuMs = async (total: number) => total - before.cpuMs - (server ? await this.cpuSince(server) : 0);
    // Under gVisor an exec's memory is what the container gains while it runs (no per-exec cgroup exists).
    const memoryCap = this.sentry ? execMemoryCap(await this.cgroup.unreclaimableBytes(), Math.min(limits.memoryMb, this.spec.limits.memoryMb), this.spec.limits.memoryMb) : Infinity;
    const exec = await this.container.exec({
      Cmd: this.sentry ? wrapWithPidLine(underFilter(req.command, Math.min(limits.pids, this.spec.limits.pids))) : req.command,
      User: SANDBOX_USER,
      WorkingDir: req.cwd ? posix.resolve(WORK_DIR, req.cwd) : WORK_DIR,
      Env: Object.entries(req.env ?? {}).map(([k, v]) => `${k}=${v}`),
      AttachStdin: true,
      AttachStdout: true,
      AttachStderr: true,
      Tty: false,
    });
    const started = performance.now();
    const stream = (await exec.start({ hijack: true, stdin: true })) as NodeJS.ReadWriteStream & { destroy(): void };

    let killedBy: ExecKill = null;
    let killedByUs = false;
    let memoryKilled = false;
    let killing: Promise<void> | undefined;
    const kill = (why: ExecKill) => {
      if (killedBy === null) killedBy = why;
      killedByUs = true;
      // Bounded: under a fork bomb a kill inside gVisor has been seen to never return; the exec must end all the same.
      killing ??= Promise.race([this.sentry ? this.killInSentry(pidLine.pid) : this.killExec(exec), giveUpAfter(KILL_TIMEOUT_MS)]).finally(() => stream.destroy());
    };
    const stdout = new CappedBuffer(limits.outputBytes, () => kill('output_limit'), req.onStdout);
    const stderr = new CappedBuffer(limits.outputBytes, () => kill('output_limit'), req.onStderr);
    const pidLine = new PidLineReader((chunk) => stderr.push(chunk));
    const sink = (push: (chunk: Buffer) => void) => new Writable({ write(chunk: Buffer, _enc, cb) { push(chunk); cb(); } });
    const out = sink((c) => stdout.push(c));
    const err = sink(this.sentry ? (c) => pidLine.push(c) : (c) => stderr.push(c));
    const ended = new Promise<void>((resolve) => {
      stream.on('end', resolve);
      stream.on('close', resolve);
      stream.on('error', () => resolve());
    });
    void ended.then(() => pidLine.end());
    this.docker.modem.demuxStream(stream as unknown as NodeJS.ReadableStream, out, err);
    if (req.stdin !== undefined && req.stdin.length > 0) stream.write(req.stdin);
    stream.end(); // half-close: the program sees EOF on stdin

    const wallTimer = setTimeout(() => kill('wall_timeout'), limits.wallMs);
    let polling = false;
    const cpuTimer = setInterval(() => {
      if (polling) return;
      polling = true;
      void (async () => {
        if ((await execCpuMs(await this.cgroup.cpuMs())) > limits.cpuMs) kill('cpu_timeout');
        if (this.sentry && (await this.cgroup.unreclaimableBytes()) > memoryCap) {
          memoryKilled = true;
          kill(null);
        }
      })().finally(() => (polling = false));
    }, CPU_POLL_MS);
    await ended;
    const wallMs = Math.round(performance.now() - started);
    clearTimeout(wallTimer);
    clearInterval(cpuTimer);
    await killing;

    let exitCode: number | null = null;
    for (let i = 0; i < 50; i++) {
      // A sandbox whose sentry died (host OOM backstop) can no longer answer for its execs.
      const info = await exec.inspect().catch(() => ({ Running: false, ExitCode: null }));
      if (!info.Running) {
        exitCode = info.ExitCode ?? null;
        break;
      }
      await new Promise((r) => setTimeout(r, 10));
    }
    const after = await this.cgroup.read(false);
    const cpuMs = Math.max(0, Math.round(await execCpuMs(after.cpuMs)));
    if (killedBy === null && !memoryKilled && cpuMs > limits.cpuMs) {
      killedBy = 'cpu_timeout';
      killedByUs = true;
    }
    const decoded = decodeExit(exitCode, null, killedByUs);
    return {
      stdout: stdout.toBuffer(),
      stderr: stderr.toBuffer(),
      ...decoded,
      wallMs,
      cpuMs,
      memoryKb: after.memoryKb,
      oomKilled: memoryKilled || after.oomKills > before.oomKills,
      pidsLimitHit: after.pidsMaxHits > before.pidsMaxHits,
      killedBy,
      truncated: stdout.truncated || stderr.truncated,
    };
  }

  /** runc: an exec narrower than the container's current memory or pids limit updates them first. */
  private async narrowLimits(limits: ExecRequest['limits']): Promise<void> {
    const want = { memoryMb: Math.min(limits.memoryMb, this.spec.limits.memoryMb), pids: Math.min(limits.pids, this.spec.limits.pids) };
    if (want.memoryMb === this.current.memoryMb && want.pids === this.current.pids) return;
    const bytes = want.memoryMb * 1024 * 1024;
    await this.container.update({ Memory: bytes, MemorySwap: bytes, PidsLimit: want.pids });
    this.current = want;
  }

  /**
   * gVisor: kill the exec from inside the sentry, where its processes are, by
   * its process group and session (see ../gvisor/sentry.ts). Waits for the
   * exec's pid line when the deadline came before it.
   */
  private async killInSentry(pid: Promise<number | undefined>): Promise<void> {
    const target = await pid;
    if (target === undefined) return; // the wrapper never ran: nothing of the exec exists
    await execToEnd(this.container, { Cmd: killScript(target), User: '0:0', Privileged: true });
  }

  /**
   * Freeze the container, SIGKILL the exec's processes, thaw, then wait until
   * they are gone. An exec is its own session (runc calls setsid), and a forked
   * child keeps the session id even when reparented to docker-init, so the
   * session finds the whole tree while the main process (another session)
   * survives. The wait matters after a fork bomb: killed processes count
   * against the pids limit until they are reaped, and an exec started before
   * then cannot fork its own first process (runc: "read init-p").
   */
  private async killExec(exec: Docker.Exec): Promise<void> {
    const { Pid: sid } = await exec.inspect();
    if (!sid) return;
    const paused = await this.container.pause().then(() => true, () => false);
    try {
      for (const pid of await this.sessionPids(sid)) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          /* gone */
        }
      }
    } finally {
      if (paused) await this.container.unpause().catch(() => undefined);
    }
    for (let i = 0; i < REAP_WAIT_LOOKS && (await this.sessionPids(sid)).length > 0; i++) await new Promise((r) => setTimeout(r, 10));
  }

  /** CPU ms of each process in the container now (its own and its reaped children's), by pid. */
  private async processCpu(pids?: Iterable<number>): Promise<Map<number, number>> {
    const out = new Map<number, number>();
    for (const pid of pids ?? (await this.cgroup.pids())) {
      const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
      if (!stat) continue;
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' '); // f[11..14]: utime stime cutime cstime
      out.set(pid, (Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14])) * MS_PER_TICK);
    }
    return out;
  }

  /** CPU ms the processes of `then` used since (one gone since counts nothing more). */
  private async cpuSince(then: Map<number, number>): Promise<number> {
    const now = await this.processCpu(then.keys());
    let ms = 0;
    for (const [pid, was] of then) ms += Math.max(0, (now.get(pid) ?? was) - was);
    return ms;
  }

  /** The container's processes in session `sid` (zombies not yet reaped included). */
  private async sessionPids(sid: number): Promise<number[]> {
    const out: number[] = [];
    for (const pid of await this.cgroup.pids()) {
      const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(fields[3]) === sid) out.push(pid);
    }
    return out;
  }

  async putFile(path: string, data: Buffer): Promise<void> {
    const rel = checkRelativePath(path);
    // Written by a process inside, as the sandbox uid: a planted link leads only where the sandbox could write anyway.
    const r = await this.exec({
      command: writeFileCommand(rel),
      stdin: data,
      limits: fileLimits(this.current),
    });
    if (r.exitCode !== 0) throw fileCallFailed('write', rel, r);
  }

  async getFile(path: string, maxBytes: number): Promise<Buffer | undefined> {
    const rel = checkRelativePath(path);
    const r = await this.exec({
      command: readFileCommand(rel, maxBytes),
      limits: { ...fileLimits(this.current), outputBytes: maxBytes + 1 },
    });
    return fileRead(rel, maxBytes, r);
  }

  async stats(): Promise<SandboxStats> {
    const u = await this.cgroup.read(false);
    return { cpuMs: Math.round(u.cpuMs), memoryKb: u.memoryKb, pids: u.pids };
  }

  /**
   * Remove the container. When the engine refuses or cannot be reached, this
   * throws and a later call tries again; either way the container is no longer
   * counted live, so the runtime's orphan sweep removes it once it can.
   */
  async destroy(): Promise<void> {
    if (this.removed) return;
    if (!this.destroyed) {
      this.destroyed = true;
      clearInterval(this.memoryWatch);
      this.ports.close();
    }
    try {
      await this.container.remove({ force: true }).catch((e: { statusCode?: number }) => {
        if (e.statusCode !== 404) throw e;
      });
      this.removed = true;
    } finally {
      this.onDestroy();
    }
  }
}

/**
 * Resolves when the container's main process has ended, the container is gone,
 * or kiln destroyed it. A wait also ends when the engine connection drops
 * (dockerd restarting, or a proxy in front of it): that is no exit, so the
 * container is looked at again and waited on anew, and a live session is
 * neither ended for it nor left unwatched.
 */
async function containerExit(container: Docker.Container, socketPath: string, destroyed: () => boolean): Promise<void> {
  let pause = EXIT_RETRY_MS.min;
  while (!destroyed()) {
    const since = Date.now();
    if (await engineWait(socketPath, container.id)) return;
    const state = await container.inspect().then(
      (info) => (info.State.Running ? 'running' : 'ended'),
      (e: { statusCode?: number }) => (e.statusCode === 404 ? 'ended' : 'unknown'),
    );
    if (state === 'ended') return;
    // A wait that held for a while was a working connection that dropped: look again soon.
    pause = Date.now() - since > EXIT_RETRY_MS.max ? EXIT_RETRY_MS.min : Math.min(pause * 2, EXIT_RETRY_MS.max);
    // Unref'd: a shutdown does not wait out a pause.
    await new Promise((r) => setTimeout(r, pause).unref());
  }
}

/**
 * One `POST /containers/<id>/wait` on its own connection: true when the engine
 * answered that the container is not running (or is gone), false when the
 * connection failed or dropped first. (dockerode's `wait` never settles when
 * the connection drops after the engine sent the response head, as it does at once.)
 */
function engineWait(socketPath: string, id: string): Promise<boolean> {
  return new Promise((resolve) => {
    const req = httpRequest({ socketPath, agent: false, method: 'POST', path: `/containers/${encodeURIComponent(id)}/wait?condition=not-running` }, (res) => {
      res.resume();
      // 'end' only for a whole body; 'close' after 'end' finds the promise settled.
      res.on('end', () => resolve(res.statusCode === 200 || res.statusCode === 404));
      res.on('close', () => resolve(false));
      res.on('error', () => resolve(false));
    });
    req.on('error', () => resolve(false));
    req.end();
  });
}

/** Keep the container's current limits: file copies run under what the sandbox has. */
function fileLimits(current: { memoryMb: number; pids: number }) {
  return { wallMs: FILE_CALL_MS, cpuMs: FILE_CALL_MS, memoryMb: current.memoryMb, pids: current.pids, outputBytes: 64 * 1024 };
}

/** The container's cgroup files, read directly: cgroupfs or systemd driver, v1 or v2. */
class ContainerCgroup {
  private readonly v2: string | undefined;
  private readonly v1: { memory: string; cpuacct: string; pids: string } | undefined;

  constructor(fullId: string) {
    const v2 = [`/sys/fs/cgroup/system.slice/docker-${fullId}.scope`, `/sys/fs/cgroup/docker/${fullId}`];
    this.v2 = existsSync('/sys/fs/cgroup/cgroup.controllers') ? v2.find((p) => existsSync(p)) : undefined;
    if (!this.v2) {
      const at = (c: string) => [`/sys/fs/cgroup/${c}/docker/${fullId}`, `/sys/fs/cgroup/${c}/system.slice/docker-${fullId}.scope`].find((p) => existsSync(p)) ?? '';
      this.v1 = { memory: at('memory'), cpuacct: at('cpuacct'), pids: at('pids') };
    }
  }

  /** Host pids of every process in the container. */
  async pids(): Promise<number[]> {
    const file = this.v2 ? join(this.v2, 'cgroup.procs') : join(this.v1!.pids, 'cgroup.procs');
    return (await readFile(file, 'utf8').catch(() => '')).split('\n').filter(Boolean).map(Number);
  }

  async cpuMs(): Promise<number> {
    if (this.v2) return (await readKey(join(this.v2, 'cpu.stat'), 'usage_usec')) / 1000;
    return (await readNum(join(this.v1!.cpuacct, 'cpuacct.usage'))) / 1e6;
  }

  /**
   * Memory the container cannot give back (anon + shmem, where gVisor keeps
   * the sandbox's memory), in bytes; page cache is left out because the
   * kernel reclaims it before any OOM.
   */
  async unreclaimableBytes(): Promise<number> {
    if (this.v2) {
      const stat = join(this.v2, 'memory.stat');
      return (await readKey(stat, 'anon')) + (await readKey(stat, 'shmem'));
    }
    const stat = join(this.v1!.memory, 'memory.stat');
    return (await readKey(stat, 'total_rss')) + (await readKey(stat, 'total_shmem'));
  }

  /** Usage now; `resetPeak` starts a new peak-memory window (v1 only keeps one). */
  async read(resetPeak: boolean) {
    if (this.v2) {
      const d = this.v2;
      const peak = await readNum(join(d, 'memory.peak'));
      return {
        cpuMs: await this.cpuMs(),
        memoryKb: Math.round((peak || (await readNum(join(d, 'memory.current')))) / 1024),
        oomKills: await readKey(join(d, 'memory.events'), 'oom_kill'),
        pidsMaxHits: await readKey(join(d, 'pids.events'), 'max'),
        pids: await readNum(join(d, 'pids.current')),
      };
    }
    const v1 = this.v1!;
    if (resetPeak) await writeFile(join(v1.memory, 'memory.max_usage_in_bytes'), '0').catch(() => undefined);
    return {
      cpuMs: await this.cpuMs(),
      memoryKb: Math.round((await readNum(join(v1.memory, 'memory.max_usage_in_bytes'))) / 1024),
      oomKills: await readKey(join(v1.memory, 'memory.oom_control'), 'oom_kill'),
      pidsMaxHits: await readKey(join(v1.pids, 'pids.events'), 'max'),
      pids: await readNum(join(v1.pids, 'pids.current')),
    };
  }
}

/** Resolves after `ms` without holding the process open. */
function giveUpAfter(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}

export async function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`no answer in ${ms} ms`)), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

