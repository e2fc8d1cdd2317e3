/**
 * Sessions: a sandbox bound to a client for minutes or hours, reached at
 * `/s/<token>/` through kiln's proxy.
 *
 *   starting ──ready──▶ ready ──stop──▶ stopping ──▶ stopped
 *       │                                     └──────▶ failed  (stopReason failed: the server died)
 *       └──(start failed)───────────────────────────▶ failed  (stopReason failed)
 *
 * - token      — 128+ random bits; the session's URL secret. Only its hash is stored.
 * - activity   — proxied requests, open sockets, exec and file calls; each one
 *                pushes the idle deadline back.
 * - stopReason — why it ended: idle, max_duration, deleted, failed, shutdown, evicted.
 */
export const SESSION_STATUS = { starting: 'starting', ready: 'ready', stopping: 'stopping', stopped: 'stopped', failed: 'failed' } as const;
export type SessionStatus = (typeof SESSION_STATUS)[keyof typeof SESSION_STATUS];

/** Allowed transitions, in one place. */
export const TRANSITIONS: Record<SessionStatus, SessionStatus[]> = {
  starting: ['ready', 'stopping', 'failed'],
  ready: ['stopping', 'failed'],
  stopping: ['stopped', 'failed'],
  stopped: [],
  failed: [],
};

export const STOP_REASONS = ['idle', 'max_duration', 'deleted', 'failed', 'shutdown', 'evicted'] as const;
export type StopReason = (typeof STOP_REASONS)[number];

/** A session as the API shows it. */
export interface SessionView {
  id: string;
  template: string;
  status: SessionStatus;
  stopReason?: StopReason;
  /**
   * `/s/<token>/`: whoever has it uses the session's server. Shown while the
   * session is live, and only to callers that may use it (`sessions:write`):
   * a read-only credential lists sessions without getting into them.
   */
  url?: string;
  /** Only in the answer to the create call. */
  token?: string;
  fromPool: boolean;
  metadata?: Record<string, string>;
  createdAt: string;
  readyAt?: string;
  expiresAt: string;
  lastActivityAt: string;
  idleTimeoutS: number;
  /** Principal that created it (`token:<id>`, `jwt:<iss>:<sub>`, `anon:<address>`, `local`). */
  owner: string;
  stoppedAt?: string;
  error?: string;
}

export interface SessionRequest {
  template: string;
  env?: Record<string, string>;
  idleTimeoutS?: number;
  maxDurationS?: number;
  metadata?: Record<string, string>;
}

export type SessionWarning = { kind: 'idle' | 'max_duration'; inS: number };
