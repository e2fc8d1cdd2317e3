/**
 * The budget: CPUs and memory this node may hand out. Every sandbox reserves
 * its limits while it lives; what does not fit waits or is refused, so the
 * machine is never overcommitted.
 */
import { cpus, totalmem } from 'node:os';

export interface Reservation {
  cpus: number;
  memoryMb: number;
}

export class Budget {
  readonly cpuTotal: number;
  readonly memoryTotalMb: number;
  private cpuUsed = 0;
  private memoryUsedMb = 0;
  private readonly waiters: (() => void)[] = [];
  /** Told of every release (pools short of their target refill then). */
  private readonly listeners = new Set<() => void>();

  constructor(cpuTotal: number | null, memoryTotalMb: number | null) {
    this.cpuTotal = cpuTotal ?? cpus().length;
    this.memoryTotalMb = memoryTotalMb ?? Math.floor(totalmem() / 1024 / 1024);
  }

  /** Whether `r` could ever fit (an empty node). */
  fitsEver(r: Reservation): boolean {
    return r.cpus <= this.cpuTotal + 1e-9 && r.memoryMb <= this.memoryTotalMb;
  }

  /** Whether `r` fits now. */
  fits(r: Reservation): boolean {
    return this.cpuUsed + r.cpus <= this.cpuTotal + 1e-9 && this.memoryUsedMb + r.memoryMb <= this.memoryTotalMb;
  }

  tryReserve(r: Reservation): boolean {
    if (!this.fits(r)) return false;
    this.cpuUsed += r.cpus;
    this.memoryUsedMb += r.memoryMb;
    return true;
  }

  /** Wait until `r` fits, then reserve it. The caller checks `fitsEver` first. */
  async reserve(r: Reservation): Promise<void> {
    while (!this.tryReserve(r)) await new Promise<void>((resolve) => this.waiters.push(resolve));
  }

  release(r: Reservation): void {
    this.cpuUsed = Math.max(0, this.cpuUsed - r.cpus);
    this.memoryUsedMb = Math.max(0, this.memoryUsedMb - r.memoryMb);
    for (const wake of this.waiters.splice(0)) wake();
    for (const listener of this.listeners) listener();
  }

  /** Call `fn` after each release; returns the unsubscribe. */
  onRelease(fn: () => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  snapshot(): { cpuTotal: number; cpuUsed: number; memoryTotalMb: number; memoryUsedMb: number } {
    return { cpuTotal: this.cpuTotal, cpuUsed: Math.round(this.cpuUsed * 1000) / 1000, memoryTotalMb: this.memoryTotalMb, memoryUsedMb: this.memoryUsedMb };
  }
}
