/**
 * Runs: one execution of submitted code.
 *
 * - run     — `queued → running → done`, with a `verdict` once done.
 * - stage   — `compile` (compiled languages only) then `run`; each is one exec
 *             in the same sandbox with its own limits.
 * - verdict — what the kernel's facts say happened, from a fixed list.
 */
import type { ExecLimitsConfig } from '../config/schema.js';

export const RUN_STATUSES = ['queued', 'running', 'done'] as const;
export type RunStatus = (typeof RUN_STATUSES)[number];

export const VERDICTS = ['ok', 'compile_error', 'runtime_error', 'timeout', 'memory_limit', 'output_limit', 'internal_error'] as const;
export type Verdict = (typeof VERDICTS)[number];

export interface SubmittedFile {
  name: string;
  content: string;
  encoding?: 'utf8' | 'base64';
}

export interface RunRequest {
  language: string;
  files: SubmittedFile[];
  stdin?: string;
  args?: string[];
  limits?: Partial<ExecLimitsConfig>;
  template?: string;
  wait?: boolean;
}

export interface Stage {
  stdout: string;
  stderr: string;
  exitCode: number | null;
  signal: string | null;
  wallMs: number;
  cpuMs: number;
  memoryKb: number;
  truncated: boolean;
}

export interface Run {
  id: string;
  language: string;
  template: string;
  status: RunStatus;
  verdict?: Verdict;
  compile?: Stage;
  run?: Stage;
  /** Why the run is an internal_error. */
  error?: string;
  createdAt: string;
  startedAt?: string;
  finishedAt?: string;
  /** Principal that submitted it (see auth/principal.ts). */
  owner?: string;
}

export interface LanguageInfo {
  name: string;
  version: string;
  template: string;
  compiled: boolean;
}

export type ExecLimits = ExecLimitsConfig;
