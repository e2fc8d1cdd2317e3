/**
 * Output capping where output is produced: a stream's bytes are counted as they
 * arrive and only the first `cap` are kept, so the server's memory stays flat
 * however much a program prints. Past the cap the owner is told once (to kill
 * the producer) and the rest is dropped.
 */
export class CappedBuffer {
  private readonly chunks: Buffer[] = [];
  private kept = 0;
  /** Bytes seen in all, kept or not. */
  seen = 0;
  truncated = false;

  constructor(
    private readonly cap: number,
    private readonly onOverflow: () => void,
    private readonly onChunk?: (chunk: Buffer) => void,
  ) {}

  push(chunk: Buffer): void {
    this.seen += chunk.length;
    if (this.truncated) return;
    const room = this.cap - this.kept;
    const part = chunk.length <= room ? chunk : chunk.subarray(0, room);
    if (part.length > 0) {
      this.chunks.push(part);
      this.kept += part.length;
      this.onChunk?.(part);
    }
    if (chunk.length > room) {
      this.truncated = true;
      this.onOverflow();
    }
  }

  toBuffer(): Buffer {
    return Buffer.concat(this.chunks, this.kept);
  }
}

/** The last `cap` bytes of a stream (a server's log): old output falls off the front. */
export class CappedTail {
  private buf = Buffer.alloc(0);
  constructor(private readonly cap: number) {}

  push(chunk: Buffer): void {
    this.buf = Buffer.concat([this.buf, chunk]);
    if (this.buf.length > this.cap) this.buf = this.buf.subarray(this.buf.length - this.cap);
  }

  text(): string {
    return this.buf.toString('utf8');
  }
}
