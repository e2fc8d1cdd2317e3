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
