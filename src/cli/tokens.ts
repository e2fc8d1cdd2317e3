/**
 * `kiln token create|ls|revoke`. By default they work on the local data dir's
 * store (the way to make the first admin token: whoever can read the data dir
 * owns the server anyway); with --remote, on KILN_URL with an admin KILN_TOKEN.
 */
import type { Command } from 'commander';
import { userInfo } from 'node:os';
import { join, resolve } from 'node:path';
import { existsSync } from 'node:fs';
import type { KilnConfig } from '../config/schema.js';
import { openSqliteStore } from '../store/db.js';
import { TokenStore, type TokenView } from '../store/tokens.js';
import { parseTokenRequest, parseTtl } from '../auth/token-request.js';
import { KilnError } from '../errors.js';
import { api } from './client.js';

type Flags = { remote?: boolean; config?: string; host?: string; port?: string; dataDir?: string };

async function withLocalStore<T>(config: KilnConfig, f: (tokens: TokenStore) => Promise<T>): Promise<T> {
  const dir = resolve(config.server.dataDir);
  const file = join(dir, 'kiln.db');
  if (!existsSync(file)) throw new KilnError('no_store', `no kiln store at ${file}: start kiln serve once (or pass --data-dir), or use --remote`);
  const db = await openSqliteStore(file);
  try {
    return await f(new TokenStore(db));
  } finally {
    await db.destroy();
  }
}

const actor = () => `cli:${userInfo().username}`;

function printTokens(list: TokenView[]): void {
  const rows = list.map((t) => [t.id, t.name, t.scopes.join(',') + (t.actsFor ? ` for ${t.actsFor}` : ''), t.revokedAt ? 'revoked' : t.expiresAt && t.expiresAt <= new Date().toISOString() ? 'expired' : 'active', t.expiresAt ?? 'never', t.lastUsedAt ?? '-']);
  const head = ['ID', 'NAME', 'SCOPES', 'STATE', 'EXPIRES', 'LAST USED'];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  for (const r of [head, ...rows]) process.stdout.write(`${r.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd()}\n`);
}

export function registerTokenCommands(program: Command, serverOptions: (c: Command) => Command, configFrom: (f: Flags) => KilnConfig): void {
  const token = program.command('token').description('API tokens (local store by default; --remote uses KILN_URL and an admin KILN_TOKEN)');
  const opts = (c: Command) => serverOptions(c).option('--remote', 'act on the server at KILN_URL instead of the local data dir');

  opts(token.command('create'))
    .description('make an API token and print it (once: only its hash is kept)')
    .option('--name <name>', 'what the token is for', 'token')
    .option('--scope <scope>', 'a scope it grants (repeatable): runs:read runs:write sessions:read sessions:write jobs:read jobs:write admin', (v: string, acc: string[]) => [...acc, v], [] as string[])
    .option('--ttl <duration>', 'lifetime: 30d, 12h, 90m, 3600s or never', '90d')
    .option('--limit <key=value>', 'cap on what its holder may ask for, e.g. memoryMb=256 (repeatable)', (v: string, acc: string[]) => [...acc, v], [] as string[])
    .option('--acts-for <token id>', "see and act on that token's runs and sessions (within this token's scopes), e.g. a read-only view of them")
    .action(async (o: Flags & { name: string; scope: string[]; ttl: string; limit: string[]; actsFor?: string }) => {
      const limits: Record<string, number> = {};
      for (const kv of o.limit) {
        const [k, v] = kv.split('=');
        if (!k || v === undefined) throw new KilnError('invalid_flag', `--limit: ${JSON.stringify(kv)} is not key=value`);
        limits[k] = Number(v);
      }
      const ttlS = parseTtl(o.ttl);
      const body = { name: o.name, scopes: o.scope, ...(ttlS !== undefined ? { ttlS } : {}), ...(o.limit.length ? { limits } : {}), ...(o.actsFor !== undefined ? { actsFor: o.actsFor } : {}) };
      const req = parseTokenRequest(body);
      const made = o.remote
        ? await api<TokenView & { token: string }>('POST', '/v1/tokens', body)
        : await withLocalStore(configFrom(o), async (t) => {
            const r = await t.create({ ...req, actor: actor() });
            return { ...r.view, token: r.token };
          });
      process.stderr.write(`kiln: token ${made.id} (${made.scopes.join(', ')}${made.actsFor ? `, acting for ${made.actsFor}` : ''}), expires ${made.expiresAt ?? 'never'}; it is shown only now\n`);
      process.stdout.write(`${made.token}\n`);
    });

  opts(token.command('ls'))
    .description('list tokens (never their secrets)')
    .action(async (o: Flags) => {
      printTokens(o.remote ? await api<TokenView[]>('GET', '/v1/tokens') : await withLocalStore(configFrom(o), (t) => t.list()));
    });

  opts(token.command('revoke <id>'))
    .description('revoke a token at once')
    .action(async (id: string, o: Flags) => {
      const t = o.remote ? await api<TokenView>('DELETE', `/v1/tokens/${encodeURIComponent(id)}`) : await withLocalStore(configFrom(o), (s) => s.revoke(id, actor()));
      process.stdout.write(`${t.id} revoked\n`);
    });
}
