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
import { PREFIX, SessionOrigins, type Caller } from './origin.js';
import { backendAgent, dropAllBackends } from './backends.js';
import type { PortLink } from '../runtimes/types.js';
import { SECURE_PAGE_HEADERS } from '../api/protect.js';

export { PREFIX };
/** The browser's copy of a session's URL secret, scoped to the session (its `/s/<session id>/` path, or its own host), so the token can leave the address bar. */
export const SESSION_COOKIE = 'kiln_s';

/** A request for a session, and what that session's server sees of it. */
interface Addressed {
  session: LiveSession;
  /** The path (and query) the server gets. */
  path: string;
  /** What the client's path began with that the server does not see (X-Forwarded-Prefix): `/s/<key>`, or empty. */
  prefix: string;
  /** The token came in the path (a browser that navigates there is moved off it). */
  byToken: boolean;
}
/** Where a request goes: a session, another URL (`status` 307 or 308), refused (403: another session's page), or nowhere (404). */
type Resolved = Addressed | { redirect: string; status: 307 | 308 } | { refused: true } | undefined;

/**
 * Whether any cookie `name` in the header holds `secret`. Any, not the first:
 * a sibling host (another session's server) can set a cookie of that name for
 * the parent domain, which browsers may send first.
 */
function cookieHolds(header: string | undefined, name: string, secret: string): boolean {
  if (!header) return false;
  let found = false;
  for (const part of header.split(';')) {
    const eq = part.indexOf('=');
    if (eq > 0 && part.slice(0, eq).trim() === name && sameSecret(part.slice(eq + 1).trim(), secret)) found = true;
  }
  return found;
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
  if (prefix) out.push('X-Forwarded-Prefix', prefix);
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

/** A field node may give as a list (a duplicate): the first. */
const one = (v: string | string[] | undefined): string | undefined => (Array.isArray(v) ? v[0] : v);

export class SessionProxy implements FastRouter {
  readonly stats: ProxyStats = { requests: 0, openSockets: 0 };
  /** How long a client may take none of the bytes waiting for it before it is cut off, ms (as node's server's timeouts, settable). */
  sendTimeoutMs = SEND_TIMEOUT_MS;
  private readonly fastPaths: FastPath[] = [];
  /** Set when sessions have hosts of their own (`sessions.origin`). */
  private readonly origins: SessionOrigins | undefined;

  constructor(
    private readonly sessions: SessionService,
    private readonly config: KilnConfig,
  ) {
    this.origins = SessionOrigins.of(config);
  }

  /**
   * Where a request goes. On a session's own host (`sessions.origin`): that
   * session, with the token in the path (`/s/<token>/...`, the prefix taken
   * off) or in the host's cookie. On kiln's origin: `/s/<token>/...`, or
   * `/s/<session id>/...` with the cookie; with `sessions.origin` set, a
   * token URL there is only moved to the session's host, so no session page
   * ever runs on kiln's origin.
   */
  private resolve(host: string | undefined, url: string, cookie: () => string | undefined, caller: () => Caller): Resolved {
    if (this.origins) {
      const id = this.origins.idOf(host);
      if (id !== undefined) return this.onOwnHost(this.origins, id, url, cookie, caller);
    }
    if (!url.startsWith(PREFIX)) return undefined;
    const slash = url.indexOf('/', PREFIX.length);
    const q = url.indexOf('?', PREFIX.length);
    const keyEnd = slash < 0 ? (q < 0 ? url.length : q) : q >= 0 && q < slash ? q : slash;
    const key = url.slice(PREFIX.length, keyEnd);
    const byToken = this.sessions.byTokenLookup(key);
    if (this.origins) return byToken && { redirect: this.origins.url(byToken.id, url), status: 307 };
    const session = byToken ?? this.byIdWithCookie(key, cookie());
    if (!session) return undefined;
    // /s/<key> without the slash: relative links in the app would break.
    if (keyEnd !== slash) return { redirect: `${PREFIX}${key}/${url.slice(keyEnd)}`, status: 308 };
    const keep = this.config.templates[session.template]?.basePath === 'keep';
    return { session, path: keep ? url : url.slice(slash), prefix: `${PREFIX}${key}`, byToken: session === byToken };
  }

  private onOwnHost(origins: SessionOrigins, id: string, url: string, cookie: () => string | undefined, caller: () => Caller): Resolved {
    const session = this.sessions.byIdLookup(id);
    if (!session) return undefined;
    if (url.startsWith(PREFIX) && url.startsWith(session.token, PREFIX.length)) {
      const end = PREFIX.length + session.token.length;
      if (url.length === end || url[end] === '?') return { redirect: `${PREFIX}${session.token}/${url.slice(end)}`, status: 308 };
      if (url[end] === '/') return { session, path: url.slice(end), prefix: url.slice(0, end), byToken: true };
    }
    if (!cookieHolds(cookie(), SESSION_COOKIE, session.token)) return undefined;
    return origins.fromOwnPages(id, caller()) ? { session, path: url, prefix: '', byToken: false } : { refused: true };
  }

  /** The session with id `key`, if the cookie holds its token. */
  private byIdWithCookie(key: string, cookieHeader: string | undefined): LiveSession | undefined {
    const byId = this.sessions.byIdLookup(key);
    return byId && cookieHolds(cookieHeader, SESSION_COOKIE, byId.token) ? byId : undefined;
  }

  /** Whether a request (by its Host field) is for a session's own host: all of it goes to the proxy, none to the API. */
  isSessionHost(host: string | undefined): boolean {
    return this.origins?.idOf(host) !== undefined;
  }

  get byHost(): boolean {
    return this.origins !== undefined;
  }

  /**
   * The fast path's question: where a plain request goes, if to a ready
   * session. Undefined leaves it to node's server and `handle` (which answers
   * unknown, starting and ended sessions, redirects, and moves browsers off token URLs).
   */
  route(method: string, target: string, cookie: string | undefined, navigate: boolean, host: string | undefined, caller: Caller | undefined): FastRoute | undefined {
    if (!this.origins && !target.startsWith(PREFIX)) return undefined;
    const a = this.resolve(host, target, () => cookie, () => caller!);
    if (!a || !('session' in a) || a.session.status !== 'ready' || !a.session.warm) return undefined;
    if (a.byToken && method === 'GET' && navigate && this.entry(a)) return undefined; // see moveBrowser
    return new SessionRoute(a.session, a.path, a.prefix, this.stats);
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

  private resolveRequest(req: IncomingMessage): Resolved {
    const caller = (): Caller => ({ method: req.method ?? 'GET', navigate: req.headers['sec-fetch-mode'] === 'navigate', origin: req.headers.origin, fetchSite: one(req.headers['sec-fetch-site']) });
    return this.resolve(req.headers.host, req.url ?? '', () => req.headers.cookie, caller);
  }

  /** Every case but a ready session: unknown (404), a redirect, refused (403), a starting session (waited for) or an ended one (410). */
  private async settle(r: Resolved, res: ServerResponse | undefined): Promise<Addressed | undefined> {
    if (!r) {
      res && send(res, 404, 'No such session', 'This link does not lead to a session. Ask for a new one.');
      return undefined;
    }
    if ('refused' in r) {
      res && send(res, 403, 'Not from here', 'This session can be used only from its own pages, or by following a link to it.');
      return undefined;
    }
    if (!('session' in r)) {
      res && (res.writeHead(r.status, { location: r.redirect, 'cache-control': 'no-store', 'referrer-policy': 'no-referrer', 'content-length': '0' }), res.end());
      return undefined;
    }
    const { session } = r;
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
    return r;
  }

  /**
   * Where a browser that opened the token URL is moved, and the cookie it is
   * handed, so the token leaves the address bar and history: the session-id
   * URL (cookie scoped to its path) or, on a session's own host, the same path
   * without the prefix (cookie of that host alone). Templates whose server sees
   * the full path (`basePath: keep`) were started with the token in their base
   * URL: their browsers stay on the token URL.
   */
  private entry(a: Addressed, encrypted = false): { location: string; cookie: string } | undefined {
    const secure = encrypted || this.origins?.secure ? '; Secure' : '';
    const { session } = a;
    // One leading slash: `//host/x` (or `/\\host`) would send the browser to another host.
    if (this.origins) return { location: a.path.replace(/^[/\\]+/, '/'), cookie: `${SESSION_COOKIE}=${session.token}; Path=/; HttpOnly; SameSite=Lax${secure}` };
    if (this.config.templates[session.template]?.basePath === 'keep') return undefined;
    return { location: `${PREFIX}${session.id}${a.path}`, cookie: `${SESSION_COOKIE}=${session.token}; Path=${PREFIX}${session.id}/; HttpOnly; SameSite=Lax${secure}` };
  }

  private moveBrowser(req: IncomingMessage, res: ServerResponse, a: Addressed): boolean {
    if (!a.byToken || req.method !== 'GET' || req.headers['sec-fetch-mode'] !== 'navigate') return false;
    const entry = this.entry(a, (req.socket as { encrypted?: boolean }).encrypted === true);
    if (!entry) return false;
    res.writeHead(302, { location: entry.location, 'set-cookie': entry.cookie, 'cache-control': 'no-store', 'referrer-policy': 'no-referrer', 'content-length': '0' });
    res.end();
    return true;
  }

  handle(req: IncomingMessage, res: ServerResponse): void {
    // A ready session (nearly every request) is forwarded in this tick: no promise, no await.
    const r = this.resolveRequest(req);
    if (r && 'session' in r && r.session.status === 'ready' && r.session.warm) {
      if (!this.moveBrowser(req, res, r)) this.forward(req, res, r);
    } else void this.settle(r, res).then((a) => a && !this.moveBrowser(req, res, a) && this.forward(req, res, a));
  }

  private forwardedHeaders(req: IncomingMessage, a: Addressed): string[] {
    return forwardHeaders(req.rawHeaders, req.socket.remoteAddress ?? '', (req.socket as { encrypted?: boolean }).encrypted === true, a.prefix);
  }

  private forward(req: IncomingMessage, res: ServerResponse, a: Addressed): void {
    const { session } = a;
    const warm = session.warm!;
    session.touch();
    session.openSockets++;
    this.stats.requests++;
    this.stats.openSockets++;
    const upstream = http.request({
      agent: backendAgent(warm.link),
      method: req.method,
      path: a.path,
      headers: this.forwardedHeaders(req, a),
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
    const r = this.resolveRequest(req);
    if (r && 'refused' in r) {
      client.end('HTTP/1.1 403 Forbidden\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
      return;
    }
    if (r && 'redirect' in r) {
      client.end(`HTTP/1.1 ${r.status} Redirect\r\nLocation: ${r.redirect}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
      return;
    }
    const a = await this.settle(r, undefined);
    if (!a) {
      client.end('HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
      return;
    }
    const { session } = a;
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
    const headers = this.forwardedHeaders(req, a);
    // Upgrade requests keep their Connection/Upgrade headers: they are the point.
    headers.push('Connection', req.headers.connection ?? 'Upgrade');
    if (req.headers.upgrade) headers.push('Upgrade', req.headers.upgrade);
    let text = `${req.method} ${a.path} HTTP/1.1\r\n`;
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
