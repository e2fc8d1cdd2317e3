/**
 * Connections to each session's server (one per port link key), shared by
 * the readiness probe and both proxy paths, so that the connection the probe
 * opened serves a session's first request (a gVisor link's connection is an
 * exec, not a syscall).
 *
 * - idle sockets: kept per link for the next request (the fast path and the
 *   probe take and give them back);
 * - agents: node:http agents for the node:http path (rare requests: a session
 *   still starting, HTTP/1.0, a browser being moved off its token URL);
 * - `dropBackend(link)` cuts every connection to a server that is gone, busy
 *   or idle.
 */
import http from 'node:http';
import type { Socket } from 'node:net';
import type { PortLink } from '../runtimes/types.js';
import { socketOf } from '../runtimes/netns.js';
import { NativeWire, StreamWire, nativeWires, type Wire } from './wire.js';

/** Idle connections kept per link; more are closed as they come back. */
const MAX_IDLE = 64;

interface Backend {
  link: PortLink;
  /** Every connection made for the link and not yet closed (idle, in use, held by a client's connection), and how to cut it. */
  live: Map<object, () => void>;
  idle: Wire[];
  agent?: http.Agent;
}

const backends = new Map<string, Backend>();

function backendOf(link: PortLink): Backend {
  let b = backends.get(link.key);
  if (!b) backends.set(link.key, (b = { link, live: new Map(), idle: [] }));
  return b;
}

/** An idle connection to the link's server if there is one (`reused`), else a new one. Either reads nothing until resumed. */
export function takeBackend(link: PortLink): { wire: Wire; reused: boolean } {
  const b = backendOf(link);
  const wire = b.idle.pop();
  if (wire) {
    wire.pause();
    return { wire, reused: true };
  }
  return { wire: connectWire(b), reused: false };
}

/** A new connection, never an idle one (a retry after an idle one was found closed: the others may be as stale). */
export function freshBackend(link: PortLink): Wire {
  return connectWire(backendOf(link));
}

/** A new connection: a native wire when the link gives an fd (a network namespace's), else node's socket. */
function connectWire(b: Backend): Wire {
  const w = newWire(b.link);
  // Cut, not destroyed: an exchange on it fails (the client gets a 502 or a closed connection) instead of waiting forever.
  b.live.set(w, () => w.cut());
  w.onClosed(() => b.live.delete(w));
  return w;
}

function newWire(link: PortLink): Wire {
  if (!link.connectFd || !nativeWires()) return new StreamWire(link.connect());
  let fd: number | Error;
  try {
    fd = link.connectFd();
  } catch (e) {
    fd = e as Error; // refused or gone: an error event, as from any link (and not a second try through connect())
  }
  return (typeof fd === 'number' && NativeWire.fromFd(fd)) || new StreamWire(socketOf(fd));
}

/** A connection that finished an exchange cleanly and may carry another. */
export function giveBackend(link: PortLink, wire: Wire): void {
  const b = backends.get(link.key);
  if (!b || wire.closed || b.idle.length >= MAX_IDLE) {
    wire.destroy();
    return;
  }
  // Idle: bytes the server sends now (or its close) end the connection.
  const drop = () => {
    const i = b.idle.indexOf(wire);
    if (i >= 0) b.idle.splice(i, 1);
    wire.destroy();
  };
  wire.handlers = { data: drop, end: drop, gone: drop, drain: () => undefined };
  wire.resume();
  b.idle.push(wire);
}

/** A node:http agent for the link, whose new connections are the link's (and counted as live). */
export function backendAgent(link: PortLink): http.Agent {
  const b = backendOf(link);
  if (!b.agent) {
    b.agent = new http.Agent({ keepAlive: true, maxSockets: 256 });
    // The request's host and port mean nothing here: every connection goes through the link.
    b.agent.createConnection = () => {
      const socket: Socket = b.link.connect();
      b.live.set(socket, () => socket.destroy());
      socket.once('close', () => b.live.delete(socket));
      return socket;
    };
  }
  return b.agent;
}

/** Close every connection to a server that is gone. */
export function dropBackend(link: PortLink): void {
  const b = backends.get(link.key);
  if (!b) return;
  backends.delete(link.key);
  b.agent?.destroy();
  for (const cut of [...b.live.values()]) cut();
}

export function dropAllBackends(): void {
  for (const b of [...backends.values()]) dropBackend(b.link);
}
