/**
 * A wire: one connection as the proxy's fast path uses it (./fast.ts), with
 * one set of handlers that is swapped whole, never listeners added and
 * removed per exchange.
 *
 * - NativeWire: the socket read and written from C on Node's loop (the
 *   kiln-wire addon, ./wire.c): per read one call into JS with the bytes, per
 *   write one syscall. Plain TCP connections from clients, and connections
 *   made through port links that give an fd (network namespaces).
 * - StreamWire: a node:net socket (TLS clients, gVisor's exec links, or a
 *   machine without the addon).
 *
 * Both read nothing until resume().
 */
import net from 'node:net';
import { addonLoader } from '../runtimes/addon.js';

export interface WireHandlers {
  /** Bytes read. Valid during the call only (a native wire's next read overwrites them): keep(chunk) to hold on to them. */
  data(chunk: Buffer): void;
  /** The peer is done sending (writing may go on). */
  end(): void;
  /** Sent bytes that had to wait are all out. */
  drain(): void;
  /** The connection failed or was closed by the peer; nothing more comes. Not called after end()/destroy() here. */
  gone(): void;
}

export interface Wire {
  handlers: WireHandlers;
  /** False when bytes wait to be sent (drain() follows). */
  write(data: Buffer): boolean;
  pause(): void;
  resume(): void;
  readonly paused: boolean;
  /** Send what waits, then close (FIN); a peer that takes nothing for `stallMs` (default SEND_TIMEOUT_MS) is cut off. */
  end(last?: Buffer, stallMs?: number): void;
  destroy(): void;
  /** Close now, as a failure seen from the other end: gone() follows (on the next tick), unlike destroy(). */
  cut(): void;
  /** Ended, destroyed or gone. */
  readonly closed: boolean;
  /** Called once when the wire is closed, however. */
  onClosed(fn: () => void): void;
  /** Give the connection to node:net (for node's HTTP server): once what waits is sent. */
  toSocket(cb: (socket: net.Socket) => void): void;
}

/**
 * How long a peer may take none of the bytes waiting for it before it is cut
 * off, ms: a client that stops reading would otherwise hold its connections,
 * the bytes and its session's activity for ever (nginx's send_timeout).
 */
export const SEND_TIMEOUT_MS = 60_000;

const IGNORE: WireHandlers = { data() {}, end() {}, drain() {}, gone() {} };
const NOTHING = Buffer.alloc(0);

/** Where scripts/setup builds the addon. */
export const WIRE_ADDON = '/usr/local/lib/kiln/kiln-wire.node';

interface WireAddon {
  init(onEvent: (id: number, kind: number, value: number) => void, buffer: Buffer): void;
  adopt(fd: number, dup: boolean): number;
  read(id: number, on: boolean): void;
  write(id: number, data: Buffer): boolean;
  end(id: number, stallMs: number): void;
  destroy(id: number): void;
  release(id: number): number;
}

const EV_DATA = 1;
const EV_END = 2;
const EV_DRAIN = 3;
const EV_GONE = 4;

const loader = addonLoader<WireAddon>(WIRE_ADDON, 'the proxy wire addon', ['init', 'adopt', 'read', 'write', 'end', 'destroy', 'release']);

/** Why native wires cannot be used here, or undefined when they can (for `kiln doctor`). */
export const wireProblem = loader.problem;

/** Where the addon reads to: every native wire's bytes, one read at a time. */
const READ_BUFFER = Buffer.allocUnsafeSlow(65536);

/** `chunk` if it may be held, else a copy (a view of the native wires' read buffer is good until the next read). */
export function keep(chunk: Buffer): Buffer {
  return chunk.buffer === READ_BUFFER.buffer ? Buffer.from(chunk) : chunk;
}

/** Wires by the addon's ids. */
const native = new Map<number, NativeWire>();
let addon: WireAddon | undefined;
let tried = false;

/** The addon, set up on first use; undefined when it cannot be loaded (the fast path then uses node:net). */
function wireAddon(): WireAddon | undefined {
  if (tried) return addon;
  tried = true;
  if (process.env.KILN_NATIVE_WIRES === '0') return undefined;
  try {
    const a = loader.load();
    a.init(onEvent, READ_BUFFER);
    addon = a;
  } catch {
    addon = undefined;
  }
  return addon;
}

export function nativeWires(): boolean {
  return wireAddon() !== undefined;
}

function onEvent(id: number, kind: number, value: number): void {
  const w = native.get(id);
  if (!w) return;
  switch (kind) {
    case EV_DATA:
      return w.handlers.data(READ_BUFFER.subarray(0, value));
    case EV_END:
      return w.handlers.end();
    case EV_DRAIN:
      return w.handlers.drain();
    case EV_GONE: {
      const h = w.handlers;
      w.settle();
      return h.gone();
    }
  }
}

/** The addon's id for a wire on `fd`, or undefined when it cannot take one (no fd left for the duplicate: the caller keeps node's socket). */
function adoptFd(a: WireAddon, fd: number, dup: boolean): number | undefined {
  try {
    return a.adopt(fd, dup);
  } catch {
    return undefined;
  }
}

/** What both kinds of wire share: the handlers, and the closing once. */
abstract class WireBase {
  handlers = IGNORE;
  protected done = false;
  private readonly closers: (() => void)[] = [];

  abstract destroy(): void;

  get closed(): boolean {
    return this.done;
  }

  cut(): void {
    if (this.done) return;
    const h = this.handlers;
    this.destroy();
    process.nextTick(() => h.gone());
  }

  onClosed(fn: () => void): void {
    if (this.done) fn();
    else this.closers.push(fn);
  }

  /** Closed: no more events, and whoever waited for it is told. */
  protected markClosed(): void {
    if (this.done) return;
    this.done = true;
    this.handlers = IGNORE;
    for (const fn of this.closers.splice(0)) fn();
  }
}

export class NativeWire extends WireBase implements Wire {
  private reading = false;

  private constructor(
    private readonly a: WireAddon,
    private readonly id: number,
  ) {
    super();
    native.set(id, this);
  }

  /** A wire owning `fd` (a connected or connecting TCP socket); undefined if it cannot be had (the caller still owns fd). */
  static fromFd(fd: number): NativeWire | undefined {
    const a = wireAddon();
    const id = a && adoptFd(a, fd, false);
    return id === undefined ? undefined : new NativeWire(a!, id);
  }

  /** The connection of a node:net socket that has not been read from, which is then destroyed; undefined (the socket untouched) if it cannot be. */
  static adopt(socket: net.Socket): NativeWire | undefined {
    const a = wireAddon();
    const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
    if (!a || fd === undefined || fd < 0) return undefined;
    const id = adoptFd(a, fd, true);
    if (id === undefined) return undefined;
    socket.destroy();
    return new NativeWire(a, id);
  }

  get paused(): boolean {
    return !this.reading;
  }

  write(data: Buffer): boolean {
    return this.done ? false : this.a.write(this.id, data);
  }

  pause(): void {
    if (!this.reading || this.done) return;
    this.reading = false;
    this.a.read(this.id, false);
  }

  resume(): void {
    if (this.reading || this.done) return;
    this.reading = true;
    this.a.read(this.id, true);
  }

  end(last?: Buffer, stallMs = SEND_TIMEOUT_MS): void {
    if (this.done) return;
    if (last) this.a.write(this.id, last);
    this.a.end(this.id, stallMs);
    this.settle();
  }

  destroy(): void {
    if (this.done) return;
    this.a.destroy(this.id);
    this.settle();
  }

  toSocket(cb: (socket: net.Socket) => void): void {
    if (this.done) throw new Error('toSocket: the wire is closed');
    this.pause();
    // Bytes of an earlier response may still wait: the hand-over waits for them.
    const give = () => {
      const socket = new net.Socket({ fd: this.a.release(this.id), readable: true, writable: true, allowHalfOpen: true });
      cb(socket);
      this.settle(); // after cb: whoever waits for the wire to close finds the socket already in place
    };
    this.handlers = { ...IGNORE, drain: give };
    if (this.a.write(this.id, NOTHING)) give(); // true: nothing waits
  }

  /** @internal the wire is closed: no more events. */
  settle(): void {
    if (this.done) return; // its id may be another wire's by now
    native.delete(this.id);
    this.markClosed();
  }
}

export class StreamWire extends WireBase implements Wire {
  private readonly onData = (chunk: Buffer) => this.handlers.data(chunk);
  private readonly onEnd = () => this.handlers.end();
  private readonly onDrain = () => this.handlers.drain();
  private readonly onGone = () => {
    if (this.done) return;
    const h = this.handlers;
    this.settle(true);
    h.gone();
  };

  constructor(readonly socket: net.Socket) {
    super();
    socket.pause();
    socket.on('data', this.onData).on('end', this.onEnd).on('drain', this.onDrain).on('error', this.onGone).on('close', this.onGone);
  }

  get paused(): boolean {
    return this.socket.isPaused();
  }

  write(data: Buffer): boolean {
    return this.done ? false : this.socket.write(keep(data)); // node may hold it until sent
  }

  pause(): void {
    this.socket.pause();
  }

  resume(): void {
    if (!this.done) this.socket.resume();
  }

  end(last?: Buffer, stallMs = SEND_TIMEOUT_MS): void {
    if (this.done) return;
    this.settle(true);
    const s = this.socket;
    if (last) s.end(last);
    else s.end();
    s.resume(); // read (and drop) to the peer's FIN, which closes the socket
    s.setTimeout(stallMs, () => s.destroy()); // a peer that neither takes the rest nor closes
  }

  destroy(): void {
    if (this.done) return;
    this.settle(true);
    this.socket.destroy();
  }

  toSocket(cb: (socket: net.Socket) => void): void {
    const s = this.socket;
    s.pause();
    this.settle(false);
    cb(s);
  }

  /** No more events; `quiet`: errors from now on are dropped (the socket is not handed on). */
  private settle(quiet: boolean): void {
    if (this.done) return;
    const s = this.socket;
    s.removeListener('data', this.onData).removeListener('end', this.onEnd).removeListener('drain', this.onDrain);
    s.removeListener('error', this.onGone).removeListener('close', this.onGone);
    if (quiet) s.on('error', () => undefined);
    this.markClosed();
  }
}
