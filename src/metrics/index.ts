/** Prometheus metrics, fed from the event bus; served at GET /metrics. */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { KilnEventBus } from '../events.js';
import type { PoolView } from '../pools/pool.js';
import type { ProxyStats } from '../proxy/proxy.js';
import { SESSION_STATUS, type SessionView } from '../sessions/types.js';

/** How often the event-loop lag is sampled, ms. */
const EVENT_LOOP_SAMPLE_MS = 100;

export class KilnMetrics {
  readonly registry = new Registry();
  private readonly runsTotal = new Counter({ name: 'kiln_runs_total', help: 'Finished runs by language and verdict', labelNames: ['language', 'verdict'], registers: [this.registry] });
  private readonly runDuration = new Histogram({
    name: 'kiln_run_duration_seconds',
    help: 'Time from start to done of a run',
    labelNames: ['language'],
    buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
    registers: [this.registry],
  });
  private readonly queueWait = new Histogram({
    name: 'kiln_run_queue_wait_seconds',
    help: 'Time a run waited in the queue',
    buckets: [0.001, 0.01, 0.05, 0.1, 0.5, 1, 5, 30],
    registers: [this.registry],
  });

  private readonly claimDuration = new Histogram({
    name: 'kiln_session_claim_seconds',
    help: 'Time to hand out a session: warm claims (from_pool=true) and cold starts until ready',
    labelNames: ['template', 'from_pool'],
    buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    registers: [this.registry],
  });

  constructor(
    events: KilnEventBus,
    gauges: {
      queueDepth: () => number;
      runsActive: () => number;
      budget: () => { cpuUsed: number; memoryUsedMb: number };
      sessions: () => SessionView[];
      pools: () => PoolView[];
      proxy: () => ProxyStats;
    },
  ) {
    // The event-loop lag is sampled by a timer on kiln's loop: prom-client's default of every 10 ms woke an
    // idle kiln 100 times a second (0.6% of a CPU); ten samples a second still give each scrape hundreds.
    collectDefaultMetrics({ register: this.registry, prefix: 'kiln_process_', eventLoopMonitoringPrecision: EVENT_LOOP_SAMPLE_MS });
    new Gauge({ name: 'kiln_run_queue_depth', help: 'Runs waiting for a worker', registers: [this.registry], collect() { this.set(gauges.queueDepth()); } });
    new Gauge({ name: 'kiln_runs_active', help: 'Runs executing now', registers: [this.registry], collect() { this.set(gauges.runsActive()); } });
    new Gauge({ name: 'kiln_budget_cpu_used', help: 'CPUs reserved by live sandboxes', registers: [this.registry], collect() { this.set(gauges.budget().cpuUsed); } });
    new Gauge({ name: 'kiln_budget_memory_used_mb', help: 'Memory reserved by live sandboxes, MiB', registers: [this.registry], collect() { this.set(gauges.budget().memoryUsedMb); } });
    new Gauge({
      name: 'kiln_sessions',
      help: 'Sessions by status (stopped ones while still listed)',
      labelNames: ['status'],
      registers: [this.registry],
      collect() {
        // Every status has a series, 0 when none: an alert on `{status="ready"} == 0` must be able to fire.
        for (const status of Object.values(SESSION_STATUS)) this.set({ status }, 0);
        for (const s of gauges.sessions()) this.inc({ status: s.status });
      },
    });
    new Gauge({
      name: 'kiln_pool_sandboxes',
      help: 'Pool sandboxes by template and state (ready, starting, claimed)',
      labelNames: ['template', 'state'],
      registers: [this.registry],
      collect() {
        for (const p of gauges.pools()) for (const state of ['ready', 'starting', 'claimed'] as const) this.set({ template: p.template, state }, p[state]);
      },
    });
    new Gauge({ name: 'kiln_proxy_open_sockets', help: 'Proxied requests in flight and open WebSockets', registers: [this.registry], collect() { this.set(gauges.proxy().openSockets); } });
    new Counter({
      name: 'kiln_proxy_requests_total',
      help: 'Requests proxied into sessions',
      registers: [this.registry],
      collect() {
        // The proxy counts on its hot path without touching prom-client; the counter mirrors it at scrape time.
        this.reset();
        this.inc(gauges.proxy().requests);
      },
    });
    const refillFailures = new Counter({ name: 'kiln_pool_refill_failures_total', help: 'Pool sandboxes that failed to start, or whose server exited while it waited', labelNames: ['template'], registers: [this.registry] });
    events.on('pool:refill:failed', (f) => refillFailures.inc({ template: f.template }));
    events.on('session:claimed', (c) => this.claimDuration.observe({ template: c.template, from_pool: String(c.fromPool) }, c.ms / 1000));
    events.on('run:running', (run) => {
      if (run.startedAt) this.queueWait.observe((Date.parse(run.startedAt) - Date.parse(run.createdAt)) / 1000);
    });
    events.on('run:done', (run) => {
      this.runsTotal.inc({ language: run.language, verdict: run.verdict ?? 'internal_error' });
      if (run.startedAt && run.finishedAt) this.runDuration.observe({ language: run.language }, (Date.parse(run.finishedAt) - Date.parse(run.startedAt)) / 1000);
    });
  }
}
