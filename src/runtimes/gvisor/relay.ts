/**
 * Exec relays: how kiln reaches a server inside a gVisor sandbox.
 *
 * runsc runs with --network=none, so the server's port exists only on
 * gVisor's own loopback, inside the sentry; no host network namespace holds
 * it, and a port link (../netns.ts) has nothing to enter. What does
 * reach inside is `docker exec`. So kiln itself listens on a unix socket in a
 * root-only host dir, and each accepted connection becomes one exec of
 * kiln-relay (./kiln-relay.c, static, bind-mounted read-only into the
 * sandbox), run as the sandbox uid, which connects to 127.0.0.1:<port> and
 * copies its stdin to the socket and the socket to its stdout.
 *
 * - relay connection — one client connection to the unix socket and its exec.
 * - pid line         — the relay's first stderr line, its pid in the sentry.
 *
 * An exec costs hundreds of ms, paid once per backend connection: the proxy's
 * keep-alive agent (../../proxy/agents.ts) reuses connections across requests.
 * Docker keeps an exec running after its attach connection closes, so when
 * the client goes first (its FIN or an error) kiln kills the relay by its pid
 * line (`kiln-relay -k`, one more exec). When the server closes first, the
 * relay exits and kiln ends the client after the last bytes.
 */
import type Docker from 'dockerode';
import { chmodSync, existsSync, mkdirSync, rmSync } from 'node:fs';
import net from 'node:net';
import { dirname, join } from 'node:path';
import type { Duplex } from 'node:stream';
import { KilnError } from '../../errors.js';
import { PidLineReader, execToEnd } from './sentry.js';
import type { BindMount } from './seccomp.js';
import { DockerFrames } from './frames.js';
import type { PortLink } from '../types.js';

/** Where scripts/setup builds the relay on the host. */
export const RELAY_HOST_PATH = '/usr/local/lib/kiln/kiln-relay';
/** Where a gVisor sandbox sees it (read-only). */
export const RELAY_PATH = '/.kiln/relay';

/** The bind mount that puts the relay into a gVisor sandbox; none when setup has not built it (portLink then says so). */
export function relayMounts(): BindMount[] {
  return existsSync(RELAY_HOST_PATH) ? [{ Type: 'bind', Source: RELAY_HOST_PATH, Target: RELAY_PATH, ReadOnly: true }] : [];
}

export class ExecRelays {
  private readonly servers = new Map<number, { path: string; server: net.Server }>();
  private readonly connections = new Set<RelayConnection>();
  private closed = false;

  /**
   * @param dir host dir for the sockets (made 0700, root's: only kiln connects)
   * @param container the sandbox the relays run in
   * @param user uid:gid the relays run as (the sandbox user)
   */
  constructor(
    private readonly dir: string,
    private readonly container: Docker.Container,
    private readonly user: string,
    private readonly hasRelay: boolean,
  ) {}

  /** The port link of `port`: each connection goes through the relay socket (see open). */
  async link(port: number): Promise<PortLink> {
    const path = await this.open(port);
    return { key: path, connect: () => net.connect(path) };
  }

  /** The unix socket whose every connection reaches `port` on the sandbox's loopback. */
  async open(port: number): Promise<string> {
    if (!Number.isInteger(port) || port < 1 || port > 65535) throw new KilnError('invalid_request', `port: ${port} is not a TCP port`, 400);
    if (this.closed) throw new KilnError('sandbox_gone', 'the sandbox was destroyed', 410);
    if (!this.hasRelay) {
      throw new KilnError('runtime_unavailable', `gvisor: ${RELAY_HOST_PATH} is missing, so sessions cannot reach the sandbox; run scripts/setup as root`, 503);
    }
    const known = this.servers.get(port);
    if (known) return known.path;
    mkdirSync(dirname(this.dir), { recursive: true, mode: 0o711 });
    mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    chmodSync(this.dir, 0o700);
    const path = join(this.dir, `${port}.sock`);
    rmSync(path, { force: true });
    // A client's FIN closes it (no allowHalfOpen): a FIN from a client that left and one that half-closed look
    // the same, and a relay must never outlive a client that left. The proxy never half-closes either.
    const server = net.createServer((client) => this.accept(client, port));
    this.servers.set(port, { path, server });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ path, backlog: 512 }, () => resolve());
    }).catch((e: Error) => {
      this.servers.delete(port);
      throw new KilnError('sandbox_failed', `cannot listen on ${path} for port ${port}: ${e.message}`, 500);
    });
    chmodSync(path, 0o600);
    return path;
  }

  private accept(client: net.Socket, port: number): void {
    const conn = new RelayConnection(client, this.container, this.user, port, () => this.connections.delete(conn));
    this.connections.add(conn);
    void conn.start();
  }

  /**
   * Whether something inside accepts connections on `port`: one exec of
   * `kiln-relay -t`. A relay's own client cannot tell: its unix connect always
   * succeeds, and a refused relay hangs up only after its exec has started.
   */
  async listening(port: number): Promise<boolean> {
    const exec = await this.container.exec({ Cmd: [RELAY_PATH, '-t', String(port)], User: this.user, AttachStdout: true, AttachStderr: true });
    const out = await exec.start({ hijack: true, stdin: false });
    out.resume();
    await new Promise<void>((resolve) => (out.on('end', resolve), out.on('close', resolve), out.on('error', () => resolve())));
    // The exec's exit code is set a moment after its output ends.
    for (let i = 0; i < 100; i++) {
      const info = await exec.inspect();
      if (!info.Running) return info.ExitCode === 0;
      await new Promise((r) => setTimeout(r, 10));
    }
    return false;
  }

  /** The sandbox is being removed: drop every client; the relays die with the container. */
  close(): void {
    this.closed = true;
    for (const { server } of this.servers.values()) server.close();
    for (const c of this.connections) c.drop();
    this.servers.clear();
    this.connections.clear();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/**
 * States of one relay connection:
 *
 *   starting ──exec attached──▶ relaying ──relay exited──▶ done
 *       │                          │
 *       └──client gone / error─────┴──▶ killing ──▶ done
 *
 * `dropped` (the sandbox is going away) ends any state without a kill.
 */
const State = { starting: 'starting', relaying: 'relaying', killing: 'killing', done: 'done' } as const;
type State = (typeof State)[keyof typeof State];

class RelayConnection {
  private state: State = State.starting;
  private stream: Duplex | undefined;
  private readonly pidLine = new PidLineReader(() => undefined); // the relay's own complaints (connect refused) mean "not listening"
  private relayExited = false;
  private dropped = false;

  constructor(
    private readonly client: net.Socket,
    private readonly container: Docker.Container,
    private readonly user: string,
    private readonly port: number,
    private readonly onDone: () => void,
  ) {
    client.on('error', () => undefined);
    // Bytes that arrive before the exec is attached wait in the socket (it is not flowing yet).
    client.once('close', () => void this.clientGone());
  }

  async start(): Promise<void> {
    let stream: Duplex;
    try {
      const exec = await this.container.exec({
        Cmd: [RELAY_PATH, String(this.port)],
        User: this.user,
        AttachStdin: true,
        AttachStdout: true,
        AttachStderr: true,
        Tty: false,
      });
      stream = (await exec.start({ hijack: true, stdin: true })) as unknown as Duplex;
    } catch {
      this.client.destroy();
      return this.finish();
    }
    this.stream = stream;
    stream.on('error', () => undefined);
    const frames = new DockerFrames((chunk) => this.pidLine.push(chunk));
    const gone = () => {
      this.pidLine.end();
      this.relayGone();
    };
    // 'end': dockerd closed its side, so the relay exited. 'close' alone may be our own destroy().
    stream.once('end', () => {
      this.relayExited = true;
      gone();
    });
    stream.once('close', gone);
    stream.pipe(frames);
    if (this.state !== State.starting) {
      // The client left while the exec started: the relay may be connected already.
      frames.resume();
      return this.stopRelay();
    }
    this.state = State.relaying;
    // Relay exited (its stdout ended): the backend closed, so the frames pipe ends the client after its last bytes.
    frames.pipe(this.client);
    this.client.pipe(stream);
  }

  private relayGone(): void {
    if (this.state !== State.relaying) return;
    this.client.once('finish', () => this.client.destroy());
    this.finish();
  }

  private clientGone(): void {
    if (this.state === State.starting) {
      this.state = State.killing; // start() stops the relay once attached
      return;
    }
    if (this.state === State.relaying) {
      this.state = State.killing;
      void this.stopRelay();
    }
  }

  /** Ends a relay whose client left: docker would keep it (and its connection to the server) alive. */
  private async stopRelay(): Promise<void> {
    // The pid line comes first on stderr; it is settled without a pid when the relay ends.
    const pid = await this.pidLine.pid;
    const running = !this.relayExited && !this.dropped;
    this.stream?.destroy();
    if (pid !== undefined && running) await this.kill(pid);
    this.finish();
  }

  private async kill(pid: number): Promise<void> {
    try {
      await execToEnd(this.container, { Cmd: [RELAY_PATH, '-k', String(pid)], User: this.user });
    } catch {
      /* the sandbox is gone: so is the relay */
    }
  }

  /** The sandbox is being removed: no kill needed, the relay dies with it. */
  drop(): void {
    this.dropped = true;
    this.stream?.destroy();
    this.client.destroy();
  }

  private finish(): void {
    if (this.state === State.done) return;
    this.state = State.done;
    this.onDone();
  }
}
