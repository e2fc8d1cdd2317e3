/**
 * A warm pool per template: `min` ready sandboxes kept, at most `max` of the
 * template alive at once (ready + starting + claimed). A claim pops from a
 * queue in O(1), so no sandbox is handed out twice; each claim triggers a
 * background refill that waits for the budget and never overcommits it.
 *
 *   (refill) ──▶ starting ──ready──▶ ready ──claim──▶ claimed ──release──▶ gone
 *                    │                  └──server exited──▶ gone (retried after a back-off)
 *                    └──fail──▶ gone (retried after a back-off)
 *
 * A pool short of `min` because the budget was full refills when any
 * reservation is given back, whoever held it.
 */
import type { KilnConfig } from '../config/schema.js';
import type { KilnEventBus } from '../events.js';
import type { Runtimes } from '../runtimes/index.js';
import type { Budget, Reservation } from './budget.js';
import { startWarm, type WarmSandbox } from './warm.js';
import { teardown } from '../sandbox/teardown.js';

const REFILL_DELAY_MS = 250;

export interface PoolView {
  template: string;
  target: number;
  max: number;
  ready: number;
  starting: number;
  claimed: number;
}

export class Pool {
  private readonly ready: WarmSandbox[] = [];
  private starting = 0;
  private claimed = 0;
  private closed = false;
  private backoffMs = 0;
  private lastFailureAt = 0;
  private refilling = false;
  /** refill() was called during a pass: another pass follows it. */
  private refillAgain = false;
  /** The refill that waits out a back-off after a failure (cleared on close). */
  private retry: NodeJS.Timeout | undefined;
  private readonly unsubscribe: () => void;

  constructor(
    readonly template: string,
    private readonly min: number,
    private readonly max: number,
    private readonly reservation: Reservation,
    private readonly deps: { config: KilnConfig; runtimes: Runtimes; budget: Budget; events: KilnEventBus; log?: { warn(o: object, m: string): void } },
  ) {
    this.unsubscribe = deps.budget.onRelease(() => {
      if (!this.retry && this.ready.length + this.starting < this.min) this.refill();
    });
  }

  view(): PoolView {
    return { template: this.template, target: this.min, max: this.max, ready: this.ready.length, starting: this.starting, claimed: this.claimed };
  }

  private get live(): number {
    return this.ready.length + this.starting + this.claimed;
  }

  /** A ready sandbox, or undefined when none is warm. The caller owns it until `release`. */
  claim(): WarmSandbox | undefined {
    const w = this.ready.shift();
    if (w) {
      this.claimed++;
      // Starting a sandbox takes a core for ~100 ms: let the claimer's first requests go first.
      setTimeout(() => this.refill(), REFILL_DELAY_MS).unref();
    }
    return w;
  }

  /** Whether one more sandbox of this template may exist (cold starts count too). */
  hasRoom(): boolean {
    return this.live < this.max;
  }

  /** Count a cold-started sandbox against `max`. */
  adoptCold(): void {
    this.claimed++;
  }

  /** A claimed sandbox has ended (its session stopped). */
  release(): void {
    this.claimed = Math.max(0, this.claimed - 1);
    this.refill();
  }

  /** Start sandboxes until `min` are ready or starting, within `max` and the budget. */
  refill(): void {
    if (this.closed) return;
    if (this.refilling) {
      // A pass is under way and may have looked before this call's reason (a release) counted: once more after it.
      this.refillAgain = true;
      return;
    }
    this.refilling = true;
    void this.refillLoop().finally(() => {
      this.refilling = false;
      if (this.refillAgain) {
        this.refillAgain = false;
        this.refill();
      }
    });
  }

  private async refillLoop(): Promise<void> {
    while (!this.closed && !this.retry && this.ready.length + this.starting < this.min && this.live < this.max) {
      if (!this.deps.budget.tryReserve(this.reservation)) return; // refilled again when budget is given back
      this.starting++;
      // Start several at once (each is mostly waiting on a process).
      void this.startOne()
        .catch(() => false)
        .then((ok) => {
          this.starting--;
          if (ok) this.refill();
        });
    }
  }

  /**
   * After a failure (a start that failed, a pooled server that exited): the
   * next refill waits out a back-off that doubles from 0.5 s up to 30 s, and
   * starts again from 0.5 s after a minute without failures. A server that
   * starts and then exits is a failure too, so a template that crashes soon
   * after it is ready backs off instead of restarting in a loop.
   */
  private retryLater(): void {
    if (Date.now() - this.lastFailureAt > 60000) this.backoffMs = 0;
    this.lastFailureAt = Date.now();
    this.backoffMs = Math.min(30000, Math.max(500, this.backoffMs * 2));
    if (this.closed || this.retry) return;
    this.retry = setTimeout(() => {
      this.retry = undefined;
      this.refill();
    }, this.backoffMs);
    this.retry.unref();
  }

  /** Whether a sandbox joined the pool. */
  private async startOne(): Promise<boolean> {
    let w: WarmSandbox;
    try {
      w = await startWarm(this.deps.config, this.deps.runtimes, this.template, this.reservation);
    } catch (e) {
      // The back-off is set before the budget goes back, so the release does not start the next one at once.
      this.retryLater();
      this.deps.budget.release(this.reservation);
      this.deps.log?.warn({ template: this.template, err: (e as Error).message }, 'pool refill failed');
      this.deps.events.safeEmit('pool:refill:failed', { template: this.template, error: (e as Error).message });
      return false;
    }
    if (this.closed) {
      await this.discard(w);
      return true;
    }
    this.ready.push(w);
    this.watch(w);
    this.deps.events.safeEmit('pool:ready', this.view());
    return true;
  }

  /** A waiting sandbox whose server exits leaves the pool (and is never handed out); its place is refilled after a back-off. */
  private watch(w: WarmSandbox): void {
    void w.sandbox.mainExited?.then(async () => {
      const i = this.ready.indexOf(w);
      if (i < 0) return; // claimed (its session watches it now) or discarded
      this.ready.splice(i, 1);
      this.deps.log?.warn({ template: this.template }, 'a pooled server exited while it waited; replacing it');
      this.deps.events.safeEmit('pool:refill:failed', { template: this.template, error: 'a pooled server exited while it waited' });
      this.retryLater();
      await this.discard(w);
    });
  }

  private async discard(w: WarmSandbox): Promise<void> {
    await teardown(w.sandbox, () => this.deps.budget.release(w.reservation), this.deps.log, { template: this.template });
  }

  /** Destroy the ready sandboxes; claimed ones belong to their sessions. */
  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.retry);
    this.unsubscribe();
    await Promise.all(this.ready.splice(0).map((w) => this.discard(w)));
    while (this.starting > 0) await new Promise((r) => setTimeout(r, 20));
  }
}
