/**
 * The composition root: builds the store, runtimes, budget, services and
 * metrics from one validated config, and tears them down in order. The API
 * and the CLI's local `kiln run` both start here.
 */
import { mkdirSync, readFileSync, writeFileSync, chmodSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join, resolve } from 'node:path';
import type { KilnConfig } from './config/schema.js';
import { KilnEventBus } from './events.js';
import { KilnMetrics } from './metrics/index.js';
import { Budget } from './pools/budget.js';
import { Runtimes } from './runtimes/index.js';
import { RunService } from './runs/service.js';
import { openSqliteStore, type Db } from './store/db.js';
import { RunStore } from './store/runs.js';
import { TokenStore } from './store/tokens.js';
import { SessionService } from './sessions/service.js';
import { SessionProxy } from './proxy/proxy.js';

export interface Kiln {
  config: KilnConfig;
  instanceId: string;
  dataDir: string;
  db: Db;
  tokens: TokenStore;
  events: KilnEventBus;
  budget: Budget;
  runtimes: Runtimes;
  runs: RunService;
  sessions: SessionService;
  proxy: SessionProxy;
  metrics: KilnMetrics;
  /** Orphan sandboxes removed, interrupted runs failed and dead sessions closed at start. */
  recovered: { orphans: number; interruptedRuns: number; sessions: number };
  close(): Promise<void>;
}

export interface KilnOptions {
  log?: { warn(obj: object, msg: string): void; error(obj: object, msg: string): void };
  /** Where process sandboxes' work dirs live; default /run/kiln (root) or <tmp>/kiln-<uid>. */
  sandboxRoot?: string;
  /**
   * For `kiln run FILE`: an in-memory store and an instance id of its own, and
   * no recovery, so a local run never touches (or reaps) a server's sandboxes.
   */
  ephemeral?: boolean;
}

/** A stable id per data dir: sandboxes are labelled with it so a restart finds what a crash left. */
function instanceIdFor(dataDir: string): string {
  const file = join(dataDir, 'instance-id');
  try {
    return readFileSync(file, 'utf8').trim();
  } catch {
    const id = randomBytes(6).toString('hex');
    writeFileSync(file, `${id}\n`, { mode: 0o600 });
    return id;
  }
}

export async function startKiln(config: KilnConfig, opts: KilnOptions = {}): Promise<Kiln> {
  const dataDir = resolve(config.server.dataDir);
  if (!opts.ephemeral) {
    mkdirSync(dataDir, { recursive: true, mode: 0o700 });
    chmodSync(dataDir, 0o700); // the store lives here: never readable by sandbox uids
  }
  const instanceId = opts.ephemeral ? `local-${randomBytes(4).toString('hex')}` : instanceIdFor(dataDir);
  const sandboxRoot = opts.sandboxRoot ?? (process.getuid?.() === 0 ? '/run/kiln' : join('/tmp', `kiln-${process.getuid?.() ?? 'user'}`));
  mkdirSync(sandboxRoot, { recursive: true, mode: 0o711 });

  const db = await openSqliteStore(opts.ephemeral ? ':memory:' : join(dataDir, 'kiln.db'));
  const store = new RunStore(db);
  const events = new KilnEventBus((event, err) => opts.log?.warn({ event, err: String(err) }, 'event listener failed'));
  const budget = new Budget(config.budget.cpuTotal, config.budget.memoryTotalMb);
  const runtimes = new Runtimes(config, instanceId, sandboxRoot);

  // Recovery before serving: nothing this instance made may outlive a crash unnoticed.
  let orphans = 0;
  let interruptedRuns = 0;
  if (!opts.ephemeral) {
    orphans = await runtimes.reapOrphans();
    interruptedRuns = await store.failInterrupted(new Date().toISOString());
    await store.prune(new Date(Date.now() - config.runs.retentionDays * 86400_000).toISOString());
  }

  const runs = new RunService({ config, runtimes, store, budget, events, log: opts.log });
  const sessions = new SessionService({ config, runtimes, budget, events, db, log: opts.log });
  // A local `kiln run` serves no sessions: it neither fills pools nor touches the session table.
  const recoveredSessions = opts.ephemeral ? 0 : await sessions.start();
  const proxy = new SessionProxy(sessions, config);
  const metrics = new KilnMetrics(events, {
    queueDepth: () => runs.queue.depth,
    runsActive: () => runs.queue.running,
    budget: () => budget.snapshot(),
    sessions: () => sessions.list(),
    pools: () => sessions.poolViews(),
    proxy: () => proxy.stats,
  });

  // Orphans can appear after start too: an engine may finish a create the crashed server asked for.
  const orphanSweep = opts.ephemeral ? undefined : setInterval(() => void runtimes.reapOrphans(), config.server.orphanSweepS * 1000);
  orphanSweep?.unref();

  return {
    config,
    instanceId,
    dataDir,
    db,
    tokens: new TokenStore(db),
    events,
    budget,
    runtimes,
    runs,
    sessions,
    proxy,
    metrics,
    recovered: { orphans, interruptedRuns, sessions: recoveredSessions },
    async close() {
      // Graceful: let accepted runs finish (they hold sandboxes), end sessions, then release everything.
      clearInterval(orphanSweep);
      await sessions.close();
      proxy.close();
      await runs.queue.idle();
      await runtimes.close();
      await db.destroy();
    },
  };
}
