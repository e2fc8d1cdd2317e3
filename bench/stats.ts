/**
 * Timing helpers for the benchmarks: run a fixed number of calls at a fixed
 * concurrency (after a few warm-up calls), stop early at a deadline, and
 * summarise as runs/s with p50/p99 latency.
 */

export interface SeriesOptions {
  /** Measured calls. */
  count: number;
  /** Calls made first and thrown away (caches, JIT, first-spawn costs). */
  warmup: number;
  /** Loops calling `fn` at once. */
  concurrency: number;
  /** performance.now() after which no new call starts; the series is then marked capped. */
  deadline: number;
}

export interface Series {
  concurrency: number;
  latenciesMs: number[];
  elapsedMs: number;
  capped: boolean;
}

export interface Summary {
  n: number;
  runsPerSec: number;
  p50: number;
  p99: number;
  capped: boolean;
}

/** Call `fn` `count` times from `concurrency` loops, timing each call. A throw ends the series (and the bench). */
export async function measure(opts: SeriesOptions, fn: () => Promise<void>): Promise<Series> {
  await loops(opts.warmup, opts.concurrency, opts.deadline, fn, () => undefined);
  const latenciesMs: number[] = [];
  const started = performance.now();
  const capped = await loops(opts.count, opts.concurrency, opts.deadline, fn, (ms) => latenciesMs.push(ms));
  return { concurrency: opts.concurrency, latenciesMs, elapsedMs: performance.now() - started, capped };
}

/**
 * Two sequential series interleaved call by call (a b, b a, a b, …), so drift in
 * the machine's load falls on both alike: for comparing two ways of doing the
 * same thing. Each series' elapsed time is the sum of its own calls.
 */
export async function measurePaired(opts: Omit<SeriesOptions, 'concurrency'>, a: () => Promise<void>, b: () => Promise<void>): Promise<[Series, Series]> {
  const out: [Series, Series] = [
    { concurrency: 1, latenciesMs: [], elapsedMs: 0, capped: false },
    { concurrency: 1, latenciesMs: [], elapsedMs: 0, capped: false },
  ];
  const fns = [a, b];
  for (let i = 0; i < opts.warmup + opts.count; i++) {
    if (performance.now() > opts.deadline) {
      out[0].capped = out[1].capped = true;
      break;
    }
    for (const k of i % 2 === 0 ? [0, 1] : [1, 0]) {
      const t0 = performance.now();
      await fns[k]!();
      const ms = performance.now() - t0;
      if (i < opts.warmup) continue;
      out[k]!.latenciesMs.push(ms);
      out[k]!.elapsedMs += ms;
    }
  }
  return out;
}

/** Returns true when the deadline stopped the loops before `count` calls. */
async function loops(count: number, concurrency: number, deadline: number, fn: () => Promise<void>, record: (ms: number) => void): Promise<boolean> {
  let next = 0;
  let capped = false;
  const loop = async () => {
    while (next < count) {
      if (performance.now() > deadline) {
        capped = true;
        return;
      }
      next++;
      const t0 = performance.now();
      await fn();
      record(performance.now() - t0);
    }
  };
  await Promise.all(Array.from({ length: concurrency }, loop));
  return capped;
}

/** Nearest-rank percentile of unsorted values (with n < 100, p99 is the maximum). */
export function percentile(values: number[], p: number): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1]!;
}

export function summarize(s: Series): Summary {
  const n = s.latenciesMs.length;
  return {
    n,
    runsPerSec: n === 0 ? 0 : (n * 1000) / s.elapsedMs,
    p50: percentile(s.latenciesMs, 50),
    p99: percentile(s.latenciesMs, 99),
    capped: s.capped,
  };
}

/** Columns padded to their widest cell; numbers right-aligned. */
export function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) =>
    cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ').trimEnd();
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}
