/**
 * Docker's multiplexed attach stream (Tty false), split as a Transform: each
 * frame is an 8-byte header (stream type, 3 zero bytes, big-endian length)
 * and its payload. Stdout payloads pass through; stderr goes to a callback.
 * A Transform, unlike dockerode's demuxStream, keeps backpressure: a slow
 * client slows the relay instead of growing a buffer in kiln.
 */
import { Transform, type TransformCallback } from 'node:stream';

const HEADER = 8;
const STDOUT = 1;
const STDERR = 2;

export class DockerFrames extends Transform {
  private pending = Buffer.alloc(0);

  constructor(private readonly onStderr: (chunk: Buffer) => void) {
    super();
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    let buf = this.pending.length > 0 ? Buffer.concat([this.pending, chunk]) : chunk;
    while (buf.length >= HEADER) {
      const size = buf.readUInt32BE(4);
      if (buf.length < HEADER + size) break;
      const payload = buf.subarray(HEADER, HEADER + size);
      if (buf[0] === STDOUT) this.push(payload);
      else if (buf[0] === STDERR) this.onStderr(payload);
      buf = buf.subarray(HEADER + size);
    }
    this.pending = Buffer.from(buf); // a copy: the rest of `chunk` need not be kept alive
    done();
  }
}
