/**
 * The session proxy: every method and WebSocket upgrade on `/s/<token>/...`
 * reaches the template's port inside the session's sandbox, through the
 * sandbox's port link (see ../runtimes/netns.ts). Bodies stream both ways,
 * nothing is buffered. Requests and open sockets count as activity.
 *
 * Two paths: plain HTTP/1.1 requests to ready sessions take the fast path
 * (./fast.ts: kiln frames them itself and forwards bytes); the rest (a
 * session still starting or ended, upgrades, HTTP/1.0, odd heads) come here
 * through node's HTTP server.
 */
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import type https from 'node:https';
import type net from 'node:net';
import tls from 'node:tls';
import { timingSafeEqual } from 'node:crypto';
import type { Duplex } from 'node:stream';
import { FastPath, type FastRoute, type FastRouter } from './fast.js';
import { SEND_TIMEOUT_MS } from './wire.js';
import { HOP_BY_HOP, NOT_FOR_BROWSERS, SET_BY_PROXY, connectionListed, readHead } from './http1.js';
import type { SessionService, LiveSession } from '../sessions/service.js';
import type { KilnConfig } from '../config/schema.js';
import { pageHtml } from './pages.js';
import { backendAgent, dropAllBackends } from './backends.js';
import type { PortLink } from '../runtimes/types.js';
import { SECURE_PAGE_HEADERS } from '../api/protect.js';

export const PREFIX = '/s/';
/** The browser's copy of a session's URL secret, scoped to `/s/<session id>/`, so the token can leave the address bar. */
export const SESSION_COOKIE = 'kiln_s';

/**
 * Where a browser should land in `session`, and the cookie that lets it in.
 * Templates whose server sees the full path (`basePath: keep`) were started
 * with the token in their base URL, so they stay on the token URL.
 */
export function browserEntry(session: LiveSession, config: KilnConfig, path: string, secure: boolean): { location: string; cookie?: string } {
  if (config.templates[session.template]?.basePath === 'keep') return { location: `${PREFIX}${session.token}${path}` };
  const cookie = `${SESSION_COOKIE}=${session.token}; Path=${PREFIX}${session.id}/; HttpOnly; SameSite=Lax${secure ? '; Secure' : ''}`;
  return { location: `${PREFIX}${session.id}${path}`, cookie };
}

function cookieValue(header: string | undefined, name: string): string | undefined {
  if (!header) return undefined;
  for (const part of header.split(';')) {
    const eq = part.indexOf('=');
    if (eq > 0 && part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim();
  }
  return undefined;
}

const sameSecret = (a: string, b: string) => a.length === b.length && timingSafeEqual(Buffer.from(a), Buffer.from(b));


/**
 * The request headers the backend gets, as a flat name/value list built
 * straight from the client's raw headers (no header object per request):
 * hop-by-hop headers (and those Connection names) dropped, one Host, X-Forwarded-For extended with the
 * client's address, X-Forwarded-Proto/-Host/-Prefix set by kiln.
 */
export function forwardHeaders(rawHeaders: string[], client: string, encrypted: boolean, prefix: string): string[] {
  const out: string[] = [];
  let host: string | undefined;
  let prior: string | undefined;
  const listed = connectionListed(connectionValues(rawHeaders));
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i]!;
    const value = rawHeaders[i + 1]!;
    const lower = name.toLowerCase();
    if (HOP_BY_HOP.has(lower) || listed?.has(lower)) continue;
    if (SET_BY_PROXY.has(lower)) {
      if (lower === 'x-forwarded-for') prior = prior === undefined ? value : `${prior}, ${value}`;
      continue;
    }
    if (lower === 'host') {
      if (host !== undefined) continue; // the first, as node's parser keeps it
      host = value;
    }
    out.push(name, value);
  }
  // An HTTP/1.0 client may send no Host; HTTP/1.1 backends need one.
  if (host === undefined) out.push('Host', 'localhost');
  out.push('X-Forwarded-For', prior === undefined ? client : `${prior}, ${client}`, 'X-Forwarded-Proto', encrypted ? 'https' : 'http');
  if (host !== undefined) out.push('X-Forwarded-Host', host);
  out.push('X-Forwarded-Prefix', prefix);
  return out;
}

/** The values of the Connection fields in raw headers (the fields it names are hop-by-hop). */
function* connectionValues(rawHeaders: string[]): Generator<string> {
  for (let i = 0; i < rawHeaders.length; i += 2) if (rawHeaders[i]!.length === 10 && rawHeaders[i]!.toLowerCase() === 'connection') yield rawHeaders[i + 1]!;
}

/** Whether a request's raw headers announce a body (read without building `req.headers`). */
export function hasBody(rawHeaders: string[]): boolean {
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i]!;
    // Lengths first: most headers are ruled out without a lower-cased copy.
    if (name.length === 14 && name.toLowerCase() === 'content-length') return true;
    if (name.length === 17 && name.toLowerCase() === 'transfer-encoding') return true;
  }
  return false;
}

/** The backend's response headers as they came (a flat name/value list), less hop-by-hop ones and those not for browsers. */
export function responseHeaders(rawHeaders: string[]): string[] {
  const out: string[] = [];
  let referrerPolicy = false;
  const listed = connectionListed(connectionValues(rawHeaders));
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const lower = rawHeaders[i]!.toLowerCase();
    if (HOP_BY_HOP.has(lower) || NOT_FOR_BROWSERS.has(lower) || listed?.has(lower)) continue;
    if (lower === 'referrer-policy') referrerPolicy = true;
    out.push(rawHeaders[i]!, rawHeaders[i + 1]!);
  }
  // A page at a token URL must not hand the token to other sites in Referer.
  if (!referrerPolicy) out.push('Referrer-Policy', 'same-origin');
  return out;
}

export interface ProxyStats {
  requests: number;
  openSockets: number;
}

/** A fast-path exchange's view of its session: activity, open sockets, whether it is still there. */
class SessionRoute implements FastRoute {
  readonly link: PortLink;

  constructor(
    private readonly session: LiveSession,
    readonly path: string,
    readonly prefix: string,
    private readonly stats: ProxyStats,
  ) {
    this.link = session.warm!.link;
  }

  begin(): void {
    this.session.touch();
    this.session.openSockets++;
    this.stats.requests++;
    this.stats.openSockets++;
  }

  end(): void {
    this.session.openSockets--;
    this.stats.openSockets--;
    this.session.touch();
  }

  open(): boolean {
    return this.session.status === 'ready' && this.session.warm?.link === this.link;
  }
}

export class SessionProxy implements FastRouter {
  readonly stats: ProxyStats = { requests: 0, openSockets: 0 };
  /** How long a client may take none of the bytes waiting for it before it is cut off, ms (as node's server's timeouts, settable). */
  sendTimeoutMs = SEND_TIMEOUT_MS;
  private readonly fastPaths: FastPath[] = [];

  constructor(
    private readonly sessions: SessionService,
    private readonly config: KilnConfig,
  ) {}

  /** Split `/s/<key>/rest?q` (key: the token, or the session id with the cookie) into the key and what the server should see. */
  private split(url: string): { token: string; rest: string } | undefined {
    if (!url.startsWith(PREFIX)) return undefined;
    const end = url.indexOf('/', PREFIX.length);
    const q = url.indexOf('?', PREFIX.length);
    if (end < 0) return { token: url.slice(PREFIX.length, q < 0 ? undefined : q), rest: '' };
    return { token: url.slice(PREFIX.length, end), rest: url.slice(end) };
  }

  /** The hot path: a ready session for a well-formed URL, found without waiting (or undefined). */
  private readyNow(url: string): LiveSession | undefined {
    const end = url.indexOf('/', PREFIX.length);
    if (end < 0) return undefined;
    const session = this.sessions.byTokenLookup(url.slice(PREFIX.length, end));
    return session?.status === 'ready' && session.warm ? session : undefined;
  }

  /**
   * The fast path's question: where a plain request goes, if to a ready
   * session. Undefined leaves it to node's server and `handle` (which answers
   * unknown, starting and ended sessions, and moves browsers off token URLs).
   */
  route(method: string, target: string, cookie: string | undefined, navigate: boolean): FastRoute | undefined {
    if (!target.startsWith(PREFIX)) return undefined;
    const end = target.indexOf('/', PREFIX.length);
    if (end < 0) return undefined;
    const key = target.slice(PREFIX.length, end);
    const session = this.lookup(key, cookie);
    if (!session || session.status !== 'ready' || !session.warm) return undefined;
    const keep = this.config.templates[session.template]?.basePath === 'keep';
    if (key === session.token && !keep && method === 'GET' && navigate) return undefined; // see moveBrowser
    return new SessionRoute(session, this.backendPath(session, target), `${PREFIX}${key}`, this.stats);
  }

  /**
   * Put the fast path in front of node's HTTP server: each new connection
   * starts there, and node's own connection listener gets those it hands off.
   */
  install(server: http.Server | https.Server): void {
    const event = server instanceof tls.Server ? 'secureConnection' : 'connection';
    const nodeListener = server.listeners(event).find((l) => l.name === 'connectionListener') as ((s: net.Socket) => void) | undefined;
    if (!nodeListener) throw new Error(`the proxy's fast path found no node:http listener for '${event}'`);
    server.removeListener(event, nodeListener);
    const fast = new FastPath(this, (s) => nodeListener.call(server, s), () => ({ keepAliveMs: server.keepAliveTimeout, headersMs: server.headersTimeout, requestMs: server.requestTimeout, sendMs: this.sendTimeoutMs }));
    this.fastPaths.push(fast);
    server.on(event, (s: net.Socket) => fast.accept(s));
    // Closing the server waits for every connection: the fast path's idle ones close now, and its native ones
    // (which node:net does not count) are waited for too.
    const close = server.close.bind(server);
    server.close = ((cb?: (err?: Error) => void) => {
      fast.close();
      return close((err?: Error) => void fast.drained().then(() => cb?.(err)));
    }) as typeof server.close;
  }

  /** Every other case: unknown token, a missing slash, a starting or ended session (answered here, or waited for). */
  private async session(req: IncomingMessage, res: ServerResponse | undefined): Promise<LiveSession | undefined> {
    const r = this.split(req.url ?? '');
    const session = r ? this.lookup(r.token, req.headers.cookie) : undefined;
    if (!r || !session) {
      res && send(res, 404, 'No such session', 'This link does not lead to a session. Ask for a new one.');
      return undefined;
    }
    if (r.rest === '') {
      // /s/<token> without the slash: relative links in the app would break.
      res && (res.writeHead(308, { location: `${PREFIX}${r.token}/${req.url!.slice(PREFIX.length + r.token.length)}` }), res.end());
      return undefined;
    }
    if (session.status === 'starting') {
      await Promise.race([session.settled, new Promise((ok) => setTimeout(ok, this.config.sessions.holdRequestS * 1000))]);
    }
    if (session.status === 'starting') {
      res && send(res, 503, 'Starting…', 'Your session is starting. This page reloads by itself.', { refresh: true });
      return undefined;
    }
    if (session.status !== 'ready' || !session.warm) {
      res && send(res, 410, 'Session ended', `This session has ended${session.stopReason ? ` (${session.stopReason.replace('_', ' ')})` : ''}. Ask for a new one.`);
      return undefined;
    }
    return session;
  }

  /** By token in the path; or by session id in the path with the token in the session's cookie. Unknown either way: 404. */
  private lookup(key: string, cookieHeader: string | undefined): LiveSession | undefined {
    const byToken = this.sessions.byTokenLookup(key);
    if (byToken) return byToken;
    const byId = this.sessions.byIdLookup(key);
    const cookie = cookieValue(cookieHeader, SESSION_COOKIE);
    return byId && cookie !== undefined && sameSecret(cookie, byId.token) ? byId : undefined;
  }

  private backendPath(session: LiveSession, url: string): string {
    const keep = this.config.templates[session.template]?.basePath === 'keep';
    if (keep) return url;
    const keyLength = url.startsWith(session.token, PREFIX.length) ? session.token.length : session.id.length;
    return url.slice(PREFIX.length + keyLength);
  }

  /** A browser opening the token URL: hand it the cookie and move it to the id URL, out of the address bar and history. */
  private moveBrowser(req: IncomingMessage, res: ServerResponse, session: LiveSession): boolean {
    if (req.method !== 'GET' || req.headers['sec-fetch-mode'] !== 'navigate') return false;
    if (!req.url!.startsWith(session.token, PREFIX.length)) return false;
    const secure = (req.socket as { encrypted?: boolean }).encrypted === true;
    const entry = browserEntry(session, this.config, req.url!.slice(PREFIX.length + session.token.length), secure);
    if (!entry.cookie) return false;
    res.writeHead(302, { location: entry.location, 'set-cookie': entry.cookie, 'cache-control': 'no-store', 'referrer-policy': 'no-referrer', 'content-length': '0' });
    res.end();
    return true;
  }

  private forwardedHeaders(req: IncomingMessage, session: LiveSession): string[] {
    const key = req.url!.startsWith(session.token, PREFIX.length) ? session.token : session.id;
    return forwardHeaders(req.rawHeaders, req.socket.remoteAddress ?? '', (req.socket as { encrypted?: boolean }).encrypted === true, `${PREFIX}${key}`);
  }

  handle(req: IncomingMessage, res: ServerResponse): void {
    // A ready session (nearly every request) is forwarded in this tick: no promise, no await.
    const session = this.readyNow(req.url!);
    if (session) {
      if (!this.moveBrowser(req, res, session)) this.forward(req, res, session);
    } else void this.session(req, res).then((s) => s && !this.moveBrowser(req, res, s) && this.forward(req, res, s));
  }

  private forward(req: IncomingMessage, res: ServerResponse, session: LiveSession): void {
    const warm = session.warm!;
    session.touch();
    session.openSockets++;
    this.stats.requests++;
    this.stats.openSockets++;
    const upstream = http.request({
      agent: backendAgent(warm.link),
      method: req.method,
      path: this.backendPath(session, req.url!),
      headers: this.forwardedHeaders(req, session),
    });
    // One listener for both ends of the exchange: the response is done, or the client went away.
    res.once('close', () => {
      session.openSockets--;
      this.stats.openSockets--;
      session.touch();
      if (!res.writableFinished) upstream.destroy();
    });
    upstream.on('response', (up) => {
      res.writeHead(up.statusCode ?? 502, up.statusMessage, responseHeaders(up.rawHeaders));
      relay(up, res, this.sendTimeoutMs); // a client that stops reading is cut off, as on the fast path
      // A server that breaks off mid-response: the client's response is cut too (not left open, counted as in use).
      up.once('close', () => {
        if (!up.complete) res.destroy();
      });
    });
    upstream.on('error', () => {
      if (!res.headersSent) send(res, 502, 'Bad gateway', 'The session’s server did not answer.');
      else res.destroy();
    });
    // A request without a body (most GETs) needs no stream plumbing.
    if (hasBody(req.rawHeaders)) relay(req, upstream);
    else upstream.end();
  }

  /**
   * WebSocket (or any) upgrade: replay the request head to the backend; if it
   * switches protocols (101), splice the sockets. Any other answer goes to the
   * client as it came and both connections end: the client's connection never
   * becomes a raw tunnel to a server that refused to switch.
   */
  async upgrade(req: IncomingMessage, client: Duplex, head: Buffer): Promise<void> {
    client.on('error', () => client.destroy());
    const session = await this.session(req, undefined);
    if (!session) {
      client.end('HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
      return;
    }
    const backend = session.warm!.link.connect();
    session.touch();
    session.openSockets++;
    this.stats.openSockets++;
    let closed = false;
    const close = () => {
      if (closed) return;
      closed = true;
      session.openSockets--;
      this.stats.openSockets--;
      session.touch();
      backend.destroy();
      client.destroy();
    };
    backend.on('error', close);
    backend.on('close', close);
    client.on('close', close);
    // Writes wait in the socket while it still connects (a link's socket is connected already).
    const headers = this.forwardedHeaders(req, session);
    // Upgrade requests keep their Connection/Upgrade headers: they are the point.
    headers.push('Connection', req.headers.connection ?? 'Upgrade');
    if (req.headers.upgrade) headers.push('Upgrade', req.headers.upgrade);
    let text = `${req.method} ${this.backendPath(session, req.url!)} HTTP/1.1\r\n`;
    for (let i = 0; i < headers.length; i += 2) text += `${headers[i]}: ${headers[i + 1]}\r\n`;
    // Node reads header bytes as latin1: written back the same way, each byte goes on as it came.
    backend.write(text + '\r\n', 'latin1');
    if (head.length) backend.write(head);
    let answer: Buffer = Buffer.alloc(0);
    const onAnswer = (chunk: Buffer) => {
      answer = answer.length ? Buffer.concat([answer, chunk]) : chunk;
      const h = readHead(answer);
      if (h === 'more') return;
      backend.off('data', onAnswer);
      if (h !== 'invalid' && /^HTTP\/1\.1 101 /.test(h.line)) {
        client.write(answer);
        backend.pipe(client);
        client.pipe(backend);
        return;
      }
      // Refused (or not HTTP): what the server says goes to the client, then both end. With a
      // length, at its end; else when the server closes, or after REFUSED_UPGRADE_MS at most.
      backend.pause();
      const i = h === 'invalid' ? -1 : h.fields.findIndex((f, k) => k % 2 === 0 && f.toLowerCase() === 'content-length');
      const total = i < 0 || h === 'invalid' ? Infinity : h.length + Number(h.fields[i + 1]);
      let sent = 0;
      const pass = (bytes: Buffer) => {
        const part = bytes.subarray(0, Math.max(0, total - sent));
        sent += part.length;
        client.write(part);
        if (sent >= total) client.end(close);
      };
      pass(answer);
      if (sent >= total) return;
      backend.on('data', pass);
      backend.once('end', () => client.end(close));
      backend.resume();
      setTimeout(close, REFUSED_UPGRADE_MS).unref();
    };
    backend.on('data', onAnswer);
  }

  close(): void {
    for (const f of this.fastPaths) f.close();
    dropAllBackends();
  }
}

/**
 * Stream `from` into `to` as it comes, pausing while `to` is full: what pipe()
 * does, without the half-dozen listeners it adds and removes per request.
 * An ended or failed `to` is handled by the caller's close and error listeners.
 */
/** How long the answer of a server that refused an upgrade may take to arrive whole (it has no length and the server keeps its connection). */
const REFUSED_UPGRADE_MS = 10_000;

/** `from`'s bytes to `to`, held back while `to` is full; with `stallMs`, a `to` that stays full that long is destroyed. */
function relay(from: IncomingMessage, to: http.OutgoingMessage, stallMs = 0): void {
  from.on('data', (chunk: Buffer) => {
    if (!to.write(chunk)) {
      from.pause();
      const stalled = stallMs > 0 ? setTimeout(() => to.writableFinished || to.destroy(), stallMs) : undefined;
      to.once('drain', () => {
        clearTimeout(stalled);
        from.resume();
      });
    }
  });
  from.on('end', () => to.end());
}

function send(res: ServerResponse, status: number, title: string, text: string, opts: { refresh?: boolean } = {}): void {
  const body = pageHtml(title, text, opts.refresh);
  const headers: Record<string, string> = { ...SECURE_PAGE_HEADERS, 'content-type': 'text/html; charset=utf-8', 'content-length': String(Buffer.byteLength(body)), 'cache-control': 'no-store' };
  if (status === 503) headers['retry-after'] = '1';
  res.writeHead(status, headers);
  res.end(body);
}
