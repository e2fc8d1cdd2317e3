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
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
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
export const SET_BY_PROXY: ReadonlySet<string> = new Set(['x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host', 'x-forwarded-prefix']);

export interface Head {
  /** The request line or status line. */
  line: string;
  /** Field names and values as they came, flat: name, value, name, value… (values without surrounding whitespace). */
  fields: string[];
  /** Bytes of the head, the blank line included. */
  length: number;
}

/**
 * The head at the start of `buf`: `'more'` if it is not all there yet,
 * `'invalid'` if it is malformed or longer than `max` bytes.
 */
export function readHead(buf: Buffer, max = MAX_HEAD_BYTES): Head | 'more' | 'invalid' {
  const end = buf.indexOf(END_OF_HEAD);
  if (end < 0) return buf.length > max ? 'invalid' : 'more';
  if (end + 4 > max) return 'invalid';
  // One pass over the bytes (this runs twice per proxied request); strings are cut from one latin1
  // copy of the head (one character per byte, so values with bytes over 0x7f go back out unchanged).
  const text = buf.toString('latin1', 0, end);
  let i = 0;
  while (i < end && buf[i] !== 0x0d) if (CTL[buf[i++]!]) return 'invalid';
  if (i === 0) return 'invalid';
  const line = text.slice(0, i);
  const fields: string[] = [];
  // At the CR that ends a line; the head's last line ends at `end`.
  while (i < end) {
    if (buf[i + 1] !== 0x0a) return 'invalid';
    i += 2;
    const nameStart = i;
    while (TCHAR[buf[i]!]) i++;
    // No colon right after a name (a folded line, obsolete, RFC 9112 §5.2, or a space before it): not ours to guess.
    if (i === nameStart || i >= end || buf[i] !== 0x3a) return 'invalid';
    const name = text.slice(nameStart, i);
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
    fields.push(name, text.slice(valueStart, valueEnd));
  }
  return { line, fields, length: end + 4 };
}

/** `s` from `from` without leading and trailing spaces and tabs (only those: RFC 9110's OWS). */
function trimSpace(s: string, from: number): string {
  let a = from;
  let b = s.length;
  while (a < b && (s.charCodeAt(a) === 32 || s.charCodeAt(a) === 9)) a++;
  while (b > a && (s.charCodeAt(b - 1) === 32 || s.charCodeAt(b - 1) === 9)) b--;
  return s.slice(a, b);
}

export interface RequestLine {
  method: string;
  target: string;
}

/** `METHOD target HTTP/1.1`, or undefined for anything else (other versions included). */
export function requestLine(line: string): RequestLine | undefined {
  const a = line.indexOf(' ');
  const b = line.indexOf(' ', a + 1);
  if (a <= 0 || b < 0 || line.indexOf(' ', b + 1) >= 0) return undefined;
  if (line.slice(b + 1) !== 'HTTP/1.1') return undefined;
  const method = line.slice(0, a);
  const target = line.slice(a + 1, b);
  if (!TOKEN.test(method) || target.charCodeAt(0) !== 47 /* / */) return undefined;
  return { method, target };
}

export interface StatusLine {
  status: number;
  reason: string;
}

/** `HTTP/1.x NNN reason`, or undefined. */
export function statusLine(line: string): StatusLine | undefined {
  if (!line.startsWith('HTTP/1.') || line.length < 12 || line.charCodeAt(8) !== 32) return undefined;
  const v = line.charCodeAt(7);
  if (v !== 48 && v !== 49) return undefined; // 1.0 or 1.1
  const code = line.slice(9, 12);
  if (!/^[1-5]\d\d$/.test(code)) return undefined;
  if (line.length > 12 && line.charCodeAt(12) !== 32) return undefined;
  return { status: Number(code), reason: line.slice(13) };
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
 * its Transfer-Encoding values joined (undefined: none).
 */
export function responseBody(status: number, isHead: boolean, length: number | undefined, coding: string | undefined): BodyFrame {
  if (isHead || status === 204 || status === 304) return BodyFrame.none();
  // Chunked last: its framing says where the body ends. Any other last coding: the body ends with the connection.
  if (coding !== undefined) return /(^|,)\s*chunked\s*$/i.test(coding) ? BodyFrame.chunked() : BodyFrame.untilClose();
  return length !== undefined ? BodyFrame.length(length) : BodyFrame.untilClose();
}

/** A Content-Length value: digits only, one value (RFC 9110 §8.6); undefined if not. */
export function contentLength(value: string): number | undefined {
  if (!/^\d{1,15}$/.test(value)) return undefined;
  return Number(value);
}

/** Whether a comma-separated field value lists `token` (case-insensitive), as Connection does. */
export function listsToken(value: string, token: string): boolean {
  if (!value.includes(',')) return trimSpace(value, 0).toLowerCase() === token; // most values are one token
  for (const part of value.split(',')) if (trimSpace(part, 0).toLowerCase() === token) return true;
  return false;
}
