/**
 * Port bridges: how kiln reaches a server listening inside a sandbox that has
 * no network. A socat enters only the sandbox's network namespace and serves a
 * unix socket in a host dir no sandbox can see (so no sandbox can swap it for a
 * link); it dies with kiln (pdeathsig). Every connection to the socket becomes a TCP connection to the port
 * on the sandbox's own loopback. Nothing listens on a host TCP port.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { KilnError } from '../errors.js';
import { LAUNCHER_ENV } from './process/bwrap.js';

/** How long socat may take to start listening, ms (exec'ing three programs on a busy machine). */
const BRIDGE_START_MS = 2000;

export class PortBridges {
  private readonly bridges = new Map<number, { path: string; child: ChildProcess }>();

  /**
   * @param dir host dir for the sockets (made 0700, owned by `uid`)
   * @param uid the unprivileged uid socat runs as
   */
  constructor(
    private readonly dir: string,
    private readonly uid: number,
    private readonly gid: number,
  ) {}

  /** The unix socket reaching `port` in the network namespace of host pid `nsPid`. */
  async open(nsPid: number, port: number): Promise<string> {
    const known = this.bridges.get(port);
    if (known && known.child.exitCode === null) return known.path;
    if (!Number.isInteger(port) || port < 1 || port > 65535) throw new KilnError('invalid_request', `port: ${port} is not a TCP port`, 400);
    // Parents traversable (0711) by the bridge uid; the socket dir its alone.
    mkdirSync(dirname(this.dir), { recursive: true, mode: 0o711 });
    chmodSync(dirname(this.dir), 0o711);
    mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    chownSync(this.dir, this.uid, this.gid);
    const path = join(this.dir, `${port}.sock`);
    const child = spawn(
      'nsenter',
      [`--target=${nsPid}`, '--net', '--', 'setpriv', '--pdeathsig=KILL', `--reuid=${this.uid}`, `--regid=${this.gid}`, '--clear-groups', '--no-new-privs', '--',
        'socat', `UNIX-LISTEN:${path},fork,mode=600,unlink-early,backlog=512`, `TCP:127.0.0.1:${port},nodelay`],
      { stdio: ['ignore', 'ignore', 'pipe'], env: LAUNCHER_ENV },
    );
    let err = '';
    child.stderr!.on('data', (c: Buffer) => (err = (err + c.toString()).slice(-2000)));
    child.on('error', () => undefined);
    this.bridges.set(port, { path, child });
    // A stat per millisecond: the bridge is often the last thing a cold start waits for.
    const deadline = performance.now() + BRIDGE_START_MS;
    while (!existsSync(path) && child.exitCode === null && performance.now() < deadline) await new Promise((r) => setTimeout(r, 1));
    if (!existsSync(path)) {
      child.kill('SIGKILL');
      throw new KilnError('sandbox_failed', `cannot bridge port ${port} into the sandbox: ${err.trim() || 'socat did not start'}`, 500);
    }
    return path;
  }

  closeAll(): void {
    for (const { child } of this.bridges.values()) child.kill('SIGKILL');
    this.bridges.clear();
    rmSync(this.dir, { recursive: true, force: true });
  }
}
