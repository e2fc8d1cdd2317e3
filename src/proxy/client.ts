/**
 * One GET to a session's server through its port link, on the connections
 * the proxy uses (./backends.ts): the readiness probe's request, whose
 * connection then serves the session's first proxied request.
 */
import type { PortLink } from '../runtimes/types.js';
import { giveBackend, takeBackend } from './backends.js';
import { keep } from './wire.js';
import { type BodyFrame, Field, HeadIndex, responseBody } from './http1.js';

/** Read and used within one synchronous step, so one serves every probe. */
const probeHead = new HeadIndex();

/** The status the server answers `GET path` with, or undefined if it does not answer in time or makes no sense. */
export function getStatus(link: PortLink, path: string, timeoutMs: number): Promise<number | undefined> {
  return new Promise((resolve) => {
    const { wire } = takeBackend(link);
    let pending: Buffer | undefined;
    let status: number | undefined;
    let body: BodyFrame | undefined;
    let reusable = true;
    const finish = (result: number | undefined) => {
      clearTimeout(timer);
      if (result !== undefined && reusable && body?.done) giveBackend(link, wire);
      else wire.destroy();
      resolve(result);
    };
    const onGone = () => finish(body?.kind === 'close' ? status : undefined);
    const onData = (chunk: Buffer): void => {
      try {
        let from = 0;
        if (!body) {
          const buf = pending ? Buffer.concat([pending, chunk]) : chunk;
          const head = probeHead;
          const read = head.read(buf);
          if (read === 'more') return void (pending = keep(buf));
          const code = read === 'ok' ? head.status() : 0;
          if (code === 0) return finish(undefined);
          if (code < 200) {
            // An interim answer: the final one follows.
            pending = keep(buf.subarray(head.length));
            return pending.length ? onData(Buffer.alloc(0)) : undefined;
          }
          status = code;
          let length: number | undefined;
          let coding: 'none' | 'chunked' | 'other' = 'none';
          for (let k = 0; k < head.count; k++) {
            const field = head.code(k);
            if (field === Field.ContentLength) length = head.contentLength(k);
            else if (field === Field.TransferEncoding) coding = head.lastItemIs(k, 'chunked') ? 'chunked' : 'other';
            else if (field === Field.Connection && head.valueLists(k, 'close')) reusable = false;
          }
          body = responseBody(status, false, length, coding);
          chunk = buf;
          from = head.length;
          pending = undefined;
        }
        const n = body.take(chunk, from);
        if (from + n < chunk.length) reusable = false;
        if (body.done) finish(status);
      } catch {
        finish(undefined);
      }
    };
    const timer = setTimeout(() => finish(undefined), timeoutMs);
    wire.handlers = { data: onData, end: onGone, gone: onGone, drain: () => undefined };
    wire.resume();
    wire.write(Buffer.from(`GET ${path} HTTP/1.1\r\nHost: localhost\r\n\r\n`, 'latin1'));
  });
}
