/**
 * A warm pool per template: `min` ready sandboxes kept, at most `max` of the
 * template alive at once (ready + starting + claimed). A claim pops from a
 * queue in O(1), so no sandbox is handed out twice; each claim triggers a
 * background refill that waits for the budget and never overcommits it.
 *
 *   (refill) ──▶ starting ──ready──▶ ready ──claim──▶ claimed ──release──▶ gone
 *                    └──fail──▶ gone (retried after a back-off)
 */
import type { KilnConfig } from '../config/schema.js';
import type { KilnEventBus } from '../events.js';
import type { Runtimes } from '../runtimes/index.js';
import type { Budget, Reservation } from './budget.js';
import { startWarm, type WarmSandbox } from './warm.js';

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
  private refilling = false;

  constructor(
    readonly template: string,
    private readonly min: number,
    private readonly max: number,
    private readonly reservation: Reservation,
    private readonly deps: { config: KilnConfig; runtimes: Runtimes; budget: Budget; events: KilnEventBus; log?: { warn(o: object, m: string): void } },
  ) {}

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
    if (this.refilling || this.closed) return;
    this.refilling = true;
    void this.refillLoop().finally(() => {
      this.refilling = false;
    });
  }

  private async refillLoop(): Promise<void> {
    while (!this.closed && this.ready.length + this.starting < this.min && this.live < this.max) {
      if (!this.deps.budget.tryReserve(this.reservation)) return; // refilled again on the next release
      this.starting++;
      // Start several at once (each is mostly waiting on a process), but keep the loop bounded.
      void this.startOne().finally(() => {
        this.starting--;
        this.refill();
      });
      if (this.backoffMs) await new Promise((r) => setTimeout(r, this.backoffMs));
    }
  }

  private async startOne(): Promise<void> {
    try {
      const w = await startWarm(this.deps.config, this.deps.runtimes, this.template, this.reservation);
      this.backoffMs = 0;
      if (this.closed) {
        await this.discard(w);
        return;
      }
      this.ready.push(w);
      this.deps.events.safeEmit('pool:ready', this.view());
    } catch (e) {
      this.deps.budget.release(this.reservation);
      this.backoffMs = Math.min(30000, Math.max(500, this.backoffMs * 2));
      this.deps.log?.warn({ template: this.template, err: (e as Error).message }, 'pool refill failed');
      this.deps.events.safeEmit('pool:refill:failed', { template: this.template, error: (e as Error).message });
      await new Promise((r) => setTimeout(r, this.backoffMs));
    }
  }

  private async discard(w: WarmSandbox): Promise<void> {
    await w.sandbox.destroy().catch(() => undefined);
    this.deps.budget.release(w.reservation);
  }

  /** Destroy the ready sandboxes; claimed ones belong to their sessions. */
  async close(): Promise<void> {
    this.closed = true;
    await Promise.all(this.ready.splice(0).map((w) => this.discard(w)));
    while (this.starting > 0) await new Promise((r) => setTimeout(r, 20));
  }
}
