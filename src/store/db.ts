/**
 * The store: Kysely over SQLite (better-sqlite3) in the data dir. Migrations
 * run at open, in order, once each. Tables are named for the vocabulary in
 * DESIGN.md; JSON columns hold stage results as the API returns them.
 */
import Database from 'better-sqlite3';
import { Kysely, Migrator, type Generated, SqliteDialect, sql, type Migration, type MigrationProvider } from 'kysely';

export interface RunsTable {
  id: string;
  language: string;
  template: string;
  status: string;
  verdict: string | null;
  /** The request as submitted (files included), JSON: runs are reproducible. */
  request: string;
  compile: string | null;
  run: string | null;
  /** Why a run ended as internal_error (never user secrets). */
  error: string | null;
  created_at: string;
  started_at: string | null;
  finished_at: string | null;
  /** Principal that submitted it. */
  owner: string;
}

export interface SessionsTable {
  id: string;
  template: string;
  /** sha256 of the URL token: the store never holds a usable session secret. */
  token_hash: string;
  status: string;
  stop_reason: string | null;
  runtime: string;
  sandbox_id: string | null;
  from_pool: number;
  metadata: string | null;
  idle_timeout_s: number;
  max_duration_s: number;
  created_at: string;
  ready_at: string | null;
  expires_at: string;
  last_activity_at: string;
  stopped_at: string | null;
  error: string | null;
  /** Principal that created it. */
  owner: string;
}

export interface TokensTable {
  id: string;
  name: string;
  /** sha256 of the token: the store never holds a usable credential. */
  hash: string;
  /** JSON array of scopes. */
  scopes: string;
  /** JSON LimitCaps, or null. */
  limits: string | null;
  created_at: string;
  created_by: string;
  expires_at: string | null;
  revoked_at: string | null;
  last_used_at: string | null;
  /** A token acting for another principal (`token:<id>`): it sees what that one owns, within its own scopes. */
  acts_for: string | null;
}

export interface AuditTable {
  id: Generated<number>;
  at: string;
  /** Principal id that acted (`token:<id>`, `cli:<user>`, `local`, …). */
  actor: string;
  action: string;
  target: string | null;
  /** JSON detail; never a secret. */
  detail: string | null;
  address: string | null;
}

export interface MetaTable {
  key: string;
  value: string;
}

export interface Tables {
  runs: RunsTable;
  sessions: SessionsTable;
  meta: MetaTable;
  tokens: TokensTable;
  audit: AuditTable;
}

export type Db = Kysely<Tables>;

const migrations: Record<string, Migration> = {
  '0001_runs': {
    async up(db) {
      await db.schema
        .createTable('runs')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('language', 'text', (c) => c.notNull())
        .addColumn('template', 'text', (c) => c.notNull())
        .addColumn('status', 'text', (c) => c.notNull())
        .addColumn('verdict', 'text')
        .addColumn('request', 'text', (c) => c.notNull())
        .addColumn('compile', 'text')
        .addColumn('run', 'text')
        .addColumn('error', 'text')
        .addColumn('created_at', 'text', (c) => c.notNull())
        .addColumn('started_at', 'text')
        .addColumn('finished_at', 'text')
        .execute();
      await db.schema.createIndex('runs_status').on('runs').column('status').execute();
      await db.schema.createIndex('runs_created_at').on('runs').column('created_at').execute();
      await db.schema.createTable('meta').addColumn('key', 'text', (c) => c.primaryKey()).addColumn('value', 'text', (c) => c.notNull()).execute();
    },
  },
};

migrations['0002_sessions'] = {
  async up(db) {
    await db.schema
      .createTable('sessions')
      .addColumn('id', 'text', (c) => c.primaryKey())
      .addColumn('template', 'text', (c) => c.notNull())
      .addColumn('token_hash', 'text', (c) => c.notNull())
      .addColumn('status', 'text', (c) => c.notNull())
      .addColumn('stop_reason', 'text')
      .addColumn('runtime', 'text', (c) => c.notNull())
      .addColumn('sandbox_id', 'text')
      .addColumn('from_pool', 'integer', (c) => c.notNull())
      .addColumn('metadata', 'text')
      .addColumn('idle_timeout_s', 'integer', (c) => c.notNull())
      .addColumn('max_duration_s', 'integer', (c) => c.notNull())
      .addColumn('created_at', 'text', (c) => c.notNull())
      .addColumn('ready_at', 'text')
      .addColumn('expires_at', 'text', (c) => c.notNull())
      .addColumn('last_activity_at', 'text', (c) => c.notNull())
      .addColumn('stopped_at', 'text')
      .addColumn('error', 'text')
      .execute();
    await db.schema.createIndex('sessions_status').on('sessions').column('status').execute();
  },
};

migrations['0003_auth'] = {
  async up(db) {
    await db.schema
      .createTable('tokens')
      .addColumn('id', 'text', (c) => c.primaryKey())
      .addColumn('name', 'text', (c) => c.notNull())
      .addColumn('hash', 'text', (c) => c.notNull().unique())
      .addColumn('scopes', 'text', (c) => c.notNull())
      .addColumn('limits', 'text')
      .addColumn('created_at', 'text', (c) => c.notNull())
      .addColumn('created_by', 'text', (c) => c.notNull())
      .addColumn('expires_at', 'text')
      .addColumn('revoked_at', 'text')
      .addColumn('last_used_at', 'text')
      .execute();
    await db.schema
      .createTable('audit')
      .addColumn('id', 'integer', (c) => c.primaryKey().autoIncrement())
      .addColumn('at', 'text', (c) => c.notNull())
      .addColumn('actor', 'text', (c) => c.notNull())
      .addColumn('action', 'text', (c) => c.notNull())
      .addColumn('target', 'text')
      .addColumn('detail', 'text')
      .addColumn('address', 'text')
      .execute();
    // Who owns a run or session: another principal (unless admin) cannot see it.
    await db.schema.alterTable('runs').addColumn('owner', 'text', (c) => c.notNull().defaultTo('local')).execute();
    await db.schema.alterTable('sessions').addColumn('owner', 'text', (c) => c.notNull().defaultTo('local')).execute();
    await db.schema.createIndex('sessions_owner').on('sessions').column('owner').execute();
  },
};

migrations['0004_token_acts_for'] = {
  async up(db) {
    await db.schema.alterTable('tokens').addColumn('acts_for', 'text').execute();
  },
};

class InlineProvider implements MigrationProvider {
  async getMigrations(): Promise<Record<string, Migration>> {
    return migrations;
  }
}

/** Open (and migrate) the SQLite store at `file`. */
export async function openSqliteStore(file: string): Promise<Db> {
  const sqlite = new Database(file);
  // WAL: readers never block the single writer; NORMAL sync is durable across process crashes.
  sqlite.pragma('journal_mode = WAL');
  sqlite.pragma('synchronous = NORMAL');
  sqlite.pragma('busy_timeout = 5000');
  const db = new Kysely<Tables>({ dialect: new SqliteDialect({ database: sqlite }) });
  const { error, results } = await new Migrator({ db, provider: new InlineProvider() }).migrateToLatest();
  const failed = results?.find((r) => r.status === 'Error');
  if (error || failed) {
    await db.destroy();
    throw new Error(`store migration ${failed?.migrationName ?? ''} failed: ${String(error)}`);
  }
  return db;
}

export async function storeReady(db: Db): Promise<boolean> {
  try {
    await sql`select 1`.execute(db);
    return true;
  } catch {
    return false;
  }
}

