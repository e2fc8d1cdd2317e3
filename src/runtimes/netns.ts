/**
 * Port links into a sandbox's network namespace, with no bridge process.
 *
 * - network namespace — a sandbox's own network stack with only loopback; the
 *   session's server listens on 127.0.0.1:<port> there.
 * - port link         — kiln's way to open connections to that port: the
 *   addon (./netns.c, built by scripts/setup) makes each socket inside the
 *   namespace (setns on the calling thread, socket, connect, setns back), and
 *   the connection lives on there; kiln wraps its fd in a net.Socket. The
 *   namespace is held open by an fd taken while the sandbox's process was
 *   known alive, so a reused pid can never point a link elsewhere.
 *
 * - listening        — whether a server in the namespace listens on a port,
 *   asked of the namespace's kernel (sock_diag, by the same addon): cheap
 *   enough to watch a starting server every few milliseconds, and it opens no
 *   connection.
 *
 * The sandbox still has no network: nothing is listening for it on the host,
 * and only kiln (root) can join its namespace.
 */
import { closeSync, openSync } from 'node:fs';
import net from 'node:net';
import { KilnError } from '../errors.js';
import type { PortLink } from './types.js';
import { addonLoader } from './addon.js';

/** Where scripts/setup builds the addon. */
export const NETNS_ADDON = '/usr/local/lib/kiln/kiln-netns.node';

const addon = addonLoader<{ connect(nsFd: number, port: number): number; listening(nsFd: number, port: number): boolean }>(NETNS_ADDON, 'the port link addon', [
  'connect',
  'listening',
]);
const loadAddon = addon.load;

/** Why port links cannot work here, or undefined when they can (for `kiln doctor`). */
export const netnsProblem = addon.problem;

/** The ports of one sandbox's network namespace. */
export class NetnsPorts {
  private nsFd: number | undefined;

  /**
   * @param name names the sandbox in link keys
   * @param nsPid a host pid inside the namespace, alive now
   */
  constructor(
    private readonly name: string,
    private readonly nsPid: number,
  ) {
    loadAddon();
    this.nsFd = openSync(`/proc/${nsPid}/ns/net`, 'r');
  }

  link(port: number): PortLink {
    if (!Number.isInteger(port) || port < 1 || port > 65535) throw new KilnError('invalid_request', `port: ${port} is not a TCP port`, 400);
    return { key: `${this.name}:${port}`, connect: () => this.connect(port), connectFd: () => this.connectFd(port), netnsPid: this.nsPid };
  }

  /**
   * Whether a TCP socket listens on `port` at an address a link reaches
   * (0.0.0.0, 127.0.0.1, ::, ::ffff:127.0.0.1). Throws if the kernel cannot
   * say (no sock_diag): the caller then probes through a link instead.
   */
  listening(port: number): boolean {
    if (this.nsFd === undefined) return false;
    return loadAddon().listening(this.nsFd, port);
  }

  private connectFd(port: number): number {
    if (this.nsFd === undefined) throw new Error('the sandbox is gone');
    return loadAddon().connect(this.nsFd, port);
  }

  private connect(port: number): net.Socket {
    let fd: number | Error;
    try {
      fd = this.connectFd(port);
    } catch (e) {
      fd = e as Error;
    }
    return socketOf(fd);
  }

  close(): void {
    if (this.nsFd !== undefined) closeSync(this.nsFd);
    this.nsFd = undefined;
  }
}

/** node:net's socket for a connection's fd, or one whose error event says why there is none (as net.connect reports a refusal, not a throw). */
export function socketOf(fd: number | Error): net.Socket {
  if (typeof fd === 'number') return new net.Socket({ fd, readable: true, writable: true });
  const s = new net.Socket();
  process.nextTick(() => s.destroy(fd));
  return s;
}
