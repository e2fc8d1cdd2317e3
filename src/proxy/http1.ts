/**
 * Just enough HTTP/1.1 (RFC 9112) for the proxy's fast path: read a message
 * head, and find where a body ends (Content-Length, chunked, or the close of
 * the connection) while its bytes are forwarded as they came. Strict: what
 * this does not fully understand is reported as such, and the caller hands
 * the request to node's own parser (which answers 400) or fails the exchange.
 */

/** node's default limit for a request head (`--max-http-header-size`). */
export const MAX_HEAD_BYTES = 16 * 1024;
const END_OF_HEAD = Buffer.from('\r\n\r\n');
/** Bytes of a token (RFC 9110 §5.6.2 tchar): a field name is made of these. */
const TCHAR = new Uint8Array(256);
for (const c of "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz") TCHAR[c.charCodeAt(0)] = 1;
/** Control bytes other than HTAB (CR and LF included): not allowed in a start line or a field value. */
const CTL = new Uint8Array(256);
for (let c = 0; c < 0x20; c++) if (c !== 0x09) CTL[c] = 1;
CTL[0x7f] = 1;

/** Hop-by-hop fields are for one connection only (RFC 9110 §7.6.1). */
export const HOP_BY_HOP: ReadonlySet<string> = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'te', 'trailer', 'upgrade', 'proxy-authorization', 'proxy-authenticate']);
/** Set by the proxy itself; what a client sent under these names is not passed on (x-forwarded-for is extended). */
/** Fields a `Connection` header may not remove: the message's framing and its target. */
const FRAMING = new Set(['host', 'content-length', 'transfer-encoding']);

/**
 * The other fields `Connection` values name (RFC 9110 §7.6.1: hop-by-hop, a
 * proxy removes them), lower-cased; undefined when there are none. The
 * connection options kiln handles itself and the framing fields are not listed.
 */
export function connectionListed(values: Iterable<string>): Set<string> | undefined {
  let listed: Set<string> | undefined;
  for (const value of values) {
    for (const item of value.split(',')) {
      const token = item.trim().toLowerCase();
      if (token === '' || token === 'close' || token === 'keep-alive' || token === 'upgrade' || HOP_BY_HOP.has(token) || FRAMING.has(token)) continue;
      (listed ??= new Set()).add(token);
    }
  }
  return listed;
}

/**
 * Response fields a session's server may not send to browsers: every session
 * shares kiln's origin, and `Service-Worker-Allowed: /` would let one
 * session's page install a service worker over all of it (other sessions'
 * pages, the API's). Without it a worker stays under its script's path.
 */
export const NOT_FOR_BROWSERS: ReadonlySet<string> = new Set(['service-worker-allowed']);
export const SET_BY_PROXY: ReadonlySet<string> = new Set(['x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host', 'x-forwarded-prefix']);

/** The fields the proxy reads or drops, by code (in a parsed head); any other field is `Field.Other`. */
export const enum Field {
  Other,
  Host,
  ContentLength,
  TransferEncoding,
  Connection,
  KeepAlive,
  ProxyConnection,
  TE,
  Trailer,
  Upgrade,
  ProxyAuthorization,
  ProxyAuthenticate,
  XForwardedFor,
  XForwardedProto,
  XForwardedHost,
  XForwardedPrefix,
  Cookie,
  SecFetchMode,
  SecFetchSite,
  Origin,
  ReferrerPolicy,
  ServiceWorkerAllowed,
}

const FIELD_NAMES: [string, Field][] = [
  ['host', Field.Host],
  ['content-length', Field.ContentLength],
  ['transfer-encoding', Field.TransferEncoding],
  ['connection', Field.Connection],
  ['keep-alive', Field.KeepAlive],
  ['proxy-connection', Field.ProxyConnection],
  ['te', Field.TE],
  ['trailer', Field.Trailer],
  ['upgrade', Field.Upgrade],
  ['proxy-authorization', Field.ProxyAuthorization],
  ['proxy-authenticate', Field.ProxyAuthenticate],
  ['x-forwarded-for', Field.XForwardedFor],
  ['x-forwarded-proto', Field.XForwardedProto],
  ['x-forwarded-host', Field.XForwardedHost],
  ['x-forwarded-prefix', Field.XForwardedPrefix],
  ['cookie', Field.Cookie],
  ['sec-fetch-mode', Field.SecFetchMode],
  ['sec-fetch-site', Field.SecFetchSite],
  ['origin', Field.Origin],
  ['referrer-policy', Field.ReferrerPolicy],
  ['service-worker-allowed', Field.ServiceWorkerAllowed],
];
/** Known names by length, as bytes: a field's name is matched without a string being made of it. */
const NAMES_BY_LENGTH: [Uint8Array, Field][][] = [];
for (const [name, code] of FIELD_NAMES) (NAMES_BY_LENGTH[name.length] ??= []).push([Buffer.from(name, 'latin1'), code]);

/** A table of the codes of `names` (each must be a known field): `table[code]` is 1 for those. */
export function fieldCodes(names: Iterable<string>): Uint8Array {
  const table = new Uint8Array(FIELD_NAMES.length + 1);
  for (const name of names) {
    const known = FIELD_NAMES.find(([n]) => n === name);
    if (!known) throw new Error(`http1: ${name} is not a field the proxy knows by code`);
    table[known[1]] = 1;
  }
  return table;
}

/** The code of the field name at buf[start, end), case-insensitively (a name's bytes are all tchar, so `| 0x20` folds only letters onto the known names). */
function fieldCode(buf: Buffer, start: number, end: number): Field {
  const candidates = NAMES_BY_LENGTH[end - start];
  if (candidates === undefined) return Field.Other;
  next: for (let c = 0; c < candidates.length; c++) {
    const [name, code] = candidates[c]!;
    for (let i = 0; i < name.length; i++) if ((buf[start + i]! | 0x20) !== name[i]) continue next;
    return code;
  }
  return Field.Other;
}

/** Most fields a head may have here (node's HTTP server and client keep as many): a request with more is left to node's server, a response with more is a 502. */
const MAX_FIELDS = 2000;
const EMPTY = Buffer.alloc(0);
const HTTP_11 = Buffer.from('HTTP/1.1', 'latin1');

/**
 * A message head located in its buffer: where its start line ends and where
 * each field's name and value are, with the codes of the fields the proxy
 * acts on. Nothing is copied or cut into strings unless asked for, so a
 * head can be rewritten by copying the lines it keeps. One index is reused
 * for head after head: what it says holds until its next `read`.
 */
export class HeadIndex {
  /** The buffer of the last head read. */
  buf: Buffer = EMPTY;
  /** The CR that ends the start line. */
  lineEnd = 0;
  /** Bytes of the head, the blank line included. */
  length = 0;
  /** Fields in the head. */
  count = 0;
  /** Per field, five offsets into `buf`: name start, name end (its colon), value start, value end (both without surrounding spaces and tabs), the CR that ends its line. */
  private readonly at = new Int32Array(MAX_FIELDS * 5);
  private readonly codes = new Uint8Array(MAX_FIELDS);

  /** Read the head at the start of `buf`: `'more'` if it is not all there yet, `'invalid'` if it is malformed, has too many fields or is longer than `max` bytes. */
  read(buf: Buffer, max = MAX_HEAD_BYTES): 'ok' | 'more' | 'invalid' {
    const end = buf.indexOf(END_OF_HEAD);
    if (end < 0) return buf.length > max ? 'invalid' : 'more';
    if (end + 4 > max) return 'invalid';
    this.buf = buf;
    this.count = 0;
    let i = 0;
    while (i < end && buf[i] !== 0x0d) if (CTL[buf[i++]!]) return 'invalid';
    if (i === 0) return 'invalid';
    this.lineEnd = i;
    const at = this.at;
    // At the CR that ends a line; the head's last line ends at `end`.
    while (i < end) {
      if (buf[i + 1] !== 0x0a || this.count === MAX_FIELDS) return 'invalid';
      i += 2;
      const nameStart = i;
      while (TCHAR[buf[i]!]) i++;
      // No colon right after a name (a folded line, obsolete, RFC 9112 §5.2, or a space before it): not ours to guess.
      if (i === nameStart || i >= end || buf[i] !== 0x3a) return 'invalid';
      const nameEnd = i;
      i++;
      while (i < end && (buf[i] === 0x20 || buf[i] === 0x09)) i++;
      // The value without surrounding spaces and tabs (only those: RFC 9110's OWS).
      const valueStart = i;
      let valueEnd = i;
      for (; i < end; i++) {
        const c = buf[i]!;
        if (c === 0x0d) break;
        if (c !== 0x20 && c !== 0x09) {
          if (CTL[c]) return 'invalid';
          valueEnd = i + 1;
        }
      }
      const k = this.count++;
      at[k * 5] = nameStart;
      at[k * 5 + 1] = nameEnd;
      at[k * 5 + 2] = valueStart;
      at[k * 5 + 3] = valueEnd;
      at[k * 5 + 4] = i;
      this.codes[k] = fieldCode(buf, nameStart, nameEnd);
    }
    this.length = end + 4;
    return 'ok';
  }

  code(k: number): Field {
    return this.codes[k]!;
  }
  /** Where field k's line starts (its name). */
  lineStart(k: number): number {
    return this.at[k * 5]!;
  }
  /** Just past field k's line (its CRLF included). */
  lineAfter(k: number): number {
    return this.at[k * 5 + 4]! + 2;
  }
  valueStart(k: number): number {
    return this.at[k * 5 + 2]!;
  }
  valueEnd(k: number): number {
    return this.at[k * 5 + 3]!;
  }
  name(k: number): string {
    return this.buf.toString('latin1', this.at[k * 5]!, this.at[k * 5 + 1]!);
  }
  value(k: number): string {
    return this.buf.toString('latin1', this.at[k * 5 + 2]!, this.at[k * 5 + 3]!);
  }
  line(): string {
    return this.buf.toString('latin1', 0, this.lineEnd);
  }

  /** Whether field k's value is `lower` (lower-case ASCII), case-insensitively. */
  valueIs(k: number, lower: string): boolean {
    return this.itemIs(this.valueStart(k), this.valueEnd(k), lower);
  }

  /** Whether field k's value, a comma-separated list, has `lower` (lower-case ASCII) in it, as Connection does. */
  valueLists(k: number, lower: string): boolean {
    const end = this.valueEnd(k);
    for (let a = this.valueStart(k); a <= end; ) {
      let b = a;
      while (b < end && this.buf[b] !== 0x2c /* , */) b++;
      if (this.itemIs(a, b, lower)) return true;
      a = b + 1;
    }
    return false;
  }

  /** Whether the last item of field k's comma-separated value is `lower` (lower-case ASCII), as for Transfer-Encoding's last coding. */
  lastItemIs(k: number, lower: string): boolean {
    const start = this.valueStart(k);
    let a = this.valueEnd(k);
    while (a > start && this.buf[a - 1] !== 0x2c) a--;
    return this.itemIs(a, this.valueEnd(k), lower);
  }

  /** Whether buf[a, b), without surrounding spaces and tabs, is `lower`, case-insensitively. */
  private itemIs(a: number, b: number, lower: string): boolean {
    const buf = this.buf;
    while (a < b && (buf[a] === 0x20 || buf[a] === 0x09)) a++;
    while (b > a && (buf[b - 1] === 0x20 || buf[b - 1] === 0x09)) b--;
    if (b - a !== lower.length) return false;
    for (let i = 0; i < lower.length; i++) if (foldCase(buf[a + i]!) !== lower.charCodeAt(i)) return false;
    return true;
  }

  /** Field k's value as a Content-Length: digits only, one value (RFC 9110 §8.6); undefined if not. */
  contentLength(k: number): number | undefined {
    const a = this.valueStart(k);
    const b = this.valueEnd(k);
    if (b === a || b - a > 15) return undefined;
    let n = 0;
    for (let i = a; i < b; i++) {
      const d = this.buf[i]! - 0x30;
      if (d < 0 || d > 9) return undefined;
      n = n * 10 + d;
    }
    return n;
  }

  /** A request line `METHOD target HTTP/1.1` (other versions included), or undefined. */
  requestLine(): RequestLine | undefined {
    const buf = this.buf;
    const end = this.lineEnd;
    let a = 0;
    while (a < end && TCHAR[buf[a]!]) a++;
    if (a === 0 || buf[a] !== 0x20 || buf[a + 1] !== 0x2f /* / */) return undefined;
    const b = buf.indexOf(0x20, a + 1);
    // Exactly one more space, then the version (the target has none: CTL and spaces were refused above or here).
    if (b < 0 || b + 9 !== end || buf.compare(HTTP_11, 0, 8, b + 1, end) !== 0) return undefined;
    return { method: buf.toString('latin1', 0, a), target: buf.toString('latin1', a + 1, b) };
  }

  /** The status code of a status line `HTTP/1.x NNN reason` (1.0 or 1.1), or 0 for anything else. */
  status(): number {
    const buf = this.buf;
    const end = this.lineEnd;
    if (end < 12 || buf.compare(HTTP_11, 0, 7, 0, 7) !== 0 || (buf[7] !== 0x30 && buf[7] !== 0x31) || buf[8] !== 0x20) return 0;
    if (end > 12 && buf[12] !== 0x20) return 0;
    const h = buf[9]! - 0x30;
    const t = buf[10]! - 0x30;
    const u = buf[11]! - 0x30;
    if (h < 1 || h > 5 || t < 0 || t > 9 || u < 0 || u > 9) return 0;
    return h * 100 + t * 10 + u;
  }
}

/** An ASCII byte in lower case (letters only change). */
function foldCase(c: number): number {
  return c >= 0x41 && c <= 0x5a ? c | 0x20 : c;
}

/** A message head being built into one buffer (with, for a response, its body's first bytes): copied bytes and latin1 text. */
export class HeadWriter {
  private buf: Buffer;
  private n = 0;

  constructor(capacity: number) {
    this.buf = Buffer.allocUnsafe(capacity);
  }

  text(s: string): void {
    this.room(s.length);
    this.n += this.buf.write(s, this.n, 'latin1');
  }

  bytes(from: Buffer, start: number, end: number): void {
    if (end <= start) return;
    this.room(end - start);
    this.n += from.copy(this.buf, this.n, start, end);
  }

  done(): Buffer {
    return this.buf.subarray(0, this.n);
  }

  private room(more: number): void {
    if (this.n + more <= this.buf.length) return;
    const bigger = Buffer.allocUnsafe(Math.max(2 * this.buf.length, this.n + more));
    this.buf.copy(bigger, 0, 0, this.n);
    this.buf = bigger;
  }
}

/** The field lines of `h` not dropped (by `drop`, a table of codes, or the code `also`) as they came, run by run. */
export function copyLines(h: HeadIndex, out: HeadWriter, drop: Uint8Array, also: Field | -1, named?: ReadonlySet<string>): void {
  let run = -1;
  for (let k = 0; k < h.count; k++) {
    const code = h.code(k);
    if (drop[code] || code === also || (named !== undefined && code === Field.Other && named.has(h.name(k).toLowerCase()))) {
      if (run >= 0) out.bytes(h.buf, run, h.lineStart(k));
      run = -1;
    } else if (run < 0) run = h.lineStart(k);
  }
  if (run >= 0) out.bytes(h.buf, run, h.lineAfter(h.count - 1));
}

export interface Head {
  /** The request line or status line. */
  line: string;
  /** Field names and values as they came, flat: name, value, name, value… (values without surrounding whitespace). */
  fields: string[];
  /** Bytes of the head, the blank line included. */
  length: number;
}

/**
 * The head at the start of `buf` as strings (the tests read heads this way;
 * the proxy itself reads them in place with a `HeadIndex`):
 * `'more'` if it is not all there yet, `'invalid'` as `HeadIndex.read` says.
 */
export function readHead(buf: Buffer, max = MAX_HEAD_BYTES): Head | 'more' | 'invalid' {
  const h = new HeadIndex();
  const r = h.read(buf, max);
  if (r !== 'ok') return r;
  const fields: string[] = [];
  for (let k = 0; k < h.count; k++) fields.push(h.name(k), h.value(k));
  return { line: h.line(), fields, length: h.length };
}

export interface RequestLine {
  method: string;
  target: string;
}

/** A body's framing error: the exchange cannot go on, nor can its connection. */
export class FramingError extends Error {}

const enum Chunk {
  Size,
  Ext,
  SizeLf,
  Data,
  DataCr,
  DataLf,
  TrailerStart,
  TrailerLine,
  TrailerLf,
  EndLf,
}

const MAX_SIZE_DIGITS = 12; // 2^48 bytes: far past any body, well inside a double's integers
const MAX_EXT_BYTES = 4096;
const MAX_TRAILER_BYTES = 16 * 1024;

/**
 * Where a message body ends. `take(buf, from)` says how many bytes from
 * `from` belong to the body (the rest is the next message), and `done`
 * turns true at its last byte. Chunked bodies are checked strictly as they
 * pass (sizes, CRLFs, trailers) and forwarded as they are.
 */
export class BodyFrame {
  done: boolean;
  private remaining: number;
  private chunk = Chunk.Size;
  private digits = 0;
  private count = 0;

  private constructor(readonly kind: 'none' | 'length' | 'chunked' | 'close', length = 0) {
    this.remaining = length;
    this.done = kind === 'none' || (kind === 'length' && length === 0);
  }

  static none(): BodyFrame {
    return new BodyFrame('none');
  }
  static length(n: number): BodyFrame {
    return new BodyFrame('length', n);
  }
  static chunked(): BodyFrame {
    return new BodyFrame('chunked');
  }
  /** Everything until the sender closes: `end()` marks it done. */
  static untilClose(): BodyFrame {
    return new BodyFrame('close');
  }

  end(): void {
    if (this.kind === 'close') this.done = true;
  }

  take(buf: Buffer, from: number): number {
    if (this.done) return 0;
    const avail = buf.length - from;
    if (this.kind === 'close') return avail;
    if (this.kind === 'length') {
      const n = avail < this.remaining ? avail : this.remaining;
      this.remaining -= n;
      if (this.remaining === 0) this.done = true;
      return n;
    }
    return this.takeChunked(buf, from) - from;
  }

  /** Walks the chunk framing from `i`; returns the index just past the body's bytes in `buf`. */
  private takeChunked(buf: Buffer, i: number): number {
    const n = buf.length;
    while (i < n && !this.done) {
      if (this.chunk === Chunk.Data) {
        const step = n - i < this.remaining ? n - i : this.remaining;
        i += step;
        this.remaining -= step;
        if (this.remaining === 0) this.chunk = Chunk.DataCr;
        continue;
      }
      const c = buf[i++]!;
      switch (this.chunk) {
        case Chunk.Size: {
          const d = hexValue(c);
          if (d >= 0) {
            if (++this.digits > MAX_SIZE_DIGITS) throw new FramingError('chunk size too large');
            this.remaining = this.remaining * 16 + d;
          } else if (this.digits === 0) throw new FramingError('chunk size expected');
          else if (c === 0x3b /* ; */) (this.chunk = Chunk.Ext), (this.count = 0);
          else if (c === 0x0d) this.chunk = Chunk.SizeLf;
          else throw new FramingError('bad chunk size line');
          break;
        }
        case Chunk.Ext:
          if (c === 0x0d) this.chunk = Chunk.SizeLf;
          else if ((c < 0x20 && c !== 0x09) || c === 0x7f || ++this.count > MAX_EXT_BYTES) throw new FramingError('bad chunk extension');
          break;
        case Chunk.SizeLf:
          if (c !== 0x0a) throw new FramingError('CR without LF');
          this.digits = 0;
          if (this.remaining === 0) (this.chunk = Chunk.TrailerStart), (this.count = 0);
          else this.chunk = Chunk.Data;
          break;
        case Chunk.DataCr:
          if (c !== 0x0d) throw new FramingError('chunk longer than its size');
          this.chunk = Chunk.DataLf;
          break;
        case Chunk.DataLf:
          if (c !== 0x0a) throw new FramingError('CR without LF');
          this.chunk = Chunk.Size;
          break;
        case Chunk.TrailerStart:
          if (c === 0x0d) this.chunk = Chunk.EndLf;
          else if (c === 0x0a) throw new FramingError('bare LF');
          else this.chunk = Chunk.TrailerLine;
          if (++this.count > MAX_TRAILER_BYTES) throw new FramingError('trailers too large');
          break;
        case Chunk.TrailerLine:
          if (c === 0x0d) this.chunk = Chunk.TrailerLf;
          else if (c === 0x0a || (c < 0x20 && c !== 0x09) || c === 0x7f) throw new FramingError('bad trailer');
          if (++this.count > MAX_TRAILER_BYTES) throw new FramingError('trailers too large');
          break;
        case Chunk.TrailerLf:
          if (c !== 0x0a) throw new FramingError('CR without LF');
          this.chunk = Chunk.TrailerStart;
          break;
        case Chunk.EndLf:
          if (c !== 0x0a) throw new FramingError('CR without LF');
          this.done = true;
          break;
      }
    }
    return i;
  }
}

function hexValue(c: number): number {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  if (c >= 0x61 && c <= 0x66) return c - 0x57;
  if (c >= 0x41 && c <= 0x46) return c - 0x37;
  return -1;
}

/**
 * Where a response's body ends (RFC 9112 §6.3), from its status, whether it
 * answers a HEAD, its Content-Length (undefined: none or not a number) and
 * its Transfer-Encoding: none, `chunked` last, or another coding last.
 */
export function responseBody(status: number, isHead: boolean, length: number | undefined, coding: 'none' | 'chunked' | 'other'): BodyFrame {
  if (isHead || status === 204 || status === 304) return BodyFrame.none();
  // Chunked last: its framing says where the body ends. Any other last coding: the body ends with the connection.
  if (coding !== 'none') return coding === 'chunked' ? BodyFrame.chunked() : BodyFrame.untilClose();
  return length !== undefined ? BodyFrame.length(length) : BodyFrame.untilClose();
}
