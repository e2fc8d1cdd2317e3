/**
 * The proxy's fast path: HTTP/1.1 requests to ready sessions framed by kiln
 * itself, bytes forwarded as they come, no request or response objects.
 *
 * Every connection to kiln's server starts here. The head of each request is
 * read (./http1.ts); a plain HTTP/1.1 request to a ready session is sent on
 * with a rewritten head (path without the prefix, X-Forwarded-*, no hop-by-hop
 * fields), its body and the response's body pass through untouched, and the
 * response head gets the same rewrite the node:http path gives it. Anything
 * else (the API, upgrades, a session still starting or ended, HTTP/1.0, a
 * head this parser does not fully understand) is handed, with the bytes read
 * so far, to node's HTTP server, which keeps that connection from then on.
 *
 * One exchange at a time per connection: bytes a client sends ahead
 * (pipelining) wait, unread, until the response before them is done.
 */
import type net from 'node:net';
import { BodyFrame, FramingError, HOP_BY_HOP, SET_BY_PROXY, contentLength, listsToken, readHead, requestLine, responseBody, statusLine, type Head } from './http1.js';
import { giveBackend, takeBackend } from './backends.js';
import type { PortLink } from '../runtimes/types.js';

/** Where a request goes, as the session proxy decides it. */
export interface FastRoute {
  link: PortLink;
  /** The path the server sees. */
  path: string;
  /** The `/s/<key>` prefix the client used (X-Forwarded-Prefix). */
  prefix: string;
  /** Called when the exchange starts and when it ends (activity; open sockets). */
  begin(): void;
  end(): void;
  /** Whether the session can still be reached (it may have ended mid-exchange). */
  open(): boolean;
}

export interface FastRouter {
  /** A route for a ready session, or undefined to leave the request to node's server. */
  route(method: string, target: string, cookie: string | undefined, navigate: boolean): FastRoute | undefined;
}

/** Request fields the backend does not get: hop-by-hop ones (but Transfer-Encoding: the body's framing passes through as it is), and those kiln sets itself. */
const DROP_REQUEST = new Set([...HOP_BY_HOP, ...SET_BY_PROXY].filter((f) => f !== 'transfer-encoding'));
/** Response fields the client does not get. Transfer-Encoding and Trailer stay: the body's framing passes through as it is. */
const DROP_RESPONSE = new Set([...HOP_BY_HOP].filter((f) => f !== 'transfer-encoding' && f !== 'trailer'));

const BAD_GATEWAY = (() => {
  const body = 'The session’s server did not answer.\n';
  return `HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n${body}`;
})();
const BAD_REQUEST = 'HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n';

interface Exchange {
  route: FastRoute;
  /** The head as sent to the backend: resent once on a fresh connection if a reused one was closed under it. */
  head: string;
  isHead: boolean;
  requestBody: BodyFrame;
  backend: Held;
  /** The backend connection carried an exchange before this one. */
  reused: boolean;
  /** Bytes of the response seen so far (before its head is complete). */
  pending: Buffer | undefined;
  responseBody: BodyFrame | undefined;
  /** Some of the response was written to the client. */
  answered: boolean;
  /** The response head, until it is written with the first bytes of the body after it. */
  responseHead?: string;
  /** The backend's connection cannot carry another exchange. */
  spent: boolean;
}

/** A backend connection a client connection holds between its exchanges, listened to once (not per exchange). */
interface Held {
  link: PortLink;
  socket: net.Socket;
  /** Carried an exchange already (so a close before any answer may be a stale keep-alive). */
  used: boolean;
  detach: () => void;
}

export class FastPath {
  private readonly connections = new Set<ClientConnection>();
  private readonly sweeper: NodeJS.Timeout;
  private closing = false;

  constructor(
    private readonly router: FastRouter,
    /** node's own listener for a new connection (the socket's unread bytes were put back first). */
    private readonly handOff: (socket: net.Socket) => void,
    private readonly limits: () => { keepAliveMs: number; headersMs: number },
  ) {
    // Timeouts by sweep, not by a timer per connection and request.
    this.sweeper = setInterval(() => this.sweep(), 1000).unref();
  }

  accept(socket: net.Socket): void {
    if (this.closing) {
      this.handOff(socket);
      return;
    }
    this.connections.add(new ClientConnection(socket, this));
  }

  /** @internal */ route(method: string, target: string, cookie: string | undefined, navigate: boolean): FastRoute | undefined {
    return this.closing ? undefined : this.router.route(method, target, cookie, navigate);
  }

  /** @internal */ release(c: ClientConnection, handOff: boolean): void {
    this.connections.delete(c);
    if (handOff) this.handOff(c.socket);
  }

  private sweep(): void {
    const { keepAliveMs, headersMs } = this.limits();
    const now = performance.now();
    for (const c of this.connections) c.expire(now, keepAliveMs, headersMs);
  }

  /** The server is closing: idle connections close now, busy ones after their exchange. */
  close(): void {
    this.closing = true;
    clearInterval(this.sweeper);
    for (const c of this.connections) c.closeWhenIdle();
  }
}

class ClientConnection {
  /** Bytes read from the client and not yet used. */
  private buffered: Buffer | undefined;
  private exchange: Exchange | undefined;
  /** The backend connection held between exchanges (most clients talk to one session). */
  private held: Held | undefined;
  /** When the connection went idle, or when a partial head began (performance.now()). */
  private since = performance.now();
  private closeAfter = false;
  private done = false;
  private readonly client: string;
  private readonly encrypted: boolean;

  constructor(
    readonly socket: net.Socket,
    private readonly path: FastPath,
  ) {
    this.client = socket.remoteAddress ?? '';
    this.encrypted = (socket as { encrypted?: boolean }).encrypted === true;
    socket.on('data', this.onData);
    socket.on('end', this.onEnd);
    socket.on('error', this.onClose);
    socket.on('close', this.onClose);
  }

  private readonly onData = (chunk: Buffer): void => {
    if (this.done) return; // closing: nothing more is read
    const x = this.exchange;
    if (x && !x.requestBody.done) {
      this.forwardBody(x, chunk, 0);
      return;
    }
    if (!this.buffered) this.since = performance.now();
    this.buffered = this.buffered ? Buffer.concat([this.buffered, chunk]) : chunk;
    if (x) this.socket.pause(); // pipelined: waits for the response before it
    else this.next();
  };

  private readonly onEnd = (): void => {
    // The client is done sending: answer what it asked, then close.
    if (this.exchange) this.closeAfter = true;
    else this.finish();
  };

  private readonly onClose = (): void => {
    if (this.done) return;
    this.done = true;
    const x = this.exchange;
    if (x) {
      this.exchange = undefined;
      this.dropHeld(false);
      x.route.end();
    }
    this.dropHeld(true);
    this.socket.destroy();
    this.path.release(this, false);
  };

  /** Start the next request in the buffer, if its head is all there. */
  private next(): void {
    const buf = this.buffered;
    if (!buf || this.done) return;
    const head = readHead(buf);
    if (head === 'more') return;
    if (head === 'invalid') return this.handOff();
    const started = this.start(head, buf);
    if (!started) return this.handOff();
  }

  /** Begin an exchange for `head`; false if the request is not for the fast path. */
  private start(head: Head, buf: Buffer): boolean {
    const rl = requestLine(head.line);
    if (!rl) return false;
    const f = head.fields;
    let cookie: string | undefined;
    let navigate = false;
    let length: number | undefined;
    let chunked = false;
    let hosts = 0;
    let host = '';
    let forwardedFor: string | undefined;
    let out = '';
    for (let i = 0; i < f.length; i += 2) {
      const name = f[i]!;
      const value = f[i + 1]!;
      const lower = name.toLowerCase();
      switch (lower) {
        case 'host':
          if (++hosts > 1) return false;
          host = value;
          break;
        case 'content-length':
          if (length !== undefined) return false;
          length = contentLength(value);
          if (length === undefined) return false;
          break;
        case 'transfer-encoding':
          if (chunked || value.toLowerCase() !== 'chunked') return false;
          chunked = true;
          break;
        case 'connection':
          if (listsToken(value, 'upgrade')) return false;
          if (listsToken(value, 'close')) this.closeAfter = true;
          continue;
        case 'upgrade':
          return false;
        case 'cookie':
          cookie = cookie === undefined ? value : `${cookie}; ${value}`;
          break;
        case 'sec-fetch-mode':
          navigate = value === 'navigate';
          break;
        case 'x-forwarded-for':
          forwardedFor = forwardedFor === undefined ? value : `${forwardedFor}, ${value}`;
          continue;
      }
      if (DROP_REQUEST.has(lower)) continue;
      out += `${name}: ${value}\r\n`;
    }
    // Both framings at once is how requests are smuggled: node's parser refuses it, so let it.
    if (hosts === 0 || (chunked && length !== undefined) || rl.method === 'CONNECT') return false;
    const route = this.path.route(rl.method, rl.target, cookie, navigate);
    if (!route) return false;

    out = `${rl.method} ${route.path} HTTP/1.1\r\n${out}X-Forwarded-For: ${forwardedFor === undefined ? this.client : `${forwardedFor}, ${this.client}`}\r\nX-Forwarded-Proto: ${this.encrypted ? 'https' : 'http'}\r\nX-Forwarded-Host: ${host}\r\nX-Forwarded-Prefix: ${route.prefix}\r\n\r\n`;
    const backend = this.hold(route.link);
    const x: Exchange = {
      route,
      head: out,
      isHead: rl.method === 'HEAD',
      requestBody: chunked ? BodyFrame.chunked() : length ? BodyFrame.length(length) : BodyFrame.none(),
      backend,
      reused: backend.used,
      pending: undefined,
      responseBody: undefined,
      answered: false,
      spent: false,
    };
    this.exchange = x;
    this.buffered = undefined;
    route.begin();
    backend.used = true;
    backend.socket.write(out, 'latin1');
    this.forwardBody(x, buf, head.length);
    return true;
  }

  /** The held connection if it goes to `link`, else a pooled or new one (held from now on). */
  private hold(link: PortLink): Held {
    const held = this.held;
    if (held && held.link.key === link.key && !held.socket.destroyed) return held;
    this.dropHeld(true);
    const { socket, reused } = takeBackend(link);
    return (this.held = this.listen(link, socket, reused));
  }

  private listen(link: PortLink, socket: net.Socket, used: boolean): Held {
    const h: Held = { link, socket, used, detach: () => undefined };
    const data = (chunk: Buffer) => this.onBackendData(h, chunk);
    const end = () => this.onBackendEnd(h);
    const gone = () => this.onBackendGone(h);
    socket.on('data', data).on('end', end).on('error', gone).on('close', gone);
    h.detach = () => socket.removeListener('data', data).removeListener('end', end).removeListener('error', gone).removeListener('close', gone);
    return h;
  }

  /** Let go of the held connection: back to the pool if `reuse` and it is clean, else closed. */
  private dropHeld(reuse: boolean): void {
    const h = this.held;
    if (!h) return;
    this.held = undefined;
    h.detach();
    if (reuse && !h.socket.destroyed) giveBackend(h.link, h.socket);
    else h.socket.on('error', () => undefined).destroy();
  }

  /** Bytes of the request at `from` onwards: the body's go to the backend; any after it wait for the next exchange. */
  private forwardBody(x: Exchange, chunk: Buffer, from: number): void {
    let n: number;
    try {
      n = x.requestBody.take(chunk, from);
    } catch (e) {
      if (!(e instanceof FramingError)) throw e;
      return this.fail(x, BAD_REQUEST);
    }
    if (n > 0 && !x.backend.socket.write(from === 0 && n === chunk.length ? chunk : chunk.subarray(from, from + n))) {
      this.socket.pause();
      x.backend.socket.once('drain', () => this.exchange === x && this.socket.resume());
    }
    const rest = from + n;
    if (rest < chunk.length) {
      this.buffered = chunk.subarray(rest);
      this.since = performance.now();
      this.socket.pause();
    }
  }

  private onBackendData(h: Held, chunk: Buffer): void {
    const x = this.exchange;
    // Bytes while no request is out: the server is out of step.
    if (!x || x.backend !== h) return this.dropHeld(false);
    if (x.responseBody) return this.forwardResponse(x, chunk, 0);
    const buf = x.pending ? Buffer.concat([x.pending, chunk]) : chunk;
    x.pending = undefined;
    this.readResponseHead(x, buf, 0);
  }

  /** A response head (or more than one: interim 1xx responses come before the final one) at `from` in `buf`. */
  private readResponseHead(x: Exchange, buf: Buffer, from: number): void {
    for (;;) {
      const data = from === 0 ? buf : buf.subarray(from);
      const head = readHead(data);
      if (head === 'more') {
        if (data.length > 0) x.pending = data;
        return;
      }
      const sl = head === 'invalid' ? undefined : statusLine(head.line);
      if (!sl || head === 'invalid' || sl.status === 101) return this.fail(x, BAD_GATEWAY);
      const interim = sl.status < 200;
      let framing: BodyFrame | undefined;
      let out = `HTTP/1.1 ${sl.status} ${sl.reason}\r\n`;
      let referrerPolicy = false;
      let length: number | undefined;
      let coding: string | undefined;
      const f = head.fields;
      for (let i = 0; i < f.length; i += 2) {
        const name = f[i]!;
        const value = f[i + 1]!;
        const lower = name.toLowerCase();
        if (lower === 'content-length') {
          const n = contentLength(value);
          if (n === undefined || (length !== undefined && n !== length)) return this.fail(x, BAD_GATEWAY);
          length = n;
        } else if (lower === 'transfer-encoding') coding = coding === undefined ? value : `${coding}, ${value}`;
        else if (lower === 'connection' && listsToken(value, 'close')) x.spent = true;
        else if (lower === 'referrer-policy') referrerPolicy = true;
        if (DROP_RESPONSE.has(lower)) continue;
        out += `${name}: ${value}\r\n`;
      }
      if (!interim) {
        framing = responseBody(sl.status, x.isHead, length, coding);
        // With Transfer-Encoding, Content-Length is wrong by definition (RFC 9112 §6.3): not passed on.
        if (coding !== undefined && length !== undefined) out = out.replace(/^content-length:.*\r\n/gim, '');
        if (framing.kind === 'close') x.spent = this.closeAfter = true;
        // A page at a token URL must not hand the token to other sites in Referer.
        if (!referrerPolicy) out += 'Referrer-Policy: same-origin\r\n';
        if (this.closeAfter) out += 'Connection: close\r\n';
      }
      out += '\r\n';
      from += head.length;
      if (interim) {
        x.answered = true;
        this.socket.write(out, 'latin1');
        continue;
      }
      x.responseBody = framing;
      x.responseHead = out;
      return this.forwardResponse(x, buf, from);
    }
  }

  private forwardResponse(x: Exchange, chunk: Buffer, from: number): void {
    let n: number;
    try {
      n = x.responseBody!.take(chunk, from);
    } catch {
      return this.fail(x, BAD_GATEWAY); // a 502 if the head was held, else the connection is cut
    }
    let ok = true;
    const head = x.responseHead;
    if (head !== undefined) {
      // A body of known length: its head waits for its first bytes, and both go out in one write (servers
      // often send them apart; two writes wake the client twice). Not a chunked or close-delimited body,
      // which may be a stream whose first bytes come much later (server-sent events), nor while the
      // request's body is still coming (the server may answer before it has it all).
      if (n === 0 && !x.responseBody!.done && x.responseBody!.kind === 'length' && x.requestBody.done) return;
      x.responseHead = undefined;
      x.answered = true;
      if (n === 0) ok = this.socket.write(head, 'latin1');
      else {
        const headBytes = Buffer.byteLength(head, 'latin1');
        const one = Buffer.allocUnsafe(headBytes + n);
        one.write(head, 0, 'latin1');
        chunk.copy(one, headBytes, from, from + n);
        ok = this.socket.write(one);
      }
    } else if (n > 0) ok = this.socket.write(n === chunk.length ? chunk : chunk.subarray(from, from + n));
    if (!ok) this.waitForClient(x);
    this.afterResponseBytes(x, chunk, from + n);
  }

  private waitForClient(x: Exchange): void {
    const b = x.backend.socket;
    b.pause();
    this.socket.once('drain', () => b.resume());
  }

  private afterResponseBytes(x: Exchange, buf: Buffer, used: number): void {
    // Bytes past the response's end: the server is out of step; its connection is not reused.
    if (used < buf.length) x.spent = true;
    if (x.responseBody!.done) this.complete(x);
  }

  private onBackendEnd(h: Held): void {
    const x = this.exchange;
    if (x?.backend === h && x.responseBody?.kind === 'close') {
      x.spent = true;
      x.responseBody.end();
      this.complete(x);
    } else this.onBackendGone(h);
  }

  /** The backend's connection closed or failed: fatal to an exchange on it with its response unfinished. */
  private onBackendGone(h: Held): void {
    if (this.held === h) this.dropHeld(false);
    const x = this.exchange;
    if (!x || x.backend !== h) return;
    // A kept connection the server had closed while it was idle: once more on a new one, if nothing was lost.
    if (x.reused && x.responseBody === undefined && !x.answered && x.pending === undefined && x.requestBody.kind === 'none' && x.route.open()) {
      const { socket } = takeBackend(x.route.link);
      x.backend = this.held = this.listen(x.route.link, socket, true);
      x.reused = false;
      socket.write(x.head, 'latin1');
      return;
    }
    this.fail(x, BAD_GATEWAY);
  }

  /** The exchange cannot finish: answer `reply` if nothing was answered yet, and close the connection. */
  private fail(x: Exchange, reply: string | undefined): void {
    if (this.exchange !== x) return;
    this.exchange = undefined;
    this.dropHeld(false);
    x.route.end();
    this.done = true;
    this.path.release(this, false);
    if (reply !== undefined && !x.answered) this.socket.end(reply);
    else this.socket.destroy();
  }

  /** The response is all sent: keep or give back the backend connection, then go on with the next request. */
  private complete(x: Exchange): void {
    this.exchange = undefined;
    x.route.end();
    // Answered before the request's body was all read: the rest of that body is not worth reading.
    if (!x.requestBody.done) x.spent = this.closeAfter = true;
    if (x.spent) this.dropHeld(false);
    else if (x.backend.socket.isPaused()) x.backend.socket.resume();
    if (this.closeAfter) return this.finish();
    this.since = performance.now();
    this.socket.resume();
    this.next();
  }

  /** No more exchanges: end the connection once what was written is sent. */
  private finish(): void {
    if (this.done) return;
    this.done = true;
    this.dropHeld(true);
    this.socket.end();
    this.path.release(this, false);
  }

  /** Leave the connection to node's server, at a request boundary: it gets the unread bytes back. */
  private handOff(): void {
    const s = this.socket;
    this.done = true;
    this.dropHeld(true);
    s.removeListener('data', this.onData).removeListener('end', this.onEnd).removeListener('error', this.onClose).removeListener('close', this.onClose);
    s.pause();
    if (this.buffered) s.unshift(this.buffered);
    this.buffered = undefined;
    this.path.release(this, true);
    s.resume();
  }

  /** Called by the sweep: close a connection idle past keep-alive, or sending a head too slowly. */
  expire(now: number, keepAliveMs: number, headersMs: number): void {
    if (this.exchange || this.done) return;
    if (this.buffered ? headersMs > 0 && now - this.since > headersMs : keepAliveMs > 0 && now - this.since > keepAliveMs) {
      this.done = true;
      this.dropHeld(true);
      this.socket.destroy();
      this.path.release(this, false);
    }
  }

  closeWhenIdle(): void {
    if (this.exchange) this.closeAfter = true;
    else if (!this.done) this.finish();
  }
}
