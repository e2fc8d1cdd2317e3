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
 * (pipelining) wait, unread, until the response before them is done and the
 * client has taken it (a client that sends and never reads holds one
 * response in kiln, not all of them).
 *
 * Both sides are wires (./wire.ts): plain TCP connections are read and
 * written by the kiln-wire addon, so a request costs JS one call per read.
 */
import type net from 'node:net';
import { NativeWire, SEND_TIMEOUT_MS, StreamWire, keep, type Wire, type WireHandlers } from './wire.js';
import { BodyFrame, Field, FramingError, HOP_BY_HOP, HeadIndex, HeadWriter, NOT_FOR_BROWSERS, SET_BY_PROXY, connectionListed, copyLines, fieldCodes, responseBody } from './http1.js';
import { freshBackend, giveBackend, takeBackend } from './backends.js';
import type { PortLink } from '../runtimes/types.js';
import type { Caller } from './origin.js';

/** Where a request goes, as the session proxy decides it. */
export interface FastRoute {
  link: PortLink;
  /** The path the server sees. */
  path: string;
  /** The `/s/<key>` prefix the client used (X-Forwarded-Prefix); empty on a session's own host. */
  prefix: string;
  /** Called when the exchange starts and when it ends (activity; open sockets). */
  begin(): void;
  end(): void;
  /** Whether the session can still be reached (it may have ended mid-exchange). */
  open(): boolean;
}

export interface FastRouter {
  /** Whether routes depend on the Host field (sessions on hosts of their own): only then is it read as a string. */
  readonly byHost: boolean;
  /** A route for a ready session, or undefined to leave the request to node's server. `host` and `caller` are read only when `byHost`. */
  route(method: string, target: string, cookie: string | undefined, navigate: boolean, host: string | undefined, caller: Caller | undefined): FastRoute | undefined;
}

/** Request fields the backend does not get: hop-by-hop ones (but Transfer-Encoding: the body's framing passes through as it is), and those kiln sets itself. */
const DROP_REQUEST = fieldCodes([...HOP_BY_HOP, ...SET_BY_PROXY].filter((f) => f !== 'transfer-encoding'));
/** Response fields the client does not get. Transfer-Encoding and Trailer stay: the body's framing passes through as it is. */
const DROP_RESPONSE = fieldCodes([...[...HOP_BY_HOP].filter((f) => f !== 'transfer-encoding' && f !== 'trailer'), ...NOT_FOR_BROWSERS]);

/** A Connection value that may name other fields (read as a string then); the usual `keep-alive` and `close` cost nothing. */
const mayName = (h: HeadIndex, k: number): boolean => !h.valueIs(k, 'keep-alive') && !h.valueIs(k, 'close');

/** The heads being read: each is read and used within one synchronous step, so one of each serves every connection. */
const requestHead = new HeadIndex();
const responseHead = new HeadIndex();

const BAD_GATEWAY = (() => {
  const body = 'The session’s server did not answer.\n';
  return `HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n${body}`;
})();
const BAD_REQUEST = 'HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n';
const REQUEST_TIMEOUT = 'HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n';

interface Exchange {
  route: FastRoute;
  /** performance.now() when its head was read: its body must be all in within the server's requestTimeout. */
  startedAt: number;
  /** The head as sent to the backend: resent once on a fresh connection if a reused one was closed under it. */
  head: Buffer;
  isHead: boolean;
  /** GET, HEAD or OPTIONS: safe to send again if a kept connection turns out closed before any answer. */
  idempotent: boolean;
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
  responseHead?: HeadWriter;
  /** The backend's connection cannot carry another exchange. */
  spent: boolean;
}

/** A backend connection a client connection holds between its exchanges, listened to once (not per exchange). */
interface Held {
  link: PortLink;
  wire: Wire;
  /** Carried an exchange already (so a close before any answer may be a stale keep-alive). */
  used: boolean;
}

export class FastPath {
  private readonly connections = new Set<ClientConnection>();
  /** Connections on their way to node's server, since when: waiting until the client has taken the bytes sent before. */
  private readonly handingOver = new Map<Wire, number>();
  /** Native connections given to node's server: node:net did not accept them, so its close() does not wait for them. */
  private readonly handedOver = new Set<net.Socket>();
  private readonly sweeper: NodeJS.Timeout;
  private closing = false;
  private whenDrained: (() => void)[] = [];

  constructor(
    private readonly router: FastRouter,
    /** node's own listener for a new connection (the socket's unread bytes were put back first). */
    private readonly handOff: (socket: net.Socket) => void,
    /** node's server's own timeouts, which the fast path keeps too, and how long a client may leave sent bytes untaken (0: none). */
    private readonly limits: () => { keepAliveMs: number; headersMs: number; requestMs: number; sendMs: number },
  ) {
    // Timeouts by sweep, not by a timer per connection and request.
    this.sweeper = setInterval(() => this.sweep(), 1000).unref();
  }

  accept(socket: net.Socket): void {
    if (this.closing) {
      this.handOff(socket);
      return;
    }
    const encrypted = (socket as { encrypted?: boolean }).encrypted === true;
    const client = socket.remoteAddress ?? '';
    // TLS stays with node's socket (the bytes on the wire are not HTTP).
    const wire = (!encrypted && NativeWire.adopt(socket)) || new StreamWire(socket);
    this.connections.add(new ClientConnection(wire, client, encrypted, this));
  }

  /** @internal */ get byHost(): boolean {
    return this.router.byHost;
  }

  /** @internal */ route(method: string, target: string, cookie: string | undefined, navigate: boolean, host: string | undefined, caller: Caller | undefined): FastRoute | undefined {
    return this.closing ? undefined : this.router.route(method, target, cookie, navigate, host, caller);
  }

  /** @internal how long an ending connection's client may take nothing of what waits for it. */ sendMs(): number {
    return this.limits().sendMs || SEND_TIMEOUT_MS;
  }

  /** @internal */ release(c: ClientConnection): void {
    this.connections.delete(c);
    this.checkDrained();
  }

  /** @internal the connection of `wire` goes to node's server, with the bytes read and not used. */ handOver(wire: Wire, unread: Buffer | undefined): void {
    if (wire.closed) return;
    this.handingOver.set(wire, performance.now());
    wire.onClosed(() => {
      this.handingOver.delete(wire);
      this.checkDrained();
    });
    wire.toSocket((socket) => {
      if (wire instanceof NativeWire) {
        this.handedOver.add(socket);
        socket.once('close', () => {
          this.handedOver.delete(socket);
          this.checkDrained();
        });
      }
      socket.pause();
      if (unread) socket.unshift(unread);
      this.handOff(socket);
      socket.resume();
    });
  }

  private sweep(): void {
    const { keepAliveMs, headersMs, requestMs, sendMs } = this.limits();
    const now = performance.now();
    for (const c of this.connections) c.expire(now, keepAliveMs, headersMs, requestMs, sendMs);
    // A client that does not take what was sent before its next request: its hand-over does not wait for ever.
    const limit = headersMs > 0 ? headersMs : 60_000;
    for (const [wire, since] of this.handingOver) if (now - since > limit) wire.destroy();
  }

  /** Resolves once every connection the fast path accepted is closed or node's (after close()). */
  drained(): Promise<void> {
    return new Promise((resolve) => {
      this.whenDrained.push(resolve);
      this.checkDrained();
    });
  }

  private checkDrained(): void {
    if (!this.closing || this.connections.size + this.handingOver.size + this.handedOver.size > 0) return;
    clearInterval(this.sweeper);
    for (const resolve of this.whenDrained.splice(0)) resolve();
  }

  /** The server is closing: idle connections close now, busy ones after their exchange. */
  close(): void {
    this.closing = true;
    for (const c of this.connections) c.closeWhenIdle();
    this.checkDrained();
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
  /** A write to the client had to wait: until it drains, no backend reads on and no next request starts. */
  private clientFull = false;
  /** Since when the client has been full (performance.now()): past the send timeout it is cut off. */
  private fullSince = 0;
  /** An exchange ended while the client was full: the next request waits for the drain. */
  private awaitingDrain = false;

  constructor(
    private readonly wire: Wire,
    private readonly client: string,
    private readonly encrypted: boolean,
    private readonly path: FastPath,
  ) {
    wire.handlers = { data: this.onData, end: this.onEnd, drain: this.onDrain, gone: this.onClose };
    wire.resume();
  }

  private readonly onData = (chunk: Buffer): void => {
    if (this.done) return; // closing: nothing more is read
    const x = this.exchange;
    if (x && !x.requestBody.done) {
      this.forwardBody(x, chunk, 0);
      return;
    }
    if (!this.buffered) this.since = performance.now();
    this.buffered = this.buffered ? Buffer.concat([this.buffered, chunk]) : keep(chunk);
    if (x || this.awaitingDrain) this.wire.pause(); // pipelined: waits for the response before it
    else this.next();
  };

  /** The client took what waited: a backend held back for it reads again, or the next request starts. */
  private readonly onDrain = (): void => {
    this.clientFull = false;
    if (this.awaitingDrain) {
      this.awaitingDrain = false;
      this.since = performance.now();
      this.wire.resume();
      return this.next();
    }
    const h = this.held;
    if (h?.wire.paused && this.exchange?.backend === h) h.wire.resume();
  };

  private full(): void {
    if (this.clientFull) return;
    this.clientFull = true;
    this.fullSince = performance.now();
  }

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
    this.wire.destroy();
    this.path.release(this);
  };

  /** Start the next request in the buffer, if its head is all there. */
  private next(): void {
    const buf = this.buffered;
    if (!buf || this.done) return;
    const read = requestHead.read(buf);
    if (read === 'more') return;
    if (read === 'invalid' || !this.start(requestHead, buf)) this.handOff();
  }

  /** Begin an exchange for the request head `h` read from `buf`; false if the request is not for the fast path. */
  private start(h: HeadIndex, buf: Buffer): boolean {
    const rl = h.requestLine();
    if (!rl) return false;
    let cookie: string | undefined;
    let navigate = false;
    let origin = -1;
    let fetchSite = -1;
    let length: number | undefined;
    let chunked = false;
    let host = -1;
    let close = false;
    let forwardedFor = 0;
    /** Connection values that may name other fields: those are hop-by-hop, not passed on. */
    let naming: string[] | undefined;
    for (let k = 0; k < h.count; k++) {
      switch (h.code(k)) {
        case Field.Host:
          if (host >= 0) return false;
          host = k;
          break;
        case Field.ContentLength:
          if (length !== undefined) return false;
          length = h.contentLength(k);
          if (length === undefined) return false;
          break;
        case Field.TransferEncoding:
          if (chunked || !h.valueIs(k, 'chunked')) return false;
          chunked = true;
          break;
        case Field.Connection:
          if (h.valueLists(k, 'upgrade')) return false;
          if (h.valueLists(k, 'close')) close = true;
          if (mayName(h, k)) (naming ??= []).push(h.value(k));
          break;
        case Field.Upgrade:
          return false;
        case Field.Cookie:
          cookie = cookie === undefined ? h.value(k) : `${cookie}; ${h.value(k)}`;
          break;
        case Field.SecFetchMode:
          navigate = h.valueIs(k, 'navigate');
          break;
        case Field.Origin:
          if (origin >= 0) return false;
          origin = k;
          break;
        case Field.SecFetchSite:
          if (fetchSite >= 0) return false;
          fetchSite = k;
          break;
        case Field.XForwardedFor:
          forwardedFor++;
          break;
      }
    }
    // Both framings at once is how requests are smuggled: node's parser refuses it, so let it.
    if (host < 0 || (chunked && length !== undefined) || rl.method === 'CONNECT') return false;
    const byHost = this.path.byHost;
    const caller = byHost ? { method: rl.method, navigate, origin: origin < 0 ? undefined : h.value(origin), fetchSite: fetchSite < 0 ? undefined : h.value(fetchSite) } : undefined;
    const route = this.path.route(rl.method, rl.target, cookie, navigate, byHost ? h.value(host) : undefined, caller);
    if (!route) return false;
    if (close) this.closeAfter = true;

    // The head the server gets: the path without the prefix, the fields kept as they came, then X-Forwarded-*.
    const out = new HeadWriter(2 * h.length + route.path.length + route.prefix.length + this.client.length + 128);
    out.text(rl.method);
    out.text(' ');
    out.text(route.path);
    out.text(' HTTP/1.1\r\n');
    copyLines(h, out, DROP_REQUEST, -1, naming && connectionListed(naming));
    out.text('X-Forwarded-For: ');
    for (let k = 0; forwardedFor > 0 && k < h.count; k++) {
      if (h.code(k) !== Field.XForwardedFor) continue;
      forwardedFor--;
      out.bytes(h.buf, h.valueStart(k), h.valueEnd(k));
      out.text(', ');
    }
    out.text(this.client);
    out.text(this.encrypted ? '\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: ' : '\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: ');
    out.bytes(h.buf, h.valueStart(host), h.valueEnd(host));
    if (route.prefix) {
      out.text('\r\nX-Forwarded-Prefix: ');
      out.text(route.prefix);
    }
    out.text('\r\n\r\n');
    const head = out.done();
    const backend = this.hold(route.link);
    const x: Exchange = {
      route,
      startedAt: performance.now(),
      head,
      isHead: rl.method === 'HEAD',
      idempotent: rl.method === 'GET' || rl.method === 'HEAD' || rl.method === 'OPTIONS',
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
    backend.wire.write(head);
    this.forwardBody(x, buf, h.length);
    return true;
  }

  /** The held connection if it goes to `link`, else a pooled or new one (held from now on). */
  private hold(link: PortLink): Held {
    const held = this.held;
    if (held && held.link.key === link.key && !held.wire.closed) return held;
    this.dropHeld(true);
    const { wire, reused } = takeBackend(link);
    return (this.held = this.listen(link, wire, reused));
  }

  private listen(link: PortLink, wire: Wire, used: boolean): Held {
    const h: Held = { link, wire, used };
    const handlers: WireHandlers = {
      data: (chunk) => this.onBackendData(h, chunk),
      end: () => this.onBackendEnd(h),
      // The backend took what waited: a client held back for it reads again (unless it waits for the exchange to end).
      drain: () => this.exchange?.backend === h && !this.buffered && this.wire.resume(),
      gone: () => this.onBackendGone(h),
    };
    wire.handlers = handlers;
    wire.resume();
    return h;
  }

  /** Let go of the held connection: back to the pool if `reuse` and it is clean, else closed. */
  private dropHeld(reuse: boolean): void {
    const h = this.held;
    if (!h) return;
    this.held = undefined;
    if (reuse && !h.wire.closed) giveBackend(h.link, h.wire);
    else h.wire.destroy();
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
    if (n > 0 && !x.backend.wire.write(from === 0 && n === chunk.length ? chunk : chunk.subarray(from, from + n))) this.wire.pause();
    const rest = from + n;
    if (rest < chunk.length) {
      this.buffered = keep(chunk.subarray(rest));
      this.since = performance.now();
      this.wire.pause();
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
    const h = responseHead;
    for (;;) {
      const data = from === 0 ? buf : buf.subarray(from);
      const read = h.read(data);
      if (read === 'more') {
        if (data.length > 0) x.pending = keep(data);
        return;
      }
      const status = read === 'ok' ? h.status() : 0;
      if (status === 0 || status === 101) return this.fail(x, BAD_GATEWAY);
      const interim = status < 200;
      // An HTTP/1.0 response ends its connection unless it says keep-alive (and knows no chunked coding).
      const http10 = h.buf[7] === 0x30;
      let keepAlive = false;
      let naming: string[] | undefined;
      let referrerPolicy = false;
      let length: number | undefined;
      let coding: 'none' | 'chunked' | 'other' = 'none';
      for (let k = 0; k < h.count; k++) {
        switch (h.code(k)) {
          case Field.ContentLength: {
            const n = h.contentLength(k);
            if (n === undefined || (length !== undefined && n !== length)) return this.fail(x, BAD_GATEWAY);
            length = n;
            break;
          }
          case Field.TransferEncoding:
            coding = h.lastItemIs(k, 'chunked') ? 'chunked' : 'other';
            break;
          case Field.Connection:
            if (h.valueLists(k, 'close')) x.spent = true;
            if (h.valueLists(k, 'keep-alive')) keepAlive = true;
            if (mayName(h, k)) (naming ??= []).push(h.value(k));
            break;
          case Field.ReferrerPolicy:
            referrerPolicy = true;
            break;
        }
      }
      if (http10) {
        if (!keepAlive) x.spent = true;
        if (coding !== 'none') coding = 'other';
      }
      // Room for the body's bytes that came with the head: both go out in one write.
      const out = new HeadWriter(h.length + 64 + (interim ? 0 : data.length - h.length));
      out.text('HTTP/1.1 ');
      out.bytes(h.buf, 9, h.lineEnd); // the status code and reason as they came
      out.text(h.lineEnd === 12 ? ' \r\n' : '\r\n');
      // With Transfer-Encoding, Content-Length is wrong by definition (RFC 9112 §6.3): not passed on.
      copyLines(h, out, DROP_RESPONSE, !interim && coding !== 'none' ? Field.ContentLength : -1, naming && connectionListed(naming));
      if (!interim) {
        const framing = responseBody(status, x.isHead, length, coding);
        if (framing.kind === 'close') x.spent = this.closeAfter = true;
        // A page at a token URL must not hand the token to other sites in Referer.
        if (!referrerPolicy) out.text('Referrer-Policy: same-origin\r\n');
        if (this.closeAfter) out.text('Connection: close\r\n');
        out.text('\r\n');
        x.responseBody = framing;
        x.responseHead = out;
        return this.forwardResponse(x, buf, from + h.length);
      }
      out.text('\r\n');
      from += h.length;
      x.answered = true;
      if (!this.wire.write(out.done())) this.full();
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
      head.bytes(chunk, from, from + n);
      ok = this.wire.write(head.done());
    } else if (n > 0) ok = this.wire.write(n === chunk.length ? chunk : chunk.subarray(from, from + n));
    if (!ok) {
      this.full();
      x.backend.wire.pause(); // until the client drains
    }
    this.afterResponseBytes(x, chunk, from + n);
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
    if (x.reused && x.idempotent && x.responseBody === undefined && !x.answered && x.pending === undefined && x.requestBody.kind === 'none' && x.route.open()) {
      const wire = freshBackend(x.route.link);
      x.backend = this.held = this.listen(x.route.link, wire, true);
      x.reused = false;
      wire.write(x.head);
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
    this.path.release(this);
    if (reply !== undefined && !x.answered) this.wire.end(Buffer.from(reply), this.path.sendMs());
    else this.wire.destroy();
  }

  /** The response is all sent: keep or give back the backend connection, then go on with the next request. */
  private complete(x: Exchange): void {
    this.exchange = undefined;
    x.route.end();
    // Answered before the request's body was all read: the rest of that body is not worth reading.
    if (!x.requestBody.done) x.spent = this.closeAfter = true;
    if (x.spent) this.dropHeld(false);
    else if (x.backend.wire.paused) x.backend.wire.resume();
    if (this.closeAfter) return this.finish();
    this.since = performance.now();
    if (this.clientFull) {
      this.awaitingDrain = true;
      return;
    }
    this.wire.resume();
    this.next();
  }

  /** No more exchanges: end the connection once what was written is sent. */
  private finish(): void {
    if (this.done) return;
    this.done = true;
    this.dropHeld(true);
    this.wire.end(undefined, this.path.sendMs());
    this.path.release(this);
  }

  /** Leave the connection to node's server, at a request boundary: it gets the unread bytes back. */
  private handOff(): void {
    this.done = true;
    this.dropHeld(true);
    const unread = this.buffered;
    this.buffered = undefined;
    this.path.handOver(this.wire, unread);
    this.path.release(this);
  }

  /**
   * Called by the sweep: close a connection idle past keep-alive, or sending a
   * head too slowly; end an exchange whose request body is not all in within
   * the request timeout (as node's server does: a stalled upload would
   * otherwise hold its connections, and count as activity, for ever); cut off
   * a client that has taken none of what waits for it within the send timeout
   * (the same, for a stalled download).
   */
  expire(now: number, keepAliveMs: number, headersMs: number, requestMs: number, sendMs: number): void {
    const x = this.exchange;
    if (this.clientFull && sendMs > 0 && now - this.fullSince > sendMs) {
      if (x) this.fail(x, undefined);
      else this.close();
      return;
    }
    if (x) {
      if (requestMs > 0 && !x.requestBody.done && now - x.startedAt > requestMs) this.fail(x, REQUEST_TIMEOUT);
      return;
    }
    if (this.buffered ? headersMs > 0 && now - this.since > headersMs : keepAliveMs > 0 && now - this.since > keepAliveMs) this.close();
  }

  /** Close now, between exchanges; the held backend connection goes back if clean. */
  private close(): void {
    if (this.done) return;
    this.done = true;
    this.dropHeld(true);
    this.wire.destroy();
    this.path.release(this);
  }

  closeWhenIdle(): void {
    if (this.exchange) this.closeAfter = true;
    else if (!this.done) this.finish();
  }
}
