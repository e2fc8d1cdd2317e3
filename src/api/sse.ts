/** Server-sent events for runs and sessions: one `event:` + `data:` JSON block per change, closed at the end. */
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { OutgoingHttpHeaders } from 'node:http';
import type { Kiln } from '../app.js';
import type { Run } from '../runs/types.js';
import type { SessionView } from '../sessions/types.js';
import { shownTo } from '../sessions/service.js';
import { SECURE_PAGE_HEADERS } from './protect.js';

interface EventStream {
  write(event: string, data: unknown): void;
  /** End the stream (idempotent); `subscriptions` are released. */
  finish(): void;
  readonly closed: boolean;
}

/** Take over the response, keep it alive with comments, and clean up when either side ends. */
function openStream(req: FastifyRequest, reply: FastifyReply, subscribe: (stream: EventStream) => (() => void)[]): EventStream {
  reply.hijack();
  const res = reply.raw;
  // The headers set on the reply so far (CORS) and those every answer carries go out too: hijacking leaves them behind.
  res.writeHead(200, { ...(reply.getHeaders() as OutgoingHttpHeaders), ...SECURE_PAGE_HEADERS, 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache', Connection: 'keep-alive', 'X-Accel-Buffering': 'no' });
  let offs: (() => void)[] = [];
  const heartbeat = setInterval(() => res.write(': keep-alive\n\n'), 15000);
  const stream = {
    closed: false,
    write(event: string, data: unknown) {
      if (!stream.closed) res.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
    },
    finish() {
      if (stream.closed) return;
      stream.closed = true;
      clearInterval(heartbeat);
      for (const off of offs) off();
      res.end();
    },
  };
  offs = subscribe(stream);
  // A client gone before the stream opened (during an async hook) sent its 'close' already: finish now, not at the session's end.
  if (req.raw.socket?.destroyed || res.destroyed) stream.finish();
  else {
    req.raw.on('close', stream.finish);
    res.on('close', stream.finish);
  }
  return stream;
}

/** Run events: `queued → running → done`, then the stream ends. */
export function streamRunEvents(kiln: Kiln, id: string, req: FastifyRequest, reply: FastifyReply): void {
  const order: Run['status'][] = ['queued', 'running', 'done'];
  let sent = -1;
  const send = (stream: EventStream) => (run: Run) => {
    if (stream.closed || run.id !== id) return;
    const at = order.indexOf(run.status);
    // Statuses only move forward. One missed before the client came (a 202 then a late
    // connect) is replayed from the stored run, so every stream reads queued → running → done.
    for (let i = sent + 1; i < at; i++) {
      stream.write(order[i]!, { id: run.id, language: run.language, template: run.template, status: order[i]!, createdAt: run.createdAt, ...(i >= 1 && run.startedAt ? { startedAt: run.startedAt } : {}) });
    }
    if (at <= sent) return;
    stream.write(run.status, run);
    sent = at;
    if (run.status === 'done') stream.finish();
  };
  const stream = openStream(req, reply, (s) => [kiln.events.on('run:queued', send(s)), kiln.events.on('run:running', send(s)), kiln.events.on('run:done', send(s))]);
  // The current state, read after subscribing so no change falls between.
  kiln.runs.get(id, req.principal).then(send(stream), stream.finish);
}

/** Session events: `status` on each change, `warning` before idle timeout or max duration, `stopped` (with stopReason) at the end. */
export function streamSessionEvents(kiln: Kiln, id: string, req: FastifyRequest, reply: FastifyReply): void {
  const onStatus = (stream: EventStream) => (s: SessionView) => {
    if (stream.closed || s.id !== id) return;
    const end = s.status === 'stopped' || s.status === 'failed';
    stream.write(end ? 'stopped' : 'status', shownTo(s, req.principal));
    if (end) stream.finish();
  };
  const stream = openStream(req, reply, (s) => [
    kiln.events.on('session:status', onStatus(s)),
    kiln.events.on('session:warning', (v, w) => {
      if (v.id === id) s.write('warning', { ...w, session: shownTo(v, req.principal) });
    }),
  ]);
  kiln.sessions.get(id, req.principal).then(onStatus(stream), stream.finish);
}
