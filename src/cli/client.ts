/** A small HTTP client for the CLI's remote commands: KILN_URL, KILN_TOKEN. */
import { KilnError } from '../errors.js';

export function serverUrl(): string {
  return (process.env.KILN_URL ?? 'http://127.0.0.1:7070').replace(/\/+$/, '');
}

/** A URL the server gave (a path on it, or absolute when sessions have hosts of their own) as one to open. */
export function absolute(url: string): string {
  return url.startsWith('/') ? serverUrl() + url : url;
}

export async function api<T>(method: string, path: string, body?: unknown): Promise<T> {
  const res = await send(method, path, body === undefined ? undefined : JSON.stringify(body), 'application/json');
  const text = await res.text();
  try {
    return (text ? JSON.parse(text) : undefined) as T;
  } catch {
    return text as T;
  }
}

/** Raw bytes both ways (session files). */
export async function apiBytes(method: string, path: string, body?: Buffer): Promise<Buffer> {
  const res = await send(method, path, body, 'application/octet-stream');
  return Buffer.from(await res.arrayBuffer());
}

/** The answer when it is a success; otherwise the server's error, as a KilnError. */
async function send(method: string, path: string, body: string | Buffer | undefined, contentType: string): Promise<Response> {
  const headers: Record<string, string> = {};
  if (body !== undefined) headers['content-type'] = contentType;
  if (process.env.KILN_TOKEN) headers.authorization = `Bearer ${process.env.KILN_TOKEN}`;
  let res: Response;
  try {
    res = await fetch(serverUrl() + path, { method, headers, body: body as BodyInit | undefined });
  } catch (e) {
    const cause = (e as Error).cause as NodeJS.ErrnoException | undefined;
    // The server answered a too-large upload by closing the connection while it was still sent.
    if (Buffer.isBuffer(body) && (cause?.code === 'EPIPE' || cause?.code === 'ECONNRESET')) {
      throw new KilnError('upload_refused', `the server closed the connection during the upload of ${body.length} bytes: larger than its body limit (server.bodyLimitBytes, 10 MiB by default)?`, 413);
    }
    throw unreachable(serverUrl(), e as Error);
  }
  if (res.ok) return res;
  const text = await res.text();
  let err: { code: string; message: string } | undefined;
  try {
    err = (JSON.parse(text) as { error?: { code: string; message: string } }).error;
  } catch {
    /* not JSON: the status says it */
  }
  throw new KilnError(err?.code ?? 'http_error', err?.message ?? `HTTP ${res.status}`, res.status);
}

function unreachable(base: string, e: Error): KilnError {
  return new KilnError('unreachable', `cannot reach the kiln server at ${base} (set KILN_URL): ${e.cause ?? e.message}`, 0);
}

/**
 * Follow a server-sent event stream, calling `onEvent` for each `data:` JSON;
 * `onEvent` returning true stops reading. `base` defaults to KILN_URL.
 */
export async function followEvents(path: string, onEvent: (event: string, data: unknown) => boolean | void, base = serverUrl()): Promise<void> {
  const headers: Record<string, string> = { accept: 'text/event-stream' };
  if (process.env.KILN_TOKEN) headers.authorization = `Bearer ${process.env.KILN_TOKEN}`;
  const res = await fetch(base + path, { headers }).catch((e: Error) => {
    throw unreachable(base, e);
  });
  if (!res.ok || !res.body) {
    const body = (await res.json().catch(() => undefined)) as { error?: { code: string; message: string } } | undefined;
    throw new KilnError(body?.error?.code ?? 'http_error', body?.error?.message ?? `HTTP ${res.status}`, res.status);
  }
  const decoder = new TextDecoder();
  let buf = '';
  for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
    buf += decoder.decode(chunk, { stream: true });
    let i;
    while ((i = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, i);
      buf = buf.slice(i + 2);
      const event = /^event: (.*)$/m.exec(block)?.[1] ?? 'message';
      const data = /^data: (.*)$/m.exec(block)?.[1];
      if (data && onEvent(event, JSON.parse(data)) === true) return;
    }
  }
}
