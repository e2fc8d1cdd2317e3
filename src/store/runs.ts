/** Runs in the store: the only place that knows their columns. */
import type { Db, RunsTable } from './db.js';
import type { Run, RunRequest, Stage } from '../runs/types.js';

const json = (v: unknown) => (v === undefined ? null : JSON.stringify(v));

export class RunStore {
  constructor(private readonly db: Db) {}

  async insert(run: Run, request: RunRequest, owner: string): Promise<void> {
    await this.db
      .insertInto('runs')
      .values({
        id: run.id,
        language: run.language,
        template: run.template,
        status: run.status,
        verdict: null,
        request: JSON.stringify(request),
        compile: null,
        run: null,
        error: null,
        created_at: run.createdAt,
        started_at: null,
        finished_at: null,
        owner,
      })
      .execute();
  }

  async markRunning(id: string, startedAt: string): Promise<void> {
    await this.db.updateTable('runs').set({ status: 'running', started_at: startedAt }).where('id', '=', id).execute();
  }

  async finish(run: Run): Promise<void> {
    await this.db
      .updateTable('runs')
      .set({
        status: 'done',
        verdict: run.verdict ?? null,
        compile: json(run.compile),
        run: json(run.run),
        error: run.error ?? null,
        started_at: run.startedAt ?? null,
        finished_at: run.finishedAt ?? null,
      })
      .where('id', '=', run.id)
      .execute();
  }

  async get(id: string): Promise<Run | undefined> {
    const row = await this.db.selectFrom('runs').selectAll().where('id', '=', id).executeTakeFirst();
    return row ? fromRow(row) : undefined;
  }

  /** Runs left queued or running by a server that died: they end as internal_error. Returns how many. */
  async failInterrupted(now: string): Promise<number> {
    const res = await this.db
      .updateTable('runs')
      .set({ status: 'done', verdict: 'internal_error', error: 'interrupted: the server stopped before the run finished', finished_at: now })
      .where('status', 'in', ['queued', 'running'])
      .executeTakeFirst();
    return Number(res.numUpdatedRows);
  }

  /** Delete finished runs older than `before`. Returns how many. */
  async prune(before: string): Promise<number> {
    const res = await this.db.deleteFrom('runs').where('status', '=', 'done').where('finished_at', '<', before).executeTakeFirst();
    return Number(res.numDeletedRows);
  }
}

function fromRow(row: RunsTable): Run {
  const run: Run = {
    id: row.id,
    language: row.language,
    template: row.template,
    status: row.status as Run['status'],
    createdAt: row.created_at,
  };
  if (row.verdict) run.verdict = row.verdict as Run['verdict'];
  if (row.compile) run.compile = JSON.parse(row.compile) as Stage;
  if (row.run) run.run = JSON.parse(row.run) as Stage;
  if (row.error) run.error = row.error;
  if (row.started_at) run.startedAt = row.started_at;
  if (row.finished_at) run.finishedAt = row.finished_at;
  run.owner = row.owner;
  return run;
}
