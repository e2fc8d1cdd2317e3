/** Server-sent events: one `data:` JSON line per run status change, closed after `done`. */
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { Kiln } from '../app.js';
import type { Run } from '../runs/types.js';
import type { SessionView } from '../sessions/types.js';

export function streamRunEvents(kiln: Kiln, id: string, req: FastifyRequest, reply: FastifyReply): void {
  reply.hijack();
  const res = reply.raw;
  res.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache', Connection: 'keep-alive', 'X-Accel-Buffering': 'no' });
  const order: Run['status'][] = ['queued', 'running', 'done'];
  let sent = -1;
  let closed = false;
  const write = (run: Run) => res.write(`event: ${run.status}\ndata: ${JSON.stringify(run)}\n\n`);
  const send = (run: Run) => {
    if (closed || run.id !== id) return;
    const at = order.indexOf(run.status);
    // Statuses only move forward. One missed before the client came (a 202 then a late
    // connect) is replayed from the stored run, so every stream reads queued → running → done.
    for (let i = sent + 1; i < at; i++) write({ id: run.id, language: run.language, template: run.template, status: order[i]!, createdAt: run.createdAt, ...(i >= 1 && run.startedAt ? { startedAt: run.startedAt } : {}) });
    if (at <= sent) return;
    write(run);
    sent = at;
    if (run.status === 'done') finish();
  };
  const offs = [kiln.events.on('run:queued', send), kiln.events.on('run:running', send), kiln.events.on('run:done', send)];
  const heartbeat = setInterval(() => res.write(': keep-alive\n\n'), 15000);
  const finish = () => {
    if (closed) return;
    closed = true;
    clearInterval(heartbeat);
    for (const off of offs) off();
    res.end();
  };
  req.raw.on('close', finish);
  // The current state, read after subscribing so no change falls between.
  kiln.runs.get(id).then(send, finish);
}

/** Session events: `status` on each change, `warning` before idle timeout or max duration, `stopped` (with stopReason) at the end. */
export function streamSessionEvents(kiln: Kiln, id: string, req: FastifyRequest, reply: FastifyReply): void {
  reply.hijack();
  const res = reply.raw;
  res.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache', Connection: 'keep-alive', 'X-Accel-Buffering': 'no' });
  let closed = false;
  const write = (event: string, data: unknown) => res.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
  const onStatus = (s: SessionView) => {
    if (closed || s.id !== id) return;
    const end = s.status === 'stopped' || s.status === 'failed';
    write(end ? 'stopped' : 'status', s);
    if (end) finish();
  };
  const offs = [
    kiln.events.on('session:status', onStatus),
    kiln.events.on('session:warning', (s, w) => {
      if (!closed && s.id === id) write('warning', { ...w, session: s });
    }),
  ];
  const heartbeat = setInterval(() => res.write(': keep-alive\n\n'), 15000);
  const finish = () => {
    if (closed) return;
    closed = true;
    clearInterval(heartbeat);
    for (const off of offs) off();
    res.end();
  };
  req.raw.on('close', finish);
  kiln.sessions.get(id).then(onStatus, finish);
}
