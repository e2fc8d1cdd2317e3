/**
 * The session service: hands out sandboxes bound to a client, tracks their
 * activity, warns before and enforces idle timeout and max duration, and
 * records every status change in the store and on the event bus.
 */
import { createHash, randomUUID } from 'node:crypto';
import type { KilnConfig, TemplateConfig } from '../config/schema.js';
import { invalid, KilnError, messageOf, notFound } from '../errors.js';
import type { KilnEventBus } from '../events.js';
import type { Budget, Reservation } from '../pools/budget.js';
import { Pool, type PoolView } from '../pools/pool.js';
import { newToken, startWarm, type WarmSandbox } from '../pools/warm.js';
import { dropBackend } from '../proxy/backends.js';
import { SessionOrigins, sessionUrl } from '../proxy/origin.js';
import type { Runtimes } from '../runtimes/index.js';
import type { ExecResult } from '../runtimes/types.js';
import type { Db, SessionsTable } from '../store/db.js';
import { sql } from 'kysely';
import { can, sees, type Principal } from '../auth/principal.js';
import { argvProblem, envProblem } from '../sandbox/argv.js';
import { teardown } from '../sandbox/teardown.js';
import { SESSION_STATUS, TRANSITIONS, type SessionRequest, type SessionStatus, type SessionView, type StopReason } from './types.js';

export interface SessionServiceDeps {
  config: KilnConfig;
  runtimes: Runtimes;
  budget: Budget;
  events: KilnEventBus;
  db: Db;
  log?: { warn(o: object, m: string): void; error(o: object, m: string): void };
}

/** A session this server is running now (or stopped less than `stalePeriodS` ago). */
export class LiveSession {
  status: SessionStatus = SESSION_STATUS.starting;
  stopReason: StopReason | undefined;
  warm: WarmSandbox | undefined;
  lastActivity = Date.now();
  /** The lastActivity the store has from the sweep (0: none yet). */
  persistedActivity = 0;
  /** Proxied requests in flight and open WebSockets: while any is open, the session is active. */
  openSockets = 0;
  warned = { idle: false, duration: false };
  readyAt: number | undefined;
  stoppedAt: number | undefined;
  error: string | undefined;
  /** Resolves when the session leaves `starting`. */
  readonly settled: Promise<void>;
  settle!: () => void;
  /** The stop in progress: every later stop waits for it, so none answers before the sandbox is gone. */
  stopped: Promise<void> | undefined;
  /** A cold start in flight: aborted by a stop, which waits for `startDone` (its sandbox destroyed, its budget back). */
  readonly cancelStart = new AbortController();
  startDone: Promise<void> | undefined;

  constructor(
    readonly id: string,
    readonly template: string,
    readonly token: string,
    readonly fromPool: boolean,
    readonly createdAt: number,
    readonly idleTimeoutS: number,
    readonly maxDurationS: number,
    readonly warnings: { idleS: number; durationS: number },
    readonly metadata: Record<string, string> | undefined,
    /** Principal that created it: only it (or an admin) sees it. */
    readonly owner: string,
    /** Where its server is reached (see ../proxy/origin.ts). */
    private readonly url: string,
  ) {
    this.settled = new Promise((r) => (this.settle = r));
  }

  touch(): void {
    this.lastActivity = Date.now();
    this.warned.idle = false;
  }

  view(withToken = false): SessionView {
    const v: SessionView = {
      id: this.id,
      template: this.template,
      status: this.status,
      fromPool: this.fromPool,
      createdAt: new Date(this.createdAt).toISOString(),
      expiresAt: new Date(this.createdAt + this.maxDurationS * 1000).toISOString(),
      lastActivityAt: new Date(this.lastActivity).toISOString(),
      idleTimeoutS: this.idleTimeoutS,
      owner: this.owner,
    };
    if (this.status === 'starting' || this.status === 'ready') v.url = this.url;
    if (withToken) v.token = this.token;
    if (this.metadata) v.metadata = this.metadata;
    if (this.readyAt) v.readyAt = new Date(this.readyAt).toISOString();
    if (this.stopReason) v.stopReason = this.stopReason;
    if (this.stoppedAt) v.stoppedAt = new Date(this.stoppedAt).toISOString();
    if (this.error) v.error = this.error;
    return v;
  }
}

const hashToken = (token: string) => createHash('sha256').update(token).digest('hex');

/** A session as `principal` may see it: the URL opens the session's server, so only callers that may use sessions get it. */
export function shownTo(v: SessionView, principal: Principal): SessionView {
  if (v.url === undefined || can(principal, 'sessions:write')) return v;
  const { url: _url, token: _token, ...rest } = v;
  return rest;
}
const REQUEST_KEYS = new Set(['template', 'env', 'idleTimeoutS', 'maxDurationS', 'metadata']);

export class SessionService {
  private readonly byId = new Map<string, LiveSession>();
  private readonly byToken = new Map<string, LiveSession>();
  readonly pools = new Map<string, Pool>();
  private sweeper: NodeJS.Timeout | undefined;
  /** Cold starts in flight: close() waits for them so no sandbox outlives the service. */
  private readonly coldStarts = new Set<Promise<void>>();
  private closed = false;
  private readonly origins: SessionOrigins | undefined;
  /** Sessions that ended before this start, less than `stalePeriodS` ago: listed as if this server had ended them. */
  private endedBefore: SessionView[] = [];

  constructor(private readonly deps: SessionServiceDeps) {
    this.origins = SessionOrigins.of(deps.config);
    for (const [name, t] of Object.entries(deps.config.templates)) {
      if (!t.command) continue;
      const pool = t.pool ?? { min: 0, max: 20 };
      const reservation = this.reservationOf(name);
      this.pools.set(name, new Pool(name, pool.min, pool.max, reservation, deps));
      if (!deps.budget.fitsEver(reservation)) deps.log?.warn({ template: name }, neverFits(name, reservation, deps.budget).message);
    }
  }

  /** Mark sessions a dead server left as stopped (their sandboxes were reaped), fill pools, start sweeping. */
  async start(): Promise<number> {
    // A row a stop had begun on keeps its reason; the rest were live when kiln died.
    const res = await this.deps.db
      .updateTable('sessions')
      .set({
        status: 'stopped',
        stop_reason: sql`coalesce(stop_reason, 'shutdown')`,
        stopped_at: new Date().toISOString(),
        error: sql`coalesce(error, 'kiln stopped without ending this session; its sandbox was reaped when kiln started again')`,
      })
      .where('status', 'in', ['starting', 'ready', 'stopping'])
      .executeTakeFirst();
    const recent = await this.deps.db.selectFrom('sessions').selectAll().where('stopped_at', '>=', this.staleBefore()).orderBy('created_at').execute();
    this.endedBefore = recent.map(storedView);
    for (const p of this.pools.values()) p.refill();
    // A failed sweep (the store refusing a write) is logged and the next one tries again; it must not end kiln.
    this.sweeper = setInterval(() => void this.sweep().catch((err: Error) => this.deps.log?.error({ err: err.message }, 'session sweep failed')), this.deps.config.sessions.expiryIntervalS * 1000);
    this.sweeper.unref();
    return Number(res.numUpdatedRows);
  }

  private template(name: string): TemplateConfig {
    const t = Object.hasOwn(this.deps.config.templates, name) ? this.deps.config.templates[name] : undefined;
    if (!t) throw new KilnError('unknown_template', `template: unknown template ${JSON.stringify(name)}; see GET /v1/templates`, 400);
    if (!t.command || !t.port) throw new KilnError('not_a_session_template', `template: ${name} has no command and port, so it cannot serve sessions`, 400);
    return t;
  }

  private reservationOf(name: string): Reservation {
    const { spec } = this.deps.runtimes.specFor(name);
    return { cpus: spec.limits.cpus, memoryMb: spec.limits.memoryMb };
  }

  /** Validate a create request; every problem names the field. */
  private parse(body: unknown): SessionRequest {
    if (body === null || typeof body !== 'object' || Array.isArray(body)) throw invalid('body', 'must be a JSON object');
    const b = body as Record<string, unknown>;
    for (const k of Object.keys(b)) if (!REQUEST_KEYS.has(k)) throw invalid(k, 'unknown field');
    if (typeof b.template !== 'string') throw invalid('template', b.template === undefined ? 'is required' : 'must be a string');
    const req: SessionRequest = { template: b.template };
    for (const key of ['env', 'metadata'] as const) {
      const v = b[key];
      if (v === undefined) continue;
      if (v === null || typeof v !== 'object' || Array.isArray(v) || Object.values(v).some((x) => typeof x !== 'string')) throw invalid(key, 'must be an object of strings');
      if (Object.keys(v).length > 64) throw invalid(key, 'at most 64 entries');
      // Metadata is stored and repeated in every listing and event: each entry stays small.
      if (key === 'metadata') {
        for (const [k, x] of Object.entries(v as Record<string, string>)) {
          if (k === '') throw invalid('metadata', 'a key is empty');
          if (k.length > 128) throw invalid('metadata', `key ${JSON.stringify(k.slice(0, 32))}… is longer than 128 characters`);
          if (x.length > 1024) throw invalid(`metadata.${k}`, 'at most 1024 characters');
        }
      }
      if (key === 'env') {
        for (const name of Object.keys(v)) if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name) || name.startsWith('KILN_')) throw invalid(`env.${name}`, 'must be a variable name, not starting with KILN_');
        const bad = envProblem(v as Record<string, string>);
        if (bad) throw invalid(`env${bad.at}`, bad.problem);
      }
      req[key] = v as Record<string, string>;
    }
    for (const key of ['idleTimeoutS', 'maxDurationS'] as const) {
      const v = b[key];
      if (v === undefined) continue;
      if (typeof v !== 'number' || !Number.isInteger(v) || v < 1) throw invalid(key, 'must be a positive integer');
      req[key] = v;
    }
    return req;
  }

  /** Claim a warm sandbox (or start one cold) and bind it to a new session. */
  async create(body: unknown, principal: Principal): Promise<SessionView> {
    if (this.closed) throw new KilnError('shutting_down', 'the server is shutting down', 503, { retryAfterS: 5 });
    const req = this.parse(body);
    const t = this.template(req.template);
    const s = this.deps.config.sessions;
    const caps = principal.limits ?? {};
    // A client may ask for less than the template allows, never more; a credential's caps then lower
    // what it gets, as they do a run's limits (sandbox limits it cannot lower are refused, below).
    const lifetime = (key: 'maxDurationS' | 'idleTimeoutS'): number => {
      const bound = t[key] ?? s[key];
      const asked = req[key];
      if (asked !== undefined && asked > bound) throw invalid(key, `must be at most ${bound} (template ${req.template})`);
      return Math.min(asked ?? bound, caps[key] ?? Infinity);
    };
    const maxDurationS = lifetime('maxDurationS');
    const idleTimeoutS = lifetime('idleTimeoutS');
    const { spec } = this.deps.runtimes.specFor(req.template);
    for (const k of ['cpus', 'memoryMb', 'pids'] as const) {
      const cap = caps[k];
      if (cap !== undefined && spec.limits[k] > cap) throw new KilnError('forbidden', `template ${req.template} needs ${k} ${spec.limits[k]}; this credential allows at most ${cap}`, 403);
    }
    if (principal.kind === 'anonymous') this.admitAnonymous(principal);
    const pool = this.pools.get(req.template)!;
    const started = performance.now();
    // A request with its own env needs a server started with it: never a pooled one.
    const warm = req.env ? undefined : pool.claim();
    let session: LiveSession;
    const make = (token: string, fromPool: boolean) => {
      const id = randomUUID();
      const url = sessionUrl(this.origins, id, token);
      return new LiveSession(id, req.template, token, fromPool, Date.now(), idleTimeoutS, maxDurationS, { ...s.warnings, ...t.warnings }, req.metadata, principal.id, url);
    };
    if (warm) {
      session = make(warm.token, true);
      session.warm = warm;
      // Born ready: one store write on the hot path instead of insert + update.
      session.status = SESSION_STATUS.ready;
      session.readyAt = Date.now();
      session.settle();
      try {
        await this.insert(session, warm.sandbox.runtime, warm.sandbox.id);
      } catch (e) {
        // Not handed out after all: the sandbox, its budget and its pool slot go back.
        await this.release(session);
        throw e;
      }
      this.register(session);
      this.deps.events.safeEmit('session:status', session.view());
      this.deps.events.safeEmit('session:claimed', { template: req.template, fromPool: true, ms: performance.now() - started });
      this.watchMain(session);
    } else {
      const reservation = this.reservationOf(req.template);
      if (!pool.hasRoom()) throw new KilnError('no_capacity', `all ${pool.view().max} instances of ${req.template} are in use; retry later`, 503, { retryAfterS: 10 });
      if (!this.deps.budget.fitsEver(reservation)) throw neverFits(req.template, reservation, this.deps.budget);
      if (!this.deps.budget.tryReserve(reservation)) {
        throw new KilnError('over_budget', `no room on this node for another ${req.template} sandbox (${reservation.cpus} CPUs, ${reservation.memoryMb} MiB); retry later`, 503, { retryAfterS: 10 });
      }
      pool.adoptCold();
      session = make(newToken(), false);
      // The sandbox starts before the store insert, which runs while bwrap does; the cold
      // start waits for the row before it writes to it, and gives everything back if it failed.
      const inserted = this.insert(session, this.deps.config.templates[req.template]!.runtime, null);
      this.register(session);
      const pending = this.coldStart(session, reservation, req.env ?? {}, started, inserted).finally(() => this.coldStarts.delete(pending));
      this.coldStarts.add(pending);
      session.startDone = pending;
      await inserted;
    }
    return session.view(true);
  }

  /** Anonymous visitors of a public deep link: a few sessions per address at once. */
  private admitAnonymous(principal: Principal): void {
    const max = this.deps.config.auth.public.sessionsPerClient;
    let held = 0;
    for (const s of this.byId.values()) if (s.owner === principal.id && (s.status === 'starting' || s.status === 'ready')) held++;
    if (held >= max) throw new KilnError('too_many_sessions', `this address already holds ${held} session(s), the most allowed at once; close one or wait for it to end`, 429, { retryAfterS: 60 });
  }

  private async coldStart(session: LiveSession, reservation: Reservation, env: Record<string, string>, started: number, inserted: Promise<void>): Promise<void> {
    let warm: WarmSandbox | undefined;
    try {
      const starting = startWarm(this.deps.config, this.deps.runtimes, session.template, reservation, env, session.token, session.cancelStart.signal);
      // Both settle before either is looked at, so a failed insert never leaves a sandbox running.
      const [row, sandbox] = await Promise.allSettled([inserted, starting]);
      if (sandbox.status === 'rejected') throw sandbox.reason;
      warm = sandbox.value;
      if (row.status === 'rejected') throw row.reason;
      if (session.status !== 'starting') throw new Error('deleted while starting');
      session.warm = warm;
      // One store write for the sandbox id and the status: the session is ready (and the proxy's
      // held requests go on) as soon as the status changes in memory, before this write.
      await this.transition(session, 'ready', undefined, { sandbox_id: warm.sandbox.id });
      this.deps.events.safeEmit('session:claimed', { template: session.template, fromPool: false, ms: performance.now() - started });
      this.watchMain(session);
    } catch (e) {
      // Whatever failed, the sandbox (if it came up) and its reservations go back.
      session.warm = undefined;
      if (warm) await teardown(warm.sandbox, () => this.giveBack(session.template, reservation), this.deps.log, { session: session.id });
      else this.giveBack(session.template, reservation);
      if (session.status === 'starting') {
        session.error = messageOf(e);
        await this.transition(session, 'failed', 'failed');
      }
    }
  }

  private watchMain(session: LiveSession): void {
    void session.warm?.sandbox.mainExited
      ?.then(async () => {
        if (session.status === 'ready') {
          session.error = 'the server exited';
          await this.stop(session, 'failed');
        }
      })
      .catch((e: unknown) => this.deps.log?.error({ err: messageOf(e), session: session.id }, 'ending a session whose server exited failed'));
  }

  private register(session: LiveSession): void {
    this.byId.set(session.id, session);
    this.byToken.set(session.token, session);
  }

  private async insert(session: LiveSession, runtime: string, sandboxId: string | null): Promise<void> {
    const v = session.view();
    await this.deps.db
      .insertInto('sessions')
      .values({
        id: session.id,
        template: session.template,
        token_hash: hashToken(session.token),
        status: session.status,
        stop_reason: null,
        runtime,
        sandbox_id: sandboxId,
        from_pool: session.fromPool ? 1 : 0,
        metadata: session.metadata ? JSON.stringify(session.metadata) : null,
        idle_timeout_s: session.idleTimeoutS,
        max_duration_s: session.maxDurationS,
        created_at: v.createdAt,
        ready_at: v.readyAt ?? null,
        expires_at: v.expiresAt,
        last_activity_at: v.lastActivityAt,
        stopped_at: null,
        error: null,
        owner: session.owner,
      })
      .execute();
  }

  /**
   * The one place a status changes: checked against TRANSITIONS, stored,
   * emitted. Memory is the truth for live sessions: a write the store refuses
   * is logged and the change stands, so a session whose row cannot be written
   * still ends and gives its sandbox back (at the next start the row is
   * closed as one kiln did not end).
   */
  private async transition(session: LiveSession, to: SessionStatus, reason?: StopReason, also: { sandbox_id?: string } = {}): Promise<void> {
    if (!TRANSITIONS[session.status].includes(to)) return;
    session.status = to;
    if (reason) session.stopReason = reason;
    if (to === 'ready') session.readyAt = Date.now();
    if (to === 'stopped' || to === 'failed') session.stoppedAt = Date.now();
    if (to !== 'starting') session.settle();
    const v = session.view();
    try {
      await this.deps.db
        .updateTable('sessions')
        .set({ ...also, status: to, stop_reason: v.stopReason ?? null, ready_at: v.readyAt ?? null, stopped_at: v.stoppedAt ?? null, last_activity_at: v.lastActivityAt, error: v.error ?? null })
        .where('id', '=', session.id)
        .execute();
    } catch (e) {
      this.deps.log?.error({ err: messageOf(e), session: session.id, status: to }, 'the store refused a session status change');
    }
    this.deps.events.safeEmit('session:status', v);
  }

  /**
   * End a session: its sandbox is destroyed and its budget and pool slot freed,
   * then it is `stopped` (`failed` when its server died). A second stop waits
   * for the first, so every caller answers after the sandbox is gone.
   */
  stop(session: LiveSession, reason: StopReason): Promise<void> {
    if (session.stopped) return session.stopped;
    if (session.status === 'stopped' || session.status === 'failed') return Promise.resolve();
    session.stopped = this.end(session, reason);
    return session.stopped;
  }

  private async end(session: LiveSession, reason: StopReason): Promise<void> {
    const wasStarting = session.status === 'starting';
    await this.transition(session, 'stopping', reason);
    try {
      if (wasStarting) {
        // The cold start sees the stop, destroys what it made and gives the budget back.
        session.cancelStart.abort();
        await session.startDone;
      } else await this.release(session);
    } finally {
      await this.transition(session, reason === 'failed' ? 'failed' : 'stopped', reason);
    }
  }

  /** A session's sandbox is gone: its budget and its place in the template's `max` go back. */
  private giveBack(template: string, reservation: Reservation): void {
    this.deps.budget.release(reservation);
    this.pools.get(template)?.release();
  }

  private async release(session: LiveSession): Promise<void> {
    const warm = session.warm;
    if (!warm) return;
    session.warm = undefined;
    dropBackend(warm.link);
    await teardown(warm.sandbox, () => this.giveBack(session.template, warm.reservation), this.deps.log, { session: session.id });
  }

  /** Warn before, and end at, idle timeout and max duration; forget stale stopped sessions. */
  async sweep(now = Date.now()): Promise<void> {
    for (const s of [...this.byId.values()]) {
      if (s.status === 'stopped' || s.status === 'failed') {
        if (now - (s.stoppedAt ?? now) >= this.deps.config.sessions.stalePeriodS * 1000) {
          this.byId.delete(s.id);
          this.byToken.delete(s.token);
        }
        continue;
      }
      if (s.status !== 'ready') continue;
      const inUse = s.openSockets > 0;
      if (inUse) s.touch();
      const idleLeft = s.idleTimeoutS * 1000 - (now - s.lastActivity);
      const durationLeft = s.maxDurationS * 1000 - (now - s.createdAt);
      if (durationLeft <= 0) {
        await this.stop(s, 'max_duration');
        continue;
      }
      if (idleLeft <= 0) {
        await this.stop(s, 'idle');
        continue;
      }
      // A warning comes at most halfway through its period: with a period shorter than the
      // configured warning, every request would otherwise be followed by a warning at once.
      if (!s.warned.duration && durationLeft <= Math.min(s.warnings.durationS * 1000, s.maxDurationS * 500)) {
        s.warned.duration = true;
        this.deps.events.safeEmit('session:warning', s.view(), { kind: 'max_duration', inS: Math.ceil(durationLeft / 1000) });
      }
      if (!inUse && !s.warned.idle && idleLeft <= Math.min(s.warnings.idleS * 1000, s.idleTimeoutS * 500)) {
        s.warned.idle = true;
        this.deps.events.safeEmit('session:warning', s.view(), { kind: 'idle', inS: Math.ceil(idleLeft / 1000) });
      }
    }
    await this.persistActivity();
  }

  /**
   * Store the last activity of each ready session that was active since the
   * last sweep, in one transaction. SQLite answers synchronously, so every
   * proxied request waits behind it: for 200 sessions, a commit each held
   * kiln's loop for 7–20 ms every sweep, one transaction for 3–7 ms, and a
   * class that is not clicking costs nothing.
   */
  private async persistActivity(): Promise<void> {
    const moved = [...this.byId.values()].filter((s) => s.status === 'ready' && s.lastActivity !== s.persistedActivity).map((s) => ({ s, at: s.lastActivity }));
    if (moved.length === 0) return;
    await this.deps.db.transaction().execute(async (trx) => {
      for (const { s, at } of moved) await trx.updateTable('sessions').set({ last_activity_at: new Date(at).toISOString() }).where('id', '=', s.id).execute();
    });
    for (const { s, at } of moved) s.persistedActivity = at;
  }

  byTokenLookup(token: string): LiveSession | undefined {
    return this.byToken.get(token);
  }

  /** For the proxy only: it checks the session's cookie itself. */
  byIdLookup(id: string): LiveSession | undefined {
    return this.byId.get(id);
  }

  /** A live session `principal` may see; another's is as unknown as a made-up id. */
  live(id: string, principal: Principal): LiveSession {
    const s = this.byId.get(id);
    if (!s || !sees(principal, s.owner)) throw notFound('session', id);
    return s;
  }

  async get(id: string, principal: Principal): Promise<SessionView> {
    const s = this.byId.get(id);
    if (s) {
      if (!sees(principal, s.owner)) throw notFound('session', id);
      return shownTo(s.view(), principal);
    }
    const row = await this.deps.db.selectFrom('sessions').selectAll().where('id', '=', id).executeTakeFirst();
    if (!row || !sees(principal, row.owner)) throw notFound('session', id);
    return storedView(row);
  }

  /** The time (ISO) before which a stopped session has left listings. */
  private staleBefore(): string {
    return new Date(Date.now() - this.deps.config.sessions.stalePeriodS * 1000).toISOString();
  }

  /** Live sessions and those stopped within `stalePeriodS`. */
  list(principal?: Principal): SessionView[] {
    if (this.endedBefore.length > 0) {
      const since = this.staleBefore();
      this.endedBefore = this.endedBefore.filter((v) => v.stoppedAt! >= since);
    }
    const all = [...this.endedBefore, ...[...this.byId.values()].map((s) => s.view())];
    return principal ? all.filter((v) => sees(principal, v.owner)).map((v) => shownTo(v, principal)) : all;
  }

  async remove(id: string, principal: Principal): Promise<SessionView> {
    // Ended and out of memory (past stalePeriodS, or before a restart): already gone, as the store says.
    if (!this.byId.has(id)) return this.get(id, principal);
    const s = this.live(id, principal);
    await this.stop(s, 'deleted');
    return shownTo(s.view(), principal);
  }

  /** The session once ready: a call on a starting session waits for it (up to holdRequestS), as browsers do. */
  private async ready(id: string, principal: Principal, activity = true): Promise<LiveSession & { warm: WarmSandbox }> {
    if (!this.byId.has(id)) {
      const ended = await this.get(id, principal); // 404 when it never was (or is not the caller's)
      throw new KilnError('session_not_ready', `session ${id} is ${ended.status}`, 409);
    }
    const s = this.live(id, principal);
    if (s.status === 'starting') await Promise.race([s.settled, new Promise((r) => setTimeout(r, this.deps.config.sessions.holdRequestS * 1000))]);
    if (s.status !== 'ready' || !s.warm) throw new KilnError('session_not_ready', `session ${id} is ${s.status}`, 409);
    if (activity) s.touch();
    return s as LiveSession & { warm: WarmSandbox };
  }

  async exec(id: string, body: unknown, principal: Principal): Promise<ExecResult> {
    if (body === null || typeof body !== 'object' || Array.isArray(body)) throw invalid('body', 'must be a JSON object');
    const b = body as Record<string, unknown>;
    for (const k of Object.keys(b)) if (!['command', 'stdin', 'timeoutMs'].includes(k)) throw invalid(k, 'unknown field');
    if (!Array.isArray(b.command) || b.command.length === 0 || b.command.some((c) => typeof c !== 'string')) throw invalid('command', 'must be a non-empty array of strings');
    const bad = argvProblem(b.command as string[]);
    if (bad) throw invalid(`command${bad.at}`, bad.problem);
    if (b.stdin !== undefined && typeof b.stdin !== 'string') throw invalid('stdin', 'must be a string');
    const max = this.deps.config.runs.maxima.wallMs;
    if (b.timeoutMs !== undefined && (typeof b.timeoutMs !== 'number' || !Number.isInteger(b.timeoutMs) || b.timeoutMs < 1 || b.timeoutMs > max)) throw invalid('timeoutMs', `must be an integer from 1 to ${max}`);
    const s = await this.ready(id, principal);
    const { spec } = this.deps.runtimes.specFor(s.template);
    // The credential's caps hold here as for runs: the smaller of what is asked and the cap.
    const caps = principal.limits ?? {};
    const wallMs = Math.min((b.timeoutMs as number | undefined) ?? this.deps.config.runs.defaults.wallMs, caps.wallMs ?? Infinity);
    const cpuMs = Math.min(wallMs, caps.cpuMs ?? Infinity);
    const outputBytes = Math.min(this.deps.config.runs.defaults.outputBytes, caps.outputBytes ?? Infinity);
    return this.whileInUse(s, 'the command ran', () =>
      s.warm.sandbox.exec({
        command: b.command as string[],
        stdin: b.stdin as string | undefined,
        limits: { wallMs, cpuMs, memoryMb: spec.limits.memoryMb, pids: spec.limits.pids, outputBytes },
      }),
    );
  }

  async putFile(id: string, path: string, data: Buffer, principal: Principal): Promise<void> {
    const s = await this.ready(id, principal);
    await this.whileInUse(s, `${path} was written`, () => s.warm.sandbox.putFile(path, data));
  }

  async getFile(id: string, path: string, principal: Principal): Promise<Buffer> {
    // A read-only credential (a dashboard polling files) looks without keeping the session alive.
    const activity = can(principal, 'sessions:write');
    const s = await this.ready(id, principal, activity);
    const data = await this.whileInUse(s, `${path} was read`, () => s.warm.sandbox.getFile(path, this.deps.config.server.bodyLimitBytes), activity);
    if (!data) throw notFound('file', path);
    return data;
  }

  /**
   * Run a call inside a ready session's sandbox, holding off idle reaping
   * while it runs (unless it is not `activity`). A call cut short because the session ended gets a 409 that
   * says so, not the kill (or the failure) it met on the way.
   */
  private async whileInUse<T>(s: LiveSession, what: string, call: () => Promise<T>, activity = true): Promise<T> {
    if (activity) s.openSockets++;
    try {
      const result = await call().catch((e: unknown) => {
        throw s.status === 'ready' ? e : endedWhile(s, what);
      });
      if (s.status !== 'ready') throw endedWhile(s, what);
      return result;
    } finally {
      if (activity) {
        s.openSockets--;
        s.touch();
      }
    }
  }

  /** Whether a create of `template` would get a session now (warm, or a cold start that fits); claims nothing. */
  couldOpen(template: string): boolean {
    const pool = this.pools.get(template);
    if (!pool) return false;
    return pool.view().ready > 0 || (pool.hasRoom() && this.deps.budget.fits(this.reservationOf(template)));
  }

  poolViews(): PoolView[] {
    return [...this.pools.values()].map((p) => p.view());
  }

  /** Stop every session (stopReason shutdown) and empty the pools. */
  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.sweeper);
    // Pools close first: a session that ends gives its slot back, which would otherwise start a sandbox to replace it.
    const pools = Promise.all([...this.pools.values()].map((p) => p.close()));
    await Promise.all([...this.byId.values()].map((s) => this.stop(s, 'shutdown')));
    await Promise.all(this.coldStarts);
    await pools;
  }
}

/** A session no longer in memory (ended past `stalePeriodS`, or before a restart), as the store holds it. */
function storedView(row: SessionsTable): SessionView {
  return {
    id: row.id,
    template: row.template,
    status: row.status as SessionStatus,
    ...(row.stop_reason ? { stopReason: row.stop_reason as StopReason } : {}),
    fromPool: row.from_pool === 1,
    ...(row.metadata ? { metadata: JSON.parse(row.metadata) as Record<string, string> } : {}),
    createdAt: row.created_at,
    ...(row.ready_at ? { readyAt: row.ready_at } : {}),
    expiresAt: row.expires_at,
    lastActivityAt: row.last_activity_at,
    idleTimeoutS: row.idle_timeout_s,
    owner: row.owner,
    ...(row.stopped_at ? { stoppedAt: row.stopped_at } : {}),
    ...(row.error ? { error: row.error } : {}),
  };
}

function endedWhile(s: LiveSession, what: string): KilnError {
  return new KilnError('session_not_ready', `session ${s.id} ended (${s.stopReason ?? s.status}) while ${what}`, 409);
}

/** A template whose limits exceed the node's whole budget: no retry helps (no Retry-After), the config must change. */
function neverFits(template: string, r: Reservation, budget: Budget): KilnError {
  const total = budget.snapshot();
  return new KilnError('never_fits', `template ${template} needs ${r.cpus} CPUs and ${r.memoryMb} MiB, more than this node's whole budget (budget.cpuTotal ${total.cpuTotal}, budget.memoryTotalMb ${total.memoryTotalMb}): it can never start here`, 503);
}
