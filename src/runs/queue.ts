/**
 * A bounded FIFO with a fixed number of workers. `push` refuses (429 with
 * Retry-After) when `queueMax` jobs already wait; nothing waits unbounded.
 */
import { KilnError } from '../errors.js';

export class WorkQueue {
  private readonly waiting: (() => Promise<void>)[] = [];
  private active = 0;
  private idleWaiters: (() => void)[] = [];

  constructor(
    private readonly concurrency: number,
    private readonly queueMax: number,
  ) {}

  get depth(): number {
    return this.waiting.length;
  }

  get running(): number {
    return this.active;
  }

  /** Accept `job` or throw 429. The job starts when a worker is free. */
  push(job: () => Promise<void>): void {
    if (this.active < this.concurrency) {
      this.start(job);
      return;
    }
    if (this.waiting.length >= this.queueMax) {
      // Most runs finish in well under a second, so a slot frees up soon.
      throw new KilnError('queue_full', `the run queue is full (${this.queueMax} waiting); retry later`, 429, { retryAfterS: 1 });
    }
    this.waiting.push(job);
  }

  private start(job: () => Promise<void>): void {
    this.active++;
    void job()
      .catch(() => undefined)
      .finally(() => {
        this.active--;
        const next = this.waiting.shift();
        if (next) this.start(next);
        else if (this.active === 0) for (const w of this.idleWaiters.splice(0)) w();
      });
  }

  /** Resolves when nothing runs or waits. */
  async idle(): Promise<void> {
    if (this.active === 0 && this.waiting.length === 0) return;
    await new Promise<void>((r) => this.idleWaiters.push(r));
  }
}
